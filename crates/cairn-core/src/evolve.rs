//! State schema evolution: a codec that also reads what older programs stored.
//!
//! A snapshot stores each state's codec identity (type name, schema version, encoding). A
//! newer program whose state type changed registers an [`EvolvingCodec`]: its current codec,
//! which writes, plus the older identities it reads, either unchanged (a renamed type,
//! [`EvolvingCodec::reads_as_is`]) or through the old codec and a conversion
//! ([`EvolvingCodec::migrates_from`]). When a restored state is registered, the backend asks
//! the codec how it reads the stored identity ([`Codec::compatibility`]) and, for a
//! migration, rewrites every value of the state in the new schema, so later snapshots hold
//! only the new encoding (as Flink migrates state whose serializer reports
//! `compatibleAfterMigration`).
//!
//! Migrations chain: the old codec given to `migrates_from` may itself be an
//! `EvolvingCodec` that reads a still older schema.
//!
//! ```
//! use cairn_core::{BincodeCodec, Codec, Compatibility, EvolvingCodec};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct CountV1 { n: u64 }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct CountV2 { n: u64, last_seen_ms: u64 }
//!
//! let v1 = BincodeCodec::<CountV1>::named("Count", 1);
//! let stored = v1.identity().clone();
//! let old_bytes = v1.encode_to_vec(&CountV1 { n: 7 }).unwrap();
//!
//! let v2 = EvolvingCodec::new(BincodeCodec::<CountV2>::named("Count", 2))
//!     .migrates_from(v1, |old: CountV1| CountV2 { n: old.n, last_seen_ms: 0 });
//! assert_eq!(v2.compatibility(&stored), Compatibility::AfterMigration);
//! assert_eq!(
//!     v2.decode_from(&stored, &old_bytes).unwrap(),
//!     CountV2 { n: 7, last_seen_ms: 0 }
//! );
//! ```

use std::fmt;
use std::sync::Arc;

use crate::codec::{Codec, CodecError, CodecIdentity, Compatibility};

/// A codec that writes with its current codec and reads older schemas as well: renamed
/// identities as is, older schemas through their codec and a conversion. See the module
/// documentation.
pub struct EvolvingCodec<T> {
    current: Arc<dyn Codec<T>>,
    as_is: Vec<CodecIdentity>,
    migrations: Vec<Box<dyn Migration<T>>>,
}

/// One older schema: which stored identities it reads and how it turns their bytes into `T`.
trait Migration<T>: Send + Sync {
    fn reads(&self, stored: &CodecIdentity) -> bool;
    fn decode(&self, stored: &CodecIdentity, bytes: &[u8]) -> Result<T, String>;
    fn old(&self) -> &CodecIdentity;
}

type Convert<O, T> = Box<dyn Fn(O) -> Result<T, String> + Send + Sync>;

struct MigrateFrom<O, T> {
    old: Arc<dyn Codec<O>>,
    convert: Convert<O, T>,
}

impl<O: 'static, T: 'static> Migration<T> for MigrateFrom<O, T> {
    fn reads(&self, stored: &CodecIdentity) -> bool {
        self.old.compatibility(stored) != Compatibility::Incompatible
    }
    fn decode(&self, stored: &CodecIdentity, bytes: &[u8]) -> Result<T, String> {
        let old = self
            .old
            .decode_from(stored, bytes)
            .map_err(|e| e.to_string())?;
        (self.convert)(old)
    }
    fn old(&self) -> &CodecIdentity {
        self.old.identity()
    }
}

impl<T: 'static> EvolvingCodec<T> {
    /// Writes and reads with `current`; no older schema yet.
    pub fn new(current: impl Codec<T>) -> Self {
        Self {
            current: Arc::new(current),
            as_is: Vec::new(),
            migrations: Vec::new(),
        }
    }

    /// Also reads state stored under `identity` unchanged: the same bytes under another
    /// name, e.g. a type that moved to another module (whose default name,
    /// `std::any::type_name`, changed with it) or a version bumped without a change of
    /// encoding. The encoding must be the current one's.
    pub fn reads_as_is(mut self, identity: CodecIdentity) -> Self {
        self.as_is.push(identity);
        self
    }

    /// Also reads state stored by `old` (any identity `old` reads, so migrations chain),
    /// converting each value with `convert`.
    pub fn migrates_from<O: 'static>(
        self,
        old: impl Codec<O>,
        convert: impl Fn(O) -> T + Send + Sync + 'static,
    ) -> Self {
        self.try_migrates_from(old, move |o| Ok(convert(o)))
    }

    /// [`EvolvingCodec::migrates_from`] with a conversion that may refuse a value; the
    /// restore then fails with its message, naming the operator, state and key group.
    pub fn try_migrates_from<O: 'static>(
        mut self,
        old: impl Codec<O>,
        convert: impl Fn(O) -> Result<T, String> + Send + Sync + 'static,
    ) -> Self {
        self.migrations.push(Box::new(MigrateFrom {
            old: Arc::new(old),
            convert: Box::new(convert),
        }));
        self
    }

    /// Whether `stored` is one of the identities read as is (in the current encoding).
    fn renamed(&self, stored: &CodecIdentity) -> bool {
        stored.encoding == self.current.identity().encoding
            && self.as_is.iter().any(|a| stored.is_compatible_with(a))
    }

    fn error(&self, op: &'static str, detail: String) -> CodecError {
        CodecError {
            codec: self.current.identity().to_string(),
            op,
            detail,
        }
    }
}

impl<T: 'static> fmt::Debug for EvolvingCodec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvolvingCodec")
            .field("current", self.current.identity())
            .field("as_is", &self.as_is)
            .field(
                "migrates_from",
                &self.migrations.iter().map(|m| m.old()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<T: 'static> Codec<T> for EvolvingCodec<T> {
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.current.encode(value, out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.current.decode(bytes)
    }

    fn identity(&self) -> &CodecIdentity {
        self.current.identity()
    }

    fn compatibility(&self, stored: &CodecIdentity) -> Compatibility {
        match self.current.compatibility(stored) {
            Compatibility::Incompatible => {}
            c => return c,
        }
        if self.renamed(stored) {
            Compatibility::AsIs
        } else if self.migrations.iter().any(|m| m.reads(stored)) {
            Compatibility::AfterMigration
        } else {
            Compatibility::Incompatible
        }
    }

    fn decode_from(&self, stored: &CodecIdentity, bytes: &[u8]) -> Result<T, CodecError> {
        if self.current.compatibility(stored) != Compatibility::Incompatible {
            return self.current.decode_from(stored, bytes);
        }
        if self.renamed(stored) {
            return self.current.decode(bytes);
        }
        match self.migrations.iter().find(|m| m.reads(stored)) {
            Some(m) => m
                .decode(stored, bytes)
                .map_err(|e| self.error("migrate", format!("from {stored}: {e}"))),
            None => Err(self.error(
                "decode",
                format!("no schema of this codec reads what {stored} stored"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::BincodeCodec;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V1 {
        n: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V2 {
        n: u64,
        label: String,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct V3 {
        n: u64,
        label: String,
        tags: Vec<String>,
    }

    fn v1() -> BincodeCodec<V1> {
        BincodeCodec::named("Thing", 1)
    }
    fn v2() -> EvolvingCodec<V2> {
        EvolvingCodec::new(BincodeCodec::<V2>::named("Thing", 2)).migrates_from(v1(), |o: V1| V2 {
            n: o.n.into(),
            label: format!("#{}", o.n),
        })
    }
    fn v3() -> EvolvingCodec<V3> {
        EvolvingCodec::new(BincodeCodec::<V3>::named("Thing", 3)).migrates_from(v2(), |o: V2| V3 {
            n: o.n,
            label: o.label,
            tags: vec!["migrated".into()],
        })
    }

    #[test]
    fn current_identity_reads_as_is_and_writes_the_current_schema() {
        let c = v2();
        let id = BincodeCodec::<V2>::named("Thing", 2).identity().clone();
        assert_eq!(c.identity(), &id);
        assert_eq!(c.compatibility(&id), Compatibility::AsIs);
        let v = V2 {
            n: 3,
            label: "x".into(),
        };
        let bytes = c.encode_to_vec(&v).unwrap();
        assert_eq!(c.decode_from(&id, &bytes).unwrap(), v);
        assert_eq!(c.decode(&bytes).unwrap(), v);
    }

    #[test]
    fn migrations_chain_through_older_evolving_codecs() {
        let old = v1().encode_to_vec(&V1 { n: 5 }).unwrap();
        let c = v3();
        let stored = v1().identity().clone();
        assert_eq!(c.compatibility(&stored), Compatibility::AfterMigration);
        assert_eq!(
            c.decode_from(&stored, &old).unwrap(),
            V3 {
                n: 5,
                label: "#5".into(),
                tags: vec!["migrated".into()]
            }
        );
        let mid = BincodeCodec::<V2>::named("Thing", 2);
        let bytes = mid
            .encode_to_vec(&V2 {
                n: 9,
                label: "nine".into(),
            })
            .unwrap();
        assert_eq!(
            c.compatibility(mid.identity()),
            Compatibility::AfterMigration
        );
        assert_eq!(c.decode_from(mid.identity(), &bytes).unwrap().label, "nine");
    }

    #[test]
    fn unknown_identities_are_incompatible_and_decoding_them_fails() {
        let c = v3();
        let other = BincodeCodec::<V1>::named("Other", 1);
        assert_eq!(
            c.compatibility(other.identity()),
            Compatibility::Incompatible
        );
        let e = c.decode_from(other.identity(), &[0; 4]).unwrap_err();
        assert!(e.to_string().contains("Other@v1"), "{e}");
    }

    #[test]
    fn renamed_types_read_as_is_only_in_the_same_encoding() {
        let old = BincodeCodec::<V1>::named("my_job::model::V1", 1);
        let c = EvolvingCodec::new(BincodeCodec::<V1>::named("V1", 1))
            .reads_as_is(old.identity().clone());
        assert_eq!(c.compatibility(old.identity()), Compatibility::AsIs);
        let bytes = old.encode_to_vec(&V1 { n: 4 }).unwrap();
        assert_eq!(c.decode_from(old.identity(), &bytes).unwrap(), V1 { n: 4 });
        let mut other_encoding = old.identity().clone();
        other_encoding.encoding = "json".into();
        assert_eq!(
            c.compatibility(&other_encoding),
            Compatibility::Incompatible
        );
    }

    #[test]
    fn a_refused_conversion_and_bad_old_bytes_are_errors_naming_the_stored_schema() {
        let c = EvolvingCodec::new(BincodeCodec::<V2>::named("Thing", 2)).try_migrates_from(
            v1(),
            |o: V1| {
                if o.n == 0 {
                    Err("zero is not a count".to_string())
                } else {
                    Ok(V2 {
                        n: o.n.into(),
                        label: String::new(),
                    })
                }
            },
        );
        let stored = v1().identity().clone();
        let zero = v1().encode_to_vec(&V1 { n: 0 }).unwrap();
        let e = c.decode_from(&stored, &zero).unwrap_err();
        assert_eq!(e.op, "migrate");
        assert!(e.to_string().contains("zero is not a count"), "{e}");
        assert!(e.to_string().contains("Thing@v1"), "{e}");
        let e = c.decode_from(&stored, &[1, 2]).unwrap_err();
        assert_eq!(e.op, "migrate");
    }
}
