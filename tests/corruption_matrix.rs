//! The corruption matrix (issue 7): for every file of small snapshots of every kind — a heap
//! full checkpoint, a heap incremental checkpoint (with shared files), a RocksDB native
//! incremental checkpoint (SST, `MANIFEST-*`, `CURRENT`, `OPTIONS-*` files), a changelog
//! checkpoint (a materialized heap snapshot and the changelog segments after it) and a
//! canonical savepoint — every single-bit flip and every truncation is detected: restore
//! fails with an error that names the file (and, for Cairn's own formats, the offset), and
//! the storage's `verify` fails too. A restore that succeeds, or panics, is a failure.
//!
//! Two layers of checks, so that the test stays fast in a debug build:
//!
//! - **every** damaged variant goes through the check of its file kind that rejects it on
//!   restore, in memory: the manifest decoder (`_metadata`); the state file reader (open and
//!   `verify_all`) *and* the manifest's size and CRC32 record (canonical state files); the
//!   segment reader (open and `verify_all`) *and* the manifest's size and CRC32 record
//!   (changelog segments); the manifest's size and CRC32 record (RocksDB's files, which the
//!   restore source and the native restore compare before RocksDB sees a byte);
//! - a **sample** of the variants (every file's truncations to 0 and to `len − 1`, and every
//!   `stride`-th variant; `CAIRN_MATRIX_STRIDE=1` takes all) is written to disk and run
//!   through a full restore — of every subtask, through the storage, then compared with the
//!   expected state — and through the storage's `verify` (checkpoints); the savepoint's
//!   sample is also restored into the other backend, and the changelog checkpoint's into a
//!   changelog backend around RocksDB.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use cairn_core::{
    FileArea, FileRef, KeyGroupRange, KeyedData, KeyedStateBackend, KeyedStateHandle,
    OperatorListStateDescriptor, OperatorStateBackend, OperatorStateSnapshot, SnapshotOptions,
    SnapshotSource, StateAccess,
};
use cairn_format::{
    decode_manifest, ChangelogSegmentReader, Manifest, StateFileReader, MANIFEST_FILE_NAME,
};
use cairn_storage::{
    open_savepoint, restore_subtask, snapshot_operator, write_savepoint, CheckpointStorage,
    SubtaskRef,
};
use common::conformance::{checkpoint, fill_key, read_operator};
use common::factories::{ChangelogFactory, HashMapFactory, RocksDbFactory};
use common::harness::{BackendFactory, Operator};
use common::schema::{key_bytes, keys_in, register, set_key};

const MAX_P: u32 = 8;
const UID: &str = "op";
/// Every how many damaged variants a full restore runs, by default: heap restores take
/// about a millisecond, RocksDB ones (an instance each) tens.
const HEAP_STRIDE: u64 = 13;
const ROCKSDB_STRIDE: u64 = 5000;

/// What a restore gives back: every key's state through the typed API, and each subtask's
/// operator state.
#[derive(Debug, PartialEq)]
struct Restored {
    keyed: Vec<String>,
    operator: Vec<Vec<OperatorStateSnapshot>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum FileKind {
    /// `_metadata`: Cairn's manifest format, errors carry offsets.
    Manifest,
    /// A canonical state file: Cairn's format, errors carry offsets.
    StateFile,
    /// A changelog segment: Cairn's format, errors carry offsets.
    Segment,
    /// A file of a RocksDB checkpoint directory: checked by size and CRC32 as a whole.
    Native,
}

/// One file of a snapshot, on disk.
#[derive(Debug)]
struct Target {
    /// What the error must name (the manifest's file name, or `_metadata`).
    name: String,
    path: PathBuf,
    kind: FileKind,
    /// The manifest's reference (none for the manifest itself).
    file: Option<FileRef>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    HashMap,
    RocksDb,
    /// A changelog backend around the heap backend.
    ChangelogHashMap,
    /// A changelog backend around RocksDB.
    ChangelogRocksDb,
}

enum Location {
    Checkpoint { storage: CheckpointStorage, id: u64 },
    Savepoint { url: String },
}

struct Snapshot {
    name: &'static str,
    at: Location,
    /// The backend that restores every variant.
    backend: Backend,
    /// Another backend that restores every `ROCKSDB_STRIDE`-th variant of the sample.
    other_backend: Option<Backend>,
    /// Every how many variants of a file a full restore runs.
    stride: u64,
    keys: Vec<String>,
    expected: Restored,
    files: Vec<Target>,
    rocks: RocksDbFactory,
    changelog_rocks: ChangelogFactory<RocksDbFactory>,
}

#[derive(Default, Debug)]
struct Tally {
    bit_flips: u64,
    truncations: u64,
    full_restores: u64,
    rocksdb_restores: u64,
    verifies: u64,
    failures: Vec<String>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }
}

fn restore_with<F: BackendFactory>(
    f: &F,
    manifest: &Manifest,
    source: &dyn SnapshotSource,
    keys: &[String],
) -> Result<Restored, String> {
    let op = manifest
        .operator(UID)
        .ok_or_else(|| format!("no operator {UID}"))?;
    let p = op.parallelism;
    let mut subtasks = Vec::new();
    for i in 0..p {
        let range =
            KeyGroupRange::for_subtask(op.max_parallelism, p, i).map_err(|e| e.to_string())?;
        let mut b = f.create(UID, op.max_parallelism, range);
        let mut o = OperatorStateBackend::new(UID);
        restore_subtask(manifest, UID, p, i, Some(&mut b), &mut o, source)
            .map_err(|e| e.to_string())?;
        subtasks.push((b, o));
    }
    let operator = subtasks
        .iter()
        .map(|(_, o)| o.snapshot().expect("operator state snapshot"))
        .collect();
    let mut op = Operator {
        uid: UID.to_string(),
        max_parallelism: op.max_parallelism,
        subtasks,
    };
    Ok(Restored {
        keyed: read_operator(&mut op, keys),
        operator,
    })
}

impl Snapshot {
    fn restore(&self, backend: Backend) -> Result<Restored, String> {
        let run = |m: &Manifest, source: &dyn SnapshotSource| match backend {
            Backend::HashMap => restore_with(&HashMapFactory, m, source, &self.keys),
            Backend::RocksDb => restore_with(&self.rocks, m, source, &self.keys),
            Backend::ChangelogHashMap => restore_with(
                &ChangelogFactory::new(HashMapFactory),
                m,
                source,
                &self.keys,
            ),
            Backend::ChangelogRocksDb => restore_with(&self.changelog_rocks, m, source, &self.keys),
        };
        match &self.at {
            Location::Checkpoint { storage, id } => {
                let m = storage.load(*id).map_err(|e| e.to_string())?;
                run(&m, &storage.source(*id))
            }
            Location::Savepoint { url } => {
                let (m, source) = open_savepoint(url).map_err(|e| e.to_string())?;
                run(&m, &source)
            }
        }
    }
}

/// Whether the error text names the file and (for Cairn's formats) an offset; a truncation
/// caught by the size check names the size found instead.
fn error_problem(e: &str, t: &Target, truncation: bool) -> Option<&'static str> {
    if !e.contains(&t.name) {
        return Some("does not name the file");
    }
    let located = e.contains("offset=") || (truncation && e.contains("wrong size"));
    if t.kind != FileKind::Native && !located {
        return Some("names no offset");
    }
    None
}

/// The in-memory check of one damaged variant: what rejects it on restore, per file kind.
fn check_bytes(t: &Target, damaged: &[u8], truncation: bool) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Some(f) = &t.file {
        // The manifest's record, which the restore source compares.
        if damaged.len() as u64 == f.size && crc32fast::hash(damaged) == f.crc32 {
            return Err("matches the manifest's size and crc32".into());
        }
    }
    match t.kind {
        FileKind::Manifest => match decode_manifest(damaged, &t.name) {
            Ok(_) => return Err("the manifest decodes".into()),
            Err(e) => errors.push(e.to_string()),
        },
        FileKind::StateFile => {
            let opened = StateFileReader::open(Bytes::copy_from_slice(damaged), &t.name);
            match opened.and_then(|r| r.verify_all()) {
                Ok(()) => return Err("the state file reads".into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        FileKind::Segment => {
            let opened = ChangelogSegmentReader::open(Bytes::copy_from_slice(damaged), &t.name);
            match opened.and_then(|r| r.verify_all()) {
                Ok(()) => return Err("the changelog segment reads".into()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        FileKind::Native => {}
    }
    for e in errors {
        if let Some(problem) = error_problem(&e, t, truncation) {
            return Err(format!("decoder error {problem}: {e}"));
        }
    }
    Ok(())
}

/// Checks damaged variant `n` of `t`: in memory always, through a full restore and `verify`
/// when `sampled` (and through a restore into the other backend for every
/// `ROCKSDB_STRIDE`-th variant of a canonical snapshot).
fn check_variant(
    s: &Snapshot,
    t: &Target,
    damaged: &[u8],
    what: &str,
    n: u64,
    sampled: bool,
    tally: &mut Tally,
) {
    let truncation = what.starts_with("truncated");
    let label = format!("{}: {} {what}", s.name, t.name);
    if let Err(e) = check_bytes(t, damaged, truncation) {
        tally.fail(format!("{label}: {e}"));
    }
    if !sampled {
        return;
    }
    std::fs::write(&t.path, damaged).expect("write damaged file");
    let mut backends = vec![s.backend];
    if let Some(other) = s
        .other_backend
        .filter(|_| n.is_multiple_of(stride(ROCKSDB_STRIDE)))
    {
        backends.push(other);
    }
    for backend in backends {
        tally.full_restores += 1;
        if matches!(backend, Backend::RocksDb | Backend::ChangelogRocksDb) {
            tally.rocksdb_restores += 1;
        }
        match catch_unwind(AssertUnwindSafe(|| s.restore(backend))) {
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tally.fail(format!("{label}: {backend:?} restore panicked: {msg}"));
            }
            Ok(Ok(state)) if state == s.expected => {
                tally.fail(format!("{label}: {backend:?} restore succeeded"))
            }
            Ok(Ok(_)) => tally.fail(format!(
                "{label}: {backend:?} restore succeeded with different state"
            )),
            Ok(Err(e)) => {
                if let Some(problem) = error_problem(&e, t, truncation) {
                    tally.fail(format!("{label}: {backend:?} restore error {problem}: {e}"));
                }
            }
        }
    }
    if let Location::Checkpoint { storage, id } = &s.at {
        tally.verifies += 1;
        match storage.verify(*id) {
            Ok(_) => tally.fail(format!("{label}: verify succeeded")),
            // Verify checks sizes and CRC32s, which locate nothing inside a file.
            Err(e) if !e.to_string().contains(&t.name) => {
                tally.fail(format!("{label}: verify error does not name the file: {e}"))
            }
            Err(_) => {}
        }
    }
}

fn stride(default: u64) -> u64 {
    std::env::var("CAIRN_MATRIX_STRIDE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// Flips every bit and cuts at every length of every file of `s`.
fn run_matrix(s: &Snapshot, tally: &mut Tally) {
    assert_eq!(
        s.restore(s.backend).expect("intact snapshot restores"),
        s.expected
    );
    let stride = stride(s.stride);
    for t in &s.files {
        let original = std::fs::read(&t.path).expect("read snapshot file");
        let len = original.len();
        let mut n = 0u64;
        let mut damaged = original.clone();
        for bit in 0..len * 8 {
            damaged[bit / 8] ^= 1 << (bit % 8);
            tally.bit_flips += 1;
            let what = format!("bit {bit} flipped");
            check_variant(s, t, &damaged, &what, n, n.is_multiple_of(stride), tally);
            damaged[bit / 8] ^= 1 << (bit % 8);
            n += 1;
        }
        for cut in 0..len {
            tally.truncations += 1;
            let sampled = cut == 0 || cut + 1 == len || n.is_multiple_of(stride);
            let what = format!("truncated to {cut} bytes");
            check_variant(s, t, &original[..cut], &what, n, sampled, tally);
            n += 1;
        }
        std::fs::write(&t.path, &original).expect("restore the intact file");
    }
    assert_eq!(
        s.restore(s.backend).expect("repaired snapshot restores"),
        s.expected
    );
}

/// Every file of a manifest, on disk, under `private` (the manifest's directory) and
/// `shared`.
fn targets(m: &Manifest, private: &Path, shared: &Path) -> Vec<Target> {
    let mut out = vec![Target {
        name: MANIFEST_FILE_NAME.to_string(),
        path: private.join(MANIFEST_FILE_NAME),
        kind: FileKind::Manifest,
        file: None,
    }];
    for sub in &m.operators[0].subtasks {
        if let Some(h) = &sub.keyed {
            handle_targets(h, private, shared, &mut out);
        }
    }
    out
}

/// The files of handle `h` (of a changelog handle: its materialized handles' and its
/// segments).
fn handle_targets(h: &KeyedStateHandle, private: &Path, shared: &Path, out: &mut Vec<Target>) {
    let mut push = |f: &FileRef, kind| {
        let base = match f.area {
            FileArea::Private => private,
            FileArea::Shared => shared,
        };
        out.push(Target {
            name: f.name.clone(),
            path: base.join(&f.name),
            kind,
            file: Some(f.clone()),
        });
    };
    match &h.data {
        KeyedData::Canonical { files } => {
            for f in files {
                push(&f.file, FileKind::StateFile);
            }
        }
        KeyedData::Changelog {
            materialized,
            segments,
        } => {
            for s in segments {
                push(&s.file, FileKind::Segment);
            }
            for m in materialized {
                handle_targets(m, private, shared, out);
            }
        }
        _ => {
            for f in h.files() {
                push(f, FileKind::Native);
            }
        }
    }
}

/// A keyed operator of `parallelism` subtasks holding every state kind for `keys`, with an
/// operator list state in each subtask.
fn operator<F: BackendFactory>(f: &F, keys: &[String], parallelism: u32) -> Operator<F::Backend> {
    let mut op = Operator::new(f, UID, MAX_P, parallelism);
    for (i, (_, o)) in op.subtasks.iter_mut().enumerate() {
        let id = o
            .register_list(&OperatorListStateDescriptor::<u64>::split("offsets"))
            .unwrap();
        o.list(id)
            .unwrap()
            .extend([i as u64 * 100, i as u64 * 100 + 1]);
    }
    write(&mut op, keys, 0);
    op
}

fn write<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], round: u64) {
    for (i, k) in keys.iter().enumerate() {
        let b = op.owner(k);
        let ids = register(b);
        // i + 6·round: every kind for every key over the first rounds (see fill_key).
        fill_key(b, &ids, k, i as u64 + 6 * round);
    }
}

fn expected<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String]) -> Restored {
    Restored {
        keyed: read_operator(op, keys),
        operator: op
            .subtasks
            .iter()
            .map(|(_, o)| o.snapshot().unwrap())
            .collect(),
    }
}

fn all_keys() -> Vec<String> {
    keys_in(KeyGroupRange::all(MAX_P), MAX_P, 6)
}

/// A checkpoint (`incremental`: the second of two, referencing the first one's shared
/// files) in a job directory under `root`.
fn checkpoint_snapshot<F: BackendFactory>(
    name: &'static str,
    f: &F,
    backend: Backend,
    root: &Path,
    incremental: bool,
) -> Snapshot {
    let keys = all_keys();
    let storage = CheckpointStorage::open(root.to_str().unwrap()).unwrap();
    // One RocksDB instance is enough to have every kind of native file (and its OPTIONS
    // file alone is 43 KB).
    let parallelism = match backend {
        Backend::RocksDb | Backend::ChangelogRocksDb => 1,
        Backend::HashMap | Backend::ChangelogHashMap => 2,
    };
    let mut op = operator(f, &keys, parallelism);
    let mut id = 1;
    if incremental {
        checkpoint(&mut op, &storage, id, true);
        // Change the keys of one key group only, so the second checkpoint references the
        // first one's shared file for the others.
        let kg = cairn_core::key_group_for_key(&key_bytes(&keys[0]), MAX_P);
        let changed: Vec<String> = keys
            .iter()
            .filter(|k| cairn_core::key_group_for_key(&key_bytes(k), MAX_P) == kg)
            .cloned()
            .collect();
        write(&mut op, &changed, 1);
        id = 2;
    }
    let m = checkpoint(&mut op, &storage, id, incremental);
    let files = targets(&m, &root.join(format!("chk-{id}")), &root.join("shared"));
    Snapshot {
        name,
        at: Location::Checkpoint { storage, id },
        backend,
        other_backend: None,
        stride: match backend {
            Backend::RocksDb | Backend::ChangelogRocksDb => ROCKSDB_STRIDE,
            Backend::HashMap | Backend::ChangelogHashMap => HEAP_STRIDE,
        },
        expected: expected(&mut op, &keys),
        keys,
        files,
        rocks: RocksDbFactory::new(),
        changelog_rocks: ChangelogFactory::new(RocksDbFactory::new()),
    }
}

/// A changelog checkpoint of a changelog backend around the heap backend in each of two
/// subtasks: every subtask materializes the first round of writes, then a second round
/// (every key again, and on two keys a clear, a list set and map removals, so that the
/// segments hold every op) goes to the segments after the materialization.
fn changelog_snapshot(root: &Path) -> Snapshot {
    let keys = all_keys();
    let storage = CheckpointStorage::open(root.to_str().unwrap()).unwrap();
    // Materialization only when asked.
    let f = ChangelogFactory {
        min_log_bytes: u64::MAX,
        ..ChangelogFactory::new(HashMapFactory)
    };
    let mut op = operator(&f, &keys, 2);
    for (b, _) in &mut op.subtasks {
        b.materialize_now().unwrap();
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    for (b, _) in &mut op.subtasks {
        while b.is_materializing() {
            assert!(Instant::now() < deadline, "materialization did not finish");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(b.last_materialization_error(), None);
    }
    write(&mut op, &keys, 1);
    for k in &keys[..2] {
        let b = op.owner(k);
        let ids = register(b);
        set_key(b, k);
        b.value(&ids.value).clear().unwrap();
        b.list(&ids.list).update(vec!["set".into()]).unwrap();
        b.map(&ids.map).remove(&0).unwrap();
        b.map(&ids.map).remove(&1).unwrap();
    }
    let m = checkpoint(&mut op, &storage, 1, true);
    for sub in &m.operators[0].subtasks {
        let h = sub.keyed.as_ref().expect("keyed state");
        let KeyedData::Changelog {
            materialized,
            segments,
        } = &h.data
        else {
            panic!("not a changelog handle: {h:?}");
        };
        assert!(!materialized.is_empty() && !segments.is_empty());
    }
    let files = targets(&m, &root.join("chk-1"), &root.join("shared"));
    Snapshot {
        name: "changelog checkpoint",
        at: Location::Checkpoint { storage, id: 1 },
        backend: Backend::ChangelogHashMap,
        other_backend: Some(Backend::ChangelogRocksDb),
        stride: HEAP_STRIDE,
        expected: expected(&mut op, &keys),
        keys,
        files,
        rocks: RocksDbFactory::new(),
        changelog_rocks: ChangelogFactory::new(RocksDbFactory::new()),
    }
}

fn savepoint_snapshot(root: &Path) -> Snapshot {
    let keys = all_keys();
    let mut op = operator(&HashMapFactory, &keys, 2);
    let url = root.join("sp-1").to_str().unwrap().to_string();
    let pending = snapshot_operator(
        UID,
        MAX_P,
        op.subtasks.iter_mut().map(|(b, o)| SubtaskRef {
            keyed: Some(b),
            operator: o,
        }),
        SnapshotOptions::savepoint(1),
    )
    .unwrap();
    let m = write_savepoint(&url, 1, vec![pending]).unwrap();
    let dir = root.join("sp-1");
    Snapshot {
        name: "canonical savepoint",
        files: targets(&m, &dir, &dir),
        at: Location::Savepoint { url },
        backend: Backend::HashMap,
        other_backend: Some(Backend::RocksDb),
        stride: HEAP_STRIDE,
        expected: expected(&mut op, &keys),
        keys,
        rocks: RocksDbFactory::new(),
        changelog_rocks: ChangelogFactory::new(RocksDbFactory::new()),
    }
}

fn report(s: &Snapshot, tally: &Tally, started: Instant) {
    let bytes: u64 = s
        .files
        .iter()
        .map(|t| std::fs::metadata(&t.path).map_or(0, |m| m.len()))
        .sum();
    eprintln!(
        "{}: {} files, {bytes} bytes; {} bit flips, {} truncations, {} full restores ({} RocksDB), {} verifies, {} failures, {:.1?}",
        s.name,
        s.files.len(),
        tally.bit_flips,
        tally.truncations,
        tally.full_restores,
        tally.rocksdb_restores,
        tally.verifies,
        tally.failures.len(),
        started.elapsed()
    );
    for t in &s.files {
        eprintln!(
            "  {:?} {} ({} bytes)",
            t.kind,
            t.name,
            std::fs::metadata(&t.path).map_or(0, |m| m.len())
        );
    }
}

fn assert_clean(s: &Snapshot, tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{}: {} damaged variants not reported as errors; the first ones:\n{}",
        s.name,
        tally.failures.len(),
        tally
            .failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn matrix(s: &Snapshot) {
    let started = Instant::now();
    let mut tally = Tally::default();
    run_matrix(s, &mut tally);
    report(s, &tally, started);
    assert!(tally.bit_flips > 0 && tally.truncations > 0);
    assert_clean(s, &tally);
}

#[test]
fn every_bit_flip_and_truncation_of_a_heap_full_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = checkpoint_snapshot(
        "heap full checkpoint",
        &HashMapFactory,
        Backend::HashMap,
        dir.path(),
        false,
    );
    matrix(&s);
}

#[test]
fn every_bit_flip_and_truncation_of_a_heap_incremental_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = checkpoint_snapshot(
        "heap incremental checkpoint",
        &HashMapFactory,
        Backend::HashMap,
        dir.path(),
        true,
    );
    let shared = s
        .files
        .iter()
        .filter(|t| t.file.as_ref().is_some_and(|f| f.area == FileArea::Shared))
        .count();
    assert!(
        shared >= 2,
        "the first checkpoint's shared file and a new one"
    );
    matrix(&s);
}

#[test]
fn every_bit_flip_and_truncation_of_a_rocksdb_native_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbFactory::new();
    let s = checkpoint_snapshot(
        "rocksdb native incremental checkpoint",
        &rocks,
        Backend::RocksDb,
        dir.path(),
        true,
    );
    matrix(&s);
}

#[test]
fn every_bit_flip_and_truncation_of_a_changelog_checkpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = changelog_snapshot(dir.path());
    let segments = s
        .files
        .iter()
        .filter(|t| t.kind == FileKind::Segment)
        .count();
    assert!(segments >= 2, "a segment per subtask at least");
    matrix(&s);
}

#[test]
fn every_bit_flip_and_truncation_of_a_canonical_savepoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = savepoint_snapshot(dir.path());
    matrix(&s);
}
