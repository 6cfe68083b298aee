//! W4 (`../shared/bench/WORKLOADS.md`): incremental scaling. State of S keys
//! (`ValueState<u64>`, parallelism 1, all 128 key groups); between two checkpoints a fixed
//! set of 100,000 keys is updated; each checkpoint's bytes and duration are reported for each
//! S, in incremental and in full mode, for the RocksDB backend (native incremental) and the
//! heap backend (canonical incremental, key-group granular).
//!
//! Run: `cargo bench -p cairn-benches --bench w4`. `W4_SIZES=1000000,4000000` overrides S,
//! `W4_BACKENDS=rocksdb` restricts the backends, `W4_RUNS=n` sets the checkpoints measured
//! per mode (default 3, median reported).
//!
//! Per (backend, S): one backend is filled with S keys (key `k` for `k` in `0..S`, value
//! `k`), checkpoints go to a fresh local directory through `CheckpointStorage` (fsynced
//! writes). First an incremental base checkpoint (everything is new), then `RUNS` times
//! "update the fixed keys, incremental checkpoint", then `RUNS` times "update the fixed keys,
//! full checkpoint". The fixed keys are `10 * j` for `j` in `0..100_000` (present at every
//! S). A checkpoint's duration is synchronous phase (`snapshot_operator`) + asynchronous
//! phase (`PendingOperator::run`) + `publish`; its bytes are the sizes of the files its
//! manifest references that the previous checkpoint's manifest did not (what it wrote).
//! After each checkpoint `retain(1)` runs (untimed) so the directory keeps one checkpoint.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use cairn_core::{
    BincodeCodec, CancelToken, Codec, FileArea, KeyGroupRange, KeyedStateBackend,
    OperatorStateBackend, SnapshotOptions, SnapshotType, StateAccess, ValueStateDescriptor,
    ValueStateId,
};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{assemble_manifest, snapshot_operator, CheckpointStorage, SubtaskRef};

const MAX_P: u32 = 128;
const UID: &str = "w4";
/// Keys updated between two checkpoints.
const UPDATES: u64 = 100_000;
const SIZES: [u64; 3] = [1_000_000, 4_000_000, 16_000_000];

#[inline]
fn ser(k: u64) -> [u8; 8] {
    k.to_le_bytes()
}

/// What one checkpoint cost.
#[derive(Debug, Clone, Copy)]
struct Ckpt {
    bytes: u64,
    files_new: usize,
    sync: Duration,
    asynch: Duration,
    publish: Duration,
}

impl Ckpt {
    fn total(&self) -> Duration {
        self.sync + self.asynch + self.publish
    }
}

type FileSet = HashSet<(FileArea, String)>;

/// Takes checkpoint `id` of `b` into `storage`, publishes it, notifies completion.
fn checkpoint<B: KeyedStateBackend>(
    b: &mut B,
    storage: &CheckpointStorage,
    id: u64,
    incremental: bool,
    prev: &FileSet,
) -> (Ckpt, FileSet) {
    let writer = storage.begin_checkpoint(id).expect("begin");
    let op_state = OperatorStateBackend::new(UID);
    let options = if incremental {
        SnapshotOptions::incremental_checkpoint(id)
    } else {
        SnapshotOptions::full_checkpoint(id)
    };
    let t0 = Instant::now();
    let pending = snapshot_operator(
        UID,
        MAX_P,
        [SubtaskRef {
            keyed: Some(b),
            operator: &op_state,
        }],
        options,
    )
    .expect("synchronous phase");
    let t1 = Instant::now();
    let part = pending
        .run(&writer, &CancelToken::new())
        .expect("asynchronous phase");
    let t2 = Instant::now();
    let m = assemble_manifest(id, SnapshotType::Checkpoint, vec![part]);
    storage.publish(writer, &m).expect("publish");
    let t3 = Instant::now();
    b.notify_checkpoint_complete(id);
    let mut files = FileSet::new();
    let (mut bytes, mut files_new) = (0, 0);
    for f in m.files() {
        if files.insert((f.area, f.name.clone())) && !prev.contains(&(f.area, f.name.clone())) {
            bytes += f.size;
            files_new += 1;
        }
    }
    storage.retain(1).expect("retain");
    (
        Ckpt {
            bytes,
            files_new,
            sync: t1 - t0,
            asynch: t2 - t1,
            publish: t3 - t2,
        },
        files,
    )
}

fn update_fixed<B: StateAccess>(b: &mut B, s: &ValueStateId<u64, ()>, round: u64) {
    for j in 0..UPDATES {
        b.set_current_key(&ser(j * 10)).expect("key");
        b.value(s).update(round * 1_000_000 + j).expect("update");
    }
}

fn median_by<T: Copy, K: PartialOrd>(v: &[T], key: impl Fn(&T) -> K) -> K {
    let mut ks: Vec<K> = v.iter().map(key).collect();
    ks.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    ks.swap_remove(ks.len() / 2)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One (backend, S) row: figures of the incremental and the full series.
struct Row {
    backend: &'static str,
    keys: u64,
    build: Duration,
    base: Ckpt,
    inc: Vec<Ckpt>,
    full: Vec<Ckpt>,
}

fn measure<B: StateAccess>(
    backend: &'static str,
    mut b: B,
    keys: u64,
    runs: usize,
    dir: &std::path::Path,
) -> Row {
    let s = b
        .register_value(&ValueStateDescriptor::<u64>::new("count"))
        .expect("register");
    let t = Instant::now();
    for k in 0..keys {
        b.set_current_key(&ser(k)).expect("key");
        b.value(&s).update(k).expect("update");
    }
    let build = t.elapsed();
    let storage =
        CheckpointStorage::open(dir.join("chk").to_str().expect("utf-8 path")).expect("storage");
    let mut id = 1;
    let (base, mut prev) = checkpoint(&mut b, &storage, id, true, &FileSet::new());
    let mut inc = Vec::new();
    let mut full = Vec::new();
    for (incremental, out) in [(true, &mut inc), (false, &mut full)] {
        for _ in 0..runs {
            id += 1;
            update_fixed(&mut b, &s, id);
            let (c, files) = checkpoint(&mut b, &storage, id, incremental, &prev);
            prev = files;
            out.push(c);
        }
    }
    Row {
        backend,
        keys,
        build,
        base,
        inc,
        full,
    }
}

fn print_row(r: &Row) {
    let bytes = |v: &[Ckpt]| median_by(v, |c| c.bytes);
    let dur = |v: &[Ckpt]| median_by(v, |c| ms(c.total()));
    for (mode, v, other) in [("incremental", &r.inc, &r.full), ("full", &r.full, &r.inc)] {
        let max = v.iter().map(|c| ms(c.total())).fold(0.0, f64::max);
        let sync_max = v.iter().map(|c| ms(c.sync)).fold(0.0, f64::max);
        // The ratio is against the other mode at the same S (same backend, same run).
        let baseline = if mode == "incremental" {
            "full"
        } else {
            "incremental"
        };
        println!(
            "{{\"workload\":\"W4\",\"backend\":\"{}\",\"snapshot\":\"{mode}\",\"parallelism\":1,\"records\":{UPDATES},\"keys\":{},\"checkpoints_completed\":{},\"checkpoint_duration_ms_p50\":{:.1},\"checkpoint_duration_ms_max\":{:.1},\"checkpoint_bytes_p50\":{},\"checkpoint_bytes_max\":{},\"sync_phase_ms_max\":{:.1},\"sync_phase_ms_p50\":{:.1},\"async_phase_ms_p50\":{:.1},\"publish_ms_p50\":{:.1},\"files_new_p50\":{},\"build_s\":{:.2},\"base_checkpoint_bytes\":{},\"base_checkpoint_ms\":{:.1},\"baseline\":\"{baseline}\",\"baseline_checkpoint_bytes_p50\":{},\"baseline_checkpoint_duration_ms_p50\":{:.1},\"ratio_bytes\":{:.4},\"ratio_duration\":{:.4}}}",
            r.backend,
            r.keys,
            v.len(),
            dur(v),
            max,
            bytes(v),
            v.iter().map(|c| c.bytes).max().unwrap_or(0),
            sync_max,
            median_by(v, |c| ms(c.sync)),
            median_by(v, |c| ms(c.asynch)),
            median_by(v, |c| ms(c.publish)),
            median_by(v, |c| c.files_new),
            r.build.as_secs_f64(),
            r.base.bytes,
            ms(r.base.total()),
            bytes(other),
            dur(other),
            bytes(v) as f64 / bytes(other).max(1) as f64,
            dur(v) / dur(other).max(1e-9),
        );
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::var("W4_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| SIZES.to_vec());
    let backends = std::env::var("W4_BACKENDS").unwrap_or_else(|_| "rocksdb,hashmap".into());
    let runs: usize = std::env::var("W4_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let codec = BincodeCodec::<u64>::new().identity().clone();
    println!(
        "W4: {UPDATES} keys updated between checkpoints; S = {sizes:?}; backends {backends}; median of {runs} checkpoints per mode"
    );
    let mut rows = Vec::new();
    for backend in backends.split(',') {
        for &n in &sizes {
            let dir = tempfile::tempdir().expect("tempdir");
            let row = match backend {
                "rocksdb" => measure(
                    "rocksdb",
                    RocksDbBackend::new(RocksDbConfig {
                        uid: UID.into(),
                        max_parallelism: MAX_P,
                        key_group_range: KeyGroupRange::all(MAX_P),
                        key_codec: codec.clone(),
                        local_dir: dir.path().join("local"),
                        options: RocksDbOptions::default(),
                    })
                    .expect("backend"),
                    n,
                    runs,
                    dir.path(),
                ),
                "hashmap" => measure(
                    "hashmap",
                    HashMapBackend::new(HashMapConfig {
                        uid: UID.into(),
                        max_parallelism: MAX_P,
                        key_group_range: KeyGroupRange::all(MAX_P),
                        key_codec: codec.clone(),
                    })
                    .expect("backend"),
                    n,
                    runs,
                    dir.path(),
                ),
                other => panic!("unknown backend {other}"),
            };
            print_row(&row);
            rows.push(row);
        }
    }
    println!(
        "{:<8} {:>10} {:>12} {:>14} {:>10} {:>14} {:>10} {:>10}",
        "backend", "keys", "mode", "bytes p50", "ms p50", "vs smallest S", "sync ms", "build s"
    );
    for r in &rows {
        let first = rows.iter().find(|x| x.backend == r.backend).expect("a row");
        for (mode, v, v0) in [
            ("incremental", &r.inc, &first.inc),
            ("full", &r.full, &first.full),
        ] {
            let b = median_by(v, |c| c.bytes);
            let b0 = median_by(v0, |c| c.bytes);
            println!(
                "{:<8} {:>10} {:>12} {:>14} {:>10.1} {:>14} {:>10.1} {:>10.2}",
                r.backend,
                r.keys,
                mode,
                b,
                median_by(v, |c| ms(c.total())),
                format!(
                    "{:.2}x / {:.2}x",
                    b as f64 / b0.max(1) as f64,
                    median_by(v, |c| ms(c.total())) / median_by(v0, |c| ms(c.total()))
                ),
                median_by(v, |c| ms(c.sync)),
                r.build.as_secs_f64()
            );
        }
    }
}
