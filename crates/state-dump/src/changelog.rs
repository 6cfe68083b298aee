//! Changelog handles (`KeyedData::Changelog`, manifest keyed-data kind 3, written by
//! `cairn-changelog`): the materialized canonical or native handles plus the changelog
//! segments written after them.
//!
//! Entries come from [`cairn_changelog::changelog_entries`], which is given this crate's
//! canonical or native scanner for the materialized part and replays the segments on top;
//! the result (held in memory, one subtask at a time) is handed out in the canonical order
//! of a state file: key group, state, key, namespace, user key.
//!
//! Before a segment is replayed it is read whole and checked here, so that an error names
//! the segment by its full path and the offset of the damage: its size (a truncated segment
//! fails at the offset where it ends), its whole-file CRC32 (a damaged block is located by
//! the segment reader, which checks each block's CRC32), and the footer's first sequence
//! number and record count against the manifest's. `cairn_changelog::read_segment` then
//! checks the same again and decodes every record.

use std::collections::HashMap;

use bytes::Bytes;
use cairn_core::{
    ChangelogSegment, FileRef, KeyGroupRange, KeyedStateHandle, SnapshotSource, StateError,
    StateMeta, MAX_MAX_PARALLELISM,
};
use cairn_format::{ChangelogRecord, ChangelogSegmentReader, EntryRef};

use crate::error::{from_format, DumpError};
use crate::open::Snapshot;
use crate::progress::Progress;
use crate::scan::{scan_handle, Entry};

/// Bytes of a segment's footer (format-spec/README.md, "Changelog segment").
const SEGMENT_FOOTER_LEN: u64 = 40;
/// Offset of `first_sqn` within the footer (after `index_offset u64`).
const FOOTER_FIRST_SQN: u64 = 8;
/// Offset of `record_count` within the footer.
const FOOTER_RECORD_COUNT: u64 = FOOTER_FIRST_SQN + 8;

/// The kind of file named in errors about segments.
const KIND: &str = "changelog segment";

/// Reads segment `seg` whole and checks it against the manifest: size, whole-file CRC32
/// (locating a damaged block), first sequence number and record count. Returns its bytes.
fn load_segment(s: &Snapshot, seg: &ChangelogSegment) -> Result<Bytes, DumpError> {
    let path = s.file_path(&seg.file);
    let (bytes, crc) = s.read_unchecked(&seg.file).map_err(|e| match e {
        // A wrong size: say what the file is.
        DumpError::Corrupt {
            kind: "file",
            path,
            offset,
            detail,
        } => DumpError::Corrupt {
            kind: KIND,
            path,
            offset,
            detail,
        },
        e => e,
    })?;
    let reader = ChangelogSegmentReader::open(bytes.clone(), &path);
    if crc != seg.file.crc32 {
        // Locate the damage if the reader can; a flip in bytes no block checksum covers
        // is the whole-file checksum's finding.
        reader
            .and_then(|r| r.verify_all())
            .map_err(|e| from_format(e, &path))?;
        return Err(DumpError::Corrupt {
            kind: KIND,
            path,
            offset: 0,
            detail: format!(
                "whole-file checksum mismatch: the manifest says crc32 {:#010x}, found {crc:#010x}",
                seg.file.crc32
            ),
        });
    }
    let reader = reader.map_err(|e| from_format(e, &path))?;
    let footer = (bytes.len() as u64).saturating_sub(SEGMENT_FOOTER_LEN);
    if reader.first_sqn() != seg.first_sqn {
        return Err(DumpError::Corrupt {
            kind: KIND,
            path,
            offset: footer + FOOTER_FIRST_SQN,
            detail: format!(
                "first sequence number differs from the manifest's first_sqn={} expected_first_sqn={}",
                reader.first_sqn(),
                seg.first_sqn
            ),
        });
    }
    if reader.record_count() != seg.records {
        return Err(DumpError::Corrupt {
            kind: KIND,
            path,
            offset: footer + FOOTER_RECORD_COUNT,
            detail: format!(
                "record count differs from the manifest's records={} expected_records={}",
                reader.record_count(),
                seg.records
            ),
        });
    }
    Ok(bytes)
}

/// Serves segments already read and checked by [`load_segment`] to `cairn-changelog`.
struct Loaded<'a> {
    snapshot: &'a Snapshot,
    segments: HashMap<&'a FileRef, Bytes>,
}

impl SnapshotSource for Loaded<'_> {
    fn read_file(&self, file: &FileRef) -> cairn_core::Result<Bytes> {
        self.segments
            .get(file)
            .cloned()
            .ok_or_else(|| StateError::Restore {
                reason: format!(
                    "changelog segment not loaded path={}",
                    self.snapshot.file_path(file)
                ),
            })
    }
}

/// Checks segment `seg` of handle `h` for `verify`: [`load_segment`], then
/// `cairn_changelog::read_segment` over every key group (every block checksum, every
/// record decoded); every state the segment's records name must be one the handle lists.
/// Each record of a listed state is handed to `visit` with that state as it is decoded, so
/// a caller checks the records' contents without reading the segment again. Returns the
/// number of records.
pub(crate) fn verify_segment(
    s: &Snapshot,
    h: &KeyedStateHandle,
    seg: &ChangelogSegment,
    visit: &mut dyn FnMut(&StateMeta, &ChangelogRecord<'_>),
) -> Result<u64, DumpError> {
    let path = s.file_path(&seg.file);
    let bytes = load_segment(s, seg)?;
    let source = Loaded {
        snapshot: s,
        segments: HashMap::from([(&seg.file, bytes)]),
    };
    let mut records = 0u64;
    let mut unknown: Option<String> = None;
    cairn_changelog::read_segment(
        seg,
        KeyGroupRange::new(0, MAX_MAX_PARALLELISM),
        &source,
        |state, _kind, r| {
            records += 1;
            match h.states.iter().find(|m| m.name == state) {
                Some(m) => visit(m, r),
                None => {
                    unknown.get_or_insert_with(|| state.to_string());
                }
            }
            Ok(())
        },
    )
    .map_err(|e| DumpError::data(&path, one_line(&e)))?;
    if let Some(state) = unknown {
        return Err(DumpError::data(
            path,
            format!("the changelog segment holds records of state {state} that the manifest does not list"),
        ));
    }
    Ok(records)
}

fn one_line(e: &StateError) -> String {
    e.to_string().replace(['\n', '\r'], " ")
}

/// One replayed entry: (key group, state index in the handle, key, namespace, user key,
/// value).
type Replayed = (u32, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// [`scan_handle`] for a changelog handle: the entries of key groups `wanted` after every
/// segment is replayed over the materialized handles, in canonical order.
pub(crate) fn scan_changelog(
    s: &Snapshot,
    h: &KeyedStateHandle,
    segments: &[ChangelogSegment],
    wanted: KeyGroupRange,
    progress: &dyn Progress,
    f: &mut dyn FnMut(Entry<'_>) -> Result<bool, DumpError>,
) -> Result<bool, DumpError> {
    let mut loaded = HashMap::new();
    for seg in segments {
        loaded.insert(&seg.file, load_segment(s, seg)?);
        progress.inc(1);
    }
    let source = Loaded {
        snapshot: s,
        segments: loaded,
    };
    let mut failed: Option<DumpError> = None;
    let result = cairn_changelog::changelog_entries(h, wanted, &source, |m, out| {
        let scanned = scan_handle(s, m, Some(wanted), progress, &mut |e| {
            out.insert(
                (
                    e.state.name.clone(),
                    e.entry.key_group,
                    e.entry.key.to_vec(),
                    e.entry.namespace.to_vec(),
                    e.entry.user_key.map(<[u8]>::to_vec),
                ),
                e.entry.value.to_vec(),
            );
            Ok(true)
        });
        scanned.map(|_| ()).map_err(|e| {
            let reason = e.one_line();
            failed.get_or_insert(e);
            StateError::Restore { reason }
        })
    });
    let entries = match (result, failed) {
        (_, Some(e)) => return Err(e),
        (Err(e), None) => {
            return Err(DumpError::data(
                s.location.clone(),
                format!(
                    "cannot replay the changelog of key groups {}: {}",
                    h.key_group_range,
                    one_line(&e)
                ),
            ))
        }
        (Ok(entries), None) => entries,
    };
    let mut rows: Vec<Replayed> = Vec::with_capacity(entries.len());
    for ((state, kg, key, ns, uk), value) in entries {
        let index = h
            .states
            .iter()
            .position(|m| m.name == state)
            .ok_or_else(|| DumpError::Corrupt {
                kind: "changelog",
                path: s.location.clone(),
                offset: 0,
                detail: format!(
                    "entry of a state the manifest does not list state={state} key_group={kg}"
                ),
            })?;
        rows.push((kg, index as u32, key, ns, uk, value));
    }
    rows.sort_unstable();
    for (kg, index, key, ns, uk, value) in &rows {
        let Some(meta) = h.states.get(*index as usize) else {
            continue;
        };
        let go_on = f(Entry {
            entry: EntryRef {
                key_group: *kg,
                state: *index,
                key,
                namespace: ns,
                user_key: uk.as_deref(),
                value,
            },
            state: meta,
            handle: h,
        })?;
        if !go_on {
            return Ok(false);
        }
    }
    Ok(true)
}
