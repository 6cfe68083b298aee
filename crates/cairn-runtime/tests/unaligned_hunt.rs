//! A hunt over unaligned checkpoints and at-least-once mode, as an experienced Flink user
//! expects them to behave: in-flight records restored at the same and at another
//! parallelism (keyed and rebalanced exchanges, both backends, with failures), the
//! aligned-checkpoint timeout, a channel that ended while the others still bring barriers,
//! at-least-once under failures and backpressure, savepoints of an unaligned job (always
//! aligned, no in-flight records, restorable under the other backend), and damaged
//! channel state (an error that names what is wrong, never a panic or silent loss).

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_runtime::{
    CheckpointRetention, CheckpointingMode, Job, JobConfig, RestoreFrom, StateBackendConfig,
    INFLIGHT_STATE,
};
use common::unaligned::*;
use common::{check_at_least_once, check_continues, check_exactly_once, config, read_output};

/// A run of the generator jobs: small batches and deep channels (many records in flight),
/// checkpoints every 30 ms, retained on cancellation, restarts 10 ms apart.
fn hunt_config(dir: &Path, run: &str, parallelism: u32) -> JobConfig {
    let mut cfg = config(dir, 30);
    cfg.parallelism = parallelism;
    cfg.batch_size = 8;
    cfg.channel_capacity = 64;
    cfg.checkpoint.unaligned = true;
    cfg.checkpoint.tolerable_failures = 100;
    cfg.checkpoint.retention = CheckpointRetention::RetainOnCancellation;
    cfg.checkpoint_dir = dir.join(run).display().to_string();
    cfg.restart.max_restarts = 10;
    cfg.restart.delay = Duration::from_millis(10);
    cfg
}

fn backend(rocksdb: bool) -> StateBackendConfig {
    if rocksdb {
        StateBackendConfig::rocksdb()
    } else {
        StateBackendConfig::HashMap
    }
}

const GEN: Gen = Gen {
    total: 6000,
    keys: 150,
    seed: 41,
};

/// The generator of the tests that restore a running job's snapshot at another
/// parallelism: long enough that no source subtask ends before the snapshot, even on a
/// loaded machine (a snapshot in which some subtasks of the source had finished restores
/// only at its own parallelism; with [`GEN`], about one run in eight failed so while a
/// build ran on both cores).
const LONG: Gen = Gen {
    total: 30_000,
    ..GEN
};

/// Which exchange holds the in-flight records.
#[derive(Clone, Copy, Debug)]
enum Exchange {
    /// `key_by` into the slow keyed stage (`count`): union on restore, kept by key group.
    Keyed,
    /// `rebalance` into a slow non-keyed stage (`slow`): split on restore.
    Rebalance,
}

fn graph(
    exchange: Exchange,
    gen: Gen,
    output: &Path,
    delay: Duration,
    fail: FailEvery<(u64, u64)>,
) -> cairn_runtime::JobGraph {
    match exchange {
        Exchange::Keyed => keyed_graph(gen.source(), output, delay, fail),
        Exchange::Rebalance => rebalance_graph(gen, output, delay, fail),
    }
}

/// Runs at `old` parallelism until a checkpoint holds in-flight records, cancels, then
/// restores that checkpoint at `new` parallelism (the second run also slow and unaligned,
/// failing at `failures`) and checks that the committed output of both runs is exactly
/// once.
fn restore_inflight(exchange: Exchange, rocksdb: bool, old: u32, new: u32, failures: Vec<u64>) {
    restore_inflight_with(exchange, rocksdb, old, new, failures, |_| {});
}

/// [`restore_inflight`] with the configuration of both runs changed by `tune`.
fn restore_inflight_with(
    exchange: Exchange,
    rocksdb: bool,
    old: u32,
    new: u32,
    failures: Vec<u64>,
    tune: impl Fn(&mut JobConfig),
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", old);
    cfg.backend = backend(rocksdb);
    tune(&mut cfg);
    let delay = Duration::from_micros(150);
    let first_graph = graph(exchange, LONG, &output, delay, FailEvery::at(Vec::new()));
    let (first, manifest) = run_until_inflight(first_graph, &cfg, 1);
    let manifest =
        manifest.unwrap_or_else(|| panic!("no checkpoint with in-flight records: {first:?}"));
    let held = inflight_by_uid(&manifest);
    let head = match exchange {
        Exchange::Keyed => "count",
        Exchange::Rebalance => "slow",
    };
    // Only the first operator after an exchange holds in-flight records (both `count` and
    // `slow` are, in the rebalanced job).
    assert!(
        held.contains_key(head) && held.keys().all(|uid| uid == "count" || uid == "slow"),
        "in-flight records on {held:?}, expected on {head}"
    );
    assert!(first.cancelled, "{first:?}");

    cfg.parallelism = new;
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.records_per_second = Some(30_000);
    let fail = FailEvery::at(failures.clone());
    let seen = fail.seen.clone();
    let second_graph = graph(exchange, LONG, &output, Duration::from_micros(20), fail);
    let second = Job::new(second_graph, cfg).run().expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    // Each failure that the records reached restarted the job once (how far they get
    // depends on where the restored checkpoint stands).
    let seen = seen.load(std::sync::atomic::Ordering::SeqCst);
    let reached = failures.iter().filter(|f| **f <= seen).count();
    assert!(
        reached > 0 || failures.is_empty(),
        "no failure was reached: {seen} records"
    );
    assert_eq!(second.restarts as usize, reached, "{second:?}");
    check_exactly_once(&LONG.expected(), &read_output(&output));
}

#[test]
fn keyed_inflight_hashmap_same_parallelism_2_with_failures() {
    restore_inflight(Exchange::Keyed, false, 2, 2, vec![500, 1500]);
}

#[test]
fn keyed_inflight_rocksdb_same_parallelism_3() {
    restore_inflight(Exchange::Keyed, true, 3, 3, Vec::new());
}

#[test]
fn keyed_inflight_hashmap_1_to_3() {
    restore_inflight(Exchange::Keyed, false, 1, 3, Vec::new());
}

#[test]
fn keyed_inflight_rocksdb_1_to_3_with_failures() {
    restore_inflight(Exchange::Keyed, true, 1, 3, vec![300, 1200]);
}

#[test]
fn keyed_inflight_rocksdb_3_to_2_with_failures() {
    restore_inflight(Exchange::Keyed, true, 3, 2, vec![700]);
}

#[test]
fn keyed_inflight_hashmap_3_to_2() {
    restore_inflight(Exchange::Keyed, false, 3, 2, Vec::new());
}

#[test]
fn keyed_inflight_hashmap_2_to_1_with_failures() {
    restore_inflight(Exchange::Keyed, false, 2, 1, vec![200, 1000]);
}

#[test]
fn keyed_inflight_rocksdb_2_to_1() {
    restore_inflight(Exchange::Keyed, true, 2, 1, Vec::new());
}

#[test]
fn keyed_inflight_rocksdb_changelog_2_to_3_with_failures() {
    restore_inflight_with(Exchange::Keyed, true, 2, 3, vec![400, 1400], |c| {
        c.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Changelog;
    });
}

#[test]
fn keyed_inflight_hashmap_full_snapshots_3_to_1_with_failures() {
    restore_inflight_with(Exchange::Keyed, false, 3, 1, vec![900], |c| {
        c.checkpoint.snapshot_mode = cairn_runtime::SnapshotMode::Full;
    });
}

/// Several unaligned checkpoints in flight at once (each task records the records of one
/// while the barrier of the next is queued behind it), through failures and a rescale.
#[test]
fn concurrent_unaligned_checkpoints_2_to_3_with_failures() {
    restore_inflight_with(Exchange::Keyed, false, 2, 3, vec![300, 800, 1300], |c| {
        c.checkpoint.interval = Some(Duration::from_millis(5));
        c.checkpoint.max_concurrent = 3;
    });
}

#[test]
fn rebalanced_inflight_hashmap_2_to_3_with_failures() {
    restore_inflight(Exchange::Rebalance, false, 2, 3, vec![400, 1300]);
}

#[test]
fn rebalanced_inflight_rocksdb_3_to_1() {
    restore_inflight(Exchange::Rebalance, true, 3, 1, Vec::new());
}

/// A barrier overtakes a deep channel: hundreds of records are stored in flight, and a
/// restore at twice the parallelism replays every one of them exactly once.
#[test]
fn a_barrier_overtakes_many_buffered_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 1);
    cfg.batch_size = 4;
    cfg.channel_capacity = 512;
    let slow_graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(300),
        FailEvery::at(Vec::new()),
    );
    let (first, manifest) = run_until_inflight(slow_graph, &cfg, 400);
    let manifest =
        manifest.unwrap_or_else(|| panic!("no checkpoint with 400 in-flight records: {first:?}"));
    assert!(
        inflight_records(&manifest) >= 400,
        "{:?}",
        inflight_by_uid(&manifest)
    );
    cfg.parallelism = 2;
    cfg.restore = Some(RestoreFrom::Latest);
    let fast = keyed_graph(
        GEN.source(),
        &output,
        Duration::ZERO,
        FailEvery::at(Vec::new()),
    );
    let second = Job::new(fast, cfg).run().expect("second run");
    assert!(second.restored_from.is_some(), "{second:?}");
    check_exactly_once(&GEN.expected(), &read_output(&output));
}

/// With `aligned_timeout`, checkpoints start aligned and a task whose alignment takes
/// longer switches to unaligned (in the middle of its alignment, with one channel blocked
/// at its barrier): the checkpoint then holds in-flight records and restores exactly once,
/// here at another parallelism and through failures.
#[test]
fn aligned_timeout_switches_to_unaligned_mid_alignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.checkpoint.aligned_timeout = Duration::from_millis(15);
    let slow_graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(200),
        FailEvery::at(Vec::new()),
    );
    let (first, manifest) = run_until_inflight(slow_graph, &cfg, 1);
    assert!(
        manifest.is_some(),
        "no checkpoint switched to unaligned: {first:?}"
    );
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.records_per_second = Some(30_000);
    let again = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(50),
        FailEvery::at(vec![400, 1200]),
    );
    let second = Job::new(again, cfg).run().expect("second run");
    assert_eq!(second.restarts, 2, "{second:?}");
    check_exactly_once(&GEN.expected(), &read_output(&output));
}

/// An aligned-checkpoint timeout longer than any alignment keeps every checkpoint aligned:
/// none stores in-flight records.
#[test]
fn aligned_timeout_longer_than_the_alignment_stores_no_inflight_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.checkpoint.aligned_timeout = Duration::from_secs(60);
    cfg.records_per_second = Some(20_000);
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::ZERO,
        FailEvery::at(vec![2000]),
    );
    let result = Job::new(graph, cfg).run().expect("job");
    assert!(result.checkpoints_completed >= 2, "{result:?}");
    assert_eq!(result.inflight_records, 0, "{result:?}");
    check_exactly_once(&GEN.expected(), &read_output(&output));
}

/// The generator whose subtask 0 reads nothing: its input ends at once, so its channel into
/// every keyed subtask ends while the other source still sends records and barriers.
fn half_ended_source() -> common::HookedGenerator {
    common::HookedGenerator::new(GEN.source()).on_init(|ctx| ctx.subtask.index == 0)
}

/// One input channel ended (its source finished) while the other still sends barriers:
/// unaligned checkpoints (and those that switch after an aligned timeout) still complete
/// with in-flight records, failures restore them, and the output is exactly once.
fn a_channel_ends_while_others_send_barriers(aligned_timeout: Duration, rocksdb: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.backend = backend(rocksdb);
    cfg.checkpoint.aligned_timeout = aligned_timeout;
    let graph = keyed_graph(
        half_ended_source(),
        &output,
        Duration::from_micros(150),
        FailEvery::at(vec![700, 2200]),
    );
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.restarts, 2, "{result:?}");
    assert!(result.checkpoints_completed >= 2, "{result:?}");
    assert!(result.inflight_records > 0, "{result:?}");
    check_exactly_once(&GEN.expected_where(|n| n % 2 == 1), &read_output(&output));
}

#[test]
fn a_channel_ends_while_others_send_unaligned_barriers_hashmap() {
    a_channel_ends_while_others_send_barriers(Duration::ZERO, false);
}

#[test]
fn a_channel_ends_while_others_send_barriers_that_time_out_rocksdb() {
    a_channel_ends_while_others_send_barriers(Duration::from_millis(10), true);
}

/// At-least-once never loses a record: through failures, a cancellation and a restore at
/// another parallelism (with failures again), every count of every key is committed; its
/// checkpoints store no in-flight records.
#[test]
fn at_least_once_never_loses_across_failures_and_a_rescaled_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.checkpoint.unaligned = false;
    cfg.checkpoint.mode = CheckpointingMode::AtLeastOnce;
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(150),
        FailEvery::at(vec![400, 1200]),
    );
    let handle = Job::new(graph, cfg.clone()).start().expect("start");
    let first = common::cancel_after_checkpoints(handle, 2500, Path::new(&cfg.checkpoint_dir), 2)
        .expect("first run");
    assert!(first.checkpoints_completed > 0, "{first:?}");
    assert_eq!(first.inflight_records, 0, "{first:?}");
    let storage =
        cairn_storage::CheckpointStorage::open(&cfg.checkpoint_dir).expect("open checkpoints");
    let latest = storage
        .latest_completed()
        .expect("list")
        .expect("a checkpoint");
    assert_eq!(inflight_records(&latest), 0);

    // A checkpoint restores under its own backend only: the second run keeps the heap
    // backend.
    cfg.parallelism = 3;
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.records_per_second = Some(30_000);
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(20),
        FailEvery::at(vec![300, 900]),
    );
    let second = Job::new(graph, cfg).run().expect("second run");
    assert_eq!(second.restarts, 2, "{second:?}");
    check_at_least_once(&GEN.expected(), &read_output(&output));
}

/// At-least-once checkpoints complete under backpressure (the barriers queue behind the
/// records, but no channel waits for another): none fails or times out.
#[test]
fn at_least_once_checkpoints_complete_under_backpressure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.checkpoint.unaligned = false;
    cfg.checkpoint.mode = CheckpointingMode::AtLeastOnce;
    cfg.checkpoint.interval = Some(Duration::from_millis(50));
    cfg.checkpoint.timeout = Duration::from_secs(5);
    cfg.checkpoint.tolerable_failures = 0;
    cfg.batch_size = 16;
    cfg.channel_capacity = 16;
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(250),
        FailEvery::at(Vec::new()),
    );
    let result = Job::new(graph, cfg).run().expect("job");
    assert_eq!(result.checkpoints_failed, 0, "{result:?}");
    assert!(result.checkpoints_completed >= 2, "{result:?}");
    assert_eq!(result.inflight_records, 0, "{result:?}");
    check_at_least_once(&GEN.expected(), &read_output(&output));
}

/// Waits (up to 20 s) until the job's newest checkpoint holds in-flight records: the job is
/// backpressured and its unaligned barriers overtake records.
fn wait_for_inflight(checkpoint_dir: &str) -> bool {
    let storage = cairn_storage::CheckpointStorage::open(checkpoint_dir).expect("storage");
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(10));
        if let Ok(Some(m)) = storage.latest_completed() {
            if inflight_records(&m) > 0 {
                return true;
            }
        }
    }
    false
}

/// A savepoint's operators hold no in-flight channel state.
fn assert_aligned_savepoint(path: &str) {
    let (manifest, _) = cairn_storage::open_savepoint(path).expect("open the savepoint");
    let inflight: Vec<&str> = manifest
        .operators
        .iter()
        .filter(|o| {
            o.subtasks
                .iter()
                .flat_map(|s| &s.operator_state)
                .any(|s| s.name == INFLIGHT_STATE)
        })
        .map(|o| o.uid.as_str())
        .collect();
    assert!(
        inflight.is_empty(),
        "{path}: in-flight state on {inflight:?}"
    );
}

/// A savepoint triggered on a backpressured job configured unaligned is aligned (no
/// in-flight records) and restores under the other backend at another parallelism, where
/// the counts go on from the savepoint's exactly once.
#[test]
fn triggered_savepoint_of_an_unaligned_job_is_aligned_and_restores_under_rocksdb() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let cfg = hunt_config(dir.path(), "checkpoints", 2);
    let graph = keyed_graph(
        LONG.source(),
        &output,
        Duration::from_micros(150),
        FailEvery::at(Vec::new()),
    );
    let handle = Job::new(graph, cfg.clone()).start().expect("start");
    assert!(
        wait_for_inflight(&cfg.checkpoint_dir),
        "no unaligned checkpoint held records"
    );
    let savepoint = handle.trigger_savepoint(None).expect("savepoint");
    handle.cancel();
    let first = handle.wait().expect("first run");
    assert!(first.inflight_records > 0, "{first:?}");
    assert_aligned_savepoint(&savepoint);

    let fork = dir.path().join("fork");
    let mut cfg = hunt_config(dir.path(), "checkpoints-fork", 3);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let graph = keyed_graph(
        LONG.source(),
        &fork,
        Duration::ZERO,
        FailEvery::at(vec![300]),
    );
    let second = Job::new(graph, cfg)
        .run()
        .expect("restored from the savepoint");
    assert_eq!(second.restarts, 1, "{second:?}");
    let out = read_output(&fork);
    assert!(!out.is_empty(), "nothing after the savepoint");
    check_continues(&LONG.expected(), &out, true);
}

/// Stop-with-savepoint on a backpressured RocksDB job configured unaligned is aligned too;
/// the job restored from it under the heap backend at another parallelism finishes the
/// output exactly once.
#[test]
fn stop_with_savepoint_of_an_unaligned_job_is_aligned_and_restores_under_hashmap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 3);
    cfg.backend = StateBackendConfig::rocksdb();
    // The sources must not have read all their input when the savepoint comes.
    cfg.records_per_second = Some(3000);
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(200),
        FailEvery::at(Vec::new()),
    );
    let handle = Job::new(graph, cfg.clone()).start().expect("start");
    assert!(
        wait_for_inflight(&cfg.checkpoint_dir),
        "no unaligned checkpoint held records"
    );
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    assert!(first.records < GEN.total, "{first:?}");
    assert_aligned_savepoint(&savepoint);

    let mut cfg = hunt_config(dir.path(), "checkpoints-2", 2);
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::ZERO,
        FailEvery::at(Vec::new()),
    );
    Job::new(graph, cfg)
        .run()
        .expect("restored from the savepoint");
    check_exactly_once(&GEN.expected(), &read_output(&output));
}

/// Damaged channel state: a checkpoint with in-flight records, changed on disk.
mod damaged_channel_state {
    use super::*;
    use cairn_core::Redistribution;
    use cairn_format::{decode_manifest, encode_manifest, Manifest};

    /// A retained unaligned checkpoint of the keyed job at parallelism 2 with in-flight
    /// records on `count`: its directory and manifest.
    fn checkpoint(dir: &Path) -> (std::path::PathBuf, Manifest) {
        checkpoint_of(dir, Exchange::Keyed)
    }

    /// [`checkpoint`] of the job with `exchange` (in-flight records on its head).
    fn checkpoint_of(dir: &Path, exchange: Exchange) -> (std::path::PathBuf, Manifest) {
        let output = dir.join("out");
        let cfg = hunt_config(dir, "checkpoints", 2);
        let graph = super::graph(
            exchange,
            GEN,
            &output,
            Duration::from_micros(150),
            FailEvery::at(Vec::new()),
        );
        let (first, manifest) = run_until_inflight(graph, &cfg, 1);
        let manifest = manifest.unwrap_or_else(|| panic!("no in-flight records: {first:?}"));
        let path = checkpoint_path(&cfg.checkpoint_dir, manifest.checkpoint_id);
        let meta = path.join("_metadata");
        let bytes = std::fs::read(&meta).expect("read the manifest");
        let read = decode_manifest(&bytes, &meta.display().to_string()).expect("decode");
        assert_eq!(read, manifest);
        (path, manifest)
    }

    /// Changes the in-flight state of `count` in the manifest with `change`, and rewrites it
    /// (a valid manifest with bad channel state).
    fn rewrite(path: &Path, m: Manifest, change: impl Fn(&mut cairn_core::OperatorStateSnapshot)) {
        rewrite_uid(path, m, "count", change)
    }

    /// [`rewrite`] of the in-flight state of `uid`.
    fn rewrite_uid(
        path: &Path,
        mut m: Manifest,
        uid: &str,
        change: impl Fn(&mut cairn_core::OperatorStateSnapshot),
    ) {
        let op = m
            .operators
            .iter_mut()
            .find(|o| o.uid == uid)
            .expect("the operator");
        let mut changed = 0;
        for s in op
            .subtasks
            .iter_mut()
            .flat_map(|s| s.operator_state.iter_mut())
        {
            if s.name == INFLIGHT_STATE {
                change(s);
                changed += 1;
            }
        }
        assert!(changed > 0, "no in-flight state to damage");
        let bytes = encode_manifest(&m).expect("encode");
        std::fs::write(path.join("_metadata"), bytes).expect("write the manifest");
    }

    /// Restores `path` at `parallelism`; the error it fails with (at once: a restart cannot
    /// cure it).
    fn restore_error(dir: &Path, path: &Path, parallelism: u32) -> String {
        let output = dir.join("restored");
        let mut cfg = hunt_config(dir, "checkpoints-restored", parallelism);
        cfg.restore = Some(RestoreFrom::Path(path.display().to_string()));
        let graph = keyed_graph(
            GEN.source(),
            &output,
            Duration::ZERO,
            FailEvery::at(Vec::new()),
        );
        let started = std::time::Instant::now();
        let err = Job::new(graph, cfg)
            .run()
            .expect_err("restoring damaged channel state must fail");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the restore failed only after {:?}",
            started.elapsed()
        );
        assert!(
            read_output(&output).is_empty(),
            "output committed from damaged state"
        );
        err.to_string()
    }

    #[test]
    fn a_flipped_bit_in_the_manifest_names_the_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = checkpoint(dir.path());
        let meta = path.join("_metadata");
        let mut bytes = std::fs::read(&meta).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&meta, bytes).expect("write");
        for p in [2, 3] {
            let msg = restore_error(dir.path(), &path, p);
            // The checkpoint's directory, the file in it, and where the damage is.
            let id = path.file_name().and_then(|n| n.to_str()).expect("chk-<id>");
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("path={id}/_metadata"))
                    && msg.contains("offset="),
                "{msg}"
            );
        }
    }

    #[test]
    fn a_truncated_inflight_record_names_the_operator_and_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, manifest) = checkpoint(dir.path());
        rewrite(&path, manifest, |s| {
            if let Some(e) = s.elements.last_mut() {
                e.truncate(e.len() / 2);
            }
        });
        for p in [2, 3] {
            let msg = restore_error(dir.path(), &path, p);
            assert!(
                msg.contains("in-flight records of operator count")
                    && msg.contains(&path.display().to_string())
                    && msg.contains("decode"),
                "{msg}"
            );
        }
    }

    #[test]
    fn an_inflight_record_with_trailing_bytes_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, manifest) = checkpoint(dir.path());
        rewrite(&path, manifest, |s| {
            if let Some(e) = s.elements.first_mut() {
                e.push(7);
            }
        });
        let msg = restore_error(dir.path(), &path, 2);
        assert!(msg.contains("in-flight records of operator count"), "{msg}");
    }

    #[test]
    fn inflight_records_of_another_type_name_both_types() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, manifest) = checkpoint(dir.path());
        rewrite(&path, manifest, |s| {
            s.codec.type_name = "alloc::string::String".into();
        });
        let msg = restore_error(dir.path(), &path, 3);
        assert!(
            msg.contains("in-flight records of operator count")
                && msg.contains("alloc::string::String")
                && msg.contains("u64"),
            "{msg}"
        );
    }

    /// Keyed in-flight records stored as split state (not union, as the runtime writes
    /// them) and restored at another parallelism: each new subtask would get a round-robin
    /// share and keep only its key groups' records, losing the rest. Either refused, or
    /// every record replayed: never lost.
    #[test]
    fn keyed_inflight_records_stored_as_split_state_are_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, manifest) = checkpoint(dir.path());
        let output = dir.path().join("out");
        rewrite(&path, manifest, |s| {
            assert_eq!(s.mode, Redistribution::Union);
            s.mode = Redistribution::Split;
        });
        let mut cfg = hunt_config(dir.path(), "checkpoints-restored", 3);
        cfg.restore = Some(RestoreFrom::Path(path.display().to_string()));
        let graph = keyed_graph(
            GEN.source(),
            &output,
            Duration::ZERO,
            FailEvery::at(Vec::new()),
        );
        match Job::new(graph, cfg).run() {
            Ok(_) => check_exactly_once(&GEN.expected(), &read_output(&output)),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("count"), "{msg}");
            }
        }
    }

    /// The reverse: rebalanced (non-keyed) in-flight records stored as union state were
    /// replayed by every new subtask: duplicates in an exactly-once job.
    #[test]
    fn rebalanced_inflight_records_stored_as_union_are_replayed_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, manifest) = checkpoint_of(dir.path(), Exchange::Rebalance);
        let output = dir.path().join("out");
        rewrite_uid(&path, manifest, "slow", |s| {
            assert_eq!(s.mode, Redistribution::Split);
            s.mode = Redistribution::Union;
        });
        let mut cfg = hunt_config(dir.path(), "checkpoints-restored", 3);
        cfg.restore = Some(RestoreFrom::Path(path.display().to_string()));
        let graph = rebalance_graph(GEN, &output, Duration::ZERO, FailEvery::at(Vec::new()));
        match Job::new(graph, cfg).run() {
            Ok(_) => check_exactly_once(&GEN.expected(), &read_output(&output)),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("slow"), "{msg}");
            }
        }
    }
}

/// A task replaying many restored in-flight records stops when another task fails: a
/// replay ran before the task loop looked at the cancellation flag, so every other subtask
/// replayed (running user code: here, counting) all its share before the restart could
/// begin, and a failure it hit meanwhile was lost with its attempt.
#[test]
fn a_long_inflight_replay_stops_when_another_task_fails() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("out");
    let mut cfg = hunt_config(dir.path(), "checkpoints", 2);
    cfg.batch_size = 4;
    cfg.channel_capacity = 512;
    let slow_graph = keyed_graph(
        GEN.source(),
        &output,
        Duration::from_micros(300),
        FailEvery::at(Vec::new()),
    );
    let (first, manifest) = run_until_inflight(slow_graph, &cfg, 600);
    let manifest =
        manifest.unwrap_or_else(|| panic!("no checkpoint with 600 in-flight records: {first:?}"));
    let inflight = inflight_records(&manifest) as u64;

    /// `FailEvery`, also noting how many records it had seen when a subtask started.
    #[derive(Clone)]
    struct Noting(FailEvery<(u64, u64)>, Arc<Mutex<Vec<u64>>>);
    impl cairn_runtime::Checkpointed for Noting {
        fn initialize_state(
            &mut self,
            _ctx: &mut cairn_runtime::InitContext<'_>,
        ) -> cairn_runtime::Result<()> {
            let seen = self.0.seen.load(Ordering::SeqCst);
            self.1.lock().expect("lock").push(seen);
            Ok(())
        }
    }
    impl cairn_runtime::ProcessFunction<(u64, u64), (u64, u64)> for Noting {
        fn process(
            &mut self,
            r: (u64, u64),
            out: &mut cairn_runtime::Collector<'_, (u64, u64)>,
        ) -> cairn_runtime::Result<()> {
            self.0.process(r, out)
        }
    }

    const FAIL_AT: u64 = 40;
    let fail = FailEvery::at(vec![FAIL_AT]);
    let inits = Arc::new(Mutex::new(Vec::new()));
    // Slow (1 ms a record) for the first part of the replay, fast after it.
    let processed = Arc::new(AtomicU64::new(0));
    let slow_until = 400;
    let counted = cairn_runtime::source("source", GEN.source())
        .key_by(|k: &u64| *k)
        .process("count", cairn_runtime::functions::Count::<u64, u64>::new());
    let graph = counted
        .map("slow", move |r: (u64, u64)| {
            if processed.fetch_add(1, Ordering::SeqCst) < slow_until {
                std::thread::sleep(Duration::from_millis(1));
            }
            r
        })
        .process("fail", Noting(fail, inits.clone()))
        .sink("sink", common::count_sink(&output));
    cfg.restore = Some(RestoreFrom::Latest);
    let second = Job::new(graph, cfg).run().expect("second run");
    assert_eq!(second.restarts, 1, "{second:?}");
    let inits = inits.lock().expect("lock").clone();
    let at_restart = inits.iter().copied().max().unwrap_or(0);
    // After the failure the other subtask may finish the record and the few before its
    // next look at the flag; not its whole share of the replay.
    assert!(
        at_restart < FAIL_AT + 40,
        "{} records were counted after the failure at {FAIL_AT} before the restart \
         ({inflight} in flight; starts saw {inits:?})",
        at_restart.saturating_sub(FAIL_AT)
    );
    check_exactly_once(&GEN.expected(), &read_output(&output));
}
