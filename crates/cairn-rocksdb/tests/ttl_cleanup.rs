//! Background TTL cleanup: RocksDB compactions drop the expired entries of states with a
//! TTL (`src/ttl.rs`) from the stored data itself, keep live entries and states without a
//! TTL, lose nothing the write-back cache holds, and keep working across native
//! checkpoints, restores and savepoints.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod mem;

use cairn_core::*;
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use mem::Mem;

const TTL_MS: u64 = 1_000;
/// The clock's start: entries written now expire at `T0 + TTL_MS`.
const T0: u64 = 1_000_000;
/// When the newer entries are written (they expire at `T1 + TTL_MS`).
const T1: u64 = T0 + 600;
/// Keys `0..N` are written at `T0`, keys `N..2N` at `T1`.
const N: u64 = 200;

/// Sums its inputs.
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

struct Ids {
    value: TtlValueStateId<u64, VoidNamespace>,
    list: TtlListStateId<String, VoidNamespace>,
    map: TtlMapStateId<u32, String, VoidNamespace>,
    reducing: TtlReducingStateId<i64, VoidNamespace>,
    aggregating: TtlAggregatingStateId<u64, u64, u64, VoidNamespace>,
    plain: ValueStateId<u64, VoidNamespace>,
    plain_list: ListStateId<String, VoidNamespace>,
}

fn register(b: &mut RocksDbBackend, ttl: &StateTtlConfig) -> Ids {
    Ids {
        value: b
            .register_value_with_ttl(&ValueStateDescriptor::new("value"), ttl)
            .unwrap(),
        list: b
            .register_list_with_ttl(&ListStateDescriptor::new("list"), ttl)
            .unwrap(),
        map: b
            .register_map_with_ttl(&MapStateDescriptor::new("map"), ttl)
            .unwrap(),
        reducing: b
            .register_reducing_with_ttl(
                &ReducingStateDescriptor::new("reducing", |a, b| a + b),
                ttl,
            )
            .unwrap(),
        aggregating: b
            .register_aggregating_with_ttl(
                &AggregatingStateDescriptor::new("aggregating", Sum),
                ttl,
            )
            .unwrap(),
        plain: b
            .register_value(&ValueStateDescriptor::new("plain"))
            .unwrap(),
        plain_list: b
            .register_list(&ListStateDescriptor::new("plain_list"))
            .unwrap(),
    }
}

fn config(dir: &std::path::Path, options: RocksDbOptions) -> RocksDbConfig {
    RocksDbConfig {
        uid: "ttl".into(),
        max_parallelism: 128,
        key_group_range: KeyGroupRange::all(128),
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
        local_dir: dir.to_path_buf(),
        options,
    }
}

fn backend(dir: &Path, options: RocksDbOptions) -> RocksDbBackend {
    RocksDbBackend::new(config(dir, options)).unwrap()
}

/// A TTL of [`TTL_MS`] on a manual clock showing [`T0`].
fn clock_and_ttl() -> (Arc<ManualClock>, StateTtlConfig) {
    let clock = Arc::new(ManualClock::new(T0));
    let ttl = StateTtlConfig::new(Duration::from_millis(TTL_MS)).with_clock(clock.clone());
    (clock, ttl)
}

fn set_key(b: &mut RocksDbBackend, k: u64) {
    b.set_current_key(&BincodeCodec::<u64>::new().encode_to_vec(&k).unwrap())
        .unwrap();
}

/// Writes the scenario every test starts from:
///
/// - at `T0`, for keys `0..N`: every TTL state (list element `old{k}`, map entry 0) and
///   both states without a TTL;
/// - at `T1`, for keys `N..2N`: every TTL state (list element `new{k}`, map entry 1); and
///   for keys `N/2..N` a second list element `new{k}` and map entry 1.
fn write_scenario(b: &mut RocksDbBackend, ids: &Ids, clock: &ManualClock) {
    clock.set(T0);
    for k in 0..N {
        set_key(b, k);
        b.ttl_value(&ids.value).update(k).unwrap();
        b.ttl_list(&ids.list).add(format!("old{k}")).unwrap();
        b.ttl_map(&ids.map).put(0, format!("old{k}")).unwrap();
        b.ttl_reducing(&ids.reducing).add(k as i64).unwrap();
        b.ttl_aggregating(&ids.aggregating).add(k).unwrap();
        b.value(&ids.plain).update(k).unwrap();
        b.list(&ids.plain_list).add(format!("plain{k}")).unwrap();
    }
    clock.set(T1);
    for k in N / 2..N {
        set_key(b, k);
        b.ttl_list(&ids.list).add(format!("new{k}")).unwrap();
        b.ttl_map(&ids.map).put(1, format!("new{k}")).unwrap();
    }
    for k in N..2 * N {
        set_key(b, k);
        b.ttl_value(&ids.value).update(k).unwrap();
        b.ttl_list(&ids.list).add(format!("new{k}")).unwrap();
        b.ttl_map(&ids.map).put(1, format!("new{k}")).unwrap();
        b.ttl_reducing(&ids.reducing).add(k as i64).unwrap();
        b.ttl_aggregating(&ids.aggregating).add(k).unwrap();
    }
}

/// The number of entries RocksDB holds for each state, by name.
fn stored_counts(b: &RocksDbBackend) -> HashMap<&'static str, usize> {
    [
        "value",
        "list",
        "map",
        "reducing",
        "aggregating",
        "plain",
        "plain_list",
    ]
    .into_iter()
    .map(|s| (s, b.stored_entries(s).unwrap().len()))
    .collect()
}

fn counts(entries: &[(&'static str, usize)]) -> HashMap<&'static str, usize> {
    entries.iter().copied().collect()
}

/// What RocksDB holds of [`write_scenario`]'s entries once those written at `T0` have
/// expired and been compacted away.
fn after_first_expiry() -> HashMap<&'static str, usize> {
    let n = N as usize;
    counts(&[
        ("value", n),
        // Keys 0..N/2 had only expired elements; keys N/2..N lost their expired element
        // and keep the live one, keys N..2N have a live one.
        ("list", n / 2 + n),
        // Map entries expire one by one: entry 0 of keys 0..N went, entry 1 stays.
        ("map", n / 2 + n),
        ("reducing", n),
        ("aggregating", n),
        ("plain", n),
        ("plain_list", n),
    ])
}

/// The elements of a stored list value (`(len u32 LE, bytes)*`, `src/layout.rs`).
fn stored_list_len(mut stored: &[u8]) -> usize {
    let mut n = 0;
    while let Some((len, rest)) = stored.split_first_chunk::<4>() {
        stored = &rest[u32::from_le_bytes(*len) as usize..];
        n += 1;
    }
    n
}

/// Everything the program reads for keys `0..2N`, one line per key.
fn read_all(b: &mut RocksDbBackend, ids: &Ids) -> Vec<String> {
    (0..2 * N)
        .map(|k| {
            set_key(b, k);
            format!(
                "{k}: {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                b.ttl_value(&ids.value).get().unwrap(),
                b.ttl_list(&ids.list).get().unwrap(),
                b.ttl_map(&ids.map).entries().unwrap(),
                b.ttl_reducing(&ids.reducing).get().unwrap(),
                b.ttl_aggregating(&ids.aggregating).get().unwrap(),
                b.value(&ids.plain).get().unwrap(),
                b.list(&ids.plain_list).get().unwrap(),
            )
        })
        .collect()
}

/// The variants of the write-back cache in front of RocksDB.
fn option_variants() -> Vec<(&'static str, RocksDbOptions)> {
    vec![
        (
            "no cache",
            RocksDbOptions {
                cache_capacity: 0,
                ..RocksDbOptions::default()
            },
        ),
        (
            "small cache",
            RocksDbOptions {
                cache_capacity: 64,
                ..RocksDbOptions::default()
            },
        ),
        (
            "small cache and spill",
            RocksDbOptions {
                cache_capacity: 64,
                spill_capacity: 32,
                ..RocksDbOptions::default()
            },
        ),
        ("default", RocksDbOptions::default()),
    ]
}

#[test]
fn compactions_drop_expired_entries_from_rocksdb_and_keep_the_rest() {
    for (variant, options) in option_variants() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = backend(dir.path(), options);
        let (clock, ttl) = clock_and_ttl();
        let ids = register(&mut b, &ttl);
        write_scenario(&mut b, &ids, &clock);
        b.write_back_cache().unwrap();
        // Nothing has expired: a compaction keeps everything (and merges the lists'
        // append operands into stored values, which the next compaction filters).
        b.compact_stored().unwrap();
        let all = counts(&[
            ("value", 2 * N as usize),
            ("list", 2 * N as usize),
            ("map", (N + N / 2 + N) as usize),
            ("reducing", 2 * N as usize),
            ("aggregating", 2 * N as usize),
            ("plain", N as usize),
            ("plain_list", N as usize),
        ]);
        assert_eq!(stored_counts(&b), all, "{variant}: before expiry");

        // One millisecond before the old entries expire: still nothing goes.
        clock.set(T0 + TTL_MS - 1);
        b.compact_stored().unwrap();
        assert_eq!(stored_counts(&b), all, "{variant}: just before expiry");

        // The entries written at T0 have expired; those written at T1 have not.
        clock.set(T0 + TTL_MS);
        b.compact_stored().unwrap();
        let n = N as usize;
        assert_eq!(
            stored_counts(&b),
            after_first_expiry(),
            "{variant}: after the old entries expired"
        );
        // Lists lose their expired elements one by one: each stored list holds exactly
        // its live element, written at T1 (a stamp, then the element's encoding).
        let lists = b.stored_entries("list").unwrap();
        for (key, value) in &lists {
            assert_eq!(stored_list_len(value), 1, "{variant}: key {key:?}");
            assert_eq!(value[4..12], T1.to_le_bytes(), "{variant}: key {key:?}");
        }

        // Reads agree: the old entries are gone, the newer ones and the plain states stay.
        let reads = read_all(&mut b, &ids);
        assert_eq!(
            reads[0], "0: None [] [] None None Some(0) [\"plain0\"]",
            "{variant}"
        );
        assert_eq!(
            reads[(N - 1) as usize],
            format!(
                "{k}: None [\"new{k}\"] [(1, \"new{k}\")] None None Some({k}) [\"plain{k}\"]",
                k = N - 1
            ),
            "{variant}"
        );
        assert_eq!(
            reads[N as usize],
            format!(
                "{k}: Some({k}) [\"new{k}\"] [(1, \"new{k}\")] Some({k}) Some({k}) None []",
                k = N
            ),
            "{variant}"
        );

        // Everything with a TTL has expired: only the plain states are left.
        clock.set(T1 + TTL_MS);
        b.write_back_cache().unwrap();
        b.compact_stored().unwrap();
        assert_eq!(
            stored_counts(&b),
            counts(&[
                ("value", 0),
                ("list", 0),
                ("map", 0),
                ("reducing", 0),
                ("aggregating", 0),
                ("plain", n),
                ("plain_list", n),
            ]),
            "{variant}: after every entry expired"
        );
    }
}

#[test]
fn list_elements_appended_to_an_expired_list_survive_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), RocksDbOptions::default());
    let (clock, ttl) = clock_and_ttl();
    let ids = register(&mut b, &ttl);
    set_key(&mut b, 7);
    b.ttl_list(&ids.list)
        .update(vec!["a".into(), "b".into()])
        .unwrap();
    b.compact_stored().unwrap();
    // The stored list has expired whole; an element is appended (a merge operand) above
    // it before any compaction. Compactions merge the two (the filter sees the stored list
    // or the merged one, never the operand) and keep exactly the live element.
    clock.set(T0 + TTL_MS);
    b.ttl_list(&ids.list).add("c".into()).unwrap();
    b.compact_stored().unwrap();
    b.compact_stored().unwrap();
    let stored = b.stored_entries("list").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored_list_len(&stored[0].1), 1);
    assert_eq!(stored[0].1[4..12], (T0 + TTL_MS).to_le_bytes());
    assert_eq!(b.ttl_list(&ids.list).get().unwrap(), ["c"]);
    // Once "c" expires the list goes.
    clock.set(T0 + 2 * TTL_MS);
    b.compact_stored().unwrap();
    assert!(b.stored_entries("list").unwrap().is_empty());
}

#[test]
fn dirty_and_clean_cache_entries_are_neither_lost_nor_resurrected() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), RocksDbOptions::default());
    let (clock, ttl) = clock_and_ttl();
    let ids = register(&mut b, &ttl);
    for k in 1..=3 {
        set_key(&mut b, k);
        b.ttl_value(&ids.value).update(k * 10).unwrap();
        b.ttl_map(&ids.map).put(1, format!("m{k}")).unwrap();
    }
    set_key(&mut b, 1);
    b.ttl_reducing(&ids.reducing).add(5).unwrap();
    b.write_back_cache().unwrap();
    b.compact_stored().unwrap();
    assert_eq!(b.stored_entries("value").unwrap().len(), 3);

    // Everything stored has expired. The cache still holds clean copies of it; some keys
    // get newer values (dirty) or deletes (dirty) that are not written back yet.
    clock.set(T0 + TTL_MS);
    set_key(&mut b, 1);
    b.ttl_value(&ids.value).update(11).unwrap();
    b.ttl_map(&ids.map).put(1, "new1".into()).unwrap();
    b.ttl_reducing(&ids.reducing).add(7).unwrap();
    set_key(&mut b, 2);
    b.ttl_value(&ids.value).clear().unwrap();
    b.compact_stored().unwrap();
    // RocksDB itself dropped every expired entry, including those the cache has newer
    // values for.
    for state in ["value", "map", "reducing"] {
        assert!(b.stored_entries(state).unwrap().is_empty(), "{state}");
    }
    // The cache's newer values are not lost; the expired ones are not returned.
    let read = |b: &mut RocksDbBackend| {
        (1..=3)
            .map(|k| {
                set_key(b, k);
                (
                    b.ttl_value(&ids.value).get().unwrap(),
                    b.ttl_map(&ids.map).get(&1).unwrap(),
                    b.ttl_reducing(&ids.reducing).get().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (Some(11), Some("new1".to_string()), Some(7)),
        (None, None, None),
        (None, None, None),
    ];
    assert_eq!(read(&mut b), expected);
    // Written back and compacted again: the live values stay, nothing old comes back.
    b.write_back_cache().unwrap();
    b.compact_stored().unwrap();
    assert_eq!(b.stored_entries("value").unwrap().len(), 1);
    assert_eq!(b.stored_entries("map").unwrap().len(), 1);
    assert_eq!(b.stored_entries("reducing").unwrap().len(), 1);
    assert_eq!(read(&mut b), expected);
    // With the cache emptied (a fresh backend from a savepoint reads RocksDB only).
    let mut restored = restored_copy(dir.path(), &mut b, SnapshotOptions::savepoint(1));
    let _ = register(&mut restored, &ttl);
    assert_eq!(read(&mut restored), expected);
}

#[test]
fn native_checkpoints_and_restores_keep_reads_and_the_filter() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), RocksDbOptions::default());
    let (clock, ttl) = clock_and_ttl();
    let ids = register(&mut b, &ttl);
    write_scenario(&mut b, &ids, &clock);
    let target = Mem::new(true);
    let handle = b
        .snapshot(SnapshotOptions::incremental_checkpoint(1))
        .unwrap()
        .run(&target, &CancelToken::new())
        .unwrap();
    assert!(matches!(handle.data, KeyedData::RocksNative { .. }));

    // Restored, before anything expired: the same reads.
    let mut restored = backend(dir.path(), RocksDbOptions::default());
    restored
        .restore(std::slice::from_ref(&handle), &target)
        .unwrap();
    let restored_ids = register(&mut restored, &ttl);
    assert_eq!(
        read_all(&mut restored, &restored_ids),
        read_all(&mut b, &ids)
    );

    // The restored column families got the filter: after expiry a compaction drops the
    // old entries from the restored instance, and reads still agree with the original
    // (which was not compacted: its reads hide what the restored one dropped).
    restored.compact_stored().unwrap();
    clock.set(T0 + TTL_MS);
    restored.compact_stored().unwrap();
    assert_eq!(stored_counts(&restored), after_first_expiry());
    let after = read_all(&mut restored, &restored_ids);
    assert_eq!(after, read_all(&mut b, &ids));

    // A savepoint of the compacted instance holds what is stored, and restores to the
    // same reads.
    let mut again = restored_copy(dir.path(), &mut restored, SnapshotOptions::savepoint(2));
    let again_ids = register(&mut again, &ttl);
    again.write_back_cache().unwrap();
    assert_eq!(stored_counts(&again), stored_counts(&restored));
    assert_eq!(read_all(&mut again, &again_ids), after);
}

#[test]
fn states_restored_without_a_ttl_registration_are_not_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), RocksDbOptions::default());
    let (clock, ttl) = clock_and_ttl();
    let ids = register(&mut b, &ttl);
    write_scenario(&mut b, &ids, &clock);
    let mut restored = restored_copy(
        dir.path(),
        &mut b,
        SnapshotOptions::incremental_checkpoint(1),
    );
    // Only the value state registers (with its TTL); the other states stay restored and
    // unregistered.
    restored
        .register_value_with_ttl(&ValueStateDescriptor::<u64>::new("value"), &ttl)
        .unwrap();
    let before = stored_counts(&restored);
    clock.set(T1 + TTL_MS);
    restored.compact_stored().unwrap();
    restored.compact_stored().unwrap();
    let mut expected = before.clone();
    expected.insert("value", 0);
    assert_eq!(stored_counts(&restored), expected);
    assert!(expected["list"] > 0 && expected["map"] > 0);
}

/// A backend under `dir` restored from a snapshot of `b` taken with `options` (in memory;
/// native incremental checkpoints keep their shared files).
fn restored_copy(dir: &Path, b: &mut RocksDbBackend, options: SnapshotOptions) -> RocksDbBackend {
    let target = Mem::new(options.incremental);
    let handle = b
        .snapshot(options)
        .unwrap()
        .run(&target, &CancelToken::new())
        .unwrap();
    let mut restored = backend(dir, RocksDbOptions::default());
    restored.restore(&[handle], &target).unwrap();
    restored
}

/// Each state with a TTL has the TTL compaction filter and periodic compactions (30 days, as
/// Flink sets them); the others have neither (RocksDB's automatic setting turns periodic
/// compactions on only where a filter is), from the newest OPTIONS file of the instance.
fn assert_periodic_compactions(b: &RocksDbBackend) {
    let dir = b.db_path().unwrap();
    let (_, newest) = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let n: u64 = name.strip_prefix("OPTIONS-")?.parse().ok()?;
            Some((n, name))
        })
        .max()
        .unwrap();
    let text = std::fs::read_to_string(dir.join(newest)).unwrap();
    let mut secs = HashMap::new();
    let mut factories = HashMap::new();
    let mut cf = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            cf = line
                .strip_prefix("[CFOptions \"")
                .and_then(|r| r.strip_suffix("\"]"))
                .map(str::to_string);
        } else if let (Some(cf), Some(v)) = (&cf, line.strip_prefix("periodic_compaction_seconds="))
        {
            secs.insert(cf.clone(), v.parse::<u64>().unwrap());
        } else if let (Some(cf), Some(v)) = (&cf, line.strip_prefix("compaction_filter_factory=")) {
            factories.insert(cf.clone(), v.to_string());
        }
    }
    let days_30 = 30 * 24 * 3600;
    for state in ["value", "list", "map", "reducing", "aggregating"] {
        assert_eq!(secs.get(state), Some(&days_30), "{state}: {secs:?}");
        assert_eq!(
            factories.get(state).map(String::as_str),
            Some("cairn.ttl.factory"),
            "{state}: {factories:?}"
        );
    }
    for state in ["plain", "plain_list"] {
        assert_ne!(secs.get(state), Some(&days_30), "{state}: {secs:?}");
        assert_eq!(
            factories.get(state).map(String::as_str),
            Some("nullptr"),
            "{state}: {factories:?}"
        );
    }
}

#[test]
fn states_with_a_ttl_get_periodic_compactions_and_the_others_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = backend(dir.path(), RocksDbOptions::default());
    let (clock, ttl) = clock_and_ttl();
    let ids = register(&mut b, &ttl);
    assert_periodic_compactions(&b);
    write_scenario(&mut b, &ids, &clock);
    // Native restore: the column families are opened from the checkpoint.
    let mut restored = restored_copy(
        dir.path(),
        &mut b,
        SnapshotOptions::incremental_checkpoint(1),
    );
    assert_periodic_compactions(&restored);
    let _ = register(&mut restored, &ttl);
    assert_periodic_compactions(&restored);
    // Canonical restore: the column families are created for the savepoint's states.
    let again = restored_copy(dir.path(), &mut restored, SnapshotOptions::savepoint(2));
    assert_periodic_compactions(&again);
}
