//! The sharded copy-on-write hash table that holds one state's entries.
//!
//! A state's entries are split by key group (index `kg - range.start`) and, within a key
//! group, into a fixed number of shards chosen by bits of the entry's in-memory hash. Every
//! shard is owned by the live table and written without atomic operations; the synchronous
//! phase of a snapshot moves every non-empty shard into an `Arc` shared with the snapshot
//! (`O(shards)`, independent of the number of entries), and the first write to a shared
//! shard takes it back, cloning it only if the snapshot still holds it.
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

/// Keys up to this many bytes are stored inside the entry (no allocation, no pointer to
/// follow, compared without a `memcmp` call); the stored key is then 16 bytes.
const INLINE_KEY_LEN: usize = 14;

/// A short key, zero-padded, with its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct InlineKey {
    len: u8,
    bytes: [u8; INLINE_KEY_LEN],
}

impl InlineKey {
    /// The inline form of `key`, if it is short enough.
    ///
    /// The key is gathered in registers (two overlapping loads), not copied with a
    /// length-dependent `memcpy` into the padded array: reading such an array back right
    /// away defeats store-to-load forwarding, and the read then waits for every earlier
    /// store to reach the cache. W1 with the changelog, whose log appends miss the cache,
    /// spent 13% of its task thread there; it runs 4-9% faster without the `memcpy`.
    #[inline]
    pub(crate) fn new(key: &[u8]) -> Option<Self> {
        if key.len() > INLINE_KEY_LEN {
            return None;
        }
        let word = load_le(key).to_le_bytes();
        let mut bytes = [0u8; INLINE_KEY_LEN];
        bytes.copy_from_slice(word.get(..INLINE_KEY_LEN)?);
        Some(Self {
            len: key.len() as u8,
            bytes,
        })
    }
}

/// `key` (at most 16 bytes) as a little-endian integer: byte `i` of the key is byte `i` of
/// the result, the bytes past its end are zero.
#[inline]
fn load_le(key: &[u8]) -> u128 {
    /// The first and the last `W` bytes of `key` (`W <= key.len() < 2 * W`), or'ed into
    /// place: the bytes they share are equal.
    #[inline]
    fn overlapping<const W: usize>(key: &[u8], to_int: impl Fn([u8; W]) -> u128) -> u128 {
        let n = key.len();
        let first = key.first_chunk::<W>().copied().map_or(0, &to_int);
        let last = key.last_chunk::<W>().copied().map_or(0, &to_int);
        first | (last << ((n - W) * 8))
    }
    match key.len() {
        8..=16 => overlapping::<8>(key, |b| u64::from_le_bytes(b).into()),
        4..=7 => overlapping::<4>(key, |b| u32::from_le_bytes(b).into()),
        _ => key
            .iter()
            .enumerate()
            .fold(0, |v, (i, &b)| v | (u128::from(b) << (i * 8))),
    }
}

/// A serialized key as an entry stores it: inline when short, else on the heap. The form is
/// a function of the length, so keys of different forms are never equal.
#[derive(Clone, Debug)]
pub(crate) enum KeyBytes {
    Inline(InlineKey),
    /// Boxed twice so that the variant is one thin pointer and `KeyBytes` 16 bytes.
    Heap(Box<Box<[u8]>>),
}

impl KeyBytes {
    #[cfg(test)]
    pub(crate) fn new(key: &[u8]) -> Self {
        match InlineKey::new(key) {
            Some(k) => KeyBytes::Inline(k),
            None => KeyBytes::Heap(Box::new(key.into())),
        }
    }

    #[inline]
    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            KeyBytes::Inline(k) => k.bytes.get(..k.len as usize).unwrap_or(&[]),
            KeyBytes::Heap(b) => b,
        }
    }

    /// Whether this is the key of `at`.
    #[inline]
    fn matches(&self, at: &At<'_>) -> bool {
        match (self, &at.inline) {
            (KeyBytes::Inline(a), Some(b)) => a == b,
            (KeyBytes::Heap(a), None) => ***a == *at.key,
            _ => false,
        }
    }
}

/// One entry: the serialized key, the namespace and the value. (The hash is not stored:
/// it is recomputed when a table grows, which keeps entries small.)
#[derive(Clone, Debug)]
pub(crate) struct Item<N, T> {
    pub(crate) key: KeyBytes,
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
    /// `InlineKey::new(key)`, computed once per current key.
    pub(crate) inline: Option<InlineKey>,
}

impl<'a> At<'a> {
    /// An access to `key` in key group index `kg_idx`.
    pub(crate) fn new(kg_idx: usize, key: &'a [u8]) -> Self {
        Self {
            kg_idx,
            key_hash: key_hash(key),
            key,
            inline: InlineKey::new(key),
        }
    }

    /// The key as an entry stores it.
    #[inline]
    pub(crate) fn key_bytes(&self) -> KeyBytes {
        match self.inline {
            Some(k) => KeyBytes::Inline(k),
            None => KeyBytes::Heap(Box::new(self.key.into())),
        }
    }
}

/// A shard as the live table holds it: owned (written without any atomic operation) or
/// shared with snapshots (unshared on the first write).
#[derive(Debug)]
enum Slot<N, T> {
    Owned(Shard<N, T>),
    Shared(Arc<Shard<N, T>>),
}

impl<N, T> Slot<N, T> {
    #[inline]
    fn get(&self) -> &Shard<N, T> {
        match self {
            Slot::Owned(t) => t,
            Slot::Shared(t) => t,
        }
    }
}

/// The entries of one state, sharded by key group and hash.
#[derive(Debug)]
pub(crate) struct ShardedTable<N, T> {
    slots: Vec<Slot<N, T>>,
    per_kg: usize,
}

/// The shards of a [`ShardedTable`] as a snapshot holds them: immutable and shared.
#[derive(Debug)]
pub(crate) struct FrozenTable<N, T> {
    shards: Vec<Arc<Shard<N, T>>>,
    per_kg: usize,
}

impl<N, T> FrozenTable<N, T> {
    /// Every entry of key group index `kg_idx`, in no particular order.
    pub(crate) fn iter_kg(&self, kg_idx: usize) -> impl Iterator<Item = &Item<N, T>> {
        let start = kg_idx * self.per_kg;
        self.shards
            .get(start..start + self.per_kg)
            .unwrap_or(&[])
            .iter()
            .flat_map(|s| s.iter())
    }
}

impl<N: Clone + Eq + Hash, T: Clone> ShardedTable<N, T> {
    /// An empty table for `key_groups` key groups.
    pub(crate) fn new(key_groups: u32, per_kg: usize) -> Self {
        let n = key_groups as usize * per_kg;
        Self {
            slots: (0..n).map(|_| Slot::Owned(HashTable::new())).collect(),
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
        let shard = self.slots.get(self.slot(at.kg_idx, hash))?.get();
        touch_home(shard, hash);
        shard
            .find(hash, |e| e.key.matches(at) && e.ns == *ns)
            .map(|e| &e.value)
    }

    /// Touches the home bucket of the entry with hash `hash` in key group `kg_idx` (see
    /// [`touch_home`]).
    #[inline]
    pub(crate) fn touch(&self, kg_idx: usize, hash: u64) {
        if let Some(slot) = self.slots.get(self.slot(kg_idx, hash)) {
            touch_home(slot.get(), hash);
        }
    }

    /// The shard of `(at.key, ns)`, unshared (cloned if a snapshot still holds it), and the
    /// entry's hash. `None` only if `at.kg_idx` is out of range (an internal error).
    #[inline]
    pub(crate) fn shard_mut(&mut self, at: &At<'_>, ns: &N) -> Option<(&mut Shard<N, T>, u64)> {
        let hash = entry_hash(at.key_hash, ns);
        let idx = self.slot(at.kg_idx, hash);
        let slot = self.slots.get_mut(idx)?;
        if matches!(slot, Slot::Shared(_)) {
            unshare(slot);
        }
        match slot {
            Slot::Owned(t) => {
                touch_home(t, hash);
                Some((t, hash))
            }
            Slot::Shared(_) => None,
        }
    }

    /// The synchronous phase: shares every non-empty shard with the returned snapshot
    /// (`O(shards)`, independent of the number of entries; one small allocation per shard
    /// written since the previous snapshot).
    pub(crate) fn freeze(&mut self) -> FrozenTable<N, T> {
        let empty = Arc::new(HashTable::new());
        let shards = self
            .slots
            .iter_mut()
            .map(|slot| match slot {
                Slot::Shared(t) => t.clone(),
                Slot::Owned(t) if t.is_empty() => empty.clone(),
                Slot::Owned(t) => {
                    let t = Arc::new(std::mem::take(t));
                    *slot = Slot::Shared(t.clone());
                    t
                }
            })
            .collect();
        FrozenTable {
            shards,
            per_kg: self.per_kg,
        }
    }

    /// Removes `(at.key, ns)`; does not unshare the shard when there is nothing to remove.
    pub(crate) fn remove(&mut self, at: &At<'_>, ns: &N) -> Option<T> {
        self.get(at, ns)?;
        let (shard, hash) = self.shard_mut(at, ns)?;
        match find_entry(shard, hash, at, ns) {
            Entry::Occupied(o) => Some(o.remove().0.value),
            Entry::Vacant(_) => None,
        }
    }

    /// Visits the next `buckets` buckets from `cursor` (a slot and a bucket in it, moved on
    /// past them; past the last slot it starts over): each entry whose value `stale` picks
    /// is given to `retain`, which may change it and says whether anything is left, else
    /// the entry is removed. A slot is unshared only when it holds such an entry. Returns
    /// the key group index of every slot where an entry changed.
    pub(crate) fn sweep(
        &mut self,
        cursor: &mut (usize, usize),
        buckets: usize,
        stale: impl Fn(&T) -> bool,
        mut retain: impl FnMut(&mut T) -> bool,
        mut changed: impl FnMut(usize),
    ) {
        let mut left = buckets;
        while left > 0 && !self.slots.is_empty() {
            let (slot_idx, bucket) = *cursor;
            let Some(slot) = self.slots.get_mut(slot_idx) else {
                *cursor = (0, 0);
                continue;
            };
            let total = slot.get().num_buckets();
            let end = total.min(bucket + left);
            let first_stale =
                (bucket..end).find(|&i| slot.get().get_bucket(i).is_some_and(|e| stale(&e.value)));
            if let Some(from) = first_stale {
                if matches!(slot, Slot::Shared(_)) {
                    unshare(slot);
                }
                if let Slot::Owned(shard) = slot {
                    for i in from..end {
                        if let Ok(entry) = shard.get_bucket_entry(i) {
                            // Removing an entry moves no other (hashbrown marks its bucket).
                            let mut entry = entry;
                            if stale(&entry.get().value) && !retain(&mut entry.get_mut().value) {
                                entry.remove();
                            }
                        }
                    }
                }
                changed(slot_idx / self.per_kg);
            }
            left -= end - bucket;
            *cursor = if end >= total {
                (slot_idx + 1, 0)
            } else {
                (slot_idx, end)
            };
            if end == bucket && end >= total {
                // An empty slot costs a step, so a table of empty slots ends the loop.
                left = left.saturating_sub(1);
            }
        }
    }

    /// Every entry.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Item<N, T>> {
        self.slots.iter().flat_map(|s| s.get().iter())
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.iter().map(|s| s.get().len()).sum()
    }
}

/// Starts loading the home bucket of `hash` (where the table's probe for `hash` starts):
/// a lookup in a large table waits for two cache misses in turn, the control bytes and then
/// the entry they point to; reading the home bucket first, at an address known from the hash
/// alone, lets the CPU fetch both at once. An entry present in the table always has a full
/// home bucket (it was inserted there, or the home was taken), so the check before the read
/// is predictable; most entries sit in their home bucket or its cache line. A hint only: the
/// lookup that follows is unchanged.
#[inline(always)]
fn touch_home<N, T>(shard: &Shard<N, T>, hash: u64) {
    let buckets = shard.num_buckets();
    if let Some(item) = shard.get_bucket(hash as usize & buckets.wrapping_sub(1)) {
        std::hint::black_box(matches!(item.key, KeyBytes::Inline(_)));
    }
}

/// Makes a shared slot owned: takes the table if no snapshot holds it any more, else
/// clones it.
#[cold]
fn unshare<N: Clone, T: Clone>(slot: &mut Slot<N, T>) {
    let taken = std::mem::replace(slot, Slot::Owned(HashTable::new()));
    *slot = Slot::Owned(match taken {
        Slot::Owned(t) => t,
        Slot::Shared(t) => Arc::unwrap_or_clone(t),
    });
}

/// The hashbrown entry of `(key, ns)` in `shard`.
#[inline]
pub(crate) fn find_entry<'a, N: Eq + Hash, T>(
    shard: &'a mut Shard<N, T>,
    hash: u64,
    at: &At<'_>,
    ns: &N,
) -> Entry<'a, Item<N, T>> {
    shard.entry(hash, |e| e.key.matches(at) && e.ns == *ns, rehash)
}

/// The hash of an entry, recomputed (when a table grows).
fn rehash<N: Hash, T>(e: &Item<N, T>) -> u64 {
    entry_hash(key_hash(e.key.as_slice()), &e.ns)
}

/// The value of `(at.key, ns)` in `shard`, for update in place.
#[inline]
pub(crate) fn find_mut<'a, N: Eq, T>(
    shard: &'a mut Shard<N, T>,
    hash: u64,
    at: &At<'_>,
    ns: &N,
) -> Option<&'a mut T> {
    shard
        .find_mut(hash, |e| e.key.matches(at) && e.ns == *ns)
        .map(|e| &mut e.value)
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
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<KeyBytes>(), 16);
        assert_eq!(std::mem::size_of::<Item<(), u64>>(), 24);
    }

    #[test]
    fn inline_keys_hold_every_byte_and_zero_padding() {
        for len in 0..=INLINE_KEY_LEN {
            // Distinct non-zero bytes, so a byte in the wrong place or a lost byte shows.
            let key: Vec<u8> = (0..len).map(|i| 0xa0 + i as u8).collect();
            let inline = InlineKey::new(&key).expect("short key");
            assert_eq!(usize::from(inline.len), len);
            assert_eq!(&inline.bytes[..len], key.as_slice(), "len {len}");
            assert!(inline.bytes[len..].iter().all(|&b| b == 0), "len {len}");
            let mut other = key.clone();
            if let Some(last) = other.last_mut() {
                *last ^= 1;
                assert_ne!(InlineKey::new(&other), Some(inline), "len {len}");
            }
        }
        assert_eq!(InlineKey::new(&[7; INLINE_KEY_LEN + 1]), None);
    }

    #[test]
    fn short_and_long_keys() {
        for len in [0usize, 1, 13, 14, 15, 100] {
            let key: Vec<u8> = (0..len as u8).collect();
            let at = At::new(0, &key);
            let stored = KeyBytes::new(&key);
            assert_eq!(stored.as_slice(), key.as_slice());
            assert!(stored.matches(&at));
            assert_eq!(at.key_bytes().as_slice(), key.as_slice());
            let mut other = key.clone();
            other.push(0);
            assert!(!stored.matches(&At::new(0, &other)), "len {len}");
        }
    }

    #[test]
    fn clone_shares_until_written() {
        let mut t = ShardedTable::<(), u64>::new(2, 4);
        let at = At::new(1, b"k");
        let (shard, hash) = t.shard_mut(&at, &()).unwrap();
        if let Entry::Vacant(v) = find_entry(shard, hash, &at, &()) {
            v.insert(Item {
                key: at.key_bytes(),
                ns: (),
                value: 1,
            });
        }
        let snap = t.freeze();
        let (shard, hash) = t.shard_mut(&at, &()).unwrap();
        if let Entry::Occupied(mut o) = find_entry(shard, hash, &at, &()) {
            o.get_mut().value = 2;
        }
        assert_eq!(snap.iter_kg(1).map(|e| e.value).collect::<Vec<_>>(), [1]);
        assert_eq!(t.get(&at, &()), Some(&2));
        assert_eq!(t.remove(&at, &()), Some(2));
        assert_eq!(t.len(), 0);
        assert_eq!(snap.iter_kg(1).count(), 1);
        assert_eq!(snap.iter_kg(0).count(), 0);
    }
}
