//! The two backends against each other: a backend switch through canonical savepoints
//! (hashmap → rocksdb → hashmap, across parallelism changes), and a differential test that
//! applies the same random operations to both and compares their canonical savepoints.

mod common;

use cairn_core::{KeyGroupRange, KeyedStateBackend};
use cairn_storage::open_savepoint;
use common::conformance::read_operator;
use common::factories::{HashMapFactory, RocksDbFactory};
use common::harness::{canonical_entries, write_savepoint_of, BackendFactory, Entries, Operator};
use common::model::{apply, op_strategy, Op};
use common::schema::keys_in;
use proptest::prelude::*;

const MAX_P: u32 = 64;

fn entries_of(url: &str, uid: &str) -> Entries {
    let (m, source) = open_savepoint(url).expect("open savepoint");
    canonical_entries(&m, uid, &source)
}

fn restore<F: BackendFactory>(f: &F, url: &str, parallelism: u32) -> Operator<F::Backend> {
    let (m, source) = open_savepoint(url).expect("open savepoint");
    Operator::restore(f, &m, "op", parallelism, &source)
}

fn fill_random<B: KeyedStateBackend>(op: &mut Operator<B>, keys: &[String], ops: &[Op]) {
    let mut model = Default::default();
    for o in ops {
        apply(op, &mut model, keys, o);
    }
}

#[test]
fn backend_switch_through_savepoints_keeps_state_across_parallelism() {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksDbFactory::new();
    let keys = keys_in(KeyGroupRange::all(MAX_P), MAX_P, 12);
    let ops: Vec<Op> = (0..300)
        .map(|i| match i % 5 {
            0 => Op::Value(i % 12, i as u64),
            1 => Op::ListAdd(i % 12, i as u8),
            2 => Op::MapPut(i % 12, (i % 4) as u32, i as u8),
            3 => Op::Reduce(i % 12, i as i64 - 100),
            _ => Op::Windowed(i % 12, (i % 3) as u32, i as u64),
        })
        .collect();
    let mut heap = Operator::new(&HashMapFactory, "op", MAX_P, 1);
    fill_random(&mut heap, &keys, &ops);
    let expected = read_operator(&mut heap, &keys);
    let sp1 = write_savepoint_of(&mut heap, dir.path(), 1);

    let mut on_rocks = restore(&rocks, &sp1, 3);
    assert_eq!(
        read_operator(&mut on_rocks, &keys),
        expected,
        "hashmap 1 → rocksdb 3"
    );
    let sp2 = write_savepoint_of(&mut on_rocks, dir.path(), 2);

    let mut back = restore(&HashMapFactory, &sp2, 2);
    assert_eq!(
        read_operator(&mut back, &keys),
        expected,
        "rocksdb 3 → hashmap 2"
    );
    let sp3 = write_savepoint_of(&mut back, dir.path(), 3);

    let e1 = entries_of(&sp1, "op");
    assert!(!e1.is_empty());
    assert_eq!(
        entries_of(&sp2, "op"),
        e1,
        "rocksdb writes the same canonical entries"
    );
    assert_eq!(entries_of(&sp3, "op"), e1);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("CAIRN_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]
    /// The same random operations on both backends give identical canonical savepoints.
    #[test]
    fn differential_same_operations_same_savepoint(
        ops in proptest::collection::vec(op_strategy(), 1..120),
        parallelism in 1u32..=3,
    ) {
        let data: Vec<Op> = ops
            .into_iter()
            .filter(|o| !matches!(
                o,
                Op::Checkpoint { .. } | Op::FailedCheckpoint | Op::CrashAndRestore { .. } | Op::Retain(_)
            ))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<String> = (0..12).map(|i| format!("key-{i}")).collect();
        let rocks = RocksDbFactory::new();
        let mut heap = Operator::new(&HashMapFactory, "op", MAX_P, parallelism);
        let mut on_rocks = Operator::new(&rocks, "op", MAX_P, parallelism);
        fill_random(&mut heap, &keys, &data);
        fill_random(&mut on_rocks, &keys, &data);
        prop_assert_eq!(read_operator(&mut heap, &keys), read_operator(&mut on_rocks, &keys));
        let a = write_savepoint_of(&mut heap, dir.path(), 1);
        let b = write_savepoint_of(&mut on_rocks, dir.path(), 2);
        prop_assert_eq!(entries_of(&a, "op"), entries_of(&b, "op"));
    }
}
