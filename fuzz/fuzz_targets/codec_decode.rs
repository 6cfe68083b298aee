//! Arbitrary bytes into the default value codec (`BINCODE_V1`) for the shapes state values
//! take: strings, byte vectors, nested vectors, pairs, options, tuples, structs; and the
//! TTL codec (`TtlCodec`: an 8-byte stamp, then the value) around two of them. Must never
//! panic or allocate beyond `MAX_DECODED_VALUE_LEN`; whatever decodes re-encodes to the
//! same bytes (the encoding is canonical).
#![no_main]

use std::sync::{Arc, OnceLock};

use cairn_core::{BincodeCodec, Codec, TtlCodec};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Window {
    start: i64,
    end: i64,
    tag: Option<String>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Event {
    Click { x: u32, y: u32 },
    Text(String),
    Batch(Vec<Window>),
}

fn check<T, C: Codec<T>>(codec: &C, bytes: &[u8]) {
    if let Ok(v) = codec.decode(bytes) {
        let again = codec.encode_to_vec(&v).expect("a decoded value encodes");
        assert_eq!(again, bytes, "non-canonical encoding decoded");
    }
}

/// Codecs are built once: building one traces the type's schema.
struct Codecs {
    string: BincodeCodec<String>,
    bytes: BincodeCodec<Vec<u8>>,
    strings: BincodeCodec<Vec<String>>,
    pairs: BincodeCodec<Vec<(u32, String)>>,
    option: BincodeCodec<Option<(u64, i64, bool)>>,
    nested: BincodeCodec<Vec<Vec<u64>>>,
    window: BincodeCodec<Window>,
    event: BincodeCodec<Event>,
    ttl_string: TtlCodec<String>,
    ttl_event: TtlCodec<Event>,
}

fn ttl<T: Serialize + DeserializeOwned + Send + Sync + 'static>() -> TtlCodec<T> {
    TtlCodec::new(Arc::new(BincodeCodec::<T>::new()))
}

static CODECS: OnceLock<Codecs> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let c = CODECS.get_or_init(|| Codecs {
        string: BincodeCodec::new(),
        bytes: BincodeCodec::new(),
        strings: BincodeCodec::new(),
        pairs: BincodeCodec::new(),
        option: BincodeCodec::new(),
        nested: BincodeCodec::new(),
        window: BincodeCodec::new(),
        event: BincodeCodec::new(),
        ttl_string: ttl(),
        ttl_event: ttl(),
    });
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => check(&c.string, bytes),
        1 => check(&c.bytes, bytes),
        2 => check(&c.strings, bytes),
        3 => check(&c.pairs, bytes),
        4 => check(&c.option, bytes),
        5 => check(&c.nested, bytes),
        6 => check(&c.window, bytes),
        7 => check(&c.event, bytes),
        8 => check(&c.ttl_string, bytes),
        _ => check(&c.ttl_event, bytes),
    }
});
