//! Randomized runs of the word count: every case draws a configuration from its seed (backend,
//! snapshot mode, aligned or unaligned or at-least-once, parallelism of the job and of the
//! keyed operator, checkpoint interval, concurrency, pause and timeout, channel sizes,
//! changelog thresholds), injects task failures, fails and slows checkpoint writes at
//! random, and may interrupt
//! the run (stop-with-savepoint, or cancel keeping the checkpoints) and finish it in a second
//! job: from the savepoint under any backend, snapshot mode and parallelism, or from the
//! latest checkpoint at another parallelism. The committed output must be exactly once (at
//! least once in at-least-once mode) whatever was drawn.
//!
//! Half the cases count in every state kind at once (value, reducing, aggregating, map and
//! list), each checked against the others on every record.
//!
//! Each case also draws the job's shape ([`Shape`]): the word count of one file, or the
//! lines split over two files read by two sources and merged by a union, by a connection
//! (co-map, or a keyed co-function counting), or words counted by a keyed function
//! connected with a broadcast stream of rules, or the words through a partitioning
//! (shuffle, rescale, global, custom) and an asynchronous lookup. Every shape counts the
//! same words, so the
//! expected output is the same. In-flight records of a broadcast connection restore only at
//! its old parallelism: when the checkpoint a second job restores holds some, a restore at
//! another parallelism must be refused (and the case restores again at the old one).
//!
//! Some cases also take a savepoint while the first job runs on (`trigger_savepoint`). The job
//! must stay exactly once, and a third job restored from that savepoint into an output of its
//! own must emit, for every word, the counts from the savepoint's up to the word's total: a
//! source position ahead of the state would lose counts, one behind would repeat them.
//!
//! CI runs a few cases; a soak runs many:
//! `CAIRN_SOAK_CASES=300 cargo test -p cairn-runtime --test soak -- --nocapture`, and one
//! case again with `CAIRN_SOAK_FIRST=<seed> CAIRN_SOAK_CASES=1`. Each case prints its seed and
//! configuration before it runs. With `CAIRN_SOAK_S3=1` the checkpoints and savepoints go to
//! a bucket of the local S3 API server (`bash scripts/moto.sh start`) instead of local
//! directories.

mod common;
#[path = "../../state-dump/tests/support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::KeyedStateBackend;
use cairn_runtime::asyncio::BlockingCalls;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, BroadcastState, BroadcastStateDescriptor, ChangelogOptions, CheckpointRetention,
    Checkpointed, CheckpointingMode, Collector, InitContext, Job, JobConfig, JobGraph, JobHandle,
    JobResult, KeyedBroadcastProcessFunction, KeyedCoProcessFunction, KeyedProcessFunction,
    RestoreFrom, RestoreMode, RuntimeError, SnapshotContext, SnapshotMode, StateBackendConfig,
    Stream, TimerService,
};
use cairn_storage::fault::FaultyObjectStore;
use cairn_storage::CheckpointStorage;
use common::unaligned::inflight_by_uid;
use common::*;

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Where a case keeps checkpoints and savepoints: a local directory, or a prefix in a
/// bucket of the local S3 API server (`CAIRN_SOAK_S3=1`).
#[derive(Clone, Debug)]
enum Place {
    Local(PathBuf),
    S3 {
        server: moto::Moto,
        bucket: String,
        prefix: String,
    },
}

impl Place {
    /// The case's root: under `dir`, or its own prefix in the soak's bucket.
    fn root(dir: &Path, seed: u64) -> Place {
        if std::env::var("CAIRN_SOAK_S3").is_ok_and(|v| v == "1") {
            static BUCKET: std::sync::OnceLock<(moto::Moto, String)> = std::sync::OnceLock::new();
            let (server, bucket) = BUCKET.get_or_init(|| {
                let server = moto::moto("soak")
                    .expect("CAIRN_SOAK_S3=1 needs the S3 API server: bash scripts/moto.sh start");
                let bucket = server.bucket("soak");
                (server, bucket)
            });
            Place::S3 {
                server: server.clone(),
                bucket: bucket.clone(),
                prefix: format!("case-{seed}"),
            }
        } else {
            Place::Local(dir.to_path_buf())
        }
    }

    fn url(&self) -> String {
        match self {
            Place::Local(path) => path.display().to_string(),
            Place::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    fn join(&self, name: &str) -> Place {
        match self {
            Place::Local(path) => Place::Local(path.join(name)),
            Place::S3 {
                server,
                bucket,
                prefix,
            } => Place::S3 {
                server: server.clone(),
                bucket: bucket.clone(),
                prefix: format!("{prefix}/{name}"),
            },
        }
    }

    /// The keys under an S3 place.
    fn keys(server: &moto::Moto, bucket: &str, prefix: &str) -> Vec<String> {
        let under = format!("{prefix}/");
        server
            .keys(bucket)
            .into_iter()
            .filter(|k| k.starts_with(&under))
            .collect()
    }

    fn exists(&self) -> bool {
        match self {
            Place::Local(path) => path.exists(),
            Place::S3 {
                server,
                bucket,
                prefix,
            } => !Self::keys(server, bucket, prefix).is_empty(),
        }
    }

    /// Deletes everything under the place.
    fn remove(&self) {
        match self {
            Place::Local(path) => std::fs::remove_dir_all(path).expect("delete a directory"),
            Place::S3 {
                server,
                bucket,
                prefix,
            } => {
                for key in Self::keys(server, bucket, prefix) {
                    let (status, body) = server.request("DELETE", &format!("/{bucket}/{key}"));
                    assert!(
                        status == 204 || status == 200,
                        "delete {key}: {status} {body}"
                    );
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    HashMap,
    RocksDb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guarantee {
    Aligned,
    /// Unaligned, switching from aligned after this many milliseconds (0: from the start).
    Unaligned(u64),
    AtLeastOnce,
}

#[derive(Clone, Copy, Debug)]
enum Interruption {
    None,
    /// Stop with a savepoint once the sources have read this share (percent) of the lines.
    Savepoint(u64),
    /// Cancel, keeping the checkpoints, once the sources have read this share of the lines.
    Cancel(u64),
}

/// What the job reads and how it merges its inputs. Every shape counts every word of the
/// case's input once in operator `count` (a `ValueState` named `count`, or every state kind
/// with `all_kinds`), so the expected output is the word count's whatever the shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The word count: `source` → `tokenize` → `fail` → key_by → `count` → `sink`.
    Single,
    /// The input's even and odd lines in two files, read by sources `source` and `source-b`
    /// and tokenized (`tokenize`, `tokenize-b`); their union → `fail` → key_by → `count`.
    Union,
    /// The two files of [`Shape::Union`], the second's words as `(word, length)` (`length`).
    /// Not `keyed`: `co-map` back to words → `fail` → key_by → `count`. `keyed`: each input
    /// through a fail of its own (`fail`, `fail-b`, one counter) before the connection,
    /// keyed by word on both sides, counted by a co-function ([`CoCount`]).
    Connect { keyed: bool },
    /// The words (`source` → `tokenize` → `fail`) keyed by word and connected with the
    /// broadcast stream of a file of `rules` rules (`source-rules` → `parse-rules`): the
    /// function ([`WithRules`]) counts words and keeps the rules in broadcast state without
    /// emitting for them.
    Broadcast { rules: u64 },
    /// The words (`source` → `tokenize` → `fail`) through a partitioning and an
    /// asynchronous lookup (`lookup`, a blocking identity on a pool, ordered or not), then
    /// key_by → `count`.
    Routed { route: Route, ordered: bool },
}

/// The partitioning of [`Shape::Routed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// None asked for: the lookup heads its stage behind `rescale()`.
    Chained,
    Shuffle,
    Rescale,
    Global,
    /// `partition_custom` by the word's length.
    Custom,
}

/// What one phase (job) of a case runs with.
#[derive(Clone, Copy, Debug)]
struct Phase {
    backend: Backend,
    snapshot: SnapshotMode,
    parallelism: u32,
    count_parallelism: Option<u32>,
}

#[derive(Clone, Debug)]
struct Case {
    seed: u64,
    shape: Shape,
    lines: usize,
    vocabulary: usize,
    max_parallelism: u32,
    guarantee: Guarantee,
    interval_ms: u64,
    max_concurrent: usize,
    min_pause_ms: u64,
    batch_size: usize,
    channel_capacity: usize,
    /// Changelog: materialize when this many bytes were logged (and at this interval).
    changelog_min_log_bytes: u64,
    changelog_interval_ms: u64,
    /// Probability (percent) that a checkpoint storage write fails.
    write_failure_percent: u64,
    /// Latency of every checkpoint storage operation.
    storage_latency_ms: u64,
    /// Checkpoints not complete after this long are aborted.
    checkpoint_timeout_ms: u64,
    /// Task failures at these words processed (over every run, replays included).
    failures: Vec<u64>,
    interruption: Interruption,
    first: Phase,
    second: Phase,
    /// A savepoint the first job takes and runs on, once the sources have read this share
    /// (percent) of the lines; a third job restores it under `third`.
    midrun_savepoint: Option<u64>,
    third: Phase,
    /// Task failures of the third job, at these words it processed.
    third_failures: Vec<u64>,
    /// Count in every state kind at once ([`AllKindsCount`]), not in a value state only.
    all_kinds: bool,
    /// After a cancel, the second job restores the first's latest checkpoint by its path and
    /// checkpoints into a directory of its own; the first's is deleted once the second has
    /// completed a checkpoint (Flink's no-claim mode allows that).
    second_elsewhere: bool,
    /// The second job restores in claim mode: it takes over the first's savepoint, or after
    /// a cancel its latest checkpoint (when it checkpoints into the same directory).
    claim: bool,
}

fn phase(rng: &mut Rng) -> Phase {
    let parallelism = 1 + rng.below(3) as u32;
    Phase {
        backend: rng.pick(&[Backend::HashMap, Backend::RocksDb]),
        snapshot: rng.pick(&[
            SnapshotMode::Full,
            SnapshotMode::Incremental,
            SnapshotMode::Changelog,
        ]),
        parallelism,
        count_parallelism: rng.chance(30).then(|| 1 + rng.below(3) as u32),
    }
}

fn draw(seed: u64) -> Case {
    let mut rng = Rng::new(seed);
    let lines = 1500 + rng.below(2500) as usize;
    let words = lines as u64 * 7 / 2;
    let first = phase(&mut rng);
    let interruption = match rng.below(3) {
        0 => Interruption::None,
        1 => Interruption::Savepoint(20 + rng.below(60)),
        _ => Interruption::Cancel(20 + rng.below(60)),
    };
    let mut second = phase(&mut rng);
    if matches!(interruption, Interruption::Cancel(_)) {
        // A checkpoint restores under the backend and snapshot mode that wrote it.
        second.backend = first.backend;
        second.snapshot = first.snapshot;
    }
    let failures = (0..rng.below(4))
        .map(|_| 1 + rng.below(words * 3 / 2))
        .collect();
    let mut case = Case {
        seed,
        shape: Shape::Single,
        lines,
        vocabulary: rng.pick(&[20, 300, 3000]),
        max_parallelism: rng.pick(&[3, 16, 128]),
        guarantee: match rng.below(5) {
            0 | 1 => Guarantee::Aligned,
            2 => Guarantee::Unaligned(0),
            3 => Guarantee::Unaligned(rng.pick(&[1, 5, 20])),
            _ => Guarantee::AtLeastOnce,
        },
        interval_ms: rng.pick(&[5, 10, 20, 40]),
        max_concurrent: 1 + rng.below(3) as usize,
        min_pause_ms: rng.pick(&[0, 0, 5]),
        batch_size: rng.pick(&[1, 7, 64]),
        channel_capacity: rng.pick(&[1, 2, 8]),
        changelog_min_log_bytes: rng.pick(&[0, 4 << 10, 1 << 20]),
        changelog_interval_ms: rng.pick(&[10, 50, 1000]),
        write_failure_percent: rng.pick(&[0, 0, 2, 10]),
        storage_latency_ms: rng.pick(&[0, 0, 0, 1, 5]),
        checkpoint_timeout_ms: rng.pick(&[600_000, 600_000, 200, 30]),
        failures,
        interruption,
        first,
        second,
        midrun_savepoint: None,
        third: first,
        third_failures: Vec::new(),
        all_kinds: false,
        second_elsewhere: false,
        claim: false,
    };
    // Drawn last, so that the seeds of earlier sessions still draw the same case otherwise.
    let before = match interruption {
        Interruption::None => 90,
        Interruption::Savepoint(p) | Interruption::Cancel(p) => p,
    };
    if rng.chance(40) {
        case.midrun_savepoint = Some(5 + rng.below(before - 5));
        case.third = phase(&mut rng);
        case.third_failures = (0..rng.below(2))
            .map(|_| 1 + rng.below(words / 2))
            .collect();
    }
    case.all_kinds = rng.chance(50);
    case.second_elsewhere = rng.chance(40);
    case.claim = rng.chance(40);
    // Drawn last too: a seed that draws the single input runs the case it ran before.
    case.shape = match rng.below(10) {
        0..=2 => Shape::Single,
        3 => Shape::Routed {
            route: rng.pick(&[
                Route::Chained,
                Route::Shuffle,
                Route::Rescale,
                Route::Global,
                Route::Custom,
            ]),
            ordered: rng.chance(50),
        },
        4 | 5 => Shape::Union,
        6 | 7 => Shape::Connect {
            keyed: rng.chance(50),
        },
        _ => Shape::Broadcast {
            rules: rng.pick(&[3, 40, 400]),
        },
    };
    case
}

/// The files a case's jobs read: the input, its even and odd lines, and rules.
struct Inputs {
    words: PathBuf,
    even: PathBuf,
    odd: PathBuf,
    rules: PathBuf,
}

/// Writes the case's input (and, as its shape needs, the input split by lines and the
/// rules); returns the files and how often each word occurs.
fn write_inputs(dir: &Path, case: &Case) -> (Inputs, BTreeMap<String, u64>) {
    let (words, expected) = write_input(dir, case.lines, case.vocabulary, case.seed);
    let inputs = Inputs {
        words,
        even: dir.join("input-even.txt"),
        odd: dir.join("input-odd.txt"),
        rules: dir.join("rules.txt"),
    };
    match case.shape {
        Shape::Single | Shape::Routed { .. } => {}
        Shape::Union | Shape::Connect { .. } => {
            let text = std::fs::read_to_string(&inputs.words).expect("read the input");
            let (mut even, mut odd) = (String::new(), String::new());
            for (i, line) in text.lines().enumerate() {
                let half = if i % 2 == 0 { &mut even } else { &mut odd };
                half.push_str(line);
                half.push('\n');
            }
            std::fs::write(&inputs.even, even).expect("write the even lines");
            std::fs::write(&inputs.odd, odd).expect("write the odd lines");
        }
        Shape::Broadcast { rules } => {
            let text: String = (0..rules).map(|i| format!("r{i} {i}\n")).collect();
            std::fs::write(&inputs.rules, text).expect("write the rules");
        }
    }
    (inputs, expected)
}

/// The words of the lines of `path`, read by source `uid` and tokenized by `tokenize`.
fn words(uid: &str, tokenize: &str, path: &Path) -> Stream<String> {
    source(uid, FileSource::new(path)).flat_map(tokenize, |line: String| {
        line.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
}

/// Words as `(word, length)`: another record type for the second input of a connection.
fn with_length(words: Stream<String>) -> Stream<(String, u64)> {
    words.map("length", |w: String| {
        let n = w.len() as u64;
        (w, n)
    })
}

/// The job of `case`'s shape, failing with `fail`, its operator `count` at
/// `count_parallelism` (the job's when `None`).
fn job_graph(
    case: &Case,
    inputs: &Inputs,
    output: &Path,
    fail: &FailAt,
    count_parallelism: Option<u32>,
) -> JobGraph {
    let counted = match case.shape {
        Shape::Single => {
            return wordcount_with(
                &inputs.words,
                output,
                Some(fail.clone()),
                count_parallelism,
                case.all_kinds,
            )
        }
        _ if case.all_kinds => counted(case.shape, inputs, fail, AllKindsCount),
        _ => counted(case.shape, inputs, fail, Count::new()),
    };
    let counted = match count_parallelism {
        Some(p) => counted.parallelism(p),
        None => counted,
    };
    counted.sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// The counts of the words of a shape other than [`Shape::Single`] (whose job is
/// [`wordcount_with`]'s), counted by `count` (or a function of two inputs that counts with
/// it) in operator `count`.
fn counted<F>(shape: Shape, inputs: &Inputs, fail: &FailAt, count: F) -> Stream<(String, u64)>
where
    F: KeyedProcessFunction<Key = String, In = String, Out = (String, u64)>,
{
    let word = |w: &String| w.clone();
    let (even, odd) = (&inputs.even, &inputs.odd);
    match shape {
        Shape::Single => unreachable!("the single input's job is `wordcount_with`"),
        Shape::Union => words("source", "tokenize", even)
            .union(words("source-b", "tokenize-b", odd))
            .process("fail", fail.clone())
            .key_by(word)
            .process("count", count),
        Shape::Connect { keyed: false } => words("source", "tokenize", even)
            .connect(with_length(words("source-b", "tokenize-b", odd)))
            .map("co-map", |w: String| w, |(w, _): (String, u64)| w)
            .process("fail", fail.clone())
            .key_by(word)
            .process("count", count),
        Shape::Connect { keyed: true } => {
            let a = words("source", "tokenize", even).process("fail", fail.clone());
            let b = words("source-b", "tokenize-b", odd).process("fail-b", fail.clone());
            a.connect(with_length(b))
                .key_by(word, |(w, _): &(String, u64)| w.clone())
                .process("count", CoCount(count))
        }
        Shape::Routed { route, ordered } => {
            let failing = words("source", "tokenize", &inputs.words).process("fail", fail.clone());
            let routed = match route {
                Route::Chained => failing,
                Route::Shuffle => failing.shuffle(),
                Route::Rescale => failing.rescale(),
                Route::Global => failing.global(),
                Route::Custom => {
                    failing.partition_custom(|n: &usize, p| (*n as u32) % p, |w: &String| w.len())
                }
            };
            // Every 16th word slowly, so that checkpoints find calls in flight.
            let lookup = BlockingCalls::new(2, |w: String| {
                if w.len() % 16 == 3 {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Ok(vec![w])
            });
            let timeout = Duration::from_secs(30);
            let looked_up = if ordered {
                routed.ordered_wait("lookup", lookup, timeout, 16)
            } else {
                routed.unordered_wait("lookup", lookup, timeout, 16)
            };
            looked_up.key_by(word).process("count", count)
        }
        Shape::Broadcast { rules } => {
            let parsed = source("source-rules", FileSource::new(&inputs.rules)).map(
                "parse-rules",
                |line: String| {
                    let (name, i) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                    (name.to_string(), i.parse().unwrap_or(u64::MAX))
                },
            );
            words("source", "tokenize", &inputs.words)
                .process("fail", fail.clone())
                .key_by(word)
                .connect(parsed.broadcast())
                .process("count", WithRules { count, rules })
        }
    }
}

/// Checkpoint hooks passed on to the wrapped counting function.
macro_rules! checkpointed_by_count {
    ($ty:ident) => {
        impl<F: Checkpointed> Checkpointed for $ty<F> {
            fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
                self.count_mut().initialize_state(ctx)
            }
            fn snapshot_state(
                &mut self,
                ctx: &mut SnapshotContext<'_>,
            ) -> cairn_runtime::Result<()> {
                self.count_mut().snapshot_state(ctx)
            }
            fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
                self.count_mut().notify_checkpoint_complete(id)
            }
            fn notify_checkpoint_aborted(&mut self, id: u64) -> cairn_runtime::Result<()> {
                self.count_mut().notify_checkpoint_aborted(id)
            }
        }
    };
}

/// Counts the words of both inputs of a keyed connection with one counting function, in
/// the same state: the second input's records are `(word, length)`, checked.
#[derive(Clone, Debug)]
struct CoCount<F>(F);

impl<F> CoCount<F> {
    fn count_mut(&mut self) -> &mut F {
        &mut self.0
    }
}

checkpointed_by_count!(CoCount);

impl<F> KeyedCoProcessFunction for CoCount<F>
where
    F: KeyedProcessFunction<Key = String, In = String, Out = (String, u64)>,
{
    type Key = String;
    type In1 = String;
    type In2 = (String, u64);
    type Out = (String, u64);
    type State = F::State;

    fn open<S: KeyedStateBackend>(&mut self, backend: &mut S) -> cairn_runtime::Result<F::State> {
        self.0.open(backend)
    }

    fn process1<S: KeyedStateBackend>(
        &mut self,
        state: &F::State,
        key: &String,
        word: String,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        self.0.process(state, key, word, backend, timers, out)
    }

    fn process2<S: KeyedStateBackend>(
        &mut self,
        state: &F::State,
        key: &String,
        (word, length): (String, u64),
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        if word != *key || length != word.len() as u64 {
            return Err(RuntimeError::user(
                "count",
                format!("record ({word:?}, {length}) of the second input under key {key:?}"),
            ));
        }
        self.0.process(state, key, word, backend, timers, out)
    }
}

/// The broadcast state of [`WithRules`]: rule `r<i>` → `i`.
fn rules_state() -> BroadcastStateDescriptor<String, u64> {
    BroadcastStateDescriptor::new("rules")
}

/// Counts words with `count` and keeps the broadcast rules (`rules` of them, `r<i> <i>`) in
/// broadcast state, emitting nothing for them. A broadcast state holding more rules or
/// other ones (restored, or as each word sees it) fails the operator.
#[derive(Clone, Debug)]
struct WithRules<F> {
    count: F,
    rules: u64,
}

impl<F> WithRules<F> {
    fn count_mut(&mut self) -> &mut F {
        &mut self.count
    }

    fn check(&self, broadcast: &BroadcastState, when: &str) -> cairn_runtime::Result<()> {
        let held = broadcast.get(&rules_state())?;
        let bad = held
            .iter()
            .find(|(r, i)| **i >= self.rules || **r != format!("r{i}"));
        if held.len() as u64 > self.rules || bad.is_some() {
            return Err(RuntimeError::user(
                "count",
                format!(
                    "{when}: the broadcast state holds {} rules of {}, among them {bad:?}",
                    held.len(),
                    self.rules
                ),
            ));
        }
        Ok(())
    }
}

checkpointed_by_count!(WithRules);

impl<F> KeyedBroadcastProcessFunction for WithRules<F>
where
    F: KeyedProcessFunction<Key = String, In = String, Out = (String, u64)>,
{
    type Key = String;
    type In = String;
    type Broadcast = (String, u64);
    type Out = (String, u64);
    type State = F::State;

    fn open<S: KeyedStateBackend>(
        &mut self,
        backend: &mut S,
        broadcast: &mut BroadcastState,
    ) -> cairn_runtime::Result<F::State> {
        broadcast.register(&rules_state())?;
        self.check(broadcast, "restored")?;
        self.count.open(backend)
    }

    fn process<S: KeyedStateBackend>(
        &mut self,
        state: &F::State,
        key: &String,
        word: String,
        broadcast: &BroadcastState,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        if broadcast.get(&rules_state())?.len() as u64 > self.rules {
            self.check(broadcast, "at a word")?;
        }
        self.count.process(state, key, word, backend, timers, out)
    }

    fn process_broadcast<S: KeyedStateBackend>(
        &mut self,
        _state: &Self::State,
        (rule, i): (String, u64),
        broadcast: &mut BroadcastState,
        _keyed: &mut cairn_runtime::KeyedStates<'_, S, String>,
        _out: &mut Collector<'_, (String, u64)>,
    ) -> cairn_runtime::Result<()> {
        let held = broadcast.get_mut(&rules_state())?;
        if i >= self.rules || rule != format!("r{i}") {
            return Err(RuntimeError::user("count", format!("rule {rule:?} {i}")));
        }
        held.insert(rule, i);
        if held.len() as u64 > self.rules {
            self.check(broadcast, "at a rule")?;
        }
        Ok(())
    }
}

/// The job configuration of one phase of `case`, checkpointing into `checkpoints` and
/// writing savepoints under `root`.
fn job_config(
    case: &Case,
    phase: &Phase,
    (dir, root, checkpoints): (&Path, &Place, &Place),
    faults_seed: u64,
) -> JobConfig {
    let mut cfg = config(dir, case.interval_ms);
    cfg.checkpoint_dir = checkpoints.url();
    cfg.savepoint_dir = Some(root.join("savepoints").url());
    let percent = case.write_failure_percent;
    let latency = case.storage_latency_ms;
    let storage = CheckpointStorage::open_wrapped(&checkpoints.url(), |inner| {
        let f = Arc::new(FaultyObjectStore::new(inner));
        if percent > 0 {
            f.fail_writes_with_probability(percent as f64 / 100.0, faults_seed);
        }
        if latency > 0 {
            f.set_latency(Some(Duration::from_millis(latency)));
        }
        f
    })
    .expect("open checkpoint storage");
    cfg.checkpoint_storage = Some(storage);
    cfg.backend = match phase.backend {
        Backend::HashMap => StateBackendConfig::HashMap,
        Backend::RocksDb => StateBackendConfig::RocksDb {
            local_dir: dir.join("rocksdb"),
            options: Default::default(),
        },
    };
    cfg.parallelism = phase.parallelism;
    cfg.max_parallelism = case.max_parallelism;
    cfg.batch_size = case.batch_size;
    cfg.channel_capacity = case.channel_capacity;
    cfg.records_per_second = Some(8_000);
    cfg.restart.max_restarts = 20;
    cfg.restart.delay = Duration::from_millis(5);
    let c = &mut cfg.checkpoint;
    c.snapshot_mode = phase.snapshot;
    c.max_concurrent = case.max_concurrent;
    c.min_pause = Duration::from_millis(case.min_pause_ms);
    c.timeout = Duration::from_millis(case.checkpoint_timeout_ms);
    c.tolerable_failures = 1_000_000;
    c.num_retained = 2;
    c.retention = CheckpointRetention::RetainOnCancellation;
    match case.guarantee {
        Guarantee::Aligned => {}
        Guarantee::Unaligned(after_ms) => {
            c.unaligned = true;
            c.aligned_timeout = Duration::from_millis(after_ms);
        }
        Guarantee::AtLeastOnce => c.mode = CheckpointingMode::AtLeastOnce,
    }
    c.changelog = ChangelogOptions {
        materialization_interval: Some(Duration::from_millis(case.changelog_interval_ms)),
        min_log_bytes: case.changelog_min_log_bytes,
        log_to_state_ratio: 0.5,
        segment_bytes: 2 << 10,
        ..ChangelogOptions::default()
    };
    cfg
}

/// What the first job left.
struct First {
    result: JobResult,
    /// Where the second job restores from, when the first was interrupted.
    restore: Option<RestoreFrom>,
    /// The savepoint the first job took and ran on.
    midrun_savepoint: Option<String>,
}

/// Waits until the job's sources have read `percent` of the case's lines (or a minute),
/// not counting the rules of [`Shape::Broadcast`] (few, read early).
fn wait_for_share(handle: &JobHandle, case: &Case, percent: u64) {
    let rules = match case.shape {
        Shape::Broadcast { rules } => rules,
        _ => 0,
    };
    let threshold = case.lines as u64 * percent / 100 + rules;
    let deadline = Instant::now() + Duration::from_secs(60);
    while handle.records_read() < threshold && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the first job, taking a savepoint on the way and interrupting it as the case says.
fn run_first(case: &Case, cfg: JobConfig, inputs: &Inputs, output: &Path, fail: &FailAt) -> First {
    let graph = job_graph(case, inputs, output, fail, case.first.count_parallelism);
    let handle = Job::new(graph, cfg).start().expect("start the first job");
    let midrun_savepoint = case.midrun_savepoint.and_then(|percent| {
        wait_for_share(&handle, case, percent);
        // Declined when the job is restarting or a write fails; the case goes on without.
        handle
            .trigger_savepoint(None)
            .inspect_err(|e| eprintln!("  savepoint declined: {e}"))
            .ok()
    });
    let (result, restore) = interrupt(case, handle);
    First {
        result,
        restore,
        midrun_savepoint,
    }
}

/// Interrupts the first job as the case says, or lets it run to its end; returns its result
/// and, when it was interrupted, where the second job restores from.
fn interrupt(case: &Case, handle: JobHandle) -> (JobResult, Option<RestoreFrom>) {
    let (percent, savepoint) = match case.interruption {
        Interruption::None => return (handle.wait().expect("first job"), None),
        Interruption::Savepoint(p) => (p, true),
        Interruption::Cancel(p) => (p, false),
    };
    wait_for_share(&handle, case, percent);
    if savepoint {
        match handle.stop_with_savepoint(None) {
            Ok(path) => {
                let result = handle.wait().expect("first job after its savepoint");
                assert_eq!(
                    result.savepoint.as_deref(),
                    Some(path.as_str()),
                    "{result:?}"
                );
                (result, Some(RestoreFrom::Path(path)))
            }
            // The job may have ended (or be restarting) when asked; then it runs to its end.
            Err(e) => {
                eprintln!("  stop-with-savepoint declined: {e}");
                (handle.wait().expect("first job"), None)
            }
        }
    } else {
        handle.cancel();
        let result = handle.wait().expect("first job after cancel");
        let next = result.cancelled.then_some(RestoreFrom::Latest);
        (result, next)
    }
}

/// Where a job restores from, checkpoints into, and what it may delete once its own first
/// checkpoint has completed.
struct Start {
    restore: RestoreFrom,
    checkpoints: Place,
    delete_after_first_checkpoint: Option<Place>,
    restore_mode: RestoreMode,
    /// The parallelism of operator `count` in the snapshot restored, when the snapshot holds
    /// in-flight records of a broadcast connection on it ([`Shape::Broadcast`], unaligned):
    /// a restore at another parallelism must be refused.
    broadcast_inflight: Option<u32>,
}

/// Runs `job`; deletes `delete` once a checkpoint in `checkpoints` has completed (from then
/// on the job no longer needs the snapshot it was restored from).
fn run_deleting(
    job: Job,
    checkpoints: &Place,
    delete: Option<&Place>,
) -> cairn_runtime::Result<JobResult> {
    let handle = job.start()?;
    let Some(delete) = delete else {
        return handle.wait();
    };
    let storage =
        CheckpointStorage::open(&checkpoints.url()).expect("open the job's checkpoint directory");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deleter = {
        let (done, delete) = (done.clone(), delete.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if storage.completed_checkpoints().is_ok_and(|c| !c.is_empty()) {
                    delete.remove();
                    eprintln!("  deleted {}", delete.url());
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    let result = handle.wait();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let deleted = deleter.join().expect("deleter");
    if let Ok(r) = &result {
        assert!(
            deleted || r.checkpoints_completed == 0,
            "a checkpoint completed, nothing was deleted: {r:?}"
        );
    }
    result
}

/// Runs a job started as `start` says under `phase` to its end, restoring again at the
/// parallelism a refusal names.
fn finish(
    case: &Case,
    mut phase: Phase,
    start: &Start,
    (dir, root): (&Path, &Place),
    (inputs, output): (&Inputs, &Path),
    fail: &FailAt,
    faults_seed: u64,
) -> JobResult {
    let restore = &start.restore;
    loop {
        let mut cfg = job_config(case, &phase, (dir, root, &start.checkpoints), faults_seed);
        cfg.restore = Some(restore.clone());
        cfg.restore_mode = start.restore_mode;
        let graph = job_graph(case, inputs, output, fail, phase.count_parallelism);
        let job = Job::new(graph, cfg);
        // The parallelism of the broadcast connection's stage, whose first operator is count.
        let count_parallelism = phase.count_parallelism.unwrap_or(phase.parallelism);
        let refused = start
            .broadcast_inflight
            .filter(|old| *old != count_parallelism);
        match run_deleting(
            job,
            &start.checkpoints,
            start.delete_after_first_checkpoint.as_ref(),
        ) {
            Ok(r) => {
                assert!(
                    refused.is_none(),
                    "in-flight broadcast records of {refused:?} subtasks restored at parallelism {count_parallelism}: {r:?}"
                );
                return r;
            }
            // A snapshot in which some subtasks of an operator had finished restores only at
            // its parallelism (as in Flink), before anything runs; so do in-flight records of
            // a broadcast connection.
            Err(e) => match demanded_parallelism(&e.to_string()).inspect(|(uid, p)| {
                let broadcast = e
                    .to_string()
                    .contains("reads a broadcast stream and holds in-flight records");
                if broadcast {
                    assert_eq!(
                        (uid.as_str(), Some(*p)),
                        ("count", refused),
                        "a restore of {restore:?} at parallelism {count_parallelism} refused: {e}"
                    );
                }
                eprintln!(
                    "  restoring again at parallelism {p} for operator {uid}{}",
                    if broadcast {
                        " (in-flight broadcast records)"
                    } else {
                        ""
                    }
                )
            }) {
                Some((uid, p)) if uid == "count" && phase.count_parallelism != Some(p) => {
                    phase.count_parallelism = Some(p)
                }
                Some((_, p)) if phase.parallelism != p => phase.parallelism = p,
                _ => panic!("job restored from {restore:?}: {e}"),
            },
        }
    }
}

fn run(case: &Case) {
    eprintln!("case {case:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let (inputs, expected) = write_inputs(dir.path(), case);
    let output = dir.path().join("out");
    let fail = FailAt::at(case.failures.clone());
    let root = Place::root(dir.path(), case.seed);
    let checkpoints = root.join("checkpoints");
    let cfg = job_config(
        case,
        &case.first,
        (dir.path(), &root, &checkpoints),
        case.seed,
    );
    let first = run_first(case, cfg, &inputs, &output, &fail);
    let r = &first.result;
    eprintln!(
        "  first job: {} records, {} checkpoints completed, {} failed, {} restarts, cancelled {}, savepoints {:?} and {:?}",
        r.records,
        r.checkpoints_completed,
        r.checkpoints_failed,
        r.restarts,
        r.cancelled,
        first.midrun_savepoint,
        r.savepoint
    );
    for savepoint in [&first.midrun_savepoint, &r.savepoint]
        .into_iter()
        .flatten()
    {
        verify(savepoint);
    }
    if let Some(restore) = &first.restore {
        let io = (&inputs, output.as_path());
        let seed = case.seed ^ 0xFF;
        let broadcast_inflight = match restore {
            RestoreFrom::Latest => broadcast_inflight(case, &checkpoints),
            _ => None,
        };
        let start = match restore {
            RestoreFrom::Latest if case.second_elsewhere => {
                let storage = CheckpointStorage::open(&checkpoints.url())
                    .expect("open the first job's checkpoint directory");
                let newest = storage
                    .completed_checkpoints()
                    .expect("list")
                    .into_iter()
                    .max();
                match newest {
                    Some(id) => Start {
                        restore: RestoreFrom::Path(checkpoints.join(&format!("chk-{id}")).url()),
                        checkpoints: root.join("checkpoints-second"),
                        delete_after_first_checkpoint: Some(checkpoints.clone()),
                        restore_mode: RestoreMode::NoClaim,
                        broadcast_inflight,
                    },
                    None => Start {
                        restore: restore.clone(),
                        checkpoints: checkpoints.clone(),
                        delete_after_first_checkpoint: None,
                        restore_mode: RestoreMode::NoClaim,
                        broadcast_inflight,
                    },
                }
            }
            _ => Start {
                restore: restore.clone(),
                checkpoints: checkpoints.clone(),
                delete_after_first_checkpoint: None,
                restore_mode: if case.claim {
                    RestoreMode::Claim
                } else {
                    RestoreMode::NoClaim
                },
                broadcast_inflight,
            },
        };
        let second = finish(
            case,
            case.second,
            &start,
            (dir.path(), &root),
            io,
            &fail,
            seed,
        );
        eprintln!(
            "  second job: restored from {:?}, {} records, {} checkpoints completed, {} restarts",
            second.restored_from, second.records, second.checkpoints_completed, second.restarts
        );
    }
    let exactly_once = !matches!(case.guarantee, Guarantee::AtLeastOnce);
    let out = read_output(&output);
    if exactly_once {
        check_exactly_once(&expected, &out);
    } else {
        check_at_least_once(&expected, &out);
    }
    if let Some(path) = first.midrun_savepoint {
        let output = dir.path().join("out-midrun");
        let fail = FailAt::at(case.third_failures.clone());
        let start = Start {
            restore: RestoreFrom::Path(path),
            checkpoints: checkpoints.clone(),
            delete_after_first_checkpoint: None,
            restore_mode: RestoreMode::NoClaim,
            // A savepoint holds no in-flight records.
            broadcast_inflight: None,
        };
        let io = (&inputs, output.as_path());
        let seed = case.seed ^ 0xF0F0;
        let third = finish(
            case,
            case.third,
            &start,
            (dir.path(), &root),
            io,
            &fail,
            seed,
        );
        eprintln!(
            "  third job: restored from {:?}, {} records, {} checkpoints completed, {} restarts",
            third.restored_from, third.records, third.checkpoints_completed, third.restarts
        );
        check_continues(&expected, &read_output(&output), exactly_once);
    }
    for checkpoints in [checkpoints, root.join("checkpoints-second")] {
        if checkpoints.exists() {
            check_left(case, &checkpoints);
        }
    }
}

/// For [`Shape::Broadcast`]: the parallelism of operator `count` in the newest checkpoint
/// completed in `checkpoints` (which the second job restores after a cancel, by its path
/// or as the latest), when that checkpoint holds in-flight records on it.
fn broadcast_inflight(case: &Case, checkpoints: &Place) -> Option<u32> {
    if !matches!(case.shape, Shape::Broadcast { .. }) {
        return None;
    }
    let storage = CheckpointStorage::open(&checkpoints.url())
        .expect("open the first job's checkpoint directory");
    let manifest = storage.latest_completed().expect("the newest checkpoint")?;
    inflight_by_uid(&manifest).get("count")?;
    let count = manifest.operators.iter().find(|op| op.uid == "count")?;
    eprintln!(
        "  checkpoint {} holds in-flight broadcast records of {} subtasks",
        manifest.checkpoint_id,
        count.subtasks.len()
    );
    Some(count.subtasks.len() as u32)
}

/// Checks the snapshot at `path` as `state-dump verify` does: every file it references is
/// there with its size and CRC, every block of its state files and every changelog record
/// decodes, and its native RocksDB files open and read through.
fn verify(url: &str) {
    let snapshot = state_dump::open_snapshot(url).unwrap_or_else(|e| panic!("open {url}: {e}"));
    let report = state_dump::verify(&snapshot, &state_dump::NoProgress)
        .unwrap_or_else(|e| panic!("verify {url}: {e}"));
    assert!(report.is_clean(), "{}", report.render());
}

/// What the case's jobs left in `checkpoints`, once every one has ended: each completed
/// checkpoint verifies ([`verify`]), and,
/// when no storage write failed on purpose (a failed delete legitimately leaves a file
/// behind), no file that no checkpoint references and no incomplete checkpoint directory.
fn check_left(case: &Case, checkpoints: &Place) {
    let storage = CheckpointStorage::open(&checkpoints.url())
        .expect("open a checkpoint directory the case left");
    let completed = storage.completed_checkpoints().expect("list");
    for &id in &completed {
        verify(&checkpoints.join(&format!("chk-{id}")).url());
    }
    if case.write_failure_percent == 0 {
        let plan = storage.gc_plan(usize::MAX).expect("gc plan");
        assert!(
            plan.shared_deleted.is_empty()
                && plan.incomplete.is_empty()
                && plan.kept_incomplete.is_empty()
                && plan.corrupt.is_empty(),
            "the jobs left files no checkpoint references in {}: {plan:?}",
            checkpoints.url()
        );
    }
    eprintln!(
        "  {}: checkpoints {completed:?} read back",
        checkpoints.url()
    );
}

#[test]
fn random_configurations_keep_the_output_exactly_once() {
    let first = env_u64("CAIRN_SOAK_FIRST", 1);
    let cases = env_u64("CAIRN_SOAK_CASES", 6);
    for seed in first..first + cases {
        run(&draw(seed));
    }
}
