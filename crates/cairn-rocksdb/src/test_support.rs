//! Helpers of the crate's unit tests.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_core::{FileArea, FileRef, Result, SnapshotSource, SnapshotTarget};

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
