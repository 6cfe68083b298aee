//! Checkpoints, savepoints, restore, retention and GC on a real S3 API server: moto on
//! 127.0.0.1, started by `scripts/moto.sh start` (`.ci/run` does it), reached through
//! `s3://bucket/prefix` URLs and the `AWS_*` environment exactly as a job would. Each test
//! creates its own bucket. Without a server the tests print that they are skipped, unless
//! `CI=true`, where they fail.

mod common;
#[path = "../crates/state-dump/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeSet;
use std::sync::Arc;

use cairn_core::{FileArea, KeyGroupRange, KeyedStateBackend, SnapshotOptions};
use cairn_format::Manifest;
use cairn_storage::fault::{FaultyObjectStore, OpKind};
use cairn_storage::{
    create_savepoint, open_savepoint, snapshot_operator, write_savepoint, CheckpointStorage,
    StorageError, SubtaskRef,
};
use common::conformance::{checkpoint, fill_key, read_operator};
use common::factories::{HashMapFactory, RocksDbFactory};
use common::harness::{savepoint_entries, BackendFactory, Operator};
use common::schema::{keys_in, register};
use moto::{moto, Moto};

const MAX_P: u32 = 32;
const MIB: usize = 1024 * 1024;

fn fill_keys<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let ids = register(b);
        fill_key(b, &ids, k, i as u64 + round * 1000);
    }
}

/// The keys of `bucket` under `prefix/`.
fn keys_under(m: &Moto, bucket: &str, prefix: &str) -> BTreeSet<String> {
    m.keys(bucket)
        .into_iter()
        .filter(|k| k.starts_with(&format!("{prefix}/")))
        .collect()
}

/// The object keys of the shared files a manifest references.
fn shared_keys(root: &str, m: &Manifest) -> BTreeSet<String> {
    m.files()
        .filter(|f| f.area == FileArea::Shared)
        .map(|f| format!("{root}/shared/{}", f.name))
        .collect()
}

/// Full checkpoint 1, incremental 2 and 3, published to S3; a storage opened afresh from the
/// URL (as after a restart) finds the latest and restores it exactly, at another parallelism.
fn checkpoints_round_trip<F: BackendFactory>(m: &Moto, f: &F, tag: &str) {
    let bucket = m.bucket(tag);
    let url = format!("s3://{bucket}/jobs/j1");
    let storage = CheckpointStorage::open(&url).unwrap();
    assert_eq!(storage.latest_completed().unwrap(), None);
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 120);
    let mut op = Operator::new(f, "op", MAX_P, 2);
    fill_keys(&mut op, &keys, 1);
    checkpoint(&mut op, &storage, 1, false);
    fill_keys(&mut op, &keys[..10], 2);
    checkpoint(&mut op, &storage, 2, true);
    fill_keys(&mut op, &keys[50..55], 3);
    let m3 = checkpoint(&mut op, &storage, 3, true);
    let expected = read_operator(&mut op, &keys);

    let reopened = CheckpointStorage::open(&url).unwrap();
    assert_eq!(reopened.completed_checkpoints().unwrap(), vec![1, 2, 3]);
    assert_eq!(reopened.next_checkpoint_id().unwrap(), 4);
    let latest = reopened
        .latest_completed()
        .unwrap()
        .expect("a completed checkpoint");
    assert_eq!(latest, m3);
    reopened.verify(3).unwrap();
    let mut restored = Operator::restore(f, &latest, "op", 3, &reopened.source(3));
    assert_eq!(read_operator(&mut restored, &keys), expected, "{tag}");
    assert_eq!(savepoint_entries(&mut restored), savepoint_entries(&mut op));

    // Everything is under the URL's prefix, and checkpoint 3's manifest is where it belongs.
    let all = m.keys(&bucket);
    assert!(all.iter().all(|k| k.starts_with("jobs/j1/")), "{all:?}");
    assert!(
        all.contains(&"jobs/j1/chk-3/_metadata".to_string()),
        "{all:?}"
    );
}

#[test]
fn checkpoints_on_s3_restore_exactly_hashmap() {
    let Some(m) = moto("checkpoints_on_s3_restore_exactly_hashmap") else {
        return;
    };
    checkpoints_round_trip(&m, &HashMapFactory, "chk-heap");
}

#[test]
fn checkpoints_on_s3_restore_exactly_rocksdb() {
    let Some(m) = moto("checkpoints_on_s3_restore_exactly_rocksdb") else {
        return;
    };
    checkpoints_round_trip(&m, &RocksDbFactory::new(), "chk-rocks");
}

/// Incremental 1 and 2, full 3, incremental 4, then `retain(1)`: checkpoints 1 to 3 and the
/// shared files checkpoint 4 does not reference are deleted from the bucket; exactly
/// checkpoint 4's shared files are left, and it still restores.
/// Retention keeps checkpoint 4 and exactly the shared files it references; with `shrinks`,
/// some shared file of the older checkpoints is no longer referenced and is deleted.
fn retention_deletes_on_s3<F: BackendFactory>(m: &Moto, f: &F, tag: &str, shrinks: bool) {
    let bucket = m.bucket(tag);
    let root = "jobs/j2";
    let storage = CheckpointStorage::open(&format!("s3://{bucket}/{root}")).unwrap();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 80);
    let mut op = Operator::new(f, "op", MAX_P, 2);
    fill_keys(&mut op, &keys, 1);
    let m1 = checkpoint(&mut op, &storage, 1, true);
    fill_keys(&mut op, &keys[..8], 2);
    checkpoint(&mut op, &storage, 2, true);
    fill_keys(&mut op, &keys[20..30], 3);
    checkpoint(&mut op, &storage, 3, false);
    fill_keys(&mut op, &keys[40..42], 4);
    let m4 = checkpoint(&mut op, &storage, 4, true);
    let expected = read_operator(&mut op, &keys);

    let shared_before = keys_under(m, &bucket, &format!("{root}/shared"));
    let old = shared_keys(root, &m1);
    assert!(!old.is_empty(), "{tag}: checkpoint 1 wrote shared files");
    assert!(old.is_subset(&shared_before));

    let report = storage.retain(1).unwrap();
    assert_eq!(storage.completed_checkpoints().unwrap(), vec![4]);
    let left = keys_under(m, &bucket, root);
    for id in 1..=3 {
        let dir = format!("{root}/chk-{id}/");
        assert!(
            !left.iter().any(|k| k.starts_with(&dir)),
            "{tag}: {dir} is gone: {left:?} ({report:?})"
        );
    }
    let shared_after = keys_under(m, &bucket, &format!("{root}/shared"));
    // Exactly what checkpoint 4 references is left, and something was deleted (RocksDB's
    // SST files keep their content-derived names across checkpoints; its other files and
    // the heap backend's key-group files do not).
    assert_eq!(shared_after, shared_keys(root, &m4), "{tag}: {report:?}");
    if shrinks {
        assert!(
            shared_after.len() < shared_before.len(),
            "{tag}: {shared_before:?} {report:?}"
        );
    }

    storage.verify(4).unwrap();
    let mut restored = Operator::restore(f, &m4, "op", 1, &storage.source(4));
    assert_eq!(read_operator(&mut restored, &keys), expected, "{tag}");
    // A second GC finds nothing more to delete.
    storage.retain(1).unwrap();
    assert_eq!(keys_under(m, &bucket, root), left);
}

#[test]
fn retention_and_gc_delete_shared_files_on_s3_hashmap() {
    let Some(m) = moto("retention_and_gc_delete_shared_files_on_s3_hashmap") else {
        return;
    };
    retention_deletes_on_s3(&m, &HashMapFactory, "gc-heap", true);
}

#[test]
fn retention_and_gc_delete_shared_files_on_s3_rocksdb() {
    let Some(m) = moto("retention_and_gc_delete_shared_files_on_s3_rocksdb") else {
        return;
    };
    // Flushing checkpoints: checkpoint 1 must write shared SST files for gc to delete.
    retention_deletes_on_s3(&m, &RocksDbFactory::flushing(), "gc-rocks", true);
}

/// With the WAL (the default) a state this small stays in log files, which every later
/// checkpoint references: retention deletes the older checkpoints and keeps every log that
/// checkpoint 4 references, and checkpoint 4 restores.
#[test]
fn retention_keeps_the_logs_a_checkpoint_references_on_s3_rocksdb() {
    let Some(m) = moto("retention_keeps_the_logs_a_checkpoint_references_on_s3_rocksdb") else {
        return;
    };
    retention_deletes_on_s3(&m, &RocksDbFactory::new(), "gc-rocks-wal", false);
}

/// A canonical savepoint written to S3 by one backend restores under both, at other
/// parallelisms; a second savepoint into the same directory is refused.
#[test]
fn savepoint_on_s3_restores_under_both_backends() {
    let Some(m) = moto("savepoint_on_s3_restores_under_both_backends") else {
        return;
    };
    let bucket = m.bucket("sp");
    let url = format!("s3://{bucket}/savepoints/sp-7");
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 100);
    let rocks = RocksDbFactory::new();
    let mut op = Operator::new(&rocks, "op", MAX_P, 2);
    fill_keys(&mut op, &keys, 1);
    let expected = read_operator(&mut op, &keys);
    let pending = snapshot_operator(
        &op.uid,
        op.max_parallelism,
        op.subtasks.iter_mut().map(|(b, o)| SubtaskRef {
            keyed: Some(b),
            operator: o,
        }),
        SnapshotOptions::savepoint(7),
    )
    .unwrap();
    let written = write_savepoint(&url, 7, vec![pending]).unwrap();

    let (manifest, source) = open_savepoint(&url).unwrap();
    assert_eq!(manifest, written);
    let mut heap = Operator::restore(&HashMapFactory, &manifest, "op", 3, &source);
    assert_eq!(read_operator(&mut heap, &keys), expected);
    let (manifest, source) = open_savepoint(&format!("{url}/_metadata")).unwrap();
    let mut on_rocks = Operator::restore(&rocks, &manifest, "op", 1, &source);
    assert_eq!(read_operator(&mut on_rocks, &keys), expected);
    assert_eq!(savepoint_entries(&mut heap), savepoint_entries(&mut op));

    let files = keys_under(&m, &bucket, "savepoints/sp-7");
    assert_eq!(files.len(), manifest.files().count() + 1, "{files:?}");
    let err = create_savepoint(&url, 8).unwrap_err();
    assert!(matches!(err, StorageError::SavepointExists { .. }), "{err}");
}

/// A storage on `url` whose store counts what reaches the server and fails part
/// `fail_part` (1-based): shows that large files go through multipart and failed uploads
/// are aborted on the real server.
fn open_counting(url: &str, fail_part: Option<u64>) -> (CheckpointStorage, FaultyObjectStore) {
    let mut faulty = None;
    let storage = CheckpointStorage::open_wrapped(url, |inner| {
        let f = FaultyObjectStore::new(inner);
        if let Some(n) = fail_part {
            f.fail_nth(OpKind::PutPart, n);
        }
        faulty = Some(f.clone());
        Arc::new(f)
    })
    .unwrap();
    (storage, faulty.expect("open_wrapped wraps the store"))
}

fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn large_files_use_multipart_and_a_failed_upload_is_aborted() {
    let Some(m) = moto("large_files_use_multipart_and_a_failed_upload_is_aborted") else {
        return;
    };
    let bucket = m.bucket("mpu");
    let url = format!("s3://{bucket}/job");

    let (storage, parts) = open_counting(&url, None);
    let writer = storage.begin_checkpoint(1).unwrap();
    let small = payload(MIB, 1);
    let f_small = writer
        .write(FileArea::Private, "small.bin", small.clone())
        .unwrap();
    assert_eq!(parts.count(OpKind::Put), 1);
    assert_eq!(parts.count(OpKind::PutPart), 0, "1 MiB is one put");
    let big = payload(20 * MIB, 2);
    let f_big = writer
        .write(FileArea::Shared, "big.bin", big.clone())
        .unwrap();
    assert_eq!(f_big.size, big.len() as u64);
    assert_eq!(
        parts.count(OpKind::PutPart),
        3,
        "20 MiB is parts of 8 + 8 + 4 MiB"
    );
    assert_eq!(parts.count(OpKind::Put), 1);
    let source = storage.source(1);
    assert_eq!(source.read(&f_big).unwrap(), big);
    assert_eq!(source.read(&f_small).unwrap(), small);
    assert_eq!(m.uploads_in_progress(&bucket), 0);
    drop(writer);

    // The second part fails: the upload is aborted on the server and no object appears.
    let (storage, parts) = open_counting(&url, Some(2));
    let writer = storage.begin_checkpoint(2).unwrap();
    let err = writer
        .write(FileArea::Private, "big.bin", payload(20 * MIB, 3))
        .unwrap_err();
    let msg = format!("{err}");
    assert!(
        msg.contains("put_multipart failed") && msg.contains("chk-2/big.bin"),
        "{msg}"
    );
    assert_eq!(parts.count(OpKind::AbortMultipart), 1);
    assert_eq!(m.uploads_in_progress(&bucket), 0, "the upload was aborted");
    let left = m.keys(&bucket);
    assert!(!left.contains(&"job/chk-2/big.bin".to_string()), "{left:?}");
    assert!(left.contains(&"job/shared/big.bin".to_string()), "{left:?}");
}

/// A bucket that does not exist fails at the first request, with the server's answer.
#[test]
fn a_missing_bucket_is_an_error_naming_the_path() {
    if moto("a_missing_bucket_is_an_error_naming_the_path").is_none() {
        return;
    }
    let storage = CheckpointStorage::open("s3://cairn-no-such-bucket/job").unwrap();
    let err = storage.begin_checkpoint(1).unwrap_err();
    let msg = format!("{err}");
    assert!(
        msg.contains("list failed")
            && msg.contains("cairn-no-such-bucket")
            && msg.contains("404")
            && msg.ends_with("path=job"),
        "{msg}"
    );
}
