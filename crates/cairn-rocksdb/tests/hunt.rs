//! Every state kind in namespaces, with `keys()`, through chains of full and incremental
//! checkpoints (several in flight, finished out of order, cancelled, dropped, published
//! without notification) and restores at other parallelisms and across backends (from
//! checkpoints, and from savepoints where a native checkpoint cannot go), against a
//! `BTreeMap` model; and two regressions: an unencodable value lost the values evicted with
//! it (RocksDB), and a cancelled phase with nothing to write handed out a handle (heap).

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::*;
use cairn_format::{OperatorManifest, SubtaskManifest};
use cairn_rocksdb::RocksDbOptions;
use cairn_storage::{CheckpointStorage, CheckpointWriter};
use common::conformance::checkpoint;
use common::factories::HashMapFactory;
use common::harness::{manifest, BackendFactory, Operator};
use common::schema::{key_bytes, set_key};
use proptest::prelude::*;
use rocks_factory::RocksFactory;

const MAX_P: u32 = 16;
const KEYS: usize = 12;
const NS: u32 = 3;

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

#[derive(Clone, Copy)]
struct Ids {
    v: ValueStateId<u64, u32>,
    l: ListStateId<u32, u32>,
    m: MapStateId<u32, u64, u32>,
    r: ReducingStateId<i64, u32>,
    a: AggregatingStateId<u64, (u64, u64), (u64, u64), u32>,
}

fn register<B: KeyedStateBackend>(b: &mut B) -> Ids {
    let ns = || -> CodecRef<u32> { Arc::new(BincodeCodec::<u32>::new()) };
    let sum = |a: i64, b: i64| a + b;
    Ids {
        v: (b.register_value(&ValueStateDescriptor::new("v").with_namespace(ns()))).unwrap(),
        l: (b.register_list(&ListStateDescriptor::new("l").with_namespace(ns()))).unwrap(),
        m: (b.register_map(&MapStateDescriptor::new("m").with_namespace(ns()))).unwrap(),
        r: (b.register_reducing(&ReducingStateDescriptor::new("r", sum).with_namespace(ns())))
            .unwrap(),
        a: (b.register_aggregating(
            &AggregatingStateDescriptor::new("a", Pair).with_namespace(ns()),
        ))
        .unwrap(),
    }
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

#[derive(Clone, Debug)]
enum Op {
    /// `what` picks the operation on key `k` in namespace `n` (see `apply`).
    Data { k: usize, n: u32, what: u8, x: u32 },
    /// The synchronous phase of a checkpoint, finished by `Finish` (or never).
    Begin { incremental: bool },
    /// Finishes pending checkpoint `i % pending` as `finish` says.
    Finish { i: usize, how: u8 },
    /// `Begin` and `Finish` of that checkpoint at once.
    Checkpoint { incremental: bool, how: u8 },
    /// Drops the backends and restores the latest completed checkpoint (or, when it is
    /// native and the heap comes next, a savepoint taken just before) at `p`.
    Restore { p: u32, heap: bool },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0..KEYS, 0..NS, 0..13u8, 0..50u32).prop_map(|(k, n, what, x)| Op::Data { k, n, what, x }),
        2 => any::<bool>().prop_map(|incremental| Op::Begin { incremental }),
        2 => (0..4usize, 0..4u8).prop_map(|(i, how)| Op::Finish { i, how }),
        4 => (any::<bool>(), prop_oneof![3 => Just(0u8), 1 => 1..4u8])
            .prop_map(|(incremental, how)| Op::Checkpoint { incremental, how }),
        2 => (1..=3u32, any::<bool>()).prop_map(|(p, heap)| Op::Restore { p, heap }),
    ]
}

/// Short keys are kept inline by the heap backend, long ones on the heap.
fn keys() -> Vec<String> {
    let long = |i| format!("a-much-longer-key-{i}");
    (0..KEYS)
        .map(|i| if i % 2 == 0 { format!("k{i}") } else { long(i) })
        .collect()
}

fn apply<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    model: &mut Model,
    (k, n, what, x): (usize, u32, u8, u32),
) {
    let key = &keys()[k];
    let b = op.owner(key);
    let ids = register(b);
    set_key(b, key);
    let c = model.entry((k, n)).or_default();
    let (x64, vs) = (
        u64::from(x),
        vec![x, x + 1]
            .into_iter()
            .take(x as usize % 3)
            .collect::<Vec<_>>(),
    );
    match what {
        0 | 1 => b.value_in(&ids.v, &n).update(x64).map(|()| c.0 = Some(x64)),
        2 => b.value_in(&ids.v, &n).clear().map(|()| c.0 = None),
        3 => b.list_in(&ids.l, &n).add(x).map(|()| c.1.push(x)),
        4 => b
            .list_in(&ids.l, &n)
            .add_all(vs.clone())
            .map(|()| c.1.extend(vs)),
        5 => b.list_in(&ids.l, &n).update(vs.clone()).map(|()| c.1 = vs),
        6 => b.list_in(&ids.l, &n).clear().map(|()| c.1.clear()),
        7 | 8 => b.map_in(&ids.m, &n).put(x % 4, x64).map(|()| {
            c.2.insert(x % 4, x64);
        }),
        9 => b.map_in(&ids.m, &n).remove(&(x % 4)).map(|()| {
            c.2.remove(&(x % 4));
        }),
        10 if x % 2 == 0 => b.map_in(&ids.m, &n).clear().map(|()| c.2.clear()),
        10 => b.reducing_in(&ids.r, &n).clear().map(|()| c.3 = None),
        11 => b.reducing_in(&ids.r, &n).add(i64::from(x) - 25).map(|()| {
            c.3 = Some(c.3.unwrap_or(0) + i64::from(x) - 25);
        }),
        _ if x % 5 == 0 => b.aggregating_in(&ids.a, &n).clear().map(|()| c.4 = None),
        _ => b.aggregating_in(&ids.a, &n).add(x64).map(|()| {
            let a = c.4.unwrap_or((0, 0));
            c.4 = Some((a.0 + x64, a.1 + 1));
        }),
    }
    .unwrap();
    if *c == Cell::default() {
        model.remove(&(k, n));
    }
}

/// Every (key, namespace) read through the typed API, and what `keys()` lists per state
/// and namespace on every subtask.
fn check<B: KeyedStateBackend>(op: &mut Operator<B>, model: &Model, what: &str) {
    let keys = keys();
    let mut got = Model::new();
    for (k, key) in keys.iter().enumerate() {
        let b = op.owner(key);
        let ids = register(b);
        set_key(b, key);
        for n in 0..NS {
            let c = (
                b.value_in(&ids.v, &n).get().unwrap(),
                b.list_in(&ids.l, &n).get().unwrap(),
                b.map_in(&ids.m, &n)
                    .entries()
                    .unwrap()
                    .into_iter()
                    .collect(),
                b.reducing_in(&ids.r, &n).get().unwrap(),
                b.aggregating_in(&ids.a, &n).get().unwrap(),
            );
            if c != Cell::default() {
                got.insert((k, n), c);
            }
        }
    }
    assert_eq!(&got, model, "{what}");
    // keys(): (state, namespace, key) of every entry, on every subtask.
    let mut listed = Vec::new();
    for (b, _) in &mut op.subtasks {
        let i = register(b);
        for (s, raw) in [i.v.raw(), i.l.raw(), i.m.raw(), i.r.raw(), i.a.raw()]
            .iter()
            .enumerate()
        {
            for n in 0..NS {
                let found = b.keys(*raw, &n).unwrap().into_iter();
                listed
                    .extend(found.map(|key| (s, n, keys.iter().position(|k| key_bytes(k) == key))));
            }
        }
    }
    listed.sort();
    let mut expected = Vec::new();
    for (&(k, n), c) in model {
        let has = [
            c.0.is_some(),
            !c.1.is_empty(),
            !c.2.is_empty(),
            c.3.is_some(),
            c.4.is_some(),
        ];
        expected.extend((0..5).filter(|&s| has[s]).map(|s| (s, n, Some(k))));
    }
    expected.sort();
    assert_eq!(listed, expected, "keys() {what}");
}

fn options(id: u64, incremental: bool) -> SnapshotOptions {
    let full = SnapshotOptions::full_checkpoint(id);
    SnapshotOptions {
        incremental,
        ..full
    }
}

struct Pending {
    id: u64,
    writer: CheckpointWriter,
    phases: Vec<Box<dyn AsyncSnapshot>>,
    model: Model,
}

struct Run {
    storage: CheckpointStorage,
    dir: tempfile::TempDir,
    next_id: u64,
    /// The model as of each completed checkpoint.
    completed: BTreeMap<u64, Model>,
    model: Model,
}

impl Run {
    /// Finishes a pending checkpoint: 0 completes it, 1 cancels its asynchronous phases
    /// (which must fail), 2 drops them (both abort it), 3 publishes it unnotified.
    fn finish<B: KeyedStateBackend>(&mut self, op: &mut Operator<B>, p: Pending, how: u8) {
        let cancel = CancelToken::new();
        match how {
            0 | 3 => {
                let mut subtasks = Vec::new();
                for (i, phase) in p.phases.into_iter().enumerate() {
                    subtasks.push(SubtaskManifest {
                        key_group_range: op.subtasks[i].0.key_group_range(),
                        keyed: Some(phase.run(&p.writer, &cancel).unwrap()),
                        operator_state: Vec::new(),
                    });
                }
                let (uid, parallelism, max_parallelism) = ("hunt".into(), op.parallelism(), MAX_P);
                let part = OperatorManifest {
                    uid,
                    parallelism,
                    max_parallelism,
                    subtasks,
                };
                let m = manifest(p.id, SnapshotType::Checkpoint, vec![part]);
                self.storage.publish(p.writer, &m).unwrap();
                if how == 0 {
                    op.notify_complete(p.id);
                }
                self.completed.insert(p.id, p.model);
            }
            _ => {
                cancel.cancel();
                for phase in p.phases {
                    if how == 1 {
                        assert!(
                            phase.run(&p.writer, &cancel).is_err(),
                            "a cancelled phase ran"
                        );
                    }
                }
                op.notify_aborted(p.id);
                self.storage.abort(p.id).unwrap();
            }
        }
    }

    fn begin<B: KeyedStateBackend>(&mut self, op: &mut Operator<B>, incremental: bool) -> Pending {
        let id = self.next_id;
        self.next_id += 1;
        let phases = op
            .subtasks
            .iter_mut()
            .map(|(b, _)| b.snapshot(options(id, incremental)));
        Pending {
            id,
            writer: self.storage.begin_checkpoint(id).unwrap(),
            phases: phases.collect::<Result<_>>().unwrap(),
            model: self.model.clone(),
        }
    }

    /// Runs `ops` (up to a restore) on backends of `f`, restored from `start` (a checkpoint
    /// id or a savepoint URL). Returns the URL of a savepoint taken at the end when the heap
    /// comes next and the latest checkpoint is native.
    fn segment<F: BackendFactory>(
        &mut self,
        f: &F,
        start: Start,
        p: u32,
        ops: &[Op],
        next_heap: bool,
    ) -> Start {
        let mut op = match start {
            Start::Empty => Operator::new(f, "hunt", MAX_P, p),
            Start::Checkpoint(id) => {
                let m = self.storage.load(id).unwrap();
                Operator::restore(f, &m, "hunt", p, &self.storage.source(id))
            }
            Start::Savepoint(url) => {
                let (m, source) = cairn_storage::open_savepoint(&url).unwrap();
                Operator::restore(f, &m, "hunt", p, &source)
            }
        };
        check(&mut op, &self.model, "after restore");
        let mut pending: Vec<Pending> = Vec::new();
        for (step, o) in ops.iter().enumerate() {
            match *o {
                Op::Data { k, n, what, x } => apply(&mut op, &mut self.model, (k, n, what, x)),
                Op::Begin { incremental } => pending.push(self.begin(&mut op, incremental)),
                Op::Finish { i, how } if !pending.is_empty() => {
                    let p = pending.remove(i % pending.len());
                    self.finish(&mut op, p, how);
                }
                Op::Finish { .. } => {}
                Op::Checkpoint { incremental, how } => {
                    let p = self.begin(&mut op, incremental);
                    self.finish(&mut op, p, how);
                }
                Op::Restore { .. } => unreachable!(),
            }
            check(&mut op, &self.model, &format!("after step {step}: {o:?}"));
        }
        let latest = self.storage.latest_completed().unwrap();
        let native = latest.as_ref().is_some_and(|m| {
            let data = m.operators[0]
                .subtasks
                .iter()
                .filter_map(|s| s.keyed.as_ref());
            data.map(|h| &h.data)
                .any(|d| matches!(d, KeyedData::RocksNative { .. }))
        });
        if next_heap && native {
            let id = self.next_id;
            self.next_id += 1;
            let url = format!("{}/sp-{id}", self.dir.path().display());
            let subtasks = op.subtasks.iter_mut();
            let refs = subtasks.map(|(b, o)| cairn_storage::SubtaskRef {
                keyed: Some(b),
                operator: o,
            });
            let sp = SnapshotOptions::savepoint(id);
            let pending = cairn_storage::snapshot_operator("hunt", MAX_P, refs, sp).unwrap();
            cairn_storage::write_savepoint(&url, id, vec![pending]).unwrap();
            return Start::Savepoint(url);
        }
        match latest {
            Some(m) => {
                self.model = self.completed[&m.checkpoint_id].clone();
                Start::Checkpoint(m.checkpoint_id)
            }
            None => {
                self.model.clear();
                Start::Empty
            }
        }
    }
}

enum Start {
    Empty,
    Checkpoint(u64),
    Savepoint(String),
}

fn run_ops(rocks: &RocksFactory, first_heap: bool, ops: &[Op]) {
    let mut run = Run {
        storage: CheckpointStorage::open("memory://").unwrap(),
        dir: tempfile::tempdir().unwrap(),
        next_id: 1,
        completed: BTreeMap::new(),
        model: Model::new(),
    };
    let mut segments: Vec<(u32, bool, &[Op])> = Vec::new();
    let (mut p, mut heap, mut from) = (1, first_heap, 0);
    for (i, o) in ops.iter().enumerate() {
        if let Op::Restore {
            p: next_p,
            heap: next_heap,
        } = *o
        {
            segments.push((p, heap, &ops[from..i]));
            (p, heap, from) = (next_p, next_heap, i + 1);
        }
    }
    segments.push((p, heap, &ops[from..]));
    // A last restore checks the latest completed checkpoint.
    segments.push((2, heap, &[]));
    let mut start = Start::Empty;
    for (i, &(p, heap, seg)) in segments.iter().enumerate() {
        let next_heap = segments.get(i + 1).is_some_and(|s| s.1);
        start = match heap {
            true => run.segment(&HashMapFactory, start, p, seg, next_heap),
            false => run.segment(rocks, start, p, seg, next_heap),
        };
    }
}

fn rocks(kind: u8) -> RocksFactory {
    let (cache_capacity, spill_capacity, checkpoint_wal, native_incremental) = match kind {
        0 => (1 << 18, 0, true, true),
        1 => (2, 3, true, true),
        2 => (0, 0, false, true),
        _ => (3, 0, true, false),
    };
    let options = RocksDbOptions {
        cache_capacity,
        spill_capacity,
        checkpoint_wal,
        native_incremental,
        ..RocksDbOptions::default()
    };
    RocksFactory { options }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("HUNT_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]
    #[test]
    fn namespaced_states_through_checkpoints_restores_and_backends(
        kind in 0..4u8,
        first_heap in any::<bool>(),
        ops in proptest::collection::vec(op_strategy(), 1..100),
    ) {
        run_ops(&rocks(kind), first_heap, &ops);
    }
}

/// A `u64` codec that cannot encode 13.
struct Picky(BincodeCodec<u64>);

impl Codec<u64> for Picky {
    fn encode(&self, value: &u64, out: &mut Vec<u8>) -> std::result::Result<(), CodecError> {
        if *value == 13 {
            let (codec, detail) = ("picky".into(), "13 is not allowed".into());
            return Err(CodecError {
                codec,
                op: "encode",
                detail,
            });
        }
        self.0.encode(value, out)
    }
    fn decode(&self, bytes: &[u8]) -> std::result::Result<u64, CodecError> {
        self.0.decode(bytes)
    }
    fn identity(&self) -> &CodecIdentity {
        self.0.identity()
    }
}

/// Regression: a value its codec cannot encode lost the other dirty values evicted with it
/// from RocksDB's cache (and failed the unrelated access that evicted it). Now, as on the
/// heap, it fails the snapshots that hold it (naming the state) and nothing is lost; once it
/// changes, a checkpoint restores everything.
fn unencodable_value_loses_nothing<F: BackendFactory>(f: &F, what: &str) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let mut op = Operator::new(f, "picky", MAX_P, 1);
    let d = || ValueStateDescriptor::<u64> {
        name: "v".into(),
        value: Arc::new(Picky(BincodeCodec::new())),
        namespace: Arc::new(BincodeCodec::<()>::new()),
    };
    let keys: Vec<String> = (0..200).map(|i| format!("p{i}")).collect();
    let read = |b: &mut F::Backend| -> Vec<Option<u64>> {
        let v = b.register_value(&d()).unwrap();
        let get = |k: &String| {
            set_key(b, k);
            b.value(&v).get().unwrap()
        };
        keys.iter().map(get).collect()
    };
    let b = &mut op.subtasks[0].0;
    let v = b.register_value(&d()).unwrap();
    let mut model = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        set_key(b, key);
        let x = if i == 3 { 13 } else { i as u64 + 100 };
        b.value(&v).update(x).unwrap();
        model.push(Some(x));
    }
    assert_eq!(read(b), model, "{what}");
    let writer = storage.begin_checkpoint(1).unwrap();
    let e = b
        .snapshot(options(1, true))
        .and_then(|s| s.run(&writer, &CancelToken::new()));
    let e = e.expect_err("a snapshot of an unencodable value");
    assert!(
        format!("{e:?}").contains("13 is not allowed") && format!("{e:?}").contains("\"v\""),
        "{what}: {e:?}"
    );
    b.notify_checkpoint_aborted(1);
    storage.abort(1).unwrap();
    set_key(b, "p3");
    b.value(&v).update(3).unwrap();
    model[3] = Some(3);
    let m = checkpoint(&mut op, &storage, 2, true);
    assert_eq!(read(&mut op.subtasks[0].0), model, "{what}");
    let mut r = Operator::restore(f, &m, "picky", 1, &storage.source(2));
    assert_eq!(read(&mut r.subtasks[0].0), model, "{what}: restored");
}

#[test]
fn an_unencodable_value_loses_nothing() {
    unencodable_value_loses_nothing(&HashMapFactory, "heap");
    for spill_capacity in [0, 4] {
        let options = RocksDbOptions {
            cache_capacity: 16,
            spill_capacity,
            ..RocksDbOptions::default()
        };
        unencodable_value_loses_nothing(
            &RocksFactory { options },
            &format!("rocksdb spill={spill_capacity}"),
        );
    }
}

/// Regression: a cancelled asynchronous phase with nothing to write (an incremental
/// checkpoint after no change) handed out a handle on the heap backend.
#[test]
fn a_cancelled_phase_with_nothing_to_write_fails() {
    fn check<F: BackendFactory>(f: &F, what: &str) {
        let mut b = f.create("cancel", MAX_P, KeyGroupRange::all(MAX_P));
        let mem = CheckpointStorage::open("memory://").unwrap();
        let ids = register(&mut b);
        set_key(&mut b, "k");
        b.value_in(&ids.v, &0).update(1).unwrap();
        let w1 = mem.begin_checkpoint(1).unwrap();
        b.snapshot(options(1, true))
            .unwrap()
            .run(&w1, &CancelToken::new())
            .unwrap();
        b.notify_checkpoint_complete(1);
        let cancel = CancelToken::new();
        cancel.cancel();
        let w2 = mem.begin_checkpoint(2).unwrap();
        let r = b.snapshot(options(2, true)).unwrap().run(&w2, &cancel);
        assert!(
            matches!(r, Err(StateError::Cancelled { checkpoint_id: 2 })),
            "{what}: {r:?}"
        );
    }
    check(&HashMapFactory, "heap");
    check(&rocks(0), "rocksdb");
}
