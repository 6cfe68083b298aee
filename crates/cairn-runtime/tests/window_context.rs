//! The process window function's context end to end (Flink's
//! `ProcessWindowFunction.Context` and `clear`): the window, the watermark and the
//! processing clock it sees; per-window and per-key state of every kind; side outputs from
//! `process_with_context` and from `clear`; `clear` once per window at its cleanup time
//! and the window's state gone after; the refusal of per-window state on sessions; every
//! place a process window function runs (`process`, `reduce_and_process`,
//! `aggregate_and_process`, count triggers, evictors, user-defined triggers, global
//! windows, sessions, `window_all`); and the states through injected failures (both
//! backends, aligned and unaligned) and a savepoint under the heap backend at parallelism
//! 2 restored under RocksDB at parallelism 3, checked against the savepoint's contents.
//!
//! Each expected output is computed from the input: by hand from the scripts' few events
//! (the reasoning is in each script's comment), or by a model from the generated events.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{
    AggregateFunction, AggregatingStateDescriptor, BincodeCodec, Codec, KeyedStateBackend,
    ListStateDescriptor, ManualClock, MapStateDescriptor, ReducingStateDescriptor,
    ValueStateDescriptor,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, CountEvictor, CountTrigger, EventTimeSessionWindows, Job,
    JobConfig, KeyedStream, OutputTag, ProcessWindowFunction, ProcessingClock, RestartStrategy,
    RestoreFrom, RuntimeError, SnapshotMode, Source, SourceStatus, StateBackendConfig, Stream,
    TimeWindow, Trigger, TriggerContext, TriggerResult, TumblingEventTimeWindows,
    WatermarkStrategy, WindowContext, WindowStates,
};
use common::{CollectWithContext, Stamp};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------
// A probe of the context, on scripted runs (one subtask: deterministic records and
// watermarks).
// ---------------------------------------------------------------------------------------

/// `(key, timestamp, value)`.
type Event = (u64, u64, u64);

/// A source of phases (one subtask): each phase's events go out in one poll, then the
/// source reports idle once, so its task flushes and its assigner (watermarks at every
/// chance) emits the watermark of what came before, before the next phase.
#[derive(Clone, Debug)]
struct Phases {
    phases: Arc<Vec<Vec<Event>>>,
    next: usize,
    between: bool,
}

impl Phases {
    fn new(phases: Vec<Vec<Event>>) -> Self {
        Self {
            phases: Arc::new(phases),
            next: 0,
            between: false,
        }
    }
}

impl Checkpointed for Phases {}

impl Source for Phases {
    type Out = Event;

    fn poll(
        &mut self,
        out: &mut Collector<'_, Event>,
        _max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        if std::mem::take(&mut self.between) {
            return Ok(SourceStatus::Idle);
        }
        let Some(phase) = self.phases.get(self.next) else {
            return Ok(SourceStatus::End);
        };
        self.next += 1;
        self.between = true;
        for e in phase {
            out.collect(*e)?;
        }
        Ok(SourceStatus::More)
    }
}

/// What a [`Probe`] emits at each firing.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Fired {
    key: u64,
    window: TimeWindow,
    /// What the function got, in order (a value per record, or the folded value).
    values: Vec<u64>,
    watermark: Option<u64>,
    processing_time: u64,
    /// The window's firings so far, counted in per-window state (0 without it).
    fires: u64,
    /// The key's firings so far in all its windows, counted in per-key state.
    key_firings: u64,
}

/// What a [`Probe`]'s `clear` emits into [`cleared`]: the key, the window, its firings
/// (read from its per-window state in `clear`; 0 without it), the key's windows ended so
/// far (per-key state) and the watermark.
type Cleared = (u64, TimeWindow, u64, u64, Option<u64>);

/// What a [`Probe`] emits into [`notes`] at each firing, once through the context and once
/// through the collector: the key, the window's end, and `10 × fires + 1` (context) or `+ 2`
/// (collector).
type Note = (u64, u64, u64);

fn cleared() -> OutputTag<Cleared> {
    OutputTag::new("cleared")
}

fn notes() -> OutputTag<Note> {
    OutputTag::new("notes")
}

fn fires() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("fires")
}

fn key_firings() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("key-firings")
}

fn key_clears() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("key-clears")
}

/// A process window function reporting its context: see [`Fired`], [`Cleared`], [`Note`].
/// `key` and `value` read the key and an element as numbers; with `per_window`, it
/// declares and counts in per-window state.
#[derive(Clone)]
struct Probe<K, T> {
    key: fn(&K) -> u64,
    value: fn(&T) -> u64,
    per_window: bool,
}

impl<K, T> Probe<K, T> {
    fn new(key: fn(&K) -> u64, value: fn(&T) -> u64) -> Self {
        Self {
            key,
            value,
            per_window: true,
        }
    }

    fn per_key_only(mut self) -> Self {
        self.per_window = false;
        self
    }
}

/// Adds one to the value state `d` of `store`, returning the new value.
fn bump<B: KeyedStateBackend, N: cairn_core::Namespace>(
    store: cairn_runtime::KeyedStateStore<'_, B, N>,
    d: &ValueStateDescriptor<u64>,
) -> cairn_runtime::Result<u64> {
    let mut state = store.value(d)?;
    let n = state.get()?.unwrap_or(0) + 1;
    state.update(n)?;
    Ok(n)
}

impl<K, T> ProcessWindowFunction<K, T, Fired> for Probe<K, T>
where
    K: Clone + Send + 'static,
    T: Clone + Send + 'static,
{
    fn open<B: KeyedStateBackend>(
        &mut self,
        states: &mut WindowStates<'_, B>,
    ) -> cairn_runtime::Result<()> {
        match self.per_window {
            true => states.value(&fires()),
            false => Ok(()),
        }
    }

    fn process_with_context<B: KeyedStateBackend>(
        &mut self,
        key: &K,
        elements: Vec<T>,
        ctx: &mut WindowContext<'_, B, Fired>,
        out: &mut Collector<'_, Fired>,
    ) -> cairn_runtime::Result<()> {
        let fires = match self.per_window {
            true => bump(ctx.window_state(), &fires())?,
            false => 0,
        };
        let key_firings = bump(ctx.global_state(), &key_firings())?;
        let (key, window) = ((self.key)(key), ctx.window());
        ctx.output(&notes(), (key, window.end, 10 * fires + 1))?;
        out.output(&notes(), (key, window.end, 10 * fires + 2))?;
        out.collect(Fired {
            key,
            window,
            values: elements.iter().map(self.value).collect(),
            watermark: ctx.current_watermark(),
            processing_time: ctx.current_processing_time(),
            fires,
            key_firings,
        })
    }

    fn clear<B: KeyedStateBackend>(
        &mut self,
        key: &K,
        ctx: &mut WindowContext<'_, B, Fired>,
    ) -> cairn_runtime::Result<()> {
        let fires = match self.per_window {
            true => ctx.window_state().value(&fires())?.get()?.unwrap_or(0),
            false => 0,
        };
        let clears = bump(ctx.global_state(), &key_clears())?;
        let record = (
            (self.key)(key),
            ctx.window(),
            fires,
            clears,
            ctx.current_watermark(),
        );
        ctx.output(&cleared(), record)
    }
}

/// The processing clock's time in the scripted runs.
const CLOCK: u64 = 777;

/// One subtask, a watermark at every pause, the processing clock at [`CLOCK`].
fn script_config(backend: StateBackendConfig) -> JobConfig {
    JobConfig {
        backend,
        parallelism: 1,
        auto_watermark_interval: Duration::from_nanos(1),
        processing_clock: ProcessingClock::new(Arc::new(ManualClock::new(CLOCK))),
        ..JobConfig::default()
    }
}

/// The script's events keyed, with their timestamps as event time (no out-of-orderness:
/// the watermark after a phase is the largest timestamp so far less 1 ms).
fn keyed(phases: Vec<Vec<Event>>) -> KeyedStream<u64, Event> {
    source("source", Phases::new(phases))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .key_by(|e: &Event| e.0)
}

/// Records with their timestamps, sorted.
type Stamped<T> = Vec<(T, Option<u64>)>;

/// What a scripted run emitted: firings, notes and clears.
#[derive(Debug, PartialEq, Eq)]
struct Emitted {
    fired: Stamped<Fired>,
    notes: Stamped<Note>,
    cleared: Stamped<Cleared>,
}

/// A sink stage collecting `stream` with each record's timestamp.
fn collect<T: cairn_runtime::Data>(
    stream: Stream<T>,
    name: &str,
) -> Arc<Mutex<Vec<common::Written<T>>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    stream
        .process(&format!("stamp-{name}"), Stamp)
        .sink(name, CollectWithContext(got.clone()));
    got
}

fn sorted<T: Ord + Clone>(got: &Mutex<Vec<common::Written<T>>>) -> Stamped<T> {
    let mut out: Stamped<T> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|(record, _)| record.clone())
        .collect();
    out.sort();
    out
}

/// Runs the window operator `windows` emits to its end (one subtask) under `backend`.
fn run_probe(windows: Stream<Fired>, backend: StateBackendConfig) -> Emitted {
    let notes_got = collect(windows.side_output(&notes()), "notes");
    let cleared_got = collect(windows.side_output(&cleared()), "cleared");
    let fired_got = Arc::new(Mutex::new(Vec::new()));
    let graph = windows
        .process("stamp", Stamp)
        .sink("sink", CollectWithContext(fired_got.clone()));
    Job::new(graph, script_config(backend)).run().expect("job");
    Emitted {
        fired: sorted(&fired_got),
        notes: sorted(&notes_got),
        cleared: sorted(&cleared_got),
    }
}

/// A firing of `key`'s `window` with `values` at watermark `watermark`, the window's
/// `fires`-th and the key's `key_firings`-th, stamped with the window's last millisecond.
fn fired(
    key: u64,
    window: TimeWindow,
    values: &[u64],
    watermark: Option<u64>,
    (fires, key_firings): (u64, u64),
) -> (Fired, Option<u64>) {
    let record = Fired {
        key,
        window,
        values: values.to_vec(),
        watermark,
        processing_time: CLOCK,
        fires,
        key_firings,
    };
    (record, Some(window.max_timestamp()))
}

/// The end of `key`'s `window` after `fires` firings, the key's `clears`-th, at
/// `watermark`, stamped with the window's last millisecond.
fn ended(
    key: u64,
    window: TimeWindow,
    fires: u64,
    clears: u64,
    watermark: Option<u64>,
) -> (Cleared, Option<u64>) {
    let stamp = Some(window.max_timestamp());
    ((key, window, fires, clears, watermark), stamp)
}

/// What every run expects: `fired` and `cleared` sorted, and the notes that `fired` makes
/// (two per firing).
fn expect(mut fired: Stamped<Fired>, mut cleared: Stamped<Cleared>) -> Emitted {
    fired.sort();
    cleared.sort();
    let mut notes: Stamped<Note> = fired
        .iter()
        .flat_map(|(f, stamp)| {
            [1, 2].map(|via| ((f.key, f.window.end, 10 * f.fires + via), *stamp))
        })
        .collect();
    notes.sort();
    Emitted {
        fired,
        notes,
        cleared,
    }
}

fn w(start: u64, end: u64) -> TimeWindow {
    TimeWindow { start, end }
}

const MAX: Option<u64> = Some(u64::MAX);

/// The script of tumbling 10 ms windows with 5 ms of lateness:
/// - phase 1: key 1 gets 1 at 2, 2 at 7 and 4 at 12, key 2 gets 10 at 3; its watermark,
///   11, fires `[0, 10)` of both keys (their first firings);
/// - phase 2: key 1 gets 8 at 8, late for `[0, 10)` but within its lateness (cleaned up
///   at 14): the window fires again at once (its second firing, the key's second), at
///   watermark 11;
/// - phase 3: key 2 gets 20 at 16; the watermark, 15, passes 14: both keys' `[0, 10)`
///   end (`clear`, key 1's after 2 firings, key 2's after 1);
/// - phase 4: key 1 gets 99 at 3, past its window's lateness: dropped, `[0, 10)` stays
///   gone;
/// - the end of the input (watermark `u64::MAX`) fires `[10, 20)` of both keys and then
///   ends them.
fn lateness_script() -> Vec<Vec<Event>> {
    vec![
        vec![(1, 2, 1), (1, 7, 2), (2, 3, 10), (1, 12, 4)],
        vec![(1, 8, 8)],
        vec![(2, 16, 20)],
        vec![(1, 3, 99)],
    ]
}

/// The ends of [`lateness_script`]'s windows.
fn lateness_script_ends() -> Stamped<Cleared> {
    vec![
        ended(1, w(0, 10), 2, 1, Some(15)),
        ended(2, w(0, 10), 1, 1, Some(15)),
        ended(1, w(10, 20), 1, 2, MAX),
        ended(2, w(10, 20), 1, 2, MAX),
    ]
}

/// [`lateness_script`]'s firings, given the values each firing gets: key 1's `[0, 10)`
/// first and late, key 2's `[0, 10)`, key 1's and key 2's `[10, 20)`.
fn lateness_script_firings(values: [&[u64]; 5]) -> Stamped<Fired> {
    let [first, late, two, ten_one, ten_two] = values;
    vec![
        fired(1, w(0, 10), first, Some(11), (1, 1)),
        fired(1, w(0, 10), late, Some(11), (2, 2)),
        fired(2, w(0, 10), two, Some(11), (1, 1)),
        fired(1, w(10, 20), ten_one, MAX, (1, 3)),
        fired(2, w(10, 20), ten_two, MAX, (1, 2)),
    ]
}

fn tumbling_with_lateness() -> cairn_runtime::WindowedStream<u64, Event> {
    keyed(lateness_script())
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .allowed_lateness(Duration::from_millis(5))
}

fn key_of(k: &u64) -> u64 {
    *k
}

fn value_of(e: &Event) -> u64 {
    e.2
}

/// `process`: the window, the watermark that fired it (a late firing's: the watermark
/// when the late record came), the processing clock, the per-window and per-key counts,
/// side outputs from the context and the collector, and `clear` once per window at its
/// cleanup time, with the per-window count still there; both backends.
#[test]
fn the_context_of_process_on_tumbling_windows_with_lateness() {
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let windows = tumbling_with_lateness().process("windows", Probe::new(key_of, value_of));
        let firings = lateness_script_firings([&[1, 2], &[1, 2, 8], &[10], &[4], &[20]]);
        assert_eq!(
            run_probe(windows, backend),
            expect(firings, lateness_script_ends())
        );
    }
}

/// `reduce_and_process` and `aggregate_and_process`: the same context, with the folded
/// value (the sum of the values).
#[test]
fn the_context_of_incremental_aggregation() {
    let sums = lateness_script_firings([&[3], &[11], &[10], &[4], &[20]]);
    let reduce = |a: Event, b: Event| (a.0, a.1.max(b.1), a.2 + b.2);
    let windows = tumbling_with_lateness().reduce_and_process(
        "windows",
        reduce,
        Probe::new(key_of, value_of),
    );
    let expected = expect(sums.clone(), lateness_script_ends());
    assert_eq!(run_probe(windows, StateBackendConfig::HashMap), expected);

    let windows = tumbling_with_lateness().aggregate_and_process(
        "windows",
        SumValues,
        Probe::new(key_of, |v: &u64| *v),
    );
    assert_eq!(run_probe(windows, StateBackendConfig::rocksdb()), expected);
}

/// Sums events' values.
#[derive(Clone, Debug)]
struct SumValues;

impl AggregateFunction<Event, u64, u64> for SumValues {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, e: Event) {
        *acc += e.2;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// Behind a count evictor of 1: the function gets the last record (the window keeps only
/// it after each firing: 2, then 8 of 2 and 8); the window still ends with `clear`.
#[test]
fn the_context_behind_an_evictor() {
    let windows = tumbling_with_lateness()
        .evictor(CountEvictor::of(1))
        .process("windows", Probe::new(key_of, value_of));
    let firings = lateness_script_firings([&[2], &[8], &[10], &[4], &[20]]);
    assert_eq!(
        run_probe(windows, StateBackendConfig::HashMap),
        expect(firings, lateness_script_ends())
    );
}

/// `window_all`: one key, `()`, for all records; the same context.
#[test]
fn the_context_of_windows_over_the_whole_stream() {
    let windows = source("source", Phases::new(lateness_script()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
        )
        .window_all(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .allowed_lateness(Duration::from_millis(5))
        .process("windows", Probe::new(|_: &()| 0, value_of));
    // Phase 1 fires [0, 10) with 1, 2 and 10; the late 8 fires it again; the watermark 15
    // ends it; the end of the input fires [10, 20) with 4 and 20, and ends it.
    let firings = vec![
        fired(0, w(0, 10), &[1, 2, 10], Some(11), (1, 1)),
        fired(0, w(0, 10), &[1, 2, 10, 8], Some(11), (2, 2)),
        fired(0, w(10, 20), &[4, 20], MAX, (1, 3)),
    ];
    let ends = vec![
        ended(0, w(0, 10), 2, 1, Some(15)),
        ended(0, w(10, 20), 1, 2, MAX),
    ];
    assert_eq!(
        run_probe(windows, StateBackendConfig::HashMap),
        expect(firings, ends)
    );
}

/// A count trigger of 2 fires a window at its 2nd and 4th records (no watermark has come
/// yet: phase 1 holds them all); its 5th never fires. The watermark 10 (phase 2) ends
/// `[0, 10)` after 2 firings; `[10, 20)` never fires and ends at the end of the input with
/// none.
#[test]
fn the_context_under_a_count_trigger() {
    let phases = vec![
        vec![(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4), (1, 5, 5)],
        vec![(1, 11, 6)],
    ];
    let windows = keyed(phases)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .trigger(CountTrigger::of(2))
        .process("windows", Probe::new(key_of, value_of));
    let firings = vec![
        fired(1, w(0, 10), &[1, 2], None, (1, 1)),
        fired(1, w(0, 10), &[1, 2, 3, 4], None, (2, 2)),
    ];
    let ends = vec![
        ended(1, w(0, 10), 2, 1, Some(10)),
        ended(1, w(10, 20), 0, 2, MAX),
    ];
    assert_eq!(
        run_probe(windows, StateBackendConfig::rocksdb()),
        expect(firings, ends)
    );
}

/// With a lateness of one window, a timer at a window's end is also the cleanup time of
/// the window before: key 1 has `[0, 10)` and `[20, 30)` but not `[10, 20)`, so the end
/// of `[20, 30)` (29) ends no window, and `clear` comes for the key's two windows only:
/// `[0, 10)` at the watermark 24 (its cleanup time is 19), `[20, 30)` at the end.
#[test]
fn clear_comes_only_for_the_windows_a_key_has() {
    let windows = keyed(vec![vec![(1, 5, 1), (1, 25, 2)]])
        .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
        .allowed_lateness(Duration::from_millis(10))
        .process("windows", Probe::new(key_of, value_of));
    let firings = vec![
        fired(1, w(0, 10), &[1], Some(24), (1, 1)),
        fired(1, w(20, 30), &[2], MAX, (1, 2)),
    ];
    let ends = vec![
        ended(1, w(0, 10), 1, 1, Some(24)),
        ended(1, w(20, 30), 1, 2, MAX),
    ];
    assert_eq!(
        run_probe(windows, StateBackendConfig::HashMap),
        expect(firings, ends)
    );
}

/// Fires and purges a window at each record with an even value.
#[derive(Clone, Debug)]
struct FireOnEven;

impl Trigger<Event> for FireOnEven {
    fn on_element(
        &mut self,
        record: &Event,
        _timestamp: Option<u64>,
        _window: &TimeWindow,
        _ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(match record.2 % 2 {
            0 => TriggerResult::FireAndPurge,
            _ => TriggerResult::Continue,
        })
    }
}

/// A user-defined trigger firing and purging on even values: key 1's `[0, 10)` fires
/// with 1 and 2 and keeps 3; key 2's fires with 4 and is left empty; the watermark 11
/// (phase 2) ends both — the empty one too, as in Flink, where a purge does not end a
/// window; key 1's `[10, 20)` never fires and ends at the end of the input.
#[test]
fn the_context_under_a_user_defined_trigger() {
    let phases = vec![
        vec![(1, 1, 1), (1, 2, 2), (1, 3, 3), (2, 4, 4)],
        vec![(1, 12, 5)],
    ];
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let windows = keyed(phases.clone())
            .window(TumblingEventTimeWindows::of(Duration::from_millis(10)))
            .custom_trigger(FireOnEven)
            .process("windows", Probe::new(key_of, value_of));
        let firings = vec![
            fired(1, w(0, 10), &[1, 2], None, (1, 1)),
            fired(2, w(0, 10), &[4], None, (1, 1)),
        ];
        let ends = vec![
            ended(1, w(0, 10), 1, 1, Some(11)),
            ended(2, w(0, 10), 1, 1, Some(11)),
            ended(1, w(10, 20), 0, 2, MAX),
        ];
        assert_eq!(run_probe(windows, backend), expect(firings, ends));
    }
}

/// Count windows of 2 (global windows, a purging count trigger): the per-window count is
/// the global window's, 1 then 2; the second firing sees phase 1's watermark, 1; the 5th
/// record never fires, and a global window never ends: no `clear`.
#[test]
fn the_context_of_count_windows() {
    let phases = vec![
        vec![(1, 1, 1), (1, 2, 2)],
        vec![(1, 3, 3), (1, 4, 4), (1, 5, 5)],
    ];
    let windows = keyed(phases)
        .count_window(2)
        .process("windows", Probe::new(key_of, value_of));
    let global = TimeWindow::GLOBAL;
    let firings = vec![
        fired(1, global, &[1, 2], None, (1, 1)),
        fired(1, global, &[3, 4], Some(1), (2, 2)),
    ];
    assert_eq!(
        run_probe(windows, StateBackendConfig::HashMap),
        expect(firings, vec![])
    );
}

/// Event-time sessions of a 10 ms gap with per-key state only: key 1's `[1, 15)` and key
/// 2's `[3, 13)` fire and end at the watermark 29 (phase 2), key 1's `[30, 40)` at the end
/// of the input; the per-key counts go on across sessions.
#[test]
fn the_context_of_sessions_with_per_key_state() {
    let phases = vec![vec![(1, 1, 1), (1, 5, 2), (2, 3, 3)], vec![(1, 30, 4)]];
    let windows = keyed(phases)
        .window(EventTimeSessionWindows::with_gap(Duration::from_millis(10)))
        .process("sessions", Probe::new(key_of, value_of).per_key_only());
    let firings = vec![
        fired(1, w(1, 15), &[1, 2], Some(29), (0, 1)),
        fired(2, w(3, 13), &[3], Some(29), (0, 1)),
        fired(1, w(30, 40), &[4], MAX, (0, 2)),
    ];
    let ends = vec![
        ended(1, w(1, 15), 0, 1, Some(29)),
        ended(2, w(3, 13), 0, 1, Some(29)),
        ended(1, w(30, 40), 0, 2, MAX),
    ];
    assert_eq!(
        run_probe(windows, StateBackendConfig::rocksdb()),
        expect(firings, ends)
    );
}

/// Per-window state on sessions (merging windows) is refused when the job starts, as
/// Flink refuses it: a configuration error naming the operator and the state, no restart.
#[test]
fn per_window_state_on_sessions_is_refused() {
    let phases = vec![vec![(1, 1, 1)]];
    let windows = keyed(phases)
        .window(EventTimeSessionWindows::with_gap(Duration::from_millis(10)))
        .process("sessions", Probe::new(key_of, value_of));
    let got = Arc::new(Mutex::new(Vec::new()));
    let graph = windows.sink("sink", common::Collect(got.clone()));
    let mut config = script_config(StateBackendConfig::HashMap);
    config.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
    let err = Job::new(graph, config).run().expect_err("refused");
    assert!(matches!(err, RuntimeError::Config(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "invalid job: window operator sessions: per-window state fires: per-window state is \
         not allowed when using merging windows (sessions), as in Flink; keep it per key \
         (WindowContext::global_state)"
    );
    assert!(got.lock().expect("lock").is_empty());
}

// ---------------------------------------------------------------------------------------
// Every state kind, per window and per key, through failures and a savepoint.
// ---------------------------------------------------------------------------------------

/// Keys of the generated events.
const KEYS: u64 = 5;
/// The windows' size: each key has 10 events per window (events are 2 ms apart, keys
/// round-robin).
const WINDOW_MS: u64 = 100;
/// The count trigger: 3 firings per window (at its 3rd, 6th and 9th records; its 10th
/// never fires).
const EVERY: u64 = 3;

fn sizes() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("sizes")
}

fn size_at() -> MapStateDescriptor<u64, u64> {
    MapStateDescriptor::new("size-at")
}

fn last_time() -> ReducingStateDescriptor<u64> {
    ReducingStateDescriptor::new("last-time", |a: u64, b: u64| a.max(b))
}

fn firings() -> AggregatingStateDescriptor<u64, u64, u64> {
    AggregatingStateDescriptor::new("firings", Counting)
}

fn key_windows() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("key-windows")
}

fn open_windows() -> MapStateDescriptor<u64, u64> {
    MapStateDescriptor::new("open-windows")
}

fn key_records() -> ReducingStateDescriptor<u64> {
    ReducingStateDescriptor::new("key-records", |a: u64, b: u64| a + b)
}

fn key_ends() -> AggregatingStateDescriptor<u64, u64, u64> {
    AggregatingStateDescriptor::new("key-ends", Counting)
}

/// Counts its inputs.
#[derive(Clone, Debug)]
struct Counting;

impl AggregateFunction<u64, u64, u64> for Counting {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _input: u64) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

fn render(values: impl IntoIterator<Item = String>) -> String {
    values.into_iter().collect::<Vec<_>>().join(",")
}

/// Keeps every state kind per window and per key, and labels each firing and each end
/// with what they hold:
/// - per window: `fires` (value), the firings' sizes (list), firing → size (map), the
///   latest event time fired (reducing, max), the firings (aggregating, count);
/// - per key: its firings (value), the windows it fired, at their first firing (list),
///   its open windows' firings (map, window end → firings; removed by `clear`), the
///   records of all its firings (reducing, sum), its ended windows (aggregating, count).
///
/// A firing: `key/end/fires|sizes|size-at|latest|count|key firings|key windows|open|
/// key records`; an end: `key/end/end|fires|key ends|open`.
#[derive(Clone, Debug)]
struct AllKinds;

impl ProcessWindowFunction<u64, (u64, u64), (String, u64)> for AllKinds {
    fn open<B: KeyedStateBackend>(
        &mut self,
        states: &mut WindowStates<'_, B>,
    ) -> cairn_runtime::Result<()> {
        states.value(&fires())?;
        states.list(&sizes())?;
        states.map(&size_at())?;
        states.reducing(&last_time())?;
        states.aggregating(&firings())
    }

    fn process_with_context<B: KeyedStateBackend>(
        &mut self,
        key: &u64,
        elements: Vec<(u64, u64)>,
        ctx: &mut WindowContext<'_, B, (String, u64)>,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let size = elements.len() as u64;
        let latest = elements.iter().map(|e| e.1).max().unwrap_or(0);
        let end = ctx.window().end;
        let i = bump(ctx.window_state(), &fires())?;
        let mut list = ctx.window_state().list(&sizes())?;
        list.add(size)?;
        let sizes = list.get()?;
        let mut map = ctx.window_state().map(&size_at())?;
        map.put(i, size)?;
        let size_at = map.entries()?;
        let mut reducing = ctx.window_state().reducing(&last_time())?;
        reducing.add(latest)?;
        let latest = reducing.get()?.unwrap_or(0);
        let mut aggregating = ctx.window_state().aggregating(&firings())?;
        aggregating.add(size)?;
        let count = aggregating.get()?.unwrap_or(0);

        let g = bump(ctx.global_state(), &key_firings())?;
        let mut windows = ctx.global_state().list(&key_windows())?;
        if i == 1 {
            windows.add(end)?;
        }
        let windows = windows.get()?.len();
        let mut open = ctx.global_state().map(&open_windows())?;
        open.put(end, i)?;
        let open = open.get(&end)?.unwrap_or(0);
        let mut records = ctx.global_state().reducing(&key_records())?;
        records.add(size)?;
        let records = records.get()?.unwrap_or(0);

        let label = format!(
            "{key}/{end}/{i}|{}|{}|{latest}|{count}|{g}|{windows}|{open}|{records}",
            render(sizes.iter().map(u64::to_string)),
            render(size_at.iter().map(|(f, s)| format!("{f}:{s}"))),
        );
        out.collect((label, 1))
    }

    fn clear<B: KeyedStateBackend>(
        &mut self,
        key: &u64,
        ctx: &mut WindowContext<'_, B, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let end = ctx.window().end;
        let fires = ctx.window_state().value(&fires())?.get()?.unwrap_or(0);
        let mut ends = ctx.global_state().aggregating(&key_ends())?;
        ends.add(1)?;
        let ends = ends.get()?.unwrap_or(0);
        let mut open = ctx.global_state().map(&open_windows())?;
        let was = open.get(&end)?;
        open.remove(&end)?;
        let label = format!("{key}/{end}/end|{fires}|{ends}|{was:?}");
        ctx.output(&ended_tag(), (label, 1))
    }
}

fn ended_tag() -> OutputTag<(String, u64)> {
    OutputTag::new("ended")
}

/// What [`AllKinds`] emits over [`common::write_lagging_events`]' events (lag 0: event
/// `n` has key `n % KEYS` and time `2n`): label → `[1]`, firings and ends.
fn all_kinds_model() -> (BTreeMap<String, Vec<u64>>, BTreeMap<String, Vec<u64>>) {
    let mut per_key: BTreeMap<u64, BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for n in 0..3000u64 {
        let t = 2 * n;
        let windows = per_key.entry(n % KEYS).or_default();
        windows.entry(t / WINDOW_MS).or_default().push(t);
    }
    let (mut fired, mut ended) = (BTreeMap::new(), BTreeMap::new());
    for (key, windows) in &per_key {
        let (mut g, mut records) = (0, 0);
        for (j, (w, times)) in windows.iter().enumerate() {
            let end = (w + 1) * WINDOW_MS;
            let firings = times.len() as u64 / EVERY;
            let mut sizes = Vec::new();
            for i in 1..=firings {
                let size = i * EVERY;
                sizes.push(size);
                g += 1;
                records += size;
                let latest = times[size as usize - 1];
                let size_at = render(
                    sizes
                        .iter()
                        .enumerate()
                        .map(|(f, s)| format!("{}:{s}", f + 1)),
                );
                let label = format!(
                    "{key}/{end}/{i}|{}|{size_at}|{latest}|{i}|{g}|{}|{i}|{records}",
                    render(sizes.iter().map(u64::to_string)),
                    j + 1,
                );
                fired.insert(label, vec![1]);
            }
            let was = (firings > 0).then_some(firings);
            ended.insert(
                format!("{key}/{end}/end|{firings}|{}|{was:?}", j + 1),
                vec![1],
            );
        }
    }
    (fired, ended)
}

/// source → parse (one subtask, failing at `fail_at` lines: each key's events in file
/// order) → timestamps (the event's time) → key_by → tumbling windows of [`WINDOW_MS`]
/// under a count trigger of [`EVERY`], [`AllKinds`] ("windows") → two-phase file sinks
/// of the firings (`out/fired`) and the ends (`out/ended`).
fn all_kinds_job(input: &Path, out: &Path, fail_at: Vec<u64>) -> cairn_runtime::JobGraph {
    let windows = source("source", FileSource::new(input))
        .process("parse", common::ParseEvents::new(fail_at))
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
        )
        .key_by(|e: &(u64, u64)| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(
            WINDOW_MS,
        )))
        .trigger(CountTrigger::of(EVERY))
        .process("windows", AllKinds);
    windows.side_output(&ended_tag()).sink(
        "ended-sink",
        TwoPhaseFileSink::new(out.join("ended"), common::format_line),
    );
    windows.sink(
        "fired-sink",
        TwoPhaseFileSink::new(out.join("fired"), common::format_line),
    )
}

/// Two failures between checkpoints: every firing and every end is the model's, each
/// once (the states were restored with the open windows, and the ended windows' states
/// were gone from the checkpoints).
fn all_kinds_through_failures(
    backend: StateBackendConfig,
    mode: SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = common::write_lagging_events(dir.path(), "events.txt", KEYS, 0);
    let out = dir.path().join("out");
    let cfg = common::event_time_config(dir.path(), backend, mode, unaligned, parallelism);
    let job = all_kinds_job(&input, &out, vec![900, 2_100]);
    let result = Job::new(job, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "the injected failures did not happen");
    let (fired, ended) = all_kinds_model();
    assert_eq!(fired.len(), 900);
    assert_eq!(common::read_output(&out.join("fired")), fired);
    assert_eq!(ended.len(), 300);
    assert_eq!(common::read_output(&out.join("ended")), ended);
}

#[test]
fn all_state_kinds_through_failures_heap_aligned() {
    all_kinds_through_failures(StateBackendConfig::HashMap, SnapshotMode::Full, false, 2);
}

#[test]
fn all_state_kinds_through_failures_heap_unaligned() {
    all_kinds_through_failures(
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
        true,
        3,
    );
}

#[test]
fn all_state_kinds_through_failures_rocksdb_aligned() {
    all_kinds_through_failures(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        false,
        3,
    );
}

#[test]
fn all_state_kinds_through_failures_rocksdb_unaligned() {
    all_kinds_through_failures(StateBackendConfig::rocksdb(), SnapshotMode::Full, true, 2);
}

/// A number per (key, window end).
type PerWindow = BTreeMap<(u64, u64), u64>;

/// Per (key, window end): the firings of the committed `fired` output, and the windows
/// of the committed `ended` output.
fn committed(out: &Path) -> (PerWindow, BTreeSet<(u64, u64)>) {
    let key_end = |label: &str| -> (u64, u64, String) {
        let parts: Vec<&str> = label.splitn(3, '/').collect();
        let number = |i: usize| parts[i].parse::<u64>().expect("a number");
        (number(0), number(1), parts[2].to_string())
    };
    let mut fired = BTreeMap::new();
    for label in common::read_output(&out.join("fired")).keys() {
        let (key, end, rest) = key_end(label);
        let i: u64 = rest
            .split('|')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("i");
        let n = fired.entry((key, end)).or_insert(0);
        *n = (*n).max(i);
    }
    let ended = common::read_output(&out.join("ended"))
        .keys()
        .map(|label| {
            let (key, end, _) = key_end(label);
            (key, end)
        })
        .collect();
    (fired, ended)
}

/// The entries of state `state` of operator `uid` in the snapshot at `path`:
/// (key, namespace bytes, user key bytes, value bytes).
type RawEntry = (u64, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

fn entries(path: &str, uid: &str, state: &str) -> Vec<RawEntry> {
    let snapshot = state_dump::open_snapshot(path).expect("open the savepoint");
    let op = snapshot.manifest.operator(uid).expect("the operator");
    let mut found = Vec::new();
    let u64s = BincodeCodec::<u64>::new();
    state_dump::scan_operator(
        &snapshot,
        op,
        None,
        &state_dump::NoProgress,
        &mut |e: state_dump::Entry<'_>| {
            if e.state.name == state {
                let key = u64s.decode(e.entry.key).expect("key");
                let user_key = e.entry.user_key.map(<[u8]>::to_vec);
                found.push((
                    key,
                    e.entry.namespace.to_vec(),
                    user_key,
                    e.entry.value.to_vec(),
                ));
            }
            Ok(true)
        },
    )
    .expect("scan");
    found
}

/// A savepoint under the heap backend at parallelism 2, part way and after a failure,
/// holds the per-window states of exactly the windows that have fired and not ended (each
/// window's `fires` is its committed firings) — those ended are gone, though `clear` does
/// not drop them — and the per-key states of every key; restored under RocksDB at
/// parallelism 3 through another failure, every firing and end is the model's, once.
#[test]
fn all_state_kinds_survive_a_savepoint_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = common::write_lagging_events(dir.path(), "events.txt", KEYS, 0);
    let out = dir.path().join("out");
    let mode = SnapshotMode::Full;

    let cfg = common::event_time_config(dir.path(), StateBackendConfig::HashMap, mode, false, 2);
    let handle = Job::new(all_kinds_job(&input, &out, vec![600]), cfg)
        .start()
        .expect("start");
    let started = std::time::Instant::now();
    while handle.records_read() < 1_800 || common::read_output(&out.join("ended")).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first run did not get far enough"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 1, "{first:?}");
    let (fired, ended) = committed(&out);
    let (model_fired, model_ended) = all_kinds_model();
    assert!(
        !ended.is_empty() && fired.values().sum::<u64>() < model_fired.len() as u64,
        "the first run committed part of the output: {} firings, {} ends",
        fired.len(),
        ended.len()
    );

    // Per window: `fires` of every window that fired and has not ended, nothing else.
    let windows = BincodeCodec::<TimeWindow>::new();
    let u64s = BincodeCodec::<u64>::new();
    let held: PerWindow = entries(&savepoint, "windows", "fires")
        .into_iter()
        .map(|(key, ns, _, value)| {
            let window = windows.decode(&ns).expect("window");
            ((key, window.end), u64s.decode(&value).expect("fires"))
        })
        .collect();
    let open: PerWindow = fired
        .iter()
        .filter(|(window, _)| !ended.contains(window))
        .map(|(window, n)| (*window, *n))
        .collect();
    assert_eq!(held, open, "per-window state of the open windows only");
    for state in ["sizes", "size-at", "last-time", "firings"] {
        let windows_held: BTreeSet<(u64, u64)> = entries(&savepoint, "windows", state)
            .into_iter()
            .map(|(key, ns, _, _)| (key, windows.decode(&ns).expect("window").end))
            .collect();
        let expected: BTreeSet<(u64, u64)> = open.keys().copied().collect();
        assert_eq!(windows_held, expected, "state {state}");
    }
    // Per key: its firings, and its open windows (the ended ones removed by `clear`).
    let mut key_total: BTreeMap<u64, u64> = BTreeMap::new();
    for ((key, _), n) in &fired {
        *key_total.entry(*key).or_insert(0) += n;
    }
    let held_totals: BTreeMap<u64, u64> = entries(&savepoint, "windows", "key-firings")
        .into_iter()
        .map(|(key, _, _, value)| (key, u64s.decode(&value).expect("total")))
        .collect();
    assert_eq!(held_totals, key_total);
    let held_open: PerWindow = entries(&savepoint, "windows", "open-windows")
        .into_iter()
        .map(|(key, _, user_key, value)| {
            let end = u64s.decode(&user_key.expect("a map entry")).expect("end");
            ((key, end), u64s.decode(&value).expect("firings"))
        })
        .collect();
    assert_eq!(held_open, open);

    let mut cfg = common::event_time_config(
        dir.path(),
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        false,
        3,
    );
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(all_kinds_job(&input, &out, vec![700]), cfg)
        .run()
        .expect("restored run");
    assert_eq!(second.restarts, 1, "{second:?}");
    assert_eq!(common::read_output(&out.join("fired")), model_fired);
    assert_eq!(common::read_output(&out.join("ended")), model_ended);
}

/// A window function with its own metrics: registered in `open` through
/// `WindowStates::metrics`, counting its firings and the elements it saw.
#[derive(Clone, Default)]
struct Metered {
    firings: Option<cairn_runtime::Counter>,
    elements: Option<cairn_runtime::Counter>,
}

impl ProcessWindowFunction<u64, Event, u64> for Metered {
    fn open<B: KeyedStateBackend>(
        &mut self,
        states: &mut WindowStates<'_, B>,
    ) -> cairn_runtime::Result<()> {
        self.firings = Some(states.metrics().counter("windowsFired")?);
        self.elements = Some(states.metrics().counter("elementsSeen")?);
        Ok(())
    }

    fn process(
        &mut self,
        _key: &u64,
        _window: TimeWindow,
        elements: Vec<Event>,
        out: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        if let (Some(f), Some(e)) = (&self.firings, &self.elements) {
            f.inc();
            e.inc_by(elements.len() as i64);
        }
        out.collect(elements.len() as u64)
    }
}

/// The metrics a window function registers in `open` are the operator's, scoped
/// `<uid>.<subtask>` (Flink's `getRuntimeContext().getMetricGroup()`): the tumbling
/// script's 5 firings of 8 elements in all (a late firing sees its window again), sessions' 3 firings of 4, count windows' 2 of 4.
#[test]
fn a_window_function_registers_its_own_metrics_in_open() {
    let sessions = vec![vec![(1, 1, 1), (1, 5, 2), (2, 3, 3)], vec![(1, 30, 4)]];
    let counted = vec![
        vec![(1, 1, 1), (1, 2, 2)],
        vec![(1, 3, 3), (1, 4, 4), (1, 5, 5)],
    ];
    let cases: Vec<(&str, Stream<u64>, i64, i64)> = vec![
        (
            "tumbling",
            tumbling_with_lateness().process("tumbling", Metered::default()),
            5,
            8,
        ),
        (
            "sessions",
            keyed(sessions)
                .window(EventTimeSessionWindows::with_gap(Duration::from_millis(10)))
                .process("sessions", Metered::default()),
            3,
            4,
        ),
        (
            "counted",
            keyed(counted)
                .count_window(2)
                .process("counted", Metered::default()),
            2,
            4,
        ),
    ];
    for (uid, stream, firings, elements) in cases {
        let got = Arc::new(Mutex::new(Vec::new()));
        let graph = stream.sink("sink", common::Collect(got.clone()));
        let result = Job::new(graph, script_config(StateBackendConfig::HashMap))
            .run()
            .expect("job");
        let seen: u64 = got.lock().expect("lock").iter().sum();
        assert_eq!(seen as i64, elements, "{uid}: elements emitted");
        assert_eq!(
            result.metrics.get(&format!("{uid}.0.windowsFired")),
            Some(&cairn_runtime::MetricValue::Counter(firings)),
            "{uid}"
        );
        assert_eq!(
            result.metrics.get(&format!("{uid}.0.elementsSeen")),
            Some(&cairn_runtime::MetricValue::Counter(elements)),
            "{uid}"
        );
    }
}
