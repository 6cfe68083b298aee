//! Arbitrary bytes into the manifest decoder, with checksum comparisons switched off so the
//! fuzzer reaches the body parser. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(true);
    let _ = cairn_format::decode_manifest(data, "fuzz");
});
