//! State schema evolution in the RocksDB backend (`src/migrate.rs`), beyond what the
//! workspace's conformance suite (`tests/common/evolution.rs`) covers: states with a TTL, a
//! state of every kind large enough to be written as several files, a native restore at
//! another parallelism, a conversion error, a second registration in the same run, a
//! snapshot taken just before the migration, and a checkpoint after it restored under the
//! heap backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod mem;

use cairn_core::*;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use mem::Mem;
use serde::{Deserialize, Serialize};

const MAX_P: u32 = 128;
const UID: &str = "evolve";

fn key_codec() -> BincodeCodec<u64> {
    BincodeCodec::new()
}

fn backend(dir: &Path, range: KeyGroupRange, options: RocksDbOptions) -> RocksDbBackend {
    RocksDbBackend::new(RocksDbConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key_codec().identity().clone(),
        local_dir: dir.to_path_buf(),
        options,
    })
    .unwrap()
}

fn set_key<B: KeyedStateBackend>(b: &mut B, k: u64) {
    b.set_current_key(&key_codec().encode_to_vec(&k).unwrap())
        .unwrap();
}

fn kg(k: u64) -> KeyGroup {
    key_group_for_key(&key_codec().encode_to_vec(&k).unwrap(), MAX_P)
}

/// Takes a snapshot of `b` into `target` and returns its handle.
fn snapshot<B: KeyedStateBackend>(
    b: &mut B,
    options: SnapshotOptions,
    target: &Mem,
) -> KeyedStateHandle {
    b.snapshot(options)
        .unwrap()
        .run(target, &CancelToken::new())
        .unwrap()
}

/// A fresh backend of `range` restored from `handles`.
fn restored(
    dir: &Path,
    range: KeyGroupRange,
    options: RocksDbOptions,
    handles: &[KeyedStateHandle],
    source: &Mem,
) -> RocksDbBackend {
    let mut b = backend(dir, range, options);
    b.restore(handles, source).unwrap();
    b
}

// ---------------------------------------------------------------------------------------
// The old schema.

/// Sums its inputs (the old aggregating state: the accumulator is the sum).
#[derive(Debug)]
struct Sum;

impl AggregateFunction<u64, u64, u64> for Sum {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, input: u64) {
        *acc += input;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

fn value_v1() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("value")
}
fn list_v1() -> ListStateDescriptor<String> {
    ListStateDescriptor::new("list")
}
fn map_v1() -> MapStateDescriptor<u32, String> {
    MapStateDescriptor::new("map")
}
fn reducing_v1() -> ReducingStateDescriptor<i64> {
    ReducingStateDescriptor::new("reducing", |a, b| a + b)
}
fn aggregating_v1() -> AggregatingStateDescriptor<u64, u64, u64> {
    AggregatingStateDescriptor::new("aggregating", Sum)
}

struct Ids1 {
    value: ValueStateId<u64, VoidNamespace>,
    list: ListStateId<String, VoidNamespace>,
    map: MapStateId<u32, String, VoidNamespace>,
    reducing: ReducingStateId<i64, VoidNamespace>,
    aggregating: AggregatingStateId<u64, u64, u64, VoidNamespace>,
}

fn register_v1<B: KeyedStateBackend>(b: &mut B) -> Ids1 {
    Ids1 {
        value: b.register_value(&value_v1()).unwrap(),
        list: b.register_list(&list_v1()).unwrap(),
        map: b.register_map(&map_v1()).unwrap(),
        reducing: b.register_reducing(&reducing_v1()).unwrap(),
        aggregating: b.register_aggregating(&aggregating_v1()).unwrap(),
    }
}

/// What the old program writes for key `k`: value `3k`, `k % 4` list elements, `k % 3` map
/// entries, a reducing sum of `k` and `-1`, an aggregated sum of `k` and `k + 1`.
fn fill_v1<B: KeyedStateBackend>(b: &mut B, ids: &Ids1, k: u64) {
    set_key(b, k);
    b.value(&ids.value).update(3 * k).unwrap();
    for i in 0..k % 4 {
        b.list(&ids.list).add(format!("{k}-{i}")).unwrap();
    }
    for j in 0..k % 3 {
        b.map(&ids.map).put(j as u32, format!("m{k}.{j}")).unwrap();
    }
    b.reducing(&ids.reducing).add(k as i64).unwrap();
    b.reducing(&ids.reducing).add(-1).unwrap();
    b.aggregating(&ids.aggregating).add(k).unwrap();
    b.aggregating(&ids.aggregating).add(k + 1).unwrap();
}

// ---------------------------------------------------------------------------------------
// The new schema.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Count {
    n: u64,
    doubled: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tagged {
    text: String,
    len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Labelled {
    label: String,
    upper: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SumMax {
    sum: u64,
    max: u64,
}

/// The new aggregate: the sum and the largest input since the migration.
#[derive(Debug)]
struct SumAndMax;

impl AggregateFunction<u64, SumMax, (u64, u64)> for SumAndMax {
    fn create_accumulator(&self) -> SumMax {
        SumMax::default()
    }
    fn add(&self, acc: &mut SumMax, input: u64) {
        acc.sum += input;
        acc.max = acc.max.max(input);
    }
    fn result(&self, acc: &SumMax) -> (u64, u64) {
        (acc.sum, acc.max)
    }
}

fn count(n: u64) -> Count {
    Count { n, doubled: 2 * n }
}
fn tagged(text: String) -> Tagged {
    Tagged {
        len: text.len() as u32,
        text,
    }
}
fn labelled(label: String) -> Labelled {
    Labelled {
        upper: label.to_uppercase(),
        label,
    }
}

/// The new program's codecs: the current ones (what a program that never saw the old
/// schema registers) or evolving ones that migrate from the old schema, counting every
/// value they convert in `conversions`.
#[derive(Clone, Default)]
struct Schema2 {
    evolving: bool,
    conversions: Arc<AtomicU64>,
}

impl Schema2 {
    fn evolving() -> Self {
        Self {
            evolving: true,
            conversions: Arc::default(),
        }
    }

    fn conversions(&self) -> u64 {
        self.conversions.load(Ordering::Relaxed)
    }

    fn codec<O, T>(
        &self,
        current: BincodeCodec<T>,
        old: BincodeCodec<O>,
        convert: fn(O) -> T,
    ) -> CodecRef<T>
    where
        O: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
        T: Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    {
        if !self.evolving {
            return Arc::new(current);
        }
        let n = self.conversions.clone();
        Arc::new(EvolvingCodec::new(current).migrates_from(old, move |o| {
            n.fetch_add(1, Ordering::Relaxed);
            convert(o)
        }))
    }

    fn value(&self) -> ValueStateDescriptor<Count> {
        ValueStateDescriptor {
            name: "value".into(),
            value: self.codec(BincodeCodec::named("Count", 2), BincodeCodec::new(), count),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    fn list(&self) -> ListStateDescriptor<Tagged> {
        ListStateDescriptor {
            name: "list".into(),
            element: self.codec(
                BincodeCodec::named("Tagged", 1),
                BincodeCodec::new(),
                tagged,
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    fn map(&self) -> MapStateDescriptor<u32, Labelled> {
        MapStateDescriptor {
            name: "map".into(),
            user_key: Arc::new(BincodeCodec::<u32>::new()),
            value: self.codec(
                BincodeCodec::named("Labelled", 1),
                BincodeCodec::new(),
                labelled,
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    fn reducing(&self) -> ReducingStateDescriptor<i128> {
        ReducingStateDescriptor {
            name: "reducing".into(),
            value: self.codec(
                BincodeCodec::named("Total", 2),
                BincodeCodec::<i64>::new(),
                i128::from,
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
            reduce: Arc::new(|a, b| a + b),
        }
    }

    fn aggregating(&self) -> AggregatingStateDescriptor<u64, SumMax, (u64, u64)> {
        AggregatingStateDescriptor {
            name: "aggregating".into(),
            accumulator: self.codec(
                BincodeCodec::named("SumMax", 1),
                BincodeCodec::<u64>::new(),
                |sum| SumMax { sum, max: 0 },
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
            function: Arc::new(SumAndMax),
        }
    }

    fn register<B: KeyedStateBackend>(&self, b: &mut B) -> Ids2 {
        Ids2 {
            value: b.register_value(&self.value()).unwrap(),
            list: b.register_list(&self.list()).unwrap(),
            map: b.register_map(&self.map()).unwrap(),
            reducing: b.register_reducing(&self.reducing()).unwrap(),
            aggregating: b.register_aggregating(&self.aggregating()).unwrap(),
        }
    }
}

struct Ids2 {
    value: ValueStateId<Count, VoidNamespace>,
    list: ListStateId<Tagged, VoidNamespace>,
    map: MapStateId<u32, Labelled, VoidNamespace>,
    reducing: ReducingStateId<i128, VoidNamespace>,
    aggregating: AggregatingStateId<u64, SumMax, (u64, u64), VoidNamespace>,
}

/// What a key holds, in the new schema's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Row {
    value: Option<Count>,
    list: Vec<Tagged>,
    map: Vec<(u32, Labelled)>,
    reducing: Option<i128>,
    aggregating: Option<(u64, u64)>,
}

/// What [`fill_v1`] wrote for `k`, as the new program reads it after the migration.
fn migrated_row(k: u64) -> Row {
    Row {
        value: Some(count(3 * k)),
        list: (0..k % 4).map(|i| tagged(format!("{k}-{i}"))).collect(),
        map: (0..k % 3)
            .map(|j| (j as u32, labelled(format!("m{k}.{j}"))))
            .collect(),
        reducing: Some(i128::from(k as i64 - 1)),
        aggregating: Some((2 * k + 1, 0)),
    }
}

/// How many values [`fill_v1`] stored for `k` (each converted once by a migration).
fn stored_values(k: u64) -> u64 {
    1 + k % 4 + k % 3 + 1 + 1
}

/// What the new program writes for `k` in `round`, applied to the model too.
fn fill_v2<B: KeyedStateBackend>(b: &mut B, ids: &Ids2, k: u64, round: u64, model: &mut Row) {
    set_key(b, k);
    let n = k * 10 + round;
    b.value(&ids.value).update(count(n)).unwrap();
    model.value = Some(count(n));
    let text = format!("{k}/{round}");
    b.list(&ids.list).add(tagged(text.clone())).unwrap();
    model.list.push(tagged(text));
    let label = format!("r{round}");
    b.map(&ids.map).put(7, labelled(label.clone())).unwrap();
    model.map.retain(|(uk, _)| *uk != 7);
    model.map.push((7, labelled(label)));
    b.reducing(&ids.reducing).add(100).unwrap();
    model.reducing = Some(model.reducing.unwrap_or(0) + 100);
    b.aggregating(&ids.aggregating).add(n).unwrap();
    let (sum, max) = model.aggregating.unwrap_or((0, 0));
    model.aggregating = Some((sum + n, max.max(n)));
}

fn read_v2<B: KeyedStateBackend>(b: &mut B, ids: &Ids2, k: u64) -> Row {
    set_key(b, k);
    Row {
        value: b.value(&ids.value).get().unwrap(),
        list: b.list(&ids.list).get().unwrap(),
        map: b.map(&ids.map).entries().unwrap(),
        reducing: b.reducing(&ids.reducing).get().unwrap(),
        aggregating: b.aggregating(&ids.aggregating).get().unwrap(),
    }
}

/// Checks every key of `model` that `b` owns against it; returns how many it checked.
fn check_against<B: KeyedStateBackend>(b: &mut B, ids: &Ids2, model: &BTreeMap<u64, Row>) -> usize {
    let range = b.key_group_range();
    let mut checked = 0;
    for (&k, row) in model.iter().filter(|(k, _)| range.contains(kg(**k))) {
        assert_eq!(&read_v2(b, ids, k), row, "key {k}");
        checked += 1;
    }
    checked
}

/// The codec identity each state has in `h`.
fn identities(h: &KeyedStateHandle) -> BTreeMap<String, String> {
    h.states
        .iter()
        .map(|s| (s.name.clone(), s.value.to_string()))
        .collect()
}

fn assert_new_identities(h: &KeyedStateHandle) {
    let ids = identities(h);
    for (state, t) in [
        ("value", "Count@v2"),
        ("list", "Tagged@v1"),
        ("map", "Labelled@v1"),
        ("reducing", "Total@v2"),
        ("aggregating", "SumMax@v1"),
    ] {
        assert!(ids[state].starts_with(t), "{state}: {ids:?}");
    }
}

// ---------------------------------------------------------------------------------------

/// 50,000 keys of every kind, from a native checkpoint with memtables of 1 MiB (so the
/// migration writes its files at 1 MiB: several per state), against a model; the new
/// program then writes on, and a savepoint of it restores without a second migration.
#[test]
fn a_large_state_of_every_kind_migrates_against_a_model() {
    const KEYS: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let options = RocksDbOptions {
        write_buffer_bytes: 1 << 20,
        ..RocksDbOptions::default()
    };
    let all = KeyGroupRange::all(MAX_P);
    let mut b = backend(dir.path(), all, options.clone());
    let ids = register_v1(&mut b);
    for k in 0..KEYS {
        fill_v1(&mut b, &ids, k);
    }
    let mem = Mem::new(true);
    let h1 = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem);
    assert!(matches!(h1.data, KeyedData::RocksNative { .. }));
    drop(b);

    let mut r = restored(dir.path(), all, options.clone(), &[h1], &mem);
    let schema = Schema2::evolving();
    let ids = schema.register(&mut r);
    assert_eq!(
        schema.conversions(),
        (0..KEYS).map(stored_values).sum::<u64>()
    );
    // Several files' worth: more than the 1 MiB a migration file holds.
    let stored: usize = r
        .stored_entries("value")
        .unwrap()
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert!(stored > 1 << 20, "{stored} bytes");
    let mut model: BTreeMap<u64, Row> = (0..KEYS).map(|k| (k, migrated_row(k))).collect();
    assert_eq!(check_against(&mut r, &ids, &model), KEYS as usize);

    for k in (0..KEYS).step_by(7) {
        let row = model.get_mut(&k).unwrap();
        fill_v2(&mut r, &ids, k, 1, row);
    }
    let sp = Mem::new(false);
    let h2 = snapshot(&mut r, SnapshotOptions::savepoint(2), &sp);
    assert_new_identities(&h2);
    let mut again = restored(dir.path(), all, options, &[h2], &sp);
    let schema = Schema2::evolving();
    let ids = schema.register(&mut again);
    assert_eq!(schema.conversions(), 0);
    assert_eq!(check_against(&mut again, &ids, &model), KEYS as usize);
}

/// Native checkpoints of the old program at parallelism 2 restored at 3 (one backend opens
/// one instance as is, range-deleting what is not its own; one copies key groups of the
/// other in), migrated there; the new program's native checkpoints restore at 1.
#[test]
fn a_native_restore_at_another_parallelism_migrates() {
    const KEYS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let mem = Mem::new(true);
    let handles: Vec<KeyedStateHandle> = (0..2)
        .map(|i| {
            let range = KeyGroupRange::for_subtask(MAX_P, 2, i).unwrap();
            let mut b = backend(dir.path(), range, RocksDbOptions::default());
            let ids = register_v1(&mut b);
            for k in (0..KEYS).filter(|k| range.contains(kg(*k))) {
                fill_v1(&mut b, &ids, k);
            }
            snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem)
        })
        .collect();
    let mut model: BTreeMap<u64, Row> = (0..KEYS).map(|k| (k, migrated_row(k))).collect();
    let mut checked = 0;
    let mut next = Vec::new();
    for i in 0..3 {
        let range = KeyGroupRange::for_subtask(MAX_P, 3, i).unwrap();
        let mut b = restored(dir.path(), range, RocksDbOptions::default(), &handles, &mem);
        let schema = Schema2::evolving();
        let ids = schema.register(&mut b);
        let mine: Vec<u64> = (0..KEYS).filter(|k| range.contains(kg(*k))).collect();
        assert_eq!(
            schema.conversions(),
            mine.iter().copied().map(stored_values).sum::<u64>(),
            "subtask {i} of 3"
        );
        checked += check_against(&mut b, &ids, &model);
        for &k in mine.iter().step_by(5) {
            let row = model.get_mut(&k).unwrap();
            fill_v2(&mut b, &ids, k, 2, row);
        }
        let h = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(2), &mem);
        assert_new_identities(&h);
        next.push(h);
    }
    assert_eq!(checked, KEYS as usize);
    let mut one = restored(
        dir.path(),
        KeyGroupRange::all(MAX_P),
        RocksDbOptions::default(),
        &next,
        &mem,
    );
    let schema = Schema2::evolving();
    let ids = schema.register(&mut one);
    assert_eq!(schema.conversions(), 0);
    assert_eq!(check_against(&mut one, &ids, &model), KEYS as usize);
}

/// A conversion that refuses one value fails the registration naming the operator, the
/// state, the value's key group and both schemas, with the conversion's message; nothing
/// changed: a savepoint taken then holds the old schema, the old program reads everything,
/// and a corrected program migrates.
#[test]
fn a_conversion_error_names_its_key_group_and_changes_nothing() {
    const KEYS: u64 = 500;
    const BAD: u64 = 321;
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_P);
    let mut b = backend(dir.path(), all, RocksDbOptions::default());
    let ids = register_v1(&mut b);
    for k in 0..KEYS {
        fill_v1(&mut b, &ids, k);
    }
    let mem = Mem::new(false);
    let h = snapshot(&mut b, SnapshotOptions::full_checkpoint(1), &mem);
    let mut r = restored(
        dir.path(),
        all,
        RocksDbOptions::default(),
        std::slice::from_ref(&h),
        &mem,
    );

    let refusing = ValueStateDescriptor {
        name: "value".into(),
        value: Arc::new(
            EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2)).try_migrates_from(
                BincodeCodec::<u64>::new(),
                |n: u64| {
                    if n == 3 * BAD {
                        Err(format!("{n} is too odd"))
                    } else {
                        Ok(count(n))
                    }
                },
            ),
        ),
        namespace: Arc::new(BincodeCodec::<()>::new()),
    };
    let before = r.stored_entries("value").unwrap();
    let err = r.register_value(&refusing).unwrap_err().to_string();
    for part in [
        format!("uid={UID}"),
        "state=value".to_string(),
        format!("key_group={}", kg(BAD)),
        format!("{} is too odd", 3 * BAD),
        "u64@v1".to_string(),
        "Count@v2".to_string(),
    ] {
        assert!(err.contains(&part), "{part} in {err}");
    }
    // A list element that does not decode as the old element type.
    let bad_list = ListStateDescriptor {
        name: "list".into(),
        element: Arc::new(
            EvolvingCodec::new(BincodeCodec::<Tagged>::named("Tagged", 1)).migrates_from(
                BincodeCodec::<u64>::named("alloc::string::String", 1),
                |n| tagged(n.to_string()),
            ),
        ),
        namespace: Arc::new(BincodeCodec::<()>::new()),
    };
    let err = r.register_list(&bad_list).unwrap_err().to_string();
    assert!(
        err.contains("state=list") && err.contains("key_group="),
        "{err}"
    );
    assert_eq!(r.stored_entries("value").unwrap(), before);

    // A snapshot now describes and holds the old schema.
    let h2 = snapshot(&mut r, SnapshotOptions::full_checkpoint(2), &mem);
    assert_eq!(identities(&h2), identities(&h));
    let mut old = restored(
        dir.path(),
        all,
        RocksDbOptions::default(),
        std::slice::from_ref(&h2),
        &mem,
    );
    let ids = register_v1(&mut old);
    set_key(&mut old, BAD);
    assert_eq!(old.value(&ids.value).get().unwrap(), Some(3 * BAD));
    // In the same backend, the old program's registration still reads it, ...
    let ids = register_v1(&mut r);
    for k in [0, BAD, KEYS - 1] {
        set_key(&mut r, k);
        assert_eq!(r.value(&ids.value).get().unwrap(), Some(3 * k));
        assert_eq!(r.list(&ids.list).get().unwrap().len() as u64, k % 4);
    }
    // ... and a corrected new program migrates what the failed one left.
    let mut fixed = restored(dir.path(), all, RocksDbOptions::default(), &[h2], &mem);
    let schema = Schema2::evolving();
    let ids = schema.register(&mut fixed);
    let model: BTreeMap<u64, Row> = (0..KEYS).map(|k| (k, migrated_row(k))).collect();
    assert_eq!(check_against(&mut fixed, &ids, &model), KEYS as usize);
}

/// The same descriptor registered again in the run (as every operator instance re-fetches
/// its states) does not convert anything again, also after new writes and a snapshot.
#[test]
fn registering_again_in_the_same_run_does_not_migrate_twice() {
    const KEYS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_P);
    for cache in [0, 2, 1 << 10] {
        let options = RocksDbOptions {
            cache_capacity: cache,
            ..RocksDbOptions::default()
        };
        let mut b = backend(dir.path(), all, options.clone());
        let ids = register_v1(&mut b);
        for k in 0..KEYS {
            fill_v1(&mut b, &ids, k);
        }
        let mem = Mem::new(true);
        let h = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem);
        let mut r = restored(dir.path(), all, options, &[h], &mem);
        let schema = Schema2::evolving();
        let ids = schema.register(&mut r);
        let once = schema.conversions();
        assert_eq!(once, (0..KEYS).map(stored_values).sum::<u64>());
        let mut model: BTreeMap<u64, Row> = (0..KEYS).map(|k| (k, migrated_row(k))).collect();
        for k in (0..KEYS).step_by(3) {
            let row = model.get_mut(&k).unwrap();
            fill_v2(&mut r, &ids, k, 1, row);
        }
        let again = schema.register(&mut r);
        assert_eq!(schema.conversions(), once, "cache {cache}");
        assert_eq!(check_against(&mut r, &again, &model), KEYS as usize);
        let _ = snapshot(&mut r, SnapshotOptions::incremental_checkpoint(2), &mem);
        let third = schema.register(&mut r);
        assert_eq!(schema.conversions(), once, "cache {cache}");
        assert_eq!(check_against(&mut r, &third, &model), KEYS as usize);
        // Registering it with the old schema in the same run is refused.
        assert!(r.register_value(&value_v1()).is_err());
    }
}

/// A snapshot whose synchronous phase ran before the migration holds the old schema (its
/// checkpoint is created before the rewrite begins), natively and canonically; one taken
/// right after it holds the new.
#[test]
fn a_snapshot_started_before_the_migration_holds_the_old_schema() {
    const KEYS: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_P);
    let mut b = backend(dir.path(), all, RocksDbOptions::default());
    let ids = register_v1(&mut b);
    for k in 0..KEYS {
        fill_v1(&mut b, &ids, k);
    }
    let mem = Mem::new(true);
    let h = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem);
    for options in [
        SnapshotOptions::incremental_checkpoint(2),
        SnapshotOptions::full_checkpoint(2),
    ] {
        let mut r = restored(
            dir.path(),
            all,
            RocksDbOptions::default(),
            std::slice::from_ref(&h),
            &mem,
        );
        // Dirty entries of a registered state, for the seal worker to write.
        let other = r
            .register_value(&ValueStateDescriptor::<u64>::new("other"))
            .unwrap();
        for k in 0..KEYS {
            set_key(&mut r, k);
            r.value(&other).update(k).unwrap();
        }
        let pending = r.snapshot(options).unwrap();
        let schema = Schema2::evolving();
        let ids2 = schema.register(&mut r);
        let old = pending.run(&mem, &CancelToken::new()).unwrap();
        let new = snapshot(&mut r, SnapshotOptions::full_checkpoint(3), &mem);
        assert_new_identities(&new);
        assert!(identities(&old)["value"].starts_with("u64@v1"));
        let mut o = restored(dir.path(), all, RocksDbOptions::default(), &[old], &mem);
        let ids1 = register_v1(&mut o);
        let mut n = restored(dir.path(), all, RocksDbOptions::default(), &[new], &mem);
        let idsn = Schema2::default().register(&mut n);
        for k in (0..KEYS).step_by(97) {
            set_key(&mut o, k);
            assert_eq!(o.value(&ids1.value).get().unwrap(), Some(3 * k));
            assert_eq!(o.list(&ids1.list).get().unwrap().len() as u64, k % 4);
            assert_eq!(read_v2(&mut n, &idsn, k), migrated_row(k));
            assert_eq!(read_v2(&mut r, &ids2, k), migrated_row(k));
        }
    }
}

/// A full checkpoint right after the migration is in the new schema only: the heap
/// backend restores it with the new program's current codecs (no migration there).
#[test]
fn a_checkpoint_after_the_migration_restores_under_the_heap_backend() {
    const KEYS: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_P);
    let mut b = backend(dir.path(), all, RocksDbOptions::default());
    let ids = register_v1(&mut b);
    for k in 0..KEYS {
        fill_v1(&mut b, &ids, k);
    }
    let mem = Mem::new(true);
    let h = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem);
    let mut r = restored(dir.path(), all, RocksDbOptions::default(), &[h], &mem);
    let schema = Schema2::evolving();
    let _ = schema.register(&mut r);
    let full = snapshot(&mut r, SnapshotOptions::full_checkpoint(2), &mem);
    assert_new_identities(&full);

    let mut heap = HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: all,
        key_codec: key_codec().identity().clone(),
    })
    .unwrap();
    heap.restore(&[full], &mem).unwrap();
    let ids = Schema2::default().register(&mut heap);
    let model: BTreeMap<u64, Row> = (0..KEYS).map(|k| (k, migrated_row(k))).collect();
    assert_eq!(check_against(&mut heap, &ids, &model), KEYS as usize);
}

// ---------------------------------------------------------------------------------------
// TTL.

const TTL_MS: u64 = 1_000;
const T0: u64 = 1_000_000;
const T1: u64 = T0 + 600;
const N: u64 = 200;

struct TtlIds1 {
    value: TtlValueStateId<u64, VoidNamespace>,
    list: TtlListStateId<String, VoidNamespace>,
    map: TtlMapStateId<u32, String, VoidNamespace>,
    reducing: TtlReducingStateId<i64, VoidNamespace>,
    aggregating: TtlAggregatingStateId<u64, u64, u64, VoidNamespace>,
}

struct TtlIds2 {
    value: TtlValueStateId<Count, VoidNamespace>,
    list: TtlListStateId<Tagged, VoidNamespace>,
    map: TtlMapStateId<u32, Labelled, VoidNamespace>,
    reducing: TtlReducingStateId<i128, VoidNamespace>,
    aggregating: TtlAggregatingStateId<u64, SumMax, (u64, u64), VoidNamespace>,
}

const TTL_STATES: [&str; 5] = ["value", "list", "map", "reducing", "aggregating"];

/// The stamps RocksDB holds for each entry of `state` (one per list element).
fn stamps(b: &RocksDbBackend, state: &str) -> BTreeMap<Vec<u8>, Vec<u64>> {
    b.stored_entries(state)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            let stamps = if state == "list" {
                let mut out = Vec::new();
                let mut rest = v.as_slice();
                while let Some((len, tail)) = rest.split_first_chunk::<4>() {
                    let (e, tail) = tail.split_at(u32::from_le_bytes(*len) as usize);
                    out.push(ttl_stamp_of(e).unwrap());
                    rest = tail;
                }
                out
            } else {
                vec![ttl_stamp_of(&v).unwrap()]
            };
            (k, stamps)
        })
        .collect()
}

/// States with a TTL migrate with their stamps: RocksDB holds the same stamp for every
/// entry (and list element) before and after, reads return the converted values until
/// they expire, and afterwards reads hide and compactions drop exactly what expired.
#[test]
fn ttl_states_migrate_keeping_their_stamps_and_expire_after() {
    let dir = tempfile::tempdir().unwrap();
    let all = KeyGroupRange::all(MAX_P);
    let clock = Arc::new(ManualClock::new(T0));
    let ttl = StateTtlConfig::new(Duration::from_millis(TTL_MS)).with_clock(clock.clone());
    let mut b = backend(dir.path(), all, RocksDbOptions::default());
    let ids = TtlIds1 {
        value: b.register_value_with_ttl(&value_v1(), &ttl).unwrap(),
        list: b.register_list_with_ttl(&list_v1(), &ttl).unwrap(),
        map: b.register_map_with_ttl(&map_v1(), &ttl).unwrap(),
        reducing: b.register_reducing_with_ttl(&reducing_v1(), &ttl).unwrap(),
        aggregating: b
            .register_aggregating_with_ttl(&aggregating_v1(), &ttl)
            .unwrap(),
    };
    for k in 0..2 * N {
        clock.set(if k < N { T0 } else { T1 });
        set_key(&mut b, k);
        b.ttl_value(&ids.value).update(3 * k).unwrap();
        for i in 0..1 + k % 3 {
            b.ttl_list(&ids.list).add(format!("{k}-{i}")).unwrap();
        }
        b.ttl_map(&ids.map).put(1, format!("m{k}")).unwrap();
        b.ttl_reducing(&ids.reducing).add(k as i64).unwrap();
        b.ttl_aggregating(&ids.aggregating).add(k).unwrap();
    }
    clock.set(T1);
    let mem = Mem::new(true);
    let h = snapshot(&mut b, SnapshotOptions::incremental_checkpoint(1), &mem);
    let mut r = restored(dir.path(), all, RocksDbOptions::default(), &[h], &mem);
    r.write_back_cache().unwrap();
    let before: Vec<_> = TTL_STATES.iter().map(|s| stamps(&r, s)).collect();
    let raw_before = r.stored_entries("value").unwrap();

    let schema = Schema2::evolving();
    let ids = TtlIds2 {
        value: r.register_value_with_ttl(&schema.value(), &ttl).unwrap(),
        list: r.register_list_with_ttl(&schema.list(), &ttl).unwrap(),
        map: r.register_map_with_ttl(&schema.map(), &ttl).unwrap(),
        reducing: r
            .register_reducing_with_ttl(&schema.reducing(), &ttl)
            .unwrap(),
        aggregating: r
            .register_aggregating_with_ttl(&schema.aggregating(), &ttl)
            .unwrap(),
    };
    let list_elements: u64 = (0..2 * N).map(|k| 1 + k % 3).sum();
    assert_eq!(schema.conversions(), 4 * 2 * N + list_elements);
    for (state, before) in TTL_STATES.iter().zip(&before) {
        let after = stamps(&r, state);
        assert_eq!(after.len(), before.len(), "{state}");
        let changed = after
            .iter()
            .filter(|(k, s)| before.get(*k) != Some(s))
            .count();
        assert_eq!(changed, 0, "{state}: {changed} entries with other stamps");
    }
    let raw_after = r.stored_entries("value").unwrap();
    assert_eq!(raw_after.len(), raw_before.len());
    assert!(raw_after.iter().zip(&raw_before).all(|(a, b)| a.1 != b.1));
    assert!(before[0].values().any(|s| s == &[T0]) && before[0].values().any(|s| s == &[T1]));

    let read = |r: &mut RocksDbBackend, k: u64| {
        set_key(r, k);
        (
            r.ttl_value(&ids.value).get().unwrap(),
            r.ttl_list(&ids.list).get().unwrap(),
            r.ttl_map(&ids.map).get(&1).unwrap(),
            r.ttl_reducing(&ids.reducing).get().unwrap(),
            r.ttl_aggregating(&ids.aggregating).get().unwrap(),
        )
    };
    let live = |k: u64| {
        (
            Some(count(3 * k)),
            (0..1 + k % 3)
                .map(|i| tagged(format!("{k}-{i}")))
                .collect::<Vec<_>>(),
            Some(labelled(format!("m{k}"))),
            Some(i128::from(k as i64)),
            Some((k, 0)),
        )
    };
    for k in [0, N - 1, N, 2 * N - 1] {
        assert_eq!(read(&mut r, k), live(k), "key {k}");
    }

    // Keys 0..N expire: the compaction filter drops them from the migrated data, reads
    // hide them, keys N..2N are still there.
    clock.set(T0 + TTL_MS);
    r.compact_stored().unwrap();
    r.compact_stored().unwrap();
    for s in TTL_STATES {
        assert_eq!(r.stored_entries(s).unwrap().len() as u64, N, "{s}");
    }
    for k in (0..2 * N).step_by(13) {
        if k < N {
            assert_eq!(read(&mut r, k), (None, vec![], None, None, None), "key {k}");
        } else {
            assert_eq!(read(&mut r, k), live(k), "key {k}");
        }
    }
    clock.set(T1 + TTL_MS);
    r.compact_stored().unwrap();
    r.compact_stored().unwrap();
    for s in TTL_STATES {
        assert_eq!(r.stored_entries(s).unwrap().len(), 0, "{s}");
    }
}
