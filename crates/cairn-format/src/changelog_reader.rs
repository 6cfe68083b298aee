//! [`ChangelogSegmentReader`]: reads changelog segments of version 1 (one key group per
//! block, blocks sorted by key group) and version 2 (blocks of any key groups in the order
//! the changes happened, each record carrying its key group); see
//! [`changelog`](crate::changelog) for the layouts.

use std::io::Read;

use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind, MAX_MAX_PARALLELISM};

use crate::changelog::{
    decode_record, decode_record_v2, KeyGroupBounds, BLOCK_TRAILER_LEN, BLOCK_V1_HEADER_LEN,
    BLOCK_V2_HEADER_LEN, CHANGELOG_MAGIC, COMPRESSION_NONE, COMPRESSION_ZSTD, FOOTER_CRC,
    FOOTER_INDEX_OFFSET, FOOTER_LEN, FOOTER_MAGIC, FOOTER_RECORD_COUNT, FOOTER_RESERVED,
    HEADER_FLAGS_OFFSET, HEADER_LEN, HEADER_RESERVED_OFFSET, HEADER_VERSION_OFFSET, KIND,
    MAGIC_LEN, SUPPORTED_VERSIONS, VERSION_1, VERSION_2,
};
use crate::codec::{check_required_flags, check_version, corrupt, crc32, crc_matches, Reader};
use crate::{ChangelogRecord, FileState, FormatError, SegmentBlock, MAX_BLOCK_LEN};

/// v1 index entry: key_group u32, offset u64, len u32, records u32.
const INDEX_V1_ENTRY_LEN: usize = 4 + 8 + 4 + 4;
/// v2 index entry: key_group_start u32, key_group_end u32, offset u64, len u32, records u32.
const INDEX_V2_ENTRY_LEN: usize = 4 + 4 + 8 + 4 + 4;
const MIN_STATE_ENTRY_LEN: usize = 4 + 1;
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Required header flags this build understands (none are defined).
const KNOWN_REQUIRED_FLAGS: u16 = 0;

/// Reads a changelog segment of version 1 or 2: `open` checks the header, footer, state
/// table and index (everything but the record blocks, which [`Self::scan`] checks as it
/// reads them).
#[derive(Clone, Debug)]
pub struct ChangelogSegmentReader {
    bytes: Bytes,
    path: String,
    version: u16,
    states: Vec<FileState>,
    index: Vec<SegmentBlock>,
    first_sqn: u64,
    record_count: u64,
}

/// What the header and footer hold, checked.
struct Frame {
    version: u16,
    index_at: usize,
    first_sqn: u64,
    record_count: u64,
}

impl ChangelogSegmentReader {
    /// Opens a segment; `path` names it in errors. A truncated (torn) or damaged segment
    /// is [`FormatError::Corrupt`] with the offset.
    pub fn open(bytes: Bytes, path: &str) -> Result<Self, FormatError> {
        let frame = read_frame(&bytes, path)?;
        let b: &[u8] = &bytes;
        let (states, table_end) = read_states(b, frame.index_at, path)?;
        let footer_at = b.len() - FOOTER_LEN;
        let stored_crc = b
            .get(footer_at + FOOTER_CRC..footer_at + FOOTER_CRC + 4)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u32::from_le_bytes);
        let computed = crc32(&[
            b.get(..table_end).unwrap_or_default(),
            b.get(frame.index_at..footer_at + FOOTER_CRC)
                .unwrap_or_default(),
        ]);
        if !crc_matches(stored_crc, computed) {
            return Err(corrupt(
                KIND,
                path,
                (footer_at + FOOTER_CRC) as u64,
                format!("checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"),
            ));
        }
        let flags = b
            .get(HEADER_FLAGS_OFFSET..HEADER_FLAGS_OFFSET + 2)
            .and_then(|s| s.try_into().ok())
            .map_or(0, u16::from_le_bytes);
        check_required_flags(KIND, path, HEADER_FLAGS_OFFSET, flags, KNOWN_REQUIRED_FLAGS)?;
        let index = read_index(b, &frame, table_end, path)?;
        Ok(Self {
            bytes,
            path: path.to_string(),
            version: frame.version,
            states,
            index,
            first_sqn: frame.first_sqn,
            record_count: frame.record_count,
        })
    }

    /// The segment's layout version (1 or 2).
    pub fn version(&self) -> u16 {
        self.version
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

    /// Calls `f` for every record of the key groups in `range`, in replay order: file
    /// order, which in version 2 is the order the changes happened (in version 1, by key
    /// group and within a key group in the order they happened). Blocks whose key groups
    /// do not intersect `range` are skipped unread; every block read is checked whole.
    pub fn scan<E, F>(&self, range: KeyGroupRange, mut f: F) -> Result<(), E>
    where
        E: From<FormatError>,
        F: FnMut(&ChangelogRecord<'_>) -> Result<(), E>,
    {
        let mut buf = Vec::new();
        for block in &self.index {
            if block.key_groups.intersect(&range).is_empty() {
                continue;
            }
            let payload = self.block_payload(block, &mut buf)?;
            // Offsets of records are where they are in the file when the block is not
            // compressed (otherwise: the payload's start plus where in the payload).
            let payload_at = block.offset + self.block_header_len() as u64;
            let mut r = Reader::new(payload, payload_at, KIND, &self.path);
            let mut bounds = KeyGroupBounds::default();
            for _ in 0..block.records {
                let rec = if self.version == VERSION_1 {
                    decode_record(&mut r, block.key_groups.start, &self.states)?
                } else {
                    decode_record_v2(&mut r, block.key_groups, &self.states)?
                };
                bounds.note(rec.key_group);
                if range.contains(rec.key_group) {
                    f(&rec)?;
                }
            }
            r.finish("block records").map_err(E::from)?;
            if bounds.range() != Some(block.key_groups) {
                return Err(E::from(corrupt(
                    KIND,
                    &self.path,
                    block.offset,
                    format!(
                        "block key groups differ from its records' block={} records={:?}",
                        block.key_groups,
                        bounds.range()
                    ),
                )));
            }
        }
        Ok(())
    }

    /// Checks every block.
    pub fn verify_all(&self) -> Result<(), FormatError> {
        self.scan::<FormatError, _>(KeyGroupRange::new(0, MAX_MAX_PARALLELISM), |_| Ok(()))
    }

    /// The length of a block header in this segment's version.
    fn block_header_len(&self) -> usize {
        if self.version == VERSION_1 {
            BLOCK_V1_HEADER_LEN
        } else {
            BLOCK_V2_HEADER_LEN
        }
    }

    /// The block's uncompressed payload, after checking its header against the index, its
    /// CRC and its lengths.
    fn block_payload<'a>(
        &'a self,
        e: &SegmentBlock,
        buf: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], FormatError> {
        let at = e.offset as usize;
        let bad = |d: String| corrupt(KIND, &self.path, e.offset, d);
        let block = self
            .bytes
            .get(at..at.saturating_add(e.len as usize))
            .ok_or_else(|| bad("block outside the file".into()))?;
        let mut r = Reader::new(block, e.offset, KIND, &self.path);
        let (key_groups, header_len) = if self.version == VERSION_1 {
            let kg = r.u32("block key group")?;
            (
                KeyGroupRange::new(kg, kg.saturating_add(1)),
                BLOCK_V1_HEADER_LEN,
            )
        } else {
            let start = r.u32("block key group start")?;
            let end = r.u32("block key group end")?;
            (KeyGroupRange::new(start, end), BLOCK_V2_HEADER_LEN)
        };
        let count = r.u32("block count")?;
        let compression = r.u8("block compression")?;
        let reserved = r.take(3, "block reserved")?;
        let raw_len = r.u32("block raw length")? as usize;
        let stored_len = r.u32("block stored length")? as usize;
        let stored = r.take(stored_len, "block payload")?;
        let stored_crc = r.u32("block checksum")?;
        r.finish("block")?;
        let computed = crc32(&[block.get(..header_len + stored_len).unwrap_or_default()]);
        if !crc_matches(stored_crc, computed) {
            return Err(bad(format!(
                "record block checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"
            )));
        }
        if key_groups != e.key_groups || count != e.records {
            return Err(bad(format!(
                "block header differs from the index key_groups={key_groups} count={count}"
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

/// Reads and checks the header and the footer (all but the checksum and the flags, which
/// need the state table, and are checked after it).
fn read_frame(b: &[u8], path: &str) -> Result<Frame, FormatError> {
    let len = b.len();
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
    let _flags = h.u16("flags")?;
    let reserved = h.u32("reserved")?;
    let index_offset = f.u64("index offset")?;
    let first_sqn = f.u64("first sequence number")?;
    let record_count = f.u64("record count")?;
    let _crc = f.u32("checksum")?;
    let footer_version = f.u16("footer version")?;
    let footer_reserved = f.u16("footer reserved")?;
    if f.take(MAGIC_LEN, "footer magic")? != CHANGELOG_MAGIC {
        return Err(f.corrupt_at(
            (footer_at + FOOTER_MAGIC) as u64,
            "bad footer magic (truncated or torn segment)",
        ));
    }
    check_version(
        (KIND, path),
        HEADER_VERSION_OFFSET,
        (version, footer_version),
        version == VERSION_1 || version == VERSION_2,
        SUPPORTED_VERSIONS,
    )?;
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
    Ok(Frame {
        version,
        index_at,
        first_sqn,
        record_count,
    })
}

/// Reads the state table (right after the header, before `index_at`); returns it and
/// where it ends.
fn read_states(
    b: &[u8],
    index_at: usize,
    path: &str,
) -> Result<(Vec<FileState>, usize), FormatError> {
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
    Ok((states, t.offset() as usize))
}

/// Reads and checks the index: entries tile the blocks from the end of the state table to
/// the index, their records add up to the footer's count, and (v1) key groups are sorted
/// or (v2) ranges are non-empty; all key groups are below [`MAX_MAX_PARALLELISM`].
fn read_index(
    b: &[u8],
    frame: &Frame,
    table_end: usize,
    path: &str,
) -> Result<Vec<SegmentBlock>, FormatError> {
    let footer_at = b.len() - FOOTER_LEN;
    let index_offset = frame.index_at as u64;
    let mut x = Reader::new(
        b.get(frame.index_at..footer_at).unwrap_or_default(),
        index_offset,
        KIND,
        path,
    );
    let v1 = frame.version == VERSION_1;
    let (entry_len, header_len) = if v1 {
        (INDEX_V1_ENTRY_LEN, BLOCK_V1_HEADER_LEN)
    } else {
        (INDEX_V2_ENTRY_LEN, BLOCK_V2_HEADER_LEN)
    };
    let n = x.count(entry_len, "index")?;
    let mut index = Vec::with_capacity(n);
    let mut next = table_end as u64;
    let mut total = 0u64;
    for _ in 0..n {
        let at = x.offset();
        let key_groups = if v1 {
            let kg = x.u32("index key group")?;
            KeyGroupRange::new(kg, kg.saturating_add(1))
        } else {
            let start = x.u32("index key group start")?;
            KeyGroupRange::new(start, x.u32("index key group end")?)
        };
        let e = SegmentBlock {
            key_groups,
            offset: x.u64("index offset")?,
            len: x.u32("index length")?,
            records: x.u32("index records")?,
        };
        let bad = |d: String| corrupt(KIND, path, at, d);
        if e.offset != next || e.len as usize <= header_len + BLOCK_TRAILER_LEN {
            return Err(bad(format!(
                "index entries do not tile the blocks offset={} expected={next} len={}",
                e.offset, e.len
            )));
        }
        if e.records == 0 || key_groups.is_empty() || key_groups.end > MAX_MAX_PARALLELISM {
            return Err(bad(format!(
                "bad index entry key_groups={key_groups} records={}",
                e.records
            )));
        }
        if v1
            && index
                .last()
                .is_some_and(|p: &SegmentBlock| p.key_groups.start > key_groups.start)
        {
            return Err(bad(format!(
                "index not sorted by key group key_group={}",
                key_groups.start
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
    if total != frame.record_count {
        return Err(corrupt(
            KIND,
            path,
            (footer_at + FOOTER_RECORD_COUNT) as u64,
            format!(
                "record count differs from the index footer={} index={total}",
                frame.record_count
            ),
        ));
    }
    Ok(index)
}
