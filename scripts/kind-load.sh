#!/usr/bin/env bash
# Builds the ticklab image (scripts/image.sh build) and loads it into every node of a
# kind cluster, where the chart's kind values use it without pulling
# (manifests/kind/ticklab-values.yaml: localhost/ticklab:dev, pullPolicy Never).
#   scripts/kind-load.sh [CLUSTER]     default: ticklab (the name in kind-config.yaml)
# TICKLAB_IMAGE overrides the tag. Built with docker: `kind load docker-image`; with
# buildah: a docker-archive and `kind load image-archive` (any kind provider).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh

[ "$#" -le 1 ] || die "usage: scripts/kind-load.sh [CLUSTER]"
cluster="${1:-ticklab}"
tag="${TICKLAB_IMAGE:-localhost/ticklab:dev}"
need_cmd kind
# Before the build, which takes minutes: is there such a cluster?
kind get clusters 2>/dev/null | grep -qxF "$cluster" ||
  die "no kind cluster named $cluster (kind create cluster --config kind-config.yaml)"

scripts/image.sh build --tag "$tag" >/dev/null
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
