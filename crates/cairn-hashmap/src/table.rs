//! The sharded copy-on-write hash table that holds one state's entries.
//!
//! A state's entries are split by key group (index `kg - range.start`) and, within a key
//! group, into a fixed number of shards chosen by bits of the entry's in-memory hash. Every
//! shard is an `Arc<HashTable<Item>>`: the synchronous phase of a snapshot clones the vector
//! of `Arc`s (`O(shards)`, independent of the number of entries), and the first write to a
//! shard after a snapshot clones just that shard (`Arc::make_mut`).
//!
//! The in-memory hash is foldhash with a fixed seed over the serialized key (computed once
//! in `set_current_key`), combined with the namespace's hash unless the namespace type is
//! zero-sized (the void namespace). It never leaves the process.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use foldhash::fast::FixedState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

/// Seed of the in-memory hash ("cairn_hm").
const HASH_SEED: u64 = 0x6361_6972_6e5f_686d;
/// Aim for about this many shards per state (over all key groups of the backend), so that
/// both the synchronous phase (one `Arc` clone per shard) and the copy-on-write granularity
/// stay small.
const TARGET_SHARDS_PER_STATE: u32 = 4096;
/// At most this many shards per key group (a power of two).
const MAX_SHARDS_PER_KEY_GROUP: u32 = 64;

/// The hasher of in-memory hashes (fixed seed: hashes are never persisted, and a fixed seed
/// keeps performance reproducible).
#[inline]
pub(crate) fn build_hasher() -> FixedState {
    FixedState::with_seed(HASH_SEED)
}

/// The in-memory hash of a serialized key.
#[inline]
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let mut h = build_hasher().build_hasher();
    h.write(key);
    h.finish()
}

/// The in-memory hash of an entry `(key, namespace)`, from the key's hash.
#[inline]
pub(crate) fn entry_hash<N: Hash>(key_hash: u64, ns: &N) -> u64 {
    if std::mem::size_of::<N>() == 0 {
        // A zero-sized namespace has one value: the key's hash is the entry's hash.
        return key_hash;
    }
    let mut h = build_hasher().build_hasher();
    h.write_u64(key_hash);
    ns.hash(&mut h);
    h.finish()
}

/// Number of shards per key group for a backend owning `key_groups` key groups.
pub(crate) fn shards_per_key_group(key_groups: u32) -> usize {
    let n = (TARGET_SHARDS_PER_STATE / key_groups.max(1)).clamp(1, MAX_SHARDS_PER_KEY_GROUP);
    // Round down to a power of two (n >= 1).
    1usize << (31 - n.leading_zeros())
}

/// One entry: the serialized key, the namespace, the value, and the entry's hash.
#[derive(Clone, Debug)]
pub(crate) struct Item<N, T> {
    pub(crate) hash: u64,
    pub(crate) key: Box<[u8]>,
    pub(crate) ns: N,
    pub(crate) value: T,
}

pub(crate) type Shard<N, T> = HashTable<Item<N, T>>;

/// Where an access goes: the current key's group index, its hash and its bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct At<'a> {
    pub(crate) kg_idx: usize,
    pub(crate) key_hash: u64,
    pub(crate) key: &'a [u8],
}

/// The entries of one state, sharded by key group and hash. Cloning it shares every shard.
#[derive(Debug)]
pub(crate) struct ShardedTable<N, T> {
    shards: Vec<Arc<Shard<N, T>>>,
    per_kg: usize,
}

impl<N, T> Clone for ShardedTable<N, T> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
            per_kg: self.per_kg,
        }
    }
}

impl<N: Clone + Eq + Hash, T: Clone> ShardedTable<N, T> {
    /// An empty table for `key_groups` key groups.
    pub(crate) fn new(key_groups: u32, per_kg: usize) -> Self {
        let n = key_groups as usize * per_kg;
        Self {
            shards: (0..n).map(|_| Arc::new(HashTable::new())).collect(),
            per_kg,
        }
    }

    #[inline]
    fn slot(&self, kg_idx: usize, hash: u64) -> usize {
        kg_idx * self.per_kg + ((hash >> 32) as usize & (self.per_kg - 1))
    }

    /// The value of `(at.key, ns)`.
    #[inline]
    pub(crate) fn get(&self, at: &At<'_>, ns: &N) -> Option<&T> {
        let hash = entry_hash(at.key_hash, ns);
        let shard = self.shards.get(self.slot(at.kg_idx, hash))?;
        shard
            .find(hash, |e| e.hash == hash && *e.key == *at.key && e.ns == *ns)
            .map(|e| &e.value)
    }

    /// The shard of `(at.key, ns)`, unshared (cloned if a snapshot still holds it), and the
    /// entry's hash. `None` only if `at.kg_idx` is out of range (an internal error).
    #[inline]
    pub(crate) fn shard_mut(&mut self, at: &At<'_>, ns: &N) -> Option<(&mut Shard<N, T>, u64)> {
        let hash = entry_hash(at.key_hash, ns);
        let slot = self.slot(at.kg_idx, hash);
        self.shards.get_mut(slot).map(|s| (Arc::make_mut(s), hash))
    }

    /// Removes `(at.key, ns)`; does not unshare the shard when there is nothing to remove.
    pub(crate) fn remove(&mut self, at: &At<'_>, ns: &N) -> Option<T> {
        self.get(at, ns)?;
        let (shard, hash) = self.shard_mut(at, ns)?;
        match find_entry(shard, hash, at.key, ns) {
            Entry::Occupied(o) => Some(o.remove().0.value),
            Entry::Vacant(_) => None,
        }
    }

    /// Every entry of key group index `kg_idx`, in no particular order.
    pub(crate) fn iter_kg(&self, kg_idx: usize) -> impl Iterator<Item = &Item<N, T>> {
        let start = kg_idx * self.per_kg;
        self.shards
            .get(start..start + self.per_kg)
            .unwrap_or(&[])
            .iter()
            .flat_map(|s| s.iter())
    }

    /// Every entry.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Item<N, T>> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// The hashbrown entry of `(key, ns)` in `shard`.
#[inline]
pub(crate) fn find_entry<'a, N: Eq, T>(
    shard: &'a mut Shard<N, T>,
    hash: u64,
    key: &[u8],
    ns: &N,
) -> Entry<'a, Item<N, T>> {
    shard.entry(
        hash,
        |e| e.hash == hash && *e.key == *key && e.ns == *ns,
        |e| e.hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_counts_are_powers_of_two_and_bounded() {
        assert_eq!(shards_per_key_group(1), 64);
        assert_eq!(shards_per_key_group(128), 32);
        assert_eq!(shards_per_key_group(100), 32);
        assert_eq!(shards_per_key_group(4096), 1);
        assert_eq!(shards_per_key_group(32768), 1);
        assert_eq!(shards_per_key_group(0), 64);
    }

    #[test]
    fn clone_shares_until_written() {
        let mut t = ShardedTable::<(), u64>::new(2, 4);
        let at = At {
            kg_idx: 1,
            key_hash: key_hash(b"k"),
            key: b"k",
        };
        let (shard, hash) = t.shard_mut(&at, &()).unwrap();
        if let Entry::Vacant(v) = find_entry(shard, hash, at.key, &()) {
            v.insert(Item {
                hash,
                key: at.key.into(),
                ns: (),
                value: 1,
            });
        }
        let snap = t.clone();
        let (shard, hash) = t.shard_mut(&at, &()).unwrap();
        if let Entry::Occupied(mut o) = find_entry(shard, hash, at.key, &()) {
            o.get_mut().value = 2;
        }
        assert_eq!(snap.get(&at, &()), Some(&1));
        assert_eq!(t.get(&at, &()), Some(&2));
        assert_eq!(t.remove(&at, &()), Some(2));
        assert_eq!(t.len(), 0);
        assert_eq!(snap.iter_kg(1).count(), 1);
        assert_eq!(snap.iter_kg(0).count(), 0);
    }
}
