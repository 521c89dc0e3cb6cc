#!/usr/bin/env bash
# Installs cargo-fuzz (pinned) into the tool cache once, and prints shell assignments
# for scripts/fuzz.sh to eval: PATH with cargo-fuzz on it, and FUZZ_TOOLCHAIN, the
# cargo toolchain argument to fuzz with (+nightly when installed; otherwise stable
# with RUSTC_BOOTSTRAP=1, which lets it take the nightly flags cargo-fuzz passes).
set -euo pipefail
# shellcheck source=scripts/tools/lib.sh
. "$(dirname "$0")/lib.sh"

version="0.13.1"
root="$TICKLAB_TOOLS/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz $version (once; cached in $root)"
  cargo install --quiet --locked cargo-fuzz --version "$version" --root "$root" >&2
fi
echo "export PATH=\"$root/bin:\$PATH\""
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "FUZZ_TOOLCHAIN=+nightly"
  echo "FUZZ_SANITIZER=address"
else
  log "no nightly toolchain: fuzzing with stable and RUSTC_BOOTSTRAP=1, without sanitizer"
  echo "export RUSTC_BOOTSTRAP=1"
  echo "FUZZ_TOOLCHAIN=+stable"
  echo "FUZZ_SANITIZER=none"
fi
