//! Bounded jobs end in FLIP-147's order: every task finishes (its operators' `finish` runs
//! and its output ends), then the final checkpoint is taken with every operator marked
//! finished and no keyed state, and its completion commits the output. A restore from a
//! snapshot in which tasks had finished does not run them again.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_runtime::functions::Count;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointRetention, Checkpointed, Collector, Job, JobConfig, JobGraph,
    ProcessFunction, RestoreFrom, RuntimeError, Source, FINISHED_STATE,
};
use cairn_storage::fault::FaultyObjectStore;
use cairn_storage::CheckpointStorage;
use common::{check_exactly_once, config, count_sink, read_output, HookedGenerator};

const TOTAL: u64 = 3000;
const KEYS: u64 = 40;
const SEED: u64 = 5;
/// The key that [`EmitsAtFinish`] emits once per subtask when its input ends.
const FINISH_KEY: u64 = 1_000_000;

fn generator() -> GeneratorSource {
    GeneratorSource::new(TOTAL, KEYS, SEED)
}

/// Passes records on and emits [`FINISH_KEY`] in `finish`: output that exists only because
/// the input ended.
#[derive(Clone, Debug, Default)]
struct EmitsAtFinish;

impl Checkpointed for EmitsAtFinish {}

impl ProcessFunction<u64, u64> for EmitsAtFinish {
    fn process(&mut self, input: u64, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(input)
    }
    fn finish(&mut self, out: &mut Collector<'_, u64>) -> cairn_runtime::Result<()> {
        out.collect(FINISH_KEY)
    }
}

/// `source` → `at-finish` → key_by → `count` → `sink` (`key\tcount` lines).
fn graph<S: Source<Out = u64>>(src: S, output: &Path) -> JobGraph {
    source("source", src)
        .process("at-finish", EmitsAtFinish)
        .key_by(|k: &u64| *k)
        .process("count", Count::<u64, u64>::new())
        .sink("sink", count_sink(output))
}

/// How often each key occurs among the records `n` with `keep(n)`, plus [`FINISH_KEY`]
/// `finishes` times.
fn expected(keep: impl Fn(u64) -> bool, finishes: u64) -> BTreeMap<String, u64> {
    let g = generator();
    let mut counts = BTreeMap::new();
    for n in (0..TOTAL).filter(|n| keep(*n)) {
        *counts.entry(g.key_of(n).to_string()).or_insert(0) += 1;
    }
    counts.insert(FINISH_KEY.to_string(), finishes);
    counts
}

fn job_config(dir: &Path, parallelism: u32) -> JobConfig {
    let mut cfg = config(dir, 30);
    cfg.parallelism = parallelism;
    cfg
}

/// Whether each subtask of operator `uid` is marked finished in checkpoint `id`, and
/// whether any of them keeps keyed state.
fn finished_marks(dir: &Path, id: u64, uid: &str) -> (Vec<bool>, bool) {
    let storage = CheckpointStorage::open(&dir.join("checkpoints").display().to_string())
        .expect("open storage");
    let manifest = storage.load(id).expect("manifest");
    let op = manifest.operator(uid).expect("operator");
    let marks = op
        .subtasks
        .iter()
        .map(|s| s.operator_state.iter().any(|o| o.name == FINISHED_STATE))
        .collect();
    (marks, op.subtasks.iter().any(|s| s.keyed.is_some()))
}

fn latest(dir: &Path) -> u64 {
    let storage = CheckpointStorage::open(&dir.join("checkpoints").display().to_string())
        .expect("open storage");
    storage
        .latest_completed()
        .expect("latest")
        .expect("a completed checkpoint")
        .checkpoint_id
}

/// What `finish` emits reaches the keyed operator and the sink before the final checkpoint,
/// which commits it exactly once. A restore from that checkpoint (here at another
/// parallelism) reads nothing, runs no `finish` and adds no output.
#[test]
fn finish_output_is_committed_once_and_the_final_checkpoint_restores_as_finished() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let first = Job::new(graph(generator(), &output), job_config(dir.path(), 2))
        .run()
        .expect("first run");
    assert_eq!(first.records, TOTAL, "{first:?}");
    let want = expected(|_| true, 2);
    check_exactly_once(&want, &read_output(&output));

    let id = latest(dir.path());
    for uid in ["source", "at-finish", "count", "sink"] {
        let (marks, keyed) = finished_marks(dir.path(), id, uid);
        assert_eq!(marks, vec![true, true], "{uid} in the final checkpoint");
        assert!(!keyed, "{uid} keeps keyed state in the final checkpoint");
    }

    let mut cfg = job_config(dir.path(), 3);
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph(generator(), &output), cfg)
        .run()
        .expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert_eq!(second.records, 0, "{second:?}");
    check_exactly_once(&want, &read_output(&output));

    // A new stage upstream of the finished ones would feed them records: refused.
    let extended = source("source", generator())
        .process("at-finish", EmitsAtFinish)
        .rebalance()
        .map("new-map", |k: u64| k)
        .key_by(|k: &u64| *k)
        .process("count", Count::<u64, u64>::new())
        .sink("sink", count_sink(&output));
    let mut cfg = job_config(dir.path(), 2);
    cfg.restore = Some(RestoreFrom::Latest);
    match Job::new(extended, cfg).run() {
        Err(RuntimeError::Restore { reason }) => assert!(
            reason.contains("operator count had finished")
                && reason.contains("operator new-map upstream of it had not (or is new)"),
            "{reason}"
        ),
        other => panic!("a new stage before finished ones should be refused: {other:?}"),
    }
    check_exactly_once(&want, &read_output(&output));
}

/// A checkpoint taken while source subtask 0 had finished and subtask 1 had not marks only
/// subtask 0. It restores at parallelism 2 (subtask 0 stays finished: its `finish` output is
/// not emitted again, and its records are never read), and is refused at parallelism 3,
/// where no new subtask could tell whether it finished.
#[test]
fn a_checkpoint_with_some_subtasks_finished_restores_at_its_parallelism_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    // The generator on subtask 0 ends at once; the other emits its share (throttled).
    let src = HookedGenerator::new(generator()).on_init(|ctx| ctx.subtask.index == 0);
    let mut cfg = job_config(dir.path(), 2);
    cfg.records_per_second = Some(2000);
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(graph(src.clone(), &output), cfg.clone())
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(500));
    handle.cancel();
    let first = handle.wait().expect("first run");
    assert!(first.cancelled && first.records < TOTAL / 2, "{first:?}");
    let id = latest(dir.path());
    assert_eq!(
        finished_marks(dir.path(), id, "source").0,
        vec![true, false]
    );
    assert_eq!(
        finished_marks(dir.path(), id, "at-finish").0,
        vec![true, false]
    );
    assert_eq!(
        finished_marks(dir.path(), id, "count").0,
        vec![false, false]
    );

    let mut rescaled = cfg.clone();
    rescaled.parallelism = 3;
    rescaled.restore = Some(RestoreFrom::Latest);
    match Job::new(graph(src.clone(), &output), rescaled).run() {
        Err(RuntimeError::Restore { reason }) => assert!(
            reason.contains("operator source had finished in 1 of its 2 subtasks"),
            "{reason}"
        ),
        other => panic!("restoring at parallelism 3 should fail: {other:?}"),
    }

    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph(src, &output), cfg)
        .run()
        .expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    // Subtask 0's split (the even records) is never read; each subtask's finish emits once.
    check_exactly_once(&expected(|n| n % 2 == 1, 2), &read_output(&output));
}

/// The sink commits nothing on its own when its input ends: the final checkpoint does. When
/// that checkpoint fails, the job restarts from the latest checkpoint and replays the end of
/// the input, and the output (with what `finish` emitted) is still exactly once.
#[test]
fn a_failed_final_checkpoint_replays_the_end_of_the_input_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("checkpoints");
    std::fs::create_dir_all(&checkpoints).expect("checkpoint dir");
    let store = Arc::new(Mutex::new(None));
    let storage = CheckpointStorage::open_wrapped(&checkpoints.display().to_string(), |inner| {
        let faulty = Arc::new(FaultyObjectStore::new(inner));
        *store.lock().expect("lock") = Some(faulty.clone());
        faulty
    })
    .expect("open storage");
    let store = store.lock().expect("lock").clone().expect("store");
    // The first time the input ends, every storage write starts failing, so the final
    // checkpoint fails; the restored run makes them succeed again.
    let armed = Arc::new(AtomicBool::new(true));
    let on_restore = store.clone();
    let src = HookedGenerator::new(generator())
        .on_init(move |ctx| {
            if ctx.is_restored {
                on_restore.fail_writes_with_probability(0.0, 1);
            }
            false
        })
        .on_end(move || {
            if armed.swap(false, Ordering::SeqCst) {
                store.fail_writes_with_probability(1.0, 1);
            }
        });
    let mut cfg = job_config(dir.path(), 1);
    cfg.checkpoint_storage = Some(storage);
    cfg.records_per_second = Some(10_000);
    let result = Job::new(graph(src, &output), cfg).run().expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert!(result.checkpoints_failed >= 1, "{result:?}");
    check_exactly_once(&expected(|_| true, 1), &read_output(&output));
}
