#!/usr/bin/env bash
# A real node for the test cluster: containerd, runc and the CNI plugins from Debian,
# kubelet and kube-proxy built from the control plane's own Kubernetes module,
# CoreDNS, and kube-router's network policy controller, so pods really run, reach
# each other and the API server through Services, resolve Service names, and are
# kept apart by NetworkPolicies. It joins the control plane `scripts/control-plane.sh`
# starts (which calls this script), beside the kwok nodes, and is tainted so only
# pods meant for it land there (a namespace opts in, see `NAMESPACE ANNOTATIONS`).
#
# Networking stays on this machine: pods sit on a bridge of their own (tlbr0,
# 10.244.0.0/24) with no default route, only a route to the Service range; the
# bridge's address is the node's IP, where the API server, the kubelet and CoreDNS
# listen. Nothing a pod sends is routed off the machine.
#
#   scripts/node.sh network STATE_DIR          the bridge; prints the node's IP
#   scripts/node.sh start STATE_DIR KUBECONFIG containerd, kubelet, kube-proxy, CoreDNS;
#                                              waits until the node is Ready
#   scripts/node.sh import STATE_DIR IMAGE...  buildah images into the node's containerd
#   scripts/node.sh stop STATE_DIR             everything stopped, unmounted, removed
#
# One real node per machine (the bridge has a fixed name); a second `network` while
# one runs says so, and the leftovers of a run that was killed are cleaned first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/tools/lib.sh
. "$here/tools/lib.sh"

NODE_NAME="ticklab-node"
BRIDGE="tlbr0"
NODE_IP="10.244.0.1"
POD_SUBNET="10.244.0.0/24"
SERVICE_RANGE="10.96.0.0/16"
DNS_SERVICE_IP="10.96.0.10"
PAUSE_IMAGE="localhost/pause:3.10"
# NAMESPACE ANNOTATIONS. The node is tainted with $TAINT_KEY; pods land on it only
# when their namespace says so (PodNodeSelector and PodTolerationRestriction
# admission, which the control plane enables), so the kwok tests' pods, whose images
# exist nowhere, never do:
#   scheduler.alpha.kubernetes.io/node-selector: kubernetes.io/hostname=ticklab-node
#   scheduler.alpha.kubernetes.io/defaultTolerations:
#     '[{"key":"ticklab.dev/real-node","operator":"Exists","effect":"NoSchedule"}]'
TAINT_KEY="ticklab.dev/real-node"
# Which state directory owns the machine's real node (the bridge is one per machine).
OWNER_FILE="/run/ticklab-real-node"

# Polls "$@" every 0.2 s for up to $1 seconds while the processes named in $alive live.
wait_until() {
  local seconds="$1" what="$2"
  shift 2
  local deadline=$((SECONDS + seconds)) name
  until "$@" >/dev/null 2>&1; do
    for name in $alive; do alive_or_die "$name"; done
    [ "$SECONDS" -lt "$deadline" ] || die "$what not within ${seconds}s; logs in $state/logs"
    sleep 0.2
  done
}


kubectl_() { "$bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }
ctr_() { ctr --address "$state/containerd.sock" --namespace k8s.io "$@"; }

network() {
  state="$1"
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  if [ -f "$OWNER_FILE" ]; then
    local owner
    owner="$(cat "$OWNER_FILE")"
    if [ -f "$owner/pids/kubelet" ] && kill -0 "$(cat "$owner/pids/kubelet")" 2>/dev/null; then
      die "a real node already runs on this machine (state in $owner): stop it with scripts/node.sh stop $owner"
    fi
    log "cleaning up the real node of a run that did not stop ($owner)"
    stop "$owner" || true
    state="$1"
    state="$(cd "$state" && pwd)"
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link del "$BRIDGE"
  fi
  echo "$state" >"$OWNER_FILE"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # A pod's request to a Service is routed through the bridge's address, where
  # kube-proxy's rules send it to another pod on the same bridge: forwarding.
  # Restored on stop.
  sysctl -n net.ipv4.ip_forward >"$state/ip_forward.before"
  sysctl -qw net.ipv4.ip_forward=1
  echo "$NODE_IP"
}

containerd_config() {
  mkdir -p "$state/cni-conf" "$state/ctr-root" "$state/ctr-state"
  cat >"$state/containerd.toml" <<EOF
version = 2
root = "$state/ctr-root"
state = "$state/ctr-state"
[grpc]
  address = "$state/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "failed to update /proc/self/oom_score_adj: Permission denied".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni-conf"
EOF
  # No default route in pods: they reach each other on the bridge and Services
  # through the route for the Service range; nothing else.
  cat >"$state/cni-conf/10-ticklab.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "ticklab", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$state/cni-ipam",
            "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "$SERVICE_RANGE"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
}

kubelet_config() {
  local healthz_port="$1"
  : >"$state/resolv.conf"
  cat >"$state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here and no systemd
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://$state/containerd.sock
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
# Only the API server (a client certificate of the test CA) talks to the kubelet.
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $ca_dir/ca.crt}
authorization: {mode: AlwaysAllow}
readOnlyPort: 0
clusterDNS: [$DNS_SERVICE_IP]
clusterDomain: cluster.local
# Pods get cluster DNS only, never the host's resolvers.
resolvConf: $state/resolv.conf
podLogsDir: $state/pod-logs
registerWithTaints:
- {key: $TAINT_KEY, value: "true", effect: NoSchedule}
failSwapOn: false
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
localStorageCapacityIsolation: false
serializeImagePulls: false
EOF
}

# The node's DNS: CoreDNS on the node's IP serving the cluster from the API, behind
# a kube-dns Service as in any cluster (kubelet gives pods its ClusterIP).
coredns_config() {
  cat >"$state/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
}

dns_service() {
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: $DNS_SERVICE_IP
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-node
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: ticklab-test-node
addressType: IPv4
endpoints:
- addresses: [$NODE_IP]
  conditions: {ready: true}
ports:
- {name: dns, port: 53, protocol: UDP}
- {name: dns-tcp, port: 53, protocol: TCP}
EOF
}

node_ready() {
  [ "$(kubectl_ get node "$NODE_NAME" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

dns_answers() {
  python3 - "$NODE_IP" <<'PY'
import socket, struct, sys
# A query for kubernetes.default.svc.cluster.local, type A.
name = b"".join(bytes([len(p)]) + p for p in b"kubernetes.default.svc.cluster.local".split(b".")) + b"\0"
query = struct.pack(">HHHHHH", 0x7469, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(query, (sys.argv[1], 53))
reply = s.recv(512)
answers = struct.unpack(">H", reply[6:8])[0]
sys.exit(0 if reply[3] & 0x0F == 0 and answers > 0 else 1)
PY
}

start() {
  state="$1"
  kubeconfig="$2"
  state="$(cd "$state" && pwd)"
  [ "$(cat "$OWNER_FILE" 2>/dev/null)" = "$state" ] ||
    die "run 'scripts/node.sh network $state' first (it makes the node's bridge)"
  kubeconfig="$(cd "$(dirname "$kubeconfig")" && pwd)/$(basename "$kubeconfig")"
  ca_dir="$(dirname "$kubeconfig")/pki"
  mkdir -p "$state/logs" "$state/pids"
  for cmd in containerd containerd-shim-runc-v2 ctr runc buildah gcc nft iptables ipset; do need_cmd "$cmd"; done
  [ -x /usr/lib/cni/bridge ] || die "the CNI plugins are not installed (Debian: containernetworking-plugins)"
  bin="$("$here/tools/kube.sh" | tail -n 1)"
  local coredns kube_router
  coredns="$("$here/tools/coredns.sh" | tail -n 1)"
  kube_router="$("$here/tools/kube-router.sh" | tail -n 1)"
  alive=""

  containerd_config
  spawn containerd containerd --config "$state/containerd.toml"
  alive="containerd"
  wait_until 30 "containerd answering" ctr_ version
  pause_image
  import_images "$PAUSE_IMAGE"

  local healthz_port
  healthz_port="$(free_port)"
  kubelet_config "$healthz_port"
  spawn kubelet "$bin/kubelet" --config "$state/kubelet.yaml" --kubeconfig "$kubeconfig" \
    --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --root-dir "$state/kubelet" \
    --cert-dir "$state/kubelet-pki" \
    --node-labels "ticklab.dev/node=real,node.kubernetes.io/instance-type=ticklab-test"
  alive="containerd kubelet"
  wait_until 90 "node $NODE_NAME Ready" node_ready

  spawn kube-proxy "$bin/kube-proxy" --kubeconfig "$kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode nftables --cluster-cidr 10.244.0.0/16 --conntrack-max-per-core 0 \
    --metrics-bind-address "127.0.0.1:$(free_port)" --healthz-bind-address "127.0.0.1:$(free_port)"
  coredns_config
  spawn coredns "$coredns" -conf "$state/Corefile"
  # NetworkPolicies enforced with iptables and ipsets on the node's pods (traffic
  # between pods on the bridge included: br_netfilter hands it to iptables).
  spawn kube-router "$kube_router" --kubeconfig "$kubeconfig" --hostname-override "$NODE_NAME" \
    --run-firewall=true --run-router=false --run-service-proxy=false --run-loadbalancer=false \
    --enable-cni=false --enable-ipv4=true --enable-ipv6=false \
    --service-cluster-ip-range "$SERVICE_RANGE" --health-port "$(free_port)" --metrics-port 0 \
    --iptables-sync-period 1m -v 1
  alive="containerd kubelet kube-proxy coredns kube-router"
  dns_service
  wait_until 60 "CoreDNS answering for kubernetes.default" dns_answers
  echo "$NODE_NAME"
}

# The pause image: a static C program in an image of its own.
pause_image() {
  local dir="$state/pause-image"
  mkdir -p "$dir"
  gcc -static -Os -o "$dir/pause" "$here/node/pause.c"
  strip "$dir/pause"
  local ctr_id
  export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
  ctr_id="$(buildah --storage-driver "$STORAGE_DRIVER" from scratch)"
  buildah --storage-driver "$STORAGE_DRIVER" copy "$ctr_id" "$dir/pause" /pause >/dev/null
  buildah --storage-driver "$STORAGE_DRIVER" config --entrypoint '["/pause"]' --user 65535:65535 "$ctr_id"
  buildah --storage-driver "$STORAGE_DRIVER" commit --quiet --rm "$ctr_id" "$PAUSE_IMAGE" >/dev/null
}

# Images from buildah's storage into the node's containerd, under the same names.
import_images() {
  local image archive
  export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
  for image in "$@"; do
    archive="$state/import.tar"
    rm -f "$archive"
    buildah --storage-driver "$STORAGE_DRIVER" push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
    ctr_ images import --no-unpack=false "$archive" >/dev/null
    rm -f "$archive"
    ctr_ images ls -q | grep -qx "$image" || die "image $image is not in the node's containerd after import"
  done
}

import_cmd() {
  state="$(cd "$1" && pwd)"
  shift
  [ -S "$state/containerd.sock" ] || die "no real node runs with state in $state"
  local started=$SECONDS
  import_images "$@"
  log "imported $* in $((SECONDS - started)) s"
}

# kube-router's chains (KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*, KUBE-SRC-*) and
# the jumps into them from the built-in chains, then its ipsets. (Its own
# --cleanup-config also tears down proxy and routing state it never made here.)
kube_router_cleanup() {
  command -v iptables-save >/dev/null 2>&1 || return 0
  local pattern='KUBE-ROUTER-|KUBE-POD-FW-|KUBE-NWPLCY-|KUBE-SRC-'
  local table chain rule
  for table in filter nat mangle; do
    # Rules in other chains that jump to kube-router's: deleted as listed.
    iptables-save -t "$table" 2>/dev/null | { grep -E -- "^-A .*-j ($pattern)" || true; } |
      { grep -Ev "^-A ($pattern)" || true; } | sed 's/^-A /-D /' | while read -r rule; do
        # eval: the rule's words as iptables-save quoted them (comments have spaces)
        eval "iptables -w -t \"\$table\" $rule" 2>/dev/null || true
      done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\([^ ]*\) .*/\1/p' | grep -E "^($pattern)"); do
      iptables -w -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables-save -t "$table" 2>/dev/null | sed -n 's/^:\([^ ]*\) .*/\1/p' | grep -E "^($pattern)"); do
      iptables -w -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  if command -v ipset >/dev/null 2>&1; then
    local set
    for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)'); do
      ipset destroy "$set" 2>/dev/null || true
    done
  fi
}

# The machine-wide side of stopping: the pods' network namespaces, kube-proxy's and
# kubelet's netfilter rules, the bridge, ip_forward, the pods' cgroups.
machine_cleanup() {
  # The pods' network namespaces, which containerd pins as /run/netns/cni-*: only
  # the real node's CRI makes those (one real node per machine), and their veths go
  # with them.
  local netns
  for netns in /run/netns/cni-*; do
    [ -e "$netns" ] || continue
    umount "$netns" 2>/dev/null || true
    rm -f "$netns" 2>/dev/null || true
  done
  nft delete table ip kube-proxy 2>/dev/null || true
  nft delete table ip6 kube-proxy 2>/dev/null || true
  kube_router_cleanup
  # kubelet's own iptables chains: its canaries, and KUBE-FIREWALL (drops DNATed
  # traffic to 127.0.0.0/8) hooked into INPUT and OUTPUT.
  local tables chain table
  for tables in iptables ip6tables; do
    command -v "$tables" >/dev/null 2>&1 || continue
    for chain in INPUT OUTPUT; do
      while "$tables" -w -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
    done
    "$tables" -w -F KUBE-FIREWALL 2>/dev/null || true
    "$tables" -w -X KUBE-FIREWALL 2>/dev/null || true
    for table in mangle nat filter; do
      "$tables" -w -t "$table" -X KUBE-KUBELET-CANARY 2>/dev/null || true
    done
    "$tables" -w -t mangle -X KUBE-IPTABLES-HINT 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  if [ -f "$state/ip_forward.before" ]; then
    sysctl -qw "net.ipv4.ip_forward=$(cat "$state/ip_forward.before")" || true
  fi
  rm -f "$OWNER_FILE"
  # The pods' cgroups (cgroupfs driver), leaves first.
  local root
  for root in /sys/fs/cgroup/*/kubepods; do
    [ -d "$root" ] && find "$root" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

stop() {
  state="$1"
  [ -d "$state" ] || return 0
  state="$(cd "$state" && pwd)"
  local name
  # The node's agents first, so nothing restarts what is stopped below.
  for name in kube-router coredns kube-proxy kubelet; do
    stop_process "$name"
  done
  # Every container and sandbox: their processes, then containerd's shims.
  if [ -S "$state/containerd.sock" ]; then
    local task
    for task in $(ctr_ tasks ls -q 2>/dev/null || true); do
      ctr_ tasks kill --signal SIGKILL "$task" >/dev/null 2>&1 || true
    done
    for task in $(ctr_ tasks ls -q 2>/dev/null || true); do
      for _ in $(seq 1 50); do
        ctr_ tasks delete "$task" >/dev/null 2>&1 && break
        sleep 0.1
      done
    done
  fi
  pkill -9 -f "containerd-shim-runc-v2 .*-address $state/containerd.sock" 2>/dev/null || true
  stop_process containerd
  # Whatever kubelet and containerd left mounted (projected volumes, shm, rootfs),
  # deepest first.
  awk -v s="$state" 'index($2, s) == 1 { print $2 }' /proc/mounts | sort -r |
    while read -r mount; do umount -l "$mount" 2>/dev/null || true; done
  # What the node changed on the machine, only if this state owns the machine's
  # real node (or no one does: a run killed before it wrote the owner file).
  local owner
  owner="$(cat "$OWNER_FILE" 2>/dev/null || true)"
  if [ -z "$owner" ] || [ "$owner" = "$state" ]; then
    machine_cleanup
  fi
  chmod -R u+w "$state" 2>/dev/null || true
  rm -rf "$state" 2>/dev/null || true
}

case "${1:-}" in
  network) network "${2:?usage: network STATE_DIR}" ;;
  start) start "${2:?usage: start STATE_DIR KUBECONFIG}" "${3:?usage: start STATE_DIR KUBECONFIG}" ;;
  import) import_cmd "${2:?usage: import STATE_DIR IMAGE...}" "${@:3}" ;;
  stop) stop "${2:?usage: stop STATE_DIR}" ;;
  *) die "usage: $0 network STATE_DIR | start STATE_DIR KUBECONFIG | import STATE_DIR IMAGE... | stop STATE_DIR" ;;
esac
