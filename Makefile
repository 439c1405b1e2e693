# The commands developers and CI run. `.ci/run` installs prerequisites, then runs `make test`.
.PHONY: run test crds bench down

# Bring up a local control plane with kubeci's CRDs and show a Workflow and its plan.
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

# The planner benchmark (criterion).
bench:
	cargo bench -p shared-types --bench planner

# Stop the local control plane started by `make run`.
down:
	hack/testenv.sh down
