//! A hunt for bugs in side outputs and the tree of stages: side branches under every
//! checkpointing mode and backend, failures inside the side branch, savepoints and restores
//! that add or drop a side branch, the final checkpoint of a bounded job, timestamps and
//! watermarks of side records, and graph-building edge cases.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::{DiscardSink, TwoPhaseFileSink};
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointRetention, Checkpointed, CheckpointingMode, Collector, InitContext, Job,
    JobConfig, JobGraph, KeyedProcessFunction, OutputTag, ProcessFunction, RestoreFrom,
    RuntimeError, Sink, SinkContext, SnapshotContext, SnapshotMode, StateBackendConfig, Timer,
    TimerService, WatermarkStrategy, FINISHED_STATE,
};

use common::{is_late_event, write_late_events, BEHIND, LATE_EVENTS};

type Count = cairn_runtime::functions::Count<String, String>;

/// Words longer than this go to the side output `long`.
const LONG: usize = 2;

// ---------------------------------------------------------------------------------------
// Functions and sinks
// ---------------------------------------------------------------------------------------

/// Splits lines into words; long words also go into side output `long`, and (when set)
/// every word's length into side output `lengths`.
#[derive(Clone, Debug)]
struct Split {
    long: OutputTag<String>,
    lengths: Option<OutputTag<u64>>,
}

impl Checkpointed for Split {}

impl ProcessFunction<String, String> for Split {
    fn process(
        &mut self,
        line: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        for w in line.split(' ').filter(|w| !w.is_empty()) {
            if w.len() > LONG {
                out.output(&self.long, w.to_string())?;
            }
            if let Some(tag) = &self.lengths {
                out.output(tag, w.len() as u64)?;
            }
            out.collect(w.to_string())?;
        }
        Ok(())
    }
}

/// A two-phase file sink that fails when the records it has written (over every run and
/// subtask: a shared counter) reach one of `at`.
struct FailingSink<T> {
    inner: TwoPhaseFileSink<T>,
    seen: Arc<AtomicU64>,
    at: Arc<Vec<u64>>,
    /// Sleep per record (a slow sink: backpressure on its branch only).
    delay: Duration,
}

impl<T> Clone for FailingSink<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            seen: self.seen.clone(),
            at: self.at.clone(),
            delay: self.delay,
        }
    }
}

impl<T> FailingSink<T> {
    fn new(inner: TwoPhaseFileSink<T>, at: Vec<u64>, delay: Duration) -> Self {
        Self {
            inner,
            seen: Arc::new(AtomicU64::new(0)),
            at: Arc::new(at),
            delay,
        }
    }
}

impl<T> Checkpointed for FailingSink<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.inner.initialize_state(ctx)
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        self.inner.snapshot_state(ctx)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.inner.notify_checkpoint_complete(id)
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.inner.notify_checkpoint_aborted(id)
    }
}

impl<T: Send + 'static> Sink<T> for FailingSink<T>
where
    TwoPhaseFileSink<T>: Sink<T>,
{
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.at.contains(&n) {
            return Err(RuntimeError::user(
                "side-sink",
                format!("injected sink failure at record {n}"),
            ));
        }
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.inner.write(record)
    }
    fn finish(&mut self) -> cairn_runtime::Result<()> {
        self.inner.finish()
    }
}

fn string_count_sink(output: &Path) -> TwoPhaseFileSink<(String, u64)> {
    TwoPhaseFileSink::new(output, common::format_line)
}

/// How the side output `long` is read.
#[derive(Clone)]
enum SideRead {
    /// `side_output(&long).key_by(..).process("long-count")` at parallelism `p` (the
    /// side output's own exchange is keyed).
    Fused { p: Option<u32> },
    /// `side_output(&long).process("long-fail", fail)` at `p` (a rebalanced stage), then
    /// `key_by` into `long-count`.
    Rebalanced { p: Option<u32>, fail: Vec<u64> },
    /// Not read at all (the program has no side branch).
    None,
}

/// The main branch's and the side branch's settings.
#[derive(Clone)]
struct Wc {
    read: SideRead,
    /// Failures of the main branch (words seen).
    main_fail: Vec<u64>,
    /// Failures of the side sink (records written).
    sink_fail: Vec<u64>,
    sink_delay: Duration,
    count_p: Option<u32>,
}

impl Wc {
    fn plain(read: SideRead) -> Self {
        Self {
            read,
            main_fail: Vec::new(),
            sink_fail: Vec::new(),
            sink_delay: Duration::ZERO,
            count_p: None,
        }
    }
}

/// source → split (side output `long`: long words) → fail → key_by → count → sink; the
/// side branch counts each long word's occurrences by key → long-sink.
fn wordcount_with_side(input: &Path, output: &Path, long_output: &Path, wc: &Wc) -> JobGraph {
    let long = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    let side_sink = FailingSink::new(
        string_count_sink(long_output),
        wc.sink_fail.clone(),
        wc.sink_delay,
    );
    match &wc.read {
        SideRead::Fused { p } => {
            let counted = words
                .side_output(&long)
                .key_by(|w: &String| w.clone())
                .process("long-count", Count::new());
            let counted = match p {
                Some(p) => counted.parallelism(*p),
                None => counted,
            };
            counted.sink("long-sink", side_sink);
        }
        SideRead::Rebalanced { p, fail } => {
            let failing = words
                .side_output(&long)
                .process("long-fail", common::FailAt::at(fail.clone()));
            let failing = match p {
                Some(p) => failing.parallelism(*p),
                None => failing,
            };
            failing
                .key_by(|w: &String| w.clone())
                .process("long-count", Count::new())
                .sink("long-sink", side_sink);
        }
        SideRead::None => {}
    }
    let counted = words
        .process("fail", common::FailAt::at(wc.main_fail.clone()))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new());
    let counted = match wc.count_p {
        Some(p) => counted.parallelism(p),
        None => counted,
    };
    counted.sink("sink", string_count_sink(output))
}

/// The long words of `expected` with their occurrences.
fn long_words(expected: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let long: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(w, _)| w.len() > LONG)
        .map(|(w, n)| (w.clone(), *n))
        .collect();
    assert!(!long.is_empty() && long.len() < expected.len());
    long
}

struct Case {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    input: std::path::PathBuf,
    expected: BTreeMap<String, u64>,
    output: std::path::PathBuf,
    long_output: std::path::PathBuf,
}

impl Case {
    fn new(lines: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = common::write_input(dir.path(), lines, 200, 7);
        Self {
            dir: dir.path().to_path_buf(),
            output: dir.path().join("out"),
            long_output: dir.path().join("long"),
            _dir: dir,
            input,
            expected,
        }
    }

    fn graph(&self, wc: &Wc) -> JobGraph {
        wordcount_with_side(&self.input, &self.output, &self.long_output, wc)
    }

    fn check_exactly_once(&self) {
        common::check_exactly_once(&self.expected, &common::read_output(&self.output));
        common::check_exactly_once(
            &long_words(&self.expected),
            &common::read_output(&self.long_output),
        );
    }
}

/// A config at parallelism `p`: checkpoints every 20 ms, 2,000 lines/s, up to 5 restarts.
fn cfg(dir: &Path, p: u32, backend: StateBackendConfig, mode: SnapshotMode) -> JobConfig {
    let mut cfg = common::config(dir, 20);
    cfg.parallelism = p;
    cfg.backend = backend;
    cfg.checkpoint.snapshot_mode = mode;
    cfg.records_per_second = Some(2_000);
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(5, Duration::from_millis(10));
    cfg
}

// ---------------------------------------------------------------------------------------
// 1. Modes and backends
// ---------------------------------------------------------------------------------------

/// At-least-once: nothing is lost on either branch through failures in the main branch
/// and in the side branch's operator.
#[test]
fn at_least_once_side_branch_loses_nothing_through_failures() {
    let case = Case::new(3_000);
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.checkpoint.mode = CheckpointingMode::AtLeastOnce;
    let wc = Wc {
        main_fail: vec![3_000],
        ..Wc::plain(SideRead::Rebalanced {
            p: Some(3),
            fail: vec![6_000],
        })
    };
    let result = Job::new(case.graph(&wc), config).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    common::check_at_least_once(&case.expected, &common::read_output(&case.output));
    common::check_at_least_once(
        &long_words(&case.expected),
        &common::read_output(&case.long_output),
    );
}

/// Changelog snapshots under the heap backend: a failure in the side branch's operator
/// and one in the main branch; exactly once on both.
#[test]
fn changelog_heap_side_branch_failure_is_exactly_once() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
    );
    let wc = Wc {
        main_fail: vec![8_000],
        ..Wc::plain(SideRead::Rebalanced {
            p: Some(1),
            fail: vec![3_000],
        })
    };
    let result = Job::new(case.graph(&wc), config).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    case.check_exactly_once();
}

/// Changelog snapshots under RocksDB: the side sink fails twice; exactly once.
#[test]
fn changelog_rocksdb_side_sink_failure_is_exactly_once() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
    );
    let wc = Wc {
        sink_fail: vec![2_500, 7_000],
        ..Wc::plain(SideRead::Fused { p: Some(3) })
    };
    let result = Job::new(case.graph(&wc), config).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert!(
        result.restarts_restored_from.iter().all(Option::is_some),
        "{result:?}"
    );
    case.check_exactly_once();
}

/// Incremental RocksDB checkpoints, the fused keyed side stage at parallelism 1 and the
/// main count at 3, failures in both branches.
#[test]
fn incremental_rocksdb_fused_side_stage_other_parallelism_is_exactly_once() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
    );
    let wc = Wc {
        main_fail: vec![4_000],
        sink_fail: vec![6_000],
        count_p: Some(3),
        ..Wc::plain(SideRead::Fused { p: Some(1) })
    };
    let result = Job::new(case.graph(&wc), config).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    case.check_exactly_once();
}

/// Full heap checkpoints at parallelism 3: a failure in the side sink and one in the
/// side branch's operator (rebalanced stage at 2); exactly once on both branches.
#[test]
fn full_heap_side_sink_failure_exactly_once() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        3,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    let wc = Wc {
        sink_fail: vec![3_000],
        ..Wc::plain(SideRead::Rebalanced {
            p: Some(2),
            fail: vec![7_000],
        })
    };
    let result = Job::new(case.graph(&wc), config).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    case.check_exactly_once();
}

// ---------------------------------------------------------------------------------------
// 2. Unaligned checkpoints, backpressure on the side branch only
// ---------------------------------------------------------------------------------------

/// The side sink is slow (backpressure on the side branch only): unaligned checkpoints
/// still complete while the job runs, and the output is exactly once.
#[test]
fn unaligned_checkpoints_complete_with_a_slow_side_sink() {
    let case = Case::new(1_500);
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.checkpoint.unaligned = true;
    config.records_per_second = None;
    let wc = Wc {
        sink_delay: Duration::from_micros(300),
        ..Wc::plain(SideRead::Fused { p: Some(1) })
    };
    let handle = Job::new(case.graph(&wc), config).start().expect("start");
    // Checkpoints complete while the side branch is backpressured.
    let started = Instant::now();
    while handle.checkpoints_completed() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "only {} checkpoints completed in 30 s",
            handle.checkpoints_completed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let result = handle.wait().expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
}

/// Unaligned checkpoints with the side branch slow: a retained checkpoint holds in-flight
/// records at the side stage's head (the fused keyed `long-count`); restored from `latest`
/// at parallelism 3 with the side stage at 2 (was 1), everything is exactly once.
#[test]
fn inflight_records_at_a_fused_side_head_restore_at_another_parallelism() {
    let case = Case::new(4_000);
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.checkpoint.unaligned = true;
    config.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    config.records_per_second = Some(6_000);
    let wc = Wc {
        sink_delay: Duration::from_micros(500),
        ..Wc::plain(SideRead::Fused { p: Some(1) })
    };
    let (first, manifest) = common::unaligned::run_until_inflight(case.graph(&wc), &config, 1);
    assert_eq!(first.restarts, 0, "{first:?}");
    let manifest = manifest.expect("a checkpoint with in-flight records");
    let inflight = common::unaligned::inflight_by_uid(&manifest);
    assert!(
        inflight.contains_key("long-count"),
        "in-flight records at the side head: {inflight:?}"
    );

    let mut config = cfg(
        &case.dir,
        3,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Full,
    );
    config.checkpoint.unaligned = true;
    config.restore = Some(RestoreFrom::Latest);
    config.records_per_second = None;
    let wc = Wc {
        sink_fail: vec![],
        ..Wc::plain(SideRead::Fused { p: Some(2) })
    };
    let result = Job::new(case.graph(&wc), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
}

/// The same with the side output read by a rebalanced stage (in-flight records split on
/// restore) at parallelism 1, restored at 3.
#[test]
fn inflight_records_at_a_rebalanced_side_head_restore_at_another_parallelism() {
    let case = Case::new(4_000);
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
    );
    config.checkpoint.unaligned = true;
    config.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    config.records_per_second = Some(6_000);
    let wc = Wc {
        sink_delay: Duration::from_micros(500),
        ..Wc::plain(SideRead::Rebalanced {
            p: Some(1),
            fail: vec![],
        })
    };
    let (first, manifest) = common::unaligned::run_until_inflight(case.graph(&wc), &config, 1);
    assert_eq!(first.restarts, 0, "{first:?}");
    let manifest = manifest.expect("a checkpoint with in-flight records");
    let inflight = common::unaligned::inflight_by_uid(&manifest);
    assert!(
        inflight.contains_key("long-fail") || inflight.contains_key("long-count"),
        "in-flight records in the side branch: {inflight:?}"
    );

    let mut config = cfg(
        &case.dir,
        3,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Full,
    );
    config.checkpoint.unaligned = true;
    config.restore = Some(RestoreFrom::Latest);
    config.records_per_second = None;
    let wc = Wc::plain(SideRead::Rebalanced {
        p: Some(3),
        fail: vec![],
    });
    let result = Job::new(case.graph(&wc), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
}

// ---------------------------------------------------------------------------------------
// 3. Savepoints: stop, drain, and restores that drop or add a side branch
// ---------------------------------------------------------------------------------------

/// Starts `graph`, waits until it has read `lines` lines and `output` has committed
/// something, stops it with a savepoint (drained or not) and returns the savepoint.
fn stop_part_way(
    graph: JobGraph,
    config: JobConfig,
    output: &Path,
    lines: u64,
    drain: bool,
) -> String {
    let total = config.records_per_second;
    let handle = Job::new(graph, config).start().expect("start");
    let started = Instant::now();
    while handle.records_read() < lines {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing read");
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(output);
    let savepoint = if drain {
        handle.stop_with_savepoint_and_drain(None)
    } else {
        handle.stop_with_savepoint(None)
    }
    .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 0, "{first:?} ({total:?} lines/s)");
    savepoint
}

/// Stop-with-savepoint part way, restored at parallelism 3 under RocksDB with the fused
/// side stage at another parallelism (1 → 2): exactly once on both branches.
#[test]
fn stop_with_savepoint_and_restore_rescaled_is_exactly_once_on_both_branches() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    let wc = Wc::plain(SideRead::Fused { p: Some(1) });
    let savepoint = stop_part_way(case.graph(&wc), config, &case.output, 1_000, false);

    let mut config = cfg(
        &case.dir,
        3,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
    );
    config.restore = Some(RestoreFrom::Path(savepoint));
    config.records_per_second = None;
    let wc = Wc::plain(SideRead::Fused { p: Some(2) });
    let result = Job::new(case.graph(&wc), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
}

/// Stop-with-savepoint-and-drain: the drained savepoint commits the side branch's output
/// (side stages end and finish before it); restored, the job reads on, exactly once.
#[test]
fn drained_savepoint_commits_the_side_branch_and_resumes_exactly_once() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Full,
    );
    let wc = Wc::plain(SideRead::Rebalanced {
        p: Some(3),
        fail: vec![],
    });
    let savepoint = stop_part_way(case.graph(&wc), config, &case.output, 1_000, true);
    // What the drained savepoint committed: both branches continue without gaps from 1.
    let side_then = common::read_output(&case.long_output);
    assert!(
        !side_then.is_empty(),
        "the drained savepoint committed no side output"
    );
    for (w, counts) in &side_then {
        let mut c = counts.clone();
        c.sort_unstable();
        assert_eq!(c, (1..=c.len() as u64).collect::<Vec<_>>(), "side word {w}");
    }

    let mut config = cfg(
        &case.dir,
        3,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Full,
    );
    config.restore = Some(RestoreFrom::Path(savepoint));
    config.records_per_second = None;
    let result = Job::new(case.graph(&wc), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
}

/// A savepoint of a program with the side branch, restored into one without it: refused,
/// naming the side branch's operators; allowed with non-restored state, the main branch
/// is exactly once.
#[test]
fn restoring_without_the_side_branch_is_refused_unless_allowed() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    let wc = Wc::plain(SideRead::Fused { p: None });
    let savepoint = stop_part_way(case.graph(&wc), config, &case.output, 1_000, false);

    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.restore = Some(RestoreFrom::Path(savepoint.clone()));
    config.records_per_second = None;
    let without = Wc::plain(SideRead::None);
    let err = Job::new(case.graph(&without), config.clone())
        .run()
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("long-count") && err.contains("long-sink") && err.contains("non-restored"),
        "{err}"
    );

    config.allow_non_restored_state = true;
    let result = Job::new(case.graph(&without), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    common::check_exactly_once(&case.expected, &common::read_output(&case.output));
}

/// A savepoint of a program without the side branch, restored into one that adds it: the
/// new side operators start fresh (each long word counted from 1 for what comes after
/// the savepoint, once each), the main branch exactly once.
#[test]
fn restoring_into_a_program_that_adds_a_side_branch_starts_it_fresh() {
    let case = Case::new(3_000);
    let config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    let without = Wc::plain(SideRead::None);
    let savepoint = stop_part_way(case.graph(&without), config, &case.output, 1_000, false);

    let mut config = cfg(
        &case.dir,
        3,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Full,
    );
    config.restore = Some(RestoreFrom::Path(savepoint));
    config.records_per_second = None;
    let with = Wc::plain(SideRead::Fused { p: Some(2) });
    let result = Job::new(case.graph(&with), config)
        .run()
        .expect("restored run");
    assert_eq!(result.restarts, 0, "{result:?}");
    common::check_exactly_once(&case.expected, &common::read_output(&case.output));
    let long = long_words(&case.expected);
    let side = common::read_output(&case.long_output);
    assert!(!side.is_empty(), "no side output after the restore");
    let mut fewer = 0;
    for (w, counts) in &side {
        let n = *long
            .get(w)
            .unwrap_or_else(|| panic!("unexpected side word {w}"));
        let mut c = counts.clone();
        c.sort_unstable();
        assert_eq!(c, (1..=c.len() as u64).collect::<Vec<_>>(), "side word {w}");
        assert!(c.len() as u64 <= n, "side word {w}: {} > {n}", c.len());
        fewer += usize::from((c.len() as u64) < n);
    }
    assert!(
        fewer > 0,
        "the side branch counted what came before the savepoint"
    );
}

// ---------------------------------------------------------------------------------------
// 4. A bounded input that ends: the final checkpoint
// ---------------------------------------------------------------------------------------

/// Counts the words it passes on and emits the tally into side output `tally` in
/// `finish` (the end of a bounded input).
#[derive(Clone, Debug)]
struct Tally {
    tag: OutputTag<(String, u64)>,
    seen: u64,
}

/// No state: the test that uses it has no failures.
impl Checkpointed for Tally {}

impl ProcessFunction<String, String> for Tally {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        self.seen += 1;
        out.collect(w)
    }
    fn finish(&mut self, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        out.output(&self.tag, ("tally".to_string(), self.seen))
    }
}

/// source → split (side `long` → key_by → long-count at 3 → long-sink) → tally (side
/// `tally`, emitted in `finish` → tally-sink) → key_by → count → sink.
fn final_graph(case: &Case, tally_output: &Path) -> JobGraph {
    let long = OutputTag::<String>::new("long");
    let tally = OutputTag::<(String, u64)>::new("tally");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    words
        .side_output(&long)
        .key_by(|w: &String| w.clone())
        .process("long-count", Count::new())
        .parallelism(3)
        .sink("long-sink", string_count_sink(&case.long_output));
    let tallied = words.process(
        "tally",
        Tally {
            tag: tally.clone(),
            seen: 0,
        },
    );
    tallied
        .side_output(&tally)
        .sink("tally-sink", string_count_sink(tally_output));
    tallied
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", string_count_sink(&case.output))
}

/// A bounded input ends: the final checkpoint covers the side stages (every operator,
/// side ones included, marked finished in every subtask), commits what `finish` emitted
/// into a side output, and a restore from it ends at once without output.
#[test]
fn the_final_checkpoint_covers_side_stages_and_finish_output() {
    let case = Case::new(2_000);
    let tally_output = case.dir.join("tally");
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.records_per_second = Some(4_000);
    let result = Job::new(final_graph(&case, &tally_output), config.clone())
        .run()
        .expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
    let words: u64 = case.expected.values().sum();
    let tallies = common::read_output(&tally_output);
    let t = tallies.get("tally").cloned().unwrap_or_default();
    assert_eq!(t.len(), 2, "one tally per split subtask: {tallies:?}");
    assert_eq!(t.iter().sum::<u64>(), words, "{t:?}");

    let storage = cairn_storage::CheckpointStorage::open(&config.checkpoint_dir).expect("storage");
    let m = storage
        .latest_completed()
        .expect("list")
        .expect("a final checkpoint");
    let uids: Vec<&str> = m.operators.iter().map(|o| o.uid.as_str()).collect();
    for uid in [
        "long-count",
        "long-sink",
        "tally-sink",
        "tally",
        "split",
        "sink",
    ] {
        let op = m
            .operators
            .iter()
            .find(|o| o.uid == uid)
            .unwrap_or_else(|| panic!("{uid} missing from the final checkpoint: {uids:?}"));
        for (i, s) in op.subtasks.iter().enumerate() {
            assert!(
                s.operator_state.iter().any(|o| o.name == FINISHED_STATE),
                "{uid} subtask {i} not marked finished in the final checkpoint"
            );
        }
    }

    config.restore = Some(RestoreFrom::Latest);
    let again = Job::new(final_graph(&case, &tally_output), config)
        .run()
        .expect("restored from the final checkpoint");
    assert_eq!(again.restarts, 0, "{again:?}");
    case.check_exactly_once();
    assert_eq!(common::read_output(&tally_output), tallies, "no new tally");
}

// ---------------------------------------------------------------------------------------
// 5. Timestamps and watermarks of side records
// ---------------------------------------------------------------------------------------

/// Events `key time`: event n has key n % 5 and time n.
fn write_events(dir: &Path, n: u64) -> std::path::PathBuf {
    let text: String = (0..n).map(|i| format!("{} {i}\n", i % 5)).collect();
    let path = dir.join("events.txt");
    std::fs::write(&path, text).expect("write events");
    path
}

/// Copies each event into side output `copy`, checking that the collector has its time.
#[derive(Clone, Debug)]
struct CopyTs {
    copy: OutputTag<(u64, u64)>,
}

impl Checkpointed for CopyTs {}

impl ProcessFunction<(u64, u64), (u64, u64)> for CopyTs {
    fn process(
        &mut self,
        e: (u64, u64),
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        if out.timestamp() != Some(e.1) {
            return Err(RuntimeError::user(
                "copy",
                format!("event {e:?} has timestamp {:?}", out.timestamp()),
            ));
        }
        out.output(&self.copy, e)?;
        out.collect(e)
    }
}

/// Fails (fatally for the test: no restarts) when a record's timestamp is not its time.
#[derive(Clone, Debug)]
struct CheckTs;

impl Checkpointed for CheckTs {}

impl ProcessFunction<(u64, u64), (u64, u64)> for CheckTs {
    fn process(
        &mut self,
        e: (u64, u64),
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        if out.timestamp() != Some(e.1) {
            return Err(RuntimeError::Config(format!(
                "side record {e:?} has timestamp {:?} in the side stage",
                out.timestamp()
            )));
        }
        out.collect(e)
    }
}

/// Per event, an event-time timer at its time + 7; the timer emits `(key, time)` into
/// side output `fired`.
#[derive(Clone, Debug)]
struct Timers {
    fired: OutputTag<(u64, u64)>,
}

impl Checkpointed for Timers {}

impl KeyedProcessFunction for Timers {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64);
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        Ok(b.register_value(&ValueStateDescriptor::new("unused"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        _: &Self::State,
        _key: &u64,
        e: (u64, u64),
        _b: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        timers.register_event_time_timer(e.1 + 7);
        out.collect(e)
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        _: &Self::State,
        key: &u64,
        timer: Timer,
        _b: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.output(&self.fired, (*key, timer.time))
    }
}

/// What a [`TsSink`] saw.
#[derive(Default, Debug)]
struct Seen {
    records: u64,
    with_watermark: u64,
    wrong: Vec<String>,
}

/// A sink of `(key, time)` that checks the context: the timestamp is the time, and (when
/// `before`) the watermark is behind it.
#[derive(Clone)]
struct TsSink {
    seen: Arc<Mutex<Seen>>,
    before: bool,
}

impl Checkpointed for TsSink {}

impl Sink<(u64, u64)> for TsSink {
    fn write(&mut self, r: (u64, u64)) -> cairn_runtime::Result<()> {
        self.write_with_context(r, &SinkContext::default())
    }
    fn write_with_context(
        &mut self,
        r: (u64, u64),
        ctx: &SinkContext,
    ) -> cairn_runtime::Result<()> {
        let mut s = self.seen.lock().unwrap();
        s.records += 1;
        s.with_watermark += u64::from(ctx.watermark.is_some());
        let late_mark = self.before && ctx.watermark.is_some_and(|w| w >= r.1);
        if (ctx.timestamp != Some(r.1) || late_mark) && s.wrong.len() < 10 {
            s.wrong.push(format!("{r:?} with {ctx:?}"));
        }
        Ok(())
    }
}

/// Side records carry the emitting record's timestamp (a process function's copy, seen
/// by `out.timestamp()` in the side stage and by the side sink's context), an event-time
/// timer's side output has the timer's time, and side sinks see watermarks, always
/// behind their records.
#[test]
fn side_records_carry_timestamps_and_watermarks() {
    let dir = tempfile::tempdir().expect("tempdir");
    const EVENTS: u64 = 4_000;
    let input = write_events(dir.path(), EVENTS);
    let copy = OutputTag::<(u64, u64)>::new("copy");
    let fired = OutputTag::<(u64, u64)>::new("fired");
    let copies = Arc::new(Mutex::new(Seen::default()));
    let firings = Arc::new(Mutex::new(Seen::default()));
    let events = source("source", FileSource::new(&input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .process("copy", CopyTs { copy: copy.clone() });
    events
        .side_output(&copy)
        .process("check", CheckTs)
        .parallelism(3)
        .sink(
            "copy-sink",
            TsSink {
                seen: copies.clone(),
                before: true,
            },
        );
    let timed = events.key_by(|(k, _): &(u64, u64)| *k).process(
        "timers",
        Timers {
            fired: fired.clone(),
        },
    );
    timed.side_output(&fired).sink(
        "fired-sink",
        TsSink {
            seen: firings.clone(),
            before: true,
        },
    );
    let graph = timed.sink("discard", DiscardSink);
    let mut config = common::config(dir.path(), 50);
    config.parallelism = 2;
    config.records_per_second = Some(4_000);
    config.auto_watermark_interval = Duration::from_millis(10);
    config.restart = cairn_runtime::RestartStrategy::no_restarts();
    let result = Job::new(graph, config).run().expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    let copies = copies.lock().unwrap();
    let firings = firings.lock().unwrap();
    assert_eq!(copies.records, EVENTS, "{copies:?}");
    assert_eq!(firings.records, EVENTS, "{firings:?}");
    assert!(copies.wrong.is_empty(), "copies: {:?}", copies.wrong);
    assert!(firings.wrong.is_empty(), "firings: {:?}", firings.wrong);
    assert!(
        copies.with_watermark > 0,
        "no watermark reached the copy sink"
    );
    assert!(
        firings.with_watermark > 0,
        "no watermark reached the timer sink"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Graph-building edge cases
// ---------------------------------------------------------------------------------------

/// Passes words on; those starting with `prefix` also into side output `tag`.
#[derive(Clone, Debug)]
struct PrefixTap {
    tag: OutputTag<String>,
    prefix: &'static str,
}

impl Checkpointed for PrefixTap {}

impl ProcessFunction<String, String> for PrefixTap {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        if w.starts_with(self.prefix) {
            out.output(&self.tag, w.clone())?;
        }
        out.collect(w)
    }
}

/// A bounded run without checkpoints at parallelism 2 (sinks commit in `finish`).
fn plain_config(dir: &Path) -> JobConfig {
    JobConfig {
        parallelism: 2,
        checkpoint_dir: dir.join("checkpoints").display().to_string(),
        savepoint_dir: Some(dir.join("savepoints").display().to_string()),
        batch_size: 64,
        channel_capacity: 8,
        restart: cairn_runtime::RestartStrategy::fixed_delay(3, Duration::from_millis(10)),
        ..JobConfig::default()
    }
}

/// `side_output(&tag).key_by(..).process(uid, Count)` into a sink of `output`.
fn count_side(s: cairn_runtime::Stream<String>, uid: &str, sink: &str, output: &Path) -> JobGraph {
    s.key_by(|w: &String| w.clone())
        .process(uid, Count::new())
        .sink(sink, string_count_sink(output))
}

fn expected_where(
    expected: &BTreeMap<String, u64>,
    f: impl Fn(&str) -> bool,
) -> BTreeMap<String, u64> {
    expected
        .iter()
        .filter(|(w, _)| f(w))
        .map(|(w, n)| (w.clone(), *n))
        .collect()
}

/// Two tags of one operator (of two record types), a tag of the same name on a second
/// operator of the same chain, the main stream going on into `key_by`, and the job run
/// through a side branch's `JobGraph`: every branch exactly once.
#[test]
fn two_tags_of_one_operator_and_a_second_operator_of_the_chain() {
    let case = Case::new(1_500);
    let lens_output = case.dir.join("lens");
    let w1_output = case.dir.join("w1");
    let long = OutputTag::<String>::new("long");
    let lengths = OutputTag::<u64>::new("lengths");
    let w1 = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: Some(lengths.clone()),
        },
    );
    count_side(
        words.side_output(&long),
        "long-count",
        "long-sink",
        &case.long_output,
    );
    let lens = words
        .side_output(&lengths)
        .map("len-str", |n: u64| n.to_string())
        .parallelism(3);
    count_side(lens, "len-count", "len-sink", &lens_output);
    let tapped = words.process(
        "tap",
        PrefixTap {
            tag: w1.clone(),
            prefix: "w1",
        },
    );
    let w1_graph = count_side(tapped.side_output(&w1), "w1-count", "w1-sink", &w1_output);
    count_side(tapped, "count", "sink", &case.output);
    let result = Job::new(w1_graph, plain_config(&case.dir))
        .run()
        .expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
    let mut lens: BTreeMap<String, u64> = BTreeMap::new();
    for (w, n) in &case.expected {
        *lens.entry(w.len().to_string()).or_default() += n;
    }
    common::check_exactly_once(&lens, &common::read_output(&lens_output));
    common::check_exactly_once(
        &expected_where(&case.expected, |w| w.starts_with("w1")),
        &common::read_output(&w1_output),
    );
}

/// A tag the function emits into but no stream reads: its records are dropped and the
/// job runs as without it; a side output of `map` (which emits none) is an empty stream.
#[test]
fn an_unread_tag_is_dropped_and_a_silent_side_output_is_empty() {
    let case = Case::new(1_500);
    let empty_output = case.dir.join("empty");
    let long = OutputTag::<String>::new("long");
    let lengths = OutputTag::<u64>::new("lengths");
    let nothing = OutputTag::<String>::new("nothing");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: Some(lengths),
        },
    );
    count_side(
        words.side_output(&long),
        "long-count",
        "long-sink",
        &case.long_output,
    );
    let mapped = words.map("same", |w: String| w);
    count_side(
        mapped.side_output(&nothing),
        "empty-count",
        "empty-sink",
        &empty_output,
    );
    let graph = count_side(mapped, "count", "sink", &case.output);
    let result = Job::new(graph, plain_config(&case.dir)).run().expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
    assert!(common::read_output(&empty_output).is_empty());
}

/// A tag read with another record type than the function emits: the job fails at once
/// (a configuration error, no restarts) naming the operator and the tag, no panic.
#[test]
fn a_tag_read_with_the_wrong_type_fails_the_job_naming_it() {
    let case = Case::new(500);
    let long = OutputTag::<String>::new("long");
    let lengths = OutputTag::<u64>::new("lengths");
    let misread = OutputTag::<String>::new("lengths");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: Some(lengths),
        },
    );
    count_side(
        words.side_output(&misread),
        "len-count",
        "len-sink",
        &case.dir.join("l"),
    );
    let graph = count_side(words, "count", "sink", &case.output);
    let started = Instant::now();
    let err = Job::new(graph, plain_config(&case.dir))
        .run()
        .expect_err("the wrong type fails the job");
    let text = err.to_string();
    assert!(
        matches!(err, RuntimeError::Config(_)),
        "not a configuration error: {err:?}"
    );
    assert!(
        text.contains("split") && text.contains("lengths") && text.contains("u64"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A side stream of a side stream's operator (nested), the side output read through
/// `rebalance()` first (fused into its exchange), the side stage at parallelism 3.
#[test]
fn nested_side_outputs_and_a_rebalanced_side_stream() {
    let case = Case::new(1_500);
    let w1_output = case.dir.join("w1");
    let long = OutputTag::<String>::new("long");
    let w1 = OutputTag::<String>::new("w1");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    let tapped = words
        .side_output(&long)
        .rebalance()
        .process(
            "tap",
            PrefixTap {
                tag: w1.clone(),
                prefix: "w1",
            },
        )
        .parallelism(3);
    count_side(tapped.side_output(&w1), "w1-count", "w1-sink", &w1_output);
    count_side(tapped, "long-count", "long-sink", &case.long_output);
    let graph = count_side(words, "count", "sink", &case.output);
    let mut config = common::config(&case.dir, 20);
    config.parallelism = 2;
    config.records_per_second = Some(3_000);
    let result = Job::new(graph, config).run().expect("run");
    assert_eq!(result.restarts, 0, "{result:?}");
    case.check_exactly_once();
    common::check_exactly_once(
        &expected_where(&case.expected, |w| w.len() > LONG && w.starts_with("w1")),
        &common::read_output(&w1_output),
    );
}

/// A uid used in two branches is refused, naming it.
#[test]
fn a_uid_used_in_two_branches_is_refused() {
    let case = Case::new(100);
    let long = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    words
        .side_output(&long)
        .sink("sink", string_sink(&case.long_output));
    let err = Job::new(
        words.sink("sink", string_sink(&case.output)),
        plain_config(&case.dir),
    )
    .start()
    .expect_err("refused")
    .to_string();
    assert!(err.contains("sink") && err.contains("twice"), "{err}");
}

/// A side output asked of a side output's stream (which has no operator yet) is refused,
/// naming the stream it was asked of (found by this hunt: the refusal named an empty
/// operator, "side output long of operator :").
#[test]
fn a_side_output_of_a_side_stream_is_refused_naming_the_stream() {
    let case = Case::new(100);
    let long = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    let side = words.side_output(&long);
    side.side_output(&long)
        .sink("side-side", string_sink(&case.long_output));
    side.sink("side", string_sink(&case.long_output));
    let err = Job::new(
        words.sink("sink", string_sink(&case.output)),
        plain_config(&case.dir),
    )
    .start()
    .expect_err("refused")
    .to_string();
    assert!(err.contains("only a process function"), "{err}");
    assert!(
        !err.contains("of operator :") && err.contains("split"),
        "the refusal names no operator or stream: {err}"
    );
}

fn string_sink(output: &Path) -> TwoPhaseFileSink<String> {
    TwoPhaseFileSink::new(output, |s: &String, o: &mut Vec<u8>| {
        o.extend_from_slice(s.as_bytes())
    })
}

// ---------------------------------------------------------------------------------------
// 7. A failure in one branch after the other has finished
// ---------------------------------------------------------------------------------------

/// A two-phase file sink that sleeps `delay` per record and fails in `finish` while
/// `finish_failures` (shared) is positive.
struct SlowSink<T> {
    inner: TwoPhaseFileSink<T>,
    delay: Duration,
    finish_failures: Arc<AtomicU64>,
}

impl<T> Clone for SlowSink<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            delay: self.delay,
            finish_failures: self.finish_failures.clone(),
        }
    }
}

impl<T> Checkpointed for SlowSink<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.inner.initialize_state(ctx)
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        self.inner.snapshot_state(ctx)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.inner.notify_checkpoint_complete(id)
    }
    fn notify_checkpoint_aborted(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.inner.notify_checkpoint_aborted(id)
    }
}

impl<T: Send + 'static> Sink<T> for SlowSink<T>
where
    TwoPhaseFileSink<T>: Sink<T>,
{
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.inner.write(record)
    }
    fn finish(&mut self) -> cairn_runtime::Result<()> {
        let failing = self
            .finish_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(RuntimeError::user(
                "slow-sink",
                "injected failure in finish",
            ));
        }
        self.inner.finish()
    }
}

/// source → split (side `long` → key_by → long-count → long-sink) → key_by → count →
/// sink; the branch `slow_side` or not is slow and fails once in its sink's `finish`, so
/// that checkpoints complete after the other branch (and the split stage) had finished.
fn one_branch_lags(case: &Case, slow_side: bool) -> JobGraph {
    let long = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(&case.input)).process(
        "split",
        Split {
            long: long.clone(),
            lengths: None,
        },
    );
    let slow = SlowSink {
        inner: string_count_sink(if slow_side {
            &case.long_output
        } else {
            &case.output
        }),
        delay: Duration::from_micros(700),
        finish_failures: Arc::new(AtomicU64::new(1)),
    };
    let fast = SlowSink {
        inner: string_count_sink(if slow_side {
            &case.output
        } else {
            &case.long_output
        }),
        delay: Duration::ZERO,
        finish_failures: Arc::new(AtomicU64::new(0)),
    };
    let (side_sink, main_sink) = if slow_side {
        (slow, fast)
    } else {
        (fast, slow)
    };
    words
        .side_output(&long)
        .key_by(|w: &String| w.clone())
        .process("long-count", Count::new())
        .sink("long-sink", side_sink);
    words
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", main_sink)
}

/// With `check_restored`, the checkpoint the restart restored must have the other branch
/// finished and the lagging one not (unaligned checkpoints only: an aligned barrier
/// behind the lagging branch's backlog is at its very end).
fn one_branch_lags_case(slow_side: bool, unaligned: bool, check_restored: bool) {
    let case = Case::new(1_200);
    let mut config = cfg(
        &case.dir,
        2,
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
    );
    config.records_per_second = None;
    config.checkpoint.unaligned = unaligned;
    // Keep every checkpoint, to look at the one the restart restored.
    config.checkpoint.num_retained = 100_000;
    let result = Job::new(one_branch_lags(&case, slow_side), config.clone())
        .run()
        .expect("run");
    assert_eq!(result.restarts, 1, "{result:?}");
    let restored = result.restarts_restored_from[0]
        .clone()
        .expect("the restart restored a checkpoint");
    case.check_exactly_once();
    if !check_restored {
        return;
    }
    // The checkpoint it restored had the other branch finished and this one not: the
    // case this test is about.
    let id: u64 = restored
        .strip_prefix("checkpoint ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{restored}"));
    let storage = cairn_storage::CheckpointStorage::open(&config.checkpoint_dir).expect("storage");
    let m = storage.load(id).expect("the restored checkpoint");
    let finished = |uid: &str| {
        m.operators.iter().find(|o| o.uid == uid).is_some_and(|o| {
            o.subtasks
                .iter()
                .all(|s| s.operator_state.iter().any(|x| x.name == FINISHED_STATE))
        })
    };
    let (lagging, done) = if slow_side {
        ("long-sink", "sink")
    } else {
        ("sink", "long-sink")
    };
    assert!(
        finished(done) && finished("split") && !finished(lagging),
        "checkpoint {id}: {done} finished {}, {lagging} finished {}",
        finished(done),
        finished(lagging)
    );
}

/// The main branch lags and fails in its sink's `finish` after the side branch finished:
/// restored from a checkpoint in which the side stages had finished, exactly once.
#[test]
fn main_branch_fails_after_the_side_branch_finished_unaligned() {
    one_branch_lags_case(false, true, true);
}

/// The side branch lags and fails after the main branch finished: restored from a
/// checkpoint in which the main stages had finished, exactly once.
#[test]
fn side_branch_fails_after_the_main_branch_finished_unaligned() {
    one_branch_lags_case(true, true, true);
}

/// The same with aligned checkpoints (the restored checkpoint is an earlier one).
#[test]
fn side_branch_fails_after_the_main_branch_finished_aligned() {
    one_branch_lags_case(true, false, false);
}

// ---------------------------------------------------------------------------------------
// 8. Late data under the new triggers, sliding windows
// ---------------------------------------------------------------------------------------

/// Sliding 100/50 ms windows under `PurgingTrigger::of(CountTrigger::of(1))` (each record
/// fires each of its two windows once, with count 1, and is purged), late data into a
/// side output read with `key_by` (fused), through a failure: every event counted twice
/// in windows or once in the late sink, exactly.
#[test]
fn late_data_of_sliding_windows_under_a_purging_count_trigger_is_exactly_once() {
    use cairn_runtime::{CountTrigger, PurgingTrigger, SlidingEventTimeWindows};
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_late_events(dir.path());
    let output = dir.path().join("out");
    let late_output = dir.path().join("late");
    let late = OutputTag::<(u64, u64)>::new("late");
    let windows = source("source", FileSource::new(&input))
        .parallelism(1)
        .process("parse", common::ParseEvents::new(vec![2_500]))
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .parallelism(1)
        .key_by(|(k, _): &(u64, u64)| *k)
        .window(SlidingEventTimeWindows::of(
            Duration::from_millis(100),
            Duration::from_millis(50),
        ))
        .trigger(PurgingTrigger::of(CountTrigger::of(1)))
        .side_output_late_data(&late)
        .aggregate("windows", common::CountEvents);
    windows
        .side_output(&late)
        .key_by(|(k, _): &(u64, u64)| *k)
        .process("late-label", LateLabel)
        .parallelism(3)
        .sink("late-sink", common::count_sink(&late_output));
    let graph = windows
        .process("label", FnProcess(common::label_window))
        .sink("sink", common::count_sink(&output));
    let config = common::event_time_config(
        dir.path(),
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        false,
        2,
    );
    let result = Job::new(graph, config).run().expect("run");
    assert_eq!(result.restarts, 1, "{result:?}");
    let in_windows: u64 = common::read_output(&output).values().flatten().sum();
    let late_seen = common::read_output(&late_output);
    for (event, ones) in &late_seen {
        assert_eq!(ones, &vec![1], "late event {event} committed once");
        let event: u64 = event.parse().expect("late event");
        let (key, time) = (event / 1_000_000, event % 1_000_000);
        assert!(
            key >= 100 && is_late_event(time + BEHIND),
            "{key} at {time} is not late"
        );
    }
    let written_late = (0..LATE_EVENTS).filter(|n| is_late_event(*n)).count() as u64;
    assert_eq!(
        late_seen.len() as u64,
        written_late,
        "every late event in the side sink"
    );
    assert_eq!(
        in_windows,
        2 * (LATE_EVENTS - written_late),
        "each other event once in each of its two windows"
    );
}

/// `(key, time)` → `(key * 1e6 + time, 1)`, keyed.
#[derive(Clone, Debug)]
struct LateLabel;

impl Checkpointed for LateLabel {}

impl KeyedProcessFunction for LateLabel {
    type Key = u64;
    type In = (u64, u64);
    type Out = (u64, u64);
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        Ok(b.register_value(&ValueStateDescriptor::new("unused"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        _: &Self::State,
        key: &u64,
        (_, t): (u64, u64),
        _b: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.collect((key * 1_000_000 + t, 1))
    }
}

/// `rebalance().key_by(..)`: the keyed exchange replaces the round-robin one (the last
/// partitioning wins, as in Flink) and the job counts exactly once (found by this hunt:
/// the job failed at start with an anonymous "a stage without operators", since before
/// this session).
#[test]
fn rebalance_then_key_by_is_keyed_and_exactly_once() {
    let case = Case::new(300);
    let graph = source("source", FileSource::new(&case.input))
        .flat_map("tokenize", |l: String| {
            l.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .rebalance()
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", string_count_sink(&case.output));
    match Job::new(graph, plain_config(&case.dir)).run() {
        Ok(_) => common::check_exactly_once(&case.expected, &common::read_output(&case.output)),
        Err(e) => panic!("rebalance().key_by(..) failed the job: {e}"),
    }
}

/// The largest parallelism [`RecordParallelism`] was opened at.
static OPENED_AT: AtomicU64 = AtomicU64::new(0);

/// Passes lines on; records the parallelism it runs at in [`OPENED_AT`].
#[derive(Clone, Debug)]
struct RecordParallelism;

impl Checkpointed for RecordParallelism {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        OPENED_AT.fetch_max(u64::from(ctx.subtask.parallelism), Ordering::SeqCst);
        Ok(())
    }
}

impl ProcessFunction<String, String> for RecordParallelism {
    fn process(
        &mut self,
        line: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        out.collect(line)
    }
}

/// `parallelism` right after `rebalance()` sets the stage after it (the rebalance is made
/// by the next operator): the source stage keeps the job's parallelism.
#[test]
fn the_parallelism_set_after_rebalance_is_the_next_stages() {
    let case = Case::new(200);
    let graph = source("source", FileSource::new(&case.input))
        .rebalance()
        .parallelism(3)
        .process("after", RecordParallelism)
        .sink("sink", string_sink(&case.output));
    let mut cfg = plain_config(&case.dir);
    cfg.parallelism = 1;
    Job::new(graph, cfg).run().expect("run");
    assert_eq!(OPENED_AT.load(Ordering::SeqCst), 3);
}
