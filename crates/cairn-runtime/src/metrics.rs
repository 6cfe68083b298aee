//! Metrics (Flink's metric system): what a job counts about itself while it runs, read
//! through [`crate::JobHandle::metrics`], handed to [`MetricReporter`]s every
//! [`MetricsConfig::interval`], and in [`crate::JobResult::metrics`] at the end.
//!
//! Every metric has an identifier: its scope, then its name, joined by dots.
//! - **Job** metrics are scoped `job`: `job.uptime`, `job.numRestarts`,
//!   `job.numberOfCompletedCheckpoints`, `job.numberOfFailedCheckpoints`,
//!   `job.numberOfInProgressCheckpoints`, `job.totalNumberOfCheckpoints`,
//!   `job.lastCompletedCheckpointId`, `job.lastCheckpointDuration` (ms),
//!   `job.lastCheckpointSize` (bytes the checkpoint added), `job.lastCheckpointFullSize`
//!   (bytes it references in all), `job.lastCheckpointRestoreTimestamp` (ms since the Unix
//!   epoch when the current run restored from a snapshot) and `job.numRecordsRead` (records
//!   the sources read, over every run). They live as long as the job.
//! - **Operator** metrics are scoped `<uid>.<subtask>`: `numRecordsIn` and `numRecordsOut`
//!   (records into the operator and out of its main output, side outputs not counted; a
//!   source's `numRecordsIn` stays 0, as in Flink; the output of the last operator before
//!   an exchange is counted per batch as it is sent, so while the job runs it lags by up to
//!   a batch per channel),
//!   `numRecordsInPerSecond` and `numRecordsOutPerSecond` (over the last minute, as Flink's
//!   `MeterView`), `currentInputWatermark` and `currentOutputWatermark` (milliseconds;
//!   null before the first watermark; the end of the input, which stands for the final
//!   watermark, is not passed on as one, so they stay at the last periodic watermark).
//!   Window operators also count `numLateRecordsDropped`: records every window of which
//!   was past its allowed lateness, dropped for want of a side output for late data.
//!   Identifiers are joined with dots, so a uid with dots in it can be read ambiguously by
//!   eye; [`Metrics::per_subtask`] matches the uid exactly.
//! - **Task** metrics, scoped as the first operator of the task's chain (a task runs the
//!   operators between two exchanges): `idleTimeMsPerSecond` (waiting for input),
//!   `backPressuredTimeMsPerSecond` (waiting for room in an output channel) and
//!   `busyTimeMsPerSecond` (the rest), over the last 5 seconds, and the totals
//!   `idleTimeMs` and `backPressuredTimeMs`.
//! - **User** metrics: a function registers counters, gauges, meters and histograms in
//!   [`crate::Checkpointed::initialize_state`] through [`crate::InitContext::metrics`],
//!   scoped as its operator (`<uid>.<subtask>.<name>`, or deeper through
//!   [`MetricGroup::add_group`]).
//!
//! As in Flink, operator, task and user metrics belong to one run of the job: a restart
//! makes them anew, from zero. Rates are sampled once a second by the job's driver.
//!
//! The counters the runtime keeps per record are plain stores by the one task thread that
//! writes them (no atomic read-modify-write on the record path); readers see them with at
//! most a moment's delay.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::{Result, RuntimeError};
use crate::watermarks::Mark;

/// The span of the per-second rates of counts (Flink's `MeterView` default).
const RATE_SPAN: Duration = Duration::from_secs(60);
/// The span of the per-second shares of a task's time.
const TIME_SPAN: Duration = Duration::from_secs(5);
/// How often the driver samples the rates.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// The scope of job metrics.
const JOB_SCOPE: &str = "job";

/// A count that goes up and down (Flink's `Counter`). Clones share the count, so a
/// function may keep one and hand clones to other threads.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicI64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }
    /// Adds `n`.
    pub fn inc_by(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Takes one away.
    pub fn dec(&self) {
        self.inc_by(-1);
    }
    /// Takes `n` away.
    pub fn dec_by(&self, n: i64) {
        self.inc_by(n.wrapping_neg());
    }
    /// The count.
    pub fn count(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Events and their rate per second over the last minute (Flink's `Meter`, as its
/// `MeterView`). Clones share the count.
#[derive(Clone, Debug)]
pub struct Meter {
    count: Counter,
    view: Arc<RateView>,
}

impl Meter {
    /// One event.
    pub fn mark_event(&self) {
        self.count.inc();
    }
    /// `n` events.
    pub fn mark_events(&self, n: u64) {
        self.count.inc_by(i64::try_from(n).unwrap_or(i64::MAX));
    }
    /// Events so far.
    pub fn count(&self) -> u64 {
        u64::try_from(self.count.count()).unwrap_or(0)
    }
    /// Events per second over the last minute (or since the meter was made, when that is
    /// shorter), as of the last sample.
    pub fn rate(&self) -> f64 {
        self.view.rate()
    }
}

/// The distribution of the last values given (Flink's `Histogram`, as its
/// `DescriptiveStatisticsHistogram` with a window). Clones share the values.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<Mutex<Reservoir>>);

#[derive(Debug)]
struct Reservoir {
    window: usize,
    values: VecDeque<i64>,
    count: u64,
}

impl Histogram {
    /// Adds a value (the oldest of a full window goes).
    pub fn update(&self, value: i64) {
        let mut r = lock(&self.0);
        if r.values.len() == r.window {
            r.values.pop_front();
        }
        r.values.push_back(value);
        r.count += 1;
    }
    /// Statistics of the values in the window.
    pub fn statistics(&self) -> HistogramStatistics {
        let r = lock(&self.0);
        HistogramStatistics::of(r.count, r.values.iter().copied().collect())
    }
}

/// What a [`Histogram`] reports: the count of every value ever given, and statistics of
/// those in its window (zero when the window is empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HistogramStatistics {
    /// Values given, over the histogram's life.
    pub count: u64,
    /// The smallest value in the window.
    pub min: i64,
    /// The largest value in the window.
    pub max: i64,
    /// Their mean.
    pub mean: f64,
    /// Their standard deviation (population).
    pub stddev: f64,
    /// The median (nearest rank).
    pub p50: f64,
    /// The 75th percentile.
    pub p75: f64,
    /// The 95th percentile.
    pub p95: f64,
    /// The 98th percentile.
    pub p98: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
}

impl HistogramStatistics {
    fn of(count: u64, mut values: Vec<i64>) -> Self {
        if values.is_empty() {
            return Self {
                count,
                ..Self::default()
            };
        }
        values.sort_unstable();
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let q = |q: f64| {
            let rank = (q * n).ceil().max(1.0) as usize;
            values[rank.min(values.len()) - 1] as f64
        };
        Self {
            count,
            min: values[0],
            max: values[values.len() - 1],
            mean,
            stddev: var.sqrt(),
            p50: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            p98: q(0.98),
            p99: q(0.99),
            p999: q(0.999),
        }
    }
}

/// A value of a metric at the moment it was read.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetricValue {
    /// A [`Counter`]'s count.
    Counter(i64),
    /// A gauge's value; `None` (null in JSON) when it has none yet (a watermark before the
    /// first).
    Gauge(Option<f64>),
    /// A [`Meter`]'s events and rate per second.
    Meter {
        /// Events so far.
        count: u64,
        /// Events per second over the last minute.
        rate: f64,
    },
    /// A [`Histogram`]'s statistics.
    Histogram(HistogramStatistics),
}

impl MetricValue {
    /// The value as a number: a count, a gauge's value, a meter's rate; `None` for a gauge
    /// without a value and for a histogram.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetricValue::Counter(c) => Some(*c as f64),
            MetricValue::Gauge(g) => *g,
            MetricValue::Meter { rate, .. } => Some(*rate),
            MetricValue::Histogram(_) => None,
        }
    }
}

/// Every metric of a job at one moment, by identifier (see [`crate::metrics`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Milliseconds since the job started.
    pub uptime_ms: u64,
    /// The values, by identifier.
    pub values: BTreeMap<String, MetricValue>,
}

impl Metrics {
    /// The metric `id` (`job.numRestarts`, `count.0.numRecordsIn`, …).
    pub fn get(&self, id: &str) -> Option<&MetricValue> {
        self.values.get(id)
    }

    /// The counter (or the meter's count) `id`.
    pub fn count(&self, id: &str) -> Option<i64> {
        match self.values.get(id)? {
            MetricValue::Counter(c) => Some(*c),
            MetricValue::Meter { count, .. } => i64::try_from(*count).ok(),
            _ => None,
        }
    }

    /// The gauge `id`'s value (`None` also when it has none yet).
    pub fn gauge(&self, id: &str) -> Option<f64> {
        match self.values.get(id)? {
            MetricValue::Gauge(g) => *g,
            _ => None,
        }
    }

    /// Metric `name` of operator `uid` in each subtask that has it, by subtask index.
    pub fn per_subtask(&self, uid: &str, name: &str) -> BTreeMap<u32, &MetricValue> {
        let prefix = format!("{uid}.");
        let suffix = format!(".{name}");
        self.values
            .range(prefix.clone()..)
            .take_while(|(id, _)| id.starts_with(&prefix))
            .filter_map(|(id, v)| {
                let middle = id.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
                Some((middle.parse().ok()?, v))
            })
            .collect()
    }

    /// The counts of counter `name` of operator `uid`, summed over its subtasks (as
    /// Flink's web interface shows an operator's records); 0 when no subtask has it.
    pub fn sum(&self, uid: &str, name: &str) -> i64 {
        self.per_subtask(uid, name)
            .values()
            .filter_map(|v| match v {
                MetricValue::Counter(c) => Some(*c),
                _ => None,
            })
            .fold(0, i64::saturating_add)
    }
}

/// Receives a job's metrics every [`MetricsConfig::interval`] and once more when the job
/// ends (Flink's `MetricReporter`, as a scheduled reporter). It runs on the job's driver
/// thread, so it should be quick; an error it returns (or a panic) is written to standard
/// error once and the job goes on.
pub trait MetricReporter: Send {
    /// Reports `metrics`.
    fn report(&mut self, metrics: &Metrics) -> std::io::Result<()>;
}

/// Writes each report as one line of JSON (`{"uptime_ms":…,"values":{"job.uptime":…}}`)
/// to a file or standard error, as Flink's `Slf4jReporter` logs them.
pub struct JsonLinesReporter {
    out: Box<dyn Write + Send>,
}

impl fmt::Debug for JsonLinesReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLinesReporter").finish_non_exhaustive()
    }
}

impl JsonLinesReporter {
    /// Appends to the file at `path` (created if missing).
    pub fn to_file(path: &str) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| RuntimeError::io("cannot open the metrics file", path, e))?;
        Ok(Self {
            out: Box::new(file),
        })
    }
    /// Writes to standard error.
    pub fn to_stderr() -> Self {
        Self {
            out: Box::new(std::io::stderr()),
        }
    }
    /// Writes to `out`.
    pub fn to_writer(out: impl Write + Send + 'static) -> Self {
        Self { out: Box::new(out) }
    }
}

impl MetricReporter for JsonLinesReporter {
    fn report(&mut self, metrics: &Metrics) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(metrics).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.out.write_all(&line)?;
        self.out.flush()
    }
}

/// A reporter shared by the clones of a [`crate::JobConfig`].
#[derive(Clone)]
pub struct SharedReporter(Arc<Mutex<dyn MetricReporter>>);

impl SharedReporter {
    /// Shares `reporter`.
    pub fn new(reporter: impl MetricReporter + 'static) -> Self {
        Self(Arc::new(Mutex::new(reporter)))
    }
}

impl fmt::Debug for SharedReporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedReporter")
    }
}

/// Where and how often a job reports its metrics ([`crate::JobConfig::metrics`]).
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// The reporters (none by default: the metrics are still kept, and read through
    /// [`crate::JobHandle::metrics`]).
    pub reporters: Vec<SharedReporter>,
    /// How often they report (default 10 s, Flink's `metrics.reporter.<name>.interval`).
    pub interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            reporters: Vec::new(),
            interval: Duration::from_secs(10),
        }
    }
}

impl MetricsConfig {
    /// Adds `reporter`.
    pub fn with_reporter(mut self, reporter: impl MetricReporter + 'static) -> Self {
        self.reporters.push(SharedReporter::new(reporter));
        self
    }
    /// Reports every `interval`.
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }
}

/// Where an operator registers its own metrics (Flink's `MetricGroup`), scoped as the
/// operator's subtask (`<uid>.<subtask>`); see [`crate::metrics`].
#[derive(Clone)]
pub struct MetricGroup {
    registry: Arc<MetricRegistry>,
    scope: String,
    attempt: u32,
}

impl fmt::Debug for MetricGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricGroup")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl MetricGroup {
    /// A group that no job reports (Flink's `UnregisteredMetricsGroup`): for calling a
    /// function's hooks outside a job, in tests. Its metrics work as any.
    pub fn unregistered(scope: &str) -> Self {
        let registry = Arc::new(MetricRegistry::default());
        MetricGroup {
            registry,
            scope: scope.to_string(),
            attempt: 0,
        }
    }

    /// The group's scope: the prefix of its metrics' identifiers.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// A group inside this one (Flink's `addGroup`): its metrics are `<scope>.<name>.…`.
    pub fn add_group(&self, name: &str) -> Result<MetricGroup> {
        check_name(&self.scope, name)?;
        Ok(MetricGroup {
            registry: self.registry.clone(),
            scope: format!("{}.{name}", self.scope),
            attempt: self.attempt,
        })
    }

    /// The counter `name`, made at the first call; a later call with the same name gives
    /// the same counter.
    pub fn counter(&self, name: &str) -> Result<Counter> {
        let made = Metric::Counter(Counter::default());
        match self.register(name, made, |m| matches!(m, Metric::Counter(_)))? {
            Metric::Counter(c) => Ok(c),
            _ => Err(self.clash(name)),
        }
    }

    /// The gauge `name`: `value` is called whenever the metrics are read (from another
    /// thread, outside the registry's lock), so it should be quick; share what it reads
    /// through an atomic or a lock. A `value` that panics reads as no value.
    pub fn gauge(&self, name: &str, value: impl Fn() -> f64 + Send + Sync + 'static) -> Result<()> {
        let made = Metric::Gauge(Arc::new(move || Some(value())));
        self.register(name, made, |_| false).map(|_| ())
    }

    /// The meter `name` (rate per second over the last minute), made at the first call; a
    /// later call with the same name gives the same meter.
    pub fn meter(&self, name: &str) -> Result<Meter> {
        let made = Metric::Meter(Meter {
            count: Counter::default(),
            view: Arc::new(RateView::new(RATE_SPAN, 0.0)),
        });
        match self.register(name, made, |m| matches!(m, Metric::Meter(_)))? {
            Metric::Meter(m) => Ok(m),
            _ => Err(self.clash(name)),
        }
    }

    /// The histogram `name` over the last `window` values (at least 1), made at the first
    /// call; a later call with the same name gives the same histogram.
    pub fn histogram(&self, name: &str, window: usize) -> Result<Histogram> {
        let made = Metric::Histogram(Histogram(Arc::new(Mutex::new(Reservoir {
            window: window.max(1),
            values: VecDeque::new(),
            count: 0,
        }))));
        match self.register(name, made, |m| matches!(m, Metric::Histogram(_)))? {
            Metric::Histogram(h) => Ok(h),
            _ => Err(self.clash(name)),
        }
    }

    fn register(
        &self,
        name: &str,
        made: Metric,
        same_kind: impl Fn(&Metric) -> bool,
    ) -> Result<Metric> {
        check_name(&self.scope, name)?;
        let id = format!("{}.{name}", self.scope);
        let mut inner = self.registry.lock();
        if inner.attempt != self.attempt {
            // A group of an earlier run (a function kept it): its metrics are not reported.
            return Ok(made);
        }
        match inner.metrics.get(&id) {
            Some(m) if same_kind(m) => Ok(m.clone()),
            Some(_) => Err(self.clash(name)),
            None => {
                inner.metrics.insert(id, made.clone());
                Ok(made)
            }
        }
    }

    fn clash(&self, name: &str) -> RuntimeError {
        RuntimeError::Config(format!(
            "metric {name} of {} is registered already as another kind of metric (or is one \
             of the runtime's own)",
            self.scope
        ))
    }
}

fn check_name(scope: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.contains('.') {
        return Err(RuntimeError::Config(format!(
            "metric or group name {name:?} in {scope}: names are not empty and have no dots \
             (dots join the parts of an identifier)"
        )));
    }
    Ok(())
}

/// Records into or out of an operator, and the last watermark that passed: written by the
/// one task thread that runs the operator, read by anyone. A cache line of its own, so
/// that the counts two task threads write never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct IoMetrics {
    records: AtomicU64,
    /// The watermark plus one (saturating); 0: none yet.
    watermark: AtomicU64,
}

impl IoMetrics {
    /// One record more. Only the task's thread writes, so a load and a store do (no
    /// locked instruction on the record path).
    #[inline]
    pub(crate) fn record(&self) {
        self.add(1);
    }

    /// `n` records more (the task's thread only).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        let c = self.records.load(Ordering::Relaxed);
        self.records.store(c.wrapping_add(n), Ordering::Relaxed);
    }

    /// The watermark `w` passed.
    #[inline]
    pub(crate) fn watermark(&self, w: u64) {
        self.watermark.store(w.saturating_add(1), Ordering::Relaxed);
    }

    /// `mark` passed (only a watermark counts).
    #[inline]
    pub(crate) fn mark(&self, mark: Mark) {
        if let Mark::Watermark(w) = mark {
            self.watermark(w);
        }
    }

    fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    fn current_watermark(&self) -> Option<f64> {
        match self.watermark.load(Ordering::Relaxed) {
            0 => None,
            u64::MAX => Some(u64::MAX as f64),
            w => Some((w - 1) as f64),
        }
    }
}

/// Where a task's time goes besides its work: waiting for input, and waiting for room in
/// an output channel (backpressure).
#[derive(Debug, Default)]
pub(crate) struct TaskTimes {
    idle_ns: AtomicU64,
    backpressured_ns: AtomicU64,
}

impl TaskTimes {
    pub(crate) fn idle(&self, d: Duration) {
        self.idle_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }
    pub(crate) fn backpressured(&self, d: Duration) {
        self.backpressured_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }
    fn idle_ms(&self) -> f64 {
        self.idle_ns.load(Ordering::Relaxed) as f64 / 1e6
    }
    fn backpressured_ms(&self) -> f64 {
        self.backpressured_ns.load(Ordering::Relaxed) as f64 / 1e6
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A rate per second of a growing value, from samples over a span.
#[derive(Debug)]
struct RateView {
    span: Duration,
    samples: Mutex<VecDeque<(Instant, f64)>>,
}

impl RateView {
    fn new(span: Duration, now_value: f64) -> Self {
        Self {
            span,
            samples: Mutex::new(VecDeque::from([(Instant::now(), now_value)])),
        }
    }

    fn sample(&self, now: Instant, value: f64) {
        let mut s = lock(&self.samples);
        s.push_back((now, value));
        // Keep the newest sample at least `span` old as the base of the rate.
        while s.len() > 2 && now.duration_since(s[1].0) >= self.span {
            s.pop_front();
        }
    }

    fn rate(&self) -> f64 {
        let s = lock(&self.samples);
        match (s.front(), s.back()) {
            (Some(&(t0, v0)), Some(&(t1, v1))) if t1 > t0 => {
                (v1 - v0) / t1.duration_since(t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn has_rate(&self) -> bool {
        lock(&self.samples).len() > 1
    }
}

type GaugeFn = Arc<dyn Fn() -> Option<f64> + Send + Sync>;
type CountFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A registered metric.
#[derive(Clone)]
enum Metric {
    Counter(Counter),
    Gauge(GaugeFn),
    Meter(Meter),
    Histogram(Histogram),
    /// A count the runtime keeps (reported as a counter).
    Count(CountFn),
    /// A per-second rate of what `read` gives.
    Rate {
        read: Arc<dyn Fn() -> f64 + Send + Sync>,
        view: Arc<RateView>,
    },
}

impl Metric {
    fn rate_of(span: Duration, read: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        let view = Arc::new(RateView::new(span, read()));
        Metric::Rate {
            read: Arc::new(read),
            view,
        }
    }

    fn value(&self) -> MetricValue {
        match self {
            Metric::Counter(c) => MetricValue::Counter(c.count()),
            // A user's gauge that panics has no value; the reader (the driver, a
            // reporter, `JobHandle::metrics`) goes on.
            Metric::Gauge(g) => MetricValue::Gauge(
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| g())).unwrap_or(None),
            ),
            Metric::Meter(m) => MetricValue::Meter {
                count: m.count(),
                rate: m.rate(),
            },
            Metric::Histogram(h) => MetricValue::Histogram(h.statistics()),
            Metric::Count(c) => MetricValue::Counter(i64::try_from(c()).unwrap_or(i64::MAX)),
            Metric::Rate { view, .. } => MetricValue::Gauge(Some(view.rate())),
        }
    }

    fn sample(&self, now: Instant) {
        match self {
            Metric::Meter(m) => m.view.sample(now, m.count.count() as f64),
            Metric::Rate { read, view } => view.sample(now, read()),
            _ => {}
        }
    }
}

/// What the driver knows about the job as a whole (the `job` scope).
#[derive(Clone, Debug, Default)]
pub(crate) struct JobValues {
    pub(crate) restarts: u32,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) in_progress: u64,
    /// Checkpoints triggered, over every run.
    pub(crate) triggered: u64,
    pub(crate) last_completed_id: Option<u64>,
    pub(crate) last_duration_ms: Option<f64>,
    pub(crate) last_size: Option<u64>,
    pub(crate) last_full_size: Option<u64>,
    pub(crate) last_restore_timestamp_ms: Option<u64>,
    pub(crate) records_read: u64,
}

#[derive(Default)]
struct Inner {
    /// The run whose operator metrics are registered.
    attempt: u32,
    /// Operator, task and user metrics of the current run, by identifier.
    metrics: BTreeMap<String, Metric>,
    job: JobValues,
}

/// Every metric of a job (shared by its driver, its tasks and its handle).
pub(crate) struct MetricRegistry {
    started: Instant,
    inner: Mutex<Inner>,
}

impl fmt::Debug for MetricRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricRegistry").finish_non_exhaustive()
    }
}

impl Default for MetricRegistry {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

impl MetricRegistry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// A new run begins: the metrics of the last one go.
    pub(crate) fn begin_run(&self, attempt: u32) {
        let mut inner = self.lock();
        inner.attempt = attempt;
        inner.metrics.clear();
    }

    /// Updates the job's values.
    pub(crate) fn job(&self, update: impl FnOnce(&mut JobValues)) {
        update(&mut self.lock().job);
    }

    /// The group of operator `uid`'s subtask `subtask` in run `attempt`, with its input
    /// metrics (none for a source).
    pub(crate) fn operator(
        self: &Arc<Self>,
        attempt: u32,
        uid: &str,
        subtask: u32,
        input: Option<&Arc<IoMetrics>>,
    ) -> MetricGroup {
        let group = MetricGroup {
            registry: self.clone(),
            scope: format!("{uid}.{subtask}"),
            attempt,
        };
        if let Some(io) = input {
            let (a, b) = (io.clone(), io.clone());
            group.system("numRecordsIn", Metric::Count(Arc::new(move || a.records())));
            group.system(
                "numRecordsInPerSecond",
                Metric::rate_of(RATE_SPAN, move || b.records() as f64),
            );
            let c = io.clone();
            group.system(
                "currentInputWatermark",
                Metric::Gauge(Arc::new(move || c.current_watermark())),
            );
        }
        group
    }

    /// Operator `group`'s main output is counted by `output`.
    pub(crate) fn output(group: &MetricGroup, output: &Arc<IoMetrics>) {
        let (a, b, c) = (output.clone(), output.clone(), output.clone());
        group.system(
            "numRecordsOut",
            Metric::Count(Arc::new(move || a.records())),
        );
        group.system(
            "numRecordsOutPerSecond",
            Metric::rate_of(RATE_SPAN, move || b.records() as f64),
        );
        group.system(
            "currentOutputWatermark",
            Metric::Gauge(Arc::new(move || c.current_watermark())),
        );
    }

    /// The task whose chain `group`'s operator heads spends its time as `times` says.
    pub(crate) fn task(group: &MetricGroup, times: &Arc<TaskTimes>) {
        let (a, b) = (times.clone(), times.clone());
        let idle = Metric::rate_of(TIME_SPAN, move || a.idle_ms());
        let backpressured = Metric::rate_of(TIME_SPAN, move || b.backpressured_ms());
        let (Metric::Rate { view: iv, .. }, Metric::Rate { view: bv, .. }) =
            (&idle, &backpressured)
        else {
            return;
        };
        let (iv, bv) = (iv.clone(), bv.clone());
        group.system(
            "busyTimeMsPerSecond",
            Metric::Gauge(Arc::new(move || {
                (iv.has_rate() && bv.has_rate())
                    .then(|| (1000.0 - iv.rate() - bv.rate()).clamp(0.0, 1000.0))
            })),
        );
        group.system("idleTimeMsPerSecond", idle);
        group.system("backPressuredTimeMsPerSecond", backpressured);
        let (c, d) = (times.clone(), times.clone());
        group.system(
            "idleTimeMs",
            Metric::Gauge(Arc::new(move || Some(c.idle_ms()))),
        );
        group.system(
            "backPressuredTimeMs",
            Metric::Gauge(Arc::new(move || Some(d.backpressured_ms()))),
        );
    }

    /// Samples every rate.
    pub(crate) fn sample(&self) {
        let now = Instant::now();
        let inner = self.lock();
        for m in inner.metrics.values() {
            m.sample(now);
        }
    }

    /// Every metric now.
    pub(crate) fn snapshot(&self) -> Metrics {
        // The values are read outside the registry's lock: a user's gauge may take a lock
        // of its own, or register a metric, which would deadlock under it.
        let (metrics, job_values): (Vec<(String, Metric)>, JobValues) = {
            let inner = self.lock();
            let metrics = inner
                .metrics
                .iter()
                .map(|(id, m)| (id.clone(), m.clone()))
                .collect();
            (metrics, inner.job.clone())
        };
        let uptime_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut values: BTreeMap<String, MetricValue> =
            metrics.into_iter().map(|(id, m)| (id, m.value())).collect();
        let j = &job_values;
        let count = |v: u64| MetricValue::Counter(i64::try_from(v).unwrap_or(i64::MAX));
        let gauge = |v: Option<f64>| MetricValue::Gauge(v);
        let job = [
            ("uptime", count(uptime_ms)),
            ("numRestarts", count(u64::from(j.restarts))),
            ("numberOfCompletedCheckpoints", count(j.completed)),
            ("numberOfFailedCheckpoints", count(j.failed)),
            ("numberOfInProgressCheckpoints", count(j.in_progress)),
            ("totalNumberOfCheckpoints", count(j.triggered)),
            (
                "lastCompletedCheckpointId",
                gauge(j.last_completed_id.map(|v| v as f64)),
            ),
            ("lastCheckpointDuration", gauge(j.last_duration_ms)),
            ("lastCheckpointSize", gauge(j.last_size.map(|v| v as f64))),
            (
                "lastCheckpointFullSize",
                gauge(j.last_full_size.map(|v| v as f64)),
            ),
            (
                "lastCheckpointRestoreTimestamp",
                gauge(j.last_restore_timestamp_ms.map(|v| v as f64)),
            ),
            ("numRecordsRead", count(j.records_read)),
        ];
        for (name, v) in job {
            values.insert(format!("{JOB_SCOPE}.{name}"), v);
        }
        Metrics { uptime_ms, values }
    }
}

impl MetricGroup {
    /// Registers one of the runtime's own metrics (replacing one of the same name).
    fn system(&self, name: &str, metric: Metric) {
        let mut inner = self.registry.lock();
        if inner.attempt == self.attempt {
            inner
                .metrics
                .insert(format!("{}.{name}", self.scope), metric);
        }
    }
}

/// Reports to `reporters`, telling of each failing one once.
pub(crate) fn report(reporters: &[SharedReporter], metrics: &Metrics, failed: &mut [bool]) {
    for (i, r) in reporters.iter().enumerate() {
        // A reporter that panics fails as one that returns an error.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lock(&r.0).report(metrics)))
                .unwrap_or_else(|p| {
                    Err(std::io::Error::other(format!(
                        "the reporter panicked: {}",
                        crate::job::panic_message(p.as_ref())
                    )))
                });
        if let Err(e) = outcome {
            if !failed.get(i).copied().unwrap_or(true) {
                eprintln!("a metric reporter failed (told once): {e}");
                failed[i] = true;
            }
        }
    }
}

/// A lock whose holder panicked is still usable: every value behind these locks is whole
/// after any statement.
fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<MetricRegistry> {
        let r = Arc::new(MetricRegistry::default());
        r.begin_run(0);
        r
    }

    #[test]
    fn user_metrics_are_scoped_and_shared_by_name() {
        let r = registry();
        let g = r.operator(0, "count", 1, None);
        let c = g.counter("words").unwrap();
        c.inc_by(5);
        g.counter("words").unwrap().dec();
        let h = g.add_group("sizes").unwrap().histogram("len", 4).unwrap();
        for v in [7, 1, 3, 9, 5] {
            h.update(v);
        }
        let seen = Arc::new(AtomicU64::new(42));
        let s = seen.clone();
        g.gauge("answer", move || s.load(Ordering::Relaxed) as f64)
            .unwrap();
        let m = r.snapshot();
        assert_eq!(m.count("count.1.words"), Some(4));
        assert_eq!(m.gauge("count.1.answer"), Some(42.0));
        let MetricValue::Histogram(stats) = m.get("count.1.sizes.len").unwrap() else {
            panic!("not a histogram");
        };
        // The window holds the last 4: 1, 3, 9, 5.
        assert_eq!((stats.count, stats.min, stats.max), (5, 1, 9));
        assert_eq!(stats.mean, 4.5);
        assert_eq!((stats.p50, stats.p75, stats.p99), (3.0, 5.0, 9.0));
        assert!(g.meter("words").is_err(), "a counter's name as a meter");
        assert!(g.counter("a.b").is_err());
        assert!(g.counter("").is_err());
    }

    #[test]
    fn a_new_run_drops_the_last_runs_metrics() {
        let r = registry();
        let io = Arc::new(IoMetrics::default());
        let g = r.operator(0, "map", 0, Some(&io));
        io.add(3);
        g.counter("mine").unwrap().inc();
        assert_eq!(r.snapshot().count("map.0.numRecordsIn"), Some(3));
        r.begin_run(1);
        let m = r.snapshot();
        assert_eq!(m.get("map.0.numRecordsIn"), None);
        assert_eq!(m.get("map.0.mine"), None);
        // A group of the old run registers nothing any more.
        g.counter("late").unwrap().inc();
        assert_eq!(r.snapshot().get("map.0.late"), None);
    }

    #[test]
    fn watermarks_and_rates() {
        let r = registry();
        let io = Arc::new(IoMetrics::default());
        let _g = r.operator(0, "sink", 0, Some(&io));
        assert_eq!(
            r.snapshot().get("sink.0.currentInputWatermark"),
            Some(&MetricValue::Gauge(None))
        );
        io.watermark(0);
        assert_eq!(
            r.snapshot().gauge("sink.0.currentInputWatermark"),
            Some(0.0)
        );
        io.watermark(u64::MAX);
        assert_eq!(
            r.snapshot().gauge("sink.0.currentInputWatermark"),
            Some(u64::MAX as f64)
        );
        let view = RateView::new(Duration::from_secs(60), 0.0);
        let t0 = Instant::now();
        for s in 1..=100u64 {
            view.sample(t0 + Duration::from_secs(s), (s * 10) as f64);
        }
        // Over the last 60 s: 600 more in 60 s.
        assert!((view.rate() - 10.0).abs() < 1e-9, "{}", view.rate());
    }

    #[test]
    fn histogram_of_nothing_and_one() {
        assert_eq!(
            HistogramStatistics::of(0, vec![]),
            HistogramStatistics::default()
        );
        let one = HistogramStatistics::of(1, vec![-4]);
        assert_eq!(
            (one.min, one.max, one.p50, one.p999, one.stddev),
            (-4, -4, -4.0, -4.0, 0.0)
        );
    }

    #[test]
    fn json_lines() {
        let r = registry();
        r.job(|j| j.restarts = 2);
        let buf = Arc::new(Mutex::new(Vec::new()));
        struct Into(Arc<Mutex<Vec<u8>>>);
        impl Write for Into {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let reporters = [SharedReporter::new(JsonLinesReporter::to_writer(Into(
            buf.clone(),
        )))];
        report(&reporters, &r.snapshot(), &mut [false]);
        let text = String::from_utf8(lock(&buf).clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["values"]["job.numRestarts"], 2);
        assert!(v["values"]["job.lastCheckpointDuration"].is_null());
        assert!(text.ends_with('\n') && text.lines().count() == 1);
    }
}
