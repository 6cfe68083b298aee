//! Arbitrary bytes into the changelog segment reader, read the way a restore reads a segment
//! (`cairn_changelog::read_segment`): `open` (header, footer, state table, index), then every
//! record of every block over all key groups (list values of list ops through the list
//! decoder, as the replay does), a scan of the first block's key groups only, and
//! `verify_all`. Checksum comparisons are switched off so the fuzzer reaches the block and
//! record parsers behind them.
//!
//! Beyond "never panics", it checks what the reader promises: every error names the file
//! (and is never an encoder error), every record it hands out is one its state table
//! allows (known state, an op of that state's kind, user key and value exactly when the op
//! carries them) in the key-group range of its block (version 1: blocks by key group), and
//! a full scan succeeds exactly when `verify_all` does, with as many records as the footer
//! says; a scan of the first block's range yields only records of that range.
#![no_main]

use bytes::Bytes;
use cairn_core::{KeyGroupRange, MAX_MAX_PARALLELISM};
use cairn_format::{ChangelogOp, ChangelogSegmentReader, FormatError};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "fuzz.cls";

/// Every decode error must say which file it is about.
fn check_error(e: &FormatError) {
    assert!(
        !matches!(e, FormatError::Invalid { .. }),
        "a decode error is an encoder error: {e}"
    );
    let text = e.to_string();
    assert!(
        text.contains(&format!("path={PATH}")),
        "error names no file: {text}"
    );
}

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(true);
    let r = match ChangelogSegmentReader::open(Bytes::copy_from_slice(data), PATH) {
        Ok(r) => r,
        Err(e) => return check_error(&e),
    };
    let states = r.states();
    let blocks = r.blocks();
    assert_eq!(
        blocks.iter().map(|b| u64::from(b.records)).sum::<u64>(),
        r.record_count(),
        "the footer's record count is the index's"
    );
    assert!(
        r.version() == 1 || r.version() == 2,
        "version {}",
        r.version()
    );
    for b in blocks {
        assert!(
            !b.key_groups.is_empty() && b.key_groups.end <= MAX_MAX_PARALLELISM,
            "index range {}",
            b.key_groups
        );
        if r.version() == 1 {
            assert_eq!(
                b.key_groups.len(),
                1,
                "a version 1 block holds one key group"
            );
        }
    }
    // The block of each record of a full scan: blocks in file order, `records` each.
    let mut block_of = blocks
        .iter()
        .flat_map(|b| std::iter::repeat_n(b.key_groups, b.records as usize));
    let mut records = 0u64;
    let mut last_key_group = 0u32;
    let all = r.scan(
        KeyGroupRange::new(0, MAX_MAX_PARALLELISM),
        |rec| -> Result<(), FormatError> {
            let state = states
                .get(rec.state as usize)
                .expect("a record names a state of the table");
            assert!(
                rec.op.applies_to(state.kind),
                "{:?} on {:?}",
                rec.op,
                state.kind
            );
            assert_eq!(rec.user_key.is_some(), rec.op.has_user_key());
            assert_eq!(rec.value.is_some(), rec.op.has_value());
            let block = block_of
                .next()
                .expect("no more records than the index says");
            assert!(
                block.contains(rec.key_group),
                "key group {} outside its block {block}",
                rec.key_group
            );
            if r.version() == 1 {
                assert!(
                    rec.key_group >= last_key_group,
                    "version 1: records by key group"
                );
            }
            last_key_group = rec.key_group;
            if let (ChangelogOp::ListAppend | ChangelogOp::ListSet, Some(v)) = (rec.op, rec.value) {
                if let Err(e) = cairn_format::decode_list(v) {
                    assert!(e.is_corrupt(), "list value error: {e}");
                }
            }
            records += 1;
            Ok(())
        },
    );
    match &all {
        Ok(()) => assert_eq!(records, r.record_count(), "a full scan reads every record"),
        Err(e) => check_error(e),
    }
    let verified = r.verify_all();
    if let Err(e) = &verified {
        check_error(e);
    }
    assert_eq!(all.is_ok(), verified.is_ok(), "scan and verify_all agree");
    // A partial scan reads only its key groups.
    if let Some(first) = blocks.first() {
        let range = first.key_groups;
        let partial = r.scan(range, |rec| -> Result<(), FormatError> {
            assert!(range.contains(rec.key_group), "a record outside the range");
            Ok(())
        });
        if let Err(e) = &partial {
            check_error(e);
        }
        if all.is_ok() {
            assert!(partial.is_ok(), "a subset of a good segment reads");
        }
    }
});
