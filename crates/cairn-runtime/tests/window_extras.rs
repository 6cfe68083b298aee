//! Window extras end to end: count windows (tumbling and sliding) through failures and a
//! savepoint, evictors on event-time windows, continuous event-time triggers, global
//! windows, and the refusals of restores and configurations that cannot work.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::AggregateFunction;
use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, ContinuousEventTimeTrigger, ContinuousProcessingTimeTrigger,
    CountEvictor, DeltaEvictor, EventTimeSessionWindows, EventTimeTrigger, Evictor, FnWindow,
    GlobalWindows, Job, JobConfig, JobGraph, KeyedStream, ProcessingTimeSessionWindows,
    ProcessingTimeTrigger, PurgingTrigger, RestartStrategy, RestoreFrom, SnapshotMode, Source,
    SourceStatus, StateBackendConfig, Stream, TimeEvictor, TimeWindow, TumblingEventTimeWindows,
    WatermarkStrategy, WindowedStream,
};
use common::{CollectWithContext, Stamp};

// ---------------------------------------------------------------------------------------
// Scripted runs (one subtask everywhere: deterministic records and watermarks).
// ---------------------------------------------------------------------------------------

/// `(key, timestamp, value)`.
type Event = (u64, u64, u64);

/// A source that emits its steps in order: a batch of events, or a pause (the source
/// reports nothing to emit once, so its task flushes and its assigner emits the watermark
/// of what came before, deterministically: batches are below the assigner's 64-record
/// check).
#[derive(Clone, Debug)]
struct Script {
    steps: Vec<Option<Vec<Event>>>,
    next: usize,
}

impl Script {
    fn new(steps: Vec<Option<Vec<Event>>>) -> Self {
        Self { steps, next: 0 }
    }
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
                    out.collect(*e)?;
                }
                Ok(SourceStatus::More)
            }
            None => Ok(SourceStatus::Idle),
        }
    }
}

/// One output record as the sink saw it: the record, its timestamp, and the sink's
/// watermark when it arrived (so the watermark before the one that fired it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen<T> {
    record: T,
    timestamp: Option<u64>,
    sink_watermark: Option<u64>,
}

/// Runs `stream` to its end into a collecting sink (one subtask); returns what the sink
/// got, in arrival order. Checks that the sink's timestamp of each record is the record's.
fn run_seen<T: cairn_runtime::Data + std::fmt::Debug>(
    stream: Stream<T>,
    config: JobConfig,
) -> Vec<Seen<T>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let graph = stream
        .process("stamp", Stamp)
        .sink("sink", CollectWithContext(out.clone()));
    Job::new(graph, config).run().expect("job");
    let written = std::mem::take(&mut *out.lock().expect("lock"));
    written
        .into_iter()
        .map(|((record, timestamp), context)| {
            assert_eq!(
                context.timestamp, timestamp,
                "the sink's timestamp of {record:?}"
            );
            Seen {
                record,
                timestamp,
                sink_watermark: context.watermark,
            }
        })
        .collect()
}

/// [`run_seen`], sorted, without the sink's watermarks: `(record, timestamp)`.
fn run_sorted<T: cairn_runtime::Data + Ord + std::fmt::Debug>(
    stream: Stream<T>,
    config: JobConfig,
) -> Vec<(T, Option<u64>)> {
    let mut out: Vec<_> = run_seen(stream, config)
        .into_iter()
        .map(|s| (s.record, s.timestamp))
        .collect();
    out.sort();
    out
}

/// One subtask, a watermark at every pause.
fn script_config(backend: StateBackendConfig) -> JobConfig {
    JobConfig {
        backend,
        parallelism: 1,
        auto_watermark_interval: Duration::from_nanos(1),
        ..JobConfig::default()
    }
}

/// The script's events keyed, with their timestamps as event time (no out-of-orderness:
/// the watermark at a pause is the largest timestamp so far less 1 ms).
fn keyed(script: Script) -> KeyedStream<u64, Event> {
    source("source", script)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0)
}

fn w(start: u64, end: u64) -> TimeWindow {
    TimeWindow { start, end }
}

fn backends() -> [StateBackendConfig; 2] {
    [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()]
}

/// A process window function emitting `(key, window, the events' values)` in the order
/// it got them.
fn list_values(
    key: &u64,
    window: TimeWindow,
    events: Vec<Event>,
    out: &mut Collector<'_, (u64, TimeWindow, Vec<u64>)>,
) -> cairn_runtime::Result<()> {
    let values = events.iter().map(|e| e.2).collect();
    out.collect((*key, window, values))
}

/// Adds values (keeping the key and the latest timestamp).
fn sum(a: Event, b: Event) -> Event {
    (a.0, a.1.max(b.1), a.2 + b.2)
}

/// Counts and sums values.
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

// ---------------------------------------------------------------------------------------
// 3. Evictors on event-time tumbling windows.
// ---------------------------------------------------------------------------------------

/// The evictor script: tumbling 10 ms windows, 10 ms of allowed lateness.
/// - Key 1 gets, in this order, 1 at 5, 2 at 2, 4 at 8, 8 at 1 (`[0, 10)`, arrival order
///   not time order) and 16 at 15 (`[10, 20)`); key 2 gets 100 at 3. The pause's
///   watermark (14) fires `[0, 10)` of both keys.
/// - Key 1 gets 32 at 11, then 128 at 9: late for `[0, 10)` but within its lateness (kept
///   until 19), so it fires again at once; then 64 at 19.
/// - The end of the input fires `[10, 20)`: 16, 32, 64 (timestamps 15, 11, 19).
fn evictor_script() -> Script {
    Script::new(vec![
        Some(vec![
            (1, 5, 1),
            (1, 2, 2),
            (1, 8, 4),
            (2, 3, 100),
            (1, 1, 8),
            (1, 15, 16),
        ]),
        None,
        Some(vec![(1, 11, 32), (1, 9, 128), (1, 19, 64)]),
        None,
    ])
}

fn evicting(evictor: Option<Evictor<Event>>) -> WindowedStream<u64, Event> {
    let windowed = keyed(evictor_script())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .allowed_lateness(Duration::from_millis(10));
    match evictor {
        Some(e) => windowed.evictor(e),
        None => windowed,
    }
}

/// A process window function's result: `(key, window, values)`.
type Listed = (u64, TimeWindow, Vec<u64>);

/// Each window's process results (values as its function saw them), sorted, with the
/// window's last millisecond as timestamp.
fn processed(
    evictor: Option<Evictor<Event>>,
    backend: &StateBackendConfig,
) -> Vec<(Listed, Option<u64>)> {
    run_sorted(
        evicting(evictor).process("list", FnWindow(list_values)),
        script_config(backend.clone()),
    )
}

/// Each window's reduced sums, sorted: `(key, window, sum, timestamp)`.
fn reduced(
    evictor: Option<Evictor<Event>>,
    backend: &StateBackendConfig,
) -> Vec<(u64, TimeWindow, u64, Option<u64>)> {
    run_sorted(
        evicting(evictor).reduce("sum", sum),
        script_config(backend.clone()),
    )
    .into_iter()
    .map(|((k, window, (_, _, s)), t)| (k, window, s, t))
    .collect()
}

/// `(key, window, values, timestamp)` rows of the evictor tests' expectations: key 1's
/// `[0, 10)` firing and late firing, its `[10, 20)`, and key 2's `[0, 10)`.
fn expect_lists(first: &[u64], late: &[u64], second: &[u64]) -> Vec<(Listed, Option<u64>)> {
    vec![
        ((1, w(0, 10), first.to_vec()), Some(9)),
        ((1, w(0, 10), late.to_vec()), Some(9)),
        ((1, w(10, 20), second.to_vec()), Some(19)),
        ((2, w(0, 10), vec![100]), Some(9)),
    ]
}

fn expect_sums(first: u64, late: u64, second: u64) -> Vec<(u64, TimeWindow, u64, Option<u64>)> {
    vec![
        (1, w(0, 10), first, Some(9)),
        (1, w(0, 10), late, Some(9)),
        (1, w(10, 20), second, Some(19)),
        (2, w(0, 10), 100, Some(9)),
    ]
}

/// Without an evictor (the baseline), then count evictors of 2 before and after the
/// function: before, the function sees a window's last 2 records in arrival order (not
/// timestamp order), and what it evicted is gone for good (the late firing sees the 2
/// kept plus the late record, evicted again to 2); after, the function sees everything
/// and the late firing sees what the eviction after the first firing kept, plus the late
/// record. Process, reduce and aggregate, under both backends.
#[test]
fn count_evictors_before_and_after_the_function_on_tumbling_windows() {
    for backend in backends() {
        assert_eq!(
            processed(None, &backend),
            expect_lists(&[1, 2, 4, 8], &[1, 2, 4, 8, 128], &[16, 32, 64]),
            "no evictor under {backend:?}"
        );
        assert_eq!(
            processed(Some(CountEvictor::of(2)), &backend),
            expect_lists(&[4, 8], &[8, 128], &[32, 64]),
            "count evictor before, process, under {backend:?}"
        );
        assert_eq!(
            reduced(Some(CountEvictor::of(2)), &backend),
            expect_sums(4 + 8, 8 + 128, 32 + 64),
            "count evictor before, reduce, under {backend:?}"
        );
        assert_eq!(
            processed(Some(CountEvictor::of(2).evict_after()), &backend),
            expect_lists(&[1, 2, 4, 8], &[4, 8, 128], &[16, 32, 64]),
            "count evictor after, process, under {backend:?}"
        );
        assert_eq!(
            reduced(Some(CountEvictor::of(2).evict_after()), &backend),
            expect_sums(15, 4 + 8 + 128, 16 + 32 + 64),
            "count evictor after, reduce, under {backend:?}"
        );
        let aggregated = run_sorted(
            evicting(Some(CountEvictor::of(2))).aggregate("count", CountAndSum),
            script_config(backend.clone()),
        );
        assert_eq!(
            aggregated,
            vec![
                ((1, w(0, 10), (2, 12)), Some(9)),
                ((1, w(0, 10), (2, 136)), Some(9)),
                ((1, w(10, 20), (2, 96)), Some(19)),
                ((2, w(0, 10), (1, 100)), Some(9)),
            ],
            "count evictor before, aggregate, under {backend:?}"
        );
    }
}

/// A time evictor of 3 ms keeps the records whose timestamps are after the window's
/// latest less 3 ms: `[0, 10)` of key 1 (timestamps 5, 2, 8, 1) keeps 4 (at 8); with the
/// late 128 (at 9) it keeps 4 and 128; `[10, 20)` (15, 11, 19) keeps 64 (at 19). After the
/// function, the function sees everything first, then the late firing what was kept.
/// A delta evictor of 5 on the values drops what is 5 or more from the last record's.
#[test]
fn time_and_delta_evictors_on_tumbling_windows() {
    for backend in backends() {
        let time = || TimeEvictor::of(Duration::from_millis(3));
        assert_eq!(
            processed(Some(time()), &backend),
            expect_lists(&[4], &[4, 128], &[64]),
            "time evictor before, process, under {backend:?}"
        );
        assert_eq!(
            reduced(Some(time()), &backend),
            expect_sums(4, 132, 64),
            "time evictor before, reduce, under {backend:?}"
        );
        assert_eq!(
            processed(Some(time().evict_after()), &backend),
            expect_lists(&[1, 2, 4, 8], &[4, 128], &[16, 32, 64]),
            "time evictor after, process, under {backend:?}"
        );
        let delta = DeltaEvictor::of(5.0, |a: &Event, b: &Event| a.2.abs_diff(b.2) as f64);
        assert_eq!(
            processed(Some(delta), &backend),
            expect_lists(&[4, 8], &[128], &[64]),
            "delta evictor before, process, under {backend:?}"
        );
    }
}

/// A custom evictor (Flink's `Evictor` interface) that drops the values leaving 2 modulo
/// 3 (2, 8, 32 and 128): before the function, key 1's `[0, 10)` sees 1 and 4, then its
/// late firing the same (128 went); after it, the function sees each window whole once and
/// the late firing what was kept plus 128.
#[test]
fn a_custom_evictor_before_and_after_the_function() {
    let custom = || {
        Evictor::custom(|elements: &mut Vec<(Option<u64>, Event)>| {
            elements.retain(|(_, e)| e.2 % 3 != 2)
        })
    };
    for backend in backends() {
        assert_eq!(
            processed(Some(custom()), &backend),
            expect_lists(&[1, 4], &[1, 4], &[16, 64]),
            "custom evictor before, process, under {backend:?}"
        );
        assert_eq!(
            processed(Some(custom().evict_after()), &backend),
            expect_lists(&[1, 2, 4, 8], &[1, 4, 128], &[16, 32, 64]),
            "custom evictor after, process, under {backend:?}"
        );
        assert_eq!(
            reduced(Some(custom()), &backend),
            expect_sums(5, 5, 80),
            "custom evictor before, reduce, under {backend:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Continuous event-time triggers.
// ---------------------------------------------------------------------------------------

/// The continuous trigger script (tumbling 100 ms windows, early firings every 20 ms);
/// the watermarks of its pauses are 11, 24, 86, 129, 149, 155 and 184.
/// - Key 1: 1 at 5, 2 at 12 (first early firing due at 20); key 2: 100 at 7.
/// - 4 at 25; watermark 24: `[0, 100)` fires early (key 1: 7, key 2: 100); next at 40.
/// - 8 at 87; watermark 86 jumps over 40, 60 and 80: one early firing each (15, 100); the
///   next (100) is not before the window's end, so none is scheduled.
/// - 16 at 130 (`[100, 200)`, early firing due at 140); watermark 129: `[0, 100)` ends
///   (15, 100).
/// - 32 at 150; watermark 149: early firing (48), next at 160.
/// - Key 4: 5000 at 130, behind the watermark (149) but in an open window: its first
///   early firing is after the watermark (160), not after its time (140); key 5: 7 at 156
///   (also 160). Watermark 155: nothing fires.
/// - 64 at 170, key 3 1000 at 185 (its first multiple after 185 is 200: none early);
///   watermark 184: early firings at 160 (key 1: 112, key 4: 5000, key 5: 7).
/// - The end of the input: `[100, 200)` ends (keys 1, 3, 4, 5).
fn continuous_script() -> Script {
    Script::new(vec![
        Some(vec![(1, 5, 1), (1, 12, 2), (2, 7, 100)]),
        None,
        Some(vec![(1, 25, 4)]),
        None,
        Some(vec![(1, 87, 8)]),
        None,
        Some(vec![(1, 130, 16)]),
        None,
        Some(vec![(1, 150, 32)]),
        None,
        Some(vec![(4, 130, 5000), (5, 156, 7)]),
        None,
        Some(vec![(1, 170, 64), (3, 185, 1000)]),
        None,
    ])
}

/// Each key's firings in the order the sink got them: `(window, result, the sink's
/// watermark then)`; every result's timestamp is its window's last millisecond.
fn by_key<V: Clone>(
    seen: &[Seen<(u64, TimeWindow, V)>],
) -> BTreeMap<u64, Vec<(TimeWindow, V, u64)>> {
    let mut out: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for s in seen {
        let (key, window, value) = &s.record;
        assert_eq!(
            s.timestamp,
            Some(window.max_timestamp()),
            "timestamp of a result"
        );
        let watermark = s
            .sink_watermark
            .expect("a watermark came before every result");
        out.entry(*key)
            .or_default()
            .push((*window, value.clone(), watermark));
    }
    out
}

/// A continuous event-time trigger of 20 ms on tumbling 100 ms windows fires each window
/// early with its running sum at the first multiple of 20 after its first record, then
/// at each pause whose watermark passes the next multiple, once however many multiples it
/// passes, never at or after the window's end, and at the end. The sink's watermark is
/// the one before the watermark that fired the result. Under both backends.
#[test]
fn a_continuous_event_time_trigger_fires_early_at_known_watermarks() {
    let (w0, w1) = (w(0, 100), w(100, 200));
    for backend in backends() {
        let seen = run_seen(
            keyed(continuous_script())
                .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
                .trigger(ContinuousEventTimeTrigger::of(Duration::from_millis(20)))
                .reduce("sum", sum),
            script_config(backend.clone()),
        );
        let sums: Vec<_> = seen
            .iter()
            .map(|s| Seen {
                record: (s.record.0, s.record.1, s.record.2 .2),
                timestamp: s.timestamp,
                sink_watermark: s.sink_watermark,
            })
            .collect();
        let got = by_key(&sums);
        let expected = BTreeMap::from([
            (
                1,
                vec![
                    (w0, 7, 11),    // early at watermark 24 (multiple 20)
                    (w0, 15, 24),   // early at watermark 86 (40, 60, 80: once)
                    (w0, 15, 86),   // the end, at watermark 129
                    (w1, 48, 129),  // early at watermark 149 (140)
                    (w1, 112, 155), // early at watermark 184 (160)
                    (w1, 112, 184), // the end, at the end of the input
                ],
            ),
            (2, vec![(w0, 100, 11), (w0, 100, 24), (w0, 100, 86)]),
            (3, vec![(w1, 1000, 184)]),
            (4, vec![(w1, 5000, 155), (w1, 5000, 184)]),
            (5, vec![(w1, 7, 155), (w1, 7, 184)]),
        ]);
        assert_eq!(got, expected, "under {backend:?}");
    }
}

/// Under a purging continuous trigger, each firing has what came since the last; after an
/// early firing purges a window, its early firings stop until its next record, which
/// schedules the next (key 1's 64 at 170 is fired early at 180, by watermark 184, rather
/// than at the end). An end firing of an emptied window emits nothing.
#[test]
fn a_purging_continuous_event_time_trigger_fires_what_came_since_the_last_firing() {
    let (w0, w1) = (w(0, 100), w(100, 200));
    for backend in backends() {
        let seen = run_seen(
            keyed(continuous_script())
                .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
                .trigger(PurgingTrigger::of(ContinuousEventTimeTrigger::of(
                    Duration::from_millis(20),
                )))
                .process("list", FnWindow(list_values)),
            script_config(backend.clone()),
        );
        let expected = BTreeMap::from([
            (
                1,
                vec![
                    (w0, vec![1, 2, 4], 11), // early at watermark 24, purged
                    (w0, vec![8], 86),       // the end (87 came after the purge)
                    (w1, vec![16, 32], 129), // early at watermark 149 (140)
                    (w1, vec![64], 155),     // early at watermark 184 (180)
                ],
            ),
            (2, vec![(w0, vec![100], 11)]),
            (3, vec![(w1, vec![1000], 184)]),
            (4, vec![(w1, vec![5000], 155)]),
            (5, vec![(w1, vec![7], 155)]),
        ]);
        assert_eq!(by_key(&seen), expected, "under {backend:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Global windows.
// ---------------------------------------------------------------------------------------

/// Global windows with an event-time trigger fire once per key, at the end of the input,
/// with everything (the pauses' watermarks do not fire them), stamped `u64::MAX - 1`;
/// with no trigger they never fire. With a continuous event-time trigger of 20 ms they
/// fire early as tumbling windows do but never stop (each firing schedules the next after
/// the watermark, with or without new records), and at the end of the input both the
/// pending early firing (at 200) and the end firing.
#[test]
fn global_windows_with_an_event_time_trigger_fire_once_at_the_end_of_the_input() {
    let global = TimeWindow::GLOBAL;
    let end = Some(u64::MAX - 1);
    for backend in backends() {
        let reduced = run_sorted(
            keyed(continuous_script())
                .window(GlobalWindows::create())
                .trigger(EventTimeTrigger::create())
                .reduce("sum", sum),
            script_config(backend.clone()),
        );
        let sums: Vec<_> = reduced
            .into_iter()
            .map(|((k, window, (_, _, s)), t)| (k, window, s, t))
            .collect();
        assert_eq!(
            sums,
            vec![
                (1, global, 127, end),
                (2, global, 100, end),
                (3, global, 1000, end),
                (4, global, 5000, end),
                (5, global, 7, end),
            ],
            "event-time trigger under {backend:?}"
        );

        let never = run_sorted(
            keyed(continuous_script())
                .window(GlobalWindows::create())
                .process("list", FnWindow(list_values)),
            script_config(backend.clone()),
        );
        assert_eq!(never, vec![], "the default trigger under {backend:?}");

        let seen = run_seen(
            keyed(continuous_script())
                .window(GlobalWindows::create())
                .trigger(ContinuousEventTimeTrigger::of(Duration::from_millis(20)))
                .reduce("sum", sum),
            script_config(backend.clone()),
        );
        let sums: Vec<_> = seen
            .iter()
            .map(|s| Seen {
                record: (s.record.0, s.record.1, s.record.2 .2),
                timestamp: s.timestamp,
                sink_watermark: s.sink_watermark,
            })
            .collect();
        let expected = BTreeMap::from([
            (
                1,
                vec![
                    (global, 7, 11),    // at 20, watermark 24
                    (global, 15, 24),   // at 40, watermark 86
                    (global, 31, 86),   // at 100, watermark 129
                    (global, 63, 129),  // at 140, watermark 149
                    (global, 127, 155), // at 160, watermark 184
                    (global, 127, 184), // at 200, the end of the input
                    (global, 127, 184), // the end of the input
                ],
            ),
            // Without records, key 2's early firings go on at each watermark past the
            // next multiple: the window never ends.
            (
                2,
                vec![
                    (global, 100, 11),
                    (global, 100, 24),
                    (global, 100, 86),
                    (global, 100, 129),
                    (global, 100, 155),
                    (global, 100, 184),
                    (global, 100, 184),
                ],
            ),
            (3, vec![(global, 1000, 184), (global, 1000, 184)]),
            // 5000 at 130 came at watermark 149: first early firing at 160, not 140.
            (
                4,
                vec![
                    (global, 5000, 155),
                    (global, 5000, 184),
                    (global, 5000, 184),
                ],
            ),
            (
                5,
                vec![(global, 7, 155), (global, 7, 184), (global, 7, 184)],
            ),
        ]);
        assert_eq!(
            by_key(&sums),
            expected,
            "continuous trigger under {backend:?}"
        );
    }
}

/// A processing-time trigger on global windows would never fire: the job fails at once
/// with a configuration error naming the operator.
#[test]
fn global_windows_refuse_a_processing_time_trigger() {
    let graph = keyed(continuous_script())
        .window(GlobalWindows::create())
        .trigger(ProcessingTimeTrigger::create())
        .reduce("global-sum", sum)
        .sink("sink", common::Collect(Arc::new(Mutex::new(Vec::new()))));
    let err = Job::new(graph, script_config(StateBackendConfig::HashMap))
        .run()
        .expect_err("a processing-time trigger on global windows");
    let message = err.to_string();
    assert!(
        matches!(err, cairn_runtime::RuntimeError::Config(_)),
        "not a configuration error: {err:?}"
    );
    assert!(
        message.contains("window operator global-sum")
            && message.contains("a processing-time trigger on global windows never fires")
            && message.contains("use a count or continuous trigger"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Continuous triggers on sessions.
// ---------------------------------------------------------------------------------------

/// Continuous triggers on session windows (event or processing time) are configuration
/// errors naming the operator and the trigger.
#[test]
fn continuous_triggers_on_session_windows_are_refused() {
    let cases = [
        (
            keyed(continuous_script())
                .window(EventTimeSessionWindows::with_gap(Duration::from_millis(10)))
                .trigger(ContinuousEventTimeTrigger::of(Duration::from_millis(20))),
            "a continuous event-time trigger every 20ms on session windows is not supported",
        ),
        (
            keyed(continuous_script())
                .window(ProcessingTimeSessionWindows::with_gap(
                    Duration::from_millis(10),
                ))
                .trigger(PurgingTrigger::of(ContinuousProcessingTimeTrigger::of(
                    Duration::from_millis(20),
                ))),
            "a purging trigger of a continuous processing-time trigger every 20ms on session \
             windows is not supported",
        ),
    ];
    for (windowed, what) in cases {
        let graph = windowed
            .reduce("sessions", sum)
            .sink("sink", common::Collect(Arc::new(Mutex::new(Vec::new()))));
        let err = Job::new(graph, script_config(StateBackendConfig::HashMap))
            .run()
            .expect_err("a continuous trigger on sessions");
        let message = err.to_string();
        assert!(
            matches!(err, cairn_runtime::RuntimeError::Config(_)),
            "not a configuration error: {err:?}"
        );
        assert!(
            message.contains("window operator sessions") && message.contains(what),
            "{message}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 1, 2. Count windows from a file, through failures and a savepoint.
// ---------------------------------------------------------------------------------------

/// Writes `lines` lines `key n` into `dir/events.txt`: line `n` (from 0) has a key drawn
/// from `keys` (deterministic, unevenly); returns the path and each key's line numbers in
/// the order of the file.
fn write_keyed_lines(dir: &Path, lines: u64, keys: u64) -> (PathBuf, BTreeMap<u64, Vec<u64>>) {
    let mut text = String::new();
    let mut per_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for n in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Key k is drawn about k + 1 times as often as key 0.
        let r = (x >> 20) % (keys * (keys + 1) / 2);
        let key = (0..keys).find(|k| r < (k + 1) * (k + 2) / 2).unwrap_or(0);
        text.push_str(&format!("{key} {n}\n"));
        per_key.entry(key).or_default().push(n);
    }
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    (path, per_key)
}

/// An output line's label: the key and the last line of the firing.
fn label(key: u64, last: u64) -> String {
    format!("{key}/{last}")
}

fn render(lines: &[u64]) -> String {
    lines
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `count_window(n)`: per key, its lines in consecutive groups of `n` in arrival order;
/// the last `len % n` are never emitted.
fn tumbling_count_model(
    per_key: &BTreeMap<u64, Vec<u64>>,
    n: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut model = BTreeMap::new();
    for (key, lines) in per_key {
        for group in lines.chunks_exact(n) {
            model.insert(label(*key, group[n - 1]), vec![render(group)]);
        }
    }
    model
}

/// `count_window_sliding(size, slide)`: per key, at each `slide`-th line, its last `size`
/// lines (fewer at the start).
fn sliding_count_model(
    per_key: &BTreeMap<u64, Vec<u64>>,
    size: usize,
    slide: usize,
) -> BTreeMap<String, Vec<String>> {
    let mut model = BTreeMap::new();
    for (key, lines) in per_key {
        for i in (slide..=lines.len()).step_by(slide) {
            let window = &lines[i.saturating_sub(size)..i];
            model.insert(label(*key, lines[i - 1]), vec![render(window)]);
        }
    }
    model
}

/// The two-phase file sink of `label\tlines` lines.
fn line_sink(output: &Path) -> TwoPhaseFileSink<(String, String)> {
    TwoPhaseFileSink::new(output, |(l, v): &(String, String), o: &mut Vec<u8>| {
        o.extend_from_slice(format!("{l}\t{v}").as_bytes())
    })
}

/// Every committed line of [`line_sink`]'s directory: label → its values (one per line).
fn read_lines(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.expect("dir entry");
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read output");
        for line in text.lines() {
            let (l, v) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            out.entry(l.to_string()).or_default().push(v.to_string());
        }
    }
    out
}

/// Collects the lines (`(key, line)` events) of a window, in order.
#[derive(Clone, Debug)]
struct Lines;

impl AggregateFunction<(u64, u64), Vec<u64>, Vec<u64>> for Lines {
    fn create_accumulator(&self) -> Vec<u64> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<u64>, (_, line): (u64, u64)) {
        acc.push(line);
    }
    fn result(&self, acc: &Vec<u64>) -> Vec<u64> {
        acc.clone()
    }
}

/// A process window function listing the lines of a window.
fn list_lines(
    key: &u64,
    window: TimeWindow,
    events: Vec<(u64, u64)>,
    out: &mut Collector<'_, (u64, TimeWindow, Vec<u64>)>,
) -> cairn_runtime::Result<()> {
    out.collect((*key, window, events.iter().map(|e| e.1).collect()))
}

/// Labels a count window's lines, marking a result not of the global window or not
/// stamped with its last millisecond.
fn check_global(
    (key, window, lines): (u64, TimeWindow, Vec<u64>),
    out: &mut Collector<'_, (String, String)>,
) -> cairn_runtime::Result<()> {
    let last = lines.last().copied().unwrap_or(u64::MAX);
    let text = if window != TimeWindow::GLOBAL {
        format!("BROKEN: window {window:?}")
    } else if out.timestamp() != Some(u64::MAX - 1) {
        format!("BROKEN: timestamp {:?}", out.timestamp())
    } else {
        render(&lines)
    };
    out.collect((label(key, last), text))
}

#[derive(Clone, Copy, Debug)]
enum Counting {
    /// `count_window(n)` with a process window function.
    Tumbling(u64),
    /// `count_window_sliding(size, slide)` with an aggregate.
    Sliding(u64, u64),
}

/// source → parse (one subtask: each key's lines in file order) → key_by → count windows
/// ("counts", at the job's parallelism) → check → sink.
fn count_job(input: &Path, output: &Path, fail_at: Vec<u64>, counting: Counting) -> JobGraph {
    let keyed = source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(fail_at))
        .parallelism(1)
        .key_by(|(key, _): &(u64, u64)| *key);
    let results = match counting {
        Counting::Tumbling(n) => keyed
            .count_window(n)
            .process("counts", FnWindow(list_lines)),
        Counting::Sliding(size, slide) => keyed
            .count_window_sliding(size, slide)
            .aggregate("counts", Lines),
    };
    results
        .process("check", FnProcess(check_global))
        .sink("sink", line_sink(output))
}

const COUNT_LINES: u64 = 3_000;
const COUNT_KEYS: u64 = 7;
const N: u64 = 5;
const SIZE: u64 = 5;
const SLIDE: u64 = 2;

/// Two failures between checkpoints; the committed firings are the model's, each once.
fn count_windows_across_failures(
    counting: Counting,
    backend: StateBackendConfig,
    mode: SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, per_key) = write_keyed_lines(dir.path(), COUNT_LINES, COUNT_KEYS);
    let model = match counting {
        Counting::Tumbling(n) => tumbling_count_model(&per_key, n as usize),
        Counting::Sliding(size, slide) => {
            sliding_count_model(&per_key, size as usize, slide as usize)
        }
    };
    let output = dir.path().join("out");
    let mut cfg = common::failure_config(dir.path(), backend, parallelism, unaligned, 4_000);
    cfg.checkpoint.snapshot_mode = mode;
    let job = count_job(&input, &output, vec![1_000, 2_200], counting);
    let result = Job::new(job, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "the injected failures did not happen");
    let got = read_lines(&output);
    assert_eq!(got.len(), model.len(), "firings");
    assert_eq!(got, model);
    if let Counting::Tumbling(n) = counting {
        // The input's end does not fire what a count window holds.
        let emitted: BTreeSet<u64> = got
            .values()
            .flatten()
            .flat_map(|v| v.split(',').map(|l| l.parse::<u64>().expect("line")))
            .collect();
        let mut leftovers = 0;
        for lines in per_key.values() {
            let rest = &lines[lines.len() - lines.len() % n as usize..];
            leftovers += rest.len();
            for l in rest {
                assert!(!emitted.contains(l), "leftover line {l} was emitted");
            }
        }
        assert!(
            leftovers > 0,
            "the input leaves no key with a partial window"
        );
        assert_eq!(emitted.len() + leftovers, COUNT_LINES as usize);
    }
}

/// `count_window(5)` with a process window function: each key's lines in consecutive
/// groups of 5, in order, exactly once through two failures, the leftovers never; heap,
/// full aligned checkpoints, the windows at parallelism 2.
#[test]
fn heap_count_windows_are_exactly_once_across_failures() {
    count_windows_across_failures(
        Counting::Tumbling(N),
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
        false,
        2,
    );
}

/// [`heap_count_windows_are_exactly_once_across_failures`] under RocksDB with incremental
/// unaligned checkpoints, the windows at parallelism 3.
#[test]
fn rocksdb_count_windows_are_exactly_once_across_failures() {
    count_windows_across_failures(
        Counting::Tumbling(N),
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        true,
        3,
    );
}

/// `count_window_sliding(5, 2)` with an aggregate (an evicting global window): every 2
/// lines of a key, its last 5, exactly once through two failures; RocksDB, incremental
/// aligned checkpoints, the windows at parallelism 3.
#[test]
fn sliding_count_windows_are_exactly_once_across_failures() {
    count_windows_across_failures(
        Counting::Sliding(SIZE, SLIDE),
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        false,
        3,
    );
}

/// Waits (up to 20 s) until `output` holds committed lines.
fn wait_for_lines(output: &Path) {
    let started = std::time::Instant::now();
    while read_lines(output).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was committed in 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sliding count windows through a failure, then a savepoint under the heap backend at
/// parallelism 2, restored under RocksDB at parallelism 3 through another failure: the
/// counts, the kept records and their eviction are keyed state, so the committed firings
/// are the model's, each once.
#[test]
fn sliding_count_windows_survive_a_savepoint_under_the_other_backend_and_parallelism() {
    const LINES: u64 = 4_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, per_key) = write_keyed_lines(dir.path(), LINES, COUNT_KEYS);
    let model = sliding_count_model(&per_key, SIZE as usize, SLIDE as usize);
    let output = dir.path().join("out");
    let job = |fail_at| count_job(&input, &output, fail_at, Counting::Sliding(SIZE, SLIDE));

    let mut cfg = common::config(dir.path(), 30);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.restart = RestartStrategy::fixed_delay(2, Duration::from_millis(10));
    let handle = Job::new(job(vec![600]), cfg).start().expect("start");
    while handle.records_read() < 1_500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for_lines(&output);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 1, "{first:?}");
    assert!(first.records < LINES, "the input ended before the stop");
    assert!(
        !read_lines(&output).is_empty() && read_lines(&output).len() < model.len(),
        "the first run committed part of the output"
    );

    let mut cfg = common::config(dir.path(), 30);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    cfg.records_per_second = Some(4_000);
    cfg.restart = RestartStrategy::fixed_delay(2, Duration::from_millis(10));
    let second = Job::new(job(vec![1_000]), cfg).run().expect("restored run");
    assert_eq!(second.restarts, 1, "{second:?}");
    assert_eq!(read_lines(&output), model);
}

// ---------------------------------------------------------------------------------------
// 6. Refused restores.
// ---------------------------------------------------------------------------------------

/// The window operators of the restore tests, all with uid "windows".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    /// Tumbling 1 h event-time windows reducing (no evictor).
    Reduce,
    /// The same with a count evictor of 2.
    ReduceEvicting,
    /// Tumbling 1 h event-time windows listing their lines (no evictor).
    Process,
    /// The same with a count evictor of 2.
    ProcessEvicting,
    /// `count_window(3)` reducing.
    CountWindow,
}

/// source → parse → timestamps (the line number) → key_by → `op` as "windows" → sink of
/// `key/window` and the result. The input's lines are all in the first hour: no window
/// fires before the end of the input.
fn restore_job(input: &Path, output: &Path, op: Operator) -> JobGraph {
    let keyed = source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, line): &(u64, u64)| *line),
        )
        .key_by(|(key, _): &(u64, u64)| *key);
    let hour = || TumblingEventTimeWindows::of(Duration::from_secs(3_600));
    let max = |a: (u64, u64), b: (u64, u64)| (a.0, a.1.max(b.1));
    let lines: Stream<(u64, TimeWindow, Vec<u64>)> = match op {
        Operator::Reduce => keyed
            .window(hour())
            .reduce("windows", max)
            .map("as-list", |(k, w, (_, l))| (k, w, vec![l])),
        Operator::ReduceEvicting => keyed
            .window(hour())
            .evictor(CountEvictor::of(2))
            .reduce("windows", max)
            .map("as-list", |(k, w, (_, l))| (k, w, vec![l])),
        Operator::Process => keyed
            .window(hour())
            .process("windows", FnWindow(list_lines)),
        Operator::ProcessEvicting => keyed
            .window(hour())
            .evictor(CountEvictor::of(2))
            .process("windows", FnWindow(list_lines)),
        Operator::CountWindow => keyed
            .count_window(3)
            .reduce("windows", max)
            .map("as-list", |(k, w, (_, l))| (k, w, vec![l])),
    };
    lines
        .map("label", |(k, w, l): (u64, TimeWindow, Vec<u64>)| {
            (format!("{k}/{w}"), render(&l))
        })
        .sink("sink", line_sink(output))
}

/// Takes a savepoint of `op` part way through `input` (open windows, nothing fired).
fn savepoint_of(dir: &Path, input: &Path, op: Operator) -> String {
    let mut cfg = common::config(dir, 30);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(3_000);
    let output = dir.join(format!("before-{op:?}"));
    let handle = Job::new(restore_job(input, &output, op), cfg)
        .start()
        .expect("start");
    while handle.records_read() < 400 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(first.records < 2_000, "the input ended before the stop");
    assert_eq!(read_lines(&output), BTreeMap::new(), "a window fired early");
    savepoint
}

/// Restores `savepoint` under `op`; the error, or a panic naming what ran instead.
fn refused(dir: &Path, input: &Path, savepoint: &str, op: Operator) -> String {
    let mut cfg = common::config(dir, 30);
    cfg.restore = Some(RestoreFrom::Path(savepoint.to_string()));
    let output = dir.join(format!("after-{op:?}"));
    match Job::new(restore_job(input, &output, op), cfg).run() {
        Err(e) => e.to_string(),
        Ok(result) => panic!(
            "the restore under {op:?} was not refused: {result:?}, output {:?}",
            read_lines(&output)
        ),
    }
}

/// The refusal of a restore that adds an evictor: it names the operator, both, and the
/// way out.
fn assert_adds_an_evictor(message: &str) {
    assert!(
        message.contains("window operator windows: its state holds windows without an evictor")
            && message.contains("this program asks for windows with an evictor")
            && message.contains("give the operator another uid"),
        "{message}"
    );
}

/// A savepoint of windows without an evictor restored into the same windows with one
/// (same uid) is refused, naming the operator and both; so is one of
/// tumbling windows restored as count windows (naming the windows' spec state and both
/// kinds). Restored unchanged, the windows hold what came before the savepoint.
#[test]
fn restores_that_add_an_evictor_or_change_to_count_windows_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, per_key) = write_keyed_lines(dir.path(), 2_000, 3);

    let reduce = savepoint_of(dir.path(), &input, Operator::Reduce);
    let message = refused(dir.path(), &input, &reduce, Operator::ReduceEvicting);
    assert_adds_an_evictor(&message);
    let message = refused(dir.path(), &input, &reduce, Operator::CountWindow);
    assert!(
        message.contains("state window-spec of operator windows")
            && message.contains("stored cairn.windows.WindowSpec")
            && message.contains("registered cairn.windows.GlobalSpec"),
        "{message}"
    );

    let process = savepoint_of(dir.path(), &input, Operator::Process);
    let message = refused(dir.path(), &input, &process, Operator::ProcessEvicting);
    assert_adds_an_evictor(&message);

    // Unchanged, the restore goes through: each key's one window, all its lines in order.
    let mut cfg = common::config(dir.path(), 30);
    cfg.restore = Some(RestoreFrom::Path(process));
    let output = dir.path().join("unchanged");
    Job::new(restore_job(&input, &output, Operator::Process), cfg)
        .run()
        .expect("restored unchanged");
    let model: BTreeMap<String, Vec<String>> = per_key
        .iter()
        .map(|(k, lines)| (format!("{k}/{}", w(0, 3_600_000)), vec![render(lines)]))
        .collect();
    assert_eq!(read_lines(&output), model);
}
