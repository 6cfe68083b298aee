//! Structured input (via `arbitrary`) shaped into valid changelog records, in arrival order
//! (key groups mixed) → blocks of `ChangelogSegmentWriter` (single records with `add`,
//! batches with `add_encoded`, or a backend's recycled `ChangelogChunk` with `add_chunk`, byte
//! for byte as `add_encoded` of the chunk's bytes; long repetitive values so that blocks get
//! zstd-compressed; the state table given whole or as a prefix extended by `set_states`) →
//! `ChangelogSegmentReader` → the same state table, first sequence number, records in the
//! same order, and every range scan returns exactly its key groups' records, in order.
//! Checksums stay on: then one flipped bit and one truncation of the written segment must
//! each be an error (never a panic, never a segment that still reads).
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind, MAX_MAX_PARALLELISM};
use cairn_format::{
    encode_changelog_record_v2, ChangelogChunk, ChangelogOp, ChangelogRecord,
    ChangelogSegmentReader, ChangelogSegmentWriter, FileState, FormatError,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// State kinds by code (1..=5), names are their index.
    states: Vec<u8>,
    first_sqn: u64,
    records: Vec<Rec>,
    /// Records per `add_encoded` batch (0: each record through `add`; odd: `add_chunk` of a
    /// `ChangelogChunk` cut near 16 × this many bytes).
    batch: u8,
    /// States the writer starts with (modulo the table's length + 1); `set_states` gives it
    /// the whole table before the first record.
    initial_states: u8,
    range: (u16, u16),
    /// Which bit to flip and where to cut, modulo the segment's length.
    flip: u32,
    cut: u32,
}

#[derive(Arbitrary, Debug)]
struct Rec {
    key_group: u16,
    state: u8,
    op: u8,
    key: Vec<u8>,
    namespace: Vec<u8>,
    user_key: Vec<u8>,
    value: Vec<u8>,
    /// Repeats the value this many times (compressible payloads).
    repeat: u8,
}

/// An owned record: key group, state, op, key, namespace, user key, value.
type Owned = (
    u32,
    u32,
    ChangelogOp,
    Vec<u8>,
    Vec<u8>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn ops_of(kind: StateKind) -> &'static [ChangelogOp] {
    use ChangelogOp::*;
    match kind {
        StateKind::List => &[ListAppend, ListSet, Clear],
        StateKind::Map => &[MapPut, MapRemove, Clear],
        _ => &[Set, Clear],
    }
}

fn as_record(o: &Owned) -> ChangelogRecord<'_> {
    ChangelogRecord {
        key_group: o.0,
        state: o.1,
        op: o.2,
        key: &o.3,
        namespace: &o.4,
        user_key: o.5.as_deref(),
        value: o.6.as_deref(),
    }
}

fn owned(r: &ChangelogRecord<'_>) -> Owned {
    (
        r.key_group,
        r.state,
        r.op,
        r.key.to_vec(),
        r.namespace.to_vec(),
        r.user_key.map(<[u8]>::to_vec),
        r.value.map(<[u8]>::to_vec),
    )
}

fn read_all(bytes: &[u8], range: KeyGroupRange) -> Result<Vec<Owned>, FormatError> {
    let r = ChangelogSegmentReader::open(Bytes::copy_from_slice(bytes), "fuzz.cls")?;
    let mut out = Vec::new();
    r.scan(range, |rec| -> Result<(), FormatError> {
        out.push(owned(rec));
        Ok(())
    })?;
    Ok(out)
}

fuzz_target!(|input: Input| {
    cairn_format::fuzzing::set_skip_checksums(false);
    let states: Vec<FileState> = input
        .states
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, c)| FileState {
            name: format!("s{i}"),
            kind: StateKind::from_code(c % 5 + 1).unwrap_or(StateKind::Value),
        })
        .collect();
    if states.is_empty() {
        return;
    }
    let records: Vec<Owned> = input
        .records
        .into_iter()
        .take(256)
        .map(|r| {
            let state = u32::from(r.state) % states.len() as u32;
            let ops = ops_of(states[state as usize].kind);
            let op = ops[usize::from(r.op) % ops.len()];
            let value = r.value.repeat(usize::from(r.repeat) + 1);
            (
                u32::from(r.key_group) % MAX_MAX_PARALLELISM,
                state,
                op,
                r.key,
                r.namespace,
                op.has_user_key().then_some(r.user_key),
                op.has_value().then_some(value),
            )
        })
        .collect();
    // Records stay in arrival order: a segment holds them in the order they happened.

    let writer = || {
        let initial = usize::from(input.initial_states) % (states.len() + 1);
        let mut w = ChangelogSegmentWriter::new(states[..initial].to_vec(), input.first_sqn)
            .expect("valid states");
        w.set_states(states.clone())
            .expect("a table that extends the writer's");
        assert_eq!(w.states(), &states[..]);
        w
    };
    let mut w = writer();
    // The decoding writer fed the same chunks, when the input chose `add_chunk`.
    let mut decoded = None;
    if input.batch == 0 {
        for r in &records {
            w.add(&as_record(r)).expect("a valid record is accepted");
        }
    } else if input.batch % 2 == 1 {
        // A backend's chunk, recycled: cut with the first record that brings it to the
        // target and written without decoding; the same bytes through the decoding path
        // must give the same file.
        let mut d = writer();
        let target = usize::from(input.batch) * 16;
        let mut chunk = ChangelogChunk::with_capacity(target);
        let mut write = |chunk: &mut ChangelogChunk, in_chunk: &[Owned]| {
            assert_eq!(chunk.len(), in_chunk.len());
            let lo = in_chunk.iter().map(|r| r.0).min();
            let hi = in_chunk.iter().map(|r| r.0 + 1).max();
            assert_eq!(
                chunk.key_groups(),
                lo.zip(hi).map(|(lo, hi)| KeyGroupRange::new(lo, hi))
            );
            w.add_chunk(chunk).expect("a valid chunk is accepted");
            d.add_encoded(chunk.len() as u32, chunk.as_bytes())
                .expect("a valid chunk's bytes are accepted");
            chunk.clear();
            assert!(chunk.is_empty() && chunk.len_bytes() == 0 && chunk.key_groups().is_none());
        };
        let mut start = 0;
        for (i, r) in records.iter().enumerate() {
            chunk.push(&as_record(r));
            if chunk.len_bytes() >= target {
                write(&mut chunk, &records[start..=i]);
                start = i + 1;
            }
        }
        write(&mut chunk, &records[start..]);
        decoded = Some(d);
    } else {
        for batch in records.chunks(usize::from(input.batch)) {
            let mut payload = Vec::new();
            for r in batch {
                encode_changelog_record_v2(&as_record(r), &mut payload);
            }
            w.add_encoded(batch.len() as u32, &payload)
                .expect("a valid batch is accepted");
        }
    }
    assert_eq!(w.records(), records.len() as u64);
    let bytes = w.finish().expect("finish");
    if let Some(d) = decoded {
        assert_eq!(
            d.finish().expect("finish"),
            bytes,
            "add_chunk and add_encoded of the same chunks differ"
        );
    }

    let r = ChangelogSegmentReader::open(Bytes::from(bytes.clone()), "fuzz.cls")
        .expect("what was written opens");
    assert_eq!(r.states(), &states[..]);
    assert_eq!(r.first_sqn(), input.first_sqn);
    assert_eq!(r.record_count(), records.len() as u64);
    assert_eq!(r.version(), 2);
    r.verify_all().expect("what was written verifies");
    assert_eq!(
        read_all(&bytes, KeyGroupRange::new(0, MAX_MAX_PARALLELISM)).expect("scan"),
        records
    );
    let (a, b) = (
        u32::from(input.range.0) % MAX_MAX_PARALLELISM,
        u32::from(input.range.1) % MAX_MAX_PARALLELISM,
    );
    let range = KeyGroupRange::new(a.min(b), a.max(b));
    let expected: Vec<Owned> = records
        .iter()
        .filter(|r| range.contains(r.0))
        .cloned()
        .collect();
    assert_eq!(read_all(&bytes, range).expect("range scan"), expected);

    // Damage: one flipped bit, one cut; every block read.
    let check = |damaged: &[u8], what: String| {
        let result = ChangelogSegmentReader::open(Bytes::copy_from_slice(damaged), "fuzz.cls")
            .and_then(|r| r.verify_all());
        match result {
            Ok(()) => panic!("{what} reads"),
            Err(e) => assert!(e.to_string().contains("path=fuzz.cls"), "{what}: {e}"),
        }
    };
    let bit = input.flip as usize % (bytes.len() * 8);
    let mut flipped = bytes.clone();
    flipped[bit / 8] ^= 1 << (bit % 8);
    check(&flipped, format!("bit {bit} flipped"));
    let cut = input.cut as usize % bytes.len();
    check(&bytes[..cut], format!("cut at {cut}"));
});
