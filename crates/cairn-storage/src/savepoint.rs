//! Savepoints: self-contained directories of private files with relative names, written to
//! and opened from any store URL.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_core::{FileArea, FileRef, SnapshotSource, SnapshotTarget, SnapshotType, StateError};
use cairn_format::{Manifest, MANIFEST_FILE_NAME};
use object_store::path::Path;
use object_store::ObjectStore;

use crate::checkpoint::{check_crc32, read_for_restore};
use crate::error::StorageError;
use crate::layout::{
    check_name, join, manifest_path, put_file, read_checked, read_manifest, write_manifest,
    DISCARD_MARKER_NAME,
};
use crate::store::{Store, NOT_A_DIRECTORY};

/// Starts writing savepoint `checkpoint_id` into the directory `url` (a local path,
/// `file:///abs/dir`, `memory://` or `s3://bucket/prefix`), created if missing. Fails if it
/// already holds a manifest.
pub fn create_savepoint(url: &str, checkpoint_id: u64) -> Result<SavepointWriter, StorageError> {
    let (store, dir) = Store::open(url, true)?;
    create_in(store, dir, checkpoint_id, url)
}

/// [`create_savepoint`] in directory `dir` of a store you built (for example an S3 store, or
/// an in-memory store shared with the reader).
pub fn create_savepoint_in(
    store: Arc<dyn ObjectStore>,
    dir: Path,
    checkpoint_id: u64,
) -> Result<SavepointWriter, StorageError> {
    let url = dir.to_string();
    create_in(Store::new(store, None)?, dir, checkpoint_id, &url)
}

/// [`open_savepoint`] for directory `dir` of a store you built.
pub fn open_savepoint_in(
    store: Arc<dyn ObjectStore>,
    dir: Path,
) -> Result<(Manifest, SavepointSource), StorageError> {
    let url = dir.to_string();
    open_in(Store::new(store, None)?, dir, &url)
}

fn create_in(
    store: Store,
    dir: Path,
    checkpoint_id: u64,
    url: &str,
) -> Result<SavepointWriter, StorageError> {
    let mpath = manifest_path(&dir);
    if store.size(&mpath)?.is_some() {
        return Err(StorageError::SavepointExists {
            path: format!("{}/{MANIFEST_FILE_NAME}", url.trim_end_matches('/')),
        });
    }
    // Finishing that discard would delete files of the new savepoint that share its names.
    if store.size(&join(&dir, DISCARD_MARKER_NAME))?.is_some() {
        return Err(StorageError::InterruptedDiscard {
            path: format!("{}/{DISCARD_MARKER_NAME}", url.trim_end_matches('/')),
        });
    }
    Ok(SavepointWriter {
        store,
        dir,
        checkpoint_id,
        written: Mutex::new(Written::default()),
    })
}

/// A checkpoint or savepoint opened by its path ([`open_snapshot`]).
pub struct OpenedSnapshot {
    /// Its directory: the path without a trailing `/` or `/_metadata`.
    pub dir: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// Reads its files.
    pub source: Box<dyn SnapshotSource>,
    /// For a checkpoint (`<job>/chk-<id>`), its job directory (which holds `shared/`);
    /// `None` for a savepoint.
    pub job_dir: Option<String>,
}

impl fmt::Debug for OpenedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSnapshot")
            .field("dir", &self.dir)
            .field("checkpoint_id", &self.manifest.checkpoint_id)
            .field("job_dir", &self.job_dir)
            .finish_non_exhaustive()
    }
}

impl OpenedSnapshot {
    /// `checkpoint <dir>` or `savepoint <dir>`, for messages.
    pub fn description(&self) -> String {
        match self.job_dir {
            Some(_) => format!("checkpoint {}", self.dir),
            None => format!("savepoint {}", self.dir),
        }
    }
}

/// The directory of the snapshot at `url`: `url` without a trailing `/` or `/_metadata`.
pub fn snapshot_dir(url: &str) -> &str {
    let trimmed = url.trim_end_matches('/');
    trimmed
        .strip_suffix(MANIFEST_FILE_NAME)
        .filter(|d| d.ends_with('/'))
        .map_or(trimmed, |d| d.trim_end_matches('/'))
}

/// Opens the checkpoint or savepoint at `url` (its directory or its `_metadata`): a
/// directory named `chk-<id>` is checkpoint `id` of the job directory above it, read
/// through its [`crate::CheckpointStorage`] (its shared files included), unless its
/// manifest says it is a savepoint (a savepoint may be written under any name); any other
/// directory is a savepoint.
pub fn open_snapshot(url: &str) -> Result<OpenedSnapshot, StorageError> {
    let dir = snapshot_dir(url);
    let (parent, last) = dir.rsplit_once('/').unwrap_or((".", dir));
    if let Some(id) = last
        .strip_prefix("chk-")
        .and_then(|s| s.parse::<u64>().ok())
    {
        let job_dir = if parent.is_empty() { "/" } else { parent };
        let storage = crate::CheckpointStorage::open_existing(job_dir)?;
        match storage.load(id) {
            Ok(manifest) => {
                return Ok(OpenedSnapshot {
                    dir: dir.to_string(),
                    manifest,
                    source: Box::new(storage.source(id)),
                    job_dir: Some(job_dir.to_string()),
                })
            }
            Err(StorageError::ManifestMismatch {
                found_type: SnapshotType::Savepoint,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    let (manifest, source) = open_savepoint(dir)?;
    Ok(OpenedSnapshot {
        dir: dir.to_string(),
        manifest,
        source: Box::new(source),
        job_dir: None,
    })
}

/// Opens the savepoint at `url`: its directory or its `_metadata` file. Returns the manifest
/// and a source that reads its files.
pub fn open_savepoint(url: &str) -> Result<(Manifest, SavepointSource), StorageError> {
    let (store, dir, dir_url) = locate(url)?;
    open_in(store, dir, &dir_url)
}

/// The store and directory of the savepoint at `url` (its directory or its `_metadata`
/// file), with the directory's URL.
fn locate(url: &str) -> Result<(Store, Path, String), StorageError> {
    let dir_url = snapshot_dir(url);
    let (store, dir) = match Store::open(dir_url, false) {
        Err(StorageError::InvalidUrl { reason, .. })
            if !dir_url.contains("://") && reason == NOT_A_DIRECTORY =>
        {
            return Err(StorageError::NoSuchSnapshot {
                path: format!("{dir_url}/{MANIFEST_FILE_NAME}"),
            })
        }
        other => other?,
    };
    Ok((store, dir, dir_url.to_string()))
}

/// Deletes the savepoint at `url` (its directory or its `_metadata` file). First it writes
/// a copy of the manifest beside it ([`DISCARD_MARKER_NAME`]), then it deletes the manifest,
/// so that an interrupted deletion never leaves what looks like a whole savepoint; then
/// every file the manifest references, the copy last, and (local directories) the
/// directory if nothing else is in it. Other files in the directory stay. A discard
/// interrupted after the manifest went is finished by discarding the same URL again (the
/// copy says what is left to delete). Refuses what is not a savepoint.
pub fn discard_savepoint(url: &str) -> Result<(), StorageError> {
    let (store, dir, dir_url) = locate(url)?;
    discard_in(store, dir, &dir_url)
}

/// [`discard_savepoint`] for directory `dir` of a store you built.
pub fn discard_savepoint_in(store: Arc<dyn ObjectStore>, dir: Path) -> Result<(), StorageError> {
    let url = dir.to_string();
    discard_in(Store::new(store, None)?, dir, &url)
}

fn discard_in(store: Store, dir: Path, dir_url: &str) -> Result<(), StorageError> {
    let marker = join(&dir, DISCARD_MARKER_NAME);
    let manifest = match open_in(store.clone(), dir.clone(), dir_url) {
        Ok((manifest, _)) => {
            write_manifest(&store, &marker, &manifest)?;
            manifest
        }
        // No manifest: finish an interrupted discard if it left its copy.
        Err(missing) if missing.is_not_found() => match read_manifest(&store, &marker)? {
            Some(copy) if copy.snapshot_type == SnapshotType::Savepoint => copy,
            _ => return Err(missing),
        },
        Err(e) => return Err(e),
    };
    store.delete(&manifest_path(&dir))?;
    store.sync_deletes_in(&dir)?;
    // Every directory a file was deleted from, synced before the copy goes: a crash then
    // never keeps a file whose discard has lost its copy.
    let mut parents = BTreeSet::new();
    for file in manifest.files() {
        check_name(file.area, &file.name)?;
        store.delete(&join(&dir, &file.name))?;
        parents.insert(file.name.rsplit_once('/').map_or("", |(parent, _)| parent));
    }
    for parent in parents {
        let parent = if parent.is_empty() {
            dir.clone()
        } else {
            join(&dir, parent)
        };
        store.sync_deletes_in(&parent)?;
    }
    // Staging files of puts a crash interrupted (this discard's copy, or the savepoint's
    // own files): no savepoint names them.
    for (name, _) in store.local_staging_files(&dir)? {
        store.remove_local_staging(&dir, &name)?;
    }
    store.delete(&marker)?;
    store.sync_deletes_in(&dir)?;
    store.remove_local_dir_if_empty(&dir)
}

fn open_in(
    store: Store,
    dir: Path,
    dir_url: &str,
) -> Result<(Manifest, SavepointSource), StorageError> {
    let mpath = manifest_path(&dir);
    let m = read_manifest(&store, &mpath)?.ok_or_else(|| StorageError::NoSuchSnapshot {
        path: format!("{dir_url}/{MANIFEST_FILE_NAME}"),
    })?;
    if m.snapshot_type != SnapshotType::Savepoint {
        return Err(StorageError::ManifestMismatch {
            path: format!("{dir_url}/{MANIFEST_FILE_NAME}"),
            expected_id: m.checkpoint_id,
            expected_type: SnapshotType::Savepoint,
            found_id: m.checkpoint_id,
            found_type: m.snapshot_type,
        });
    }
    if let Some(f) = m.files().find(|f| f.area == FileArea::Shared) {
        return Err(StorageError::SharedNotSupported {
            target: "savepoints",
            name: f.name.clone(),
        });
    }
    Ok((m, SavepointSource { store, dir }))
}

/// Writes a savepoint's files (implements [`SnapshotTarget`] with
/// `supports_shared() == false`); [`SavepointWriter::publish`] writes the manifest last,
/// [`SavepointWriter::abort`] deletes what was written.
pub struct SavepointWriter {
    store: Store,
    dir: Path,
    checkpoint_id: u64,
    written: Mutex<Written>,
}

/// The files a savepoint writer wrote, and whether it was aborted.
#[derive(Default)]
struct Written {
    files: HashMap<String, FileRef>,
    /// Every name a put was started for, written or not: a put that failed may still have
    /// landed (its acknowledgement lost), and an abort must delete that file too.
    attempted: HashSet<String>,
    aborted: bool,
}

impl fmt::Debug for SavepointWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SavepointWriter")
            .field("dir", &self.dir)
            .field("checkpoint_id", &self.checkpoint_id)
            .finish_non_exhaustive()
    }
}

impl SavepointWriter {
    /// Writes `bytes` as private file `name`, durably.
    pub fn write(
        &self,
        area: FileArea,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<FileRef, StorageError> {
        if area == FileArea::Shared {
            return Err(StorageError::SharedNotSupported {
                target: "savepoints",
                name: name.to_string(),
            });
        }
        check_name(area, name)?;
        {
            let mut written = self.lock();
            if written.aborted {
                return Err(self.aborted());
            }
            written.attempted.insert(name.to_string());
        }
        let path = join(&self.dir, name);
        let file = put_file(&self.store, &path, area, name, bytes)?;
        let mut written = self.lock();
        if written.aborted {
            // Aborted while the put was under way, after the abort listed the files to
            // delete (it holds the lock while it lists them): this one is ours to delete.
            drop(written);
            let _ = self.store.delete(&path);
            let _ = self.store.remove_local_dir_if_empty(&self.dir);
            return Err(self.aborted());
        }
        written.files.insert(name.to_string(), file.clone());
        Ok(file)
    }

    /// Abandons the savepoint: deletes every file written so far (and every file whose put
    /// failed, which may have landed all the same), and the directory (local
    /// directories) if nothing else is in it. A write still under way deletes its file when
    /// it ends; later writes and [`SavepointWriter::publish`] are refused. Deletion is best
    /// effort: a file that cannot be deleted stays, and no `_metadata` ever names it.
    pub fn abort(&self) {
        let names = {
            let mut written = self.lock();
            written.aborted = true;
            let files = std::mem::take(&mut written.files);
            let mut names = std::mem::take(&mut written.attempted);
            names.extend(files.into_keys());
            names
        };
        for name in &names {
            let _ = self.store.delete(&join(&self.dir, name));
        }
        let _ = self.store.remove_local_dir_if_empty(&self.dir);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn aborted(&self) -> StorageError {
        StorageError::WriterClosed {
            checkpoint_id: self.checkpoint_id,
            state: crate::registry::WriterState::Aborted.name(),
        }
    }

    /// Completes the savepoint: checks that `manifest` is a savepoint with this id that
    /// references only files this writer wrote, then writes `_metadata` last, durably.
    pub fn publish(self, manifest: &Manifest) -> Result<(), StorageError> {
        let mpath = manifest_path(&self.dir);
        if manifest.snapshot_type != SnapshotType::Savepoint
            || manifest.checkpoint_id != self.checkpoint_id
        {
            return Err(StorageError::ManifestMismatch {
                path: mpath.to_string(),
                expected_id: self.checkpoint_id,
                expected_type: SnapshotType::Savepoint,
                found_id: manifest.checkpoint_id,
                found_type: manifest.snapshot_type,
            });
        }
        {
            let written = self.lock();
            if written.aborted {
                return Err(self.aborted());
            }
            for file in manifest.files() {
                if file.area == FileArea::Shared {
                    return Err(StorageError::SharedNotSupported {
                        target: "savepoints",
                        name: file.name.clone(),
                    });
                }
                if written.files.get(&file.name) != Some(file) {
                    return Err(StorageError::NotFound {
                        path: join(&self.dir, &file.name).to_string(),
                    });
                }
            }
        }
        if self.store.size(&mpath)?.is_some() {
            return Err(StorageError::SavepointExists {
                path: mpath.to_string(),
            });
        }
        write_manifest(&self.store, &mpath, manifest)
    }
}

impl SnapshotTarget for SavepointWriter {
    fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }

    fn supports_shared(&self) -> bool {
        false
    }

    fn write_file(
        &self,
        area: FileArea,
        name: &str,
        bytes: Vec<u8>,
    ) -> cairn_core::Result<FileRef> {
        self.write(area, name, bytes).map_err(|e| {
            StateError::layer(
                format!(
                    "writing savepoint file name={name} checkpoint_id={}",
                    self.checkpoint_id
                ),
                e,
            )
        })
    }
}

/// Reads a savepoint's files (names relative to its directory).
#[derive(Clone, Debug)]
pub struct SavepointSource {
    store: Store,
    dir: Path,
}

impl SavepointSource {
    /// Reads a whole file, checking its size and CRC32 against the reference.
    pub fn read(&self, file: &FileRef) -> Result<Bytes, StorageError> {
        if file.area == FileArea::Shared {
            return Err(StorageError::SharedNotSupported {
                target: "savepoints",
                name: file.name.clone(),
            });
        }
        check_name(file.area, &file.name)?;
        let path = join(&self.dir, &file.name);
        let bytes = read_checked(&self.store, &path, file)?;
        check_crc32(&path, file, &bytes)?;
        Ok(bytes)
    }
}

impl SnapshotSource for SavepointSource {
    /// [`SavepointSource::read`]; a damaged canonical state file's error also says where
    /// the damage is.
    fn read_file(&self, file: &FileRef) -> cairn_core::Result<Bytes> {
        let path = join(&self.dir, &file.name);
        read_for_restore(self.read(file), "reading savepoint file", &path, || {
            read_checked(&self.store, &path, file).ok()
        })
    }
}
