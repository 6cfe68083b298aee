//! The workspace's model-based test (`tests/common/model.rs`) with the RocksDB backend:
//! native incremental checkpoints, a tiny cache (evictions on every few operations), with a
//! tiny spill (written out every few evictions, while the operations go on) and without.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use cairn_rocksdb::RocksDbOptions;
use rocks_factory::RocksFactory;

fn factory(spill_capacity: usize) -> RocksFactory {
    RocksFactory {
        options: RocksDbOptions {
            cache_capacity: 3,
            spill_capacity,
            ..RocksDbOptions::default()
        },
    }
}

mod spill {
    use super::common;
    crate::model_tests!(super::factory(4));
}

mod no_spill {
    use super::common;
    crate::model_tests!(super::factory(0));
}
