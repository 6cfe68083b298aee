//! Helpers for the runtime's tests: word-count inputs, the job, and the exactly-once check.
#![allow(dead_code, unreachable_pub)]

pub mod unaligned;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateId, KeyedStateBackend,
    ListStateDescriptor, ListStateId, MapStateDescriptor, MapStateId, ReducingStateDescriptor,
    ReducingStateId, ValueStateDescriptor, ValueStateId,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::{FileSource, GeneratorSource};
use cairn_runtime::{
    source, CheckpointConfig, Checkpointed, Collector, InitContext, JobConfig, JobGraph,
    KeyedProcessFunction, ProcessFunction, RuntimeError, SnapshotContext, Source, SourceStatus,
};

/// Writes `lines` lines of words drawn from `vocabulary` words (deterministic) and returns
/// the path and how often each word occurs.
pub fn write_input(
    dir: &Path,
    lines: usize,
    vocabulary: usize,
    seed: u64,
) -> (PathBuf, BTreeMap<String, u64>) {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut text = String::new();
    let mut counts = BTreeMap::new();
    for _ in 0..lines {
        let words = 1 + (next() % 6) as usize;
        for j in 0..words {
            let w = format!("w{}", next() % vocabulary as u64);
            if j > 0 {
                text.push(' ');
            }
            text.push_str(&w);
            *counts.entry(w).or_insert(0) += 1;
        }
        text.push('\n');
    }
    let path = dir.join("input.txt");
    std::fs::write(&path, text).expect("write input");
    (path, counts)
}

/// Every committed output line, as word → counts.
pub fn read_output(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).expect("read output");
        for line in text.lines() {
            let (w, n) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad line {line:?} in {name}"));
            out.entry(w.to_string()).or_default().push(
                n.parse()
                    .unwrap_or_else(|_| panic!("bad count in {line:?}")),
            );
        }
    }
    out
}

/// Exactly once: for each word occurring n times, the counts 1..n each exactly once.
pub fn check_exactly_once(expected: &BTreeMap<String, u64>, output: &BTreeMap<String, Vec<u64>>) {
    for (w, n) in expected {
        let mut got = output.get(w).cloned().unwrap_or_default();
        got.sort_unstable();
        let want: Vec<u64> = (1..=*n).collect();
        assert!(
            got == want,
            "word {w}: expected counts 1..={n} once each, got {} counts: first {:?}",
            got.len(),
            &got[..got.len().min(20)]
        );
    }
    for w in output.keys() {
        assert!(
            expected.contains_key(w),
            "unexpected word {w} in the output"
        );
    }
}

/// At least once: every count 1..n present (duplicates allowed), nothing else.
pub fn check_at_least_once(expected: &BTreeMap<String, u64>, output: &BTreeMap<String, Vec<u64>>) {
    for (w, n) in expected {
        let got = output.get(w).cloned().unwrap_or_default();
        for c in 1..=*n {
            assert!(got.contains(&c), "word {w}: count {c} of {n} is missing");
        }
    }
}

/// The output of a job restored from a savepoint taken part way: for each word, the counts
/// after the savepoint's up to the word's total, once each. At least once, a restart may
/// count records again that the keyed operator had counted after the barrier of one input
/// and before that of another (they are replayed from the sources' positions): then the
/// counts go on without a gap past the total.
pub fn check_continues(
    expected: &BTreeMap<String, u64>,
    output: &BTreeMap<String, Vec<u64>>,
    exactly_once: bool,
) {
    for (w, got) in output {
        let n = *expected
            .get(w)
            .unwrap_or_else(|| panic!("unexpected word {w} in the output"));
        let mut got = got.clone();
        got.sort_unstable();
        let mut distinct = got.clone();
        distinct.dedup();
        let from = distinct.first().copied().unwrap_or(1);
        let to = if exactly_once {
            n
        } else {
            distinct.last().copied().unwrap_or(n).max(n)
        };
        let want: Vec<u64> = (from..=to).collect();
        assert!(
            distinct == want && (!exactly_once || got.len() == distinct.len()),
            "word {w} (occurs {n} times): expected counts {from}..={to} after the savepoint, got {} counts: first {:?}, last {:?}",
            got.len(),
            &got[..got.len().min(20)],
            got.last()
        );
    }
}

/// An integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The operator and parallelism that a refused restore asks for: a snapshot in which an
/// operator had finished in some subtasks only restores at its parallelism (as in Flink),
/// and the error says "operator <uid> had finished in … restore it at parallelism <p>, …".
pub fn demanded_parallelism(error: &str) -> Option<(String, u32)> {
    let uid = error.split("operator ").nth(1)?.split(' ').next()?;
    let p = error
        .split("restore it at parallelism ")
        .nth(1)?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    Some((uid.to_string(), p))
}

/// The word count's keyed operator.
pub type Count = cairn_runtime::functions::Count<String, String>;

/// Fails whenever the words it has seen (over every run, shared counter) reach one of
/// `at` — several injected failures.
#[derive(Clone, Debug)]
pub struct FailAt {
    pub seen: Arc<AtomicU64>,
    pub at: Vec<u64>,
}

impl FailAt {
    /// Fails at these word counts (counted over every run of the job, replays included).
    pub fn at(failures: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            at: failures,
        }
    }
}

impl Checkpointed for FailAt {}

impl ProcessFunction<String, String> for FailAt {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.at.contains(&n) {
            return Err(RuntimeError::user(
                "fail",
                format!("injected failure at word {n}"),
            ));
        }
        out.collect(w)
    }
}

pub fn format_line((w, n): &(String, u64), out: &mut Vec<u8>) {
    out.extend_from_slice(w.as_bytes());
    out.push(b'\t');
    out.extend_from_slice(n.to_string().as_bytes());
}

/// The word count's keyed operator kept in every state kind at once, each checked against
/// the others on every record: a value (the count), a reducing sum of ones, an aggregate
/// counting its inputs, a map from `n % 4` to the last `n` with that remainder, and a list
/// of every eighth count. A record whose states disagree fails the operator, naming them.
#[derive(Clone, Debug, Default)]
pub struct AllKindsCount;

/// Counts its inputs.
struct Counting;

impl AggregateFunction<u64, u64, u64> for Counting {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, input: u64) {
        *acc += input;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// The states of [`AllKindsCount`].
pub struct AllKindsStates {
    count: ValueStateId<u64, ()>,
    sum: ReducingStateId<u64, ()>,
    counted: AggregatingStateId<u64, u64, u64, ()>,
    last_by_rest: MapStateId<u64, u64, ()>,
    eighths: ListStateId<u64, ()>,
}

impl Checkpointed for AllKindsCount {}

impl KeyedProcessFunction for AllKindsCount {
    type Key = String;
    type In = String;
    type Out = (String, u64);
    type State = AllKindsStates;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<AllKindsStates> {
        Ok(AllKindsStates {
            count: b.register_value(&ValueStateDescriptor::new("count"))?,
            sum: b.register_reducing(&ReducingStateDescriptor::new("sum", |a: u64, c| a + c))?,
            counted: b
                .register_aggregating(&AggregatingStateDescriptor::new("counted", Counting))?,
            last_by_rest: b.register_map(&MapStateDescriptor::new("last-by-rest"))?,
            eighths: b.register_list(&ListStateDescriptor::new("eighths"))?,
        })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &AllKindsStates,
        word: &String,
        _record: String,
        b: &mut B,
        _timers: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let n = b.value_get(s.count, &())?.unwrap_or(0) + 1;
        b.value_update(s.count, &(), n)?;
        b.reducing_add(s.sum, &(), 1)?;
        b.aggregating_add(s.counted, &(), 1)?;
        let previous = b.map_get(s.last_by_rest, &(), &((n - 1) % 4))?;
        b.map_put(s.last_by_rest, &(), n % 4, n)?;
        let sum = b.reducing_get(s.sum, &())?;
        let counted = b.aggregating_get(s.counted, &())?;
        let mut agree = sum == Some(n) && counted == Some(n);
        agree &= previous == (n > 1).then_some(n - 1);
        let mut eighths = None;
        if n % 8 == 0 {
            b.list_add(s.eighths, &(), n)?;
            let list = b.list_get(s.eighths, &())?;
            agree &= list == (1..=n / 8).map(|i| i * 8).collect::<Vec<_>>();
            eighths = Some(list.len());
        }
        if !agree {
            return Err(RuntimeError::user(
                "count",
                format!(
                    "state kinds disagree for {word:?}: value {n}, reducing {sum:?}, \
                     aggregating {counted:?}, map[{}] {previous:?}, list of {eighths:?} eighths",
                    (n - 1) % 4
                ),
            ));
        }
        out.collect((word.clone(), n))
    }
}

/// source → tokenize → [fail] → key_by → count → sink.
pub fn wordcount(
    input: &Path,
    output: &Path,
    fail: Option<FailAt>,
    count_parallelism: Option<u32>,
) -> JobGraph {
    wordcount_with(input, output, fail, count_parallelism, false)
}

/// [`wordcount`], counting with [`AllKindsCount`] when `all_kinds`.
pub fn wordcount_with(
    input: &Path,
    output: &Path,
    fail: Option<FailAt>,
    count_parallelism: Option<u32>,
    all_kinds: bool,
) -> JobGraph {
    let words = source("source", FileSource::new(input)).flat_map("tokenize", |line: String| {
        line.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    });
    let words = match fail {
        Some(f) => words.process("fail", f),
        None => words.process("fail", FailAt::at(Vec::new())),
    };
    let keyed = words.key_by(|w: &String| w.clone());
    let counted = if all_kinds {
        keyed.process("count", AllKindsCount)
    } else {
        keyed.process("count", Count::new())
    };
    let counted = match count_parallelism {
        Some(p) => counted.parallelism(p),
        None => counted,
    };
    counted.sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// Cancels the job once its sources have read `lines` more lines (or after 10 s: a job that
/// failed to start reads nothing) and waits for it.
pub fn cancel_after(
    handle: cairn_runtime::JobHandle,
    lines: u64,
) -> cairn_runtime::Result<cairn_runtime::JobResult> {
    let read = handle.records_read();
    let started = std::time::Instant::now();
    while handle.records_read() < read + lines && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.cancel();
    handle.wait()
}

/// [`cancel_after`], once the job has also completed `n` checkpoints of its own and
/// `checkpoints` (a local checkpoint directory) holds one (a loaded machine may read the
/// lines before any completes), or after 20 s.
#[allow(dead_code)]
pub fn cancel_after_checkpoints(
    handle: cairn_runtime::JobHandle,
    lines: u64,
    checkpoints: &Path,
    n: u64,
) -> cairn_runtime::Result<cairn_runtime::JobResult> {
    let read = handle.records_read() + lines;
    let completed = || {
        std::fs::read_dir(checkpoints).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("chk-"))
                .filter(|e| e.path().join("_metadata").is_file())
                .count()
        })
    };
    let started = std::time::Instant::now();
    while (handle.records_read() < read || handle.checkpoints_completed() < n || completed() < 1)
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    handle.cancel();
    handle.wait()
}

/// Waits until `output` (a two-phase file sink's directory) holds committed output, for
/// up to 20 s.
#[allow(dead_code)]
pub fn wait_for_commit(output: &Path) {
    let started = std::time::Instant::now();
    while read_output(output).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nothing was committed in 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Events of [`write_late_events`].
pub const LATE_EVENTS: u64 = 6_000;
/// How far behind its neighbours an event written late is, in milliseconds.
pub const BEHIND: u64 = 3_000;

/// Is event `n` of [`write_late_events`] one written far behind?
#[allow(dead_code)]
pub fn is_late_event(n: u64) -> bool {
    n % 40 == 39 && n >= BEHIND
}

/// Writes [`LATE_EVENTS`] lines `key timestamp` into `dir/events.txt`: event `n` has key
/// `n % 5` and time `n` ms, except every 40th (from [`BEHIND`] on), which has key
/// `100 + n % 5` and time `n - BEHIND`: its windows closed long before. `(key, time)`
/// names each event.
#[allow(dead_code)]
pub fn write_late_events(dir: &Path) -> PathBuf {
    let text: String = (0..LATE_EVENTS)
        .map(|n| {
            if is_late_event(n) {
                format!("{} {}\n", 100 + n % 5, n - BEHIND)
            } else {
                format!("{} {n}\n", n % 5)
            }
        })
        .collect();
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    path
}

/// A job config checkpointing every `interval_ms` into `dir`.
pub fn config(dir: &Path, interval_ms: u64) -> JobConfig {
    JobConfig {
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(interval_ms)),
            num_retained: 2,
            ..CheckpointConfig::default()
        },
        checkpoint_dir: dir.join("checkpoints").display().to_string(),
        savepoint_dir: Some(dir.join("savepoints").display().to_string()),
        batch_size: 64,
        channel_capacity: 8,
        ..JobConfig::default()
    }
}

/// The configuration of the event-time tests' runs through failures: checkpoints every
/// 40 ms in `mode` (`unaligned` or not), the source throttled to 6,000 lines per second,
/// watermarks every 10 ms, up to five restarts.
pub fn event_time_config(
    dir: &Path,
    backend: cairn_runtime::StateBackendConfig,
    mode: cairn_runtime::SnapshotMode,
    unaligned: bool,
    parallelism: u32,
) -> JobConfig {
    let mut cfg = config(dir, 40);
    cfg.parallelism = parallelism;
    cfg.backend = backend;
    cfg.checkpoint = CheckpointConfig {
        unaligned,
        snapshot_mode: mode,
        ..cfg.checkpoint
    };
    cfg.records_per_second = Some(6_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(5, Duration::from_millis(10));
    cfg
}

/// Labels a window's count with its key and end, `key * 1_000_000 + end`, for
/// [`count_sink`] (use as `FnProcess(common::label_window)`).
#[allow(dead_code)]
pub fn label_window(
    (key, window, count): (u64, cairn_runtime::TimeWindow, u64),
    out: &mut Collector<'_, (u64, u64)>,
) -> cairn_runtime::Result<()> {
    out.collect((key * 1_000_000 + window.end, count))
}

/// The two-phase file sink of `(key, count)` records, one `key\tcount` line each.
pub fn count_sink(output: &Path) -> TwoPhaseFileSink<(u64, u64)> {
    TwoPhaseFileSink::new(output, |(k, n): &(u64, u64), o: &mut Vec<u8>| {
        o.extend_from_slice(format!("{k}\t{n}").as_bytes())
    })
}

type InitHook = Arc<dyn Fn(&InitContext<'_>) -> bool + Send + Sync>;
type EndHook = Arc<dyn Fn() + Send + Sync>;

/// The generator source with hooks that make its input end early or act when it ends.
#[derive(Clone)]
pub struct HookedGenerator {
    inner: GeneratorSource,
    /// At initialization; `true`: the input ends at once.
    on_init: InitHook,
    /// The input ends at the first snapshot (right after the first barrier).
    end_at_snapshot: bool,
    /// When the generator itself reports the end of its input.
    on_end: EndHook,
    ended: bool,
}

impl HookedGenerator {
    pub fn new(inner: GeneratorSource) -> Self {
        Self {
            inner,
            on_init: Arc::new(|_| false),
            end_at_snapshot: false,
            on_end: Arc::new(|| {}),
            ended: false,
        }
    }

    pub fn on_init(mut self, f: impl Fn(&InitContext<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.on_init = Arc::new(f);
        self
    }

    pub fn end_at_first_snapshot(mut self) -> Self {
        self.end_at_snapshot = true;
        self
    }

    pub fn on_end(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_end = Arc::new(f);
        self
    }
}

impl Checkpointed for HookedGenerator {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.ended = (self.on_init)(ctx);
        self.inner.initialize_state(ctx)
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        self.ended |= self.end_at_snapshot;
        self.inner.snapshot_state(ctx)
    }
}

impl Source for HookedGenerator {
    type Out = u64;
    fn poll(
        &mut self,
        out: &mut Collector<'_, u64>,
        max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        if self.ended {
            return Ok(SourceStatus::End);
        }
        let status = self.inner.poll(out, max)?;
        if status == SourceStatus::End {
            (self.on_end)();
        }
        Ok(status)
    }
}

/// Counts `(key, timestamp)` events (the window tests' aggregate).
#[derive(Clone, Debug)]
pub struct CountEvents;

impl AggregateFunction<(u64, u64), u64, u64> for CountEvents {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _event: (u64, u64)) {
        *acc += 1;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

impl cairn_core::MergingAggregateFunction<(u64, u64), u64, u64> for CountEvents {
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
}

/// Parses `key timestamp` lines, failing when the lines it has parsed (over every run,
/// replays included) reach one of `fail_at`.
#[derive(Clone, Debug)]
pub struct ParseEvents {
    seen: Arc<AtomicU64>,
    fail_at: Vec<u64>,
}

impl ParseEvents {
    /// Fails when the lines parsed reach each of `fail_at`.
    pub fn new(fail_at: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            fail_at,
        }
    }
}

impl Checkpointed for ParseEvents {}

impl ProcessFunction<String, (u64, u64)> for ParseEvents {
    fn process(
        &mut self,
        line: String,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at.contains(&n) {
            return Err(RuntimeError::user(
                "parse",
                format!("injected failure at line {n}"),
            ));
        }
        let mut fields = line.split(' ').map(|f| f.parse::<u64>());
        match (fields.next(), fields.next()) {
            (Some(Ok(key)), Some(Ok(timestamp))) => out.collect((key, timestamp)),
            _ => Err(RuntimeError::user("parse", format!("bad line {line:?}"))),
        }
    }
}

/// A sink that collects into a shared list.
#[derive(Clone, Debug)]
pub struct Collect<T>(pub Arc<std::sync::Mutex<Vec<T>>>);

impl<T> Checkpointed for Collect<T> {}

impl<T: Clone + Send + 'static> cairn_runtime::Sink<T> for Collect<T> {
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

/// A run through injected failures: checkpoints every 20 ms into `dir`, under `backend` at
/// `parallelism`, unaligned or not; up to 10 restarts 10 ms apart; the sources throttled
/// to `records_per_second` lines in all.
pub fn failure_config(
    dir: &Path,
    backend: cairn_runtime::StateBackendConfig,
    parallelism: u32,
    unaligned: bool,
    records_per_second: u64,
) -> JobConfig {
    let mut cfg = config(dir, 20);
    cfg.backend = backend;
    cfg.parallelism = parallelism;
    cfg.checkpoint.unaligned = unaligned;
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    cfg.records_per_second = Some(records_per_second);
    cfg
}

/// Writes 3,000 events `key time` into `dir/name`: event `n` has key `n % keys` and time
/// `2n - lag` ms (at least 0), so its event time lags `lag` ms behind that of an input with
/// no lag as both are read.
pub fn write_lagging_events(dir: &Path, name: &str, keys: u64, lag: u64) -> PathBuf {
    let text: String = (0..3000u64)
        .map(|n| format!("{} {}\n", n % keys, (n * 2).saturating_sub(lag)))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write events");
    path
}

/// How many events of two inputs of [`write_lagging_events`] (lags 0 and 2,000 ms) fall in
/// each bucket (`bucket_of` their time) of each key, as `key * 1_000_000 + bucket` → count.
pub fn lagging_counts(keys: u64, bucket_of: impl Fn(u64) -> u64) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for lag in [0, 2000] {
        for n in 0..3000u64 {
            let bucket = bucket_of((n * 2).saturating_sub(lag));
            *counts
                .entry(((n % keys) * 1_000_000 + bucket).to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// Tags each record with the index of the subtask that runs it.
pub struct Here<T> {
    index: u32,
    _t: std::marker::PhantomData<fn(T)>,
}

impl<T> Here<T> {
    pub fn new() -> Self {
        Self {
            index: u32::MAX,
            _t: std::marker::PhantomData,
        }
    }
}

impl<T> Default for Here<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for Here<T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<T> Checkpointed for Here<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.index = ctx.subtask.index;
        Ok(())
    }
}

impl<T: cairn_runtime::Data> ProcessFunction<T, (u32, T)> for Here<T> {
    fn process(&mut self, x: T, out: &mut Collector<'_, (u32, T)>) -> cairn_runtime::Result<()> {
        out.collect((self.index, x))
    }
}

/// What [`Stamp`] emits (a record and its timestamp) with the sink's context of it.
pub type Written<T> = ((T, Option<u64>), cairn_runtime::SinkContext);

/// Collects what [`Stamp`] emits with the sink's context of each.
#[derive(Clone, Debug)]
pub struct CollectWithContext<T>(pub Arc<std::sync::Mutex<Vec<Written<T>>>>);

impl<T> Checkpointed for CollectWithContext<T> {}

impl<T: Clone + Send + 'static> cairn_runtime::Sink<(T, Option<u64>)> for CollectWithContext<T> {
    fn write(&mut self, record: (T, Option<u64>)) -> cairn_runtime::Result<()> {
        self.write_with_context(record, &cairn_runtime::SinkContext::default())
    }

    fn write_with_context(
        &mut self,
        record: (T, Option<u64>),
        context: &cairn_runtime::SinkContext,
    ) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push((record, *context));
        Ok(())
    }
}

/// Pairs each record with its timestamp.
#[derive(Clone, Debug)]
pub struct Stamp;

impl Checkpointed for Stamp {}

impl<T: Clone + Send + 'static> ProcessFunction<T, (T, Option<u64>)> for Stamp {
    fn process(
        &mut self,
        input: T,
        out: &mut Collector<'_, (T, Option<u64>)>,
    ) -> cairn_runtime::Result<()> {
        let timestamp = out.timestamp();
        out.collect((input, timestamp))
    }
}
