#!/usr/bin/env bash
# Runs every ticklab test on this machine, a fresh one included: installs what the
# tests need (tools are built once and cached outside the repo, by version), starts a
# MongoDB-wire server (FerretDB) for the persistence tests and a real Kubernetes
# cluster (etcd, kube-apiserver, controller-manager, scheduler; kwok's fake nodes for
# scale and a real node — kubelet, containerd, runc, CNI, kube-proxy, CoreDNS — where
# pods really run), checks formatting, lints and the Helm chart (helm lint,
# kubeconform, promtool), builds the container image with buildah, checks it and
# imports it into the real node with a FerretDB image, runs the whole test suite (a
# real Prometheus included; the chart and the quickstart end to end in real pods),
# and a short fuzzing pass. Nothing is skipped; everything started is stopped and
# removed at the end, also on failure.
#
#   scripts/test.sh                 everything
#   FUZZ_SECONDS=300 scripts/test.sh  fuzz longer
set -euo pipefail
cd "$(dirname "$0")/.."
export TICKLAB_TOOLS="${TICKLAB_TOOLS:-$HOME/.cache/ticklab/tools}"
# In CI every run is a fresh clone: keep compiled dependencies outside it.
if [ -n "${CI:-}" ] && [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/ticklab/target"
fi
step() { printf '\n== %s\n' "$*" >&2; }

step "system packages"
scripts/tools/apt-packages.sh

step "MongoDB-wire server (FerretDB)"
state="$(mktemp -d)"
cluster="$(mktemp -d)"
cleanup() {
  scripts/mongo-wire-server.sh stop "$state" >/dev/null 2>&1 || true
  scripts/control-plane.sh stop "$cluster" >/dev/null 2>&1 || true
  rm -rf "$state" "$cluster"
}
trap cleanup EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
TICKLAB_TEST_MONGODB_URI="$(scripts/mongo-wire-server.sh start "$port" "$state" | tail -n 1)"
export TICKLAB_TEST_MONGODB_URI
echo "MongoDB-wire server at $TICKLAB_TEST_MONGODB_URI" >&2

step "packaging tools: Helm, kubeconform, schemas (built once from pinned modules)"
TICKLAB_TEST_PACKAGING_TOOLS="$(scripts/tools/packaging.sh | tail -n 1)"
export TICKLAB_TEST_PACKAGING_TOOLS

step "Kubernetes cluster: control plane, kwok nodes, a real node (built once from pinned Go modules)"
TICKLAB_TEST_KUBECONFIG="$(scripts/control-plane.sh start "$cluster" | tail -n 1)"
export TICKLAB_TEST_KUBECONFIG
echo "control plane at $TICKLAB_TEST_KUBECONFIG" >&2

step "format"
cargo fmt --all --check

step "generated files (CRDs from the Rust types)"
cargo run --quiet --locked -p ticklab-crd --bin crdgen -- crds charts/ticklab/crds >/dev/null
if [ -d .git ] && [ -n "$(git status --porcelain -- crds charts/ticklab/crds)" ]; then
  git status --short -- crds charts/ticklab/crds >&2
  git --no-pager diff --stat -- crds charts/ticklab/crds >&2
  echo "CRDs are out of date: run 'cargo run -p ticklab-crd --bin crdgen -- crds charts/ticklab/crds' and commit" >&2
  exit 1
fi

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Helm chart, alert rules, example manifests"
scripts/check-chart.sh

step "container image (buildah), checked, and imported into the real node with the test images"
image="localhost/ticklab:dev"
scripts/image.sh build --tag "$image"
scripts/image.sh check --tag "$image"
ferretdb_image="$(scripts/image/test-image.sh ferretdb | tail -n 1)"
probe_image="$(scripts/image/test-image.sh busybox | tail -n 1)"
scripts/node.sh import "$cluster/node" "$image" "$ferretdb_image" "$probe_image"
export TICKLAB_TEST_IMAGE="$image" TICKLAB_TEST_FERRETDB_IMAGE="$ferretdb_image" \
  TICKLAB_TEST_PROBE_IMAGE="$probe_image"

step "tests"
cargo test --workspace --locked --no-fail-fast

step "fuzz (${FUZZ_SECONDS:-15}s per target)"
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"

echo "all checks passed" >&2
