#!/usr/bin/env python3
"""Pacing error of a replay, measured at the receiver: the i-th feed data packet of
CAPTURE against the i-th of RECORDING. offset_i = arrival_i - schedule_i / SPEED
(the schedule is the recording's capture time made non-decreasing, a suffix
minimum, as ticklab's reader does); error_i = offset_i - median(offset), so the
constant path latency cancels and what remains is how far each packet strayed from
its place in the schedule. Prints p50/p99/max of |error| and the drift: the mean
error over the last 1% of packets minus that over the first 1%.
  bench/pacing.py RECORDING CAPTURE SPEED LABEL
"""
import struct
import sys


def packets(path):
    """(timestamp ns, UDP payload) of every IPv4/UDP frame of an Ethernet pcap."""
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        end = "<"
    else:
        end = ">"
        magic = struct.unpack(">I", data[:4])[0]
    nano = magic == 0xA1B23C4D
    linktype = struct.unpack(end + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        sec, frac, incl, _orig = struct.unpack(end + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ts = sec * 1_000_000_000 + (frac if nano else frac * 1000)
        if linktype == 1:
            eth = 14
            if frame[12:14] == b"\x81\x00":
                eth = 18
            ip = frame[eth:]
        else:
            continue
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        yield ts, ip[ihl + 8:]


def data_packets(path):
    out = []
    for ts, p in packets(path):
        if len(p) < 20:
            continue
        count = struct.unpack(">H", p[18:20])[0]
        if count == 0 or count >= 0xFFFE or len(p) < 20 + 2 + 42:
            continue
        out.append((ts, struct.unpack(">Q", p[10:18])[0]))
    return out


def main():
    recording, capture, speed, label = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    rec = data_packets(recording)
    # Order by sequence number, schedule = suffix minimum of capture times.
    rec.sort(key=lambda p: p[1])
    sched = [ts for ts, _ in rec]
    for i in range(len(sched) - 2, -1, -1):
        sched[i] = min(sched[i], sched[i + 1])
    got = data_packets(capture)
    n = min(len(sched), len(got))
    if n < 2:
        print(f"{label}: only {len(got)} packets captured of {len(sched)}")
        return
    offsets = [got[i][0] - sched[i] / speed for i in range(n)]
    median = sorted(offsets)[n // 2]
    errors = [o - median for o in offsets]
    mags = sorted(abs(e) for e in errors)
    k = max(1, n // 100)
    drift = sum(errors[-k:]) / k - sum(errors[:k]) / k
    pct = lambda q: mags[min(n - 1, int(q * n))] / 1000
    span = (sched[n - 1] - sched[0]) / speed / 1e9
    print(
        f"{label:38s} packets {n:>7d}/{len(sched):<7d} span {span:6.1f}s  |error| p50 {pct(0.5):9.1f} µs"
        f"  p99 {pct(0.99):9.1f} µs  max {mags[-1] / 1000:10.1f} µs  drift {drift / 1000:+10.1f} µs"
    )


main()
