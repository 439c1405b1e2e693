#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) for kubeci's
# tests, built from the upstream Go modules in hack/testenv (see hack/testenv/README.md). The same
# binary carries the kubelet and kube-scheduler of the local node (hack/node.sh).
#
#   hack/testenv.sh build | bin   build kubeci-testenv if not cached; print the binary's path
#   hack/testenv.sh up            start a control plane in <repo>/.testenv; print the kubeconfig path
#   hack/testenv.sh down          stop it and remove <repo>/.testenv
#   hack/testenv.sh status        running or not, kubeconfig path, server /version
#   hack/testenv.sh gomod v1.35.N regenerate hack/testenv/go.mod for another Kubernetes release
#
# Environment: KUBECI_CACHE (default ~/.cache/kubeci) holds the built binary, keyed by a hash of
# the module's sources, so fresh clones on the same machine reuse it. TESTENV_TIMEOUT (seconds,
# default 120) bounds "up". Only stdout carries results (paths); progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODDIR="$ROOT/hack/testenv"
STATE="$ROOT/.testenv"
CACHE="${KUBECI_CACHE:-$HOME/.cache/kubeci}"
TIMEOUT="${TESTENV_TIMEOUT:-120}"

log() { echo "testenv: $*" >&2; }
die() { echo "testenv: error: $*" >&2; exit 1; }

need_go() {
  command -v go >/dev/null 2>&1 || die "'go' is not on PATH. The test control plane is built from the
upstream Kubernetes Go modules and needs Go >= 1.25 (see hack/testenv/go.mod). Install Go and retry."
}

# The Kubernetes release hack/testenv/go.mod requires, e.g. v1.35.4.
k8s_version() {
  sed -nE 's/^[[:space:]]*k8s\.io\/kubernetes (v[0-9][^ ]*).*/\1/p' "$MODDIR/go.mod" | head -n1
}

# Everything that determines the binary's content; a change means a new cache entry.
source_hash() {
  {
    echo "go: $(GOTOOLCHAIN=local go version)"
    declare -f build_binary
    (cd "$MODDIR" && LC_ALL=C ls go.mod go.sum *.go | while read -r f; do echo "== $f"; cat "$f"; done)
  } | sha256sum | cut -c1-16
}

bin_path() { echo "$CACHE/testenv/$(source_hash)/kubeci-testenv"; }

# build_binary OUT: compile the multiplexer to OUT.
build_binary() {
  local out="$1" v major minor date
  v="$(k8s_version)"
  [[ "$v" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "cannot read the k8s.io/kubernetes version from $MODDIR/go.mod"
  major="${BASH_REMATCH[1]}" minor="${BASH_REMATCH[2]}"
  # The release's publication time from the module proxy: a reproducible build date.
  date="$(cd "$MODDIR" && GOTOOLCHAIN=local go list -m -json k8s.io/kubernetes |
    sed -nE 's/^[[:space:]]*"Time": "([^"]+)".*/\1/p')"
  date="${date:-1970-01-01T00:00:00Z}"
  local ld="-s -w"
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ld+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  (cd "$MODDIR" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:-} -mod=readonly" \
    go build -trimpath -ldflags "$ld" -o "$out" .)
}

cmd_build() {
  need_go
  local bin dir
  bin="$(bin_path)"
  dir="$(dirname "$bin")"
  if [[ -x "$bin" ]]; then
    touch "$dir" 2>/dev/null || true # last use, for pruning
    echo "$bin"
    return
  fi
  mkdir -p "$dir"
  # One builder at a time per cache entry; the others wait and reuse its result.
  exec 9>"$dir/.lock"
  flock 9
  if [[ ! -x "$bin" ]]; then
    log "building kubeci-testenv (Kubernetes $(k8s_version)) into $dir; the first build takes minutes"
    local tmp="$dir/.kubeci-testenv.tmp.$$" t0=$SECONDS
    rm -f "$tmp"
    if ! build_binary "$tmp"; then rm -f "$tmp"; die "go build failed"; fi
    mv -f "$tmp" "$bin"
    log "built in $((SECONDS - t0))s"
    # Drop builds of other sources unused for 14 days (~120 MB each).
    find "$CACHE/testenv" -mindepth 1 -maxdepth 1 -type d ! -path "$dir" -mtime +14 \
      -exec rm -rf {} + 2>/dev/null || true
  fi
  exec 9>&-
  echo "$bin"
}

# pid of the running orchestrator for $STATE, or nothing.
running_pid() {
  local pid
  [[ -f "$STATE/up.pid" ]] || return 0
  pid="$(cat "$STATE/up.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  # Guard against pid reuse: it must be our binary running "up".
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "kubeci-testenv up "; then echo "$pid"; fi
}

# The orchestrator's stderr already ends with the tail of the failing component's log.
print_failure_logs() {
  echo "---- $STATE/up.stderr (component logs: $STATE/*.log)" >&2
  tail -n 80 "$STATE/up.stderr" >&2 || true
}

cmd_up() {
  local pid bin
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    if [[ -f "$STATE/kubeconfig" ]]; then
      log "already running (pid $pid)"
      echo "$STATE/kubeconfig"
      return
    fi
    die "an instance (pid $pid) is starting or broken; run: hack/testenv.sh down"
  fi
  bin="$(cmd_build)"
  rm -rf "$STATE"
  mkdir -p "$STATE"
  log "starting the control plane in $STATE"
  # The apiserver advertises the local node's address (hack/node.sh forwards it to its port).
  nohup "$bin" up --dir "$STATE" --timeout "${TIMEOUT}s" --advertise-address "${KUBECI_NODE_IP:-10.217.0.1}" \
    >"$STATE/up.stdout" 2>"$STATE/up.stderr" </dev/null &
  pid=$!
  echo "$pid" >"$STATE/up.pid"
  local deadline=$((SECONDS + TIMEOUT + 10))
  while :; do
    if grep -q '^ready ' "$STATE/up.stdout" 2>/dev/null; then
      log "ready (pid $pid): $(grep -E 'ready after' "$STATE/up.stderr" | tail -n1 | sed 's/.*up: //')"
      echo "$STATE/kubeconfig"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      print_failure_logs
      die "kubeci-testenv up exited before it was ready (logs in $STATE)"
    fi
    if ((SECONDS > deadline)); then
      print_failure_logs
      kill -TERM "$pid" 2>/dev/null || true
      die "not ready after ${TIMEOUT}s (logs in $STATE)"
    fi
    sleep 0.2
  done
}

cmd_down() {
  local pid i
  pid="$(running_pid)"
  if [[ -n "$pid" ]]; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still running after 30s, killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped (pid $pid)"
  else
    log "not running"
  fi
  rm -rf "$STATE"
}

cmd_status() {
  local pid server
  pid="$(running_pid)"
  if [[ -z "$pid" || ! -f "$STATE/kubeconfig" ]]; then
    echo "not running"
    return 1
  fi
  server="$(sed -nE 's/^[[:space:]]*server: (.*)$/\1/p' "$STATE/kubeconfig")"
  echo "running (pid $pid)"
  echo "kubeconfig: $STATE/kubeconfig"
  echo "server: $server"
  echo "version: $(curl -fsS --max-time 5 --noproxy '*' --cacert "$STATE/ca.crt" "$server/version" |
    sed -nE 's/.*"gitVersion": "([^"]+)".*/\1/p')"
}

# gomod VERSION: rewrite hack/testenv/go.mod for k8s.io/kubernetes VERSION: one replace line per
# staging module (from the replace => ./staging/... lines of its own go.mod) and the etcd server
# version it pins; then go mod tidy.
cmd_gomod() {
  need_go
  local v="${1:-}" gomod staging etcd
  [[ "$v" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "usage: hack/testenv.sh gomod v1.MINOR.PATCH"
  local sv="v0.${BASH_REMATCH[1]}.${BASH_REMATCH[2]}"
  gomod="$(cd "$MODDIR" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$v" |
    sed -nE 's/^[[:space:]]*"GoMod": "([^"]+)".*/\1/p')"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$v"
  staging="$(sed -nE 's/^[[:space:]]*(k8s\.io\/[^ ]+) => \.\/staging\/.*/\1/p' "$gomod")"
  etcd="$(sed -nE 's/^[[:space:]]*go\.etcd\.io\/etcd\/server\/v3 (v[^ ]+).*/\1/p' "$gomod" | head -n1)"
  local gov
  gov="$(sed -nE 's/^go ([0-9.]+)$/\1/p' "$gomod")"
  {
    echo "// Module for kubeci's test control plane (see hack/testenv.sh)."
    echo "// Regenerate the replace block with: hack/testenv.sh gomod v1.35.N"
    echo "module kubeci.dev/hack/testenv"
    echo
    echo "go $gov"
    echo
    echo "require ("
    echo "	go.etcd.io/etcd/server/v3 $etcd"
    echo "	k8s.io/kubernetes $v"
    echo ")"
    echo
    echo "replace ("
    local m
    for m in $staging; do echo "	$m => $m $sv"; done
    echo ")"
  } >"$MODDIR/go.mod"
  (cd "$MODDIR" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod tidy)
  log "hack/testenv/go.mod now requires k8s.io/kubernetes $v (etcd $etcd, $(wc -w <<<"$staging") staging modules)"
}

case "${1:-}" in
  build | bin) cmd_build ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  gomod) shift; cmd_gomod "$@" ;;
  *)
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
