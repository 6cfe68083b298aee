//! Reading native checkpoints without the program (tools, tests, format conversion).

use std::path::Path;

use cairn_core::{KeyedStateHandle, Result, SnapshotSource, StateError};
use cairn_format::EntryRef;

use crate::backend::nonce;
use crate::RocksDbOptions;

/// Calls `f` for every entry of a native handle ([`cairn_core::KeyedData::RocksNative`]) in
/// canonical form and order — `(key group, state, key, namespace, user key)`, list values
/// as `cairn_format::encode_list` encodes them — with [`EntryRef::state`] indexing
/// `handle.states`. So a native checkpoint reads exactly like a canonical state file.
///
/// The handle's files are downloaded into a fresh directory under `scratch_dir` (created if
/// missing), checked against their size and CRC32, and removed afterwards.
pub fn scan_native_handle(
    handle: &KeyedStateHandle,
    source: &dyn SnapshotSource,
    scratch_dir: &Path,
    mut f: impl FnMut(EntryRef<'_>) -> Result<()>,
) -> Result<()> {
    let dir = scratch_dir.join(format!("cairn-native-scan-{:016x}", nonce()));
    let result = crate::native_restore::download(handle, &dir, source).and_then(|()| {
        crate::canonical::scan_checkpoint(
            &dir,
            &RocksDbOptions {
                block_cache_bytes: 8 << 20,
                ..RocksDbOptions::default()
            },
            handle.key_group_range,
            &handle.states,
            &[],
            &mut |_| Ok(()),
            &mut f,
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|e| match e {
        StateError::Layer { context, source } => StateError::Layer {
            context: format!(
                "{context} (reading native handle of key groups {})",
                handle.key_group_range
            ),
            source,
        },
        other => other,
    })
}
