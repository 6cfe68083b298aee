//! Connected streams (Flink's `connect` with a `KeyedCoProcessFunction` or a
//! `CoProcessFunction`): two inputs of different types read by one operator. Keyed state
//! that both inputs update is exactly once through failures, aligned and unaligned, under
//! both backends; a savepoint restores it under the other backend and parallelism;
//! in-flight records of both inputs are replayed; event-time timers fire once both inputs
//! have passed them; non-keyed co-functions map, finish, and refuse what cannot work.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{
    KeyedStateBackend, MapStateDescriptor, MapStateId, ValueStateDescriptor, ValueStateId,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, CheckpointingMode, CoProcessFunction, Collector, Job, JobGraph,
    KeyedCoProcessFunction, RestoreFrom, RuntimeError, StateBackendConfig, Stream, Timer,
    TimerService, WatermarkStrategy,
};
use common::unaligned::{run_until_holding, unaligned_retained_config};
use common::*;

/// Word-count inputs in `dir/a` and `dir/b`.
fn two_inputs(
    dir: &Path,
    lines_a: usize,
    lines_b: usize,
) -> (
    PathBuf,
    PathBuf,
    BTreeMap<String, u64>,
    BTreeMap<String, u64>,
) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let (input_a, counts_a) = write_input(&a, lines_a, 150, 7);
    let (input_b, counts_b) = write_input(&b, lines_b, 250, 11);
    (input_a, input_b, counts_a, counts_b)
}

/// What [`JoinCounts`] emits over the whole input: per word, `word/a` counts 1..na,
/// `word/b` counts 1..nb and `word/total` counts 1..na+nb.
fn expected(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (side, counts) in [("a", a), ("b", b)] {
        for (w, n) in counts {
            out.insert(format!("{w}/{side}"), *n);
            *out.entry(format!("{w}/total")).or_insert(0) += n;
        }
    }
    out
}

/// Words of file source `source-a` (plain words) and `source-b` (words with their length:
/// another record type).
fn inputs(a: &Path, b: &Path) -> (Stream<String>, Stream<(String, u64)>) {
    let split = |line: String| {
        line.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let words_a = source("source-a", FileSource::new(a)).flat_map("tokenize-a", split);
    let words_b = source("source-b", FileSource::new(b))
        .flat_map("tokenize-b", split)
        .map("length", |w: String| {
            let n = w.len() as u64;
            (w, n)
        });
    (words_a, words_b)
}

/// Counts each word's records per input and in total, in keyed state that both inputs
/// update; fails when the records it has seen (all subtasks, all runs) reach one of
/// `fail_at`, and sleeps `delay` per record.
#[derive(Clone, Debug)]
struct JoinCounts {
    seen: Arc<AtomicU64>,
    fail_at: Vec<u64>,
    delay: Duration,
}

impl JoinCounts {
    fn new(fail_at: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            fail_at,
            delay: Duration::ZERO,
        }
    }

    fn count<S: KeyedStateBackend>(
        &self,
        state: &JoinStates,
        word: &str,
        side: &str,
        backend: &mut S,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let seen = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at.contains(&seen) {
            return Err(RuntimeError::user(
                "join",
                format!("injected failure at {seen}"),
            ));
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let id = if side == "a" { state.a } else { state.b };
        let n = backend.value_get(id, &())?.unwrap_or(0) + 1;
        backend.value_update(id, &(), n)?;
        let total = backend.value_get(state.total, &())?.unwrap_or(0) + 1;
        backend.value_update(state.total, &(), total)?;
        out.collect((format!("{word}/{side}"), n))?;
        out.collect((format!("{word}/total"), total))
    }
}

struct JoinStates {
    a: ValueStateId<u64, ()>,
    b: ValueStateId<u64, ()>,
    total: ValueStateId<u64, ()>,
}

impl Checkpointed for JoinCounts {}

impl KeyedCoProcessFunction for JoinCounts {
    type Key = String;
    type In1 = String;
    type In2 = (String, u64);
    type Out = (String, u64);
    type State = JoinStates;

    fn open<S: KeyedStateBackend>(&mut self, b: &mut S) -> cairn_runtime::Result<JoinStates> {
        Ok(JoinStates {
            a: b.register_value(&ValueStateDescriptor::new("count-a"))?,
            b: b.register_value(&ValueStateDescriptor::new("count-b"))?,
            total: b.register_value(&ValueStateDescriptor::new("total"))?,
        })
    }

    fn process1<S: KeyedStateBackend>(
        &mut self,
        state: &JoinStates,
        key: &String,
        input: String,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        assert_eq!(*key, input, "the key of the first input's record");
        self.count(state, key, "a", backend, out)
    }

    fn process2<S: KeyedStateBackend>(
        &mut self,
        state: &JoinStates,
        key: &String,
        (word, len): (String, u64),
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        assert_eq!(
            (key, len),
            (&word, word.len() as u64),
            "the second input's record"
        );
        self.count(state, key, "b", backend, out)
    }
}

/// a, b → connect → key_by word → join → sink.
fn joined(a: &Path, b: &Path, output: &Path, join: JoinCounts) -> JobGraph {
    let (words_a, words_b) = inputs(a, b);
    words_a
        .connect(words_b)
        .key_by(|w: &String| w.clone(), |(w, _): &(String, u64)| w.clone())
        .process("join", join)
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
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
    let (a, b, counts_a, counts_b) = two_inputs(dir.path(), 1500, 1200);
    let output = dir.path().join("out");
    let mut cfg = failure_config(
        dir.path(),
        case.backend,
        case.parallelism,
        case.unaligned,
        20_000,
    );
    cfg.checkpoint.mode = case.mode;
    let graph = joined(&a, &b, &output, JoinCounts::new(case.failures.clone()));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts as usize, case.failures.len(), "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    let want = expected(&counts_a, &counts_b);
    let out = read_output(&output);
    match case.mode {
        CheckpointingMode::ExactlyOnce => check_exactly_once(&want, &out),
        CheckpointingMode::AtLeastOnce => check_at_least_once(&want, &out),
    }
}

#[test]
fn hashmap_aligned_p1_keyed_connect_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 1,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![2000, 6000],
    });
}

#[test]
fn hashmap_unaligned_p3_keyed_connect_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![1500, 5000],
    });
}

#[test]
fn rocksdb_aligned_p3_keyed_connect_through_a_failure() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![4000],
    });
}

#[test]
fn rocksdb_unaligned_p1_keyed_connect_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 1,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        failures: vec![2500, 7000],
    });
}

#[test]
fn at_least_once_keyed_connect_never_loses() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::AtLeastOnce,
        failures: vec![3000],
    });
}

/// Stop-with-savepoint under the hashmap backend at parallelism 2; the restore under
/// RocksDB at parallelism 3 goes on counting both inputs from their positions.
#[test]
fn a_savepoint_of_a_connection_restores_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, counts_a, counts_b) = two_inputs(dir.path(), 2500, 2000);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(5_000);
    let graph = || joined(&a, &b, &output, JoinCounts::new(Vec::new()));
    let handle = Job::new(graph(), cfg.clone()).start().expect("start");
    while handle.records_read() < 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
    let join = manifest.operator("join").expect("the join's state");
    let mut states: Vec<&str> = join
        .subtasks
        .iter()
        .flat_map(|s| s.keyed.iter().flat_map(|k| k.states.iter()))
        .map(|m| m.name.as_str())
        .collect();
    states.sort_unstable();
    states.dedup();
    assert_eq!(states, ["count-a", "count-b", "total"]);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(graph(), cfg).run().expect("restored run");
    assert_eq!(first.records + second.records, 4500, "{first:?} {second:?}");
    check_exactly_once(&expected(&counts_a, &counts_b), &read_output(&output));
}

/// An unaligned checkpoint of a slow connection holds in-flight records of both inputs
/// (as `Either`s, on the keyed operator); a restore at another parallelism replays each
/// to the subtask of its key, exactly once.
#[test]
fn in_flight_records_of_a_connection_are_replayed_after_a_rescaled_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, counts_a, counts_b) = two_inputs(dir.path(), 1500, 1500);
    let output = dir.path().join("out");
    let mut cfg = unaligned_retained_config(dir.path(), 2);
    let mut slow = JoinCounts::new(Vec::new());
    slow.delay = Duration::from_micros(300);
    let first = run_until_holding(joined(&a, &b, &output, slow), &cfg, "join", 20);
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(joined(&a, &b, &output, JoinCounts::new(Vec::new())), cfg)
        .run()
        .expect("restored run");
    assert!(second.restored_from.is_some(), "{first:?} {second:?}");
    check_exactly_once(&expected(&counts_a, &counts_b), &read_output(&output));
}

/// Per key, counts events of both inputs per 100 ms bucket of event time (a map state
/// that both inputs update) and emits a bucket's count when an event-time timer at its
/// end fires: only once both inputs' watermarks have passed it.
#[derive(Clone, Debug)]
struct Buckets;

impl Checkpointed for Buckets {}

impl Buckets {
    fn add<S: KeyedStateBackend>(
        buckets: &MapStateId<u64, u64, ()>,
        time: u64,
        backend: &mut S,
        timers: &mut TimerService,
    ) -> cairn_runtime::Result<()> {
        let bucket = time / 100;
        let n = backend.map_get(*buckets, &(), &bucket)?.unwrap_or(0);
        backend.map_put(*buckets, &(), bucket, n + 1)?;
        timers.register_event_time_timer(bucket * 100 + 99);
        Ok(())
    }
}

impl KeyedCoProcessFunction for Buckets {
    type Key = u64;
    type In1 = (u64, u64);
    type In2 = (u64, u64);
    type Out = (u64, u64);
    type State = MapStateId<u64, u64, ()>;

    fn open<S: KeyedStateBackend>(&mut self, b: &mut S) -> cairn_runtime::Result<Self::State> {
        Ok(b.register_map(&MapStateDescriptor::new("buckets"))?)
    }

    fn process1<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        _key: &u64,
        (_, time): (u64, u64),
        backend: &mut S,
        timers: &mut TimerService,
        _out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        Self::add(state, time, backend, timers)
    }

    fn process2<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        _key: &u64,
        (_, time): (u64, u64),
        backend: &mut S,
        timers: &mut TimerService,
        _out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        Self::add(state, time, backend, timers)
    }

    fn on_timer<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        timer: Timer,
        backend: &mut S,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let bucket = timer.time / 100;
        let n = backend.map_get(*state, &(), &bucket)?.unwrap_or(0);
        backend.map_remove(*state, &(), &bucket)?;
        out.collect((key * 1_000_000 + bucket, n))
    }
}

/// Source b's event times lag source a's by 2 s as they are read: every bucket's timer
/// fires once, counting the events of both inputs (were the operator's watermark the
/// greater of its inputs', b's events would come after their buckets fired).
#[test]
fn event_time_timers_of_a_connection_wait_for_both_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        write_lagging_events(dir.path(), "a.txt", 3, 0),
        write_lagging_events(dir.path(), "b.txt", 3, 2000),
    );
    let want = lagging_counts(3, |t| t / 100);
    for (backend, unaligned) in [
        (StateBackendConfig::HashMap, true),
        (StateBackendConfig::rocksdb(), false),
    ] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let cfg = event_time_config(
            run_dir.path(),
            backend,
            cairn_runtime::SnapshotMode::Incremental,
            unaligned,
            2,
        );
        let timed = |name: &str, path: &Path, fail_at: Vec<u64>| {
            source(&format!("source-{name}"), FileSource::new(path))
                .process(&format!("parse-{name}"), ParseEvents::new(fail_at))
                .assign_timestamps_and_watermarks(
                    &format!("timestamps-{name}"),
                    WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
                )
        };
        let graph = timed("a", &a, Vec::new())
            .connect(timed("b", &b, vec![1800]))
            .key_by(|e: &(u64, u64)| e.0, |e: &(u64, u64)| e.0)
            .process("buckets", Buckets)
            .sink("sink", count_sink(&output));
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 1, "{result:?}");
        let fired: BTreeMap<String, u64> = read_output(&output)
            .into_iter()
            .map(|(bucket, counts)| {
                assert_eq!(counts.len(), 1, "bucket {bucket} fired once: {counts:?}");
                (bucket, counts[0])
            })
            .collect();
        assert_eq!(fired, want);
    }
}

/// Counts the records of each input and emits both counts in `finish` (no state: the job
/// runs without failures).
#[derive(Clone, Debug, Default)]
struct CountInputs {
    a: u64,
    b: u64,
}

impl Checkpointed for CountInputs {}

impl CoProcessFunction<String, (String, u64), String> for CountInputs {
    fn process1(&mut self, _: String, _: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        self.a += 1;
        Ok(())
    }
    fn process2(
        &mut self,
        _: (String, u64),
        _: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        self.b += 1;
        Ok(())
    }
    fn finish(&mut self, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        out.collect(format!("{} {}", self.a, self.b))
    }
}

/// Non-keyed: a co-map tags each input's words (then counted by key, exactly once
/// through a failure), and a co-process function sees every record of both inputs once
/// and runs `finish` once per subtask when both have ended.
#[test]
fn non_keyed_co_functions_map_and_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, counts_a, counts_b) = two_inputs(dir.path(), 1000, 800);
    let output = dir.path().join("out");
    let mut cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 3, false, 20_000);
    let (words_a, words_b) = inputs(&a, &b);
    let graph = words_a
        .connect(words_b)
        .parallelism(2)
        .map(
            "tag",
            |w: String| format!("{w}/a"),
            |(w, _): (String, u64)| format!("{w}/b"),
        )
        .process("fail", FailAt::at(vec![1500]))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(&output, format_line));
    let result = Job::new(graph, cfg.clone()).run().expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    let mut want = BTreeMap::new();
    for (side, counts) in [("a", &counts_a), ("b", &counts_b)] {
        for (w, n) in counts {
            want.insert(format!("{w}/{side}"), *n);
        }
    }
    check_exactly_once(&want, &read_output(&output));

    let seen = Arc::new(Mutex::new(Vec::new()));
    let (words_a, words_b) = inputs(&a, &b);
    let graph = words_a
        .connect(words_b)
        .process("count-inputs", CountInputs::default())
        .parallelism(2)
        .sink("sink", Collect(seen.clone()));
    cfg.checkpoint_dir = dir.path().join("second").display().to_string();
    Job::new(graph, cfg).run().expect("job");
    let finished = seen.lock().expect("lock").clone();
    assert_eq!(finished.len(), 2, "one finish per subtask: {finished:?}");
    let (mut total_a, mut total_b) = (0, 0);
    for line in &finished {
        let (x, y) = line.split_once(' ').expect("two counts");
        total_a += x.parse::<u64>().expect("count");
        total_b += y.parse::<u64>().expect("count");
    }
    assert_eq!(total_a, counts_a.values().sum::<u64>());
    assert_eq!(total_b, counts_b.values().sum::<u64>());
}

/// What a connection refuses when the job is made, naming it.
#[test]
fn a_connection_refuses_graphs_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _, _) = two_inputs(dir.path(), 10, 10);
    let start = |graph: JobGraph| {
        Job::new(graph, config(dir.path(), 50))
            .run()
            .expect_err("refused")
            .to_string()
    };
    let collect = || Collect(Arc::new(Mutex::new(Vec::<String>::new())));

    // A connection that no function reads (its stream does not end in a sink).
    let (words_a, words_b) = inputs(&a, &b);
    let side = words_a.process(
        "split",
        cairn_runtime::function::FnProcess(|w: String, out: &mut Collector<'_, String>| {
            out.collect(w)
        }),
    );
    let graph = side
        .side_output(&cairn_runtime::OutputTag::<String>::new("x"))
        .sink("side", collect());
    let _unread = side.connect(words_b);
    let message = start(graph);
    assert!(
        message.contains(
            "the connection of the stream of operator split and the stream of operator \
             length does not end in a sink"
        ),
        "{message}"
    );

    // The same uid on both sides.
    let (words_a, _) = inputs(&a, &b);
    let (other_a, _) = inputs(&b, &a);
    let graph = words_a
        .connect(other_a)
        .map("m", |w: String| w, |w: String| w)
        .sink("sink", collect());
    assert!(
        start(graph).contains("operator uid source-a is used twice"),
        "refused"
    );
}
