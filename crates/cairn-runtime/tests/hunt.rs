//! Checkpoint coordinator options and restarts through the library API, as an experienced
//! Flink user sets them: one module per bug found by a helper's hunt.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobConfig, ProcessFunction, RestartStrategy,
    RuntimeError, Sink, SnapshotContext,
};

/// A job configuration in `dir`, checkpointing every 10 ms, sources throttled.
fn config(dir: &Path, records_per_second: u64) -> JobConfig {
    let mut c = JobConfig {
        checkpoint_dir: dir.join("checkpoints").display().to_string(),
        savepoint_dir: Some(dir.join("savepoints").display().to_string()),
        records_per_second: Some(records_per_second),
        restart: RestartStrategy::fixed_delay(3, Duration::from_millis(10)),
        ..JobConfig::default()
    };
    c.checkpoint.interval = Some(Duration::from_millis(10));
    c
}

/// What a hook saw, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Snapshot(u64),
    /// Completed or aborted: the checkpoint is over.
    Over(u64),
}

/// Passes records on and records its checkpoint hooks.
#[derive(Clone)]
struct Watch(Arc<Mutex<Vec<Seen>>>);

impl Checkpointed for Watch {
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        if !ctx.is_savepoint {
            self.0
                .lock()
                .unwrap()
                .push(Seen::Snapshot(ctx.checkpoint_id));
        }
        Ok(())
    }
    fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.0.lock().unwrap().push(Seen::Over(id));
        Ok(())
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.0.lock().unwrap().push(Seen::Over(id));
        Ok(())
    }
}

impl ProcessFunction<u64, u64> for Watch {
    fn process(&mut self, input: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(input)
    }
}

/// A sink whose synchronous phase takes `0` (every checkpoint is slow to complete).
#[derive(Clone)]
struct SlowSnapshot(Duration);

impl Checkpointed for SlowSnapshot {
    fn snapshot_state(&mut self, _: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        std::thread::sleep(self.0);
        Ok(())
    }
}

impl<T> Sink<T> for SlowSnapshot {
    fn write(&mut self, _: T) -> cairn_runtime::Result<()> {
        Ok(())
    }
}

/// A minimum pause between checkpoints means one checkpoint at a time (Flink: "when this is
/// set, maxConcurrentCheckpoints is forced to 1"): the pause runs from the end of the last
/// checkpoint, so the next may not start while one is in flight. With `max_concurrent` 3 the
/// coordinator triggered checkpoints 2 and 3 while 1 was still running (the pause was only
/// checked against the last *completed* checkpoint, and there was none yet).
mod min_pause {
    use super::*;

    #[test]
    fn allows_one_checkpoint_in_flight_whatever_max_concurrent_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 5_000);
        config.checkpoint.min_pause = Duration::from_millis(20);
        config.checkpoint.max_concurrent = 3;
        config.checkpoint.tolerable_failures = 100;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let graph = source("source", GeneratorSource::new(2_500, 20, 3))
            .process("watch", Watch(seen.clone()))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", SlowSnapshot(Duration::from_millis(120)));
        let result = Job::new(graph, config).run().expect("job");
        let seen = seen.lock().unwrap().clone();
        // The source task gets the completion of checkpoint n before the trigger of n + 1
        // (one event lane, in the coordinator's order).
        let mut open: Option<u64> = None;
        for s in &seen {
            match *s {
                Seen::Snapshot(id) => {
                    assert!(
                        open.is_none(),
                        "checkpoint {id} started while {open:?} was in flight: {seen:?}"
                    );
                    open = Some(id);
                }
                Seen::Over(id) => {
                    if open == Some(id) {
                        open = None;
                    }
                }
            }
        }
        assert!(result.checkpoints_completed >= 2, "{result:?}");
    }
}

/// A job cancelled while it waits to restart (the restart strategy's pause) ends cancelled
/// then, as Flink cancels a restarting job. The cancellation waited in the coordinator's
/// queue until the pause was over and the next run had started (its tasks built and their
/// state restored): a long pause (an exponential delay's minute) held `cancel` that long.
mod cancel_during_the_restart_pause {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Fails at its first record in the first run; records the runs it was made for.
    #[derive(Clone)]
    struct FailsOnce {
        runs: Arc<Mutex<Vec<u32>>>,
        failed: Arc<AtomicBool>,
        attempt: u32,
    }

    impl Checkpointed for FailsOnce {
        fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            self.attempt = ctx.subtask.attempt;
            self.runs.lock().unwrap().push(ctx.subtask.attempt);
            Ok(())
        }
    }

    impl ProcessFunction<u64, u64> for FailsOnce {
        fn process(&mut self, x: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
            if self.attempt == 0 {
                self.failed.store(true, Ordering::SeqCst);
                return Err(RuntimeError::user("fails", "once"));
            }
            out.collect(x)
        }
    }

    #[test]
    fn ends_the_job_without_another_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 1_000);
        config.restart = RestartStrategy::fixed_delay(3, Duration::from_secs(4));
        let f = FailsOnce {
            runs: Arc::new(Mutex::new(Vec::new())),
            failed: Arc::new(AtomicBool::new(false)),
            attempt: 0,
        };
        let graph = source("source", GeneratorSource::new(1_000_000, 20, 3))
            .process("fails", f.clone())
            .sink("sink", DiscardSink);
        let handle = Job::new(graph, config).start().expect("start");
        let started = Instant::now();
        while !f.failed.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The failure reaches the driver, which then pauses 4 s before restarting.
        std::thread::sleep(Duration::from_millis(200));
        handle.cancel();
        let result = handle.wait().expect("cancelled job");
        assert!(result.cancelled, "{result:?}");
        assert_eq!(*f.runs.lock().unwrap(), vec![0], "{result:?}");
        assert_eq!(result.restarts, 0, "{result:?}");
    }
}

/// Checkpoints start once every task is running (Flink triggers none before: "not all
/// required tasks are currently running", which does not count as a failed checkpoint).
/// They were triggered from the run's start, so a task slow to start (state to restore)
/// made them time out and count against the tolerated failures: the job failed over, the
/// restart was as slow, and it failed for good although no running task ever failed a
/// checkpoint.
mod checkpoints_while_a_task_starts {
    use super::*;

    /// A sink that takes `0` to initialize (a long restore).
    #[derive(Clone)]
    struct SlowStart(Duration);

    impl Checkpointed for SlowStart {
        fn initialize_state(&mut self, _: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            std::thread::sleep(self.0);
            Ok(())
        }
    }

    impl<T> Sink<T> for SlowStart {
        fn write(&mut self, _: T) -> cairn_runtime::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn are_not_triggered_and_do_not_fail_the_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 20_000);
        config.checkpoint.timeout = Duration::from_millis(300);
        config.checkpoint.tolerable_failures = 0;
        let graph = source("source", GeneratorSource::new(2_000, 20, 3))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", SlowStart(Duration::from_millis(900)));
        let result = Job::new(graph, config).run().expect("job");
        assert!(result.checkpoints_completed >= 1, "{result:?}");
    }
}

/// Failed checkpoints count in a row across a restart that a failed task caused, as in
/// Flink (its `CheckpointFailureManager` clears the count only when a checkpoint completes
/// or when the count itself fails the job over). The count started again at every restart,
/// so a job whose checkpoints kept timing out never reached its tolerated number as long as
/// tasks failed in between.
mod failed_checkpoints_in_a_row {
    use super::*;

    /// A sink whose `n`th synchronous phase (counted across restarts) takes longer than the
    /// checkpoint timeout for every `n` in `slow`, and fails its task after the one at
    /// `fail_after`.
    #[derive(Clone)]
    struct Scripted {
        calls: Arc<Mutex<usize>>,
        slow: Vec<usize>,
        fail_after: usize,
    }

    impl Checkpointed for Scripted {
        fn snapshot_state(&mut self, _: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
            let n = {
                let mut calls = self.calls.lock().unwrap();
                *calls += 1;
                *calls - 1
            };
            if self.slow.contains(&n) {
                std::thread::sleep(Duration::from_millis(350));
            }
            if n == self.fail_after {
                return Err(RuntimeError::User {
                    uid: "sink".into(),
                    message: "the sink fails".into(),
                });
            }
            Ok(())
        }
    }

    impl<T> Sink<T> for Scripted {
        fn write(&mut self, _: T) -> cairn_runtime::Result<()> {
            Ok(())
        }
    }

    /// Two checkpoints time out (2 tolerated), the sink's task fails, and after the restart
    /// the first checkpoint times out again: the third in a row fails the job over. Then
    /// checkpoints complete and the job finishes.
    #[test]
    fn go_on_across_a_task_failure_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 10_000);
        // A slow phase outlasts its checkpoint but not the next one's trigger: each one
        // times out exactly one checkpoint.
        config.checkpoint.interval = Some(Duration::from_millis(300));
        config.checkpoint.timeout = Duration::from_millis(200);
        config.checkpoint.tolerable_failures = 2;
        let sink = Scripted {
            calls: Arc::new(Mutex::new(0)),
            slow: vec![0, 1, 2],
            fail_after: 1,
        };
        let graph = source("source", GeneratorSource::new(15_000, 20, 3))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", sink);
        let result = Job::new(graph, config).run().expect("job");
        // The task failure, then the third timeout in a row (the count restarted at the
        // first restart, so that timeout was tolerated and the job restarted once).
        assert_eq!(result.restarts, 2, "{result:?}");
        assert_eq!(result.checkpoints_failed, 3, "{result:?}");
        assert!(result.checkpoints_completed >= 1, "{result:?}");
    }
}

/// Flink's failure-rate restart strategy: a job restarts as long as its failures stay under
/// the rate (here at most one per 100 ms, restarting 250 ms later: four failures restart
/// four times), and fails once one failure too many falls within the interval.
mod failure_rate_restarts {
    use super::*;

    /// Fails at its first record in the runs (attempts) below `failing_runs`.
    #[derive(Clone)]
    struct FailsEarlyRuns {
        failing_runs: u32,
        attempt: u32,
    }

    impl Checkpointed for FailsEarlyRuns {
        fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            self.attempt = ctx.subtask.attempt;
            Ok(())
        }
    }

    impl ProcessFunction<u64, u64> for FailsEarlyRuns {
        fn process(&mut self, x: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
            if self.attempt < self.failing_runs {
                return Err(RuntimeError::user("fails", "early runs"));
            }
            out.collect(x)
        }
    }

    fn job(
        dir: &Path,
        strategy: RestartStrategy,
    ) -> cairn_runtime::Result<cairn_runtime::JobResult> {
        let mut config = config(dir, 20_000);
        config.restart = strategy;
        let f = FailsEarlyRuns {
            failing_runs: 4,
            attempt: 0,
        };
        let graph = source("source", GeneratorSource::new(2_000, 20, 3))
            .process("fails", f)
            .sink("sink", DiscardSink);
        Job::new(graph, config).run()
    }

    #[test]
    fn restart_while_failures_lie_apart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let strategy = RestartStrategy::failure_rate(
            1,
            Duration::from_millis(100),
            Duration::from_millis(250),
        );
        let result = job(dir.path(), strategy).expect("failures one per 250 ms");
        assert_eq!(result.restarts, 4, "{result:?}");
        assert_eq!(result.records, 2_000, "{result:?}");
    }

    #[test]
    fn fail_the_job_at_one_failure_too_many_within_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let strategy =
            RestartStrategy::failure_rate(2, Duration::from_secs(60), Duration::from_millis(10));
        match job(dir.path(), strategy) {
            Err(RuntimeError::RestartsExhausted { restarts: 2, last }) => {
                assert!(last.to_string().contains("early runs"), "{last}");
            }
            other => panic!("expected the third failure to fail the job: {other:?}"),
        }
    }
}

/// Heap incremental checkpoints overlapping (`max_concurrent` > 1, storage slower than the
/// interval) all complete. Checkpoint n + 2, based on n, referenced n's file for the key
/// groups clean since n; n + 1, begun before n completed and so based on n - 1, did not;
/// when n + 1 completed, retention (one retained) deleted n's file, and n + 2's publish
/// failed with a missing file, at nearly every checkpoint (fixed in `cairn-hashmap`: the
/// delta declares the base files it keeps while a checkpoint of another base is pending).
mod overlapping_incremental_checkpoints {
    use super::*;
    use cairn_runtime::SnapshotMode;
    use cairn_storage::fault::FaultyObjectStore;
    use cairn_storage::CheckpointStorage;

    #[test]
    fn complete_under_the_heap_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config(dir.path(), 4_000);
        let storage = CheckpointStorage::open_wrapped(&config.checkpoint_dir, |inner| {
            let f = FaultyObjectStore::new(inner);
            f.set_latency(Some(Duration::from_millis(4)));
            Arc::new(f)
        })
        .expect("storage");
        config.checkpoint_storage = Some(storage);
        let c = &mut config.checkpoint;
        c.interval = Some(Duration::from_millis(5));
        c.max_concurrent = 3;
        c.num_retained = 1;
        c.snapshot_mode = SnapshotMode::Incremental;
        c.tolerable_failures = 1_000;
        // Few records per checkpoint: most key groups stay clean, so deltas reference
        // their base.
        let graph = source("source", GeneratorSource::new(3_000, 500, 11))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", DiscardSink);
        let result = Job::new(graph, config).run().expect("job");
        assert!(result.checkpoints_completed >= 10, "{result:?}");
        assert_eq!(result.checkpoints_failed, 0, "{result:?}");
    }
}
