//! Bootstrap: a savepoint written by the writer holds the word count's `count` state for
//! words with known counts; the runtime's word count, restored from it under hashmap at
//! parallelism 3 and under RocksDB at parallelism 1, counts on from exactly those values.
//! Bootstrapped operator state (a source's positions) resumes the source where it says.

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::collections::BTreeMap;

use cairn_core::OperatorListStateDescriptor;
use cairn_runtime::functions::Count;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{source, Job, StateBackendConfig};
use cairn_state_processor::{SavepointReader, SavepointWriter};
use common::*;
use jobs::*;

/// The counts bootstrapped: words `w0 … w79` (the input has `w0 … w59`), every fifth
/// without one (it starts from zero).
fn bootstrapped() -> BTreeMap<String, u64> {
    (0..80u64)
        .filter(|i| i % 5 != 0)
        .map(|i| (format!("w{i}"), (i * 37) % 101 + 1))
        .collect()
}

fn continues(backend: fn(&std::path::Path) -> StateBackendConfig, parallelism: u32) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, occurrences) = write_input(dir.path(), 2000, 60, 7);
    let start = bootstrapped();
    let savepoint = s(&dir.path().join("bootstrapped"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator(
            "count",
            2,
            start.clone(),
            |(w, _)| w.clone(),
            SetCount::new(),
        )
        .expect("bootstrap");
    writer.write(&savepoint).expect("write");

    // The reader sees what was written.
    let reader = SavepointReader::open(&savepoint).expect("open");
    let read: BTreeMap<String, u64> = reader
        .keyed_state::<String>("count")
        .expect("keyed")
        .values(&count_descriptor())
        .expect("counts")
        .into_iter()
        .collect();
    assert_eq!(read, start);

    let out = Collect::default();
    let config = config(
        dir.path(),
        parallelism,
        backend(dir.path()),
        Some(&savepoint),
    );
    let result = Job::new(wordcount(&input, "count", out.clone()), config)
        .run()
        .expect("job");
    assert_eq!(result.restored_from, Some(format!("savepoint {savepoint}")));
    let got = counts_by_key(&out.taken());
    let want: BTreeMap<String, Vec<u64>> = occurrences
        .iter()
        .map(|(w, n)| {
            let from = start.get(w).copied().unwrap_or(0);
            (w.clone(), (from + 1..=from + n).collect())
        })
        .collect();
    assert_eq!(got.len(), want.len());
    for (w, counts) in &want {
        assert_eq!(got.get(w), Some(counts), "word {w}");
    }
}

#[test]
fn word_count_continues_from_bootstrapped_counts_hashmap_p3() {
    continues(|_| StateBackendConfig::HashMap, 3);
}

#[test]
fn word_count_continues_from_bootstrapped_counts_rocksdb_p1() {
    continues(rocksdb, 1);
}

const TOTAL: u64 = 6000;
const KEYS: u64 = 40;
const SEED: u64 = 5;
const OFFSET: u64 = 2500;

/// A generator whose positions are bootstrapped (two splits, `OFFSET, OFFSET + 2, …` and
/// `OFFSET + 1, OFFSET + 3, …`) emits exactly the records from `OFFSET` on, at the
/// parallelism it was bootstrapped at (each subtask its split) and at another (dealt
/// round robin).
#[test]
fn bootstrapped_source_positions_resume_the_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let savepoint = s(&dir.path().join("positions"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_operator_state(
            "gen",
            2,
            &OperatorListStateDescriptor::<(u64, u64)>::split("next"),
            vec![(OFFSET, 2), (OFFSET + 1, 2)],
        )
        .expect("positions");
    writer.write(&savepoint).expect("write");

    let generator = GeneratorSource::new(TOTAL, KEYS, SEED);
    let mut want: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for n in OFFSET..TOTAL {
        let e = want.entry(generator.key_of(n)).or_default();
        e.push(e.len() as u64 + 1);
    }
    for (run, parallelism) in [2, 3].into_iter().enumerate() {
        let out = Collect::default();
        let graph = source("gen", generator.clone())
            .key_by(|k: &u64| *k)
            .process("count", Count::<u64, u64>::new())
            .sink("sink", out.clone());
        let run_dir = dir.path().join(format!("run-{run}"));
        let config = config(
            &run_dir,
            parallelism,
            StateBackendConfig::HashMap,
            Some(&savepoint),
        );
        let result = Job::new(graph, config).run().expect("job");
        assert_eq!(result.records, TOTAL - OFFSET, "{result:?}");
        assert_eq!(
            counts_by_key(&out.taken()),
            want,
            "parallelism {parallelism}"
        );
    }
}
