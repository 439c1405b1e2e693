# The commands developers and CI run. `.ci/run` installs prerequisites, then runs `make test`.
.PHONY: run test crds bench down

# kubeci on a local control plane: the CRDs, the three components, the seed Workflow fired by a ConfigMap.
run:
	hack/run-local.sh

# Everything CI checks: formatting, lints, unit, property and integration tests.
test:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --locked

# Regenerate crds/ from the types in crates/shared-types.
crds:
	cargo run -p shared-types --bin crdgen

# The benchmarks (not part of `make test`): the planner (criterion), then kubeci on the local control
# plane against the API server's own round trip; prints tables, writes bench-results/latest.json.
# `make bench BENCH_ARGS=--quick` takes a couple of minutes instead of about ten.
bench:
	cargo bench -p shared-types --bench planner
	cargo run -p e2e --release --locked --bin kubeci-bench -- $(BENCH_ARGS)

# Stop what `make run` started.
down:
	hack/stop-components.sh
	hack/testenv.sh down
