//! Canonical restore by SST ingestion: the key groups to restore are split into a few
//! consecutive ranges of about equal weight, one worker thread per range decodes its key
//! groups from the state files and writes one SST file per column family (meanwhile the
//! calling thread creates the column families), and each column family then ingests all its
//! files in one call (moved, not copied).
//!
//! Why this is correct for any split: a RocksDB key starts with its key group (u16 BE,
//! `layout.rs`), and the state file orders entries by key group, then as the column family
//! orders keys. So the keys one worker writes to a column family increase, and the files of
//! two workers cover disjoint, ordered key ranges: RocksDB places them side by side in the
//! bottommost level, exactly as one file would be.
//!
//! Where the time goes (W2: 1M `u64` counts, one state, 2 cores; `perf record` over 8 W2
//! runs at load ~2.5, files written without a bloom filter in that experiment, see below):
//! RocksDB's `SstFileWriter::put` takes about 63% of the restore's CPU (LZ4 block
//! compression 19%, data blocks, index and properties 29%, its own order check, internal
//! key and FFI 16%), the state file's zstd decode 11%,
//! its entry decode, building the RocksDB key and the checks about 16% (the key group hash
//! 2%); opening the instance 3%, creating the column family 1%, finishing the files 1%
//! and the ingest call 1%. About 10% of the samples are in the kernel (writes, page cache).
//!
//! The fixed costs, timed one by one over 5 W2 restores (load 2.4-3.5; the first figure is
//! the quietest): opening the fresh instance 6.5 ms (12-60 ms loaded; it happens in
//! `RocksDbBackend::new`, before the restore knows its states, and writes and syncs
//! IDENTITY, MANIFEST, CURRENT and OPTIONS, each fsync 0.2-0.7 ms), creating the column
//! family 1.6 ms (10-29 ms loaded, overlapping the workers), opening an SST writer
//! 0.1-0.2 ms, finishing one (it syncs) 1-9 ms, the ingest call 2.6-20 ms, removing the
//! directory 0.2-4 ms. None is avoidable through the `rocksdb` crate: `SstFileWriter`
//! always syncs on finish, and `IngestExternalFileOptions` has no switch for the second
//! sync of a moved file (the snapshot and flush switches it has cost nothing here).
//!
//! A put-per-entry restore of the same file (memtable inserts, WAL off) costs 1.3x-1.5x
//! this CPU (W2's `cpu_ratio`), so ingestion is ahead by that much when the cores are busy,
//! and by up to about 2x when both workers get a core of their own: with about 0.145 s of
//! CPU on 2 cores and ~10 ms that run alone, a restore cannot take less than ~0.08 s, while
//! the baseline takes 0.16-0.2 s.
//!
//! The files are written with the column family's options except the bloom filter and
//! compression (`Instance::restore_sst_options`). Without the filter a restore costs about
//! 10-20% less CPU. The column families keep filters in every level (`options.rs`: a get of
//! a key that is not stored reads no data block), so until compaction rewrites the restored
//! files, such a get reads one of their blocks; the first compaction into the bottommost
//! level writes the filters. `SstFileWriter` would use the bottommost
//! compression (ZSTD), which costs about 35% more CPU than LZ4 here; no compression would
//! save about 12% but writes files 3.4x larger, which stay until compaction rewrites them
//! and which the first native incremental checkpoint after the restore uploads whole.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cairn_core::*;
use cairn_format::{EntryRef, FormatError, StateFileReader};
use rocksdb::Options;

use crate::backend::RocksDbBackend;
use crate::layout::{list_from_canonical, push_escaped, push_kg};
use crate::sst::SstSet;

/// One piece of a canonical restore: key groups read from one file.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub(crate) range: KeyGroupRange,
    pub(crate) file: FileRef,
}

/// The most worker threads a restore uses.
const MAX_WORKERS: usize = 8;
/// The least work worth a worker of its own, in weight units (see [`weight`]): about 64k
/// small entries. Smaller restores run on the calling thread and write one file per column
/// family.
const MIN_WORKER_WEIGHT: u64 = 1 << 20;

/// How a restore spreads its work.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Parallelism {
    pub(crate) workers: usize,
    pub(crate) min_weight: u64,
}

impl Parallelism {
    /// One worker per available core (at most [`MAX_WORKERS`]).
    pub(crate) fn available() -> Self {
        #[cfg(test)]
        if let Some(p) = tests::FORCE.with(std::cell::Cell::get) {
            return p;
        }
        static CORES: OnceLock<usize> = OnceLock::new();
        let cores =
            *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self {
            workers: cores.clamp(1, MAX_WORKERS),
            min_weight: MIN_WORKER_WEIGHT,
        }
    }
}

/// The cost estimate of a key group: decoding and writing scale with its entries and its
/// bytes.
fn weight(stats: &cairn_format::KeyGroupStats) -> u64 {
    stats.entries.saturating_mul(16).saturating_add(stats.bytes)
}

/// Splits `range` into consecutive ranges that tile it, at most `p.workers` of them and
/// each (but the last) with at least `p.min_weight`, of about equal total weight.
/// `weights` are `(key group, weight)` in increasing key-group order.
pub(crate) fn split(
    range: KeyGroupRange,
    weights: &[(KeyGroup, u64)],
    p: Parallelism,
) -> Vec<KeyGroupRange> {
    let total: u64 = weights.iter().map(|w| w.1).sum();
    let n = (total / p.min_weight.max(1)).clamp(1, p.workers.max(1) as u64);
    let mut out = Vec::with_capacity(n as usize);
    let mut start = range.start;
    let mut acc = 0u64;
    for &(kg, w) in weights {
        // Cut before `kg` once the ranges so far hold their share.
        let k = out.len() as u64 + 1;
        if k < n && kg > start && acc >= total / n * k {
            out.push(KeyGroupRange::new(start, kg));
            start = kg;
        }
        acc += w;
    }
    out.push(KeyGroupRange::new(start, range.end.max(start)));
    out
}

/// A state file opened for the restore, with its state table resolved to column families.
struct OpenFile {
    reader: StateFileReader,
    path: String,
    /// Per state of the file's table: its column family index.
    cfs: Vec<usize>,
    /// Per state of the file's table: its kind.
    kinds: Vec<StateKind>,
}

/// Restores canonical `pieces` (disjoint, any order) into the backend's instance by
/// building SST files and ingesting them. `metas` are the handles' states.
pub(crate) fn ingest(
    b: &mut RocksDbBackend,
    pieces: Vec<Piece>,
    metas: &BTreeMap<String, StateMeta>,
    source: &dyn SnapshotSource,
) -> Result<()> {
    ingest_with(b, pieces, metas, source, Parallelism::available())
}

pub(crate) fn ingest_with(
    b: &mut RocksDbBackend,
    mut pieces: Vec<Piece>,
    metas: &BTreeMap<String, StateMeta>,
    source: &dyn SnapshotSource,
    p: Parallelism,
) -> Result<()> {
    pieces.sort_by_key(|p| p.range.start);
    let dir = b.root.join(format!("ingest-{}", b.seq));
    b.seq += 1;
    let max_p = b.max_parallelism;
    let range = b.range;
    let inst = b.inst.as_mut().ok_or_else(|| StateError::Restore {
        reason: "the rocksdb instance is closed".into(),
    })?;
    let cf_names: Vec<String> = metas.keys().cloned().collect();

    // Each file is read and opened once, however many pieces it supplies.
    let mut files: Vec<OpenFile> = Vec::new();
    let mut by_name: HashMap<(FileArea, &str), usize> = HashMap::new();
    let mut work: Vec<(usize, KeyGroupRange)> = Vec::with_capacity(pieces.len());
    for piece in &pieces {
        let key = (piece.file.area, piece.file.name.as_str());
        let i = match by_name.get(&key) {
            Some(&i) => i,
            None => {
                files.push(open_file(&piece.file, metas, &cf_names, source)?);
                by_name.insert(key, files.len() - 1);
                files.len() - 1
            }
        };
        work.push((i, piece.range));
    }
    let mut weights = Vec::new();
    for &(i, r) in &work {
        if let Some(f) = files.get(i) {
            let stats = f.reader.key_groups();
            let first = stats.partition_point(|k| k.key_group < r.start);
            for s in stats.get(first..).unwrap_or_default() {
                if s.key_group >= r.end {
                    break;
                }
                weights.push((s.key_group, weight(s)));
            }
        }
    }
    let ranges = split(range, &weights, p);
    // `Options` is not `Sync`: every worker gets its own.
    let opts: Vec<Options> = ranges.iter().map(|_| inst.restore_sst_options()).collect();

    std::fs::create_dir_all(&dir).map_err(|e| crate::db::io_err("creating ingest dir", &dir, e))?;
    let job = Job {
        files: &files,
        work: &work,
        dir: &dir,
        cf_names: &cf_names,
        max_p,
    };
    // The workers build the files while this thread creates the column families (RocksDB
    // writes and syncs its MANIFEST and OPTIONS files for each).
    let (created, built) = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .zip(opts)
            .enumerate()
            .map(|(w, (r, o))| {
                let job = &job;
                s.spawn(move || job.build(w, *r, &o))
            })
            .collect();
        let created: Result<()> = metas.values().try_for_each(|m| inst.ensure_cf(m));
        let built: Vec<Result<Vec<(usize, PathBuf)>>> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StateError::Restore {
                        reason: format!("a restore worker panicked dir={}", dir.display()),
                    })
                })
            })
            .collect();
        (created, built)
    });
    let inst = &*inst;
    let result = (|| {
        created?;
        let mut per_cf: Vec<Vec<PathBuf>> = cf_names.iter().map(|_| Vec::new()).collect();
        for files in built {
            for (cf, path) in files? {
                if let Some(v) = per_cf.get_mut(cf) {
                    v.push(path);
                }
            }
        }
        for (name, paths) in cf_names.iter().zip(per_cf) {
            if !paths.is_empty() {
                inst.ingest(name, paths)?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// What every worker shares.
struct Job<'a> {
    files: &'a [OpenFile],
    /// `(file, key groups)`, in key-group order.
    work: &'a [(usize, KeyGroupRange)],
    dir: &'a Path,
    cf_names: &'a [String],
    max_p: u32,
}

impl Job<'_> {
    /// Writes the SST files of worker `w`, which restores the key groups in `mine`.
    fn build(
        &self,
        w: usize,
        mine: KeyGroupRange,
        opts: &Options,
    ) -> Result<Vec<(usize, PathBuf)>> {
        let mut ssts = SstSet::new(opts, self.dir, w, self.cf_names);
        let mut key = Vec::with_capacity(64);
        for &(i, r) in self.work {
            let r = r.intersect(&mine);
            if r.is_empty() {
                continue;
            }
            let Some(file) = self.files.get(i) else {
                continue;
            };
            scan_piece(file, r, self.max_p, &mut key, &mut ssts)?;
        }
        ssts.finish()
    }
}

fn open_file(
    file: &FileRef,
    metas: &BTreeMap<String, StateMeta>,
    cf_names: &[String],
    source: &dyn SnapshotSource,
) -> Result<OpenFile> {
    let path = file.to_string();
    let bytes = source
        .read_file(file)
        .map_err(|e| StateError::layer(format!("reading state file path={path}"), e))?;
    check_whole_file(&bytes, file, &path)?;
    let reader = StateFileReader::open(bytes, &path)
        .map_err(|e| StateError::layer(format!("reading state file path={path}"), e))?;
    let mut cfs = Vec::with_capacity(reader.states().len());
    let mut kinds = Vec::with_capacity(reader.states().len());
    for fs in reader.states() {
        match metas.get(&fs.name) {
            Some(m) if m.kind == fs.kind => {}
            Some(m) => {
                return Err(corrupt(
                    &path,
                    format!(
                        "state {} is {:?} in the file but {:?} in its handle",
                        fs.name, fs.kind, m.kind
                    ),
                ))
            }
            None => {
                return Err(corrupt(
                    &path,
                    format!("state {} is not in its handle", fs.name),
                ))
            }
        }
        let cf = cf_names
            .iter()
            .position(|n| *n == fs.name)
            .ok_or_else(|| corrupt(&path, format!("state {} has no column family", fs.name)))?;
        cfs.push(cf);
        kinds.push(fs.kind);
    }
    Ok(OpenFile {
        reader,
        path,
        cfs,
        kinds,
    })
}

/// Checks the bytes read for `file` against its size and whole-file CRC32 rather than
/// trusting the source to: the block checksums catch damage only where the restore reads
/// (not in the key groups another subtask restores), and not a whole file of the same size
/// in the place of this one (from another checkpoint), which would restore as wrong
/// state. A mismatch the file's own checks can locate names the offset of the damage.
fn check_whole_file(bytes: &bytes::Bytes, file: &FileRef, path: &str) -> Result<()> {
    let crc = crc32fast::hash(bytes);
    if bytes.len() as u64 == file.size && crc == file.crc32 {
        return Ok(());
    }
    let mismatch = format!(
        "state file does not match its reference (size or crc32) path={path} size={} expected_size={} crc32={crc:#010x} expected_crc32={:#010x}",
        bytes.len(),
        file.size,
        file.crc32
    );
    let located = StateFileReader::open(bytes.clone(), path).and_then(|r| r.verify_all());
    Err(match located {
        Err(e) => StateError::layer(mismatch, e),
        Ok(()) => StateError::Restore { reason: mismatch },
    })
}

fn corrupt(path: &str, detail: String) -> StateError {
    StateError::layer(
        format!("restoring keyed state path={path}"),
        format!("corrupt snapshot: {detail}"),
    )
}

enum ScanError {
    Format(FormatError),
    State(StateError),
}

impl From<FormatError> for ScanError {
    fn from(e: FormatError) -> Self {
        ScanError::Format(e)
    }
}

/// Writes the entries of `range` in `file` to their column families' SST files.
fn scan_piece(
    file: &OpenFile,
    range: KeyGroupRange,
    max_p: u32,
    key: &mut Vec<u8>,
    ssts: &mut SstSet<'_>,
) -> Result<()> {
    let path = file.path.as_str();
    let name = |s: usize| state_name(file, s);
    let result = file.reader.scan(range, |e: EntryRef<'_>| -> Result<(), ScanError> {
        let fail = |d: String| ScanError::State(corrupt(path, d));
        if !range.contains(e.key_group) {
            return Err(fail(format!("entry of key group {} outside {range}", e.key_group)));
        }
        let s = e.state as usize;
        let (Some(&cf), Some(&kind)) = (file.cfs.get(s), file.kinds.get(s)) else {
            return Err(fail(format!("entry of unknown state {}", e.state)));
        };
        let computed = key_group_for_key(e.key, max_p);
        if computed != e.key_group {
            return Err(fail(format!(
                "entry of state {} stored in key group {} but its key hashes to {computed} (another max parallelism?)",
                name(s), e.key_group
            )));
        }
        if e.user_key.is_some() != (kind == StateKind::Map) {
            return Err(fail(format!("user key mismatch for {kind:?} state {}", name(s))));
        }
        key.clear();
        push_kg(key, e.key_group);
        push_escaped(key, e.key);
        push_escaped(key, e.namespace);
        if let Some(uk) = e.user_key {
            key.extend_from_slice(uk);
        }
        let value = if kind == StateKind::List {
            list_from_canonical(e.value)?
        } else {
            e.value
        };
        ssts.put(cf, key, value).map_err(ScanError::State)
    });
    match result {
        Ok(()) => Ok(()),
        Err(ScanError::Format(e)) => Err(StateError::layer(
            format!("reading state file path={path}"),
            e,
        )),
        Err(ScanError::State(e)) => Err(e),
    }
}

/// The name of state `i` of the file's table, for errors.
fn state_name(file: &OpenFile, i: usize) -> &str {
    file.reader.states().get(i).map_or("?", |s| s.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    use crate::test_support::{u64_backend, Mem};
    use crate::RocksDbOptions;

    thread_local! {
        /// Forces the restores of this thread to split as given, however small.
        pub(super) static FORCE: Cell<Option<Parallelism>> = const { Cell::new(None) };
    }

    const MAX_P: u32 = 128;
    const KEYS: u64 = 3000;

    fn backend(dir: &Path, range: KeyGroupRange) -> RocksDbBackend {
        u64_backend(dir, range, RocksDbOptions::default().cache_capacity)
    }

    /// The test's states: a value, a list and a map per key.
    type Ids = (
        ValueStateId<u64, VoidNamespace>,
        ListStateId<u64, VoidNamespace>,
        MapStateId<u64, u64, VoidNamespace>,
    );

    fn ids<B: KeyedStateBackend>(b: &mut B) -> Ids {
        (
            b.register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap(),
            b.register_list(&ListStateDescriptor::<u64>::new("l"))
                .unwrap(),
            b.register_map(&MapStateDescriptor::<u64, u64>::new("m"))
                .unwrap(),
        )
    }

    fn kg(k: u64) -> KeyGroup {
        key_group_for_key(&k.to_le_bytes(), MAX_P)
    }

    /// Every key of `range` gets a value; two in three a list; every other one a map.
    fn fill(b: &mut RocksDbBackend, range: KeyGroupRange) {
        let (v, l, m) = ids(b);
        for k in (0..KEYS).filter(|k| range.contains(kg(*k))) {
            b.set_current_key(&k.to_le_bytes()).unwrap();
            b.value(&v).update(k * 7 + 1).unwrap();
            if k % 3 != 0 {
                b.list(&l).add(k).unwrap();
                b.list(&l).add(k + 1).unwrap();
            }
            if k % 2 == 0 {
                b.map(&m).put(1, k).unwrap();
                b.map(&m).put(2, k * 2).unwrap();
            }
        }
    }

    fn check(b: &mut RocksDbBackend) {
        let range = b.range;
        let (v, l, m) = ids(b);
        let mut seen = 0;
        for k in (0..KEYS).filter(|k| range.contains(kg(*k))) {
            seen += 1;
            b.set_current_key(&k.to_le_bytes()).unwrap();
            assert_eq!(b.value(&v).get().unwrap(), Some(k * 7 + 1), "key {k}");
            let list = if k % 3 != 0 { vec![k, k + 1] } else { vec![] };
            assert_eq!(b.list(&l).get().unwrap(), list, "key {k}");
            let (one, two) = if k % 2 == 0 {
                (Some(k), Some(k * 2))
            } else {
                (None, None)
            };
            assert_eq!(b.map(&m).get(&1).unwrap(), one, "key {k}");
            assert_eq!(b.map(&m).get(&2).unwrap(), two, "key {k}");
            assert!(!b.map(&m).contains(&3).unwrap(), "key {k}");
        }
        assert!(seen > 0);
    }

    /// The number of SST files of each column family in the backend's instance.
    fn files_per_cf(b: &RocksDbBackend) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for f in b.inst.as_ref().unwrap().db.live_files().unwrap() {
            *out.entry(f.column_family_name).or_default() += 1;
        }
        out
    }

    /// Canonical snapshots of `parallelism` source backends (one file each).
    fn snapshots(dir: &Path, parallelism: u32, mem: &Mem) -> Vec<KeyedStateHandle> {
        (0..parallelism)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(MAX_P, parallelism, i).unwrap();
                let mut b = backend(&dir.join(format!("src-{parallelism}-{i}")), range);
                fill(&mut b, range);
                let snap = b.snapshot(SnapshotOptions::savepoint(1)).unwrap();
                snap.run(mem, &CancelToken::new()).unwrap()
            })
            .collect()
    }

    #[test]
    fn restores_with_any_number_of_workers_into_any_range() {
        let tmp = tempfile::tempdir().unwrap();
        let mem = Mem::default();
        let one = snapshots(tmp.path(), 1, &mem);
        let two = snapshots(tmp.path(), 2, &mem);
        let mut n = 0;
        for handles in [&one, &two] {
            for (p, i) in [(1, 0), (3, 1), (4, 3)] {
                let range = KeyGroupRange::for_subtask(MAX_P, p, i).unwrap();
                for workers in [1, 2, 3, 7] {
                    n += 1;
                    FORCE.with(|f| {
                        f.set(Some(Parallelism {
                            workers,
                            min_weight: 1,
                        }))
                    });
                    let mut b = backend(&tmp.path().join(format!("dst-{n}")), range);
                    b.restore(handles, &mem).unwrap();
                    FORCE.with(|f| f.set(None));
                    let files = files_per_cf(&b);
                    for cf in ["v", "l", "m"] {
                        let got = files.get(cf).copied().unwrap_or(0);
                        if workers == 1 {
                            assert_eq!(got, 1, "cf={cf} range={range} files={files:?}");
                        } else {
                            assert!(
                                (2..=workers).contains(&got),
                                "cf={cf} range={range} workers={workers} files={files:?}"
                            );
                        }
                    }
                    check(&mut b);
                }
            }
        }
    }

    /// Restored files go to the bottommost level, built without bloom filters.
    #[test]
    fn restored_files_land_in_the_bottommost_level_without_filters() {
        let tmp = tempfile::tempdir().unwrap();
        let mem = Mem::default();
        let handles = snapshots(tmp.path(), 1, &mem);
        let range = KeyGroupRange::all(MAX_P);
        FORCE.with(|f| f.set(Some(p(2, 1))));
        let mut b = backend(&tmp.path().join("dst"), range);
        b.restore(&handles, &mem).unwrap();
        FORCE.with(|f| f.set(None));
        let inst = b.inst.as_ref().unwrap();
        let files = inst.db.live_files().unwrap();
        assert!(files.len() >= 3, "{files:?}");
        for f in &files {
            assert_eq!(f.level, 6, "{} of cf {}", f.name, f.column_family_name);
        }
        for cf in ["v", "l", "m"] {
            let props = inst
                .db
                .property_value_cf(inst.cf(cf).unwrap(), "rocksdb.aggregated-table-properties")
                .unwrap()
                .unwrap();
            assert!(
                props.contains("filter block size=0; # entries for filter=0;"),
                "cf={cf}: {props}"
            );
        }
        check(&mut b);
    }

    fn p(workers: usize, min_weight: u64) -> Parallelism {
        Parallelism {
            workers,
            min_weight,
        }
    }

    fn check_tiles(range: KeyGroupRange, out: &[KeyGroupRange]) {
        assert!(!out.is_empty());
        assert_eq!(out[0].start, range.start);
        assert_eq!(out[out.len() - 1].end, range.end);
        for w in out.windows(2) {
            assert_eq!(w[0].end, w[1].start, "{out:?}");
            assert!(!w[0].is_empty(), "{out:?}");
        }
    }

    #[test]
    fn split_balances_and_tiles() {
        let range = KeyGroupRange::new(0, 128);
        let weights: Vec<_> = (0..128).map(|kg| (kg, 10)).collect();
        let out = split(range, &weights, p(2, 1));
        assert_eq!(
            out,
            vec![KeyGroupRange::new(0, 64), KeyGroupRange::new(64, 128)]
        );
        let out = split(range, &weights, p(3, 1));
        check_tiles(range, &out);
        assert_eq!(out.len(), 3);
        for r in &out {
            assert!((42..=44).contains(&r.len()), "{out:?}");
        }
    }

    #[test]
    fn split_keeps_small_work_on_one_worker() {
        let range = KeyGroupRange::new(10, 20);
        let weights: Vec<_> = (10..20).map(|kg| (kg, 10)).collect();
        assert_eq!(split(range, &weights, p(4, 1000)), vec![range]);
        assert_eq!(split(range, &weights, p(4, 50)).len(), 2);
        assert_eq!(split(range, &[], p(4, 1)), vec![range]);
    }

    #[test]
    fn split_with_sparse_and_skewed_weights_tiles_the_range() {
        let range = KeyGroupRange::new(5, 300);
        // One heavy key group, a few light ones.
        let weights = vec![(7, 1), (9, 1000), (100, 1), (250, 1), (299, 1)];
        for workers in 1..6 {
            let out = split(range, &weights, p(workers, 1));
            check_tiles(range, &out);
            assert!(out.len() <= workers);
        }
        // A single present key group cannot be split.
        let out = split(range, &[(42, 1000)], p(4, 1));
        check_tiles(range, &out);
        assert_eq!(out.len(), 1);
    }
}
