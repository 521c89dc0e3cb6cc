#!/usr/bin/env bash
# Builds an image the real-node tests run besides ticklab's own: one static binary
# alone on an empty base, user 65532, imported into the node by scripts/node.sh.
# Prints the image's name.
#   scripts/image/test-image.sh ferretdb   the tests' MongoDB: FerretDB (SQLite
#                                          backend) from its pinned Go module; no
#                                          registry serves the official mongo image
#   scripts/image/test-image.sh busybox    a probe for the NetworkPolicy test:
#                                          Debian's static busybox (nc, sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh
need_cmd buildah
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
bah() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

case "${1:-}" in
  ferretdb)
    bin="$(scripts/tools/ferretdb.sh | tail -n 1)"
    version="$(basename "$(dirname "$(dirname "$bin")")" | sed 's/^ferretdb-//; s/-static$//')"
    path=/ferretdb
    ;;
  busybox)
    bin=/bin/busybox
    [ -x "$bin" ] || die "$bin not found (Debian: busybox-static)"
    version="$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null | tr -c 'A-Za-z0-9_.\n-' '_')"
    path=/bin/busybox
    ;;
  *) die "usage: scripts/image/test-image.sh ferretdb|busybox" ;;
esac
image="localhost/$1:${version:-static}"
# An image holding nothing else cannot load shared libraries.
if ldd "$bin" >/dev/null 2>&1; then
  die "$bin is dynamically linked; the image holds nothing else"
fi
if bah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
ctr="$(bah from scratch)"
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah copy --chmod 0755 "$ctr" "$bin" "$path" >/dev/null
bah config --entrypoint "[\"$path\"]" --user 65532:65532 \
  --label "org.opencontainers.image.title=$1" --label "org.opencontainers.image.version=$version" "$ctr"
bah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
log "built $image"
echo "$image"
