//! The library API at its edges, as a user writing a job uses it: one module per bug found
//! by a helper's hunt over the dataflow builder, restores and checkpoint hooks.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{source, Job, JobConfig, JobGraph, RestartStrategy, RestoreFrom, RuntimeError};

/// A job configuration in `dir` whose sources read 20,000 records per second.
fn throttled_config(dir: &Path) -> JobConfig {
    JobConfig {
        checkpoint_dir: dir.join("checkpoints").display().to_string(),
        savepoint_dir: Some(dir.join("savepoints").display().to_string()),
        records_per_second: Some(20_000),
        ..JobConfig::default()
    }
}

/// Runs `graph` until its sources have read `records` records, stops it with a savepoint
/// and returns the savepoint's path.
fn savepoint_after(graph: JobGraph, config: JobConfig, records: u64) -> String {
    let handle = Job::new(graph, config).start().expect("start");
    let started = std::time::Instant::now();
    while handle.records_read() < records && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    handle.wait().expect("first run");
    savepoint
}

/// What [`OnSavepointCommit`] does when the savepoint it is part of completes.
#[derive(Clone, Copy, Debug)]
enum AtCommit {
    /// The commit fails.
    Fails,
    /// The commit takes this long.
    Takes(Duration),
}

/// A sink of `(key, sum)` records whose commit of the savepoint it is part of (its
/// completion notification) fails or is slow.
#[derive(Clone, Debug)]
struct OnSavepointCommit {
    at_commit: AtCommit,
    savepoint: Option<u64>,
}

impl OnSavepointCommit {
    fn new(at_commit: AtCommit) -> Self {
        Self {
            at_commit,
            savepoint: None,
        }
    }
}

impl cairn_runtime::Checkpointed for OnSavepointCommit {
    fn snapshot_state(
        &mut self,
        ctx: &mut cairn_runtime::SnapshotContext<'_>,
    ) -> cairn_runtime::Result<()> {
        if ctx.is_savepoint {
            self.savepoint = Some(ctx.checkpoint_id);
        }
        Ok(())
    }
    fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
        if self.savepoint == Some(id) {
            match self.at_commit {
                AtCommit::Fails => return Err(RuntimeError::user("sink", "the commit failed")),
                AtCommit::Takes(d) => std::thread::sleep(d),
            }
        }
        Ok(())
    }
}

impl cairn_runtime::Sink<(u64, u64)> for OnSavepointCommit {
    fn write(&mut self, _: (u64, u64)) -> cairn_runtime::Result<()> {
        Ok(())
    }
}

/// A uid whose operator changed kind between the snapshot and the restore: the savepoint
/// holds keyed state of a keyed operator `x`, and the restored job's `x` is a `map`. The
/// keyed state was dropped without a word (the job ran on with every count lost), although
/// a snapshot with state the job does not take is an error unless non-restored state is
/// allowed. Now the restore fails and names the operator; allowing non-restored state drops
/// the keyed state as before.
mod keyed_state_of_an_operator_that_is_no_longer_keyed {
    use super::*;

    fn before() -> JobGraph {
        source("source", GeneratorSource::new(1_000_000, 100, 7))
            .key_by(|k: &u64| *k)
            .sum("x")
            .sink("sink", DiscardSink)
    }

    fn after() -> JobGraph {
        source("source", GeneratorSource::new(1_000_000, 100, 7))
            .map("x", |k: u64| (k, k))
            .sink("sink", DiscardSink)
    }

    #[test]
    fn is_refused_unless_non_restored_state_is_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let savepoint = savepoint_after(before(), throttled_config(dir.path()), 2000);
        let mut config = throttled_config(dir.path());
        config.restore = Some(RestoreFrom::Path(savepoint.clone()));
        config.restart = RestartStrategy::no_restarts();
        let handle = Job::new(after(), config.clone()).start().expect("start");
        std::thread::sleep(Duration::from_millis(300));
        handle.cancel();
        match handle.wait() {
            Err(RuntimeError::Restore { reason }) => {
                assert!(
                    reason.contains("operator x") && reason.contains("keyed state"),
                    "{reason}"
                );
                assert!(reason.contains(&savepoint), "{reason}");
            }
            other => panic!("the keyed state of x was dropped silently: {other:?}"),
        }
        config.allow_non_restored_state = true;
        let handle = Job::new(after(), config).start().expect("start");
        std::thread::sleep(Duration::from_millis(300));
        handle.cancel();
        let result = handle.wait().expect("allowed to drop the keyed state");
        assert!(result.cancelled && result.records > 0, "{result:?}");
    }
}

/// A restored keyed state registered with another value type (`sum` over `u64` restored as a
/// `reduce` over `String` under the same uid) is a restore that cannot work, but the error
/// (a state error of the operator) was taken for one a restart might cure: the job
/// restarted three times from the same savepoint before it failed ('job failed after 3
/// restarts'), whereas a changed key type failed it at once. Now a state registration that
/// contradicts the restored state fails the job at once, as a restore error.
mod a_restored_state_of_another_type {
    use super::*;

    #[test]
    fn fails_the_job_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = source("source", GeneratorSource::new(1_000_000, 100, 7))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", DiscardSink);
        let savepoint = savepoint_after(graph, throttled_config(dir.path()), 2000);
        let mut config = throttled_config(dir.path());
        config.restore = Some(RestoreFrom::Path(savepoint));
        config.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
        let graph = source("source", GeneratorSource::new(1_000_000, 100, 7))
            .map("to-string", |k: u64| k.to_string())
            .key_by(|s: &String| s.len() as u64)
            .reduce("sum", |a: String, b: String| a + &b)
            .sink("sink", DiscardSink);
        match Job::new(graph, config).run() {
            Err(RuntimeError::Restore { reason }) => assert!(
                reason.contains("operator sum")
                    && reason.contains("reduce")
                    && reason.contains("u64")
                    && reason.contains("String"),
                "{reason}"
            ),
            other => panic!("expected a restore error at once: {other:?}"),
        }
    }
}

/// In-flight records of an unaligned checkpoint are stored on the first operator after an
/// exchange (`rebalance` → `slow` here) and replayed into it on restore. A job restored with
/// `slow` no longer first after an exchange (the `rebalance` removed, so that `slow` is
/// chained to the source) never replayed them: the records were lost without a word, and
/// the output missed counts. Now such a restore fails and names the operator.
mod inflight_records_of_an_operator_no_longer_after_an_exchange {
    use super::*;
    use cairn_runtime::{CheckpointRetention, Stream};
    use common::{count_sink, read_output};

    type Count = cairn_runtime::functions::Count<u64, u64>;

    const TOTAL: u64 = 4000;

    fn generator() -> GeneratorSource {
        GeneratorSource::new(TOTAL, 50, 3)
    }

    fn rest(slow: Stream<u64>, output: &Path) -> JobGraph {
        slow.key_by(|k: &u64| *k)
            .process("count", Count::new())
            .sink("sink", count_sink(output))
    }

    #[test]
    fn are_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let output = dir.path().join("out");
        let mut config = throttled_config(dir.path());
        config.records_per_second = None;
        config.batch_size = 8;
        config.channel_capacity = 64;
        config.checkpoint.interval = Some(Duration::from_millis(30));
        config.checkpoint.unaligned = true;
        config.checkpoint.tolerable_failures = 100;
        config.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
        let delay = Duration::from_micros(300);
        let before = source("source", generator())
            .rebalance()
            .map("slow", move |k: u64| {
                std::thread::sleep(delay);
                k
            });
        let handle = Job::new(rest(before, &output), config.clone())
            .start()
            .expect("start");
        // Cancel once the latest checkpoint holds in-flight records.
        let storage =
            cairn_storage::CheckpointStorage::open(&config.checkpoint_dir).expect("storage");
        let mut found = false;
        for _ in 0..250 {
            std::thread::sleep(Duration::from_millis(20));
            if let Ok(Some(m)) = storage.latest_completed() {
                found = m
                    .operators
                    .iter()
                    .flat_map(|o| &o.subtasks)
                    .flat_map(|s| &s.operator_state)
                    .any(|s| s.name == cairn_runtime::INFLIGHT_STATE && !s.elements.is_empty());
                if found {
                    break;
                }
            }
        }
        handle.cancel();
        let first = handle.wait().expect("first run");
        assert!(found, "no checkpoint with in-flight records: {first:?}");

        config.restore = Some(RestoreFrom::Latest);
        let after = source("source", generator()).map("slow", |k: u64| k);
        match Job::new(rest(after, &output), config).run() {
            Err(RuntimeError::Restore { reason }) => assert!(
                reason.contains("operator slow") && reason.contains("in-flight"),
                "{reason}"
            ),
            other => {
                // What the output lacks: the in-flight records.
                let g = generator();
                let mut expected = std::collections::BTreeMap::<String, u64>::new();
                for n in 0..TOTAL {
                    *expected.entry(g.key_of(n).to_string()).or_default() += 1;
                }
                let out = read_output(&output);
                let missing: u64 = expected
                    .iter()
                    .map(|(k, n)| n - out.get(k).map_or(0, |c| c.len() as u64).min(*n))
                    .sum();
                panic!("expected a restore error: {other:?}; {missing} counts missing")
            }
        }
    }
}

/// With several checkpoints in flight, a checkpoint that completes gives up those triggered
/// before it (Flink subsumes them). A slow upload made checkpoint 1 complete after 2, 3, …:
/// it was published behind newer checkpoints and the tasks were told `1` complete after
/// `3`, so a function that commits on notification saw the checkpoints go backwards.
mod an_older_checkpoint_completing_after_a_newer_one {
    use std::sync::{Arc, Mutex};

    use super::*;
    use cairn_runtime::{Checkpointed, Collector, ProcessFunction, SnapshotMode};
    use cairn_storage::fault::FaultyObjectStore;
    use cairn_storage::CheckpointStorage;

    /// Passes records on and records the checkpoints it is told are complete.
    #[derive(Clone)]
    struct Watch(Arc<Mutex<Vec<u64>>>);

    impl Checkpointed for Watch {
        fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> cairn_runtime::Result<()> {
            self.0.lock().unwrap().push(checkpoint_id);
            Ok(())
        }
    }

    impl ProcessFunction<u64, u64> for Watch {
        fn process(
            &mut self,
            input: u64,
            out: &mut Collector<'_, u64>,
        ) -> cairn_runtime::Result<()> {
            out.collect(input)
        }
    }

    #[test]
    fn is_subsumed_and_never_notified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = throttled_config(dir.path());
        config.records_per_second = Some(20_000);
        config.checkpoint.interval = Some(Duration::from_millis(50));
        config.checkpoint.max_concurrent = 3;
        // Full snapshots: the keyed state is uploaded into chk-<id>/.
        config.checkpoint.snapshot_mode = SnapshotMode::Full;
        let storage = CheckpointStorage::open_wrapped(&config.checkpoint_dir, |inner| {
            let f = Arc::new(FaultyObjectStore::new(inner));
            f.set_put_latency_for("chk-1/", Duration::from_millis(1000));
            f
        })
        .expect("storage");
        config.checkpoint_storage = Some(storage);
        let notified = Arc::new(Mutex::new(Vec::new()));
        let graph = source("source", GeneratorSource::new(60_000, 100, 5))
            .process("watch", Watch(notified.clone()))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", DiscardSink);
        let result = Job::new(graph, config).run().expect("job");
        let notified = notified.lock().unwrap().clone();
        assert!(
            notified.windows(2).all(|w| w[0] < w[1]),
            "notifications out of order: {notified:?}"
        );
        assert!(!notified.contains(&1), "{notified:?}");
        assert!(result.checkpoints_subsumed >= 1, "{result:?}");
        assert!(result.checkpoints_completed >= 2, "{result:?}");
    }
}

/// The runtime adds operator states of its own to a subtask's snapshot (`cairn.finished`
/// marks a finished operator, `cairn.inflight` holds an unaligned checkpoint's in-flight
/// records) and takes them out again on restore. A user state of either name was accepted:
/// restored, it was read as the runtime's (the operator taken for finished, or its elements
/// replayed as records). Now a name in the prefix `cairn.` is refused when it is registered,
/// and the job fails at once (no restart registers it differently).
mod an_operator_state_in_the_runtime_prefix {
    use super::*;
    use cairn_core::OperatorListStateDescriptor;
    use cairn_runtime::{Checkpointed, Collector, InitContext, ProcessFunction};

    #[derive(Clone)]
    struct Squatter(&'static str);

    impl Checkpointed for Squatter {
        fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            ctx.operator_state
                .register_list(&OperatorListStateDescriptor::<u64>::split(self.0))?;
            Ok(())
        }
    }

    impl ProcessFunction<u64, u64> for Squatter {
        fn process(
            &mut self,
            input: u64,
            out: &mut Collector<'_, u64>,
        ) -> cairn_runtime::Result<()> {
            out.collect(input)
        }
    }

    #[test]
    fn is_refused_at_once() {
        for name in [cairn_runtime::FINISHED_STATE, cairn_runtime::INFLIGHT_STATE] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = throttled_config(dir.path());
            config.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
            let graph = source("source", GeneratorSource::new(1_000, 10, 7))
                .process("squatter", Squatter(name))
                .sink("sink", DiscardSink);
            match Job::new(graph, config).run() {
                Err(RuntimeError::Config(reason)) => assert!(
                    reason.contains(name)
                        && reason.contains("squatter")
                        && reason.contains("reserved"),
                    "{reason}"
                ),
                other => panic!("{name} was not refused at once: {other:?}"),
            }
        }
    }
}

/// A task that panicked was named by its stage and subtask numbers (`task 1/0 panicked`),
/// which a user cannot map to an operator. Now the error names the uids of the chained
/// operators and the subtask, as Flink names a task by its chain.
mod a_panic {
    use super::*;

    #[test]
    fn names_the_operators_of_its_task() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = throttled_config(dir.path());
        config.restart = RestartStrategy::no_restarts();
        config.records_per_second = None;
        let graph = source("source", GeneratorSource::new(1_000, 10, 7))
            .rebalance()
            .map("double", |k: u64| k * 2)
            .map("boom", |k: u64| -> u64 {
                if k >= 10 {
                    panic!("key {k} is too large");
                }
                k
            })
            .sink("sink", DiscardSink);
        match Job::new(graph, config).run() {
            Err(RuntimeError::Panic { task, message }) => {
                assert_eq!(task, "double -> boom -> sink subtask 0");
                assert!(message.contains("is too large"), "{message}");
            }
            other => panic!("expected a panic error: {other:?}"),
        }
    }
}

/// A stop-with-savepoint answered `Ok(path)` as soon as the savepoint was written, before
/// the tasks committed what it covers. When a sink's commit then failed, the caller had
/// been told the job stopped, and the job restarted from its latest checkpoint and ran on.
/// Now the answer waits for the tasks to end: a failure while stopping is an error that
/// names the savepoint (which is consistent: a job restored from it runs to the end), and
/// the job ends with it instead of restarting.
mod a_commit_that_fails_while_stopping {
    use super::*;
    use cairn_runtime::Sink;

    fn graph(sink: impl Sink<(u64, u64)>) -> JobGraph {
        source("source", GeneratorSource::new(60_000, 100, 7))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink("sink", sink)
    }

    #[test]
    fn is_an_error_naming_the_savepoint_and_ends_the_job() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = throttled_config(dir.path());
        config.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
        let handle = Job::new(
            graph(OnSavepointCommit::new(AtCommit::Fails)),
            config.clone(),
        )
        .start()
        .expect("start");
        let started = std::time::Instant::now();
        while handle.records_read() < 2_000 && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        // The caller of the stop and the job's end get the same typed failure.
        let stop_failed = |answer: cairn_runtime::Result<_>, who: &str| match answer {
            Err(RuntimeError::StopFailed { savepoint, source }) => {
                assert!(
                    matches!(*source, RuntimeError::User { ref uid, ref message } if uid == "sink" && message.contains("the commit failed")),
                    "{who}: {source:?}"
                );
                savepoint
            }
            other => panic!("{who} did not get the stop's failure: {other:?}"),
        };
        let answered = stop_failed(handle.stop_with_savepoint(None), "the stop's caller");
        let savepoint = stop_failed(handle.wait().map(|_| String::new()), "the job's end");
        assert_eq!(answered, savepoint);
        // The savepoint is whole: a job restored from it runs to the end.
        config.restore = Some(RestoreFrom::Path(savepoint));
        config.records_per_second = None;
        let result = Job::new(graph(DiscardSink), config)
            .run()
            .expect("restored from the savepoint");
        assert!(result.records > 0 && result.records < 60_000, "{result:?}");
    }
}

/// A line of the file source that is not UTF-8 failed the task with an I/O error that a
/// restart might cure: the job read the same bytes again after each of its restarts before
/// it failed ('job failed after 3 restarts'). Now it is a bad-input error, which names the
/// file and the offset of the bad bytes, and fails the job at once.
mod input_that_is_not_utf8 {
    use super::*;
    use cairn_runtime::sources::FileSource;

    #[test]
    fn fails_the_job_at_once_and_names_the_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input.txt");
        std::fs::write(&input, b"one two\nthree \xff\xfe four\nfive\n").expect("write input");
        let mut config = throttled_config(dir.path());
        config.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
        let graph = source("source", FileSource::new(&input))
            .map("len", |line: String| line.len() as u64)
            .sink("sink", DiscardSink);
        match Job::new(graph, config).run() {
            Err(RuntimeError::BadInput {
                path,
                offset,
                reason,
            }) => {
                assert_eq!(path, input.display().to_string());
                assert_eq!(offset, 14, "{reason}");
                assert!(reason.contains("offset 8"), "{reason}");
            }
            other => panic!("expected a bad-input error at once: {other:?}"),
        }
    }
}

/// A checkpoint still in flight when a stopping savepoint completed stayed pending while the
/// tasks ended (committing what the savepoint covers). If it then failed (here it times out:
/// its uploads are slow) past the tolerated number, the stop failed with it, though every
/// task ended and committed. Now the stopping savepoint's completion gives up the
/// checkpoints in flight, as the final checkpoint does.
mod a_checkpoint_in_flight_at_a_stopping_savepoint {
    use std::sync::Arc;

    use super::*;
    use cairn_runtime::SnapshotMode;
    use cairn_storage::fault::FaultyObjectStore;
    use cairn_storage::CheckpointStorage;

    #[test]
    fn is_given_up_and_the_stop_succeeds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = throttled_config(dir.path());
        config.checkpoint.interval = Some(Duration::from_millis(100));
        config.checkpoint.timeout = Duration::from_millis(1000);
        config.checkpoint.tolerable_failures = 0;
        config.checkpoint.snapshot_mode = SnapshotMode::Full;
        config.restart = RestartStrategy::no_restarts();
        let storage = CheckpointStorage::open_wrapped(&config.checkpoint_dir, |inner| {
            let f = Arc::new(FaultyObjectStore::new(inner));
            f.set_put_latency_for("chk-", Duration::from_millis(3000));
            f
        })
        .expect("storage");
        config.checkpoint_storage = Some(storage);
        let graph = source("source", GeneratorSource::new(1_000_000, 100, 5))
            .key_by(|k: &u64| *k)
            .sum("sum")
            .sink(
                "sink",
                OnSavepointCommit::new(AtCommit::Takes(Duration::from_millis(1500))),
            );
        let handle = Job::new(graph, config).start().expect("start");
        // Running, and checkpoint 1 (triggered 100 ms in) under way.
        let started = std::time::Instant::now();
        while handle.records_read() == 0 && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        let savepoint = handle.stop_with_savepoint(None).expect("the stop");
        let result = handle.wait().expect("the job");
        assert_eq!(result.savepoint.as_deref(), Some(savepoint.as_str()));
        assert_eq!(result.checkpoints_completed, 0, "{result:?}");
        assert!(result.checkpoints_subsumed >= 1, "{result:?}");
    }
}

/// A job restored with another max parallelism. Only keyed state cares (its key groups are
/// fixed by it), but the restore computed every operator's key groups from the snapshot's
/// max parallelism first: a job checkpointed with max parallelism 4 and restored at
/// parallelism 8 failed in its source ("parallelism 8 exceeds max parallelism 4"), naming
/// an operator without keyed state and a limit the new job does not have, and a job with no
/// keyed state at all could not be rescaled past its old max parallelism. Now the keyed
/// operator is named, and a job without keyed state restores.
mod a_changed_max_parallelism {
    use super::*;

    fn config(dir: &Path, parallelism: u32, max_parallelism: u32) -> JobConfig {
        JobConfig {
            parallelism,
            max_parallelism,
            restart: RestartStrategy::no_restarts(),
            ..throttled_config(dir)
        }
    }

    #[test]
    fn is_refused_for_keyed_state_naming_its_operator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = || {
            source("source", GeneratorSource::new(1_000_000, 100, 7))
                .key_by(|k: &u64| *k)
                .sum("x")
                .sink("sink", DiscardSink)
        };
        let savepoint = savepoint_after(graph(), config(dir.path(), 2, 4), 2000);
        let mut config = config(dir.path(), 8, 128);
        config.restore = Some(RestoreFrom::Path(savepoint));
        match Job::new(graph(), config).run() {
            Err(RuntimeError::Restore { reason }) => assert!(
                reason.contains("operator x")
                    && reason.contains("max parallelism 4")
                    && reason.contains("128"),
                "{reason}"
            ),
            other => panic!("expected a restore error naming operator x: {other:?}"),
        }
    }

    #[test]
    fn is_allowed_without_keyed_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = || {
            source("source", GeneratorSource::new(1_000_000, 100, 7))
                .map("x", |k: u64| k + 1)
                .sink("sink", DiscardSink)
        };
        let savepoint = savepoint_after(graph(), config(dir.path(), 2, 4), 2000);
        let mut config = config(dir.path(), 8, 128);
        config.restore = Some(RestoreFrom::Path(savepoint));
        let handle = Job::new(graph(), config).start().expect("start");
        let started = std::time::Instant::now();
        while handle.records_read() < 1000 && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.cancel();
        let result = handle.wait().expect("restored at parallelism 8 of 128");
        assert!(result.cancelled && result.records >= 1000, "{result:?}");
    }
}

/// A restore from a checkpoint path that does not exist named only the file relative to the
/// directory it opened ("manifest missing path=chk-3/_metadata"), and opening that directory
/// created it (and its parents) as if a job were to write there.
mod a_restore_path_that_does_not_exist {
    use super::*;

    #[test]
    fn is_an_error_naming_it_and_creates_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("gone").join("job");
        for path in [
            missing.join("chk-3").display().to_string(),
            missing
                .join("chk-3")
                .join("_metadata")
                .display()
                .to_string(),
            missing.join("sp-1").display().to_string(),
        ] {
            let config = JobConfig {
                restore: Some(RestoreFrom::Path(path.clone())),
                restart: RestartStrategy::no_restarts(),
                ..throttled_config(dir.path())
            };
            let graph = source("source", GeneratorSource::new(100, 10, 1))
                .key_by(|k: &u64| *k)
                .sum("sum")
                .sink("sink", DiscardSink);
            match Job::new(graph, config).run() {
                Err(RuntimeError::Restore { reason }) => {
                    assert!(reason.contains(&path), "{reason}");
                }
                other => panic!("expected a restore error naming {path}: {other:?}"),
            }
            assert!(
                !dir.path().join("gone").exists(),
                "{path} created a directory"
            );
        }
    }
}
