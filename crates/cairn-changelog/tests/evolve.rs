//! State schema evolution through the changelog backend (see "Schema evolution" in the crate
//! docs): the records restored from segments are decoded under the identity their handle
//! names and converted; a registration that migrates a state makes the next checkpoints wait
//! for a materialization started after it, so none refers to records or materialized files
//! of the old schema under the new identities (checked by restoring those checkpoints,
//! also at another parallelism).
//!
//! The wrapped backend is the heap backend at max parallelism 8, materializing only when
//! a checkpoint needs it (or when told to), with small segments.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cairn_changelog::{ChangelogBackend, ChangelogConfig, ChangelogStorage};
use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_storage::CheckpointStorage;
use serde::{Deserialize, Serialize};

const UID: &str = "evolve";
const MAX_P: u32 = 8;
const KEYS: u64 = 24;

// ---- the schemas -----------------------------------------------------------------------

fn key_codec() -> BincodeCodec<u64> {
    BincodeCodec::new()
}

fn key(k: u64) -> Vec<u8> {
    key_codec().encode_to_vec(&k).unwrap()
}

fn key_group(k: u64) -> u32 {
    key_group_for_key(&key(k), MAX_P)
}

/// The old accumulator: sum and count.
struct SumCount;
impl AggregateFunction<u64, (u64, u64), (u64, u64)> for SumCount {
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), input: u64) {
        *acc = (acc.0 + input, acc.1 + 1);
    }
    fn result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Count {
    n: u64,
    doubled: u64,
}

fn count(n: u64) -> Count {
    Count { n, doubled: 2 * n }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Tagged {
    text: String,
    len: u32,
}

fn tagged(text: String) -> Tagged {
    Tagged {
        len: text.len() as u32,
        text,
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Labelled {
    label: String,
    upper: String,
}

fn labelled(label: String) -> Labelled {
    Labelled {
        upper: label.to_uppercase(),
        label,
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SumCountMax {
    sum: u64,
    count: u64,
    max: u64,
}

/// The new accumulator; the result is the accumulator itself.
struct Stats;
impl AggregateFunction<u64, SumCountMax, SumCountMax> for Stats {
    fn create_accumulator(&self) -> SumCountMax {
        SumCountMax::default()
    }
    fn add(&self, acc: &mut SumCountMax, input: u64) {
        acc.sum += input;
        acc.count += 1;
        acc.max = acc.max.max(input);
    }
    fn result(&self, acc: &SumCountMax) -> SumCountMax {
        acc.clone()
    }
}

fn void() -> CodecRef<()> {
    Arc::new(BincodeCodec::<()>::new())
}

/// The value codec of the new program: reads the old `u64` by migration.
fn count_codec() -> CodecRef<Count> {
    Arc::new(
        EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
            .migrates_from(BincodeCodec::<u64>::new(), count),
    )
}

struct OldIds {
    value: ValueStateId<u64, ()>,
    list: ListStateId<String, ()>,
    map: MapStateId<u32, String, ()>,
    reducing: ReducingStateId<i64, ()>,
    aggregating: AggregatingStateId<u64, (u64, u64), (u64, u64), ()>,
    plain: ValueStateId<u64, ()>,
}

fn register_old<B: KeyedStateBackend>(b: &mut B) -> OldIds {
    OldIds {
        value: b
            .register_value(&ValueStateDescriptor::<u64>::new("value"))
            .unwrap(),
        list: b
            .register_list(&ListStateDescriptor::<String>::new("list"))
            .unwrap(),
        map: b
            .register_map(&MapStateDescriptor::<u32, String>::new("map"))
            .unwrap(),
        reducing: b
            .register_reducing(&ReducingStateDescriptor::<i64>::new("reducing", |a, b| {
                a + b
            }))
            .unwrap(),
        aggregating: b
            .register_aggregating(&AggregatingStateDescriptor::new("aggregating", SumCount))
            .unwrap(),
        plain: register_plain(b),
    }
}

/// A state whose schema does not change.
fn register_plain<B: KeyedStateBackend>(b: &mut B) -> ValueStateId<u64, ()> {
    b.register_value(&ValueStateDescriptor::<u64>::new("plain"))
        .unwrap()
}

fn value_v2() -> ValueStateDescriptor<Count> {
    ValueStateDescriptor {
        name: "value".into(),
        value: count_codec(),
        namespace: void(),
    }
}

struct NewIds {
    value: ValueStateId<Count, ()>,
    list: ListStateId<Tagged, ()>,
    map: MapStateId<u32, Labelled, ()>,
    reducing: ReducingStateId<i128, ()>,
    aggregating: AggregatingStateId<u64, SumCountMax, SumCountMax, ()>,
    plain: ValueStateId<u64, ()>,
}

fn register_new<B: KeyedStateBackend>(b: &mut B) -> Result<NewIds> {
    Ok(NewIds {
        value: b.register_value(&value_v2())?,
        list: b.register_list(&ListStateDescriptor {
            name: "list".into(),
            element: Arc::new(
                EvolvingCodec::new(BincodeCodec::<Tagged>::named("Tagged", 1))
                    .migrates_from(BincodeCodec::<String>::new(), tagged),
            ),
            namespace: void(),
        })?,
        map: b.register_map(&MapStateDescriptor {
            name: "map".into(),
            user_key: Arc::new(BincodeCodec::<u32>::new()),
            value: Arc::new(
                EvolvingCodec::new(BincodeCodec::<Labelled>::named("Labelled", 1))
                    .migrates_from(BincodeCodec::<String>::new(), labelled),
            ),
            namespace: void(),
        })?,
        reducing: b.register_reducing(&ReducingStateDescriptor {
            name: "reducing".into(),
            value: Arc::new(
                EvolvingCodec::new(BincodeCodec::<i128>::named("Total", 2))
                    .migrates_from(BincodeCodec::<i64>::new(), i128::from),
            ),
            namespace: void(),
            reduce: Arc::new(|a, b| a + b),
        })?,
        aggregating: b.register_aggregating(&AggregatingStateDescriptor {
            name: "aggregating".into(),
            accumulator: Arc::new(
                EvolvingCodec::new(BincodeCodec::<SumCountMax>::named("SumCountMax", 1))
                    .migrates_from(BincodeCodec::<(u64, u64)>::new(), |(sum, count)| {
                        SumCountMax { sum, count, max: 0 }
                    }),
            ),
            namespace: void(),
            function: Arc::new(Stats),
        })?,
        plain: b.register_value(&ValueStateDescriptor::<u64>::new("plain"))?,
    })
}

/// The new identities of the migrated states (and the unchanged one's).
fn new_types() -> Vec<(String, String)> {
    [
        ("aggregating", "SumCountMax@v1"),
        ("list", "Tagged@v1"),
        ("map", "Labelled@v1"),
        ("plain", "u64@v1"),
        ("reducing", "Total@v2"),
        ("value", "Count@v2"),
    ]
    .iter()
    .map(|(n, t)| (n.to_string(), format!("{t} ({BINCODE_V1})")))
    .collect()
}

fn types_of(metas: &[StateMeta]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = metas
        .iter()
        .map(|m| (m.name.clone(), m.value.to_string()))
        .collect();
    v.sort();
    v
}

/// The old program's writes for `keys`.
fn fill_old<B: KeyedStateBackend>(b: &mut B, keys: impl IntoIterator<Item = u64>) {
    let ids = register_old(b);
    for k in keys {
        b.set_current_key(&key(k)).unwrap();
        b.value(&ids.value).update(10 * k).unwrap();
        for j in 0..k % 3 {
            b.list(&ids.list).add(format!("t{k}-{j}")).unwrap();
        }
        b.map(&ids.map)
            .put((k % 4) as u32, format!("l{k}"))
            .unwrap();
        b.reducing(&ids.reducing).add(k as i64 - 5).unwrap();
        b.reducing(&ids.reducing).add(-1).unwrap();
        b.aggregating(&ids.aggregating).add(k).unwrap();
        b.aggregating(&ids.aggregating).add(k + 1).unwrap();
        b.value(&ids.plain).update(k).unwrap();
    }
}

/// The new program's writes for `keys` (round `r` > 0): on top of the migrated state.
fn fill_new<B: KeyedStateBackend>(b: &mut B, keys: impl IntoIterator<Item = u64>, r: u64) {
    let ids = register_new(b).unwrap();
    for k in keys {
        b.set_current_key(&key(k)).unwrap();
        b.value(&ids.value).update(count(1000 * r + k)).unwrap();
        b.list(&ids.list).add(tagged(format!("r{r}-{k}"))).unwrap();
        b.map(&ids.map)
            .put(7, labelled(format!("r{r}-{k}")))
            .unwrap();
        b.reducing(&ids.reducing).add(100).unwrap();
        b.aggregating(&ids.aggregating).add(500 + k).unwrap();
        b.value(&ids.plain).update(r * 1000 + k).unwrap();
    }
}

/// What the new program reads of key `k` after the old program's writes and the new
/// program's rounds `rounds` (in order) on it.
fn expected(k: u64, rounds: &[u64]) -> String {
    let mut value = count(10 * k);
    let mut list: Vec<Tagged> = (0..k % 3).map(|j| tagged(format!("t{k}-{j}"))).collect();
    let mut map = std::collections::BTreeMap::new();
    map.insert((k % 4) as u32, labelled(format!("l{k}")));
    let mut reducing = i128::from(k as i64 - 6);
    let mut agg = SumCountMax {
        sum: 2 * k + 1,
        count: 2,
        max: 0,
    };
    let mut plain = k;
    for &r in rounds {
        value = count(1000 * r + k);
        list.push(tagged(format!("r{r}-{k}")));
        map.insert(7, labelled(format!("r{r}-{k}")));
        reducing += 100;
        agg.sum += 500 + k;
        agg.count += 1;
        agg.max = agg.max.max(500 + k);
        plain = r * 1000 + k;
    }
    let map: Vec<(u32, Labelled)> = map.into_iter().collect();
    format!("{k}: {value:?} {list:?} {map:?} {reducing} {agg:?} {plain}")
}

/// What the new program reads of key `k`.
fn read_new<B: KeyedStateBackend>(b: &mut B, k: u64) -> String {
    let ids = register_new(b).unwrap();
    b.set_current_key(&key(k)).unwrap();
    let value = b.value(&ids.value).get().unwrap().unwrap_or(count(0));
    let list = b.list(&ids.list).get().unwrap();
    let mut map = b.map(&ids.map).entries().unwrap();
    map.sort_by_key(|(uk, _)| *uk);
    let reducing = b.reducing(&ids.reducing).get().unwrap().unwrap_or(0);
    let agg = b
        .aggregating(&ids.aggregating)
        .get()
        .unwrap()
        .unwrap_or_default();
    let plain = b.value(&ids.plain).get().unwrap().unwrap_or(0);
    format!("{k}: {value:?} {list:?} {map:?} {reducing} {agg:?} {plain}")
}

// ---- backends, checkpoints, restores ---------------------------------------------------

fn heap(range: KeyGroupRange) -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key_codec().identity().clone(),
    })
    .unwrap()
}

/// A changelog backend over the heap for `range` that materializes only when a checkpoint
/// needs it or when told to; uploads through `storage` if given, else by the checkpoints.
fn changelog(
    range: KeyGroupRange,
    storage: Option<Arc<dyn ChangelogStorage>>,
) -> ChangelogBackend<HashMapBackend> {
    let mut config = ChangelogConfig::new(UID, key_codec().identity().clone());
    config.options.materialization_interval = None;
    config.options.min_log_bytes = u64::MAX;
    config.options.segment_bytes = 256;
    match storage {
        Some(s) => ChangelogBackend::new(heap(range), config, s),
        None => ChangelogBackend::with_checkpoint_uploads(heap(range), config),
    }
}

fn all() -> KeyGroupRange {
    KeyGroupRange::all(MAX_P)
}

/// The manifest of snapshot `id` of one subtask owning every key group (published as a
/// checkpoint, whatever the snapshot).
fn manifest_of(id: u64, handle: KeyedStateHandle) -> Manifest {
    Manifest {
        checkpoint_id: id,
        snapshot_type: SnapshotType::Checkpoint,
        timestamp_ms: 1_700_000_000_000 + id,
        operators: vec![OperatorManifest {
            uid: UID.into(),
            parallelism: 1,
            max_parallelism: MAX_P,
            subtasks: vec![SubtaskManifest {
                key_group_range: all(),
                keyed: Some(handle),
                operator_state: Vec::new(),
            }],
        }],
    }
}

/// Runs an asynchronous phase into checkpoint `id` and publishes it.
fn publish(
    storage: &CheckpointStorage,
    id: u64,
    writer: cairn_storage::CheckpointWriter,
    phase: Box<dyn AsyncSnapshot>,
) -> KeyedStateHandle {
    let h = phase.run(&writer, &CancelToken::new()).unwrap();
    storage
        .publish(writer, &manifest_of(id, h.clone()))
        .unwrap();
    h
}

/// Takes, publishes and completes snapshot `id` of `b`.
fn snapshot<B: KeyedStateBackend>(
    b: &mut B,
    storage: &CheckpointStorage,
    options: SnapshotOptions,
) -> KeyedStateHandle {
    let id = options.checkpoint_id;
    let w = storage.begin_checkpoint(id).unwrap();
    let phase = b.snapshot(options).unwrap();
    let h = publish(storage, id, w, phase);
    b.notify_checkpoint_complete(id);
    h
}

fn checkpoint<B: KeyedStateBackend>(
    b: &mut B,
    storage: &CheckpointStorage,
    id: u64,
) -> KeyedStateHandle {
    snapshot(b, storage, SnapshotOptions::incremental_checkpoint(id))
}

/// The metas of a changelog handle's materialized handles.
fn materialized_metas(h: &KeyedStateHandle) -> Vec<StateMeta> {
    match &h.data {
        KeyedData::Changelog { materialized, .. } => materialized
            .iter()
            .flat_map(|m| m.states.iter().cloned())
            .collect(),
        other => panic!("not a changelog handle: {other:?}"),
    }
}

/// A changelog handle's materialized handles.
fn materialized(h: &KeyedStateHandle) -> Vec<KeyedStateHandle> {
    match &h.data {
        KeyedData::Changelog { materialized, .. } => materialized.clone(),
        other => panic!("not a changelog handle: {other:?}"),
    }
}

/// The file names of a changelog handle's segments.
fn segment_names(h: &KeyedStateHandle) -> Vec<String> {
    match &h.data {
        KeyedData::Changelog { segments, .. } => {
            segments.iter().map(|s| s.file.name.clone()).collect()
        }
        other => panic!("not a changelog handle: {other:?}"),
    }
}

fn has_carry(h: &KeyedStateHandle) -> bool {
    segment_names(h).iter().any(|n| {
        n.rsplit('/')
            .next()
            .is_some_and(|f| f.starts_with("carry-"))
    })
}

/// Restores `h` into changelog backends at `parallelism` and reads every key through the
/// new program (each key on the backend that owns it).
fn restore_and_read(
    h: &KeyedStateHandle,
    storage: &CheckpointStorage,
    id: u64,
    parallelism: u32,
) -> Vec<String> {
    let mut backends: Vec<ChangelogBackend<HashMapBackend>> = (0..parallelism)
        .map(|i| {
            let range = KeyGroupRange::for_subtask(MAX_P, parallelism, i).unwrap();
            let mut b = changelog(range, None);
            b.restore(std::slice::from_ref(h), &storage.source(id))
                .unwrap();
            b
        })
        .collect();
    (0..KEYS)
        .map(|k| {
            let b = backends
                .iter_mut()
                .find(|b| b.key_group_range().contains(key_group(k)))
                .unwrap();
            read_new(b, k)
        })
        .collect()
}

/// The old program's checkpoint 1 of every key, all of it in the log (no materialization).
fn old_checkpoint(storage: &CheckpointStorage) -> KeyedStateHandle {
    let mut b = changelog(all(), None);
    fill_old(&mut b, 0..KEYS);
    let h = checkpoint(&mut b, storage, 1);
    assert!(materialized_metas(&h).is_empty(), "all in the log");
    assert!(segment_names(&h).len() > 1, "several segments");
    h
}

fn restored(
    h: &KeyedStateHandle,
    storage: &CheckpointStorage,
    id: u64,
) -> ChangelogBackend<HashMapBackend> {
    let mut b = changelog(all(), None);
    b.restore(std::slice::from_ref(h), &storage.source(id))
        .unwrap();
    b
}

fn expected_all(touched: &[u64], rounds: &[u64]) -> Vec<String> {
    (0..KEYS)
        .map(|k| {
            if touched.contains(&k) {
                expected(k, rounds)
            } else {
                expected(k, &[])
            }
        })
        .collect()
}

/// A changelog storage whose uploads wait while it is closed.
#[derive(Debug)]
struct Gate {
    storage: CheckpointStorage,
    closed: Mutex<bool>,
    opened: Condvar,
}

/// Keeps a [`Gate`] closed until dropped: declared after the backend, it opens the gate
/// before the backend's drop waits for its threads, also when a test fails.
struct Closed(Arc<Gate>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl Gate {
    fn new(storage: &CheckpointStorage) -> Arc<Self> {
        Arc::new(Self {
            storage: storage.clone(),
            closed: Mutex::new(false),
            opened: Condvar::new(),
        })
    }
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap_or_else(|p| p.into_inner()) = closed;
        self.opened.notify_all();
    }
    fn close(self: &Arc<Self>) -> Closed {
        self.set(true);
        Closed(self.clone())
    }
}

impl ChangelogStorage for Gate {
    fn upload(&self, name: &str, bytes: &[u8]) -> Result<FileRef> {
        let closed = self.closed.lock().unwrap_or_else(|p| p.into_inner());
        let (closed, _) = self
            .opened
            .wait_timeout_while(closed, Duration::from_secs(120), |c| *c)
            .unwrap_or_else(|p| p.into_inner());
        drop(closed);
        ChangelogStorage::upload(&self.storage, name, bytes)
    }
    fn release(&self, file: &FileRef) {
        ChangelogStorage::release(&self.storage, file)
    }
}

// ---- the tests -------------------------------------------------------------------------

/// Every kind's restored records are decoded under the identity their handle names and
/// converted (the log is all the state: nothing is materialized); the new program writes on
/// and its checkpoint restores, also at parallelism 2, in the new schema only.
#[test]
fn every_kind_migrates_through_the_log() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let mut b = restored(&h1, &storage, 1);
    let before: Vec<String> = (0..KEYS).map(|k| read_new(&mut b, k)).collect();
    assert_eq!(before, expected_all(&[], &[]));
    let touched: Vec<u64> = (0..KEYS).step_by(3).collect();
    fill_new(&mut b, touched.iter().copied(), 1);
    let h2 = checkpoint(&mut b, &storage, 2);
    assert_eq!(types_of(&h2.states), new_types());
    assert_eq!(types_of(&materialized_metas(&h2)), new_types());
    let after = expected_all(&touched, &[1]);
    assert_eq!(restore_and_read(&h2, &storage, 2, 1), after);
    assert_eq!(restore_and_read(&h2, &storage, 2, 2), after);
}

/// The carried case: the restored job checkpoints (its first materialization carries the
/// unregistered states' records, in the old schema) before the program registers and
/// migrates them. The checkpoint after the registration must not reference that carry
/// segment (nor that materialization) under the new identities: it waits for a
/// materialization started after the migration.
#[test]
fn records_carried_in_the_old_schema_are_not_referenced_after_the_migration() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let mut b = restored(&h1, &storage, 1);
    let h2 = checkpoint(&mut b, &storage, 2);
    let h3 = checkpoint(&mut b, &storage, 3);
    for h in [&h2, &h3] {
        assert!(has_carry(h), "{:?}", segment_names(h));
        assert_eq!(h.states, h1.states, "the old schema");
    }
    // A state that does not change is written before the registration.
    let plain = register_plain(&mut b);
    b.set_current_key(&key(0)).unwrap();
    b.value(&plain).update(0).unwrap();
    // Registered, migrated, a few keys changed.
    let touched = [1, 2, 5];
    fill_new(&mut b, touched, 4);
    let h4 = checkpoint(&mut b, &storage, 4);
    assert_eq!(types_of(&h4.states), new_types());
    assert!(!has_carry(&h4), "{:?}", segment_names(&h4));
    assert_eq!(types_of(&materialized_metas(&h4)), new_types());
    let after = expected_all(&touched, &[4]);
    assert_eq!(restore_and_read(&h4, &storage, 4, 1), after);
    assert_eq!(restore_and_read(&h4, &storage, 4, 2), after);
    // The checkpoints of the old schema still restore (and migrate) too.
    assert_eq!(
        restore_and_read(&h3, &storage, 3, 1),
        expected_all(&[], &[])
    );
}

/// The materialization started at the restore is still running (its uploads wait) when
/// the program registers and migrates: a checkpoint begun before the registration uses it
/// (and the old schema throughout), one begun after waits for a materialization started
/// after the registration. Both restore.
#[test]
fn a_materialization_in_flight_at_the_migration_is_not_used_after_it() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let gate = Gate::new(&storage);
    let mut b = changelog(all(), Some(gate.clone()));
    let closed = gate.close();
    b.restore(std::slice::from_ref(&h1), &storage.source(1))
        .unwrap();
    assert!(b.is_materializing(), "the restore's materialization waits");
    // Checkpoint 2 begins before the registration.
    let w2 = storage.begin_checkpoint(2).unwrap();
    let c2 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(2))
        .unwrap();
    let touched = [0, 3, 4];
    fill_new(&mut b, touched, 1);
    let w3 = storage.begin_checkpoint(3).unwrap();
    let c3 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(3))
        .unwrap();
    drop(closed);
    let h2 = publish(&storage, 2, w2, c2);
    let h3 = publish(&storage, 3, w3, c3);
    b.notify_checkpoint_complete(2);
    b.notify_checkpoint_complete(3);
    assert_eq!(h2.states, h1.states, "begun before the migration");
    assert!(has_carry(&h2));
    assert_eq!(types_of(&h3.states), new_types());
    assert_eq!(types_of(&materialized_metas(&h3)), new_types());
    assert!(!has_carry(&h3), "{:?}", segment_names(&h3));
    assert_eq!(
        restore_and_read(&h2, &storage, 2, 1),
        expected_all(&[], &[])
    );
    let after = expected_all(&touched, &[1]);
    assert_eq!(restore_and_read(&h3, &storage, 3, 1), after);
    assert_eq!(restore_and_read(&h3, &storage, 3, 2), after);
    // The backend goes on from there: more records in the new schema after the
    // materialization, and a state that did not change, in one log.
    fill_new(&mut b, [3, 9], 2);
    let h4 = checkpoint(&mut b, &storage, 4);
    assert_eq!(
        materialized(&h4),
        materialized(&h3),
        "the same materialization"
    );
    let mut after: Vec<String> = expected_all(&touched, &[1]);
    after[3] = expected(3, &[1, 2]);
    after[9] = expected(9, &[2]);
    assert_eq!(restore_and_read(&h4, &storage, 4, 2), after);
}

/// A checkpoint right after the migration (nothing else changed), then one whose log holds
/// the new program's records after that materialization: both restore as the new program
/// left the state, also at parallelism 2; re-registering the states changes nothing (no new
/// materialization).
#[test]
fn checkpoints_right_after_the_migration_and_after_new_records_restore() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let gate = Gate::new(&storage);
    let mut b = changelog(all(), Some(gate.clone()));
    b.restore(std::slice::from_ref(&h1), &storage.source(1))
        .unwrap();
    register_new(&mut b).unwrap();
    let h2 = checkpoint(&mut b, &storage, 2);
    assert_eq!(types_of(&h2.states), new_types());
    assert_eq!(types_of(&materialized_metas(&h2)), new_types());
    assert_eq!(
        restore_and_read(&h2, &storage, 2, 1),
        expected_all(&[], &[])
    );
    // The same states again (as a program registering per record does), then new
    // records: the next checkpoint needs no materialization (the uploads wait, so one
    // started would still run).
    let closed = gate.close();
    register_new(&mut b).unwrap();
    let touched = [2, 7, 11];
    fill_new(&mut b, touched, 1);
    let w3 = storage.begin_checkpoint(3).unwrap();
    let c3 = b
        .snapshot(SnapshotOptions::incremental_checkpoint(3))
        .unwrap();
    assert!(!b.is_materializing(), "a re-registration rematerialized");
    drop(closed);
    let h3 = publish(&storage, 3, w3, c3);
    b.notify_checkpoint_complete(3);
    assert_eq!(
        materialized(&h3),
        materialized(&h2),
        "the same materialization"
    );
    let after = expected_all(&touched, &[1]);
    assert_eq!(restore_and_read(&h3, &storage, 3, 1), after);
    assert_eq!(restore_and_read(&h3, &storage, 3, 2), after);
}

/// A savepoint right after the migration (the wrapped backend's canonical one) holds the
/// new schema: it restores into the heap backend alone with the new program, and the old
/// program is refused.
#[test]
fn a_savepoint_right_after_the_migration_is_in_the_new_schema() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let mut b = restored(&h1, &storage, 1);
    register_new(&mut b).unwrap();
    let sp = snapshot(&mut b, &storage, SnapshotOptions::savepoint(2));
    assert!(matches!(sp.data, KeyedData::Canonical { .. }), "{sp:?}");
    assert_eq!(types_of(&sp.states), new_types());
    let mut h = heap(all());
    h.restore(std::slice::from_ref(&sp), &storage.source(2))
        .unwrap();
    let read: Vec<String> = (0..KEYS).map(|k| read_new(&mut h, k)).collect();
    assert_eq!(read, expected_all(&[], &[]));
    let mut old = heap(all());
    old.restore(std::slice::from_ref(&sp), &storage.source(2))
        .unwrap();
    let err = old
        .register_value(&ValueStateDescriptor::<u64>::new("value"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("Count@v2"), "{err}");
}

/// A conversion that refuses a restored record fails the registration, naming the
/// operator, the state, the record's key group and the refusal; the state is left
/// part-replayed, so no snapshot is taken any more.
#[test]
fn a_refused_conversion_in_the_replay_names_the_state_and_key_group() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let h1 = old_checkpoint(&storage);
    let mut b = restored(&h1, &storage, 1);
    // Key 13's value is 130.
    let refusing = ValueStateDescriptor {
        name: "value".into(),
        value: Arc::new(
            EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2)).try_migrates_from(
                BincodeCodec::<u64>::new(),
                |n: u64| {
                    if n == 130 {
                        Err(format!("{n} is unlucky"))
                    } else {
                        Ok(count(n))
                    }
                },
            ),
        ),
        namespace: void(),
    };
    let err = b.register_value(&refusing).unwrap_err().to_string();
    for part in [
        format!("uid={UID}"),
        "state=value".to_string(),
        format!("key_group={}", key_group(13)),
        "130 is unlucky".to_string(),
        "u64@v1".to_string(),
    ] {
        assert!(err.contains(&part), "{part} in {err}");
    }
    for options in [
        SnapshotOptions::incremental_checkpoint(2),
        SnapshotOptions::full_checkpoint(3),
        SnapshotOptions::savepoint(4),
    ] {
        let err = b.snapshot(options).map(drop).unwrap_err().to_string();
        assert!(
            err.contains("state=value") && err.contains("130 is unlucky"),
            "{err}"
        );
    }
}

/// A state with a TTL migrates through the log like any other: values converted, each
/// with the timestamp it was written at (entries written earlier expire earlier).
#[test]
fn a_state_with_a_ttl_migrates_through_the_log_keeping_its_timestamps() {
    let storage = CheckpointStorage::open("memory://").unwrap();
    let clock = Arc::new(ManualClock::new(1_000));
    let ttl = StateTtlConfig::new(Duration::from_secs(10)).with_clock(clock.clone());
    let mut b = changelog(all(), None);
    let old = b
        .register_value_with_ttl(&ValueStateDescriptor::<u64>::new("value"), &ttl)
        .unwrap();
    let old_list = b
        .register_list_with_ttl(&ListStateDescriptor::<String>::new("list"), &ttl)
        .unwrap();
    for k in 0..KEYS {
        // Odd keys are written 5 s later.
        clock.set(1_000 + (k % 2) * 5_000);
        b.set_current_key(&key(k)).unwrap();
        b.ttl_value(&old).update(10 * k).unwrap();
        b.ttl_list(&old_list).add(format!("t{k}")).unwrap();
    }
    let h1 = checkpoint(&mut b, &storage, 1);
    assert!(materialized_metas(&h1).is_empty(), "all in the log");

    let new_list = || ListStateDescriptor {
        name: "list".into(),
        element: Arc::new(
            EvolvingCodec::new(BincodeCodec::<Tagged>::named("Tagged", 1))
                .migrates_from(BincodeCodec::<String>::new(), tagged),
        ),
        namespace: void(),
    };
    let read = |b: &mut ChangelogBackend<HashMapBackend>| -> Vec<(Option<Count>, Vec<Tagged>)> {
        let v = b.register_value_with_ttl(&value_v2(), &ttl).unwrap();
        let l = b.register_list_with_ttl(&new_list(), &ttl).unwrap();
        (0..KEYS)
            .map(|k| {
                b.set_current_key(&key(k)).unwrap();
                (
                    b.ttl_value(&v).get().unwrap(),
                    b.ttl_list(&l).get().unwrap(),
                )
            })
            .collect()
    };
    let live = |k: u64| (Some(count(10 * k)), vec![tagged(format!("t{k}"))]);
    clock.set(10_999);
    let mut r = restored(&h1, &storage, 1);
    assert_eq!(read(&mut r), (0..KEYS).map(live).collect::<Vec<_>>());
    // A checkpoint after the migration: the new schema, still with the old timestamps.
    let h2 = checkpoint(&mut r, &storage, 2);
    let ttl_types: Vec<(String, String)> = types_of(&h2.states);
    assert_eq!(
        ttl_types,
        [("list", "Tagged@v1"), ("value", "Count@v2"),]
            .iter()
            .map(|(n, t)| (
                n.to_string(),
                format!("{t} ({TTL_ENCODING_PREFIX}{BINCODE_V1})")
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(types_of(&materialized_metas(&h2)), ttl_types);
    clock.set(11_000);
    let mut r2 = restored(&h2, &storage, 2);
    let expect: Vec<_> = (0..KEYS)
        .map(|k| {
            if k % 2 == 0 {
                (None, Vec::new())
            } else {
                live(k)
            }
        })
        .collect();
    assert_eq!(read(&mut r2), expect);
}
