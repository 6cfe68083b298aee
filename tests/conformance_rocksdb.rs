//! The backend conformance suite, run unchanged by the RocksDB backend.

mod common;

conformance_tests!(common::factories::RocksDbFactory::new());
