//! What [`cairn_core::KeyedStateBackend::prefetch_key`] touches: the cache slots where the
//! entries of an upcoming key would start their probe, in the states the last key used.
//!
//! Only value, reducing and aggregating states with a zero-sized namespace (the void
//! namespace of state that is not windowed) take part: their cache key follows from the key
//! alone (`state u32 BE | key group u16 BE | esc(key) | esc(namespace)`, with the same
//! namespace bytes every time), while a windowed state's next namespace is not known ahead.

use cairn_core::{KeyGroup, PrefetchHints};

use crate::cache::Cache;
use crate::layout::{push_escaped, push_kg};

#[derive(Debug, Default)]
pub(crate) struct Recent {
    /// The states recent keys used, and the hashes of the cache keys hinted at since the
    /// current key was set.
    hints: PrefetchHints<u32>,
    /// Per state index: the escaped namespace that ends its cache keys, once seen (empty:
    /// not seen yet, or not a zero-sized namespace).
    void_ns: Vec<Vec<u8>>,
    /// Scratch for the cache keys a hint builds.
    key: Vec<u8>,
}

impl Recent {
    /// Notes an access of state `idx` through the cache key `key`, whose namespace part
    /// starts at `ns_start`; only a zero-sized namespace type `N` counts.
    #[inline]
    pub(crate) fn note<N>(&mut self, idx: usize, key: &[u8], ns_start: usize) {
        if std::mem::size_of::<N>() != 0 || idx as u32 >= PrefetchHints::<u32>::MAX_STATES {
            return;
        }
        if self.void_ns.get(idx).is_none_or(Vec::is_empty) {
            self.learn(idx, key.get(ns_start..).unwrap_or(&[]));
        }
        self.hints.note(idx as u32);
    }

    #[cold]
    fn learn(&mut self, idx: usize, ns: &[u8]) {
        if self.void_ns.len() <= idx {
            self.void_ns.resize(idx + 1, Vec::new());
        }
        if let Some(slot) = self.void_ns.get_mut(idx) {
            *slot = ns.to_vec();
        }
    }

    /// Notes the cache keys of `serialized_key`'s entries (in key group `kg`) in the states
    /// the last key used, to be touched by the next [`Self::next_key`].
    #[inline]
    pub(crate) fn hint(&mut self, kg: KeyGroup, serialized_key: &[u8]) {
        let states = self.hints.states();
        if states.is_empty() {
            return;
        }
        let Self {
            void_ns,
            key,
            hints,
        } = self;
        key.clear();
        key.extend_from_slice(&[0; 4]);
        push_kg(key, kg);
        push_escaped(key, serialized_key);
        let ns_start = key.len();
        for idx in states {
            let Some(ns) = void_ns.get(idx as usize).filter(|ns| !ns.is_empty()) else {
                continue;
            };
            key.truncate(ns_start);
            key.extend_from_slice(ns);
            if let Some(state) = key.get_mut(..4) {
                state.copy_from_slice(&idx.to_be_bytes());
            }
            hints.push(Cache::hash(key));
        }
    }

    /// A new current key: touches the home slots of the hinted keys, one after another
    /// without other work in between, so that their cache misses overlap; what the last
    /// key used becomes what later hints touch.
    #[inline]
    pub(crate) fn next_key(&mut self, cache: &Cache) {
        if !self.hints.pending().is_empty() {
            cache.touch(self.hints.pending());
        }
        self.hints.next_key();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::*;

    use crate::backend::CurrentKey;
    use crate::cache::Cache;
    use crate::test_support::u64_backend;
    use crate::RocksDbBackend;

    fn backend(dir: &std::path::Path, cache_capacity: usize) -> RocksDbBackend {
        u64_backend(dir, KeyGroupRange::new(0, 64), cache_capacity)
    }

    fn key(k: u64) -> Vec<u8> {
        BincodeCodec::<u64>::new().encode_to_vec(&k).unwrap()
    }

    /// A key of the backend's range (0..=63) or not.
    fn key_where(owned: bool) -> Vec<u8> {
        (0u64..)
            .map(key)
            .find(|k| (key_group_for_key(k, 128) <= 63) == owned)
            .unwrap()
    }

    /// The cache key the backend itself builds for `serialized` in state `idx` (void
    /// namespace, which bincode encodes as no bytes).
    fn cache_key(idx: usize, serialized: &[u8]) -> Vec<u8> {
        let mut current = CurrentKey {
            set: true,
            bytes: serialized.to_vec(),
            kg: key_group_for_key(serialized, 128),
            prefix: Vec::new(),
        };
        RocksDbBackend::set_prefix(&mut current);
        let mut out = Vec::new();
        RocksDbBackend::build_key(&mut out, &current, idx, |_| Ok(())).unwrap();
        out
    }

    /// A hint notes the home slot of exactly the cache keys the next key's accesses will
    /// look up: the states the last key used, with a void namespace, and no other.
    #[test]
    fn hints_target_the_cache_keys_of_the_states_the_last_key_used() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend(dir.path(), 1024);
        let count = b
            .register_value(&ValueStateDescriptor::<u64>::new("count"))
            .unwrap();
        let unused = b
            .register_value(&ValueStateDescriptor::<u64>::new("unused"))
            .unwrap();
        let windowed = b
            .register_value(
                &ValueStateDescriptor::<u64>::new("windowed")
                    .with_namespace(Arc::new(BincodeCodec::<u32>::new())),
            )
            .unwrap();
        let list = b
            .register_list(&ListStateDescriptor::<u64>::new("list"))
            .unwrap();
        assert!(b.prefetches());

        // Nothing used yet: nothing to touch.
        let (k1, k2) = (key_where(true), key(999));
        b.prefetch_key(&k1);
        assert!(b.recent.hints.pending().is_empty());

        b.set_current_key(&k1).unwrap();
        b.value_update(count, &(), 1).unwrap();
        b.value_update(windowed, &7, 1).unwrap();
        b.list_add(list, &(), 1).unwrap();
        let k2 = if b.key_group_range().contains(key_group_for_key(&k2, 128)) {
            k2
        } else {
            k1.clone()
        };
        b.prefetch_key(&k2);
        let expected = vec![Cache::hash(&cache_key(count.raw().index as usize, &k2))];
        assert_eq!(b.recent.hints.pending(), expected.as_slice());
        // The current key's own accesses count as well, and the hints wait for the next key.
        b.value_get(unused, &()).unwrap();
        b.prefetch_key(&k2);
        assert_eq!(b.recent.hints.pending().len(), 3);
        b.set_current_key(&k2).unwrap();
        assert!(b.recent.hints.pending().is_empty());
        // A key of another range is ignored; a flood of hints is bounded.
        b.prefetch_key(&key_where(false));
        assert!(b.recent.hints.pending().is_empty());
        for _ in 0..2 * PrefetchHints::<u32>::MAX_PENDING {
            b.prefetch_key(&k1);
        }
        assert!(b.recent.hints.pending().len() <= PrefetchHints::<u32>::MAX_PENDING + 64);
        // Hints read and change nothing.
        assert_eq!(b.current_key(), Some(k2.as_slice()));
        b.set_current_key(&k1).unwrap();
        assert_eq!(b.value_get(count, &()).unwrap(), Some(1));
        assert_eq!(b.value_get(windowed, &7).unwrap(), Some(1));
    }

    #[test]
    fn a_backend_without_a_cache_takes_no_hints() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend(dir.path(), 0);
        let count = b
            .register_value(&ValueStateDescriptor::<u64>::new("count"))
            .unwrap();
        let k = key_where(true);
        b.set_current_key(&k).unwrap();
        b.value_update(count, &(), 1).unwrap();
        assert!(!b.prefetches());
        b.prefetch_key(&k);
        assert!(b.recent.hints.pending().is_empty());
    }
}
