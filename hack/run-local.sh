#!/usr/bin/env bash
# `make run`: kubeci on this machine, steps really running. Brings up kube-apiserver
# (hack/testenv.sh) and a local node (hack/node.sh: containerd, runc, kubelet, kube-scheduler),
# installs the CRDs, starts the director, the workplan-operator and two workers, applies the seed's
# Workflow with its ConfigMap trigger, changes the ConfigMap, and follows the Workplan to its final
# phase, then shows step-5's log. `make down` stops everything.
#
# Needs root (the node runs containers); hack/node.sh installs its Debian packages itself.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.testenv"

[[ $EUID == 0 ]] || { echo "make run: the local node runs containers; run it as root" >&2; exit 1; }
kubeconfig="$(hack/testenv.sh up)"
export KUBECONFIG="$kubeconfig"
echo "== starting the local node (hack/node.sh up; logs in ${KUBECI_CACHE:-$HOME/.cache/kubeci}/node/logs)"
node="$(hack/node.sh up "$kubeconfig")"
kubectl get nodes -o wide
cargo build --quiet -p cli -p director -p workplan-operator -p worker
export PATH="$ROOT/target/debug:$PATH"

echo "== installing the CRDs"
kubectl apply --server-side --field-manager=kubeci -f crds/
kubectl wait --for condition=Established --timeout=60s \
  crd/workflows.kube.ci crd/workplans.kube.ci crd/requeststates.kube.ci

# start NAME ARGS...: runs target/debug/NAME in the background, log and pid in .testenv/.
start() {
  local name="$1"; shift
  if [[ -f "$STATE/$name.pid" ]] && kill -0 "$(cat "$STATE/$name.pid")" 2>/dev/null; then
    kill "$(cat "$STATE/$name.pid")"; sleep 1
  fi
  nohup "$ROOT/target/debug/${name%-[0-9]}" "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
  echo "started $name (log: $STATE/$name.log)"
}
echo "== starting kubeci"
start director --no-leader-election --metrics-addr 127.0.0.1:8080
start workplan-operator --no-leader-election --metrics-addr 127.0.0.1:8081
# Workspaces under .testenv, so `make down` removes whatever a run left.
start worker-1 --identity worker-1 --metrics-addr 127.0.0.1:8082 --workspace-root "$STATE/workspaces"
start worker-2 --identity worker-2 --metrics-addr 127.0.0.1:8083 --workspace-root "$STATE/workspaces"

echo "== the seed's ConfigMap and Workflow (examples/seed-workflow.yaml)"
kubectl create configmap my-config -n default --from-literal=greeting=hello \
  --dry-run=client -o yaml | kubectl apply --server-side --field-manager=kubeci -f -
kubectl apply --server-side --field-manager=kubeci -f examples/seed-workflow.yaml
kubectl wait kwf/my-workflow -n default --for condition=Ready --timeout=30s
echo "existing ConfigMaps do not fire: $(kubectl get wp -n default --no-headers 2>/dev/null | wc -l) Workplans"

echo "== changing the ConfigMap: one Workplan per change (kubectl get wp -w)"
before="$(kubectl get wp -n default -o name | sort)"
kubectl patch configmap my-config -n default --type merge -p "{\"data\":{\"greeting\":\"hello at $(date +%T)\"}}"
wp=""
for _ in $(seq 100); do
  wp="$(comm -13 <(echo "$before") <(kubectl get wp -n default -o name | sort) | head -n1)"
  [[ -n "$wp" ]] && break
  sleep 0.2
done
[[ -n "$wp" ]] || { echo "make run: no Workplan after the ConfigMap change (director log: $STATE/director.log)" >&2; exit 1; }
wp="${wp#*/}"
kubectl get wp "$wp" -n default -w &
watcher=$!
phase=""
for _ in $(seq 600); do
  phase="$(kubectl get wp "$wp" -n default -o jsonpath='{.status.phase}')"
  [[ "$phase" == Completed || "$phase" == Failed ]] && break
  sleep 0.2
done
sleep 1 # let the watch print the final line
kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
echo
echo "== its pods, on node $node"
kubectl get pods -n default -l "kube.ci/workplan=$wp" -o wide
echo
echo "== kubectl logs $wp-task-1 -c step-5"
kubectl logs -n default "$wp-task-1" -c step-5 || true
if [[ "$phase" != Completed ]]; then
  echo "make run: Workplan $wp ended as '${phase:-still running}': $(kubectl get wp "$wp" -n default -o jsonpath='{.status.reason}')" >&2
  echo "logs: $STATE/*.log and ${KUBECI_CACHE:-$HOME/.cache/kubeci}/node/logs; stop with: make down" >&2
  exit 1
fi

cat <<EOM

kubeci is running on a real local node ($node: containerd, runc, kubelet, kube-scheduler):
director (metrics on :8080), workplan-operator (:8081), worker-1 and worker-2 (:8082, :8083),
logs in $STATE. Workspaces are created under $STATE/workspaces while a run lasts. Try:
  export KUBECONFIG=$kubeconfig PATH=$ROOT/target/debug:\$PATH
  kubectl patch configmap my-config --type merge -p '{"data":{"greeting":"again"}}'; kubectl get wp -w
  kubectl get rqs -o yaml                                                   # the hand-off history
  kubectl annotate kwf my-workflow kube.ci/run=\$(date +%s) --overwrite    # a manual run
  kubectl apply -f examples/diamond.yaml; kubectl get kwf,wp                # runs once per spec change
  kubectl logs -f <pod> -c <step>                                           # a step's output, live
  kubectl kubeci plan -f examples/fan-out.yaml
  kubectl describe kwf my-workflow                                          # conditions and Events
Stop it with: make down
EOM
