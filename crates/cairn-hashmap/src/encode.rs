//! Canonical entries of one key group in file order: encoded into an arena and sorted (any
//! state), or sorted by key and written straight from the table (one value per key).

use std::cmp::Ordering;

use cairn_core::{Codec, CodecError, KeyGroup, Result, StateError};
use cairn_format::{encode_list, EntryRef, StateFileWriter};

/// The first 8 bytes of `key`, big-endian and zero-padded: integer order on prefixes is the
/// byte-wise order of the keys wherever the prefixes differ.
#[inline]
pub(crate) fn key_prefix(key: &[u8]) -> u64 {
    match key.get(..8) {
        Some(first) => u64::from_be_bytes(first.try_into().unwrap_or_default()),
        None if key.is_empty() => 0,
        // Without a `memcpy` call for the variable length.
        None => key.iter().fold(0u64, |w, b| (w << 8) | u64::from(*b)) << (8 * (8 - key.len())),
    }
}

/// A state file writer positioned at one key group; format errors name the file being
/// written and the key group.
pub(crate) struct KgWriter<'a> {
    pub(crate) writer: &'a mut StateFileWriter,
    pub(crate) kg: KeyGroup,
    /// What is being written (`uid`, checkpoint id), for errors.
    pub(crate) context: &'a dyn Fn() -> String,
}

impl KgWriter<'_> {
    /// Appends an entry of this key group.
    #[inline]
    pub(crate) fn add(
        &mut self,
        state: u32,
        key: &[u8],
        namespace: &[u8],
        user_key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<()> {
        self.writer
            .add(&EntryRef {
                key_group: self.kg,
                state,
                key,
                namespace,
                user_key,
                value,
            })
            .map_err(|e| {
                StateError::layer(format!("{} key_group={}", (self.context)(), self.kg), e)
            })
    }
}

/// A byte range in an arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: usize,
    end: usize,
}

impl Span {
    #[inline]
    pub(crate) fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start..self.end).unwrap_or(&[])
    }
}

/// Appends `bytes` to `buf` and returns their span.
pub(crate) fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) -> Span {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    Span {
        start,
        end: buf.len(),
    }
}

/// Appends what `f` writes to `buf` and returns its span.
pub(crate) fn push_with<E>(
    buf: &mut Vec<u8>,
    f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Span, E> {
    let start = buf.len();
    f(buf)?;
    Ok(Span {
        start,
        end: buf.len(),
    })
}

/// The part shared by every canonical entry of one `(state, key, namespace)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub(crate) state: u32,
    pub(crate) key: Span,
    pub(crate) ns: Span,
}

#[derive(Clone, Copy, Debug)]
struct Encoded {
    head: Head,
    user_key: Option<Span>,
    value: Span,
}

/// The word a key group's entries are sorted by: the state (bits 96..128), the first 8 bytes
/// of the key, big-endian and zero-padded (bits 32..96), and the entry's index (bits 0..32).
/// Integer order on the upper 96 bits is the byte-wise order of `(state, key)` wherever the
/// prefixes differ; entries with equal prefixes are ordered by [`compare`] afterwards.
fn sort_word(buf: &[u8], e: &Encoded, index: usize) -> u128 {
    (u128::from(e.head.state) << 96)
        | (u128::from(key_prefix(e.head.key.of(buf))) << 32)
        | (index as u128 & 0xffff_ffff)
}

/// The entry index of a sort word.
#[inline]
fn word_index(w: u128) -> usize {
    (w & 0xffff_ffff) as usize
}

/// Below this many records a comparison sort beats the radix sort's fixed costs.
const RADIX_MIN: usize = 256;

/// Sorts `v` by `prefix` (stable LSD radix sort, one pass per byte in which the prefixes
/// differ; `tmp` is scratch space). Key groups hold thousands of entries, where this is a
/// few times faster than a comparison sort.
fn sort_by_prefix(v: &mut Vec<Slim>, tmp: &mut Vec<Slim>) {
    let n = v.len();
    if n < RADIX_MIN {
        v.sort_unstable_by_key(|e| e.prefix);
        return;
    }
    let mut counts = [[0u32; 256]; 8];
    for e in v.iter() {
        for (byte, c) in counts.iter_mut().enumerate() {
            c[(e.prefix >> (8 * byte)) as usize & 0xff] += 1;
        }
    }
    tmp.clear();
    tmp.resize(n, Slim::default());
    for (byte, c) in counts.iter().enumerate() {
        if c.iter().any(|&k| k as usize == n) {
            // Every prefix has the same byte here: the pass would not move anything.
            continue;
        }
        let mut next = [0usize; 256];
        let mut sum = 0;
        for (slot, &k) in next.iter_mut().zip(c.iter()) {
            *slot = sum;
            sum += k as usize;
        }
        for e in v.iter() {
            let digit = (e.prefix >> (8 * byte)) as usize & 0xff;
            tmp[next[digit]] = *e;
            next[digit] += 1;
        }
        std::mem::swap(v, tmp);
    }
}

/// An entry of a state with one value per key and a single namespace value, encoded when
/// the key group is read: `buf[start..start + key_len]` is the key, the value follows up
/// to `end`. 24 bytes, sorted by `prefix` ([`key_prefix`]) and then by the key.
#[derive(Clone, Copy, Debug, Default)]
struct Slim {
    prefix: u64,
    start: u32,
    key_len: u32,
    end: u32,
}

impl Slim {
    #[inline]
    fn key<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        buf.get(start..start + self.key_len as usize).unwrap_or(&[])
    }
    #[inline]
    fn value<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize + self.key_len as usize;
        buf.get(start..self.end as usize).unwrap_or(&[])
    }
}

/// The encoded entries of one key group of every state of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct KgBuffer {
    /// The arena every span points into.
    pub(crate) buf: Vec<u8>,
    /// Scratch space for list elements.
    scratch: Vec<u8>,
    /// Scratch spans for list elements.
    spans: Vec<Span>,
    items: Vec<Encoded>,
    /// Scratch space of the sort ([`sort_word`]).
    order: Vec<u128>,
    /// `items` in file order.
    sorted: Vec<Encoded>,
    /// Entries of a one-value-per-key state ([`KgBuffer::push_slim`]).
    slims: Vec<Slim>,
    /// Scratch space of their sort.
    slims_tmp: Vec<Slim>,
}

impl KgBuffer {
    /// Empties the buffer, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
        self.slims.clear();
    }

    /// Adds the entry of `key` (of a state with one value per key and a single namespace
    /// value) whose value `encode` appends. `Ok(false)`: the arena outgrew 32-bit offsets
    /// (more than 4 GiB in one key group of one state), nothing was added and the caller
    /// must use [`KgBuffer::head`] and [`KgBuffer::push`] instead.
    #[inline]
    pub(crate) fn push_slim(
        &mut self,
        key: &[u8],
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<bool, CodecError> {
        let start = self.buf.len();
        self.buf.extend_from_slice(key);
        encode(&mut self.buf)?;
        let (Ok(start32), Ok(key_len), Ok(end)) = (
            u32::try_from(start),
            u32::try_from(key.len()),
            u32::try_from(self.buf.len()),
        ) else {
            self.buf.truncate(start);
            return Ok(false);
        };
        self.slims.push(Slim {
            prefix: key_prefix(key),
            start: start32,
            key_len,
            end,
        });
        Ok(true)
    }

    /// Sorts the entries added by [`KgBuffer::push_slim`] by key and appends them to `out`
    /// as state `state` with namespace `ns`.
    pub(crate) fn write_slims(
        &mut self,
        state: u32,
        ns: &[u8],
        out: &mut KgWriter<'_>,
    ) -> Result<()> {
        let buf = &self.buf;
        sort_by_prefix(&mut self.slims, &mut self.slims_tmp);
        // Keys whose first 8 bytes are equal (longer keys, zero-padded shorter ones): by the
        // whole key.
        let slims = &mut self.slims;
        let mut start = 0;
        while start < slims.len() {
            let prefix = slims[start].prefix;
            let end = slims[start..]
                .iter()
                .position(|e| e.prefix != prefix)
                .map_or(slims.len(), |k| start + k);
            if end - start > 1 {
                slims[start..end].sort_unstable_by(|a, b| a.key(buf).cmp(b.key(buf)));
            }
            start = end;
        }
        for e in &self.slims {
            out.add(state, e.key(buf), ns, None, e.value(buf))?;
        }
        Ok(())
    }

    /// Starts the entries of `(state, key, namespace)`; `encode_ns` appends the namespace.
    pub(crate) fn head(
        &mut self,
        state: u32,
        key: &[u8],
        encode_ns: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Head, CodecError> {
        let key = push_bytes(&mut self.buf, key);
        let ns = push_with(&mut self.buf, encode_ns)?;
        Ok(Head { state, key, ns })
    }

    /// Starts the entries of `(state, key, namespace)` whose namespace is already in the
    /// arena at `ns`.
    pub(crate) fn head_with_ns(&mut self, state: u32, key: &[u8], ns: Span) -> Head {
        let key = push_bytes(&mut self.buf, key);
        Head { state, key, ns }
    }

    /// Adds one canonical entry.
    pub(crate) fn push(&mut self, head: Head, user_key: Option<Span>, value: Span) {
        self.items.push(Encoded {
            head,
            user_key,
            value,
        });
    }

    /// Adds the entry of a list: the canonical list encoding of its elements.
    pub(crate) fn push_list<V: 'static>(
        &mut self,
        head: Head,
        elements: &[V],
        codec: &dyn Codec<V>,
    ) -> Result<(), CodecError> {
        self.scratch.clear();
        self.spans.clear();
        for e in elements {
            let span = push_with(&mut self.scratch, |b| codec.encode(e, b))?;
            self.spans.push(span);
        }
        let (scratch, spans) = (&self.scratch, &self.spans);
        let value = push_with(&mut self.buf, |b| {
            encode_list(spans.iter().map(|s| s.of(scratch)), b);
            Ok::<(), CodecError>(())
        })?;
        self.push(head, None, value);
        Ok(())
    }

    /// Sorts the entries by `(state, key, namespace, user key)` and appends them to `out`.
    pub(crate) fn write_sorted(&mut self, out: &mut KgWriter<'_>) -> Result<()> {
        self.sort();
        // Gather the entries in file order first: a tight loop of independent loads, where
        // the writer's loop would wait for every random access.
        let items = &self.items;
        self.sorted.clear();
        self.sorted
            .extend(self.order.iter().map(|&w| items[word_index(w)]));
        let buf = &self.buf;
        for e in &self.sorted {
            out.add(
                e.head.state,
                e.head.key.of(buf),
                e.head.ns.of(buf),
                e.user_key.map(|s| s.of(buf)),
                e.value.of(buf),
            )?;
        }
        Ok(())
    }

    /// Fills `order` with the entries in file order: an integer sort of the sort words, then
    /// runs of equal `(state, key prefix)` (keys longer than 8 bytes, namespaces, user keys)
    /// sorted by the full comparison.
    fn sort(&mut self) {
        let (buf, items, order) = (&self.buf, &self.items, &mut self.order);
        order.clear();
        if items.len() > u32::MAX as usize {
            // Indexes do not fit the sort word (never in practice): one run of everything.
            order.extend((0..items.len()).map(|i| i as u128));
            order.sort_unstable_by(|a, b| compare(buf, &items[*a as usize], &items[*b as usize]));
            return;
        }
        order.extend(items.iter().enumerate().map(|(i, e)| sort_word(buf, e, i)));
        order.sort_unstable();
        let mut start = 0;
        while start < order.len() {
            let head = order[start] >> 32;
            let end = order[start..]
                .iter()
                .position(|w| w >> 32 != head)
                .map_or(order.len(), |n| start + n);
            if end - start > 1 {
                order[start..end].sort_unstable_by(|a, b| {
                    compare(buf, &items[word_index(*a)], &items[word_index(*b)])
                });
            }
            start = end;
        }
    }
}

fn compare(buf: &[u8], a: &Encoded, b: &Encoded) -> Ordering {
    a.head
        .state
        .cmp(&b.head.state)
        .then_with(|| a.head.key.of(buf).cmp(b.head.key.of(buf)))
        .then_with(|| a.head.ns.of(buf).cmp(b.head.ns.of(buf)))
        .then_with(|| {
            a.user_key
                .map(|s| s.of(buf))
                .cmp(&b.user_key.map(|s| s.of(buf)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_orders_by_prefix() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for n in [0usize, 1, 255, 256, 1000, 5000] {
            let mut v: Vec<Slim> = (0..n)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Few distinct high bytes, some equal prefixes.
                    let prefix = match i % 3 {
                        0 => x & 0xffff,
                        1 => x & 0xff00_0000_0000_00ff,
                        _ => (i as u64 / 7) << 40,
                    };
                    Slim {
                        prefix,
                        start: i as u32,
                        ..Slim::default()
                    }
                })
                .collect();
            let mut expected = v.clone();
            expected.sort_by_key(|e| e.prefix);
            sort_by_prefix(&mut v, &mut Vec::new());
            let got: Vec<(u64, u32)> = v.iter().map(|e| (e.prefix, e.start)).collect();
            let want: Vec<(u64, u32)> = expected.iter().map(|e| (e.prefix, e.start)).collect();
            if n >= RADIX_MIN {
                // Stable: equal prefixes keep their order.
                assert_eq!(got, want, "n={n}");
            } else {
                assert_eq!(
                    got.iter().map(|e| e.0).collect::<Vec<_>>(),
                    want.iter().map(|e| e.0).collect::<Vec<_>>()
                );
            }
        }
    }
}
