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
    /// More materializations failed in a row than
    /// [`crate::ChangelogOptions::max_materialization_failures`] allows.
    #[error("{failures} materializations failed in a row, {allowed} allowed; the last: {last} uid={uid}")]
    MaterializationFailures {
        /// The operator.
        uid: String,
        /// Failures in a row.
        failures: u32,
        /// The limit.
        allowed: u32,
        /// The last failure's message.
        last: String,
    },
    /// The segments of a handle leave a gap (or an overlap) in the sequence numbers: a
    /// segment is missing from the handle (or listed twice), so replaying it would give
    /// wrong state.
    #[error("changelog segments are not contiguous: records are missing or repeated between them path={path} previous={previous} expected_first_sqn={expected_first_sqn} first_sqn={first_sqn}")]
    SequenceGap {
        /// The segment after the gap.
        path: String,
        /// The segment before it.
        previous: String,
        /// The sequence number that should follow the previous segment.
        expected_first_sqn: u64,
        /// The first sequence number of the segment after the gap.
        first_sqn: u64,
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
    /// Replaying a restored state's changelog records failed when the program registered
    /// it (a record that does not decode, a conversion of an older schema that refused a
    /// value): the state holds only part of its records, so the backend takes no snapshot
    /// any more; the task must fail and restore again.
    #[error("replaying the changelog of a restored state failed, the state is incomplete and no snapshot can be taken: {message} uid={uid} state={state}")]
    ReplayFailed {
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// The replay's error.
        message: String,
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
