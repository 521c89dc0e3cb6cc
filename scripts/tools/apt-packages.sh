#!/usr/bin/env bash
# Installs the Debian packages tests and benchmarks use, only when one is missing:
# sockperf (reference for the benchmarks), iproute2 and nftables (network namespaces
# with packet loss), tcpdump, tshark and tcpreplay (capture and replay), jq, curl,
# buildah (builds the container image without a daemon), prometheus (a real server
# scrapes a local run and the real node's pods; the package ships promtool too), and
# for the test cluster's real node containerd, runc, the CNI plugins, iptables and
# ipset (kube-router's NetworkPolicy enforcement), gcc with the static C library
# (the pod sandbox's pause program) and busybox-static (a probe image).
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

packages=(sockperf iproute2 nftables tcpdump tshark tcpreplay jq curl procps buildah prometheus
  containerd runc containernetworking-plugins iptables ipset gcc libc6-dev binutils busybox-static)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
log "installing ${missing[*]}"
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
# tshark asks whether non-root users may capture; answer for it.
echo "wireshark-common wireshark-common/install-setuid boolean false" | $sudo debconf-set-selections
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
