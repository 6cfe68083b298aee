//! # cairn-state-processor — read, write and transform savepoints offline
//!
//! Cairn's State Processor API, after Flink's: [`SavepointReader`] inspects a savepoint
//! and reads its keyed and operator state, typed by the descriptors the job registers;
//! [`SavepointWriter`] writes a new savepoint, from nothing or from an existing one, with
//! operators removed ([`SavepointWriter::remove_operator`]), renamed
//! ([`SavepointWriter::change_uid`], Flink's `changeOperatorIdentifier`) or bootstrapped
//! from data ([`SavepointWriter::with_keyed_operator`] with a
//! [`KeyedStateBootstrapFunction`], [`SavepointWriter::with_operator_state`]). What it
//! writes is a canonical savepoint as the runtime writes it (`format-spec/README.md`):
//! a job restores it under either backend, at any parallelism up to its max parallelism.
//!
//! ```
//! use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
//! use cairn_state_processor::{KeyedStateBootstrapFunction, SavepointReader, SavepointWriter};
//!
//! /// The runtime's `Count` keeps a `ValueState<u64>` named `count` per key.
//! struct Counts;
//!
//! impl KeyedStateBootstrapFunction for Counts {
//!     type Key = String;
//!     type In = (String, u64);
//!     type States = ValueStateId<u64, ()>;
//!
//!     fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
//!         b.register_value(&ValueStateDescriptor::<u64>::new("count"))
//!     }
//!
//!     fn process<B: KeyedStateBackend>(
//!         &mut self,
//!         count: &Self::States,
//!         _word: &String,
//!         (_, n): (String, u64),
//!         b: &mut B,
//!     ) -> cairn_core::Result<()> {
//!         b.value_update(*count, &(), n)
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("sp-1").display().to_string();
//!
//! // Bootstrap the state of a word count's `count` operator at parallelism 2.
//! let words = vec![("cairn".to_string(), 3), ("flink".to_string(), 5)];
//! let mut writer = SavepointWriter::new(128)?;
//! writer.with_keyed_operator("count", 2, words, |(w, _)| w.clone(), Counts)?;
//! writer.write(&path)?;
//!
//! // Read it back with the job's descriptor.
//! let reader = SavepointReader::open(&path)?;
//! assert_eq!(reader.operator("count")?.parallelism, 2);
//! let mut counts = reader
//!     .keyed_state::<String>("count")?
//!     .values(&ValueStateDescriptor::<u64>::new("count"))?;
//! counts.sort();
//! assert_eq!(counts, [("cairn".to_string(), 3), ("flink".to_string(), 5)]);
//! # Ok(())
//! # }
//! ```
//!
//! A job restores it as any savepoint (`JobConfig::restore = Some(RestoreFrom::Path(path))`
//! in `cairn-runtime`), and its `count` operator goes on counting from 3 and 5.
//!
//! ## Design
//!
//! - **Reading keyed state** restores every subtask's part of an operator into one
//!   `cairn_hashmap::HashMapBackend` that owns every key group, then lists the keys of a
//!   state with `KeyedStateBackend::keys` and reads each: the state is decoded by the
//!   backend the runtime uses, with the descriptor's codecs, after its kind and codec
//!   identities are checked against the stored ones (a mismatch names both). The whole
//!   operator's state is in memory while it is read: fine for the offline tool this is.
//! - **Bootstrapping keyed state** runs the function in one heap backend per subtask,
//!   each owning that subtask's key-group range, and snapshots them as a savepoint: the
//!   files are the ones a running job writes.
//! - **Existing operators** are carried by copying their files as they are (checked
//!   against their checksums on the way), so state this crate does not decode (native
//!   RocksDB savepoints, namespaced or TTL state, the runtime's own states) goes over
//!   unchanged, and a renamed operator's state is bit for bit the old one.
//! - **Writing** uses `cairn-storage`'s savepoint writer: every file first, then the
//!   manifest, published atomically; a failed write deletes what it wrote.
//!
//! Only canonical keyed state is read (a native RocksDB savepoint is converted with
//! `state-dump convert` first); the read methods cover the void namespace, and
//! [`KeyedStateReader::backend`] gives the backend for the rest.

mod bootstrap;
mod error;
mod keyed;
mod reader;
mod snapshot;
mod writer;

pub use bootstrap::KeyedStateBootstrapFunction;
pub use error::{Result, StateProcessorError};
pub use keyed::{KeyedStateReader, MapEntries};
pub use reader::{OperatorInfo, OperatorStateInfo, SavepointReader};
pub use writer::SavepointWriter;
