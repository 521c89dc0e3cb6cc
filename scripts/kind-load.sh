#!/usr/bin/env bash
# Builds the ticklab image and loads it into every node of a kind cluster, under the
# name the chart runs by default (localhost/ticklab:VERSION, the chart's appVersion),
# so `helm install` and `kubectl apply -f manifests/rendered/ticklab.yaml` both find
# it without pulling.
#   scripts/kind-load.sh [--in-container] [CLUSTER]   default cluster: ticklab
# Where the binaries cannot be built on this machine — not Linux with glibc and Rust,
# e.g. macOS, or a distribution whose glibc the image would not match — they are
# compiled inside the Containerfile's own build stage instead (--in-container,
# chosen by itself when the host lacks cargo or ldd). TICKLAB_IMAGE overrides the
# name. Built with docker: `kind load docker-image`; with buildah: a docker-archive
# and `kind load image-archive` (any kind provider).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh

in_container=""
cluster="ticklab"
for arg in "$@"; do
  case "$arg" in
    --in-container) in_container=1 ;;
    -*) die "usage: scripts/kind-load.sh [--in-container] [CLUSTER]" ;;
    *) cluster="$arg" ;;
  esac
done
if [ -z "$in_container" ]; then
  if [ "$(uname -s)" != Linux ] || ! command -v cargo >/dev/null 2>&1 || ! command -v ldd >/dev/null 2>&1; then
    log "no Linux toolchain here to build the binaries on: building inside the Containerfile's build stage"
    in_container=1
  fi
fi
need_cmd kind
# Before the build, which takes minutes: is there such a cluster?
kind get clusters 2>/dev/null | grep -qxF "$cluster" ||
  die "no kind cluster named $cluster (kind create cluster --config kind-config.yaml)"

build_args=(build)
[ -n "${TICKLAB_IMAGE:-}" ] && build_args+=(--tag "$TICKLAB_IMAGE")
[ -n "$in_container" ] && build_args+=(--in-container)
tag="$(scripts/image.sh "${build_args[@]}" | tail -n 1)"
case "$(scripts/image.sh builder)" in
  docker)
    kind load docker-image "$tag" --name "$cluster"
    ;;
  buildah)
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    scripts/image.sh archive --tag "$tag" "$tmp/ticklab.tar" >/dev/null
    kind load image-archive "$tmp/ticklab.tar" --name "$cluster"
    ;;
esac
log "$tag loaded into kind cluster $cluster"
