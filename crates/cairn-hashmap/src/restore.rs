//! Restore: reads the canonical state files of any set of handles, keeps the entries of the
//! key groups this backend owns as raw bytes per state, and hands them to the typed table
//! when the state is registered. A state that is restored but never registered is carried
//! through later snapshots as raw entries.
//!
//! Entries are routed by key group, so handles of any parallelism restore into any range
//! (rescaling). Each file is read once, however many key groups it supplies.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cairn_core::{
    key_group_for_key, CodecIdentity, FileRef, KeyGroup, KeyGroupRange, KeyedData,
    KeyedStateHandle, Result, SnapshotSource, StateError, StateKind, StateMeta,
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
                    "a native RocksDB snapshot (an incremental checkpoint or a native savepoint) restores only under the rocksdb backend; to switch backends take a canonical savepoint, or turn this snapshot into one with `state-dump convert SNAPSHOT --out DIR` key_groups={} uid={}",
                    h.key_group_range, t.uid
                )))
            }
            KeyedData::Changelog { .. } => {
                return Err(restore_error(format!(
                    "a changelog checkpoint restores only under a changelog backend (snapshot mode changelog); to switch take a savepoint (canonical), or turn this checkpoint into one with `state-dump convert CHECKPOINT --out DIR` key_groups={} uid={}",
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
    let names: Vec<&str> = raw.keys().map(String::as_str).collect();
    let mut opened = Vec::with_capacity(files.len());
    for plan in files.values_mut() {
        opened.push(open_file(t.uid, plan, source, &raw, &names)?);
    }
    read_files(t, &opened, &mut raw, Parallelism::available())?;
    Ok(raw)
}

/// A state file opened for the restore.
struct OpenFile {
    reader: StateFileReader,
    path: String,
    /// Per state of the file's table: the index of the state among the restored ones (in
    /// name order).
    states: Vec<usize>,
    /// The key groups to take from it, sorted and merged.
    ranges: Vec<KeyGroupRange>,
}

fn open_file(
    uid: &str,
    plan: &mut FilePlan,
    source: &dyn SnapshotSource,
    raw: &BTreeMap<String, RawState>,
    names: &[&str],
) -> Result<OpenFile> {
    let path = plan.file.to_string();
    let bytes = source.read_file(&plan.file)?;
    let reader = StateFileReader::open(bytes, &path)
        .map_err(|e| StateError::layer(format!("reading state file path={path} uid={uid}"), e))?;
    // The file's state table, resolved to names the handles declare.
    let mut states = Vec::with_capacity(reader.states().len());
    for fs in reader.states() {
        let Some(r) = raw.get(&fs.name) else {
            return Err(corrupt(
                uid,
                &path,
                format!("state {} is not in its handle", fs.name),
            ));
        };
        if r.meta.kind != fs.kind {
            return Err(corrupt(
                uid,
                &path,
                format!(
                    "state {} is {:?} in the file but {:?} in its handle",
                    fs.name, fs.kind, r.meta.kind
                ),
            ));
        }
        let i = names
            .iter()
            .position(|n| *n == fs.name)
            .ok_or_else(|| corrupt(uid, &path, format!("state {} vanished", fs.name)))?;
        states.push(i);
    }
    plan.ranges.sort();
    Ok(OpenFile {
        reader,
        path,
        states,
        ranges: merge(&plan.ranges),
    })
}

/// The most worker threads a restore uses.
const MAX_WORKERS: usize = 8;
/// The least work worth a worker of its own, in weight units (see [`weight`]): about 64k
/// small entries. Smaller restores run on the calling thread.
const MIN_WORKER_WEIGHT: u64 = 1 << 20;

/// How a restore spreads its work.
#[derive(Clone, Copy, Debug)]
struct Parallelism {
    workers: usize,
    min_weight: u64,
}

impl Parallelism {
    /// One worker per available core (at most [`MAX_WORKERS`]).
    fn available() -> Self {
        #[cfg(test)]
        if let Some(p) = tests::FORCE.with(std::cell::Cell::get) {
            return p;
        }
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores =
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self {
            workers: cores.clamp(1, MAX_WORKERS),
            min_weight: MIN_WORKER_WEIGHT,
        }
    }
}

/// The cost estimate of a key group: decoding and copying scale with its entries and
/// its bytes.
fn weight(stats: &cairn_format::KeyGroupStats) -> u64 {
    stats.entries.saturating_mul(16).saturating_add(stats.bytes)
}

/// Splits `range` into consecutive ranges that tile it, at most `p.workers` of them and
/// each (but the last) with at least `p.min_weight`, of about equal total weight.
/// `weights` are `(key group, weight)` in increasing key-group order.
fn split(range: KeyGroupRange, weights: &[(KeyGroup, u64)], p: Parallelism) -> Vec<KeyGroupRange> {
    let total: u64 = weights.iter().map(|w| w.1).sum();
    let n = (total / p.min_weight.max(1)).clamp(1, p.workers.max(1) as u64);
    let mut out = Vec::with_capacity(n as usize);
    let mut start = range.start;
    let mut acc = 0u64;
    for &(kg, w) in weights {
        // Cut before `kg` once the ranges so far hold their share.
        let k = out.len() as u64 + 1;
        if k < n && kg > start && acc >= total / n * k {
            out.push(KeyGroupRange::new(start, kg));
            start = kg;
        }
        acc += w;
    }
    out.push(KeyGroupRange::new(start, range.end.max(start)));
    out
}

/// Reads the key groups of every file into `raw`: the backend's range is split into
/// consecutive ranges of about equal weight, and one worker thread per range reads its key
/// groups of every file into its own slice of each state's key groups (key groups are
/// independent, so the result is the same for any split).
fn read_files(
    t: &RestoreTarget<'_>,
    files: &[OpenFile],
    raw: &mut BTreeMap<String, RawState>,
    p: Parallelism,
) -> Result<()> {
    let mut weights = Vec::new();
    for f in files {
        let stats = f.reader.key_groups();
        for r in &f.ranges {
            let first = stats.partition_point(|k| k.key_group < r.start);
            for s in stats.get(first..).unwrap_or_default() {
                if s.key_group >= r.end {
                    break;
                }
                weights.push((s.key_group, weight(s)));
            }
        }
    }
    weights.sort_unstable();
    let ranges = split(t.range, &weights, p);
    let names: Vec<String> = raw.keys().cloned().collect();
    let kinds: Vec<StateKind> = raw.values().map(|r| r.meta.kind).collect();
    // Hand each worker its own slice of every state's key groups.
    let mut rest: Vec<&mut [RawKeyGroup]> = raw.values_mut().map(|r| &mut r.kgs[..]).collect();
    let mut parts: Vec<(KeyGroupRange, Vec<&mut [RawKeyGroup]>)> = Vec::with_capacity(ranges.len());
    for r in &ranges {
        let mut mine = Vec::with_capacity(rest.len());
        for slot in rest.iter_mut() {
            let (a, b) = std::mem::take(slot)
                .split_at_mut_checked(r.len() as usize)
                .ok_or_else(|| {
                    restore_error(format!(
                        "key-group split does not fit the backend's range {} split={r} uid={}",
                        t.range, t.uid
                    ))
                })?;
            mine.push(a);
            *slot = b;
        }
        parts.push((*r, mine));
    }
    let worker = Worker {
        t,
        files,
        names: &names,
        kinds: &kinds,
    };
    let results: Vec<Result<()>> = if parts.len() == 1 {
        parts
            .into_iter()
            .map(|(r, mut kgs)| worker.read(r, &mut kgs))
            .collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .into_iter()
                .map(|(r, mut kgs)| {
                    let worker = &worker;
                    s.spawn(move || worker.read(r, &mut kgs))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(restore_error(format!(
                            "a restore worker panicked uid={}",
                            t.uid
                        )))
                    })
                })
                .collect()
        })
    };
    results.into_iter().collect()
}

/// What every restore worker shares.
struct Worker<'a> {
    t: &'a RestoreTarget<'a>,
    files: &'a [OpenFile],
    /// Per restored state (name order): its name and kind.
    names: &'a [String],
    kinds: &'a [StateKind],
}

impl Worker<'_> {
    /// Reads the key groups of `mine` of every file into `kgs` (per restored state, the
    /// key groups of `mine`).
    fn read(&self, mine: KeyGroupRange, kgs: &mut [&mut [RawKeyGroup]]) -> Result<()> {
        for f in self.files {
            for r in &f.ranges {
                let r = r.intersect(&mine);
                if !r.is_empty() {
                    self.read_range(f, r, mine.start, kgs)?;
                }
            }
        }
        Ok(())
    }

    fn read_range(
        &self,
        f: &OpenFile,
        range: KeyGroupRange,
        first_kg: KeyGroup,
        kgs: &mut [&mut [RawKeyGroup]],
    ) -> Result<()> {
        let path = f.path.as_str();
        let uid = self.t.uid;
        let context = || format!("reading state file path={path} uid={uid}");
        let max_p = self.t.max_parallelism;
        let result = f
            .reader
            .scan(range, |e: EntryRef<'_>| -> Result<(), ScanError> {
                if !range.contains(e.key_group) {
                    return Err(ScanError::State(corrupt(
                        uid,
                        path,
                        format!(
                            "entry of key group {} outside the scanned range {range}",
                            e.key_group
                        ),
                    )));
                }
                let i = f.states.get(e.state as usize).copied();
                let (Some(i), Some(name), Some(&kind)) = (
                    i,
                    i.and_then(|i| self.names.get(i)),
                    i.and_then(|i| self.kinds.get(i)),
                ) else {
                    return Err(ScanError::State(corrupt(
                        uid,
                        path,
                        format!("entry of unknown state {}", e.state),
                    )));
                };
                let computed = key_group_for_key(e.key, max_p);
                if computed != e.key_group {
                    return Err(ScanError::State(
                        HashMapError::WrongKeyGroup {
                            path: path.to_string(),
                            state: name.clone(),
                            stored: e.key_group,
                            computed,
                        }
                        .into_state(context()),
                    ));
                }
                if e.user_key.is_some() != (kind == StateKind::Map) {
                    return Err(ScanError::State(corrupt(
                        uid,
                        path,
                        format!(
                            "entry of {kind:?} state {name} with user key {}",
                            e.user_key.is_some()
                        ),
                    )));
                }
                let idx = (e.key_group - first_kg) as usize;
                match kgs.get_mut(i).and_then(|s| s.get_mut(idx)) {
                    Some(kg) => kg.push(&e),
                    None => {
                        return Err(ScanError::State(corrupt(
                            uid,
                            path,
                            "key group outside range".into(),
                        )))
                    }
                }
                Ok(())
            });
        match result {
            Ok(()) => Ok(()),
            Err(ScanError::Format(e)) => Err(StateError::layer(context(), e)),
            Err(ScanError::State(e)) => Err(e),
        }
    }
}

fn corrupt(uid: &str, path: &str, detail: String) -> StateError {
    HashMapError::Corrupt {
        path: path.to_string(),
        detail,
    }
    // The operator uid names which operator's restore failed (file names are not
    // required to carry it).
    .into_state(format!("restoring keyed state uid={uid}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use cairn_core::*;

    use crate::{HashMapBackend, HashMapConfig};

    thread_local! {
        /// Forces the restores of this thread to split as given, however small.
        pub(super) static FORCE: Cell<Option<Parallelism>> = const { Cell::new(None) };
    }

    const MAX_P: u32 = 128;
    const KEYS: u64 = 3000;

    /// Snapshot files in memory.
    #[derive(Default)]
    struct Mem(Mutex<HashMap<String, Vec<u8>>>);

    impl SnapshotTarget for Mem {
        fn checkpoint_id(&self) -> u64 {
            1
        }
        fn supports_shared(&self) -> bool {
            false
        }
        fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
            let f = FileRef {
                area,
                name: name.to_string(),
                size: bytes.len() as u64,
                crc32: 0,
            };
            self.0.lock().unwrap().insert(name.to_string(), bytes);
            Ok(f)
        }
    }

    impl SnapshotSource for Mem {
        fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
            let files = self.0.lock().unwrap();
            Ok(bytes::Bytes::from(files[&file.name].clone()))
        }
    }

    fn backend(range: KeyGroupRange) -> HashMapBackend {
        HashMapBackend::new(HashMapConfig {
            uid: "op".into(),
            max_parallelism: MAX_P,
            key_group_range: range,
            key_codec: BincodeCodec::<u64>::new().identity().clone(),
        })
        .unwrap()
    }

    /// The test's states: a value, a list and a map per key.
    type Ids = (
        ValueStateId<u64, VoidNamespace>,
        ListStateId<u64, VoidNamespace>,
        MapStateId<u64, u64, VoidNamespace>,
    );

    fn ids(b: &mut HashMapBackend) -> Ids {
        (
            b.register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap(),
            b.register_list(&ListStateDescriptor::<u64>::new("l"))
                .unwrap(),
            b.register_map(&MapStateDescriptor::<u64, u64>::new("m"))
                .unwrap(),
        )
    }

    fn kg(k: u64) -> KeyGroup {
        key_group_for_key(&k.to_le_bytes(), MAX_P)
    }

    /// Every key of `range` gets a value; two in three a list; every other one a map.
    fn fill(b: &mut HashMapBackend, range: KeyGroupRange) {
        let (v, l, m) = ids(b);
        for k in (0..KEYS).filter(|k| range.contains(kg(*k))) {
            b.set_current_key(&k.to_le_bytes()).unwrap();
            b.value(&v).update(k * 7 + 1).unwrap();
            if k % 3 != 0 {
                b.list(&l).add(k).unwrap();
                b.list(&l).add(k + 1).unwrap();
            }
            if k % 2 == 0 {
                b.map(&m).put(1, k).unwrap();
                b.map(&m).put(2, k * 2).unwrap();
            }
        }
    }

    fn check(b: &mut HashMapBackend, range: KeyGroupRange) {
        let (v, l, m) = ids(b);
        let mut seen = 0;
        for k in (0..KEYS).filter(|k| range.contains(kg(*k))) {
            seen += 1;
            b.set_current_key(&k.to_le_bytes()).unwrap();
            assert_eq!(b.value(&v).get().unwrap(), Some(k * 7 + 1), "key {k}");
            let list = if k % 3 != 0 { vec![k, k + 1] } else { vec![] };
            assert_eq!(b.list(&l).get().unwrap(), list, "key {k}");
            let (one, two) = if k % 2 == 0 {
                (Some(k), Some(k * 2))
            } else {
                (None, None)
            };
            assert_eq!(b.map(&m).get(&1).unwrap(), one, "key {k}");
            assert_eq!(b.map(&m).get(&2).unwrap(), two, "key {k}");
            assert!(!b.map(&m).contains(&3).unwrap(), "key {k}");
        }
        assert!(seen > 0);
    }

    /// Canonical snapshots of `parallelism` source backends (one file each).
    fn snapshots(parallelism: u32, mem: &Mem) -> Vec<KeyedStateHandle> {
        (0..parallelism)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(MAX_P, parallelism, i).unwrap();
                let mut b = backend(range);
                fill(&mut b, range);
                let snap = b
                    .snapshot(SnapshotOptions::savepoint(u64::from(parallelism)))
                    .unwrap();
                snap.run(mem, &CancelToken::new()).unwrap()
            })
            .collect()
    }

    #[test]
    fn split_tiles_the_range_with_at_most_workers_ranges() {
        let p = |workers, min_weight| Parallelism {
            workers,
            min_weight,
        };
        let range = KeyGroupRange::new(0, 128);
        let weights: Vec<_> = (0..128).map(|kg| (kg, 10)).collect();
        assert_eq!(
            split(range, &weights, p(2, 1)),
            vec![KeyGroupRange::new(0, 64), KeyGroupRange::new(64, 128)]
        );
        assert_eq!(split(range, &weights, p(8, 1000)), vec![range]);
        let sparse = [(3, 5), (4, 500), (90, 5), (127, 1)];
        for workers in 1..6 {
            let out = split(range, &sparse, p(workers, 1));
            assert!(out.len() <= workers);
            assert_eq!(out.first().map(|r| r.start), Some(0));
            assert_eq!(out.last().map(|r| r.end), Some(128));
            for w in out.windows(2) {
                assert_eq!(w[0].end, w[1].start, "{out:?}");
                assert!(!w[0].is_empty(), "{out:?}");
            }
        }
    }

    #[test]
    fn restores_with_any_number_of_workers_into_any_range() {
        let mem = Mem::default();
        let one = snapshots(1, &mem);
        let two = snapshots(2, &mem);
        for handles in [&one, &two] {
            for (p, i) in [(1, 0), (3, 1), (4, 3)] {
                let range = KeyGroupRange::for_subtask(MAX_P, p, i).unwrap();
                for workers in [1, 2, 3, 7] {
                    FORCE.with(|f| {
                        f.set(Some(Parallelism {
                            workers,
                            min_weight: 1,
                        }))
                    });
                    let mut b = backend(range);
                    b.restore(handles, &mem).unwrap();
                    FORCE.with(|f| f.set(None));
                    check(&mut b, range);
                }
            }
        }
    }
}
