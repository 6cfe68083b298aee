//! Trigger hunt (a helper's): count, purging and event-time triggers end to end on
//! tumbling, sliding and session windows with allowed lateness, compared with a model of
//! Flink's semantics computed from the input; restores under other triggers; refusals.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::{
    source, Checkpointed, Collector, CountTrigger, EventTimeSessionWindows, EventTimeTrigger, Job,
    JobConfig, OutputTag, ProcessingTimeTrigger, PurgingTrigger, RestoreFrom, Sink,
    SlidingEventTimeWindows, Source, SourceStatus, StateBackendConfig, TimeWindow,
    TumblingEventTimeWindows, WatermarkStrategy, WindowTrigger,
};

/// `(key, timestamp, value)`.
type Event = (u64, u64, u64);
/// `(key, window, sum of values)` with the output's timestamp.
type Fired = ((u64, TimeWindow, u64), Option<u64>);

/// Emits one event per poll, then a pause (so that its watermark, the largest timestamp
/// so far minus one, reaches the windows before the next event).
#[derive(Clone, Debug)]
struct OneByOne {
    events: Vec<Event>,
    next: usize,
    paused: bool,
}

impl Checkpointed for OneByOne {}

impl Source for OneByOne {
    type Out = Event;
    fn poll(
        &mut self,
        out: &mut Collector<'_, Event>,
        _max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        if self.paused {
            self.paused = false;
            return Ok(SourceStatus::Idle);
        }
        let Some(e) = self.events.get(self.next) else {
            return Ok(SourceStatus::End);
        };
        self.next += 1;
        self.paused = true;
        out.collect(*e)?;
        Ok(SourceStatus::More)
    }
}

#[derive(Clone, Debug)]
struct Collect<T>(Arc<Mutex<Vec<T>>>);

impl<T> Checkpointed for Collect<T> {}

impl<T: Clone + Send + 'static> Sink<T> for Collect<T> {
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

/// Pseudo-random events: mostly ahead of the largest timestamp so far, some behind it
/// (late, some past any lateness); values are distinct bits, so a sum names its records.
fn events(seed: u64, count: usize, keys: u64) -> Vec<Event> {
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

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sliding { size: u64, slide: u64 },
    Session { gap: u64 },
}

/// Flink's semantics, one event then its watermark at a time.
struct Model {
    kind: Kind,
    lateness: u64,
    count: Option<u64>,
    purge: bool,
    wm: Option<u64>,
    /// Per key, its windows: `window -> (contents, count)`.
    windows: BTreeMap<u64, BTreeMap<TimeWindow, (u64, u64)>>,
    fired: Vec<Fired>,
    late: Vec<Event>,
}

impl Model {
    fn new(kind: Kind, lateness: u64, trigger: WindowTrigger) -> Self {
        let text = trigger.to_string();
        let count = text
            .split("count trigger of ")
            .nth(1)
            .map(|s| s.split(' ').next().expect("n").parse().expect("n"));
        Self {
            kind,
            lateness,
            count,
            purge: text.starts_with("a purging"),
            wm: None,
            windows: BTreeMap::new(),
            fired: Vec::new(),
            late: Vec::new(),
        }
    }

    fn is_late(&self, w: &TimeWindow) -> bool {
        self.wm
            .is_some_and(|wm| w.max_timestamp().saturating_add(self.lateness) <= wm)
    }

    /// Adds to `w` of `key` and applies the trigger's on-element.
    fn add(&mut self, key: u64, w: TimeWindow, v: u64, contents0: u64, count0: u64) {
        let (mut contents, mut count) = (contents0 + v, count0 + 1);
        match self.count {
            Some(n) => {
                if count >= n {
                    self.fired
                        .push(((key, w, contents), Some(w.max_timestamp())));
                    count = 0;
                    if self.purge {
                        contents = 0;
                    }
                }
            }
            None => {
                if self.wm.is_some_and(|wm| w.max_timestamp() <= wm) {
                    self.fired
                        .push(((key, w, contents), Some(w.max_timestamp())));
                    if self.purge {
                        contents = 0;
                    }
                }
            }
        }
        self.windows
            .entry(key)
            .or_default()
            .insert(w, (contents, count));
    }

    fn process(&mut self, (key, t, v): Event) {
        match self.kind {
            Kind::Sliding { size, slide } => {
                let mut taken = false;
                let mut start = t - t % slide;
                loop {
                    let w = TimeWindow {
                        start,
                        end: start + size,
                    };
                    if !self.is_late(&w) {
                        taken = true;
                        let (c, n) = self
                            .windows
                            .get(&key)
                            .and_then(|m| m.get(&w))
                            .copied()
                            .unwrap_or((0, 0));
                        self.add(key, w, v, c, n);
                    }
                    if start + size <= t + slide {
                        break;
                    }
                    start -= slide;
                }
                if !taken {
                    self.late.push((key, t, v));
                }
            }
            Kind::Session { gap } => {
                let new = TimeWindow {
                    start: t,
                    end: t + gap,
                };
                let sessions = self.windows.entry(key).or_default();
                let merging: Vec<TimeWindow> = sessions
                    .keys()
                    .filter(|s| s.intersects(&new))
                    .copied()
                    .collect();
                let merged = merging.iter().fold(new, |a, b| a.cover(b));
                if self.is_late(&merged) {
                    self.late.push((key, t, v));
                    return;
                }
                let (mut c, mut n) = (0, 0);
                let sessions = self.windows.get_mut(&key).expect("key");
                for m in &merging {
                    let (c1, n1) = sessions.remove(m).expect("session");
                    c += c1;
                    n += n1;
                }
                self.add(key, merged, v, c, n);
            }
        }
    }

    /// The watermark moves to `wm`: time triggers fire, then windows past their
    /// lateness are dropped.
    fn advance(&mut self, wm: u64) {
        let old = self.wm;
        if old.is_some_and(|o| o >= wm) {
            return;
        }
        self.wm = Some(wm);
        for (key, windows) in &mut self.windows {
            for (w, (contents, _)) in windows.iter_mut() {
                let due = w.max_timestamp();
                if self.count.is_none()
                    && old.is_none_or(|o| o < due)
                    && due <= wm
                    && *contents != 0
                {
                    self.fired.push(((*key, *w, *contents), Some(due)));
                    if self.purge {
                        *contents = 0;
                    }
                }
            }
            windows.retain(|w, _| w.max_timestamp().saturating_add(self.lateness) > wm);
        }
    }

    fn run(mut self, events: &[Event]) -> (Vec<Fired>, Vec<Event>) {
        let mut max: Option<u64> = None;
        for e in events {
            self.process(*e);
            max = max.max(Some(e.1));
            self.advance(max.expect("max") - 1);
        }
        self.advance(u64::MAX);
        self.fired.sort();
        self.late.sort();
        (self.fired, self.late)
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

/// Runs `events` through the windows of `kind` with `lateness` and `trigger` (a reduce
/// summing the values), returning what fired (sorted, with timestamps) and the late data.
fn run_job(
    events: &[Event],
    kind: Kind,
    lateness: u64,
    trigger: WindowTrigger,
    backend: StateBackendConfig,
) -> (Vec<Fired>, Vec<Event>) {
    let fired = Arc::new(Mutex::new(Vec::new()));
    let late_out = Arc::new(Mutex::new(Vec::new()));
    let late = OutputTag::<Event>::new("late");
    let keyed = source(
        "source",
        OneByOne {
            events: events.to_vec(),
            next: 0,
            paused: false,
        },
    )
    .assign_timestamps_and_watermarks(
        "timestamps",
        WatermarkStrategy::for_monotonous_timestamps(|e: &Event| e.1),
    )
    .key_by(|e: &Event| e.0);
    let reduce = |a: Event, b: Event| (a.0, a.1, a.2 + b.2);
    let windows = match kind {
        Kind::Sliding { size, slide } => keyed
            .window(SlidingEventTimeWindows::of(
                Duration::from_millis(size),
                Duration::from_millis(slide),
            ))
            .allowed_lateness(Duration::from_millis(lateness))
            .side_output_late_data(&late)
            .trigger(trigger)
            .reduce("windows", reduce),
        Kind::Session { gap } => keyed
            .window(EventTimeSessionWindows::with_gap(Duration::from_millis(
                gap,
            )))
            .allowed_lateness(Duration::from_millis(lateness))
            .side_output_late_data(&late)
            .trigger(trigger)
            .reduce("windows", reduce),
    };
    let _ = windows
        .side_output(&late)
        .sink("late", Collect(late_out.clone()));
    let graph = windows
        .process(
            "stamp",
            cairn_runtime::function::FnProcess(
                |(k, w, e): (u64, TimeWindow, Event), out: &mut Collector<'_, Fired>| {
                    let t = out.timestamp();
                    out.collect(((k, w, e.2), t))
                },
            ),
        )
        .sink("sink", Collect(fired.clone()));
    Job::new(graph, lateness_config(backend))
        .run()
        .expect("job");
    let mut fired = std::mem::take(&mut *fired.lock().expect("lock"));
    let mut late = std::mem::take(&mut *late_out.lock().expect("lock"));
    fired.sort();
    late.sort();
    (fired, late)
}

fn check(
    seed: u64,
    kind: Kind,
    lateness: u64,
    trigger: WindowTrigger,
    backend: StateBackendConfig,
) {
    let input = events(seed, 80, 3);
    let expected = Model::new(kind, lateness, trigger).run(&input);
    let actual = run_job(&input, kind, lateness, trigger, backend);
    if actual != expected {
        let missing: Vec<_> = expected
            .0
            .iter()
            .filter(|f| !actual.0.contains(f))
            .collect();
        let extra: Vec<_> = actual
            .0
            .iter()
            .filter(|f| !expected.0.contains(f))
            .collect();
        panic!(
            "{kind:?} lateness {lateness} {trigger} seed {seed}: fired missing {missing:?}, \
             extra {extra:?}; late expected {:?} actual {:?}",
            expected.1, actual.1
        );
    }
}

fn triggers() -> Vec<WindowTrigger> {
    vec![
        CountTrigger::of(1),
        CountTrigger::of(3),
        PurgingTrigger::of(CountTrigger::of(2)),
        PurgingTrigger::of(EventTimeTrigger::create()),
        EventTimeTrigger::create(),
    ]
}

#[test]
fn tumbling_windows_with_lateness_match_the_model() {
    let kind = Kind::Sliding {
        size: 10,
        slide: 10,
    };
    for lateness in [0, 7, 20] {
        for trigger in triggers() {
            check(11, kind, lateness, trigger, StateBackendConfig::HashMap);
        }
    }
}

#[test]
fn sliding_windows_with_lateness_match_the_model() {
    let kind = Kind::Sliding { size: 10, slide: 5 };
    for lateness in [0, 5, 8] {
        for trigger in triggers() {
            check(23, kind, lateness, trigger, StateBackendConfig::HashMap);
        }
    }
}

#[test]
fn sessions_with_lateness_match_the_model() {
    for (gap, lateness) in [(3, 0), (4, 6), (6, 3)] {
        for trigger in triggers() {
            check(
                37,
                Kind::Session { gap },
                lateness,
                trigger,
                StateBackendConfig::HashMap,
            );
        }
    }
}

#[test]
fn count_triggers_under_rocksdb_match_the_model() {
    for (kind, lateness) in [
        (Kind::Sliding { size: 10, slide: 5 }, 6),
        (Kind::Session { gap: 4 }, 5),
    ] {
        for trigger in [CountTrigger::of(2), PurgingTrigger::of(CountTrigger::of(3))] {
            check(41, kind, lateness, trigger, StateBackendConfig::rocksdb());
        }
    }
}

/// The model's checks are not vacuous: the input has late records and records past any
/// lateness, and every trigger fires.
#[test]
fn the_model_sees_late_data_and_firings() {
    let input = events(11, 80, 3);
    let kind = Kind::Sliding {
        size: 10,
        slide: 10,
    };
    for trigger in triggers() {
        let (fired, late) = Model::new(kind, 0, trigger).run(&input);
        assert!(fired.len() > 5, "{trigger}: {fired:?}");
        assert!(!late.is_empty(), "{trigger}");
    }
    let (_, late) = Model::new(kind, 7, CountTrigger::of(3)).run(&input);
    assert!(!late.is_empty(), "some records are past a lateness of 7");
}

#[test]
fn more_seeds_match_the_model() {
    for seed in [5, 77, 901] {
        check(
            seed,
            Kind::Sliding { size: 10, slide: 5 },
            6,
            CountTrigger::of(2),
            StateBackendConfig::HashMap,
        );
        check(
            seed,
            Kind::Session { gap: 5 },
            4,
            CountTrigger::of(2),
            StateBackendConfig::HashMap,
        );
        check(
            seed,
            Kind::Session { gap: 5 },
            4,
            PurgingTrigger::of(CountTrigger::of(2)),
            StateBackendConfig::HashMap,
        );
    }
}

/// `key ts` lines: event `n` has key `n % 5` and time `n` ms.
fn write_ordered(dir: &std::path::Path, lines: u64) -> std::path::PathBuf {
    let text: String = (0..lines).map(|n| format!("{} {n}\n", n % 5)).collect();
    let path = dir.join("ordered.txt");
    std::fs::write(&path, text).expect("write");
    path
}

const WINDOW: u64 = 100;

fn savepoint_job(
    input: &std::path::Path,
    output: &std::path::Path,
    trigger: WindowTrigger,
    session: bool,
) -> cairn_runtime::JobGraph {
    let keyed = source("source", cairn_runtime::sources::FileSource::new(input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .key_by(|(k, _): &(u64, u64)| *k);
    let windows = if session {
        keyed
            .window(EventTimeSessionWindows::with_gap(Duration::from_millis(
                WINDOW,
            )))
            .trigger(trigger)
            .aggregate("windows", common::CountEvents)
    } else {
        keyed
            .window(TumblingEventTimeWindows::of(Duration::from_millis(WINDOW)))
            .allowed_lateness(Duration::from_millis(10))
            .trigger(trigger)
            .aggregate("windows", common::CountEvents)
    };
    windows
        .process(
            "label",
            cairn_runtime::function::FnProcess(
                |(key, window, count): (u64, TimeWindow, u64),
                 out: &mut Collector<'_, (u64, u64)>| {
                    out.collect((key * 1_000_000 + window.start, count))
                },
            ),
        )
        .sink("sink", common::count_sink(output))
}

/// A savepoint under a count trigger: restored under another count or a purging one it
/// is refused naming both; under the same trigger at another parallelism and backend
/// every window's count firings are committed exactly once across both runs.
#[test]
fn a_count_trigger_savepoint_restores_only_under_the_same_trigger() {
    const LINES: u64 = 6_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_ordered(dir.path(), LINES);
    let output = dir.path().join("out");
    let trigger = CountTrigger::of(3);
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    let handle = Job::new(savepoint_job(&input, &output, trigger, false), cfg)
        .start()
        .expect("start");
    while handle.records_read() < 1_500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(&output);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(first.records < LINES, "the input ended before the stop");

    for other in [CountTrigger::of(4), PurgingTrigger::of(CountTrigger::of(3))] {
        let mut cfg = common::config(dir.path(), 50);
        cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
        let err = Job::new(
            savepoint_job(&input, &dir.path().join("other"), other, false),
            cfg,
        )
        .run()
        .expect_err("another trigger");
        let message = err.to_string();
        assert!(
            message.contains("windows")
                && message.contains("a count trigger of 3 records")
                && message.contains(&other.to_string()),
            "{other}: {message}"
        );
    }

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(savepoint_job(&input, &output, trigger, false), cfg)
        .run()
        .expect("restored run");
    // Each tumbling window of a key holds 20 events: firings at 3, 6, .., 18.
    let mut model: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for start in (0..LINES).step_by(WINDOW as usize) {
        for key in 0..5 {
            let n = (start..(start + WINDOW).min(LINES))
                .filter(|t| t % 5 == key)
                .count() as u64;
            let firings: Vec<u64> = (1..=n / 3).map(|i| 3 * i).collect();
            if !firings.is_empty() {
                model.insert((key * 1_000_000 + start).to_string(), firings);
            }
        }
    }
    let mut out = common::read_output(&output);
    for v in out.values_mut() {
        v.sort_unstable();
    }
    assert_eq!(out, model);
}

/// Sessions under a purging count trigger through a savepoint, restored at parallelism
/// 3 under RocksDB: each key's one session (events 5 ms apart, a gap of 100 ms) emits a
/// 4 per four records, exactly once.
#[test]
fn a_purging_count_trigger_on_sessions_is_exactly_once_across_a_rescaled_restore() {
    const LINES: u64 = 6_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_ordered(dir.path(), LINES);
    let output = dir.path().join("out");
    let trigger = PurgingTrigger::of(CountTrigger::of(4));
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    let handle = Job::new(savepoint_job(&input, &output, trigger, true), cfg)
        .start()
        .expect("start");
    while handle.records_read() < 1_500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(&output);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first run");
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(savepoint_job(&input, &output, trigger, true), cfg)
        .run()
        .expect("restored run");
    let out = common::read_output(&output);
    // One session per key from its first event (key k at time k), 1,200 events each.
    let model: BTreeMap<String, Vec<u64>> = (0..5)
        .map(|k| {
            (
                (k * 1_000_000 + k).to_string(),
                vec![4; (LINES / 5 / 4) as usize],
            )
        })
        .collect();
    assert_eq!(out, model);
}

/// Triggers that cannot work are refused when the job starts, naming the operator.
#[test]
fn triggers_that_cannot_work_are_refused_at_start_naming_the_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_ordered(dir.path(), 100);
    for (trigger, session, what) in [
        (CountTrigger::of(0), false, "count trigger of 0"),
        (
            PurgingTrigger::of(CountTrigger::of(0)),
            true,
            "count trigger of 0",
        ),
        (
            ProcessingTimeTrigger::create(),
            false,
            "processing-time trigger on event-time",
        ),
        (
            PurgingTrigger::of(ProcessingTimeTrigger::create()),
            true,
            "processing-time trigger on event-time",
        ),
    ] {
        let err = Job::new(
            savepoint_job(&input, &dir.path().join("out"), trigger, session),
            common::config(dir.path(), 50),
        )
        .run()
        .expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("window operator windows") && message.contains(what),
            "{trigger}: {message}"
        );
        assert!(!message.contains("panic"), "{message}");
    }
}

/// Processing-time windows under a count trigger (a manual clock inside window
/// `[0, 1000)`) through a savepoint, restored at parallelism 2 under RocksDB with the
/// clock still in the window: the counts go on (firings at 3, 6, .. of each key's 1,200
/// records), each once; a restore under the processing-time trigger is refused.
#[test]
fn a_count_trigger_on_processing_time_windows_goes_on_after_a_restore() {
    const LINES: u64 = 6_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_ordered(dir.path(), LINES);
    let output = dir.path().join("out");
    let job = |output: &std::path::Path, trigger: WindowTrigger| {
        source("source", cairn_runtime::sources::FileSource::new(&input))
            .process("parse", common::ParseEvents::new(Vec::new()))
            .key_by(|(k, _): &(u64, u64)| *k)
            .window(cairn_runtime::TumblingProcessingTimeWindows::of(
                Duration::from_millis(1_000),
            ))
            .trigger(trigger)
            .aggregate("windows", common::CountEvents)
            .process(
                "label",
                cairn_runtime::function::FnProcess(
                    |(key, window, count): (u64, TimeWindow, u64),
                     out: &mut Collector<'_, (u64, u64)>| {
                        out.collect((key * 1_000_000 + window.start, count))
                    },
                ),
            )
            .sink("sink", common::count_sink(output))
    };
    let clock =
        |ms| cairn_runtime::ProcessingClock::new(Arc::new(cairn_core::ManualClock::new(ms)));
    let mut cfg = common::config(dir.path(), 50);
    cfg.records_per_second = Some(4_000);
    cfg.processing_clock = clock(100);
    let handle = Job::new(job(&output, CountTrigger::of(3)), cfg)
        .start()
        .expect("start");
    while handle.records_read() < 1_500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(&output);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first run");

    let mut cfg = common::config(dir.path(), 50);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.processing_clock = clock(200);
    let err = Job::new(
        job(&dir.path().join("other"), ProcessingTimeTrigger::create()),
        cfg,
    )
    .run()
    .expect_err("another trigger");
    assert!(
        err.to_string().contains("a count trigger of 3 records")
            && err.to_string().contains("a processing-time trigger"),
        "{err}"
    );

    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    cfg.processing_clock = clock(900);
    Job::new(job(&output, CountTrigger::of(3)), cfg)
        .run()
        .expect("restored run");
    let model: BTreeMap<String, Vec<u64>> = (0..5)
        .map(|k| {
            (
                (k * 1_000_000).to_string(),
                (1..=LINES / 5 / 3).map(|i| 3 * i).collect(),
            )
        })
        .collect();
    let mut out = common::read_output(&output);
    for v in out.values_mut() {
        v.sort_unstable();
    }
    assert_eq!(out, model);
}
