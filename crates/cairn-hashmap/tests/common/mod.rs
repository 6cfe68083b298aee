//! Test helpers: an in-memory snapshot target and source, and small constructors.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cairn_core::*;
use cairn_hashmap::HashMapBackend;

pub const MAX_P: u32 = 128;

/// Files kept in memory; counts reads per file.
#[derive(Debug, Default)]
pub struct MemStore {
    files: Mutex<HashMap<String, Vec<u8>>>,
    reads: Mutex<HashMap<String, usize>>,
    pub writes: AtomicUsize,
}

fn path(area: FileArea, name: &str) -> String {
    match area {
        FileArea::Private => name.to_string(),
        FileArea::Shared => format!("shared/{name}"),
    }
}

impl MemStore {
    pub fn target(&self, checkpoint_id: u64, shared: bool) -> MemTarget<'_> {
        MemTarget {
            store: self,
            checkpoint_id,
            shared,
        }
    }
    pub fn reads_of(&self, f: &FileRef) -> usize {
        self.reads
            .lock()
            .unwrap()
            .get(&path(f.area, &f.name))
            .copied()
            .unwrap_or(0)
    }
    pub fn total_reads(&self) -> usize {
        self.reads.lock().unwrap().values().sum()
    }
    pub fn bytes(&self, f: &FileRef) -> Vec<u8> {
        self.files.lock().unwrap()[&path(f.area, &f.name)].clone()
    }
    pub fn put(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> FileRef {
        let size = bytes.len() as u64;
        self.files.lock().unwrap().insert(path(area, name), bytes);
        FileRef {
            area,
            name: name.to_string(),
            size,
            crc32: 0,
        }
    }
}

pub struct MemTarget<'a> {
    store: &'a MemStore,
    checkpoint_id: u64,
    shared: bool,
}

impl SnapshotTarget for MemTarget<'_> {
    fn checkpoint_id(&self) -> u64 {
        self.checkpoint_id
    }
    fn supports_shared(&self) -> bool {
        self.shared
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        assert!(is_valid_file_name(name), "{name}");
        assert!(self.shared || area == FileArea::Private);
        let p = path(area, name);
        assert!(
            !self.store.files.lock().unwrap().contains_key(&p),
            "overwrite of {p}"
        );
        self.store.writes.fetch_add(1, Ordering::Relaxed);
        Ok(self.store.put(area, name, bytes))
    }
}

impl SnapshotSource for MemStore {
    fn read_file(&self, file: &FileRef) -> Result<bytes::Bytes> {
        let p = path(file.area, &file.name);
        *self.reads.lock().unwrap().entry(p.clone()).or_default() += 1;
        let files = self.files.lock().unwrap();
        let b = files.get(&p).ok_or_else(|| StateError::Restore {
            reason: format!("no file {p}"),
        })?;
        assert_eq!(b.len() as u64, file.size);
        Ok(bytes::Bytes::from(b.clone()))
    }
}

pub fn key_codec() -> BincodeCodec<u64> {
    BincodeCodec::new()
}

pub fn key(k: u64) -> Vec<u8> {
    k.to_le_bytes().to_vec()
}

pub fn backend(range: KeyGroupRange) -> HashMapBackend {
    HashMapBackend::new(cairn_hashmap::HashMapConfig {
        uid: "op".into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key_codec().identity().clone(),
    })
    .unwrap()
}

pub fn full() -> HashMapBackend {
    backend(KeyGroupRange::all(MAX_P))
}

pub fn kg(k: u64) -> KeyGroup {
    key_group_for_key(&key(k), MAX_P)
}

/// Runs the synchronous and asynchronous phases.
pub fn snap(
    b: &mut HashMapBackend,
    store: &MemStore,
    options: SnapshotOptions,
) -> KeyedStateHandle {
    let shared = options.snapshot_type == SnapshotType::Checkpoint;
    b.snapshot(options)
        .unwrap()
        .run(
            &store.target(options.checkpoint_id, shared),
            &CancelToken::new(),
        )
        .unwrap()
}

/// Every file of a handle with its key groups.
pub fn files(h: &KeyedStateHandle) -> Vec<CanonicalFile> {
    match &h.data {
        KeyedData::Canonical { files } => files.clone(),
        _ => unreachable!(),
    }
}

pub fn restored(
    range: KeyGroupRange,
    handles: &[KeyedStateHandle],
    store: &MemStore,
) -> HashMapBackend {
    let mut b = backend(range);
    b.restore(handles, store).unwrap();
    b
}
