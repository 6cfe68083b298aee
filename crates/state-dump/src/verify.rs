//! `state-dump verify`: every referenced file present with the size and whole-file CRC32
//! the manifest records, every block of every canonical state file checked, every
//! native RocksDB handle whose files are intact opened and read through (RocksDB checks its
//! block checksums; a file it rejects is named), and every changelog segment checked
//! against the manifest's size, CRC32, first sequence number and record count and decoded
//! record by record (`cairn_changelog::read_segment`; a damaged block is named by offset).
//! A changelog handle's materialized files are checked like the other kinds.

use std::collections::{BTreeSet, HashMap, HashSet};

use cairn_core::{ChangelogSegment, FileRef, KeyedData, KeyedStateHandle, SnapshotType};
use cairn_format::{FormatError, StateFileReader};
use serde::Serialize;

use crate::changelog::verify_segment;
use crate::error::{from_format, DumpError};
use crate::open::Snapshot;
use crate::progress::{NoProgress, Progress};
use crate::scan::count_native;
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

/// The handles whose files hold entries: `h` itself, or a changelog handle's materialized
/// handles.
fn leaves(h: &KeyedStateHandle) -> Vec<&KeyedStateHandle> {
    match &h.data {
        KeyedData::Changelog { materialized, .. } => materialized.iter().collect(),
        _ => vec![h],
    }
}

/// Checks every file of the snapshot. Problems in files are findings (the report is not
/// clean); only failures to read the manifest itself are errors.
pub fn verify(s: &Snapshot, progress: &dyn Progress) -> Result<VerifyReport, DumpError> {
    let m = &s.manifest;
    let handles: Vec<&KeyedStateHandle> = m
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .filter_map(|st| st.keyed.as_ref())
        .collect();
    // Every distinct file, with what it is and the state names the handles referencing it
    // list (a canonical file's states must be among them).
    let mut files: HashMap<&FileRef, (Kind<'_>, BTreeSet<&str>)> = HashMap::new();
    for &top in &handles {
        for h in leaves(top) {
            let kind = match h.data {
                KeyedData::Canonical { .. } => Kind::Canonical,
                _ => Kind::Other,
            };
            for f in h.files() {
                let e = files.entry(f).or_insert((kind, BTreeSet::new()));
                e.1.extend(h.states.iter().map(|st| st.name.as_str()));
            }
        }
        if let KeyedData::Changelog { segments, .. } = &top.data {
            for seg in segments {
                files
                    .entry(&seg.file)
                    .or_insert((Kind::Segment(top, seg), BTreeSet::new()));
            }
        }
    }
    let mut files: Vec<_> = files.into_iter().collect();
    files.sort_by_key(|(f, _)| s.file_path(f));
    progress.start("verify", files.len() as u64);
    let mut findings = Vec::new();
    let mut entries = 0u64;
    for (file, (kind, states)) in &files {
        let file: &FileRef = file;
        let path = s.file_path(file);
        progress.inc(1);
        if let Kind::Segment(h, seg) = kind {
            match verify_segment(s, h, seg) {
                Ok(n) => entries += n,
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
        if matches!(kind, Kind::Canonical) {
            match StateFileReader::open(bytes, &path) {
                Err(e) => findings.push(format_finding(e, &path)),
                Ok(r) => {
                    if let Some(extra) = r
                        .states()
                        .iter()
                        .find(|fs| !states.contains(fs.name.as_str()))
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
                    match r.verify_all() {
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
    }
    // Native handles whose files are all present and intact: read every entry.
    let damaged: BTreeSet<String> = findings.iter().map(|f| f.path.clone()).collect();
    let mut seen = HashSet::new();
    for h in handles
        .iter()
        .flat_map(|h| leaves(h))
        .filter(|h| matches!(h.data, KeyedData::RocksNative { .. }))
    {
        if !seen.insert(h) || h.files().any(|f| damaged.contains(&s.file_path(f))) {
            continue;
        }
        match count_native(s, h, &NoProgress) {
            Ok(n) => entries += n,
            Err(e) => {
                let path = match &e {
                    DumpError::Data { path, .. } => path.clone(),
                    _ => s.location.clone(),
                };
                findings.push(finding(&e, &path));
            }
        }
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
