//! Savepoints in the backend's native format (Flink's `--type native`): under RocksDB a
//! savepoint is a RocksDB checkpoint uploaded whole into the savepoint's own directory. It
//! is self-contained (it can be moved), restores under RocksDB at any parallelism, is
//! refused under the heap backend with the way out (a canonical savepoint, or
//! `state-dump convert`), and the converted copy restores anywhere. The heap backend has no
//! other format and writes canonical files.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_core::{FileArea, KeyedData};
use cairn_format::Manifest;
use cairn_runtime::{
    Job, JobConfig, JobHandle, RestoreFrom, SavepointFormat, SnapshotMode, StateBackendConfig,
};
use common::*;

/// Lets the running word count read a while, then stops it with a savepoint in `format`
/// (`None`: the configured one); returns the savepoint's path.
fn stop_with(handle: JobHandle, format: Option<SavepointFormat>) -> String {
    std::thread::sleep(Duration::from_millis(400));
    let savepoint = match format {
        Some(f) => handle.stop_with_savepoint_as(None, f),
        None => handle.stop_with_savepoint(None),
    }
    .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.savepoint.as_deref(), Some(savepoint.as_str()));
    savepoint
}

fn first_run(input: &Path, output: &Path, cfg: JobConfig) -> JobHandle {
    Job::new(wordcount(input, output, None, None), cfg)
        .start()
        .expect("start")
}

fn manifest(savepoint: &str) -> Manifest {
    cairn_storage::open_savepoint(savepoint)
        .expect("open the savepoint")
        .0
}

/// The keyed handles of the `count` operator: every one native, every file private.
fn assert_native(m: &Manifest) {
    let count = m.operator("count").expect("the count operator");
    assert!(!count.subtasks.is_empty());
    for st in &count.subtasks {
        let h = st.keyed.as_ref().expect("keyed state");
        let KeyedData::RocksNative { files } = &h.data else {
            panic!("not native: {h:?}");
        };
        assert!(files.iter().any(|f| f.local_name == "CURRENT"), "{files:?}");
        // The memtables were flushed: the state is in SST files, and what is left of a
        // log is at most the few bytes written after the flush began.
        let bytes = |ext: &str| -> u64 {
            files
                .iter()
                .filter(|f| f.local_name.ends_with(ext))
                .map(|f| f.file.size)
                .sum()
        };
        assert!(bytes(".sst") > 0, "{files:?}");
        assert!(bytes(".log") < 4096, "{files:?}");
        for f in files {
            assert_eq!(f.file.area, FileArea::Private, "{f:?}");
        }
    }
}

/// The keyed handles of the `count` operator: every one canonical.
fn assert_canonical(m: &Manifest) {
    let count = m.operator("count").expect("the count operator");
    for st in &count.subtasks {
        let h = st.keyed.as_ref().expect("keyed state");
        assert!(
            matches!(h.data, KeyedData::Canonical { .. }),
            "not canonical: {h:?}"
        );
    }
}

fn finish(
    dir: &Path,
    input: &Path,
    output: &Path,
    savepoint: &str,
    backend: StateBackendConfig,
    parallelism: u32,
    checkpoints: &str,
) -> cairn_runtime::Result<cairn_runtime::JobResult> {
    let mut cfg = config(dir, 50);
    cfg.parallelism = parallelism;
    cfg.backend = backend;
    cfg.restore = Some(RestoreFrom::Path(savepoint.to_string()));
    cfg.checkpoint_dir = dir.join(checkpoints).display().to_string();
    Job::new(wordcount(input, output, None, None), cfg).run()
}

#[test]
fn a_native_savepoint_moves_and_restores_under_rocksdb_at_another_parallelism() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 31);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = Some(4000);
    // The configured format serves a stop that names none (as a signal's does).
    cfg.savepoint_format = SavepointFormat::Native;
    let savepoint = stop_with(first_run(&input, &output, cfg), None);
    let m = manifest(&savepoint);
    assert_native(&m);
    assert!(m.files().all(|f| f.area == FileArea::Private));

    // Self-contained: moved elsewhere, it restores at parallelism 3 and the job finishes.
    let moved = dir.path().join("moved-savepoint");
    std::fs::rename(&savepoint, &moved).expect("move the savepoint");
    let moved = moved.display().to_string();
    let second = finish(
        dir.path(),
        &input,
        &output,
        &moved,
        StateBackendConfig::rocksdb(),
        3,
        "checkpoints-2",
    )
    .expect("second run");
    assert_eq!(
        second.restored_from.as_deref(),
        Some(format!("savepoint {moved}").as_str())
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// Restored at the same parallelism, the job's incremental checkpoints must not lean on the
/// savepoint's files: the savepoint is deleted after the restored job's first checkpoint,
/// and a restart from that checkpoint still finishes the job.
#[test]
fn checkpoints_after_a_native_savepoint_restore_stand_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 37);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = Some(4000);
    let savepoint = stop_with(
        first_run(&input, &output, cfg),
        Some(SavepointFormat::Native),
    );
    assert_native(&manifest(&savepoint));

    let checkpoints = dir.path().join("checkpoints-2");
    let mut cfg = config(dir.path(), 50);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = Some(4000);
    cfg.restore = Some(RestoreFrom::Path(savepoint.clone()));
    cfg.checkpoint_dir = checkpoints.display().to_string();
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    let handle = Job::new(wordcount(&input, &output, None, None), cfg)
        .start()
        .expect("start");
    let second = cancel_after_checkpoints(handle, 500, &checkpoints, 1).expect("second run");
    assert!(
        second.cancelled && second.checkpoints_completed >= 1,
        "{second:?}"
    );
    std::fs::remove_dir_all(&savepoint).expect("delete the savepoint");

    let mut cfg = config(dir.path(), 50);
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.restore = Some(RestoreFrom::Latest);
    cfg.checkpoint_dir = checkpoints.display().to_string();
    let third = Job::new(wordcount(&input, &output, None, None), cfg)
        .run()
        .expect("third run");
    assert!(
        third
            .restored_from
            .as_deref()
            .is_some_and(|r| r.starts_with("checkpoint ")),
        "{third:?}"
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// Under the heap backend a native savepoint is refused, naming the way out; converted to
/// a canonical one by `state-dump convert`, it restores there. The refused start commits
/// nothing.
#[test]
fn a_native_savepoint_is_refused_under_the_heap_backend_and_converts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 400, 41);
    let output = dir.path().join("out");
    let mut cfg = config(dir.path(), 50);
    cfg.parallelism = 2;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = Some(4000);
    let savepoint = stop_with(
        first_run(&input, &output, cfg),
        Some(SavepointFormat::Native),
    );
    let committed = read_output(&output);

    let err = finish(
        dir.path(),
        &input,
        &output,
        &savepoint,
        StateBackendConfig::HashMap,
        2,
        "checkpoints-heap",
    )
    .expect_err("a native savepoint under the heap backend")
    .to_string();
    for part in [
        "a native RocksDB snapshot (an incremental checkpoint or a native savepoint) restores only under the rocksdb backend",
        "canonical savepoint",
        "state-dump convert",
        "uid=count",
    ] {
        assert!(err.contains(part), "missing {part:?}: {err}");
    }
    assert_eq!(
        read_output(&output),
        committed,
        "the refused start wrote output"
    );

    // state-dump verifies it and converts it; the copy is canonical.
    let snapshot = state_dump::open_snapshot(&savepoint).expect("open with state-dump");
    let report = state_dump::verify(&snapshot, &state_dump::NoProgress).expect("verify");
    assert!(report.is_clean(), "{}", report.render());
    assert!(report.entries > 0, "{}", report.render());
    let converted = dir.path().join("converted").display().to_string();
    state_dump::convert(&snapshot, &converted, &state_dump::NoProgress).expect("convert");
    assert_canonical(&manifest(&converted));
    finish(
        dir.path(),
        &input,
        &output,
        &converted,
        StateBackendConfig::HashMap,
        3,
        "checkpoints-heap-2",
    )
    .expect("the converted savepoint under the heap backend");
    check_exactly_once(&expected, &read_output(&output));
}

/// The changelog backend's savepoints are its inner backend's: native under RocksDB, and
/// they restore under the changelog over RocksDB. The heap backend writes canonical files
/// when asked for its native format, and those restore under RocksDB.
#[test]
fn changelog_savepoints_are_the_inner_backends_and_the_heap_has_one_format() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 8000, 400, 43);
    let output = dir.path().join("out");
    let run = |parallelism: u32, backend: StateBackendConfig, from: Option<&str>, n: u32| {
        let mut cfg = config(dir.path(), 50);
        cfg.parallelism = parallelism;
        cfg.checkpoint.snapshot_mode = SnapshotMode::Changelog;
        cfg.backend = backend;
        cfg.records_per_second = Some(4000);
        cfg.restore = from.map(|p| RestoreFrom::Path(p.to_string()));
        cfg.checkpoint_dir = dir
            .path()
            .join(format!("checkpoints-{n}"))
            .display()
            .to_string();
        first_run(&input, &output, cfg)
    };
    let rocks = StateBackendConfig::rocksdb;
    let native = stop_with(run(1, rocks(), None, 1), Some(SavepointFormat::Native));
    assert_native(&manifest(&native));
    let canonical = stop_with(
        run(2, rocks(), Some(&native), 2),
        Some(SavepointFormat::Canonical),
    );
    assert_canonical(&manifest(&canonical));
    let heap = stop_with(
        run(2, StateBackendConfig::HashMap, Some(&canonical), 3),
        Some(SavepointFormat::Native),
    );
    assert_canonical(&manifest(&heap));
    finish(
        dir.path(),
        &input,
        &output,
        &heap,
        rocks(),
        // Not 3: one source subtask of the runs at 2 has finished (its file is read by
        // the other), and a finished operator restores at its own parallelism only.
        2,
        "checkpoints-4",
    )
    .expect("last run");
    check_exactly_once(&expected, &read_output(&output));
}
