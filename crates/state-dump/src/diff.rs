//! `state-dump diff`: operators, states and entries added, removed and changed between two
//! snapshots, compared on their canonical bytes (so a checkpoint and a savepoint of the same
//! state, or two backends' snapshots — a native RocksDB checkpoint against a heap one —
//! compare equal).
//!
//! Both snapshots' entries are held in memory while comparing.

use std::collections::{BTreeMap, BTreeSet};

use cairn_core::{KeyGroup, KeyedStateHandle, StateMeta};
use cairn_format::EntryRef;
use serde::Serialize;
use serde_json::Value;

use crate::entries::Decoders;
use crate::error::DumpError;
use crate::open::Snapshot;
use crate::progress::Progress;
use crate::scan::{file_count, scan_operator, Entry};
use crate::table;

/// An entry's identity within a state: key, namespace, user key.
type EntryKey = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// One state's entries: identity → (key group, value bytes).
struct StateData {
    /// The snapshot it is in (for errors).
    location: String,
    uid: String,
    meta: StateMeta,
    handle: KeyedStateHandle,
    entries: BTreeMap<EntryKey, (KeyGroup, Vec<u8>)>,
}

type SnapshotData = BTreeMap<(String, String), StateData>;

fn load(s: &Snapshot, progress: &dyn Progress) -> Result<SnapshotData, DumpError> {
    let mut out: SnapshotData = BTreeMap::new();
    progress.start("reading", s.manifest.operators.iter().map(file_count).sum());
    for op in &s.manifest.operators {
        for h in op.subtasks.iter().filter_map(|st| st.keyed.as_ref()) {
            for m in &h.states {
                out.entry((op.uid.clone(), m.name.clone()))
                    .or_insert_with(|| StateData {
                        location: s.location.clone(),
                        uid: op.uid.clone(),
                        meta: m.clone(),
                        handle: h.clone(),
                        entries: BTreeMap::new(),
                    });
            }
        }
        scan_operator(s, op, None, progress, &mut |e| {
            if let Some(d) = out.get_mut(&(op.uid.clone(), e.state.name.clone())) {
                d.entries.insert(
                    (
                        e.entry.key.to_vec(),
                        e.entry.namespace.to_vec(),
                        e.entry.user_key.map(<[u8]>::to_vec),
                    ),
                    (e.entry.key_group, e.entry.value.to_vec()),
                );
            }
            Ok(true)
        })?;
    }
    progress.finish();
    Ok(out)
}

/// A state-level difference.
#[derive(Debug, Serialize)]
pub struct StateDiff {
    /// The operator uid.
    pub uid: String,
    /// The state name.
    pub state: String,
    /// `added`, `removed`, `changed` or `same`.
    pub change: &'static str,
    /// Entries only in B.
    pub entries_added: usize,
    /// Entries only in A.
    pub entries_removed: usize,
    /// Entries in both with other values.
    pub entries_changed: usize,
    /// Kind or codec changes (`value: u64@v1 -> u64@v2`).
    pub schema_changes: Vec<String>,
}

/// An entry-level difference.
#[derive(Debug, Serialize)]
pub struct EntryDiff {
    /// The operator uid.
    pub uid: String,
    /// The state name.
    pub state: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// The key group.
    pub key_group: KeyGroup,
    /// The key.
    pub key: Value,
    /// The namespace.
    pub namespace: Value,
    /// The user key (map state).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_key: Option<Value>,
    /// The value in A (removed, changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value in B (added, changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

/// What `diff` reports.
#[derive(Debug, Serialize)]
pub struct DiffReport {
    /// Snapshot A.
    pub a: String,
    /// Snapshot B.
    pub b: String,
    /// Operator uids only in B.
    pub operators_added: Vec<String>,
    /// Operator uids only in A.
    pub operators_removed: Vec<String>,
    /// Every keyed state of either, with what changed.
    pub states: Vec<StateDiff>,
    /// Every entry added, removed or changed.
    pub entries: Vec<EntryDiff>,
}

impl DiffReport {
    /// Whether A and B hold the same operators, states and entries.
    pub fn is_empty(&self) -> bool {
        self.operators_added.is_empty()
            && self.operators_removed.is_empty()
            && self.states.iter().all(|s| s.change == "same")
    }

    /// The human form.
    pub fn render(&self) -> String {
        let mut out = format!("a: {}\nb: {}\n", self.a, self.b);
        for u in &self.operators_added {
            out.push_str(&format!("operator added: {u}\n"));
        }
        for u in &self.operators_removed {
            out.push_str(&format!("operator removed: {u}\n"));
        }
        let rows: Vec<Vec<String>> = self
            .states
            .iter()
            .map(|s| {
                vec![
                    s.uid.clone(),
                    s.state.clone(),
                    s.change.to_string(),
                    s.entries_added.to_string(),
                    s.entries_removed.to_string(),
                    s.entries_changed.to_string(),
                    s.schema_changes.join("; "),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &[
                "UID", "STATE", "CHANGE", "ADDED", "REMOVED", "CHANGED", "SCHEMA",
            ],
            &rows,
        ));
        if !self.entries.is_empty() {
            let rows: Vec<Vec<String>> = self
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.uid.clone(),
                        e.state.clone(),
                        e.change.to_string(),
                        e.key_group.to_string(),
                        e.key.to_string(),
                        e.namespace.to_string(),
                        e.user_key.as_ref().map_or(String::new(), Value::to_string),
                        e.old.as_ref().map_or("-".into(), Value::to_string),
                        e.new.as_ref().map_or("-".into(), Value::to_string),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table::render(
                &[
                    "UID",
                    "STATE",
                    "CHANGE",
                    "KEY_GROUP",
                    "KEY",
                    "NAMESPACE",
                    "USER_KEY",
                    "OLD",
                    "NEW",
                ],
                &rows,
            ));
        } else if self.is_empty() {
            out.push_str("\nno differences\n");
        }
        out
    }
}

fn schema_changes(a: &StateData, b: &StateData) -> Vec<String> {
    let mut out = Vec::new();
    if a.meta.kind != b.meta.kind {
        out.push(format!(
            "kind: {} -> {}",
            table::kind(a.meta.kind),
            table::kind(b.meta.kind)
        ));
    }
    let pairs = [
        ("key", Some(&a.handle.key_codec), Some(&b.handle.key_codec)),
        (
            "namespace",
            Some(&a.meta.namespace),
            Some(&b.meta.namespace),
        ),
        ("value", Some(&a.meta.value), Some(&b.meta.value)),
        (
            "user key",
            a.meta.user_key.as_ref(),
            b.meta.user_key.as_ref(),
        ),
    ];
    for (part, x, y) in pairs {
        let show = |c: Option<&cairn_core::CodecIdentity>| c.map_or("-".into(), table::codec);
        if x.map(table::codec) != y.map(table::codec) {
            out.push(format!("{part}: {} -> {}", show(x), show(y)));
        }
    }
    out
}

/// Decodes an entry of `d` for display.
fn decode(
    dec: &mut Decoders,
    d: &StateData,
    k: &EntryKey,
    kg: KeyGroup,
    value: &[u8],
) -> Result<crate::entries::DecodedEntry, DumpError> {
    dec.entry(
        &Entry {
            entry: EntryRef {
                key_group: kg,
                state: 0,
                key: &k.0,
                namespace: &k.1,
                user_key: k.2.as_deref(),
                value,
            },
            state: &d.meta,
            handle: &d.handle,
        },
        &d.uid,
        &d.location,
    )
}

/// Compares snapshot `a` with snapshot `b`.
pub fn diff(a: &Snapshot, b: &Snapshot, progress: &dyn Progress) -> Result<DiffReport, DumpError> {
    let uids = |s: &Snapshot| -> BTreeSet<String> {
        s.manifest.operators.iter().map(|o| o.uid.clone()).collect()
    };
    let (ua, ub) = (uids(a), uids(b));
    let da = load(a, progress)?;
    let db = load(b, progress)?;
    let mut states = Vec::new();
    let mut entries = Vec::new();
    let mut dec = Decoders::default();
    let names: BTreeSet<&(String, String)> = da.keys().chain(db.keys()).collect();
    for name in names {
        let (uid, state) = name;
        let (x, y) = (da.get(name), db.get(name));
        let mut sd = StateDiff {
            uid: uid.clone(),
            state: state.clone(),
            change: "same",
            entries_added: 0,
            entries_removed: 0,
            entries_changed: 0,
            schema_changes: Vec::new(),
        };
        type Side<'s> = Option<(&'s StateData, &'s [u8])>;
        let mut push =
            |change, k: &EntryKey, kg, old: Side<'_>, new: Side<'_>, dec: &mut Decoders| {
                let Some((d, v)) = new.or(old) else {
                    return Ok(());
                };
                let shown = decode(dec, d, k, kg, v)?;
                let mut value = |side: Side<'_>| {
                    side.map(|(d, v)| decode(dec, d, k, kg, v).map(|e| e.value))
                        .transpose()
                };
                let (old, new) = (value(old)?, value(new)?);
                entries.push(EntryDiff {
                    uid: uid.clone(),
                    state: state.clone(),
                    change,
                    key_group: kg,
                    key: shown.key,
                    namespace: shown.namespace,
                    user_key: shown.user_key,
                    old,
                    new,
                });
                Ok::<(), DumpError>(())
            };
        match (x, y) {
            (Some(x), None) => {
                sd.change = "removed";
                sd.entries_removed = x.entries.len();
                for (k, (kg, v)) in &x.entries {
                    push("removed", k, *kg, Some((x, v.as_slice())), None, &mut dec)?;
                }
            }
            (None, Some(y)) => {
                sd.change = "added";
                sd.entries_added = y.entries.len();
                for (k, (kg, v)) in &y.entries {
                    push("added", k, *kg, None, Some((y, v.as_slice())), &mut dec)?;
                }
            }
            (Some(x), Some(y)) => {
                sd.schema_changes = schema_changes(x, y);
                for (k, (kg, v)) in &x.entries {
                    match y.entries.get(k) {
                        None => {
                            sd.entries_removed += 1;
                            push("removed", k, *kg, Some((x, v.as_slice())), None, &mut dec)?;
                        }
                        Some((_, w)) if w != v => {
                            sd.entries_changed += 1;
                            push(
                                "changed",
                                k,
                                *kg,
                                Some((x, v.as_slice())),
                                Some((y, w.as_slice())),
                                &mut dec,
                            )?;
                        }
                        Some(_) => {}
                    }
                }
                for (k, (kg, v)) in &y.entries {
                    if !x.entries.contains_key(k) {
                        sd.entries_added += 1;
                        push("added", k, *kg, None, Some((y, v.as_slice())), &mut dec)?;
                    }
                }
                let changed = sd.entries_added + sd.entries_removed + sd.entries_changed > 0
                    || !sd.schema_changes.is_empty();
                if changed {
                    sd.change = "changed";
                }
            }
            (None, None) => continue,
        }
        states.push(sd);
    }
    Ok(DiffReport {
        a: a.location.clone(),
        b: b.location.clone(),
        operators_added: ub.difference(&ua).cloned().collect(),
        operators_removed: ua.difference(&ub).cloned().collect(),
        states,
        entries,
    })
}
