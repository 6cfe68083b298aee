//! W4 with changelog (`../shared/bench/WORKLOADS.md`): incremental scaling of the changelog
//! backend around both backends, beside their own incremental modes (RocksDB native, heap
//! canonical incremental), plus the recovery time of the last checkpoint.
//!
//! Run: `cargo bench -p cairn-benches --bench w4_changelog`. `W4_SIZES=1000000,4000000`
//! overrides S, `W4_BACKENDS=rocksdb` restricts the backends, `W4_MODES=changelog` the
//! modes (`plain,changelog`), `W4_RUNS=n` the checkpoints measured (default 3, median).
//!
//! Per (backend, mode, S): a backend is filled with S keys (`ValueState<u64>`, key `k`,
//! value `k`, parallelism 1, 128 key groups); checkpoints go to a fresh local directory
//! (fsynced). Changelog mode: the fill is materialized once (timed separately, in the
//! background as in production), then the base checkpoint; the materialization triggers
//! are off during the measured checkpoints, so each is the log tail. Then `RUNS` times
//! "update the 100,000 fixed keys `10 * j`, incremental checkpoint, retain 1". Bytes are
//! the sizes of files the manifest references that the previous one did not; duration is
//! synchronous + asynchronous phase + publish. Recovery: a fresh backend restores the last
//! checkpoint and registers the state (for changelog: the replay), timed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_changelog::{ChangelogBackend, ChangelogConfig};
use cairn_core::{
    BincodeCodec, CancelToken, Codec, CodecIdentity, FileArea, KeyGroupRange, KeyedStateBackend,
    OperatorStateBackend, SnapshotOptions, SnapshotType, StateAccess, ValueStateDescriptor,
    ValueStateId,
};
use cairn_format::Manifest;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{assemble_manifest, snapshot_operator, CheckpointStorage, SubtaskRef};

const MAX_P: u32 = 128;
const UID: &str = "w4";
const UPDATES: u64 = 100_000;
const SIZES: [u64; 3] = [1_000_000, 4_000_000, 16_000_000];

type FileSet = HashSet<(FileArea, String)>;

#[derive(Debug, Clone, Copy)]
struct Ckpt {
    bytes: u64,
    sync: Duration,
    total: Duration,
}

fn ser(k: u64) -> [u8; 8] {
    k.to_le_bytes()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn checkpoint<B: KeyedStateBackend>(
    b: &mut B,
    storage: &CheckpointStorage,
    id: u64,
    prev: &FileSet,
) -> (Ckpt, FileSet, Manifest) {
    let writer = storage.begin_checkpoint(id).expect("begin");
    let op_state = OperatorStateBackend::new(UID);
    let t0 = Instant::now();
    let pending = snapshot_operator(
        UID,
        MAX_P,
        [SubtaskRef {
            keyed: Some(b),
            operator: &op_state,
        }],
        SnapshotOptions::incremental_checkpoint(id),
    )
    .expect("synchronous phase");
    let t1 = Instant::now();
    let part = pending
        .run(&writer, &CancelToken::new())
        .expect("asynchronous phase");
    let m = assemble_manifest(id, SnapshotType::Checkpoint, vec![part]);
    storage.publish(writer, &m).expect("publish");
    let t3 = Instant::now();
    b.notify_checkpoint_complete(id);
    let mut files = FileSet::new();
    let mut bytes = 0;
    for f in m.files() {
        if files.insert((f.area, f.name.clone())) && !prev.contains(&(f.area, f.name.clone())) {
            bytes += f.size;
        }
    }
    storage.retain(1).expect("retain");
    (
        Ckpt {
            bytes,
            sync: t1 - t0,
            total: t3 - t0,
        },
        files,
        m,
    )
}

fn fill<B: StateAccess>(b: &mut B, s: &ValueStateId<u64, ()>, keys: u64) {
    for k in 0..keys {
        b.set_current_key(&ser(k)).expect("key");
        b.value(s).update(k).expect("update");
    }
}

fn update_fixed<B: StateAccess>(b: &mut B, s: &ValueStateId<u64, ()>, round: u64) {
    for j in 0..UPDATES {
        b.set_current_key(&ser(j * 10)).expect("key");
        b.value(s).update(round * 1_000_000 + j).expect("update");
    }
}

/// Creates fresh backends of one kind (for the measured instance and the restore).
trait Make {
    type B: StateAccess;
    fn make(&self, n: usize) -> Self::B;
    /// Called after the fill, before the base checkpoint.
    fn prepare(&self, _b: &mut Self::B) -> Option<Duration> {
        None
    }
}

struct Plain<F>(F);
impl<B: StateAccess, F: Fn(usize) -> B> Make for Plain<F> {
    type B = B;
    fn make(&self, n: usize) -> B {
        (self.0)(n)
    }
}

struct Changelog<F> {
    inner: F,
    storage: CheckpointStorage,
    key_codec: CodecIdentity,
}
impl<B: StateAccess, F: Fn(usize) -> B> Make for Changelog<F> {
    type B = ChangelogBackend<B>;
    fn make(&self, n: usize) -> Self::B {
        let mut config = ChangelogConfig::new(UID, self.key_codec.clone());
        config.options.materialization_interval = None;
        config.options.min_log_bytes = u64::MAX;
        ChangelogBackend::new((self.inner)(n), config, Arc::new(self.storage.clone()))
    }
    fn prepare(&self, b: &mut Self::B) -> Option<Duration> {
        let t = Instant::now();
        b.materialize_now().expect("materialize");
        while b.is_materializing() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Some(t.elapsed())
    }
}

fn measure<M: Make>(m: &M, storage: &CheckpointStorage, keys: u64, runs: usize) -> String {
    let desc = ValueStateDescriptor::<u64>::new("count");
    let mut b = m.make(0);
    let s = b.register_value(&desc).expect("register");
    let t = Instant::now();
    fill(&mut b, &s, keys);
    let build = t.elapsed();
    let mat = m.prepare(&mut b);
    let mut id = 1;
    let (base, mut prev, mut last) = checkpoint(&mut b, storage, id, &FileSet::new());
    let mut v = Vec::new();
    for _ in 0..runs {
        id += 1;
        update_fixed(&mut b, &s, id);
        let (c, files, man) = checkpoint(&mut b, storage, id, &prev);
        prev = files;
        last = man;
        v.push(c);
    }
    drop(b);
    // Recovery of the last checkpoint.
    let t = Instant::now();
    let mut r = m.make(1);
    let handles: Vec<_> = last
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .filter_map(|s| s.keyed.clone())
        .collect();
    r.restore(&handles, &storage.source(id)).expect("restore");
    let rs = r.register_value(&desc).expect("register");
    let recovery = t.elapsed();
    r.set_current_key(&ser(10)).expect("key");
    assert_eq!(
        r.value(&rs).get().expect("get"),
        Some(id * 1_000_000 + 1),
        "restored state"
    );
    let mut bytes: Vec<u64> = v.iter().map(|c| c.bytes).collect();
    bytes.sort_unstable();
    let mut dur: Vec<f64> = v.iter().map(|c| ms(c.total)).collect();
    dur.sort_by(f64::total_cmp);
    let sync_max = v.iter().map(|c| ms(c.sync)).fold(0.0, f64::max);
    format!(
        "\"keys\":{keys},\"checkpoints\":{},\"checkpoint_bytes_p50\":{},\"checkpoint_duration_ms_p50\":{:.1},\"checkpoint_duration_ms_max\":{:.1},\"sync_phase_ms_max\":{:.2},\"base_checkpoint_bytes\":{},\"base_checkpoint_ms\":{:.1},\"materialization_ms\":{},\"build_s\":{:.2},\"recovery_ms\":{:.1}",
        v.len(),
        bytes[bytes.len() / 2],
        dur[dur.len() / 2],
        dur.last().copied().unwrap_or(0.0),
        sync_max,
        base.bytes,
        ms(base.total),
        mat.map_or("null".to_string(), |d| format!("{:.1}", ms(d))),
        build.as_secs_f64(),
        ms(recovery),
    )
}

fn main() {
    let env_list = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.into());
    let sizes: Vec<u64> = std::env::var("W4_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| SIZES.to_vec());
    let backends = env_list("W4_BACKENDS", "hashmap,rocksdb");
    let modes = env_list("W4_MODES", "plain,changelog");
    let runs: usize = std::env::var("W4_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let codec = BincodeCodec::<u64>::new().identity().clone();
    println!(
        "W4 changelog: {UPDATES} keys updated between checkpoints; S = {sizes:?}; median of {runs}"
    );
    for backend in backends.split(',') {
        for mode in modes.split(',') {
            for &n in &sizes {
                let dir = tempfile::tempdir().expect("tempdir");
                let storage =
                    CheckpointStorage::open(dir.path().join("chk").to_str().expect("utf-8"))
                        .expect("storage");
                let local = dir.path().to_path_buf();
                let c2 = codec.clone();
                let heap = move |_: usize| {
                    HashMapBackend::new(HashMapConfig {
                        uid: UID.into(),
                        max_parallelism: MAX_P,
                        key_group_range: KeyGroupRange::all(MAX_P),
                        key_codec: c2.clone(),
                    })
                    .expect("backend")
                };
                let c3 = codec.clone();
                let rocks = move |i: usize| {
                    RocksDbBackend::new(RocksDbConfig {
                        uid: UID.into(),
                        max_parallelism: MAX_P,
                        key_group_range: KeyGroupRange::all(MAX_P),
                        key_codec: c3.clone(),
                        local_dir: local.join(format!("local-{i}")),
                        options: RocksDbOptions::default(),
                    })
                    .expect("backend")
                };
                let figures = match (backend, mode) {
                    ("hashmap", "plain") => measure(&Plain(heap), &storage, n, runs),
                    ("rocksdb", "plain") => measure(&Plain(rocks), &storage, n, runs),
                    ("hashmap", "changelog") => measure(
                        &Changelog {
                            inner: heap,
                            storage: storage.clone(),
                            key_codec: codec.clone(),
                        },
                        &storage,
                        n,
                        runs,
                    ),
                    ("rocksdb", "changelog") => measure(
                        &Changelog {
                            inner: rocks,
                            storage: storage.clone(),
                            key_codec: codec.clone(),
                        },
                        &storage,
                        n,
                        runs,
                    ),
                    _ => continue,
                };
                println!(
                    "{{\"workload\":\"W4\",\"backend\":\"{backend}\",\"mode\":\"{}\",{figures}}}",
                    if mode == "plain" {
                        if backend == "rocksdb" {
                            "native-incremental"
                        } else {
                            "heap-incremental"
                        }
                    } else {
                        "changelog"
                    }
                );
            }
        }
    }
}
