//! Stop-with-savepoint `--drain` (`JobHandle::stop_with_savepoint_and_drain`): the sources
//! end their input, the final watermark fires every open window, `finish` runs, and the
//! savepoint taken then commits all of it; a job restored from that savepoint reads on
//! from the sources' positions with the keyed state.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Job, JobConfig, JobGraph, ProcessFunction, RestoreFrom,
    StateBackendConfig, TumblingEventTimeWindows, WatermarkStrategy,
};

/// Events of the window job.
const EVENTS: u64 = 12_000;

/// Writes `EVENTS` lines `key timestamp`: event `n` has key `n % 7` and time `n` ms.
fn write_events(dir: &Path) -> PathBuf {
    let text: String = (0..EVENTS).map(|n| format!("{} {n}\n", n % 7)).collect();
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    path
}

/// How often [`CountFinishes`] finished (only the window test uses it).
static FINISHES: AtomicU64 = AtomicU64::new(0);

/// Passes events on and counts its `finish` calls in [`FINISHES`]: it is chained with the
/// source, whose task ends its output on a drain.
#[derive(Clone, Debug)]
struct CountFinishes;

impl Checkpointed for CountFinishes {}

impl ProcessFunction<(u64, u64), (u64, u64)> for CountFinishes {
    fn process(
        &mut self,
        event: (u64, u64),
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.collect(event)
    }

    fn finish(&mut self, _out: &mut Collector<'_, (u64, u64)>) -> cairn_runtime::Result<()> {
        FINISHES.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// parse → finishes → timestamps → key_by → tumbling 100 ms windows counting events → sink of
/// `(key and window end, count)`.
fn window_job(input: &Path, output: &Path) -> JobGraph {
    source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .process("finishes", CountFinishes)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .aggregate("windows", common::CountEvents)
        .process("label", FnProcess(common::label_window))
        .sink("sink", common::count_sink(output))
}

/// The events counted in the committed output.
fn counted(output: &Path) -> u64 {
    common::read_output(output).values().flatten().sum()
}

/// Starts `graph` throttled, waits until `output` has committed something, drains it with
/// a savepoint, and returns the savepoint and the records the run read.
fn drain_part_way(graph: JobGraph, cfg: JobConfig, output: &Path, total: u64) -> (String, u64) {
    let handle = Job::new(graph, cfg).start().expect("start");
    common::wait_for_commit(output);
    // Output is committed when a checkpoint completes.
    let completed = handle.checkpoints_completed();
    assert!(completed >= 1, "{completed} checkpoints");
    let savepoint = handle
        .stop_with_savepoint_and_drain(None)
        .expect("stop with savepoint and drain");
    let first = handle.wait().expect("drained run");
    assert!(first.checkpoints_completed >= completed, "{first:?}");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    assert!(first.records < total, "the input ended before the drain");
    (savepoint, first.records)
}

/// A drain fires the windows that were open (a stop without it keeps them in the
/// savepoint) and runs `finish` in every subtask: everything read is committed. A restore
/// under RocksDB at another parallelism reads the rest, each event counted once in all,
/// and runs `finish` again at its end (the drained operators were not marked finished).
#[test]
fn a_drain_fires_every_open_window_and_a_restore_reads_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_events(dir.path());
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let graph = window_job(&input, &output);
    let (savepoint, read) = drain_part_way(graph, cfg, &output, EVENTS);
    assert_eq!(
        counted(&output),
        read,
        "every event read is in a window fired and committed by the drain"
    );
    assert_eq!(
        FINISHES.load(Ordering::SeqCst),
        2,
        "finish in both subtasks"
    );

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(window_job(&input, &output), cfg)
        .run()
        .expect("restored run");
    assert_eq!(
        second.records,
        EVENTS - read,
        "it reads on from the positions"
    );
    assert_eq!(counted(&output), EVENTS);
    assert_eq!(
        FINISHES.load(Ordering::SeqCst),
        5,
        "and in the three restored ones"
    );
}

/// The drained savepoint keeps the keyed state: word counts go on after a restore, each
/// count of each word committed once in all.
#[test]
fn a_drained_savepoint_keeps_the_keyed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = common::write_input(dir.path(), 12_000, 300, 7);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    let graph = common::wordcount(&input, &output, None, None);
    let (savepoint, _) = drain_part_way(graph, cfg, &output, line_count(&input));

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(common::wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("restored run");
    common::check_exactly_once(&expected, &common::read_output(&output));
}

/// A drained savepoint that fails (here its directory is a file) cannot leave the job
/// ended with its input unread: the answer is the error, and the job fails over to its
/// latest checkpoint and reads on; each count committed once in all.
#[test]
fn a_failed_drained_savepoint_fails_over_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = common::write_input(dir.path(), 12_000, 300, 9);
    let output = dir.path().join("out");
    let not_a_dir = dir.path().join("not-a-dir");
    std::fs::write(&not_a_dir, b"a file").expect("file");
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    cfg.savepoint_dir = Some(not_a_dir.display().to_string());
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(2, Duration::from_millis(10));
    let handle = Job::new(common::wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    common::wait_for_commit(&output);
    let err = handle
        .stop_with_savepoint_and_drain(None)
        .expect_err("the savepoint cannot be written");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    let result = handle.wait().expect("the job reads on after the failover");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert_eq!(result.savepoint, None);
    common::check_exactly_once(&expected, &common::read_output(&output));
}

/// The lines of `input`.
fn line_count(input: &Path) -> u64 {
    let text = std::fs::read_to_string(input).expect("input");
    u64::try_from(text.lines().count()).expect("lines")
}

/// Without periodic checkpoints nothing is committed before the input ends; a drain ends
/// it, and the drained savepoint's completion commits what was read. A restore from it
/// reads on: each count of each word committed once in all.
#[test]
fn a_drain_without_checkpoints_commits_what_was_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = common::write_input(dir.path(), 12_000, 300, 11);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.checkpoint.interval = None;
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    let handle = Job::new(common::wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    let started = Instant::now();
    while handle.records_read() < 1_000 {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing read");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        common::read_output(&output).is_empty(),
        "nothing is committed without checkpoints"
    );
    let savepoint = handle
        .stop_with_savepoint_and_drain(None)
        .expect("stop with savepoint and drain");
    let first = handle.wait().expect("drained run");
    assert_eq!(first.checkpoints_completed, 0, "{first:?}");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    let committed: usize = common::read_output(&output).values().map(Vec::len).sum();
    assert!(committed > 0, "the drain committed what was read");
    assert!(
        first.records < line_count(&input),
        "the input ended before the drain"
    );

    let mut cfg = common::config(dir.path(), 50);
    cfg.checkpoint.interval = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(common::wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("restored run");
    assert_eq!(first.records + second.records, line_count(&input));
    common::check_exactly_once(&expected, &common::read_output(&output));
}

/// Whether [`FailFirstFinish`] has failed (once per test process: one test uses it).
static FINISH_FAILED: AtomicBool = AtomicBool::new(false);

/// Passes words on; its first `finish` fails.
#[derive(Clone, Debug)]
struct FailFirstFinish;

impl Checkpointed for FailFirstFinish {}

impl ProcessFunction<String, String> for FailFirstFinish {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        out.collect(w)
    }

    fn finish(&mut self, _out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        if FINISH_FAILED.swap(true, Ordering::SeqCst) {
            Ok(())
        } else {
            Err(cairn_runtime::RuntimeError::user(
                "finish",
                "injected failure in finish",
            ))
        }
    }
}

/// A task that fails while the job drains (its `finish` fails) fails the stop: the answer
/// is the error, no savepoint is taken, and the job fails over to its latest checkpoint
/// and reads on to the end of its input (Flink fails a stop-with-savepoint whose job
/// failed over, and the job runs on); each count committed once in all.
#[test]
fn a_task_failing_while_the_job_drains_fails_the_stop_and_the_job_reads_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = common::write_input(dir.path(), 12_000, 300, 13);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(2, Duration::from_millis(10));
    let graph = source("source", FileSource::new(&input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .process("finish", FailFirstFinish)
        .key_by(|w: &String| w.clone())
        .process("count", common::Count::new())
        .sink("sink", TwoPhaseFileSink::new(&output, common::format_line));
    let handle = Job::new(graph, cfg).start().expect("start");
    common::wait_for_commit(&output);
    let err = handle
        .stop_with_savepoint_and_drain(None)
        .expect_err("a task failed while the job drained");
    let result = handle.wait().expect("the job reads on after the failover");
    assert!(FINISH_FAILED.load(Ordering::SeqCst));
    assert_eq!(result.restarts, 1, "{result:?}: {err}");
    assert_eq!(result.savepoint, None);
    assert_eq!(
        std::fs::read_dir(dir.path().join("savepoints")).map_or(0, |d| d.count()),
        0,
        "no savepoint was written"
    );
    common::check_exactly_once(&expected, &common::read_output(&output));
}

/// A source subtask whose input ended before the drain (its split is one line, padded to
/// over half the file) finished for good; the drained savepoint still does not mark it
/// finished, so a restore at another parallelism (under RocksDB at 3) deals its split
/// again and reads on: each count committed once in all.
#[test]
fn a_source_that_had_finished_before_the_drain_restores_at_another_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words, mut expected) = common::write_input(dir.path(), 12_000, 300, 17);
    let rest = std::fs::read_to_string(&words).expect("input");
    let mut first_line = String::from("w0 w1 w2");
    first_line.push_str(&" ".repeat(rest.len() + 1));
    for w in ["w0", "w1", "w2"] {
        *expected.entry(w.to_string()).or_insert(0) += 1;
    }
    let input = dir.path().join("padded.txt");
    std::fs::write(&input, format!("{first_line}\n{rest}")).expect("write input");
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    let (savepoint, _) = drain_part_way(
        common::wordcount(&input, &output, None, None),
        cfg,
        &output,
        line_count(&input),
    );

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(common::wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("restored run");
    common::check_exactly_once(&expected, &common::read_output(&output));
}
