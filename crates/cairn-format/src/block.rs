//! Blocks: the checksummed, optionally compressed unit of a state file
//! (format-spec/README.md, "Block").
//!
//! ```text
//! header (BLOCK_HEADER_LEN = 20)
//!   0  1  compression  u8: 0 none, 1 zstd
//!   1  1  block type   u8: 1 data, 2 state table, 3 key-group index
//!   2  2  reserved     u16 = 0
//!   4  4  key group    u32: data blocks: their key group; other blocks: 0
//!   8  4  count        u32: entries (data), states (state table), key groups (index); > 0 for data
//!  12  4  raw_len      u32: payload length uncompressed, <= MAX_BLOCK_LEN
//!  16  4  stored_len   u32: payload length as stored (== raw_len when not compressed)
//! payload (stored_len bytes)
//! crc32   (BLOCK_TRAILER_LEN = 4): CRC32 of header and stored payload
//! ```

use std::io::Read;

use crate::codec::{corrupt, crc32, crc_matches, Reader};
use crate::FormatError;

pub(crate) const BLOCK_HEADER_LEN: usize = 20;
pub(crate) const BLOCK_TRAILER_LEN: usize = 4;
/// Smallest possible block (empty payload).
pub(crate) const MIN_BLOCK_LEN: usize = BLOCK_HEADER_LEN + BLOCK_TRAILER_LEN;

/// The largest uncompressed block payload a reader accepts and a writer produces.
pub const MAX_BLOCK_LEN: usize = 128 << 20;

pub(crate) const COMPRESSION_NONE: u8 = 0;
pub(crate) const COMPRESSION_ZSTD: u8 = 1;
/// The zstd level writers use.
pub(crate) const ZSTD_LEVEL: i32 = 3;
/// The largest zstd window (log2) a reader accepts: bounds the decoder's memory.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BlockType {
    Data = 1,
    StateTable = 2,
    Index = 3,
}

impl BlockType {
    fn name(self) -> &'static str {
        match self {
            BlockType::Data => "data block",
            BlockType::StateTable => "state table",
            BlockType::Index => "key-group index",
        }
    }
}

const KIND: &str = "state file";

/// Appends one block holding `raw` (compressed with zstd when that makes it smaller) and
/// returns its length in the file.
pub(crate) fn write_block(
    out: &mut Vec<u8>,
    compressor: &mut zstd::bulk::Compressor<'static>,
    ty: BlockType,
    key_group: u32,
    count: u32,
    raw: &[u8],
) -> Result<usize, FormatError> {
    if raw.len() > MAX_BLOCK_LEN {
        return Err(FormatError::Invalid {
            kind: KIND,
            detail: format!(
                "{} larger than the block limit len={} max={MAX_BLOCK_LEN}",
                ty.name(),
                raw.len()
            ),
        });
    }
    let compressed = compressor.compress(raw).map_err(|e| FormatError::Invalid {
        kind: KIND,
        detail: format!("zstd compression failed: {e}"),
    })?;
    let (codec, payload) = if compressed.len() < raw.len() {
        (COMPRESSION_ZSTD, compressed.as_slice())
    } else {
        (COMPRESSION_NONE, raw)
    };
    let start = out.len();
    out.push(codec);
    out.push(ty as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&key_group.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32(&[out.get(start..).unwrap_or_default()]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// A verified block header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockHeader {
    pub(crate) key_group: u32,
    pub(crate) count: u32,
    /// The block's length in the file.
    pub(crate) len: usize,
    compression: u8,
    raw_len: usize,
    payload_at: usize,
}

/// Reads and checks the block at `offset`, which must end at or before `limit`; verifies the
/// CRC and the header fields. The payload is not decompressed yet ([`payload`]).
pub(crate) fn read_block_header(
    file: &[u8],
    offset: usize,
    limit: usize,
    ty: BlockType,
    path: &str,
) -> Result<BlockHeader, FormatError> {
    let region = file.get(offset..limit.min(file.len())).unwrap_or_default();
    let mut r = Reader::new(region, offset as u64, KIND, path);
    let what = ty.name();
    let compression = r.u8(what)?;
    let block_type = r.u8(what)?;
    let reserved = r.u16(what)?;
    let key_group = r.u32(what)?;
    let count = r.u32(what)?;
    let raw_len = r.u32(what)? as usize;
    let stored_len = r.u32(what)? as usize;
    let payload_at = offset + BLOCK_HEADER_LEN;
    let stored = r.take(stored_len, what)?;
    let covered_len = BLOCK_HEADER_LEN + stored.len();
    let stored_crc = r.u32(what)?;
    let computed = crc32(&[region.get(..covered_len).unwrap_or_default()]);
    if !crc_matches(stored_crc, computed) {
        return Err(r.corrupt_at(
            offset as u64,
            format!("{what} checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"),
        ));
    }
    let bad = |detail: String| corrupt(KIND, path, offset as u64, detail);
    if block_type != ty as u8 {
        return Err(bad(format!(
            "expected a {what}, found block type {block_type}"
        )));
    }
    if reserved != 0 {
        return Err(bad(format!(
            "{what} reserved field is not zero value={reserved}"
        )));
    }
    if raw_len > MAX_BLOCK_LEN {
        return Err(bad(format!(
            "{what} larger than the block limit raw_len={raw_len} max={MAX_BLOCK_LEN}"
        )));
    }
    match compression {
        COMPRESSION_NONE if stored_len != raw_len => {
            return Err(bad(format!(
            "uncompressed {what} with differing lengths raw_len={raw_len} stored_len={stored_len}"
        )))
        }
        COMPRESSION_NONE | COMPRESSION_ZSTD => {}
        c => return Err(bad(format!("unknown compression code={c}"))),
    }
    if ty != BlockType::Data && key_group != 0 {
        return Err(bad(format!("{what} has a key group value={key_group}")));
    }
    Ok(BlockHeader {
        key_group,
        count,
        len: BLOCK_HEADER_LEN + stored_len + BLOCK_TRAILER_LEN,
        compression,
        raw_len,
        payload_at,
    })
}

/// The block's uncompressed payload: borrowed from the file when stored uncompressed,
/// otherwise decompressed into `buf` (which grows only as output is produced, up to the
/// declared length).
pub(crate) fn payload<'a>(
    file: &'a [u8],
    h: &BlockHeader,
    buf: &'a mut Vec<u8>,
    path: &str,
) -> Result<&'a [u8], FormatError> {
    let bad =
        |detail: String| corrupt(KIND, path, (h.payload_at - BLOCK_HEADER_LEN) as u64, detail);
    let stored_len = h.len - MIN_BLOCK_LEN;
    let stored = file
        .get(h.payload_at..h.payload_at + stored_len)
        .ok_or_else(|| bad("block payload outside the file".to_string()))?;
    if h.compression == COMPRESSION_NONE {
        return Ok(stored);
    }
    buf.clear();
    buf.reserve(
        h.raw_len
            .min(stored_len.saturating_mul(8))
            .min(MAX_BLOCK_LEN),
    );
    let mut dec = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|e| bad(format!("zstd decoder failed: {e}")))?
        .single_frame();
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| bad(format!("zstd decoder failed: {e}")))?;
    dec.take(h.raw_len as u64 + 1)
        .read_to_end(buf)
        .map_err(|e| bad(format!("zstd payload does not decompress: {e}")))?;
    if buf.len() != h.raw_len {
        return Err(bad(format!(
            "decompressed length differs from the block header raw_len={} decompressed={}",
            h.raw_len,
            buf.len()
        )));
    }
    Ok(buf.as_slice())
}
