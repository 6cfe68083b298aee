//! Unions (Flink's `DataStream.union`): streams of several sources, or of one dataflow's
//! branches, read by one operator. Exactly-once output through failures, aligned and
//! unaligned, both backends; savepoints that restore every source's position under the
//! other backend and parallelism; a source that ends early; event time across the inputs;
//! in-flight records of both inputs; restores that add or drop a source; and the graphs a
//! union refuses.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointRetention, CheckpointingMode, Collector, Job, JobGraph, OutputTag,
    RestoreFrom, StateBackendConfig, Stream, TumblingEventTimeWindows, WatermarkStrategy,
};
use common::unaligned::{run_until_holding, slow, unaligned_retained_config, FailEvery, Gen};
use common::*;

/// Two word-count inputs in `dir/a` and `dir/b` (of different sizes and vocabularies that
/// overlap), and how often each word occurs in both together.
fn two_inputs(
    dir: &Path,
    lines_a: usize,
    lines_b: usize,
) -> (PathBuf, PathBuf, BTreeMap<String, u64>) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::create_dir_all(&b).expect("mkdir");
    let (input_a, counts_a) = write_input(&a, lines_a, 200, 7);
    let (input_b, counts_b) = write_input(&b, lines_b, 300, 11);
    (input_a, input_b, add(counts_a, &counts_b))
}

fn add(mut a: BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    for (w, n) in b {
        *a.entry(w.clone()).or_insert(0) += n;
    }
    a
}

/// The words of file source `source-<name>`, split by `tokenize-<name>`.
fn words(name: &str, input: &Path) -> Stream<String> {
    source(&format!("source-{name}"), FileSource::new(input)).flat_map(
        &format!("tokenize-{name}"),
        |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        },
    )
}

/// Where the union is read.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `a.union(b).process(fail).key_by(..)`: the union's stage starts with `fail`.
    ThenOperator,
    /// `a.process(fail).union(b).key_by(..)`: the union is keyed at once.
    Keyed,
}

/// Two word sources, unioned, counted per word into the two-phase file sink.
fn union_wordcount(a: &Path, b: &Path, output: &Path, fail: FailAt, shape: Shape) -> JobGraph {
    let keyed = match shape {
        Shape::ThenOperator => words("a", a)
            .union(words("b", b))
            .process("fail", fail)
            .key_by(|w: &String| w.clone()),
        Shape::Keyed => words("a", a)
            .process("fail", fail)
            .union(words("b", b))
            .key_by(|w: &String| w.clone()),
    };
    keyed
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

struct Case {
    backend: StateBackendConfig,
    parallelism: u32,
    unaligned: bool,
    mode: CheckpointingMode,
    shape: Shape,
    failures: Vec<u64>,
}

fn run_case(case: Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, expected) = two_inputs(dir.path(), 2000, 1500);
    let output = dir.path().join("out");
    let mut cfg = failure_config(
        dir.path(),
        case.backend,
        case.parallelism,
        case.unaligned,
        20_000,
    );
    cfg.checkpoint.mode = case.mode;
    let graph = union_wordcount(
        &a,
        &b,
        &output,
        FailAt::at(case.failures.clone()),
        case.shape,
    );
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts as usize, case.failures.len(), "{result:?}");
    assert!(result.checkpoints_completed > 0, "{result:?}");
    // (Replays after a restore count again.)
    assert!(
        result.records >= 3500,
        "both sources read every line: {result:?}"
    );
    let out = read_output(&output);
    match case.mode {
        CheckpointingMode::ExactlyOnce => check_exactly_once(&expected, &out),
        CheckpointingMode::AtLeastOnce => check_at_least_once(&expected, &out),
    }
}

#[test]
fn hashmap_aligned_p1_union_then_operator_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 1,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        shape: Shape::ThenOperator,
        failures: vec![2500, 6000],
    });
}

#[test]
fn hashmap_unaligned_p3_keyed_union_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        shape: Shape::Keyed,
        failures: vec![1500, 3500],
    });
}

#[test]
fn rocksdb_aligned_p3_keyed_union_through_a_failure() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::ExactlyOnce,
        shape: Shape::Keyed,
        failures: vec![3000],
    });
}

#[test]
fn rocksdb_unaligned_p1_union_then_operator_through_failures() {
    run_case(Case {
        backend: StateBackendConfig::rocksdb(),
        parallelism: 1,
        unaligned: true,
        mode: CheckpointingMode::ExactlyOnce,
        shape: Shape::ThenOperator,
        failures: vec![2000, 7000],
    });
}

#[test]
fn at_least_once_union_never_loses() {
    run_case(Case {
        backend: StateBackendConfig::HashMap,
        parallelism: 3,
        unaligned: false,
        mode: CheckpointingMode::AtLeastOnce,
        shape: Shape::ThenOperator,
        failures: vec![4000],
    });
}

/// Stop-with-savepoint under the hashmap backend at parallelism 2 keeps both sources'
/// positions; the job restored under RocksDB at parallelism 3 reads on from each.
#[test]
fn a_savepoint_keeps_both_sources_and_restores_under_the_other_backend_and_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, expected) = two_inputs(dir.path(), 3000, 2000);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(5_000);
    let graph = || union_wordcount(&a, &b, &output, FailAt::at(Vec::new()), Shape::Keyed);
    let handle = Job::new(graph(), cfg.clone()).start().expect("start");
    while handle.records_read() < 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert!(first.records < 5000, "stopped before the end: {first:?}");
    let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
    for uid in ["source-a", "source-b", "count"] {
        let op = manifest
            .operator(uid)
            .unwrap_or_else(|| panic!("{uid} in the savepoint"));
        assert_eq!(op.subtasks.len(), 2, "{uid}");
    }
    let mut cfg = cfg;
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(graph(), cfg).run().expect("restored run");
    assert_eq!(
        first.records + second.records,
        5000,
        "every line read once over both runs: {first:?} {second:?}"
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// A stream unioned with its own side output (a diamond): words whose count is odd go
/// round the side output, the rest straight on, and both meet again at the keyed count.
#[test]
fn a_stream_unioned_with_its_own_side_output() {
    let tag = OutputTag::<String>::new("odd");
    for (backend, unaligned) in [
        (StateBackendConfig::HashMap, true),
        (StateBackendConfig::rocksdb(), false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = write_input(dir.path(), 2000, 150, 5);
        let output = dir.path().join("out");
        let cfg = failure_config(dir.path(), backend, 2, unaligned, 20_000);
        let side = tag.clone();
        let split = words("a", &input).process(
            "split",
            FnProcess(move |w: String, out: &mut Collector<'_, String>| {
                if w.len() % 2 == 1 {
                    out.output(&side, w)
                } else {
                    out.collect(w)
                }
            }),
        );
        let odd = split
            .side_output(&tag)
            .process("fail", FailAt::at(vec![800, 2500]));
        let graph = split
            .union(odd)
            .key_by(|w: &String| w.clone())
            .process("count", Count::new())
            .sink("sink", TwoPhaseFileSink::new(&output, format_line));
        assert_eq!(
            graph.uids(),
            ["source-a", "tokenize-a", "split", "fail", "count", "sink"]
        );
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 2, "{result:?}");
        check_exactly_once(&expected, &read_output(&output));
    }
}

/// Three sources: a union of a union, either way round; the inner union's stage (which has
/// no operator) is replaced by the outer one's.
#[test]
fn unions_of_three_sources_either_way_round() {
    for nested_left in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b, two) = two_inputs(dir.path(), 800, 600);
        let c_dir = dir.path().join("c");
        std::fs::create_dir_all(&c_dir).expect("mkdir");
        let (c, counts_c) = write_input(&c_dir, 700, 100, 13);
        let expected = add(two, &counts_c);
        let output = dir.path().join("out");
        let cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 2, false, 20_000);
        let all = if nested_left {
            words("a", &a).union(words("b", &b)).union(words("c", &c))
        } else {
            words("a", &a).union(words("b", &b).union(words("c", &c)))
        };
        let graph = all
            .process("fail", FailAt::at(vec![1000, 3000]))
            .key_by(|w: &String| w.clone())
            .process("count", Count::new())
            .sink("sink", TwoPhaseFileSink::new(&output, format_line));
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 2, "{result:?}");
        assert!(result.records >= 2100, "{result:?}");
        check_exactly_once(&expected, &read_output(&output));
    }
}

/// A source that ends long before the other: the job checkpoints on (the ended source
/// takes part as finished), and a restore from a checkpoint taken after it ended does not
/// read it again.
#[test]
fn a_source_that_ends_early_is_not_read_again_after_a_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, expected) = two_inputs(dir.path(), 4000, 30);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 30);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4_000);
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    let checkpoints = dir.path().join("checkpoints");
    let graph = || union_wordcount(&a, &b, &output, FailAt::at(Vec::new()), Shape::Keyed);
    let handle = Job::new(graph(), cfg.clone()).start().expect("start");
    // Both subtasks of source b have read their 30 lines by then (the throttle deals the
    // rate over all four source subtasks).
    let first = cancel_after_checkpoints(handle, 1500, &checkpoints, 3).expect("first run");
    let latest = cairn_storage::CheckpointStorage::open(&cfg.checkpoint_dir)
        .expect("storage")
        .latest_completed()
        .expect("list")
        .expect("a checkpoint");
    let finished = |uid: &str| {
        latest.operator(uid).map_or(0, |op| {
            op.subtasks
                .iter()
                .filter(|s| {
                    s.operator_state
                        .iter()
                        .any(|o| o.name == cairn_runtime::FINISHED_STATE)
                })
                .count()
        })
    };
    assert_eq!(finished("source-b"), 2, "source b had ended: {first:?}");
    assert_eq!(finished("source-a"), 0, "source a had not");
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.records_per_second = None;
    let second = Job::new(graph(), cfg).run().expect("restored run");
    assert!(
        first.records + second.records >= 4030,
        "{first:?} {second:?}"
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// Events of two sources, `key time` lines: source b's times lag source a's by 2 s as they
/// are read. The union's watermark is the lesser of its inputs', so no event of b is late
/// (were it the greater, most of b would be dropped as late), and every window counts the
/// events of both.
#[test]
fn the_union_watermark_is_the_least_of_its_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (
        write_lagging_events(dir.path(), "a.txt", 4, 0),
        write_lagging_events(dir.path(), "b.txt", 4, 2000),
    );
    // Windows by their end.
    let expected = lagging_counts(4, |t| t / 100 * 100 + 100);
    let late = OutputTag::<(u64, u64)>::new("late");
    for (backend, unaligned) in [
        (StateBackendConfig::HashMap, false),
        (StateBackendConfig::rocksdb(), true),
    ] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let late_out = Arc::new(Mutex::new(Vec::new()));
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
        let windowed = timed("a", &a, vec![2000])
            .union(timed("b", &b, Vec::new()))
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
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(result.restarts, 1, "{result:?}");
        assert!(
            late_out.lock().expect("lock").is_empty(),
            "no event of either input is late"
        );
        let counts: BTreeMap<String, u64> = read_output(&output)
            .into_iter()
            .map(|(window, counts)| {
                assert_eq!(counts.len(), 1, "window {window} fired once: {counts:?}");
                (window, counts[0])
            })
            .collect();
        assert_eq!(counts, expected);
    }
}

/// An unaligned checkpoint holds in-flight records of both of the union's inputs on its
/// first operator; a restore at another parallelism replays them, exactly once.
#[test]
fn in_flight_records_of_both_inputs_are_replayed_after_a_rescaled_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ga, gb) = (
        Gen {
            total: 6000,
            keys: 50,
            seed: 3,
        },
        Gen {
            total: 4000,
            keys: 70,
            seed: 9,
        },
    );
    let output = dir.path().join("out");
    let graph = |delay: Duration| {
        let both = source("gen-a", ga.source()).union(source("gen-b", gb.source()));
        slow(both, "slow", delay)
            .key_by(|k: &u64| *k)
            .process("count", cairn_runtime::functions::Count::<u64, u64>::new())
            .process("fail", FailEvery::at(Vec::new()))
            .sink("sink", count_sink(&output))
    };
    let mut cfg = unaligned_retained_config(dir.path(), 2);
    let first = run_until_holding(graph(Duration::from_micros(200)), &cfg, "slow", 50);
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph(Duration::ZERO), cfg)
        .run()
        .expect("restored run");
    assert!(
        first.records + second.records >= 10_000,
        "{first:?} {second:?}"
    );
    let expected = add(ga.expected(), &gb.expected());
    check_exactly_once(&expected, &read_output(&output));
}

/// A savepoint of a job with one source restores into a job that adds a second by a
/// union (the new source starts from its beginning); a job that drops a source refuses
/// the savepoint that holds it unless non-restored state may be dropped.
#[test]
fn a_restore_may_add_a_source_and_drops_one_only_when_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, expected) = two_inputs(dir.path(), 3000, 1000);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(5_000);
    let one_source = words("a", &a)
        .process("fail", FailAt::at(Vec::new()))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(&output, format_line));
    let handle = Job::new(one_source, cfg.clone()).start().expect("start");
    while handle.records_read() < 800 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    cfg.records_per_second = Some(5_000);
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let handle = Job::new(
        union_wordcount(&a, &b, &output, FailAt::at(Vec::new()), Shape::Keyed),
        cfg.clone(),
    )
    .start()
    .expect("the job with two sources");
    while handle.records_read() < 300 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let second = handle.wait().expect("second run");

    // Without source b: refused, naming it, unless allowed.
    let only_a = || {
        words("a", &a)
            .process("fail", FailAt::at(Vec::new()))
            .key_by(|w: &String| w.clone())
            .process("count", Count::new())
            .sink("sink", TwoPhaseFileSink::new(&output, format_line))
    };
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.records_per_second = None;
    let refused = Job::new(only_a(), cfg.clone()).run().expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("source-b") && message.contains("tokenize-b"),
        "{message}"
    );
    // The same savepoint, restored with both sources, finishes the job exactly once.
    let third = Job::new(
        union_wordcount(&a, &b, &output, FailAt::at(Vec::new()), Shape::Keyed),
        cfg.clone(),
    )
    .run()
    .expect("third run");
    assert_eq!(first.records + second.records + third.records, 4000);
    check_exactly_once(&expected, &read_output(&output));
    // Allowed: source b's position is dropped, and the job finishes source a.
    cfg.allow_non_restored_state = true;
    let dropped = Job::new(only_a(), cfg).run().expect("dropping source b");
    assert!(dropped.records > 0, "{dropped:?}");
}

/// What a union refuses when the job is made, naming the streams.
#[test]
fn a_union_refuses_graphs_that_cannot_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _) = two_inputs(dir.path(), 10, 10);
    let start = |graph: JobGraph| {
        Job::new(graph, config(dir.path(), 50))
            .run()
            .expect_err("refused")
            .to_string()
    };
    let collect = || Collect(Arc::new(Mutex::new(Vec::<String>::new())));
    let tag = OutputTag::<String>::new("side");
    let split = || {
        words("a", &a).process(
            "split",
            FnProcess(|w: String, out: &mut Collector<'_, String>| out.collect(w)),
        )
    };

    // A union whose stream does not end in a sink.
    let main = split();
    let graph = main.side_output(&tag).sink("side-sink", collect());
    let _open = main.union(words("b", &b));
    let message = start(graph);
    assert!(
        message.contains(
            "the union of the stream of operator split and the stream of operator tokenize-b \
             does not end in a sink"
        ),
        "{message}"
    );

    // The same uid in both inputs.
    let twice = words("a", &a).union(words("a", &b)).sink("sink", collect());
    let message = start(twice);
    assert!(
        message.contains("operator uid source-a is used twice"),
        "{message}"
    );

    // A parallelism set on a side output's stream before a union that replaces its stage.
    let main = split();
    let side = main.side_output(&tag).parallelism(3);
    let message = start(main.union(side).sink("sink", collect()));
    assert!(
        message
            .contains("side output side of operator split: its parallelism was set before a union"),
        "{message}"
    );

    // A union emits no side outputs of its own.
    let union = words("a", &a).union(words("b", &b));
    let side = union.side_output(&tag).sink("side-sink", collect());
    let _main = union.sink("sink", collect());
    let message = start(side);
    assert!(
        message.contains("only a process function (keyed or not) or a window emits side outputs"),
        "{message}"
    );
}

/// A job's final checkpoint marks both sources and everything after them finished: the
/// same job restored from it reads nothing, and a job that adds a third source to the
/// union is refused, since it would feed operators that have finished.
#[test]
fn a_new_source_in_front_of_finished_operators_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, expected) = two_inputs(dir.path(), 300, 200);
    let output = dir.path().join("out");
    let cfg = config(dir.path(), 30);
    let graph = || union_wordcount(&a, &b, &output, FailAt::at(Vec::new()), Shape::ThenOperator);
    let first = Job::new(graph(), cfg.clone()).run().expect("first run");
    assert_eq!(first.records, 500, "{first:?}");
    check_exactly_once(&expected, &read_output(&output));

    let mut cfg = cfg;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph(), cfg.clone()).run().expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert_eq!(second.records, 0, "{second:?}");

    let three = words("a", &a)
        .union(words("b", &b))
        .union(words("c", &b))
        .process("fail", FailAt::at(Vec::new()))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(&output, format_line));
    match Job::new(three, cfg).run() {
        Err(cairn_runtime::RuntimeError::Restore { reason }) => assert!(
            reason.contains("operator fail had finished")
                && reason.contains("operator source-c upstream of it had not (or is new)"),
            "{reason}"
        ),
        other => panic!("a new source before finished operators should be refused: {other:?}"),
    }
    check_exactly_once(&expected, &read_output(&output));
}

/// Two dataflows that share no stream, run as one job (`JobGraph::and`): both go through
/// the same failures, the same savepoint and a restore under the other backend and
/// parallelism, each exactly once into its own output; uids that clash are refused.
#[test]
fn independent_dataflows_run_as_one_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b, _) = two_inputs(dir.path(), 2000, 1500);
    let count_a = read_words(&a);
    let count_b = read_words(&b);
    let (out_a, out_b) = (dir.path().join("out-a"), dir.path().join("out-b"));
    let dataflow = |name: &str, input: &Path, output: &Path, fail: FailAt| {
        words(name, input)
            .process(&format!("fail-{name}"), fail)
            .key_by(|w: &String| w.clone())
            .process(&format!("count-{name}"), Count::new())
            .sink(
                &format!("sink-{name}"),
                TwoPhaseFileSink::new(output, format_line),
            )
    };
    let both = |fail: Vec<u64>| {
        dataflow("a", &a, &out_a, FailAt::at(fail)).and(dataflow(
            "b",
            &b,
            &out_b,
            FailAt::at(Vec::new()),
        ))
    };
    let mut cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 2, false, 5_000);
    let handle = Job::new(both(vec![700]), cfg.clone())
        .start()
        .expect("start");
    while handle.records_read() < 2000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(
        first.restarts, 1,
        "a failure in one dataflow restarts both: {first:?}"
    );
    let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
    for uid in ["source-a", "count-a", "source-b", "count-b"] {
        assert!(manifest.operator(uid).is_some(), "{uid} in the savepoint");
    }
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(both(Vec::new()), cfg).run().expect("restored run");
    check_exactly_once(&count_a, &read_output(&out_a));
    check_exactly_once(&count_b, &read_output(&out_b));

    let clash = dataflow("a", &a, &out_a, FailAt::at(Vec::new())).and(dataflow(
        "a",
        &b,
        &out_b,
        FailAt::at(Vec::new()),
    ));
    let error = Job::new(clash, config(dir.path(), 50))
        .run()
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("operator uid source-a is used twice"),
        "{error}"
    );
}

/// How often each word occurs in `input`.
fn read_words(input: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for w in std::fs::read_to_string(input)
        .expect("read input")
        .split_whitespace()
    {
        *counts.entry(w.to_string()).or_insert(0) += 1;
    }
    counts
}
