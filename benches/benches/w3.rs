//! W3 (`../shared/bench/WORKLOADS.md`): state access for one key group, heap backend beside
//! a plain `std::collections::HashMap` with the same keys, in the same process; plus the
//! synchronous phase of a snapshot at 100k and 1M keys.
//!
//! Run: `cargo bench -p cairn-benches --bench w3`. It first prints its own figures (median of
//! `RUNS` runs of `OPS` operations per side, interleaved, as JSON lines and a table), then
//! runs the same operations under criterion.
//!
//! - Keys are `u64`, serialized as bincode fixint (8 bytes little endian). They are chosen so
//!   that all fall in key group 0 of 128, and the backend owns exactly that key group.
//! - Every backend operation includes `set_current_key` (what the runtime pays per record).
//! - The plain side does the same operations on `HashMap<u64, u64>`,
//!   `HashMap<u64, Vec<u64>>` and `HashMap<u64, HashMap<u64, u64>>` with std's hasher.

use cairn_benches::median;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use cairn_core::{
    key_group_for_key, BincodeCodec, Codec, KeyGroupRange, KeyedStateBackend, ListStateDescriptor,
    ListStateId, MapStateDescriptor, MapStateId, SnapshotOptions, StateAccess,
    ValueStateDescriptor, ValueStateId,
};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use criterion::{Criterion, Throughput};

/// Operations per measured run (WORKLOADS.md: 5,000,000).
const OPS: usize = 5_000_000;
/// Distinct keys the operations are drawn from (uniformly, fixed seed).
const KEYS: usize = 100_000;
/// User keys per map.
const USER_KEYS: u64 = 8;
const MAX_P: u32 = 128;
/// Measured runs per side; the median is reported.
const RUNS: usize = 3;
/// Operations per criterion iteration.
const CHUNK: usize = 100_000;

fn key_codec() -> BincodeCodec<u64> {
    BincodeCodec::new()
}

#[inline]
fn ser(k: u64) -> [u8; 8] {
    k.to_le_bytes()
}

/// `n` keys of key group 0.
fn keys_in_group0(n: usize) -> Vec<u64> {
    (0u64..)
        .filter(|k| key_group_for_key(&ser(*k), MAX_P) == 0)
        .take(n)
        .collect()
}

/// `OPS` keys drawn uniformly from `keys` (xorshift64*, fixed seed).
fn sequence(keys: &[u64]) -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..OPS)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            keys[(r % keys.len() as u64) as usize]
        })
        .collect()
}

fn backend(range: KeyGroupRange) -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: "w3".into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key_codec().identity().clone(),
    })
    .expect("backend")
}

fn one_group() -> HashMapBackend {
    backend(KeyGroupRange::new(0, 1))
}

// ---- The operations, backend and plain, over a slice of the sequence. ----

fn value_backend(b: &mut HashMapBackend, s: &ValueStateId<u64, ()>, seq: &[u64]) {
    for &k in seq {
        b.set_current_key(&ser(k)).expect("key");
        let v = b.value(s).get().expect("get").unwrap_or(0);
        b.value(s).update(v + 1).expect("update");
    }
}

fn value_plain(m: &mut HashMap<u64, u64>, seq: &[u64]) {
    for &k in seq {
        let v = m.get(&k).copied().unwrap_or(0);
        m.insert(k, v + 1);
    }
}

fn list_backend(b: &mut HashMapBackend, s: &ListStateId<u64, ()>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        b.set_current_key(&ser(k)).expect("key");
        b.list(s).add(i as u64).expect("add");
    }
}

fn list_plain(m: &mut HashMap<u64, Vec<u64>>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        m.entry(k).or_default().push(i as u64);
    }
}

fn map_put_backend(b: &mut HashMapBackend, s: &MapStateId<u64, u64, ()>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        b.set_current_key(&ser(k)).expect("key");
        b.map(s).put(i as u64 % USER_KEYS, i as u64).expect("put");
    }
}

fn map_put_plain(m: &mut HashMap<u64, HashMap<u64, u64>>, seq: &[u64]) {
    for (i, &k) in seq.iter().enumerate() {
        m.entry(k)
            .or_default()
            .insert(i as u64 % USER_KEYS, i as u64);
    }
}

fn map_get_backend(b: &mut HashMapBackend, s: &MapStateId<u64, u64, ()>, seq: &[u64]) -> u64 {
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

fn map_get_plain(m: &HashMap<u64, HashMap<u64, u64>>, seq: &[u64]) -> u64 {
    let mut sum = 0u64;
    for (i, &k) in seq.iter().enumerate() {
        let uk = i as u64 % USER_KEYS;
        sum = sum.wrapping_add(m.get(&k).and_then(|m| m.get(&uk)).copied().unwrap_or(0));
    }
    sum
}

// ---- One measured run of each operation, on fresh state. ----

fn time(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// (backend, plain) durations of one run of `op`.
fn run_once(op: &str, keys: &[u64], seq: &[u64]) -> (Duration, Duration) {
    match op {
        "value_get_update" => {
            let mut b = one_group();
            let s = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .expect("register");
            let mut m = HashMap::new();
            // Both start with every key present: the measured operations update in place.
            value_backend(&mut b, &s, keys);
            value_plain(&mut m, keys);
            let tb = time(|| value_backend(&mut b, &s, seq));
            let tp = time(|| value_plain(&mut m, seq));
            black_box((&b, &m));
            (tb, tp)
        }
        "list_add" => {
            let mut b = one_group();
            let s = b
                .register_list(&ListStateDescriptor::<u64>::new("l"))
                .expect("register");
            let mut m = HashMap::new();
            let tb = time(|| list_backend(&mut b, &s, seq));
            let tp = time(|| list_plain(&mut m, seq));
            black_box((&b, &m));
            (tb, tp)
        }
        "map_put" | "map_get" => {
            let mut b = one_group();
            let s = b
                .register_map(&MapStateDescriptor::<u64, u64>::new("m"))
                .expect("register");
            let mut m = HashMap::new();
            let tb = time(|| map_put_backend(&mut b, &s, seq));
            let tp = time(|| map_put_plain(&mut m, seq));
            if op == "map_put" {
                return (tb, tp);
            }
            let tb = time(|| {
                black_box(map_get_backend(&mut b, &s, seq));
            });
            let tp = time(|| {
                black_box(map_get_plain(&m, seq));
            });
            (tb, tp)
        }
        _ => unreachable!("unknown op {op}"),
    }
}

const OPS_NAMES: [&str; 4] = ["value_get_update", "list_add", "map_put", "map_get"];

fn own_figures(keys: &[u64], seq: &[u64]) {
    println!("W3 heap backend vs plain HashMap: {OPS} ops over {KEYS} keys in one key group, median of {RUNS} runs");
    let mut table = Vec::new();
    // `W3_OPS=value_get_update,map_get` restricts the run (for profiling).
    let only = std::env::var("W3_OPS").ok();
    for op in OPS_NAMES {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|x| x == op))
        {
            continue;
        }
        let (mut tb, mut tp) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (b, p) = run_once(op, keys, seq);
            tb.push(b);
            tp.push(p);
        }
        let (b, p) = (median(tb), median(tp));
        let (ob, op_) = (OPS as f64 / b.as_secs_f64(), OPS as f64 / p.as_secs_f64());
        println!(
            "{{\"workload\":\"W3\",\"op\":\"{op}\",\"backend\":\"hashmap\",\"snapshot\":\"none\",\"parallelism\":1,\"records\":{OPS},\"keys\":{KEYS},\"wall_s\":{:.4},\"records_per_s\":{:.0},\"baseline\":\"std_hashmap\",\"baseline_wall_s\":{:.4},\"baseline_records_per_s\":{:.0},\"ratio\":{:.3}}}",
            b.as_secs_f64(),
            ob,
            p.as_secs_f64(),
            op_,
            ob / op_
        );
        table.push((op, ob, op_));
    }
    println!(
        "{:<18} {:>14} {:>14} {:>16}",
        "op", "backend ops/s", "plain ops/s", "backend/plain"
    );
    for (op, ob, op_) in &table {
        println!("{op:<18} {ob:>14.0} {op_:>14.0} {:>16.3}", ob / op_);
    }
}

/// A backend owning every key group with one value state and `n` keys.
fn filled(n: u64) -> (HashMapBackend, ValueStateId<u64, ()>) {
    let mut b = backend(KeyGroupRange::all(MAX_P));
    let s = b
        .register_value(&ValueStateDescriptor::<u64>::new("v"))
        .expect("register");
    for k in 0..n {
        b.set_current_key(&ser(k)).expect("key");
        b.value(&s).update(k).expect("update");
    }
    (b, s)
}

fn sync_phase_figures() {
    const SAMPLES: u64 = 15;
    /// Updates between two snapshots (as in W4), spread over the keys.
    const UPDATES: u64 = 100_000;
    println!("W3 synchronous phase of a snapshot (snapshot() call only), {SAMPLES} samples, {UPDATES} updates between snapshots");
    for n in [100_000u64, 1_000_000] {
        let (mut b, s) = filled(n);
        let mut times = Vec::new();
        for id in 1..=SAMPLES {
            // Writes between checkpoints take shards back from the previous snapshot, so
            // this snapshot must share them again.
            for j in 0..UPDATES {
                let k = (j * 7919 + id) % n;
                b.set_current_key(&ser(k)).expect("key");
                b.value(&s).update(id).expect("update");
            }
            let t = Instant::now();
            let phase = b
                .snapshot(SnapshotOptions::incremental_checkpoint(id))
                .expect("snapshot");
            times.push(t.elapsed());
            drop(phase);
            b.notify_checkpoint_aborted(id);
        }
        let max = times.iter().max().copied().unwrap_or_default();
        let med = median(times);
        println!(
            "{{\"workload\":\"W3-sync\",\"backend\":\"hashmap\",\"snapshot\":\"incremental\",\"keys\":{n},\"sync_phase_ms_p50\":{:.4},\"sync_phase_ms_max\":{:.4}}}",
            med.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
    }
}

fn criterion_benches(c: &mut Criterion, keys: &[u64], seq: &[u64]) {
    let chunks: Vec<&[u64]> = seq.chunks(CHUNK).collect();
    let mut g = c.benchmark_group("w3");
    g.throughput(Throughput::Elements(CHUNK as u64));
    {
        let mut b = one_group();
        let s = b
            .register_value(&ValueStateDescriptor::<u64>::new("v"))
            .expect("register");
        value_backend(&mut b, &s, keys);
        let mut i = 0;
        g.bench_function("value_get_update/hashmap_backend", |bench| {
            bench.iter(|| {
                i += 1;
                value_backend(&mut b, &s, chunks[i % chunks.len()]);
            })
        });
        let mut m = HashMap::new();
        value_plain(&mut m, keys);
        g.bench_function("value_get_update/plain_hashmap", |bench| {
            bench.iter(|| {
                i += 1;
                value_plain(&mut m, chunks[i % chunks.len()]);
            })
        });
    }
    // Lists grow with every add: each sample starts from empty state.
    g.bench_function("list_add/hashmap_backend", |bench| {
        bench.iter_custom(|iters| {
            let mut b = one_group();
            let s = b
                .register_list(&ListStateDescriptor::<u64>::new("l"))
                .expect("register");
            time(|| {
                for i in 0..iters as usize {
                    list_backend(&mut b, &s, chunks[i % chunks.len()]);
                }
            })
        })
    });
    g.bench_function("list_add/plain_hashmap", |bench| {
        bench.iter_custom(|iters| {
            let mut m = HashMap::new();
            time(|| {
                for i in 0..iters as usize {
                    list_plain(&mut m, chunks[i % chunks.len()]);
                }
            })
        })
    });
    {
        let mut b = one_group();
        let s = b
            .register_map(&MapStateDescriptor::<u64, u64>::new("m"))
            .expect("register");
        let mut m = HashMap::new();
        map_put_backend(&mut b, &s, &seq[..OPS / 5]);
        map_put_plain(&mut m, &seq[..OPS / 5]);
        let mut i = 0;
        g.bench_function("map_put/hashmap_backend", |bench| {
            bench.iter(|| {
                i += 1;
                map_put_backend(&mut b, &s, chunks[i % chunks.len()]);
            })
        });
        g.bench_function("map_put/plain_hashmap", |bench| {
            bench.iter(|| {
                i += 1;
                map_put_plain(&mut m, chunks[i % chunks.len()]);
            })
        });
        g.bench_function("map_get/hashmap_backend", |bench| {
            bench.iter(|| {
                i += 1;
                map_get_backend(&mut b, &s, chunks[i % chunks.len()])
            })
        });
        g.bench_function("map_get/plain_hashmap", |bench| {
            bench.iter(|| {
                i += 1;
                map_get_plain(&m, chunks[i % chunks.len()])
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("w3_sync_phase");
    for n in [100_000u64, 1_000_000] {
        let (mut b, _) = filled(n);
        let mut id = 0;
        g.bench_function(format!("snapshot_sync/{n}_keys"), |bench| {
            bench.iter_with_large_drop(|| {
                id += 1;
                b.snapshot(SnapshotOptions::full_checkpoint(id))
                    .expect("snapshot")
            })
        });
    }
    g.finish();
}

fn main() {
    // `W3_KEYS=n` overrides the number of distinct keys (for experiments only).
    let n = std::env::var("W3_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(KEYS);
    let keys = keys_in_group0(n);
    let seq = sequence(&keys);
    own_figures(&keys, &seq);
    sync_phase_figures();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_benches(&mut c, &keys, &seq);
    c.final_summary();
}
