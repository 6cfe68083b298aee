//! Checkpoint storage: publish, discovery, abort, ids, corrupt manifests, local durability
//! paths, savepoints and URL handling.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_core::{FileArea, SnapshotSource, SnapshotTarget, SnapshotType};
use cairn_storage::{
    create_savepoint, create_savepoint_in, discard_savepoint, open_savepoint, open_savepoint_in,
    CheckpointStatus, CheckpointStorage, StorageError,
};
use common::{assert_restorable, content, expect_err, manifest};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

fn memory() -> (Arc<dyn ObjectStore>, CheckpointStorage) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let storage = CheckpointStorage::from_store(store.clone(), Path::from("jobs/j1")).unwrap();
    (store, storage)
}

fn write_checkpoint(storage: &CheckpointStorage, id: u64, shared: &[&str]) {
    let w = storage.begin_checkpoint(id).unwrap();
    let mut files = vec![w
        .write_file(
            FileArea::Private,
            "op/0.state",
            content(&format!("p{id}"), 100),
        )
        .unwrap()];
    for name in shared {
        files.push(
            w.write_file(FileArea::Shared, name, content(name, 50))
                .unwrap(),
        );
    }
    storage
        .publish(w, &manifest(id, SnapshotType::Checkpoint, &files))
        .unwrap();
}

#[test]
fn publish_then_discover_load_and_read() {
    let (_, storage) = memory();
    assert_eq!(storage.next_checkpoint_id().unwrap(), 1);
    assert!(storage.latest_completed().unwrap().is_none());
    write_checkpoint(&storage, 1, &["a.sst"]);
    write_checkpoint(&storage, 2, &["a.sst", "b.sst"]);
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1, 2]);
    let latest = storage.latest_completed().unwrap().unwrap();
    assert_eq!(latest.checkpoint_id, 2);
    assert_eq!(storage.load(1).unwrap().checkpoint_id, 1);
    assert_eq!(storage.next_checkpoint_id().unwrap(), 3);
    let src = storage.source(2);
    for f in latest.files() {
        assert_eq!(src.read_file(f).unwrap().len() as u64, f.size);
    }
    assert_restorable(&storage, 1);
    assert_restorable(&storage, 2);
}

#[test]
fn unpublished_checkpoint_is_not_complete_and_abort_deletes_it() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &[]);
    let w = storage.begin_checkpoint(2).unwrap();
    w.write_file(FileArea::Private, "x", vec![1, 2, 3]).unwrap();
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1]);
    assert_eq!(storage.next_checkpoint_id().unwrap(), 3);
    storage.abort(2).unwrap();
    let err = w.write_file(FileArea::Private, "y", vec![1]).unwrap_err();
    assert!(err.to_string().contains("aborted"), "{err}");
    let left = Path::from("jobs/j1/chk-2/x");
    assert!(futures::executor::block_on(store.head(&left)).is_err());
    // Ids never go back, even after an abort.
    assert!(matches!(
        expect_err(storage.begin_checkpoint(2)),
        StorageError::InvalidCheckpointId { .. }
    ));
    // A completed checkpoint cannot be aborted.
    assert!(storage.abort(1).is_err());
    assert_restorable(&storage, 1);
}

/// An abort that comes while a private file's put is under way deleted `chk-<id>/` before
/// the file was there; the put then landed and left the directory behind, a checkpoint
/// without a manifest that no one would ever publish (the job's pending checkpoint at a
/// cancel, or one a newer checkpoint subsumed). Now the writer deletes what it wrote when
/// it finds the checkpoint aborted after its put, and reports the write as failed.
#[test]
fn a_private_put_under_way_at_an_abort_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().display().to_string();
    let storage = CheckpointStorage::open_wrapped(&url, |inner| {
        let f = Arc::new(cairn_storage::fault::FaultyObjectStore::new(inner));
        f.set_put_latency_for("chk-1/", Duration::from_millis(300));
        f
    })
    .unwrap();
    let w = storage.begin_checkpoint(1).unwrap();
    let writing =
        std::thread::spawn(move || w.write_file(FileArea::Private, "op/0.state", vec![7; 100]));
    std::thread::sleep(Duration::from_millis(100));
    storage.abort(1).unwrap();
    let err = writing.join().unwrap().unwrap_err();
    assert!(err.to_string().contains("aborted"), "{err}");
    assert!(
        !dir.path().join("chk-1").exists(),
        "left behind: {:?}",
        std::fs::read_dir(dir.path().join("chk-1")).map(|d| d.count())
    );
    assert!(storage.scan().unwrap().is_empty());
    // A write that finished before the abort is deleted by the abort, as before.
    let w = storage.begin_checkpoint(2).unwrap();
    w.write_file(FileArea::Private, "op/0.state", vec![7; 100])
        .unwrap();
    storage.abort(2).unwrap();
    assert!(!dir.path().join("chk-2").exists());
}

#[test]
fn publish_checks_the_manifest() {
    let (_, storage) = memory();
    let w = storage.begin_checkpoint(1).unwrap();
    let f = w.write_file(FileArea::Private, "a", vec![7; 10]).unwrap();
    let wrong_id = manifest(2, SnapshotType::Checkpoint, std::slice::from_ref(&f));
    let err = expect_err(storage.publish(w.clone(), &wrong_id));
    assert!(
        matches!(err, StorageError::ManifestMismatch { .. }),
        "{err}"
    );
    let wrong_type = manifest(1, SnapshotType::Savepoint, std::slice::from_ref(&f));
    assert!(storage.publish(w.clone(), &wrong_type).is_err());
    let mut other = f.clone();
    other.name = "never-written".into();
    let missing = manifest(1, SnapshotType::Checkpoint, &[other]);
    assert!(storage.publish(w.clone(), &missing).is_err());
    // Shared files not written by the writer must exist with the right size.
    let mut shared = f.clone();
    shared.area = FileArea::Shared;
    let missing_shared = manifest(1, SnapshotType::Checkpoint, &[shared]);
    assert!(storage.publish(w.clone(), &missing_shared).is_err());
    assert!(storage.completed_checkpoints().unwrap().is_empty());
    storage
        .publish(w.clone(), &manifest(1, SnapshotType::Checkpoint, &[f]))
        .unwrap();
    assert!(w.write_file(FileArea::Private, "late", vec![1]).is_err());
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1]);
}

#[test]
fn reserved_and_invalid_names_are_rejected() {
    let (_, storage) = memory();
    let w = storage.begin_checkpoint(1).unwrap();
    assert!(w
        .write_file(FileArea::Private, "_metadata", vec![1])
        .is_err());
    assert!(w.write_file(FileArea::Private, "../x", vec![1]).is_err());
    assert!(w.write_file(FileArea::Shared, "a//b", vec![1]).is_err());
}

#[test]
fn corrupt_manifest_is_not_complete_and_is_reported() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &[]);
    write_checkpoint(&storage, 2, &[]);
    let damaged = Path::from("jobs/j1/chk-2/_metadata");
    futures::executor::block_on(store.put(&damaged, PutPayload::from_static(b"CAIRN damaged")))
        .unwrap();
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1]);
    // Checkpoint 2 completed (its manifest is there): "latest" may not silently go back to 1.
    let err = expect_err(storage.latest_completed());
    assert!(
        matches!(
            &err,
            StorageError::NewestCheckpointUnreadable { checkpoint_id: 2, source }
                if matches!(**source, StorageError::CorruptManifest { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("chk-2/_metadata"), "{err}");
    // A checkpoint directory without a manifest never completed: it is passed over.
    let w = storage.begin_checkpoint(3).unwrap();
    w.write_file(FileArea::Private, "partial", vec![1; 5])
        .unwrap();
    drop(w);
    assert!(storage.latest_completed().is_err());
    let err = expect_err(storage.load(2));
    assert!(matches!(err, StorageError::CorruptManifest { .. }), "{err}");
    assert!(err.to_string().contains("chk-2/_metadata"), "{err}");
    let scan = storage.scan().unwrap();
    assert!(matches!(scan[1], (2, CheckpointStatus::Corrupt(_))));
    let plan = storage.gc_plan(1).unwrap();
    assert_eq!(plan.corrupt.len(), 1);
    assert!(plan.shared_skipped.is_some());
    // Once a newer checkpoint completed, the damaged one is behind it (and GC may delete it).
    write_checkpoint(&storage, 4, &[]);
    assert_eq!(
        storage.latest_completed().unwrap().unwrap().checkpoint_id,
        4
    );
}

/// A `_metadata` over the manifest size limit is a corrupt manifest of its checkpoint, like
/// one that does not decode: it made `scan` (and so `state-dump files` and `gc`) fail for the
/// whole directory.
#[test]
fn an_oversized_manifest_is_a_corrupt_checkpoint() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &[]);
    write_checkpoint(&storage, 2, &[]);
    let huge = vec![0u8; cairn_format::MAX_MANIFEST_LEN + 1];
    futures::executor::block_on(store.put(
        &Path::from("jobs/j1/chk-2/_metadata"),
        PutPayload::from(huge),
    ))
    .unwrap();
    let scan = storage.scan().unwrap();
    assert!(matches!(scan[0], (1, CheckpointStatus::Complete(_))));
    let (2, CheckpointStatus::Corrupt(err)) = &scan[1] else {
        panic!("{:?}", scan[1]);
    };
    let msg = err.to_string();
    assert!(msg.contains("manifest larger than the limit"), "{msg}");
    assert!(msg.contains("chk-2/_metadata"), "{msg}");
    assert_eq!(storage.gc_plan(1).unwrap().corrupt.len(), 1);
}

#[test]
fn local_directory_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let url = root.to_str().unwrap();
    let storage = CheckpointStorage::open(url).unwrap();
    write_checkpoint(&storage, 1, &["s/a.sst"]);
    let w = storage.begin_checkpoint(2).unwrap();
    w.write_file(FileArea::Private, "partial", vec![1; 5])
        .unwrap();
    drop(w);
    drop(storage);
    let reopened = CheckpointStorage::open(&format!("file://{url}")).unwrap();
    assert_eq!(reopened.completed_checkpoints().unwrap(), vec![1]);
    assert_eq!(reopened.next_checkpoint_id().unwrap(), 3);
    assert!(root.join("chk-1").join("_metadata").is_file());
    assert!(root.join("shared").join("s").join("a.sst").is_file());
    write_checkpoint(&reopened, 3, &[]);
    let report = reopened.retain(1).unwrap();
    assert_eq!(report.subsumed, vec![1]);
    assert_eq!(report.incomplete, vec![2]);
    assert_eq!(report.shared_deleted, vec!["s/a.sst".to_string()]);
    assert!(!root.join("chk-1").exists());
    assert!(!root.join("chk-2").exists());
    assert_restorable(&reopened, 3);
}

#[test]
fn savepoint_in_a_directory_is_self_contained_and_relocatable() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp-7");
    let w = create_savepoint(sp.to_str().unwrap(), 7).unwrap();
    assert!(!w.supports_shared());
    assert!(w.write_file(FileArea::Shared, "x", vec![1]).is_err());
    let a = w
        .write_file(FileArea::Private, "op/0.state", content("a", 64))
        .unwrap();
    let b = w
        .write_file(FileArea::Private, "op/1.state", content("b", 32))
        .unwrap();
    let m = manifest(7, SnapshotType::Savepoint, &[a, b]);
    assert!(w
        .publish(&manifest(7, SnapshotType::Checkpoint, &[]))
        .is_err());
    let w = create_savepoint(sp.to_str().unwrap(), 7).unwrap();
    let a = w
        .write_file(FileArea::Private, "op/0.state", content("a", 64))
        .unwrap();
    let b = w
        .write_file(FileArea::Private, "op/1.state", content("b", 32))
        .unwrap();
    assert_eq!(manifest(7, SnapshotType::Savepoint, &[a, b]), m);
    w.publish(&m).unwrap();
    assert!(matches!(
        expect_err(create_savepoint(sp.to_str().unwrap(), 8)),
        StorageError::SavepointExists { .. }
    ));
    // Move the directory: relative names keep it restorable.
    let moved = dir.path().join("elsewhere");
    std::fs::rename(&sp, &moved).unwrap();
    for url in [
        moved.to_str().unwrap().to_string(),
        format!("{}/_metadata", moved.to_str().unwrap()),
        format!("file://{}/", moved.to_str().unwrap()),
    ] {
        let (read, src) = open_savepoint(&url).unwrap();
        assert_eq!(read, m);
        for f in read.files() {
            assert_eq!(src.read_file(f).unwrap().len() as u64, f.size);
        }
    }
    let missing = dir.path().join("nope");
    assert!(expect_err(open_savepoint(missing.to_str().unwrap())).is_not_found());
}

/// Savepoint `id` in local directory `sp`: `op/0.state` and `b.state`.
fn two_file_savepoint(sp: &std::path::Path, id: u64) {
    let w = create_savepoint(sp.to_str().unwrap(), id).unwrap();
    let a = w
        .write_file(FileArea::Private, "op/0.state", content("a", 64))
        .unwrap();
    let b = w
        .write_file(FileArea::Private, "b.state", content("b", 32))
        .unwrap();
    w.publish(&manifest(id, SnapshotType::Savepoint, &[a, b]))
        .unwrap();
}

#[test]
fn discarding_a_savepoint_deletes_its_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp-7");
    two_file_savepoint(&sp, 7);
    // A file the savepoint does not reference stays, and so does the directory.
    std::fs::write(sp.join("notes.txt"), b"mine").unwrap();
    discard_savepoint(sp.to_str().unwrap()).unwrap();
    assert!(expect_err(open_savepoint(sp.to_str().unwrap())).is_not_found());
    let left: Vec<_> = std::fs::read_dir(&sp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    // Without it, the directory goes too.
    let w = create_savepoint(sp.to_str().unwrap(), 8).unwrap();
    let a = w
        .write_file(FileArea::Private, "op/0.state", content("a", 64))
        .unwrap();
    w.publish(&manifest(8, SnapshotType::Savepoint, &[a]))
        .unwrap();
    std::fs::remove_file(sp.join("notes.txt")).unwrap();
    discard_savepoint(&format!("{}/_metadata", sp.display())).unwrap();
    assert!(!sp.exists());
    // Not a savepoint: refused, nothing deleted.
    let root = dir.path().join("job");
    let storage = CheckpointStorage::open(root.to_str().unwrap()).unwrap();
    write_checkpoint(&storage, 1, &[]);
    let chk = root.join("chk-1");
    assert!(matches!(
        expect_err(discard_savepoint(chk.to_str().unwrap())),
        StorageError::ManifestMismatch { .. }
    ));
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1]);
    assert!(
        expect_err(discard_savepoint(dir.path().join("nope").to_str().unwrap())).is_not_found()
    );
    // What an interrupted discard left, its copy of the manifest damaged: an error naming
    // the copy; the files stay.
    std::fs::create_dir_all(sp.join("op")).unwrap();
    std::fs::write(sp.join("op/0.state"), b"left").unwrap();
    std::fs::write(sp.join("_discarding"), b"CAIRNMF\0 torn").unwrap();
    let e = expect_err(discard_savepoint(sp.to_str().unwrap()));
    assert!(matches!(e, StorageError::CorruptManifest { .. }), "{e}");
    assert!(e.to_string().contains("_discarding"), "{e}");
    assert!(sp.join("op/0.state").is_file());
}

/// An aborted savepoint leaves nothing behind: the files written before the abort are
/// deleted with the directory, a write after it is refused and leaves no file, and it cannot
/// be published. Another savepoint's directory is untouched.
#[test]
fn an_aborted_savepoint_deletes_its_files_and_refuses_more() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp-9");
    let other = dir.path().join("sp-8");
    let kept = create_savepoint(other.to_str().unwrap(), 8).unwrap();
    let kept_file = kept
        .write(FileArea::Private, "a.state", content("kept", 10))
        .unwrap();
    let w = create_savepoint(sp.to_str().unwrap(), 9).unwrap();
    let a = w
        .write(FileArea::Private, "a.state", content("a", 10))
        .unwrap();
    let b = w
        .write(FileArea::Private, "b.state", content("b", 20))
        .unwrap();
    assert!(sp.join("a.state").exists() && sp.join("b.state").exists());
    w.abort();
    assert!(!sp.exists(), "the savepoint directory is gone");
    let late = w.write(FileArea::Private, "c.state", content("c", 5));
    assert!(
        matches!(
            late,
            Err(StorageError::WriterClosed {
                checkpoint_id: 9,
                ..
            })
        ),
        "{late:?}"
    );
    assert!(!sp.exists(), "a refused write leaves no file");
    assert!(matches!(
        w.publish(&manifest(9, SnapshotType::Savepoint, &[a, b])),
        Err(StorageError::WriterClosed { .. })
    ));
    assert!(!sp.exists());
    assert_eq!(
        std::fs::read(other.join("a.state")).unwrap().len() as u64,
        kept_file.size
    );
}

/// A write under way when the savepoint is aborted lands after the abort listed the files
/// to delete: the write deletes its own file and fails, so nothing is left.
#[test]
fn a_write_under_way_at_an_abort_deletes_its_own_file() {
    let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faulty = Arc::new(cairn_storage::fault::FaultyObjectStore::new(inner.clone()));
    faulty.set_put_latency_for("slow.state", Duration::from_millis(400));
    let dir = Path::from("savepoints/sp-4");
    let w = Arc::new(create_savepoint_in(faulty, dir.clone(), 4).unwrap());
    w.write(FileArea::Private, "fast.state", content("f", 10))
        .unwrap();
    let writer = w.clone();
    let slow =
        std::thread::spawn(move || writer.write(FileArea::Private, "slow.state", content("s", 10)));
    std::thread::sleep(Duration::from_millis(100));
    w.abort();
    let late = slow.join().unwrap();
    assert!(
        matches!(
            late,
            Err(StorageError::WriterClosed {
                checkpoint_id: 4,
                ..
            })
        ),
        "{late:?}"
    );
    for name in ["fast.state", "slow.state"] {
        let head = futures::executor::block_on(inner.head(&dir.clone().join(name)));
        assert!(head.is_err(), "{name} is still there: {head:?}");
    }
}

#[test]
fn savepoint_in_a_shared_memory_store() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dir = Path::from("savepoints/sp-3");
    let w = create_savepoint_in(store.clone(), dir.clone(), 3).unwrap();
    let f = w.write_file(FileArea::Private, "x", vec![9; 9]).unwrap();
    w.publish(&manifest(3, SnapshotType::Savepoint, &[f]))
        .unwrap();
    let (m, src) = open_savepoint_in(store, dir).unwrap();
    assert_eq!(m.checkpoint_id, 3);
    let f = m.files().next().unwrap();
    assert_eq!(&src.read_file(f).unwrap()[..], &[9; 9]);
}

#[test]
fn read_checks_size_and_names_the_path() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &[]);
    let m = storage.load(1).unwrap();
    let f = m.files().next().unwrap().clone();
    let path = Path::from("jobs/j1/chk-1/op/0.state");
    futures::executor::block_on(store.put(&path, PutPayload::from_static(b"short"))).unwrap();
    let err = storage.source(1).read_file(&f).unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("chk-1/op/0.state"), "{msg}");
    assert!(storage.verify(1).is_err());
    futures::executor::block_on(store.delete(&path)).unwrap();
    let err = expect_err(storage.source(1).read(&f));
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
}

#[test]
fn urls_are_checked() {
    // s3:// is built in by default (feature `s3`); gs:// needs feature `gcp`.
    #[cfg(not(feature = "gcp"))]
    {
        let err = expect_err(CheckpointStorage::open("gs://bucket/jobs/j1"));
        assert!(
            matches!(err, StorageError::FeatureDisabled { feature: "gcp", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("`gcp`"), "{err}");
    }
    assert!(CheckpointStorage::open("ftp://x/y").is_err());
    assert!(CheckpointStorage::open("").is_err());
    // A storage URL that lost its `//` is refused, not taken for a local directory named
    // `s3:` (which a job would then fill, the user believing it wrote to S3).
    for typo in ["s3:/bucket/jobs/j1", "S3:bucket", "file:ck"] {
        let err = expect_err(CheckpointStorage::open(typo));
        assert!(
            matches!(err, StorageError::InvalidUrl { .. })
                && err.to_string().contains("URL without `//`"),
            "{typo}: {err}"
        );
        let err = expect_err(open_savepoint(typo));
        assert!(
            err.to_string().contains("URL without `//`"),
            "{typo}: {err}"
        );
        let err = expect_err(create_savepoint(typo, 1));
        assert!(
            err.to_string().contains("URL without `//`"),
            "{typo}: {err}"
        );
    }
    assert!(!std::path::Path::new("s3:").exists() && !std::path::Path::new("S3:bucket").exists());
    // A colon elsewhere, or after a name that is no storage scheme, is a plain path.
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("s3:").join("x");
    CheckpointStorage::open(odd.to_str().unwrap()).unwrap();
    assert!(odd.is_dir());
    let s = CheckpointStorage::open("memory:///jobs/x").unwrap();
    assert!(s.completed_checkpoints().unwrap().is_empty());
}

/// The storage runs its I/O on its own runtime, so it works from inside another runtime
/// too: in `spawn_blocking` (where blocking is expected) and even directly in an async
/// block of a current-thread runtime, without panicking or deadlocking.
#[test]
fn calls_from_inside_another_runtime_work() {
    let (_, storage) = memory();
    write_checkpoint(&storage, 1, &["s.sst"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let s = storage.clone();
    let ids = rt
        .block_on(async move { s.completed_checkpoints() })
        .unwrap();
    assert_eq!(ids, vec![1]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let s = storage.clone();
    let ids = rt
        .block_on(
            async move { tokio::task::spawn_blocking(move || s.completed_checkpoints()).await },
        )
        .unwrap()
        .unwrap();
    assert_eq!(ids, vec![1]);
}

/// Regression (found by the GC model test): a `reference_shared` that fails because the file
/// is missing must not leave the name protected, or a file written later under that name by
/// another writer that is then dropped survives GC with nothing referencing it.
#[test]
fn failed_reference_does_not_protect_the_name() {
    let (store, storage) = memory();
    let w1 = storage.begin_checkpoint(1).unwrap();
    let missing = cairn_core::FileRef {
        area: FileArea::Shared,
        name: "s2.sst".into(),
        size: 50,
        crc32: 0,
    };
    assert!(matches!(
        w1.reference_shared(&missing),
        Err(StorageError::NotFound { .. })
    ));
    let w2 = storage.begin_checkpoint(2).unwrap();
    w2.write_file(FileArea::Shared, "s2.sst", content("s2.sst", 50))
        .unwrap();
    drop(w2);
    storage.retain(1).unwrap();
    let left = common::shared_on_store(&store, "jobs/j1");
    assert!(
        left.is_empty(),
        "unreferenced shared files survived GC: {left:?}"
    );
    drop(w1);
}

/// A restore in progress (a live `CheckpointSource`) keeps its checkpoint and the shared
/// files it references from GC; once the source is dropped, GC takes them.
#[test]
fn gc_keeps_a_checkpoint_while_it_is_restored() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &["s1.sst"]);
    let source = storage.source(1);
    write_checkpoint(&storage, 2, &["s2.sst"]);
    let report = storage.retain(1).unwrap();
    assert_eq!(report.kept_restoring, vec![1]);
    assert!(report.subsumed.is_empty());
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![1, 2]);
    assert_restorable(&storage, 1);
    let m1 = storage.load(1).unwrap();
    for f in m1.files() {
        source.read(f).unwrap();
    }
    drop(source);
    let report = storage.retain(1).unwrap();
    assert_eq!(report.subsumed, vec![1]);
    assert_eq!(report.shared_deleted, vec!["s1.sst".to_string()]);
    assert_eq!(
        common::shared_on_store(&store, "jobs/j1"),
        ["s2.sst".to_string()].into_iter().collect()
    );
}

#[test]
fn a_minimum_age_keeps_what_a_job_elsewhere_may_be_writing() {
    let (store, storage) = memory();
    write_checkpoint(&storage, 1, &["s/old.sst"]);
    // Checkpoint 2 of a job in another process: its directory and a shared file are there,
    // its manifest is not yet.
    let w = storage.begin_checkpoint(2).unwrap();
    w.write_file(FileArea::Private, "partial", vec![1; 5])
        .unwrap();
    drop(w);
    let orphan = Path::from("jobs/j1/shared/s/new.sst");
    futures::executor::block_on(store.put(&orphan, PutPayload::from_static(b"new"))).unwrap();
    write_checkpoint(&storage, 3, &[]);

    let hour = Duration::from_secs(3600);
    let plan = storage.gc_plan_min_age(1, hour).unwrap();
    assert_eq!(plan.subsumed, vec![1], "{plan:?}");
    assert_eq!(plan.kept_incomplete, vec![2], "{plan:?}");
    assert!(plan.incomplete.is_empty(), "{plan:?}");
    assert_eq!(plan.shared_young, vec!["s/new.sst".to_string()], "{plan:?}");
    // The subsumed checkpoint's file is old: it goes.
    assert_eq!(
        plan.shared_deleted,
        vec!["s/old.sst".to_string()],
        "{plan:?}"
    );

    let report = storage.retain_min_age(1, hour).unwrap();
    assert_eq!(report.shared_young, plan.shared_young);
    assert_eq!(report.kept_incomplete, vec![2]);
    assert!(futures::executor::block_on(store.head(&orphan)).is_ok());
    assert_eq!(storage.scan().unwrap().len(), 2, "chk-2 and chk-3 stay");

    // Once older than the minimum age, they go.
    std::thread::sleep(Duration::from_millis(20));
    let report = storage
        .retain_min_age(1, Duration::from_millis(10))
        .unwrap();
    assert_eq!(report.incomplete, vec![2], "{report:?}");
    assert_eq!(report.shared_deleted, vec!["s/new.sst".to_string()]);
    assert!(futures::executor::block_on(store.head(&orphan)).is_err());
    // No minimum age: the plain plan has nothing left either.
    let plan = storage.gc_plan(1).unwrap();
    assert_eq!(plan.retained, vec![3], "{plan:?}");
    assert!(
        plan.subsumed.is_empty()
            && plan.incomplete.is_empty()
            && plan.shared_deleted.is_empty()
            && plan.shared_young.is_empty(),
        "{plan:?}"
    );
}

/// A process that dies during a local put leaves `object_store`'s staging file
/// (`<name>#<n>`, written before the rename to `<name>`), which listings never show: gc
/// finds and deletes those in `shared/` unless the put may still be running (its name in
/// flight here, or younger than the minimum age).
#[test]
fn gc_deletes_staging_files_that_a_crashed_put_left_in_shared() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = CheckpointStorage::open(root.to_str().unwrap()).unwrap();
    write_checkpoint(&storage, 1, &["s/a.sst"]);
    let shared = root.join("shared");
    // What crashed puts left: one of a file that was put again and completed since, one of
    // a file no checkpoint ever referenced. `x#y` is an ordinary (unreferenced) file name
    // to object_store, not a staging file.
    for name in ["s/a.sst#1", "lost.sst#12", "x#y"] {
        std::fs::write(shared.join(name), b"torn").unwrap();
    }
    let staging = |plan: &cairn_storage::GcReport| plan.staging_deleted.clone();

    let young = storage
        .gc_plan_min_age(1, Duration::from_secs(3600))
        .unwrap();
    assert!(staging(&young).is_empty(), "{young:?}");
    assert_eq!(
        young.shared_young,
        vec!["lost.sst#12", "s/a.sst#1", "x#y"],
        "{young:?}"
    );
    let plan = storage.gc_plan(1).unwrap();
    assert_eq!(staging(&plan), vec!["lost.sst#12", "s/a.sst#1"], "{plan:?}");
    assert_eq!(plan.shared_deleted, vec!["x#y"], "{plan:?}");
    assert!(
        shared.join("lost.sst#12").is_file(),
        "a plan deletes nothing"
    );

    // A checkpoint in flight here writes `lost.sst`: its staging file may be that put's.
    let w = storage.begin_checkpoint(2).unwrap();
    let lost = w
        .write_file(FileArea::Shared, "lost.sst", content("lost", 10))
        .unwrap();
    let report = storage.retain(1).unwrap();
    assert_eq!(report.staging_deleted, vec!["s/a.sst#1"], "{report:?}");
    assert_eq!(
        report.shared_in_flight,
        vec!["lost.sst", "lost.sst#12"],
        "{report:?}"
    );
    assert!(!shared.join("s/a.sst#1").exists());
    assert!(shared.join("lost.sst#12").is_file());
    assert!(
        shared.join("s/a.sst").is_file(),
        "the referenced file stays"
    );
    storage
        .publish(w, &manifest(2, SnapshotType::Checkpoint, &[lost]))
        .unwrap();

    let report = storage.retain(1).unwrap();
    assert_eq!(report.staging_deleted, vec!["lost.sst#12"], "{report:?}");
    assert!(!shared.join("lost.sst#12").exists());
    assert_restorable(&storage, 2);

    // Discarding every checkpoint takes staging files too.
    std::fs::write(shared.join("lost.sst#3"), b"torn").unwrap();
    let report = storage.discard_all().unwrap();
    assert_eq!(report.staging_deleted, vec!["lost.sst#3"], "{report:?}");
    let left: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.iter().all(|n| n == "s"), "{left:?}");
}

/// What a discard killed after the manifest went leaves on a local directory: no savepoint
/// may be written there until a discard finishes it (that would delete the new savepoint's
/// files of the same names), and finishing it removes the staging files crashed puts left
/// too, and the directory.
#[test]
fn an_interrupted_discard_on_disk_is_finished_and_blocks_a_new_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp-5");
    let url = sp.to_str().unwrap();
    two_file_savepoint(&sp, 5);
    // The discard wrote its copy and deleted the manifest and one file, then died while
    // its copy's put was being retried (a staging file), as did a put of the savepoint.
    std::fs::rename(sp.join("_metadata"), sp.join("_discarding")).unwrap();
    std::fs::remove_file(sp.join("b.state")).unwrap();
    std::fs::write(sp.join("_discarding#1"), b"torn").unwrap();
    std::fs::write(sp.join("op/0.state#3"), b"torn").unwrap();

    assert!(expect_err(open_savepoint(url)).is_not_found());
    let e = expect_err(create_savepoint(url, 6));
    assert!(matches!(e, StorageError::InterruptedDiscard { .. }), "{e}");
    assert!(e.to_string().contains("sp-5/_discarding"), "{e}");

    discard_savepoint(url).unwrap();
    assert!(
        !sp.exists(),
        "left: {:?}",
        std::fs::read_dir(&sp).map(|d| d.count())
    );
    create_savepoint(url, 6).unwrap();
}
