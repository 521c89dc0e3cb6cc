#!/usr/bin/env bash
# Builds the image the real node's tests run their MongoDB from: FerretDB (the
# MongoDB-wire server, SQLite backend) built from its pinned Go module, static, alone
# on an empty base, user 65532. No registry serves the official mongo image here;
# the chart points at this one as an external MongoDB. Prints the image name.
#   scripts/image/ferretdb.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh
need_cmd buildah
export STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"
bah() { buildah --storage-driver "$STORAGE_DRIVER" "$@"; }

bin="$(scripts/tools/ferretdb.sh | tail -n 1)"
version="$("$bin" --version 2>/dev/null | sed -n 's/^version: *//p' | head -n 1)"
[ -n "$version" ] || version="$(basename "$(dirname "$(dirname "$bin")")" | sed 's/^ferretdb-//; s/-static$//')"
image="localhost/ferretdb:$version"
if ldd "$bin" >/dev/null 2>&1; then
  die "$bin is dynamically linked; the image holds nothing else (scripts/tools/ferretdb.sh builds it static)"
fi
if bah inspect --type image "$image" >/dev/null 2>&1; then
  echo "$image"
  exit 0
fi
ctr="$(bah from scratch)"
trap 'bah rm "$ctr" >/dev/null 2>&1 || true' EXIT
bah copy --chmod 0755 "$ctr" "$bin" /ferretdb >/dev/null
bah config --entrypoint '["/ferretdb"]' --user 65532:65532 \
  --label org.opencontainers.image.title=ferretdb --label "org.opencontainers.image.version=$version" "$ctr"
bah commit --quiet --rm "$ctr" "$image" >/dev/null
trap - EXIT
log "built $image"
echo "$image"
