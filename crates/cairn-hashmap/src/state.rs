//! Typed states and their type erasure.
//!
//! Every registered state is a [`StateTable<N, L>`]: a sharded table of typed values plus
//! the codecs that turn them into canonical entries. `L` is the state's [`Layout`]: one
//! value per entry (value, reducing, aggregating), a list, or a map of user keys. The
//! backend keeps states as `Box<dyn ErasedState>` and downcasts on each access (a `TypeId`
//! comparison).

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use cairn_core::{
    CodecError, CodecIdentity, CodecRef, KeyGroup, Namespace, Result, StateError, StateValue,
    TtlCleanup, UserKey,
};
use cairn_format::decode_list;
use hashbrown::hash_table::Entry;

use crate::encode::{push_with, Head, KgBuffer, KgWriter};
use crate::error::{internal, HashMapError};
use crate::restore::{RawKeyGroup, RawState};
use crate::table::{find_entry, At, FrozenTable, Item, Shard, ShardedTable};

/// The map kept per `(key, namespace)` of a map state.
pub(crate) type UserMap<UK, UV> = hashbrown::HashMap<UK, UV, foldhash::fast::FixedState>;

pub(crate) fn codec_error(state: &str) -> impl FnOnce(CodecError) -> StateError + '_ {
    move |source| StateError::Codec {
        state: state.to_string(),
        source,
    }
}

/// How a state's typed value maps to canonical entries.
pub(crate) trait Layout: Send + Sync + 'static {
    /// What is kept per `(key, namespace)`.
    type Value: Clone + Send + Sync + 'static;
    /// Adds the canonical entries of `value` to `out`.
    fn encode(&self, value: &Self::Value, head: Head, out: &mut KgBuffer)
        -> Result<(), CodecError>;
    /// Whether every value is exactly one canonical entry without a user key, whose value
    /// [`Layout::encode_single`] appends.
    const SINGLE: bool = false;
    /// Appends the canonical value of `value` (layouts with [`Layout::SINGLE`]); `None`
    /// for the others.
    fn encode_single(
        &self,
        _value: &Self::Value,
        _out: &mut Vec<u8>,
    ) -> Option<Result<(), CodecError>> {
        None
    }
    /// What a TTL stamp is kept on: the value itself, a list element or a map value.
    type Elem: 'static;
    /// Whether some part of `value` is `expired`.
    fn any_expired(value: &Self::Value, expired: &dyn Fn(&Self::Elem) -> bool) -> bool;
    /// Drops the parts of `value` that are `expired`; false when nothing is left.
    fn retain_live(value: &mut Self::Value, expired: &dyn Fn(&Self::Elem) -> bool) -> bool;
    /// Merges one canonical entry into `slot`; returns a new value when `slot` is `None`
    /// (or nothing, if the entry holds no value). `stored` is the identity the snapshot
    /// wrote the values with: they are decoded with [`cairn_core::Codec::decode_from`], which
    /// converts an older schema the codec migrates from.
    fn decode_merge(
        &self,
        slot: Option<&mut Self::Value>,
        user_key: Option<&[u8]>,
        value: &[u8],
        stored: &CodecIdentity,
        state: &str,
    ) -> Result<Option<Self::Value>>;
}

/// One value per entry: value, reducing (the value) and aggregating (the accumulator).
pub(crate) struct Single<V>(pub(crate) CodecRef<V>);

impl<V: StateValue> Layout for Single<V> {
    type Value = V;
    type Elem = V;
    fn any_expired(value: &V, expired: &dyn Fn(&V) -> bool) -> bool {
        expired(value)
    }
    fn retain_live(value: &mut V, expired: &dyn Fn(&V) -> bool) -> bool {
        !expired(value)
    }
    fn encode(&self, value: &V, head: Head, out: &mut KgBuffer) -> Result<(), CodecError> {
        let v = push_with(&mut out.buf, |b| self.0.encode(value, b))?;
        out.push(head, None, v);
        Ok(())
    }
    const SINGLE: bool = true;
    #[inline]
    fn encode_single(&self, value: &V, out: &mut Vec<u8>) -> Option<Result<(), CodecError>> {
        Some(self.0.encode(value, out))
    }
    fn decode_merge(
        &self,
        slot: Option<&mut V>,
        _user_key: Option<&[u8]>,
        value: &[u8],
        stored: &CodecIdentity,
        state: &str,
    ) -> Result<Option<V>> {
        let v = self
            .0
            .decode_from(stored, value)
            .map_err(codec_error(state))?;
        Ok(match slot {
            Some(s) => {
                *s = v;
                None
            }
            None => Some(v),
        })
    }
}

/// A list per entry, stored as one canonical entry (`encode_list` of the elements).
pub(crate) struct ListOf<V>(pub(crate) CodecRef<V>);

impl<V: StateValue> Layout for ListOf<V> {
    type Value = Vec<V>;
    type Elem = V;
    fn any_expired(value: &Vec<V>, expired: &dyn Fn(&V) -> bool) -> bool {
        value.iter().any(expired)
    }
    fn retain_live(value: &mut Vec<V>, expired: &dyn Fn(&V) -> bool) -> bool {
        value.retain(|e| !expired(e));
        !value.is_empty()
    }
    fn encode(&self, value: &Vec<V>, head: Head, out: &mut KgBuffer) -> Result<(), CodecError> {
        out.push_list(head, value, &*self.0)
    }
    fn decode_merge(
        &self,
        slot: Option<&mut Vec<V>>,
        _user_key: Option<&[u8]>,
        value: &[u8],
        stored: &CodecIdentity,
        state: &str,
    ) -> Result<Option<Vec<V>>> {
        let elements = decode_list(value)
            .map_err(|e| StateError::layer(format!("decoding list state={state}"), e))?;
        let mut decoded = Vec::with_capacity(elements.len());
        for e in elements {
            decoded.push(self.0.decode_from(stored, e).map_err(codec_error(state))?);
        }
        Ok(match slot {
            Some(s) => {
                s.extend(decoded);
                None
            }
            None if decoded.is_empty() => None,
            None => Some(decoded),
        })
    }
}

/// A map per entry, stored as one canonical entry per user key.
pub(crate) struct MapOf<UK, UV> {
    pub(crate) user_key: CodecRef<UK>,
    pub(crate) value: CodecRef<UV>,
}

impl<UK: UserKey, UV: StateValue> Layout for MapOf<UK, UV> {
    type Value = UserMap<UK, UV>;
    type Elem = UV;
    fn any_expired(value: &UserMap<UK, UV>, expired: &dyn Fn(&UV) -> bool) -> bool {
        value.values().any(expired)
    }
    fn retain_live(value: &mut UserMap<UK, UV>, expired: &dyn Fn(&UV) -> bool) -> bool {
        value.retain(|_, v| !expired(v));
        !value.is_empty()
    }
    fn encode(
        &self,
        value: &UserMap<UK, UV>,
        head: Head,
        out: &mut KgBuffer,
    ) -> Result<(), CodecError> {
        for (k, v) in value {
            let uk = push_with(&mut out.buf, |b| self.user_key.encode(k, b))?;
            let uv = push_with(&mut out.buf, |b| self.value.encode(v, b))?;
            out.push(head, Some(uk), uv);
        }
        Ok(())
    }
    fn decode_merge(
        &self,
        slot: Option<&mut UserMap<UK, UV>>,
        user_key: Option<&[u8]>,
        value: &[u8],
        stored: &CodecIdentity,
        state: &str,
    ) -> Result<Option<UserMap<UK, UV>>> {
        let Some(uk) = user_key else {
            return Err(StateError::Restore {
                reason: format!("map entry without a user key state={state}"),
            });
        };
        let k = self.user_key.decode(uk).map_err(codec_error(state))?;
        let v = self
            .value
            .decode_from(stored, value)
            .map_err(codec_error(state))?;
        Ok(match slot {
            Some(m) => {
                m.insert(k, v);
                None
            }
            None => {
                let mut m = UserMap::default();
                m.insert(k, v);
                Some(m)
            }
        })
    }
}

/// A registered state: typed entries, codecs, and the reduce or aggregate function.
pub(crate) struct StateTable<N, L: Layout> {
    pub(crate) name: Arc<str>,
    pub(crate) table: ShardedTable<N, L::Value>,
    pub(crate) ns_codec: CodecRef<N>,
    pub(crate) layout: Arc<L>,
    /// `ReduceFn<V>` of a reducing state, `Arc<dyn AggregateFunction<IN, ACC, OUT>>` of an
    /// aggregating one.
    pub(crate) func: Option<Box<dyn Any + Send + Sync>>,
    /// Background cleanup of a state with a TTL (see [`ErasedState::sweep_ttl`]).
    ttl: Option<TtlSweep<L::Elem>>,
}

/// Where the TTL sweep of a state goes on, and how it tells expired entries.
struct TtlSweep<E> {
    cleanup: TtlCleanup<E>,
    /// Buckets visited per sweep ([`sweep_buckets`]).
    buckets: usize,
    /// The next slot and bucket to visit.
    cursor: (usize, usize),
}

impl<N, L: Layout> fmt::Debug for StateTable<N, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTable")
            .field("name", &self.name)
            .field("type", &std::any::type_name::<Self>())
            .finish_non_exhaustive()
    }
}

impl<N: Namespace, L: Layout> StateTable<N, L> {
    pub(crate) fn new(
        name: &str,
        key_groups: u32,
        shards_per_kg: usize,
        ns_codec: CodecRef<N>,
        layout: L,
        func: Option<Box<dyn Any + Send + Sync>>,
    ) -> Self {
        Self {
            name: name.into(),
            table: ShardedTable::new(key_groups, shards_per_kg),
            ns_codec,
            layout: Arc::new(layout),
            func,
            ttl: None,
        }
    }

    /// The unshared shard of `(at.key, ns)` and the entry's hash.
    #[inline]
    pub(crate) fn shard_mut(
        &mut self,
        at: &At<'_>,
        ns: &N,
    ) -> Result<(&mut Shard<N, L::Value>, u64)> {
        self.table
            .shard_mut(at, ns)
            .ok_or_else(|| internal(format!("key group index {} out of range", at.kg_idx)))
    }

    fn downcast_ns<'a>(&self, ns: &'a dyn Any, requested: &'static str) -> Result<&'a N> {
        ns.downcast_ref::<N>().ok_or_else(|| {
            HashMapError::TypeMismatch {
                state: self.name.to_string(),
                registered: std::any::type_name::<N>(),
                requested,
            }
            .into_state("accessing state")
        })
    }
}

/// A registered state behind type erasure.
pub(crate) trait ErasedState: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Starts loading the home bucket of the entry of the key with `key_hash` in key group
    /// `kg_idx`, if the namespace is zero-sized (else the entry's hash is not known).
    fn touch(&self, kg_idx: usize, key_hash: u64);
    /// Removes the entry of `(at.key, ns)`; `ns_type` names `ns`'s type for errors.
    fn clear(&mut self, at: &At<'_>, ns: &dyn Any, ns_type: &'static str) -> Result<bool>;
    /// The keys with an entry in `ns`, sorted.
    fn keys(&self, ns: &dyn Any, ns_type: &'static str) -> Result<Vec<Vec<u8>>>;
    /// An immutable view of the entries (the synchronous phase: shares shards, copies no
    /// entry).
    fn snapshot(&mut self) -> Arc<dyn StateSnapshot>;
    /// Decodes restored entries into the table.
    /// Takes the restored entries of `raw`, whose key group index 0 is key group `first`;
    /// errors name the key group.
    fn restore(&mut self, raw: &RawState, first: KeyGroup) -> Result<()>;
    /// Turns on the TTL sweep with `cleanup`, a `TtlCleanup` of the layout's element type
    /// (an error names `state` if it is not).
    fn enable_ttl(&mut self, cleanup: Box<dyn Any>) -> Result<()>;
    /// With the TTL sweep on: visits the next [`sweep_buckets`] buckets of the table and
    /// drops what has expired there (list elements and map entries one by one), calling
    /// `changed` with the key group index of each changed entry. Nothing without a TTL.
    fn sweep_ttl(&mut self, changed: &mut dyn FnMut(usize));
}

/// Buckets of a state's table that one sweep visits to look at about `entries` entries: a
/// table at its usual load holds about five entries in eight buckets, so Flink's default
/// `cleanupIncrementally(5, false)` visits 8.
pub(crate) fn sweep_buckets(entries: usize) -> usize {
    entries.saturating_mul(8).div_ceil(5)
}

impl<N: Namespace, L: Layout> ErasedState for StateTable<N, L> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    #[inline]
    fn touch(&self, kg_idx: usize, key_hash: u64) {
        if std::mem::size_of::<N>() == 0 {
            self.table.touch(kg_idx, key_hash);
        }
    }
    fn clear(&mut self, at: &At<'_>, ns: &dyn Any, ns_type: &'static str) -> Result<bool> {
        let ns = self.downcast_ns(ns, ns_type)?;
        Ok(self.table.remove(at, ns).is_some())
    }
    fn keys(&self, ns: &dyn Any, ns_type: &'static str) -> Result<Vec<Vec<u8>>> {
        let ns = self.downcast_ns(ns, ns_type)?;
        let mut keys: Vec<Vec<u8>> = self
            .table
            .iter()
            .filter(|e| e.ns == *ns)
            .map(|e| e.key.as_slice().to_vec())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
    fn snapshot(&mut self) -> Arc<dyn StateSnapshot> {
        let ttl = self.ttl.as_ref().map(|sweep| &sweep.cleanup);
        Arc::new(TableSnapshot::<N, L> {
            name: self.name.clone(),
            table: self.table.freeze(),
            ns_codec: self.ns_codec.clone(),
            layout: self.layout.clone(),
            expired_at: ttl
                .filter(|cleanup| cleanup.in_full_snapshots())
                .map(|cleanup| (cleanup.clone(), cleanup.now_ms())),
        })
    }
    fn enable_ttl(&mut self, cleanup: Box<dyn Any>) -> Result<()> {
        let cleanup = cleanup.downcast::<TtlCleanup<L::Elem>>().map_err(|_| {
            internal(format!(
                "the TTL cleanup of state {} is not for its values {}",
                self.name,
                std::any::type_name::<L::Elem>()
            ))
        })?;
        if self.ttl.is_none() {
            self.ttl = Some(TtlSweep {
                buckets: sweep_buckets(cleanup.incremental().entries),
                cleanup: *cleanup,
                cursor: (0, 0),
            });
        }
        Ok(())
    }
    fn sweep_ttl(&mut self, changed: &mut dyn FnMut(usize)) {
        let Some(sweep) = &mut self.ttl else {
            return;
        };
        let now = sweep.cleanup.now_ms();
        let cleanup = &sweep.cleanup;
        let expired = |e: &L::Elem| cleanup.is_expired(e, now);
        self.table.sweep(
            &mut sweep.cursor,
            sweep.buckets,
            |v| L::any_expired(v, &expired),
            |v| L::retain_live(v, &expired),
            changed,
        );
    }
    fn restore(&mut self, raw: &RawState, first: KeyGroup) -> Result<()> {
        for (kg_idx, kg) in raw.key_groups().iter().enumerate() {
            self.restore_kg(raw, kg_idx, kg).map_err(|e| {
                let kg = first as usize + kg_idx;
                StateError::layer(format!("key_group={kg}"), e)
            })?;
        }
        Ok(())
    }
}

impl<N: Namespace, L: Layout> StateTable<N, L> {
    /// Takes the restored entries of one key group.
    fn restore_kg(&mut self, raw: &RawState, kg_idx: usize, kg: &RawKeyGroup) -> Result<()> {
        let stored = &raw.meta.value;
        for e in kg.entries() {
            let ns = self
                .ns_codec
                .decode(e.namespace)
                .map_err(codec_error(&self.name))?;
            let at = At::new(kg_idx, e.key);
            let name = self.name.clone();
            let layout = self.layout.clone();
            let (shard, hash) = self.shard_mut(&at, &ns)?;
            match find_entry(shard, hash, &at, &ns) {
                Entry::Occupied(mut o) => {
                    layout.decode_merge(
                        Some(&mut o.get_mut().value),
                        e.user_key,
                        e.value,
                        stored,
                        &name,
                    )?;
                }
                Entry::Vacant(v) => {
                    if let Some(value) =
                        layout.decode_merge(None, e.user_key, e.value, stored, &name)?
                    {
                        v.insert(Item {
                            key: at.key_bytes(),
                            ns,
                            value,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `Layout::encode_single` of a layout without [`Layout::SINGLE`] (never called).
#[cold]
fn not_single() -> CodecError {
    CodecError {
        codec: "heap backend layout".into(),
        op: "encode",
        detail: "a value of several entries encoded as one".into(),
    }
}

/// The entries of one state as a snapshot captured them.
pub(crate) trait StateSnapshot: Send + Sync {
    /// Adds the canonical entries of key group index `kg_idx` to `out`, as state `file_state`
    /// of the file's state table.
    fn encode_kg(&self, kg_idx: usize, file_state: u32, out: &mut KgBuffer) -> Result<()>;

    /// Appends the canonical entries of key group index `kg_idx` to `out` in file order, as
    /// state `file_state`; `buf` is scratch space.
    fn write_kg(
        &self,
        kg_idx: usize,
        file_state: u32,
        buf: &mut KgBuffer,
        out: &mut KgWriter<'_>,
    ) -> Result<()> {
        write_kg_sorted(self, kg_idx, file_state, buf, out)
    }
}

/// The general [`StateSnapshot::write_kg`]: encodes the key group into `buf`, then writes
/// it sorted.
fn write_kg_sorted<S: StateSnapshot + ?Sized>(
    s: &S,
    kg_idx: usize,
    file_state: u32,
    buf: &mut KgBuffer,
    out: &mut KgWriter<'_>,
) -> Result<()> {
    buf.clear();
    s.encode_kg(kg_idx, file_state, buf)?;
    buf.write_sorted(out)
}

struct TableSnapshot<N, L: Layout> {
    name: Arc<str>,
    table: FrozenTable<N, L::Value>,
    ns_codec: CodecRef<N>,
    layout: Arc<L>,
    /// A state with a TTL that cleans up full snapshots
    /// (`StateTtlConfig::with_full_snapshot_cleanup`): its cleanup, and the time of the
    /// synchronous phase. What has expired then is left out of the snapshot.
    expired_at: Option<(TtlCleanup<L::Elem>, u64)>,
}

impl<N, L: Layout> TableSnapshot<N, L> {
    /// What the snapshot holds of `value`: all of it, its live parts (a copy: values, list
    /// elements and map entries that had not expired at the synchronous phase), or nothing.
    #[inline]
    fn live<'v>(&self, value: &'v L::Value) -> Option<Cow<'v, L::Value>> {
        let Some((cleanup, now_ms)) = &self.expired_at else {
            return Some(Cow::Borrowed(value));
        };
        let expired = |e: &L::Elem| cleanup.is_expired(e, *now_ms);
        if !L::any_expired(value, &expired) {
            return Some(Cow::Borrowed(value));
        }
        let mut live = value.clone();
        L::retain_live(&mut live, &expired).then_some(Cow::Owned(live))
    }
}

impl<N: Namespace, L: Layout> StateSnapshot for TableSnapshot<N, L> {
    fn encode_kg(&self, kg_idx: usize, file_state: u32, out: &mut KgBuffer) -> Result<()> {
        // A zero-sized namespace type has a single value: encode it once.
        let mut single_ns = None;
        for item in self.table.iter_kg(kg_idx) {
            let Some(value) = self.live(&item.value) else {
                continue;
            };
            let head = match single_ns {
                Some(ns) => out.head_with_ns(file_state, item.key.as_slice(), ns),
                None => {
                    let head = out
                        .head(file_state, item.key.as_slice(), |b| {
                            self.ns_codec.encode(&item.ns, b)
                        })
                        .map_err(codec_error(&self.name))?;
                    if std::mem::size_of::<N>() == 0 {
                        single_ns = Some(head.ns);
                    }
                    head
                }
            };
            self.layout
                .encode(&value, head, out)
                .map_err(codec_error(&self.name))?;
        }
        Ok(())
    }

    fn write_kg(
        &self,
        kg_idx: usize,
        file_state: u32,
        buf: &mut KgBuffer,
        out: &mut KgWriter<'_>,
    ) -> Result<()> {
        if !(L::SINGLE && std::mem::size_of::<N>() == 0) {
            return write_kg_sorted(self, kg_idx, file_state, buf, out);
        }
        // One entry per key and one namespace value: read the key group once, in table
        // order, copying each key and encoding each value into the arena; sort 24-byte
        // records by key (the first 8 bytes as an integer, the rest only where those are
        // equal); write from the arena.
        buf.clear();
        let mut ns = None;
        for item in self.table.iter_kg(kg_idx) {
            let Some(value) = self.live(&item.value) else {
                continue;
            };
            if ns.is_none() {
                let mut bytes = Vec::new();
                self.ns_codec
                    .encode(&item.ns, &mut bytes)
                    .map_err(codec_error(&self.name))?;
                ns = Some(bytes);
            }
            let added = buf
                .push_slim(item.key.as_slice(), |b| {
                    self.layout
                        .encode_single(&value, b)
                        .unwrap_or_else(|| Err(not_single()))
                })
                .map_err(codec_error(&self.name))?;
            if !added {
                buf.clear();
                self.encode_kg(kg_idx, file_state, buf)?;
                return buf.write_sorted(out);
            }
        }
        match ns {
            Some(ns) => buf.write_slims(file_state, &ns, out),
            None => Ok(()),
        }
    }
}
