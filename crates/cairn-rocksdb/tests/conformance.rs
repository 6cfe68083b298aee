//! The cross-crate conformance suite (`tests/common/conformance.rs` of the workspace) in
//! the configurations the workspace's `tests/conformance_rocksdb.rs` (default options) does
//! not run: the write-back cache tiny (an eviction every few operations; with a tiny spill,
//! written out every few evictions, and without one) and off, and
//! incremental checkpoints written as canonical files instead of natively, and native
//! checkpoints that flush the memtables instead of copying the write-ahead log.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use cairn_rocksdb::RocksDbOptions;
use rocks_factory::RocksFactory;

fn with_cache(entries: usize, spill: usize) -> RocksFactory {
    RocksFactory {
        options: RocksDbOptions {
            cache_capacity: entries,
            spill_capacity: spill,
            ..RocksDbOptions::default()
        },
    }
}

fn flushed(entries: usize) -> RocksFactory {
    RocksFactory {
        options: RocksDbOptions {
            cache_capacity: entries,
            checkpoint_wal: false,
            ..RocksDbOptions::default()
        },
    }
}

mod tiny_cache {
    use super::common;
    crate::conformance_tests!(super::with_cache(2, 3));
}

mod tiny_cache_without_spill {
    use super::common;
    crate::conformance_tests!(super::with_cache(2, 0));
}

mod tiny_cache_flushed {
    use super::common;
    crate::conformance_tests!(super::flushed(2));
}

mod flushed_default_cache {
    use super::common;
    crate::conformance_tests!(super::flushed(
        super::RocksDbOptions::default().cache_capacity
    ));
}

mod uncached {
    use super::common;
    crate::conformance_tests!(super::with_cache(0, 0));
}

mod canonical_incremental {
    use super::common;
    crate::conformance_tests!(super::RocksFactory::canonical(1 << 16));
}
