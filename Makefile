# The commands developers and CI run. `.ci/run` installs prerequisites, then runs `make test`.
.PHONY: run images test test-unit crds bench chart down

# kubeci on this machine as on a cluster: control plane and a real node (root), kubeci's images built
# here, `helm upgrade --install charts/kubeci`, the seed Workflow fired by a ConfigMap and followed to
# Completed. Run again, it upgrades the release in place.
run:
	hack/run-local.sh

# kubeci's images (release binaries, no engine or registry; cached by content): print them and their sizes.
images:
	hack/images.sh list

# Everything CI checks: formatting, lints, unit, property and integration tests.
test:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --locked

# The quick loop: formatting, clippy and the pure tests (unit, property, CRD drift, the plugin's
# planner), in well under a minute once built; no root, no Go, no control plane.
test-unit:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --locked -p shared-types -p cli --all-targets
	cargo test --locked -p director -p workplan-operator -p worker -p plumbing -p e2e --lib --bins

# Regenerate crds/ from the types in shared-types/.
crds:
	cargo run -p shared-types --bin crdgen

# The benchmarks (not part of `make test`): the planner (criterion), then kubeci on the local control
# plane against the API server's own round trip; prints tables, writes bench-results/latest.json.
# `make bench BENCH_ARGS=--quick` takes a couple of minutes instead of about ten.
bench:
	cargo bench -p shared-types --bench planner
	cargo run -p e2e --release --locked --bin kubeci-bench -- $(BENCH_ARGS)

# Lint and render the Helm chart (make test also validates it with kubeconform and installs it).
chart:
	$$(hack/tools.sh helm) lint --strict charts/kubeci
	$$(hack/tools.sh helm) template kubeci charts/kubeci --namespace kubeci-system >/dev/null

# Remove what `make run` started: the node (and with it every pod) and the control plane.
down:
	hack/node.sh down
	hack/testenv.sh down
