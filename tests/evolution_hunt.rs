//! A bug hunt on state schema evolution (df5d81e), run for every backend: the heap, RocksDB
//! and the changelog backend over each. It found, fixed since: the changelog backend kept
//! materializations naming a state's old identity after a rename read as is (a program
//! without the alias could not restore its checkpoints, nor could the renaming program
//! rescale them); a conversion panicking during the changelog's replay left the state part
//! replayed without refusing snapshots; operator list state migrated in some subtasks only
//! did not restore even at its own parallelism. A keyed state migrated in some subtasks
//! only (registered lazily) restores at its own parallelism only: pinned here.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_storage::CheckpointStorage;
use common::conformance::{checkpoint, fill_operator, read_operator, MAX_P};
use common::evolution::*;
use common::harness::*;
use common::schema::*;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// [`Operator::restore`] that returns the first error instead of panicking.
fn try_restore<F: BackendFactory>(
    f: &F,
    m: &Manifest,
    parallelism: u32,
    source: &dyn SnapshotSource,
) -> Result<Operator<F::Backend>, String> {
    let op = m.operator("op").expect("operator in manifest");
    let mut me = Operator::new(f, "op", op.max_parallelism, parallelism);
    let old_ops: Vec<_> = op
        .subtasks
        .iter()
        .map(|s| s.operator_state.clone())
        .collect();
    let new_ops = redistribute("op", &old_ops, parallelism).map_err(|e| e.to_string())?;
    for ((b, o), ops) in me.subtasks.iter_mut().zip(new_ops) {
        let range = b.key_group_range();
        let handles: Vec<KeyedStateHandle> = op
            .subtasks
            .iter()
            .filter_map(|s| s.keyed.clone())
            .filter(|h| !h.key_group_range.intersect(&range).is_empty())
            .collect();
        b.restore(&handles, source).map_err(|e| e.to_string())?;
        o.restore(ops).map_err(|e| e.to_string())?;
    }
    Ok(me)
}

/// The synchronous phases of every subtask (as at a barrier), to be finished later by
/// [`finish`].
type Pending = Vec<(Box<dyn AsyncSnapshot>, Vec<OperatorStateSnapshot>)>;

fn sync_phase<B: KeyedStateBackend>(op: &mut Operator<B>, options: SnapshotOptions) -> Pending {
    op.subtasks
        .iter_mut()
        .map(|(b, o)| {
            (
                b.snapshot(options).expect("sync phase"),
                o.snapshot().expect("operator state snapshot"),
            )
        })
        .collect()
}

/// Runs the asynchronous phases of `pending` into checkpoint `id` of `storage`, publishes it
/// and notifies `op` of its completion.
fn finish<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    storage: &CheckpointStorage,
    id: u64,
    pending: Pending,
) -> Manifest {
    let writer = storage.begin_checkpoint(id).unwrap();
    let p = pending.len() as u32;
    let subtasks = pending
        .into_iter()
        .enumerate()
        .map(|(i, (phase, operator_state))| SubtaskManifest {
            key_group_range: KeyGroupRange::for_subtask(op.max_parallelism, p, i as u32).unwrap(),
            keyed: Some(
                phase
                    .run(&writer, &CancelToken::new())
                    .expect("async phase"),
            ),
            operator_state,
        })
        .collect();
    let part = OperatorManifest {
        uid: op.uid.clone(),
        parallelism: p,
        max_parallelism: op.max_parallelism,
        subtasks,
    };
    let m = manifest(id, SnapshotType::Checkpoint, vec![part]);
    storage.publish(writer, &m).unwrap();
    op.notify_complete(id);
    m
}

/// Each subtask's identity of state `name` in `m` (`None`: the handle does not list it).
fn identity_per_subtask(m: &Manifest, name: &str) -> Vec<Option<String>> {
    m.operator("op")
        .unwrap()
        .subtasks
        .iter()
        .map(|s| {
            s.keyed.as_ref().and_then(|h| {
                h.states
                    .iter()
                    .find(|st| st.name == name)
                    .map(|st| st.value.to_string())
            })
        })
        .collect()
}

/// Every identity state `name` has anywhere in `m`'s handles, the materialized handles of
/// changelog handles included.
fn every_identity_of(m: &Manifest, name: &str) -> Vec<String> {
    fn walk(h: &KeyedStateHandle, name: &str, out: &mut Vec<String>) {
        for s in h.states.iter().filter(|s| s.name == name) {
            out.push(s.value.to_string());
        }
        if let KeyedData::Changelog { materialized, .. } = &h.data {
            for inner in materialized {
                walk(inner, name, out);
            }
        }
    }
    let mut out = Vec::new();
    for s in &m.operator("op").unwrap().subtasks {
        if let Some(h) = &s.keyed {
            walk(h, name, &mut out);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The value of state `value` of every key through descriptor `d`.
fn read_values<B: KeyedStateBackend, V: StateValue>(
    op: &mut Operator<B>,
    keys: &[String],
    d: &ValueStateDescriptor<V>,
) -> Result<Vec<Option<V>>, String> {
    let mut out = Vec::new();
    for k in keys {
        let b = op.owner(k);
        let id = b.register_value(d).map_err(|e| e.to_string())?;
        set_key(b, k);
        out.push(b.value(&id).get().map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn void_ns() -> CodecRef<()> {
    Arc::new(BincodeCodec::<()>::new())
}

/// The value state read under a new type name with the same bytes (`reads_as_is`).
fn renamed_value() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor {
        name: "value".into(),
        value: Arc::new(
            EvolvingCodec::new(BincodeCodec::<u64>::named("Counter", 1))
                .reads_as_is(BincodeCodec::<u64>::new().identity().clone()),
        ),
        namespace: void_ns(),
    }
}

/// The value state under the new name only (a program that dropped the alias).
fn counter_only() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::with_codec("value", BincodeCodec::<u64>::named("Counter", 1))
}

fn count(n: u64) -> Count {
    Count { n, doubled: n * 2 }
}

/// `value_v2` whose conversion counts its calls.
fn counting_value_v2(calls: Arc<AtomicU64>) -> ValueStateDescriptor<Count> {
    ValueStateDescriptor {
        name: "value".into(),
        value: Arc::new(
            EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2)).migrates_from(
                BincodeCodec::<u64>::new(),
                move |n: u64| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    count(n)
                },
            ),
        ),
        namespace: void_ns(),
    }
}

/// The third schema of the value state: the count and a label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CountV3 {
    n: u64,
    doubled: u64,
    label: String,
}

fn count_v2_codec() -> EvolvingCodec<Count> {
    EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
        .migrates_from(BincodeCodec::<u64>::new(), count)
}

fn value_v3() -> ValueStateDescriptor<CountV3> {
    ValueStateDescriptor::with_codec(
        "value",
        EvolvingCodec::new(BincodeCodec::<CountV3>::named("Count", 3)).migrates_from(
            count_v2_codec(),
            |c: Count| CountV3 {
                label: format!("#{}", c.n),
                n: c.n,
                doubled: c.doubled,
            },
        ),
    )
}

/// Only the value state, one value per key (`i + 1`), so a test knows every stored value.
fn fill_values<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String]) -> Vec<Option<u64>> {
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let id = b.register_value(&value_desc()).unwrap();
        set_key(b, k);
        b.value(&id).update(i as u64 + 1).unwrap();
    }
    (1..=keys.len() as u64).map(Some).collect()
}

// ---------------------------------------------------------------------------------------
// The generic tests (instantiated per backend below)
// ---------------------------------------------------------------------------------------

/// A program that renamed the type (read as is through an alias) checkpoints; the next
/// program drops the alias and knows only the new name. Every snapshot after the rename
/// must describe the state by the new name only (README: "the next snapshot records the
/// new name, which the old name no longer reads").
fn renamed_then_alias_dropped<F: BackendFactory>(f: &F) {
    // The old program's checkpoint full (under the changelog backend: its state is in the
    // wrapped backend's snapshot) and incremental (in the log).
    for incremental in [false, true] {
        renamed_then_alias_dropped_from(f, incremental);
    }
}

fn renamed_then_alias_dropped_from<F: BackendFactory>(f: &F, incremental: bool) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 30);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    let before = fill_values(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, incremental);

    let mut second = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(
        read_values(&mut second, &keys, &renamed_value()),
        Ok(before.clone())
    );
    let m2 = checkpoint(&mut second, &storage, 2, true);

    let mut third = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(
        read_values(&mut third, &keys, &counter_only()),
        Ok(before.clone()),
        "a program without the alias reads the renamed program's checkpoint ({incremental})"
    );
    assert_eq!(
        every_identity_of(&m2, "value"),
        ["Counter@v1 (bincode1-fixint-le)"],
        "checkpoint 2 must describe the renamed state by its new name only ({incremental})"
    );
    // A program that migrates from the new name only reads it too.
    let mut fourth = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    let from_counter = ValueStateDescriptor::with_codec(
        "value",
        EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
            .migrates_from(BincodeCodec::<u64>::named("Counter", 1), count),
    );
    let want: Vec<Option<Count>> = before.iter().map(|v| v.map(count)).collect();
    assert_eq!(read_values(&mut fourth, &keys, &from_counter), Ok(want));
}

/// The old program's checkpoint at parallelism 2; the new program registers (and migrates)
/// the value state in subtask 0 only (a state registered lazily, when a record comes) and
/// checkpoints. Restored at another parallelism, the handles describe the state by
/// different identities. Returns what the new program then reads (or the error).
fn partly_migrated_checkpoint_at_another_parallelism<F: BackendFactory>(
    f: &F,
    p: u32,
) -> Result<(Vec<String>, Vec<String>), String> {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let mut op = Operator::new(f, "op", MAX_P, 2);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, false);
    let mut next = Operator::restore(f, &m1, "op", 2, &storage.source(1));
    next.subtasks[0].0.register_value(&value_v2()).unwrap();
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let ids = identity_per_subtask(&m2, "value");
    assert_eq!(ids.len(), 2);
    assert_ne!(
        ids[0], ids[1],
        "the subtasks describe the state apart: {ids:?}"
    );
    let mut restored = try_restore(f, &m2, p, &storage.source(2))?;
    Ok((before, read_operator_v2(&mut restored, &keys)))
}

/// Pinned: a rescaling restore of such a checkpoint is an error naming the state, never
/// wrong state; at the same parallelism it restores and reads right.
fn partly_migrated_checkpoint_rescaled_is_refused_not_wrong<F: BackendFactory>(f: &F) {
    let (before, after) = partly_migrated_checkpoint_at_another_parallelism(f, 2)
        .expect("the same parallelism restores");
    assert_eq!(before, after);
    for p in [1, 3] {
        match partly_migrated_checkpoint_at_another_parallelism(f, p) {
            Err(e) => assert!(
                e.contains("disagree") && e.contains("value") && e.contains("uid=op"),
                "{e}"
            ),
            Ok((before, after)) => assert_eq!(before, after, "at parallelism {p}"),
        }
    }
}

/// The same state registered again in the run: with the migrating descriptor it is the
/// same state (no second migration, the values stay); with the old descriptor (before or
/// after a checkpoint) it is refused naming both identities, and nothing changes.
fn registering_again_in_the_same_run<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, true);

    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    fill_operator_v2(&mut next, &keys[..7], 2);
    let after = read_operator_v2(&mut next, &keys);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let b = &mut next.subtasks[0].0;
    let err = b.register_value(&value_desc()).unwrap_err().to_string();
    for part in ["value", "Count@v2", "u64@v1"] {
        assert!(err.contains(part), "{part} in {err}");
    }
    let err = b.register_list(&list_desc()).unwrap_err().to_string();
    assert!(err.contains("list") && err.contains("Tagged@v1"), "{err}");
    // Again with the new descriptors (read_operator_v2 registers them): unchanged.
    assert_eq!(read_operator_v2(&mut next, &keys), after);
    let m3 = checkpoint(&mut next, &storage, 3, true);
    assert_eq!(stored_types(&m3), stored_types(&m2));
    let mut third = Operator::restore(f, &m3, "op", 1, &storage.source(3));
    assert_eq!(read_operator_v2(&mut third, &keys), after);

    // The old descriptor first, then the migrating one: refused; the state stays old.
    let mut other = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    let b = &mut other.subtasks[0].0;
    b.register_value(&value_desc()).unwrap();
    let err = b.register_value(&value_v2()).unwrap_err().to_string();
    assert!(err.contains("Count@v2") && err.contains("u64@v1"), "{err}");
    assert_eq!(read_operator(&mut other, &keys), before);
    let m4 = checkpoint(&mut other, &storage, 4, true);
    assert!(stored_types(&m4)
        .iter()
        .any(|(n, t)| n == "value" && t.starts_with("u64@v1")));
}

/// The conversion runs once per stored value: at the registration that migrates, never
/// again for a snapshot, a re-registration or a restore of a snapshot taken after it.
fn each_value_is_converted_once<F: BackendFactory>(f: &F) {
    for incremental in [false, true] {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 50);
        let mut op = Operator::new(f, "op", MAX_P, 1);
        let before = fill_values(&mut op, &keys);
        let m1 = checkpoint(&mut op, &storage, 1, incremental);
        let calls = Arc::new(AtomicU64::new(0));
        let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
        let want: Vec<Option<Count>> = before.iter().map(|v| v.map(count)).collect();
        let d = counting_value_v2(calls.clone());
        assert_eq!(read_values(&mut next, &keys, &d), Ok(want.clone()));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            keys.len() as u64,
            "{incremental}"
        );
        let m2 = checkpoint(&mut next, &storage, 2, true);
        let m3 = checkpoint(&mut next, &storage, 3, incremental);
        assert_eq!(read_values(&mut next, &keys, &d), Ok(want.clone()));
        for (m, id) in [(&m2, 2), (&m3, 3)] {
            let mut again = Operator::restore(f, m, "op", 1, &storage.source(id));
            assert_eq!(read_values(&mut again, &keys, &d), Ok(want.clone()));
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            keys.len() as u64,
            "converted again ({incremental})"
        );
    }
}

/// A checkpoint (incremental or full) whose synchronous phase ran before the migration and
/// whose asynchronous phase after it holds the old schema throughout (the old program
/// reads it); the next incremental checkpoint holds the new one (also at parallelism 2).
fn checkpoint_in_flight_across_the_migration<F: BackendFactory>(f: &F) {
    // Incremental (native for RocksDB), and full (canonical, read from a RocksDB snapshot
    // while the migration rewrites and compacts the column family). The changelog backend
    // refuses a full checkpoint before the restored states are registered (its documented
    // limit), so it has the incremental case only.
    for options in [
        SnapshotOptions::incremental_checkpoint(2),
        SnapshotOptions::full_checkpoint(2),
    ] {
        checkpoint_in_flight_across_the_migration_as(f, options);
    }
}

fn checkpoint_in_flight_across_the_migration_as<F: BackendFactory>(
    f: &F,
    options: SnapshotOptions,
) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    if !options.incremental && next.subtasks[0].0.snapshot(options).is_err() {
        return;
    }
    let pending = sync_phase(&mut next, options);
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    fill_operator_v2(&mut next, &keys[..5], 2);
    let after = read_operator_v2(&mut next, &keys);
    let m2 = finish(&mut next, &storage, 2, pending);
    let m3 = checkpoint(&mut next, &storage, 3, true);
    fill_operator_v2(&mut next, &keys[5..8], 3);
    let later = read_operator_v2(&mut next, &keys);
    let m4 = checkpoint(&mut next, &storage, 4, true);

    let mut old = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(read_operator(&mut old, &keys), before);
    assert_eq!(
        every_identity_of(&m3, "value"),
        ["Count@v2 (bincode1-fixint-le)"]
    );
    let mut new = Operator::restore(f, &m3, "op", 1, &storage.source(3));
    assert_eq!(read_operator_v2(&mut new, &keys), after);
    let mut two = Operator::restore(f, &m4, "op", 2, &storage.source(4));
    assert_eq!(read_operator_v2(&mut two, &keys), later);
}

/// Three schemas over three programs: v1 → v2 (migrated, checkpointed, written) → v3,
/// whose history declares v2 (itself evolving from v1): the v1 values that v2 converted,
/// the values v2 wrote, and v1 values read straight from the first checkpoint all reach
/// v3 converted once each.
fn three_versions_over_three_programs<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    let before = fill_values(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, true);

    let mut second = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    let v2 = ValueStateDescriptor::with_codec("value", count_v2_codec());
    let mut want_v2: Vec<Option<Count>> = before.iter().map(|v| v.map(count)).collect();
    assert_eq!(read_values(&mut second, &keys, &v2), Ok(want_v2.clone()));
    for (i, k) in keys.iter().enumerate().take(10) {
        let b = second.owner(k);
        let id = b.register_value(&v2).unwrap();
        set_key(b, k);
        let c = Count {
            n: 1000 + i as u64,
            doubled: 7,
        };
        b.value(&id).update(c.clone()).unwrap();
        want_v2[i] = Some(c);
    }
    let m2 = checkpoint(&mut second, &storage, 2, true);

    let v3 = |c: &Count| CountV3 {
        n: c.n,
        doubled: c.doubled,
        label: format!("#{}", c.n),
    };
    let want_v3: Vec<Option<CountV3>> = want_v2.iter().map(|c| c.as_ref().map(v3)).collect();
    let mut third = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    assert_eq!(
        read_values(&mut third, &keys, &value_v3()),
        Ok(want_v3.clone())
    );
    let m3 = checkpoint(&mut third, &storage, 3, true);
    assert_eq!(
        every_identity_of(&m3, "value"),
        ["Count@v3 (bincode1-fixint-le)"]
    );
    let mut fourth = Operator::restore(f, &m3, "op", 2, &storage.source(3));
    assert_eq!(read_values(&mut fourth, &keys, &value_v3()), Ok(want_v3));
    // v1 straight to v3 through the chain.
    let mut direct = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    let chained: Vec<Option<CountV3>> = before.iter().map(|v| v.map(|n| v3(&count(n)))).collect();
    assert_eq!(read_values(&mut direct, &keys, &value_v3()), Ok(chained));
    // The second program cannot read the third one's checkpoint (it must fail, naming both).
    let mut back = Operator::restore(f, &m3, "op", 1, &storage.source(3));
    let err = read_values(&mut back, &keys, &v2).unwrap_err();
    assert!(
        err.contains("Count@v3") && err.contains("Count@v2"),
        "{err}"
    );
}

/// States the old program cleared (or never wrote) migrate as empty states: the new
/// program registers them, reads nothing, writes, and its checkpoint restores.
fn emptied_states_migrate<F: BackendFactory>(f: &F) {
    for incremental in [false, true] {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 20);
        let mut op = Operator::new(f, "op", MAX_P, 1);
        fill_operator(&mut op, &keys, 1);
        let m0 = checkpoint(&mut op, &storage, 1, incremental);
        drop(m0);
        for k in &keys {
            let b = op.owner(k);
            let ids = register(b);
            set_key(b, k);
            b.value(&ids.value).clear().unwrap();
            b.list(&ids.list).clear().unwrap();
            b.map(&ids.map).clear().unwrap();
            b.reducing(&ids.reducing).clear().unwrap();
            b.aggregating(&ids.aggregating).clear().unwrap();
            for w in 0..3u32 {
                b.value_in(&ids.windowed, &w).clear().unwrap();
            }
        }
        let empty = read_operator(&mut op, &keys);
        let m1 = checkpoint(&mut op, &storage, 2, incremental);
        let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(2));
        assert_eq!(read_operator_v2(&mut next, &keys), empty, "{incremental}");
        fill_operator_v2(&mut next, &keys[..4], 2);
        let after = read_operator_v2(&mut next, &keys);
        let m2 = checkpoint(&mut next, &storage, 3, true);
        let mut last = Operator::restore(f, &m2, "op", 1, &storage.source(3));
        assert_eq!(read_operator_v2(&mut last, &keys), after, "{incremental}");
    }
}

/// A conversion that panics (a bug in the user's closure) part-way through: the panic
/// reaches the caller; a task would fail on it. Whatever the backend then does, it must
/// not take a snapshot that silently holds part of the state: either it refuses the
/// snapshot, or a correct registration afterwards still sees every value.
fn a_panicking_conversion_does_not_leave_part_of_the_state<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    let before = fill_values(&mut op, &keys);
    // Small: the changelog backend keeps all of it in its log (no materialization).
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    let calls = Arc::new(AtomicU64::new(0));
    let last = keys.len() as u64;
    let panicky = {
        let calls = calls.clone();
        ValueStateDescriptor::with_codec(
            "value",
            EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2)).migrates_from(
                BincodeCodec::<u64>::new(),
                move |n: u64| {
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == last {
                        panic!("a bug in the conversion");
                    }
                    count(n)
                },
            ),
        )
    };
    let b = &mut next.subtasks[0].0;
    let r = catch_unwind(AssertUnwindSafe(|| b.register_value(&panicky)));
    assert!(r.is_err(), "the conversion panicked");
    let want: Vec<Option<Count>> = before.iter().map(|v| v.map(count)).collect();
    match read_values(&mut next, &keys, &value_v2()) {
        Err(e) => assert!(e.contains("value"), "{e}"),
        Ok(values) => {
            let snapshot = next.subtasks[0]
                .0
                .snapshot(SnapshotOptions::incremental_checkpoint(2));
            if snapshot.is_ok() {
                assert_eq!(values, want, "a snapshot was allowed of part of the state");
            }
        }
    }
}

/// The old program restoring the new program's checkpoint is refused naming both schemas,
/// for every kind of state.
fn the_old_program_cannot_read_the_new_checkpoint<F: BackendFactory>(f: &F) {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 20);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_operator(&mut op, &keys, 1);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    fill_operator_v2(&mut next, &keys, 2);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let mut old = Operator::restore(f, &m2, "op", 1, &storage.source(2));
    let b = &mut old.subtasks[0].0;
    let errors = [
        b.register_value(&value_desc()).map(|_| ()),
        b.register_list(&list_desc()).map(|_| ()),
        b.register_map(&map_desc()).map(|_| ()),
        b.register_reducing(&reducing_desc()).map(|_| ()),
        b.register_aggregating(&aggregating_desc()).map(|_| ()),
        b.register_value(&windowed_desc()).map(|_| ()),
    ];
    for (e, new) in errors.into_iter().zip([
        "Count@v2",
        "Tagged@v1",
        "Labelled@v1",
        "Total@v2",
        "SumCountMax@v1",
        "Count@v2",
    ]) {
        let e = e.unwrap_err().to_string();
        assert!(e.contains("uid=op") || e.contains("operator op"), "{e}");
        assert!(e.contains(new), "{new} in {e}");
    }
}

/// Map, reducing and aggregating states with a TTL migrate their values keeping their
/// stamps; reducing and aggregating go on adding to the converted value (under the
/// changelog backend through its accumulator wrapping too).
fn ttl_map_reducing_and_aggregating_migrate<F: BackendFactory>(f: &F) {
    use std::time::Duration;
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 30);
    let clock = Arc::new(ManualClock::new(50_000));
    let ttl = StateTtlConfig::new(Duration::from_secs(10)).with_clock(clock.clone());
    let mut op = Operator::new(f, "op", MAX_P, 1);
    for (i, k) in keys.iter().enumerate() {
        let i = i as u64;
        let b = op.owner(k);
        let map = b.register_map_with_ttl(&map_desc(), &ttl).unwrap();
        let red = b
            .register_reducing_with_ttl(&reducing_desc(), &ttl)
            .unwrap();
        let agg = b
            .register_aggregating_with_ttl(&aggregating_desc(), &ttl)
            .unwrap();
        set_key(b, k);
        b.ttl_map(&map).put(i as u32, format!("m{i}")).unwrap();
        b.ttl_map(&map).put(1000, "x".into()).unwrap();
        b.ttl_reducing(&red).add(i as i64).unwrap();
        b.ttl_reducing(&red).add(5).unwrap();
        b.ttl_aggregating(&agg).add(i).unwrap();
        b.ttl_aggregating(&agg).add(i + 2).unwrap();
        // Stamps 50_000 + 100 i: at 60_950 the first ten keys have expired.
        clock.advance(Duration::from_millis(100));
    }
    let m1 = checkpoint(&mut op, &storage, 1, true);
    clock.set(60_950);
    let read = |op: &mut Operator<F::Backend>, add: bool| -> Vec<String> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| {
                let b = op.owner(k);
                let map = b.register_map_with_ttl(&map_v2(), &ttl).unwrap();
                let red = b.register_reducing_with_ttl(&reducing_v2(), &ttl).unwrap();
                let agg = b
                    .register_aggregating_with_ttl(&aggregating_v2(), &ttl)
                    .unwrap();
                set_key(b, k);
                if add {
                    b.ttl_reducing(&red).add(1_000_000).unwrap();
                    b.ttl_aggregating(&agg).add(i as u64 * 10).unwrap();
                }
                let m: Vec<(u32, String)> = b
                    .ttl_map(&map)
                    .entries()
                    .unwrap()
                    .into_iter()
                    .map(|(uk, v)| {
                        assert_eq!(v.upper, v.label.to_uppercase());
                        (uk, v.label)
                    })
                    .collect();
                let r = b.ttl_reducing(&red).get().unwrap();
                let a = b.ttl_aggregating(&agg).get().unwrap();
                format!("{k}: m={m:?} r={r:?} a={a:?}")
            })
            .collect()
    };
    let want: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let i = i as u64;
            if i < 10 {
                format!("{k}: m=[] r=None a=None")
            } else {
                let mut m = vec![(i as u32, format!("m{i}")), (1000, "x".to_string())];
                m.sort();
                format!(
                    "{k}: m={m:?} r=Some({}) a=Some({})",
                    i as i128 + 5,
                    (2 * i + 2) / 2
                )
            }
        })
        .collect();
    let mut next = Operator::restore(f, &m1, "op", 1, &storage.source(1));
    assert_eq!(read(&mut next, false), want);
    // Adding after the migration reduces / aggregates onto the converted values (expired
    // ones start over).
    let added = read(&mut next, true);
    for (i, line) in added.iter().enumerate() {
        let i = i as u64;
        let r = if i < 10 {
            1_000_000
        } else {
            i as i128 + 5 + 1_000_000
        };
        assert!(line.contains(&format!("r=Some({r})")), "{line}");
        // Average2: the sum over the count (i and i + 2 before, 10 i added).
        let (sum, n) = if i < 10 { (i * 10, 1) } else { (12 * i + 2, 3) };
        let a = sum / n;
        assert!(line.contains(&format!("a=Some({a})")), "{line}");
    }
    let m2 = checkpoint(&mut next, &storage, 2, true);
    let mut again = Operator::restore(f, &m2, "op", 2, &storage.source(2));
    assert_eq!(read(&mut again, false), added);
}

macro_rules! hunt {
    ($module:ident, $factory:expr; $($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod $module {
            use super::*;
            $(
                #[test]
                $(#[$attr])*
                fn $name() {
                    super::$name(&$factory);
                }
            )*
        }
    };
}

macro_rules! hunt_all {
    ($($name:ident),* $(,)?) => {
        hunt!(hashmap, common::factories::HashMapFactory; $($name,)*
            renamed_then_alias_dropped,
            a_panicking_conversion_does_not_leave_part_of_the_state,
        );
        hunt!(rocksdb, common::factories::RocksDbFactory::new(); $($name,)*
            renamed_then_alias_dropped,
            a_panicking_conversion_does_not_leave_part_of_the_state,
        );
        hunt!(changelog_hashmap,
            common::factories::ChangelogFactory::new(common::factories::HashMapFactory);
            $($name,)*
            renamed_then_alias_dropped,
            a_panicking_conversion_does_not_leave_part_of_the_state,
        );
        hunt!(changelog_rocksdb,
            common::factories::ChangelogFactory::new(common::factories::RocksDbFactory::new());
            $($name,)*
            renamed_then_alias_dropped,
            a_panicking_conversion_does_not_leave_part_of_the_state,
        );
    };
}

hunt_all!(
    partly_migrated_checkpoint_rescaled_is_refused_not_wrong,
    registering_again_in_the_same_run,
    each_value_is_converted_once,
    checkpoint_in_flight_across_the_migration,
    three_versions_over_three_programs,
    emptied_states_migrate,
    the_old_program_cannot_read_the_new_checkpoint,
    ttl_map_reducing_and_aggregating_migrate,
);

// ---------------------------------------------------------------------------------------
// Operator list state
// ---------------------------------------------------------------------------------------

fn offsets_v2(mode: Redistribution) -> OperatorListStateDescriptor<(u64, bool)> {
    OperatorListStateDescriptor {
        name: if mode == Redistribution::Split {
            "offsets".into()
        } else {
            "seen".into()
        },
        codec: Arc::new(
            EvolvingCodec::new(BincodeCodec::<(u64, bool)>::named("Offset", 2))
                .migrates_from(BincodeCodec::<u64>::new(), |o: u64| {
                    (o, o.is_multiple_of(2))
                }),
        ),
        mode,
    }
}

/// One subtask's operator state of the old program: split `offsets` and union `seen`.
fn old_operator_state(offsets: &[u64], seen: &[u64]) -> Vec<OperatorStateSnapshot> {
    let mut b = OperatorStateBackend::new("op");
    let o = b
        .register_list(&OperatorListStateDescriptor::<u64>::split("offsets"))
        .unwrap();
    b.list(o).unwrap().extend_from_slice(offsets);
    let s = b
        .register_list(&OperatorListStateDescriptor::<u64>::union("seen"))
        .unwrap();
    b.list(s).unwrap().extend_from_slice(seen);
    b.snapshot().unwrap()
}

/// Split and union operator state migrate at every parallelism: split elements are dealt
/// out once each, every subtask gets the whole union, all converted; the new program's
/// snapshot rescales again and reads as is.
#[test]
fn operator_list_state_migrates_through_split_and_union_redistribution() {
    let old = vec![
        old_operator_state(&[1, 2, 3], &[10]),
        old_operator_state(&[4, 5], &[11, 12]),
    ];
    let conv = |o: u64| (o, o.is_multiple_of(2));
    for p in [1, 2, 3] {
        let parts = redistribute("op", &old, p).unwrap();
        let mut split = Vec::new();
        let mut snapshots = Vec::new();
        for part in parts {
            let mut b = OperatorStateBackend::new("op");
            b.restore(part).unwrap();
            let o = b.register_list(&offsets_v2(Redistribution::Split)).unwrap();
            split.extend(b.list(o).unwrap().iter().copied());
            let s = b.register_list(&offsets_v2(Redistribution::Union)).unwrap();
            let mut seen = b.list(s).unwrap().clone();
            seen.sort();
            assert_eq!(seen, [conv(10), conv(11), conv(12)], "p={p}");
            let snap = b.snapshot().unwrap();
            assert!(
                snap.iter().all(|s| s.codec.type_name == "Offset"),
                "{snap:?}"
            );
            snapshots.push(snap);
        }
        split.sort();
        assert_eq!(split, (1..=5).map(conv).collect::<Vec<_>>(), "p={p}");
        // Again at 2, by a program with the new codec only.
        let plain = |mode| OperatorListStateDescriptor::<(u64, bool)> {
            codec: Arc::new(BincodeCodec::<(u64, bool)>::named("Offset", 2)),
            ..offsets_v2(mode)
        };
        let mut again = Vec::new();
        for part in redistribute("op", &snapshots, 2).unwrap() {
            let mut b = OperatorStateBackend::new("op");
            b.restore(part).unwrap();
            let o = b.register_list(&plain(Redistribution::Split)).unwrap();
            again.extend(b.list(o).unwrap().iter().copied());
        }
        again.sort();
        assert_eq!(again, (1..=5).map(conv).collect::<Vec<_>>(), "p={p}");
    }
}

/// An operator state that one subtask registered (and so migrated) and another did not
/// (it carries the old schema): the snapshot has two codecs for the state. At the same
/// parallelism each subtask reads its own elements under its own identity, as keyed state
/// does; today every restore of it, even at the same parallelism, is refused.
#[test]
fn operator_state_migrated_in_one_subtask_restores_at_the_same_parallelism() {
    let old = vec![
        old_operator_state(&[1, 2, 3], &[10]),
        old_operator_state(&[4, 5], &[11]),
    ];
    let parts = redistribute("op", &old, 2).unwrap();
    let mut next = Vec::new();
    for (i, part) in parts.into_iter().enumerate() {
        let mut b = OperatorStateBackend::new("op");
        b.restore(part).unwrap();
        if i == 0 {
            b.register_list(&offsets_v2(Redistribution::Split)).unwrap();
        }
        next.push(b.snapshot().unwrap());
    }
    let parts = redistribute("op", &next, 2).expect("the same parallelism restores");
    let mut all = Vec::new();
    for part in parts {
        let mut b = OperatorStateBackend::new("op");
        b.restore(part).unwrap();
        let o = b.register_list(&offsets_v2(Redistribution::Split)).unwrap();
        all.extend(b.list(o).unwrap().iter().copied());
    }
    all.sort();
    assert_eq!(
        all,
        (1..=5)
            .map(|o: u64| (o, o.is_multiple_of(2)))
            .collect::<Vec<_>>()
    );
}

/// Pinned: such a snapshot is refused (not read under the wrong identity), naming the
/// operator and the state.
#[test]
fn operator_state_migrated_in_one_subtask_is_refused_not_misread() {
    let old = vec![
        old_operator_state(&[1, 2, 3], &[10]),
        old_operator_state(&[4, 5], &[11]),
    ];
    let mut next = Vec::new();
    for (i, part) in redistribute("op", &old, 2).unwrap().into_iter().enumerate() {
        let mut b = OperatorStateBackend::new("op");
        b.restore(part).unwrap();
        if i == 1 {
            b.register_list(&offsets_v2(Redistribution::Split)).unwrap();
        }
        next.push(b.snapshot().unwrap());
    }
    for p in [1, 2, 3] {
        match redistribute("op", &next, p) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("offsets") && e.contains("op"), "{e}");
            }
            Ok(parts) => {
                let mut all = Vec::new();
                for part in parts {
                    let mut b = OperatorStateBackend::new("op");
                    b.restore(part).unwrap();
                    let o = b.register_list(&offsets_v2(Redistribution::Split)).unwrap();
                    all.extend(b.list(o).unwrap().iter().copied());
                }
                all.sort();
                assert_eq!(
                    all,
                    (1..=5)
                        .map(|o: u64| (o, o.is_multiple_of(2)))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}

/// A refused element names the operator, the state and the element; nothing of the state
/// is registered and the snapshot still carries the old elements.
#[test]
fn operator_state_refused_conversion_names_it_and_changes_nothing() {
    let snap = old_operator_state(&[1, 2, 3], &[10]);
    let mut b = OperatorStateBackend::new("op");
    b.restore(snap.clone()).unwrap();
    let refusing =
        OperatorListStateDescriptor::<(u64, bool)> {
            codec: Arc::new(
                EvolvingCodec::new(BincodeCodec::<(u64, bool)>::named("Offset", 2))
                    .try_migrates_from(BincodeCodec::<u64>::new(), |o: u64| {
                        if o == 2 {
                            Err("two is reserved".to_string())
                        } else {
                            Ok((o, false))
                        }
                    }),
            ),
            ..offsets_v2(Redistribution::Split)
        };
    let e = b.register_list(&refusing).unwrap_err().to_string();
    for part in [
        "uid=op",
        "offsets",
        "element=1",
        "two is reserved",
        "u64@v1",
    ] {
        assert!(e.contains(part), "{part} in {e}");
    }
    assert_eq!(b.snapshot().unwrap(), snap);
}

// ---------------------------------------------------------------------------------------
// Codecs
// ---------------------------------------------------------------------------------------

/// `reads_as_is` of an identity in another encoding does not read it (the documented
/// rule); an alias equal to the current identity is harmless; an evolving codec whose
/// current codec evolves too reads every schema of both histories.
#[test]
fn evolving_codec_edge_cases() {
    let u64_id = BincodeCodec::<u64>::new().identity().clone();
    let mut json = u64_id.clone();
    json.encoding = "json".into();
    let c = EvolvingCodec::new(BincodeCodec::<u64>::named("Counter", 1)).reads_as_is(json.clone());
    assert_eq!(c.compatibility(&json), Compatibility::Incompatible);
    assert!(c.decode_from(&json, b"7").is_err());

    let current = BincodeCodec::<u64>::named("Counter", 1).identity().clone();
    let c = EvolvingCodec::new(BincodeCodec::<u64>::named("Counter", 1))
        .reads_as_is(current.clone())
        .reads_as_is(u64_id.clone());
    assert_eq!(c.compatibility(&current), Compatibility::AsIs);
    assert_eq!(c.compatibility(&u64_id), Compatibility::AsIs);

    // Count@v3 → current Count@v2-evolving (reads u64) ; plus an older u32 schema.
    let nested = EvolvingCodec::new(count_v2_codec())
        .migrates_from(BincodeCodec::<u32>::new(), |n: u32| count(u64::from(n)));
    let u32_id = BincodeCodec::<u32>::new().identity().clone();
    let v2_id = BincodeCodec::<Count>::named("Count", 2).identity().clone();
    assert_eq!(nested.identity(), &v2_id);
    assert_eq!(nested.compatibility(&v2_id), Compatibility::AsIs);
    assert_eq!(nested.compatibility(&u64_id), Compatibility::AfterMigration);
    assert_eq!(nested.compatibility(&u32_id), Compatibility::AfterMigration);
    let from_u64 = BincodeCodec::<u64>::new().encode_to_vec(&4).unwrap();
    let from_u32 = BincodeCodec::<u32>::new().encode_to_vec(&5).unwrap();
    assert_eq!(nested.decode_from(&u64_id, &from_u64).unwrap(), count(4));
    assert_eq!(nested.decode_from(&u32_id, &from_u32).unwrap(), count(5));

    // A TTL state's codec over an evolving one: the stamp stays, the value converts; the
    // same type without a TTL (or the reverse) is incompatible.
    let ttl = TtlCodec::new(Arc::new(count_v2_codec()) as CodecRef<Count>);
    let old_ttl = TtlCodec::new(Arc::new(BincodeCodec::<u64>::new()) as CodecRef<u64>);
    let bytes = old_ttl
        .encode_to_vec(&TtlValue {
            stamped_ms: 1234,
            value: 9,
        })
        .unwrap();
    assert_eq!(
        ttl.compatibility(old_ttl.identity()),
        Compatibility::AfterMigration
    );
    let v = ttl.decode_from(old_ttl.identity(), &bytes).unwrap();
    assert_eq!((v.stamped_ms, v.value), (1234, count(9)));
    assert_eq!(ttl.compatibility(&u64_id), Compatibility::Incompatible);
    assert_eq!(
        count_v2_codec().compatibility(old_ttl.identity()),
        Compatibility::Incompatible
    );
}

// ---------------------------------------------------------------------------------------
// RocksDB native savepoints
// ---------------------------------------------------------------------------------------

/// A native RocksDB savepoint taken right after the migration holds the new schema only:
/// RocksDB restores it at another parallelism, the old program is refused, and the heap
/// refuses it naming the way out (a canonical savepoint or `state-dump convert`).
#[test]
fn rocksdb_native_savepoint_right_after_the_migration() {
    let f = common::factories::RocksDbFactory::new();
    let storage = CheckpointStorage::open("memory://").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_operator(&mut op, &keys, 1);
    let before = read_operator(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let mut next = Operator::restore(&f, &m1, "op", 2, &storage.source(1));
    assert_eq!(read_operator_v2(&mut next, &keys), before);
    let url = dir.path().join("native").display().to_string();
    let pending = cairn_storage::snapshot_operator(
        "op",
        MAX_P,
        next.subtasks
            .iter_mut()
            .map(|(b, o)| cairn_storage::SubtaskRef {
                keyed: Some(b),
                operator: o,
            }),
        SnapshotOptions::savepoint_as(2, SavepointFormat::Native),
    )
    .unwrap();
    cairn_storage::write_savepoint(&url, 2, vec![pending]).unwrap();
    let (m, source) = cairn_storage::open_savepoint(&url).unwrap();
    assert!(m.operator("op").unwrap().subtasks.iter().all(|s| matches!(
        s.keyed.as_ref().map(|h| &h.data),
        Some(KeyedData::RocksNative { .. })
    )));
    for (state, t) in stored_types(&m) {
        let new = [
            "Count@v2",
            "Tagged@v1",
            "Labelled@v1",
            "Total@v2",
            "SumCountMax@v1",
        ];
        assert!(new.iter().any(|n| t.starts_with(n)), "{state}: {t}");
    }
    let mut three = Operator::restore(&f, &m, "op", 3, &source);
    assert_eq!(read_operator_v2(&mut three, &keys), before);
    let mut old = Operator::restore(&f, &m, "op", 1, &source);
    assert!(old.subtasks[0].0.register_value(&value_desc()).is_err());
    let heap = common::factories::HashMapFactory;
    let e = try_restore(&heap, &m, 1, &source)
        .err()
        .expect("the heap refuses it");
    assert!(
        e.contains("state-dump convert") && e.contains("uid=op"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// The changelog backend: a rename read as is
// ---------------------------------------------------------------------------------------

/// The renaming program at parallelism 2 under the changelog backend; subtask 0
/// materializes once more after the registration (as a busier subtask does on its own).
/// Found by the hunt: its checkpoint's materialization named the new identity while
/// subtask 1's still named the old one, so the renaming program could not restore its own
/// checkpoint at another parallelism. A rename now re-materializes like a migration.
fn changelog_rename_rematerialized_in_one_subtask_then_rescaled<F: BackendFactory>(inner: F) {
    let f = common::factories::ChangelogFactory::new(inner);
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    let before = fill_values(&mut op, &keys);
    let m1 = checkpoint(&mut op, &storage, 1, false);
    let mut next = Operator::restore(&f, &m1, "op", 2, &storage.source(1));
    assert_eq!(
        read_values(&mut next, &keys, &renamed_value()),
        Ok(before.clone())
    );
    // The materializations started at the restore complete; subtask 0 then materializes
    // once more, and that one completes too.
    let settle = |b: &mut cairn_changelog::ChangelogBackend<F::Backend>| {
        let started = std::time::Instant::now();
        while b.is_materializing() {
            assert!(started.elapsed() < std::time::Duration::from_secs(20));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    };
    for (b, _) in &mut next.subtasks {
        settle(b);
    }
    next.subtasks[0].0.materialize_now().unwrap();
    settle(&mut next.subtasks[0].0);
    let m2 = checkpoint(&mut next, &storage, 2, true);
    assert_eq!(
        every_identity_of(&m2, "value"),
        ["Counter@v1 (bincode1-fixint-le)"],
        "every materialization a checkpoint uses after the rename names the new identity"
    );
    for p in [2, 1] {
        let mut again = try_restore(&f, &m2, p, &storage.source(2))
            .unwrap_or_else(|e| panic!("restore at parallelism {p}: {e}"));
        assert_eq!(
            read_values(&mut again, &keys, &renamed_value()),
            Ok(before.clone()),
            "p={p}"
        );
    }
}

#[test]
fn changelog_hashmap_rename_rematerialized_in_one_subtask_then_rescaled() {
    changelog_rename_rematerialized_in_one_subtask_then_rescaled(common::factories::HashMapFactory);
}
