//! Changelog checkpoints (`cairn-changelog` around the heap and the RocksDB backends, with
//! a background materialization and segments after it): `summary`, `entries`, `verify`,
//! `diff` against the same state written without changelog, `files`, `gc`, `convert` and
//! a restore of the conversion under both backends; a truncated or bit-flipped segment is
//! a one-line error naming the file and the offset.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_changelog::ChangelogBackend;
use cairn_core::{FileArea, KeyGroupRange, KeyedData, KeyedStateBackend};
use cairn_format::{ChangelogSegmentReader, Manifest};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{open_savepoint, CheckpointStorage};
use common::*;
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
enum Inner {
    Heap,
    Rocks,
}

fn rocks(
    range: KeyGroupRange,
    key: &cairn_core::BincodeCodec<String>,
    local: &Path,
) -> RocksDbBackend {
    use cairn_core::Codec;
    RocksDbBackend::new(RocksDbConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key.identity().clone(),
        local_dir: local.to_path_buf(),
        options: RocksDbOptions::default(),
    })
    .unwrap()
}

/// Materializes every subtask and waits until each materialization has finished.
fn materialize<B: KeyedStateBackend>(job: &mut Job<ChangelogBackend<B>>) {
    for (b, _) in &mut job.subtasks {
        b.materialize_now().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (b, _) in &mut job.subtasks {
        while b.is_materializing() {
            assert!(Instant::now() < deadline, "materialization did not finish");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(b.last_materialization_error(), None);
    }
}

/// The same updates applied to a job: checkpoints 1..=3, a removal, more updates.
fn script<B: cairn_core::StateAccess>(
    job: &mut Job<B>,
    storage: &CheckpointStorage,
    model: &mut Model,
    mut between: impl FnMut(&mut Job<B>),
) -> Manifest {
    batch(job, model, 0, 150);
    job.checkpoint(storage, 1, true);
    between(job);
    batch(job, model, 150, 150);
    job.remove(model, "w3");
    job.checkpoint(storage, 2, true);
    batch(job, model, 300, 60);
    job.checkpoint(storage, 3, true)
}

struct Fixture {
    dir: tempfile::TempDir,
    /// The changelog job's checkpoint directory.
    root: PathBuf,
    /// The same state written without changelog (by the wrapped backend alone).
    plain_root: PathBuf,
    model: Model,
    /// Checkpoint 3 of the changelog job.
    manifest: Manifest,
}

impl Fixture {
    fn chk(&self) -> PathBuf {
        self.root.join("chk-3")
    }
}

fn fixture(inner: Inner) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("job");
    let plain_root = dir.path().join("plain");
    let local = dir.path().join("local");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let plain_storage = CheckpointStorage::open(s(&plain_root)).unwrap();
    let mut model = Model::new();
    let mut plain_model = Model::new();
    let manifest = match inner {
        Inner::Heap => {
            let mut job = Job::with(2, |r, k| small_changelog(heap(r, k), k, &storage));
            let m = script(&mut job, &storage, &mut model, materialize);
            let mut plain = Job::new(2);
            script(&mut plain, &plain_storage, &mut plain_model, |_| {});
            m
        }
        Inner::Rocks => {
            let mut job = Job::with(2, |r, k| small_changelog(rocks(r, k, &local), k, &storage));
            let m = script(&mut job, &storage, &mut model, materialize);
            let mut plain = Job::rocks(2, &local.join("plain"), RocksDbOptions::default());
            script(&mut plain, &plain_storage, &mut plain_model, |_| {});
            m
        }
    };
    assert_eq!(model, plain_model);
    // The checkpoint is what the tests are about: changelog handles with both a
    // materialized part of the wrapped backend's kind and segments after it.
    for h in manifest
        .operators
        .iter()
        .flat_map(|o| &o.subtasks)
        .filter_map(|s| s.keyed.as_ref())
    {
        let KeyedData::Changelog {
            materialized,
            segments,
        } = &h.data
        else {
            panic!("not a changelog handle: {h:?}");
        };
        assert!(!materialized.is_empty() && !segments.is_empty(), "{h:?}");
        for m in materialized {
            match inner {
                Inner::Heap => assert!(matches!(m.data, KeyedData::Canonical { .. })),
                Inner::Rocks => assert!(matches!(m.data, KeyedData::RocksNative { .. })),
            }
        }
    }
    Fixture {
        dir,
        root,
        plain_root,
        model,
        manifest,
    }
}

fn words() -> Vec<String> {
    (0..40).map(|i| format!("w{i}")).collect()
}

fn entry_count(model: &Model) -> u64 {
    model
        .values()
        .map(|k| {
            u64::from(k.count.is_some()) + u64::from(!k.events.is_empty()) + k.tags.len() as u64
        })
        .sum()
}

/// Every segment file of the fixture's checkpoint 3, as (path, file size).
fn segments(f: &Fixture) -> Vec<PathBuf> {
    let mut out = BTreeSet::new();
    for h in f
        .manifest
        .operators
        .iter()
        .flat_map(|o| &o.subtasks)
        .filter_map(|s| s.keyed.as_ref())
    {
        if let KeyedData::Changelog { segments, .. } = &h.data {
            for seg in segments {
                assert_eq!(seg.file.area, FileArea::Shared);
                out.insert(f.root.join("shared").join(&seg.file.name));
            }
        }
    }
    out.into_iter().collect()
}

fn inspects_a_changelog_checkpoint(inner: Inner) {
    let f = fixture(inner);
    let chk = f.chk();
    let m = &f.manifest;

    // summary: kind changelog, nested files and bytes counted.
    let sum = run(&["summary", s(&chk), "--json"]);
    assert_eq!(sum.code, 0, "{sum:?}");
    let j = sum.json();
    assert_eq!(j["backend"], "changelog");
    let op = &j["operators"][0];
    assert_eq!(op["data"], "changelog");
    assert_eq!(op["entries"], Value::Null);
    let all: std::collections::HashSet<_> = m.files().collect();
    assert_eq!(j["files"], all.len());
    assert_eq!(op["files"], all.len());
    assert_eq!(op["bytes"], all.iter().map(|f| f.size).sum::<u64>());
    let segs = segments(&f);
    let cl = &op["changelog"];
    assert_eq!(cl["segments"], segs.len());
    let seg_bytes: u64 = segs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(cl["segment_bytes"], seg_bytes);
    assert_eq!(
        cl["materialized_files"].as_u64().unwrap() + segs.len() as u64,
        all.len() as u64
    );
    let human = run(&["summary", s(&chk)]);
    assert!(
        human.stdout.contains("changelog of count: ") && human.stdout.contains("segments"),
        "{}",
        human.stdout
    );

    // entries: exactly the state that was written.
    assert_dump_matches(s(&chk), &f.model);
    let one = run(&[
        "entries",
        s(&chk),
        "--uid",
        UID,
        "--state",
        "count",
        "--key",
        "w7",
        "--json",
    ]);
    assert_eq!(one.lines().len(), 1, "{one:?}");
    assert_eq!(one.lines()[0]["value"], f.model["w7"].count.unwrap());
    // w3 was cleared after checkpoint 1 and updated again after checkpoint 2: the replayed
    // clear drops the events written before it.
    let w3 = dumped(s(&chk), "events")
        .into_iter()
        .find(|e| e.0 == "w3")
        .unwrap();
    assert_eq!(w3.3, serde_json::json!([323]));

    // verify: clean, every segment record and materialized entry checked.
    let v = run(&["verify", s(&chk), "--json"]);
    assert_eq!(v.code, 0, "{v:?}");
    let vj = v.json();
    assert_eq!(vj["files"], all.len());
    assert!(vj["findings"].as_array().unwrap().is_empty());
    let records: u64 = m
        .operators
        .iter()
        .flat_map(|o| &o.subtasks)
        .filter_map(|s| s.keyed.as_ref())
        .map(|h| match &h.data {
            KeyedData::Changelog { segments, .. } => {
                segments.iter().map(|s| s.records).sum::<u64>()
            }
            _ => 0,
        })
        .sum();
    assert!(vj["entries"].as_u64().unwrap() >= records, "{vj}");

    // diff against the same state written without changelog: equal.
    let plain = f.plain_root.join("chk-3");
    let d = run(&["diff", s(&plain), s(&chk), "--json"]);
    assert_eq!(d.code, 0, "{d:?}");
    let dj = d.json();
    assert_eq!(dj["states"].as_array().unwrap().len(), 3, "{dj}");
    assert!(
        dj["states"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["change"] == "same"),
        "{dj}"
    );
    // ...and against checkpoint 2 of the same job: the later updates.
    let d2 = run(&["diff", s(&f.root.join("chk-2")), s(&chk), "--json"]).json();
    let changed = d2["states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "count")
        .unwrap()["entries_changed"]
        .as_u64()
        .unwrap();
    assert!(changed > 0, "{d2}");

    // files: every nested file of checkpoint 3 is referenced, none missing.
    let fr = run(&["files", s(&f.root), "--json"]);
    assert_eq!(fr.code, 0, "{fr:?}");
    let fj = fr.json();
    let shared_of_3: BTreeSet<String> = m
        .files()
        .filter(|x| x.area == FileArea::Shared)
        .map(|x| x.name.clone())
        .collect();
    let c3 = fj["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == 3)
        .unwrap();
    let listed: BTreeSet<String> = c3["shared"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, shared_of_3);
    for x in fj["shared"].as_array().unwrap() {
        assert_eq!(x["missing"], false, "{x}");
    }
    let orphans: BTreeSet<String> = fj["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert!(orphans.is_disjoint(&shared_of_3), "{orphans:?}");

    // gc --dry-run keeps every file of the retained checkpoint, and gc deletes what it said.
    let dry = run(&[
        "gc",
        s(&f.root),
        "--retain",
        "1",
        "--min-age",
        "0",
        "--dry-run",
        "--json",
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let deleted: Vec<String> = dry.json()["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    for name in &shared_of_3 {
        assert!(
            !deleted.contains(&format!("shared/{name}")),
            "{name} in {deleted:?}"
        );
    }
    assert!(deleted.contains(&"chk-1/".to_string()), "{deleted:?}");
    let real = run(&[
        "gc",
        s(&f.root),
        "--retain",
        "1",
        "--min-age",
        "0",
        "--json",
    ]);
    assert_eq!(real.code, 0, "{real:?}");
    assert_eq!(real.json()["deleted"], dry.json()["deleted"]);
    let v = run(&["verify", s(&chk)]);
    assert_eq!(v.code, 0, "{v:?}");
    assert_dump_matches(s(&chk), &f.model);

    // convert: a canonical savepoint that restores under both backends with the state.
    let out = f.dir.path().join("sp");
    let c = run(&["convert", s(&chk), "--out", s(&out), "--json"]);
    assert_eq!(c.code, 0, "{c:?}");
    assert_eq!(c.json()["entries"], entry_count(&f.model));
    let sum = run(&["summary", s(&out), "--json"]).json();
    assert_eq!(sum["backend"], "canonical");
    assert_eq!(sum["shared_files"], 0);
    assert_dump_matches(s(&out), &f.model);
    let d = run(&["diff", s(&chk), s(&out)]);
    assert!(d.stdout.contains("no differences"), "{}", d.stdout);
    let (sm, source) = open_savepoint(s(&out)).unwrap();
    let local = tempfile::tempdir().unwrap();
    for p in [1, 2, 3] {
        let mut h = Job::restore(&sm, &source, p);
        assert_eq!(h.read(words()), f.model, "heap, parallelism {p}");
        let mut r = Job::rocks(p, local.path(), RocksDbOptions::default()).restored(&sm, &source);
        assert_eq!(r.read(words()), f.model, "rocksdb, parallelism {p}");
    }
}

#[test]
fn heap_changelog_checkpoint_inspects_diffs_and_converts() {
    inspects_a_changelog_checkpoint(Inner::Heap);
}

#[test]
fn rocksdb_changelog_checkpoint_inspects_diffs_and_converts() {
    inspects_a_changelog_checkpoint(Inner::Rocks);
}

/// The offset of the first record block of a segment.
fn first_block(bytes: &[u8]) -> u64 {
    let r = ChangelogSegmentReader::open(Bytes::copy_from_slice(bytes), "s").unwrap();
    r.blocks()[0].offset
}

/// Runs the commands that read segments on `chk`: each fails with one line naming `path`
/// and `offset=N`, exit code 1.
fn assert_named(chk: &Path, path: &Path, offset: u64) {
    let needle_offset = format!("offset={offset}");
    let out = chk.parent().unwrap().parent().unwrap().join("out-bad");
    for args in [
        vec!["entries", s(chk), "--uid", UID, "--state", "count"],
        vec!["convert", s(chk), "--out", s(&out)],
        vec!["diff", s(chk), s(chk)],
    ] {
        run(&args).assert_error(1, &[s(path), &needle_offset, "changelog segment"]);
    }
    let v = run(&["verify", s(chk), "--json"]);
    assert_eq!(v.code, 1, "{v:?}");
    let findings = v.json()["findings"].as_array().unwrap().clone();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["path"], s(path));
    assert_eq!(findings[0]["offset"], offset);
    let human = run(&["verify", s(chk)]);
    assert_eq!(human.code, 1);
    assert_eq!(human.stderr.lines().count(), 1, "{human:?}");
}

#[test]
fn truncated_and_bit_flipped_segments_are_named_with_their_offset() {
    for inner in [Inner::Heap, Inner::Rocks] {
        let f = fixture(inner);
        let chk = f.chk();
        let seg = segments(&f).pop().unwrap();
        let good = std::fs::read(&seg).unwrap();

        // Truncated (a torn upload): named at the offset where it ends.
        let cut = good.len() - 7;
        std::fs::write(&seg, &good[..cut]).unwrap();
        assert_named(&chk, &seg, cut as u64);

        // A flipped bit in a record block: named at that block's offset.
        let block = first_block(&good);
        let mut bad = good.clone();
        bad[block as usize + 25] ^= 0x04;
        std::fs::write(&seg, &bad).unwrap();
        assert_named(&chk, &seg, block);

        // Restored, it reads clean again.
        std::fs::write(&seg, &good).unwrap();
        assert_eq!(run(&["verify", s(&chk)]).code, 0);
        assert_dump_matches(s(&chk), &f.model);
    }
}
