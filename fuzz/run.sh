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
            cp "$vectors/checkpoint-incremental.manifest" "$vectors/checkpoint-native.manifest" \
                "$vectors/checkpoint-changelog.manifest" "$dir/"
            for f in "$vectors"/corrupt/manifest-*; do cp "$f" "$dir/"; done ;;
        state_file_decode)
            cp "$vectors"/savepoint/*.state "$vectors/empty.state" "$dir/"
            for f in "$vectors"/corrupt/state-file-*; do cp "$f" "$dir/"; done ;;
        list_decode)
            cp "$vectors/list-value.bin" "$vectors/ttl-list-value.bin" \
                "$vectors/corrupt/list-value-trailing" "$dir/" ;;
        changelog_segment)
            # The vectors (version 2, whose first block is zstd-compressed, and version 1)
            # and their corrupt variants, and seeds/changelog_segment/: a version 1 segment
            # whose two blocks are zstd-compressed, so mutations reach the zstd path.
            cp "$vectors/changelog-segment.cls" "$vectors/changelog-segment-v1.cls" "$dir/"
            for f in "$vectors"/corrupt/changelog-segment-*; do cp "$f" "$dir/"; done
            cp seeds/changelog_segment/* "$dir/" ;;
        block_decode)
            for f in "$vectors"/savepoint/*.state; do
                data_blocks "$f" "$dir/$(basename "$f").blocks"
            done ;;
        savepoint_restore)
            pack "$vectors/savepoint" "$dir/savepoint" ;;
        codec_decode)
            # which codec (u8), then a value: "cairn" as String, a TTL String, [1, 2] as Vec<Vec<u64>>.
            printf '\x00\x05\x00\x00\x00\x00\x00\x00\x00cairn' >"$dir/string"
            { printf '\x08'; cat "$vectors/ttl-value.bin"; } >"$dir/ttl-string"
            printf '\x05\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00' >"$dir/nested" ;;
        *) ;;
    esac
}

# Little-endian unsigned integer of N bytes at OFFSET of FILE.
le() { od -An -t "u$3" -j "$2" -N "$3" "$1" | tr -d ' '; }

# The data region of state file $1 (its data blocks, from the end of the state table to
# the key-group index; format-spec/README.md, "State file") into $2.
data_blocks() {
    local len st_len index_at
    len=$(wc -c <"$1")
    st_len=$(le "$1" $((len - 64 + 8)) 8)
    index_at=$(le "$1" $((len - 64 + 16)) 8)
    dd if="$1" of="$2" bs=1 skip=$((16 + st_len)) count=$((index_at - 16 - st_len)) status=none
}

byte() { printf "\\x$(printf %02x $(($1 & 255)))"; }

# The files of directory $1 as savepoint_restore reads them: per file, name_len u8, name,
# len u32 LE, bytes.
pack() {
    : >"$2"
    local f name size
    for f in "$1"/*; do
        name=$(basename "$f")
        size=$(wc -c <"$f")
        {
            byte "${#name}"
            printf '%s' "$name"
            byte "$size"; byte $((size >> 8)); byte $((size >> 16)); byte $((size >> 24))
            cat "$f"
        } >>"$2"
    done
}

run() {
    seed "$1"
    cargo fuzz run "$1" "corpus/$1" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -timeout="${FUZZ_TIMEOUT:-60}"
}

if [ "$target" = all ]; then
    for t in $(cargo fuzz list); do run "$t"; done
else
    run "$target"
fi
