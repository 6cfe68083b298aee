//! Structured input (via `arbitrary`) shaped into a valid manifest → encode → decode →
//! equal. Checksums stay on.
#![no_main]

use arbitrary::Arbitrary;
use cairn_core::{
    CanonicalFile, CodecIdentity, FileArea, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle,
    OperatorStateSnapshot, Redistribution, SnapshotType, StateKind, StateMeta,
};
use cairn_format::{decode_manifest, encode_manifest, Manifest, OperatorManifest, SubtaskManifest};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    checkpoint_id: u64,
    savepoint: bool,
    timestamp_ms: u64,
    operators: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Op {
    uid: String,
    parallelism: u8,
    extra_key_groups: u8,
    subtasks: Vec<Sub>,
}

#[derive(Arbitrary, Debug)]
struct Sub {
    keyed: Option<Keyed>,
    operator_state: Vec<(String, bool, Codec, Vec<Vec<u8>>)>,
}

#[derive(Arbitrary, Debug)]
struct Keyed {
    key_codec: Codec,
    states: Vec<(String, u8, Codec, Codec, Codec)>,
    /// Where to cut the range and which of the files gets each piece.
    cuts: Vec<(u8, u8)>,
    files: Vec<(bool, u64, u32)>,
}

#[derive(Arbitrary, Debug, Clone)]
struct Codec {
    encoding: String,
    type_name: String,
    version: u32,
    schema: Option<String>,
}

impl Codec {
    fn identity(&self) -> CodecIdentity {
        CodecIdentity {
            encoding: self.encoding.clone(),
            type_name: self.type_name.clone(),
            version: self.version,
            schema: self.schema.clone(),
        }
    }
}

fn keyed(k: &Keyed, range: KeyGroupRange, savepoint: bool) -> KeyedStateHandle {
    let mut states: Vec<StateMeta> = k
        .states
        .iter()
        .map(|(name, code, ns, v, uk)| {
            let kind = StateKind::from_code(code % 5 + 1).unwrap_or(StateKind::Value);
            StateMeta {
                name: name.clone(),
                kind,
                namespace: ns.identity(),
                value: v.identity(),
                user_key: (kind == StateKind::Map).then(|| uk.identity()),
            }
        })
        .collect();
    states.sort_by(|a, b| a.name.cmp(&b.name));
    states.dedup_by(|a, b| a.name == b.name);
    let nfiles = k.files.len().clamp(1, 4);
    let mut bounds: Vec<(u32, usize)> = k
        .cuts
        .iter()
        .map(|(c, f)| {
            (
                range.start + u32::from(*c) % range.len(),
                usize::from(*f) % nfiles,
            )
        })
        .filter(|(c, _)| *c > range.start)
        .collect();
    bounds.sort();
    bounds.dedup_by_key(|b| b.0);
    bounds.push((range.end, 0));
    let mut per_file: Vec<Vec<KeyGroupRange>> = vec![Vec::new(); nfiles];
    let mut start = range.start;
    let mut owner = 0;
    for (end, next_owner) in bounds {
        per_file[owner].push(KeyGroupRange::new(start, end));
        start = end;
        owner = next_owner;
    }
    let files = per_file
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(i, key_groups)| {
            let (shared, size, crc32) = k.files.get(i).copied().unwrap_or((false, 0, 0));
            CanonicalFile {
                file: FileRef {
                    area: if shared && !savepoint {
                        FileArea::Shared
                    } else {
                        FileArea::Private
                    },
                    name: format!("f/{i}.state"),
                    size,
                    crc32,
                },
                key_groups,
            }
        })
        .collect();
    KeyedStateHandle {
        key_group_range: range,
        key_codec: k.key_codec.identity(),
        states,
        data: KeyedData::Canonical { files },
    }
}

fn manifest(input: &Input) -> Manifest {
    let mut operators: Vec<OperatorManifest> = input
        .operators
        .iter()
        .take(4)
        .map(|op| {
            let p = u32::from(op.parallelism % 4) + 1;
            let m = p + u32::from(op.extra_key_groups % 16);
            let subtasks = (0..p)
                .map(|i| {
                    let range = KeyGroupRange::for_subtask(m, p, i).unwrap();
                    let sub = op.subtasks.get(i as usize);
                    let mut operator_state: Vec<OperatorStateSnapshot> = sub
                        .map(|s| {
                            s.operator_state
                                .iter()
                                .map(|(name, union, codec, elements)| OperatorStateSnapshot {
                                    name: name.clone(),
                                    mode: if *union {
                                        Redistribution::Union
                                    } else {
                                        Redistribution::Split
                                    },
                                    codec: codec.identity(),
                                    elements: elements.clone(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    operator_state.sort_by(|a, b| a.name.cmp(&b.name));
                    operator_state.dedup_by(|a, b| a.name == b.name);
                    SubtaskManifest {
                        key_group_range: range,
                        keyed: sub
                            .and_then(|s| s.keyed.as_ref())
                            .map(|k| keyed(k, range, input.savepoint)),
                        operator_state,
                    }
                })
                .collect();
            OperatorManifest {
                uid: op.uid.clone(),
                parallelism: p,
                max_parallelism: m,
                subtasks,
            }
        })
        .collect();
    operators.sort_by(|a, b| a.uid.cmp(&b.uid));
    operators.dedup_by(|a, b| a.uid == b.uid);
    Manifest {
        checkpoint_id: input.checkpoint_id,
        snapshot_type: if input.savepoint {
            SnapshotType::Savepoint
        } else {
            SnapshotType::Checkpoint
        },
        timestamp_ms: input.timestamp_ms,
        operators,
    }
}

fuzz_target!(|input: Input| {
    cairn_format::fuzzing::set_skip_checksums(false);
    let m = manifest(&input);
    let bytes = encode_manifest(&m).expect("a valid manifest encodes");
    let back = decode_manifest(&bytes, "fuzz").expect("an encoded manifest decodes");
    assert_eq!(back, m);
});
