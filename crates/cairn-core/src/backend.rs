//! The keyed state backend trait and the typed accessors on top of it.
//!
//! Access borrows the backend mutably (`backend.value(&count).get()`), so the borrow
//! checker proves that state is only touched by whoever owns the backend: the task thread,
//! between barriers. Snapshots are taken in two phases: [`KeyedStateBackend::snapshot`] is
//! the synchronous phase and returns an [`AsyncSnapshot`] that runs anywhere.

use crate::error::Result;
use crate::keygroup::{KeyGroup, KeyGroupRange};
use crate::snapshot::{
    CancelToken, KeyedStateHandle, SnapshotOptions, SnapshotSource, SnapshotTarget,
};
use crate::state::*;
use crate::ttl::TtlCleanup;

/// The asynchronous phase of a snapshot: encodes the view captured by the synchronous phase
/// and writes it to a target. Runs off the task thread; checks `cancel` between blocks.
pub trait AsyncSnapshot: Send {
    /// Writes the snapshot and returns its handle.
    fn run(
        self: Box<Self>,
        target: &dyn SnapshotTarget,
        cancel: &CancelToken,
    ) -> Result<KeyedStateHandle>;
}

/// A keyed state backend: state per (state, key, namespace), partitioned by key group.
///
/// Keys are given serialized (the runtime serializes each key once); the key group is
/// derived from those bytes with [`crate::key_group_for_key`], so partitioning is identical
/// for every backend. Every accessor works on the current key.
///
/// Restore happens on a fresh backend before states are registered: restored entries are
/// held until their state is registered, and registration checks the stored codec
/// identities against the descriptor's.
pub trait KeyedStateBackend: Send {
    /// The key groups this backend owns.
    fn key_group_range(&self) -> KeyGroupRange;
    /// The job's maximum parallelism (number of key groups).
    fn max_parallelism(&self) -> u32;
    /// Sets the current key; fails if its key group is outside [`Self::key_group_range`],
    /// and then no key is current (state access fails until a valid key is set).
    fn set_current_key(&mut self, serialized_key: &[u8]) -> Result<()>;
    /// The current key's bytes, if set.
    fn current_key(&self) -> Option<&[u8]>;
    /// The current key's group, if a key is set.
    fn current_key_group(&self) -> Option<KeyGroup>;
    /// Whether [`Self::prefetch_key`] does anything (so a caller can skip preparing keys
    /// for it).
    fn prefetches(&self) -> bool {
        false
    }
    /// A hint that `serialized_key` will soon be the current key: the backend may start
    /// loading what the states used recently would read for it, so that a caller that
    /// hints a few keys before processing them waits for their cache misses together
    /// rather than one after another. Changes no state and reports no error (a key out of
    /// range is ignored); the default does nothing.
    fn prefetch_key(&mut self, serialized_key: &[u8]) {
        let _ = serialized_key;
    }

    /// Registers (or re-fetches) a value state.
    fn register_value<V: StateValue, N: Namespace>(
        &mut self,
        d: &ValueStateDescriptor<V, N>,
    ) -> Result<ValueStateId<V, N>>;
    /// Registers (or re-fetches) a list state.
    fn register_list<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<ListStateId<V, N>>;
    /// Registers (or re-fetches) a map state.
    fn register_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<MapStateId<UK, UV, N>>;
    /// Registers (or re-fetches) a reducing state.
    fn register_reducing<V: StateValue, N: Namespace>(
        &mut self,
        d: &ReducingStateDescriptor<V, N>,
    ) -> Result<ReducingStateId<V, N>>;
    /// Registers (or re-fetches) an aggregating state.
    fn register_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<AggregatingStateId<IN, ACC, OUT, N>>;

    /// The value of the current key in `ns`.
    fn value_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>>;
    /// Sets the value of the current key in `ns`.
    fn value_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()>;

    /// The list of the current key in `ns` (empty when absent).
    fn list_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
    ) -> Result<Vec<V>>;
    /// Appends to the list of the current key in `ns`.
    fn list_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()>;
    /// Appends several values.
    fn list_add_all<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()>;
    /// Replaces the list (an empty list clears it).
    fn list_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()>;

    /// The value under `user_key` in the map of the current key in `ns`.
    fn map_get<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>>;
    /// Puts `user_key → value`.
    fn map_put<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()>;
    /// Removes `user_key`; the map disappears with its last entry.
    fn map_remove<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()>;
    /// Whether `user_key` is present.
    fn map_contains<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool>;
    /// Every entry of the map, sorted by the user key's encoding.
    fn map_entries<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>>;

    /// The reduced value of the current key in `ns`.
    fn reducing_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>>;
    /// Folds `value` into the reduced value.
    fn reducing_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()>;

    /// The aggregate's result for the current key in `ns`.
    fn aggregating_get<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
    ) -> Result<Option<OUT>>;
    /// Adds an input to the aggregate.
    fn aggregating_add<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
        input: IN,
    ) -> Result<()>;

    /// State `state` (a value, list, map, reducing or aggregating state whose stored values,
    /// list elements or map values are `V`) has a TTL: the backend may drop entries that
    /// `cleanup` says have expired without waiting for a read to find them (list elements
    /// one by one). It must drop nothing else, and only what has expired by `cleanup`'s
    /// clock when it drops it. Called by [`crate::TtlStateAccess`] at every registration of
    /// a state with a TTL. The default drops nothing: reads alone clean up.
    /// Fails if `state` is not registered or does not hold values of type `V`.
    fn enable_ttl_cleanup<V: StateValue>(
        &mut self,
        state: RawStateId,
        cleanup: TtlCleanup<V>,
    ) -> Result<()> {
        let _ = (state, cleanup);
        Ok(())
    }

    /// Removes the current key's entry of any state in `ns`.
    fn clear<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<()>;

    /// The serialized keys that have an entry in state `s` in namespace `ns`, sorted.
    fn keys<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<Vec<Vec<u8>>>;

    /// The synchronous phase of a snapshot: captures an immutable view in time that does not
    /// grow with the state size, and returns the asynchronous phase.
    fn snapshot(&mut self, options: SnapshotOptions) -> Result<Box<dyn AsyncSnapshot>>;
    /// The checkpoint with this id completed (its manifest is published): later incremental
    /// snapshots may reference its files.
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64);
    /// The checkpoint with this id will never complete.
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64);
    /// Loads the entries of every handle that fall in this backend's key-group range. The
    /// handles together must supply every key group of the range (a gap is an error, never
    /// silently empty state). Must be called on a fresh backend, before any state is
    /// registered.
    fn restore(&mut self, handles: &[KeyedStateHandle], source: &dyn SnapshotSource) -> Result<()>;
}

/// Typed access to registered states on any [`KeyedStateBackend`].
pub trait StateAccess: KeyedStateBackend + Sized {
    /// The value state `id`, in the void namespace.
    fn value<V: StateValue>(
        &mut self,
        id: &ValueStateId<V, VoidNamespace>,
    ) -> Value<'_, Self, V, VoidNamespace> {
        Value {
            b: self,
            id: *id,
            ns: &(),
        }
    }
    /// The list state `id`, in the void namespace.
    fn list<V: StateValue>(
        &mut self,
        id: &ListStateId<V, VoidNamespace>,
    ) -> List<'_, Self, V, VoidNamespace> {
        List {
            b: self,
            id: *id,
            ns: &(),
        }
    }
    /// The map state `id`, in the void namespace.
    fn map<UK: UserKey, UV: StateValue>(
        &mut self,
        id: &MapStateId<UK, UV, VoidNamespace>,
    ) -> Map<'_, Self, UK, UV, VoidNamespace> {
        Map {
            b: self,
            id: *id,
            ns: &(),
        }
    }
    /// The reducing state `id`, in the void namespace.
    fn reducing<V: StateValue>(
        &mut self,
        id: &ReducingStateId<V, VoidNamespace>,
    ) -> Reducing<'_, Self, V, VoidNamespace> {
        Reducing {
            b: self,
            id: *id,
            ns: &(),
        }
    }
    /// The aggregating state `id`, in the void namespace.
    fn aggregating<IN: 'static, ACC: StateValue, OUT: 'static>(
        &mut self,
        id: &AggregatingStateId<IN, ACC, OUT, VoidNamespace>,
    ) -> Aggregating<'_, Self, IN, ACC, OUT, VoidNamespace> {
        Aggregating {
            b: self,
            id: *id,
            ns: &(),
        }
    }
    /// The value state `id` in namespace `ns`.
    fn value_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &ValueStateId<V, N>,
        ns: &'a N,
    ) -> Value<'a, Self, V, N> {
        Value {
            b: self,
            id: *id,
            ns,
        }
    }
    /// The list state `id` in namespace `ns`.
    fn list_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &ListStateId<V, N>,
        ns: &'a N,
    ) -> List<'a, Self, V, N> {
        List {
            b: self,
            id: *id,
            ns,
        }
    }
    /// The map state `id` in namespace `ns`.
    fn map_in<'a, UK: UserKey, UV: StateValue, N: Namespace>(
        &'a mut self,
        id: &MapStateId<UK, UV, N>,
        ns: &'a N,
    ) -> Map<'a, Self, UK, UV, N> {
        Map {
            b: self,
            id: *id,
            ns,
        }
    }
    /// The reducing state `id` in namespace `ns`.
    fn reducing_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &ReducingStateId<V, N>,
        ns: &'a N,
    ) -> Reducing<'a, Self, V, N> {
        Reducing {
            b: self,
            id: *id,
            ns,
        }
    }
    /// The aggregating state `id` in namespace `ns`.
    fn aggregating_in<'a, IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &'a mut self,
        id: &AggregatingStateId<IN, ACC, OUT, N>,
        ns: &'a N,
    ) -> Aggregating<'a, Self, IN, ACC, OUT, N> {
        Aggregating {
            b: self,
            id: *id,
            ns,
        }
    }
}

impl<B: KeyedStateBackend> StateAccess for B {}

macro_rules! accessor {
    ($(#[$doc:meta])* $name:ident<$($p:ident),*>, $id:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name<'a, B, $($p,)* N> {
            b: &'a mut B,
            id: $id<$($p,)* N>,
            ns: &'a N,
        }
    };
}
accessor!(
    /// Access to a `ValueState` for the current key.
    Value<V>, ValueStateId
);
accessor!(
    /// Access to a `ListState` for the current key.
    List<V>, ListStateId
);
accessor!(
    /// Access to a `MapState` for the current key.
    Map<UK, UV>, MapStateId
);
accessor!(
    /// Access to a `ReducingState` for the current key.
    Reducing<V>, ReducingStateId
);
accessor!(
    /// Access to an `AggregatingState` for the current key.
    Aggregating<IN, ACC, OUT>, AggregatingStateId
);

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> Value<'_, B, V, N> {
    /// The value, if set.
    pub fn get(&mut self) -> Result<Option<V>> {
        self.b.value_get(self.id, self.ns)
    }
    /// Sets the value.
    pub fn update(&mut self, value: V) -> Result<()> {
        self.b.value_update(self.id, self.ns, value)
    }
    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> List<'_, B, V, N> {
    /// The elements (empty when absent).
    pub fn get(&mut self) -> Result<Vec<V>> {
        self.b.list_get(self.id, self.ns)
    }
    /// Appends one element.
    pub fn add(&mut self, value: V) -> Result<()> {
        self.b.list_add(self.id, self.ns, value)
    }
    /// Appends several elements.
    pub fn add_all(&mut self, values: Vec<V>) -> Result<()> {
        self.b.list_add_all(self.id, self.ns, values)
    }
    /// Replaces the elements.
    pub fn update(&mut self, values: Vec<V>) -> Result<()> {
        self.b.list_update(self.id, self.ns, values)
    }
    /// Removes the list.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, UK: UserKey, UV: StateValue, N: Namespace> Map<'_, B, UK, UV, N> {
    /// The value under `user_key`.
    pub fn get(&mut self, user_key: &UK) -> Result<Option<UV>> {
        self.b.map_get(self.id, self.ns, user_key)
    }
    /// Puts a value under `user_key`.
    pub fn put(&mut self, user_key: UK, value: UV) -> Result<()> {
        self.b.map_put(self.id, self.ns, user_key, value)
    }
    /// Removes `user_key`.
    pub fn remove(&mut self, user_key: &UK) -> Result<()> {
        self.b.map_remove(self.id, self.ns, user_key)
    }
    /// Whether `user_key` is present.
    pub fn contains(&mut self, user_key: &UK) -> Result<bool> {
        self.b.map_contains(self.id, self.ns, user_key)
    }
    /// Every entry, sorted by the user key's encoding.
    pub fn entries(&mut self) -> Result<Vec<(UK, UV)>> {
        self.b.map_entries(self.id, self.ns)
    }
    /// Whether the map has no entry.
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.entries()?.is_empty())
    }
    /// Removes the whole map.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> Reducing<'_, B, V, N> {
    /// The reduced value, if any value was added.
    pub fn get(&mut self) -> Result<Option<V>> {
        self.b.reducing_get(self.id, self.ns)
    }
    /// Folds in a value.
    pub fn add(&mut self, value: V) -> Result<()> {
        self.b.reducing_add(self.id, self.ns, value)
    }
    /// Removes the reduced value.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>
    Aggregating<'_, B, IN, ACC, OUT, N>
{
    /// The aggregate's result, if any input was added.
    pub fn get(&mut self) -> Result<Option<OUT>> {
        self.b.aggregating_get(self.id, self.ns)
    }
    /// Adds an input.
    pub fn add(&mut self, input: IN) -> Result<()> {
        self.b.aggregating_add(self.id, self.ns, input)
    }
    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}
