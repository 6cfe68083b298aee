//! Native incremental checkpoints: the RocksDB checkpoint directory itself.
//!
//! SST files and write-ahead log files go to the shared area under content-derived names
//! (`rocks/<128-bit hash>-<size>.sst`, `.log` for a log): uploading a file that already
//! exists rewrites the same bytes under the same name, and files the base (the last
//! completed checkpoint) already holds are referenced, not read. A file is recognised as
//! the base's by its local name and size: RocksDB never reuses a file number within an
//! instance, SST files never change, and a log only grows (a longer copy of it is a new
//! file). With `RocksDbOptions::checkpoint_wal` the seal worker starts a new log before
//! each checkpoint (`seal.rs`), so a checkpoint uploads the logs written since the last one
//! and references the older ones, which hold the writes since the memtables' last flush
//! that opening the checkpoint replays. A file of a restored base is referenced only if the
//! target holds it (it may have come from another checkpoint directory) and uploaded
//! otherwise. The other files (`CURRENT`, `MANIFEST-*`, `OPTIONS-*`) are private, under
//! `rocks-<uid>-<uidhash>-<checkpoint>-<start>_<end>-<nonce>/<local name>`.
//!
//! A native savepoint ([`cairn_core::SavepointFormat::Native`]) is the same directory,
//! taken after a flush of the memtables (`seal.rs`), uploaded whole and privately (its
//! target has no shared area): self-contained, as every savepoint.

use std::hash::Hasher;

use cairn_core::*;

use crate::db::io_err;
use crate::snapshot::{private_prefix, Base, NativeFiles, SyncView};

/// The kind of a checkpoint file that goes to the shared area (`"sst"` or `"log"`), named
/// by content; `None` for the private ones.
pub(crate) fn shared_kind(local_name: &str) -> Option<&'static str> {
    ["sst", "log"].into_iter().find(|ext| {
        local_name
            .strip_suffix(ext)
            .is_some_and(|stem| stem.ends_with('.'))
    })
}

/// Uploads the checkpoint directory of `view`; returns the handle and its shared files.
/// A target without a shared area (a native savepoint's) gets every file privately, under
/// its local name, and no file is shared.
pub(crate) fn write(
    view: &SyncView,
    base: Option<&Base>,
    target: &dyn SnapshotTarget,
    cancel: &CancelToken,
) -> Result<(KeyedStateHandle, NativeFiles)> {
    let id = view.options.checkpoint_id;
    let dir = view.dir.0.as_path();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("listing checkpoint dir", dir, e))? {
        let entry = entry.map_err(|e| io_err("listing checkpoint dir", dir, e))?;
        if entry.path().is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    let prefix = private_prefix(&view.uid, id, view.range);
    // A savepoint's target takes no shared files: everything goes to its own directory.
    let to_shared = target.supports_shared();
    let mut files = Vec::with_capacity(names.len());
    let mut shared = NativeFiles::new();
    for local_name in names {
        if cancel.is_cancelled() {
            return Err(StateError::Cancelled { checkpoint_id: id });
        }
        let path = dir.join(&local_name);
        if !is_valid_file_name(&local_name) || local_name.contains('/') {
            return Err(StateError::layer(
                format!("uploading rocksdb checkpoint path={}", path.display()),
                "unexpected file name in checkpoint directory",
            ));
        }
        let kind = shared_kind(&local_name);
        if kind.is_some() {
            let size = std::fs::metadata(&path)
                .map_err(|e| io_err("stat sst", &path, e))?
                .len();
            let known = base.and_then(|b| {
                let f = b.files.get(&local_name).filter(|f| f.file.size == size)?;
                Some((f, b.is_restored()))
            });
            if let Some((known, restored)) = known {
                if !restored || target.holds_shared(&known.file)? {
                    files.push(known.clone());
                    shared.insert(local_name, known.clone());
                    continue;
                }
            }
        }
        let bytes =
            std::fs::read(&path).map_err(|e| io_err("reading checkpoint file", &path, e))?;
        let file = match kind.filter(|_| to_shared) {
            Some(ext) => {
                let name = content_name(&bytes, ext);
                target.write_file(FileArea::Shared, &name, bytes)?
            }
            None => {
                target.write_file(FileArea::Private, &format!("{prefix}/{local_name}"), bytes)?
            }
        };
        let nf = NativeFile {
            file,
            local_name: local_name.clone(),
        };
        if kind.is_some() && to_shared {
            shared.insert(local_name, nf.clone());
        }
        files.push(nf);
    }
    let handle = KeyedStateHandle {
        key_group_range: view.range,
        key_codec: view.key_codec.clone(),
        states: view.states.clone(),
        data: KeyedData::RocksNative { files },
    };
    Ok((handle, shared))
}

/// `rocks/<128-bit content hash as hex>-<size>.<ext>`.
///
/// The hash is two SipHash-1-3 passes with different leading bytes (std's `DefaultHasher`
/// with its fixed keys): not cryptographic, but the name only has to tell different
/// files apart, and a name's size suffix plus the manifest's CRC32 catch any mix-up. A
/// future std could change the hash; then unchanged files are uploaded once more under new
/// names, which is harmless.
pub(crate) fn content_name(bytes: &[u8], ext: &str) -> String {
    let hash = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write_u8(seed);
        h.write(bytes);
        h.finish()
    };
    format!(
        "rocks/{:016x}{:016x}-{}.{ext}",
        hash(1),
        hash(2),
        bytes.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_names_are_valid_and_depend_on_content() {
        let a = content_name(b"abc", "sst");
        assert!(is_valid_file_name(&a), "{a}");
        assert_eq!(a, content_name(b"abc", "sst"));
        assert_ne!(a, content_name(b"abd", "sst"));
        assert!(a.ends_with("-3.sst"));
        assert!(content_name(b"abc", "log").ends_with("-3.log"));
    }

    #[test]
    fn sst_and_log_files_are_shared_the_rest_private() {
        assert_eq!(shared_kind("000012.sst"), Some("sst"));
        assert_eq!(shared_kind("000013.log"), Some("log"));
        for private in [
            "CURRENT",
            "MANIFEST-000005",
            "OPTIONS-000007",
            "sst",
            "log",
            "x.ssts",
        ] {
            assert_eq!(shared_kind(private), None, "{private}");
        }
    }
}
