#!/usr/bin/env bash
# The README's demo: installs what the build needs (scripts/setup.sh), then runs the
# word count through a failure, recovery, stop-with-savepoint and a backend switch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
cargo run --example demo -- "$@"
