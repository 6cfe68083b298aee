//! Metrics end to end: the runtime's own (records in and out of every operator, watermarks,
//! where a task's time goes, the job's checkpoints and restarts), the metrics user
//! functions register, and a reporter's lines, each checked against what the job did.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_runtime::function::FnProcess;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Counter, Histogram, InitContext, Job, JobConfig, JobResult,
    JsonLinesReporter, Meter, MetricValue, Metrics, MetricsConfig, ProcessFunction, Sink,
    StateBackendConfig, WatermarkStrategy,
};
use common::Collect;

const TOTAL: u64 = 3_000;
const KEYS: u64 = 500;
const SEED: u64 = 45;

fn generator() -> GeneratorSource {
    GeneratorSource::new(TOTAL, KEYS, SEED)
}

fn records() -> Vec<u64> {
    let g = generator();
    (0..TOTAL).map(|n| g.key_of(n)).collect()
}

fn config(dir: &std::path::Path, backend: StateBackendConfig) -> JobConfig {
    let mut cfg = common::config(dir, 30);
    cfg.parallelism = 2;
    cfg.backend = backend;
    cfg
}

fn count(m: &Metrics, id: &str) -> i64 {
    m.count(id)
        .unwrap_or_else(|| panic!("no counter {id} in {:?}", m.values.keys()))
}

/// Emits each record twice.
fn double(v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
    out.collect(v)?;
    out.collect(v)
}

/// Every operator's numRecordsIn and numRecordsOut are exactly what passed through it, in
/// each subtask (a keyed reduce emits once per record; a chained filter after it passes
/// the even sums), under both backends; the job's checkpoint metrics agree with its result.
#[test]
fn records_in_and_out_of_every_operator() {
    // The model: the sums the reduce emits (each record twice, keyed by v % 7).
    let mut sums: BTreeMap<u64, u64> = BTreeMap::new();
    let mut evens = 0i64;
    for v in records() {
        for _ in 0..2 {
            let s = sums.entry(v % 7).or_default();
            *s += v;
            if s.is_multiple_of(2) {
                evens += 1;
            }
        }
    }
    for backend in [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let graph = source("source", generator())
            .parallelism(1)
            .process("double", FnProcess(double))
            .key_by(|v: &u64| v % 7)
            .reduce("sum", |a, b| a + b)
            .filter("evens", |(_, s): &(u64, u64)| s.is_multiple_of(2))
            .sink("sink", Collect(out.clone()));
        let r = Job::new(graph, config(dir.path(), backend.clone()))
            .run()
            .expect("job");
        let m = &r.metrics;
        assert_eq!(out.lock().expect("lock").len() as i64, evens);
        assert_eq!(count(m, "source.0.numRecordsOut"), TOTAL as i64);
        assert_eq!(count(m, "double.0.numRecordsIn"), TOTAL as i64);
        assert_eq!(count(m, "double.0.numRecordsOut"), 2 * TOTAL as i64);
        assert_eq!(
            m.sum("sum", "numRecordsIn"),
            2 * TOTAL as i64,
            "{backend:?}"
        );
        assert_eq!(m.sum("sum", "numRecordsOut"), 2 * TOTAL as i64);
        assert_eq!(m.sum("evens", "numRecordsIn"), 2 * TOTAL as i64);
        assert_eq!(m.sum("evens", "numRecordsOut"), evens);
        assert_eq!(m.sum("sink", "numRecordsIn"), evens);
        for i in 0..2 {
            let sum_in = count(m, &format!("sum.{i}.numRecordsIn"));
            assert!(sum_in > 0, "both subtasks have keys");
            assert_eq!(count(m, &format!("sum.{i}.numRecordsOut")), sum_in);
            assert_eq!(count(m, &format!("evens.{i}.numRecordsIn")), sum_in);
            assert_eq!(
                count(m, &format!("evens.{i}.numRecordsOut")),
                count(m, &format!("sink.{i}.numRecordsIn"))
            );
        }
        assert_eq!(m.per_subtask("sum", "numRecordsIn").len(), 2);
        // The source has no input of its own; the sink has no main output.
        assert_eq!(count(m, "source.0.numRecordsIn"), 0);
        assert!(m.get("sink.0.numRecordsOut").is_none());
        // Task metrics sit with the first operator of each task.
        for id in ["source.0", "sum.0", "sum.1"] {
            for name in ["idleTimeMs", "backPressuredTimeMs"] {
                let v = m.gauge(&format!("{id}.{name}")).expect(name);
                assert!(
                    v >= 0.0 && v <= r.wall_s * 1000.0 + 1.0,
                    "{id}.{name} = {v}"
                );
            }
            assert!(m.get(&format!("{id}.busyTimeMsPerSecond")).is_some());
        }
        assert!(
            m.get("double.0.idleTimeMs").is_none(),
            "chained: not a task head"
        );
        check_job_metrics(&r, 0);
    }
}

/// The job's metrics agree with what its result says.
fn check_job_metrics(r: &JobResult, restarts: i64) {
    let m = &r.metrics;
    assert_eq!(count(m, "job.numRestarts"), restarts);
    assert_eq!(
        count(m, "job.numberOfCompletedCheckpoints"),
        r.checkpoints_completed as i64
    );
    assert!(
        r.checkpoints_completed >= 1,
        "the final checkpoint at least"
    );
    assert_eq!(
        count(m, "job.numberOfFailedCheckpoints"),
        r.checkpoints_failed as i64
    );
    assert_eq!(count(m, "job.numberOfInProgressCheckpoints"), 0);
    let total = count(m, "job.totalNumberOfCheckpoints");
    assert!(
        total >= (r.checkpoints_completed + r.checkpoints_failed) as i64,
        "{total} triggered"
    );
    assert_eq!(count(m, "job.numRecordsRead"), r.records as i64);
    let last = m.gauge("job.lastCheckpointDuration").expect("duration");
    assert_eq!(Some(&last), r.checkpoint_durations_ms.last());
    let size = m.gauge("job.lastCheckpointSize").expect("size");
    assert_eq!(Some(size as u64), r.checkpoint_bytes.last().copied());
    let full = m.gauge("job.lastCheckpointFullSize").expect("full size");
    assert!(full >= size, "full {full} < added {size}");
    let id = m.gauge("job.lastCompletedCheckpointId").expect("id");
    assert!(id >= r.checkpoints_completed as f64);
    assert!(count(m, "job.uptime") as f64 <= r.wall_s * 1000.0 + 1.0);
}

/// A function with one metric of each kind.
#[derive(Clone, Default)]
struct Measured {
    seen: Option<Counter>,
    rate: Option<Meter>,
    values: Option<Histogram>,
    last: Arc<AtomicU64>,
}

impl Checkpointed for Measured {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.seen = Some(ctx.metrics.counter("seen")?);
        self.rate = Some(ctx.metrics.meter("rate")?);
        self.values = Some(ctx.metrics.add_group("values")?.histogram("keys", 100)?);
        // Each subtask its own gauge's value.
        self.last = Arc::default();
        let last = self.last.clone();
        ctx.metrics
            .gauge("last", move || last.load(Ordering::Relaxed) as f64)?;
        Ok(())
    }
}

impl ProcessFunction<u64, u64> for Measured {
    fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        if let (Some(seen), Some(rate), Some(values)) = (&self.seen, &self.rate, &self.values) {
            seen.inc();
            rate.mark_event();
            values.update(v as i64);
        }
        self.last.store(v, Ordering::Relaxed);
        out.collect(v)
    }
}

/// A user function's counter, meter, histogram and gauge, per subtask, through a reporter
/// writing JSON lines: every line parses, uptime grows from line to line, and the last line
/// is the job's final metrics.
#[test]
fn user_metrics_reach_a_reporter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("metrics.jsonl");
    let mut cfg = config(dir.path(), StateBackendConfig::HashMap);
    cfg.records_per_second = Some(6_000);
    cfg.metrics = MetricsConfig::default()
        .with_reporter(JsonLinesReporter::to_file(&file.display().to_string()).expect("file"))
        .every(Duration::from_millis(40));
    let out = Arc::new(Mutex::new(Vec::new()));
    let graph = source("source", generator())
        .parallelism(1)
        .rebalance()
        .process("measured", Measured::default())
        .sink("sink", Collect(out.clone()));
    let r = Job::new(graph, cfg).run().expect("job");
    let m = &r.metrics;
    assert_eq!(m.sum("measured", "seen"), TOTAL as i64);
    let mut meter_count = 0;
    let mut histogram_count = 0;
    let max = *records().iter().max().expect("records") as i64;
    let emitted: Vec<u64> = out.lock().expect("lock").clone();
    for i in 0..2 {
        match m.get(&format!("measured.{i}.rate")) {
            Some(MetricValue::Meter { count, rate }) => {
                meter_count += count;
                assert!(*rate >= 0.0 && *rate <= 6_000.0, "rate {rate}");
            }
            other => panic!("meter: {other:?}"),
        }
        match m.get(&format!("measured.{i}.values.keys")) {
            Some(MetricValue::Histogram(h)) => {
                histogram_count += h.count;
                assert!(h.min >= 0 && h.max <= max && h.p50 <= h.p99);
            }
            other => panic!("histogram: {other:?}"),
        }
        // The gauge reads what the subtask saw last: a record it emitted.
        let last = m.gauge(&format!("measured.{i}.last")).expect("gauge") as u64;
        assert!(emitted.contains(&last), "{last}");
    }
    assert_eq!((meter_count, histogram_count), (TOTAL, TOTAL));
    let text = std::fs::read_to_string(&file).expect("metrics file");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(
        lines.len() >= 3,
        "{} reports in {} s",
        lines.len(),
        r.wall_s
    );
    let uptimes: Vec<u64> = lines
        .iter()
        .map(|l| l["uptime_ms"].as_u64().expect("uptime"))
        .collect();
    assert!(uptimes.windows(2).all(|w| w[0] <= w[1]), "{uptimes:?}");
    let last = &lines[lines.len() - 1]["values"];
    for id in [
        "measured.0.seen",
        "measured.1.seen",
        "job.numRecordsRead",
        "sink.1.numRecordsIn",
    ] {
        assert_eq!(last[id].as_i64(), m.count(id), "{id}");
    }
    assert_eq!(
        last["measured.0.values.keys"]["count"]
            .as_u64()
            .map(|c| c > 0),
        Some(true)
    );
    // Reports while the job ran saw part of the input.
    let read: Vec<u64> = lines
        .iter()
        .filter_map(|l| l["values"]["job.numRecordsRead"].as_u64())
        .collect();
    assert!(read.first().is_some_and(|&n| n < TOTAL), "{read:?}");
}

/// After a restart, operator metrics count the last run only (as Flink's task metric
/// groups are made anew), while the job's count every run: the source's records out is
/// what the last run read, and the keyed operator took in each of those.
#[test]
fn a_restart_starts_operator_metrics_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = common::failure_config(dir.path(), StateBackendConfig::HashMap, 2, false, 6_000);
    cfg.fail_at_record = Some(TOTAL / 2);
    let out = Arc::new(Mutex::new(Vec::new()));
    let graph = source("source", generator())
        .parallelism(1)
        .process("measured", Measured::default())
        .key_by(|v: &u64| v % 11)
        .reduce("sum", |a, b| a + b)
        .sink("sink", Collect(out.clone()));
    let r = Job::new(graph, cfg).run().expect("job");
    let m = &r.metrics;
    assert_eq!(r.restarts, 1);
    check_job_metrics(&r, 1);
    let last_run = r.records as i64 - (TOTAL / 2) as i64;
    assert!(last_run > 0 && last_run <= TOTAL as i64, "{last_run}");
    assert_eq!(count(m, "source.0.numRecordsOut"), last_run);
    assert_eq!(count(m, "measured.0.seen"), last_run, "a user counter too");
    assert_eq!(m.sum("sum", "numRecordsIn"), last_run);
    let restored = r.restarts_restored_from[0].is_some();
    assert_eq!(
        m.gauge("job.lastCheckpointRestoreTimestamp").is_some(),
        restored,
        "restored from {:?}",
        r.restarts_restored_from
    );
}

/// A running job's watermarks: once the input is read and the source idles, each
/// operator's input watermark reaches the assigner's, which is the largest timestamp
/// less the bound, less one (Flink's `BoundedOutOfOrdernessWatermarks`).
#[test]
fn watermarks_of_a_running_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), StateBackendConfig::HashMap);
    cfg.auto_watermark_interval = Duration::from_millis(5);
    let bound = 100;
    let graph = source("source", generator().idle_at_end())
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_bounded_out_of_orderness(Duration::from_millis(bound), |v| *v),
        )
        .key_by(|v: &u64| v % 7)
        .reduce("sum", |a, b| a + b)
        .sink("sink", Collect(Arc::default()));
    let job = Job::new(graph, cfg).start().expect("start");
    let max = *records().iter().max().expect("records");
    let expected = (max - bound - 1) as f64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ids = [
        "timestamps.0.currentOutputWatermark",
        "sum.0.currentInputWatermark",
        "sum.1.currentInputWatermark",
        "sum.1.currentOutputWatermark",
        "sink.0.currentInputWatermark",
    ];
    let m = loop {
        let m = job.metrics();
        if ids.iter().all(|id| m.gauge(id) == Some(expected)) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    job.cancel();
    job.wait().expect("cancelled job");
    for id in ids {
        assert_eq!(m.gauge(id), Some(expected), "{id}");
    }
    // No watermark reaches the assigner itself.
    assert_eq!(
        m.get("timestamps.0.currentInputWatermark"),
        Some(&MetricValue::Gauge(None))
    );
    assert_eq!(count(&m, "job.numRecordsRead"), TOTAL as i64);
    assert_eq!(
        count(&m, "sum.0.numRecordsIn") + count(&m, "sum.1.numRecordsIn"),
        TOTAL as i64
    );
    // With the input read, the keyed tasks wait for more.
    for i in 0..2 {
        let idle = m.gauge(&format!("sum.{i}.idleTimeMs")).expect("idle");
        assert!(idle > 0.0, "sum.{i} idle {idle} ms");
    }
}

/// A sink that takes a millisecond per record.
#[derive(Clone)]
struct Slow;

impl Checkpointed for Slow {}

impl Sink<u64> for Slow {
    fn write(&mut self, _: u64) -> cairn_runtime::Result<()> {
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }
}

/// A slow sink backpressures the source: the source's task spends most of the run waiting
/// for room in the channel, and the sink's task is busy rather than idle.
#[test]
fn a_slow_sink_backpressures_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), StateBackendConfig::HashMap);
    cfg.parallelism = 1;
    cfg.batch_size = 1;
    cfg.channel_capacity = 1;
    let n = 1_000;
    let graph = source("source", GeneratorSource::new(n, KEYS, SEED))
        .rebalance()
        .sink("sink", Slow);
    let r = Job::new(graph, cfg).run().expect("job");
    let m = &r.metrics;
    let backpressured = m.gauge("source.0.backPressuredTimeMs").expect("source");
    let sink_idle = m.gauge("sink.0.idleTimeMs").expect("sink");
    // The sink sleeps at least n ms; the source waits for nearly all of it.
    assert!(
        backpressured >= 0.5 * n as f64,
        "backpressured {backpressured} ms of {} s",
        r.wall_s
    );
    assert!(sink_idle < backpressured, "sink idle {sink_idle} ms");
    assert_eq!(m.gauge("sink.0.backPressuredTimeMs"), Some(0.0));
}

/// A name the runtime uses, or one already taken by another kind of metric, fails the
/// job at start, naming the metric and the operator.
#[test]
fn a_clashing_metric_name_is_refused() {
    #[derive(Clone)]
    struct Clash(&'static str);
    impl Checkpointed for Clash {
        fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
            ctx.metrics.counter("mine")?;
            ctx.metrics.meter(self.0).map(|_| ())
        }
    }
    impl ProcessFunction<u64, u64> for Clash {
        fn process(&mut self, v: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
            out.collect(v)
        }
    }
    for name in ["numRecordsIn", "mine", "a.b"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let graph = source("source", generator())
            .process("clash", Clash(name))
            .sink("sink", Collect(Arc::default()));
        let err = Job::new(graph, config(dir.path(), StateBackendConfig::HashMap))
            .run()
            .expect_err("refused");
        let text = err.to_string();
        assert!(text.contains(name) && text.contains("clash."), "{text}");
    }
}

/// Window operators count the records they drop as late (Flink's `numLateRecordsDropped`):
/// every event is in a window or counted there, under tumbling and session windows; with
/// a side output for late data, the late records go there and none counts as dropped.
#[test]
fn windows_count_the_records_they_drop_as_late() {
    use cairn_runtime::{EventTimeSessionWindows, OutputTag, TumblingEventTimeWindows};
    for (sessions, side) in [(false, false), (true, false), (false, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = common::write_late_events(dir.path());
        let counts = Arc::new(Mutex::new(Vec::new()));
        let late_records = Arc::new(Mutex::new(Vec::new()));
        let late = OutputTag::<(u64, u64)>::new("late");
        let keyed = source("source", cairn_runtime::sources::FileSource::new(&input))
            .parallelism(1)
            .process("parse", common::ParseEvents::new(vec![]))
            .assign_timestamps_and_watermarks(
                "timestamps",
                WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
            )
            .key_by(|(key, _): &(u64, u64)| *key);
        let windowed = if sessions {
            keyed
                .window(EventTimeSessionWindows::with_gap(Duration::from_millis(3)))
                .aggregate("windows", common::CountEvents)
        } else if side {
            keyed
                .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
                .side_output_late_data(&late)
                .aggregate("windows", common::CountEvents)
        } else {
            keyed
                .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
                .aggregate("windows", common::CountEvents)
        };
        if side {
            windowed
                .side_output(&late)
                .sink("late-sink", Collect(late_records.clone()));
        }
        let graph = windowed.sink("sink", Collect(counts.clone()));
        let mut cfg = config(dir.path(), StateBackendConfig::HashMap);
        cfg.auto_watermark_interval = Duration::from_millis(1);
        cfg.records_per_second = Some(30_000);
        let r = Job::new(graph, cfg).run().expect("job");
        let counted: u64 = counts
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, _, c)| *c)
            .sum();
        let missing = (common::LATE_EVENTS - counted) as i64;
        let dropped = r.metrics.sum("windows", "numLateRecordsDropped");
        let side_records = late_records.lock().expect("lock").len() as i64;
        assert_eq!(
            r.metrics
                .per_subtask("windows", "numLateRecordsDropped")
                .len(),
            2
        );
        if side {
            assert_eq!(
                (dropped, side_records),
                (0, missing),
                "late data to its side output"
            );
        } else {
            assert_eq!(dropped, missing, "sessions: {sessions}");
        }
        assert!(missing > 0, "some events came late");
    }
}
