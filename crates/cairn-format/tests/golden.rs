//! The golden vectors in `format-spec/vectors/` pin the exact bytes of format v1: each is
//! regenerated from code and compared byte for byte, and each committed file must decode to
//! what the code says (or fail with the pinned error).
//!
//! Regenerate after an intended format change with
//! `CAIRN_REGENERATE_VECTORS=1 cargo test -p cairn-format --test golden`.

mod common;

use std::fs;

use bytes::Bytes;
use cairn_core::{Codec, FileArea, KeyGroupRange};
use cairn_format::{decode_list, decode_manifest, FormatError, StateFileReader};
use common::*;

fn regenerate() -> bool {
    std::env::var_os("CAIRN_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// With `CAIRN_REGENERATE_VECTORS=1`, this test rewrites every vector (and the other tests
/// of this file do nothing, so they never read a half-written directory).
#[test]
fn regenerate_vectors() {
    if !regenerate() {
        return;
    }
    let write = |name: &str, bytes: &[u8]| {
        let path = vectors_dir().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    };
    for v in valid_vectors().into_iter().chain(ttl_vectors()) {
        write(&v.name, &v.bytes);
    }
    let mut errors = String::new();
    for c in corrupt_vectors() {
        write(&c.vector.name, &c.vector.bytes);
        let e = decode(
            c.vector.kind,
            &c.vector.bytes,
            &format!("vectors/{}", c.vector.name),
        )
        .expect_err(&c.vector.name);
        errors.push_str(&format!("{}: {e}\n", c.vector.name));
    }
    write("corrupt/errors.txt", errors.as_bytes());
}

fn check_bytes(name: &str, bytes: &[u8]) {
    let path = vectors_dir().join(name);
    let committed = fs::read(&path).unwrap_or_else(|e| {
        panic!("missing vector {name} ({e}); run with CAIRN_REGENERATE_VECTORS=1")
    });
    if committed != bytes {
        let at = committed
            .iter()
            .zip(bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(committed.len().min(bytes.len()));
        panic!(
            "vector {name} differs from what the code writes at byte {at} (committed {} bytes, code {} bytes); \
             if the format change is intended, bump the version or regenerate with CAIRN_REGENERATE_VECTORS=1",
            committed.len(),
            bytes.len()
        );
    }
}

fn read(name: &str) -> Vec<u8> {
    fs::read(vectors_dir().join(name)).unwrap()
}

#[test]
fn valid_vectors_are_byte_exact() {
    if regenerate() {
        return;
    }
    for v in valid_vectors() {
        assert!(
            v.bytes.len() <= 3 * 1024,
            "vector {} too large: {}",
            v.name,
            v.bytes.len()
        );
        check_bytes(&v.name, &v.bytes);
    }
}

#[test]
fn ttl_vectors_are_byte_exact() {
    if regenerate() {
        return;
    }
    for v in ttl_vectors() {
        check_bytes(&v.name, &v.bytes);
    }
}

#[test]
fn corrupt_vectors_are_byte_exact_and_fail_as_pinned() {
    if regenerate() {
        return;
    }
    let mut errors = String::new();
    for c in corrupt_vectors() {
        check_bytes(&c.vector.name, &c.vector.bytes);
        let path = format!("vectors/{}", c.vector.name);
        let e = decode(c.vector.kind, &read(&c.vector.name), &path).expect_err(&c.vector.name);
        assert!(
            c.expect.matches(&e),
            "{}: expected {:?}, got {e}",
            c.vector.name,
            c.expect
        );
        errors.push_str(&format!("{}: {e}\n", c.vector.name));
    }
    check_bytes("corrupt/errors.txt", errors.as_bytes());
}

#[test]
fn committed_savepoint_decodes_to_the_logical_content() {
    if regenerate() {
        return;
    }
    let m = decode_manifest(&read("savepoint/_metadata"), "savepoint/_metadata").unwrap();
    assert_eq!(m, savepoint_manifest());
    // Every referenced file exists in the savepoint directory with the recorded size and
    // checksum, and holds exactly the entries of its subtask.
    for (i, st) in m.operators[0].subtasks.iter().enumerate() {
        let handle = st.keyed.as_ref().unwrap();
        let f = handle.files().next().unwrap();
        let bytes = read(&format!("savepoint/{}", f.name));
        assert_eq!(
            (bytes.len() as u64, crc32fast::hash(&bytes)),
            (f.size, f.crc32)
        );
        let r = StateFileReader::open(Bytes::from(bytes), &f.name).unwrap();
        assert_eq!(r.states(), file_states());
        let mut got = Vec::new();
        r.scan(
            KeyGroupRange::all(MAX_PARALLELISM),
            |e| -> Result<(), FormatError> {
                got.push((
                    e.key_group,
                    e.state,
                    e.key.to_vec(),
                    e.namespace.to_vec(),
                    e.user_key.map(<[u8]>::to_vec),
                    e.value.to_vec(),
                ));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, entries(i as u32));
        assert!(r
            .key_groups()
            .iter()
            .all(|k| handle.key_group_range.contains(k.key_group)));
    }
    let m = decode_manifest(&read("checkpoint-incremental.manifest"), "c").unwrap();
    assert_eq!(m, checkpoint_manifest());
    let m = decode_manifest(&read("checkpoint-native.manifest"), "n").unwrap();
    assert_eq!(m, native_manifest());
    let m = decode_manifest(&read("savepoint-native.manifest"), "s").unwrap();
    assert_eq!(m, native_savepoint_manifest());
    assert!(m.files().all(|f| f.area == FileArea::Private));
    let r = StateFileReader::open(Bytes::from(read("empty.state")), "empty.state").unwrap();
    assert!(r.key_groups().is_empty());
    r.verify_all().unwrap();
    assert_eq!(
        decode_list(&read("list-value.bin")).unwrap(),
        vec![&b"first"[..], b"", b"third element"]
    );
}

/// `value` as the default codec writes a `String`: `u64` length, then UTF-8.
fn bincode_str(value: &str) -> Vec<u8> {
    [&(value.len() as u64).to_le_bytes()[..], value.as_bytes()].concat()
}

#[test]
fn committed_ttl_vectors_decode_to_the_logical_content() {
    if regenerate() {
        return;
    }
    let codec = ttl_string_codec();
    assert_eq!(
        codec.identity().encoding,
        format!(
            "{}{}",
            cairn_core::TTL_ENCODING_PREFIX,
            cairn_core::BINCODE_V1
        )
    );
    assert_eq!(codec.identity().encoding, "cairn-ttl1+bincode1-fixint-le");
    // The layout of format-spec/README.md, "Values of states with a TTL", written out by
    // hand: the stamp as 8 little-endian bytes, then the value in its own encoding.
    let (stamp, value) = TTL_VALUE;
    let bytes = read("ttl-value.bin");
    assert_eq!(
        bytes,
        [&stamp.to_le_bytes()[..], &bincode_str(value)].concat()
    );
    assert_eq!(bytes.len(), 8 + 8 + value.len());
    assert_eq!(cairn_core::ttl_stamp_of(&bytes), Some(stamp));
    assert_eq!(
        codec.decode(&bytes).unwrap(),
        cairn_core::TtlValue {
            stamped_ms: stamp,
            value: value.to_string()
        }
    );
    // A list value of TTL values: every element carries its own stamp inside its
    // length-prefixed bytes.
    let bytes = read("ttl-list-value.bin");
    let elements = decode_list(&bytes).unwrap();
    assert_eq!(elements.len(), TTL_LIST.len());
    for (element, (stamp, value)) in elements.iter().zip(TTL_LIST) {
        assert_eq!(
            *element,
            [&stamp.to_le_bytes()[..], &bincode_str(value)].concat()
        );
        let decoded = codec.decode(element).unwrap();
        assert_eq!((decoded.stamped_ms, decoded.value.as_str()), (stamp, value));
    }
    let stamps: std::collections::BTreeSet<u64> = TTL_LIST.iter().map(|e| e.0).collect();
    assert!(stamps.len() > 1, "the elements' stamps differ");
}

/// Every truncation and an appended byte of a TTL vector fail to decode, with an error
/// (values have no checksum; a flipped bit may be another valid value, so flips are not
/// checked).
#[test]
fn damaged_ttl_vectors_are_errors() {
    for v in ttl_vectors() {
        for cut in 0..v.bytes.len() {
            let e = decode(v.kind, &v.bytes[..cut], &v.name);
            assert!(e.is_err(), "{}: truncated at {cut} decoded", v.name);
        }
        let mut long = v.bytes.clone();
        long.push(0);
        assert!(
            decode(v.kind, &long, &v.name).is_err(),
            "{}: appended",
            v.name
        );
        decode(v.kind, &v.bytes, &v.name).unwrap();
    }
    // Too short for the stamp: the codec says so, naming the encoding.
    let e = decode(FileKind::TtlValue, &ttl_value()[..7], "v")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "codec alloc::string::String@v1 (cairn-ttl1+bincode1-fixint-le) failed to decode: \
         7 bytes cannot hold the 8-byte timestamp of a value with a TTL"
    );
}

#[test]
fn savepoint_vector_uses_both_block_encodings() {
    if regenerate() {
        return;
    }
    // The vectors must exercise zstd and stored blocks: the compression byte of each data
    // block is at its offset in the index.
    let bytes = read("savepoint/counter-0.state");
    let r = StateFileReader::open(Bytes::from(bytes.clone()), "s").unwrap();
    let kgs = r.key_groups();
    assert!(kgs.len() >= 2);
    let mut codecs = std::collections::BTreeSet::new();
    let mut offset = 16 + 20 + 30 + 4; // header, state table block (30-byte payload)
    for k in kgs {
        codecs.insert(bytes[offset]);
        offset += k.bytes as usize;
    }
    assert_eq!(
        codecs,
        [0u8, 1].into_iter().collect(),
        "compression codes used"
    );
}

// ---- changelog (keyed-data kind 3) -------------------------------------------------------

fn changelog_states() -> Vec<cairn_format::FileState> {
    use cairn_format::FileState;
    vec![
        FileState {
            name: "count".into(),
            kind: cairn_core::StateKind::Value,
        },
        FileState {
            name: "tags".into(),
            kind: cairn_core::StateKind::Map,
        },
    ]
}

/// The `count` operator's changes in the order they happened, by block: value sets of
/// `alice` in key group 1 around a map put of `carol` in key group 5; a map remove in key
/// group 5; a clear of `bob` in key group 1.
fn changelog_blocks() -> Vec<Vec<cairn_format::ChangelogRecord<'static>>> {
    use cairn_format::{ChangelogOp, ChangelogRecord};
    let rec = |key_group,
               state,
               op,
               key: &'static [u8],
               uk: Option<&'static [u8]>,
               v: Option<&'static [u8]>| ChangelogRecord {
        key_group,
        state,
        op,
        key,
        namespace: b"",
        user_key: uk,
        value: v,
    };
    vec![
        vec![
            rec(
                1,
                0,
                ChangelogOp::Set,
                b"alice",
                None,
                Some(&[7, 0, 0, 0, 0, 0, 0, 0]),
            ),
            rec(
                5,
                1,
                ChangelogOp::MapPut,
                b"carol",
                Some(b"red"),
                Some(b"1"),
            ),
            rec(
                1,
                0,
                ChangelogOp::Set,
                b"alice",
                None,
                Some(&[8, 0, 0, 0, 0, 0, 0, 0]),
            ),
        ],
        vec![rec(
            5,
            1,
            ChangelogOp::MapRemove,
            b"carol",
            Some(b"blue"),
            None,
        )],
        vec![rec(1, 0, ChangelogOp::Clear, b"bob", None, None)],
    ]
}

/// The version 2 segment of [`changelog_blocks`], written with `add_encoded` from v2 record
/// bytes (and checked against `add_chunk`, which must write the same bytes).
fn changelog_segment() -> Vec<u8> {
    use cairn_format::{encode_changelog_record_v2, ChangelogChunk, ChangelogSegmentWriter};
    let mut w = ChangelogSegmentWriter::new(changelog_states(), 1000).unwrap();
    let mut by_chunk = ChangelogSegmentWriter::new(changelog_states(), 1000).unwrap();
    for records in changelog_blocks() {
        let mut block = Vec::new();
        let mut chunk = ChangelogChunk::new();
        for r in &records {
            encode_changelog_record_v2(r, &mut block);
            chunk.push(r);
        }
        w.add_encoded(records.len() as u32, &block).unwrap();
        by_chunk.add_chunk(&chunk).unwrap();
    }
    let bytes = w.finish().unwrap();
    assert_eq!(
        bytes,
        by_chunk.finish().unwrap(),
        "add_chunk and add_encoded"
    );
    bytes
}

/// Checkpoint 21 of `count` (parallelism 1, max parallelism 8): a materialized canonical
/// handle (a shared file) plus two segments.
fn changelog_manifest() -> cairn_format::Manifest {
    use cairn_core::*;
    use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
    let codec = |t: &str| CodecIdentity {
        encoding: BINCODE_V1.into(),
        type_name: t.into(),
        version: 1,
        schema: None,
    };
    let range = KeyGroupRange::all(8);
    let states = vec![StateMeta {
        name: "count".into(),
        kind: StateKind::Value,
        namespace: codec("()"),
        value: codec("u64"),
        user_key: None,
    }];
    let shared = |name: &str, size, crc32| FileRef {
        area: FileArea::Shared,
        name: name.into(),
        size,
        crc32,
    };
    let seg = changelog_segment();
    Manifest {
        checkpoint_id: 21,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: 1_700_000_000_021,
        operators: vec![OperatorManifest {
            uid: "count".into(),
            parallelism: 1,
            max_parallelism: 8,
            subtasks: vec![SubtaskManifest {
                key_group_range: range,
                keyed: Some(KeyedStateHandle {
                    key_group_range: range,
                    key_codec: codec("alloc::string::String"),
                    states: states.clone(),
                    data: KeyedData::Changelog {
                        materialized: vec![KeyedStateHandle {
                            key_group_range: range,
                            key_codec: codec("alloc::string::String"),
                            states,
                            data: KeyedData::Canonical {
                                files: vec![CanonicalFile {
                                    file: shared("hm-count-1-0_8-00ab.cst", 812, 0x0102_0304),
                                    key_groups: vec![range],
                                }],
                            },
                        }],
                        segments: vec![
                            ChangelogSegment {
                                file: shared(
                                    "changelog/count-00ab/0000000003.cls",
                                    455,
                                    0x0a0b_0c0d,
                                ),
                                first_sqn: 990,
                                records: 10,
                            },
                            ChangelogSegment {
                                file: shared(
                                    "changelog/count-00ab/0000000004.cls",
                                    seg.len() as u64,
                                    crc32fast::hash(&seg),
                                ),
                                first_sqn: 1000,
                                records: 5,
                            },
                        ],
                    },
                }),
                operator_state: vec![],
            }],
        }],
    }
}

fn changelog_vectors() -> Vec<(&'static str, Vec<u8>)> {
    let seg = changelog_segment();
    let mut torn = seg.clone();
    torn.truncate(seg.len() - 20);
    vec![
        ("changelog-segment.cls", seg),
        (
            "checkpoint-changelog.manifest",
            cairn_format::encode_manifest(&changelog_manifest()).unwrap(),
        ),
        ("corrupt/changelog-segment-torn", torn),
    ]
}

#[test]
fn changelog_vectors_are_byte_exact_and_decode() {
    if regenerate() {
        for (name, bytes) in changelog_vectors() {
            fs::write(vectors_dir().join(name), bytes).unwrap();
        }
        return;
    }
    for (name, bytes) in changelog_vectors() {
        check_bytes(name, &bytes);
    }
    let m = decode_manifest(
        &read("checkpoint-changelog.manifest"),
        "checkpoint-changelog.manifest",
    )
    .unwrap();
    assert_eq!(m, changelog_manifest());
    // The header announces changelog data with required flag bit 1.
    assert_eq!(&read("checkpoint-changelog.manifest")[10..12], &[2, 0]);
    use cairn_format::ChangelogOp::*;
    type Seen = (u32, u32, cairn_format::ChangelogOp, Vec<u8>);
    let scan = |name: &str, range: KeyGroupRange| -> (u16, u64, u64, Vec<Seen>) {
        let r = cairn_format::ChangelogSegmentReader::open(Bytes::from(read(name)), name).unwrap();
        let mut got = Vec::new();
        r.scan::<FormatError, _>(range, |rec| {
            got.push((rec.key_group, rec.state, rec.op, rec.key.to_vec()));
            Ok(())
        })
        .unwrap();
        (r.version(), r.first_sqn(), r.record_count(), got)
    };
    // Version 2: the records in the order they happened, filtered by key group.
    let (version, first_sqn, count, got) = scan("changelog-segment.cls", KeyGroupRange::all(8));
    assert_eq!((version, first_sqn, count), (2, 1000, 5));
    let expected: Vec<Seen> = changelog_blocks()
        .iter()
        .flatten()
        .map(|r| (r.key_group, r.state, r.op, r.key.to_vec()))
        .collect();
    assert_eq!(got, expected);
    let (.., got) = scan("changelog-segment.cls", KeyGroupRange::new(0, 4));
    assert_eq!(
        got,
        vec![
            (1, 0, Set, b"alice".to_vec()),
            (1, 0, Set, b"alice".to_vec()),
            (1, 0, Clear, b"bob".to_vec()),
        ]
    );
    // Version 1 (read only): the same changes grouped by key group, still decoding. No
    // code writes it any more, so its bytes are pinned here.
    let v1 = read("changelog-segment-v1.cls");
    assert_eq!((v1.len(), crc32fast::hash(&v1)), (328, 0xd605_0adf));
    let (version, first_sqn, count, got) = scan("changelog-segment-v1.cls", KeyGroupRange::all(8));
    assert_eq!((version, first_sqn, count), (1, 1000, 5));
    assert_eq!(
        got,
        vec![
            (1, 0, Set, b"alice".to_vec()),
            (1, 0, Set, b"alice".to_vec()),
            (1, 0, Clear, b"bob".to_vec()),
            (5, 1, MapPut, b"carol".to_vec()),
            (5, 1, MapRemove, b"carol".to_vec()),
        ]
    );
    let (.., got) = scan("changelog-segment-v1.cls", KeyGroupRange::new(4, 8));
    assert_eq!(got.len(), 2);
    let e = cairn_format::ChangelogSegmentReader::open(
        Bytes::from(read("corrupt/changelog-segment-torn")),
        "vectors/corrupt/changelog-segment-torn",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        format!(
            "corrupt changelog segment: bad footer magic (truncated or torn segment) path=vectors/corrupt/changelog-segment-torn offset={}",
            read("corrupt/changelog-segment-torn").len() - 8
        )
    );
}
