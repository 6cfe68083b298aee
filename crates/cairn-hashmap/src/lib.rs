//! Cairn's heap state backend: typed state, copy-on-write snapshots, incremental checkpoints
