//! The binary on the golden savepoint vector and its corrupt variants.

mod common;

use std::path::{Path, PathBuf};

use cairn_core::{key_group_for_key, BincodeCodec, Codec};
use common::*;
use serde_json::{json, Value};

fn savepoint() -> PathBuf {
    vectors().join("savepoint")
}

/// A copy of the golden savepoint with `file` replaced by corrupt vector `variant`.
fn damaged(dir: &Path, file: &str, variant: &str) -> PathBuf {
    let sp = dir.join(format!("sp-{variant}"));
    copy_dir(&savepoint(), &sp);
    std::fs::copy(vectors().join("corrupt").join(variant), sp.join(file)).unwrap();
    sp
}

fn key_group(user: &str) -> u64 {
    let k = BincodeCodec::<String>::new()
        .encode_to_vec(&user.to_string())
        .unwrap();
    u64::from(key_group_for_key(&k, 8))
}

#[test]
fn summary_of_the_golden_savepoint() {
    let r = run(&["summary", s(&savepoint()), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    assert_eq!(j["kind"], "savepoint");
    assert_eq!(j["id"], 7);
    assert_eq!(j["timestamp_ms"], 1_700_000_000_000u64);
    assert_eq!(j["time"], "2023-11-14T22:13:20.000Z");
    assert_eq!(j["files"], 2);
    let ops = j["operators"].as_array().unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0]["uid"], "counter");
    // 6 users × (count, events, 2 tags) + 2 solo keys.
    assert_eq!(ops[0]["entries"], 26);
    assert_eq!(ops[1]["uid"], "source");
    assert_eq!(ops[1]["data"], "none");
    assert_eq!(
        ops[1]["operator_states"][0],
        json!({"name": "offsets", "mode": "split", "codec": "u64@v1", "elements": 2})
    );
}

#[test]
fn entries_of_the_golden_savepoint_decode_every_state() {
    let sp = savepoint();
    let lines = |state: &str| {
        let r = run(&[
            "entries",
            s(&sp),
            "--uid",
            "counter",
            "--state",
            state,
            "--json",
        ]);
        assert_eq!(r.code, 0, "{r:?}");
        r.lines()
    };
    // count: u64 with a stored schema; keys are Strings named by their type.
    let count = lines("count");
    assert_eq!(count.len(), 8);
    for u in 0..6u64 {
        let user = format!("user-{u:02}");
        let line = count.iter().find(|l| l["key"] == user.as_str()).unwrap();
        assert_eq!(
            line,
            &json!({"key": user, "namespace": null, "value": u * 10, "key_group": key_group(&user)})
        );
    }
    let solos: Vec<&Value> = count
        .iter()
        .filter(|l| l["key"].as_str().unwrap().starts_with("solo-"))
        .collect();
    assert_eq!(solos.len(), 2);
    assert!(solos.iter().all(|l| l["value"] == 5));
    // events: list values decode to arrays of elements.
    for l in lines("events") {
        let u: u64 = l["key"].as_str().unwrap()[5..].parse().unwrap();
        let want: Vec<u64> = (0..u % 3 + 1).map(|e| u + e).collect();
        assert_eq!(l["value"], json!(want), "{l}");
    }
    // tags: map entries carry the user key.
    let tags = lines("tags");
    assert_eq!(tags.len(), 12);
    assert!(tags
        .iter()
        .all(|l| l["value"] == 1 && (l["user_key"] == "blue" || l["user_key"] == "red")));
    // Sorted by key group.
    let kgs: Vec<u64> = count
        .iter()
        .map(|l| l["key_group"].as_u64().unwrap())
        .collect();
    assert!(kgs.windows(2).all(|w| w[0] <= w[1]), "{kgs:?}");
}

#[test]
fn verify_the_golden_savepoint_and_its_metadata_file() {
    for p in [savepoint(), savepoint().join("_metadata")] {
        let r = run(&["verify", s(&p)]);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("clean"), "{}", r.stdout);
    }
    let r = run(&["verify", s(&savepoint()), "--json"]);
    assert_eq!(r.json()["entries"], 26);
    assert_eq!(r.json()["findings"], json!([]));
}

#[test]
fn corrupt_manifests() {
    let dir = tempfile::tempdir().unwrap();
    for (variant, code, needles) in [
        (
            "manifest-bit-flip",
            1,
            vec!["corrupt manifest", "checksum mismatch", "offset=1224"],
        ),
        (
            "manifest-truncated",
            1,
            vec!["corrupt manifest", "bad footer magic", "offset=1231"],
        ),
        (
            "manifest-v2",
            2,
            vec![
                "unsupported manifest version 2",
                "this build reads version 1",
                "upgrade cairn",
            ],
        ),
        (
            "manifest-required-flag",
            2,
            vec!["unsupported manifest feature", "offset=10"],
        ),
    ] {
        let sp = damaged(dir.path(), "_metadata", variant);
        let meta = sp.join("_metadata");
        for cmd in ["verify", "summary"] {
            let r = run(&[cmd, s(&sp)]);
            let mut all = needles.clone();
            all.push(s(&meta));
            r.assert_error(code, &all);
        }
        run(&["entries", s(&sp), "--uid", "counter", "--state", "count"])
            .assert_error(code, &[s(&meta)]);
    }
}

#[test]
fn corrupt_state_files() {
    let dir = tempfile::tempdir().unwrap();
    for (variant, offset) in [
        ("state-file-bit-flip-data", Some(70)),
        ("state-file-bit-flip-table", Some(16)),
        ("state-file-truncated", Some(679)),
        ("state-file-v2", None),
        ("state-file-required-flag", None),
    ] {
        let sp = damaged(dir.path(), "counter-0.state", variant);
        let file = sp.join("counter-0.state");
        let r = run(&["verify", s(&sp), "--json"]);
        assert_eq!(r.code, 1, "{variant}: {r:?}");
        let findings = r.json()["findings"].as_array().unwrap().clone();
        assert_eq!(findings.len(), 1, "{variant}: {findings:?}");
        assert_eq!(findings[0]["path"], s(&file), "{variant}");
        if let Some(o) = offset {
            assert_eq!(findings[0]["offset"], o, "{variant}: {findings:?}");
        }
        // Reading the entries fails naming the file; the other subtask's file is fine.
        let e = run(&["entries", s(&sp), "--uid", "counter", "--state", "count"]);
        assert!(e.code == 1 || e.code == 2, "{variant}: {e:?}");
        e.assert_error(e.code, &[s(&file)]);
        if let Some(o) = offset {
            e.assert_error(1, &[&format!("offset={o}")]);
        }
    }
}

#[test]
fn a_file_that_is_not_the_recorded_one_fails_the_whole_file_checksum() {
    // Every block of the file verifies, but the manifest recorded another CRC32.
    let dir = tempfile::tempdir().unwrap();
    let sp = dir.path().join("sp");
    copy_dir(&savepoint(), &sp);
    let meta = sp.join("_metadata");
    let mut m = cairn_format::decode_manifest(&std::fs::read(&meta).unwrap(), "m").unwrap();
    if let Some(cairn_core::KeyedData::Canonical { files }) = m.operators[0].subtasks[0]
        .keyed
        .as_mut()
        .map(|h| &mut h.data)
    {
        files[0].file.crc32 ^= 1;
    }
    std::fs::write(&meta, cairn_format::encode_manifest(&m).unwrap()).unwrap();
    let r = run(&["verify", s(&sp), "--json"]);
    assert_eq!(r.code, 1, "{r:?}");
    let f = &r.json()["findings"][0];
    assert_eq!(f["path"], s(&sp.join("counter-0.state")));
    assert_eq!(f["offset"], 0);
    assert!(
        f["problem"]
            .as_str()
            .unwrap()
            .contains("whole-file checksum"),
        "{f}"
    );
}

#[test]
fn native_rocksdb_checkpoints_without_their_files_name_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let chk = dir.path().join("job").join("chk-12");
    std::fs::create_dir_all(&chk).unwrap();
    std::fs::copy(
        vectors().join("checkpoint-native.manifest"),
        chk.join("_metadata"),
    )
    .unwrap();
    let r = run(&["summary", s(&chk), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["backend"], "rocksdb-native");
    assert_eq!(r.json()["operators"][0]["entries"], Value::Null);
    // entries, convert and diff read native handles (tests/rocksdb_snapshots.rs); the golden
    // manifest comes without its files, so they name the first missing one.
    let first = s(&dir.path().join("job/shared/log/0c4d5e6f708192a3b-2048.log")).to_string();
    run(&["entries", s(&chk), "--uid", "count", "--state", "count"])
        .assert_error(1, &["missing file", &first]);
    let out = dir.path().join("out");
    run(&["convert", s(&chk), "--out", s(&out)]).assert_error(1, &["missing file", &first]);
    assert!(
        !out.join("_metadata").exists(),
        "a failed convert published a savepoint"
    );
    run(&["diff", s(&chk), s(&chk)]).assert_error(1, &["missing file", &first]);
    // verify checks native files by size and CRC32: here they are all missing.
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 1);
    let findings = v.json()["findings"].as_array().unwrap().clone();
    // Six files per subtask; both subtasks reference the same empty log.
    assert_eq!(findings.len(), 11);
    assert!(
        findings.iter().any(|f| f["path"] == first.as_str()),
        "{findings:?}"
    );
}
