//! The bytes of the manifest (format-spec/README.md, "Manifest").
//!
//! ```text
//! header (HEADER_LEN = 16)
//!   0   8  magic            "CAIRNMF\0"
//!   8   2  version          u16 = 1
//!  10   2  flags            u16: bits 0..=7 required, 8..=15 optional; v1 defines none
//!  12   4  body_len         u32 = file length - 32
//! body (body_len bytes, see `encode_body`)
//! footer (FOOTER_LEN = 16)
//!   0   4  crc32            CRC32 of header and body
//!   4   2  version          u16, equal to the header's
//!   6   2  reserved         u16 = 0
//!   8   8  magic            "CAIRNMF\0"
//! ```

use cairn_core::{
    CanonicalFile, CodecIdentity, FileArea, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle,
    OperatorStateSnapshot, Redistribution, SnapshotType, StateKind, StateMeta,
};

use crate::codec::{corrupt, crc32, crc_matches, Reader, Version, Writer};
use crate::manifest::{check_uid_order, validate_operator};
use crate::{FormatError, Manifest, OperatorManifest, SubtaskManifest, MAX_MANIFEST_LEN};

/// The first (and last) eight bytes of every manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"CAIRNMF\0";

const KIND: &str = "manifest";

const MAGIC_LEN: usize = 8;
const HEADER_MAGIC_OFFSET: usize = 0;
const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + MAGIC_LEN;
const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + 2;
const HEADER_BODY_LEN_OFFSET: usize = HEADER_FLAGS_OFFSET + 2;
const HEADER_LEN: usize = HEADER_BODY_LEN_OFFSET + 4;

const FOOTER_CRC_OFFSET: usize = 0;
const FOOTER_VERSION_OFFSET: usize = FOOTER_CRC_OFFSET + 4;
const FOOTER_RESERVED_OFFSET: usize = FOOTER_VERSION_OFFSET + 2;
const FOOTER_MAGIC_OFFSET: usize = FOOTER_RESERVED_OFFSET + 2;
const FOOTER_LEN: usize = FOOTER_MAGIC_OFFSET + MAGIC_LEN;

/// Flag bits a reader must understand (an unknown one is an error).
const REQUIRED_FLAGS_MASK: u16 = 0x00ff;
/// Required flags this build understands (v1 defines none).
const KNOWN_REQUIRED_FLAGS: u16 = 0;

// Stable codes of enumerations in the body.
const SNAPSHOT_CHECKPOINT: u8 = 1;
const SNAPSHOT_SAVEPOINT: u8 = 2;
const AREA_PRIVATE: u8 = 1;
const AREA_SHARED: u8 = 2;
const REDISTRIBUTION_SPLIT: u8 = 1;
const REDISTRIBUTION_UNION: u8 = 2;
const KEYED_DATA_CANONICAL: u8 = 1;

// Minimum encoded sizes, which bound counts before allocation.
const MIN_STR: usize = 4;
const MIN_CODEC: usize = MIN_STR * 2 + 4 + 1;
const MIN_OPERATOR: usize = MIN_STR + 4 + 4 + 4;
const MIN_SUBTASK: usize = 8 + 1 + 4;
const MIN_OPERATOR_STATE: usize = MIN_STR + 1 + MIN_CODEC + 4;
const MIN_STATE_META: usize = MIN_STR + 1 + 2 * MIN_CODEC + 1;
const MIN_CANONICAL_FILE: usize = 1 + MIN_STR + 8 + 4 + 4;
const RANGE_LEN: usize = 8;

/// Encodes a manifest (validates it first).
pub fn encode_manifest(m: &Manifest) -> Result<Vec<u8>, FormatError> {
    m.validate()?;
    let mut out = vec![0u8; HEADER_LEN];
    encode_body(m, &mut Writer::new(&mut out, KIND))?;
    let body_len = out.len() - HEADER_LEN;
    if out.len() + FOOTER_LEN > MAX_MANIFEST_LEN {
        return Err(FormatError::Invalid {
            kind: KIND,
            detail: format!(
                "manifest larger than the limit len={} max={MAX_MANIFEST_LEN}",
                out.len() + FOOTER_LEN
            ),
        });
    }
    let version = Version::CURRENT.as_u16().to_le_bytes();
    // Header: magic, version, flags (none), body length.
    out[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET].copy_from_slice(&MANIFEST_MAGIC);
    out[HEADER_VERSION_OFFSET..HEADER_FLAGS_OFFSET].copy_from_slice(&version);
    out[HEADER_FLAGS_OFFSET..HEADER_BODY_LEN_OFFSET].copy_from_slice(&0u16.to_le_bytes());
    out[HEADER_BODY_LEN_OFFSET..HEADER_LEN].copy_from_slice(&(body_len as u32).to_le_bytes());
    // Footer: CRC of everything before it, version, reserved, magic.
    let crc = crc32(&[&out]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&version);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&MANIFEST_MAGIC);
    Ok(out)
}

/// Decodes and verifies a manifest; `path` is used in errors.
pub fn decode_manifest(bytes: &[u8], path: &str) -> Result<Manifest, FormatError> {
    let len = bytes.len();
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt(
            KIND,
            path,
            len as u64,
            format!("truncated manifest len={len}"),
        ));
    }
    if len > MAX_MANIFEST_LEN {
        return Err(corrupt(
            KIND,
            path,
            0,
            format!("manifest larger than the limit len={len} max={MAX_MANIFEST_LEN}"),
        ));
    }
    let footer_at = len - FOOTER_LEN;
    let mut h = Reader::new(bytes, 0, KIND, path);
    let mut f = Reader::new(
        bytes.get(footer_at..).unwrap_or_default(),
        footer_at as u64,
        KIND,
        path,
    );
    if h.take(MAGIC_LEN, "magic")? != MANIFEST_MAGIC {
        return Err(h.corrupt_at(0, "bad magic, not a cairn manifest"));
    }
    let version = h.u16("version")?;
    let flags = h.u16("flags")?;
    let body_len = h.u32("body length")?;
    let stored_crc = f.u32("checksum")?;
    let footer_version = f.u16("footer version")?;
    let reserved = f.u16("footer reserved")?;
    if f.take(MAGIC_LEN, "footer magic")? != MANIFEST_MAGIC {
        return Err(f.corrupt_at(
            (footer_at + FOOTER_MAGIC_OFFSET) as u64,
            "bad footer magic (truncated or not a manifest)",
        ));
    }
    if version != footer_version {
        return Err(h.corrupt_at(
            HEADER_VERSION_OFFSET as u64,
            format!("header and footer versions differ header={version} footer={footer_version}"),
        ));
    }
    if Version::from_u16(version).is_none() {
        return Err(FormatError::UnsupportedVersion {
            kind: KIND,
            path: path.to_string(),
            found: version,
            supported: Version::SUPPORTED,
        });
    }
    if reserved != 0 {
        return Err(f.corrupt_at(
            (footer_at + FOOTER_RESERVED_OFFSET) as u64,
            format!("reserved footer field is not zero value={reserved}"),
        ));
    }
    if body_len as usize != footer_at - HEADER_LEN {
        return Err(h.corrupt_at(
            HEADER_BODY_LEN_OFFSET as u64,
            format!(
                "body length does not match the file length body_len={body_len} file_len={len}"
            ),
        ));
    }
    let covered = bytes.get(..footer_at).unwrap_or_default();
    let computed = crc32(&[covered]);
    if !crc_matches(stored_crc, computed) {
        return Err(f.corrupt_at(
            footer_at as u64,
            format!("checksum mismatch stored={stored_crc:#010x} computed={computed:#010x}"),
        ));
    }
    let unknown = flags & REQUIRED_FLAGS_MASK & !KNOWN_REQUIRED_FLAGS;
    if unknown != 0 {
        return Err(FormatError::UnsupportedFeature {
            kind: KIND,
            path: path.to_string(),
            offset: HEADER_FLAGS_OFFSET as u64,
            detail: format!("unknown required flags flags={unknown:#06x}"),
        });
    }
    let body = bytes.get(HEADER_LEN..footer_at).unwrap_or_default();
    let mut r = Reader::new(body, HEADER_LEN as u64, KIND, path);
    let m = decode_body(&mut r)?;
    r.finish("manifest body")?;
    Ok(m)
}

// Body:
//   checkpoint_id u64, snapshot_type u8 (1 checkpoint, 2 savepoint), timestamp_ms u64,
//   vec<operator>
// operator: uid str, parallelism u32, max_parallelism u32, vec<subtask>
// subtask: range, opt<keyed handle>, vec<operator state>
// range: start u32, end u32
fn encode_body(m: &Manifest, w: &mut Writer<'_>) -> Result<(), FormatError> {
    w.u64(m.checkpoint_id);
    w.u8(match m.snapshot_type {
        SnapshotType::Checkpoint => SNAPSHOT_CHECKPOINT,
        SnapshotType::Savepoint => SNAPSHOT_SAVEPOINT,
    });
    w.u64(m.timestamp_ms);
    w.len(m.operators.len(), "operators")?;
    for op in &m.operators {
        w.str(&op.uid, "uid")?;
        w.u32(op.parallelism);
        w.u32(op.max_parallelism);
        w.len(op.subtasks.len(), "subtasks")?;
        for st in &op.subtasks {
            range(w, st.key_group_range);
            match &st.keyed {
                None => w.u8(0),
                Some(h) => {
                    w.u8(1);
                    keyed(w, h)?;
                }
            }
            w.len(st.operator_state.len(), "operator states")?;
            for s in &st.operator_state {
                operator_state(w, s)?;
            }
        }
    }
    Ok(())
}

fn range(w: &mut Writer<'_>, r: KeyGroupRange) {
    w.u32(r.start);
    w.u32(r.end);
}

// codec identity: encoding str, type_name str, version u32, opt<schema str>
fn codec(w: &mut Writer<'_>, c: &CodecIdentity) -> Result<(), FormatError> {
    w.str(&c.encoding, "codec encoding")?;
    w.str(&c.type_name, "codec type name")?;
    w.u32(c.version);
    match &c.schema {
        None => w.u8(0),
        Some(s) => {
            w.u8(1);
            w.str(s, "codec schema")?;
        }
    }
    Ok(())
}

// operator state: name str, mode u8 (1 split, 2 union), codec, vec<bytes> elements
fn operator_state(w: &mut Writer<'_>, s: &OperatorStateSnapshot) -> Result<(), FormatError> {
    w.str(&s.name, "operator state name")?;
    w.u8(match s.mode {
        Redistribution::Split => REDISTRIBUTION_SPLIT,
        Redistribution::Union => REDISTRIBUTION_UNION,
    });
    codec(w, &s.codec)?;
    w.len(s.elements.len(), "operator state elements")?;
    for e in &s.elements {
        w.bytes(e, "operator state element")?;
    }
    Ok(())
}

// keyed handle: range, key codec, vec<state meta>, data tag u8 (1 canonical), data
// state meta: name str, kind u8 (StateKind::code), namespace codec, value codec,
//             opt<user key codec>
// canonical data: vec<canonical file>
// canonical file: area u8 (1 private, 2 shared), name str, size u64, crc32 u32, vec<range>
fn keyed(w: &mut Writer<'_>, h: &KeyedStateHandle) -> Result<(), FormatError> {
    range(w, h.key_group_range);
    codec(w, &h.key_codec)?;
    w.len(h.states.len(), "states")?;
    for s in &h.states {
        w.str(&s.name, "state name")?;
        w.u8(s.kind.code());
        codec(w, &s.namespace)?;
        codec(w, &s.value)?;
        match &s.user_key {
            None => w.u8(0),
            Some(c) => {
                w.u8(1);
                codec(w, c)?;
            }
        }
    }
    match &h.data {
        KeyedData::Canonical { files } => {
            w.u8(KEYED_DATA_CANONICAL);
            w.len(files.len(), "files")?;
            for f in files {
                w.u8(match f.file.area {
                    FileArea::Private => AREA_PRIVATE,
                    FileArea::Shared => AREA_SHARED,
                });
                w.str(&f.file.name, "file name")?;
                w.u64(f.file.size);
                w.u32(f.file.crc32);
                w.len(f.key_groups.len(), "file key groups")?;
                for r in &f.key_groups {
                    range(w, *r);
                }
            }
        }
        #[allow(unreachable_patterns)]
        _ => {
            return Err(FormatError::Invalid {
                kind: KIND,
                detail: "keyed data kind not supported by format v1".to_string(),
            })
        }
    }
    Ok(())
}

fn decode_body(r: &mut Reader<'_>) -> Result<Manifest, FormatError> {
    let checkpoint_id = r.u64("checkpoint id")?;
    let at = r.offset();
    let snapshot_type = match r.u8("snapshot type")? {
        SNAPSHOT_CHECKPOINT => SnapshotType::Checkpoint,
        SNAPSHOT_SAVEPOINT => SnapshotType::Savepoint,
        t => return Err(r.corrupt_at(at, format!("unknown snapshot type code={t}"))),
    };
    let timestamp_ms = r.u64("timestamp")?;
    let n = r.count(MIN_OPERATOR, "operators")?;
    let mut operators: Vec<OperatorManifest> = Vec::with_capacity(n);
    for _ in 0..n {
        let at = r.offset();
        let uid = r.string("uid")?;
        let parallelism = r.u32("parallelism")?;
        let max_parallelism = r.u32("max parallelism")?;
        let ns = r.count(MIN_SUBTASK, "subtasks")?;
        let mut subtasks = Vec::with_capacity(ns);
        for _ in 0..ns {
            subtasks.push(decode_subtask(r)?);
        }
        let op = OperatorManifest {
            uid,
            parallelism,
            max_parallelism,
            subtasks,
        };
        check_uid_order(operators.last().map(|o| o.uid.as_str()), &op.uid)
            .and_then(|()| validate_operator(&op, snapshot_type))
            .map_err(|d| r.corrupt_at(at, d))?;
        operators.push(op);
    }
    Ok(Manifest {
        checkpoint_id,
        snapshot_type,
        timestamp_ms,
        operators,
    })
}

fn decode_range(r: &mut Reader<'_>) -> Result<KeyGroupRange, FormatError> {
    Ok(KeyGroupRange::new(
        r.u32("range start")?,
        r.u32("range end")?,
    ))
}

fn decode_subtask(r: &mut Reader<'_>) -> Result<SubtaskManifest, FormatError> {
    let key_group_range = decode_range(r)?;
    let keyed = if r.option_tag("keyed state")? {
        Some(decode_keyed(r)?)
    } else {
        None
    };
    let n = r.count(MIN_OPERATOR_STATE, "operator states")?;
    let mut operator_state = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("operator state name")?;
        let at = r.offset();
        let mode = match r.u8("redistribution mode")? {
            REDISTRIBUTION_SPLIT => Redistribution::Split,
            REDISTRIBUTION_UNION => Redistribution::Union,
            t => return Err(r.corrupt_at(at, format!("unknown redistribution mode code={t}"))),
        };
        let codec = decode_codec(r)?;
        let ne = r.count(MIN_STR, "operator state elements")?;
        let mut elements = Vec::with_capacity(ne);
        for _ in 0..ne {
            elements.push(r.bytes("operator state element")?.to_vec());
        }
        operator_state.push(OperatorStateSnapshot {
            name,
            mode,
            codec,
            elements,
        });
    }
    Ok(SubtaskManifest {
        key_group_range,
        keyed,
        operator_state,
    })
}

fn decode_codec(r: &mut Reader<'_>) -> Result<CodecIdentity, FormatError> {
    let encoding = r.string("codec encoding")?;
    let type_name = r.string("codec type name")?;
    let version = r.u32("codec version")?;
    let schema = if r.option_tag("codec schema")? {
        Some(r.string("codec schema")?)
    } else {
        None
    };
    Ok(CodecIdentity {
        encoding,
        type_name,
        version,
        schema,
    })
}

fn decode_keyed(r: &mut Reader<'_>) -> Result<KeyedStateHandle, FormatError> {
    let key_group_range = decode_range(r)?;
    let key_codec = decode_codec(r)?;
    let n = r.count(MIN_STATE_META, "states")?;
    let mut states = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.string("state name")?;
        let at = r.offset();
        let code = r.u8("state kind")?;
        let kind = StateKind::from_code(code)
            .ok_or_else(|| r.corrupt_at(at, format!("unknown state kind code={code}")))?;
        let namespace = decode_codec(r)?;
        let value = decode_codec(r)?;
        let user_key = if r.option_tag("user key codec")? {
            Some(decode_codec(r)?)
        } else {
            None
        };
        states.push(StateMeta {
            name,
            kind,
            namespace,
            value,
            user_key,
        });
    }
    let at = r.offset();
    let data = match r.u8("keyed data kind")? {
        KEYED_DATA_CANONICAL => {
            let nf = r.count(MIN_CANONICAL_FILE, "files")?;
            let mut files = Vec::with_capacity(nf);
            for _ in 0..nf {
                let at = r.offset();
                let area = match r.u8("file area")? {
                    AREA_PRIVATE => FileArea::Private,
                    AREA_SHARED => FileArea::Shared,
                    t => return Err(r.corrupt_at(at, format!("unknown file area code={t}"))),
                };
                let name = r.string("file name")?;
                let size = r.u64("file size")?;
                let crc32 = r.u32("file checksum")?;
                let nr = r.count(RANGE_LEN, "file key groups")?;
                let mut key_groups = Vec::with_capacity(nr);
                for _ in 0..nr {
                    key_groups.push(decode_range(r)?);
                }
                files.push(CanonicalFile {
                    file: FileRef {
                        area,
                        name,
                        size,
                        crc32,
                    },
                    key_groups,
                });
            }
            KeyedData::Canonical { files }
        }
        t => {
            return Err(FormatError::UnsupportedFeature {
                kind: KIND,
                path: r.path().to_string(),
                offset: at,
                detail: format!("unknown keyed data kind code={t}"),
            })
        }
    };
    Ok(KeyedStateHandle {
        key_group_range,
        key_codec,
        states,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::BINCODE_V1;

    fn codec(t: &str) -> CodecIdentity {
        CodecIdentity {
            encoding: BINCODE_V1.into(),
            type_name: t.into(),
            version: 1,
            schema: None,
        }
    }

    fn sample() -> Manifest {
        let subtasks = (0..2)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(8, 2, i).unwrap();
                SubtaskManifest {
                    key_group_range: range,
                    keyed: Some(KeyedStateHandle {
                        key_group_range: range,
                        key_codec: codec("String"),
                        states: vec![StateMeta {
                            name: "count".into(),
                            kind: StateKind::Value,
                            namespace: codec("()"),
                            value: codec("u64"),
                            user_key: None,
                        }],
                        data: KeyedData::Canonical {
                            files: vec![CanonicalFile {
                                file: FileRef {
                                    area: FileArea::Private,
                                    name: format!("state-{i}"),
                                    size: 10,
                                    crc32: 7,
                                },
                                key_groups: vec![range],
                            }],
                        },
                    }),
                    operator_state: vec![OperatorStateSnapshot {
                        name: "offsets".into(),
                        mode: Redistribution::Split,
                        codec: codec("u64"),
                        elements: vec![vec![1, 2]],
                    }],
                }
            })
            .collect();
        Manifest {
            checkpoint_id: 3,
            snapshot_type: SnapshotType::Checkpoint,
            timestamp_ms: 1_700_000_000_000,
            operators: vec![OperatorManifest {
                uid: "counter".into(),
                parallelism: 2,
                max_parallelism: 8,
                subtasks,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = encode_manifest(&m).unwrap();
        assert_eq!(&bytes[..8], b"CAIRNMF\0");
        assert_eq!(decode_manifest(&bytes, "m").unwrap(), m);
    }

    #[test]
    fn newer_version_names_what_this_build_reads() {
        let mut bytes = encode_manifest(&sample()).unwrap();
        let n = bytes.len();
        bytes[HEADER_VERSION_OFFSET] = 2;
        bytes[n - FOOTER_LEN + FOOTER_VERSION_OFFSET] = 2;
        let e = decode_manifest(&bytes, "chk-3/_metadata")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "unsupported manifest version 2: this build reads version 1; upgrade cairn to read it path=chk-3/_metadata");
    }

    #[test]
    fn unknown_required_flag_is_refused_and_optional_flag_ignored() {
        let bytes = encode_manifest(&sample()).unwrap();
        let with_flags = |flags: u16| {
            let mut b = bytes.clone();
            b[HEADER_FLAGS_OFFSET..HEADER_FLAGS_OFFSET + 2].copy_from_slice(&flags.to_le_bytes());
            let n = b.len() - FOOTER_LEN;
            let crc = crc32(&[&b[..n]]);
            b[n..n + 4].copy_from_slice(&crc.to_le_bytes());
            decode_manifest(&b, "m")
        };
        assert!(matches!(
            with_flags(0x0001),
            Err(FormatError::UnsupportedFeature { .. })
        ));
        assert_eq!(with_flags(0x0100).unwrap(), sample());
    }

    #[test]
    fn invalid_manifests_are_refused_on_encode() {
        let mut m = sample();
        m.snapshot_type = SnapshotType::Savepoint;
        if let Some(KeyedStateHandle {
            data: KeyedData::Canonical { files },
            ..
        }) = &mut m.operators[0].subtasks[0].keyed
        {
            files[0].file.area = FileArea::Shared;
        }
        let e = encode_manifest(&m).unwrap_err().to_string();
        assert!(
            e.contains("savepoint must not reference shared files"),
            "{e}"
        );
        let mut m = sample();
        m.operators[0].subtasks.pop();
        assert!(encode_manifest(&m).is_err());
        let mut m = sample();
        if let Some(KeyedStateHandle {
            data: KeyedData::Canonical { files },
            ..
        }) = &mut m.operators[0].subtasks[1].keyed
        {
            files[0].key_groups = vec![KeyGroupRange::new(4, 6)];
        }
        let e = encode_manifest(&m).unwrap_err().to_string();
        assert!(e.contains("do not cover"), "{e}");
    }
}
