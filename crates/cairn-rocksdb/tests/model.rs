//! The workspace's model-based test (`tests/common/model.rs`) with the RocksDB backend:
//! native incremental checkpoints, a tiny cache (evictions on every few operations), with a
//! tiny spill (written out every few evictions, while the operations go on) and without,
//! with checkpoints that copy the write-ahead log (the default) and that flush.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use cairn_rocksdb::RocksDbOptions;
use rocks_factory::RocksFactory;

fn factory(spill_capacity: usize, checkpoint_wal: bool) -> RocksFactory {
    RocksFactory {
        options: RocksDbOptions {
            cache_capacity: 3,
            spill_capacity,
            checkpoint_wal,
            ..RocksDbOptions::default()
        },
    }
}

mod spill {
    use super::common;
    crate::model_tests!(super::factory(4, true));
}

mod no_spill {
    use super::common;
    crate::model_tests!(super::factory(0, true));
}

mod flushed {
    use super::common;
    crate::model_tests!(super::factory(0, false));
}

mod flushed_spill {
    use super::common;
    crate::model_tests!(super::factory(4, false));
}
