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
    options: cairn_rocksdb::RocksDbOptions,
}

impl RocksDbFactory {
    pub fn new() -> Self {
        Self::with_options(cairn_rocksdb::RocksDbOptions::default())
    }

    /// Native checkpoints that flush the memtables (`checkpoint_wal` off): every change is
    /// in shared SST files rather than in write-ahead log files.
    #[allow(dead_code)]
    pub fn flushing() -> Self {
        Self::with_options(cairn_rocksdb::RocksDbOptions {
            checkpoint_wal: false,
            ..cairn_rocksdb::RocksDbOptions::default()
        })
    }

    fn with_options(options: cairn_rocksdb::RocksDbOptions) -> Self {
        Self {
            root: tempfile::tempdir().expect("temporary directory"),
            next: std::sync::atomic::AtomicU64::new(0),
            options,
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
            options: self.options.clone(),
        })
        .expect("create rocksdb backend")
    }
}

/// Any factory's backends wrapped in a changelog backend. Small segments and a low
/// materialization threshold make every test cross several segments and materializations.
pub struct ChangelogFactory<F> {
    pub inner: F,
    /// Where segments are uploaded between checkpoints (`None`: by the checkpoints).
    pub storage: Option<cairn_storage::CheckpointStorage>,
    pub segment_bytes: usize,
    pub min_log_bytes: u64,
}

impl<F> ChangelogFactory<F> {
    /// Uploads through each checkpoint's target (the suites open their own storages).
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            storage: None,
            segment_bytes: 600,
            min_log_bytes: 3000,
        }
    }
}

impl<F: BackendFactory> BackendFactory for ChangelogFactory<F> {
    type Backend = cairn_changelog::ChangelogBackend<F::Backend>;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> Self::Backend {
        let inner = self.inner.create(uid, max_parallelism, range);
        let mut config = cairn_changelog::ChangelogConfig::new(
            uid,
            super::schema::key_codec().identity().clone(),
        );
        config.options.segment_bytes = self.segment_bytes;
        config.options.min_log_bytes = self.min_log_bytes;
        config.options.log_to_state_ratio = 0.5;
        config.options.materialization_interval = None;
        match &self.storage {
            Some(s) => cairn_changelog::ChangelogBackend::new(
                inner,
                config,
                std::sync::Arc::new(s.clone()),
            ),
            None => cairn_changelog::ChangelogBackend::with_checkpoint_uploads(inner, config),
        }
    }
}
