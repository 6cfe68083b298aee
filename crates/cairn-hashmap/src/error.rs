//! The heap backend's own errors. The trait returns [`StateError`]; these are wrapped as
//! its source with [`StateError::layer`] where no `StateError` variant fits.

use cairn_core::{KeyGroup, StateError};

/// Errors specific to the heap backend, carried as the source of a [`StateError::Layer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HashMapError {
    /// A state is used with other Rust types than it was registered with (the kind and the
    /// codec identities match, the types do not).
    #[error("state {state} is registered with other rust types: registered {registered}, requested {requested}")]
    TypeMismatch {
        /// The state name.
        state: String,
        /// The types it was registered with.
        registered: &'static str,
        /// The types it is used with now.
        requested: &'static str,
    },
    /// A snapshot's entries do not agree with its handle or with the key-group function.
    #[error("corrupt snapshot: {detail} path={path}")]
    Corrupt {
        /// The state file.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// An entry's key group is not the one its key hashes to.
    #[error(
        "entry in key group {stored} has a key of key group {computed} path={path} state={state}"
    )]
    WrongKeyGroup {
        /// The state file.
        path: String,
        /// The state name.
        state: String,
        /// The key group the file stores the entry under.
        stored: KeyGroup,
        /// The key group of the entry's key.
        computed: KeyGroup,
    },
    /// A broken internal invariant (a bug, reported instead of a panic).
    #[error("internal error: {detail}")]
    Internal {
        /// What was wrong.
        detail: String,
    },
}

impl HashMapError {
    pub(crate) fn into_state(self, context: impl Into<String>) -> StateError {
        StateError::layer(context, self)
    }
}

/// An internal invariant failed.
pub(crate) fn internal(detail: impl Into<String>) -> StateError {
    HashMapError::Internal {
        detail: detail.into(),
    }
    .into_state("heap backend")
}
