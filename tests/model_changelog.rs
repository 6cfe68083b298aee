//! Model-based tests of the changelog backend over both backends.
//!
//! - The shared model test, unchanged, with segments and materializations written by the
//!   checkpoints (`with_checkpoint_uploads`).
//! - A fault model: background uploads to the job's storage through a
//!   `FaultyObjectStore`; random operations, checkpoints and retention, and a process crash
//!   at a random write (often between or in the middle of segment uploads). After the crash
//!   a new process restores the latest completed checkpoint, at a random parallelism, and
//!   must see exactly the model as of that checkpoint; then it goes on.
//!
//! `CAIRN_MODEL_CASES=N` runs more cases.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_storage::fault::{CrashPoint, FaultyObjectStore};
use cairn_storage::CheckpointStorage;
use common::conformance::read_operator;
use common::harness::{BackendFactory, Operator};
use common::model::{apply, op_strategy, Model, Op};
use proptest::prelude::*;

mod hashmap {
    use super::common;
    crate::model_tests!(common::factories::ChangelogFactory::new(
        common::factories::HashMapFactory
    ));
}

mod rocksdb {
    use super::common;
    crate::model_tests!(common::factories::ChangelogFactory::new(
        common::factories::RocksDbFactory::new()
    ));
}

const MAX_P: u32 = 16;
const KEYS: usize = 12;

/// A changelog factory over `inner` that uploads to `storage` in the background.
struct Uploading<'a, F> {
    inner: &'a F,
    storage: CheckpointStorage,
}

impl<F: BackendFactory> BackendFactory for Uploading<'_, F> {
    type Backend = cairn_changelog::ChangelogBackend<F::Backend>;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> Self::Backend {
        let mut config = cairn_changelog::ChangelogConfig::new(
            uid,
            common::schema::key_codec().identity().clone(),
        );
        config.options.segment_bytes = 300;
        config.options.min_log_bytes = 2000;
        config.options.log_to_state_ratio = 0.5;
        config.options.materialization_interval = None;
        // Every hand-off after the first waits for the background thread (backpressure
        // on each chunk, through uploads, materializations, checkpoints and restores).
        config.options.max_in_flight_bytes = 1;
        cairn_changelog::ChangelogBackend::new(
            self.inner.create(uid, max_parallelism, range),
            config,
            Arc::new(self.storage.clone()),
        )
    }
}

/// Both phases of every subtask, then publish; any error aborts the checkpoint.
fn try_checkpoint<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    storage: &CheckpointStorage,
    id: u64,
) -> Result<(), String> {
    let writer = storage.begin_checkpoint(id).map_err(|e| e.to_string())?;
    let options = SnapshotOptions::incremental_checkpoint(id);
    let mut phases = Vec::new();
    for (b, o) in &mut op.subtasks {
        let p = b.snapshot(options).map_err(|e| e.to_string())?;
        phases.push((p, o.snapshot().map_err(|e| e.to_string())?));
    }
    let p = op.parallelism();
    let mut subtasks = Vec::new();
    for (i, (phase, operator_state)) in phases.into_iter().enumerate() {
        let handle = phase
            .run(&writer, &CancelToken::new())
            .map_err(|e| e.to_string())?;
        assert!(
            matches!(handle.data, KeyedData::Changelog { .. }),
            "incremental checkpoints of a changelog backend are changelog handles"
        );
        subtasks.push(SubtaskManifest {
            key_group_range: KeyGroupRange::for_subtask(op.max_parallelism, p, i as u32).unwrap(),
            keyed: Some(handle),
            operator_state,
        });
    }
    let m = Manifest {
        checkpoint_id: id,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: id,
        operators: vec![OperatorManifest {
            uid: op.uid.clone(),
            parallelism: p,
            max_parallelism: op.max_parallelism,
            subtasks,
        }],
    };
    storage.publish(writer, &m).map_err(|e| e.to_string())?;
    op.notify_complete(id);
    Ok(())
}

/// The expected state: the data operations replayed on a fresh heap backend.
fn expected(data: &[Op], keys: &[String]) -> Vec<String> {
    let f = common::factories::HashMapFactory;
    let mut reference = Operator::new(&f, "model", MAX_P, 1);
    let mut model = Model::new();
    for o in data {
        apply(&mut reference, &mut model, keys, o);
    }
    read_operator(&mut reference, keys)
}

/// Runs `ops` with background uploads; the store crashes at write `crash_at` (if that many
/// writes happen), after which a new process restores the latest completed checkpoint.
fn run_with_crash<F: BackendFactory>(inner: &F, ops: &[Op], crash_at: u64, point: CrashPoint) {
    let mem: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyObjectStore::new(mem.clone()));
    faulty.crash_at_write(crash_at, point);
    let prefix = object_store::path::Path::from("job");
    let mut storage = CheckpointStorage::from_store(faulty.clone(), prefix.clone()).unwrap();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key-{i}")).collect();
    let mut factory = Uploading {
        inner,
        storage: storage.clone(),
    };
    let mut op = Operator::new(&factory, "model", MAX_P, 1);
    let mut model = Model::new();
    // The data operations behind the current state, and behind each checkpoint attempt (a
    // publish that fails after its manifest write, crash point "after write", may still
    // have completed the checkpoint).
    let mut data: Vec<Op> = Vec::new();
    let mut attempted: BTreeMap<u64, Vec<Op>> = BTreeMap::new();
    let mut next_id = 1u64;
    let mut crashed = false;
    for (step, o) in ops.iter().enumerate() {
        if !crashed && faulty.is_crashed() {
            // The process dies: everything in memory is lost. A new process restores the
            // latest completed checkpoint from the (uncrashed) store.
            crashed = true;
            drop(op);
            storage = CheckpointStorage::from_store(mem.clone(), prefix.clone()).unwrap();
            factory = Uploading {
                inner,
                storage: storage.clone(),
            };
            match storage.latest_completed().unwrap() {
                Some(latest) => {
                    let id = latest.checkpoint_id;
                    let p = 1 + (step as u32 % 3);
                    op = Operator::restore(&factory, &latest, "model", p, &storage.source(id));
                    data = attempted[&id].clone();
                }
                None => {
                    op = Operator::new(&factory, "model", MAX_P, 1);
                    data.clear();
                }
            }
            next_id = storage.next_checkpoint_id().unwrap();
            assert_eq!(
                read_operator(&mut op, &keys),
                expected(&data, &keys),
                "after the crash before step {step}"
            );
        }
        match o {
            Op::Checkpoint { .. } | Op::FailedCheckpoint => {
                attempted.insert(next_id, data.clone());
                if try_checkpoint(&mut op, &storage, next_id).is_err() {
                    op.notify_aborted(next_id);
                    let _ = storage.abort(next_id);
                }
                next_id += 1;
            }
            Op::CrashAndRestore { .. } => {}
            Op::Retain(n) => {
                let _ = storage.retain(*n);
            }
            d => {
                apply(&mut op, &mut model, &keys, d);
                data.push(d.clone());
            }
        }
        assert_eq!(
            read_operator(&mut op, &keys),
            expected(&data, &keys),
            "after step {step}: {o:?}"
        );
    }
    // Every retained checkpoint verifies and restores to the model as of it.
    let storage = CheckpointStorage::from_store(mem, prefix).unwrap();
    for id in storage.completed_checkpoints().unwrap() {
        let m = storage.verify(id).unwrap();
        let mut r = Operator::restore(&factory, &m, "model", 2, &storage.source(id));
        assert_eq!(
            read_operator(&mut r, &keys),
            expected(&attempted[&id], &keys),
            "checkpoint {id}"
        );
    }
}

fn cases() -> u32 {
    std::env::var("CAIRN_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn hashmap_with_crash_between_segment_writes(
        ops in proptest::collection::vec(op_strategy(), 1..80),
        crash_at in 1u64..60,
        applied in any::<bool>(),
    ) {
        let point = if applied { CrashPoint::AfterWrite } else { CrashPoint::BeforeWrite };
        run_with_crash(&common::factories::HashMapFactory, &ops, crash_at, point);
    }

    #[test]
    fn rocksdb_with_crash_between_segment_writes(
        ops in proptest::collection::vec(op_strategy(), 1..60),
        crash_at in 1u64..60,
        applied in any::<bool>(),
    ) {
        let point = if applied { CrashPoint::AfterWrite } else { CrashPoint::BeforeWrite };
        run_with_crash(&common::factories::RocksDbFactory::new(), &ops, crash_at, point);
    }
}
