//! A hunt for bugs in asynchronous I/O (`Stream::unordered_wait`, `Stream::ordered_wait`)
//! and the partitionings (`shuffle`, `rescale`, `global`, `forward`, `partition_custom`),
//! in the combinations the feature tests leave out: savepoints and drains with calls in
//! flight (ordered calls held behind a blocked head), unaligned checkpoints holding records
//! before and after the asynchronous operator restored at another parallelism, the
//! function's own operator state, cancellation and failover while the operator waits,
//! completions racing their timeouts, panics in `async_invoke` and in a blocking pool,
//! asynchronous operators after unions, broadcast connections and side outputs, feeding
//! event-time windows, behind each partitioning at another parallelism, and keyed state
//! fed through `global` and `partition_custom` restored rescaled. Every test checks exact,
//! model-computed results.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{OperatorListStateDescriptor, OperatorListStateId};
use cairn_format::Manifest;
use cairn_runtime::asyncio::{AsyncFunction, BlockingCalls, ResultFuture, ASYNC_INFLIGHT_STATE};
use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::{DiscardSink, TwoPhaseFileSink};
use cairn_runtime::sources::{FileSource, GeneratorSource};
use cairn_runtime::{
    source, BroadcastProcessFunction, BroadcastState, Checkpointed, Collector, InitContext, Job,
    JobConfig, JobGraph, OutputTag, ProcessFunction, RestartStrategy, RestoreFrom, RuntimeError,
    SnapshotContext, SnapshotMode, StateBackendConfig, Stream, TumblingEventTimeWindows,
    WatermarkStrategy,
};
use common::unaligned::{inflight_by_uid, slow, unaligned_retained_config, FailEvery, Gen};
use common::*;

// --- Helpers ---

/// A partitioning of a stream (`Stream::global`, ...).
type Partitioning<T> = fn(Stream<T>) -> Stream<T>;

/// The subtask a record (a key) belongs in at a parallelism, by its route.
type Home = fn(u64, u32) -> u32;

/// The calls in flight (records of `cairn.async.inflight`) a manifest holds for `uid`.
fn async_calls(m: &Manifest, uid: &str) -> usize {
    m.operators
        .iter()
        .filter(|o| o.uid == uid)
        .flat_map(|o| &o.subtasks)
        .flat_map(|s| &s.operator_state)
        .filter(|s| s.name == ASYNC_INFLIGHT_STATE)
        .map(|s| s.elements.len())
        .sum()
}

/// The words of `input`: file source `source`, split by `tokenize`.
fn words(input: &Path) -> Stream<String> {
    source("source", FileSource::new(input)).flat_map("tokenize", |line: String| {
        line.split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    })
}

/// Looks each word up (answers the word itself) after `delay`, on 4 threads.
fn word_lookup(delay: Duration) -> BlockingCalls<String, String> {
    BlockingCalls::new(4, move |w: String| {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        Ok(vec![w])
    })
}

/// A pseudo-random delay of 0 to 2 ms for `v`, so that calls complete out of order.
fn jitter(v: u64) -> Duration {
    Duration::from_micros((v.wrapping_mul(0x9E37_79B9) >> 7) % 2_000)
}

/// Counts words by key (operator `count`) into a two-phase file sink.
fn count_words(s: Stream<String>, output: &Path) -> JobGraph {
    s.key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

/// Waits (up to 20 s) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Completes each call when the next one starts in its subtask, so that one call is
/// always in flight; the last one by its timeout, whose answer is the same record (and the
/// late completion of a call that timed out is dropped by the operator).
struct Deferred {
    held: Option<(u64, ResultFuture<u64>)>,
}

impl Clone for Deferred {
    fn clone(&self) -> Self {
        Self { held: None }
    }
}

impl Checkpointed for Deferred {}

impl AsyncFunction<u64, u64> for Deferred {
    fn async_invoke(&mut self, k: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        if let Some((previous, f)) = self.held.replace((k, r)) {
            f.complete(vec![previous]);
        }
        Ok(())
    }

    fn timeout(&mut self, k: &u64) -> Option<Vec<u64>> {
        Some(vec![*k])
    }
}

// --- A savepoint while ordered calls wait behind a blocked head ---

/// A gate the head call waits at.
type Gate = Arc<(Mutex<bool>, Condvar)>;

fn open(gate: &Gate) {
    *gate.0.lock().expect("lock") = true;
    gate.1.notify_all();
}

/// Answers every call at once, inside `async_invoke`, except that of `head`, which a
/// thread answers once `gate` is open. Counts its calls in operator state
/// (`invocations`, one element per subtask) and logs what each subtask restored.
#[derive(Clone)]
struct Gated {
    head: u64,
    gate: Gate,
    invoked: Arc<AtomicU64>,
    restored: Arc<Mutex<Vec<(u32, u64)>>>,
    count: u64,
    state: Option<OperatorListStateId<u64>>,
}

impl Checkpointed for Gated {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<u64>::split("invocations"))?;
        self.count = ctx.operator_state.list(id)?.iter().sum();
        if ctx.is_restored {
            self.restored
                .lock()
                .expect("lock")
                .push((ctx.subtask.index, self.count));
        }
        self.state = Some(id);
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> cairn_runtime::Result<()> {
        if let Some(id) = self.state {
            *ctx.operator_state.list(id)? = vec![self.count];
        }
        Ok(())
    }
}

impl AsyncFunction<u64, u64> for Gated {
    fn async_invoke(&mut self, k: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        self.invoked.fetch_add(1, Ordering::SeqCst);
        self.count += 1;
        if k == self.head && !*self.gate.0.lock().expect("lock") {
            let gate = self.gate.clone();
            std::thread::spawn(move || {
                let (lock, cv) = &*gate;
                let guard = lock.lock().expect("lock");
                let _unused = cv
                    .wait_timeout_while(guard, Duration::from_secs(20), |open| !*open)
                    .expect("lock");
                r.complete(vec![k]);
            });
        } else {
            r.complete(vec![k]);
        }
        Ok(())
    }
}

/// A stop-with-savepoint while every call of an ordered operator waits behind its head
/// (whose answer is blocked, the others answered): the savepoint holds all of them, 40
/// records, and the function's own count of its calls. Restored at parallelism 1 with a
/// capacity of 7 (below the 40 restored calls), every result comes once, in the order of
/// the records; restored at parallelism 3 under RocksDB with a keyed count after it, every
/// result once; each time the function's count comes back whole (40).
#[test]
fn a_savepoint_behind_a_blocked_ordered_head_holds_every_call_and_restores_them_once() {
    const TOTAL: u64 = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let proto = GeneratorSource::new(TOTAL, u64::MAX, 3);
    let records: Vec<u64> = (0..TOTAL).map(|n| proto.key_of(n)).collect();
    let gate: Gate = Arc::new((Mutex::new(false), Condvar::new()));
    let gated = |invoked: &Arc<AtomicU64>, restored: &Arc<Mutex<Vec<(u32, u64)>>>| Gated {
        head: records[0],
        gate: gate.clone(),
        invoked: invoked.clone(),
        restored: restored.clone(),
        count: 0,
        state: None,
    };
    let graph =
        |src: GeneratorSource, f: Gated, capacity: usize, out: &Arc<Mutex<Vec<(u64, u64)>>>| {
            source("source", src)
                .parallelism(1)
                .ordered_wait("lookup", f, Duration::from_secs(30), capacity)
                .key_by(|k: &u64| *k)
                .process("count", cairn_runtime::functions::Count::<u64, u64>::new())
                .sink("sink", Collect(out.clone()))
        };
    let mut cfg = config(dir.path(), 20);
    cfg.checkpoint.interval = None;
    cfg.restart = RestartStrategy::no_restarts();

    let invoked = Arc::new(AtomicU64::new(0));
    let restored = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::new(Mutex::new(Vec::new()));
    let handle = Job::new(
        graph(
            proto.clone().idle_at_end(),
            gated(&invoked, &restored),
            100,
            &out,
        ),
        cfg.clone(),
    )
    .start()
    .expect("start");
    wait_until("every call to start", || {
        invoked.load(Ordering::SeqCst) == TOTAL
    });
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    open(&gate);
    assert!(
        out.lock().expect("lock").is_empty(),
        "nothing passes the blocked head: {first:?}"
    );
    let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
    assert_eq!(
        async_calls(&manifest, "lookup"),
        TOTAL as usize,
        "every call is in the savepoint"
    );

    for (p, backend, capacity) in [
        (1, StateBackendConfig::HashMap, 7),
        (3, StateBackendConfig::rocksdb(), 100),
    ] {
        let invoked = Arc::new(AtomicU64::new(0));
        let restored = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut cfg = cfg.clone();
        cfg.parallelism = p;
        cfg.backend = backend;
        cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
        let g = graph(proto.clone(), gated(&invoked, &restored), capacity, &out);
        let second = Job::new(g, cfg).run().expect("restored run");
        assert_eq!(second.records, 0, "p={p}: the source had read everything");
        assert_eq!(
            invoked.load(Ordering::SeqCst),
            TOTAL,
            "p={p}: each restored call made again once"
        );
        let got = std::mem::take(&mut *out.lock().expect("lock"));
        assert!(got.iter().all(|(_, n)| *n == 1), "p={p}: {got:?}");
        let mut keys: Vec<u64> = got.into_iter().map(|(k, _)| k).collect();
        let mut want = records.clone();
        if p > 1 {
            keys.sort_unstable();
            want.sort_unstable();
        }
        assert_eq!(keys, want, "p={p}: every result once (in order at p=1)");
        let restored = restored.lock().expect("lock").clone();
        assert_eq!(
            restored.iter().map(|(_, n)| n).sum::<u64>(),
            TOTAL,
            "p={p}: the function's count restored: {restored:?}"
        );
    }
}

// --- Stop and drain with calls in flight ---

/// source → tokenize → lookup (asynchronous, `delay` per call, capacity 20) → key_by →
/// count → two-phase sink.
fn async_wordcount(input: &Path, output: &Path, delay: Duration, ordered: bool) -> JobGraph {
    let timeout = Duration::from_secs(10);
    let looked = if ordered {
        words(input).ordered_wait("lookup", word_lookup(delay), timeout, 20)
    } else {
        words(input).unordered_wait("lookup", word_lookup(delay), timeout, 20)
    };
    count_words(looked, output)
}

/// A drain (every call waited for) and a stop (the calls in flight kept in the savepoint,
/// also of a job configured unaligned, whose savepoint is still aligned) of a
/// backpressured job whose lookups are slower than its input; restored under RocksDB at
/// another parallelism (more, and fewer), every word is counted exactly once in all.
#[test]
fn stop_or_drain_with_calls_in_flight_then_restore_elsewhere_is_exactly_once() {
    let cases = [
        (true, false, 2, 3, false),
        (false, true, 3, 1, false),
        (false, false, 2, 3, true),
    ];
    for (drain, ordered, p1, p2, unaligned) in cases {
        let what = format!("drain={drain} ordered={ordered} unaligned={unaligned}");
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = write_input(dir.path(), 3_000, 150, 21);
        let lines = 3_000;
        let output = dir.path().join("out");
        let mut cfg = config(dir.path(), 30);
        cfg.parallelism = p1;
        cfg.records_per_second = Some(3_000);
        cfg.checkpoint.unaligned = unaligned;
        let graph = async_wordcount(&input, &output, Duration::from_millis(1), ordered);
        let handle = Job::new(graph, cfg).start().expect("start");
        wait_for_commit(&output);
        let savepoint = if drain {
            handle.stop_with_savepoint_and_drain(None)
        } else {
            handle.stop_with_savepoint(None)
        }
        .expect("stop");
        let first = handle.wait().expect("first run");
        assert!(
            first.records < lines,
            "{what}: stopped before the end: {first:?}"
        );
        let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
        let held = async_calls(&manifest, "lookup");
        if drain {
            assert_eq!(held, 0, "{what}: a drain waits for every call");
        } else {
            assert!(held > 0, "{what}: the stop kept calls in flight");
        }
        let inflight = inflight_by_uid(&manifest);
        assert!(
            inflight.is_empty(),
            "{what}: an aligned savepoint: {inflight:?}"
        );

        let mut cfg = config(dir.path(), 30);
        cfg.parallelism = p2;
        cfg.backend = StateBackendConfig::rocksdb();
        cfg.checkpoint.unaligned = unaligned;
        cfg.restore = Some(RestoreFrom::Path(savepoint));
        let graph = async_wordcount(&input, &output, Duration::ZERO, ordered);
        let second = Job::new(graph, cfg).run().expect("restored run");
        assert_eq!(first.records + second.records, lines, "{what}");
        check_exactly_once(&expected, &read_output(&output));
    }
}

// --- Unaligned checkpoints around the asynchronous operator ---

/// generator → lookup (asynchronous, `call` per call on 4 threads) → key_by → count → slow
/// → sink: the keyed stage is slowest, so records wait in the channels after the lookup and
/// (backpressured) before it.
fn around_async(
    g: Gen,
    output: &Path,
    call: Duration,
    slow_by: Duration,
    capacity: usize,
) -> JobGraph {
    let f = BlockingCalls::new(4, move |k: u64| {
        if !call.is_zero() {
            std::thread::sleep(call);
        }
        Ok(vec![k])
    });
    let counted = source("gen", g.source())
        .unordered_wait("lookup", f, Duration::from_secs(30), capacity)
        .key_by(|k: &u64| *k)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new());
    slow(counted, "slow", slow_by).sink("sink", count_sink(output))
}

/// An unaligned checkpoint holding records in the lookup's input channels, calls in
/// flight in the lookup, and records in the keyed count's input channels; restored at
/// another parallelism (`p1` → `p2`, the capacity `c1` → `c2`: fewer calls allowed than
/// were restored when merging down), every key counted exactly once.
fn unaligned_around_async(p1: u32, p2: u32, c1: usize, c2: usize, backend: StateBackendConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = Gen {
        total: 6_000,
        keys: 40,
        seed: 11,
    };
    let output = dir.path().join("out");
    let mut cfg = unaligned_retained_config(dir.path(), p1);
    let graph = around_async(
        g,
        &output,
        Duration::from_millis(1),
        Duration::from_millis(1),
        c1,
    );
    let holds_all = |m: &Manifest| {
        let inflight = inflight_by_uid(m);
        inflight.contains_key("lookup")
            && inflight.contains_key("count")
            && async_calls(m, "lookup") > 0
    };
    let handle = Job::new(graph, cfg.clone()).start().expect("start");
    let storage = cairn_storage::CheckpointStorage::open(&cfg.checkpoint_dir).expect("storage");
    wait_until(
        "a checkpoint holding records around the lookup",
        || matches!(storage.latest_completed(), Ok(Some(m)) if holds_all(&m)),
    );
    handle.cancel();
    let first = handle.wait().expect("first run");
    let latest = storage
        .latest_completed()
        .expect("checkpoints")
        .expect("a checkpoint");
    assert!(
        holds_all(&latest),
        "the checkpoint restored from: {:?}, {} calls",
        inflight_by_uid(&latest),
        async_calls(&latest, "lookup")
    );

    cfg.parallelism = p2;
    cfg.backend = backend;
    cfg.restore = Some(RestoreFrom::Latest);
    let graph = around_async(g, &output, Duration::ZERO, Duration::ZERO, c2);
    let second = Job::new(graph, cfg).run().expect("restored run");
    assert!(second.restored_from.is_some(), "{second:?}");
    assert!(
        first.records + second.records >= g.total,
        "{first:?} {second:?}"
    );
    check_exactly_once(&g.expected(), &read_output(&output));
}

#[test]
fn unaligned_records_around_an_async_op_restore_at_a_higher_parallelism() {
    unaligned_around_async(2, 3, 4, 4, StateBackendConfig::rocksdb());
}

#[test]
fn unaligned_records_around_an_async_op_restore_merged_below_their_calls() {
    unaligned_around_async(3, 1, 8, 2, StateBackendConfig::HashMap);
}

// --- Cancellation and failover while the operator waits ---

/// Holds every future of the first attempt (never answers), answers at once afterwards.
#[derive(Clone)]
struct Holds {
    kept: Arc<Mutex<Vec<ResultFuture<u64>>>>,
    invoked: Arc<AtomicU64>,
    attempt: u32,
}

impl Checkpointed for Holds {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.attempt = ctx.subtask.attempt;
        Ok(())
    }
}

impl AsyncFunction<u64, u64> for Holds {
    fn async_invoke(&mut self, k: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
        self.invoked.fetch_add(1, Ordering::SeqCst);
        if self.attempt == 0 {
            self.kept.lock().expect("lock").push(r);
        } else {
            r.complete(vec![k]);
        }
        Ok(())
    }
}

/// A `Holds` function sharing `invoked`.
fn holds(invoked: &Arc<AtomicU64>) -> Holds {
    Holds {
        kept: Arc::new(Mutex::new(Vec::new())),
        invoked: invoked.clone(),
        attempt: 0,
    }
}

/// An operator at its capacity (1) whose call does not answer (timeout 60 s) waits for
/// it, inside `push`; a cancellation must not wait as long (Flink interrupts the task and
/// its waiting).
#[test]
fn a_cancellation_does_not_wait_for_a_call_that_does_not_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let invoked = Arc::new(AtomicU64::new(0));
    let graph = source("gen", GeneratorSource::new(100, 1_000, 1))
        .parallelism(1)
        .unordered_wait("lookup", holds(&invoked), Duration::from_secs(60), 1)
        .parallelism(1)
        .sink("sink", DiscardSink);
    let handle = Job::new(graph, config(dir.path(), 50))
        .start()
        .expect("start");
    wait_until("the first call", || invoked.load(Ordering::SeqCst) >= 1);
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    handle.cancel();
    let result = handle.wait();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the cancellation took {:?}: {result:?}",
        t.elapsed()
    );
}

/// An operator whose input ended waits for its calls (timeout 60 s), which do not answer
/// in the first attempt; when another pipeline of the job fails meanwhile, the failover
/// must not wait for them: the job restarts at once, and its second attempt answers every
/// call.
#[test]
fn a_failover_does_not_wait_for_calls_that_do_not_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let invoked = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(Vec::new()));
    let waiting = source("gen", GeneratorSource::new(3, 1_000, 1))
        .parallelism(1)
        .unordered_wait("lookup", holds(&invoked), Duration::from_secs(60), 10)
        .parallelism(1)
        .sink("sink", Collect(out.clone()));
    let failing = source("gen-b", GeneratorSource::new(2_000, 10, 2))
        .parallelism(1)
        .process("fail", FailEvery::<u64>::at(vec![200]))
        .sink("sink-b", DiscardSink);
    let mut cfg = config(dir.path(), 50);
    cfg.records_per_second = Some(2_000);
    cfg.restart = RestartStrategy::fixed_delay(3, Duration::from_millis(10));
    let t = Instant::now();
    let result = Job::new(waiting.and(failing), cfg).run().expect("job");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "the job took {:?}: {result:?}",
        t.elapsed()
    );
    assert_eq!(result.restarts, 1, "{result:?}");
    let g = GeneratorSource::new(3, 1_000, 1);
    let want: BTreeSet<u64> = (0..3).map(|n| g.key_of(n)).collect();
    let got: BTreeSet<u64> = out.lock().expect("lock").iter().copied().collect();
    assert_eq!(got, want);
}

// --- Timeouts racing completions ---

/// Calls answered after 0 to 2 ms with a timeout of 1 ms: a call that timed out is
/// answered by the fallback (the record plus `OFFSET`) and its late completion dropped, so
/// every record has exactly one result, either; ordered (at parallelism 1) in the order of
/// the records, also with a capacity of 1.
#[test]
fn completions_racing_their_timeouts_give_each_record_one_result() {
    const TOTAL: u64 = 1_500;
    const OFFSET: u64 = 1 << 40;
    #[derive(Clone)]
    struct Racing(BlockingCalls<u64, u64>);
    impl Checkpointed for Racing {}
    impl AsyncFunction<u64, u64> for Racing {
        fn async_invoke(&mut self, k: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
            self.0.async_invoke(k, r)
        }
        fn timeout(&mut self, k: &u64) -> Option<Vec<u64>> {
            Some(vec![k + OFFSET])
        }
    }
    let g = GeneratorSource::new(TOTAL, 1_000_000, 5);
    let records: Vec<u64> = (0..TOTAL).map(|n| g.key_of(n)).collect();
    for (ordered, capacity, p) in [(false, 50, 2), (true, 50, 1), (true, 1, 1)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let f = Racing(BlockingCalls::new(4, |k: u64| {
            std::thread::sleep(jitter(k));
            Ok(vec![k])
        }));
        let s = source("source", GeneratorSource::new(TOTAL, 1_000_000, 5));
        let timeout = Duration::from_millis(1);
        let looked = if ordered {
            s.ordered_wait("lookup", f, timeout, capacity)
        } else {
            s.unordered_wait("lookup", f, timeout, capacity)
        };
        let graph = looked.sink("sink", Collect(out.clone()));
        let mut cfg = config(dir.path(), 20);
        cfg.parallelism = p;
        cfg.restart = RestartStrategy::no_restarts();
        Job::new(graph, cfg).run().expect("job");
        let got = std::mem::take(&mut *out.lock().expect("lock"));
        let inputs: Vec<u64> = got.iter().map(|v| v % OFFSET).collect();
        let timed_out = got.iter().filter(|v| **v >= OFFSET).count();
        let what = format!("ordered={ordered} capacity={capacity}: {timed_out} timed out");
        if ordered {
            assert_eq!(inputs, records, "{what}");
        } else {
            let mut inputs = inputs;
            inputs.sort_unstable();
            let mut want = records.clone();
            want.sort_unstable();
            assert_eq!(inputs, want, "{what}");
        }
    }
}

/// Ordered with a capacity of 1: strictly one call at a time, results in record order.
#[test]
fn ordered_with_a_capacity_of_one_is_strictly_sequential() {
    #[derive(Clone)]
    struct OneAtATime {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }
    impl Checkpointed for OneAtATime {}
    impl AsyncFunction<u64, u64> for OneAtATime {
        fn async_invoke(&mut self, k: u64, r: ResultFuture<u64>) -> cairn_runtime::Result<()> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            let now = self.now.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_micros(200));
                now.fetch_sub(1, Ordering::SeqCst);
                r.complete(vec![k, k]);
            });
            Ok(())
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Arc::new(Mutex::new(Vec::new()));
    let f = OneAtATime {
        now: Arc::new(AtomicUsize::new(0)),
        most: Arc::new(AtomicUsize::new(0)),
    };
    let graph = source("source", GeneratorSource::new(300, 1_000_000, 8))
        .ordered_wait("lookup", f.clone(), Duration::from_secs(10), 1)
        .sink("sink", Collect(out.clone()));
    let mut cfg = config(dir.path(), 10);
    cfg.parallelism = 1;
    Job::new(graph, cfg).run().expect("job");
    let g = GeneratorSource::new(300, 1_000_000, 8);
    let want: Vec<u64> = (0..300).flat_map(|n| [g.key_of(n), g.key_of(n)]).collect();
    assert_eq!(*out.lock().expect("lock"), want);
    assert_eq!(f.most.load(Ordering::SeqCst), 1);
}

// --- Panics ---

/// Answers inside `async_invoke`; panics at its `at`-th call (over every run).
#[derive(Clone)]
struct PanicsOnce {
    calls: Arc<AtomicU64>,
    at: u64,
}

impl Checkpointed for PanicsOnce {}

impl AsyncFunction<String, String> for PanicsOnce {
    fn async_invoke(&mut self, w: String, r: ResultFuture<String>) -> cairn_runtime::Result<()> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.at {
            panic!("injected panic in async_invoke at call {n}");
        }
        r.complete(vec![w]);
        Ok(())
    }
}

/// A panic in `async_invoke` fails the task, naming the operator (without restarts), and
/// the job restarts from its checkpoint (with): every word counted exactly once.
#[test]
fn a_panic_in_async_invoke_fails_the_task_naming_it_and_the_job_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 1_500, 100, 31);
    let output = dir.path().join("out");
    let f = PanicsOnce {
        calls: Arc::new(AtomicU64::new(0)),
        at: 2_000,
    };
    let graph = count_words(
        words(&input).unordered_wait("lookup", f, Duration::from_secs(10), 8),
        &output,
    );
    let cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 2, true, 20_000);
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    check_exactly_once(&expected, &read_output(&output));

    let dir = tempfile::tempdir().expect("tempdir");
    let f = PanicsOnce {
        calls: Arc::new(AtomicU64::new(0)),
        at: 100,
    };
    let graph = words(&input)
        .ordered_wait("lookup", f, Duration::from_secs(10), 8)
        .sink("sink", DiscardSink);
    let mut cfg = config(dir.path(), 20);
    cfg.restart = RestartStrategy::no_restarts();
    let err = Job::new(graph, cfg)
        .run()
        .expect_err("the panic fails the job");
    let message = err.to_string();
    assert!(
        matches!(&err, RuntimeError::Panic { task, .. } if task.contains("lookup"))
            && message.contains("injected panic in async_invoke at call 100"),
        "{message}"
    );
}

/// A blocking call that panics once (a transient fault, on the first occurrence of `w3`)
/// fails the job, which restarts; the restarted job must still have the pool's thread to
/// run its calls on (a Java thread pool replaces a worker that died): every word counted
/// exactly once after one restart.
#[test]
fn a_blocking_call_that_panics_once_does_not_kill_the_pool_for_the_restarted_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 800, 40, 37);
    assert!(expected.contains_key("w3"));
    let output = dir.path().join("out");
    let panicked = Arc::new(AtomicBool::new(false));
    let seen = panicked.clone();
    let f = BlockingCalls::new(1, move |w: String| {
        if w == "w3" && !seen.swap(true, Ordering::SeqCst) {
            panic!("injected panic in a blocking call");
        }
        Ok(vec![w])
    });
    let graph = count_words(
        words(&input).unordered_wait("lookup", f, Duration::from_secs(10), 8),
        &output,
    );
    let cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 1, false, 20_000);
    let result = Job::new(graph, cfg).run();
    assert!(panicked.load(Ordering::SeqCst));
    let result = result.expect("the job recovers from one panic");
    assert_eq!(result.restarts, 1, "{result:?}");
    check_exactly_once(&expected, &read_output(&output));
}

// --- After unions, broadcast connections and side outputs ---

/// Two timestamped inputs (at parallelism 1 and 2, one 2 s behind the other in event time)
/// → union → lookup (asynchronous, jittered, at parallelism 3) → key_by → 100 ms tumbling
/// windows counting events → two-phase sink; unaligned checkpoints and a failure, so
/// calls in flight are restored with their timestamps: every window counts its events
/// exactly, fires once, and no event is late.
#[test]
fn async_after_a_union_feeds_event_time_windows_exactly_through_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a_path = write_lagging_events(dir.path(), "a.txt", 4, 0);
    let b_path = write_lagging_events(dir.path(), "b.txt", 4, 2_000);
    let expected = lagging_counts(4, |t| t / 100 * 100 + 100);
    let output = dir.path().join("out");
    let timed = |name: &str, path: &PathBuf, p: u32, fail: Vec<u64>| {
        source(&format!("source-{name}"), FileSource::new(path))
            .parallelism(p)
            .process(&format!("parse-{name}"), ParseEvents::new(fail))
            .assign_timestamps_and_watermarks(
                &format!("timestamps-{name}"),
                WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
            )
    };
    let lookup = BlockingCalls::new(4, |e: (u64, u64)| {
        std::thread::sleep(jitter(e.1));
        Ok(vec![e])
    });
    let late = OutputTag::<(u64, u64)>::new("late");
    let late_out = Arc::new(Mutex::new(Vec::new()));
    let windowed = timed("a", &a_path, 1, vec![1_800])
        .union(timed("b", &b_path, 2, Vec::new()))
        .unordered_wait("lookup", lookup, Duration::from_secs(10), 16)
        .parallelism(3)
        .key_by(|e: &(u64, u64)| e.0)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .side_output_late_data(&late)
        .aggregate("windows", CountEvents);
    let _late = windowed
        .side_output(&late)
        .sink("late", Collect(late_out.clone()));
    let graph = windowed
        .process("label", FnProcess(label_window))
        .sink("sink", count_sink(&output));
    let mut cfg = event_time_config(
        dir.path(),
        StateBackendConfig::HashMap,
        SnapshotMode::Full,
        true,
        2,
    );
    cfg.auto_watermark_interval = Duration::from_millis(5);
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 1, "{result:?}");
    assert!(
        late_out.lock().expect("lock").is_empty(),
        "no event is late"
    );
    let got: BTreeMap<String, u64> = read_output(&output)
        .into_iter()
        .map(|(window, counts)| {
            assert_eq!(counts.len(), 1, "window {window} fired once: {counts:?}");
            (window, counts[0])
        })
        .collect();
    assert_eq!(got, expected);
}

/// Short words go on, long ones to side output `long`.
#[derive(Clone)]
struct SplitLong(OutputTag<String>);

impl Checkpointed for SplitLong {}

impl ProcessFunction<String, String> for SplitLong {
    fn process(&mut self, w: String, out: &mut Collector<'_, String>) -> cairn_runtime::Result<()> {
        if w.len() > 2 {
            out.output(&self.0, w)
        } else {
            out.collect(w)
        }
    }
}

/// Passes the main stream's words and every rule on.
#[derive(Clone)]
struct PassRules;

impl Checkpointed for PassRules {}

impl BroadcastProcessFunction<String, String, String> for PassRules {
    fn open(&mut self, _broadcast: &mut BroadcastState) -> cairn_runtime::Result<()> {
        Ok(())
    }

    fn process(
        &mut self,
        w: String,
        _broadcast: &BroadcastState,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        out.collect(w)
    }

    fn process_broadcast(
        &mut self,
        rule: String,
        _broadcast: &mut BroadcastState,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        out.collect(rule)
    }
}

/// source → tokenize → split (long words to a side output) → fail → connected with the
/// broadcast rules → pass → ordered lookup → count; the side output → unordered lookup
/// → count-long; unaligned checkpoints and two failures at parallelism 2: every short
/// word and each rule (once per subtask of the connection) counted exactly once, and
/// every long word on its own.
#[test]
fn async_after_side_outputs_and_a_broadcast_connection_through_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, counts) = write_input(dir.path(), 2_000, 150, 41);
    let rules_path = dir.path().join("rules.txt");
    let rules: String = (0..20).map(|i| format!("r{i}\n")).collect();
    std::fs::write(&rules_path, rules).expect("rules");
    let (out_short, out_long) = (dir.path().join("short"), dir.path().join("long"));
    let mut short: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(w, _)| w.len() <= 2)
        .map(|(w, n)| (w.clone(), *n))
        .collect();
    for i in 0..20 {
        short.insert(format!("r{i}"), 2);
    }
    let long: BTreeMap<String, u64> = counts
        .iter()
        .filter(|(w, _)| w.len() > 2)
        .map(|(w, n)| (w.clone(), *n))
        .collect();
    assert!(!long.is_empty() && short.len() > 20);
    // Failures at a third and two thirds of the short words (only they pass `fail`).
    let short_words: u64 = counts
        .iter()
        .filter(|(w, _)| w.len() <= 2)
        .map(|(_, n)| n)
        .sum();

    let tag = OutputTag::<String>::new("long");
    let split = words(&input).process("split", SplitLong(tag.clone()));
    let long_words = split.side_output(&tag);
    let timeout = Duration::from_secs(10);
    let _long = long_words
        .unordered_wait(
            "lookup-long",
            word_lookup(Duration::from_micros(200)),
            timeout,
            8,
        )
        .key_by(|w: &String| w.clone())
        .process("count-long", Count::new())
        .sink("sink-long", TwoPhaseFileSink::new(&out_long, format_line));
    let rules = source("source-rules", FileSource::new(&rules_path))
        .parallelism(1)
        .broadcast();
    let passed = split
        .process(
            "fail",
            FailAt::at(vec![short_words / 3, short_words * 2 / 3]),
        )
        .connect_broadcast(rules)
        .process("pass", PassRules)
        .ordered_wait(
            "lookup",
            word_lookup(Duration::from_micros(200)),
            timeout,
            8,
        );
    let graph = count_words(passed, &out_short);
    let cfg = failure_config(dir.path(), StateBackendConfig::HashMap, 2, true, 20_000);
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "{result:?}");
    check_exactly_once(&short, &read_output(&out_short));
    check_exactly_once(&long, &read_output(&out_long));
}

/// Words from 3 tokenizers → rescale → lookup at parallelism 2 (so subtasks 1 and 2 of the
/// tokenizers share lookup subtask 1) → fail → key_by → count at 3; unaligned checkpoints
/// under RocksDB and two failures: every word counted exactly once.
#[test]
fn rescale_three_into_two_through_an_async_op_unaligned_through_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 2_500, 200, 43);
    let output = dir.path().join("out");
    let looked = words(&input)
        .parallelism(3)
        .rescale()
        .unordered_wait(
            "lookup",
            word_lookup(Duration::from_micros(100)),
            Duration::from_secs(10),
            16,
        )
        .parallelism(2)
        .process("fail", FailAt::at(vec![2_000, 5_500]));
    let graph = count_words(looked, &output);
    let cfg = failure_config(dir.path(), StateBackendConfig::rocksdb(), 3, true, 20_000);
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "{result:?}");
    check_exactly_once(&expected, &read_output(&output));
}

// --- Routes into an asynchronous operator at another parallelism ---

/// Answers at once with the sending subtask, its own subtask and the record.
#[derive(Clone)]
struct Where {
    index: u32,
}

impl Checkpointed for Where {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.index = ctx.subtask.index;
        Ok(())
    }
}

impl AsyncFunction<(u32, u64), (u32, u32, u64)> for Where {
    fn async_invoke(
        &mut self,
        (up, k): (u32, u64),
        r: ResultFuture<(u32, u32, u64)>,
    ) -> cairn_runtime::Result<()> {
        r.complete(vec![(up, self.index, k)]);
        Ok(())
    }
}

/// generator (2 subtasks) → up → `part` → lookup (4 subtasks): `(up, down, record)` of
/// every result; asserts each record came once.
fn route_async(part: Partitioning<(u32, u64)>) -> Vec<(u32, u32, u64)> {
    const N: u64 = 4_000;
    let out = Arc::new(Mutex::new(Vec::new()));
    let up = source("gen", GeneratorSource::new(N, u64::MAX, 42))
        .parallelism(2)
        .process("up", Here::new());
    let graph = part(up)
        .unordered_wait(
            "lookup",
            Where { index: u32::MAX },
            Duration::from_secs(10),
            16,
        )
        .parallelism(4)
        .sink("sink", Collect(out.clone()));
    let cfg = JobConfig {
        parallelism: 3,
        batch_size: 8,
        restart: RestartStrategy::no_restarts(),
        ..JobConfig::default()
    };
    Job::new(graph, cfg).run().expect("job");
    let got = std::mem::take(&mut *out.lock().expect("lock"));
    let g = GeneratorSource::new(N, u64::MAX, 42);
    let mut keys: Vec<u64> = got.iter().map(|(_, _, k)| *k).collect();
    keys.sort_unstable();
    let mut want: Vec<u64> = (0..N).map(|n| g.key_of(n)).collect();
    want.sort_unstable();
    assert_eq!(keys, want, "every record once");
    got
}

fn reached(got: &[(u32, u32, u64)]) -> BTreeMap<u32, BTreeSet<u32>> {
    let mut out: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for (up, down, _) in got {
        out.entry(*up).or_default().insert(*down);
    }
    out
}

/// An asynchronous operator at parallelism 4 behind 2 subtasks: without a partitioning
/// (or with `rescale()`) each sender reaches its pointwise pair; a `rebalance()` or
/// `shuffle()` asked for before it is kept (every sender reaches all 4), `global()` sends
/// everything to subtask 0 and `partition_custom` where the partitioner says.
#[test]
fn routes_into_an_async_op_at_another_parallelism_are_kept() {
    let all: BTreeSet<u32> = (0..4).collect();
    let pairs: BTreeMap<u32, BTreeSet<u32>> = [(0, [0, 1].into()), (1, [2, 3].into())]
        .into_iter()
        .collect();
    assert_eq!(reached(&route_async(|s| s)), pairs, "default");
    assert_eq!(reached(&route_async(Stream::rescale)), pairs, "rescale");
    let everywhere: BTreeMap<u32, BTreeSet<u32>> =
        [(0, all.clone()), (1, all.clone())].into_iter().collect();
    assert_eq!(
        reached(&route_async(Stream::rebalance)),
        everywhere,
        "rebalance"
    );
    assert_eq!(
        reached(&route_async(Stream::shuffle)),
        everywhere,
        "shuffle"
    );
    let global = route_async(Stream::global);
    assert!(global.iter().all(|(_, down, _)| *down == 0), "global");
    let custom =
        route_async(|s| s.partition_custom(|k: &u64, n: u32| (*k % u64::from(n)) as u32, |e| e.1));
    assert!(
        custom.iter().all(|(_, down, k)| u64::from(*down) == k % 4),
        "partition_custom"
    );
}

/// `forward()` keeps records in their subtask, so Flink refuses it into another
/// parallelism; an asynchronous operator right after it at another parallelism must be
/// refused too, not silently fed through a rescale.
#[test]
fn forward_into_an_async_op_at_another_parallelism_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = Where { index: 0 };
    let graph = source("gen", GeneratorSource::new(10, 5, 1))
        .parallelism(2)
        .process("up", Here::new())
        .forward()
        .unordered_wait("lookup", f, Duration::from_secs(1), 4)
        .parallelism(3)
        .sink("sink", DiscardSink);
    match Job::new(graph, config(dir.path(), 50)).run() {
        Err(RuntimeError::Config(message)) => assert!(message.contains("forward()"), "{message}"),
        other => panic!("refused as invalid, got {other:?}"),
    }
}

// --- Keyed state fed through global() and partition_custom(), rescaled ---

/// generator → `part` → check (counts in `strays` the records off the subtask `home`
/// says) → lookup (deferred answers) → key_by → count → sink, at parallelism `p`.
fn routed_into_keyed(
    g: Gen,
    output: &Path,
    part: Partitioning<u64>,
    home: Home,
    p: u32,
    strays: Arc<AtomicU64>,
) -> JobGraph {
    part(source("gen", g.source()))
        .process("here", Here::new())
        .process(
            "check",
            FnProcess(move |(i, k): (u32, u64), out: &mut Collector<'_, u64>| {
                if home(k, p) != i {
                    strays.fetch_add(1, Ordering::SeqCst);
                }
                out.collect(k)
            }),
        )
        .unordered_wait(
            "lookup",
            Deferred { held: None },
            Duration::from_millis(500),
            4,
        )
        .key_by(|k: &u64| *k)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new())
        .sink("sink", count_sink(output))
}

/// Keyed counts fed through `global()` and `partition_custom()` (and an asynchronous
/// operator that always has a call in flight) at parallelism 2, stopped with a savepoint
/// part way and restored at 3 under RocksDB: every record in the subtask its route says,
/// every key counted exactly once in all.
#[test]
fn keyed_state_behind_global_and_custom_restores_rescaled_from_a_savepoint() {
    let parts: [(&str, Partitioning<u64>, Home); 2] = [
        ("global", Stream::global, |_, _| 0),
        (
            "custom",
            |s| s.partition_custom(|k: &u64, n: u32| (*k % u64::from(n)) as u32, |k| *k),
            |k, n| (k % u64::from(n)) as u32,
        ),
    ];
    for (name, part, home) in parts {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Gen {
            total: 4_000,
            keys: 30,
            seed: 13,
        };
        let output = dir.path().join("out");
        let strays = Arc::new(AtomicU64::new(0));
        let mut cfg = config(dir.path(), 30);
        cfg.parallelism = 2;
        cfg.records_per_second = Some(4_000);
        let graph = routed_into_keyed(g, &output, part, home, 2, strays.clone());
        let handle = Job::new(graph, cfg.clone()).start().expect("start");
        wait_until("a thousand records", || handle.records_read() >= 1_000);
        let savepoint = handle.stop_with_savepoint(None).expect("stop");
        let first = handle.wait().expect("first run");
        assert!(first.records < g.total, "{name}: {first:?}");
        let (manifest, _) = cairn_storage::open_savepoint(&savepoint).expect("savepoint");
        assert!(
            async_calls(&manifest, "lookup") > 0,
            "{name}: the savepoint holds calls in flight"
        );
        cfg.parallelism = 3;
        cfg.records_per_second = None;
        cfg.backend = StateBackendConfig::rocksdb();
        cfg.restore = Some(RestoreFrom::Path(savepoint));
        let graph = routed_into_keyed(g, &output, part, home, 3, strays.clone());
        let second = Job::new(graph, cfg).run().expect("restored run");
        assert_eq!(first.records + second.records, g.total, "{name}");
        check_exactly_once(&g.expected(), &read_output(&output));
        assert_eq!(
            strays.load(Ordering::SeqCst),
            0,
            "{name}: records off their subtask"
        );
    }
}

// --- Watermarks through subtasks that get no records ---

/// Events `(n % 5, n)` of a generator at parallelism 2 (time `n` ms) that idles after its
/// 1,000 records → `part` → lookup (asynchronous, parallelism 2; after `partition_custom`
/// to 0 or `global()` its subtask 1 gets no record at all, only watermarks) → key_by →
/// 100 ms windows: while the input idles (before its end), every window up to 900 ms has
/// fired with exactly its 20 events per key, and the one the watermark (997 ms) has not
/// passed has not.
#[test]
fn windows_fire_before_the_end_behind_subtasks_that_get_no_records() {
    let parts: [(&str, Partitioning<(u64, u64)>); 3] = [
        ("custom", |s| s.partition_custom(|_: &u64, _| 0, |e| e.0)),
        ("global", Stream::global),
        ("shuffle", Stream::shuffle),
    ];
    const TOTAL: u64 = 1_000;
    let g = GeneratorSource::new(TOTAL, u64::MAX, 9);
    let numbers: Arc<HashMap<u64, u64>> = Arc::new((0..TOTAL).map(|n| (g.key_of(n), n)).collect());
    assert_eq!(numbers.len() as u64, TOTAL);
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for n in 0..900 {
        *expected
            .entry((n % 5) * 1_000_000 + n / 100 * 100 + 100)
            .or_insert(0) += 1;
    }
    for (name, part) in parts {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Arc::new(Mutex::new(Vec::new()));
        let numbers = numbers.clone();
        let timed = source(
            "gen",
            GeneratorSource::new(TOTAL, u64::MAX, 9).idle_at_end(),
        )
        .map("number", move |k: u64| {
            let n = numbers[&k];
            (n % 5, n)
        })
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
        );
        let lookup = BlockingCalls::new(2, |e: (u64, u64)| {
            std::thread::sleep(jitter(e.1) / 4);
            Ok(vec![e])
        });
        let graph = part(timed)
            .unordered_wait("lookup", lookup, Duration::from_secs(10), 8)
            .key_by(|e: &(u64, u64)| e.0)
            .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
            .aggregate("windows", CountEvents)
            .process("label", FnProcess(label_window))
            .sink("sink", Collect(out.clone()));
        let mut cfg = config(dir.path(), 50);
        cfg.parallelism = 2;
        cfg.auto_watermark_interval = Duration::from_millis(5);
        let handle = Job::new(graph, cfg).start().expect("start");
        wait_until(&format!("{name}: the windows up to 900 ms"), || {
            out.lock().expect("lock").len() >= expected.len()
        });
        std::thread::sleep(Duration::from_millis(50));
        handle.cancel();
        let result = handle.wait().expect("cancelled");
        assert!(result.cancelled, "{name}: {result:?}");
        let got = std::mem::take(&mut *out.lock().expect("lock"));
        assert_eq!(got.len(), expected.len(), "{name}: each window fired once");
        let got: BTreeMap<u64, u64> = got.into_iter().collect();
        assert_eq!(got, expected, "{name}");
    }
}
