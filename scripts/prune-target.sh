#!/usr/bin/env bash
# Keeps the shared target directory from filling its disk. Every clone of the repository
# (each CI run is a fresh clone at its own path) builds its own copies of the workspace's
# test executables and incremental caches, and nothing ever deletes the old ones.
#
#   bash scripts/prune-target.sh            prune only when less than 20 GiB are free
#   bash scripts/prune-target.sh --force    prune now
#
# Pruning removes the incremental caches and, of each test or example executable, every copy
# but the newest. Libraries (RocksDB's build above all) stay: those are what reuse saves.
set -euo pipefail
target="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
min_free_kib=$((20 * 1024 * 1024))
[ -d "$target" ] || exit 0

free_kib() { df -Pk "$target" | awk 'NR == 2 { print $4 }'; }

if [ "${1:-}" != "--force" ] && [ "$(free_kib)" -ge "$min_free_kib" ]; then
    exit 0
fi
echo "prune-target: $((($(free_kib)) / 1024 / 1024)) GiB free under $target; pruning"
for profile in debug release; do
    rm -rf "${target:?}/$profile/incremental"
    for dir in "$target/$profile/deps" "$target/$profile/examples"; do
        [ -d "$dir" ] || continue
        # Executables named <stem>-<16 hex digits>, newest first; keep the first of each stem.
        find "$dir" -maxdepth 1 -regextype posix-extended -type f -perm -u+x -regex '.*-[0-9a-f]{16}' -printf '%T@ %p\n' \
            | sort -rn \
            | awk '{ path = $2; stem = path; sub(/-[0-9a-f]+$/, "", stem);
                     if (seen[stem]++) print path }' \
            | xargs -r rm -f
    done
done
echo "prune-target: $((($(free_kib)) / 1024 / 1024)) GiB free"
