//! Asynchronous I/O (`Stream::unordered_wait`, `Stream::ordered_wait`): results in order
//! or not, the capacity, timeouts, failed calls, watermarks, and exactly-once results
//! through failures with calls in flight at checkpoints, under both backends, aligned and
//! unaligned.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::asyncio::{AsyncFunction, BlockingCalls, ResultFuture};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::{FileSource, GeneratorSource};
use cairn_runtime::{
    source, Checkpointed, Collector, FnWindow, Job, JobConfig, RuntimeError, StateBackendConfig,
    TimeWindow, TumblingEventTimeWindows, WatermarkStrategy,
};
use common::*;

const TOTAL: u64 = 2_000;

/// A pseudo-random delay of 0 to 2 ms for record `v`, so calls complete out of order.
fn jitter(v: u64) -> Duration {
    Duration::from_micros((v.wrapping_mul(0x9E37_79B9) >> 7) % 2_000)
}

/// Doubles each record after its jitter, on 8 threads.
fn doubling() -> BlockingCalls<u64, u64> {
    BlockingCalls::new(8, |v: u64| {
        std::thread::sleep(jitter(v));
        Ok(vec![2 * v])
    })
}

fn numbers() -> cairn_runtime::Stream<u64> {
    source("source", GeneratorSource::new(TOTAL, 1_000_000, 7)).parallelism(1)
}

fn generated() -> Vec<u64> {
    let g = GeneratorSource::new(TOTAL, 1_000_000, 7);
    (0..TOTAL).map(|n| g.key_of(n)).collect()
}

fn plain_config(dir: &std::path::Path) -> JobConfig {
    let mut cfg = config(dir, 20);
    cfg.parallelism = 1;
    cfg
}

fn run(graph: cairn_runtime::JobGraph, cfg: JobConfig) -> cairn_runtime::Result<()> {
    Job::new(graph, cfg).run().map(|_| ())
}

/// Ordered: the results come in the order of the records although the calls complete out
/// of order; unordered: every result once.
#[test]
fn ordered_results_keep_the_order_of_their_records() {
    for ordered in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let timeout = Duration::from_secs(10);
        let stream = numbers();
        let results = if ordered {
            stream.ordered_wait("lookup", doubling(), timeout, 16)
        } else {
            stream.unordered_wait("lookup", doubling(), timeout, 16)
        };
        let graph = results.parallelism(1).sink("sink", Collect(out.clone()));
        run(graph, plain_config(dir.path())).expect("job");
        let mut got = std::mem::take(&mut *out.lock().expect("lock"));
        let mut expected: Vec<u64> = generated().into_iter().map(|v| 2 * v).collect();
        if ordered {
            assert_eq!(got, expected, "in the order of the records");
        } else {
            got.sort_unstable();
            expected.sort_unstable();
            assert_eq!(got, expected, "every result once");
        }
    }
}

/// Counts the calls in flight and remembers the most at once; completes each after 1 ms.
#[derive(Clone)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Checkpointed for Concurrency {}

impl AsyncFunction<u64, u64> for Concurrency {
    fn async_invoke(&mut self, input: u64, result: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        let now = self.now.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1));
            now.fetch_sub(1, Ordering::SeqCst);
            result.complete(vec![input]);
        });
        Ok(())
    }
}

/// At most `capacity` calls are in flight in a subtask, and slow calls fill it.
#[test]
fn the_capacity_bounds_the_calls_in_flight() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Arc::new(Mutex::new(Vec::new()));
    let f = Concurrency {
        now: Arc::new(AtomicUsize::new(0)),
        most: Arc::new(AtomicUsize::new(0)),
    };
    let graph = numbers()
        .unordered_wait("lookup", f.clone(), Duration::from_secs(10), 5)
        .parallelism(1)
        .sink("sink", Collect(out.clone()));
    run(graph, plain_config(dir.path())).expect("job");
    assert_eq!(out.lock().expect("lock").len() as u64, TOTAL);
    assert_eq!(f.most.load(Ordering::SeqCst), 5);
}

/// Never completes the call of a record divisible by 100 (keeps its future), and answers
/// a timeout with `fallback` when there is one.
#[derive(Clone)]
struct Forgets {
    kept: Arc<Mutex<Vec<ResultFuture<u64>>>>,
    fallback: Option<u64>,
}

impl Checkpointed for Forgets {}

impl AsyncFunction<u64, u64> for Forgets {
    fn async_invoke(&mut self, input: u64, result: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        if input.is_multiple_of(100) {
            self.kept.lock().expect("lock").push(result);
        } else {
            result.complete(vec![input]);
        }
        Ok(())
    }

    fn timeout(&mut self, _: &u64) -> Option<Vec<u64>> {
        self.fallback.map(|f| vec![f])
    }
}

/// A call that does not complete in time gets the function's `timeout` answer, or fails
/// the job naming the operator.
#[test]
fn calls_that_time_out() {
    let input: Vec<u64> = generated();
    let forgotten = input.iter().filter(|v| *v % 100 == 0).count();
    assert!(forgotten > 0, "the input has records that time out");
    for fallback in [Some(u64::MAX), None] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let f = Forgets {
            kept: Arc::new(Mutex::new(Vec::new())),
            fallback,
        };
        let graph = numbers()
            .unordered_wait("lookup", f, Duration::from_millis(30), 1_000)
            .parallelism(1)
            .sink("sink", Collect(out.clone()));
        let mut cfg = plain_config(dir.path());
        cfg.restart.max_restarts = 0;
        let result = run(graph, cfg);
        match fallback {
            Some(f) => {
                result.expect("job");
                let got = std::mem::take(&mut *out.lock().expect("lock"));
                assert_eq!(got.iter().filter(|v| **v == f).count(), forgotten);
                assert_eq!(got.len(), input.len());
            }
            None => {
                let message = result.expect_err("times out").to_string();
                assert!(
                    message.contains("lookup") && message.contains("timed out after 30ms"),
                    "{message}"
                );
            }
        }
    }
}

/// A call completed with an error, or whose future was dropped, fails the job naming the
/// operator; a capacity of 0 is refused.
#[test]
fn failed_calls_fail_the_job() {
    for drop_it in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = BlockingCalls::new(2, move |v: u64| match v % 7 {
            3 if !drop_it => Err(format!("no such record {v}")),
            _ => Ok(vec![v]),
        });
        #[derive(Clone)]
        struct Drops;
        impl Checkpointed for Drops {}
        impl AsyncFunction<u64, u64> for Drops {
            fn async_invoke(&mut self, v: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
                if v % 7 != 3 {
                    r.complete(vec![v]);
                }
                Ok(())
            }
        }
        let stream = numbers();
        let results = if drop_it {
            stream.unordered_wait("lookup", Drops, Duration::from_secs(10), 10)
        } else {
            stream.unordered_wait("lookup", f, Duration::from_secs(10), 10)
        };
        let graph = results.sink("sink", cairn_runtime::sinks::DiscardSink);
        let mut cfg = plain_config(dir.path());
        cfg.restart.max_restarts = 0;
        let message = run(graph, cfg).expect_err("fails").to_string();
        let why = if drop_it {
            "dropped without being completed"
        } else {
            "no such record"
        };
        assert!(
            message.contains("operator lookup failed") && message.contains(why),
            "{message}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let graph = numbers()
        .unordered_wait("lookup", doubling(), Duration::from_secs(1), 0)
        .sink("sink", cairn_runtime::sinks::DiscardSink);
    let err = run(graph, plain_config(dir.path())).expect_err("refused");
    assert!(
        matches!(&err, RuntimeError::Config(m) if m.contains("lookup") && m.contains("capacity of 0")),
        "{err}"
    );
}

/// What comes out of an unordered operator before a watermark is every result of the
/// records before it: event-time windows after it drop nothing as late, and count each
/// window's records exactly.
#[test]
fn results_are_not_overtaken_by_watermarks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Arc::new(Mutex::new(Vec::new()));
    // Record n has time n ms, ascending: no record is late at the source.
    let stamped = numbers()
        .map("time", {
            let n = Arc::new(AtomicUsize::new(0));
            move |v: u64| (n.fetch_add(1, Ordering::SeqCst) as u64, v)
        })
        .assign_timestamps_and_watermarks(
            "watermarks",
            WatermarkStrategy::for_monotonous_timestamps(|(n, _): &(u64, u64)| *n),
        );
    let slow = BlockingCalls::new(8, |(n, v): (u64, u64)| {
        std::thread::sleep(jitter(v));
        Ok(vec![(n, v)])
    });
    let graph = stamped
        .unordered_wait("lookup", slow, Duration::from_secs(10), 50)
        .key_by(|_: &(u64, u64)| 0u8)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .process(
            "window",
            FnWindow(
                |_: &u8, w: TimeWindow, e: Vec<(u64, u64)>, out: &mut Collector<'_, _>| {
                    out.collect((w.start, e.len() as u64))
                },
            ),
        )
        .sink("sink", Collect(out.clone()));
    let mut cfg = plain_config(dir.path());
    cfg.auto_watermark_interval = Duration::from_millis(1);
    run(graph, cfg).expect("job");
    let got: BTreeMap<u64, u64> = std::mem::take(&mut *out.lock().expect("lock"))
        .into_iter()
        .collect();
    let expected: BTreeMap<u64, u64> = (0..TOTAL / 100).map(|w| (w * 100, 100)).collect();
    assert_eq!(got, expected);
}

/// Looks each word up (its length), slowly enough that checkpoints find calls in flight.
fn lookup() -> BlockingCalls<String, (String, u64)> {
    BlockingCalls::new(4, |w: String| {
        std::thread::sleep(Duration::from_micros(300));
        let n = w.len() as u64;
        Ok(vec![(w, n)])
    })
}

/// source → tokenize → fail → async lookup → key_by → count → two-phase sink: every word
/// counted exactly once through injected failures.
fn enriched_wordcount(
    input: &std::path::Path,
    output: &std::path::Path,
    fail: FailAt,
    ordered: bool,
) -> cairn_runtime::JobGraph {
    let words = source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .process("fail", fail);
    let timeout = Duration::from_secs(10);
    let looked_up = if ordered {
        words.ordered_wait("lookup", lookup(), timeout, 20)
    } else {
        words.unordered_wait("lookup", lookup(), timeout, 20)
    };
    looked_up
        .map("word", |(w, _): (String, u64)| w)
        .key_by(|w: &String| w.clone())
        .process("count", cairn_runtime::functions::Count::new())
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

#[test]
fn async_results_are_exactly_once_through_failures() {
    let cases = [
        (StateBackendConfig::HashMap, false, 1, false),
        (StateBackendConfig::HashMap, true, 2, true),
        (StateBackendConfig::rocksdb(), false, 2, true),
        (StateBackendConfig::rocksdb(), true, 3, false),
    ];
    for (backend, unaligned, parallelism, ordered) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, counts) = write_input(dir.path(), 1_500, 120, 44);
        let output = dir.path().join("out");
        let fail = FailAt::at(vec![1_500, 3_200]);
        let graph = enriched_wordcount(&input, &output, fail.clone(), ordered);
        let cfg = failure_config(dir.path(), backend.clone(), parallelism, unaligned, 10_000);
        let result = Job::new(graph, cfg).run().expect("job");
        assert_eq!(
            result.restarts, 2,
            "{backend:?} unaligned={unaligned} p={parallelism}"
        );
        check_exactly_once(&counts, &read_output(&output));
    }
}

/// A source of `(n, n)` records with timestamp `n`, in steps: a batch, or a pause (the
/// source idles once, so its assigner emits the watermark of what came before).
#[derive(Clone, Debug)]
struct Steps {
    steps: Vec<Option<Vec<u64>>>,
    next: usize,
}

impl Checkpointed for Steps {}

impl cairn_runtime::Source for Steps {
    type Out = u64;

    fn poll(
        &mut self,
        out: &mut Collector<'_, u64>,
        _max: usize,
    ) -> cairn_runtime::Result<cairn_runtime::SourceStatus> {
        let Some(step) = self.steps.get(self.next) else {
            return Ok(cairn_runtime::SourceStatus::End);
        };
        self.next += 1;
        match step {
            Some(records) => {
                for n in records {
                    out.collect_with_timestamp(*n, *n)?;
                }
                Ok(cairn_runtime::SourceStatus::More)
            }
            None => Ok(cairn_runtime::SourceStatus::Idle),
        }
    }
}

/// Holds the call of record 1 until the call of record 10 starts.
#[derive(Clone)]
struct Gate(Arc<Mutex<Vec<ResultFuture<u64>>>>);

impl Checkpointed for Gate {}

impl AsyncFunction<u64, u64> for Gate {
    fn async_invoke(&mut self, input: u64, result: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        let mut held = self.0.lock().expect("lock");
        match input {
            1 => held.push(result),
            10 => {
                for r in held.drain(..) {
                    r.complete(vec![1]);
                }
                result.complete(vec![10]);
            }
            n => result.complete(vec![n]),
        }
        Ok(())
    }
}

/// A watermark behind a call in flight does not hold the calls after it: record 1's call
/// answers only once record 10's has started, after two watermarks (0, then 8); every
/// result still comes, and no watermark passes record 1's result.
#[test]
fn a_watermark_waits_for_the_calls_before_it_without_holding_those_after_it() {
    for ordered in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let steps = Steps {
            steps: vec![
                Some(vec![1]),
                None,
                Some((2..=9).collect()),
                None,
                Some(vec![10]),
            ],
            next: 0,
        };
        let stamped = source("source", steps).assign_timestamps_and_watermarks(
            "watermarks",
            WatermarkStrategy::for_record_timestamps(Duration::ZERO),
        );
        let gate = Gate(Arc::new(Mutex::new(Vec::new())));
        let timeout = Duration::from_secs(5);
        let results = if ordered {
            stamped.ordered_wait("lookup", gate, timeout, 100)
        } else {
            stamped.unordered_wait("lookup", gate, timeout, 100)
        };
        let graph = results
            .parallelism(1)
            .sink("sink", CollectWatermarks(out.clone()));
        let mut cfg = plain_config(dir.path());
        cfg.restart.max_restarts = 0;
        // A watermark at each pause of the source.
        cfg.auto_watermark_interval = Duration::from_nanos(1);
        run(graph, cfg).expect("the job does not wait for record 1's call to time out");
        let got = std::mem::take(&mut *out.lock().expect("lock"));
        let values: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
        if ordered {
            assert_eq!(values, (1..=10).collect::<Vec<_>>());
        } else {
            let mut sorted = values.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (1..=10).collect::<Vec<_>>());
        }
        // No result reached the sink after a watermark at or past its time; record 10's
        // came after watermark 8.
        assert_eq!(
            got.iter().find(|(v, _)| *v == 10).map(|(_, w)| *w),
            Some(Some(8))
        );
        for (v, watermark) in &got {
            assert!(
                watermark.is_none_or(|w| w < *v),
                "{v} after watermark {watermark:?}"
            );
        }
    }
}

/// A record and the sink's watermark when it arrived.
type Arrival = (u64, Option<u64>);

/// Collects each record with the sink's watermark when it arrived.
#[derive(Clone, Debug)]
struct CollectWatermarks(Arc<Mutex<Vec<Arrival>>>);

impl Checkpointed for CollectWatermarks {}

impl cairn_runtime::Sink<u64> for CollectWatermarks {
    fn write(&mut self, record: u64) -> cairn_runtime::Result<()> {
        self.write_with_context(record, &cairn_runtime::SinkContext::default())
    }

    fn write_with_context(
        &mut self,
        record: u64,
        context: &cairn_runtime::SinkContext,
    ) -> cairn_runtime::Result<()> {
        self.0
            .lock()
            .expect("lock")
            .push((record, context.watermark));
        Ok(())
    }
}

/// Answers the first `flaky` attempts of each record divisible by 3 with `how` (an
/// error "busy", or no records), then the record; counts the attempts per record.
#[derive(Clone)]
struct Flaky {
    flaky: u32,
    error: bool,
    attempts: Arc<Mutex<BTreeMap<u64, u32>>>,
}

impl Checkpointed for Flaky {}

impl AsyncFunction<u64, u64> for Flaky {
    fn async_invoke(&mut self, input: u64, result: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        let mut attempts = self.attempts.lock().expect("lock");
        let n = attempts.entry(input).or_insert(0);
        *n += 1;
        if input.is_multiple_of(3) && *n <= self.flaky {
            if self.error {
                result.complete_exceptionally(format!("busy ({input})"));
            } else {
                result.complete(Vec::new());
            }
        } else {
            result.complete(vec![input]);
        }
        Ok(())
    }
}

/// Retries: calls answered with a retried error or with records the strategy retries
/// start again until they succeed, each record's result once; a strategy out of retries
/// lets the last error fail the job; an error no predicate accepts fails it at once.
#[test]
fn calls_are_retried_as_the_strategy_says() {
    use cairn_runtime::asyncio::AsyncRetryStrategy;
    let input = generated();
    let flaky_records = input.iter().filter(|v| v.is_multiple_of(3)).count() as u32;
    for (flaky, error, max_retries, retried, succeeds) in [
        (2, true, 3, true, true),
        (2, false, 2, true, true),
        (3, true, 2, true, false),
        (1, true, 3, false, false),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let f = Flaky {
            flaky,
            error,
            attempts: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let strategy = AsyncRetryStrategy::fixed_delay(max_retries, Duration::from_millis(1));
        let strategy = match (error, retried) {
            (true, true) => strategy.retry_if_error(|e| e.starts_with("busy")),
            (true, false) => strategy.retry_if_error(|e| e.starts_with("overloaded")),
            (false, _) => strategy.retry_if_result(|r| r.is_empty()),
        };
        let graph = numbers()
            .unordered_wait_with_retry("lookup", f.clone(), Duration::from_secs(10), 20, strategy)
            .parallelism(1)
            .sink("sink", Collect(out.clone()));
        let mut cfg = plain_config(dir.path());
        cfg.restart.max_restarts = 0;
        let result = run(graph, cfg);
        let case = format!("flaky {flaky}, error {error}, retries {max_retries}");
        if succeeds {
            result.expect(&case);
            let mut got = std::mem::take(&mut *out.lock().expect("lock"));
            got.sort_unstable();
            let mut expected = input.clone();
            expected.sort_unstable();
            assert_eq!(got, expected, "{case}");
            let attempts = f.attempts.lock().expect("lock");
            let total: u32 = attempts.values().sum();
            assert_eq!(total, input.len() as u32 + flaky * flaky_records, "{case}");
        } else {
            let message = result.expect_err(&case).to_string();
            assert!(
                message.contains("lookup") && message.contains("asynchronous call failed: busy"),
                "{case}: {message}"
            );
            let attempts = f.attempts.lock().expect("lock");
            let most = attempts.values().copied().max().unwrap_or(0);
            let expected = if retried { max_retries + 1 } else { 1 };
            assert_eq!(most, expected, "{case}: attempts of the failing call");
        }
    }
}
