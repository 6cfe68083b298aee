//! Structured input (via `arbitrary`) shaped into sorted entries → `StateFileWriter` →
//! `StateFileReader` → the same entries, the same per-key-group figures, and every range
//! scan returns exactly its key groups. Checksums stay on.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind};
use cairn_format::{EntryRef, FileState, FormatError, StateFileReader, StateFileWriter};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    /// State kinds by code (1..=5), names are their index.
    states: Vec<u8>,
    entries: Vec<(u8, u8, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// Entries with a large value, to cross block boundaries.
    big: Vec<(u8, u8, u16)>,
    range: (u8, u8),
}

type Key = (u32, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

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
    let n = states.len() as u8;
    let mut model: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    let mut put = |kg: u8, s: u8, key: Vec<u8>, ns: Vec<u8>, uk: Vec<u8>, value: Vec<u8>| {
        let state = s % n;
        let uk = (states[state as usize].kind == StateKind::Map).then_some(uk);
        model.insert((u32::from(kg) * 97, u32::from(state), key, ns, uk), value);
    };
    for (kg, s, key, ns, uk, value) in input.entries {
        put(kg, s, key, ns, uk, value);
    }
    for (kg, s, len) in input.big {
        put(
            kg,
            s,
            vec![len as u8],
            Vec::new(),
            Vec::new(),
            vec![kg; usize::from(len) * 4],
        );
    }
    let mut w = StateFileWriter::new(states.clone()).expect("valid states");
    for ((kg, state, key, ns, uk), value) in &model {
        let e = EntryRef {
            key_group: *kg,
            state: *state,
            key,
            namespace: ns,
            user_key: uk.as_deref(),
            value,
        };
        w.add(&e).expect("sorted entries are accepted");
    }
    let bytes = w.finish().expect("finish");
    let r = StateFileReader::open(Bytes::from(bytes), "fuzz").expect("what was written opens");
    assert_eq!(r.states(), &states[..]);
    assert_eq!(r.entry_count(), model.len() as u64);
    r.verify_all().expect("what was written verifies");
    let (a, b) = (u32::from(input.range.0) * 97, u32::from(input.range.1) * 97);
    let range = KeyGroupRange::new(a.min(b), a.max(b));
    let mut read: BTreeMap<Key, Vec<u8>> = BTreeMap::new();
    r.scan(range, |e| -> Result<(), FormatError> {
        let k = (
            e.key_group,
            e.state,
            e.key.to_vec(),
            e.namespace.to_vec(),
            e.user_key.map(<[u8]>::to_vec),
        );
        assert!(
            read.insert(k, e.value.to_vec()).is_none(),
            "an entry read twice"
        );
        Ok(())
    })
    .expect("scan");
    let expected: BTreeMap<Key, Vec<u8>> = model
        .into_iter()
        .filter(|(k, _)| range.contains(k.0))
        .collect();
    assert_eq!(read, expected);
});
