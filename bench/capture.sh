#!/usr/bin/env bash
# The capture's decoder beside tshark on the same file: a local run (wss feed,
# HTTPS orders, the trader's key log, a MirrorSession) writes the mirror's pcapng
# with the key log embedded; then `ticklab decode` (TCP reassembly, TLS decryption,
# WebSocket and HTTP, every trade and order, latency) and tshark (dissection with
# the same keys: TLS, WebSocket, HTTP) read it. Prints frames/s for each and the
# TLS records each decrypted, which must agree. Needs root (the mirror) and tshark.
#   bench/capture.sh [SECONDS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
rate="${2:-20000}"
cargo build --release -q -p ticklab
bin=target/release/ticklab
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/run.yaml" <<YAML
apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata: {name: capture-bench}
spec:
  exchange: {symbols: [EURUSD, BTCUSD, ETHUSD], ratePerSecond: $rate, seed: 3, transport: websocket}
  trader: {orderTransport: http, persistence: {enabled: false}}
  tls: {keyLog: true}
  duration: ${seconds}s
---
apiVersion: ticklab.dev/v1alpha1
kind: MirrorSession
metadata: {name: capture-bench}
spec: {experiment: capture-bench}
YAML
"$bin" run "$work/run.yaml" --quiet --output json --capture-dir "$work/captures" > "$work/report.json"
file="$(ls "$work"/captures/*.pcapng)"
port() { python3 -c "import json,sys; print(json.load(open('$work/report.json'))['endpoints']['$1'].rsplit(':',1)[1])"; }
feed="$(port feed)"; http="$(port orderHttp)"
frames="$(python3 -c "import json; print(json.load(open('$work/report.json'))['wire']['frames'])")"
best=999999
for _ in 1 2 3; do
  start=$(date +%s.%N)
  "$bin" decode "$file" --json --server-port "$feed" --server-port "$http" > "$work/decoded.json"
  t=$(echo "$(date +%s.%N) - $start" | bc)
  best=$(echo "if ($t < $best) $t else $best" | bc)
done
ours_records="$(python3 -c "import json; print(json.load(open('$work/decoded.json'))['tls']['recordsDecrypted'])")"
start=$(date +%s.%N)
tshark_records="$(tshark -r "$file" -d "tcp.port==$feed,tls" -d "tcp.port==$http,tls" \
  -T fields -e tls.record.content_type -E occurrence=a 2>/dev/null | tr ',' '\n' | grep -c '^23$')"
tshark_t=$(echo "$(date +%s.%N) - $start" | bc)
printf '%-18s %10s %10s %14s %18s\n' tool frames seconds "frames/s" "TLS app records"
printf '%-18s %10s %10.3f %14.0f %18s\n' "ticklab decode" "$frames" "$best" "$(echo "$frames / $best" | bc -l)" "$ours_records"
printf '%-18s %10s %10.3f %14.0f %18s\n' "tshark" "$frames" "$tshark_t" "$(echo "$frames / $tshark_t" | bc -l)" "$tshark_records"
