//! Model-based test: random operation sequences with checkpoints (full and incremental),
//! failed checkpoints, crashes with restore (at another parallelism) and retention, checked
//! against a `BTreeMap` model after every step.

use std::collections::BTreeMap;

use cairn_core::*;
use cairn_storage::CheckpointStorage;
use proptest::prelude::*;

use super::conformance::{checkpoint, read_operator};
use super::harness::*;
use super::schema::*;

const MAX_P: u32 = 16;
const KEYS: usize = 12;

#[derive(Clone, Debug)]
pub enum Op {
    Value(usize, u64),
    ValueClear(usize),
    ListAdd(usize, u8),
    ListUpdate(usize, Vec<u8>),
    MapPut(usize, u32, u8),
    MapRemove(usize, u32),
    MapClear(usize),
    Reduce(usize, i64),
    Aggregate(usize, u64),
    Windowed(usize, u32, u64),
    WindowClear(usize, u32),
    /// Prefetch hints at these keys (and a key of no subtask's range) on every subtask: they
    /// must change nothing, however many come before the next key is set.
    Prefetch(Vec<usize>),
    Checkpoint {
        incremental: bool,
    },
    FailedCheckpoint,
    CrashAndRestore {
        parallelism: u32,
    },
    Retain(usize),
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    prop_oneof![
        6 => (k.clone(), any::<u64>()).prop_map(|(k, v)| Op::Value(k, v % 1000)),
        2 => k.clone().prop_map(Op::ValueClear),
        4 => (k.clone(), any::<u8>()).prop_map(|(k, v)| Op::ListAdd(k, v)),
        1 => (k.clone(), proptest::collection::vec(any::<u8>(), 0..3)).prop_map(|(k, v)| Op::ListUpdate(k, v)),
        4 => (k.clone(), 0..6u32, any::<u8>()).prop_map(|(k, u, v)| Op::MapPut(k, u, v)),
        2 => (k.clone(), 0..6u32).prop_map(|(k, u)| Op::MapRemove(k, u)),
        1 => k.clone().prop_map(Op::MapClear),
        3 => (k.clone(), -50i64..50).prop_map(|(k, v)| Op::Reduce(k, v)),
        3 => (k.clone(), 0..100u64).prop_map(|(k, v)| Op::Aggregate(k, v)),
        3 => (k.clone(), 0..3u32, 0..100u64).prop_map(|(k, w, v)| Op::Windowed(k, w, v)),
        1 => (k.clone(), 0..3u32).prop_map(|(k, w)| Op::WindowClear(k, w)),
        2 => proptest::collection::vec(k, 0..64).prop_map(Op::Prefetch),
        2 => any::<bool>().prop_map(|incremental| Op::Checkpoint { incremental }),
        1 => Just(Op::FailedCheckpoint),
        1 => (1..=3u32).prop_map(|parallelism| Op::CrashAndRestore { parallelism }),
        1 => (1..3usize).prop_map(Op::Retain),
    ]
}

/// The model of one key's state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyModel {
    value: Option<u64>,
    list: Vec<String>,
    map: BTreeMap<u32, String>,
    reducing: Option<i64>,
    aggregating: Option<SumCount>,
    windowed: BTreeMap<u32, u64>,
}

pub type Model = BTreeMap<String, KeyModel>;

fn render(model: &Model, keys: &[String]) -> Vec<String> {
    keys.iter()
        .map(|k| {
            let m = model.get(k).cloned().unwrap_or_default();
            format!(
                "{k}: v={:?} l={:?} m={:?} r={:?} a={:?} w={:?}",
                m.value,
                m.list,
                m.map.into_iter().collect::<Vec<_>>(),
                m.reducing,
                m.aggregating.map(|a| a.sum / a.count.max(1)),
                (0..3u32)
                    .map(|w| m.windowed.get(&w).copied())
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// Runs one operation sequence against a backend of `factory` and the model.
pub fn run<F: BackendFactory>(factory: &F, ops: &[Op]) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let mut op = Operator::new(factory, "model", MAX_P, 1);
    let mut model = Model::new();
    // The model as of each completed checkpoint.
    let mut completed: BTreeMap<u64, Model> = BTreeMap::new();
    let mut next_id = 1u64;
    for (step, o) in ops.iter().enumerate() {
        match o {
            Op::Checkpoint { incremental } => {
                checkpoint(&mut op, &storage, next_id, *incremental);
                completed.insert(next_id, model.clone());
                next_id += 1;
            }
            Op::FailedCheckpoint => {
                let writer = storage.begin_checkpoint(next_id).unwrap();
                let _ = op.snapshot(&writer, SnapshotOptions::incremental_checkpoint(next_id));
                op.notify_aborted(next_id);
                storage.abort(next_id).unwrap();
                next_id += 1;
            }
            Op::CrashAndRestore { parallelism } => {
                let Some(latest) = storage.latest_completed().unwrap() else {
                    continue;
                };
                let id = latest.checkpoint_id;
                op =
                    Operator::restore(factory, &latest, "model", *parallelism, &storage.source(id));
                model = completed[&id].clone();
                next_id = storage.next_checkpoint_id().unwrap().max(next_id);
            }
            Op::Retain(n) => {
                storage.retain(*n).unwrap();
                let kept = storage.completed_checkpoints().unwrap();
                completed.retain(|id, _| kept.contains(id));
                // After cleanup nothing is left that no retained manifest references, and
                // every retained checkpoint's files are whole.
                let again = storage.gc_plan(*n).unwrap();
                assert!(
                    again.subsumed.is_empty() && again.shared_deleted.is_empty(),
                    "after step {step}: cleanup left garbage: {again:?}"
                );
                for id in &kept {
                    storage.verify(*id).unwrap();
                }
            }
            data => apply(&mut op, &mut model, &keys, data),
        }
        assert_eq!(
            read_operator(&mut op, &keys),
            render(&model, &keys),
            "after step {step}: {o:?}"
        );
    }
    // Every retained checkpoint still restores to the model at that checkpoint.
    for id in storage.completed_checkpoints().unwrap() {
        let m = storage.load(id).unwrap();
        let mut r = Operator::restore(factory, &m, "model", 2, &storage.source(id));
        assert_eq!(
            read_operator(&mut r, &keys),
            render(&completed[&id], &keys),
            "checkpoint {id}"
        );
    }
}

pub fn apply<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    model: &mut Model,
    keys: &[String],
    o: &Op,
) {
    if let Op::Prefetch(hinted) = o {
        for (b, _) in &mut op.subtasks {
            let current = b.current_key().map(<[u8]>::to_vec);
            for &k in hinted {
                b.prefetch_key(&key_bytes(&keys[k]));
            }
            // Not a key of this schema's codec, nor of any key group in particular.
            b.prefetch_key(&[0xff; 3]);
            assert_eq!(
                b.current_key(),
                current.as_deref(),
                "a hint changed the current key"
            );
        }
        return;
    }
    let key_index = match o {
        Op::Value(k, ..)
        | Op::ValueClear(k)
        | Op::ListAdd(k, ..)
        | Op::ListUpdate(k, ..)
        | Op::MapPut(k, ..)
        | Op::MapRemove(k, ..)
        | Op::MapClear(k)
        | Op::Reduce(k, ..)
        | Op::Aggregate(k, ..)
        | Op::Windowed(k, ..)
        | Op::WindowClear(k, ..) => *k,
        _ => unreachable!("not a data operation"),
    };
    let key = &keys[key_index];
    let b = op.owner(key);
    let ids = register(b);
    set_key(b, key);
    let m = model.entry(key.clone()).or_default();
    match o {
        Op::Value(_, v) => {
            b.value(&ids.value).update(*v).unwrap();
            m.value = Some(*v);
        }
        Op::ValueClear(_) => {
            b.value(&ids.value).clear().unwrap();
            m.value = None;
        }
        Op::ListAdd(_, v) => {
            b.list(&ids.list).add(v.to_string()).unwrap();
            m.list.push(v.to_string());
        }
        Op::ListUpdate(_, vs) => {
            let vs: Vec<String> = vs.iter().map(u8::to_string).collect();
            b.list(&ids.list).update(vs.clone()).unwrap();
            m.list = vs;
        }
        Op::MapPut(_, u, v) => {
            b.map(&ids.map).put(*u, v.to_string()).unwrap();
            m.map.insert(*u, v.to_string());
        }
        Op::MapRemove(_, u) => {
            b.map(&ids.map).remove(u).unwrap();
            m.map.remove(u);
        }
        Op::MapClear(_) => {
            b.map(&ids.map).clear().unwrap();
            m.map.clear();
        }
        Op::Reduce(_, v) => {
            b.reducing(&ids.reducing).add(*v).unwrap();
            m.reducing = Some(m.reducing.unwrap_or(0) + v);
        }
        Op::Aggregate(_, v) => {
            b.aggregating(&ids.aggregating).add(*v).unwrap();
            let a = m.aggregating.get_or_insert_with(SumCount::default);
            a.sum += v;
            a.count += 1;
        }
        Op::Windowed(_, w, v) => {
            b.value_in(&ids.windowed, w).update(*v).unwrap();
            m.windowed.insert(*w, *v);
        }
        Op::WindowClear(_, w) => {
            b.value_in(&ids.windowed, w).clear().unwrap();
            m.windowed.remove(w);
        }
        _ => unreachable!(),
    }
}

/// Instantiates the model test for a factory expression.
#[macro_export]
macro_rules! model_tests {
    ($factory:expr) => {
        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig {
                cases: std::env::var("CAIRN_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
                ..proptest::prelude::ProptestConfig::default()
            })]
            #[test]
            fn model_based(ops in proptest::collection::vec(common::model::op_strategy(), 1..80)) {
                common::model::run(&$factory, &ops);
            }
        }
    };
}
