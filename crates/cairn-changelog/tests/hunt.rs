//! A hunt over the changelog backend.
//!
//! - A model-based proptest: every state kind in namespaces, on changelog backends that
//!   wrap the heap or RocksDB, through changes, checkpoints (several in flight, completed
//!   out of order, cancelled, aborted, never notified; full ones too), materializations
//!   (started between and around checkpoints, failing while uploads fail), retention and
//!   restores from any retained checkpoint at parallelism 1-3, switching the wrapped backend
//!   where the materialized snapshot allows it, against a `BTreeMap` model. States are
//!   registered only when used, so restored states stay unregistered across checkpoints
//!   and materializations (the carry path). `HUNT_CASES=N` runs more cases.
//! - Bad input: a truncated or corrupted segment, a missing segment or materialized file,
//!   a handle whose segments leave a gap in the sequence numbers: each an error that names
//!   the file, never a panic, never wrong state.
//! - Truncation: segments and materialized files no checkpoint needs any more are released
//!   once a newer materialization is used by a completed checkpoint, and retention deletes
//!   them; files a retained checkpoint uses stay.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_changelog::{ChangelogBackend, ChangelogConfig, ChangelogOptions, ChangelogStorage};
use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{CheckpointStorage, CheckpointWriter};
use proptest::prelude::*;

const UID: &str = "hunt";
const MAX_P: u32 = 16;
const KEYS: usize = 10;
const NS: u32 = 3;

// ---- the schema --------------------------------------------------------------------------

fn key_codec() -> BincodeCodec<String> {
    BincodeCodec::<String>::new()
}

fn key_bytes(key: &str) -> Vec<u8> {
    key_codec().encode_to_vec(&key.to_string()).unwrap()
}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| {
            if i % 2 == 0 {
                format!("k{i}")
            } else {
                format!("a-longer-key-{i}")
            }
        })
        .collect()
}

/// Sum and count; the result is the accumulator itself.
struct Pair;
impl AggregateFunction<u64, (u64, u64), (u64, u64)> for Pair {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u64) {
        *acc = (acc.0 + input, acc.1 + 1);
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

fn ns() -> CodecRef<u32> {
    Arc::new(BincodeCodec::<u32>::new())
}

fn reg_v<B: KeyedStateBackend>(b: &mut B) -> ValueStateId<u64, u32> {
    b.register_value(&ValueStateDescriptor::new("v").with_namespace(ns()))
        .unwrap()
}
fn reg_l<B: KeyedStateBackend>(b: &mut B) -> ListStateId<u32, u32> {
    b.register_list(&ListStateDescriptor::new("l").with_namespace(ns()))
        .unwrap()
}
fn reg_m<B: KeyedStateBackend>(b: &mut B) -> MapStateId<u32, u64, u32> {
    b.register_map(&MapStateDescriptor::new("m").with_namespace(ns()))
        .unwrap()
}
fn reg_r<B: KeyedStateBackend>(b: &mut B) -> ReducingStateId<i64, u32> {
    let sum = |a: i64, b: i64| a + b;
    b.register_reducing(&ReducingStateDescriptor::new("r", sum).with_namespace(ns()))
        .unwrap()
}
fn reg_a<B: KeyedStateBackend>(b: &mut B) -> AggregatingStateId<u64, (u64, u64), (u64, u64), u32> {
    b.register_aggregating(&AggregatingStateDescriptor::new("a", Pair).with_namespace(ns()))
        .unwrap()
}

/// The model of one (key, namespace): value, list, map, reducing, aggregating.
type Cell = (
    Option<u64>,
    Vec<u32>,
    BTreeMap<u32, u64>,
    Option<i64>,
    Option<(u64, u64)>,
);
type Model = BTreeMap<(usize, u32), Cell>;

// ---- backends ----------------------------------------------------------------------------

/// Which backend a changelog backend wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Inner {
    Heap,
    /// RocksDB: native incremental snapshots or canonical ones, and a cache size.
    Rocks {
        native: bool,
        cache: usize,
    },
}

/// A changelog backend over either wrapped backend.
#[allow(clippy::large_enum_variant)]
enum Wrapped {
    Heap(ChangelogBackend<HashMapBackend>),
    Rocks(ChangelogBackend<RocksDbBackend>),
}

/// Calls `$body` with `$b` bound to the changelog backend, whatever it wraps.
macro_rules! with {
    ($w:expr, |$b:ident| $body:expr) => {
        match $w {
            Wrapped::Heap($b) => $body,
            Wrapped::Rocks($b) => $body,
        }
    };
}

/// A changelog storage that fails every upload while `fail` is set (materializations
/// then fail; segment uploads are retried by the checkpoints that need them).
#[derive(Debug)]
struct Flaky {
    storage: CheckpointStorage,
    fail: AtomicBool,
}

impl ChangelogStorage for Flaky {
    fn upload(&self, name: &str, bytes: &[u8]) -> Result<FileRef> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StateError::layer(
                format!("uploading name={name}"),
                "injected upload failure",
            ));
        }
        ChangelogStorage::upload(&self.storage, name, bytes)
    }
    fn release(&self, file: &FileRef) {
        ChangelogStorage::release(&self.storage, file)
    }
}

#[derive(Clone, Copy, Debug)]
struct Setup {
    /// Upload between checkpoints through a [`Flaky`] storage (or through the checkpoints).
    uploads: bool,
    /// Materialize at every trigger check (interval zero) or only by log size.
    eager: bool,
    segment_bytes: usize,
}

fn options(setup: Setup) -> ChangelogOptions {
    ChangelogOptions {
        materialization_interval: setup.eager.then_some(Duration::ZERO),
        log_to_state_ratio: 0.5,
        min_log_bytes: 1500,
        segment_bytes: setup.segment_bytes,
        max_in_flight_bytes: 1 << 20,
        // Uploads fail for whole stretches of a case: no limit, the model checks the state.
        max_materialization_failures: u32::MAX,
    }
}

struct Env {
    storage: CheckpointStorage,
    flaky: Arc<Flaky>,
    rocks_dir: tempfile::TempDir,
    setup: Setup,
}

impl Env {
    fn new(setup: Setup) -> Self {
        let storage = CheckpointStorage::open("memory://").unwrap();
        Self {
            flaky: Arc::new(Flaky {
                storage: storage.clone(),
                fail: AtomicBool::new(false),
            }),
            storage,
            rocks_dir: tempfile::tempdir().unwrap(),
            setup,
        }
    }

    fn create(&self, inner: Inner, range: KeyGroupRange) -> Wrapped {
        let codec = key_codec().identity().clone();
        let config = ChangelogConfig::with_options(UID, codec.clone(), options(self.setup));
        let storage: Option<Arc<dyn ChangelogStorage>> = self
            .setup
            .uploads
            .then(|| self.flaky.clone() as Arc<dyn ChangelogStorage>);
        fn wrap<B: KeyedStateBackend>(
            b: B,
            config: ChangelogConfig,
            storage: Option<Arc<dyn ChangelogStorage>>,
        ) -> ChangelogBackend<B> {
            match storage {
                Some(s) => ChangelogBackend::new(b, config, s),
                None => ChangelogBackend::with_checkpoint_uploads(b, config),
            }
        }
        match inner {
            Inner::Heap => Wrapped::Heap(wrap(
                HashMapBackend::new(HashMapConfig {
                    uid: UID.into(),
                    max_parallelism: MAX_P,
                    key_group_range: range,
                    key_codec: codec,
                })
                .unwrap(),
                config,
                storage,
            )),
            Inner::Rocks { native, cache } => Wrapped::Rocks(wrap(
                RocksDbBackend::new(RocksDbConfig {
                    uid: UID.into(),
                    max_parallelism: MAX_P,
                    key_group_range: range,
                    key_codec: codec,
                    local_dir: self.rocks_dir.path().to_path_buf(),
                    options: RocksDbOptions {
                        cache_capacity: cache,
                        native_incremental: native,
                        ..RocksDbOptions::default()
                    },
                })
                .unwrap(),
                config,
                storage,
            )),
        }
    }
}

/// The subtasks of the operator.
struct Op {
    subtasks: Vec<Wrapped>,
}

impl Op {
    fn new(env: &Env, inner: Inner, p: u32) -> Self {
        let subtasks = (0..p)
            .map(|i| env.create(inner, KeyGroupRange::for_subtask(MAX_P, p, i).unwrap()))
            .collect();
        Self { subtasks }
    }

    fn restore(env: &Env, inner: Inner, p: u32, m: &Manifest, source: &dyn SnapshotSource) -> Self {
        let mut op = Self::new(env, inner, p);
        let part = m.operator(UID).unwrap();
        for w in &mut op.subtasks {
            with!(w, |b| {
                let range = b.key_group_range();
                let handles: Vec<KeyedStateHandle> = part
                    .subtasks
                    .iter()
                    .filter_map(|s| s.keyed.clone())
                    .filter(|h| !h.key_group_range.intersect(&range).is_empty())
                    .collect();
                b.restore(&handles, source).unwrap();
            })
        }
        op
    }

    fn owner(&mut self, key: &str) -> &mut Wrapped {
        let p = self.subtasks.len() as u32;
        let kg = key_group_for_key(&key_bytes(key), MAX_P);
        let i = subtask_for_key_group(kg, p, MAX_P);
        &mut self.subtasks[i as usize]
    }

    fn notify(&mut self, id: u64, complete: bool) {
        for w in &mut self.subtasks {
            with!(w, |b| if complete {
                b.notify_checkpoint_complete(id)
            } else {
                b.notify_checkpoint_aborted(id)
            })
        }
    }

    /// Waits until no subtask materializes (each takes its finished materializations).
    fn settle(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for w in &mut self.subtasks {
            while with!(w, |b| b.is_materializing()) {
                assert!(Instant::now() < deadline, "a materialization never ends");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

// ---- operations ----------------------------------------------------------------------------

fn apply_on<B: KeyedStateBackend>(
    b: &mut B,
    key: &str,
    c: &mut Cell,
    (what, n, x): (u8, u32, u32),
) {
    b.set_current_key(&key_bytes(key)).unwrap();
    let x64 = u64::from(x);
    let vs: Vec<u32> = [x, x + 1].into_iter().take(x as usize % 3).collect();
    match what {
        0 | 1 => {
            let s = reg_v(b);
            b.value_in(&s, &n).update(x64).unwrap();
            c.0 = Some(x64);
        }
        2 => {
            let s = reg_v(b);
            b.value_in(&s, &n).clear().unwrap();
            c.0 = None;
        }
        3 => {
            let s = reg_l(b);
            b.list_in(&s, &n).add(x).unwrap();
            c.1.push(x);
        }
        4 => {
            let s = reg_l(b);
            b.list_in(&s, &n).add_all(vs.clone()).unwrap();
            c.1.extend(vs);
        }
        5 => {
            let s = reg_l(b);
            b.list_in(&s, &n).update(vs.clone()).unwrap();
            c.1 = vs;
        }
        6 => {
            let s = reg_l(b);
            b.list_in(&s, &n).clear().unwrap();
            c.1.clear();
        }
        7 | 8 => {
            let s = reg_m(b);
            b.map_in(&s, &n).put(x % 4, x64).unwrap();
            c.2.insert(x % 4, x64);
        }
        9 => {
            let s = reg_m(b);
            b.map_in(&s, &n).remove(&(x % 4)).unwrap();
            c.2.remove(&(x % 4));
        }
        10 if x % 2 == 0 => {
            let s = reg_m(b);
            b.map_in(&s, &n).clear().unwrap();
            c.2.clear();
        }
        10 => {
            let s = reg_r(b);
            b.reducing_in(&s, &n).clear().unwrap();
            c.3 = None;
        }
        11 => {
            let s = reg_r(b);
            b.reducing_in(&s, &n).add(i64::from(x) - 25).unwrap();
            c.3 = Some(c.3.unwrap_or(0) + i64::from(x) - 25);
        }
        _ if x % 5 == 0 => {
            let s = reg_a(b);
            b.aggregating_in(&s, &n).clear().unwrap();
            c.4 = None;
        }
        _ => {
            let s = reg_a(b);
            b.aggregating_in(&s, &n).add(x64).unwrap();
            let a = c.4.unwrap_or((0, 0));
            c.4 = Some((a.0 + x64, a.1 + 1));
        }
    }
}

fn read_on<B: KeyedStateBackend>(b: &mut B, key: &str, n: u32) -> Cell {
    let (v, l, m, r, a) = (reg_v(b), reg_l(b), reg_m(b), reg_r(b), reg_a(b));
    b.set_current_key(&key_bytes(key)).unwrap();
    (
        b.value_in(&v, &n).get().unwrap(),
        b.list_in(&l, &n).get().unwrap(),
        b.map_in(&m, &n).entries().unwrap().into_iter().collect(),
        b.reducing_in(&r, &n).get().unwrap(),
        b.aggregating_in(&a, &n).get().unwrap(),
    )
}

/// Every (key, namespace) read through the typed API (registers every state).
fn check(op: &mut Op, model: &Model, what: &str) {
    let mut got = Model::new();
    for (k, key) in keys().iter().enumerate() {
        let w = op.owner(key);
        for n in 0..NS {
            let c = with!(w, |b| read_on(b, key, n));
            if c != Cell::default() {
                got.insert((k, n), c);
            }
        }
    }
    assert_eq!(&got, model, "{what}");
}

#[derive(Clone, Debug)]
enum Step {
    /// `what` picks the change of key `k` in namespace `n` (see `apply_on`).
    Data { k: usize, n: u32, what: u8, x: u32 },
    /// The synchronous phase of a checkpoint, finished by `Finish` (or never).
    Begin { incremental: bool },
    /// Finishes pending checkpoint `i % pending` as `how` says (see `Run::finish`).
    Finish { i: usize, how: u8 },
    /// `Begin` and `Finish` at once.
    Checkpoint { incremental: bool, how: u8 },
    /// Starts a materialization on subtask `s % p`.
    Materialize { s: usize },
    /// Waits for every running materialization.
    Settle,
    /// Uploads (with a storage) fail from now on, or succeed again.
    FailUploads(bool),
    /// Keeps the newest `n` completed checkpoints.
    Retain(usize),
    /// Reads everything (registers every state).
    Check,
    /// Restores retained checkpoint `pick % retained` at `p`, wrapping the heap if `heap`
    /// (when the materialized snapshot allows it).
    Restore { p: u32, heap: bool, pick: usize },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        30 => (0..KEYS, 0..NS, 0..13u8, 0..50u32)
            .prop_map(|(k, n, what, x)| Step::Data { k, n, what, x }),
        3 => prop_oneof![4 => Just(true), 1 => Just(false)]
            .prop_map(|incremental| Step::Begin { incremental }),
        3 => (0..4usize, 0..5u8).prop_map(|(i, how)| Step::Finish { i, how }),
        5 => (prop_oneof![5 => Just(true), 1 => Just(false)], prop_oneof![3 => Just(0u8), 1 => 1..5u8])
            .prop_map(|(incremental, how)| Step::Checkpoint { incremental, how }),
        2 => (0..3usize).prop_map(|s| Step::Materialize { s }),
        1 => Just(Step::Settle),
        1 => any::<bool>().prop_map(Step::FailUploads),
        1 => (1..4usize).prop_map(Step::Retain),
        1 => Just(Step::Check),
        2 => (1..=3u32, any::<bool>(), 0..4usize)
            .prop_map(|(p, heap, pick)| Step::Restore { p, heap, pick }),
    ]
}

struct Pending {
    id: u64,
    writer: CheckpointWriter,
    phases: Vec<Result<Box<dyn AsyncSnapshot>>>,
    model: Model,
}

struct Run {
    env: Env,
    rocks: Inner,
    next_id: u64,
    /// The model as of each published checkpoint.
    completed: BTreeMap<u64, Model>,
    /// The wrapped backend of each published checkpoint.
    inner_of: BTreeMap<u64, Inner>,
    model: Model,
    /// Uploads failed at some point of this run of backends (checkpoints may fail).
    failed_uploads: bool,
    /// The last checkpoint notified complete to these backends.
    last_notified: u64,
}

impl Run {
    fn begin(&mut self, op: &mut Op, incremental: bool) -> Pending {
        let id = self.next_id;
        self.next_id += 1;
        let mut o = SnapshotOptions::full_checkpoint(id);
        o.incremental = incremental;
        if !incremental {
            // A full checkpoint is the wrapped backend's: it refuses restored states that
            // are not registered (a documented limit); register them all.
            for w in &mut op.subtasks {
                with!(w, |b| {
                    let _ = (reg_v(b), reg_l(b), reg_m(b), reg_r(b), reg_a(b));
                })
            }
        }
        let phases = op
            .subtasks
            .iter_mut()
            .map(|w| with!(w, |b| b.snapshot(o)))
            .collect();
        Pending {
            id,
            writer: self.env.storage.begin_checkpoint(id).unwrap(),
            phases,
            model: self.model.clone(),
        }
    }

    /// 0 completes the checkpoint, 1 cancels its asynchronous phases (which must fail), 2
    /// drops them, 3 publishes it without notification, 4 runs them and aborts it (another
    /// operator declined).
    fn finish(&mut self, op: &mut Op, inner: Inner, p: Pending, how: u8) {
        let cancel = CancelToken::new();
        if how == 1 || how == 2 {
            cancel.cancel();
            for phase in p.phases.into_iter().flatten() {
                if how == 1 {
                    assert!(
                        phase.run(&p.writer, &cancel).is_err(),
                        "a cancelled phase ran"
                    );
                }
            }
            op.notify(p.id, false);
            self.env.storage.abort(p.id).unwrap();
            return;
        }
        if p.id < self.last_notified {
            // Subsumed by a completed checkpoint: the coordinator drops it (as Flink's), the
            // backends ended it already. Its phases may fail or not; it is not published.
            for phase in p.phases.into_iter().flatten() {
                let _ = phase.run(&p.writer, &cancel);
            }
            op.notify(p.id, false);
            self.env.storage.abort(p.id).unwrap();
            return;
        }
        let mut subtasks = Vec::new();
        let mut failed = None;
        let n = op.subtasks.len() as u32;
        for (i, phase) in p.phases.into_iter().enumerate() {
            match phase.and_then(|ph| ph.run(&p.writer, &cancel)) {
                Ok(h) => subtasks.push(SubtaskManifest {
                    key_group_range: KeyGroupRange::for_subtask(MAX_P, n, i as u32).unwrap(),
                    keyed: Some(h),
                    operator_state: Vec::new(),
                }),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            assert!(
                self.failed_uploads,
                "checkpoint {} failed without a failure injected: {e}",
                p.id
            );
            op.notify(p.id, false);
            self.env.storage.abort(p.id).unwrap();
            return;
        }
        if how == 4 {
            op.notify(p.id, false);
            self.env.storage.abort(p.id).unwrap();
            return;
        }
        let m = Manifest {
            checkpoint_id: p.id,
            snapshot_type: SnapshotType::Checkpoint,
            timestamp_ms: 1_700_000_000_000 + p.id,
            operators: vec![OperatorManifest {
                uid: UID.into(),
                parallelism: n,
                max_parallelism: MAX_P,
                subtasks,
            }],
        };
        if std::env::var("HUNT_TRACE").is_ok() {
            for (i, s) in m.operators[0].subtasks.iter().enumerate() {
                let files: Vec<_> = s
                    .keyed
                    .as_ref()
                    .unwrap()
                    .files()
                    .map(|f| f.name.clone())
                    .collect();
                eprintln!("checkpoint {} subtask {i}: {files:?}", p.id);
            }
        }
        self.env.storage.publish(p.writer, &m).unwrap();
        if how == 0 {
            op.notify(p.id, true);
            self.last_notified = p.id;
        }
        self.completed.insert(p.id, p.model);
        self.inner_of.insert(p.id, inner);
    }

    /// Runs `steps` on backends wrapping `inner` at `p`, restored from `start`; returns
    /// what the next run restores (the checkpoint id picked) and with which backend.
    fn run(&mut self, inner: Inner, p: u32, start: Option<u64>, steps: &[Step]) {
        let mut op = match start {
            None => Op::new(&self.env, inner, p),
            Some(id) => {
                let m = self.env.storage.load(id).unwrap();
                Op::restore(&self.env, inner, p, &m, &self.env.storage.source(id))
            }
        };
        self.failed_uploads = self.env.flaky.fail.load(Ordering::SeqCst);
        self.last_notified = 0;
        let mut pending: Vec<Pending> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            if std::env::var("HUNT_TRACE").is_ok() {
                eprintln!(
                    "step {i}: {s:?} pending={:?}",
                    pending.iter().map(|p| p.id).collect::<Vec<_>>()
                );
            }
            match *s {
                Step::Data { k, n, what, x } => {
                    let key = &keys()[k];
                    let c = self.model.entry((k, n)).or_default();
                    with!(op.owner(key), |b| apply_on(b, key, c, (what, n, x)));
                    if *c == Cell::default() {
                        self.model.remove(&(k, n));
                    }
                }
                Step::Begin { incremental } => pending.push(self.begin(&mut op, incremental)),
                Step::Finish { i, how } if !pending.is_empty() => {
                    let p = pending.remove(i % pending.len());
                    self.finish(&mut op, inner, p, how);
                }
                Step::Finish { .. } => {}
                Step::Checkpoint { incremental, how } => {
                    let p = self.begin(&mut op, incremental);
                    self.finish(&mut op, inner, p, how);
                }
                Step::Materialize { s } => {
                    let n = op.subtasks.len();
                    with!(&mut op.subtasks[s % n], |b| b.materialize_now().unwrap());
                }
                Step::Settle => op.settle(),
                Step::FailUploads(fail) => {
                    if fail && self.env.setup.uploads {
                        self.failed_uploads = true;
                    }
                    self.env.flaky.fail.store(fail, Ordering::SeqCst);
                }
                Step::Retain(n) => {
                    self.env.storage.retain(n).unwrap();
                }
                Step::Check => check(&mut op, &self.model, &format!("at step {i}")),
                Step::Restore { .. } => unreachable!(),
            }
        }
        check(&mut op, &self.model, "at the end");
        // Pending checkpoints are never finished: dropped with the backends.
        drop(pending);
    }
}

/// Whether backends wrapping `inner` can restore checkpoint `id`.
fn can_restore(run: &Run, id: u64, inner: Inner) -> bool {
    match (run.inner_of[&id], inner) {
        // A heap materialization is canonical; a RocksDB one is native unless configured
        // otherwise: only RocksDB reads it (either setup).
        (Inner::Heap, _) | (Inner::Rocks { native: false, .. }, _) => true,
        (Inner::Rocks { native: true, .. }, Inner::Heap) => false,
        _ => true,
    }
}

fn run_steps(setup: Setup, rocks: Inner, first_heap: bool, steps: &[Step]) {
    let mut run = Run {
        env: Env::new(setup),
        rocks,
        next_id: 1,
        completed: BTreeMap::new(),
        inner_of: BTreeMap::new(),
        model: Model::new(),
        failed_uploads: false,
        last_notified: 0,
    };
    let mut inner = if first_heap { Inner::Heap } else { rocks };
    let mut p = 1;
    let mut start = None;
    let mut from = 0;
    // The steps from `a` to `b`, and the restore after them (parallelism, heap, pick).
    type Piece = (usize, usize, Option<(u32, bool, usize)>);
    let mut pieces: Vec<Piece> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        if let Step::Restore { p, heap, pick } = *s {
            pieces.push((from, i, Some((p, heap, pick))));
            from = i + 1;
        }
    }
    pieces.push((from, steps.len(), None));
    for (a, b, next) in pieces {
        run.run(inner, p, start, &steps[a..b]);
        let Some((next_p, heap, pick)) = next else {
            break;
        };
        let retained = run.env.storage.completed_checkpoints().unwrap();
        if retained.is_empty() {
            run.model.clear();
            start = None;
        } else {
            let id = retained[pick % retained.len()];
            start = Some(id);
            run.model = run.completed[&id].clone();
        }
        p = next_p;
        inner = if heap { Inner::Heap } else { run.rocks };
        if let Some(id) = start {
            if !can_restore(&run, id, inner) {
                inner = run.rocks;
            }
        }
    }
    // Every retained checkpoint restores to the model as of it.
    for id in run.env.storage.completed_checkpoints().unwrap() {
        let m = run.env.storage.load(id).unwrap();
        let inner = run.inner_of[&id];
        let mut op = Op::restore(&run.env, inner, 2, &m, &run.env.storage.source(id));
        let model = run.completed[&id].clone();
        check(&mut op, &model, &format!("retained checkpoint {id}"));
    }
}

fn cases() -> u32 {
    std::env::var("HUNT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_state_kind_through_checkpoints_materializations_and_restores(
        uploads in any::<bool>(),
        eager in any::<bool>(),
        segment_bytes in prop_oneof![Just(200usize), Just(2000)],
        native in any::<bool>(),
        cache in prop_oneof![Just(2usize), Just(1 << 16)],
        first_heap in any::<bool>(),
        steps in proptest::collection::vec(step_strategy(), 1..120),
    ) {
        let setup = Setup { uploads, eager, segment_bytes };
        run_steps(setup, Inner::Rocks { native, cache }, first_heap, &steps);
    }
}

// ---- regressions ---------------------------------------------------------------------------

/// A heap changelog backend at parallelism 1 that materializes only when told to.
fn manual(storage: Option<&CheckpointStorage>) -> ChangelogBackend<HashMapBackend> {
    manual_with(
        storage.map(|s| Arc::new(s.clone()) as Arc<dyn ChangelogStorage>),
        |_| {},
    )
}

/// [`manual`] over any changelog storage, with its options changed by `tweak`.
fn manual_with(
    storage: Option<Arc<dyn ChangelogStorage>>,
    tweak: impl FnOnce(&mut ChangelogOptions),
) -> ChangelogBackend<HashMapBackend> {
    let codec = key_codec().identity().clone();
    let inner = HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: codec.clone(),
    })
    .unwrap();
    let mut config = ChangelogConfig::new(UID, codec);
    config.options.materialization_interval = None;
    config.options.min_log_bytes = u64::MAX;
    config.options.segment_bytes = 300;
    tweak(&mut config.options);
    match storage {
        Some(s) => ChangelogBackend::new(inner, config, s),
        None => ChangelogBackend::with_checkpoint_uploads(inner, config),
    }
}

fn put<B: KeyedStateBackend>(b: &mut B, key: &str, x: u64) {
    let v = reg_v(b);
    b.set_current_key(&key_bytes(key)).unwrap();
    b.value_in(&v, &0).update(x).unwrap();
}

fn get<B: KeyedStateBackend>(b: &mut B, key: &str) -> Option<u64> {
    let v = reg_v(b);
    b.set_current_key(&key_bytes(key)).unwrap();
    b.value_in(&v, &0).get().unwrap()
}

fn settle<B: KeyedStateBackend>(b: &mut ChangelogBackend<B>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.is_materializing() {
        assert!(Instant::now() < deadline, "a materialization never ends");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The manifest of checkpoint `id` of one subtask owning every key group.
fn manifest_of(id: u64, handle: KeyedStateHandle) -> Manifest {
    Manifest {
        checkpoint_id: id,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: 1_700_000_000_000 + id,
        operators: vec![OperatorManifest {
            uid: UID.into(),
            parallelism: 1,
            max_parallelism: MAX_P,
            subtasks: vec![SubtaskManifest {
                key_group_range: KeyGroupRange::all(MAX_P),
                keyed: Some(handle),
                operator_state: Vec::new(),
            }],
        }],
    }
}

/// Runs the asynchronous phase of `phase` and publishes checkpoint `id`.
fn publish(
    storage: &CheckpointStorage,
    id: u64,
    writer: CheckpointWriter,
    phase: Box<dyn AsyncSnapshot>,
) -> std::result::Result<Manifest, String> {
    let handle = phase
        .run(&writer, &CancelToken::new())
        .map_err(|e| e.to_string())?;
    let m = manifest_of(id, handle);
    storage.publish(writer, &m).map_err(|e| e.to_string())?;
    Ok(m)
}

/// Two keys of different key groups.
fn two_keys() -> (String, String) {
    let kg = |k: &str| key_group_for_key(&key_bytes(k), MAX_P);
    let a = "a".to_string();
    let b = (0..)
        .map(|i| format!("b{i}"))
        .find(|k| kg(k) != kg(&a))
        .unwrap();
    (a, b)
}

/// Regression (found by the model test): without a storage of its own, a checkpoint took
/// a file that an earlier completed checkpoint wrote as durable for good. But retention
/// deletes it once no retained checkpoint references it, and a materialization started
/// before the completion that replaced the wrapped backend's base still references it: the
/// next checkpoint using that materialization referenced a deleted file (publish failed
/// with `NotFound`; without the publish's check it would not restore). Now the checkpoint
/// asks its target and writes the file again.
#[test]
fn a_materialization_may_reference_a_file_that_retention_deleted() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let mut b = manual(None);
    let (ka, kb) = two_keys();
    let complete = |b: &mut ChangelogBackend<HashMapBackend>, id: u64| {
        let w = storage.begin_checkpoint(id).unwrap();
        let phase = b
            .snapshot(SnapshotOptions::incremental_checkpoint(id))
            .unwrap();
        publish(&storage, id, w, phase).unwrap();
        b.notify_checkpoint_complete(id);
    };
    // Materialization 1 writes both key groups; checkpoint 1 makes it the base.
    put(&mut b, &ka, 1);
    put(&mut b, &kb, 1);
    b.materialize_now().unwrap();
    settle(&mut b);
    complete(&mut b, 1);
    // Materialization 2 writes a's key group (file f2), referencing f1 for b's.
    put(&mut b, &ka, 2);
    b.materialize_now().unwrap();
    settle(&mut b);
    // Checkpoint 2 uses it; before it completes, materialization 3 starts on base 1: it
    // writes both key groups (dirty since base 1).
    let w2 = storage.begin_checkpoint(2).unwrap();
    let c2 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(2))
        .unwrap();
    put(&mut b, &kb, 3);
    b.materialize_now().unwrap();
    publish(&storage, 2, w2, c2).unwrap();
    b.notify_checkpoint_complete(2);
    settle(&mut b);
    // Checkpoint 3 uses materialization 3 (f3 only); materialization 4 starts before it
    // completes, on base 2: b's key group is dirty (f4), a's is referenced from f2.
    let w3 = storage.begin_checkpoint(3).unwrap();
    let c3 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(3))
        .unwrap();
    put(&mut b, &kb, 4);
    b.materialize_now().unwrap();
    publish(&storage, 3, w3, c3).unwrap();
    b.notify_checkpoint_complete(3);
    // Retention keeps checkpoint 3, which does not reference f2: f2 is deleted.
    storage.retain(1).unwrap();
    settle(&mut b);
    // Checkpoint 4 uses materialization 4, which references f2.
    let w4 = storage.begin_checkpoint(4).unwrap();
    let c4 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(4))
        .unwrap();
    let m = publish(&storage, 4, w4, c4).expect("checkpoint 4");
    b.notify_checkpoint_complete(4);
    let mut r = manual(None);
    let h = m.operators[0].subtasks[0].keyed.clone().unwrap();
    r.restore(&[h], &storage.source(4)).unwrap();
    assert_eq!((get(&mut r, &ka), get(&mut r, &kb)), (Some(2), Some(4)));
}

/// Flink's `periodic-materialize.max-failures-allowed`: materializations may fail a number
/// of times in a row (checkpoints stay on the last one that succeeded); past it the next
/// checkpoint and trigger check fail, naming the operator and the last failure, so the task
/// fails and the job restarts from its latest checkpoint. One that succeeds starts the count
/// again. Failures were tolerated forever.
#[test]
fn materializations_failing_past_the_limit_fail_the_backend() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let flaky = Arc::new(Flaky {
        storage: storage.clone(),
        fail: AtomicBool::new(true),
    });
    let mut b = manual_with(Some(flaky.clone()), |o| o.max_materialization_failures = 2);
    let fail_once = |b: &mut ChangelogBackend<HashMapBackend>, x: u64| {
        put(b, "a", x);
        b.materialize_now().unwrap();
        settle(b);
        assert!(b.last_materialization_error().is_some());
    };
    fail_once(&mut b, 1);
    fail_once(&mut b, 2);
    b.maybe_materialize().expect("two failures are allowed");
    let w = storage.begin_checkpoint(1).unwrap();
    let handle = b
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .unwrap()
        .run(&w, &CancelToken::new());
    drop(handle);
    fail_once(&mut b, 3);
    let err = b.maybe_materialize().expect_err("three failures in a row");
    let msg = err.to_string();
    assert!(
        msg.contains("3 materializations failed in a row, 2 allowed")
            && msg.contains("injected upload failure")
            && msg.contains(&format!("uid={UID}")),
        "{msg}"
    );
    let err = b
        .snapshot(SnapshotOptions::incremental_checkpoint(2))
        .map(drop)
        .expect_err("a checkpoint after three failures");
    assert!(
        err.to_string().contains("3 materializations failed"),
        "{err}"
    );
    // One that succeeds starts the count again.
    flaky.fail.store(false, Ordering::SeqCst);
    b.materialize_now().unwrap();
    settle(&mut b);
    assert!(b.last_materialization_error().is_none());
    b.maybe_materialize().expect("the count starts again");
    flaky.fail.store(true, Ordering::SeqCst);
    fail_once(&mut b, 4);
    fail_once(&mut b, 5);
    b.maybe_materialize()
        .expect("two failures are allowed again");
    assert_eq!(get(&mut b, "a"), Some(5));
}

/// Regression (found by the model test): a cancelled asynchronous phase of a changelog
/// checkpoint with nothing to wait for or write (no materialization, no change) handed out
/// a handle.
#[test]
fn a_cancelled_checkpoint_with_nothing_to_write_fails() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let mut b = manual(None);
    let _ = reg_v(&mut b);
    let w = storage.begin_checkpoint(1).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let r = b
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .unwrap()
        .run(&w, &cancel);
    assert!(
        matches!(r, Err(StateError::Cancelled { checkpoint_id: 1 })),
        "{r:?}"
    );
}

/// A checkpoint of a few segments on top of a materialization, in a directory on disk;
/// returns the storage, its directory, the manifest and the value of each key.
fn segmented_checkpoint() -> (
    CheckpointStorage,
    tempfile::TempDir,
    Manifest,
    Vec<(String, u64)>,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open(dir.path().to_str().unwrap()).unwrap();
    let mut b = manual(Some(&storage));
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        put(&mut b, k, i as u64);
    }
    b.materialize_now().unwrap();
    settle(&mut b);
    let mut model = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        put(&mut b, k, 1000 + i as u64);
        model.push((k.clone(), 1000 + i as u64));
    }
    let w = storage.begin_checkpoint(1).unwrap();
    let phase = b
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .unwrap();
    let m = publish(&storage, 1, w, phase).unwrap();
    b.notify_checkpoint_complete(1);
    drop(b);
    (storage, dir, m, model)
}

fn changelog_parts(
    m: &Manifest,
) -> (
    KeyedStateHandle,
    Vec<KeyedStateHandle>,
    Vec<ChangelogSegment>,
) {
    let h = m.operators[0].subtasks[0].keyed.clone().unwrap();
    let KeyedData::Changelog {
        materialized,
        segments,
    } = h.data.clone()
    else {
        panic!("not a changelog handle")
    };
    (h, materialized, segments)
}

/// Restores `h` on a fresh backend; the error's message (with its sources).
fn restore_err(h: KeyedStateHandle, source: &dyn SnapshotSource) -> String {
    let mut r = manual(None);
    match r.restore(&[h], source) {
        Ok(()) => "restored".to_string(),
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(" / ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        }
    }
}

/// Regression: a handle whose segments leave a gap in the sequence numbers (a segment
/// missing from the list) restored without the missing records, silently (or with a
/// segment listed twice, replayed them twice). Now it is an error naming both segments.
#[test]
fn a_gap_in_the_sequence_numbers_is_an_error() {
    let (storage, _dir, m, model) = segmented_checkpoint();
    let (h, _, segments) = changelog_parts(&m);
    assert!(segments.len() >= 3, "{} segments", segments.len());
    // The checkpoint restores.
    let mut r = manual(None);
    r.restore(std::slice::from_ref(&h), &storage.source(1))
        .unwrap();
    for (k, v) in &model {
        assert_eq!(get(&mut r, k), Some(*v), "{k}");
    }
    let with = |segs: Vec<ChangelogSegment>| {
        let mut h = h.clone();
        if let KeyedData::Changelog { segments, .. } = &mut h.data {
            *segments = segs;
        }
        h
    };
    // A segment missing in the middle.
    let mut gap = segments.clone();
    let missing = gap.remove(1);
    let e = restore_err(with(gap.clone()), &storage.source(1));
    assert!(e.contains("changelog segments are not contiguous"), "{e}");
    assert!(e.contains(&format!("path={}", segments[2].file)), "{e}");
    assert!(e.contains(&format!("previous={}", segments[0].file)), "{e}");
    assert!(
        e.contains(&format!("expected_first_sqn={}", missing.first_sqn)),
        "{e}"
    );
    assert!(e.contains("uid=hunt"), "{e}");
    // A segment listed twice.
    let mut twice = segments.clone();
    twice.insert(1, segments[0].clone());
    let e = restore_err(with(twice), &storage.source(1));
    assert!(e.contains("changelog segments are not contiguous"), "{e}");
    // Tools reading the entries refuse it too.
    let e = cairn_changelog::changelog_entries(
        &with(gap),
        KeyGroupRange::all(MAX_P),
        &storage.source(1),
        |_, _| Ok(()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not contiguous"), "{e}");
}

/// Every shared file of the storage in `dir` whose name contains `part`.
fn shared_files(dir: &std::path::Path, part: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().contains(part) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A truncated, corrupted or missing segment, and a missing materialized file: each fails
/// the restore with an error naming the file, never a panic, never wrong state.
#[test]
fn damaged_or_missing_files_fail_the_restore_naming_them() {
    let (storage, dir, m, _) = segmented_checkpoint();
    let (h, materialized, segments) = changelog_parts(&m);
    let seg_name = segments[1].file.name.clone();
    let seg_path = shared_files(dir.path(), &seg_name).pop().unwrap();
    let good = std::fs::read(&seg_path).unwrap();
    let restore = || restore_err(h.clone(), &storage.source(1));
    // Truncated.
    std::fs::write(&seg_path, &good[..good.len() - 7]).unwrap();
    let e = restore();
    assert!(e.contains(&seg_name), "truncated: {e}");
    // A flipped bit in the middle (a block).
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    std::fs::write(&seg_path, &bad).unwrap();
    let e = restore();
    assert!(
        e.contains(&seg_name) && e.contains("offset="),
        "corrupted: {e}"
    );
    // Missing.
    std::fs::remove_file(&seg_path).unwrap();
    let e = restore();
    assert!(e.contains(&seg_name), "missing: {e}");
    std::fs::write(&seg_path, &good).unwrap();
    assert_eq!(restore(), "restored");
    // A materialized file deleted.
    let mat = materialized[0].files().next().unwrap().name.clone();
    let mat_path = shared_files(dir.path(), &mat).pop().unwrap();
    std::fs::remove_file(&mat_path).unwrap();
    let e = restore();
    assert!(e.contains(&mat), "missing materialized file: {e}");
}

/// Truncation: after each round of changes, a materialization and a completed checkpoint
/// that uses it, retention leaves exactly the files the retained checkpoints reference (no
/// segment or materialized file leaks, pinned forever), the backend tracks no more files
/// than the last checkpoint uses, and every retained checkpoint restores.
#[test]
fn files_no_checkpoint_needs_are_released_and_retained_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open(dir.path().to_str().unwrap()).unwrap();
    let mut b = manual(Some(&storage));
    let shared = dir.path().join("shared");
    let on_disk = || -> BTreeSet<String> {
        shared_files(&shared, "")
            .into_iter()
            .map(|p| {
                p.strip_prefix(&shared)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    };
    let mut models: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    for round in 0..8u64 {
        for i in 0..30u64 {
            put(&mut b, &format!("key-{i}"), round * 100 + i);
        }
        if round % 2 == 0 {
            b.materialize_now().unwrap();
            settle(&mut b);
        }
        let id = round + 1;
        let w = storage.begin_checkpoint(id).unwrap();
        let phase = b
            .snapshot(SnapshotOptions::incremental_checkpoint(id))
            .unwrap();
        let m = publish(&storage, id, w, phase).unwrap();
        b.notify_checkpoint_complete(id);
        models.insert(
            id,
            (0..30u64)
                .map(|i| (format!("key-{i}"), round * 100 + i))
                .collect(),
        );
        storage.retain(2).unwrap();
        let retained = storage.completed_checkpoints().unwrap();
        let mut referenced = BTreeSet::new();
        for r in &retained {
            let m = storage.load(*r).unwrap();
            let h = m.operators[0].subtasks[0].keyed.clone().unwrap();
            referenced.extend(h.files().map(|f| f.name.clone()));
        }
        assert_eq!(on_disk(), referenced, "round {round}");
        let h = m.operators[0].subtasks[0].keyed.clone().unwrap();
        assert!(
            b.tracked_files() <= h.files().count(),
            "round {round}: tracks {} files, the checkpoint uses {}",
            b.tracked_files(),
            h.files().count()
        );
        for r in retained {
            let m = storage.load(r).unwrap();
            let mut restored = manual(None);
            let h = m.operators[0].subtasks[0].keyed.clone().unwrap();
            restored.restore(&[h], &storage.source(r)).unwrap();
            for (k, v) in &models[&r] {
                assert_eq!(get(&mut restored, k), Some(*v), "checkpoint {r} {k}");
            }
        }
    }
}
