//! Snapshot handles: what a backend's asynchronous snapshot phase returns, what the manifest
//! records per subtask, and what restore reads. Also the two small I/O traits through which a
//! backend writes and reads snapshot files, implemented by `cairn-storage`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::codec::CodecIdentity;
use crate::error::{Result, StateError};
use crate::keygroup::KeyGroupRange;
use crate::state::StateMeta;

/// Whether a snapshot is a system-owned checkpoint or a user-owned savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnapshotType {
    /// Periodic, may be incremental and share files with other checkpoints.
    Checkpoint,
    /// User-triggered and self-contained (no shared files); canonical unless asked for in
    /// the backend's native format ([`SavepointFormat`]).
    Savepoint,
}

/// The format of a savepoint, as Flink's `SavepointFormatType`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SavepointFormat {
    /// Canonical state files (the default): restorable under either backend, at any
    /// parallelism, by a newer program, and readable by every tool.
    #[default]
    Canonical,
    /// The backend's own format, self-contained. The RocksDB backend flushes its memtables
    /// and uploads the SST files of a RocksDB checkpoint instead of reading and
    /// re-encoding every entry, so large state is faster to save and to restore (and the
    /// savepoint is larger: upper-level files, not yet compacted); only the
    /// RocksDB backend restores it (at any parallelism), and `state-dump convert` turns it
    /// into a canonical one. The heap backend has no other format: it writes canonical
    /// files.
    Native,
}

/// What the synchronous phase is asked to capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// The checkpoint (or savepoint) id; strictly increasing within a job.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub snapshot_type: SnapshotType,
    /// Write only what changed since the last completed checkpoint (checkpoints only;
    /// savepoints are always full).
    pub incremental: bool,
    /// The format of a savepoint (checkpoints ignore it).
    pub savepoint_format: SavepointFormat,
}

impl SnapshotOptions {
    /// A full checkpoint.
    pub fn full_checkpoint(checkpoint_id: u64) -> Self {
        Self {
            checkpoint_id,
            snapshot_type: SnapshotType::Checkpoint,
            incremental: false,
            savepoint_format: SavepointFormat::Canonical,
        }
    }
    /// An incremental checkpoint.
    pub fn incremental_checkpoint(checkpoint_id: u64) -> Self {
        Self {
            incremental: true,
            ..Self::full_checkpoint(checkpoint_id)
        }
    }
    /// A canonical savepoint.
    pub fn savepoint(checkpoint_id: u64) -> Self {
        Self::savepoint_as(checkpoint_id, SavepointFormat::Canonical)
    }
    /// A savepoint in `format`.
    pub fn savepoint_as(checkpoint_id: u64, format: SavepointFormat) -> Self {
        Self {
            checkpoint_id,
            snapshot_type: SnapshotType::Savepoint,
            incremental: false,
            savepoint_format: format,
        }
    }
    /// Whether this is a savepoint in the backend's native format.
    pub fn is_native_savepoint(&self) -> bool {
        self.snapshot_type == SnapshotType::Savepoint
            && self.savepoint_format == SavepointFormat::Native
    }
}

/// Where a snapshot file lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileArea {
    /// In the snapshot's own directory (`chk-<id>/` or the savepoint directory).
    Private,
    /// In the job's `shared/` directory, referenced by several checkpoints.
    Shared,
}

/// A file a snapshot references, with what verifies it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileRef {
    /// Private or shared.
    pub area: FileArea,
    /// The name relative to the area's directory: `[A-Za-z0-9._-]` segments joined by `/`.
    pub name: String,
    /// Exact size in bytes.
    pub size: u64,
    /// CRC32 (ISO-HDLC, as crc32fast) of the whole file.
    pub crc32: u32,
}

impl fmt::Display for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.area {
            FileArea::Private => write!(f, "{}", self.name),
            FileArea::Shared => write!(f, "shared/{}", self.name),
        }
    }
}

/// Whether `name` is a valid [`FileRef::name`]: non-empty `/`-separated segments of
/// `[A-Za-z0-9._-]`, none of them `.` or `..`, at most 512 bytes.
pub fn is_valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 512
        && name.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// One canonical state file and the key groups a handle reads from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CanonicalFile {
    /// The file.
    pub file: FileRef,
    /// The key groups of the handle that this file supplies (sorted, disjoint).
    pub key_groups: Vec<KeyGroupRange>,
}

/// One file of a native RocksDB checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NativeFile {
    /// Where the file is stored (SST files are shared and named by content; the
    /// instance's MANIFEST, CURRENT and OPTIONS files are private).
    pub file: FileRef,
    /// Its name inside the RocksDB directory (one segment, e.g. `000042.sst`).
    pub local_name: String,
}

/// How a subtask's keyed state is stored.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyedData {
    /// Canonical state files (`format-spec/README.md`, "State file"); every key group of the
    /// handle's range is supplied by exactly one file. Full snapshots have one file;
    /// incremental ones reference unchanged key groups in earlier checkpoints' shared files.
    Canonical {
        /// The files and which key groups each supplies.
        files: Vec<CanonicalFile>,
    },
    /// A native RocksDB checkpoint of the subtask's instance (`cairn-rocksdb`): every file
    /// of the checkpoint directory. Only the RocksDB backend restores it; the key-group
    /// range of the handle says which key groups the instance holds.
    RocksNative {
        /// The files of the checkpoint directory.
        files: Vec<NativeFile>,
    },
    /// A changelog snapshot (`cairn-changelog`): the wrapped backend's last materialized
    /// snapshots plus the changelog segments written after them, replayed in order on
    /// restore. Only a changelog backend restores it.
    Changelog {
        /// Materialized snapshots of the wrapped backend (canonical or native handles, never
        /// changelog ones). Their ranges may be wider than the handle's after a rescale;
        /// together they cover it. Empty when nothing was materialized yet (the segments
        /// then hold every change since the backend started empty).
        materialized: Vec<KeyedStateHandle>,
        /// The segments to replay on top, oldest first.
        segments: Vec<ChangelogSegment>,
    },
}

/// One changelog segment file that a [`KeyedData::Changelog`] handle replays.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChangelogSegment {
    /// The segment file (shared; its size and CRC32 say it is complete).
    pub file: FileRef,
    /// The sequence number of its first record (checked against the file's footer).
    pub first_sqn: u64,
    /// How many records it holds (checked against the file's footer).
    pub records: u64,
}

/// The keyed state of one subtask of one operator in one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyedStateHandle {
    /// The key groups this subtask owned.
    pub key_group_range: KeyGroupRange,
    /// Codec of the keys.
    pub key_codec: CodecIdentity,
    /// Every state the subtask had registered or restored, sorted by name.
    pub states: Vec<StateMeta>,
    /// Where the entries are.
    pub data: KeyedData,
}

impl KeyedStateHandle {
    /// Every file the handle references.
    pub fn files(&self) -> Box<dyn Iterator<Item = &FileRef> + '_> {
        match &self.data {
            KeyedData::Canonical { files } => Box::new(files.iter().map(|f| &f.file)),
            KeyedData::RocksNative { files } => Box::new(files.iter().map(|f| &f.file)),
            KeyedData::Changelog {
                materialized,
                segments,
            } => Box::new(
                materialized
                    .iter()
                    .flat_map(|h| h.files())
                    .chain(segments.iter().map(|s| &s.file)),
            ),
        }
    }

    /// Every file the handle references, mutably (for code that relocates files, such as
    /// a changelog backend moving a materialized snapshot into the shared area).
    pub fn files_mut(&mut self) -> Vec<&mut FileRef> {
        match &mut self.data {
            KeyedData::Canonical { files } => files.iter_mut().map(|f| &mut f.file).collect(),
            KeyedData::RocksNative { files } => files.iter_mut().map(|f| &mut f.file).collect(),
            KeyedData::Changelog {
                materialized,
                segments,
            } => {
                let mut out: Vec<&mut FileRef> = materialized
                    .iter_mut()
                    .flat_map(|h| h.files_mut())
                    .collect();
                out.extend(segments.iter_mut().map(|s| &mut s.file));
                out
            }
        }
    }
}

/// Checks the handles of a restore into operator `uid`'s backend (key codec `key_codec`,
/// `max_parallelism` key groups) and merges their state metas by name: every handle must
/// have a compatible key codec and a non-empty range within the key groups, and handles of
/// one snapshot must agree on each state's kind and codecs. Shared by every backend.
pub fn restore_metas(
    uid: &str,
    key_codec: &CodecIdentity,
    max_parallelism: u32,
    handles: &[KeyedStateHandle],
) -> Result<std::collections::BTreeMap<String, StateMeta>> {
    let mut metas = std::collections::BTreeMap::<String, StateMeta>::new();
    for h in handles {
        if !h.key_codec.is_compatible_with(key_codec) {
            return Err(StateError::IncompatibleCodec {
                uid: uid.to_string(),
                state: "(key)".to_string(),
                part: "key",
                stored: Box::new(h.key_codec.clone()),
                expected: Box::new(key_codec.clone()),
            });
        }
        if h.key_group_range.is_empty() || h.key_group_range.end > max_parallelism {
            return Err(StateError::Restore {
                reason: format!(
                    "handle key-group range {} does not fit max parallelism {max_parallelism} uid={uid}",
                    h.key_group_range
                ),
            });
        }
        for m in &h.states {
            match metas.get(&m.name) {
                Some(seen) if seen.check_compatible(m, uid, true).is_err() => {
                    let hint = if seen.kind == m.kind {
                        " (a program registered it with a new schema in some subtasks only, \
                         e.g. lazily: such a snapshot restores at its own parallelism only, \
                         where each subtask reads its own handle; register the state in \
                         open() so that every subtask migrates it)"
                    } else {
                        ""
                    };
                    return Err(StateError::Restore {
                        reason: format!(
                            "handles disagree on state {}: {seen:?} vs {m:?} uid={uid}{hint}",
                            m.name
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    metas.insert(m.name.clone(), m.clone());
                }
            }
        }
    }
    Ok(metas)
}

/// How operator list state is redistributed when the parallelism changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Redistribution {
    /// The elements of all subtasks are dealt round-robin over the new subtasks.
    Split,
    /// Every new subtask gets every element of every old subtask.
    Union,
}

/// One operator list state of one subtask, encoded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OperatorStateSnapshot {
    /// The state name, unique among the operator's operator states.
    pub name: String,
    /// How it is redistributed.
    pub mode: Redistribution,
    /// Codec of the elements.
    pub codec: CodecIdentity,
    /// The encoded elements, in list order.
    pub elements: Vec<Vec<u8>>,
}

/// A cancellation flag shared with an asynchronous snapshot phase.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, uncancelled token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where an asynchronous snapshot phase writes its files (implemented by `cairn-storage`).
///
/// Contract: when `write_file` returns `Ok`, the file is durable and complete under the
/// returned [`FileRef`]; a failed write leaves no file that a manifest references.
pub trait SnapshotTarget: Send + Sync {
    /// The id of the snapshot being written.
    fn checkpoint_id(&self) -> u64;
    /// Whether the target accepts [`FileArea::Shared`] files (savepoints do not).
    fn supports_shared(&self) -> bool;
    /// Writes `bytes` as file `name` in `area`.
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef>;
    /// Whether the target already holds the shared file `file` (its name, with its size),
    /// kept for this snapshot: the snapshot may then reference it instead of writing it.
    /// For files a backend did not see this target take, such as those of the snapshot it
    /// was restored from, which may live in another checkpoint directory. The default says
    /// no, so the caller writes the file.
    fn holds_shared(&self, file: &FileRef) -> Result<bool> {
        let _ = file;
        Ok(false)
    }
}

/// Where restore reads snapshot files from (implemented by `cairn-storage`).
pub trait SnapshotSource: Send + Sync {
    /// Reads the whole file, checking its size against the reference (checksums are checked
    /// by the decoder, block by block).
    fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes>;
}
