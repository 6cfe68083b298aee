//! Bug hunt: savepoints of every shape the reader claims to support, the writer's
//! transformations in odd orders, and damage to every file, each checked against values
//! computed from the inputs alone (or exact error contents naming what and where).

mod common;
#[path = "common/jobs.rs"]
mod jobs;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use cairn_core::{
    key_group_for_key, subtask_for_key_group, BincodeCodec, Codec, KeyedStateBackend,
    ListStateDescriptor, ListStateId, MapStateDescriptor, MapStateId, OperatorStateBackend,
    SnapshotType, StateError, ValueStateDescriptor, ValueStateId,
};
use cairn_hashmap::HashMapBackend;
use cairn_state_processor::{
    KeyedStateBootstrapFunction, SavepointReader, SavepointWriter, StateProcessorError,
};
use cairn_storage::{open_savepoint, restore_subtask};
use common::*;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn err<T: std::fmt::Debug>(r: Result<T, StateProcessorError>) -> (StateProcessorError, String) {
    let e = r.expect_err("an error");
    let m = e.to_string();
    (e, m)
}

fn contains_all(m: &str, parts: &[&str]) {
    for p in parts {
        assert!(m.contains(p), "{p:?} is not in the message: {m}");
    }
}

/// The smallest `u32` key whose (bincode) encoding falls into key group `kg` of `m`.
fn key_in_group(m: u32, kg: u32) -> u32 {
    let codec = BincodeCodec::<u32>::new();
    (0u32..)
        .find(|k| {
            let mut b = Vec::new();
            codec.encode(k, &mut b).expect("encode");
            key_group_for_key(&b, m) == kg
        })
        .expect("a key")
}

fn enc<T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static>(
    v: &T,
) -> Vec<u8> {
    let mut b = Vec::new();
    BincodeCodec::<T>::new().encode(v, &mut b).expect("encode");
    b
}

/// `pairs` sorted by the key's bincode encoding (the order the reader documents).
fn by_encoding<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Vec<(K, V)>
where
    K: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let mut v: Vec<(K, V)> = pairs.into_iter().collect();
    v.sort_by_key(|(k, _)| enc(k));
    v
}

/// Reads every kind of [`AllKinds`]'s state and checks it against `model`, in the order
/// the reader documents (sorted by the key's encoding).
fn assert_kinds(reader: &SavepointReader, uid: &str, model: &KindsModel) {
    let d = descriptors();
    let mut k = reader.keyed_state::<u32>(uid).expect("keyed state");
    assert_eq!(
        k.values(&d.value).expect("values"),
        by_encoding(model.value.clone())
    );
    assert_eq!(
        k.lists(&d.list).expect("lists"),
        by_encoding(model.list.clone())
    );
    let maps: Vec<(u32, Vec<(u64, u64)>)> = model
        .map
        .iter()
        .map(|(k, m)| (*k, by_encoding(m.clone())))
        .collect();
    assert_eq!(k.maps(&d.map).expect("maps"), by_encoding(maps));
    assert_eq!(
        k.reducing(&d.reducing).expect("reducing"),
        by_encoding(model.reducing.clone())
    );
    assert_eq!(
        k.aggregating(&d.aggregating).expect("aggregating"),
        by_encoding(model.aggregating.clone())
    );
}

/// Restores operator `uid` at `parallelism` subtask by subtask as a job does and returns
/// the lists of [`AllKinds`] every subtask sees (a key seen twice is an error).
fn restored_lists(
    path: &str,
    uid: &str,
    max_parallelism: u32,
    parallelism: u32,
) -> BTreeMap<u32, Vec<u64>> {
    let (manifest, source) = open_savepoint(path).expect("open savepoint");
    let codec = BincodeCodec::<u32>::new();
    let mut lists = BTreeMap::new();
    for i in 0..parallelism {
        let mut b = HashMapBackend::for_subtask(
            uid,
            max_parallelism,
            parallelism,
            i,
            codec.identity().clone(),
        )
        .expect("backend");
        let mut operator = OperatorStateBackend::new(uid);
        restore_subtask(
            &manifest,
            uid,
            parallelism,
            i,
            Some(&mut b),
            &mut operator,
            &source,
        )
        .expect("restore subtask");
        let ids = register(&mut b).expect("register");
        for key in b.keys(ids.list.raw(), &()).expect("keys") {
            let kg = key_group_for_key(&key, max_parallelism);
            assert_eq!(
                subtask_for_key_group(kg, parallelism, max_parallelism),
                i,
                "key group {kg} restored into subtask {i} of {parallelism}"
            );
            b.set_current_key(&key).expect("key");
            let list = b.list_get(ids.list, &()).expect("list");
            let prev = lists.insert(codec.decode(&key).expect("decode"), list);
            assert!(prev.is_none(), "a key restored twice");
        }
    }
    lists
}

/// `state-dump verify` of the snapshot at `path`: clean, with `entries` entries.
fn verify_clean(path: &str, entries: u64) {
    let snapshot = state_dump::open_snapshot(path).expect("state-dump opens it");
    let report = state_dump::verify(&snapshot, &state_dump::NoProgress).expect("verify");
    assert!(report.is_clean(), "{}", report.render());
    assert_eq!(report.entries, entries, "{}", report.render());
}

/// Writes a savepoint of [`AllKinds`] over `records` as operator `uid`.
fn write_kinds(
    path: &str,
    uid: &str,
    max_parallelism: u32,
    parallelism: u32,
    records: Vec<(u32, u64)>,
) {
    let mut writer = SavepointWriter::new(max_parallelism).expect("writer");
    writer
        .with_keyed_operator(uid, parallelism, records, |r| r.0, AllKinds)
        .expect("bootstrap");
    writer.write(path).expect("write");
}

/// Entries [`AllKinds`] writes for `model`: one per key and state, one per map entry.
fn kinds_entries(model: &KindsModel) -> u64 {
    let keys = model.value.len() as u64;
    let map_entries: u64 = model.map.values().map(|m| m.len() as u64).sum();
    keys * 4 + map_entries
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// The writer writes to any directory; a savepoint whose directory happens to be named
/// like a checkpoint's (`chk-<n>`) must open again, with the reader and as the base of a
/// new savepoint.
#[test]
fn a_savepoint_in_a_directory_named_like_a_checkpoint_opens_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["chk-7", "chk-1"] {
        let path = s(&dir.path().join(name));
        let mut writer = SavepointWriter::new(16).expect("writer");
        writer
            .with_keyed_operator(
                "count",
                2,
                vec![(1u32, 5u64), (2, 6)],
                |r| r.0,
                SetCount::new(),
            )
            .expect("bootstrap");
        writer.write(&path).expect("write");
        for given in [
            path.clone(),
            format!("{path}/_metadata"),
            format!("{path}/"),
        ] {
            let reader = SavepointReader::open(&given).expect("a savepoint named chk-N opens");
            assert_eq!(reader.snapshot_type(), SnapshotType::Savepoint);
            assert_eq!(reader.path(), path);
            assert_eq!(reader.checkpoint_id(), 1);
            assert_eq!(
                reader
                    .keyed_state::<u32>("count")
                    .expect("keyed")
                    .values(&count_descriptor())
                    .expect("values"),
                [(1, 5), (2, 6)]
            );
        }
        let copy = s(&dir.path().join(format!("copy-of-{name}")));
        SavepointWriter::from_existing(&path)
            .expect("from a savepoint named chk-N")
            .write(&copy)
            .expect("write the copy");
        assert_eq!(
            SavepointReader::open(&copy)
                .expect("copy")
                .keyed_state::<u32>("count")
                .expect("keyed")
                .values(&count_descriptor())
                .expect("values"),
            [(1, 5), (2, 6)]
        );
    }
}

// ---------------------------------------------------------------------------------------
// Key groups and parallelisms
// ---------------------------------------------------------------------------------------

/// Max parallelism 1 and 32768, parallelism equal to the max parallelism, keys in the
/// first and the last key group: every value reads back, every subtask of a restore at
/// other parallelisms gets exactly its keys, and state-dump finds the savepoint clean.
#[test]
fn extreme_max_parallelisms_and_the_last_key_group() {
    let cases: [(u32, u32); 5] = [(1, 1), (2, 2), (256, 256), (32768, 3), (32768, 1)];
    for (case, (m, p)) in cases.into_iter().enumerate() {
        let last = key_in_group(m, m - 1);
        let first = key_in_group(m, 0);
        let mut rng = Rng::new(case as u64 + 100);
        let mut records: Vec<(u32, u64)> = vec![(last, 7), (first, 8), (last, 9)];
        records.extend((0..300).map(|_| (rng.below(60) as u32 + 1000, rng.below(1000))));
        let model = KindsModel::of(&records);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = s(&dir.path().join("sp"));
        write_kinds(&path, "kinds", m, p, records);

        let reader = SavepointReader::open(&path).expect("open");
        assert_eq!(reader.max_parallelism(), Some(m));
        let info = reader.operator("kinds").expect("info");
        assert_eq!((info.parallelism, info.max_parallelism), (p, m));
        assert_kinds(&reader, "kinds", &model);
        let want_last = if first == last {
            vec![7, 8, 9]
        } else {
            vec![7, 9]
        };
        assert_eq!(model.list.get(&last), Some(&want_last));
        for q in [1, p, (p + 1).min(m), (p + 6).min(m)] {
            assert_eq!(
                restored_lists(&path, "kinds", m, q),
                model.list,
                "case ({m}, {p}) restored at {q}"
            );
        }
        verify_clean(&path, kinds_entries(&model));
    }
}

/// Parallelism equal to the max parallelism (one key group per subtask, most subtasks
/// without a key): the savepoint holds a part per subtask, and reads and restores whole.
/// (At 32768 the same works but takes over a minute in debug, mostly writing 32768 files.)
#[test]
fn parallelism_equal_to_a_large_max_parallelism() {
    let m = 1024;
    let records: Vec<(u32, u64)> = vec![(key_in_group(m, m - 1), 1), (key_in_group(m, 0), 2)]
        .into_iter()
        .chain((0..40).map(|k| (k, u64::from(k) * 3)))
        .collect();
    let model = KindsModel::of(&records);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    write_kinds(&path, "kinds", m, m, records);
    let reader = SavepointReader::open(&path).expect("open");
    let info = reader.operator("kinds").expect("info");
    assert_eq!((info.parallelism, info.max_parallelism), (m, m));
    assert_eq!(reader.manifest().operators[0].subtasks.len(), m as usize);
    assert_kinds(&reader, "kinds", &model);
    assert_eq!(restored_lists(&path, "kinds", m, 5), model.list);
    assert_eq!(restored_lists(&path, "kinds", m, m), model.list);
    verify_clean(&path, kinds_entries(&model));
}

// ---------------------------------------------------------------------------------------
// Empty state
// ---------------------------------------------------------------------------------------

/// A keyed operator bootstrapped from no records: its states are listed, every read is
/// empty, and the savepoint is clean.
#[test]
fn an_operator_with_zero_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    write_kinds(&path, "kinds", 128, 3, Vec::new());
    let reader = SavepointReader::open(&path).expect("open");
    let info = reader.operator("kinds").expect("info");
    assert_eq!(info.parallelism, 3);
    assert_eq!(
        info.keyed_states
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["all", "by-rest", "counted", "last", "sum"]
    );
    assert_eq!(
        info.key_codec.as_ref(),
        Some(BincodeCodec::<u32>::new().identity())
    );
    assert_kinds(&reader, "kinds", &KindsModel::default());
    assert_eq!(restored_lists(&path, "kinds", 128, 2), BTreeMap::new());
    verify_clean(&path, 0);
    // Copied, still empty.
    let copy = s(&dir.path().join("copy"));
    SavepointWriter::from_existing(&path)
        .expect("from existing")
        .write(&copy)
        .expect("copy");
    assert_kinds(
        &SavepointReader::open(&copy).expect("copy"),
        "kinds",
        &KindsModel::default(),
    );
}

/// Writes per record `(key, op, x)`: op 0 adds `x` to the list, puts `x % 3 → x` into the
/// map and sets the value to `x`; op 1 clears the list (an empty update); op 2 removes every
/// map entry one by one; op 3 clears the value.
struct Clearing;

struct ClearingIds {
    list: ListStateId<u64, ()>,
    map: MapStateId<u64, u64, ()>,
    value: ValueStateId<u64, ()>,
}

fn clearing_descriptors() -> (
    ListStateDescriptor<u64>,
    MapStateDescriptor<u64, u64>,
    ValueStateDescriptor<u64>,
) {
    (
        ListStateDescriptor::new("l"),
        MapStateDescriptor::new("m"),
        ValueStateDescriptor::new("v"),
    )
}

impl KeyedStateBootstrapFunction for Clearing {
    type Key = u32;
    type In = (u32, u8, u64);
    type States = ClearingIds;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<ClearingIds> {
        let (l, m, v) = clearing_descriptors();
        Ok(ClearingIds {
            list: b.register_list(&l)?,
            map: b.register_map(&m)?,
            value: b.register_value(&v)?,
        })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &ClearingIds,
        _key: &u32,
        (_, op, x): (u32, u8, u64),
        b: &mut B,
    ) -> cairn_core::Result<()> {
        match op {
            0 => {
                b.list_add(s.list, &(), x)?;
                b.map_put(s.map, &(), x % 3, x)?;
                b.value_update(s.value, &(), x)
            }
            1 => b.list_update(s.list, &(), Vec::new()),
            2 => {
                for (uk, _) in b.map_entries(s.map, &())? {
                    b.map_remove(s.map, &(), &uk)?;
                }
                Ok(())
            }
            _ => b.clear(s.value.raw(), &()),
        }
    }
}

/// A list cleared and a map whose entries were all removed are absent from the reads (no
/// key with an empty list or map), and so is a cleared value.
#[test]
fn cleared_lists_emptied_maps_and_cleared_values_are_absent() {
    let mut rng = Rng::new(9);
    let records: Vec<(u32, u8, u64)> = (0..3000)
        .map(|_| {
            let op = match rng.below(10) {
                0 => 1,
                1 => 2,
                2 => 3,
                _ => 0,
            };
            (rng.below(200) as u32, op, rng.below(1000))
        })
        .collect();
    let mut lists: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut maps: BTreeMap<u32, BTreeMap<u64, u64>> = BTreeMap::new();
    let mut values: BTreeMap<u32, u64> = BTreeMap::new();
    for &(k, op, x) in &records {
        match op {
            0 => {
                lists.entry(k).or_default().push(x);
                maps.entry(k).or_default().insert(x % 3, x);
                values.insert(k, x);
            }
            1 => {
                lists.remove(&k);
            }
            2 => {
                maps.remove(&k);
            }
            _ => {
                values.remove(&k);
            }
        }
    }
    // The model has keys of every kind of emptiness.
    let keys: std::collections::BTreeSet<u32> = records.iter().map(|r| r.0).collect();
    assert!(keys.iter().any(|k| !lists.contains_key(k)));
    assert!(keys.iter().any(|k| !maps.contains_key(k)));
    assert!(keys.iter().any(|k| !values.contains_key(k)));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let mut writer = SavepointWriter::new(64).expect("writer");
    writer
        .with_keyed_operator("c", 3, records, |r| r.0, Clearing)
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let reader = SavepointReader::open(&path).expect("open");
    let mut k = reader.keyed_state::<u32>("c").expect("keyed");
    let (l, m, v) = clearing_descriptors();
    assert_eq!(k.lists(&l).expect("lists"), by_encoding(lists.clone()));
    let want_maps: Vec<(u32, Vec<(u64, u64)>)> = maps
        .iter()
        .map(|(k, m)| (*k, by_encoding(m.clone())))
        .collect();
    assert_eq!(k.maps(&m).expect("maps"), by_encoding(want_maps));
    assert_eq!(k.values(&v).expect("values"), by_encoding(values.clone()));
    let entries = lists.len() + values.len() + maps.values().map(BTreeMap::len).sum::<usize>();
    verify_clean(&path, entries as u64);
}

// ---------------------------------------------------------------------------------------
// TTL
// ---------------------------------------------------------------------------------------

const TTL_MS: u64 = 100;

/// Writes `(key, value)` into value state `v` with a TTL, stamped at the clock's time
/// (`1000 + key`).
struct WithTtl(Arc<cairn_core::ManualClock>);

fn ttl_config(clock: &Arc<cairn_core::ManualClock>) -> cairn_core::StateTtlConfig {
    cairn_core::StateTtlConfig::new(std::time::Duration::from_millis(TTL_MS))
        .with_clock(clock.clone())
}

impl KeyedStateBootstrapFunction for WithTtl {
    type Key = u32;
    type In = (u32, u64);
    type States = cairn_core::TtlValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
        use cairn_core::TtlStateAccess;
        b.register_value_with_ttl(&ValueStateDescriptor::<u64>::new("v"), &ttl_config(&self.0))
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        id: &Self::States,
        key: &u32,
        (_, value): (u32, u64),
        b: &mut B,
    ) -> cairn_core::Result<()> {
        use cairn_core::TtlStateAccess;
        self.0.set(1000 + u64::from(*key));
        b.ttl_value(id).update(value)
    }
}

/// A state with a TTL never reads as plain values: the plain descriptor is refused naming
/// both encodings; a descriptor of the TTL codec gives the raw stamps; the reader's backend
/// with the TTL gives the live values by the TTL's clock.
#[test]
fn a_state_with_a_ttl_is_refused_or_read_with_its_stamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let clock = Arc::new(cairn_core::ManualClock::new(0));
    let records: Vec<(u32, u64)> = (0..50).map(|k| (k, u64::from(k) * 11)).collect();
    let mut writer = SavepointWriter::new(32).expect("writer");
    writer
        .with_keyed_operator("ttl", 2, records.clone(), |r| r.0, WithTtl(clock.clone()))
        .expect("bootstrap");
    writer.write(&path).expect("write");

    let reader = SavepointReader::open(&path).expect("open");
    let info = reader.operator("ttl").expect("info");
    assert_eq!(
        info.keyed_states[0].value.encoding,
        "cairn-ttl1+bincode1-fixint-le"
    );
    let mut k = reader.keyed_state::<u32>("ttl").expect("keyed");
    let (e, m) = err(k.values(&ValueStateDescriptor::<u64>::new("v")));
    assert!(
        matches!(
            &e,
            StateProcessorError::Incompatible { source, .. }
                if matches!(**source, StateError::IncompatibleCodec { .. })
        ),
        "{e:?}"
    );
    contains_all(
        &m,
        &[
            "state v of operator ttl",
            &path,
            "u64@v1 (cairn-ttl1+bincode1-fixint-le)",
            "u64@v1 (bincode1-fixint-le)",
        ],
    );

    // The raw values: each with the stamp it was written at.
    let raw = ValueStateDescriptor {
        name: "v".to_string(),
        value: Arc::new(cairn_core::TtlCodec::new(Arc::new(
            BincodeCodec::<u64>::new(),
        ))),
        namespace: Arc::new(BincodeCodec::<()>::new()),
    };
    let want: Vec<(u32, cairn_core::TtlValue<u64>)> = by_encoding(records.iter().map(|&(k, v)| {
        (
            k,
            cairn_core::TtlValue {
                stamped_ms: 1000 + u64::from(k),
                value: v,
            },
        )
    }));
    assert_eq!(k.values(&raw).expect("raw values"), want);

    // Through the backend, with the TTL: at 1000 + 120 keys 21.. are live (stamped at
    // 1000 + k, expired at 1000 + k + 100 <= 1120 for k <= 20).
    use cairn_core::TtlStateAccess;
    let read_clock = Arc::new(cairn_core::ManualClock::new(1120));
    let b = k.backend();
    let id = b
        .register_value_with_ttl(
            &ValueStateDescriptor::<u64>::new("v"),
            &ttl_config(&read_clock),
        )
        .expect("register with the TTL");
    let mut live = BTreeMap::new();
    for key in b.keys(id.raw(), &()).expect("keys") {
        b.set_current_key(&key).expect("key");
        if let Some(v) = b.ttl_value(&id).get().expect("get") {
            live.insert(BincodeCodec::<u32>::new().decode(&key).expect("key"), v);
        }
    }
    let want: BTreeMap<u32, u64> = records.iter().copied().filter(|(k, _)| *k > 20).collect();
    assert_eq!(live, want);
    verify_clean(&path, 50);
}

// ---------------------------------------------------------------------------------------
// Names, codecs, sizes
// ---------------------------------------------------------------------------------------

/// Two operators with a state of the same name (and other key types): each reads as its
/// own, never the other's.
#[test]
fn a_state_name_shared_by_two_operators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let a: Vec<(u32, u64)> = (0..30).map(|k| (k, u64::from(k) + 1)).collect();
    let b: Vec<(String, u64)> = (0..20).map(|k| (format!("k{k}"), k * 100)).collect();
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator("a", 2, a.clone(), |r| r.0, SetCount::new())
        .expect("a")
        .with_keyed_operator("b", 3, b.clone(), |r| r.0.clone(), SetCount::new())
        .expect("b");
    writer.write(&path).expect("write");
    let reader = SavepointReader::open(&path).expect("open");
    assert_eq!(
        reader
            .keyed_state::<u32>("a")
            .expect("a")
            .values(&count_descriptor())
            .expect("a values"),
        by_encoding(a)
    );
    assert_eq!(
        reader
            .keyed_state::<String>("b")
            .expect("b")
            .values(&count_descriptor())
            .expect("b values"),
        by_encoding(b)
    );
    let (e, _) = err(reader.keyed_state::<String>("a"));
    assert!(matches!(e, StateProcessorError::KeyCodec { .. }), "{e:?}");
}

/// The reader documents its results sorted by the key's encoding (not by the key): `u32`
/// keys are little-endian, so 256 comes before 1.
#[test]
fn results_are_sorted_by_the_keys_encoding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let records = vec![(1u32, 1u64), (256, 2), (2, 3), (65536, 4), (0, 5)];
    let mut writer = SavepointWriter::new(8).expect("writer");
    writer
        .with_keyed_operator("count", 2, records, |r| r.0, SetCount::new())
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let values = SavepointReader::open(&path)
        .expect("open")
        .keyed_state::<u32>("count")
        .expect("keyed")
        .values(&count_descriptor())
        .expect("values");
    assert_eq!(values, [(0, 5), (65536, 4), (256, 2), (1, 1), (2, 3)]);
}

/// A key codec other than the runtime's: the reader refuses the default one naming both,
/// and reads with the stored one.
#[test]
fn a_bootstrapped_key_codec_other_than_the_jobs() {
    struct Named;
    impl KeyedStateBootstrapFunction for Named {
        type Key = String;
        type In = (String, u64);
        type States = ValueStateId<u64, ()>;
        fn key_codec(&self) -> cairn_core::CodecRef<String> {
            Arc::new(BincodeCodec::<String>::named("word", 2))
        }
        fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
            b.register_value(&count_descriptor())
        }
        fn process<B: KeyedStateBackend>(
            &mut self,
            id: &Self::States,
            _key: &String,
            (_, n): (String, u64),
            b: &mut B,
        ) -> cairn_core::Result<()> {
            b.value_update(*id, &(), n)
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let words: Vec<(String, u64)> = (0..40).map(|i| (format!("w{i}"), i + 1)).collect();
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator("count", 2, words.clone(), |r| r.0.clone(), Named)
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let reader = SavepointReader::open(&path).expect("open");
    let (e, m) = err(reader.keyed_state::<String>("count"));
    assert!(matches!(e, StateProcessorError::KeyCodec { .. }), "{e:?}");
    assert_eq!(
        m,
        format!(
            "the key codec of operator count does not match savepoint {path}: stored \
             word@v2 (bincode1-fixint-le), given alloc::string::String@v1 (bincode1-fixint-le)"
        )
    );
    let values = reader
        .keyed_state_with_codec("count", Arc::new(BincodeCodec::<String>::named("word", 2)))
        .expect("with the stored codec")
        .values(&count_descriptor())
        .expect("values");
    assert_eq!(values, by_encoding(words));
}

/// Values of 1 MiB (a value and list elements) read back byte for byte.
#[test]
fn values_of_a_mebibyte() {
    struct Big;
    impl KeyedStateBootstrapFunction for Big {
        type Key = u32;
        type In = (u32, Vec<u8>);
        type States = (ValueStateId<Vec<u8>, ()>, ListStateId<Vec<u8>, ()>);
        fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
            Ok((
                b.register_value(&ValueStateDescriptor::<Vec<u8>>::new("big"))?,
                b.register_list(&ListStateDescriptor::<Vec<u8>>::new("bigs"))?,
            ))
        }
        fn process<B: KeyedStateBackend>(
            &mut self,
            (v, l): &Self::States,
            _key: &u32,
            (_, bytes): (u32, Vec<u8>),
            b: &mut B,
        ) -> cairn_core::Result<()> {
            b.value_update(*v, &(), bytes.clone())?;
            b.list_add(*l, &(), bytes)
        }
    }
    let blob = |seed: u64| -> Vec<u8> {
        let mut rng = Rng::new(seed);
        (0..(1 << 20)).map(|_| rng.next() as u8).collect()
    };
    let records = vec![(1u32, blob(1)), (2, blob(2)), (1, blob(3)), (3, blob(4))];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let mut writer = SavepointWriter::new(16).expect("writer");
    writer
        .with_keyed_operator("big", 2, records, |r| r.0, Big)
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let copy = s(&dir.path().join("copy"));
    SavepointWriter::from_existing(&path)
        .expect("from existing")
        .write(&copy)
        .expect("copy");
    for p in [&path, &copy] {
        let reader = SavepointReader::open(p).expect("open");
        let mut k = reader.keyed_state::<u32>("big").expect("keyed");
        assert!(
            k.values(&ValueStateDescriptor::<Vec<u8>>::new("big"))
                .expect("values")
                == [(1, blob(3)), (2, blob(2)), (3, blob(4))],
            "the values differ"
        );
        assert!(
            k.lists(&ListStateDescriptor::<Vec<u8>>::new("bigs"))
                .expect("lists")
                == [
                    (1, vec![blob(1), blob(3)]),
                    (2, vec![blob(2)]),
                    (3, vec![blob(4)])
                ],
            "the lists differ"
        );
        verify_clean(p, 6);
    }
}

/// 100 000 keys read back exactly.
#[test]
fn a_hundred_thousand_keys() {
    let n = 100_000u32;
    let records: Vec<(u32, u64)> = (0..n).map(|k| (k, u64::from(k) * 3 + 1)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = s(&dir.path().join("sp"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator("count", 4, records.clone(), |r| r.0, SetCount::new())
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let values = SavepointReader::open(&path)
        .expect("open")
        .keyed_state::<u32>("count")
        .expect("keyed")
        .values(&count_descriptor())
        .expect("values");
    assert_eq!(values.len(), n as usize);
    assert_eq!(values, by_encoding(records));
}

// ---------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------

/// A small savepoint: keyed `count` (u32 keys 0..60, value k + 1, parallelism 2) and `src`
/// with split state `offsets` = [1, 2, 3].
fn small_savepoint(path: &str) {
    let mut writer = SavepointWriter::new(32).expect("writer");
    writer
        .with_keyed_operator(
            "count",
            2,
            (0..60u32).map(|k| (k, u64::from(k) + 1)),
            |r| r.0,
            SetCount::new(),
        )
        .expect("count")
        .with_operator_state(
            "src",
            2,
            &cairn_core::OperatorListStateDescriptor::<u64>::split("offsets"),
            vec![1, 2, 3],
        )
        .expect("src");
    writer.write(path).expect("write");
}

fn small_counts() -> Vec<(u32, u64)> {
    by_encoding((0..60u32).map(|k| (k, u64::from(k) + 1)))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).expect("copy");
        }
    }
}

/// What is under `dir`, relative, sorted (empty if it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    let mut out: Vec<String> = files_ending(dir, "")
        .into_iter()
        .map(|p| {
            p.strip_prefix(dir)
                .expect("under")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

/// Checks that the damaged savepoint at `path` (whose state file `name` is at fault) is an
/// error naming the file for every reading of keyed state and for a copy, while its
/// operator state (in the manifest) still reads.
fn assert_damaged_file_reported(path: &str, name: &str, out: &Path, what: &str) {
    let reader = SavepointReader::open(path).expect("the manifest is intact");
    let (e, m) = err(reader.keyed_state::<u32>("count"));
    assert!(
        matches!(e, StateProcessorError::Read { .. }),
        "{what}: {e:?}"
    );
    contains_all(&m, &["operator count", path, name]);
    assert_eq!(
        reader
            .read_operator_state(
                "src",
                &cairn_core::OperatorListStateDescriptor::<u64>::split("offsets")
            )
            .expect("operator state"),
        [1, 2, 3]
    );
    let target = s(out);
    let (e, m) = err(SavepointWriter::from_existing(path)
        .expect("writer")
        .write(&target));
    assert!(
        matches!(e, StateProcessorError::Read { .. }),
        "{what}: {e:?}"
    );
    contains_all(&m, &["operator count", path, name]);
    assert_eq!(listing(out), Vec::<String>::new(), "{what}: left behind");
    // state-dump agrees that it is damaged.
    let snapshot = state_dump::open_snapshot(path).expect("state-dump opens it");
    let report = state_dump::verify(&snapshot, &state_dump::NoProgress).expect("verify");
    assert!(!report.is_clean(), "{what}: state-dump finds it clean");
}

/// Every state file of a small savepoint, flipped at several offsets and truncated at
/// several lengths: each case is an error naming the file (reading and copying), never a
/// panic or wrong data.
#[test]
fn every_state_file_damaged_at_several_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original");
    small_savepoint(&s(&original));
    let files = files_ending(&original, ".cst");
    assert_eq!(files.len(), 2, "{files:?}");
    let mut case = 0;
    for file in &files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let len = std::fs::metadata(file).expect("meta").len() as usize;
        let offsets = [
            0,
            7,
            9,
            12,
            16,
            20,
            24,
            len / 2,
            len - 64,
            len - 16,
            len - 1,
        ];
        let cuts = [0, 1, 16, len / 2, len - 64, len - 1];
        let damages = offsets
            .iter()
            .map(|&o| (o, true))
            .chain(cuts.iter().map(|&c| (c, false)));
        for (at, flip) in damages {
            case += 1;
            let copy = dir.path().join(format!("case-{case}"));
            copy_dir(&original, &copy);
            let target = copy.join(&name);
            let mut bytes = std::fs::read(&target).expect("read");
            if flip {
                bytes[at] ^= 0x41;
            } else {
                bytes.truncate(at);
            }
            std::fs::write(&target, bytes).expect("write");
            let what = format!("{name} {} at {at}", if flip { "flipped" } else { "cut" });
            assert_damaged_file_reported(
                &s(&copy),
                &name,
                &dir.path().join(format!("out-{case}")),
                &what,
            );
        }
    }
    // The original is untouched and reads whole.
    assert_eq!(
        SavepointReader::open(&s(&original))
            .expect("open")
            .keyed_state::<u32>("count")
            .expect("keyed")
            .values(&count_descriptor())
            .expect("values"),
        small_counts()
    );
}

/// A state file the manifest references is missing: an error naming it, reading and
/// copying.
#[test]
fn a_missing_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sp");
    small_savepoint(&s(&path));
    let files = files_ending(&path, ".cst");
    std::fs::remove_file(&files[0]).expect("remove");
    let name = files[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert_damaged_file_reported(&s(&path), &name, &dir.path().join("out"), "missing");
}

/// The manifest flipped at offsets in each of its parts, and truncated: opening it (and
/// starting a writer from it) is an error naming it.
#[test]
fn a_damaged_or_truncated_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original");
    small_savepoint(&s(&original));
    let manifest = std::fs::read(original.join("_metadata")).expect("manifest");
    let len = manifest.len();
    let mut damaged: Vec<(String, Vec<u8>)> = Vec::new();
    for at in [
        0,
        8,
        10,
        12,
        16,
        17,
        25,
        len / 2,
        len - 20,
        len - 16,
        len - 12,
        len - 8,
        len - 1,
    ] {
        let mut b = manifest.clone();
        b[at] ^= 0x10;
        damaged.push((format!("flipped at {at}"), b));
    }
    for cut in [0, 1, 15, 16, 31, len / 2, len - 16, len - 1] {
        damaged.push((format!("cut at {cut}"), manifest[..cut].to_vec()));
    }
    let mut extended = manifest.clone();
    extended.push(0);
    damaged.push(("one byte more".into(), extended));
    for (i, (what, bytes)) in damaged.into_iter().enumerate() {
        let copy = dir.path().join(format!("case-{i}"));
        copy_dir(&original, &copy);
        let mpath = copy.join("_metadata");
        std::fs::write(&mpath, bytes).expect("write");
        let (e, m) = err(SavepointReader::open(&s(&copy)));
        assert!(
            matches!(e, StateProcessorError::Open { .. }),
            "{what}: {e:?}"
        );
        contains_all(&m, &[&s(&mpath)]);
        let (e, m) = err(SavepointWriter::from_existing(&s(&copy)));
        assert!(
            matches!(e, StateProcessorError::Open { .. }),
            "{what}: {e:?}"
        );
        contains_all(&m, &[&s(&mpath)]);
    }
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// A target whose parent is a file: an error naming the path; nothing is created and the
/// file is unchanged.
#[test]
fn writing_under_a_file_fails_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"keep me").expect("write");
    let target = s(&file.join("sp"));
    let mut writer = SavepointWriter::new(8).expect("writer");
    writer
        .with_keyed_operator("count", 1, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
        .expect("bootstrap");
    let (e, m) = err(writer.write(&target));
    assert!(matches!(e, StateProcessorError::Write { .. }), "{e:?}");
    contains_all(&m, &["cannot write the savepoint", &target]);
    assert_eq!(std::fs::read(&file).expect("file"), b"keep me");
    assert_eq!(listing(dir.path()), ["a-file"]);
}

/// A copy that fails at the second operator (its file is damaged) after the first one's
/// files are written: the target directory keeps what it held before, nothing else.
#[test]
fn a_write_failing_midway_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sp");
    let mut writer = SavepointWriter::new(32).expect("writer");
    writer
        .with_keyed_operator(
            "a",
            3,
            (0..90u32).map(|k| (k, 1u64)),
            |r| r.0,
            SetCount::new(),
        )
        .expect("a")
        .with_keyed_operator(
            "b",
            1,
            (0..5u32).map(|k| (k, 2u64)),
            |r| r.0,
            SetCount::new(),
        )
        .expect("b");
    writer.write(&s(&path)).expect("write");
    let manifest = SavepointReader::open(&s(&path))
        .expect("open")
        .manifest()
        .clone();
    let b_file = manifest.operator("b").expect("b").subtasks[0]
        .keyed
        .as_ref()
        .expect("keyed")
        .files()
        .next()
        .expect("a file")
        .name
        .clone();
    flip_a_byte(&path.join(&b_file));
    let target = dir.path().join("target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::fs::write(target.join("notes.txt"), b"mine").expect("notes");
    let (e, m) = err(SavepointWriter::from_existing(&s(&path))
        .expect("writer")
        .write(&s(&target)));
    assert!(matches!(e, StateProcessorError::Read { .. }), "{e:?}");
    contains_all(&m, &["operator b", &b_file, "checksum"]);
    assert_eq!(listing(&target), ["notes.txt"]);
    // Without b, the same copy goes through into the same directory.
    let mut w = SavepointWriter::from_existing(&s(&path)).expect("writer");
    w.remove_operator("b").expect("remove b");
    w.write(&s(&target)).expect("write without b");
    let reader = SavepointReader::open(&s(&target)).expect("open");
    assert_eq!(reader.operators().len(), 1);
    assert_eq!(
        reader
            .keyed_state::<u32>("a")
            .expect("a")
            .values(&count_descriptor())
            .expect("values"),
        by_encoding((0..90u32).map(|k| (k, 1u64)))
    );
}

// ---------------------------------------------------------------------------------------
// Transformations
// ---------------------------------------------------------------------------------------

fn counts_of(reader: &SavepointReader, uid: &str) -> Vec<(u32, u64)> {
    reader
        .keyed_state::<u32>(uid)
        .expect("keyed")
        .values(&count_descriptor())
        .expect("values")
}

/// `count` state of operator `uid`'s keys `0..n`: `k * factor`.
fn counts_for(n: u32, factor: u64) -> Vec<(u32, u64)> {
    (0..n).map(|k| (k, u64::from(k) * factor)).collect()
}

/// From an existing savepoint, written into a directory inside it; a uid renamed onto a
/// taken one is refused; chained renames that swap two uids; an operator removed and
/// bootstrapped again under its uid; a bootstrapped operator renamed. Every operator reads
/// as the model says, the base savepoint is unchanged, and both are clean.
#[test]
fn renames_removals_and_a_copy_inside_the_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("sp");
    let mut writer = SavepointWriter::new(64).expect("writer");
    for (uid, p, factor) in [("a", 2, 1), ("b", 3, 10), ("c", 1, 100)] {
        writer
            .with_keyed_operator(uid, p, counts_for(20, factor), |r| r.0, SetCount::new())
            .expect("bootstrap");
    }
    writer.write(&s(&base)).expect("write base");
    let base_manifest = std::fs::read(base.join("_metadata")).expect("manifest");

    let mut w = SavepointWriter::from_existing(&s(&base)).expect("from existing");
    let (e, m) = err(w.change_uid("a", "b").map(|_| ()));
    assert!(
        matches!(e, StateProcessorError::DuplicateOperator { .. }),
        "{e:?}"
    );
    assert_eq!(
        m,
        format!(
            "operator b is already in the savepoint being written (from savepoint {}): remove it \
             or change its uid first",
            s(&base)
        )
    );
    // Swap a and b through two temporary uids.
    w.change_uid("a", "x")
        .expect("a → x")
        .change_uid("x", "y")
        .expect("x → y")
        .change_uid("b", "a")
        .expect("b → a")
        .change_uid("y", "b")
        .expect("y → b");
    assert_eq!(w.uids(), ["a", "b", "c"]);
    // c removed and bootstrapped again, at another parallelism, then renamed to d, and c
    // bootstrapped once more.
    w.remove_operator("c").expect("remove c");
    w.with_keyed_operator("c", 4, counts_for(30, 7), |r| r.0, SetCount::new())
        .expect("c again");
    w.change_uid("c", "d").expect("c → d");
    w.with_keyed_operator("c", 2, counts_for(5, 3), |r| r.0, SetCount::new())
        .expect("c once more");
    let (e, _) = err(w.change_uid("d", "c").map(|_| ()));
    assert!(
        matches!(e, StateProcessorError::DuplicateOperator { .. }),
        "{e:?}"
    );
    assert_eq!(w.uids(), ["a", "b", "c", "d"]);
    let inside = base.join("nested").join("sp2");
    w.write(&s(&inside)).expect("write inside the base");

    let reader = SavepointReader::open(&s(&inside)).expect("open");
    let shape: Vec<(String, u32)> = reader
        .operators()
        .into_iter()
        .map(|o| (o.uid, o.parallelism))
        .collect();
    assert_eq!(
        shape,
        [
            ("a".to_string(), 3),
            ("b".to_string(), 2),
            ("c".to_string(), 2),
            ("d".to_string(), 4)
        ]
    );
    assert_eq!(counts_of(&reader, "a"), by_encoding(counts_for(20, 10)));
    assert_eq!(counts_of(&reader, "b"), by_encoding(counts_for(20, 1)));
    assert_eq!(counts_of(&reader, "c"), by_encoding(counts_for(5, 3)));
    assert_eq!(counts_of(&reader, "d"), by_encoding(counts_for(30, 7)));
    verify_clean(&s(&inside), 20 + 20 + 5 + 30);

    // The base is as it was.
    assert_eq!(
        std::fs::read(base.join("_metadata")).expect("manifest"),
        base_manifest
    );
    let reader = SavepointReader::open(&s(&base)).expect("open base");
    assert_eq!(counts_of(&reader, "a"), by_encoding(counts_for(20, 1)));
    assert_eq!(counts_of(&reader, "c"), by_encoding(counts_for(20, 100)));
    verify_clean(&s(&base), 60);

    // Restored as a job restores it, the swapped operators hold the swapped keys.
    let (manifest, source) = open_savepoint(&s(&inside)).expect("open savepoint");
    let mut restored = BTreeMap::new();
    for i in 0..2 {
        let codec = BincodeCodec::<u32>::new();
        let mut b =
            HashMapBackend::for_subtask("a", 64, 2, i, codec.identity().clone()).expect("backend");
        let mut operator = OperatorStateBackend::new("a");
        restore_subtask(&manifest, "a", 2, i, Some(&mut b), &mut operator, &source)
            .expect("restore");
        let id = b.register_value(&count_descriptor()).expect("register");
        for key in b.keys(id.raw(), &()).expect("keys") {
            b.set_current_key(&key).expect("key");
            restored.insert(
                codec.decode(&key).expect("key"),
                b.value_get(id, &()).expect("get").expect("value"),
            );
        }
    }
    assert_eq!(restored, counts_for(20, 10).into_iter().collect());
}

// ---------------------------------------------------------------------------------------
// Snapshots written by the runtime
// ---------------------------------------------------------------------------------------

use cairn_core::{FileArea, KeyedData, OperatorListStateDescriptor};
use cairn_runtime::functions::Count;
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, CheckpointConfig, CheckpointRetention, Job, JobGraph, SnapshotMode, StateBackendConfig,
};
use jobs::*;

const FIRST: u64 = 4000;
const TOTAL: u64 = 7000;
const KEYS: u64 = 150;
const SEED: u64 = 77;

fn generator(total: u64) -> GeneratorSource {
    GeneratorSource::new(total, KEYS, SEED)
}

/// Per key, how many records of `range` have it.
fn gen_counts(range: std::ops::Range<u64>) -> BTreeMap<u64, u64> {
    let g = generator(TOTAL);
    let mut c = BTreeMap::new();
    for n in range {
        *c.entry(g.key_of(n)).or_default() += 1;
    }
    c
}

fn counting(g: GeneratorSource, uid: &str, sink: Option<Collect<(u64, u64)>>) -> JobGraph {
    let counted = source("gen", g)
        .key_by(|k: &u64| *k)
        .process(uid, Count::<u64, u64>::new());
    match sink {
        Some(sink) => counted.sink("sink", sink),
        None => counted.sink("sink", DiscardSink),
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "{what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs the counting job over `FIRST` records at parallelism 2 with checkpoints every
/// 20 ms in `mode`, until two checkpoints completed after the last record; cancels it
/// (keeping its checkpoints) and returns the newest checkpoint's path.
fn checkpointed(dir: &Path, backend: StateBackendConfig, mode: SnapshotMode) -> String {
    let mut cfg = config(dir, 2, backend, None);
    cfg.checkpoint = CheckpointConfig {
        interval: Some(std::time::Duration::from_millis(20)),
        retention: CheckpointRetention::RetainOnCancellation,
        snapshot_mode: mode,
        ..CheckpointConfig::default()
    };
    let handle = Job::new(counting(generator(FIRST).idle_at_end(), "count", None), cfg)
        .start()
        .expect("start");
    wait_for("reading", || handle.records_read() >= FIRST);
    let after = handle.checkpoints_completed();
    wait_for("checkpoints", || {
        handle.checkpoints_completed() >= after + 2
    });
    handle.cancel();
    assert!(handle.wait().expect("job").cancelled);
    let newest = std::fs::read_dir(dir.join("checkpoints"))
        .expect("checkpoint dir")
        .filter_map(|e| {
            let e = e.expect("entry");
            let id = e
                .file_name()
                .to_str()?
                .strip_prefix("chk-")?
                .parse::<u64>()
                .ok()?;
            e.path()
                .join("_metadata")
                .exists()
                .then_some((id, e.path()))
        })
        .max()
        .expect("a retained checkpoint");
    s(&newest.1)
}

fn data_kinds(reader: &SavepointReader, uid: &str) -> Vec<&'static str> {
    reader
        .manifest()
        .operator(uid)
        .expect("operator")
        .subtasks
        .iter()
        .filter_map(|s| s.keyed.as_ref())
        .map(|h| match h.data {
            KeyedData::Canonical { .. } => "canonical",
            KeyedData::RocksNative { .. } => "native",
            KeyedData::Changelog { .. } => "changelog",
            _ => "other",
        })
        .collect()
}

fn read_u64_counts(reader: &SavepointReader, uid: &str) -> BTreeMap<u64, u64> {
    reader
        .keyed_state::<u64>(uid)
        .expect("keyed state")
        .values(&count_descriptor())
        .expect("counts")
        .into_iter()
        .collect()
}

/// Full checkpoints of both backends are canonical: they read as the model says and
/// become clean self-contained savepoints that read the same.
#[test]
fn full_checkpoints_of_both_backends_read_and_become_savepoints() {
    let want = gen_counts(0..FIRST);
    for (name, rocks) in [("hashmap", false), ("rocksdb", true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = if rocks {
            rocksdb(dir.path())
        } else {
            StateBackendConfig::HashMap
        };
        let checkpoint = checkpointed(dir.path(), backend, SnapshotMode::Full);
        let reader = SavepointReader::open(&checkpoint).expect("open checkpoint");
        assert_eq!(reader.snapshot_type(), SnapshotType::Checkpoint);
        assert_eq!(data_kinds(&reader, "count"), ["canonical"; 2], "{name}");
        assert_eq!(read_u64_counts(&reader, "count"), want, "{name}");
        let savepoint = s(&dir.path().join("from-checkpoint"));
        SavepointWriter::from_existing(&checkpoint)
            .expect("from checkpoint")
            .write(&savepoint)
            .expect("write");
        let reader = SavepointReader::open(&savepoint).expect("open savepoint");
        assert_eq!(reader.snapshot_type(), SnapshotType::Savepoint);
        assert!(reader
            .manifest()
            .files()
            .all(|f| f.area == FileArea::Private));
        assert_eq!(read_u64_counts(&reader, "count"), want, "{name}");
        verify_clean(&savepoint, want.len() as u64);
    }
}

/// A RocksDB incremental checkpoint is native: the reader refuses it naming the way out;
/// the writer carries it into a clean savepoint (its shared SST files private), from which
/// a RocksDB job at another parallelism counts on exactly, and which the heap backend
/// refuses.
#[test]
fn a_native_incremental_checkpoint_is_refused_but_carried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = checkpointed(dir.path(), rocksdb(dir.path()), SnapshotMode::Incremental);
    let reader = SavepointReader::open(&checkpoint).expect("open");
    assert_eq!(data_kinds(&reader, "count"), ["native"; 2]);
    assert!(reader
        .manifest()
        .files()
        .any(|f| f.area == FileArea::Shared));
    let (e, m) = err(reader.keyed_state::<u64>("count"));
    assert!(
        matches!(e, StateProcessorError::Unsupported { .. }),
        "{e:?}"
    );
    assert_eq!(
        m,
        format!(
            "the keyed state of operator count in checkpoint {checkpoint} cannot be processed: \
             it is in RocksDB's native format; turn the savepoint into a canonical one with \
             `state-dump convert` and read that"
        )
    );

    let savepoint = s(&dir.path().join("carried"));
    let mut writer = SavepointWriter::from_existing(&checkpoint).expect("from checkpoint");
    writer
        .remove_operator("gen")
        .expect("remove the source")
        .with_operator_state(
            "gen",
            1,
            &OperatorListStateDescriptor::<(u64, u64)>::split("next"),
            vec![(FIRST, 1)],
        )
        .expect("positions");
    writer.write(&savepoint).expect("write");
    let reader = SavepointReader::open(&savepoint).expect("open");
    assert!(reader
        .manifest()
        .files()
        .all(|f| f.area == FileArea::Private));
    let snapshot = state_dump::open_snapshot(&savepoint).expect("state-dump opens it");
    let report = state_dump::verify(&snapshot, &state_dump::NoProgress).expect("verify");
    assert!(report.is_clean(), "{}", report.render());

    let out = Collect::default();
    let run = dir.path().join("second");
    Job::new(
        counting(generator(TOTAL), "count", Some(out.clone())),
        config(&run, 3, rocksdb(&run), Some(&savepoint)),
    )
    .run()
    .expect("restored RocksDB job");
    let (before, after) = (gen_counts(0..FIRST), gen_counts(0..TOTAL));
    let want: BTreeMap<u64, Vec<u64>> = after
        .iter()
        .filter_map(|(k, &n)| {
            let from = before.get(k).copied().unwrap_or(0);
            (n > from).then(|| (*k, (from + 1..=n).collect()))
        })
        .collect();
    assert_eq!(counts_by_key(&out.taken()), want);

    let heap = dir.path().join("heap");
    let e = Job::new(
        counting(generator(TOTAL), "count", Some(Collect::default())),
        config(&heap, 2, StateBackendConfig::HashMap, Some(&savepoint)),
    )
    .run()
    .expect_err("the heap backend cannot restore native state")
    .to_string();
    assert!(e.contains("state-dump convert"), "{e}");
}

/// Changelog checkpoints (of either backend) are refused by the reader and the writer
/// with a message that says why and what to do; their operator state still reads.
#[test]
fn changelog_checkpoints_are_refused_clearly() {
    for rocks in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = if rocks {
            rocksdb(dir.path())
        } else {
            StateBackendConfig::HashMap
        };
        let checkpoint = checkpointed(dir.path(), backend, SnapshotMode::Changelog);
        let reader = SavepointReader::open(&checkpoint).expect("open");
        assert_eq!(data_kinds(&reader, "count"), ["changelog"; 2]);
        let (e, m) = err(reader.keyed_state::<u64>("count"));
        assert!(
            matches!(e, StateProcessorError::Unsupported { .. }),
            "{e:?}"
        );
        assert_eq!(
            m,
            format!(
                "the keyed state of operator count in checkpoint {checkpoint} cannot be \
                 processed: it is changelog data (a checkpoint of a job with the changelog \
                 on); read a savepoint of the job instead"
            )
        );
        let (e, m) = err(SavepointWriter::from_existing(&checkpoint));
        assert!(
            matches!(e, StateProcessorError::Unsupported { .. }),
            "{e:?}"
        );
        assert_eq!(
            m,
            format!(
                "the keyed state of operator count in checkpoint {checkpoint} cannot be \
                 processed: it is changelog data (a checkpoint of a job with the changelog \
                 on); start from a savepoint of the job instead"
            )
        );
        assert_eq!(
            reader
                .read_operator_state_by_subtask(
                    "gen",
                    &OperatorListStateDescriptor::<(u64, u64)>::split("next")
                )
                .expect("operator state"),
            [vec![], vec![]]
        );
    }
}

/// A source that keeps split state `offsets` (u64) and union state `names` (String) and
/// emits, once, what its subtask holds: `(index, parallelism, offsets, names)`. Fresh, a
/// subtask holds `[10 i, 10 i + 1]` and `["s<i>"]`. With `idle`, it stays idle afterwards
/// (so that a savepoint can be taken), otherwise it ends.
#[derive(Clone, Debug)]
struct Echo {
    idle: bool,
    offsets: Vec<u64>,
    names: Vec<String>,
    who: (u32, u32),
    ids: Option<(
        cairn_core::OperatorListStateId<u64>,
        cairn_core::OperatorListStateId<String>,
    )>,
    emitted: bool,
}

type Echoed = (u32, u32, Vec<u64>, Vec<String>);

impl Echo {
    fn new(idle: bool) -> Self {
        Self {
            idle,
            offsets: Vec::new(),
            names: Vec::new(),
            who: (0, 0),
            ids: None,
            emitted: false,
        }
    }
}

fn echo_split() -> OperatorListStateDescriptor<u64> {
    OperatorListStateDescriptor::split("offsets")
}

fn echo_union() -> OperatorListStateDescriptor<String> {
    OperatorListStateDescriptor::union("names")
}

impl cairn_runtime::Checkpointed for Echo {
    fn initialize_state(
        &mut self,
        ctx: &mut cairn_runtime::InitContext<'_>,
    ) -> cairn_runtime::Result<()> {
        let split = ctx.operator_state.register_list(&echo_split())?;
        let union = ctx.operator_state.register_list(&echo_union())?;
        self.who = (ctx.subtask.index, ctx.subtask.parallelism);
        if ctx.is_restored {
            self.offsets = ctx.operator_state.list(split)?.clone();
            self.names = ctx.operator_state.list(union)?.clone();
        } else {
            let i = u64::from(ctx.subtask.index);
            self.offsets = vec![10 * i, 10 * i + 1];
            self.names = vec![format!("s{i}")];
        }
        self.ids = Some((split, union));
        Ok(())
    }

    fn snapshot_state(
        &mut self,
        ctx: &mut cairn_runtime::SnapshotContext<'_>,
    ) -> cairn_runtime::Result<()> {
        if let Some((split, union)) = self.ids {
            *ctx.operator_state.list(split)? = self.offsets.clone();
            *ctx.operator_state.list(union)? = self.names.clone();
        }
        Ok(())
    }
}

impl cairn_runtime::Source for Echo {
    type Out = Echoed;

    fn poll(
        &mut self,
        out: &mut cairn_runtime::Collector<'_, Echoed>,
        _max: usize,
    ) -> cairn_runtime::Result<cairn_runtime::SourceStatus> {
        if !self.emitted {
            self.emitted = true;
            out.collect((
                self.who.0,
                self.who.1,
                self.offsets.clone(),
                self.names.clone(),
            ))?;
        }
        Ok(if self.idle {
            cairn_runtime::SourceStatus::Idle
        } else {
            cairn_runtime::SourceStatus::End
        })
    }
}

/// Runs [`Echo`] restored from `savepoint` at `parallelism` and returns what each subtask
/// held, by subtask.
fn echo_restored(dir: &Path, savepoint: &str, parallelism: u32) -> Vec<(Vec<u64>, Vec<String>)> {
    let out: Collect<Echoed> = Collect::default();
    let run = dir.join(format!("echo-{parallelism}"));
    let graph = source("echo", Echo::new(false)).sink("sink", out.clone());
    let result = Job::new(
        graph,
        config(
            &run,
            parallelism,
            StateBackendConfig::HashMap,
            Some(savepoint),
        ),
    )
    .run()
    .expect("echo job");
    assert_eq!(result.restored_from, Some(format!("savepoint {savepoint}")));
    let mut got = out.taken();
    got.sort();
    assert_eq!(
        got.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>(),
        (0..parallelism)
            .map(|i| (i, parallelism))
            .collect::<Vec<_>>()
    );
    got.into_iter().map(|e| (e.2, e.3)).collect()
}

/// What a job restored at `q` gives each subtask of split state `runs` (by old subtask)
/// and union state `union`: at the old parallelism each its run, otherwise the
/// concatenation dealt round robin; the union whole everywhere.
fn redistributed(runs: &[Vec<u64>], union: &[String], q: u32) -> Vec<(Vec<u64>, Vec<String>)> {
    let all: Vec<u64> = runs.iter().flatten().copied().collect();
    (0..q as usize)
        .map(|i| {
            let mine = if runs.len() == q as usize {
                runs[i].clone()
            } else {
                all.iter().copied().skip(i).step_by(q as usize).collect()
            };
            (mine, union.to_vec())
        })
        .collect()
}

/// Split and union operator state written by a real job at parallelism 3 reads back per
/// subtask and whole; copied by the writer, and bootstrapped by it, a real job restores it
/// at parallelisms 1, 2, 3 and 5 exactly as the runtime redistributes.
#[test]
fn split_and_union_state_round_trip_through_real_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out: Collect<Echoed> = Collect::default();
    let handle = Job::new(
        source("echo", Echo::new(true)).sink("sink", out.clone()),
        config(
            &dir.path().join("first"),
            3,
            StateBackendConfig::HashMap,
            None,
        ),
    )
    .start()
    .expect("start");
    wait_for("echoes", || out.0.lock().expect("lock").len() == 3);
    let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
    handle.wait().expect("job");

    let reader = SavepointReader::open(&savepoint).expect("open");
    let runs: Vec<Vec<u64>> = vec![vec![0, 1], vec![10, 11], vec![20, 21]];
    let union: Vec<String> = vec!["s0".into(), "s1".into(), "s2".into()];
    assert_eq!(
        reader
            .read_operator_state_by_subtask("echo", &echo_split())
            .expect("split"),
        runs
    );
    assert_eq!(
        reader
            .read_operator_state("echo", &echo_split())
            .expect("split"),
        [0, 1, 10, 11, 20, 21]
    );
    assert_eq!(
        reader
            .read_operator_state("echo", &echo_union())
            .expect("union"),
        union
    );
    // An operator with only operator state: no key codec, no keyed state to read.
    let info = reader.operator("echo").expect("info");
    assert!(info.key_codec.is_none() && info.keyed_states.is_empty());
    let mut keyed = reader
        .keyed_state::<u64>("echo")
        .expect("an empty keyed reader");
    assert_eq!(keyed.states().count(), 0);
    let (_, m) = err(keyed.values(&count_descriptor()));
    assert_eq!(
        m,
        format!("operator echo in savepoint {savepoint} has no keyed state count; it has: (none)")
    );
    let states: Vec<(String, cairn_core::Redistribution, usize)> = reader
        .operator("echo")
        .expect("info")
        .operator_states
        .into_iter()
        .map(|s| (s.name, s.mode, s.elements))
        .collect();
    assert_eq!(
        states,
        [
            ("names".to_string(), cairn_core::Redistribution::Union, 3),
            ("offsets".to_string(), cairn_core::Redistribution::Split, 6)
        ]
    );

    // The runtime's savepoint, and a copy of it by the writer.
    let copy = s(&dir.path().join("copy"));
    SavepointWriter::from_existing(&savepoint)
        .expect("from existing")
        .write(&copy)
        .expect("copy");
    for q in [1, 2, 3, 5] {
        let want = redistributed(&runs, &union, q);
        assert_eq!(
            echo_restored(dir.path(), &savepoint, q),
            want,
            "runtime's, q={q}"
        );
        assert_eq!(
            echo_restored(&dir.path().join("c"), &copy, q),
            want,
            "copy, q={q}"
        );
    }

    // Bootstrapped at parallelism 4 from scratch: 7 offsets in runs of 1, 2, 2, 2.
    let boot = s(&dir.path().join("boot"));
    let names: Vec<String> = vec!["x".into(), "y".into()];
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_operator_state("echo", 4, &echo_split(), (0..7).collect())
        .expect("split")
        .with_operator_state("echo", 4, &echo_union(), names.clone())
        .expect("union");
    writer.write(&boot).expect("write");
    let runs: Vec<Vec<u64>> = vec![vec![0], vec![1, 2], vec![3, 4], vec![5, 6]];
    for q in [1, 3, 4, 5] {
        assert_eq!(
            echo_restored(&dir.path().join("b"), &boot, q),
            redistributed(&runs, &names, q),
            "bootstrapped, q={q}"
        );
    }
}

/// A savepoint bootstrapped with another key codec than the job's (u32 keys for a word
/// count keyed by String; or String keys under another codec identity) is refused by the
/// restoring job, naming both codecs: it would otherwise read keys it cannot find.
#[test]
fn a_job_refuses_bootstrapped_keys_of_another_codec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 50, 10, 3);
    let sp = s(&dir.path().join("u32-keys"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator(
            "count",
            2,
            (0..10u32).map(|k| (k, 5u64)),
            |r| r.0,
            SetCount::new(),
        )
        .expect("bootstrap");
    writer.write(&sp).expect("write");
    for (i, backend) in [StateBackendConfig::HashMap, rocksdb(dir.path())]
        .into_iter()
        .enumerate()
    {
        let e = Job::new(
            wordcount(&input, "count", Collect::default()),
            config(&dir.path().join(format!("run-{i}")), 2, backend, Some(&sp)),
        )
        .run()
        .expect_err("another key codec")
        .to_string();
        contains_all(
            &e,
            &[
                "operator count",
                &sp,
                "incompatible key codec",
                "stored u32@v1 (bincode1-fixint-le), registered alloc::string::String@v1 \
                 (bincode1-fixint-le)",
            ],
        );
    }
}

/// Per key, with `c` its count so far: value `c`; list: `c` added, cleared (an empty
/// update) when `c % 4 == 0`; map: `c % 3 → c` put, every entry removed when `c % 5 == 0`.
#[derive(Clone, Debug)]
struct Churn;

impl cairn_runtime::Checkpointed for Churn {}

impl cairn_runtime::KeyedProcessFunction for Churn {
    type Key = u64;
    type In = u64;
    type Out = u64;
    type State = ClearingIds;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<ClearingIds> {
        Ok(Clearing.open(b)?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &ClearingIds,
        _key: &u64,
        _record: u64,
        b: &mut B,
        _timers: &mut cairn_runtime::TimerService,
        out: &mut cairn_runtime::Collector<'_, u64>,
    ) -> cairn_runtime::Result<()> {
        let c = b.value_get(s.value, &())?.unwrap_or(0) + 1;
        b.value_update(s.value, &(), c)?;
        b.list_add(s.list, &(), c)?;
        if c % 4 == 0 {
            b.list_update(s.list, &(), Vec::new())?;
        }
        b.map_put(s.map, &(), c % 3, c)?;
        if c % 5 == 0 {
            for (uk, _) in b.map_entries(s.map, &())? {
                b.map_remove(s.map, &(), &uk)?;
            }
        }
        out.collect(c)
    }
}

/// Canonical savepoints of a real job under both backends, at max parallelism 1 (hashmap)
/// and 32768 (RocksDB, parallelism 2): cleared lists and emptied maps are absent, every
/// other value as the model says, and the savepoints are clean.
#[test]
fn runtime_savepoints_with_cleared_state_at_extreme_max_parallelisms() {
    let counts = gen_counts(0..FIRST);
    let mut lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut maps: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (&k, &c) in &counts {
        let list: Vec<u64> = (c / 4 * 4 + 1..=c).collect();
        if !list.is_empty() {
            lists.insert(k, list);
        }
        let mut map = BTreeMap::new();
        for i in c / 5 * 5 + 1..=c {
            map.insert(i % 3, i);
        }
        if !map.is_empty() {
            maps.insert(k, by_encoding(map));
        }
    }
    assert!(lists.len() < counts.len() && maps.len() < counts.len());
    for (rocks, parallelism, max_parallelism) in [(false, 1, 1), (true, 2, 32768)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = if rocks {
            rocksdb(dir.path())
        } else {
            StateBackendConfig::HashMap
        };
        let mut cfg = config(dir.path(), parallelism, backend, None);
        cfg.max_parallelism = max_parallelism;
        let graph = source("gen", generator(FIRST).idle_at_end())
            .key_by(|k: &u64| *k)
            .process("churn", Churn)
            .sink("sink", DiscardSink);
        let handle = Job::new(graph, cfg).start().expect("start");
        wait_for("reading", || handle.records_read() >= FIRST);
        let savepoint = handle.stop_with_savepoint(None).expect("savepoint");
        handle.wait().expect("job");

        let reader = SavepointReader::open(&savepoint).expect("open");
        assert_eq!(reader.max_parallelism(), Some(max_parallelism));
        assert_eq!(
            data_kinds(&reader, "churn"),
            vec!["canonical"; parallelism as usize]
        );
        let mut k = reader.keyed_state::<u64>("churn").expect("keyed");
        let (l, m, v) = clearing_descriptors();
        assert_eq!(k.values(&v).expect("values"), by_encoding(counts.clone()));
        assert_eq!(k.lists(&l).expect("lists"), by_encoding(lists.clone()));
        assert_eq!(k.maps(&m).expect("maps"), by_encoding(maps.clone()));
        let entries = counts.len() + lists.len() + maps.values().map(Vec::len).sum::<usize>();
        verify_clean(&savepoint, entries as u64);
    }
}

/// A checkpoint copied into its own job directory (the parent of `chk-<id>`, holding
/// `shared/`) would write its shared files as the savepoint's private `shared/<name>`: the
/// very files of the checkpoint. The savepoint would then share them with the job (whose
/// checkpoint GC deletes them), and a write failing midway would delete them. It is refused
/// up front, however the directory is spelled, and nothing there changes.
#[test]
fn a_checkpoint_is_not_copied_into_its_own_job_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let checkpoint = checkpointed(
        dir.path(),
        StateBackendConfig::HashMap,
        SnapshotMode::Incremental,
    );
    let root = dir.path().join("checkpoints");
    let reader = SavepointReader::open(&checkpoint).expect("open");
    assert_eq!(read_u64_counts(&reader, "count"), gen_counts(0..FIRST));
    let shared: Vec<String> = reader
        .manifest()
        .files()
        .filter(|f| f.area == FileArea::Shared)
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(shared.len(), 2, "{shared:?}");
    // The last file copied is damaged: a write that got that far fails there.
    flip_a_byte(&root.join("shared").join(&shared[1]));
    let snapshot = |root: &Path| -> Vec<(String, Vec<u8>)> {
        listing(root)
            .into_iter()
            .map(|n| {
                let bytes = std::fs::read(root.join(&n)).expect("read");
                (n, bytes)
            })
            .collect()
    };
    let before = snapshot(&root);
    for target in [
        s(&root),
        format!("{}/", s(&root)),
        format!("{checkpoint}/.."),
    ] {
        let (e, m) = err(SavepointWriter::from_existing(&checkpoint)
            .expect("writer")
            .write(&target));
        assert!(matches!(e, StateProcessorError::Write { .. }), "{e:?}");
        assert_eq!(
            m,
            format!(
                "cannot write the savepoint: checking the target: it is the job directory of \
                 checkpoint {checkpoint}, whose shared files the savepoint's own copies would \
                 replace; write to another directory path={target}"
            )
        );
        assert_eq!(snapshot(&root), before, "the job directory changed");
    }
    // Elsewhere the copy fails on the damaged file only.
    let (e, m) = err(SavepointWriter::from_existing(&checkpoint)
        .expect("writer")
        .write(&s(&dir.path().join("elsewhere"))));
    assert!(matches!(e, StateProcessorError::Read { .. }), "{e:?}");
    contains_all(&m, &[&shared[1], "checksum"]);
    assert_eq!(snapshot(&root), before);
}

/// The reader takes a savepoint's directory or its `_metadata`; so does the writer: a target
/// given as `<dir>/_metadata` (or `<dir>/`) writes the savepoint into `<dir>`, which the
/// reader then opens by either name (not into a directory named `_metadata` that no reader
/// finds, and that keeps `<dir>` from ever holding a savepoint).
#[test]
fn a_target_given_by_its_manifest_path_writes_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, target) in [
        ("sp", s(&dir.path().join("sp").join("_metadata"))),
        ("sp2", format!("{}/", s(&dir.path().join("sp2")))),
        ("sp3", format!("{}/_metadata/", s(&dir.path().join("sp3")))),
    ] {
        let mut writer = SavepointWriter::new(8).expect("writer");
        writer
            .with_keyed_operator("count", 1, vec![(1u32, 4u64)], |r| r.0, SetCount::new())
            .expect("bootstrap");
        writer.write(&target).expect("write");
        let sp = dir.path().join(name);
        assert!(
            sp.join("_metadata").is_file(),
            "{target}: {:?}",
            listing(dir.path())
        );
        for given in [s(&sp), target.clone()] {
            let reader = SavepointReader::open(&given).expect("open");
            assert_eq!(reader.path(), s(&sp));
            assert_eq!(counts_of(&reader, "count"), [(1, 4)]);
        }
        // Written over by neither spelling.
        for again in [s(&sp), target.clone()] {
            let (e, _) = err(SavepointWriter::new(8).expect("writer").write(&again));
            assert!(
                matches!(e, StateProcessorError::SavepointExists { .. }),
                "{e:?}"
            );
        }
        verify_clean(&s(&sp), 1);
    }
}

/// A savepoint in a directory named like a checkpoint's (`…/chk-<n>`; the writer writes to
/// any path) restores in a job: `cairn_storage::open_snapshot`, which the runtime and the
/// reader share, opens it as the savepoint its manifest says it is. (Before, the runtime
/// failed with "manifest mismatch: expected Checkpoint 7, manifest says Savepoint 1".)
#[test]
fn a_job_restores_a_savepoint_in_a_directory_named_like_a_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, occurrences) = write_input(dir.path(), 100, 8, 5);
    let path = s(&dir.path().join("chk-7"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator(
            "count",
            2,
            vec![("w0".to_string(), 100u64)],
            |r| r.0.clone(),
            SetCount::new(),
        )
        .expect("bootstrap");
    writer.write(&path).expect("write");
    let out = Collect::default();
    Job::new(
        wordcount(&input, "count", out.clone()),
        config(
            &dir.path().join("run"),
            2,
            StateBackendConfig::HashMap,
            Some(&path),
        ),
    )
    .run()
    .expect("a job restores the savepoint in chk-7");
    let want: BTreeMap<String, Vec<u64>> = occurrences
        .iter()
        .map(|(w, &n)| {
            let from = if w == "w0" { 100 } else { 0 };
            (w.clone(), (from + 1..=from + n).collect())
        })
        .collect();
    assert_eq!(counts_by_key(&out.taken()), want);
}
