# syntax=docker/dockerfile:1
# Small non-root images of kubeci's three binaries, one build stage shared by all:
#
#   docker build --target director          -t ghcr.io/kubeci/kubeci-director:0.1.0 .
#   docker build --target workplan-operator -t ghcr.io/kubeci/kubeci-workplan-operator:0.1.0 .
#   docker build --target worker            -t ghcr.io/kubeci/kubeci-worker:0.1.0 .
#
# The images hold one binary each on distroless/cc (glibc and libgcc, no shell, no package
# manager), run as uid 65532 and need no writable file system, matching the chart's
# securityContext. kubeci's own CI has no container engine or registry: it builds the same images
# (same paths, user 65532:65532, working directory, entrypoint and ports) with hack/images.sh,
# from Debian's packages and crane, and runs them on the local node (see README, "Container images").

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p director -p workplan-operator -p worker \
 && mkdir -p /out \
 && cp target/release/director target/release/workplan-operator target/release/worker /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
USER 65532:65532

FROM runtime AS director
COPY --from=build /out/director /usr/local/bin/director
EXPOSE 8080 9443
ENTRYPOINT ["/usr/local/bin/director"]

FROM runtime AS workplan-operator
COPY --from=build /out/workplan-operator /usr/local/bin/workplan-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/workplan-operator"]

FROM runtime AS worker
COPY --from=build /out/worker /usr/local/bin/worker
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/worker"]
