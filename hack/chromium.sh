#!/usr/bin/env bash
# Headless Chromium for the web view's browser test (e2e/tests/ui.rs): Debian's `chromium`
# package, apt-installed when missing (needs root, as .ci/run has). Prints the browser's path on
# stdout; progress goes to stderr. Fails, naming what is missing, rather than letting the test skip.
set -euo pipefail

find_chromium() {
  local name
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then
      command -v "$name"
      return 0
    fi
  done
  return 1
}

if path="$(find_chromium)"; then
  echo "$path"
  exit 0
fi
[[ $EUID == 0 ]] || { echo "hack/chromium.sh: error: chromium is not installed and installing it needs root (apt-get install chromium)" >&2; exit 1; }
command -v apt-get >/dev/null || { echo "hack/chromium.sh: error: chromium is not installed and there is no apt-get to install Debian's package" >&2; exit 1; }
echo "hack/chromium.sh: installing Debian's chromium" >&2
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >&2
path="$(find_chromium)" || { echo "hack/chromium.sh: error: chromium was installed but is not on PATH" >&2; exit 1; }
"$path" --version >&2
echo "$path"
