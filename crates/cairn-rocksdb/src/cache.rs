//! The write-back cache of deserialized values in front of RocksDB (in the spirit of Kafka
//! Streams' caching store).
//!
//! Entries are keyed by `state index u32 BE | RocksDB key` and hold the typed value as
//! `Box<dyn Any + Send>` (an `Option<V>` once a typed access touched it; `None` in the slot
//! is an absent value of unknown type). A *dirty* entry differs from RocksDB: its value must
//! be written (or, when absent, deleted) before RocksDB is read past the cache. A clean
//! absent entry remembers a miss, so a hot key that does not exist costs no RocksDB get
//! either.
//!
//! The cache is bounded by an entry count. Eviction is CLOCK (second chance): a hand sweeps
//! the slots, clearing the referenced bit of recently used ones and evicting the first one
//! found unreferenced. When the cache is full an insert evicts an eighth of the capacity at
//! once, so dirty evictions are written in one `WriteBatch` per sweep rather than one write
//! per insert.
//!
//! Dirty entries are also listed by key, so a flush costs the dirty entries, not the cache
//! size (a key evicted or cleaned since it was listed is skipped; the list is compacted when
//! it outgrows twice the capacity).

use std::any::Any;
use std::collections::HashMap;

use foldhash::fast::FixedState;
use std::fmt;

/// A typed value in the cache.
pub(crate) type AnyValue = Box<dyn Any + Send>;

/// One cached entry.
pub(crate) struct Slot {
    pub(crate) key: Vec<u8>,
    pub(crate) value: Option<AnyValue>,
    pub(crate) dirty: bool,
    referenced: bool,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key)
            .field("present", &self.value.is_some())
            .field("dirty", &self.dirty)
            .finish()
    }
}

/// A bounded map from cache keys to typed values with CLOCK eviction.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    capacity: usize,
    index: HashMap<Vec<u8>, usize, FixedState>,
    slots: Vec<Slot>,
    hand: usize,
    /// Number of dirty slots.
    dirty: usize,
    /// Keys of slots that became dirty since the last flush (may hold stale keys).
    dirty_keys: Vec<Vec<u8>>,
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.capacity > 0
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether any entry is dirty.
    pub(crate) fn has_dirty(&self) -> bool {
        self.dirty > 0
    }

    /// The entry of `key`, marked as recently used.
    #[inline]
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<&mut Slot> {
        let i = *self.index.get(key)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(slot)
    }

    /// Marks an entry (returned by [`Self::get`]) dirty, counting it.
    #[inline]
    pub(crate) fn mark_dirty(&mut self, key: &[u8]) {
        if let Some(slot) = self.index.get(key).and_then(|&i| self.slots.get_mut(i)) {
            if !slot.dirty {
                slot.dirty = true;
                self.dirty += 1;
                self.list_dirty(key.to_vec());
            }
        }
    }

    fn list_dirty(&mut self, key: Vec<u8>) {
        if self.dirty_keys.len() >= 2 * self.capacity.max(8) {
            let (index, slots) = (&self.index, &self.slots);
            self.dirty_keys.retain(|k| {
                index
                    .get(k)
                    .and_then(|&i| slots.get(i))
                    .is_some_and(|s| s.dirty)
            });
            self.dirty_keys.dedup();
        }
        self.dirty_keys.push(key);
    }

    /// Whether inserting a new entry needs an eviction first.
    pub(crate) fn full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Inserts a new entry (the key must not be present; call [`Self::evict`] first when
    /// [`Self::full`]).
    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Option<AnyValue>, dirty: bool) {
        if let Some(&i) = self.index.get(&key) {
            let mut newly_dirty = false;
            if let Some(slot) = self.slots.get_mut(i) {
                slot.value = value;
                slot.referenced = true;
                if dirty && !slot.dirty {
                    slot.dirty = true;
                    newly_dirty = true;
                }
            }
            if newly_dirty {
                self.dirty += 1;
                self.list_dirty(key);
            }
            return;
        }
        self.index.insert(key.clone(), self.slots.len());
        if dirty {
            self.dirty += 1;
            self.list_dirty(key.clone());
        }
        self.slots.push(Slot {
            key,
            value,
            dirty,
            referenced: false,
        });
    }

    /// Evicts about an eighth of the capacity (at least one entry) by CLOCK and returns the
    /// evicted entries; the dirty ones must be written.
    pub(crate) fn evict(&mut self) -> Vec<Slot> {
        let want = (self.capacity / 8).max(1).min(self.slots.len());
        let mut out = Vec::with_capacity(want);
        while out.len() < want && !self.slots.is_empty() {
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let Some(slot) = self.slots.get_mut(self.hand) else {
                break;
            };
            if slot.referenced {
                slot.referenced = false;
                self.hand += 1;
                continue;
            }
            out.push(self.remove_at(self.hand));
        }
        out
    }

    fn remove_at(&mut self, i: usize) -> Slot {
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.key);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
        if slot.dirty {
            self.dirty -= 1;
        }
        slot
    }

    /// Calls `f` for every dirty entry, then marks them clean (only if every call succeeded).
    pub(crate) fn flush<E>(
        &mut self,
        mut f: impl FnMut(&[u8], Option<&AnyValue>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.dirty == 0 {
            self.dirty_keys.clear();
            return Ok(());
        }
        let mut done = Vec::with_capacity(self.dirty);
        let mut failed = None;
        for key in &self.dirty_keys {
            let Some(&i) = self.index.get(key) else {
                continue;
            };
            let Some(slot) = self.slots.get(i).filter(|s| s.dirty) else {
                continue;
            };
            if let Err(e) = f(&slot.key, slot.value.as_ref()) {
                failed = Some(e);
                break;
            }
            if let Some(slot) = self.slots.get_mut(i) {
                slot.dirty = false;
            }
            done.push(i);
        }
        if let Some(e) = failed {
            // Nothing was written: every entry stays dirty.
            for i in done {
                if let Some(slot) = self.slots.get_mut(i) {
                    slot.dirty = true;
                }
            }
            return Err(e);
        }
        self.dirty = 0;
        self.dirty_keys.clear();
        Ok(())
    }

    /// Forgets the value of `key` if cached: it becomes a clean absent entry.
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Some(slot) = self.index.get(key).and_then(|&i| self.slots.get_mut(i)) {
            slot.value = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: u64) -> Option<AnyValue> {
        Some(Box::new(Some(x)))
    }

    #[test]
    fn clock_keeps_referenced_entries_and_returns_dirty_evictions() {
        let mut c = Cache::new(8);
        for i in 0..8u8 {
            c.insert(vec![i], v(u64::from(i)), i % 2 == 0);
        }
        assert!(c.full());
        // Touch entry 0: it gets a second chance.
        assert!(c.get(&[0]).is_some());
        let evicted = c.evict();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].key, vec![1]);
        assert!(!evicted[0].dirty);
        // The last slot moves into the hand's position on each eviction; entry 0 keeps its
        // second chance until the hand wraps around.
        let mut rest = Vec::new();
        for _ in 0..6 {
            let e = c.evict().remove(0);
            assert_eq!(e.dirty, e.key[0] % 2 == 0, "{e:?}");
            rest.push(e.key[0]);
        }
        rest.sort_unstable();
        assert_eq!(rest, [2, 3, 4, 5, 6, 7]);
        assert_eq!(c.len(), 1);
        assert!(c.get(&[0]).is_some());
        assert!(c.has_dirty());
    }

    #[test]
    fn flush_visits_dirty_entries_once() {
        let mut c = Cache::new(4);
        c.insert(vec![1], v(1), true);
        c.insert(vec![2], None, true);
        c.insert(vec![3], v(3), false);
        let mut seen = Vec::new();
        c.flush(|k, val| {
            seen.push((k.to_vec(), val.is_some()));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(seen, vec![(vec![1], true), (vec![2], false)]);
        assert!(!c.has_dirty());
        let mut again = 0;
        c.flush(|_, _| {
            again += 1;
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(again, 0);
        // A failed flush keeps entries dirty.
        c.insert(vec![1], v(5), true);
        assert!(c.flush(|_, _| Err(())).is_err());
        assert!(c.has_dirty());
    }

    #[test]
    fn forget_leaves_a_clean_absent_entry() {
        let mut c = Cache::new(8);
        c.insert(vec![1], v(1), false);
        c.forget(&[1]);
        c.forget(&[2]);
        let slot = c.get(&[1]).unwrap();
        assert!(slot.value.is_none() && !slot.dirty);
        assert!(c.get(&[2]).is_none());
    }

    #[test]
    fn flush_cost_follows_dirty_entries_and_survives_evictions() {
        let mut c = Cache::new(16);
        for i in 0..16u8 {
            c.insert(vec![i], v(u64::from(i)), false);
        }
        c.insert(vec![3], v(30), true);
        c.mark_dirty(&[3]);
        c.insert(vec![3], v(31), true);
        // Evict everything once: 3 goes out dirty (the caller writes it).
        let mut evicted_dirty = 0;
        while c.len() > 8 {
            evicted_dirty += c.evict().iter().filter(|s| s.dirty).count();
        }
        c.insert(vec![100], v(100), true);
        let mut seen = Vec::new();
        c.flush(|k, _| {
            seen.push(k.to_vec());
            Ok::<(), ()>(())
        })
        .unwrap();
        let expect_3 = if evicted_dirty == 1 { 0 } else { 1 };
        assert_eq!(seen.iter().filter(|k| **k == vec![3]).count(), expect_3);
        assert!(seen.contains(&vec![100]));
        assert!(!c.has_dirty());
    }
}
