//! Codecs turn typed keys, namespaces and values into bytes and back.
//!
//! Every codec has a [`CodecIdentity`] (a type name, a schema version and the name of the
//! encoding) that is stored with the state in every snapshot; on restore the identity the
//! program registers must match the stored one. Where the type can be traced, the identity
//! also carries a machine-readable schema (a `serde-reflection` format as JSON) so tools can
//! decode values without the program.

use std::fmt;
use std::marker::PhantomData;

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Name of the default encoding: bincode 1.x with fixed-width little-endian integers,
/// `u64` length prefixes and no trailing bytes (the format spec describes it).
pub const BINCODE_V1: &str = "bincode1-fixint-le";

/// The largest value a codec decodes (64 MiB): a bound on what a corrupt length can allocate.
pub const MAX_DECODED_VALUE_LEN: u64 = 64 << 20;

/// What a codec is: stored with every state, compared on restore.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodecIdentity {
    /// The encoding's name, e.g. [`BINCODE_V1`].
    pub encoding: String,
    /// The type's name, by default `std::any::type_name` of the Rust type.
    pub type_name: String,
    /// The schema version the program declares for the type; bumped on incompatible change.
    pub version: u32,
    /// A machine-readable schema of the encoded bytes (JSON), when the type could be traced.
    pub schema: Option<String>,
}

impl CodecIdentity {
    /// Whether data written with `self` can be read by a program that registers `other`:
    /// same encoding, type name and version (the schema text is informative only).
    pub fn is_compatible_with(&self, other: &CodecIdentity) -> bool {
        self.encoding == other.encoding
            && self.type_name == other.type_name
            && self.version == other.version
    }
}

impl fmt::Debug for CodecIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for CodecIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@v{} ({})",
            self.type_name, self.version, self.encoding
        )
    }
}

/// A failed encode or decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("codec {codec} failed to {op}: {detail}")]
pub struct CodecError {
    /// The identity of the codec (type name and version).
    pub codec: String,
    /// `"encode"` or `"decode"`.
    pub op: &'static str,
    /// What the underlying encoding said.
    pub detail: String,
}

/// How a program's codec reads what a snapshot stored under some identity (Flink's
/// `TypeSerializerSchemaCompatibility`), decided when a restored state is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compatibility {
    /// The stored bytes are read as they are: the same identity, or one the codec declares
    /// it reads unchanged (a type renamed, see [`EvolvingCodec::reads_as_is`](crate::EvolvingCodec::reads_as_is)).
    AsIs,
    /// The stored bytes are decoded by an older schema and converted
    /// ([`EvolvingCodec::migrates_from`](crate::EvolvingCodec::migrates_from)); the backend rewrites every value of the state
    /// when it is registered, so snapshots after it hold the new encoding only.
    AfterMigration,
    /// The codec cannot read the stored bytes: the restore fails, naming both identities.
    Incompatible,
}

/// Encodes and decodes values of type `T`; shared between threads (snapshots encode off the
/// task thread).
pub trait Codec<T>: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes exactly `bytes` (trailing bytes are an error).
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
    /// The identity stored with the state.
    fn identity(&self) -> &CodecIdentity;

    /// How this codec reads bytes a snapshot stored under `stored`. By default only a
    /// compatible identity ([`CodecIdentity::is_compatible_with`]) is read, as is;
    /// [`EvolvingCodec`](crate::EvolvingCodec) declares renamed and older schemas.
    fn compatibility(&self, stored: &CodecIdentity) -> Compatibility {
        if stored.is_compatible_with(self.identity()) {
            Compatibility::AsIs
        } else {
            Compatibility::Incompatible
        }
    }

    /// Decodes `bytes` stored under `stored`, converting from an older schema when
    /// [`Codec::compatibility`] says [`Compatibility::AfterMigration`]. Backends call it
    /// only for identities the codec said it reads; the default decodes as is.
    fn decode_from(&self, stored: &CodecIdentity, bytes: &[u8]) -> Result<T, CodecError> {
        let _ = stored;
        self.decode(bytes)
    }

    /// Encodes into a fresh vector.
    fn encode_to_vec(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.encode(value, &mut out)?;
        Ok(out)
    }
}

/// The default codec: serde + bincode 1.x (fixint, little endian), see [`BINCODE_V1`].
pub struct BincodeCodec<T> {
    identity: CodecIdentity,
    _type: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for BincodeCodec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BincodeCodec")
            .field("identity", &self.identity)
            .finish()
    }
}

impl<T> Clone for BincodeCodec<T> {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            _type: PhantomData,
        }
    }
}

fn bincode_options() -> impl bincode::Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
        .with_limit(MAX_DECODED_VALUE_LEN)
}

impl<T: Serialize + DeserializeOwned + 'static> BincodeCodec<T> {
    /// A codec named after the Rust type (`std::any::type_name`), schema version 1, with a
    /// traced schema where `serde-reflection` can trace the type.
    pub fn new() -> Self {
        Self::named(std::any::type_name::<T>(), 1)
    }

    /// A codec with an explicit, stable type name and schema version. Prefer this for types
    /// whose Rust path may change between program versions.
    pub fn named(type_name: impl Into<String>, version: u32) -> Self {
        Self {
            identity: CodecIdentity {
                encoding: BINCODE_V1.to_string(),
                type_name: type_name.into(),
                version,
                schema: trace_schema::<T>(),
            },
            _type: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned + 'static> Default for BincodeCodec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Codec<T> for BincodeCodec<T> {
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode_options()
            .serialize_into(out, value)
            .map_err(|e| CodecError {
                codec: self.identity.to_string(),
                op: "encode",
                detail: e.to_string(),
            })
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        bincode_options()
            .deserialize(bytes)
            .map_err(|e| CodecError {
                codec: self.identity.to_string(),
                op: "decode",
                detail: e.to_string(),
            })
    }

    fn identity(&self) -> &CodecIdentity {
        &self.identity
    }
}

/// The schema document stored in [`CodecIdentity::schema`]: the root format of the type and
/// the registry of named containers it refers to, both as `serde-reflection` formats.
#[derive(Serialize, Deserialize)]
struct SchemaDoc {
    root: serde_reflection::Format,
    registry: serde_reflection::Registry,
}

/// Traces `T` with `serde-reflection`; `None` when the type cannot be traced (e.g. a custom
/// `Deserialize` that rejects the tracer's samples).
pub fn trace_schema<T: DeserializeOwned>() -> Option<String> {
    let mut tracer = serde_reflection::Tracer::new(serde_reflection::TracerConfig::default());
    let (root, _) = tracer.trace_simple_type::<T>().ok()?;
    let registry = tracer.registry().ok()?;
    serde_json::to_string(&SchemaDoc { root, registry }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        label: String,
    }

    #[test]
    fn bincode_round_trip_and_fixed_bytes() {
        let c = BincodeCodec::<Point>::new();
        let p = Point {
            x: -2,
            label: "ab".into(),
        };
        let bytes = c.encode_to_vec(&p).unwrap();
        assert_eq!(
            bytes,
            [0xfe, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, b'a', b'b']
        );
        assert_eq!(c.decode(&bytes).unwrap(), p);
    }

    #[test]
    fn decode_rejects_trailing_and_truncated_bytes() {
        let c = BincodeCodec::<u32>::new();
        assert!(c.decode(&[1, 0, 0, 0, 9]).is_err());
        let e = c.decode(&[1, 0]).unwrap_err();
        assert_eq!(e.op, "decode");
        assert!(e.to_string().starts_with("codec u32@v1"), "{e}");
    }

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        let c = BincodeCodec::<Vec<u8>>::new();
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert!(c.decode(&bytes).is_err());
    }

    #[test]
    fn identity_carries_traced_schema() {
        let c = BincodeCodec::<Point>::named("demo.Point", 3);
        let id = c.identity();
        assert_eq!(id.type_name, "demo.Point");
        assert_eq!(id.version, 3);
        let schema = id.schema.as_deref().unwrap();
        assert!(schema.contains("\"Point\""), "{schema}");
        assert!(schema.contains("\"label\""), "{schema}");
        let other = BincodeCodec::<Point>::named("demo.Point", 4);
        assert!(!id.is_compatible_with(other.identity()));
    }
}
