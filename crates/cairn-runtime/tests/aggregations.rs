//! Rolling aggregations (`min`, `max`, `min_by`, `max_by`) on keyed streams and windows
//! over a whole stream (`window_all`, `count_window_all`), end to end.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, FnWindow, InitContext, Job, JobConfig, ProcessFunction,
    StateBackendConfig, TimeWindow, TumblingEventTimeWindows, WatermarkStrategy,
};
use common::Collect;

const TOTAL: u64 = 3_000;
const KEYS: u64 = 1_000;
const SEED: u64 = 44;

/// The generator's records, in order (one source subtask).
fn records() -> Vec<u64> {
    let g = GeneratorSource::new(TOTAL, KEYS, SEED);
    (0..TOTAL).map(|n| g.key_of(n)).collect()
}

fn config(parallelism: u32, backend: StateBackendConfig, dir: &std::path::Path) -> JobConfig {
    let mut cfg = common::config(dir, 50);
    cfg.parallelism = parallelism;
    cfg.backend = backend;
    cfg
}

fn backends() -> [StateBackendConfig; 2] {
    [StateBackendConfig::HashMap, StateBackendConfig::rocksdb()]
}

/// What a rolling aggregation of `f` emits per key (`v % 7`), in order.
fn model(f: impl Fn(u64, u64) -> u64) -> BTreeMap<u64, Vec<u64>> {
    let mut so_far: BTreeMap<u64, u64> = BTreeMap::new();
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for v in records() {
        let key = v % 7;
        let next = match so_far.get(&key) {
            Some(prev) => f(*prev, v),
            None => v,
        };
        so_far.insert(key, next);
        out.entry(key).or_default().push(next);
    }
    out
}

fn per_key(emitted: Vec<(u64, u64)>) -> BTreeMap<u64, Vec<u64>> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (k, v) in emitted {
        out.entry(k).or_default().push(v);
    }
    out
}

/// Each rolling aggregation emits, per key, its result after every record; `min_by` and
/// `max_by` keep the first of equals (by `v / 10`, so there are ties).
#[test]
fn rolling_aggregations_match_a_model() {
    type Agg = fn(cairn_runtime::KeyedStream<u64, u64>) -> cairn_runtime::Stream<(u64, u64)>;
    type Model = fn(u64, u64) -> u64;
    let cases: [(&str, Agg, Model); 4] = [
        ("min", |k| k.min("agg"), |a, b| a.min(b)),
        ("max", |k| k.max("agg"), |a, b| a.max(b)),
        (
            "min_by",
            |k| k.min_by("agg", |v| v / 10),
            |a, b| if b / 10 < a / 10 { b } else { a },
        ),
        (
            "max_by",
            |k| k.max_by("agg", |v| v / 10),
            |a, b| if b / 10 > a / 10 { b } else { a },
        ),
    ];
    for backend in backends() {
        for (name, agg, f) in cases {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = Arc::new(Mutex::new(Vec::new()));
            let keyed = source("source", GeneratorSource::new(TOTAL, KEYS, SEED))
                .parallelism(1)
                .key_by(|v: &u64| v % 7);
            let graph = agg(keyed).sink("sink", Collect(out.clone()));
            Job::new(graph, config(2, backend.clone(), dir.path()))
                .run()
                .expect("job");
            let emitted = std::mem::take(&mut *out.lock().expect("lock"));
            assert_eq!(per_key(emitted), model(f), "{name} under {backend:?}");
        }
    }
}

/// Records its subtask's parallelism when initialized, and passes records on.
#[derive(Clone, Debug)]
struct Parallelism(Arc<Mutex<Vec<u32>>>);

impl Checkpointed for Parallelism {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(ctx.subtask.parallelism);
        Ok(())
    }
}

impl<T: Clone + Send + 'static> ProcessFunction<T, T> for Parallelism {
    fn process(&mut self, input: T, out: &mut Collector<'_, T>) -> cairn_runtime::Result<()> {
        out.collect(input)
    }
}

/// Event-time windows over the whole stream at parallelism 3: each window holds every
/// record whose time is in it, whatever its key, and the window operator (with what is
/// chained after it) runs in one subtask.
#[test]
fn windows_over_a_whole_stream() {
    for backend in backends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let parallelism = Arc::new(Mutex::new(Vec::new()));
        // Record n has time n ms: windows of 100 ms hold 100 records each.
        let stamped = source("source", GeneratorSource::new(TOTAL, KEYS, SEED))
            .parallelism(1)
            .process("number", Number::default())
            .assign_timestamps_and_watermarks(
                "watermarks",
                WatermarkStrategy::for_monotonous_timestamps(|(n, _): &(u64, u64)| *n),
            );
        let graph = stamped
            .window_all(TumblingEventTimeWindows::of(Duration::from_millis(100)))
            .process(
                "window",
                FnWindow(
                    |_: &(), w: TimeWindow, e: Vec<(u64, u64)>, out: &mut Collector<'_, _>| {
                        let sum: u64 = e.iter().map(|(_, v)| v).sum();
                        out.collect((w.start, e.len() as u64, sum))
                    },
                ),
            )
            .process("after", Parallelism(parallelism.clone()))
            .sink("sink", Collect(out.clone()));
        Job::new(graph, config(3, backend.clone(), dir.path()))
            .run()
            .expect("job");
        let mut emitted = std::mem::take(&mut *out.lock().expect("lock"));
        emitted.sort_unstable();
        let values = records();
        let expected: Vec<(u64, u64, u64)> = (0..TOTAL / 100)
            .map(|w| {
                let sum = values[(w * 100) as usize..((w + 1) * 100) as usize]
                    .iter()
                    .sum();
                (w * 100, 100, sum)
            })
            .collect();
        assert_eq!(emitted, expected, "under {backend:?}");
        assert_eq!(
            *parallelism.lock().expect("lock"),
            vec![1],
            "one subtask after the window"
        );
    }
}

/// Pairs each record with its position in the stream (one subtask, no failures).
#[derive(Clone, Debug, Default)]
struct Number(u64);

impl Checkpointed for Number {}

impl ProcessFunction<u64, (u64, u64)> for Number {
    fn process(
        &mut self,
        v: u64,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.0 += 1;
        out.collect((self.0 - 1, v))
    }
}

/// Count windows over the whole stream: every `n` records, whatever their keys, and the
/// sliding form's last `size` every `slide`.
#[test]
fn count_windows_over_a_whole_stream() {
    let values = records();
    for sliding in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let stream = source("source", GeneratorSource::new(TOTAL, KEYS, SEED)).parallelism(1);
        let windowed = if sliding {
            stream.count_window_all_sliding(10, 4)
        } else {
            stream.count_window_all(7)
        };
        let graph = windowed
            .reduce("window", |a, b| a + b)
            .sink("sink", Collect(out.clone()));
        Job::new(graph, config(2, StateBackendConfig::HashMap, dir.path()))
            .run()
            .expect("job");
        let emitted: Vec<u64> = std::mem::take(&mut *out.lock().expect("lock"))
            .into_iter()
            .map(|((), w, v)| {
                assert_eq!(w, TimeWindow::GLOBAL);
                v
            })
            .collect();
        let expected: Vec<u64> = if sliding {
            (1..=TOTAL as usize / 4)
                .map(|k| values[(4 * k).saturating_sub(10)..4 * k].iter().sum())
                .collect()
        } else {
            values.chunks_exact(7).map(|c| c.iter().sum()).collect()
        };
        assert_eq!(emitted, expected, "sliding: {sliding}");
    }
}

/// Counts and sums the values of `(n, v)` records.
#[derive(Clone, Debug)]
struct CountSum;

impl cairn_core::AggregateFunction<(u64, u64), (u64, u64), (u64, u64)> for CountSum {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), (_, v): (u64, u64)) {
        acc.0 += 1;
        acc.1 += v;
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

impl cairn_core::MergingAggregateFunction<(u64, u64), (u64, u64), (u64, u64)> for CountSum {
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// `(key, window start, window end, count, sum)`.
type Summary = (u64, u64, u64, u64, u64);

/// Emits one summary of the folded `(count, sum)` of a window of a key.
fn summary(
    key: &u64,
    w: TimeWindow,
    folded: Vec<(u64, u64)>,
    out: &mut Collector<'_, Summary>,
) -> cairn_runtime::Result<()> {
    for (count, sum) in folded {
        out.collect((*key, w.start, w.end, count, sum))?;
    }
    Ok(())
}

/// The generator's records `(n, v)` at time `n` keyed by `v % 5`.
fn timed_records() -> cairn_runtime::Stream<(u64, u64)> {
    source("source", GeneratorSource::new(TOTAL, KEYS, SEED))
        .parallelism(1)
        .process("number", Number::default())
        .assign_timestamps_and_watermarks(
            "watermarks",
            WatermarkStrategy::for_monotonous_timestamps(|(n, _): &(u64, u64)| *n),
        )
}

/// Incremental aggregation with a process window function, on tumbling windows (an
/// aggregate) and sessions (a reduce, merged): one summary per window of a key, against a
/// model, under both backends.
#[test]
fn windows_fold_then_process() {
    let values = records();
    let key = |v: u64| v % 5;
    for backend in backends() {
        for sessions in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let out = Arc::new(Mutex::new(Vec::new()));
            // `(1, v)`: a reduction that adds both up counts and sums.
            let keyed = timed_records()
                .map("one", |(_, v): (u64, u64)| (1, v))
                .key_by(move |(_, v): &(u64, u64)| key(*v));
            let summaries = if sessions {
                let gap =
                    cairn_runtime::EventTimeSessionWindows::with_gap(Duration::from_millis(8));
                keyed.window(gap).reduce_and_process(
                    "window",
                    |a, b| (a.0 + b.0, a.1 + b.1),
                    FnWindow(summary),
                )
            } else {
                keyed
                    .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
                    .aggregate_and_process("window", CountSum, FnWindow(summary))
            };
            let graph = summaries.sink("sink", Collect(out.clone()));
            Job::new(graph, config(2, backend.clone(), dir.path()))
                .run()
                .expect("job");
            let mut got = std::mem::take(&mut *out.lock().expect("lock"));
            got.sort_unstable();
            let mut expected: Vec<Summary> = Vec::new();
            for k in 0..5 {
                let times: Vec<(u64, u64)> = values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| key(**v) == k)
                    .map(|(n, v)| (n as u64, *v))
                    .collect();
                if sessions {
                    let mut i = 0;
                    while i < times.len() {
                        let mut j = i + 1;
                        while j < times.len() && times[j].0 <= times[j - 1].0 + 8 {
                            j += 1;
                        }
                        let part = &times[i..j];
                        let sum = part.iter().map(|(_, v)| v).sum();
                        expected.push((
                            k,
                            part[0].0,
                            part[j - i - 1].0 + 8,
                            part.len() as u64,
                            sum,
                        ));
                        i = j;
                    }
                } else {
                    let mut windows: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
                    for (n, v) in times {
                        let e = windows.entry(n / 100 * 100).or_default();
                        e.0 += 1;
                        e.1 += v;
                    }
                    for (start, (count, sum)) in windows {
                        expected.push((k, start, start + 100, count, sum));
                    }
                }
            }
            expected.sort_unstable();
            assert_eq!(got, expected, "sessions: {sessions}, {backend:?}");
        }
    }
}

/// A shared buffer to print into.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The print sink writes each record's `Debug` form on a line, prefixed as Flink's
/// `print()` does: nothing or the identifier at one subtask, the subtask number (from 1)
/// at several.
#[test]
fn the_print_sink_prints_as_flink_does() {
    for (parallelism, prefix) in [(1, None), (1, Some("ids")), (2, None), (2, Some("ids"))] {
        let dir = tempfile::tempdir().expect("tempdir");
        let buffer = Buffer::default();
        let mut sink = cairn_runtime::sinks::PrintSink::to(Arc::new(Mutex::new(buffer.clone())));
        if let Some(p) = prefix {
            sink = sink.with_prefix(p);
        }
        let graph = source("source", GeneratorSource::new(100, KEYS, SEED))
            .parallelism(1)
            .rebalance()
            .sink("print", sink);
        Job::new(
            graph,
            config(parallelism, StateBackendConfig::HashMap, dir.path()),
        )
        .run()
        .expect("job");
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = Vec::new();
        let values: Vec<u64> = records().into_iter().take(100).collect();
        // The round-robin deal of the records over the sink's subtasks is not the test's
        // business: strip the subtask number and check it is one of them.
        let mut stripped: Vec<String> = lines
            .iter()
            .map(|line| {
                let (head, record) = line.split_once("> ").unwrap_or(("", line));
                let subtask = match (prefix, parallelism) {
                    (Some(p), 2) => head.strip_prefix(&format!("{p}:")).unwrap_or("?"),
                    (Some(p), _) => {
                        assert_eq!(head, p);
                        "1"
                    }
                    (None, 2) => head,
                    (None, _) => {
                        assert_eq!(*line, record, "no prefix at one subtask");
                        "1"
                    }
                };
                assert!(["1", "2"].contains(&subtask), "{line}");
                record.to_string()
            })
            .collect();
        stripped.sort_unstable();
        for v in values {
            expected.push(v.to_string());
        }
        expected.sort_unstable();
        assert_eq!(stripped, expected, "p{parallelism} {prefix:?}");
    }
}
