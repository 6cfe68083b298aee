//! The word count (incremental and changelog snapshots, both backends) checkpoints to and restores from an S3 API server (moto, started by
//! `scripts/moto.sh start`; `.ci/run` does it) through a fault-injecting object store that
//! fails some writes (5% at random, and the fifth put): failed checkpoints are declined and tolerated, task failures restart
//! the job from its latest checkpoint on S3, and the output stays exactly once. Without a
//! server the test prints that it is skipped, unless `CI=true`, where it fails.

mod common;
#[path = "../../state-dump/tests/support/moto.rs"]
mod moto;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::{ChangelogOptions, Job, RestoreFrom, SnapshotMode, StateBackendConfig};
use cairn_storage::fault::{FaultyObjectStore, OpKind};
use cairn_storage::CheckpointStorage;
use common::*;

fn wordcount_on_s3(backend: StateBackendConfig, mode: SnapshotMode, tag: &str) {
    let Some(m) = moto::moto(tag) else { return };
    let bucket = m.bucket(tag);
    let url = format!("s3://{bucket}/wordcount");
    let faults: Arc<Mutex<Option<Arc<FaultyObjectStore>>>> = Arc::default();
    let keep = faults.clone();
    let storage = CheckpointStorage::open_wrapped(&url, move |inner| {
        let f = Arc::new(FaultyObjectStore::new(inner));
        f.fail_writes_with_probability(0.05, 7);
        // And surely one checkpoint file.
        f.fail_nth(OpKind::Put, 5);
        if let Ok(mut k) = keep.lock() {
            *k = Some(f.clone());
        }
        f
    })
    .expect("open s3 storage");

    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 31);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.checkpoint_dir = url.clone();
    cfg.checkpoint_storage = Some(storage);
    cfg.checkpoint.tolerable_failures = 1000;
    cfg.parallelism = 2;
    cfg.backend = backend.clone();
    cfg.checkpoint.snapshot_mode = mode;
    cfg.checkpoint.changelog = ChangelogOptions {
        materialization_interval: Some(Duration::from_millis(100)),
        min_log_bytes: 0,
        segment_bytes: 4 << 10,
        ..ChangelogOptions::default()
    };
    cfg.records_per_second = Some(6000);
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    let fail = FailAt::at(vec![3000, 7000]);
    let result = Job::new(wordcount(&input, &output, Some(fail), None), cfg.clone())
        .run()
        .expect("job on s3");
    let injected = faults
        .lock()
        .ok()
        .and_then(|f| f.as_ref().map(|f| f.writes()))
        .unwrap_or(0);
    eprintln!("{tag}: {result:?}, {injected} writes through the fault store");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    // A changelog checkpoint rarely fails: a log segment or materialization whose upload
    // failed in the background is uploaded again, or replaced by the next one.
    assert!(
        result.checkpoints_failed > 0 || mode == SnapshotMode::Changelog,
        "no write fault hit a checkpoint: {result:?}"
    );
    check_exactly_once(&expected, &read_output(&output));

    // A new job restores the final checkpoint from the bucket (no faults now): it has
    // nothing left to read, and the output stays as it is.
    let mut cfg = cfg;
    cfg.checkpoint_storage = None;
    cfg.restore = Some(RestoreFrom::Latest);
    let again = Job::new(wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("restore from s3");
    assert!(
        again
            .restored_from
            .as_deref()
            .is_some_and(|r| r.contains(&url)),
        "{again:?}"
    );
    assert_eq!(again.records, 0, "{again:?}");
    check_exactly_once(&expected, &read_output(&output));

    // Both jobs have ended: every checkpoint left in the bucket reads back whole. Files no
    // checkpoint references may stay only where a delete failed on purpose.
    let storage = CheckpointStorage::open(&url).expect("open s3 storage");
    let completed = storage.completed_checkpoints().expect("list");
    assert!(!completed.is_empty());
    for id in completed {
        storage
            .verify(id)
            .expect("a checkpoint left on s3 reads back");
    }
    let plan = storage.gc_plan(usize::MAX).expect("gc plan");
    assert!(plan.corrupt.is_empty(), "{plan:?}");
}

#[test]
fn wordcount_on_s3_with_faults_hashmap() {
    wordcount_on_s3(
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
        "wc-hashmap",
    );
}

#[test]
fn wordcount_on_s3_with_faults_rocksdb() {
    wordcount_on_s3(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        "wc-rocksdb",
    );
}

#[test]
fn wordcount_on_s3_with_faults_changelog_hashmap() {
    wordcount_on_s3(
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
        "wc-cl-hashmap",
    );
}

#[test]
fn wordcount_on_s3_with_faults_changelog_rocksdb() {
    wordcount_on_s3(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
        "wc-cl-rocksdb",
    );
}
