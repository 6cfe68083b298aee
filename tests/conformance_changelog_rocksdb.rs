//! The backend conformance suite, run unchanged by the RocksDB backend wrapped in a
//! changelog backend (native incremental materializations).

mod common;

conformance_tests!(common::factories::ChangelogFactory::new(
    common::factories::RocksDbFactory::new()
));
