//! Behaviour of the state file writer and reader beyond round trips.

use bytes::Bytes;
use cairn_core::{KeyGroupRange, StateKind};
use cairn_format::{
    EntryRef, FileState, FormatError, StateFileReader, StateFileWriter, TARGET_BLOCK_LEN,
};

fn states() -> Vec<FileState> {
    vec![
        FileState {
            name: "v".into(),
            kind: StateKind::Value,
        },
        FileState {
            name: "m".into(),
            kind: StateKind::Map,
        },
    ]
}

fn entry<'a>(
    kg: u32,
    state: u32,
    key: &'a [u8],
    uk: Option<&'a [u8]>,
    value: &'a [u8],
) -> EntryRef<'a> {
    EntryRef {
        key_group: kg,
        state,
        key,
        namespace: b"",
        user_key: uk,
        value,
    }
}

#[test]
fn writer_rejects_bad_entries_and_stays_usable() {
    let mut w = StateFileWriter::new(states()).unwrap();
    w.add(&entry(2, 0, b"b", None, b"1")).unwrap();
    let invalid = |r: Result<(), FormatError>| matches!(r, Err(FormatError::Invalid { .. }));
    assert!(invalid(w.add(&entry(2, 0, b"b", None, b"1"))), "duplicate");
    assert!(
        invalid(w.add(&entry(2, 0, b"a", None, b"1"))),
        "smaller key"
    );
    assert!(
        invalid(w.add(&entry(1, 1, b"z", Some(b"k"), b"1"))),
        "smaller key group"
    );
    assert!(
        invalid(w.add(&entry(3, 1, b"a", None, b"1"))),
        "map entry without user key"
    );
    assert!(
        invalid(w.add(&entry(3, 0, b"a", Some(b"k"), b"1"))),
        "value entry with user key"
    );
    assert!(
        invalid(w.add(&entry(3, 9, b"a", None, b"1"))),
        "unknown state"
    );
    assert!(
        invalid(w.add(&entry(40_000, 0, b"a", None, b"1"))),
        "key group out of range"
    );
    w.add(&entry(2, 1, b"a", Some(b"k"), b"1")).unwrap();
    let r = StateFileReader::open(Bytes::from(w.finish().unwrap()), "s").unwrap();
    assert_eq!(r.entry_count(), 2);
    let dup = StateFileWriter::new(vec![states()[0].clone(), states()[0].clone()]);
    assert!(matches!(dup, Err(FormatError::Invalid { .. })));
}

#[test]
fn large_key_groups_span_several_blocks_and_scans_touch_only_their_range() {
    let mut w = StateFileWriter::new(states()).unwrap();
    let value = vec![0xab; 1000];
    let n = 3 * TARGET_BLOCK_LEN / 1000;
    for kg in [1u32, 5, 9] {
        for i in 0..n as u32 {
            w.add(&entry(kg, 0, &i.to_be_bytes(), None, &value))
                .unwrap();
        }
    }
    let mut bytes = w.finish().unwrap();
    let r = StateFileReader::open(Bytes::from(bytes.clone()), "s").unwrap();
    r.verify_all().unwrap();
    let stats = r.key_groups().to_vec();
    assert_eq!(
        stats.iter().map(|k| k.key_group).collect::<Vec<_>>(),
        [1, 5, 9]
    );
    assert!(stats.iter().all(|k| k.entries == n as u64));

    // Damage key group 1's blocks: a scan of 5..10 still succeeds, one of 0..2 fails.
    bytes[16 + 40 + 30] ^= 0xff;
    let r = StateFileReader::open(Bytes::from(bytes), "s").unwrap();
    let mut count = 0;
    r.scan(KeyGroupRange::new(5, 10), |e| -> Result<(), FormatError> {
        assert!(e.key_group == 5 || e.key_group == 9);
        count += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(count, 2 * n);
    let e = r
        .scan(KeyGroupRange::new(0, 2), |_| Ok::<(), FormatError>(()))
        .unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert!(r.verify_all().is_err());
}

#[test]
fn scan_passes_the_callers_error_through() {
    let mut w = StateFileWriter::new(states()).unwrap();
    w.add(&entry(0, 0, b"a", None, b"1")).unwrap();
    let r = StateFileReader::open(Bytes::from(w.finish().unwrap()), "s").unwrap();
    #[derive(Debug)]
    enum MyError {
        Stop,
        Format(#[allow(dead_code)] FormatError),
    }
    impl From<FormatError> for MyError {
        fn from(e: FormatError) -> Self {
            MyError::Format(e)
        }
    }
    let e = r
        .scan(KeyGroupRange::all(8), |_| Err(MyError::Stop))
        .unwrap_err();
    assert!(matches!(e, MyError::Stop));
}
