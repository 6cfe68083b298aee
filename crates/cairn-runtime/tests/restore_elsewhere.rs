//! A job restored from a checkpoint of another checkpoint directory (another job's, or a
//! copy): its checkpoints go to its own directory and must not depend on the one it was
//! restored from, which may be deleted (Flink's default restore mode, no claim). Before,
//! RocksDB's incremental checkpoints referenced the restored SST files as if the new
//! directory held them: every checkpoint failed ("file not found") until the restarts ran out.

mod common;

use std::path::Path;

use cairn_runtime::{
    CheckpointRetention, Job, JobResult, RestoreFrom, SnapshotMode, StateBackendConfig,
};
use common::*;

fn case(backend: StateBackendConfig, mode: SnapshotMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 23);
    let output = dir.path().join("out");
    // Runs the word count checkpointing into `checkpoints`; with `cancel`, cancels it (keeping
    // its checkpoints) once it has read 1000 more lines and completed a checkpoint (two
    // when restored), or after 20 s if it stopped early.
    let run = |restore: Option<RestoreFrom>, checkpoints: &Path, cancel: bool| -> JobResult {
        let mut cfg = config(dir.path(), 30);
        cfg.backend = backend.clone();
        cfg.checkpoint.snapshot_mode = mode;
        cfg.checkpoint_dir = checkpoints.display().to_string();
        cfg.records_per_second = Some(4000);
        cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
        // Two of its own when restored: it must checkpoint again after its first.
        let checkpoints_before_cancel = if restore.is_some() { 2 } else { 1 };
        cfg.restore = restore;
        let handle = Job::new(wordcount(&input, &output, None, None), cfg)
            .start()
            .expect("start");
        if cancel {
            cancel_after_checkpoints(handle, 1000, checkpoints, checkpoints_before_cancel)
        } else {
            handle.wait()
        }
        .expect("run")
    };
    let first_dir = dir.path().join("first");
    let own_dir = dir.path().join("own");
    let first = run(None, &first_dir, true);
    assert!(first.cancelled, "{first:?}");
    let storage = cairn_storage::CheckpointStorage::open(&first_dir.display().to_string())
        .expect("open the first directory");
    let newest = storage
        .completed_checkpoints()
        .expect("list")
        .into_iter()
        .max()
        .expect("the first run completed a checkpoint");
    drop(storage);
    let path = first_dir
        .join(format!("chk-{newest}"))
        .display()
        .to_string();
    let second = run(Some(RestoreFrom::Path(path)), &own_dir, true);
    assert!(
        second.cancelled && second.checkpoints_completed >= 2 && second.checkpoints_failed == 0,
        "{second:?}"
    );
    // The second job's checkpoints stand alone.
    std::fs::remove_dir_all(&first_dir).expect("delete the first directory");
    let third = run(Some(RestoreFrom::Latest), &own_dir, false);
    assert!(third.restored_from.is_some(), "{third:?}");
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn hashmap_incremental() {
    case(StateBackendConfig::HashMap, SnapshotMode::Incremental);
}

#[test]
fn rocksdb_incremental() {
    case(StateBackendConfig::rocksdb(), SnapshotMode::Incremental);
}

#[test]
fn hashmap_changelog() {
    case(StateBackendConfig::HashMap, SnapshotMode::Changelog);
}

#[test]
fn rocksdb_changelog() {
    case(StateBackendConfig::rocksdb(), SnapshotMode::Changelog);
}

#[test]
fn rocksdb_full() {
    case(StateBackendConfig::rocksdb(), SnapshotMode::Full);
}

/// Checkpoints only one kind of backend restores (a native RocksDB one; a changelog one)
/// restored under another are refused with what to do instead (a savepoint, or
/// `state-dump convert`), before any output is touched.
#[test]
fn checkpoints_of_another_backend_are_refused_with_the_way_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 3000, 300, 29);
    let cases = [
        (
            StateBackendConfig::rocksdb(),
            SnapshotMode::Incremental,
            StateBackendConfig::HashMap,
            SnapshotMode::Incremental,
            "a native RocksDB snapshot (an incremental checkpoint or a native savepoint) restores only under the rocksdb backend",
        ),
        (
            StateBackendConfig::HashMap,
            SnapshotMode::Changelog,
            StateBackendConfig::rocksdb(),
            SnapshotMode::Incremental,
            "a changelog checkpoint restores only under a changelog backend",
        ),
        (
            StateBackendConfig::rocksdb(),
            SnapshotMode::Changelog,
            StateBackendConfig::HashMap,
            SnapshotMode::Full,
            "a changelog checkpoint restores only under a changelog backend",
        ),
    ];
    for (i, (backend, mode, other, other_mode, what)) in cases.into_iter().enumerate() {
        let job_dir = dir.path().join(format!("job{i}"));
        let output = job_dir.join("out");
        let mut cfg = config(&job_dir, 20);
        cfg.backend = backend;
        cfg.checkpoint.snapshot_mode = mode;
        cfg.records_per_second = Some(6000);
        cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
        let handle = Job::new(wordcount(&input, &output, None, None), cfg.clone())
            .start()
            .expect("start");
        let first = cancel_after_checkpoints(handle, 600, &job_dir.join("checkpoints"), 1)
            .expect("first run");
        assert!(first.checkpoints_completed > 0, "{first:?}");
        let committed = read_output(&output);

        cfg.backend = other;
        cfg.checkpoint.snapshot_mode = other_mode;
        cfg.restore = Some(RestoreFrom::Latest);
        let err = Job::new(wordcount(&input, &output, None, None), cfg)
            .run()
            .expect_err("a checkpoint of another backend");
        let msg = err.to_string();
        assert!(
            msg.contains(what) && msg.contains("state-dump convert") && msg.contains("uid=count"),
            "{msg}"
        );
        assert_eq!(read_output(&output), committed, "case {i}");
    }
}
