//! `files` and `gc`: which checkpoints reference which shared files; `gc --dry-run` lists
//! exactly what `gc` deletes; `gc` never deletes a file a retained checkpoint references,
//! even when crashes interrupt it.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use cairn_core::FileArea;
use cairn_storage::fault::{CrashPoint, FaultyObjectStore};
use cairn_storage::CheckpointStorage;
use common::*;
use serde_json::Value;

/// Five incremental checkpoints (1 full-size), an orphan shared file, an incomplete old
/// checkpoint directory; returns the root.
fn job_dir(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("job");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::new(2);
    let mut model = Model::new();
    for id in 1..=5u64 {
        batch(
            &mut job,
            &mut model,
            id * 100,
            if id == 1 { 300 } else { 4 },
        );
        job.checkpoint(&storage, id, true);
    }
    job.savepoint(&root.join("sp-6"), 6);
    std::fs::write(root.join("shared").join("orphan.state"), b"left by a crash").unwrap();
    std::fs::create_dir_all(root.join("chk-0")).unwrap();
    std::fs::write(root.join("chk-0").join("x.state"), b"incomplete").unwrap();
    root
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

/// Every file on disk under `root`, relative.
fn on_disk(root: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, p: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.insert(
                    path.strip_prefix(base)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn files_lists_references_and_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let root = job_dir(dir.path());
    let r = run(&["files", s(&root), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let chks = j["checkpoints"].as_array().unwrap();
    assert_eq!(chks.len(), 6);
    assert_eq!(chks[0]["status"], "incomplete");
    for c in &chks[1..] {
        let id = c["id"].as_u64().unwrap();
        let m = storage.load(id).unwrap();
        let shared: BTreeSet<String> = m
            .files()
            .filter(|f| f.area == FileArea::Shared)
            .map(|f| f.name.clone())
            .collect();
        assert_eq!(
            strings(&c["shared"]).into_iter().collect::<BTreeSet<_>>(),
            shared
        );
        for name in shared {
            let e = j["shared"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == name.as_str())
                .unwrap();
            assert!(e["referenced_by"]
                .as_array()
                .unwrap()
                .contains(&Value::from(id)));
        }
    }
    assert_eq!(strings(&j["orphans"]), ["orphan.state"]);
    assert_eq!(j["savepoints"][0]["id"], 6);
    assert_eq!(j["savepoints"][0]["path"], s(&root.join("sp-6")));
    // Checkpoint 1's files are shared by later checkpoints.
    assert!(j["shared"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["referenced_by"].as_array().unwrap().len() > 1));
    let h = run(&["files", s(&root)]);
    assert!(
        h.stdout.contains("orphan") && h.stdout.contains("SHARED FILE"),
        "{}",
        h.stdout
    );
}

#[test]
fn dry_run_lists_exactly_what_gc_deletes_and_retained_checkpoints_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let root = job_dir(dir.path());
    // What a job killed during a put of a shared file leaves (object_store's staging name).
    std::fs::write(root.join("shared/orphan.state#1"), b"torn").unwrap();
    let before = on_disk(&root);
    let dry = run(&[
        "gc",
        s(&root),
        "--retain",
        "2",
        "--min-age",
        "0",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(on_disk(&root), before, "dry run deleted something");
    let planned = strings(&dry.json()["deleted"]);
    assert!(
        planned.contains(&"chk-1/".to_string()) && planned.contains(&"chk-0/".to_string()),
        "{planned:?}"
    );
    assert!(planned.contains(&"shared/orphan.state".to_string()));
    assert!(planned.contains(&"shared/orphan.state#1".to_string()));
    let human = run(&[
        "gc",
        s(&root),
        "--retain",
        "2",
        "--min-age",
        "0",
        "--dry-run",
    ]);
    assert!(human.stdout.contains("would delete"), "{}", human.stdout);
    let real = run(&["gc", s(&root), "--retain", "2", "--min-age", "0", "--json"]);
    assert_eq!(real.code, 0, "{real:?}");
    assert_eq!(strings(&real.json()["deleted"]), planned);
    assert_eq!(real.json()["retained"], serde_json::json!([4, 5]));
    // What is gone is exactly what was planned.
    let after = on_disk(&root);
    let gone: BTreeSet<String> = before.difference(&after).cloned().collect();
    let planned_files: BTreeSet<String> = before
        .iter()
        .filter(|f| {
            planned.iter().any(|p| {
                if p.ends_with('/') {
                    f.starts_with(p.as_str())
                } else {
                    *f == p
                }
            })
        })
        .cloned()
        .collect();
    assert_eq!(gone, planned_files);
    for id in [4, 5] {
        let v = run(&["verify", s(&root.join(format!("chk-{id}")))]);
        assert_eq!(v.code, 0, "{v:?}");
    }
    // Nothing more to do.
    let again = run(&["gc", s(&root), "--retain", "2", "--min-age", "0", "--json"]);
    assert_eq!(again.json()["deleted"], serde_json::json!([]));
    let f = run(&["files", s(&root), "--json"]);
    assert_eq!(f.json()["orphans"], serde_json::json!([]));
}

#[test]
fn by_default_gc_keeps_young_files_a_running_job_may_be_writing() {
    let dir = tempfile::tempdir().unwrap();
    let root = job_dir(dir.path());
    // The fixture's orphan and incomplete chk-0 were just written: with the default
    // minimum age (1h) they stay, listed; subsumed checkpoints and their files go.
    let before = on_disk(&root);
    let r = run(&["gc", s(&root), "--retain", "2", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(strings(&j["kept_young"]), ["shared/orphan.state"], "{j}");
    assert_eq!(j["kept_incomplete"], serde_json::json!([0]), "{j}");
    assert_eq!(j["min_age_s"], 3600, "{j}");
    let deleted = strings(&j["deleted"]);
    assert!(deleted.contains(&"chk-1/".to_string()), "{deleted:?}");
    assert!(
        !deleted
            .iter()
            .any(|d| d == "chk-0/" || d.contains("orphan")),
        "{deleted:?}"
    );
    let after = on_disk(&root);
    assert!(after.contains("shared/orphan.state") && after.contains("chk-0/x.state"));
    assert!(after.len() < before.len());
    let human = run(&["gc", s(&root), "--retain", "2", "--dry-run"]);
    assert!(
        human.stdout.contains("younger than --min-age 3600s")
            && human.stdout.contains("kept incomplete chk-0"),
        "{}",
        human.stdout
    );
    // Older than a minimum age of one second: they go.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let r = run(&["gc", s(&root), "--retain", "2", "--min-age", "1s", "--json"]);
    let deleted = strings(&r.json()["deleted"]);
    assert_eq!(deleted, ["chk-0/", "shared/orphan.state"], "{r:?}");
    let bad = run(&["gc", s(&root), "--min-age", "1x"]);
    assert!(
        bad.code == 2 && bad.stderr.contains("--min-age") && bad.stderr.contains("unknown unit"),
        "{bad:?}"
    );
}

/// On a local directory, the running job's lock tells gc that a job writes it: gc says so,
/// keeps what is young, and refuses `--min-age 0`, which would delete the files of the job's
/// checkpoints in flight. Once the job has ended, `--min-age 0` goes ahead.
#[test]
fn gc_knows_from_the_lock_whether_a_job_writes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = job_dir(dir.path());
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let job = storage.lock_for_job("pid 4242 on host h").unwrap();
    assert!(job.is_locked());
    let before = on_disk(&root);

    let refused = run(&["gc", s(&root), "--retain", "2", "--min-age", "0"]);
    assert!(
        refused.code == 2
            && refused.stderr.contains("a job is writing")
            && refused.stderr.contains("pid 4242 on host h")
            && refused.stderr.contains("--min-age 0"),
        "{refused:?}"
    );
    assert_eq!(on_disk(&root), before, "a refused gc deleted something");

    let dry = run(&[
        "gc",
        s(&root),
        "--retain",
        "2",
        "--min-age",
        "0",
        "--dry-run",
    ]);
    assert!(
        dry.code == 0
            && dry
                .stdout
                .contains("a job is writing this directory (pid 4242"),
        "{dry:?}"
    );
    let young = run(&["gc", s(&root), "--retain", "2", "--json"]);
    assert_eq!(young.code, 0, "{young:?}");
    let j = young.json();
    assert_eq!(j["job_running"], "pid 4242 on host h", "{j}");
    assert_eq!(strings(&j["kept_young"]), ["shared/orphan.state"], "{j}");

    drop(job);
    let free = run(&["gc", s(&root), "--retain", "2", "--min-age", "0", "--json"]);
    assert_eq!(free.code, 0, "{free:?}");
    let j = free.json();
    assert!(j.get("job_running").is_none(), "{j}");
    assert_eq!(
        strings(&j["deleted"]),
        ["chk-0/", "shared/orphan.state"],
        "{j}"
    );
}

#[test]
fn gc_interrupted_by_a_crash_at_every_write_never_loses_a_retained_file() {
    let dir = tempfile::tempdir().unwrap();
    let template = job_dir(dir.path());
    let mut n = 1u64;
    loop {
        // A fresh copy of the directory, and a GC whose n-th write crashes.
        let root = dir.path().join(format!("run-{n}"));
        copy_tree(&template, &root);
        let faulty = std::sync::Mutex::new(None);
        let storage = CheckpointStorage::open_wrapped(s(&root), |inner| {
            let f = FaultyObjectStore::new(inner);
            f.crash_at_write(
                n,
                if n.is_multiple_of(2) {
                    CrashPoint::AfterWrite
                } else {
                    CrashPoint::BeforeWrite
                },
            );
            *faulty.lock().unwrap() = Some(f.clone());
            Arc::new(f)
        })
        .unwrap();
        let job = state_dump::JobRoot {
            location: s(&root).to_string(),
            storage,
        };
        let result = state_dump::gc(&job, 2, std::time::Duration::ZERO, false);
        let crashed = faulty.lock().unwrap().as_ref().unwrap().is_crashed();
        // Whatever happened, the retained checkpoints verify, and a rerun finishes the job
        // with what a dry run then lists.
        for id in [4, 5] {
            let v = run(&["verify", s(&root.join(format!("chk-{id}")))]);
            assert_eq!(v.code, 0, "crash at write {n}: {v:?}");
        }
        let dry = run(&[
            "gc",
            s(&root),
            "--retain",
            "2",
            "--min-age",
            "0",
            "--dry-run",
            "--json",
        ]);
        let rerun = run(&["gc", s(&root), "--retain", "2", "--min-age", "0", "--json"]);
        assert_eq!(
            dry.json()["deleted"],
            rerun.json()["deleted"],
            "crash at write {n}"
        );
        for id in [4, 5] {
            assert_eq!(run(&["verify", s(&root.join(format!("chk-{id}")))]).code, 0);
        }
        assert_eq!(
            run(&["files", s(&root), "--json"]).json()["orphans"],
            serde_json::json!([])
        );
        if !crashed {
            assert!(result.is_ok(), "{result:?}");
            assert!(n > 3, "the GC should have several writes");
            break;
        }
        assert!(result.is_err(), "crash at write {n} went unnoticed");
        n += 1;
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
