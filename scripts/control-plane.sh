#!/usr/bin/env bash
# Starts or stops a real Kubernetes cluster on this machine for the tests: etcd,
# kube-apiserver (RBAC on, CEL validation, server-side apply, Pod Security admission,
# owner-reference permission enforcement), kube-controller-manager (garbage
# collector, Deployments -> ReplicaSets -> Pods, StatefulSets), kube-scheduler; kwok,
# which plays the kubelet for two fake nodes (pods there exist only as API objects,
# room for hundreds); and a real node (scripts/node.sh: kubelet, containerd, runc,
# CNI, kube-proxy, CoreDNS) where pods really run. The real node is tainted: a
# namespace opts in with the annotations `scripts/node.sh` documents.
#   scripts/control-plane.sh start STATE_DIR   prints the admin kubeconfig path; a
#                                              second, empty API server's is beside it
#                                              (STATE_DIR/kubeconfig-bare)
#   scripts/control-plane.sh stop STATE_DIR
# TICKLAB_REAL_NODE=0 leaves the real node out (the API server then listens on
# 127.0.0.1 only).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=scripts/tools/lib.sh
. "$here/tools/lib.sh"


# Certificates: a CA, the apiserver's serving certificate for its address (rustls
# checks names strictly) and the `kubernetes` Service's, the client certificate it
# shows the real node's kubelet, and the service-account signing key.
make_certs() {
  local api_ip="$1" pki="$state/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=ticklab-test-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
    -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" \
    "subjectAltName=IP:$api_ip,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    >"$pki/apiserver.ext"
  openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=clientAuth" >"$pki/kubelet-client.ext"
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -extfile "$pki/kubelet-client.ext" -out "$pki/kubelet-client.crt" 2>/dev/null
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() {
  local token="$1" address="$2"
  cat >"$state/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: ticklab-test
  cluster:
    server: https://$address
    certificate-authority-data: $(base64 -w0 "$state/pki/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: ticklab-test
  context: {cluster: ticklab-test, user: admin, namespace: default}
current-context: ticklab-test
EOF
}

fake_node() {
  cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $1
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
# Room for hundreds of experiments (each requests 750m CPU over three pods): the
# nodes are fake, only the scheduler's arithmetic sees these numbers.
status:
  allocatable: {cpu: "1000", memory: 4Ti, pods: "1000"}
  capacity: {cpu: "1000", memory: 4Ti, pods: "1000"}
EOF
}

start() {
  state="$1"
  mkdir -p "$state/logs" "$state/pids"
  state="$(cd "$state" && pwd)"
  local bin
  bin="$("$here/tools/kube.sh" | tail -n 1)"
  local etcd_port peer_port api_port token api_ip=127.0.0.1 real_node=""
  if [ "${TICKLAB_REAL_NODE:-1}" != 0 ]; then
    # The API server listens on the node's bridge address, which pods can route to.
    api_ip="$("$here/node.sh" network "$state/node" | tail -n 1)"
    real_node=1
  fi
  etcd_port="$(free_port)"
  peer_port="$(free_port)"
  api_port="$(free_port)"
  token="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
  make_certs "$api_ip"
  echo "$token,admin,admin,system:masters" >"$state/pki/tokens.csv"
  write_kubeconfig "$token" "$api_ip:$api_port"
  local kc="$state/kubeconfig"

  spawn etcd "$bin/etcd" --name ticklab-test --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "ticklab-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level warn
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
    alive_or_die etcd
    sleep 0.1
  done

  spawn kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$api_ip" --advertise-address "$api_ip" --secure-port "$api_port" \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --client-ca-file "$state/pki/ca.crt" \
    --kubelet-client-certificate "$state/pki/kubelet-client.crt" \
    --kubelet-client-key "$state/pki/kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP \
    --token-auth-file "$state/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$state/pki/sa.pub" --service-account-signing-key-file "$state/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
    --enable-admission-plugins=OwnerReferencesPermissionEnforcement,PodNodeSelector,PodTolerationRestriction \
    --enable-priority-and-fairness=false --profiling=false
  local ready=""
  for _ in $(seq 1 300); do
    if "$bin/kubectl" --kubeconfig "$kc" get --raw /readyz >/dev/null 2>&1; then ready=1; break; fi
    alive_or_die kube-apiserver
    sleep 0.2
  done
  [ -n "$ready" ] || { tail -n 30 "$state/logs/kube-apiserver.log" >&2; die "kube-apiserver not ready in 60 s"; }

  # A second API server on the same etcd under another prefix: an empty cluster
  # without ticklab's CRDs, for the test that the operator refuses to start there.
  local bare_port
  bare_port="$(free_port)"
  spawn kube-apiserver-bare "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --etcd-prefix /ticklab-bare \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$bare_port" \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --token-auth-file "$state/pki/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$state/pki/sa.pub" --service-account-signing-key-file "$state/pki/sa.key" \
    --service-cluster-ip-range 10.97.0.0/16 --enable-priority-and-fairness=false --profiling=false
  sed "s#https://$api_ip:$api_port#https://127.0.0.1:$bare_port#" "$kc" >"$state/kubeconfig-bare"

  spawn kube-controller-manager "$bin/kube-controller-manager" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$state/pki/sa.key" --root-ca-file "$state/pki/ca.crt" \
    --use-service-account-credentials=false --concurrent-gc-syncs 5 --profiling=false
  spawn kube-scheduler "$bin/kube-scheduler" --kubeconfig "$kc" \
    --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
    --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --profiling=false
  spawn kwok "$bin/kwok" --kubeconfig "$kc" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
    --cidr=10.245.0.1/16 --node-ip=10.0.0.1 --node-lease-duration-seconds=40 \
    --server-address=""

  for n in kwok-node-0 kwok-node-1; do
    fake_node "$n" | "$bin/kubectl" --kubeconfig "$kc" apply -f - >/dev/null
  done
  # Ready when both nodes are Ready (kwok heartbeats) and the default ServiceAccount
  # exists (the controller-manager is working): pods can then be created and run.
  ready=""
  for _ in $(seq 1 300); do
    local nodes_ready
    nodes_ready="$("$bin/kubectl" --kubeconfig "$kc" get nodes \
      -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True || true)"
    if [ "$nodes_ready" = 2 ] && "$bin/kubectl" --kubeconfig "$kc" -n default get serviceaccount default >/dev/null 2>&1; then
      ready=1
      break
    fi
    for c in kube-controller-manager kube-scheduler kwok; do alive_or_die "$c"; done
    sleep 0.2
  done
  [ -n "$ready" ] || die "control plane not ready in 60 s (nodes Ready: ${nodes_ready:-0}/2); logs in $state/logs"
  ready=""
  for _ in $(seq 1 300); do
    if "$bin/kubectl" --kubeconfig "$state/kubeconfig-bare" get --raw /readyz >/dev/null 2>&1; then ready=1; break; fi
    alive_or_die kube-apiserver-bare
    sleep 0.2
  done
  [ -n "$ready" ] || die "the second (empty) kube-apiserver is not ready in 60 s"
  if [ -n "$real_node" ]; then
    "$here/node.sh" start "$state/node" "$kc" >/dev/null
  fi
  echo "$bin" >"$state/bin-dir"
  echo "$kc"
}

stop() {
  state="$1"
  "$here/node.sh" stop "$state/node"
  [ -d "$state/pids" ] || return 0
  local name
  # Reverse order of start: clients first, etcd last.
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver-bare kube-apiserver etcd; do
    stop_process "$name"
  done
}

case "${1:-}" in
  start) start "${2:?usage: start STATE_DIR}" ;;
  stop) stop "${2:?usage: stop STATE_DIR}" ;;
  *) die "usage: $0 start STATE_DIR | stop STATE_DIR" ;;
esac
