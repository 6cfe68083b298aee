//! The error type of the state API.

use crate::codec::{CodecError, CodecIdentity};
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::state::StateKind;

/// A boxed error from another layer (format, storage), kept as the source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the state API and of every backend behind it.
///
/// Messages are lowercase; the identifiers a user needs to act come last as `key=value`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A parallelism setting is out of range.
    #[error(
        "invalid parallelism: {reason} parallelism={parallelism} max_parallelism={max_parallelism}"
    )]
    InvalidParallelism {
        /// The requested parallelism.
        parallelism: u32,
        /// The requested maximum parallelism.
        max_parallelism: u32,
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A state was accessed before a current key was set.
    #[error("no current key set state={state}")]
    NoCurrentKey {
        /// The state that was accessed.
        state: String,
    },
    /// The current key belongs to a key group this backend does not own.
    #[error("key group {key_group} is outside this backend's range {range}")]
    KeyGroupOutOfRange {
        /// The key's group.
        key_group: KeyGroup,
        /// The backend's key-group range.
        range: KeyGroupRange,
    },
    /// A value could not be encoded or decoded.
    #[error("state {state}: {source}")]
    Codec {
        /// The state whose value failed.
        state: String,
        /// The codec failure.
        #[source]
        source: CodecError,
    },
    /// A state is registered twice with different kinds or codecs, or a handle is used with
    /// the wrong type.
    #[error("state {state} is registered as {registered:?} but used as {requested:?}")]
    KindMismatch {
        /// The state name.
        state: String,
        /// What was registered first.
        registered: StateKind,
        /// What was asked for now.
        requested: StateKind,
    },
    /// A handle does not belong to this backend.
    #[error("unknown state handle index={index}")]
    UnknownState {
        /// The handle's index.
        index: u32,
    },
    /// The codec a program registers does not match the codec stored in a snapshot.
    #[error("incompatible {part} codec for state {state} of operator {uid}: stored {stored}, registered {expected}")]
    IncompatibleCodec {
        /// The operator uid (empty when the backend is not told it).
        uid: String,
        /// The state name.
        state: String,
        /// Which codec: `key`, `namespace`, `value` or `user key`.
        part: &'static str,
        /// What the snapshot says.
        stored: Box<CodecIdentity>,
        /// What the program registers.
        expected: Box<CodecIdentity>,
    },
    /// A program's codec would migrate a part of a restored state that is compared as
    /// bytes (a namespace or a map's user keys): only values (list elements, map values,
    /// accumulators) migrate, as in Flink.
    #[error("state {state} of operator {uid} cannot migrate its {part} codec (namespaces and map keys are read only as is): stored {stored}, registered {expected}")]
    UnsupportedMigration {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// Which codec: `namespace` or `user key`.
        part: &'static str,
        /// What the snapshot says.
        stored: Box<CodecIdentity>,
        /// What the program registers.
        expected: Box<CodecIdentity>,
    },
    /// A restored state has another kind than the descriptor registered now.
    #[error("state {state} of operator {uid} was {stored:?} in the snapshot but is registered as {expected:?}")]
    IncompatibleKind {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// Kind in the snapshot.
        stored: StateKind,
        /// Kind registered now.
        expected: StateKind,
    },
    /// An operator state name in the prefix the runtime reserves for its own operator
    /// states ([`crate::RESERVED_STATE_PREFIX`]).
    #[error("operator state name {state} of operator {uid} is reserved: names starting with {prefix:?} are the runtime's")]
    ReservedName {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// The reserved prefix.
        prefix: &'static str,
    },
    /// A state's TTL settings are not usable.
    #[error("invalid time to live: {reason} state={state}")]
    InvalidTtl {
        /// The state name.
        state: String,
        /// Which rule was broken.
        reason: &'static str,
    },
    /// A snapshot handle cannot be restored by this backend.
    #[error("cannot restore: {reason}")]
    Restore {
        /// Why.
        reason: String,
    },
    /// An asynchronous snapshot phase was cancelled.
    #[error("snapshot cancelled checkpoint_id={checkpoint_id}")]
    Cancelled {
        /// The snapshot's checkpoint id.
        checkpoint_id: u64,
    },
    /// A failure in a lower layer (format, storage), with what was being done.
    #[error("{context}: {source}")]
    Layer {
        /// What was being done, with identifiers (`writing state file path=…`).
        context: String,
        /// The lower layer's error.
        #[source]
        source: BoxError,
    },
}

impl StateError {
    /// Wraps a lower layer's error with context.
    pub fn layer(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        StateError::Layer {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Result alias of the state API.
pub type Result<T, E = StateError> = std::result::Result<T, E>;
