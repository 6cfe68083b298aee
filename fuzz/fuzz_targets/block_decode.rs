//! Arbitrary bytes as the data blocks of one key group, framed into an otherwise valid state
//! file (state table of a value, a list and a map state; index; footer), so the fuzzer works
//! on the block parser directly: block header checks, zstd decompression with its length
//! caps, entry parsing and entry order. Checksum comparisons are switched off; list values
//! that come out are fed to the list decoder as a restore would.
#![no_main]

use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind};
use cairn_format::{FileState, FormatError, StateFileReader, StateFileWriter, STATE_FILE_MAGIC};
use libfuzzer_sys::fuzz_target;

/// Block header: compression u8, type u8, reserved u16, key group u32, count u32, raw_len
/// u32, stored_len u32; then the payload and a u32 CRC (format-spec/README.md, "Block").
const BLOCK_HEADER_LEN: usize = 20;
const BLOCK_TRAILER_LEN: usize = 4;
const FOOTER_LEN: usize = 64;
const INDEX_BLOCK_TYPE: u8 = 3;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The state table (and an empty data region and index) of a real file with three states.
fn template() -> Vec<u8> {
    let states = vec![
        FileState {
            name: "value".into(),
            kind: StateKind::Value,
        },
        FileState {
            name: "list".into(),
            kind: StateKind::List,
        },
        FileState {
            name: "map".into(),
            kind: StateKind::Map,
        },
    ];
    StateFileWriter::new(states)
        .and_then(|w| w.finish())
        .expect("an empty state file encodes")
}

fn block(ty: u8, count: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, ty, 0, 0];
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&count.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(true);
    // Walk the input as a chain of blocks to fill in the index entry.
    let key_group = u32_at(data, 4) % 32768;
    let (mut at, mut blocks, mut entries) = (0usize, 0u32, 0u64);
    while at + BLOCK_HEADER_LEN <= data.len() {
        entries += u64::from(u32_at(data, at + 8));
        blocks += 1;
        at = at
            .saturating_add(BLOCK_HEADER_LEN + BLOCK_TRAILER_LEN)
            .saturating_add(u32_at(data, at + 16) as usize);
    }
    // The index requires room for every block it counts (at least 24 bytes each).
    let blocks = blocks.clamp(
        1,
        (data.len() / (BLOCK_HEADER_LEN + BLOCK_TRAILER_LEN)).max(1) as u32,
    );
    if data.len() < BLOCK_HEADER_LEN + BLOCK_TRAILER_LEN {
        return;
    }
    let entries = entries.max(u64::from(blocks));
    let t = template();
    let footer_at = t.len() - FOOTER_LEN;
    let st_len = u64::from_le_bytes(t[footer_at + 8..footer_at + 16].try_into().unwrap()) as usize;
    let data_start = 16 + st_len;
    let mut file = t[..data_start].to_vec();
    file.extend_from_slice(data);
    let index_offset = file.len();
    let mut index = Vec::new();
    index.extend_from_slice(&key_group.to_le_bytes());
    index.extend_from_slice(&blocks.to_le_bytes());
    index.extend_from_slice(&(data_start as u64).to_le_bytes());
    index.extend_from_slice(&(data.len() as u64).to_le_bytes());
    index.extend_from_slice(&entries.to_le_bytes());
    file.extend_from_slice(&block(INDEX_BLOCK_TYPE, 1, &index));
    let index_len = file.len() - index_offset;
    let mut footer = Vec::with_capacity(FOOTER_LEN);
    footer.extend_from_slice(&16u64.to_le_bytes());
    footer.extend_from_slice(&(st_len as u64).to_le_bytes());
    footer.extend_from_slice(&(index_offset as u64).to_le_bytes());
    footer.extend_from_slice(&(index_len as u64).to_le_bytes());
    footer.extend_from_slice(&entries.to_le_bytes());
    footer.extend_from_slice(&blocks.to_le_bytes());
    footer.extend_from_slice(&1u32.to_le_bytes());
    let crc = crc32fast::hash(&[&file[..16], &footer[..]].concat());
    footer.extend_from_slice(&crc.to_le_bytes());
    footer.extend_from_slice(&1u16.to_le_bytes());
    footer.extend_from_slice(&0u16.to_le_bytes());
    footer.extend_from_slice(&STATE_FILE_MAGIC);
    file.extend_from_slice(&footer);

    let r = StateFileReader::open(Bytes::from(file), "fuzz")
        .expect("the frame around the blocks is a valid state file");
    let _ = r.scan(
        KeyGroupRange::new(0, 32768),
        |e| -> Result<(), FormatError> {
            if e.state == 1 {
                let _ = cairn_format::decode_list(e.value);
            }
            Ok(())
        },
    );
});
