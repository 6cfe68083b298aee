//! Bug hunt: metrics and checkpoint statistics at their edges. Every count is checked
//! against a model of what the job does (or against what its result says it did).

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::KeyedStateBackend;
use cairn_runtime::asyncio::{AsyncFunction, BlockingCalls, ResultFuture};
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::stats::{CheckpointStats, CheckpointStatus, SnapshotKind};
use cairn_runtime::{
    source, BroadcastProcessFunction, BroadcastState, Checkpointed, CoProcessFunction, Collector,
    Counter, InitContext, Job, JobConfig, KeyedProcessFunction, MetricReporter, MetricValue,
    Metrics, MetricsConfig, OutputTag, ProcessFunction, Sink, Source, SourceStatus, TimerService,
    TumblingEventTimeWindows, WatermarkStrategy,
};
use common::Collect;

const SEED: u64 = 71;

fn generator(total: u64, keys: u64) -> GeneratorSource {
    GeneratorSource::new(total, keys, SEED)
}

/// The values a generator emits, in all its subtasks.
fn values(total: u64, keys: u64) -> Vec<u64> {
    let g = generator(total, keys);
    (0..total).map(|n| g.key_of(n)).collect()
}

fn count(m: &Metrics, id: &str) -> i64 {
    m.count(id)
        .unwrap_or_else(|| panic!("no counter {id} in {:?}", m.values.keys()))
}

/// `numRecordsIn` and `numRecordsOut` of `uid`, each summed over its subtasks.
fn io(m: &Metrics, uid: &str) -> (i64, i64) {
    (m.sum(uid, "numRecordsIn"), m.sum(uid, "numRecordsOut"))
}

fn config(dir: &std::path::Path, parallelism: u32) -> JobConfig {
    let mut cfg = common::config(dir, 30);
    cfg.parallelism = parallelism;
    cfg
}

/// Emits every record, again those divisible by 3, and the odd ones into a side output.
#[derive(Clone)]
struct Split(OutputTag<u64>);

impl Checkpointed for Split {}

impl ProcessFunction<u64, u64> for Split {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(v)?;
        if v.is_multiple_of(3) {
            out.collect(v)?;
        }
        if v % 2 == 1 {
            out.output(&self.0, v)?;
        }
        Ok(())
    }
}

/// Records in and out of every kind of operator on a path through chains, a side output, a
/// rebalance, a union, a keyed reduce and a window, at parallelism 1 to 3: each count is
/// exactly what the model says passed, and side records are not in `numRecordsOut`.
#[test]
fn every_operator_kind_counts_exactly_at_parallelism_1_to_3() {
    const TOTAL: u64 = 1_200;
    const KEYS: u64 = 60;
    let vs = values(TOTAL, KEYS);
    let split_out: Vec<u64> = vs
        .iter()
        .flat_map(|&v| {
            if v.is_multiple_of(3) {
                vec![v, v]
            } else {
                vec![v]
            }
        })
        .collect();
    let odd: Vec<u64> = vs.iter().copied().filter(|v| v % 2 == 1).collect();
    let fm_out: u64 = split_out.iter().map(|v| v % 2 + 1).sum();
    let union_in = fm_out as i64 + odd.len() as i64;
    // The windows: key v % 7, 100 ms tumbling windows over timestamps v * 10.
    let mut windows = BTreeSet::new();
    for &v in split_out.iter() {
        for _ in 0..(v % 2 + 1) {
            windows.insert((v % 7, v * 10 / 100));
        }
    }
    for &v in &odd {
        // The side record keeps its timestamp, that of `v`.
        windows.insert(((v + 1) % 7, v * 10 / 100));
    }
    for p in 1..=3u32 {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = OutputTag::<u64>::new("odd");
        let split = source("gen", generator(TOTAL, KEYS))
            .parallelism(p)
            .assign_timestamps_and_watermarks(
                "ts",
                WatermarkStrategy::for_bounded_out_of_orderness(
                    Duration::from_secs(3_600),
                    |v: &u64| v * 10,
                ),
            )
            .process("split", Split(tag.clone()));
        let side = split
            .side_output(&tag)
            .map("side_map", |v: u64| v + 1)
            .parallelism(p);
        let main = split
            .rebalance()
            .flat_map("fm", |v: u64| vec![v; (v % 2 + 1) as usize]);
        let out = Arc::new(Mutex::new(Vec::new()));
        let graph = main
            .union(side)
            .parallelism(p)
            .map("after_union", |v: u64| v)
            .key_by(|v: &u64| v % 7)
            .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
            .reduce("win", |a, b| a + b)
            .map(
                "strip",
                |(k, w, s): (u64, cairn_runtime::TimeWindow, u64)| k * 1_000_000 + w.start + s,
            )
            .sink("sink", Collect(out.clone()));
        let r = Job::new(graph, config(dir.path(), p)).run().expect("job");
        let m = &r.metrics;
        let n = TOTAL as i64;
        assert_eq!(io(m, "gen"), (0, n), "p={p}");
        assert_eq!(io(m, "ts"), (n, n), "p={p}");
        assert_eq!(io(m, "split"), (n, split_out.len() as i64), "p={p}");
        assert_eq!(
            io(m, "side_map"),
            (odd.len() as i64, odd.len() as i64),
            "p={p}"
        );
        assert_eq!(
            io(m, "fm"),
            (split_out.len() as i64, fm_out as i64),
            "p={p}"
        );
        assert_eq!(io(m, "after_union"), (union_in, union_in), "p={p}");
        assert_eq!(io(m, "win"), (union_in, windows.len() as i64), "p={p}");
        assert_eq!(
            io(m, "strip"),
            (windows.len() as i64, windows.len() as i64),
            "p={p}"
        );
        assert_eq!(io(m, "sink"), (windows.len() as i64, 0), "p={p}");
        assert_eq!(out.lock().expect("lock").len(), windows.len());
        for uid in [
            "gen",
            "ts",
            "split",
            "side_map",
            "fm",
            "after_union",
            "win",
            "strip",
            "sink",
        ] {
            let subtasks: Vec<u32> = m.per_subtask(uid, "numRecordsIn").keys().copied().collect();
            assert_eq!(subtasks, (0..p).collect::<Vec<_>>(), "{uid} p={p}");
        }
        // Every watermark the assigner could make is before the epoch (an hour of
        // out-of-orderness): none is emitted, and the end of the input is no watermark.
        for uid in ["ts", "split", "win", "sink"] {
            for i in 0..p {
                assert_eq!(
                    m.get(&format!("{uid}.{i}.currentInputWatermark")),
                    Some(&MetricValue::Gauge(None)),
                    "{uid} p={p}"
                );
            }
        }
    }
}

/// Emits its input's records as `(which, v)`.
#[derive(Clone)]
struct Tag;

impl Checkpointed for Tag {}

impl CoProcessFunction<u64, u64, (u8, u64)> for Tag {
    fn process1(
        &mut self,
        v: u64,
        out: &mut Collector<'_, (u8, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.collect((1, v))
    }
    fn process2(
        &mut self,
        v: u64,
        out: &mut Collector<'_, (u8, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.collect((2, v))?;
        out.collect((2, v))
    }
}

/// Passes the main stream's records and emits nothing for the broadcast ones.
#[derive(Clone)]
struct PassMain;

impl Checkpointed for PassMain {}

impl BroadcastProcessFunction<(u8, u64), u64, u64> for PassMain {
    fn open(&mut self, _broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        Ok(())
    }
    fn process(
        &mut self,
        (_, v): (u8, u64),
        _broadcast: &BroadcastState,
        out: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        out.collect(v)
    }
    fn process_broadcast(
        &mut self,
        v: u64,
        _broadcast: &mut BroadcastState,
        out: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        if v == 0 {
            out.collect(u64::MAX)?;
        }
        Ok(())
    }
}

/// A connection of two sources, then a broadcast connection: a broadcast record counts
/// once as its sender's output and once per receiving subtask as the receiver's input.
#[test]
fn connect_and_broadcast_count_each_record_where_it_goes() {
    let (na, nb, nc) = (700u64, 300u64, 90u64);
    for (p, bp) in [(1u32, 1u32), (2, 3), (3, 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = source("a", generator(na, 50)).parallelism(p);
        let b = source("b", GeneratorSource::new(nb, 50, SEED + 1)).parallelism(1);
        let c = source("c", GeneratorSource::new(nc, 10, SEED + 2))
            .parallelism(2)
            .map("c_map", |v: u64| v);
        let zeros = {
            let g = GeneratorSource::new(nc, 10, SEED + 2);
            (0..nc).filter(|n| g.key_of(*n) == 0).count() as i64
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        let graph = a
            .connect(b)
            .parallelism(p)
            .process("co", Tag)
            .connect_broadcast(c.broadcast())
            .parallelism(bp)
            .process("bc", PassMain)
            .sink("sink", Collect(out.clone()));
        let r = Job::new(graph, config(dir.path(), 2)).run().expect("job");
        let m = &r.metrics;
        let co_out = (na + 2 * nb) as i64;
        assert_eq!(io(m, "co"), ((na + nb) as i64, co_out), "p={p}");
        assert_eq!(io(m, "c_map"), (nc as i64, nc as i64), "p={p}");
        assert_eq!(
            io(m, "bc"),
            (co_out + nc as i64 * bp as i64, co_out + zeros * bp as i64),
            "p={p} bp={bp}"
        );
        assert_eq!(io(m, "sink").0, co_out + zeros * bp as i64);
        assert_eq!(out.lock().expect("lock").len() as i64, io(m, "sink").0);
        assert_eq!(m.per_subtask("bc", "numRecordsIn").len(), bp as usize);
    }
}

/// Counts its even calls in a counter, on threads of its own to which it hands clones of
/// the counter (the odd ones go to a shared pool); completes each with the record twice.
#[derive(Clone)]
struct Twice {
    pool: BlockingCalls<u64, u64>,
    calls: Option<Counter>,
    threads: Option<std::sync::mpsc::SyncSender<Call>>,
}

type Call = (u64, ResultFuture<u64>, Counter);

/// Two threads that complete calls, counting each.
fn completer() -> std::sync::mpsc::SyncSender<Call> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Call>(1_024);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..2 {
        let rx = rx.clone();
        std::thread::spawn(move || loop {
            let next = rx.lock().expect("lock").recv();
            match next {
                Ok((v, result, counter)) => {
                    counter.inc();
                    result.complete(vec![v, v]);
                }
                Err(_) => return,
            }
        });
    }
    tx
}

impl Checkpointed for Twice {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.calls = Some(ctx.metrics.add_group("calls")?.counter("done")?);
        self.threads = Some(completer());
        Ok(())
    }
}

impl AsyncFunction<u64, u64> for Twice {
    fn async_invoke(&mut self, v: u64, result: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        match (&self.threads, &self.calls) {
            (Some(pool), Some(calls)) if v.is_multiple_of(2) => {
                let _ = pool.send((v, result, calls.clone()));
                Ok(())
            }
            _ => self.pool.async_invoke(v, result),
        }
    }
}

/// An asynchronous operator's input and output, ordered and unordered, and a counter its
/// own threads increment: exact at the end of the job.
#[test]
fn async_operators_count_calls_and_results() {
    const TOTAL: u64 = 800;
    let vs = values(TOTAL, 40);
    let even = vs.iter().filter(|v| *v % 2 == 0).count() as i64;
    for (ordered, p) in [(false, 1u32), (true, 2), (false, 3)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Twice {
            pool: BlockingCalls::new(3, |v: u64| Ok(vec![v, v])),
            calls: None,
            threads: None,
        };
        let s = source("gen", generator(TOTAL, 40)).parallelism(p);
        let s = if ordered {
            s.ordered_wait("lookup", f, Duration::from_secs(20), 16)
        } else {
            s.unordered_wait("lookup", f, Duration::from_secs(20), 16)
        };
        let out = Arc::new(Mutex::new(Vec::new()));
        let graph = s
            .filter("keep", |_| true)
            .sink("sink", Collect(out.clone()));
        let r = Job::new(graph, config(dir.path(), p)).run().expect("job");
        let m = &r.metrics;
        let n = TOTAL as i64;
        assert_eq!(io(m, "lookup"), (n, 2 * n), "ordered={ordered} p={p}");
        assert_eq!(io(m, "keep"), (2 * n, 2 * n));
        assert_eq!(m.sum("lookup", "calls.done"), even);
        assert_eq!(out.lock().expect("lock").len() as i64, 2 * n);
    }
}

/// A reporter that remembers every report, and fails each when `fail`.
#[derive(Clone, Default)]
struct Flaky {
    reports: Arc<Mutex<Vec<Metrics>>>,
    fail: bool,
}

impl MetricReporter for Flaky {
    fn report(&mut self, metrics: &Metrics) -> std::io::Result<()> {
        let mut r = self.reports.lock().expect("lock");
        r.push(metrics.clone());
        if self.fail {
            return Err(std::io::Error::other("the reporter is down"));
        }
        Ok(())
    }
}

/// A failing reporter goes on being called, beside a working one, with every report of a
/// zero interval; the job is unaffected, and both see the final metrics last.
#[test]
fn a_failing_reporter_and_a_zero_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = Flaky::default();
    let bad = Flaky {
        fail: true,
        ..Flaky::default()
    };
    let mut cfg = config(dir.path(), 2);
    cfg.records_per_second = Some(5_000);
    cfg.metrics = MetricsConfig::default()
        .with_reporter(bad.clone())
        .with_reporter(good.clone())
        .every(Duration::ZERO);
    let graph = source("gen", generator(1_000, 30))
        .key_by(|v: &u64| *v)
        .reduce("sum", |a, b| a + b)
        .sink("sink", Collect(Arc::default()));
    let r = Job::new(graph, cfg).run().expect("job");
    let good = good.reports.lock().expect("lock");
    let bad = bad.reports.lock().expect("lock");
    assert_eq!(good.len(), bad.len(), "both called each time");
    assert!(
        good.len() >= 10,
        "{} reports at a zero interval",
        good.len()
    );
    let last = good.last().expect("reports");
    for id in [
        "sum.0.numRecordsIn",
        "sum.1.numRecordsIn",
        "job.numRecordsRead",
    ] {
        assert_eq!(last.count(id), r.metrics.count(id), "{id}");
    }
    assert_eq!(count(last, "job.numRecordsRead"), 1_000);
    assert_eq!(
        count(last, "job.numberOfCompletedCheckpoints"),
        r.checkpoints_completed as i64
    );
    // Reports are in order: the records read never go back.
    let read: Vec<i64> = good
        .iter()
        .map(|m| count(m, "job.numRecordsRead"))
        .collect();
    assert!(read.windows(2).all(|w| w[0] <= w[1]), "{read:?}");
}

/// The generator's values `n` with `n % parallelism == subtask`, counting each it emits
/// in a user counter (not replayable: for jobs without failures).
#[derive(Clone)]
struct CountingSource {
    total: u64,
    keys: u64,
    next: u64,
    stride: u64,
    emitted: Option<Counter>,
}

impl CountingSource {
    fn new(total: u64, keys: u64) -> Self {
        Self {
            total,
            keys,
            next: 0,
            stride: 1,
            emitted: None,
        }
    }
}

impl Checkpointed for CountingSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.emitted = Some(ctx.metrics.counter("emitted")?);
        self.next = u64::from(ctx.subtask.index);
        self.stride = u64::from(ctx.subtask.parallelism);
        Ok(())
    }
}

impl Source for CountingSource {
    type Out = u64;
    fn poll(
        &mut self,
        out: &mut Collector<'_, u64>,
        max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        let g = generator(self.total, self.keys);
        for _ in 0..max {
            if self.next >= self.total {
                return Ok(SourceStatus::End);
            }
            out.collect(g.key_of(self.next))?;
            if let Some(c) = &self.emitted {
                c.inc();
            }
            self.next += self.stride;
        }
        Ok(SourceStatus::More)
    }
}

#[derive(Clone, Default)]
struct KeyedCounting {
    groups: Option<(Counter, Counter)>,
}

impl Checkpointed for KeyedCounting {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        let g = ctx.metrics.add_group("keys")?;
        let even = g.add_group("even")?.counter("n")?;
        let odd = g.add_group("odd")?.counter("n")?;
        assert_eq!(g.scope(), format!("keyed.{}.keys", ctx.subtask.index));
        self.groups = Some((even, odd));
        Ok(())
    }
}

impl KeyedProcessFunction for KeyedCounting {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ();
    fn open<B: KeyedStateBackend>(&mut self, _backend: &mut B) -> cairn_runtime::Result<()> {
        Ok(())
    }
    fn process<B: KeyedStateBackend>(
        &mut self,
        _state: &(),
        key: &u64,
        v: u64,
        _backend: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        if let Some((even, odd)) = &self.groups {
            if key.is_multiple_of(2) {
                even.inc();
            } else {
                odd.inc();
            }
        }
        out.collect(v)
    }
}

#[derive(Clone, Default)]
struct CountingSink {
    written: Option<Counter>,
    sizes: Option<cairn_runtime::Histogram>,
}

impl Checkpointed for CountingSink {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.written = Some(ctx.metrics.counter("written")?);
        self.sizes = Some(ctx.metrics.histogram("values", 1_000_000)?);
        Ok(())
    }
}

impl Sink<u64> for CountingSink {
    fn write(&mut self, v: u64) -> cairn_runtime::Result<()> {
        if let (Some(w), Some(h)) = (&self.written, &self.sizes) {
            w.inc();
            h.update(v as i64);
        }
        Ok(())
    }
}

/// User metrics of a source, a keyed function (in nested groups) and a sink agree with
/// the records, per key parity, and the histogram's statistics with the values.
#[test]
fn user_metrics_in_sources_keyed_functions_and_sinks() {
    const TOTAL: u64 = 1_500;
    let vs = values(TOTAL, 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = source("src", CountingSource::new(TOTAL, 100))
        .parallelism(2)
        .key_by(|v: &u64| *v)
        .process("keyed", KeyedCounting::default())
        .rebalance()
        .sink("sink", CountingSink::default());
    let r = Job::new(graph, config(dir.path(), 3)).run().expect("job");
    let m = &r.metrics;
    let even = vs.iter().filter(|v| *v % 2 == 0).count() as i64;
    assert_eq!(m.sum("keyed", "keys.even.n"), even);
    assert_eq!(m.sum("keyed", "keys.odd.n"), TOTAL as i64 - even);
    assert_eq!(m.sum("sink", "written"), TOTAL as i64);
    assert_eq!(m.per_subtask("src", "emitted").len(), 2);
    assert_eq!(m.sum("src", "emitted"), TOTAL as i64);
    assert_eq!(io(m, "src"), (0, TOTAL as i64));
    let mut all = 0;
    let mut mean_sum = 0.0;
    for (_, v) in m.per_subtask("sink", "values") {
        let MetricValue::Histogram(h) = v else {
            panic!("{v:?}")
        };
        all += h.count;
        mean_sum += h.mean * h.count as f64;
    }
    assert_eq!(all, TOTAL);
    let total: u64 = vs.iter().sum();
    assert!((mean_sum - total as f64).abs() < 1e-6 * total as f64);
}

/// `per_subtask` and `sum` of a uid never take in the metrics of uids that start with it
/// ("count.x", "count2", "count-a"), or whose uids look like its identifiers ("count.0",
/// "count.0.numRecordsIn").
#[test]
fn per_subtask_keeps_uids_that_share_a_prefix_apart() {
    const TOTAL: u64 = 600;
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = source("count", generator(TOTAL, 20))
        .parallelism(1)
        .map("count.x", |v: u64| v)
        .flat_map("count2", |v: u64| vec![v, v])
        .filter("count-a", |v: &u64| v.is_multiple_of(2))
        .rebalance()
        .map("count.0", |v: u64| v)
        .sink("count.0.numRecordsIn", Collect(Arc::default()));
    let r = Job::new(graph, config(dir.path(), 2)).run().expect("job");
    let m = &r.metrics;
    let even = values(TOTAL, 20).iter().filter(|v| *v % 2 == 0).count() as i64 * 2;
    let n = TOTAL as i64;
    assert_eq!(io(m, "count"), (0, n));
    assert_eq!(io(m, "count.x"), (n, n));
    assert_eq!(io(m, "count2"), (n, 2 * n));
    assert_eq!(io(m, "count-a"), (2 * n, even));
    assert_eq!(io(m, "count.0"), (even, even));
    assert_eq!(io(m, "count.0.numRecordsIn"), (even, 0));
    assert_eq!(m.per_subtask("count", "numRecordsOut").len(), 1);
    assert_eq!(m.per_subtask("count.0", "numRecordsIn").len(), 2);
}

/// A user metric whose name has unusual (non-ASCII, space, JSON-special) characters is
/// reported under that name, in the JSON lines too.
#[test]
fn unusual_metric_names() {
    #[derive(Clone)]
    struct Odd;
    impl Checkpointed for Odd {
        fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            ctx.metrics
                .add_group("grüße \"q\"")?
                .counter("a b/c\\d\n")?
                .inc_by(7);
            ctx.metrics.gauge("π", || std::f64::consts::PI)?;
            Ok(())
        }
    }
    impl ProcessFunction<u64, u64> for Odd {
        fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
            out.collect(v)
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("m.jsonl");
    let mut cfg = config(dir.path(), 1);
    cfg.metrics = MetricsConfig::default().with_reporter(
        cairn_runtime::JsonLinesReporter::to_file(&file.display().to_string()).expect("file"),
    );
    let graph = source("gen", generator(100, 5))
        .process("odd", Odd)
        .sink("sink", Collect(Arc::default()));
    let r = Job::new(graph, cfg).run().expect("job");
    let id = "odd.0.grüße \"q\".a b/c\\d\n";
    assert_eq!(r.metrics.count(id), Some(7));
    assert_eq!(r.metrics.gauge("odd.0.π"), Some(std::f64::consts::PI));
    let text = std::fs::read_to_string(&file).expect("file");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("json");
    assert_eq!(last["values"][id].as_i64(), Some(7));
}

/// Fails whenever the records it has seen over every run reach one of `at`.
#[derive(Clone)]
struct FailAt {
    seen: Arc<AtomicU64>,
    at: Vec<u64>,
}

impl FailAt {
    fn new(at: Vec<u64>) -> Self {
        Self {
            seen: Arc::default(),
            at,
        }
    }
}

impl Checkpointed for FailAt {}

impl ProcessFunction<u64, u64> for FailAt {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.at.contains(&n) {
            return Err(cairn_runtime::RuntimeError::user(
                "fail",
                format!("injected failure at {n}"),
            ));
        }
        out.collect(v)
    }
}

/// A sink whose first snapshot in the first run raises `stalling` and waits 300 ms: the
/// checkpoint is in flight meanwhile.
#[derive(Clone)]
struct Stall {
    attempt: u32,
    stalling: Arc<AtomicBool>,
}

impl Checkpointed for Stall {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.attempt = ctx.subtask.attempt;
        Ok(())
    }
    fn snapshot_state(
        &mut self,
        _ctx: &mut cairn_runtime::SnapshotContext<'_>,
    ) -> cairn_runtime::Result<()> {
        if self.attempt == 0 && !self.stalling.swap(true, Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }
}

impl Sink<u64> for Stall {
    fn write(&mut self, _: u64) -> cairn_runtime::Result<()> {
        Ok(())
    }
}

/// Fails once, at the first record it sees after `stalling` is raised.
#[derive(Clone)]
struct FailWhile {
    stalling: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl Checkpointed for FailWhile {}

impl ProcessFunction<u64, u64> for FailWhile {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        if self.stalling.load(Ordering::SeqCst) && !self.fired.swap(true, Ordering::SeqCst) {
            return Err(cairn_runtime::RuntimeError::user(
                "fail",
                "injected failure while a checkpoint is in flight",
            ));
        }
        out.collect(v)
    }
}

/// Waits up to 30 s for `done`.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "not in 30 s: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// While a failed job pauses before its restart, the checkpoint its run had in flight
/// has ended (failed) in the statistics, and the job's metrics say no checkpoint is in
/// progress either.
#[test]
fn no_checkpoint_in_progress_while_the_job_waits_to_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 1);
    cfg.records_per_second = Some(2_000);
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(1, Duration::from_millis(1_500));
    let stalling = Arc::new(AtomicBool::new(false));
    let graph = source("gen", generator(1_000_000, 10).idle_at_end())
        .process(
            "fail",
            FailWhile {
                stalling: stalling.clone(),
                fired: Arc::default(),
            },
        )
        .rebalance()
        .sink(
            "sink",
            Stall {
                attempt: 0,
                stalling,
            },
        );
    let job = Job::new(graph, cfg).start().expect("start");
    eventually("the stalled checkpoint in progress", || {
        job.metrics().count("job.numberOfInProgressCheckpoints") == Some(1)
    });
    eventually("the stalled checkpoint failed", || {
        job.checkpoint_stats().counts.failed == 1
    });
    // Once the failed run is torn down, before the restart (1.5 s later), the metric says
    // what the statistics say: nothing in progress.
    eventually("no checkpoint in progress, or the restart", || {
        let m = job.metrics();
        m.count("job.numberOfInProgressCheckpoints") == Some(0)
            || m.count("job.numRestarts") != Some(0)
    });
    let m = job.metrics();
    let s = job.checkpoint_stats();
    assert_eq!(count(&m, "job.numRestarts"), 0, "still pausing");
    assert_eq!(s.counts.in_progress, 0, "{:?}", s.counts);
    assert_eq!(count(&m, "job.numberOfInProgressCheckpoints"), 0);
    let failed = s.latest_failed.expect("the failed checkpoint");
    assert_eq!(
        (failed.kind, failed.status),
        (SnapshotKind::Checkpoint, CheckpointStatus::Failed)
    );
    // It says why it ended: the failure of the job.
    let message = failed.failure_message.as_deref().expect("why");
    assert!(
        message.contains("failed over") && message.contains("injected failure"),
        "{message}"
    );
    // Cut off by the failover, it is not one of the failed checkpoints the job's metric
    // and result count (declined, timed out, not written).
    assert_eq!(count(&m, "job.numberOfFailedCheckpoints"), 0);
    eventually("the restart", || {
        job.metrics().count("job.numRestarts") == Some(1)
    });
    job.cancel();
    let r = job.wait().expect("cancelled");
    assert!(r.cancelled);
    assert_eq!(r.restarts, 1);
    assert_eq!(r.checkpoints_failed, 0);
    assert_eq!(count(&r.metrics, "job.numberOfInProgressCheckpoints"), 0);
}

/// Invariants of one sample of the statistics.
fn check_sample(s: &CheckpointStats) {
    let c = &s.counts;
    assert_eq!(
        c.total,
        c.completed + c.failed + c.discarded + c.in_progress,
        "{c:?}"
    );
    let in_flight = s
        .history
        .iter()
        .filter(|e| e.status == CheckpointStatus::InProgress && e.kind == SnapshotKind::Checkpoint)
        .count() as u64;
    assert_eq!(in_flight, c.in_progress, "{c:?} {:?}", s.history);
    let ids: Vec<u64> = s.history.iter().map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let ended = s
        .history
        .iter()
        .filter(|e| e.status != CheckpointStatus::InProgress)
        .count();
    assert!(ended <= cairn_runtime::stats::HISTORY, "{ids:?}");
    for e in &s.history {
        assert!(e.acknowledged_subtasks <= e.num_subtasks, "{e:?}");
        assert!(e.subtasks.len() <= e.num_subtasks, "{e:?}");
        match e.status {
            CheckpointStatus::InProgress => assert!(e.end_to_end_duration_ms.is_none()),
            CheckpointStatus::Completed => {
                assert!(
                    e.failure_message.is_none() && e.external_path.is_some(),
                    "{e:?}"
                );
                assert_eq!(e.acknowledged_subtasks, e.num_subtasks, "{e:?}");
            }
            CheckpointStatus::Failed => assert!(e.failure_message.is_some(), "{e:?}"),
            CheckpointStatus::Discarded => {
                // Only checkpoints are given up, for a newer one.
                assert_eq!(e.kind, SnapshotKind::Checkpoint, "{e:?}");
                let message = e.failure_message.as_deref().unwrap_or_default();
                assert!(message.starts_with("subsumed by"), "{e:?}");
            }
        }
    }
}

/// Polled from another thread while the job runs, fails twice and restarts, with two
/// checkpoints allowed in flight: every sample of the statistics is consistent, and the
/// counters that only grow never go back, in the statistics and in the metrics.
#[test]
fn statistics_and_metrics_polled_while_the_job_restarts() {
    const TOTAL: u64 = 4_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 2);
    cfg.checkpoint.interval = Some(Duration::from_millis(10));
    cfg.checkpoint.max_concurrent = 2;
    cfg.records_per_second = Some(8_000);
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(3, Duration::from_millis(30));
    let graph = source("gen", generator(TOTAL, 50))
        .parallelism(2)
        .process("fail", FailAt::new(vec![1_200, 2_500]))
        .key_by(|v: &u64| v % 9)
        .reduce("sum", |a, b| a + b)
        .sink("sink", Collect(Arc::default()));
    let job = Arc::new(Job::new(graph, cfg).start().expect("start"));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (job, stop) = (job.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last: Option<(CheckpointStats, Metrics)> = None;
            let mut samples = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let s = job.checkpoint_stats();
                let m = job.metrics();
                check_sample(&s);
                // The metrics were read after the statistics: what both count there is
                // at least as far along.
                assert!(
                    count(&m, "job.totalNumberOfCheckpoints") >= s.counts.total as i64,
                    "{:?}",
                    s.counts
                );
                assert!(count(&m, "job.numberOfCompletedCheckpoints") >= s.counts.completed as i64);
                if let Some((ls, lm)) = &last {
                    let (a, b) = (&ls.counts, &s.counts);
                    assert!(
                        b.total >= a.total
                            && b.completed >= a.completed
                            && b.failed >= a.failed
                            && b.discarded >= a.discarded
                            && b.restored >= a.restored,
                        "{a:?} then {b:?}"
                    );
                    for id in [
                        "job.numRestarts",
                        "job.numberOfCompletedCheckpoints",
                        "job.numberOfFailedCheckpoints",
                        "job.totalNumberOfCheckpoints",
                        "job.numRecordsRead",
                        "job.uptime",
                    ] {
                        assert!(count(&m, id) >= count(lm, id), "{id} went back");
                    }
                    let ids = |s: &CheckpointStats| s.latest_completed.as_ref().map(|e| e.id);
                    assert!(ids(&s) >= ids(ls));
                }
                last = Some((s, m));
                samples += 1;
            }
            samples
        })
    };
    // Sample through both failures and restarts, and most of the last run.
    eventually("two restarts and most of the input", || {
        job.metrics().count("job.numRestarts") == Some(2)
            && job.checkpoint_stats().counts.completed >= 3
            && !poller.is_finished()
    });
    stop.store(true, Ordering::SeqCst);
    let samples = poller.join().expect("the poller saw consistent samples");
    assert!(samples > 10, "{samples} samples");
    let job = Arc::try_unwrap(job).expect("the poller let go");
    let r = job.wait().expect("job");
    assert_eq!(r.restarts, 2);
    let s = &r.checkpoint_stats;
    check_sample(s);
    let c = &s.counts;
    assert_eq!(c.in_progress, 0);
    assert_eq!(c.completed, r.checkpoints_completed);
    assert_eq!(c.discarded, r.checkpoints_subsumed);
    assert!(c.failed >= r.checkpoints_failed, "{c:?}");
    let restored = r.restarts_restored_from.iter().flatten().count() as u64;
    assert_eq!(c.restored, restored);
    let m = &r.metrics;
    assert_eq!(count(m, "job.totalNumberOfCheckpoints"), c.total as i64);
    assert_eq!(
        count(m, "job.numberOfCompletedCheckpoints"),
        c.completed as i64
    );
    assert_eq!(
        count(m, "job.numberOfFailedCheckpoints"),
        r.checkpoints_failed as i64
    );
    assert_eq!(count(m, "job.numRestarts"), 2);
    assert_eq!(
        m.gauge("job.lastCompletedCheckpointId"),
        s.latest_completed.as_ref().map(|e| e.id as f64)
    );
    assert_eq!(
        m.gauge("job.lastCheckpointSize"),
        s.latest_completed
            .as_ref()
            .and_then(|e| e.checkpointed_size)
            .map(|b| b as f64)
    );
    // The last run's operators: what its sources read after the restore.
    assert_eq!(io(m, "fail").0, m.sum("gen", "numRecordsOut"));
    for e in &s.history {
        assert_ne!(e.status, CheckpointStatus::InProgress, "{e:?}");
    }
}

/// A savepoint asked for into a directory that cannot be made (its parent is a file)
/// fails, and the statistics say so: it is the latest failure, a savepoint, in the
/// history; the checkpoint counts do not move for it.
#[test]
fn a_savepoint_that_cannot_be_written_is_a_failed_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 1);
    cfg.records_per_second = Some(2_000);
    let graph = source("gen", generator(1_000_000, 10).idle_at_end())
        .map("m", |v: u64| v)
        .sink("sink", Collect(Arc::default()));
    let job = Job::new(graph, cfg).start().expect("start");
    eventually("a checkpoint", || {
        job.checkpoint_stats().counts.completed >= 1
    });
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("file");
    let target = file.join("savepoints");
    let err = job
        .trigger_savepoint(Some(&target.display().to_string()))
        .expect_err("no directory under a file");
    let s = job.checkpoint_stats();
    let m = job.metrics();
    job.cancel();
    let r = job.wait().expect("cancelled");
    check_sample(&s);
    let failed = s.latest_failed.as_ref().expect("the failed savepoint");
    assert_eq!(failed.kind, SnapshotKind::Savepoint, "{failed:?}");
    assert_eq!(failed.status, CheckpointStatus::Failed);
    let message = failed.failure_message.as_deref().expect("why");
    assert!(err.to_string().contains(message), "{err} / {message}");
    assert!(s.history.iter().any(|e| e.id == failed.id));
    assert!(s.latest_savepoint.is_none());
    assert_eq!(count(&m, "job.numberOfFailedCheckpoints"), 0);
    assert_eq!(s.counts.failed, 0, "savepoints are not counted");
    assert!(r.cancelled);
}

/// After a cancellation, a stop with a savepoint and a drained stop, the final metrics
/// agree with what the sources read: a chained operator took in every record read, and
/// the records in flight at the end are the only ones the sink did not get.
#[test]
fn metrics_after_cancel_stop_and_drain() {
    const TOTAL: u64 = 1_000_000;
    for how in ["cancel", "stop", "drain"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path(), 2);
        cfg.records_per_second = Some(4_000);
        let out = Arc::new(Mutex::new(Vec::new()));
        let graph = source("gen", generator(TOTAL, 10))
            .parallelism(2)
            .map("m", |v: u64| v)
            .rebalance()
            .map("after", |v: u64| v)
            .sink("sink", Collect(out.clone()));
        let job = Job::new(graph, cfg).start().expect("start");
        eventually("checkpoints and records", || {
            job.checkpoint_stats().counts.completed >= 2 && job.records_read() > 500
        });
        let path = match how {
            "cancel" => {
                job.cancel();
                None
            }
            "stop" => Some(job.stop_with_savepoint(None).expect("stop")),
            _ => Some(job.stop_with_savepoint_and_drain(None).expect("drain")),
        };
        let r = job.wait().expect("job");
        let m = &r.metrics;
        let read = r.records as i64;
        assert_eq!(count(m, "job.numRecordsRead"), read, "{how}");
        // The chained operator took in every record read (the same thread counts both).
        assert_eq!(io(m, "m").0, read, "{how}");
        assert_eq!(m.sum("gen", "numRecordsOut"), read, "{how}");
        assert_eq!(count(m, "job.numberOfInProgressCheckpoints"), 0, "{how}");
        let sunk = out.lock().expect("lock").len() as i64;
        assert_eq!(io(m, "sink").0, sunk, "{how}");
        assert_eq!(io(m, "after"), (sunk, sunk), "{how}");
        let s = &r.checkpoint_stats;
        check_sample(s);
        assert_eq!(s.counts.completed, r.checkpoints_completed, "{how}");
        match how {
            "cancel" => {
                // What was sent is at most what was read, and what arrived at most
                // what was sent (a cancellation drops what is in flight).
                assert!(r.cancelled);
                let sent = io(m, "m").1;
                assert!(sent <= read && sunk <= sent, "{sent} {sunk} {read}");
            }
            _ => {
                // A stop delivers every record read before its savepoint.
                assert_eq!(io(m, "m").1, read, "{how}");
                assert_eq!(sunk, read, "{how}");
                let sp = s.latest_savepoint.as_ref().expect("the savepoint");
                assert_eq!(sp.external_path, path, "{how}");
                assert_eq!(sp.status, CheckpointStatus::Completed);
                assert_eq!(s.history[0].id, sp.id, "the newest entry");
                assert_eq!(r.savepoint, path);
            }
        }
    }
}

/// A job restored from a savepoint at another parallelism: its operator metrics count
/// its own records only, at its parallelism; it says what it restored from and when.
#[test]
fn metrics_of_a_job_restored_at_another_parallelism() {
    const TOTAL: u64 = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = |p: u32| {
        source("gen", generator(TOTAL, 40))
            .parallelism(p)
            .map("m", |v: u64| v)
            .key_by(|v: &u64| v % 13)
            .reduce("sum", |a, b| a + b)
            .sink("sink", Collect(Arc::default()))
    };
    let mut cfg = config(dir.path(), 2);
    cfg.records_per_second = Some(4_000);
    let job = Job::new(graph(2), cfg).start().expect("start");
    eventually("some records", || job.records_read() > 600);
    let path = job.stop_with_savepoint(None).expect("stop");
    let first = job.wait().expect("first");
    assert!(first.records < TOTAL);
    let mut cfg = config(dir.path(), 3);
    cfg.checkpoint_dir = dir.path().join("second").display().to_string();
    cfg.restore = Some(cairn_runtime::RestoreFrom::Path(path.clone()));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as f64;
    let r = Job::new(graph(3), cfg).run().expect("restored");
    let m = &r.metrics;
    let rest = (TOTAL - first.records) as i64;
    assert_eq!(r.records as i64, rest);
    assert_eq!(io(m, "m"), (rest, rest));
    assert_eq!(m.per_subtask("m", "numRecordsIn").len(), 3);
    assert_eq!(io(m, "sum"), (rest, rest));
    assert_eq!(m.per_subtask("sum", "numRecordsIn").len(), 3);
    assert_eq!(count(m, "job.numRestarts"), 0);
    let restored_at = m
        .gauge("job.lastCheckpointRestoreTimestamp")
        .expect("restored");
    assert!(restored_at >= before, "{restored_at} < {before}");
    let s = &r.checkpoint_stats;
    assert_eq!(s.counts.restored, 1);
    let restored = s.latest_restored.as_ref().expect("restored");
    assert_eq!(restored.description, format!("savepoint {path}"));
    assert_eq!(restored.restore_timestamp_ms as f64, restored_at);
    // The first job, for its part, restored from nothing.
    assert!(first
        .metrics
        .gauge("job.lastCheckpointRestoreTimestamp")
        .is_none());
    assert_eq!(first.checkpoint_stats.counts.restored, 0);
}

/// A gauge that reads another metric of its group through the group (registering it at
/// the first call): reading the metrics must not deadlock.
#[derive(Clone)]
struct Reentrant;

impl Checkpointed for Reentrant {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        let group = ctx.metrics.clone();
        ctx.metrics.counter("hits")?.inc_by(3);
        ctx.metrics.gauge("hits_again", move || {
            group.counter("hits").map_or(-1.0, |c| c.count() as f64)
        })
    }
}

impl ProcessFunction<u64, u64> for Reentrant {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(v)
    }
}

#[test]
fn a_gauge_that_reads_its_group_does_not_deadlock_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = source("gen", generator(500, 10))
        .process("re", Reentrant)
        .sink("sink", Collect(Arc::default()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(Job::new(graph, config(dir.path(), 1)).run());
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the job ended (no deadlock reading its metrics)")
        .expect("job");
    assert_eq!(r.metrics.gauge("re.0.hits_again"), Some(3.0));
}

/// A gauge that panics when read: the job is unaffected (its value reads as none), and so
/// is a reader of the metrics.
#[derive(Clone)]
struct Panicky;

impl Checkpointed for Panicky {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        ctx.metrics
            .gauge("boom", || panic!("a gauge that panics"))?;
        ctx.metrics.counter("fine")?.inc();
        Ok(())
    }
}

impl ProcessFunction<u64, u64> for Panicky {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(v)
    }
}

#[test]
fn a_panicking_gauge_does_not_fail_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reports = Flaky::default();
    let mut cfg = config(dir.path(), 1);
    cfg.metrics = MetricsConfig::default()
        .with_reporter(reports.clone())
        .every(Duration::from_millis(20));
    cfg.records_per_second = Some(5_000);
    let graph = source("gen", generator(1_000, 10))
        .process("p", Panicky)
        .sink("sink", Collect(Arc::default()));
    let r = Job::new(graph, cfg).run().expect("job");
    assert_eq!(r.metrics.get("p.0.boom"), Some(&MetricValue::Gauge(None)));
    assert_eq!(r.metrics.count("p.0.fine"), Some(1));
    assert_eq!(count(&r.metrics, "p.0.numRecordsIn"), 1_000);
    let reports = reports.reports.lock().expect("lock");
    // Reported while the job ran, and once more at its end.
    assert!(reports.len() >= 2, "{}", reports.len());
    let last = reports.last().expect("reports");
    assert_eq!(last.get("p.0.boom"), Some(&MetricValue::Gauge(None)));
    assert_eq!(last.count("p.0.numRecordsIn"), Some(1_000));
}

/// A reporter that panics: the job is unaffected, and the reporter is called again.
#[derive(Clone, Default)]
struct PanickingReporter(Arc<AtomicUsize>);

impl MetricReporter for PanickingReporter {
    fn report(&mut self, _: &Metrics) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("a reporter that panics");
    }
}

#[test]
fn a_panicking_reporter_does_not_fail_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let calls = PanickingReporter::default();
    let mut cfg = config(dir.path(), 1);
    cfg.metrics = MetricsConfig::default()
        .with_reporter(calls.clone())
        .every(Duration::from_millis(5));
    cfg.records_per_second = Some(5_000);
    let graph = source("gen", generator(1_000, 10))
        .map("m", |v: u64| v)
        .sink("sink", Collect(Arc::default()));
    let r = Job::new(graph, cfg).run().expect("job");
    assert_eq!(count(&r.metrics, "m.0.numRecordsIn"), 1_000);
    // Called again after it panicked: while the job ran, and at its end.
    assert!(calls.0.load(Ordering::SeqCst) >= 2);
}

/// A sink whose first `slow` snapshots (over its subtasks) take 25 ms each.
#[derive(Clone)]
struct SlowSnapshots {
    slow: u64,
    taken: Arc<AtomicU64>,
}

impl Checkpointed for SlowSnapshots {
    fn snapshot_state(
        &mut self,
        _ctx: &mut cairn_runtime::SnapshotContext<'_>,
    ) -> cairn_runtime::Result<()> {
        if self.taken.fetch_add(1, Ordering::SeqCst) < self.slow {
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}

impl Sink<u64> for SlowSnapshots {
    fn write(&mut self, _: u64) -> cairn_runtime::Result<()> {
        Ok(())
    }
}

/// Checkpoints that time out (tolerated): the job's metric, the statistics and the
/// result count the same failures, each entry says it timed out, and the counts add up.
#[test]
fn timed_out_checkpoints_are_counted_alike_everywhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 1);
    cfg.checkpoint.interval = Some(Duration::from_millis(5));
    cfg.checkpoint.timeout = Duration::from_millis(15);
    cfg.checkpoint.tolerable_failures = u32::MAX;
    cfg.checkpoint.max_concurrent = 3;
    cfg.records_per_second = Some(3_000);
    let graph = source("gen", generator(1_500, 10)).rebalance().sink(
        "sink",
        SlowSnapshots {
            slow: 8,
            taken: Arc::default(),
        },
    );
    let r = Job::new(graph, cfg).run().expect("job");
    let s = &r.checkpoint_stats;
    check_sample(s);
    let c = &s.counts;
    assert!(c.failed > 0, "{c:?}");
    assert_eq!(c.failed, r.checkpoints_failed, "{c:?}");
    assert_eq!(
        count(&r.metrics, "job.numberOfFailedCheckpoints"),
        c.failed as i64
    );
    assert_eq!(c.completed, r.checkpoints_completed);
    assert_eq!(c.discarded, r.checkpoints_subsumed);
    assert_eq!(
        count(&r.metrics, "job.totalNumberOfCheckpoints"),
        c.total as i64
    );
    let failed = s.latest_failed.as_ref().expect("a failure");
    assert!(
        failed
            .failure_message
            .as_deref()
            .is_some_and(|m| m.contains("timed out")),
        "{failed:?}"
    );
    assert!(failed.end_to_end_duration_ms.expect("duration") >= 15.0);
}

/// A long run's history keeps exactly the ten newest checkpoints, and the summary is
/// over every completed checkpoint: its sizes are the smallest, mean and largest of
/// those the result lists.
#[test]
fn a_long_runs_history_and_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 2);
    cfg.checkpoint.interval = Some(Duration::from_millis(2));
    cfg.records_per_second = Some(4_000);
    let graph = source("gen", generator(6_000, 500))
        .key_by(|v: &u64| *v)
        .reduce("sum", |a, b| a + b)
        .sink("sink", Collect(Arc::default()));
    let r = Job::new(graph, cfg).run().expect("job");
    let s = &r.checkpoint_stats;
    check_sample(s);
    let c = &s.counts;
    assert!(
        c.completed > cairn_runtime::stats::HISTORY as u64 + 2,
        "{c:?}"
    );
    // Nothing failed; the final checkpoint may have given one in flight up.
    assert_eq!(c.failed, 0, "{c:?}");
    assert_eq!(c.discarded, r.checkpoints_subsumed, "{c:?}");
    assert_eq!(c.total, c.completed + c.discarded, "{c:?}");
    // Ids 1 to total, all checkpoints: the history is the last ten.
    let ids: Vec<u64> = s.history.iter().map(|e| e.id).collect();
    assert_eq!(ids, (c.total - 9..=c.total).rev().collect::<Vec<_>>());
    assert_eq!(s.latest_completed.as_ref().map(|e| e.id), Some(c.total));
    let bytes: Vec<f64> = r.checkpoint_bytes.iter().map(|&b| b as f64).collect();
    assert_eq!(bytes.len() as u64, c.completed);
    let sizes = &s.summary.checkpointed_size;
    let min = bytes.iter().copied().fold(f64::INFINITY, f64::min);
    let max = bytes.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = bytes.iter().sum::<f64>() / bytes.len() as f64;
    assert_eq!((sizes.min, sizes.max), (min, max));
    assert!(
        (sizes.avg - mean).abs() <= 1e-9 * mean.max(1.0),
        "{sizes:?} {mean}"
    );
    let durations = &s.summary.end_to_end_duration_ms;
    assert!(durations.min <= durations.avg && durations.avg <= durations.max);
    let longest = r
        .checkpoint_durations_ms
        .iter()
        .copied()
        .fold(0.0f64, f64::max);
    assert!(durations.max >= longest, "{durations:?} {longest}");
}

/// Exact counts in at-least-once mode and with unaligned checkpoints under backpressure
/// (in-flight records are counted once, when processed).
#[test]
fn exact_counts_at_least_once_and_unaligned() {
    const TOTAL: u64 = 2_000;
    for unaligned in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(dir.path(), 2);
        cfg.checkpoint.interval = Some(Duration::from_millis(5));
        if unaligned {
            cfg.checkpoint.unaligned = true;
            cfg.batch_size = 4;
            cfg.channel_capacity = 2;
        } else {
            cfg.checkpoint.mode = cairn_runtime::CheckpointingMode::AtLeastOnce;
        }
        let graph = source("gen", generator(TOTAL, 30))
            .parallelism(2)
            .flat_map("fm", |v: u64| vec![v; (v % 3) as usize])
            .key_by(|v: &u64| *v)
            .reduce("sum", |a, b| a + b)
            .map("slow", |r: (u64, u64)| {
                std::thread::sleep(Duration::from_micros(50));
                r
            })
            .sink("sink", Collect(Arc::default()));
        let r = Job::new(graph, cfg).run().expect("job");
        let m = &r.metrics;
        let out: i64 = values(TOTAL, 30).iter().map(|v| (v % 3) as i64).sum();
        assert_eq!(io(m, "fm"), (TOTAL as i64, out), "unaligned={unaligned}");
        assert_eq!(io(m, "sum"), (out, out));
        assert_eq!(io(m, "slow"), (out, out));
        assert_eq!(io(m, "sink"), (out, 0));
        let s = &r.checkpoint_stats;
        check_sample(s);
        assert_eq!(s.counts.completed, r.checkpoints_completed);
        if !unaligned {
            assert!(s.history.iter().all(|e| !e.unaligned));
        }
    }
}
