//! The in-memory record buffer and the encoding of a sealed buffer into a segment file.
//!
//! The task thread appends records to one byte buffer in the segment's record encoding
//! (`cairn_format::encode_changelog_record`), plus one span per record. Sealing moves the
//! buffer out in O(1); a background thread (or the checkpoint's asynchronous phase) sorts
//! the spans by key group — stably, so each key group keeps the order of its changes — and
//! writes the blocks.

use std::sync::Arc;

use cairn_core::{Result, StateError};
use cairn_format::{encode_changelog_record, ChangelogRecord, ChangelogSegmentWriter, FileState};

/// Blocks are cut near this many uncompressed bytes.
const TARGET_BLOCK_BYTES: usize = 64 << 10;

/// Records not sealed yet.
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    bytes: Vec<u8>,
    /// `(key group, start, end)` of each record in `bytes`.
    spans: Vec<(u32, u32, u32)>,
    /// Sequence number of the first buffered record.
    first_sqn: u64,
}

/// A sealed buffer: everything needed to write one segment.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub(crate) bytes: Vec<u8>,
    pub(crate) spans: Vec<(u32, u32, u32)>,
    pub(crate) first_sqn: u64,
    pub(crate) states: Arc<Vec<FileState>>,
}

impl Sealed {
    pub(crate) fn records(&self) -> u64 {
        self.spans.len() as u64
    }
}

impl LogBuffer {
    pub(crate) fn new(first_sqn: u64) -> Self {
        Self {
            first_sqn,
            ..Self::default()
        }
    }

    /// Appends one record.
    pub(crate) fn push(&mut self, r: &ChangelogRecord<'_>) {
        let start = self.bytes.len();
        encode_changelog_record(r, &mut self.bytes);
        // Offsets fit u32 because a buffer is sealed long before 4 GiB (segment_bytes).
        self.spans
            .push((r.key_group, start as u32, self.bytes.len() as u32));
    }

    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn records(&self) -> u64 {
        self.spans.len() as u64
    }

    /// The sequence number the next record gets.
    pub(crate) fn next_sqn(&self) -> u64 {
        self.first_sqn + self.records()
    }

    /// Moves the records out (`None` when empty); the buffer continues at the next number.
    pub(crate) fn seal(&mut self, states: Arc<Vec<FileState>>) -> Option<Sealed> {
        if self.spans.is_empty() {
            return None;
        }
        let next = self.next_sqn();
        let old = std::mem::replace(self, Self::new(next));
        Some(Sealed {
            bytes: old.bytes,
            spans: old.spans,
            first_sqn: old.first_sqn,
            states,
        })
    }
}

/// Writes a sealed buffer as a segment file; `name` is used in errors.
pub(crate) fn encode_segment(mut s: Sealed, name: &str) -> Result<Vec<u8>> {
    let err = |e| StateError::layer(format!("encoding changelog segment name={name}"), e);
    s.spans.sort_by_key(|(kg, _, _)| *kg);
    let mut w = ChangelogSegmentWriter::new(s.states.as_ref().clone(), s.first_sqn).map_err(err)?;
    let mut block = Vec::with_capacity(TARGET_BLOCK_BYTES + 1024);
    let mut count = 0u32;
    let mut block_kg = None;
    for &(kg, start, end) in &s.spans {
        if block_kg != Some(kg) || block.len() >= TARGET_BLOCK_BYTES {
            if let Some(bkg) = block_kg {
                w.add_encoded(bkg, count, &block).map_err(err)?;
            }
            block.clear();
            count = 0;
            block_kg = Some(kg);
        }
        block.extend_from_slice(
            s.bytes
                .get(start as usize..end as usize)
                .unwrap_or_default(),
        );
        count += 1;
    }
    if let Some(bkg) = block_kg {
        w.add_encoded(bkg, count, &block).map_err(err)?;
    }
    w.finish().map_err(err)
}
