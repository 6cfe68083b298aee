//! Arbitrary bytes into the manifest decoder with every check on: nothing but a valid,
//! checksummed manifest may decode, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(false);
    if let Ok(m) = cairn_format::decode_manifest(data, "fuzz") {
        // Whatever decodes is canonical: it re-encodes to the same bytes.
        let again = cairn_format::encode_manifest(&m).expect("a decoded manifest encodes");
        assert_eq!(again, data);
    }
});
