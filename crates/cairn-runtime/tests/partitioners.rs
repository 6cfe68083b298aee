//! Flink's stream partitioners (`shuffle`, `rescale`, `global`, `forward`,
//! `partition_custom`): which downstream subtask receives which record, exactly-once word
//! counts fed through them across failures (aligned and unaligned, both backends),
//! in-flight records of an unaligned checkpoint restored at another parallelism where the
//! partitioner puts them, event time through them, and the graphs they refuse.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::{FileSource, GeneratorSource};
use cairn_runtime::{
    source, Collector, Job, JobConfig, JobGraph, OutputTag, RestartStrategy, RestoreFrom,
    RuntimeError, StateBackendConfig, Stream, TumblingEventTimeWindows, WatermarkStrategy,
};
use common::unaligned::{run_until_holding, slow, unaligned_retained_config, FailEvery, Gen};
use common::*;

/// A partitioning of a stream (`Stream::shuffle`, ...).
type Partitioning<T> = fn(Stream<T>) -> Stream<T>;

/// Records of the routing tests: `n` generator records over (practically) distinct keys.
const N: u64 = 4000;
const SEED: u64 = 42;

/// Generator record number of each key (the keys are distinct: asserted).
fn record_numbers() -> HashMap<u64, u64> {
    let g = GeneratorSource::new(N, u64::MAX, SEED);
    let numbers: HashMap<u64, u64> = (0..N).map(|n| (g.key_of(n), n)).collect();
    assert_eq!(numbers.len() as u64, N, "the generator's keys are distinct");
    numbers
}

/// One record as it arrived: its generator number, the upstream subtask that sent it and
/// the downstream subtask that received it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Arrival {
    n: u64,
    up: u32,
    down: u32,
}

/// Runs generator (`N` records, parallelism `p_up`) → `up` (tags) → `partition` → `down`
/// (tags, parallelism `p_down`) → sink, and returns every record's arrival, by record
/// number; asserts each record arrived once, from the subtask that emitted it.
fn route(
    p_up: u32,
    p_down: u32,
    partition: impl FnOnce(Stream<(u32, u64)>) -> Stream<(u32, u64)>,
) -> Vec<Arrival> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let up = source("gen", GeneratorSource::new(N, u64::MAX, SEED))
        .parallelism(p_up)
        .process("up", Here::new());
    let graph = partition(up)
        .process("down", Here::new())
        .parallelism(p_down)
        .sink("sink", Collect(got.clone()));
    let cfg = JobConfig {
        batch_size: 8,
        restart: RestartStrategy::fixed_delay(0, Duration::ZERO),
        ..JobConfig::default()
    };
    Job::new(graph, cfg).run().expect("job");
    let numbers = record_numbers();
    let mut arrivals: Vec<Arrival> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|&(down, (up, key))| Arrival {
            n: numbers[&key],
            up,
            down,
        })
        .collect();
    arrivals.sort_unstable();
    assert_eq!(arrivals.len() as u64, N, "every record arrives once");
    for (i, a) in arrivals.iter().enumerate() {
        assert_eq!(a.n, i as u64, "every record arrives once");
        // Generator subtask `i` of `p` emits records `i, i + p, …`.
        assert_eq!(u64::from(a.up), a.n % u64::from(p_up), "{a:?}");
        assert!(a.down < p_down, "{a:?}");
    }
    arrivals
}

/// The downstream subtasks each upstream subtask reached.
fn reached(arrivals: &[Arrival]) -> BTreeMap<u32, BTreeSet<u32>> {
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for a in arrivals {
        out.entry(a.up).or_default().insert(a.down);
    }
    out
}

fn set(items: &[u32]) -> BTreeSet<u32> {
    items.iter().copied().collect()
}

#[test]
fn global_sends_every_record_to_subtask_0() {
    let arrivals = route(3, 4, Stream::global);
    assert!(arrivals.iter().all(|a| a.down == 0), "all at subtask 0");
    assert_eq!(reached(&arrivals).len(), 3, "from every upstream subtask");
}

/// Upstream subtask `i` of 2 reaches only its own pair of 4 downstream subtasks (and both
/// of them); 4 into 2 and 2 into 3 connect as Flink's POINTWISE pattern does.
#[test]
fn rescale_reaches_only_the_pointwise_subset() {
    let two_into_four = reached(&route(2, 4, Stream::rescale));
    assert_eq!(
        two_into_four,
        BTreeMap::from([(0, set(&[0, 1])), (1, set(&[2, 3]))])
    );
    let four_into_two = reached(&route(4, 2, Stream::rescale));
    assert_eq!(
        four_into_two,
        BTreeMap::from([
            (0, set(&[0])),
            (1, set(&[0])),
            (2, set(&[1])),
            (3, set(&[1]))
        ])
    );
    let two_into_three = reached(&route(2, 3, Stream::rescale));
    assert_eq!(
        two_into_three,
        BTreeMap::from([(0, set(&[0, 1])), (1, set(&[2]))])
    );
}

/// Every downstream subtask gets about a quarter of the records; consecutive records of
/// an upstream subtask land independently (not in round-robin runs); two runs deal every
/// record the same way.
#[test]
fn shuffle_deals_randomly_and_deterministically() {
    let first = route(2, 4, Stream::shuffle);
    for down in 0..4 {
        let n = first.iter().filter(|a| a.down == down).count() as u64;
        assert!(
            (N * 20 / 100..N * 30 / 100).contains(&n),
            "subtask {down} got {n} of {N}"
        );
    }
    for up in 0..2 {
        // Arrivals are sorted by record number: an upstream subtask's records in the order
        // it sent them.
        let targets: Vec<u32> = first
            .iter()
            .filter(|a| a.up == up)
            .map(|a| a.down)
            .collect();
        let repeats = targets.windows(2).filter(|w| w[0] == w[1]).count();
        let share = repeats as f64 / (targets.len() - 1) as f64;
        assert!(
            (0.15..0.35).contains(&share),
            "upstream {up}: consecutive records went to the same subtask {share:.2} of the \
             time, not about a quarter"
        );
    }
    let second = route(2, 4, Stream::shuffle);
    let differs = first.iter().zip(&second).find(|(a, b)| a != b);
    assert!(differs.is_none(), "the same deal in every run: {differs:?}");
}

/// Key `k` goes to partition `k % 3` of 4: exactly the chosen subtasks, and subtask 3
/// none.
#[test]
fn partition_custom_sends_each_record_where_the_partitioner_says() {
    let arrivals = route(2, 4, |s| {
        s.partition_custom(|k: &u64, n: u32| (*k % 3) as u32 % n, |r: &(u32, u64)| r.1)
    });
    let g = GeneratorSource::new(N, u64::MAX, SEED);
    for a in &arrivals {
        assert_eq!(u64::from(a.down), g.key_of(a.n) % 3, "{a:?}");
    }
    let used: BTreeSet<u32> = arrivals.iter().map(|a| a.down).collect();
    assert_eq!(used, set(&[0, 1, 2]));
}

/// Forward keeps each record in its subtask, also when it replaces a `rebalance()` asked
/// for right before it.
#[test]
fn forward_keeps_records_in_their_subtask() {
    let arrivals = route(3, 3, Stream::forward);
    assert!(arrivals.iter().all(|a| a.down == a.up), "subtask i to i");
    let replaced = route(3, 3, |s| s.rebalance().forward());
    assert!(replaced.iter().all(|a| a.down == a.up), "subtask i to i");
    // (A rebalance alone deals every upstream subtask's records over all of them.)
    let rebalanced = reached(&route(3, 3, Stream::rebalance));
    assert!(rebalanced.values().all(|d| d.len() == 3), "{rebalanced:?}");
}

/// A partition out of range fails the job, naming the operator before the exchange and
/// the partition, without a panic.
#[test]
fn partition_custom_out_of_range_fails_naming_the_operator() {
    let graph = source("gen", GeneratorSource::new(100, 10, 1))
        .process("up", Here::new())
        .partition_custom(|k: &u64, n: u32| if *k == 7 { n } else { 0 }, |r| r.1)
        .process("down", Here::new())
        .parallelism(2)
        .sink("sink", Collect(Arc::new(Mutex::new(Vec::new()))));
    let cfg = JobConfig {
        restart: RestartStrategy::fixed_delay(0, Duration::ZERO),
        ..JobConfig::default()
    };
    let error = Job::new(graph, cfg).run().expect_err("out of range");
    let message = error.to_string();
    assert!(
        message.contains("operator up failed")
            && message.contains("partition out of range")
            && message.contains("partition=2 partitions=2"),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");
}

/// What the partitioners refuse when the job is made, naming the operators.
#[test]
fn partitioners_refuse_graphs_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = |graph: JobGraph| match Job::new(graph, config(dir.path(), 50)).run() {
        Err(RuntimeError::Config(message)) => message,
        other => panic!("refused as invalid, got {other:?}"),
    };
    let collect = || Collect(Arc::new(Mutex::new(Vec::<u64>::new())));
    let gen = |uid: &str| source(uid, GeneratorSource::new(10, 5, 1));

    // Forward into another parallelism.
    let graph = gen("gen")
        .parallelism(2)
        .map("up", |x: u64| x)
        .forward()
        .map("down", |x: u64| x)
        .parallelism(4)
        .sink("sink", collect());
    let message = refused(graph);
    assert!(
        message.contains(
            "forward() from operator up at parallelism 2 into operator down at parallelism 4"
        ),
        "{message}"
    );
    // ... also when set right after it (the stage after a replaced rebalance).
    let graph = gen("gen")
        .parallelism(2)
        .rebalance()
        .parallelism(3)
        .forward()
        .map("down", |x: u64| x)
        .sink("sink", collect());
    let message = refused(graph);
    assert!(
        message.contains("forward() from operator gen at parallelism 2 into the stream after"),
        "{message}"
    );
    // The same parallelism is fine.
    let graph = gen("gen")
        .parallelism(2)
        .forward()
        .map("down", |x: u64| x)
        .parallelism(2)
        .sink("sink", collect());
    Job::new(graph, JobConfig::default())
        .run()
        .expect("same parallelism");

    // Forward right after a union, and right before one.
    let graph = gen("a").union(gen("b")).forward().sink("sink", collect());
    let message = refused(graph);
    assert!(
        message.contains("forward() right after the union of the stream of operator a"),
        "{message}"
    );
    let graph = gen("a").forward().union(gen("b")).sink("sink", collect());
    let message = refused(graph);
    assert!(
        message.contains("the stream of operator a: forward() before the union"),
        "{message}"
    );

    // A partitioning that a union's round robin would undo; after the union it is fine,
    // and so is one that a key_by after the union replaces.
    let graph = gen("a")
        .shuffle()
        .union(gen("b"))
        .map("m", |x: u64| x)
        .sink("sink", collect());
    let message = refused(graph);
    assert!(
        message.contains("shuffle() before the union")
            && message.contains("would be undone by its exchange"),
        "{message}"
    );
    let graph = gen("a")
        .union(gen("b"))
        .global()
        .map("m", |x: u64| x)
        .sink("sink", collect());
    Job::new(graph, JobConfig::default())
        .run()
        .expect("global after a union");
    let keyed = gen("a")
        .rescale()
        .union(gen("b"))
        .key_by(|x: &u64| *x)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new())
        .map("m", |(k, _): (u64, u64)| k)
        .sink("sink", collect());
    Job::new(keyed, JobConfig::default())
        .run()
        .expect("key_by after the union replaces the rescale");

    // A side output after a partitioning.
    let tag = OutputTag::<u64>::new("side");
    let side_tag = tag.clone();
    let split = gen("gen")
        .process(
            "split",
            FnProcess(move |x: u64, out: &mut Collector<'_, u64>| {
                out.output(&side_tag, x)?;
                out.collect(x)
            }),
        )
        .global();
    let _side = split.side_output(&tag).sink("side", collect());
    let message = refused(split.sink("sink", collect()));
    assert!(
        message.contains("side output side of operator split after global()"),
        "{message}"
    );
}

/// Which partitioning feeds the failing operator of the word count.
#[derive(Clone, Copy, Debug)]
enum Part {
    Shuffle,
    Rescale,
    Global,
    Custom,
}

impl Part {
    fn apply(self, s: Stream<String>) -> Stream<String> {
        match self {
            Part::Shuffle => s.shuffle(),
            Part::Rescale => s.rescale(),
            Part::Global => s.global(),
            Part::Custom => s.partition_custom(
                |len: &usize, n: u32| (*len as u32) % n,
                |w: &String| w.len(),
            ),
        }
    }
}

/// source → tokenize (parallelism `p_up`) → `part` → fail (parallelism `p_down`) →
/// key_by → count → two-phase file sink.
fn wordcount(
    input: &Path,
    output: &Path,
    part: Part,
    (p_up, p_down): (u32, u32),
    fail: FailAt,
) -> JobGraph {
    let words = source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .parallelism(p_up);
    part.apply(words)
        .process("fail", fail)
        .parallelism(p_down)
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// The word count through `part` and injected failures, exactly once.
fn exactly_once(
    part: Part,
    backend: StateBackendConfig,
    unaligned: bool,
    ps: (u32, u32),
    failures: Vec<u64>,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 2500, 200, 17);
    let output = dir.path().join("out");
    let cfg = failure_config(dir.path(), backend, 3, unaligned, 20_000);
    let graph = wordcount(&input, &output, part, ps, FailAt::at(failures.clone()));
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts as usize, failures.len(), "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn shuffle_hashmap_unaligned_exactly_once_through_failures() {
    exactly_once(
        Part::Shuffle,
        StateBackendConfig::HashMap,
        true,
        (2, 3),
        vec![1500, 4000],
    );
}

#[test]
fn rescale_rocksdb_aligned_exactly_once_through_a_failure() {
    exactly_once(
        Part::Rescale,
        StateBackendConfig::rocksdb(),
        false,
        (2, 4),
        vec![3000],
    );
}

#[test]
fn rescale_hashmap_unaligned_four_into_two_exactly_once_through_a_failure() {
    exactly_once(
        Part::Rescale,
        StateBackendConfig::HashMap,
        true,
        (4, 2),
        vec![2500],
    );
}

#[test]
fn global_hashmap_aligned_exactly_once_through_failures() {
    exactly_once(
        Part::Global,
        StateBackendConfig::HashMap,
        false,
        (3, 3),
        vec![1000, 3500],
    );
}

#[test]
fn global_rocksdb_unaligned_exactly_once_through_a_failure() {
    exactly_once(
        Part::Global,
        StateBackendConfig::rocksdb(),
        true,
        (2, 3),
        vec![2000],
    );
}

#[test]
fn partition_custom_hashmap_unaligned_exactly_once_through_a_failure() {
    exactly_once(
        Part::Custom,
        StateBackendConfig::HashMap,
        true,
        (3, 2),
        vec![2500],
    );
}

/// generator → `part` → slow → here → check → key_by → count → sink: the slow stage
/// holds in-flight records when an unaligned barrier comes. `check` counts in `strays` the
/// records that reach a subtask other than the one `home` (of the key and the stage's
/// parallelism) says.
fn inflight_graph(
    g: Gen,
    output: &Path,
    part: impl FnOnce(Stream<u64>) -> Stream<u64>,
    delay: Duration,
    home: fn(u64, u32) -> Option<u32>,
    p_slow: u32,
    strays: Arc<AtomicU64>,
) -> JobGraph {
    let slowed = slow(part(source("gen", g.source())), "slow", delay);
    slowed
        .process("here", Here::new())
        .process(
            "check",
            FnProcess(move |(i, k): (u32, u64), out: &mut Collector<'_, u64>| {
                if home(k, p_slow).is_some_and(|h| h != i) {
                    strays.fetch_add(1, Ordering::SeqCst);
                }
                out.collect(k)
            }),
        )
        .parallelism(p_slow)
        .key_by(|k: &u64| *k)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new())
        .process("fail", FailEvery::at(Vec::new()))
        .sink("sink", count_sink(output))
}

/// An unaligned checkpoint holds in-flight records on the stage after `part` (at
/// parallelism 2); the job restored from it at parallelism 3 replays them, exactly once,
/// each in the subtask `home` says (`None`: any).
fn inflight_restore(
    part: Partitioning<u64>,
    home: fn(u64, u32) -> Option<u32>,
    backend: StateBackendConfig,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = Gen {
        total: 6000,
        keys: 60,
        seed: 5,
    };
    let output = dir.path().join("out");
    let strays = Arc::new(AtomicU64::new(0));
    let mut cfg = unaligned_retained_config(dir.path(), 2);
    cfg.backend = backend;
    let graph = inflight_graph(
        g,
        &output,
        part,
        Duration::from_micros(300),
        home,
        2,
        strays.clone(),
    );
    let first = run_until_holding(graph, &cfg, "slow", 50);
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    let graph = inflight_graph(g, &output, part, Duration::ZERO, home, 3, strays.clone());
    let second = Job::new(graph, cfg).run().expect("restored run");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert!(
        first.records + second.records >= g.total,
        "{first:?} {second:?}"
    );
    check_exactly_once(&g.expected(), &read_output(&output));
    assert_eq!(
        strays.load(Ordering::SeqCst),
        0,
        "records off their subtask"
    );
}

#[test]
fn global_inflight_records_restore_into_subtask_0_at_another_parallelism() {
    inflight_restore(Stream::global, |_, _| Some(0), StateBackendConfig::HashMap);
}

fn by_key_mod(k: u64, n: u32) -> Option<u32> {
    Some((k % u64::from(n)) as u32)
}

#[test]
fn custom_inflight_records_restore_where_the_partitioner_puts_them() {
    inflight_restore(
        |s| s.partition_custom(|k: &u64, n: u32| by_key_mod(*k, n).unwrap_or(0), |k| *k),
        by_key_mod,
        StateBackendConfig::rocksdb(),
    );
}

#[test]
fn rescale_inflight_records_restore_at_another_parallelism() {
    inflight_restore(Stream::rescale, |_, _| None, StateBackendConfig::HashMap);
}

#[test]
fn shuffle_inflight_records_restore_at_another_parallelism() {
    inflight_restore(Stream::shuffle, |_, _| None, StateBackendConfig::rocksdb());
}

/// Events keep their timestamps through each partitioner into a stage of 4 subtasks fed by
/// one (some of which get no records, only watermarks): every tumbling window after it
/// counts its events exactly, once, and none is late.
#[test]
fn event_time_flows_through_every_partitioner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = write_lagging_events(dir.path(), "events.txt", 4, 0);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for n in 0..3000u64 {
        let end = (n * 2) / 100 * 100 + 100;
        *expected
            .entry(((n % 4) * 1_000_000 + end).to_string())
            .or_insert(0) += 1;
    }
    let parts: [(&str, Partitioning<(u64, u64)>); 4] = [
        ("shuffle", Stream::shuffle),
        ("rescale", Stream::rescale),
        ("global", Stream::global),
        ("custom", |s| {
            s.partition_custom(|k: &u64, n: u32| (*k % u64::from(n)) as u32, |e| e.0)
        }),
    ];
    for (name, part) in parts {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let late = OutputTag::<(u64, u64)>::new("late");
        let late_out = Arc::new(Mutex::new(Vec::new()));
        let mut cfg = config(run_dir.path(), 50);
        cfg.parallelism = 3;
        cfg.auto_watermark_interval = Duration::from_millis(10);
        let timed = source("source", FileSource::new(&events))
            .parallelism(1)
            .process("parse", ParseEvents::new(Vec::new()))
            .assign_timestamps_and_watermarks(
                "timestamps",
                WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
            );
        let windowed = part(timed)
            .map("relay", |e: (u64, u64)| e)
            .parallelism(4)
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
        assert!(
            late_out.lock().expect("lock").is_empty(),
            "{name}: no event is late"
        );
        let counts: BTreeMap<String, u64> = read_output(&output)
            .into_iter()
            .map(|(window, counts)| {
                assert_eq!(counts.len(), 1, "{name}: window {window} fired once");
                (window, counts[0])
            })
            .collect();
        assert_eq!(counts, expected, "{name}");
    }
}

/// A record with the threads of the two operators it went through.
type Threaded = (u64, String, String);

/// `start_new_chain()` runs the operators after it on threads of their own, each subtask
/// fed by the same subtask before it, records in order.
#[test]
fn a_new_chain_runs_on_threads_of_its_own() {
    let thread = || std::thread::current().name().unwrap_or("").to_string();
    for parallelism in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out: Arc<Mutex<Vec<Threaded>>> = Arc::new(Mutex::new(Vec::new()));
        let graph = source("source", GeneratorSource::new(2_000, 1_000, 5))
            .map("a", move |v: u64| (v, thread()))
            .start_new_chain()
            .map("b", move |(v, a): (u64, String)| (v, a, thread()))
            .sink("sink", Collect(out.clone()));
        let mut cfg = config(dir.path(), 50);
        cfg.parallelism = parallelism;
        Job::new(graph, cfg).run().expect("job");
        let got = std::mem::take(&mut *out.lock().expect("lock"));
        assert_eq!(got.len(), 2_000);
        for (_, a, b) in &got {
            let (a_task, a_subtask) = a.rsplit_once('-').expect("a task's thread");
            let (b_task, b_subtask) = b.rsplit_once('-').expect("a task's thread");
            assert_eq!((a_task, b_task), ("cairn-source", "cairn-b"), "{a} {b}");
            assert_eq!(a_subtask, b_subtask, "each subtask feeds its own");
        }
        if parallelism == 1 {
            let g = GeneratorSource::new(2_000, 1_000, 5);
            let values: Vec<u64> = got.iter().map(|(v, _, _)| *v).collect();
            assert_eq!(values, (0..2_000).map(|n| g.key_of(n)).collect::<Vec<_>>());
        }
    }
}
