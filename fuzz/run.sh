#!/usr/bin/env bash
# Runs cargo-fuzz targets, seeding each corpus from the golden vectors.
#
#   fuzz/run.sh TARGET SECONDS   one target
#   fuzz/run.sh all SECONDS      every target in turn
#
# Needs `cargo install cargo-fuzz` and a nightly compiler (or RUSTC_BOOTSTRAP=1 on stable).
set -euo pipefail
cd "$(dirname "$0")"
target="${1:?usage: run.sh TARGET|all SECONDS}"
seconds="${2:-30}"
vectors=../format-spec/vectors
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$PWD/target}"

seed() {
    local t="$1" dir="corpus/$1"
    mkdir -p "$dir"
    case "$t" in
        manifest_decode|manifest_decode_checked)
            cp "$vectors/savepoint/_metadata" "$dir/savepoint-metadata"
            cp "$vectors/checkpoint-incremental.manifest" "$vectors/checkpoint-native.manifest" "$dir/"
            for f in "$vectors"/corrupt/manifest-*; do cp "$f" "$dir/"; done ;;
        state_file_decode)
            cp "$vectors"/savepoint/*.state "$vectors/empty.state" "$dir/"
            for f in "$vectors"/corrupt/state-file-*; do cp "$f" "$dir/"; done ;;
        list_decode)
            cp "$vectors/list-value.bin" "$vectors/corrupt/list-value-trailing" "$dir/" ;;
        *) ;;
    esac
}

run() {
    seed "$1"
    cargo fuzz run "$1" "corpus/$1" -- -max_total_time="$seconds" -rss_limit_mb=2048
}

if [ "$target" = all ]; then
    for t in $(cargo fuzz list); do run "$t"; done
else
    run "$target"
fi
