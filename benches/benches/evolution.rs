//! State schema evolution: what migrating 1M values on restore costs, against restoring
//! the same snapshot as is in the same run.
//!
//! Run: `cargo bench -p cairn-benches --bench evolution` (`EVOLUTION_KEYS=n` overrides the
//! 1,000,000 keys, `EVOLUTION_RUNS=n` the 3 runs; medians reported).
//!
//! - The state is W2's (`ValueState<u64>` count per `u64` key, parallelism 1), written
//!   directly into a heap backend and a RocksDB backend. Snapshots: a canonical savepoint
//!   of the heap's, and a native checkpoint of RocksDB's (its SST files, flushed).
//! - Each step restores a snapshot into a fresh backend and registers the state, until the
//!   first get is served: `as_is` with the old program's `u64` descriptor, `migrate` with
//!   a descriptor whose `EvolvingCodec` reads the `u64`s into a 16-byte struct (every value
//!   converted before registration returns: the heap as it decodes, RocksDB by rewriting
//!   and compacting the column family). Steps are interleaved within each run;
//!   `ratio` is `migrate / as_is` of the medians (the migration's cost as a multiple).
//! - Every line carries the 1-minute load average before and after.

use cairn_benches::{env_u64, load_average, median};
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_core::{
    BincodeCodec, Codec, EvolvingCodec, KeyGroupRange, KeyedStateBackend, OperatorStateBackend,
    SnapshotOptions, StateAccess, ValueStateDescriptor,
};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{
    open_savepoint, restore_subtask, snapshot_operator, write_savepoint, CheckpointStorage,
    SubtaskRef,
};
use serde::{Deserialize, Serialize};

const MAX_P: u32 = 128;
const UID: &str = "evolution";

/// The newer program's value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Count {
    n: u64,
    since_ms: u64,
}

fn count(k: u64) -> u64 {
    1 + k.wrapping_mul(2_654_435_761) % 40
}

fn key_codec() -> BincodeCodec<u64> {
    BincodeCodec::new()
}

fn heap() -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: key_codec().identity().clone(),
    })
    .expect("heap backend")
}

fn rocks(dir: &Path) -> RocksDbBackend {
    RocksDbBackend::new(RocksDbConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: key_codec().identity().clone(),
        local_dir: dir.to_path_buf(),
        options: RocksDbOptions::default(),
    })
    .expect("rocksdb backend")
}

fn fill<B: StateAccess>(b: &mut B, keys: u64) {
    let s = b
        .register_value(&ValueStateDescriptor::<u64>::new("count"))
        .expect("register");
    for k in 0..keys {
        b.set_current_key(&k.to_le_bytes()).expect("key");
        b.value(&s).update(count(k)).expect("update");
    }
}

fn migrating() -> ValueStateDescriptor<Count> {
    ValueStateDescriptor::with_codec(
        "count",
        EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
            .migrates_from(BincodeCodec::<u64>::new(), |n| Count { n, since_ms: 0 }),
    )
}

/// Registers the state (as is or migrating) and serves the first get.
fn register_and_get<B: StateAccess>(b: &mut B, migrate: bool) -> u64 {
    b.set_current_key(&0u64.to_le_bytes()).expect("key");
    if migrate {
        let s = b.register_value(&migrating()).expect("register v2");
        b.set_current_key(&0u64.to_le_bytes()).expect("key");
        b.value(&s).get().expect("get").expect("value").n
    } else {
        let s = b
            .register_value(&ValueStateDescriptor::<u64>::new("count"))
            .expect("register");
        b.set_current_key(&0u64.to_le_bytes()).expect("key");
        b.value(&s).get().expect("get").expect("value")
    }
}

/// Restores snapshot `id` (a savepoint at `url`, or checkpoint `id` of `storage`) into `b`
/// and serves the first get; returns the time.
fn restore<B: StateAccess>(mut b: B, from: &From, migrate: bool) -> Duration {
    let t = Instant::now();
    let mut op_state = OperatorStateBackend::new(UID);
    match from {
        From::Savepoint(url) => {
            let (m, source) = open_savepoint(url).expect("open savepoint");
            restore_subtask(&m, UID, 1, 0, Some(&mut b), &mut op_state, &source).expect("restore");
        }
        From::Checkpoint(storage, id) => {
            let m = storage.load(*id).expect("load checkpoint");
            restore_subtask(
                &m,
                UID,
                1,
                0,
                Some(&mut b),
                &mut op_state,
                &storage.source(*id),
            )
            .expect("restore");
        }
    }
    assert_eq!(register_and_get(&mut b, migrate), count(0));
    let elapsed = t.elapsed();
    drop(b);
    elapsed
}

enum From {
    Savepoint(String),
    Checkpoint(CheckpointStorage, u64),
}

fn main() {
    let keys = env_u64("EVOLUTION_KEYS", 1_000_000);
    let runs = env_u64("EVOLUTION_RUNS", 3).max(1) as usize;
    let load_start = load_average();
    println!("State schema evolution: {keys} u64 values migrated on restore to a 16-byte struct, against a restore as is; median of {runs} interleaved runs");
    let dir = tempfile::tempdir().expect("tempdir");

    let mut h = heap();
    fill(&mut h, keys);
    let savepoint = dir.path().join("sp").display().to_string();
    let pending = snapshot_operator(
        UID,
        MAX_P,
        [SubtaskRef {
            keyed: Some(&mut h),
            operator: &OperatorStateBackend::new(UID),
        }],
        SnapshotOptions::savepoint(1),
    )
    .expect("savepoint sync phase");
    write_savepoint(&savepoint, 1, vec![pending]).expect("write savepoint");
    drop(h);

    let storage =
        CheckpointStorage::open(&dir.path().join("chk").display().to_string()).expect("storage");
    let mut r = rocks(&dir.path().join("source-db"));
    fill(&mut r, keys);
    let writer = storage.begin_checkpoint(1).expect("begin");
    let phase = r
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .expect("native checkpoint sync phase");
    let handle = phase
        .run(&writer, &Default::default())
        .expect("native checkpoint async phase");
    let manifest = cairn_format::Manifest {
        checkpoint_id: 1,
        snapshot_type: cairn_core::SnapshotType::Checkpoint,
        timestamp_ms: 0,
        operators: vec![cairn_format::OperatorManifest {
            uid: UID.into(),
            parallelism: 1,
            max_parallelism: MAX_P,
            subtasks: vec![cairn_format::SubtaskManifest {
                key_group_range: KeyGroupRange::all(MAX_P),
                keyed: Some(handle),
                operator_state: Vec::new(),
            }],
        }],
    };
    storage.publish(writer, &manifest).expect("publish");
    drop(r);

    let cases: [(&str, &str, &str); 3] = [
        ("hashmap", "savepoint", "canonical savepoint"),
        ("rocksdb", "savepoint", "canonical savepoint"),
        ("rocksdb", "checkpoint", "native checkpoint"),
    ];
    let mut times: Vec<[Vec<Duration>; 2]> = cases.iter().map(|_| [vec![], vec![]]).collect();
    for run in 0..runs {
        for (i, (backend, snapshot, _)) in cases.iter().enumerate() {
            let from = match *snapshot {
                "savepoint" => From::Savepoint(savepoint.clone()),
                _ => From::Checkpoint(storage.clone(), 1),
            };
            for (j, migrate) in [false, true].into_iter().enumerate() {
                let t = match *backend {
                    "hashmap" => restore(heap(), &from, migrate),
                    _ => restore(
                        rocks(&dir.path().join(format!("r-{run}-{i}-{j}"))),
                        &from,
                        migrate,
                    ),
                };
                times[i][j].push(t);
            }
        }
    }
    let load_end = load_average();
    for ((backend, snapshot, what), [as_is, migrate]) in cases.iter().zip(times) {
        let (a, m) = (median(as_is), median(migrate));
        println!(
            "{{\"bench\":\"evolution\",\"backend\":\"{backend}\",\"from\":\"{snapshot}\",\"keys\":{keys},\"as_is_s\":{:.4},\"migrate_s\":{:.4},\"ratio\":{:.2},\"migrated_values_per_s\":{:.0},\"loadavg_start\":{load_start:.2},\"loadavg_end\":{load_end:.2}}}",
            a.as_secs_f64(),
            m.as_secs_f64(),
            m.as_secs_f64() / a.as_secs_f64().max(1e-9),
            keys as f64 / m.as_secs_f64().max(1e-9),
        );
        println!(
            "  {backend:8} from a {what:19}: as is {:.3} s, migrating {:.3} s ({:.2}x)",
            a.as_secs_f64(),
            m.as_secs_f64(),
            m.as_secs_f64() / a.as_secs_f64().max(1e-9)
        );
    }
}
