//! The in-memory record buffer and the encoding of a sealed buffer into a segment file.
//!
//! The task thread appends each record, in the segment's record encoding, to the
//! `cairn_format::ChangelogRecords` of its key group, which notes where it ends and which
//! ops each state used. Sealing moves the buffers out in O(key groups used). A segment
//! orders its blocks by key group and keeps each key group's changes in order, which is
//! what the buffers hold already: a background thread (or the checkpoint's asynchronous
//! phase) cuts each key group's bytes into blocks at record ends, without sorting, copying
//! or decoding records (the segment writer checks the buffer's op masks against the state
//! table instead).

use std::sync::Arc;

use cairn_core::{Result, StateError};
use cairn_format::{ChangelogRecord, ChangelogRecords, ChangelogSegmentWriter, FileState};

/// Blocks are cut near this many uncompressed bytes.
const TARGET_BLOCK_BYTES: usize = 64 << 10;

/// Records not sealed yet.
#[derive(Debug, Default)]
pub(crate) struct LogBuffer {
    /// The records of each key group, in order; indexed by key group (grown on first use).
    groups: Vec<ChangelogRecords>,
    /// The key groups with records, in first-use order.
    used: Vec<u32>,
    bytes: usize,
    records: u64,
    /// Sequence number of the first buffered record.
    first_sqn: u64,
}

/// A sealed buffer: everything needed to write one segment.
#[derive(Debug)]
pub(crate) struct Sealed {
    /// `(key group, its records)` in increasing key-group order.
    pub(crate) groups: Vec<(u32, ChangelogRecords)>,
    /// Bytes of the encoded records (before blocks and compression).
    pub(crate) bytes: usize,
    records: u64,
    pub(crate) first_sqn: u64,
    pub(crate) states: Arc<Vec<FileState>>,
}

impl Sealed {
    pub(crate) fn records(&self) -> u64 {
        self.records
    }
}

impl LogBuffer {
    pub(crate) fn new(first_sqn: u64) -> Self {
        Self {
            first_sqn,
            ..Self::default()
        }
    }

    /// Appends one record. Its key group is below `MAX_MAX_PARALLELISM` (2^15): the task's
    /// current key group, or one a segment reader checked, so the buffer's table of key
    /// groups stays small.
    // Inlined into `log_change`, as it was before the buffer became a `ChangelogRecords`
    // (which made it too large for the compiler to inline by itself).
    #[inline(always)]
    pub(crate) fn push(&mut self, r: &ChangelogRecord<'_>) {
        let kg = r.key_group as usize;
        if kg >= self.groups.len() {
            self.groups.resize_with(kg + 1, ChangelogRecords::default);
        }
        let Some(g) = self.groups.get_mut(kg) else {
            return;
        };
        if g.is_empty() {
            self.used.push(r.key_group);
        }
        let start = g.len_bytes();
        g.push(r);
        self.bytes += g.len_bytes() - start;
        self.records += 1;
    }

    pub(crate) fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Moves the records out (`None` when empty); the buffer continues at the next number.
    pub(crate) fn seal(&mut self, states: Arc<Vec<FileState>>) -> Option<Sealed> {
        if self.records == 0 {
            return None;
        }
        let mut used = std::mem::take(&mut self.used);
        used.sort_unstable();
        let groups = used
            .into_iter()
            .filter_map(|kg| {
                // The next segment's buffer starts at this one's size: a buffer grown from
                // empty reallocates and copies its bytes a dozen times per segment (5% of
                // W1 f's task thread).
                let slot = self.groups.get_mut(kg as usize)?;
                let next = ChangelogRecords::with_capacity(slot.len_bytes(), slot.len());
                Some((kg, std::mem::replace(slot, next)))
            })
            .collect();
        let sealed = Sealed {
            groups,
            bytes: self.bytes,
            records: self.records,
            first_sqn: self.first_sqn,
            states,
        };
        self.first_sqn += self.records;
        self.bytes = 0;
        self.records = 0;
        Some(sealed)
    }
}

/// Writes a sealed buffer as a segment file; `name` is used in errors.
pub(crate) fn encode_segment(s: Sealed, name: &str) -> Result<Vec<u8>> {
    let err = |e| StateError::layer(format!("encoding changelog segment name={name}"), e);
    let mut w = ChangelogSegmentWriter::new(s.states.as_ref().clone(), s.first_sqn).map_err(err)?;
    for (kg, g) in &s.groups {
        // Blocks of whole records, each cut once it holds TARGET_BLOCK_BYTES.
        for block in g.blocks(TARGET_BLOCK_BYTES) {
            w.add_block(*kg, block).map_err(err)?;
        }
    }
    w.finish().map_err(err)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_core::{KeyGroupRange, StateKind};
    use cairn_format::{ChangelogOp, ChangelogSegmentReader};

    use super::*;

    /// A sealed buffer becomes a segment whose blocks go by key group, each key group's
    /// records in the order they were pushed, blocks cut at record ends once they reach
    /// the target size; the buffer goes on numbering after what it sealed.
    #[test]
    fn segment_holds_each_key_groups_records_in_order() {
        let states = Arc::new(vec![FileState {
            name: "v".into(),
            kind: StateKind::Value,
        }]);
        let mut buf = LogBuffer::new(10);
        let mut pushed: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
        // Key groups out of order and interleaved; key group 5 gets several blocks.
        let mut x = 1u64;
        for i in 0..6000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kg = [5, 0, 9, 5, 3, 5][(x % 6) as usize];
            let key = i.to_be_bytes().to_vec();
            let value = vec![(x >> 8) as u8; 1 + (x % 40) as usize];
            buf.push(&ChangelogRecord {
                key_group: kg,
                state: 0,
                op: ChangelogOp::Set,
                key: &key,
                namespace: b"",
                user_key: None,
                value: Some(&value),
            });
            pushed.push((kg, key, value));
        }
        assert_eq!(buf.records(), 6000);
        let sealed = buf.seal(states.clone()).unwrap();
        assert_eq!(sealed.records(), 6000);
        assert_eq!(sealed.first_sqn, 10);
        assert_eq!(buf.records(), 0);
        assert_eq!(buf.len_bytes(), 0);
        assert!(buf.seal(states.clone()).is_none(), "nothing left");

        let bytes = encode_segment(sealed, "t.cls").unwrap();
        let reader = ChangelogSegmentReader::open(Bytes::from(bytes), "t.cls").unwrap();
        assert_eq!(reader.first_sqn(), 10);
        assert_eq!(reader.record_count(), 6000);
        let blocks = reader.blocks();
        assert!(blocks.windows(2).all(|w| w[0].key_group <= w[1].key_group));
        assert!(blocks.iter().filter(|b| b.key_group == 5).count() > 1);
        let mut read = Vec::new();
        reader
            .scan::<cairn_format::FormatError, _>(KeyGroupRange::new(0, 16), |r| {
                read.push((
                    r.key_group,
                    r.key.to_vec(),
                    r.value.unwrap_or_default().to_vec(),
                ));
                Ok(())
            })
            .unwrap();
        // What a stable sort by key group of the pushed records gives.
        pushed.sort_by_key(|r| r.0);
        assert_eq!(read, pushed);

        // The next segment starts after the sealed records.
        buf.push(&ChangelogRecord {
            key_group: 1,
            state: 0,
            op: ChangelogOp::Clear,
            key: b"k",
            namespace: b"",
            user_key: None,
            value: None,
        });
        assert_eq!(buf.seal(states).unwrap().first_sqn, 6010);
    }

    /// The segment is what the decoding writer makes of the same blocks, and a record the
    /// state table does not allow fails the encoding with the state index and key group.
    #[test]
    fn segment_is_checked_against_the_state_table_without_decoding() {
        let states = Arc::new(vec![
            FileState {
                name: "v".into(),
                kind: StateKind::Value,
            },
            FileState {
                name: "m".into(),
                kind: StateKind::Map,
            },
        ]);
        let rec = |kg, state, op, user_key: Option<&'static [u8]>, value| ChangelogRecord {
            key_group: kg,
            state,
            op,
            key: b"k",
            namespace: b"",
            user_key,
            value,
        };
        let mut buf = LogBuffer::new(0);
        let value = vec![7u8; 1000];
        for i in 0..300u32 {
            buf.push(&rec(i % 3, 0, ChangelogOp::Set, None, Some(&value[..])));
            buf.push(&rec(i % 2, 1, ChangelogOp::MapPut, Some(b"u"), Some(b"x")));
        }
        let sealed = buf.seal(states.clone()).unwrap();
        let mut w = ChangelogSegmentWriter::new(states.as_ref().clone(), 0).unwrap();
        for (kg, g) in &sealed.groups {
            for b in g.blocks(TARGET_BLOCK_BYTES) {
                w.add_encoded(*kg, b.count(), b.bytes()).unwrap();
            }
        }
        assert!(w.finish().unwrap() == encode_segment(sealed, "t.cls").unwrap());

        buf.push(&rec(3, 0, ChangelogOp::Set, None, Some(b"1")));
        buf.push(&rec(5, 0, ChangelogOp::MapRemove, Some(b"u"), None));
        let e = encode_segment(buf.seal(states).unwrap(), "t.cls")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("t.cls")
                && e.contains("changelog op MapRemove does not apply to Value state index=0")
                && e.contains("key_group=5"),
            "{e}"
        );
    }
}
