#!/usr/bin/env python3
"""One line from a `ticklab replay -o json` report, for bench/recording.sh.
  bench/replay_report.py rate|lateness REPORT.json
"""
import json
import sys

mode, path = sys.argv[1], sys.argv[2]
replay = json.load(open(path))["exchange"]["replay"]
if mode == "rate":
    seconds = replay["elapsedNs"] / 1e9
    print("ticklab replay --top-speed       {:>8} packets in {:8.4f}s = {:>12,.0f} packets/s (into a live trader)".format(
        replay["packetsSent"], seconds, replay["packetsSent"] / seconds))
else:
    late = replay["lateness"]
    print("   (its own account, taken when the send call returns: lateness p50 {:.1f} µs, p99 {:.1f} µs, max {:.1f} µs)".format(
        late["p50Ns"] / 1000, late["p99Ns"] / 1000, late["maxNs"] / 1000))
