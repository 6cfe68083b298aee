//! Stop-with-savepoint and a backend + parallelism switch; unaligned checkpoints under
//! backpressure.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointRetention, Checkpointed, Job, RestoreFrom, RestoreMode, Sink,
    StateBackendConfig,
};
use common::*;

#[test]
fn stop_with_savepoint_under_hashmap_p2_then_rocksdb_p3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 11);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4000);
    let handle = Job::new(wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(400));
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    assert!(
        first.records < 4000,
        "the first run should stop early: {first:?}"
    );
    // What the first run committed is a prefix: counts 1..k per word, each once.
    let partial = read_output(&output);
    assert!(!partial.is_empty());
    for (w, counts) in &partial {
        let mut c = counts.clone();
        c.sort_unstable();
        assert_eq!(c, (1..=c.len() as u64).collect::<Vec<_>>(), "word {w}");
    }

    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.checkpoint_dir = dir.path().join("checkpoints-2").display().to_string();
    let second = Job::new(wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("second run");
    assert_eq!(
        second.restored_from.as_deref(),
        Some(format!("savepoint {savepoint}").as_str())
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// A job restored from a savepoint into the checkpoint directory of the run that took it
/// fails before its own first checkpoint: it restarts from the savepoint, not from the
/// older checkpoints the first run left in the directory (which would repeat output the
/// savepoint already committed).
#[test]
fn a_failure_before_the_first_checkpoint_restarts_from_the_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 13);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 100);
    cfg.records_per_second = Some(4000);
    cfg.checkpoint.num_retained = 3;
    let handle = Job::new(wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(350));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    let first = handle.wait().expect("first run");
    assert!(first.checkpoints_completed > 0, "{first:?}");
    let left = cairn_storage::CheckpointStorage::open(&first.checkpoint_dir)
        .expect("open the checkpoint dir")
        .completed_checkpoints()
        .expect("list checkpoints");
    assert!(!left.is_empty(), "the first run's checkpoints stay");

    let mut cfg = config(dir.path(), 60_000);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.restart.delay = Duration::from_millis(10);
    let fail = FailAt::at(vec![2000]);
    let second = Job::new(wordcount(&input, &output, Some(fail), None), cfg)
        .run()
        .expect("second run");
    assert_eq!(second.restarts, 1, "{second:?}");
    check_exactly_once(&expected, &read_output(&output));
}

/// The pre-committed files in `dir` (`.part-….pending`).
fn pending_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list the output")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".part-") && n.ends_with(".pending"))
        .collect();
    names.sort();
    names
}

/// A savepoint taken while the job runs on (which commits nothing: like Flink's, only a
/// checkpoint's completion commits output), then the job is cancelled. A fork restored from
/// the savepoint into another output directory leaves the savepoint's pre-committed file to
/// the first directory and emits every word's counts from the savepoint's up to the word's
/// total; then the first directory is moved and the job restored from the savepoint into it
/// commits that file there and finishes exactly once.
#[test]
fn a_savepoint_restores_into_another_output_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 17);
    let output = dir.path().join("out");
    // No checkpoint before the savepoint: the savepoint pre-commits what the sink wrote.
    let mut cfg = config(dir.path(), 60_000);
    cfg.records_per_second = Some(4000);
    let handle = Job::new(wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let savepoint = handle.trigger_savepoint(None).expect("savepoint");
    handle.cancel();
    let first = handle.wait().expect("first run");
    assert!(first.cancelled && first.savepoint.is_none(), "{first:?}");
    let pending = pending_files(&output);
    assert_eq!(pending.len(), 1, "the savepoint's pre-committed file");
    assert!(read_output(&output).is_empty(), "nothing committed yet");

    let fork = dir.path().join("fork");
    let mut cfg = config(dir.path(), 50);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    let second = Job::new(wordcount(&input, &fork, None, None), cfg)
        .run()
        .expect("the fork restores the savepoint");
    assert!(second.records < 4000, "{second:?}");
    let forked = read_output(&fork);
    assert!(!forked.is_empty());
    check_continues(&expected, &forked, true);
    assert_eq!(pending_files(&output), pending, "the fork left it alone");
    assert!(read_output(&output).is_empty());

    let moved = dir.path().join("moved");
    std::fs::rename(&output, &moved).expect("move the output");
    let mut cfg = config(dir.path(), 50);
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    Job::new(wordcount(&input, &moved, None, None), cfg)
        .run()
        .expect("the job restores the savepoint into the moved directory");
    check_exactly_once(&expected, &read_output(&moved));
    assert!(pending_files(&moved).is_empty());
}

/// A job restored from a retained checkpoint deletes its own checkpoints only, both when it
/// subsumes them and when it is cancelled with the default retention (delete on
/// cancellation): those of the run it was restored from stay, with their files, as in
/// Flink's default restore mode (no claim). A third job restores the newest of them into an
/// output of its own (the first output has moved on) and continues every word's counts.
#[test]
fn cancelling_deletes_only_the_jobs_own_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 19);
    let run = |restore: Option<RestoreFrom>, retention, output: &Path, cancel: bool| {
        let mut cfg = config(dir.path(), 30);
        cfg.records_per_second = Some(4000);
        cfg.checkpoint.retention = retention;
        cfg.restore = restore;
        let handle = Job::new(wordcount(&input, output, None, None), cfg)
            .start()
            .expect("start");
        // Long enough for more checkpoints than it retains (2).
        if cancel {
            cancel_after(handle, 1000)
        } else {
            handle.wait()
        }
        .expect("run")
    };
    let storage = || {
        let dir = dir.path().join("checkpoints");
        cairn_storage::CheckpointStorage::open(&dir.display().to_string()).expect("open")
    };
    let output = dir.path().join("out");
    let retain = CheckpointRetention::RetainOnCancellation;
    let first = run(None, retain, &output, true);
    assert!(first.cancelled, "{first:?}");
    let kept = storage().completed_checkpoints().expect("list");
    assert_eq!(kept.len(), 2, "{first:?}");

    let delete = CheckpointRetention::DeleteOnCancellation;
    let second = run(Some(RestoreFrom::Latest), delete, &output, true);
    assert!(
        second.cancelled && second.checkpoints_completed > 2,
        "{second:?}"
    );
    assert_eq!(
        storage().completed_checkpoints().expect("list"),
        kept,
        "the first run's checkpoints stay, the second's are gone"
    );

    let fork = dir.path().join("fork");
    let third = run(Some(RestoreFrom::Latest), delete, &fork, false);
    let newest = kept.last().expect("a checkpoint");
    assert_eq!(
        third.restored_from.as_deref(),
        Some(format!("checkpoint {newest} in {}", third.checkpoint_dir).as_str())
    );
    check_continues(&expected, &read_output(&fork), true);
}

#[test]
fn claim_mode_takes_over_the_restored_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 6000, 400, 31);
    let output = dir.path().join("out");
    let run = |restore: RestoreFrom, mode: RestoreMode, retention, output: &Path| {
        let mut cfg = config(dir.path(), 30);
        cfg.records_per_second = Some(4000);
        cfg.checkpoint.retention = retention;
        cfg.restore = Some(restore);
        cfg.restore_mode = mode;
        let handle = Job::new(wordcount(&input, output, None, None), cfg)
            .start()
            .expect("start");
        // Long enough for more checkpoints than it retains (2).
        cancel_after(handle, 1000)
    };
    let checkpoints = dir.path().join("checkpoints");
    let completed = || {
        cairn_storage::CheckpointStorage::open(&checkpoints.display().to_string())
            .expect("open")
            .completed_checkpoints()
            .expect("list")
    };
    let (retain, delete) = (
        CheckpointRetention::RetainOnCancellation,
        CheckpointRetention::DeleteOnCancellation,
    );
    // No restore to begin with (latest of an empty directory).
    let first = run(RestoreFrom::Latest, RestoreMode::NoClaim, retain, &output).expect("run 1");
    let kept = completed();
    assert!(first.cancelled && kept.len() == 2, "{first:?} {kept:?}");
    let (older, newest) = (kept[0], kept[1]);

    // Only the directory's newest checkpoint can be claimed.
    let path =
        |id: u64| RestoreFrom::Path(checkpoints.join(format!("chk-{id}")).display().to_string());
    let err = run(path(older), RestoreMode::Claim, retain, &output).expect_err("older");
    assert!(err.to_string().contains("claim mode"), "{err}");
    assert_eq!(completed(), kept);

    // Claimed, the newest is subsumed like the job's own checkpoints.
    let second = run(path(newest), RestoreMode::Claim, retain, &output).expect("run 2");
    assert!(second.checkpoints_completed > 2, "{second:?}");
    let after_second = completed();
    assert!(
        after_second.len() == 3 && after_second[0] == older && !after_second.contains(&newest),
        "run 1's older checkpoint stays, its newest went with run 2's older ones: {after_second:?}"
    );

    // Claimed and cancelled with delete-on-cancellation: deleted with the job's own.
    let third = run(RestoreFrom::Latest, RestoreMode::Claim, delete, &output).expect("run 3");
    assert!(third.cancelled, "{third:?}");
    assert_eq!(completed(), after_second[..2].to_vec());

    // What is left restores: run 2's remaining checkpoint, into a new output.
    let fork = dir.path().join("fork");
    let mut cfg = config(dir.path(), 30);
    cfg.restore = Some(path(after_second[1]));
    Job::new(wordcount(&input, &fork, None, None), cfg)
        .run()
        .expect("run 4");
    check_continues(&expected, &read_output(&fork), true);
}

/// Claim mode takes a savepoint over too (as Flink's): restarts restore it until the job
/// has checkpoints of its own, retention then deletes it (only the files its manifest
/// lists), and a cancellation that deletes the job's checkpoints deletes it with them.
#[test]
fn claim_mode_takes_over_a_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 6000, 400, 43);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 30);
    cfg.records_per_second = Some(4000);
    let handle = Job::new(wordcount(&input, &output, None, None), cfg.clone())
        .start()
        .expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("run 1");
    let copy = dir.path().join("savepoint-copy");
    std::fs::create_dir_all(&copy).expect("mkdir");
    for e in std::fs::read_dir(&savepoint).expect("read savepoint") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), copy.join(e.file_name())).expect("copy");
    }
    std::fs::write(copy.join("notes.txt"), b"not the savepoint's").expect("write");

    // A fork claims the copy and is cancelled with delete-on-cancellation before it retains
    // as many checkpoints as it keeps: the copy goes with its checkpoints.
    let mut fork = cfg.clone();
    fork.checkpoint_dir = dir.path().join("fork-checkpoints").display().to_string();
    fork.checkpoint.num_retained = 1000;
    fork.checkpoint.retention = CheckpointRetention::DeleteOnCancellation;
    fork.restore = Some(RestoreFrom::Path(copy.display().to_string()));
    fork.restore_mode = RestoreMode::Claim;
    let handle = Job::new(
        wordcount(&input, &dir.path().join("fork-out"), None, None),
        fork,
    )
    .start()
    .expect("start the fork");
    let forked = cancel_after(handle, 1000).expect("fork");
    assert!(
        forked.cancelled && forked.checkpoints_completed > 0,
        "{forked:?}"
    );
    assert!(
        !copy.join("_metadata").exists(),
        "the claimed copy survived a deleting cancellation"
    );
    let left: Vec<_> = std::fs::read_dir(&copy)
        .expect("the directory stays: it holds another file")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);

    // The job claims the savepoint and fails before its first checkpoint: the restart
    // restores the savepoint; once two checkpoints of its own completed, it is deleted.
    let mut claim = cfg;
    claim.restore = Some(RestoreFrom::Path(savepoint.clone()));
    claim.restore_mode = RestoreMode::Claim;
    claim.restart.delay = Duration::from_millis(5);
    let fail = FailAt::at(vec![20]);
    let second = Job::new(wordcount(&input, &output, Some(fail), None), claim)
        .run()
        .expect("run 2");
    assert_eq!(second.restarts, 1, "{second:?}");
    assert!(second.checkpoints_completed >= 2, "{second:?}");
    assert!(
        !Path::new(&savepoint).exists(),
        "the claimed savepoint was not subsumed: {second:?}"
    );
    check_exactly_once(&expected, &read_output(&output));
}

#[test]
fn restoring_state_of_an_unknown_operator_is_an_error_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 200, 20, 5);
    let output = dir.path().join("out");
    let cfg = config(dir.path(), 20);
    let handle = Job::new(
        wordcount(&input, &output, None, None),
        JobConfig_throttled(cfg),
    )
    .start()
    .expect("start");
    std::thread::sleep(Duration::from_millis(100));
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("run");
    // A job without the "fail" and "count" operators.
    let graph = source("source", FileSource::new(&input))
        .flat_map("tokenize", |l: String| vec![l])
        .sink(
            "sink",
            TwoPhaseFileSink::new(output.clone(), |l: &String, o: &mut Vec<u8>| {
                o.extend_from_slice(l.as_bytes())
            }),
        );
    let mut cfg = config(dir.path(), 20);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    let err = Job::new(graph.clone(), cfg.clone())
        .run()
        .expect_err("unknown uids");
    let msg = err.to_string();
    assert!(msg.contains("count") && msg.contains("fail"), "{msg}");
    cfg.allow_non_restored_state = true;
    Job::new(graph, cfg).run().expect("allowed to drop state");
}

#[allow(non_snake_case)]
fn JobConfig_throttled(mut cfg: cairn_runtime::JobConfig) -> cairn_runtime::JobConfig {
    cfg.records_per_second = Some(1000);
    cfg
}

/// The word-count sink, wrapped: it takes `delay` per record (backpressure up the
/// dataflow), and with `fail_savepoint` armed its snapshot fails at the next savepoint
/// (once).
#[derive(Clone)]
struct TestSink {
    inner: TwoPhaseFileSink<(String, u64)>,
    delay: Duration,
    fail_savepoint: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TestSink {
    fn new(output: &Path, delay: Duration) -> Self {
        Self {
            inner: TwoPhaseFileSink::new(output, |(w, n): &(String, u64), o: &mut Vec<u8>| {
                o.extend_from_slice(format!("{w}\t{n}").as_bytes())
            }),
            delay,
            fail_savepoint: Default::default(),
        }
    }
}

impl Checkpointed for TestSink {
    fn initialize_state(
        &mut self,
        ctx: &mut cairn_runtime::InitContext<'_>,
    ) -> cairn_runtime::Result<()> {
        self.inner.initialize_state(ctx)
    }
    fn snapshot_state(
        &mut self,
        ctx: &mut cairn_runtime::SnapshotContext<'_>,
    ) -> cairn_runtime::Result<()> {
        let armed = &self.fail_savepoint;
        if ctx.is_savepoint && armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(cairn_runtime::RuntimeError::user(
                "sink",
                "savepoint refused",
            ));
        }
        self.inner.snapshot_state(ctx)
    }
    fn notify_checkpoint_complete(&mut self, id: u64) -> cairn_runtime::Result<()> {
        self.inner.notify_checkpoint_complete(id)
    }
}

impl Sink<(String, u64)> for TestSink {
    fn write(&mut self, r: (String, u64)) -> cairn_runtime::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.write(r)
    }
    fn finish(&mut self) -> cairn_runtime::Result<()> {
        self.inner.finish()
    }
}

fn slow_graph(input: &Path, output: &Path, delay: Duration) -> cairn_runtime::JobGraph {
    test_sink_graph(input, TestSink::new(output, delay))
}

fn test_sink_graph(input: &Path, sink: TestSink) -> cairn_runtime::JobGraph {
    source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .process("fail", FailAt::at(Vec::new()))
        .key_by(|w: &String| w.clone())
        .process("count", Count::new())
        .sink("sink", sink)
}

fn slow_job(
    dir: &Path,
    unaligned: bool,
) -> (
    cairn_runtime::JobResult,
    std::collections::BTreeMap<String, u64>,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let (input, expected) = write_input(dir, 1500, 100, 13);
    let output = dir.join("out");
    let graph = slow_graph(&input, &output, Duration::from_micros(500));
    let mut cfg = config(dir, 50);
    cfg.batch_size = 16;
    cfg.channel_capacity = 128;
    cfg.checkpoint.timeout = Duration::from_millis(500);
    cfg.checkpoint.tolerable_failures = 1000;
    cfg.checkpoint.unaligned = unaligned;
    // Keep disk latency (fsync of checkpoint files) out of what this test measures.
    cfg.checkpoint_dir = "memory://".into();
    let result = Job::new(graph, cfg).run().expect("job");
    check_exactly_once(&expected, &read_output(&output));
    (result, expected)
}

#[test]
fn unaligned_checkpoints_complete_under_backpressure_where_aligned_time_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (aligned, _) = slow_job(&dir.path().join("aligned"), false);
    let (unaligned, _) = slow_job(&dir.path().join("unaligned"), true);
    eprintln!("aligned: {aligned:?}\nunaligned: {unaligned:?}");
    assert!(
        aligned.checkpoints_failed >= 2,
        "aligned checkpoints should time out: {aligned:?}"
    );
    assert_eq!(unaligned.checkpoints_failed, 0, "{unaligned:?}");
    assert!(unaligned.checkpoints_completed >= 2, "{unaligned:?}");
    assert!(
        unaligned.inflight_records > 0,
        "unaligned checkpoints stored no in-flight records: {unaligned:?}"
    );
}

#[test]
fn unaligned_checkpoint_with_inflight_records_restores_at_another_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 1500, 100, 17);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 30);
    cfg.parallelism = 2;
    cfg.batch_size = 16;
    cfg.channel_capacity = 64;
    cfg.checkpoint.unaligned = true;
    cfg.checkpoint.tolerable_failures = 100;
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    let checkpoints = cfg.checkpoint_dir.clone();
    let handle = Job::new(
        slow_graph(&input, &output, Duration::from_micros(300)),
        cfg.clone(),
    )
    .start()
    .expect("start");
    // Cancel once the latest checkpoint holds in-flight records.
    let storage = cairn_storage::CheckpointStorage::open(&checkpoints).expect("storage");
    let mut found = false;
    for _ in 0..200 {
        std::thread::sleep(Duration::from_millis(20));
        if let Ok(Some(m)) = storage.latest_completed() {
            let inflight: usize = m
                .operators
                .iter()
                .flat_map(|o| &o.subtasks)
                .flat_map(|s| &s.operator_state)
                .filter(|s| s.name == cairn_runtime::INFLIGHT_STATE)
                .map(|s| s.elements.len())
                .sum();
            if inflight > 0 {
                found = true;
                break;
            }
        }
    }
    handle.cancel();
    let first = handle.wait().expect("first run");
    assert!(found, "no checkpoint with in-flight records: {first:?}");
    assert!(first.cancelled);

    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(slow_graph(&input, &output, Duration::ZERO), cfg)
        .run()
        .expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    check_exactly_once(&expected, &read_output(&output));
}

/// Two jobs share a savepoint directory (as Flink jobs share `state.savepoints.dir`) and take
/// a savepoint with the same id: each gets a directory of its own (`sp-1-<tag>`), and each
/// savepoint restores its own job's state.
#[test]
fn jobs_sharing_a_savepoint_directory_never_share_a_savepoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let savepoints = dir.path().join("savepoints");
    let mut jobs = Vec::new();
    for (name, seed) in [("a", 51), ("b", 52)] {
        let job_dir = dir.path().join(name);
        std::fs::create_dir_all(&job_dir).expect("mkdir");
        let (input, expected) = write_input(&job_dir, 3000, 300, seed);
        // No checkpoint before the savepoint: both savepoints get id 1.
        let mut cfg = config(&job_dir, 60_000);
        cfg.savepoint_dir = Some(savepoints.display().to_string());
        cfg.records_per_second = Some(5000);
        let handle = Job::new(wordcount(&input, &job_dir.join("out"), None, None), cfg)
            .start()
            .expect("start");
        jobs.push((job_dir, input, expected, handle));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while jobs.iter().any(|j| j.3.records_read() < 300) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut paths = Vec::new();
    for (.., handle) in &jobs {
        paths.push(handle.trigger_savepoint(None).expect("savepoint"));
    }
    assert_ne!(paths[0], paths[1]);
    for p in &paths {
        let name = Path::new(p).file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("sp-1-") && name.len() == "sp-1-".len() + 8,
            "{p}"
        );
    }
    for ((job_dir, input, expected, handle), path) in jobs.into_iter().zip(paths) {
        handle.cancel();
        handle.wait().expect("cancelled job");
        let output = job_dir.join("restored");
        let mut cfg = config(&job_dir.join("again"), 20);
        cfg.restore = Some(RestoreFrom::Path(path.clone()));
        let result = Job::new(wordcount(&input, &output, None, None), cfg)
            .run()
            .expect("restore the job's savepoint");
        assert!(result.restored_from.is_some(), "{result:?}");
        let out = read_output(&output);
        assert!(!out.is_empty(), "{path}: nothing after the savepoint");
        check_continues(&expected, &out, true);
    }
}

/// A savepoint that fails (here at the sink's snapshot) leaves nothing in the savepoint
/// directory: the directory made for it is deleted with whatever was written to it
/// (uploads that end after the failure delete their own file; `SavepointWriter::abort`),
/// so no directory without a `_metadata` is left behind. The job restarts and runs on.
#[test]
fn a_failed_savepoint_leaves_no_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 4000, 400, 5);
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(4000);
    let sink = TestSink::new(&dir.path().join("out"), Duration::ZERO);
    let armed = sink.fail_savepoint.clone();
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let graph = test_sink_graph(&input, sink);
    let handle = Job::new(graph, cfg).start().expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let failed = handle.trigger_savepoint(None);
    assert!(failed.is_err(), "the savepoint was taken: {failed:?}");
    assert!(
        !armed.load(std::sync::atomic::Ordering::SeqCst),
        "the sink never failed"
    );
    let result = cancel_after(handle, 200);
    assert!(result.is_ok(), "{result:?}");
    let savepoints = dir.path().join("savepoints");
    let files = || {
        let mut found = Vec::new();
        for sp in std::fs::read_dir(&savepoints)
            .into_iter()
            .flatten()
            .flatten()
        {
            found.push(sp.path());
            for f in std::fs::read_dir(sp.path()).into_iter().flatten().flatten() {
                found.push(f.path());
            }
        }
        found
    };
    let started = std::time::Instant::now();
    while !files().is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(files(), Vec::<std::path::PathBuf>::new());
}
