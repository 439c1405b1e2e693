#!/usr/bin/env bash
# kubeci's container images, built on this machine without a container engine or registry:
# release binaries of director, workplan-operator and worker on a minimal base assembled from
# Debian packages (the shared libraries they link: libc6, libgcc-s1; CA certificates from
# ca-certificates; an /etc/passwd with the non-root user 65532; no shell), put together with
# crane (go-containerregistry, installed by hack/tools.sh).
#
#   hack/images.sh build             build what is not cached; print the tag
#   hack/images.sh import [SOCKET]   build, then import into the local node's containerd
#                                    (default: the socket of hack/node.sh); print the tag
#   hack/images.sh list              build; print "<image> <archive> <compressed> <unpacked>" per image
#
# The images are localhost/kubeci/kubeci-{director,workplan-operator,worker}:<tag>, as the
# Dockerfile builds them (same paths, user 65532:65532, entrypoint /usr/local/bin/<binary>). The tag
# is a hash of the three binaries, the base's Debian package versions and this script, so the same
# sources give the same tag and the same image digests (fixed mtimes and owners, sorted entries).
# Archives (docker-save format, one per image) are cached in $KUBECI_CACHE/images/<tag>/; the
# release build in $KUBECI_CACHE/target-release (dependencies stay compiled between runs).
# Only stdout carries results; progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBECI_CACHE:-$HOME/.cache/kubeci}"
IMAGES="$CACHE/images"
TARGET="${KUBECI_RELEASE_TARGET_DIR:-$CACHE/target-release}"
REGISTRY=localhost/kubeci
COMPONENTS=(director workplan-operator worker)
# The Debian packages of the base: the binaries' shared libraries and the CA bundle. The versions
# are the ones installed here, because the binaries were linked against them.
PACKAGES=(libc6 libgcc-s1 ca-certificates)
ARCH_TRIPLET=x86_64-linux-gnu
ENV_PATH="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "images: $*" >&2; }
die() { echo "images: error: $*" >&2; exit 1; }

ports() { # the ports each image declares, as the Dockerfile's EXPOSE
  case "$1" in
    director) echo "8080/tcp,9443/tcp" ;;
    *) echo "8080/tcp" ;;
  esac
}

build_binaries() {
  command -v cargo >/dev/null || die "cargo is not on PATH"
  local t0=$SECONDS
  log "cargo build --release (${COMPONENTS[*]}) into $TARGET"
  (cd "$ROOT" && cargo build --release --locked --quiet --target-dir "$TARGET" \
    $(printf -- '-p %s ' "${COMPONENTS[@]}")) >&2 || die "cargo build --release failed"
  log "binaries ready in $((SECONDS - t0))s"
}

package_versions() {
  local p
  for p in "${PACKAGES[@]}"; do
    echo "$p=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || die "$p is not installed")"
  done
}

# base_layer OUT: a tar of the base: libraries of libc6 and libgcc-s1 (no gconv, binaries or
# docs except the copyright files), the CA bundle, passwd and group, /tmp and a home directory.
base_layer() {
  local out="$1" tmp debs
  tmp="$(mktemp -d)"
  debs="$IMAGES/debs"
  mkdir -p "$debs" "$tmp/pkgs" "$tmp/rootfs"
  local spec
  for spec in $(package_versions); do
    local name="${spec%%=*}" version="${spec#*=}"
    local deb
    deb="$(ls "$debs/${name}_${version//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
    if [[ -z "$deb" ]]; then
      log "apt-get download $spec"
      if ! (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$spec" >&2); then
        apt-get update -qq >&2 || true
        (cd "$debs" && apt-get download -qq -o APT::Sandbox::User=root "$spec" >&2) || die "apt-get download $spec failed"
      fi
      deb="$(ls "$debs/${name}_${version//:/%3a}_"*.deb | head -n1)"
    fi
    dpkg-deb -x "$deb" "$tmp/pkgs/$name"
    # The license, where the package carries it (libgcc-s1's is in gcc-12-base, a link).
    if [[ -f "$tmp/pkgs/$name/usr/share/doc/$name/copyright" ]]; then
      mkdir -p "$tmp/rootfs/usr/share/doc/$name"
      cp "$tmp/pkgs/$name/usr/share/doc/$name/copyright" "$tmp/rootfs/usr/share/doc/$name/"
    fi
  done
  local r="$tmp/rootfs"
  mkdir -p "$r/lib/$ARCH_TRIPLET" "$r/lib64" "$r/etc/ssl/certs" "$r/tmp" "$r/home/nonroot" "$r/usr/local/bin"
  # Shared objects only (and their links); the loader where the binaries' ELF interpreter points.
  cp -a "$tmp/pkgs/libc6/lib/$ARCH_TRIPLET/"*.so* "$r/lib/$ARCH_TRIPLET/"
  cp -a "$tmp/pkgs/libc6/lib64/ld-linux-x86-64.so.2" "$r/lib64/"
  cp -a "$tmp/pkgs/libgcc-s1/lib/$ARCH_TRIPLET/"libgcc_s.so.1 "$r/lib/$ARCH_TRIPLET/"
  # What update-ca-certificates makes of the package with the default configuration: every
  # Mozilla certificate, in name order.
  find "$tmp/pkgs/ca-certificates/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort |
    xargs cat >"$r/etc/ssl/certs/ca-certificates.crt"
  [[ -s "$r/etc/ssl/certs/ca-certificates.crt" ]] || die "no certificates in the ca-certificates package"
  # As distroless's nonroot images: root, nobody and nonroot (65532), no login shell anywhere.
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$r/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' 'nonroot:x:65532:' >"$r/etc/group"
  chmod 1777 "$r/tmp"
  chmod 0755 "$r/home/nonroot"
  tar -C "$r" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -cf "$out" .
  # The owner of /home/nonroot is its user: rewrite that one entry rather than chown (which
  # needs root) by appending the directory again with its numeric owner.
  tar -C "$r" --owner=65532 --group=65532 --numeric-owner --mtime=@0 --format=gnu --no-recursion \
    -rf "$out" ./home/nonroot
  rm -rf "$tmp"
}

# check_libraries ROOTFS_TAR BINARY: every library ldd resolves for BINARY is in the base.
check_libraries() {
  local base="$1" bin="$2" contents lib
  contents="$(tar -tf "$base")"
  while read -r lib; do
    [[ -n "$lib" ]] || continue
    grep -qxF "./lib/$ARCH_TRIPLET/$lib" <<<"$contents" ||
      die "$(basename "$bin") needs $lib, which the base does not carry: add its Debian package to PACKAGES"
  done < <(ldd "$bin" | awk '/=>/ { print $1 }')
  local interp
  interp="$(readelf -l "$bin" | sed -nE 's/.*Requesting program interpreter: ([^]]+)\].*/\1/p')"
  [[ -z "$interp" ]] || grep -qxF ".$interp" <<<"$contents" || die "$(basename "$bin"): interpreter $interp is not in the base"
}

binary_layer() { # OUT BINARY NAME
  local tmp
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/usr/local/bin"
  cp "$2" "$tmp/usr/local/bin/$3"
  chmod 0755 "$tmp/usr/local/bin/$3"
  tar -C "$tmp" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu -cf "$1" ./usr/local/bin/"$3"
  rm -rf "$tmp"
}

tag_of() { # the content hash of what goes into the images
  {
    cat "${BASH_SOURCE[0]}"
    package_versions
    echo "crane $CRANE_VERSION"
    local c
    for c in "${COMPONENTS[@]}"; do sha256sum "$TARGET/release/$c" | cut -d' ' -f1; done
  } | sha256sum | cut -c1-16
}

# assemble DIR TAG: one archive per component in DIR, with crane and a throwaway registry of its
# own on loopback (crane's mutate reads and writes images through the registry API).
assemble() {
  local dir="$1" tag="$2" tmp crane
  crane="$("$ROOT/hack/tools.sh" crane)"
  tmp="$(mktemp -d)"
  base_layer "$tmp/base.tar"
  local c
  for c in "${COMPONENTS[@]}"; do check_libraries "$tmp/base.tar" "$TARGET/release/$c"; done
  NO_PROXY='*' "$crane" registry serve --address 127.0.0.1:0 2>"$tmp/registry.log" &
  local registry_pid=$! port=""
  for _ in $(seq 100); do
    port="$(sed -nE 's/.*serving on port ([0-9]+).*/\1/p' "$tmp/registry.log")"
    [[ -n "$port" ]] && break
    kill -0 "$registry_pid" 2>/dev/null || die "crane registry serve exited: $(cat "$tmp/registry.log")"
    sleep 0.1
  done
  [[ -n "$port" ]] || { kill "$registry_pid"; die "crane registry serve did not start"; }
  local ok=1
  for c in "${COMPONENTS[@]}"; do
    binary_layer "$tmp/$c.tar" "$TARGET/release/$c" "$c"
    local scratch="127.0.0.1:$port/kubeci-$c:scratch"
    if ! NO_PROXY='*' "$crane" append --new_layer "$tmp/base.tar" --new_layer "$tmp/$c.tar" \
      --new_tag "$scratch" >/dev/null 2>"$tmp/crane.log" ||
      ! NO_PROXY='*' "$crane" mutate "$scratch" \
        --entrypoint "/usr/local/bin/$c" --user 65532:65532 --workdir /home/nonroot \
        --env "$ENV_PATH" --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        --exposed-ports "$(ports "$c")" --set-platform linux/amd64 \
        --label "org.opencontainers.image.source=https://github.com/kubeci/kubeci" \
        --label "org.opencontainers.image.title=kubeci-$c" \
        --tag "$REGISTRY/kubeci-$c:$tag" --output "$dir/kubeci-$c.tar" >/dev/null 2>>"$tmp/crane.log"; then
      ok=0
      break
    fi
  done
  kill "$registry_pid" 2>/dev/null || true
  wait "$registry_pid" 2>/dev/null || true
  ((ok)) || die "crane failed: $(cat "$tmp/crane.log")"
  for c in "${COMPONENTS[@]}"; do verify "$dir/kubeci-$c.tar" "$c"; done
  rm -rf "$tmp"
}

# verify ARCHIVE COMPONENT: the image runs /usr/local/bin/COMPONENT as 65532 and has no shell.
verify() {
  local archive="$1" c="$2" tmp config
  tmp="$(mktemp -d)"
  tar -C "$tmp" -xf "$archive"
  config="$(sed -nE 's/.*"Config":"([^"]+)".*/\1/p' "$tmp/manifest.json")"
  grep -qF '"User":"65532:65532"' "$tmp/$config" || die "kubeci-$c: not user 65532:65532: $(cat "$tmp/$config")"
  grep -qF "\"Entrypoint\":[\"/usr/local/bin/$c\"]" "$tmp/$config" || die "kubeci-$c: wrong entrypoint"
  local layer
  for layer in "$tmp"/*.tar.gz; do
    if tar -tzf "$layer" | grep -qE '(^|/)(s?bin|usr/s?bin)/(sh|bash|dash|ash|busybox)$'; then
      die "kubeci-$c carries a shell"
    fi
  done
  rm -rf "$tmp"
}

CRANE_VERSION="$(sed -nE 's/^CRANE_VERSION="([^"]+)".*/\1/p' "$ROOT/hack/tools.sh")"

cmd_build() {
  build_binaries
  local tag dir
  tag="$(tag_of)"
  dir="$IMAGES/$tag"
  if [[ ! -f "$dir/.done" ]]; then
    mkdir -p "$IMAGES"
    exec 9>"$IMAGES/.lock"
    flock 9
    if [[ ! -f "$dir/.done" ]]; then
      local t0=$SECONDS
      rm -rf "$dir"
      mkdir -p "$dir"
      assemble "$dir" "$tag"
      touch "$dir/.done"
      log "assembled ${#COMPONENTS[@]} images with tag $tag in $((SECONDS - t0))s ($dir)"
      # Drop image sets unused for 7 days.
      find "$IMAGES" -mindepth 1 -maxdepth 1 -type d ! -name debs ! -path "$dir" -mtime +7 \
        -exec rm -rf {} + 2>/dev/null || true
    fi
    exec 9>&-
  fi
  touch "$dir"
  echo "$tag"
}

cmd_import() {
  local sock="${1:-$CACHE/node/run/containerd.sock}" tag c
  [[ -S "$sock" ]] || die "no containerd socket at $sock: start the node first (hack/node.sh up)"
  tag="$(cmd_build)"
  for c in "${COMPONENTS[@]}"; do
    ctr -a "$sock" -n k8s.io images import "$IMAGES/$tag/kubeci-$c.tar" >/dev/null ||
      die "importing kubeci-$c into containerd ($sock) failed"
  done
  log "imported $REGISTRY/kubeci-{$(IFS=,; echo "${COMPONENTS[*]}")}:$tag"
  echo "$tag"
}

cmd_list() {
  local tag c archive unpacked
  tag="$(cmd_build)"
  for c in "${COMPONENTS[@]}"; do
    archive="$IMAGES/$tag/kubeci-$c.tar"
    # Uncompressed size: the layers as the node unpacks them.
    unpacked="$(tar -xOf "$archive" --wildcards '*.tar.gz' 2>/dev/null | gzip -dc 2>/dev/null | wc -c || true)"
    [[ "$unpacked" -gt 0 ]] 2>/dev/null || unpacked="$(tar -xOf "$archive" --wildcards 'sha256:*' | gzip -dc | wc -c)"
    echo "$REGISTRY/kubeci-$c:$tag $archive $(du -h "$archive" | cut -f1) $((unpacked / 1024 / 1024))M"
  done
}

case "${1:-}" in
  build) cmd_build ;;
  import) shift; cmd_import "$@" ;;
  list) cmd_list ;;
  *)
    sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
