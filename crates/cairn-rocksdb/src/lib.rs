//! # cairn-rocksdb — Cairn's RocksDB state backend
//!
//! [`RocksDbBackend`] keeps keyed state in an embedded RocksDB instance on local disk, with a
//! bounded write-back cache of deserialized values in front of it, native incremental
//! checkpoints, canonical savepoints that any Cairn backend restores, and restore by SST
//! ingestion. It implements [`cairn_core::KeyedStateBackend`] and behaves exactly like the
//! heap backend (`cairn-hashmap`): both pass one conformance suite.
//!
//! ```
//! use cairn_core::{
//!     BincodeCodec, Codec, KeyGroupRange, KeyedStateBackend, SnapshotOptions, StateAccess,
//!     ValueStateDescriptor,
//! };
//! use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let key_codec = BincodeCodec::<u64>::new();
//! let mut backend = RocksDbBackend::new(RocksDbConfig {
//!     uid: "counter".into(),
//!     max_parallelism: 128,
//!     key_group_range: KeyGroupRange::all(128),
//!     key_codec: key_codec.identity().clone(),
//!     local_dir: dir.path().to_path_buf(),
//!     options: RocksDbOptions::default(),
//! })?;
//! let count = backend.register_value(&ValueStateDescriptor::<u64>::new("count"))?;
//! for key in 0u64..100 {
//!     backend.set_current_key(&key_codec.encode_to_vec(&key).unwrap())?;
//!     let n = backend.value(&count).get()?.unwrap_or(0);
//!     backend.value(&count).update(n + 1)?;
//! }
//! // The synchronous phase: freeze the cache's dirty entries; a seal worker writes them and
//! // takes a RocksDB checkpoint (hard links). The returned asynchronous phase uploads it
//! // from any thread.
//! let _async_phase = backend.snapshot(SnapshotOptions::incremental_checkpoint(1))?;
//! # Ok::<(), cairn_core::StateError>(())
//! ```
//!
//! ## Design
//!
//! - **Layout.** One column family per state, named after it. Keys are
//!   `key_group u16 BE | esc(key) | esc(namespace) | user key` with an order-preserving
//!   escaping, so RocksDB's byte order is the canonical order of the format spec
//!   (`format-spec/README.md`): a key group is a contiguous range, snapshots and range
//!   restores are sequential scans. Lists are stored as `(len u32 LE, bytes)*` and appended
//!   with a concatenating merge operator, without a read.
//! - **Options** (see [`RocksDbOptions`]): a write-ahead log buffered in memory and never
//!   synced, which a checkpoint takes instead of flushing the memtables (checkpoints give
//!   durability; [`RocksDbOptions::checkpoint_wal`]; a new log is started at each
//!   checkpoint, so later checkpoints reference the complete ones), one shared block cache
//!   (a HyperClockCache), LZ4 upper levels and ZSTD bottommost, bloom filters.
//! - **Write-back cache.** Typed values keyed by (state, RocksDB key), with dirty and
//!   tombstone flags and CLOCK eviction by entry count; dirty evictions are written sorted
//!   in one `WriteBatch`, or, with a *spill* ([`RocksDbOptions::spill_capacity`], off by
//!   default), kept encoded in memory, where reads find them, until the next snapshot
//!   writes them with the cache's dirty entries as one sorted file per state. A hot key costs no RocksDB get or put per access, and a cached
//!   primitive value (a count, a sum) costs one cache miss: entries are the slots of an
//!   open-addressing table, one cache line each, with short keys and primitive values
//!   inline. `keys()`, map iteration and snapshots flush it first. [`RocksDbOptions::cache_capacity`] `= 0`
//!   turns it off.
//! - **Snapshots.** The synchronous phase only encodes the cache's dirty entries; a seal
//!   worker thread writes them (and the spill; sorted, a large set as ingested SST files)
//!   and creates a
//!   RocksDB checkpoint in a scratch directory, while the task goes on without writing
//!   RocksDB (evictions are held back) until the checkpoint exists. The asynchronous phase
//!   waits for that directory, reads only it and deletes it when done. Savepoints and
//!   full checkpoints are one canonical state file, written by scanning the checkpoint
//!   read-only in key order. Incremental checkpoints into storage that takes shared files
//!   are native: the checkpoint's SST files go to the shared area under content-derived
//!   names, and only files the last completed checkpoint does not hold are uploaded
//!   ([`RocksDbOptions::native_incremental`] `= false` writes them canonically instead).
//!   [`scan_native_handle`] reads a native handle's entries in canonical form, without the
//!   program.
//! - **Restore.** Canonical handles (from either backend, any parallelism) are turned into
//!   one SST file per state and ingested, never put entry by entry. Native handles are
//!   downloaded and opened; for another parallelism the most-overlapping one becomes the
//!   instance, keys outside the range are range-deleted and the other handles' key groups
//!   are ingested. Restored states keep their stored codec identities until registration
//!   checks them; states never registered are carried into later snapshots.
//! - **State TTL.** Reads drop the expired entries they find (`cairn_core::TtlStateAccess`);
//!   the rest are dropped by RocksDB compactions, through a compaction filter on every
//!   state column family that acts once the state registers with a TTL
//!   ([`cairn_core::KeyedStateBackend::enable_ttl_cleanup`]): values, reducing and
//!   aggregating states and map entries whose stamp has expired, lists whose every element
//!   has (`src/ttl.rs` says what is dropped and when, and why the write-back cache loses
//!   nothing to it).
//! - **Schema evolution** (`cairn_core::EvolvingCodec`, `src/migrate.rs`). A restored state
//!   that a program registers with a codec that reads the stored one only after migration
//!   is rewritten when it is first registered, before registration returns: after waiting
//!   for a running seal worker, one scan of its column family converts every stored value
//!   (each list element; a TTL value keeps its stamp) with the codec's `decode_from` and
//!   `encode` into SST files of at most the memtable size, which are ingested in one
//!   atomic call and then compacted with the old versions, so the state takes about the
//!   space (and the next native checkpoint the upload) of the converted values alone. The
//!   backend records the new identity only then, so every later snapshot (native, full,
//!   savepoint) describes the converted bytes. A value that does not convert fails the
//!   registration naming the operator, state and key group, with nothing ingested: the
//!   state stays as restored, old bytes and old identity, and snapshots describe it so. The
//!   write-back cache and the spill never hold entries of a state not yet registered, so
//!   there is nothing of it in front of RocksDB to convert.
//!
//! Why one column family per state rather than a state prefix in one keyspace? Per-state
//! options and statistics, and the state name is the column family name in a native
//! checkpoint, so tools can read a native snapshot with the handle's metadata alone.

mod backend;
mod cache;
mod canonical;
mod db;
mod ingest;
mod inspect;
mod layout;
mod migrate;
mod native;
mod native_restore;
mod ops;
mod options;
mod prefetch;
mod restore;
mod seal;
mod snapshot;
mod spill;
mod sst;
mod state;
#[cfg(test)]
mod test_support;
mod ttl;

pub use backend::RocksDbBackend;
pub use inspect::scan_native_handle;
pub use options::{column_family_options, RocksDbConfig, RocksDbOptions};
