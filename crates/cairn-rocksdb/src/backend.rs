//! [`RocksDbBackend`]: the instance, registration, the current key and the cached access
//! paths that the trait implementation (`ops.rs`) is built from.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_core::*;

use crate::cache::{Cache, CachedValue, Slot};
use crate::db::{io_err, Instance};
use crate::layout::{escape_tail, push_escaped, push_kg};
use crate::migrate::Evolution;
use crate::options::{RocksDbConfig, RocksDbOptions};
use crate::prefetch::Recent;
use crate::seal::{Frozen, Seal, SealJob, Unwritten};
use crate::snapshot::{Incremental, ScratchDir};
use crate::spill::{Found, Spill};
use crate::state::{decode, type_mismatch, EncodeNs, EncodeValue, Registered};
use crate::ttl::TtlRegistry;

/// Bytes of the state index in front of a cache key.
pub(crate) const STATE_PREFIX_LEN: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct CurrentKey {
    pub(crate) set: bool,
    pub(crate) bytes: Vec<u8>,
    pub(crate) kg: KeyGroup,
    /// `key_group u16 BE | esc(key)`: the start of every RocksDB key of the current key.
    pub(crate) prefix: Vec<u8>,
}

/// The RocksDB keyed state backend. See the crate docs for the design.
pub struct RocksDbBackend {
    pub(crate) uid: String,
    pub(crate) max_parallelism: u32,
    pub(crate) range: KeyGroupRange,
    pub(crate) key_codec: CodecIdentity,
    pub(crate) options: RocksDbOptions,
    /// The parent of `root`, where snapshot scratch directories go.
    pub(crate) local_dir: PathBuf,
    /// This backend's own directory (removed on drop).
    pub(crate) root: PathBuf,
    pub(crate) inst: Option<Instance>,
    pub(crate) current: CurrentKey,
    pub(crate) states: Vec<Registered>,
    pub(crate) by_name: HashMap<String, u32>,
    /// Every state with a column family: registered ones and restored ones.
    pub(crate) metas: BTreeMap<String, StateMeta>,
    pub(crate) restored: bool,
    pub(crate) cache: Cache,
    /// Dirty entries evicted from the cache since the last seal (`spill.rs`).
    pub(crate) spill: Spill,
    pub(crate) scratch: Vec<u8>,
    /// The states recent keys used, for prefetch hints.
    pub(crate) recent: Recent,
    pub(crate) inc: Incremental,
    /// Counter for unique directory names.
    pub(crate) seq: u64,
    /// The seal worker of the last snapshot while it may still run: the backend writes
    /// nothing to RocksDB until it is settled (`seal.rs`).
    pub(crate) seal: Option<Seal>,
    /// The TTL of states that have one, for the compaction filter (`ttl.rs`).
    pub(crate) ttl: Arc<TtlRegistry>,
}

impl fmt::Debug for RocksDbBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksDbBackend")
            .field("uid", &self.uid)
            .field("max_parallelism", &self.max_parallelism)
            .field("key_group_range", &self.range)
            .field("root", &self.root)
            .field("states", &self.metas.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for RocksDbBackend {
    fn drop(&mut self) {
        // The seal worker shares the instance: let it finish first.
        if let Some(seal) = self.seal.take() {
            let _ = seal.handle.join();
        }
        // Close the instance before its directory goes.
        self.inst = None;
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A name made of `[A-Za-z0-9_]` from `uid`, for directory and file names.
pub(crate) fn clean_uid(uid: &str) -> String {
    uid.chars()
        .take(32)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A random 64-bit nonce (std's randomly keyed hasher).
pub(crate) fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl RocksDbBackend {
    /// A backend for `config.key_group_range`, with a fresh RocksDB instance in a new
    /// subdirectory of `config.local_dir`.
    pub fn new(config: RocksDbConfig) -> Result<Self> {
        let RocksDbConfig {
            uid,
            max_parallelism,
            key_group_range: range,
            key_codec,
            local_dir,
            options,
        } = config;
        check_backend_range(range, max_parallelism)?;
        std::fs::create_dir_all(&local_dir)
            .map_err(|e| io_err("creating local directory", &local_dir, e))?;
        let root = local_dir.join(format!(
            "rocks-{}-{}_{}-{:016x}",
            clean_uid(&uid),
            range.start,
            range.end,
            nonce()
        ));
        std::fs::create_dir_all(&root).map_err(|e| io_err("creating directory", &root, e))?;
        let ttl = Arc::new(TtlRegistry::default());
        let inst = Instance::open(&root.join("db-0"), &options, &ttl, &BTreeMap::new())?;
        Ok(Self {
            uid,
            max_parallelism,
            range,
            key_codec,
            cache: Cache::new(options.cache_capacity),
            spill: Spill::default(),
            options,
            local_dir,
            root,
            inst: Some(inst),
            current: CurrentKey::default(),
            states: Vec::new(),
            by_name: HashMap::new(),
            metas: BTreeMap::new(),
            restored: false,
            scratch: Vec::new(),
            recent: Recent::default(),
            inc: Incremental::default(),
            seq: 1,
            seal: None,
            ttl,
        })
    }

    /// The operator uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The directory of the live RocksDB instance.
    pub fn db_path(&self) -> Option<&std::path::Path> {
        self.inst.as_ref().map(|i| i.path.as_path())
    }

    pub(crate) fn inst(&self) -> Result<&Instance> {
        self.inst.as_ref().ok_or_else(|| StateError::Restore {
            reason: format!(
                "the rocksdb instance is closed (a failed restore) uid={}",
                self.uid
            ),
        })
    }

    /// Registers a state, or re-fetches it after checking it is the same. A restored state
    /// is read as `evolution` says: as is, or after rewriting its stored values in the
    /// registered codec (`migrate.rs`), before it is registered; either way the backend
    /// then records it with the registered identities.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        &mut self,
        meta: StateMeta,
        typed: Box<dyn Any + Send>,
        type_name: &'static str,
        value_type: std::any::TypeId,
        encode_ns: EncodeNs,
        encode_value: EncodeValue,
        evolution: Evolution<'_>,
    ) -> Result<RawStateId> {
        if let Some(&index) = self.by_name.get(&meta.name) {
            let r = self
                .states
                .get(index as usize)
                .ok_or(StateError::UnknownState { index })?;
            r.meta.check_compatible(&meta, &self.uid, false)?;
            if (*r.typed).type_id() != (*typed).type_id() {
                return Err(StateError::layer(
                    format!("registering state uid={} state={}", self.uid, meta.name),
                    format!(
                        "registered with other types registered={} requested={type_name}",
                        r.type_name
                    ),
                ));
            }
            return Ok(RawStateId {
                index,
                kind: meta.kind,
            });
        }
        match self.metas.get(&meta.name) {
            Some(stored) => {
                let stored = stored.clone();
                if (evolution.resolve)(&stored, &self.uid)? == StateMigration::Values {
                    self.migrate_values(&stored, &meta, evolution.convert)?;
                }
                // Later snapshots describe the state as registered (a renamed type read as
                // is, or the migrated values).
                self.metas.insert(meta.name.clone(), meta.clone());
            }
            None => {
                self.settle()?;
                let uid = self.uid.clone();
                let inst = self.inst.as_mut().ok_or_else(|| StateError::Restore {
                    reason: format!("the rocksdb instance is closed uid={uid}"),
                })?;
                inst.ensure_cf(&meta)?;
                self.metas.insert(meta.name.clone(), meta.clone());
            }
        }
        let index = u32::try_from(self.states.len())
            .map_err(|_| StateError::UnknownState { index: u32::MAX })?;
        self.by_name.insert(meta.name.clone(), index);
        let kind = meta.kind;
        self.states.push(Registered {
            meta,
            typed,
            type_name,
            value_type,
            encode_ns,
            encode_value,
        });
        Ok(RawStateId { index, kind })
    }

    /// Checks `id` against `kind` and that a key is set; returns the state's index.
    #[inline]
    pub(crate) fn check(&self, id: RawStateId, kind: Option<StateKind>) -> Result<usize> {
        let r = self
            .states
            .get(id.index as usize)
            .ok_or_else(|| StateError::UnknownState { index: id.index })?;
        let want = kind.unwrap_or(id.kind);
        if r.meta.kind != want || id.kind != want {
            return Err(StateError::KindMismatch {
                state: r.meta.name.clone(),
                registered: r.meta.kind,
                requested: if id.kind != want { id.kind } else { want },
            });
        }
        if !self.current.set {
            return Err(StateError::NoCurrentKey {
                state: r.meta.name.clone(),
            });
        }
        Ok(id.index as usize)
    }

    /// The typed part of state `idx`.
    #[inline]
    pub(crate) fn typed<T: 'static>(&self, idx: usize) -> Result<&T> {
        let r = self
            .states
            .get(idx)
            .ok_or_else(|| StateError::UnknownState { index: idx as u32 })?;
        r.typed
            .downcast_ref::<T>()
            .ok_or_else(|| type_mismatch(&r.meta.name, std::any::type_name::<T>()))
    }

    /// Builds `state index | kg | esc(key) | esc(namespace)` of the current key in
    /// `self.scratch`; `encode_ns` appends the raw namespace.
    #[inline]
    pub(crate) fn build_key(
        scratch: &mut Vec<u8>,
        current: &CurrentKey,
        idx: usize,
        encode_ns: impl FnOnce(&mut Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        scratch.clear();
        scratch.extend_from_slice(&(idx as u32).to_be_bytes());
        scratch.extend_from_slice(&current.prefix);
        let start = scratch.len();
        encode_ns(scratch)?;
        escape_tail(scratch, start);
        Ok(())
    }

    /// Sets the current key's prefix.
    pub(crate) fn set_prefix(current: &mut CurrentKey) {
        current.prefix.clear();
        push_kg(&mut current.prefix, current.kg);
        push_escaped(&mut current.prefix, &current.bytes);
    }

    /// Reads the value under the cache key `key` of state `idx`, whose typed part `T` holds
    /// the value codec (`codec` picks it; it is needed only when the cache misses).
    pub(crate) fn read<V: StateValue, T: 'static>(
        &mut self,
        idx: usize,
        key: &[u8],
        codec: fn(&T) -> &CodecRef<V>,
    ) -> Result<Option<V>> {
        let name = self.states.get(idx).map_or("", |r| r.meta.name.as_str());
        if self.cache.enabled() {
            if let Some(slot) = self.cache.get(key) {
                return match slot.value.as_any() {
                    None => Ok(None),
                    Some(b) => b
                        .downcast_ref::<Option<V>>()
                        .cloned()
                        .ok_or_else(|| type_mismatch(name, std::any::type_name::<V>())),
                };
            }
        }
        let (value, unwritten) = self.read_uncached(idx, key, codec)?;
        if self.cache.enabled() {
            self.make_room()?;
            self.spill.kill(key);
            // A value RocksDB does not have yet goes back to the cache dirty.
            self.cache
                .insert(key, CachedValue::new(value.clone()), unwritten);
        }
        Ok(value)
    }

    /// Reads the value under `key` from the spill or else from RocksDB; says whether it is
    /// one RocksDB does not have yet.
    fn read_uncached<V: StateValue, T: 'static>(
        &self,
        idx: usize,
        key: &[u8],
        codec: fn(&T) -> &CodecRef<V>,
    ) -> Result<(Option<V>, bool)> {
        let name = self.state_name(idx);
        let codec = codec(self.typed::<T>(idx)?);
        let decoded = |bytes: Option<&[u8]>| bytes.map(|b| decode(&**codec, name, b)).transpose();
        match self.spill.get(key) {
            Some(Found::Unwritten(bytes)) => Ok((decoded(bytes)?, true)),
            Some(Found::Written(bytes)) => Ok((decoded(bytes)?, false)),
            None => {
                let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
                Ok((
                    self.inst()?.get(name, raw, |b| decode(&**codec, name, b))?,
                    false,
                ))
            }
        }
    }

    /// Applies `f` to the value under the cache key `key` of state `idx`. `blind`: `f` does
    /// not look at the old value, so a cache miss reads nothing.
    pub(crate) fn modify<V: StateValue, T: 'static>(
        &mut self,
        idx: usize,
        key: &[u8],
        blind: bool,
        codec: fn(&T) -> &CodecRef<V>,
        f: impl FnOnce(&mut Option<V>) -> Result<()>,
    ) -> Result<()> {
        let name = self.states.get(idx).map_or("", |r| r.meta.name.as_str());
        if self.cache.enabled() {
            if let Some(i) = self.cache.find(key) {
                if let Some(slot) = self.cache.slot_mut(i) {
                    match slot.value.as_any_mut() {
                        Some(b) => {
                            let v = b
                                .downcast_mut::<Option<V>>()
                                .ok_or_else(|| type_mismatch(name, std::any::type_name::<V>()))?;
                            f(v)?;
                        }
                        None => {
                            let mut v = None;
                            f(&mut v)?;
                            slot.value = CachedValue::new(v);
                        }
                    }
                }
                self.cache.mark_dirty_at(i);
                return Ok(());
            }
        }
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let mut value = if blind {
            None
        } else {
            self.read_uncached(idx, key, codec)?.0
        };
        f(&mut value)?;
        if self.cache.enabled() {
            self.make_room()?;
            // The cache's entry supersedes a spilled one (read above, or overwritten blind).
            self.spill.kill(key);
            self.cache.insert(key, CachedValue::new(value), true);
            return Ok(());
        }
        self.settle()?;
        let name = self.state_name(idx);
        let inst = self.inst()?;
        match value {
            Some(v) => {
                let mut buf = Vec::new();
                codec(self.typed::<T>(idx)?)
                    .encode(&v, &mut buf)
                    .map_err(crate::state::codec_error(name))?;
                inst.put(name, raw, &buf)
            }
            None => inst.delete(name, raw),
        }
    }

    /// Marks the value under `key` deleted without knowing its type.
    pub(crate) fn delete_untyped(&mut self, idx: usize, key: &[u8]) -> Result<()> {
        if self.cache.enabled() {
            if self.cache.get(key).is_none() {
                self.make_room()?;
                self.spill.kill(key);
            }
            self.cache.insert(key, CachedValue::Unknown, true);
            return Ok(());
        }
        self.settle()?;
        let name = self.state_name(idx);
        self.inst()?
            .delete(name, key.get(STATE_PREFIX_LEN..).unwrap_or(&[]))
    }

    pub(crate) fn state_name(&self, idx: usize) -> &str {
        self.states.get(idx).map_or("", |r| r.meta.name.as_str())
    }

    /// Evicts from a full cache; dirty evictions go to the spill (which is written out off
    /// the task thread once it holds `spill_capacity` entries) or, without a spill, to
    /// RocksDB in one batch. While a seal worker runs, evictions are held back until the
    /// cache reaches its hard limit.
    fn make_room(&mut self) -> Result<()> {
        if !self.cache.full() {
            return Ok(());
        }
        if let Some(seal) = &self.seal {
            if !seal.handle.is_finished() && self.cache.len() < self.cache.hard_limit() {
                return Ok(());
            }
            self.settle()?;
        }
        let evicted: Vec<Slot> = if self.cache.len() > self.cache.capacity() {
            self.cache.evict_to_capacity()
        } else {
            self.cache.evict()
        };
        let dirty: Vec<Slot> = evicted.into_iter().filter(Slot::dirty).collect();
        self.write_evicted(dirty)?;
        if self.options.spill_capacity > 0 && self.spill.len() >= self.options.spill_capacity {
            self.start_seal(None, false)?;
        }
        Ok(())
    }

    /// Writes the dirty entries of an eviction sweep to the spill or, without one, to
    /// RocksDB in one batch. Nothing is lost when that fails: an entry whose value its
    /// codec cannot encode stays in the cache, dirty (the next snapshot fails with the
    /// codec's error, as on the heap backend, until the value changes), and when RocksDB
    /// refuses the batch every entry of it goes back to the cache and the error is
    /// returned. (An evicted entry that is neither written nor cached is lost: a later read
    /// would find the older value in RocksDB.)
    fn write_evicted(&mut self, dirty: Vec<Slot>) -> Result<()> {
        // Positions in `dirty` of the entries that could not be encoded (rare).
        let mut unencodable = Vec::new();
        if self.options.spill_capacity > 0 {
            for (i, slot) in dirty.iter().enumerate() {
                if self
                    .spill
                    .push(&self.states, slot.key(), slot.value.as_any())
                    .is_err()
                {
                    unencodable.push(i);
                }
            }
            self.take_back(dirty, Some(&unencodable));
            return Ok(());
        }
        let mut frozen = Frozen::with_capacity(dirty.len());
        for (i, slot) in dirty.iter().enumerate() {
            if frozen
                .push(&self.states, slot.key(), slot.value.as_any())
                .is_err()
            {
                unencodable.push(i);
            }
        }
        if frozen.len() > 0 {
            // Through the memtable: an eviction sweep is small, and a file per sweep would
            // pile up level-0 files.
            let names = self.state_cf_names();
            let written = self.inst().and_then(|inst| {
                frozen.write(&inst.db, &inst.path, &names, None, inst.write_options())
            });
            if let Err(e) = written {
                self.take_back(dirty, None);
                return Err(e);
            }
        }
        self.take_back(dirty, Some(&unencodable));
        Ok(())
    }

    /// Puts evicted dirty entries back into the cache, dirty (past its capacity until a
    /// later sweep writes them): those at the positions `only` lists (ascending), or all.
    fn take_back(&mut self, dirty: Vec<Slot>, only: Option<&[usize]>) {
        if only.is_some_and(<[usize]>::is_empty) {
            return;
        }
        let mut only = only.map(|o| o.iter().copied().peekable());
        for (i, slot) in dirty.into_iter().enumerate() {
            if let Some(only) = &mut only {
                if only.next_if_eq(&i).is_none() {
                    continue;
                }
            }
            let key = slot.key().to_vec();
            self.cache.insert(&key, slot.value, true);
        }
    }

    /// The column family of each state index.
    fn state_cf_names(&self) -> Vec<String> {
        self.states.iter().map(|r| r.meta.name.clone()).collect()
    }

    /// Writes a frozen set (large ones as ingested SST files, unless with the WAL).
    fn write_frozen(&self, frozen: &mut Frozen) -> Result<()> {
        let inst = self.inst()?;
        let sst = self.seal_sst_options(inst);
        frozen.write(
            &inst.db,
            &inst.path,
            &self.state_cf_names(),
            sst.as_ref().map(|o| (o, self.root.as_path())),
            inst.write_options(),
        )
    }

    /// The options of the SST files a large frozen set is ingested as: none with the WAL
    /// (`RocksDbOptions::checkpoint_wal`), which writes every set through the memtables.
    fn seal_sst_options(&self, inst: &crate::db::Instance) -> Option<rocksdb::Options> {
        (!self.options.checkpoint_wal).then(|| inst.sst_options())
    }

    /// Encodes every dirty cache entry into a frozen set and marks them clean (all of them
    /// stay dirty if one fails to encode).
    fn freeze(&mut self) -> Result<Frozen> {
        let mut frozen = Frozen::with_capacity(self.cache.dirty_len());
        let states = &self.states;
        self.cache
            .flush(|key, value| frozen.push(states, key, value))?;
        Ok(frozen)
    }

    /// Takes back what a seal could not write: the cache's entries become dirty again
    /// (they are all still cached, since nothing is evicted while they are out, with their
    /// latest values), and the spilled ones open again.
    fn unfreeze(&mut self, frozen: &Frozen) -> Result<()> {
        for key in frozen.cache_keys() {
            if let Some(i) = self.cache.find(&key) {
                self.cache.mark_dirty_at(i);
            }
        }
        self.spill.seal_failed()
    }

    /// Waits for the seal worker of the last snapshot or spill write-out, if any;
    /// afterwards the backend may write RocksDB again.
    pub(crate) fn settle(&mut self) -> Result<()> {
        let Some(seal) = self.seal.take() else {
            return Ok(());
        };
        match seal.handle.join() {
            Ok(unwritten) => self.sealed(unwritten),
            Err(_) => {
                // The entries it held are lost: fail every later access rather than serve
                // wrong state; the job restores from its last checkpoint.
                self.inst = None;
                self.spill.clear();
                Err(StateError::layer(
                    format!("writing the rocksdb cache uid={}", self.uid),
                    "the seal worker panicked",
                ))
            }
        }
    }

    /// Takes note of how a seal ended. A snapshot's error went to its asynchronous phase;
    /// a spill write-out's is returned.
    fn sealed(&mut self, unwritten: Unwritten) -> Result<()> {
        match unwritten {
            None => {
                self.spill.sealed();
                Ok(())
            }
            Some((frozen, error)) => {
                self.unfreeze(&frozen)?;
                error.map_or(Ok(()), Err)
            }
        }
    }

    /// The synchronous phase's part of sealing a snapshot: freezes the dirty entries and
    /// hands them, with the spill, to a seal worker that writes them and creates the
    /// RocksDB checkpoint at `dir` (with `flush`, after flushing the memtables: SST files
    /// only). Returns where the checkpoint directory will be sent.
    pub(crate) fn seal(
        &mut self,
        dir: ScratchDir,
        flush: bool,
    ) -> Result<std::sync::mpsc::Receiver<Result<ScratchDir>>> {
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        self.start_seal(Some((dir, ready_tx)), flush)?;
        Ok(ready)
    }

    /// Starts a seal worker: for a snapshot (`checkpoint`) it writes the cache's dirty
    /// entries and the spill, then creates the checkpoint; without one it writes the spill.
    fn start_seal(
        &mut self,
        checkpoint: Option<(ScratchDir, std::sync::mpsc::SyncSender<Result<ScratchDir>>)>,
        flush: bool,
    ) -> Result<()> {
        self.settle()?;
        if checkpoint.is_none() && !self.spill.has_open() {
            return Ok(());
        }
        let inst = self.inst()?;
        let (db, path) = (inst.db.clone(), inst.path.clone());
        let sst = self.seal_sst_options(inst);
        let states = self.state_cf_names();
        // The thread starts while the cache is frozen.
        let (jobs, receive) = std::sync::mpsc::channel::<SealJob>();
        let spawned = std::thread::Builder::new()
            .name("cairn-rocksdb-seal".into())
            .spawn(move || receive.recv().ok().and_then(SealJob::run));
        let frozen = match checkpoint {
            Some(_) => self.freeze(),
            None => Ok(Frozen::default()),
        };
        let frozen = match frozen {
            Ok(f) => f,
            Err(e) => {
                drop(jobs);
                if let Ok(h) = spawned {
                    let _ = h.join();
                }
                return Err(e);
            }
        };
        let job = SealJob {
            db,
            path,
            states,
            frozen,
            spill: self.spill.begin_seal(),
            wal: self.options.checkpoint_wal,
            flush,
            sst,
            write: crate::options::write_options(&self.options),
            scratch: self.root.clone(),
            checkpoint,
        };
        let job = match spawned {
            Ok(handle) => match jobs.send(job) {
                Ok(()) => {
                    self.seal = Some(Seal { handle });
                    return Ok(());
                }
                Err(std::sync::mpsc::SendError(job)) => {
                    let _ = handle.join();
                    job
                }
            },
            Err(_) => job,
        };
        // No worker: seal on this thread.
        let unwritten = job.run();
        self.sealed(unwritten)
    }

    /// Writes every dirty cache entry and the spill to RocksDB (sorted, in batches), for an
    /// operation that reads RocksDB past the cache (key listing, map iteration, map clear).
    ///
    /// An entry whose value its codec cannot encode is not written and stays dirty, as
    /// after an eviction sweep (`write_evicted`): the next snapshot fails with the codec's
    /// error until the value changes, as on the heap backend, and the caller takes it into
    /// account through [`Self::unwritten`]. Failing here instead would fail the operation
    /// for a value it may not even touch.
    pub(crate) fn flush_cache(&mut self) -> Result<()> {
        self.settle()?;
        if !self.cache.has_dirty() && !self.spill.has_open() {
            return Ok(());
        }
        let mut frozen = Frozen::with_capacity(self.cache.dirty_len());
        let states = &self.states;
        // The codec's error is the snapshot's to report: the entry stays dirty.
        let _unencodable = self
            .cache
            .flush_each(|key, value| frozen.push(states, key, value));
        if let Some(set) = self.spill.begin_seal() {
            frozen.extend_live(&set.frozen);
        }
        if frozen.len() == 0 {
            return Ok(());
        }
        match self.write_frozen(&mut frozen) {
            Ok(()) => {
                self.spill.sealed();
                Ok(())
            }
            Err(e) => {
                self.unfreeze(&frozen)?;
                Err(e)
            }
        }
    }

    /// After [`Self::flush_cache`]: the entries of state `idx` under the RocksDB key prefix
    /// `raw_prefix` that it could not write (their codec failed to encode their values;
    /// rare), as RocksDB key and cached value. Each holds a value: absent ones always encode
    /// (as deletes).
    pub(crate) fn unwritten<'a>(
        &'a self,
        idx: usize,
        raw_prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], Option<&'a dyn Any>)> + 'a {
        let state = (idx as u32).to_be_bytes();
        self.cache.dirty_entries().filter_map(move |(key, value)| {
            let (s, raw) = key.split_at_checked(STATE_PREFIX_LEN)?;
            (s == state && raw.starts_with(raw_prefix)).then_some((raw, value))
        })
    }
}
