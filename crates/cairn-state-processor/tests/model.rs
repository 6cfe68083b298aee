//! Model-based: state bootstrapped from random records reads back exactly as a model
//! computed from the records says, at several max parallelisms and parallelisms; each
//! subtask's part holds exactly the keys of its key groups; the savepoint restores at other
//! parallelisms; operator state keeps its order and redistributes as the runtime's does;
//! copying a savepoint keeps it bit for bit.

mod common;

use std::collections::BTreeMap;

use cairn_core::{
    key_group_for_key, subtask_for_key_group, BincodeCodec, Codec, KeyedStateBackend,
    OperatorListStateDescriptor, OperatorStateBackend, Redistribution, StateAccess, StateKind,
};
use cairn_hashmap::HashMapBackend;
use cairn_state_processor::{SavepointReader, SavepointWriter};
use cairn_storage::{open_savepoint, restore_subtask};
use common::*;

fn tree<K: Ord, V>(v: Vec<(K, V)>) -> BTreeMap<K, V> {
    let n = v.len();
    let t: BTreeMap<K, V> = v.into_iter().collect();
    assert_eq!(t.len(), n, "a key was read twice");
    t
}

/// Reads every kind of [`AllKinds`]'s state of operator `uid` and compares it with `model`.
fn assert_reads(reader: &SavepointReader, uid: &str, model: &KindsModel) {
    let d = descriptors();
    let mut k = reader.keyed_state::<u32>(uid).expect("keyed state");
    assert_eq!(tree(k.values(&d.value).expect("values")), model.value);
    assert_eq!(tree(k.lists(&d.list).expect("lists")), model.list);
    let maps: BTreeMap<u32, BTreeMap<u64, u64>> = k
        .maps(&d.map)
        .expect("maps")
        .into_iter()
        .map(|(key, entries)| (key, entries.into_iter().collect()))
        .collect();
    assert_eq!(maps, model.map);
    assert_eq!(
        tree(k.reducing(&d.reducing).expect("reducing")),
        model.reducing
    );
    assert_eq!(
        tree(k.aggregating(&d.aggregating).expect("aggregating")),
        model.aggregating
    );
}

#[test]
fn bootstrapped_keyed_state_reads_back_as_the_model_says() {
    let cases: [(u32, u32); 8] = [
        (1, 1),
        (2, 2),
        (7, 3),
        (128, 1),
        (128, 2),
        (128, 5),
        (1000, 7),
        (4096, 4),
    ];
    for (case, (max_parallelism, parallelism)) in cases.into_iter().enumerate() {
        let mut rng = Rng::new(case as u64 + 1);
        let keys = 1 + rng.below(400);
        let records: Vec<(u32, u64)> = (0..1 + rng.below(3000))
            .map(|_| (rng.below(keys) as u32, rng.below(1000)))
            .collect();
        let model = KindsModel::of(&records);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = s(&dir.path().join("sp"));
        let mut writer = SavepointWriter::new(max_parallelism).expect("writer");
        writer
            .with_keyed_operator("kinds", parallelism, records, |r| r.0, AllKinds)
            .expect("bootstrap");
        writer.write(&path).expect("write");

        let reader = SavepointReader::open(&path).expect("open");
        assert_eq!(reader.max_parallelism(), Some(max_parallelism));
        assert_eq!(reader.operators().len(), 1);
        let info = reader.operator("kinds").expect("operator");
        assert_eq!(
            (info.uid.as_str(), info.parallelism, info.max_parallelism),
            ("kinds", parallelism, max_parallelism)
        );
        assert_eq!(
            info.key_codec.as_ref(),
            Some(BincodeCodec::<u32>::new().identity())
        );
        let kinds: Vec<(&str, StateKind)> = info
            .keyed_states
            .iter()
            .map(|m| (m.name.as_str(), m.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("all", StateKind::List),
                ("by-rest", StateKind::Map),
                ("counted", StateKind::Aggregating),
                ("last", StateKind::Value),
                ("sum", StateKind::Reducing),
            ],
            "case {case}"
        );
        assert!(info.operator_states.is_empty());
        assert_reads(&reader, "kinds", &model);
        assert_subtasks_hold_their_keys(&path, max_parallelism, parallelism, &model);
        for q in [1, (parallelism + 1).min(max_parallelism), parallelism] {
            assert_restores_at(&path, max_parallelism, q, &model);
        }
    }
}

/// Subtask `i`'s part of the savepoint holds exactly the model's keys whose key group
/// subtask `i` owns, with their values.
fn assert_subtasks_hold_their_keys(
    path: &str,
    max_parallelism: u32,
    parallelism: u32,
    model: &KindsModel,
) {
    let (manifest, source) = open_savepoint(path).expect("open savepoint");
    let op = manifest.operator("kinds").expect("operator");
    assert_eq!(op.subtasks.len(), parallelism as usize);
    let codec = BincodeCodec::<u32>::new();
    let mut seen = BTreeMap::new();
    for (i, subtask) in op.subtasks.iter().enumerate() {
        let handle = subtask.keyed.clone().expect("keyed handle");
        let mut b = HashMapBackend::for_subtask(
            "kinds",
            max_parallelism,
            parallelism,
            i as u32,
            codec.identity().clone(),
        )
        .expect("backend");
        b.restore(&[handle], &source).expect("restore one part");
        let ids = register(&mut b).expect("register");
        for key in b.keys(ids.value.raw(), &()).expect("keys") {
            let kg = key_group_for_key(&key, max_parallelism);
            assert_eq!(
                subtask_for_key_group(kg, parallelism, max_parallelism),
                i as u32,
                "a key of key group {kg} is in subtask {i}'s part"
            );
            b.set_current_key(&key).expect("key");
            let v = b.value(&ids.value).get().expect("get").expect("value");
            seen.insert(codec.decode(&key).expect("decode"), v);
        }
    }
    assert_eq!(seen, model.value);
}

/// Restored at `parallelism` as a job restores it (`restore_subtask`), every subtask holds
/// the model's keys of its key groups, and together all of them.
fn assert_restores_at(path: &str, max_parallelism: u32, parallelism: u32, model: &KindsModel) {
    let (manifest, source) = open_savepoint(path).expect("open savepoint");
    let codec = BincodeCodec::<u32>::new();
    let mut lists = BTreeMap::new();
    for i in 0..parallelism {
        let mut b = HashMapBackend::for_subtask(
            "kinds",
            max_parallelism,
            parallelism,
            i,
            codec.identity().clone(),
        )
        .expect("backend");
        let mut operator = OperatorStateBackend::new("kinds");
        restore_subtask(
            &manifest,
            "kinds",
            parallelism,
            i,
            Some(&mut b),
            &mut operator,
            &source,
        )
        .expect("restore subtask");
        let ids = register(&mut b).expect("register");
        for key in b.keys(ids.list.raw(), &()).expect("keys") {
            b.set_current_key(&key).expect("key in range");
            let list = b.list(&ids.list).get().expect("list");
            lists.insert(codec.decode(&key).expect("decode"), list);
        }
    }
    assert_eq!(lists, model.list, "restored at parallelism {parallelism}");
}

#[test]
fn operator_state_keeps_its_order_and_redistributes_as_the_runtime_does() {
    for (p, n) in [(1u32, 0usize), (1, 5), (3, 10), (4, 3), (5, 17), (2, 1)] {
        let offsets: Vec<u64> = (0..n as u64).map(|i| i * 10 + 1).collect();
        let shared: Vec<String> = (0..n + 2).map(|i| format!("e{i}")).collect();
        let split = OperatorListStateDescriptor::<u64>::split("offsets");
        let union = OperatorListStateDescriptor::<String>::union("shared");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = s(&dir.path().join("sp"));
        let mut writer = SavepointWriter::new(128).expect("writer");
        writer
            .with_operator_state("src", p, &split, offsets.clone())
            .expect("split state")
            .with_operator_state("src", p, &union, shared.clone())
            .expect("union state");
        writer.write(&path).expect("write");

        let reader = SavepointReader::open(&path).expect("open");
        let info = reader.operator("src").expect("operator");
        assert_eq!(info.parallelism, p);
        assert!(info.keyed_states.is_empty() && info.key_codec.is_none());
        let states: Vec<(&str, Redistribution, usize)> = info
            .operator_states
            .iter()
            .map(|s| (s.name.as_str(), s.mode, s.elements))
            .collect();
        assert_eq!(
            states,
            [
                ("offsets", Redistribution::Split, n),
                ("shared", Redistribution::Union, n + 2)
            ]
        );
        assert_eq!(
            reader.read_operator_state("src", &split).expect("split"),
            offsets
        );
        assert_eq!(
            reader.read_operator_state("src", &union).expect("union"),
            shared
        );
        let runs: Vec<Vec<u64>> = (0..p as usize)
            .map(|i| offsets[i * n / p as usize..(i + 1) * n / p as usize].to_vec())
            .collect();
        assert_eq!(
            reader
                .read_operator_state_by_subtask("src", &split)
                .expect("by subtask"),
            runs
        );

        // A job restoring at q: at p each subtask keeps its run; otherwise round robin;
        // union state whole everywhere.
        let (manifest, source) = open_savepoint(&path).expect("open savepoint");
        for q in [p, p + 1, 1] {
            for i in 0..q {
                let mut operator = OperatorStateBackend::new("src");
                restore_subtask::<HashMapBackend>(
                    &manifest,
                    "src",
                    q,
                    i,
                    None,
                    &mut operator,
                    &source,
                )
                .expect("restore");
                let id = operator.register_list(&split).expect("split");
                let got = operator.list(id).expect("list").clone();
                let want: Vec<u64> = if q == p {
                    runs[i as usize].clone()
                } else {
                    offsets
                        .iter()
                        .copied()
                        .skip(i as usize)
                        .step_by(q as usize)
                        .collect()
                };
                assert_eq!(got, want, "p={p} q={q} subtask {i}");
                let id = operator.register_list(&union).expect("union");
                assert_eq!(*operator.list(id).expect("list"), shared);
            }
        }
    }
}

#[test]
fn a_keyed_operator_may_have_operator_state_too() {
    let records: Vec<(u32, u64)> = (0..500).map(|i| (i % 37, u64::from(i))).collect();
    let model = KindsModel::of(&records);
    let split = OperatorListStateDescriptor::<u64>::split("offsets");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let mut writer = SavepointWriter::new(64).expect("writer");
    writer
        .with_operator_state("kinds", 3, &split, vec![7, 8, 9, 10])
        .expect("operator state first")
        .with_keyed_operator("kinds", 3, records, |r| r.0, AllKinds)
        .expect("keyed state");
    writer.write(&path).expect("write");
    let reader = SavepointReader::open(&path).expect("open");
    assert_reads(&reader, "kinds", &model);
    assert_eq!(
        reader
            .read_operator_state_by_subtask("kinds", &split)
            .expect("offsets"),
        [vec![7], vec![8], vec![9, 10]]
    );
}

#[test]
fn a_copied_savepoint_is_the_same_savepoint() {
    let records: Vec<(u32, u64)> = (0..2000).map(|i| (i * 7 % 301, u64::from(i))).collect();
    let model = KindsModel::of(&records);
    let dir = tempfile::tempdir().expect("tempdir");
    let first = s(&dir.path().join("first"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator("kinds", 4, records, |r| r.0, AllKinds)
        .expect("bootstrap")
        .with_operator_state(
            "src",
            2,
            &OperatorListStateDescriptor::<u64>::split("offsets"),
            vec![1, 2, 3],
        )
        .expect("operator state");
    writer.write(&first).expect("write");

    let second = s(&dir.path().join("second"));
    let copy = SavepointWriter::from_existing(&first).expect("from existing");
    assert_eq!(copy.uids(), ["kinds", "src"]);
    assert_eq!(copy.max_parallelism(), 128);
    copy.write(&second).expect("write the copy");
    let (a, b) = (
        SavepointReader::open(&first).expect("first"),
        SavepointReader::open(&second).expect("second"),
    );
    assert_eq!(a.manifest().operators, b.manifest().operators);
    assert_eq!(a.checkpoint_id(), b.checkpoint_id());
    assert_reads(&b, "kinds", &model);
    // The files are copies in the new directory (the first savepoint can go).
    drop(a);
    std::fs::remove_dir_all(dir.path().join("first")).expect("remove first");
    assert_reads(&b, "kinds", &model);
}
