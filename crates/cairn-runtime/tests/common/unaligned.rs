//! Helpers for the hunt over unaligned checkpoints and at-least-once mode
//! (`tests/unaligned_hunt.rs`): generator jobs with a slow keyed or rebalanced stage (so
//! that channels fill up and barriers overtake records), injected failures, and a look at
//! the in-flight records a checkpoint holds.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_format::Manifest;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Data, Job, JobConfig, JobGraph, JobResult, ProcessFunction,
    RuntimeError, Stream, INFLIGHT_STATE,
};

use super::count_sink;

type Count = cairn_runtime::functions::Count<u64, u64>;

/// The generator of a test: `total` records over `keys` keys.
#[derive(Clone, Copy, Debug)]
pub struct Gen {
    pub total: u64,
    pub keys: u64,
    pub seed: u64,
}

impl Gen {
    pub fn source(&self) -> GeneratorSource {
        GeneratorSource::new(self.total, self.keys, self.seed)
    }

    /// How often each key occurs among the records `n` for which `emitted(n)`.
    pub fn expected_where(&self, emitted: impl Fn(u64) -> bool) -> BTreeMap<String, u64> {
        let g = self.source();
        let mut counts = BTreeMap::new();
        for n in (0..self.total).filter(|n| emitted(*n)) {
            *counts.entry(g.key_of(n).to_string()).or_insert(0) += 1;
        }
        counts
    }

    /// How often each key occurs.
    pub fn expected(&self) -> BTreeMap<String, u64> {
        self.expected_where(|_| true)
    }
}

/// Fails whenever the records it has seen (over every run: a shared counter, replays
/// included) reach one of `at`.
pub struct FailEvery<T> {
    pub seen: Arc<AtomicU64>,
    pub at: Arc<Vec<u64>>,
    _t: PhantomData<fn(T)>,
}

impl<T> Clone for FailEvery<T> {
    fn clone(&self) -> Self {
        Self {
            seen: self.seen.clone(),
            at: self.at.clone(),
            _t: PhantomData,
        }
    }
}

impl<T> FailEvery<T> {
    pub fn at(at: Vec<u64>) -> Self {
        Self {
            seen: Arc::new(AtomicU64::new(0)),
            at: Arc::new(at),
            _t: PhantomData,
        }
    }
}

impl<T> Checkpointed for FailEvery<T> {}

impl<T: Data> ProcessFunction<T, T> for FailEvery<T> {
    fn process(&mut self, r: T, out: &mut Collector<'_, T>) -> cairn_runtime::Result<()> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.at.contains(&n) {
            return Err(RuntimeError::user(
                "fail",
                format!("injected failure at record {n}"),
            ));
        }
        out.collect(r)
    }
}

/// Sleeps `delay` per record (backpressure up the dataflow), passes it on.
pub fn slow<T: Data>(s: Stream<T>, uid: &str, delay: Duration) -> Stream<T> {
    s.map(uid, move |r: T| {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        r
    })
}

/// generator → key_by → count → slow → fail → sink: the keyed stage is slow, so the
/// keyed exchange holds records when a barrier comes (in-flight records on `count`).
pub fn keyed_graph(
    src: impl cairn_runtime::Source<Out = u64>,
    output: &Path,
    delay: Duration,
    fail: FailEvery<(u64, u64)>,
) -> JobGraph {
    let counted = source("source", src)
        .key_by(|k: &u64| *k)
        .process("count", Count::new());
    slow(counted, "slow", delay)
        .process("fail", fail)
        .sink("sink", count_sink(output))
}

/// generator → rebalance → slow → key_by → count → fail → sink: the rebalanced stage is
/// slow, so its non-keyed input holds records when a barrier comes (in-flight records on
/// `slow`, split on restore).
pub fn rebalance_graph(
    g: Gen,
    output: &Path,
    delay: Duration,
    fail: FailEvery<(u64, u64)>,
) -> JobGraph {
    let before = slow(source("source", g.source()).rebalance(), "slow", delay);
    before
        .key_by(|k: &u64| *k)
        .process("count", Count::new())
        .process("fail", fail)
        .sink("sink", count_sink(output))
}

/// The in-flight records a manifest holds, per operator uid.
pub fn inflight_by_uid(m: &Manifest) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for op in &m.operators {
        let n: usize = op
            .subtasks
            .iter()
            .flat_map(|s| &s.operator_state)
            .filter(|s| s.name == INFLIGHT_STATE)
            .map(|s| s.elements.len())
            .sum();
        if n > 0 {
            out.insert(op.uid.clone(), n);
        }
    }
    out
}

/// Every in-flight record a manifest holds.
pub fn inflight_records(m: &Manifest) -> usize {
    inflight_by_uid(m).values().sum()
}

/// Starts the job, waits (up to 20 s) until its newest completed checkpoint holds at least
/// `min_inflight` in-flight records, and cancels it. Returns the run's result and that
/// checkpoint's manifest (`None`: none came). `config` must retain checkpoints on
/// cancellation.
pub fn run_until_inflight(
    graph: JobGraph,
    config: &JobConfig,
    min_inflight: usize,
) -> (JobResult, Option<Manifest>) {
    let handle = Job::new(graph, config.clone()).start().expect("start");
    let storage = cairn_storage::CheckpointStorage::open(&config.checkpoint_dir).expect("storage");
    let started = Instant::now();
    let mut found = None;
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
        if let Ok(Some(m)) = storage.latest_completed() {
            if inflight_records(&m) >= min_inflight.max(1) {
                found = Some(m);
                break;
            }
        }
    }
    handle.cancel();
    let result = handle.wait().expect("the first run");
    // The checkpoint may have been subsumed between the look and the cancellation: the
    // newest one left is the one a restore takes.
    let latest = storage.latest_completed().expect("list checkpoints");
    (result, found.and(latest))
}

/// The local directory of checkpoint `id` under `checkpoint_dir`.
pub fn checkpoint_path(checkpoint_dir: &str, id: u64) -> std::path::PathBuf {
    Path::new(checkpoint_dir).join(format!("chk-{id}"))
}

/// The configuration of a run that [`run_until_holding`] stops: unaligned checkpoints every
/// 20 ms into `dir`, one retained and kept on cancellation, at `parallelism`.
pub fn unaligned_retained_config(dir: &Path, parallelism: u32) -> JobConfig {
    let mut cfg = super::config(dir, 20);
    cfg.parallelism = parallelism;
    cfg.checkpoint.unaligned = true;
    cfg.checkpoint.num_retained = 1;
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    cfg
}

/// [`run_until_inflight`] (at least `min_inflight` records), asserting that operator `uid`
/// holds in-flight records in the checkpoint it stopped at.
pub fn run_until_holding(
    graph: JobGraph,
    config: &JobConfig,
    uid: &str,
    min_inflight: usize,
) -> JobResult {
    let (first, manifest) = run_until_inflight(graph, config, min_inflight);
    let manifest = manifest
        .unwrap_or_else(|| panic!("no unaligned checkpoint with in-flight records: {first:?}"));
    let inflight = inflight_by_uid(&manifest);
    assert!(
        inflight.get(uid).copied().unwrap_or(0) > 0,
        "in-flight records on operator {uid}: {inflight:?}"
    );
    first
}
