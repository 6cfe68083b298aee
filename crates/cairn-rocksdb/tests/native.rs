//! Native incremental checkpoints, restore from native handles (same and other
//! parallelism), restore from canonical snapshots by SST ingestion, and snapshot isolation.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use std::sync::atomic::{AtomicU64, Ordering};

use cairn_core::*;
use cairn_format::Manifest;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{scan_native_handle, RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{CheckpointStorage, CheckpointWriter};
use common::conformance::{fill, read_operator};
use common::harness::*;
use common::schema::*;
use rocks_factory::RocksFactory;

const MAX_P: u32 = 128;

/// Counts the bytes written per area.
struct Counting<'a> {
    inner: &'a CheckpointWriter,
    shared: AtomicU64,
    private: AtomicU64,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a CheckpointWriter) -> Self {
        Self {
            inner,
            shared: AtomicU64::new(0),
            private: AtomicU64::new(0),
        }
    }
}

impl SnapshotTarget for Counting<'_> {
    fn checkpoint_id(&self) -> u64 {
        self.inner.checkpoint_id()
    }
    fn supports_shared(&self) -> bool {
        self.inner.supports_shared()
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        let n = bytes.len() as u64;
        match area {
            FileArea::Shared => self.shared.fetch_add(n, Ordering::Relaxed),
            FileArea::Private => self.private.fetch_add(n, Ordering::Relaxed),
        };
        self.inner.write_file(area, name, bytes)
    }
    fn holds_shared(&self, file: &cairn_core::FileRef) -> Result<bool> {
        self.inner.holds_shared(file)
    }
}

/// Runs a snapshot of every subtask, publishes it and notifies completion; returns the
/// manifest and the shared bytes uploaded.
fn publish<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    storage: &CheckpointStorage,
    options: SnapshotOptions,
) -> (Manifest, u64) {
    let id = options.checkpoint_id;
    let writer = storage.begin_checkpoint(id).unwrap();
    let counting = Counting::new(&writer);
    let part = op.snapshot(&counting, options);
    let shared = counting.shared.load(Ordering::Relaxed);
    // Savepoint-type snapshots go into checkpoint storage too (the backend's output is the
    // same canonical file a savepoint directory would hold).
    let m = manifest(id, SnapshotType::Checkpoint, vec![part]);
    storage.publish(writer, &m).unwrap();
    if options.snapshot_type == SnapshotType::Checkpoint {
        op.notify_complete(id);
    }
    (m, shared)
}

/// The entries of a manifest's operator, canonical or native.
fn entries(m: &Manifest, source: &dyn SnapshotSource) -> Entries {
    let op = m.operator("op").unwrap();
    let mut out = Entries::new();
    for sub in &op.subtasks {
        let h = sub.keyed.as_ref().unwrap();
        match &h.data {
            KeyedData::RocksNative { .. } => {
                let names: Vec<String> = h.states.iter().map(|s| s.name.clone()).collect();
                scan_native_handle(h, source, &std::env::temp_dir(), |e| {
                    let k = (
                        names[e.state as usize].clone(),
                        e.key_group,
                        e.key.to_vec(),
                        e.namespace.to_vec(),
                        e.user_key.map(<[u8]>::to_vec),
                    );
                    assert!(out.insert(k, e.value.to_vec()).is_none());
                    Ok(())
                })
                .unwrap();
            }
            _ => {
                let mut one = m.clone();
                one.operators = vec![cairn_format::OperatorManifest {
                    subtasks: vec![sub.clone()],
                    ..op.clone()
                }];
                out.extend(canonical_entries(&one, "op", source));
            }
        }
    }
    out
}

fn is_native(m: &Manifest) -> bool {
    m.operator("op").unwrap().subtasks.iter().all(|s| {
        matches!(
            s.keyed.as_ref().unwrap().data,
            KeyedData::RocksNative { .. }
        )
    })
}

/// Checkpoints that flush the memtables (`checkpoint_wal` off): every change is in SST
/// files, so what a checkpoint uploads of the shared area is the SST files that changed.
/// With the WAL (the default) the first checkpoints' changes are in log files instead.
fn flushing() -> RocksFactory {
    RocksFactory {
        options: cairn_rocksdb::RocksDbOptions {
            checkpoint_wal: false,
            ..cairn_rocksdb::RocksDbOptions::default()
        },
    }
}

fn fill_op<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for k in keys {
        let b = op.owner(k);
        let ids = register(b);
        fill(b, &ids, std::slice::from_ref(k), round);
    }
}

/// 5000 keys at parallelism 1 and their first native checkpoint (id 1) in `storage`: the
/// operator, the keys, the manifest and the shared bytes uploaded.
fn first_native_checkpoint(
    f: &RocksFactory,
    storage: &CheckpointStorage,
) -> (Operator<RocksDbBackend>, Vec<String>, Manifest, u64) {
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 5000);
    let mut op = Operator::new(f, "op", MAX_P, 1);
    fill_op(&mut op, &keys, 1);
    let (m1, first) = publish(&mut op, storage, SnapshotOptions::incremental_checkpoint(1));
    assert!(is_native(&m1));
    (op, keys, m1, first)
}

#[test]
fn second_incremental_checkpoint_uploads_only_new_ssts() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = flushing();
    let (mut op, keys, m1, first) = first_native_checkpoint(&f, &storage);
    fill_op(&mut op, &keys[..5], 2);
    let (m2, second) = publish(
        &mut op,
        &storage,
        SnapshotOptions::incremental_checkpoint(2),
    );
    assert!(
        second * 10 < first,
        "second checkpoint uploaded {second} shared bytes, first {first}"
    );
    // The second references the first's SST files.
    let shared = |m: &Manifest| -> Vec<FileRef> {
        m.operator("op").unwrap().subtasks[0]
            .keyed
            .as_ref()
            .unwrap()
            .files()
            .filter(|f| f.area == FileArea::Shared)
            .cloned()
            .collect()
    };
    let s1 = shared(&m1);
    let s2 = shared(&m2);
    assert!(!s1.is_empty());
    assert!(s1.iter().all(|f| s2.contains(f)), "{s1:?} vs {s2:?}");
    // With nothing changed, a third uploads nothing shared (a flush of nothing).
    let (_, third) = publish(
        &mut op,
        &storage,
        SnapshotOptions::incremental_checkpoint(3),
    );
    assert_eq!(third, 0);
    // Both restore exactly.
    let expected = read_operator(&mut op, &keys);
    storage.retain(1).unwrap();
    let m3 = storage.load(3).unwrap();
    let mut restored = Operator::restore(&f, &m3, "op", 1, &storage.source(3));
    assert_eq!(read_operator(&mut restored, &keys), expected);
    // A restored instance continues the chain: its first checkpoint references the
    // restored SST files instead of uploading them again.
    fill_op(&mut restored, &keys[..5], 3);
    let (m4, fourth) = publish(
        &mut restored,
        &storage,
        SnapshotOptions::incremental_checkpoint(4),
    );
    assert!(
        fourth * 10 < first,
        "first checkpoint after restore uploaded {fourth} shared bytes, first {first}"
    );
    let expected = read_operator(&mut restored, &keys);
    let mut again = Operator::restore(&f, &m4, "op", 1, &storage.source(4));
    assert_eq!(read_operator(&mut again, &keys), expected);
}

/// A job may restore another directory's checkpoint and checkpoint into its own: the
/// restored SST files are not there, so its first checkpoint uploads them (and one into the
/// restored directory still references them).
#[test]
fn first_checkpoint_into_another_directory_uploads_the_restored_ssts() {
    let first_dir = CheckpointStorage::open("memory://").unwrap();
    let f = flushing();
    let (_, keys, m1, first) = first_native_checkpoint(&f, &first_dir);
    let mut restored = Operator::restore(&f, &m1, "op", 1, &first_dir.source(1));
    fill_op(&mut restored, &keys[..5], 2);
    let expected = read_operator(&mut restored, &keys);
    let other_dir = CheckpointStorage::open("memory://").unwrap();
    let (m2, uploaded) = publish(
        &mut restored,
        &other_dir,
        SnapshotOptions::incremental_checkpoint(2),
    );
    assert!(
        uploaded >= first,
        "the first checkpoint into another directory uploaded {uploaded} shared bytes, the restored one has {first}"
    );
    // It stands alone: the first directory is not read.
    drop(first_dir);
    let mut again = Operator::restore(&f, &m2, "op", 1, &other_dir.source(2));
    assert_eq!(read_operator(&mut again, &keys), expected);
    // From now on the base is its own: the next checkpoint uploads only what changed.
    fill_op(&mut again, &keys[..5], 3);
    let (_, next) = publish(
        &mut again,
        &other_dir,
        SnapshotOptions::incremental_checkpoint(3),
    );
    assert!(next * 10 < first, "{next} vs {first}");
}

#[test]
fn native_restore_at_same_and_other_parallelism() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = RocksFactory::default();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 300);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    let expected = read_operator(&mut op, &keys);
    let (m1, _) = publish(
        &mut op,
        &storage,
        SnapshotOptions::incremental_checkpoint(1),
    );
    assert!(is_native(&m1));
    let expected_entries = entries(&m1, &storage.source(1));
    let (sp, _) = publish(&mut op, &storage, SnapshotOptions::savepoint(2));
    assert_eq!(entries(&sp, &storage.source(2)), expected_entries);
    let mut id = 2;
    for p in [2u32, 3, 1, 4] {
        let mut r = Operator::restore(&f, &m1, "op", p, &storage.source(1));
        assert_eq!(read_operator(&mut r, &keys), expected, "parallelism {p}");
        id += 1;
        let (m, _) = publish(
            &mut r,
            &storage,
            SnapshotOptions::incremental_checkpoint(id),
        );
        assert!(is_native(&m));
        assert_eq!(
            entries(&m, &storage.source(id)),
            expected_entries,
            "parallelism {p}"
        );
        // And a chain: restore from the rescaled native checkpoint at parallelism 2.
        let mut again = Operator::restore(&f, &m, "op", 2, &storage.source(id));
        assert_eq!(read_operator(&mut again, &keys), expected, "from {p} to 2");
    }
}

#[test]
fn canonical_restore_ingests_sst_files_and_switches_backends() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 200);
    let heap = HeapFactory;
    let mut op = Operator::new(&heap, "op", MAX_P, 3);
    fill_op(&mut op, &keys, 1);
    let expected = read_operator(&mut op, &keys);
    let (sp1, _) = publish(&mut op, &storage, SnapshotOptions::savepoint(1));
    let heap_entries = entries(&sp1, &storage.source(1));
    let f = RocksFactory::default();
    let mut rocks = Operator::restore(&f, &sp1, "op", 2, &storage.source(1));
    for (b, _) in &rocks.subtasks {
        let dir = b.db_path().unwrap();
        let ssts = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".sst")
            })
            .count();
        // Without a WAL and before any flush, puts would leave no SST file; ingestion leaves
        // one per non-empty state (every kind but the map, which `fill` at round 1 skips).
        assert!(ssts >= 5, "{ssts} sst files in {}", dir.display());
    }
    assert_eq!(read_operator(&mut rocks, &keys), expected);
    let (sp2, _) = publish(&mut rocks, &storage, SnapshotOptions::savepoint(2));
    assert_eq!(entries(&sp2, &storage.source(2)), heap_entries);
    let mut back = Operator::restore(&heap, &sp2, "op", 1, &storage.source(2));
    assert_eq!(read_operator(&mut back, &keys), expected);
}

#[test]
fn native_snapshot_is_isolated_and_cleans_its_scratch_dir() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut b = RocksDbBackend::new(RocksDbConfig {
        uid: "op".into(),
        max_parallelism: MAX_P,
        key_group_range: KeyGroupRange::all(MAX_P),
        key_codec: key_codec().identity().clone(),
        local_dir: dir.path().to_path_buf(),
        options: RocksDbOptions::default(),
    })
    .unwrap();
    let ids = register(&mut b);
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 50);
    fill(&mut b, &ids, &keys, 1);
    let mut op = Operator {
        uid: "op".into(),
        max_parallelism: MAX_P,
        subtasks: vec![(b, OperatorStateBackend::new("op"))],
    };
    let before = read_operator(&mut op, &keys);
    let writer = storage.begin_checkpoint(1).unwrap();
    let phase = op.subtasks[0]
        .0
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .unwrap();
    let count = || std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(count(), 2, "the backend's dir and the checkpoint dir");
    {
        let b = &mut op.subtasks[0].0;
        fill(b, &ids, &keys, 2);
        set_key(b, &keys[0]);
        b.value(&ids.value).clear().unwrap();
        b.list(&ids.list).add("late".into()).unwrap();
    }
    assert_ne!(read_operator(&mut op, &keys), before);
    // The asynchronous phase runs on another thread.
    let handle = std::thread::scope(|s| {
        s.spawn(|| phase.run(&writer, &CancelToken::new()).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(count(), 1, "scratch dir removed");
    let m = manifest(
        1,
        SnapshotType::Checkpoint,
        vec![cairn_format::OperatorManifest {
            uid: "op".into(),
            parallelism: 1,
            max_parallelism: MAX_P,
            subtasks: vec![cairn_format::SubtaskManifest {
                key_group_range: KeyGroupRange::all(MAX_P),
                keyed: Some(handle),
                operator_state: vec![],
            }],
        }],
    );
    assert!(is_native(&m));
    storage.publish(writer, &m).unwrap();
    let mut restored = Operator::restore(&RocksFactory::default(), &m, "op", 1, &storage.source(1));
    assert_eq!(read_operator(&mut restored, &keys), before);

    // A cancelled or dropped asynchronous phase removes its directory too.
    let w2 = storage.begin_checkpoint(2).unwrap();
    let b = &mut op.subtasks[0].0;
    let phase = b
        .snapshot(SnapshotOptions::incremental_checkpoint(2))
        .unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    assert!(phase.run(&w2, &cancel).is_err());
    let dropped = b.snapshot(SnapshotOptions::savepoint(3)).unwrap();
    drop(dropped);
    assert_eq!(count(), 1);
    drop(op);
    assert_eq!(count(), 0, "the backend removes its directory on drop");
}

/// Canonical and native handles in one restore (a changelog checkpoint restored at another
/// parallelism, taken when not every old subtask had materialized): each supplies its own key
/// groups, at every parallelism.
#[test]
fn restore_from_canonical_and_native_handles_at_once() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = RocksFactory::default();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 200);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    let expected = read_operator(&mut op, &keys);
    let (native, _) = publish(
        &mut op,
        &storage,
        SnapshotOptions::incremental_checkpoint(1),
    );
    let (full, _) = publish(&mut op, &storage, SnapshotOptions::full_checkpoint(2));
    assert!(is_native(&native));
    // Canonical first half, native second half.
    let mut mixed = full.clone();
    let n = native.operator("op").unwrap().subtasks[1].keyed.clone();
    mixed.operators[0].subtasks[1].keyed = n;
    struct Both<'a>(&'a CheckpointStorage);
    impl SnapshotSource for Both<'_> {
        fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
            self.0
                .source(1)
                .read_file(file)
                .or_else(|_| self.0.source(2).read_file(file))
        }
    }
    for p in [1u32, 2, 3] {
        let mut r = Operator::restore(&f, &mixed, "op", p, &Both(&storage));
        assert_eq!(read_operator(&mut r, &keys), expected, "parallelism {p}");
    }
}

#[test]
fn restore_refuses_corrupt_native_files() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = RocksFactory::default();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    let (native, _) = publish(
        &mut op,
        &storage,
        SnapshotOptions::incremental_checkpoint(1),
    );
    let n = native.operator("op").unwrap();
    // A native file whose reference does not match (wrong crc) is refused.
    let mut h = n.subtasks[0].keyed.clone().unwrap();
    if let KeyedData::RocksNative { files } = &mut h.data {
        let f = files
            .iter_mut()
            .find(|f| f.local_name == "CURRENT")
            .unwrap();
        f.file.crc32 ^= 1;
    }
    let mut b = f.create("op", MAX_P, h.key_group_range);
    let err = b.restore(&[h], &storage.source(1)).unwrap_err().to_string();
    assert!(err.contains("crc32"), "{err}");
}

/// Heap backends, for backend switches.
struct HeapFactory;

impl BackendFactory for HeapFactory {
    type Backend = HashMapBackend;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> HashMapBackend {
        HashMapBackend::new(HashMapConfig {
            uid: uid.to_string(),
            max_parallelism,
            key_group_range: range,
            key_codec: key_codec().identity().clone(),
        })
        .unwrap()
    }
}
