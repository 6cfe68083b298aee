//! Helpers of the tests that run jobs (only those link the runtime).
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, JobConfig, JobGraph, KeyedProcessFunction, RestoreFrom,
    StateBackendConfig, TimerService,
};

/// Collects what it is given (a job without failures writes each record once).
#[derive(Clone, Debug, Default)]
pub struct Collect<T>(pub Arc<Mutex<Vec<T>>>);

impl<T> Collect<T> {
    pub fn taken(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}

impl<T> Checkpointed for Collect<T> {}

impl<T: Clone + Send + 'static> cairn_runtime::Sink<T> for Collect<T> {
    fn write(&mut self, record: T) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push(record);
        Ok(())
    }
}

/// The word count: source → tokenize → key_by(word) → `Count` under `count_uid` → sink.
pub fn wordcount(input: &Path, count_uid: &str, sink: Collect<(String, u64)>) -> JobGraph {
    source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .key_by(|w: &String| w.clone())
        .process(
            count_uid,
            cairn_runtime::functions::Count::<String, String>::new(),
        )
        .sink("sink", sink)
}

/// Writes `lines` lines of words `w0 … w<vocabulary-1>` (deterministic) and returns the
/// path and how often each word occurs.
pub fn write_input(
    dir: &Path,
    lines: usize,
    vocabulary: u64,
    seed: u64,
) -> (std::path::PathBuf, BTreeMap<String, u64>) {
    let mut rng = super::Rng::new(seed);
    let mut text = String::new();
    let mut counts = BTreeMap::new();
    for _ in 0..lines {
        let words = 1 + rng.below(6);
        for j in 0..words {
            let w = format!("w{}", rng.below(vocabulary));
            if j > 0 {
                text.push(' ');
            }
            text.push_str(&w);
            *counts.entry(w).or_insert(0) += 1;
        }
        text.push('\n');
    }
    let path = dir.join("input.txt");
    std::fs::write(&path, text).expect("write input");
    (path, counts)
}

/// A job configuration: no checkpoints, `parallelism`, `backend`, restored from
/// `restore` (when given), directories under `dir`.
pub fn config(
    dir: &Path,
    parallelism: u32,
    backend: StateBackendConfig,
    restore: Option<&str>,
) -> JobConfig {
    JobConfig {
        parallelism,
        checkpoint_dir: super::s(&dir.join("checkpoints")),
        savepoint_dir: Some(super::s(&dir.join("savepoints"))),
        backend,
        restore: restore.map(|p| RestoreFrom::Path(p.to_string())),
        ..JobConfig::default()
    }
}

/// RocksDB with its working directory under `dir`.
pub fn rocksdb(dir: &Path) -> StateBackendConfig {
    StateBackendConfig::RocksDb {
        local_dir: dir.join("rocksdb"),
        options: Default::default(),
    }
}

/// Per key, the counts emitted, sorted.
pub fn counts_by_key<K: Ord + Clone>(out: &[(K, u64)]) -> BTreeMap<K, Vec<u64>> {
    let mut by: BTreeMap<K, Vec<u64>> = BTreeMap::new();
    for (k, n) in out {
        by.entry(k.clone()).or_default().push(*n);
    }
    for v in by.values_mut() {
        v.sort_unstable();
    }
    by
}

/// Counts the records of each key in its own value state `seen` and passes `(record,
/// count)` on: a second keyed operator downstream of the first.
#[derive(Clone, Debug)]
pub struct Seen<K, T>(std::marker::PhantomData<fn() -> (K, T)>);

impl<K, T> Seen<K, T> {
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<K, T> Checkpointed for Seen<K, T> {}

impl<K: cairn_runtime::Key, T: cairn_runtime::Data> KeyedProcessFunction for Seen<K, T> {
    type Key = K;
    type In = T;
    type Out = (T, u64);
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        Ok(b.register_value(&ValueStateDescriptor::<u64>::new("seen"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        seen: &Self::State,
        _key: &K,
        record: T,
        b: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (T, u64)>,
    ) -> cairn_runtime::Result<()> {
        let n = b.value_get(*seen, &())?.unwrap_or(0) + 1;
        b.value_update(*seen, &(), n)?;
        out.collect((record, n))
    }
}
