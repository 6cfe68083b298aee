//! Bad input of every kind: a one-line error naming what and where, the documented exit
//! code, never a panic.

mod common;

use common::*;

const PATH_COMMANDS: [&[&str]; 5] = [
    &["summary"],
    &["verify"],
    &["entries", "--uid", "counter", "--state", "count"],
    &["convert", "--out", "/nonexistent-state-dump-out"],
    &["diff"],
];

/// Runs every command that takes a PATH on `path`.
fn all_commands(path: &str) -> Vec<Run> {
    PATH_COMMANDS
        .iter()
        .map(|c| {
            let mut args: Vec<&str> = vec![c[0], path];
            if c[0] == "diff" {
                args.push(path);
            }
            args.extend_from_slice(&c[1..]);
            run(&args)
        })
        .collect()
}

#[test]
fn an_empty_directory_is_not_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    for r in all_commands(s(dir.path())) {
        r.assert_error(2, &["not a snapshot", "_metadata", s(dir.path())]);
    }
    // An empty chk-<id> directory too (an incomplete checkpoint).
    let chk = dir.path().join("job").join("chk-4");
    std::fs::create_dir_all(&chk).unwrap();
    for r in all_commands(s(&chk)) {
        r.assert_error(2, &["not a snapshot", s(&chk)]);
    }
}

#[test]
fn a_missing_path_and_a_random_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    for r in all_commands(s(&missing)) {
        r.assert_error(2, &["not a snapshot", s(&missing)]);
    }
    let random = dir.path().join("random.bin");
    std::fs::write(
        &random,
        (0..1000u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    for r in all_commands(s(&random)) {
        r.assert_error(2, &["not a snapshot", s(&random)]);
    }
    // Random bytes named _metadata: not a cairn manifest.
    let sp = dir.path().join("sp");
    std::fs::create_dir(&sp).unwrap();
    std::fs::copy(&random, sp.join("_metadata")).unwrap();
    for r in all_commands(s(&sp)) {
        r.assert_error(2, &["not a cairn manifest", s(&sp.join("_metadata"))]);
    }
    // Empty and tiny _metadata files: truncated manifests.
    for len in [0usize, 1, 20, 31] {
        std::fs::write(sp.join("_metadata"), vec![0u8; len]).unwrap();
        run(&["verify", s(&sp)]).assert_error(
            1,
            &["corrupt manifest", "truncated", s(&sp.join("_metadata"))],
        );
    }
}

#[test]
fn every_truncation_and_bit_flip_of_the_golden_manifest_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp");
    copy_dir(&vectors().join("savepoint"), &sp);
    let good = std::fs::read(sp.join("_metadata")).unwrap();
    // A sample of cuts and flips (every byte would take minutes of process spawns).
    for at in (0..good.len()).step_by(97) {
        std::fs::write(sp.join("_metadata"), &good[..at]).unwrap();
        let r = run(&["verify", s(&sp)]);
        assert!(r.code == 1 || r.code == 2, "cut {at}: {r:?}");
        r.assert_error(r.code, &[s(&sp.join("_metadata"))]);
        let mut flipped = good.clone();
        flipped[at] ^= 0x04;
        std::fs::write(sp.join("_metadata"), &flipped).unwrap();
        let r = run(&["verify", s(&sp)]);
        assert!(r.code == 1 || r.code == 2, "flip {at}: {r:?}");
        r.assert_error(r.code, &[s(&sp.join("_metadata"))]);
    }
}

#[test]
fn unknown_operator_state_and_key_group_are_usage_errors() {
    let sp = vectors().join("savepoint");
    run(&["entries", s(&sp), "--uid", "nope", "--state", "count"])
        .assert_error(2, &["no operator uid=nope", "counter, source"]);
    run(&["entries", s(&sp), "--uid", "counter", "--state", "nope"])
        .assert_error(2, &["no keyed state nope", "count, events, tags"]);
    run(&[
        "entries",
        s(&sp),
        "--uid",
        "counter",
        "--state",
        "count",
        "--key-group",
        "8",
    ])
    .assert_error(2, &["key group 8 is out of range"]);
    // clap's own usage errors exit 2 too.
    let r = run(&["entries", s(&sp)]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = run(&["frobnicate"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = run(&["--help"]);
    assert_eq!(r.code, 0);
    for cmd in [
        "summary", "entries", "verify", "diff", "files", "gc", "convert",
    ] {
        assert!(r.stdout.contains(cmd), "{cmd}: {}", r.stdout);
    }
}

#[test]
fn object_store_urls_that_are_not_built_in() {
    // s3:// is built in (tests/s3.rs); GCS and Azure are not in this build.
    for url in ["gs://bucket/job/chk-3", "gs://bucket/savepoints/sp-1"] {
        run(&["summary", url])
            .assert_error(2, &["not built in", "feature `gcp`", "path=gs://bucket/"]);
    }
    run(&["gc", "az://container/job"]).assert_error(2, &["not built in", "feature `azure`"]);
    run(&["summary", "ftp://host/x"]).assert_error(2, &["cannot open", "ftp://host/x"]);
}

#[test]
fn a_checkpoint_manifest_outside_a_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = cairn_storage::CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::new(1);
    let mut model = Model::new();
    batch(&mut job, &mut model, 0, 10);
    job.checkpoint(&storage, 1, false);
    let elsewhere = dir.path().join("copied");
    copy_dir(&root.join("chk-1"), &elsewhere);
    run(&["summary", s(&elsewhere)]).assert_error(2, &["checkpoint manifest", "chk-<id>"]);
    // ROOT commands refuse a checkpoint directory and a file.
    run(&["gc", s(&root.join("chk-1"))]).assert_error(2, &["is a checkpoint directory"]);
    run(&["files", s(&root.join("chk-1").join("_metadata"))]).assert_error(2, &["not a directory"]);
    run(&["gc", s(&dir.path().join("none"))]).assert_error(2, &["cannot open"]);
    assert!(
        !dir.path().join("none").exists(),
        "gc must not create the directory"
    );
    run(&["gc", s(&root), "--retain", "0"]).assert_error(2, &["--retain must be at least 1"]);
}

#[test]
fn a_job_directory_given_for_a_snapshot_names_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = cairn_storage::CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::new(1);
    let mut model = Model::new();
    batch(&mut job, &mut model, 0, 10);
    job.checkpoint(&storage, 1, false);
    batch(&mut job, &mut model, 10, 10);
    job.checkpoint(&storage, 2, false);
    let newest = root.join("chk-2");
    for r in all_commands(s(&root)) {
        r.assert_error(
            2,
            &[
                "a job's checkpoint directory",
                "completed: chk-1, chk-2",
                s(&newest),
            ],
        );
    }
}
