#!/usr/bin/env bash
# Fuzzing in CI: installs cargo-fuzz if missing, builds every target once, then runs each
# for SECONDS (default 45), seeded from format-spec/vectors/ (see run.sh). Fails on the first
# crash, timeout, leak or out-of-memory: libFuzzer then exits non-zero and leaves the input
# in fuzz/artifacts/<target>/; turn it into a regression test (format-spec/README.md rules).
#
#   fuzz/ci.sh [SECONDS]
#
# Needs a nightly compiler, or RUSTC_BOOTSTRAP=1 on stable (set here unless given).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-45}"
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$PWD/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version
cargo fuzz build
failed=()
for t in $(cargo fuzz list); do
    printf '\n==> fuzz %s for %ss\n' "$t" "$seconds"
    if ! bash run.sh "$t" "$seconds"; then
        failed+=("$t")
    fi
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "every fuzz target ran ${seconds}s without a crash"
