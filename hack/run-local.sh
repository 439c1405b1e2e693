#!/usr/bin/env bash
# `make run`: a local kube-apiserver with kubeci's CRDs, the seed's Workflow applied, and its plan.
#
# The controllers (director, workplan-operator, worker) are not part of the repository yet: this
# shows the API and the planner, which is what exists today. `make down` stops it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

kubeconfig="$(hack/testenv.sh up)"
export KUBECONFIG="$kubeconfig"
cargo build --quiet -p cli
export PATH="$ROOT/target/debug:$PATH"

echo "== installing the CRDs"
kubectl apply --server-side --field-manager=kubeci -f crds/
kubectl wait --for condition=Established --timeout=60s \
  crd/workflows.kube.ci crd/workplans.kube.ci crd/requeststates.kube.ci

echo "== applying the seed's Workflow (examples/seed-workflow.yaml)"
kubectl apply --server-side --field-manager=kubeci -f examples/seed-workflow.yaml
kubectl get kwf,wp,rqs -A

echo "== the Workplan the director will create for it (kubectl kubeci plan)"
kubectl kubeci plan -f examples/seed-workflow.yaml | sed -n '1,40p'

cat <<EOM

kubeci's API is running. Try:
  export KUBECONFIG=$kubeconfig PATH=$ROOT/target/debug:\$PATH
  kubectl explain workflow.spec.steps
  kubectl kubeci plan -f examples/diamond.yaml -o json
  kubectl apply -f examples/    # the CRDs' CEL rules check what you apply
Stop it with: make down
EOM
