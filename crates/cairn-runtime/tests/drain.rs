//! Stop-with-savepoint `--drain` (`JobHandle::stop_with_savepoint_and_drain`): the sources
//! end their input, the final watermark fires every open window, `finish` runs, and the
//! savepoint taken then commits all of it; a job restored from that savepoint reads on
//! from the sources' positions with the keyed state.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_runtime::function::FnProcess;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Job, JobConfig, JobGraph, ProcessFunction, RestoreFrom,
    StateBackendConfig, TimeWindow, TumblingEventTimeWindows, WatermarkStrategy,
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
        .process(
            "label",
            FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    out.collect((key * 1_000_000 + window.end, count))
                },
            ),
        )
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
    let started = Instant::now();
    while common::read_output(output).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was committed while the input was read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint_and_drain(None)
        .expect("stop with savepoint and drain");
    let first = handle.wait().expect("drained run");
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
    let lines = u64::try_from(
        std::fs::read_to_string(&input)
            .expect("input")
            .lines()
            .count(),
    )
    .expect("lines");
    let (savepoint, _) = drain_part_way(graph, cfg, &output, lines);

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
    let started = Instant::now();
    while common::read_output(&output).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing committed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = handle
        .stop_with_savepoint_and_drain(None)
        .expect_err("the savepoint cannot be written");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
    let result = handle.wait().expect("the job reads on after the failover");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert_eq!(result.savepoint, None);
    common::check_exactly_once(&expected, &common::read_output(&output));
}
