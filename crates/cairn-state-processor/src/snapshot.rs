//! Opening an existing snapshot: a savepoint directory, or a checkpoint (`…/chk-<id>`), by
//! its directory or its `_metadata`, as the runtime's `RestoreFrom::Path` does.

use std::sync::Arc;

use cairn_core::SnapshotSource;
use cairn_format::{Manifest, MANIFEST_FILE_NAME};
use cairn_storage::{open_savepoint, CheckpointStorage, StorageError};

use crate::error::{Result, StateProcessorError};

/// An opened snapshot: its manifest and a source for its files.
#[derive(Clone)]
pub(crate) struct Opened {
    /// The path as given, without a trailing `/` or `/_metadata`.
    pub(crate) path: String,
    /// `savepoint <path>` or `checkpoint <path>`, for messages.
    pub(crate) description: String,
    pub(crate) manifest: Manifest,
    pub(crate) source: Arc<dyn SnapshotSource>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("path", &self.path)
            .field("checkpoint_id", &self.manifest.checkpoint_id)
            .finish_non_exhaustive()
    }
}

/// Opens the savepoint or checkpoint at `path`.
pub(crate) fn open(path: &str) -> Result<Opened> {
    let trimmed = path.trim_end_matches('/');
    let dir = trimmed
        .strip_suffix(MANIFEST_FILE_NAME)
        .filter(|d| d.ends_with('/'))
        .map_or(trimmed, |d| d.trim_end_matches('/'));
    open_dir(dir).map_err(|source| StateProcessorError::Open {
        path: format!("{dir}/{MANIFEST_FILE_NAME}"),
        source: Box::new(source),
    })
}

fn open_dir(dir: &str) -> Result<Opened, StorageError> {
    let (parent, last) = match dir.rsplit_once('/') {
        Some((p, l)) => (p, l),
        None => (".", dir),
    };
    if let Some(id) = last
        .strip_prefix("chk-")
        .and_then(|s| s.parse::<u64>().ok())
    {
        let storage =
            CheckpointStorage::open_existing(if parent.is_empty() { "/" } else { parent })?;
        let manifest = storage.load(id)?;
        let source = storage.source(id);
        return Ok(Opened {
            path: dir.to_string(),
            description: format!("checkpoint {dir}"),
            manifest,
            source: Arc::new(source),
        });
    }
    let (manifest, source) = open_savepoint(dir)?;
    Ok(Opened {
        path: dir.to_string(),
        description: format!("savepoint {dir}"),
        manifest,
        source: Arc::new(source),
    })
}
