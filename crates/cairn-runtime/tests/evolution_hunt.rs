//! A bug hunt on state schema evolution in jobs (df5d81e). The old program is the word
//! count ([`Count`]: `ValueState<u64>` named `count`); newer programs keep a richer type in
//! the same state. The hunt found two bugs, fixed since: a value RocksDB's migration
//! refused restarted the job instead of failing it at once, and so did a registration in
//! `process` (lazily) that could not read the state. A savepoint whose state some subtasks
//! only migrated restores at its own parallelism only (pinned here).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{
    BincodeCodec, EvolvingCodec, KeyedStateBackend, ValueStateDescriptor, ValueStateId,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointRetention, Checkpointed, Collector, Job, JobConfig, JobGraph,
    KeyedProcessFunction, RestartStrategy, RestoreFrom, RuntimeError, SnapshotMode,
    StateBackendConfig,
};
use common::*;
use serde::{Deserialize, Serialize};

/// The newer program's count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct NewCount {
    n: u64,
    squared: u64,
}

fn new_count(n: u64) -> NewCount {
    NewCount { n, squared: n * n }
}

/// The newer program's descriptor: reads the old `u64` by migration, counting conversions.
fn count_v2(conversions: Arc<AtomicU64>) -> ValueStateDescriptor<NewCount> {
    ValueStateDescriptor::with_codec(
        "count",
        EvolvingCodec::new(BincodeCodec::<NewCount>::named("NewCount", 2)).migrates_from(
            BincodeCodec::<u64>::new(),
            move |n: u64| {
                conversions.fetch_add(1, Ordering::SeqCst);
                new_count(n)
            },
        ),
    )
}

/// The word count with a newer keyed operator `f` (the same uids as [`wordcount`]).
fn wordcount_of<F>(input: &Path, output: &Path, f: F, source_uid: &str) -> JobGraph
where
    F: KeyedProcessFunction<Key = String, In = String, Out = (String, u64)>,
{
    wordcount_failing(input, output, f, source_uid, FailAt::at(Vec::new()))
}

/// [`wordcount_of`] failing as `fail` says.
fn wordcount_failing<F>(
    input: &Path,
    output: &Path,
    f: F,
    source_uid: &str,
    fail: FailAt,
) -> JobGraph
where
    F: KeyedProcessFunction<Key = String, In = String, Out = (String, u64)>,
{
    source(source_uid, FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .process("fail", fail)
        .key_by(|w: &String| w.clone())
        .process("count", f)
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// A job config with quick restarts (three, 20 ms apart), checkpointing every 30 ms.
fn cfg(dir: &Path, parallelism: u32) -> JobConfig {
    let mut c = config(dir, 30);
    c.parallelism = parallelism;
    c.records_per_second = Some(4000);
    c.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(20));
    c
}

/// Runs the old program at `parallelism` and stops it with a savepoint once it has read
/// some lines and checkpointed; returns the savepoint's path and the input.
fn old_savepoint(dir: &Path, parallelism: u32) -> (String, PathBuf) {
    let (input, _) = write_input(dir, 2000, 40, 7);
    let handle = Job::new(
        wordcount(&input, &dir.join("out-old"), None, None),
        cfg(dir, parallelism),
    )
    .start()
    .expect("start the old program");
    wait_until(|| handle.records_read() >= 200 && handle.checkpoints_completed() >= 1);
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    handle.wait().expect("the old program");
    (savepoint, input)
}

fn wait_until(mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not ready after 20 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// A conversion that refuses a value fails the job at once, under every backend
// ---------------------------------------------------------------------------------------

/// Registers `count` in `open` with a conversion that refuses every value, counting the
/// refusals over every attempt of the job.
#[derive(Clone, Debug)]
struct Refusing {
    refusals: Arc<AtomicU64>,
}

impl Checkpointed for Refusing {}

impl KeyedProcessFunction for Refusing {
    type Key = String;
    type In = String;
    type Out = (String, u64);
    type State = ValueStateId<NewCount, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        let refusals = self.refusals.clone();
        Ok(b.register_value(&ValueStateDescriptor::with_codec(
            "count",
            EvolvingCodec::new(BincodeCodec::<NewCount>::named("NewCount", 2)).try_migrates_from(
                BincodeCodec::<u64>::new(),
                move |n: u64| {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    Err(format!("count {n} is out of range"))
                },
            ),
        ))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        _s: &Self::State,
        _w: &String,
        _r: String,
        _b: &mut B,
        _t: &mut cairn_runtime::TimerService,
        _out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        Ok(())
    }
}

/// The old program's savepoint restored by [`Refusing`] under `backend` / `mode`: the job
/// must fail at once (a `Restore` error naming the operator, the state, the key group and
/// the conversion's message; one refusal, no restart).
fn a_refused_conversion_fails_the_job_at_once(backend: StateBackendConfig, mode: SnapshotMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (savepoint, input) = old_savepoint(dir.path(), 1);
    let refusals = Arc::new(AtomicU64::new(0));
    let mut c = cfg(dir.path(), 1);
    c.backend = backend;
    c.checkpoint.snapshot_mode = mode;
    c.restore = Some(RestoreFrom::Path(savepoint));
    let f = Refusing {
        refusals: refusals.clone(),
    };
    let err = Job::new(
        wordcount_of(&input, &dir.path().join("out"), f, "source"),
        c,
    )
    .run()
    .expect_err("the conversion refuses every value");
    let text = err.to_string();
    for part in [
        "count",
        "out of range",
        "key_group=",
        "u64@v1",
        "NewCount@v2",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(
        matches!(err, RuntimeError::Restore { .. }),
        "a restore error, which no restart cures: {err:?}"
    );
    assert_eq!(
        refusals.load(Ordering::SeqCst),
        1,
        "the job restarted and tried the conversion again: {text}"
    );
}

#[test]
fn a_refused_conversion_fails_the_job_at_once_hashmap() {
    a_refused_conversion_fails_the_job_at_once(StateBackendConfig::HashMap, SnapshotMode::Full);
}

#[test]
fn a_refused_conversion_fails_the_job_at_once_changelog_hashmap() {
    a_refused_conversion_fails_the_job_at_once(
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
    );
}

#[test]
fn a_refused_conversion_fails_the_job_at_once_rocksdb() {
    a_refused_conversion_fails_the_job_at_once(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
    );
}

#[test]
fn a_refused_conversion_fails_the_job_at_once_changelog_rocksdb() {
    a_refused_conversion_fails_the_job_at_once(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
    );
}

// ---------------------------------------------------------------------------------------
// States registered lazily, in `process`
// ---------------------------------------------------------------------------------------

/// Registers `count` at its first record (as a Flink function calling `getState` in
/// `processElement`), with `descriptor`; counts the records of every attempt.
#[derive(Clone)]
struct Lazy {
    descriptor: Arc<ValueStateDescriptor<NewCount>>,
    records: Arc<AtomicU64>,
}

impl std::fmt::Debug for Lazy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lazy")
    }
}

impl Checkpointed for Lazy {}

impl KeyedProcessFunction for Lazy {
    type Key = String;
    type In = String;
    type Out = (String, u64);
    type State = ();

    fn open<B: KeyedStateBackend>(&mut self, _b: &mut B) -> cairn_runtime::Result<()> {
        Ok(())
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        _s: &(),
        word: &String,
        _r: String,
        b: &mut B,
        _t: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.records.fetch_add(1, Ordering::SeqCst);
        let id = b.register_value(&*self.descriptor)?;
        let n = b.value_get(id, &())?.map_or(0, |c| c.n) + 1;
        b.value_update(id, &(), new_count(n))?;
        out.collect((word.clone(), n))
    }
}

/// A program that registers the state lazily with a codec that does not read the old
/// schema: the registration fails as it does in `open` (README: "In a job, such an error
/// fails the job at once; a restart cannot cure it").
#[test]
fn a_lazy_registration_that_cannot_read_the_state_fails_the_job_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (savepoint, input) = old_savepoint(dir.path(), 1);
    let records = Arc::new(AtomicU64::new(0));
    let f = Lazy {
        descriptor: Arc::new(ValueStateDescriptor::with_codec(
            "count",
            BincodeCodec::<NewCount>::named("NewCount", 2),
        )),
        records: records.clone(),
    };
    let mut c = cfg(dir.path(), 1);
    c.restore = Some(RestoreFrom::Path(savepoint));
    let err = Job::new(
        wordcount_of(&input, &dir.path().join("out"), f, "source"),
        c,
    )
    .run()
    .expect_err("the codec does not read u64");
    let text = err.to_string();
    assert!(
        text.contains("u64@v1") && text.contains("NewCount@v2"),
        "{text}"
    );
    assert!(
        matches!(err, RuntimeError::Restore { .. }),
        "a restore error, which no restart cures: {err:?}"
    );
    assert_eq!(records.load(Ordering::SeqCst), 1, "restarted: {text}");
}

/// Run 2 of a lazily registering program: only one word, so only the subtask that owns it
/// registers (and migrates) `count`; stopped with a savepoint.
fn lazily_migrated_savepoint(dir: &Path) -> (String, Arc<AtomicU64>) {
    let (savepoint, _) = old_savepoint(dir, 2);
    let solo = dir.join("solo.txt");
    std::fs::write(&solo, "solo\n".repeat(4000)).expect("write input");
    let conversions = Arc::new(AtomicU64::new(0));
    let f = Lazy {
        descriptor: Arc::new(count_v2(conversions.clone())),
        records: Arc::new(AtomicU64::new(0)),
    };
    let mut c = cfg(dir, 2);
    c.restore = Some(RestoreFrom::Path(savepoint));
    // The old source's position is not needed: this run reads another file.
    c.allow_non_restored_state = true;
    let handle = Job::new(wordcount_of(&solo, &dir.join("out-2"), f, "source-2"), c)
        .start()
        .expect("start run 2");
    wait_until(|| handle.records_read() >= 300 && handle.checkpoints_completed() >= 1);
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    handle.wait().expect("run 2");
    assert!(
        conversions.load(Ordering::SeqCst) > 0,
        "one subtask migrated"
    );
    (savepoint, conversions)
}

/// Run 3 restores run 2's savepoint at parallelism `p`.
fn run_three(dir: &Path, savepoint: String, p: u32) -> cairn_runtime::Result<u64> {
    let (input, _) = write_input(&dir.join("3"), 50, 40, 9);
    let conversions = Arc::new(AtomicU64::new(0));
    let f = Lazy {
        descriptor: Arc::new(count_v2(conversions.clone())),
        records: Arc::new(AtomicU64::new(0)),
    };
    let mut c = cfg(dir, p);
    c.restore = Some(RestoreFrom::Path(savepoint));
    c.allow_non_restored_state = true;
    c.checkpoint_dir = dir.join("checkpoints-3").display().to_string();
    Job::new(wordcount_of(&input, &dir.join("out-3"), f, "source-3"), c)
        .run()
        .map(|r| r.records)
}

/// Pinned: rescaling such a savepoint fails at once with a restore error naming the
/// operator and the state; it never restores wrong state. At the same parallelism it
/// restores.
#[test]
fn a_savepoint_migrated_in_some_subtasks_is_refused_at_another_parallelism_not_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("3")).expect("mkdir");
    let (savepoint, _) = lazily_migrated_savepoint(dir.path());
    run_three(dir.path(), savepoint.clone(), 2).expect("the same parallelism restores");
    let started = Instant::now();
    match run_three(dir.path(), savepoint, 1) {
        Ok(_) => {}
        Err(err) => {
            let text = err.to_string();
            assert!(
                text.contains("count") && text.contains("disagree"),
                "{text}"
            );
            assert!(matches!(err, RuntimeError::Restore { .. }), "{err:?}");
            assert!(started.elapsed() < Duration::from_secs(5), "no restarts");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The old program and the new program's retained checkpoint
// ---------------------------------------------------------------------------------------

/// Migrates `count` in `open` and counts on.
#[derive(Clone)]
struct CountV2 {
    conversions: Arc<AtomicU64>,
}

impl std::fmt::Debug for CountV2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CountV2")
    }
}

impl Checkpointed for CountV2 {}

impl KeyedProcessFunction for CountV2 {
    type Key = String;
    type In = String;
    type Out = (String, u64);
    type State = ValueStateId<NewCount, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        Ok(b.register_value(&count_v2(self.conversions.clone()))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &Self::State,
        word: &String,
        _r: String,
        b: &mut B,
        _t: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let stored = b.value_get(*s, &())?;
        if let Some(c) = &stored {
            assert_eq!(*c, new_count(c.n), "a value left unconverted");
        }
        let n = stored.map_or(0, |c| c.n) + 1;
        b.value_update(*s, &(), new_count(n))?;
        out.collect((word.clone(), n))
    }
}

/// The new program (under `mode`) restores the old savepoint and is cancelled with its
/// checkpoints retained; the old program restored from the newest of them fails at once,
/// naming the operator, the state and both schemas.
fn the_old_program_refuses_the_new_programs_checkpoint(
    backend: StateBackendConfig,
    mode: SnapshotMode,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (savepoint, input) = old_savepoint(dir.path(), 2);
    let checkpoints = dir.path().join("checkpoints-2");
    let mut c = cfg(dir.path(), 2);
    c.backend = backend.clone();
    c.checkpoint.snapshot_mode = mode;
    c.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    c.checkpoint_dir = checkpoints.display().to_string();
    c.restore = Some(RestoreFrom::Path(savepoint));
    let f = CountV2 {
        conversions: Arc::new(AtomicU64::new(0)),
    };
    let handle = Job::new(
        wordcount_of(&input, &dir.path().join("out-2"), f, "source"),
        c,
    )
    .start()
    .expect("start the new program");
    let second = cancel_after_checkpoints(handle, 200, &checkpoints, 2).expect("the new program");
    assert!(second.cancelled, "{second:?}");

    let mut c = cfg(dir.path(), 2);
    c.backend = backend;
    c.checkpoint.snapshot_mode = mode;
    c.checkpoint_dir = checkpoints.display().to_string();
    c.restore = Some(RestoreFrom::Latest);
    let started = Instant::now();
    let err = Job::new(wordcount(&input, &dir.path().join("out-3"), None, None), c)
        .run()
        .expect_err("the old program cannot read the new schema");
    let text = err.to_string();
    for part in ["count", "NewCount@v2", "u64@v1"] {
        assert!(text.contains(part), "{part} in {text}");
    }
    assert!(matches!(err, RuntimeError::Restore { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "no restarts");
}

#[test]
fn the_old_program_refuses_the_new_programs_incremental_checkpoint() {
    the_old_program_refuses_the_new_programs_checkpoint(
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
    );
}

#[test]
fn the_old_program_refuses_the_new_programs_changelog_checkpoint() {
    the_old_program_refuses_the_new_programs_checkpoint(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
    );
}

// ---------------------------------------------------------------------------------------
// Claim mode
// ---------------------------------------------------------------------------------------

/// The old program's native RocksDB checkpoint, claimed by the new program (Flink's claim
/// mode), which migrates it, checkpoints natively, fails once and restores: the count goes
/// on exactly once over both programs, every value converted once.
#[test]
fn a_claimed_native_checkpoint_migrates_and_survives_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 41);
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("first");
    let rocks = || {
        let mut c = cfg(dir.path(), 2);
        c.backend = StateBackendConfig::rocksdb();
        c.checkpoint.snapshot_mode = SnapshotMode::Incremental;
        c.checkpoint_dir = checkpoints.display().to_string();
        c
    };
    let mut c = rocks();
    c.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(wordcount(&input, &output, None, None), c)
        .start()
        .expect("start the old program");
    let first = cancel_after_checkpoints(handle, 800, &checkpoints, 2).expect("the old program");
    assert!(first.cancelled, "{first:?}");

    let mut c = rocks();
    c.restore = Some(RestoreFrom::Latest);
    c.restore_mode = cairn_runtime::RestoreMode::Claim;
    let conversions = Arc::new(AtomicU64::new(0));
    let f = CountV2 {
        conversions: conversions.clone(),
    };
    let second = Job::new(
        wordcount_failing(&input, &output, f, "source", FailAt::at(vec![4000])),
        c,
    )
    .run()
    .expect("the new program");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert_eq!(second.restarts, 1, "{second:?}");
    check_exactly_once(&expected, &read_output(&output));
    assert!(conversions.load(Ordering::SeqCst) > 0);
}

// ---------------------------------------------------------------------------------------
// A migration in the middle of a run
// ---------------------------------------------------------------------------------------

/// The old program stops with a retained checkpoint; the new program registers (and
/// migrates) `count` lazily, at each subtask's first record, while checkpoints run, fails
/// once after a checkpoint of its own and restores it: the count goes on exactly once.
fn a_lazy_migration_in_the_middle_of_a_run(backend: StateBackendConfig, mode: SnapshotMode) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 43);
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("first");
    let setup = || {
        let mut c = cfg(dir.path(), 2);
        c.backend = backend.clone();
        c.checkpoint.snapshot_mode = mode;
        c.checkpoint_dir = checkpoints.display().to_string();
        c
    };
    let mut c = setup();
    c.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(wordcount(&input, &output, None, None), c)
        .start()
        .expect("start the old program");
    let first = cancel_after_checkpoints(handle, 800, &checkpoints, 2).expect("the old program");
    assert!(first.cancelled, "{first:?}");

    let mut c = setup();
    c.restore = Some(RestoreFrom::Latest);
    let f = Lazy {
        descriptor: Arc::new(count_v2(Arc::new(AtomicU64::new(0)))),
        records: Arc::new(AtomicU64::new(0)),
    };
    let second = Job::new(
        wordcount_failing(&input, &output, f, "source", FailAt::at(vec![4000])),
        c,
    )
    .run()
    .expect("the new program");
    assert_eq!(second.restarts, 1, "{second:?}");
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn a_lazy_migration_in_the_middle_of_a_run_hashmap() {
    a_lazy_migration_in_the_middle_of_a_run(StateBackendConfig::HashMap, SnapshotMode::Incremental);
}

#[test]
fn a_lazy_migration_in_the_middle_of_a_run_changelog_hashmap() {
    a_lazy_migration_in_the_middle_of_a_run(StateBackendConfig::HashMap, SnapshotMode::Changelog);
}

#[test]
fn a_lazy_migration_in_the_middle_of_a_run_changelog_rocksdb() {
    a_lazy_migration_in_the_middle_of_a_run(StateBackendConfig::rocksdb(), SnapshotMode::Changelog);
}
