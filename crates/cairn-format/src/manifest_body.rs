//! The manifest body (format-spec/README.md, "Manifest body"): a hand-written encoding of
//! [`Manifest`], every field spelled out in the spec's grammar.

use cairn_core::{
    CanonicalFile, ChangelogSegment, CodecIdentity, FileArea, FileRef, KeyGroupRange, KeyedData,
    KeyedStateHandle, NativeFile, OperatorStateSnapshot, Redistribution, SnapshotType, StateKind,
    StateMeta,
};

use crate::codec::{Reader, Writer};
use crate::manifest::{check_uid_order, validate_operator};
use crate::{FormatError, Manifest, OperatorManifest, SubtaskManifest};

const KIND: &str = "manifest";

// Stable codes of enumerations in the body.
const SNAPSHOT_CHECKPOINT: u8 = 1;
const SNAPSHOT_SAVEPOINT: u8 = 2;
const AREA_PRIVATE: u8 = 1;
const AREA_SHARED: u8 = 2;
const REDISTRIBUTION_SPLIT: u8 = 1;
const REDISTRIBUTION_UNION: u8 = 2;
const KEYED_DATA_CANONICAL: u8 = 1;
const KEYED_DATA_ROCKS_NATIVE: u8 = 2;
const KEYED_DATA_CHANGELOG: u8 = 3;

// Minimum encoded sizes, which bound counts before allocation.
const MIN_STR: usize = 4;
const MIN_CODEC: usize = MIN_STR * 2 + 4 + 1;
const MIN_OPERATOR: usize = MIN_STR + 4 + 4 + 4;
const MIN_SUBTASK: usize = 8 + 1 + 4;
const MIN_OPERATOR_STATE: usize = MIN_STR + 1 + MIN_CODEC + 4;
const MIN_STATE_META: usize = MIN_STR + 1 + 2 * MIN_CODEC + 1;
const MIN_FILE_REF: usize = 1 + MIN_STR + 8 + 4;
const MIN_CANONICAL_FILE: usize = MIN_FILE_REF + 4;
const MIN_NATIVE_FILE: usize = MIN_FILE_REF + MIN_STR;
const RANGE_LEN: usize = 8;
const MIN_KEYED: usize = RANGE_LEN + MIN_CODEC + 4 + 1 + 4;
const MIN_SEGMENT: usize = MIN_FILE_REF + 8 + 8;

// Body:
//   checkpoint_id u64, snapshot_type u8 (1 checkpoint, 2 savepoint), timestamp_ms u64,
//   vec<operator>
// operator: uid str, parallelism u32, max_parallelism u32, vec<subtask>
// subtask: range, opt<keyed handle>, vec<operator state>
// range: start u32, end u32
pub(crate) fn encode_body(m: &Manifest, w: &mut Writer<'_>) -> Result<(), FormatError> {
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

// keyed handle: range, key codec, vec<state meta>, data tag u8 (1 canonical, 2 native
//               RocksDB, 3 changelog), data
// state meta: name str, kind u8 (StateKind::code), namespace codec, value codec,
//             opt<user key codec>
// file ref: area u8 (1 private, 2 shared), name str, size u64, crc32 u32
// canonical data: vec<canonical file>; canonical file: file ref, vec<range>
// native data: vec<native file>; native file: file ref, local_name str
// changelog data: vec<keyed handle> materialized (kinds 1 and 2 only), vec<segment>;
//                 segment: file ref, first_sqn u64, records u64
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
                file_ref(w, &f.file)?;
                w.len(f.key_groups.len(), "file key groups")?;
                for r in &f.key_groups {
                    range(w, *r);
                }
            }
        }
        KeyedData::RocksNative { files } => {
            w.u8(KEYED_DATA_ROCKS_NATIVE);
            w.len(files.len(), "files")?;
            for f in files {
                file_ref(w, &f.file)?;
                w.str(&f.local_name, "local file name")?;
            }
        }
        KeyedData::Changelog {
            materialized,
            segments,
        } => {
            w.u8(KEYED_DATA_CHANGELOG);
            w.len(materialized.len(), "materialized handles")?;
            for m in materialized {
                if matches!(m.data, KeyedData::Changelog { .. }) {
                    return Err(FormatError::Invalid {
                        kind: KIND,
                        detail: "nested changelog data".to_string(),
                    });
                }
                keyed(w, m)?;
            }
            w.len(segments.len(), "changelog segments")?;
            for s in segments {
                file_ref(w, &s.file)?;
                w.u64(s.first_sqn);
                w.u64(s.records);
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

fn file_ref(w: &mut Writer<'_>, f: &FileRef) -> Result<(), FormatError> {
    w.u8(match f.area {
        FileArea::Private => AREA_PRIVATE,
        FileArea::Shared => AREA_SHARED,
    });
    w.str(&f.name, "file name")?;
    w.u64(f.size);
    w.u32(f.crc32);
    Ok(())
}

fn decode_file_ref(r: &mut Reader<'_>) -> Result<FileRef, FormatError> {
    let at = r.offset();
    let area = match r.u8("file area")? {
        AREA_PRIVATE => FileArea::Private,
        AREA_SHARED => FileArea::Shared,
        t => return Err(r.corrupt_at(at, format!("unknown file area code={t}"))),
    };
    Ok(FileRef {
        area,
        name: r.string("file name")?,
        size: r.u64("file size")?,
        crc32: r.u32("file checksum")?,
    })
}

pub(crate) fn decode_body(r: &mut Reader<'_>) -> Result<Manifest, FormatError> {
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
    decode_keyed_at(r, false)
}

/// A keyed handle; `nested` inside changelog data (which must not nest again).
fn decode_keyed_at(r: &mut Reader<'_>, nested: bool) -> Result<KeyedStateHandle, FormatError> {
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
                let file = decode_file_ref(r)?;
                let nr = r.count(RANGE_LEN, "file key groups")?;
                let mut key_groups = Vec::with_capacity(nr);
                for _ in 0..nr {
                    key_groups.push(decode_range(r)?);
                }
                files.push(CanonicalFile { file, key_groups });
            }
            KeyedData::Canonical { files }
        }
        KEYED_DATA_ROCKS_NATIVE => {
            let nf = r.count(MIN_NATIVE_FILE, "files")?;
            let mut files = Vec::with_capacity(nf);
            for _ in 0..nf {
                let file = decode_file_ref(r)?;
                let local_name = r.string("local file name")?;
                files.push(NativeFile { file, local_name });
            }
            KeyedData::RocksNative { files }
        }
        KEYED_DATA_CHANGELOG if !nested => {
            let nm = r.count(MIN_KEYED, "materialized handles")?;
            let mut materialized = Vec::with_capacity(nm);
            for _ in 0..nm {
                materialized.push(decode_keyed_at(r, true)?);
            }
            let ns = r.count(MIN_SEGMENT, "changelog segments")?;
            let mut segments = Vec::with_capacity(ns);
            for _ in 0..ns {
                segments.push(ChangelogSegment {
                    file: decode_file_ref(r)?,
                    first_sqn: r.u64("segment first sequence number")?,
                    records: r.u64("segment records")?,
                });
            }
            KeyedData::Changelog {
                materialized,
                segments,
            }
        }
        KEYED_DATA_CHANGELOG => {
            return Err(r.corrupt_at(at, "nested changelog data"));
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
