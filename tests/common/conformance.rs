//! The backend conformance suite: every keyed backend runs these unchanged, through
//! `conformance_tests!(factory_expr)`. Each function is one behaviour.

use std::collections::BTreeMap;

use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_storage::{keyed_handles_for, CheckpointStorage};

use super::harness::*;
use super::schema::*;

pub const MAX_P: u32 = 128;

fn single<F: BackendFactory>(f: &F) -> F::Backend {
    f.create("op", MAX_P, KeyGroupRange::all(MAX_P))
}

pub fn value_state<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    set_key(&mut b, "a");
    assert_eq!(b.value(&ids.value).get().unwrap(), None);
    b.value(&ids.value).update(1).unwrap();
    b.value(&ids.value).update(2).unwrap();
    set_key(&mut b, "b");
    assert_eq!(b.value(&ids.value).get().unwrap(), None);
    b.value(&ids.value).update(7).unwrap();
    set_key(&mut b, "a");
    assert_eq!(b.value(&ids.value).get().unwrap(), Some(2));
    b.value(&ids.value).clear().unwrap();
    assert_eq!(b.value(&ids.value).get().unwrap(), None);
    set_key(&mut b, "b");
    assert_eq!(b.value(&ids.value).get().unwrap(), Some(7));
}

pub fn list_state<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    set_key(&mut b, "a");
    assert!(b.list(&ids.list).get().unwrap().is_empty());
    b.list(&ids.list).add("x".into()).unwrap();
    b.list(&ids.list)
        .add_all(vec!["y".into(), "z".into()])
        .unwrap();
    assert_eq!(b.list(&ids.list).get().unwrap(), ["x", "y", "z"]);
    b.list(&ids.list).update(vec!["q".into()]).unwrap();
    assert_eq!(b.list(&ids.list).get().unwrap(), ["q"]);
    b.list(&ids.list).update(vec![]).unwrap();
    assert!(b.list(&ids.list).get().unwrap().is_empty());
    assert!(b.keys(ids.list.raw(), &()).unwrap().is_empty());
    b.list(&ids.list).add("r".into()).unwrap();
    b.list(&ids.list).clear().unwrap();
    assert!(b.list(&ids.list).get().unwrap().is_empty());
}

pub fn map_state<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    set_key(&mut b, "a");
    assert!(b.map(&ids.map).is_empty().unwrap());
    b.map(&ids.map).put(3, "three".into()).unwrap();
    b.map(&ids.map).put(1, "one".into()).unwrap();
    b.map(&ids.map).put(2, "two".into()).unwrap();
    b.map(&ids.map).put(2, "TWO".into()).unwrap();
    assert_eq!(b.map(&ids.map).get(&2).unwrap().as_deref(), Some("TWO"));
    assert!(b.map(&ids.map).contains(&1).unwrap());
    assert!(!b.map(&ids.map).contains(&9).unwrap());
    b.map(&ids.map).remove(&1).unwrap();
    b.map(&ids.map).remove(&42).unwrap();
    // Sorted by the user key's encoding (u32 little endian): 2 < 3.
    assert_eq!(
        b.map(&ids.map).entries().unwrap(),
        vec![(2, "TWO".to_string()), (3, "three".to_string())]
    );
    b.map(&ids.map).remove(&2).unwrap();
    b.map(&ids.map).remove(&3).unwrap();
    assert!(b.map(&ids.map).is_empty().unwrap());
    assert!(
        b.keys(ids.map.raw(), &()).unwrap().is_empty(),
        "empty map leaves no key"
    );
    b.map(&ids.map).put(5, "five".into()).unwrap();
    b.map(&ids.map).clear().unwrap();
    assert_eq!(b.map(&ids.map).get(&5).unwrap(), None);
}

pub fn reducing_and_aggregating_state<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    set_key(&mut b, "a");
    assert_eq!(b.reducing(&ids.reducing).get().unwrap(), None);
    for v in [5, -2, 10] {
        b.reducing(&ids.reducing).add(v).unwrap();
    }
    assert_eq!(b.reducing(&ids.reducing).get().unwrap(), Some(13));
    assert_eq!(b.aggregating(&ids.aggregating).get().unwrap(), None);
    for v in [2, 4, 9] {
        b.aggregating(&ids.aggregating).add(v).unwrap();
    }
    assert_eq!(b.aggregating(&ids.aggregating).get().unwrap(), Some(5));
    b.reducing(&ids.reducing).clear().unwrap();
    b.aggregating(&ids.aggregating).clear().unwrap();
    assert_eq!(b.reducing(&ids.reducing).get().unwrap(), None);
    assert_eq!(b.aggregating(&ids.aggregating).get().unwrap(), None);
}

pub fn namespaces_are_isolated<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    for key in ["a", "b"] {
        set_key(&mut b, key);
        for w in 0..3u32 {
            b.value_in(&ids.windowed, &w)
                .update(u64::from(w) * 10)
                .unwrap();
        }
    }
    set_key(&mut b, "a");
    b.value_in(&ids.windowed, &1).clear().unwrap();
    assert_eq!(b.value_in(&ids.windowed, &0).get().unwrap(), Some(0));
    assert_eq!(b.value_in(&ids.windowed, &1).get().unwrap(), None);
    assert_eq!(b.value_in(&ids.windowed, &2).get().unwrap(), Some(20));
    let mut expect_2 = vec![key_bytes("a"), key_bytes("b")];
    expect_2.sort();
    assert_eq!(b.keys(ids.windowed.raw(), &2u32).unwrap(), expect_2);
    assert_eq!(
        b.keys(ids.windowed.raw(), &1u32).unwrap(),
        vec![key_bytes("b")]
    );
    assert!(b.keys(ids.windowed.raw(), &7u32).unwrap().is_empty());
}

pub fn registration_rules<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    let again = b.register_value(&value_desc()).unwrap();
    assert_eq!(again.raw(), ids.value.raw());
    let err = b
        .register_list(&cairn_core::ListStateDescriptor::<u64>::new("value"))
        .unwrap_err();
    assert!(err.to_string().contains("value"), "{err}");
    let err = b
        .register_value(&ValueStateDescriptor::<String>::new("value"))
        .unwrap_err();
    assert!(err.to_string().contains("value"), "{err}");
}

pub fn key_and_range_errors<F: BackendFactory>(f: &F) {
    let range = KeyGroupRange::for_subtask(MAX_P, 4, 1).unwrap();
    let mut b = f.create("op", MAX_P, range);
    let ids = register(&mut b);
    assert!(matches!(
        b.value(&ids.value).get(),
        Err(StateError::NoCurrentKey { .. })
    ));
    let outside = keys_in(KeyGroupRange::new(0, range.start), MAX_P, 1).remove(0);
    let inside = keys_in(range, MAX_P, 1).remove(0);
    set_key(&mut b, &inside);
    let err = b.set_current_key(&key_bytes(&outside)).unwrap_err();
    assert!(
        matches!(err, StateError::KeyGroupOutOfRange { range: r, .. } if r == range),
        "{err}"
    );
    assert_eq!(b.current_key(), None, "a failed set leaves no key current");
    assert!(matches!(
        b.value(&ids.value).update(1),
        Err(StateError::NoCurrentKey { .. })
    ));
    set_key(&mut b, &inside);
    assert_eq!(b.current_key(), Some(key_bytes(&inside).as_slice()));
    assert_eq!(
        b.current_key_group(),
        Some(key_group_for_key(&key_bytes(&inside), MAX_P))
    );
}

/// Writes a deterministic mix of every state kind for `keys`, varied by `round`.
pub fn fill<B: KeyedStateBackend>(b: &mut B, ids: &Ids, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        fill_key(b, ids, k, i as u64 + round * 1000);
    }
}

/// Writes the state of one key; `i` picks which kinds it gets.
pub fn fill_key<B: KeyedStateBackend>(b: &mut B, ids: &Ids, k: &str, i: u64) {
    set_key(b, k);
    b.value(&ids.value).update(i).unwrap();
    if i.is_multiple_of(2) {
        b.list(&ids.list).add(format!("{k}-{i}")).unwrap();
    }
    if i % 3 != 1 {
        b.map(&ids.map)
            .put((i % 5) as u32, format!("m{i}"))
            .unwrap();
    }
    b.reducing(&ids.reducing).add(i as i64 - 3).unwrap();
    b.aggregating(&ids.aggregating).add(i).unwrap();
    b.value_in(&ids.windowed, &((i % 3) as u32))
        .update(i * 2)
        .unwrap();
}

/// Reads every state of the schema for `keys` through the typed API.
pub fn read_all<B: KeyedStateBackend>(b: &mut B, ids: &Ids, keys: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        set_key(b, k);
        out.push(format!(
            "{k}: v={:?} l={:?} m={:?} r={:?} a={:?} w={:?}",
            b.value(&ids.value).get().unwrap(),
            b.list(&ids.list).get().unwrap(),
            b.map(&ids.map).entries().unwrap(),
            b.reducing(&ids.reducing).get().unwrap(),
            b.aggregating(&ids.aggregating).get().unwrap(),
            (0..3u32)
                .map(|w| b.value_in(&ids.windowed, &w).get().unwrap())
                .collect::<Vec<_>>(),
        ));
    }
    out
}

/// Reads the state of `keys` from whichever subtask owns each.
pub fn read_operator<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for k in keys {
        let b = op.owner(k);
        let ids = register(b);
        out.extend(read_all(b, &ids, std::slice::from_ref(k)));
    }
    out
}

pub fn fill_operator<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let ids = register(b);
        fill_key(b, &ids, k, i as u64 + round * 1000);
    }
}

/// Takes a checkpoint of `op`, publishes it and notifies completion.
pub fn checkpoint<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    storage: &CheckpointStorage,
    id: u64,
    incremental: bool,
) -> cairn_format::Manifest {
    let writer = storage.begin_checkpoint(id).unwrap();
    let options = if incremental {
        SnapshotOptions::incremental_checkpoint(id)
    } else {
        SnapshotOptions::full_checkpoint(id)
    };
    let part = op.snapshot(&writer, options);
    let m = manifest(id, SnapshotType::Checkpoint, vec![part]);
    storage.publish(writer, &m).unwrap();
    op.notify_complete(id);
    m
}

pub fn snapshot_and_restore_every_kind<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m = checkpoint(&mut op, &storage, 1, false);
    let mut restored = Operator::restore(f, &m, "op", 1, &storage.source(1));
    assert_eq!(read_operator(&mut restored, &keys), before);
    let entries = canonical_entries(&m, "op", &storage.source(1));
    assert!(!entries.is_empty());
    let names: std::collections::BTreeSet<_> = entries.keys().map(|k| k.0.clone()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "aggregating",
            "list",
            "map",
            "reducing",
            "value",
            "windowed"
        ]
    );
}

pub fn snapshot_is_isolated_from_later_writes<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 20);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let writer = storage.begin_checkpoint(1).unwrap();
    let (b, o) = &mut op.subtasks[0];
    let async_phase = b.snapshot(SnapshotOptions::full_checkpoint(1)).unwrap();
    let operator_state = o.snapshot().unwrap();
    // Writes between the synchronous and the asynchronous phase must not leak in.
    fill_operator(&mut op, &keys, 2);
    let ids = register(&mut op.subtasks[0].0);
    set_key(&mut op.subtasks[0].0, &keys[0]);
    op.subtasks[0].0.value(&ids.value).clear().unwrap();
    let after = read_operator(&mut op, &keys);
    assert_ne!(after, before);
    let handle = async_phase.run(&writer, &CancelToken::new()).unwrap();
    let m = manifest(
        1,
        SnapshotType::Checkpoint,
        vec![cairn_format::OperatorManifest {
            uid: "op".into(),
            parallelism: 1,
            max_parallelism: MAX_P,
            subtasks: vec![cairn_format::SubtaskManifest {
                key_group_range: KeyGroupRange::all(MAX_P),
                keyed: Some(handle),
                operator_state,
            }],
        }],
    );
    storage.publish(writer, &m).unwrap();
    let mut restored = Operator::restore(f, &m, "op", 1, &storage.source(1));
    assert_eq!(read_operator(&mut restored, &keys), before);
}

pub fn cancelled_async_phase_fails<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let mut b = single(f);
    let ids = register(&mut b);
    fill(
        &mut b,
        &ids,
        &keys_in(KeyGroupRange::all(MAX_P), MAX_P, 10),
        0,
    );
    let writer = storage.begin_checkpoint(1).unwrap();
    let phase = b.snapshot(SnapshotOptions::full_checkpoint(1)).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(matches!(
        phase.run(&writer, &cancel),
        Err(StateError::Cancelled { checkpoint_id: 1 })
    ));
}

pub fn incremental_checkpoints_restore_exactly<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 200);
    let mut op = Operator::new(f, "op", MAX_P, 2);
    fill_operator(&mut op, &keys, 1);
    checkpoint(&mut op, &storage, 1, true);
    // Change a few keys, abort one checkpoint, change more, and check the next one has all.
    fill_operator(&mut op, &keys[..5], 2);
    let writer = storage.begin_checkpoint(2).unwrap();
    let _lost = op.snapshot(&writer, SnapshotOptions::incremental_checkpoint(2));
    op.notify_aborted(2);
    storage.abort(2).unwrap();
    fill_operator(&mut op, &keys[150..152], 3);
    checkpoint(&mut op, &storage, 3, true);
    fill_operator(&mut op, &keys[7..9], 4);
    let m4 = checkpoint(&mut op, &storage, 4, true);
    let expected = read_operator(&mut op, &keys);
    storage.retain(1).unwrap();
    let mut restored = Operator::restore(f, &m4, "op", 2, &storage.source(4));
    assert_eq!(read_operator(&mut restored, &keys), expected);
    assert!(storage.load(3).is_err(), "subsumed checkpoint 3 is gone");
    // The restored state and the live state write the same canonical entries.
    assert_eq!(savepoint_entries(&mut restored), savepoint_entries(&mut op));
}

/// Regression (found by the model test): incremental 1, full 2, retain 1, incremental 3.
/// Retention deletes checkpoint 1's shared files, which the full checkpoint 2 does not
/// reference, so checkpoint 3 must not reference them either.
pub fn incremental_after_full_checkpoint_and_retention<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 50);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    checkpoint(&mut op, &storage, 1, true);
    fill_operator(&mut op, &keys[..3], 2);
    checkpoint(&mut op, &storage, 2, false);
    storage.retain(1).unwrap();
    fill_operator(&mut op, &keys[3..4], 3);
    let m3 = checkpoint(&mut op, &storage, 3, true);
    let expected = read_operator(&mut op, &keys);
    storage.retain(1).unwrap();
    storage.verify(3).unwrap();
    let mut restored = Operator::restore(f, &m3, "op", 1, &storage.source(3));
    assert_eq!(read_operator(&mut restored, &keys), expected);
}

/// Regression (found in review): a handle does not record its
/// max parallelism and `claimed` is never checked for completeness, so restoring a backend
/// of max parallelism 128 from a snapshot taken at max parallelism 64 succeeds with no
/// state at all for the upper key groups (the lower half fails with WrongKeyGroup).
pub fn restore_from_another_max_parallelism_is_refused_not_empty<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(64), 64, 60);
    let mut op = Operator::new(f, "op", 64, 1);
    let ids = register(&mut op.subtasks[0].0);
    fill(&mut op.subtasks[0].0, &ids, &keys, 1);
    let m = checkpoint(&mut op, &storage, 1, false);
    let handles = keyed_handles_for(m.operator("op").unwrap(), KeyGroupRange::all(64));

    let upper = KeyGroupRange::new(64, 128);
    let mine: Vec<&String> = keys
        .iter()
        .filter(|k| upper.contains(key_group_for_key(&key_bytes(k), 128)))
        .collect();
    assert!(!mine.is_empty());
    let mut b = f.create("op", 128, upper);
    match b.restore(&handles, &storage.source(1)) {
        Err(_) => {}
        Ok(()) => {
            let ids = register(&mut b);
            set_key(&mut b, mine[0]);
            let v = b.value(&ids.value).get().unwrap();
            panic!(
                "restore at max parallelism 128 from a max-parallelism-64 snapshot succeeded; key {} has value {v:?}, {} keys of this range silently lost",
                mine[0],
                mine.len()
            );
        }
    }
}

/// Regression (found in review): handles that do not cover the backend's range restore "successfully".
pub fn restore_from_handles_that_leave_key_groups_uncovered_is_refused<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    let ids = register(&mut op.subtasks[0].0);
    fill(&mut op.subtasks[0].0, &ids, &keys, 1);
    let m = checkpoint(&mut op, &storage, 1, false);
    let mut handles = keyed_handles_for(m.operator("op").unwrap(), KeyGroupRange::all(MAX_P));
    // Keep only the file ranges of the first half (as if a subtask's handle were missing).
    if let KeyedData::Canonical { files } = &mut handles[0].data {
        for f in files.iter_mut() {
            f.key_groups = vec![KeyGroupRange::new(0, 64)];
        }
    }
    handles[0].key_group_range = KeyGroupRange::new(0, 64);
    let mut b = f.create("op", MAX_P, KeyGroupRange::all(MAX_P));
    assert!(
        b.restore(&handles, &storage.source(1)).is_err(),
        "key groups 64..128 are supplied by no handle, yet restore succeeded with them empty"
    );
}

/// Regression (found in review): an incremental checkpoint whose synchronous phase ran before the
/// notification of a completed *full* checkpoint still uses the old base; retention after
/// the full checkpoint deletes that base's shared files (no retained manifest references
/// them, and the in-flight checkpoint only registers references at publish), so the
/// incremental checkpoint can never be published.
pub fn incremental_checkpoint_in_flight_across_a_full_checkpoint_survives_retention<
    F: BackendFactory,
>(
    f: &F,
) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 50);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    let ids = register(&mut op.subtasks[0].0);
    fill(&mut op.subtasks[0].0, &ids, &keys, 1);
    checkpoint(&mut op, &storage, 1, true);

    // Full checkpoint 2 is triggered; before its completion reaches the task, incremental
    // checkpoint 3 is triggered.
    fill(&mut op.subtasks[0].0, &ids, &keys[..3], 2);
    let w2 = storage.begin_checkpoint(2).unwrap();
    let s2 = op.subtasks[0]
        .0
        .snapshot(SnapshotOptions::full_checkpoint(2))
        .unwrap();
    let o2 = op.subtasks[0].1.snapshot().unwrap();
    fill(&mut op.subtasks[0].0, &ids, &keys[3..4], 3);
    let w3 = storage.begin_checkpoint(3).unwrap();
    let s3 = op.subtasks[0]
        .0
        .snapshot(SnapshotOptions::incremental_checkpoint(3))
        .unwrap();
    let o3 = op.subtasks[0].1.snapshot().unwrap();

    // 2 completes, the coordinator retains one checkpoint, then notifies the task.
    let h2 = s2.run(&w2, &CancelToken::new()).unwrap();
    let m2 = manifest(
        2,
        SnapshotType::Checkpoint,
        vec![one_subtask(MAX_P, h2, o2)],
    );
    storage.publish(w2, &m2).unwrap();
    storage.retain(1).unwrap();
    op.notify_complete(2);

    let h3 = s3.run(&w3, &CancelToken::new()).unwrap();
    let m3: Manifest = manifest(
        3,
        SnapshotType::Checkpoint,
        vec![one_subtask(MAX_P, h3, o3)],
    );
    storage
        .publish(w3, &m3)
        .expect("checkpoint 3 references checkpoint 1's shared files, deleted by retention");
}

fn one_subtask(
    max_parallelism: u32,
    handle: KeyedStateHandle,
    operator_state: Vec<OperatorStateSnapshot>,
) -> OperatorManifest {
    OperatorManifest {
        uid: "op".into(),
        parallelism: 1,
        max_parallelism,
        subtasks: vec![SubtaskManifest {
            key_group_range: KeyGroupRange::all(max_parallelism),
            keyed: Some(handle),
            operator_state,
        }],
    }
}

/// Restore at 1 → 2 → 3 → 1 parallelism keeps identical state, keyed and operator state.
pub fn rescale_keeps_state<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 150);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let offsets = OperatorListStateDescriptor::<u64>::split("offsets");
    let all = OperatorListStateDescriptor::<String>::union("all");
    {
        let o = &mut op.subtasks[0].1;
        let id = o.register_list(&offsets).unwrap();
        o.list(id).unwrap().extend([10, 11, 12, 13, 14]);
        let id = o.register_list(&all).unwrap();
        o.list(id).unwrap().push("u".into());
    }
    let expected = read_operator(&mut op, &keys);
    let mut last = checkpoint(&mut op, &storage, 1, false);
    let expected_entries = savepoint_entries(&mut op);
    let mut id = 1;
    let mut old_p = 1u32;
    for p in [2u32, 3, 1] {
        let mut next = Operator::restore(f, &last, "op", p, &storage.source(id));
        assert_eq!(next.parallelism(), p);
        assert_eq!(
            read_operator(&mut next, &keys),
            expected,
            "at parallelism {p}"
        );
        let mut split = Vec::new();
        for (_, o) in &mut next.subtasks {
            let sid = o.register_list(&offsets).unwrap();
            split.extend(o.list(sid).unwrap().iter().copied());
            // Union: every new subtask gets the elements of every old subtask.
            let union = o.register_list(&all).unwrap();
            assert_eq!(
                *o.list(union).unwrap(),
                vec!["u".to_string(); old_p as usize]
            );
        }
        // Keep the union state at one element per subtask for the next round.
        for (_, o) in &mut next.subtasks {
            let union = o.register_list(&all).unwrap();
            o.list(union).unwrap().truncate(1);
        }
        old_p = p;
        split.sort_unstable();
        assert_eq!(split, [10, 11, 12, 13, 14], "split state dealt, none lost");
        id += 1;
        last = checkpoint(&mut next, &storage, id, id % 2 == 0);
        assert_eq!(
            savepoint_entries(&mut next),
            expected_entries,
            "canonical entries at parallelism {p}"
        );
    }
}

/// A restored state that the program does not register is carried into later snapshots.
pub fn unregistered_restored_state_is_kept<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 30);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let m1 = checkpoint(&mut op, &storage, 1, false);
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    // Register only the value state, change nothing, checkpoint again.
    let b = &mut next.subtasks[0].0;
    b.register_value(&value_desc()).unwrap();
    let m2 = checkpoint(&mut next, &storage, 2, false);
    assert_eq!(
        canonical_entries(&m2, "op", &storage.source(2)),
        canonical_entries(&m1, "op", &storage.source(1))
    );
}

/// Registering a state whose codec differs from the snapshot's is an error naming both.
pub fn restore_checks_codecs<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 5);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let m = checkpoint(&mut op, &storage, 1, false);
    let mut next = Operator::restore(f, &m, "op", 1, &storage.source(1));
    let b = &mut next.subtasks[0].0;
    let err = b
        .register_value(&ValueStateDescriptor::<String>::new("value"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("u64") && err.contains("String"), "{err}");
    assert!(err.contains("value"), "{err}");
    let err = b
        .register_map(&MapStateDescriptor::<u32, String>::new("list"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("list"), "{err}");
}

/// `keys` lists every key of a state in sorted byte order.
pub fn keys_iteration<F: BackendFactory>(f: &F) {
    let mut b = single(f);
    let ids = register(&mut b);
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    fill(&mut b, &ids, &keys, 0);
    let mut expected: Vec<Vec<u8>> = keys.iter().map(|k| key_bytes(k)).collect();
    expected.sort();
    assert_eq!(b.keys(ids.value.raw(), &()).unwrap(), expected);
    let by_window: BTreeMap<u32, usize> = (0..3u32)
        .map(|w| (w, b.keys(ids.windowed.raw(), &w).unwrap().len()))
        .collect();
    assert_eq!(by_window.values().sum::<usize>(), keys.len());
}

/// Instantiates the suite for a factory expression.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory;
            value_state, list_state, map_state, reducing_and_aggregating_state,
            namespaces_are_isolated, registration_rules, key_and_range_errors,
            snapshot_and_restore_every_kind, snapshot_is_isolated_from_later_writes,
            cancelled_async_phase_fails, incremental_checkpoints_restore_exactly,
            incremental_after_full_checkpoint_and_retention,
            restore_from_another_max_parallelism_is_refused_not_empty,
            restore_from_handles_that_leave_key_groups_uncovered_is_refused,
            incremental_checkpoint_in_flight_across_a_full_checkpoint_survives_retention,
            rescale_keeps_state, unregistered_restored_state_is_kept, restore_checks_codecs,
            keys_iteration);
        $crate::conformance_tests!(@evolution $factory;
            evolution_migrates_every_kind, evolution_from_a_savepoint_at_another_parallelism,
            evolution_after_an_incremental_checkpoint_of_the_old_schema,
            evolution_of_a_state_registered_a_run_later, evolution_refusals,
            evolution_renamed_type_reads_as_is, evolution_of_states_with_a_ttl);
    };
    (@evolution $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::evolution::$name(&$factory);
            }
        )*
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                common::conformance::$name(&$factory);
            }
        )*
    };
}
