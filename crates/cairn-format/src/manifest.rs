//! The manifest (`_metadata`): what a checkpoint or savepoint consists of. The types and
//! their invariants live here; the bytes are in `manifest_codec.rs`.

use cairn_core::{
    check_parallelism, is_valid_file_name, FileArea, FileRef, KeyGroupRange, KeyedData,
    KeyedStateHandle, OperatorStateSnapshot, SnapshotType, StateKind,
};

use crate::FormatError;

pub use crate::manifest_codec::{decode_manifest, encode_manifest, MANIFEST_MAGIC};

/// The manifest's file name inside a checkpoint or savepoint directory.
pub const MANIFEST_FILE_NAME: &str = "_metadata";
/// The largest manifest a reader accepts.
pub const MAX_MANIFEST_LEN: usize = 64 << 20;

/// The `_metadata` of a checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The checkpoint or savepoint id.
    pub checkpoint_id: u64,
    /// Checkpoint or savepoint.
    pub snapshot_type: SnapshotType,
    /// Wall-clock time the snapshot was triggered, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Operators sorted by uid (uids unique).
    pub operators: Vec<OperatorManifest>,
}

/// One operator in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorManifest {
    /// The operator uid.
    pub uid: String,
    /// The parallelism it ran at.
    pub parallelism: u32,
    /// Its max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// One entry per subtask, in index order (`len == parallelism`).
    pub subtasks: Vec<SubtaskManifest>,
}

/// One subtask of an operator in a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubtaskManifest {
    /// Its key-group range (`KeyGroupRange::for_subtask`).
    pub key_group_range: KeyGroupRange,
    /// Its keyed state, if the operator is keyed.
    pub keyed: Option<KeyedStateHandle>,
    /// Its operator states, sorted by name.
    pub operator_state: Vec<OperatorStateSnapshot>,
}

impl Manifest {
    /// Every file the manifest references (duplicates possible).
    pub fn files(&self) -> impl Iterator<Item = &FileRef> {
        self.operators
            .iter()
            .flat_map(|o| o.subtasks.iter())
            .filter_map(|s| s.keyed.as_ref())
            .flat_map(|k| k.files())
    }
    /// The operator with this uid.
    pub fn operator(&self, uid: &str) -> Option<&OperatorManifest> {
        self.operators.iter().find(|o| o.uid == uid)
    }

    /// Checks every invariant a manifest must satisfy (format-spec/README.md, "Manifest
    /// validity"): uids unique and sorted; valid parallelism; one subtask per parallel
    /// instance with the `KeyGroupRange::for_subtask` range; states and operator states
    /// sorted by name and unique; map states (only) with a user-key codec; valid file names;
    /// no shared file in a savepoint; canonical files whose key groups are disjoint and
    /// exactly cover the handle's range; changelog data only in checkpoints, with
    /// materialized handles that cover the range. [`encode_manifest`] and [`decode_manifest`] both
    /// apply it.
    pub fn validate(&self) -> Result<(), FormatError> {
        let mut prev: Option<&str> = None;
        for op in &self.operators {
            check_uid_order(prev, &op.uid)
                .and_then(|()| validate_operator(op, self.snapshot_type))
                .map_err(|detail| FormatError::Invalid {
                    kind: "manifest",
                    detail,
                })?;
            prev = Some(&op.uid);
        }
        Ok(())
    }
}

/// Uids strictly increasing (byte-wise).
pub(crate) fn check_uid_order(prev: Option<&str>, uid: &str) -> Result<(), String> {
    match prev {
        Some(p) if p >= uid => Err(format!(
            "operator uids are not sorted and unique uid={uid} previous={p}"
        )),
        _ => Ok(()),
    }
}

/// The invariants of one operator; the message names the operator and subtask.
pub(crate) fn validate_operator(
    op: &OperatorManifest,
    snapshot_type: SnapshotType,
) -> Result<(), String> {
    let uid = &op.uid;
    check_parallelism(op.parallelism, op.max_parallelism).map_err(|e| format!("{e} uid={uid}"))?;
    if op.subtasks.len() != op.parallelism as usize {
        return Err(format!(
            "subtask count differs from the parallelism uid={uid} subtasks={} parallelism={}",
            op.subtasks.len(),
            op.parallelism
        ));
    }
    for (index, st) in op.subtasks.iter().enumerate() {
        validate_subtask(op, index as u32, st, snapshot_type)
            .map_err(|e| format!("{e} uid={uid} subtask={index}"))?;
    }
    Ok(())
}

fn validate_subtask(
    op: &OperatorManifest,
    index: u32,
    st: &SubtaskManifest,
    snapshot_type: SnapshotType,
) -> Result<(), String> {
    let expected = KeyGroupRange::for_subtask(op.max_parallelism, op.parallelism, index)
        .map_err(|e| e.to_string())?;
    if st.key_group_range != expected {
        return Err(format!(
            "subtask key-group range is not the assigned one range={} expected={expected}",
            st.key_group_range
        ));
    }
    for pair in st.operator_state.windows(2) {
        if let [a, b] = pair {
            if a.name >= b.name {
                return Err(format!(
                    "operator states are not sorted and unique state={}",
                    b.name
                ));
            }
        }
    }
    if let Some(h) = &st.keyed {
        validate_keyed(h, expected, snapshot_type)?;
    }
    Ok(())
}

fn validate_keyed(
    h: &KeyedStateHandle,
    expected: KeyGroupRange,
    snapshot_type: SnapshotType,
) -> Result<(), String> {
    if h.key_group_range != expected {
        return Err(format!(
            "keyed state range differs from the subtask's range range={} expected={expected}",
            h.key_group_range
        ));
    }
    for pair in h.states.windows(2) {
        if let [a, b] = pair {
            if a.name >= b.name {
                return Err(format!(
                    "keyed states are not sorted and unique state={}",
                    b.name
                ));
            }
        }
    }
    for s in &h.states {
        if (s.kind == StateKind::Map) != s.user_key.is_some() {
            return Err(format!(
                "a user-key codec is required for map state and only for it state={} kind={:?}",
                s.name, s.kind
            ));
        }
    }
    match &h.data {
        KeyedData::Canonical { files } => {
            let mut ranges = Vec::new();
            for cf in files {
                check_file_ref(&cf.file, snapshot_type)?;
                if cf
                    .key_groups
                    .windows(2)
                    .any(|w| w.first().map(|a| a.start) >= w.get(1).map(|b| b.start))
                {
                    return Err(format!(
                        "file key-group ranges are not sorted file={}",
                        cf.file
                    ));
                }
                for r in &cf.key_groups {
                    if r.is_empty() {
                        return Err(format!(
                            "file supplies an empty key-group range file={} key_groups={r}",
                            cf.file
                        ));
                    }
                    ranges.push((*r, &cf.file));
                }
            }
            // Sorted by start, the ranges must tile the handle's range: each starts where
            // the previous ended, which proves them disjoint and covering.
            ranges.sort_by_key(|(r, _)| (r.start, r.end));
            let mut next = h.key_group_range.start;
            for (r, file) in &ranges {
                if r.start != next || r.end > h.key_group_range.end {
                    return Err(format!(
                        "canonical files' key groups overlap, leave a gap or leave the range range={} file={file} key_groups={r} expected_start={next}",
                        h.key_group_range
                    ));
                }
                next = r.end;
            }
            if next != h.key_group_range.end {
                return Err(format!(
                    "canonical files do not cover the key-group range range={} first_missing={next}",
                    h.key_group_range
                ));
            }
        }
        KeyedData::RocksNative { files } => {
            let mut local = std::collections::BTreeSet::new();
            for nf in files {
                check_file_ref(&nf.file, snapshot_type)?;
                if !is_valid_file_name(&nf.local_name) || nf.local_name.contains('/') {
                    return Err(format!(
                        "invalid native local file name name={:?}",
                        nf.local_name
                    ));
                }
                if !local.insert(nf.local_name.as_str()) {
                    return Err(format!(
                        "native local file name appears twice name={}",
                        nf.local_name
                    ));
                }
            }
        }
        KeyedData::Changelog {
            materialized,
            segments,
        } => validate_changelog(h, materialized, segments, snapshot_type)?,
        #[allow(unreachable_patterns)]
        _ => return Err("keyed data kind not supported by format v1".to_string()),
    }
    Ok(())
}

/// Rule 10: changelog data only in checkpoints; materialized handles are canonical or
/// native, have the outer key codec, and together cover the outer range; segments hold
/// records.
fn validate_changelog(
    h: &KeyedStateHandle,
    materialized: &[KeyedStateHandle],
    segments: &[cairn_core::ChangelogSegment],
    snapshot_type: SnapshotType,
) -> Result<(), String> {
    if snapshot_type == SnapshotType::Savepoint {
        return Err("a savepoint must not hold changelog data".to_string());
    }
    let mut covered = Vec::new();
    for m in materialized {
        if matches!(m.data, KeyedData::Changelog { .. }) {
            return Err("a materialized handle must not itself be changelog data".to_string());
        }
        if m.key_codec != h.key_codec {
            return Err(format!(
                "a materialized handle has another key codec range={}",
                m.key_group_range
            ));
        }
        let overlap = m.key_group_range.intersect(&h.key_group_range);
        if m.key_group_range.is_empty() || overlap.is_empty() {
            return Err(format!(
                "a materialized handle does not overlap the range range={} materialized={}",
                h.key_group_range, m.key_group_range
            ));
        }
        validate_keyed(m, m.key_group_range, snapshot_type)
            .map_err(|e| format!("{e} materialized={}", m.key_group_range))?;
        covered.push(overlap);
    }
    if !materialized.is_empty() {
        covered.sort_by_key(|r| r.start);
        let mut next = h.key_group_range.start;
        for r in &covered {
            if r.start > next {
                break;
            }
            next = next.max(r.end);
        }
        if next < h.key_group_range.end {
            return Err(format!(
                "materialized handles do not cover the key-group range range={} first_missing={next}",
                h.key_group_range
            ));
        }
    }
    for s in segments {
        check_file_ref(&s.file, snapshot_type)?;
        if s.records == 0 {
            return Err(format!("changelog segment without records file={}", s.file));
        }
    }
    Ok(())
}

fn check_file_ref(f: &FileRef, snapshot_type: SnapshotType) -> Result<(), String> {
    if !is_valid_file_name(&f.name) {
        return Err(format!("invalid file name name={:?}", f.name));
    }
    if snapshot_type == SnapshotType::Savepoint && f.area == FileArea::Shared {
        return Err(format!(
            "a savepoint must not reference shared files file={f}"
        ));
    }
    Ok(())
}
