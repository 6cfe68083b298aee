//! The tool's error type and its exit codes.

use cairn_format::FormatError;
use cairn_storage::StorageError;

/// Exit code of a clean run.
pub const EXIT_OK: i32 = 0;
/// Exit code when the data is wrong: corruption, a missing or damaged file.
pub const EXIT_DATA: i32 = 1;
/// Exit code for bad usage, a path that is not a snapshot, or data this build cannot read.
pub const EXIT_USAGE: i32 = 2;

/// What went wrong. Every variant names what and where; [`DumpError::exit_code`] says how
/// the binary exits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DumpError {
    /// The command line asks for something that does not exist or cannot be done.
    #[error("bad usage: {detail}")]
    Usage {
        /// What was wrong.
        detail: String,
    },
    /// The path is not a checkpoint, a savepoint or a job's checkpoint directory.
    #[error("not a snapshot: {detail} path={path}")]
    NotSnapshot {
        /// The path as given or resolved.
        path: String,
        /// Why.
        detail: String,
    },
    /// The data is of a kind or version this build cannot read (a newer format version, a
    /// required feature, native RocksDB data, an object store that is not built in).
    #[error("{detail} path={path}")]
    Unsupported {
        /// The file or URL.
        path: String,
        /// What is not supported and what to do.
        detail: String,
    },
    /// A file is damaged.
    #[error("corrupt {kind}: {detail} path={path} offset={offset}")]
    Corrupt {
        /// `manifest`, `state file`, `list value` or `file`.
        kind: &'static str,
        /// The file.
        path: String,
        /// Where in the file.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// A file the manifest references does not exist.
    #[error("missing file: referenced by the manifest but not found path={path}")]
    Missing {
        /// The file.
        path: String,
    },
    /// A storage failure that concerns no single file (the message names what it concerns,
    /// as a checkpoint id or an operation).
    #[error("{detail}")]
    Storage {
        /// What failed.
        detail: String,
    },
    /// A stored value cannot be what its codec identity says, whatever the schema: a value
    /// of a state with a TTL too short to hold its 8-byte timestamp.
    #[error("damaged value of state {state}: {detail} uid={uid} path={path}")]
    DamagedValue {
        /// The snapshot.
        path: String,
        /// The operator uid.
        uid: String,
        /// The state name.
        state: String,
        /// What is wrong, then which entry: the list element, the key group and key as
        /// decoded (JSON), a map's user key (`… key_group=3 key="bob" user_key="red"`).
        detail: String,
    },
    /// Any other failure reading or writing data (I/O, an object store error, a restore
    /// check in `convert`).
    #[error("{detail} path={path}")]
    Data {
        /// The file or directory.
        path: String,
        /// What failed.
        detail: String,
    },
}

impl DumpError {
    /// The process exit code for this error: 2 for usage, "not a snapshot" and unsupported
    /// data, 1 for everything wrong in the data.
    pub fn exit_code(&self) -> i32 {
        match self {
            DumpError::Usage { .. }
            | DumpError::NotSnapshot { .. }
            | DumpError::Unsupported { .. } => EXIT_USAGE,
            DumpError::Corrupt { .. }
            | DumpError::DamagedValue { .. }
            | DumpError::Missing { .. }
            | DumpError::Data { .. }
            | DumpError::Storage { .. } => EXIT_DATA,
        }
    }

    pub(crate) fn usage(detail: impl Into<String>) -> Self {
        DumpError::Usage {
            detail: detail.into(),
        }
    }

    pub(crate) fn data(path: impl Into<String>, detail: impl ToString) -> Self {
        DumpError::Data {
            path: path.into(),
            detail: detail.to_string(),
        }
    }

    /// The error as one line (messages of nested errors can hold newlines).
    pub fn one_line(&self) -> String {
        self.to_string().replace(['\n', '\r'], " ")
    }
}

/// Turns a decoder error into a [`DumpError`] naming `path` (the full path the user knows;
/// the decoder only saw the store's object path).
pub(crate) fn from_format(e: FormatError, path: &str) -> DumpError {
    match e {
        FormatError::Corrupt {
            kind,
            offset,
            detail,
            ..
        } => DumpError::Corrupt {
            kind,
            path: path.to_string(),
            offset,
            detail,
        },
        FormatError::UnsupportedVersion {
            kind,
            found,
            supported,
            ..
        } => DumpError::Unsupported {
            path: path.to_string(),
            detail: format!(
                "unsupported {kind} version {found}: this build reads version {supported}; upgrade cairn to read it"
            ),
        },
        FormatError::UnsupportedFeature {
            kind,
            offset,
            detail,
            ..
        } => DumpError::Unsupported {
            path: path.to_string(),
            detail: format!(
                "unsupported {kind} feature: {detail}; upgrade cairn to read it offset={offset}"
            ),
        },
        other => DumpError::data(path, other),
    }
}

/// Turns a storage error into a [`DumpError`]; `full` maps the store's object path to the
/// path the user knows.
pub(crate) fn from_storage(e: StorageError, full: &dyn Fn(&str) -> String) -> DumpError {
    match e {
        StorageError::NotFound { path } => DumpError::Missing { path: full(&path) },
        StorageError::SizeMismatch {
            path,
            expected,
            actual,
        } => DumpError::Corrupt {
            kind: "file",
            path: full(&path),
            offset: expected.min(actual),
            detail: format!("wrong size: the manifest says {expected} bytes, found {actual}"),
        },
        StorageError::ChecksumMismatch {
            path,
            expected,
            actual,
        } => DumpError::Corrupt {
            kind: "file",
            path: full(&path),
            offset: 0,
            detail: format!(
                "whole-file checksum mismatch: the manifest says crc32 {expected:#010x}, found {actual:#010x}"
            ),
        },
        StorageError::CorruptManifest { path, source } => {
            let full_path = full(&path);
            if is_bad_magic(&source) {
                return DumpError::NotSnapshot {
                    path: full_path,
                    detail: "the _metadata file is not a cairn manifest (bad magic)".into(),
                };
            }
            from_format(source, &full_path)
        }
        StorageError::NoSuchSnapshot { path } => DumpError::NotSnapshot {
            path: full(&path),
            detail: "no _metadata (not a checkpoint or savepoint, or an incomplete one)".into(),
        },
        StorageError::ManifestMismatch {
            path,
            expected_id,
            expected_type,
            found_id,
            found_type,
        } => DumpError::NotSnapshot {
            path: full(&path),
            detail: format!(
                "the manifest does not belong here: expected {expected_type:?} {expected_id}, it says {found_type:?} {found_id}"
            ),
        },
        StorageError::FeatureDisabled {
            url,
            scheme,
            feature,
        } => DumpError::Unsupported {
            path: url,
            detail: format!(
                "storage scheme {scheme} is not built in: it needs cairn-storage feature `{feature}` (forwarding to object_store's), which this build lacks"
            ),
        },
        StorageError::ObjectStore { op, path, source } => DumpError::Data {
            path: full(&path),
            detail: format!("{op} failed: {source}"),
        },
        StorageError::StoreConfig { url, reason } => {
            DumpError::usage(format!("cannot open the object store: {reason} url={url}"))
        }
        StorageError::InvalidUrl { url, reason } => DumpError::NotSnapshot {
            path: url,
            detail: format!("cannot open: {reason}"),
        },
        StorageError::SavepointExists { path } => DumpError::usage(format!(
            "the output directory already holds a savepoint path={}",
            full(&path)
        )),
        StorageError::InvalidArgument { reason } => DumpError::usage(reason),
        StorageError::TooLarge { path, size, max } => DumpError::Corrupt {
            kind: "file",
            path: full(&path),
            offset: max,
            detail: format!("too large: {size} bytes, more than the {max} bytes that may be read of it"),
        },
        StorageError::Io { op, path, source } => DumpError::Data {
            path: full(&path),
            detail: format!("{op} failed: {source}"),
        },
        StorageError::MultipartAbort {
            path,
            source,
            abort,
        } => DumpError::Data {
            path: full(&path),
            detail: format!(
                "put_multipart failed: {source}; aborting the upload failed too: {abort}"
            ),
        },
        StorageError::DirectoryInUse { dir, holder } => DumpError::usage(format!(
            "the directory is in use by {holder} path={}",
            full(&dir)
        )),
        // The rest name no path; their messages carry what identifies them.
        other => DumpError::Storage {
            detail: other.to_string(),
        },
    }
}

/// Whether a manifest decode error says the file does not start with the manifest magic.
fn is_bad_magic(e: &FormatError) -> bool {
    matches!(e, FormatError::Corrupt { offset: 0, detail, .. } if detail.starts_with("bad magic"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(DumpError::usage("x").exit_code(), EXIT_USAGE);
        let c = DumpError::Corrupt {
            kind: "manifest",
            path: "p".into(),
            offset: 3,
            detail: "bad".into(),
        };
        assert_eq!(c.exit_code(), EXIT_DATA);
        assert_eq!(c.to_string(), "corrupt manifest: bad path=p offset=3");
        let m = from_storage(
            StorageError::NotFound {
                path: "shared/a".into(),
            },
            &|p| format!("/root/{p}"),
        );
        assert_eq!(m.exit_code(), EXIT_DATA);
        assert!(m.to_string().ends_with("path=/root/shared/a"), "{m}");
    }
}
