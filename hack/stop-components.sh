#!/usr/bin/env bash
# Stops what hack/run-local.sh started (pid files in .testenv/), gracefully: SIGTERM, then wait
# while they drain (a worker finishes or hands back its jobs and releases its Lease, which needs
# the API server still up), SIGKILL after 40 s.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pids=()
for file in "$ROOT"/.testenv/*.pid; do
  [[ -f "$file" ]] || continue
  [[ "$(basename "$file")" == up.pid ]] && continue # the control plane: hack/testenv.sh down stops it last
  pid="$(cat "$file")"
  kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  rm -f "$file"
done
for _ in $(seq 40); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [[ $alive == 0 ]] && exit 0
  sleep 1
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
echo "stop-components: killed what did not stop within 40 s" >&2
