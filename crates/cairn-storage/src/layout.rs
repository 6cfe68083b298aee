//! Object paths of the directory layout and the helpers every writer shares.

use bytes::Bytes;
use cairn_core::{is_valid_file_name, FileArea, FileRef};
use cairn_format::{decode_manifest, Manifest, MANIFEST_FILE_NAME};
use object_store::path::{Path, PathPart};

use crate::error::StorageError;
use crate::store::Store;

/// The directory of shared files inside a job's checkpoint directory.
pub(crate) const SHARED_DIR: &str = "shared";
/// The prefix of a checkpoint directory name (`chk-<id>`).
pub(crate) const CHECKPOINT_DIR_PREFIX: &str = "chk-";
/// Beside a savepoint's manifest while `discard_savepoint` deletes the savepoint: a copy of
/// the manifest, written before the manifest goes and deleted last, so that a discard
/// interrupted after the manifest went can still be finished. A reserved private file name.
pub const DISCARD_MARKER_NAME: &str = "_discarding";

/// `base/<name>` for a validated, `/`-separated name.
pub(crate) fn join(base: &Path, name: &str) -> Path {
    name.split('/').fold(base.clone(), |p, seg| p.join(seg))
}

/// `base/<name>` for a name made of the raw parts of a listed location, joined by `/`: the
/// parts are taken as they are, where [`join`] would percent-encode characters such as `#`
/// and so name another object (a file no Cairn writer made, which gc deletes all the same).
pub(crate) fn join_listed(base: &Path, name: &str) -> Path {
    name.split('/')
        .fold(base.clone(), |p, seg| match PathPart::parse(seg) {
            Ok(part) => p.parts().chain(std::iter::once(part)).collect(),
            Err(_) => p.join(seg),
        })
}

pub(crate) fn checkpoint_dir(root: &Path, id: u64) -> Path {
    root.clone().join(format!("{CHECKPOINT_DIR_PREFIX}{id}"))
}

pub(crate) fn shared_dir(root: &Path) -> Path {
    root.clone().join(SHARED_DIR)
}

pub(crate) fn manifest_path(dir: &Path) -> Path {
    dir.clone().join(MANIFEST_FILE_NAME)
}

/// The id of a `chk-<id>` directory (canonical decimal only, so that `chk-007` is ignored).
pub(crate) fn parse_checkpoint_dir(dir: &Path) -> Option<u64> {
    let name = dir.filename()?;
    let digits = name.strip_prefix(CHECKPOINT_DIR_PREFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// Checks a file name a writer is asked to write.
pub(crate) fn check_name(area: FileArea, name: &str) -> Result<(), StorageError> {
    if !is_valid_file_name(name) {
        return Err(StorageError::InvalidName {
            name: name.to_string(),
            reason: "names are `/`-separated segments of [A-Za-z0-9._-], not `.` or `..`",
        });
    }
    if area == FileArea::Private && name == MANIFEST_FILE_NAME {
        return Err(StorageError::InvalidName {
            name: name.to_string(),
            reason: "reserved for the manifest",
        });
    }
    if area == FileArea::Private && name == DISCARD_MARKER_NAME {
        return Err(StorageError::InvalidName {
            name: name.to_string(),
            reason: "reserved for the marker of a savepoint being discarded",
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` and returns the reference that verifies it.
pub(crate) fn put_file(
    store: &Store,
    path: &Path,
    area: FileArea,
    name: &str,
    bytes: Vec<u8>,
) -> Result<FileRef, StorageError> {
    let file = FileRef {
        area,
        name: name.to_string(),
        size: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    };
    store.put(path, Bytes::from(bytes))?;
    Ok(file)
}

/// Reads a file and checks its size against the reference.
pub(crate) fn read_checked(
    store: &Store,
    path: &Path,
    file: &FileRef,
) -> Result<Bytes, StorageError> {
    let bytes = store.get_bounded(path, file.size).map_err(|e| match e {
        StorageError::TooLarge { path, size, .. } => StorageError::SizeMismatch {
            path,
            expected: file.size,
            actual: size,
        },
        e => e,
    })?;
    if bytes.len() as u64 != file.size {
        return Err(StorageError::SizeMismatch {
            path: path.to_string(),
            expected: file.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

/// Reads and decodes the manifest at `path`: `Ok(None)` if it does not exist.
pub(crate) fn read_manifest(store: &Store, path: &Path) -> Result<Option<Manifest>, StorageError> {
    let max = cairn_format::MAX_MANIFEST_LEN as u64;
    let bytes = match store.get_bounded(path, max) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        // No writer makes a manifest this large: it is corrupt like any other that does not
        // decode (listed as such by `files` and `gc`, not an error for the whole directory).
        Err(StorageError::TooLarge { path, size, .. }) => {
            return Err(StorageError::CorruptManifest {
                source: cairn_format::FormatError::Corrupt {
                    kind: "manifest",
                    path: path.clone(),
                    offset: max,
                    detail: format!("manifest larger than the limit len={size} max={max}"),
                },
                path,
            })
        }
        Err(e) => return Err(e),
    };
    decode_manifest(&bytes, path.as_ref())
        .map(Some)
        .map_err(|source| StorageError::CorruptManifest {
            path: path.to_string(),
            source,
        })
}

/// Encodes a manifest and writes it to `path`, durably.
pub(crate) fn write_manifest(
    store: &Store,
    path: &Path,
    manifest: &Manifest,
) -> Result<(), StorageError> {
    let bytes =
        cairn_format::encode_manifest(manifest).map_err(|source| StorageError::EncodeManifest {
            checkpoint_id: manifest.checkpoint_id,
            source,
        })?;
    store.put(path, Bytes::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_dir_names_round_trip() {
        let root = Path::from("jobs/a");
        let dir = checkpoint_dir(&root, 42);
        assert_eq!(dir.as_ref(), "jobs/a/chk-42");
        assert_eq!(parse_checkpoint_dir(&dir), Some(42));
        assert_eq!(parse_checkpoint_dir(&Path::from("chk-007")), None);
        assert_eq!(parse_checkpoint_dir(&Path::from("chk-")), None);
        assert_eq!(parse_checkpoint_dir(&Path::from("shared")), None);
        assert_eq!(join(&dir, "a/b.sst").as_ref(), "jobs/a/chk-42/a/b.sst");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(FileArea::Private, "op/0.state").is_ok());
        assert!(check_name(FileArea::Private, "_metadata").is_err());
        assert!(check_name(FileArea::Private, "_discarding").is_err());
        assert!(check_name(FileArea::Shared, "_metadata").is_ok());
        assert!(check_name(FileArea::Shared, "../x").is_err());
        assert!(check_name(FileArea::Shared, "").is_err());
    }
}
