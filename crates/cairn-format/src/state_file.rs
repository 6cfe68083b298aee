//! The canonical state file: its types, layout constants and the writer
//! (format-spec/README.md, "State file"). The reader is in `state_reader.rs`.
//!
//! ```text
//! header                (HEADER_LEN = 16)
//!   0  8  magic          "CAIRNSF\0"
//!   8  2  version        u16 = 1
//!  10  2  flags          u16: bits 0..=7 required, 8..=15 optional; v1 defines none
//!  12  4  reserved       u32 = 0
//! state table block     (block type 2; payload: per state `name str, kind u8`)
//! data blocks           (block type 1; one key group each; sorted by key group)
//! key-group index block (block type 3; payload: INDEX_ENTRY_LEN bytes per key group)
//! footer                (FOOTER_LEN = 64)
//!   0  8  state_table_offset  u64 = HEADER_LEN
//!   8  8  state_table_len     u64
//!  16  8  index_offset        u64
//!  24  8  index_len           u64 = file length - FOOTER_LEN - index_offset
//!  32  8  entry_count         u64: entries in the file
//!  40  4  block_count         u32: data blocks in the file
//!  44  4  key_group_count     u32: key groups in the index
//!  48  4  crc32               CRC32 of the header and footer bytes 0..48
//!  52  2  version             u16, equal to the header's
//!  54  2  reserved            u16 = 0
//!  56  8  magic               "CAIRNSF\0"
//! ```

use cairn_core::{KeyGroup, StateKind, MAX_MAX_PARALLELISM};

use crate::block::{write_block, BlockType, ZSTD_LEVEL};
use crate::codec::{crc32, Version, Writer};
use crate::FormatError;

pub use crate::block::MAX_BLOCK_LEN;

/// The first (and last) eight bytes of every state file.
pub const STATE_FILE_MAGIC: [u8; 8] = *b"CAIRNSF\0";
/// The uncompressed payload size at which a writer starts a new data block.
pub const TARGET_BLOCK_LEN: usize = 64 << 10;

pub(crate) const KIND: &str = "state file";
pub(crate) const MAGIC_LEN: usize = 8;

pub(crate) const HEADER_MAGIC_OFFSET: usize = 0;
pub(crate) const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + MAGIC_LEN;
pub(crate) const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + 2;
pub(crate) const HEADER_RESERVED_OFFSET: usize = HEADER_FLAGS_OFFSET + 2;
pub(crate) const HEADER_LEN: usize = HEADER_RESERVED_OFFSET + 4;

pub(crate) const FOOTER_STATE_TABLE_OFFSET: usize = 0;
pub(crate) const FOOTER_STATE_TABLE_LEN: usize = FOOTER_STATE_TABLE_OFFSET + 8;
pub(crate) const FOOTER_INDEX_OFFSET: usize = FOOTER_STATE_TABLE_LEN + 8;
pub(crate) const FOOTER_INDEX_LEN: usize = FOOTER_INDEX_OFFSET + 8;
pub(crate) const FOOTER_ENTRY_COUNT: usize = FOOTER_INDEX_LEN + 8;
pub(crate) const FOOTER_BLOCK_COUNT: usize = FOOTER_ENTRY_COUNT + 8;
pub(crate) const FOOTER_KEY_GROUP_COUNT: usize = FOOTER_BLOCK_COUNT + 4;
pub(crate) const FOOTER_CRC: usize = FOOTER_KEY_GROUP_COUNT + 4;
pub(crate) const FOOTER_VERSION: usize = FOOTER_CRC + 4;
pub(crate) const FOOTER_RESERVED: usize = FOOTER_VERSION + 2;
pub(crate) const FOOTER_MAGIC: usize = FOOTER_RESERVED + 2;
pub(crate) const FOOTER_LEN: usize = FOOTER_MAGIC + MAGIC_LEN;

/// Required flags this build understands (v1 defines none).
pub(crate) const KNOWN_REQUIRED_FLAGS: u16 = 0;

/// Index entry: key_group u32, block_count u32, offset u64, len u64, entry_count u64.
pub(crate) const INDEX_ENTRY_LEN: usize = 4 + 4 + 8 + 8 + 8;
/// Smallest state-table entry: empty name (u32 length) and the kind byte.
pub(crate) const MIN_STATE_ENTRY_LEN: usize = 4 + 1;
/// Smallest data entry: state u32 and three empty byte strings (key, namespace, value).
pub(crate) const MIN_DATA_ENTRY_LEN: usize = 4 + 3 * 4;

/// A state as a state file's state table records it; entries refer to it by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    /// The state name.
    pub name: String,
    /// Its kind (map entries carry a user key; others do not).
    pub kind: StateKind,
}

/// One entry of a state file, borrowed from a decoded block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The key group.
    pub key_group: KeyGroup,
    /// Index into the file's state table.
    pub state: u32,
    /// Serialized key.
    pub key: &'a [u8],
    /// Serialized namespace.
    pub namespace: &'a [u8],
    /// Serialized user key (map state only).
    pub user_key: Option<&'a [u8]>,
    /// Serialized value (list state: the `encode_list` encoding of the elements).
    pub value: &'a [u8],
}

/// Per-key-group figures from a state file's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGroupStats {
    /// The key group.
    pub key_group: KeyGroup,
    /// Its number of entries.
    pub entries: u64,
    /// Bytes of its blocks in the file.
    pub bytes: u64,
}

/// The order of entries within a key group: `(state, key, namespace, user key)`, byte-wise.
pub(crate) type SortKey<'a> = (u32, &'a [u8], &'a [u8], Option<&'a [u8]>);

/// The sort key of an entry.
pub(crate) fn sort_key<'a>(e: &EntryRef<'a>) -> SortKey<'a> {
    (e.state, e.key, e.namespace, e.user_key)
}

/// Appends the encoding of an entry to a data block payload:
/// `state u32, key bytes, namespace bytes, [user_key bytes if map], value bytes`.
fn encode_entry(w: &mut Writer<'_>, e: &EntryRef<'_>) -> Result<(), FormatError> {
    w.u32(e.state);
    put_bytes(w, e.key, "key")?;
    put_bytes(w, e.namespace, "namespace")?;
    if let Some(uk) = e.user_key {
        put_bytes(w, uk, "user key")?;
    }
    put_bytes(w, e.value, "value")
}

/// [`Writer::bytes`], with [`extend_short`].
#[inline]
fn put_bytes(w: &mut Writer<'_>, b: &[u8], what: &str) -> Result<(), FormatError> {
    w.len(b.len(), what)?;
    extend_short(w.buf, b);
    Ok(())
}

/// `v.extend_from_slice(b)`, without a `memcpy` call for the 8-byte strings that most keys
/// and values are (`u64`, `i64`, `f64` under the default codec).
#[inline]
fn extend_short(v: &mut Vec<u8>, b: &[u8]) {
    match <&[u8; 8]>::try_from(b) {
        Ok(word) => v.extend_from_slice(word),
        Err(_) => v.extend_from_slice(b),
    }
}

/// Byte-wise (lexicographic) order of two byte strings, without a `memcmp` call for the
/// short ones (8 bytes or fewer: compared as zero-padded big-endian words, then by length).
#[inline]
fn cmp_bytes(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    // `x.len() <= 8`; no `memcpy` call for the variable length.
    fn word(x: &[u8]) -> u64 {
        match <[u8; 8]>::try_from(x) {
            Ok(w) => u64::from_be_bytes(w),
            Err(_) if x.is_empty() => 0,
            Err(_) => x.iter().fold(0u64, |w, b| (w << 8) | u64::from(*b)) << (8 * (8 - x.len())),
        }
    }
    if a.len() <= 8 && b.len() <= 8 {
        word(a).cmp(&word(b)).then(a.len().cmp(&b.len()))
    } else {
        a.cmp(b)
    }
}

/// The sort key of the last entry added, owned (buffers reused from entry to entry).
#[derive(Debug, Default)]
struct LastEntry {
    key_group: KeyGroup,
    state: u32,
    key: Vec<u8>,
    namespace: Vec<u8>,
    user_key: Option<Vec<u8>>,
}

impl LastEntry {
    /// Whether `e` sorts strictly after this entry.
    #[inline]
    fn precedes(&self, e: &EntryRef<'_>) -> bool {
        (self.key_group, self.state)
            .cmp(&(e.key_group, e.state))
            .then_with(|| cmp_bytes(&self.key, e.key))
            .then_with(|| cmp_bytes(&self.namespace, e.namespace))
            .then_with(|| match (&self.user_key, e.user_key) {
                (Some(a), Some(b)) => cmp_bytes(a, b),
                (a, b) => a.is_some().cmp(&b.is_some()),
            })
            .is_lt()
    }

    #[inline]
    fn set(&mut self, e: &EntryRef<'_>) {
        self.key_group = e.key_group;
        self.state = e.state;
        self.key.clear();
        extend_short(&mut self.key, e.key);
        self.namespace.clear();
        extend_short(&mut self.namespace, e.namespace);
        match (&mut self.user_key, e.user_key) {
            (Some(u), Some(x)) => {
                u.clear();
                u.extend_from_slice(x);
            }
            (u, x) => *u = x.map(<[u8]>::to_vec),
        }
    }
}

/// Writes a canonical state file. Entries must be added in strictly increasing
/// `(key_group, state, key, namespace, user_key)` order (checked).
pub struct StateFileWriter {
    states: Vec<FileState>,
    out: Vec<u8>,
    compressor: zstd::bulk::Compressor<'static>,
    state_table_len: u64,
    /// Payload of the open data block.
    block: Vec<u8>,
    block_entries: u32,
    /// The open key group: (key group, offset of its first block, blocks, entries).
    group: Option<(KeyGroup, u64, u32, u64)>,
    /// Index payload built so far.
    index: Vec<u8>,
    key_groups: u32,
    entries: u64,
    blocks: u32,
    /// Sort key of the last entry added (`None` before the first).
    last: Option<LastEntry>,
}

impl std::fmt::Debug for StateFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateFileWriter")
            .field("states", &self.states)
            .field("bytes", &self.out.len())
            .field("entries", &self.entries)
            .finish()
    }
}

fn invalid(detail: String) -> FormatError {
    FormatError::Invalid { kind: KIND, detail }
}

impl StateFileWriter {
    /// A writer whose state table is `states` (names unique).
    pub fn new(states: Vec<FileState>) -> Result<Self, FormatError> {
        let mut sorted: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(invalid(format!(
                "duplicate state name state={}",
                w.first().copied().unwrap_or_default()
            )));
        }
        let count = u32::try_from(states.len()).map_err(|_| invalid("too many states".into()))?;
        let mut out = Vec::with_capacity(TARGET_BLOCK_LEN);
        // Header: magic, version, flags (none), reserved.
        out.extend_from_slice(&STATE_FILE_MAGIC);
        out.extend_from_slice(&Version::CURRENT.as_u16().to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        let mut table = Vec::new();
        let mut w = Writer::new(&mut table, KIND);
        for s in &states {
            w.str(&s.name, "state name")?;
            w.u8(s.kind.code());
        }
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|e| invalid(format!("zstd compressor failed: {e}")))?;
        let state_table_len = write_block(
            &mut out,
            &mut compressor,
            BlockType::StateTable,
            0,
            count,
            &table,
        )? as u64;
        Ok(Self {
            states,
            out,
            compressor,
            state_table_len,
            block: Vec::new(),
            block_entries: 0,
            group: None,
            index: Vec::new(),
            key_groups: 0,
            entries: 0,
            blocks: 0,
            last: None,
        })
    }

    /// Appends an entry.
    pub fn add(&mut self, e: &EntryRef<'_>) -> Result<(), FormatError> {
        let state = self.states.get(e.state as usize).ok_or_else(|| {
            invalid(format!(
                "state index out of range state={} states={}",
                e.state,
                self.states.len()
            ))
        })?;
        if (state.kind == StateKind::Map) != e.user_key.is_some() {
            return Err(invalid(format!(
                "a user key is required for map state entries and only for them state={}",
                state.name
            )));
        }
        if e.key_group >= MAX_MAX_PARALLELISM {
            return Err(invalid(format!(
                "key group out of range key_group={}",
                e.key_group
            )));
        }
        if self.last.as_ref().is_some_and(|last| !last.precedes(e)) {
            return Err(invalid(format!(
                "entries not in strictly increasing (key group, state, key, namespace, user key) order key_group={} state={}",
                e.key_group, state.name
            )));
        }
        let size = MIN_DATA_ENTRY_LEN
            + e.key.len()
            + e.namespace.len()
            + e.value.len()
            + e.user_key.map_or(0, |u| 4 + u.len());
        if size > MAX_BLOCK_LEN {
            return Err(invalid(format!(
                "entry larger than the block limit len={size} max={MAX_BLOCK_LEN}"
            )));
        }
        if self.group.is_some_and(|g| g.0 != e.key_group) {
            self.finish_group()?;
        } else if !self.block.is_empty() && self.block.len() + size > TARGET_BLOCK_LEN {
            self.flush_block()?;
        }
        if self.group.is_none() {
            self.group = Some((e.key_group, self.out.len() as u64, 0, 0));
        }
        encode_entry(&mut Writer::new(&mut self.block, KIND), e)?;
        self.block_entries += 1;
        if let Some(g) = &mut self.group {
            g.3 += 1;
        }
        self.entries += 1;
        self.last.get_or_insert_with(LastEntry::default).set(e);
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), FormatError> {
        let Some(g) = &mut self.group else {
            return Ok(());
        };
        if self.block_entries == 0 {
            return Ok(());
        }
        write_block(
            &mut self.out,
            &mut self.compressor,
            BlockType::Data,
            g.0,
            self.block_entries,
            &self.block,
        )?;
        g.2 += 1;
        self.blocks = self
            .blocks
            .checked_add(1)
            .ok_or_else(|| invalid("too many blocks".into()))?;
        self.block.clear();
        self.block_entries = 0;
        Ok(())
    }

    fn finish_group(&mut self) -> Result<(), FormatError> {
        self.flush_block()?;
        if let Some((kg, offset, blocks, entries)) = self.group.take() {
            let mut w = Writer::new(&mut self.index, KIND);
            w.u32(kg);
            w.u32(blocks);
            w.u64(offset);
            w.u64(self.out.len() as u64 - offset);
            w.u64(entries);
            self.key_groups += 1;
        }
        Ok(())
    }

    /// Finishes the file and returns its bytes.
    pub fn finish(mut self) -> Result<Vec<u8>, FormatError> {
        self.finish_group()?;
        let index_offset = self.out.len() as u64;
        let index_len = write_block(
            &mut self.out,
            &mut self.compressor,
            BlockType::Index,
            0,
            self.key_groups,
            &self.index,
        )? as u64;
        let mut footer = Vec::with_capacity(FOOTER_LEN);
        let mut w = Writer::new(&mut footer, KIND);
        w.u64(HEADER_LEN as u64);
        w.u64(self.state_table_len);
        w.u64(index_offset);
        w.u64(index_len);
        w.u64(self.entries);
        w.u32(self.blocks);
        w.u32(self.key_groups);
        let header = self.out.get(..HEADER_LEN).unwrap_or_default();
        let crc = crc32(&[header, &footer]);
        let mut w = Writer::new(&mut footer, KIND);
        w.u32(crc);
        w.u16(Version::CURRENT.as_u16());
        w.u16(0);
        footer.extend_from_slice(&STATE_FILE_MAGIC);
        debug_assert_eq!(footer.len(), FOOTER_LEN);
        self.out.extend_from_slice(&footer);
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_byte_strings_compare_like_slices() {
        let all: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            vec![1],
            vec![0, 1],
            vec![0xff],
            b"abcdefg".to_vec(),
            b"abcdefg\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefgi".to_vec(),
            vec![0xff; 8],
            vec![0xff; 9],
        ];
        for a in &all {
            for b in &all {
                assert_eq!(cmp_bytes(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }
}
