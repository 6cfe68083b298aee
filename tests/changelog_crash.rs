//! Changelog scenarios, one per test: a crash in the middle of a segment upload restores the
//! last completed checkpoint exactly; a torn segment that a manifest references fails the
//! restore naming it; savepoints are canonical with changelog on and off, under either
//! backend; retention deletes the segments a newer materialization made obsolete; a
//! checkpoint in which only some subtasks had materialized rescales under RocksDB.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use cairn_core::*;
use cairn_storage::fault::{CrashPoint, FaultyObjectStore};
use cairn_storage::CheckpointStorage;
use common::conformance::{checkpoint, fill, read_operator};
use common::factories::{ChangelogFactory, HashMapFactory, RocksDbFactory};
use common::harness::{savepoint_entries, BackendFactory, Operator};
use common::schema::{keys_in, register};
use object_store::path::Path;
use object_store::ObjectStore;
#[allow(unused_imports)]
use object_store::ObjectStoreExt as _;

const MAX_P: u32 = 32;

fn fill_op<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let ids = register(b);
        fill(b, &ids, std::slice::from_ref(k), round * 1000 + i as u64);
    }
}

fn uploading<F>(inner: F, storage: &CheckpointStorage) -> ChangelogFactory<F> {
    ChangelogFactory {
        inner,
        storage: Some(storage.clone()),
        segment_bytes: 400,
        min_log_bytes: 1 << 30,
    }
}

/// Runs a future of the in-memory store (which never waits) to completion.
fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

fn crash_mid_upload_restores_last_completed<F: BackendFactory>(inner: F) {
    let mem: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let faulty = Arc::new(FaultyObjectStore::new(mem.clone()));
    let prefix = Path::from("job");
    let storage = CheckpointStorage::from_store(faulty.clone(), prefix.clone()).unwrap();
    let f = uploading(inner, &storage);
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 80);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    checkpoint(&mut op, &storage, 1, true);
    fill_op(&mut op, &keys[..30], 2);
    let m2 = checkpoint(&mut op, &storage, 2, true);
    let at_2 = read_operator(&mut op, &keys);
    let segments_before = faulty
        .write_log()
        .iter()
        .filter(|(_, p)| p.as_ref().ends_with(".cls"))
        .count();
    assert!(
        segments_before >= 4,
        "segments were uploaded: {segments_before}"
    );

    // More changes; the store crashes at the next write: the upload of the next sealed
    // segment, whose bytes land torn under its final name (a store without atomic puts).
    faulty.crash_at_write(faulty.writes() + 1, CrashPoint::BeforeWrite);
    fill_op(&mut op, &keys[30..], 3);
    let writer = storage.begin_checkpoint(3);
    if let Ok(w) = writer {
        let _ = op.subtasks[0]
            .0
            .snapshot(SnapshotOptions::incremental_checkpoint(3))
            .and_then(|p| p.run(&w, &CancelToken::new()));
    }
    assert!(faulty.is_crashed());
    let (_, crashed_path) = faulty.write_log().last().cloned().unwrap();
    assert!(
        crashed_path.as_ref().ends_with(".cls"),
        "the crashing write is a segment upload: {crashed_path}"
    );
    // Tear it: a prefix of a real segment under the crashed name.
    let KeyedData::Changelog { segments, .. } =
        &m2.operators[0].subtasks[0].keyed.as_ref().unwrap().data
    else {
        panic!("not a changelog handle")
    };
    let bytes = CheckpointStorage::from_store(mem.clone(), prefix.clone())
        .unwrap()
        .source(2)
        .read(&segments[0].file)
        .unwrap();
    block_on(mem.put(
        &crashed_path,
        object_store::PutPayload::from(bytes[..bytes.len() / 2].to_vec()),
    ))
    .unwrap();
    drop(op);

    // A new process: the latest completed checkpoint is 2, restored exactly, at another
    // parallelism too.
    let storage = CheckpointStorage::from_store(mem.clone(), prefix.clone()).unwrap();
    let f = ChangelogFactory {
        storage: Some(storage.clone()),
        ..f
    };
    let latest = storage.latest_completed().unwrap().unwrap();
    assert_eq!(latest, m2);
    for p in [2, 3] {
        let mut r = Operator::restore(&f, &latest, "op", p, &storage.source(2));
        assert_eq!(read_operator(&mut r, &keys), at_2, "parallelism {p}");
    }
    // It goes on: checkpoint 3 of the new process restores too.
    let mut r = Operator::restore(&f, &latest, "op", 1, &storage.source(2));
    fill_op(&mut r, &keys[..5], 4);
    let expected = read_operator(&mut r, &keys);
    let m3 = checkpoint(&mut r, &storage, 3, true);
    let mut again = Operator::restore(&f, &m3, "op", 2, &storage.source(3));
    assert_eq!(read_operator(&mut again, &keys), expected);
}

#[test]
fn crash_in_the_middle_of_a_segment_upload_restores_the_last_completed_checkpoint_hashmap() {
    crash_mid_upload_restores_last_completed(HashMapFactory);
}

#[test]
fn crash_in_the_middle_of_a_segment_upload_restores_the_last_completed_checkpoint_rocksdb() {
    crash_mid_upload_restores_last_completed(RocksDbFactory::new());
}

/// A referenced segment that is torn (or damaged) fails the restore and names the file; it
/// is never replayed in part.
#[test]
fn a_torn_referenced_segment_fails_the_restore_naming_it() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = ChangelogFactory::new(HashMapFactory);
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 40);
    let mut op = Operator::new(&f, "op", MAX_P, 1);
    fill_op(&mut op, &keys, 1);
    let m = checkpoint(&mut op, &storage, 1, true);
    let handle = m.operators[0].subtasks[0].keyed.clone().unwrap();
    let KeyedData::Changelog { segments, .. } = &handle.data else {
        panic!("not a changelog handle")
    };
    let seg = segments.last().unwrap().clone();
    /// Serves one file torn.
    struct Torn<'a>(&'a dyn SnapshotSource, String);
    impl SnapshotSource for Torn<'_> {
        fn read_file(&self, file: &FileRef) -> Result<Bytes> {
            let b = self.0.read_file(file)?;
            Ok(if file.name == self.1 {
                b.slice(..b.len() - 7)
            } else {
                b
            })
        }
    }
    let source = storage.source(1);
    let torn = Torn(&source, seg.file.name.clone());
    let mut b = f.create("op", MAX_P, KeyGroupRange::all(MAX_P));
    let e = b.restore(&[handle], &torn).unwrap_err().to_string();
    assert!(e.contains(&seg.file.name), "{e}");
}

/// Savepoints are canonical: changelog(hashmap) → rocksdb → changelog(rocksdb) → hashmap,
/// each restored from the previous one's savepoint, with identical canonical entries.
#[test]
fn savepoints_switch_changelog_on_and_off_under_either_backend() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 60);
    let ch = ChangelogFactory::new(HashMapFactory);
    let mut op = Operator::new(&ch, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    checkpoint(&mut op, &storage, 1, true);
    fill_op(&mut op, &keys[..10], 2);
    let expected = read_operator(&mut op, &keys);
    let entries = savepoint_entries(&mut op);

    fn via_savepoint<A: KeyedStateBackend, G: BackendFactory>(
        from: &mut Operator<A>,
        to: &G,
        p: u32,
    ) -> Operator<G::Backend> {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("sp").to_str().unwrap().to_string();
        let pending = cairn_storage::snapshot_operator(
            &from.uid,
            from.max_parallelism,
            from.subtasks
                .iter_mut()
                .map(|(b, o)| cairn_storage::SubtaskRef {
                    keyed: Some(b),
                    operator: o,
                }),
            SnapshotOptions::savepoint(9),
        )
        .unwrap();
        cairn_storage::write_savepoint(&url, 9, vec![pending]).unwrap();
        let (m, source) = cairn_storage::open_savepoint(&url).unwrap();
        for h in m.files() {
            assert_eq!(h.area, FileArea::Private, "a savepoint is self-contained");
        }
        Operator::restore(to, &m, "op", p, &source)
    }

    let rocks = RocksDbFactory::new();
    let mut plain_rocks = via_savepoint(&mut op, &rocks, 3);
    assert_eq!(read_operator(&mut plain_rocks, &keys), expected);
    assert_eq!(savepoint_entries(&mut plain_rocks), entries);

    let ch_rocks = ChangelogFactory::new(RocksDbFactory::new());
    let mut on_rocks = via_savepoint(&mut plain_rocks, &ch_rocks, 1);
    assert_eq!(read_operator(&mut on_rocks, &keys), expected);
    // Changelog on again: its checkpoints restore, and its savepoint is canonical too.
    fill_op(&mut on_rocks, &keys[20..25], 3);
    let expected = read_operator(&mut on_rocks, &keys);
    let m = checkpoint(&mut on_rocks, &storage, 2, true);
    let mut back = Operator::restore(&ch_rocks, &m, "op", 2, &storage.source(2));
    assert_eq!(read_operator(&mut back, &keys), expected);

    let mut plain_heap = via_savepoint(&mut on_rocks, &HashMapFactory, 2);
    assert_eq!(read_operator(&mut plain_heap, &keys), expected);
    assert_eq!(
        savepoint_entries(&mut plain_heap),
        savepoint_entries(&mut on_rocks)
    );
}

/// Once a checkpoint with a newer materialization completes, retention deletes the older
/// segments and materialized files; nothing pinned is left behind, and the retained
/// checkpoint restores.
#[test]
fn retention_deletes_segments_a_newer_materialization_made_obsolete() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = ChangelogFactory {
        inner: HashMapFactory,
        storage: Some(storage.clone()),
        segment_bytes: 400,
        min_log_bytes: 1 << 30,
    };
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 50);
    let mut op = Operator::new(&f, "op", MAX_P, 1);
    fill_op(&mut op, &keys, 1);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    let old: Vec<String> = m1.files().map(|f| f.name.clone()).collect();
    assert!(old.iter().any(|n| n.ends_with(".cls")), "{old:?}");
    op.subtasks[0].0.materialize_now().unwrap();
    // Wait for the background materialization, then checkpoint with it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let m2 = loop {
        fill_op(&mut op, &keys[..2], 2);
        let id = storage.next_checkpoint_id().unwrap();
        let m = checkpoint(&mut op, &storage, id, true);
        let KeyedData::Changelog { materialized, .. } =
            &m.operators[0].subtasks[0].keyed.as_ref().unwrap().data
        else {
            panic!("not a changelog handle")
        };
        if !materialized.is_empty() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "materialization never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let expected = read_operator(&mut op, &keys);
    let report = storage.retain(1).unwrap();
    let now: Vec<String> = m2.files().map(|f| f.name.clone()).collect();
    for n in old.iter().filter(|n| !now.contains(n)) {
        assert!(
            report.shared_deleted.contains(n),
            "{n} not deleted: {report:?}"
        );
    }
    assert!(storage.gc_plan(1).unwrap().shared_deleted.is_empty());
    let id = m2.checkpoint_id;
    storage.verify(id).unwrap();
    let mut r = Operator::restore(&f, &m2, "op", 2, &storage.source(id));
    assert_eq!(read_operator(&mut r, &keys), expected);
}

/// A changelog checkpoint in which subtask 0 had materialized (under RocksDB: a native
/// handle) and subtask 1 had not (its handle is the log alone, restored through an empty
/// canonical handle) restores at parallelism 1 and 3: a wrapped RocksDB backend then gets
/// native and canonical handles at once.
#[test]
fn partly_materialized_checkpoint_rescales_under_rocksdb() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let f = ChangelogFactory {
        inner: RocksDbFactory::new(),
        storage: None,
        segment_bytes: 400,
        min_log_bytes: 1 << 30,
    };
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 80);
    let mut op = Operator::new(&f, "op", MAX_P, 2);
    fill_op(&mut op, &keys, 1);
    let first = &mut op.subtasks[0].0;
    first.materialize_now().unwrap();
    while first.is_materializing() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    fill_op(&mut op, &keys[..20], 2);
    let m = checkpoint(&mut op, &storage, 1, true);
    let materialized: Vec<bool> = m.operators[0]
        .subtasks
        .iter()
        .map(|s| match &s.keyed.as_ref().unwrap().data {
            KeyedData::Changelog { materialized, .. } => !materialized.is_empty(),
            other => panic!("not a changelog handle: {other:?}"),
        })
        .collect();
    assert_eq!(materialized, [true, false]);
    let expected = read_operator(&mut op, &keys);
    for p in [1, 3] {
        let mut r = Operator::restore(&f, &m, "op", p, &storage.source(1));
        assert_eq!(read_operator(&mut r, &keys), expected, "parallelism {p}");
    }
}
