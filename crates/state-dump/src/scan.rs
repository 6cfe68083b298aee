//! Reading the canonical entries of an operator's keyed state, in key-group order, from
//! whichever files supply each key group (full, incremental and savepoint handles alike),
//! from native RocksDB checkpoints through `cairn_rocksdb::scan_native_handle`, which
//! yields the same entries in the same order, and from changelog handles (materialized
//! handles read by the same scanners, segments replayed on top; see `changelog.rs`).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use cairn_core::{
    CanonicalFile, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle, SnapshotSource, StateError,
    StateMeta,
};
use cairn_format::{EntryRef, FormatError, OperatorManifest, StateFileReader};

use crate::error::{from_format, DumpError};
use crate::open::{check_readable, Snapshot};
use crate::progress::Progress;

/// One entry with the state it belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The entry as stored.
    pub entry: EntryRef<'a>,
    /// The state's metadata from the manifest.
    pub state: &'a StateMeta,
    /// The handle it came from (its key codec).
    pub handle: &'a KeyedStateHandle,
}

/// Either a decoder error (named with its file afterwards) or the callback's error.
enum ScanError {
    Format(FormatError),
    Dump(DumpError),
    Stop,
}

impl From<FormatError> for ScanError {
    fn from(e: FormatError) -> Self {
        ScanError::Format(e)
    }
}

/// The operator `uid` of the snapshot, or a usage error that lists the uids there are.
pub(crate) fn operator<'a>(s: &'a Snapshot, uid: &str) -> Result<&'a OperatorManifest, DumpError> {
    s.manifest.operator(uid).ok_or_else(|| {
        let uids: Vec<&str> = s
            .manifest
            .operators
            .iter()
            .map(|o| o.uid.as_str())
            .collect();
        DumpError::usage(format!(
            "no operator uid={uid} in {}; operators: {}",
            s.location,
            if uids.is_empty() {
                "(none)".to_string()
            } else {
                uids.join(", ")
            }
        ))
    })
}

/// Number of files the keyed state of `op` reads (for progress).
pub(crate) fn file_count(op: &OperatorManifest) -> u64 {
    op.subtasks
        .iter()
        .filter_map(|s| s.keyed.as_ref())
        .map(|h| h.files().count() as u64)
        .sum()
}

/// Calls `f` for every entry of operator `op` whose key group is in `only` (all when
/// `None`), subtask by subtask in key-group order, until `f` returns `Ok(false)`. Every
/// block read is checksummed. A native RocksDB handle is copied into a scratch directory
/// under the temporary directory first (its files checked against the manifest's size and
/// CRC32), read in canonical form and order, and removed.
pub fn scan_operator(
    s: &Snapshot,
    op: &OperatorManifest,
    only: Option<KeyGroupRange>,
    progress: &dyn Progress,
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, DumpError>,
) -> Result<(), DumpError> {
    for h in op.subtasks.iter().filter_map(|st| st.keyed.as_ref()) {
        if !scan_handle(s, h, only, progress, f)? {
            break;
        }
    }
    Ok(())
}

/// Like [`scan_operator`], for one keyed handle; `Ok(false)` when `f` stopped it.
pub(crate) fn scan_handle(
    s: &Snapshot,
    h: &KeyedStateHandle,
    only: Option<KeyGroupRange>,
    progress: &dyn Progress,
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, DumpError>,
) -> Result<bool, DumpError> {
    check_readable(h, s)?;
    let wanted = only.map_or(h.key_group_range, |r| r.intersect(&h.key_group_range));
    if wanted.is_empty() {
        return Ok(true);
    }
    match &h.data {
        KeyedData::Canonical { files } => scan_canonical(s, h, files, wanted, progress, f),
        KeyedData::Changelog { segments, .. } => {
            crate::changelog::scan_changelog(s, h, segments, wanted, progress, f)
        }
        _ => scan_native(s, h, wanted, progress, f),
    }
}

/// The files of a snapshot as a [`SnapshotSource`] for `cairn-rocksdb`: each read is
/// checked against the manifest's size and CRC32, and the first failure is kept as a
/// [`DumpError`] that names the file by its full path.
struct NativeSource<'a> {
    snapshot: &'a Snapshot,
    error: Mutex<Option<DumpError>>,
}

impl NativeSource<'_> {
    fn fail(&self, e: DumpError) -> StateError {
        let reason = e.one_line();
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        StateError::Restore { reason }
    }

    fn take_error(&self) -> Option<DumpError> {
        self.error.lock().ok().and_then(|mut slot| slot.take())
    }
}

impl SnapshotSource for NativeSource<'_> {
    fn read_file(&self, file: &FileRef) -> cairn_core::Result<Bytes> {
        let bytes = self.snapshot.read(file).map_err(|e| self.fail(e))?;
        let crc = crc32fast::hash(&bytes);
        if crc != file.crc32 {
            return Err(self.fail(DumpError::Corrupt {
                kind: "file",
                path: self.snapshot.file_path(file),
                offset: 0,
                detail: format!(
                    "whole-file checksum mismatch: the manifest says crc32 {:#010x}, found {crc:#010x}",
                    file.crc32
                ),
            }));
        }
        Ok(bytes)
    }
}

/// Why a native scan's callback ended it early.
enum Ended {
    /// `f` returned `Ok(false)`.
    Stopped,
    /// The scan passed the wanted key groups.
    PastRange,
    /// `f` failed, or an entry names a state the handle does not list.
    Failed(DumpError),
}

/// [`scan_handle`] for a native RocksDB handle: its files are downloaded into a scratch
/// directory under the system's temporary directory (`TMPDIR`), opened read-only and
/// scanned; the directory is removed afterwards, also on errors.
fn scan_native(
    s: &Snapshot,
    h: &KeyedStateHandle,
    wanted: KeyGroupRange,
    progress: &dyn Progress,
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, DumpError>,
) -> Result<bool, DumpError> {
    let scratch = tempfile::Builder::new()
        .prefix("state-dump-native-")
        .tempdir()
        .map_err(|e| {
            DumpError::data(
                std::env::temp_dir().display().to_string(),
                format!("cannot create a scratch directory for native RocksDB data: {e}"),
            )
        })?;
    let source = NativeSource {
        snapshot: s,
        error: Mutex::new(None),
    };
    let mut ended: Option<Ended> = None;
    let result = cairn_rocksdb::scan_native_handle(h, &source, scratch.path(), |e| {
        if e.key_group < wanted.start {
            return Ok(());
        }
        let outcome = if e.key_group >= wanted.end {
            Ended::PastRange
        } else if let Some(meta) = h.states.get(e.state as usize) {
            match f(Entry {
                entry: e,
                state: meta,
                handle: h,
            }) {
                Ok(true) => return Ok(()),
                Ok(false) => Ended::Stopped,
                Err(err) => Ended::Failed(err),
            }
        } else {
            Ended::Failed(DumpError::Corrupt {
                kind: "native checkpoint",
                path: s.location.clone(),
                offset: 0,
                detail: format!(
                    "entry of a state the manifest does not list state_index={} key_group={}",
                    e.state, e.key_group
                ),
            })
        };
        ended = Some(outcome);
        Err(StateError::Restore {
            reason: "scan ended".into(),
        })
    });
    progress.inc(h.files().count() as u64);
    // Removing the scratch directory is best effort (scan_native_handle already removed
    // what it downloaded).
    let scratch_path = scratch.path().display().to_string();
    let _ = scratch.close();
    match ended {
        Some(Ended::Stopped) => return Ok(false),
        Some(Ended::PastRange) => return Ok(true),
        Some(Ended::Failed(e)) => return Err(e),
        None => {}
    }
    if let Some(e) = source.take_error() {
        return Err(e);
    }
    match result {
        Ok(()) => Ok(true),
        Err(e) => Err(native_error(s, h, &e, &scratch_path)),
    }
}

/// A failure of RocksDB on a native handle's files, naming the file it mentions (by its
/// local name in the scratch copy under `scratch`) by its full path, else the snapshot.
fn native_error(s: &Snapshot, h: &KeyedStateHandle, e: &StateError, scratch: &str) -> DumpError {
    let detail = e.to_string().replace(['\n', '\r'], " ");
    let file = match &h.data {
        KeyedData::RocksNative { files } => files
            .iter()
            .find(|f| detail.contains(&format!("/{}", f.local_name)))
            .map(|f| s.file_path(&f.file)),
        _ => None,
    };
    let detail = strip_scratch(&detail, scratch);
    let range = h.key_group_range.to_string();
    DumpError::data(
        file.unwrap_or_else(|| s.location.clone()),
        if detail.contains(&format!("key groups {range}")) {
            format!("cannot read the native RocksDB checkpoint: {detail}")
        } else {
            format!("cannot read the native RocksDB checkpoint of key groups {range}: {detail}")
        },
    )
}

/// `detail` without the paths of the (removed) scratch copy under `scratch`: a file in it
/// is shown by its local name, the copy itself as `the scratch copy`.
fn strip_scratch(detail: &str, scratch: &str) -> String {
    let prefix = format!("{}/", scratch.trim_end_matches('/'));
    let mut out = String::with_capacity(detail.len());
    let mut rest = detail;
    while let Some(i) = rest.find(&prefix) {
        out.push_str(&rest[..i]);
        let after = &rest[i + prefix.len()..];
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(after.len());
        let tail = &after[end..];
        match tail.strip_prefix('/') {
            Some(t) => rest = t,
            None => {
                out.push_str("the scratch copy");
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads every entry of a native handle (every RocksDB block checksum is checked on the
/// way) and returns how many there are.
pub(crate) fn count_native(
    s: &Snapshot,
    h: &KeyedStateHandle,
    progress: &dyn Progress,
) -> Result<u64, DumpError> {
    let mut n = 0u64;
    scan_native(s, h, h.key_group_range, progress, &mut |_| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

/// Opens canonical state file `file` (full path `path`). A file whose whole-file CRC32
/// differs from the manifest's is an error naming the offset of the damage when the state
/// file reader finds it (a block checksum, a field), else the whole-file mismatch.
pub(crate) fn open_state_file(
    s: &Snapshot,
    file: &FileRef,
    path: &str,
) -> Result<StateFileReader, DumpError> {
    let (bytes, crc) = s.read_unchecked(file)?;
    let reader = StateFileReader::open(bytes, path);
    if crc != file.crc32 {
        reader
            .and_then(|r| r.verify_all())
            .map_err(|e| from_format(e, path))?;
        return Err(DumpError::Corrupt {
            kind: "file",
            path: path.to_string(),
            offset: 0,
            detail: format!(
                "whole-file checksum mismatch: the manifest says crc32 {:#010x}, found {crc:#010x}",
                file.crc32
            ),
        });
    }
    reader.map_err(|e| from_format(e, path))
}

/// [`scan_handle`] for canonical state files.
fn scan_canonical(
    s: &Snapshot,
    h: &KeyedStateHandle,
    files: &[CanonicalFile],
    wanted: KeyGroupRange,
    progress: &dyn Progress,
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, DumpError>,
) -> Result<bool, DumpError> {
    // (range, file) sorted by range start: key-group order across the handle's files.
    let mut parts: Vec<(KeyGroupRange, &FileRef)> = files
        .iter()
        .flat_map(|cf| cf.key_groups.iter().map(move |r| (*r, &cf.file)))
        .map(|(r, file)| (r.intersect(&wanted), file))
        .filter(|(r, _)| !r.is_empty())
        .collect();
    parts.sort_by_key(|(r, _)| r.start);
    let mut readers: HashMap<&FileRef, StateFileReader> = HashMap::new();
    for (range, file) in parts {
        let path = s.file_path(file);
        if !readers.contains_key(file) {
            let reader = open_state_file(s, file, &path)?;
            progress.inc(1);
            readers.insert(file, reader);
        }
        let Some(reader) = readers.get(file) else {
            continue;
        };
        // Map the file's state table to the manifest's states by name.
        let metas: Vec<Option<&StateMeta>> = reader
            .states()
            .iter()
            .map(|fs| h.states.iter().find(|m| m.name == fs.name))
            .collect();
        let result = reader.scan(range, |e: EntryRef<'_>| -> Result<(), ScanError> {
            let meta = metas
                .get(e.state as usize)
                .copied()
                .flatten()
                .ok_or_else(|| {
                    ScanError::Dump(DumpError::Corrupt {
                        kind: "state file",
                        path: path.clone(),
                        offset: 0,
                        detail: format!(
                        "entry of a state the manifest does not list state_index={} key_group={}",
                        e.state, e.key_group
                    ),
                    })
                })?;
            match f(Entry {
                entry: e,
                state: meta,
                handle: h,
            }) {
                Ok(true) => Ok(()),
                Ok(false) => Err(ScanError::Stop),
                Err(e) => Err(ScanError::Dump(e)),
            }
        });
        match result {
            Ok(()) => {}
            Err(ScanError::Stop) => return Ok(false),
            Err(ScanError::Format(e)) => return Err(from_format(e, &path)),
            Err(ScanError::Dump(e)) => return Err(e),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_paths_are_stripped() {
        let d = "iterate path=/t/s/cairn-native-scan-00ff cf=count: Corruption: in /t/s/cairn-native-scan-00ff/000014.sst offset 0";
        assert_eq!(
            strip_scratch(d, "/t/s"),
            "iterate path=the scratch copy cf=count: Corruption: in 000014.sst offset 0"
        );
        assert_eq!(strip_scratch("no paths", "/t/s"), "no paths");
        assert_eq!(strip_scratch("end /t/s/x", "/t/s/"), "end the scratch copy");
    }
}
