//! Reading a canonical state file: `open` checks the header, footer, state table and
//! key-group index; `scan` reads only the blocks of the key groups asked for.

use std::collections::HashSet;

use bytes::Bytes;
use cairn_core::{KeyGroup, KeyGroupRange, StateKind, MAX_MAX_PARALLELISM};

use crate::block::{payload, read_block_header, BlockType, Unpacker, MIN_BLOCK_LEN};
use crate::codec::{check_required_flags, corrupt, crc32, crc_matches, Reader, Version};
use crate::state_file::*;
use crate::FormatError;

/// Where one key group's blocks are.
#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    offset: usize,
    len: usize,
    blocks: u32,
}

/// Reads a canonical state file.
#[derive(Debug)]
pub struct StateFileReader {
    bytes: Bytes,
    path: String,
    states: Vec<FileState>,
    /// Per state of the table: whether it is a map state (its entries carry a user key).
    is_map: Vec<bool>,
    key_groups: Vec<KeyGroupStats>,
    index: Vec<IndexEntry>,
    entry_count: u64,
}

impl StateFileReader {
    /// Opens the file: checks header, footer, state table and index; `path` is used in
    /// errors.
    pub fn open(bytes: Bytes, path: &str) -> Result<Self, FormatError> {
        let file: &[u8] = &bytes;
        let len = file.len();
        let bad = |offset: usize, detail: String| corrupt(KIND, path, offset as u64, detail);
        if len < HEADER_LEN + FOOTER_LEN {
            return Err(bad(len, format!("truncated state file len={len}")));
        }
        let footer_at = len - FOOTER_LEN;
        let mut h = Reader::new(file.get(..HEADER_LEN).unwrap_or_default(), 0, KIND, path);
        let mut f = Reader::new(
            file.get(footer_at..).unwrap_or_default(),
            footer_at as u64,
            KIND,
            path,
        );
        if h.take(MAGIC_LEN, "magic")? != STATE_FILE_MAGIC {
            return Err(bad(
                HEADER_MAGIC_OFFSET,
                "bad magic, not a cairn state file".into(),
            ));
        }
        let version = h.u16("version")?;
        let flags = h.u16("flags")?;
        let reserved = h.u32("reserved")?;
        let state_table_offset = f.u64("footer")?;
        let state_table_len = f.u64("footer")?;
        let index_offset = f.u64("footer")?;
        let index_len = f.u64("footer")?;
        let entry_count = f.u64("footer")?;
        let block_count = f.u32("footer")?;
        let key_group_count = f.u32("footer")?;
        let stored_crc = f.u32("footer")?;
        let footer_version = f.u16("footer")?;
        let footer_reserved = f.u16("footer")?;
        if f.take(MAGIC_LEN, "footer magic")? != STATE_FILE_MAGIC {
            return Err(bad(
                footer_at + FOOTER_MAGIC,
                "bad footer magic (truncated or not a state file)".into(),
            ));
        }
        Version::check(
            (KIND, path),
            HEADER_VERSION_OFFSET,
            (version, footer_version),
        )?;
        let header = file.get(..HEADER_LEN).unwrap_or_default();
        let footer_fields = file
            .get(footer_at..footer_at + FOOTER_CRC)
            .unwrap_or_default();
        let computed = crc32(&[header, footer_fields]);
        if !crc_matches(stored_crc, computed) {
            return Err(bad(
                footer_at + FOOTER_CRC,
                format!(
                    "footer checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"
                ),
            ));
        }
        if reserved != 0 {
            return Err(bad(
                HEADER_RESERVED_OFFSET,
                "reserved field is not zero".into(),
            ));
        }
        if footer_reserved != 0 {
            return Err(bad(
                footer_at + FOOTER_RESERVED,
                "reserved footer field is not zero".into(),
            ));
        }
        check_required_flags(KIND, path, HEADER_FLAGS_OFFSET, flags, KNOWN_REQUIRED_FLAGS)?;
        // The regions tile the file: header, state table, data, index, footer.
        let st_end = state_table_offset.checked_add(state_table_len);
        let index_end = index_offset.checked_add(index_len);
        let tiled = state_table_offset == HEADER_LEN as u64
            && st_end.is_some_and(|e| e <= index_offset)
            && index_end == Some(footer_at as u64);
        if !tiled {
            return Err(bad(footer_at, format!(
                "footer regions do not tile the file state_table={state_table_offset}+{state_table_len} index={index_offset}+{index_len} footer={footer_at}"
            )));
        }
        // Every value below is <= footer_at, so fits in usize.
        let (st_start, st_end, index_offset) = (
            HEADER_LEN,
            st_end.unwrap_or_default() as usize,
            index_offset as usize,
        );

        let mut buf = Unpacker::default();
        let th = read_block_header(file, st_start, st_end, BlockType::StateTable, path)?;
        if th.len != st_end - st_start {
            return Err(bad(st_start, format!("state table length differs from the footer block_len={} footer={state_table_len}", th.len)));
        }
        let table = payload(file, &th, &mut buf, path)?;
        let states = parse_states(table, th.count, st_start, path)?;

        let ih = read_block_header(file, index_offset, footer_at, BlockType::Index, path)?;
        if ih.len != footer_at - index_offset {
            return Err(bad(
                index_offset,
                format!(
                    "index length differs from the footer block_len={} footer={index_len}",
                    ih.len
                ),
            ));
        }
        if ih.count != key_group_count {
            return Err(bad(index_offset, format!("index key-group count differs from the footer index={} footer={key_group_count}", ih.count)));
        }
        let raw = payload(file, &ih, &mut buf, path)?;
        let (key_groups, index) =
            parse_index(raw, ih.count, index_offset, st_end, index_offset, path)?;
        let entries = key_groups
            .iter()
            .try_fold(0u64, |sum, k| sum.checked_add(k.entries));
        let blocks: u64 = index.iter().map(|i| u64::from(i.blocks)).sum();
        if entries != Some(entry_count) || blocks != u64::from(block_count) {
            return Err(bad(footer_at + FOOTER_ENTRY_COUNT, format!(
                "footer counts differ from the index entries={entry_count} index_entries={entries:?} blocks={block_count} index_blocks={blocks}"
            )));
        }
        let is_map = states.iter().map(|s| s.kind == StateKind::Map).collect();
        Ok(Self {
            bytes,
            path: path.to_string(),
            states,
            is_map,
            key_groups,
            index,
            entry_count,
        })
    }

    /// The state table.
    pub fn states(&self) -> &[FileState] {
        &self.states
    }

    /// The key groups present, with figures.
    pub fn key_groups(&self) -> &[KeyGroupStats] {
        &self.key_groups
    }

    /// The number of entries in the file (from the footer, checked against the index).
    pub fn entry_count(&self) -> u64 {
        self.entry_count
    }

    /// Calls `f` for every entry whose key group is in `range`, in file order, checking
    /// every block's checksum.
    pub fn scan<E, F>(&self, range: KeyGroupRange, mut f: F) -> Result<(), E>
    where
        E: From<FormatError>,
        F: FnMut(EntryRef<'_>) -> Result<(), E>,
    {
        let first = self
            .key_groups
            .partition_point(|k| k.key_group < range.start);
        let mut buf = Unpacker::default();
        let mut prev: Vec<u8> = Vec::new();
        for (stats, at) in self.key_groups.iter().zip(&self.index).skip(first) {
            if stats.key_group >= range.end {
                break;
            }
            self.scan_group(stats, at, &mut buf, &mut prev, &mut f)?;
        }
        Ok(())
    }

    /// Reads every block of the file, checking every checksum and the order and count of
    /// every entry.
    pub fn verify_all(&self) -> Result<(), FormatError> {
        self.scan(KeyGroupRange::new(0, KeyGroup::MAX), |_| {
            Ok::<(), FormatError>(())
        })
    }

    fn scan_group<E, F>(
        &self,
        stats: &KeyGroupStats,
        at: &IndexEntry,
        buf: &mut Unpacker,
        prev_owned: &mut Vec<u8>,
        f: &mut F,
    ) -> Result<(), E>
    where
        E: From<FormatError>,
        F: FnMut(EntryRef<'_>) -> Result<(), E>,
    {
        let file: &[u8] = &self.bytes;
        let path = self.path.as_str();
        let kg = stats.key_group;
        let end = at.offset + at.len;
        let mut pos = at.offset;
        let mut entries = 0u64;
        // The last entry of the previous block, re-encoded, to check order across blocks.
        prev_owned.clear();
        for _ in 0..at.blocks {
            let h = read_block_header(file, pos, end, BlockType::Data, path)?;
            if h.key_group != kg || h.count == 0 {
                return Err(corrupt(KIND, path, pos as u64, format!(
                    "data block does not belong to the index's key group or is empty block_key_group={} index_key_group={kg} entries={}", h.key_group, h.count
                )).into());
            }
            let raw = payload(file, &h, buf, path)?;
            let mut last: Option<SortKey<'_>> = if prev_owned.is_empty() {
                None
            } else {
                let mut pr = Reader::new(prev_owned, 0, KIND, path);
                Some(read_entry(&mut pr, &self.states, kg)?).map(|e| sort_key(&e))
            };
            let mut last_start = 0usize;
            let mut cursor = 0usize;
            for _ in 0..h.count {
                let start = cursor;
                let Some((e, next)) = entry_at(raw, start, &self.is_map, kg) else {
                    return Err(self.entry_error(raw, pos, start, kg).into());
                };
                let key = sort_key(&e);
                if last.is_some_and(|l| l >= key) {
                    return Err(corrupt(
                        KIND,
                        path,
                        pos as u64,
                        format!("entries out of order key_group={kg} entry_at={start}"),
                    )
                    .into());
                }
                last = Some(key);
                last_start = start;
                cursor = next;
                f(e)?;
            }
            Reader::new(
                raw.get(cursor..).unwrap_or_default(),
                (pos + cursor) as u64,
                KIND,
                path,
            )
            .finish("data block entries")?;
            prev_owned.clear();
            prev_owned.extend_from_slice(raw.get(last_start..).unwrap_or_default());
            entries += u64::from(h.count);
            pos += h.len;
        }
        if pos != end || entries != stats.entries {
            return Err(corrupt(KIND, path, at.offset as u64, format!(
                "key group's blocks differ from the index key_group={kg} bytes={} index_bytes={} entries={entries} index_entries={}",
                pos - at.offset, at.len, stats.entries
            )).into());
        }
        Ok(())
    }

    /// The error for the entry at `start` of the payload `raw` of the block at `block_at`,
    /// which [`entry_at`] could not decode: [`read_entry`]'s, with the same offsets.
    #[cold]
    fn entry_error(&self, raw: &[u8], block_at: usize, start: usize, kg: KeyGroup) -> FormatError {
        let rest = raw.get(start..).unwrap_or_default();
        let mut r = Reader::new(rest, (block_at + start) as u64, KIND, &self.path);
        match read_entry(&mut r, &self.states, kg) {
            Err(e) => e,
            Ok(_) => corrupt(
                KIND,
                &self.path,
                (block_at + start) as u64,
                format!("data block entry does not decode key_group={kg} entry_at={start}"),
            ),
        }
    }
}

/// The `u32` at `*at` of `raw`, advancing `at`; `None` past the end.
#[inline(always)]
fn u32_at(raw: &[u8], at: &mut usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let b: [u8; 4] = raw.get(*at..end)?.try_into().ok()?;
    *at = end;
    Some(u32::from_le_bytes(b))
}

/// The `bytes` (u32 length, then the bytes) at `*at` of `raw`, advancing `at`.
#[inline(always)]
fn bytes_at<'a>(raw: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let n = u32_at(raw, at)? as usize;
    let end = at.checked_add(n)?;
    let b = raw.get(*at..end)?;
    *at = end;
    Some(b)
}

/// The entry at `start` of a data block payload and the offset after it, decoded without
/// building errors (the hot path of [`StateFileReader::scan`]); `None` when it is truncated
/// or names a state outside the table, and [`read_entry`] then says why. `is_map[i]` tells
/// whether state `i` of the table is a map state.
#[inline]
fn entry_at<'a>(
    raw: &'a [u8],
    start: usize,
    is_map: &[bool],
    kg: KeyGroup,
) -> Option<(EntryRef<'a>, usize)> {
    let mut at = start;
    let state = u32_at(raw, &mut at)?;
    let map = *is_map.get(state as usize)?;
    let key = bytes_at(raw, &mut at)?;
    let namespace = bytes_at(raw, &mut at)?;
    let user_key = if map {
        Some(bytes_at(raw, &mut at)?)
    } else {
        None
    };
    let value = bytes_at(raw, &mut at)?;
    let e = EntryRef {
        key_group: kg,
        state,
        key,
        namespace,
        user_key,
        value,
    };
    Some((e, at))
}

/// One entry of a data block payload.
fn read_entry<'a>(
    r: &mut Reader<'a>,
    states: &[FileState],
    kg: KeyGroup,
) -> Result<EntryRef<'a>, FormatError> {
    let at = r.offset();
    let state = r.u32("entry state")?;
    let kind = states.get(state as usize).map(|s| s.kind).ok_or_else(|| {
        r.corrupt_at(
            at,
            format!(
                "entry state index out of range state={state} states={}",
                states.len()
            ),
        )
    })?;
    let key = r.bytes("entry key")?;
    let namespace = r.bytes("entry namespace")?;
    let user_key = if kind == StateKind::Map {
        Some(r.bytes("entry user key")?)
    } else {
        None
    };
    let value = r.bytes("entry value")?;
    Ok(EntryRef {
        key_group: kg,
        state,
        key,
        namespace,
        user_key,
        value,
    })
}

fn parse_states(
    raw: &[u8],
    count: u32,
    at: usize,
    path: &str,
) -> Result<Vec<FileState>, FormatError> {
    let mut r = Reader::new(raw, at as u64, KIND, path);
    let n = count as usize;
    if n > raw.len() / MIN_STATE_ENTRY_LEN {
        return Err(r.corrupt(format!("state count exceeds the state table count={n}")));
    }
    let mut states = Vec::with_capacity(n);
    let mut seen = HashSet::with_capacity(n);
    for _ in 0..n {
        let name = r.str("state name")?;
        let code = r.u8("state kind")?;
        let kind = StateKind::from_code(code)
            .ok_or_else(|| r.corrupt(format!("unknown state kind code={code} state={name}")))?;
        if !seen.insert(name) {
            return Err(r.corrupt(format!("duplicate state name state={name}")));
        }
        states.push(FileState {
            name: name.to_string(),
            kind,
        });
    }
    r.finish("state table")?;
    Ok(states)
}

fn parse_index(
    raw: &[u8],
    count: u32,
    at: usize,
    data_start: usize,
    data_end: usize,
    path: &str,
) -> Result<(Vec<KeyGroupStats>, Vec<IndexEntry>), FormatError> {
    let mut r = Reader::new(raw, at as u64, KIND, path);
    let n = count as usize;
    if n > raw.len() / INDEX_ENTRY_LEN {
        return Err(r.corrupt(format!("key-group count exceeds the index count={n}")));
    }
    let mut stats = Vec::with_capacity(n);
    let mut index = Vec::with_capacity(n);
    let mut next_offset = data_start as u64;
    let mut prev_kg: Option<KeyGroup> = None;
    for _ in 0..n {
        let entry_at = r.offset();
        let key_group = r.u32("index key group")?;
        let blocks = r.u32("index block count")?;
        let offset = r.u64("index offset")?;
        let len = r.u64("index length")?;
        let entries = r.u64("index entry count")?;
        let ok = key_group < MAX_MAX_PARALLELISM
            && prev_kg.is_none_or(|p| p < key_group)
            && offset == next_offset
            && blocks > 0
            && u64::from(blocks) <= len / MIN_BLOCK_LEN as u64
            && entries >= u64::from(blocks)
            && offset
                .checked_add(len)
                .is_some_and(|e| e <= data_end as u64);
        if !ok {
            return Err(r.corrupt_at(entry_at, format!(
                "invalid index entry key_group={key_group} blocks={blocks} offset={offset} len={len} entries={entries} expected_offset={next_offset}"
            )));
        }
        next_offset = offset + len;
        prev_kg = Some(key_group);
        stats.push(KeyGroupStats {
            key_group,
            entries,
            bytes: len,
        });
        index.push(IndexEntry {
            offset: offset as usize,
            len: len as usize,
            blocks,
        });
    }
    r.finish("key-group index")?;
    if next_offset != data_end as u64 {
        return Err(corrupt(
            KIND,
            path,
            next_offset,
            format!(
                "data region not covered by the index covered_to={next_offset} index_at={data_end}"
            ),
        ));
    }
    Ok((stats, index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{write_block, ZSTD_LEVEL};

    /// Found by `fuzz/state_file_decode`: index entry counts whose sum overflows `u64`
    /// panicked in `open` (debug builds) instead of being reported.
    #[test]
    fn index_entry_counts_that_overflow_are_corrupt() {
        let states = vec![FileState {
            name: "v".into(),
            kind: StateKind::Value,
        }];
        let mut w = crate::StateFileWriter::new(states).unwrap();
        for kg in [1, 2] {
            let e = EntryRef {
                key_group: kg,
                state: 0,
                key: b"k",
                namespace: b"",
                user_key: None,
                value: b"v",
            };
            w.add(&e).unwrap();
        }
        let good = w.finish().unwrap();
        let footer_at = good.len() - FOOTER_LEN;
        let field = |at: usize| {
            u64::from_le_bytes(good[footer_at + at..footer_at + at + 8].try_into().unwrap())
                as usize
        };
        let index_offset = field(FOOTER_INDEX_OFFSET);
        let r = StateFileReader::open(Bytes::from(good.clone()), "s").unwrap();
        // Rebuild the index with entry counts u64::MAX and 1, checksums valid.
        let mut index = Vec::new();
        for (k, count) in r.key_groups().iter().zip([u64::MAX, 1]) {
            let at = r.index[r.key_groups().iter().position(|x| x == k).unwrap()];
            index.extend_from_slice(&k.key_group.to_le_bytes());
            index.extend_from_slice(&at.blocks.to_le_bytes());
            index.extend_from_slice(&(at.offset as u64).to_le_bytes());
            index.extend_from_slice(&(at.len as u64).to_le_bytes());
            index.extend_from_slice(&count.to_le_bytes());
        }
        let mut bad = good[..index_offset].to_vec();
        let mut zstd = zstd::bulk::Compressor::new(ZSTD_LEVEL).unwrap();
        let index_len = write_block(&mut bad, &mut zstd, BlockType::Index, 0, 2, &index).unwrap();
        let mut footer = good[footer_at..].to_vec();
        footer[FOOTER_INDEX_LEN..FOOTER_INDEX_LEN + 8]
            .copy_from_slice(&(index_len as u64).to_le_bytes());
        let crc = crc32(&[&bad[..HEADER_LEN], &footer[..FOOTER_CRC]]);
        footer[FOOTER_CRC..FOOTER_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        bad.extend_from_slice(&footer);
        let e = StateFileReader::open(Bytes::from(bad), "s").unwrap_err();
        assert!(
            e.to_string()
                .contains("footer counts differ from the index"),
            "{e}"
        );
    }
}
