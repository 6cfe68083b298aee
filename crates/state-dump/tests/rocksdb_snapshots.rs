//! The binary on snapshots written by the RocksDB backend in every snapshot mode — native
//! incremental checkpoints (the default), canonical full checkpoints, canonical incremental
//! checkpoints (`native_incremental = false`) and savepoints: its JSON output is the state
//! that was written; `diff` sees exactly the changes, and none between the two backends'
//! snapshots of the same state; `convert` of a native and of a heap incremental checkpoint
//! gives savepoints that restore under both backends with identical state; damaged and
//! missing SST files are named.

mod common;

use std::path::{Path, PathBuf};

use cairn_core::{FileArea, KeyedData};
use cairn_format::Manifest;
use cairn_rocksdb::{RocksDbBackend, RocksDbOptions};
use cairn_storage::{open_savepoint, CheckpointStorage};
use common::*;

/// The same updates on both backends: checkpoint 1 full, 2 and 3 incremental (3 after
/// removing a word), at parallelism 2, into `<dir>/rocks` and `<dir>/heap`.
struct Fixture {
    dir: tempfile::TempDir,
    rocks_root: PathBuf,
    heap_root: PathBuf,
    /// Model after checkpoint 1, 2, 3.
    models: Vec<Model>,
    rocks: Job<RocksDbBackend>,
}

/// Native checkpoints that flush the memtables (`checkpoint_wal` off), so that every change
/// is in SST files, which the corruption tests damage.
fn fixture() -> Fixture {
    fixture_with(RocksDbOptions {
        checkpoint_wal: false,
        ..RocksDbOptions::default()
    })
}

fn fixture_with(options: RocksDbOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rocks_root = dir.path().join("rocks");
    let heap_root = dir.path().join("heap");
    let rs = CheckpointStorage::open(s(&rocks_root)).unwrap();
    let hs = CheckpointStorage::open(s(&heap_root)).unwrap();
    let mut rocks = Job::rocks(2, &dir.path().join("local"), options);
    let mut heap = Job::new(2);
    let (mut model, mut heap_model) = (Model::new(), Model::new());
    let mut models = Vec::new();
    batch(&mut rocks, &mut model, 0, 200);
    batch(&mut heap, &mut heap_model, 0, 200);
    rocks.checkpoint(&rs, 1, false);
    heap.checkpoint(&hs, 1, false);
    models.push(model.clone());
    batch(&mut rocks, &mut model, 200, 5);
    batch(&mut heap, &mut heap_model, 200, 5);
    rocks.checkpoint(&rs, 2, true);
    heap.checkpoint(&hs, 2, true);
    models.push(model.clone());
    rocks.remove(&mut model, "w7");
    heap.remove(&mut heap_model, "w7");
    batch(&mut rocks, &mut model, 205, 3);
    batch(&mut heap, &mut heap_model, 205, 3);
    rocks.checkpoint(&rs, 3, true);
    heap.checkpoint(&hs, 3, true);
    models.push(model.clone());
    assert_eq!(model, heap_model);
    Fixture {
        dir,
        rocks_root,
        heap_root,
        models,
        rocks,
    }
}

fn load(root: &Path, id: u64) -> Manifest {
    CheckpointStorage::open(s(root)).unwrap().load(id).unwrap()
}

fn words() -> Vec<String> {
    (0..40).map(|i| format!("w{i}")).collect()
}

/// The (path, file name) of a native SST file of checkpoint `id` in the shared area.
fn native_sst(root: &Path, id: u64) -> PathBuf {
    let m = load(root, id);
    let name = m
        .operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .filter_map(|st| st.keyed.as_ref())
        .find_map(|h| match &h.data {
            KeyedData::RocksNative { files } => files
                .iter()
                .find(|f| f.local_name.ends_with(".sst") && f.file.area == FileArea::Shared)
                .map(|f| f.file.name.clone()),
            _ => None,
        })
        .expect("a shared SST file");
    root.join("shared").join(name)
}

/// With the default options a native checkpoint holds the write-ahead log instead of
/// flushing: state-dump reads the state through it (opening the checkpoint replays it).
#[test]
fn entries_of_native_checkpoints_with_the_wal_are_the_written_state() {
    let f = fixture_with(RocksDbOptions::default());
    for i in [2u64, 3] {
        let chk = f.rocks_root.join(format!("chk-{i}"));
        let r = run(&["summary", s(&chk), "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["backend"], "rocksdb-native", "chk-{i}");
        assert_dump_matches(s(&chk), &f.models[i as usize - 1]);
        let logs = load(&f.rocks_root, i)
            .operators
            .iter()
            .flat_map(|o| o.subtasks.iter())
            .filter_map(|st| st.keyed.as_ref())
            .filter_map(|h| match &h.data {
                KeyedData::RocksNative { files } => Some(files),
                _ => None,
            })
            .flatten()
            .filter(|f| f.local_name.ends_with(".log") && f.file.size > 0)
            .count();
        assert!(logs > 0, "chk-{i} holds no write-ahead log");
    }
}

#[test]
fn entries_of_every_rocksdb_snapshot_mode_are_the_written_state() {
    let mut f = fixture();
    // Checkpoint 1 is full (canonical), 2 and 3 native incremental.
    for (i, kind) in [
        (1, "canonical"),
        (2, "rocksdb-native"),
        (3, "rocksdb-native"),
    ] {
        let chk = f.rocks_root.join(format!("chk-{i}"));
        let r = run(&["summary", s(&chk), "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["backend"], kind, "chk-{i}");
        assert_dump_matches(s(&chk), &f.models[i - 1]);
    }
    // The native checkpoint 3 really reuses SST files of earlier checkpoints.
    let m3 = load(&f.rocks_root, 3);
    let m2 = load(&f.rocks_root, 2);
    assert!(
        m3.files()
            .filter(|x| x.area == FileArea::Shared)
            .any(|x| m2.files().any(|y| y == x)),
        "checkpoint 3 shares no file with checkpoint 2"
    );
    // The _metadata file and a file:// URL name the same native checkpoint.
    let chk3 = f.rocks_root.join("chk-3");
    assert_dump_matches(s(&chk3.join("_metadata")), &f.models[2]);
    assert_dump_matches(&format!("file://{}", s(&chk3)), &f.models[2]);
    // A native checkpoint verifies clean.
    let v = run(&["verify", s(&chk3)]);
    assert_eq!(v.code, 0, "{v:?}");
    // A savepoint of the RocksDB backend (canonical).
    let sp = f.dir.path().join("rocks-sp");
    f.rocks.savepoint(&sp, 4);
    assert_eq!(
        run(&["summary", s(&sp), "--json"]).json()["backend"],
        "canonical"
    );
    assert_dump_matches(s(&sp), &f.models[2]);
    // Canonical incremental checkpoints of the RocksDB backend (native_incremental off).
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::rocks(
        3,
        &dir.path().join("local"),
        RocksDbOptions {
            native_incremental: false,
            ..RocksDbOptions::default()
        },
    );
    let mut model = Model::new();
    batch(&mut job, &mut model, 0, 100);
    job.checkpoint(&storage, 1, true);
    job.remove(&mut model, "w3");
    batch(&mut job, &mut model, 100, 7);
    job.checkpoint(&storage, 2, true);
    let chk = root.join("chk-2");
    assert_eq!(
        run(&["summary", s(&chk), "--json"]).json()["backend"],
        "canonical"
    );
    assert_dump_matches(s(&chk), &model);
}

#[test]
fn native_entries_filter_by_key_key_group_and_limit_and_leave_no_scratch_files() {
    let f = fixture();
    let chk = f.rocks_root.join("chk-3");
    let tmp = tempfile::tempdir().unwrap();
    let env = [("TMPDIR", tmp.path())];
    let entries = |extra: &[&str]| {
        let mut args = vec!["entries", s(&chk), "--uid", UID, "--json"];
        args.extend_from_slice(extra);
        let r = run_env(&args, &env);
        assert_eq!(r.code, 0, "{r:?}");
        r.lines()
    };
    let lines = entries(&["--state", "count", "--key", "w3"]);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"], "w3");
    assert_eq!(lines[0]["value"], f.models[2]["w3"].count.unwrap());
    // A key group of the second subtask's handle, and one of the first.
    for kg in [
        lines[0]["key_group"].as_u64().unwrap(),
        0,
        u64::from(MAX_P) - 1,
    ] {
        let kg_s = kg.to_string();
        let lines = entries(&["--state", "count", "--key-group", &kg_s]);
        assert!(lines.iter().all(|l| l["key_group"] == kg), "{lines:?}");
        let want = f
            .models
            .last()
            .unwrap()
            .keys()
            .filter(|w| {
                let k = cairn_core::Codec::encode_to_vec(
                    &cairn_core::BincodeCodec::<String>::new(),
                    &w.to_string(),
                )
                .unwrap();
                u64::from(cairn_core::key_group_for_key(&k, MAX_P)) == kg
            })
            .count();
        assert_eq!(lines.len(), want, "key group {kg}");
    }
    let lines = entries(&["--state", "tags", "--limit", "3"]);
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l.get("user_key").is_some()));
    // Human output: a table.
    let r = run_env(
        &[
            "entries",
            s(&chk),
            "--uid",
            UID,
            "--state",
            "events",
            "--limit",
            "2",
        ],
        &env,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    // Every scratch copy was removed.
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "scratch files left behind: {left:?}");
}

#[test]
fn diff_of_native_checkpoints_lists_exactly_the_changes_and_none_across_backends() {
    let f = fixture();
    let r = run(&[
        "diff",
        s(&f.rocks_root.join("chk-2")),
        s(&f.rocks_root.join("chk-3")),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let (before, after) = (&f.models[1], &f.models[2]);
    let state = |name: &str| {
        j["states"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["state"] == name)
            .unwrap()
            .clone()
    };
    let count = state("count");
    let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
    let changed = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b.count != v.count))
        .count();
    let added = after.keys().filter(|k| !before.contains_key(*k)).count();
    assert_eq!(count["entries_removed"], removed);
    assert_eq!(count["entries_changed"], changed);
    assert_eq!(count["entries_added"], added);
    assert!(changed > 0, "{j}");
    for e in j["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "count")
    {
        let k = e["key"].as_str().unwrap();
        match e["change"].as_str().unwrap() {
            "removed" => assert_eq!(e["old"], before[k].count.unwrap()),
            "changed" => {
                assert_eq!(e["old"], before[k].count.unwrap());
                assert_eq!(e["new"], after[k].count.unwrap());
            }
            "added" => assert_eq!(e["new"], after[k].count.unwrap()),
            other => panic!("{other}"),
        }
    }
    let events = state("events");
    assert_eq!(events["entries_removed"], removed);
    assert_eq!(events["entries_changed"], changed);
    // The same state on both backends: native against canonical, every checkpoint.
    for id in 1..=3 {
        let d = run(&[
            "diff",
            s(&f.rocks_root.join(format!("chk-{id}"))),
            s(&f.heap_root.join(format!("chk-{id}"))),
        ]);
        assert_eq!(d.code, 0, "{d:?}");
        assert!(
            d.stdout.contains("no differences"),
            "chk-{id}: {}",
            d.stdout
        );
    }
    let d = run(&[
        "diff",
        s(&f.heap_root.join("chk-2")),
        s(&f.rocks_root.join("chk-3")),
        "--json",
    ]);
    assert_eq!(d.json()["states"], j["states"]);
}

/// Restores `m` under both backends at several parallelisms; each reads `expected`.
fn assert_restores_on_both_backends(
    m: &Manifest,
    source: &dyn cairn_core::SnapshotSource,
    expected: &Model,
) {
    let local = tempfile::tempdir().unwrap();
    for p in [1, 2, 3] {
        let mut heap = Job::restore(m, source, p);
        assert_eq!(&heap.read(words()), expected, "heap, parallelism {p}");
        let mut rocks = Job::rocks(p, local.path(), RocksDbOptions::default()).restored(m, source);
        assert_eq!(&rocks.read(words()), expected, "rocksdb, parallelism {p}");
    }
}

#[test]
fn convert_of_native_and_heap_incremental_checkpoints_restores_under_both_backends() {
    let mut f = fixture();
    let expected = f.rocks.read(words());
    assert_eq!(expected, f.models[2]);
    let mut outs = Vec::new();
    for (name, root) in [("from-rocks", &f.rocks_root), ("from-heap", &f.heap_root)] {
        let chk = root.join("chk-3");
        let out = f.dir.path().join(name);
        let r = run(&["convert", s(&chk), "--out", s(&out), "--json"]);
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert_eq!(r.json()["files"], 2, "{name}");
        assert_eq!(r.json()["entries"], entry_count(&f.models[2]));
        // A self-contained canonical savepoint that verifies clean with the same entries.
        let v = run(&["verify", s(&out)]);
        assert_eq!(v.code, 0, "{v:?}");
        let sum = run(&["summary", s(&out), "--json"]).json();
        assert_eq!(sum["kind"], "savepoint");
        assert_eq!(sum["backend"], "canonical");
        assert_eq!(sum["shared_files"], 0);
        assert_dump_matches(s(&out), &f.models[2]);
        let d = run(&["diff", s(&chk), s(&out)]);
        assert!(d.stdout.contains("no differences"), "{}", d.stdout);
        // Moved elsewhere it restores under both backends with identical state.
        let moved = f.dir.path().join(format!("{name}-moved"));
        std::fs::rename(&out, &moved).unwrap();
        let (m, source) = open_savepoint(s(&moved)).unwrap();
        assert!(m.files().all(|x| x.area == FileArea::Private));
        assert_restores_on_both_backends(&m, &source, &expected);
        outs.push(moved);
    }
    // The two conversions hold the same state.
    let d = run(&["diff", s(&outs[0]), s(&outs[1])]);
    assert!(d.stdout.contains("no differences"), "{}", d.stdout);
}

#[test]
fn a_bit_flipped_sst_file_is_named() {
    let f = fixture();
    let chk = f.rocks_root.join("chk-3");
    let sst = native_sst(&f.rocks_root, 3);
    let mut bytes = std::fs::read(&sst).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x08;
    std::fs::write(&sst, &bytes).unwrap();
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let findings = v.json()["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], s(&sst));
    assert!(
        findings[0]["problem"]
            .as_str()
            .unwrap()
            .contains("checksum mismatch"),
        "{findings:?}"
    );
    assert!(v.stderr.contains("verify found 1 problem"), "{v:?}");
    let h = run(&["verify", s(&chk)]);
    assert_eq!(h.code, 1);
    assert!(h.stdout.contains(s(&sst)), "{}", h.stdout);
    // Reading it is refused with the file named, never a panic or a wrong answer.
    for state in ["count", "events", "tags"] {
        run(&["entries", s(&chk), "--uid", UID, "--state", state])
            .assert_error(1, &["checksum mismatch", s(&sst)]);
    }
    let out = f.dir.path().join("c");
    run(&["convert", s(&chk), "--out", s(&out)]).assert_error(1, &[s(&sst)]);
    assert!(!out.join("_metadata").exists());
    run(&["diff", s(&chk), s(&f.heap_root.join("chk-3"))]).assert_error(1, &[s(&sst)]);
    // Truncated: the size differs from the manifest.
    std::fs::write(&sst, &bytes[..bytes.len() - 5]).unwrap();
    let v = run(&["verify", s(&chk)]);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("wrong size"), "{}", v.stdout);
    run(&["entries", s(&chk), "--uid", UID, "--state", "count"])
        .assert_error(1, &["wrong size", s(&sst)]);
}

#[test]
fn a_missing_shared_sst_file_is_named() {
    let f = fixture();
    let chk = f.rocks_root.join("chk-3");
    let sst = native_sst(&f.rocks_root, 3);
    std::fs::remove_file(&sst).unwrap();
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let findings = v.json()["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], s(&sst));
    assert!(findings[0]["problem"].as_str().unwrap().contains("missing"));
    run(&["entries", s(&chk), "--uid", UID, "--state", "count"])
        .assert_error(1, &["missing file", s(&sst)]);
    run(&["convert", s(&chk), "--out", s(&f.dir.path().join("c"))])
        .assert_error(1, &["missing file", s(&sst)]);
    run(&["diff", s(&chk), s(&chk)]).assert_error(1, &["missing file", s(&sst)]);
    let files = run(&["files", s(&f.rocks_root), "--json"]);
    assert_eq!(files.code, 1, "{files:?}");
    let name = sst
        .strip_prefix(f.rocks_root.join("shared"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let j = files.json();
    let entry = j["shared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not listed: {j}"));
    assert_eq!(entry["missing"], true);
}

/// The number of entries of every state of `model`.
fn entry_count(model: &Model) -> u64 {
    (model.values().filter(|k| k.count.is_some()).count()
        + model.values().filter(|k| !k.events.is_empty()).count()
        + model.values().map(|k| k.tags.len()).sum::<usize>()) as u64
}

#[test]
fn verify_reads_native_checkpoints_through_and_names_an_sst_rocksdb_rejects() {
    let f = fixture();
    let chk = f.rocks_root.join("chk-3");
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_eq!(v.json()["entries"], entry_count(&f.models[2]));
    // A bit flip the manifest's CRC32 does not catch (the manifest is rewritten to match
    // the damaged file): RocksDB's block checksums do, and the finding names the SST.
    let sst = native_sst(&f.rocks_root, 3);
    let mut bytes = std::fs::read(&sst).unwrap();
    // Inside the first data block (data blocks come first in an SST file).
    bytes[10] ^= 0x20;
    std::fs::write(&sst, &bytes).unwrap();
    let crc = crc32fast::hash(&bytes);
    let meta = chk.join("_metadata");
    let mut m = load(&f.rocks_root, 3);
    for h in m
        .operators
        .iter_mut()
        .flat_map(|o| o.subtasks.iter_mut())
        .filter_map(|st| st.keyed.as_mut())
    {
        if let KeyedData::RocksNative { files } = &mut h.data {
            for nf in files
                .iter_mut()
                .filter(|nf| sst.ends_with(&nf.file.name) && nf.file.area == FileArea::Shared)
            {
                nf.file.crc32 = crc;
            }
        }
    }
    std::fs::write(&meta, cairn_format::encode_manifest(&m).unwrap()).unwrap();
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let findings = v.json()["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], s(&sst), "{findings:?}");
    let problem = findings[0]["problem"].as_str().unwrap();
    assert!(
        problem.contains("cannot read the native RocksDB checkpoint")
            && problem.contains("checksum mismatch"),
        "{problem}"
    );
    run(&["entries", s(&chk), "--uid", UID, "--state", "count"])
        .assert_error(1, &["checksum mismatch", s(&sst)]);
    // The message names the SST by its local name, not the removed scratch copy.
    let r = run(&["entries", s(&chk), "--uid", UID, "--state", "count"]);
    assert!(!r.stderr.contains("cairn-native-scan"), "{r:?}");
}
