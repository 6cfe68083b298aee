#!/usr/bin/env bash
# The README's demo: installs what the build needs (scripts/setup.sh), then runs the
# word count through a failure, recovery, stop-with-savepoint and a backend switch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
# Built as part of the workspace's examples rather than with `cargo run --example demo`: the
# workspace-wide feature resolution is the one the test command uses, so after the tests (or
# CI) this reuses their build instead of compiling RocksDB once more.
cargo build --workspace --examples
exec "$CARGO_TARGET_DIR/debug/examples/demo" "$@"
