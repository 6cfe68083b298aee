//! Resolving a PATH to a snapshot (a checkpoint directory, a savepoint directory or their
//! `_metadata` file; a local path, a `file://` URL or an object-store URL) and reading its
//! files, with errors that name the full path the user knows.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_core::{FileArea, FileRef, KeyedData, KeyedStateHandle, SnapshotType};
use cairn_format::{Manifest, MANIFEST_FILE_NAME};
use cairn_storage::{
    open_savepoint, CheckpointSource, CheckpointStorage, SavepointSource, StorageError,
};

use crate::error::{from_storage, DumpError};

/// An opened checkpoint or savepoint: its manifest and a reader of its files.
#[derive(Debug)]
pub struct Snapshot {
    /// The snapshot's directory as shown to the user.
    pub location: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Where the store's object paths start (the job root or the savepoint directory).
    base: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Checkpoint(CheckpointSource),
    Savepoint(SavepointSource),
}

/// A job's checkpoint directory (`<job>`, holding `chk-<id>/` and `shared/`).
#[derive(Debug)]
pub struct JobRoot {
    /// The directory as shown to the user.
    pub location: String,
    /// The storage over it.
    pub storage: CheckpointStorage,
}

impl JobRoot {
    /// The path the user knows for an object path of the root's store.
    pub fn full(&self, object_path: &str) -> String {
        object_display(&self.location, object_path)
    }

    /// Maps a storage error to one that names full paths.
    pub fn err(&self, e: StorageError) -> DumpError {
        from_storage(e, &|p| self.full(p))
    }

    /// Opens checkpoint `id` of the job, as [`open_snapshot`] opens `<job>/chk-<id>`, but
    /// through this root's storage: one the caller built (`CheckpointStorage::from_store`,
    /// `CheckpointStorage::open_wrapped`) reads its files through that store.
    pub fn checkpoint(&self, id: u64) -> Result<Snapshot, DumpError> {
        let manifest = self.storage.load(id).map_err(|e| self.err(e))?;
        let location = join_display(&self.location, &format!("chk-{id}"));
        Ok(checkpoint_snapshot(
            &self.storage,
            id,
            manifest,
            location,
            &self.location,
        ))
    }
}

/// The path the user knows for an object path of the store opened at `base`. A local
/// store's object paths are relative to its directory; a URL store's (`s3://bucket/prefix`)
/// are keys from the bucket's root, prefix included.
pub(crate) fn object_display(base: &str, object_path: &str) -> String {
    match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.split('/').next().unwrap_or("");
            if object_path.is_empty() || object_path.contains("://") {
                object_path.to_string()
            } else if authority.is_empty() {
                format!("{scheme}:///{object_path}")
            } else {
                format!("{scheme}://{authority}/{object_path}")
            }
        }
        None => join_display(base, object_path),
    }
}

fn join_display(base: &str, object_path: &str) -> String {
    if object_path.starts_with('/') || object_path.contains("://") || object_path.is_empty() {
        return object_path.to_string();
    }
    format!("{}/{object_path}", base.trim_end_matches('/'))
}

impl Snapshot {
    /// Checkpoint or savepoint.
    pub fn snapshot_type(&self) -> SnapshotType {
        self.manifest.snapshot_type
    }

    /// The full path of a file the manifest references.
    pub fn file_path(&self, f: &FileRef) -> String {
        match (&self.source, f.area) {
            (Source::Checkpoint(_), FileArea::Shared) => {
                join_display(&self.base, &format!("shared/{}", f.name))
            }
            (Source::Checkpoint(_), FileArea::Private) => join_display(
                &self.base,
                &format!("chk-{}/{}", self.manifest.checkpoint_id, f.name),
            ),
            (Source::Savepoint(_), _) => join_display(&self.base, &f.name),
        }
    }

    /// Reads a whole file, checking its size against the manifest.
    pub fn read(&self, f: &FileRef) -> Result<Bytes, DumpError> {
        let r = match &self.source {
            Source::Checkpoint(s) => s.read(f),
            Source::Savepoint(s) => s.read(f),
        };
        r.map_err(|e| self.read_err(f, e))
    }

    fn read_err(&self, f: &FileRef, e: StorageError) -> DumpError {
        match e {
            // The store's path may be relative; name the file by its full path.
            StorageError::NotFound { .. } => DumpError::Missing {
                path: self.file_path(f),
            },
            e => from_storage(e, &|p| object_display(&self.base, p)),
        }
    }

    /// Reads a whole file, checking its size against the manifest but not its CRC32:
    /// returns the bytes and their CRC32 (the manifest's when they match), so a caller can
    /// locate damage that the whole-file checksum only detects.
    pub(crate) fn read_unchecked(&self, f: &FileRef) -> Result<(Bytes, u32), DumpError> {
        let read = |f: &FileRef| match &self.source {
            Source::Checkpoint(s) => s.read(f),
            Source::Savepoint(s) => s.read(f),
        };
        match read(f) {
            Ok(bytes) => Ok((bytes, f.crc32)),
            Err(StorageError::ChecksumMismatch { actual, .. }) => {
                // Read again, accepting what is there (an offline tool: the file does not
                // change between the two reads; if it does, the second read fails).
                let mut found = f.clone();
                found.crc32 = actual;
                self.read(&found).map(|bytes| (bytes, actual))
            }
            Err(e) => Err(self.read_err(f, e)),
        }
    }

    /// Maps a storage error to one that names full paths.
    pub fn err(&self, e: StorageError) -> DumpError {
        from_storage(e, &|p| object_display(&self.base, p))
    }
}

/// Refuses keyed data of a kind this build cannot read (a newer `KeyedData` variant, or a
/// changelog handle whose materialized part is not canonical or native RocksDB data) with
/// an [`DumpError::Unsupported`] error naming the snapshot; canonical state files, native
/// RocksDB checkpoints and changelog handles over either are read.
pub(crate) fn check_readable(h: &KeyedStateHandle, snapshot: &Snapshot) -> Result<(), DumpError> {
    let leaf = |h: &KeyedStateHandle| {
        matches!(
            h.data,
            KeyedData::Canonical { .. } | KeyedData::RocksNative { .. }
        )
    };
    let ok = match &h.data {
        KeyedData::Changelog { materialized, .. } => materialized.iter().all(leaf),
        _ => leaf(h),
    };
    if ok {
        return Ok(());
    }
    Err(DumpError::Unsupported {
        path: snapshot.location.clone(),
        detail: "keyed state data of a kind this build cannot read; upgrade state-dump".into(),
    })
}

/// A local path, or a URL with a scheme.
enum Target {
    Local(PathBuf),
    Url(String),
}

fn parse_target(path: &str) -> Result<Target, DumpError> {
    if path.is_empty() {
        return Err(DumpError::usage("empty path"));
    }
    if let Some(rest) = path.strip_prefix("file://") {
        let url = url::Url::parse(path).map_err(|e| DumpError::NotSnapshot {
            path: path.to_string(),
            detail: format!("invalid file URL: {e}"),
        })?;
        let p = url.to_file_path().map_err(|()| DumpError::NotSnapshot {
            path: path.to_string(),
            detail: format!("not an absolute file path: {rest}"),
        })?;
        return Ok(Target::Local(p));
    }
    if path.contains("://") {
        return Ok(Target::Url(path.trim_end_matches('/').to_string()));
    }
    Ok(Target::Local(PathBuf::from(path)))
}

fn display(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}

/// The id of a `chk-<id>` directory name (canonical decimal only).
pub(crate) fn checkpoint_id_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("chk-")?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// Opens the checkpoint or savepoint at `path`.
///
/// A `chk-<id>` directory is read as checkpoint `<id>` of the job directory above it (its
/// shared files are in `<job>/shared/`); any other directory as a savepoint.
pub fn open_snapshot(path: &str) -> Result<Snapshot, DumpError> {
    match parse_target(path)? {
        Target::Local(p) => open_local(&p),
        Target::Url(url) => open_url(&url),
    }
}

fn open_local(p: &Path) -> Result<Snapshot, DumpError> {
    let shown = display(p);
    let meta = std::fs::metadata(p).map_err(|e| DumpError::NotSnapshot {
        path: shown.clone(),
        detail: format!("cannot open: {e}"),
    })?;
    let dir = if meta.is_dir() {
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    } else if p.file_name().is_some_and(|n| n == MANIFEST_FILE_NAME) {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        abs.parent().map(Path::to_path_buf).unwrap_or(abs)
    } else {
        return Err(DumpError::NotSnapshot {
            path: shown,
            detail: "a file that is not a _metadata manifest; give a checkpoint or savepoint directory or its _metadata file".into(),
        });
    };
    let dir_str = path_str(&dir)?;
    let id = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(checkpoint_id_of);
    if let (Some(id), Some(parent)) = (id, dir.parent()) {
        let root = path_str(parent)?;
        if let Some(s) = try_checkpoint(&root, &root, id, &dir_str)? {
            return Ok(s);
        }
    }
    open_savepoint_at(&dir_str, &dir_str)
}

fn path_str(p: &Path) -> Result<String, DumpError> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| DumpError::NotSnapshot {
            path: p.display().to_string(),
            detail: "path is not valid UTF-8".into(),
        })
}

fn open_url(url: &str) -> Result<Snapshot, DumpError> {
    let url = url
        .strip_suffix(MANIFEST_FILE_NAME)
        .map_or(url, |u| u.trim_end_matches('/'));
    if let Some((parent, last)) = url.rsplit_once('/') {
        if let Some(id) = checkpoint_id_of(last) {
            if let Some(s) = try_checkpoint(parent, parent, id, url)? {
                return Ok(s);
            }
        }
    }
    open_savepoint_at(url, url)
}

/// Checkpoint `id` of the job at `root`; `Ok(None)` when the directory holds a savepoint.
/// Checkpoint `id` of `storage`, whose manifest is `manifest`, shown as `location`; object
/// paths are shown under `base`.
fn checkpoint_snapshot(
    storage: &CheckpointStorage,
    id: u64,
    manifest: Manifest,
    location: String,
    base: &str,
) -> Snapshot {
    Snapshot {
        location,
        manifest,
        base: base.to_string(),
        source: Source::Checkpoint(storage.source(id)),
    }
}

fn try_checkpoint(
    root: &str,
    shown_root: &str,
    id: u64,
    location: &str,
) -> Result<Option<Snapshot>, DumpError> {
    let full = |p: &str| object_display(shown_root, p);
    let storage = CheckpointStorage::open(root).map_err(|e| from_storage(e, &full))?;
    match storage.load(id) {
        Ok(manifest) => Ok(Some(checkpoint_snapshot(
            &storage,
            id,
            manifest,
            location.to_string(),
            shown_root,
        ))),
        Err(StorageError::ManifestMismatch {
            found_type: SnapshotType::Savepoint,
            ..
        }) => Ok(None),
        Err(e) => Err(from_storage(e, &full)),
    }
}

fn open_savepoint_at(dir: &str, shown: &str) -> Result<Snapshot, DumpError> {
    let full = |p: &str| object_display(shown, p);
    match open_savepoint(dir) {
        Ok((manifest, source)) => Ok(Snapshot {
            location: shown.to_string(),
            manifest,
            base: shown.to_string(),
            source: Source::Savepoint(source),
        }),
        Err(StorageError::ManifestMismatch {
            found_type: SnapshotType::Checkpoint,
            found_id,
            ..
        }) => Err(DumpError::NotSnapshot {
            path: full(MANIFEST_FILE_NAME),
            detail: format!(
                "a checkpoint manifest (checkpoint {found_id}) outside a chk-<id> directory; checkpoints are read from <job>/chk-<id>"
            ),
        }),
        Err(e @ StorageError::NoSuchSnapshot { .. }) => {
            let err = from_storage(e, &full);
            Err(job_root_hint(dir, shown).unwrap_or(err))
        }
        Err(e) => Err(from_storage(e, &full)),
    }
}

/// When `dir` holds no manifest but is a job's checkpoint directory with completed
/// checkpoints, an error that names them (a user gave the job's directory, not a snapshot).
fn job_root_hint(dir: &str, shown: &str) -> Option<DumpError> {
    let completed = CheckpointStorage::open(dir)
        .ok()?
        .completed_checkpoints()
        .ok()?;
    let newest = *completed.last()?;
    let ids: Vec<String> = completed.iter().map(|id| format!("chk-{id}")).collect();
    Some(DumpError::NotSnapshot {
        path: shown.to_string(),
        detail: format!(
            "a job's checkpoint directory, not a checkpoint (completed: {}); give one of them, as {}",
            ids.join(", "),
            join_display(shown, &format!("chk-{newest}"))
        ),
    })
}

/// Whether local directory `dir` is a job's checkpoint directory: it holds the job's lock
/// file or a `shared/` directory.
pub(crate) fn is_local_job_root(dir: &Path) -> bool {
    dir.join("_lock").is_file() || dir.join("shared").is_dir()
}

/// Opens a job's checkpoint directory (`<job>`, holding `chk-<id>/` and `shared/`). A local
/// directory must exist (it is never created).
pub fn open_job_root(path: &str) -> Result<JobRoot, DumpError> {
    let (url, shown, local) = match parse_target(path)? {
        Target::Local(p) => {
            let shown = display(&p);
            let meta = std::fs::metadata(&p).map_err(|e| DumpError::NotSnapshot {
                path: shown.clone(),
                detail: format!("cannot open the job's checkpoint directory: {e}"),
            })?;
            if !meta.is_dir() {
                return Err(DumpError::NotSnapshot {
                    path: shown,
                    detail: "not a directory; give a job's checkpoint directory (the one holding chk-<id>/ and shared/)".into(),
                });
            }
            (shown.clone(), shown, Some(p))
        }
        Target::Url(u) => (u.clone(), u, None),
    };
    let last = shown.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if checkpoint_id_of(last).is_some() {
        return Err(DumpError::usage(format!(
            "{shown} is a checkpoint directory; give the job's checkpoint directory above it"
        )));
    }
    // A savepoint's directory is no job's: gc would leave a lock file in it, and
    // files/gc would report an empty job.
    if local
        .as_ref()
        .is_some_and(|p| p.join(MANIFEST_FILE_NAME).is_file())
    {
        return Err(DumpError::usage(format!(
            "{shown} is a savepoint or checkpoint directory (it holds a _metadata), not a job's checkpoint directory; give the directory holding chk-<id>/ and shared/"
        )));
    }
    let full = |p: &str| object_display(&shown, p);
    let storage = CheckpointStorage::open(&url).map_err(|e| from_storage(e, &full))?;
    Ok(JobRoot {
        location: shown,
        storage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_dir_names() {
        assert_eq!(checkpoint_id_of("chk-12"), Some(12));
        assert_eq!(checkpoint_id_of("chk-012"), None);
        assert_eq!(checkpoint_id_of("sp-3"), None);
        assert_eq!(join_display("/a/b/", "chk-1/x"), "/a/b/chk-1/x");
        assert_eq!(join_display("/a", "/abs"), "/abs");
        // Object paths of a URL store start at the bucket, prefix included.
        assert_eq!(object_display("/a/b", "chk-1/x"), "/a/b/chk-1/x");
        assert_eq!(
            object_display("s3://bkt/jobs/j", "jobs/j/chk-1/_metadata"),
            "s3://bkt/jobs/j/chk-1/_metadata"
        );
        assert_eq!(
            object_display("s3://bkt", "sp/_metadata"),
            "s3://bkt/sp/_metadata"
        );
        assert_eq!(object_display("memory:///x", "x/a"), "memory:///x/a");
    }
}
