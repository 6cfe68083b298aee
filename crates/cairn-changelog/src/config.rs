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
    fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<FileRef>;
    /// Ends the protection of a file written by [`Self::upload`] (retention then deletes it
    /// once no retained checkpoint references it).
    fn release(&self, file: &FileRef);
}

impl ChangelogStorage for CheckpointStorage {
    fn upload(&self, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        self.write_pinned_shared(name, bytes)
            .map_err(|e| StateError::layer(format!("uploading changelog file name={name}"), e))
    }

    fn release(&self, file: &FileRef) {
        self.unpin_shared(&file.name);
    }
}
