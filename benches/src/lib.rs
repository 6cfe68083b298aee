//! Shared helpers for Cairn's benchmarks.
