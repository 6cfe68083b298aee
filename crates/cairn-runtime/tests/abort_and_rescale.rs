//! The generator source restores at another parallelism (its `(next, stride)` splits are
//! dealt round-robin) and every record is counted exactly once across the restore.
//!
//! The barrier handling of aborted checkpoints is tested on one input task in `task.rs`
//! (a job cannot make an abort arrive before a barrier on purpose). A checkpoint in flight
//! when the input ends is subsumed by the final checkpoint.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_runtime::functions::Count;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointRetention, Job, JobConfig, JobGraph, RestoreFrom, SnapshotMode,
    FINISHED_STATE,
};
use cairn_storage::fault::FaultyObjectStore;
use cairn_storage::CheckpointStorage;
use common::{check_exactly_once, config, count_sink, read_output, HookedGenerator};

const TOTAL: u64 = 8000;
const KEYS: u64 = 300;
const SEED: u64 = 23;

fn generator() -> GeneratorSource {
    GeneratorSource::new(TOTAL, KEYS, SEED)
}

/// generator → key_by → count → two-phase file sink (`key\tcount` lines).
fn graph(output: &Path) -> JobGraph {
    source("source", generator())
        .key_by(|k: &u64| *k)
        .process("count", Count::<u64, u64>::new())
        .sink("sink", count_sink(output))
}

/// How often each key occurs in records 0..TOTAL.
fn expected() -> BTreeMap<String, u64> {
    let g = generator();
    let mut counts = BTreeMap::new();
    for n in 0..TOTAL {
        *counts.entry(g.key_of(n).to_string()).or_insert(0) += 1;
    }
    counts
}

/// A throttled run at `parallelism`, its checkpoints in their own directory.
fn job_config(dir: &Path, run: &str, parallelism: u32) -> JobConfig {
    let mut cfg = config(dir, 50);
    cfg.parallelism = parallelism;
    cfg.records_per_second = Some(10_000);
    cfg.checkpoint_dir = dir.join(run).display().to_string();
    cfg
}

/// Runs at `old` parallelism, stops with a savepoint part-way, restores at `new`
/// parallelism and runs to the end: the sources read every record once over both runs, and
/// the committed counts are exactly once.
fn savepoint_then_rescale(old: u32, new: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let handle = Job::new(graph(&output), job_config(dir.path(), "first", old))
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    assert!(
        first.records > 0 && first.records < TOTAL,
        "the first run should stop part-way: {first:?}"
    );

    let mut cfg = job_config(dir.path(), "second", new);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    let second = Job::new(graph(&output), cfg).run().expect("second run");
    assert_eq!(
        second.restored_from.as_deref(),
        Some(format!("savepoint {savepoint}").as_str())
    );
    // The sources stop at the savepoint's barrier: the second run reads exactly the rest.
    assert_eq!(
        first.records + second.records,
        TOTAL,
        "first: {first:?}\nsecond: {second:?}"
    );
    check_exactly_once(&expected(), &read_output(&output));
}

#[test]
fn generator_restores_a_savepoint_of_parallelism_1_at_3() {
    savepoint_then_rescale(1, 3);
}

#[test]
fn generator_restores_a_savepoint_of_parallelism_3_at_2() {
    savepoint_then_rescale(3, 2);
}

#[test]
fn generator_restores_a_checkpoint_of_parallelism_3_at_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = job_config(dir.path(), "checkpoints", 3);
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(graph(&output), cfg.clone())
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(400));
    handle.cancel();
    let first = handle.wait().expect("first run");
    assert!(first.cancelled, "{first:?}");
    assert!(first.checkpoints_completed > 0, "{first:?}");
    assert!(first.records < TOTAL, "{first:?}");

    cfg.parallelism = 2;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph(&output), cfg).run().expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    check_exactly_once(&expected(), &read_output(&output));
}

/// The input ends while checkpoint 1 is in flight (its writes take 300 ms each). The final
/// checkpoint is triggered as soon as every task has finished, and checkpoint 1 is given up:
/// it counts as subsumed (not failed), its directory is gone, and the final checkpoint is
/// the only one left. That checkpoint marks every operator finished and holds no keyed
/// state. The committed output is exactly once.
fn input_ends_during_a_checkpoint(mode: SnapshotMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("checkpoints");
    std::fs::create_dir_all(&checkpoints).expect("checkpoint dir");
    let storage = CheckpointStorage::open_wrapped(&checkpoints.display().to_string(), |inner| {
        let slow = Arc::new(FaultyObjectStore::new(inner));
        slow.set_latency(Some(Duration::from_millis(300)));
        slow
    })
    .expect("open storage");
    let mut cfg = job_config(dir.path(), "checkpoints", 1);
    cfg.checkpoint_storage = Some(storage.clone());
    cfg.checkpoint.snapshot_mode = mode;
    cfg.checkpoint.num_retained = 1;
    // The input ends right after the first checkpoint's barrier passed the source, while
    // that checkpoint is still being written.
    let ends = HookedGenerator::new(generator()).end_at_first_snapshot();
    let graph = source("source", ends)
        .key_by(|k: &u64| *k)
        .process("count", Count::<u64, u64>::new())
        .sink("sink", count_sink(&output));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.checkpoints_failed, 0, "{result:?}");
    assert_eq!(
        storage
            .scan()
            .expect("scan")
            .iter()
            .map(|(id, _)| *id)
            .collect::<Vec<_>>(),
        vec![2],
        "only the final checkpoint's directory is left"
    );
    assert_eq!(storage.completed_checkpoints().expect("list"), vec![2]);
    let manifest = storage.load(2).expect("final manifest");
    for op in &manifest.operators {
        for (i, s) in op.subtasks.iter().enumerate() {
            assert!(
                s.keyed.is_none(),
                "{} subtask {i} keeps keyed state",
                op.uid
            );
            assert!(
                s.operator_state.iter().any(|o| o.name == FINISHED_STATE),
                "{} subtask {i} is not marked finished",
                op.uid
            );
        }
    }
    assert_eq!(manifest.operators.len(), 3);
    let g = generator();
    let mut counts = BTreeMap::new();
    for n in 0..result.records {
        *counts.entry(g.key_of(n).to_string()).or_insert(0) += 1;
    }
    assert!(result.records > 0 && result.records < TOTAL, "{result:?}");
    check_exactly_once(&counts, &read_output(&output));
    assert_eq!(
        (result.checkpoints_subsumed, result.checkpoints_completed),
        (1, 1),
        "{result:?}"
    );
}

#[test]
fn final_checkpoint_of_full_snapshots_subsumes_the_checkpoint_in_flight() {
    input_ends_during_a_checkpoint(SnapshotMode::Full);
}

#[test]
fn final_checkpoint_of_incremental_snapshots_subsumes_the_checkpoint_in_flight() {
    input_ends_during_a_checkpoint(SnapshotMode::Incremental);
}

#[test]
fn final_checkpoint_of_changelog_snapshots_subsumes_the_checkpoint_in_flight() {
    input_ends_during_a_checkpoint(SnapshotMode::Changelog);
}
