//! Where each restart after a failure restored from (`JobResult::restarts_restored_from`),
//! as Flink logs "Restoring job … from Checkpoint N" at each restart: the checkpoint that
//! completed before the failure; nothing when none had (the run starts over); before the
//! job's first checkpoint, the savepoint it started from.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Job, JobConfig, JobGraph, ProcessFunction, RestartStrategy,
    RestoreFrom, RuntimeError,
};

/// Records of each job (20,000 a second: half a second a run).
const RECORDS: u64 = 10_000;

/// When [`FailOnce`] fails: once per job, in its first run.
#[derive(Clone, Copy, Debug)]
enum When {
    Never,
    /// At the first record.
    FirstRecord,
    /// At the first record after it was notified of a completed checkpoint.
    AfterCheckpoint,
}

/// What [`FailOnce`] saw, over every run of the job.
#[derive(Debug, Default)]
struct Seen {
    /// The checkpoints it was notified of as completed.
    completed: Vec<u64>,
    /// Once it failed: the newest checkpoint completed before (`Some(None)`: none).
    failed_after: Option<Option<u64>>,
}

/// Passes records on and fails once, [`When`] told.
#[derive(Clone, Debug)]
struct FailOnce {
    when: When,
    seen: Arc<Mutex<Seen>>,
    /// This instance was notified of a completed checkpoint.
    notified: bool,
}

impl FailOnce {
    fn new(when: When) -> Self {
        Self {
            when,
            seen: Arc::default(),
            notified: false,
        }
    }

    /// The newest checkpoint completed before the failure (`Some(None)`: none), once it
    /// failed.
    fn failed_after(&self) -> Option<Option<u64>> {
        self.seen.lock().expect("seen").failed_after
    }
}

impl Checkpointed for FailOnce {
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> cairn_runtime::Result<()> {
        self.seen
            .lock()
            .expect("seen")
            .completed
            .push(checkpoint_id);
        self.notified = true;
        Ok(())
    }
}

impl ProcessFunction<u64, u64> for FailOnce {
    fn process(&mut self, record: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        let due = match self.when {
            When::Never => false,
            When::FirstRecord => true,
            When::AfterCheckpoint => self.notified,
        };
        {
            let mut seen = self.seen.lock().expect("seen");
            if due && seen.failed_after.is_none() {
                seen.failed_after = Some(seen.completed.iter().max().copied());
                return Err(RuntimeError::user("fail", "injected failure"));
            }
        }
        out.collect(record)
    }
}

/// source → fail → key_by → sum → discard, at parallelism 1 (one [`FailOnce`]).
fn graph(fail: FailOnce, generator: GeneratorSource) -> JobGraph {
    source("source", generator)
        .process("fail", fail)
        .key_by(|k: &u64| *k)
        .sum("sum")
        .sink("sink", DiscardSink)
}

/// Checkpoints every `interval`, at most one restart. The minimum pause keeps a second
/// checkpoint from being triggered in the run that fails: the checkpoint a restart restores
/// is the one [`FailOnce`] was notified of.
fn job_config(dir: &std::path::Path, interval: Option<Duration>) -> JobConfig {
    let mut cfg = common::config(dir, 20);
    cfg.checkpoint.interval = interval;
    cfg.checkpoint.min_pause = Duration::from_secs(10);
    cfg.restart = RestartStrategy::fixed_delay(1, Duration::from_millis(10));
    cfg.records_per_second = Some(20_000);
    cfg
}

/// A failure after a checkpoint completed: the restart restored that checkpoint, and says
/// so in the format of `restored_from`.
#[test]
fn a_restart_after_a_checkpoint_reports_that_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = job_config(dir.path(), Some(Duration::from_millis(20)));
    let checkpoint_dir = cfg.checkpoint_dir.clone();
    let fail = FailOnce::new(When::AfterCheckpoint);
    let result = Job::new(
        graph(fail.clone(), GeneratorSource::new(RECORDS, 100, 7)),
        cfg,
    )
    .run()
    .expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert_eq!(result.restored_from, None, "{result:?}");
    let Some(Some(id)) = fail.failed_after() else {
        panic!("no failure after a checkpoint: {:?}", fail.seen);
    };
    assert_eq!(
        result.restarts_restored_from,
        [Some(format!("checkpoint {id} in {checkpoint_dir}"))],
        "{result:?}"
    );
}

/// A failure before any checkpoint completed, with checkpointing on (an hour apart) or off:
/// the restart restored nothing and started over.
#[test]
fn a_restart_before_any_checkpoint_reports_starting_over() {
    for interval in [Some(Duration::from_secs(3600)), None] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = job_config(dir.path(), interval);
        let fail = FailOnce::new(When::FirstRecord);
        let result = Job::new(
            graph(fail.clone(), GeneratorSource::new(RECORDS, 100, 7)),
            cfg,
        )
        .run()
        .expect("job");
        assert_eq!(result.restarts, 1, "{interval:?}: {result:?}");
        assert_eq!(fail.failed_after(), Some(None), "{interval:?}");
        assert_eq!(
            result.restarts_restored_from,
            [None],
            "{interval:?}: {result:?}"
        );
        // It read the input to the end after starting over.
        assert!(result.records >= RECORDS, "{interval:?}: {result:?}");
    }
}

/// A job restored from a savepoint that fails before its first checkpoint restarts from
/// that savepoint again (as Flink does), not from the beginning.
#[test]
fn a_restart_before_the_first_checkpoint_restores_the_savepoint_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = job_config(dir.path(), Some(Duration::from_millis(20)));
    let generator = GeneratorSource::new(RECORDS, 100, 7).idle_at_end();
    let handle = Job::new(graph(FailOnce::new(When::Never), generator), cfg)
        .start()
        .expect("start");
    let started = Instant::now();
    while handle.records_read() < RECORDS / 4 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first job read too little"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    handle.wait().expect("first job");

    let mut cfg = job_config(dir.path(), Some(Duration::from_secs(3600)));
    cfg.checkpoint_dir = dir.path().join("checkpoints-2").display().to_string();
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    let fail = FailOnce::new(When::FirstRecord);
    let result = Job::new(
        graph(fail.clone(), GeneratorSource::new(RECORDS, 100, 7)),
        cfg,
    )
    .run()
    .expect("second job");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert_eq!(fail.failed_after(), Some(None));
    let from = Some(format!("savepoint {savepoint}"));
    assert_eq!(result.restored_from, from, "{result:?}");
    assert_eq!(result.restarts_restored_from, [from], "{result:?}");
}
