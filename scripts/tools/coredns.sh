#!/usr/bin/env bash
# Builds CoreDNS (cluster DNS of the test cluster's real node: Service names resolve
# in pods) from the Go module proxy at a pinned version, once, into the tool cache;
# prints the binary's path.
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

version="v1.14.7"
dir="$TICKLAB_TOOLS/coredns-$version"
bin="$dir/bin/coredns"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
need_cmd go
log "building CoreDNS $version (once; cached in $dir; ~2 min)"
mkdir -p "$dir/bin"
GOBIN="$dir/bin" CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath -ldflags "-s -w" \
  "github.com/coredns/coredns@$version"
"$bin" -version >/dev/null 2>&1 || die "built CoreDNS does not run: $bin"
echo "$bin"
