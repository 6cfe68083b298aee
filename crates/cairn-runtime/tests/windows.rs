//! Windows end to end (`KeyedStream::window`): what fires when, late records, timestamps of
//! the output, and exactly-once results across failures, savepoints, backend switches and
//! rescaling; for tumbling and sliding windows and for sessions.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{AggregateFunction, MergingAggregateFunction};
use cairn_runtime::sources::FileSource;
use cairn_runtime::windows::FixedGap;
use cairn_runtime::{
    source, Checkpointed, Collector, CountTrigger, EventTimeSessionWindows, FnWindow, Job,
    JobConfig, JobGraph, PurgingTrigger, RestoreFrom, SessionWindows, Sink,
    SlidingEventTimeWindows, SnapshotMode, Source, SourceStatus, StateBackendConfig, TimeWindow,
    TumblingEventTimeWindows, WatermarkStrategy, WindowAssigner, WindowTrigger, Windows,
};
use common::{CollectWithContext, Stamp};

/// `(key, timestamp, value)`.
type Event = (u64, u64, u64);

/// A source that emits its steps in order (one subtask): a batch of events, or a pause
/// (the source reports nothing to emit once, so its task flushes and its assigner emits
/// the watermark of what came before, deterministically).
#[derive(Clone, Debug)]
struct Script {
    steps: Vec<Option<Vec<Event>>>,
    next: usize,
    /// Emit each event with its timestamp (`collect_with_timestamp`).
    stamped: bool,
}

impl Checkpointed for Script {}

impl Source for Script {
    type Out = Event;

    fn poll(
        &mut self,
        out: &mut Collector<'_, Event>,
        _max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        let Some(step) = self.steps.get(self.next) else {
            return Ok(SourceStatus::End);
        };
        self.next += 1;
        match step {
            Some(events) => {
                for e in events {
                    if self.stamped {
                        out.collect_with_timestamp(*e, e.1)?;
                    } else {
                        out.collect(*e)?;
                    }
                }
                Ok(SourceStatus::More)
            }
            None => Ok(SourceStatus::Idle),
        }
    }
}

/// Collects into a shared list.
#[derive(Clone, Debug)]
struct Collect<T>(Arc<Mutex<Vec<T>>>);

impl<T> Checkpointed for Collect<T> {}

impl<T: Clone + Send + 'static> Sink<T> for Collect<T> {
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

/// Sums values and counts them.
#[derive(Clone, Debug)]
struct CountAndSum;

impl AggregateFunction<Event, (u64, u64), (u64, u64)> for CountAndSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), (_, _, value): Event) {
        acc.0 += 1;
        acc.1 += value;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

impl MergingAggregateFunction<Event, (u64, u64), (u64, u64)> for CountAndSum {
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// A process window function emitting `(key, window, the events' values)`.
fn list_values(
    key: &u64,
    window: TimeWindow,
    events: Vec<Event>,
    out: &mut Collector<'_, (u64, TimeWindow, Vec<u64>)>,
) -> cairn_runtime::Result<()> {
    let values = events.iter().map(|e| e.2).collect();
    out.collect((*key, window, values))
}

fn w(start: u64, end: u64) -> TimeWindow {
    TimeWindow { start, end }
}

/// The script of the lateness test: tumbling 10 ms windows, no out-of-orderness, 5 ms of
/// allowed lateness.
/// - Key 1 gets 1, 2 and 4 (at 1, 5, 12) and key 2 gets 100 (at 2); the pause's watermark
///   (11) fires `[0, 10)` of both keys.
/// - 8 at 7 is late but within the lateness (its window's contents are kept until 14): the
///   window fires again at once with it.
/// - 16 at 15; the pause's watermark (14) reaches 14, so `[0, 10)` is dropped, and 32 at
///   3 is too late: dropped.
/// - The end of the input fires `[10, 20)` of key 1: 4 and 16.
fn lateness_script() -> Script {
    Script {
        steps: vec![
            Some(vec![(1, 1, 1), (2, 2, 100), (1, 5, 2), (1, 12, 4)]),
            None,
            Some(vec![(1, 7, 8), (1, 15, 16)]),
            None,
            Some(vec![(1, 3, 32)]),
        ],
        next: 0,
        stamped: false,
    }
}

fn lateness_config(backend: StateBackendConfig) -> JobConfig {
    JobConfig {
        backend,
        parallelism: 1,
        auto_watermark_interval: Duration::from_nanos(1),
        ..JobConfig::default()
    }
}

/// The keyed, windowed stream of the lateness script.
fn windowed(script: Script) -> cairn_runtime::WindowedStream<u64, Event> {
    windowed_by(
        script,
        TumblingEventTimeWindows::of(Duration::from_millis(10)),
    )
}

/// The script's events in `windows` with 5 ms of lateness.
fn windowed_by<A: Windows>(
    script: Script,
    windows: A,
) -> cairn_runtime::WindowedStream<u64, Event, A> {
    source("source", script)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0)
        .window(windows)
        .allowed_lateness(Duration::from_millis(5))
}

fn run<T: cairn_runtime::Data + Ord + std::fmt::Debug>(
    stream: cairn_runtime::Stream<T>,
    config: JobConfig,
) -> Vec<(T, Option<u64>)> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let graph = stream
        .process("stamp", Stamp)
        .sink("sink", CollectWithContext(out.clone()));
    Job::new(graph, config).run().expect("job");
    let written = std::mem::take(&mut *out.lock().expect("lock"));
    // The sink sees each result's timestamp, and the watermarks (one sink subtask: never
    // going back) that fired the windows.
    let mut last = None;
    for ((record, timestamp), context) in &written {
        assert_eq!(
            context.timestamp, *timestamp,
            "the sink's timestamp of {record:?}"
        );
        assert!(context.watermark >= last, "the sink's watermark went back");
        last = context.watermark;
    }
    assert!(last.is_some(), "no watermark reached the sink");
    let mut out: Vec<_> = written.into_iter().map(|(record, _)| record).collect();
    out.sort();
    out
}

/// Every window result has the window's last millisecond as its timestamp.
#[test]
fn a_window_fires_at_its_end_again_for_records_within_the_lateness_and_drops_later_ones() {
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let reduced = run(
            windowed(lateness_script())
                .reduce("sum", |a: Event, b: Event| (a.0, a.1.max(b.1), a.2 + b.2)),
            lateness_config(backend.clone()),
        );
        let sums: Vec<_> = reduced
            .iter()
            .map(|((k, window, (_, _, sum)), t)| (*k, *window, *sum, *t))
            .collect();
        assert_eq!(
            sums,
            vec![
                (1, w(0, 10), 3, Some(9)),
                (1, w(0, 10), 11, Some(9)),
                (1, w(10, 20), 20, Some(19)),
                (2, w(0, 10), 100, Some(9)),
            ],
            "reduce under {backend:?}"
        );

        let aggregated = run(
            windowed(lateness_script()).aggregate("count", CountAndSum),
            lateness_config(backend.clone()),
        );
        assert_eq!(
            aggregated,
            vec![
                ((1, w(0, 10), (2, 3)), Some(9)),
                ((1, w(0, 10), (3, 11)), Some(9)),
                ((1, w(10, 20), (2, 20)), Some(19)),
                ((2, w(0, 10), (1, 100)), Some(9)),
            ],
            "aggregate under {backend:?}"
        );

        let listed = run(
            windowed(lateness_script()).process("list", FnWindow(list_values)),
            lateness_config(backend.clone()),
        );
        assert_eq!(
            listed,
            vec![
                ((1, w(0, 10), vec![1, 2]), Some(9)),
                ((1, w(0, 10), vec![1, 2, 8]), Some(9)),
                ((1, w(10, 20), vec![4, 16]), Some(19)),
                ((2, w(0, 10), vec![100]), Some(9)),
            ],
            "process under {backend:?}"
        );
    }
}

/// A process window function under a purging count trigger of 2 (the lateness script):
/// each firing gives the function the 2 records since the last, not at the window's end;
/// what a window holds at its cleanup (end plus lateness) is dropped unfired, and a record
/// past it is dropped; under both backends.
#[test]
fn a_process_window_function_under_a_purging_count_trigger() {
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let listed = run(
            windowed(lateness_script())
                .trigger(PurgingTrigger::of(CountTrigger::of(2)))
                .process("list", FnWindow(list_values)),
            lateness_config(backend.clone()),
        );
        assert_eq!(
            listed,
            vec![
                ((1, w(0, 10), vec![1, 2]), Some(9)),
                ((1, w(10, 20), vec![4, 16]), Some(19)),
            ],
            "under {backend:?}: 8 was in [0, 10) at its cleanup, 100 alone in key 2's"
        );
    }
}

/// Without lateness, a window fires once and a record behind the watermark is dropped.
#[test]
fn without_lateness_a_window_fires_once_and_late_records_are_dropped() {
    let stream = source("source", lateness_script())
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .aggregate("count", CountAndSum);
    assert_eq!(
        run(stream, lateness_config(StateBackendConfig::HashMap)),
        vec![
            ((1, w(0, 10), (2, 3)), Some(9)),
            ((1, w(10, 20), (2, 20)), Some(19)),
            ((2, w(0, 10), (1, 100)), Some(9)),
        ]
    );
}

/// A record without a timestamp is an error naming the window operator.
#[test]
fn event_time_windows_refuse_records_without_timestamps() {
    let graph = source("source", lateness_script())
        .key_by(|e: &Event| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .aggregate("count", CountAndSum)
        .sink("sink", Collect(Arc::new(Mutex::new(Vec::new()))));
    let err = Job::new(graph, lateness_config(StateBackendConfig::HashMap))
        .run()
        .expect_err("no timestamps");
    let message = err.to_string();
    assert!(
        message.contains("count") && message.contains("without a timestamp"),
        "{message}"
    );
}

/// A bad assigner is a configuration error naming the operator.
#[test]
fn an_offset_as_large_as_the_slide_is_refused() {
    let graph = source("source", lateness_script())
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0)
        .window(
            SlidingEventTimeWindows::of(Duration::from_millis(10), Duration::from_millis(5))
                .with_offset(Duration::from_millis(5)),
        )
        .aggregate("count", CountAndSum)
        .sink("sink", Collect(Arc::new(Mutex::new(Vec::new()))));
    let err = Job::new(graph, lateness_config(StateBackendConfig::HashMap))
        .run()
        .expect_err("bad offset");
    let message = err.to_string();
    assert!(
        message.contains("count") && message.contains("smaller than the slide"),
        "{message}"
    );
}

const SIZE: u64 = 1_000;
const SLIDE: u64 = 250;
/// A window result that marks a wrong timestamp.
const BROKEN: u64 = u64::MAX;

/// Writes `lines` events `key timestamp` (the timestamp of line `n` is `5 n` ms plus a
/// jitter below 250 ms, within the strategy's 300 ms bound, so no event is late). Returns
/// the path and the model: per `(key, window end)`, the number of events.
fn write_events(dir: &Path, lines: u64, keys: u64) -> (PathBuf, BTreeMap<String, Vec<u64>>) {
    let mut text = String::new();
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for n in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let key = (x >> 20) % keys;
        let timestamp = 5 * n + x % 250;
        text.push_str(&format!("{key} {timestamp}\n"));
        // The sliding windows containing it: one per slide, by end.
        let last_end = timestamp - timestamp % SLIDE + SIZE;
        for k in 0..SIZE / SLIDE {
            *counts.entry(id(key, last_end - k * SLIDE)).or_insert(0) += 1;
        }
    }
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    let model = counts
        .into_iter()
        .map(|(id, n)| (id.to_string(), vec![n]))
        .collect();
    (path, model)
}

/// One output line's key: the event key and the window's end.
fn id(key: u64, end: u64) -> u64 {
    key * 1_000_000_000 + end
}

/// parse → timestamps → key_by → sliding windows counting events → check the output's
/// timestamp → sink.
fn counting_job(input: &Path, output: &Path, fail_at: Vec<u64>) -> JobGraph {
    let sliding =
        SlidingEventTimeWindows::of(Duration::from_millis(SIZE), Duration::from_millis(SLIDE));
    counting_job_with(input, output, fail_at, sliding, None)
}

/// [`counting_job`] with other windows.
fn counting_job_with(
    input: &Path,
    output: &Path,
    fail_at: Vec<u64>,
    windows: WindowAssigner,
    trigger: Option<WindowTrigger>,
) -> JobGraph {
    let windowed = source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(fail_at))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_bounded_out_of_orderness(
                Duration::from_millis(300),
                |(_, timestamp): &(u64, u64)| *timestamp,
            ),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(windows);
    let windowed = match trigger {
        Some(t) => windowed.trigger(t),
        None => windowed,
    };
    windowed
        .aggregate("windows", common::CountEvents)
        .process(
            "check",
            cairn_runtime::function::FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    let stamped = out.timestamp() == Some(window.max_timestamp());
                    let count = if stamped { count } else { BROKEN };
                    out.collect((id(key, window.end), count))
                },
            ),
        )
        .sink("sink", common::count_sink(output))
}

/// Failures between checkpoints: open windows and their timers are restored, the
/// watermark starts over, and every window's count is committed exactly once.
fn exactly_once_across_failures(
    backend: StateBackendConfig,
    mode: SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, model) = write_events(dir.path(), 5_000, 15);
    let output = dir.path().join("out");
    let cfg = common::event_time_config(dir.path(), backend, mode, unaligned, parallelism);
    let result = Job::new(counting_job(&input, &output, vec![2_000, 4_000]), cfg)
        .run()
        .expect("job");
    assert_eq!(result.restarts, 2, "the injected failures did not happen");
    assert_eq!(common::read_output(&output), model);
}

#[test]
fn heap_full_sliding_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(StateBackendConfig::HashMap, SnapshotMode::Full, false, 2);
}

#[test]
fn rocksdb_incremental_unaligned_sliding_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        true,
        3,
    );
}

#[test]
fn changelog_sliding_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
        false,
        1,
    );
}

/// Open windows go through a savepoint restored under the other backend at another
/// parallelism, and fire there, each once.
#[test]
fn open_windows_survive_a_savepoint_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, model) = write_events(dir.path(), 6_000, 15);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let handle = Job::new(counting_job(&input, &output, Vec::new()), cfg)
        .start()
        .expect("start");
    let started = std::time::Instant::now();
    while common::read_output(&output).len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no window fired while the input was read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(first.records < 6_000, "the input ended before the stop");

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(counting_job(&input, &output, Vec::new()), cfg)
        .run()
        .expect("restored run");
    assert_eq!(common::read_output(&output), model);
}

/// A savepoint's open windows cannot be restored under other windows (their timers would
/// stand for windows that do not exist): the restore is refused, naming both.
#[test]
fn a_restore_under_other_windows_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_events(dir.path(), 6_000, 15);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    let handle = Job::new(counting_job(&input, &output, Vec::new()), cfg)
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(200));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first run");

    for other in [
        TumblingEventTimeWindows::of(Duration::from_millis(SIZE)),
        SlidingEventTimeWindows::of(Duration::from_millis(SIZE), Duration::from_millis(SLIDE))
            .with_offset(Duration::from_millis(1)),
    ] {
        let mut cfg = common::config(dir.path(), 50);
        cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
        let err = Job::new(
            counting_job_with(&input, &output, Vec::new(), other, None),
            cfg,
        )
        .run()
        .expect_err("other windows");
        let message = err.to_string();
        assert!(
            message.contains("window operator windows")
                && message.contains("1000 ms every 250 ms from offset 0 ms")
                && message.contains("not supported"),
            "{message}"
        );
    }
}

/// The sliding windows of [`counting_job`].
fn sliding() -> WindowAssigner {
    SlidingEventTimeWindows::of(Duration::from_millis(SIZE), Duration::from_millis(SLIDE))
}

/// A purging count trigger of 7 under failures, a savepoint, and a restore under RocksDB
/// at parallelism 3 with another failure: each window of `c` events emits `c / 7` counts
/// of 7 (the counts are keyed state, so where the job stopped does not matter) and its
/// last `c % 7` events never.
#[test]
fn a_purging_count_trigger_is_exactly_once_across_failures_and_a_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, model) = write_events(dir.path(), 6_000, 15);
    let model: BTreeMap<String, Vec<u64>> = model
        .into_iter()
        .filter_map(|(id, counts)| {
            let firings = counts[0] / 7;
            (firings > 0).then(|| (id, vec![7; firings as usize]))
        })
        .collect();
    let output = dir.path().join("out");
    let trigger = Some(PurgingTrigger::of(CountTrigger::of(7)));
    let job = |fail_at| counting_job_with(&input, &output, fail_at, sliding(), trigger);
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let handle = Job::new(job(vec![1_000]), cfg).start().expect("start");
    while handle.records_read() < 2_000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(&output);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 1, "{first:?}");
    assert!(first.records < 6_000, "the input ended before the stop");

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(2, Duration::from_millis(10));
    let second = Job::new(job(vec![1_500]), cfg).run().expect("restored run");
    assert_eq!(second.restarts, 1, "{second:?}");
    let mut output = common::read_output(&output);
    for counts in output.values_mut() {
        counts.sort_unstable();
    }
    assert_eq!(output, model);

    // The trigger is the state's: another one (here the default) is refused.
    let mut cfg = common::config(dir.path(), 50);
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let err = Job::new(
        counting_job(&input, &dir.path().join("other"), Vec::new()),
        cfg,
    )
    .run()
    .expect_err("another trigger");
    let message = err.to_string();
    assert!(
        message.contains("a purging trigger of a count trigger of 7 records")
            && message.contains("an event-time trigger")
            && message.contains("not supported"),
        "{message}"
    );
}

/// The script of the session test: sessions with a 10 ms gap, no out-of-orderness, 5 ms of
/// allowed lateness.
/// - Key 1 gets 1 at 0 and 2 at 20, key 2 100 at 3: sessions `[0, 10)`, `[20, 30)` and
///   `[3, 13)`. The pause's watermark (19) fires (and, past their lateness, drops) the
///   first and the last.
/// - 4 at 10 joins `[20, 30)` (touching it), which becomes `[10, 30)`.
/// - Key 3 gets 1000 at 21, key 1 16 at 32 (a new session `[32, 42)`); the pause's
///   watermark (31) fires `[10, 30)` and `[21, 31)`, whose contents are kept until 34
///   and 35.
/// - 32 at 25 bridges `[10, 30)` and `[32, 42)`: `[10, 42)`, not yet due. 2000 at 21
///   reaches key 3's fired session: it fires again at once. 400 at 5 of key 2 is past
///   its lateness: dropped.
/// - The end of the input fires `[10, 42)`.
fn session_script() -> Script {
    Script {
        steps: vec![
            Some(vec![(1, 0, 1), (2, 3, 100), (1, 20, 2)]),
            None,
            Some(vec![(1, 10, 4)]),
            None,
            Some(vec![(3, 21, 1_000), (1, 32, 16)]),
            None,
            Some(vec![(1, 25, 32), (3, 21, 2_000), (2, 5, 400)]),
        ],
        next: 0,
        stamped: false,
    }
}

fn sessions(gap_ms: u64) -> SessionWindows<FixedGap> {
    EventTimeSessionWindows::with_gap(Duration::from_millis(gap_ms))
}

/// Sessions merge (their contents in the order of the sessions), fire at their end,
/// again at once for records within the lateness, and drop later records; reduce,
/// aggregate (merging accumulators) and process under both backends.
#[test]
fn sessions_merge_and_fire_again_for_records_within_the_lateness() {
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let reduced = run(
            windowed_by(session_script(), sessions(10))
                .reduce("sum", |a: Event, b: Event| (a.0, a.1.max(b.1), a.2 + b.2)),
            lateness_config(backend.clone()),
        );
        let sums: Vec<_> = reduced
            .iter()
            .map(|((k, window, (_, _, sum)), t)| (*k, *window, *sum, *t))
            .collect();
        assert_eq!(
            sums,
            vec![
                (1, w(0, 10), 1, Some(9)),
                (1, w(10, 30), 6, Some(29)),
                (1, w(10, 42), 54, Some(41)),
                (2, w(3, 13), 100, Some(12)),
                (3, w(21, 31), 1_000, Some(30)),
                (3, w(21, 31), 3_000, Some(30)),
            ],
            "reduce under {backend:?}"
        );

        let aggregated = run(
            windowed_by(session_script(), sessions(10)).aggregate("count", CountAndSum),
            lateness_config(backend.clone()),
        );
        assert_eq!(
            aggregated,
            vec![
                ((1, w(0, 10), (1, 1)), Some(9)),
                ((1, w(10, 30), (2, 6)), Some(29)),
                ((1, w(10, 42), (4, 54)), Some(41)),
                ((2, w(3, 13), (1, 100)), Some(12)),
                ((3, w(21, 31), (1, 1_000)), Some(30)),
                ((3, w(21, 31), (2, 3_000)), Some(30)),
            ],
            "aggregate under {backend:?}"
        );

        let listed = run(
            windowed_by(session_script(), sessions(10)).process("list", FnWindow(list_values)),
            lateness_config(backend.clone()),
        );
        assert_eq!(
            listed,
            vec![
                ((1, w(0, 10), vec![1]), Some(9)),
                ((1, w(10, 30), vec![2, 4]), Some(29)),
                ((1, w(10, 42), vec![2, 4, 16, 32]), Some(41)),
                ((2, w(3, 13), vec![100]), Some(12)),
                ((3, w(21, 31), vec![1_000]), Some(30)),
                ((3, w(21, 31), vec![1_000, 2_000]), Some(30)),
            ],
            "process under {backend:?}"
        );
    }
}

/// The session gap of the exactly-once runs, in milliseconds: a key's events are 75 ms
/// apart on average, with a jitter of up to 250 ms, so sessions grow, bridge and merge.
const GAP: u64 = 100;

/// The sessions of the events in `path` (`key timestamp` lines) with gap `gap`: per
/// `session_id`, its number of events. No event is late (see [`write_events`]), so these
/// are the sessions of each key's sorted timestamps, split where one is more than a gap
/// after the one before.
fn session_model(path: &Path, gap: u64) -> BTreeMap<String, Vec<u64>> {
    let mut by_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).expect("events").lines() {
        let (key, timestamp) = line.split_once(' ').expect("key timestamp");
        let timestamp = timestamp.parse().expect("timestamp");
        by_key
            .entry(key.parse().expect("key"))
            .or_default()
            .push(timestamp);
    }
    let mut model = BTreeMap::new();
    for (key, mut times) in by_key {
        times.sort_unstable();
        let (mut start, mut last, mut count) = (times[0], times[0], 0);
        for t in times {
            if t > last + gap {
                model.insert(
                    session_id(key, w(start, last + gap)).to_string(),
                    vec![count],
                );
                (start, count) = (t, 0);
            }
            last = t;
            count += 1;
        }
        model.insert(
            session_id(key, w(start, last + gap)).to_string(),
            vec![count],
        );
    }
    model
}

/// One output line's key: the event key and the session.
fn session_id(key: u64, window: TimeWindow) -> u64 {
    key * 1_000_000_000_000 + window.start * 1_000_000 + (window.end - window.start)
}

/// parse → timestamps → key_by → sessions counting events (merging counts) → check the
/// output's timestamp → sink.
fn session_job(input: &Path, output: &Path, fail_at: Vec<u64>, gap: u64) -> JobGraph {
    source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(fail_at))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_bounded_out_of_orderness(
                Duration::from_millis(300),
                |(_, timestamp): &(u64, u64)| *timestamp,
            ),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(sessions(gap))
        .aggregate("sessions", common::CountEvents)
        .process(
            "check",
            cairn_runtime::function::FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    let stamped = out.timestamp() == Some(window.max_timestamp());
                    let count = if stamped { count } else { BROKEN };
                    out.collect((session_id(key, window), count))
                },
            ),
        )
        .sink("sink", common::count_sink(output))
}

/// Failures between checkpoints: open sessions, their index and their timers are
/// restored, and every session's count is committed exactly once.
fn sessions_exactly_once_across_failures(
    backend: StateBackendConfig,
    mode: SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_events(dir.path(), 5_000, 15);
    let model = session_model(&input, GAP);
    let output = dir.path().join("out");
    let cfg = common::event_time_config(dir.path(), backend, mode, unaligned, parallelism);
    let result = Job::new(session_job(&input, &output, vec![2_000, 4_000], GAP), cfg)
        .run()
        .expect("job");
    assert_eq!(result.restarts, 2, "the injected failures did not happen");
    assert_eq!(common::read_output(&output), model);
}

#[test]
fn heap_full_sessions_are_exactly_once_across_failures() {
    sessions_exactly_once_across_failures(
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
        false,
        2,
    );
}

#[test]
fn rocksdb_incremental_unaligned_sessions_are_exactly_once_across_failures() {
    sessions_exactly_once_across_failures(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        true,
        3,
    );
}

#[test]
fn changelog_sessions_are_exactly_once_across_failures() {
    sessions_exactly_once_across_failures(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
        false,
        1,
    );
}

/// Takes a savepoint of the session job at parallelism 2 under the heap backend while
/// sessions are open; returns the input, the output directory and the savepoint.
fn session_savepoint(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (input, _) = write_events(dir, SAVEPOINT_EVENTS, 15);
    let output = dir.join("out");
    let mut cfg = common::config(dir, 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let handle = Job::new(session_job(&input, &output, Vec::new(), GAP), cfg)
        .start()
        .expect("start");
    let started = std::time::Instant::now();
    while common::read_output(&output).len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no session fired while the input was read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(
        first.records < SAVEPOINT_EVENTS,
        "the input ended before the stop"
    );
    (input, output, savepoint)
}

/// The events of the session savepoint tests: at 4,000 per second, 3 s of input to take
/// the savepoint in.
const SAVEPOINT_EVENTS: u64 = 12_000;

/// Open sessions go through a savepoint restored under the other backend at another
/// parallelism, and fire there, each once.
#[test]
fn open_sessions_survive_a_savepoint_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output, savepoint) = session_savepoint(dir.path());
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(session_job(&input, &output, Vec::new(), GAP), cfg)
        .run()
        .expect("restored run");
    assert_eq!(common::read_output(&output), session_model(&input, GAP));
}

/// Sessions are kept whole, so a restore may change the gap; not the lateness (its
/// timers were set for the old one), and not tumbling or sliding windows for sessions.
#[test]
fn a_restore_may_change_the_session_gap_but_not_the_lateness_or_the_kind_of_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, output, savepoint) = session_savepoint(dir.path());
    let restore = || {
        let mut cfg = common::config(dir.path(), 50);
        cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
        cfg
    };
    let later = |graph: JobGraph| {
        Job::new(graph, restore())
            .run()
            .expect_err("refused")
            .to_string()
    };

    let lateness = source("source", FileSource::new(&input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(sessions(GAP))
        .allowed_lateness(Duration::from_millis(1))
        .aggregate("sessions", common::CountEvents)
        .process(
            "check",
            cairn_runtime::function::FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    out.collect((session_id(key, window), count))
                },
            ),
        )
        .sink("sink", common::count_sink(&output));
    let message = later(lateness);
    assert!(
        message.contains("window operator sessions")
            && message.contains("event-time session windows with 0 ms of allowed lateness")
            && message.contains("with 1 ms")
            && message.contains("not supported"),
        "{message}"
    );

    let tumbling = source("source", FileSource::new(&input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(GAP)))
        .aggregate("sessions", common::CountEvents)
        .process(
            "check",
            cairn_runtime::function::FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    out.collect((session_id(key, window), count))
                },
            ),
        )
        .sink("sink", common::count_sink(&output));
    let message = later(tumbling);
    assert!(
        message.contains("operator sessions")
            && message.contains("state window-spec")
            && message.contains("cairn.windows.SessionSpec")
            && message.contains("cairn.windows.WindowSpec"),
        "{message}"
    );

    let mut cfg = restore();
    cfg.parallelism = 2;
    Job::new(session_job(&input, &output, Vec::new(), 2 * GAP), cfg)
        .run()
        .expect("a restore with another gap");
    // Sessions open at the savepoint keep their ends, later ones are longer; every event
    // is counted in one session, once.
    let counted: u64 = common::read_output(&output).values().flatten().sum();
    assert_eq!(counted, SAVEPOINT_EVENTS);
}

/// A source's timestamps serve an assigner of the records' own timestamps
/// (`WatermarkStrategy::for_record_timestamps`) as an extractor would.
#[test]
fn sessions_over_the_sources_own_timestamps() {
    let script = Script {
        stamped: true,
        ..session_script()
    };
    let stream = source("source", script)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_record_timestamps(Duration::ZERO),
        )
        .key_by(|e: &Event| e.0)
        .window(sessions(10))
        .allowed_lateness(Duration::from_millis(5))
        .aggregate("count", CountAndSum);
    let extracted = windowed_by(session_script(), sessions(10)).aggregate("count", CountAndSum);
    let config = || lateness_config(StateBackendConfig::HashMap);
    let expected = run(extracted, config());
    assert_eq!(expected.len(), 6);
    assert_eq!(run(stream, config()), expected);
}
