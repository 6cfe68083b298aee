//! A crash during a checkpoint of real heap-backend state, injected before and after every
//! storage write (data files and manifest), never leaves a checkpoint that looks complete,
//! and the previous checkpoint still restores exactly — on memory and on local disk.

mod common;

use std::sync::Arc;

use cairn_core::{
    CancelToken, KeyGroupRange, KeyedStateBackend, SnapshotOptions, SnapshotType, StateError,
};
use cairn_storage::fault::{CrashPoint, FaultyObjectStore};
use cairn_storage::{assemble_manifest, snapshot_operator, CheckpointStorage, SubtaskRef};
use common::conformance::{checkpoint, fill, read_operator};
use common::factories::HashMapFactory;
use common::harness::Operator;
use common::schema::{keys_in, register};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

const MAX_P: u32 = 32;

/// Checkpoint `id` of `op` through the library API, returning the first error.
fn try_checkpoint(
    op: &mut Operator<cairn_hashmap::HashMapBackend>,
    storage: &CheckpointStorage,
    id: u64,
) -> Result<(), StateError> {
    let pending = snapshot_operator(
        &op.uid,
        op.max_parallelism,
        op.subtasks.iter_mut().map(|(b, o)| SubtaskRef {
            keyed: Some(b),
            operator: o,
        }),
        SnapshotOptions::incremental_checkpoint(id),
    )?;
    let writer = storage.begin_checkpoint(id)?;
    let part = pending.run(&writer, &CancelToken::new())?;
    storage.publish(
        writer,
        &assemble_manifest(id, SnapshotType::Checkpoint, vec![part]),
    )?;
    op.notify_complete(id);
    Ok(())
}

fn fill_all(op: &mut Operator<cairn_hashmap::HashMapBackend>, keys: &[String], round: u64) {
    for (b, _) in &mut op.subtasks {
        let ids = register(b);
        let mine: Vec<String> = keys
            .iter()
            .filter(|k| {
                b.key_group_range().contains(cairn_core::key_group_for_key(
                    &common::schema::key_bytes(k),
                    MAX_P,
                ))
            })
            .cloned()
            .collect();
        fill(b, &ids, &mine, round);
    }
}

/// Opens the job directory either in memory (`dir == None`) or on local disk.
fn open(
    store: &Arc<dyn ObjectStore>,
    dir: Option<&std::path::Path>,
    wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
) -> CheckpointStorage {
    match dir {
        None => CheckpointStorage::from_store(wrap(store.clone()), Path::from("job")).unwrap(),
        Some(d) => CheckpointStorage::open_wrapped(d.to_str().unwrap(), wrap).unwrap(),
    }
}

fn crash_at_every_write(dir_root: Option<&std::path::Path>) {
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 80);
    let f = HashMapFactory;
    let mut n = 1;
    let mut saw_success = false;
    while !saw_success {
        for point in [CrashPoint::BeforeWrite, CrashPoint::AfterWrite] {
            let dir = dir_root.map(|r| r.join(format!("crash-{n}-{point:?}")));
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            // Checkpoint 1 completes normally.
            let storage = open(&store, dir.as_deref(), |s| s);
            let mut op = Operator::new(&f, "op", MAX_P, 2);
            fill_all(&mut op, &keys, 1);
            checkpoint(&mut op, &storage, 1, true);
            let at_1 = read_operator(&mut op, &keys);
            // Checkpoint 2 crashes at its n-th write.
            fill_all(&mut op, &keys[..30], 2);
            let crashing = open(&store, dir.as_deref(), |s| {
                let faulty = FaultyObjectStore::new(s);
                faulty.crash_at_write(n, point);
                Arc::new(faulty)
            });
            let result = try_checkpoint(&mut op, &crashing, 2);
            let at_2 = read_operator(&mut op, &keys);
            drop(op);
            drop(crashing);
            // The process restarts over what reached the store.
            let storage = open(&store, dir.as_deref(), |s| s);
            let latest = storage
                .latest_completed()
                .unwrap()
                .expect("a completed checkpoint");
            let expected = match (&result, latest.checkpoint_id) {
                (Ok(()), 2) => {
                    saw_success = true;
                    &at_2
                }
                // A crash after the manifest landed: the checkpoint is complete and whole.
                (Err(_), 2) => {
                    assert_eq!(
                        point,
                        CrashPoint::AfterWrite,
                        "write {n}: manifest landed before the crash"
                    );
                    &at_2
                }
                (Err(_), 1) => &at_1,
                (r, id) => panic!("write {n} {point:?}: result {r:?} but latest is {id}"),
            };
            storage.verify(latest.checkpoint_id).unwrap();
            let mut restored =
                Operator::restore(&f, &latest, "op", 3, &storage.source(latest.checkpoint_id));
            assert_eq!(
                &read_operator(&mut restored, &keys),
                expected,
                "write {n} {point:?}: restored state"
            );
            // The job goes on: a new checkpoint with a fresh id completes and GC is clean.
            let id = storage.next_checkpoint_id().unwrap();
            checkpoint(&mut restored, &storage, id, true);
            storage.retain(1).unwrap();
            assert_eq!(storage.completed_checkpoints().unwrap(), vec![id]);
        }
        n += 1;
        assert!(n < 50, "checkpoint 2 never completed");
    }
    assert!(n > 3, "checkpoint 2 made only {} writes", n - 1);
}

#[test]
fn crash_during_checkpoint_in_memory() {
    crash_at_every_write(None);
}

#[test]
fn crash_during_checkpoint_on_local_disk() {
    let dir = tempfile::tempdir().unwrap();
    crash_at_every_write(Some(dir.path()));
}
