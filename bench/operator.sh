#!/usr/bin/env bash
# Operator benchmarks against a real control plane (scripts/control-plane.sh):
# time from creating a LatencyExperiment until every child exists (50 experiments,
# one at a time), and the operator's resident memory with 200 experiments Running.
# Prints figures; asserts nothing.
#   bench/operator.sh [LATENCY_RUNS] [EXPERIMENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50}"
experiments="${2:-200}"
cluster="$(mktemp -d)"
trap 'scripts/control-plane.sh stop "$cluster" >/dev/null 2>&1 || true; rm -rf "$cluster"' EXIT
KUBECONFIG="$(scripts/control-plane.sh start "$cluster" | tail -n 1)"
export KUBECONFIG
"$(cat "$cluster/bin-dir")/kubectl" apply -f crds/ >/dev/null
cargo build --release --locked -q -p ticklab-operator
echo "operator benchmark: $(nproc) cores, Kubernetes $("$(cat "$cluster/bin-dir")/kubectl" version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') (etcd, kube-apiserver, controller-manager, scheduler, kwok on this machine)"
target/release/ticklab-operator-bench --operator target/release/ticklab-operator \
  --latency-runs "$runs" --experiments "$experiments"
