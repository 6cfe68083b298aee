//! State TTL end to end in a job: a keyed process function keeps a per-key count in a value
//! state with a TTL and emits what each record's read returned. The output, compared line
//! for line with a plain model, shows that entries expire exactly `TTL_MS` after their last
//! write by the state's clock, that reads neither return expired entries nor refresh live
//! ones (`TtlUpdate::OnCreateAndWrite`), and that the stamps survive a checkpoint restore
//! after an injected failure and a savepoint restore under the other backend at another
//! parallelism: a count written before the failure expires after the restore at the time
//! it was always going to.
//!
//! The clock is the records' own time. A TTL clock belongs to the state's descriptor, and a
//! clock shared with the test could not be moved in step with the records of several
//! subtasks, so each operator instance makes a `ManualClock` in `open`, gives it
//! to its `StateTtlConfig`, and sets it to the record's time before it touches the state.
//! The source has parallelism 1, so every keyed subtask sees its records (and its clock)
//! in time order, and the backends' background cleanup, which reads the same clock, can
//! drop only what a later read would find expired anyway. No outcome depends on wall time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{
    KeyedStateBackend, ManualClock, OperatorListStateDescriptor, OperatorListStateId,
    StateTtlConfig, TtlStateAccess, TtlValueStateId, ValueStateDescriptor,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobConfig, JobGraph, KeyedProcessFunction,
    RestartStrategy, RestoreFrom, SnapshotContext, SnapshotMode, Source, SourceStatus,
    StateBackendConfig,
};
use serde::{Deserialize, Serialize};

/// The counts' time to live, in the records' milliseconds.
const TTL_MS: u64 = 100;
/// Events before the gate: the source holds there until a checkpoint (or the savepoint)
/// covers them, so all their stamps are in the snapshot that is restored.
const GATE: usize = 1500;
/// All events.
const EVENTS: usize = 3000;
/// The injected failure: after the sources have read this many records (in the first run).
const FAIL_AT: usize = GATE + 2;

/// One input record: a write (`peek == false`: read the count, store it plus one) or a
/// read only, of `key` at time `at_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Event {
    index: u32,
    key: u32,
    at_ms: u64,
    peek: bool,
}

/// What the keyed function emits per event: the count its read returned.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Seen {
    event: Event,
    count: Option<u64>,
}

/// The output line of an event (sorted by the zero-padded index).
fn line(event: &Event, count: Option<u64>) -> String {
    let op = if event.peek { "peek" } else { "add" };
    let count = count.map_or_else(|| "-".to_string(), |c| c.to_string());
    format!(
        "{:05}\tkey={}\tat={}\t{op}\tseen={count}",
        event.index, event.key, event.at_ms
    )
}

/// Deterministic events in time order: a few hot keys that rarely expire and cold keys
/// that often do, gaps of 0–7 ms with an occasional pause of 60–119 ms, one read in four a
/// peek.
fn events() -> Vec<Event> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut at_ms = 1_000;
    (0..EVENTS)
        .map(|index| {
            at_ms += if next() % 40 == 0 {
                60 + next() % 60
            } else {
                next() % 8
            };
            let key = if next() % 4 == 0 {
                4 + next() % 8
            } else {
                next() % 4
            };
            Event {
                index: index as u32,
                key: key as u32,
                at_ms,
                peek: next() % 4 == 0,
            }
        })
        .collect()
}

/// How often the events hit each case the test claims to cover.
#[derive(Debug, Default)]
struct Coverage {
    /// Reads of a stored count `TTL_MS - 1` after its write (still returned).
    live_at_last_ms: usize,
    /// Reads of a stored count exactly `TTL_MS` after its write (expired).
    expired_at_ttl: usize,
    /// Reads of an expired count that a peek had returned less than `TTL_MS` earlier (a
    /// read that refreshed would have kept it alive).
    expired_though_peeked: usize,
    /// Reads after the failure (processed only by the restored job) of a count written
    /// before the gate, still live / expired.
    restored_live: usize,
    restored_expired: usize,
}

/// What a key's state holds in the model.
struct Stored {
    count: u64,
    stamped_ms: u64,
    stamped_by: usize,
    peeked_ms: Option<u64>,
}

/// The expected output, sorted, and the coverage of the events.
fn model(events: &[Event]) -> (Vec<String>, Coverage) {
    let mut state: BTreeMap<u32, Stored> = BTreeMap::new();
    let mut coverage = Coverage::default();
    let mut lines = Vec::with_capacity(events.len());
    for e in events {
        let mut seen = None;
        if let Some(s) = state.get_mut(&e.key) {
            let age = e.at_ms - s.stamped_ms;
            let expired = age >= TTL_MS;
            coverage.live_at_last_ms += usize::from(age == TTL_MS - 1);
            coverage.expired_at_ttl += usize::from(age == TTL_MS);
            if expired && s.peeked_ms.is_some_and(|p| e.at_ms - p < TTL_MS) {
                coverage.expired_though_peeked += 1;
            }
            if e.index as usize >= FAIL_AT && s.stamped_by < GATE {
                if expired {
                    coverage.restored_expired += 1;
                } else {
                    coverage.restored_live += 1;
                }
            }
            if expired {
                state.remove(&e.key);
            } else {
                seen = Some(s.count);
                if e.peek {
                    s.peeked_ms = Some(e.at_ms);
                }
            }
        }
        if !e.peek {
            let stored = Stored {
                count: seen.unwrap_or(0) + 1,
                stamped_ms: e.at_ms,
                stamped_by: e.index as usize,
                peeked_ms: None,
            };
            state.insert(e.key, stored);
        }
        lines.push(line(e, seen));
    }
    lines.sort();
    (lines, coverage)
}

/// The keyed function: a per-key count in a value state with a TTL, on a clock that each
/// record sets to its own time.
#[derive(Clone, Debug)]
struct ExpiringCount;

impl Checkpointed for ExpiringCount {}

/// The count's state and the clock of its TTL (one per operator instance).
struct CountState {
    count: TtlValueStateId<u64, ()>,
    clock: Arc<ManualClock>,
}

impl KeyedProcessFunction for ExpiringCount {
    type Key = u32;
    type In = Event;
    type Out = Seen;
    type State = CountState;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> cairn_runtime::Result<CountState> {
        // Made here, not in the function (which every subtask clones): subtasks must not
        // move one another's clock.
        let clock = Arc::new(ManualClock::new(0));
        let ttl = StateTtlConfig::new(Duration::from_millis(TTL_MS)).with_clock(clock.clone());
        let count =
            backend.register_value_with_ttl(&ValueStateDescriptor::<u64>::new("count"), &ttl)?;
        Ok(CountState { count, clock })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &CountState,
        _key: &u32,
        event: Event,
        backend: &mut B,
        _timers: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, Seen>,
    ) -> cairn_runtime::Result<()> {
        state.clock.set(event.at_ms);
        let mut count = backend.ttl_value(&state.count);
        let seen = count.get()?;
        if !event.peek {
            count.update(seen.unwrap_or(0) + 1)?;
        }
        out.collect(Seen { event, count: seen })
    }
}

/// What the source does at [`GATE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// Nothing: it reads on.
    No,
    /// Waits until a checkpoint taken at the gate has completed (or the job was restored
    /// from one).
    UntilCheckpointed,
    /// Waits for good (for a savepoint to stop the job).
    Forever,
}

/// How a source instance started: its run (restart attempt) and the position it was
/// restored at.
type Starts = Arc<Mutex<Vec<(u32, Option<u64>)>>>;

/// A replayable source of the events, its position in operator state.
#[derive(Clone)]
struct Events {
    events: Arc<Vec<Event>>,
    next: usize,
    position: Option<OperatorListStateId<u64>>,
    hold: Hold,
    /// The first checkpoint taken at or past the gate.
    gate_checkpoint: Option<u64>,
    released: bool,
    starts: Starts,
}

impl Events {
    fn new(events: &[Event], hold: Hold) -> Self {
        Self {
            events: Arc::new(events.to_vec()),
            next: 0,
            position: None,
            hold,
            gate_checkpoint: None,
            released: false,
            starts: Arc::default(),
        }
    }

    fn starts(&self) -> Vec<(u32, Option<u64>)> {
        self.starts.lock().expect("starts").clone()
    }
}

impl Checkpointed for Events {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<u64>::split("next"))?;
        self.position = Some(id);
        let restored = if ctx.is_restored {
            ctx.operator_state.list(id)?.first().copied()
        } else {
            None
        };
        self.next = restored.map_or(0, |n| n as usize);
        self.released = self.next >= GATE;
        self.starts
            .lock()
            .expect("starts")
            .push((ctx.subtask.attempt, restored));
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        if let Some(id) = self.position {
            *ctx.operator_state.list(id)? = vec![self.next as u64];
        }
        if self.next >= GATE && self.gate_checkpoint.is_none() && !ctx.is_savepoint {
            self.gate_checkpoint = Some(ctx.checkpoint_id);
        }
        Ok(())
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> cairn_runtime::Result<()> {
        self.released |= self.gate_checkpoint.is_some_and(|g| checkpoint_id >= g);
        Ok(())
    }
}

impl Source for Events {
    type Out = Event;

    fn poll(
        &mut self,
        out: &mut Collector<'_, Event>,
        max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        for _ in 0..max {
            let held = match self.hold {
                Hold::No => false,
                Hold::UntilCheckpointed => !self.released,
                Hold::Forever => true,
            };
            if self.next == GATE && held {
                return Ok(SourceStatus::Idle);
            }
            let Some(event) = self.events.get(self.next) else {
                return Ok(SourceStatus::End);
            };
            out.collect(event.clone())?;
            self.next += 1;
        }
        Ok(SourceStatus::More)
    }
}

/// events → key_by(key) → count (at `parallelism`, chained with the sink) → sink.
fn graph(events: Events, parallelism: u32, output: &Path) -> JobGraph {
    let sink = TwoPhaseFileSink::new(output, |seen: &Seen, out: &mut Vec<u8>| {
        out.extend_from_slice(line(&seen.event, seen.count).as_bytes());
    });
    source("events", events)
        .key_by(|e: &Event| e.key)
        .process("count", ExpiringCount)
        .parallelism(parallelism)
        .sink("sink", sink)
}

/// Every committed output line, sorted.
fn committed(output: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(output).expect("read the output directory") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !entry.path().is_file() {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).expect("read output");
        lines.extend(text.lines().map(str::to_string));
    }
    lines.sort();
    lines
}

/// Compares the output with the model's, naming the first line that differs.
fn assert_output(got: &[String], want: &[String]) {
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "output differs from the model at line {i} of {} (expected {}): got {:?}, expected {:?}",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

fn job_config(dir: &Path, backend: StateBackendConfig, mode: SnapshotMode) -> JobConfig {
    let mut cfg = common::config(dir, 20);
    cfg.backend = backend;
    cfg.checkpoint.snapshot_mode = mode;
    cfg.restart = RestartStrategy::fixed_delay(1, Duration::from_millis(10));
    cfg
}

/// A failure after the gate: the job restarts from a checkpoint that holds every count
/// written before the gate, with its stamp, and the output is the model's.
fn checkpoint_restore(backend: StateBackendConfig, mode: SnapshotMode) {
    let events = events();
    let (want, _) = model(&events);
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = job_config(dir.path(), backend, mode);
    cfg.fail_at_record = Some(FAIL_AT as u64);
    let source = Events::new(&events, Hold::UntilCheckpointed);
    let result = Job::new(graph(source.clone(), 2, &output), cfg)
        .run()
        .expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    // The second run started from a checkpoint at or past the gate, before the failure.
    let starts = source.starts();
    assert!(
        matches!(starts.as_slice(), [(0, None), (1, Some(at))]
            if (GATE as u64..=FAIL_AT as u64).contains(at)),
        "source starts (attempt, restored position): {starts:?}"
    );
    assert_output(&committed(&output), &want);
}

/// The first job stops with a savepoint at the gate; the second restores it under
/// `other` at parallelism 3 and reads the rest: together they write the model's output.
fn savepoint_restore(backend: StateBackendConfig, other: StateBackendConfig) {
    let events = events();
    let (want, _) = model(&events);
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let cfg = job_config(dir.path(), backend, SnapshotMode::Incremental);
    let first = Events::new(&events, Hold::Forever);
    let handle = Job::new(graph(first, 2, &output), cfg)
        .start()
        .expect("start");
    // Waiting for a condition, bounded; the savepoint's content does not depend on when.
    let started = Instant::now();
    while handle.records_read() < GATE as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first job did not read up to the gate"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first job");
    assert_eq!(first.records, GATE as u64, "{first:?}");
    assert_output(&committed(&output), &want[..GATE]);

    let mut cfg = job_config(dir.path(), other, SnapshotMode::Incremental);
    cfg.checkpoint_dir = dir.path().join("checkpoints-2").display().to_string();
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    let second = Events::new(&events, Hold::No);
    let result = Job::new(graph(second.clone(), 3, &output), cfg)
        .run()
        .expect("second job");
    assert_eq!(
        result.restored_from.as_deref(),
        Some(format!("savepoint {savepoint}").as_str())
    );
    assert_eq!(second.starts(), [(0, Some(GATE as u64))]);
    assert_output(&committed(&output), &want);
}

/// The events reach every case the job tests claim to cover, so a backend or restore that
/// got any of them wrong would change the output.
#[test]
fn the_events_exercise_every_ttl_case() {
    let (_, coverage) = model(&events());
    let Coverage {
        live_at_last_ms,
        expired_at_ttl,
        expired_though_peeked,
        restored_live,
        restored_expired,
    } = &coverage;
    assert!(
        *live_at_last_ms > 0
            && *expired_at_ttl > 0
            && *expired_though_peeked > 0
            && *restored_live > 0
            && *restored_expired > 0,
        "{coverage:?}"
    );
}

#[test]
fn checkpoint_restore_hashmap_incremental() {
    checkpoint_restore(StateBackendConfig::HashMap, SnapshotMode::Incremental);
}

#[test]
fn checkpoint_restore_rocksdb_incremental() {
    checkpoint_restore(StateBackendConfig::rocksdb(), SnapshotMode::Incremental);
}

#[test]
fn checkpoint_restore_hashmap_changelog() {
    checkpoint_restore(StateBackendConfig::HashMap, SnapshotMode::Changelog);
}

#[test]
fn checkpoint_restore_rocksdb_changelog() {
    checkpoint_restore(StateBackendConfig::rocksdb(), SnapshotMode::Changelog);
}

#[test]
fn savepoint_restore_hashmap_to_rocksdb() {
    savepoint_restore(StateBackendConfig::HashMap, StateBackendConfig::rocksdb());
}

#[test]
fn savepoint_restore_rocksdb_to_hashmap() {
    savepoint_restore(StateBackendConfig::rocksdb(), StateBackendConfig::HashMap);
}
