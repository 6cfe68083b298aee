//! Snapshots: round trips of every kind, copy-on-write isolation, incremental checkpoints,
//! restore into other key-group ranges, and corrupt or mismatched snapshots.

mod common;

use std::sync::Arc;

use cairn_core::*;
use cairn_format::{EntryRef, FileState, StateFileWriter};
use common::*;

struct Sum;
impl AggregateFunction<u64, u64, u64> for Sum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, input: u64) {
        *acc += input;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

struct Ids {
    value: ValueStateId<u64, ()>,
    list: ListStateId<String, ()>,
    map: MapStateId<u32, u64, ()>,
    reducing: ReducingStateId<u64, ()>,
    aggregating: AggregatingStateId<u64, u64, u64, ()>,
    windowed: ValueStateId<u64, u32>,
}

fn register(b: &mut impl KeyedStateBackend) -> Ids {
    Ids {
        value: b
            .register_value(&ValueStateDescriptor::new("value"))
            .unwrap(),
        list: b.register_list(&ListStateDescriptor::new("list")).unwrap(),
        map: b.register_map(&MapStateDescriptor::new("map")).unwrap(),
        reducing: b
            .register_reducing(&ReducingStateDescriptor::new("reducing", |a: u64, b| {
                a.max(b)
            }))
            .unwrap(),
        aggregating: b
            .register_aggregating(&AggregatingStateDescriptor::new("aggregating", Sum))
            .unwrap(),
        windowed: b
            .register_value(
                &ValueStateDescriptor::new("windowed")
                    .with_namespace::<u32>(Arc::new(BincodeCodec::new())),
            )
            .unwrap(),
    }
}

fn fill(
    b: &mut impl KeyedStateBackend,
    ids: &Ids,
    keys: impl IntoIterator<Item = u64>,
    round: u64,
) {
    for k in keys {
        if b.set_current_key(&key(k)).is_err() {
            continue;
        }
        let i = k + round * 1000;
        b.value(&ids.value).update(i).unwrap();
        if i.is_multiple_of(2) {
            b.list(&ids.list).add(format!("{k}-{i}")).unwrap();
        }
        if i % 3 != 1 {
            b.map(&ids.map).put((i % 5) as u32, i).unwrap();
        }
        b.reducing(&ids.reducing).add(i).unwrap();
        b.aggregating(&ids.aggregating).add(i).unwrap();
        b.value_in(&ids.windowed, &((i % 3) as u32))
            .update(i * 2)
            .unwrap();
    }
}

/// Every state of every key the backend owns, as text.
fn dump(b: &mut impl KeyedStateBackend, keys: impl IntoIterator<Item = u64>) -> Vec<String> {
    let ids = register(b);
    let mut out = Vec::new();
    for k in keys {
        if b.set_current_key(&key(k)).is_err() {
            continue;
        }
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

#[test]
fn full_snapshot_round_trips_every_kind() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..300, 1);
    let before = dump(&mut b, 0..300);
    let h = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    assert_eq!(h.key_group_range, KeyGroupRange::all(MAX_P));
    let names: Vec<_> = h.states.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "aggregating",
            "list",
            "map",
            "reducing",
            "value",
            "windowed"
        ]
    );
    let f = files(&h);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].file.area, FileArea::Private);
    assert_eq!(f[0].key_groups, [KeyGroupRange::all(MAX_P)]);
    let mut r = restored(KeyGroupRange::all(MAX_P), &[h], &store);
    assert_eq!(dump(&mut r, 0..300), before);
}

#[test]
fn savepoint_is_private_and_full() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..50, 1);
    let phase = b.snapshot(SnapshotOptions::savepoint(9)).unwrap();
    let h = phase
        .run(&store.target(9, false), &CancelToken::new())
        .unwrap();
    assert!(files(&h).iter().all(|f| f.file.area == FileArea::Private));
    // An incremental checkpoint into a target without shared files is full and private too.
    let phase = b
        .snapshot(SnapshotOptions::incremental_checkpoint(10))
        .unwrap();
    let h2 = phase
        .run(&store.target(10, false), &CancelToken::new())
        .unwrap();
    assert_eq!(files(&h2)[0].file.area, FileArea::Private);
    assert_eq!(files(&h2)[0].key_groups, [KeyGroupRange::all(MAX_P)]);
}

#[test]
fn snapshot_is_isolated_from_later_writes() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..500, 1);
    let before = dump(&mut b, 0..500);
    let phase = b.snapshot(SnapshotOptions::full_checkpoint(1)).unwrap();
    // Change, clear and add after the synchronous phase.
    fill(&mut b, &ids, 0..600, 2);
    for k in 0..100 {
        b.set_current_key(&key(k)).unwrap();
        b.value(&ids.value).clear().unwrap();
        b.map(&ids.map).clear().unwrap();
    }
    let late = b
        .register_value(&ValueStateDescriptor::<u64>::new("late"))
        .unwrap();
    b.value(&late).update(1).unwrap();
    assert_ne!(dump(&mut b, 0..500), before);
    let h = phase
        .run(&store.target(1, true), &CancelToken::new())
        .unwrap();
    assert!(h.states.iter().all(|s| s.name != "late"));
    let mut r = restored(KeyGroupRange::all(MAX_P), &[h], &store);
    assert!(
        dump(&mut r, 0..500) == before,
        "restored state differs from the snapshot's"
    );
    assert!(dump(&mut r, 500..600).iter().all(|l| l.contains("v=None")));
}

#[test]
fn cancelled_async_phase_fails() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..10, 0);
    let phase = b
        .snapshot(SnapshotOptions::incremental_checkpoint(4))
        .unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let err = phase.run(&store.target(4, true), &cancel).unwrap_err();
    assert!(
        matches!(err, StateError::Cancelled { checkpoint_id: 4 }),
        "{err}"
    );
    assert_eq!(store.writes.load(std::sync::atomic::Ordering::Relaxed), 0);
    b.notify_checkpoint_aborted(4);
    // Nothing is lost: the next incremental checkpoint writes everything.
    let h = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(5));
    assert_eq!(files(&h)[0].key_groups, [KeyGroupRange::all(MAX_P)]);
}

/// The key groups the new (shared) file of `h` supplies, given the files of `prev`.
fn new_key_groups(h: &KeyedStateHandle, prev: &KeyedStateHandle) -> Vec<KeyGroupRange> {
    let old: Vec<_> = prev.files().cloned().collect();
    files(h)
        .into_iter()
        .filter(|f| !old.contains(&f.file))
        .flat_map(|f| f.key_groups)
        .collect()
}

#[test]
fn incremental_writes_only_dirty_key_groups() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..1000, 1);
    let h1 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(1));
    assert_eq!(files(&h1).len(), 1);
    assert_eq!(files(&h1)[0].file.area, FileArea::Shared);
    b.notify_checkpoint_complete(1);

    // Change one key: only its key group is written.
    b.set_current_key(&key(42)).unwrap();
    b.value(&ids.value).update(4242).unwrap();
    let h2 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(2));
    let g = kg(42);
    assert_eq!(new_key_groups(&h2, &h1), [KeyGroupRange::new(g, g + 1)]);
    b.notify_checkpoint_complete(2);
    let expected = dump(&mut b, 0..1000);
    let mut r = restored(KeyGroupRange::all(MAX_P), std::slice::from_ref(&h2), &store);
    assert_eq!(dump(&mut r, 0..1000), expected);

    // Nothing changed: no new file at all, every key group referenced.
    let writes = store.writes.load(std::sync::atomic::Ordering::Relaxed);
    let h3 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(3));
    assert_eq!(
        store.writes.load(std::sync::atomic::Ordering::Relaxed),
        writes
    );
    assert!(new_key_groups(&h3, &h2).is_empty());
    let mut r = restored(KeyGroupRange::all(MAX_P), &[h3], &store);
    assert_eq!(dump(&mut r, 0..1000), expected);
}

#[test]
fn aborted_and_pending_changes_reach_later_checkpoints() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    // Three keys in three different key groups.
    let mut picked: Vec<u64> = Vec::new();
    for k in 0u64.. {
        if picked.iter().all(|p| kg(*p) != kg(k)) {
            picked.push(k);
            if picked.len() == 3 {
                break;
            }
        }
    }
    let (a, c, d) = (picked[0], picked[1], picked[2]);
    fill(&mut b, &ids, 0..200, 1);
    let h1 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(1));
    b.notify_checkpoint_complete(1);
    // Checkpoint 2 sees a change to `a`, then aborts.
    b.set_current_key(&key(a)).unwrap();
    b.value(&ids.value).update(11).unwrap();
    let _h2 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(2));
    b.notify_checkpoint_aborted(2);
    // Checkpoint 3 (pending, never completed) sees a change to `c`.
    b.set_current_key(&key(c)).unwrap();
    b.value(&ids.value).update(33).unwrap();
    let _h3 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(3));
    // Checkpoint 4 sees `d` and must include `a` (aborted) and `c` (still pending).
    b.set_current_key(&key(d)).unwrap();
    b.value(&ids.value).update(44).unwrap();
    let h4 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(4));
    let mut written: Vec<u32> = new_key_groups(&h4, &h1)
        .iter()
        .flat_map(|r| r.iter())
        .collect();
    written.sort_unstable();
    let mut expected_groups = vec![kg(a), kg(c), kg(d)];
    expected_groups.sort_unstable();
    assert_eq!(written, expected_groups);
    b.notify_checkpoint_complete(4);
    b.notify_checkpoint_complete(3); // late, older than the base: ignored
    let expected = dump(&mut b, 0..200);
    let mut r = restored(KeyGroupRange::all(MAX_P), std::slice::from_ref(&h4), &store);
    assert_eq!(dump(&mut r, 0..200), expected);
    // After completing 4, only new changes are written.
    b.set_current_key(&key(a)).unwrap();
    b.value(&ids.value).update(5).unwrap();
    let h5 = snap(&mut b, &store, SnapshotOptions::incremental_checkpoint(5));
    let g = kg(a);
    assert_eq!(new_key_groups(&h5, &h4), [KeyGroupRange::new(g, g + 1)]);
}

#[test]
fn restore_into_halves_and_back() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..1000, 1);
    let expected = dump(&mut b, 0..1000);
    let h = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    let mut halves: Vec<_> = (0..2)
        .map(|i| {
            restored(
                KeyGroupRange::for_subtask(MAX_P, 2, i).unwrap(),
                std::slice::from_ref(&h),
                &store,
            )
        })
        .collect();
    assert_eq!(store.total_reads(), 2, "one read per restore");
    let mut parts: Vec<String> = Vec::new();
    let mut handles = Vec::new();
    for (i, half) in halves.iter_mut().enumerate() {
        let mine = dump(half, 0..1000);
        assert!(!mine.is_empty());
        let ids = register(half);
        for k in half.keys(ids.value.raw(), &()).unwrap() {
            assert!(half
                .key_group_range()
                .contains(key_group_for_key(&k, MAX_P)));
        }
        parts.extend(mine);
        handles.push(snap(
            half,
            &store,
            SnapshotOptions::incremental_checkpoint(2 + i as u64),
        ));
    }
    parts.sort();
    let mut all = expected.clone();
    all.sort();
    assert_eq!(parts, all);
    // 2 -> 3 -> 1.
    let thirds: Vec<_> = (0..3)
        .map(|i| {
            let mut t = restored(
                KeyGroupRange::for_subtask(MAX_P, 3, i).unwrap(),
                &handles,
                &store,
            );
            snap(
                &mut t,
                &store,
                SnapshotOptions::full_checkpoint(10 + i as u64),
            )
        })
        .collect();
    let reads_before = store.total_reads();
    let mut one = restored(KeyGroupRange::all(MAX_P), &thirds, &store);
    assert_eq!(store.total_reads() - reads_before, 3, "each file read once");
    assert_eq!(dump(&mut one, 0..1000), expected);
}

#[test]
fn unregistered_restored_state_is_carried_through() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..100, 1);
    let expected = dump(&mut b, 0..100);
    let h1 = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    let mut r = restored(KeyGroupRange::all(MAX_P), std::slice::from_ref(&h1), &store);
    let v = r
        .register_value(&ValueStateDescriptor::<u64>::new("value"))
        .unwrap();
    r.set_current_key(&key(3)).unwrap();
    r.value(&v).update(7).unwrap();
    let h2 = snap(&mut r, &store, SnapshotOptions::incremental_checkpoint(2));
    assert_eq!(h2.states, h1.states);
    let mut r2 = restored(KeyGroupRange::all(MAX_P), &[h2], &store);
    let after = dump(&mut r2, 0..100);
    assert_eq!(after.len(), expected.len());
    for (a, e) in after.iter().zip(&expected) {
        if a.starts_with("3:") {
            assert!(a.contains("v=Some(7)"), "{a}");
        } else {
            assert_eq!(a, e);
        }
    }
}

#[test]
fn restore_checks_kind_and_codecs() {
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    fill(&mut b, &ids, 0..10, 1);
    let h = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    let mut r = restored(KeyGroupRange::all(MAX_P), std::slice::from_ref(&h), &store);
    let err = r
        .register_value(&ValueStateDescriptor::<String>::new("value"))
        .unwrap_err();
    assert!(
        matches!(err, StateError::IncompatibleCodec { part: "value", .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("op") && msg.contains("u64") && msg.contains("String"),
        "{msg}"
    );
    let err = r
        .register_list(&ListStateDescriptor::<u64>::new("map"))
        .unwrap_err();
    assert!(matches!(err, StateError::IncompatibleKind { .. }), "{err}");
    // The state is still restorable with the right descriptor.
    r.register_value(&ValueStateDescriptor::<u64>::new("value"))
        .unwrap();
    // A backend with another key codec refuses the handle.
    let mut other = cairn_hashmap::HashMapBackend::new(cairn_hashmap::HashMapConfig {
        uid: "op".into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: BincodeCodec::<String>::new().identity().clone(),
    })
    .unwrap();
    let err = other.restore(std::slice::from_ref(&h), &store).unwrap_err();
    assert!(
        matches!(err, StateError::IncompatibleCodec { part: "key", .. }),
        "{err}"
    );
    // Restore twice, or after registration, is refused.
    assert!(r.restore(std::slice::from_ref(&h), &store).is_err());
}

#[test]
fn entry_in_wrong_key_group_is_corruption() {
    let store = MemStore::default();
    let wrong = (kg(5) + 1) % MAX_P;
    let mut w = StateFileWriter::new(vec![FileState {
        name: "value".into(),
        kind: StateKind::Value,
    }])
    .unwrap();
    w.add(&EntryRef {
        key_group: wrong,
        state: 0,
        key: &key(5),
        namespace: &[],
        user_key: None,
        value: &9u64.to_le_bytes(),
    })
    .unwrap();
    let file = store.put(FileArea::Private, "bad.cst", w.finish().unwrap());
    let h = KeyedStateHandle {
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: key_codec().identity().clone(),
        states: vec![ValueStateDescriptor::<u64>::new("value").meta()],
        data: KeyedData::Canonical {
            files: vec![CanonicalFile {
                file,
                key_groups: vec![KeyGroupRange::all(MAX_P)],
            }],
        },
    };
    let mut b = full();
    let err = b.restore(std::slice::from_ref(&h), &store).unwrap_err();
    assert!(err.to_string().contains("bad.cst"), "{err}");
    // Truncated bytes are an error, not a panic.
    let mut bytes = store.bytes(&files(&h)[0].file);
    bytes.truncate(bytes.len() / 2);
    let file = store.put(FileArea::Private, "short.cst", bytes);
    let mut h2 = h.clone();
    h2.data = KeyedData::Canonical {
        files: vec![CanonicalFile {
            file,
            key_groups: vec![KeyGroupRange::all(MAX_P)],
        }],
    };
    let mut b = full();
    assert!(b.restore(&[h2], &store).is_err());
    // Two handles supplying the same key group are refused.
    let mut b = full();
    assert!(b.restore(&[h.clone(), h], &store).is_err());
}

/// Keys whose order the first 8 bytes do not decide (equal prefixes, zero bytes, lengths
/// around 8), through the value states' direct path and the sorted arena of the others.
#[test]
fn keys_sharing_prefixes_round_trip() {
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0],
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"ab".to_vec(),
        b"abcdefg".to_vec(),
        b"abcdefg\0".to_vec(),
        b"abcdefgh".to_vec(),
        b"abcdefgh\0".to_vec(),
        b"abcdefghi".to_vec(),
        b"abcdefgi".to_vec(),
        b"user-000000001".to_vec(),
        b"user-000000002-and-a-long-tail".to_vec(),
        vec![0xff; 8],
        vec![0xff; 9],
        (u64::MAX - 1).to_le_bytes().to_vec(),
        256u64.to_le_bytes().to_vec(),
    ];
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    // Insert in reverse order, so that no order survives by accident.
    for (i, k) in keys.iter().enumerate().rev() {
        let i = i as u64;
        b.set_current_key(k).unwrap();
        b.value(&ids.value).update(i).unwrap();
        b.list(&ids.list).add(format!("e{i}")).unwrap();
        b.map(&ids.map).put(i as u32, i).unwrap();
        b.map(&ids.map).put(1000 - i as u32, i).unwrap();
        for w in [3u32, 1, 2] {
            b.value_in(&ids.windowed, &w)
                .update(i * 10 + u64::from(w))
                .unwrap();
        }
    }
    let h = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    let mut r = restored(KeyGroupRange::all(MAX_P), &[h], &store);
    let ids_r = register(&mut r);
    for (i, k) in keys.iter().enumerate() {
        let i = i as u64;
        r.set_current_key(k).unwrap();
        assert_eq!(r.value(&ids_r.value).get().unwrap(), Some(i), "key {k:?}");
        assert_eq!(r.list(&ids_r.list).get().unwrap(), [format!("e{i}")]);
        let mut entries = r.map(&ids_r.map).entries().unwrap();
        entries.sort_unstable();
        assert_eq!(entries, [(i as u32, i), (1000 - i as u32, i)]);
        for w in [1u32, 2, 3] {
            assert_eq!(
                r.value_in(&ids_r.windowed, &w).get().unwrap(),
                Some(i * 10 + u64::from(w))
            );
        }
    }
}

/// Key groups of hundreds of entries (the radix sort's size) mixing 8-byte keys, longer keys
/// sharing their first 8 bytes, and shorter keys that are prefixes of others.
#[test]
fn large_key_groups_of_mixed_keys_round_trip() {
    let mut keys: Vec<Vec<u8>> = Vec::new();
    for i in 0..20_000u64 {
        keys.push((i * 7919).to_le_bytes().to_vec());
        keys.push(format!("prefix-{i}").into_bytes());
        keys.push(format!("p{}", i % 5000).into_bytes());
    }
    keys.sort();
    keys.dedup();
    let store = MemStore::default();
    let mut b = full();
    let ids = register(&mut b);
    for (i, k) in keys.iter().enumerate() {
        b.set_current_key(k).unwrap();
        b.value(&ids.value).update(i as u64).unwrap();
    }
    let h = snap(&mut b, &store, SnapshotOptions::full_checkpoint(1));
    let mut r = restored(KeyGroupRange::all(MAX_P), &[h], &store);
    let ids_r = register(&mut r);
    for (i, k) in keys.iter().enumerate() {
        r.set_current_key(k).unwrap();
        assert_eq!(
            r.value(&ids_r.value).get().unwrap(),
            Some(i as u64),
            "key {k:?}"
        );
    }
}
