//! One job's checkpoint directory: writers, publish, abort, discovery and restore sources.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_core::{FileArea, FileRef, SnapshotSource, SnapshotTarget, SnapshotType, StateError};
use cairn_format::Manifest;
use object_store::path::Path;
use object_store::ObjectStore;

use crate::error::StorageError;
use crate::layout::{
    check_name, checkpoint_dir, join, manifest_path, parse_checkpoint_dir, put_file, read_checked,
    read_manifest, shared_dir, write_manifest,
};
use crate::registry::{Registry, WriterState};
use crate::store::Store;

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) root: Path,
    /// Shared with every other storage open on the same directory in this process.
    pub(crate) registry: Arc<Registry>,
}

/// One job's checkpoint directory: `<root>/shared/` and `<root>/chk-<id>/`.
///
/// Cheap to clone (the clones share the in-flight registry, as do all storages open on the
/// same directory in this process: the same local directory or cloud prefix, or the same
/// store object given to [`CheckpointStorage::from_store`]). Every method blocks; see the
/// crate docs for the threading rules.
#[derive(Clone)]
pub struct CheckpointStorage {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for CheckpointStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointStorage")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// What discovery found in one `chk-<id>` directory.
#[derive(Debug)]
#[non_exhaustive]
pub enum CheckpointStatus {
    /// The manifest exists and decodes: the checkpoint exists.
    Complete(Manifest),
    /// No manifest: in flight, aborted or crashed.
    Incomplete,
    /// A manifest exists but does not decode or does not match its directory (torn, corrupt,
    /// written by a newer version); treated as not complete.
    Corrupt(StorageError),
}

impl CheckpointStorage {
    /// Opens a job's checkpoint directory: `memory://` (a fresh in-memory store),
    /// `file:///abs/dir` or a plain local path (created if missing; writes are fsynced),
    /// `s3://bucket/prefix` (configured from the `AWS_*` environment; see the crate docs), or
    /// `gs://` / `az://` with the features `gcp` / `azure` (or use
    /// [`CheckpointStorage::from_store`] with a store you built).
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let (store, prefix) = Store::open(url, true)?;
        Ok(Self::with_store(store, prefix))
    }

    /// Opens an existing checkpoint directory to read from it (a restore): as
    /// [`CheckpointStorage::open`], but a local directory that does not exist is an error
    /// instead of being created.
    pub fn open_existing(url: &str) -> Result<Self, StorageError> {
        let (store, prefix) = Store::open(url, false)?;
        Ok(Self::with_store(store, prefix))
    }

    /// [`CheckpointStorage::open`], with the store it builds seen through `wrap` (for
    /// example [`crate::fault::FaultyObjectStore`]); the local-disk additions still apply.
    pub fn open_wrapped(
        url: &str,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> Result<Self, StorageError> {
        let (store, prefix) = Store::open(url, true)?;
        Ok(Self::with_store(store.wrapped(wrap), prefix))
    }

    /// A checkpoint directory at `prefix` inside `store`. For a `LocalFileSystem`, enable
    /// `with_fsync(true)` and `with_automatic_cleanup(true)` yourself (or use
    /// [`CheckpointStorage::open`]): this crate only adds the syncs and the removal of empty
    /// directories when it built the store (see the crate docs).
    pub fn from_store(store: Arc<dyn ObjectStore>, prefix: Path) -> Result<Self, StorageError> {
        Ok(Self::with_store(Store::new(store, None)?, prefix))
    }

    fn with_store(store: Store, root: Path) -> Self {
        let registry = Registry::for_directory(store.directory_key(&root));
        Self {
            inner: Arc::new(Inner {
                store,
                root,
                registry,
            }),
        }
    }

    /// Starts writing checkpoint `checkpoint_id`, which must be greater than every id this
    /// directory has seen ([`CheckpointStorage::next_checkpoint_id`]) or this process began.
    pub fn begin_checkpoint(&self, checkpoint_id: u64) -> Result<CheckpointWriter, StorageError> {
        let next = self.next_checkpoint_id()?;
        if checkpoint_id < next {
            return Err(StorageError::InvalidCheckpointId {
                checkpoint_id,
                reason: format!("ids never go back; the next free id is {next}"),
            });
        }
        self.inner
            .registry
            .lock()
            .begin(checkpoint_id)
            .map_err(|reason| StorageError::InvalidCheckpointId {
                checkpoint_id,
                reason,
            })?;
        Ok(CheckpointWriter {
            shared: Arc::new(WriterShared {
                storage: self.clone(),
                checkpoint_id,
                written: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Completes a checkpoint: checks that `manifest` is this writer's checkpoint and that
    /// every file it references was written by the writer or (shared files) exists with the
    /// right size, then writes `chk-<id>/_metadata` last, durably. From then on the
    /// checkpoint exists.
    pub fn publish(
        &self,
        writer: CheckpointWriter,
        manifest: &Manifest,
    ) -> Result<(), StorageError> {
        let w = &writer.shared;
        let id = w.checkpoint_id;
        let dir = checkpoint_dir(&self.inner.root, id);
        let mpath = manifest_path(&dir);
        if manifest.snapshot_type != SnapshotType::Checkpoint || manifest.checkpoint_id != id {
            return Err(StorageError::ManifestMismatch {
                path: mpath.to_string(),
                expected_id: id,
                expected_type: SnapshotType::Checkpoint,
                found_id: manifest.checkpoint_id,
                found_type: manifest.snapshot_type,
            });
        }
        for file in manifest.files() {
            match file.area {
                FileArea::Private => w.check_written(file, &join(&dir, &file.name))?,
                FileArea::Shared => {
                    if !w.was_written(file) {
                        writer.reference_shared(file)?;
                    }
                }
            }
        }
        self.inner
            .registry
            .lock()
            .start_publish(id)
            .map_err(|state| StorageError::WriterClosed {
                checkpoint_id: id,
                state: state.name(),
            })?;
        let result = write_manifest(&self.inner.store, &mpath, manifest);
        let state = match result {
            Ok(()) => WriterState::Published,
            Err(_) => WriterState::Aborted,
        };
        self.inner.registry.lock().finish(id, state);
        result
    }

    /// Aborts checkpoint `checkpoint_id`: an open writer for it stops accepting files, and
    /// its private files are deleted. Its shared files become unreferenced (GC deletes them
    /// unless a manifest references them). Refuses a completed checkpoint.
    pub fn abort(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        let dir = checkpoint_dir(&self.inner.root, checkpoint_id);
        {
            let mut reg = self.inner.registry.lock();
            if reg.state(checkpoint_id) == Some(WriterState::Publishing) {
                return Err(StorageError::InvalidCheckpointId {
                    checkpoint_id,
                    reason: "the checkpoint is being published".into(),
                });
            }
            reg.finish(checkpoint_id, WriterState::Aborted);
        }
        if self.inner.store.size(&manifest_path(&dir))?.is_some() {
            return Err(StorageError::InvalidCheckpointId {
                checkpoint_id,
                reason: "the checkpoint is complete; it is removed by retain, not abort".into(),
            });
        }
        self.delete_checkpoint_dir(checkpoint_id)
    }

    /// Deletes `chk-<id>/`: the manifest first (made durable), then the private files.
    pub(crate) fn delete_checkpoint_dir(&self, checkpoint_id: u64) -> Result<(), StorageError> {
        let store = &self.inner.store;
        let dir = checkpoint_dir(&self.inner.root, checkpoint_id);
        let mpath = manifest_path(&dir);
        store.delete(&mpath)?;
        store.sync_deletes_in(&dir)?;
        for meta in store.list(&dir)? {
            store.delete(&meta.location)?;
        }
        store.remove_local_dir(&dir)
    }

    /// Every `chk-<id>` directory, sorted by id, with what it holds.
    pub fn scan(&self) -> Result<Vec<(u64, CheckpointStatus)>, StorageError> {
        let mut ids = self.checkpoint_dir_ids()?;
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| Ok((id, self.status(id)?)))
            .collect()
    }

    fn status(&self, id: u64) -> Result<CheckpointStatus, StorageError> {
        match self.load(id) {
            Ok(m) => Ok(CheckpointStatus::Complete(m)),
            Err(StorageError::NoSuchSnapshot { .. }) => Ok(CheckpointStatus::Incomplete),
            Err(
                e @ (StorageError::CorruptManifest { .. } | StorageError::ManifestMismatch { .. }),
            ) => Ok(CheckpointStatus::Corrupt(e)),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn checkpoint_dir_ids(&self) -> Result<Vec<u64>, StorageError> {
        Ok(self
            .inner
            .store
            .list_dirs(&self.inner.root)?
            .iter()
            .filter_map(parse_checkpoint_dir)
            .collect())
    }

    /// The ids of the completed checkpoints (manifest exists and decodes), sorted.
    pub fn completed_checkpoints(&self) -> Result<Vec<u64>, StorageError> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|(_, s)| matches!(s, CheckpointStatus::Complete(_)))
            .map(|(id, _)| id)
            .collect())
    }

    /// The manifest of the newest completed checkpoint, `None` if none completed.
    ///
    /// Checkpoint directories without a manifest did not complete and are passed over. A
    /// manifest that exists but cannot be read (damaged, written by a newer version, or
    /// naming another checkpoint) is an error
    /// ([`StorageError::NewestCheckpointUnreadable`]) unless a newer checkpoint completed:
    /// manifests are put atomically, so that checkpoint completed, and a job restored from
    /// an older one would go back behind it (a two-phase-commit sink that committed the
    /// newer checkpoint's output would emit it again). [`CheckpointStorage::scan`] reports
    /// such checkpoints without failing.
    pub fn latest_completed(&self) -> Result<Option<Manifest>, StorageError> {
        let mut ids = self.checkpoint_dir_ids()?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            match self.status(id)? {
                CheckpointStatus::Complete(m) => return Ok(Some(m)),
                CheckpointStatus::Corrupt(e) => {
                    return Err(StorageError::NewestCheckpointUnreadable {
                        checkpoint_id: id,
                        source: Box::new(e),
                    })
                }
                CheckpointStatus::Incomplete => {}
            }
        }
        Ok(None)
    }

    /// The manifest of checkpoint `checkpoint_id`.
    pub fn load(&self, checkpoint_id: u64) -> Result<Manifest, StorageError> {
        let path = manifest_path(&checkpoint_dir(&self.inner.root, checkpoint_id));
        let m = read_manifest(&self.inner.store, &path)?.ok_or_else(|| {
            StorageError::NoSuchSnapshot {
                path: path.to_string(),
            }
        })?;
        if m.snapshot_type != SnapshotType::Checkpoint || m.checkpoint_id != checkpoint_id {
            return Err(StorageError::ManifestMismatch {
                path: path.to_string(),
                expected_id: checkpoint_id,
                expected_type: SnapshotType::Checkpoint,
                found_id: m.checkpoint_id,
                found_type: m.snapshot_type,
            });
        }
        Ok(m)
    }

    /// Reads checkpoint `checkpoint_id`'s files for restore.
    ///
    /// While the source (or a clone) lives, it holds a restore lease: GC in this process keeps
    /// checkpoint `checkpoint_id` and every shared file its manifest references, even when
    /// it is no longer among the retained ones.
    pub fn source(&self, checkpoint_id: u64) -> CheckpointSource {
        self.inner.registry.lock().begin_restore(checkpoint_id);
        CheckpointSource {
            store: self.inner.store.clone(),
            private: checkpoint_dir(&self.inner.root, checkpoint_id),
            shared: shared_dir(&self.inner.root),
            _lease: Arc::new(RestoreLease {
                inner: self.inner.clone(),
                checkpoint_id,
            }),
        }
    }

    /// Reads every file of checkpoint `checkpoint_id` and checks its size and CRC32.
    pub fn verify(&self, checkpoint_id: u64) -> Result<Manifest, StorageError> {
        let m = self.load(checkpoint_id)?;
        let source = self.source(checkpoint_id);
        for file in m.files() {
            source.read(file)?;
        }
        Ok(m)
    }

    /// One more than the largest id of any `chk-<id>` directory, complete or not, or begun
    /// in this process; `1` for an empty directory. Checkpoint ids never go back.
    pub fn next_checkpoint_id(&self) -> Result<u64, StorageError> {
        let on_store = self.checkpoint_dir_ids()?.into_iter().max();
        let begun = self.inner.registry.lock().max_begun();
        Ok(on_store.max(begun).map_or(1, |m| m.saturating_add(1)))
    }
}

struct WriterShared {
    storage: CheckpointStorage,
    checkpoint_id: u64,
    /// What this writer wrote, by (area, name).
    written: Mutex<HashMap<(FileArea, String), FileRef>>,
}

impl Drop for WriterShared {
    fn drop(&mut self) {
        // A writer dropped without publish: its files are garbage from now on.
        let mut reg = self.storage.inner.registry.lock();
        if reg.state(self.checkpoint_id) == Some(WriterState::Open) {
            reg.finish(self.checkpoint_id, WriterState::Aborted);
        }
    }
}

impl WriterShared {
    fn check_open(&self) -> Result<(), StorageError> {
        match self.storage.inner.registry.lock().state(self.checkpoint_id) {
            Some(WriterState::Open) => Ok(()),
            other => Err(StorageError::WriterClosed {
                checkpoint_id: self.checkpoint_id,
                state: other.unwrap_or(WriterState::Aborted).name(),
            }),
        }
    }

    /// Whether the checkpoint was aborted (or its writer dropped) before it was published.
    /// A finished checkpoint leaves the registry whether it was published or aborted, so
    /// then its manifest tells (a store that cannot say counts as published: the file stays,
    /// and retention deletes it if it is garbage).
    fn is_aborted(&self) -> bool {
        let state = self.storage.inner.registry.lock().state(self.checkpoint_id);
        match state {
            Some(WriterState::Aborted) => true,
            Some(_) => false,
            None => {
                let inner = &self.storage.inner;
                let dir = checkpoint_dir(&inner.root, self.checkpoint_id);
                matches!(inner.store.size(&manifest_path(&dir)), Ok(None))
            }
        }
    }

    fn was_written(&self, file: &FileRef) -> bool {
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        written.get(&(file.area, file.name.clone())) == Some(file)
    }

    fn check_written(&self, file: &FileRef, path: &Path) -> Result<(), StorageError> {
        if self.was_written(file) {
            return Ok(());
        }
        Err(StorageError::NotFound {
            path: path.to_string(),
        })
    }
}

/// Writes one checkpoint's files (implements [`SnapshotTarget`]): private files go to
/// `chk-<id>/<name>`, shared ones to `shared/<name>`. Cheap to clone, so subtasks can share
/// it; the checkpoint's files are protected from GC until it is published, aborted, or the
/// last clone is dropped.
#[derive(Clone)]
pub struct CheckpointWriter {
    shared: Arc<WriterShared>,
}

impl fmt::Debug for CheckpointWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckpointWriter")
            .field("checkpoint_id", &self.shared.checkpoint_id)
            .finish_non_exhaustive()
    }
}

impl CheckpointWriter {
    /// The checkpoint id.
    pub fn id(&self) -> u64 {
        self.shared.checkpoint_id
    }

    /// Writes `bytes` as `name` in `area`, durably, and returns its reference.
    pub fn write(
        &self,
        area: FileArea,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<FileRef, StorageError> {
        check_name(area, name)?;
        let w = &self.shared;
        let inner = &w.storage.inner;
        let path = match area {
            FileArea::Private => {
                w.check_open()?;
                join(&checkpoint_dir(&inner.root, w.checkpoint_id), name)
            }
            FileArea::Shared => {
                self.register_shared(name)?;
                join(&shared_dir(&inner.root), name)
            }
        };
        let file = put_file(&inner.store, &path, area, name, bytes)?;
        if area == FileArea::Private && w.is_aborted() {
            // Aborted while the put was under way: the abort's deletion of `chk-<id>/` may
            // have run before the file was there, so it is this writer's to delete. (Had the
            // abort come after this check, its listing would see the file.) A shared file
            // is left to retention, which deletes what no checkpoint references.
            let _ = inner.store.delete(&path);
            let _ = inner
                .store
                .remove_local_dir_if_empty(&checkpoint_dir(&inner.root, w.checkpoint_id));
            return Err(StorageError::WriterClosed {
                checkpoint_id: w.checkpoint_id,
                state: WriterState::Aborted.name(),
            });
        }
        w.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((area, name.to_string()), file.clone());
        Ok(file)
    }

    /// Declares that this checkpoint references an existing shared file (incremental
    /// checkpoints): protects it from GC, then checks that it exists with the right size.
    /// An error means the file is gone and must be written again.
    pub fn reference_shared(&self, file: &FileRef) -> Result<(), StorageError> {
        check_name(FileArea::Shared, &file.name)?;
        // Protect first, then check, so a concurrent GC cannot delete the file in between.
        let added = self.register_shared(&file.name)?;
        let inner = &self.shared.storage.inner;
        let path = join(&shared_dir(&inner.root), &file.name);
        let checked = match inner.store.size(&path) {
            Err(e) => Err(e),
            Ok(None) => Err(StorageError::NotFound {
                path: path.to_string(),
            }),
            Ok(Some(actual)) if actual != file.size => Err(StorageError::SizeMismatch {
                path: path.to_string(),
                expected: file.size,
                actual,
            }),
            Ok(Some(_)) => Ok(()),
        };
        if checked.is_err() && added {
            // A failed reference protects nothing: a file this writer did not reference
            // before must not outlive it as "in flight" (found by the GC model test).
            inner
                .registry
                .lock()
                .remove_shared(self.shared.checkpoint_id, &file.name);
        }
        checked
    }

    fn register_shared(&self, name: &str) -> Result<bool, StorageError> {
        let w = &self.shared;
        w.storage
            .inner
            .registry
            .lock()
            .add_shared(w.checkpoint_id, name)
            .map_err(|state| StorageError::WriterClosed {
                checkpoint_id: w.checkpoint_id,
                state: state.name(),
            })
    }
}

impl SnapshotTarget for CheckpointWriter {
    fn checkpoint_id(&self) -> u64 {
        self.shared.checkpoint_id
    }

    fn supports_shared(&self) -> bool {
        true
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
                    "writing checkpoint file name={name} checkpoint_id={}",
                    self.shared.checkpoint_id
                ),
                e,
            )
        })
    }

    /// [`CheckpointWriter::reference_shared`]: a file missing from this directory's shared
    /// area, or there with another size, is not held (the caller writes it).
    fn holds_shared(&self, file: &FileRef) -> cairn_core::Result<bool> {
        match self.reference_shared(file) {
            Ok(()) => Ok(true),
            Err(StorageError::NotFound { .. } | StorageError::SizeMismatch { .. }) => Ok(false),
            Err(e) => Err(StateError::layer(
                format!(
                    "checking shared file name={} checkpoint_id={}",
                    file.name, self.shared.checkpoint_id
                ),
                e,
            )),
        }
    }
}

/// Reads one checkpoint's files (implements [`SnapshotSource`]): private names relative to
/// `chk-<id>/`, shared ones relative to `shared/`.
#[derive(Clone, Debug)]
pub struct CheckpointSource {
    store: Store,
    private: Path,
    shared: Path,
    _lease: Arc<RestoreLease>,
}

/// Keeps a checkpoint from GC while a restore reads it; released on drop.
struct RestoreLease {
    inner: Arc<Inner>,
    checkpoint_id: u64,
}

impl fmt::Debug for RestoreLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RestoreLease({})", self.checkpoint_id)
    }
}

impl Drop for RestoreLease {
    fn drop(&mut self) {
        self.inner.registry.lock().end_restore(self.checkpoint_id);
    }
}

impl CheckpointSource {
    fn path(&self, file: &FileRef) -> Path {
        match file.area {
            FileArea::Private => join(&self.private, &file.name),
            FileArea::Shared => join(&self.shared, &file.name),
        }
    }

    /// Reads a whole file, checking its size and CRC32 against the reference.
    pub fn read(&self, file: &FileRef) -> Result<Bytes, StorageError> {
        check_name(file.area, &file.name)?;
        let path = self.path(file);
        let bytes = read_checked(&self.store, &path, file)?;
        check_crc32(&path, file, &bytes)?;
        Ok(bytes)
    }
}

impl SnapshotSource for CheckpointSource {
    /// [`CheckpointSource::read`]; a damaged canonical state file's or changelog segment's
    /// error also says where the damage is.
    fn read_file(&self, file: &FileRef) -> cairn_core::Result<Bytes> {
        read_for_restore(
            self.read(file),
            "reading checkpoint file",
            &self.path(file),
            || read_checked(&self.store, &self.path(file), file).ok(),
        )
    }
}

/// Checks bytes read for `file` against the reference's CRC32 (their size is checked by
/// `read_checked`). Restores read every byte of a file they use through this check, so a
/// file damaged or replaced anywhere (even in blocks a restore would not decode, such as
/// the key groups an incremental checkpoint takes from a newer file) is an error.
pub(crate) fn check_crc32(path: &Path, file: &FileRef, bytes: &[u8]) -> Result<(), StorageError> {
    let actual = crc32fast::hash(bytes);
    if actual != file.crc32 {
        return Err(StorageError::ChecksumMismatch {
            path: path.to_string(),
            expected: file.crc32,
            actual,
        });
    }
    Ok(())
}

/// The error of a restore read (`what`: what was being done). A checksum mismatch in what
/// looks like a canonical state file or a changelog segment is located by the format's
/// reader: its error, which names the offset of the damaged block or field, becomes the
/// source.
pub(crate) fn read_for_restore(
    read: Result<Bytes, StorageError>,
    what: &str,
    path: &Path,
    damaged: impl FnOnce() -> Option<Bytes>,
) -> cairn_core::Result<Bytes> {
    let e = match read {
        Ok(bytes) => return Ok(bytes),
        Err(e @ StorageError::ChecksumMismatch { .. }) => e,
        Err(e) => return Err(StateError::layer(what, e)),
    };
    let located = damaged().and_then(|bytes| locate_damage(bytes, path.as_ref()));
    match located {
        Some(format_error) => Err(StateError::layer(format!("{what}: {e}"), format_error)),
        None => Err(StateError::layer(what, e)),
    }
}

/// Bits in which a file's magic may differ from a format's and still be read as that
/// format to locate the damage.
const MAX_MAGIC_BIT_ERRORS: u32 = 2;

/// The first error the reader of the format `bytes` look like (a state file or a changelog
/// segment: the nearer magic, give or take a flipped bit or two) finds in them.
fn locate_damage(bytes: Bytes, path: &str) -> Option<cairn_format::FormatError> {
    let differing_bits = |magic: &[u8; 8]| -> Option<u32> {
        let head = bytes.get(..magic.len())?;
        Some(
            head.iter()
                .zip(magic)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum(),
        )
    };
    let state_file = differing_bits(&cairn_format::STATE_FILE_MAGIC)?;
    let segment = differing_bits(&cairn_format::CHANGELOG_MAGIC)?;
    if state_file.min(segment) > MAX_MAGIC_BIT_ERRORS {
        return None;
    }
    if state_file <= segment {
        cairn_format::StateFileReader::open(bytes, path)
            .and_then(|r| r.verify_all())
            .err()
    } else {
        cairn_format::ChangelogSegmentReader::open(bytes, path)
            .and_then(|r| r.verify_all())
            .err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::StateKind;
    use cairn_format::{EntryRef, FileState};

    fn state_file() -> Vec<u8> {
        let states = vec![FileState {
            name: "v".into(),
            kind: StateKind::Value,
        }];
        let mut w = cairn_format::StateFileWriter::new(states).unwrap();
        for kg in [1, 2] {
            w.add(&EntryRef {
                key_group: kg,
                state: 0,
                key: b"k",
                namespace: b"",
                user_key: None,
                value: b"v",
            })
            .unwrap();
        }
        w.finish().unwrap()
    }

    /// Found by the corruption matrix (tests/corruption_matrix.rs): a restore read only the
    /// blocks of the key groups it needed, so a shared file damaged in a key group that an
    /// incremental checkpoint takes from a newer file restored without an error.
    #[test]
    fn restore_reads_check_the_whole_file_crc_and_locate_state_file_damage() {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let writer = storage.begin_checkpoint(1).unwrap();
        let good = state_file();
        let file = writer
            .write(FileArea::Shared, "s/1.state", good.clone())
            .unwrap();
        let source = storage.source(1);
        assert_eq!(&source.read_file(&file).unwrap()[..], &good[..]);
        let mut bad = good.clone();
        let middle = bad.len() / 2;
        bad[middle] ^= 0x10;
        storage
            .inner
            .store
            .put(&source.path(&file), Bytes::from(bad))
            .unwrap();
        let e = source.read(&file).unwrap_err();
        assert!(matches!(e, StorageError::ChecksumMismatch { .. }), "{e}");
        let e = source.read_file(&file).unwrap_err().to_string();
        assert!(e.contains("file has wrong checksum"), "{e}");
        assert!(e.contains("corrupt state file"), "{e}");
        assert!(e.contains("path=shared/s/1.state offset="), "{e}");
        // Files of other kinds: the checksum error alone.
        let other = writer
            .write(FileArea::Shared, "s/OPTIONS", b"options".to_vec())
            .unwrap();
        storage
            .inner
            .store
            .put(&source.path(&other), Bytes::from_static(b"optionz"))
            .unwrap();
        let e = source.read_file(&other).unwrap_err().to_string();
        assert!(e.contains("file has wrong checksum"), "{e}");
        assert!(!e.contains("offset="), "{e}");
    }

    /// Found by the corruption matrix's changelog checkpoint: a damaged changelog segment
    /// failed the restore with the whole-file checksum error alone, naming no offset.
    #[test]
    fn restore_reads_locate_changelog_segment_damage() {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let writer = storage.begin_checkpoint(1).unwrap();
        let states = vec![FileState {
            name: "v".into(),
            kind: StateKind::Value,
        }];
        let mut w = cairn_format::ChangelogSegmentWriter::new(states, 1).unwrap();
        w.add(&cairn_format::ChangelogRecord {
            key_group: 3,
            state: 0,
            op: cairn_format::ChangelogOp::Set,
            key: b"k",
            namespace: b"",
            user_key: None,
            value: Some(b"v"),
        })
        .unwrap();
        let good = w.finish().unwrap();
        let file = writer
            .write(FileArea::Shared, "changelog/1.cls", good.clone())
            .unwrap();
        let source = storage.source(1);
        // A flipped bit in the record (the block starts after the 16-byte header and the
        // 10-byte state table; the record after the block's 24-byte header), then one in
        // the magic.
        for (byte, located, offset) in [
            (52, "record block checksum mismatch", 26),
            (0, "bad magic", 0),
        ] {
            let mut bad = good.clone();
            bad[byte] ^= 0x01;
            storage
                .inner
                .store
                .put(&source.path(&file), Bytes::from(bad))
                .unwrap();
            let e = source.read_file(&file).unwrap_err().to_string();
            assert!(e.contains("file has wrong checksum"), "{e}");
            assert!(e.contains("corrupt changelog segment"), "{e}");
            assert!(e.contains(located), "{e}");
            assert!(
                e.contains(&format!("path=shared/changelog/1.cls offset={offset}")),
                "{e}"
            );
        }
    }
}
