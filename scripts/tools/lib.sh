# Shared by the tool scripts: where built tools are cached (outside the repo, by
# version, reused across clones and CI runs) and how they log.
# shellcheck shell=bash
TICKLAB_TOOLS="${TICKLAB_TOOLS:-$HOME/.cache/ticklab/tools}"
export TICKLAB_TOOLS
mkdir -p "$TICKLAB_TOOLS"

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "$*"; exit 1; }
need_cmd() { command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed"; }
