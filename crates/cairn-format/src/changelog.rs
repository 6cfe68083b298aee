//! Changelog segments (format-spec/README.md, "Changelog segment"): the state changes a
//! changelog backend (`cairn-changelog`) records between materializations, grouped by key
//! group so a restore at another parallelism reads only its key groups.
//!
//! ```text
//! header                 (SEGMENT_HEADER_LEN = 16)
//!   0  8  magic           "CAIRNCL\0"
//!   8  2  version         u16 = 1
//!  10  2  flags           u16: bits 0..=7 required, 8..=15 optional; v1 defines none
//!  12  4  reserved        u32 = 0
//! state table            count u32, then count × (name str, kind u8)
//! record blocks          sorted by key group (several per key group allowed), each:
//!   0  4  key_group       u32
//!   4  4  count           u32 >= 1: records in the block
//!   8  1  compression     u8: 0 none, 1 zstd
//!   9  3  reserved        0
//!  12  4  raw_len         u32 <= MAX_BLOCK_LEN
//!  16  4  stored_len      u32 (== raw_len when not compressed)
//!  20     payload         stored_len bytes: count × record
//!   .  4  crc32           CRC32 of the block's header and stored payload
//! index                  count u32, then count × (key_group u32, offset u64, len u32, records u32)
//! footer                 (SEGMENT_FOOTER_LEN = 40)
//!   0  8  index_offset    u64
//!   8  8  first_sqn       u64: sequence number of the first record
//!  16  8  record_count    u64: records in the file (= sum over the index)
//!  24  4  crc32           CRC32 of the header, state table, index and footer bytes 0..24
//!  28  2  version         u16, equal to the header's
//!  30  2  reserved        u16 = 0
//!  32  8  magic           "CAIRNCL\0"
//! ```
//!
//! A record: `state u32, op u8, key bytes, namespace bytes`, then `user_key bytes` for map
//! operations and `value bytes` for operations that carry a value ([`ChangelogOp`]).

use std::io::Read;

use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind, MAX_MAX_PARALLELISM};

use crate::changelog_records::MISSHAPEN;
use crate::codec::{corrupt, crc32, crc_matches, Reader, Version, Writer};
use crate::{ChangelogBlock, ChangelogRecords};
use crate::{FileState, FormatError, MAX_BLOCK_LEN};

/// The first (and last) eight bytes of every changelog segment.
pub const CHANGELOG_MAGIC: [u8; 8] = *b"CAIRNCL\0";

const KIND: &str = "changelog segment";
const MAGIC_LEN: usize = 8;

const HEADER_VERSION_OFFSET: usize = MAGIC_LEN;
const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + 2;
const HEADER_RESERVED_OFFSET: usize = HEADER_FLAGS_OFFSET + 2;
const HEADER_LEN: usize = HEADER_RESERVED_OFFSET + 4;

const BLOCK_KEY_GROUP: usize = 0;
const BLOCK_COUNT: usize = BLOCK_KEY_GROUP + 4;
const BLOCK_COMPRESSION: usize = BLOCK_COUNT + 4;
const BLOCK_RESERVED: usize = BLOCK_COMPRESSION + 1;
const BLOCK_RAW_LEN: usize = BLOCK_RESERVED + 3;
const BLOCK_STORED_LEN: usize = BLOCK_RAW_LEN + 4;
const BLOCK_HEADER_LEN: usize = BLOCK_STORED_LEN + 4;
const BLOCK_TRAILER_LEN: usize = 4;

const FOOTER_INDEX_OFFSET: usize = 0;
const FOOTER_FIRST_SQN: usize = FOOTER_INDEX_OFFSET + 8;
const FOOTER_RECORD_COUNT: usize = FOOTER_FIRST_SQN + 8;
const FOOTER_CRC: usize = FOOTER_RECORD_COUNT + 8;
const FOOTER_VERSION: usize = FOOTER_CRC + 4;
const FOOTER_RESERVED: usize = FOOTER_VERSION + 2;
const FOOTER_MAGIC: usize = FOOTER_RESERVED + 2;
const FOOTER_LEN: usize = FOOTER_MAGIC + MAGIC_LEN;

/// Index entry: key_group u32, offset u64, len u32, records u32.
const INDEX_ENTRY_LEN: usize = 4 + 8 + 4 + 4;
const MIN_STATE_ENTRY_LEN: usize = 4 + 1;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
const ZSTD_LEVEL: i32 = 1;
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Required header flags this build understands (v1 defines none).
const REQUIRED_FLAGS_MASK: u16 = 0x00ff;
const KNOWN_REQUIRED_FLAGS: u16 = 0;

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

/// Appends the payload encoding of `r` (without its key group, which the block holds) to
/// `out`: the parts `r` holds (a record whose user key and value do not match its op does
/// not decode). Backends that buffer records use a [`ChangelogRecords`], which encodes with
/// it.
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

/// One block of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentBlock {
    /// Its key group.
    pub key_group: u32,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length in the file.
    pub len: u32,
    /// Records in it.
    pub records: u32,
}

/// Writes one changelog segment: blocks of records in non-decreasing key-group order.
pub struct ChangelogSegmentWriter {
    states: Vec<FileState>,
    first_sqn: u64,
    body: Vec<u8>,
    index: Vec<SegmentBlock>,
    records: u64,
    compressor: zstd::bulk::Compressor<'static>,
}

impl std::fmt::Debug for ChangelogSegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogSegmentWriter")
            .field("states", &self.states)
            .field("first_sqn", &self.first_sqn)
            .field("records", &self.records)
            .field("blocks", &self.index.len())
            .finish_non_exhaustive()
    }
}

impl ChangelogSegmentWriter {
    /// A segment whose records refer to `states` by index and whose first record has
    /// sequence number `first_sqn`.
    pub fn new(states: Vec<FileState>, first_sqn: u64) -> Result<Self, FormatError> {
        let mut names = std::collections::BTreeSet::new();
        for s in &states {
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!("state appears twice state={}", s.name)));
            }
        }
        let compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)
            .map_err(|e| invalid(format!("zstd compressor failed: {e}")))?;
        Ok(Self {
            states,
            first_sqn,
            body: Vec::new(),
            index: Vec::new(),
            records: 0,
            compressor,
        })
    }

    /// Appends a block of `count` records of `key_group`, encoded back to back with
    /// [`encode_changelog_record`]. The payload is checked (every record decodes and names
    /// a state of the table with an op its kind allows). Records buffered in a
    /// [`ChangelogRecords`] go through [`Self::add_block`] instead, which writes the same
    /// bytes without decoding them.
    pub fn add_encoded(
        &mut self,
        key_group: u32,
        count: u32,
        payload: &[u8],
    ) -> Result<(), FormatError> {
        if !self.check_block(key_group, count, payload.len())? {
            return Ok(());
        }
        self.check_by_decoding(key_group, count, payload)?;
        self.write_block(key_group, count, payload)
    }

    /// Appends a block of `key_group`'s records cut from a [`ChangelogRecords`]: the same
    /// bytes [`Self::add_encoded`] writes for `block.bytes()`, without decoding the records.
    /// The buffer's record of the ops used per state index is checked instead (every state
    /// index names a state of the table, with ops its kind allows, each record carrying the
    /// parts its op needs), in O(states); this checks the ops of the whole buffer the block
    /// was cut from.
    pub fn add_block(
        &mut self,
        key_group: u32,
        block: ChangelogBlock<'_>,
    ) -> Result<(), FormatError> {
        let (count, payload) = (block.count, block.bytes);
        if !self.check_block(key_group, count, payload.len())? {
            return Ok(());
        }
        let records = block.records;
        if u32::try_from(records.bytes.len()).is_err() {
            return Err(invalid(format!(
                "record buffer longer than 4 GiB len={} key_group={key_group}",
                records.bytes.len()
            )));
        }
        if records.untracked() {
            // A state index too large to track: check the rare buffer the slow way.
            self.check_by_decoding(key_group, count, payload)?;
        } else {
            self.check_ops(key_group, records)?;
        }
        self.write_block(key_group, count, payload)
    }

    /// Checks what every block needs (key group in range, sorted, size); `false` when the
    /// block is empty and writes nothing.
    fn check_block(&self, key_group: u32, count: u32, len: usize) -> Result<bool, FormatError> {
        if key_group >= MAX_MAX_PARALLELISM {
            return Err(invalid(format!(
                "key group out of range key_group={key_group}"
            )));
        }
        if let Some(last) = self.index.last() {
            if last.key_group > key_group {
                return Err(invalid(format!(
                    "blocks not sorted by key group key_group={key_group} previous={}",
                    last.key_group
                )));
            }
        }
        if count == 0 {
            return Ok(false);
        }
        if len > MAX_BLOCK_LEN {
            return Err(invalid(format!(
                "block larger than the limit len={len} max={MAX_BLOCK_LEN}"
            )));
        }
        Ok(true)
    }

    /// Checks the payload the way a reader will.
    fn check_by_decoding(
        &self,
        key_group: u32,
        count: u32,
        payload: &[u8],
    ) -> Result<(), FormatError> {
        let mut r = Reader::new(payload, 0, KIND, "(segment being written)");
        for _ in 0..count {
            decode_record(&mut r, key_group, &self.states)?;
        }
        r.finish("records")
    }

    /// Checks the op masks of a [`ChangelogRecords`] against the state table.
    fn check_ops(&self, key_group: u32, records: &ChangelogRecords) -> Result<(), FormatError> {
        for (index, mask) in records.op_masks() {
            let ops = (1..=6u8)
                .filter(|code| mask & 1 << code != 0)
                .filter_map(ChangelogOp::from_code);
            let Some(state) = self.states.get(index) else {
                let ops: Vec<_> = ops.collect();
                return Err(invalid(format!(
                    "changelog record names an unknown state index={index} states={} ops={ops:?} key_group={key_group}",
                    self.states.len()
                )));
            };
            if let Some(op) = ops.clone().find(|op| !op.applies_to(state.kind)) {
                return Err(invalid(format!(
                    "changelog op {op:?} does not apply to {:?} state index={index} state={} key_group={key_group}",
                    state.kind, state.name
                )));
            }
            if mask & MISSHAPEN != 0 {
                let ops: Vec<_> = ops.collect();
                return Err(invalid(format!(
                    "changelog record without the user key or value its op needs, or with one it has none of, index={index} state={} ops={ops:?} key_group={key_group}",
                    state.name
                )));
            }
        }
        Ok(())
    }

    /// Compresses and appends a checked block.
    fn write_block(
        &mut self,
        key_group: u32,
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
        // Block header: key group, count, compression, reserved, raw_len, stored_len.
        w.u32(key_group);
        w.u32(count);
        w.u8(codec);
        w.buf.extend_from_slice(&[0u8; 3]);
        w.u32(payload.len() as u32);
        w.u32(stored.len() as u32);
        w.buf.extend_from_slice(stored);
        let crc = crc32(&[self.body.get(offset..).unwrap_or_default()]);
        self.body.extend_from_slice(&crc.to_le_bytes());
        let len = self.body.len() - offset;
        self.index.push(SegmentBlock {
            key_group,
            offset: offset as u64, // relative to the body until `finish`
            len: u32::try_from(len).map_err(|_| invalid(format!("block too long len={len}")))?,
            records: count,
        });
        self.records += u64::from(count);
        Ok(())
    }

    /// Appends one record as a block of its own (for tests and small segments; batch
    /// records in a [`ChangelogRecords`] and add its blocks with [`Self::add_block`]).
    pub fn add(&mut self, r: &ChangelogRecord<'_>) -> Result<(), FormatError> {
        let mut buf = Vec::new();
        encode_changelog_record(r, &mut buf);
        self.add_encoded(r.key_group, 1, &buf)
    }

    /// Records added so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The finished file.
    pub fn finish(self) -> Result<Vec<u8>, FormatError> {
        let version = Version::CURRENT.as_u16();
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len() + 256);
        let mut w = Writer::new(&mut out, KIND);
        // Header: magic, version, flags (none), reserved.
        w.buf.extend_from_slice(&CHANGELOG_MAGIC);
        w.u16(version);
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
            w.u32(b.key_group);
            w.u64(b.offset + table_end as u64);
            w.u32(b.len);
            w.u32(b.records);
        }
        w.u64(index_offset as u64);
        w.u64(self.first_sqn);
        w.u64(self.records);
        let crc = crc32(&[
            out.get(..table_end).unwrap_or_default(),
            out.get(index_offset..).unwrap_or_default(),
        ]);
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&CHANGELOG_MAGIC);
        Ok(out)
    }
}

fn invalid(detail: String) -> FormatError {
    FormatError::Invalid { kind: KIND, detail }
}

fn decode_record<'a>(
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

/// Reads a changelog segment: `open` checks the header, footer, state table and index
/// (everything but the record blocks, which [`Self::scan`] checks as it reads them).
#[derive(Clone, Debug)]
pub struct ChangelogSegmentReader {
    bytes: Bytes,
    path: String,
    states: Vec<FileState>,
    index: Vec<SegmentBlock>,
    first_sqn: u64,
    record_count: u64,
}

impl ChangelogSegmentReader {
    /// Opens a segment; `path` names it in errors. A truncated (torn) or damaged segment
    /// is [`FormatError::Corrupt`] with the offset.
    pub fn open(bytes: Bytes, path: &str) -> Result<Self, FormatError> {
        let len = bytes.len();
        let b: &[u8] = &bytes;
        if len < HEADER_LEN + 4 + 4 + FOOTER_LEN {
            return Err(corrupt(
                KIND,
                path,
                len as u64,
                format!("truncated changelog segment len={len}"),
            ));
        }
        let footer_at = len - FOOTER_LEN;
        let mut h = Reader::new(b, 0, KIND, path);
        let mut f = Reader::new(
            b.get(footer_at..).unwrap_or_default(),
            footer_at as u64,
            KIND,
            path,
        );
        if h.take(MAGIC_LEN, "magic")? != CHANGELOG_MAGIC {
            return Err(h.corrupt_at(0, "bad magic, not a changelog segment"));
        }
        let version = h.u16("version")?;
        let flags = h.u16("flags")?;
        let reserved = h.u32("reserved")?;
        let index_offset = f.u64("index offset")?;
        let first_sqn = f.u64("first sequence number")?;
        let record_count = f.u64("record count")?;
        let stored_crc = f.u32("checksum")?;
        let footer_version = f.u16("footer version")?;
        let footer_reserved = f.u16("footer reserved")?;
        if f.take(MAGIC_LEN, "footer magic")? != CHANGELOG_MAGIC {
            return Err(f.corrupt_at(
                (footer_at + FOOTER_MAGIC) as u64,
                "bad footer magic (truncated or torn segment)",
            ));
        }
        if version != footer_version {
            return Err(h.corrupt_at(
                HEADER_VERSION_OFFSET as u64,
                format!(
                    "header and footer versions differ header={version} footer={footer_version}"
                ),
            ));
        }
        if Version::from_u16(version).is_none() {
            return Err(FormatError::UnsupportedVersion {
                kind: KIND,
                path: path.to_string(),
                found: version,
                supported: Version::SUPPORTED,
            });
        }
        if footer_reserved != 0 || reserved != 0 {
            let at = if reserved != 0 {
                HEADER_RESERVED_OFFSET
            } else {
                footer_at + FOOTER_RESERVED
            };
            return Err(corrupt(
                KIND,
                path,
                at as u64,
                "reserved field is not zero".to_string(),
            ));
        }
        let index_at = usize::try_from(index_offset)
            .ok()
            .filter(|o| (HEADER_LEN..=footer_at - 4).contains(o))
            .ok_or_else(|| {
                corrupt(
                    KIND,
                    path,
                    (footer_at + FOOTER_INDEX_OFFSET) as u64,
                    format!("index offset outside the file index_offset={index_offset}"),
                )
            })?;
        // The state table (right after the header) and the index are covered by the CRC.
        let mut t = Reader::new(
            b.get(HEADER_LEN..index_at).unwrap_or_default(),
            HEADER_LEN as u64,
            KIND,
            path,
        );
        let n = t.count(MIN_STATE_ENTRY_LEN, "state table")?;
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let name = t.string("state name")?;
            let at = t.offset();
            let code = t.u8("state kind")?;
            let kind = StateKind::from_code(code)
                .ok_or_else(|| t.corrupt_at(at, format!("unknown state kind code={code}")))?;
            if states.iter().any(|s: &FileState| s.name == name) {
                return Err(t.corrupt_at(at, format!("state appears twice state={name}")));
            }
            states.push(FileState { name, kind });
        }
        let table_end = t.offset() as usize;
        let computed = crc32(&[
            b.get(..table_end).unwrap_or_default(),
            b.get(index_at..footer_at + FOOTER_CRC).unwrap_or_default(),
        ]);
        if !crc_matches(stored_crc, computed) {
            return Err(corrupt(
                KIND,
                path,
                (footer_at + FOOTER_CRC) as u64,
                format!("checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"),
            ));
        }
        let unknown = flags & REQUIRED_FLAGS_MASK & !KNOWN_REQUIRED_FLAGS;
        if unknown != 0 {
            return Err(FormatError::UnsupportedFeature {
                kind: KIND,
                path: path.to_string(),
                offset: HEADER_FLAGS_OFFSET as u64,
                detail: format!("unknown required flags flags={unknown:#06x}"),
            });
        }
        let mut x = Reader::new(
            b.get(index_at..footer_at).unwrap_or_default(),
            index_at as u64,
            KIND,
            path,
        );
        let n = x.count(INDEX_ENTRY_LEN, "index")?;
        let mut index = Vec::with_capacity(n);
        let mut next = table_end as u64;
        let mut total = 0u64;
        for _ in 0..n {
            let at = x.offset();
            let e = SegmentBlock {
                key_group: x.u32("index key group")?,
                offset: x.u64("index offset")?,
                len: x.u32("index length")?,
                records: x.u32("index records")?,
            };
            let bad = |d: String| corrupt(KIND, path, at, d);
            if e.offset != next || e.len as usize <= BLOCK_HEADER_LEN + BLOCK_TRAILER_LEN {
                return Err(bad(format!(
                    "index entries do not tile the blocks offset={} expected={next} len={}",
                    e.offset, e.len
                )));
            }
            if e.records == 0 || e.key_group >= MAX_MAX_PARALLELISM {
                return Err(bad(format!(
                    "bad index entry key_group={} records={}",
                    e.key_group, e.records
                )));
            }
            if index
                .last()
                .is_some_and(|p: &SegmentBlock| p.key_group > e.key_group)
            {
                return Err(bad(format!(
                    "index not sorted by key group key_group={}",
                    e.key_group
                )));
            }
            next += u64::from(e.len);
            total += u64::from(e.records);
            index.push(e);
        }
        x.finish("index")?;
        if next != index_offset {
            return Err(corrupt(
                KIND,
                path,
                next,
                format!("blocks do not end at the index end={next} index_offset={index_offset}"),
            ));
        }
        if total != record_count {
            return Err(corrupt(
                KIND,
                path,
                (footer_at + FOOTER_RECORD_COUNT) as u64,
                format!("record count differs from the index footer={record_count} index={total}"),
            ));
        }
        Ok(Self {
            bytes,
            path: path.to_string(),
            states,
            index,
            first_sqn,
            record_count,
        })
    }

    /// The state table.
    pub fn states(&self) -> &[FileState] {
        &self.states
    }

    /// The blocks.
    pub fn blocks(&self) -> &[SegmentBlock] {
        &self.index
    }

    /// The sequence number of the first record.
    pub fn first_sqn(&self) -> u64 {
        self.first_sqn
    }

    /// Records in the segment.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Calls `f` for every record of the key groups in `range`, by key group and, within
    /// a key group, in the order they were recorded. Checks every block it reads.
    pub fn scan<E, F>(&self, range: KeyGroupRange, mut f: F) -> Result<(), E>
    where
        E: From<FormatError>,
        F: FnMut(&ChangelogRecord<'_>) -> Result<(), E>,
    {
        let mut buf = Vec::new();
        for block in &self.index {
            if !range.contains(block.key_group) {
                continue;
            }
            let payload = self.block_payload(block, &mut buf)?;
            let mut r = Reader::new(payload, block.offset, KIND, &self.path);
            for _ in 0..block.records {
                let rec = decode_record(&mut r, block.key_group, &self.states)?;
                f(&rec)?;
            }
            r.finish("block records").map_err(E::from)?;
        }
        Ok(())
    }

    /// Checks every block.
    pub fn verify_all(&self) -> Result<(), FormatError> {
        self.scan::<FormatError, _>(KeyGroupRange::new(0, MAX_MAX_PARALLELISM), |_| Ok(()))
    }

    fn block_payload<'a>(
        &'a self,
        e: &SegmentBlock,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], FormatError> {
        let at = e.offset as usize;
        let bad = |d: String| corrupt(KIND, &self.path, e.offset, d);
        let block = self
            .bytes
            .get(at..at + e.len as usize)
            .ok_or_else(|| bad("block outside the file".into()))?;
        let mut r = Reader::new(block, e.offset, KIND, &self.path);
        let key_group = r.u32("block key group")?;
        let count = r.u32("block count")?;
        let compression = r.u8("block compression")?;
        let reserved = r.take(3, "block reserved")?;
        let raw_len = r.u32("block raw length")? as usize;
        let stored_len = r.u32("block stored length")? as usize;
        let stored = r.take(stored_len, "block payload")?;
        let stored_crc = r.u32("block checksum")?;
        r.finish("block")?;
        let computed = crc32(&[block
            .get(..BLOCK_HEADER_LEN + stored_len)
            .unwrap_or_default()]);
        if !crc_matches(stored_crc, computed) {
            return Err(bad(format!(
                "record block checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"
            )));
        }
        if key_group != e.key_group || count != e.records {
            return Err(bad(format!(
                "block header differs from the index key_group={key_group} count={count}"
            )));
        }
        if reserved != [0u8; 3] {
            return Err(bad("block reserved field is not zero".into()));
        }
        if raw_len > MAX_BLOCK_LEN {
            return Err(bad(format!(
                "block larger than the limit raw_len={raw_len} max={MAX_BLOCK_LEN}"
            )));
        }
        match compression {
            COMPRESSION_NONE if raw_len == stored_len => Ok(stored),
            COMPRESSION_NONE => Err(bad(format!(
                "uncompressed block with differing lengths raw_len={raw_len} stored_len={stored_len}"
            ))),
            COMPRESSION_ZSTD => {
                buf.clear();
                buf.reserve(raw_len.min(stored_len.saturating_mul(8)));
                let mut dec = zstd::stream::read::Decoder::with_buffer(stored)
                    .map_err(|e| bad(format!("zstd decoder failed: {e}")))?
                    .single_frame();
                dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(|e| bad(format!("zstd decoder failed: {e}")))?;
                dec.take(raw_len as u64 + 1)
                    .read_to_end(buf)
                    .map_err(|e| bad(format!("zstd payload does not decompress: {e}")))?;
                if buf.len() != raw_len {
                    return Err(bad(format!(
                        "decompressed length differs from the block header raw_len={raw_len} decompressed={}",
                        buf.len()
                    )));
                }
                Ok(buf.as_slice())
            }
            c => Err(bad(format!("unknown compression code={c}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn sample() -> Vec<u8> {
        let mut w = ChangelogSegmentWriter::new(states(), 40).unwrap();
        let mut buf = Vec::new();
        for (state, op, uk, v) in [
            (0u32, ChangelogOp::Set, None, Some(&b"7"[..])),
            (1, ChangelogOp::MapPut, Some(&b"u"[..]), Some(&b"x"[..])),
            (0, ChangelogOp::Clear, None, None),
        ] {
            encode_changelog_record(
                &ChangelogRecord {
                    key_group: 3,
                    state,
                    op,
                    key: b"k",
                    namespace: b"",
                    user_key: uk,
                    value: v,
                },
                &mut buf,
            );
        }
        w.add_encoded(3, 3, &buf).unwrap();
        w.add(&ChangelogRecord {
            key_group: 9,
            state: 1,
            op: ChangelogOp::MapRemove,
            key: b"z",
            namespace: b"n",
            user_key: Some(b"u"),
            value: None,
        })
        .unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_and_range_scan() {
        let bytes = sample();
        let r = ChangelogSegmentReader::open(Bytes::from(bytes), "s").unwrap();
        assert_eq!((r.first_sqn(), r.record_count()), (40, 4));
        let mut ops = Vec::new();
        r.scan::<FormatError, _>(KeyGroupRange::new(0, 4), |rec| {
            ops.push((rec.key_group, rec.op, rec.value.map(<[u8]>::to_vec)));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            ops,
            vec![
                (3, ChangelogOp::Set, Some(b"7".to_vec())),
                (3, ChangelogOp::MapPut, Some(b"x".to_vec())),
                (3, ChangelogOp::Clear, None)
            ]
        );
        r.verify_all().unwrap();
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error() {
        let bytes = sample();
        for cut in 0..bytes.len() {
            let e = ChangelogSegmentReader::open(Bytes::copy_from_slice(&bytes[..cut]), "s")
                .and_then(|r| r.verify_all());
            assert!(e.is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let e = ChangelogSegmentReader::open(Bytes::from(b), "s").and_then(|r| r.verify_all());
            assert!(e.is_err(), "bit {i}");
        }
    }

    #[test]
    fn writer_refuses_bad_input() {
        let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
        let rec = |kg, state, op| ChangelogRecord {
            key_group: kg,
            state,
            op,
            key: b"k",
            namespace: b"",
            user_key: None,
            value: Some(b"v"),
        };
        w.add(&rec(5, 0, ChangelogOp::Set)).unwrap();
        assert!(w.add(&rec(4, 0, ChangelogOp::Set)).is_err(), "unsorted");
        assert!(
            w.add(&rec(6, 7, ChangelogOp::Set)).is_err(),
            "unknown state"
        );
        assert!(w.add(&rec(6, 1, ChangelogOp::Set)).is_err(), "set on a map");
    }

    fn record<'a>(
        state: u32,
        op: ChangelogOp,
        key: &'a [u8],
        user_key: Option<&'a [u8]>,
        value: Option<&'a [u8]>,
    ) -> ChangelogRecord<'a> {
        ChangelogRecord {
            key_group: 0,
            state,
            op,
            key,
            namespace: b"ns",
            user_key,
            value,
        }
    }

    /// Records of every op the sample table allows, some with long repetitive values (so
    /// that blocks get compressed), in two key groups.
    fn buffers() -> Vec<(u32, ChangelogRecords, Vec<usize>)> {
        let long = vec![b'x'; 300];
        let mut out = Vec::new();
        for kg in [2u32, 7] {
            let mut recs = ChangelogRecords::new();
            let mut lens = Vec::new();
            for i in 0..40u32 {
                let key = i.to_le_bytes();
                let v: &[u8] = if i % 3 == 0 { &long } else { &key };
                let r = match i % 4 {
                    0 => record(0, ChangelogOp::Set, &key, None, Some(v)),
                    1 => record(1, ChangelogOp::MapPut, &key, Some(b"u"), Some(v)),
                    2 => record(1, ChangelogOp::MapRemove, &key, Some(b"u"), None),
                    _ => record(0, ChangelogOp::Clear, &key, None, None),
                };
                let before = recs.len_bytes();
                recs.push(&r);
                lens.push(recs.len_bytes() - before);
            }
            out.push((kg, recs, lens));
        }
        out
    }

    /// `add_block` writes byte for byte what `add_encoded` writes for the same blocks, and
    /// `blocks` cuts at record ends once a block reaches the target.
    #[test]
    fn add_block_writes_what_add_encoded_writes() {
        const TARGET: usize = 500;
        let mut by_block = ChangelogSegmentWriter::new(states(), 7).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(states(), 7).unwrap();
        let mut blocks = 0;
        for (kg, recs, lens) in &buffers() {
            assert_eq!(recs.len(), lens.len());
            let mut next = 0;
            let mut joined = Vec::new();
            for b in recs.blocks(TARGET) {
                let n = b.count() as usize;
                let these = lens.get(next..next + n).unwrap();
                next += n;
                assert_eq!(b.bytes().len(), these.iter().sum::<usize>());
                if next < lens.len() {
                    // Cut with the first record that reaches the target.
                    assert!(b.bytes().len() >= TARGET);
                    assert!(b.bytes().len() - these.last().unwrap() < TARGET);
                }
                joined.extend_from_slice(b.bytes());
                by_block.add_block(*kg, b).unwrap();
                by_bytes.add_encoded(*kg, b.count(), b.bytes()).unwrap();
                blocks += 1;
            }
            assert_eq!(next, lens.len());
            assert_eq!(joined, recs.as_bytes());
        }
        assert!(blocks > 4, "several blocks per key group, got {blocks}");
        assert_eq!(by_block.records(), 80);
        let (a, b) = (by_block.finish().unwrap(), by_bytes.finish().unwrap());
        assert_eq!(a, b);
        let r = ChangelogSegmentReader::open(Bytes::from(a), "s").unwrap();
        assert_eq!(r.record_count(), 80);
        r.verify_all().unwrap();
    }

    fn refusal(recs: &ChangelogRecords, table: Vec<FileState>) -> String {
        let mut w = ChangelogSegmentWriter::new(table, 0).unwrap();
        let mut errors = recs
            .blocks(usize::MAX)
            .map(|b| w.add_block(4, b).map_err(|e| e.to_string()));
        let e = errors.next().unwrap().unwrap_err();
        assert_eq!(w.records(), 0, "nothing written");
        e
    }

    /// What decoding used to catch, the op masks catch: an op the state's kind forbids, a
    /// state index beyond the table, a record whose parts do not match its op.
    #[test]
    fn add_block_refuses_ops_the_table_does_not_allow() {
        let mut ok = ChangelogRecords::new();
        ok.push(&record(0, ChangelogOp::Set, b"k", None, Some(b"v")));
        ok.push(&record(
            1,
            ChangelogOp::MapPut,
            b"k",
            Some(b"u"),
            Some(b"v"),
        ));

        // Each bad record after the good ones, and what the refusal must say.
        let cases: [(ChangelogRecord<'_>, &[&str]); 3] = [
            (
                record(1, ChangelogOp::Set, b"k", None, Some(b"v")),
                &["changelog op Set does not apply to Map state index=1"],
            ),
            (
                record(2, ChangelogOp::Clear, b"k", None, None),
                &["changelog record names an unknown state index=2 states=2 ops=[Clear]"],
            ),
            (
                record(1, ChangelogOp::MapPut, b"k", None, Some(b"v")),
                &[
                    "changelog record without the user key or value its op needs",
                    "index=1 state=tags ops=[MapPut]",
                ],
            ),
        ];
        for (bad, says) in cases {
            let mut recs = ok.clone();
            recs.push(&bad);
            let e = refusal(&recs, states());
            assert!(
                says.iter().all(|s| e.contains(s)) && e.contains("key_group=4"),
                "{e}"
            );
            // The same bytes do not decode either.
            let mut w = ChangelogSegmentWriter::new(states(), 0).unwrap();
            assert!(w.add_encoded(4, 3, recs.as_bytes()).is_err());
        }
    }

    /// A state index too large to track is checked by decoding: refused beyond the table,
    /// written like `add_encoded` within it.
    #[test]
    fn add_block_checks_untracked_state_indices_by_decoding() {
        let mut recs = ChangelogRecords::new();
        recs.push(&record(0, ChangelogOp::Set, b"k", None, Some(b"v")));
        recs.push(&record(5000, ChangelogOp::Clear, b"k", None, None));
        let e = refusal(&recs, states());
        assert!(e.contains("unknown state index=5000"), "{e}");

        let table: Vec<FileState> = (0..5001)
            .map(|i| FileState {
                name: format!("s{i}"),
                kind: StateKind::Value,
            })
            .collect();
        let mut by_block = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(table, 0).unwrap();
        for b in recs.blocks(usize::MAX) {
            by_block.add_block(4, b).unwrap();
            by_bytes.add_encoded(4, b.count(), b.bytes()).unwrap();
        }
        assert_eq!(by_block.finish().unwrap(), by_bytes.finish().unwrap());
    }

    #[test]
    fn empty_records_have_no_blocks() {
        let recs = ChangelogRecords::new();
        assert!(recs.is_empty());
        assert_eq!(recs.blocks(0).count(), 0);
        assert_eq!(recs.blocks(usize::MAX).count(), 0);
    }

    /// State indices past the inline masks are tracked as well.
    #[test]
    fn add_block_tracks_states_past_the_inline_masks() {
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
        let mut ok = ChangelogRecords::new();
        for state in [0, 7, 8, 11, 9] {
            ok.push(&record(state, ChangelogOp::Clear, b"k", None, None));
        }
        ok.push(&record(10, ChangelogOp::Set, b"k", None, Some(b"v")));
        ok.push(&record(11, ChangelogOp::ListAppend, b"k", None, Some(b"v")));
        let mut by_block = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        let mut by_bytes = ChangelogSegmentWriter::new(table.clone(), 0).unwrap();
        for b in ok.blocks(usize::MAX) {
            by_block.add_block(4, b).unwrap();
            by_bytes.add_encoded(4, b.count(), b.bytes()).unwrap();
        }
        assert_eq!(by_block.finish().unwrap(), by_bytes.finish().unwrap());

        let mut recs = ok.clone();
        recs.push(&record(10, ChangelogOp::ListSet, b"k", None, Some(b"v")));
        let e = refusal(&recs, table.clone());
        assert!(
            e.contains("changelog op ListSet does not apply to Value state index=10 state=s10"),
            "{e}"
        );
        let mut recs = ok.clone();
        recs.push(&record(12, ChangelogOp::Clear, b"k", None, None));
        let e = refusal(&recs, table.clone());
        assert!(e.contains("unknown state index=12 states=12"), "{e}");
        let mut recs = ok;
        recs.push(&record(9, ChangelogOp::ListSet, b"k", None, None));
        let e = refusal(&recs, table);
        assert!(e.contains("index=9 state=s9 ops=[Clear, ListSet]"), "{e}");
    }
}
