#!/usr/bin/env bash
# Measures ticklab's feed next to sockperf in one run on this machine and prints the
# figures side by side (as Markdown, for BENCHMARKS.md):
#   1. highest trades/s and packets/s over loopback UDP with zero gaps, against
#      `sockperf throughput` with packets of the same size;
#   2. one-way latency p50/p99/p99.9 at 10k and 100k trades/s, against
#      `sockperf ping-pong` (whose latency is half the round trip);
#   3. the trader's MongoDB writer against a plain insert_many loop (needs
#      MONGODB_URI, or starts FerretDB through scripts/mongo-wire-server.sh).
# Nothing here asserts timing; it prints what it measured.
#   bench/run.sh            all three
#   SECONDS_PER_RUN=5 bench/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECONDS_PER_RUN:-3}"
port=11111
scripts/tools/apt-packages.sh >/dev/null
cargo build --release --locked -p ticklab >&2
ticklab=target/release/ticklab
[ -n "${CARGO_TARGET_DIR:-}" ] && ticklab="$CARGO_TARGET_DIR/release/ticklab"

sockperf server -i 127.0.0.1 -p "$port" >/dev/null 2>&1 &
server=$!
state=""
cleanup() {
  kill "$server" 2>/dev/null || true
  if [ -n "$state" ]; then scripts/mongo-wire-server.sh stop "$state" >/dev/null 2>&1 || true; rm -rf "$state"; fi
}
trap cleanup EXIT
sleep 1

echo "## Feed throughput (loopback UDP, 1472-byte packets, ${secs}s per rate)"
echo
echo '```'
"$ticklab" bench feed --seconds "$secs"
echo '```'
echo
echo "sockperf throughput, same packet size:"
echo
echo '```'
sockperf throughput -i 127.0.0.1 -p "$port" -m 1472 -t "$secs" 2>&1 | grep -E "Summary|dropped" | sed 's/\x1b\[[0-9;]*m//g'
echo '```'
echo
echo "## Packet rate with small packets (128-byte packets, two trades each)"
echo
echo '```'
"$ticklab" bench feed --seconds "$secs" --packet-bytes 128 --rates 200000,400000,600000,800000
echo '```'
echo
echo "sockperf throughput, 64-byte messages:"
echo
echo '```'
sockperf throughput -i 127.0.0.1 -p "$port" -m 64 -t "$secs" 2>&1 | grep -E "Summary: Message" | sed 's/\x1b\[[0-9;]*m//g'
echo '```'
echo
echo "## One-way latency (loopback UDP)"
echo
echo '```'
"$ticklab" bench latency --seconds "$secs"
echo '```'
echo
echo "The same with the trader busy-polling its feed socket (spec.trader.busyPoll):"
echo
echo '```'
"$ticklab" bench latency --seconds "$secs" --busy-poll
echo '```'
echo
for mps in 10000 100000; do
  echo "sockperf ping-pong at $mps msg/s, 64-byte messages (latency = RTT/2):"
  echo
  echo '```'
  sockperf ping-pong -i 127.0.0.1 -p "$port" -m 64 -t "$secs" --mps "$mps" 2>&1 \
    | grep -E "Message Rate|Summary: Latency|percentile (50.000|99.000|99.900)|MAX" | sed 's/\x1b\[[0-9;]*m//g'
  echo '```'
  echo
done

echo "## MongoDB writes"
echo
if [ -z "${MONGODB_URI:-}" ]; then
  state="$(mktemp -d)"
  mport="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  MONGODB_URI="$(scripts/mongo-wire-server.sh start "$mport" "$state" | tail -n 1)"
  export MONGODB_URI
  echo "(FerretDB on loopback)"
  echo
fi
echo '```'
"$ticklab" bench mongodb --trades "${MONGO_TRADES:-100000}"
echo '```'
