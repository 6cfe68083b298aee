//! Event time end to end: watermarks through two keyed stages, event-time timers, and their
//! fate across failures, savepoints, backend switches and rescaling.
//!
//! The job counts events in tumbling one-second windows of event time, per key and then
//! per window:
//! - `windows` (keyed by the event's key) adds each event to its window's count and fires
//!   an event-time timer at the window's last millisecond, which emits `(window, key,
//!   count)`;
//! - `totals` (keyed by window) adds those per-key counts up and fires its own timer at
//!   the same time, which emits `(window, total)`.
//!
//! `totals` sees the watermark only after `windows` has fired its timers up to it (a
//! keyed operator fires, then forwards), so each window's total is complete when it
//! fires, and is emitted once. The input's disorder (each source subtask's lines are at
//! most 250 ms out of order) is within the strategy's bound (300 ms), so no event is late.
//! Either function emits a marker on a late event or a window that fires twice, which the
//! exact comparison with the model catches; so would a watermark forwarded ahead of the
//! records or timer output before it, or a timer lost or fired twice across a restore.
//!
//! Both functions also check the timestamps records carry ([`Collector::timestamp`]): an
//! event has the assigner's (its own time) in `windows`, through the exchange (and, in the
//! unaligned test, through in-flight storage and replay); a count has its event-time
//! timer's time in `totals`, through a chained function and another exchange. A record
//! without its timestamp, or with another, counts as broken.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{KeyedStateBackend, MapStateDescriptor, MapStateId};
use cairn_runtime::sources::{FileSource, GeneratorSource};
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobGraph, KeyedProcessFunction,
    ProcessFunction, RestoreFrom, Sink, SnapshotContext, SnapshotMode, StateBackendConfig,
    TimeDomain, Timer, TimerService, WatermarkStrategy,
};

const WINDOW: u64 = 1_000;
/// A window total that marks a late event or a window that fired twice.
const BROKEN: u64 = u64::MAX;

/// Writes `lines` events `key timestamp`: the timestamp of line `n` is `5 n` ms plus a
/// jitter below 250 ms. Returns the path and the number of events per window.
fn write_events(dir: &Path, lines: u64, keys: u64) -> (PathBuf, BTreeMap<u64, u64>) {
    let mut text = String::new();
    let mut totals = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..lines {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let timestamp = 5 * n + x % 250;
        text.push_str(&format!("{} {timestamp}\n", (x >> 20) % keys));
        *totals.entry(timestamp / WINDOW).or_insert(0) += 1;
    }
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    (path, totals)
}

/// Per key: window start → events so far; a timer at the window's end emits the count.
#[derive(Clone, Debug)]
struct KeyWindows;

impl Checkpointed for KeyWindows {}

impl KeyedProcessFunction for KeyWindows {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64, u64);
    type State = MapStateId<u64, u64, ()>;

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_runtime::Result<Self::State> {
        Ok(backend.register_map(&MapStateDescriptor::<u64, u64>::new("windows"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        (_, timestamp): (u64, u64),
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let window = timestamp - timestamp % WINDOW;
        let end = window + WINDOW - 1;
        let late = timers.current_watermark().is_some_and(|w| w >= end);
        if late || out.timestamp() != Some(timestamp) {
            return out.collect((window, *key, BROKEN));
        }
        let count = backend.map_get(*state, &(), &window)?.unwrap_or(0);
        backend.map_put(*state, &(), window, count + 1)?;
        timers.register_event_time_timer(end);
        Ok(())
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        assert_eq!(timer.domain, TimeDomain::EventTime);
        assert!(timers.current_watermark().is_some_and(|w| w >= timer.time));
        let window = timer.time + 1 - WINDOW;
        let count = backend.map_get(*state, &(), &window)?.unwrap_or(BROKEN);
        backend.map_remove(*state, &(), &window)?;
        out.collect((window, *key, count))
    }
}

/// Per window: the sum of the per-key counts; a timer at the window's end emits it.
#[derive(Clone, Debug)]
struct WindowTotals;

impl Checkpointed for WindowTotals {}

impl KeyedProcessFunction for WindowTotals {
    type Key = u64;
    type In = (u64, u64, u64);
    type Out = (u64, u64);
    type State = MapStateId<u64, u64, ()>;

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_runtime::Result<Self::State> {
        // One entry (0) per window key: its running total.
        Ok(backend.register_map(&MapStateDescriptor::<u64, u64>::new("total"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        window: &u64,
        (_, _, count): (u64, u64, u64),
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let end = window + WINDOW - 1;
        let late = timers.current_watermark().is_some_and(|w| w >= end);
        // A count is emitted by the timer at its window's end.
        let stamped = out.timestamp() == Some(end);
        let total = backend.map_get(*state, &(), &0)?.unwrap_or(0);
        let total = if late || count == BROKEN || !stamped {
            BROKEN
        } else {
            total.saturating_add(count)
        };
        backend.map_put(*state, &(), 0, total)?;
        timers.register_event_time_timer(end);
        Ok(())
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        window: &u64,
        _timer: Timer,
        backend: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let total = backend.map_get(*state, &(), &0)?.unwrap_or(BROKEN);
        backend.map_remove(*state, &(), &0)?;
        out.collect((window / WINDOW, total))
    }
}

/// The job; `slow`: the `windows` stage sleeps this long per emitted count, so that its
/// input backs up and unaligned checkpoints store in-flight records.
fn job(input: &Path, output: &Path, fail_at: Vec<u64>, slow: Option<Duration>) -> JobGraph {
    let parse = common::ParseEvents::new(fail_at);
    let windows = source("source", FileSource::new(input))
        .process("parse", parse)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_bounded_out_of_orderness(
                Duration::from_millis(300),
                |(_, timestamp): &(u64, u64)| *timestamp,
            ),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .process("windows", KeyWindows);
    let windows = match slow {
        Some(delay) => common::unaligned::slow(windows, "slow", delay),
        None => windows,
    };
    windows
        .key_by(|(window, _, _): &(u64, u64, u64)| *window)
        .process("totals", WindowTotals)
        .sink("sink", common::count_sink(output))
}

/// The committed output as window → totals, against the model's window → [total].
fn check(output: &Path, totals: &BTreeMap<u64, u64>) {
    let expected: BTreeMap<String, Vec<u64>> = totals
        .iter()
        .map(|(w, n)| (w.to_string(), vec![*n]))
        .collect();
    assert_eq!(common::read_output(output), expected);
}

fn committed_windows(output: &Path) -> usize {
    common::read_output(output).len()
}

/// Windows fire on the watermark while the input is read (not only at its end); the
/// pending ones, and the partial counts, go through a savepoint restored under the other
/// backend at another parallelism, and fire there, each once.
#[test]
fn windows_fire_on_the_watermark_and_survive_a_savepoint_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, totals) = write_events(dir.path(), 8_000, 25);
    let output = dir.path().join("out");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let handle = Job::new(job(&input, &output, Vec::new(), None), cfg)
        .start()
        .expect("start");
    let started = Instant::now();
    while committed_windows(&output) < 5 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no window fired while the input was read"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(
        first.records < 8_000,
        "the input ended before the stop ({} records)",
        first.records
    );

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(job(&input, &output, Vec::new(), None), cfg)
        .run()
        .expect("restored run");
    check(&output, &totals);
}

/// Failures between checkpoints: the restart restores the pending timers and partial
/// counts, the watermark starts over, and every window's total is committed exactly once.
fn exactly_once_across_failures(
    backend: StateBackendConfig,
    mode: SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, totals) = write_events(dir.path(), 6_000, 20);
    let output = dir.path().join("out");
    let cfg = common::event_time_config(dir.path(), backend, mode, unaligned, parallelism);
    // Unaligned: slow down the windows so that checkpoints hold in-flight records.
    let slow = unaligned.then_some(Duration::from_millis(6));
    let graph = job(&input, &output, vec![2_500, 4_500], slow);
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "the injected failures did not happen");
    check(&output, &totals);
}

#[test]
fn heap_full_aligned_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(StateBackendConfig::HashMap, SnapshotMode::Full, false, 2);
}

#[test]
fn rocksdb_incremental_unaligned_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        true,
        3,
    );
}

#[test]
fn changelog_windows_are_exactly_once_across_failures() {
    exactly_once_across_failures(
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
        false,
        1,
    );
}

/// Stamps the `n`-th record of its subtask with event time `step n`; subtask 1 drops
/// every record after its `quiet_after`-th, so its output then passes nothing, for ever.
#[derive(Clone, Debug)]
struct Stamp {
    step: u64,
    quiet_after: u64,
    index: u32,
    n: u64,
}

impl Checkpointed for Stamp {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.index = ctx.subtask.index;
        Ok(())
    }
}

impl ProcessFunction<u64, (u64, u64)> for Stamp {
    fn process(
        &mut self,
        key: u64,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.n += 1;
        if self.index == 1 && self.n > self.quiet_after {
            return Ok(());
        }
        out.collect((key, self.n * self.step))
    }
}

/// Keeps every record in memory (the jobs using it do not fail).
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<(u64, u64, u64)>>>);

impl Checkpointed for Collect {}

impl Sink<(u64, u64, u64)> for Collect {
    fn write(&mut self, record: (u64, u64, u64)) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

impl Collect {
    /// Window index → the sum of its fired per-key counts.
    fn totals(&self) -> BTreeMap<u64, u64> {
        let mut totals = BTreeMap::new();
        for (window, _, count) in self.0.lock().expect("lock").iter() {
            *totals.entry(window / WINDOW).or_insert(0) += count;
        }
        totals
    }
}

/// Runs the windows at parallelism 2 where source subtask 1 goes quiet after 50 records
/// and subtask 0 reads on (2,000 records, event times 10 ms apart); returns the windows
/// fired once subtask 0 has read everything, or once window 10 fired.
fn quiet_subtask(idleness: Option<Duration>) -> BTreeMap<u64, u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut strategy =
        WatermarkStrategy::for_monotonous_timestamps(|(_, timestamp): &(u64, u64)| *timestamp);
    if let Some(timeout) = idleness {
        strategy = strategy.with_idleness(timeout);
    }
    let sink = Collect::default();
    let graph = source("source", GeneratorSource::new(4_000, 10, 3).idle_at_end())
        .process(
            "stamp",
            Stamp {
                step: 10,
                quiet_after: 50,
                index: 0,
                n: 0,
            },
        )
        .assign_timestamps_and_watermarks("timestamps", strategy)
        .key_by(|(key, _): &(u64, u64)| *key)
        .process("windows", KeyWindows)
        .sink("sink", sink.clone());
    let mut cfg = common::config(dir.path(), 100);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    let handle = Job::new(graph, cfg).start().expect("start");
    let started = Instant::now();
    while handle.records_read() < 4_000 && !sink.totals().contains_key(&10) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the job stalled"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    handle.cancel();
    let _ = handle.wait();
    sink.totals()
}

/// A source subtask that goes quiet holds every window back (as in Flink) unless the
/// strategy has idleness: then the others' watermarks go on, and each window fires with
/// all of its records (100 per window from subtask 0 after the first).
#[test]
fn an_idle_input_holds_the_watermark_back_unless_the_strategy_has_idleness() {
    assert_eq!(quiet_subtask(None), BTreeMap::new());
    let fired = quiet_subtask(Some(Duration::from_millis(100)));
    assert!(fired.contains_key(&10), "{fired:?}");
    for (window, total) in &fired {
        if (1..=10).contains(window) {
            assert_eq!(*total, 100, "window {window}: {fired:?}");
        }
    }
}

/// Counts what it is given, and what it is given after a savepoint's synchronous phase,
/// which it makes slow (a large state, a slow disk) so that anything still moving after
/// the barrier reaches it.
#[derive(Clone, Default)]
struct AfterSavepoint {
    savepoint_taken: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    written_after: Arc<AtomicU64>,
}

impl Checkpointed for AfterSavepoint {
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        if ctx.is_savepoint {
            std::thread::sleep(Duration::from_millis(300));
            self.savepoint_taken.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Sink<(u64, u64, u64)> for AfterSavepoint {
    fn write(&mut self, _record: (u64, u64, u64)) -> cairn_runtime::Result<()> {
        self.written.fetch_add(1, Ordering::SeqCst);
        if self.savepoint_taken.load(Ordering::SeqCst) {
            self.written_after.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// A stop-with-savepoint stops the assigners at its barrier (as a stopped source emits
/// nothing in Flink): no watermark follows it, so no window fires after the savepoint
/// (it would fire again after a restore from it).
#[test]
fn no_event_time_timer_fires_after_a_stop_with_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = AfterSavepoint::default();
    // Every record opens a window: any watermark after the barrier would fire one.
    let stamp = Stamp {
        step: WINDOW,
        quiet_after: u64::MAX,
        index: 0,
        n: 0,
    };
    let graph = source("source", GeneratorSource::new(1_000_000, 5, 3))
        .process("stamp", stamp)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .key_by(|(key, _): &(u64, u64)| *key)
        .process("windows", KeyWindows)
        .sink("sink", sink.clone());
    let mut cfg = common::config(dir.path(), 60_000);
    cfg.records_per_second = Some(2_000);
    cfg.auto_watermark_interval = Duration::from_millis(20);
    let handle = Job::new(graph, cfg).start().expect("start");
    let started = Instant::now();
    while sink.written.load(Ordering::SeqCst) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no window fired"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("job");
    assert_eq!(sink.written_after.load(Ordering::SeqCst), 0);
}
