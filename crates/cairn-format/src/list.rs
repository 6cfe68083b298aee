//! The canonical value of a list state (format-spec/README.md, "List value"):
//!
//! ```text
//! count    u32
//! count times:
//!   len    u32
//!   bytes  len bytes (one element as its codec encodes it)
//! ```

use crate::codec::Reader;
use crate::FormatError;

const KIND: &str = "list value";
const LEN_PREFIX: usize = 4;

/// Encodes list elements as one canonical value.
///
/// Elements longer than `u32::MAX` bytes (or more than `u32::MAX` elements) cannot be
/// represented; the codecs never produce them (`cairn_core::MAX_DECODED_VALUE_LEN`) and a
/// state file cannot hold such a value, so this encoder saturates rather than fails and the
/// state file writer rejects the result.
pub fn encode_list<'a>(elements: impl IntoIterator<Item = &'a [u8]>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u32 = 0;
    for e in elements {
        let len = u32::try_from(e.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(e);
        count = count.saturating_add(1);
    }
    if let Some(slot) = out.get_mut(start..start + LEN_PREFIX) {
        slot.copy_from_slice(&count.to_le_bytes());
    }
}

/// Decodes a canonical list value into its elements. Errors are [`FormatError::Corrupt`]
/// with kind `list value`, an empty path and the offset within the value.
pub fn decode_list(bytes: &[u8]) -> Result<Vec<&[u8]>, FormatError> {
    let mut r = Reader::new(bytes, 0, KIND, "");
    let n = r.count(LEN_PREFIX, "list elements")?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.bytes("list element")?);
    }
    r.finish("list elements")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let mut v = Vec::new();
        encode_list([&b"ab"[..], b""], &mut v);
        assert_eq!(v, [2, 0, 0, 0, 2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]);
        assert_eq!(decode_list(&v).unwrap(), vec![&b"ab"[..], b""]);
        let mut e = Vec::new();
        encode_list(std::iter::empty(), &mut e);
        assert!(decode_list(&e).unwrap().is_empty());
    }

    #[test]
    fn damage_is_an_error() {
        let mut v = Vec::new();
        encode_list([&b"ab"[..]], &mut v);
        for cut in 0..v.len() {
            assert!(decode_list(&v[..cut]).is_err(), "cut={cut}");
        }
        let mut long = v.clone();
        long.push(0);
        let e = decode_list(&long).unwrap_err().to_string();
        assert!(e.starts_with("corrupt list value: trailing bytes"), "{e}");
        assert!(decode_list(&[0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
