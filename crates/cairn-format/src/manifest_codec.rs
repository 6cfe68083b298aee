//! The bytes of the manifest (format-spec/README.md, "Manifest").
//!
//! ```text
//! header (HEADER_LEN = 16)
//!   0   8  magic            "CAIRNMF\0"
//!   8   2  version          u16 = 1
//!  10   2  flags            u16: bits 0..=7 required, 8..=15 optional; bit 1
//!                             (FLAG_CHANGELOG) = the body holds changelog keyed data
//!  12   4  body_len         u32 = file length - 32
//! body (body_len bytes, see `encode_body`)
//! footer (FOOTER_LEN = 16)
//!   0   4  crc32            CRC32 of header and body
//!   4   2  version          u16, equal to the header's
//!   6   2  reserved         u16 = 0
//!   8   8  magic            "CAIRNMF\0"
//! ```

use crate::codec::{check_required_flags, corrupt, crc32, crc_matches, Reader, Version, Writer};
use crate::manifest_body::{decode_body, encode_body};
use crate::{FormatError, Manifest, MAX_MANIFEST_LEN};

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

/// Required flag: the body holds changelog keyed data (kind 3), added after kinds 1 and 2,
/// so that a reader that predates it refuses the manifest at its header.
const FLAG_CHANGELOG: u16 = 0x0002;
/// Required flags this build understands.
const KNOWN_REQUIRED_FLAGS: u16 = FLAG_CHANGELOG;

fn has_changelog(m: &Manifest) -> bool {
    m.operators
        .iter()
        .flat_map(|o| o.subtasks.iter())
        .filter_map(|s| s.keyed.as_ref())
        .any(|k| matches!(k.data, cairn_core::KeyedData::Changelog { .. }))
}

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
    let flags = if has_changelog(m) { FLAG_CHANGELOG } else { 0 };
    // Header: magic, version, flags, body length.
    out[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET].copy_from_slice(&MANIFEST_MAGIC);
    out[HEADER_VERSION_OFFSET..HEADER_FLAGS_OFFSET].copy_from_slice(&version);
    out[HEADER_FLAGS_OFFSET..HEADER_BODY_LEN_OFFSET].copy_from_slice(&flags.to_le_bytes());
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
    Version::check(
        (KIND, path),
        HEADER_VERSION_OFFSET,
        (version, footer_version),
    )?;
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
    check_required_flags(KIND, path, HEADER_FLAGS_OFFSET, flags, KNOWN_REQUIRED_FLAGS)?;
    let body = bytes.get(HEADER_LEN..footer_at).unwrap_or_default();
    let mut r = Reader::new(body, HEADER_LEN as u64, KIND, path);
    let m = decode_body(&mut r)?;
    r.finish("manifest body")?;
    if has_changelog(&m) != (flags & FLAG_CHANGELOG != 0) {
        return Err(h.corrupt_at(
            HEADER_FLAGS_OFFSET as u64,
            format!("the changelog flag does not match the body flags={flags:#06x}"),
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OperatorManifest, SubtaskManifest};
    use cairn_core::BINCODE_V1;
    use cairn_core::{
        CanonicalFile, CodecIdentity, FileArea, FileRef, KeyGroupRange, KeyedData,
        KeyedStateHandle, OperatorStateSnapshot, Redistribution, SnapshotType, StateKind,
        StateMeta,
    };

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
