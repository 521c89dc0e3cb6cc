#!/usr/bin/env bash
# Fuzzes every decoder target under fuzz/ for the given seconds each (default 60):
# short in CI, longer by hand. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
eval "$(scripts/tools/cargo-fuzz.sh)"
for target in $(cargo "$FUZZ_TOOLCHAIN" fuzz list --fuzz-dir fuzz 2>/dev/null || ls fuzz/fuzz_targets | sed 's/\.rs$//'); do
  echo "fuzzing $target for ${seconds}s" >&2
  mkdir -p "fuzz/corpus/$target"
  cargo "$FUZZ_TOOLCHAIN" fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 3
done
