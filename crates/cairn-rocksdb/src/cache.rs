//! The write-back cache of deserialized values in front of RocksDB (in the spirit of Kafka
//! Streams' caching store).
//!
//! Entries are keyed by `state index u32 BE | RocksDB key` and hold the typed value, an
//! `Option<V>` once a typed access touched it, read through `dyn Any` ([`CachedValue`]:
//! in the slot for a few primitive types, boxed for the others; `Unknown` is an absent
//! value of a type not known yet). A *dirty* entry differs from RocksDB: its value must
//! be written (or, when absent, deleted) before RocksDB is read past the cache. A clean
//! absent entry remembers a miss, so a hot key that does not exist costs no RocksDB get
//! either.
//!
//! **Layout.** The entries are the buckets of one open-addressing table (linear probing,
//! at most 5/8 full, doubled when it would be fuller). A slot is one cache line: the key
//! inline when it has at most [`INLINE_KEY`] bytes (W1's keys have 23), the value, 32 bits
//! of the key's hash and the flags. A lookup of a primitive value (W1's `u64` counts)
//! therefore costs one cache miss, and of a boxed value two. With a separate index and
//! boxed values it cost four dependent misses (hashbrown's control bytes, its bucket, the
//! key bytes and the slot, then the box), which was 60% of W1 config c's task thread with
//! every key cached. Removal shifts the rest of a
//! probe run back (no tombstones); a slot's home is its stored hash bits, so the shift reads
//! no key.
//!
//! The cache is bounded by an entry count. Eviction is CLOCK (second chance): a hand sweeps
//! the slots, clearing the referenced bit of recently used ones and evicting the first one
//! found unreferenced. When the cache is full an insert evicts an eighth of the capacity at
//! once, so dirty evictions are written in one `WriteBatch` per sweep rather than one write
//! per insert.
//!
//! Dirty entries are also listed by slot (each dirty slot knows its place in the list, and
//! the list follows a slot that moves), so taking the dirty entries at a flush or a
//! snapshot costs the dirty entries, not the cache size.
//!
//! While a snapshot's entries are being written by its seal worker (`seal.rs`), the backend
//! does not evict: the cache may then grow past its capacity, up to [`Cache::hard_limit`].

use std::any::Any;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use foldhash::fast::FixedState;

/// A cached value: `Option<V>` for its state's value type `V`, read through `dyn Any`.
/// The primitive types that counters and sums use live in the slot (no box, no second
/// cache miss per access); any other type is boxed.
pub(crate) enum CachedValue {
    /// An absent value whose type is not known yet (deleted through an untyped path).
    Unknown,
    U64(Option<u64>),
    I64(Option<i64>),
    U32(Option<u32>),
    I32(Option<i32>),
    F64(Option<f64>),
    Boxed(Box<dyn Any + Send>),
}

/// The `Option<V>` inside a [`CachedValue`] as `$r dyn Any` (`$r`: `&` or `&mut`), or
/// `None` for [`CachedValue::Unknown`].
macro_rules! typed_value {
    ($value:expr, $($r:tt)+) => {
        match $value {
            CachedValue::Unknown => None,
            CachedValue::U64(v) => Some(v as $($r)+ dyn Any),
            CachedValue::I64(v) => Some(v as $($r)+ dyn Any),
            CachedValue::U32(v) => Some(v as $($r)+ dyn Any),
            CachedValue::I32(v) => Some(v as $($r)+ dyn Any),
            CachedValue::F64(v) => Some(v as $($r)+ dyn Any),
            CachedValue::Boxed(b) => Some($($r)+ **b),
        }
    };
}

impl CachedValue {
    /// `value` in the slot if its type is one of the inline ones, else boxed.
    #[inline]
    pub(crate) fn new<V: Send + 'static>(value: Option<V>) -> Self {
        let mut value = Some(value);
        let any: &mut dyn Any = &mut value;
        // `V` is known at compile time: every test but the matching one folds away.
        macro_rules! inline {
            ($($t:ty => $variant:ident),*) => {$(
                if let Some(v) = any.downcast_mut::<Option<Option<$t>>>() {
                    return CachedValue::$variant(v.take().flatten());
                }
            )*};
        }
        inline!(u64 => U64, i64 => I64, u32 => U32, i32 => I32, f64 => F64);
        CachedValue::Boxed(Box::new(value.flatten()))
    }

    /// The `Option<V>`, or `None` for [`CachedValue::Unknown`].
    #[inline]
    pub(crate) fn as_any(&self) -> Option<&dyn Any> {
        typed_value!(self, &)
    }

    /// The `Option<V>` to update in place, or `None` for [`CachedValue::Unknown`].
    #[inline]
    pub(crate) fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        typed_value!(self, &mut)
    }
}

/// Keys up to this many bytes are stored in their slot.
const INLINE_KEY: usize = 30;
/// Seed of the cache's hash ("cairn_wb"); hashes never leave the process.
const HASH_SEED: u64 = 0x6361_6972_6e5f_7762;
/// The most entries a cache holds, hard limit included (dirty-list positions have 30
/// bits).
const MAX_ENTRIES: usize = 1 << 30;
/// The bits of [`Slot::flags`] above the dirty-list position.
const DIRTY: u32 = 1 << 31;
const REFERENCED: u32 = 1 << 30;
const POS_MASK: u32 = REFERENCED - 1;

/// A slot's key.
enum Key {
    Empty,
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(key: &[u8]) -> Self {
        let mut bytes = [0u8; INLINE_KEY];
        match bytes.get_mut(..key.len()) {
            Some(b) => {
                b.copy_from_slice(key);
                Key::Inline {
                    len: key.len() as u8,
                    bytes,
                }
            }
            None => Key::Heap(key.into()),
        }
    }

    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Empty => &[],
            Key::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Key::Heap(b) => b,
        }
    }
}

/// One slot of the table: an entry, or empty. Evicted entries are returned as slots too.
#[repr(align(64))]
pub(crate) struct Slot {
    key: Key,
    pub(crate) value: CachedValue,
    /// The high 32 bits of the key's hash; its low bits are the slot's home position.
    hash: u32,
    /// [`DIRTY`], [`REFERENCED`] and, while dirty, the slot's position in the dirty list.
    flags: u32,
}

// A slot is one cache line.
const _: () = assert!(std::mem::size_of::<Slot>() == 64);

impl Slot {
    fn empty() -> Self {
        Self {
            key: Key::Empty,
            value: CachedValue::Unknown,
            hash: 0,
            flags: 0,
        }
    }

    /// Whether the entry differs from RocksDB.
    #[inline]
    pub(crate) fn dirty(&self) -> bool {
        self.flags & DIRTY != 0
    }

    #[inline]
    fn set_clean(&mut self) {
        self.flags &= !(DIRTY | POS_MASK);
    }

    /// Marks the entry dirty at position `pos` of the dirty list.
    #[inline]
    fn set_dirty(&mut self, pos: usize) {
        self.flags = (self.flags & REFERENCED) | DIRTY | (pos as u32 & POS_MASK);
    }

    #[inline]
    fn dirty_pos(&self) -> usize {
        (self.flags & POS_MASK) as usize
    }

    #[inline]
    fn referenced(&self) -> bool {
        self.flags & REFERENCED != 0
    }

    #[inline]
    fn set_referenced(&mut self, on: bool) {
        if on {
            self.flags |= REFERENCED;
        } else {
            self.flags &= !REFERENCED;
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        matches!(self.key, Key::Empty)
    }

    /// The entry's cache key.
    pub(crate) fn key(&self) -> &[u8] {
        self.key.as_slice()
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("key", &self.key())
            .field("known", &self.value.as_any().is_some())
            .field("dirty", &self.dirty())
            .finish()
    }
}

/// The hash bits a slot keeps.
#[inline]
fn hash_key(key: &[u8]) -> u32 {
    let mut h = FixedState::with_seed(HASH_SEED).build_hasher();
    h.write(key);
    (h.finish() >> 32) as u32
}

/// A bounded map from cache keys to typed values with CLOCK eviction.
#[derive(Default)]
pub(crate) struct Cache {
    capacity: usize,
    /// Empty, or a power of two of slots, at most 5/8 of them full.
    table: Vec<Slot>,
    len: usize,
    hand: usize,
    /// Positions of the dirty slots, exactly.
    dirty_list: Vec<u32>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .field("slots", &self.table.len())
            .field("dirty", &self.dirty_list.len())
            .finish()
    }
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.min(MAX_ENTRIES / 2),
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
        self.len
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

    #[inline]
    fn mask(&self) -> usize {
        self.table.len().wrapping_sub(1)
    }

    /// The position of `key` (`Ok`), or the empty slot that ends its probe run (`Err`;
    /// `Err(0)` when the table has no slots yet).
    #[inline]
    fn probe(&self, key: &[u8], hash: u32) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        // The table always has an empty slot, so the run ends; the bound only guards
        // against a broken invariant.
        for _ in 0..self.table.len() {
            let Some(s) = self.table.get(i) else { break };
            if s.is_empty() {
                return Err(i);
            }
            if s.hash == hash && s.key() == key {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
        Err(0)
    }

    /// The hash of a cache key (for [`Self::touch`]).
    #[inline]
    pub(crate) fn hash(key: &[u8]) -> u32 {
        hash_key(key)
    }

    /// Reads the slots where the probes for keys with these hashes start, so that lookups
    /// of those keys soon after find them cached (a hint: changes nothing). The reads
    /// follow one another without other work, so their cache misses overlap; a lookup
    /// would wait for its own alone.
    #[inline]
    pub(crate) fn touch(&self, hashes: &[u32]) {
        let mask = self.mask();
        let mut seen = 0u32;
        for &h in hashes {
            if let Some(s) = self.table.get(h as usize & mask) {
                seen ^= s.hash;
            }
        }
        std::hint::black_box(seen);
    }

    /// The slot index of `key`, marking the entry as recently used.
    #[inline]
    pub(crate) fn find(&mut self, key: &[u8]) -> Option<usize> {
        let i = self.probe(key, hash_key(key)).ok()?;
        let slot = self.table.get_mut(i)?;
        slot.set_referenced(true);
        Some(i)
    }

    /// The entry of `key`, marked as recently used.
    #[inline]
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<&mut Slot> {
        let i = self.find(key)?;
        self.table.get_mut(i)
    }

    /// The slot at `i` (from [`Self::find`]; valid until the next insert or eviction).
    #[inline]
    pub(crate) fn slot_mut(&mut self, i: usize) -> Option<&mut Slot> {
        self.table.get_mut(i).filter(|s| !s.is_empty())
    }

    /// Marks the slot at `i` dirty.
    #[inline]
    pub(crate) fn mark_dirty_at(&mut self, i: usize) {
        if let Some(slot) = self.table.get_mut(i).filter(|s| !s.is_empty()) {
            if !slot.dirty() {
                slot.set_dirty(self.dirty_list.len());
                self.dirty_list.push(i as u32);
            }
        }
    }

    /// Whether inserting a new entry needs an eviction first.
    pub(crate) fn full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Inserts or replaces the entry of `key` (call [`Self::evict`] first when
    /// [`Self::full`] and the key is new).
    pub(crate) fn insert(&mut self, key: &[u8], value: CachedValue, dirty: bool) {
        let hash = hash_key(key);
        let i = match self.probe(key, hash) {
            Ok(i) => {
                if let Some(slot) = self.table.get_mut(i) {
                    slot.value = value;
                    slot.set_referenced(true);
                }
                if dirty {
                    self.mark_dirty_at(i);
                }
                return;
            }
            Err(i) if (self.len + 1) * 8 <= self.table.len() * 5 => i,
            Err(_) => {
                self.grow();
                let (Ok(i) | Err(i)) = self.probe(key, hash);
                i
            }
        };
        if let Some(slot) = self.table.get_mut(i) {
            *slot = Slot {
                key: Key::new(key),
                value,
                hash,
                flags: 0,
            };
            self.len += 1;
            if dirty {
                self.mark_dirty_at(i);
            }
        }
    }

    /// Doubles the table (16 slots at first), moving every entry to its new position and
    /// listing the dirty ones again.
    #[cold]
    fn grow(&mut self) {
        let n = (self.table.len() * 2).max(16);
        let old = std::mem::replace(
            &mut self.table,
            std::iter::repeat_with(Slot::empty).take(n).collect(),
        );
        self.dirty_list.clear();
        self.hand = 0;
        for slot in old.into_iter().filter(|s| !s.is_empty()) {
            let Err(i) = self.probe(slot.key(), slot.hash) else {
                continue;
            };
            let dirty = slot.dirty();
            if let Some(s) = self.table.get_mut(i) {
                *s = slot;
                s.set_clean();
            }
            if dirty {
                self.mark_dirty_at(i);
            }
        }
    }

    /// Evicts about an eighth of the capacity (at least one entry) by CLOCK and returns the
    /// evicted entries; the dirty ones must be written.
    pub(crate) fn evict(&mut self) -> Vec<Slot> {
        let want = (self.capacity / 8).max(1).min(self.len);
        self.evict_n(want)
    }

    /// Evicts until the cache is an eighth below its capacity (for a cache that grew past it
    /// while evictions were held back).
    pub(crate) fn evict_to_capacity(&mut self) -> Vec<Slot> {
        let target = self.capacity - (self.capacity / 8).max(1).min(self.capacity);
        self.evict_n(self.len.saturating_sub(target))
    }

    fn evict_n(&mut self, want: usize) -> Vec<Slot> {
        let mut out = Vec::with_capacity(want);
        // Two sweeps clear every referenced bit and reach every entry; the bound only
        // guards against a broken invariant (a count of entries the table does not hold).
        let mut steps = self.table.len().saturating_mul(2).saturating_add(want);
        while out.len() < want && self.len > 0 && steps > 0 {
            steps -= 1;
            if self.hand >= self.table.len() {
                self.hand = 0;
            }
            let Some(slot) = self.table.get_mut(self.hand) else {
                break;
            };
            if slot.is_empty() {
                self.hand += 1;
            } else if slot.referenced() {
                slot.set_referenced(false);
                self.hand += 1;
            } else {
                // The hand stays: the removal shifts the next entry of the run into place.
                out.push(self.remove_at(self.hand));
            }
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
            if let Some(s) = self.table.get_mut(j as usize) {
                s.set_dirty(pos);
            }
        }
    }

    /// Empties slot `i` and shifts the rest of its probe run back over the hole (each entry
    /// that may move: one whose home is not between the hole and its position).
    fn remove_at(&mut self, i: usize) -> Slot {
        if let Some(pos) = self.table.get(i).filter(|s| s.dirty()).map(Slot::dirty_pos) {
            self.unlist(pos);
        }
        let Some(removed) = self
            .table
            .get_mut(i)
            .map(|s| std::mem::replace(s, Slot::empty()))
        else {
            return Slot::empty();
        };
        if !removed.is_empty() {
            self.len -= 1;
        }
        let mask = self.mask();
        let mut hole = i;
        let mut j = (i + 1) & mask;
        while let Some(s) = self.table.get(j).filter(|s| !s.is_empty()) {
            let home = s.hash as usize & mask;
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.table.swap(hole, j);
                if let Some(moved) = self.table.get(hole).filter(|s| s.dirty()) {
                    let pos = moved.dirty_pos();
                    if let Some(d) = self.dirty_list.get_mut(pos) {
                        *d = hole as u32;
                    }
                }
                hole = j;
            }
            j = (j + 1) & mask;
        }
        removed
    }

    /// Calls `f` for every dirty entry, then marks them clean (only if every call succeeded).
    pub(crate) fn flush<E>(
        &mut self,
        mut f: impl FnMut(&[u8], Option<&dyn Any>) -> Result<(), E>,
    ) -> Result<(), E> {
        // Many dirty entries (a checkpoint after a busy interval): visit the slots in memory
        // order rather than in the dirty list's, which would cost a cache miss per entry.
        // Callers do not depend on the order (the seal worker sorts).
        let sequential = self.dirty_list.len().saturating_mul(4) >= self.len;
        let mut result = Ok(());
        if sequential {
            for slot in self.table.iter_mut().filter(|s| s.dirty()) {
                if let Err(e) = f(slot.key.as_slice(), slot.value.as_any()) {
                    result = Err(e);
                    break;
                }
                slot.set_clean();
            }
        } else {
            for &i in &self.dirty_list {
                let Some(slot) = self.table.get_mut(i as usize) else {
                    continue;
                };
                if let Err(e) = f(slot.key.as_slice(), slot.value.as_any()) {
                    result = Err(e);
                    break;
                }
                slot.set_clean();
            }
        }
        if let Err(e) = result {
            // Nothing counts as written: every listed entry stays dirty.
            for (pos, &i) in self.dirty_list.iter().enumerate() {
                if let Some(slot) = self.table.get_mut(i as usize) {
                    slot.set_dirty(pos);
                }
            }
            return Err(e);
        }
        self.dirty_list.clear();
        Ok(())
    }

    /// Calls `f` for every dirty entry and marks clean each one it succeeded for; the others
    /// stay dirty. Returns the first error, if any.
    pub(crate) fn flush_each<E>(
        &mut self,
        mut f: impl FnMut(&[u8], Option<&dyn Any>) -> Result<(), E>,
    ) -> Result<(), E> {
        // In memory order when many are dirty, as `flush`.
        let sequential = self.dirty_list.len().saturating_mul(4) >= self.len;
        let mut listed = std::mem::take(&mut self.dirty_list);
        // Positions of the entries left dirty (`f` failed for them: rare).
        let mut kept: Vec<u32> = Vec::new();
        let mut result = Ok(());
        let mut visit =
            |i: usize, slot: &mut Slot| match f(slot.key.as_slice(), slot.value.as_any()) {
                Ok(()) => slot.set_clean(),
                Err(e) => {
                    slot.set_dirty(kept.len());
                    kept.push(i as u32);
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
            };
        if sequential {
            for (i, slot) in self.table.iter_mut().enumerate() {
                if slot.dirty() {
                    visit(i, slot);
                }
            }
        } else {
            for &i in &listed {
                if let Some(slot) = self.table.get_mut(i as usize) {
                    visit(i as usize, slot);
                }
            }
        }
        // The list's allocation is kept for the next dirty entries.
        listed.clear();
        listed.extend_from_slice(&kept);
        self.dirty_list = listed;
        result
    }

    /// The dirty entries: cache key and value (in no particular order).
    pub(crate) fn dirty_entries(&self) -> impl Iterator<Item = (&[u8], Option<&dyn Any>)> {
        self.dirty_list
            .iter()
            .filter_map(|&i| self.table.get(i as usize))
            .map(|slot| (slot.key.as_slice(), slot.value.as_any()))
    }

    /// Forgets the value of `key` if cached: it becomes a clean absent entry.
    pub(crate) fn forget(&mut self, key: &[u8]) {
        if let Ok(i) = self.probe(key, hash_key(key)) {
            if let Some(pos) = self.table.get(i).filter(|s| s.dirty()).map(Slot::dirty_pos) {
                self.unlist(pos);
            }
            if let Some(slot) = self.table.get_mut(i) {
                slot.value = CachedValue::Unknown;
                slot.set_clean();
            }
        }
    }

    /// Checks the table and the dirty list (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        let dirty = self.table.iter().filter(|s| s.dirty()).count();
        assert_eq!(dirty, self.dirty_list.len());
        for (pos, &i) in self.dirty_list.iter().enumerate() {
            let s = &self.table[i as usize];
            assert!(s.dirty() && !s.is_empty());
            assert_eq!(s.dirty_pos(), pos);
        }
        for s in self.table.iter().filter(|s| !s.dirty()) {
            assert_eq!(s.dirty_pos(), 0, "a clean slot keeps no position");
        }
        let mut n = 0;
        for (i, s) in self.table.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
            n += 1;
            assert_eq!(s.hash, hash_key(s.key()));
            assert_eq!(self.probe(s.key(), s.hash), Ok(i), "{s:?} at {i}");
        }
        assert_eq!(n, self.len);
        assert!(self.table.is_empty() || self.len * 8 <= self.table.len() * 5);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: u64) -> CachedValue {
        CachedValue::new(Some(x))
    }

    #[test]
    fn clock_keeps_referenced_entries_and_returns_dirty_evictions() {
        let mut c = Cache::new(8);
        for i in 0..8u8 {
            c.insert(&[i], v(u64::from(i)), i % 2 == 0);
        }
        assert!(c.full());
        // Touch entry 0: it gets a second chance, and the hand's first pass over the table
        // evicts the seven others.
        assert!(c.get(&[0]).is_some());
        let mut evicted = Vec::new();
        for _ in 0..7 {
            let e = c.evict();
            assert_eq!(e.len(), 1);
            assert_eq!(e[0].dirty(), e[0].key()[0].is_multiple_of(2), "{:?}", e[0]);
            assert!(e[0].value.as_any().is_some());
            evicted.push(e[0].key()[0]);
            c.check_invariants();
        }
        evicted.sort_unstable();
        assert_eq!(evicted, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(c.len(), 1);
        assert!(c.get(&[0]).is_some());
        assert!(c.has_dirty());
    }

    #[test]
    fn long_keys_and_colliding_runs_survive_growth_and_removal() {
        // Keys of every length around the inline limit, enough to grow the table several
        // times; then remove every third by eviction and check the rest are all found.
        let mut c = Cache::new(1 << 12);
        let key = |i: u32| -> Vec<u8> {
            let n = (i as usize * 7) % (2 * INLINE_KEY + 3);
            let mut k = i.to_be_bytes().to_vec();
            k.resize(n.max(4), 0xA5);
            k
        };
        for i in 0..1000u32 {
            c.insert(&key(i), v(u64::from(i)), i % 5 == 0);
        }
        c.check_invariants();
        assert_eq!(c.len(), 1000);
        assert_eq!(c.dirty_len(), 200);
        for i in 0..1000u32 {
            let slot = c.get(&key(i)).expect("cached");
            assert_eq!(slot.key(), &key(i)[..]);
            let value = slot
                .value
                .as_any()
                .and_then(|b| b.downcast_ref::<Option<u64>>());
            assert_eq!(value, Some(&Some(u64::from(i))));
        }
        // Every entry is referenced now: the first sweep clears the bits, the second evicts.
        let evicted = c.evict_n(400);
        assert_eq!(evicted.len(), 400);
        c.check_invariants();
        let gone: std::collections::BTreeSet<Vec<u8>> =
            evicted.iter().map(|s| s.key().to_vec()).collect();
        assert_eq!(gone.len(), 400);
        for i in 0..1000u32 {
            assert_eq!(
                c.find(&key(i)).is_some(),
                !gone.contains(&key(i)),
                "key {i}"
            );
        }
    }

    #[test]
    fn primitive_values_live_in_the_slot_and_every_value_reads_back_typed() {
        fn check<V: Clone + PartialEq + std::fmt::Debug + Send + 'static>(
            v: Option<V>,
            inline: bool,
        ) {
            let mut c = CachedValue::new(v.clone());
            assert_eq!(!matches!(c, CachedValue::Boxed(_)), inline, "{v:?}");
            let any = c.as_any().expect("a typed value");
            assert_eq!(any.downcast_ref::<Option<V>>(), Some(&v));
            assert!(any.downcast_ref::<Option<u16>>().is_none(), "another type");
            assert!(
                any.downcast_ref::<V>().is_none(),
                "the value, not its option"
            );
            let m = c.as_any_mut().and_then(|a| a.downcast_mut::<Option<V>>());
            *m.expect("typed") = None;
            assert_eq!(
                c.as_any().and_then(|a| a.downcast_ref::<Option<V>>()),
                Some(&None)
            );
        }
        check(Some(7u64), true);
        check(None::<u64>, true);
        check(Some(-7i64), true);
        check(Some(7u32), true);
        check(Some(-7i32), true);
        check(Some(0.5f64), true);
        check(Some(7u8), false);
        check(Some(String::from("seven")), false);
        check(Some(vec![7u64]), false);
        check(Some((7u64, 7u64)), false);
        assert!(CachedValue::Unknown.as_any().is_none());
    }

    #[test]
    fn flush_visits_dirty_entries_once() {
        let mut c = Cache::new(4);
        c.insert(&[1], v(1), true);
        c.insert(&[2], CachedValue::Unknown, true);
        c.insert(&[3], v(3), false);
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
        c.insert(&[1], v(5), true);
        assert!(c.flush(|_, _| Err(())).is_err());
        assert!(c.has_dirty());
    }

    #[test]
    fn forget_leaves_a_clean_absent_entry() {
        let mut c = Cache::new(8);
        c.insert(&[1], v(1), false);
        c.forget(&[1]);
        c.forget(&[2]);
        let slot = c.get(&[1]).unwrap();
        assert!(slot.value.as_any().is_none() && !slot.dirty());
        assert!(c.get(&[2]).is_none());
    }

    #[test]
    fn flush_cost_follows_dirty_entries_and_survives_evictions() {
        let mut c = Cache::new(16);
        for i in 0..16u8 {
            c.insert(&[i], v(u64::from(i)), false);
        }
        c.insert(&[3], v(30), true);
        let i = c.find(&[3]).unwrap();
        c.mark_dirty_at(i);
        c.insert(&[3], v(31), true);
        c.check_invariants();
        // Evict everything once: 3 goes out dirty (the caller writes it).
        let mut evicted_dirty = 0;
        while c.len() > 8 {
            evicted_dirty += c.evict().iter().filter(|s| s.dirty()).count();
        }
        c.insert(&[100], v(100), true);
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
                c.insert(&[i], v(u64::from(i)), i < dirty);
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
    fn flush_each_leaves_only_the_failed_entries_dirty() {
        // Few dirty entries (visited through the dirty list) and many (visited in slot order).
        for dirty in [4u8, 30] {
            let mut c = Cache::new(64);
            for i in 0..40u8 {
                c.insert(&[i], v(u64::from(i)), i < dirty);
            }
            let failed = c.flush_each(|k, _| if k[0] % 3 == 1 { Err(k[0]) } else { Ok(()) });
            assert!(failed.is_err_and(|k| k % 3 == 1));
            c.check_invariants();
            let mut left: Vec<u8> = c.dirty_entries().map(|(k, _)| k[0]).collect();
            left.sort_unstable();
            let want: Vec<u8> = (0..dirty).filter(|i| i % 3 == 1).collect();
            assert_eq!(left, want, "dirty={dirty}");
            let mut seen = 0;
            c.flush_each(|_, _| {
                seen += 1;
                Ok::<(), ()>(())
            })
            .unwrap();
            assert_eq!(seen, want.len());
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
                            c.insert(&[k], v(u64::from(k)), op == 0);
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

    /// The cache against a model (`BTreeMap` of key → (value, dirty)) under random inserts,
    /// updates in place, forgets, evictions and flushes: keys of 1-40 bytes (inline and on
    /// the heap), `u64` values in the slot and `String` values boxed, a table small enough
    /// that probe runs wrap around its end. Every entry the model holds is found with its
    /// value and dirty flag; an evicted entry leaves the cache with the value and dirty
    /// flag the model had; a flush visits exactly the dirty entries.
    #[test]
    fn matches_a_model_under_random_operations() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        use std::collections::BTreeMap;

        #[derive(Clone, Debug, PartialEq)]
        enum Val {
            Unknown,
            Num(Option<u64>),
            Text(Option<String>),
        }
        fn cached(v: &Val) -> CachedValue {
            match v {
                Val::Unknown => CachedValue::Unknown,
                Val::Num(n) => CachedValue::new(*n),
                Val::Text(t) => CachedValue::new(t.clone()),
            }
        }
        fn read(c: &CachedValue) -> Val {
            match c.as_any() {
                None => Val::Unknown,
                Some(a) => match a.downcast_ref::<Option<u64>>() {
                    Some(n) => Val::Num(*n),
                    None => Val::Text(a.downcast_ref::<Option<String>>().cloned().expect("typed")),
                },
            }
        }
        // Key `k` of the pool: its length depends on `k`, its bytes on `k` too.
        fn key(k: u8) -> Vec<u8> {
            let len = 1 + usize::from(k) * 13 % 40;
            (0..len)
                .map(|i| k.wrapping_mul(31).wrapping_add(i as u8))
                .collect()
        }
        let cases = std::env::var("CAIRN_MODEL_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128);
        let ops = proptest::collection::vec((0u8..7, 0u8..60, any::<u16>()), 1..400);
        TestRunner::new(Config::with_cases(cases))
            .run(&ops, |ops| {
                let capacity = 12;
                let mut c = Cache::new(capacity);
                let mut model: BTreeMap<Vec<u8>, (Val, bool)> = BTreeMap::new();
                for (op, k, x) in ops {
                    let kb = key(k);
                    let val = match x % 4 {
                        0 => Val::Unknown,
                        1 => Val::Text(Some(format!("v{x}"))),
                        2 => Val::Num(None),
                        _ => Val::Num(Some(u64::from(x))),
                    };
                    match op {
                        0 | 1 => {
                            if c.full() && c.find(&kb).is_none() {
                                for e in c.evict() {
                                    let (v, dirty) =
                                        model.remove(e.key()).expect("evicted a cached key");
                                    prop_assert_eq!(read(&e.value), v);
                                    prop_assert_eq!(e.dirty(), dirty);
                                }
                            }
                            let dirty = op == 0 || model.get(&kb).is_some_and(|m| m.1);
                            c.insert(&kb, cached(&val), op == 0);
                            model.insert(kb, (val, dirty));
                        }
                        2 => {
                            // An update in place, as the backend's `modify` does it.
                            if let Some(i) = c.find(&kb) {
                                if let Some(slot) = c.slot_mut(i) {
                                    slot.value = cached(&val);
                                }
                                c.mark_dirty_at(i);
                                model.insert(kb, (val, true));
                            }
                        }
                        3 => {
                            c.forget(&kb);
                            if let Some(m) = model.get_mut(&kb) {
                                *m = (Val::Unknown, false);
                            }
                        }
                        4 => {
                            let mut seen = BTreeMap::new();
                            c.flush(|key, value| {
                                let v = value.map_or(Val::Unknown, |a| {
                                    a.downcast_ref::<Option<u64>>().map_or_else(
                                        || {
                                            Val::Text(
                                                a.downcast_ref::<Option<String>>()
                                                    .cloned()
                                                    .expect("typed"),
                                            )
                                        },
                                        |n| Val::Num(*n),
                                    )
                                });
                                seen.insert(key.to_vec(), v);
                                Ok::<(), ()>(())
                            })
                            .unwrap();
                            let dirty: BTreeMap<_, _> = model
                                .iter_mut()
                                .filter(|(_, m)| m.1)
                                .map(|(k, m)| {
                                    m.1 = false;
                                    (k.clone(), m.0.clone())
                                })
                                .collect();
                            prop_assert_eq!(seen, dirty);
                        }
                        _ => {
                            prop_assert_eq!(c.find(&kb).is_some(), model.contains_key(&kb));
                        }
                    }
                    c.check_invariants();
                    prop_assert_eq!(c.len(), model.len());
                    prop_assert!(c.len() <= capacity);
                    for (mk, (mv, md)) in &model {
                        let slot = c.get(mk).expect("every model key is cached");
                        prop_assert_eq!(slot.key(), &mk[..]);
                        prop_assert_eq!(&read(&slot.value), mv);
                        prop_assert_eq!(slot.dirty(), *md);
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}
