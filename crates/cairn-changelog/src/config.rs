//! Configuration and the storage a changelog backend uploads to between checkpoints.

use std::fmt;
use std::time::Duration;

use cairn_core::{CodecIdentity, FileRef, Result, StateError};
use cairn_storage::CheckpointStorage;

/// Configuration of a [`crate::ChangelogBackend`].
#[derive(Clone, Debug)]
pub struct ChangelogConfig {
    /// The operator uid (errors and file names).
    pub uid: String,
    /// Identity of the key codec (recorded in handles that have no materialization yet).
    pub key_codec: CodecIdentity,
    /// The tunables.
    pub options: ChangelogOptions,
}

impl ChangelogConfig {
    /// The configuration of operator `uid` with the default [`ChangelogOptions`].
    pub fn new(uid: impl Into<String>, key_codec: CodecIdentity) -> Self {
        Self::with_options(uid, key_codec, ChangelogOptions::default())
    }

    /// The configuration of operator `uid` with `options`.
    pub fn with_options(
        uid: impl Into<String>,
        key_codec: CodecIdentity,
        options: ChangelogOptions,
    ) -> Self {
        Self {
            uid: uid.into(),
            key_codec,
            options,
        }
    }
}

/// The tunables of a changelog backend, the counterparts of Flink's `state.changelog.*`
/// options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChangelogOptions {
    /// Materialize at the latest this long after the last materialization started
    /// (`None`: only by log size). Flink's `periodic-materialize.interval`; default 3
    /// minutes.
    pub materialization_interval: Option<Duration>,
    /// Materialize when the log written since the last materialization reaches this
    /// fraction of the last materialized snapshot's size (default 1.0)...
    pub log_to_state_ratio: f64,
    /// ...and at least this many bytes (default 16 MiB). Both sides are sizes as stored: the
    /// materialized snapshot's files, and the log's buffered records at the compression its
    /// encoded segments achieved so far (uncompressed until the first segment is encoded).
    /// These two bound how much log a restore replays.
    pub min_log_bytes: u64,
    /// Seal the record buffer into a segment (uploaded in the background when a
    /// [`ChangelogStorage`] is given) when it reaches this many bytes (default 4 MiB).
    pub segment_bytes: usize,
    /// Encoded records handed to the background thread and not written into their
    /// segment yet, at most (Flink's `dstl.dfs.upload.max-in-flight`; default 100 MiB): a
    /// mutation that would exceed it waits until the background thread has caught up, so
    /// a log that is written (or uploaded) more slowly than the task changes state slows
    /// the task down instead of filling the memory. One chunk is always let through. The
    /// wait ends only when the background thread catches up: a storage whose uploads never
    /// return holds the task too.
    pub max_in_flight_bytes: u64,
    /// Materializations that may fail in a row (Flink's
    /// `periodic-materialize.max-failures-allowed`; default 3). A failed materialization
    /// leaves checkpoints on the last one that succeeded, with a longer log; past this many
    /// the next state access or checkpoint fails with
    /// [`crate::ChangelogError::MaterializationFailures`], so the task fails and the job
    /// restarts from its latest checkpoint, as in Flink.
    pub max_materialization_failures: u32,
}

impl Default for ChangelogOptions {
    fn default() -> Self {
        Self {
            materialization_interval: Some(Duration::from_secs(180)),
            log_to_state_ratio: 1.0,
            min_log_bytes: 16 << 20,
            segment_bytes: 4 << 20,
            max_in_flight_bytes: 100 << 20,
            max_materialization_failures: 3,
        }
    }
}

/// Backpressure from the log's background thread ([`ChangelogOptions::max_in_flight_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogBackpressure {
    /// Times the task thread waited for room.
    pub waits: u64,
    /// Time it waited, in total.
    pub waited: Duration,
}

/// Where a changelog backend writes shared files *between* checkpoints (log segments and
/// materialized snapshots), protected from garbage collection until it releases them.
///
/// It must be the job's checkpoint directory: checkpoints reference these files in the
/// shared area. Implemented by [`CheckpointStorage`] (pinned shared files).
pub trait ChangelogStorage: Send + Sync + fmt::Debug {
    /// Durably writes shared file `name` and protects it from GC until [`Self::release`].
    fn upload(&self, name: &str, bytes: &[u8]) -> Result<FileRef>;
    /// Ends the protection of a file written by [`Self::upload`] (retention then deletes it
    /// once no retained checkpoint references it).
    fn release(&self, file: &FileRef);
}

/// Attempts of an upload between checkpoints through [`CheckpointStorage`] before it
/// fails, as Flink's `dstl.dfs.upload.retry-policy: fixed` with its default `max-attempts`
/// of 3: object stores fail transiently, and one failed file fails a whole
/// materialization.
pub const UPLOAD_ATTEMPTS: u32 = 3;

/// The pause before each further attempt of an upload.
pub const UPLOAD_RETRY_DELAY: Duration = Duration::from_millis(50);

impl ChangelogStorage for CheckpointStorage {
    /// Writes through [`CheckpointStorage::write_pinned_shared`], up to [`UPLOAD_ATTEMPTS`]
    /// times (a failed attempt leaves no pin); the last attempt's error names the file and
    /// the attempts.
    fn upload(&self, name: &str, bytes: &[u8]) -> Result<FileRef> {
        let mut attempt = 1;
        loop {
            match self.write_pinned_shared(name, bytes.to_vec()) {
                Ok(file) => return Ok(file),
                Err(_) if attempt < UPLOAD_ATTEMPTS => {
                    attempt += 1;
                    std::thread::sleep(UPLOAD_RETRY_DELAY);
                }
                Err(e) => {
                    return Err(StateError::layer(
                        format!("uploading changelog file name={name} attempts={attempt}"),
                        e,
                    ))
                }
            }
        }
    }

    fn release(&self, file: &FileRef) {
        self.unpin_shared(&file.name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_storage::fault::{FaultyObjectStore, OpKind};
    use object_store::memory::InMemory;
    use object_store::path::Path;

    use super::*;

    fn storage() -> (CheckpointStorage, FaultyObjectStore) {
        let faulty = FaultyObjectStore::new(Arc::new(InMemory::new()));
        let storage = CheckpointStorage::from_store(Arc::new(faulty.clone()), Path::from("job"))
            .expect("storage");
        (storage, faulty)
    }

    /// An upload that fails transiently is attempted again, up to [`UPLOAD_ATTEMPTS`]
    /// times; after that the error names the file and the attempts.
    #[test]
    fn uploads_are_attempted_again() {
        let bytes = b"segment".to_vec();
        let (storage, faulty) = storage();
        faulty.fail_nth(OpKind::Put, faulty.count(OpKind::Put) + 1);
        let file = ChangelogStorage::upload(&storage, "log/seg-1", &bytes).expect("second attempt");
        assert_eq!(file.size, 7);

        faulty.fail_writes_with_probability(1.0, 7);
        let puts = faulty.count(OpKind::Put);
        let err = ChangelogStorage::upload(&storage, "log/seg-2", &bytes).expect_err("all fail");
        assert_eq!(faulty.count(OpKind::Put) - puts, u64::from(UPLOAD_ATTEMPTS));
        let message = err.to_string();
        assert!(
            message.contains("name=log/seg-2") && message.contains("attempts=3"),
            "{message}"
        );
        faulty.fail_writes_with_probability(0.0, 7);
        let file = ChangelogStorage::upload(&storage, "log/seg-2", &bytes).expect("no faults");
        ChangelogStorage::release(&storage, &file);
    }
}
