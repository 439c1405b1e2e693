#!/usr/bin/env bash
# `make run`: kubeci on a local control plane. Brings up kube-apiserver (hack/testenv.sh), installs
# the CRDs, starts the director, the workplan-operator and two workers, applies the seed's
# Workflow with its ConfigMap trigger, changes the ConfigMap, and shows the Workplan, its
# RequestState and the first task's pod.
#
# Not yet here: a node (kubelet and scheduler), so the first task's pod stays Pending and no step
# runs. `make down` stops everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.testenv"

kubeconfig="$(hack/testenv.sh up)"
export KUBECONFIG="$kubeconfig"
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
start worker-1 --identity worker-1 --metrics-addr 127.0.0.1:8082
start worker-2 --identity worker-2 --metrics-addr 127.0.0.1:8083

echo "== the seed's ConfigMap and Workflow (examples/seed-workflow.yaml)"
kubectl create configmap my-config -n default --from-literal=greeting=hello \
  --dry-run=client -o yaml | kubectl apply --server-side --field-manager=kubeci -f -
kubectl apply --server-side --field-manager=kubeci -f examples/seed-workflow.yaml
kubectl wait kwf/my-workflow -n default --for condition=Ready --timeout=30s
echo "existing ConfigMaps do not fire: $(kubectl get wp -n default --no-headers 2>/dev/null | wc -l) Workplans"

echo "== changing the ConfigMap: one Workplan per change"
kubectl patch configmap my-config -n default --type merge -p "{\"data\":{\"greeting\":\"hello at $(date +%T)\"}}"
for _ in $(seq 50); do
  [[ -n "$(kubectl get pods -n default -l kube.ci/workflow=my-workflow -o name 2>/dev/null)" ]] && break
  sleep 0.2
done
kubectl get kwf,wp,rqs,pods -n default
echo
kubectl get wp -n default -o jsonpath='{range .items[*]}{.metadata.name}: {.spec.trigger.event} of {.spec.trigger.kind}/{.spec.trigger.name}{"\n"}{end}'

cat <<EOM

kubeci is running: director (metrics on :8080), workplan-operator (:8081), worker-1 and worker-2
(:8082, :8083), logs in $STATE. There is no node yet, so task-0's pod stays Pending and the run
waits there (STARTED by a worker). Try:
  export KUBECONFIG=$kubeconfig PATH=$ROOT/target/debug:\$PATH
  kubectl get rqs -n default -o yaml                                          # the hand-off history
  kubectl patch configmap my-config --type merge -p '{"data":{"greeting":"again"}}'; kubectl get wp
  kubectl annotate kwf my-workflow kube.ci/run=\$(date +%s) --overwrite      # a manual run
  kubectl apply -f examples/diamond.yaml; kubectl get kwf,wp                  # runs once per spec change
  kubectl kubeci plan -f examples/fan-out.yaml
  kubectl describe kwf my-workflow                                            # conditions and Events
Stop it with: make down
EOM
