//! The [`KeyedStateBackend`] implementation: every call is delegated to the wrapped backend;
//! every successful mutation is then logged as bytes. What the log record needs is encoded
//! before the wrapped backend changes, so that a codec error leaves both as they were; only
//! a reduced value or an accumulator, which the change makes, is encoded after it.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cairn_core::*;
use cairn_format::{encode_list, ChangelogOp};

use crate::backend::ChangelogBackend;

/// Codecs of value, list, reducing and aggregating states. The namespace codec is the
/// state's `ns_codec`; `N` here makes a lookup check the namespace type too.
struct PlainCodecs<V, N> {
    value: CodecRef<V>,
    namespace: PhantomData<fn() -> N>,
}

/// Codecs of map states (the namespace codec as in [`PlainCodecs`]).
struct MapCodecs<UK, UV, N> {
    user_key: CodecRef<UK>,
    value: CodecRef<UV>,
    namespace: PhantomData<fn() -> N>,
}

/// Where the wrapped aggregate function leaves the encoded accumulator after an add.
pub(crate) type AccSlot = Arc<Mutex<Option<std::result::Result<Vec<u8>, CodecError>>>>;

/// The input of the wrapped backend's aggregating state: the program's inputs, or an
/// accumulator set by replay.
pub(crate) enum AggInput<IN, ACC> {
    Add(IN),
    Set(ACC),
}

/// The program's aggregate function, plus capture of the accumulator after each add.
struct CapturingAggregate<IN, ACC, OUT> {
    function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    codec: CodecRef<ACC>,
    slot: AccSlot,
}

impl<IN: 'static, ACC: StateValue, OUT: 'static> AggregateFunction<AggInput<IN, ACC>, ACC, OUT>
    for CapturingAggregate<IN, ACC, OUT>
{
    fn create_accumulator(&self) -> ACC {
        self.function.create_accumulator()
    }
    fn add(&self, acc: &mut ACC, input: AggInput<IN, ACC>) {
        match input {
            AggInput::Add(x) => self.function.add(acc, x),
            AggInput::Set(a) => *acc = a,
        }
        let encoded = self.codec.encode_to_vec(acc);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(encoded);
    }
    fn result(&self, acc: &ACC) -> OUT {
        self.function.result(acc)
    }
}

fn codec_err(state: &str, source: CodecError) -> StateError {
    StateError::Codec {
        state: state.to_string(),
        source,
    }
}

impl<B: KeyedStateBackend> ChangelogBackend<B> {
    /// The typed codecs of state `raw`, and its index.
    fn codecs<C: 'static>(&self, raw: RawStateId) -> Result<(usize, &C)> {
        let w = self.state_index(raw)?;
        let c = self
            .states
            .get(w)
            .and_then(|s| s.codecs.downcast_ref::<C>())
            .ok_or_else(|| self.type_mismatch(w))?;
        Ok((w, c))
    }

    /// Runs `encode` with the codecs `C` of state `raw`, borrowed (the hot path of a change:
    /// no reference counting), on `scratch`, cleared; returns the state's index and what
    /// `encode` returns.
    fn encode_with<C: 'static, R>(
        &mut self,
        raw: RawStateId,
        encode: impl FnOnce(&C, &mut Vec<u8>) -> std::result::Result<R, CodecError>,
    ) -> Result<(usize, R)> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let r = self.codecs::<C>(raw).and_then(|(w, c)| {
            let r = encode(c, &mut scratch).map_err(|e| codec_err(self.state_name(w), e))?;
            Ok((w, r))
        });
        self.scratch = scratch;
        r
    }

    /// Encodes `values` as a list value of state `s` into `scratch`; returns its index.
    fn encode_elements<V: 'static, N: 'static>(
        &mut self,
        s: ListStateId<V, N>,
        values: &[V],
    ) -> Result<usize> {
        let (w, ()) = self.encode_with(s.raw(), |c: &PlainCodecs<V, N>, out| {
            let mut parts = Vec::with_capacity(values.len());
            for v in values {
                parts.push(c.value.encode_to_vec(v)?);
            }
            encode_list(parts.iter().map(Vec::as_slice), out);
            Ok(())
        })?;
        Ok(w)
    }

    /// Encodes `ns` into `scratch_ns` with the namespace codec of state `w`.
    fn encode_ns<N: 'static>(&mut self, w: usize, ns: &N) -> Result<()> {
        let mut scratch_ns = std::mem::take(&mut self.scratch_ns);
        scratch_ns.clear();
        let codec = self
            .states
            .get(w)
            .and_then(|st| st.ns_codec.downcast_ref::<CodecRef<N>>());
        let r = match codec {
            Some(c) => c
                .encode(ns, &mut scratch_ns)
                .map_err(|e| codec_err(self.state_name(w), e)),
            None => Err(self.type_mismatch(w)),
        };
        self.scratch_ns = scratch_ns;
        r
    }

    fn state_name(&self, w: usize) -> &str {
        self.states
            .get(w)
            .map(|s| s.meta.name.as_str())
            .unwrap_or("")
    }

    /// Logs `op` with the value in `scratch` (or none).
    fn log_scratch(&mut self, w: usize, op: ChangelogOp, user_key: Option<&[u8]>) -> Result<()> {
        let value = std::mem::take(&mut self.scratch);
        let r = self.log_change(w, op, user_key, op.has_value().then_some(value.as_slice()));
        self.scratch = value;
        r
    }

    /// Records a state whose entries are a value and a namespace (every kind but map),
    /// encoded with `codecs`.
    fn add_plain<V: 'static, N: 'static>(
        &mut self,
        raw: RawStateId,
        meta: StateMeta,
        (value, namespace): (&CodecRef<V>, &CodecRef<N>),
        acc_slot: Option<AccSlot>,
    ) {
        let codecs = PlainCodecs {
            value: value.clone(),
            namespace: PhantomData::<fn() -> N>,
        };
        let ns_codec = Box::new(namespace.clone());
        self.add_state(raw, meta, Box::new(codecs), ns_codec, acc_slot);
    }

    /// Checks a registration of `meta` against what the restored handles say about the
    /// state, with the descriptor's `resolve` (kind; namespace and user key as is; the
    /// value as is or after a migration); returns whether this, the state's first
    /// registration in this run, changes the state's identity: it migrates its values, or
    /// reads a renamed identity as is. Either way the materializations started before
    /// describe the state under the stored identity while later handles name the new
    /// one, so they must not be used. A re-registration is checked again but changes
    /// nothing (the first one did).
    fn register_common(
        &mut self,
        meta: &StateMeta,
        resolve: impl FnOnce(&StateMeta, &str) -> Result<StateMigration>,
    ) -> Result<bool> {
        let Some(stored) = self.restored_metas.get(&meta.name) else {
            return Ok(false);
        };
        let migration = resolve(stored, &self.config.uid)?;
        let first = !self.states.iter().any(|s| s.meta.name == meta.name);
        let renamed = [
            (Some(&stored.namespace), Some(&meta.namespace)),
            (Some(&stored.value), Some(&meta.value)),
            (stored.user_key.as_ref(), meta.user_key.as_ref()),
        ]
        .iter()
        .any(|(s, m)| match (s, m) {
            (Some(s), Some(m)) => !s.is_compatible_with(m),
            _ => false,
        });
        Ok(first && (migration == StateMigration::Values || renamed))
    }

    /// After the wrapped backend registered a state whose identity changes (and before
    /// its records are replayed): see "Schema evolution" in the crate docs.
    fn after_registration(&mut self, migrates: bool) {
        if migrates {
            self.migrated();
        }
    }
}

impl<B: KeyedStateBackend> KeyedStateBackend for ChangelogBackend<B> {
    fn key_group_range(&self) -> KeyGroupRange {
        self.inner.key_group_range()
    }
    fn max_parallelism(&self) -> u32 {
        self.inner.max_parallelism()
    }
    fn set_current_key(&mut self, serialized_key: &[u8]) -> Result<()> {
        self.inner.set_current_key(serialized_key)
    }
    fn current_key(&self) -> Option<&[u8]> {
        self.inner.current_key()
    }
    fn current_key_group(&self) -> Option<KeyGroup> {
        self.inner.current_key_group()
    }

    fn prefetches(&self) -> bool {
        self.inner.prefetches()
    }

    #[inline]
    fn prefetch_key(&mut self, serialized_key: &[u8]) {
        self.inner.prefetch_key(serialized_key)
    }

    fn register_value<V: StateValue, N: Namespace>(
        &mut self,
        d: &ValueStateDescriptor<V, N>,
    ) -> Result<ValueStateId<V, N>> {
        let meta = d.meta();
        let migrates = self.register_common(&meta, |s, uid| d.resolve(s, uid))?;
        let id = self.inner.register_value(d)?;
        self.after_registration(migrates);
        self.add_plain(id.raw(), meta, (&d.value, &d.namespace), None);
        self.replay_value(id, d)?;
        Ok(id)
    }

    fn register_list<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<ListStateId<V, N>> {
        let meta = d.meta();
        let migrates = self.register_common(&meta, |s, uid| d.resolve(s, uid))?;
        let id = self.inner.register_list(d)?;
        self.after_registration(migrates);
        self.add_plain(id.raw(), meta, (&d.element, &d.namespace), None);
        self.replay_list(id, d)?;
        Ok(id)
    }

    fn register_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<MapStateId<UK, UV, N>> {
        let meta = d.meta();
        let migrates = self.register_common(&meta, |s, uid| d.resolve(s, uid))?;
        let id = self.inner.register_map(d)?;
        self.after_registration(migrates);
        let codecs = MapCodecs {
            user_key: d.user_key.clone(),
            value: d.value.clone(),
            namespace: PhantomData::<fn() -> N>,
        };
        self.add_state(
            id.raw(),
            meta,
            Box::new(codecs),
            Box::new(d.namespace.clone()),
            None,
        );
        self.replay_map(id, d)?;
        Ok(id)
    }

    fn register_reducing<V: StateValue, N: Namespace>(
        &mut self,
        d: &ReducingStateDescriptor<V, N>,
    ) -> Result<ReducingStateId<V, N>> {
        let meta = d.meta();
        let migrates = self.register_common(&meta, |s, uid| d.resolve(s, uid))?;
        let id = self.inner.register_reducing(d)?;
        self.after_registration(migrates);
        self.add_plain(id.raw(), meta, (&d.value, &d.namespace), None);
        self.replay_reducing(id, d)?;
        Ok(id)
    }

    fn register_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<AggregatingStateId<IN, ACC, OUT, N>> {
        let meta = d.meta();
        let migrates = self.register_common(&meta, |s, uid| d.resolve(s, uid))?;
        let slot: AccSlot = Arc::new(Mutex::new(None));
        let wrapped = AggregatingStateDescriptor::<AggInput<IN, ACC>, ACC, OUT, N> {
            name: d.name.clone(),
            accumulator: d.accumulator.clone(),
            namespace: d.namespace.clone(),
            function: Arc::new(CapturingAggregate {
                function: d.function.clone(),
                codec: d.accumulator.clone(),
                slot: slot.clone(),
            }),
        };
        let inner_id = self.inner.register_aggregating(&wrapped)?;
        self.after_registration(migrates);
        self.add_plain(
            inner_id.raw(),
            meta,
            (&d.accumulator, &d.namespace),
            Some(slot),
        );
        self.replay_aggregating(inner_id, d)?;
        Ok(AggregatingStateId::new(inner_id.raw()))
    }

    fn value_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        self.inner.value_get(s, ns)
    }

    fn value_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let (w, ()) = self.encode_with(s.raw(), |c: &PlainCodecs<V, N>, out| {
            c.value.encode(&value, out)
        })?;
        self.encode_ns(w, ns)?;
        self.inner.value_update(s, ns, value)?;
        self.log_scratch(w, ChangelogOp::Set, None)
    }

    fn list_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
    ) -> Result<Vec<V>> {
        self.inner.list_get(s, ns)
    }

    fn list_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        let w = self.encode_elements(s, std::slice::from_ref(&value))?;
        self.encode_ns(w, ns)?;
        self.inner.list_add(s, ns, value)?;
        self.log_scratch(w, ChangelogOp::ListAppend, None)
    }

    fn list_add_all<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let w = self.encode_elements(s, &values)?;
        self.encode_ns(w, ns)?;
        let empty = values.is_empty();
        self.inner.list_add_all(s, ns, values)?;
        if empty {
            return Ok(());
        }
        self.log_scratch(w, ChangelogOp::ListAppend, None)
    }

    fn list_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let w = self.encode_elements(s, &values)?;
        self.encode_ns(w, ns)?;
        self.inner.list_update(s, ns, values)?;
        self.log_scratch(w, ChangelogOp::ListSet, None)
    }

    fn map_get<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        self.inner.map_get(s, ns, user_key)
    }

    fn map_put<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        let (w, uk) = self.encode_with(s.raw(), |c: &MapCodecs<UK, UV, N>, out| {
            let uk = c.user_key.encode_to_vec(&user_key)?;
            c.value.encode(&value, out)?;
            Ok(uk)
        })?;
        self.encode_ns(w, ns)?;
        self.inner.map_put(s, ns, user_key, value)?;
        self.log_scratch(w, ChangelogOp::MapPut, Some(&uk))
    }

    fn map_remove<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (w, uk) = self.encode_with(s.raw(), |c: &MapCodecs<UK, UV, N>, _| {
            c.user_key.encode_to_vec(user_key)
        })?;
        self.encode_ns(w, ns)?;
        self.inner.map_remove(s, ns, user_key)?;
        self.log_scratch(w, ChangelogOp::MapRemove, Some(&uk))
    }

    fn map_contains<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        self.inner.map_contains(s, ns, user_key)
    }

    fn map_entries<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        self.inner.map_entries(s, ns)
    }

    fn reducing_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        self.inner.reducing_get(s, ns)
    }

    fn reducing_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        // The types are checked before the change.
        let (w, _) = self.codecs::<PlainCodecs<V, N>>(s.raw())?;
        self.encode_ns(w, ns)?;
        self.inner.reducing_add(s, ns, value)?;
        // Log the reduced value (replay must not need the reduce function's history).
        let reduced = self.inner.reducing_get(s, ns)?;
        let (_, op) = self.encode_with(s.raw(), |c: &PlainCodecs<V, N>, out| match &reduced {
            Some(v) => c.value.encode(v, out).map(|()| ChangelogOp::Set),
            None => Ok(ChangelogOp::Clear),
        })?;
        self.log_scratch(w, op, None)
    }

    fn aggregating_get<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        self.inner.aggregating_get(
            AggregatingStateId::<AggInput<IN, ACC>, ACC, OUT, N>::new(s.raw()),
            ns,
        )
    }

    fn aggregating_add<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
        input: IN,
    ) -> Result<()> {
        let (w, _) = self.codecs::<PlainCodecs<ACC, N>>(s.raw())?;
        let slot = self
            .states
            .get(w)
            .and_then(|s| s.acc_slot.clone())
            .ok_or_else(|| self.type_mismatch(w))?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.encode_ns(w, ns)?;
        self.inner.aggregating_add(
            AggregatingStateId::<AggInput<IN, ACC>, ACC, OUT, N>::new(s.raw()),
            ns,
            AggInput::Add(input),
        )?;
        let captured = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        match captured {
            Some(Ok(bytes)) => self.scratch = bytes,
            Some(Err(e)) => return Err(codec_err(self.state_name(w), e)),
            None => return Err(self.type_mismatch(w)),
        }
        self.log_scratch(w, ChangelogOp::Set, None)
    }

    fn clear<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<()> {
        let w = self.state_index(s)?;
        self.encode_ns(w, ns)?;
        self.inner.clear(s, ns)?;
        self.log_change(w, ChangelogOp::Clear, None, None)
    }

    fn keys<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<Vec<Vec<u8>>> {
        self.inner.keys(s, ns)
    }

    /// The inner backend drops expired entries in the background without a changelog record.
    /// The log may still hold their writes, so a restore (materialized state plus the replayed
    /// log) can bring one back, with the stamp it had: expired, so a read never returns it
    /// (except once under `ReturnExpiredIfNotCleanedUp`) and the next cleanup drops it again.
    fn enable_ttl_cleanup<V: StateValue>(
        &mut self,
        state: RawStateId,
        cleanup: TtlCleanup<V>,
    ) -> Result<()> {
        self.inner.enable_ttl_cleanup(state, cleanup)
    }

    fn snapshot(&mut self, options: SnapshotOptions) -> Result<Box<dyn AsyncSnapshot>> {
        self.take_snapshot(options)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) {
        self.checkpoint_complete(checkpoint_id);
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) {
        self.checkpoint_aborted(checkpoint_id);
    }

    fn restore(&mut self, handles: &[KeyedStateHandle], source: &dyn SnapshotSource) -> Result<()> {
        self.restore_handles(handles, source)
    }
}
