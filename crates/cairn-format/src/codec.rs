//! Little-endian primitives shared by every Cairn file: a growable [`Writer`], a
//! bounds-checked [`Reader`] whose errors carry the file and the absolute offset, the
//! checksum helper and the closed [`Version`].
//!
//! Primitive encodings (format-spec/README.md, "Conventions"):
//!
//! | type      | bytes                                            |
//! |-----------|--------------------------------------------------|
//! | `uN`      | N/8 bytes, little-endian                         |
//! | `bytes`   | `u32` length, then that many bytes               |
//! | `str`     | `bytes` holding valid UTF-8                      |
//! | `opt<T>`  | `u8` 0 (absent) or 1 (present, then `T`)         |
//! | `vec<T>`  | `u32` count, then `count` times `T`              |

use crate::FormatError;

/// The format versions this build reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    /// Format v1 (this spec).
    V1 = 1,
}

impl Version {
    /// What this build writes.
    pub(crate) const CURRENT: Version = Version::V1;
    /// What this build reads, for error messages.
    pub(crate) const SUPPORTED: &'static str = "1";

    pub(crate) fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Version::V1),
            _ => None,
        }
    }

    pub(crate) fn as_u16(self) -> u16 {
        self as u16
    }

    /// [`check_version`] of a file whose versions are this enum's (manifests and state
    /// files): `versions` are the header's (at `offset`) and the footer's.
    pub(crate) fn check(
        at: (&'static str, &str),
        offset: usize,
        versions: (u16, u16),
    ) -> Result<(), FormatError> {
        let readable = Version::from_u16(versions.0).is_some();
        check_version(at, offset, versions, readable, Version::SUPPORTED)
    }
}

/// Whether a stored CRC32 matches the computed one. Fuzz builds may switch the comparison
/// off at run time ([`crate::fuzzing::set_skip_checksums`]) so the fuzzer reaches the
/// parsers behind the checksums.
#[inline]
pub(crate) fn crc_matches(stored: u32, computed: u32) -> bool {
    #[cfg(fuzzing)]
    {
        if crate::fuzzing::skip_checksums() {
            return true;
        }
    }
    stored == computed
}

/// A CRC32 (ISO-HDLC, as crc32fast) over the concatenation of `parts`.
pub(crate) fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

/// Appends little-endian primitives to a buffer.
#[derive(Debug)]
pub(crate) struct Writer<'a> {
    pub(crate) buf: &'a mut Vec<u8>,
    kind: &'static str,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>, kind: &'static str) -> Self {
        Self { buf, kind }
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A `u32` count or length; larger values cannot be encoded.
    pub(crate) fn len(&mut self, n: usize, what: &str) -> Result<(), FormatError> {
        let n = u32::try_from(n).map_err(|_| FormatError::Invalid {
            kind: self.kind,
            detail: format!("{what} too long len={n}"),
        })?;
        self.u32(n);
        Ok(())
    }
    pub(crate) fn bytes(&mut self, b: &[u8], what: &str) -> Result<(), FormatError> {
        self.len(b.len(), what)?;
        self.buf.extend_from_slice(b);
        Ok(())
    }
    pub(crate) fn str(&mut self, s: &str, what: &str) -> Result<(), FormatError> {
        self.bytes(s.as_bytes(), what)
    }
}

/// Reads little-endian primitives from a slice that starts at `base` in file `path`; every
/// read is bounds-checked and every error is [`FormatError::Corrupt`] with the absolute
/// offset.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    base: u64,
    kind: &'static str,
    path: &'a str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], base: u64, kind: &'static str, path: &'a str) -> Self {
        Self {
            bytes,
            pos: 0,
            base,
            kind,
            path,
        }
    }

    /// The absolute offset of the next byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base.saturating_add(self.pos as u64)
    }

    /// The file, for errors.
    pub(crate) fn path(&self) -> &'a str {
        self.path
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn corrupt(&self, detail: impl Into<String>) -> FormatError {
        corrupt(self.kind, self.path, self.offset(), detail)
    }

    pub(crate) fn corrupt_at(&self, offset: u64, detail: impl Into<String>) -> FormatError {
        corrupt(self.kind, self.path, offset, detail)
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        match end.and_then(|e| self.bytes.get(self.pos..e).map(|s| (e, s))) {
            Some((e, s)) => {
                self.pos = e;
                Ok(s)
            }
            None => Err(self.corrupt(format!(
                "truncated {what} need={n} remaining={}",
                self.remaining()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(crate) fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub(crate) fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u32` count of elements that each take at least `min_size` bytes, checked against
    /// the remaining bytes before anything is allocated.
    pub(crate) fn count(&mut self, min_size: usize, what: &str) -> Result<usize, FormatError> {
        let at = self.offset();
        let n = self.u32(what)? as usize;
        if n > self.remaining() / min_size.max(1) {
            return Err(self.corrupt_at(
                at,
                format!(
                    "{what} count exceeds the remaining bytes count={n} remaining={}",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self, what: &str) -> Result<&'a [u8], FormatError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }

    pub(crate) fn str(&mut self, what: &str) -> Result<&'a str, FormatError> {
        let at = self.offset();
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map_err(|_| self.corrupt_at(at, format!("{what} is not utf-8")))
    }

    pub(crate) fn string(&mut self, what: &str) -> Result<String, FormatError> {
        self.str(what).map(str::to_string)
    }

    /// An `opt` tag: `false` for 0, `true` for 1, corrupt otherwise.
    pub(crate) fn option_tag(&mut self, what: &str) -> Result<bool, FormatError> {
        let at = self.offset();
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(self.corrupt_at(at, format!("bad {what} option tag tag={t}"))),
        }
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self, what: &str) -> Result<(), FormatError> {
        if self.remaining() != 0 {
            return Err(self.corrupt(format!(
                "trailing bytes after {what} len={}",
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// Flag bits every file kind's reader must understand: bits 0–7 of the header flags are
/// *required* (`format-spec/README.md`, "Compatibility rules").
const REQUIRED_FLAGS_MASK: u16 = 0x00ff;

/// Refuses header `flags` (at `offset`) that set a required bit outside `known`: the file
/// needs a feature this build does not have (`UnsupportedFeature`, not corruption).
pub(crate) fn check_required_flags(
    kind: &'static str,
    path: &str,
    offset: usize,
    flags: u16,
    known: u16,
) -> Result<(), FormatError> {
    let unknown = flags & REQUIRED_FLAGS_MASK & !known;
    if unknown == 0 {
        return Ok(());
    }
    Err(FormatError::UnsupportedFeature {
        kind,
        path: path.to_string(),
        offset: offset as u64,
        detail: format!("unknown required flags flags={unknown:#06x}"),
    })
}

/// Checks the version a file's header names (at `offset`) against its footer's, then that
/// this build reads it (`readable`; `supported` says which versions it reads). A file whose
/// two copies differ is corrupt; a consistent but unknown version is `UnsupportedVersion`.
pub(crate) fn check_version(
    (kind, path): (&'static str, &str),
    offset: usize,
    (header, footer): (u16, u16),
    readable: bool,
    supported: &'static str,
) -> Result<(), FormatError> {
    if header != footer {
        return Err(corrupt(
            kind,
            path,
            offset as u64,
            format!("header and footer versions differ header={header} footer={footer}"),
        ));
    }
    if !readable {
        return Err(FormatError::UnsupportedVersion {
            kind,
            path: path.to_string(),
            found: header,
            supported,
        });
    }
    Ok(())
}

pub(crate) fn corrupt(
    kind: &'static str,
    path: &str,
    offset: u64,
    detail: impl Into<String>,
) -> FormatError {
    FormatError::Corrupt {
        kind,
        path: path.to_string(),
        offset,
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reader refuses a required flag bit (0–7) it does not know, at the flags'
    /// offset, and ignores known and optional (8–15) bits.
    #[test]
    fn unknown_required_flags_are_refused_known_and_optional_ones_pass() {
        assert!(check_required_flags("k", "p", 10, 0x0000, 0).is_ok());
        assert!(check_required_flags("k", "p", 10, 0x0002, 0x0002).is_ok());
        assert!(check_required_flags("k", "p", 10, 0xff00, 0).is_ok());
        let e = check_required_flags("k", "p", 10, 0x0105, 0x0001).unwrap_err();
        assert!(
            matches!(e, FormatError::UnsupportedFeature { offset: 10, .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("unknown required flags flags=0x0004"),
            "{e}"
        );
    }

    #[test]
    fn reader_reports_absolute_offsets_and_never_overreads() {
        let mut r = Reader::new(&[1, 0, 0, 0, 9], 100, "manifest", "m");
        assert_eq!(r.u32("x").unwrap(), 1);
        assert_eq!(r.offset(), 104);
        let e = r.u32("y").unwrap_err().to_string();
        assert!(e.contains("offset=104") && e.contains("truncated y"), "{e}");
        // A huge count is refused before allocation.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0], 0, "manifest", "m");
        assert!(r.count(1, "things").is_err());
    }

    #[test]
    fn writer_and_reader_agree() {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, "manifest");
        w.u8(7);
        w.u16(0x0102);
        w.u64(u64::MAX);
        w.str("héllo", "s").unwrap();
        let mut r = Reader::new(&buf, 0, "manifest", "m");
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 0x0102);
        assert_eq!(r.u64("c").unwrap(), u64::MAX);
        assert_eq!(r.str("s").unwrap(), "héllo");
        r.finish("test").unwrap();
    }
}
