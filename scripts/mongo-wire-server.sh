#!/usr/bin/env bash
# Starts or stops a MongoDB-wire server for tests: FerretDB with its SQLite backend
# (no other server needed), on loopback.
#   scripts/mongo-wire-server.sh start PORT STATE_DIR   prints the connection URI
#   scripts/mongo-wire-server.sh stop STATE_DIR
set -euo pipefail
here="$(dirname "$0")"
# shellcheck source=scripts/tools/lib.sh
. "$here/tools/lib.sh"

case "${1:-}" in
  start)
    port="${2:?usage: start PORT STATE_DIR}"
    state="${3:?usage: start PORT STATE_DIR}"
    bin="$("$here/tools/ferretdb.sh" | tail -n 1)"
    mkdir -p "$state/data"
    "$bin" --listen-addr="127.0.0.1:$port" --handler=sqlite --sqlite-url="file:$state/data/" \
      --state-dir="$state" --telemetry=disable --debug-addr=- --log-level=warn \
      >"$state/ferretdb.log" 2>&1 &
    echo $! >"$state/ferretdb.pid"
    # Ready when it answers the MongoDB handshake, not merely when the port opens.
    for _ in $(seq 1 150); do
      if python3 - "$port" <<'PY' 2>/dev/null; then
import socket, struct, sys
# OP_MSG {"ping": 1, "$db": "admin"}
doc = b"\x10ping\x00\x01\x00\x00\x00\x02$db\x00\x06\x00\x00\x00admin\x00\x00"
doc = struct.pack("<i", len(doc) + 4) + doc
body = struct.pack("<I", 0) + b"\x00" + doc
msg = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
s.sendall(msg)
head = s.recv(16)
sys.exit(0 if len(head) == 16 and struct.unpack("<i", head[12:16])[0] == 2013 else 1)
PY
        echo "mongodb://127.0.0.1:$port/ticklab"
        exit 0
      fi
      if ! kill -0 "$(cat "$state/ferretdb.pid")" 2>/dev/null; then
        log "FerretDB exited; its log:"; tail -n 20 "$state/ferretdb.log" >&2; exit 1
      fi
      sleep 0.2
    done
    log "FerretDB did not answer on 127.0.0.1:$port within 30 s; its log:"
    tail -n 20 "$state/ferretdb.log" >&2
    exit 1
    ;;
  stop)
    state="${2:?usage: stop STATE_DIR}"
    if [ -f "$state/ferretdb.pid" ]; then
      pid="$(cat "$state/ferretdb.pid")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$state/ferretdb.pid"
    fi
    ;;
  *) die "usage: $0 start PORT STATE_DIR | stop STATE_DIR" ;;
esac
