//! A factory of RocksDB backends for the shared suites.

use cairn_core::{Codec, KeyGroupRange};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};

use super::common::harness::BackendFactory;

/// RocksDB backends in the system temp dir (each removes its own directory on drop).
#[derive(Default)]
pub(crate) struct RocksFactory {
    pub(crate) options: RocksDbOptions,
}

impl RocksFactory {
    /// Incremental checkpoints written as canonical files, with a cache of `entries`.
    #[allow(dead_code)]
    pub(crate) fn canonical(entries: usize) -> Self {
        Self {
            options: RocksDbOptions {
                cache_capacity: entries,
                native_incremental: false,
                ..RocksDbOptions::default()
            },
        }
    }
}

impl BackendFactory for RocksFactory {
    type Backend = RocksDbBackend;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> RocksDbBackend {
        RocksDbBackend::new(RocksDbConfig {
            uid: uid.to_string(),
            max_parallelism,
            key_group_range: range,
            key_codec: super::common::schema::key_codec().identity().clone(),
            local_dir: std::env::temp_dir().join("cairn-rocksdb-tests"),
            options: self.options.clone(),
        })
        .expect("create rocksdb backend")
    }
}
