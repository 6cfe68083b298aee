//! The workspace's model-based test (`tests/common/model.rs`) with the RocksDB backend:
//! native incremental checkpoints, a tiny cache (evictions on every few operations).

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use cairn_rocksdb::RocksDbOptions;
use rocks_factory::RocksFactory;

fn factory() -> RocksFactory {
    RocksFactory {
        options: RocksDbOptions {
            cache_capacity: 3,
            ..RocksDbOptions::default()
        },
    }
}

model_tests!(factory());
