//! State schema evolution in the conformance suite: a newer program registers the states of
//! the test schema with new value types ([`EvolvingCodec`]) and every backend reads what the
//! old program stored, converted, from every kind of snapshot, and writes only the new
//! schema afterwards.

use cairn_core::*;
use cairn_format::Manifest;
use cairn_storage::CheckpointStorage;
use serde::{Deserialize, Serialize};

use super::conformance::{checkpoint, fill_operator, read_operator, MAX_P};
use super::harness::*;
use super::schema::*;

/// The value state's new type: the count and a field the old program did not have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub n: u64,
    pub doubled: u64,
}

/// The list's new element: the text and its length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tagged {
    pub text: String,
    pub len: u32,
}

/// The map's new value: the label and its upper case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labelled {
    pub label: String,
    pub upper: String,
}

/// The aggregating state's new accumulator: the old sum and count plus the largest input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumCountMax {
    pub sum: u64,
    pub count: u64,
    pub max: u64,
}

#[derive(Debug)]
pub struct Average2;

impl AggregateFunction<u64, SumCountMax, u64> for Average2 {
    fn create_accumulator(&self) -> SumCountMax {
        SumCountMax::default()
    }
    fn add(&self, acc: &mut SumCountMax, input: u64) {
        acc.sum += input;
        acc.count += 1;
        acc.max = acc.max.max(input);
    }
    fn result(&self, acc: &SumCountMax) -> u64 {
        acc.sum / acc.count.max(1)
    }
}

fn count(n: u64) -> Count {
    Count { n, doubled: n * 2 }
}

/// The value codec of the new program: reads the old `u64` values by migration.
pub fn count_codec() -> CodecRef<Count> {
    std::sync::Arc::new(
        EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
            .migrates_from(BincodeCodec::<u64>::new(), count),
    )
}

pub fn value_v2() -> ValueStateDescriptor<Count> {
    ValueStateDescriptor {
        name: "value".into(),
        value: count_codec(),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    }
}

pub fn list_v2() -> ListStateDescriptor<Tagged> {
    ListStateDescriptor {
        name: "list".into(),
        element: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<Tagged>::named("Tagged", 1)).migrates_from(
                BincodeCodec::<String>::new(),
                |text: String| Tagged {
                    len: text.len() as u32,
                    text,
                },
            ),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    }
}

pub fn map_v2() -> MapStateDescriptor<u32, Labelled> {
    MapStateDescriptor {
        name: "map".into(),
        user_key: std::sync::Arc::new(BincodeCodec::<u32>::new()),
        value: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<Labelled>::named("Labelled", 1)).migrates_from(
                BincodeCodec::<String>::new(),
                |label: String| Labelled {
                    upper: label.to_uppercase(),
                    label,
                },
            ),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    }
}

pub fn reducing_v2() -> ReducingStateDescriptor<i128> {
    ReducingStateDescriptor {
        name: "reducing".into(),
        value: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<i128>::named("Total", 2))
                .migrates_from(BincodeCodec::<i64>::new(), i128::from),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
        reduce: std::sync::Arc::new(|a, b| a + b),
    }
}

pub fn aggregating_v2() -> AggregatingStateDescriptor<u64, SumCountMax, u64> {
    AggregatingStateDescriptor {
        name: "aggregating".into(),
        accumulator: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<SumCountMax>::named("SumCountMax", 1)).migrates_from(
                BincodeCodec::<SumCount>::new(),
                |a: SumCount| SumCountMax {
                    sum: a.sum,
                    count: a.count,
                    max: 0,
                },
            ),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
        function: std::sync::Arc::new(Average2),
    }
}

pub fn windowed_v2() -> ValueStateDescriptor<Count, u32> {
    ValueStateDescriptor {
        name: "windowed".into(),
        value: count_codec(),
        namespace: std::sync::Arc::new(BincodeCodec::<u32>::new()),
    }
}

/// Registered ids of the new program's schema.
#[derive(Debug, Clone, Copy)]
pub struct IdsV2 {
    pub value: ValueStateId<Count, VoidNamespace>,
    pub list: ListStateId<Tagged, VoidNamespace>,
    pub map: MapStateId<u32, Labelled, VoidNamespace>,
    pub reducing: ReducingStateId<i128, VoidNamespace>,
    pub aggregating: AggregatingStateId<u64, SumCountMax, u64, VoidNamespace>,
    pub windowed: ValueStateId<Count, u32>,
}

pub fn register_v2<B: KeyedStateBackend>(b: &mut B) -> IdsV2 {
    IdsV2 {
        value: b.register_value(&value_v2()).expect("register value v2"),
        list: b.register_list(&list_v2()).expect("register list v2"),
        map: b.register_map(&map_v2()).expect("register map v2"),
        reducing: b
            .register_reducing(&reducing_v2())
            .expect("register reducing v2"),
        aggregating: b
            .register_aggregating(&aggregating_v2())
            .expect("register aggregating v2"),
        windowed: b
            .register_value(&windowed_v2())
            .expect("register windowed v2"),
    }
}

/// Reads every state of `keys` through the new schema, checking each converted field, and
/// prints it as [`read_operator`] prints the old schema, so the two compare as strings.
pub fn read_operator_v2<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    keys: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        let b = op.owner(k);
        let ids = register_v2(b);
        set_key(b, k);
        let value = b.value(&ids.value).get().unwrap().map(|c| {
            assert_eq!(c.doubled, c.n * 2, "key {k}");
            c.n
        });
        let list: Vec<String> = b
            .list(&ids.list)
            .get()
            .unwrap()
            .into_iter()
            .map(|t| {
                assert_eq!(t.len as usize, t.text.len(), "key {k}");
                t.text
            })
            .collect();
        let map: Vec<(u32, String)> = b
            .map(&ids.map)
            .entries()
            .unwrap()
            .into_iter()
            .map(|(uk, v)| {
                assert_eq!(v.upper, v.label.to_uppercase(), "key {k}");
                (uk, v.label)
            })
            .collect();
        let reducing = b
            .reducing(&ids.reducing)
            .get()
            .unwrap()
            .map(|r| i64::try_from(r).expect("an old i64"));
        let aggregating = b.aggregating(&ids.aggregating).get().unwrap();
        let windowed: Vec<Option<u64>> = (0..3u32)
            .map(|w| b.value_in(&ids.windowed, &w).get().unwrap().map(|c| c.n))
            .collect();
        out.push(format!(
            "{k}: v={value:?} l={list:?} m={map:?} r={reducing:?} a={aggregating:?} w={windowed:?}"
        ));
    }
    out
}

/// Writes through the new schema, as `fill_key` does through the old one.
pub fn fill_operator_v2<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        let i = i as u64 + round * 1000;
        let b = op.owner(k);
        let ids = register_v2(b);
        set_key(b, k);
        b.value(&ids.value).update(count(i)).unwrap();
        if i.is_multiple_of(2) {
            let text = format!("{k}-{i}");
            b.list(&ids.list)
                .add(Tagged {
                    len: text.len() as u32,
                    text,
                })
                .unwrap();
        }
        if i % 3 != 1 {
            let label = format!("m{i}");
            b.map(&ids.map)
                .put(
                    (i % 5) as u32,
                    Labelled {
                        upper: label.to_uppercase(),
                        label,
                    },
                )
                .unwrap();
        }
        b.reducing(&ids.reducing).add(i as i128 - 3).unwrap();
        b.aggregating(&ids.aggregating).add(i).unwrap();
        b.value_in(&ids.windowed, &((i % 3) as u32))
            .update(count(i * 2))
            .unwrap();
    }
}

/// The codec identity each state has in operator `op` of `m` (every subtask agrees).
pub fn stored_types(m: &Manifest) -> Vec<(String, String)> {
    let op = m.operator("op").expect("operator in manifest");
    let mut out: Vec<(String, String)> = op
        .subtasks
        .iter()
        .filter_map(|s| s.keyed.as_ref())
        .flat_map(|h| h.states.iter())
        .map(|s| (s.name.clone(), s.value.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn new_types() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("aggregating", "SumCountMax@v1"),
        ("list", "Tagged@v1"),
        ("map", "Labelled@v1"),
        ("reducing", "Total@v2"),
        ("value", "Count@v2"),
        ("windowed", "Count@v2"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    for (_, t) in &mut v {
        t.push_str(" (bincode1-fixint-le)");
    }
    v
}

/// Every kind migrates on restore from a full checkpoint; the snapshot after the
/// migration is in the new schema only (its identities are the new ones, the old program can
/// no longer read it, the new one reads it back exactly).
pub fn evolution_migrates_every_kind<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 80);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, false);

    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    // The new program writes on, in the new schema, and checkpoints incrementally.
    let (old_half, new_half) = keys.split_at(keys.len() / 2);
    fill_operator_v2(&mut next, new_half, 2);
    let after = read_operator_v2(&mut next, &keys);
    assert_ne!(after, before);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    assert_eq!(stored_types(&m2), new_types());

    let mut third = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(read_operator_v2(&mut third, &keys), after);
    // Keys the new program did not touch still read as the old program left them.
    assert_eq!(
        read_operator_v2(&mut third, old_half),
        before[..old_half.len()]
    );
    let mut old_program = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    let err = old_program.subtasks[0]
        .0
        .register_value(&value_desc())
        .unwrap_err()
        .to_string();
    assert!(err.contains("Count@v2") && err.contains("u64"), "{err}");
}

/// A canonical savepoint of the old program at parallelism 2 restores into the new one at
/// 3 and, checkpointed incrementally, again at 1.
pub fn evolution_from_a_savepoint_at_another_parallelism<F: BackendFactory>(f: &F) {
    let dir = tempfile::tempdir().unwrap();
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 90);
    let mut op = Operator::new(f, "op", MAX_P, 2);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let url = write_savepoint_of(&mut op, dir.path(), 7);
    let (m, source) = cairn_storage::open_savepoint(&url).unwrap();

    let mut next = Operator::restore(f, &m, "op", 3, &source);
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    fill_operator_v2(&mut next, &keys[..10], 3);
    let after = read_operator_v2(&mut next, &keys);
    let m2 = checkpoint(&mut next, &storage, 1, true);
    assert_eq!(stored_types(&m2), new_types());
    let mut one = Operator::restore(f, &m2, "op", 1, &storage.source(1));
    assert_eq!(read_operator_v2(&mut one, &keys), after);
}

/// States registered only after the restored job completed an incremental checkpoint of
/// them in the old schema: the migration must not leave later incremental checkpoints
/// referring to what that checkpoint wrote in the old schema under the new identities.
pub fn evolution_after_an_incremental_checkpoint_of_the_old_schema<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 120);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, true);

    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    // Nothing registered yet: checkpoints 2 and 3 carry the old schema's entries.
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let m3 = checkpoint(&mut next, &storage, 3, true);
    assert_eq!(stored_types(&m3), stored_types(&m1));
    drop(m2);
    // Now the program registers (and migrates), changes a few keys only, checkpoints.
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    fill_operator_v2(&mut next, &keys[..3], 4);
    let after = read_operator_v2(&mut next, &keys);
    let m4 = checkpoint(&mut next, &storage, 4, true);
    assert_eq!(stored_types(&m4), new_types());
    let mut restored = Operator::restore(f, &m4, "op", 1, &storage.source(4));
    assert_eq!(read_operator_v2(&mut restored, &keys), after);
    let m5 = checkpoint(&mut restored, &storage, 5, true);
    let mut again = Operator::restore(f, &m5, "op", 2, &storage.source(5));
    assert_eq!(read_operator_v2(&mut again, &keys), after);
}

/// A state restored but not registered keeps its old schema through later snapshots and
/// migrates when a later run registers it.
pub fn evolution_of_a_state_registered_a_run_later<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, false);
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    next.subtasks[0].0.register_value(&value_v2()).unwrap();
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let types = stored_types(&m2);
    let of = |name: &str| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    assert!(of("value").starts_with("Count@v2"), "{types:?}");
    assert!(
        of("list").starts_with("alloc::string::String@v1"),
        "{types:?}"
    );
    let mut last = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(read_operator_v2(&mut last, &keys), before);
}

/// What cannot be read is refused when the state is registered, naming the operator, the
/// state and both schemas: a new type without a migration, a namespace or map key whose
/// codec would migrate (they are compared as bytes), a conversion that fails.
pub fn evolution_refusals<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 20);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let m = checkpoint(&mut op, &storage, 1, false);
    let fresh = || Operator::restore(f, &m, "op", 1, &storage.source(1));

    let mut o = fresh();
    let no_migration = ValueStateDescriptor {
        name: "value".into(),
        value: std::sync::Arc::new(BincodeCodec::<Count>::named("Count", 2)),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    };
    let err = o.subtasks[0]
        .0
        .register_value(&no_migration)
        .unwrap_err()
        .to_string();
    assert!(names_op(&err), "{err}");
    for part in ["value", "u64@v1", "Count@v2"] {
        assert!(err.contains(part), "{part} in {err}");
    }

    let mut o = fresh();
    let ns_migrates = ValueStateDescriptor {
        name: "windowed".into(),
        value: std::sync::Arc::new(BincodeCodec::<u64>::new()),
        namespace: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<u64>::named("Window", 2))
                .migrates_from(BincodeCodec::<u32>::new(), u64::from),
        ),
    };
    let err = o.subtasks[0]
        .0
        .register_value(&ns_migrates)
        .unwrap_err()
        .to_string();
    assert!(names_op(&err), "{err}");
    for part in ["windowed", "namespace", "u32@v1", "Window@v2"] {
        assert!(err.contains(part), "{part} in {err}");
    }

    let mut o = fresh();
    let key_migrates = MapStateDescriptor {
        name: "map".into(),
        user_key: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<u64>::named("Slot", 2))
                .migrates_from(BincodeCodec::<u32>::new(), u64::from),
        ),
        value: std::sync::Arc::new(BincodeCodec::<String>::new()),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    };
    let err = o.subtasks[0]
        .0
        .register_map(&key_migrates)
        .unwrap_err()
        .to_string();
    assert!(names_op(&err), "{err}");
    for part in ["map", "user key", "Slot@v2"] {
        assert!(err.contains(part), "{part} in {err}");
    }

    let mut o = fresh();
    let refuses = ValueStateDescriptor {
        name: "value".into(),
        value: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2)).try_migrates_from(
                BincodeCodec::<u64>::new(),
                |n: u64| {
                    if n == 1005 {
                        Err(format!("{n} is out of range"))
                    } else {
                        Ok(count(n))
                    }
                },
            ),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    };
    let err = o.subtasks[0]
        .0
        .register_value(&refuses)
        .unwrap_err()
        .to_string();
    assert!(names_op(&err), "{err}");
    assert!(err.contains("key_group="), "{err}");
    for part in ["value", "1005 is out of range", "u64@v1"] {
        assert!(err.contains(part), "{part} in {err}");
    }
}

/// Whether an error names operator `op` (as `uid=op` or `operator op`).
fn names_op(err: &str) -> bool {
    err.contains("uid=op") || err.contains("operator op")
}

/// A type renamed with its encoding unchanged reads as is; the next snapshot records the
/// new name, which the old name no longer reads.
pub fn evolution_renamed_type_reads_as_is<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 30);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let renamed = || ValueStateDescriptor::<u64> {
        name: "value".into(),
        value: std::sync::Arc::new(
            EvolvingCodec::new(BincodeCodec::<u64>::named("Counter", 1))
                .reads_as_is(BincodeCodec::<u64>::new().identity().clone()),
        ),
        namespace: std::sync::Arc::new(BincodeCodec::<()>::new()),
    };
    let read = |op: &mut Operator<F::Backend>| -> Vec<Option<u64>> {
        keys.iter()
            .map(|k| {
                let b = op.owner(k);
                let id = b.register_value(&renamed()).unwrap();
                set_key(b, k);
                b.value(&id).get().unwrap()
            })
            .collect()
    };
    let before: Vec<Option<u64>> = keys
        .iter()
        .map(|k| {
            let b = op.owner(k);
            let id = b.register_value(&value_desc()).unwrap();
            set_key(b, k);
            b.value(&id).get().unwrap()
        })
        .collect();
    assert!(before.iter().all(Option::is_some));
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(read(&mut next), before);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let types = stored_types(&m2);
    assert!(
        types
            .iter()
            .any(|(n, t)| n == "value" && t.starts_with("Counter@v1")),
        "{types:?}"
    );
    let mut third = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(read(&mut third), before);
    let mut old = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert!(old.subtasks[0].0.register_value(&value_desc()).is_err());
}

/// States with a TTL migrate their values and keep their stamps: what had expired by the
/// old stamps is still expired after the migration and after a checkpoint of it.
pub fn evolution_of_states_with_a_ttl<F: BackendFactory>(f: &F) {
    use std::sync::Arc;
    use std::time::Duration;
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let clock = Arc::new(ManualClock::new(10_000));
    let ttl = StateTtlConfig::new(Duration::from_secs(1)).with_clock(clock.clone());
    let mut op = Operator::new(f, "op", MAX_P, 1);
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let value = b.register_value_with_ttl(&value_desc(), &ttl).unwrap();
        let list = b.register_list_with_ttl(&list_desc(), &ttl).unwrap();
        set_key(b, k);
        b.ttl_value(&value).update(i as u64).unwrap();
        b.ttl_list(&list).add(format!("{k}-{i}")).unwrap();
        clock.advance(Duration::from_millis(10));
    }
    let m1 = checkpoint(&mut op, &storage, 1, true);
    // Stamps are 10_000 + 10 i; at 11_195 the first 20 keys have expired.
    clock.set(11_195);
    let read = |op: &mut Operator<F::Backend>| -> Vec<(Option<u64>, Vec<String>)> {
        keys.iter()
            .map(|k| {
                let b = op.owner(k);
                let value = b.register_value_with_ttl(&value_v2(), &ttl).unwrap();
                let list = b.register_list_with_ttl(&list_v2(), &ttl).unwrap();
                set_key(b, k);
                let v = b.ttl_value(&value).get().unwrap().map(|c| {
                    assert_eq!(c.doubled, 2 * c.n);
                    c.n
                });
                let l = b
                    .ttl_list(&list)
                    .get()
                    .unwrap()
                    .into_iter()
                    .map(|t| t.text)
                    .collect();
                (v, l)
            })
            .collect()
    };
    let want: Vec<(Option<u64>, Vec<String>)> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if i < 20 {
                (None, Vec::new())
            } else {
                (Some(i as u64), vec![format!("{k}-{i}")])
            }
        })
        .collect();
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(read(&mut next), want);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let types = stored_types(&m2);
    assert!(
        types
            .iter()
            .any(|(n, t)| n == "value" && t == "Count@v2 (cairn-ttl1+bincode1-fixint-le)"),
        "{types:?}"
    );
    let mut again = Operator::restore(f, &m2, "op", 2, &storage.source(2));
    assert_eq!(read(&mut again), want);
    // The stamps moved with the values: 100 ms later ten more keys have expired.
    clock.set(11_295);
    let later: Vec<_> = want
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i < 30 {
                (None, Vec::new())
            } else {
                w.clone()
            }
        })
        .collect();
    let mut last = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(read(&mut last), later);
}
