//! Arbitrary bytes into the state file reader (open, a partial scan, verify_all), with
//! checksum comparisons switched off so the fuzzer reaches the block and entry parsers.
#![no_main]

use bytes::Bytes;
use cairn_core::KeyGroupRange;
use cairn_format::{FormatError, StateFileReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(true);
    let Ok(r) = StateFileReader::open(Bytes::copy_from_slice(data), "fuzz") else {
        return;
    };
    let _ = r.states();
    let _ = r.key_groups();
    let mut n = 0u64;
    let _ = r.scan(KeyGroupRange::new(0, 4), |e| -> Result<(), FormatError> {
        n += e.key.len() as u64 + e.value.len() as u64;
        Ok(())
    });
    let _ = r.verify_all();
});
