//! # cairn-changelog — log-based incremental checkpoints around any backend
//!
//! [`ChangelogBackend`] wraps a keyed state backend (`cairn-hashmap`, `cairn-rocksdb`, any
//! [`cairn_core::KeyedStateBackend`]) the way Flink 1.15's changelog state backend does:
//!
//! - **Every mutation is logged.** After the wrapped backend applies a put, delete, list
//!   append or update, map put or remove, reduce, aggregate or clear, the wrapper appends a
//!   record (key group, state, key, namespace, op, value bytes) to a 64 KiB in-memory
//!   chunk, in the order the changes happen. Full chunks go to a background thread, which
//!   compresses each into one block of the open **segment** (`format-spec/README.md`,
//!   "Changelog segment", version 2: CRC32-checked, zstd-compressed blocks of records of
//!   any key groups, in arrival order, each block naming its key-group range); the task
//!   thread reuses emptied chunks. Segments are sealed at a size or a checkpoint and
//!   uploaded in the background into the job's `shared/` directory. Arrival order, rather
//!   than blocks grouped by key group, keeps the task thread's footprint to one chunk:
//!   grouping needed a buffer per key group for the whole segment, which cost W1 (a keyed
//!   count on the heap backend) about a quarter of its throughput (0.60 of the run without
//!   checkpoints, against 0.75-0.79 with the chunks). A restore replays a segment in file
//!   order, keeping the records of its key groups and skipping blocks of other key groups.
//! - **A checkpoint is the last materialization plus the log after it.** The synchronous
//!   phase seals the buffer (O(1)); the asynchronous phase uploads that tail and returns a
//!   `KeyedData::Changelog` handle (manifest keyed-data kind 3). Its cost follows the
//!   changes since the previous checkpoint, not the state size.
//! - **Materialization** is the wrapped backend's own incremental snapshot (heap
//!   incremental by key group, RocksDB native SST files), taken in the background when the
//!   log since the last one reaches a fraction of the state size or after an interval
//!   ([`ChangelogConfig`]). Once a checkpoint that uses it completes, older segments and
//!   materialized files are released and deleted by the usual retention rules.
//! - **Restore** gives the materialized snapshots to the wrapped backend (natively), reads
//!   the segments' records for the backend's key groups (so rescaling works) and replays
//!   them, state by state, when the program registers the state. Segments are read whole
//!   and checked against the manifest's size, CRC32, first sequence number and record
//!   count: a torn segment fails the restore, it is never replayed in part. Each segment
//!   must start at the sequence number where the previous one ends (a segment missing
//!   from the handle, or listed twice, fails the restore too).
//! - **Savepoints are canonical**: the wrapper's savepoint is the wrapped backend's, so a job
//!   with changelog on restores from a savepoint without it, and the other way round.
//!
//! ```
//! use std::sync::Arc;
//! use cairn_core::{BincodeCodec, Codec, KeyedStateBackend, SnapshotOptions, StateAccess, ValueStateDescriptor};
//! use cairn_changelog::{ChangelogBackend, ChangelogConfig};
//! use cairn_hashmap::HashMapBackend;
//! use cairn_storage::CheckpointStorage;
//!
//! let storage = CheckpointStorage::open("memory://")?;
//! let key_codec = BincodeCodec::<u64>::new();
//! let inner = HashMapBackend::for_subtask("counter", 128, 1, 0, key_codec.identity().clone())?;
//! let config = ChangelogConfig::new("counter", key_codec.identity().clone());
//! let mut backend = ChangelogBackend::new(inner, config, Arc::new(storage.clone()));
//! let count = backend.register_value(&ValueStateDescriptor::<u64>::new("count"))?;
//! backend.set_current_key(&key_codec.encode_to_vec(&7).unwrap())?;
//! backend.value(&count).update(1)?;
//!
//! let writer = storage.begin_checkpoint(1)?;
//! let phase = backend.snapshot(SnapshotOptions::incremental_checkpoint(1))?;
//! let handle = phase.run(&writer, &Default::default())?;
//! assert!(matches!(handle.data, cairn_core::KeyedData::Changelog { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Construction
//!
//! [`ChangelogBackend::new`]`(inner, config, storage)` takes a fresh wrapped backend, the
//! [`ChangelogConfig`] (uid, key codec identity, triggers) and the job's checkpoint
//! storage (any [`ChangelogStorage`]; [`cairn_storage::CheckpointStorage`] implements it),
//! to which segments and materializations are uploaded between checkpoints, pinned
//! against garbage collection until a completed checkpoint makes them obsolete. For a
//! restore, create it the same way and call `restore(handles, source)` before registering
//! states. [`ChangelogBackend::with_checkpoint_uploads`] needs no storage: files then wait
//! in memory for the next checkpoint's asynchronous phase, which writes them through its
//! target.
//!
//! ## Threads
//!
//! The task thread only appends records, hands off full chunks and seals segments. One
//! background thread per backend compresses the chunks into the open segment and
//! finishes (and, with a storage, uploads) sealed segments (if it cannot be started, the
//! task thread does that work itself); when it falls
//! [`ChangelogOptions::max_in_flight_bytes`] behind, the task thread waits for it
//! (backpressure, [`ChangelogBackend::log_backpressure`]); each materialization's
//! asynchronous phase runs on a thread of its own. The wrapped backend's synchronous snapshot phase runs on the task
//! thread (it is cheap by contract), when a trigger fires during a mutation or a
//! checkpoint, or when [`ChangelogBackend::maybe_materialize`] is called. Dropping the
//! backend cancels its materializations, lets the background thread finish the work queued
//! without uploading it (no checkpoint of a dropped backend can use it), and waits for
//! these threads: once it returns, nothing of the backend writes to the storage.
//!
//! ## What recovery costs in exchange
//!
//! A restore downloads the materialization and every segment since it and replays each
//! record through the typed API: the longer the log, the longer the recovery; the
//! materialization triggers bound it. The first checkpoint after a restore waits for a new
//! materialization (the restored files may belong to a savepoint).
//!
//! ## Schema evolution
//!
//! A newer program may register a restored state with a codec whose value schema changed
//! ([`cairn_core::EvolvingCodec`]). The descriptor's `resolve` decides it against what the
//! restored changelog handles say about the state (its kind, the namespace and map key as
//! is, the value as is or after a migration). The two halves of a changelog checkpoint then
//! migrate apart, each under the identities it was written with:
//!
//! - the materialized snapshot goes to the wrapped backend, whose handles carry their own
//!   state metas (the identities the materialization found): it resolves the state
//!   against them and converts its entries itself;
//! - the segments' records are replayed with `Codec::decode_from` under the identity the
//!   changelog handle names: a handle has **one** meta list for all its segments.
//!
//! So every segment a checkpoint references must be in the encoding its meta list names.
//! The records this backend logs are in the registered codec; records of an older run are
//! only those restored, replayed at registration, and those of states not registered when
//! a materialization starts, which it writes as its carry segment in the schema they were
//! restored in (an unregistered state is described by its restored identity). Once such a
//! state is registered with a migration, handles name the new identity: a checkpoint that
//! still referenced a carry written before would have its restore decode old bytes as new.
//! Hence the first registration of a state in a run that migrates it does what a full
//! checkpoint does: a materialization is needed again, and every one started before is
//! *tainted* (never adopted as the chain's, and no later checkpoint waits for it). The next
//! changelog checkpoint starts one (unless one started since is running) and waits for it:
//! its carry holds only states still unregistered, under their restored identities, and
//! the segments after it only records logged since, in the new schema. Every checkpoint
//! after a migration so holds the state in the new schema only, its materialization
//! included, as a migration promises (a later program needs to read the newest schema
//! only). A type renamed and read as is takes the same path, though its bytes do not
//! change: the materializations started before name the state by its old identity in their
//! own handles, and a checkpoint using one would say one identity at the top and another
//! underneath (a program that later drops the alias could not restore it, and subtasks that
//! materialized at different times could not be rescaled together).
//!
//! - A checkpoint in flight at the registration took its meta list, segments and
//!   materialization (adopted or awaited) in its synchronous phase, before the migration:
//!   all in the old schema, consistent; it completes as usual (a tainted materialization is
//!   kept while a pending checkpoint waits for it).
//! - Registering the same state again in the run changes nothing; a renamed type read as is
//!   (the same bytes under another identity) needs no new materialization.
//! - Rescaling: the handles of one checkpoint describe a state alike (they are checked to),
//!   and each subtask replays its key groups' records under that identity.
//! - Savepoints and full checkpoints are the wrapped backend's, which describes a migrated
//!   state by its new identity and holds it converted; a restored state with records to
//!   replay that is not registered yet is refused, as always (see "Limits").
//! - A replay that fails (a record the conversion refuses) names the operator, state and
//!   key group and leaves the state part-replayed: the backend refuses every snapshot from
//!   then on (`ChangelogError::ReplayFailed`); the task must fail and restore again.
//!
//! The cost is one materialization per run that migrates. The first checkpoint after a
//! restore waits for one anyway; a program that registers its states when the operator
//! opens makes it wait for the one started after the registrations instead of the one
//! started at the restore.
//!
//! ## Limits
//!
//! A savepoint or full checkpoint taken after a restore, before the program registered a
//! restored state that has changelog records, is refused (`ChangelogError::UnreplayedState`):
//! the wrapped backend cannot apply records of a state whose types it does not know.
//!
//! A checkpoint taken while some subtasks had registered (and migrated) a state and others
//! had not describes it by different identities in different handles: a restore that
//! merges such handles (rescaling) is refused ("handles disagree"), as for every backend.

mod backend;
mod checkpoint;
mod config;
mod entries;
mod error;
mod log;
mod materialize;
mod ops;
mod restore;
mod shared;

pub use backend::ChangelogBackend;
pub use config::{
    ChangelogConfig, ChangelogOptions, ChangelogStorage, LogBackpressure, UPLOAD_ATTEMPTS,
    UPLOAD_RETRY_DELAY,
};
pub use entries::{changelog_entries, ChangelogEntries};
pub use error::ChangelogError;
pub use restore::read_segment;
