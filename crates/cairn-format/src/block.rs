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

/// Where block payloads are decompressed: the output buffer and a zstd decompression
/// context, both reused from block to block (creating a streaming decoder per block, with
/// its window buffers, cost about 6 ms per million small entries).
#[derive(Default)]
pub(crate) struct Unpacker {
    buf: Vec<u8>,
    /// Created on the first compressed block.
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

impl std::fmt::Debug for Unpacker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unpacker")
            .field("buf_capacity", &self.buf.capacity())
            .finish_non_exhaustive()
    }
}

/// The largest payload decompressed in one shot into a buffer of its declared length; larger
/// ones (and every frame that is not a plain single frame, see [`payload`]) go through the
/// streaming decoder, whose buffer grows only as output is produced.
const ONE_SHOT_MAX_LEN: usize = 1 << 20;

/// zstd frame header fields (RFC 8878, 3.1.1): the magic number, then the frame header
/// descriptor, then (unless the frame is a single segment) the window descriptor.
const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const ZSTD_MAGIC_LEN: usize = 4;
const ZSTD_DESCRIPTOR_AT: usize = ZSTD_MAGIC_LEN;
const ZSTD_WINDOW_DESCRIPTOR_AT: usize = ZSTD_DESCRIPTOR_AT + 1;
/// Descriptor bit: the window is the content size (no window descriptor).
const ZSTD_SINGLE_SEGMENT: u8 = 0x20;
/// Window descriptor: `window_log = ZSTD_WINDOW_LOG_BASE + exponent (high 5 bits)`, plus
/// `mantissa (low 3 bits)` eighths of `2^window_log`.
const ZSTD_WINDOW_LOG_BASE: u32 = 10;

/// The window size a zstd frame's header declares (RFC 8878, 3.1.1.1.2): its window
/// descriptor, or its content size for a single-segment frame (as the streaming decoder
/// reads it); `None` when the header is not a zstd frame header.
fn frame_window(frame: &[u8]) -> Option<u64> {
    let magic = frame.get(..ZSTD_MAGIC_LEN)?;
    if u32::from_le_bytes(magic.try_into().ok()?) != ZSTD_MAGIC {
        return None;
    }
    if *frame.get(ZSTD_DESCRIPTOR_AT)? & ZSTD_SINGLE_SEGMENT != 0 {
        return zstd::zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten();
    }
    let window = *frame.get(ZSTD_WINDOW_DESCRIPTOR_AT)?;
    let base = 1u64 << (ZSTD_WINDOW_LOG_BASE + u32::from(window >> 3));
    Some(base + base / 8 * u64::from(window & 7))
}

/// Whether `stored` can be decompressed in one shot into `raw_len` bytes with the same
/// outcome as the streaming decoder: exactly one frame spanning the whole payload, declaring
/// `raw_len` as its content size and a window within [`ZSTD_WINDOW_LOG_MAX`], and small
/// enough that allocating `raw_len` up front is harmless.
fn one_shot(stored: &[u8], raw_len: usize) -> bool {
    raw_len <= ONE_SHOT_MAX_LEN
        && frame_window(stored).is_some_and(|w| w <= 1u64 << ZSTD_WINDOW_LOG_MAX)
        && zstd::zstd_safe::get_frame_content_size(stored).is_ok_and(|n| n == Some(raw_len as u64))
        && zstd::zstd_safe::find_frame_compressed_size(stored) == Ok(stored.len())
}

/// The block's uncompressed payload: borrowed from the file when stored uncompressed,
/// otherwise decompressed into `unpacker`'s buffer. A plain frame (what writers produce,
/// [`one_shot`]) is decompressed in one call with the reused context; anything else goes
/// through a streaming decoder that accepts a single frame with a window of at most
/// 2^[`ZSTD_WINDOW_LOG_MAX`] bytes into a buffer that grows only as output is produced, up to
/// the declared length.
pub(crate) fn payload<'a>(
    file: &'a [u8],
    h: &BlockHeader,
    unpacker: &'a mut Unpacker,
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
    let buf = &mut unpacker.buf;
    buf.clear();
    if one_shot(stored, h.raw_len) {
        buf.reserve(h.raw_len);
        let dctx = match &mut unpacker.dctx {
            Some(d) => d,
            None => unpacker.dctx.insert(
                zstd::bulk::Decompressor::new()
                    .map_err(|e| bad(format!("zstd decoder failed: {e}")))?,
            ),
        };
        dctx.decompress_to_buffer(stored, buf)
            .map_err(|e| bad(format!("zstd payload does not decompress: {e}")))?;
    } else {
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
    }
    if buf.len() != h.raw_len {
        return Err(bad(format!(
            "decompressed length differs from the block header raw_len={} decompressed={}",
            h.raw_len,
            buf.len()
        )));
    }
    Ok(buf.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data block holding `stored` as its payload, compressed with zstd, declaring
    /// `raw_len`.
    fn zstd_block(raw_len: usize, stored: &[u8]) -> Vec<u8> {
        let mut out = vec![COMPRESSION_ZSTD, BlockType::Data as u8, 0, 0];
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&(raw_len as u32).to_le_bytes());
        out.extend_from_slice(&(stored.len() as u32).to_le_bytes());
        out.extend_from_slice(stored);
        let crc = crc32(&[&out]);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(block: &[u8], unpacker: &mut Unpacker) -> Result<Vec<u8>, FormatError> {
        let h = read_block_header(block, 0, block.len(), BlockType::Data, "b")?;
        payload(block, &h, unpacker, "b").map(<[u8]>::to_vec)
    }

    /// A zstd frame by hand (RFC 8878): not single-segment, window descriptor `window`,
    /// 2-byte content size, one raw block holding `content` (256..=65791 bytes).
    fn raw_frame(window: u8, content: &[u8]) -> Vec<u8> {
        let mut f = ZSTD_MAGIC.to_le_bytes().to_vec();
        f.push(0x40); // frame header descriptor: 2-byte content size, windowed
        f.push(window);
        f.extend_from_slice(&((content.len() - 256) as u16).to_le_bytes());
        let block_header = ((content.len() as u32) << 3) | 1; // last block, raw
        f.extend_from_slice(&block_header.to_le_bytes()[..3]);
        f.extend_from_slice(content);
        f
    }

    #[test]
    fn frame_window_reads_the_descriptor_or_the_content_size() {
        let content = vec![5u8; 300];
        assert_eq!(frame_window(&raw_frame(13 << 3, &content)), Some(1 << 23));
        assert_eq!(
            frame_window(&raw_frame((13 << 3) | 1, &content)),
            Some((1 << 23) + (1 << 20))
        );
        let written = zstd::bulk::compress(&content, ZSTD_LEVEL).unwrap();
        assert_eq!(frame_window(&written), Some(300), "single segment");
        assert_eq!(frame_window(b"not a frame"), None);
    }

    /// Writer frames take the one-shot path through one reused context; frames with a
    /// window above the limit, trailing bytes or no content size take the streaming path.
    #[test]
    fn one_shot_and_streaming_paths_agree() {
        let raw: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let written = zstd::bulk::compress(&raw, ZSTD_LEVEL).unwrap();
        assert!(one_shot(&written, raw.len()));
        let mut unpacker = Unpacker::default();
        for _ in 0..3 {
            assert_eq!(
                decode(&zstd_block(raw.len(), &written), &mut unpacker).unwrap(),
                raw
            );
        }
        // A wrong declared length is refused on either path.
        let e = decode(&zstd_block(raw.len() - 1, &written), &mut unpacker).unwrap_err();
        assert!(e.to_string().contains("decompress"), "{e}");

        let content = vec![9u8; 300];
        let ok = raw_frame(13 << 3, &content);
        assert!(one_shot(&ok, content.len()));
        assert_eq!(
            decode(&zstd_block(300, &ok), &mut unpacker).unwrap(),
            content
        );
        // A window above the limit is left to the streaming decoder (which itself decodes
        // in one pass, without a window buffer, when the frame and its output fit).
        let too_wide = raw_frame(14 << 3, &content);
        assert!(!one_shot(&too_wide, content.len()));
        assert_eq!(
            decode(&zstd_block(300, &too_wide), &mut unpacker).unwrap(),
            content
        );

        let mut trailing = written.clone();
        trailing.extend_from_slice(b"junk");
        assert!(!one_shot(&trailing, raw.len()));
        let mut streamed = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut streamed, ZSTD_LEVEL).unwrap();
        std::io::Write::write_all(&mut enc, &raw).unwrap();
        enc.finish().unwrap();
        assert!(!one_shot(&streamed, raw.len()), "no content size");
        assert_eq!(
            decode(&zstd_block(raw.len(), &streamed), &mut unpacker).unwrap(),
            raw
        );
    }
}
