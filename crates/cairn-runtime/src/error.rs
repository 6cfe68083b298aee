//! The runtime's errors.

use cairn_core::StateError;
use cairn_storage::StorageError;

/// What went wrong in a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// State access, snapshot or restore failed in a backend.
    #[error("state error{}: {source}", in_operator(.uid, .source))]
    State {
        /// The operator.
        uid: String,
        /// The cause.
        #[source]
        source: StateError,
    },
    /// Checkpoint storage failed.
    #[error("checkpoint storage: {0}")]
    Storage(#[from] StorageError),
    /// A file could not be read or written.
    #[error("i/o error: {message} path={path}: {source}")]
    Io {
        /// What was being done.
        message: String,
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A source's input cannot be read as records. Reading it again reads the same bytes,
    /// so the job fails at once instead of restarting.
    #[error("bad input {path} at offset {offset}: {reason}")]
    BadInput {
        /// The input file.
        path: String,
        /// Where in the file the bad bytes start.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A user function failed.
    #[error("operator {uid} failed: {message}")]
    User {
        /// The operator.
        uid: String,
        /// What the function said.
        message: String,
    },
    /// A task panicked.
    #[error("task {task} panicked: {message}")]
    Panic {
        /// The task: the uids of its chained operators and its subtask index
        /// (`tokenize -> count subtask 1`), or `driver`.
        task: String,
        /// The panic payload, when it is a string.
        message: String,
    },
    /// The failure injected by configuration (`fail_at_record`).
    #[error("injected failure after {records} source records")]
    InjectedFailure {
        /// Records read by the sources when it fired.
        records: u64,
    },
    /// The job configuration or graph is invalid.
    #[error("invalid job: {0}")]
    Config(String),
    /// Restoring the job from a snapshot failed.
    #[error("restore failed: {reason}")]
    Restore {
        /// Why, naming the snapshot, uid and state.
        reason: String,
    },
    /// A savepoint asked for through a [`crate::JobHandle`] was not taken.
    #[error("no savepoint: {reason}")]
    Savepoint {
        /// Why (naming the savepoint when it had begun).
        reason: String,
    },
    /// A stop-with-savepoint whose savepoint is complete, but the job failed before it ended
    /// (a sink's commit on the savepoint's completion, say). The job does not restart. The
    /// savepoint is consistent: a job restored from it commits what it holds. Both the
    /// caller of [`crate::JobHandle::stop_with_savepoint`] and the job's end get this error,
    /// with the same source.
    #[error("the savepoint {savepoint} is complete, but the job failed while stopping: {source}; restore from the savepoint to commit what it holds")]
    StopFailed {
        /// The savepoint's path.
        savepoint: String,
        /// The failure.
        #[source]
        source: std::sync::Arc<RuntimeError>,
    },
    /// A checkpoint could not be completed.
    #[error("checkpoint {checkpoint_id} failed: {reason}")]
    Checkpoint {
        /// The checkpoint id.
        checkpoint_id: u64,
        /// Why.
        reason: String,
    },
    /// The job failed more often than its restart strategy allows.
    #[error("job failed after {restarts} restarts: {last}")]
    RestartsExhausted {
        /// How many restarts were made.
        restarts: u32,
        /// The last failure.
        #[source]
        last: Box<RuntimeError>,
    },
    /// The task was cancelled (the job is being torn down); not a failure in itself.
    #[error("cancelled")]
    Cancelled,
}

impl RuntimeError {
    /// A user function's failure in operator `uid`.
    pub fn user(uid: impl Into<String>, message: impl std::fmt::Display) -> Self {
        RuntimeError::User {
            uid: uid.into(),
            message: message.to_string(),
        }
    }

    /// Names the operator in a state error raised by a user function with `?`.
    pub(crate) fn with_uid(self, uid: &str) -> Self {
        match self {
            RuntimeError::State { uid: u, source } if u.is_empty() => RuntimeError::State {
                uid: uid.to_string(),
                source,
            },
            other => other,
        }
    }

    /// A state registration that contradicts the restored state (another type, kind or
    /// redistribution mode, a schema the codec cannot read or migrate, a stored value that
    /// does not decode or convert) is a restore that cannot work: no restart cures it, so
    /// it is a restore error, which fails the job at once. A reserved operator state name is
    /// a configuration error, which fails it at once too.
    pub(crate) fn registration(self) -> Self {
        match self {
            RuntimeError::State { uid, source } if cannot_restore(&source) => {
                RuntimeError::Restore {
                    reason: match in_operator(&uid, &source) {
                        named if named.is_empty() => source.to_string(),
                        _ => format!("operator {uid}: {source}"),
                    },
                }
            }
            // A name no run may use: the job's program is wrong, and no restart cures it.
            RuntimeError::State {
                source: source @ StateError::ReservedName { .. },
                ..
            } => RuntimeError::Config(source.to_string()),
            other => other,
        }
    }

    /// Whether no restart can cure this error, so the job fails at once: a restore that
    /// cannot work, a configuration or input the job cannot use, and a state that a
    /// registration finds unreadable in the restored snapshot, whenever the function
    /// registers it (in `open`, or lazily while processing, as Flink's `getState` in
    /// `processElement`): another kind or codec, a key part that would migrate, a value
    /// its migration refuses.
    pub(crate) fn is_fatal(&self) -> bool {
        match self {
            RuntimeError::Restore { .. }
            | RuntimeError::Config(_)
            | RuntimeError::BadInput { .. } => true,
            RuntimeError::State { source, .. } => unreadable_restored(source),
            _ => false,
        }
    }

    pub(crate) fn state(uid: &str, source: StateError) -> Self {
        RuntimeError::State {
            uid: uid.to_string(),
            source,
        }
    }

    pub(crate) fn io(
        message: impl Into<String>,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        RuntimeError::Io {
            message: message.into(),
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// What a state error says about the restored state, looking through the context layers
/// backends add.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unreadable {
    /// Nothing: another failure (I/O, a lower layer's own).
    No,
    /// Only a registration against a snapshot raises it: another kind or codec, a key part
    /// that would migrate.
    Registration,
    /// A value an [`cairn_core::EvolvingCodec`] could not convert (operation `migrate`).
    Conversion,
    /// A stored value that does not decode.
    Decode,
    /// A restore that cannot work.
    Restore,
}

fn unreadable(e: &StateError) -> Unreadable {
    let codec = |c: &cairn_core::CodecError| match c.op {
        "migrate" => Unreadable::Conversion,
        _ => Unreadable::Decode,
    };
    match e {
        StateError::IncompatibleCodec { .. }
        | StateError::IncompatibleKind { .. }
        | StateError::UnsupportedMigration { .. } => Unreadable::Registration,
        StateError::Codec { source, .. } => codec(source),
        StateError::Restore { .. } => Unreadable::Restore,
        StateError::Layer { source, .. } => match source.downcast_ref::<StateError>() {
            Some(inner) => unreadable(inner),
            None => source
                .downcast_ref::<cairn_core::CodecError>()
                .map_or(Unreadable::No, codec),
        },
        _ => Unreadable::No,
    }
}

/// Whether a registration error (in `open`) says the restored state cannot be read by
/// this program: a value that fails to decode or migrate in some key group is as final as
/// a codec the program declares wrong.
fn cannot_restore(e: &StateError) -> bool {
    unreadable(e) != Unreadable::No
}

/// Whether an error at any point of a run says a restored state cannot be read by the
/// registering program: the errors only a registration against a snapshot raises, and a
/// value an [`cairn_core::EvolvingCodec`] could not convert.
fn unreadable_restored(e: &StateError) -> bool {
    matches!(
        unreadable(e),
        Unreadable::Registration | Unreadable::Conversion
    )
}

/// ` in operator <uid>`, or nothing when `source` names the uid itself (`uid=<uid>` or
/// `operator <uid>`, as the backends' errors do) or the uid is not known: the uid once in
/// every message.
fn in_operator(uid: &str, source: &StateError) -> String {
    if uid.is_empty() || names_uid(&source.to_string(), uid) {
        String::new()
    } else {
        format!(" in operator {uid}")
    }
}

/// Whether `message` holds `uid=<uid>` or `operator <uid>` as a whole field (not the start
/// of a longer uid, nor the end of a longer word).
fn names_uid(message: &str, uid: &str) -> bool {
    [format!("uid={uid}"), format!("operator {uid}")]
        .iter()
        .any(|field| {
            message.match_indices(field.as_str()).any(|(at, _)| {
                let whole_start = message[..at]
                    .chars()
                    .next_back()
                    .is_none_or(|c| !c.is_alphanumeric() && c != '_');
                let whole_end = message[at + field.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| c.is_whitespace() || matches!(c, ',' | ';' | ')' | ']' | ':'));
                whole_start && whole_end
            })
        })
}

/// A state error from a user function; the operator fills in its uid.
impl From<StateError> for RuntimeError {
    fn from(source: StateError) -> Self {
        RuntimeError::State {
            uid: String::new(),
            source,
        }
    }
}

/// The runtime's result type.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Adds the operator uid to a state error.
pub(crate) trait StateResultExt<T> {
    fn in_op(self, uid: &str) -> Result<T>;
}

impl<T> StateResultExt<T> for std::result::Result<T, StateError> {
    fn in_op(self, uid: &str) -> Result<T> {
        self.map_err(|e| RuntimeError::state(uid, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore(reason: &str) -> StateError {
        StateError::Restore {
            reason: reason.into(),
        }
    }

    #[test]
    fn a_state_error_names_its_operator_once() {
        let named = RuntimeError::state("count", restore("bad file uid=count state=n"));
        assert_eq!(
            named.to_string(),
            "state error: cannot restore: bad file uid=count state=n"
        );
        let phrased = RuntimeError::state("count", restore("state n of operator count: x"));
        assert_eq!(
            phrased.to_string(),
            "state error: cannot restore: state n of operator count: x"
        );
        // Another operator's uid, or a longer one that starts with this uid, is not it.
        for other in [
            "bad file uid=count2",
            "bad file uid=counter",
            "my_operator count",
        ] {
            assert_eq!(
                RuntimeError::state("count", restore(other)).to_string(),
                format!("state error in operator count: cannot restore: {other}")
            );
        }
        assert_eq!(
            RuntimeError::state("", restore("x")).to_string(),
            "state error: cannot restore: x"
        );
        let registration = RuntimeError::state("count", restore("uid=count")).registration();
        assert_eq!(
            registration.to_string(),
            "restore failed: cannot restore: uid=count"
        );
        let registration = RuntimeError::state("count", restore("gone")).registration();
        assert_eq!(
            registration.to_string(),
            "restore failed: operator count: cannot restore: gone"
        );
    }

    #[test]
    fn a_value_that_cannot_be_read_or_migrated_fails_the_restore_not_the_run() {
        let codec = || StateError::Codec {
            state: "n".into(),
            source: cairn_core::CodecError {
                codec: "Count@v2".into(),
                op: "migrate",
                detail: "refused".into(),
            },
        };
        let layered = StateError::layer(
            "restoring uid=count state=n",
            StateError::layer("key_group=3", codec()),
        );
        assert!(matches!(
            RuntimeError::state("count", layered).registration(),
            RuntimeError::Restore { .. }
        ));
        assert!(matches!(
            RuntimeError::state("count", codec()).registration(),
            RuntimeError::Restore { .. }
        ));
        // A lower layer's own failure (an I/O error) may be cured by a restart.
        let io = StateError::layer(
            "rewriting uid=count state=n",
            std::io::Error::other("disk full"),
        );
        assert!(matches!(
            RuntimeError::state("count", io).registration(),
            RuntimeError::State { .. }
        ));
    }
}
