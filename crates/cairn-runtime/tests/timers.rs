//! Processing-time timers of keyed process functions, end to end.
//!
//! The processing clock is a `ManualClock` the test moves (`JobConfig::processing_clock`),
//! so which timers fire, and when, depends only on the test. Timers are keyed state: they
//! must survive a savepoint restored under the other backend at another parallelism (the
//! overdue ones fire at once), and a failure between checkpoints must neither lose a timer
//! nor let its firing reach the committed output twice.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{KeyedStateBackend, ManualClock, ValueStateDescriptor, ValueStateId};
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointConfig, Checkpointed, Collector, Job, KeyedProcessFunction, ProcessingClock,
    RestartStrategy, RestoreFrom, Sink, SnapshotMode, StateBackendConfig, TimeDomain, Timer,
    TimerService,
};
use serde::{Deserialize, Serialize};

const RECORDS: u64 = 2_000;
const KEYS: u64 = 40;
const SEED: u64 = 7;

/// How many records of each key the generator emits.
fn counts() -> BTreeMap<u64, u64> {
    let g = GeneratorSource::new(RECORDS, KEYS, SEED);
    let mut counts = BTreeMap::new();
    for n in 0..RECORDS {
        *counts.entry(g.key_of(n)).or_insert(0) += 1;
    }
    counts
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

/// What the keyed function emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Out {
    /// A record of this key was processed.
    Seen(u64),
    /// A timer of `key` at `time` fired when the key's count was `count`.
    Fired { key: u64, time: u64, count: u64 },
}

/// Per key: counts its records and keeps timers at 1,000 (every key), 5,000 (odd keys)
/// and, from the timer at 1,000, 500 ms later (keys divisible by 3). Keys divisible by 5
/// register a timer at 2,000 with their first record and delete it with their second.
#[derive(Clone, Debug)]
struct Deadlines;

impl Checkpointed for Deadlines {}

impl KeyedProcessFunction for Deadlines {
    type Key = u64;
    type In = u64;
    type Out = Out;
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_runtime::Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::<u64>::new("count"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        _input: u64,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        let count = backend.value_get(*state, &())?.unwrap_or(0) + 1;
        backend.value_update(*state, &(), count)?;
        timers.register_processing_time_timer(1_000);
        if key % 2 == 1 {
            timers.register_processing_time_timer(5_000);
        }
        if key.is_multiple_of(5) {
            match count {
                1 => timers.register_processing_time_timer(2_000),
                2 => timers.delete_processing_time_timer(2_000),
                _ => {}
            }
        }
        // A function may move the backend's current key (here: to walk the keys of its
        // state): the timers registered above are still this key's.
        if let Some(first) = backend.keys(state.raw(), &())?.first() {
            backend.set_current_key(first)?;
        }
        out.collect(Out::Seen(*key))
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        assert_eq!(timer.domain, TimeDomain::ProcessingTime);
        if timer.time == 1_000 && key.is_multiple_of(3) {
            timers.register_processing_time_timer(timers.current_processing_time() + 500);
        }
        let count = backend.value_get(*state, &())?.unwrap_or(0);
        out.collect(Out::Fired {
            key: *key,
            time: timer.time,
            count,
        })
    }
}

/// Collects every record in memory (not transactional: this test's jobs do not fail).
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<Out>>>);

impl Collect {
    fn seen(&self) -> u64 {
        let out = self.0.lock().expect("lock");
        out.iter().filter(|o| matches!(o, Out::Seen(_))).count() as u64
    }

    /// The fired timers, sorted.
    fn fired(&self) -> Vec<Out> {
        let out = self.0.lock().expect("lock");
        let mut fired: Vec<Out> = out
            .iter()
            .filter(|o| matches!(o, Out::Fired { .. }))
            .cloned()
            .collect();
        fired.sort();
        fired
    }
}

impl Checkpointed for Collect {}

impl Sink<Out> for Collect {
    fn write(&mut self, record: Out) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

fn fired(key: u64, time: u64, count: u64) -> Out {
    Out::Fired { key, time, count }
}

#[test]
fn timers_fire_by_the_clock_and_survive_a_savepoint_under_the_other_backend_at_another_parallelism()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let counts = counts();
    assert_eq!(counts.len() as u64, KEYS);
    let job = |sink: Collect| {
        source(
            "source",
            GeneratorSource::new(RECORDS, KEYS, SEED).idle_at_end(),
        )
        .key_by(|k: &u64| *k)
        .process("deadlines", Deadlines)
        .sink("sink", sink)
    };

    // Under the heap at parallelism 2: nothing fires before the clock reaches 1,000; then
    // every key's timer at 1,000 fires once, after all of its records.
    let clock = Arc::new(ManualClock::new(0));
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.processing_clock = ProcessingClock::new(clock.clone());
    let sink = Collect::default();
    let handle = Job::new(job(sink.clone()), cfg).start().expect("start");
    wait_for("every record processed", || sink.seen() == RECORDS);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sink.fired(), Vec::new(), "a timer fired before its time");
    clock.set(1_000);
    wait_for("the timers at 1,000", || sink.fired().len() as u64 == KEYS);
    let expected: Vec<Out> = counts.iter().map(|(&k, &n)| fired(k, 1_000, n)).collect();
    assert_eq!(sink.fired(), expected);
    // Timers at 1,500, 2,000 (deleted) and 5,000 are pending in the savepoint.
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first job");
    assert_eq!(sink.fired(), expected, "a timer fired after the stop");

    // Under RocksDB at parallelism 3, with the clock past them all: the pending timers
    // fire at once, each once; the deleted one and those that fired before do not.
    let clock = Arc::new(ManualClock::new(6_000));
    let mut cfg = common::config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    cfg.processing_clock = ProcessingClock::new(clock);
    let sink = Collect::default();
    let handle = Job::new(job(sink.clone()), cfg).start().expect("restore");
    let mut expected: Vec<Out> = Vec::new();
    for (&k, &n) in &counts {
        if k.is_multiple_of(3) {
            expected.push(fired(k, 1_500, n));
        }
        if k % 2 == 1 {
            expected.push(fired(k, 5_000, n));
        }
    }
    expected.sort();
    wait_for("the restored timers", || {
        sink.fired().len() >= expected.len()
    });
    std::thread::sleep(Duration::from_millis(200));
    handle.stop_with_savepoint(None).expect("second savepoint");
    handle.wait().expect("restored job");
    assert_eq!(sink.fired(), expected);
    assert_eq!(sink.seen(), 0, "the restored source replayed records");
}

/// Per key, one timer at `1_000 + key`, registered with the key's first record only (a
/// value state remembers it: `false` registered, `true` fired), so a replay after a
/// restore does not register it again; its firing is the only output.
#[derive(Clone, Debug)]
struct OncePerKey;

impl Checkpointed for OncePerKey {}

impl KeyedProcessFunction for OncePerKey {
    type Key = u64;
    type In = u64;
    type Out = (u64, u64);
    type State = ValueStateId<bool, ()>;

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_runtime::Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::<bool>::new("fired"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        _input: u64,
        backend: &mut B,
        timers: &mut TimerService,
        _out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        if backend.value_get(*state, &())?.is_none() {
            backend.value_update(*state, &(), false)?;
            timers.register_processing_time_timer(1_000 + key);
        }
        Ok(())
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        timer: Timer,
        backend: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        backend.value_update(*state, &(), true)?;
        out.collect((*key, timer.time))
    }
}

/// A failure after half the records: the restart restores pending timers from the last
/// checkpoint, and each timer's firing is committed exactly once.
fn exactly_once_across_a_failure(backend: StateBackendConfig, mode: SnapshotMode, unaligned: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let clock = Arc::new(ManualClock::new(0));
    let mut cfg = common::config(dir.path(), 30);
    cfg.parallelism = 2;
    cfg.backend = backend;
    cfg.checkpoint = CheckpointConfig {
        unaligned,
        snapshot_mode: mode,
        ..cfg.checkpoint
    };
    cfg.records_per_second = Some(4_000);
    cfg.fail_at_record = Some(RECORDS / 2);
    cfg.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
    cfg.processing_clock = ProcessingClock::new(clock.clone());
    let graph = source(
        "source",
        GeneratorSource::new(RECORDS, KEYS, SEED).idle_at_end(),
    )
    .key_by(|k: &u64| *k)
    .process("once", OncePerKey)
    .sink("sink", common::count_sink(&output));
    let handle = Job::new(graph, cfg).start().expect("start");
    // Every record read (the failure at the half has happened, and the restart replayed
    // from its checkpoint), then the clock passes every timer.
    wait_for("every record read", || handle.records_read() >= RECORDS);
    clock.set(10_000);
    let committed = || {
        common::read_output(&output)
            .values()
            .map(|v| v.len() as u64)
            .sum::<u64>()
    };
    wait_for("every timer's output committed", || committed() >= KEYS);
    handle.stop_with_savepoint(None).expect("savepoint");
    let result = handle.wait().expect("job");
    assert_eq!(result.restarts, 1, "the injected failure did not happen");
    let output = common::read_output(&output);
    let expected: BTreeMap<String, Vec<u64>> = (0..KEYS)
        .map(|k| (k.to_string(), vec![1_000 + k]))
        .collect();
    assert_eq!(output, expected);
}

#[test]
fn heap_aligned_timers_are_exactly_once_across_a_failure() {
    exactly_once_across_a_failure(StateBackendConfig::HashMap, SnapshotMode::Full, false);
}

#[test]
fn rocksdb_unaligned_timers_are_exactly_once_across_a_failure() {
    exactly_once_across_a_failure(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        true,
    );
}

#[test]
fn changelog_timers_are_exactly_once_across_a_failure() {
    exactly_once_across_a_failure(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
        false,
    );
}

/// A function whose timer of key 0 registers itself again at the same time, for ever.
#[derive(Clone, Debug)]
struct Again(Arc<AtomicU64>);

impl Checkpointed for Again {}

impl KeyedProcessFunction for Again {
    type Key = u64;
    type In = u64;
    type Out = Out;
    type State = ();

    fn open<B: KeyedStateBackend>(&mut self, _backend: &mut B) -> cairn_runtime::Result<()> {
        Ok(())
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        _state: &(),
        key: &u64,
        _input: u64,
        _backend: &mut B,
        timers: &mut TimerService,
        _out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        if *key == 0 {
            timers.register_processing_time_timer(1_000);
        }
        Ok(())
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        _state: &(),
        _key: &u64,
        timer: Timer,
        _backend: &mut B,
        timers: &mut TimerService,
        _out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        timers.register_processing_time_timer(timer.time);
        Ok(())
    }
}

/// A timer that registers itself again when due fires over and over (as in Flink), but
/// the task still takes its barriers: a stop-with-savepoint completes.
#[test]
fn a_timer_that_registers_itself_again_does_not_block_barriers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fired = Arc::new(AtomicU64::new(0));
    let mut cfg = common::config(dir.path(), 50);
    cfg.processing_clock = ProcessingClock::new(Arc::new(ManualClock::new(2_000)));
    let graph = source(
        "source",
        GeneratorSource::new(RECORDS, KEYS, SEED).idle_at_end(),
    )
    .key_by(|k: &u64| *k)
    .process("again", Again(fired.clone()))
    .sink("sink", Collect::default());
    let handle = Job::new(graph, cfg).start().expect("start");
    wait_for("the timer firing again and again", || {
        fired.load(Ordering::Relaxed) > 10_000
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let stopped = handle.stop_with_savepoint(None).map(|_| handle.wait());
        let _ = tx.send(stopped.is_ok());
    });
    let stopped = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        stopped,
        Ok(true),
        "the stop-with-savepoint did not complete"
    );
}
