//! Transform: a job's savepoint, with an operator renamed (`change_uid`), one removed
//! (`remove_operator`) and the source's positions replaced, restores a job whose uids are
//! the new ones: the renamed operator counts on from its old state, and an operator that
//! was removed but is still in the job starts empty; a job without it restores with no
//! need to allow non-restored state, as the untransformed savepoint would need.

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_core::OperatorListStateDescriptor;
use cairn_runtime::functions::Count;
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{source, Job, JobGraph, StateBackendConfig};
use cairn_state_processor::{SavepointReader, SavepointWriter};
use common::*;
use jobs::*;

/// Records read by the first job.
const FIRST: u64 = 8000;
/// Records in all: the jobs restored from the transformed savepoint read `FIRST..TOTAL`.
const TOTAL: u64 = 14_000;
const KEYS: u64 = 90;
const SEED: u64 = 23;

fn generator(total: u64) -> GeneratorSource {
    GeneratorSource::new(total, KEYS, SEED)
}

/// gen → key_by(key) → Count as `count_uid` → [key_by(key % 3) → Seen as `mod-count`] → sink.
fn graph(
    total: u64,
    idle: bool,
    count_uid: &str,
    with_mod_count: bool,
    sink: Option<Collect<((u64, u64), u64)>>,
) -> JobGraph {
    let g = if idle {
        generator(total).idle_at_end()
    } else {
        generator(total)
    };
    let counted = source("gen", g)
        .key_by(|k: &u64| *k)
        .process(count_uid, Count::<u64, u64>::new());
    let out = if with_mod_count {
        counted
            .key_by(|(k, _): &(u64, u64)| k % 3)
            .process("mod-count", Seen::<u64, (u64, u64)>::new())
    } else {
        counted.map("no-mod-count", |r: (u64, u64)| (r, 0))
    };
    match sink {
        Some(sink) => out.sink("sink", sink),
        None => out.sink("sink", DiscardSink),
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

#[test]
fn renamed_and_removed_operators_restore_as_the_new_uids_say() {
    let dir = tempfile::tempdir().expect("tempdir");

    // The first job reads FIRST records at parallelism 2 and stops with a savepoint.
    let first = dir.path().join("first");
    let handle = Job::new(
        graph(FIRST, true, "count", true, None),
        config(&first, 2, StateBackendConfig::HashMap, None),
    )
    .start()
    .expect("start");
    let started = Instant::now();
    while handle.records_read() < FIRST {
        assert!(started.elapsed() < Duration::from_secs(120), "stuck");
        std::thread::sleep(Duration::from_millis(5));
    }
    let original = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("first job");

    // Rename `count`, drop `mod-count`, and point the source at record FIRST (its own
    // state says it is done: the first job read all of its records).
    let transformed = s(&dir.path().join("transformed"));
    let mut writer = SavepointWriter::from_existing(&original).expect("from existing");
    assert_eq!(writer.uids(), ["count", "gen", "mod-count", "sink"]);
    writer
        .change_uid("count", "count-v2")
        .expect("rename")
        .remove_operator("mod-count")
        .expect("remove")
        .remove_operator("gen")
        .expect("remove the source")
        .with_operator_state(
            "gen",
            1,
            &OperatorListStateDescriptor::<(u64, u64)>::split("next"),
            vec![(FIRST, 1)],
        )
        .expect("new positions");
    writer.write(&transformed).expect("write");

    let before = counts(0..FIRST);
    let after = counts(0..TOTAL);
    let reader = SavepointReader::open(&transformed).expect("open");
    let uids: Vec<String> = reader.operators().into_iter().map(|o| o.uid).collect();
    assert_eq!(uids, ["count-v2", "gen", "sink"]);
    let read: BTreeMap<u64, u64> = reader
        .keyed_state::<u64>("count-v2")
        .expect("keyed")
        .values(&count_descriptor())
        .expect("counts")
        .into_iter()
        .collect();
    assert_eq!(read, before, "the renamed operator's state is the old one");

    // Per key, the counts a restored `count-v2` emits: on from the first job's.
    let want_counts: BTreeMap<u64, Vec<u64>> = after
        .iter()
        .filter_map(|(k, &n)| {
            let from = before.get(k).copied().unwrap_or(0);
            (n > from).then(|| (*k, (from + 1..=n).collect()))
        })
        .collect();

    // A job that still has `mod-count`, at parallelism 3: it starts empty.
    let out = Collect::default();
    let result = Job::new(
        graph(TOTAL, false, "count-v2", true, Some(out.clone())),
        config(
            &dir.path().join("second"),
            3,
            StateBackendConfig::HashMap,
            Some(&transformed),
        ),
    )
    .run()
    .expect("job with mod-count");
    assert_eq!(result.records, TOTAL - FIRST, "{result:?}");
    let out = out.taken();
    let by_key = counts_by_key(&out.iter().map(|(r, _)| *r).collect::<Vec<_>>());
    assert_eq!(by_key, want_counts);
    let mut by_rest: BTreeMap<u64, u64> = BTreeMap::new();
    for n in FIRST..TOTAL {
        *by_rest.entry(generator(TOTAL).key_of(n) % 3).or_default() += 1;
    }
    let want_rest: BTreeMap<u64, Vec<u64>> = by_rest
        .iter()
        .map(|(r, &n)| (*r, (1..=n).collect()))
        .collect();
    let got_rest = counts_by_key(
        &out.iter()
            .map(|((k, _), m)| (k % 3, *m))
            .collect::<Vec<_>>(),
    );
    assert_eq!(got_rest, want_rest, "mod-count starts empty");

    // A job without `mod-count`, under RocksDB at parallelism 1.
    let out = Collect::default();
    Job::new(
        graph(TOTAL, false, "count-v2", false, Some(out.clone())),
        config(
            &dir.path().join("third"),
            1,
            rocksdb(dir.path()),
            Some(&transformed),
        ),
    )
    .run()
    .expect("job without mod-count");
    let by_key = counts_by_key(&out.taken().into_iter().map(|(r, _)| r).collect::<Vec<_>>());
    assert_eq!(by_key, want_counts);

    // The same job refuses the original savepoint: it holds `count` and `mod-count`.
    let err = Job::new(
        graph(TOTAL, false, "count-v2", false, Some(Collect::default())),
        config(
            &dir.path().join("fourth"),
            1,
            StateBackendConfig::HashMap,
            Some(&original),
        ),
    )
    .run()
    .expect_err("operators the job lacks")
    .to_string();
    assert!(
        err.contains("count") && err.contains("mod-count") && err.contains("non-restored"),
        "{err}"
    );
}
