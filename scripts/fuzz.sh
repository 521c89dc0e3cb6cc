#!/usr/bin/env bash
# Fuzzes every decoder target under fuzz/ for the given seconds each (default 60):
# short in CI, longer by hand. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
eval "$(scripts/tools/cargo-fuzz.sh)"
for src in fuzz/fuzz_targets/*.rs; do
  target="$(basename "$src" .rs)"
  echo "fuzzing $target for ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo "$FUZZ_TOOLCHAIN" fuzz run --fuzz-dir fuzz --sanitizer "$FUZZ_SANITIZER" "$target" \
    "fuzz/corpus/$target" -- -max_total_time="$seconds" -max_len=4096 2>&1 | tail -n 2
done
