//! `state-dump verify`: every referenced file present with the size and whole-file CRC32
//! the manifest records, every block of every canonical state file checked, every
//! native RocksDB handle whose files are intact opened and read through (RocksDB checks its
//! block checksums; a file it rejects is named), and every changelog segment checked
//! against the manifest's size, CRC32, first sequence number and record count and decoded
//! record by record (`cairn_changelog::read_segment`; a damaged block is named by offset).
//! A changelog handle's materialized files are checked like the other kinds.
//!
//! Values of states with a TTL (encoding `cairn-ttl1+…`, `format-spec/README.md`, "Values
//! of states with a TTL") are checked on the way for the one defect that needs no schema:
//! every value, list element and map value must hold its 8-byte stamp. The entries of
//! canonical state files, native RocksDB handles and changelog segments are already read
//! for their checksums (a segment's records are checked as `read_segment` decodes them),
//! so this costs a length check per value. Nothing is decoded beyond that.
//! Each state's short values in one file are one finding that names the first one read
//! (key group, key, user key) and ends `short_values=N` when there are more. A native
//! handle's values are named by the snapshot, as RocksDB does not say which of the
//! handle's files holds an entry.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cairn_core::{
    ChangelogSegment, CodecIdentity, FileRef, KeyGroup, KeyGroupRange, KeyedData, KeyedStateHandle,
    SnapshotType, StateKind, StateMeta, TTL_ENCODING_PREFIX,
};
use cairn_format::{
    decode_list, ChangelogOp, ChangelogRecord, EntryRef, FormatError, StateFileReader,
};
use serde::Serialize;

use crate::changelog::verify_segment;
use crate::error::{from_format, DumpError};
use crate::open::Snapshot;
use crate::progress::{NoProgress, Progress};
use crate::scan::{count_native, scan_handle};
use crate::schema_decode::{raw, ttl_value_too_short, Decoder, TTL_STAMP_LEN};
use crate::table;

/// One problem `verify` found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub path: String,
    /// Where in the file, when known.
    pub offset: Option<u64>,
    /// What is wrong.
    pub problem: String,
}

/// What `verify` found.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    /// The snapshot's directory.
    pub path: String,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// Its id.
    pub id: u64,
    /// Distinct files checked.
    pub files: usize,
    /// Their bytes (as the manifest records them).
    pub bytes: u64,
    /// Entries read from canonical state files and native RocksDB handles.
    pub entries: u64,
    /// Problems; empty when the snapshot is clean.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// The human form.
    pub fn render(&self) -> String {
        let head = format!(
            "{} {} at {}: {} files, {} bytes, {} entries checked",
            self.kind, self.id, self.path, self.files, self.bytes, self.entries
        );
        if self.is_clean() {
            return format!("{head}: clean\n");
        }
        let rows: Vec<Vec<String>> = self
            .findings
            .iter()
            .map(|f| {
                vec![
                    f.path.clone(),
                    f.offset.map_or("-".into(), |o| o.to_string()),
                    f.problem.clone(),
                ]
            })
            .collect();
        format!(
            "{head}: {} problem(s)\n{}",
            self.findings.len(),
            table::render(&["FILE", "OFFSET", "PROBLEM"], &rows)
        )
    }
}

fn finding(e: &DumpError, path: &str) -> Finding {
    match e {
        DumpError::Corrupt {
            kind,
            offset,
            detail,
            path,
        } => Finding {
            path: path.clone(),
            offset: Some(*offset),
            problem: format!("corrupt {kind}: {detail}"),
        },
        DumpError::Missing { path } => Finding {
            path: path.clone(),
            offset: None,
            problem: "missing: referenced by the manifest but not found".into(),
        },
        other => Finding {
            path: path.to_string(),
            offset: None,
            problem: other.one_line(),
        },
    }
}

fn format_finding(e: FormatError, path: &str) -> Finding {
    finding(&from_format(e, path), path)
}

/// What a file is, for the checks `verify` runs on it.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// A canonical state file: every block is checked.
    Canonical,
    /// A changelog segment of this changelog handle.
    Segment(&'a KeyedStateHandle, &'a ChangelogSegment),
    /// A native RocksDB file: size and CRC32 here, blocks when its handle is read.
    Other,
}

/// A file to check: what it is, the operator and handle it was first found in, and the
/// states of every handle referencing it by name (a canonical file's states must be among
/// them).
struct Target<'a> {
    kind: Kind<'a>,
    uid: &'a str,
    handle: &'a KeyedStateHandle,
    states: BTreeMap<&'a str, &'a StateMeta>,
}

/// The handles whose files hold entries: `h` itself, or a changelog handle's materialized
/// handles.
fn leaves(h: &KeyedStateHandle) -> Vec<&KeyedStateHandle> {
    match &h.data {
        KeyedData::Changelog { materialized, .. } => materialized.iter().collect(),
        _ => vec![h],
    }
}

/// Whether the values of state `m` carry a TTL stamp.
fn has_ttl(m: &StateMeta) -> bool {
    m.value.encoding.starts_with(TTL_ENCODING_PREFIX)
}

/// Why `value` (a list value when `list`) cannot be that of a state with a TTL: a value or
/// list element too short for its stamp. A list value that does not decode is left alone
/// (`entries` shows it raw; its bytes are not this check's to judge).
fn short_ttl_value(list: bool, value: &[u8]) -> Option<String> {
    if !list {
        return (value.len() < TTL_STAMP_LEN).then(|| ttl_value_too_short(value.len()));
    }
    let elements = decode_list(value).ok()?;
    let n = elements.len();
    let (i, e) = elements
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() < TTL_STAMP_LEN)?;
    Some(format!(
        "list element {i} of {n}: {}",
        ttl_value_too_short(e.len())
    ))
}

/// The values too short for their TTL stamp found in one file or native handle, by state:
/// the first one's description and how many there are.
struct TtlCheck<'a> {
    uid: &'a str,
    key_codec: &'a CodecIdentity,
    short: BTreeMap<String, (String, u64)>,
}

impl<'a> TtlCheck<'a> {
    fn new(uid: &'a str, h: &'a KeyedStateHandle) -> Self {
        Self {
            uid,
            key_codec: &h.key_codec,
            short: BTreeMap::new(),
        }
    }

    /// Checks the value of one entry or changelog record of state `m` (a list value when
    /// `list`); a state without a TTL is not looked at.
    fn value(&mut self, m: &StateMeta, list: bool, at: &EntryRef<'_>) {
        if !has_ttl(m) {
            return;
        }
        let Some(problem) = short_ttl_value(list, at.value) else {
            return;
        };
        let (first, count) = self.short.entry(m.name.clone()).or_default();
        *count += 1;
        if *count == 1 {
            *first = describe(problem, self.key_codec, m, at);
        }
    }

    /// Checks the value of changelog record `r` of state `m`: a set or map put carries one
    /// value, a list append or set a list value; other records carry none.
    fn record(&mut self, m: &StateMeta, r: &ChangelogRecord<'_>) {
        let Some(value) = r.value else {
            return;
        };
        let list = match r.op {
            ChangelogOp::ListAppend | ChangelogOp::ListSet => true,
            ChangelogOp::Set | ChangelogOp::MapPut => false,
            _ => return,
        };
        let at = EntryRef {
            key_group: r.key_group,
            state: r.state,
            key: r.key,
            namespace: r.namespace,
            user_key: r.user_key,
            value,
        };
        self.value(m, list, &at);
    }

    /// One finding in `path` per state with short values.
    fn findings(self, path: &str, out: &mut Vec<Finding>) {
        for (state, (first, count)) in self.short {
            let more = if count > 1 {
                format!(" short_values={count}")
            } else {
                String::new()
            };
            out.push(Finding {
                path: path.to_string(),
                offset: None,
                problem: format!(
                    "damaged value of state {state}: {first} uid={}{more}",
                    self.uid
                ),
            });
        }
    }
}

/// `problem`, then which entry as `entries` names it: key group, key and user key decoded
/// (JSON) by their codecs, or raw.
fn describe(
    problem: String,
    key_codec: &CodecIdentity,
    m: &StateMeta,
    at: &EntryRef<'_>,
) -> String {
    let shown =
        |id: &CodecIdentity, b: &[u8]| Decoder::for_codec(id).decode(b).unwrap_or_else(|_| raw(b));
    let mut d = format!(
        "{problem} key_group={} key={}",
        at.key_group,
        shown(key_codec, at.key)
    );
    if let Some(uk) = at.user_key {
        let uk = m
            .user_key
            .as_ref()
            .map_or_else(|| raw(uk), |id| shown(id, uk));
        d.push_str(&format!(" user_key={uk}"));
    }
    d
}

/// Checks every file of the snapshot. Problems in files are findings (the report is not
/// clean); only failures to read the manifest itself are errors.
pub fn verify(s: &Snapshot, progress: &dyn Progress) -> Result<VerifyReport, DumpError> {
    let m = &s.manifest;
    let handles: Vec<(&str, &KeyedStateHandle)> = m
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter().map(move |st| (o.uid.as_str(), st)))
        .filter_map(|(uid, st)| st.keyed.as_ref().map(|h| (uid, h)))
        .collect();
    let mut files: HashMap<&FileRef, Target<'_>> = HashMap::new();
    for &(uid, top) in &handles {
        for h in leaves(top) {
            let kind = match h.data {
                KeyedData::Canonical { .. } => Kind::Canonical,
                _ => Kind::Other,
            };
            for f in h.files() {
                let t = files.entry(f).or_insert_with(|| Target {
                    kind,
                    uid,
                    handle: h,
                    states: BTreeMap::new(),
                });
                for st in &h.states {
                    t.states.entry(st.name.as_str()).or_insert(st);
                }
            }
        }
        if let KeyedData::Changelog { segments, .. } = &top.data {
            for seg in segments {
                files.entry(&seg.file).or_insert_with(|| Target {
                    kind: Kind::Segment(top, seg),
                    uid,
                    handle: top,
                    states: BTreeMap::new(),
                });
            }
        }
    }
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by_key(|(f, _)| s.file_path(f));
    progress.start("verify", files.len() as u64);
    let mut findings = Vec::new();
    let mut entries = 0u64;
    for (file, t) in &files {
        let file: &FileRef = file;
        let path = s.file_path(file);
        progress.inc(1);
        if let Kind::Segment(h, seg) = t.kind {
            // The values of states with a TTL as the records are decoded: the segment is
            // read once.
            let mut ttl = TtlCheck::new(t.uid, h);
            match verify_segment(s, h, seg, &mut |m, r| ttl.record(m, r)) {
                Ok(n) => {
                    entries += n;
                    ttl.findings(&path, &mut findings);
                }
                Err(e) => findings.push(finding(&e, &path)),
            }
            continue;
        }
        // Read without the CRC32 check, so the block checks below locate damage.
        let (bytes, crc) = match s.read_unchecked(file) {
            Ok(b) => b,
            Err(e) => {
                findings.push(finding(&e, &path));
                continue;
            }
        };
        let crc_ok = crc == file.crc32;
        let before = findings.len();
        let mut ttl = TtlCheck::new(t.uid, t.handle);
        if matches!(t.kind, Kind::Canonical) {
            match StateFileReader::open(bytes, &path) {
                Err(e) => findings.push(format_finding(e, &path)),
                Ok(r) => {
                    if let Some(extra) = r
                        .states()
                        .iter()
                        .find(|fs| !t.states.contains_key(fs.name.as_str()))
                    {
                        findings.push(Finding {
                            path: path.clone(),
                            offset: None,
                            problem: format!(
                                "the state file holds state {} that the manifest does not list",
                                extra.name
                            ),
                        });
                    }
                    // Every block and entry, as `verify_all` reads them, and the values of
                    // states with a TTL on the way.
                    let metas: Vec<Option<&StateMeta>> = r
                        .states()
                        .iter()
                        .map(|fs| t.states.get(fs.name.as_str()).copied())
                        .collect();
                    let all = KeyGroupRange::new(0, KeyGroup::MAX);
                    let scanned = r.scan(all, |e| -> Result<(), FormatError> {
                        if let Some(m) = metas.get(e.state as usize).copied().flatten() {
                            ttl.value(m, m.kind == StateKind::List, &e);
                        }
                        Ok(())
                    });
                    match scanned {
                        Ok(()) => entries += r.entry_count(),
                        Err(e) => findings.push(format_finding(e, &path)),
                    }
                }
            }
        }
        if !crc_ok && findings.len() == before {
            // The blocks verify (or the file is not canonical) but the file is not the one
            // the manifest recorded.
            findings.push(Finding {
                path: path.clone(),
                offset: Some(0),
                problem: format!(
                    "whole-file checksum mismatch: the manifest says crc32 {:#010x}, found {crc:#010x}",
                    file.crc32
                ),
            });
        }
        ttl.findings(&path, &mut findings);
    }
    // Native handles whose files are all present and intact: read every entry.
    let damaged: BTreeSet<String> = findings.iter().map(|f| f.path.clone()).collect();
    let mut seen = HashSet::new();
    for (uid, h) in handles
        .iter()
        .flat_map(|&(uid, h)| leaves(h).into_iter().map(move |h| (uid, h)))
        .filter(|(_, h)| matches!(h.data, KeyedData::RocksNative { .. }))
    {
        if !seen.insert(h) || h.files().any(|f| damaged.contains(&s.file_path(f))) {
            continue;
        }
        let mut ttl = TtlCheck::new(uid, h);
        let read = if h.states.iter().any(has_ttl) {
            let mut n = 0u64;
            scan_handle(s, h, None, &NoProgress, &mut |e| {
                n += 1;
                ttl.value(e.state, e.state.kind == StateKind::List, &e.entry);
                Ok(true)
            })
            .map(|_| n)
        } else {
            count_native(s, h, &NoProgress)
        };
        match read {
            Ok(n) => entries += n,
            Err(e) => {
                let path = match &e {
                    DumpError::Data { path, .. } => path.clone(),
                    _ => s.location.clone(),
                };
                findings.push(finding(&e, &path));
            }
        }
        // RocksDB merges the handle's files: which one holds a value is not known.
        ttl.findings(&s.location, &mut findings);
    }
    progress.finish();
    Ok(VerifyReport {
        path: s.location.clone(),
        kind: match m.snapshot_type {
            SnapshotType::Checkpoint => "checkpoint",
            SnapshotType::Savepoint => "savepoint",
        },
        id: m.checkpoint_id,
        files: files.len(),
        bytes: files.iter().map(|(f, _)| f.size).sum(),
        entries,
        findings,
    })
}
