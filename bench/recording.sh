#!/usr/bin/env bash
# Recording and replay benchmarks, each beside its reference tool in the same run.
# Prints figures; asserts nothing. Needs root (tcpdump and tcpreplay on lo).
#   1. recorder vs `tcpdump -w`: one tapped feed on loopback (128-byte packets, two
#      trades each) captured by both at once, at rising rates; drops side by side.
#   2. replay at top speed vs `tcpreplay --topspeed`, the same file.
#   3. pacing error at x1 and x10 vs `tcpreplay --multiplier`, the same 60-second
#      recording, both measured at the receiver from a tcpdump capture on lo with
#      nanosecond timestamps (bench/pacing.py).
#   4. the live feed's latency with and without a recorder tapping it.
#   bench/recording.sh [SECONDS_PER_RATE] [PACING_SECONDS] [SECTIONS, e.g. 13]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
pacing_seconds="${2:-60}"
sections="${3:-1234}" # which of the numbered parts to run
cargo build --release --locked -q -p ticklab
bin="$PWD/target/release/ticklab"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
metric() { curl -s "$1/metrics" | grep -E "^$2" | awk '{print $2}' | head -n1; }

# A process that subscribes to the UDP feed (as a trader would) and never reads it.
subscriber() { # FEED_PORT RETRANSMIT_PORT
  python3 - "$1" "$2" <<'PY' &
import socket, sys, time
feed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
feed.bind(("127.0.0.1", int(sys.argv[1])))
req = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    req.sendto(bytes(20), ("127.0.0.1", int(sys.argv[2])))
    time.sleep(0.5)
PY
  pids+=($!)
}

exchange() { # NAME RATE DURATION_MS MAX_PACKET_BYTES -> sets RETRANSMIT ADMIN
  local feed retransmit_port admin_port
  feed=$(free_port SOCK_DGRAM); retransmit_port=$(free_port SOCK_DGRAM); admin_port=$(free_port SOCK_STREAM)
  cat >"$work/$1-exchange.yaml" <<YAML
experiment: $1
spec:
  symbols: [EURUSD, BTCUSD]
  ratePerSecond: $2
  maxPacketBytes: $4
  retransmissionBuffer: 20000000
durationMillis: $3
feedUdpTarget: 127.0.0.1:$feed
feedListen: 127.0.0.1:$(free_port SOCK_STREAM)
retransmitListen: 127.0.0.1:$retransmit_port
orderTcpListen: 127.0.0.1:$(free_port SOCK_STREAM)
orderHttpListen: 127.0.0.1:$(free_port SOCK_STREAM)
adminListen: 127.0.0.1:$admin_port
YAML
  "$bin" exchange --config "$work/$1-exchange.yaml" >"$work/$1-exchange.log" 2>&1 &
  pids+=($!)
  RETRANSMIT=$retransmit_port
  ADMIN="http://127.0.0.1:$admin_port"
  until curl -sf "$ADMIN/readyz" >/dev/null; do sleep 0.05; done
  subscriber "$feed" "$retransmit_port"
}

recorder() { # NAME DIR RETRANSMIT_PORT -> sets RECORDER
  local port; port=$(free_port SOCK_STREAM)
  cat >"$work/$1-recorder.yaml" <<YAML
experiment: $1
recording: $1
exchangeRetransmit: 127.0.0.1:$3
directory: $2
listen: 127.0.0.1:$port
enabled: false
rotation: {maxMegabytes: 1024, maxSeconds: 3600}
YAML
  "$bin" recorder --config "$work/$1-recorder.yaml" >"$work/$1-recorder.log" 2>&1 &
  RECORDER_PID=$!
  pids+=($RECORDER_PID)
  RECORDER="http://127.0.0.1:$port"
  until curl -sf "$RECORDER/readyz" >/dev/null; do sleep 0.05; done
}

echo "recording and replay benchmark: $(nproc) cores, $(uname -r), $(tcpdump --version 2>&1 | head -n1), tcpreplay $(tcpreplay --version 2>&1 | head -n1 | awk '{print $3}')"
echo
if [[ $sections == *1* ]]; then
echo "== 1. recorder vs tcpdump -w on the same tapped stream (${seconds}s per rate, 128-byte packets)"
printf '%-10s %-22s | %-44s | %-30s\n' "trades/s" "copies sent, per second" "recorder: written, kernel drops, recovered, lost" "tcpdump -w: captured, dropped"
for rate in 200000 500000 1000000 2000000; do
  name="rate$rate"
  exchange "$name" "$rate" $((seconds * 1000 + 3000)) 128
  recorder "$name" "$work/$name" "$RETRANSMIT"
  tcpdump -i lo -w "$work/$name.tcpdump.pcap" -B 16384 --time-stamp-precision=nano -U \
    "udp and src port $RETRANSMIT" >"$work/$name.tcpdump.log" 2>&1 &
  tcpdump_pid=$!
  sleep 1 # tcpdump's filter in place before the feed's copies start
  curl -sf -X PUT -H 'content-type: application/json' -d '{"enabled":true}' "$RECORDER/recording" >/dev/null
  started=$(date +%s.%N)
  # Until the exchange's copies stop (a publisher behind its schedule goes on past
  # its duration): then both have seen the whole stream.
  sent=0
  while :; do
    sleep 1
    now=$(metric "$ADMIN" 'ticklab_exchange_tap_packets_total\{.*outcome="sent"')
    [ "${now:-0}" = "$sent" ] && [ "$sent" != 0 ] && break
    sent=${now:-0}; ended=$(date +%s.%N)
  done
  kill -INT "$tcpdump_pid"; wait "$tcpdump_pid" 2>/dev/null || true
  sent=$(python3 -c 'import sys; n=float(sys.argv[1]); s=float(sys.argv[3])-float(sys.argv[2]); print("{:.0f} {:>9,.0f}/s".format(n, n/s))' "$sent" "$started" "$ended")
  # The recorder finishes recovering, then stops.
  for _ in $(seq 1 100); do
    behind=$(curl -s "$RECORDER/recording" | python3 -c 'import json,sys; print(json.load(sys.stdin)["behind"])')
    [ "$behind" = 0 ] && break; sleep 0.1
  done
  status=$(curl -s "$RECORDER/recording")
  kill "$RECORDER_PID"; wait "$RECORDER_PID" 2>/dev/null || true
  rec=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]); print("{:>10} {:>10} {:>10} {:>8}".format(s["packets"], s["kernelDrops"], s["recovered"], s["unrecoverable"]))' "$status")
  td=$(awk '/packets captured/ {c=$1} /dropped by kernel/ {d=$1} END {printf "%10s %10s", c, d}' "$work/$name.tcpdump.log")
  printf '%-10s %-22s | %-44s | %-30s\n' "$rate" "$sent" "$rec" "$td"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  rm -rf "$work/$name" "$work/$name.tcpdump.pcap"
done
fi

if [[ $sections == *2* || $sections == *3* ]]; then
echo
echo "== recording ${pacing_seconds}s of feed for the replays (2000 trades/s, 1472-byte packets)"
cat >"$work/pacing.yaml" <<YAML
apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata: {name: pacing}
spec:
  exchange: {symbols: [EURUSD, GBPUSD, BTCUSD], ratePerSecond: 2000, seed: 5}
  trader: {persistence: {enabled: false}}
  duration: ${pacing_seconds}s
---
apiVersion: ticklab.dev/v1alpha1
kind: RecordingSession
metadata: {name: pacing}
spec: {experiment: pacing, rotation: {maxMegabytes: 1024, maxSeconds: 3600}}
YAML
"$bin" run "$work/pacing.yaml" --recordings-dir "$work/recordings" --quiet -o json >/dev/null
file=$(ls "$work"/recordings/pacing/*.pcap | head -n1)
"$bin" recordings ls "$work/recordings/pacing"

fi
if [[ $sections == *2* ]]; then
echo
echo "== 2. replay at top speed vs tcpreplay --topspeed (same file, loopback)"
"$bin" replay "$file" --top-speed --quiet -o json >"$work/top.json"
python3 bench/replay_report.py rate "$work/top.json"
tcpreplay -i lo --topspeed "$file" 2>&1 | awk '/Actual:|Rated:/ {print "tcpreplay --topspeed            " $0}'

fi
if [[ $sections == *3* ]]; then
echo
echo "== 3. pacing error at the receiver (tcpdump on lo, ns timestamps), ${pacing_seconds}s recording"
echo "   (Debian's tcpreplay is 4.4.x, which still drifts under --multiplier; fixed in 4.5.3)"
for speed in 1 10; do
  feed_port=$(free_port SOCK_DGRAM)
  tcpdump -i lo -w "$work/ours-$speed.pcap" -B 16384 --time-stamp-precision=nano -U \
    "udp and greater 100" >/dev/null 2>&1 &
  td=$!; sleep 1
  "$bin" replay "$file" --speed "$speed" --quiet -o json >"$work/ours-$speed.json"
  sleep 0.5; kill -INT "$td"; wait "$td" 2>/dev/null || true
  python3 bench/pacing.py "$file" "$work/ours-$speed.pcap" "$speed" "ticklab replay --speed $speed"
python3 bench/replay_report.py lateness "$work/ours-$speed.json"
  tcpdump -i lo -w "$work/theirs-$speed.pcap" -B 16384 --time-stamp-precision=nano -U \
    "udp and greater 100" >/dev/null 2>&1 &
  td=$!; sleep 1
  tcpreplay -i lo --multiplier "$speed" "$file" >/dev/null 2>&1
  sleep 0.5; kill -INT "$td"; wait "$td" 2>/dev/null || true
  python3 bench/pacing.py "$file" "$work/theirs-$speed.pcap" "$speed" "tcpreplay --multiplier $speed"
done

fi
if [[ $sections == *4* ]]; then
echo
echo "== 4. the live feed's latency with and without a recorder tapping it (${pacing_seconds}s, 20000 trades/s, UDP)"
cat >"$work/live.yaml" <<YAML
apiVersion: ticklab.dev/v1alpha1
kind: LatencyExperiment
metadata: {name: live}
spec:
  exchange: {symbols: [EURUSD, GBPUSD, BTCUSD], ratePerSecond: 20000, seed: 9}
  trader: {persistence: {enabled: false}}
  duration: ${pacing_seconds}s
YAML
{ cat "$work/live.yaml"; printf -- '---\napiVersion: ticklab.dev/v1alpha1\nkind: RecordingSession\nmetadata: {name: live}\nspec: {experiment: live}\n'; } >"$work/live-recorded.yaml"
for variant in live live-recorded; do
  "$bin" run "$work/$variant.yaml" --recordings-dir "$work/live-recordings" --quiet -o json >"$work/$variant.json"
  python3 - "$work/$variant.json" "$variant" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
f = r["results"]["feedLatency"]
rec = r.get("recordings", [])
extra = " · recorded {} packets".format(rec[0]["packets"]) if rec else ""
print("{:14s} one-way feed p50 {:6.1f} µs  p99 {:7.1f} µs  p99.9 {:7.1f} µs  max {:8.1f} µs  lost {}{}".format(
    "recorder on" if rec else "recorder off", f["p50Micros"], f["p99Micros"], f["p999Micros"], f["maxMicros"],
    r["results"]["lost"], extra))
PY
done
fi
