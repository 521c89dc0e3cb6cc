#!/usr/bin/env bash
# Builds kube-router (only its network policy controller runs here: it enforces
# NetworkPolicies on the test cluster's real node with iptables and ipset) from the
# Go module proxy at a pinned version, once, into the tool cache; prints its path.
#
# Why kube-router: the engine kind ships, sigs.k8s.io/kube-network-policies, hands
# packets to user space with an nftables `queue` rule, and this kernel is built
# without nft_queue (CONFIG_NFT_QUEUE unset); kube-router needs only iptables
# matches and ipset types this kernel has.
# v2.10.0 pins a pseudo-version of github.com/vishvananda/netlink the proxy does not
# serve; the released v1.3.1 replaces it (only kube-router's routing code, which is
# not run, uses what changed).
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

version="v2.10.0"
netlink="v1.3.1"
dir="$TICKLAB_TOOLS/kube-router-$version-netlink-$netlink"
bin="$dir/bin/kube-router"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
need_cmd go
log "building kube-router $version (once; cached in $dir; ~3-7 min)"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
cd "$work"
printf 'module ticklab.dev/kube-router-build\n\ngo 1.26\n' >go.mod
printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"\n' >tools.go
go mod edit -replace "github.com/vishvananda/netlink=github.com/vishvananda/netlink@$netlink"
GOFLAGS=-mod=mod go get "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$version" >/dev/null 2>&1 ||
  GOFLAGS=-mod=mod go get "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$version"
mkdir -p "$dir/bin"
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$bin" \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
"$bin" --help >/dev/null 2>&1 || die "built kube-router does not run: $bin"
echo "$bin"
