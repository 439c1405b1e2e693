#!/usr/bin/env bash
# A local Kubernetes node that really runs pods: upstream kubelet, kube-scheduler and kube-proxy
# (from the hack/testenv binary), Debian's containerd, runc and CNI plugins, and images built here
# from Debian's busybox-static (no registry). It joins a running control plane (hack/testenv.sh):
# pods reach the apiserver through the `kubernetes` Service (kube-proxy in nftables mode, then a
# forwarder from the node's address to the apiserver's loopback port), and the apiserver reaches
# webhooks through their Services.
#
#   hack/node.sh deps                   apt-get install what the node needs (idempotent)
#   hack/node.sh images                 build the image archive if not cached; print its path
#   hack/node.sh run --kubeconfig K [--exit-on-stdin-eof]
#                                       foreground: start the node, print "ready NODE" on stdout once
#                                       the Node is Ready, run until SIGTERM/SIGINT, stdin EOF or a
#                                       component dies; then stop everything and remove its state
#   hack/node.sh up [KUBECONFIG]        "run" in the background (for make run); print the node name
#   hack/node.sh down                   stop a node started by "up" (or any "run") and wait for it
#   hack/node.sh status                 running or not
#
# Root only (containers, mounts, cgroups, a veth with a private address). One node per machine,
# guarded by a flock: ports 10250/10248, sysctls and cgroups are machine-wide. Everything else
# lives under $KUBECI_CACHE/node (default ~/.cache/kubeci/node): images/ (cached archives),
# logs/ (of the last run), run/ (runtime state, removed when the node stops).
#
# Environment: KUBECI_NODE_IP (default 10.217.0.1, put on a veth pair kubeci0/kubeci0p; the
# control plane must advertise it: kubeci-testenv up --advertise-address, its default),
# KUBECI_POD_SUBNET (default 10.218.0.0/24), KUBECI_SERVICE_CIDR (default 10.0.0.0/24, the
# apiserver's --service-cluster-ip-range), KUBECI_NODE_NAME (default kubeci-node),
# KUBECI_NODE_TIMEOUT (seconds until Ready, default 120), KUBECI_NODE_LOCK_WAIT (seconds to wait
# for another node to stop, default 0). Only stdout carries results; progress goes to stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KUBECI_CACHE:-$HOME/.cache/kubeci}"
NODE_DIR="$CACHE/node"
RUN="$NODE_DIR/run"
LOGS="$NODE_DIR/logs"
NODE_IP="${KUBECI_NODE_IP:-10.217.0.1}"
POD_SUBNET="${KUBECI_POD_SUBNET:-10.218.0.0/24}"
SERVICE_CIDR="${KUBECI_SERVICE_CIDR:-10.0.0.0/24}"
NODE_NAME="${KUBECI_NODE_NAME:-kubeci-node}"
TIMEOUT="${KUBECI_NODE_TIMEOUT:-120}"
LOCK_WAIT="${KUBECI_NODE_LOCK_WAIT:-0}"
LINK=kubeci0
SOCK="$RUN/containerd.sock"
# What the Debian packages provide.
PACKAGES=(containerd runc containernetworking-plugins busybox-static iproute2 util-linux nftables curl)
CNI_BIN=/usr/lib/cni
BUSYBOX=/bin/busybox
# Images in the archive. The busybox image is also tagged as the images the examples and the
# worker's default cleanup pod name, so they resolve locally and nothing is ever pulled.
BUSYBOX_TAGS=(localhost/kubeci/busybox:testenv docker.io/library/alpine:latest docker.io/library/busybox:1.37
  docker.io/library/busybox:latest)
PAUSE_IMAGE=localhost/kubeci/pause:testenv
# The sysctls the kubelet sets when it starts (protectKernelDefaults: false); restored on stop.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward)

log() { echo "node: $*" >&2; }
die() { echo "node: error: $*" >&2; exit 1; }

need_root() {
  [[ $EUID == 0 ]] || die "the local node runs containers, mounts and cgroups: run as root"
}

# ---------------------------------------------------------------------------------------------
# deps

missing_packages() {
  local p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

cmd_deps() {
  need_root
  local missing
  missing="$(missing_packages)"
  if [[ -n "$missing" ]]; then
    log "installing Debian packages: $(echo $missing)"
    command -v apt-get >/dev/null || die "apt-get not found: install $(echo $missing) by hand"
    # The containerd package's postinst would start a system containerd where systemd runs; we
    # run our own, with our own config, root and socket, so the system one is irrelevant.
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2 ||
      die "apt-get install $(echo $missing) failed"
  fi
  local f
  for f in /usr/bin/containerd /usr/bin/containerd-shim-runc-v2 /usr/bin/ctr /usr/sbin/runc \
    "$CNI_BIN/ptp" "$CNI_BIN/host-local" "$CNI_BIN/loopback" "$BUSYBOX" /usr/bin/setpriv /usr/bin/flock \
    /usr/sbin/nft /usr/bin/curl; do
    [[ -x "$f" ]] || die "$f is missing after installing ${PACKAGES[*]}"
  done
}

# ---------------------------------------------------------------------------------------------
# images: one docker-save archive (manifest.json, one config per image, one shared layer)

images_hash() {
  { declare -f build_images; echo "${BUSYBOX_TAGS[*]} $PAUSE_IMAGE"; sha256sum "$BUSYBOX"; } |
    sha256sum | cut -c1-16
}

# build_images OUT: the archive with the busybox image (all BUSYBOX_TAGS) and the pause image.
build_images() {
  local out="$1" tmp
  tmp="$(mktemp -d)"
  mkdir -p "$tmp/rootfs"/{bin,etc,tmp,root,proc,sys,dev,kubeci}
  cp "$BUSYBOX" "$tmp/rootfs/bin/busybox"
  local applet
  for applet in $("$BUSYBOX" --list); do
    [[ "$applet" == busybox ]] || ln -s busybox "$tmp/rootfs/bin/$applet"
  done
  # The pause process: PID 1 of the sandbox, sleeping until it is told to stop.
  printf '#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n' >"$tmp/rootfs/bin/pause"
  chmod 0755 "$tmp/rootfs/bin/pause"
  chmod 1777 "$tmp/rootfs/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$tmp/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/rootfs/etc/group"
  mkdir -p "$tmp/archive"
  # A reproducible layer: sorted, fixed owner and time.
  tar -C "$tmp/rootfs" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -cf "$tmp/layer.tar" .
  local layer
  layer="$(sha256sum "$tmp/layer.tar" | cut -d' ' -f1)"
  mkdir -p "$tmp/archive/$layer"
  mv "$tmp/layer.tar" "$tmp/archive/$layer/layer.tar"
  local path='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
  # config JSON for an image whose process is given by $2 ("Cmd" or "Entrypoint" fragment).
  image_config() {
    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",'
    printf '"config":{"Env":[%s],%s},' "$path" "$1"
    printf '"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},' "$layer"
    printf '"history":[{"created":"1970-01-01T00:00:00Z","created_by":"kubeci hack/node.sh: busybox-static"}]}'
  }
  local busybox_cfg pause_cfg
  image_config '"Cmd":["sh"]' >"$tmp/busybox.json"
  image_config '"Entrypoint":["/bin/pause"]' >"$tmp/pause.json"
  busybox_cfg="$(sha256sum "$tmp/busybox.json" | cut -d' ' -f1).json"
  pause_cfg="$(sha256sum "$tmp/pause.json" | cut -d' ' -f1).json"
  mv "$tmp/busybox.json" "$tmp/archive/$busybox_cfg"
  mv "$tmp/pause.json" "$tmp/archive/$pause_cfg"
  local tags
  tags="$(printf '"%s",' "${BUSYBOX_TAGS[@]}")"
  printf '[{"Config":"%s","RepoTags":[%s],"Layers":["%s/layer.tar"]},' "$busybox_cfg" "${tags%,}" "$layer" \
    >"$tmp/archive/manifest.json"
  printf '{"Config":"%s","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$pause_cfg" "$PAUSE_IMAGE" "$layer" \
    >>"$tmp/archive/manifest.json"
  # Entries named as docker save names them: no "./" prefix.
  (cd "$tmp/archive" && LC_ALL=C tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$out" -- *)
  rm -rf "$tmp"
}

cmd_images() {
  [[ -x "$BUSYBOX" ]] || die "$BUSYBOX is missing: run hack/node.sh deps (busybox-static)"
  local out
  out="$NODE_DIR/images/$(images_hash).tar"
  if [[ ! -f "$out" ]]; then
    mkdir -p "$NODE_DIR/images"
    build_images "$out.tmp.$$"
    mv -f "$out.tmp.$$" "$out"
    log "built $out ($(du -h "$out" | cut -f1))"
  fi
  echo "$out"
}

# ---------------------------------------------------------------------------------------------
# run

# Pids of processes whose command line mentions our runtime dir (containerd shims, left over
# by a node that was killed), never matched by name alone.
pids_using_run() {
  local d pid
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [[ "$pid" == "$$" ]] && continue
    if tr '\0' ' ' <"$d/cmdline" 2>/dev/null | grep -qF -- "$RUN/"; then echo "$pid"; fi
  done
}

# Stops every container, unmounts and removes the runtime state, restores sysctls. Idempotent:
# it also cleans what a killed node left behind.
teardown() {
  local pid
  for pid in "${COMPONENT_PIDS[@]:-}"; do
    [[ -n "$pid" ]] && kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${COMPONENT_PIDS[@]:-}"; do
    [[ -n "$pid" ]] || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  COMPONENT_PIDS=()
  # Containers: kill and delete every one runc knows under our root (kubelet and containerd are
  # stopped by now, so nothing restarts them).
  if [[ -d "$RUN/runc" ]]; then
    local root id
    for root in "$RUN"/runc/*/; do
      [[ -d "$root" ]] || continue
      for id in $(runc --root "$root" list -q 2>/dev/null); do
        runc --root "$root" delete --force "$id" >/dev/null 2>&1 || true
      done
    done
  fi
  for pid in $(pids_using_run); do kill -KILL "$pid" 2>/dev/null || true; done
  # Mounts under our dirs (overlay rootfs, shm, netns, kubelet volumes), deepest first.
  local m
  for _ in 1 2 3; do
    m="$(awk -v run="$RUN/" 'index($2, run) == 1 { print $2 }' /proc/self/mounts | sort -r)"
    [[ -n "$m" ]] || break
    while read -r m; do umount -l "$m" 2>/dev/null || true; done <<<"$m"
  done
  ip link del "$LINK" 2>/dev/null || true # and the service route through it
  # kube-proxy's rules live in tables of their own; it leaves them behind when it stops.
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  # Pod cgroups the kubelet made (empty once the containers are gone).
  local c
  for c in /sys/fs/cgroup/*/kubepods; do
    [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  if [[ -f "$NODE_DIR/sysctl.saved" ]]; then
    local line
    while read -r line; do sysctl -q -w "$line" >/dev/null 2>&1 || true; done <"$NODE_DIR/sysctl.saved"
    rm -f "$NODE_DIR/sysctl.saved"
  fi
  if awk -v run="$RUN/" 'index($2, run) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    log "warning: mounts remain under $RUN; not removing it (see /proc/self/mounts)"
  else
    # Never follow a mount that appeared meanwhile onto another file system.
    rm -rf --one-file-system "$RUN"
  fi
  rm -f "$NODE_DIR/run.pid"
}

write_configs() {
  mkdir -p "$RUN"/{containerd,cni/net.d,cni/ipam,kubelet,kube-proxy,runc} "$LOGS"
  cat >"$RUN/containerd/config.toml" <<EOF
# containerd for kubeci's local node (hack/node.sh): its own root, state and socket.
version = 2
root = "$RUN/containerd/root"
state = "$RUN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$SOCK"

[plugins."io.containerd.internal.v1.opt"]
  path = "$RUN/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  # This VM withholds CAP_SYS_RESOURCE even from root, so runc cannot lower a process's
  # oom_score_adj (the sandbox asks for -998: "failed to update /proc/self/oom_score_adj:
  # Permission denied"). Clamp to containerd's own score instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$RUN/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$RUN/containerd/certs.d"
EOF
  # Pods get an address on a point-to-point veth and no default route: they reach the host only,
  # and through it the other pods, the node's address and the Services (kube-proxy).
  cat >"$RUN/cni/net.d/10-kubeci.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kubeci",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_SUBNET"}]],
        "routes": [{"dst": "$SERVICE_CIDR"}, {"dst": "$NODE_IP/32"}],
        "dataDir": "$RUN/cni/ipam"
      }
    }
  ]
}
EOF
  cat >"$RUN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This VM has the cgroup v1 hierarchy; containerd 1.6 cannot report its cgroup driver.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCK
imageServiceEndpoint: unix://$SOCK
# Our images are imported, never pulled: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
podLogsDir: $RUN/pod-logs
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The apiserver fetches logs from the kubelet without a client certificate; the kubelet listens
# on the node's private address only.
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
registerNode: true
failSwapOn: false
# No nameservers in pods: they have no route off this host anyway.
resolvConf: ""
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
syncFrequency: 10s
EOF
  cat >"$RUN/kube-proxy/config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
# Rules in tables of its own (ip kube-proxy), removed when the node stops.
mode: nftables
clientConnection:
  kubeconfig: $KUBECONFIG_PATH
hostnameOverride: $NODE_NAME
# Traffic from outside the pods (the apiserver calling a webhook) is masqueraded: pods have no
# route back to other host addresses.
clusterCIDR: $POD_SUBNET
detectLocalMode: ClusterCIDR
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
}

start_component() { # NAME CMD...: started with its own log; SIGTERM if this script dies
  local name="$1"; shift
  setpriv --pdeathsig TERM -- "$@" >"$LOGS/$name.log" 2>&1 </dev/null 7>&- 8>&- &
  COMPONENT_PIDS+=($!)
  COMPONENT_NAMES[$!]="$name"
}

fail_with_log() { # NAME MESSAGE
  echo "---- tail of $LOGS/$1.log" >&2
  tail -n 40 "$LOGS/$1.log" >&2 || true
  die "$2"
}

wait_for() { # WHAT SECONDS COMMAND...: polls COMMAND until it succeeds; fails if a component died
  local what="$1" seconds="$2"; shift 2
  local deadline=$((SECONDS + seconds)) pid
  until "$@" >/dev/null 2>&1; do
    for pid in "${COMPONENT_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || fail_with_log "${COMPONENT_NAMES[$pid]}" \
        "${COMPONENT_NAMES[$pid]} exited while waiting for $what"
    done
    ((SECONDS < deadline)) || fail_with_log "${COMPONENT_NAMES[${COMPONENT_PIDS[-1]}]}" \
      "$what: not after ${seconds}s"
    sleep 0.3
  done
}

# The kubernetes Service's address, as pods use it, answers over TLS (any HTTP status).
kubernetes_service_answers() {
  local ip code
  ip="$(kubectl --kubeconfig "$KUBECONFIG_PATH" get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  code="$(curl -sk --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' "https://$ip/version" || true)"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}

node_ready() {
  [[ "$(kubectl --kubeconfig "$KUBECONFIG_PATH" get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

cmd_run() {
  local exit_on_eof=0
  KUBECONFIG_PATH=""
  while (($#)); do
    case "$1" in
      --kubeconfig) KUBECONFIG_PATH="$2"; shift 2 ;;
      --kubeconfig=*) KUBECONFIG_PATH="${1#*=}"; shift ;;
      --exit-on-stdin-eof) exit_on_eof=1; shift ;;
      *) die "run: unknown argument $1" ;;
    esac
  done
  [[ -f "$KUBECONFIG_PATH" ]] || die "run: --kubeconfig FILE of a running control plane is required"
  KUBECONFIG_PATH="$(realpath "$KUBECONFIG_PATH")"
  need_root
  cmd_deps
  command -v kubectl >/dev/null || die "kubectl is not on PATH"
  local t0=$SECONDS bin images
  bin="$("$ROOT/hack/testenv.sh" bin)"
  images="$(cmd_images)"

  mkdir -p "$NODE_DIR"
  exec 7>"$NODE_DIR/.lock"
  if ! flock -w "$LOCK_WAIT" 7; then
    die "another local node is running (pid $(cat "$NODE_DIR/run.pid" 2>/dev/null || echo '?')); only one can run on a machine. Stop it with: make down (or hack/node.sh down)"
  fi
  declare -g -a COMPONENT_PIDS=()
  declare -g -A COMPONENT_NAMES=()
  teardown # what a killed node may have left
  trap teardown EXIT
  trap 'exit 0' TERM INT
  echo $$ >"$NODE_DIR/run.pid"
  rm -rf "$LOGS"
  write_configs

  local s
  for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$NODE_DIR/sysctl.saved"
  # The node's address: the kubelet refuses loopback, and this kernel has no dummy links.
  ip link add "$LINK" type veth peer name "${LINK}p"
  ip addr add "$NODE_IP/32" dev "$LINK"
  ip link set "${LINK}p" up
  ip link set "$LINK" up
  # Service addresses never follow the default route off this machine: kube-proxy rewrites
  # those that have endpoints, the rest end on the veth.
  ip route add "$SERVICE_CIDR" dev "$LINK" src "$NODE_IP"

  # containerd may only ever reach loopback: a pull of an image we did not import fails at once
  # instead of reaching a registry.
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    start_component containerd containerd --config "$RUN/containerd/config.toml"
  wait_for "containerd" 30 ctr -a "$SOCK" version
  ctr -a "$SOCK" -n k8s.io images import "$images" >&2 || die "importing $images into containerd failed"
  log "containerd up, images imported ($((SECONDS - t0))s)"

  start_component kubelet "$bin" kubelet --config "$RUN/kubelet/config.yaml" \
    --kubeconfig "$KUBECONFIG_PATH" --root-dir "$RUN/kubelet" --cert-dir "$RUN/kubelet/pki" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  start_component kube-scheduler "$bin" kube-scheduler --kubeconfig "$KUBECONFIG_PATH" \
    --leader-elect=false --secure-port=0
  # The apiserver listens on loopback and advertises the node's address with its port in the
  # kubernetes Service's endpoints: forward that address to it.
  local server hostport
  server="$(sed -nE 's/^[[:space:]]*server: (.*)$/\1/p' "$KUBECONFIG_PATH" | head -n1)"
  hostport="${server#https://}"
  hostport="${hostport%%/*}"
  [[ "$hostport" =~ :([0-9]+)$ ]] || die "cannot read the apiserver's port from $server"
  start_component apiserver-forward "$bin" forward --listen "$NODE_IP:${BASH_REMATCH[1]}" --to "$hostport"
  start_component kube-proxy "$bin" kube-proxy --config "$RUN/kube-proxy/config.yaml" --v 1
  wait_for "Node $NODE_NAME Ready" "$TIMEOUT" node_ready
  wait_for "the apiserver through the kubernetes Service (kube-proxy)" 60 kubernetes_service_answers
  log "node $NODE_NAME Ready after $((SECONDS - t0))s (logs in $LOGS)"
  echo "ready $NODE_NAME"

  local watcher=""
  if ((exit_on_eof)); then
    exec 3<&0
    cat <&3 >/dev/null 7>&- &
    watcher=$!
  fi
  local rc=0 pid
  wait -n -p pid "${COMPONENT_PIDS[@]}" $watcher || rc=$?
  if [[ "$pid" == "$watcher" ]]; then
    log "stdin closed: stopping"
  else
    echo "---- tail of $LOGS/${COMPONENT_NAMES[$pid]}.log" >&2
    tail -n 40 "$LOGS/${COMPONENT_NAMES[$pid]}.log" >&2 || true
    die "${COMPONENT_NAMES[$pid]} exited (status $rc)"
  fi
}

# ---------------------------------------------------------------------------------------------
# up / down / status (for make run)

running_pid() {
  local pid
  pid="$(cat "$NODE_DIR/run.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "node.sh run "; then echo "$pid"; fi
}

cmd_up() {
  local kubeconfig="${1:-$ROOT/.testenv/kubeconfig}" pid out
  [[ -f "$kubeconfig" ]] || die "no control plane kubeconfig at $kubeconfig: run hack/testenv.sh up first"
  if [[ -n "$(running_pid)" ]]; then
    grep -qF -- "$(realpath "$kubeconfig")" "/proc/$(running_pid)/cmdline" ||
      die "a local node of another control plane is running (pid $(running_pid)); stop it with: hack/node.sh down"
    log "already running (pid $(running_pid))"
    echo "$NODE_NAME"
    return
  fi
  mkdir -p "$NODE_DIR"
  out="$NODE_DIR/up.stdout"
  : >"$out"
  nohup "${BASH_SOURCE[0]}" run --kubeconfig "$kubeconfig" >"$out" 2>"$NODE_DIR/up.stderr" </dev/null &
  pid=$!
  local deadline=$((SECONDS + TIMEOUT + 60))
  while :; do
    if grep -q '^ready ' "$out"; then
      sed -n 's/^ready //p' "$out"
      return
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$NODE_DIR/up.stderr" >&2
      die "the node did not start (logs in $LOGS)"
    fi
    ((SECONDS < deadline)) || { kill -TERM "$pid"; cat "$NODE_DIR/up.stderr" >&2; die "not ready in time"; }
    sleep 0.3
  done
}

cmd_down() {
  local pid
  pid="$(running_pid)"
  if [[ -z "$pid" ]]; then
    log "not running"
    return
  fi
  kill -TERM "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && die "pid $pid still running after 60s"
  log "stopped (pid $pid)"
}

cmd_status() {
  local pid
  pid="$(running_pid)"
  [[ -n "$pid" ]] || { echo "not running"; return 1; }
  echo "running (pid $pid), node $NODE_NAME at $NODE_IP, logs in $LOGS"
}

case "${1:-}" in
  deps) cmd_deps ;;
  images) cmd_images ;;
  run) shift; cmd_run "$@" ;;
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *)
    sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
