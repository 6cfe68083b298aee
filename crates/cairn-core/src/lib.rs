//! # cairn-core — the state API
//!
//! The contracts every Cairn crate builds on: the keyed state kinds (value, list, map,
//! reducing, aggregating) and their descriptors, codecs with stored identities, key groups,
//! operator state with its redistribution, the [`KeyedStateBackend`] trait with its two-phase
//! snapshot, and the snapshot handles that manifests record. Nothing here does I/O: backends
//! write through [`SnapshotTarget`] and read through [`SnapshotSource`], which
//! `cairn-storage` implements. The byte-level format is specified in `format-spec/`.
//!
//! ```
//! use cairn_core::{key_group_for_key, KeyGroupRange, ValueStateDescriptor};
//!
//! // Subtask 1 of 3 owns key groups 43..86 of the default 128.
//! let range = KeyGroupRange::for_subtask(128, 3, 1).unwrap();
//! assert_eq!((range.start, range.end), (43, 86));
//! // A key's group comes from its serialized bytes, identically for every backend.
//! let kg = key_group_for_key(b"hello", 128);
//! assert!(kg < 128);
//! // A descriptor names a state and carries its codecs.
//! let count = ValueStateDescriptor::<u64>::new("count");
//! assert_eq!(count.meta().value.type_name, "u64");
//! ```
//!
//! ## Why typed state and generic backend methods?
//!
//! The heap backend keeps values as Rust values and updates them in place, with no
//! serialization on the hot path; RocksDB works on bytes. A trait with generic methods
//! (`value_get::<V, N>`) lets both implement the same API at full speed; the price is that
//! the trait is not object-safe, so the runtime is generic over its backend.

mod backend;
mod codec;
mod error;
mod evolve;
mod keygroup;
mod operator;
mod prefetch;
mod snapshot;
mod state;
mod ttl;

pub use backend::{
    Aggregating, AsyncSnapshot, KeyedStateBackend, List, Map, Reducing, StateAccess, Value,
};
pub use codec::{
    trace_schema, BincodeCodec, Codec, CodecError, CodecIdentity, Compatibility, BINCODE_V1,
    MAX_DECODED_VALUE_LEN,
};
pub use error::{BoxError, Result, StateError};
pub use evolve::EvolvingCodec;
pub use keygroup::{
    check_backend_range, check_parallelism, key_group_for_key, murmur3_32, subtask_for_key_group,
    KeyGroup, KeyGroupRange, DEFAULT_MAX_PARALLELISM, MAX_MAX_PARALLELISM,
};
pub use operator::{
    redistribute, OperatorListStateDescriptor, OperatorListStateId, OperatorStateBackend,
    RESERVED_STATE_PREFIX,
};
pub use prefetch::{PrefetchHints, StateIndexes};
pub use snapshot::{
    is_valid_file_name, restore_metas, CancelToken, CanonicalFile, ChangelogSegment, FileArea,
    FileRef, KeyedData, KeyedStateHandle, NativeFile, OperatorStateSnapshot, Redistribution,
    SavepointFormat, SnapshotOptions, SnapshotSource, SnapshotTarget, SnapshotType,
};
pub use state::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateId, CodecRef, CodecVerdicts,
    ListStateDescriptor, ListStateId, MapStateDescriptor, MapStateId, MergingAggregateFunction,
    Namespace, RawStateId, ReduceFn, ReducingStateDescriptor, ReducingStateId, StateKind,
    StateMeta, StateMigration, StateValue, UserKey, ValueStateDescriptor, ValueStateId,
    VoidNamespace,
};
pub use ttl::{
    ttl_stamp_of, IncrementalCleanup, ManualClock, StateTtlConfig, SystemClock,
    TtlAggregatingAccess, TtlAggregatingStateId, TtlCleanup, TtlClock, TtlCodec, TtlInput,
    TtlListAccess, TtlListStateId, TtlMapAccess, TtlMapStateId, TtlReducingAccess,
    TtlReducingStateId, TtlStateAccess, TtlUpdate, TtlValue, TtlValueAccess, TtlValueStateId,
    TtlVisibility, TTL_ENCODING_PREFIX,
};
