//! How an unaligned checkpoint stores an in-flight record: the record's timestamp, then the
//! record in its codec.
//!
//! Each element of a task's [`INFLIGHT_STATE`](crate::INFLIGHT_STATE) is one record:
//!
//! | offset | length | field     | value                                              |
//! |-------:|-------:|-----------|----------------------------------------------------|
//! | 0      | 1      | has_ts    | 0: the record has no timestamp; 1: it has one      |
//! | 1      | 8      | timestamp | only when `has_ts` is 1: `u64` little-endian, ms   |
//! | 1 or 9 | rest   | record    | the record in the record codec, to the end         |
//!
//! The state's codec identity is the record codec's with [`TIMESTAMPED_ENCODING_PREFIX`]
//! in front of its encoding (type name and version unchanged), as a TTL value's is: a
//! reader that does not know the prefix refuses the state as an unknown encoding rather
//! than read the flag as the record's first byte. Checkpoints written before records had
//! timestamps store the bare record in the record codec's own identity; they restore, and
//! their records have no timestamp.

use cairn_core::{BincodeCodec, Codec, CodecIdentity};

use crate::function::Data;

/// The encoding-name prefix of in-flight records stored with their timestamps.
pub const TIMESTAMPED_ENCODING_PREFIX: &str = "cairn-ts1+";

/// Encodes and decodes in-flight records of type `X` with their timestamps.
pub(crate) struct InflightCodec<X> {
    record: BincodeCodec<X>,
    identity: CodecIdentity,
}

impl<X: Data> InflightCodec<X> {
    pub(crate) fn new() -> Self {
        let record = BincodeCodec::<X>::new();
        let mut identity = record.identity().clone();
        identity.encoding = format!("{TIMESTAMPED_ENCODING_PREFIX}{}", identity.encoding);
        Self { record, identity }
    }

    /// The identity stored with the state.
    pub(crate) fn identity(&self) -> &CodecIdentity {
        &self.identity
    }

    /// The record codec's identity (what the job's input type is).
    pub(crate) fn record_identity(&self) -> &CodecIdentity {
        self.record.identity()
    }

    /// One element: `record` with `timestamp`.
    pub(crate) fn encode(&self, record: &X, timestamp: Option<u64>) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(64);
        match timestamp {
            None => out.push(0),
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        self.record
            .encode(record, &mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Decodes one element stored under `stored` (this codec's identity, or the bare
    /// record codec's of older checkpoints); `None` when `stored` is neither.
    pub(crate) fn decoder(&self, stored: &CodecIdentity) -> Option<Layout> {
        if stored.is_compatible_with(&self.identity) {
            Some(Layout::Timestamped)
        } else if stored.is_compatible_with(self.record.identity()) {
            Some(Layout::Bare)
        } else {
            None
        }
    }

    /// Decodes one element in `layout`.
    pub(crate) fn decode(&self, layout: Layout, bytes: &[u8]) -> Result<(X, Option<u64>), String> {
        let (timestamp, rest) = match layout {
            Layout::Bare => (None, bytes),
            Layout::Timestamped => match bytes.split_first() {
                Some((0, rest)) => (None, rest),
                Some((1, rest)) => {
                    let (t, rest) = rest
                        .split_first_chunk::<8>()
                        .ok_or("the record's timestamp is cut short")?;
                    (Some(u64::from_le_bytes(*t)), rest)
                }
                Some((flag, _)) => return Err(format!("timestamp flag {flag} (0 or 1)")),
                None => return Err("an empty in-flight record".to_string()),
            },
        };
        let record = self.record.decode(rest).map_err(|e| e.to_string())?;
        Ok((record, timestamp))
    }
}

/// How a stored in-flight record is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Flag, timestamp, record.
    Timestamped,
    /// The record alone (checkpoints from before timestamps).
    Bare,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_and_without_timestamps() {
        let codec = InflightCodec::<(u64, String)>::new();
        let layout = codec.decoder(codec.identity()).expect("own identity");
        for ts in [None, Some(0), Some(1_700_000_000_123), Some(u64::MAX)] {
            let r = (7, "seven".to_string());
            let bytes = codec.encode(&r, ts).expect("encode");
            assert_eq!(codec.decode(layout, &bytes).expect("decode"), (r, ts));
        }
        assert_eq!(
            codec.encode(&(1, String::new()), Some(2)).expect("encode")[..9],
            [1, 2, 0, 0, 0, 0, 0, 0, 0],
            "flag, then the timestamp little-endian"
        );
    }

    #[test]
    fn bare_records_of_older_checkpoints_decode_without_timestamps() {
        let codec = InflightCodec::<u64>::new();
        let bare = BincodeCodec::<u64>::new();
        let layout = codec.decoder(bare.identity()).expect("bare identity");
        assert_eq!(layout, Layout::Bare);
        let bytes = bare.encode_to_vec(&42).expect("encode");
        assert_eq!(codec.decode(layout, &bytes).expect("decode"), (42, None));
        assert_eq!(
            codec.decoder(BincodeCodec::<u32>::new().identity()),
            None,
            "another record type"
        );
    }

    #[test]
    fn damaged_elements_are_errors() {
        let codec = InflightCodec::<u64>::new();
        let t = Layout::Timestamped;
        assert!(codec.decode(t, &[]).unwrap_err().contains("empty"));
        assert!(codec.decode(t, &[2, 0]).unwrap_err().contains("flag 2"));
        assert!(codec
            .decode(t, &[1, 0, 0])
            .unwrap_err()
            .contains("cut short"));
        let mut bytes = codec.encode(&5, Some(9)).expect("encode");
        bytes.push(0);
        assert!(codec.decode(t, &bytes).is_err(), "a trailing byte");
        bytes.truncate(12);
        assert!(codec.decode(t, &bytes).is_err(), "a record cut short");
    }
}
