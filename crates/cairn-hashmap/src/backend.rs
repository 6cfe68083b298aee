//! [`HashMapBackend`]: registration, the current key, and the trait implementation.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use cairn_core::*;

use crate::error::HashMapError;
use crate::restore::{load, RawState, RestoreTarget};
use crate::snapshot::{HeapSnapshot, Incremental, SnapshotState, SyncView};
use crate::state::{ErasedState, Layout, ListOf, MapOf, Single, StateTable};
use crate::table::{key_hash, shards_per_key_group, At, InlineKey};

/// Configuration of a [`HashMapBackend`].
#[derive(Clone, Debug)]
pub struct HashMapConfig {
    /// The operator uid (used in errors and file names).
    pub uid: String,
    /// The job's maximum parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The key groups this backend owns; non-empty, within `0..max_parallelism`.
    pub key_group_range: KeyGroupRange,
    /// Identity of the key codec (recorded in snapshots, checked on restore).
    pub key_codec: CodecIdentity,
}

struct Registered {
    meta: StateMeta,
    /// `state.type_name()`, kept for errors off the hot path.
    type_name: &'static str,
    state: Box<dyn ErasedState>,
    /// The state has a TTL with incremental cleanup: each access sweeps a few entries
    /// ([`ErasedState::sweep_ttl`]).
    ttl: bool,
}

#[derive(Debug, Default)]
struct CurrentKey {
    set: bool,
    bytes: Vec<u8>,
    kg: KeyGroup,
    kg_idx: usize,
    hash: u64,
    inline: Option<InlineKey>,
}

/// The heap state backend: typed values in sharded hash tables, updated in place, with
/// copy-on-write snapshots and incremental checkpoints by key group.
pub struct HashMapBackend {
    uid: Arc<str>,
    max_parallelism: u32,
    range: KeyGroupRange,
    key_codec: CodecIdentity,
    shards_per_kg: usize,
    current: CurrentKey,
    states: Vec<Registered>,
    by_name: HashMap<String, u32>,
    /// Restored states not registered yet.
    raw: BTreeMap<String, Arc<RawState>>,
    restored: bool,
    inc: Incremental,
    /// The states recent keys used, and `(state index, key group index, key hash)` of the
    /// entries hinted at since the current key was set: `set_current_key` touches them
    /// together.
    hints: PrefetchHints<(u32, u32, u64)>,
    /// States with a TTL whose cleanup runs for every record (each new current key) too.
    sweep_every_key: Vec<u32>,
}

impl fmt::Debug for HashMapBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashMapBackend")
            .field("uid", &self.uid)
            .field("max_parallelism", &self.max_parallelism)
            .field("key_group_range", &self.range)
            .field(
                "states",
                &self.states.iter().map(|s| &s.meta.name).collect::<Vec<_>>(),
            )
            .field(
                "restored_unregistered",
                &self.raw.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl HashMapBackend {
    /// A backend for `config.key_group_range`.
    pub fn new(config: HashMapConfig) -> Result<Self> {
        let HashMapConfig {
            uid,
            max_parallelism,
            key_group_range: range,
            key_codec,
        } = config;
        check_backend_range(range, max_parallelism)?;
        Ok(Self {
            uid: uid.into(),
            max_parallelism,
            range,
            key_codec,
            shards_per_kg: shards_per_key_group(range.len()),
            current: CurrentKey::default(),
            states: Vec::new(),
            by_name: HashMap::new(),
            raw: BTreeMap::new(),
            restored: false,
            inc: Incremental::new(range.len()),
            hints: PrefetchHints::default(),
            sweep_every_key: Vec::new(),
        })
    }

    /// A backend for subtask `index` of `parallelism` ([`KeyGroupRange::for_subtask`]).
    pub fn for_subtask(
        uid: impl Into<String>,
        max_parallelism: u32,
        parallelism: u32,
        index: u32,
        key_codec: CodecIdentity,
    ) -> Result<Self> {
        Self::new(HashMapConfig {
            uid: uid.into(),
            max_parallelism,
            key_group_range: KeyGroupRange::for_subtask(max_parallelism, parallelism, index)?,
            key_codec,
        })
    }

    /// The operator uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Registers `meta` with a fresh table made by `make`, or re-fetches it. A restored
    /// state is taken into the table as `resolve` (the descriptor's) decides; when its values
    /// migrate, every key group becomes dirty, so that no incremental checkpoint refers to
    /// files holding the old schema under the new identity.
    fn register<N: Namespace, L: Layout>(
        &mut self,
        meta: StateMeta,
        resolve: impl FnOnce(&StateMeta, &str) -> Result<StateMigration>,
        make: impl FnOnce(u32, usize) -> StateTable<N, L>,
    ) -> Result<RawStateId> {
        if let Some(&index) = self.by_name.get(&meta.name) {
            let r = self
                .states
                .get(index as usize)
                .ok_or(StateError::UnknownState { index })?;
            r.meta.check_compatible(&meta, &self.uid, false)?;
            if !r.state.as_any().is::<StateTable<N, L>>() {
                return Err(HashMapError::TypeMismatch {
                    state: meta.name.clone(),
                    registered: r.type_name,
                    requested: std::any::type_name::<StateTable<N, L>>(),
                }
                .into_state(format!("registering state uid={}", self.uid)));
            }
            return Ok(RawStateId {
                index,
                kind: meta.kind,
            });
        }
        let mut table = make(self.range.len(), self.shards_per_kg);
        if let Some(raw) = self.raw.get(&meta.name) {
            let migration = resolve(&raw.meta, &self.uid)?;
            table.restore(raw, self.range.start).map_err(|e| {
                StateError::layer(format!("restoring uid={} state={}", self.uid, meta.name), e)
            })?;
            if migration == StateMigration::Values {
                self.inc.dirty.fill(true);
            }
            self.raw.remove(&meta.name);
        }
        let index = u32::try_from(self.states.len())
            .map_err(|_| StateError::UnknownState { index: u32::MAX })?;
        self.by_name.insert(meta.name.clone(), index);
        let kind = meta.kind;
        self.states.push(Registered {
            meta,
            type_name: std::any::type_name::<StateTable<N, L>>(),
            state: Box::new(table),
            ttl: false,
        });
        Ok(RawStateId { index, kind })
    }

    /// Touches the buckets noted by `prefetch_key`, one after another without other work
    /// in between, so that their cache misses overlap.
    fn touch_pending(&self) {
        for &(i, kg_idx, hash) in self.hints.pending() {
            if let Some(r) = self.states.get(i as usize) {
                r.state.touch(kg_idx as usize, hash);
            }
        }
    }

    /// The typed state `id`, the current key, and whether to mark its key group dirty.
    #[inline(always)]
    fn access<N: Namespace, L: Layout>(
        &mut self,
        id: RawStateId,
        kind: StateKind,
        write: bool,
    ) -> Result<(&mut StateTable<N, L>, At<'_>)> {
        let Self {
            states,
            current,
            inc,
            hints,
            ..
        } = self;
        let Some(r) = states.get_mut(id.index as usize) else {
            return Err(StateError::UnknownState { index: id.index });
        };
        hints.note(id.index);
        if r.meta.kind != kind || id.kind != kind {
            return Err(kind_mismatch(&r.meta, id.kind, kind));
        }
        if !current.set {
            return Err(no_current_key(&r.meta));
        }
        if write {
            if let Some(d) = inc.dirty.get_mut(current.kg_idx) {
                *d = true;
            }
        }
        if r.ttl {
            sweep(r, &mut inc.dirty);
        }
        let (meta, registered) = (&r.meta, r.type_name);
        let Some(table) = r.state.as_any_mut().downcast_mut::<StateTable<N, L>>() else {
            return Err(type_mismatch::<StateTable<N, L>>(meta, registered));
        };
        let at = At {
            kg_idx: current.kg_idx,
            key_hash: current.hash,
            key: &current.bytes,
            inline: current.inline,
        };
        Ok((table, at))
    }

    /// The state `id` untyped, with the current key (for `clear` and `keys`).
    fn erased(
        &mut self,
        id: RawStateId,
        write: bool,
    ) -> Result<(&mut dyn ErasedState, Option<At<'_>>)> {
        let Self {
            states,
            current,
            inc,
            ..
        } = self;
        let r = states
            .get_mut(id.index as usize)
            .ok_or_else(|| StateError::UnknownState { index: id.index })?;
        if r.meta.kind != id.kind {
            return Err(StateError::KindMismatch {
                state: r.meta.name.clone(),
                registered: r.meta.kind,
                requested: id.kind,
            });
        }
        if write && current.set {
            if let Some(d) = inc.dirty.get_mut(current.kg_idx) {
                *d = true;
            }
        }
        let at = current.set.then(|| At {
            kg_idx: current.kg_idx,
            key_hash: current.hash,
            key: &current.bytes,
            inline: current.inline,
        });
        Ok((&mut *r.state, at))
    }

    fn no_current_key(&self, id: RawStateId) -> StateError {
        StateError::NoCurrentKey {
            state: self
                .states
                .get(id.index as usize)
                .map(|r| r.meta.name.clone())
                .unwrap_or_default(),
        }
    }
}

/// One step of the TTL sweep of state `r`; every key group it changes becomes dirty.
/// Out of line: `access` stays small for states without a TTL.
impl HashMapBackend {
    /// The cleanup that runs for every record: sweeps each state that asked for it.
    #[inline(never)]
    fn sweep_for_record(&mut self) {
        for &i in &self.sweep_every_key {
            if let Some(r) = self.states.get_mut(i as usize) {
                sweep(r, &mut self.inc.dirty);
            }
        }
    }
}

#[inline(never)]
fn sweep(r: &mut Registered, dirty: &mut [bool]) {
    r.state.sweep_ttl(&mut |kg_idx| {
        if let Some(d) = dirty.get_mut(kg_idx) {
            *d = true;
        }
    });
}

#[cold]
fn kind_mismatch(meta: &StateMeta, id_kind: StateKind, kind: StateKind) -> StateError {
    StateError::KindMismatch {
        state: meta.name.clone(),
        registered: meta.kind,
        requested: if id_kind != kind { id_kind } else { kind },
    }
}

#[cold]
fn no_current_key(meta: &StateMeta) -> StateError {
    StateError::NoCurrentKey {
        state: meta.name.clone(),
    }
}

#[cold]
fn type_mismatch<T>(meta: &StateMeta, registered: &'static str) -> StateError {
    HashMapError::TypeMismatch {
        state: meta.name.clone(),
        registered,
        requested: std::any::type_name::<T>(),
    }
    .into_state("accessing state")
}

impl KeyedStateBackend for HashMapBackend {
    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    #[inline]
    fn set_current_key(&mut self, serialized_key: &[u8]) -> Result<()> {
        let kg = key_group_for_key(serialized_key, self.max_parallelism);
        if !self.range.contains(kg) {
            // No key is current after a failed set, so a caller that ignores the error cannot
            // write to the previous key.
            self.current.set = false;
            return Err(StateError::KeyGroupOutOfRange {
                key_group: kg,
                range: self.range,
            });
        }
        let c = &mut self.current;
        c.bytes.clear();
        c.bytes.extend_from_slice(serialized_key);
        c.kg = kg;
        c.kg_idx = (kg - self.range.start) as usize;
        c.hash = key_hash(serialized_key);
        c.inline = InlineKey::new(serialized_key);
        c.set = true;
        if !self.hints.pending().is_empty() {
            self.touch_pending();
        }
        self.hints.next_key();
        if !self.sweep_every_key.is_empty() {
            self.sweep_for_record();
        }
        Ok(())
    }

    fn prefetches(&self) -> bool {
        true
    }

    /// Notes the home bucket of `serialized_key`'s entry in each state the last key used
    /// (states with a zero-sized namespace only: the entry's hash needs the namespace); the
    /// next `set_current_key` touches every bucket noted since the last one, together.
    #[inline]
    fn prefetch_key(&mut self, serialized_key: &[u8]) {
        let states = self.hints.states();
        if states.is_empty() {
            return;
        }
        let kg = key_group_for_key(serialized_key, self.max_parallelism);
        if !self.range.contains(kg) {
            return;
        }
        let kg_idx = kg - self.range.start;
        let hash = key_hash(serialized_key);
        for i in states {
            self.hints.push((i, kg_idx, hash));
        }
    }

    fn current_key(&self) -> Option<&[u8]> {
        self.current.set.then_some(self.current.bytes.as_slice())
    }

    fn current_key_group(&self) -> Option<KeyGroup> {
        self.current.set.then_some(self.current.kg)
    }

    fn register_value<V: StateValue, N: Namespace>(
        &mut self,
        d: &ValueStateDescriptor<V, N>,
    ) -> Result<ValueStateId<V, N>> {
        let (ns, codec) = (d.namespace.clone(), d.value.clone());
        self.register(
            d.meta(),
            |m, uid| d.resolve(m, uid),
            |kgs, spk| StateTable::new(&d.name, kgs, spk, ns, Single(codec), None),
        )
        .map(ValueStateId::new)
    }

    fn register_list<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<ListStateId<V, N>> {
        let (ns, codec) = (d.namespace.clone(), d.element.clone());
        self.register(
            d.meta(),
            |m, uid| d.resolve(m, uid),
            |kgs, spk| StateTable::new(&d.name, kgs, spk, ns, ListOf(codec), None),
        )
        .map(ListStateId::new)
    }

    fn register_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<MapStateId<UK, UV, N>> {
        let layout = MapOf {
            user_key: d.user_key.clone(),
            value: d.value.clone(),
        };
        let ns = d.namespace.clone();
        self.register(
            d.meta(),
            |m, uid| d.resolve(m, uid),
            |kgs, spk| StateTable::new(&d.name, kgs, spk, ns, layout, None),
        )
        .map(MapStateId::new)
    }

    fn register_reducing<V: StateValue, N: Namespace>(
        &mut self,
        d: &ReducingStateDescriptor<V, N>,
    ) -> Result<ReducingStateId<V, N>> {
        let (ns, codec) = (d.namespace.clone(), d.value.clone());
        let func: Box<dyn std::any::Any + Send + Sync> = Box::new(d.reduce.clone());
        self.register(
            d.meta(),
            |m, uid| d.resolve(m, uid),
            |kgs, spk| StateTable::new(&d.name, kgs, spk, ns, Single(codec), Some(func)),
        )
        .map(ReducingStateId::new)
    }

    fn register_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<AggregatingStateId<IN, ACC, OUT, N>> {
        let (ns, codec) = (d.namespace.clone(), d.accumulator.clone());
        let func: Box<dyn std::any::Any + Send + Sync> = Box::new(d.function.clone());
        let id = self.register(
            d.meta(),
            |m, uid| d.resolve(m, uid),
            |kgs, spk| StateTable::new(&d.name, kgs, spk, ns, Single(codec), Some(func)),
        )?;
        // The table's type does not name IN and OUT: check the function's.
        type Func<IN, ACC, OUT> = Arc<dyn AggregateFunction<IN, ACC, OUT>>;
        let r = self.states.get(id.index as usize);
        let ok = r
            .and_then(|r| {
                r.state
                    .as_any()
                    .downcast_ref::<StateTable<N, Single<ACC>>>()
            })
            .and_then(|t| t.func.as_ref())
            .is_some_and(|f| f.is::<Func<IN, ACC, OUT>>());
        if !ok {
            return Err(HashMapError::TypeMismatch {
                state: d.name.clone(),
                registered: "another aggregate function type",
                requested: std::any::type_name::<Func<IN, ACC, OUT>>(),
            }
            .into_state(format!("registering state uid={}", self.uid)));
        }
        Ok(AggregatingStateId::new(id))
    }

    #[inline]
    fn value_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        let (t, at) = self.access::<N, Single<V>>(s.raw(), StateKind::Value, false)?;
        Ok(t.get(&at, ns).cloned())
    }

    #[inline]
    fn value_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (t, at) = self.access::<N, Single<V>>(s.raw(), StateKind::Value, true)?;
        t.put(&at, ns, value)
    }

    fn list_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
    ) -> Result<Vec<V>> {
        let (t, at) = self.access::<N, ListOf<V>>(s.raw(), StateKind::List, false)?;
        Ok(t.get(&at, ns))
    }

    #[inline]
    fn list_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (t, at) = self.access::<N, ListOf<V>>(s.raw(), StateKind::List, true)?;
        t.add_all(&at, ns, std::iter::once(value))
    }

    fn list_add_all<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let (t, at) = self.access::<N, ListOf<V>>(s.raw(), StateKind::List, !values.is_empty())?;
        t.add_all(&at, ns, values.into_iter())
    }

    fn list_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let (t, at) = self.access::<N, ListOf<V>>(s.raw(), StateKind::List, true)?;
        t.update(&at, ns, values)
    }

    #[inline]
    fn map_get<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let (t, at) = self.access::<N, MapOf<UK, UV>>(s.raw(), StateKind::Map, false)?;
        Ok(t.get(&at, ns, user_key).cloned())
    }

    #[inline]
    fn map_put<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let (t, at) = self.access::<N, MapOf<UK, UV>>(s.raw(), StateKind::Map, true)?;
        t.put(&at, ns, user_key, value)
    }

    fn map_remove<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (t, at) = self.access::<N, MapOf<UK, UV>>(s.raw(), StateKind::Map, true)?;
        t.remove(&at, ns, user_key).map(|_| ())
    }

    fn map_contains<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        let (t, at) = self.access::<N, MapOf<UK, UV>>(s.raw(), StateKind::Map, false)?;
        Ok(t.contains(&at, ns, user_key))
    }

    fn map_entries<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let (t, at) = self.access::<N, MapOf<UK, UV>>(s.raw(), StateKind::Map, false)?;
        t.entries(&at, ns)
    }

    fn reducing_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        let (t, at) = self.access::<N, Single<V>>(s.raw(), StateKind::Reducing, false)?;
        Ok(t.get(&at, ns).cloned())
    }

    fn reducing_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (t, at) = self.access::<N, Single<V>>(s.raw(), StateKind::Reducing, true)?;
        t.reduce(&at, ns, value)
    }

    fn aggregating_get<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        let (t, at) = self.access::<N, Single<ACC>>(s.raw(), StateKind::Aggregating, false)?;
        t.aggregate_get::<IN, OUT>(&at, ns)
    }

    fn aggregating_add<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
        input: IN,
    ) -> Result<()> {
        let (t, at) = self.access::<N, Single<ACC>>(s.raw(), StateKind::Aggregating, true)?;
        t.aggregate_add::<IN, OUT>(&at, ns, input)
    }

    fn clear<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<()> {
        let (state, at) = self.erased(s, true)?;
        match at {
            Some(at) => state.clear(&at, ns, std::any::type_name::<N>()).map(|_| ()),
            None => Err(self.no_current_key(s)),
        }
    }

    /// Each access to the state then sweeps a few buckets of its table for expired entries
    /// (about `cleanup.incremental().entries` entries, Flink's `cleanupSize`, 5 by
    /// default), and with `every_record` so does each `set_current_key`: a state that is
    /// accessed (or whose operator gets records) often enough is swept whole, however
    /// seldom each key is read. A swept key group is dirty for the next incremental
    /// checkpoint.
    fn enable_ttl_cleanup<V: StateValue>(
        &mut self,
        state: RawStateId,
        cleanup: TtlCleanup<V>,
    ) -> Result<()> {
        let r = self
            .states
            .get_mut(state.index as usize)
            .ok_or(StateError::UnknownState { index: state.index })?;
        let incremental = cleanup.incremental();
        if r.ttl || incremental.entries == 0 {
            // Already on (the first registration's settings stay), or turned off.
            return Ok(());
        }
        r.state.enable_ttl(Box::new(cleanup))?;
        r.ttl = true;
        if incremental.every_record {
            self.sweep_every_key.push(state.index);
        }
        Ok(())
    }

    fn keys<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<Vec<Vec<u8>>> {
        let (state, _) = self.erased(s, false)?;
        state.keys(ns, std::any::type_name::<N>())
    }

    fn snapshot(&mut self, options: SnapshotOptions) -> Result<Box<dyn AsyncSnapshot>> {
        let mut states = Vec::with_capacity(self.states.len() + self.raw.len());
        for r in &mut self.states {
            states.push(SnapshotState {
                meta: r.meta.clone(),
                entries: r.state.snapshot(),
            });
        }
        for raw in self.raw.values() {
            states.push(SnapshotState {
                meta: raw.meta.clone(),
                entries: raw.clone(),
            });
        }
        let view = SyncView {
            options,
            uid: self.uid.clone(),
            range: self.range,
            key_codec: self.key_codec.clone(),
            states,
        };
        Ok(Box::new(HeapSnapshot::new(view, &mut self.inc)))
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) {
        self.inc.complete(checkpoint_id);
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) {
        self.inc.abort(checkpoint_id);
    }

    fn restore(&mut self, handles: &[KeyedStateHandle], source: &dyn SnapshotSource) -> Result<()> {
        if self.restored || !self.states.is_empty() {
            return Err(StateError::Restore {
                reason: format!(
                    "restore must be called once, on a fresh backend, before any state is registered uid={}",
                    self.uid
                ),
            });
        }
        let target = RestoreTarget {
            uid: &self.uid,
            range: self.range,
            max_parallelism: self.max_parallelism,
            key_codec: &self.key_codec,
        };
        let raw = load(&target, handles, source)?;
        self.raw = raw.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        self.restored = true;
        Ok(())
    }
}
