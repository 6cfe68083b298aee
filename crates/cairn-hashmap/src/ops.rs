//! The typed operations of each state kind on a [`StateTable`].
//!
//! Reads never unshare a shard; writes to an existing entry update it in place (one probe,
//! no allocation, unless the shard is still shared with a snapshot). Empty lists and maps
//! are never stored: the entry disappears with its last element.

use std::any::Any;
use std::sync::Arc;

use cairn_core::{AggregateFunction, Namespace, ReduceFn, Result, StateValue, UserKey};
use hashbrown::hash_table::Entry;

use crate::error::{internal, HashMapError};
use crate::state::{codec_error, ListOf, MapOf, Single, StateTable, UserMap};
use crate::table::{find_entry, find_mut, At, Item, Shard, ShardedTable};

fn downcast_func<'a, F: 'static>(
    func: &'a Option<Box<dyn Any + Send + Sync>>,
    state: &str,
) -> Result<&'a F> {
    func.as_ref()
        .and_then(|f| f.downcast_ref::<F>())
        .ok_or_else(|| {
            HashMapError::TypeMismatch {
                state: state.to_string(),
                registered: "another function type",
                requested: std::any::type_name::<F>(),
            }
            .into_state("accessing state")
        })
}

fn shard_mut<'a, N: Namespace, T: Clone>(
    table: &'a mut ShardedTable<N, T>,
    at: &At<'_>,
    ns: &N,
) -> Result<(&'a mut Shard<N, T>, u64)> {
    table
        .shard_mut(at, ns)
        .ok_or_else(|| internal(format!("key group index {} out of range", at.kg_idx)))
}

fn item<N: Clone, T>(at: &At<'_>, ns: &N, value: T) -> Item<N, T> {
    Item {
        key: at.key_bytes(),
        ns: ns.clone(),
        value,
    }
}

impl<N: Namespace, V: StateValue> StateTable<N, Single<V>> {
    #[inline]
    pub(crate) fn get(&self, at: &At<'_>, ns: &N) -> Option<&V> {
        self.table.get(at, ns)
    }

    #[inline]
    pub(crate) fn put(&mut self, at: &At<'_>, ns: &N, value: V) -> Result<()> {
        let (shard, hash) = self.shard_mut(at, ns)?;
        // The common case first: one plain probe, update in place.
        if let Some(v) = find_mut(shard, hash, at, ns) {
            *v = value;
            return Ok(());
        }
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(mut o) => o.get_mut().value = value,
            Entry::Vacant(v) => {
                v.insert(item(at, ns, value));
            }
        }
        Ok(())
    }

    fn func<F: 'static>(&self) -> Result<&F> {
        downcast_func(&self.func, &self.name)
    }

    pub(crate) fn reduce(&mut self, at: &At<'_>, ns: &N, value: V) -> Result<()> {
        let f = downcast_func::<ReduceFn<V>>(&self.func, &self.name)?;
        let (shard, hash) = shard_mut(&mut self.table, at, ns)?;
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(o) => {
                // Take the old value out without cloning it, fold, and put it back.
                let (mut old, vacant) = o.remove();
                old.value = f(old.value, value);
                vacant.insert(old);
            }
            Entry::Vacant(v) => {
                v.insert(item(at, ns, value));
            }
        }
        Ok(())
    }

    pub(crate) fn aggregate_get<IN: 'static, OUT: 'static>(
        &self,
        at: &At<'_>,
        ns: &N,
    ) -> Result<Option<OUT>> {
        let f = self.func::<Arc<dyn AggregateFunction<IN, V, OUT>>>()?;
        Ok(self.table.get(at, ns).map(|acc| f.result(acc)))
    }

    pub(crate) fn aggregate_add<IN: 'static, OUT: 'static>(
        &mut self,
        at: &At<'_>,
        ns: &N,
        input: IN,
    ) -> Result<()> {
        let f = downcast_func::<Arc<dyn AggregateFunction<IN, V, OUT>>>(&self.func, &self.name)?;
        let (shard, hash) = shard_mut(&mut self.table, at, ns)?;
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(mut o) => f.add(&mut o.get_mut().value, input),
            Entry::Vacant(v) => {
                let mut acc = f.create_accumulator();
                f.add(&mut acc, input);
                v.insert(item(at, ns, acc));
            }
        }
        Ok(())
    }
}

impl<N: Namespace, V: StateValue> StateTable<N, ListOf<V>> {
    pub(crate) fn get(&self, at: &At<'_>, ns: &N) -> Vec<V> {
        self.table.get(at, ns).cloned().unwrap_or_default()
    }

    /// Appends `values`; does nothing when `values` is empty.
    pub(crate) fn add_all(
        &mut self,
        at: &At<'_>,
        ns: &N,
        values: impl ExactSizeIterator<Item = V>,
    ) -> Result<()> {
        if values.len() == 0 {
            return Ok(());
        }
        let (shard, hash) = self.shard_mut(at, ns)?;
        if let Some(list) = find_mut(shard, hash, at, ns) {
            list.extend(values);
            return Ok(());
        }
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(mut o) => o.get_mut().value.extend(values),
            Entry::Vacant(v) => {
                v.insert(item(at, ns, values.collect()));
            }
        }
        Ok(())
    }

    pub(crate) fn update(&mut self, at: &At<'_>, ns: &N, values: Vec<V>) -> Result<()> {
        if values.is_empty() {
            self.table.remove(at, ns);
            return Ok(());
        }
        let (shard, hash) = self.shard_mut(at, ns)?;
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(mut o) => o.get_mut().value = values,
            Entry::Vacant(v) => {
                v.insert(item(at, ns, values));
            }
        }
        Ok(())
    }
}

impl<N: Namespace, UK: UserKey, UV: StateValue> StateTable<N, MapOf<UK, UV>> {
    #[inline]
    pub(crate) fn get(&self, at: &At<'_>, ns: &N, user_key: &UK) -> Option<&UV> {
        self.table.get(at, ns).and_then(|m| m.get(user_key))
    }

    pub(crate) fn contains(&self, at: &At<'_>, ns: &N, user_key: &UK) -> bool {
        self.get(at, ns, user_key).is_some()
    }

    #[inline]
    pub(crate) fn put(&mut self, at: &At<'_>, ns: &N, user_key: UK, value: UV) -> Result<()> {
        let (shard, hash) = self.shard_mut(at, ns)?;
        if let Some(m) = find_mut(shard, hash, at, ns) {
            m.insert(user_key, value);
            return Ok(());
        }
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(mut o) => {
                o.get_mut().value.insert(user_key, value);
            }
            Entry::Vacant(v) => {
                let mut m = UserMap::default();
                m.insert(user_key, value);
                v.insert(item(at, ns, m));
            }
        }
        Ok(())
    }

    /// Removes `user_key`, and the entry with its last user key. Returns whether anything
    /// was removed (nothing is unshared otherwise).
    pub(crate) fn remove(&mut self, at: &At<'_>, ns: &N, user_key: &UK) -> Result<bool> {
        if self.get(at, ns, user_key).is_none() {
            return Ok(false);
        }
        let (shard, hash) = self.shard_mut(at, ns)?;
        if let Entry::Occupied(mut o) = find_entry(shard, hash, at, ns) {
            o.get_mut().value.remove(user_key);
            if o.get().value.is_empty() {
                o.remove();
            }
        }
        Ok(true)
    }

    /// Every entry, sorted by the user key's encoding.
    pub(crate) fn entries(&self, at: &At<'_>, ns: &N) -> Result<Vec<(UK, UV)>> {
        let Some(m) = self.table.get(at, ns) else {
            return Ok(Vec::new());
        };
        let mut encoded = Vec::with_capacity(m.len());
        for (k, v) in m {
            let bytes = self
                .layout
                .user_key
                .encode_to_vec(k)
                .map_err(codec_error(&self.name))?;
            encoded.push((bytes, k, v));
        }
        encoded.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(encoded
            .into_iter()
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
