//! Exactly-once output through failures and restarts, for both backends, aligned and
//! unaligned checkpoints, parallelism 1 and 3; at-least-once never loses.

mod common;

use std::time::Duration;

use cairn_runtime::{
    ChangelogOptions, CheckpointingMode, Job, RestartStrategy, RestoreFrom, RuntimeError,
    SnapshotMode, StateBackendConfig,
};
use common::*;

struct Case {
    backend: StateBackendConfig,
    parallelism: u32,
    unaligned: bool,
    mode: CheckpointingMode,
    failures: Vec<u64>,
    snapshot: SnapshotMode,
}

fn run_case(case: Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 7);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    cfg.backend = case.backend;
    cfg.parallelism = case.parallelism;
    cfg.checkpoint.unaligned = case.unaligned;
    cfg.checkpoint.mode = case.mode;
    cfg.checkpoint.snapshot_mode = case.snapshot;
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    // Slow the source so that checkpoints complete between the failures.
    cfg.records_per_second = Some(20_000);
    let fail = FailAt::at(case.failures.clone());
    let result = Job::new(wordcount(&input, &output, Some(fail), None), cfg)
        .run()
        .expect("job");
    assert_eq!(result.restarts as usize, case.failures.len(), "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    let out = read_output(&output);
    match case.mode {
        CheckpointingMode::ExactlyOnce => check_exactly_once(&expected, &out),
        CheckpointingMode::AtLeastOnce => check_at_least_once(&expected, &out),
    }
}

fn rocksdb(dir_hint: &str) -> StateBackendConfig {
    let _ = dir_hint;
    StateBackendConfig::rocksdb()
}

#[test]
fn hashmap_aligned_p1_one_failure() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 1,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![4000],
    });
}

#[test]
fn hashmap_aligned_p3_several_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![2000, 5000, 8000],
    });
}

#[test]
fn hashmap_unaligned_p3_several_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![3000, 7000],
    });
}

#[test]
fn rocksdb_aligned_p3_one_failure() {
    run_case(Case {
        backend: rocksdb("aligned"),
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![5000],
    });
}

#[test]
fn rocksdb_unaligned_p1_several_failures() {
    run_case(Case {
        backend: rocksdb("unaligned"),
        parallelism: 1,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![2500, 6000],
    });
}

#[test]
fn at_least_once_never_loses() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::AtLeastOnce,
        snapshot: SnapshotMode::Incremental,
        failures: vec![4000],
    });
}

#[test]
fn no_checkpointing_commits_at_the_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 500, 50, 3);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    cfg.checkpoint.interval = None;
    let result = Job::new(wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("job");
    assert_eq!(result.checkpoints_completed, 0);
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn hashmap_changelog_p3_several_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Changelog,
        failures: vec![3000, 7000],
    });
}

#[test]
fn rocksdb_changelog_unaligned_p2_one_failure() {
    run_case(Case {
        backend: rocksdb("changelog"),
        parallelism: 2,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Changelog,
        failures: vec![5000],
    });
}

#[test]
fn full_snapshots_p2_one_failure() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 2,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        snapshot: SnapshotMode::Full,
        failures: vec![4000],
    });
}

/// The most materialized parts any subtask of `count` had in any completed checkpoint
/// (those of finished tasks hold no keyed state).
fn most_materialized_parts(dir: &std::path::Path) -> usize {
    let storage =
        cairn_storage::CheckpointStorage::open(&dir.join("checkpoints").display().to_string())
            .expect("open storage");
    let mut most = 0;
    for id in storage.completed_checkpoints().expect("checkpoints") {
        let manifest = storage.verify(id).expect("a checkpoint that verifies");
        let count = manifest.operator("count").expect("count in the manifest");
        for keyed in count.subtasks.iter().filter_map(|s| s.keyed.as_ref()) {
            match &keyed.data {
                cairn_core::KeyedData::Changelog { materialized, .. } => {
                    most = most.max(materialized.len())
                }
                other => panic!("not a changelog handle: {other:?}"),
            }
        }
    }
    most
}

/// The job's changelog options reach the backends: with the defaults this small job never
/// materializes (its log stays far below 16 MiB, and it does not restore); with low size
/// thresholds it does. Exactly once holds through a failure also when every chunk of the
/// log waits for the background thread (an in-flight bound of one byte).
#[test]
fn changelog_options_reach_the_backends() {
    for (tuned, failures) in [(false, vec![]), (true, vec![]), (true, vec![4000])] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = write_input(dir.path(), 3000, 300, 7);
        let output = dir.path().join("out");
        let mut cfg = config(dir.path(), 20);
        cfg.parallelism = 2;
        cfg.checkpoint.snapshot_mode = SnapshotMode::Changelog;
        cfg.checkpoint.num_retained = 1000;
        if tuned {
            cfg.checkpoint.changelog = ChangelogOptions {
                materialization_interval: None,
                log_to_state_ratio: 0.5,
                min_log_bytes: 2000,
                segment_bytes: 1000,
                max_in_flight_bytes: 1,
                ..ChangelogOptions::default()
            };
        }
        cfg.restart.delay = Duration::from_millis(10);
        cfg.records_per_second = Some(20_000);
        let fail = FailAt::at(failures.clone());
        let result = Job::new(wordcount(&input, &output, Some(fail), None), cfg)
            .run()
            .expect("job");
        assert_eq!(result.restarts as usize, failures.len(), "{result:?}");
        check_exactly_once(&expected, &read_output(&output));
        assert!(result.checkpoints_completed > 2, "{result:?}");
        if failures.is_empty() {
            // (A restore materializes before its first checkpoint whatever the options.)
            assert_eq!(
                most_materialized_parts(dir.path()) > 0,
                tuned,
                "materialized with tuned={tuned}"
            );
        }
    }
}

/// `latest` never goes back behind a checkpoint that completed: when the newest manifest of
/// the directory is damaged, a restore from `latest` fails and says so, instead of taking
/// the checkpoint before it (whose output the sink has committed past: restoring it would
/// emit counts again). The user may restore the older one by its path.
#[test]
fn latest_with_a_damaged_newest_manifest_is_refused_not_an_older_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 37);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    cfg.records_per_second = Some(6000);
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(wordcount(&input, &output, None, None), cfg.clone())
        .start()
        .expect("start");
    let first = cancel_after(handle, 1500).expect("first run");
    assert!(
        first.cancelled && first.checkpoints_completed >= 2,
        "{first:?}"
    );

    let checkpoints = dir.path().join("checkpoints");
    let storage =
        cairn_storage::CheckpointStorage::open(&checkpoints.display().to_string()).expect("open");
    let completed = storage.completed_checkpoints().expect("list");
    let (older, newest) = match completed[..] {
        [.., a, b] => (a, b),
        _ => panic!("two checkpoints retained: {completed:?}"),
    };
    let manifest = checkpoints.join(format!("chk-{newest}")).join("_metadata");
    let mut bytes = std::fs::read(&manifest).expect("read the manifest");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&manifest, bytes).expect("damage the manifest");
    let committed = read_output(&output);

    let mut latest = cfg.clone();
    latest.restore = Some(RestoreFrom::Latest);
    let err = Job::new(wordcount(&input, &output, None, None), latest)
        .run()
        .expect_err("restoring behind the damaged checkpoint");
    let msg = err.to_string();
    assert!(
        msg.contains("newest completed checkpoint cannot be read")
            && msg.contains(&format!("chk-{newest}/_metadata")),
        "{msg}"
    );
    assert_eq!(
        read_output(&output),
        committed,
        "the refused job wrote output"
    );

    // Restoring the older checkpoint is the user's explicit choice: it finishes, and repeats
    // the counts committed after it (at least once, nothing lost).
    let mut by_path = cfg;
    by_path.restore = Some(RestoreFrom::Path(
        checkpoints
            .join(format!("chk-{older}"))
            .display()
            .to_string(),
    ));
    let second = Job::new(wordcount(&input, &output, None, None), by_path)
        .run()
        .expect("restore the older checkpoint by its path");
    assert!(second.restored_from.is_some(), "{second:?}");
    check_at_least_once(&expected, &read_output(&output));
}

/// Settings that would make a job that never gets anywhere are refused before it starts.
#[test]
fn settings_that_stall_a_job_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 10, 5, 1);
    let output = dir.path().join("out");
    let refused = |edit: &dyn Fn(&mut cairn_runtime::JobConfig), what: &str| {
        let mut cfg = config(dir.path(), 20);
        edit(&mut cfg);
        let err = Job::new(wordcount(&input, &output, None, None), cfg)
            .run()
            .expect_err(what);
        assert!(err.to_string().contains(what), "{err}");
    };
    refused(
        &|c| c.checkpoint.interval = Some(Duration::ZERO),
        "checkpoint interval must be positive",
    );
    refused(
        &|c| c.checkpoint.timeout = Duration::ZERO,
        "checkpoint timeout must be positive",
    );
    refused(
        &|c| c.records_per_second = Some(0),
        "records_per_second must be at least 1",
    );
    assert!(!output.exists(), "a refused job created its output");
}

/// A second job started on a checkpoint directory a running job writes is refused before it
/// touches anything, naming the job that holds it; the first job finishes exactly once, and
/// once it has ended the directory is free again.
#[test]
fn a_second_job_on_a_running_jobs_checkpoint_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 41);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    // Long enough for both refusals (each tries for a quarter of a second first).
    cfg.records_per_second = Some(2500);
    let first = Job::new(wordcount(&input, &output, None, None), cfg.clone())
        .start()
        .expect("start");

    let second_output = dir.path().join("out2");
    for restore in [None, Some(RestoreFrom::Latest)] {
        let mut second = cfg.clone();
        second.restore = restore;
        let err = Job::new(wordcount(&input, &second_output, None, None), second)
            .run()
            .expect_err("a second job on the same checkpoint directory");
        let msg = err.to_string();
        assert!(
            msg.contains("in use by a job: pid ")
                && msg.contains(&format!("pid {}", std::process::id()))
                && msg.contains(&dir.path().join("checkpoints").display().to_string()),
            "{msg}"
        );
    }
    assert!(!second_output.exists(), "the refused job wrote output");

    let result = first.wait().expect("the first job");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    check_exactly_once(&expected, &read_output(&output));

    // Free again: a job restoring the first one's final checkpoint finishes at once.
    let mut after = cfg;
    after.restore = Some(RestoreFrom::Latest);
    let again = Job::new(wordcount(&input, &output, None, None), after)
        .run()
        .expect("the directory is free once the job has ended");
    assert!(again.restored_from.is_some(), "{again:?}");
    check_exactly_once(&expected, &read_output(&output));
}

/// Two jobs (each with its checkpoint directory) write into one output directory at once,
/// and one of them fails and restarts: each aborts only what its own earlier runs left, so
/// both outputs are exactly once. Before, every start and restart deleted every dot-file
/// of another run, including the other job's pre-committed files, which then failed for
/// good ("a pre-committed output file is missing; its records are lost").
#[test]
fn jobs_sharing_an_output_directory_leave_each_others_files_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input_a, mut expected) = write_input(dir.path(), 3000, 300, 47);
    let input_b = dir.path().join("input-b.txt");
    let text = std::fs::read_to_string(&input_a).expect("read input");
    std::fs::write(&input_b, text.replace('w', "v")).expect("write input b");
    let b_counts: Vec<(String, u64)> = expected
        .iter()
        .map(|(w, n)| (w.replace('w', "v"), *n))
        .collect();
    expected.extend(b_counts);
    let output = dir.path().join("out");
    let job = |input: &std::path::Path, name: &str, failures: Vec<u64>| {
        let mut cfg = config(&dir.path().join(name), 20);
        cfg.records_per_second = Some(5000);
        cfg.restart.delay = Duration::from_millis(10);
        let fail = FailAt::at(failures);
        Job::new(wordcount(input, &output, Some(fail), None), cfg)
    };
    let a = job(&input_a, "a", vec![]).start().expect("start job a");
    // Job b starts, and restarts twice, while job a has pending files.
    let b = job(&input_b, "b", vec![2000, 6000])
        .start()
        .expect("start job b");
    let a = a.wait().expect("job a");
    let b = b.wait().expect("job b");
    assert_eq!((a.restarts, b.restarts), (0, 2), "{a:?} {b:?}");
    check_exactly_once(&expected, &read_output(&output));
}

/// A file source restored over an input that is not the file its snapshot read (truncated,
/// or edited so that a saved position no longer starts a line) refuses to go on, instead of
/// silently reading nothing or a line from its middle; the original input restores and
/// finishes exactly once.
#[test]
fn a_changed_input_is_refused_on_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 43);
    let original = std::fs::read(&input).expect("read input");
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    cfg.records_per_second = Some(6000);
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(wordcount(&input, &output, None, None), cfg.clone())
        .start()
        .expect("start");
    let first = cancel_after(handle, 1000).expect("first run");
    assert!(
        first.cancelled && first.checkpoints_completed > 0,
        "{first:?}"
    );

    let mut latest = cfg;
    latest.restore = Some(RestoreFrom::Latest);
    let refused = |text: &[u8], what: &str| {
        std::fs::write(&input, text).expect("change the input");
        let err = Job::new(wordcount(&input, &output, None, None), latest.clone())
            .run()
            .expect_err(what);
        let msg = err.to_string();
        assert!(
            msg.contains(what) && msg.contains("the input changed since the snapshot"),
            "{msg}"
        );
    };
    refused(&original[..10], "shorter than the restored read position");
    let shifted: Vec<u8> = [b"w0 ".as_slice(), &original].concat();
    refused(&shifted, "does not start a line");

    std::fs::write(&input, &original).expect("restore the input");
    let result = Job::new(wordcount(&input, &output, None, None), latest)
        .run()
        .expect("the original input restores");
    assert!(result.restored_from.is_some(), "{result:?}");
    check_exactly_once(&expected, &read_output(&output));
}

/// Restarts are counted since the last reset: with `reset_after`, a run that lasted that
/// long before it failed starts the count (and the growing pause) again, so a job allowed
/// one restart survives four failures that lie apart, exactly once; without a reset in
/// reach the second failure ends it.
#[test]
fn restarts_are_counted_since_the_last_long_run() {
    for reset_after in [Duration::from_millis(1), Duration::from_secs(3600)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = write_input(dir.path(), 2000, 300, 9);
        let output = dir.path().join("out");
        let mut cfg = config(dir.path(), 20);
        cfg.restart = RestartStrategy {
            max_restarts: 1,
            delay: Duration::from_millis(1),
            backoff_multiplier: 2.0,
            max_delay: Duration::from_millis(8),
            reset_after: Some(reset_after),
            failure_rate_interval: None,
        };
        cfg.records_per_second = Some(20_000);
        let failures = vec![700, 1700, 2700, 3700];
        let fail = FailAt::at(failures.clone());
        let result = Job::new(wordcount(&input, &output, Some(fail), None), cfg).run();
        if reset_after < Duration::from_secs(1) {
            let result = result.expect("a job whose failures lie apart");
            assert_eq!(result.restarts as usize, failures.len(), "{result:?}");
            check_exactly_once(&expected, &read_output(&output));
        } else {
            match result {
                Err(RuntimeError::RestartsExhausted { restarts: 1, .. }) => {}
                other => panic!("expected the second failure to end the job: {other:?}"),
            }
        }
    }
}
