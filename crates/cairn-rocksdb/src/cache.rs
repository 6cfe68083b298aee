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
//! Dirty entries are also listed by slot (each dirty slot knows its place in the list, so
//! listing, unlisting and moving a slot are O(1) and no key is copied), so taking the dirty
//! entries at a flush or a snapshot costs the dirty entries, not the cache size.
//!
//! While a snapshot's entries are being written by its seal worker (`seal.rs`), the backend
//! does not evict: the cache may then grow past its capacity, up to [`Cache::hard_limit`].

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
    /// The slot's position in the dirty list while dirty.
    dirty_pos: usize,
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
    /// Indices of the dirty slots, exactly.
    dirty_list: Vec<usize>,
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

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether any entry is dirty.
    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty_list.is_empty()
    }

    /// Number of dirty entries.
    pub(crate) fn dirty_len(&self) -> usize {
        self.dirty_list.len()
    }

    /// The size the cache may reach while evictions are held back (twice the capacity).
    pub(crate) fn hard_limit(&self) -> usize {
        self.capacity.saturating_mul(2)
    }

    /// The slot index of `key`, marking the entry as recently used.
    #[inline]
    pub(crate) fn find(&mut self, key: &[u8]) -> Option<usize> {
        let i = *self.index.get(key)?;
        let slot = self.slots.get_mut(i)?;
        slot.referenced = true;
        Some(i)
    }

    /// The entry of `key`, marked as recently used.
    #[inline]
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<&mut Slot> {
        let i = self.find(key)?;
        self.slots.get_mut(i)
    }

    /// The slot at `i` (from [`Self::find`]).
    #[inline]
    pub(crate) fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.slots.get_mut(i)
    }

    /// Marks the slot at `i` dirty.
    #[inline]
    pub(crate) fn mark_dirty_at(&mut self, i: usize) {
        if let Some(slot) = self.slots.get_mut(i) {
            if !slot.dirty {
                slot.dirty = true;
                slot.dirty_pos = self.dirty_list.len();
                self.dirty_list.push(i);
            }
        }
    }

    /// Whether inserting a new entry needs an eviction first.
    pub(crate) fn full(&self) -> bool {
        self.slots.len() >= self.capacity
    }

    /// Inserts or replaces the entry of `key` (call [`Self::evict`] first when
    /// [`Self::full`] and the key is new).
    pub(crate) fn insert(&mut self, key: Vec<u8>, value: Option<AnyValue>, dirty: bool) {
        if let Some(&i) = self.index.get(&key) {
            if let Some(slot) = self.slots.get_mut(i) {
                slot.value = value;
                slot.referenced = true;
            }
            if dirty {
                self.mark_dirty_at(i);
            }
            return;
        }
        let i = self.slots.len();
        self.index.insert(key.clone(), i);
        self.slots.push(Slot {
            key,
            value,
            dirty: false,
            referenced: false,
            dirty_pos: 0,
        });
        if dirty {
            self.mark_dirty_at(i);
        }
    }

    /// Evicts about an eighth of the capacity (at least one entry) by CLOCK and returns the
    /// evicted entries; the dirty ones must be written.
    pub(crate) fn evict(&mut self) -> Vec<Slot> {
        let want = (self.capacity / 8).max(1).min(self.slots.len());
        self.evict_n(want)
    }

    /// Evicts until the cache is an eighth below its capacity (for a cache that grew past it
    /// while evictions were held back).
    pub(crate) fn evict_to_capacity(&mut self) -> Vec<Slot> {
        let target = self.capacity - (self.capacity / 8).max(1).min(self.capacity);
        self.evict_n(self.slots.len().saturating_sub(target))
    }

    fn evict_n(&mut self, want: usize) -> Vec<Slot> {
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

    /// Removes the dirty-list entry at `pos`, moving the last one into its place.
    fn unlist(&mut self, pos: usize) {
        if pos >= self.dirty_list.len() {
            return;
        }
        self.dirty_list.swap_remove(pos);
        if let Some(&j) = self.dirty_list.get(pos) {
            if let Some(s) = self.slots.get_mut(j) {
                s.dirty_pos = pos;
            }
        }
    }

    fn remove_at(&mut self, i: usize) -> Slot {
        if let Some(pos) = self.slots.get(i).filter(|s| s.dirty).map(|s| s.dirty_pos) {
            self.unlist(pos);
        }
        let slot = self.slots.swap_remove(i);
        self.index.remove(&slot.key);
        if let Some(moved) = self.slots.get(i) {
            if let Some(v) = self.index.get_mut(&moved.key) {
                *v = i;
            }
            if moved.dirty {
                if let Some(d) = self.dirty_list.get_mut(moved.dirty_pos) {
                    *d = i;
                }
            }
        }
        slot
    }

    /// Calls `f` for every dirty entry, then marks them clean (only if every call succeeded).
    pub(crate) fn flush<E>(
        &mut self,
        mut f: impl FnMut(&[u8], Option<&AnyValue>) -> Result<(), E>,
    ) -> Result<(), E> {
        // Many dirty entries (a checkpoint after a busy interval): visit the slots in memory
        // order rather than in the dirty list's, which would cost a cache miss per entry.
        // Callers do not depend on the order (the seal worker sorts).
        let sequential = self.dirty_list.len().saturating_mul(4) >= self.slots.len();
        let mut result = Ok(());
        if sequential {
            for slot in self.slots.iter_mut().filter(|s| s.dirty) {
                if let Err(e) = f(&slot.key, slot.value.as_ref()) {
                    result = Err(e);
                    break;
                }
                slot.dirty = false;
            }
        } else {
            for &i in &self.dirty_list {
                let Some(slot) = self.slots.get_mut(i) else {
                    continue;
                };
                if let Err(e) = f(&slot.key, slot.value.as_ref()) {
                    result = Err(e);
                    break;
                }
                slot.dirty = false;
            }
        }
        if let Err(e) = result {
            // Nothing counts as written: every listed entry stays dirty.
            for &i in &self.dirty_list {
                if let Some(slot) = self.slots.get_mut(i) {
                    slot.dirty = true;
                }
            }
            return Err(e);
        }
        self.dirty_list.clear();
        Ok(())
    }

    /// Forgets the value of `key` if cached: it becomes a clean absent entry.
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Some(i) = self.index.get(key).copied() {
            if let Some(pos) = self.slots.get(i).filter(|s| s.dirty).map(|s| s.dirty_pos) {
                self.unlist(pos);
            }
            if let Some(slot) = self.slots.get_mut(i) {
                slot.value = None;
                slot.dirty = false;
            }
        }
    }

    /// Checks the dirty list against the slots (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        let dirty = self.slots.iter().filter(|s| s.dirty).count();
        assert_eq!(dirty, self.dirty_list.len());
        for (pos, &i) in self.dirty_list.iter().enumerate() {
            assert!(self.slots[i].dirty);
            assert_eq!(self.slots[i].dirty_pos, pos);
        }
        for (i, s) in self.slots.iter().enumerate() {
            assert_eq!(self.index[&s.key], i);
        }
        assert_eq!(self.index.len(), self.slots.len());
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
        let i = c.find(&[3]).unwrap();
        c.mark_dirty_at(i);
        c.insert(vec![3], v(31), true);
        c.check_invariants();
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
        c.check_invariants();
        let expect_3 = if evicted_dirty == 1 { 0 } else { 1 };
        assert_eq!(seen.iter().filter(|k| **k == vec![3]).count(), expect_3);
        assert!(seen.contains(&vec![100]));
        assert!(!c.has_dirty());
    }

    #[test]
    fn a_failed_flush_leaves_every_entry_dirty() {
        // Few dirty entries (visited through the dirty list) and many (visited in slot order).
        for dirty in [2u8, 30] {
            let mut c = Cache::new(64);
            for i in 0..40u8 {
                c.insert(vec![i], v(u64::from(i)), i < dirty);
            }
            let mut calls = 0;
            let failed = c.flush(|_, _| {
                calls += 1;
                if calls == 2 {
                    Err(())
                } else {
                    Ok(())
                }
            });
            assert!(failed.is_err());
            assert_eq!(c.dirty_len(), usize::from(dirty));
            c.check_invariants();
            let mut seen = Vec::new();
            c.flush(|k, _| {
                seen.push(k.to_vec());
                Ok::<(), ()>(())
            })
            .unwrap();
            seen.sort();
            assert_eq!(seen, (0..dirty).map(|i| vec![i]).collect::<Vec<_>>());
            assert!(!c.has_dirty());
            c.check_invariants();
        }
    }

    #[test]
    fn dirty_list_stays_exact_under_random_operations() {
        use proptest::prelude::*;
        use proptest::test_runner::TestRunner;
        let ops = proptest::collection::vec((0u8..5, 0u8..24), 1..300);
        TestRunner::default()
            .run(&ops, |ops| {
                let mut c = Cache::new(8);
                let mut held = false;
                for (op, k) in ops {
                    match op {
                        0 | 1 => {
                            if !held && c.full() && c.find(&[k]).is_none() {
                                c.evict();
                            }
                            c.insert(vec![k], v(u64::from(k)), op == 0);
                        }
                        2 => {
                            if let Some(i) = c.find(&[k]) {
                                c.mark_dirty_at(i);
                            }
                        }
                        3 => c.forget(&[k]),
                        _ => {
                            if k % 3 == 0 {
                                held = !held;
                                if !held && c.len() > 8 {
                                    c.evict_to_capacity();
                                    prop_assert!(c.len() < 8);
                                }
                            } else {
                                let mut n = 0;
                                c.flush(|_, _| {
                                    n += 1;
                                    Ok::<(), ()>(())
                                })
                                .unwrap();
                                prop_assert!(!c.has_dirty());
                            }
                        }
                    }
                    c.check_invariants();
                    prop_assert!(c.len() <= c.hard_limit().max(24));
                }
                Ok(())
            })
            .unwrap();
    }
}
