//! Checkpoint statistics end to end: counts, the latest completed, failed, savepoint and
//! restored snapshots, and the history with each task's part, checked against what the
//! job's result says it did.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::stats::{CheckpointStats, CheckpointStatus, SnapshotKind};
use cairn_runtime::{source, Job, JobConfig, JobResult, RestoreFrom};
use cairn_storage::fault::FaultyObjectStore;
use cairn_storage::CheckpointStorage;
use common::Collect;

const TOTAL: u64 = 3_000;

fn graph(delay: Duration) -> cairn_runtime::JobGraph {
    let keyed = source("source", GeneratorSource::new(TOTAL, 300, 46))
        .parallelism(1)
        .key_by(|v: &u64| v % 13)
        .reduce("sum", |a, b| a + b);
    let slowed = if delay.is_zero() {
        keyed
    } else {
        keyed.map("slow", move |r: (u64, u64)| {
            std::thread::sleep(delay);
            r
        })
    };
    slowed.sink("sink", Collect(Arc::new(Mutex::new(Vec::new()))))
}

fn config(dir: &std::path::Path) -> JobConfig {
    let mut cfg = common::config(dir, 25);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(6_000);
    cfg
}

/// The counts and latest entries agree with the job's result, and every completed entry
/// in the history has every task's part.
fn check_against_result(s: &CheckpointStats, r: &JobResult, tasks: usize) {
    let c = &s.counts;
    assert_eq!(c.completed, r.checkpoints_completed, "{c:?}");
    assert_eq!(c.failed, r.checkpoints_failed, "{c:?}");
    assert_eq!(c.discarded, r.checkpoints_subsumed, "{c:?}");
    assert_eq!(c.in_progress, 0);
    assert_eq!(c.total, c.completed + c.failed + c.discarded, "{c:?}");
    let latest = s.latest_completed.as_ref().expect("a completed checkpoint");
    assert_eq!(latest.checkpointed_size, r.checkpoint_bytes.last().copied());
    assert!(latest.state_size >= latest.checkpointed_size);
    let duration = latest.end_to_end_duration_ms.expect("duration");
    let recorded = *r.checkpoint_durations_ms.last().expect("durations");
    assert!(
        duration >= recorded && duration <= recorded + 100.0,
        "{duration} against {recorded}"
    );
    let ids: Vec<u64> = s.history.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert!(s.history.len() <= cairn_runtime::stats::HISTORY);
    assert_eq!(s.history.first().map(|e| e.id), Some(ids[0]));
    let summary = &s.summary.end_to_end_duration_ms;
    assert!(summary.min <= summary.avg && summary.avg <= summary.max);
    for e in &s.history {
        assert_ne!(e.status, CheckpointStatus::InProgress, "the job ended");
        if e.status != CheckpointStatus::Completed || e.kind != SnapshotKind::Checkpoint {
            continue;
        }
        assert_eq!(
            (e.num_subtasks, e.acknowledged_subtasks),
            (tasks, tasks),
            "{e:?}"
        );
        assert_eq!(e.subtasks.len(), tasks);
        let end = e.end_to_end_duration_ms.expect("duration");
        for t in &e.subtasks {
            let ack = t.ack_ms.expect("acknowledged");
            assert!(ack <= end + 1.0, "{t:?} after the end {end}");
            assert!(t.sync_ms <= ack && t.start_delay_ms <= ack, "{t:?}");
            assert!(t.async_ms.is_some(), "{t:?}");
            if t.task == "source" {
                assert_eq!(t.alignment_ms, 0.0, "a source does not align");
            }
        }
        let mut names: Vec<(String, u32)> = e
            .subtasks
            .iter()
            .map(|t| (t.task.clone(), t.subtask))
            .collect();
        names.sort();
        let mut expected = vec![("source".to_string(), 0)];
        expected.extend((0..(tasks as u32 - 1)).map(|i| ("sum".to_string(), i)));
        assert_eq!(names, expected);
    }
}

/// A run with periodic checkpoints and a savepoint taken while it runs; then a job
/// restored from that savepoint says so.
#[test]
fn checkpoints_and_a_savepoint_of_a_running_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = Job::new(graph(Duration::ZERO), config(dir.path()))
        .start()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while job.checkpoints_completed() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let live = job.checkpoint_stats();
    assert!(live.counts.completed >= 2, "{:?}", live.counts);
    let path = job.trigger_savepoint(None).expect("savepoint");
    let r = job.wait().expect("job");
    let s = &r.checkpoint_stats;
    check_against_result(s, &r, 3);
    let sp = s.latest_savepoint.as_ref().expect("the savepoint");
    assert_eq!(sp.kind, SnapshotKind::Savepoint);
    assert_eq!(sp.external_path.as_deref(), Some(path.as_str()));
    assert_eq!(sp.acknowledged_subtasks, 3);
    assert!(sp.state_size.is_some_and(|b| b > 0));
    assert!(s.latest_restored.is_none());
    assert_eq!(s.counts.restored, 0);
    let latest = s.latest_completed.as_ref().expect("latest");
    assert_eq!(
        latest
            .external_path
            .as_deref()
            .map(|p| p.ends_with(&format!("chk-{}", latest.id))),
        Some(true)
    );

    let mut cfg = config(dir.path());
    cfg.restore = Some(RestoreFrom::Path(path.clone()));
    let r = Job::new(graph(Duration::ZERO), cfg)
        .run()
        .expect("restored job");
    let restored = r
        .checkpoint_stats
        .latest_restored
        .as_ref()
        .expect("restored");
    assert_eq!(Some(&restored.description), r.restored_from.as_ref());
    assert_eq!(r.checkpoint_stats.counts.restored, 1);
}

/// A backpressured job's unaligned checkpoints store in-flight records: entries say so,
/// per task too, and their persisted records add up to the result's.
#[test]
fn unaligned_checkpoints_are_marked_with_their_persisted_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.checkpoint.unaligned = true;
    cfg.batch_size = 4;
    cfg.channel_capacity = 2;
    cfg.records_per_second = None;
    cfg.checkpoint.num_retained = 1;
    let r = Job::new(graph(Duration::from_micros(300)), cfg)
        .run()
        .expect("job");
    let s = &r.checkpoint_stats;
    check_against_result(s, &r, 3);
    assert!(
        r.inflight_records > 0,
        "backpressure left records in flight"
    );
    let completed: Vec<_> = s
        .history
        .iter()
        .filter(|e| e.status == CheckpointStatus::Completed && e.kind == SnapshotKind::Checkpoint)
        .collect();
    if completed.len() as u64 == r.checkpoints_completed {
        let persisted: u64 = completed.iter().map(|e| e.persisted_records).sum();
        assert_eq!(persisted, r.inflight_records);
    }
    let with_records = completed
        .iter()
        .find(|e| e.persisted_records > 0)
        .expect("an entry with in-flight records");
    assert!(with_records.unaligned);
    assert!(with_records
        .subtasks
        .iter()
        .any(|t| t.unaligned && t.task == "sum"));
}

/// Checkpoints whose writes fail (a third of the storage's writes fail; failures are
/// tolerated) are failed entries with the coordinator's reason; the job still ends with a
/// final checkpoint.
#[test]
fn failed_checkpoints_say_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoints = dir.path().join("checkpoints");
    std::fs::create_dir_all(&checkpoints).expect("checkpoint dir");
    let storage = CheckpointStorage::open_wrapped(&checkpoints.display().to_string(), |inner| {
        let faulty = Arc::new(FaultyObjectStore::new(inner));
        faulty.fail_writes_with_probability(0.3, 46);
        faulty
    })
    .expect("open storage");
    let mut cfg = config(dir.path());
    cfg.checkpoint_storage = Some(storage);
    cfg.checkpoint.tolerable_failures = u32::MAX;
    let r = Job::new(graph(Duration::ZERO), cfg).run().expect("job");
    let s = &r.checkpoint_stats;
    assert!(r.checkpoints_failed > 0, "{r:?}");
    assert_eq!(s.counts.failed, r.checkpoints_failed);
    let failed = s.latest_failed.as_ref().expect("latest failed");
    assert_eq!(failed.status, CheckpointStatus::Failed);
    let message = failed.failure_message.as_deref().expect("a reason");
    let reason = format!("checkpoint {}: {message}", failed.id);
    assert!(
        r.checkpoint_failure_reasons.contains(&reason) || r.checkpoint_failure_reasons.len() == 20,
        "{reason} not in {:?}",
        r.checkpoint_failure_reasons
    );
    assert!(failed.end_to_end_duration_ms.is_some());
}
