//! Window hunt (a helper's): the new window features driven as an experienced Flink user
//! would, each against results computed from the input: user-defined triggers (timers of
//! both domains, values, deletions, purges) through failures, the changelog, savepoints
//! restored at another parallelism under the other backend; evictors on merging sessions;
//! count windows through unaligned checkpoints restored at another parallelism; windows
//! over a whole stream; incremental aggregation with a process function on sessions with
//! late firings; continuous purging triggers with lateness through failures; and restores
//! that change the window function, the trigger or the evictor.
//!
//! Every scripted run uses [`Steps`]: a source whose batches each go out with the
//! watermark of what came before in one poll (so no barrier falls between a batch and its
//! watermark), whose position is operator state (so a restore replays from a step), and
//! which may wait at gates the test opens.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{ManualClock, OperatorListStateDescriptor, OperatorListStateId};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobConfig, KeyedStream, ProcessingClock,
    RestartStrategy, SnapshotContext, Source, SourceStatus, StateBackendConfig, TimeWindow,
    Trigger, TriggerContext, TriggerResult, TumblingEventTimeWindows, WatermarkStrategy,
};

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

/// `(key, timestamp, value)`.
type Ev = (u64, u64, u64);

/// A timestamp meaning "emitted without one".
const UNTIMED: u64 = u64::MAX;

/// One step of a [`Steps`] source.
#[derive(Clone, Debug)]
enum Step {
    /// Emitted in one poll, which then reports idle: the task flushes and the assigner
    /// emits its watermark (the batches are below its 64-record check), before any
    /// barrier.
    Batch(Vec<Ev>),
    /// This many polls with nothing (about a millisecond each): time for checkpoints.
    Idle(u32),
    /// Waits until gate `i` is open.
    Gate(usize),
}

/// Gates a test opens, and whether a source has reached each.
#[derive(Debug, Default)]
struct Gates {
    open: [AtomicBool; 4],
    reached: [AtomicBool; 4],
}

impl Gates {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Gates that are all open.
    fn all_open() -> Arc<Self> {
        let g = Self::default();
        for o in &g.open {
            o.store(true, Ordering::SeqCst);
        }
        Arc::new(g)
    }

    fn open(&self, i: usize) {
        self.open[i].store(true, Ordering::SeqCst);
    }

    fn reached(&self, i: usize) -> bool {
        self.reached[i].load(Ordering::SeqCst)
    }
}

/// A replayable scripted source (one subtask): its position is operator state.
#[derive(Clone, Debug)]
struct Steps {
    steps: Arc<Vec<Step>>,
    gates: Arc<Gates>,
    next: u64,
    idled: u32,
    state: Option<OperatorListStateId<u64>>,
}

impl Steps {
    fn new(steps: Vec<Step>, gates: Arc<Gates>) -> Self {
        Self {
            steps: Arc::new(steps),
            gates,
            next: 0,
            idled: 0,
            state: None,
        }
    }
}

impl Checkpointed for Steps {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<u64>::split("position"))?;
        self.next = ctx
            .operator_state
            .list(id)?
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        self.state = Some(id);
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        if let Some(id) = self.state {
            *ctx.operator_state.list(id)? = vec![self.next];
        }
        Ok(())
    }
}

impl Source for Steps {
    type Out = Ev;

    fn poll(
        &mut self,
        out: &mut Collector<'_, Ev>,
        _max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        let Some(step) = self.steps.get(self.next as usize) else {
            return Ok(SourceStatus::End);
        };
        match step {
            Step::Batch(events) => {
                for &(k, t, v) in events {
                    match t {
                        UNTIMED => out.collect((k, t, v))?,
                        _ => out.collect_with_timestamp((k, t, v), t)?,
                    }
                }
                self.next += 1;
                Ok(SourceStatus::Idle)
            }
            Step::Idle(n) => {
                self.idled += 1;
                if self.idled >= *n {
                    self.idled = 0;
                    self.next += 1;
                }
                Ok(SourceStatus::Idle)
            }
            Step::Gate(i) => {
                self.gates.reached[*i].store(true, Ordering::SeqCst);
                if self.gates.open[*i].load(Ordering::SeqCst) {
                    self.next += 1;
                    Ok(SourceStatus::More)
                } else {
                    Ok(SourceStatus::Idle)
                }
            }
        }
    }
}

/// The steps' events keyed, with their timestamps as event time, watermarks `max - 1`
/// (the source in one subtask, its assigner chained to it).
fn keyed_events(steps: Steps) -> KeyedStream<u64, Ev> {
    source("source", steps)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &Ev| e.1),
        )
        .parallelism(1)
        .key_by(|e: &Ev| e.0)
}

/// Adds values, keeping the key and the latest timestamp.
fn add(a: Ev, b: Ev) -> Ev {
    (a.0, a.1.max(b.1), a.2 + b.2)
}

/// One subtask, a watermark at every batch.
fn script_config(backend: StateBackendConfig) -> JobConfig {
    JobConfig {
        backend,
        parallelism: 1,
        auto_watermark_interval: Duration::from_nanos(1),
        ..JobConfig::default()
    }
}

/// Polls `done` every 5 ms for up to 20 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn shared<T>() -> Arc<Mutex<Vec<T>>> {
    Arc::new(Mutex::new(Vec::new()))
}

fn sorted<T: Clone + Ord>(v: &Arc<Mutex<Vec<T>>>) -> Vec<T> {
    let mut out = v.lock().expect("lock").clone();
    out.sort();
    out
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The exactly-once sink of text lines.
fn line_sink(dir: &Path) -> TwoPhaseFileSink<String> {
    TwoPhaseFileSink::new(dir, |s: &String, out: &mut Vec<u8>| {
        out.extend_from_slice(s.as_bytes())
    })
}

/// Every committed line under `dir`, sorted.
fn read_lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.expect("dir entry");
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read output");
        out.extend(text.lines().map(str::to_string));
    }
    out.sort();
    out
}

fn sorted_lines(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A job checkpointing every `interval_ms` into `dir`, a watermark at every batch, up to
/// five restarts 10 ms apart.
fn failure_config(dir: &Path, interval_ms: u64, parallelism: u32) -> JobConfig {
    let mut cfg = common::config(dir, interval_ms);
    cfg.parallelism = parallelism;
    cfg.auto_watermark_interval = Duration::from_nanos(1);
    cfg.restart = RestartStrategy::fixed_delay(5, ms(10));
    cfg
}

// ---------------------------------------------------------------------------------------
// 1. A user-defined trigger's processing-time timer on event-time windows.
// ---------------------------------------------------------------------------------------

/// Flink's `EventTimeTrigger` plus a processing-time timeout: a window fires when the
/// watermark passes its end, and early when the processing clock reaches `timeout` after
/// its first record (Flink's `ProcessingTimeoutTrigger` around an event-time trigger).
#[derive(Clone, Debug)]
struct EndOrTimeout {
    timeout: u64,
}

impl Trigger<Ev> for EndOrTimeout {
    fn on_element(
        &mut self,
        _: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        if ctx
            .current_watermark()
            .is_some_and(|w| window.max_timestamp() <= w)
        {
            return Ok(TriggerResult::Fire);
        }
        ctx.register_event_time_timer(window.max_timestamp());
        if ctx.get::<u64>("timeout")?.is_none() {
            let at = ctx.current_processing_time() + self.timeout;
            ctx.put("timeout", &at)?;
            ctx.register_processing_time_timer(at);
        }
        Ok(TriggerResult::Continue)
    }

    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(match time == window.max_timestamp() {
            true => TriggerResult::Fire,
            false => TriggerResult::Continue,
        })
    }

    fn on_processing_time(
        &mut self,
        _: u64,
        _: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(TriggerResult::Fire)
    }

    fn clear(
        &mut self,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<()> {
        ctx.delete_event_time_timer(window.max_timestamp());
        if let Some(at) = ctx.get::<u64>("timeout")? {
            ctx.delete_processing_time_timer(at);
        }
        Ok(())
    }
}

/// Tumbling event-time windows of 100 ms under [`EndOrTimeout`] (timeout 149 ms; the
/// processing clock stands at 50, so every window's timeout is at 199).
/// - Batch A (watermark 149): key 1 gets 1 at 10, 2 at 40, 4 at 120, 8 at 150; key 2 100
///   at 20, 200 at 130. `[0, 100)` fires by the watermark: 3 and 100.
/// - The clock moves to 199: `[100, 200)` fires early (12 and 200). Its event-time end
///   (199) is still ahead: as in Flink, a processing-time timer says nothing about an
///   event-time window's lifetime, so the window keeps its contents and its trigger's
///   values.
/// - Batch B (watermark 269): 16 at 170 and 32 at 260 for key 1, 300 at 180 and 400 at
///   270 for key 2. `[100, 200)` fires at its end with everything: 28 and 500.
/// - The end of the input fires `[200, 300)`: 32 and 400.
#[test]
fn a_processing_time_timer_of_a_custom_trigger_does_not_end_event_time_windows() {
    let clock = Arc::new(ManualClock::new(50));
    let gates = Gates::new();
    let steps = Steps::new(
        vec![
            Step::Batch(vec![
                (1, 10, 1),
                (2, 20, 100),
                (1, 40, 2),
                (1, 120, 4),
                (2, 130, 200),
                (1, 150, 8),
            ]),
            Step::Gate(0),
            Step::Batch(vec![
                (1, 170, 16),
                (2, 180, 300),
                (1, 260, 32),
                (2, 270, 400),
            ]),
        ],
        gates.clone(),
    );
    let out = shared();
    let graph = keyed_events(steps)
        .window(TumblingEventTimeWindows::of(ms(100)))
        .custom_trigger(EndOrTimeout { timeout: 149 })
        .reduce("windows", add)
        .map("label", |(k, w, e): (u64, TimeWindow, Ev)| {
            (k, w.start, e.2)
        })
        .sink("sink", common::Collect(out.clone()));
    let mut cfg = script_config(StateBackendConfig::HashMap);
    cfg.processing_clock = ProcessingClock::new(clock.clone());
    let handle = Job::new(graph, cfg).start().expect("start");
    wait_for("[0, 100) fired", || out.lock().expect("lock").len() >= 2);
    assert_eq!(sorted(&out), vec![(1, 0, 3), (2, 0, 100)]);
    clock.set(199);
    wait_for("the timeouts", || out.lock().expect("lock").len() >= 4);
    gates.open(0);
    handle.wait().expect("job");
    assert_eq!(
        sorted(&out),
        vec![
            (1, 0, 3),
            (1, 100, 12),
            (1, 100, 28),
            (1, 200, 32),
            (2, 0, 100),
            (2, 100, 200),
            (2, 100, 500),
            (2, 200, 400),
        ]
    );
}

/// On processing-time windows: with a window's first record, a processing-time timer at
/// its end and an event-time timer at the same time (it fires when either clock passes
/// it); a [`MARK`] fires at once.
#[derive(Clone, Debug)]
struct EitherClock;

impl Trigger<Ev> for EitherClock {
    fn on_element(
        &mut self,
        e: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        if ctx.get::<bool>("armed")?.is_none() {
            ctx.put("armed", &true)?;
            ctx.register_processing_time_timer(window.max_timestamp());
            ctx.register_event_time_timer(window.max_timestamp());
        }
        Ok(match e.2 == MARK {
            true => TriggerResult::Fire,
            false => TriggerResult::Continue,
        })
    }

    fn on_event_time(
        &mut self,
        _: u64,
        _: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(TriggerResult::Fire)
    }

    fn on_processing_time(
        &mut self,
        _: u64,
        _: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(TriggerResult::Fire)
    }
}

/// The other way round: processing-time windows of 100 ms (the clock stands at 10: every
/// record is in `[0, 100)`) under [`EitherClock`], the records carrying event time. 1 at
/// 10 and 2 at 20, then 4 at 150: the watermark (149) passes the event-time timer at 99,
/// which fires the window (7). Its processing-time end (99) is far ahead of the clock, so
/// it keeps its contents and values, and MARK at 160 fires it with all four records.
#[test]
fn an_event_time_timer_of_a_custom_trigger_does_not_end_processing_time_windows() {
    let steps = Steps::new(
        vec![
            Step::Batch(vec![(1, 10, 1), (1, 20, 2)]),
            Step::Batch(vec![(1, 150, 4)]),
            Step::Batch(vec![(1, 160, MARK)]),
        ],
        Gates::all_open(),
    );
    let out = shared();
    let graph = keyed_events(steps)
        .window(cairn_runtime::TumblingProcessingTimeWindows::of(ms(100)))
        .custom_trigger(EitherClock)
        .aggregate("windows", CountAndSum)
        .map("label", |(k, w, (c, s)): (u64, TimeWindow, (u64, u64))| {
            (k, w.start, c, s)
        })
        .sink("sink", common::Collect(out.clone()));
    let mut cfg = script_config(StateBackendConfig::HashMap);
    cfg.processing_clock = ProcessingClock::new(Arc::new(ManualClock::new(10)));
    Job::new(graph, cfg).run().expect("job");
    assert_eq!(sorted(&out), vec![(1, 0, 3, 7), (1, 0, 4, 1_007)]);
}

// ---------------------------------------------------------------------------------------
// 2. User-defined triggers against the built-in ones they copy, on sliding windows.
// ---------------------------------------------------------------------------------------

/// Pseudo-random events: mostly ahead of the largest timestamp so far, some behind it
/// (late, some past any lateness); values are distinct bits, so a sum names its records.
fn hunt_events(seed: u64, count: usize, keys: u64) -> Vec<Ev> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut max = 1_000;
    (0..count)
        .map(|i| {
            let key = next() % keys;
            let t = if next() % 5 == 0 {
                max - next() % 25
            } else {
                max += next() % 5;
                max
            };
            (key, t, 1u64 << (i % 60))
        })
        .collect()
}

/// Flink's `EventTimeTrigger` and `CountTrigger` written as user-defined triggers,
/// optionally wrapped as by `PurgingTrigger`.
#[derive(Clone, Copy, Debug)]
enum Copied {
    EventTime,
    Count(u64),
}

#[derive(Clone, Copy, Debug)]
struct CopiedTrigger {
    kind: Copied,
    purge: bool,
}

impl CopiedTrigger {
    fn answer(&self, fire: bool) -> TriggerResult {
        match (fire, self.purge) {
            (false, _) => TriggerResult::Continue,
            (true, false) => TriggerResult::Fire,
            (true, true) => TriggerResult::FireAndPurge,
        }
    }

    /// The built-in trigger it copies.
    fn built_in(&self) -> cairn_runtime::WindowTrigger {
        let t = match self.kind {
            Copied::EventTime => cairn_runtime::EventTimeTrigger::create(),
            Copied::Count(n) => cairn_runtime::CountTrigger::of(n),
        };
        match self.purge {
            true => cairn_runtime::PurgingTrigger::of(t),
            false => t,
        }
    }
}

impl Trigger<Ev> for CopiedTrigger {
    fn on_element(
        &mut self,
        _: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        let fire = match self.kind {
            Copied::EventTime => {
                let late = ctx
                    .current_watermark()
                    .is_some_and(|w| window.max_timestamp() <= w);
                if !late {
                    ctx.register_event_time_timer(window.max_timestamp());
                }
                late
            }
            Copied::Count(n) => {
                let count = ctx.get::<u64>("count")?.unwrap_or(0) + 1;
                if count >= n {
                    ctx.remove("count")?;
                } else {
                    ctx.put("count", &count)?;
                }
                count >= n
            }
        };
        Ok(self.answer(fire))
    }

    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        let fire = matches!(self.kind, Copied::EventTime) && time == window.max_timestamp();
        Ok(self.answer(fire))
    }

    fn clear(
        &mut self,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<()> {
        match self.kind {
            Copied::EventTime => ctx.delete_event_time_timer(window.max_timestamp()),
            Copied::Count(_) => ctx.remove("count")?,
        }
        Ok(())
    }
}

/// What fired, `((key, start, end, sum), timestamp)`, and the late data, both sorted.
type Fired = ((u64, u64, u64, u64), Option<u64>);

/// One event per batch (a watermark after each) through sliding windows with lateness
/// and a late side output, under `trigger` (built in) or `custom`.
fn run_copied(
    events: &[Ev],
    (assigner, lateness, evictor): (cairn_runtime::WindowAssigner, u64, Option<u64>),
    trigger: CopiedTrigger,
    custom: bool,
    backend: StateBackendConfig,
) -> (Vec<Fired>, Vec<Ev>) {
    let steps = events.iter().map(|e| Step::Batch(vec![*e])).collect();
    let late = cairn_runtime::OutputTag::<Ev>::new("late");
    let windowed = keyed_events(Steps::new(steps, Gates::all_open()))
        .window(assigner)
        .allowed_lateness(ms(lateness))
        .side_output_late_data(&late);
    let windowed = match evictor {
        Some(n) => windowed.evictor(cairn_runtime::CountEvictor::of(n).evict_after()),
        None => windowed,
    };
    let windowed = match custom {
        true => windowed.custom_trigger(trigger),
        false => windowed.trigger(trigger.built_in()),
    };
    let fired = windowed.reduce("windows", add);
    let (out, late_out) = (shared(), shared());
    let _ = fired
        .side_output(&late)
        .sink("late", common::Collect(late_out.clone()));
    let graph = fired
        .process(
            "stamp",
            cairn_runtime::function::FnProcess(
                |(k, w, e): (u64, TimeWindow, Ev), out: &mut Collector<'_, Fired>| {
                    let t = out.timestamp();
                    out.collect(((k, w.start, w.end, e.2), t))
                },
            ),
        )
        .sink("sink", common::Collect(out.clone()));
    Job::new(graph, script_config(backend)).run().expect("job");
    (sorted(&out), sorted(&late_out))
}

/// Flink's event-time and count triggers (plain and purging) written as user-defined
/// triggers fire exactly as the built-in ones on sliding and tumbling windows with
/// allowed lateness (late firings, cleanups, one key timer standing for several windows,
/// values cleared with their windows), behind a count evictor or not, and drop the same
/// records as late.
#[test]
fn user_defined_copies_of_flinks_triggers_fire_as_the_built_in_ones() {
    let events = hunt_events(19, 90, 3);
    let sliding = || cairn_runtime::SlidingEventTimeWindows::of(ms(10), ms(5));
    let tumbling = || TumblingEventTimeWindows::of(ms(10));
    let triggers = [
        CopiedTrigger {
            kind: Copied::EventTime,
            purge: false,
        },
        CopiedTrigger {
            kind: Copied::Count(3),
            purge: false,
        },
        CopiedTrigger {
            kind: Copied::Count(2),
            purge: true,
        },
        CopiedTrigger {
            kind: Copied::EventTime,
            purge: true,
        },
    ];
    let windows = [
        (sliding(), 0, None),
        (sliding(), 5, None),
        (sliding(), 6, None),
        (tumbling(), 4, None),
        (sliding(), 6, Some(2)),
    ];
    for windows in windows {
        for trigger in triggers {
            let heap = StateBackendConfig::HashMap;
            let expected = run_copied(&events, windows, trigger, false, heap.clone());
            assert!(expected.0.len() > 10, "{trigger:?}: {expected:?}");
            assert!(!expected.1.is_empty(), "{trigger:?}: no late data");
            let actual = run_copied(&events, windows, trigger, true, heap);
            assert_eq!(actual, expected, "{trigger:?} {windows:?}");
        }
    }
    let (trigger, windows) = (triggers[1], (sliding(), 6, None));
    let expected = run_copied(
        &events,
        windows,
        trigger,
        false,
        StateBackendConfig::HashMap,
    );
    let rocks = run_copied(
        &events,
        windows,
        trigger,
        true,
        StateBackendConfig::rocksdb(),
    );
    assert_eq!(rocks, expected, "under RocksDB");
}

// ---------------------------------------------------------------------------------------
// 3. Time evictors on processing-time windows.
// ---------------------------------------------------------------------------------------

/// Processing-time windows of 100 ms (the clock stands at 150: every record is in
/// `[100, 200)`) fired by a count trigger, behind a time evictor of 10 ms: records the
/// source emitted without a timestamp count as the earliest and go when another has one
/// (none goes when none has one, or when the latest is within the size of the epoch);
/// evicting after the function, the next firing sees what the last one kept.
#[test]
fn time_evictors_on_processing_time_windows_go_by_the_records_timestamps() {
    let u = UNTIMED;
    let run = |events: Vec<Ev>, count: u64, after: bool| {
        let evictor = cairn_runtime::TimeEvictor::of(ms(10));
        let evictor = if after {
            evictor.evict_after()
        } else {
            evictor
        };
        let out = shared();
        let graph = source(
            "source",
            Steps::new(vec![Step::Batch(events)], Gates::all_open()),
        )
        .key_by(|e: &Ev| e.0)
        .window(cairn_runtime::TumblingProcessingTimeWindows::of(ms(100)))
        .trigger(cairn_runtime::CountTrigger::of(count))
        .evictor(evictor)
        .process(
            "windows",
            cairn_runtime::FnWindow(
                |k: &u64,
                 w: TimeWindow,
                 events: Vec<Ev>,
                 out: &mut Collector<'_, (u64, u64, Vec<u64>)>| {
                    out.collect((*k, w.start, events.iter().map(|e| e.2).collect()))
                },
            ),
        )
        .sink("sink", common::Collect(out.clone()));
        let mut cfg = script_config(StateBackendConfig::HashMap);
        cfg.processing_clock = ProcessingClock::new(Arc::new(ManualClock::new(150)));
        Job::new(graph, cfg).run().expect("job");
        sorted(&out)
    };
    let before = run(
        vec![
            (1, u, 1),
            (2, 5, 10),
            (1, u, 2),
            (2, 20, 20),
            (3, u, 100),
            (1, u, 3),
            (2, 16, 30),
            (3, 50, 200),
            (4, u, 7),
            (3, 45, 300),
            (4, 3, 8),
            (4, u, 9),
        ],
        3,
        false,
    );
    assert_eq!(
        before,
        vec![
            (1, 100, vec![1, 2, 3]),
            (2, 100, vec![20, 30]),
            (3, 100, vec![200, 300]),
            (4, 100, vec![7, 8, 9]),
        ]
    );
    let after = run(
        vec![(2, 5, 10), (2, 20, 20), (2, 16, 30), (2, 40, 40)],
        2,
        true,
    );
    assert_eq!(
        after,
        vec![(2, 100, vec![10, 20]), (2, 100, vec![20, 30, 40])]
    );
}

// ---------------------------------------------------------------------------------------
// 4. Incremental aggregation with a process function on sessions with late firings.
// ---------------------------------------------------------------------------------------

/// Counts and sums values; accumulators merge.
#[derive(Clone, Debug)]
struct CountAndSum;

impl cairn_core::AggregateFunction<Ev, (u64, u64), (u64, u64)> for CountAndSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), e: Ev) {
        acc.0 += 1;
        acc.1 += e.2;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

impl cairn_core::MergingAggregateFunction<Ev, (u64, u64), (u64, u64)> for CountAndSum {
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// What the process functions of the session tests emit: `(key, start, end, count, sum,
/// timestamp of the output, how many values the function got)`.
type SessionOut = (u64, u64, u64, u64, u64, Option<u64>, usize);

/// The session script (gap 10 ms, 20 ms of allowed lateness, late data to a side output):
/// - Key 1: 1 at 0, 2 at 4, 4 at 30, 8 at 20 (`[20, 30)` touches `[30, 40)`: they merge);
///   key 2: 1000 at 1. Watermark 29: `[0, 14)` of key 1 and `[1, 11)` of key 2 fire.
/// - 16 at 6: late, extends the fired `[0, 14)` to `[0, 16)`, which fires again at once;
///   then 32 at 12 bridges `[0, 16)` and `[20, 40)` into `[0, 40)`, whose end is ahead of
///   the watermark: no firing now.
/// - 64 at 60; watermark 59: `[0, 40)` fires (and is dropped: 39 + 20 = 59).
/// - 128 at 35: late, but its own session `[35, 45)` is within the lateness: it fires at
///   once alone. 256 at 5: `[5, 15)` is past its lateness (14 + 20 <= 59): late data.
/// - The end of the input fires `[60, 70)`.
fn session_steps() -> Vec<Step> {
    vec![
        Step::Batch(vec![
            (1, 0, 1),
            (1, 4, 2),
            (2, 1, 1000),
            (1, 30, 4),
            (1, 20, 8),
        ]),
        Step::Batch(vec![(1, 6, 16), (1, 12, 32)]),
        Step::Batch(vec![(1, 60, 64)]),
        Step::Batch(vec![(1, 35, 128), (1, 5, 256)]),
    ]
}

/// Runs `windows` of the session script, whose result is `SessionOut`s, under `backend`;
/// returns them and the late data, sorted.
fn run_sessions(
    windows: impl FnOnce(
        cairn_runtime::WindowedStream<
            u64,
            Ev,
            cairn_runtime::SessionWindows<cairn_runtime::FixedGap>,
        >,
    ) -> cairn_runtime::Stream<SessionOut>,
    backend: StateBackendConfig,
) -> (Vec<SessionOut>, Vec<Ev>) {
    let late = cairn_runtime::OutputTag::<Ev>::new("late");
    let windowed = keyed_events(Steps::new(session_steps(), Gates::all_open()))
        .window(cairn_runtime::EventTimeSessionWindows::with_gap(ms(10)))
        .allowed_lateness(ms(20))
        .side_output_late_data(&late);
    let result = windows(windowed);
    let (out, late_out) = (shared(), shared());
    let _ = result
        .side_output(&late)
        .sink("late", common::Collect(late_out.clone()));
    let graph = result.sink("sink", common::Collect(out.clone()));
    let mut cfg = script_config(backend);
    cfg.parallelism = 2;
    Job::new(graph, cfg).run().expect("job");
    (sorted(&out), sorted(&late_out))
}

/// A process function of one folded value `(count, sum)`.
fn describe_count_and_sum(
    k: &u64,
    w: TimeWindow,
    values: Vec<(u64, u64)>,
    out: &mut Collector<'_, SessionOut>,
) -> cairn_runtime::Result<()> {
    let t = out.timestamp();
    let (c, s) = values[0];
    out.collect((*k, w.start, w.end, c, s, t, values.len()))
}

/// A process function of one reduced event (count 0: a reduce does not count).
fn describe_event(
    k: &u64,
    w: TimeWindow,
    values: Vec<Ev>,
    out: &mut Collector<'_, SessionOut>,
) -> cairn_runtime::Result<()> {
    let t = out.timestamp();
    out.collect((*k, w.start, w.end, 0, values[0].2, t, values.len()))
}

/// `reduce_and_process` and `aggregate_and_process` on merging sessions: the function
/// gets the one folded value of each firing, with the merged session and its last
/// millisecond as timestamp, including the late firings within the lateness; behind a
/// count evictor of 2 a session keeps its records (merged as lists: the earlier session's
/// first) and each firing folds the last two, what it evicts gone for the next. Both
/// backends.
#[test]
fn incremental_functions_on_merging_sessions_with_late_firings_and_an_evictor() {
    let row = |k, s, e, c, sum| (k, s, e, c, sum, Some(e - 1), 1);
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let late = vec![(1, 5, 256)];
        let reduced = run_sessions(
            |w| w.reduce_and_process("windows", add, cairn_runtime::FnWindow(describe_event)),
            backend.clone(),
        );
        let expected = vec![
            row(1, 0, 14, 0, 3),
            row(1, 0, 16, 0, 19),
            row(1, 0, 40, 0, 63),
            row(1, 35, 45, 0, 128),
            row(1, 60, 70, 0, 64),
            row(2, 1, 11, 0, 1000),
        ];
        assert_eq!(reduced, (expected, late.clone()), "reduce, {backend:?}");

        let aggregated = run_sessions(
            |w| {
                w.aggregate_and_process(
                    "windows",
                    CountAndSum,
                    cairn_runtime::FnWindow(describe_count_and_sum),
                )
            },
            backend.clone(),
        );
        let expected = vec![
            row(1, 0, 14, 2, 3),
            row(1, 0, 16, 3, 19),
            row(1, 0, 40, 6, 63),
            row(1, 35, 45, 1, 128),
            row(1, 60, 70, 1, 64),
            row(2, 1, 11, 1, 1000),
        ];
        assert_eq!(
            aggregated,
            (expected, late.clone()),
            "aggregate, {backend:?}"
        );

        // Behind the evictor: [1, 2] → 3; [1, 2, 16] → [2, 16]; merged [2, 16, 4, 8, 32]
        // → [8, 32].
        let evicted = run_sessions(
            |w| {
                w.evictor(cairn_runtime::CountEvictor::of(2))
                    .reduce_and_process("windows", add, cairn_runtime::FnWindow(describe_event))
            },
            backend.clone(),
        );
        let expected = vec![
            row(1, 0, 14, 0, 3),
            row(1, 0, 16, 0, 18),
            row(1, 0, 40, 0, 40),
            row(1, 35, 45, 0, 128),
            row(1, 60, 70, 0, 64),
            row(2, 1, 11, 0, 1000),
        ];
        assert_eq!(
            evicted,
            (expected, late.clone()),
            "evicting reduce, {backend:?}"
        );

        let evicted = run_sessions(
            |w| {
                w.evictor(cairn_runtime::CountEvictor::of(2))
                    .aggregate_and_process(
                        "windows",
                        CountAndSum,
                        cairn_runtime::FnWindow(describe_count_and_sum),
                    )
            },
            backend.clone(),
        );
        let expected = vec![
            row(1, 0, 14, 2, 3),
            row(1, 0, 16, 2, 18),
            row(1, 0, 40, 2, 40),
            row(1, 35, 45, 1, 128),
            row(1, 60, 70, 1, 64),
            row(2, 1, 11, 1, 1000),
        ];
        assert_eq!(evicted, (expected, late), "evicting aggregate, {backend:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Windows over a whole stream: sessions and a user-defined trigger.
// ---------------------------------------------------------------------------------------

/// Fires and purges every `n`-th record of a window, and fires what is left at its end.
#[derive(Clone, Debug)]
struct EveryNthOrEnd(u64);

impl Trigger<Ev> for EveryNthOrEnd {
    fn on_element(
        &mut self,
        _: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        ctx.register_event_time_timer(window.max_timestamp());
        let n = ctx.get::<u64>("n")?.unwrap_or(0) + 1;
        if n == self.0 {
            ctx.remove("n")?;
            return Ok(TriggerResult::FireAndPurge);
        }
        ctx.put("n", &n)?;
        Ok(TriggerResult::Continue)
    }

    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(match time == window.max_timestamp() {
            true => TriggerResult::FireAndPurge,
            false => TriggerResult::Continue,
        })
    }

    fn clear(
        &mut self,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<()> {
        ctx.delete_event_time_timer(window.max_timestamp());
        Ok(())
    }
}

/// `window_all` at a job parallelism of 3 (the source in one subtask, so the order of
/// the records is known): sessions over every record whatever its key (the session
/// script's events all in one stream: key 2's 1000 at 1 joins key 1's first session),
/// with a late firing and late data; and tumbling windows under a user-defined trigger
/// firing every third record of the whole stream and the rest at the window's end. The
/// key is `()`, the operator runs in one subtask.
#[test]
fn windows_over_a_whole_stream_with_sessions_and_a_user_defined_trigger() {
    let stream = |steps: Vec<Step>| {
        source("source", Steps::new(steps, Gates::all_open()))
            .assign_timestamps_and_watermarks(
                "timestamps",
                WatermarkStrategy::for_monotonous_timestamps(|e: &Ev| e.1),
            )
            .parallelism(1)
    };
    let mut cfg = script_config(StateBackendConfig::HashMap);
    cfg.parallelism = 3;

    // Sessions: [0, 14) {1, 2, 1000} fires at 29; 16 at 6 extends it to [0, 16) (late
    // firing); 32 at 12 merges it with [20, 40); [0, 40) fires at 59; 128 at 35 alone;
    // 256 at 5 is late data; [60, 70) at the end.
    let late = cairn_runtime::OutputTag::<Ev>::new("late");
    let sessions = stream(session_steps())
        .window_all(cairn_runtime::EventTimeSessionWindows::with_gap(ms(10)))
        .allowed_lateness(ms(20))
        .side_output_late_data(&late)
        .reduce_and_process(
            "windows",
            add,
            cairn_runtime::FnWindow(
                |_: &(), w: TimeWindow, v: Vec<Ev>, out: &mut Collector<'_, (u64, u64, u64)>| {
                    out.collect((w.start, w.end, v[0].2))
                },
            ),
        );
    let (out, late_out) = (shared(), shared());
    let _ = sessions
        .side_output(&late)
        .sink("late", common::Collect(late_out.clone()));
    let graph = sessions.sink("sink", common::Collect(out.clone()));
    Job::new(graph, cfg.clone()).run().expect("sessions");
    assert_eq!(
        sorted(&out),
        vec![
            (0, 14, 1003),
            (0, 16, 1019),
            (0, 40, 1063),
            (35, 45, 128),
            (60, 70, 64)
        ]
    );
    assert_eq!(sorted(&late_out), vec![(1, 5, 256)]);

    // Every third record of the whole stream, then what is left at the window's end.
    let steps = vec![
        Step::Batch(vec![(1, 10, 1), (2, 20, 2), (3, 30, 4), (1, 40, 8)]),
        Step::Batch(vec![(2, 150, 16), (3, 160, 32)]),
        Step::Batch(vec![(1, 170, 64), (2, 180, 128)]),
    ];
    let out = shared();
    let graph = stream(steps)
        .window_all(TumblingEventTimeWindows::of(ms(100)))
        .custom_trigger(EveryNthOrEnd(3))
        .reduce("windows", add)
        .map("label", |((), w, e): ((), TimeWindow, Ev)| (w.start, e.2))
        .sink("sink", common::Collect(out.clone()));
    Job::new(graph, cfg).run().expect("custom trigger");
    assert_eq!(sorted(&out), vec![(0, 7), (0, 8), (100, 112), (100, 128)]);
}

// ---------------------------------------------------------------------------------------
// 6. Runs through failures: a scripted source, a model, an exactly-once sink.
// ---------------------------------------------------------------------------------------

/// A xorshift generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// The scripted events (keyed) after an operator failing at `fail_at` records, with their
/// timestamps as event time under `strategy`, all in one subtask.
fn failing_keyed(
    steps: Steps,
    fail_at: Vec<u64>,
    strategy: WatermarkStrategy<Ev>,
) -> KeyedStream<u64, Ev> {
    source("source", steps)
        .process("fail", common::unaligned::FailEvery::<Ev>::at(fail_at))
        .assign_timestamps_and_watermarks("timestamps", strategy)
        .parallelism(1)
        .key_by(|e: &Ev| e.0)
}

fn monotonous() -> WatermarkStrategy<Ev> {
    WatermarkStrategy::for_monotonous_timestamps(|e: &Ev| e.1)
}

/// Where the mid-window timer of [`ThirdsMidEnd`] is, after a window's start.
const MID: u64 = 49;

/// A user-defined trigger with values and timers of its own: it fires and purges every
/// third record of a window (counting in a value), fires the window's running result at
/// a timer in its middle (set with its first record, which a value remembers; a record
/// whose value is a multiple of 11 deletes it), and fires and purges what is left at a
/// timer at its end; `clear` deletes both timers.
#[derive(Clone, Debug)]
struct ThirdsMidEnd;

impl Trigger<Ev> for ThirdsMidEnd {
    fn on_element(
        &mut self,
        e: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        if ctx.get::<bool>("armed")?.is_none() {
            ctx.put("armed", &true)?;
            ctx.register_event_time_timer(window.start + MID);
            ctx.register_event_time_timer(window.max_timestamp());
        }
        if e.2.is_multiple_of(11) {
            ctx.delete_event_time_timer(window.start + MID);
        }
        let n = ctx.get::<u64>("n")?.unwrap_or(0) + 1;
        if n == 3 {
            ctx.remove("n")?;
            return Ok(TriggerResult::FireAndPurge);
        }
        ctx.put("n", &n)?;
        Ok(TriggerResult::Continue)
    }

    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(if time == window.start + MID {
            TriggerResult::Fire
        } else if time == window.max_timestamp() {
            TriggerResult::FireAndPurge
        } else {
            TriggerResult::Continue
        })
    }

    fn clear(
        &mut self,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<()> {
        ctx.delete_event_time_timer(window.start + MID);
        ctx.delete_event_time_timer(window.max_timestamp());
        Ok(())
    }
}

/// Events in increasing time (each batch moves the watermark on), `batches` batches of
/// one to four records over 12 keys, values 1, 2, ..; a gate after `gate_after` batches.
fn rising_steps(seed: u64, batches: usize, gate_after: Option<usize>) -> Vec<Step> {
    let mut rng = Rng(seed | 1);
    let (mut t, mut v) = (0, 0);
    let mut steps = Vec::new();
    for i in 0..batches {
        if gate_after == Some(i) {
            steps.push(Step::Gate(0));
        }
        let batch = (0..1 + rng.next(4))
            .map(|_| {
                t += 1 + rng.next(12);
                v += 1;
                (rng.next(12), t, v)
            })
            .collect();
        steps.push(Step::Batch(batch));
        steps.push(Step::Idle(2));
    }
    steps
}

/// What [`ThirdsMidEnd`] fires on tumbling windows of 100 ms (an aggregate counting and
/// summing), as `key/start/count/sum` lines: each batch's records, then its watermark
/// fires the due timers in time order (a key has one timer per time; the operator's
/// cleanup at a window's end comes after the trigger's timer there).
fn thirds_model(steps: &[Step]) -> Vec<String> {
    #[derive(Default)]
    struct Win {
        contents: Option<(u64, u64)>,
        n: u64,
        armed: bool,
    }
    let mut wins: BTreeMap<(u64, u64), Win> = BTreeMap::new();
    let mut timers: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    let mut out = Vec::new();
    let emit = |out: &mut Vec<String>, k: u64, s: u64, w: &Win| {
        if let Some((c, sum)) = w.contents {
            out.push(format!("{k}/{s}/{c}/{sum}"));
        }
    };
    let register = |timers: &mut BTreeMap<(u64, u64), Vec<u64>>, k: u64, at: u64, s: u64| {
        let ws = timers.entry((k, at)).or_default();
        if !ws.contains(&s) {
            ws.push(s);
        }
    };
    let delete = |timers: &mut BTreeMap<(u64, u64), Vec<u64>>, k: u64, at: u64, s: u64| {
        if let Some(ws) = timers.get_mut(&(k, at)) {
            ws.retain(|x| *x != s);
            if ws.is_empty() {
                timers.remove(&(k, at));
            }
        }
    };
    let mut max = 0;
    let batches = steps.iter().filter_map(|s| match s {
        Step::Batch(b) => Some(b.clone()),
        _ => None,
    });
    for (wm, batch) in batches
        .map(Some)
        .chain(std::iter::once(None))
        .map(|b| match b {
            Some(b) => {
                max = b.iter().map(|e| e.1).max().unwrap_or(max).max(max);
                (max - 1, b)
            }
            None => (u64::MAX, Vec::new()),
        })
    {
        for (k, t, v) in batch {
            let s = t - t % 100;
            let w = wins.entry((k, s)).or_default();
            if !w.armed {
                w.armed = true;
                register(&mut timers, k, s + MID, s);
                register(&mut timers, k, s + 99, s);
            }
            if v.is_multiple_of(11) {
                delete(&mut timers, k, s + MID, s);
            }
            w.n += 1;
            let (c, sum) = w.contents.unwrap_or((0, 0));
            w.contents = Some((c + 1, sum + v));
            if w.n == 3 {
                w.n = 0;
                emit(&mut out, k, s, w);
                w.contents = None;
            }
        }
        // Due timers, in time order: the trigger's and the windows' ends.
        loop {
            let due = timers
                .keys()
                .map(|&(k, at)| (at, k))
                .chain(wins.keys().map(|&(k, s)| (s + 99, k)))
                .filter(|(at, _)| *at <= wm)
                .min();
            let Some((at, k)) = due else { break };
            for s in timers.remove(&(k, at)).unwrap_or_default() {
                let w = wins.get_mut(&(k, s)).expect("a timer of an open window");
                emit(&mut out, k, s, w);
                if at == s + 99 {
                    w.contents = None;
                }
            }
            if (at + 1).is_multiple_of(100) {
                let s = at + 1 - 100;
                if wins.remove(&(k, s)).is_some() {
                    delete(&mut timers, k, s + MID, s);
                    delete(&mut timers, k, s + 99, s);
                }
            }
        }
    }
    sorted_lines(out)
}

fn thirds_job(steps: Steps, fail_at: Vec<u64>, output: &Path) -> cairn_runtime::JobGraph {
    failing_keyed(steps, fail_at, monotonous())
        .window(TumblingEventTimeWindows::of(ms(100)))
        .custom_trigger(ThirdsMidEnd)
        .aggregate("windows", CountAndSum)
        .map("label", |(k, w, (c, s)): (u64, TimeWindow, (u64, u64))| {
            format!("{k}/{}/{c}/{s}", w.start)
        })
        .sink("sink", line_sink(output))
}

/// A user-defined trigger's values and timers (several per window, one deleted by a
/// record, one at another time than the window's end) are keyed state: through a failure
/// under the heap at parallelism 2, a savepoint restored at parallelism 3 under RocksDB
/// with the changelog, and a failure there, the committed firings are the model's, each
/// once.
#[test]
fn a_user_defined_triggers_timers_and_values_survive_failures_a_rescale_and_the_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let steps = rising_steps(7, 90, Some(45));
    let expected = thirds_model(&steps);
    assert!(expected.len() > 60, "{expected:?}");
    assert!(
        steps
            .iter()
            .any(|s| matches!(s, Step::Batch(b) if b.iter().any(|e| e.2.is_multiple_of(11)))),
        "a record deletes a timer"
    );

    let gates = Gates::new();
    let first_steps = Steps::new(steps.clone(), gates.clone());
    let mut cfg = failure_config(dir.path(), 15, 2);
    cfg.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Full;
    let handle = Job::new(thirds_job(first_steps, vec![40], &output), cfg)
        .start()
        .expect("start");
    wait_for("the gate", || gates.reached(0));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 1, "{first:?}");

    let mut cfg = failure_config(dir.path(), 15, 3);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Changelog;
    cfg.restore = Some(cairn_runtime::RestoreFrom::Path(savepoint));
    let second = Job::new(
        thirds_job(Steps::new(steps, Gates::all_open()), vec![60], &output),
        cfg,
    )
    .run()
    .expect("restored run");
    assert_eq!(second.restarts, 1, "{second:?}");
    assert_eq!(read_lines(&output), expected);
}

/// The first multiple of `interval` after `t`.
fn next_multiple(t: u64, interval: u64) -> u64 {
    (t / interval + 1) * interval
}

/// Steps for the continuous trigger: rising records over 6 keys, and now and then a late
/// record within the lateness of the window of its key that ended last (at most one per
/// window and batch: a restore replays it before any watermark, as on time, and its
/// early firing then has it alone, as its late firing would).
fn late_steps(seed: u64, batches: usize, lateness: u64) -> (Vec<Step>, usize) {
    let mut rng = Rng(seed | 1);
    let (mut t, mut v, mut late) = (0u64, 0, 0);
    let mut wm: Option<u64> = None;
    let mut steps = Vec::new();
    for _ in 0..batches {
        let mut batch = Vec::new();
        if let Some(w) = wm.filter(|_| rng.next(3) == 0) {
            let s = (w + 1) / 100 * 100;
            if s >= 100 && s - 1 <= w && w < s - 1 + lateness {
                v += 1;
                late += 1;
                batch.push((rng.next(6), s - 100 + rng.next(100), v));
            }
        }
        for _ in 0..1 + rng.next(3) {
            t += 1 + rng.next(9);
            v += 1;
            batch.push((rng.next(6), t, v));
        }
        wm = Some(t - 1);
        steps.push(Step::Batch(batch));
        steps.push(Step::Idle(2));
    }
    (steps, late)
}

/// A purging continuous event-time trigger of `interval` on tumbling windows of 100 ms
/// with `lateness`, summing: `key/start/sum` lines. A window fires early at the first
/// multiple of the interval after its first record (or after the watermark, if later)
/// and then only after a record comes again (a purge stops the early firings), at its
/// end, and at once for each late record within the lateness.
fn continuous_model(steps: &[Step], interval: u64, lateness: u64) -> Vec<String> {
    #[derive(Default)]
    struct Win {
        sum: Option<u64>,
        next: Option<u64>,
    }
    let mut wins: BTreeMap<(u64, u64), Win> = BTreeMap::new();
    let mut timers: std::collections::BTreeSet<(u64, u64)> = Default::default();
    let mut out = Vec::new();
    let fire = |out: &mut Vec<String>, wins: &mut BTreeMap<(u64, u64), Win>, k, s| {
        if let Some(w) = wins.get_mut(&(k, s)) {
            if let Some(sum) = w.sum.take() {
                out.push(format!("{k}/{s}/{sum}"));
            }
        }
    };
    let mut wm: Option<u64> = None;
    let mut max = 0;
    let batches: Vec<Vec<Ev>> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Batch(b) => Some(b.clone()),
            _ => None,
        })
        .collect();
    for (i, batch) in batches
        .iter()
        .chain(std::iter::once(&Vec::new()))
        .enumerate()
    {
        for &(k, t, v) in batch {
            let s = t - t % 100;
            let end = s + 99;
            assert!(
                wm.is_none_or(|w| w < end + lateness),
                "the steps hold a record past the lateness"
            );
            let w = wins.entry((k, s)).or_default();
            w.sum = Some(w.sum.unwrap_or(0) + v);
            let schedule = w.next.is_none();
            if wm.is_some_and(|w| end <= w) {
                fire(&mut out, &mut wins, k, s);
            } else {
                timers.insert((end, k));
            }
            timers.insert((end + lateness, k));
            if schedule {
                let m = next_multiple(t.max(wm.unwrap_or(0)), interval);
                let w = wins.get_mut(&(k, s)).expect("window");
                if m < end {
                    w.next = Some(m);
                    timers.insert((m, k));
                }
            }
            max = max.max(t);
        }
        let to = if i == batches.len() {
            u64::MAX
        } else {
            max - 1
        };
        wm = Some(to);
        while let Some(&(at, k)) = timers.iter().next().filter(|(at, _)| *at <= to) {
            timers.remove(&(at, k));
            if at.is_multiple_of(interval) {
                let s = at - at % 100;
                if let Some(w) = wins.get_mut(&(k, s)).filter(|w| w.next == Some(at)) {
                    w.next = None;
                    fire(&mut out, &mut wins, k, s);
                }
            }
            if (at + 1).is_multiple_of(100) {
                fire(&mut out, &mut wins, k, at + 1 - 100);
            }
            if let Some(end) = (at + 1).checked_sub(lateness) {
                if end >= 100 && end.is_multiple_of(100) {
                    wins.remove(&(k, end - 100));
                }
            }
        }
    }
    sorted_lines(out)
}

/// A purging continuous event-time trigger (early firings every 20 ms) with 30 ms of
/// allowed lateness, through two failures under RocksDB with incremental checkpoints at
/// parallelism 2: every early, end and late firing is the model's, committed once.
#[test]
fn a_purging_continuous_trigger_with_lateness_is_exactly_once_through_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let (interval, lateness) = (20, 30);
    let (steps, late) = late_steps(23, 120, lateness);
    assert!(late > 5, "late records: {late}");
    let expected = continuous_model(&steps, interval, lateness);
    let mut cfg = failure_config(dir.path(), 15, 2);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Incremental;
    let graph = failing_keyed(
        Steps::new(steps, Gates::all_open()),
        vec![90, 200],
        monotonous(),
    )
    .window(TumblingEventTimeWindows::of(ms(100)))
    .allowed_lateness(ms(lateness))
    .trigger(cairn_runtime::PurgingTrigger::of(
        cairn_runtime::ContinuousEventTimeTrigger::of(ms(interval)),
    ))
    .reduce("windows", add)
    .map("label", |(k, w, e): (u64, TimeWindow, Ev)| {
        format!("{k}/{}/{}", w.start, e.2)
    })
    .sink("sink", line_sink(&output));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert_eq!(read_lines(&output), expected);
}

/// Clusters of two to five records of one key, 5 ms apart, emitted shuffled (a cluster's
/// records are at most 15 ms behind the largest timestamp so far), clusters moving on in
/// time: with sessions of a 12 ms gap, a record may bridge two sessions of its key (and
/// consecutive clusters of a key may merge), and none is late under a watermark 30 ms
/// behind.
fn cluster_steps(seed: u64, clusters: usize) -> Vec<Step> {
    let mut rng = Rng(seed | 1);
    let (mut cursor, mut v) = (0u64, 0u64);
    let mut steps = Vec::new();
    for _ in 0..clusters {
        let key = rng.next(6);
        let base = cursor + rng.next(5);
        let m = 2 + rng.next(4);
        let mut times: Vec<u64> = (0..m).map(|j| base + 5 * j).collect();
        for i in (1..times.len()).rev() {
            let j = rng.next(i as u64 + 1) as usize;
            times.swap(i, j);
        }
        let events: Vec<Ev> = times
            .into_iter()
            .map(|t| {
                v += 1;
                (key, t, v)
            })
            .collect();
        let cut = rng.next(events.len() as u64) as usize;
        for part in [&events[..cut], &events[cut..]] {
            if !part.is_empty() {
                steps.push(Step::Batch(part.to_vec()));
                steps.push(Step::Idle(1));
            }
        }
        cursor = base + 5 * (m - 1) + 1 + rng.next(8);
    }
    steps
}

/// Sessions (gap `gap`) of each key as Flink's merging window set makes them, each with
/// its records in state order (merged sessions: the earliest's first, the others' after
/// in order of start, the new record last), behind a count evictor of `keep`: `key/start/
/// end/values` lines. No record is late and none reaches a session that has fired. Also
/// how many records bridged two sessions.
fn evicting_sessions_model(steps: &[Step], gap: u64, keep: usize) -> (Vec<String>, usize) {
    let mut sessions: BTreeMap<u64, Vec<(TimeWindow, Vec<u64>)>> = BTreeMap::new();
    let mut bridges = 0;
    for step in steps {
        let Step::Batch(batch) = step else { continue };
        for &(k, t, v) in batch {
            let new = TimeWindow {
                start: t,
                end: t + gap,
            };
            let open = sessions.entry(k).or_default();
            let (merging, mut rest): (Vec<_>, Vec<_>) =
                open.drain(..).partition(|(w, _)| w.intersects(&new));
            bridges += usize::from(merging.len() > 1);
            let window = merging.iter().fold(new, |a, (w, _)| a.cover(w));
            let mut values: Vec<u64> = merging.into_iter().flat_map(|(_, l)| l).collect();
            values.push(v);
            rest.push((window, values));
            rest.sort_by_key(|(w, _)| w.start);
            *open = rest;
        }
    }
    let mut out = Vec::new();
    for (k, open) in sessions {
        for (w, values) in open {
            let kept: Vec<String> = values[values.len().saturating_sub(keep)..]
                .iter()
                .map(u64::to_string)
                .collect();
            out.push(format!("{k}/{}/{}/{}", w.start, w.end, kept.join(",")));
        }
    }
    (sorted_lines(out), bridges)
}

/// Sessions behind a count evictor of 3 with a process function: merging sessions merge
/// their lists of records (list state under RocksDB, through the changelog), and through
/// two failures at parallelism 2 each session's firing sees its last three records in
/// state order, committed once.
#[test]
fn evicting_sessions_merge_their_lists_through_failures_with_rocksdb_and_the_changelog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let steps = cluster_steps(31, 70);
    let (expected, bridges) = evicting_sessions_model(&steps, 12, 3);
    assert!(bridges > 5, "records bridging two sessions: {bridges}");
    let records: usize = steps
        .iter()
        .map(|s| match s {
            Step::Batch(b) => b.len(),
            _ => 0,
        })
        .sum();
    assert!(expected.len() > 20 && expected.len() < 70, "{expected:?}");
    let mut cfg = failure_config(dir.path(), 15, 2);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Changelog;
    let strategy = WatermarkStrategy::for_bounded_out_of_orderness(ms(30), |e: &Ev| e.1);
    let fail_at = vec![records as u64 / 3, records as u64 * 2 / 3];
    let graph = failing_keyed(Steps::new(steps, Gates::all_open()), fail_at, strategy)
        .window(cairn_runtime::EventTimeSessionWindows::with_gap(ms(12)))
        .evictor(cairn_runtime::CountEvictor::of(3))
        .process(
            "windows",
            cairn_runtime::FnWindow(
                |k: &u64, w: TimeWindow, events: Vec<Ev>, out: &mut Collector<'_, String>| {
                    let values: Vec<String> = events.iter().map(|e| e.2.to_string()).collect();
                    let stamped = out.timestamp() == Some(w.max_timestamp());
                    let label = format!("{k}/{}/{}/{}", w.start, w.end, values.join(","));
                    out.collect(if stamped {
                        label
                    } else {
                        format!("BAD {label}")
                    })
                },
            ),
        )
        .sink("sink", line_sink(&output));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert_eq!(read_lines(&output), expected);
}

// ---------------------------------------------------------------------------------------
// 7. Count windows: unaligned checkpoints restored elsewhere, and over a whole stream.
// ---------------------------------------------------------------------------------------

/// Writes `lines` lines `key n` (line `n` from 0, keys hashed from `n` over `keys`);
/// returns the path and each key's line numbers in file order.
fn write_numbered(dir: &Path, lines: u64, keys: u64) -> (PathBuf, BTreeMap<u64, Vec<u64>>) {
    let mut by_key: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut text = String::new();
    for n in 0..lines {
        let key = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % keys;
        by_key.entry(key).or_default().push(n);
        text.push_str(&format!("{key} {n}\n"));
    }
    let path = dir.join("numbered.txt");
    std::fs::write(&path, text).expect("write input");
    (path, by_key)
}

/// `(count, first, last, sum)` of a window's line numbers, in the order added.
#[derive(Clone, Debug)]
struct Span;

impl cairn_core::AggregateFunction<(u64, u64), (u64, u64, u64, u64), (u64, u64, u64, u64)>
    for Span
{
    fn create_accumulator(&self) -> (u64, u64, u64, u64) {
        (0, u64::MAX, 0, 0)
    }
    fn add(&self, acc: &mut (u64, u64, u64, u64), (_, n): (u64, u64)) {
        if acc.0 == 0 {
            acc.1 = n;
        }
        acc.0 += 1;
        acc.2 = n;
        acc.3 += n;
    }
    fn result(&self, acc: &(u64, u64, u64, u64)) -> (u64, u64, u64, u64) {
        *acc
    }
}

/// source and parse (one subtask, failing at `fail_at` lines) → key_by → `count_window(4)`
/// with an aggregate and a process function ("windows") → slow (`delay` per firing) →
/// sink of `key/first/last/count/sum` lines.
fn count_job(
    input: &Path,
    output: &Path,
    fail_at: Vec<u64>,
    delay: Duration,
) -> cairn_runtime::JobGraph {
    let windows = source("source", cairn_runtime::sources::FileSource::new(input))
        .process("parse", common::ParseEvents::new(fail_at))
        .parallelism(1)
        .key_by(|e: &(u64, u64)| e.0)
        .count_window(4)
        .aggregate_and_process(
            "windows",
            Span,
            cairn_runtime::FnWindow(
                |k: &u64,
                 w: TimeWindow,
                 v: Vec<(u64, u64, u64, u64)>,
                 out: &mut Collector<'_, String>| {
                    let (c, first, last, sum) = v[0];
                    let ok = w == TimeWindow::GLOBAL
                        && out.timestamp() == Some(u64::MAX - 1)
                        && v.len() == 1;
                    let label = format!("{k}/{first}/{last}/{c}/{sum}");
                    out.collect(if ok { label } else { format!("BAD {label}") })
                },
            ),
        );
    common::unaligned::slow(windows, "slow", delay).sink("sink", line_sink(output))
}

/// Count windows (a purging count trigger on global windows, an aggregate with a process
/// function) behind a slow stage: an unaligned checkpoint holds records in flight into
/// the window operator; restored at parallelism 3 from that checkpoint of parallelism 2
/// (in-flight records and counts moving with their key groups), through two failures,
/// each key's lines go in consecutive groups of four in file order, each committed once,
/// the leftovers never.
#[test]
fn count_windows_restored_at_another_parallelism_from_an_unaligned_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let (input, by_key) = write_numbered(dir.path(), 12_000, 40);
    let mut expected = Vec::new();
    for (k, lines) in &by_key {
        for group in lines.chunks_exact(4) {
            let sum: u64 = group.iter().sum();
            expected.push(format!("{k}/{}/{}/4/{sum}", group[0], group[3]));
        }
    }
    expected.sort();

    let mut cfg = common::unaligned::unaligned_retained_config(dir.path(), 2);
    cfg.batch_size = 8;
    cfg.channel_capacity = 64;
    let first = count_job(&input, &output, Vec::new(), Duration::from_micros(400));
    common::unaligned::run_until_holding(first, &cfg, "windows", 1);

    cfg.parallelism = 3;
    cfg.restore = Some(cairn_runtime::RestoreFrom::Latest);
    cfg.records_per_second = Some(25_000);
    cfg.restart = RestartStrategy::fixed_delay(5, ms(10));
    let second = count_job(&input, &output, vec![3_000, 7_000], Duration::ZERO);
    let result = Job::new(second, cfg).run().expect("restored run");
    assert!(result.restored_from.is_some(), "{result:?}");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert_eq!(read_lines(&output), expected);
}

/// `count_window_all(5)` behind a source and parse of parallelism 2 (records of both
/// subtasks interleave in the one window subtask), through a failure: every committed
/// window holds five distinct lines, no line is in two, and all but the 3,003 % 5 left
/// over are.
#[test]
fn count_windows_over_a_whole_stream_through_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let lines = 3_003u64;
    let (input, _) = write_numbered(dir.path(), lines, 7);
    let mut cfg = failure_config(dir.path(), 20, 2);
    cfg.records_per_second = Some(6_000);
    let graph = source("source", cairn_runtime::sources::FileSource::new(&input))
        .process("parse", common::ParseEvents::new(vec![1_500]))
        .count_window_all(5)
        .process(
            "windows",
            cairn_runtime::FnWindow(
                |_: &(), w: TimeWindow, v: Vec<(u64, u64)>, out: &mut Collector<'_, String>| {
                    let mut n: Vec<u64> = v.iter().map(|e| e.1).collect();
                    n.sort_unstable();
                    let ok = w == TimeWindow::GLOBAL;
                    let label: Vec<String> = n.iter().map(u64::to_string).collect();
                    out.collect(format!(
                        "{}{}",
                        if ok { "" } else { "BAD " },
                        label.join(",")
                    ))
                },
            ),
        )
        .sink("sink", line_sink(&output));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    let windows = read_lines(&output);
    assert_eq!(windows.len() as u64, lines / 5, "windows committed");
    let mut seen = std::collections::BTreeSet::new();
    for w in &windows {
        let n: Vec<u64> = w
            .split(',')
            .map(|x| x.parse().unwrap_or_else(|_| panic!("bad window {w}")))
            .collect();
        assert_eq!(n.len(), 5, "{w}");
        for x in n {
            assert!(
                x < lines && seen.insert(x),
                "line {x} again or unknown, in {w}"
            );
        }
    }
    assert_eq!(lines - seen.len() as u64, lines % 5);
}

// ---------------------------------------------------------------------------------------
// 8. Restores that change the window operator.
// ---------------------------------------------------------------------------------------

/// The window operators of the restore test, all with uid "windows" on tumbling windows
/// of 1 s (nothing fires before the end of the input).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Reduce,
    ReduceAndProcess,
    Process,
    /// `process` behind a count evictor of this many.
    Evicting(u64),
    /// `reduce` under [`EveryNthOrEnd`].
    CustomReduce,
}

/// Before the gate: key 1 gets 1 at 10, 2 at 20, 4 at 30; key 2 100 at 15. After: 8 at
/// 40, 200 at 50, 16 at 60.
fn restore_steps(gates: Arc<Gates>) -> Steps {
    Steps::new(
        vec![
            Step::Batch(vec![(1, 10, 1), (1, 20, 2), (2, 15, 100), (1, 30, 4)]),
            Step::Gate(0),
            Step::Batch(vec![(1, 40, 8), (2, 50, 200), (1, 60, 16)]),
        ],
        gates,
    )
}

/// `key:values` lines of what `op` emits.
fn restore_job(steps: Steps, op: Op, output: &Path) -> cairn_runtime::JobGraph {
    let windowed = keyed_events(steps).window(TumblingEventTimeWindows::of(ms(1_000)));
    let list = |k: &u64, _: TimeWindow, v: Vec<Ev>, out: &mut Collector<'_, String>| {
        let values: Vec<String> = v.iter().map(|e| e.2.to_string()).collect();
        out.collect(format!("{k}:{}", values.join(",")))
    };
    let summed = |(k, _, e): (u64, TimeWindow, Ev)| format!("{k}:{}", e.2);
    let lines = match op {
        Op::Reduce => windowed.reduce("windows", add).map("label", summed),
        Op::CustomReduce => windowed
            .custom_trigger(EveryNthOrEnd(100))
            .reduce("windows", add)
            .map("label", summed),
        Op::ReduceAndProcess => windowed
            .reduce_and_process("windows", add, cairn_runtime::FnWindow(list))
            .map("label", |s: String| s),
        Op::Process => windowed
            .process("windows", cairn_runtime::FnWindow(list))
            .map("label", |s: String| s),
        Op::Evicting(n) => windowed
            .evictor(cairn_runtime::CountEvictor::of(n))
            .process("windows", cairn_runtime::FnWindow(list))
            .map("label", |s: String| s),
    };
    lines.sink("sink", line_sink(output))
}

/// Runs `op` until the gate (its windows open) and stops it with a savepoint.
fn restore_savepoint(dir: &Path, op: Op) -> String {
    let gates = Gates::new();
    let mut cfg = script_config(StateBackendConfig::HashMap);
    cfg.savepoint_dir = Some(dir.join("savepoints").display().to_string());
    cfg.checkpoint_dir = dir.join("checkpoints").display().to_string();
    let out = dir.join(format!("unused-{op:?}"));
    let handle = Job::new(restore_job(restore_steps(gates.clone()), op, &out), cfg)
        .start()
        .expect("start");
    wait_for("the gate", || gates.reached(0));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first run");
    savepoint
}

/// Restores `savepoint` under `op` and `backend`: what it emitted, or the error.
fn restore_under(
    dir: &Path,
    savepoint: &str,
    op: Op,
    backend: StateBackendConfig,
) -> std::result::Result<Vec<String>, String> {
    let output = dir.join(format!("restored-{op:?}-{}", rand_suffix()));
    let mut cfg = script_config(backend);
    cfg.checkpoint_dir = dir.join("checkpoints").display().to_string();
    cfg.restore = Some(cairn_runtime::RestoreFrom::Path(savepoint.to_string()));
    let graph = restore_job(restore_steps(Gates::all_open()), op, &output);
    match Job::new(graph, cfg).run() {
        Ok(_) => Ok(read_lines(&output)),
        Err(e) => Err(e.to_string()),
    }
}

/// A suffix unique in this process.
fn rand_suffix() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Savepoints of open windows restored under a changed operator (same uid):
/// - `reduce` → `reduce_and_process` keeps the same state (a reducing state of the
///   records): it restores, and the function gets the sum of records from both sides of
///   the savepoint;
/// - a count evictor of 3 → one of 2: the evictor's size is not state, it restores and
///   the new one keeps the window's last two records (from both sides);
/// - `reduce` → the same under a user-defined trigger: refused, naming the operator and
///   both triggers;
/// - `process` (a list state) → `reduce_and_process` (a reducing state): refused, naming
///   the operator and the state, under either backend (no panic).
#[test]
fn restores_that_change_the_window_function_the_trigger_or_the_evictor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let heap = StateBackendConfig::HashMap;
    let reduced = restore_savepoint(dir.path(), Op::Reduce);
    assert_eq!(
        restore_under(dir.path(), &reduced, Op::ReduceAndProcess, heap.clone()),
        Ok(vec!["1:31".to_string(), "2:300".to_string()])
    );
    assert_eq!(
        restore_under(
            dir.path(),
            &reduced,
            Op::Reduce,
            StateBackendConfig::rocksdb()
        ),
        Ok(vec!["1:31".to_string(), "2:300".to_string()])
    );
    let err = restore_under(dir.path(), &reduced, Op::CustomReduce, heap.clone())
        .expect_err("a user-defined trigger");
    assert!(
        err.contains("window operator windows")
            && err.contains("an event-time trigger")
            && err.contains("a user-defined trigger"),
        "{err}"
    );

    let evicting = restore_savepoint(dir.path(), Op::Evicting(3));
    assert_eq!(
        restore_under(dir.path(), &evicting, Op::Evicting(2), heap.clone()),
        Ok(vec!["1:8,16".to_string(), "2:100,200".to_string()])
    );

    let processed = restore_savepoint(dir.path(), Op::Process);
    for backend in [heap, StateBackendConfig::rocksdb()] {
        let err = restore_under(
            dir.path(),
            &processed,
            Op::ReduceAndProcess,
            backend.clone(),
        )
        .expect_err("another state");
        assert!(
            err.contains("state window-contents of operator windows was List")
                && err.contains("registered as Reducing"),
            "{backend:?}: {err}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 9. User-defined triggers on processing time.
// ---------------------------------------------------------------------------------------

/// A marker value: [`MidAndLater`] fires its window at once (so the test knows the records
/// before it were processed).
const MARK: u64 = 1_000;

/// On processing-time windows: with a window's first record, timers at 50 and 80 ms after
/// its start; at 50 it fires and purges, at 80 it fires; a record of value 0 deletes the
/// timer at 80; a [`MARK`] fires at once.
#[derive(Clone, Debug)]
struct MidAndLater;

impl Trigger<Ev> for MidAndLater {
    fn on_element(
        &mut self,
        e: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        if ctx.get::<bool>("armed")?.is_none() {
            ctx.put("armed", &true)?;
            ctx.register_processing_time_timer(window.start + 50);
            ctx.register_processing_time_timer(window.start + 80);
        }
        if e.2 == 0 {
            ctx.delete_processing_time_timer(window.start + 80);
        }
        Ok(match e.2 == MARK {
            true => TriggerResult::Fire,
            false => TriggerResult::Continue,
        })
    }

    fn on_processing_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(if time == window.start + 50 {
            TriggerResult::FireAndPurge
        } else if time == window.start + 80 {
            TriggerResult::Fire
        } else {
            TriggerResult::Continue
        })
    }

    fn clear(
        &mut self,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<()> {
        ctx.delete_processing_time_timer(window.start + 50);
        ctx.delete_processing_time_timer(window.start + 80);
        Ok(())
    }
}

/// Tumbling processing-time windows of 100 ms under [`MidAndLater`], the manual clock
/// moved by the test between gated batches (markers show each batch processed):
/// - clock 10, `[0, 100)`: key 1 gets 1, 2, MARK (fires 3 records, 1003); key 2 gets 4,
///   0 (deleting its timer at 80), MARK (1004);
/// - clock 50: both fire and purge (the same results);
/// - key 1 gets 8, 16, MARK (1024), key 2 32, MARK (1032);
/// - clock 80: key 1 fires (1024 again), key 2 does not (its timer was deleted);
/// - clock 120: `[0, 100)` is dropped; key 1 gets 64, MARK in `[100, 200)` (1064; its
///   timers, at 150 and 180, are ahead of the clock).
#[test]
fn a_user_defined_trigger_on_processing_time_windows_sets_deletes_and_purges() {
    let clock = Arc::new(ManualClock::new(10));
    let gates = Gates::new();
    let steps = Steps::new(
        vec![
            Step::Batch(vec![(1, UNTIMED, 1), (1, UNTIMED, 2), (2, UNTIMED, 4)]),
            Step::Batch(vec![
                (2, UNTIMED, 0),
                (1, UNTIMED, MARK),
                (2, UNTIMED, MARK),
            ]),
            Step::Gate(0),
            Step::Batch(vec![(1, UNTIMED, 8), (1, UNTIMED, 16), (2, UNTIMED, 32)]),
            Step::Batch(vec![(1, UNTIMED, MARK), (2, UNTIMED, MARK)]),
            Step::Gate(1),
            Step::Batch(vec![(1, UNTIMED, 64), (1, UNTIMED, MARK)]),
        ],
        gates.clone(),
    );
    let out = shared();
    let graph = source("source", steps)
        .key_by(|e: &Ev| e.0)
        .window(cairn_runtime::TumblingProcessingTimeWindows::of(ms(100)))
        .custom_trigger(MidAndLater)
        .aggregate("windows", CountAndSum)
        .map("label", |(k, w, (c, s)): (u64, TimeWindow, (u64, u64))| {
            (k, w.start, c, s)
        })
        .sink("sink", common::Collect(out.clone()));
    let mut cfg = script_config(StateBackendConfig::rocksdb());
    cfg.processing_clock = ProcessingClock::new(clock.clone());
    let handle = Job::new(graph, cfg).start().expect("start");
    let count = || out.lock().expect("lock").len();
    wait_for("the markers", || count() >= 2);
    clock.set(50);
    wait_for("the timers at 50", || count() >= 4);
    gates.open(0);
    wait_for("the second markers", || count() >= 6);
    clock.set(80);
    wait_for("the timer at 80", || count() >= 7);
    clock.set(120);
    gates.open(1);
    handle.wait().expect("job");
    assert_eq!(
        sorted(&out),
        vec![
            (1, 0, 3, 1003),
            (1, 0, 3, 1003),
            (1, 0, 3, 1024),
            (1, 0, 3, 1024),
            (1, 100, 2, 1064),
            (2, 0, 2, 1032),
            (2, 0, 3, 1004),
            (2, 0, 3, 1004),
        ]
    );
}

/// On global windows: with a key's first record (a value remembers it), a processing-time
/// timer 1 s later and an event-time timer at the window's end (the end of the input);
/// fires the running contents every fourth record (counting in a value); at the
/// processing-time timer fires and purges and forgets both values (the next record arms
/// it again); at the end of the input fires and purges.
#[derive(Clone, Debug)]
struct FourOrLater;

impl Trigger<Ev> for FourOrLater {
    fn on_element(
        &mut self,
        _: &Ev,
        _: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        if ctx.get::<bool>("armed")?.is_none() {
            ctx.put("armed", &true)?;
            let at = ctx.current_processing_time() + 1_000;
            ctx.register_processing_time_timer(at);
            ctx.register_event_time_timer(window.max_timestamp());
        }
        let n = ctx.get::<u64>("n")?.unwrap_or(0) + 1;
        ctx.put("n", &n)?;
        Ok(match n % 4 {
            0 => TriggerResult::Fire,
            _ => TriggerResult::Continue,
        })
    }

    fn on_processing_time(
        &mut self,
        _: u64,
        _: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        ctx.remove("n")?;
        ctx.remove("armed")?;
        Ok(TriggerResult::FireAndPurge)
    }

    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        _: &mut TriggerContext<'_>,
    ) -> cairn_runtime::Result<TriggerResult> {
        Ok(match time == window.max_timestamp() {
            true => TriggerResult::FireAndPurge,
            false => TriggerResult::Continue,
        })
    }
}

/// What [`FourOrLater`] fires (`key/values` lines): the records before the gate, then
/// (the clock having passed every armed key's timer) a firing of each armed key, then the
/// records after the gate, then the end of the input. Also the number of lines before
/// the records after the gate.
fn four_or_later_model(steps: &[Step]) -> (Vec<String>, usize) {
    #[derive(Default)]
    struct Key {
        values: Vec<u64>,
        n: u64,
        armed: bool,
    }
    let mut keys: BTreeMap<u64, Key> = BTreeMap::new();
    let mut out = Vec::new();
    let line = |k: u64, values: &[u64]| {
        let v: Vec<String> = values.iter().map(u64::to_string).collect();
        format!("{k}/{}", v.join(","))
    };
    let mut before_gate = None;
    for step in steps {
        match step {
            Step::Gate(_) => {
                for (k, key) in keys.iter_mut().filter(|(_, key)| key.armed) {
                    if !key.values.is_empty() {
                        out.push(line(*k, &key.values));
                    }
                    *key = Key::default();
                }
                before_gate = Some(out.len());
            }
            Step::Batch(batch) => {
                for &(k, _, v) in batch {
                    let key = keys.entry(k).or_default();
                    key.armed = true;
                    key.n += 1;
                    key.values.push(v);
                    if key.n.is_multiple_of(4) {
                        out.push(line(k, &key.values));
                    }
                }
            }
            Step::Idle(_) => {}
        }
    }
    for (k, key) in &keys {
        if !key.values.is_empty() {
            out.push(line(*k, &key.values));
        }
    }
    (sorted_lines(out), before_gate.expect("a gate"))
}

fn four_or_later_job(steps: Steps, fail_at: Vec<u64>, output: &Path) -> cairn_runtime::JobGraph {
    failing_keyed(steps, fail_at, monotonous())
        .window(cairn_runtime::GlobalWindows::create())
        .custom_trigger(FourOrLater)
        .process(
            "windows",
            cairn_runtime::FnWindow(
                |k: &u64, w: TimeWindow, events: Vec<Ev>, out: &mut Collector<'_, String>| {
                    let v: Vec<String> = events.iter().map(|e| e.2.to_string()).collect();
                    let label = format!("{k}/{}", v.join(","));
                    out.collect(match w == TimeWindow::GLOBAL {
                        true => label,
                        false => format!("BAD {label}"),
                    })
                },
            ),
        )
        .sink("sink", line_sink(output))
}

/// A user-defined trigger on global windows with processing-time and event-time timers
/// and values: a run under the heap at parallelism 2 (clock at 0) through a failure,
/// stopped with a savepoint; restored under RocksDB with the changelog at parallelism 3
/// with the clock past every timer: each armed key fires and purges at once, before any
/// new record; then new records (arming timers the clock never reaches), a failure, and
/// the end of the input, which fires what is left. Every firing is the model's, once.
#[test]
fn a_user_defined_trigger_on_global_windows_with_timers_of_both_domains_across_a_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let steps = rising_steps(11, 70, Some(35));
    let (expected, before_gate) = four_or_later_model(&steps);
    assert!(before_gate > 12, "{expected:?}");

    let gates = Gates::new();
    let mut cfg = failure_config(dir.path(), 15, 2);
    cfg.processing_clock = ProcessingClock::new(Arc::new(ManualClock::new(0)));
    let first = four_or_later_job(Steps::new(steps.clone(), gates.clone()), vec![30], &output);
    let handle = Job::new(first, cfg).start().expect("start");
    wait_for("the gate", || gates.reached(0));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    assert_eq!(handle.wait().expect("first run").restarts, 1);

    let gates = Gates::new();
    let mut cfg = failure_config(dir.path(), 15, 3);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Changelog;
    cfg.restore = Some(cairn_runtime::RestoreFrom::Path(savepoint));
    cfg.processing_clock = ProcessingClock::new(Arc::new(ManualClock::new(5_000)));
    let second = four_or_later_job(Steps::new(steps, gates.clone()), vec![40], &output);
    let handle = Job::new(second, cfg).start().expect("restore");
    // Committed: a checkpoint after the timers' firings, which a failure restores.
    wait_for("the timers' firings committed", || {
        read_lines(&output).len() >= before_gate
    });
    gates.open(0);
    assert_eq!(handle.wait().expect("restored run").restarts, 1);
    assert_eq!(read_lines(&output), expected);
}
