//! The binary on checkpoints and savepoints written by the heap backend: its JSON output is
//! the state that was written; `diff` sees exactly the changes; `convert` output restores
//! with identical state.

mod common;

use cairn_storage::{open_savepoint, CheckpointStorage};
use common::*;
use serde_json::Value;

struct Fixture {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    /// Model after checkpoint 1 (full), 2 (incremental), 3 (incremental).
    models: Vec<Model>,
    job: Job,
}

/// Checkpoint 1 full, 2 and 3 incremental (3 after removing a word), at parallelism 2.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::new(2);
    let mut model = Model::new();
    let mut models = Vec::new();
    batch(&mut job, &mut model, 0, 200);
    job.checkpoint(&storage, 1, false);
    models.push(model.clone());
    batch(&mut job, &mut model, 200, 5);
    job.checkpoint(&storage, 2, true);
    models.push(model.clone());
    job.remove(&mut model, "w7");
    batch(&mut job, &mut model, 205, 3);
    job.checkpoint(&storage, 3, true);
    models.push(model.clone());
    Fixture {
        _dir: dir,
        root,
        models,
        job,
    }
}

#[test]
fn entries_of_full_and_incremental_checkpoints_are_the_written_state() {
    let f = fixture();
    for (i, model) in f.models.iter().enumerate() {
        let chk = f.root.join(format!("chk-{}", i + 1));
        assert_dump_matches(s(&chk), model);
        // The _metadata file and a file:// URL name the same checkpoint.
        if i == 2 {
            assert_dump_matches(s(&chk.join("_metadata")), model);
            assert_dump_matches(&format!("file://{}", s(&chk)), model);
        }
    }
    // The incremental checkpoint 3 really spreads over shared files of earlier checkpoints.
    let r = run(&["summary", s(&f.root.join("chk-3")), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["kind"], "checkpoint");
    assert_eq!(j["id"], 3);
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["backend"], "canonical");
    assert!(j["shared_files"].as_u64().unwrap() > 2, "{j}");
    let op = &j["operators"][0];
    assert_eq!(op["uid"], UID);
    assert_eq!(op["parallelism"], 2);
    assert_eq!(op["max_parallelism"], MAX_P);
    let m = &f.models[2];
    let entries = m.values().filter(|k| k.count.is_some()).count()
        + m.values().filter(|k| !k.events.is_empty()).count()
        + m.values().map(|k| k.tags.len()).sum::<usize>();
    assert_eq!(op["entries"], entries as u64);
    let states: Vec<&str> = op["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["count", "events", "tags"]);
    assert_eq!(op["states"][2]["kind"], "map");
    assert_eq!(op["states"][2]["user_key"], "alloc::string::String@v1");
    // The human form is a table with the uid.
    let h = run(&["summary", s(&f.root.join("chk-3"))]);
    assert_eq!(h.code, 0);
    assert!(
        h.stdout.contains("UID") && h.stdout.contains("count"),
        "{}",
        h.stdout
    );
    assert!(h.stderr.is_empty(), "quiet when piped: {h:?}");
}

#[test]
fn entries_filters_by_key_key_group_and_limit() {
    let f = fixture();
    let chk = f.root.join("chk-3");
    let r = run(&[
        "entries",
        s(&chk),
        "--uid",
        UID,
        "--state",
        "count",
        "--key",
        "w3",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let lines = r.lines();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key"], "w3");
    assert_eq!(lines[0]["namespace"], Value::Null);
    assert_eq!(lines[0]["value"], f.models[2]["w3"].count.unwrap());
    assert!(
        r.stdout
            .starts_with(r#"{"key":"w3","namespace":null,"value":"#),
        "{}",
        r.stdout
    );
    let kg = lines[0]["key_group"].as_u64().unwrap().to_string();
    let r = run(&[
        "entries",
        s(&chk),
        "--uid",
        UID,
        "--state",
        "count",
        "--key-group",
        &kg,
        "--json",
    ]);
    assert!(r
        .lines()
        .iter()
        .all(|l| l["key_group"].as_u64().map(|k| k.to_string()).as_deref() == Some(kg.as_str())));
    assert!(r.lines().iter().any(|l| l["key"] == "w3"));
    let r = run(&[
        "entries",
        s(&chk),
        "--uid",
        UID,
        "--state",
        "tags",
        "--limit",
        "3",
        "--json",
    ]);
    assert_eq!(r.lines().len(), 3);
    assert!(r.lines().iter().all(|l| l.get("user_key").is_some()));
    // Human output: a table.
    let r = run(&[
        "entries",
        s(&chk),
        "--uid",
        UID,
        "--state",
        "count",
        "--limit",
        "2",
    ]);
    assert_eq!(r.code, 0);
    assert_eq!(r.stdout.lines().count(), 3, "{}", r.stdout);
    assert!(r.stdout.starts_with("KEY_GROUP  KEY"), "{}", r.stdout);
}

#[test]
fn diff_lists_exactly_the_changes() {
    let f = fixture();
    let r = run(&[
        "diff",
        s(&f.root.join("chk-2")),
        s(&f.root.join("chk-3")),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let (before, after) = (&f.models[1], &f.models[2]);
    let count = j["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "count")
        .unwrap();
    let removed: Vec<&String> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    let changed: Vec<&String> = after
        .iter()
        .filter(|(k, v)| before.get(*k).is_some_and(|b| b.count != v.count))
        .map(|(k, _)| k)
        .collect();
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(count["entries_removed"], removed.len());
    assert_eq!(count["entries_changed"], changed.len());
    assert_eq!(count["entries_added"], added.len());
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
    // The text table shows each entry's key group, as the JSON does.
    let text = run(&["diff", s(&f.root.join("chk-2")), s(&f.root.join("chk-3"))]);
    assert_eq!(text.code, 0, "{text:?}");
    let header = text
        .stdout
        .lines()
        .find(|l| l.starts_with("UID") && l.contains("KEY"))
        .unwrap();
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        columns,
        [
            "UID",
            "STATE",
            "CHANGE",
            "KEY_GROUP",
            "KEY",
            "NAMESPACE",
            "USER_KEY",
            "OLD",
            "NEW"
        ]
    );
    let e = j["entries"].as_array().unwrap().first().unwrap();
    let row = format!(
        "{}  {}  {}  {}",
        e["uid"].as_str().unwrap(),
        e["state"].as_str().unwrap(),
        e["change"].as_str().unwrap(),
        e["key_group"]
    );
    let squeezed: Vec<String> = text
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join("  "))
        .collect();
    assert!(
        squeezed.iter().any(|l| l.starts_with(&row)),
        "{row}\n{}",
        text.stdout
    );
    // A snapshot against itself: nothing.
    let same = run(&["diff", s(&f.root.join("chk-3")), s(&f.root.join("chk-3"))]);
    assert_eq!(same.code, 0);
    assert!(same.stdout.contains("no differences"), "{}", same.stdout);
}

#[test]
fn convert_of_an_incremental_checkpoint_restores_identically() {
    let mut f = fixture();
    let out = f.root.parent().unwrap().join("converted");
    let r = run(&[
        "convert",
        s(&f.root.join("chk-3")),
        "--out",
        s(&out),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["files"], 2);
    // Self-contained: every file private, verifies clean, same entries, no differences.
    let v = run(&["verify", s(&out)]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_dump_matches(s(&out), &f.models[2]);
    let d = run(&["diff", s(&f.root.join("chk-3")), s(&out), "--json"]);
    assert!(
        d.json()["states"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["change"] == "same"),
        "{}",
        d.stdout
    );
    // Moved elsewhere it still restores, at several parallelisms, with identical state.
    let moved = f.root.parent().unwrap().join("moved");
    std::fs::rename(&out, &moved).unwrap();
    let (m, source) = open_savepoint(s(&moved)).unwrap();
    assert!(m.files().all(|f| f.area == cairn_core::FileArea::Private));
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    let expected = f.job.read(words.clone());
    assert_eq!(expected, f.models[2]);
    for p in [1, 2, 3] {
        let mut restored = Job::restore(&m, &source, p);
        assert_eq!(restored.read(words.clone()), expected, "parallelism {p}");
    }
    // Converting into a directory that holds a savepoint is refused.
    let again = run(&["convert", s(&f.root.join("chk-3")), "--out", s(&moved)]);
    again.assert_error(2, &["already holds a savepoint", "moved"]);
}

#[test]
fn savepoints_dump_and_convert_too() {
    let mut f = fixture();
    let sp = f.root.parent().unwrap().join("sp-9");
    f.job.savepoint(&sp, 9);
    assert_dump_matches(s(&sp), &f.models[2]);
    let r = run(&["summary", s(&sp), "--json"]);
    assert_eq!(r.json()["kind"], "savepoint");
    assert_eq!(r.json()["shared_files"], 0);
    let out = f.root.parent().unwrap().join("sp-9-copy");
    assert_eq!(run(&["convert", s(&sp), "--out", s(&out)]).code, 0);
    assert_dump_matches(s(&out), &f.models[2]);
}

#[test]
fn a_missing_shared_file_is_named() {
    let f = fixture();
    // Remove a shared file checkpoint 3 references.
    let m = CheckpointStorage::open(s(&f.root))
        .unwrap()
        .load(3)
        .unwrap();
    let shared = m
        .files()
        .find(|x| x.area == cairn_core::FileArea::Shared)
        .unwrap()
        .name
        .clone();
    let path = f.root.join("shared").join(&shared);
    std::fs::remove_file(&path).unwrap();
    let chk = f.root.join("chk-3");
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let findings = v.json()["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], s(&path));
    assert!(findings[0]["problem"].as_str().unwrap().contains("missing"));
    assert!(v.stderr.contains("verify found 1 problem"), "{v:?}");
    run(&["entries", s(&chk), "--uid", UID, "--state", "count"])
        .assert_error(1, &["missing file", s(&path)]);
    run(&[
        "convert",
        s(&chk),
        "--out",
        s(&f.root.parent().unwrap().join("c")),
    ])
    .assert_error(1, &["missing file", s(&path)]);
    let files = run(&["files", s(&f.root), "--json"]);
    assert_eq!(files.code, 1, "{files:?}");
    let j = files.json();
    let entry = j["shared"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == shared.as_str())
        .unwrap();
    assert_eq!(entry["missing"], true);
}

#[test]
fn a_damaged_data_file_is_named_with_its_offset() {
    let f = fixture();
    let chk = f.root.join("chk-1");
    let m = CheckpointStorage::open(s(&f.root))
        .unwrap()
        .load(1)
        .unwrap();
    let file = m.files().next().unwrap().clone();
    let path = match file.area {
        cairn_core::FileArea::Private => chk.join(&file.name),
        cairn_core::FileArea::Shared => f.root.join("shared").join(&file.name),
    };
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip a bit in the first data block (after the 16-byte header and the state table).
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let finding = &v.json()["findings"][0];
    assert_eq!(finding["path"], s(&path));
    assert!(finding["offset"].is_u64(), "{finding}");
    let r = run(&["entries", s(&chk), "--uid", UID, "--state", "events"]);
    r.assert_error(1, &["corrupt", s(&path), "offset="]);
    // Truncated: the size differs from the manifest.
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let v = run(&["verify", s(&chk)]);
    assert_eq!(v.code, 1);
    assert!(v.stdout.contains("wrong size"), "{}", v.stdout);
    run(&["summary", s(&chk)]).assert_error(1, &["wrong size", s(&path)]);
}
