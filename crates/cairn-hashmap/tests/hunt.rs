//! Bug hunt over the heap backend's snapshots and restores, with the emphasis on incremental
//! checkpoints (key-group deltas) and their chains: long chains restored at every point and
//! continued, rescaling, checkpoints in flight concurrently (completed, aborted, given up,
//! failed), full and incremental checkpoints mixed, savepoints in between, damaged inputs,
//! and a model-based property test (`PROPTEST_CASES=N` runs more cases).
//!
//! The store below behaves like `cairn-storage` where it matters here: retention keeps the
//! newest completed checkpoints and deletes every file that none of them references, except
//! the files a checkpoint in flight wrote or declared it references
//! (`SnapshotTarget::holds_shared`); a completed checkpoint must find every file it references
//! (the storage's publish checks them). So a delta that references a file that retention
//! may delete while it is in flight fails here as it fails a real job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_core::*;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// A storage-like store in memory.
// ---------------------------------------------------------------------------------------

fn path_of(area: FileArea, name: &str) -> String {
    match area {
        FileArea::Private => format!("private/{name}"),
        FileArea::Shared => format!("shared/{name}"),
    }
}

/// Files in memory, with the in-flight registry that protects files from GC.
#[derive(Debug, Default)]
struct Store {
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Per checkpoint in flight: the files it wrote or declared it references.
    in_flight: Mutex<BTreeMap<u64, BTreeSet<String>>>,
    /// Makes every write fail.
    fail_writes: AtomicBool,
    writes: AtomicUsize,
}

impl Store {
    fn target(&self, checkpoint_id: u64, shared: bool) -> Target<'_> {
        Target {
            store: self,
            checkpoint_id,
            shared,
        }
    }

    /// Checkpoint `id` is published or aborted: its files are protected no longer.
    fn finish(&self, id: u64) {
        self.in_flight.lock().unwrap().remove(&id);
    }

    fn exists(&self, f: &FileRef) -> bool {
        self.files
            .lock()
            .unwrap()
            .get(&path_of(f.area, &f.name))
            .is_some_and(|b| b.len() as u64 == f.size)
    }

    fn bytes(&self, f: &FileRef) -> Vec<u8> {
        self.files.lock().unwrap()[&path_of(f.area, &f.name)].clone()
    }

    fn set_bytes(&self, f: &FileRef, bytes: Vec<u8>) {
        self.files
            .lock()
            .unwrap()
            .insert(path_of(f.area, &f.name), bytes);
    }

    fn remove(&self, f: &FileRef) {
        self.files.lock().unwrap().remove(&path_of(f.area, &f.name));
    }

    /// Deletes every file that is not in `keep` and that no checkpoint in flight protects.
    fn gc(&self, keep: &BTreeSet<String>) {
        let protected: BTreeSet<String> = self
            .in_flight
            .lock()
            .unwrap()
            .values()
            .flatten()
            .cloned()
            .collect();
        self.files
            .lock()
            .unwrap()
            .retain(|p, _| keep.contains(p) || protected.contains(p));
    }

    fn writes(&self) -> usize {
        self.writes.load(Ordering::Relaxed)
    }
}

struct Target<'a> {
    store: &'a Store,
    checkpoint_id: u64,
    shared: bool,
}

impl SnapshotTarget for Target<'_> {
    fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }
    fn supports_shared(&self) -> bool {
        self.shared
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        assert!(is_valid_file_name(name), "{name}");
        assert!(
            self.shared || area == FileArea::Private,
            "shared file {name}"
        );
        if self.store.fail_writes.load(Ordering::Relaxed) {
            return Err(StateError::Restore {
                reason: format!("injected write failure name={name}"),
            });
        }
        let p = path_of(area, name);
        self.store
            .in_flight
            .lock()
            .unwrap()
            .entry(self.checkpoint_id)
            .or_default()
            .insert(p.clone());
        let mut files = self.store.files.lock().unwrap();
        assert!(!files.contains_key(&p), "overwrite of {p}");
        let size = bytes.len() as u64;
        files.insert(p, bytes);
        self.store.writes.fetch_add(1, Ordering::Relaxed);
        Ok(FileRef {
            area,
            name: name.to_string(),
            size,
            crc32: 0,
        })
    }
    /// As `CheckpointWriter::holds_shared`: protect first, then check.
    fn holds_shared(&self, file: &FileRef) -> Result<bool> {
        let p = path_of(file.area, &file.name);
        let added = self
            .store
            .in_flight
            .lock()
            .unwrap()
            .entry(self.checkpoint_id)
            .or_default()
            .insert(p.clone());
        let held = self.store.exists(file);
        if !held && added {
            if let Some(s) = self
                .store
                .in_flight
                .lock()
                .unwrap()
                .get_mut(&self.checkpoint_id)
            {
                s.remove(&p);
            }
        }
        Ok(held)
    }
}

impl SnapshotSource for Store {
    fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
        let p = path_of(file.area, &file.name);
        let files = self.files.lock().unwrap();
        let b = files.get(&p).ok_or_else(|| StateError::Restore {
            reason: format!("no such file path={p}"),
        })?;
        if b.len() as u64 != file.size {
            return Err(StateError::Restore {
                reason: format!(
                    "size mismatch path={p} expected={} actual={}",
                    file.size,
                    b.len()
                ),
            });
        }
        Ok(bytes::Bytes::from(b.clone()))
    }
}

// ---------------------------------------------------------------------------------------
// The schema: every state kind, namespaces, and a state registered late.
// ---------------------------------------------------------------------------------------

const KEYS: u64 = 10;
const WINDOWS: u32 = 3;

struct SumCount;
impl AggregateFunction<u64, (u64, u64), (u64, u64)> for SumCount {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u64) {
        acc.0 += input;
        acc.1 += 1;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

#[derive(Clone, Copy)]
struct Ids {
    value: ValueStateId<u64, ()>,
    list: ListStateId<String, ()>,
    map: MapStateId<u32, u64, ()>,
    reducing: ReducingStateId<i64, ()>,
    aggregating: AggregatingStateId<u64, (u64, u64), (u64, u64), ()>,
    windowed: ValueStateId<u64, u32>,
    wlist: ListStateId<u64, u32>,
}

fn register(b: &mut HashMapBackend) -> Ids {
    let ns = || Arc::new(BincodeCodec::<u32>::new());
    Ids {
        value: b
            .register_value(&ValueStateDescriptor::new("value"))
            .unwrap(),
        list: b.register_list(&ListStateDescriptor::new("list")).unwrap(),
        map: b.register_map(&MapStateDescriptor::new("map")).unwrap(),
        reducing: b
            .register_reducing(&ReducingStateDescriptor::new("reducing", |a: i64, b| a + b))
            .unwrap(),
        aggregating: b
            .register_aggregating(&AggregatingStateDescriptor::new("aggregating", SumCount))
            .unwrap(),
        windowed: b
            .register_value(&ValueStateDescriptor::new("windowed").with_namespace::<u32>(ns()))
            .unwrap(),
        wlist: b
            .register_list(&ListStateDescriptor::new("wlist").with_namespace::<u32>(ns()))
            .unwrap(),
    }
}

fn register_late(b: &mut HashMapBackend) -> ValueStateId<u64, ()> {
    b.register_value(&ValueStateDescriptor::new("late"))
        .unwrap()
}

fn key(k: u64) -> Vec<u8> {
    k.to_le_bytes().to_vec()
}

fn backend(max_p: u32, range: KeyGroupRange) -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: "hunt".into(),
        max_parallelism: max_p,
        key_group_range: range,
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
    })
    .unwrap()
}

/// One key's state in the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct KeyModel {
    value: Option<u64>,
    list: Vec<String>,
    map: BTreeMap<u32, u64>,
    reducing: Option<i64>,
    aggregating: Option<(u64, u64)>,
    windowed: BTreeMap<u32, u64>,
    wlist: BTreeMap<u32, Vec<u64>>,
    late: Option<u64>,
}

type Model = BTreeMap<u64, KeyModel>;

/// A change to one key.
#[derive(Clone, Debug)]
enum Change {
    Value(u64),
    ValueClear,
    ListAdd(u8),
    ListUpdate(Vec<u8>),
    ListClear,
    MapPut(u32, u64),
    MapRemove(u32),
    MapClear,
    Reduce(i64),
    ReduceClear,
    Aggregate(u64),
    AggregateClear,
    Windowed(u32, u64),
    WindowClear(u32),
    WListAdd(u32, u64),
    WListClear(u32),
    /// A write to the state registered late.
    Late(u64),
}

// ---------------------------------------------------------------------------------------
// A job: one operator at some parallelism.
// ---------------------------------------------------------------------------------------

struct Sub {
    b: HashMapBackend,
    ids: Ids,
    late: Option<ValueStateId<u64, ()>>,
}

struct Job {
    max_p: u32,
    subs: Vec<Sub>,
}

impl Job {
    fn new(max_p: u32, parallelism: u32) -> Self {
        let subs = (0..parallelism)
            .map(|i| {
                let mut b = backend(
                    max_p,
                    KeyGroupRange::for_subtask(max_p, parallelism, i).unwrap(),
                );
                let ids = register(&mut b);
                Sub { b, ids, late: None }
            })
            .collect();
        Self { max_p, subs }
    }

    /// Restores every subtask from `handles`; `late` also registers the late state.
    fn restored(
        max_p: u32,
        parallelism: u32,
        handles: &[KeyedStateHandle],
        source: &dyn SnapshotSource,
        late: bool,
    ) -> Result<Self> {
        let mut subs = Vec::new();
        for i in 0..parallelism {
            let mut b = backend(max_p, KeyGroupRange::for_subtask(max_p, parallelism, i)?);
            b.restore(handles, source)?;
            let ids = register(&mut b);
            let late = late.then(|| register_late(&mut b));
            subs.push(Sub { b, ids, late });
        }
        Ok(Self { max_p, subs })
    }

    fn owner(&mut self, k: u64) -> &mut Sub {
        let kg = key_group_for_key(&key(k), self.max_p);
        let s = self
            .subs
            .iter_mut()
            .find(|s| s.b.key_group_range().contains(kg))
            .expect("an owner");
        s.b.set_current_key(&key(k)).unwrap();
        s
    }

    fn apply(&mut self, model: &mut Model, k: u64, c: &Change) {
        let s = self.owner(k);
        let (b, ids) = (&mut s.b, s.ids);
        let m = model.entry(k).or_default();
        match c {
            Change::Value(v) => {
                b.value(&ids.value).update(*v).unwrap();
                m.value = Some(*v);
            }
            Change::ValueClear => {
                b.value(&ids.value).clear().unwrap();
                m.value = None;
            }
            Change::ListAdd(v) => {
                b.list(&ids.list).add(v.to_string()).unwrap();
                m.list.push(v.to_string());
            }
            Change::ListUpdate(vs) => {
                let vs: Vec<String> = vs.iter().map(u8::to_string).collect();
                b.list(&ids.list).update(vs.clone()).unwrap();
                m.list = vs;
            }
            Change::ListClear => {
                b.list(&ids.list).clear().unwrap();
                m.list.clear();
            }
            Change::MapPut(u, v) => {
                b.map(&ids.map).put(*u, *v).unwrap();
                m.map.insert(*u, *v);
            }
            Change::MapRemove(u) => {
                b.map(&ids.map).remove(u).unwrap();
                m.map.remove(u);
            }
            Change::MapClear => {
                b.map(&ids.map).clear().unwrap();
                m.map.clear();
            }
            Change::Reduce(v) => {
                b.reducing(&ids.reducing).add(*v).unwrap();
                m.reducing = Some(m.reducing.unwrap_or(0) + v);
            }
            Change::ReduceClear => {
                b.reducing(&ids.reducing).clear().unwrap();
                m.reducing = None;
            }
            Change::Aggregate(v) => {
                b.aggregating(&ids.aggregating).add(*v).unwrap();
                let a = m.aggregating.get_or_insert((0, 0));
                a.0 += v;
                a.1 += 1;
            }
            Change::AggregateClear => {
                b.aggregating(&ids.aggregating).clear().unwrap();
                m.aggregating = None;
            }
            Change::Windowed(w, v) => {
                b.value_in(&ids.windowed, w).update(*v).unwrap();
                m.windowed.insert(*w, *v);
            }
            Change::WindowClear(w) => {
                b.value_in(&ids.windowed, w).clear().unwrap();
                m.windowed.remove(w);
            }
            Change::WListAdd(w, v) => {
                b.list_in(&ids.wlist, w).add(*v).unwrap();
                m.wlist.entry(*w).or_default().push(*v);
            }
            Change::WListClear(w) => {
                b.list_in(&ids.wlist, w).clear().unwrap();
                m.wlist.remove(w);
            }
            Change::Late(v) => {
                let id = match s.late {
                    Some(id) => id,
                    None => *s.late.insert(register_late(b)),
                };
                b.set_current_key(&key(k)).unwrap();
                b.value(&id).update(*v).unwrap();
                m.late = Some(*v);
            }
        }
    }

    /// Every key's state as the backends hold it, and the model's, side by side. The late
    /// state is compared where it is registered (elsewhere it is carried through as bytes).
    fn diff(&mut self, model: &Model) -> Vec<String> {
        let mut out = Vec::new();
        for k in 0..KEYS {
            let s = self.owner(k);
            let got = read_key(s, k);
            let mut want = model.get(&k).cloned().unwrap_or_default();
            if s.late.is_none() {
                want.late = None;
            }
            if got != want {
                out.push(format!("key {k}: got {got:?} want {want:?}"));
            }
        }
        // `keys` agrees with the model too.
        for s in &mut self.subs {
            let range = s.b.key_group_range();
            let got = s.b.keys(s.ids.value.raw(), &()).unwrap();
            let want: Vec<Vec<u8>> = {
                let mut v: Vec<Vec<u8>> = model
                    .iter()
                    .filter(|(k, m)| {
                        m.value.is_some()
                            && range.contains(key_group_for_key(&key(**k), self.max_p))
                    })
                    .map(|(k, _)| key(*k))
                    .collect();
                v.sort();
                v
            };
            if got != want {
                out.push(format!("keys of {range}: got {got:?} want {want:?}"));
            }
        }
        out
    }

    fn check(&mut self, model: &Model, what: &str) {
        let diff = self.diff(model);
        assert!(diff.is_empty(), "{what}:\n{}", diff.join("\n"));
    }

    fn snapshot(&mut self, options: SnapshotOptions) -> Vec<Box<dyn AsyncSnapshot>> {
        self.subs
            .iter_mut()
            .map(|s| s.b.snapshot(options).unwrap())
            .collect()
    }

    fn notify(&mut self, id: u64, complete: bool) {
        for s in &mut self.subs {
            if complete {
                s.b.notify_checkpoint_complete(id);
            } else {
                s.b.notify_checkpoint_aborted(id);
            }
        }
    }
}

fn read_key(s: &mut Sub, k: u64) -> KeyModel {
    let (b, ids) = (&mut s.b, s.ids);
    b.set_current_key(&key(k)).unwrap();
    let mut m = KeyModel {
        value: b.value(&ids.value).get().unwrap(),
        list: b.list(&ids.list).get().unwrap(),
        map: b.map(&ids.map).entries().unwrap().into_iter().collect(),
        reducing: b.reducing(&ids.reducing).get().unwrap(),
        aggregating: b.aggregating(&ids.aggregating).get().unwrap(),
        late: match s.late {
            Some(id) => b.value(&id).get().unwrap(),
            None => None,
        },
        ..KeyModel::default()
    };
    for w in 0..WINDOWS {
        if let Some(v) = b.value_in(&ids.windowed, &w).get().unwrap() {
            m.windowed.insert(w, v);
        }
        let l = b.list_in(&ids.wlist, &w).get().unwrap();
        if !l.is_empty() {
            m.wlist.insert(w, l);
        }
    }
    m
}

/// Every file `handles` reference, as store paths.
fn paths(handles: &[KeyedStateHandle]) -> BTreeSet<String> {
    handles
        .iter()
        .flat_map(|h| h.files())
        .map(|f| path_of(f.area, &f.name))
        .collect()
}

fn canonical(h: &KeyedStateHandle) -> &Vec<CanonicalFile> {
    match &h.data {
        KeyedData::Canonical { files } => files,
        other => panic!("not canonical: {other:?}"),
    }
}

/// Restores `handles` at `parallelism` (with every state registered) and compares with
/// `model`.
fn verify(
    store: &Store,
    max_p: u32,
    parallelism: u32,
    handles: &[KeyedStateHandle],
    model: &Model,
    what: &str,
) {
    let mut job = Job::restored(max_p, parallelism, handles, store, true)
        .unwrap_or_else(|e| panic!("{what}: restore at parallelism {parallelism} failed: {e}"));
    job.check(
        model,
        &format!("{what}, restored at parallelism {parallelism}"),
    );
}

// ---------------------------------------------------------------------------------------
// The harness: a job, its checkpoints in flight, completed ones and retention.
// ---------------------------------------------------------------------------------------

enum Phase {
    /// Synchronous phases taken, asynchronous ones not run.
    Taken(Vec<Box<dyn AsyncSnapshot>>),
    /// Every subtask returned a handle.
    Ran(Vec<KeyedStateHandle>),
    /// Some subtask failed (cancelled or a write failed): it can only be aborted.
    Failed,
}

struct InFlight {
    phase: Phase,
    model: Model,
}

struct Completed {
    handles: Vec<KeyedStateHandle>,
    model: Model,
}

struct Harness {
    store: Store,
    max_p: u32,
    job: Job,
    model: Model,
    in_flight: BTreeMap<u64, InFlight>,
    completed: BTreeMap<u64, Completed>,
    savepoint: Option<Completed>,
    next_id: u64,
    /// Completed checkpoints kept by retention (the newest ones).
    retain: usize,
    /// Whether the checkpoints that a completion gives up are notified as aborted (the
    /// runtime's coordinator does) or silently forgotten.
    notify_given_up: bool,
    /// Notifications not delivered to the subtasks yet, in order (`true`: complete).
    notes: Vec<(u64, bool)>,
}

impl Harness {
    fn new(max_p: u32, parallelism: u32, retain: usize) -> Self {
        Self {
            store: Store::default(),
            max_p,
            job: Job::new(max_p, parallelism),
            model: Model::new(),
            in_flight: BTreeMap::new(),
            completed: BTreeMap::new(),
            savepoint: None,
            next_id: 1,
            retain: retain.max(1),
            notify_given_up: true,
            notes: Vec::new(),
        }
    }

    fn change(&mut self, k: u64, c: Change) {
        self.job.apply(&mut self.model, k, &c);
    }

    fn begin(&mut self, incremental: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let options = if incremental {
            SnapshotOptions::incremental_checkpoint(id)
        } else {
            SnapshotOptions::full_checkpoint(id)
        };
        let phases = self.job.snapshot(options);
        self.in_flight.insert(
            id,
            InFlight {
                phase: Phase::Taken(phases),
                model: self.model.clone(),
            },
        );
        id
    }

    /// Runs the asynchronous phases of `id` (on another thread, while this one keeps
    /// writing is covered by its own test).
    fn run(&mut self, id: u64) {
        let f = self.in_flight.get_mut(&id).expect("in flight");
        let Phase::Taken(phases) = std::mem::replace(&mut f.phase, Phase::Failed) else {
            panic!("checkpoint {id} already ran");
        };
        let target = self.store.target(id, true);
        let handles = phases
            .into_iter()
            .map(|p| {
                p.run(&target, &CancelToken::new())
                    .unwrap_or_else(|e| panic!("async phase of checkpoint {id}: {e}"))
            })
            .collect();
        f.phase = Phase::Ran(handles);
    }

    /// Runs the asynchronous phases of `id` with a cancelled token or failing writes.
    fn run_failing(&mut self, id: u64, cancel: bool) {
        let f = self.in_flight.get_mut(&id).expect("in flight");
        let Phase::Taken(phases) = std::mem::replace(&mut f.phase, Phase::Failed) else {
            panic!("checkpoint {id} already ran");
        };
        let token = CancelToken::new();
        if cancel {
            token.cancel();
        } else {
            self.store.fail_writes.store(true, Ordering::Relaxed);
        }
        let target = self.store.target(id, true);
        let mut results = Vec::new();
        for p in phases {
            results.push(p.run(&target, &token));
        }
        self.store.fail_writes.store(false, Ordering::Relaxed);
        if cancel {
            for r in &results {
                assert!(
                    matches!(r, Err(StateError::Cancelled { checkpoint_id }) if *checkpoint_id == id),
                    "a cancelled async phase must fail: {:?}",
                    r.as_ref().err()
                );
            }
        }
        f.phase = if results.iter().all(|r| r.is_ok()) {
            // Nothing needed writing.
            Phase::Ran(results.into_iter().map(|r| r.unwrap()).collect())
        } else {
            Phase::Failed
        };
    }

    /// Delivers the notifications not delivered yet, in order.
    fn deliver(&mut self) {
        for (id, complete) in std::mem::take(&mut self.notes) {
            self.job.notify(id, complete);
        }
    }

    /// Publishes `id` (every file it references must exist), notifies the subtasks, gives
    /// up older checkpoints in flight, verifies the checkpoint by a restore, and applies
    /// retention.
    fn complete(&mut self, id: u64) {
        self.complete_with(id, true);
    }

    /// [`Harness::complete`]; with `deliver` false the notifications wait for the next
    /// [`Harness::deliver`] (a task may take barriers before it hears of a completion).
    fn complete_with(&mut self, id: u64, deliver: bool) {
        let f = self.in_flight.remove(&id).expect("in flight");
        let Phase::Ran(handles) = f.phase else {
            panic!("checkpoint {id} did not run");
        };
        for h in &handles {
            assert!(!canonical(h).is_empty(), "checkpoint {id} has no file");
            for file in h.files() {
                assert!(
                    self.store.exists(file),
                    "checkpoint {id} references {file}, which retention deleted while the \
                     checkpoint was in flight (publish would fail)"
                );
            }
        }
        self.store.finish(id);
        self.notes.push((id, true));
        // As the coordinator: a completed checkpoint gives up older ones in flight.
        let older: Vec<u64> = self.in_flight.range(..id).map(|(k, _)| *k).collect();
        for k in older {
            self.in_flight.remove(&k);
            self.store.finish(k);
            if self.notify_given_up {
                self.notes.push((k, false));
            }
        }
        if deliver {
            self.deliver();
        }
        let p = 1 + (id as u32 % 3).min(self.max_p - 1);
        verify(
            &self.store,
            self.max_p,
            p.min(self.max_p),
            &handles,
            &f.model,
            &format!("checkpoint {id}"),
        );
        self.completed.insert(
            id,
            Completed {
                handles,
                model: f.model,
            },
        );
        self.retention();
    }

    fn abort(&mut self, id: u64) {
        self.in_flight.remove(&id).expect("in flight");
        self.store.finish(id);
        self.notes.push((id, false));
        self.deliver();
        self.retention();
    }

    /// Keeps the newest `retain` completed checkpoints and the savepoint; deletes every
    /// file none of them references, unless a checkpoint in flight protects it.
    fn retention(&mut self) {
        while self.completed.len() > self.retain {
            self.completed.pop_first();
        }
        let mut keep: BTreeSet<String> = BTreeSet::new();
        for c in self.completed.values().chain(&self.savepoint) {
            keep.extend(paths(&c.handles));
        }
        self.store.gc(&keep);
    }

    fn savepoint(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        let phases = self.job.snapshot(SnapshotOptions::savepoint(id));
        let target = self.store.target(id, false);
        let handles: Vec<KeyedStateHandle> = phases
            .into_iter()
            .map(|p| p.run(&target, &CancelToken::new()).unwrap())
            .collect();
        self.store.finish(id);
        for h in &handles {
            assert!(h.files().all(|f| f.area == FileArea::Private));
        }
        let p = 1 + (id as u32 % 4).min(self.max_p - 1);
        verify(
            &self.store,
            self.max_p,
            p,
            &handles,
            &self.model,
            &format!("savepoint {id}"),
        );
        self.savepoint = Some(Completed {
            handles,
            model: self.model.clone(),
        });
        self.retention();
    }

    /// A failover: every checkpoint in flight is lost; the job restarts at `parallelism`
    /// from the latest completed checkpoint (or the savepoint), without the late state
    /// registered (it is carried through as bytes until used).
    fn restore(&mut self, parallelism: u32, from_savepoint: bool) -> bool {
        let source = if from_savepoint {
            self.savepoint.as_ref()
        } else {
            self.completed.values().next_back()
        };
        let Some(source) = source else {
            return false;
        };
        let (handles, model) = (source.handles.clone(), source.model.clone());
        for id in std::mem::take(&mut self.in_flight).into_keys() {
            self.store.finish(id);
        }
        self.notes.clear();
        let parallelism = parallelism.clamp(1, self.max_p);
        self.job = Job::restored(self.max_p, parallelism, &handles, &self.store, false)
            .unwrap_or_else(|e| panic!("failover restore: {e}"));
        self.model = model;
        self.retention();
        true
    }

    fn check(&mut self, what: &str) {
        self.job.check(&self.model, what);
    }

    /// Every retained checkpoint and the savepoint restore to their models.
    fn verify_retained(&self) {
        for (id, c) in &self.completed {
            for p in [1, 2] {
                verify(
                    &self.store,
                    self.max_p,
                    p.min(self.max_p),
                    &c.handles,
                    &c.model,
                    &format!("retained checkpoint {id}"),
                );
            }
        }
        if let Some(s) = &self.savepoint {
            verify(
                &self.store,
                self.max_p,
                1,
                &s.handles,
                &s.model,
                "retained savepoint",
            );
        }
    }
}

/// Keys in pairwise different key groups (of `max_p`), as many as asked for.
fn keys_in_distinct_groups(max_p: u32, n: usize) -> Vec<u64> {
    let mut picked: Vec<u64> = Vec::new();
    for k in 0..KEYS {
        let g = key_group_for_key(&key(k), max_p);
        if picked
            .iter()
            .all(|p| key_group_for_key(&key(*p), max_p) != g)
        {
            picked.push(k);
            if picked.len() == n {
                break;
            }
        }
    }
    assert_eq!(picked.len(), n, "not enough key groups among the keys");
    picked
}

fn fill(h: &mut Harness, round: u64) {
    for k in 0..KEYS {
        let v = k + 100 * round;
        h.change(k, Change::Value(v));
        h.change(k, Change::ListAdd((v % 251) as u8));
        h.change(k, Change::MapPut((v % 3) as u32, v));
        h.change(k, Change::Reduce(v as i64 - 50));
        h.change(k, Change::Aggregate(v));
        h.change(k, Change::Windowed((v % WINDOWS as u64) as u32, v));
        h.change(k, Change::WListAdd((k % 2) as u32, v));
        if k % 3 == 0 {
            // Restored jobs do not register this state until they write to it: it is
            // carried through their checkpoints as bytes.
            h.change(k, Change::Late(v));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Regressions and scenarios.
// ---------------------------------------------------------------------------------------

/// Checkpoints 2 and 3 in flight; 2 completes, so 4 is based on 2 while 3 (based on 1, and
/// rewriting what 2 rewrote) is still in flight; 3 completes and retention (keep 1) deletes
/// 2 and the files only 2 referenced. 4 must not reference them (or must protect them
/// while in flight): otherwise its publish fails, and in a job with the default tolerance
/// of 0 failed checkpoints, the job fails over. It happens whenever checkpoints overlap
/// (`max_concurrent` > 1) and a completion notification reaches the task before the next
/// barrier does.
#[test]
fn delta_based_on_a_checkpoint_that_an_overlapping_one_subsumes() {
    // 0: 4 runs after retention deleted 2; 1: 4 runs before; 2: the task takes barrier 4
    // before it hears that 3 completed (retention already deleted 2).
    for variant in 0..3 {
        let mut h = Harness::new(128, 1, 1);
        let [a, b, c] = keys_in_distinct_groups(128, 3)[..] else {
            unreachable!()
        };
        fill(&mut h, 1);
        let c1 = h.begin(true);
        h.run(c1);
        h.complete(c1);
        h.change(a, Change::Value(2)); // only checkpoint 2 and later see this
        let c2 = h.begin(true);
        h.change(b, Change::Value(3));
        let c3 = h.begin(true);
        h.run(c2);
        h.run(c3);
        h.complete(c2);
        h.change(c, Change::Value(4));
        let c4 = match variant {
            0 => {
                let c4 = h.begin(true);
                h.complete(c3); // retention deletes checkpoint 2
                h.run(c4);
                c4
            }
            1 => {
                let c4 = h.begin(true);
                h.run(c4);
                h.complete(c3);
                c4
            }
            _ => {
                h.complete_with(c3, false);
                let c4 = h.begin(true);
                h.deliver();
                h.run(c4);
                c4
            }
        };
        h.complete(c4);
        h.check(&format!("variant {variant}: after checkpoint 4"));
        h.verify_retained();
    }
}

/// The same with two overlapping checkpoints in a row, many times over: each one is based
/// on a checkpoint that the one before it subsumes.
#[test]
fn steady_overlap_of_two_checkpoints() {
    let mut h = Harness::new(128, 2, 1);
    fill(&mut h, 1);
    let mut prev = h.begin(true);
    for round in 0..12u64 {
        h.change(round % KEYS, Change::Value(round));
        h.change((round * 3 + 1) % KEYS, Change::MapRemove(1));
        let next = h.begin(true);
        h.run(prev);
        h.complete(prev);
        h.check(&format!("round {round}"));
        prev = next;
    }
    h.run(prev);
    h.complete(prev);
    h.verify_retained();
    // Still incremental: a change to one key group writes one key group.
    let before = h.store.writes();
    let c = h.begin(true);
    h.run(c);
    h.complete(c);
    assert_eq!(h.store.writes(), before, "nothing changed, nothing written");
}

/// A long chain, each checkpoint touching a few keys with every kind of change; restoring
/// at every checkpoint of the chain gives that checkpoint's state, at every parallelism.
/// Retention keeps every checkpoint, so the oldest files stay referenced all along.
#[test]
fn long_chain_restores_at_every_point() {
    let mut h = Harness::new(128, 1, usize::MAX);
    fill(&mut h, 1);
    let changes = [
        Change::ValueClear,
        Change::ListUpdate(vec![]),
        Change::ListUpdate(vec![1, 2]),
        Change::ListClear,
        Change::MapRemove(0),
        Change::MapRemove(1),
        Change::MapRemove(2),
        Change::MapClear,
        Change::ReduceClear,
        Change::AggregateClear,
        Change::WindowClear(0),
        Change::WindowClear(1),
        Change::WListClear(0),
        Change::WListClear(1),
        Change::Late(7),
        Change::Value(9),
        Change::Reduce(5),
        Change::Aggregate(3),
        Change::MapPut(9, 9),
        Change::WListAdd(2, 2),
    ];
    let mut ids = Vec::new();
    for step in 0..40u64 {
        let k = (step * 7) % KEYS;
        h.change(k, changes[step as usize % changes.len()].clone());
        if step % 3 == 0 {
            h.change(
                (k + 1) % KEYS,
                changes[(step as usize + 5) % changes.len()].clone(),
            );
        }
        let id = h.begin(true);
        h.run(id);
        h.complete(id);
        ids.push(id);
    }
    h.check("end of chain");
    for id in &ids {
        let c = &h.completed[id];
        let p = 1 + (*id as u32 % 4);
        verify(
            &h.store,
            128,
            p,
            &c.handles,
            &c.model,
            &format!("chain point {id}"),
        );
    }
    // Restore in the middle of the chain and continue incrementally: the first checkpoint
    // after the restore writes everything (no base), the next only what changed.
    let mid = ids[ids.len() / 2];
    let c = &h.completed[&mid];
    let (handles, model) = (c.handles.clone(), c.model.clone());
    h.job = Job::restored(128, 3, &handles, &h.store, false).unwrap();
    h.model = model;
    h.check("restored mid-chain");
    let first = h.begin(true);
    h.run(first);
    h.complete(first);
    h.change(3, Change::Value(33));
    let second = h.begin(true);
    h.run(second);
    h.complete(second);
    let new_files: Vec<_> = {
        let done = &h.completed[&second];
        let old = paths(&h.completed[&first].handles);
        done.handles
            .iter()
            .flat_map(|hd| canonical(hd).iter())
            .filter(|f| !old.contains(&path_of(f.file.area, &f.file.name)))
            .flat_map(|f| f.key_groups.iter().flat_map(|r| r.iter()))
            .collect()
    };
    assert_eq!(new_files, [key_group_for_key(&key(3), 128)]);
    h.verify_retained();
}

/// Incremental chains across rescales: 1 -> 3 -> 2 -> 4 -> 1, each restored job continuing
/// its chain with deltas (and retention keeping one checkpoint), at max parallelism 128
/// and at the edges 1 and 32768.
#[test]
fn rescaled_chains() {
    for (max_p, plan) in [
        (128u32, &[1u32, 3, 2, 4, 1][..]),
        (1, &[1, 1][..]),
        (32768, &[1, 3, 2][..]),
    ] {
        let mut h = Harness::new(max_p, plan[0], 1);
        fill(&mut h, 1);
        for (round, &p) in plan.iter().enumerate() {
            if round > 0 {
                assert!(h.restore(p, false));
                h.check(&format!("max_p {max_p}: restored at {p}"));
            }
            for step in 0..3u64 {
                let k = (round as u64 * 3 + step) % KEYS;
                h.change(k, Change::Value(round as u64 * 10 + step));
                h.change((k + 5) % KEYS, Change::MapRemove(((k + step) % 3) as u32));
                h.change(k, Change::Late(step));
                let id = h.begin(step != 1 || round % 2 == 0);
                h.run(id);
                h.complete(id);
            }
        }
        h.verify_retained();
    }
}

/// Max parallelism beyond the supported range is refused, not panicked on.
#[test]
fn max_parallelism_edges_are_checked() {
    for (max_p, range) in [
        (0, KeyGroupRange::new(0, 1)),
        (32769, KeyGroupRange::new(0, 1)),
        (128, KeyGroupRange::new(5, 5)),
        (128, KeyGroupRange::new(100, 129)),
    ] {
        let r = HashMapBackend::new(HashMapConfig {
            uid: "hunt".into(),
            max_parallelism: max_p,
            key_group_range: range,
            key_codec: BincodeCodec::<u64>::new().identity().clone(),
        });
        assert!(r.is_err(), "max_p {max_p} range {range}");
    }
}

/// Restore, then checkpoints without any change: the first writes everything (the restored
/// checkpoint is not a base), so retention may delete the restored checkpoint at once;
/// the next ones reference the first.
#[test]
fn restore_then_unchanged_checkpoints_do_not_lose_the_base() {
    for incremental_first in [true, false] {
        let mut h = Harness::new(128, 2, 1);
        fill(&mut h, 1);
        let c1 = h.begin(true);
        h.run(c1);
        h.complete(c1);
        assert!(h.restore(3, false));
        let c2 = h.begin(incremental_first);
        h.run(c2);
        h.complete(c2); // retention deletes checkpoint 1
        assert!(h.completed.keys().eq([&c2]));
        let before = h.store.writes();
        let c3 = h.begin(true);
        h.run(c3);
        h.complete(c3);
        if incremental_first {
            assert_eq!(h.store.writes(), before, "unchanged: nothing to write");
        }
        let c4 = h.begin(true);
        h.run(c4);
        h.complete(c4);
        h.verify_retained();
    }
}

/// Full and incremental checkpoints mixed in one lineage, a savepoint in between, and the
/// mode switched after restores.
#[test]
fn full_and_incremental_mixed_with_savepoints() {
    let mut h = Harness::new(128, 1, 1);
    fill(&mut h, 1);
    let modes = [true, true, false, true, false, false, true, true];
    for (i, &inc) in modes.iter().enumerate() {
        let k = i as u64 % KEYS;
        h.change(k, Change::Value(i as u64));
        h.change((k + 3) % KEYS, Change::ListClear);
        if i == 3 {
            h.savepoint();
        }
        let id = h.begin(inc);
        h.run(id);
        h.complete(id);
        if i == 4 {
            assert!(h.restore(2, false));
        }
        if i == 6 {
            assert!(h.restore(3, true)); // from the savepoint
        }
        h.check(&format!("step {i}"));
    }
    h.verify_retained();
}

/// A full checkpoint in flight while incremental ones start: whichever completes first,
/// nothing references files that retention deleted.
#[test]
fn full_checkpoint_in_flight_with_incremental_ones() {
    for order in 0..4 {
        let mut h = Harness::new(128, 1, 1);
        fill(&mut h, 1);
        let c1 = h.begin(true);
        h.run(c1);
        h.complete(c1);
        h.change(1, Change::Value(11));
        let full = h.begin(false);
        h.change(2, Change::Value(22));
        let inc = h.begin(true);
        match order {
            0 => {
                h.run(full);
                h.complete(full);
                h.run(inc);
                h.complete(inc);
            }
            1 => {
                h.run(inc);
                h.run(full);
                h.complete(full);
                h.complete(inc);
            }
            2 => {
                h.run(full);
                h.abort(full);
                h.run(inc);
                h.complete(inc);
            }
            _ => {
                h.run(inc);
                h.complete(inc); // gives up the full one
            }
        }
        h.change(3, Change::Value(33));
        let next = h.begin(true);
        h.run(next);
        h.complete(next);
        h.check(&format!("order {order}"));
        h.verify_retained();
    }
}

/// Aborted, failed and cancelled checkpoints: their files are deleted at once, their
/// changes reach the next checkpoint, and nothing is ever based on them.
#[test]
fn aborted_failed_and_cancelled_checkpoints_are_never_a_base() {
    let mut h = Harness::new(16, 2, 1);
    fill(&mut h, 1);
    let c1 = h.begin(true);
    h.run(c1);
    h.complete(c1);
    for (i, how) in [
        "abort-ran",
        "abort-unrun",
        "cancel",
        "fail",
        "complete-then-abort-notify",
    ]
    .iter()
    .enumerate()
    {
        let k = i as u64 % KEYS;
        h.change(k, Change::Value(1000 + i as u64));
        h.change((k + 1) % KEYS, Change::MapClear);
        let id = h.begin(true);
        match *how {
            "abort-ran" => {
                h.run(id);
                h.abort(id);
            }
            "abort-unrun" => h.abort(id),
            "cancel" => {
                h.run_failing(id, true);
                h.abort(id);
            }
            "fail" => {
                h.run_failing(id, false);
                h.abort(id);
            }
            _ => {
                h.run(id);
                h.complete(id);
                // A stray abort of a completed checkpoint changes nothing.
                h.job.notify(id, false);
            }
        }
        let next = h.begin(true);
        h.run(next);
        h.complete(next);
        h.check(how);
    }
    h.verify_retained();
}

/// Checkpoints completed out of order: a late completion of a given-up checkpoint (and a
/// completion of an id never seen) is ignored.
#[test]
fn late_and_unknown_notifications_are_ignored() {
    for notify_given_up in [false, true] {
        let mut h = Harness::new(128, 1, 2);
        h.notify_given_up = notify_given_up;
        fill(&mut h, 1);
        let c1 = h.begin(true);
        h.change(4, Change::Value(4));
        let c2 = h.begin(true);
        h.change(5, Change::Value(5));
        let c3 = h.begin(true);
        h.run(c3);
        h.run(c1);
        h.complete(c3); // gives up 1 and 2
        h.job.notify(c1, true); // late
        h.job.notify(c2, true); // late, never ran
        h.job.notify(999, true);
        h.job.notify(998, false);
        h.change(6, Change::Value(6));
        let c4 = h.begin(true);
        h.run(c4);
        h.complete(c4);
        h.check("after late notifications");
        h.verify_retained();
    }
}

/// A retried checkpoint id (the same id snapshotted twice): both attempts write their own
/// files, and the changes of neither are lost.
#[test]
fn retried_checkpoint_id() {
    let mut h = Harness::new(128, 1, 1);
    fill(&mut h, 1);
    let c1 = h.begin(true);
    h.run(c1);
    h.complete(c1);
    h.change(1, Change::Value(1));
    let id = h.next_id;
    let first = h.job.snapshot(SnapshotOptions::incremental_checkpoint(id));
    h.change(2, Change::Value(2));
    let c2 = h.begin(true);
    assert_eq!(c2, id);
    let target = h.store.target(id, true);
    for p in first {
        p.run(&target, &CancelToken::new()).unwrap();
    }
    h.run(c2);
    h.complete(c2);
    h.change(3, Change::Value(3));
    let c3 = h.begin(true);
    h.run(c3);
    h.complete(c3);
    h.verify_retained();
}

/// The asynchronous phase runs on another thread while the task thread keeps writing to the
/// same key groups; the checkpoint holds the state of its synchronous phase.
#[test]
fn async_phase_on_another_thread_while_writing() {
    let mut h = Harness::new(128, 1, 1);
    fill(&mut h, 1);
    let c1 = h.begin(true);
    h.run(c1);
    h.complete(c1);
    for round in 2..6u64 {
        h.change(round % KEYS, Change::ListAdd(round as u8));
        let id = h.begin(true);
        let Some(InFlight {
            phase: Phase::Taken(phases),
            ..
        }) = h.in_flight.get_mut(&id)
        else {
            unreachable!()
        };
        let phases = std::mem::take(phases);
        let store = &h.store;
        let job = &mut h.job;
        let mut model = h.model.clone();
        let handles = std::thread::scope(|s| {
            let worker = s.spawn(move || {
                let target = store.target(id, true);
                phases
                    .into_iter()
                    .map(|p| p.run(&target, &CancelToken::new()).unwrap())
                    .collect::<Vec<_>>()
            });
            for k in 0..KEYS {
                for c in [
                    Change::Value(round * 1000 + k),
                    Change::MapClear,
                    Change::ListClear,
                ] {
                    job.apply(&mut model, k, &c);
                }
            }
            worker.join().unwrap()
        });
        h.in_flight.get_mut(&id).unwrap().phase = Phase::Ran(handles);
        h.complete(id); // verifies the checkpoint against the model of its sync phase
        h.model = model;
        h.check(&format!("round {round}"));
    }
    h.verify_retained();
}

// ---------------------------------------------------------------------------------------
// Damaged inputs.
// ---------------------------------------------------------------------------------------

/// A chain of three checkpoints (`c1` writes everything, `c2` and `c3` one key group each),
/// with every checkpoint retained; returns the harness and `c3`.
fn damaged_chain() -> (Harness, u64) {
    let mut h = Harness::new(128, 1, usize::MAX);
    fill(&mut h, 1);
    let [a, b] = keys_in_distinct_groups(128, 2)[..] else {
        unreachable!()
    };
    let c1 = h.begin(true);
    h.run(c1);
    h.complete(c1);
    h.change(a, Change::Value(77));
    let c2 = h.begin(true);
    h.run(c2);
    h.complete(c2);
    h.change(b, Change::MapClear);
    h.change(b, Change::WListAdd(2, 5));
    let c3 = h.begin(true);
    h.run(c3);
    h.complete(c3);
    assert_eq!(canonical(&h.completed[&c3].handles[0]).len(), 3);
    (h, c3)
}

/// Registers every state (decoding the restored entries), as a result.
fn try_register(b: &mut HashMapBackend) -> Result<()> {
    let ns = || Arc::new(BincodeCodec::<u32>::new());
    b.register_value(&ValueStateDescriptor::<u64>::new("value"))?;
    b.register_list(&ListStateDescriptor::<String>::new("list"))?;
    b.register_map(&MapStateDescriptor::<u32, u64>::new("map"))?;
    b.register_reducing(&ReducingStateDescriptor::new("reducing", |a: i64, b| a + b))?;
    b.register_aggregating(&AggregatingStateDescriptor::new("aggregating", SumCount))?;
    b.register_value(&ValueStateDescriptor::<u64>::new("windowed").with_namespace::<u32>(ns()))?;
    b.register_list(&ListStateDescriptor::<u64>::new("wlist").with_namespace::<u32>(ns()))?;
    b.register_value(&ValueStateDescriptor::<u64>::new("late"))?;
    Ok(())
}

/// The error of restoring `handles` into one backend of every key group (and registering
/// its states), if any.
fn restore_err(h: &Harness, handles: &[KeyedStateHandle]) -> Option<String> {
    let mut b = backend(128, KeyGroupRange::all(128));
    b.restore(handles, &h.store)
        .and_then(|()| try_register(&mut b))
        .err()
        .map(|e| e.to_string())
}

/// Cut the newest delta file at every offset (with a reference of the cut size, as a torn
/// upload with a matching manifest would be): always an error naming the file, never a
/// panic.
#[test]
fn truncated_delta_is_an_error_at_every_offset() {
    let (h, c3) = damaged_chain();
    let handles = h.completed[&c3].handles.clone();
    let newest = canonical(&handles[0])
        .iter()
        .find(|f| f.file.name.contains(&format!("-{c3}-")))
        .unwrap()
        .file
        .clone();
    let whole = h.store.bytes(&newest);
    for len in 0..whole.len() {
        h.store.set_bytes(&newest, whole[..len].to_vec());
        // The reference still says the whole size: the source refuses it.
        let err = restore_err(&h, &handles).unwrap_or_else(|| panic!("cut at {len}: restored"));
        assert!(err.contains(&newest.name), "cut at {len}: {err}");
        // A reference of the cut size: the decoder refuses it.
        let mut cut = handles.clone();
        if let KeyedData::Canonical { files } = &mut cut[0].data {
            for f in files.iter_mut().filter(|f| f.file == newest) {
                f.file.size = len as u64;
            }
        }
        let err = restore_err(&h, &cut).unwrap_or_else(|| panic!("cut at {len}: restored"));
        assert!(
            err.contains(&newest.name) && err.contains("offset=") && err.contains("uid=hunt"),
            "cut at {len}: {err}"
        );
    }
    h.store.set_bytes(&newest, whole);
    verify(
        &h.store,
        128,
        1,
        &handles,
        &h.completed[&c3].model,
        "undamaged",
    );
}

/// Flip one bit of every byte of every file of the chain: an error naming the file, or (for
/// a block that the restore does not read: a key group a later delta replaced) the exact
/// state of the checkpoint. Never a panic, never wrong state.
#[test]
fn bit_flipped_chain_files_are_errors_or_unread() {
    let (h, c3) = damaged_chain();
    let handles = h.completed[&c3].handles.clone();
    let model = h.completed[&c3].model.clone();
    let mut unread = 0;
    let mut total = 0;
    for cf in canonical(&handles[0]).clone() {
        let whole = h.store.bytes(&cf.file);
        for i in 0..whole.len() {
            let mut bytes = whole.clone();
            bytes[i] ^= 1 << (i % 8);
            h.store.set_bytes(&cf.file, bytes);
            total += 1;
            let mut b = backend(128, KeyGroupRange::all(128));
            match b
                .restore(&handles, &h.store)
                .and_then(|()| try_register(&mut b))
            {
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        e.contains(&cf.file.name) && e.contains("uid=hunt"),
                        "flip at {i} of {}: {e}",
                        cf.file
                    );
                }
                Ok(()) => {
                    unread += 1;
                    let ids = register(&mut b);
                    let late = register_late(&mut b);
                    let mut s = Sub {
                        b,
                        ids,
                        late: Some(late),
                    };
                    for k in 0..KEYS {
                        let want = model.get(&k).cloned().unwrap_or_default();
                        assert_eq!(read_key(&mut s, k), want, "flip at {i} of {}", cf.file);
                    }
                }
            }
        }
        h.store.set_bytes(&cf.file, whole);
    }
    // Only the oldest file holds key groups that the restore does not read.
    assert!(
        unread < total / 2,
        "{unread} of {total} flips went unnoticed"
    );
}

/// A delta whose base file is missing, or a chain with a gap (a key group that no file
/// supplies), or a key group supplied twice: a clear error, never empty state.
#[test]
fn missing_base_and_gaps_are_errors() {
    let (h, c3) = damaged_chain();
    let handles = h.completed[&c3].handles.clone();
    let files = canonical(&handles[0]).clone();

    // Missing base file: the error names it.
    for cf in &files {
        let whole = h.store.bytes(&cf.file);
        h.store.remove(&cf.file);
        let err = restore_err(&h, &handles).expect("restored without a file");
        assert!(err.contains(&cf.file.name), "{err}");
        h.store.set_bytes(&cf.file, whole);
    }

    // A gap: one key group of the oldest file dropped from the handle.
    let mut gap = handles.clone();
    let KeyedData::Canonical { files: fs } = &mut gap[0].data else {
        unreachable!()
    };
    let oldest = fs.iter_mut().max_by_key(|f| f.key_groups.len()).unwrap();
    let r = oldest.key_groups.remove(0);
    let missing = r.start;
    if r.len() > 1 {
        oldest
            .key_groups
            .insert(0, KeyGroupRange::new(r.start + 1, r.end));
    }
    let err = restore_err(&h, &gap).expect("restored with a gap");
    assert!(
        err.contains(&format!("key group {missing} ")) && err.contains("uid=hunt"),
        "{err}"
    );

    // A key group supplied twice.
    let mut twice = handles.clone();
    let KeyedData::Canonical { files: fs } = &mut twice[0].data else {
        unreachable!()
    };
    let extra = fs[1].key_groups[0];
    fs[0].key_groups.push(extra);
    fs[0].key_groups.sort();
    let err = restore_err(&h, &twice).expect("restored a key group twice");
    assert!(err.contains("supplied twice"), "{err}");

    // A file that claims key groups outside its handle's range.
    let mut outside = handles.clone();
    outside[0].key_group_range = KeyGroupRange::new(0, 64);
    assert!(restore_err(&h, &outside).is_some());

    // A handle of another max parallelism.
    let mut b = backend(64, KeyGroupRange::all(64));
    assert!(b.restore(&handles, &h.store).is_err());
}

// ---------------------------------------------------------------------------------------
// The model-based property test.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Change(u64, Change),
    Begin {
        incremental: bool,
    },
    /// Runs the asynchronous phases of the n-th checkpoint in flight that has not run.
    Run(usize),
    /// The same with a cancelled token (`true`) or failing writes.
    RunFailing(usize, bool),
    /// Completes the n-th checkpoint in flight that ran (`true`: the subtasks hear of it at
    /// once, else at the next `Deliver` or other notification).
    Complete(usize, bool),
    Deliver,
    /// Aborts the n-th checkpoint in flight.
    Abort(usize),
    Savepoint,
    Restore {
        parallelism: u32,
        from_savepoint: bool,
    },
    /// A notification of an id that is not in flight (late or unknown).
    Stray {
        back: u64,
        complete: bool,
    },
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0..100u64).prop_map(Change::Value),
        1 => Just(Change::ValueClear),
        3 => any::<u8>().prop_map(Change::ListAdd),
        1 => proptest::collection::vec(any::<u8>(), 0..3).prop_map(Change::ListUpdate),
        1 => Just(Change::ListClear),
        3 => (0..4u32, 0..100u64).prop_map(|(u, v)| Change::MapPut(u, v)),
        2 => (0..4u32).prop_map(Change::MapRemove),
        1 => Just(Change::MapClear),
        2 => (-50i64..50).prop_map(Change::Reduce),
        1 => Just(Change::ReduceClear),
        2 => (0..100u64).prop_map(Change::Aggregate),
        1 => Just(Change::AggregateClear),
        2 => (0..WINDOWS, 0..100u64).prop_map(|(w, v)| Change::Windowed(w, v)),
        1 => (0..WINDOWS).prop_map(Change::WindowClear),
        2 => (0..WINDOWS, 0..100u64).prop_map(|(w, v)| Change::WListAdd(w, v)),
        1 => (0..WINDOWS).prop_map(Change::WListClear),
        1 => (0..100u64).prop_map(Change::Late),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..KEYS, change_strategy()).prop_map(|(k, c)| Op::Change(k, c)),
        6 => prop_oneof![4 => Just(true), 1 => Just(false)]
            .prop_map(|incremental| Op::Begin { incremental }),
        6 => (0..4usize).prop_map(Op::Run),
        1 => (0..4usize, any::<bool>()).prop_map(|(i, c)| Op::RunFailing(i, c)),
        6 => (0..4usize, prop_oneof![2 => Just(true), 1 => Just(false)])
            .prop_map(|(n, deliver)| Op::Complete(n, deliver)),
        2 => Just(Op::Deliver),
        2 => (0..4usize).prop_map(Op::Abort),
        1 => Just(Op::Savepoint),
        2 => (1..=4u32, prop_oneof![4 => Just(false), 1 => Just(true)])
            .prop_map(|(parallelism, from_savepoint)| Op::Restore { parallelism, from_savepoint }),
        1 => (0..6u64, any::<bool>()).prop_map(|(back, complete)| Op::Stray { back, complete }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    max_p: u32,
    parallelism: u32,
    retain: usize,
    notify_given_up: bool,
    ops: Vec<Op>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        prop_oneof![Just(1u32), Just(3), Just(8), Just(128)],
        1..=3u32,
        1..=2usize,
        any::<bool>(),
        proptest::collection::vec(op_strategy(), 1..120),
    )
        .prop_map(|(max_p, parallelism, retain, notify_given_up, ops)| Case {
            max_p,
            parallelism: parallelism.min(max_p),
            retain,
            notify_given_up,
            ops,
        })
}

fn pick(ids: impl Iterator<Item = u64>, n: usize) -> Option<u64> {
    let ids: Vec<u64> = ids.collect();
    (!ids.is_empty()).then(|| ids[n % ids.len()])
}

fn run_case(case: &Case) {
    let mut h = Harness::new(case.max_p, case.parallelism, case.retain);
    h.notify_given_up = case.notify_given_up;
    for (step, op) in case.ops.iter().enumerate() {
        match op {
            Op::Change(k, c) => h.change(*k, c.clone()),
            Op::Begin { incremental } => {
                h.begin(*incremental);
            }
            Op::Run(n) | Op::RunFailing(n, _) => {
                let taken = h
                    .in_flight
                    .iter()
                    .filter(|(_, f)| matches!(f.phase, Phase::Taken(_)))
                    .map(|(id, _)| *id);
                if let Some(id) = pick(taken, *n) {
                    match op {
                        Op::RunFailing(_, cancel) => h.run_failing(id, *cancel),
                        _ => h.run(id),
                    }
                }
            }
            Op::Complete(n, deliver) => {
                let ran = h
                    .in_flight
                    .iter()
                    .filter(|(_, f)| matches!(f.phase, Phase::Ran(_)))
                    .map(|(id, _)| *id);
                if let Some(id) = pick(ran, *n) {
                    h.complete_with(id, *deliver);
                }
            }
            Op::Deliver => h.deliver(),
            Op::Abort(n) => {
                if let Some(id) = pick(h.in_flight.keys().copied(), *n) {
                    h.abort(id);
                }
            }
            Op::Savepoint => h.savepoint(),
            Op::Restore {
                parallelism,
                from_savepoint,
            } => {
                h.restore(*parallelism, *from_savepoint);
            }
            Op::Stray { back, complete } => {
                let id = h.next_id.saturating_sub(1 + back);
                if !h.in_flight.contains_key(&id) && !h.notes.iter().any(|n| n.0 == id) {
                    h.deliver();
                    h.job.notify(id, *complete);
                }
            }
        }
        h.check(&format!("after step {step}: {op:?}"));
    }
    // Finish what is in flight, then every retained checkpoint restores.
    h.deliver();
    let ids: Vec<u64> = h.in_flight.keys().copied().collect();
    for id in ids {
        if let Some(f) = h.in_flight.get(&id) {
            match f.phase {
                Phase::Taken(_) => {
                    h.run(id);
                    h.complete(id);
                }
                Phase::Ran(_) => h.complete(id),
                Phase::Failed => h.abort(id),
            }
        }
    }
    h.verify_retained();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_with_overlapping_checkpoints_rescales_and_failures(case in case_strategy()) {
        run_case(&case);
    }
}
