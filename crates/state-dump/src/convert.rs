//! `state-dump convert`: any checkpoint — canonical (full or incremental, with files spread
//! over `chk-*/` and `shared/`), native RocksDB (incremental, its SST files in `shared/`) or
//! changelog (a materialized snapshot of either kind plus segments, replayed by
//! `cairn_changelog::changelog_entries`) — or savepoint to a self-contained canonical
//! savepoint, offline, that every backend restores.
//!
//! Each subtask's key groups are re-encoded into one new private state file (the entries are
//! copied as bytes, never decoded, so no program types are needed; a native handle is read
//! in canonical form by `cairn_rocksdb::scan_native_handle` from a scratch copy under the
//! temporary directory); operator state is copied as is; the manifest is written last by
//! `cairn-storage`'s savepoint writer.

use std::path::{Component, Path, PathBuf};

use cairn_core::{
    is_valid_file_name, CanonicalFile, FileArea, KeyGroup, KeyedData, KeyedStateHandle,
    SnapshotType,
};
use cairn_format::{
    EntryRef, FileState, Manifest, OperatorManifest, StateFileWriter, SubtaskManifest,
};
use cairn_storage::{create_savepoint, SavepointWriter};
use serde::Serialize;

use crate::error::{from_storage, DumpError};
use crate::open::{check_readable, checkpoint_id_of, is_local_job_root, object_display, Snapshot};
use crate::progress::Progress;
use crate::scan::{file_count, scan_handle};

/// What `convert` wrote.
#[derive(Debug, Serialize)]
pub struct ConvertReport {
    /// The snapshot converted.
    pub source: String,
    /// The savepoint directory written.
    pub out: String,
    /// The savepoint id (the source's id).
    pub id: u64,
    /// Operators.
    pub operators: usize,
    /// State files written.
    pub files: usize,
    /// Keyed entries copied.
    pub entries: u64,
    /// Bytes of the state files written.
    pub bytes: u64,
}

impl ConvertReport {
    /// The human form.
    pub fn render(&self) -> String {
        format!(
            "wrote savepoint {} to {}: {} operators, {} state files, {} entries, {} bytes (from {})\n",
            self.id, self.out, self.operators, self.files, self.entries, self.bytes, self.source
        )
    }
}

/// A file-name segment for `uid`: `[A-Za-z0-9._-]` kept, everything else `_`.
fn segment(uid: &str) -> String {
    let s: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if is_valid_file_name(&s) {
        s
    } else {
        "op".into()
    }
}

/// One buffered entry: (state index, key, namespace, user key, value).
type Owned = (u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

fn flush(
    w: &mut StateFileWriter,
    kg: KeyGroup,
    buf: &mut Vec<Owned>,
    path: &str,
) -> Result<(), DumpError> {
    buf.sort();
    for (state, key, namespace, user_key, value) in buf.drain(..) {
        w.add(&EntryRef {
            key_group: kg,
            state,
            key: &key,
            namespace: &namespace,
            user_key: user_key.as_deref(),
            value: &value,
        })
        .map_err(|e| DumpError::data(path, format!("re-encoding failed: {e}")))?;
    }
    Ok(())
}

/// Re-encodes one subtask's keyed state into one state file and writes it.
fn convert_handle(
    s: &Snapshot,
    h: &KeyedStateHandle,
    name: &str,
    writer: &SavepointWriter,
    out_dir: &str,
    progress: &dyn Progress,
    entries: &mut u64,
) -> Result<KeyedStateHandle, DumpError> {
    let out_path = format!("{}/{name}", out_dir.trim_end_matches('/'));
    let states: Vec<FileState> = h
        .states
        .iter()
        .map(|m| FileState {
            name: m.name.clone(),
            kind: m.kind,
        })
        .collect();
    let mut w = StateFileWriter::new(states)
        .map_err(|e| DumpError::data(&out_path, format!("re-encoding failed: {e}")))?;
    let mut buf: Vec<Owned> = Vec::new();
    let mut current: Option<KeyGroup> = None;
    scan_handle(s, h, None, progress, &mut |e| {
        if current != Some(e.entry.key_group) {
            if let Some(kg) = current {
                flush(&mut w, kg, &mut buf, &out_path)?;
            }
            current = Some(e.entry.key_group);
        }
        let index = h
            .states
            .iter()
            .position(|m| m.name == e.state.name)
            .unwrap_or_default() as u32;
        buf.push((
            index,
            e.entry.key.to_vec(),
            e.entry.namespace.to_vec(),
            e.entry.user_key.map(<[u8]>::to_vec),
            e.entry.value.to_vec(),
        ));
        *entries += 1;
        Ok(true)
    })?;
    if let Some(kg) = current {
        flush(&mut w, kg, &mut buf, &out_path)?;
    }
    let bytes = w
        .finish()
        .map_err(|e| DumpError::data(&out_path, format!("re-encoding failed: {e}")))?;
    let file = writer
        .write(FileArea::Private, name, bytes)
        .map_err(|e| from_storage(e, &|_| out_path.clone()))?;
    let range = h.key_group_range;
    Ok(KeyedStateHandle {
        key_group_range: range,
        key_codec: h.key_codec.clone(),
        states: h.states.clone(),
        data: KeyedData::Canonical {
            files: vec![CanonicalFile {
                file,
                key_groups: if range.is_empty() {
                    vec![]
                } else {
                    vec![range]
                },
            }],
        },
    })
}

/// Converts snapshot `s` into a canonical savepoint in directory `out` (a local path or
/// URL; it must not hold a savepoint yet).
pub fn convert(
    s: &Snapshot,
    out: &str,
    progress: &dyn Progress,
) -> Result<ConvertReport, DumpError> {
    // Refuse what cannot be converted before writing anything.
    for h in s
        .manifest
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .filter_map(|st| st.keyed.as_ref())
    {
        check_readable(h, s)?;
    }
    let shown = output_dir(out)?;
    let id = s.manifest.checkpoint_id;
    // The absolute path, so that the store's messages name the directory the user means.
    let writer = create_savepoint(&shown, id).map_err(|e| {
        from_storage(e, &|p| {
            if p.starts_with('/') {
                p.to_string()
            } else {
                object_display(&shown, p)
            }
        })
    })?;
    progress.start("convert", s.manifest.operators.iter().map(file_count).sum());
    let mut operators = Vec::new();
    let (mut files, mut entries, mut bytes) = (0usize, 0u64, 0u64);
    for (oi, op) in s.manifest.operators.iter().enumerate() {
        let mut subtasks = Vec::new();
        for (i, st) in op.subtasks.iter().enumerate() {
            let keyed = match &st.keyed {
                Some(h) => {
                    let name = format!("{oi}-{}/{i}.state", segment(&op.uid));
                    let nh = convert_handle(s, h, &name, &writer, &shown, progress, &mut entries)?;
                    files += 1;
                    bytes += nh.files().map(|f| f.size).sum::<u64>();
                    Some(nh)
                }
                None => None,
            };
            subtasks.push(SubtaskManifest {
                key_group_range: st.key_group_range,
                keyed,
                operator_state: st.operator_state.clone(),
            });
        }
        operators.push(OperatorManifest {
            uid: op.uid.clone(),
            parallelism: op.parallelism,
            max_parallelism: op.max_parallelism,
            subtasks,
        });
    }
    progress.finish();
    let manifest = Manifest {
        checkpoint_id: id,
        snapshot_type: SnapshotType::Savepoint,
        timestamp_ms: s.manifest.timestamp_ms,
        operators,
    };
    let n = manifest.operators.len();
    writer
        .publish(&manifest)
        .map_err(|e| from_storage(e, &|_| format!("{shown}/_metadata")))?;
    Ok(ConvertReport {
        source: s.location.clone(),
        out: shown,
        id,
        operators: n,
        files,
        entries,
        bytes,
    })
}

/// The output directory as shown and written: a URL as given, a local path made absolute.
/// Refuses what is no directory, and places inside a job's checkpoint directory where the
/// job or `gc` would take the savepoint for theirs (the job directory itself, one of its
/// `chk-<id>/` directories, its `shared/` directory).
fn output_dir(out: &str) -> Result<String, DumpError> {
    if out.is_empty() {
        return Err(DumpError::usage(
            "--out is empty; give the savepoint directory to write",
        ));
    }
    let local = match out.strip_prefix("file://") {
        Some(_) => url::Url::parse(out)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| {
                DumpError::usage(format!(
                    "--out is not a file URL of an absolute path path={out}"
                ))
            })?,
        None if out.contains("://") => return Ok(out.to_string()),
        None => PathBuf::from(out),
    };
    let abs = normalize(&std::path::absolute(&local).unwrap_or(local));
    let shown = abs.display().to_string();
    if abs.exists() && !abs.is_dir() {
        return Err(DumpError::usage(format!(
            "--out is not a directory; give the savepoint directory to write path={shown}"
        )));
    }
    // The nearest part of the path that exists must be a directory to create the rest in.
    if let Some(file) = abs.ancestors().skip(1).find(|a| a.exists()) {
        if !file.is_dir() {
            return Err(DumpError::usage(format!(
                "--out lies under {}, which is not a directory; give the savepoint directory to write path={shown}",
                file.display()
            )));
        }
    }
    let refuse = |what: String| {
        DumpError::usage(format!(
            "--out is {what}; give a directory outside it (a savepoint beside the job's checkpoints, as <job>/savepoint-<id>, is fine) path={shown}"
        ))
    };
    if is_local_job_root(&abs) {
        return Err(refuse(
            "a job's checkpoint directory, where a _metadata would be taken for the job's".into(),
        ));
    }
    for dir in abs.ancestors() {
        let (Some(name), Some(parent)) = (dir.file_name().and_then(|n| n.to_str()), dir.parent())
        else {
            continue;
        };
        if !is_local_job_root(parent) {
            continue;
        }
        if checkpoint_id_of(name).is_some() {
            return Err(refuse(format!(
                "inside checkpoint directory {}, which is read as a checkpoint and deleted with it",
                dir.display()
            )));
        }
        if name == "shared" {
            return Err(refuse(format!(
                "inside {}, where gc deletes every file no checkpoint references",
                dir.display()
            )));
        }
    }
    Ok(shown)
}

/// `path` without `.` and with each `..` applied to the component before it (lexically).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_valid_names() {
        assert_eq!(segment("count"), "count");
        assert_eq!(segment("a b/c"), "a_b_c");
        assert_eq!(segment(".."), "op");
        assert_eq!(segment(""), "op");
    }
}
