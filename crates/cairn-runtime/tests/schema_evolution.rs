//! State schema evolution end to end: the word count's keyed operator keeps its count in
//! every state kind ([`AllKindsCount`]: `u64`s); a newer program ([`AllKindsCountV2`])
//! keeps richer types in the same states and declares, with [`EvolvingCodec`], how each old
//! value converts. A run of the old program stops part-way (a savepoint, or a retained
//! checkpoint when cancelled); the new program restores it and runs to the end, once
//! through an injected failure that restores a checkpoint it took itself after the
//! migration. Every record the new program processes checks its states agree with one
//! another and that each converted field holds (a value left in the old encoding, or
//! converted twice, fails the job), and the committed output holds each word's counts
//! 1..n exactly once over both runs.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateId, BincodeCodec, EvolvingCodec,
    KeyedStateBackend, ListStateDescriptor, ListStateId, MapStateDescriptor, MapStateId,
    ReducingStateDescriptor, ReducingStateId, ValueStateDescriptor, ValueStateId,
};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointRetention, Checkpointed, Collector, Job, JobGraph, JobResult,
    KeyedProcessFunction, ProcessFunction, RestoreFrom, RuntimeError, SnapshotMode,
    StateBackendConfig,
};
use common::*;
use serde::{Deserialize, Serialize};

/// The new count: `n` and its square, a field the old program did not keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Count {
    n: u64,
    squared: u64,
}

/// The new map value: the count and whether it is odd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct LastSeen {
    n: u64,
    odd: bool,
}

/// The new list element: a multiple of eight and its index among them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Eighth {
    n: u64,
    index: u64,
}

/// Counts its inputs in a wider accumulator than the old program's `u64`.
struct WideCounting;

impl AggregateFunction<u64, u128, u64> for WideCounting {
    fn create_accumulator(&self) -> u128 {
        0
    }
    fn add(&self, acc: &mut u128, input: u64) {
        *acc += u128::from(input);
    }
    fn result(&self, acc: &u128) -> u64 {
        u64::try_from(*acc).unwrap_or(u64::MAX)
    }
}

fn count(n: u64) -> Count {
    Count { n, squared: n * n }
}

fn last_seen(n: u64) -> LastSeen {
    LastSeen { n, odd: n % 2 == 1 }
}

fn eighth(n: u64) -> Eighth {
    Eighth { n, index: n / 8 }
}

/// The states of [`AllKindsCountV2`].
struct States {
    count: ValueStateId<Count, ()>,
    sum: ReducingStateId<u128, ()>,
    counted: AggregatingStateId<u64, u128, u64, ()>,
    last_by_rest: MapStateId<u64, LastSeen, ()>,
    eighths: ListStateId<Eighth, ()>,
}

/// The newer program's keyed operator: [`AllKindsCount`]'s states under their old names,
/// with new types that read the old `u64`s by migration.
#[derive(Clone, Debug, Default)]
struct AllKindsCountV2;

impl Checkpointed for AllKindsCountV2 {}

impl KeyedProcessFunction for AllKindsCountV2 {
    type Key = String;
    type In = String;
    type Out = (String, u64);
    type State = States;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<States> {
        let old = BincodeCodec::<u64>::new;
        Ok(States {
            count: b.register_value(&ValueStateDescriptor::with_codec(
                "count",
                EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
                    .migrates_from(old(), count),
            ))?,
            sum: b.register_reducing(&ReducingStateDescriptor::with_codec(
                "sum",
                EvolvingCodec::new(BincodeCodec::<u128>::named("Sum", 2))
                    .migrates_from(old(), u128::from),
                |a, c| a + c,
            ))?,
            counted: b.register_aggregating(&AggregatingStateDescriptor::with_codec(
                "counted",
                EvolvingCodec::new(BincodeCodec::<u128>::named("Counted", 2))
                    .migrates_from(old(), u128::from),
                WideCounting,
            ))?,
            last_by_rest: b.register_map(&MapStateDescriptor::with_codecs(
                "last-by-rest",
                old(),
                EvolvingCodec::new(BincodeCodec::<LastSeen>::named("LastSeen", 1))
                    .migrates_from(old(), last_seen),
            ))?,
            eighths: b.register_list(&ListStateDescriptor::with_codec(
                "eighths",
                EvolvingCodec::new(BincodeCodec::<Eighth>::named("Eighth", 1))
                    .migrates_from(old(), eighth),
            ))?,
        })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &States,
        word: &String,
        _record: String,
        b: &mut B,
        _timers: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let stored = b.value_get(s.count, &())?;
        let n = stored.as_ref().map_or(0, |c| c.n) + 1;
        let mut agree = stored.as_ref().is_none_or(|c| *c == count(c.n));
        b.value_update(s.count, &(), count(n))?;
        b.reducing_add(s.sum, &(), 1)?;
        b.aggregating_add(s.counted, &(), 1)?;
        let previous = b.map_get(s.last_by_rest, &(), &((n - 1) % 4))?;
        b.map_put(s.last_by_rest, &(), n % 4, last_seen(n))?;
        let sum = b.reducing_get(s.sum, &())?;
        let counted = b.aggregating_get(s.counted, &())?;
        agree &= sum == Some(u128::from(n)) && counted == Some(n);
        agree &= previous == (n > 1).then(|| last_seen(n - 1));
        if n % 8 == 0 {
            b.list_add(s.eighths, &(), eighth(n))?;
            let list = b.list_get(s.eighths, &())?;
            agree &= list == (1..=n / 8).map(|i| eighth(i * 8)).collect::<Vec<_>>();
        }
        if !agree {
            return Err(RuntimeError::user(
                "count",
                format!(
                    "states disagree or hold an unconverted value for {word:?} at count {n}: \
                     value {stored:?}, reducing {sum:?}, aggregating {counted:?}, map[{}] \
                     {previous:?}",
                    (n - 1) % 4
                ),
            ));
        }
        out.collect((word.clone(), n))
    }
}

/// Fails once, at the first word after a checkpoint of this job completed (so the restart
/// restores a checkpoint the new program wrote, holding the migrated state) and after
/// `after` words.
#[derive(Clone, Debug)]
struct FailAfterCheckpoint {
    after: u64,
    seen: u64,
    checkpointed: bool,
    failed: Arc<AtomicBool>,
}

impl Checkpointed for FailAfterCheckpoint {
    fn notify_checkpoint_complete(&mut self, _checkpoint_id: u64) -> cairn_runtime::Result<()> {
        self.checkpointed = true;
        Ok(())
    }
}

impl ProcessFunction<String, String> for FailAfterCheckpoint {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        self.seen += 1;
        if self.checkpointed && self.seen > self.after && !self.failed.swap(true, Ordering::SeqCst)
        {
            return Err(RuntimeError::user("fail", "injected failure"));
        }
        out.collect(w)
    }
}

/// The word count with the newer program's keyed operator (the same uids as
/// [`wordcount_with`]), failing once after word `fail_at` of a subtask once a checkpoint
/// of this run completed.
fn wordcount_v2(input: &Path, output: &Path, fail_at: u64, parallelism: u32) -> JobGraph {
    source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .process(
            "fail",
            FailAfterCheckpoint {
                after: fail_at,
                seen: 0,
                checkpointed: false,
                failed: Arc::new(AtomicBool::new(false)),
            },
        )
        .key_by(|w: &String| w.clone())
        .process("count", AllKindsCountV2)
        .parallelism(parallelism)
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// How the old program's run ends.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// Stopped with a savepoint (canonical).
    Savepoint,
    /// Cancelled, its checkpoints retained; the newest is restored.
    Checkpoint,
}

/// The old program under `old` (parallelism 2) stops part-way as `stop`; the new one under
/// `new` at parallelism `p` restores it, fails once after checkpointing, and finishes.
fn case(
    old: StateBackendConfig,
    old_mode: SnapshotMode,
    stop: Stop,
    new: StateBackendConfig,
    new_mode: SnapshotMode,
    p: u32,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 41);
    let output = dir.path().join("out");
    let first_dir = dir.path().join("first");

    let mut cfg = config(dir.path(), 30);
    cfg.backend = old;
    cfg.checkpoint.snapshot_mode = old_mode;
    cfg.checkpoint_dir = first_dir.display().to_string();
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    cfg.records_per_second = Some(4000);
    cfg.parallelism = 2;
    let graph = wordcount_with(&input, &output, None, None, true);
    let handle = Job::new(graph, cfg).start().expect("start the old program");
    let restore = match stop {
        Stop::Savepoint => {
            while handle.records_read() < 800 || handle.checkpoints_completed() < 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
            let path = handle
                .stop_with_savepoint(None)
                .expect("stop with savepoint");
            let first = handle.wait().expect("the old program");
            assert!(first.records < 3000, "stopped part-way: {first:?}");
            RestoreFrom::Path(path)
        }
        Stop::Checkpoint => {
            let first =
                cancel_after_checkpoints(handle, 800, &first_dir, 2).expect("the old program");
            assert!(first.cancelled, "{first:?}");
            RestoreFrom::Latest
        }
    };

    let mut cfg = config(dir.path(), 30);
    cfg.backend = new;
    cfg.checkpoint.snapshot_mode = new_mode;
    cfg.checkpoint_dir = first_dir.display().to_string();
    cfg.records_per_second = Some(4000);
    cfg.parallelism = 2;
    cfg.restore = Some(restore);
    let second: JobResult = Job::new(wordcount_v2(&input, &output, 500, p), cfg)
        .run()
        .expect("the new program");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert_eq!(second.restarts, 1, "{second:?}");
    let after_failure = second.restarts_restored_from[0]
        .as_deref()
        .expect("the restart restored a checkpoint");
    assert!(
        after_failure.starts_with("checkpoint") && second.checkpoints_completed >= 1,
        "the restart must restore a checkpoint of the new program: {second:?}"
    );
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn hashmap_savepoint_to_rocksdb_native_checkpoints_at_another_parallelism() {
    case(
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
        Stop::Savepoint,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        3,
    );
}

#[test]
fn rocksdb_native_checkpoint_to_rocksdb() {
    case(
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        Stop::Checkpoint,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Incremental,
        2,
    );
}

#[test]
fn hashmap_incremental_checkpoint_to_hashmap_at_another_parallelism() {
    case(
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
        Stop::Checkpoint,
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
        1,
    );
}

#[test]
fn changelog_checkpoint_to_changelog() {
    case(
        StateBackendConfig::HashMap,
        SnapshotMode::Changelog,
        Stop::Checkpoint,
        StateBackendConfig::rocksdb(),
        SnapshotMode::Changelog,
        2,
    );
}

/// The old program's states read by a program that changed a type without declaring the
/// migration: the job fails at once (a restart cannot cure it), naming the operator, the
/// state and both schemas.
#[test]
fn a_new_type_without_a_migration_fails_the_job_naming_both_schemas() {
    #[derive(Clone, Debug, Default)]
    struct Undeclared;
    impl Checkpointed for Undeclared {}
    impl KeyedProcessFunction for Undeclared {
        type Key = String;
        type In = String;
        type Out = (String, u64);
        type State = ValueStateId<Count, ()>;
        fn open<B: KeyedStateBackend>(
            &mut self,
            b: &mut B,
        ) -> cairn_runtime::Result<ValueStateId<Count, ()>> {
            Ok(b.register_value(&ValueStateDescriptor::with_codec(
                "count",
                BincodeCodec::<Count>::named("Count", 2),
            ))?)
        }
        fn process<B: KeyedStateBackend>(
            &mut self,
            _s: &ValueStateId<Count, ()>,
            _word: &String,
            _record: String,
            _b: &mut B,
            _timers: &mut cairn_runtime::TimerService,
            _out: &mut Collector<'_, (String, u64)>,
        ) -> cairn_runtime::Result<()> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 500, 50, 5);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 30);
    cfg.records_per_second = Some(4000);
    let handle = Job::new(
        wordcount_with(&input, &output, None, None, true),
        cfg.clone(),
    )
    .start()
    .expect("start");
    while handle.records_read() < 100 || handle.checkpoints_completed() < 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("the old program");
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let graph = source("source", FileSource::new(&input))
        .flat_map("tokenize", |line: String| {
            line.split(' ').map(str::to_string).collect::<Vec<_>>()
        })
        .process("fail", FailAt::at(Vec::new()))
        .key_by(|w: &String| w.clone())
        .process("count", Undeclared)
        .sink("sink", TwoPhaseFileSink::new(&output, format_line));
    let started = std::time::Instant::now();
    let err = Job::new(graph, cfg).run().unwrap_err().to_string();
    for part in ["count", "u64@v1", "Count@v2"] {
        assert!(err.contains(part), "{part} in {err}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "no restarts: {err}"
    );
}
