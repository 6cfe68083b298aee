//! The [`KeyedStateBackend`] implementation of [`RocksDbBackend`].

use std::sync::Arc;

use cairn_core::*;
use rocksdb::WriteBatch;

use crate::backend::{RocksDbBackend, STATE_PREFIX_LEN};
use crate::layout::{decode_key, kg_bound, list_elements, prefix_end, push_list_element};
use crate::migrate::Evolution;
use crate::state::{
    codec_error, decode, no_value_encoder, ns_encoder, type_mismatch, value_encoder, Agg, ListOf,
    MapOf, Single,
};

/// The converter of a migration (`migrate.rs`) for values of `codec`: decodes a stored
/// value (list element, map value, accumulator) of an older identity with
/// [`Codec::decode_from`] and encodes it again. A state with a TTL has a `TtlCodec` here,
/// which keeps each value's stamp.
pub(crate) fn converter<V: 'static>(
    codec: &CodecRef<V>,
) -> impl Fn(&CodecIdentity, &[u8], &mut Vec<u8>) -> std::result::Result<(), CodecError> + '_ {
    move |stored, bytes, out| {
        let value = codec.decode_from(stored, bytes)?;
        codec.encode(&value, out)
    }
}

impl RocksDbBackend {
    /// Builds the current key's cache key for state `idx` in `self.scratch` and returns it,
    /// encoding the namespace with the codec `ns_codec` picks from the state's typed part
    /// `T`. The codec is borrowed, not cloned: a reference count per access is a locked
    /// instruction pair on the hot path.
    #[inline]
    fn key_for<T: 'static, N: 'static>(
        &mut self,
        idx: usize,
        ns_codec: fn(&T) -> &CodecRef<N>,
        ns: &N,
    ) -> Result<Vec<u8>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let built = self.typed::<T>(idx).and_then(|t| {
            let name = self.state_name(idx);
            Self::build_key(&mut scratch, &self.current, idx, |out| {
                ns_codec(t).encode(ns, out).map_err(codec_error(name))
            })
        });
        match built {
            Ok(()) => Ok(scratch),
            Err(e) => {
                self.scratch = scratch;
                Err(e)
            }
        }
    }

    /// [`Self::key_for`] for a state whose entries are cached whole (value, reducing,
    /// aggregating), noting the access for prefetch hints.
    #[inline]
    fn cached_key_for<T: 'static, N: 'static>(
        &mut self,
        idx: usize,
        ns_codec: fn(&T) -> &CodecRef<N>,
        ns: &N,
    ) -> Result<Vec<u8>> {
        let key = self.key_for(idx, ns_codec, ns)?;
        let ns_start = STATE_PREFIX_LEN + self.current.prefix.len();
        self.recent.note::<N>(idx, &key, ns_start);
        Ok(key)
    }

    /// Builds the current key's cache key with the untyped namespace encoder.
    fn key_untyped<N: 'static>(&mut self, idx: usize, ns: &N) -> Result<Vec<u8>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self
            .states
            .get(idx)
            .ok_or_else(|| StateError::UnknownState { index: idx as u32 })?;
        Self::build_key(&mut scratch, &self.current, idx, |out| {
            (r.encode_ns)(ns, out)
        })?;
        Ok(scratch)
    }

    fn single_get<V: StateValue, N: Namespace>(
        &mut self,
        id: RawStateId,
        kind: StateKind,
        ns: &N,
    ) -> Result<Option<V>> {
        let idx = self.check(id, Some(kind))?;
        let key = self.cached_key_for(idx, |t: &Single<V, N>| &t.ns, ns)?;
        let out = self.read(idx, &key, |t: &Single<V, N>| &t.value);
        self.scratch = key;
        out
    }

    fn single_modify<V: StateValue, N: Namespace>(
        &mut self,
        id: RawStateId,
        kind: StateKind,
        ns: &N,
        blind: bool,
        f: impl FnOnce(&mut Option<V>, Option<&ReduceFn<V>>) -> Result<()>,
    ) -> Result<()> {
        let idx = self.check(id, Some(kind))?;
        // Value states have no reduce function, so this clones nothing for them.
        let reduce = self.typed::<Single<V, N>>(idx)?.reduce.clone();
        let key = self.cached_key_for(idx, |t: &Single<V, N>| &t.ns, ns)?;
        let out = self.modify(
            idx,
            &key,
            blind,
            |t: &Single<V, N>| &t.value,
            |v| f(v, reduce.as_ref()),
        );
        self.scratch = key;
        out
    }

    /// Map entry key: the current key's cache key plus the raw user key.
    fn map_key<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        id: RawStateId,
        ns: &N,
        user_key: &UK,
    ) -> Result<(usize, Vec<u8>)> {
        let idx = self.check(id, Some(StateKind::Map))?;
        let mut key = self.key_for(idx, |t: &MapOf<UK, UV, N>| &t.ns, ns)?;
        let encoded = self.typed::<MapOf<UK, UV, N>>(idx).and_then(|t| {
            t.user_key
                .encode(user_key, &mut key)
                .map_err(codec_error(self.state_name(idx)))
        });
        match encoded {
            Ok(()) => Ok((idx, key)),
            Err(e) => {
                self.scratch = key;
                Err(e)
            }
        }
    }

    /// Puts (`Some`) or removes (`None`) the map entry `user_key` of the current key.
    fn map_set<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
        value: Option<UV>,
    ) -> Result<()> {
        let (idx, key) = self.map_key::<UK, UV, N>(s.raw(), ns, user_key)?;
        let out = self.modify(
            idx,
            &key,
            true,
            |t: &MapOf<UK, UV, N>| &t.value,
            |v| {
                *v = value;
                Ok(())
            },
        );
        self.scratch = key;
        out
    }

    /// The stored list under the current key.
    fn list_raw<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
    ) -> Result<(usize, CodecRef<V>, Vec<u8>)> {
        let idx = self.check(s.raw(), Some(StateKind::List))?;
        let codec = self.typed::<ListOf<V, N>>(idx)?.element.clone();
        let key = self.key_for(idx, |t: &ListOf<V, N>| &t.ns, ns)?;
        Ok((idx, codec, key))
    }

    fn list_append<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: &[V],
        replace: bool,
    ) -> Result<()> {
        let (idx, codec, key) = self.list_raw(s, ns)?;
        let name = self.state_name(idx).to_string();
        let mut stored = Vec::new();
        let mut element = Vec::new();
        for v in values {
            element.clear();
            codec.encode(v, &mut element).map_err(codec_error(&name))?;
            push_list_element(&mut stored, &element);
        }
        if let Err(e) = self.settle() {
            self.scratch = key;
            return Err(e);
        }
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let inst = self.inst()?;
        let out = match (replace, values.is_empty()) {
            (true, true) => inst.delete(&name, raw),
            (true, false) => inst.put(&name, raw, &stored),
            (false, true) => Ok(()),
            (false, false) => inst.merge(&name, raw, &stored),
        };
        self.scratch = key;
        out
    }

    /// Deletes every map entry of the current key in the namespace of `key`: writes the
    /// cache back, then deletes the entries found in RocksDB, and those the cache could not
    /// write, in one batch and forgets their cached values (cost: the map's size, not the
    /// cache's).
    fn clear_map(&mut self, idx: usize, key: &[u8]) -> Result<()> {
        self.flush_cache()?;
        let name = self.state_name(idx).to_string();
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let mut found: Vec<Vec<u8>> = self.unwritten(idx, raw).map(|(k, _)| k.to_vec()).collect();
        let inst = self.inst()?;
        let mut batch = WriteBatch::default();
        let cf = inst.cf(&name)?;
        for k in &found {
            batch.delete_cf(cf, k);
        }
        inst.scan(&name, raw, &prefix_end(raw), |k, _| {
            batch.delete_cf(cf, k);
            found.push(k.to_vec());
            Ok(())
        })?;
        inst.write(batch)?;
        let mut cache_key = key.get(..STATE_PREFIX_LEN).unwrap_or(&[]).to_vec();
        for k in found {
            cache_key.truncate(STATE_PREFIX_LEN);
            cache_key.extend_from_slice(&k);
            self.cache.forget(&cache_key);
            self.spill.kill(&cache_key);
        }
        Ok(())
    }
}

impl KeyedStateBackend for RocksDbBackend {
    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    fn set_current_key(&mut self, serialized_key: &[u8]) -> Result<()> {
        let kg = key_group_for_key(serialized_key, self.max_parallelism);
        if !self.range.contains(kg) {
            self.current.set = false;
            return Err(StateError::KeyGroupOutOfRange {
                key_group: kg,
                range: self.range,
            });
        }
        self.recent.next_key(&self.cache);
        let c = &mut self.current;
        c.bytes.clear();
        c.bytes.extend_from_slice(serialized_key);
        c.kg = kg;
        Self::set_prefix(c);
        c.set = true;
        Ok(())
    }

    fn prefetches(&self) -> bool {
        self.cache.enabled()
    }

    /// Notes where `serialized_key`'s entries in the states the last key used would be
    /// found in the cache (value, reducing and aggregating states with a zero-sized
    /// namespace; `prefetch.rs`); the next `set_current_key` touches every slot noted since
    /// the last one, together.
    #[inline]
    fn prefetch_key(&mut self, serialized_key: &[u8]) {
        let kg = key_group_for_key(serialized_key, self.max_parallelism);
        if self.range.contains(kg) && self.cache.enabled() {
            self.recent.hint(kg, serialized_key);
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
        let typed = Single {
            ns: d.namespace.clone(),
            value: d.value.clone(),
            reduce: None,
        };
        self.register(
            d.meta(),
            Box::new(typed),
            std::any::type_name::<Single<V, N>>(),
            std::any::TypeId::of::<V>(),
            ns_encoder(&d.name, d.namespace.clone()),
            value_encoder(&d.name, d.value.clone()),
            Evolution {
                resolve: &|stored, uid| d.resolve(stored, uid),
                convert: &converter(&d.value),
            },
        )
        .map(ValueStateId::new)
    }

    fn register_list<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<ListStateId<V, N>> {
        let typed = ListOf {
            ns: d.namespace.clone(),
            element: d.element.clone(),
        };
        self.register(
            d.meta(),
            Box::new(typed),
            std::any::type_name::<ListOf<V, N>>(),
            std::any::TypeId::of::<V>(),
            ns_encoder(&d.name, d.namespace.clone()),
            no_value_encoder(&d.name),
            Evolution {
                resolve: &|stored, uid| d.resolve(stored, uid),
                convert: &converter(&d.element),
            },
        )
        .map(ListStateId::new)
    }

    fn register_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<MapStateId<UK, UV, N>> {
        let typed = MapOf {
            ns: d.namespace.clone(),
            user_key: d.user_key.clone(),
            value: d.value.clone(),
        };
        self.register(
            d.meta(),
            Box::new(typed),
            std::any::type_name::<MapOf<UK, UV, N>>(),
            std::any::TypeId::of::<UV>(),
            ns_encoder(&d.name, d.namespace.clone()),
            value_encoder(&d.name, d.value.clone()),
            Evolution {
                resolve: &|stored, uid| d.resolve(stored, uid),
                convert: &converter(&d.value),
            },
        )
        .map(MapStateId::new)
    }

    fn register_reducing<V: StateValue, N: Namespace>(
        &mut self,
        d: &ReducingStateDescriptor<V, N>,
    ) -> Result<ReducingStateId<V, N>> {
        let typed = Single {
            ns: d.namespace.clone(),
            value: d.value.clone(),
            reduce: Some(d.reduce.clone()),
        };
        self.register(
            d.meta(),
            Box::new(typed),
            std::any::type_name::<Single<V, N>>(),
            std::any::TypeId::of::<V>(),
            ns_encoder(&d.name, d.namespace.clone()),
            value_encoder(&d.name, d.value.clone()),
            Evolution {
                resolve: &|stored, uid| d.resolve(stored, uid),
                convert: &converter(&d.value),
            },
        )
        .map(ReducingStateId::new)
    }

    fn register_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<AggregatingStateId<IN, ACC, OUT, N>> {
        let typed: Agg<IN, ACC, OUT, N> = Agg {
            ns: d.namespace.clone(),
            acc: d.accumulator.clone(),
            func: d.function.clone(),
        };
        self.register(
            d.meta(),
            Box::new(typed),
            std::any::type_name::<Agg<IN, ACC, OUT, N>>(),
            std::any::TypeId::of::<ACC>(),
            ns_encoder(&d.name, d.namespace.clone()),
            value_encoder(&d.name, d.accumulator.clone()),
            Evolution {
                resolve: &|stored, uid| d.resolve(stored, uid),
                convert: &converter(&d.accumulator),
            },
        )
        .map(AggregatingStateId::new)
    }

    fn value_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        self.single_get(s.raw(), StateKind::Value, ns)
    }

    fn value_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ValueStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        self.single_modify(s.raw(), StateKind::Value, ns, true, |v, _| {
            *v = Some(value);
            Ok(())
        })
    }

    fn list_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
    ) -> Result<Vec<V>> {
        let (idx, codec, key) = self.list_raw(s, ns)?;
        let name = self.state_name(idx);
        let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
        let out = self
            .inst()?
            .get(name, raw, |stored| {
                let elements = list_elements(stored).ok_or_else(|| {
                    StateError::layer(
                        format!("reading list state={name}"),
                        "malformed stored list value",
                    )
                })?;
                elements
                    .into_iter()
                    .map(|e| decode(&*codec, name, e))
                    .collect()
            })
            .map(Option::unwrap_or_default);
        self.scratch = key;
        out
    }

    fn list_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        self.list_append(s, ns, std::slice::from_ref(&value), false)
    }

    fn list_add_all<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        self.list_append(s, ns, &values, false)
    }

    fn list_update<V: StateValue, N: Namespace>(
        &mut self,
        s: ListStateId<V, N>,
        ns: &N,
        values: Vec<V>,
    ) -> Result<()> {
        self.list_append(s, ns, &values, true)
    }

    fn map_get<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<Option<UV>> {
        let (idx, key) = self.map_key::<UK, UV, N>(s.raw(), ns, user_key)?;
        let out = self.read(idx, &key, |t: &MapOf<UK, UV, N>| &t.value);
        self.scratch = key;
        out
    }

    fn map_put<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: UK,
        value: UV,
    ) -> Result<()> {
        self.map_set(s, ns, &user_key, Some(value))
    }

    fn map_remove<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<()> {
        self.map_set(s, ns, user_key, None)
    }

    fn map_contains<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
        user_key: &UK,
    ) -> Result<bool> {
        self.map_get(s, ns, user_key).map(|v| v.is_some())
    }

    fn map_entries<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        s: MapStateId<UK, UV, N>,
        ns: &N,
    ) -> Result<Vec<(UK, UV)>> {
        let idx = self.check(s.raw(), Some(StateKind::Map))?;
        let t = self.typed::<MapOf<UK, UV, N>>(idx)?;
        let (uk_codec, codec) = (t.user_key.clone(), t.value.clone());
        let key = self.key_for(idx, |t: &MapOf<UK, UV, N>| &t.ns, ns)?;
        let result = self.flush_cache().and_then(|()| {
            let name = self.state_name(idx);
            let raw = key.get(STATE_PREFIX_LEN..).unwrap_or(&[]);
            // Entries the flush could not write (rare): user key → cached value.
            let mut unwritten: Vec<(&[u8], Option<&UV>)> = Vec::new();
            for (k, v) in self.unwritten(idx, raw) {
                let v = match v {
                    Some(v) => v
                        .downcast_ref::<Option<UV>>()
                        .ok_or_else(|| type_mismatch(name, std::any::type_name::<UV>()))?
                        .as_ref(),
                    None => None,
                };
                unwritten.push((k.get(raw.len()..).unwrap_or(&[]), v));
            }
            unwritten.sort_unstable_by_key(|u| u.0);
            let mut out = Vec::new();
            // With unwritten entries: the user key of each entry of `out`, to merge them in.
            let mut user_keys: Vec<Vec<u8>> = Vec::new();
            self.inst()?.scan(name, raw, &prefix_end(raw), |k, v| {
                let uk = k.get(raw.len()..).unwrap_or(&[]);
                if !unwritten.is_empty() {
                    if unwritten.binary_search_by_key(&uk, |u| u.0).is_ok() {
                        return Ok(());
                    }
                    user_keys.push(uk.to_vec());
                }
                out.push((decode(&*uk_codec, name, uk)?, decode(&*codec, name, v)?));
                Ok(())
            })?;
            if unwritten.is_empty() {
                return Ok(out);
            }
            for (uk, v) in unwritten {
                if let Some(v) = v {
                    out.push((decode(&*uk_codec, name, uk)?, v.clone()));
                    user_keys.push(uk.to_vec());
                }
            }
            // Sorted by the user key's encoding, as RocksDB returns them.
            let mut merged: Vec<_> = user_keys.into_iter().zip(out).collect();
            merged.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            Ok(merged.into_iter().map(|(_, e)| e).collect())
        });
        self.scratch = key;
        result
    }

    fn reducing_get<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
    ) -> Result<Option<V>> {
        self.single_get(s.raw(), StateKind::Reducing, ns)
    }

    fn reducing_add<V: StateValue, N: Namespace>(
        &mut self,
        s: ReducingStateId<V, N>,
        ns: &N,
        value: V,
    ) -> Result<()> {
        self.single_modify(s.raw(), StateKind::Reducing, ns, false, |v, reduce| {
            *v = Some(match (v.take(), reduce) {
                (Some(old), Some(r)) => r(old, value),
                _ => value,
            });
            Ok(())
        })
    }

    fn aggregating_get<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        let idx = self.check(s.raw(), Some(StateKind::Aggregating))?;
        let func = self.typed::<Agg<IN, ACC, OUT, N>>(idx)?.func.clone();
        let key = self.cached_key_for(idx, |t: &Agg<IN, ACC, OUT, N>| &t.ns, ns)?;
        let out = self.read(idx, &key, |t: &Agg<IN, ACC, OUT, N>| &t.acc);
        self.scratch = key;
        Ok(out?.map(|acc| func.result(&acc)))
    }

    fn aggregating_add<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        s: AggregatingStateId<IN, ACC, OUT, N>,
        ns: &N,
        input: IN,
    ) -> Result<()> {
        let idx = self.check(s.raw(), Some(StateKind::Aggregating))?;
        let func: Arc<dyn AggregateFunction<IN, ACC, OUT>> =
            self.typed::<Agg<IN, ACC, OUT, N>>(idx)?.func.clone();
        let key = self.cached_key_for(idx, |t: &Agg<IN, ACC, OUT, N>| &t.ns, ns)?;
        let out = self.modify(
            idx,
            &key,
            false,
            |t: &Agg<IN, ACC, OUT, N>| &t.acc,
            |acc| {
                let a = acc.get_or_insert_with(|| func.create_accumulator());
                func.add(a, input);
                Ok(())
            },
        );
        self.scratch = key;
        out
    }

    /// Drops the state's expired entries in RocksDB compactions (`ttl.rs`).
    fn enable_ttl_cleanup<V: StateValue>(
        &mut self,
        state: RawStateId,
        cleanup: TtlCleanup<V>,
    ) -> Result<()> {
        self.enable_ttl(state, cleanup)
    }

    fn clear<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<()> {
        let idx = self.check(s, None)?;
        let key = self.key_untyped(idx, ns)?;
        let out = match s.kind {
            StateKind::Map => self.clear_map(idx, &key),
            StateKind::List => self.settle().and_then(|()| {
                let name = self.state_name(idx);
                self.inst()?
                    .delete(name, key.get(STATE_PREFIX_LEN..).unwrap_or(&[]))
            }),
            _ => self.delete_untyped(idx, &key),
        };
        self.scratch = key;
        out
    }

    fn keys<N: Namespace>(&mut self, s: RawStateId, ns: &N) -> Result<Vec<Vec<u8>>> {
        let idx = self
            .states
            .get(s.index as usize)
            .filter(|r| r.meta.kind == s.kind)
            .map(|_| s.index as usize)
            .ok_or(StateError::UnknownState { index: s.index })?;
        let mut want = Vec::new();
        (self.states[idx].encode_ns)(ns, &mut want)?;
        self.flush_cache()?;
        let name = self.state_name(idx);
        // The keys of entries the flush could not write: each holds a value.
        let mut out: Vec<Vec<u8>> = self
            .unwritten(idx, &[])
            .filter_map(|(k, _)| decode_key(k))
            .filter(|d| d.namespace == want)
            .map(|d| d.key)
            .collect();
        self.inst()?.scan(
            name,
            &kg_bound(self.range.start),
            &kg_bound(self.range.end),
            |k, _| {
                let d = decode_key(k).ok_or_else(|| {
                    StateError::layer(format!("listing keys state={name}"), "malformed key")
                })?;
                if d.namespace == want && out.last() != Some(&d.key) {
                    out.push(d.key);
                }
                Ok(())
            },
        )?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn snapshot(&mut self, options: SnapshotOptions) -> Result<Box<dyn AsyncSnapshot>> {
        crate::snapshot::take(self, options)
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) {
        self.inc.complete(checkpoint_id);
    }

    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) {
        self.inc.abort(checkpoint_id);
    }

    fn restore(&mut self, handles: &[KeyedStateHandle], source: &dyn SnapshotSource) -> Result<()> {
        self.settle()?;
        crate::restore::restore(self, handles, source)
    }
}
