//! [`RocksDbBackend`]: the instance, registration, the current key and the cached access
//! paths that the trait implementation (`ops.rs`) is built from.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use cairn_core::*;
use rocksdb::WriteBatch;

use crate::cache::{Cache, Slot};
use crate::db::{io_err, Instance};
use crate::layout::{escape_tail, push_escaped, push_kg};
use crate::options::{RocksDbConfig, RocksDbOptions};
use crate::snapshot::Incremental;
use crate::state::{decode, type_mismatch, EncodeNs, EncodeValue, Registered};

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
    pub(crate) scratch: Vec<u8>,
    pub(crate) inc: Incremental,
    /// Counter for unique directory names.
    pub(crate) seq: u64,
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
        let inst = Instance::open(&root.join("db-0"), &options)?;
        Ok(Self {
            uid,
            max_parallelism,
            range,
            key_codec,
            cache: Cache::new(options.cache_capacity),
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
            inc: Incremental::default(),
            seq: 1,
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

    /// Registers a state, or re-fetches it after checking it is the same.
    pub(crate) fn register(
        &mut self,
        meta: StateMeta,
        typed: Box<dyn Any + Send>,
        type_name: &'static str,
        encode_ns: EncodeNs,
        encode_value: EncodeValue,
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
            Some(stored) => stored.check_compatible(&meta, &self.uid, true)?,
            None => {
                let uid = self.uid.clone();
                let inst = self.inst.as_mut().ok_or_else(|| StateError::Restore {
                    reason: format!("the rocksdb instance is closed uid={uid}"),
                })?;
                inst.ensure_cf(&meta.name)?;
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
            .ok_or(StateError::UnknownState { index: id.index })?;
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
            .ok_or(StateError::UnknownState { index: idx as u32 })?;
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

    /// Reads the value under the cache key `key` of state `idx`.
    pub(crate) fn read<V: StateValue>(
        &mut self,
        idx: usize,
        codec: &dyn Codec<V>,
        key: &[u8],
    ) -> Result<Option<V>> {
        let name = self.states.get(idx).map_or("", |r| r.meta.name.as_str());
        if self.cache.enabled() {
            if let Some(slot) = self.cache.get(key) {
                return match &slot.value {
                    None => Ok(None),
                    Some(b) => b
                        .downcast_ref::<Option<V>>()
                        .cloned()
                        .ok_or_else(|| type_mismatch(name, std::any::type_name::<V>())),
                };
            }
        }
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let value = self.inst()?.get(name, raw, |b| decode(codec, name, b))?;
        if self.cache.enabled() {
            self.make_room()?;
            self.cache
                .insert(key.to_vec(), Some(Box::new(value.clone())), false);
        }
        Ok(value)
    }

    /// Applies `f` to the value under the cache key `key` of state `idx`. `blind`: `f` does
    /// not look at the old value, so a cache miss reads nothing.
    pub(crate) fn modify<V: StateValue>(
        &mut self,
        idx: usize,
        codec: &dyn Codec<V>,
        key: &[u8],
        blind: bool,
        f: impl FnOnce(&mut Option<V>) -> Result<()>,
    ) -> Result<()> {
        let name = self.states.get(idx).map_or("", |r| r.meta.name.as_str());
        if self.cache.enabled() {
            if let Some(slot) = self.cache.get(key) {
                match &mut slot.value {
                    Some(b) => {
                        let v = b
                            .downcast_mut::<Option<V>>()
                            .ok_or_else(|| type_mismatch(name, std::any::type_name::<V>()))?;
                        f(v)?;
                    }
                    None => {
                        let mut v = None;
                        f(&mut v)?;
                        slot.value = Some(Box::new(v));
                    }
                }
                self.cache.mark_dirty(key);
                return Ok(());
            }
        }
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let inst = self.inst()?;
        let mut value = if blind {
            None
        } else {
            inst.get(name, raw, |b| decode(codec, name, b))?
        };
        f(&mut value)?;
        if self.cache.enabled() {
            self.make_room()?;
            self.cache.insert(key.to_vec(), Some(Box::new(value)), true);
            return Ok(());
        }
        match value {
            Some(v) => {
                let mut buf = Vec::new();
                codec
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
            }
            self.cache.insert(key.to_vec(), None, true);
            return Ok(());
        }
        let name = self.state_name(idx);
        self.inst()?
            .delete(name, key.get(STATE_PREFIX_LEN..).unwrap_or(&[]))
    }

    pub(crate) fn state_name(&self, idx: usize) -> &str {
        self.states.get(idx).map_or("", |r| r.meta.name.as_str())
    }

    /// Evicts from a full cache, writing dirty evictions in one batch.
    fn make_room(&mut self) -> Result<()> {
        if !self.cache.full() {
            return Ok(());
        }
        let evicted = self.cache.evict();
        let mut batch = WriteBatch::default();
        let mut buf = Vec::new();
        for slot in evicted.iter().filter(|s| s.dirty) {
            self.add_to_batch(&mut batch, &mut buf, slot)?;
        }
        if !batch.is_empty() {
            self.inst()?.write(batch)?;
        }
        Ok(())
    }

    fn add_to_batch(&self, batch: &mut WriteBatch, buf: &mut Vec<u8>, slot: &Slot) -> Result<()> {
        write_entry(self, batch, buf, &slot.key, slot.value.as_ref())
    }

    /// Writes every dirty cache entry to RocksDB in one batch.
    pub(crate) fn flush_cache(&mut self) -> Result<()> {
        if !self.cache.has_dirty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        let mut buf = Vec::new();
        let mut cache = std::mem::take(&mut self.cache);
        let result = cache.flush(|key, value| write_entry(self, &mut batch, &mut buf, key, value));
        self.cache = cache;
        result?;
        self.inst()?.write(batch)
    }
}

/// Adds the write of one cache entry to `batch`.
fn write_entry(
    b: &RocksDbBackend,
    batch: &mut WriteBatch,
    buf: &mut Vec<u8>,
    key: &[u8],
    value: Option<&crate::cache::AnyValue>,
) -> Result<()> {
    let (idx, raw) = key.split_at_checked(STATE_PREFIX_LEN).ok_or_else(|| {
        StateError::layer("flushing the cache", "cache key without a state index")
    })?;
    let idx = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
    let r = b
        .states
        .get(idx as usize)
        .ok_or(StateError::UnknownState { index: idx })?;
    let cf = b.inst()?.cf(&r.meta.name)?;
    buf.clear();
    let present = match value {
        Some(v) => (r.encode_value)(v, buf)?,
        None => false,
    };
    if present {
        batch.put_cf(cf, raw, &buf[..]);
    } else {
        batch.delete_cf(cf, raw);
    }
    Ok(())
}
