//! Snapshots other than canonical savepoints: a job's incremental checkpoint (shared files)
//! reads as the model says and becomes a self-contained savepoint; a native RocksDB
//! savepoint is refused by the reader, naming the way out, but carried whole by the writer
//! (renamed), and a RocksDB job counts on from it.

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_core::{FileArea, OperatorListStateDescriptor, SnapshotType};
use cairn_runtime::functions::Count;
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointConfig, CheckpointRetention, Job, JobGraph, SavepointFormat,
    StateBackendConfig,
};
use cairn_state_processor::{SavepointReader, SavepointWriter, StateProcessorError};
use common::*;
use jobs::*;

const FIRST: u64 = 10_000;
const TOTAL: u64 = 16_000;
const KEYS: u64 = 300;
const SEED: u64 = 31;

fn generator(total: u64) -> GeneratorSource {
    GeneratorSource::new(total, KEYS, SEED)
}

fn graph(g: GeneratorSource, count_uid: &str, sink: Option<Collect<(u64, u64)>>) -> JobGraph {
    let counted = source("gen", g)
        .key_by(|k: &u64| *k)
        .process(count_uid, Count::<u64, u64>::new());
    match sink {
        Some(sink) => counted.sink("sink", sink),
        None => counted.sink("sink", DiscardSink),
    }
}

/// Per key, how many records of `range` have it.
fn counts(range: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
    let g = generator(TOTAL);
    let mut c = BTreeMap::new();
    for n in range {
        *c.entry(g.key_of(n)).or_default() += 1;
    }
    c
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_counts(reader: &SavepointReader, uid: &str) -> BTreeMap<u64, u64> {
    reader
        .keyed_state::<u64>(uid)
        .expect("keyed state")
        .values(&count_descriptor())
        .expect("counts")
        .into_iter()
        .collect()
}

#[test]
fn an_incremental_checkpoint_reads_and_becomes_a_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), 2, StateBackendConfig::HashMap, None);
    cfg.checkpoint = CheckpointConfig {
        interval: Some(Duration::from_millis(20)),
        retention: CheckpointRetention::RetainOnCancellation,
        ..CheckpointConfig::default()
    };
    let handle = Job::new(graph(generator(FIRST).idle_at_end(), "count", None), cfg)
        .start()
        .expect("start");
    wait_for("reading", || handle.records_read() >= FIRST);
    // Two checkpoints completed after the last record was read: the newest holds it all.
    let after = handle.checkpoints_completed();
    wait_for("checkpoints", || {
        handle.checkpoints_completed() >= after + 2
    });
    handle.cancel();
    let result = handle.wait().expect("job");
    assert!(result.cancelled, "{result:?}");

    let newest = std::fs::read_dir(dir.path().join("checkpoints"))
        .expect("checkpoint dir")
        .filter_map(|e| {
            let e = e.expect("entry");
            let id = e
                .file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse::<u64>()
                .ok()?;
            e.path()
                .join("_metadata")
                .exists()
                .then_some((id, e.path()))
        })
        .max()
        .expect("a retained checkpoint");
    let checkpoint = s(&newest.1);
    let reader = SavepointReader::open(&checkpoint).expect("open checkpoint");
    assert_eq!(reader.snapshot_type(), SnapshotType::Checkpoint);
    assert_eq!(reader.checkpoint_id(), newest.0);
    let shared = reader
        .manifest()
        .files()
        .filter(|f| f.area == FileArea::Shared)
        .count();
    assert!(
        shared > 0,
        "an incremental checkpoint references shared files"
    );
    let want = counts(0..FIRST);
    assert_eq!(read_counts(&reader, "count"), want);

    // As a savepoint: every file its own, the same state.
    let savepoint = s(&dir.path().join("from-checkpoint"));
    SavepointWriter::from_existing(&checkpoint)
        .expect("from checkpoint")
        .write(&savepoint)
        .expect("write");
    let reader = SavepointReader::open(&savepoint).expect("open savepoint");
    assert_eq!(reader.snapshot_type(), SnapshotType::Savepoint);
    assert_eq!(reader.checkpoint_id(), newest.0);
    assert!(reader
        .manifest()
        .files()
        .all(|f| f.area == FileArea::Private));
    assert_eq!(read_counts(&reader, "count"), want);
}

#[test]
fn a_native_rocksdb_savepoint_is_carried_whole_but_not_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = Job::new(
        graph(generator(FIRST).idle_at_end(), "count", None),
        config(dir.path(), 2, rocksdb(dir.path()), None),
    )
    .start()
    .expect("start");
    wait_for("reading", || handle.records_read() >= FIRST);
    let native = handle
        .stop_with_savepoint_as(None, SavepointFormat::Native)
        .expect("native savepoint");
    handle.wait().expect("job");

    let reader = SavepointReader::open(&native).expect("open");
    assert_eq!(
        reader.operator("count").expect("count").keyed_states.len(),
        1
    );
    let err = reader.keyed_state::<u64>("count").expect_err("native");
    let message = err.to_string();
    assert!(
        matches!(err, StateProcessorError::Unsupported { .. }),
        "{err:?}"
    );
    assert!(
        message.contains("operator count")
            && message.contains(&native)
            && message.contains("state-dump convert"),
        "{message}"
    );

    // Renamed, with the source pointed at record FIRST; RocksDB restores the native files.
    let renamed = s(&dir.path().join("renamed"));
    let mut writer = SavepointWriter::from_existing(&native).expect("from existing");
    writer
        .change_uid("count", "count-v2")
        .expect("rename")
        .remove_operator("gen")
        .expect("remove the source")
        .with_operator_state(
            "gen",
            1,
            &OperatorListStateDescriptor::<(u64, u64)>::split("next"),
            vec![(FIRST, 1)],
        )
        .expect("positions");
    writer.write(&renamed).expect("write");
    let out = Collect::default();
    Job::new(
        graph(generator(TOTAL), "count-v2", Some(out.clone())),
        config(
            &dir.path().join("second"),
            3,
            rocksdb(&dir.path().join("second")),
            Some(&renamed),
        ),
    )
    .run()
    .expect("restored job");
    let (before, after) = (counts(0..FIRST), counts(0..TOTAL));
    let want: BTreeMap<u64, Vec<u64>> = after
        .iter()
        .filter_map(|(k, &n)| {
            let from = before.get(k).copied().unwrap_or(0);
            (n > from).then(|| (*k, (from + 1..=n).collect()))
        })
        .collect();
    assert_eq!(counts_by_key(&out.taken()), want);
}
