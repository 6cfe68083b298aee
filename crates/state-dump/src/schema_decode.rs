//! Decoding stored bytes to JSON without the program's types: a small interpreter of a
//! `serde-reflection` schema (the `{"root": Format, "registry": Registry}` document that
//! `cairn_core::trace_schema` stores in a codec identity) over the default codec's bytes,
//! bincode 1.x with fixed-width little-endian integers (`format-spec/README.md`, "Default
//! codec").
//!
//! | schema | bytes | JSON |
//! |---|---|---|
//! | `UNIT`, unit struct | none | `null` |
//! | `BOOL` | 1 byte, 0 or 1 | `true` / `false` |
//! | integers, floats | their width, LE | number (128-bit ones beyond 64 bits, and non-finite floats, as strings) |
//! | `CHAR` | its UTF-8 bytes | one-character string |
//! | `STR` | `u64` length + UTF-8 | string |
//! | `BYTES` | `u64` length + bytes | array of numbers |
//! | `OPTION` | `u8` tag 0/1 + value | `null` or the value |
//! | `SEQ`, `TUPLEARRAY`, `TUPLE`, tuple struct | (`u64` count +) elements | array |
//! | `MAP` | `u64` count + pairs | object when every key is a string or number, else array of `[key, value]` |
//! | struct | fields in order | object |
//! | newtype struct | the inner value | the inner value |
//! | enum | `u32` variant index + fields | `"Variant"` for a unit variant, else `{"Variant": …}` |
//!
//! A codec without a stored schema but with the default encoding and the type name of a
//! primitive (`u64`, `i32`, `bool`, `()`, `alloc::string::String`, …) decodes as that
//! primitive. Anything else, and any bytes the schema does not fit exactly, are shown raw
//! as `{"hex": "…"}`.
//!
//! A value of a state with a TTL (encoding `cairn-ttl1+<inner>`, `format-spec/README.md`,
//! "Values of states with a TTL") is its 8-byte little-endian stamp, then the value in the
//! inner encoding; it decodes to `{"ttl_stamped_ms": N, "value": …}`, the value by the rules
//! above for the inner encoding (raw hex when it is not the default one, or the schema does
//! not fit). The stamp is read whatever the inner encoding, since the prefix alone fixes
//! it; bytes too short to hold it are the one error of [`Decoder::decode`]: they cannot be
//! a value of that encoding at all.

use std::collections::BTreeMap;

use cairn_core::{CodecIdentity, BINCODE_V1, MAX_DECODED_VALUE_LEN, TTL_ENCODING_PREFIX};
use serde::Deserialize;
use serde_json::{Map, Number, Value};
use serde_reflection::{ContainerFormat, Format, Named, Registry, VariantFormat};

/// Deepest nesting decoded (a bound for recursive types fed hostile bytes).
const MAX_DEPTH: usize = 128;
/// Most elements a sequence may have beyond the bytes left (zero-sized elements).
const MAX_ZERO_SIZED: usize = 1 << 16;
/// The stamp in front of a value of a state with a TTL: `stamped_ms u64`.
pub(crate) const TTL_STAMP_LEN: usize = size_of::<u64>();

/// The schema document stored in `CodecIdentity::schema`.
#[derive(Deserialize)]
struct SchemaDoc {
    root: Format,
    registry: Registry,
}

/// Decodes the bytes of one codec to JSON.
#[derive(Debug)]
pub struct Decoder {
    /// Whether each value starts with a TTL stamp (encoding `cairn-ttl1+<inner>`).
    ttl: bool,
    /// The schema of the value (after the stamp, with a TTL).
    schema: Option<(Format, Registry)>,
}

impl Decoder {
    /// The decoder for bytes written by a codec with this identity: its stored schema, a
    /// primitive named by its type name, or raw hex; with the TTL prefix, the stamp and
    /// then the value in the inner encoding.
    pub fn for_codec(id: &CodecIdentity) -> Self {
        let (ttl, encoding) = match id.encoding.strip_prefix(TTL_ENCODING_PREFIX) {
            Some(inner) => (true, inner),
            None => (false, id.encoding.as_str()),
        };
        if encoding != BINCODE_V1 {
            return Self { ttl, schema: None };
        }
        let from_doc = id
            .schema
            .as_deref()
            .and_then(|s| serde_json::from_str::<SchemaDoc>(s).ok())
            .map(|d| (d.root, d.registry));
        let schema = from_doc.or_else(|| primitive(&id.type_name).map(|f| (f, Registry::new())));
        Self { ttl, schema }
    }

    /// A decoder for a schema given as a document (`{"root": …, "registry": …}`).
    pub fn from_schema_json(doc: &str) -> Result<Self, String> {
        let d: SchemaDoc = serde_json::from_str(doc).map_err(|e| e.to_string())?;
        Ok(Self {
            ttl: false,
            schema: Some((d.root, d.registry)),
        })
    }

    /// Whether a schema is known (otherwise every value is raw hex).
    pub fn has_schema(&self) -> bool {
        self.schema.is_some()
    }

    /// Whether the values are those of a state with a TTL (each starts with its stamp).
    pub fn has_ttl(&self) -> bool {
        self.ttl
    }

    /// Decodes `bytes` exactly; an error says why the schema does not fit.
    pub fn try_decode(&self, bytes: &[u8]) -> Result<Value, String> {
        let (stamp, bytes) = self.split_stamp(bytes)?;
        let (root, registry) = self.schema.as_ref().ok_or("no schema")?;
        let mut r = Cursor { bytes, pos: 0 };
        let v = decode(&mut r, root, registry, 0)?;
        if r.pos != bytes.len() {
            let at = r.pos + stamp.map_or(0, |_| TTL_STAMP_LEN);
            return Err(format!(
                "trailing bytes len={} offset={at}",
                bytes.len() - r.pos
            ));
        }
        Ok(with_stamp(stamp, v))
    }

    /// Decodes `bytes`, falling back to [`raw`] for the value when there is no schema or
    /// it does not fit. The one error: a value of a state with a TTL too short to hold its
    /// stamp.
    pub fn decode(&self, bytes: &[u8]) -> Result<Value, String> {
        let (stamp, value) = self.split_stamp(bytes)?;
        Ok(self
            .try_decode(bytes)
            .unwrap_or_else(|_| with_stamp(stamp, raw(value))))
    }

    /// The TTL stamp (with a TTL) and the value's bytes.
    fn split_stamp<'b>(&self, bytes: &'b [u8]) -> Result<(Option<u64>, &'b [u8]), String> {
        if !self.ttl {
            return Ok((None, bytes));
        }
        match bytes.split_first_chunk::<TTL_STAMP_LEN>() {
            Some((stamp, rest)) => Ok((Some(u64::from_le_bytes(*stamp)), rest)),
            None => Err(ttl_value_too_short(bytes.len())),
        }
    }
}

/// Why `len` bytes (fewer than [`TTL_STAMP_LEN`]) cannot be a value of a state with a TTL:
/// the one defect of such a value that needs no schema to see, which [`Decoder::decode`]
/// and `verify` report alike.
pub(crate) fn ttl_value_too_short(len: usize) -> String {
    format!("{len} bytes cannot hold the {TTL_STAMP_LEN}-byte timestamp of a value with a TTL")
}

/// A decoded value, with its TTL stamp when it has one: `{"ttl_stamped_ms": N, "value": …}`.
fn with_stamp(stamp: Option<u64>, value: Value) -> Value {
    let Some(stamped_ms) = stamp else {
        return value;
    };
    let mut m = Map::new();
    m.insert("ttl_stamped_ms".into(), Value::from(stamped_ms));
    m.insert("value".into(), value);
    Value::Object(m)
}

/// Raw bytes as JSON: `{"hex": "…"}`.
pub fn raw(bytes: &[u8]) -> Value {
    let mut m = Map::new();
    m.insert("hex".into(), Value::String(hex(bytes)));
    Value::Object(m)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// The format of a primitive type named by `std::any::type_name`.
fn primitive(type_name: &str) -> Option<Format> {
    Some(match type_name {
        "()" => Format::Unit,
        "bool" => Format::Bool,
        "i8" => Format::I8,
        "i16" => Format::I16,
        "i32" => Format::I32,
        "i64" => Format::I64,
        "i128" => Format::I128,
        "u8" => Format::U8,
        "u16" => Format::U16,
        "u32" => Format::U32,
        "u64" => Format::U64,
        "u128" => Format::U128,
        "f32" => Format::F32,
        "f64" => Format::F64,
        "char" => Format::Char,
        "alloc::string::String" | "String" | "std::string::String" => Format::Str,
        _ => return None,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end.and_then(|e| self.bytes.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(format!(
                "truncated {what}: needs {n} bytes offset={} len={}",
                self.pos,
                self.bytes.len()
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// A `u64` length or count, bounded by the codec's limit.
    fn len(&mut self, what: &str) -> Result<usize, String> {
        let n = u64::from_le_bytes(self.array::<8>(what)?);
        if n > MAX_DECODED_VALUE_LEN {
            return Err(format!("{what} {n} exceeds the codec's limit"));
        }
        Ok(n as usize)
    }
}

fn number_or_string(n: Option<Number>, s: impl FnOnce() -> String) -> Value {
    n.map_or_else(|| Value::String(s()), Value::Number)
}

fn decode(r: &mut Cursor<'_>, f: &Format, reg: &Registry, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err("schema nesting too deep".into());
    }
    let d = depth + 1;
    Ok(match f {
        Format::Unit => Value::Null,
        Format::Bool => match r.array::<1>("bool")? {
            [0] => Value::Bool(false),
            [1] => Value::Bool(true),
            [b] => return Err(format!("invalid bool byte {b} offset={}", r.pos - 1)),
        },
        Format::I8 => Value::from(i8::from_le_bytes(r.array("i8")?)),
        Format::I16 => Value::from(i16::from_le_bytes(r.array("i16")?)),
        Format::I32 => Value::from(i32::from_le_bytes(r.array("i32")?)),
        Format::I64 => Value::from(i64::from_le_bytes(r.array("i64")?)),
        Format::U8 => Value::from(u8::from_le_bytes(r.array("u8")?)),
        Format::U16 => Value::from(u16::from_le_bytes(r.array("u16")?)),
        Format::U32 => Value::from(u32::from_le_bytes(r.array("u32")?)),
        Format::U64 => Value::from(u64::from_le_bytes(r.array("u64")?)),
        Format::I128 => {
            let v = i128::from_le_bytes(r.array("i128")?);
            number_or_string(i64::try_from(v).ok().map(Number::from), || v.to_string())
        }
        Format::U128 => {
            let v = u128::from_le_bytes(r.array("u128")?);
            number_or_string(u64::try_from(v).ok().map(Number::from), || v.to_string())
        }
        Format::F32 => {
            let v = f32::from_le_bytes(r.array("f32")?);
            number_or_string(Number::from_f64(f64::from(v)), || v.to_string())
        }
        Format::F64 => {
            let v = f64::from_le_bytes(r.array("f64")?);
            number_or_string(Number::from_f64(v), || v.to_string())
        }
        Format::Char => {
            let first = r.array::<1>("char")?[0];
            let width = match first {
                0x00..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => return Err(format!("invalid char offset={}", r.pos - 1)),
            };
            let start = r.pos - 1;
            r.take(width - 1, "char")?;
            let s = std::str::from_utf8(r.bytes.get(start..r.pos).unwrap_or_default())
                .map_err(|e| format!("invalid char: {e} offset={start}"))?;
            Value::String(s.to_string())
        }
        Format::Str => {
            let n = r.len("string length")?;
            let at = r.pos;
            let b = r.take(n, "string")?;
            let s =
                std::str::from_utf8(b).map_err(|e| format!("invalid UTF-8: {e} offset={at}"))?;
            Value::String(s.to_string())
        }
        Format::Bytes => {
            let n = r.len("byte length")?;
            Value::Array(
                r.take(n, "bytes")?
                    .iter()
                    .map(|b| Value::from(*b))
                    .collect(),
            )
        }
        Format::Option(inner) => match r.array::<1>("option tag")? {
            [0] => Value::Null,
            [1] => decode(r, inner, reg, d)?,
            [t] => return Err(format!("invalid option tag {t} offset={}", r.pos - 1)),
        },
        Format::Seq(inner) => {
            let n = r.len("sequence length")?;
            seq(r, n, inner, reg, d)?
        }
        Format::TupleArray { content, size } => seq(r, *size, content, reg, d)?,
        Format::Tuple(fs) => tuple(r, fs, reg, d)?,
        Format::Map { key, value } => {
            let n = r.len("map length")?;
            check_count(r, n)?;
            let mut pairs = Vec::new();
            for _ in 0..n {
                let k = decode(r, key, reg, d)?;
                let v = decode(r, value, reg, d)?;
                pairs.push((k, v));
            }
            map(pairs)
        }
        Format::TypeName(name) => {
            let c = reg
                .get(name)
                .ok_or_else(|| format!("schema names an unknown type {name}"))?;
            container(r, c, reg, d)?
        }
        Format::Variable(_) => return Err("schema has an unresolved type".into()),
    })
}

/// Every element but a zero-sized one takes at least a byte, so a count beyond the bytes left
/// is either an error or zero-sized elements: allow a few of those, not billions.
fn check_count(r: &Cursor<'_>, n: usize) -> Result<(), String> {
    if n > r.remaining() && n > MAX_ZERO_SIZED {
        return Err(format!(
            "element count {n} exceeds the bytes left offset={}",
            r.pos
        ));
    }
    Ok(())
}

fn seq(
    r: &mut Cursor<'_>,
    n: usize,
    f: &Format,
    reg: &Registry,
    d: usize,
) -> Result<Value, String> {
    check_count(r, n)?;
    let mut out = Vec::with_capacity(n.min(r.remaining()));
    for _ in 0..n {
        out.push(decode(r, f, reg, d)?);
    }
    Ok(Value::Array(out))
}

fn tuple(r: &mut Cursor<'_>, fs: &[Format], reg: &Registry, d: usize) -> Result<Value, String> {
    fs.iter()
        .map(|f| decode(r, f, reg, d))
        .collect::<Result<Vec<_>, _>>()
        .map(Value::Array)
}

fn fields(
    r: &mut Cursor<'_>,
    fs: &[Named<Format>],
    reg: &Registry,
    d: usize,
) -> Result<Value, String> {
    let mut m = Map::new();
    for f in fs {
        m.insert(f.name.clone(), decode(r, &f.value, reg, d)?);
    }
    Ok(Value::Object(m))
}

fn map(pairs: Vec<(Value, Value)>) -> Value {
    let keyable = pairs
        .iter()
        .all(|(k, _)| matches!(k, Value::String(_) | Value::Number(_)));
    if keyable {
        let mut m = Map::new();
        for (k, v) in pairs {
            let k = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            m.insert(k, v);
        }
        Value::Object(m)
    } else {
        Value::Array(
            pairs
                .into_iter()
                .map(|(k, v)| Value::Array(vec![k, v]))
                .collect(),
        )
    }
}

fn container(
    r: &mut Cursor<'_>,
    c: &ContainerFormat,
    reg: &Registry,
    d: usize,
) -> Result<Value, String> {
    match c {
        ContainerFormat::UnitStruct => Ok(Value::Null),
        ContainerFormat::NewTypeStruct(f) => decode(r, f, reg, d),
        ContainerFormat::TupleStruct(fs) => tuple(r, fs, reg, d),
        ContainerFormat::Struct(fs) => fields(r, fs, reg, d),
        ContainerFormat::Enum(variants) => variant(r, variants, reg, d),
    }
}

fn variant(
    r: &mut Cursor<'_>,
    variants: &BTreeMap<u32, Named<VariantFormat>>,
    reg: &Registry,
    d: usize,
) -> Result<Value, String> {
    let at = r.pos;
    let index = u32::from_le_bytes(r.array("variant index")?);
    let v = variants
        .get(&index)
        .ok_or_else(|| format!("unknown enum variant {index} offset={at}"))?;
    let inner = match &v.value {
        VariantFormat::Unit => return Ok(Value::String(v.name.clone())),
        VariantFormat::NewType(f) => decode(r, f, reg, d)?,
        VariantFormat::Tuple(fs) => tuple(r, fs, reg, d)?,
        VariantFormat::Struct(fs) => fields(r, fs, reg, d)?,
        VariantFormat::Variable(_) => return Err("schema has an unresolved variant".into()),
    };
    let mut m = Map::new();
    m.insert(v.name.clone(), inner);
    Ok(Value::Object(m))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_core::{BincodeCodec, Codec};
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    #[derive(Serialize, Deserialize, Clone)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: u32, h: u32 },
        Pair(i8, i8),
    }

    #[derive(Serialize, Deserialize, Clone)]
    struct Meters(u16);

    #[derive(Serialize, Deserialize, Clone)]
    struct Record {
        name: String,
        tags: Vec<String>,
        score: Option<i64>,
        by_name: BTreeMap<String, u8>,
        pos: (u32, bool),
        height: Meters,
        initial: char,
        big: u128,
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(
        v: &T,
    ) -> Value {
        let c = BincodeCodec::<T>::new();
        let bytes = c.encode_to_vec(v).unwrap();
        let d = Decoder::for_codec(c.identity());
        assert!(d.has_schema(), "{}", std::any::type_name::<T>());
        d.try_decode(&bytes).unwrap()
    }

    #[test]
    fn decodes_what_bincode_codec_writes() {
        assert_eq!(round_trip(&"hello".to_string()), json!("hello"));
        assert_eq!(round_trip(&7u64), json!(7));
        assert_eq!(round_trip(&()), Value::Null);
        let r = Record {
            name: "n".into(),
            tags: vec!["a".into(), "é".into()],
            score: Some(-3),
            by_name: BTreeMap::from([("x".to_string(), 1), ("y".to_string(), 2)]),
            pos: (9, true),
            height: Meters(12),
            initial: 'ß',
            big: u128::MAX,
        };
        assert_eq!(
            round_trip(&r),
            json!({
                "name": "n",
                "tags": ["a", "é"],
                "score": -3,
                "by_name": {"x": 1, "y": 2},
                "pos": [9, true],
                "height": 12,
                "initial": "ß",
                "big": u128::MAX.to_string(),
            })
        );
        // (An enum inside a container does not trace with `trace_simple_type`; alone it does.)
        assert_eq!(round_trip(&Shape::Dot), json!("Dot"));
        assert_eq!(round_trip(&Shape::Circle(1.5)), json!({"Circle": 1.5}));
        assert_eq!(
            round_trip(&Shape::Rect { w: 2, h: 3 }),
            json!({"Rect": {"w": 2, "h": 3}})
        );
        assert_eq!(round_trip(&Shape::Pair(-1, 1)), json!({"Pair": [-1, 1]}));
        let none: Option<u8> = None;
        assert_eq!(round_trip(&none), Value::Null);
        assert_eq!(
            round_trip(&BTreeMap::from([((1u8, 2u8), 3u8)])),
            json!([[[1, 2], 3]])
        );
    }

    #[test]
    fn primitives_by_type_name_without_schema() {
        let id = |t: &str| CodecIdentity {
            encoding: BINCODE_V1.into(),
            type_name: t.into(),
            version: 1,
            schema: None,
        };
        let s = Decoder::for_codec(&id("alloc::string::String"));
        assert_eq!(
            s.decode(&[2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']).unwrap(),
            json!("hi")
        );
        let u = Decoder::for_codec(&id("u64"));
        assert_eq!(u.decode(&5u64.to_le_bytes()).unwrap(), json!(5));
        let unknown = Decoder::for_codec(&id("demo::Thing"));
        assert!(!unknown.has_schema());
        assert_eq!(unknown.decode(&[0xab, 1]).unwrap(), json!({"hex": "ab01"}));
        let mut other = id("u64");
        other.encoding = "json".into();
        assert!(!Decoder::for_codec(&other).has_schema());
    }

    #[test]
    fn bad_bytes_fall_back_to_hex_and_never_panic() {
        let c = BincodeCodec::<Record>::new();
        let d = Decoder::for_codec(c.identity());
        // Truncations, garbage and huge lengths.
        let mut inputs: Vec<Vec<u8>> =
            vec![vec![], vec![0xff; 64], u64::MAX.to_le_bytes().to_vec()];
        for n in 0..40u8 {
            inputs.push((0..n).map(|i| i.wrapping_mul(37)).collect());
        }
        for i in inputs {
            if d.try_decode(&i).is_err() {
                assert_eq!(d.decode(&i).unwrap(), raw(&i));
            }
        }
        let u = Decoder::for_codec(BincodeCodec::<u32>::new().identity());
        assert!(u
            .try_decode(&[1, 0, 0, 0, 9])
            .unwrap_err()
            .contains("trailing"));
        // A count of zero-sized elements up to the limit is fine; beyond it is an error.
        let units = Decoder::from_schema_json(r#"{"root":{"SEQ":"UNIT"},"registry":{}}"#).unwrap();
        assert_eq!(
            units.try_decode(&3u64.to_le_bytes()).unwrap(),
            json!([null, null, null])
        );
        assert!(units.try_decode(&u64::MAX.to_le_bytes()).is_err());
    }

    #[test]
    fn ttl_values_show_their_stamp_and_value() {
        use std::sync::Arc;

        use cairn_core::{TtlCodec, TtlValue};

        let c = TtlCodec::new(Arc::new(BincodeCodec::<Record>::new()));
        assert!(c.identity().encoding.starts_with(TTL_ENCODING_PREFIX));
        let d = Decoder::for_codec(c.identity());
        assert!(d.has_ttl() && d.has_schema());
        let value = Record {
            name: "n".into(),
            tags: vec![],
            score: None,
            by_name: BTreeMap::new(),
            pos: (1, false),
            height: Meters(2),
            initial: 'x',
            big: 3,
        };
        let bytes = c
            .encode_to_vec(&TtlValue {
                stamped_ms: 1_700_000_000_123,
                value,
            })
            .unwrap();
        let expected = json!({
            "ttl_stamped_ms": 1_700_000_000_123u64,
            "value": {
                "name": "n", "tags": [], "score": null, "by_name": {}, "pos": [1, false],
                "height": 2, "initial": "x", "big": 3,
            },
        });
        assert_eq!(d.try_decode(&bytes).unwrap(), expected);
        assert_eq!(d.decode(&bytes).unwrap(), expected);
        // Without the prefix's meaning the stamp would be read as the record's name length.
        let plain = Decoder::for_codec(BincodeCodec::<Record>::new().identity());
        assert_eq!(plain.decode(&bytes).unwrap(), raw(&bytes));

        // A value the schema does not fit keeps its stamp; the value is raw.
        let mut long = bytes.clone();
        long.push(7);
        assert!(d
            .try_decode(&long)
            .unwrap_err()
            .contains(&format!("trailing bytes len=1 offset={}", bytes.len())));
        assert_eq!(
            d.decode(&long).unwrap(),
            json!({"ttl_stamped_ms": 1_700_000_000_123u64, "value": raw(&long[8..])})
        );

        // Too short for the stamp: an error from both, never a panic or a fallback.
        for n in 0..8 {
            let e = d.decode(&bytes[..n]).unwrap_err();
            assert_eq!(
                e,
                format!("{n} bytes cannot hold the 8-byte timestamp of a value with a TTL")
            );
            assert!(d.try_decode(&bytes[..n]).is_err());
        }
        // Exactly a stamp: the value is empty (a `()` value with a TTL).
        let unit =
            Decoder::for_codec(TtlCodec::new(Arc::new(BincodeCodec::<()>::new())).identity());
        assert_eq!(
            unit.decode(&5u64.to_le_bytes()).unwrap(),
            json!({"ttl_stamped_ms": 5, "value": null})
        );

        // An inner encoding this build does not decode: the stamp still, the value raw.
        let mut id = c.identity().clone();
        id.encoding = format!("{TTL_ENCODING_PREFIX}json");
        let other = Decoder::for_codec(&id);
        assert!(other.has_ttl() && !other.has_schema());
        assert_eq!(
            other.decode(&[9, 0, 0, 0, 0, 0, 0, 0, b'{', b'}']).unwrap(),
            json!({"ttl_stamped_ms": 9, "value": {"hex": "7b7d"}})
        );
        assert!(other.decode(&[9]).is_err());
        // The prefix counts only in front.
        id.encoding = format!("x{TTL_ENCODING_PREFIX}{BINCODE_V1}");
        assert!(!Decoder::for_codec(&id).has_ttl());
    }

    #[test]
    fn recursion_is_bounded() {
        let doc = r#"{"root":{"TYPENAME":"L"},"registry":{"L":{"ENUM":{"0":{"Nil":"UNIT"},"1":{"Cons":{"NEWTYPE":{"TYPENAME":"L"}}}}}}}"#;
        let d = Decoder::from_schema_json(doc).unwrap();
        let mut deep = Vec::new();
        for _ in 0..10_000 {
            deep.extend_from_slice(&1u32.to_le_bytes());
        }
        deep.extend_from_slice(&0u32.to_le_bytes());
        assert!(d.try_decode(&deep).unwrap_err().contains("too deep"));
        let shallow = [1u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        assert_eq!(d.try_decode(&shallow).unwrap(), json!({"Cons": "Nil"}));
    }
}
