#!/usr/bin/env bash
# Go-installed tools for kubeci's tests, cached in ${KUBECI_CACHE:-~/.cache/kubeci}/tools/bin.
#
#   hack/tools.sh              install all tools (if not cached); print the bin directory
#   hack/tools.sh helm         install helm if needed; print its path
#   hack/tools.sh kubeconform  install kubeconform if needed; print its path
#   hack/tools.sh crane        install crane (go-containerregistry) if needed; print its path
#
# Each tool is a plain `go install module/cmd@version` (GOBIN = the cache), independent of the
# hack/testenv module. Bump a version below and the next call reinstalls it.
set -euo pipefail

HELM_VERSION="v3.22.0"        # helm.sh/helm/v3, newest v3 on the module proxy at the time of writing
KUBECONFORM_VERSION="v0.8.0"  # github.com/yannh/kubeconform
CRANE_VERSION="v0.22.1"       # github.com/google/go-containerregistry: assembles kubeci's images (hack/images.sh)

CACHE="${KUBECI_CACHE:-$HOME/.cache/kubeci}"
BIN="$CACHE/tools/bin"

log() { echo "tools: $*" >&2; }
die() { echo "tools: error: $*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "'go' is not on PATH; the tools are built with 'go install' (Go >= 1.26)."

# install NAME PKG@VERSION LDFLAGS: go install into a private GOBIN, then move into $BIN atomically.
install() {
  local name="$1" pkg="$2" ldflags="$3" version="${2##*@}"
  local stamp="$BIN/.$name.version"
  if [[ -x "$BIN/$name" && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then return; fi
  mkdir -p "$BIN"
  exec 8>"$CACHE/tools/.lock"
  flock 8
  if [[ ! -x "$BIN/$name" || "$(cat "$stamp" 2>/dev/null)" != "$version" ]]; then
    local tmp t0=$SECONDS
    tmp="$(mktemp -d "$CACHE/tools/.install.XXXXXX")"
    log "installing $pkg (first time: a minute or more)"
    if ! (cd "$tmp" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false GOBIN="$tmp" \
      go install -trimpath -ldflags "$ldflags" "$pkg"); then
      rm -rf "$tmp"
      die "go install $pkg failed"
    fi
    mv -f "$tmp/$name" "$BIN/$name"
    echo "$version" >"$stamp"
    rm -rf "$tmp"
    log "installed $name $version in $((SECONDS - t0))s"
  fi
  exec 8>&-
}

helm() {
  # As helm's Makefile: version stamp, and the default Kubernetes version of `helm template` /
  # `helm lint` (.Capabilities.KubeVersion) derived from the client-go helm is built with.
  local v="$HELM_VERSION" ld="-s -w" gomod cg major=1 minor=20
  if [[ ! -x "$BIN/helm" || "$(cat "$BIN/.helm.version" 2>/dev/null)" != "$v" ]]; then
    gomod="$(cd / && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "helm.sh/helm/v3@$v" |
      sed -nE 's/^[[:space:]]*"GoMod": "([^"]+)".*/\1/p')"
    cg="$(sed -nE 's/^[[:space:]]*k8s\.io\/client-go v0\.([0-9]+)\..*/\1/p' "$gomod" | head -n1)"
    [[ -n "$cg" ]] && minor="$cg"
    ld+=" -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    local p
    for p in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
      ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
    done
  fi
  install helm "helm.sh/helm/v3/cmd/helm@$v" "$ld"
}

kubeconform() {
  install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
    "-s -w -X main.version=$KUBECONFORM_VERSION"
}

crane() {
  install crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" "-s -w"
}

case "${1:-all}" in
  all) helm; kubeconform; crane; echo "$BIN" ;;
  helm) helm; echo "$BIN/helm" ;;
  kubeconform) kubeconform; echo "$BIN/kubeconform" ;;
  crane) crane; echo "$BIN/crane" ;;
  *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
