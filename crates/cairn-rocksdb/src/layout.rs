//! How entries are laid out in RocksDB: keys and values.
//!
//! ```text
//! key   = key_group u16 BE | esc(key) | esc(namespace) | user_key (raw, map state only)
//! esc(b) = b with every 0x00 replaced by 0x00 0xFF, then the terminator 0x00 0x01
//! ```
//!
//! The escaping preserves order and makes each field self-delimiting, so the byte order of
//! RocksDB keys is the canonical order of the format spec: key group, then key, then
//! namespace, then user key, each compared byte-wise. A state file's key-group section is
//! therefore one sequential scan of each state's column family, and a key group (or a key
//! and namespace of a map) is a contiguous key range.
//!
//! Values are the codec's bytes, except lists: they are stored as the concatenation of
//! `len u32 LE, element bytes` so that appending is a merge that concatenates, without a
//! read. The canonical list value (`cairn_format::encode_list`) is the same with a leading
//! `count u32`; [`list_to_canonical`] and [`list_from_canonical`] convert.

use cairn_core::KeyGroup;

/// Bytes of the key-group prefix.
pub(crate) const KG_PREFIX_LEN: usize = 2;
const ESCAPE: u8 = 0xFF;
const TERMINATOR: u8 = 0x01;
const LEN_PREFIX: usize = 4;

/// Appends the key-group prefix.
#[inline]
pub(crate) fn push_kg(out: &mut Vec<u8>, kg: KeyGroup) {
    // Key groups are < MAX_MAX_PARALLELISM (2^15), so they fit a u16.
    out.extend_from_slice(&(kg as u16).to_be_bytes());
}

/// The first key of key group `kg` (also the exclusive end of `kg - 1`).
pub(crate) fn kg_bound(kg: KeyGroup) -> Vec<u8> {
    let mut v = Vec::with_capacity(KG_PREFIX_LEN);
    push_kg(&mut v, kg);
    v
}

/// A key greater than every key of every key group.
pub(crate) fn end_of_all() -> Vec<u8> {
    vec![0xFF; KG_PREFIX_LEN + 1]
}

/// Appends `esc(bytes)`.
#[inline]
pub(crate) fn push_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(ESCAPE);
        }
    }
    out.push(0);
    out.push(TERMINATOR);
}

/// Escapes the field that starts at `start` in place (it was appended raw by a codec),
/// without allocating beyond growing `out`.
#[inline]
pub(crate) fn escape_tail(out: &mut Vec<u8>, start: usize) {
    let start = start.min(out.len());
    let zeros = out[start..].iter().filter(|b| **b == 0).count();
    if zeros > 0 {
        // Walk backwards, writing each byte (and an escape after each zero) at its final
        // position; the write cursor never passes the read cursor.
        let mut r = out.len();
        out.resize(r + zeros, 0);
        let mut w = out.len();
        while r > start {
            r -= 1;
            let b = out[r];
            if b == 0 {
                w -= 1;
                out[w] = ESCAPE;
            }
            w -= 1;
            out[w] = b;
        }
    }
    out.push(0);
    out.push(TERMINATOR);
}

/// Reads one escaped field from the front of `bytes`: the unescaped bytes and the rest.
fn take_escaped(bytes: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(&ESCAPE) => {
                out.push(0);
                i += 2;
            }
            Some(&TERMINATOR) => return Some((out, bytes.get(i + 2..).unwrap_or(&[]))),
            _ => return None,
        }
    }
    None
}

/// A RocksDB key decoded into its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodedKey<'a> {
    pub(crate) key_group: KeyGroup,
    pub(crate) key: Vec<u8>,
    pub(crate) namespace: Vec<u8>,
    /// Whatever follows the namespace (the user key of map state; empty otherwise).
    pub(crate) rest: &'a [u8],
}

/// Decodes a RocksDB key; `None` if it is malformed.
pub(crate) fn decode_key(bytes: &[u8]) -> Option<DecodedKey<'_>> {
    let (kg, rest) = bytes.split_at_checked(KG_PREFIX_LEN)?;
    let key_group = KeyGroup::from(u16::from_be_bytes([kg[0], kg[1]]));
    let (key, rest) = take_escaped(rest)?;
    let (namespace, rest) = take_escaped(rest)?;
    Some(DecodedKey {
        key_group,
        key,
        namespace,
        rest,
    })
}

/// The exclusive upper bound of every key that starts with `prefix`, when `prefix` ends
/// with an escaped field (its last byte is the terminator, never 0xFF).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    end
}

/// Appends one element in the stored list form.
pub(crate) fn push_list_element(out: &mut Vec<u8>, element: &[u8]) {
    let len = u32::try_from(element.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(element);
}

/// The elements of a stored list; `None` if malformed.
pub(crate) fn list_elements(stored: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = stored;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(LEN_PREFIX)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (element, tail) = tail.split_at_checked(len)?;
        out.push(element);
        rest = tail;
    }
    Some(out)
}

/// The canonical list value of a stored list; `None` if malformed.
pub(crate) fn list_to_canonical(stored: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let elements = list_elements(stored)?;
    cairn_format::encode_list(elements, out);
    Some(())
}

/// The stored form of a canonical list value (the canonical form without its count), after
/// checking that it decodes.
pub(crate) fn list_from_canonical(canonical: &[u8]) -> Result<&[u8], cairn_format::FormatError> {
    cairn_format::decode_list(canonical)?;
    Ok(canonical.get(LEN_PREFIX..).unwrap_or(&[]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(kg: u32, key: &[u8], ns: &[u8], uk: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        push_kg(&mut v, kg);
        push_escaped(&mut v, key);
        push_escaped(&mut v, ns);
        v.extend_from_slice(uk);
        v
    }

    fn field() -> impl Strategy<Value = Vec<u8>> {
        // Small alphabet with many zeros and 0xFF, so prefixes and escapes collide often.
        proptest::collection::vec(prop_oneof![Just(0u8), Just(1), Just(0xFF), Just(7)], 0..5)
    }

    proptest! {
        #[test]
        fn byte_order_is_tuple_order(
            a in (0u32..3, field(), field(), field()),
            b in (0u32..3, field(), field(), field()),
        ) {
            let ea = encode(a.0, &a.1, &a.2, &a.3);
            let eb = encode(b.0, &b.1, &b.2, &b.3);
            prop_assert_eq!(ea.cmp(&eb), a.cmp(&b));
            let d = decode_key(&ea).unwrap();
            prop_assert_eq!((d.key_group, d.key, d.namespace, d.rest.to_vec()), a);
        }

        #[test]
        fn escape_tail_equals_push_escaped(head in field(), raw in field()) {
            let mut a = head.clone();
            a.extend_from_slice(&raw);
            escape_tail(&mut a, head.len());
            let mut b = head.clone();
            push_escaped(&mut b, &raw);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn lists_convert_both_ways(elements in proptest::collection::vec(field(), 0..4)) {
            let mut stored = Vec::new();
            for e in &elements {
                push_list_element(&mut stored, e);
            }
            let mut canonical = Vec::new();
            list_to_canonical(&stored, &mut canonical).unwrap();
            let mut expected = Vec::new();
            cairn_format::encode_list(elements.iter().map(Vec::as_slice), &mut expected);
            prop_assert_eq!(&canonical, &expected);
            prop_assert_eq!(list_from_canonical(&canonical).unwrap(), stored.as_slice());
        }
    }

    #[test]
    fn prefix_end_bounds_a_map() {
        let mut p = Vec::new();
        push_kg(&mut p, 5);
        push_escaped(&mut p, b"k");
        push_escaped(&mut p, b"");
        let end = prefix_end(&p);
        let mut inside = p.clone();
        inside.extend_from_slice(&[0xFF, 0xFF]);
        assert!(p < inside && inside < end);
        let mut other = Vec::new();
        push_kg(&mut other, 5);
        push_escaped(&mut other, b"k\0");
        assert!(other >= end || other < p);
    }

    #[test]
    fn malformed_input_is_none() {
        assert!(decode_key(&[0]).is_none());
        assert!(decode_key(&[0, 1, b'a', 0]).is_none());
        assert!(decode_key(&[0, 1, b'a', 0, 7]).is_none());
        assert!(list_elements(&[1, 0, 0]).is_none());
        assert!(list_elements(&[5, 0, 0, 0, 1]).is_none());
    }
}
