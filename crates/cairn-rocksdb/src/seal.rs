//! Sealing a snapshot off the task thread: writing the dirty entries taken at the barrier
//! and creating the RocksDB checkpoint.
//!
//! At a barrier the synchronous phase only encodes the cache's dirty entries into a
//! [`Frozen`] set (one buffer, no allocation per entry), marks them clean and hands them to
//! a seal worker thread, with the spill (the dirty entries evicted since the last seal,
//! `spill.rs`). The worker adds the spilled entries to the set, sorts it, moves their bytes
//! into that order (one copying pass whose cache misses overlap) and writes them in key
//! order, in write batches (sorted inserts are the cheap case of the memtable's skiplist).
//! Then it creates the RocksDB checkpoint: with the WAL (`RocksDbOptions::checkpoint_wal`)
//! it starts a new log ([`roll_wal`]) and the checkpoint hard-links the SST files and the
//! complete logs; without it, a large set is written as one SST file per state and
//! ingested instead (no memtable insert), and the checkpoint flushes the memtables. The
//! asynchronous phase waits for that checkpoint directory and uploads it.
//!
//! Until the worker is done the backend is *sealed*: it writes nothing to RocksDB, so the
//! checkpoint holds exactly the state at the barrier.
//!
//! - Evictions are held back; the cache may grow up to twice its capacity, and past that
//!   the task waits for the worker.
//! - Every operation that writes RocksDB directly (list writes, map clears, the cache
//!   flushes before key listing and map iteration, creating a column family, restore, the
//!   next snapshot) waits for the worker first ([`crate::RocksDbBackend`]'s `settle`).
//! - Reads that miss the cache go to the spill, then to RocksDB, while the worker writes: a
//!   key the worker writes was dirty at the barrier, so it is still in the cache (nothing
//!   is evicted while sealed) or in the spill set the worker writes, which reads still
//!   consult; a key in neither is not one the worker writes.
//!
//! A seal without a snapshot writes the spill out once it is full (no checkpoint is
//! created); the same rules hold while it runs.
//!
//! If the worker cannot write the entries, it hands them back: the task marks them dirty
//! again when it waits for the worker (they are all still cached, and their cached values
//! are the latest) and opens the spilled set again, so a failed snapshot loses no state.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use cairn_core::{Result, StateError};
use rocksdb::{
    ColumnFamily, IngestExternalFileOptions, Options, SstFileWriter, WriteBatch, WriteOptions, DB,
};

use crate::backend::{nonce, STATE_PREFIX_LEN};
use crate::db::{rocks_err, DEFAULT_CF};
use crate::snapshot::ScratchDir;
use crate::spill::SpillSet;
use crate::state::Registered;

/// Entries per `WriteBatch` when writing a frozen set through the memtable.
const BATCH_ENTRIES: usize = 64 * 1024;

/// From this many entries on, a seal writes a frozen set as SST files and ingests them
/// instead of inserting it into the memtable (which the checkpoint would flush right away).
const INGEST_MIN_ENTRIES: usize = 16 * 1024;

/// Value length of a delete.
const DELETE: u32 = u32::MAX;

/// One entry of a [`Frozen`] set: the key at `start`, its value right after it.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The first 8 key bytes, big-endian (zero-padded): sorts most entries without reading
    /// the buffer.
    prefix: u64,
    state: u32,
    key_len: u32,
    start: usize,
    /// [`DELETE`] for a delete.
    value_len: u32,
    /// Superseded (a spill's entry whose key went back to the cache): not written.
    dead: bool,
}

impl Entry {
    fn key<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        bytes
            .get(self.start..self.start + self.key_len as usize)
            .unwrap_or(&[])
    }

    /// Bytes of its key and value.
    fn len(&self) -> usize {
        self.key_len as usize
            + if self.value_len == DELETE {
                0
            } else {
                self.value_len as usize
            }
    }

    fn value<'a>(&self, bytes: &'a [u8]) -> Option<&'a [u8]> {
        if self.value_len == DELETE {
            return None;
        }
        let from = self.start + self.key_len as usize;
        Some(
            bytes
                .get(from..from + self.value_len as usize)
                .unwrap_or(&[]),
        )
    }
}

/// Encoded cache entries to write to RocksDB: keys and values in one buffer.
#[derive(Debug, Default, Clone)]
pub(crate) struct Frozen {
    bytes: Vec<u8>,
    entries: Vec<Entry>,
}

impl Frozen {
    pub(crate) fn with_capacity(entries: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(entries * 24),
            entries: Vec::with_capacity(entries),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds the cache entry `cache_key` (`state index u32 BE | RocksDB key`), encoding its
    /// value with the state's encoder.
    pub(crate) fn push(
        &mut self,
        states: &[Registered],
        cache_key: &[u8],
        value: Option<&dyn std::any::Any>,
    ) -> Result<()> {
        let (idx, raw) = cache_key
            .split_at_checked(STATE_PREFIX_LEN)
            .ok_or_else(|| {
                StateError::layer("flushing the cache", "cache key without a state index")
            })?;
        let state = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
        let r = states
            .get(state as usize)
            .ok_or_else(|| StateError::UnknownState { index: state })?;
        self.push_with(state, raw, |bytes| match value {
            Some(v) => (r.encode_value)(v, bytes),
            None => Ok(false),
        })
    }

    /// Adds an entry whose value is encoded already (`None`: a delete).
    pub(crate) fn push_encoded(
        &mut self,
        state: u32,
        raw: &[u8],
        value: Option<&[u8]>,
    ) -> Result<()> {
        self.push_with(state, raw, |bytes| {
            bytes.extend_from_slice(value.unwrap_or(&[]));
            Ok(value.is_some())
        })
    }

    /// Adds the entry of `raw` in `state`; `encode` appends its value and says whether
    /// there is one (false: a delete).
    fn push_with(
        &mut self,
        state: u32,
        raw: &[u8],
        encode: impl FnOnce(&mut Vec<u8>) -> Result<bool>,
    ) -> Result<()> {
        let too_long = || StateError::layer("flushing the cache", "cache entry over 4 GiB");
        let start = self.bytes.len();
        self.bytes.extend_from_slice(raw);
        let key_end = self.bytes.len();
        let present = encode(&mut self.bytes).inspect_err(|_| {
            self.bytes.truncate(start);
        })?;
        if !present {
            self.bytes.truncate(key_end);
        }
        let lengths = (|| {
            let value_len = if present {
                u32::try_from(self.bytes.len() - key_end)
                    .ok()
                    .filter(|&l| l != DELETE)?
            } else {
                DELETE
            };
            Some((u32::try_from(raw.len()).ok()?, value_len))
        })();
        let Some((key_len, value_len)) = lengths else {
            self.bytes.truncate(start);
            return Err(too_long());
        };
        let mut prefix = [0u8; 8];
        let n = raw.len().min(8);
        prefix[..n].copy_from_slice(&raw[..n]);
        self.entries.push(Entry {
            prefix: u64::from_be_bytes(prefix),
            state,
            key_len,
            start,
            value_len,
            dead: false,
        });
        Ok(())
    }

    /// The live entries: state index, RocksDB key and encoded value (`None`: a delete).
    pub(crate) fn live_entries(&self) -> impl Iterator<Item = (u32, &[u8], Option<&[u8]>)> {
        self.entries
            .iter()
            .filter(|e| !e.dead)
            .map(|e| (e.state, e.key(&self.bytes), e.value(&self.bytes)))
    }

    /// Entries pushed so far, dead ones included.
    pub(crate) fn pushed(&self) -> usize {
        self.entries.len()
    }

    /// The state index and RocksDB key of entry `i`.
    pub(crate) fn key_of(&self, i: usize) -> Option<(u32, &[u8])> {
        self.entries.get(i).map(|e| (e.state, e.key(&self.bytes)))
    }

    /// The encoded value of live entry `i` (`Some(None)`: a delete); `None` when `i` is dead
    /// or out of range.
    pub(crate) fn value_of(&self, i: usize) -> Option<Option<&[u8]>> {
        self.entries
            .get(i)
            .filter(|e| !e.dead)
            .map(|e| e.value(&self.bytes))
    }

    /// Marks entry `i` superseded; returns whether it was live.
    pub(crate) fn kill(&mut self, i: usize) -> bool {
        match self.entries.get_mut(i) {
            Some(e) if !e.dead => {
                e.dead = true;
                true
            }
            _ => false,
        }
    }

    /// Appends copies of `other`'s live entries.
    pub(crate) fn extend_live(&mut self, other: &Frozen) {
        for e in other.entries.iter().filter(|e| !e.dead) {
            let start = self.bytes.len();
            self.bytes
                .extend_from_slice(other.bytes.get(e.start..e.start + e.len()).unwrap_or(&[]));
            self.entries.push(Entry { start, ..*e });
        }
    }

    /// The cache keys of the entries (to mark them dirty again after a failed write).
    pub(crate) fn cache_keys(&self) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.entries.iter().map(|e| {
            let raw = e.key(&self.bytes);
            let mut k = Vec::with_capacity(STATE_PREFIX_LEN + raw.len());
            k.extend_from_slice(&e.state.to_be_bytes());
            k.extend_from_slice(raw);
            k
        })
    }

    /// Sorts the live entries by (state, key), dropping dead ones, then moves their bytes
    /// into that order.
    ///
    /// The bytes were appended in cache order, which is unrelated to key order: written
    /// in key order straight from there, every entry is a cache miss taken inside the
    /// writer's loop, one at a time (over half of a W1 seal's CPU). The gathering loop
    /// does nothing with the bytes but copy them, so the misses of successive entries
    /// overlap, and the writer then reads memory in order.
    fn sort(&mut self) {
        self.entries.retain(|e| !e.dead);
        let bytes = &self.bytes;
        // Of two entries of one key (the cache's and an older spilled one, after a failed
        // seal) the one pushed first must stay first, as it is the one kept: entries are
        // pushed in the order of their bytes, so their offset breaks the tie (an unstable
        // sort works in place, where a stable one allocates a scratch buffer).
        self.entries.sort_unstable_by(|a, b| {
            (a.state, a.prefix)
                .cmp(&(b.state, b.prefix))
                .then_with(|| a.key(bytes).cmp(b.key(bytes)))
                .then(a.start.cmp(&b.start))
        });
        self.entries
            .dedup_by(|b, a| a.state == b.state && a.key(bytes) == b.key(bytes));
        let mut gathered = Vec::with_capacity(self.bytes.len());
        for e in &mut self.entries {
            let start = gathered.len();
            gathered.extend_from_slice(self.bytes.get(e.start..e.start + e.len()).unwrap_or(&[]));
            e.start = start;
        }
        self.bytes = gathered;
    }

    /// Writes the entries to `db` in (state, key) order; `states[i]` names the column
    /// family of state `i`. A large set with `sst` options is written as one SST file per
    /// column family (in `scratch`) and ingested; otherwise in write batches with `write`
    /// (through the WAL or not, as every write of the instance).
    pub(crate) fn write(
        &mut self,
        db: &DB,
        path: &Path,
        states: &[String],
        sst: Option<(&Options, &Path)>,
        write: &WriteOptions,
    ) -> Result<()> {
        self.sort();
        match sst {
            Some((opts, scratch)) if self.entries.len() >= INGEST_MIN_ENTRIES => {
                self.ingest(db, path, states, opts, scratch)
            }
            _ => self.write_batches(db, path, states, write),
        }
    }

    fn write_batches(
        &self,
        db: &DB,
        path: &Path,
        states: &[String],
        write: &WriteOptions,
    ) -> Result<()> {
        let bytes = &self.bytes;
        let mut batch = WriteBatch::default();
        let mut cf = None;
        for e in &self.entries {
            let handle = match cf {
                Some((state, handle)) if state == e.state => handle,
                _ => {
                    let handle = cf_handle(db, path, states, e.state)?;
                    cf = Some((e.state, handle));
                    handle
                }
            };
            match e.value(bytes) {
                Some(v) => batch.put_cf(handle, e.key(bytes), v),
                None => batch.delete_cf(handle, e.key(bytes)),
            }
            if batch.len() >= BATCH_ENTRIES {
                db.write_opt(std::mem::take(&mut batch), write)
                    .map_err(|e| rocks_err("write batch", path, "*", e))?;
            }
        }
        if !batch.is_empty() {
            db.write_opt(batch, write)
                .map_err(|e| rocks_err("write batch", path, "*", e))?;
        }
        Ok(())
    }

    /// One SST file per state, ingested (moved) into its column family.
    fn ingest(
        &self,
        db: &DB,
        path: &Path,
        states: &[String],
        opts: &Options,
        scratch: &Path,
    ) -> Result<()> {
        let bytes = &self.bytes;
        let mut rest = self.entries.as_slice();
        while let Some(first) = rest.first() {
            let n = rest
                .iter()
                .position(|e| e.state != first.state)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(n);
            rest = tail;
            let name = states.get(first.state as usize).map_or("", String::as_str);
            let file = scratch.join(format!("seal-{:016x}-{}.sst", nonce(), first.state));
            let written = (|| {
                let mut w = SstFileWriter::create(opts);
                w.open(&file)
                    .map_err(|e| rocks_err("sst open", &file, name, e))?;
                let mut last: Option<&[u8]> = None;
                for e in run {
                    let key = e.key(bytes);
                    // Keys are unique (`sort` keeps one entry per key); a repeat would be
                    // refused by the writer.
                    if last == Some(key) {
                        continue;
                    }
                    last = Some(key);
                    match e.value(bytes) {
                        Some(v) => w.put(key, v),
                        None => w.delete(key),
                    }
                    .map_err(|e| rocks_err("sst put", &file, name, e))?;
                }
                w.finish()
                    .map_err(|e| rocks_err("sst finish", &file, name, e))?;
                drop(w);
                let mut ingest = IngestExternalFileOptions::default();
                ingest.set_move_files(true);
                db.ingest_external_file_cf_opts(
                    cf_handle(db, path, states, first.state)?,
                    &ingest,
                    vec![file.clone()],
                )
                .map_err(|e| rocks_err("ingest", path, name, e))
            })();
            let _ = std::fs::remove_file(&file);
            written?;
        }
        Ok(())
    }
}

fn cf_handle<'a>(
    db: &'a DB,
    path: &Path,
    states: &[String],
    state: u32,
) -> Result<&'a ColumnFamily> {
    let name = states.get(state as usize).map_or("", String::as_str);
    db.cf_handle(name).ok_or_else(|| StateError::Restore {
        reason: format!(
            "column family missing in the rocksdb instance cf={name} path={}",
            path.display()
        ),
    })
}

/// What a seal worker does: write `frozen` and the spilled entries, then (for a snapshot)
/// create the checkpoint `dir`, sending it (or the error) to the asynchronous phase.
pub(crate) struct SealJob {
    pub(crate) db: Arc<DB>,
    pub(crate) path: PathBuf,
    /// Column family of each state index.
    pub(crate) states: Vec<String>,
    /// The cache's dirty entries at the barrier (none for a write-out of the spill).
    pub(crate) frozen: Frozen,
    /// The spill's set to write with them.
    pub(crate) spill: Option<Arc<SpillSet>>,
    /// Whether the instance writes the WAL (`RocksDbOptions::checkpoint_wal`): then the
    /// checkpoint starts a new log and takes the logs instead of flushing the memtables.
    pub(crate) wal: bool,
    /// The checkpoint flushes the memtables even with the WAL (a native savepoint: SST
    /// files only, and no log to replay on restore).
    pub(crate) flush: bool,
    /// Options of the SST files a large frozen set is ingested as; `None` with the WAL:
    /// an ingestion would flush the memtables it overlaps, which is what checkpoints with
    /// the WAL avoid.
    pub(crate) sst: Option<Options>,
    /// The instance's write options (`options::write_options`).
    pub(crate) write: WriteOptions,
    /// Where those files are built (on the instance's file system).
    pub(crate) scratch: PathBuf,
    /// For a snapshot: its scratch directory (the checkpoint goes to [`checkpoint_dir`] in
    /// it), and where to send it.
    pub(crate) checkpoint: Option<(ScratchDir, SyncSender<Result<ScratchDir>>)>,
}

/// What a seal worker hands back when it could not write its entries: the entries, and the
/// error unless it went to the snapshot's asynchronous phase.
pub(crate) type Unwritten = Option<(Frozen, Option<StateError>)>;

impl SealJob {
    /// Runs the job; returns the entries it held if they could not be written.
    pub(crate) fn run(self) -> Unwritten {
        let SealJob {
            db,
            path,
            states,
            mut frozen,
            spill,
            wal,
            flush,
            sst,
            write,
            scratch,
            checkpoint,
        } = self;
        if let Some(set) = spill {
            // After the cache's entries: of two entries of a key, the cache's is newer.
            frozen.extend_live(&set.frozen);
        }
        let sst = sst.as_ref().map(|o| (o, scratch.as_path()));
        if let Err(e) = frozen.write(&db, &path, &states, sst, &write) {
            return Some(match checkpoint {
                Some((_, ready)) => {
                    let _ = ready.send(Err(e));
                    (frozen, None)
                }
                None => (frozen, Some(e)),
            });
        }
        // A spill write-out is done (`None`: nothing unwritten).
        let (dir, ready) = checkpoint?;
        // `dir` is deleted on drop: on failure, and when nobody receives it.
        let target = checkpoint_dir(&dir.0);
        let created = rocksdb::checkpoint::Checkpoint::new(&db)
            .map_err(|e| rocks_err("checkpoint", &path, "*", e))
            .and_then(|cp| {
                if wal {
                    // The log holds every write (`options::write_options`): copy it, up to
                    // what is buffered now, instead of flushing the memtables. Rolled first,
                    // so that every log but an empty last one is complete (also when the
                    // memtables are flushed: a log the checkpoint still copies then ends at
                    // a record).
                    roll_wal(&db, &path, &states, &write)?;
                    db.flush_wal(false)
                        .map_err(|e| rocks_err("flush wal", &path, "*", e))?;
                }
                if wal && !flush {
                    cp.create_checkpoint_with_log_size(&target, u64::MAX)
                } else {
                    cp.create_checkpoint(&target)
                }
                .map_err(|e| rocks_err("create checkpoint", &target, "*", e))
            });
        let _ = ready.send(created.map(|()| dir));
        None
    }
}

/// The key [`roll_wal`] writes to the default column family (which holds no state).
const ROLL_KEY: &[u8] = b"cairn.wal-roll";

/// The most write-ahead log files an instance keeps across checkpoints: with this many,
/// [`roll_wal`] flushes every memtable, which ends them all.
pub(crate) const MAX_LIVE_LOGS: usize = 16;

/// Makes RocksDB start a new write-ahead log file, without flushing any state's memtable.
///
/// RocksDB starts a new log only when it switches a memtable, so this writes a marker to
/// the default column family and flushes that one (a file of one key, which compaction
/// soon merges with the earlier ones). Every older log then stays as it is until RocksDB
/// deletes it: a checkpoint taken right after holds complete logs (hard links) and an
/// empty last one, and the next checkpoint finds the same logs, which native checkpoints
/// reference instead of uploading again (`native.rs`). Without the roll the live log
/// grows until a memtable fills, and every checkpoint in between uploads all of it again.
///
/// A log lives until every memtable holding its writes is flushed, so a state that changes
/// slowly would keep one more log per checkpoint (a manifest entry each, and a longer
/// replay on restore). With [`MAX_LIVE_LOGS`] logs in the instance's directory, this flushes
/// every column family instead, as a checkpoint without the WAL does each time.
fn roll_wal(db: &DB, path: &Path, states: &[String], write: &WriteOptions) -> Result<()> {
    db.put_opt(ROLL_KEY, b"", write)
        .map_err(|e| rocks_err("put", path, DEFAULT_CF, e))?;
    if live_logs(path)? < MAX_LIVE_LOGS {
        return db
            .flush()
            .map_err(|e| rocks_err("flush", path, DEFAULT_CF, e));
    }
    let mut cfs = vec![db.cf_handle(DEFAULT_CF)];
    cfs.extend(states.iter().map(|name| db.cf_handle(name)));
    let cfs: Vec<_> = cfs.into_iter().flatten().collect();
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
        .map_err(|e| rocks_err("flush", path, "*", e))
}

/// The write-ahead log files in the instance's directory.
fn live_logs(path: &Path) -> Result<usize> {
    let list = |e| crate::db::io_err("listing rocksdb dir", path, e);
    let mut logs = 0;
    for entry in std::fs::read_dir(path).map_err(list)? {
        if entry
            .map_err(list)?
            .file_name()
            .as_encoded_bytes()
            .ends_with(b".log")
        {
            logs += 1;
        }
    }
    Ok(logs)
}

/// Where the RocksDB checkpoint goes in a snapshot's scratch directory.
pub(crate) fn checkpoint_dir(scratch: &Path) -> PathBuf {
    scratch.join("checkpoint")
}

/// The scratch directory of a sealed snapshot, once its worker created the checkpoint in it.
pub(crate) fn wait(
    ready: Option<&Receiver<Result<ScratchDir>>>,
    checkpoint_id: u64,
) -> Result<ScratchDir> {
    ready.and_then(|r| r.recv().ok()).ok_or_else(|| {
        StateError::layer(
            format!("taking rocksdb checkpoint checkpoint_id={checkpoint_id}"),
            "the seal worker ended without a checkpoint",
        )
    })?
}

/// A running seal worker.
#[derive(Debug)]
pub(crate) struct Seal {
    pub(crate) handle: std::thread::JoinHandle<Unwritten>,
}

#[cfg(test)]
mod tests {
    use cairn_core::*;

    use std::collections::BTreeMap;

    use crate::test_support::{u64_backend_with, Mem, SharedMem};
    use crate::{RocksDbBackend, RocksDbOptions};

    fn backend(
        dir: &std::path::Path,
        cache_capacity: usize,
        spill_capacity: usize,
    ) -> RocksDbBackend {
        backend_with(dir, cache_capacity, spill_capacity, true)
    }

    fn backend_with(
        dir: &std::path::Path,
        cache_capacity: usize,
        spill_capacity: usize,
        checkpoint_wal: bool,
    ) -> RocksDbBackend {
        u64_backend_with(
            dir,
            KeyGroupRange::all(128),
            RocksDbOptions {
                cache_capacity,
                spill_capacity,
                checkpoint_wal,
                ..RocksDbOptions::default()
            },
        )
    }

    fn memtable_entries(db: &rocksdb::DB) -> u64 {
        db.property_int_value_cf(
            db.cf_handle("v").unwrap(),
            "rocksdb.num-entries-active-mem-table",
        )
        .unwrap()
        .unwrap()
    }

    /// With the WAL (the default), a checkpoint takes the logs instead of flushing the
    /// memtable: the memtable keeps every entry (4,000 evictions and the 1,000 sealed
    /// ones), the instance gains no SST file of the state, the checkpoint holds the logs,
    /// and a restore replays them. Without the WAL the checkpoint flushes, and holds no log.
    #[test]
    fn a_wal_checkpoint_keeps_the_memtable_and_restores_from_the_log() {
        for wal in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = backend_with(dir.path(), 1_000, 0, wal);
            let v = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            for k in 0..5_000u64 {
                set_key(&mut b, k);
                b.value(&v).update(k * 3).unwrap();
            }
            let db = b.inst().unwrap().db.clone();
            let snap = b
                .snapshot(SnapshotOptions::incremental_checkpoint(1))
                .unwrap();
            let mem = SharedMem::default();
            let handle = snap.run(&mem, &CancelToken::new()).unwrap();
            b.settle().unwrap();
            let KeyedData::RocksNative { files } = &handle.data else {
                panic!("not a native handle: {handle:?}");
            };
            let log_bytes: u64 = files
                .iter()
                .filter(|f| f.local_name.ends_with(".log"))
                .map(|f| f.file.size)
                .sum();
            if wal {
                assert_eq!(memtable_entries(&db), 5_000);
                assert_eq!(state_files(&db), 0, "no SST file of the state");
                assert!(log_bytes > 5_000 * 8, "log of {log_bytes} bytes");
            } else {
                assert_eq!(memtable_entries(&db), 0);
                assert!(state_files(&db) > 0);
                assert_eq!(log_bytes, 0);
            }
            let restored_dir = tempfile::tempdir().unwrap();
            let mut r = backend_with(restored_dir.path(), 1_000, 0, wal);
            r.restore(&[handle], &mem).unwrap();
            let rv = r
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            for k in 0..5_000u64 {
                set_key(&mut r, k);
                assert_eq!(
                    r.value(&rv).get().unwrap(),
                    Some(k * 3),
                    "wal {wal} key {k}"
                );
            }
        }
    }

    /// Live SST files of state `v`.
    fn state_files(db: &rocksdb::DB) -> usize {
        let files = db.live_files().unwrap();
        files.iter().filter(|f| f.column_family_name == "v").count()
    }

    /// The log files of a native handle.
    fn logs(handle: &KeyedStateHandle) -> Vec<NativeFile> {
        let KeyedData::RocksNative { files } = &handle.data else {
            panic!("not a native handle: {handle:?}");
        };
        let logs: Vec<_> = files
            .iter()
            .filter(|f| f.local_name.ends_with(".log"))
            .cloned()
            .collect();
        assert!(!logs.is_empty(), "no log in {files:?}");
        logs
    }

    /// With the WAL, a checkpoint starts a new log first, so the logs it holds are complete
    /// (the last one empty) and shared under content names: the next checkpoint references
    /// them and uploads only the log of the writes in between, and restoring it replays
    /// both.
    #[test]
    fn a_wal_checkpoint_references_the_logs_of_its_base() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend(dir.path(), 1_000, 0);
        let v = b
            .register_value(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        let mut expected = BTreeMap::new();
        let mut write = |b: &mut RocksDbBackend, keys: std::ops::Range<u64>, factor: u64| {
            for k in keys {
                set_key(b, k);
                b.value(&v).update(k * factor).unwrap();
                expected.insert(k, k * factor);
            }
        };
        let mem = SharedMem::default();
        write(&mut b, 0..5_000, 3);
        let first = completed_checkpoint(&mut b, &mem, 1);
        write(&mut b, 5_000..6_000, 3);
        write(&mut b, 0..100, 7);
        let second = completed_checkpoint(&mut b, &mem, 2);

        let (first_logs, second_logs) = (logs(&first), logs(&second));
        for f in first_logs.iter().chain(&second_logs) {
            assert_eq!(f.file.area, FileArea::Shared, "{f:?}");
            assert!(f.file.name.starts_with("rocks/"), "{f:?}");
            assert!(
                f.file.name.ends_with(&format!("-{}.log", f.file.size)),
                "{f:?}"
            );
        }
        let last = |logs: &[NativeFile]| logs.iter().max_by_key(|f| f.local_name.clone()).cloned();
        assert_eq!(
            last(&first_logs).unwrap().file.size,
            0,
            "rolled before the copy"
        );
        let first_bytes: u64 = first_logs.iter().map(|f| f.file.size).sum();
        assert!(first_bytes > 5_000 * 8, "log of {first_bytes} bytes");
        for f in first_logs.iter().filter(|f| f.file.size > 0) {
            assert!(
                second_logs.contains(f),
                "{f:?} not referenced by {second_logs:?}"
            );
        }
        let new_bytes: u64 = second_logs
            .iter()
            .filter(|f| !first_logs.contains(f))
            .map(|f| f.file.size)
            .sum();
        assert!(
            new_bytes > 0 && new_bytes < first_bytes / 2,
            "new log bytes {new_bytes}, first checkpoint's {first_bytes}"
        );
        assert_restores(second, &mem, &expected);
    }

    /// A state that changes a little between checkpoints never fills a memtable, so its
    /// logs would all stay live: past [`super::MAX_LIVE_LOGS`] the roll flushes every
    /// memtable, and no checkpoint holds more logs than that (plus the empty new one). The
    /// last checkpoint restores every change.
    #[test]
    fn the_logs_of_a_slowly_changing_state_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend(dir.path(), 1_000, 0);
        let v = b
            .register_value(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        let mem = SharedMem::default();
        let mut expected = BTreeMap::new();
        let mut last = None;
        let mut most_logs = 0;
        for id in 1..=3 * super::MAX_LIVE_LOGS as u64 {
            for k in 0..20 {
                set_key(&mut b, k * 100 + id);
                b.value(&v).update(k + id).unwrap();
                expected.insert(k * 100 + id, k + id);
            }
            let handle = completed_checkpoint(&mut b, &mem, id);
            most_logs = most_logs.max(logs(&handle).len());
            last = Some(handle);
        }
        assert!(
            (2..=super::MAX_LIVE_LOGS + 1).contains(&most_logs),
            "{most_logs} logs"
        );
        assert_restores(last.unwrap(), &mem, &expected);
    }

    /// Takes incremental checkpoint `id` of `b` into `mem` and completes it.
    fn completed_checkpoint(b: &mut RocksDbBackend, mem: &SharedMem, id: u64) -> KeyedStateHandle {
        let snap = b
            .snapshot(SnapshotOptions::incremental_checkpoint(id))
            .unwrap();
        let handle = snap.run(mem, &CancelToken::new()).unwrap();
        b.settle().unwrap();
        b.notify_checkpoint_complete(id);
        handle
    }

    /// A fresh backend restored from `handle` holds exactly `expected` in state `v`.
    fn assert_restores(handle: KeyedStateHandle, mem: &SharedMem, expected: &BTreeMap<u64, u64>) {
        let dir = tempfile::tempdir().unwrap();
        let mut r = backend(dir.path(), 1_000, 0);
        r.restore(&[handle], mem).unwrap();
        let v = r
            .register_value(&ValueStateDescriptor::<u64>::new("v"))
            .unwrap();
        for (&k, &want) in expected {
            set_key(&mut r, k);
            assert_eq!(r.value(&v).get().unwrap(), Some(want), "key {k}");
        }
    }

    fn set_key(b: &mut RocksDbBackend, k: u64) {
        b.set_current_key(&BincodeCodec::<u64>::new().encode_to_vec(&k).unwrap())
            .unwrap();
    }

    /// Two value states `s0` and `s1` of byte vectors, as a frozen set's encoders see them.
    fn byte_states() -> (BincodeCodec<Vec<u8>>, Vec<crate::state::Registered>) {
        use crate::state::{value_encoder, Registered};

        let codec = BincodeCodec::<Vec<u8>>::new();
        let states = (0..2)
            .map(|i| {
                let d = ValueStateDescriptor::<Vec<u8>>::new(format!("s{i}"));
                Registered {
                    meta: d.meta(),
                    typed: Box::new(()),
                    type_name: "",
                    value_type: std::any::TypeId::of::<Vec<u8>>(),
                    encode_ns: Box::new(|_, _| Ok(())),
                    encode_value: value_encoder::<Vec<u8>>("s", std::sync::Arc::new(codec.clone())),
                }
            })
            .collect();
        (codec, states)
    }

    /// Of entries of one key, sorting keeps the one pushed first (the cache's, pushed
    /// before an older spilled one), whatever order the sort meets them in.
    #[test]
    fn sort_keeps_the_first_pushed_entry_of_a_key() {
        let (codec, states) = byte_states();
        let mut frozen = super::Frozen::with_capacity(0);
        let keys: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| {
                let mut k = 1u32.to_be_bytes().to_vec();
                k.extend_from_slice(&(i.wrapping_mul(2_654_435_761) % 500).to_be_bytes());
                k
            })
            .collect();
        let mut first = BTreeMap::new();
        for (n, key) in keys.iter().enumerate() {
            let value = vec![n as u8; 1 + n % 7];
            first
                .entry(key[4..].to_vec())
                .or_insert_with(|| codec.encode_to_vec(&value).unwrap());
            frozen.push(&states, key, Some(&Some(value))).unwrap();
        }
        frozen.sort();
        let got: BTreeMap<_, _> = frozen
            .live_entries()
            .map(|(state, key, value)| {
                assert_eq!(state, 1);
                (key.to_vec(), value.unwrap().to_vec())
            })
            .collect();
        assert_eq!(frozen.len(), 500);
        assert_eq!(got, first);
    }

    /// Sorting orders the entries by (state, key) and moves their bytes into that order:
    /// every entry still reads its own key and value (keys and values of many lengths,
    /// deletes among them), and the bytes are laid out in entry order.
    #[test]
    fn sort_gathers_each_entrys_key_and_value() {
        let (codec, states) = byte_states();
        let mut expected = BTreeMap::new();
        let mut frozen = super::Frozen::with_capacity(0);
        let mut x = 7u64;
        while expected.len() < 2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let state = (x % 2) as u32;
            // Keys share long prefixes, so the sort needs more than the first 8 bytes.
            let mut key = vec![0u8; 6 + (x >> 8) as usize % 12];
            key.extend_from_slice(&(x >> 20).to_be_bytes()[..1 + (x >> 40) as usize % 8]);
            let value =
                (!x.is_multiple_of(5)).then(|| vec![(x >> 3) as u8; (x >> 12) as usize % 40]);
            if expected.contains_key(&(state, key.clone())) {
                continue; // the cache holds a key once
            }
            let mut cache_key = state.to_be_bytes().to_vec();
            cache_key.extend_from_slice(&key);
            frozen.push(&states, &cache_key, Some(&value)).unwrap();
            expected.insert(
                (state, key),
                value.map(|v| codec.encode_to_vec(&v).unwrap()),
            );
        }
        assert_eq!(frozen.len(), expected.len());
        frozen.sort();
        let got: Vec<_> = frozen
            .entries
            .iter()
            .map(|e| {
                (
                    (e.state, e.key(&frozen.bytes).to_vec()),
                    e.value(&frozen.bytes).map(<[u8]>::to_vec),
                )
            })
            .collect();
        assert_eq!(got, expected.into_iter().collect::<Vec<_>>());
        let mut at = 0;
        for e in &frozen.entries {
            assert_eq!(e.start, at, "bytes in entry order");
            at += e.key_len as usize + e.value(&frozen.bytes).map_or(0, <[u8]>::len);
        }
        assert_eq!(at, frozen.bytes.len());
    }

    /// Reads, updates and deletes of a few keys through a tiny cache and a tiny spill, with
    /// snapshots (some restored) and spill write-outs in between, read what a `BTreeMap`
    /// holds: a key that went back to the cache from the written set, was changed there and
    /// then evicted clean is read from RocksDB, not from that set; a snapshot holds the
    /// state at its barrier.
    #[test]
    fn the_spill_matches_a_model_across_seals_and_write_outs() {
        for spill in [3usize, 7, 1 << 10] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = backend(dir.path(), 4, spill);
            let v = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            let mut model = BTreeMap::new();
            let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ spill as u64;
            let mut checkpoint = 0;
            for step in 0..6_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let k = x % 24;
                set_key(&mut b, k);
                match (x >> 8) % 16 {
                    0..=5 => assert_eq!(
                        b.value(&v).get().unwrap(),
                        model.get(&k).copied(),
                        "spill {spill} step {step} key {k}"
                    ),
                    6..=11 => {
                        b.value(&v).update(step).unwrap();
                        model.insert(k, step);
                    }
                    12 => {
                        b.value(&v).clear().unwrap();
                        model.remove(&k);
                    }
                    13 | 14 => {
                        // Many reads of absent keys: evicts the cache, clean entries too.
                        for other in 1_000..1_008u64 {
                            set_key(&mut b, other);
                            assert_eq!(b.value(&v).get().unwrap(), None);
                        }
                    }
                    _ => {
                        checkpoint += 1;
                        let snap = b
                            .snapshot(SnapshotOptions::incremental_checkpoint(checkpoint))
                            .unwrap();
                        if checkpoint % 25 != 0 {
                            continue; // settled by the next access that needs it
                        }
                        let mem = Mem::default();
                        let handle = snap.run(&mem, &CancelToken::new()).unwrap();
                        let restored_dir = tempfile::tempdir().unwrap();
                        let mut r = backend(restored_dir.path(), 4, spill);
                        r.restore(&[handle], &mem).unwrap();
                        let rv = r
                            .register_value(&ValueStateDescriptor::<u64>::new("v"))
                            .unwrap();
                        for k in 0..24 {
                            set_key(&mut r, k);
                            assert_eq!(
                                r.value(&rv).get().unwrap(),
                                model.get(&k).copied(),
                                "restored: spill {spill} step {step} key {k}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// With the spill, dirty evictions write nothing to RocksDB until the snapshot, which
    /// writes every key changed since the last one as one file per state: the checkpoint
    /// holds one SST file, where writing evictions to the memtable left two (the flushed
    /// memtable and the ingested seal).
    #[test]
    fn a_checkpoint_writes_evicted_and_cached_keys_as_one_file() {
        for (spill, files) in [(1 << 18, 1), (0, 2)] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = backend_with(dir.path(), 20_000, spill, false);
            let v = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            for k in 0..40_000u64 {
                set_key(&mut b, k);
                b.value(&v).update(k).unwrap();
            }
            let db = b.inst().unwrap().db.clone();
            assert_eq!(
                memtable_entries(&db) == 0,
                spill > 0,
                "spill {spill}: memtable entries before the snapshot"
            );
            let snap = b
                .snapshot(SnapshotOptions::incremental_checkpoint(1))
                .unwrap();
            let handle = snap.run(&Mem::default(), &CancelToken::new()).unwrap();
            drop(handle);
            b.settle().unwrap();
            assert_eq!(
                db.live_files().unwrap().len(),
                files,
                "spill {spill}: SST files"
            );
            for k in (0..40_000u64).step_by(997) {
                set_key(&mut b, k);
                assert_eq!(b.value(&v).get().unwrap(), Some(k));
            }
        }
    }

    /// The snapshot holds exactly the state at the barrier although the task goes on
    /// updating, deleting and inserting (past the cache's hard limit) while the seal worker
    /// writes: with the WAL (a checkpoint takes the logs), through the memtable in batches,
    /// and without it (a checkpoint flushes) also as ingested SST files (a frozen set over
    /// `INGEST_MIN_ENTRIES`); with most keys spilled at the barrier, with a spill small
    /// enough to be written out several times while the task goes on, and without a
    /// spill.
    #[test]
    fn snapshot_is_the_state_at_the_barrier_while_the_task_goes_on() {
        let spill = 1 << 18;
        for (keys, capacity, spill, wal) in [
            (2_000u64, 64usize, spill, true),
            (2_000, 64, 100, true),
            (2_000, 64, 0, true),
            (40_000, 50_000, 0, true),
            (2_000, 64, spill, false),
            (2_000, 64, 0, false),
            (40_000, 50_000, spill, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut b = backend_with(dir.path(), capacity, spill, wal);
            let v = b
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            for k in 0..keys {
                set_key(&mut b, k);
                b.value(&v).update(k).unwrap();
            }
            let snap = b
                .snapshot(SnapshotOptions::incremental_checkpoint(1))
                .unwrap();
            for k in 0..keys {
                set_key(&mut b, k);
                if k % 5 == 0 {
                    b.value(&v).clear().unwrap();
                } else {
                    let old = b.value(&v).get().unwrap().unwrap();
                    b.value(&v).update(old + 1_000_000).unwrap();
                }
            }
            for k in keys..keys + 3 * capacity as u64 {
                set_key(&mut b, k);
                b.value(&v).update(k).unwrap();
            }
            let mem = Mem::default();
            let handle = snap.run(&mem, &CancelToken::new()).unwrap();

            let restored_dir = tempfile::tempdir().unwrap();
            let mut r = backend_with(restored_dir.path(), capacity, spill, wal);
            r.restore(&[handle], &mem).unwrap();
            let rv = r
                .register_value(&ValueStateDescriptor::<u64>::new("v"))
                .unwrap();
            for k in 0..keys + 3 * capacity as u64 {
                set_key(&mut r, k);
                let want = (k < keys).then_some(k);
                assert_eq!(r.value(&rv).get().unwrap(), want, "restored key {k}");
                set_key(&mut b, k);
                let live = match k {
                    k if k >= keys => Some(k),
                    k if k % 5 == 0 => None,
                    k => Some(k + 1_000_000),
                };
                assert_eq!(b.value(&v).get().unwrap(), live, "live key {k}");
            }
        }
    }
}
