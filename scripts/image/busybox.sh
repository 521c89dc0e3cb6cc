#!/usr/bin/env bash
# Builds the probe image the real-node tests check NetworkPolicies with: Debian's
# static busybox (wget, nc) alone on an empty base, user 65532. Prints its name.
#   scripts/image/busybox.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh
need_cmd buildah
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
bah() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

busybox=/bin/busybox
[ -x "$busybox" ] || die "$busybox not found (Debian: busybox-static)"
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked (Debian's busybox-static is not)"
version="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '_')"
image="localhost/busybox:${version:-static}"
if bah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
ctr="$(bah from scratch)"
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah copy --chmod 0755 "$ctr" "$busybox" /bin/busybox >/dev/null
bah config --entrypoint '["/bin/busybox"]' --user 65532:65532 "$ctr"
bah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
log "built $image"
echo "$image"
