//! Model-based property test of the RocksDB backend against a `BTreeMap` model
//! (`CAIRN_MODEL_CASES=N` runs more cases).

mod common;

model_tests!(common::factories::RocksDbFactory::new());
