//! W2 (`../shared/bench/WORKLOADS.md`): savepoint and backend switch at K = 1,000,000 keys.
//!
//! Run: `cargo bench -p cairn-benches --bench w2` (`W2_KEYS=n` overrides K, `W2_RUNS=n` the
//! runs; default 3, medians reported).
//!
//! - The state is W1's after its input: a `ValueState<u64>` count per `u64` key (bincode,
//!   8 bytes LE), K keys `0..K`, at parallelism 1 (all 128 key groups). It is written
//!   directly (count `1 + k * 2654435761 % 40`), not by replaying W1's 20M records; the
//!   same state is built in a heap and in a RocksDB backend (default options).
//! - Savepoint write: synchronous phase (`snapshot_operator`) + `write_savepoint` (asynchronous
//!   phase, publish), into a fresh local directory; bytes on disk are the sizes of every
//!   file in it, manifest included.
//! - Restore: from the heap backend's savepoint, from `open_savepoint` until the restored
//!   backend served its first get (`set_current_key(0)` + `get`): a fresh backend,
//!   `restore_subtask`, `register_value`, the get. Under the heap backend, and under the
//!   RocksDB backend (whose worker threads build SST files per state, then ingested).
//! - Baseline of the RocksDB restore: a put-per-entry restore of the same savepoint into a
//!   fresh RocksDB instance with the backend's options (one column family): open the
//!   savepoint, read and decode its state file with the same reader the backends use
//!   (`StateFileReader::scan`), and for each entry build the backend's key
//!   (`kg u16 BE | esc(key) | esc(namespace)`) and put it into a `WriteBatch`, written with
//!   the WAL off whenever it holds `PUT_BATCH_BYTES`, then the same first get. A second
//!   variant also flushes the memtable before the get (so the entries end in an SST file,
//!   as ingestion leaves them). Speeding up the shared decode speeds up the baseline too.
//! - Each run does every step once, in this order (interleaved); `ratio` is
//!   `baseline_wall_s / wall_s` of the medians (above 1: faster than the baseline), and
//!   `ratio_runs` the same ratio within each run (min, median, max), which a busy machine
//!   disturbs less; `cpu_s` is a step's CPU time (user + system of every thread, from
//!   `/proc/self/stat`, 10 ms ticks) averaged over the runs, and `cpu_ratio` the baseline's
//!   over the ingestion's, which other load on the machine disturbs far less than wall
//!   times. Every line carries the 1-minute load average (`/proc/loadavg`) before
//!   the state is built and after the runs: the ingestion restore uses every core, so
//!   figures from a loaded machine are not comparable with an idle one's.

use cairn_benches::{env_u64, load_average, median};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_core::{
    BincodeCodec, Codec, KeyGroupRange, KeyedData, KeyedStateBackend, OperatorStateBackend,
    SnapshotOptions, StateAccess, ValueStateDescriptor,
};
use cairn_format::StateFileReader;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{
    open_savepoint, restore_subtask, snapshot_operator, write_savepoint, SubtaskRef,
};
use rocksdb::{Cache, ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};

const MAX_P: u32 = 128;
const UID: &str = "w2";
const KEYS: u64 = 1_000_000;
/// The put-per-entry baseline writes its batch whenever it holds this many bytes.
const PUT_BATCH_BYTES: usize = 4 << 20;

#[inline]
fn ser(k: u64) -> [u8; 8] {
    k.to_le_bytes()
}

fn count(k: u64) -> u64 {
    1 + k.wrapping_mul(2_654_435_761) % 40
}

fn rocks_backend(dir: &Path) -> RocksDbBackend {
    RocksDbBackend::new(RocksDbConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
        local_dir: dir.to_path_buf(),
        options: RocksDbOptions::default(),
    })
    .expect("rocksdb backend")
}

fn heap_backend() -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
    })
    .expect("heap backend")
}

fn fill<B: StateAccess>(b: &mut B, keys: u64) {
    let s = b
        .register_value(&ValueStateDescriptor::<u64>::new("count"))
        .expect("register");
    for k in 0..keys {
        b.set_current_key(&ser(k)).expect("key");
        b.value(&s).update(count(k)).expect("update");
    }
}

/// Writes a savepoint of `b` to `url`; returns its write time.
fn savepoint<B: KeyedStateBackend>(b: &mut B, url: &str, id: u64) -> Duration {
    let op_state = OperatorStateBackend::new(UID);
    let t = Instant::now();
    let pending = snapshot_operator(
        UID,
        MAX_P,
        [SubtaskRef {
            keyed: Some(b),
            operator: &op_state,
        }],
        SnapshotOptions::savepoint(id),
    )
    .expect("synchronous phase");
    write_savepoint(url, id, vec![pending]).expect("write savepoint");
    t.elapsed()
}

fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("dir entry");
        let md = e.metadata().expect("metadata");
        total += if md.is_dir() {
            bytes_on_disk(&e.path())
        } else {
            md.len()
        };
    }
    total
}

/// Restores the savepoint at `url` into `b` and serves the first get; returns the value.
fn restore_into<B: StateAccess>(mut b: B, url: &str) -> (B, u64) {
    let (m, source) = open_savepoint(url).expect("open savepoint");
    let mut op_state = OperatorStateBackend::new(UID);
    restore_subtask(&m, UID, 1, 0, Some(&mut b), &mut op_state, &source).expect("restore");
    let s = b
        .register_value(&ValueStateDescriptor::<u64>::new("count"))
        .expect("register");
    b.set_current_key(&ser(0)).expect("key");
    let v = b.value(&s).get().expect("get").expect("restored value");
    (b, v)
}

/// The backend's own column-family options (`cairn_rocksdb::column_family_options`), so
/// raw RocksDB runs with exactly the settings the backend uses.
fn raw_options(cache: &Cache) -> Options {
    cairn_rocksdb::column_family_options(&cairn_rocksdb::RocksDbOptions::default(), cache)
}

fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Put-per-entry restore of the savepoint at `url` into a fresh DB under `dir` (with
/// `flush`, the memtable is then flushed to an SST file, as ingestion leaves it), then the
/// first get. Returns the DB (dropped by the caller, untimed) and the value.
fn restore_put_per_entry(url: &str, dir: &Path, flush: bool) -> (DB, u64) {
    let (m, source) = open_savepoint(url).expect("open savepoint");
    let cache = Cache::new_lru_cache(64 << 20);
    let mut opts = raw_options(&cache);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    let db = DB::open_cf_descriptors(
        &opts,
        dir,
        vec![ColumnFamilyDescriptor::new("count", raw_options(&cache))],
    )
    .expect("open raw");
    let mut write = WriteOptions::default();
    write.disable_wal(true);
    let cf = db.cf_handle("count").expect("cf");
    let op = m.operator(UID).expect("operator");
    let mut key = Vec::with_capacity(64);
    let mut batch = WriteBatch::default();
    for sub in &op.subtasks {
        let Some(h) = &sub.keyed else { continue };
        let KeyedData::Canonical { files } = &h.data else {
            panic!("a savepoint is canonical")
        };
        for f in files {
            let bytes = cairn_core::SnapshotSource::read_file(&source, &f.file).expect("read");
            let reader = StateFileReader::open(bytes, &f.file.name).expect("state file");
            assert_eq!(reader.states().len(), 1, "one state");
            for range in &f.key_groups {
                reader
                    .scan::<cairn_format::FormatError, _>(*range, |e| {
                        key.clear();
                        key.extend_from_slice(&(e.key_group as u16).to_be_bytes());
                        push_escaped(&mut key, e.key);
                        push_escaped(&mut key, e.namespace);
                        if let Some(uk) = e.user_key {
                            key.extend_from_slice(uk);
                        }
                        batch.put_cf(&cf, &key, e.value);
                        if batch.size_in_bytes() >= PUT_BATCH_BYTES {
                            db.write_opt(std::mem::take(&mut batch), &write)
                                .expect("write batch");
                        }
                        Ok(())
                    })
                    .expect("scan");
            }
        }
    }
    db.write_opt(batch, &write).expect("write batch");
    if flush {
        db.flush_cf(&cf).expect("flush");
    }
    // The first get, as the backends serve it.
    let k0 = ser(0);
    key.clear();
    key.extend_from_slice(&(cairn_core::key_group_for_key(&k0, MAX_P) as u16).to_be_bytes());
    push_escaped(&mut key, &k0);
    push_escaped(&mut key, &[]);
    let v = db
        .get_pinned_cf(&cf, &key)
        .expect("get")
        .map(|v| u64::from_le_bytes(v[..8].try_into().expect("8 bytes")))
        .expect("restored value");
    (db, v)
}

/// CPU time of the process so far (user + system, every thread, finished ones included;
/// `/proc/self/stat`, in clock ticks of 10 ms), or zero where there is none.
fn cpu_time() -> Duration {
    const TICK: Duration = Duration::from_millis(10);
    let ticks = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name `(…)`: state is field 3, utime 14, stime 15.
            let rest = s.get(s.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u32>().ok()? + f.get(12)?.parse::<u32>().ok()?)
        })
        .unwrap_or(0);
    TICK * ticks
}

/// `(min, median, max)` of `base[i] / wall[i]`: the ratio within each run.
fn run_ratios(base: &[Duration], wall: &[Duration]) -> (f64, f64, f64) {
    let mut r: Vec<f64> = base
        .iter()
        .zip(wall)
        .map(|(b, w)| b.as_secs_f64() / w.as_secs_f64())
        .collect();
    r.sort_by(f64::total_cmp);
    (r[0], r[r.len() / 2], r[r.len() - 1])
}

fn main() {
    let keys = env_u64("W2_KEYS", KEYS);
    let runs = env_u64("W2_RUNS", 3) as usize;
    let tmp = tempfile::tempdir().expect("tempdir");
    let load_start = load_average();
    println!("W2: {keys} keys of W1 state (ValueState<u64> count), parallelism 1, median of {runs} interleaved runs");
    let t = Instant::now();
    let mut heap = heap_backend();
    fill(&mut heap, keys);
    let build_heap = t.elapsed();
    let t = Instant::now();
    let mut rocks = rocks_backend(&tmp.path().join("src"));
    fill(&mut rocks, keys);
    let build_rocks = t.elapsed();
    println!(
        "built in {:.2} s (hashmap), {:.2} s (rocksdb)",
        build_heap.as_secs_f64(),
        build_rocks.as_secs_f64()
    );

    let names = [
        "savepoint_write_hashmap",
        "savepoint_write_rocksdb",
        "restore_hashmap",
        "restore_rocksdb_ingest",
        "restore_rocksdb_put_per_entry",
        "restore_rocksdb_put_per_entry_flushed",
    ];
    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    // CPU time of each step, summed over the runs.
    let mut cpu = vec![Duration::ZERO; names.len()];
    let mut sp_bytes = (0, 0);
    for r in 0..runs {
        let dir = tmp.path().join(format!("run{r}"));
        let sp_heap = dir.join("sp-hashmap");
        let sp_rocks = dir.join("sp-rocksdb");
        let url_heap = sp_heap.to_str().expect("utf-8").to_string();
        let url_rocks = sp_rocks.to_str().expect("utf-8").to_string();
        let c = cpu_time();
        t[0].push(savepoint(&mut heap, &url_heap, r as u64 + 1));
        cpu[0] += cpu_time().saturating_sub(c);
        let c = cpu_time();
        t[1].push(savepoint(&mut rocks, &url_rocks, r as u64 + 1));
        cpu[1] += cpu_time().saturating_sub(c);
        sp_bytes = (bytes_on_disk(&sp_heap), bytes_on_disk(&sp_rocks));

        let (c, start) = (cpu_time(), Instant::now());
        let (b, v) = restore_into(heap_backend(), &url_heap);
        t[2].push(start.elapsed());
        cpu[2] += cpu_time().saturating_sub(c);
        assert_eq!(v, count(0));
        drop(b);

        let (c, start) = (cpu_time(), Instant::now());
        let (b, v) = restore_into(rocks_backend(&dir.join("restore")), &url_heap);
        t[3].push(start.elapsed());
        cpu[3] += cpu_time().saturating_sub(c);
        assert_eq!(v, count(0));
        drop(b);

        let (c, start) = (cpu_time(), Instant::now());
        let (db, v) = restore_put_per_entry(&url_heap, &dir.join("put"), false);
        t[4].push(start.elapsed());
        cpu[4] += cpu_time().saturating_sub(c);
        assert_eq!(v, count(0));
        drop(db);

        let (c, start) = (cpu_time(), Instant::now());
        let (db, v) = restore_put_per_entry(&url_heap, &dir.join("put-flushed"), true);
        t[5].push(start.elapsed());
        cpu[5] += cpu_time().saturating_sub(c);
        assert_eq!(v, count(0));
        drop(db);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
    let load_end = load_average();
    let ingest_runs = run_ratios(&t[4], &t[3]);
    let m: Vec<Duration> = t.into_iter().map(median).collect();
    // Mean CPU seconds per run of each step.
    let c: Vec<f64> = cpu.iter().map(|d| d.as_secs_f64() / runs as f64).collect();
    let step_index = |name: &str| names.iter().position(|n| *n == name).unwrap_or(0);
    let line = |name: &str, backend: &str, wall: Duration, extra: String| {
        println!(
            "{{\"workload\":\"W2\",\"step\":\"{name}\",\"backend\":\"{backend}\",\"snapshot\":\"full\",\"parallelism\":1,\"records\":{keys},\"keys\":{keys},\"wall_s\":{:.4},\"records_per_s\":{:.0},\"cpu_s\":{:.4}{extra},\"loadavg_start\":{load_start:.2},\"loadavg_end\":{load_end:.2}}}",
            wall.as_secs_f64(),
            keys as f64 / wall.as_secs_f64(),
            c[step_index(name)]
        );
    };
    let vs = |base: &str, b: Duration, w: Duration| {
        format!(
            ",\"baseline\":\"{base}\",\"baseline_wall_s\":{:.4},\"ratio\":{:.3}",
            b.as_secs_f64(),
            b.as_secs_f64() / w.as_secs_f64()
        )
    };
    line(
        names[0],
        "hashmap",
        m[0],
        format!(",\"savepoint_bytes\":{}", sp_bytes.0),
    );
    line(
        names[1],
        "rocksdb",
        m[1],
        format!(
            ",\"savepoint_bytes\":{}{}",
            sp_bytes.1,
            vs(names[0], m[0], m[1])
        ),
    );
    line(names[2], "hashmap", m[2], String::new());
    line(
        names[3],
        "rocksdb",
        m[3],
        format!(
            "{},\"ratio_runs\":[{:.3},{:.3},{:.3}],\"ratio_vs_put_per_entry_flushed\":{:.3},\"cpu_ratio\":{:.3}",
            vs(names[4], m[4], m[3]),
            ingest_runs.0,
            ingest_runs.1,
            ingest_runs.2,
            m[5].as_secs_f64() / m[3].as_secs_f64(),
            c[4] / c[3]
        ),
    );
    line(names[4], "rocksdb", m[4], String::new());
    line(names[5], "rocksdb", m[5], String::new());
    println!(
        "{:<38} {:>10} {:>10} {:>14}",
        "step", "median s", "cpu s", "bytes"
    );
    for (i, n) in names.iter().enumerate() {
        let bytes = match i {
            0 => sp_bytes.0.to_string(),
            1 => sp_bytes.1.to_string(),
            _ => String::new(),
        };
        println!(
            "{n:<38} {:>10.3} {:>10.3} {bytes:>14}",
            m[i].as_secs_f64(),
            c[i]
        );
    }
    println!(
        "ingestion vs put-per-entry: {:.2}x faster (within each run: min {:.2}x, median {:.2}x, max {:.2}x; {:.2}x vs put-per-entry then flush)",
        m[4].as_secs_f64() / m[3].as_secs_f64(),
        ingest_runs.0,
        ingest_runs.1,
        ingest_runs.2,
        m[5].as_secs_f64() / m[3].as_secs_f64()
    );
    println!(
        "CPU per restore: ingestion {:.3} s, put-per-entry {:.3} s ({:.2}x)",
        c[3],
        c[4],
        c[4] / c[3]
    );
    println!("load average (1 min): {load_start:.2} before building the state, {load_end:.2} after the runs");
}
