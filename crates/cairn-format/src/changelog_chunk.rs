//! [`ChangelogChunk`]: an arrival-order buffer of encoded v2 changelog records that a
//! [`ChangelogSegmentWriter`](crate::ChangelogSegmentWriter) writes as one block without
//! decoding it again (`ChangelogSegmentWriter::add_chunk`), because the chunk's only way
//! in encodes the records and notes what the writer must still check.

use cairn_core::KeyGroupRange;
#[cfg(doc)]
use cairn_core::MAX_MAX_PARALLELISM;

use crate::changelog::{encode_changelog_record_v2, ChangelogOp, ChangelogRecord};

/// State indices below this get an op mask in [`ChangelogChunk`]; a record of a larger
/// index makes the writer check that chunk by decoding it (tables that large are not
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

/// The op mask of one record: bit `code` of its op, and [`MISSHAPEN`] when the parts it
/// carries do not match its op.
#[inline]
pub(crate) fn record_mask(r: &ChangelogRecord<'_>) -> u8 {
    let parts = u8::from(r.user_key.is_some()) | u8::from(r.value.is_some()) << 1;
    1u8 << r.op.code()
        | if parts == op_shape(r.op) {
            0
        } else {
            MISSHAPEN
        }
}

/// Arrival-order buffer of encoded v2 records (each its key group as `u16`, then the
/// record: what a segment block's payload holds, [`encode_changelog_record_v2`]), with what
/// a [`ChangelogSegmentWriter`](crate::ChangelogSegmentWriter) needs to accept it without
/// decoding it: the op masks per state index, a bit for records whose parts do not match
/// their op, the lowest and highest key group.
///
/// The only way in is [`Self::push`], which encodes the record and notes, per state index,
/// which ops were used (and whether a record's user key and value match its op), and the
/// key-group bounds. [`ChangelogSegmentWriter::add_chunk`](crate::ChangelogSegmentWriter::add_chunk)
/// then checks the whole chunk in O(states): every state index names a state of the
/// segment's table with an op its kind allows, every key group is below
/// [`MAX_MAX_PARALLELISM`]. That, and the block size limit (a record whose parts do not fit
/// a `u32` length is larger than any block may be), are everything decoding would check.
///
/// Chunks are meant to be recycled: [`Self::clear`] keeps the capacity.
#[derive(Clone)]
pub struct ChangelogChunk {
    pub(crate) bytes: Vec<u8>,
    records: usize,
    /// Lowest key group pushed (`u32::MAX` while empty).
    kg_min: u32,
    /// Highest key group pushed (0 while empty).
    kg_max: u32,
    /// The op masks of state indices `0..INLINE_STATES`, byte `i` for index `i`: bit
    /// `code` for each op used, [`MISSHAPEN`] for a record whose parts do not match its op.
    inline_ops: u64,
    /// What records of state indices from `INLINE_STATES` on used (boxed: rare, and keeps
    /// the chunk small).
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

impl Default for ChangelogChunk {
    fn default() -> Self {
        Self {
            bytes: Vec::new(),
            records: 0,
            kg_min: u32::MAX,
            kg_max: 0,
            inline_ops: 0,
            more_ops: None,
        }
    }
}

impl std::fmt::Debug for ChangelogChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangelogChunk")
            .field("records", &self.records)
            .field("bytes", &self.bytes.len())
            .field("key_groups", &self.key_groups())
            .field("ops", &self.op_masks().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ChangelogChunk {
    /// An empty chunk (allocates nothing until the first record).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty chunk with room for `bytes` encoded bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bytes),
            ..Self::default()
        }
    }

    /// Appends `r`, its key group included (as a `u16`; a key group of
    /// [`MAX_MAX_PARALLELISM`] or more is noted, and the writer refuses the chunk). Runs
    /// per state change, so besides encoding it only updates the key-group bounds and sets
    /// a bit.
    #[inline]
    pub fn push(&mut self, r: &ChangelogRecord<'_>) {
        encode_changelog_record_v2(r, &mut self.bytes);
        self.records += 1;
        self.kg_min = self.kg_min.min(r.key_group);
        self.kg_max = self.kg_max.max(r.key_group);
        let mask = record_mask(r);
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

    /// Records in the chunk.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the chunk holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Encoded bytes in the chunk.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The encoded records, back to back (what
    /// [`ChangelogSegmentWriter::add_encoded`](crate::ChangelogSegmentWriter::add_encoded)
    /// takes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key groups of the records, from the lowest to the highest + 1 (`None` when
    /// empty). A key group beyond [`MAX_MAX_PARALLELISM`] is reported as it was pushed.
    pub fn key_groups(&self) -> Option<KeyGroupRange> {
        (self.records > 0).then(|| KeyGroupRange::new(self.kg_min, self.kg_max.saturating_add(1)))
    }

    /// Empties the chunk, keeping its capacity (chunks are recycled).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.records = 0;
        self.kg_min = u32::MAX;
        self.kg_max = 0;
        self.inline_ops = 0;
        if let Some(more) = &mut self.more_ops {
            more.masks.clear();
            more.untracked = false;
        }
    }
}
