//! The [`KeyedStateBackend`] implementation: every call is delegated to the wrapped backend;
//! every successful mutation is then logged as bytes.

use std::sync::{Arc, Mutex};

use cairn_core::*;
use cairn_format::{encode_list, ChangelogOp};

use crate::backend::ChangelogBackend;

/// Codecs of value, list, reducing and aggregating states.
pub(crate) struct Codecs2<A, N> {
    pub(crate) value: CodecRef<A>,
    pub(crate) namespace: CodecRef<N>,
}

/// Codecs of map states.
pub(crate) struct MapCodecs<UK, UV, N> {
    pub(crate) user_key: CodecRef<UK>,
    pub(crate) value: CodecRef<UV>,
    pub(crate) namespace: CodecRef<N>,
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

    /// Encodes `ns` into `scratch_ns`.
    fn encode_ns<N: 'static>(&mut self, codec: &CodecRef<N>, ns: &N, w: usize) -> Result<()> {
        self.scratch_ns.clear();
        codec
            .encode(ns, &mut self.scratch_ns)
            .map_err(|e| codec_err(self.state_name(w), e))
    }

    /// Encodes `value` into `scratch` and `ns` into `scratch_ns` with the codecs of state
    /// `raw`, borrowed (the hot path of a value update: no reference counting per change);
    /// returns the state's index.
    fn encode_value_ns<V: 'static, N: 'static>(
        &mut self,
        raw: RawStateId,
        value: &V,
        ns: &N,
    ) -> Result<usize> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut scratch_ns = std::mem::take(&mut self.scratch_ns);
        scratch.clear();
        scratch_ns.clear();
        let r = self.codecs::<Codecs2<V, N>>(raw).and_then(|(w, c)| {
            c.value
                .encode(value, &mut scratch)
                .and_then(|()| c.namespace.encode(ns, &mut scratch_ns))
                .map_err(|e| codec_err(self.state_name(w), e))?;
            Ok(w)
        });
        self.scratch = scratch;
        self.scratch_ns = scratch_ns;
        r
    }

    fn state_name(&self, w: usize) -> &str {
        self.states
            .get(w)
            .map(|s| s.meta.name.as_str())
            .unwrap_or("")
    }

    /// Encodes `values` as a list value into `scratch`.
    fn encode_elements<V: 'static>(
        &mut self,
        codec: &CodecRef<V>,
        values: &[V],
        w: usize,
    ) -> Result<()> {
        let mut parts = Vec::with_capacity(values.len());
        for v in values {
            parts.push(
                codec
                    .encode_to_vec(v)
                    .map_err(|e| codec_err(self.state_name(w), e))?,
            );
        }
        self.scratch.clear();
        encode_list(parts.iter().map(Vec::as_slice), &mut self.scratch);
        Ok(())
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
        let codecs = Codecs2 {
            value: value.clone(),
            namespace: namespace.clone(),
        };
        let ns_codec = Box::new(namespace.clone());
        self.add_state(raw, meta, Box::new(codecs), ns_codec, acc_slot);
    }

    fn register_common(&mut self, meta: &StateMeta) -> Result<()> {
        if let Some(stored) = self.restored_metas.get(&meta.name) {
            stored.check_compatible(meta, &self.config.uid, true)?;
        }
        Ok(())
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
        self.register_common(&meta)?;
        let id = self.inner.register_value(d)?;
        self.add_plain(id.raw(), meta, (&d.value, &d.namespace), None);
        self.replay_value(id, d)?;
        Ok(id)
    }

    fn register_list<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<ListStateId<V, N>> {
        let meta = d.meta();
        self.register_common(&meta)?;
        let id = self.inner.register_list(d)?;
        self.add_plain(id.raw(), meta, (&d.element, &d.namespace), None);
        self.replay_list(id, d)?;
        Ok(id)
    }

    fn register_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<MapStateId<UK, UV, N>> {
        let meta = d.meta();
        self.register_common(&meta)?;
        let id = self.inner.register_map(d)?;
        let codecs = MapCodecs {
            user_key: d.user_key.clone(),
            value: d.value.clone(),
            namespace: d.namespace.clone(),
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
        self.register_common(&meta)?;
        let id = self.inner.register_reducing(d)?;
        self.add_plain(id.raw(), meta, (&d.value, &d.namespace), None);
        self.replay_reducing(id, d)?;
        Ok(id)
    }

    fn register_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<AggregatingStateId<IN, ACC, OUT, N>> {
        let meta = d.meta();
        self.register_common(&meta)?;
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
        let w = self.encode_value_ns(s.raw(), &value, ns)?;
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
        let (w, c) = self.codecs::<Codecs2<V, N>>(s.raw())?;
        let (vc, nc) = (c.value.clone(), c.namespace.clone());
        self.encode_elements(&vc, std::slice::from_ref(&value), w)?;
        self.inner.list_add(s, ns, value)?;
        self.encode_ns(&nc, ns, w)?;
        self.log_scratch(w, ChangelogOp::ListAppend, None)
    }

    fn list_add_all<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let (w, c) = self.codecs::<Codecs2<V, N>>(s.raw())?;
        let (vc, nc) = (c.value.clone(), c.namespace.clone());
        self.encode_elements(&vc, &values, w)?;
        let empty = values.is_empty();
        self.inner.list_add_all(s, ns, values)?;
        if empty {
            return Ok(());
        }
        self.encode_ns(&nc, ns, w)?;
        self.log_scratch(w, ChangelogOp::ListAppend, None)
    }

    fn list_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        let (w, c) = self.codecs::<Codecs2<V, N>>(s.raw())?;
        let (vc, nc) = (c.value.clone(), c.namespace.clone());
        self.encode_elements(&vc, &values, w)?;
        self.inner.list_update(s, ns, values)?;
        self.encode_ns(&nc, ns, w)?;
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
        let (w, c) = self.codecs::<MapCodecs<UK, UV, N>>(s.raw())?;
        let (kc, vc, nc) = (c.user_key.clone(), c.value.clone(), c.namespace.clone());
        let uk = kc
            .encode_to_vec(&user_key)
            .map_err(|e| codec_err(self.state_name(w), e))?;
        self.scratch.clear();
        vc.encode(&value, &mut self.scratch)
            .map_err(|e| codec_err(self.state_name(w), e))?;
        self.inner.map_put(s, ns, user_key, value)?;
        self.encode_ns(&nc, ns, w)?;
        self.log_scratch(w, ChangelogOp::MapPut, Some(&uk))
    }

    fn map_remove<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        let (w, c) = self.codecs::<MapCodecs<UK, UV, N>>(s.raw())?;
        let (kc, nc) = (c.user_key.clone(), c.namespace.clone());
        let uk = kc
            .encode_to_vec(user_key)
            .map_err(|e| codec_err(self.state_name(w), e))?;
        self.inner.map_remove(s, ns, user_key)?;
        self.encode_ns(&nc, ns, w)?;
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
        let (w, c) = self.codecs::<Codecs2<V, N>>(s.raw())?;
        let (vc, nc) = (c.value.clone(), c.namespace.clone());
        self.inner.reducing_add(s, ns, value)?;
        // Log the reduced value (replay must not need the reduce function's history).
        let reduced = self.inner.reducing_get(s, ns)?;
        self.scratch.clear();
        if let Some(v) = &reduced {
            vc.encode(v, &mut self.scratch)
                .map_err(|e| codec_err(self.state_name(w), e))?;
        }
        self.encode_ns(&nc, ns, w)?;
        let op = if reduced.is_some() {
            ChangelogOp::Set
        } else {
            ChangelogOp::Clear
        };
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
        let (w, c) = self.codecs::<Codecs2<ACC, N>>(s.raw())?;
        let nc = c.namespace.clone();
        let slot = self
            .states
            .get(w)
            .and_then(|s| s.acc_slot.clone())
            .ok_or_else(|| self.type_mismatch(w))?;
        slot.lock().unwrap_or_else(|p| p.into_inner()).take();
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
        self.encode_ns(&nc, ns, w)?;
        self.log_scratch(w, ChangelogOp::Set, None)
    }

    fn clear<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<()> {
        let w = self.state_index(s)?;
        self.inner.clear(s, ns)?;
        // `clear` knows the namespace type only: use the namespace codec kept on its own.
        let encoded = self
            .states
            .get(w)
            .and_then(|st| st.ns_codec.downcast_ref::<CodecRef<N>>())
            .map(|c| c.encode_to_vec(ns));
        match encoded {
            Some(Ok(bytes)) => self.scratch_ns = bytes,
            Some(Err(e)) => return Err(codec_err(self.state_name(w), e)),
            None => return Err(self.type_mismatch(w)),
        }
        self.log_change(w, ChangelogOp::Clear, None, None)
    }

    fn keys<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<Vec<Vec<u8>>> {
        self.inner.keys(s, ns)
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
