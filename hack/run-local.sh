#!/usr/bin/env bash
# `make run`: kubeci on a local control plane. Brings up kube-apiserver (hack/testenv.sh), installs
# the CRDs, starts the director, applies the seed's Workflow with its ConfigMap trigger, changes
# the ConfigMap, and shows the Workplan the director creates for it.
#
# Not yet here: the workplan-operator and the workers, so Workplans stay Pending and no step
# runs. `make down` stops everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STATE="$ROOT/.testenv"

kubeconfig="$(hack/testenv.sh up)"
export KUBECONFIG="$kubeconfig"
cargo build --quiet -p cli -p director
export PATH="$ROOT/target/debug:$PATH"

echo "== installing the CRDs"
kubectl apply --server-side --field-manager=kubeci -f crds/
kubectl wait --for condition=Established --timeout=60s \
  crd/workflows.kube.ci crd/workplans.kube.ci crd/requeststates.kube.ci

echo "== starting the director (log: $STATE/director.log)"
if [[ -f "$STATE/director.pid" ]] && kill -0 "$(cat "$STATE/director.pid")" 2>/dev/null; then
  kill "$(cat "$STATE/director.pid")" && sleep 1
fi
nohup director --no-leader-election --metrics-addr 127.0.0.1:8080 >"$STATE/director.log" 2>&1 &
echo $! >"$STATE/director.pid"

echo "== the seed's ConfigMap and Workflow (examples/seed-workflow.yaml)"
kubectl create configmap my-config -n default --from-literal=greeting=hello \
  --dry-run=client -o yaml | kubectl apply --server-side --field-manager=kubeci -f -
kubectl apply --server-side --field-manager=kubeci -f examples/seed-workflow.yaml
kubectl wait kwf/my-workflow -n default --for condition=Ready --timeout=30s
echo "existing ConfigMaps do not fire: $(kubectl get wp -n default --no-headers 2>/dev/null | wc -l) Workplans"

echo "== changing the ConfigMap: one Workplan per change"
kubectl patch configmap my-config -n default --type merge -p "{\"data\":{\"greeting\":\"hello at $(date +%T)\"}}"
for _ in $(seq 50); do
  [[ -n "$(kubectl get wp -n default -o name 2>/dev/null)" ]] && break
  sleep 0.2
done
kubectl get kwf,wp -n default
echo
kubectl get wp -n default -o jsonpath='{range .items[*]}{.metadata.name}: {.spec.trigger.event} of {.spec.trigger.kind}/{.spec.trigger.name}, {.spec.tasks[*].parallelSteps[*].name}{"\n"}{end}'

cat <<EOM

kubeci's director is running (metrics on http://127.0.0.1:8080/metrics). Try:
  export KUBECONFIG=$kubeconfig PATH=$ROOT/target/debug:\$PATH
  kubectl patch configmap my-config --type merge -p '{"data":{"greeting":"again"}}'; kubectl get wp
  kubectl annotate kwf my-workflow kube.ci/run=\$(date +%s) --overwrite      # a manual run
  kubectl apply -f examples/diamond.yaml; kubectl get kwf,wp                  # runs once per spec change
  kubectl kubeci plan -f examples/fan-out.yaml
  kubectl describe kwf my-workflow                                            # conditions and Events
Workplans stay Pending until the workplan-operator and workers land.
Stop it with: make down
EOM
