# Shared by the scripts: where built tools are cached (outside the repo, by version,
# reused across clones and CI runs), how they log, and the background processes the
# cluster scripts keep under a state directory ($state: logs/NAME.log, pids/NAME).
# shellcheck shell=bash
TICKLAB_TOOLS="${TICKLAB_TOOLS:-$HOME/.cache/ticklab/tools}"
export TICKLAB_TOOLS
mkdir -p "$TICKLAB_TOOLS"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "$*"; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts "$@" in the background with its output in $state/logs/NAME.log.
spawn() {
  local name="$1"
  shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name"
}

# Fails with the end of its log when the process NAME has exited.
alive_or_die() {
  local name="$1" pid
  pid="$(cat "$state/pids/$name")"
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name exited; the end of its log:"
    tail -n 30 "$state/logs/$name.log" >&2
    exit 1
  fi
}

# SIGTERM to the process NAME, SIGKILL after 10 s; forgets it.
stop_process() {
  local name="$1" pid
  [ -f "$state/pids/$name" ] || return 0
  pid="$(cat "$state/pids/$name")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$state/pids/$name"
}
