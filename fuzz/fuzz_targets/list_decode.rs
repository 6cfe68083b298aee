//! Arbitrary bytes into the list value decoder; whatever decodes re-encodes identically.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(elements) = cairn_format::decode_list(data) {
        let mut again = Vec::new();
        cairn_format::encode_list(elements.iter().copied(), &mut again);
        assert_eq!(again, data);
    }
});
