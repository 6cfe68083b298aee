//! Keyed event-time windows end to end on `cairn-runtime`: the throughput (records per
//! second) of tumbling windows, sliding windows and sessions, under the heap backend and
//! RocksDB, in one invocation; one JSON line per run, then medians and each configuration's
//! ratio to tumbling windows under the same backend.
//!
//! `cargo bench -p cairn-benches --bench windows`
//!
//! The job: `GeneratorSource` (`u64` keys) → a chained function that gives the `n`-th record
//! of its subtask the event time `n / CAIRN_WIN_RECORDS_PER_MS` ms (monotonous timestamps,
//! watermarks every 200 ms of wall time, the runtime's default) → `key_by` key → windows →
//! `reduce` (the latest timestamp) → a sink that counts the windows fired. No checkpoints.
//! - `tumbling`: windows of 1,000 ms (the baseline);
//! - `sliding`: windows of 1,000 ms every 250 ms (each record in 4 windows);
//! - `sessions`: sessions with a gap of `CAIRN_WIN_GAP_MS` (see [`default_gap_ms`]).
//!
//! Each run checks the windows fired against the count computed from the source's keys
//! (for sessions a range: see [`expected_windows`]), and fails if none or another number
//! fired.
//!
//! Environment: `CAIRN_WIN_RECORDS` (records under the heap backend, default 2,000,000),
//! `CAIRN_WIN_ROCKSDB_RECORDS` (under RocksDB, default 500,000), `CAIRN_WIN_KEYS` (10,000),
//! `CAIRN_WIN_RECORDS_PER_MS` (records of a subtask per millisecond of event time, 100),
//! `CAIRN_WIN_GAP_MS` (the session gap; default 3 × the mean time between two records of a
//! key, 300 ms with the other defaults), `CAIRN_WIN_CONFIGS` (comma-separated subset of
//! `tumbling,sliding,sessions`), `CAIRN_WIN_BACKENDS` (subset of `hashmap,rocksdb`),
//! `CAIRN_RUNS` (runs of each configuration, 3, interleaved: the order rotates every
//! round), `CAIRN_PARALLELISM` (1).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, EventTimeSessionWindows, Job, JobConfig, JobGraph,
    ProcessFunction, Sink, SlidingEventTimeWindows, StateBackendConfig, Stream, TimeWindow,
    TumblingEventTimeWindows, WatermarkStrategy,
};
use serde_json::json;

const CONFIGS: [&str; 3] = ["tumbling", "sliding", "sessions"];
const BACKENDS: [&str; 2] = ["hashmap", "rocksdb"];
/// Size and slide (ms) of the windows of `tumbling` and `sliding`.
const TUMBLING: (u64, u64) = (1_000, 1_000);
const SLIDING: (u64, u64) = (1_000, 250);

/// What every run shares.
#[derive(Clone, Copy, Debug)]
struct Params {
    keys: u64,
    records_per_ms: u64,
    gap_ms: u64,
    parallelism: u32,
}

/// Gives the `n`-th record of its subtask the event time `n / records_per_ms` (ms).
#[derive(Clone, Debug)]
struct EventTime {
    records_per_ms: u64,
    n: u64,
}

impl Checkpointed for EventTime {}

impl ProcessFunction<u64, (u64, u64)> for EventTime {
    fn process(
        &mut self,
        key: u64,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let timestamp = self.n / self.records_per_ms;
        self.n += 1;
        out.collect((key, timestamp))
    }
}

/// Counts what it gets (the windows fired) in a counter its subtasks share.
#[derive(Clone, Debug)]
struct CountSink(Arc<AtomicU64>);

impl Checkpointed for CountSink {}

impl<T> Sink<T> for CountSink {
    fn write(&mut self, _record: T) -> cairn_runtime::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn graph(config: &str, records: u64, p: &Params, fired: Arc<AtomicU64>) -> JobGraph {
    let keyed = source("source", GeneratorSource::new(records, p.keys, 42))
        .process(
            "event-time",
            EventTime {
                records_per_ms: p.records_per_ms,
                n: 0,
            },
        )
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|r: &(u64, u64)| r.1),
        )
        .key_by(|r: &(u64, u64)| r.0);
    let latest = |a: (u64, u64), b: (u64, u64)| (a.0, a.1.max(b.1));
    let ms = Duration::from_millis;
    let windows: Stream<(u64, TimeWindow, (u64, u64))> = match config {
        "sessions" => keyed
            .window(EventTimeSessionWindows::with_gap(ms(p.gap_ms)))
            .reduce("windows", latest),
        "sliding" => keyed
            .window(SlidingEventTimeWindows::of(ms(SLIDING.0), ms(SLIDING.1)))
            .reduce("windows", latest),
        _ => keyed
            .window(TumblingEventTimeWindows::of(ms(TUMBLING.0)))
            .reduce("windows", latest),
    };
    windows.sink("sink", CountSink(fired))
}

/// The default session gap: 3 × the mean event time between two records of a key.
///
/// Each subtask's event time advances 1 ms per `records_per_ms` of its records, so the job
/// reads `parallelism × records_per_ms` records per ms of event time, and a key (drawn at
/// random among `keys`) gets one every `keys / (parallelism × records_per_ms)` ms on
/// average: 10,000 / 100 = 100 ms with the defaults, so the gap is 300 ms. The times
/// between two records of a key are close to exponential, so a session ends after a record
/// with probability e^-3 ≈ 5 %: sessions of about 20 records on average (a geometric
/// number: many of a handful, some of 50 or more), lasting ~2 s of event time, that close
/// all through the run. With 2,000,000 records a key has ~200, so ~1 + 199 × e^-3 ≈ 11
/// sessions: ~110,000 in all (500,000 records under RocksDB: ~34,000). For comparison, a
/// gap of 1,000 ms would close a session with probability e^-10: one session per key,
/// fired at the end of the input.
fn default_gap_ms(keys: u64, records_per_ms: u64, parallelism: u32) -> u64 {
    (3 * keys / (records_per_ms * u64::from(parallelism))).max(1)
}

/// The windows each configuration must fire, as `(min, max)`, computed from the keys and
/// timestamps the source and [`EventTime`] give the records: subtask `i` of `p` emits
/// records `i, i + p, …`, so record `n` is the `n / p`-th of its subtask.
///
/// Tumbling and sliding windows: one per key and window holding a record of it (records
/// are never late: each subtask's timestamps only grow). Sessions: a record more than a
/// gap after the key's previous one starts a new session, one within less than a gap
/// extends it; one exactly a gap after touches the session and merges with it unless a
/// watermark fired the session in between (which depends on the wall clock), so that
/// case counts once in `min` and twice in `max`.
fn expected_windows(records: u64, p: &Params) -> BTreeMap<&'static str, (u64, u64)> {
    let source = GeneratorSource::new(records, p.keys, 42);
    let par = u64::from(p.parallelism);
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); p.keys as usize];
    for n in 0..records {
        times[source.key_of(n) as usize].push(n / par / p.records_per_ms);
    }
    let (mut tumbling, mut sliding, mut min, mut max) = (0, 0, 0, 0);
    for t in &mut times {
        t.sort_unstable();
        tumbling += fixed_windows(t, TUMBLING);
        sliding += fixed_windows(t, SLIDING);
        if !t.is_empty() {
            min += 1 + t.windows(2).filter(|d| d[1] - d[0] > p.gap_ms).count() as u64;
            max += 1 + t.windows(2).filter(|d| d[1] - d[0] >= p.gap_ms).count() as u64;
        }
    }
    BTreeMap::from([
        ("tumbling", (tumbling, tumbling)),
        ("sliding", (sliding, sliding)),
        ("sessions", (min, max)),
    ])
}

/// The distinct windows of `(size, slide)` ms that the sorted `times` fall in. Window `j`
/// starts at `j × slide` (before the epoch: at it, but it still ends at `j × slide + size`,
/// another window); time `t` is in windows `j` with `t - size < j × slide <= t`.
fn fixed_windows(times: &[u64], (size, slide): (u64, u64)) -> u64 {
    let (size, slide) = (size as i64, slide as i64);
    let mut last: Option<i64> = None;
    let mut count = 0;
    for &t in times {
        let t = t as i64;
        let (lo, hi) = ((t - size).div_euclid(slide) + 1, t.div_euclid(slide));
        let from = last.map_or(lo, |l| lo.max(l + 1));
        count += (hi - from + 1).max(0) as u64;
        last = Some(hi);
    }
    count
}

fn run(
    config: &str,
    backend: &str,
    records: u64,
    p: &Params,
    expected: (u64, u64),
) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let job = JobConfig {
        parallelism: p.parallelism,
        backend: match backend {
            "rocksdb" => StateBackendConfig::RocksDb {
                local_dir: dir.path().join("rocksdb"),
                options: cairn_rocksdb::RocksDbOptions::default(),
            },
            _ => StateBackendConfig::HashMap,
        },
        checkpoint_dir: dir.path().join("checkpoints").display().to_string(),
        ..JobConfig::default()
    };
    let fired = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let r = Job::new(graph(config, records, p, fired.clone()), job)
        .run()
        .map_err(|e| format!("{config} under {backend}: the job failed: {e}"))?;
    let elapsed_s = t.elapsed().as_secs_f64();
    let fired = fired.load(Ordering::Relaxed);
    if fired == 0 {
        return Err(format!(
            "{config} under {backend}: no window fired ({} records read, {expected:?} expected)",
            r.records
        ));
    }
    if r.records != records || fired < expected.0 || fired > expected.1 {
        return Err(format!(
            "{config} under {backend}: {fired} windows fired of {} records read; expected \
             {} to {} of {records} records",
            r.records, expected.0, expected.1
        ));
    }
    Ok(json!({
        "workload": "windows",
        "config": config,
        "backend": backend,
        "parallelism": p.parallelism,
        "records": r.records,
        "keys": p.keys,
        "records_per_ms": p.records_per_ms,
        "gap_ms": (config == "sessions").then_some(p.gap_ms),
        "elapsed_s": elapsed_s,
        "wall_s": r.wall_s,
        "records_per_s": r.records as f64 / elapsed_s,
        "windows_fired": fired,
        "windows_expected_min": expected.0,
        "windows_expected_max": expected.1,
    }))
}

/// A whole number from the environment (`_` allowed as a separator), else `default`.
fn env(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(v) => v
            .replace('_', "")
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?}: not a whole number")),
        Err(_) => Ok(default),
    }
}

/// The names of `all` that the comma-separated `name` picks (default: all).
fn pick(name: &str, all: &[&'static str]) -> Result<Vec<&'static str>, String> {
    let Ok(v) = std::env::var(name) else {
        return Ok(all.to_vec());
    };
    let wanted: Vec<&str> = v.split(',').map(str::trim).collect();
    if let Some(w) = wanted.iter().find(|w| !all.contains(w)) {
        return Err(format!("{name}: unknown {w:?} (known: {})", all.join(",")));
    }
    Ok(all.iter().copied().filter(|a| wanted.contains(a)).collect())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    if let Err(e) = bench() {
        eprintln!("windows bench: {e}");
        std::process::exit(1);
    }
}

fn bench() -> Result<(), String> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let keys = env("CAIRN_WIN_KEYS", 10_000)?.max(1);
    let records_per_ms = env("CAIRN_WIN_RECORDS_PER_MS", 100)?.max(1);
    let parallelism = u32::try_from(env("CAIRN_PARALLELISM", 1)?.max(1))
        .map_err(|_| "CAIRN_PARALLELISM: too large".to_string())?;
    let p = Params {
        keys,
        records_per_ms,
        gap_ms: env(
            "CAIRN_WIN_GAP_MS",
            default_gap_ms(keys, records_per_ms, parallelism),
        )?
        .max(1),
        parallelism,
    };
    let runs = env("CAIRN_RUNS", 3)?.max(1);
    let configs = pick("CAIRN_WIN_CONFIGS", &CONFIGS)?;
    let backends = pick("CAIRN_WIN_BACKENDS", &BACKENDS)?;
    let mut records_of = BTreeMap::new();
    records_of.insert("hashmap", env("CAIRN_WIN_RECORDS", 2_000_000)?);
    records_of.insert("rocksdb", env("CAIRN_WIN_ROCKSDB_RECORDS", 500_000)?);
    let mut expected = BTreeMap::new();
    for b in &backends {
        let n = records_of[b];
        expected.entry(n).or_insert_with(|| expected_windows(n, &p));
    }

    let mut order: Vec<(&str, &str)> = backends
        .iter()
        .flat_map(|&b| configs.iter().map(move |&c| (c, b)))
        .collect();
    let mut rates: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    let mut fired: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for round in 0..runs {
        // Interleaved, and each round starts elsewhere, so drift hits every configuration.
        if round > 0 {
            order.rotate_left(1);
        }
        for &(config, backend) in &order {
            let records = records_of[backend];
            let v = run(config, backend, records, &p, expected[&records][config])?;
            println!("{v}");
            rates
                .entry((backend, config))
                .or_default()
                .push(v["records_per_s"].as_f64().unwrap_or(0.0));
            fired.insert((backend, config), v["windows_fired"].as_u64().unwrap_or(0));
        }
    }

    println!(
        "\nwindows: medians of {runs} runs ({keys} keys, {records_per_ms} records/ms of event \
         time, parallelism {parallelism}, session gap {} ms):",
        p.gap_ms
    );
    println!(
        "{:<8} {:<9} {:>10} {:>14} {:>14} {:>12}",
        "backend", "config", "records", "windows fired", "records/s", "vs tumbling"
    );
    for &backend in &backends {
        let base = rates.get(&(backend, "tumbling")).map(|v| median(v));
        for &config in &configs {
            let rate = median(&rates[&(backend, config)]);
            println!(
                "{:<8} {:<9} {:>10} {:>14} {:>14.0} {:>12}",
                backend,
                config,
                records_of[backend],
                fired[&(backend, config)],
                rate,
                base.map(|b| format!("{:.3}", rate / b)).unwrap_or_default(),
            );
        }
    }
    Ok(())
}
