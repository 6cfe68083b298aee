//! `verify` of a changelog checkpoint whose handle has a state with a TTL reads each
//! segment once: the TTL check of the records' values runs as the segment is decoded for
//! its block checks, not on a second read (which doubled the segments' reads).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::{
    Codec, KeyedData, KeyedStateBackend, StateTtlConfig, TtlStateAccess, ValueStateDescriptor,
    TTL_ENCODING_PREFIX,
};
use cairn_storage::fault::{FaultyObjectStore, OpKind};
use cairn_storage::CheckpointStorage;
use common::*;
use state_dump::{verify, JobRoot, NoProgress};

#[test]
fn verify_reads_each_segment_of_a_changelog_with_a_ttl_state_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    // A changelog over the heap backend, never materialized: the checkpoint is segments.
    let mut job = Job::heap_changelog(1, &storage);
    let b = &mut job.subtasks[0].0;
    let ttl = StateTtlConfig::new(Duration::from_secs(3600));
    let seen = b
        .register_value_with_ttl(&ValueStateDescriptor::<String>::new("last_seen"), &ttl)
        .unwrap();
    let key = cairn_core::BincodeCodec::<String>::new();
    for i in 0..100 {
        b.set_current_key(&key.encode_to_vec(&format!("user{i}")).unwrap())
            .unwrap();
        b.ttl_value(&seen).update(format!("at {i}")).unwrap();
    }
    let m = job.checkpoint(&storage, 1, true);
    let h = m.operators[0].subtasks[0].keyed.as_ref().unwrap();
    let KeyedData::Changelog {
        materialized,
        segments,
    } = &h.data
    else {
        panic!("not a changelog handle: {h:?}");
    };
    assert!(materialized.is_empty(), "{h:?}");
    assert!(segments.len() >= 2, "{segments:?}");
    assert!(
        h.states
            .iter()
            .any(|st| st.value.encoding.starts_with(TTL_ENCODING_PREFIX)),
        "{h:?}"
    );

    // The same directory through a store that counts its reads.
    let counter = Mutex::new(None);
    let counted = CheckpointStorage::open_wrapped(s(&root), |inner| {
        let faulty = Arc::new(FaultyObjectStore::new(inner));
        *counter.lock().unwrap() = Some(faulty.clone());
        faulty
    })
    .unwrap();
    let counter = counter.into_inner().unwrap().unwrap();
    let snapshot = JobRoot {
        location: s(&root).to_string(),
        storage: counted,
    }
    .checkpoint(1)
    .unwrap();
    let before = counter.count(OpKind::Get);
    let report = verify(&snapshot, &NoProgress).unwrap();
    let reads = counter.count(OpKind::Get) - before;

    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.files, segments.len(), "{}", report.render());
    assert_eq!(
        report.entries,
        segments.iter().map(|g| g.records).sum::<u64>()
    );
    assert_eq!(reads, segments.len() as u64, "one read per segment");
}
