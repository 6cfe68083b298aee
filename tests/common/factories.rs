//! The backend factories the suites run with.

use cairn_core::{Codec, KeyGroupRange};
use cairn_hashmap::{HashMapBackend, HashMapConfig};

use super::harness::BackendFactory;

/// Heap backends.
pub struct HashMapFactory;

impl BackendFactory for HashMapFactory {
    type Backend = HashMapBackend;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> HashMapBackend {
        HashMapBackend::new(HashMapConfig {
            uid: uid.to_string(),
            max_parallelism,
            key_group_range: range,
            key_codec: super::schema::key_codec().identity().clone(),
        })
        .expect("create hashmap backend")
    }
}

/// RocksDB backends, each in its own directory under one temporary root that lives as long
/// as the factory.
pub struct RocksDbFactory {
    root: tempfile::TempDir,
    next: std::sync::atomic::AtomicU64,
}

impl RocksDbFactory {
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("temporary directory"),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl BackendFactory for RocksDbFactory {
    type Backend = cairn_rocksdb::RocksDbBackend;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> Self::Backend {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cairn_rocksdb::RocksDbBackend::new(cairn_rocksdb::RocksDbConfig {
            uid: uid.to_string(),
            max_parallelism,
            key_group_range: range,
            key_codec: super::schema::key_codec().identity().clone(),
            local_dir: self.root.path().join(format!("{uid}-{n}")),
            options: cairn_rocksdb::RocksDbOptions::default(),
        })
        .expect("create rocksdb backend")
    }
}
