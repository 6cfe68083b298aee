//! A hunt for bugs in the runtime's multi-input features: unions, connected streams and
//! broadcast state, in the corners the feature tests leave out. Drained stop-with-savepoint
//! of unioned sources (one already finished) restored swapped under the other backend and
//! parallelism; backpressure on one branch of a union with the aligned-checkpoint timeout,
//! its in-flight records replayed into the swapped union; changelog checkpoints of keyed
//! connections and broadcast state restored at another parallelism; side outputs of
//! co-process and broadcast functions (and side outputs unioned, connected and broadcast
//! straight back into their own dataflow); windows after a union or connection one of whose
//! inputs ends early; inputs of different parallelism; broadcast maps added, dropped and
//! retyped across savepoints; and the graphs these features refuse.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::{DiscardSink, TwoPhaseFileSink};
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, BroadcastProcessFunction, BroadcastState, BroadcastStateDescriptor, ChangelogOptions,
    CheckpointRetention, Checkpointed, CoProcessFunction, Collector, Data, InitContext, Job,
    JobConfig, JobGraph, KeyedBroadcastProcessFunction, KeyedCoProcessFunction, OutputTag,
    RestoreFrom, RuntimeError, SnapshotMode, StateBackendConfig, Stream, TimerService,
    TumblingEventTimeWindows, WatermarkStrategy,
};
use common::unaligned::{inflight_by_uid, run_until_inflight, slow, FailEvery, Gen};
use common::*;

// --- Inputs, expectations, sinks ---

/// A word-count input in `dir/<name>/input.txt`, and how often each word occurs.
fn input(
    dir: &Path,
    name: &str,
    lines: usize,
    vocabulary: usize,
    seed: u64,
) -> (PathBuf, BTreeMap<String, u64>) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("mkdir");
    write_input(&sub, lines, vocabulary, seed)
}

/// Rules `r<i> <i>` for `i` in `range`, into `dir/<name>.txt`.
fn write_rule_range(dir: &Path, name: &str, range: std::ops::Range<u64>) -> PathBuf {
    let text: String = range.map(|i| format!("r{i} {i}\n")).collect();
    let path = dir.join(format!("{name}.txt"));
    std::fs::write(&path, text).expect("write rules");
    path
}

fn add(mut a: BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for (w, n) in b {
        *a.entry(w.clone()).or_insert(0) += n;
    }
    a
}

/// The words of `counts` for which `keep` holds, optionally renamed `<word><suffix>`.
fn only(
    counts: &BTreeMap<String, u64>,
    keep: impl Fn(&str) -> bool,
    suffix: &str,
) -> BTreeMap<String, u64> {
    counts
        .iter()
        .filter(|(w, _)| keep(w))
        .map(|(w, n)| (format!("{w}{suffix}"), *n))
        .collect()
}

/// Words longer than this are "long" (side outputs).
const LONG: usize = 2;

fn is_long(w: &str) -> bool {
    w.len() > LONG
}

/// The words of file source `source-<name>`, split by `tokenize-<name>`.
fn words(name: &str, path: &Path) -> Stream<String> {
    source(&format!("source-{name}"), FileSource::new(path)).flat_map(
        &format!("tokenize-{name}"),
        |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        },
    )
}

/// Rules of file source `source-<name>`, parsed by `parse-<name>`.
fn rules_named(name: &str, path: &Path) -> Stream<(String, u64)> {
    source(&format!("source-{name}"), FileSource::new(path)).map(
        &format!("parse-{name}"),
        |line: String| {
            let (name, weight) = line.split_once(' ').unwrap_or((line.as_str(), "0"));
            (name.to_string(), weight.parse().unwrap_or(0))
        },
    )
}

fn sink(output: &Path) -> TwoPhaseFileSink<(String, u64)> {
    TwoPhaseFileSink::new(output, format_line)
}

/// Counts the stream's words by key (operator `uid`) into a two-phase file sink `<uid>-sink`.
fn count_into(s: Stream<String>, uid: &str, output: &Path) -> JobGraph {
    s.key_by(|w: &String| w.clone())
        .process(uid, Count::new())
        .sink(&format!("{uid}-sink"), sink(output))
}

/// Counts `(name, n)` records by name (`rules/<i>` sizes and the like pass as they are).
type CountNames = cairn_runtime::functions::Count<String, (String, u64)>;

/// Each word's counts are `1..=m` once each for some `m` up to its total: what a drained
/// part of the input committed.
fn check_prefix(expected: &BTreeMap<String, u64>, output: &BTreeMap<String, Vec<u64>>) {
    for (w, got) in output {
        let n = expected.get(w).copied().unwrap_or(0);
        let mut got = got.clone();
        got.sort_unstable();
        let want: Vec<u64> = (1..=got.len() as u64).collect();
        assert!(
            got == want && got.len() as u64 <= n,
            "word {w} (occurs {n} times): expected 1..=m once each, got {got:?}"
        );
    }
}

/// A job config: checkpoints every 20 ms, up to 10 restarts 10 ms apart, throttled.
fn hunt_config(dir: &Path, parallelism: u32, rate: u64) -> JobConfig {
    let mut cfg = config(dir, 20);
    cfg.parallelism = parallelism;
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    cfg.records_per_second = Some(rate);
    cfg
}

/// Collects into a shared list.
#[derive(Clone, Debug)]
struct Collect<T>(Arc<Mutex<Vec<T>>>);

impl<T> Checkpointed for Collect<T> {}

impl<T: Clone + Send + 'static> cairn_runtime::Sink<T> for Collect<T> {
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

/// Fails when the records counted (every subtask, every run) reach one of `at`.
#[derive(Clone, Debug, Default)]
struct Failer {
    seen: Arc<AtomicU64>,
    at: Arc<Vec<u64>>,
}

impl Failer {
    fn at(at: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            at: Arc::new(at),
        }
    }

    fn step(&self, uid: &str) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.at.contains(&n) {
            return Err(RuntimeError::user(uid, format!("injected failure at {n}")));
        }
        Ok(())
    }
}

// --- Functions of two inputs ---

/// Counts each word per input in keyed state (`<word>/a`, `<word>/b`); long words of the
/// second input also go to side output `long` when set.
#[derive(Clone, Debug)]
struct Pair {
    fail: Failer,
    long: Option<OutputTag<String>>,
}

struct PairStates {
    a: ValueStateId<u64, ()>,
    b: ValueStateId<u64, ()>,
}

impl Checkpointed for Pair {}

impl Pair {
    fn new(fail: Vec<u64>, long: Option<OutputTag<String>>) -> Self {
        Self {
            fail: Failer::at(fail),
            long,
        }
    }

    fn count<S: KeyedStateBackend>(
        &self,
        id: ValueStateId<u64, ()>,
        name: String,
        backend: &mut S,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.fail.step("pair")?;
        let n = backend.value_get(id, &())?.unwrap_or(0) + 1;
        backend.value_update(id, &(), n)?;
        out.collect((name, n))
    }
}

impl KeyedCoProcessFunction for Pair {
    type Key = String;
    type In1 = String;
    type In2 = String;
    type Out = (String, u64);
    type State = PairStates;

    fn open<S: KeyedStateBackend>(&mut self, b: &mut S) -> cairn_runtime::Result<PairStates> {
        Ok(PairStates {
            a: b.register_value(&ValueStateDescriptor::new("a"))?,
            b: b.register_value(&ValueStateDescriptor::new("b"))?,
        })
    }

    fn process1<S: KeyedStateBackend>(
        &mut self,
        s: &PairStates,
        key: &String,
        _w: String,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.count(s.a, format!("{key}/a"), backend, out)
    }

    fn process2<S: KeyedStateBackend>(
        &mut self,
        s: &PairStates,
        key: &String,
        w: String,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.count(s.b, format!("{key}/b"), backend, out)?;
        match &self.long {
            Some(tag) if is_long(&w) => out.output(tag, w),
            _ => Ok(()),
        }
    }
}

/// What [`Pair`] emits over whole inputs `a` and `b`.
fn pair_expected(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    add(only(a, |_| true, "/a"), &only(b, |_| true, "/b"))
}

/// Non-keyed: long words of the first input go to side output `long`, everything else on.
#[derive(Clone, Debug)]
struct Route {
    fail: Failer,
    long: OutputTag<String>,
}

impl Checkpointed for Route {}

impl CoProcessFunction<String, String, String> for Route {
    fn process1(
        &mut self,
        w: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        self.fail.step("route")?;
        if is_long(&w) {
            out.output(&self.long, w)
        } else {
            out.collect(w)
        }
    }
    fn process2(
        &mut self,
        w: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        self.fail.step("route")?;
        out.collect(w)
    }
}

/// A broadcast record: a rule `(name, weight)`, or a bare name (weight 0).
trait Rule: Data {
    fn rule(self) -> (String, u64);
}

impl Rule for (String, u64) {
    fn rule(self) -> (String, u64) {
        self
    }
}

impl Rule for String {
    fn rule(self) -> (String, u64) {
        (self, 0)
    }
}

/// What [`Rules`] found in each map it registered: `(subtask, map, size)`.
type Probe = Arc<Mutex<Vec<(u32, String, usize)>>>;

/// A broadcast function, keyed (counting words by key, `(word, n)`) or not (passing words
/// on as `(word, 1)`): registers broadcast maps `maps` (noting their restored sizes in
/// `probe`), puts every rule into the first and emits its size (`<map>/<subtask>`: 1..R
/// once each when every one of R distinct rules reached the subtask once and its copy
/// survived every restore), and sends each rule's name to side output `names` when set.
#[derive(Clone, Debug)]
struct Rules<B> {
    fail: Failer,
    subtask: u32,
    names: Option<OutputTag<String>>,
    maps: Vec<&'static str>,
    probe: Probe,
    _b: std::marker::PhantomData<fn(B)>,
}

impl<B: Rule> Rules<B> {
    fn new(fail: Vec<u64>, names: Option<OutputTag<String>>) -> Self {
        Self::maps(vec!["rules"], fail, names)
    }

    fn maps(maps: Vec<&'static str>, fail: Vec<u64>, names: Option<OutputTag<String>>) -> Self {
        Self {
            fail: Failer::at(fail),
            subtask: 0,
            names,
            maps,
            probe: Probe::default(),
            _b: std::marker::PhantomData,
        }
    }

    fn register(&self, broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        for name in &self.maps {
            let d = BroadcastStateDescriptor::<String, u64>::new(name);
            broadcast.register(&d)?;
            let size = broadcast.get(&d)?.len();
            let mut probe = self.probe.lock().expect("lock");
            probe.push((self.subtask, name.to_string(), size));
        }
        Ok(())
    }

    fn add(
        &self,
        rule: B,
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.fail.step("rules")?;
        let (name, weight) = rule.rule();
        let map = broadcast.get_mut(&BroadcastStateDescriptor::new(self.maps[0]))?;
        map.insert(name.clone(), weight);
        let size = map.len() as u64;
        out.collect((format!("{}/{}", self.maps[0], self.subtask), size))?;
        match &self.names {
            Some(tag) => out.output(tag, name),
            None => Ok(()),
        }
    }
}

impl<B> Checkpointed for Rules<B> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.subtask = ctx.subtask.index;
        Ok(())
    }
}

impl<B: Rule> KeyedBroadcastProcessFunction for Rules<B> {
    type Key = String;
    type In = String;
    type Broadcast = B;
    type Out = (String, u64);
    type State = ValueStateId<u64, ()>;

    fn open<S: KeyedStateBackend>(
        &mut self,
        backend: &mut S,
        broadcast: &mut BroadcastState,
    ) -> cairn_runtime::Result<Self::State> {
        self.register(broadcast)?;
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
        self.fail.step("rules")?;
        let n = backend.value_get(*state, &())?.unwrap_or(0) + 1;
        backend.value_update(*state, &(), n)?;
        out.collect((key.clone(), n))
    }

    fn process_broadcast<S: KeyedStateBackend>(
        &mut self,
        _state: &Self::State,
        rule: B,
        broadcast: &mut BroadcastState,
        _keyed: &mut cairn_runtime::KeyedStates<'_, S, String>,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.add(rule, broadcast, out)
    }
}

impl<B: Rule> BroadcastProcessFunction<String, B, (String, u64)> for Rules<B> {
    fn open(&mut self, broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        self.register(broadcast)
    }
    fn process(
        &mut self,
        word: String,
        _broadcast: &BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.fail.step("rules")?;
        out.collect((word, 1))
    }
    fn process_broadcast(
        &mut self,
        rule: B,
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.add(rule, broadcast, out)
    }
}

/// Rules of `(name, weight)` records.
type RuleCount = Rules<(String, u64)>;

/// The words' counts, and `rules/<i>` → `rules` for each of `parallelism` subtasks.
fn rules_expected(words: &BTreeMap<String, u64>, rules: u64, p: u32) -> BTreeMap<String, u64> {
    let mut want = words.clone();
    for i in 0..p {
        want.insert(format!("rules/{i}"), rules);
    }
    want
}

// --- 1. Drained stop-with-savepoint of unioned sources ---

/// Passes words on and emits `END` in `finish`.
#[derive(Clone, Debug)]
struct EndMarker;

impl Checkpointed for EndMarker {}

impl cairn_runtime::ProcessFunction<String, String> for EndMarker {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        out.collect(w)
    }
    fn finish(&mut self, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        out.collect("END".into())
    }
}

/// a (3000 lines) ∪ b (`lines_b` lines, then `b-end`) → key_by → count, at parallelism 2:
/// stopped with a savepoint (drained or not) once 800 lines are read, which commits a
/// prefix of every word's counts; restored into the swapped union (b ∪ a) at parallelism 3
/// under RocksDB with the union's stage at 1, it reads the rest of each input once (every
/// word exactly once); a restore from its final checkpoint reads and adds nothing. Returns
/// the committed counts of `END`.
fn stop_and_finish_swapped(lines_b: usize, drain: bool) -> Vec<u64> {
    stop_and_finish_swapped_with(lines_b, drain, false)
}

/// [`stop_and_finish_swapped`], with `b-end` behind a rebalance (a stage of its own, which
/// ends when b's input does) when `rebalanced`.
fn stop_and_finish_swapped_with(lines_b: usize, drain: bool, rebalanced: bool) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, counts_a) = input(dir.path(), "a", 3000, 200, 7);
    let (b, counts_b) = input(dir.path(), "b", lines_b, 300, 11);
    let expected = add(counts_a, &counts_b);
    let output = dir.path().join("out");
    let graph = |swapped: bool, union_p: u32| {
        let b_words = if rebalanced {
            words("b", &b).rebalance()
        } else {
            words("b", &b)
        };
        let (x, y) = (words("a", &a), b_words.process("b-end", EndMarker));
        let u = if swapped { y.union(x) } else { x.union(y) };
        count_into(u.parallelism(union_p), "count", &output)
    };
    let mut cfg = config(dir.path(), 30);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    let handle = Job::new(graph(false, 2), cfg.clone())
        .start()
        .expect("start");
    wait_for_commit(&output);
    while handle.records_read() < 800 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = if drain {
        handle.stop_with_savepoint_and_drain(None)
    } else {
        handle.stop_with_savepoint(None)
    }
    .expect("stop with savepoint");
    let first = handle.wait().expect("stopped run");
    let total = 3000 + lines_b as u64;
    assert!(first.records < total, "{first:?}");
    let without_end = |mut out: BTreeMap<String, Vec<u64>>| {
        let mut ends = out.remove("END").unwrap_or_default();
        ends.sort_unstable();
        (out, ends)
    };
    check_prefix(&expected, &without_end(read_output(&output)).0);

    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(graph(true, 1), cfg.clone())
        .run()
        .expect("restored run");
    assert_eq!(
        first.records + second.records,
        total,
        "{first:?} {second:?}"
    );
    let (out, ends) = without_end(read_output(&output));
    check_exactly_once(&expected, &out);

    cfg.restore = Some(RestoreFrom::Latest);
    let third = Job::new(graph(false, 3), cfg)
        .run()
        .expect("run from the final checkpoint");
    assert_eq!(third.records, 0, "{third:?}");
    assert_eq!(without_end(read_output(&output)), (out, ends.clone()));
    ends
}

/// A drain ends the input of both sources, or of the one still running when source b had
/// read all of its short input before; either restores swapped elsewhere exactly once. A
/// drained b runs `b-end`'s `finish` at the drain (2 subtasks) and again at its real end
/// (3 subtasks), as documented.
#[test]
fn drained_unions_restore_swapped_elsewhere_and_finish_once() {
    assert_eq!(stop_and_finish_swapped(2500, true), [1, 2, 3, 4, 5]);
    stop_and_finish_swapped(40, true);
}

/// A plain stop-with-savepoint after source b ended keeps b's stage finished: its
/// `finish` output (`END` per subtask) is not emitted again by the restored job.
#[test]
fn the_finish_of_an_ended_branch_runs_once_across_a_stop() {
    assert_eq!(stop_and_finish_swapped(40, false), [1, 2]);
}

/// The same with a drained stop: the drained savepoint marks b's stage finished, as b's
/// input had really ended (every checkpoint since did mark it), so the restored job does
/// not read b's end again nor run `b-end`'s `finish` a second time. (This found a bug:
/// drained savepoints marked nothing finished.)
#[test]
fn the_finish_of_an_ended_branch_runs_once_across_a_drain() {
    assert_eq!(stop_and_finish_swapped(40, true), [1, 2]);
}

/// The same with `b-end` in a stage of its own behind a rebalance: its input (source b in
/// every subtask) had ended by itself, so the drained savepoint marks it finished too.
#[test]
fn the_finish_of_an_ended_branch_behind_an_exchange_runs_once_across_a_drain() {
    assert_eq!(stop_and_finish_swapped_with(40, true, true), [1, 2]);
}

// --- 2. Backpressure on one branch of a union, aligned-checkpoint timeout, swapped restore ---

/// gen-a → rebalance → slow-a (sleeps `slow_a` per record) ∪ gen-b → key_by → count →
/// slow (sleeps `slow_count`) → fail → sink; swapped: gen-b ∪ slow-a.
fn slow_branch_union(
    (ga, gb): (Gen, Gen),
    output: &Path,
    swapped: bool,
    (slow_a, slow_count): (Duration, Duration),
    fail: FailEvery<(u64, u64)>,
) -> JobGraph {
    let a = slow(source("gen-a", ga.source()).rebalance(), "slow-a", slow_a);
    let b = source("gen-b", gb.source());
    let u = if swapped { b.union(a) } else { a.union(b) };
    let counted = u
        .key_by(|k: &u64| *k)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new());
    slow(counted, "slow", slow_count)
        .process("fail", fail)
        .sink("sink", count_sink(output))
}

/// Checkpoints start aligned and turn unaligned after 5 ms: with one branch of the union
/// slow, a checkpoint holds in-flight records on the union's head (the keyed count). It
/// restores into the swapped union at parallelism 3, which goes on through failures under
/// the same timeout, exactly once.
#[test]
fn aligned_timeout_with_one_slow_branch_restores_into_the_swapped_union() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gen = |total, keys, seed| Gen { total, keys, seed };
    let gens = (gen(5000, 40, 5), gen(7000, 60, 8));
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 20);
    cfg.parallelism = 2;
    cfg.checkpoint.unaligned = true;
    cfg.checkpoint.aligned_timeout = Duration::from_millis(5);
    cfg.checkpoint.num_retained = 1;
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    cfg.records_per_second = None;
    let delays = (Duration::from_micros(300), Duration::from_micros(150));
    let graph = slow_branch_union(gens, &output, false, delays, FailEvery::at(Vec::new()));
    let (first, manifest) = run_until_inflight(graph, &cfg, 30);
    let manifest = manifest.expect("a checkpoint that went unaligned, with in-flight records");
    let inflight = inflight_by_uid(&manifest);
    assert!(
        inflight.get("count").copied().unwrap_or(0) > 0,
        "in-flight records on the union's head: {inflight:?}"
    );
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    let delays = (Duration::from_micros(30), Duration::from_micros(20));
    let fail = FailEvery::at(vec![1500, 4000]);
    let second = Job::new(slow_branch_union(gens, &output, true, delays, fail), cfg)
        .run()
        .expect("restored run");
    assert!(second.restored_from.is_some(), "{first:?} {second:?}");
    assert_eq!(second.restarts, 2, "{second:?}");
    let expected = add(gens.0.expected(), &gens.1.expected());
    check_exactly_once(&expected, &read_output(&output));
}

// --- 3. Changelog checkpoints of a keyed connection and of broadcast state ---

/// Under the changelog (materializing often), a keyed connection (unaligned) and a keyed
/// broadcast connection (aligned) run through two failures at parallelism 2; cancelled
/// part way, the latest checkpoint restores at parallelism 3 under RocksDB: every count
/// exactly once, and the new broadcast subtask goes on from an old copy (its sizes end at
/// the number of rules).
#[test]
fn changelog_connect_and_broadcast_through_failures_then_rescaled() {
    for broadcast in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, counts_a) = input(dir.path(), "a", 2500, 150, 7);
        let (b, counts_b) = input(dir.path(), "b", 2000, 250, 11);
        let rule_file = write_rule_range(dir.path(), "rules", 0..3000);
        let output = dir.path().join("out");
        let mut cfg = hunt_config(dir.path(), 2, 3_000);
        cfg.checkpoint.snapshot_mode = SnapshotMode::Changelog;
        cfg.checkpoint.changelog = ChangelogOptions {
            materialization_interval: None,
            log_to_state_ratio: 0.5,
            min_log_bytes: 2000,
            segment_bytes: 1000,
            ..ChangelogOptions::default()
        };
        cfg.checkpoint.unaligned = !broadcast;
        cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
        let graph = |fail: Vec<u64>| {
            if broadcast {
                words("a", &a)
                    .key_by(|w: &String| w.clone())
                    .connect(rules_named("rules", &rule_file).broadcast())
                    .process("rules", RuleCount::new(fail, None))
                    .sink("sink", sink(&output))
            } else {
                words("a", &a)
                    .connect(words("b", &b))
                    .key_by(|w: &String| w.clone(), |w: &String| w.clone())
                    .process("pair", Pair::new(fail, None))
                    .sink("sink", sink(&output))
            }
        };
        let handle = Job::new(graph(vec![600, 1800]), cfg.clone())
            .start()
            .expect("start");
        let checkpoints = dir.path().join("checkpoints");
        let first = cancel_after_checkpoints(handle, 1200, &checkpoints, 3).expect("first run");
        assert_eq!(first.restarts, 2, "broadcast={broadcast}: {first:?}");
        assert!(first.cancelled, "cancelled part way: {first:?}");
        cfg.parallelism = 3;
        cfg.backend = StateBackendConfig::rocksdb();
        cfg.records_per_second = None;
        cfg.restore = Some(RestoreFrom::Latest);
        let second = Job::new(graph(Vec::new()), cfg)
            .run()
            .expect("restored run");
        assert!(second.restored_from.is_some(), "{second:?}");
        let mut out = read_output(&output);
        if broadcast {
            let mut new_subtask = out.remove("rules/2").expect("the new subtask's sizes");
            new_subtask.sort_unstable();
            let from = new_subtask[0];
            assert_eq!(
                new_subtask,
                (from..=3000).collect::<Vec<_>>(),
                "the new subtask goes on from an old subtask's copy"
            );
            check_exactly_once(&rules_expected(&counts_a, 3000, 2), &out);
        } else {
            check_exactly_once(&pair_expected(&counts_a, &counts_b), &out);
        }
    }
}

// --- 4. Side outputs of functions of two inputs ---

/// Side outputs of a keyed co-process function (the second input's long words, unioned
/// with a third source), of a non-keyed co-process function, and of a keyed and a
/// non-keyed broadcast function (from `process_broadcast`, which runs with no key), whose
/// rules come from a union of two sources (one of a single subtask) broadcast into three
/// subtasks, the keyed one's input a union too: every record once in the right output
/// through failures (each rule's name once per subtask of its operator).
#[test]
fn side_outputs_of_co_process_and_broadcast_functions() {
    let names = OutputTag::<String>::new("names");
    for case in [
        "keyed-co-process",
        "co-process",
        "keyed-broadcast",
        "broadcast",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, counts_a) = input(dir.path(), "a", 1000, 150, 7);
        let (b, counts_b) = input(dir.path(), "b", 800, 250, 11);
        let (main_out, side_out) = (dir.path().join("main"), dir.path().join("side"));
        let mut cfg = hunt_config(dir.path(), 2, 10_000);
        cfg.checkpoint.unaligned = case != "broadcast";
        let fail = vec![700, 2000];
        let (graph, want_main, want_side) = match case {
            "keyed-co-process" => {
                let (c, counts_c) = input(dir.path(), "c", 600, 80, 13);
                let joined = words("a", &a)
                    .connect(words("b", &b))
                    .key_by(|w: &String| w.clone(), |w: &String| w.clone())
                    .process("pair", Pair::new(fail, Some(names.clone())));
                let side = joined.side_output(&names).union(words("c", &c));
                let _side = count_into(side, "count-side", &side_out);
                let side = add(only(&counts_b, is_long, ""), &counts_c);
                let graph = joined.sink("sink", sink(&main_out));
                (graph, pair_expected(&counts_a, &counts_b), side)
            }
            "co-process" => {
                let routed = words("a", &a).connect(words("b", &b)).process(
                    "route",
                    Route {
                        fail: Failer::at(fail),
                        long: names.clone(),
                    },
                );
                let _side = count_into(routed.side_output(&names), "count-side", &side_out);
                let main = add(only(&counts_a, |w| !is_long(w), ""), &counts_b);
                (
                    count_into(routed, "count", &main_out),
                    main,
                    only(&counts_a, is_long, ""),
                )
            }
            _ => {
                // Rules from two sources, one of a single subtask, unioned and broadcast
                // into the operator at parallelism 3.
                let x = write_rule_range(dir.path(), "x", 0..150);
                let y = write_rule_range(dir.path(), "y", 150..300);
                let rules = rules_named("x", &x)
                    .parallelism(1)
                    .union(rules_named("y", &y))
                    .broadcast();
                let f = RuleCount::new(fail, Some(names.clone()));
                let (out, side) = if case == "keyed-broadcast" {
                    // The keyed input a union too.
                    let out = words("a", &a)
                        .union(words("b", &b))
                        .key_by(|w: &String| w.clone())
                        .connect(rules)
                        .parallelism(3)
                        .process("rules", f);
                    let side = out.side_output(&names);
                    (out, side)
                } else {
                    let passed = words("a", &a)
                        .connect_broadcast(rules)
                        .parallelism(3)
                        .process("rules", f);
                    let side = passed.side_output(&names);
                    let out = passed
                        .key_by(|(w, _): &(String, u64)| w.clone())
                        .process("count", CountNames::new());
                    (out, side)
                };
                let _side = count_into(side, "count-side", &side_out);
                let rule_names: BTreeMap<String, u64> =
                    (0..300).map(|i| (format!("r{i}"), 3)).collect();
                let main = if case == "keyed-broadcast" {
                    add(counts_a.clone(), &counts_b)
                } else {
                    counts_a.clone()
                };
                (
                    out.sink("sink", sink(&main_out)),
                    rules_expected(&main, 300, 3),
                    rule_names,
                )
            }
        };
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 2, "{case}: {result:?}");
        check_exactly_once(&want_main, &read_output(&main_out));
        check_exactly_once(&want_side, &read_output(&side_out));
    }
}

// --- 5. Side outputs that come straight back into their own dataflow ---

/// Splits lines `<id> <word>…` into words on the main output; long words go to side
/// output `long`, and each line's id to side output `ids` when set.
#[derive(Clone, Debug)]
struct SplitLines {
    long: OutputTag<String>,
    ids: Option<OutputTag<String>>,
}

impl Checkpointed for SplitLines {}

impl cairn_runtime::ProcessFunction<String, String> for SplitLines {
    fn process(
        &mut self,
        line: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        let mut tokens = line.split(' ').filter(|w| !w.is_empty());
        if let (Some(tag), Some(id)) = (&self.ids, tokens.next()) {
            out.output(tag, id.to_string())?;
        }
        for w in tokens {
            if is_long(w) {
                out.output(&self.long, w.to_string())?;
            } else {
                out.collect(w.to_string())?;
            }
        }
        Ok(())
    }
}

/// A side output unioned straight into its operator's own main stream (both exchanges from
/// one stage into one), two side outputs of one operator unioned with each other, a side
/// output connected (keyed) with its operator's main stream, and one broadcast into a
/// keyed connection of the main stream: each exactly once through failures, unaligned, at
/// parallelism 2 and 3.
#[test]
fn side_outputs_unioned_connected_and_broadcast_back_into_their_dataflow() {
    let long = OutputTag::<String>::new("long");
    let ids = OutputTag::<String>::new("ids");
    for case in [
        "union-main",
        "union-sides",
        "connect-side",
        "broadcast-side",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, counts) = input(dir.path(), "a", 1500, 150, 3);
        // Each line gets a unique id `L<i>` in front of its words.
        let text = std::fs::read_to_string(&path).expect("input");
        let lines: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| format!("L{i} {l}"))
            .collect();
        std::fs::write(&path, lines.join("\n") + "\n").expect("write input");
        let line_ids: BTreeMap<String, u64> =
            (0..lines.len()).map(|i| (format!("L{i}"), 1)).collect();
        let output = dir.path().join("out");
        let mut cfg = hunt_config(dir.path(), 2, 4_000);
        cfg.checkpoint.unaligned = true;
        let split = source("source", FileSource::new(&path))
            .process("fail", FailAt::at(vec![300, 900]))
            .process(
                "split",
                SplitLines {
                    long: long.clone(),
                    ids: (case != "union-main").then(|| ids.clone()),
                },
            );
        let (graph, want) = match case {
            "union-main" => {
                let side = split.side_output(&long);
                let u = split.union(side).parallelism(3);
                (count_into(u, "count", &output), counts.clone())
            }
            "union-sides" => {
                let u = split.side_output(&long).union(split.side_output(&ids));
                let _main = split.sink("main", DiscardSink);
                let want = add(only(&counts, is_long, ""), &line_ids);
                (count_into(u, "count", &output), want)
            }
            "connect-side" => {
                let side = split.side_output(&long);
                let _ids = split.side_output(&ids).sink("ids", DiscardSink);
                let graph = split
                    .connect(side)
                    .key_by(|w: &String| w.clone(), |w: &String| w.clone())
                    .process("pair", Pair::new(Vec::new(), None))
                    .parallelism(3)
                    .sink("sink", sink(&output));
                let short = only(&counts, |w| !is_long(w), "/a");
                (graph, add(short, &only(&counts, is_long, "/b")))
            }
            _ => {
                // Every subtask gets every line id once: sizes 1..lines.
                let broadcast = split.side_output(&ids).broadcast();
                let _long = split.side_output(&long).sink("long", DiscardSink);
                let graph = split
                    .key_by(|w: &String| w.clone())
                    .connect(broadcast)
                    .parallelism(3)
                    .process("rules", Rules::<String>::new(vec![2000], None))
                    .sink("sink", sink(&output));
                let short = only(&counts, |w| !is_long(w), "");
                (graph, rules_expected(&short, lines.len() as u64, 3))
            }
        };
        let result = Job::new(graph, cfg).run().expect("job");
        let restarts = if case == "broadcast-side" { 3 } else { 2 };
        assert_eq!(result.restarts, restarts, "{case}: {result:?}");
        check_exactly_once(&want, &read_output(&output));
    }
}

// --- 6. Windows after a union or connection whose second input ends early ---

/// Event-time windows after `a.union(b)` or `a.connect(b)`: input a is the late-events
/// script (every 40th event from 3000 on is 3 s behind its neighbours), input b twenty
/// early events that end at once. Once b has ended it no longer holds the watermark back,
/// so exactly a's late events are late (were b's ended channels still counted, the
/// watermark would stay at b's last and none would be), and every window fires once with
/// the events of both.
#[test]
fn windows_after_a_union_or_connection_whose_other_input_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = write_late_events(dir.path());
    let b = dir.path().join("early.txt");
    let early: String = (0..20u64).map(|t| format!("{} {t}\n", t % 5)).collect();
    std::fs::write(&b, early).expect("write events");
    let mut windows: BTreeMap<String, u64> = BTreeMap::new();
    let mut late_want = Vec::new();
    for n in 0..LATE_EVENTS {
        if is_late_event(n) {
            late_want.push((100 + n % 5, n - BEHIND));
        } else {
            *windows
                .entry(((n % 5) * 1_000_000 + n / 100 * 100 + 100).to_string())
                .or_insert(0) += 1;
        }
    }
    for t in 0..20u64 {
        *windows
            .entry(((t % 5) * 1_000_000 + 100).to_string())
            .or_insert(0) += 1;
    }
    late_want.sort_unstable();
    let late = OutputTag::<(u64, u64)>::new("late");
    for connect in [false, true] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let late_out = Arc::new(Mutex::new(Vec::new()));
        let mut cfg = event_time_config(
            run_dir.path(),
            StateBackendConfig::HashMap,
            SnapshotMode::Incremental,
            connect,
            2,
        );
        // (Dealt over the two source subtasks: a reads 6,000 events a second.)
        cfg.records_per_second = Some(12_000);
        let timed = |name: &str, path: &Path| {
            // One subtask reads each input in order (split, a's second half would run
            // ahead of its first).
            source(&format!("source-{name}"), FileSource::new(path))
                .process(&format!("parse-{name}"), ParseEvents::new(Vec::new()))
                .assign_timestamps_and_watermarks(
                    &format!("timestamps-{name}"),
                    WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
                )
                .parallelism(1)
        };
        let both = if connect {
            timed("a", &a).connect(timed("b", &b)).map(
                "merge",
                |e: (u64, u64)| e,
                |e: (u64, u64)| e,
            )
        } else {
            timed("a", &a).union(timed("b", &b))
        };
        let windowed = both
            .key_by(|e: &(u64, u64)| e.0)
            .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
            .side_output_late_data(&late)
            .aggregate("windows", CountEvents);
        let _late = windowed
            .side_output(&late)
            .sink("late", Collect(late_out.clone()));
        let graph = windowed
            .process("label", FnProcess(label_window))
            .sink("sink", count_sink(&output));
        Job::new(graph, cfg).run().expect("job");
        let mut late_got = late_out.lock().expect("lock").clone();
        late_got.sort_unstable();
        assert_eq!(late_got, late_want, "connect={connect}: the late events");
        let fired: BTreeMap<String, u64> = read_output(&output)
            .into_iter()
            .map(|(window, counts)| {
                assert_eq!(counts.len(), 1, "window {window} fired once: {counts:?}");
                (window, counts[0])
            })
            .collect();
        assert_eq!(fired, windows, "connect={connect}");
    }
}

// --- 7. Inputs of different parallelism ---

/// A union of a stream at parallelism 1 and a rebalanced one at 2 (whose side output sink
/// was made before the union: its graph is the whole dataflow), followed by a rebalance to
/// 2 and a keyed count at 3; and a keyed connection at parallelism 2 of a union (of inputs
/// at 3 and 2) and an input at 1. Exactly once through failures, unaligned.
#[test]
fn inputs_of_different_parallelism_into_a_union_and_a_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, counts_a) = input(dir.path(), "a", 1200, 150, 7);
    let (b, counts_b) = input(dir.path(), "b", 1000, 250, 11);
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), 3, 8_000);
    cfg.checkpoint.unaligned = true;
    let long = OutputTag::<String>::new("long");
    let relay = words("b", &b).rebalance().parallelism(2).process(
        "relay-b",
        FnProcess({
            let long = long.clone();
            move |w: String, out: &mut Collector<'_, String>| {
                if is_long(&w) {
                    out.output(&long, w.clone())?;
                }
                out.collect(w)
            }
        }),
    );
    let long_seen = Arc::new(Mutex::new(Vec::new()));
    let early_graph = relay
        .side_output(&long)
        .sink("long", Collect(long_seen.clone()));
    let _graph = words("a", &a)
        .parallelism(1)
        .union(relay)
        .rebalance()
        .parallelism(2)
        .process("fail", FailAt::at(vec![1500, 5000]))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", sink(&output));
    let uids = early_graph.uids();
    assert!(
        uids.contains(&"source-a".to_string()) && uids.contains(&"count".to_string()),
        "{uids:?}"
    );
    let result = Job::new(early_graph, cfg.clone()).run().expect("union job");
    assert_eq!(result.restarts, 2, "{result:?}");
    check_exactly_once(&add(counts_a.clone(), &counts_b), &read_output(&output));
    let long_words = long_seen.lock().expect("lock").len() as u64;
    assert!(
        long_words >= only(&counts_b, is_long, "").values().sum::<u64>(),
        "every long word of b reached the side sink (at least once: it is not transactional)"
    );

    let output = dir.path().join("out-connect");
    cfg.checkpoint_dir = dir.path().join("checkpoints-connect").display().to_string();
    let (c, counts_c) = input(dir.path(), "c", 500, 100, 13);
    let graph = words("a", &a)
        .parallelism(3)
        .union(words("c", &c))
        .connect(words("b", &b).parallelism(1))
        .parallelism(2)
        .key_by(|w: &String| w.clone(), |w: &String| w.clone())
        .process("pair", Pair::new(vec![1000, 3000], None))
        .sink("sink", sink(&output));
    let result = Job::new(graph, cfg).run().expect("connect job");
    assert_eq!(result.restarts, 2, "{result:?}");
    let a_and_c = add(counts_a, &counts_c);
    check_exactly_once(&pair_expected(&a_and_c, &counts_b), &read_output(&output));
}

// --- 8. Broadcast maps added, dropped and retyped across savepoints ---

/// words ⋈ broadcast rules → `f` → sink, the operator at parallelism `p`.
fn maps_job<F>(words_path: &Path, rule_file: &Path, output: &Path, p: u32, f: F) -> JobGraph
where
    F: BroadcastProcessFunction<String, (String, u64), (String, u64)>,
{
    words("a", words_path)
        .connect_broadcast(rules_named("rules", rule_file).broadcast())
        .parallelism(p)
        .process("maps", f)
        .sink("sink", sink(output))
}

/// Starts `graph`, stops it with a savepoint once its sources have read `read` more
/// records, and returns the savepoint.
fn stop_after(graph: JobGraph, cfg: &JobConfig, read: u64) -> String {
    let handle = Job::new(graph, cfg.clone()).start().expect("start");
    while handle.records_read() < read {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    handle.wait().expect("stopped run");
    savepoint
}

fn sorted(probe: &Probe) -> Vec<(u32, String, usize)> {
    let mut found = probe.lock().expect("lock").clone();
    found.sort();
    found
}

/// The greatest size a subtask emitted for map `map` (0: none).
fn last_size(output: &Path, key: &str) -> u64 {
    read_output(output)
        .get(key)
        .and_then(|sizes| sizes.iter().max().copied())
        .unwrap_or(0)
}

/// A savepoint's broadcast map `weights` survives a job (at another parallelism) whose
/// function no longer registers it and registers a new map `extra` instead (empty at
/// first): a third job that registers both finds `weights` as the first job left it and
/// `extra` as the second did, and goes on filling `weights` exactly where it stopped.
#[test]
fn broadcast_maps_dropped_and_added_across_savepoints_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words_path, _) = input(dir.path(), "a", 400, 50, 7);
    let rule_file = write_rule_range(dir.path(), "rules", 0..1500);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(3_000);

    let first = RuleCount::maps(vec!["weights"], Vec::new(), None);
    let savepoint = stop_after(
        maps_job(&words_path, &rule_file, &output, 2, first),
        &cfg,
        300,
    );
    let weights = last_size(&output, "weights/0");
    assert!(weights > 0 && weights < 1500, "rules read: {weights}");
    assert_eq!(last_size(&output, "weights/1"), weights, "every copy alike");

    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = RuleCount::maps(vec!["extra"], Vec::new(), None);
    let probe = second.probe.clone();
    let graph = maps_job(&words_path, &rule_file, &output, 3, second);
    let savepoint = stop_after(graph, &cfg, 200);
    let found = sorted(&probe);
    let empty: Vec<_> = (0..3).map(|i| (i, "extra".to_string(), 0)).collect();
    assert_eq!(found, empty, "a new map starts empty");
    let extra = last_size(&output, "extra/0");
    assert!(extra > 0, "the second job read rules");

    cfg.restore = Some(RestoreFrom::Path(savepoint));
    cfg.records_per_second = None;
    let third = RuleCount::maps(vec!["weights", "extra"], Vec::new(), None);
    let probe = third.probe.clone();
    Job::new(maps_job(&words_path, &rule_file, &output, 2, third), cfg)
        .run()
        .expect("third run");
    let found = sorted(&probe);
    let mut want = Vec::new();
    for i in 0..2 {
        want.push((i, "extra".to_string(), extra as usize));
        want.push((i, "weights".to_string(), weights as usize));
    }
    assert_eq!(
        found, want,
        "both maps as the jobs that filled them left them"
    );
    // `weights` grows on from its size at the first savepoint by the rules the third job
    // read (those the second job read went into `extra`).
    let out = read_output(&output);
    for i in 0..2 {
        let mut sizes = out[&format!("weights/{i}")].clone();
        sizes.sort_unstable();
        let want: Vec<u64> = (1..=1500 - extra).collect();
        assert_eq!(sizes, want, "weights/{i}");
    }
}

/// Registers broadcast map `weights` as `K → V`, made from each rule by `make`.
struct Typed<K, V> {
    make: fn(String, u64) -> (K, V),
}

impl<K, V> Clone for Typed<K, V> {
    fn clone(&self) -> Self {
        Self { make: self.make }
    }
}

impl<K, V> Checkpointed for Typed<K, V> {}

impl<K: Data + Ord, V: Data> BroadcastProcessFunction<String, (String, u64), (String, u64)>
    for Typed<K, V>
{
    fn open(&mut self, broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        broadcast.register(&BroadcastStateDescriptor::<K, V>::new("weights"))
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
        (name, weight): (String, u64),
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let (k, v) = (self.make)(name, weight);
        let map = broadcast.get_mut(&BroadcastStateDescriptor::<K, V>::new("weights"))?;
        map.insert(k, v);
        out.collect(("size".into(), map.len() as u64))
    }
}

/// A savepoint of broadcast map `weights` as `String → u64`, and the error of a restore
/// into a job that registers it with other types (`None`: the restore ran).
fn restore_retyped<K: Data + Ord, V: Data>(make: fn(String, u64) -> (K, V)) -> Option<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (words_path, _) = input(dir.path(), "a", 50, 10, 7);
    let rule_file = write_rule_range(dir.path(), "rules", 0..1000);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(3_000);
    let stored = Typed::<String, u64> {
        make: |n, w| (n, w),
    };
    let savepoint = stop_after(
        maps_job(&words_path, &rule_file, &output, 2, stored),
        &cfg,
        200,
    );
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    cfg.records_per_second = None;
    cfg.restart.max_restarts = 0;
    let graph = maps_job(&words_path, &rule_file, &output, 2, Typed { make });
    Job::new(graph, cfg).run().err().map(|e| e.to_string())
}

/// The same types restore; a key type whose encoding cannot decode the stored keys is
/// refused, naming the state and the operator.
#[test]
fn broadcast_state_restored_under_another_key_type_is_refused_naming_it() {
    assert_eq!(restore_retyped::<String, u64>(|n, w| (n, w)), None);
    let error = restore_retyped::<u64, String>(|n, w| (w, n)).expect("refused");
    assert!(
        error.contains("broadcast state weights of operator maps") && error.contains("key"),
        "{error}"
    );
}

/// A value type whose encoding happens to decode the stored bytes (`u64` stored, `i64`
/// registered; the same for `(u32, u32)`) is taken without a word, although keyed state
/// refuses such a change by its codec identity (type name and version).
#[test]
fn broadcast_state_restored_under_another_value_type_is_refused_naming_it() {
    let outcomes = [
        ("i64", restore_retyped::<String, i64>(|n, w| (n, w as i64))),
        (
            "(u32, u32)",
            restore_retyped::<String, (u32, u32)>(|n, w| (n, (w as u32, 0))),
        ),
    ];
    for (value_type, error) in outcomes {
        let error = error.unwrap_or_else(|| panic!("restored as String → {value_type}"));
        assert!(error.contains("broadcast state weights"), "{error}");
    }
}

// --- 9. Graphs the multi-input features refuse ---

/// Each refusal names the stream or operator at fault.
#[test]
fn multi_input_graphs_that_cannot_work_are_refused_naming_the_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, _) = input(dir.path(), "a", 10, 10, 7);
    let rule_file = write_rule_range(dir.path(), "rules", 0..10);
    let refused = |graph: JobGraph, parts: &[&str]| {
        let message = Job::new(graph, config(dir.path(), 50))
            .run()
            .expect_err("refused")
            .to_string();
        for part in parts {
            assert!(message.contains(part), "{part:?} in {message}");
        }
    };
    let tag = OutputTag::<String>::new("long");
    let split = || {
        let f = SplitLines {
            long: tag.clone(),
            ids: None,
        };
        words("a", &a).process("split", f)
    };
    let rules = || rules_named("rules", &rule_file).broadcast();

    // A broadcast stream that is never connected.
    let p = split();
    let _unread = p.side_output(&tag).broadcast();
    let message = ["side output long of operator split does not end in a sink"];
    refused(p.sink("sink", DiscardSink), &message);

    // Broadcast connections that no function reads, keyed or not.
    for keyed in [false, true] {
        let (p, side) = {
            let p = split();
            let side = p.side_output(&tag);
            (p, side)
        };
        if keyed {
            let _ = side.key_by(|w: &String| w.clone()).connect(rules());
        } else {
            let _ = side.connect_broadcast(rules());
        }
        let message = [
            "the connection of side output long of operator split",
            "operator parse-rules",
            "does not end in a sink",
        ];
        refused(p.sink("sink", DiscardSink), &message);
    }

    // A parallelism set after a rebalance that a union replaces.
    let union = words("a", &a)
        .rebalance()
        .parallelism(2)
        .union(words("b", &a));
    let message = ["the stream after operator tokenize-a: its parallelism was set before a union"];
    refused(union.sink("sink", DiscardSink), &message);

    // A co-process function's side output read twice.
    let route = Route {
        fail: Failer::default(),
        long: tag.clone(),
    };
    let routed = words("a", &a)
        .connect(words("b", &a))
        .process("route", route);
    let _once = routed.side_output(&tag).sink("s1", DiscardSink);
    let _twice = routed.side_output(&tag).sink("s2", DiscardSink);
    let message = ["side output long of operator route is read by two streams"];
    refused(routed.sink("sink", DiscardSink), &message);

    // A keyed broadcast function's side output after a rebalance.
    let out = words("a", &a)
        .key_by(|w: &String| w.clone())
        .connect(rules())
        .process("rules", RuleCount::new(Vec::new(), None))
        .rebalance();
    let _side = out.side_output(&tag).sink("s1", DiscardSink);
    let message = ["side output long of operator rules after rebalance()"];
    refused(out.sink("sink", DiscardSink), &message);

    // The same uid on a broadcast stream and the main one.
    let broadcast = words("a", &a).map("parse", |w: String| (w, 1)).broadcast();
    let graph = words("a", &a)
        .connect_broadcast(broadcast)
        .process("rules", RuleCount::new(Vec::new(), None))
        .sink("sink", DiscardSink);
    refused(graph, &["operator uid source-a is used twice"]);
}
