//! W3 (`../shared/bench/WORKLOADS.md`) for the RocksDB backend: state access for one key
//! group, beside raw RocksDB doing the same operations on the same serialized bytes, in the
//! same process.
//!
//! Run: `cargo bench -p cairn-benches --bench w3_rocksdb`. It prints its own figures (median
//! of `RUNS` interleaved runs of `OPS` operations per side, as JSON lines and a table);
//! `W3_CRITERION=1` then also runs the value get+update under criterion.
//!
//! - Keys are `u64`, serialized as bincode fixint (8 bytes little endian), all in key group 0
//!   of 128, drawn uniformly from `KEYS` keys with a fixed seed; the backend owns key group 0.
//! - Every backend operation includes `set_current_key`.
//! - The backend runs twice: without its write-back cache (`cache_capacity` 0: every access
//!   is a RocksDB get or write) and with a cache that holds the whole working set.
//! - The raw side is a RocksDB instance with one column family and the backend's documented
//!   options (64 MiB LRU block cache with index and filter blocks, 32 MiB write buffers x2,
//!   dynamic level bytes, LZ4 / ZSTD bottommost, 10-bit bloom filters, format version 5, two
//!   background jobs, the concatenating merge operator, the WAL buffered in memory with
//!   `manual_wal_flush` and never synced), `WriteOptions` with the WAL on and default
//!   `ReadOptions` (`get_pinned_cf`), as the backend (`RocksDbOptions::checkpoint_wal`). Its keys are the backend's
//!   layout built by hand: `kg u16 BE | esc(key) | esc(namespace)` (`| user key` for maps),
//!   `esc(b)` = `b` with `0x00` → `0x00 0xFF`, then `0x00 0x01`; values are bincode `u64`
//!   (8 bytes LE); list elements are appended with a merge of `len u32 LE | bytes`.
//! - `W3_OPS=n` and `W3_KEYS=n` override the operation and key counts; `W3_ONLY=a,b` restricts
//!   the operations.

use cairn_benches::median;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_core::{
    key_group_for_key, BincodeCodec, Codec, KeyGroupRange, KeyedStateBackend, ListStateDescriptor,
    ListStateId, MapStateDescriptor, MapStateId, StateAccess, ValueStateDescriptor, ValueStateId,
};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use criterion::{Criterion, Throughput};
use rocksdb::{Cache, ColumnFamilyDescriptor, Options, ReadOptions, WriteOptions, DB};

/// Operations per measured run (WORKLOADS.md: 5,000,000).
const OPS: usize = 5_000_000;
/// Distinct keys the operations are drawn from.
const KEYS: usize = 100_000;
/// User keys per map.
const USER_KEYS: u64 = 8;
const MAX_P: u32 = 128;
/// Measured runs per side; the median is reported.
const RUNS: usize = 3;
/// Cache entries of the cached configuration: more than the largest working set
/// (`KEYS * USER_KEYS` map entries).
const BIG_CACHE: usize = 1 << 21;

#[inline]
fn ser(k: u64) -> [u8; 8] {
    k.to_le_bytes()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn keys_in_group0(n: usize) -> Vec<u64> {
    (0u64..)
        .filter(|k| key_group_for_key(&ser(*k), MAX_P) == 0)
        .take(n)
        .collect()
}

/// `ops` keys drawn uniformly from `keys` (xorshift64*, fixed seed).
fn sequence(keys: &[u64], ops: usize) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..ops)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            keys[(r % keys.len() as u64) as usize]
        })
        .collect()
}

// ---- The backend side. ----

fn backend(dir: &Path, cache_capacity: usize) -> RocksDbBackend {
    RocksDbBackend::new(RocksDbConfig {
        uid: "w3".into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::new(0, 1),
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
        local_dir: dir.to_path_buf(),
        options: RocksDbOptions {
            cache_capacity,
            ..RocksDbOptions::default()
        },
    })
    .expect("backend")
}

fn value_backend(b: &mut RocksDbBackend, s: &ValueStateId<u64, ()>, seq: &[u64]) {
    for &k in seq {
        b.set_current_key(&ser(k)).expect("key");
        let v = b.value(s).get().expect("get").unwrap_or(0);
        b.value(s).update(v + 1).expect("update");
    }
}

fn list_backend(b: &mut RocksDbBackend, s: &ListStateId<u64, ()>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        b.set_current_key(&ser(k)).expect("key");
        b.list(s).add(i as u64).expect("add");
    }
}

fn map_put_backend(b: &mut RocksDbBackend, s: &MapStateId<u64, u64, ()>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        b.set_current_key(&ser(k)).expect("key");
        b.map(s).put(i as u64 % USER_KEYS, i as u64).expect("put");
    }
}

fn map_get_backend(b: &mut RocksDbBackend, s: &MapStateId<u64, u64, ()>, seq: &[u64]) -> u64 {
    let mut sum = 0u64;
    for (i, &k) in seq.iter().enumerate() {
        b.set_current_key(&ser(k)).expect("key");
        sum = sum.wrapping_add(
            b.map(s)
                .get(&(i as u64 % USER_KEYS))
                .expect("get")
                .unwrap_or(0),
        );
    }
    sum
}

// ---- The raw side. ----

/// The backend's own column-family options (`cairn_rocksdb::column_family_options`), so
/// raw RocksDB runs with exactly the settings the backend uses.
fn raw_options(cache: &Cache) -> Options {
    cairn_rocksdb::column_family_options(&cairn_rocksdb::RocksDbOptions::default(), cache)
}

/// Raw RocksDB with one column family `s`, the WAL buffered, default read options.
struct Raw {
    db: DB,
    write: WriteOptions,
    read: ReadOptions,
    key: Vec<u8>,
}

impl Raw {
    fn open(dir: &Path) -> Self {
        let cache = Cache::new_lru_cache(64 << 20);
        let mut opts = raw_options(&cache);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_manual_wal_flush(true);
        let db = DB::open_cf_descriptors(
            &opts,
            dir.join("raw"),
            vec![ColumnFamilyDescriptor::new("s", raw_options(&cache))],
        )
        .expect("open raw");
        let write = WriteOptions::default();
        Self {
            db,
            write,
            read: ReadOptions::default(),
            key: Vec::with_capacity(64),
        }
    }

    /// `kg(0) | esc(key) | esc(())` into `self.key`.
    #[inline]
    fn build(&mut self, k: u64) {
        self.key.clear();
        self.key.extend_from_slice(&0u16.to_be_bytes());
        for b in ser(k) {
            self.key.push(b);
            if b == 0 {
                self.key.push(0xFF);
            }
        }
        self.key.extend_from_slice(&[0, 1]);
        // The namespace `()` encodes to no bytes: esc(empty) = 0x00 0x01.
        self.key.extend_from_slice(&[0, 1]);
    }

    fn get_u64(&self) -> Option<u64> {
        let cf = self.db.cf_handle("s").expect("cf");
        self.db
            .get_pinned_cf_opt(&cf, &self.key, &self.read)
            .expect("get")
            .map(|v| u64::from_le_bytes(v[..8].try_into().expect("8 bytes")))
    }

    fn put_u64(&self, v: u64) {
        let cf = self.db.cf_handle("s").expect("cf");
        self.db
            .put_cf_opt(&cf, &self.key, v.to_le_bytes(), &self.write)
            .expect("put");
    }
}

fn value_raw(r: &mut Raw, seq: &[u64]) {
    for &k in seq {
        r.build(k);
        let v = r.get_u64().unwrap_or(0);
        r.put_u64(v + 1);
    }
}

fn list_raw(r: &mut Raw, seq: &[u64]) {
    let mut el = [0u8; 12];
    el[..4].copy_from_slice(&8u32.to_le_bytes());
    for (i, &k) in seq.iter().enumerate() {
        r.build(k);
        el[4..].copy_from_slice(&(i as u64).to_le_bytes());
        let cf = r.db.cf_handle("s").expect("cf");
        r.db.merge_cf_opt(&cf, &r.key, el, &r.write).expect("merge");
    }
}

fn map_put_raw(r: &mut Raw, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        r.build(k);
        r.key
            .extend_from_slice(&(i as u64 % USER_KEYS).to_le_bytes());
        r.put_u64(i as u64);
    }
}

fn map_get_raw(r: &mut Raw, seq: &[u64]) -> u64 {
    let mut sum = 0u64;
    for (i, &k) in seq.iter().enumerate() {
        r.build(k);
        r.key
            .extend_from_slice(&(i as u64 % USER_KEYS).to_le_bytes());
        sum = sum.wrapping_add(r.get_u64().unwrap_or(0));
    }
    sum
}

// ---- One measured run of each operation, on fresh state. ----

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// One run of `op` on a fresh backend (`cache_capacity` `cap`) in its own directory.
/// Each side gets its own instance, dropped before the next side runs, so no side's
/// background flushes or compactions overlap another side's measurement.
fn run_backend(op: &str, keys: &[u64], seq: &[u64], cap: usize) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = backend(dir.path(), cap);
    match op {
        "value_get_update" => {
            let s = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .expect("register");
            // Every side starts with every key present: the measured operations update.
            value_backend(&mut b, &s, keys);
            time(|| value_backend(&mut b, &s, seq))
        }
        "list_add" => {
            let s = b
                .register_list(&ListStateDescriptor::<u64>::new("l"))
                .expect("register");
            time(|| list_backend(&mut b, &s, seq))
        }
        "map_put" | "map_get" => {
            let s = b
                .register_map(&MapStateDescriptor::<u64, u64>::new("m"))
                .expect("register");
            let put = time(|| map_put_backend(&mut b, &s, seq));
            if op == "map_put" {
                return put;
            }
            time(|| {
                black_box(map_get_backend(&mut b, &s, seq));
            })
        }
        _ => unreachable!("unknown op {op}"),
    }
}

/// One run of `op` on a fresh raw instance in its own directory.
fn run_raw(op: &str, keys: &[u64], seq: &[u64]) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = Raw::open(dir.path());
    match op {
        "value_get_update" => {
            value_raw(&mut raw, keys);
            time(|| value_raw(&mut raw, seq))
        }
        "list_add" => time(|| list_raw(&mut raw, seq)),
        "map_put" | "map_get" => {
            let put = time(|| map_put_raw(&mut raw, seq));
            if op == "map_put" {
                return put;
            }
            time(|| {
                black_box(map_get_raw(&mut raw, seq));
            })
        }
        _ => unreachable!("unknown op {op}"),
    }
}

/// Durations of one run of `op`: (backend without cache, backend with cache, raw).
fn run_once(op: &str, keys: &[u64], seq: &[u64]) -> [Duration; 3] {
    [
        run_backend(op, keys, seq, 0),
        run_backend(op, keys, seq, BIG_CACHE),
        run_raw(op, keys, seq),
    ]
}

const OPS_NAMES: [&str; 4] = ["value_get_update", "list_add", "map_put", "map_get"];

fn own_figures(keys: &[u64], seq: &[u64]) {
    let ops = seq.len();
    let nkeys = keys.len();
    println!(
        "W3 rocksdb backend vs raw RocksDB: {ops} ops over {nkeys} keys in one key group, median of {RUNS} interleaved runs"
    );
    let only = std::env::var("W3_ONLY").ok();
    let mut table = Vec::new();
    for op in OPS_NAMES {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == op))
        {
            continue;
        }
        let mut t: [Vec<Duration>; 3] = Default::default();
        for _ in 0..RUNS {
            let r = run_once(op, keys, seq);
            for i in 0..3 {
                t[i].push(r[i]);
            }
        }
        let [nc, ca, raw] = t.map(median);
        let rate = |d: Duration| ops as f64 / d.as_secs_f64();
        for (cache, d) in [("off", nc), ("on", ca)] {
            println!(
                "{{\"workload\":\"W3\",\"op\":\"{op}\",\"backend\":\"rocksdb\",\"cache\":\"{cache}\",\"snapshot\":\"none\",\"parallelism\":1,\"records\":{ops},\"keys\":{nkeys},\"wall_s\":{:.4},\"records_per_s\":{:.0},\"baseline\":\"raw_rocksdb\",\"baseline_wall_s\":{:.4},\"baseline_records_per_s\":{:.0},\"ratio\":{:.3}}}",
                d.as_secs_f64(),
                rate(d),
                raw.as_secs_f64(),
                rate(raw),
                rate(d) / rate(raw)
            );
        }
        table.push((op, rate(nc), rate(ca), rate(raw)));
    }
    println!(
        "{:<18} {:>14} {:>14} {:>14} {:>10} {:>10}",
        "op", "no cache ops/s", "cache ops/s", "raw ops/s", "nc/raw", "cache/raw"
    );
    for (op, nc, ca, raw) in &table {
        println!(
            "{op:<18} {nc:>14.0} {ca:>14.0} {raw:>14.0} {:>10.3} {:>10.3}",
            nc / raw,
            ca / raw
        );
    }
}

fn criterion_benches(c: &mut Criterion, keys: &[u64], seq: &[u64]) {
    const CHUNK: usize = 100_000;
    let chunks: Vec<&[u64]> = seq.chunks(CHUNK).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut g = c.benchmark_group("w3_rocksdb");
    g.throughput(Throughput::Elements(CHUNK as u64));
    for (name, cap) in [("backend_no_cache", 0), ("backend_cache", BIG_CACHE)] {
        let mut b = backend(dir.path(), cap);
        let s = b
            .register_value(&ValueStateDescriptor::<u64>::new("v"))
            .expect("register");
        value_backend(&mut b, &s, keys);
        let mut i = 0;
        g.bench_function(format!("value_get_update/{name}"), |bench| {
            bench.iter(|| {
                i += 1;
                value_backend(&mut b, &s, chunks[i % chunks.len()]);
            })
        });
    }
    let mut raw = Raw::open(dir.path());
    value_raw(&mut raw, keys);
    let mut i = 0;
    g.bench_function("value_get_update/raw_rocksdb", |bench| {
        bench.iter(|| {
            i += 1;
            value_raw(&mut raw, chunks[i % chunks.len()]);
        })
    });
    g.finish();
}

fn main() {
    let keys = keys_in_group0(env_usize("W3_KEYS", KEYS));
    let seq = sequence(&keys, env_usize("W3_OPS", OPS));
    own_figures(&keys, &seq);
    if std::env::var("W3_CRITERION").is_ok_and(|v| v == "1") {
        let mut c = Criterion::default()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .configure_from_args();
        criterion_benches(&mut c, &keys, &seq);
        c.final_summary();
    }
}
