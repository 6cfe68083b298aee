#!/usr/bin/env bash
# The test command named in the README: every crate's unit, integration, golden-vector,
# crash-injection, property and doc tests (benchmarks are built by clippy, run by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cairn-target}"
bash scripts/setup.sh
cargo test --workspace "$@"
