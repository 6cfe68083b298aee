//! The changelog backend's own errors, carried as the source of a
//! [`cairn_core::StateError::Layer`] where no `StateError` variant fits.

/// Errors specific to the changelog backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangelogError {
    /// A changelog segment does not match what the handle says about it.
    #[error("changelog segment does not match its handle: {detail} path={path}")]
    SegmentMismatch {
        /// The segment file.
        path: String,
        /// What differs.
        detail: String,
    },
    /// A segment record names a state the handle does not describe, or with another kind.
    #[error("changelog record for an unknown state: {detail} path={path} state={state}")]
    UnknownState {
        /// The segment file.
        path: String,
        /// The state name.
        state: String,
        /// What was wrong.
        detail: String,
    },
    /// A savepoint or full checkpoint was requested while a restored state that the
    /// program has not registered still has changelog records to replay.
    #[error("restored state has unreplayed changelog records and is not registered; register it before a savepoint or full checkpoint uid={uid} state={state}")]
    UnreplayedState {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
    },
    /// A background upload or materialization failed (the message is the cause's).
    #[error("changelog {what} failed: {message} uid={uid}")]
    Background {
        /// `segment upload` or `materialization`.
        what: &'static str,
        /// The operator uid.
        uid: String,
        /// The cause.
        message: String,
    },
    /// A typed state handle was used with types it was not registered with.
    #[error("state {state} is registered with other rust types uid={uid}")]
    TypeMismatch {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
    },
}
