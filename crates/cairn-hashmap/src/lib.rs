//! # cairn-hashmap — Cairn's heap state backend
//!
//! [`HashMapBackend`] keeps keyed state on the heap as typed Rust values and updates them in
//! place: a get or an update of an existing entry serializes nothing and allocates nothing.
//! Bytes exist only in snapshots, which are canonical state files (`format-spec/`,
//! "State file") that any Cairn backend restores, at any parallelism.
//!
//! ```
//! use cairn_core::{
//!     BincodeCodec, Codec, KeyedStateBackend, SnapshotOptions, StateAccess,
//!     ValueStateDescriptor,
//! };
//! use cairn_hashmap::HashMapBackend;
//!
//! let key_codec = BincodeCodec::<u64>::new();
//! // Subtask 0 of 2 of an operator with 128 key groups.
//! let mut backend =
//!     HashMapBackend::for_subtask("counter", 128, 2, 0, key_codec.identity().clone())?;
//! let count = backend.register_value(&ValueStateDescriptor::<u64>::new("count"))?;
//! for key in 0u64..100 {
//!     let bytes = key_codec.encode_to_vec(&key).unwrap();
//!     if backend.set_current_key(&bytes).is_err() {
//!         continue; // another subtask's key
//!     }
//!     let n = backend.value(&count).get()?.unwrap_or(0);
//!     backend.value(&count).update(n + 1)?;
//! }
//! // The synchronous phase: O(key groups × shards), whatever the number of entries. Its
//! // asynchronous phase (`run`) writes the file on another thread.
//! let _async_phase = backend.snapshot(SnapshotOptions::incremental_checkpoint(1))?;
//! # Ok::<(), cairn_core::StateError>(())
//! ```
//!
//! ## Design
//!
//! - **Lookup.** `set_current_key` copies the key into a reused buffer and computes its key
//!   group (`cairn_core::key_group_for_key`) and a 64-bit in-memory hash (foldhash, fixed
//!   seed). Each state keeps, per key group and shard, a `hashbrown::HashTable` of
//!   `(key bytes, namespace, value)` probed with that precomputed hash: one probe and one
//!   `memcmp` per access.
//! - **Copy-on-write snapshots.** Each state has about 4096 shards (independent of the
//!   number of entries). The live table owns its shards and writes them without atomic
//!   operations; the synchronous phase moves every non-empty shard into an `Arc` shared with
//!   the snapshot. The first write to a shared shard takes it back, cloning that shard alone
//!   if the snapshot still holds it, so a snapshot never sees later changes. (An earlier
//!   version kept every shard in an `Arc` and used `Arc::make_mut` on each write: the locked
//!   instruction serialized the hot loop and cost a factor of 2 to 3.)
//! - **Canonical files.** The asynchronous phase encodes each key group's entries with the
//!   descriptors' codecs, sorts them in file order and writes one state file: in the private
//!   area for full snapshots and savepoints, in the shared area for incremental checkpoints.
//! - **Incremental checkpoints** write only the key groups changed since the last completed
//!   checkpoint and reference the others in earlier shared files (see the `snapshot`
//!   module's docs for the rules on pending, completed and aborted checkpoints).
//! - **Restore** reads each referenced file once, keeps the entries of the owned key groups
//!   as bytes until their state is registered (checking kind and codec identities), and
//!   carries states that are never registered through later snapshots unchanged.
//!
//! Why a fixed hash seed? The in-memory hash never leaves the process; a fixed seed makes
//! performance reproducible run to run. Keys that collide on purpose degrade one shard of
//! one key group, as they would in Flink's heap backend.

mod backend;
mod encode;
mod error;
mod ops;
mod restore;
mod snapshot;
mod state;
mod table;

pub use backend::{HashMapBackend, HashMapConfig};
pub use error::HashMapError;
