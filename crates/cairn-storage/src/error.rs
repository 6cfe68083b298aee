//! The error type of checkpoint and savepoint storage.

use cairn_core::{SnapshotType, StateError};
use cairn_format::FormatError;

/// Errors of checkpoint and savepoint storage.
///
/// Messages are lowercase; the identifiers a user needs to act come last as `key=value`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The storage URL or path cannot be used.
    #[error("invalid storage url: {reason} url={url}")]
    InvalidUrl {
        /// The URL or path as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL needs an object store that this build does not include.
    #[error("storage scheme {scheme} is not built in: it needs cairn-storage feature `{feature}` (forwarding to object_store's), which this build lacks; or pass your own store to from_store url={url}")]
    FeatureDisabled {
        /// The URL as given.
        url: String,
        /// Its scheme.
        scheme: String,
        /// The cargo feature of `cairn-storage` to enable.
        feature: &'static str,
    },
    /// A cloud store cannot be configured from the URL and the environment (credentials
    /// missing, an `http://` endpoint not allowed, a bad setting).
    #[error("cannot open object store: {reason} url={url}")]
    StoreConfig {
        /// The URL as given.
        url: String,
        /// What is missing or wrong, naming the environment variable.
        reason: String,
    },
    /// A multipart upload failed and aborting it failed too: its parts may stay on the
    /// store (billed, invisible to listings) until a lifecycle rule removes them.
    #[error("put_multipart failed: {source}; aborting the upload failed too: {abort} path={path}")]
    MultipartAbort {
        /// The object.
        path: String,
        /// Why the upload failed.
        #[source]
        source: object_store::Error,
        /// Why the abort failed.
        abort: Box<object_store::Error>,
    },
    /// A storage task on the runtime did not complete (it panicked, or the runtime shut
    /// down).
    #[error("storage task did not complete: {detail} op={op}")]
    Task {
        /// The operation.
        op: &'static str,
        /// What happened.
        detail: String,
    },
    /// A file name is not a valid snapshot file name (see `cairn_core::is_valid_file_name`).
    #[error("invalid file name: {reason} name={name}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// An object store operation failed.
    #[error("{op} failed: {source} path={path}")]
    ObjectStore {
        /// The operation (`put`, `get`, `list`, `delete`, `head`).
        op: &'static str,
        /// The object or prefix.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file system operation failed (fsync, directory creation).
    #[error("{op} failed: {source} path={path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The local path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A referenced file is missing.
    #[error("file not found path={path}")]
    NotFound {
        /// The object path.
        path: String,
    },
    /// A file has another size than its reference says.
    #[error("file has wrong size: expected {expected} bytes, found {actual} path={path}")]
    SizeMismatch {
        /// The object path.
        path: String,
        /// The size in the reference.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// An object is larger than what may be read of it (a manifest over the format's limit).
    #[error("object is larger than the limit: {size} bytes, at most {max} path={path}")]
    TooLarge {
        /// The object.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// A file's CRC32 differs from its reference.
    #[error("file has wrong checksum: expected crc32 {expected:#010x}, found {actual:#010x} path={path}")]
    ChecksumMismatch {
        /// The object path.
        path: String,
        /// The CRC32 in the reference.
        expected: u32,
        /// The CRC32 of the bytes read.
        actual: u32,
    },
    /// A manifest exists but does not decode (torn, corrupt, or written by a newer version).
    // The decoder's error names the path already.
    #[error("manifest does not decode: {source}")]
    CorruptManifest {
        /// The manifest's object path (in the error's message through `source`).
        path: String,
        /// The decoder's error.
        #[source]
        source: FormatError,
    },
    /// The newest checkpoint with a manifest cannot be read (see
    /// [`CheckpointStorage::latest_completed`](crate::CheckpointStorage::latest_completed)).
    #[error("the newest completed checkpoint cannot be read: {source}; restoring an older one would go back behind it (output a two-phase-commit sink committed after the older one would be emitted again): restore a checkpoint by its path to accept that, or repair or remove this one checkpoint_id={checkpoint_id}")]
    NewestCheckpointUnreadable {
        /// Its id.
        checkpoint_id: u64,
        /// Why it cannot be read.
        #[source]
        source: Box<StorageError>,
    },
    /// A manifest could not be encoded.
    #[error("cannot encode manifest: {source} checkpoint_id={checkpoint_id}")]
    EncodeManifest {
        /// The manifest's id.
        checkpoint_id: u64,
        /// The encoder's error.
        #[source]
        source: FormatError,
    },
    /// No completed checkpoint or savepoint with this id/path.
    #[error("no completed snapshot: manifest missing path={path}")]
    NoSuchSnapshot {
        /// The manifest path that does not exist.
        path: String,
    },
    /// A manifest does not belong where it is being published or read.
    #[error("manifest mismatch: expected {expected_type:?} {expected_id}, manifest says {found_type:?} {found_id} path={path}")]
    ManifestMismatch {
        /// Where the manifest is (to be) written.
        path: String,
        /// The id the directory is for.
        expected_id: u64,
        /// The type the directory is for.
        expected_type: SnapshotType,
        /// The id in the manifest.
        found_id: u64,
        /// The type in the manifest.
        found_type: SnapshotType,
    },
    /// A checkpoint id is not usable: not newer than the latest completed one, already in
    /// flight, or already published.
    #[error("invalid checkpoint id: {reason} checkpoint_id={checkpoint_id}")]
    InvalidCheckpointId {
        /// The id.
        checkpoint_id: u64,
        /// Why.
        reason: String,
    },
    /// Another job holds the checkpoint directory (see
    /// [`CheckpointStorage::lock_for_job`](crate::CheckpointStorage::lock_for_job)).
    #[error("the checkpoint directory is in use by {holder}: a directory holds one job's checkpoints at a time; give this job a directory of its own, or wait until the other one ends dir={dir}")]
    DirectoryInUse {
        /// The directory.
        dir: String,
        /// What the holder wrote about itself.
        holder: String,
    },
    /// A tool that holds the checkpoint directory for a short while (such as `state-dump
    /// gc`, see [`CheckpointStorage::lock_briefly`](crate::CheckpointStorage::lock_briefly))
    /// still held it after the job waited for it.
    #[error("the checkpoint directory is still held by {holder} after waiting {waited_s} s: it holds the directory only while it works (such as state-dump gc deleting old checkpoints); start the job again when it has finished dir={dir}")]
    DirectoryBusy {
        /// The directory.
        dir: String,
        /// What the holder wrote about itself.
        holder: String,
        /// How long the job waited, in seconds.
        waited_s: u64,
    },
    /// A savepoint directory already holds a manifest.
    #[error("savepoint already exists path={path}")]
    SavepointExists {
        /// The manifest path.
        path: String,
    },
    /// A savepoint directory holds what an interrupted discard left (its copy of the
    /// manifest, `_discarding`): a new savepoint there could lose files to the discard's end.
    #[error("an interrupted discard of a savepoint left path={path}: discard the directory again to finish it before writing a savepoint there")]
    InterruptedDiscard {
        /// The path of the discard's copy of the manifest.
        path: String,
    },
    /// The writer was already published or aborted.
    #[error("snapshot writer is closed: {state} checkpoint_id={checkpoint_id}")]
    WriterClosed {
        /// The snapshot's id.
        checkpoint_id: u64,
        /// `published` or `aborted`.
        state: &'static str,
    },
    /// Shared files were written to a target that accepts only private files (savepoints).
    #[error("shared files are not supported by {target} name={name}")]
    SharedNotSupported {
        /// The target kind.
        target: &'static str,
        /// The file name.
        name: String,
    },
    /// An invalid argument (for example `num_retained == 0`).
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What was wrong.
        reason: String,
    },
    /// The storage's runtime could not be created.
    #[error("cannot start the storage runtime: {source}")]
    Runtime {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn store(
        op: &'static str,
        path: impl ToString,
        source: object_store::Error,
    ) -> Self {
        match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                path: path.to_string(),
            },
            source => StorageError::ObjectStore {
                op,
                path: path.to_string(),
                source,
            },
        }
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl AsRef<std::path::Path>,
        source: std::io::Error,
    ) -> Self {
        StorageError::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// Whether the error says a file or snapshot does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            StorageError::NotFound { .. } | StorageError::NoSuchSnapshot { .. }
        )
    }
}

impl From<StorageError> for StateError {
    fn from(e: StorageError) -> Self {
        StateError::layer("snapshot storage", e)
    }
}
