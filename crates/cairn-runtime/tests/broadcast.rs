//! The broadcast state pattern (Flink's `KeyedBroadcastProcessFunction` and
//! `BroadcastProcessFunction`): a stream of rules goes to every subtask of an operator that
//! also reads a stream of words. Each subtask emits the size of its broadcast state after
//! every rule (`rules/<subtask>`: 1..R exactly once when every rule reached it once and its
//! state survived every restore), and the keyed part counts words as the word count does.
//! Exactly once through failures (aligned, unaligned, at-least-once; both backends),
//! savepoints restored at another parallelism and backend (new subtasks take an old
//! subtask's copy), the refusal to rescale in-flight broadcast records, and misuse.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, BroadcastProcessFunction, BroadcastState, BroadcastStateDescriptor, Checkpointed,
    CheckpointingMode, Collector, InitContext, Job, JobGraph, KeyedBroadcastProcessFunction,
    KeyedStates, RestoreFrom, RuntimeError, Source, SourceStatus, StateBackendConfig, Stream,
    TimerService,
};
use common::unaligned::{run_until_holding, unaligned_retained_config};
use common::*;

/// Rules `r<i> <i>` for `i` in 0..`n`, into `dir/rules.txt`.
fn write_rules(dir: &Path, n: u64) -> PathBuf {
    let text: String = (0..n).map(|i| format!("r{i} {i}\n")).collect();
    let path = dir.join("rules.txt");
    std::fs::write(&path, text).expect("write rules");
    path
}

fn weights() -> BroadcastStateDescriptor<String, u64> {
    BroadcastStateDescriptor::new("weights")
}

/// Words of `source-words` and rules of `source-rules`.
fn inputs(words: &Path, rules: &Path) -> (Stream<String>, Stream<(String, u64)>) {
    let words =
        source("source-words", FileSource::new(words)).flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        });
    let rules = source("source-rules", FileSource::new(rules)).map("parse", |line: String| {
        let (name, weight) = line.split_once(' ').unwrap_or((line.as_str(), "0"));
        (name.to_string(), weight.parse().unwrap_or(0))
    });
    (words, rules)
}

/// Counts words by key and keeps the rules in broadcast state; fails when the records it
/// has seen (both inputs, every subtask and run) reach one of `fail_at`.
#[derive(Clone, Debug)]
struct Rules {
    seen: Arc<AtomicU64>,
    fail_at: Vec<u64>,
    delay: Duration,
    subtask: u32,
}

impl Rules {
    fn new(fail_at: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            fail_at,
            delay: Duration::ZERO,
            subtask: 0,
        }
    }

    fn step(&self) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at.contains(&n) {
            return Err(RuntimeError::user(
                "rules",
                format!("injected failure at {n}"),
            ));
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        Ok(())
    }

    /// Adds `rule` to the broadcast state and emits the state's size.
    fn add(
        &self,
        (name, weight): (String, u64),
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.step()?;
        let map = broadcast.get_mut(&weights())?;
        map.insert(name, weight);
        let size = map.len() as u64;
        out.collect((format!("rules/{}", self.subtask), size))
    }
}

impl Checkpointed for Rules {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.subtask = ctx.subtask.index;
        Ok(())
    }
}

impl KeyedBroadcastProcessFunction for Rules {
    type Key = String;
    type In = String;
    type Broadcast = (String, u64);
    type Out = (String, u64);
    type State = ValueStateId<u64, ()>;

    fn open<S: KeyedStateBackend>(
        &mut self,
        backend: &mut S,
        broadcast: &mut BroadcastState,
    ) -> cairn_runtime::Result<Self::State> {
        broadcast.register(&weights())?;
        Ok(backend.register_value(&ValueStateDescriptor::new("count"))?)
    }

    fn process<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &String,
        _word: String,
        broadcast: &BroadcastState,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.step()?;
        // Read-only here; every rule it holds is one of the file's.
        let rules = broadcast.get(&weights())?;
        assert!(
            rules.iter().all(|(r, w)| *r == format!("r{w}")),
            "{rules:?}"
        );
        let n = backend.value_get(*state, &())?.unwrap_or(0) + 1;
        backend.value_update(*state, &(), n)?;
        out.collect((key.clone(), n))
    }

    fn process_broadcast<S: KeyedStateBackend>(
        &mut self,
        _state: &Self::State,
        rule: (String, u64),
        broadcast: &mut BroadcastState,
        _keyed: &mut KeyedStates<'_, S, String>,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.add(rule, broadcast, out)
    }
}

/// words → key_by → connect(rules.broadcast()) → rules → sink.
fn graph(words: &Path, rules: &Path, output: &Path, f: Rules) -> JobGraph {
    let (words, rules) = inputs(words, rules);
    words
        .key_by(|w: &String| w.clone())
        .connect(rules.broadcast())
        .process("rules", f)
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// The words' counts, and `rules/<i>` → `rules` for each of `parallelism` subtasks.
fn expected(words: &BTreeMap<String, u64>, rules: u64, parallelism: u32) -> BTreeMap<String, u64> {
    let mut want = words.clone();
    for i in 0..parallelism {
        want.insert(format!("rules/{i}"), rules);
    }
    want
}

struct Case {
    backend: StateBackendConfig,
    parallelism: u32,
    unaligned: bool,
    mode: CheckpointingMode,
    failures: Vec<u64>,
}

fn run_case(case: Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words, counts) = write_input(dir.path(), 1500, 150, 7);
    let rules = write_rules(dir.path(), 600);
    let output = dir.path().join("out");
    let mut cfg = failure_config(
        dir.path(),
        case.backend,
        case.parallelism,
        case.unaligned,
        10_000,
    );
    cfg.checkpoint.mode = case.mode;
    let result = Job::new(
        graph(&words, &rules, &output, Rules::new(case.failures.clone())),
        cfg,
    )
    .run()
    .expect("job");
    assert_eq!(result.restarts as usize, case.failures.len(), "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    let want = expected(&counts, 600, case.parallelism);
    let out = read_output(&output);
    match case.mode {
        CheckpointingMode::ExactlyOnce => check_exactly_once(&want, &out),
        CheckpointingMode::AtLeastOnce => check_at_least_once(&want, &out),
    }
}

#[test]
fn hashmap_aligned_p1_broadcast_state_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 1,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![1500, 4000],
    });
}

#[test]
fn hashmap_unaligned_p3_broadcast_state_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![2000, 6000],
    });
}

#[test]
fn rocksdb_aligned_p3_broadcast_state_through_a_failure() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![3000],
    });
}

#[test]
fn rocksdb_unaligned_p2_broadcast_state_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 2,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![1000, 5000],
    });
}

#[test]
fn at_least_once_broadcast_state_never_loses() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 2,
        unaligned: false,
        mode: CheckpointingMode::AtLeastOnce,
        failures: vec![2500],
    });
}

/// Stop-with-savepoint at parallelism 2 under the hashmap backend while rules still come;
/// restored at parallelism 3 under RocksDB, subtasks 0 and 1 go on from their own copies
/// and the new subtask 2 from subtask 0's: its sizes go on from the size at the savepoint.
#[test]
fn a_savepoint_restores_broadcast_state_at_another_parallelism_and_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words, counts) = write_input(dir.path(), 3000, 150, 9);
    let rules = write_rules(dir.path(), 3000);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    let handle = Job::new(
        graph(&words, &rules, &output, Rules::new(Vec::new())),
        cfg.clone(),
    )
    .start()
    .expect("start");
    while handle.records_read() < 1500 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    let at_savepoint = read_output(&output)
        .get("rules/0")
        .and_then(|sizes| sizes.iter().max().copied())
        .expect("rules before the savepoint");
    assert!(at_savepoint < 3000, "rules still to come: {first:?}");
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(graph(&words, &rules, &output, Rules::new(Vec::new())), cfg)
        .run()
        .expect("restored run");
    assert_eq!(first.records + second.records, 6000, "{first:?} {second:?}");
    let mut out = read_output(&output);
    let mut new_subtask = out.remove("rules/2").expect("the new subtask's sizes");
    new_subtask.sort_unstable();
    assert_eq!(
        new_subtask,
        (at_savepoint + 1..=3000).collect::<Vec<_>>(),
        "the new subtask goes on from subtask 0's copy"
    );
    check_exactly_once(&expected(&counts, 3000, 2), &out);
}

/// In-flight broadcast records of an unaligned checkpoint: refused at another
/// parallelism, naming the operator; replayed exactly once at the old one.
#[test]
fn in_flight_broadcast_records_restore_at_the_old_parallelism_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words, counts) = write_input(dir.path(), 1500, 150, 5);
    let rules = write_rules(dir.path(), 1500);
    let output = dir.path().join("out");
    let mut cfg = unaligned_retained_config(dir.path(), 2);
    let mut slow = Rules::new(Vec::new());
    slow.delay = Duration::from_micros(300);
    let first = run_until_holding(graph(&words, &rules, &output, slow), &cfg, "rules", 20);
    cfg.restore = Some(RestoreFrom::Latest);
    let mut rescaled = cfg.clone();
    rescaled.parallelism = 3;
    match Job::new(
        graph(&words, &rules, &output, Rules::new(Vec::new())),
        rescaled,
    )
    .run()
    {
        Err(RuntimeError::Restore { reason }) => assert!(
            reason.contains("operator rules reads a broadcast stream and holds in-flight records")
                && reason.contains("restore it at parallelism 2"),
            "{reason}"
        ),
        other => panic!("a rescaled restore of in-flight broadcast records: {other:?}"),
    }
    let second = Job::new(graph(&words, &rules, &output, Rules::new(Vec::new())), cfg)
        .run()
        .expect("restored run");
    assert!(second.restored_from.is_some(), "{first:?} {second:?}");
    check_exactly_once(&expected(&counts, 1500, 2), &read_output(&output));
}

/// The non-keyed form: words are dealt round-robin and passed on (then counted by key),
/// rules reach every subtask.
#[derive(Clone, Debug)]
struct PassWords(Rules);

impl Checkpointed for PassWords {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.0.initialize_state(ctx)
    }
}

impl BroadcastProcessFunction<String, (String, u64), (String, u64)> for PassWords {
    fn open(&mut self, broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        broadcast.register(&weights())
    }

    fn process(
        &mut self,
        word: String,
        broadcast: &BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.0.step()?;
        let known = broadcast.get(&weights())?.len() as u64;
        out.collect((word, known))
    }

    fn process_broadcast(
        &mut self,
        rule: (String, u64),
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.0.add(rule, broadcast, out)
    }
}

#[test]
fn a_non_keyed_broadcast_function_through_failures() {
    for (backend, unaligned) in [
        (StateBackendConfig::HashMap, false),
        (StateBackendConfig::rocksdb(), true),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (words, counts) = write_input(dir.path(), 1200, 100, 3);
        let rules = write_rules(dir.path(), 400);
        let output = dir.path().join("out");
        let cfg = failure_config(dir.path(), backend, 2, unaligned, 10_000);
        let (words_stream, rules_stream) = inputs(&words, &rules);
        let passed = words_stream
            .connect_broadcast(rules_stream.broadcast())
            .parallelism(3)
            .process("rules", PassWords(Rules::new(vec![700, 2500])));
        let graph = passed
            .key_by(|(w, _): &(String, u64)| w.clone())
            .process("count", CountNames::new())
            .sink("sink", TwoPhaseFileSink::new(&output, format_line));
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 2, "{result:?}");
        check_exactly_once(&expected(&counts, 400, 3), &read_output(&output));
    }
}

/// Counts `(name, _)` records by name, except `rules/<i>` sizes, passed on as they are.
type CountNames = cairn_runtime::functions::Count<String, (String, u64)>;

/// A broadcast state used without being registered fails the job, naming the operator
/// and the state.
#[derive(Clone, Debug)]
struct Unregistered;

impl Checkpointed for Unregistered {}

impl BroadcastProcessFunction<String, (String, u64), (String, u64)> for Unregistered {
    fn open(&mut self, _broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        Ok(())
    }
    fn process(
        &mut self,
        _: String,
        _: &BroadcastState,
        _: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        Ok(())
    }
    fn process_broadcast(
        &mut self,
        rule: (String, u64),
        broadcast: &mut BroadcastState,
        _: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        broadcast.get_mut(&weights())?.insert(rule.0, rule.1);
        Ok(())
    }
}

#[test]
fn an_unregistered_broadcast_state_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words, _) = write_input(dir.path(), 10, 10, 3);
    let rules = write_rules(dir.path(), 10);
    let mut cfg = config(dir.path(), 50);
    cfg.restart.max_restarts = 0;
    let (words_stream, rules_stream) = inputs(&words, &rules);
    let graph = words_stream
        .connect_broadcast(rules_stream.broadcast())
        .process("rules", Unregistered)
        .sink(
            "sink",
            TwoPhaseFileSink::new(dir.path().join("out"), format_line),
        );
    let error = Job::new(graph, cfg).run().expect_err("fails").to_string();
    assert!(
        error.contains("rules") && error.contains("broadcast state weights is not registered"),
        "{error}"
    );
}

/// Emits its rules once `open` is set (after every word was counted), then ends.
#[derive(Clone, Debug)]
struct Gate {
    open: Arc<AtomicBool>,
    rules: Vec<String>,
}

impl Checkpointed for Gate {}

impl Source for Gate {
    type Out = String;
    fn poll(
        &mut self,
        out: &mut Collector<'_, String>,
        _max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        if !self.open.load(Ordering::SeqCst) {
            return Ok(SourceStatus::Idle);
        }
        if self.rules.is_empty() {
            return Ok(SourceStatus::End);
        }
        out.collect(self.rules.remove(0))?;
        Ok(SourceStatus::More)
    }
}

/// Counts words; on the broadcast rules, through every key's state: `report` emits each
/// key's count (`final/<word>/<count>`), `clear` clears them, `recount` emits how many
/// keys still have one (`after-clear/<subtask>/<keys>`).
#[derive(Clone, Debug)]
struct Reporter {
    counted: Arc<AtomicU64>,
    words: u64,
    open: Arc<AtomicBool>,
    subtask: u32,
}

impl Checkpointed for Reporter {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.subtask = ctx.subtask.index;
        Ok(())
    }
}

impl KeyedBroadcastProcessFunction for Reporter {
    type Key = String;
    type In = String;
    type Broadcast = String;
    type Out = (String, u64);
    type State = ValueStateId<u64, ()>;

    fn open<S: KeyedStateBackend>(
        &mut self,
        backend: &mut S,
        _broadcast: &mut BroadcastState,
    ) -> cairn_runtime::Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::new("count"))?)
    }

    fn process<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &String,
        _word: String,
        _broadcast: &BroadcastState,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let n = backend.value_get(*state, &())?.unwrap_or(0) + 1;
        backend.value_update(*state, &(), n)?;
        out.collect((key.clone(), n))?;
        if self.counted.fetch_add(1, Ordering::SeqCst) + 1 == self.words {
            self.open.store(true, Ordering::SeqCst);
        }
        Ok(())
    }

    fn process_broadcast<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        rule: String,
        _broadcast: &mut BroadcastState,
        keyed: &mut KeyedStates<'_, S, String>,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let state = *state;
        match rule.as_str() {
            "report" => keyed.apply_to_keyed_state(state.raw(), |word, backend| {
                let n = backend.value_get(state, &())?.unwrap_or(0);
                out.collect((format!("final/{word}/{n}"), 1))
            }),
            "clear" => keyed.apply_to_keyed_state(state.raw(), |_, backend| {
                Ok(backend.clear(state.raw(), &())?)
            }),
            _ => {
                let mut keys = 0;
                keyed.apply_to_keyed_state(state.raw(), |_, _| {
                    keys += 1;
                    Ok(())
                })?;
                out.collect((format!("after-clear/{}/{keys}", self.subtask), 1))
            }
        }
    }
}

/// Flink's `applyToKeyedState`: a broadcast record reaches every key's state on every
/// subtask, to read it (each word's final count, once) and to clear it (no key is left).
#[test]
fn a_broadcast_record_reaches_the_state_of_every_key() {
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (words, counts) = write_input(dir.path(), 800, 120, 13);
        let output = dir.path().join("out");
        let mut cfg = config(dir.path(), 20);
        cfg.backend = backend;
        cfg.parallelism = 2;
        let open = Arc::new(AtomicBool::new(false));
        let gate = Gate {
            open: open.clone(),
            rules: ["report", "clear", "recount"].map(String::from).to_vec(),
        };
        let reporter = Reporter {
            counted: Arc::new(AtomicU64::new(0)),
            words: counts.values().sum(),
            open,
            subtask: 0,
        };
        let (words_stream, _) = inputs(&words, &words);
        let graph = words_stream
            .key_by(|w: &String| w.clone())
            .connect(source("gate", gate).parallelism(1).broadcast())
            .process("rules", reporter)
            .sink("sink", TwoPhaseFileSink::new(&output, format_line));
        Job::new(graph, cfg).run().expect("job");
        let mut want = counts.clone();
        for (word, n) in &counts {
            want.insert(format!("final/{word}/{n}"), 1);
        }
        for i in 0..2 {
            want.insert(format!("after-clear/{i}/0"), 1);
        }
        check_exactly_once(&want, &read_output(&output));
    }
}

/// A subtask and the owner its restored copy of the broadcast state names.
type Opened = (u32, Option<u64>);

/// Writes, in its subtask's copy of the broadcast state, its own subtask index under
/// `owner` at the first rule (Flink forbids divergent copies, but nothing stops a function
/// from making them), and reports in `open` what its restored copy says.
#[derive(Clone, Debug)]
struct Owner {
    subtask: u32,
    opened: Arc<std::sync::Mutex<Vec<Opened>>>,
    rules: Arc<AtomicU64>,
}

impl Checkpointed for Owner {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.subtask = ctx.subtask.index;
        Ok(())
    }
}

impl BroadcastProcessFunction<u64, (String, u64), u64> for Owner {
    fn open(&mut self, broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        broadcast.register(&weights())?;
        let owner = broadcast.get(&weights())?.get("owner").copied();
        self.opened
            .lock()
            .expect("lock")
            .push((self.subtask, owner));
        Ok(())
    }

    fn process(
        &mut self,
        _: u64,
        _: &BroadcastState,
        _: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        Ok(())
    }

    fn process_broadcast(
        &mut self,
        _: (String, u64),
        broadcast: &mut BroadcastState,
        _: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        let subtask = u64::from(self.subtask);
        broadcast
            .get_mut(&weights())?
            .entry("owner".into())
            .or_insert(subtask);
        self.rules.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Each subtask's copy of the broadcast state is its own in a savepoint: restored at the
/// same parallelism, every subtask gets back its own copy; at a higher one, new subtask
/// `i` gets old subtask `i mod p`'s. (Deterministic: the copies differ by construction.)
#[test]
fn each_subtask_restores_its_own_copy_of_the_broadcast_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = write_rules(dir.path(), 3);
    let graph = |f: &Owner| {
        let words = source(
            "words",
            cairn_runtime::sources::GeneratorSource::new(10, 10, 1).idle_at_end(),
        );
        let rules =
            source("source-rules", FileSource::new(&rules)).map("parse", |line: String| (line, 0));
        words
            .connect_broadcast(rules.broadcast())
            .process("owner", f.clone())
            .sink("sink", cairn_runtime::sinks::DiscardSink)
    };
    let owner = || Owner {
        subtask: 0,
        opened: Arc::new(std::sync::Mutex::new(Vec::new())),
        rules: Arc::new(AtomicU64::new(0)),
    };
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 3;
    let first = owner();
    let handle = Job::new(graph(&first), cfg.clone()).start().expect("start");
    let started = std::time::Instant::now();
    while first.rules.load(Ordering::SeqCst) < 9 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "every subtask takes every rule"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first run");
    for (parallelism, expected) in [
        (3, vec![(0, Some(0)), (1, Some(1)), (2, Some(2))]),
        (
            4,
            vec![(0, Some(0)), (1, Some(1)), (2, Some(2)), (3, Some(0))],
        ),
    ] {
        let again = owner();
        let mut cfg = cfg.clone();
        cfg.parallelism = parallelism;
        cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
        let handle = Job::new(graph(&again), cfg).start().expect("restore");
        let started = std::time::Instant::now();
        while again.opened.lock().expect("lock").len() < parallelism as usize {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "every subtask opens"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        handle.cancel();
        let _ = handle.wait();
        let mut opened = again.opened.lock().expect("lock").clone();
        opened.sort_unstable();
        assert_eq!(opened, expected, "at parallelism {parallelism}");
    }
}
