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
    // its checkpoints) once it has read 1000 more lines, or after 10 s if it stopped early.
    let run = |restore: Option<RestoreFrom>, checkpoints: &Path, cancel: bool| -> JobResult {
        let mut cfg = config(dir.path(), 30);
        cfg.backend = backend.clone();
        cfg.checkpoint.snapshot_mode = mode;
        cfg.checkpoint_dir = checkpoints.display().to_string();
        cfg.records_per_second = Some(4000);
        cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
        cfg.restore = restore;
        let handle = Job::new(wordcount(&input, &output, None, None), cfg)
            .start()
            .expect("start");
        if cancel {
            cancel_after(handle, 1000)
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
