//! Bug hunt over checkpoint storage: a model-based crash test (random sequences of begin,
//! write, reference, publish, abort, retention, pins, restore leases, injected faults,
//! crashes and reopens, checked against a small model after every step), and the
//! regression tests of what it and the targeted edge cases found.
//!
//! `HUNT_CASES` raises the number of proptest cases (default: a few seconds in debug).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use cairn_core::{FileArea, FileRef, SnapshotType};
use cairn_storage::fault::{CrashPoint, FaultyObjectStore, OpKind};
use cairn_storage::{
    create_savepoint, create_savepoint_in, discard_savepoint, open_savepoint, CheckpointSource,
    CheckpointStatus, CheckpointStorage, CheckpointWriter, StorageError,
};
use common::{content, manifest};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use proptest::prelude::*;

fn cases(default: u32) -> u32 {
    std::env::var("HUNT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn shared_ref(name: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        area: FileArea::Shared,
        name: name.to_string(),
        size: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

/// The names of the objects under `prefix` (relative to it).
fn names_under(store: &Arc<dyn ObjectStore>, prefix: &Path) -> BTreeSet<String> {
    futures::executor::block_on(store.list(Some(prefix)).try_collect::<Vec<_>>())
        .expect("list")
        .into_iter()
        .filter_map(|m| {
            m.location
                .prefix_match(prefix)
                .map(|p| p.map(|s| s.as_ref().to_string()).collect::<Vec<_>>())
                .map(|v| v.join("/"))
        })
        .collect()
}

fn put_raw(store: &Arc<dyn ObjectStore>, path: &str, bytes: Vec<u8>) {
    futures::executor::block_on(store.put(&Path::from(path), Bytes::from(bytes).into()))
        .expect("put");
}

// ---------------------------------------------------------------------------------------
// The model-based crash test.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Fault {
    Put,
    Delete,
    List,
    Get,
}

impl Fault {
    fn kind(self) -> OpKind {
        match self {
            Fault::Put => OpKind::Put,
            Fault::Delete => OpKind::Delete,
            Fault::List => OpKind::List,
            Fault::Get => OpKind::Get,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Begin,
    WritePrivate(usize),
    WriteShared(usize, u8),
    ReferenceShared(usize, u8),
    Publish(usize),
    Abort(usize),
    DropWriter(usize),
    /// `retain(n)` on the job's handle.
    Retain(usize),
    /// `retain_from(first, n)`, `first` the k-th completed checkpoint.
    RetainFrom(usize, usize),
    /// `retain(n)` through a second handle on the same directory in the same process.
    RetainOther(usize),
    Pin(u8),
    Unpin(u8),
    Lease(usize),
    Release(usize),
    /// Fails the next operation of a kind once (after it landed, if `bool`).
    Fail(Fault, bool),
    /// Crashes at the k-th write from now (after it landed, if `bool`).
    Crash(u8, bool),
    /// The process ends (after a crash or not) and a new one opens the directory.
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        2 => (0..3usize).prop_map(Op::WritePrivate),
        3 => (0..3usize, 0..5u8).prop_map(|(w, s)| Op::WriteShared(w, s)),
        2 => (0..3usize, 0..5u8).prop_map(|(w, s)| Op::ReferenceShared(w, s)),
        4 => (0..3usize).prop_map(Op::Publish),
        1 => (0..3usize).prop_map(Op::Abort),
        1 => (0..3usize).prop_map(Op::DropWriter),
        2 => (1..3usize).prop_map(Op::Retain),
        1 => (0..3usize, 1..3usize).prop_map(|(k, n)| Op::RetainFrom(k, n)),
        1 => (1..3usize).prop_map(Op::RetainOther),
        1 => (0..5u8).prop_map(Op::Pin),
        1 => (0..5u8).prop_map(Op::Unpin),
        1 => (0..4usize).prop_map(Op::Lease),
        1 => (0..2usize).prop_map(Op::Release),
        1 => (
            prop_oneof![
                Just(Fault::Put),
                Just(Fault::Delete),
                Just(Fault::List),
                Just(Fault::Get)
            ],
            any::<bool>()
        )
            .prop_map(|(f, a)| Op::Fail(f, a)),
        1 => (0..6u8, any::<bool>()).prop_map(|(k, a)| Op::Crash(k, a)),
        1 => Just(Op::Reopen),
    ]
}

fn shared_name(s: u8) -> String {
    format!("s{s}.sst")
}

fn shared_bytes(s: u8) -> Vec<u8> {
    content(&shared_name(s), 20 + s as usize)
}

/// One directory under test: in memory, or a local temp dir.
struct Dir {
    base: Arc<dyn ObjectStore>,
    /// The job's root inside `base`.
    root: Path,
    local: Option<tempfile::TempDir>,
}

impl Dir {
    fn new(local: bool) -> Self {
        if local {
            let tmp = tempfile::tempdir().expect("tempdir");
            let base: Arc<dyn ObjectStore> =
                Arc::new(LocalFileSystem::new_with_prefix(tmp.path()).expect("local fs"));
            Dir {
                base,
                root: Path::default(),
                local: Some(tmp),
            }
        } else {
            Dir {
                base: Arc::new(InMemory::new()),
                root: Path::from("job"),
                local: None,
            }
        }
    }

    fn url(&self) -> Option<String> {
        self.local
            .as_ref()
            .map(|t| t.path().to_str().expect("utf-8 path").to_string())
    }

    /// A fresh handle on the durable truth (no faults), dropped after each check.
    fn checker(&self) -> CheckpointStorage {
        match self.url() {
            Some(url) => CheckpointStorage::open_existing(&url).expect("open checker"),
            None => {
                // A store object of its own, so that it shares no registry with the process.
                let base = self.base.clone();
                let own: Arc<dyn ObjectStore> = Arc::new(FaultyObjectStore::new(base));
                CheckpointStorage::from_store(own, self.root.clone()).expect("checker")
            }
        }
    }

    fn shared_on_store(&self) -> BTreeSet<String> {
        names_under(&self.base, &self.root.clone().join("shared"))
    }

    /// A new process: the job's handle and a second handle on the same directory.
    fn process(&self) -> Proc {
        let (storage, other, faulty) = match self.url() {
            Some(url) => {
                let mut slot = None;
                let storage = CheckpointStorage::open_wrapped(&url, |inner| {
                    let f = FaultyObjectStore::new(inner);
                    slot = Some(f.clone());
                    Arc::new(f)
                })
                .expect("open");
                let faulty = slot.expect("wrapped");
                let f2 = faulty.clone();
                let other = CheckpointStorage::open_wrapped(&url, |_| Arc::new(f2))
                    .expect("open second handle");
                (storage, other, faulty)
            }
            None => {
                let faulty = FaultyObjectStore::new(self.base.clone());
                let shared: Arc<dyn ObjectStore> = Arc::new(faulty.clone());
                let storage =
                    CheckpointStorage::from_store(shared.clone(), self.root.clone()).expect("s");
                let other = CheckpointStorage::from_store(shared, self.root.clone()).expect("o");
                (storage, other, faulty)
            }
        };
        Proc {
            faulty,
            storage,
            other,
            writers: Vec::new(),
            pins: BTreeMap::new(),
            leases: Vec::new(),
            pending: None,
            crash_armed: false,
            max_begun: 0,
        }
    }
}

struct Writer {
    writer: CheckpointWriter,
    files: Vec<FileRef>,
    /// Shared names registered (attempted writes and successful references).
    registered: BTreeSet<String>,
}

struct Proc {
    faulty: FaultyObjectStore,
    storage: CheckpointStorage,
    other: CheckpointStorage,
    writers: Vec<Writer>,
    pins: BTreeMap<String, usize>,
    leases: Vec<(u64, CheckpointSource)>,
    /// A `fail_nth*` armed and not yet fired.
    pending: Option<(OpKind, u64)>,
    crash_armed: bool,
    max_begun: u64,
}

impl Proc {
    /// Whether an injected fault fired (so that an error is allowed); clears a fired one.
    fn fault_fired(&mut self) -> bool {
        if self.faulty.is_crashed() {
            return true;
        }
        match self.pending {
            Some((kind, n)) if self.faulty.count(kind) >= n => {
                self.pending = None;
                true
            }
            _ => false,
        }
    }

    fn in_flight_shared(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .writers
            .iter()
            .flat_map(|w| w.registered.iter().cloned())
            .collect();
        names.extend(self.pins.keys().cloned());
        names
    }
}

struct Model {
    /// Checkpoints whose manifest is on the store.
    complete: BTreeSet<u64>,
    max_complete_ever: u64,
}

fn allow<T: std::fmt::Debug>(
    what: &str,
    r: &Result<T, StorageError>,
    fired: bool,
) -> Result<(), String> {
    match r {
        Err(e) if !fired => Err(format!("{what} failed without a fault: {e}")),
        _ => Ok(()),
    }
}

/// What a retention must keep: the newest `n` own completed, earlier runs', leased ones.
fn kept_by_retention(
    complete: &BTreeSet<u64>,
    first: u64,
    n: usize,
    leased: &BTreeSet<u64>,
) -> BTreeSet<u64> {
    let own: Vec<u64> = complete.iter().copied().filter(|&id| id >= first).collect();
    let split = own.len().saturating_sub(n);
    complete
        .iter()
        .copied()
        .filter(|id| *id < first || own[split..].contains(id) || leased.contains(id))
        .collect()
}

fn check(dir: &Dir, model: &Model, proc: &Proc) -> Result<(), String> {
    let checker = dir.checker();
    let truth: BTreeSet<u64> = checker
        .completed_checkpoints()
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    if truth != model.complete {
        return Err(format!(
            "completed checkpoints on the store {truth:?}, model {:?}",
            model.complete
        ));
    }
    for &id in &truth {
        checker
            .verify(id)
            .map_err(|e| format!("checkpoint {id} does not restore: {e}"))?;
    }
    for (id, _) in &proc.leases {
        if !truth.contains(id) {
            return Err(format!("checkpoint {id} deleted while a restore leases it"));
        }
    }
    let on_store = dir.shared_on_store();
    for name in proc.in_flight_shared() {
        let written = proc
            .writers
            .iter()
            .any(|w| w.files.iter().any(|f| f.name == name))
            || proc.pins.contains_key(&name);
        if written && !on_store.contains(&name) {
            return Err(format!(
                "in-flight or pinned shared file {name} was deleted"
            ));
        }
    }
    Ok(())
}

/// After a successful retention: nothing unreferenced and not in flight is left.
fn check_no_leak(dir: &Dir, proc: &Proc, newest_kept_own: Option<u64>) -> Result<(), String> {
    let checker = dir.checker();
    let mut referenced = BTreeSet::new();
    for (id, status) in checker.scan().map_err(|e| e.to_string())? {
        match status {
            CheckpointStatus::Complete(m) => referenced.extend(
                m.files()
                    .filter(|f| f.area == FileArea::Shared)
                    .map(|f| f.name.clone()),
            ),
            _ => {
                let in_flight = proc.writers.iter().any(|w| w.writer.id() == id);
                if newest_kept_own.is_some_and(|n| id < n) && !in_flight {
                    return Err(format!(
                        "incomplete checkpoint {id} older than {newest_kept_own:?} survived retention"
                    ));
                }
            }
        }
    }
    let in_flight = proc.in_flight_shared();
    for name in dir.shared_on_store() {
        if !referenced.contains(&name) && !in_flight.contains(&name) {
            return Err(format!(
                "unreferenced shared file {name} survived retention"
            ));
        }
    }
    Ok(())
}

/// The process ends and a new one opens the directory. The old one goes first: storages on
/// one local directory share the process's registry while any of them lives.
fn reopen(dir: &Dir, proc: &mut Proc) {
    // A stand-in over a throwaway store while the old process is dropped.
    let stand_in = Dir::new(false).process();
    drop(std::mem::replace(proc, stand_in));
    *proc = dir.process();
}

fn run_model(local: bool, ops: Vec<Op>) -> Result<(), String> {
    let dir = Dir::new(local);
    let mut model = Model {
        complete: BTreeSet::new(),
        max_complete_ever: 0,
    };
    let mut proc = dir.process();
    for (step, op) in ops.into_iter().enumerate() {
        let at = |e: String| format!("step {step} {op:?}: {e}");
        match op.clone() {
            Op::Begin => {
                if proc.writers.len() < 3 {
                    let r = proc
                        .storage
                        .next_checkpoint_id()
                        .and_then(|id| proc.storage.begin_checkpoint(id));
                    let fired = proc.fault_fired();
                    allow("begin", &r, fired).map_err(at)?;
                    if let Ok(writer) = r {
                        let id = writer.id();
                        if id <= model.max_complete_ever || id <= proc.max_begun {
                            return Err(at(format!(
                                "id {id} went back: completed up to {}, begun up to {}",
                                model.max_complete_ever, proc.max_begun
                            )));
                        }
                        proc.max_begun = id;
                        proc.writers.push(Writer {
                            writer,
                            files: Vec::new(),
                            registered: BTreeSet::new(),
                        });
                    }
                }
            }
            Op::WritePrivate(i) => {
                if let Some(w) = proc.writers.get_mut(i) {
                    let name = format!("p{}", w.files.len());
                    let r = w.writer.write(
                        FileArea::Private,
                        &name,
                        content(&name, 10 + w.files.len()),
                    );
                    if let Ok(f) = &r {
                        w.files.push(f.clone());
                    }
                    let fired = proc.fault_fired();
                    allow("write private", &r, fired).map_err(at)?;
                }
            }
            Op::WriteShared(i, s) => {
                if let Some(w) = proc.writers.get_mut(i) {
                    let name = shared_name(s);
                    if w.files.iter().all(|f| f.name != name) {
                        w.registered.insert(name.clone());
                        let r = w.writer.write(FileArea::Shared, &name, shared_bytes(s));
                        if let Ok(f) = &r {
                            w.files.push(f.clone());
                        }
                        let fired = proc.fault_fired();
                        allow("write shared", &r, fired).map_err(at)?;
                    }
                }
            }
            Op::ReferenceShared(i, s) => {
                let exists = dir.shared_on_store().contains(&shared_name(s));
                if let Some(w) = proc.writers.get_mut(i) {
                    let f = shared_ref(&shared_name(s), &shared_bytes(s));
                    if w.files.iter().all(|g| g.name != f.name) {
                        let r = w.writer.reference_shared(&f);
                        if r.is_ok() {
                            w.registered.insert(f.name.clone());
                            w.files.push(f);
                        }
                        let fired = proc.fault_fired();
                        match &r {
                            Ok(()) if !exists => {
                                return Err(at("referenced a missing shared file".into()))
                            }
                            Err(e) if exists && !fired => {
                                return Err(at(format!("reference to an existing file: {e}")))
                            }
                            _ => {}
                        }
                    }
                }
            }
            Op::Publish(i) => {
                if i < proc.writers.len() {
                    let w = proc.writers.remove(i);
                    let id = w.writer.id();
                    let m = manifest(id, SnapshotType::Checkpoint, &w.files);
                    let r = proc.storage.publish(w.writer, &m);
                    let fired = proc.fault_fired();
                    allow("publish", &r, fired).map_err(at)?;
                    let landed = match r {
                        Ok(()) => true,
                        // The manifest may have landed all the same (a lost acknowledgement).
                        Err(_) => dir.checker().load(id).is_ok(),
                    };
                    if landed {
                        model.complete.insert(id);
                        model.max_complete_ever = model.max_complete_ever.max(id);
                    }
                }
            }
            Op::Abort(i) => {
                if i < proc.writers.len() {
                    let w = proc.writers.remove(i);
                    let r = proc.storage.abort(w.writer.id());
                    let fired = proc.fault_fired();
                    allow("abort", &r, fired).map_err(at)?;
                }
            }
            Op::DropWriter(i) => {
                if i < proc.writers.len() {
                    proc.writers.remove(i);
                }
            }
            Op::Retain(n) | Op::RetainOther(n) | Op::RetainFrom(_, n) => {
                let first = match op {
                    Op::RetainFrom(k, _) => model
                        .complete
                        .iter()
                        .nth(k)
                        .copied()
                        .unwrap_or(model.max_complete_ever + 1),
                    _ => 0,
                };
                let handle = match op {
                    Op::RetainOther(_) => proc.other.clone(),
                    _ => proc.storage.clone(),
                };
                let leased: BTreeSet<u64> = proc.leases.iter().map(|(id, _)| *id).collect();
                let kept = kept_by_retention(&model.complete, first, n, &leased);
                let r = handle.retain_from(first, n);
                let fired = proc.fault_fired();
                allow("retain", &r, fired).map_err(at)?;
                if r.is_ok() {
                    model.complete = kept.clone();
                } else {
                    // Some subsumed checkpoints may be gone: take what the store says, which
                    // must hold every kept one (checked by `check`: nothing else appears).
                    let truth: BTreeSet<u64> = dir
                        .checker()
                        .completed_checkpoints()
                        .map_err(|e| at(e.to_string()))?
                        .into_iter()
                        .collect();
                    if let Some(lost) = kept.difference(&truth).next() {
                        return Err(at(format!("a failed retention deleted kept {lost}")));
                    }
                    model.complete = model.complete.intersection(&truth).copied().collect();
                }
                if r.is_ok() {
                    let newest_own = kept.iter().copied().filter(|&id| id >= first).max();
                    check_no_leak(&dir, &proc, newest_own).map_err(at)?;
                }
            }
            Op::Pin(s) => {
                let name = shared_name(s);
                let r = proc.storage.write_pinned_shared(&name, shared_bytes(s));
                let fired = proc.fault_fired();
                allow("pin", &r, fired).map_err(at)?;
                if r.is_ok() {
                    *proc.pins.entry(name).or_insert(0) += 1;
                }
            }
            Op::Unpin(s) => {
                let name = shared_name(s);
                if let Some(n) = proc.pins.get_mut(&name) {
                    proc.storage.unpin_shared(&name);
                    *n -= 1;
                    if *n == 0 {
                        proc.pins.remove(&name);
                    }
                }
            }
            Op::Lease(k) => {
                if let Some(&id) = model.complete.iter().nth(k) {
                    proc.leases.push((id, proc.storage.source(id)));
                }
            }
            Op::Release(k) => {
                if k < proc.leases.len() {
                    proc.leases.remove(k);
                }
            }
            Op::Fail(fault, after) => {
                if proc.pending.is_none() && !proc.faulty.is_crashed() {
                    let kind = fault.kind();
                    let n = proc.faulty.count(kind) + 1;
                    if after {
                        proc.faulty.fail_nth_after(kind, n);
                    } else {
                        proc.faulty.fail_nth(kind, n);
                    }
                    proc.pending = Some((kind, n));
                }
            }
            Op::Crash(k, after) => {
                if !proc.crash_armed {
                    let point = if after {
                        CrashPoint::AfterWrite
                    } else {
                        CrashPoint::BeforeWrite
                    };
                    proc.faulty
                        .crash_at_write(proc.faulty.writes() + 1 + u64::from(k), point);
                    proc.crash_armed = true;
                }
            }
            Op::Reopen => reopen(&dir, &mut proc),
        }
        check(&dir, &model, &proc).map_err(at)?;
    }
    // The end: a new process, a clean retention, nothing leaks and everything kept restores.
    reopen(&dir, &mut proc);
    let r = proc.storage.retain(1).map_err(|e| e.to_string())?;
    model.complete = kept_by_retention(&model.complete, 0, 1, &BTreeSet::new());
    check(&dir, &model, &proc)?;
    check_no_leak(&dir, &proc, r.retained.last().copied())?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_with_crashes_in_memory(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(false, ops).map_err(TestCaseError::fail)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1000) / 4,
        ..ProptestConfig::default()
    })]

    #[test]
    fn model_with_crashes_on_local_disk(ops in proptest::collection::vec(op(), 1..60)) {
        run_model(true, ops).map_err(TestCaseError::fail)?;
    }
}

// ---------------------------------------------------------------------------------------
// Regression tests and targeted edge cases.
// ---------------------------------------------------------------------------------------

/// Found by the model test (`RetainOther`): every storage had a registry of its own, so
/// retention through a second handle on the job's directory (the runtime opens one to
/// restore from a checkpoint path) deleted shared files a checkpoint in flight through the
/// first handle had written, deleted a checkpoint the other handle was restoring, and
/// counted checkpoint ids as if the other handle had begun none.
#[test]
fn two_handles_on_one_directory_share_in_flight_files_leases_and_ids() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().to_str().unwrap().to_string();
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let pairs = [
        (
            CheckpointStorage::open(&url).unwrap(),
            CheckpointStorage::open_existing(&url).unwrap(),
        ),
        (
            CheckpointStorage::from_store(memory.clone(), Path::from("job")).unwrap(),
            CheckpointStorage::from_store(memory.clone(), Path::from("job")).unwrap(),
        ),
    ];
    for (job, other) in pairs {
        // Checkpoint 1 completes; checkpoint 2 is in flight with a new shared file.
        let w1 = job.begin_checkpoint(1).unwrap();
        let old = w1
            .write(FileArea::Shared, "old.sst", content("old", 30))
            .unwrap();
        job.publish(w1, &manifest(1, SnapshotType::Checkpoint, &[old]))
            .unwrap();
        let w2 = job.begin_checkpoint(2).unwrap();
        let new = w2
            .write(FileArea::Shared, "new.sst", content("new", 30))
            .unwrap();
        let pinned = job
            .write_pinned_shared("log/seg-1", content("seg", 9))
            .unwrap();
        let report = other.retain(1).unwrap();
        assert!(report.shared_deleted.is_empty(), "{report:?}");
        // Ids are counted together: 2 was begun through the first handle.
        assert_eq!(other.next_checkpoint_id().unwrap(), 3);
        assert!(other.begin_checkpoint(2).is_err());
        job.publish(w2, &manifest(2, SnapshotType::Checkpoint, &[new]))
            .unwrap();
        common::assert_restorable(&job, 2);
        // A restore of checkpoint 1 through the second handle keeps it from the job's
        // retention; once the lease is dropped it goes.
        let lease = other.source(1);
        let report = job.retain(1).unwrap();
        assert_eq!(report.kept_restoring, vec![1], "{report:?}");
        common::assert_restorable(&job, 1);
        drop(lease);
        let report = job.retain(1).unwrap();
        assert_eq!(report.subsumed, vec![1], "{report:?}");
        assert_eq!(report.shared_deleted, vec!["old.sst".to_string()]);
        assert_eq!(job.completed_checkpoints().unwrap(), vec![2]);
        // The pin taken through one handle holds for the other.
        let report = other.retain(1).unwrap();
        assert_eq!(report.shared_in_flight, vec![pinned.name.clone()]);
        other.unpin_shared(&pinned.name);
        assert!(job.retain(1).unwrap().shared_in_flight.is_empty());
    }
}

/// A storage over a store of its own does not share the registry of another store that
/// happens to hold the same prefix: a process that ends (its handles dropped) leaves
/// nothing behind for the next.
#[test]
fn registries_go_with_the_last_handle() {
    let tmp = tempfile::tempdir().unwrap();
    let url = tmp.path().to_str().unwrap().to_string();
    {
        let job = CheckpointStorage::open(&url).unwrap();
        let w = job.begin_checkpoint(7).unwrap();
        w.write(FileArea::Shared, "x.sst", content("x", 5)).unwrap();
        job.write_pinned_shared("pin", content("p", 3)).unwrap();
        // Dropped without publish or unpin: the process ends.
    }
    let next = CheckpointStorage::open(&url).unwrap();
    // Nothing of checkpoint 7 is on the store, so its id may be used again; no pin or
    // writer of the ended process protects its files.
    assert_eq!(next.next_checkpoint_id().unwrap(), 1);
    let report = next.retain(1).unwrap();
    assert_eq!(
        report.shared_deleted,
        vec!["pin".to_string(), "x.sst".to_string()]
    );
}

/// Found by review of `SavepointWriter::abort`: it deleted only the files whose put had
/// succeeded, so a put that failed after its bytes landed (a lost acknowledgement) left a
/// file, and with it the directory, that no manifest would ever name.
#[test]
fn savepoint_abort_deletes_a_file_whose_put_failed_after_landing() {
    let base: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyObjectStore::new(base.clone());
    let store: Arc<dyn ObjectStore> = Arc::new(faulty.clone());
    let dir = Path::from("savepoints/sp-1-abcd0123");
    let writer = create_savepoint_in(store, dir.clone(), 1).unwrap();
    writer
        .write(FileArea::Private, "op/0.state", content("a", 10))
        .unwrap();
    faulty.fail_nth_after(OpKind::Put, faulty.count(OpKind::Put) + 1);
    let e = common::expect_err(writer.write(FileArea::Private, "op/1.state", content("b", 10)));
    assert!(e.to_string().contains("injected fault"), "{e}");
    // The failed put landed.
    assert_eq!(names_under(&base, &dir).len(), 2);
    writer.abort();
    assert_eq!(names_under(&base, &dir), BTreeSet::new());
}

/// A crash after the data files of a savepoint but before its `_metadata` (or a copy
/// without it) is no savepoint: opening it says which manifest is missing, discarding it is
/// refused (the directory might be anything) and touches nothing.
#[test]
fn savepoint_without_metadata_is_refused_by_open_and_discard() {
    let tmp = tempfile::tempdir().unwrap();
    let sp = tmp.path().join("sp-3-00000000");
    let url = sp.to_str().unwrap().to_string();
    let w = create_savepoint(&url, 3).unwrap();
    let f = w
        .write(FileArea::Private, "op/0.state", content("s", 40))
        .unwrap();
    drop(w); // crash before publish
    let e = common::expect_err(open_savepoint(&url));
    assert!(matches!(e, StorageError::NoSuchSnapshot { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{url}/_metadata")), "{e}");
    let e = common::expect_err(discard_savepoint(&url));
    assert!(matches!(e, StorageError::NoSuchSnapshot { .. }), "{e}");
    assert!(sp.join("op/0.state").exists());

    // A whole savepoint copied elsewhere (relative names) restores there; the copy without
    // its `_metadata` does not.
    let w = create_savepoint(&url, 3).unwrap();
    let f2 = w
        .write(FileArea::Private, "op/0.state", content("s", 40))
        .unwrap();
    assert_eq!(f, f2);
    w.publish(&manifest(
        3,
        SnapshotType::Savepoint,
        std::slice::from_ref(&f2),
    ))
    .unwrap();
    let copy = tmp.path().join("moved/sp-3");
    std::fs::create_dir_all(copy.join("op")).unwrap();
    std::fs::copy(sp.join("op/0.state"), copy.join("op/0.state")).unwrap();
    let copy_url = copy.to_str().unwrap().to_string();
    assert!(open_savepoint(&copy_url).is_err());
    std::fs::copy(sp.join("_metadata"), copy.join("_metadata")).unwrap();
    let (m, source) = open_savepoint(&format!("{copy_url}/_metadata")).unwrap();
    assert_eq!(m.checkpoint_id, 3);
    assert_eq!(&source.read(&f2).unwrap()[..], &content("s", 40)[..]);
    // Discard removes the copy and leaves the original.
    discard_savepoint(&copy_url).unwrap();
    assert!(!copy.exists());
    assert!(open_savepoint(&url).is_ok());
}

/// The bytes of a valid manifest of checkpoint `id` with one private file `name`.
fn manifest_bytes(id: u64, name: &str) -> Vec<u8> {
    let f = FileRef {
        area: FileArea::Private,
        name: name.to_string(),
        size: 4,
        crc32: crc32fast::hash(b"data"),
    };
    cairn_format::encode_manifest(&manifest(id, SnapshotType::Checkpoint, &[f])).unwrap()
}

/// Rewrites the footer's CRC32 after an edit (so that the edit, not the CRC, is found).
fn refix_crc(bytes: &mut [u8]) {
    let n = bytes.len() - 16;
    let crc = crc32fast::hash(&bytes[..n]);
    bytes[n..n + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Bad manifests in a checkpoint directory: each is reported, naming the path (and, for
/// damage, the offset), by `load`, `scan`, `latest_completed` and retention; none panics or
/// allocates what its counts claim.
#[test]
fn bad_manifests_are_errors_naming_path_and_offset() {
    let good = manifest_bytes(2, "aaaa/x");
    let mut newer = good.clone();
    let n = newer.len();
    newer[8..10].copy_from_slice(&2u16.to_le_bytes());
    newer[n - 12..n - 10].copy_from_slice(&2u16.to_le_bytes());
    refix_crc(&mut newer);
    let truncated = good[..good.len() - 7].to_vec();
    let mut escape = good.clone();
    let at = escape
        .windows(6)
        .position(|w| w == b"aaaa/x")
        .expect("the name is in the bytes");
    escape[at..at + 6].copy_from_slice(b"../a/x");
    refix_crc(&mut escape);
    // The operator count (body offset 17: id u64, type u8, timestamp u64).
    let mut huge = good.clone();
    huge[16 + 17..16 + 21].copy_from_slice(&u32::MAX.to_le_bytes());
    refix_crc(&mut huge);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("newer version", newer, "upgrade cairn"),
        ("truncated", truncated, "offset="),
        ("name outside the directory", escape, "offset="),
        ("huge count", huge, "offset="),
    ];
    for (what, bytes, expect) in cases {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let storage = CheckpointStorage::from_store(store.clone(), Path::from("job")).unwrap();
        // Checkpoint 1 is good, checkpoint 2 is bad.
        let w = storage.begin_checkpoint(1).unwrap();
        let f = w.write(FileArea::Private, "p", content("p", 3)).unwrap();
        storage
            .publish(w, &manifest(1, SnapshotType::Checkpoint, &[f]))
            .unwrap();
        put_raw(&store, "job/chk-2/_metadata", bytes);
        let e = common::expect_err(storage.load(2)).to_string();
        assert!(e.contains("path=job/chk-2/_metadata"), "{what}: {e}");
        assert!(e.contains(expect), "{what}: {e}");
        let scan = storage.scan().unwrap();
        assert!(
            matches!(scan[1], (2, CheckpointStatus::Corrupt(_))),
            "{what}: {scan:?}"
        );
        let e = common::expect_err(storage.latest_completed()).to_string();
        assert!(
            e.contains("checkpoint_id=2") || e.contains("2"),
            "{what}: {e}"
        );
        // Retention neither trusts nor deletes the newest (unreadable) manifest's files.
        let report = storage.retain(1).unwrap();
        assert_eq!(report.corrupt.len(), 1, "{what}: {report:?}");
        assert!(report.shared_skipped.is_some(), "{what}: {report:?}");
        common::assert_restorable(&storage, 1);
        // The escaping name reads nothing outside the directory.
        assert!(storage.verify(2).is_err());
    }
}

/// A restore lease keeps its checkpoint and shared files from retention in the same
/// process; dropped, it lets them go.
#[test]
fn restore_lease_keeps_its_checkpoint_until_dropped() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let mut files = Vec::new();
    for id in 1..=3u64 {
        let w = storage.begin_checkpoint(id).unwrap();
        let name = format!("s{id}.sst");
        let f = w
            .write(FileArea::Shared, &name, content(&name, 20))
            .unwrap();
        storage
            .publish(
                w,
                &manifest(id, SnapshotType::Checkpoint, std::slice::from_ref(&f)),
            )
            .unwrap();
        files.push(f);
    }
    let lease = storage.source(1);
    let clone = lease.clone();
    drop(lease);
    let report = storage.retain(1).unwrap();
    assert_eq!(report.kept_restoring, vec![1]);
    assert_eq!(report.subsumed, vec![2]);
    assert_eq!(report.shared_deleted, vec!["s2.sst".to_string()]);
    assert_eq!(
        &clone.read(&files[0]).unwrap()[..],
        &content("s1.sst", 20)[..]
    );
    drop(clone);
    let report = storage.retain(1).unwrap();
    assert_eq!(report.subsumed, vec![1]);
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![3]);
}

/// `num_retained` 1 with a checkpoint in flight that references a file of the checkpoint
/// being subsumed: the file stays, and the new checkpoint restores.
#[test]
fn retain_one_keeps_files_an_in_flight_checkpoint_references() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let w1 = storage.begin_checkpoint(1).unwrap();
    let a = w1
        .write(FileArea::Shared, "a.sst", content("a", 11))
        .unwrap();
    storage
        .publish(
            w1,
            &manifest(1, SnapshotType::Checkpoint, std::slice::from_ref(&a)),
        )
        .unwrap();
    let w2 = storage.begin_checkpoint(2).unwrap();
    let b = w2
        .write(FileArea::Shared, "b.sst", content("b", 11))
        .unwrap();
    storage
        .publish(
            w2,
            &manifest(2, SnapshotType::Checkpoint, std::slice::from_ref(&b)),
        )
        .unwrap();
    let w3 = storage.begin_checkpoint(3).unwrap();
    w3.reference_shared(&a).unwrap();
    let report = storage.retain(1).unwrap();
    assert_eq!(report.subsumed, vec![1]);
    assert_eq!(report.shared_in_flight, vec!["a.sst".to_string()]);
    storage
        .publish(w3, &manifest(3, SnapshotType::Checkpoint, &[a, b]))
        .unwrap();
    storage.retain(1).unwrap();
    common::assert_restorable(&storage, 3);
}

/// A publish that fails after the checkpoint's files were written leaves no file for ever:
/// the next retention after a newer checkpoint completes finds them all.
#[test]
fn failed_publish_leaves_files_that_retention_finds() {
    let base: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyObjectStore::new(base.clone());
    let store: Arc<dyn ObjectStore> = Arc::new(faulty.clone());
    let storage = CheckpointStorage::from_store(store, Path::from("job")).unwrap();
    let w = storage.begin_checkpoint(1).unwrap();
    let p = w.write(FileArea::Private, "p", content("p", 5)).unwrap();
    let s = w.write(FileArea::Shared, "s.sst", content("s", 5)).unwrap();
    faulty.fail_nth(OpKind::Put, faulty.count(OpKind::Put) + 1);
    assert!(storage
        .publish(w, &manifest(1, SnapshotType::Checkpoint, &[p, s]))
        .is_err());
    assert!(storage.completed_checkpoints().unwrap().is_empty());
    let w = storage.begin_checkpoint(2).unwrap();
    storage
        .publish(w, &manifest(2, SnapshotType::Checkpoint, &[]))
        .unwrap();
    let report = storage.retain(1).unwrap();
    assert_eq!(report.incomplete, vec![1], "{report:?}");
    assert_eq!(report.shared_deleted, vec!["s.sst".to_string()]);
    assert_eq!(names_under(&base, &Path::from("job")), {
        let mut only = BTreeSet::new();
        only.insert("chk-2/_metadata".to_string());
        only
    });
}
