//! The golden vectors: how each file in `format-spec/vectors/` is built from code, and what
//! each one must decode to (or fail with).
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_core::{
    key_group_for_key, BincodeCodec, CanonicalFile, Codec, CodecError, CodecIdentity, FileArea,
    FileRef, KeyGroupRange, KeyedData, KeyedStateHandle, NativeFile, OperatorStateSnapshot,
    Redistribution, SnapshotType, StateKind, StateMeta, TtlCodec, TtlValue, BINCODE_V1,
};
use cairn_format::{
    encode_list, encode_manifest, EntryRef, FileState, Manifest, OperatorManifest, StateFileWriter,
    SubtaskManifest,
};

pub const MAX_PARALLELISM: u32 = 8;
pub const PARALLELISM: u32 = 2;

pub fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../format-spec/vectors")
}

fn codec(type_name: &str, schema: Option<&str>) -> CodecIdentity {
    CodecIdentity {
        encoding: BINCODE_V1.into(),
        type_name: type_name.into(),
        version: 1,
        schema: schema.map(str::to_string),
    }
}

/// The states of operator `counter`: value, list and map.
pub fn states() -> Vec<StateMeta> {
    vec![
        StateMeta {
            name: "count".into(),
            kind: StateKind::Value,
            namespace: codec("()", None),
            value: codec("u64", Some("{\"root\":\"U64\",\"registry\":{}}")),
            user_key: None,
        },
        StateMeta {
            name: "events".into(),
            kind: StateKind::List,
            namespace: codec("()", None),
            value: codec("u64", None),
            user_key: None,
        },
        StateMeta {
            name: "tags".into(),
            kind: StateKind::Map,
            namespace: codec("()", None),
            value: codec("u64", None),
            user_key: Some(codec("alloc::string::String", None)),
        },
    ]
}

pub fn file_states() -> Vec<FileState> {
    states()
        .into_iter()
        .map(|s| FileState {
            name: s.name,
            kind: s.kind,
        })
        .collect()
}

fn enc_string(s: &str) -> Vec<u8> {
    BincodeCodec::<String>::new()
        .encode_to_vec(&s.to_string())
        .unwrap()
}

/// One logical entry: (key group, state, key, namespace, user key, value).
pub type Entry = (u32, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// The entries of subtask `index`: users whose key group the subtask owns, each with a
/// count, a list of events and two tags. Sorted as the file requires.
pub fn entries(index: u32) -> Vec<Entry> {
    let range = KeyGroupRange::for_subtask(MAX_PARALLELISM, PARALLELISM, index).unwrap();
    let mut out = Vec::new();
    for u in 0..6u64 {
        let key = enc_string(&format!("user-{u:02}"));
        let kg = key_group_for_key(&key, MAX_PARALLELISM);
        if !range.contains(kg) {
            continue;
        }
        out.push((
            kg,
            0,
            key.clone(),
            vec![],
            None,
            (u * 10).to_le_bytes().to_vec(),
        ));
        let events: Vec<Vec<u8>> = (0..u % 3 + 1)
            .map(|e| (u + e).to_le_bytes().to_vec())
            .collect();
        let mut list = Vec::new();
        encode_list(events.iter().map(Vec::as_slice), &mut list);
        out.push((kg, 1, key.clone(), vec![], None, list));
        for tag in ["blue", "red"] {
            out.push((
                kg,
                2,
                key.clone(),
                vec![],
                Some(enc_string(tag)),
                1u64.to_le_bytes().to_vec(),
            ));
        }
    }
    // A key alone in its key group, with one small entry: its block does not compress, so
    // the vector holds a stored block next to zstd ones.
    let used: Vec<u32> = out.iter().map(|e| e.0).collect();
    let solo = (0..100)
        .map(|n| enc_string(&format!("solo-{n}")))
        .find(|k| {
            let kg = key_group_for_key(k, MAX_PARALLELISM);
            range.contains(kg) && !used.contains(&kg)
        })
        .expect("a free key group for the solo key");
    out.push((
        key_group_for_key(&solo, MAX_PARALLELISM),
        0,
        solo,
        vec![],
        None,
        5u64.to_le_bytes().to_vec(),
    ));
    out.sort();
    out
}

pub fn state_file(entries: &[Entry]) -> Vec<u8> {
    let mut w = StateFileWriter::new(file_states()).unwrap();
    for (kg, s, k, n, u, v) in entries {
        w.add(&EntryRef {
            key_group: *kg,
            state: *s,
            key: k,
            namespace: n,
            user_key: u.as_deref(),
            value: v,
        })
        .unwrap();
    }
    w.finish().unwrap()
}

pub fn state_file_name(index: u32) -> String {
    format!("counter-{index}.state")
}

/// The savepoint's manifest, referencing the two state files (whose sizes and checksums
/// it records).
pub fn savepoint_manifest() -> Manifest {
    let mut counter = Vec::new();
    for i in 0..PARALLELISM {
        let range = KeyGroupRange::for_subtask(MAX_PARALLELISM, PARALLELISM, i).unwrap();
        let file = state_file(&entries(i));
        counter.push(SubtaskManifest {
            key_group_range: range,
            keyed: Some(KeyedStateHandle {
                key_group_range: range,
                key_codec: codec("alloc::string::String", None),
                states: states(),
                data: KeyedData::Canonical {
                    files: vec![CanonicalFile {
                        file: FileRef {
                            area: FileArea::Private,
                            name: state_file_name(i),
                            size: file.len() as u64,
                            crc32: crc32fast::hash(&file),
                        },
                        key_groups: vec![range],
                    }],
                },
            }),
            operator_state: vec![],
        });
    }
    let source = (0..PARALLELISM)
        .map(|i| SubtaskManifest {
            key_group_range: KeyGroupRange::for_subtask(MAX_PARALLELISM, PARALLELISM, i).unwrap(),
            keyed: None,
            operator_state: vec![
                OperatorStateSnapshot {
                    name: "offsets".into(),
                    mode: Redistribution::Split,
                    codec: codec("u64", None),
                    elements: vec![(100 + u64::from(i)).to_le_bytes().to_vec()],
                },
                OperatorStateSnapshot {
                    name: "watermark".into(),
                    mode: Redistribution::Union,
                    codec: codec("i64", None),
                    elements: vec![],
                },
            ],
        })
        .collect();
    Manifest {
        checkpoint_id: 7,
        snapshot_type: SnapshotType::Savepoint,
        timestamp_ms: 1_700_000_000_000,
        operators: vec![
            OperatorManifest {
                uid: "counter".into(),
                parallelism: PARALLELISM,
                max_parallelism: MAX_PARALLELISM,
                subtasks: counter,
            },
            OperatorManifest {
                uid: "source".into(),
                parallelism: PARALLELISM,
                max_parallelism: MAX_PARALLELISM,
                subtasks: source,
            },
        ],
    }
}

/// An incremental checkpoint's manifest: one subtask reads key groups from a shared file of
/// an earlier checkpoint and from a private file of its own.
pub fn checkpoint_manifest() -> Manifest {
    let range = KeyGroupRange::all(4);
    let file = |area, name: &str, size, crc32, ranges: Vec<KeyGroupRange>| CanonicalFile {
        file: FileRef {
            area,
            name: name.into(),
            size,
            crc32,
        },
        key_groups: ranges,
    };
    Manifest {
        checkpoint_id: 3,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: 1_700_000_003_000,
        operators: vec![OperatorManifest {
            uid: "window-sum".into(),
            parallelism: 1,
            max_parallelism: 4,
            subtasks: vec![SubtaskManifest {
                key_group_range: range,
                keyed: Some(KeyedStateHandle {
                    key_group_range: range,
                    key_codec: codec("u32", None),
                    states: vec![StateMeta {
                        name: "sum".into(),
                        kind: StateKind::Reducing,
                        namespace: codec("cairn::TimeWindow", None),
                        value: codec("i64", None),
                        user_key: None,
                    }],
                    data: KeyedData::Canonical {
                        files: vec![
                            file(
                                FileArea::Shared,
                                "window-sum/0a1b2c.state",
                                4096,
                                0xdead_beef,
                                vec![KeyGroupRange::new(0, 1), KeyGroupRange::new(2, 3)],
                            ),
                            file(
                                FileArea::Private,
                                "window-sum-0.state",
                                512,
                                0x0123_4567,
                                vec![KeyGroupRange::new(1, 2), KeyGroupRange::new(3, 4)],
                            ),
                        ],
                    },
                }),
                operator_state: vec![],
            }],
        }],
    }
}

/// A native RocksDB checkpoint's manifest: two subtasks, each with its checkpoint directory's
/// SST files (shared, content-named; one shared by both checkpoints' lineage) and its
/// private MANIFEST, CURRENT and OPTIONS files.
pub fn native_manifest() -> Manifest {
    let native = |area, name: &str, local: &str, size, crc32| NativeFile {
        file: FileRef {
            area,
            name: name.into(),
            size,
            crc32,
        },
        local_name: local.into(),
    };
    let subtask = |i: u32| {
        let range = KeyGroupRange::for_subtask(8, 2, i).unwrap();
        SubtaskManifest {
            key_group_range: range,
            keyed: Some(KeyedStateHandle {
                key_group_range: range,
                key_codec: codec("alloc::string::String", None),
                states: vec![StateMeta {
                    name: "count".into(),
                    kind: StateKind::Value,
                    namespace: codec("()", None),
                    value: codec("u64", None),
                    user_key: None,
                }],
                data: KeyedData::RocksNative {
                    // In the order of their local names, as the backend lists them: a
                    // complete log, the SST file, the empty last log (the checkpoint
                    // started a new log before copying, `checkpoint_wal`), the rest.
                    files: vec![
                        native(
                            FileArea::Shared,
                            &format!("log/{i}c4d5e6f708192a3b-2048.log"),
                            "000010.log",
                            2048,
                            0x9999_aaaa + i,
                        ),
                        native(
                            FileArea::Shared,
                            &format!("sst/{i}f3e2d1c0b0a09080-4096.sst"),
                            "000012.sst",
                            4096,
                            0x1111_2222 + i,
                        ),
                        native(
                            FileArea::Shared,
                            "log/00000000000000000000000000000000-0.log",
                            "000014.log",
                            0,
                            0,
                        ),
                        native(
                            FileArea::Private,
                            &format!("rocks-{i}/CURRENT"),
                            "CURRENT",
                            16,
                            0x3333_4444,
                        ),
                        native(
                            FileArea::Private,
                            &format!("rocks-{i}/MANIFEST-000005"),
                            "MANIFEST-000005",
                            301,
                            0x5555_6666,
                        ),
                        native(
                            FileArea::Private,
                            &format!("rocks-{i}/OPTIONS-000007"),
                            "OPTIONS-000007",
                            7022,
                            0x7777_8888,
                        ),
                    ],
                },
            }),
            operator_state: vec![],
        }
    };
    Manifest {
        checkpoint_id: 12,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: 1_700_000_012_000,
        operators: vec![OperatorManifest {
            uid: "count".into(),
            parallelism: 2,
            max_parallelism: 8,
            subtasks: vec![subtask(0), subtask(1)],
        }],
    }
}

/// A native savepoint's manifest (Flink's `--type native`): savepoint 13 of the same
/// operator as [`native_manifest`], self-contained, so every file of each subtask's
/// RocksDB checkpoint directory is private, under that directory's name and its local name
/// (the empty last log too: each subtask has its own copy).
pub fn native_savepoint_manifest() -> Manifest {
    let mut m = native_manifest();
    m.checkpoint_id = 13;
    m.snapshot_type = SnapshotType::Savepoint;
    m.timestamp_ms = 1_700_000_013_000;
    for (i, st) in m.operators[0].subtasks.iter_mut().enumerate() {
        let Some(KeyedStateHandle {
            data: KeyedData::RocksNative { files },
            ..
        }) = &mut st.keyed
        else {
            unreachable!("native_manifest has native handles");
        };
        for f in files {
            f.file.area = FileArea::Private;
            f.file.name = format!("rocks-{i}/{}", f.local_name);
        }
    }
    m
}

pub fn list_value() -> Vec<u8> {
    let mut v = Vec::new();
    encode_list([&b"first"[..], b"", b"third element"], &mut v);
    v
}

/// The codec of the TTL vectors' values: a bincode `String` with a TTL (encoding
/// `cairn-ttl1+bincode1-fixint-le`).
pub fn ttl_string_codec() -> TtlCodec<String> {
    TtlCodec::new(Arc::new(BincodeCodec::<String>::new()))
}

/// The content of `ttl-value.bin`.
pub const TTL_VALUE: (u64, &str) = (1_700_000_000_123, "last seen");

/// The content of `ttl-list-value.bin`: each element with its own stamp (the second added
/// a minute after the first; the third, empty, at the first's time).
pub const TTL_LIST: [(u64, &str); 3] = [
    (1_700_000_000_000, "first"),
    (1_700_000_060_000, "second"),
    (1_700_000_000_000, ""),
];

fn ttl_encode(stamped_ms: u64, value: &str) -> Vec<u8> {
    ttl_string_codec()
        .encode_to_vec(&TtlValue {
            stamped_ms,
            value: value.to_string(),
        })
        .unwrap()
}

/// One TTL value, as `TtlCodec` writes it.
pub fn ttl_value() -> Vec<u8> {
    ttl_encode(TTL_VALUE.0, TTL_VALUE.1)
}

/// A list value whose elements are TTL values.
pub fn ttl_list_value() -> Vec<u8> {
    let elements: Vec<Vec<u8>> = TTL_LIST.iter().map(|(t, v)| ttl_encode(*t, v)).collect();
    let mut out = Vec::new();
    encode_list(elements.iter().map(Vec::as_slice), &mut out);
    out
}

/// Which decoder a vector is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Manifest,
    StateFile,
    ListValue,
    /// A value of a state with a TTL (`TtlCodec` over a bincode `String`).
    TtlValue,
    /// A list value whose elements are such TTL values.
    TtlListValue,
}

/// A golden vector: its path under `format-spec/vectors/`, kind and bytes.
pub struct Vector {
    pub name: String,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
}

/// Every valid vector.
pub fn valid_vectors() -> Vec<Vector> {
    let mut v = vec![Vector {
        name: "savepoint/_metadata".into(),
        kind: FileKind::Manifest,
        bytes: encode_manifest(&savepoint_manifest()).unwrap(),
    }];
    for i in 0..PARALLELISM {
        v.push(Vector {
            name: format!("savepoint/{}", state_file_name(i)),
            kind: FileKind::StateFile,
            bytes: state_file(&entries(i)),
        });
    }
    v.push(Vector {
        name: "checkpoint-incremental.manifest".into(),
        kind: FileKind::Manifest,
        bytes: encode_manifest(&checkpoint_manifest()).unwrap(),
    });
    v.push(Vector {
        name: "checkpoint-native.manifest".into(),
        kind: FileKind::Manifest,
        bytes: encode_manifest(&native_manifest()).unwrap(),
    });
    v.push(Vector {
        name: "savepoint-native.manifest".into(),
        kind: FileKind::Manifest,
        bytes: encode_manifest(&native_savepoint_manifest()).unwrap(),
    });
    v.push(Vector {
        name: "empty.state".into(),
        kind: FileKind::StateFile,
        bytes: state_file(&[]),
    });
    v.push(Vector {
        name: "list-value.bin".into(),
        kind: FileKind::ListValue,
        bytes: list_value(),
    });
    v
}

/// The vectors of values of states with a TTL. They are not in [`valid_vectors`]: like a
/// list value they have no checksum of their own (the block's CRC covers them), and a
/// flipped bit in a stamp is another valid stamp, so `corruption.rs` cannot expect every
/// flip to be detected; `golden.rs` checks their truncations instead.
pub fn ttl_vectors() -> Vec<Vector> {
    vec![
        Vector {
            name: "ttl-value.bin".into(),
            kind: FileKind::TtlValue,
            bytes: ttl_value(),
        },
        Vector {
            name: "ttl-list-value.bin".into(),
            kind: FileKind::TtlListValue,
            bytes: ttl_list_value(),
        },
    ]
}

/// Which error a corrupt vector must give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Corrupt,
    UnsupportedVersion,
    UnsupportedFeature,
    /// The value's codec refuses to decode it (values have no decoder in `cairn-format`).
    CodecDecode,
}

impl Expect {
    pub fn matches(self, e: &DecodeError) -> bool {
        use cairn_format::FormatError as F;
        match (self, e) {
            (Expect::Corrupt, DecodeError::Format(F::Corrupt { .. })) => true,
            (Expect::UnsupportedVersion, DecodeError::Format(F::UnsupportedVersion { .. })) => true,
            (Expect::UnsupportedFeature, DecodeError::Format(F::UnsupportedFeature { .. })) => true,
            (Expect::CodecDecode, DecodeError::Codec(c)) => c.op == "decode",
            _ => false,
        }
    }
}

/// Why a vector did not decode: the format's decoders, or (for TTL values) the value's
/// codec. Displays as the underlying error.
#[derive(Debug)]
pub enum DecodeError {
    Format(cairn_format::FormatError),
    Codec(CodecError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Format(e) => fmt::Display::fmt(e, f),
            DecodeError::Codec(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl From<cairn_format::FormatError> for DecodeError {
    fn from(e: cairn_format::FormatError) -> Self {
        DecodeError::Format(e)
    }
}

impl From<CodecError> for DecodeError {
    fn from(e: CodecError) -> Self {
        DecodeError::Codec(e)
    }
}

/// A corrupt vector and the error its decoding must give (the exact messages are pinned in
/// `vectors/corrupt/errors.txt`).
pub struct CorruptVector {
    pub vector: Vector,
    /// What is wrong (for `vectors/README.md`).
    pub what: &'static str,
    pub expect: Expect,
}

fn set(bytes: &mut [u8], at: usize, v: &[u8]) {
    bytes[at..at + v.len()].copy_from_slice(v);
}

/// Recomputes the manifest's CRC after an edit (to build files that are well-checksummed
/// but otherwise unreadable).
fn fix_manifest_crc(b: &mut [u8]) {
    let n = b.len() - 16;
    let crc = crc32fast::hash(&b[..n]);
    set(b, n, &crc.to_le_bytes());
}

fn fix_state_file_crc(b: &mut [u8]) {
    let f = b.len() - 64;
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..16]);
    h.update(&b[f..f + 48]);
    let crc = h.finalize();
    set(b, f + 48, &crc.to_le_bytes());
}

pub fn corrupt_vectors() -> Vec<CorruptVector> {
    use Expect::*;
    let manifest = encode_manifest(&savepoint_manifest()).unwrap();
    let sf = state_file(&entries(0));
    let mut out = Vec::new();
    let mut push = |name: &str, kind, bytes, what, expect| {
        out.push(CorruptVector {
            vector: Vector {
                name: format!("corrupt/{name}"),
                kind,
                bytes,
            },
            what,
            expect,
        })
    };

    let mut b = manifest.clone();
    b[40] ^= 0x10;
    push(
        "manifest-bit-flip",
        FileKind::Manifest,
        b,
        "bit 4 of byte 40 (in the body) flipped",
        Corrupt,
    );
    push(
        "manifest-truncated",
        FileKind::Manifest,
        manifest[..manifest.len() - 1].to_vec(),
        "last byte removed",
        Corrupt,
    );
    let mut b = manifest.clone();
    let n = b.len();
    set(&mut b, 8, &2u16.to_le_bytes());
    set(&mut b, n - 12, &2u16.to_le_bytes());
    fix_manifest_crc(&mut b);
    push(
        "manifest-v2",
        FileKind::Manifest,
        b,
        "version 2 in header and footer, checksum valid: as a newer writer would write",
        UnsupportedVersion,
    );
    let mut b = manifest.clone();
    set(&mut b, 10, &1u16.to_le_bytes());
    fix_manifest_crc(&mut b);
    push(
        "manifest-required-flag",
        FileKind::Manifest,
        b,
        "unknown required flag bit 0 set, checksum valid",
        UnsupportedFeature,
    );

    let mut b = sf.clone();
    b[41] ^= 0x01;
    push(
        "state-file-bit-flip-table",
        FileKind::StateFile,
        b,
        "bit 0 of byte 41 (in the state table block) flipped: `open` fails",
        Corrupt,
    );
    let mut b = sf.clone();
    b[100] ^= 0x80;
    push("state-file-bit-flip-data", FileKind::StateFile, b, "bit 7 of byte 100 (in the first data block) flipped: `open` succeeds, `scan`/`verify_all` fail", Corrupt);
    push(
        "state-file-truncated",
        FileKind::StateFile,
        sf[..sf.len() - 1].to_vec(),
        "last byte removed",
        Corrupt,
    );
    let mut b = sf.clone();
    let n = b.len();
    set(&mut b, 8, &2u16.to_le_bytes());
    set(&mut b, n - 12, &2u16.to_le_bytes());
    fix_state_file_crc(&mut b);
    push(
        "state-file-v2",
        FileKind::StateFile,
        b,
        "version 2 in header and footer, checksum valid: as a newer writer would write",
        UnsupportedVersion,
    );
    let mut b = sf.clone();
    set(&mut b, 10, &4u16.to_le_bytes());
    fix_state_file_crc(&mut b);
    push(
        "state-file-required-flag",
        FileKind::StateFile,
        b,
        "unknown required flag bit 2 set, checksum valid",
        UnsupportedFeature,
    );

    let mut b = list_value();
    b.push(0);
    push(
        "list-value-trailing",
        FileKind::ListValue,
        b,
        "one byte appended",
        Corrupt,
    );
    push(
        "ttl-value-short",
        FileKind::TtlValue,
        ttl_value()[..7].to_vec(),
        "the first 7 bytes: too short for the 8-byte timestamp",
        CodecDecode,
    );
    out
}

/// Decodes a vector with the decoder of its kind, verifying everything.
pub fn decode(kind: FileKind, bytes: &[u8], path: &str) -> Result<(), DecodeError> {
    match kind {
        FileKind::Manifest => cairn_format::decode_manifest(bytes, path).map(drop)?,
        FileKind::StateFile => {
            let r =
                cairn_format::StateFileReader::open(bytes::Bytes::copy_from_slice(bytes), path)?;
            r.verify_all()?
        }
        FileKind::ListValue => cairn_format::decode_list(bytes).map(drop)?,
        FileKind::TtlValue => ttl_string_codec().decode(bytes).map(drop)?,
        FileKind::TtlListValue => {
            let codec = ttl_string_codec();
            for element in cairn_format::decode_list(bytes)? {
                codec.decode(element)?;
            }
        }
    }
    Ok(())
}
