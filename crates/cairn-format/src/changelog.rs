//! Changelog segments (format-spec/README.md, "Changelog segment"): the state changes a
//! changelog backend (`cairn-changelog`) records between materializations, in the order
//! they happened, each record carrying its key group so a restore at another parallelism
//! replays only its key groups.
//!
//! Version 2 (what [`ChangelogSegmentWriter`] writes):
//!
//! ```text
//! header                 (HEADER_LEN = 16)
//!   0  8  magic           "CAIRNCL\0"
//!   8  2  version         u16 = 2
//!  10  2  flags           u16: bits 0..=7 required, 8..=15 optional; none defined
//!  12  4  reserved        u32 = 0
//! state table            count u32, then count × (name str, kind u8)
//! record blocks          in the order the changes happened, each:
//!   0  4  key_group_start u32: lowest key group of a record in the block
//!   4  4  key_group_end   u32: highest key group of a record + 1
//!   8  4  count           u32 >= 1: records in the block
//!  12  1  compression     u8: 0 none, 1 zstd
//!  13  3  reserved        0
//!  16  4  raw_len         u32 <= MAX_BLOCK_LEN
//!  20  4  stored_len      u32 (== raw_len when not compressed)
//!  24     payload         stored_len bytes: count × record_v2
//!   .  4  crc32           CRC32 of the block's header and stored payload
//! index                  count u32, then count × (key_group_start u32, key_group_end u32,
//!                        offset u64, len u32, records u32)
//! footer                 (FOOTER_LEN = 40)
//!   0  8  index_offset    u64
//!   8  8  first_sqn       u64: sequence number of the first record
//!  16  8  record_count    u64: records in the file (= sum over the index)
//!  24  4  crc32           CRC32 of the header, state table, index and footer bytes 0..24
//!  28  2  version         u16, equal to the header's
//!  30  2  reserved        u16 = 0
//!  32  8  magic           "CAIRNCL\0"
//! ```
//!
//! A record (v1's whole record, v2's after its key group): `state u32, op u8, key bytes,
//! namespace bytes`, then `user_key bytes` for map operations and `value bytes` for
//! operations that carry a value ([`ChangelogOp`]). A v2 record is `key_group u16` then
//! that.
//!
//! Version 1 (read only) differs in the blocks and the index: one key group per block
//! (a 20-byte header `key_group u32, count u32, compression u8, reserved 3, raw_len u32,
//! stored_len u32`), blocks sorted by key group, records without their key group, index
//! entries `key_group u32, offset u64, len u32, records u32`.

use cairn_core::{KeyGroupRange, StateKind, MAX_MAX_PARALLELISM};

use crate::changelog_chunk::{record_mask, MISSHAPEN};
use crate::codec::{crc32, Reader, Writer};
use crate::{ChangelogChunk, FileState, FormatError, MAX_BLOCK_LEN};

/// The first (and last) eight bytes of every changelog segment.
pub const CHANGELOG_MAGIC: [u8; 8] = *b"CAIRNCL\0";

pub(crate) const KIND: &str = "changelog segment";
pub(crate) const MAGIC_LEN: usize = 8;

/// Segment layout versions: 1 is read only, 2 is read and written.
pub(crate) const VERSION_1: u16 = 1;
pub(crate) const VERSION_2: u16 = 2;
/// The versions this build reads, for error messages.
pub(crate) const SUPPORTED_VERSIONS: &str = "1 or 2";

pub(crate) const HEADER_VERSION_OFFSET: usize = MAGIC_LEN;
pub(crate) const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + 2;
pub(crate) const HEADER_RESERVED_OFFSET: usize = HEADER_FLAGS_OFFSET + 2;
pub(crate) const HEADER_LEN: usize = HEADER_RESERVED_OFFSET + 4;

/// v2 block header: key_group_start u32, key_group_end u32, count u32, compression u8,
/// reserved 3 bytes, raw_len u32, stored_len u32.
pub(crate) const BLOCK_V2_HEADER_LEN: usize = 4 + 4 + 4 + 1 + 3 + 4 + 4;
/// v1 block header: key_group u32, count u32, compression u8, reserved 3 bytes, raw_len
/// u32, stored_len u32.
pub(crate) const BLOCK_V1_HEADER_LEN: usize = 4 + 4 + 1 + 3 + 4 + 4;
pub(crate) const BLOCK_TRAILER_LEN: usize = 4;

pub(crate) const FOOTER_INDEX_OFFSET: usize = 0;
pub(crate) const FOOTER_FIRST_SQN: usize = FOOTER_INDEX_OFFSET + 8;
pub(crate) const FOOTER_RECORD_COUNT: usize = FOOTER_FIRST_SQN + 8;
pub(crate) const FOOTER_CRC: usize = FOOTER_RECORD_COUNT + 8;
pub(crate) const FOOTER_VERSION: usize = FOOTER_CRC + 4;
pub(crate) const FOOTER_RESERVED: usize = FOOTER_VERSION + 2;
pub(crate) const FOOTER_MAGIC: usize = FOOTER_RESERVED + 2;
pub(crate) const FOOTER_LEN: usize = FOOTER_MAGIC + MAGIC_LEN;

pub(crate) const COMPRESSION_NONE: u8 = 0;
pub(crate) const COMPRESSION_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;

/// Where [`ChangelogSegmentWriter::add`] cuts its buffered records into a block: the
/// first record that brings the block to this many bytes ends it.
const ADD_BLOCK_TARGET_LEN: usize = 64 << 10;

/// What a changelog record does to the entry `(state, key, namespace[, user key])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangelogOp {
    /// Code 1: sets the value (value, reducing and aggregating state; the value is the new
    /// value or accumulator as its codec encodes it).
    Set,
    /// Code 2: removes the entry of the key and namespace (of any state kind; a whole map).
    Clear,
    /// Code 3: appends the elements of a list value (format "List value") to a list.
    ListAppend,
    /// Code 4: replaces a list by the elements of a list value (empty: removes it).
    ListSet,
    /// Code 5: puts a user key and value into a map.
    MapPut,
    /// Code 6: removes a user key from a map (the map disappears with its last entry).
    MapRemove,
}

impl ChangelogOp {
    /// The op's stable code.
    pub fn code(self) -> u8 {
        match self {
            ChangelogOp::Set => 1,
            ChangelogOp::Clear => 2,
            ChangelogOp::ListAppend => 3,
            ChangelogOp::ListSet => 4,
            ChangelogOp::MapPut => 5,
            ChangelogOp::MapRemove => 6,
        }
    }

    /// The op of a stable code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => ChangelogOp::Set,
            2 => ChangelogOp::Clear,
            3 => ChangelogOp::ListAppend,
            4 => ChangelogOp::ListSet,
            5 => ChangelogOp::MapPut,
            6 => ChangelogOp::MapRemove,
            _ => return None,
        })
    }

    /// Whether the record carries a user key.
    pub fn has_user_key(self) -> bool {
        matches!(self, ChangelogOp::MapPut | ChangelogOp::MapRemove)
    }

    /// Whether the record carries a value.
    pub fn has_value(self) -> bool {
        matches!(
            self,
            ChangelogOp::Set | ChangelogOp::ListAppend | ChangelogOp::ListSet | ChangelogOp::MapPut
        )
    }

    /// Whether the op applies to a state of `kind`.
    pub fn applies_to(self, kind: StateKind) -> bool {
        match self {
            ChangelogOp::Clear => true,
            ChangelogOp::Set => matches!(
                kind,
                StateKind::Value | StateKind::Reducing | StateKind::Aggregating
            ),
            ChangelogOp::ListAppend | ChangelogOp::ListSet => kind == StateKind::List,
            ChangelogOp::MapPut | ChangelogOp::MapRemove => kind == StateKind::Map,
        }
    }
}

/// One record of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangelogRecord<'a> {
    /// The key group of the key.
    pub key_group: u32,
    /// Index into the segment's state table.
    pub state: u32,
    /// What the record does.
    pub op: ChangelogOp,
    /// The serialized key.
    pub key: &'a [u8],
    /// The serialized namespace.
    pub namespace: &'a [u8],
    /// The serialized user key (map operations only).
    pub user_key: Option<&'a [u8]>,
    /// The value (operations that carry one).
    pub value: Option<&'a [u8]>,
}

/// Appends the record encoding of `r` without its key group to `out` (a v1 record; the
/// part of a v2 record after its key group, [`encode_changelog_record_v2`]): the parts `r`
/// holds (a record whose user key and value do not match its op does not decode).
pub fn encode_changelog_record(r: &ChangelogRecord<'_>, out: &mut Vec<u8>) {
    let mut w = Writer::new(out, KIND);
    w.u32(r.state);
    w.u8(r.op.code());
    // Lengths above u32::MAX cannot occur: values are bounded far below (codecs refuse
    // more than 64 MiB); clamp instead of failing so the encoder stays infallible.
    for part in [Some(r.key), Some(r.namespace), r.user_key, r.value]
        .into_iter()
        .flatten()
    {
        w.u32(u32::try_from(part.len()).unwrap_or(u32::MAX));
        w.buf.extend_from_slice(part);
    }
}

/// Appends the v2 encoding of `r` to `out`: its key group as a `u16`, then
/// [`encode_changelog_record`]'s bytes. A key group that does not fit a `u16` is written
/// as `u16::MAX`, which no reader (nor [`ChangelogSegmentWriter::add_encoded`]) accepts.
/// Backends that buffer records use a [`ChangelogChunk`], which encodes with it.
#[inline]
pub fn encode_changelog_record_v2(r: &ChangelogRecord<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(&u16::try_from(r.key_group).unwrap_or(u16::MAX).to_le_bytes());
    encode_changelog_record(r, out);
}

/// The length of `r`'s v2 encoding.
fn record_v2_len(r: &ChangelogRecord<'_>) -> usize {
    let parts = [Some(r.key), Some(r.namespace), r.user_key, r.value];
    2 + 4 + 1 + parts.iter().flatten().map(|p| 4 + p.len()).sum::<usize>()
}

/// One block of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentBlock {
    /// The key groups of its records, from the lowest to the highest + 1 (a version 1
    /// block holds one key group `kg`: `kg..kg + 1`).
    pub key_groups: KeyGroupRange,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length in the file.
    pub len: u32,
    /// Records in it.
    pub records: u32,
}

/// Writes one changelog segment (version 2): blocks of records in the order they are
/// added, which must be the order the changes happened.
///
/// Records come as [`ChangelogChunk`]s ([`Self::add_chunk`], one block each, checked
/// without decoding), as encoded bytes ([`Self::add_encoded`], checked by decoding) or one
/// by one ([`Self::add`], buffered into blocks of about 64 KiB). Everything written is
/// checked against the state table, which may grow while the segment is open
/// ([`Self::set_states`]).
pub struct ChangelogSegmentWriter {
    states: Vec<FileState>,
    first_sqn: u64,
    body: Vec<u8>,
    index: Vec<SegmentBlock>,
    /// Records written to `body`.
    written: u64,
    /// Records of [`Self::add`] not written yet (checked already).
    pending: ChangelogChunk,
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for ChangelogSegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogSegmentWriter")
            .field("states", &self.states)
            .field("first_sqn", &self.first_sqn)
            .field("records", &self.records())
            .field("blocks", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl ChangelogSegmentWriter {
    /// A segment whose records refer to `states` by index and whose first record has
    /// sequence number `first_sqn`.
    pub fn new(states: Vec<FileState>, first_sqn: u64) -> Result<Self, FormatError> {
        check_unique_names(&states)?;
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|e| invalid(format!("zstd compressor failed: {e}")))?;
        Ok(Self {
            states,
            first_sqn,
            body: Vec::new(),
            index: Vec::new(),
            written: 0,
            pending: ChangelogChunk::new(),
            compressor,
        })
    }

    /// Replaces the state table by one that extends it: the same entries first (names and
    /// kinds), more after (states get registered while a segment is open). Anything else
    /// is refused and leaves the table as it was.
    pub fn set_states(&mut self, states: Vec<FileState>) -> Result<(), FormatError> {
        if states.len() < self.states.len() {
            return Err(invalid(format!(
                "state table does not extend the segment's: it has fewer states states={} previous={}",
                states.len(),
                self.states.len()
            )));
        }
        if let Some((index, (old, new))) = self
            .states
            .iter()
            .zip(&states)
            .enumerate()
            .find(|(_, (old, new))| old != new)
        {
            return Err(invalid(format!(
                "state table does not extend the segment's: index={index} was {} ({:?}), now {} ({:?})",
                old.name, old.kind, new.name, new.kind
            )));
        }
        check_unique_names(&states)?;
        self.states = states;
        Ok(())
    }

    /// The state table.
    pub fn states(&self) -> &[FileState] {
        &self.states
    }

    /// Writes the chunk's records as one block (compressed now), after records added
    /// before. The chunk is checked against the current state table in O(states) from
    /// its op masks (every state index names a state of the table with ops its kind allows,
    /// every record carries the parts its op needs, every key group is below
    /// [`MAX_MAX_PARALLELISM`]), decoding it only if it has state indices too large to
    /// track. The bytes are those [`Self::add_encoded`] writes for
    /// [`ChangelogChunk::as_bytes`]. An empty chunk writes nothing.
    pub fn add_chunk(&mut self, chunk: &ChangelogChunk) -> Result<(), FormatError> {
        let Some(key_groups) = chunk.key_groups() else {
            return Ok(());
        };
        let count = self.check_chunk(chunk, key_groups)?;
        self.flush_pending()?;
        self.write_block(key_groups, count, chunk.as_bytes())
    }

    /// Appends one record: checked now, buffered, and written in blocks cut near 64 KiB
    /// (in order with the records and blocks added before and after it).
    pub fn add(&mut self, r: &ChangelogRecord<'_>) -> Result<(), FormatError> {
        let key_groups = KeyGroupRange::new(r.key_group, r.key_group.saturating_add(1));
        check_key_groups(key_groups)?;
        self.check_mask(r.state as usize, record_mask(r), key_groups)?;
        let len = record_v2_len(r);
        check_len(len)?;
        if self.pending.len_bytes() + len > MAX_BLOCK_LEN {
            self.flush_pending()?;
        }
        self.pending.push(r);
        if self.pending.len_bytes() >= ADD_BLOCK_TARGET_LEN {
            self.flush_pending()?;
        }
        Ok(())
    }

    /// Appends `count` records encoded back to back with [`encode_changelog_record_v2`]
    /// as one block. The bytes are checked by decoding them (every record decodes, has a
    /// key group below [`MAX_MAX_PARALLELISM`] and names a state of the table with an op
    /// its kind allows). No records (`count` 0, no bytes) write nothing.
    pub fn add_encoded(&mut self, count: u32, bytes: &[u8]) -> Result<(), FormatError> {
        check_len(bytes.len())?;
        let Some(key_groups) = self.check_by_decoding(count, bytes)? else {
            return Ok(());
        };
        self.flush_pending()?;
        self.write_block(key_groups, count, bytes)
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// The finished file.
    pub fn finish(mut self) -> Result<Vec<u8>, FormatError> {
        self.flush_pending()?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len() + 256);
        let mut w = Writer::new(&mut out, KIND);
        // Header: magic, version, flags (none), reserved.
        w.buf.extend_from_slice(&CHANGELOG_MAGIC);
        w.u16(VERSION_2);
        w.u16(0);
        w.u32(0);
        w.len(self.states.len(), "state table")?;
        for s in &self.states {
            w.str(&s.name, "state name")?;
            w.u8(s.kind.code());
        }
        let table_end = out.len();
        out.extend_from_slice(&self.body);
        let index_offset = out.len();
        let mut w = Writer::new(&mut out, KIND);
        w.len(self.index.len(), "index")?;
        for b in &self.index {
            w.u32(b.key_groups.start);
            w.u32(b.key_groups.end);
            w.u64(b.offset + table_end as u64);
            w.u32(b.len);
            w.u32(b.records);
        }
        w.u64(index_offset as u64);
        w.u64(self.first_sqn);
        w.u64(self.written);
        let crc = crc32(&[
            out.get(..table_end).unwrap_or_default(),
            out.get(index_offset..).unwrap_or_default(),
        ]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&VERSION_2.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&CHANGELOG_MAGIC);
        Ok(out)
    }

    /// Checks a non-empty chunk the way a reader would check its bytes; returns its record
    /// count.
    fn check_chunk(
        &self,
        chunk: &ChangelogChunk,
        key_groups: KeyGroupRange,
    ) -> Result<u32, FormatError> {
        check_key_groups(key_groups)?;
        check_len(chunk.len_bytes())?;
        // Within MAX_BLOCK_LEN, as every record takes at least 15 bytes.
        let count = u32::try_from(chunk.len()).map_err(|_| {
            invalid(format!(
                "chunk holds too many records count={}",
                chunk.len()
            ))
        })?;
        // The tracked state indices by their masks (ops and record shapes)...
        for (index, mask) in chunk.op_masks() {
            self.check_mask(index, mask, key_groups)?;
        }
        if chunk.untracked() {
            // ...and a chunk with a state index too large to track the slow way as well.
            self.check_by_decoding(count, chunk.as_bytes())?;
        }
        Ok(count)
    }

    /// Checks `count` encoded v2 records the way a reader will; returns their key groups
    /// (`None` when there are none).
    fn check_by_decoding(
        &self,
        count: u32,
        bytes: &[u8],
    ) -> Result<Option<KeyGroupRange>, FormatError> {
        let mut r = Reader::new(bytes, 0, KIND, "(segment being written)");
        let mut bounds = KeyGroupBounds::default();
        for _ in 0..count {
            let rec = decode_record_v2(
                &mut r,
                KeyGroupRange::all(MAX_MAX_PARALLELISM),
                &self.states,
            )?;
            bounds.note(rec.key_group);
        }
        r.finish("records")?;
        Ok(bounds.range())
    }

    /// Checks the ops of `mask` against state `index` of the table; `key_groups` says
    /// where the records were, for the message.
    fn check_mask(
        &self,
        index: usize,
        mask: u8,
        key_groups: KeyGroupRange,
    ) -> Result<(), FormatError> {
        let ops = (1..=6u8)
            .filter(|code| mask & 1 << code != 0)
            .filter_map(ChangelogOp::from_code);
        let at = KeyGroupsDisplay(key_groups);
        let Some(state) = self.states.get(index) else {
            let ops: Vec<_> = ops.collect();
            return Err(invalid(format!(
                "changelog record names an unknown state index={index} states={} ops={ops:?} {at}",
                self.states.len()
            )));
        };
        if let Some(op) = ops.clone().find(|op| !op.applies_to(state.kind)) {
            return Err(invalid(format!(
                "changelog op {op:?} does not apply to {:?} state index={index} state={} {at}",
                state.kind, state.name
            )));
        }
        if mask & MISSHAPEN != 0 {
            let ops: Vec<_> = ops.collect();
            return Err(invalid(format!(
                "changelog record without the user key or value its op needs, or with one it has none of, index={index} state={} ops={ops:?} {at}",
                state.name
            )));
        }
        Ok(())
    }

    /// Writes the records [`Self::add`] buffered as one block.
    fn flush_pending(&mut self) -> Result<(), FormatError> {
        let Some(key_groups) = self.pending.key_groups() else {
            return Ok(());
        };
        let pending = std::mem::take(&mut self.pending);
        // Checked record by record; within MAX_BLOCK_LEN, cut near 64 KiB.
        let count = u32::try_from(pending.len()).unwrap_or(u32::MAX);
        let written = self.write_block(key_groups, count, pending.as_bytes());
        self.pending = pending;
        self.pending.clear();
        written
    }

    /// Compresses and appends a checked block.
    fn write_block(
        &mut self,
        key_groups: KeyGroupRange,
        count: u32,
        payload: &[u8],
    ) -> Result<(), FormatError> {
        let compressed = self
            .compressor
            .compress(payload)
            .map_err(|e| invalid(format!("zstd compression failed: {e}")))?;
        let (codec, stored) = if compressed.len() < payload.len() {
            (COMPRESSION_ZSTD, compressed.as_slice())
        } else {
            (COMPRESSION_NONE, payload)
        };
        let offset = self.body.len();
        let mut w = Writer::new(&mut self.body, KIND);
        // Block header: key groups, count, compression, reserved, raw_len, stored_len.
        w.u32(key_groups.start);
        w.u32(key_groups.end);
        w.u32(count);
        w.u8(codec);
        w.buf.extend_from_slice(&[0u8; 3]);
        // Both within MAX_BLOCK_LEN (checked), zstd's bound of it included.
        w.u32(payload.len() as u32);
        w.u32(stored.len() as u32);
        w.buf.extend_from_slice(stored);
        let crc = crc32(&[self.body.get(offset..).unwrap_or_default()]);
        self.body.extend_from_slice(&crc.to_le_bytes());
        let len = self.body.len() - offset;
        self.index.push(SegmentBlock {
            key_groups,
            offset: offset as u64, // relative to the body until `finish`
            len: u32::try_from(len).map_err(|_| invalid(format!("block too long len={len}")))?,
            records: count,
        });
        self.written += u64::from(count);
        Ok(())
    }
}

/// `key_group=kg` for one key group, `key_groups=a..b` for more (error messages).
struct KeyGroupsDisplay(KeyGroupRange);

impl std::fmt::Display for KeyGroupsDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() == 1 {
            write!(f, "key_group={}", self.0.start)
        } else {
            write!(f, "key_groups={}", self.0)
        }
    }
}

/// The lowest and highest key group seen.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeyGroupBounds(Option<(u32, u32)>);

impl KeyGroupBounds {
    pub(crate) fn note(&mut self, kg: u32) {
        self.0 = Some(match self.0 {
            None => (kg, kg),
            Some((lo, hi)) => (lo.min(kg), hi.max(kg)),
        });
    }

    /// From the lowest to the highest + 1; `None` when none was seen.
    pub(crate) fn range(self) -> Option<KeyGroupRange> {
        self.0
            .map(|(lo, hi)| KeyGroupRange::new(lo, hi.saturating_add(1)))
    }
}

fn check_unique_names(states: &[FileState]) -> Result<(), FormatError> {
    let mut names = std::collections::BTreeSet::new();
    for s in states {
        if !names.insert(s.name.as_str()) {
            return Err(invalid(format!("state appears twice state={}", s.name)));
        }
    }
    Ok(())
}

/// Refuses key groups a v2 record cannot hold.
fn check_key_groups(key_groups: KeyGroupRange) -> Result<(), FormatError> {
    if key_groups.end > MAX_MAX_PARALLELISM {
        return Err(invalid(format!(
            "key group out of range key_group={} max={}",
            key_groups.end.saturating_sub(1),
            MAX_MAX_PARALLELISM - 1
        )));
    }
    Ok(())
}

fn check_len(len: usize) -> Result<(), FormatError> {
    if len > MAX_BLOCK_LEN {
        return Err(invalid(format!(
            "block larger than the limit len={len} max={MAX_BLOCK_LEN}"
        )));
    }
    Ok(())
}

fn invalid(detail: String) -> FormatError {
    FormatError::Invalid { kind: KIND, detail }
}

/// Decodes a v2 record whose key group must lie in `block` (the block's range).
pub(crate) fn decode_record_v2<'a>(
    r: &mut Reader<'a>,
    block: KeyGroupRange,
    states: &[FileState],
) -> Result<ChangelogRecord<'a>, FormatError> {
    let at = r.offset();
    let key_group = u32::from(r.u16("record key group")?);
    if key_group >= MAX_MAX_PARALLELISM {
        return Err(r.corrupt_at(at, format!("key group out of range key_group={key_group}")));
    }
    if !block.contains(key_group) {
        return Err(r.corrupt_at(
            at,
            format!("record key group outside the block's key_group={key_group} block={block}"),
        ));
    }
    decode_record(r, key_group, states)
}

/// Decodes a record of `key_group` (a v1 record; a v2 record after its key group).
pub(crate) fn decode_record<'a>(
    r: &mut Reader<'a>,
    key_group: u32,
    states: &[FileState],
) -> Result<ChangelogRecord<'a>, FormatError> {
    let at = r.offset();
    let state = r.u32("record state")?;
    let code = r.u8("record op")?;
    let op = ChangelogOp::from_code(code)
        .ok_or_else(|| r.corrupt_at(at, format!("unknown changelog op code={code}")))?;
    let kind = states
        .get(state as usize)
        .map(|s| s.kind)
        .ok_or_else(|| r.corrupt_at(at, format!("record names an unknown state index={state}")))?;
    if !op.applies_to(kind) {
        return Err(r.corrupt_at(
            at,
            format!("changelog op {op:?} does not apply to {kind:?} state index={state}"),
        ));
    }
    let key = r.bytes("record key")?;
    let namespace = r.bytes("record namespace")?;
    let user_key = if op.has_user_key() {
        Some(r.bytes("record user key")?)
    } else {
        None
    };
    let value = if op.has_value() {
        Some(r.bytes("record value")?)
    } else {
        None
    };
    Ok(ChangelogRecord {
        key_group,
        state,
        op,
        key,
        namespace,
        user_key,
        value,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ChangelogSegmentReader;

    /// The version 1 golden vector (format-spec/vectors).
    const V1_SEGMENT: &[u8] =
        include_bytes!("../../../format-spec/vectors/changelog-segment-v1.cls");

    fn states() -> Vec<FileState> {
        vec![
            FileState {
                name: "count".into(),
                kind: StateKind::Value,
            },
            FileState {
                name: "tags".into(),
                kind: StateKind::Map,
            },
        ]
    }

    fn record<'a>(
        key_group: u32,
        state: u32,
        op: ChangelogOp,
        key: &'a [u8],
        user_key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    ) -> ChangelogRecord<'a> {
        ChangelogRecord {
            key_group,
            state,
            op,
            key,
            namespace: b"ns",
            user_key,
            value,
        }
    }

    /// What a scan yields of a record.
    type Seen = (u32, u32, ChangelogOp, Vec<u8>, Option<Vec<u8>>);

    fn seen(r: &ChangelogRecord<'_>) -> Seen {
        (
            r.key_group,
            r.state,
            r.op,
            r.key.to_vec(),
            r.value.map(<[u8]>::to_vec),
        )
    }

    fn scan(bytes: &[u8], range: KeyGroupRange) -> Result<Vec<Seen>, FormatError> {
        let r = ChangelogSegmentReader::open(Bytes::copy_from_slice(bytes), "s")?;
        let mut out = Vec::new();
        r.scan::<FormatError, _>(range, |rec| {
            out.push(seen(rec));
            Ok(())
        })?;
        Ok(out)
    }

    const ALL: KeyGroupRange = KeyGroupRange::all(MAX_MAX_PARALLELISM);

    /// Records in key groups 3, 9, 3, 12 and 9, in that order: through `add_encoded`, a
    /// chunk and `add`.
    fn sample_records() -> Vec<ChangelogRecord<'static>> {
        vec![
            record(3, 0, ChangelogOp::Set, b"k", None, Some(b"7")),
            record(9, 1, ChangelogOp::MapPut, b"k", Some(b"u"), Some(b"x")),
            record(3, 0, ChangelogOp::Clear, b"k", None, None),
            record(12, 1, ChangelogOp::MapRemove, b"z", Some(b"u"), None),
            record(9, 0, ChangelogOp::Set, b"y", None, Some(b"8")),
        ]
    }

    fn sample() -> Vec<u8> {
        let recs = sample_records();
        let mut w = ChangelogSegmentWriter::new(states(), 40).unwrap();
        let mut buf = Vec::new();
        for r in &recs[..3] {
            encode_changelog_record_v2(r, &mut buf);
        }
        w.add_encoded(3, &buf).unwrap();
        let mut chunk = ChangelogChunk::new();
        chunk.push(&recs[3]);
        w.add_chunk(&chunk).unwrap();
        w.add(&recs[4]).unwrap();
        assert_eq!(w.records(), 5);
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_in_file_order() {
        let bytes = sample();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "s").unwrap();
        assert_eq!((r.version(), r.first_sqn(), r.record_count()), (2, 40, 5));
        assert_eq!(r.states(), states().as_slice());
        let ranges: Vec<_> = r.blocks().iter().map(|b| b.key_groups).collect();
        assert_eq!(
            ranges,
            [
                KeyGroupRange::new(3, 10),
                KeyGroupRange::new(12, 13),
                KeyGroupRange::new(9, 10)
            ]
        );
        r.verify_all().unwrap();
        let want: Vec<_> = sample_records().iter().map(seen).collect();
        assert_eq!(scan(&bytes, ALL).unwrap(), want);
    }

    /// A scan yields the records of its key groups in file order, and skips the blocks
    /// whose range misses it without reading them.
    #[test]
    fn range_scan_filters_by_key_group_across_mixed_blocks() {
        let bytes = sample();
        let kgs =
            |range| -> Vec<u32> { scan(&bytes, range).unwrap().iter().map(|s| s.0).collect() };
        assert_eq!(kgs(KeyGroupRange::new(0, 4)), [3, 3]);
        assert_eq!(kgs(KeyGroupRange::new(4, 10)), [9, 9]);
        assert_eq!(kgs(KeyGroupRange::new(9, 13)), [9, 12, 9]);
        assert_eq!(kgs(KeyGroupRange::new(4, 9)), Vec::<u32>::new());
        assert_eq!(kgs(KeyGroupRange::new(13, 100)), Vec::<u32>::new());

        // Damage the second block's payload (key group 12): scans that miss 12 skip it.
        let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "s").unwrap();
        let b = r.blocks()[1];
        let mut damaged = bytes.clone();
        damaged[b.offset as usize + BLOCK_V2_HEADER_LEN] ^= 1;
        assert_eq!(scan(&damaged, KeyGroupRange::new(0, 12)).unwrap().len(), 4);
        let e = scan(&damaged, KeyGroupRange::new(12, 13)).unwrap_err();
        assert!(
            e.to_string().contains("record block checksum mismatch"),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains(&format!("path=s offset={}", b.offset)),
            "{e}"
        );
    }

    fn assert_every_truncation_and_bit_flip_is_an_error(bytes: &[u8]) {
        for cut in 0..bytes.len() {
            let e = ChangelogSegmentReader::open(Bytes::copy_from_slice(&bytes[..cut]), "s")
                .and_then(|r| r.verify_all());
            assert!(e.is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.to_vec();
            b[i / 8] ^= 1 << (i % 8);
            let e = ChangelogSegmentReader::open(Bytes::from(b), "s").and_then(|r| r.verify_all());
            assert!(e.is_err(), "bit {i}");
        }
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample();
        assert_every_truncation_and_bit_flip_is_an_error(&bytes);
        // With compressed blocks as well.
        let long = vec![b'x'; 2000];
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        w.add(&record(1, 0, ChangelogOp::Set, b"k", None, Some(&long)))
            .unwrap();
        w.add(&record(2, 0, ChangelogOp::Set, b"k", None, Some(&long)))
            .unwrap();
        let bytes = w.finish().unwrap();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "s").unwrap();
        assert!(bytes.len() < long.len(), "compressed");
        assert_eq!(r.blocks().len(), 1);
        assert_every_truncation_and_bit_flip_is_an_error(&bytes);
    }

    /// Version 1 (one key group per block, records without their key group) still reads.
    #[test]
    fn version_1_segments_still_read() {
        let r = ChangelogSegmentReader::open(Bytes::from_static(V1_SEGMENT), "v1").unwrap();
        assert_eq!((r.version(), r.first_sqn(), r.record_count()), (1, 1000, 5));
        let blocks: Vec<_> = r
            .blocks()
            .iter()
            .map(|b| (b.key_groups, b.records))
            .collect();
        assert_eq!(
            blocks,
            [
                (KeyGroupRange::new(1, 2), 3),
                (KeyGroupRange::new(5, 6), 1),
                (KeyGroupRange::new(5, 6), 1)
            ]
        );
        let got = scan(V1_SEGMENT, ALL).unwrap();
        let ops: Vec<_> = got.iter().map(|s| (s.0, s.1, s.2, s.3.clone())).collect();
        assert_eq!(
            ops,
            [
                (1, 0, ChangelogOp::Set, b"alice".to_vec()),
                (1, 0, ChangelogOp::Set, b"alice".to_vec()),
                (1, 0, ChangelogOp::Clear, b"bob".to_vec()),
                (5, 1, ChangelogOp::MapPut, b"carol".to_vec()),
                (5, 1, ChangelogOp::MapRemove, b"carol".to_vec()),
            ]
        );
        assert_eq!(scan(V1_SEGMENT, KeyGroupRange::new(2, 8)).unwrap().len(), 2);
        assert_every_truncation_and_bit_flip_is_an_error(V1_SEGMENT);
    }

    /// Recomputes every block CRC and the footer CRC of a v2 segment (to test the checks
    /// behind them).
    fn reseal(bytes: &mut [u8]) {
        let r = ChangelogSegmentReader::open(Bytes::copy_from_slice(bytes), "s");
        let footer_at = bytes.len() - FOOTER_LEN;
        let index_at =
            u64::from_le_bytes(bytes[footer_at..footer_at + 8].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(bytes[index_at..index_at + 4].try_into().unwrap()) as usize;
        let mut table_end = None;
        for i in 0..count {
            let e = index_at + 4 + i * 24;
            let offset = u64::from_le_bytes(bytes[e + 8..e + 16].try_into().unwrap()) as usize;
            let len = u32::from_le_bytes(bytes[e + 16..e + 20].try_into().unwrap()) as usize;
            table_end.get_or_insert(offset);
            let crc = crc32(&[&bytes[offset..offset + len - 4]]);
            bytes[offset + len - 4..offset + len].copy_from_slice(&crc.to_le_bytes());
        }
        let table_end = table_end.unwrap();
        let crc = crc32(&[
            &bytes[..table_end],
            &bytes[index_at..footer_at + FOOTER_CRC],
        ]);
        bytes[footer_at + FOOTER_CRC..footer_at + FOOTER_CRC + 4]
            .copy_from_slice(&crc.to_le_bytes());
        drop(r);
    }

    /// One uncompressed block of key groups 3 and 9 (records at 3, 9, 3; keys that do not
    /// compress).
    fn small_segment() -> (Vec<u8>, SegmentBlock, usize) {
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let mut chunk = ChangelogChunk::new();
        chunk.push(&record(
            3,
            0,
            ChangelogOp::Set,
            &[0x13, 0x88],
            None,
            Some(&[0x2f]),
        ));
        chunk.push(&record(
            9,
            1,
            ChangelogOp::MapPut,
            &[0xa1, 0x5c],
            Some(&[0x77]),
            Some(&[0xe4]),
        ));
        chunk.push(&record(3, 0, ChangelogOp::Clear, &[0x0b, 0xd2], None, None));
        w.add_chunk(&chunk).unwrap();
        let bytes = w.finish().unwrap();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "s").unwrap();
        let b = r.blocks()[0];
        let index_entry = bytes.len() - FOOTER_LEN - 24;
        assert_eq!(bytes[b.offset as usize + 12], COMPRESSION_NONE);
        (bytes, b, index_entry)
    }

    fn reseal_error(bytes: &mut [u8]) -> String {
        reseal(bytes);
        ChangelogSegmentReader::open(Bytes::copy_from_slice(bytes), "s")
            .and_then(|r| r.verify_all())
            .unwrap_err()
            .to_string()
    }

    /// Behind the checksums: a record outside its block's range, a range wider than the
    /// records', a header differing from the index, an empty range, a key group beyond the
    /// key-group space.
    #[test]
    fn key_group_ranges_are_checked() {
        let (good, b, entry) = small_segment();
        let at = b.offset as usize;
        let payload = at + BLOCK_V2_HEADER_LEN;
        let set_u32 = |bytes: &mut Vec<u8>, at: usize, v: u32| {
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        };

        // The second record (key group 9) claims key group 10.
        let mut bytes = good.clone();
        let second = payload + 2 + 4 + 1 + 4 + 2 + 4 + 2 + 4 + 1;
        assert_eq!(bytes[second], 9);
        bytes[second] = 10;
        let e = reseal_error(&mut bytes);
        assert!(
            e.contains("record key group outside the block's key_group=10 block=3..10"),
            "{e}"
        );
        assert!(e.contains(&format!("offset={second}")), "{e}");

        // Block and index claim 3..11: wider than the records.
        let mut bytes = good.clone();
        set_u32(&mut bytes, at + 4, 11);
        set_u32(&mut bytes, entry + 4, 11);
        let e = reseal_error(&mut bytes);
        assert!(
            e.contains("block key groups differ from its records' block=3..11 records=Some(3..10)"),
            "{e}"
        );

        // The block header differs from the index.
        let mut bytes = good.clone();
        set_u32(&mut bytes, at + 4, 11);
        let e = reseal_error(&mut bytes);
        assert!(
            e.contains("block header differs from the index key_groups=3..11"),
            "{e}"
        );

        // Empty or out-of-space ranges in the index.
        for (start, end) in [(3, 3), (5, 3), (3, MAX_MAX_PARALLELISM + 1)] {
            let mut bytes = good.clone();
            set_u32(&mut bytes, entry, start);
            set_u32(&mut bytes, entry + 4, end);
            let e = reseal_error(&mut bytes);
            assert!(e.contains("bad index entry key_groups="), "{e}");
            assert!(e.contains(&format!("offset={entry}")), "{e}");
        }

        // Reserved bytes, unknown compression.
        for (byte, says) in [
            (at + 13, "block reserved field is not zero"),
            (at + 12, "unknown compression code=2"),
        ] {
            let mut bytes = good.clone();
            bytes[byte] = 2;
            let e = reseal_error(&mut bytes);
            assert!(e.contains(says), "{e}");
        }
        let mut bytes = good;
        reseal(&mut bytes);
        scan(&bytes, ALL).unwrap();
    }

    #[test]
    fn unknown_versions_are_refused() {
        let mut bytes = sample();
        let footer_version = bytes.len() - FOOTER_LEN + FOOTER_VERSION;
        bytes[HEADER_VERSION_OFFSET] = 3;
        bytes[footer_version] = 3;
        let e = ChangelogSegmentReader::open(Bytes::from(bytes), "s").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported changelog segment version 3: this build reads version 1 or 2; upgrade cairn to read it path=s"
        );
    }

    #[test]
    fn writer_refuses_bad_input() {
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let rec = |kg, state, op| record(kg, state, op, b"k", None, Some(b"v"));
        w.add(&rec(5, 0, ChangelogOp::Set)).unwrap();
        // Key groups need not be sorted any more.
        w.add(&rec(4, 0, ChangelogOp::Set)).unwrap();
        let refusals = [
            (rec(6, 7, ChangelogOp::Set), "unknown state index=7 states=2 ops=[Set] key_group=6"),
            (
                rec(6, 1, ChangelogOp::Set),
                "changelog op Set does not apply to Map state index=1 state=tags key_group=6",
            ),
            (
                rec(MAX_MAX_PARALLELISM, 0, ChangelogOp::Set),
                "key group out of range key_group=32768 max=32767",
            ),
            (
                record(6, 1, ChangelogOp::MapPut, b"k", None, Some(b"v")),
                "without the user key or value its op needs, or with one it has none of, index=1 state=tags ops=[MapPut] key_group=6",
            ),
        ];
        for (bad, says) in &refusals {
            let e = w.add(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            let mut chunk = ChangelogChunk::new();
            chunk.push(bad);
            let e = w.add_chunk(&chunk).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        // Nothing refused was written.
        assert_eq!(w.records(), 2);
        let bytes = w.finish().unwrap();
        assert_eq!(scan(&bytes, ALL).unwrap().len(), 2);

        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let mut buf = Vec::new();
        encode_changelog_record_v2(&rec(70_000, 0, ChangelogOp::Set), &mut buf);
        let e = w.add_encoded(1, &buf).unwrap_err().to_string();
        assert!(e.contains("key group out of range key_group=65535"), "{e}");
        assert!(w.add_encoded(0, &buf).is_err(), "bytes without records");
        assert!(
            w.add_encoded(2, &buf).is_err(),
            "fewer records than counted"
        );
        w.add_encoded(0, &[]).unwrap();
        let e = ChangelogSegmentWriter::new(vec![states()[0].clone(), states()[0].clone()], 0)
            .unwrap_err();
        assert!(
            e.to_string().contains("state appears twice state=count"),
            "{e}"
        );
    }

    /// Records of every op the sample table allows, some with long repetitive values (so
    /// that blocks get compressed), in key groups spread over 0..50, in chunks of 40.
    fn chunks() -> Vec<ChangelogChunk> {
        let long = vec![b'x'; 300];
        let mut out = Vec::new();
        for c in 0..5u32 {
            let mut chunk = ChangelogChunk::with_capacity(1 << 10);
            for i in 0..40u32 {
                let key = i.to_le_bytes();
                let kg = (i * 7 + c * 13) % 50;
                let v: &[u8] = if i % 3 == 0 { &long } else { &key };
                chunk.push(&match i % 4 {
                    0 => record(kg, 0, ChangelogOp::Set, &key, None, Some(v)),
                    1 => record(kg, 1, ChangelogOp::MapPut, &key, Some(b"u"), Some(v)),
                    2 => record(kg, 1, ChangelogOp::MapRemove, &key, Some(b"u"), None),
                    _ => record(kg, 0, ChangelogOp::Clear, &key, None, None),
                });
            }
            out.push(chunk);
        }
        out
    }

    /// `add_chunk` writes byte for byte what `add_encoded` writes for the same records.
    #[test]
    fn add_chunk_writes_what_add_encoded_writes() {
        let mut by_chunk = ChangelogSegmentWriter::new(states(), 7).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(states(), 7).unwrap();
        for chunk in &chunks() {
            assert_eq!(chunk.len(), 40);
            by_chunk.add_chunk(chunk).unwrap();
            by_bytes
                .add_encoded(chunk.len() as u32, chunk.as_bytes())
                .unwrap();
        }
        by_chunk.add_chunk(&ChangelogChunk::new()).unwrap();
        assert_eq!(by_chunk.records(), 200);
        let (a, b) = (by_chunk.finish().unwrap(), by_bytes.finish().unwrap());
        assert_eq!(a, b);
        let r = ChangelogSegmentReader::open(Bytes::from(a), "s").unwrap();
        assert_eq!((r.record_count(), r.blocks().len()), (200, 5));
        assert!(r.blocks().iter().all(|b| b.key_groups.end <= 50));
        r.verify_all().unwrap();
    }

    /// A chunk is recycled: `clear` forgets its records, key groups and ops.
    #[test]
    fn cleared_chunks_start_over() {
        let mut chunk = ChangelogChunk::with_capacity(4096);
        assert_eq!(chunk.key_groups(), None);
        chunk.push(&record(7, 1, ChangelogOp::Set, b"k", None, Some(b"v")));
        chunk.push(&record(20, 5000, ChangelogOp::Clear, b"k", None, None));
        chunk.push(&record(2, 9, ChangelogOp::Clear, b"k", None, None));
        assert_eq!(chunk.key_groups(), Some(KeyGroupRange::new(2, 21)));
        assert_eq!((chunk.len(), chunk.is_empty()), (3, false));
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        assert!(w.add_chunk(&chunk).is_err());
        chunk.clear();
        assert_eq!(
            (chunk.len(), chunk.len_bytes(), chunk.key_groups()),
            (0, 0, None)
        );
        assert!(chunk.is_empty() && chunk.as_bytes().is_empty());
        assert!(chunk.as_bytes().is_empty());
        chunk.push(&record(30, 0, ChangelogOp::Set, b"k", None, Some(b"v")));
        assert_eq!(chunk.key_groups(), Some(KeyGroupRange::new(30, 31)));
        assert!(!chunk.untracked() && chunk.op_masks().count() == 1);
        w.add_chunk(&chunk).unwrap();
        assert_eq!(w.records(), 1);
    }

    fn refusal(chunk: &ChangelogChunk, table: Vec<FileState>) -> String {
        let mut w = ChangelogSegmentWriter::new(table, 0).unwrap();
        let e = w.add_chunk(chunk).unwrap_err().to_string();
        assert_eq!(w.records(), 0, "nothing written");
        e
    }

    /// What decoding would catch, the op masks catch: an op the state's kind forbids, a
    /// state index beyond the table, a record whose parts do not match its op; the message
    /// names the state index, the ops and the chunk's key groups.
    #[test]
    fn add_chunk_refuses_ops_the_table_does_not_allow() {
        let mut ok = ChangelogChunk::new();
        ok.push(&record(4, 0, ChangelogOp::Set, b"k", None, Some(b"v")));
        ok.push(&record(
            6,
            1,
            ChangelogOp::MapPut,
            b"k",
            Some(b"u"),
            Some(b"v"),
        ));

        // Each bad record after the good ones, and what the refusal must say.
        let cases: [(ChangelogRecord<'_>, &[&str]); 3] = [
            (
                record(5, 1, ChangelogOp::Set, b"k", None, Some(b"v")),
                &["changelog op Set does not apply to Map state index=1"],
            ),
            (
                record(5, 2, ChangelogOp::Clear, b"k", None, None),
                &["changelog record names an unknown state index=2 states=2 ops=[Clear]"],
            ),
            (
                record(5, 1, ChangelogOp::MapPut, b"k", None, Some(b"v")),
                &[
                    "changelog record without the user key or value its op needs",
                    "index=1 state=tags ops=[MapPut]",
                ],
            ),
        ];
        for (bad, says) in cases {
            let mut chunk = ok.clone();
            chunk.push(&bad);
            let e = refusal(&chunk, states());
            assert!(
                says.iter().all(|s| e.contains(s)) && e.contains("key_groups=4..7"),
                "{e}"
            );
            // The same bytes do not decode either.
            let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
            assert!(w.add_encoded(3, chunk.as_bytes()).is_err());
        }
        let mut chunk = ok;
        chunk.push(&record(40_000, 0, ChangelogOp::Clear, b"k", None, None));
        let e = refusal(&chunk, states());
        assert!(e.contains("key group out of range key_group=40000"), "{e}");
    }

    /// A state index too large to track is checked by decoding: refused beyond the table,
    /// written like `add_encoded` within it.
    #[test]
    fn add_chunk_checks_untracked_state_indices_by_decoding() {
        let mut chunk = ChangelogChunk::new();
        chunk.push(&record(4, 0, ChangelogOp::Set, b"k", None, Some(b"v")));
        chunk.push(&record(4, 5000, ChangelogOp::Clear, b"k", None, None));
        let e = refusal(&chunk, states());
        assert!(e.contains("unknown state index=5000"), "{e}");

        let table: Vec<FileState> = (0..5001)
            .map(|i| FileState {
                name: format!("s{i}"),
                kind: StateKind::Value,
            })
            .collect();
        let mut by_chunk = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(table, 0).unwrap();
        by_chunk.add_chunk(&chunk).unwrap();
        by_bytes.add_encoded(2, chunk.as_bytes()).unwrap();
        assert_eq!(by_chunk.finish().unwrap(), by_bytes.finish().unwrap());
    }

    /// State indices past the inline masks are tracked as well.
    #[test]
    fn add_chunk_tracks_states_past_the_inline_masks() {
        let table: Vec<FileState> = (0..12)
            .map(|i| FileState {
                name: format!("s{i}"),
                kind: if i % 2 == 0 {
                    StateKind::Value
                } else {
                    StateKind::List
                },
            })
            .collect();
        let mut ok = ChangelogChunk::new();
        for state in [0, 7, 8, 11, 9] {
            ok.push(&record(4, state, ChangelogOp::Clear, b"k", None, None));
        }
        ok.push(&record(4, 10, ChangelogOp::Set, b"k", None, Some(b"v")));
        ok.push(&record(
            4,
            11,
            ChangelogOp::ListAppend,
            b"k",
            None,
            Some(b"v"),
        ));
        let mut by_chunk = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        by_chunk.add_chunk(&ok).unwrap();
        by_bytes.add_encoded(7, ok.as_bytes()).unwrap();
        assert_eq!(by_chunk.finish().unwrap(), by_bytes.finish().unwrap());

        let mut chunk = ok.clone();
        chunk.push(&record(4, 10, ChangelogOp::ListSet, b"k", None, Some(b"v")));
        let e = refusal(&chunk, table.clone());
        assert!(
            e.contains(
                "changelog op ListSet does not apply to Value state index=10 state=s10 key_group=4"
            ),
            "{e}"
        );
        let mut chunk = ok.clone();
        chunk.push(&record(4, 12, ChangelogOp::Clear, b"k", None, None));
        let e = refusal(&chunk, table.clone());
        assert!(e.contains("unknown state index=12 states=12"), "{e}");
        let mut chunk = ok;
        chunk.push(&record(4, 9, ChangelogOp::ListSet, b"k", None, None));
        let e = refusal(&chunk, table);
        assert!(e.contains("index=9 state=s9 ops=[Clear, ListSet]"), "{e}");
    }

    /// The table may grow while the segment is open; chunks are checked against the
    /// current one; anything but an extension is refused and changes nothing.
    #[test]
    fn set_states_accepts_only_extensions() {
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let mut chunk = ChangelogChunk::new();
        chunk.push(&record(
            1,
            2,
            ChangelogOp::ListAppend,
            b"k",
            None,
            Some(b"v"),
        ));
        assert!(w.add_chunk(&chunk).is_err(), "state 2 not registered yet");

        let mut longer = states();
        longer.push(FileState {
            name: "items".into(),
            kind: StateKind::List,
        });
        let mut renamed = longer.clone();
        renamed[1].name = "labels".into();
        let mut rekinded = longer.clone();
        rekinded[0].kind = StateKind::Reducing;
        let mut doubled = longer.clone();
        doubled.push(longer[0].clone());
        for (table, says) in [
            (
                vec![states()[0].clone()],
                "it has fewer states states=1 previous=2",
            ),
            (renamed, "index=1 was tags (Map), now labels (Map)"),
            (rekinded, "index=0 was count (Value), now count (Reducing)"),
            (doubled, "state appears twice state=count"),
            (
                states().into_iter().rev().collect(),
                "index=0 was count (Value), now tags (Map)",
            ),
        ] {
            let e = w.set_states(table).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert_eq!(w.states(), states().as_slice());
        }
        w.set_states(states()).unwrap();
        w.set_states(longer.clone()).unwrap();
        assert_eq!(w.states(), longer.as_slice());
        w.add_chunk(&chunk).unwrap();
        let bytes = w.finish().unwrap();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes), "s").unwrap();
        assert_eq!(r.states(), longer.as_slice());
        r.verify_all().unwrap();
    }

    /// `add` buffers records into blocks cut near 64 KiB, in order with the chunks and
    /// encoded blocks added between them.
    #[test]
    fn add_cuts_blocks_near_64_kib_in_order() {
        let value = vec![7u8; 1000];
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let mut want = Vec::new();
        for i in 0..200u32 {
            let key = i.to_le_bytes();
            let r = record(i % 11, 0, ChangelogOp::Set, &key, None, Some(&value));
            want.push(seen(&r));
            if i == 150 {
                let mut chunk = ChangelogChunk::new();
                chunk.push(&r);
                w.add_chunk(&chunk).unwrap();
            } else {
                w.add(&r).unwrap();
            }
        }
        assert_eq!(w.records(), 200);
        let bytes = w.finish().unwrap();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "s").unwrap();
        let records: Vec<_> = r.blocks().iter().map(|b| b.records).collect();
        // 1025-byte records: a block ends with the 64th (65,600 bytes).
        assert_eq!(records, [64, 64, 22, 1, 49]);
        assert_eq!(scan(&bytes, ALL).unwrap(), want);
    }
}
