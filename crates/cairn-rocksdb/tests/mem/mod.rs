//! Snapshot files in memory, for the integration tests of this crate.

use std::collections::HashMap;
use std::sync::Mutex;

use cairn_core::{FileArea, FileRef, Result, SnapshotSource, SnapshotTarget};

/// Snapshot files in memory, by their reference's display name; `shared`: whether the
/// target takes shared files (native incremental checkpoints).
pub(crate) struct Mem {
    shared: bool,
    files: Mutex<HashMap<String, Vec<u8>>>,
}

impl Mem {
    pub(crate) fn new(shared: bool) -> Self {
        Self {
            shared,
            files: Mutex::default(),
        }
    }

    /// The bytes of file `f`; panics when it was never written.
    pub(crate) fn bytes(&self, f: &FileRef) -> Vec<u8> {
        self.files.lock().unwrap()[&f.to_string()].clone()
    }
}

impl SnapshotTarget for Mem {
    fn checkpoint_id(&self) -> u64 {
        1
    }
    fn supports_shared(&self) -> bool {
        self.shared
    }
    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        let f = FileRef {
            area,
            name: name.to_string(),
            size: bytes.len() as u64,
            crc32: crc32fast::hash(&bytes),
        };
        self.files.lock().unwrap().insert(f.to_string(), bytes);
        Ok(f)
    }
}

impl SnapshotSource for Mem {
    fn read_file(&self, f: &FileRef) -> Result<bytes::Bytes> {
        Ok(bytes::Bytes::from(self.bytes(f)))
    }
}
