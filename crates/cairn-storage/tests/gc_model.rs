//! Model-based test of retention and GC: random sequences of begin / write / reference /
//! publish / abort / drop / retain, checked after every retain against what must hold; then
//! the discard of a cancelled job's own checkpoints.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cairn_core::{FileArea, FileRef, SnapshotType};
use cairn_storage::{CheckpointStorage, CheckpointWriter};
use common::{assert_restorable, content, manifest};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::ObjectStore;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Begin,
    WritePrivate(usize),
    WriteShared(usize, u8),
    ReferenceShared(usize, u8),
    Publish(usize),
    Abort(usize),
    Drop(usize),
    Retain(usize),
    /// Retention of a job whose first own checkpoint is the middle completed one.
    RetainFrom(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => Just(Op::Begin),
        2 => (0..3usize).prop_map(Op::WritePrivate),
        3 => (0..3usize, 0..6u8).prop_map(|(w, s)| Op::WriteShared(w, s)),
        2 => (0..3usize, 0..6u8).prop_map(|(w, s)| Op::ReferenceShared(w, s)),
        3 => (0..3usize).prop_map(Op::Publish),
        1 => (0..3usize).prop_map(Op::Abort),
        1 => (0..3usize).prop_map(Op::Drop),
        2 => (1..4usize).prop_map(Op::Retain),
        1 => (1..3usize).prop_map(Op::RetainFrom),
    ]
}

struct Open {
    writer: CheckpointWriter,
    files: Vec<FileRef>,
}

fn check(
    storage: &CheckpointStorage,
    store: &Arc<dyn ObjectStore>,
    open: &[Open],
    retained: usize,
) {
    let complete = storage.completed_checkpoints().unwrap();
    assert!(complete.len() <= retained, "{complete:?} > {retained}");
    let mut referenced = BTreeSet::new();
    for &id in &complete {
        assert_restorable(storage, id);
        let m = storage.load(id).unwrap();
        referenced.extend(
            m.files()
                .filter(|f| f.area == FileArea::Shared)
                .map(|f| f.name.clone()),
        );
    }
    let in_flight: BTreeSet<String> = open
        .iter()
        .flat_map(|o| o.files.iter())
        .filter(|f| f.area == FileArea::Shared)
        .map(|f| f.name.clone())
        .collect();
    let on_store = common::shared_on_store(store, "job");
    for name in &on_store {
        assert!(
            referenced.contains(name) || in_flight.contains(name),
            "unreferenced shared file {name} survived GC"
        );
    }
    for name in in_flight.iter().chain(referenced.iter()) {
        assert!(
            on_store.contains(name),
            "GC deleted {name}, which is in use"
        );
    }
}

fn run(ops: Vec<Op>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let storage = CheckpointStorage::from_store(store.clone(), Path::from("job")).unwrap();
    let mut open: Vec<Open> = Vec::new();
    let mut published: BTreeMap<u64, ()> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Begin if open.len() < 3 => {
                let id = storage.next_checkpoint_id().unwrap();
                let writer = storage.begin_checkpoint(id).unwrap();
                open.push(Open {
                    writer,
                    files: vec![],
                });
            }
            Op::Begin => {}
            Op::WritePrivate(i) => {
                if let Some(o) = open.get_mut(i) {
                    let name = format!("p{}", o.files.len());
                    let f = o
                        .writer
                        .write(FileArea::Private, &name, content(&name, 10 + o.files.len()))
                        .unwrap();
                    o.files.push(f);
                }
            }
            Op::WriteShared(i, s) => {
                if let Some(o) = open.get_mut(i) {
                    // Content-named: the same name always has the same bytes.
                    let name = format!("s{s}.sst");
                    if o.files.iter().all(|f| f.name != name) {
                        let f = o
                            .writer
                            .write(FileArea::Shared, &name, content(&name, 20 + s as usize))
                            .unwrap();
                        o.files.push(f);
                    }
                }
            }
            Op::ReferenceShared(i, s) => {
                if let Some(o) = open.get_mut(i) {
                    let name = format!("s{s}.sst");
                    let bytes = content(&name, 20 + s as usize);
                    let f = FileRef {
                        area: FileArea::Shared,
                        name: name.clone(),
                        size: bytes.len() as u64,
                        crc32: crc32(&bytes),
                    };
                    if o.files.iter().all(|g| g.name != name)
                        && o.writer.reference_shared(&f).is_ok()
                    {
                        o.files.push(f);
                    }
                }
            }
            Op::Publish(i) => {
                if i < open.len() {
                    let o = open.remove(i);
                    let id = o.writer.id();
                    let m = manifest(id, SnapshotType::Checkpoint, &o.files);
                    storage.publish(o.writer, &m).unwrap();
                    published.insert(id, ());
                }
            }
            Op::Abort(i) => {
                if i < open.len() {
                    let o = open.remove(i);
                    storage.abort(o.writer.id()).unwrap();
                }
            }
            Op::Drop(i) => {
                if i < open.len() {
                    open.remove(i);
                }
            }
            Op::RetainFrom(n) => {
                let before = storage.completed_checkpoints().unwrap();
                let first = before.get(before.len() / 2).copied().unwrap_or(0);
                storage.retain_from(first, n).unwrap();
                let after = storage.completed_checkpoints().unwrap();
                for id in before.iter().filter(|&&id| id < first) {
                    assert!(
                        after.contains(id),
                        "an earlier run's checkpoint {id} was deleted"
                    );
                }
                assert!(after.iter().filter(|&&id| id >= first).count() <= n);
                check(&storage, &store, &open, after.len());
            }
            Op::Retain(n) => {
                let report = storage.retain(n).unwrap();
                assert!(report.retained.len() <= n);
                check(&storage, &store, &open, n);
            }
        }
    }
    drop(open);
    // A job cancelled without retained checkpoints discards its own, from its first id up
    // (here: the newer half): the older stay restorable, with every shared file they use.
    let before = storage.completed_checkpoints().unwrap();
    let mut newest = published.keys().next_back().copied();
    if let Some(&first) = before.get(before.len() / 2) {
        storage.discard_from(first).unwrap();
        let older: Vec<u64> = before.iter().copied().filter(|&id| id < first).collect();
        assert_eq!(storage.completed_checkpoints().unwrap(), older);
        check(&storage, &store, &[], before.len());
        newest = older.last().copied();
    }
    // A final GC leaves exactly the newest checkpoint.
    storage.retain(1).unwrap();
    check(&storage, &store, &[], 1);
    if let Some(newest) = newest {
        assert_eq!(storage.completed_checkpoints().unwrap(), vec![newest]);
    }
    let plan = storage.gc_plan(1).unwrap();
    assert!(
        plan.shared_deleted.is_empty() && plan.incomplete.is_empty() && plan.subsumed.is_empty()
    );
}

fn crc32(bytes: &[u8]) -> u32 {
    // The same CRC the writer computes (ISO-HDLC, as crc32fast).
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CAIRN_GC_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn gc_keeps_what_is_referenced_or_in_flight_and_nothing_else(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
