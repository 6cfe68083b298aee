//! Job and checkpoint configuration, with Flink's options and defaults.

use std::path::PathBuf;
use std::time::Duration;

pub use cairn_changelog::ChangelogOptions;
use cairn_core::SavepointFormat;
use cairn_rocksdb::RocksDbOptions;
use cairn_storage::CheckpointStorage;

use crate::metrics::MetricsConfig;
use crate::timers::ProcessingClock;

/// Checkpointing mode (Flink's `execution.checkpointing.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointingMode {
    /// Barrier alignment: a task stops reading a channel that delivered the barrier until
    /// every channel did, so the snapshot reflects exactly the records before the barrier.
    ExactlyOnce,
    /// No alignment: records after the barrier on an early channel are processed before the
    /// snapshot, so a restore may replay them (duplicates, never loss).
    AtLeastOnce,
}

/// What happens to checkpoints when the job is cancelled (Flink's
/// `externalized-checkpoint-retention`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointRetention {
    /// Delete every checkpoint of the job on cancellation (Flink's default).
    DeleteOnCancellation,
    /// Keep the retained checkpoints on cancellation, to restore from later.
    RetainOnCancellation,
}

/// How keyed state is snapshotted in checkpoints (savepoints are always canonical and full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotMode {
    /// Every checkpoint holds the whole state (canonical files).
    Full,
    /// Checkpoints write only what changed since the last completed one (heap: key-group
    /// deltas; RocksDB: native SST files) and reference the rest.
    Incremental,
    /// Every state change is also appended to a durable log (`cairn-changelog`); a
    /// checkpoint is the last background materialization (the backend's incremental
    /// snapshot) plus the log after it.
    Changelog,
}

/// The checkpoint options. Checkpointing is off unless [`CheckpointConfig::interval`] is set.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// Time between checkpoint triggers; `None` (the default) disables checkpointing.
    pub interval: Option<Duration>,
    /// Exactly-once (aligned, the default) or at-least-once.
    pub mode: CheckpointingMode,
    /// Unaligned checkpoints: barriers overtake in-flight records, which are stored in the
    /// checkpoint and replayed on restore (exactly-once mode only; default off).
    pub unaligned: bool,
    /// With `unaligned`, start every checkpoint aligned and switch a task to unaligned when
    /// its alignment has not finished this long after the checkpoint started (Flink's
    /// `aligned-checkpoint-timeout`, default 0: unaligned from the start).
    pub aligned_timeout: Duration,
    /// A checkpoint not complete after this long is aborted (default 10 minutes).
    pub timeout: Duration,
    /// Minimum time between the end of one checkpoint and the trigger of the next (default 0).
    /// A positive pause allows one checkpoint in flight at a time, whatever
    /// [`CheckpointConfig::max_concurrent`] says (as in Flink).
    pub min_pause: Duration,
    /// Checkpoints in flight at once (default 1). A checkpoint that completes gives up those
    /// triggered before it and still in flight, and when a bounded job has finished, its
    /// final checkpoint gives up all in flight and starts at once: it commits everything
    /// they would (`JobResult::checkpoints_subsumed` counts both).
    pub max_concurrent: usize,
    /// Failed checkpoints tolerated in a row before the job fails over (default 0). As in
    /// Flink, the count starts again when a checkpoint completes or when it fails the job
    /// over, not at a restart that a failed task caused; a checkpoint given up because its
    /// run ended does not count.
    pub tolerable_failures: u32,
    /// Completed checkpoints kept (default 1).
    pub num_retained: usize,
    /// Checkpoints on cancellation (default: deleted).
    pub retention: CheckpointRetention,
    /// Full or incremental keyed-state checkpoints (default incremental).
    pub snapshot_mode: SnapshotMode,
    /// Options of [`SnapshotMode::Changelog`] (Flink's `state.changelog.*`): when to
    /// materialize, segment size, the log's in-flight bound.
    pub changelog: ChangelogOptions,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            interval: None,
            mode: CheckpointingMode::ExactlyOnce,
            unaligned: false,
            aligned_timeout: Duration::ZERO,
            timeout: Duration::from_secs(600),
            min_pause: Duration::ZERO,
            max_concurrent: 1,
            tolerable_failures: 0,
            num_retained: 1,
            retention: CheckpointRetention::DeleteOnCancellation,
            snapshot_mode: SnapshotMode::Incremental,
            changelog: ChangelogOptions::default(),
        }
    }
}

/// Which keyed state backend the job's keyed operators use.
#[derive(Clone, Debug)]
pub enum StateBackendConfig {
    /// Typed values on the heap (`cairn-hashmap`).
    HashMap,
    /// Embedded RocksDB (`cairn-rocksdb`) under `local_dir` (a fresh subdirectory per
    /// operator instance, removed when the instance closes).
    RocksDb {
        /// Local working directory (default: the system temp directory).
        local_dir: PathBuf,
        /// RocksDB and cache tuning.
        options: RocksDbOptions,
    },
}

impl StateBackendConfig {
    /// RocksDB with default options in the system temp directory.
    pub fn rocksdb() -> Self {
        StateBackendConfig::RocksDb {
            local_dir: std::env::temp_dir().join("cairn-rocksdb"),
            options: RocksDbOptions::default(),
        }
    }

    /// The name used in summaries and benchmark lines (`hashmap`, `rocksdb`).
    pub fn name(&self) -> &'static str {
        match self {
            StateBackendConfig::HashMap => "hashmap",
            StateBackendConfig::RocksDb { .. } => "rocksdb",
        }
    }
}

/// Failure handling: how often and after what pause a failed job restarts from its latest
/// checkpoint. The default is Flink's fixed-delay strategy (3 restarts, 100 ms apart);
/// [`RestartStrategy::exponential_delay`] is Flink's exponential-delay strategy and
/// [`RestartStrategy::failure_rate`] its failure-rate strategy, both of which forgive
/// failures that lie far apart, as a long-running job needs.
#[derive(Clone, Copy, Debug)]
pub struct RestartStrategy {
    /// Restarts allowed before the job fails for good (default 3; 0 disables restarts);
    /// counted since the last reset when [`RestartStrategy::reset_after`] is set, and
    /// within the last [`RestartStrategy::failure_rate_interval`] when that is.
    pub max_restarts: u32,
    /// Pause before the first restart (default 100 ms).
    pub delay: Duration,
    /// Each further pause is the last one times this (default 1: a fixed delay; at least 1).
    pub backoff_multiplier: f64,
    /// The longest pause (default 1 min; never shorter than `delay`).
    pub max_delay: Duration,
    /// A run that lasts this long before it fails resets the pause to `delay` and the count
    /// of restarts to 0 (Flink's `reset-backoff-threshold`; default: never).
    pub reset_after: Option<Duration>,
    /// Counts failures in a sliding window of this length instead (Flink's failure-rate
    /// strategy): the job restarts unless this failure is one more than `max_restarts`
    /// within the window, however many restarts came before (default: none; `reset_after`
    /// then does not apply).
    pub failure_rate_interval: Option<Duration>,
}

impl Default for RestartStrategy {
    fn default() -> Self {
        Self::fixed_delay(3, Duration::from_millis(100))
    }
}

impl RestartStrategy {
    /// Flink's fixed-delay strategy: at most `max_restarts` restarts, each after `delay`.
    pub fn fixed_delay(max_restarts: u32, delay: Duration) -> Self {
        Self {
            max_restarts,
            delay,
            backoff_multiplier: 1.0,
            max_delay: Duration::from_secs(60),
            reset_after: None,
            failure_rate_interval: None,
        }
    }

    /// Flink's failure-rate strategy: restarts after `delay` each time, unless the failure
    /// is one more than `max_failures_per_interval` within the last `interval` (Flink's
    /// defaults: 1 per minute, 1 s apart).
    pub fn failure_rate(
        max_failures_per_interval: u32,
        interval: Duration,
        delay: Duration,
    ) -> Self {
        Self {
            failure_rate_interval: Some(interval),
            ..Self::fixed_delay(max_failures_per_interval, delay)
        }
    }

    /// No restarts: the first failure fails the job.
    pub fn no_restarts() -> Self {
        Self::fixed_delay(0, Duration::ZERO)
    }

    /// Flink's exponential-delay strategy with its defaults: pauses of 1 s, 1.5 s, 2.25 s …
    /// up to 1 min; a run that lasted an hour before failing starts the series again; no
    /// limit on the number of restarts.
    pub fn exponential_delay() -> Self {
        Self {
            max_restarts: u32::MAX,
            delay: Duration::from_secs(1),
            backoff_multiplier: 1.5,
            max_delay: Duration::from_secs(60),
            reset_after: Some(Duration::from_secs(3600)),
            failure_rate_interval: None,
        }
    }

    /// The pause after `previous`: `previous` times the multiplier, at most `max_delay` (or
    /// `delay`, if that is longer).
    pub(crate) fn next_delay(&self, previous: Duration) -> Duration {
        let longest = self.max_delay.max(self.delay);
        Duration::try_from_secs_f64(previous.as_secs_f64() * self.backoff_multiplier.max(1.0))
            .map_or(longest, |next| next.min(longest))
    }
}

/// Where a job starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreFrom {
    /// A checkpoint directory (`…/chk-<id>`, or its `_metadata`) or a savepoint directory.
    Path(String),
    /// The newest completed checkpoint in the job's checkpoint storage; none: start empty.
    Latest,
}

/// Who owns the checkpoint a job is restored from (Flink's restore mode,
/// `execution.state-recovery.claim-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreMode {
    /// The job never deletes the snapshot it was restored from, nor any other checkpoint an
    /// earlier run left in its directory; its checkpoints in another directory do not depend
    /// on it (the default).
    #[default]
    NoClaim,
    /// The job takes over the snapshot it is restored from: a savepoint, or the newest
    /// completed checkpoint of its own checkpoint directory ([`RestoreFrom::Latest`], or that
    /// checkpoint's path). Retention subsumes it like the job's own checkpoints (a checkpoint
    /// once the job no longer reads it; a savepoint once the job has as many completed
    /// checkpoints of its own as it retains, until then restarts restore it), and
    /// cancellation with delete-on-cancellation deletes it. A savepoint is deleted file by
    /// file as its manifest lists them; other files in its directory stay. Claiming an
    /// older checkpoint is an error (retention works on the job's range of ids).
    Claim,
}

/// Everything about running a job except its dataflow.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// A name for logs and summaries.
    pub name: String,
    /// Default parallelism of every operator (default 1).
    pub parallelism: u32,
    /// Number of key groups (default 128); cannot change across restores of keyed state.
    pub max_parallelism: u32,
    /// Checkpoint options.
    pub checkpoint: CheckpointConfig,
    /// The checkpoint storage: a path, `file://…`, `memory://` or an object store URL. It
    /// belongs to one job at a time: a job that checkpoints takes a local directory's lock
    /// (`CheckpointStorage::lock_for_job`) and a second job started on it is refused.
    pub checkpoint_dir: String,
    /// A checkpoint storage to use instead of opening `checkpoint_dir` (for example one
    /// seen through a fault-injecting object store, or an object store built by hand).
    pub checkpoint_storage: Option<CheckpointStorage>,
    /// Where savepoints go by default (`<dir>/sp-<id>-<tag>`, the tag random per job run,
    /// as Flink's `savepoint-<job>-<random>`).
    pub savepoint_dir: Option<String>,
    /// The format of savepoints taken without one named: by stop-with-savepoint on a signal,
    /// [`crate::JobHandle::trigger_savepoint`] and [`crate::JobHandle::stop_with_savepoint`]
    /// (default canonical, as in Flink).
    pub savepoint_format: SavepointFormat,
    /// The keyed state backend.
    pub backend: StateBackendConfig,
    /// Start from a snapshot instead of empty state.
    pub restore: Option<RestoreFrom>,
    /// Whether the job takes over the checkpoint it is restored from (default: no claim).
    pub restore_mode: RestoreMode,
    /// Allow a snapshot to hold operators this job does not have, or keyed state of an
    /// operator that is no longer keyed (their state is dropped); otherwise that is an error
    /// (Flink's `allowNonRestoredState`).
    pub allow_non_restored_state: bool,
    /// Failure handling.
    pub restart: RestartStrategy,
    /// Records per batch on a channel between tasks (default 256).
    pub batch_size: usize,
    /// Batches a channel holds before the sender blocks (default 16): backpressure.
    pub channel_capacity: usize,
    /// Throttle all sources together to this many records per second.
    pub records_per_second: Option<u64>,
    /// Fail one task once, after the sources have read this many records in total (tests
    /// and demos of recovery).
    pub fail_at_record: Option<u64>,
    /// Threads that run asynchronous snapshot phases (default 2).
    pub async_threads: usize,
    /// The clock of processing-time timers (default: the system's wall clock).
    pub processing_clock: ProcessingClock,
    /// How often a watermark assigner emits a watermark when it has advanced (default
    /// 200 ms, Flink's `pipeline.auto-watermark-interval`); zero turns periodic watermarks
    /// (and idleness) off, as in Flink: event-time timers then fire only at the end of the
    /// input. See [`crate::watermarks`].
    pub auto_watermark_interval: Duration,
    /// Where and how often the job reports its metrics (none by default; they are kept
    /// either way: [`crate::JobHandle::metrics`]).
    pub metrics: MetricsConfig,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            name: "job".into(),
            parallelism: 1,
            max_parallelism: 128,
            checkpoint: CheckpointConfig::default(),
            checkpoint_dir: "./checkpoints".into(),
            checkpoint_storage: None,
            savepoint_dir: None,
            savepoint_format: SavepointFormat::Canonical,
            backend: StateBackendConfig::HashMap,
            restore: None,
            restore_mode: RestoreMode::NoClaim,
            allow_non_restored_state: false,
            restart: RestartStrategy::default(),
            batch_size: 256,
            channel_capacity: 16,
            records_per_second: None,
            fail_at_record: None,
            async_threads: 2,
            processing_clock: ProcessingClock::default(),
            auto_watermark_interval: Duration::from_millis(200),
            metrics: MetricsConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(strategy: &RestartStrategy, n: usize) -> Vec<Duration> {
        std::iter::successors(Some(strategy.delay), |d| Some(strategy.next_delay(*d)))
            .take(n)
            .collect()
    }

    #[test]
    fn restart_pauses_grow_up_to_the_longest() {
        let fixed = RestartStrategy::default();
        assert_eq!(series(&fixed, 3), vec![Duration::from_millis(100); 3]);
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let exponential = RestartStrategy::exponential_delay();
        assert_eq!(
            series(&exponential, 4),
            ms(&[1000, 1500, 2250, 3375]),
            "Flink's defaults"
        );
        assert_eq!(series(&exponential, 20)[19], Duration::from_secs(60));
        // A fixed delay longer than the default longest pause stays as it is.
        let long = RestartStrategy::fixed_delay(3, Duration::from_secs(120));
        assert_eq!(series(&long, 3), vec![Duration::from_secs(120); 3]);
        // No overflow and no panic at the extremes.
        let extreme = RestartStrategy {
            backoff_multiplier: f64::MAX,
            max_delay: Duration::MAX,
            ..RestartStrategy::exponential_delay()
        };
        assert_eq!(series(&extreme, 3)[2], Duration::MAX);
    }
}
