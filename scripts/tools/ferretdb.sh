#!/usr/bin/env bash
# Builds FerretDB (the MongoDB-wire server the persistence tests talk to, on the host
# and, in an image of its own, in the real node's pods) from the Go module proxy at a
# pinned version, once, into the tool cache; prints its path. Static (no cgo: its
# SQLite is pure Go), so the same binary runs in an image holding nothing else.
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

version="v1.24.0"
dir="$TICKLAB_TOOLS/ferretdb-$version-static"
bin="$dir/bin/ferretdb"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
need_cmd go
log "building FerretDB $version (once; cached in $dir)"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOMODCACHE="${GOMODCACHE:-$(go env GOMODCACHE)}" GOFLAGS=-mod=mod
# The module proxy refuses to list FerretDB's versions but serves the pinned one.
src="$(cd "$work" && go mod download -json "github.com/FerretDB/FerretDB@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
cp -r "$src" "$work/src"
chmod -R u+w "$work/src"
# FerretDB embeds its version from files its release tooling generates; the module
# zip lacks them and the binary refuses to start without.
echo "$version" > "$work/src/build/version/version.txt"
echo "ticklab" > "$work/src/build/version/package.txt"
mkdir -p "$dir/bin"
(cd "$work/src" && CGO_ENABLED=0 GOBIN="$dir/bin" go install -trimpath ./cmd/ferretdb)
"$bin" --version >/dev/null 2>&1 || die "built FerretDB does not run: $bin"
echo "$bin"
