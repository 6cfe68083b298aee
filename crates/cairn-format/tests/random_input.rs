//! Arbitrary bytes never make a decoder panic (and, for files, never decode: they would
//! need valid magics and checksums).

use bytes::Bytes;
use cairn_core::KeyGroupRange;
use cairn_format::{decode_list, decode_manifest, FormatError, StateFileReader};
use proptest::prelude::*;

fn state_file(bytes: &[u8]) -> Result<(), FormatError> {
    let r = StateFileReader::open(Bytes::copy_from_slice(bytes), "random")?;
    r.scan(KeyGroupRange::new(0, 3), |_| Ok::<(), FormatError>(()))?;
    r.verify_all()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(decode_manifest(&bytes, "random").is_err());
        prop_assert!(state_file(&bytes).is_err());
        let _ = decode_list(&bytes);
    }

    #[test]
    fn random_bytes_behind_valid_magics_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        footer_version in 0u16..3,
    ) {
        for magic in [b"CAIRNMF\0", b"CAIRNSF\0"] {
            let mut b = magic.to_vec();
            b.extend_from_slice(&body);
            b.extend_from_slice(&footer_version.to_le_bytes());
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(magic);
            prop_assert!(decode_manifest(&b, "random").is_err());
            prop_assert!(state_file(&b).is_err());
        }
    }
}
