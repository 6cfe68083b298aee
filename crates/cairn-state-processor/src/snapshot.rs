//! Opening an existing snapshot: a savepoint directory, or a checkpoint (`…/chk-<id>`), by
//! its directory or its `_metadata`, as the runtime's `RestoreFrom::Path` does.

use std::sync::Arc;

use cairn_core::SnapshotSource;
use cairn_format::{Manifest, MANIFEST_FILE_NAME};

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
    cairn_storage::snapshot_dir(path)
}

/// Opens the savepoint or checkpoint at `path` ([`cairn_storage::open_snapshot`]: a
/// savepoint in a directory named like a checkpoint's opens as the savepoint it is).
pub(crate) fn open(path: &str) -> Result<Opened> {
    let dir = dir_of(path);
    let opened = cairn_storage::open_snapshot(dir).map_err(|source| StateProcessorError::Open {
        path: format!("{dir}/{MANIFEST_FILE_NAME}"),
        source: Box::new(source),
    })?;
    Ok(Opened {
        path: opened.dir.clone(),
        description: opened.description(),
        manifest: opened.manifest,
        source: Arc::from(opened.source),
        job_dir: opened.job_dir,
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
