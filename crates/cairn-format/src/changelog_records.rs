//! [`ChangelogRecords`]: a buffer of encoded changelog records that a
//! [`ChangelogSegmentWriter`](crate::ChangelogSegmentWriter) accepts without decoding them
//! again (`ChangelogSegmentWriter::add_block`), because the buffer's only way in encodes
//! them and notes what the writer must still check.

use crate::changelog::{encode_changelog_record, ChangelogOp, ChangelogRecord};

/// State indices below this get an op mask in [`ChangelogRecords`]; a record of a larger
/// index makes the writer check that buffer by decoding it (tables that large are not
/// expected; the bound keeps a wild index from allocating gigabytes).
const MAX_TRACKED_STATES: usize = 4096;

/// State indices whose op masks live inline, a byte each in a `u64` (no extra cache line
/// per record for the common operator with a few states).
const INLINE_STATES: usize = 8;

/// Bit of an op mask set by a record whose user key or value is present when its op has
/// none, or missing when it needs one (its bytes would not decode). Bits 1..=6 are the
/// op codes.
pub(crate) const MISSHAPEN: u8 = 1 << 7;

/// The parts a record of `op` carries: bit 0 a user key, bit 1 a value.
#[inline]
fn op_shape(op: ChangelogOp) -> u8 {
    u8::from(op.has_user_key()) | u8::from(op.has_value()) << 1
}

/// Records of one key group, encoded back to back with [`encode_changelog_record`] (the
/// payload encoding of a segment block), with what a [`ChangelogSegmentWriter`](crate::ChangelogSegmentWriter) needs to
/// accept them without decoding them again.
///
/// The only way in is [`Self::push`], which encodes the record and notes where it ends and,
/// per state index, which ops were used (and whether a record's user key and value match
/// its op). [`ChangelogSegmentWriter::add_block`](crate::ChangelogSegmentWriter::add_block) then checks the whole buffer in
/// O(states): every state index names a state of the segment's table with an op its kind
/// allows. That, the record ends, and the block size limit (a record whose parts do not
/// fit a `u32` length is larger than any block may be) are everything decoding would
/// check.
#[derive(Clone, Default)]
pub struct ChangelogRecords {
    pub(crate) bytes: Vec<u8>,
    /// Where each record ends in `bytes` (exact while `bytes` fits `u32` offsets).
    ends: Vec<u32>,
    /// The op masks of state indices `0..INLINE_STATES`, byte `i` for index `i`: bit
    /// `code` for each op used, [`MISSHAPEN`] for a record whose parts do not match its op.
    inline_ops: u64,
    /// What records of state indices from `INLINE_STATES` on used (boxed, so that the
    /// buffer is 64 bytes: a backend keeps one per key group).
    more_ops: Option<Box<MoreOps>>,
}

/// The op masks of state indices past the inline ones.
#[derive(Clone, Debug, Default)]
struct MoreOps {
    /// Index `i` for state index `INLINE_STATES + i`.
    masks: Vec<u8>,
    /// A record named a state index of [`MAX_TRACKED_STATES`] or more.
    untracked: bool,
}

impl std::fmt::Debug for ChangelogRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogRecords")
            .field("records", &self.ends.len())
            .field("bytes", &self.bytes.len())
            .field("ops", &self.op_masks().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ChangelogRecords {
    /// An empty buffer (allocates nothing until the first record).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(bytes: usize, records: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(records),
            ..Self::default()
        }
    }

    /// Appends `r` (its `key_group` is not encoded: the block holds it). Runs per state
    /// change, so besides encoding it only appends the record's end and sets a bit.
    #[inline]
    pub fn push(&mut self, r: &ChangelogRecord<'_>) {
        encode_changelog_record(r, &mut self.bytes);
        // Exact while the buffer stays within 4 GiB, which the writer checks.
        self.ends.push(self.bytes.len() as u32);
        let parts = u8::from(r.user_key.is_some()) | u8::from(r.value.is_some()) << 1;
        let mask = 1u8 << r.op.code()
            | if parts == op_shape(r.op) {
                0
            } else {
                MISSHAPEN
            };
        let state = r.state as usize;
        if state < INLINE_STATES {
            self.inline_ops |= u64::from(mask) << (state * 8);
        } else {
            self.push_more_ops(state, mask);
        }
    }

    #[cold]
    fn push_more_ops(&mut self, state: usize, mask: u8) {
        let more = self.more_ops.get_or_insert_with(Box::default);
        if state >= MAX_TRACKED_STATES {
            more.untracked = true;
            return;
        }
        let i = state.saturating_sub(INLINE_STATES);
        if i >= more.masks.len() {
            more.masks.resize(i + 1, 0);
        }
        if let Some(m) = more.masks.get_mut(i) {
            *m |= mask;
        }
    }

    /// Whether a record named a state index too large to track.
    pub(crate) fn untracked(&self) -> bool {
        self.more_ops.as_ref().is_some_and(|m| m.untracked)
    }

    /// `(state index, op mask)` of every state index a record used.
    pub(crate) fn op_masks(&self) -> impl Iterator<Item = (usize, u8)> + '_ {
        let inline = self.inline_ops.to_le_bytes();
        (0..INLINE_STATES)
            .zip(inline)
            .chain(
                (INLINE_STATES..).zip(self.more_ops.iter().flat_map(|m| m.masks.iter().copied())),
            )
            .filter(|&(_, mask)| mask != 0)
    }

    /// Records in the buffer.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the buffer holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Encoded bytes in the buffer.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded records, back to back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The records cut into blocks at record ends, in order: a block ends with the first
    /// record that brings it to `target_len` bytes or more (so a block exceeds the target
    /// by less than one record); the last block holds the rest.
    pub fn blocks(&self, target_len: usize) -> ChangelogBlocks<'_> {
        ChangelogBlocks {
            records: self,
            start: 0,
            next: 0,
            target_len,
        }
    }
}

/// A run of whole records of a [`ChangelogRecords`], from [`ChangelogRecords::blocks`], for
/// [`ChangelogSegmentWriter::add_block`](crate::ChangelogSegmentWriter::add_block).
#[derive(Clone, Copy)]
pub struct ChangelogBlock<'a> {
    pub(crate) records: &'a ChangelogRecords,
    pub(crate) bytes: &'a [u8],
    pub(crate) count: u32,
}

impl std::fmt::Debug for ChangelogBlock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogBlock")
            .field("records", &self.count)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> ChangelogBlock<'a> {
    /// The encoded records of the block (what [`ChangelogSegmentWriter::add_encoded`](crate::ChangelogSegmentWriter::add_encoded)
    /// takes).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Records in the block.
    pub fn count(&self) -> u32 {
        self.count
    }
}

/// The blocks of a [`ChangelogRecords`] ([`ChangelogRecords::blocks`]).
#[derive(Clone, Debug)]
pub struct ChangelogBlocks<'a> {
    records: &'a ChangelogRecords,
    /// Where the next block starts in the bytes.
    start: usize,
    /// Index of the next record end.
    next: usize,
    target_len: usize,
}

impl<'a> Iterator for ChangelogBlocks<'a> {
    type Item = ChangelogBlock<'a>;

    fn next(&mut self) -> Option<ChangelogBlock<'a>> {
        let all = &self.records.bytes;
        let start = self.start;
        let mut count = 0u32;
        while let Some(&end) = self.records.ends.get(self.next) {
            self.next += 1;
            count += 1;
            let end = end as usize;
            if end.saturating_sub(start) >= self.target_len || count == u32::MAX {
                self.start = end;
                return Some(self.block(all.get(start..end), count));
            }
        }
        if count == 0 {
            return None;
        }
        self.start = all.len();
        Some(self.block(all.get(start..), count))
    }
}

impl<'a> ChangelogBlocks<'a> {
    fn block(&self, bytes: Option<&'a [u8]>, count: u32) -> ChangelogBlock<'a> {
        ChangelogBlock {
            records: self.records,
            // Only a buffer beyond 4 GiB has inexact ends, and the writer refuses those.
            bytes: bytes.unwrap_or_default(),
            count,
        }
    }
}
