#!/usr/bin/env bash
# Builds the Kubernetes the tests run against — kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd and kwok (fake nodes), and kubelet and kube-proxy (the
# real node) — from pinned Go module versions, once, into the tool cache. Only what
# is missing is built. Prints the directory holding the binaries.
#
# k8s.io/kubernetes cannot be `go install`ed directly: its go.mod points its staging
# modules (k8s.io/api, k8s.io/apiserver, ...) at ./staging. A small module of our own
# requires it and replaces each staging module with the published k8s.io/* v0.x of the
# same release, which is what the release tags contain.
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

kube_version="v1.34.4"  # matches k8s-openapi's v1_34 feature in Cargo.toml
etcd_version="v3.6.4"   # the etcd client version Kubernetes $kube_version requires
kwok_version="v0.7.0"
dir="$TICKLAB_TOOLS/kube-$kube_version-etcd-$etcd_version-kwok-$kwok_version"
kube_bins=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
bins=("${kube_bins[@]}" etcd kwok)

missing() {
  local b
  for b in "$@"; do [ -x "$dir/bin/$b" ] || echo "$b"; done
}
if [ -z "$(missing "${bins[@]}")" ]; then
  echo "$dir/bin"
  exit 0
fi
need_cmd go
log "building $(missing "${bins[@]}" | tr '\n' ' ')from Kubernetes $kube_version, etcd $etcd_version and kwok $kwok_version (once; cached in $dir; ~15 min on 2 cores from nothing)"
work="$(mktemp -d)"
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOFLAGS=-mod=mod CGO_ENABLED=0
mkdir -p "$dir/bin"

# --- Kubernetes: one module of our own requiring the release, staging replaced.
build_kube() {
  mkdir -p "$work/kube"
  cd "$work/kube"
  go mod init ticklab.dev/kube-tools >/dev/null 2>&1
  go mod download -json "k8s.io/kubernetes@$kube_version" >"$work/kube.json"
  local gomod staging_version ldflags b
  gomod="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["GoMod"])' "$work/kube.json")"
  staging_version="v0.${kube_version#v1.}"
  {
    echo "require k8s.io/kubernetes $kube_version"
    echo "replace ("
    # Every module the release points at ./staging/src/<module>.
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod" |
      while read -r module; do echo "  $module => $module $staging_version"; done
    echo ")"
  } >>go.mod
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for b in "${kube_bins[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b"; done
    printf ')\n'
  } >tools.go
  go mod tidy -e >/dev/null
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/client-go/pkg/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${kube_version#v1.} "
  for b in "$@"; do
    log "  go build $b"
    go build -trimpath -ldflags "$ldflags" -o "$dir/bin/$b" "k8s.io/kubernetes/cmd/$b"
  done
}

# --- etcd (its server module holds the etcd main package)
build_etcd() {
  mkdir -p "$work/etcd"
  cd "$work/etcd"
  go mod init ticklab.dev/etcd-tools >/dev/null 2>&1
  log "  go build etcd"
  go get "go.etcd.io/etcd/server/v3@$etcd_version" >/dev/null 2>&1
  go build -trimpath -ldflags "-s -w" -o "$dir/bin/etcd" go.etcd.io/etcd/server/v3
}

# --- kwok (marks pods on its fake nodes Running; the real node has a kubelet)
build_kwok() {
  log "  go build kwok"
  GOBIN="$dir/bin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
}

# shellcheck disable=SC2046 # one word per missing binary
[ -z "$(missing "${kube_bins[@]}")" ] || build_kube $(missing "${kube_bins[@]}")
[ -z "$(missing etcd)" ] || build_etcd
[ -z "$(missing kwok)" ] || build_kwok

"$dir/bin/kube-apiserver" --version >/dev/null || die "built kube-apiserver does not run"
"$dir/bin/etcd" --version >/dev/null || die "built etcd does not run"
echo "$dir/bin"
