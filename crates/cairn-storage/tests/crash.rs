//! Failpoint tests (their own binary; each test loops over crash points sequentially).
//!
//! Acceptance: a crash during a checkpoint, injected between any two storage writes, never
//! leaves a checkpoint that looks complete, and the previous one still restores. Likewise a
//! crash during GC never loses a retained checkpoint's file.

mod common;

use std::sync::Arc;

use cairn_core::{FileArea, FileRef, SnapshotTarget, SnapshotType};
use cairn_storage::fault::{CrashPoint, FaultyObjectStore, OpKind};
use cairn_storage::{
    create_savepoint_in, discard_savepoint_in, open_savepoint_in, CheckpointStorage, StorageError,
};
use common::{assert_restorable, content, manifest};
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;

fn prefix() -> Path {
    Path::from("jobs/j1")
}

/// Where a test's checkpoint directory lives.
#[derive(Clone, Copy)]
enum Backend<'a> {
    Memory,
    /// A local directory opened by URL, so the crate's local-disk additions apply.
    Local(&'a std::path::Path),
}

impl Backend<'_> {
    /// A storage over `store`, seen through `wrap`.
    fn storage(
        self,
        store: &Arc<dyn ObjectStore>,
        wrap: impl FnOnce(Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore>,
    ) -> CheckpointStorage {
        match self {
            Backend::Memory => {
                CheckpointStorage::from_store(wrap(store.clone()), prefix()).unwrap()
            }
            Backend::Local(dir) => {
                let url = dir.join("jobs/j1");
                CheckpointStorage::open_wrapped(url.to_str().unwrap(), wrap).unwrap()
            }
        }
    }
}

fn same(s: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    s
}

/// A fresh store holding completed checkpoint 1 (a private and a shared file).
fn setup(backend: Backend<'_>) -> (Arc<dyn ObjectStore>, Vec<FileRef>) {
    let store: Arc<dyn ObjectStore> = match backend {
        Backend::Memory => Arc::new(InMemory::new()),
        // Only used for its type: the local storage is opened by URL.
        Backend::Local(_) => Arc::new(InMemory::new()),
    };
    let storage = backend.storage(&store, same);
    let w = storage.begin_checkpoint(1).unwrap();
    let files = vec![
        w.write_file(FileArea::Private, "op/0.state", content("one", 300))
            .unwrap(),
        w.write_file(FileArea::Shared, "s1.sst", content("s1", 200))
            .unwrap(),
    ];
    storage
        .publish(w, &manifest(1, SnapshotType::Checkpoint, &files))
        .unwrap();
    (store, files)
}

/// The size of checkpoint 2's new shared file when it is large: a multipart upload of
/// three parts (8 + 8 + 1 MiB).
const LARGE: usize = 17 << 20;

/// Checkpoint 2: two private files, a new shared file (`shared_len` bytes), a reused
/// shared file, the manifest.
fn checkpoint_two(
    storage: &CheckpointStorage,
    reused: &FileRef,
    shared_len: usize,
) -> Result<(), StorageError> {
    let w = storage.begin_checkpoint(2)?;
    let mut files = vec![
        w.write(FileArea::Private, "op/0.state", content("two-a", 310))?,
        w.write(FileArea::Shared, "s2.sst", content("s2", shared_len))?,
        w.write(FileArea::Private, "op/2.state", content("two-b", 120))?,
    ];
    w.reference_shared(reused)?;
    files.push(reused.clone());
    storage.publish(w, &manifest(2, SnapshotType::Checkpoint, &files))
}

/// Crashes checkpoint 2 at each of its writes, before and after the write lands; with
/// `large`, its shared file is a multipart upload, whose start, parts and completion are
/// writes of their own.
fn run_checkpoint_crashes(local: bool, large: bool) {
    let shared_len = if large { LARGE } else { 220 };
    // Count the writes of an undisturbed run.
    let dir = tempfile::tempdir().unwrap();
    let backend = if local {
        Backend::Local(dir.path())
    } else {
        Backend::Memory
    };
    let (store, files) = setup(backend);
    let mut faulty = None;
    let storage = backend.storage(&store, |s| {
        let f = FaultyObjectStore::new(s);
        faulty = Some(f.clone());
        Arc::new(f)
    });
    let faulty = faulty.unwrap();
    checkpoint_two(&storage, &files[1], shared_len).unwrap();
    let writes = faulty.writes();
    if large {
        assert_eq!(
            writes,
            8,
            "2 data files + manifest + multipart (start, 3 parts, complete): {:?}",
            faulty.write_log()
        );
        assert_eq!(faulty.count(OpKind::Put), 3);
        assert_eq!(faulty.count(OpKind::PutPart), 3);
        assert_eq!(faulty.count(OpKind::CompleteMultipart), 1);
    } else {
        assert_eq!(
            writes,
            4,
            "3 data files + manifest: {:?}",
            faulty.write_log()
        );
        assert_eq!(faulty.count(OpKind::Put), 4);
    }

    for n in 1..=writes {
        for point in [CrashPoint::BeforeWrite, CrashPoint::AfterWrite] {
            let dir = tempfile::tempdir().unwrap();
            let backend = if local {
                Backend::Local(dir.path())
            } else {
                Backend::Memory
            };
            let (store, files) = setup(backend);
            let mut faulty = None;
            let storage = backend.storage(&store, |s| {
                let f = FaultyObjectStore::new(s);
                f.crash_at_write(n, point);
                faulty = Some(f.clone());
                Arc::new(f)
            });
            let faulty = faulty.unwrap();
            let result = checkpoint_two(&storage, &files[1], shared_len);
            assert!(
                result.is_err(),
                "crash at write {n} ({point:?}) went unnoticed"
            );
            assert!(faulty.is_crashed());
            drop(storage);

            // "Restart": reopen over the underlying store.
            let reopened = backend.storage(&store, same);
            let manifest_landed = n == writes && point == CrashPoint::AfterWrite;
            let ctx = format!("crash at write {n} ({point:?}) local={local} large={large}");
            if manifest_landed {
                // The manifest is durable although the caller saw an error: it is complete.
                assert_eq!(
                    reopened.completed_checkpoints().unwrap(),
                    vec![1, 2],
                    "{ctx}"
                );
                assert_restorable(&reopened, 2);
            } else {
                assert_eq!(reopened.completed_checkpoints().unwrap(), vec![1], "{ctx}");
                let latest = reopened.latest_completed().unwrap().unwrap();
                assert_eq!(latest.checkpoint_id, 1, "{ctx}");
                assert_restorable(&reopened, 1);
            }
            // The restarted job continues with a fresh id and GC cleans up after the crash.
            let next = reopened.next_checkpoint_id().unwrap();
            assert!(next >= 2, "{ctx}");
            let w = reopened.begin_checkpoint(next).unwrap();
            let f = w
                .write_file(FileArea::Private, "op/0.state", content("after", 50))
                .unwrap();
            reopened
                .publish(w, &manifest(next, SnapshotType::Checkpoint, &[f]))
                .unwrap();
            let report = reopened.retain(1).unwrap();
            assert_eq!(report.retained, vec![next], "{ctx}");
            assert_eq!(
                reopened.completed_checkpoints().unwrap(),
                vec![next],
                "{ctx}"
            );
            assert!(report.kept_incomplete.is_empty(), "{ctx}: {report:?}");
            assert_restorable(&reopened, next);
            let plan = reopened.gc_plan(1).unwrap();
            assert!(
                plan.shared_deleted.is_empty() && plan.incomplete.is_empty(),
                "{ctx}"
            );
            if local {
                // Nothing is left behind on disk, not even staging files.
                let left: Vec<_> = std::fs::read_dir(dir.path().join("jobs/j1"))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                assert_eq!(left.len(), 2, "{ctx}: {left:?}"); // chk-<next>, shared
                let shared: Vec<_> = std::fs::read_dir(dir.path().join("jobs/j1/shared"))
                    .map(|d| {
                        d.map(|e| e.unwrap().file_name().into_string().unwrap())
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(shared.is_empty(), "{ctx}: {shared:?}");
            }
        }
    }
}

#[test]
fn crash_at_every_checkpoint_write_in_memory() {
    run_checkpoint_crashes(false, false);
}

#[test]
fn crash_at_every_checkpoint_write_on_local_disk() {
    run_checkpoint_crashes(true, false);
}

#[test]
fn crash_at_every_write_of_a_multipart_checkpoint_in_memory() {
    run_checkpoint_crashes(false, true);
}

#[test]
fn crash_at_every_write_of_a_multipart_checkpoint_on_local_disk() {
    run_checkpoint_crashes(true, true);
}

/// Crashes during `retain`, at every write, then runs it again on the underlying store.
#[test]
fn crash_at_every_gc_write() {
    let build = || {
        let (store, files) = setup(Backend::Memory);
        let storage = CheckpointStorage::from_store(store.clone(), prefix()).unwrap();
        checkpoint_two(&storage, &files[1], 220).unwrap();
        let w = storage.begin_checkpoint(3).unwrap();
        let f = w
            .write_file(FileArea::Shared, "s3.sst", content("s3", 70))
            .unwrap();
        storage
            .publish(w, &manifest(3, SnapshotType::Checkpoint, &[f]))
            .unwrap();
        store
    };
    let faulty = FaultyObjectStore::new(build());
    let storage = CheckpointStorage::from_store(Arc::new(faulty.clone()), prefix()).unwrap();
    let report = storage.retain(1).unwrap();
    assert_eq!(report.subsumed, vec![1, 2]);
    assert_eq!(report.shared_deleted, vec!["s1.sst", "s2.sst"]);
    let writes = faulty.writes();
    assert!(writes >= 4, "{:?}", faulty.write_log());
    for n in 1..=writes {
        for point in [CrashPoint::BeforeWrite, CrashPoint::AfterWrite] {
            let store = build();
            let faulty = FaultyObjectStore::new(store.clone());
            faulty.crash_at_write(n, point);
            let storage =
                CheckpointStorage::from_store(Arc::new(faulty.clone()), prefix()).unwrap();
            assert!(storage.retain(1).is_err());
            let reopened = CheckpointStorage::from_store(store, prefix()).unwrap();
            let ctx = format!("crash at gc write {n} ({point:?})");
            // Whatever still looks complete restores.
            for id in reopened.completed_checkpoints().unwrap() {
                assert_restorable(&reopened, id);
            }
            assert_eq!(
                reopened.latest_completed().unwrap().unwrap().checkpoint_id,
                3,
                "{ctx}"
            );
            let again = reopened.retain(1).unwrap();
            assert_eq!(again.retained, vec![3], "{ctx}");
            assert_eq!(reopened.completed_checkpoints().unwrap(), vec![3], "{ctx}");
            assert_restorable(&reopened, 3);
            let plan = reopened.gc_plan(1).unwrap();
            assert!(
                plan.shared_deleted.is_empty() && plan.incomplete.is_empty(),
                "{ctx}"
            );
        }
    }
}

#[test]
fn fault_store_options() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = FaultyObjectStore::new(inner.clone());
    faulty.set_latency(Some(std::time::Duration::from_millis(1)));
    faulty.fail_nth(OpKind::Put, 2);
    let storage = CheckpointStorage::from_store(Arc::new(faulty.clone()), prefix()).unwrap();
    let w = storage.begin_checkpoint(1).unwrap();
    assert!(w.write_file(FileArea::Private, "a", vec![1]).is_ok());
    assert!(w.write_file(FileArea::Private, "b", vec![1]).is_err());
    assert!(w.write_file(FileArea::Private, "c", vec![1]).is_ok());
    assert!(!faulty.is_crashed());
    faulty.set_latency(None);
    faulty.fail_writes_with_probability(0.5, 42);
    let failures = (0..200)
        .filter(|i| {
            w.write_file(FileArea::Private, &format!("r{i}"), vec![1])
                .is_err()
        })
        .count();
    assert!((50..150).contains(&failures), "{failures}");
    faulty.fail_writes_with_probability(0.0, 1);
    faulty.crash();
    assert!(storage.completed_checkpoints().is_err());
    let err = w.write_file(FileArea::Private, "z", vec![1]).unwrap_err();
    assert!(format!("{err:?}").contains("InjectedFault"), "{err:?}");
}

/// Discarding a savepoint, crashed at each of its writes (before and after the write
/// lands): the savepoint is either still whole or no longer opens, and discarding it again
/// finishes the job, leaving nothing behind. (A discard interrupted after the manifest went
/// used to leave the files, and the next one refused the directory for lack of a manifest.)
#[test]
fn an_interrupted_savepoint_discard_is_finished_by_the_next() {
    let dir = Path::from("savepoints/sp-4-00000000");
    let setup = || {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let w = create_savepoint_in(store.clone(), dir.clone(), 4).unwrap();
        let files: Vec<FileRef> = ["op/0.state", "op/1.state", "other/0.state"]
            .iter()
            .map(|name| w.write(FileArea::Private, name, content(name, 80)).unwrap())
            .collect();
        w.publish(&manifest(4, SnapshotType::Savepoint, &files))
            .unwrap();
        store
    };
    let left = |store: &Arc<dyn ObjectStore>| -> Vec<String> {
        futures::executor::block_on(store.list(Some(&dir)).try_collect::<Vec<_>>())
            .unwrap()
            .into_iter()
            .map(|m| m.location.to_string())
            .collect()
    };

    let store = setup();
    let faulty = FaultyObjectStore::new(store.clone());
    discard_savepoint_in(Arc::new(faulty.clone()), dir.clone()).unwrap();
    let writes = faulty.writes();
    assert_eq!(
        writes,
        6,
        "the copy of the manifest, the manifest, 3 files, the copy: {:?}",
        faulty.write_log()
    );
    assert!(left(&store).is_empty());

    for n in 1..=writes {
        for point in [CrashPoint::BeforeWrite, CrashPoint::AfterWrite] {
            let ctx = format!("crash at write {n} ({point:?})");
            let store = setup();
            let faulty = FaultyObjectStore::new(store.clone());
            faulty.crash_at_write(n, point);
            assert!(
                discard_savepoint_in(Arc::new(faulty), dir.clone()).is_err(),
                "{ctx}"
            );
            match open_savepoint_in(store.clone(), dir.clone()) {
                Ok((m, source)) => {
                    for f in m.files() {
                        source
                            .read(f)
                            .unwrap_or_else(|e| panic!("{ctx}: half a savepoint: {e}"));
                    }
                }
                Err(e) => assert!(e.is_not_found(), "{ctx}: {e}"),
            }
            match discard_savepoint_in(store.clone(), dir.clone()) {
                Ok(()) => {}
                // The crash came after the last write landed: nothing is left to finish.
                Err(e) if e.is_not_found() && n == writes => {}
                Err(e) => panic!("{ctx}: the next discard failed: {e}"),
            }
            assert_eq!(left(&store), Vec::<String>::new(), "{ctx}");
        }
    }
}
