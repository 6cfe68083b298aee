//! Restore: reads the canonical state files of any set of handles, keeps the entries of the
//! key groups this backend owns as raw bytes per state, and hands them to the typed table
//! when the state is registered. A state that is restored but never registered is carried
//! through later snapshots as raw entries.
//!
//! Entries are routed by key group, so handles of any parallelism restore into any range
//! (rescaling). Each file is read once, however many key groups it supplies.

use std::collections::BTreeMap;

use cairn_core::{
    key_group_for_key, CodecIdentity, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle, Result,
    SnapshotSource, StateError, StateKind, StateMeta,
};
use cairn_format::{EntryRef, FormatError, StateFileReader};

use crate::encode::{push_bytes, KgBuffer, Span};
use crate::error::HashMapError;
use crate::state::StateSnapshot;

/// One restored entry, as spans into its key group's arena.
#[derive(Clone, Copy, Debug)]
struct RawEntry {
    key: Span,
    ns: Span,
    user_key: Option<Span>,
    value: Span,
}

/// The restored entries of one key group of one state, in file order.
#[derive(Debug, Default)]
pub(crate) struct RawKeyGroup {
    buf: Vec<u8>,
    entries: Vec<RawEntry>,
}

impl RawKeyGroup {
    fn push(&mut self, e: &EntryRef<'_>) {
        let key = push_bytes(&mut self.buf, e.key);
        let ns = push_bytes(&mut self.buf, e.namespace);
        let user_key = e.user_key.map(|u| push_bytes(&mut self.buf, u));
        let value = push_bytes(&mut self.buf, e.value);
        self.entries.push(RawEntry {
            key,
            ns,
            user_key,
            value,
        });
    }

    /// The entries, borrowed (the key group and state fields are not meaningful).
    pub(crate) fn entries(&self) -> impl Iterator<Item = EntryRef<'_>> {
        self.entries.iter().map(|e| EntryRef {
            key_group: 0,
            state: 0,
            key: e.key.of(&self.buf),
            namespace: e.ns.of(&self.buf),
            user_key: e.user_key.map(|u| u.of(&self.buf)),
            value: e.value.of(&self.buf),
        })
    }
}

/// A restored state: what the snapshot says about it and its entries per key group index.
#[derive(Debug)]
pub(crate) struct RawState {
    pub(crate) meta: StateMeta,
    kgs: Vec<RawKeyGroup>,
}

impl RawState {
    pub(crate) fn key_groups(&self) -> &[RawKeyGroup] {
        &self.kgs
    }
}

impl StateSnapshot for RawState {
    fn encode_kg(&self, kg_idx: usize, file_state: u32, out: &mut KgBuffer) -> Result<()> {
        let Some(kg) = self.kgs.get(kg_idx) else {
            return Ok(());
        };
        for e in kg.entries() {
            let head = out
                .head(file_state, e.key, |b| {
                    b.extend_from_slice(e.namespace);
                    Ok(())
                })
                .map_err(crate::state::codec_error(&self.meta.name))?;
            let user_key = e.user_key.map(|u| push_bytes(&mut out.buf, u));
            let value = push_bytes(&mut out.buf, e.value);
            out.push(head, user_key, value);
        }
        Ok(())
    }
}

/// What restore needs to know about the backend.
#[derive(Debug)]
pub(crate) struct RestoreTarget<'a> {
    pub(crate) uid: &'a str,
    pub(crate) range: KeyGroupRange,
    pub(crate) max_parallelism: u32,
    pub(crate) key_codec: &'a CodecIdentity,
}

/// One file to read and the key groups to take from it.
struct FilePlan {
    file: FileRef,
    ranges: Vec<KeyGroupRange>,
}

enum ScanError {
    Format(FormatError),
    State(StateError),
}

impl From<FormatError> for ScanError {
    fn from(e: FormatError) -> Self {
        ScanError::Format(e)
    }
}

fn restore_error(reason: String) -> StateError {
    StateError::Restore { reason }
}

/// Reads every entry of `handles` in `t.range`, per state name.
pub(crate) fn load(
    t: &RestoreTarget<'_>,
    handles: &[KeyedStateHandle],
    source: &dyn SnapshotSource,
) -> Result<BTreeMap<String, RawState>> {
    let metas = cairn_core::restore_metas(t.uid, t.key_codec, t.max_parallelism, handles)?;
    let mut files: BTreeMap<(cairn_core::FileArea, String), FilePlan> = BTreeMap::new();
    let mut claimed = vec![false; t.range.len() as usize];
    for h in handles {
        let canonical = match &h.data {
            KeyedData::Canonical { files } => files,
            KeyedData::RocksNative { .. } => {
                return Err(restore_error(format!(
                    "a native RocksDB checkpoint restores only under the rocksdb backend; take a savepoint (canonical) to switch backends key_groups={} uid={}",
                    h.key_group_range, t.uid
                )))
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(restore_error(format!(
                    "unsupported keyed data in handle for key groups {} uid={}",
                    h.key_group_range, t.uid
                )))
            }
        };
        for cf in canonical {
            for r in &cf.key_groups {
                if !h.key_group_range.contains_range(r) {
                    return Err(restore_error(format!(
                        "file {} supplies key groups {r} outside its handle's range {} uid={}",
                        cf.file, h.key_group_range, t.uid
                    )));
                }
                let mine = r.intersect(&t.range);
                if mine.is_empty() {
                    continue;
                }
                for kg in mine.iter() {
                    let c = &mut claimed[(kg - t.range.start) as usize];
                    if *c {
                        return Err(restore_error(format!(
                            "key group {kg} is supplied twice (file {}) uid={}",
                            cf.file, t.uid
                        )));
                    }
                    *c = true;
                }
                let plan = files
                    .entry((cf.file.area, cf.file.name.clone()))
                    .or_insert_with(|| FilePlan {
                        file: cf.file.clone(),
                        ranges: Vec::new(),
                    });
                plan.ranges.push(mine);
            }
        }
    }
    // Every key group this backend owns must come from some handle: a gap means handles are
    // missing or the snapshot has another max parallelism, and restoring would silently
    // lose the state of those key groups.
    if let Some(i) = claimed.iter().position(|c| !c) {
        return Err(restore_error(format!(
            "key group {} of this backend's range {} is supplied by no handle (handles missing, or the snapshot was taken with another max parallelism) uid={}",
            t.range.start + i as u32,
            t.range,
            t.uid
        )));
    }
    let mut raw: BTreeMap<String, RawState> = metas
        .into_iter()
        .map(|(name, meta)| {
            let kgs = (0..t.range.len()).map(|_| RawKeyGroup::default()).collect();
            (name, RawState { meta, kgs })
        })
        .collect();
    for plan in files.values_mut() {
        read_file(t, plan, source, &mut raw)?;
    }
    Ok(raw)
}

fn read_file(
    t: &RestoreTarget<'_>,
    plan: &mut FilePlan,
    source: &dyn SnapshotSource,
    raw: &mut BTreeMap<String, RawState>,
) -> Result<()> {
    let path = plan.file.to_string();
    let context = || format!("reading state file path={path}");
    let bytes = source.read_file(&plan.file)?;
    let reader =
        StateFileReader::open(bytes, &path).map_err(|e| StateError::layer(context(), e))?;
    // The file's state table, resolved to names the handles declare.
    let mut states: Vec<&str> = Vec::with_capacity(reader.states().len());
    for fs in reader.states() {
        let Some(r) = raw.get(&fs.name) else {
            return Err(corrupt(
                &path,
                format!("state {} is not in its handle", fs.name),
            ));
        };
        if r.meta.kind != fs.kind {
            return Err(corrupt(
                &path,
                format!(
                    "state {} is {:?} in the file but {:?} in its handle",
                    fs.name, fs.kind, r.meta.kind
                ),
            ));
        }
        states.push(fs.name.as_str());
    }
    let states: Vec<String> = states.into_iter().map(str::to_string).collect();
    plan.ranges.sort();
    for range in merge(&plan.ranges) {
        let result = reader.scan(range, |e: EntryRef<'_>| -> Result<(), ScanError> {
            if !range.contains(e.key_group) {
                return Err(ScanError::State(corrupt(
                    &path,
                    format!(
                        "entry of key group {} outside the scanned range {range}",
                        e.key_group
                    ),
                )));
            }
            let name = states.get(e.state as usize).ok_or_else(|| {
                ScanError::State(corrupt(
                    &path,
                    format!("entry of unknown state {}", e.state),
                ))
            })?;
            let computed = key_group_for_key(e.key, t.max_parallelism);
            if computed != e.key_group {
                return Err(ScanError::State(
                    HashMapError::WrongKeyGroup {
                        path: path.clone(),
                        state: name.clone(),
                        stored: e.key_group,
                        computed,
                    }
                    .into_state(context()),
                ));
            }
            let state = raw.get_mut(name.as_str()).ok_or_else(|| {
                ScanError::State(corrupt(&path, format!("state {name} vanished")))
            })?;
            if e.user_key.is_some() != (state.meta.kind == StateKind::Map) {
                return Err(ScanError::State(corrupt(
                    &path,
                    format!(
                        "entry of {:?} state {name} with user key {}",
                        state.meta.kind,
                        e.user_key.is_some()
                    ),
                )));
            }
            let idx = (e.key_group - t.range.start) as usize;
            match state.kgs.get_mut(idx) {
                Some(kg) => kg.push(&e),
                None => {
                    return Err(ScanError::State(corrupt(
                        &path,
                        "key group outside range".into(),
                    )))
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => {}
            Err(ScanError::Format(e)) => return Err(StateError::layer(context(), e)),
            Err(ScanError::State(e)) => return Err(e),
        }
    }
    Ok(())
}

fn corrupt(path: &str, detail: String) -> StateError {
    HashMapError::Corrupt {
        path: path.to_string(),
        detail,
    }
    .into_state("restoring keyed state")
}

/// Sorted ranges with adjacent ones joined.
fn merge(sorted: &[KeyGroupRange]) -> Vec<KeyGroupRange> {
    let mut out: Vec<KeyGroupRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if last.end >= r.start => last.end = last.end.max(r.end),
            _ => out.push(*r),
        }
    }
    out
}
