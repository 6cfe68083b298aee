//! The error type of the State Processor API.

use cairn_core::{Redistribution, StateError};
use cairn_storage::StorageError;

/// Errors of reading, writing and transforming savepoints.
///
/// Messages are lowercase; they name what is wrong in words and end with the identifiers a
/// user needs (`uid=`, `state=`, `path=` of the snapshot, and the file where one is at
/// fault: a damaged file's path is in the message of the error it wraps).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateProcessorError {
    /// The snapshot could not be opened: no manifest there, a damaged or newer manifest,
    /// or a directory that is no snapshot.
    #[error("cannot open the snapshot: {source} path={path}")]
    Open {
        /// The path of the snapshot's manifest (`<dir>/_metadata`).
        path: String,
        /// What the storage said (it names the manifest's path).
        #[source]
        source: Box<StorageError>,
    },
    /// The snapshot (or the savepoint being written) has no operator with this uid.
    #[error("operator {uid} is not in {snapshot}; it has: {available}")]
    UnknownOperator {
        /// The uid asked for.
        uid: String,
        /// `savepoint <path>`, `checkpoint <path>` or `the savepoint being written`.
        snapshot: String,
        /// The uids it has, comma-separated (`(none)` when empty).
        available: String,
    },
    /// The operator has no keyed (or operator) state with this name.
    #[error("operator {uid} in {snapshot} has no {what} state {state}; it has: {available}")]
    UnknownState {
        /// The operator uid.
        uid: String,
        /// The state name asked for.
        state: String,
        /// `keyed` or `operator`.
        what: &'static str,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// The names of that kind of state it has, comma-separated (`(none)` when empty).
        available: String,
    },
    /// A descriptor does not match what the snapshot stored: another kind, or another
    /// codec identity. The source names both sides.
    #[error(
        "the descriptor of state {state} of operator {uid} does not match {snapshot}: {source}"
    )]
    Incompatible {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// `StateError::IncompatibleCodec` or `StateError::IncompatibleKind`, naming the
        /// stored and the expected identity.
        #[source]
        source: Box<StateError>,
    },
    /// The key codec given does not have the stored identity.
    #[error("the key codec of operator {uid} does not match {snapshot}: stored {stored}, given {expected}")]
    KeyCodec {
        /// The operator uid.
        uid: String,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// The stored key codec.
        stored: Box<cairn_core::CodecIdentity>,
        /// The key codec given.
        expected: Box<cairn_core::CodecIdentity>,
    },
    /// An operator state is stored with another redistribution mode than the descriptor's.
    #[error("operator state {state} of operator {uid} in {snapshot} is stored as {stored:?} state but the descriptor says {expected:?}")]
    ModeMismatch {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// The stored mode.
        stored: Redistribution,
        /// The descriptor's mode.
        expected: Redistribution,
    },
    /// The operator's keyed state is in a form this crate does not read (a native RocksDB
    /// savepoint, changelog data); the reason says what to do instead.
    #[error("the keyed state of operator {uid} in {snapshot} cannot be processed: {reason}")]
    Unsupported {
        /// The operator uid.
        uid: String,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// Why, and the way out.
        reason: String,
    },
    /// Reading state from the snapshot failed: a damaged or missing file (the source names
    /// the file), or a value that does not decode.
    #[error("cannot read {what} of operator {uid} from {snapshot}: {source}")]
    Read {
        /// The operator uid.
        uid: String,
        /// What was being read (`keyed state`, `keyed state count`, `operator state next`).
        what: String,
        /// `savepoint <path>` or `checkpoint <path>`.
        snapshot: String,
        /// The underlying error (a storage error names the file's path).
        #[source]
        source: Box<StateError>,
    },
    /// A maximum parallelism outside `1..=32768`.
    #[error("invalid max parallelism {max_parallelism}: it must be in 1..=32768")]
    InvalidMaxParallelism {
        /// The value given.
        max_parallelism: u32,
    },
    /// An operator's parallelism outside `1..=max_parallelism`.
    #[error("invalid parallelism {parallelism} for operator {uid}: it must be in 1..={max_parallelism}, the savepoint's max parallelism")]
    InvalidParallelism {
        /// The operator uid.
        uid: String,
        /// The parallelism given.
        parallelism: u32,
        /// The savepoint's max parallelism.
        max_parallelism: u32,
    },
    /// An operator uid that cannot be used.
    #[error("invalid operator uid {uid:?}: {reason}")]
    InvalidUid {
        /// The uid given.
        uid: String,
        /// Why.
        reason: &'static str,
    },
    /// An operator is added (or a uid renamed to one) that the savepoint being written
    /// already has.
    #[error("operator {uid} is already in the savepoint being written ({origin}): remove it or change its uid first")]
    DuplicateOperator {
        /// The uid.
        uid: String,
        /// Where the operator that has it came from (`from savepoint <path>`, `bootstrapped
        /// keyed state`, `bootstrapped operator state`).
        origin: String,
    },
    /// The same operator state of one operator is bootstrapped twice.
    #[error("operator state {state} of operator {uid} is bootstrapped twice")]
    DuplicateState {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
    },
    /// Parts of one new operator are bootstrapped at different parallelisms.
    #[error("operator {uid} is bootstrapped at parallelism {existing} already, not {parallelism}")]
    ParallelismMismatch {
        /// The operator uid.
        uid: String,
        /// The parallelism it has.
        existing: u32,
        /// The parallelism given now.
        parallelism: u32,
    },
    /// A bootstrap function (or the backend it wrote to) failed.
    #[error("bootstrapping operator {uid} failed: {source}")]
    Bootstrap {
        /// The operator uid.
        uid: String,
        /// What failed.
        #[source]
        source: Box<StateError>,
    },
    /// The target path already holds a savepoint; a savepoint is never written over.
    #[error("a savepoint already exists there; write to a new path path={path}")]
    SavepointExists {
        /// The target path.
        path: String,
    },
    /// Writing the savepoint failed (nothing was published: the files written are
    /// deleted).
    #[error("cannot write the savepoint: {source} path={path}")]
    Write {
        /// The target path.
        path: String,
        /// What failed (a storage error names the file).
        #[source]
        source: Box<StateError>,
    },
}

/// Result alias of the State Processor API.
pub type Result<T, E = StateProcessorError> = std::result::Result<T, E>;

/// `a, b, c`, or `(none)`.
pub(crate) fn list_names<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let joined = names.into_iter().collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        "(none)".to_string()
    } else {
        joined
    }
}
