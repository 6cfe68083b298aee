//! `state-dump summary`: what a snapshot holds, per operator uid.

use std::collections::{BTreeSet, HashSet};

use cairn_core::{FileArea, KeyedData, Redistribution, SnapshotType};
use serde::Serialize;

use crate::error::DumpError;
use crate::open::Snapshot;
use crate::progress::Progress;
use crate::scan::open_state_file;
use crate::table;

/// The manifest format version of every snapshot this build opens (a newer one fails to
/// open with an error that says so).
pub const FORMAT_VERSION: u16 = 1;

/// What `summary` reports.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The snapshot's directory.
    pub path: String,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// The checkpoint or savepoint id.
    pub id: u64,
    /// When it was triggered, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The same as an RFC 3339 UTC time.
    pub time: String,
    /// The manifest format version.
    pub format_version: u16,
    /// How keyed state is stored: `canonical` (heap backend or any canonical savepoint),
    /// `rocksdb-native`, `changelog` (`cairn-changelog`), `mixed`, or `none`.
    pub backend: &'static str,
    /// Files referenced (distinct).
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Of which in the job's `shared/` directory.
    pub shared_files: usize,
    /// Per operator uid.
    pub operators: Vec<OperatorSummary>,
}

/// One operator in a [`Summary`].
#[derive(Debug, Serialize)]
pub struct OperatorSummary {
    /// The uid.
    pub uid: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// Its max parallelism (key groups).
    pub max_parallelism: u32,
    /// `canonical`, `rocksdb-native`, `changelog`, `mixed` or `none` (no keyed state).
    pub data: &'static str,
    /// Keyed entries (from the state files' indexes; `null` for native and changelog data,
    /// where counting needs a full read).
    pub entries: Option<u64>,
    /// Bytes of the files its keyed state references (a changelog handle's materialized
    /// files and segments included).
    pub bytes: u64,
    /// Distinct files its keyed state references (a changelog handle's materialized files
    /// and segments included).
    pub files: usize,
    /// What its changelog handles reference (absent without changelog data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changelog: Option<ChangelogSummary>,
    /// Codec of the keys.
    pub key_codec: Option<String>,
    /// Keyed states (union over subtasks).
    pub states: Vec<StateSummary>,
    /// Operator (non-keyed) states.
    pub operator_states: Vec<OperatorStateSummary>,
}

/// The files of an operator's changelog handles (distinct files over its subtasks).
#[derive(Debug, Default, Serialize)]
pub struct ChangelogSummary {
    /// Files of the materialized (canonical or native) snapshots.
    pub materialized_files: usize,
    /// Their bytes.
    pub materialized_bytes: u64,
    /// Changelog segments replayed on top.
    pub segments: usize,
    /// Their bytes.
    pub segment_bytes: u64,
    /// Records in the segments (as the manifest records them).
    pub records: u64,
}

/// One keyed state.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateSummary {
    /// The state name.
    pub name: String,
    /// Its kind.
    pub kind: &'static str,
    /// Namespace codec.
    pub namespace: String,
    /// Value codec (list element, map value, accumulator).
    pub value: String,
    /// User-key codec (map state).
    pub user_key: Option<String>,
}

/// One operator state.
#[derive(Debug, Serialize)]
pub struct OperatorStateSummary {
    /// The state name.
    pub name: String,
    /// `split` or `union`.
    pub mode: &'static str,
    /// Codec of the elements.
    pub codec: String,
    /// Elements over all subtasks.
    pub elements: usize,
}

/// Which kinds of keyed data a set of handles holds.
#[derive(Debug, Default, Clone, Copy)]
struct Kinds {
    canonical: bool,
    native: bool,
    changelog: bool,
}

impl Kinds {
    fn add(&mut self, other: Kinds) {
        self.canonical |= other.canonical;
        self.native |= other.native;
        self.changelog |= other.changelog;
    }

    fn name(self) -> &'static str {
        match (self.canonical, self.native, self.changelog) {
            (false, false, false) => "none",
            (true, false, false) => "canonical",
            (false, true, false) => "rocksdb-native",
            (false, false, true) => "changelog",
            _ => "mixed",
        }
    }
}

/// Summarizes a snapshot; reads the index of every canonical state file for the entry
/// counts (not the data blocks).
pub fn summarize(s: &Snapshot, progress: &dyn Progress) -> Result<Summary, DumpError> {
    let m = &s.manifest;
    let all: HashSet<_> = m.files().collect();
    progress.start("summary", all.len() as u64);
    let mut all_kinds = Kinds::default();
    let mut operators = Vec::new();
    for op in &m.operators {
        let mut kinds = Kinds::default();
        let mut changelog: Option<ChangelogSummary> = None;
        let (mut materialized, mut segments) = (HashSet::new(), HashSet::new());
        let mut entries = 0u64;
        let mut files = HashSet::new();
        let mut states = BTreeSet::new();
        let mut key_codec = None;
        for h in op.subtasks.iter().filter_map(|st| st.keyed.as_ref()) {
            key_codec.get_or_insert_with(|| table::codec(&h.key_codec));
            for st in &h.states {
                states.insert(StateSummary {
                    name: st.name.clone(),
                    kind: table::kind(st.kind),
                    namespace: table::codec(&st.namespace),
                    value: table::codec(&st.value),
                    user_key: st.user_key.as_ref().map(table::codec),
                });
            }
            files.extend(h.files());
            match &h.data {
                KeyedData::Changelog {
                    materialized: m,
                    segments: segs,
                } => {
                    kinds.changelog = true;
                    let c = changelog.get_or_insert_with(ChangelogSummary::default);
                    materialized.extend(m.iter().flat_map(|h| h.files()));
                    for seg in segs {
                        if segments.insert(&seg.file) {
                            c.records += seg.records;
                        }
                    }
                }
                KeyedData::Canonical { files } => {
                    kinds.canonical = true;
                    for cf in files {
                        let path = s.file_path(&cf.file);
                        let reader = open_state_file(s, &cf.file, &path)?;
                        progress.inc(1);
                        entries += reader
                            .key_groups()
                            .iter()
                            .filter(|k| cf.key_groups.iter().any(|r| r.contains(k.key_group)))
                            .map(|k| k.entries)
                            .sum::<u64>();
                    }
                }
                _ => kinds.native = true,
            }
        }
        all_kinds.add(kinds);
        if let Some(c) = &mut changelog {
            c.materialized_files = materialized.len();
            c.materialized_bytes = materialized.iter().map(|f| f.size).sum();
            c.segments = segments.len();
            c.segment_bytes = segments.iter().map(|f| f.size).sum();
        }
        let mut operator_states: Vec<OperatorStateSummary> = Vec::new();
        for st in &op.subtasks {
            for os in &st.operator_state {
                match operator_states.iter_mut().find(|o| o.name == os.name) {
                    Some(o) => o.elements += os.elements.len(),
                    None => operator_states.push(OperatorStateSummary {
                        name: os.name.clone(),
                        mode: match os.mode {
                            Redistribution::Split => "split",
                            Redistribution::Union => "union",
                        },
                        codec: table::codec(&os.codec),
                        elements: os.elements.len(),
                    }),
                }
            }
        }
        operator_states.sort_by(|a, b| a.name.cmp(&b.name));
        operators.push(OperatorSummary {
            uid: op.uid.clone(),
            parallelism: op.parallelism,
            max_parallelism: op.max_parallelism,
            data: kinds.name(),
            entries: (!kinds.native && !kinds.changelog).then_some(entries),
            bytes: files.iter().map(|f| f.size).sum(),
            files: files.len(),
            changelog,
            key_codec,
            states: states.into_iter().collect(),
            operator_states,
        });
    }
    progress.finish();
    Ok(Summary {
        path: s.location.clone(),
        kind: match m.snapshot_type {
            SnapshotType::Checkpoint => "checkpoint",
            SnapshotType::Savepoint => "savepoint",
        },
        id: m.checkpoint_id,
        timestamp_ms: m.timestamp_ms,
        time: table::time(m.timestamp_ms),
        format_version: FORMAT_VERSION,
        backend: all_kinds.name(),
        files: all.len(),
        bytes: all.iter().map(|f| f.size).sum(),
        shared_files: all.iter().filter(|f| f.area == FileArea::Shared).count(),
        operators,
    })
}

impl Summary {
    /// The human form: a header, then aligned tables.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{} {} at {}\ntime            {}\nformat version  {}\nbackend         {}\nfiles           {} ({} bytes, {} shared)\n",
            self.kind,
            self.id,
            self.path,
            self.time,
            self.format_version,
            match self.backend {
                "canonical" => "canonical (heap backend or canonical savepoint)",
                "rocksdb-native" => "rocksdb-native",
                other => other,
            },
            self.files,
            self.bytes,
            self.shared_files
        );
        let rows: Vec<Vec<String>> = self
            .operators
            .iter()
            .map(|o| {
                vec![
                    o.uid.clone(),
                    o.parallelism.to_string(),
                    o.max_parallelism.to_string(),
                    o.data.to_string(),
                    o.entries.map_or("-".into(), |e| e.to_string()),
                    o.bytes.to_string(),
                    o.files.to_string(),
                    o.key_codec.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &[
                "UID",
                "PARALLELISM",
                "MAX_PARALLELISM",
                "DATA",
                "ENTRIES",
                "BYTES",
                "FILES",
                "KEY",
            ],
            &rows,
        ));
        for o in &self.operators {
            if let Some(c) = &o.changelog {
                out.push_str(&format!(
                    "\nchangelog of {}: {} materialized files ({} bytes), {} segments ({} bytes, {} records)\n",
                    o.uid,
                    c.materialized_files,
                    c.materialized_bytes,
                    c.segments,
                    c.segment_bytes,
                    c.records
                ));
            }
            if !o.states.is_empty() {
                let rows: Vec<Vec<String>> = o
                    .states
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.kind.to_string(),
                            s.namespace.clone(),
                            s.user_key.clone().unwrap_or_else(|| "-".into()),
                            s.value.clone(),
                        ]
                    })
                    .collect();
                out.push_str(&format!("\nkeyed states of {}\n", o.uid));
                out.push_str(&table::render(
                    &["STATE", "KIND", "NAMESPACE", "USER_KEY", "VALUE"],
                    &rows,
                ));
            }
            if !o.operator_states.is_empty() {
                let rows: Vec<Vec<String>> = o
                    .operator_states
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.mode.to_string(),
                            s.codec.clone(),
                            s.elements.to_string(),
                        ]
                    })
                    .collect();
                out.push_str(&format!("\noperator states of {}\n", o.uid));
                out.push_str(&table::render(
                    &["STATE", "MODE", "CODEC", "ELEMENTS"],
                    &rows,
                ));
            }
        }
        out
    }
}
