#!/usr/bin/env bash
# The capture's decoder beside tshark and tcpdump on the same file: a local run (wss
# feed, HTTPS orders, the trader's key log, a MirrorSession) writes the mirror's pcapng
# with the key log embedded; then each tool reads it, best of three:
#   ticklab decode   TCP reassembly, TLS decryption, WebSocket and HTTP, every trade
#                    and order, latency histograms (the keys from the file)
#   tcpdump -r       link, IP and TCP headers of every frame, printed (to /dev/null)
#   tshark -r        the full dissection tree of every frame, no keys
#   tshark -o tls.keylog_file  the same with TLS decrypted (WebSocket and HTTP inside)
# Prints frames/s for each and the TLS records ticklab and tshark decrypted, which must
# agree. Needs root (the mirror), tshark and tcpdump.
#   bench/capture.sh [SECONDS] [RATE]      (90 20000 gives about two million frames)
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
"$bin" run "$work/run.yaml" --quiet --output json --capture-dir "$work/captures" --keylog "$work/keys.log" > "$work/report.json"
# A long run rotates into several files (256 MB each): one file for the tools.
mapfile -t parts < <(ls "$work"/captures/*.pcapng)
if [ "${#parts[@]}" -gt 1 ]; then
  file="$work/all.pcapng"
  mergecap -a -F pcapng -w "$file" "${parts[@]}"
else
  file="${parts[0]}"
fi
port() { python3 -c "import json,sys; print(json.load(open('$work/report.json'))['endpoints']['$1'].rsplit(':',1)[1])"; }
feed="$(port feed)"; http="$(port orderHttp)"
frames="$(python3 -c "import json; print(json.load(open('$work/report.json'))['wire']['frames'])")"
best_of_3() { # COMMAND... -> seconds of the fastest run
  local best=999999 t start
  for _ in 1 2 3; do
    start=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t=$(echo "$(date +%s.%N) - $start" | bc)
    best=$(echo "if ($t < $best) $t else $best" | bc)
  done
  echo "$best"
}
"$bin" decode "$file" --keylog "$work/keys.log" --json --server-port "$feed" --server-port "$http" > "$work/decoded.json"
ours_records="$(python3 -c "import json; print(json.load(open('$work/decoded.json'))['tls']['recordsDecrypted'])")"
keylog="$work/keys.log"
decode_t=$(best_of_3 "$bin" decode "$file" --keylog "$keylog" --json --server-port "$feed" --server-port "$http")
tcpdump_t=$(best_of_3 tcpdump -n -r "$file")
tshark_plain_t=$(best_of_3 tshark -n -r "$file")
tshark_tls_t=$(best_of_3 tshark -n -r "$file" -o "tls.keylog_file:$keylog" -d "tcp.port==$feed,tls" -d "tcp.port==$http,tls")
tshark_records="$(tshark -n -r "$file" -o "tls.keylog_file:$keylog" -d "tcp.port==$feed,tls" -d "tcp.port==$http,tls" \
  -T fields -e tls.record.content_type -E occurrence=a 2>/dev/null | tr ',' '\n' | grep -c '^23$')"
echo "capture decode benchmark: $(nproc) cores, $(uname -r), $(tcpdump --version 2>&1 | head -n1), $(tshark --version | head -n1)"
echo "file: $frames frames, $(du -h "$file" | cut -f1); key log: $(wc -l <"$keylog") lines"
printf '%-34s %10s %10s %14s %10s %18s\n' tool frames seconds "frames/s" "ticklab is" "TLS app records"
row() { # NAME SECONDS RECORDS
  printf '%-34s %10s %10.3f %14.0f %9.1fx %18s\n' "$1" "$frames" "$2" "$(echo "$frames / $2" | bc -l)" "$(echo "$2 / $decode_t" | bc -l)" "$3"
}
row "ticklab decode --keylog" "$decode_t" "$ours_records"
row "tcpdump -r" "$tcpdump_t" "-"
row "tshark -r" "$tshark_plain_t" "-"
row "tshark -r -o tls.keylog_file" "$tshark_tls_t" "$tshark_records"
