//! Helpers of the crate's unit tests.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_core::{
    BincodeCodec, Codec, FileArea, FileRef, KeyGroupRange, Result, SnapshotSource, SnapshotTarget,
};

use crate::{RocksDbBackend, RocksDbConfig, RocksDbOptions};

/// A backend under `dir` for `u64` keys of a job with 128 key groups, owning `range`, with
/// a write-back cache of `cache_capacity` entries (0: none) and default options otherwise.
pub(crate) fn u64_backend(
    dir: &std::path::Path,
    range: KeyGroupRange,
    cache_capacity: usize,
) -> RocksDbBackend {
    u64_backend_with(
        dir,
        range,
        RocksDbOptions {
            cache_capacity,
            ..RocksDbOptions::default()
        },
    )
}

/// [`u64_backend`] with `options`.
pub(crate) fn u64_backend_with(
    dir: &std::path::Path,
    range: KeyGroupRange,
    options: RocksDbOptions,
) -> RocksDbBackend {
    RocksDbBackend::new(RocksDbConfig {
        uid: "op".into(),
        max_parallelism: 128,
        key_group_range: range,
        key_codec: BincodeCodec::<u64>::new().identity().clone(),
        local_dir: dir.to_path_buf(),
        options,
    })
    .expect("open a backend")
}

/// Snapshot files in memory: a target for checkpoint 1 without a shared area, and the
/// source to restore them from.
#[derive(Default)]
pub(crate) struct Mem(Mutex<HashMap<String, Vec<u8>>>);

impl SnapshotTarget for Mem {
    fn checkpoint_id(&self) -> u64 {
        1
    }
    fn supports_shared(&self) -> bool {
        false
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        let f = FileRef {
            area,
            name: name.to_string(),
            size: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        };
        self.0.lock().unwrap().insert(name.to_string(), bytes);
        Ok(f)
    }
}

impl SnapshotSource for Mem {
    fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
        let files = self.0.lock().unwrap();
        Ok(bytes::Bytes::from(files[&file.name].clone()))
    }
}

/// [`Mem`] with a shared area: native incremental checkpoints are written natively.
#[derive(Default)]
pub(crate) struct SharedMem(pub(crate) Mem);

impl SnapshotTarget for SharedMem {
    fn checkpoint_id(&self) -> u64 {
        1
    }
    fn supports_shared(&self) -> bool {
        true
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        self.0.write_file(area, name, bytes)
    }
}

impl SnapshotSource for SharedMem {
    fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
        self.0.read_file(file)
    }
}
