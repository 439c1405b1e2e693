#!/usr/bin/env bash
# `make run`: kubeci on this machine as a user's cluster runs it, installed with Helm. Brings up
# kube-apiserver (hack/testenv.sh) and a local node (hack/node.sh: containerd, runc, kubelet,
# kube-scheduler, kube-proxy), builds kubeci's images and imports them into the node
# (hack/images.sh), `helm upgrade --install`s charts/kubeci with them, applies the seed's
# Workflow with its ConfigMap trigger, changes the ConfigMap and follows the Workplan to its final
# phase, then shows step-5's log. Run again, it reuses what runs and upgrades the release in place.
# `make down` removes everything.
#
# Needs root (the node runs containers); hack/node.sh installs its Debian packages itself.
# Environment: KUBECI_RELEASE (default kubeci), KUBECI_NAMESPACE (default kubeci-system).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.testenv"
RELEASE="${KUBECI_RELEASE:-kubeci}"
NS="${KUBECI_NAMESPACE:-kubeci-system}"
# The chart's object names: <release>-kubeci-<component>, or <release>-<component> when the
# release's name says kubeci.
if [[ "$RELEASE" == *kubeci* ]]; then PREFIX="$RELEASE"; else PREFIX="$RELEASE-kubeci"; fi
t0=$SECONDS

[[ $EUID == 0 ]] || { echo "make run: the local node runs containers; run it as root" >&2; exit 1; }
step() { echo "== $* ($((SECONDS - t0))s)"; }

step "the control plane (hack/testenv.sh up)"
kubeconfig="$(hack/testenv.sh up)"
export KUBECONFIG="$kubeconfig"
step "the local node (hack/node.sh up; logs in ${KUBECI_CACHE:-$HOME/.cache/kubeci}/node/logs)"
node="$(hack/node.sh up "$kubeconfig")"
kubectl get nodes -o wide
step "kubeci's images (hack/images.sh: release build and image assembly are cached by content)"
tag="$(hack/images.sh import)"
helm="$(hack/tools.sh helm)"

step "helm upgrade --install $RELEASE charts/kubeci -n $NS (image tag $tag)"
# Workspaces are hostPath directories on the node, which is this machine: under .testenv, so that
# `make down` removes whatever a run left.
"$helm" upgrade --install "$RELEASE" charts/kubeci --namespace "$NS" --create-namespace \
  --set image.registry=localhost/kubeci --set image.tag="$tag" --set image.pullPolicy=Never \
  --set logFormat=plain --set worker.workspaceRoot="$STATE/workspaces" \
  --wait --timeout 5m
kubectl get deployments,pods -n "$NS" -o wide

step "the seed's ConfigMap and Workflow (examples/seed-workflow.yaml)"
# Created once: on a second run, an existing ConfigMap is left as the last run changed it.
kubectl get configmap my-config -n default >/dev/null 2>&1 ||
  kubectl create configmap my-config -n default --from-literal=greeting=hello
kubectl apply --server-side --field-manager=kubeci -f examples/seed-workflow.yaml
kubectl wait kwf/my-workflow -n default --for condition=Ready --timeout=60s

step "changing the ConfigMap: one Workplan per change (kubectl get wp -w)"
before="$(kubectl get wp -n default -o name | sort)"
kubectl patch configmap my-config -n default --type merge -p "{\"data\":{\"greeting\":\"hello at $(date +%T)\"}}"
wp=""
for _ in $(seq 300); do
  wp="$(comm -13 <(echo "$before") <(kubectl get wp -n default -o name | sort) | head -n1)"
  [[ -n "$wp" ]] && break
  sleep 0.2
done
[[ -n "$wp" ]] || { echo "make run: no Workplan after the ConfigMap change (kubectl logs -n $NS deploy/$PREFIX-director)" >&2; exit 1; }
wp="${wp#*/}"
kubectl get wp "$wp" -n default -w &
watcher=$!
phase=""
for _ in $(seq 900); do
  phase="$(kubectl get wp "$wp" -n default -o jsonpath='{.status.phase}')"
  [[ "$phase" == Completed || "$phase" == Failed ]] && break
  sleep 0.2
done
sleep 1 # let the watch print the final line
kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
echo
step "its pods, on node $node"
kubectl get pods -n default -l "kube.ci/workplan=$wp" -o wide
echo
echo "== kubectl logs $wp-task-1 -c step-5"
kubectl logs -n default "$wp-task-1" -c step-5 || true
if [[ "$phase" != Completed ]]; then
  echo "make run: Workplan $wp ended as '${phase:-still running}': $(kubectl get wp "$wp" -n default -o jsonpath='{.status.reason}')" >&2
  echo "logs: kubectl logs -n $NS deploy/$PREFIX-{director,workplan-operator,worker}; node: ${KUBECI_CACHE:-$HOME/.cache/kubeci}/node/logs; stop with: make down" >&2
  exit 1
fi

cat <<EOM

kubeci runs as pods on a real local node ($node: containerd, runc, kubelet, kube-scheduler,
kube-proxy), installed with Helm as release $RELEASE in namespace $NS, images
localhost/kubeci/kubeci-*:$tag (ready after $((SECONDS - t0))s). Try:
  export KUBECONFIG=$kubeconfig PATH=$ROOT/target/debug:\$PATH
  kubectl patch configmap my-config --type merge -p '{"data":{"greeting":"again"}}'; kubectl get wp -w
  kubectl get rqs -o yaml                                                   # the hand-off history
  kubectl annotate kwf my-workflow kube.ci/run=\$(date +%s) --overwrite    # a manual run
  kubectl apply -f examples/diamond.yaml; kubectl get kwf,wp                # runs once per spec change
  kubectl logs -f <pod> -c <step>                                           # a step's output, live
  kubectl kubeci plan -f examples/fan-out.yaml                              # after: cargo build -p cli
  kubectl describe kwf my-workflow                                          # conditions and Events
  kubectl logs -n $NS deploy/$PREFIX-director                              # kubeci's own logs
Scale, upgrade, uninstall:
  kubectl -n $NS scale deployment $PREFIX-worker --replicas=4
  $helm upgrade $RELEASE charts/kubeci -n $NS --reuse-values --set worker.maxInFlight=8
  make run                                                                  # rebuilds changed images, upgrades in place
  $helm uninstall $RELEASE -n $NS                                           # the CRDs stay (crds.keep)
Stop everything with: make down
EOM
