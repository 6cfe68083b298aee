//! End-to-end workloads W1 (keyed count) and W2 (savepoint and backend switch) on
//! `cairn-runtime`, as defined in `../shared/bench/WORKLOADS.md`: one JSON line per run, then
//! medians and ratios against baselines measured in the same invocation.
//!
//! `cargo bench -p cairn-benches --bench runtime` — environment: `CAIRN_W1_RECORDS`
//! (default 20,000,000), `CAIRN_W1_KEYS` (1,000,000), `CAIRN_RUNS` (3), `CAIRN_W1_CONFIGS`
//! (comma-separated subset of a,b,c,d,e,f; `f` runs the changelog under both backends,
//! `f-hashmap` or `f-rocksdb` under one),
//! `CAIRN_PARALLELISM` (`1,2`), `CAIRN_SKIP_W2`,
//! `CAIRN_ROCKSDB_CACHE` (the RocksDB backend's write-back cache capacity in entries;
//! default: the backend's default), `CAIRN_ROCKSDB_SPILL` (its spill capacity in entries,
//! 0 for none; default: the backend's default, none), `CAIRN_ROCKSDB_WRITE_BUFFER` (its memtable
//! size in bytes; default: the backend's default), `CAIRN_ROCKSDB_WAL` (`0` turns its
//! `checkpoint_wal` off: every checkpoint flushes the memtables).
//!
//! Besides WORKLOADS.md's fields, each W1 line has `peak_rss_mib` and the CPU the run took
//! (`cpu_s`, `cpu_ns_per_record`: every thread of the process, background work included),
//! and the table a "CPU vs none" column. On two cores the throughput of a checkpointing run
//! depends on whether the other core is free for its background work; its CPU per record
//! does not, so that ratio is the checkpoint's cost on a machine with no spare core.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_runtime::functions::Count;
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointConfig, Job, JobConfig, JobGraph, JobResult, RestoreFrom, SavepointFormat,
    SnapshotMode, StateBackendConfig,
};
use serde_json::json;

fn graph(src: GeneratorSource) -> JobGraph {
    source("source", src)
        .key_by(|k: &u64| *k)
        .process("count", Count::<u64, u64>::new())
        .sink("sink", DiscardSink)
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The RocksDB backend's write-back cache capacity (entries): `CAIRN_ROCKSDB_CACHE` when
/// set, else the backend's default. Every RocksDB line reports it (`rocksdb_cache_entries`):
/// W1's figures depend on whether its 1M keys fit.
fn rocksdb_cache_entries() -> usize {
    let default = cairn_rocksdb::RocksDbOptions::default().cache_capacity;
    std::env::var("CAIRN_ROCKSDB_CACHE")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// RocksDB with its default options, except the write-back cache's capacity
/// ([`rocksdb_cache_entries`]).
fn backend(name: &str, dir: &std::path::Path) -> StateBackendConfig {
    match name {
        "rocksdb" => {
            let defaults = cairn_rocksdb::RocksDbOptions::default();
            let options = cairn_rocksdb::RocksDbOptions {
                cache_capacity: rocksdb_cache_entries(),
                spill_capacity: env("CAIRN_ROCKSDB_SPILL", defaults.spill_capacity as u64) as usize,
                write_buffer_bytes: env(
                    "CAIRN_ROCKSDB_WRITE_BUFFER",
                    defaults.write_buffer_bytes as u64,
                ) as usize,
                checkpoint_wal: env("CAIRN_ROCKSDB_WAL", u64::from(defaults.checkpoint_wal)) != 0,
                ..defaults
            };
            StateBackendConfig::RocksDb {
                local_dir: dir.join("rocksdb"),
                options,
            }
        }
        _ => StateBackendConfig::HashMap,
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 0.5)
}

struct W1 {
    config: &'static str,
    backend: &'static str,
    snapshot: &'static str,
}

const W1_CONFIGS: [W1; 7] = [
    W1 {
        config: "a",
        backend: "hashmap",
        snapshot: "none",
    },
    W1 {
        config: "b",
        backend: "hashmap",
        snapshot: "incremental",
    },
    W1 {
        config: "c",
        backend: "rocksdb",
        snapshot: "none",
    },
    W1 {
        config: "d",
        backend: "rocksdb",
        snapshot: "incremental",
    },
    W1 {
        config: "e",
        backend: "rocksdb",
        snapshot: "full",
    },
    // f: the changelog (every change appended to a durable log, periodic materialization)
    // over either backend; compared with a and c.
    W1 {
        config: "f",
        backend: "hashmap",
        snapshot: "changelog",
    },
    W1 {
        config: "f",
        backend: "rocksdb",
        snapshot: "changelog",
    },
];

fn run_w1(
    w: &W1,
    parallelism: u32,
    records: u64,
    keys: u64,
) -> cairn_runtime::Result<serde_json::Value> {
    let dir =
        tempfile::tempdir().map_err(|e| cairn_runtime::RuntimeError::Config(e.to_string()))?;
    let checkpointing = w.snapshot != "none";
    let config = JobConfig {
        parallelism,
        backend: backend(w.backend, dir.path()),
        checkpoint: CheckpointConfig {
            interval: checkpointing.then(|| Duration::from_secs(1)),
            snapshot_mode: match w.snapshot {
                "full" => SnapshotMode::Full,
                "changelog" => SnapshotMode::Changelog,
                _ => SnapshotMode::Incremental,
            },
            timeout: Duration::from_secs(120),
            ..CheckpointConfig::default()
        },
        checkpoint_dir: dir.path().join("checkpoints").display().to_string(),
        batch_size: 1024,
        channel_capacity: 8,
        ..JobConfig::default()
    };
    reset_peak_rss();
    let cpu_before = process_cpu_s();
    let r = Job::new(graph(GeneratorSource::new(records, keys, 42)), config).run()?;
    let peak_rss_mib = peak_rss_mib();
    let cpu = match (cpu_before, process_cpu_s()) {
        (Some(a), Some(b)) => json!({"cpu_s": b - a,
                                     "cpu_ns_per_record": (b - a) * 1e9 / r.records.max(1) as f64}),
        _ => json!({}),
    };
    Ok(line(
        "W1",
        w.backend,
        w.snapshot,
        parallelism,
        keys,
        &r,
        merge(
            if w.backend == "rocksdb" {
                json!({"config": w.config, "peak_rss_mib": peak_rss_mib,
                       "rocksdb_cache_entries": rocksdb_cache_entries(),
                       "rocksdb_spill_entries": env("CAIRN_ROCKSDB_SPILL",
                           cairn_rocksdb::RocksDbOptions::default().spill_capacity as u64),
                       "rocksdb_checkpoint_wal": env("CAIRN_ROCKSDB_WAL",
                           u64::from(cairn_rocksdb::RocksDbOptions::default().checkpoint_wal)) != 0})
            } else {
                json!({"config": w.config, "peak_rss_mib": peak_rss_mib})
            },
            cpu,
        ),
    ))
}

/// `a` with the fields of `b` added.
fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(o), Some(e)) = (a.as_object_mut(), b.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    a
}

/// CPU seconds (user and system, every thread, also those that ended) the process has used
/// (Linux: `/proc/self/stat`, in clock ticks of 1/100 s), or `None` where it is not known.
///
/// On two cores a run's throughput depends on whether the other core is free for the
/// background work (compaction, sealing, uploads); the CPU a record costs does not, so it
/// tells configurations apart when the machine's load or speed drifts between runs.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime
    // and stime are the 12th and 13th of them.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Resets the process's peak resident set size to its current size (Linux: `5` to
/// `/proc/self/clear_refs`), so that [`peak_rss_mib`] covers one run. Memory the allocator
/// kept from earlier runs still counts: for a table of memory per configuration, run each
/// configuration in its own process (`CAIRN_W1_CONFIGS`, `CAIRN_PARALLELISM`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set size (`VmHWM`) in MiB, or null where it is not known.
fn peak_rss_mib() -> serde_json::Value {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(serde_json::Value::Null, |kib| json!(kib / 1024))
}

fn line(
    workload: &str,
    backend: &str,
    snapshot: &str,
    parallelism: u32,
    keys: u64,
    r: &JobResult,
    extra: serde_json::Value,
) -> serde_json::Value {
    let bytes: Vec<f64> = r.checkpoint_bytes.iter().map(|b| *b as f64).collect();
    let v = json!({
        "workload": workload,
        "backend": backend,
        "snapshot": snapshot,
        "parallelism": parallelism,
        "records": r.records,
        "keys": keys,
        "wall_s": r.wall_s,
        "records_per_s": r.records as f64 / r.wall_s,
        "checkpoints_completed": r.checkpoints_completed,
        "checkpoint_duration_ms_p50": percentile(&r.checkpoint_durations_ms, 0.5),
        "checkpoint_duration_ms_max": percentile(&r.checkpoint_durations_ms, 1.0),
        "checkpoint_bytes_p50": percentile(&bytes, 0.5),
        "sync_phase_ms_max": r.sync_phase_ms_max,
        "barrier_forward_ms_max": r.barrier_forward_ms_max,
        "input_end_ms": r.input_end_ms,
    });
    merge(v, extra)
}

/// W2: build the W1 state over `keys` keys under `built`, stop with a savepoint in `format`,
/// and restore it under each of `restore_under` (until the job could process its first
/// record). WORKLOADS.md's W2 is the canonical savepoint of the heap backend restored under
/// both; the RocksDB rows compare its canonical and native savepoints.
fn run_w2(
    keys: u64,
    built: &str,
    format: SavepointFormat,
    restore_under: &[&'static str],
) -> cairn_runtime::Result<Vec<serde_json::Value>> {
    let dir =
        tempfile::tempdir().map_err(|e| cairn_runtime::RuntimeError::Config(e.to_string()))?;
    let records = keys * 2;
    let config = JobConfig {
        batch_size: 1024,
        savepoint_dir: Some(dir.path().join("savepoints").display().to_string()),
        checkpoint_dir: dir.path().join("checkpoints").display().to_string(),
        ..JobConfig::default()
    };
    let handle = Job::new(
        graph(GeneratorSource::new(records, keys, 42).idle_at_end()),
        JobConfig {
            backend: backend(built, dir.path()),
            ..config.clone()
        },
    )
    .start()?;
    while handle.records_read() < records {
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    let savepoint = handle.stop_with_savepoint_as(None, format)?;
    let write_s = t.elapsed().as_secs_f64();
    let built_run = handle.wait()?;
    let bytes: u64 = walk_size(std::path::Path::new(&savepoint));
    let snapshot = match format {
        SavepointFormat::Canonical => "savepoint",
        SavepointFormat::Native => "native-savepoint",
    };
    let mut out = vec![json!({
        "workload": "W2", "phase": "savepoint", "backend": built, "snapshot": snapshot,
        "parallelism": 1, "records": built_run.records, "keys": keys,
        "savepoint_bytes": bytes, "write_s": write_s,
    })];
    for &b in restore_under {
        let rdir =
            tempfile::tempdir().map_err(|e| cairn_runtime::RuntimeError::Config(e.to_string()))?;
        let cfg = JobConfig {
            backend: backend(b, rdir.path()),
            restore: Some(RestoreFrom::Path(savepoint.clone())),
            ..config.clone()
        };
        let r = Job::new(graph(GeneratorSource::new(records, keys, 42)), cfg).run()?;
        out.push(json!({
            "workload": "W2", "phase": "restore", "backend": b, "snapshot": snapshot,
            "built_under": built, "parallelism": 1, "records": r.records, "keys": keys,
            "restore_s": r.startup_ms / 1000.0,
        }));
    }
    Ok(out)
}

fn walk_size(p: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| walk_size(&e.path()))
        .sum()
}

fn main() -> cairn_runtime::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let records = env("CAIRN_W1_RECORDS", 20_000_000);
    let keys = env("CAIRN_W1_KEYS", 1_000_000);
    let runs = env("CAIRN_RUNS", 3).max(1);
    let wanted: Vec<String> = std::env::var("CAIRN_W1_CONFIGS")
        .unwrap_or_else(|_| "a,b,c,d,e,f".into())
        .split(',')
        .map(str::to_string)
        .collect();
    let ps: Vec<u32> = std::env::var("CAIRN_PARALLELISM")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    // Keyed by (configuration, backend, parallelism): f runs under both backends.
    type Key = (&'static str, &'static str, u32);
    let mut rates: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    let mut syncs: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    let mut rss: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    let mut cpu: BTreeMap<Key, Vec<f64>> = BTreeMap::new();
    // Interleave the configurations run by run, so drift hits them alike.
    for _ in 0..runs {
        for &p in &ps {
            for w in W1_CONFIGS.iter().filter(|w| {
                wanted
                    .iter()
                    .any(|x| *x == w.config || *x == format!("{}-{}", w.config, w.backend))
            }) {
                let v = run_w1(w, p, records, keys)?;
                println!("{v}");
                let key = (w.config, w.backend, p);
                rates
                    .entry(key)
                    .or_default()
                    .push(v["records_per_s"].as_f64().unwrap_or(0.0));
                syncs
                    .entry(key)
                    .or_default()
                    .push(v["sync_phase_ms_max"].as_f64().unwrap_or(0.0));
                if let Some(m) = v["peak_rss_mib"].as_f64() {
                    rss.entry(key).or_default().push(m);
                }
                if let Some(c) = v["cpu_ns_per_record"].as_f64() {
                    cpu.entry(key).or_default().push(c);
                }
            }
        }
    }
    println!("\nW1 medians of {runs} runs ({records} records, {keys} keys):");
    println!(
        "{:<4} {:<8} {:<12} {:>3} {:>14} {:>10} {:>14} {:>13} {:>12} {:>10}",
        "cfg",
        "backend",
        "snapshot",
        "p",
        "records/s",
        "vs none",
        "sync max ms",
        "peak RSS MiB",
        "CPU ns/rec",
        "CPU vs none"
    );
    for (&(cfg, backend, p), r) in &rates {
        let base = if backend == "rocksdb" { "c" } else { "a" };
        let base_rate = rates.get(&(base, backend, p)).map(|v| median(v));
        let cpu_of = |c: &str| cpu.get(&(c, backend, p)).map(|v| median(v));
        let (cpu_here, cpu_base) = (cpu_of(cfg), cpu_of(base));
        let snapshot = W1_CONFIGS
            .iter()
            .find(|w| w.config == cfg && w.backend == backend)
            .map_or("", |w| w.snapshot);
        println!(
            "{:<4} {:<8} {:<12} {:>3} {:>14.0} {:>10} {:>14.2} {:>13} {:>12} {:>10}",
            cfg,
            backend,
            snapshot,
            p,
            median(r),
            base_rate
                .map(|b| format!("{:.3}", median(r) / b))
                .unwrap_or_default(),
            syncs.get(&(cfg, backend, p)).map_or(0.0, |v| median(v)),
            rss.get(&(cfg, backend, p))
                .map(|v| format!("{:.0}", median(v)))
                .unwrap_or_default(),
            cpu_here.map(|c| format!("{c:.0}")).unwrap_or_default(),
            cpu_here
                .zip(cpu_base)
                .map(|(c, b)| format!("{:.3}", c / b))
                .unwrap_or_default(),
        );
    }
    if std::env::var("CAIRN_SKIP_W2").is_err() {
        let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let cases: [(&str, SavepointFormat, &[&'static str]); 3] = [
            (
                "hashmap",
                SavepointFormat::Canonical,
                &["hashmap", "rocksdb"],
            ),
            ("rocksdb", SavepointFormat::Canonical, &["rocksdb"]),
            ("rocksdb", SavepointFormat::Native, &["rocksdb"]),
        ];
        for _ in 0..runs {
            for (built, format, under) in cases {
                for v in run_w2(keys, built, format, under)? {
                    println!("{v}");
                    let of = format!("{} of {built}", v["snapshot"].as_str().unwrap_or(""));
                    let (k, x) = match v["phase"].as_str() {
                        Some("savepoint") => (format!("{of}: write s"), v["write_s"].as_f64()),
                        _ => (
                            format!("{of}: restore {} s", v["backend"].as_str().unwrap_or("")),
                            v["restore_s"].as_f64(),
                        ),
                    };
                    by.entry(k).or_default().push(x.unwrap_or(0.0));
                    if let Some(b) = v["savepoint_bytes"].as_u64() {
                        by.entry(format!("{of}: bytes")).or_default().push(b as f64);
                    }
                }
            }
        }
        println!("\nW2 medians of {runs} runs ({keys} keys):");
        for (k, v) in &by {
            println!("{k:<44} {:>14.3}", median(v));
        }
    }
    Ok(())
}
