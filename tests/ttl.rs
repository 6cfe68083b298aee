//! State TTL (`cairn_core::TtlStateAccess`) on every backend: a model-based test of every
//! state kind under each update type and visibility, with the clock moving and the state
//! going through canonical savepoints into the other backend at another parallelism; and
//! the restore rules (a TTL cannot be switched on or off for stored state).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::*;
use cairn_storage::open_savepoint;
use common::factories::{ChangelogFactory, HashMapFactory, RocksDbFactory};
use common::harness::{canonical_entries, write_savepoint_of, BackendFactory, Operator};
use common::schema::{
    aggregating_desc, key_bytes, list_desc, map_desc, reducing_desc, set_key, value_desc, SumCount,
};
use proptest::prelude::*;

const MAX_P: u32 = 16;
const TTL_MS: u64 = 100;
const KEYS: usize = 2;

struct Ids {
    value: TtlValueStateId<u64, VoidNamespace>,
    list: TtlListStateId<String, VoidNamespace>,
    map: TtlMapStateId<u32, String, VoidNamespace>,
    reducing: TtlReducingStateId<i64, VoidNamespace>,
    aggregating: TtlAggregatingStateId<u64, SumCount, u64, VoidNamespace>,
}

fn register<B: KeyedStateBackend>(b: &mut B, ttl: &StateTtlConfig) -> Ids {
    Ids {
        value: b.register_value_with_ttl(&value_desc(), ttl).unwrap(),
        list: b.register_list_with_ttl(&list_desc(), ttl).unwrap(),
        map: b.register_map_with_ttl(&map_desc(), ttl).unwrap(),
        reducing: b.register_reducing_with_ttl(&reducing_desc(), ttl).unwrap(),
        aggregating: b
            .register_aggregating_with_ttl(&aggregating_desc(), ttl)
            .unwrap(),
    }
}

/// One operation of the model test; keys are indexes into `KEYS` keys.
#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    ValueGet(usize),
    ValueUpdate(usize, u64),
    ValueClear(usize),
    ListGet(usize),
    ListAdd(usize, u8),
    ListUpdate(usize, Vec<u8>),
    MapGet(usize, u32),
    MapPut(usize, u32, u8),
    MapRemove(usize, u32),
    MapContains(usize, u32),
    MapEntries(usize),
    ReduceAdd(usize, i64),
    ReduceGet(usize),
    AggregateAdd(usize, u64),
    AggregateGet(usize),
    /// A canonical savepoint restored under the next backend at this parallelism.
    Savepoint(u32),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    prop_oneof![
        4 => (0u64..=60).prop_map(Op::Advance),
        1 => (101u64..=300).prop_map(Op::Advance),
        2 => k.clone().prop_map(Op::ValueGet),
        2 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::ValueUpdate(k, v)),
        1 => k.clone().prop_map(Op::ValueClear),
        2 => k.clone().prop_map(Op::ListGet),
        3 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::ListAdd(k, v)),
        1 => (k.clone(), proptest::collection::vec(any::<u8>(), 0..3))
            .prop_map(|(k, v)| Op::ListUpdate(k, v)),
        2 => (k.clone(), 0u32..3).prop_map(|(k, u)| Op::MapGet(k, u)),
        3 => (k.clone(), 0u32..3, any::<u8>()).prop_map(|(k, u, v)| Op::MapPut(k, u, v)),
        1 => (k.clone(), 0u32..3).prop_map(|(k, u)| Op::MapRemove(k, u)),
        1 => (k.clone(), 0u32..3).prop_map(|(k, u)| Op::MapContains(k, u)),
        2 => k.clone().prop_map(Op::MapEntries),
        2 => (k.clone(), -50i64..50).prop_map(|(k, v)| Op::ReduceAdd(k, v)),
        2 => k.clone().prop_map(Op::ReduceGet),
        2 => (k.clone(), 0u64..100).prop_map(|(k, v)| Op::AggregateAdd(k, v)),
        2 => k.clone().prop_map(Op::AggregateGet),
        1 => (1u32..=3).prop_map(Op::Savepoint),
    ]
}

/// What one key holds in the model: every entry with its stamp.
#[derive(Clone, Debug, Default)]
struct KeyModel {
    value: Option<(u64, u64)>,
    list: Vec<(u64, String)>,
    map: BTreeMap<u32, (u64, String)>,
    reducing: Option<(u64, i64)>,
    aggregating: Option<(u64, SumCount)>,
}

/// Flink's TTL semantics written out plainly, to hold the implementation to.
#[derive(Clone)]
struct Model {
    now: u64,
    refresh_on_read: bool,
    return_expired: bool,
    keys: Vec<KeyModel>,
}

impl Model {
    fn expired(&self, stamp: u64) -> bool {
        stamp + TTL_MS <= self.now
    }

    /// A read of one stored entry: the value it returns and the entry it leaves.
    fn read_one<V: Clone>(&self, entry: Option<(u64, V)>) -> (Option<V>, Option<(u64, V)>) {
        match entry {
            None => (None, None),
            Some((stamp, v)) if self.expired(stamp) => (self.return_expired.then_some(v), None),
            Some((stamp, v)) => {
                let stamp = if self.refresh_on_read {
                    self.now
                } else {
                    stamp
                };
                (Some(v.clone()), Some((stamp, v)))
            }
        }
    }
}

/// The result of one operation, compared between model and backend.
#[derive(Debug, PartialEq, Clone)]
enum Out {
    None,
    U64(Option<u64>),
    I64(Option<i64>),
    Strings(Vec<String>),
    Text(Option<String>),
    Bool(bool),
    Entries(Vec<(u32, String)>),
}

fn apply_model(m: &mut Model, op: &Op) -> Out {
    let now = m.now;
    match op {
        Op::Advance(ms) => {
            m.now += ms;
            Out::None
        }
        Op::Savepoint(_) => Out::None,
        Op::ValueGet(k) => {
            let entry = m.keys[*k].value.take();
            let (out, left) = m.read_one(entry);
            m.keys[*k].value = left;
            Out::U64(out)
        }
        Op::ValueUpdate(k, v) => {
            m.keys[*k].value = Some((now, *v));
            Out::None
        }
        Op::ValueClear(k) => {
            m.keys[*k].value = None;
            Out::None
        }
        Op::ListGet(k) => {
            let list = std::mem::take(&mut m.keys[*k].list);
            let mut out = Vec::new();
            let mut live = Vec::new();
            for (stamp, s) in list {
                if m.expired(stamp) {
                    if m.return_expired {
                        out.push(s);
                    }
                } else {
                    out.push(s.clone());
                    live.push((if m.refresh_on_read { now } else { stamp }, s));
                }
            }
            m.keys[*k].list = live;
            Out::Strings(out)
        }
        Op::ListAdd(k, v) => {
            m.keys[*k].list.push((now, v.to_string()));
            Out::None
        }
        Op::ListUpdate(k, vs) => {
            m.keys[*k].list = vs.iter().map(|v| (now, v.to_string())).collect();
            Out::None
        }
        Op::MapGet(k, uk) | Op::MapContains(k, uk) => {
            let entry = m.keys[*k].map.remove(uk);
            let (out, left) = m.read_one(entry);
            if let Some(left) = left {
                m.keys[*k].map.insert(*uk, left);
            }
            match op {
                Op::MapGet(..) => Out::Text(out),
                _ => Out::Bool(out.is_some()),
            }
        }
        Op::MapPut(k, uk, v) => {
            m.keys[*k].map.insert(*uk, (now, v.to_string()));
            Out::None
        }
        Op::MapRemove(k, uk) => {
            m.keys[*k].map.remove(uk);
            Out::None
        }
        Op::MapEntries(k) => {
            let map = std::mem::take(&mut m.keys[*k].map);
            let mut out = Vec::new();
            for (uk, entry) in map {
                let (v, left) = m.read_one(Some(entry));
                if let Some(v) = v {
                    out.push((uk, v));
                }
                if let Some(left) = left {
                    m.keys[*k].map.insert(uk, left);
                }
            }
            Out::Entries(out)
        }
        Op::ReduceAdd(k, v) => {
            let old = m.keys[*k].reducing.take();
            let sum = match old {
                Some((stamp, old)) if !m.expired(stamp) => old + v,
                _ => *v,
            };
            m.keys[*k].reducing = Some((now, sum));
            Out::None
        }
        Op::ReduceGet(k) => {
            let entry = m.keys[*k].reducing.take();
            let (out, left) = m.read_one(entry);
            m.keys[*k].reducing = left;
            Out::I64(out)
        }
        Op::AggregateAdd(k, v) => {
            let mut acc = match m.keys[*k].aggregating.take() {
                Some((stamp, acc)) if !m.expired(stamp) => acc,
                _ => SumCount::default(),
            };
            acc.sum += v;
            acc.count += 1;
            m.keys[*k].aggregating = Some((now, acc));
            Out::None
        }
        Op::AggregateGet(k) => {
            let entry = m.keys[*k].aggregating.take();
            let (out, left) = m.read_one(entry);
            m.keys[*k].aggregating = left;
            Out::U64(out.map(|acc| acc.sum / acc.count.max(1)))
        }
    }
}

fn apply_backend<B: KeyedStateBackend>(b: &mut B, ids: &Ids, key: &str, op: &Op) -> Out {
    set_key(b, key);
    let text = |v: &u8| v.to_string();
    match op {
        Op::Advance(_) | Op::Savepoint(_) => Out::None,
        Op::ValueGet(_) => Out::U64(b.ttl_value(&ids.value).get().unwrap()),
        Op::ValueUpdate(_, v) => {
            b.ttl_value(&ids.value).update(*v).unwrap();
            Out::None
        }
        Op::ValueClear(_) => {
            b.ttl_value(&ids.value).clear().unwrap();
            Out::None
        }
        Op::ListGet(_) => Out::Strings(b.ttl_list(&ids.list).get().unwrap()),
        Op::ListAdd(_, v) => {
            b.ttl_list(&ids.list).add(text(v)).unwrap();
            Out::None
        }
        Op::ListUpdate(_, vs) => {
            b.ttl_list(&ids.list)
                .update(vs.iter().map(text).collect())
                .unwrap();
            Out::None
        }
        Op::MapGet(_, uk) => Out::Text(b.ttl_map(&ids.map).get(uk).unwrap()),
        Op::MapContains(_, uk) => Out::Bool(b.ttl_map(&ids.map).contains(uk).unwrap()),
        Op::MapPut(_, uk, v) => {
            b.ttl_map(&ids.map).put(*uk, text(v)).unwrap();
            Out::None
        }
        Op::MapRemove(_, uk) => {
            b.ttl_map(&ids.map).remove(uk).unwrap();
            Out::None
        }
        Op::MapEntries(_) => {
            let mut entries = b.ttl_map(&ids.map).entries().unwrap();
            entries.sort();
            Out::Entries(entries)
        }
        Op::ReduceAdd(_, v) => {
            b.ttl_reducing(&ids.reducing).add(*v).unwrap();
            Out::None
        }
        Op::ReduceGet(_) => Out::I64(b.ttl_reducing(&ids.reducing).get().unwrap()),
        Op::AggregateAdd(_, v) => {
            b.ttl_aggregating(&ids.aggregating).add(*v).unwrap();
            Out::None
        }
        Op::AggregateGet(_) => Out::U64(b.ttl_aggregating(&ids.aggregating).get().unwrap()),
    }
}

/// Whether `got` is what a read returns when the backend has dropped some of the expired
/// entries that `full` (returned under `ReturnExpiredIfNotCleanedUp`) holds beyond `live`
/// (the unexpired ones): with `NeverReturnExpired` the two are equal and `got` must match.
fn consistent(got: &Out, full: &Out, live: &Out) -> bool {
    if got == full || got == live {
        return true;
    }
    /// `small` is `big` with some elements left out, in order.
    fn within<T: PartialEq>(small: &[T], big: &[T]) -> bool {
        let mut rest = big.iter();
        small.iter().all(|x| rest.any(|y| y == x))
    }
    match (got, full, live) {
        (Out::Strings(g), Out::Strings(f), Out::Strings(l)) => within(g, f) && within(l, g),
        (Out::Entries(g), Out::Entries(f), Out::Entries(l)) => within(g, f) && within(l, g),
        _ => false,
    }
}

fn op_key(op: &Op) -> usize {
    match op {
        Op::Advance(_) | Op::Savepoint(_) => 0,
        Op::ValueGet(k)
        | Op::ValueUpdate(k, _)
        | Op::ValueClear(k)
        | Op::ListGet(k)
        | Op::ListAdd(k, _)
        | Op::ListUpdate(k, _)
        | Op::MapGet(k, _)
        | Op::MapPut(k, _, _)
        | Op::MapRemove(k, _)
        | Op::MapContains(k, _)
        | Op::MapEntries(k)
        | Op::ReduceAdd(k, _)
        | Op::ReduceGet(k)
        | Op::AggregateAdd(k, _)
        | Op::AggregateGet(k) => *k,
    }
}

/// The backends a run passes through, one after another at each savepoint.
enum Any {
    Heap(Operator<cairn_hashmap::HashMapBackend>),
    Rocks(Operator<cairn_rocksdb::RocksDbBackend>),
    Changelog(Operator<cairn_changelog::ChangelogBackend<cairn_hashmap::HashMapBackend>>),
}

struct Factories {
    rocks: RocksDbFactory,
    changelog: ChangelogFactory<HashMapFactory>,
}

/// Runs `ops` on a model and on backends that start as `first` (0 heap, 1 RocksDB, 2
/// changelog over the heap) and change to the next kind at every savepoint.
fn run(ops: &[Op], first: usize, refresh_on_read: bool, return_expired: bool) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let ttl = StateTtlConfig::new(Duration::from_millis(TTL_MS))
        .with_clock(clock.clone())
        .with_update(if refresh_on_read {
            TtlUpdate::OnReadAndWrite
        } else {
            TtlUpdate::OnCreateAndWrite
        })
        .with_visibility(if return_expired {
            TtlVisibility::ReturnExpiredIfNotCleanedUp
        } else {
            TtlVisibility::NeverReturnExpired
        });
    let mut model = Model {
        now: clock.now_ms(),
        refresh_on_read,
        return_expired,
        keys: vec![KeyModel::default(); KEYS],
    };
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let f = Factories {
        rocks: RocksDbFactory::new(),
        changelog: ChangelogFactory::new(HashMapFactory),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut kind = first;
    let mut current = make(&f, kind, None, 2);
    let mut ids = register_all(&mut current, &ttl);
    for (i, op) in ops.iter().enumerate() {
        if let Op::Advance(ms) = op {
            clock.advance(Duration::from_millis(*ms));
        }
        if let Op::Savepoint(parallelism) = op {
            let url = match &mut current {
                Any::Heap(o) => write_savepoint_of(o, dir.path(), i as u64 + 1),
                Any::Rocks(o) => write_savepoint_of(o, dir.path(), i as u64 + 1),
                Any::Changelog(o) => write_savepoint_of(o, dir.path(), i as u64 + 1),
            };
            kind = (kind + 1) % 3;
            current = make(&f, kind, Some(&url), *parallelism);
            ids = register_all(&mut current, &ttl);
        }
        // What a read returns when background cleanup has dropped every expired entry it
        // meets (the backend may drop any of them before a read finds them).
        let mut cleaned = model.clone();
        cleaned.return_expired = false;
        let live = apply_model(&mut cleaned, op);
        let expected = apply_model(&mut model, op);
        let key = &keys[op_key(op)];
        let got = match &mut current {
            Any::Heap(o) => {
                let i = index(o, key);
                apply_backend(&mut o.subtasks[i].0, &ids[i], key, op)
            }
            Any::Rocks(o) => {
                let i = index(o, key);
                apply_backend(&mut o.subtasks[i].0, &ids[i], key, op)
            }
            Any::Changelog(o) => {
                let i = index(o, key);
                apply_backend(&mut o.subtasks[i].0, &ids[i], key, op)
            }
        };
        assert!(
            consistent(&got, &expected, &live),
            "op {i} {op:?} at {}: got {got:?}, expected {expected:?} (or, cleaned up, {live:?})",
            model.now
        );
    }
}

/// The subtask that owns `key`.
fn index<B>(o: &Operator<B>, key: &str) -> usize {
    let kg = key_group_for_key(&key_bytes(key), o.max_parallelism);
    subtask_for_key_group(kg, o.subtasks.len() as u32, o.max_parallelism) as usize
}

fn make(f: &Factories, kind: usize, from: Option<&str>, parallelism: u32) -> Any {
    fn build<F: BackendFactory>(f: &F, from: Option<&str>, p: u32) -> Operator<F::Backend> {
        match from {
            None => Operator::new(f, "op", MAX_P, p),
            Some(url) => {
                let (m, source) = open_savepoint(url).expect("open savepoint");
                Operator::restore(f, &m, "op", p, &source)
            }
        }
    }
    match kind {
        0 => Any::Heap(build(&HashMapFactory, from, parallelism)),
        1 => Any::Rocks(build(&f.rocks, from, parallelism)),
        _ => Any::Changelog(build(&f.changelog, from, parallelism)),
    }
}

/// Registers the states in every subtask; returns each subtask's ids.
fn register_all(op: &mut Any, ttl: &StateTtlConfig) -> Vec<Ids> {
    match op {
        Any::Heap(o) => o
            .subtasks
            .iter_mut()
            .map(|(b, _)| register(b, ttl))
            .collect(),
        Any::Rocks(o) => o
            .subtasks
            .iter_mut()
            .map(|(b, _)| register(b, ttl))
            .collect(),
        Any::Changelog(o) => o
            .subtasks
            .iter_mut()
            .map(|(b, _)| register(b, ttl))
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CAIRN_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]
    /// Every kind, every update type and visibility, on every backend and across backend
    /// switches and rescales: what each read returns and what it leaves behind match the model.
    #[test]
    fn ttl_state_matches_the_model(
        ops in proptest::collection::vec(op_strategy(), 1..80),
        first in 0usize..3,
        refresh_on_read in any::<bool>(),
        return_expired in any::<bool>(),
    ) {
        run(&ops, first, refresh_on_read, return_expired);
    }
}

/// A heap operator at parallelism 1 holding one TTL value for `key-0`, stamped at 5,000.
fn one_ttl_value() -> Operator<cairn_hashmap::HashMapBackend> {
    let clock = Arc::new(ManualClock::new(5_000));
    let ttl = StateTtlConfig::new(Duration::from_secs(1)).with_clock(clock);
    let mut op = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    let b = &mut op.subtasks[0].0;
    let id = b.register_value_with_ttl(&value_desc(), &ttl).unwrap();
    set_key(b, "key-0");
    b.ttl_value(&id).update(42).unwrap();
    op
}

#[test]
fn savepoints_store_each_value_after_its_stamp_and_name_the_ttl_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let url = write_savepoint_of(&mut one_ttl_value(), dir.path(), 1);
    let (m, source) = open_savepoint(&url).unwrap();
    let entries = canonical_entries(&m, "op", &source);
    let values: Vec<&Vec<u8>> = entries.values().collect();
    assert_eq!(values.len(), 1);
    let mut expected = 5_000u64.to_le_bytes().to_vec();
    expected.extend_from_slice(&42u64.to_le_bytes());
    assert_eq!(values[0], &expected);
    let subtask = &m.operator("op").unwrap().subtasks[0];
    let state = &subtask.keyed.as_ref().unwrap().states[0];
    assert_eq!(state.value.encoding, "cairn-ttl1+bincode1-fixint-le");
    assert_eq!(state.value.type_name, "u64");
}

#[test]
fn a_ttl_cannot_be_switched_on_or_off_for_restored_state() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbFactory::new();
    let with_ttl = write_savepoint_of(&mut one_ttl_value(), dir.path(), 1);
    let (m, source) = open_savepoint(&with_ttl).unwrap();

    // Off: the program registers the state without a TTL, under either backend.
    let mut heap = Operator::restore(&HashMapFactory, &m, "op", 1, &source);
    let err = heap.subtasks[0]
        .0
        .register_value(&value_desc())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StateError::IncompatibleCodec { .. }), "{msg}");
    assert!(msg.contains("cairn-ttl1+bincode1-fixint-le"), "{msg}");
    assert!(msg.contains("value"), "{msg}");
    let mut on_rocks = Operator::restore(&rocks, &m, "op", 2, &source);
    for (b, _) in &mut on_rocks.subtasks {
        let err = b.register_value(&value_desc()).unwrap_err();
        assert!(matches!(err, StateError::IncompatibleCodec { .. }), "{err}");
    }

    // On: state stored without a TTL, registered with one.
    let mut plain = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    let b = &mut plain.subtasks[0].0;
    let id = b.register_value(&value_desc()).unwrap();
    set_key(b, "key-0");
    b.value(&id).update(7).unwrap();
    let without = write_savepoint_of(&mut plain, dir.path(), 2);
    let (m, source) = open_savepoint(&without).unwrap();
    let mut heap = Operator::restore(&HashMapFactory, &m, "op", 1, &source);
    let ttl = StateTtlConfig::new(Duration::from_secs(1));
    let err = heap.subtasks[0]
        .0
        .register_value_with_ttl(&value_desc(), &ttl)
        .unwrap_err();
    assert!(matches!(err, StateError::IncompatibleCodec { .. }), "{err}");
    assert!(err.to_string().contains("cairn-ttl1+"), "{err}");
}

#[test]
fn a_restored_program_applies_its_own_duration_to_the_stored_stamps() {
    let dir = tempfile::tempdir().unwrap();
    let url = write_savepoint_of(&mut one_ttl_value(), dir.path(), 1);
    let (m, source) = open_savepoint(&url).unwrap();
    let clock = Arc::new(ManualClock::new(5_000 + 1_500));
    for (secs, alive) in [(1, false), (2, true)] {
        let mut op = Operator::restore(&RocksDbFactory::new(), &m, "op", 1, &source);
        let b = &mut op.subtasks[0].0;
        let ttl = StateTtlConfig::new(Duration::from_secs(secs)).with_clock(clock.clone());
        let id = b.register_value_with_ttl(&value_desc(), &ttl).unwrap();
        set_key(b, "key-0");
        assert_eq!(
            b.ttl_value(&id).get().unwrap().is_some(),
            alive,
            "ttl {secs} s"
        );
    }
}

#[test]
fn a_zero_ttl_is_refused_when_registering() {
    let mut op = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    let ttl = StateTtlConfig::new(Duration::ZERO);
    let err = op.subtasks[0]
        .0
        .register_list_with_ttl(&list_desc(), &ttl)
        .unwrap_err();
    assert!(matches!(err, StateError::InvalidTtl { .. }), "{err}");
    assert!(err.to_string().contains("state=list"), "{err}");
}

/// Counts the canonical entries of each state in a snapshot.
fn counts(entries: &common::harness::Entries) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for k in entries.keys() {
        *out.entry(k.0.clone()).or_default() += 1;
    }
    out
}

#[test]
fn the_heap_backend_sweeps_expired_entries_that_no_read_finds() {
    use common::conformance::checkpoint;
    let storage = cairn_storage::CheckpointStorage::open("memory://").unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let ttl = StateTtlConfig::new(Duration::from_secs(1)).with_clock(clock.clone());
    let mut op = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    let b = &mut op.subtasks[0].0;
    let ids = register(b, &ttl);
    let plain = b.register_value(&common::schema::windowed_desc()).unwrap();
    for (i, k) in keys.iter().enumerate() {
        set_key(b, k);
        b.ttl_value(&ids.value).update(i as u64).unwrap();
        b.ttl_list(&ids.list).add("old".into()).unwrap();
        b.ttl_map(&ids.map).put(0, "old".into()).unwrap();
        b.value_in(&plain, &7).update(1).unwrap();
    }
    clock.advance(Duration::from_millis(600));
    // The first half is written again: fresh values, a fresh list element, a fresh map entry.
    for k in &keys[..200] {
        set_key(b, k);
        b.ttl_value(&ids.value).update(0).unwrap();
        b.ttl_list(&ids.list).add("new".into()).unwrap();
        b.ttl_map(&ids.map).put(1, "new".into()).unwrap();
    }
    let before = checkpoint(&mut op, &storage, 1, true);
    assert_eq!(
        counts(&canonical_entries(&before, "op", &storage.source(1))),
        BTreeMap::from([
            ("list".into(), 400),
            ("map".into(), 600),
            ("value".into(), 400),
            ("windowed".into(), 400),
        ])
    );

    // 1.2 s: what was written at 0 has expired. Only "key-0" is accessed from now on, so no
    // read finds the others: the sweep that every access makes must.
    clock.advance(Duration::from_millis(600));
    let b = &mut op.subtasks[0].0;
    set_key(b, "key-0");
    for _ in 0..2_000 {
        b.ttl_value(&ids.value).get().unwrap();
        b.ttl_list(&ids.list).get().unwrap();
        b.ttl_map(&ids.map).get(&1).unwrap();
    }
    // An incremental checkpoint sees the swept key groups as changed.
    let after = checkpoint(&mut op, &storage, 2, true);
    let entries = canonical_entries(&after, "op", &storage.source(2));
    assert_eq!(
        counts(&entries),
        BTreeMap::from([
            ("list".into(), 200),
            ("map".into(), 200),
            ("value".into(), 200),
            ("windowed".into(), 400),
        ]),
        "expired values, list elements and map entries are gone; the state without a TTL is whole"
    );
    // What is left is the fresh part: one "new" element per list, map key 1 only.
    let list_values: Vec<&Vec<u8>> = entries
        .iter()
        .filter(|(k, _)| k.0 == "list")
        .map(|(_, v)| v)
        .collect();
    let mut element = 600u64.to_le_bytes().to_vec();
    element.extend_from_slice(&3u64.to_le_bytes());
    element.extend_from_slice(b"new");
    let mut one_new = Vec::new();
    cairn_format::encode_list([&element[..]], &mut one_new);
    assert!(list_values.iter().all(|v| **v == one_new));
    assert!(entries
        .keys()
        .filter(|k| k.0 == "map")
        .all(|k| k.4.as_deref() == Some(&1u32.to_le_bytes()[..])));
}

/// Writes the scenario of the full-snapshot cleanup test into every subtask of `op` and
/// moves the clock to where what was written first has expired: 400 keys written at 0 (every
/// TTL state, `kept`, a TTL value without full-snapshot cleanup, and `windowed`, a state
/// without a TTL), the first 200 written again at 600 ms (a fresh value, list element "new",
/// map entry 1); the clock ends at 1,200 ms with a TTL of 1 s.
fn write_full_snapshot_scenario<B: KeyedStateBackend>(op: &mut Operator<B>) {
    let clock = Arc::new(ManualClock::new(0));
    let plain_ttl = StateTtlConfig::new(Duration::from_secs(1)).with_clock(clock.clone());
    let ttl = plain_ttl.clone().with_full_snapshot_cleanup();
    assert!(ttl.cleans_up_full_snapshots() && !plain_ttl.cleans_up_full_snapshots());
    let kept_desc = ValueStateDescriptor::<u64>::new("kept");
    let mut ids = Vec::new();
    for (b, _) in &mut op.subtasks {
        let kept = b.register_value_with_ttl(&kept_desc, &plain_ttl).unwrap();
        let plain = b.register_value(&common::schema::windowed_desc()).unwrap();
        ids.push((register(b, &ttl), kept, plain));
    }
    let keys: Vec<String> = (0..400).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let (ids, kept, plain) = &ids[index(op, k)];
        let b = op.owner(k);
        set_key(b, k);
        b.ttl_value(&ids.value).update(i as u64).unwrap();
        b.ttl_list(&ids.list).add("old".into()).unwrap();
        b.ttl_map(&ids.map).put(0, "old".into()).unwrap();
        b.ttl_reducing(&ids.reducing).add(1).unwrap();
        b.ttl_aggregating(&ids.aggregating).add(1).unwrap();
        b.ttl_value(kept).update(1).unwrap();
        b.value_in(plain, &7).update(1).unwrap();
    }
    clock.set(600);
    for k in &keys[..200] {
        let (ids, _, _) = &ids[index(op, k)];
        let b = op.owner(k);
        set_key(b, k);
        b.ttl_value(&ids.value).update(0).unwrap();
        b.ttl_list(&ids.list).add("new".into()).unwrap();
        b.ttl_map(&ids.map).put(1, "new".into()).unwrap();
        b.ttl_reducing(&ids.reducing).add(1).unwrap();
        b.ttl_aggregating(&ids.aggregating).add(1).unwrap();
    }
    clock.set(1_200);
}

/// Checks that `entries` (a full snapshot of [`write_full_snapshot_scenario`]) holds only
/// what had not expired of the states with full-snapshot cleanup, and all of the others.
fn assert_full_snapshot_cleaned(entries: &common::harness::Entries, what: &str) {
    assert_eq!(
        counts(entries),
        BTreeMap::from([
            ("aggregating".into(), 200),
            ("kept".into(), 400),
            ("list".into(), 200),
            ("map".into(), 200),
            ("reducing".into(), 200),
            ("value".into(), 200),
            ("windowed".into(), 400),
        ]),
        "{what}"
    );
    let mut element = 600u64.to_le_bytes().to_vec();
    element.extend_from_slice(&3u64.to_le_bytes());
    element.extend_from_slice(b"new");
    let mut one_new = Vec::new();
    cairn_format::encode_list([&element[..]], &mut one_new);
    for ((state, _, _, _, user_key), value) in entries {
        match state.as_str() {
            "list" => assert_eq!(*value, one_new, "{what}"),
            "map" => assert_eq!(user_key.as_deref(), Some(&1u32.to_le_bytes()[..]), "{what}"),
            "value" | "reducing" | "aggregating" => {
                assert_eq!(value[..8], 600u64.to_le_bytes(), "{what}: {state}")
            }
            _ => {}
        }
    }
}

/// Every subtask's reads of the scenario's keys, one line per key.
fn read_full_snapshot_scenario<B: KeyedStateBackend>(op: &mut Operator<B>) -> Vec<String> {
    let clock = Arc::new(ManualClock::new(1_200));
    let plain_ttl = StateTtlConfig::new(Duration::from_secs(1)).with_clock(clock);
    let ttl = plain_ttl.clone().with_full_snapshot_cleanup();
    let kept_desc = ValueStateDescriptor::<u64>::new("kept");
    let mut ids = Vec::new();
    for (b, _) in &mut op.subtasks {
        let kept = b.register_value_with_ttl(&kept_desc, &plain_ttl).unwrap();
        ids.push((register(b, &ttl), kept));
    }
    (0..400)
        .map(|i| {
            let k = format!("key-{i}");
            let (ids, kept) = &ids[index(op, &k)];
            let b = op.owner(&k);
            set_key(b, &k);
            format!(
                "{k}: {:?} {:?} {:?} {:?} {:?} {:?}",
                b.ttl_value(&ids.value).get().unwrap(),
                b.ttl_list(&ids.list).get().unwrap(),
                b.ttl_map(&ids.map).entries().unwrap(),
                b.ttl_reducing(&ids.reducing).get().unwrap(),
                b.ttl_aggregating(&ids.aggregating).get().unwrap(),
                b.ttl_value(kept).get().unwrap(),
            )
        })
        .collect()
}

fn full_snapshot_cleanup_on<F: BackendFactory>(f: &F, name: &str, checkpoints: &[bool]) {
    let mut op = Operator::new(f, "op", MAX_P, 2);
    write_full_snapshot_scenario(&mut op);
    let dir = tempfile::tempdir().unwrap();
    let url = write_savepoint_of(&mut op, dir.path(), 1);
    let (m, source) = open_savepoint(&url).unwrap();
    assert_full_snapshot_cleaned(
        &canonical_entries(&m, "op", &source),
        &format!("{name}: savepoint"),
    );
    let storage = cairn_storage::CheckpointStorage::open("memory://").unwrap();
    for (i, incremental) in checkpoints.iter().enumerate() {
        let id = i as u64 + 1;
        let m = common::conformance::checkpoint(&mut op, &storage, id, *incremental);
        assert_full_snapshot_cleaned(
            &canonical_entries(&m, "op", &storage.source(id)),
            &format!("{name}: checkpoint {id}, incremental {incremental}"),
        );
    }
    // Restored under the heap backend at another parallelism, the savepoint reads as the
    // state it was taken of.
    let expected = read_full_snapshot_scenario(&mut op);
    assert_eq!(
        expected[0],
        "key-0: Some(0) [\"new\"] [(1, \"new\")] Some(2) Some(1) None"
    );
    assert_eq!(expected[399], "key-399: None [] [] None None None");
    let mut restored = Operator::restore(&HashMapFactory, &m, "op", 3, &source);
    assert_eq!(
        read_full_snapshot_scenario(&mut restored),
        expected,
        "{name}"
    );
}

#[test]
fn full_snapshot_cleanup_leaves_what_has_expired_out_of_savepoints_and_full_checkpoints() {
    // The heap backend's incremental checkpoints write each changed key group whole: they
    // are full snapshots of those key groups.
    full_snapshot_cleanup_on(&HashMapFactory, "hashmap", &[false, true]);
    // RocksDB's full checkpoints are canonical; its native incremental ones are files
    // and keep everything (as in Flink), so they are not read here.
    full_snapshot_cleanup_on(&RocksDbFactory::new(), "rocksdb", &[false]);
    // The changelog backend's checkpoints are its inner backend's materializations and a
    // log; its savepoints are the inner backend's.
    full_snapshot_cleanup_on(
        &ChangelogFactory::new(RocksDbFactory::new()),
        "changelog",
        &[],
    );
}

/// 400 keys of a TTL value state (configured by `cleanup`) and of a state without a TTL,
/// written at 0 on the heap at parallelism 1; the clock then moves past the TTL, and
/// `records` records of `key-0` are processed, reading only the state without a TTL, or
/// also the TTL state when `access`. Returns how many TTL values the next incremental
/// checkpoint holds.
fn ttl_values_left_after(cleanup: (usize, bool), records: usize, access: bool) -> usize {
    use common::conformance::checkpoint;
    let storage = cairn_storage::CheckpointStorage::open("memory://").unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let ttl = StateTtlConfig::new(Duration::from_secs(1))
        .with_clock(clock.clone())
        .with_incremental_cleanup(cleanup.0, cleanup.1);
    assert_eq!(ttl.incremental_cleanup().entries, cleanup.0);
    let mut op = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    let b = &mut op.subtasks[0].0;
    let value = b.register_value_with_ttl(&value_desc(), &ttl).unwrap();
    let plain = b.register_value(&common::schema::windowed_desc()).unwrap();
    for i in 0..400 {
        set_key(b, &format!("key-{i}"));
        b.ttl_value(&value).update(i).unwrap();
        b.value_in(&plain, &7).update(1).unwrap();
    }
    checkpoint(&mut op, &storage, 1, true);
    clock.set(1_000);
    let b = &mut op.subtasks[0].0;
    for _ in 0..records {
        set_key(b, "key-0");
        b.value_in(&plain, &7).get().unwrap();
        if access {
            b.ttl_value(&value).get().unwrap();
        }
    }
    let m = checkpoint(&mut op, &storage, 2, true);
    let counts = counts(&canonical_entries(&m, "op", &storage.source(2)));
    assert_eq!(counts["windowed"], 400, "the state without a TTL is whole");
    counts.get("value").copied().unwrap_or(0)
}

#[test]
fn the_heap_cleanup_runs_for_every_record_when_asked_and_looks_at_as_many_entries() {
    // Flink's default, cleanupIncrementally(5, false): only accesses to the state sweep it.
    assert_eq!(ttl_values_left_after((5, false), 2_000, false), 400);
    assert_eq!(ttl_values_left_after((5, false), 2_000, true), 0);
    // runCleanupForEveryRecord: records that never touch the state sweep it too.
    assert_eq!(ttl_values_left_after((5, true), 2_000, false), 0);
    // Zero entries: no background cleanup; the reads remove only key-0's value.
    assert_eq!(ttl_values_left_after((0, true), 2_000, true), 399);
    // The cleanup size: 1 entry per access visits 2 buckets, each holding at most one
    // entry, so 10 accesses remove at most 20 values (and key-0's, read); 500 entries per
    // access (800 buckets) sweep a table of 400 entries in 10.
    let small = ttl_values_left_after((1, false), 10, true);
    assert!((400 - 21..400).contains(&small), "{small} left");
    assert_eq!(ttl_values_left_after((500, false), 10, true), 0);
}
