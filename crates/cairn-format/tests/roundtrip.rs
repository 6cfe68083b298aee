//! Property tests: arbitrary valid manifests and arbitrary sorted entry sets survive
//! encode → decode unchanged; scans of sub-ranges see exactly their key groups.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use cairn_core::{
    CanonicalFile, CodecIdentity, FileArea, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle,
    NativeFile, OperatorStateSnapshot, Redistribution, SnapshotType, StateKind, StateMeta,
};
use cairn_format::{
    decode_list, decode_manifest, encode_list, encode_manifest, EntryRef, FileState, FormatError,
    Manifest, OperatorManifest, StateFileReader, StateFileWriter, SubtaskManifest,
};
use proptest::prelude::*;

fn kind() -> impl Strategy<Value = StateKind> {
    prop_oneof![
        Just(StateKind::Value),
        Just(StateKind::List),
        Just(StateKind::Map),
        Just(StateKind::Reducing),
        Just(StateKind::Aggregating),
    ]
}

fn codec() -> impl Strategy<Value = CodecIdentity> {
    (
        "[a-z]{0,6}",
        "\\PC{0,8}",
        any::<u32>(),
        proptest::option::of("\\PC{0,12}"),
    )
        .prop_map(|(encoding, type_name, version, schema)| CodecIdentity {
            encoding,
            type_name,
            version,
            schema,
        })
}

fn state_meta(name: String) -> impl Strategy<Value = StateMeta> {
    (kind(), codec(), codec(), codec()).prop_map(move |(kind, namespace, value, uk)| StateMeta {
        name: name.clone(),
        kind,
        namespace,
        value,
        user_key: (kind == StateKind::Map).then_some(uk),
    })
}

fn operator_state(name: String) -> impl Strategy<Value = OperatorStateSnapshot> {
    (
        any::<bool>(),
        codec(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..4),
    )
        .prop_map(move |(union, codec, elements)| OperatorStateSnapshot {
            name: name.clone(),
            mode: if union {
                Redistribution::Union
            } else {
                Redistribution::Split
            },
            codec,
            elements,
        })
}

/// Keyed state for `range`, its key groups cut at `cuts` and dealt to up to three files.
fn keyed(range: KeyGroupRange, savepoint: bool) -> impl Strategy<Value = KeyedStateHandle> {
    let names = proptest::collection::btree_set("[a-z]{1,5}", 0..4);
    (
        codec(),
        names.prop_flat_map(|n| n.into_iter().map(state_meta).collect::<Vec<_>>()),
        proptest::collection::btree_set(range.start..range.end.max(range.start + 1), 0..4),
        proptest::collection::vec((0usize..3, any::<bool>(), any::<u64>(), any::<u32>()), 3),
        any::<bool>(),
    )
        .prop_map(move |(key_codec, states, cuts, files, native)| {
            if native {
                // A native RocksDB handle: the same files as one checkpoint directory.
                let files = files
                    .iter()
                    .enumerate()
                    .map(|(i, (_, shared, size, crc32))| NativeFile {
                        file: FileRef {
                            area: if *shared && !savepoint {
                                FileArea::Shared
                            } else {
                                FileArea::Private
                            },
                            name: format!("op/native-{i}.sst"),
                            size: *size,
                            crc32: *crc32,
                        },
                        local_name: format!("00000{i}.sst"),
                    })
                    .collect();
                return KeyedStateHandle {
                    key_group_range: range,
                    key_codec,
                    states,
                    data: KeyedData::RocksNative { files },
                };
            }
            let mut bounds: Vec<u32> = cuts.into_iter().filter(|c| *c > range.start).collect();
            bounds.push(range.end);
            let mut per_file: BTreeMap<usize, Vec<KeyGroupRange>> = BTreeMap::new();
            let mut start = range.start;
            for (i, end) in bounds.into_iter().enumerate() {
                let owner = files[i % files.len()].0;
                per_file
                    .entry(owner)
                    .or_default()
                    .push(KeyGroupRange::new(start, end));
                start = end;
            }
            let files = per_file
                .into_iter()
                .map(|(owner, key_groups)| {
                    let (_, shared, size, crc32) = files[owner];
                    CanonicalFile {
                        file: FileRef {
                            area: if shared && !savepoint {
                                FileArea::Shared
                            } else {
                                FileArea::Private
                            },
                            name: format!("op/file-{owner}.state"),
                            size,
                            crc32,
                        },
                        key_groups,
                    }
                })
                .collect();
            KeyedStateHandle {
                key_group_range: range,
                key_codec,
                states,
                data: KeyedData::Canonical { files },
            }
        })
}

fn operator(uid: String, savepoint: bool) -> impl Strategy<Value = OperatorManifest> {
    (1u32..=4, 0u32..12).prop_flat_map(move |(p, extra)| {
        let m = p + extra;
        let uid = uid.clone();
        let subtasks: Vec<_> = (0..p)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(m, p, i).unwrap();
                (
                    proptest::option::of(keyed(range, savepoint)),
                    proptest::collection::btree_set("[a-z]{1,4}", 0..3)
                        .prop_flat_map(|n| n.into_iter().map(operator_state).collect::<Vec<_>>()),
                )
                    .prop_map(move |(keyed, operator_state)| SubtaskManifest {
                        key_group_range: range,
                        keyed,
                        operator_state,
                    })
            })
            .collect();
        subtasks.prop_map(move |subtasks| OperatorManifest {
            uid: uid.clone(),
            parallelism: p,
            max_parallelism: m,
            subtasks,
        })
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
        proptest::collection::btree_set("\\PC{1,8}", 0..4),
    )
        .prop_flat_map(|(checkpoint_id, savepoint, timestamp_ms, uids)| {
            let ops: Vec<_> = uids.into_iter().map(|u| operator(u, savepoint)).collect();
            ops.prop_map(move |operators| Manifest {
                checkpoint_id,
                snapshot_type: if savepoint {
                    SnapshotType::Savepoint
                } else {
                    SnapshotType::Checkpoint
                },
                timestamp_ms,
                operators,
            })
        })
}

type Key = (u32, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>);

fn entry_set() -> impl Strategy<Value = (Vec<FileState>, BTreeMap<Key, Vec<u8>>)> {
    proptest::collection::vec(kind(), 1..4).prop_flat_map(|kinds| {
        let n = kinds.len() as u32;
        let states: Vec<FileState> = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| FileState {
                name: format!("s{i}"),
                kind: *k,
            })
            .collect();
        let bytes = || proptest::collection::vec(any::<u8>(), 0..5);
        let value = prop_oneof![
            3 => proptest::collection::vec(any::<u8>(), 0..20),
            1 => proptest::collection::vec(Just(7u8), 0..70_000),
        ];
        proptest::collection::vec((0u32..40, 0..n, bytes(), bytes(), bytes(), value), 0..60)
            .prop_map(move |raw| {
                let mut m = BTreeMap::new();
                for (kg, s, k, ns, uk, v) in raw {
                    let uk = (kinds[s as usize] == StateKind::Map).then_some(uk);
                    m.insert((kg, s, k, ns, uk), v);
                }
                (states.clone(), m)
            })
    })
}

fn write(states: &[FileState], entries: &BTreeMap<Key, Vec<u8>>) -> Vec<u8> {
    let mut w = StateFileWriter::new(states.to_vec()).unwrap();
    for ((kg, s, k, ns, uk), v) in entries {
        w.add(&EntryRef {
            key_group: *kg,
            state: *s,
            key: k,
            namespace: ns,
            user_key: uk.as_deref(),
            value: v,
        })
        .unwrap();
    }
    w.finish().unwrap()
}

fn read(r: &StateFileReader, range: KeyGroupRange) -> BTreeMap<Key, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut last: Option<Key> = None;
    r.scan(range, |e| -> Result<(), FormatError> {
        let key = (
            e.key_group,
            e.state,
            e.key.to_vec(),
            e.namespace.to_vec(),
            e.user_key.map(<[u8]>::to_vec),
        );
        assert!(last.as_ref() < Some(&key), "scan order");
        last = Some(key.clone());
        out.insert(key, e.value.to_vec());
        Ok(())
    })
    .unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn manifests_round_trip(m in manifest()) {
        let bytes = encode_manifest(&m).unwrap();
        prop_assert_eq!(decode_manifest(&bytes, "m").unwrap(), m.clone());
        // Deterministic: the same manifest always has the same bytes.
        prop_assert_eq!(encode_manifest(&m).unwrap(), bytes);
    }

    #[test]
    fn state_files_round_trip((states, entries) in entry_set(), a in 0u32..45, b in 0u32..45) {
        let bytes = write(&states, &entries);
        let r = StateFileReader::open(Bytes::from(bytes), "s").unwrap();
        prop_assert_eq!(r.states(), &states[..]);
        r.verify_all().unwrap();
        prop_assert_eq!(r.entry_count(), entries.len() as u64);
        prop_assert_eq!(read(&r, KeyGroupRange::all(u32::MAX)), entries.clone());
        let range = KeyGroupRange::new(a.min(b), a.max(b));
        let expected: BTreeMap<_, _> = entries.iter().filter(|(k, _)| range.contains(k.0)).map(|(k, v)| (k.clone(), v.clone())).collect();
        prop_assert_eq!(read(&r, range), expected);
        let kgs: BTreeSet<u32> = entries.keys().map(|k| k.0).collect();
        prop_assert_eq!(r.key_groups().iter().map(|k| k.key_group).collect::<BTreeSet<_>>(), kgs);
    }

    #[test]
    fn lists_round_trip(elements in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..10), 0..10)) {
        let mut v = Vec::new();
        encode_list(elements.iter().map(Vec::as_slice), &mut v);
        let decoded: Vec<Vec<u8>> = decode_list(&v).unwrap().into_iter().map(<[u8]>::to_vec).collect();
        prop_assert_eq!(decoded, elements);
    }
}
