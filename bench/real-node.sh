#!/usr/bin/env bash
# The quickstart on the test cluster's real node next to the same experiment run by
# `ticklab run` on loopback, in one run on this machine, printed side by side (as
# Markdown, for BENCHMARKS.md): one-way feed latency and tick-to-trade between pods
# on one node against the same processes on loopback; each step from `kubectl apply`
# to Completed; and the time to import the image into the node. Prints figures;
# asserts nothing. Starts its own cluster (scripts/control-plane.sh) and stops it.
#   bench/real-node.sh [DURATION]          default 30s
#   PERSISTENCE=off bench/real-node.sh     trades not stored: the feed and orders
#                                          without the database's load on the cores
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/tools/lib.sh
. scripts/tools/lib.sh
duration="${1:-30s}"
for cmd in jq buildah; do need_cmd "$cmd"; done

cluster="$(mktemp -d)"
work="$(mktemp -d)"
trap 'scripts/control-plane.sh stop "$cluster" >/dev/null 2>&1 || true; rm -rf "$cluster" "$work"' EXIT
export KUBECONFIG
KUBECONFIG="$(scripts/control-plane.sh start "$cluster" | tail -n 1)"
kubectl() { "$(cat "$cluster/bin-dir")/kubectl" "$@"; }
helm="$(scripts/tools/packaging.sh | tail -n 1)/bin/helm"
ms() { date +%s%3N; }

image="$(scripts/image.sh build | tail -n 1)"
ticklab="${CARGO_TARGET_DIR:-target}/release/ticklab"
ferretdb="$(scripts/image/test-image.sh ferretdb | tail -n 1)"
started=$(ms)
scripts/node.sh import "$cluster/node" "$image" >/dev/null
import_ms=$(($(ms) - started))
scripts/node.sh import "$cluster/node" "$ferretdb" >/dev/null

# The namespace on the real node, FerretDB as the external MongoDB, the chart.
ns=bench
kubectl create namespace "$ns" >/dev/null
kubectl annotate namespace "$ns" >/dev/null \
  scheduler.alpha.kubernetes.io/node-selector=kubernetes.io/hostname=ticklab-node \
  'scheduler.alpha.kubernetes.io/defaultTolerations=[{"key":"ticklab.dev/real-node","operator":"Exists","effect":"NoSchedule"}]'
sed "s#image: IMAGE#image: $ferretdb#" operator/tests/fixtures/real-node/ferretdb.yaml |
  kubectl -n "$ns" apply -f - >/dev/null
kubectl -n "$ns" rollout status deployment/ferretdb --timeout=120s >/dev/null
"$helm" install ticklab charts/ticklab -n "$ns" --wait --timeout 240s \
  -f charts/ticklab/ci/real-node-values.yaml --set "image.repository=${image%:*},image.tag=${image##*:}" \
  --set "operator.watchNamespace=$ns,mongodb.external.uri=mongodb://ferretdb.$ns.svc:27017/ticklab" >/dev/null

# The quickstart as the example has it, for $duration, with a write buffer that
# holds the run (the tests' FerretDB writes slower than the feed).
kubectl apply --dry-run=client -o json -f manifests/examples/quickstart.yaml |
  jq --arg d "$duration" --arg p "${PERSISTENCE:-on}" 'del(.metadata.namespace) | .spec.duration = $d
    | .spec.trader.persistence = (if $p == "off" then {enabled: false} else {bufferTrades: 2000000} end)' \
    >"$work/quickstart.yaml"  # JSON is YAML: ticklab run reads it too
poll_until() { # poll_until SECONDS COMMAND...: every 0.1 s until COMMAND succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out: $*"
    sleep 0.1
  done
}
pods_running() {
  [ "$(kubectl -n "$ns" get pods -l ticklab.dev/experiment=quickstart \
    -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}' | grep -c Running)" = 2 ]
}
first_trade() {
  kubectl get --raw "/api/v1/namespaces/$ns/services/http:quickstart-trader:9190/proxy/stats" |
    jq -e '.received > 0'
}
completed() {
  [ "$(kubectl -n "$ns" get lexp quickstart -o jsonpath='{.status.phase}')" = Completed ]
}
t0=$(ms)
kubectl -n "$ns" apply -f "$work/quickstart.yaml" >/dev/null
poll_until 180 pods_running
t1=$(ms)
poll_until 120 first_trade
t2=$(ms)
poll_until 600 completed
t3=$(ms)
kubectl -n "$ns" get lexp quickstart -o json | jq '.status.results' >"$work/cluster.json"
reason="$(kubectl -n "$ns" get lexp quickstart -o jsonpath='{.status.conditions[?(@.type=="Completed")].reason}')"

# The same experiment on loopback (no persistence: the comparison is the feed).
"$ticklab" run "$work/quickstart.yaml" --output json --quiet 2>/dev/null | jq '.results' >"$work/local.json" || true

row() { # row LABEL FILE FIELD
  jq -r --arg name "$1" '.'"$3"' as $l | "| \($name) | \($l.count) | \($l.p50Micros) | \($l.p90Micros) | \($l.p99Micros) | \($l.p999Micros) | \($l.maxMicros) |"' "$2"
}
echo "## The quickstart on the real node vs on loopback ($(nproc) cores, $duration at 20 000 trades/s, 0.5% dropped, persistence ${PERSISTENCE:-on})"
echo
echo "| latency (µs) | samples | p50 | p90 | p99 | p99.9 | max |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
row "one-way, pod to pod (kernel timestamp)" "$work/cluster.json" feedLatency
row "one-way, loopback (kernel timestamp)" "$work/local.json" feedLatency
row "one-way, pod to pod, to user space" "$work/cluster.json" feedLatencyUser
row "one-way, loopback, to user space" "$work/local.json" feedLatencyUser
row "tick-to-trade, pods" "$work/cluster.json" tickToTrade
row "tick-to-trade, loopback" "$work/local.json" tickToTrade
row "order round trip, pod to pod via Service" "$work/cluster.json" orderRoundTrip
row "order round trip, loopback" "$work/local.json" orderRoundTrip
echo
for f in cluster local; do
  jq -r --arg f "$f" '"\($f): sent \(.sent), gaps \(.gaps), recovered \(.recovered), lost \(.lost), persisted \(.persisted // "-"), not persisted \(.notPersisted // "-")"' "$work/$f.json"
done
echo
echo "| step | seconds |"
echo "| --- | --- |"
seconds() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
echo "| image import into the node ($image) | $(seconds "$import_ms") |"
echo "| kubectl apply → exchange and trader pods Running | $(seconds $((t1 - t0))) |"
echo "| pods Running → first trade received | $(seconds $((t2 - t1))) |"
echo "| first trade → Completed ($duration run, $reason) | $(seconds $((t3 - t2))) |"
echo "| kubectl apply → Completed | $(seconds $((t3 - t0))) |"
