//! Opening an existing snapshot: a savepoint directory, or a checkpoint (`…/chk-<id>`), by
//! its directory or its `_metadata`, as the runtime's `RestoreFrom::Path` does.

use std::sync::Arc;

use cairn_core::{SnapshotSource, SnapshotType};
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
    /// A checkpoint's job directory (the parent of `chk-<id>`, holding `shared/`), as
    /// given; `None` for a savepoint.
    pub(crate) job_dir: Option<String>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("path", &self.path)
            .field("checkpoint_id", &self.manifest.checkpoint_id)
            .finish_non_exhaustive()
    }
}

/// The directory of the snapshot at `path`: `path` without a trailing `/` or `/_metadata`.
pub(crate) fn dir_of(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    trimmed
        .strip_suffix(MANIFEST_FILE_NAME)
        .filter(|d| d.ends_with('/'))
        .map_or(trimmed, |d| d.trim_end_matches('/'))
}

/// Opens the savepoint or checkpoint at `path`.
pub(crate) fn open(path: &str) -> Result<Opened> {
    let dir = dir_of(path);
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
        let job_dir = if parent.is_empty() { "/" } else { parent };
        let storage = CheckpointStorage::open_existing(job_dir)?;
        match storage.load(id) {
            Ok(manifest) => {
                let source = storage.source(id);
                return Ok(Opened {
                    path: dir.to_string(),
                    description: format!("checkpoint {dir}"),
                    manifest,
                    source: Arc::new(source),
                    job_dir: Some(job_dir.to_string()),
                });
            }
            // A savepoint in a directory that happens to be named like a checkpoint's (the
            // writer writes to any path): open it as the savepoint it is, as `state-dump`
            // does.
            Err(StorageError::ManifestMismatch {
                found_type: SnapshotType::Savepoint,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    let (manifest, source) = open_savepoint(dir)?;
    Ok(Opened {
        path: dir.to_string(),
        description: format!("savepoint {dir}"),
        manifest,
        source: Arc::new(source),
        job_dir: None,
    })
}

/// Whether `a` and `b` name the same directory: the same text (but for trailing `/`), or
/// local paths that resolve to the same existing directory.
pub(crate) fn same_dir(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    if a == b {
        return true;
    }
    let local = |p: &str| -> Option<std::path::PathBuf> {
        let p = p.strip_prefix("file://").unwrap_or(p);
        if p.contains("://") {
            return None;
        }
        std::fs::canonicalize(if p.is_empty() { "/" } else { p }).ok()
    };
    matches!((local(a), local(b)), (Some(a), Some(b)) if a == b)
}
