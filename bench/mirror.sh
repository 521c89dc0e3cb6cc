#!/usr/bin/env bash
# Live capture: the mirror (AF_PACKET on the trader's interface, VXLAN to the capture
# service) against `tcpdump -w` on the same interface at the same time, across network
# namespaces as in cli/tests/mirror.rs. sockperf sends UDP at rising rates from the
# "exchange" namespace to a sockperf server in the "trader" namespace; the mirror
# sends every frame on to `ticklab capture` in a third namespace.
# Prints, per rate: what sockperf sent; tcpdump's captured/dropped; the mirror's
# mirrored frames, kernel drops and send errors; what the capture received and the
# UDP receive-buffer drops in its namespace. Asserts nothing. Needs root.
#   bench/mirror.sh [SECONDS_PER_RATE] [RATES...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-5}"
shift || true
rates=("${@:-20000 100000 200000 max}")
read -r -a rates <<<"${rates[*]}"
cargo build --release --locked -q -p ticklab
bin="$PWD/target/release/ticklab"
work="$(mktemp -d)"
id=$$
x="bmx$id" t="bmt$id" c="bmc$id"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in "$x" "$t" "$c"; do ip netns del "$n" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for n in "$x" "$t" "$c"; do
  ip netns add "$n"
  ip -n "$n" link set lo up
done
# exchange (xa 198.18.2.1) — (tb 198.18.2.2) trader (tc 198.18.2.5) — (cd 198.18.2.6) capture
link() { # A B NS_A NS_B IP_A IP_B
  ip link add "$1" type veth peer name "$2"
  ip link set "$1" netns "$3"
  ip link set "$2" netns "$4"
  ip -n "$3" addr add "$5" dev "$1"
  ip -n "$4" addr add "$6" dev "$2"
  ip -n "$3" link set "$1" up
  ip -n "$4" link set "$2" up
}
link "bx$id" "bt$id" "$x" "$t" 198.18.2.1/30 198.18.2.2/30
link "bu$id" "bc$id" "$t" "$c" 198.18.2.5/30 198.18.2.6/30

cat >"$work/capture.yaml" <<YAML
session: bench
experiment: bench
listen: 198.18.2.6:4789
adminListen: 198.18.2.6:9290
vni: 9
YAML
cat >"$work/mirror.yaml" <<YAML
session: bench
experiment: bench
capture: 198.18.2.6:4789
vni: 9
interface: bt$id
adminListen: 198.18.2.5:9291
YAML
metric() { # NS URL NAME [LABEL FILTER] -> the sum of the matching series
  ip netns exec "$1" curl -s "$2/metrics" | grep -E "^$3[{ ]" | grep -F -- "${4:-}" |
    awk '{s+=$NF} END {printf "%d", s}'
}
wait_up() { # NS URL
  for _ in $(seq 100); do
    ip netns exec "$1" curl -sf "$2/metrics" >/dev/null && return 0
    sleep 0.1
  done
  echo "not up: $2" >&2
  exit 1
}
ip netns exec "$c" "$bin" capture --config "$work/capture.yaml" >"$work/capture.log" 2>&1 &
pids+=($!)
wait_up "$c" http://198.18.2.6:9290
ip netns exec "$t" "$bin" mirror --config "$work/mirror.yaml" >"$work/mirror.log" 2>&1 &
pids+=($!)
wait_up "$t" http://198.18.2.5:9291
ip netns exec "$t" sockperf server -i 198.18.2.2 -p 11111 >/dev/null 2>&1 &
pids+=($!)
sleep 0.5 # sockperf has no readiness signal; the first rate's counts start from zero anyway

echo "live capture benchmark: $(nproc) cores, $(uname -r), $(tcpdump --version 2>&1 | head -n1), $(sockperf --version 2>&1 | grep -o 'version [0-9.]*' | head -n1)"
echo "== mirror vs tcpdump -w on the trader's interface, ${seconds}s per rate, 64-byte UDP payloads"
printf '%-8s %12s %12s | %-26s | %-38s | %-24s\n' "rate" "sent" "sent/s" "tcpdump: captured dropped" "mirror: mirrored kernel-drops send-err" "capture: received rcvbuf-drops"
for rate in "${rates[@]}"; do
  mirrored0=$(metric "$t" http://198.18.2.5:9291 ticklab_mirror_frames_total 'outcome="mirrored"')
  kdrops0=$(metric "$t" http://198.18.2.5:9291 ticklab_mirror_kernel_drops_total)
  senderr0=$(metric "$t" http://198.18.2.5:9291 ticklab_mirror_frames_total 'outcome="send_error"')
  received0=$(metric "$c" http://198.18.2.6:9290 ticklab_capture_frames_total)
  rcvbuf0=$(ip netns exec "$c" nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/ {print $2}')
  ip netns exec "$t" tcpdump -i "bt$id" -n --immediate-mode -w "$work/tcpdump.pcap" -B 65536 udp port 11111 >"$work/tcpdump.log" 2>&1 &
  dump=$!
  # tcpdump says "listening on" once its socket is open.
  for _ in $(seq 100); do grep -q "listening on" "$work/tcpdump.log" && break; sleep 0.05; done
  mps=$rate
  out=$(ip netns exec "$x" sockperf throughput -i 198.18.2.2 -p 11111 -m 64 --mps="$mps" -t "$seconds" 2>&1)
  sent=$(grep -o 'Total of [0-9]* messages sent' <<<"$out" | grep -o '[0-9]*' || echo 0)
  # Let the tail through the mirror and the capture: wait until their counts stop moving.
  last=-1
  for _ in $(seq 300); do
    now=$(( $(metric "$t" http://198.18.2.5:9291 ticklab_mirror_frames_total) + $(metric "$c" http://198.18.2.6:9290 ticklab_capture_frames_total) ))
    [ "$now" = "$last" ] && break
    last=$now
    sleep 0.5
  done
  kill -INT "$dump"
  wait "$dump" 2>/dev/null || true
  captured=$(grep -o '[0-9]* packets captured' "$work/tcpdump.log" | grep -o '^[0-9]*' || echo "?")
  dropped=$(grep -o '[0-9]* packets dropped by kernel' "$work/tcpdump.log" | grep -o '^[0-9]*' || echo "?")
  mirrored=$(($(metric "$t" http://198.18.2.5:9291 ticklab_mirror_frames_total 'outcome="mirrored"') - mirrored0))
  kdrops=$(($(metric "$t" http://198.18.2.5:9291 ticklab_mirror_kernel_drops_total) - kdrops0))
  senderr=$(($(metric "$t" http://198.18.2.5:9291 ticklab_mirror_frames_total 'outcome="send_error"') - senderr0))
  received=$(($(metric "$c" http://198.18.2.6:9290 ticklab_capture_frames_total) - received0))
  rcvbuf=$(($(ip netns exec "$c" nstat -az UdpRcvbufErrors | awk '/UdpRcvbufErrors/ {print $2}') - rcvbuf0))
  printf '%-8s %12s %12s | %12s %12s | %12s %12s %10s | %12s %10s\n' "$rate" "$sent" "$((sent / seconds))/s" \
    "$captured" "$dropped" "$mirrored" "$kdrops" "$senderr" "$received" "$rcvbuf"
done
echo "mirror frames by outcome, all rates:"
ip netns exec "$t" curl -s http://198.18.2.5:9291/metrics | grep -E '^ticklab_mirror_(frames|kernel_drops)_total' |
  sed -E 's/\{outcome="([a-z_]+)".*\}/ \1/; s/\{.*\}//'
