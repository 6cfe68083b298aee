//! Running a job: the driver (restarts), one run's tasks, and the checkpoint coordinator.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_core::{CancelToken, FileArea, SavepointFormat, SnapshotTarget, SnapshotType};
use cairn_format::{Manifest, OperatorManifest};
use cairn_storage::{
    assemble_manifest, create_savepoint, CheckpointStorage, CheckpointWriter, DirectoryLock,
    SavepointWriter,
};
use crossbeam_channel::{Receiver, Sender};
use serde::Serialize;

use crate::chain::{Barrier, BarrierKind, Notification, TaskEvent, TaskShared};
use crate::config::{
    CheckpointRetention, CheckpointingMode, JobConfig, RestoreFrom, RestoreMode, StateBackendConfig,
};
use crate::coordinator::{
    spawn_async_workers, AsyncJob, CoordMsg, SavepointRequest, TaskId, WrittenPart,
};
use crate::error::{Result, RuntimeError};
use crate::function::SubtaskInfo;
use crate::graph::{
    BuildCtx, Dataflow, EdgeKind, JobGraph, LaneFactory, Restore, SideEdge, StageOutput,
};
use crate::metrics::{MetricRegistry, Metrics, SAMPLE_INTERVAL};
use crate::stats::{CheckpointStats, SnapshotKind, StatsTracker};
use crate::task::{AlignConfig, JobCounters, SourceLimits, TaskLink};

/// What a finished job reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JobResult {
    /// Records read by the sources, over every run (replays after a restore count again).
    pub records: u64,
    /// Checkpoints completed.
    pub checkpoints_completed: u64,
    /// Checkpoints that failed (declined, timed out, failed to write).
    pub checkpoints_failed: u64,
    /// Checkpoints given up while in flight because a newer checkpoint completed first, or
    /// because every task had finished and the final checkpoint covers them (neither
    /// completed nor failed).
    pub checkpoints_subsumed: u64,
    /// Restarts after failures.
    pub restarts: u32,
    /// The savepoint written by stop-with-savepoint, if any.
    pub savepoint: Option<String>,
    /// The checkpoint storage.
    pub checkpoint_dir: String,
    /// The snapshot the first run restored from, if any.
    pub restored_from: Option<String>,
    /// The snapshot each restart after a failure restored from, one entry per restart in
    /// order, described as [`JobResult::restored_from`] is (`"checkpoint 7 in <dir>"`,
    /// `"savepoint <path>"`): the job's latest completed checkpoint, or, before its first
    /// one, the snapshot the job started from. `None`: there was none, and that run
    /// started over from the beginning of the input. (Flink logs the same at each restart:
    /// "Restoring job … from Checkpoint N".)
    pub restarts_restored_from: Vec<Option<String>>,
    /// Whether the job was cancelled.
    pub cancelled: bool,
    /// Wall-clock time of the whole job, seconds.
    pub wall_s: f64,
    /// Duration of each completed checkpoint (trigger to publish), milliseconds.
    pub checkpoint_durations_ms: Vec<f64>,
    /// Bytes each completed checkpoint added (files not in the previous one), in order.
    pub checkpoint_bytes: Vec<u64>,
    /// Why checkpoints failed (the first 20 reasons).
    pub checkpoint_failure_reasons: Vec<String>,
    /// In-flight records stored by unaligned checkpoints, summed over the completed ones.
    pub inflight_records: u64,
    /// The longest synchronous phase of any task, milliseconds: the capture of its
    /// operators' state (keyed and operator state) when the barrier is processed.
    pub sync_phase_ms_max: f64,
    /// The longest time any task took to forward a barrier downstream after its
    /// synchronous phase (flushing output batches and sending the barrier; long when the
    /// channels are full), milliseconds.
    pub barrier_forward_ms_max: f64,
    /// Time from the start of the job until every task of the first run was built, its
    /// state restored, and ready to process its first record, milliseconds.
    pub startup_ms: f64,
    /// Time from the moment the sources of the last run had all read their last record
    /// to the end of the job, milliseconds: the draining of the tasks and the final
    /// checkpoint (with checkpointing). Zero for a job that did not end by its input ending.
    pub input_end_ms: f64,
    /// Every metric as the job ended (the operators' of its last run); see
    /// [`crate::metrics`]. Not in the JSON summary.
    #[serde(skip)]
    pub metrics: Metrics,
    /// The checkpoint statistics as the job ended; see [`crate::stats`]. Not in the JSON
    /// summary.
    #[serde(skip)]
    pub checkpoint_stats: CheckpointStats,
}

/// A dataflow with its configuration.
#[derive(Debug)]
pub struct Job {
    graph: JobGraph,
    config: JobConfig,
    on_signals: Option<SignalStop>,
}

/// What SIGINT and SIGTERM do to a job that asked to handle them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SignalStop {
    /// [`JobHandle::stop_with_savepoint`].
    Savepoint,
    /// [`JobHandle::stop_with_savepoint_and_drain`].
    SavepointAndDrain,
}

/// A running job.
#[derive(Debug)]
pub struct JobHandle {
    coord: Sender<CoordMsg>,
    counters: Arc<JobCounters>,
    metrics: Arc<MetricRegistry>,
    stats: Arc<std::sync::Mutex<StatsTracker>>,
    driver: JoinHandle<Result<JobResult>>,
    /// The format of savepoints asked for without one.
    savepoint_format: SavepointFormat,
}

impl Job {
    /// A job running `graph` with `config`.
    pub fn new(graph: JobGraph, config: JobConfig) -> Self {
        Self {
            graph,
            config,
            on_signals: None,
        }
    }

    /// On SIGINT or SIGTERM, stop with a savepoint into the configured savepoint directory
    /// (or `./savepoints`); a second signal exits the process at once. A stop whose savepoint
    /// fails (it cannot be written, say) is reported on standard error and the job runs on;
    /// a new signal then tries again. Once the savepoint is written, a failure while the job
    /// ends fails the job ([`RuntimeError::StopFailed`], see
    /// [`JobHandle::stop_with_savepoint`]).
    pub fn stop_with_savepoint_on_signals(mut self) -> Self {
        self.on_signals = Some(SignalStop::Savepoint);
        self
    }

    /// [`Job::stop_with_savepoint_on_signals`], draining the job first (Flink's `flink stop
    /// --drain`; see [`JobHandle::stop_with_savepoint_and_drain`]). A drained savepoint
    /// that fails fails the job over; the stop is reported on standard error and the job
    /// reads on from its latest checkpoint, as after any stop that failed.
    pub fn stop_with_savepoint_and_drain_on_signals(mut self) -> Self {
        self.on_signals = Some(SignalStop::SavepointAndDrain);
        self
    }

    /// Starts the job on its own threads.
    pub fn start(self) -> Result<JobHandle> {
        let savepoint_format = self.config.savepoint_format;
        let driver = Driver::new(self.graph, self.config, self.on_signals)?;
        let coord = driver.coord_tx.clone();
        let counters = driver.counters.clone();
        let metrics = driver.metrics.clone();
        let stats = driver.stats.clone();
        let handle = std::thread::Builder::new()
            .name("cairn-driver".into())
            .spawn(move || driver.run())
            .map_err(|e| RuntimeError::io("cannot spawn the driver thread", "-", e))?;
        Ok(JobHandle {
            coord,
            counters,
            metrics,
            stats,
            driver: handle,
            savepoint_format,
        })
    }

    /// Runs the job to its end.
    pub fn run(self) -> Result<JobResult> {
        self.start()?.wait()
    }
}

impl JobHandle {
    fn savepoint(
        &self,
        dir: Option<&str>,
        format: Option<SavepointFormat>,
        stop: bool,
        drain: bool,
    ) -> Result<String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.coord
            .send(CoordMsg::Savepoint(SavepointRequest {
                dir: dir.map(str::to_string),
                format: format.unwrap_or(self.savepoint_format),
                stop: stop || drain,
                drain,
                reply: tx,
            }))
            .map_err(|_| refused("the job is not running"))?;
        match rx.recv() {
            Ok(answer) => answer,
            Err(_) => Err(refused("the job ended before the savepoint completed")),
        }
    }

    /// Takes a savepoint of the running job (in the configured format,
    /// [`JobConfig::savepoint_format`], canonical by default; never unaligned: its barriers
    /// are aligned in exactly-once mode and, as every barrier, not in at-least-once mode,
    /// as in Flink) into `dir` (or the configured savepoint directory) and returns its
    /// path. A savepoint that fails
    /// deletes what it wrote, its directory included when nothing else is in it.
    pub fn trigger_savepoint(&self, dir: Option<&str>) -> Result<String> {
        self.savepoint(dir, None, false, false)
    }

    /// [`JobHandle::trigger_savepoint`] in `format` (Flink's `flink savepoint --type`).
    pub fn trigger_savepoint_as(
        &self,
        dir: Option<&str>,
        format: SavepointFormat,
    ) -> Result<String> {
        self.savepoint(dir, Some(format), false, false)
    }

    /// Takes a savepoint, commits what it covers, and ends the job; returns the savepoint's
    /// path once the job's tasks have ended. A savepoint that is not taken is
    /// [`RuntimeError::Savepoint`], and the job runs on. If the job fails after the savepoint
    /// was written (a sink's commit, say), the answer is [`RuntimeError::StopFailed`], naming
    /// the savepoint, and the job ends with the same error instead of restarting. A task that
    /// does not end (a commit that hangs) keeps the answer waiting; [`JobHandle::cancel`]
    /// from another thread ends the job, and the answer is then an error naming the
    /// savepoint.
    pub fn stop_with_savepoint(&self, dir: Option<&str>) -> Result<String> {
        self.savepoint(dir, None, true, false)
    }

    /// Stop-with-savepoint `--drain` (Flink's `flink stop --drain`), for a job that is to
    /// end for good: the sources stop reading and end their input, so the final watermark
    /// fires every event-time timer and window and every operator's `finish` runs, as at
    /// the end of a bounded input; then, once every task has finished, the savepoint is
    /// taken, and its completion commits what the two-phase-commit sinks hold, `finish`
    /// output included. The answer comes as [`JobHandle::stop_with_savepoint`]'s.
    ///
    /// The savepoint's operators are not marked finished (as in Flink): a job restored
    /// from it reads on from the sources' positions with the state, and runs `finish` again
    /// at its own end. Windows the drain fired early then fire again with what comes after
    /// (as in Flink: drain a job that is to end). Refused while another savepoint is under
    /// way. A savepoint that fails after the input was ended cannot resume the reading:
    /// the answer is the error, and the job fails over (restarts from its latest
    /// checkpoint, as its restart strategy allows).
    pub fn stop_with_savepoint_and_drain(&self, dir: Option<&str>) -> Result<String> {
        self.savepoint(dir, None, true, true)
    }

    /// [`JobHandle::stop_with_savepoint`] in `format` (Flink's `flink stop --type`).
    pub fn stop_with_savepoint_as(
        &self,
        dir: Option<&str>,
        format: SavepointFormat,
    ) -> Result<String> {
        self.savepoint(dir, Some(format), true, false)
    }

    /// Records the sources have read so far (replays after a restore count again).
    pub fn records_read(&self) -> u64 {
        self.counters.source_records.load(Ordering::Relaxed)
    }

    /// Checkpoints the job has completed so far, over every attempt (savepoints not
    /// counted); [`JobResult::checkpoints_completed`] once the job has ended.
    pub fn checkpoints_completed(&self) -> u64 {
        self.counters.checkpoints_completed.load(Ordering::Relaxed)
    }

    /// Every metric of the job now ([`crate::metrics`]): the job's, and those of the
    /// operators of its current run.
    pub fn metrics(&self) -> Metrics {
        self.metrics.job(|j| {
            j.records_read = self.counters.source_records.load(Ordering::Relaxed);
        });
        self.metrics.snapshot()
    }

    /// The job's checkpoint statistics now ([`crate::stats`]): counts, the latest
    /// completed, failed and restored snapshots, and the recent history with each task's
    /// part.
    pub fn checkpoint_stats(&self) -> CheckpointStats {
        lock_stats(&self.stats).snapshot()
    }

    /// Cancels the job.
    pub fn cancel(&self) {
        let _ = self.coord.send(CoordMsg::Cancel);
    }

    /// Waits for the job to end.
    pub fn wait(self) -> Result<JobResult> {
        match self.driver.join() {
            Ok(r) => r,
            Err(p) => Err(RuntimeError::Panic {
                task: "driver".into(),
                message: panic_message(p.as_ref()),
            }),
        }
    }
}

/// A drained job's savepoint failed: its sources ended their input, so the job cannot read
/// on, and a final checkpoint would mark them finished for good. It fails over instead
/// (as Flink fails a task whose stop-with-savepoint was aborted): restarted from the
/// latest checkpoint, it reads on from there.
fn drained_savepoint_failed(reason: String) -> Outcome {
    Outcome::Failed {
        error: RuntimeError::Savepoint {
            reason: format!("the savepoint of the drained job failed: {reason}"),
        },
        fatal: false,
    }
}

/// Why the checkpoints still in flight when a run ends failed (the statistics' reason).
fn run_ended_reason(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failed { error, .. } => format!("the job failed over: {error}"),
        Outcome::Cancelled => "the job was cancelled".to_string(),
        Outcome::Finished | Outcome::Stopped(_) => "the job ended".to_string(),
    }
}

/// A savepoint that was not taken ([`RuntimeError::Savepoint`]).
fn refused(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Savepoint {
        reason: reason.into(),
    }
}

/// A panic's message, when its payload is a string.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}

/// How one run ended.
enum Outcome {
    Finished,
    Stopped(String),
    Cancelled,
    Failed { error: RuntimeError, fatal: bool },
}

struct Driver {
    graph: Dataflow,
    config: JobConfig,
    storage: Option<CheckpointStorage>,
    /// The checkpoint directory's lock, held while the job runs (when it checkpoints).
    _dir_lock: Option<DirectoryLock>,
    coord_tx: Sender<CoordMsg>,
    coord_rx: Receiver<CoordMsg>,
    async_tx: Sender<AsyncJob>,
    async_workers: Vec<JoinHandle<()>>,
    counters: Arc<JobCounters>,
    metrics: Arc<MetricRegistry>,
    /// The checkpoint statistics.
    stats: Arc<std::sync::Mutex<StatsTracker>>,
    /// When the rates were last sampled and the reporters last reported.
    metrics_sampled: Instant,
    metrics_reported: Instant,
    /// The reporters that failed (each is told of once).
    reporters_failed: Vec<bool>,
    /// Set by SIGINT or SIGTERM, when the job handles them, and how it stops then.
    signal: Option<(Arc<AtomicBool>, SignalStop)>,
    /// The answer to the stop-with-savepoint a signal asked for, while it is under way
    /// (across runs: a stop that a failover ended is answered, and reported).
    signal_stop: Option<Receiver<Result<String>>>,
    /// uid → parallelism of its stage.
    parallelism: Vec<u32>,
    next_id: u64,
    /// The job's first own checkpoint id: smaller ids are checkpoints another run left in
    /// the directory, which this job restores from but never deletes (Flink's default
    /// restore mode, no claim).
    first_own_id: u64,
    /// The savepoint a job in claim mode was restored from, until it is deleted: when the
    /// job has as many completed checkpoints of its own as it retains, or at a cancellation
    /// that deletes the checkpoints.
    claimed_savepoint: Option<String>,
    nonce: String,
    /// Ends the names of this job's savepoints (`sp-<id>-<tag>`): random, so that jobs
    /// sharing a savepoint directory never write into one savepoint at the same time.
    savepoint_tag: String,
    result: JobResult,
    prev_files: HashSet<String>,
    /// When the sources of the current run had all read their last record.
    input_ended: Option<Instant>,
    /// Checkpoints that failed in a row since the last completed one. As in Flink, the
    /// count goes on across a restart caused by a failed task, and starts again when it
    /// fails the job itself (or a checkpoint completes).
    consecutive_failures: u32,
}

enum Target {
    Checkpoint(CheckpointWriter),
    Savepoint(Arc<SavepointWriter>, String),
}

struct Pending {
    barrier: Barrier,
    target: Target,
    cancel: CancelToken,
    written: Vec<WrittenPart>,
    written_tasks: usize,
    /// Every source had ended when it was triggered: its completion ends the job.
    is_final: bool,
    reply: Option<Sender<Result<String>>>,
    /// Tasks that went unaligned and will send their in-flight records.
    inflight_expected: usize,
    inflight_received: usize,
    inflight: Vec<(String, u32, cairn_core::OperatorStateSnapshot)>,
}

impl Pending {
    /// Every task's part is written and every in-flight record set is in. (A task's
    /// `Synced` precedes its `Written` and `Inflight`, so once every task has written,
    /// `inflight_expected` is final.)
    fn is_done(&self, tasks: usize) -> bool {
        self.written_tasks == tasks && self.inflight_received == self.inflight_expected
    }
}

impl Drop for Driver {
    /// Also on an early return or a panic: the checkpoint directory's lock (a field,
    /// dropped after this) is let go only once no snapshot thread writes there any more.
    fn drop(&mut self) {
        self.stop_async_workers();
    }
}

impl Driver {
    /// Stops the asynchronous snapshot workers: they finish what they hold, then end.
    fn stop_async_workers(&mut self) {
        let (dead_tx, _) = crossbeam_channel::unbounded();
        self.async_tx = dead_tx;
        for w in std::mem::take(&mut self.async_workers) {
            let _ = w.join();
        }
    }

    fn new(graph: JobGraph, config: JobConfig, on_signals: Option<SignalStop>) -> Result<Self> {
        let graph = graph.resolve()?;
        validate(&graph, &config)?;
        let parallelism = graph
            .stages
            .iter()
            .map(|s| s.parallelism.unwrap_or(config.parallelism))
            .collect();
        let needs_storage =
            config.checkpoint.interval.is_some() || config.restore == Some(RestoreFrom::Latest);
        let storage = match (&config.checkpoint_storage, needs_storage) {
            (Some(s), _) => Some(s.clone()),
            (None, true) => Some(CheckpointStorage::open(&config.checkpoint_dir)?),
            (None, false) => None,
        };
        // A job that writes checkpoints (or deletes claimed ones) takes the directory first:
        // ids are counted from what is in it, so a second job writing there would clash
        // with this one.
        let writes =
            config.checkpoint.interval.is_some() || config.restore_mode == RestoreMode::Claim;
        let dir_lock = match &storage {
            Some(s) if writes => Some(s.lock_for_job_reporting(&lock_holder(), &mut |holder| {
                eprintln!(
                    "waiting for {holder} to release the checkpoint directory {} (up to two minutes)",
                    config.checkpoint_dir
                );
            })?),
            _ => None,
        };
        let next_id = match &storage {
            Some(s) => s.next_checkpoint_id()?,
            None => 1,
        };
        let (coord_tx, coord_rx) = crossbeam_channel::unbounded();
        let (async_tx, async_rx) = crossbeam_channel::unbounded();
        let async_workers = spawn_async_workers(config.async_threads, async_rx, coord_tx.clone());
        let signal = if let Some(stop) = on_signals {
            let flag = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                // A second signal while the first is handled exits at once.
                signal_hook::flag::register_conditional_shutdown(sig, 130, flag.clone())
                    .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
                    .map_err(|e| RuntimeError::io("cannot install a signal handler", "-", e))?;
            }
            Some((flag, stop))
        } else {
            None
        };
        // Unique per job run, also between jobs of one process started in one millisecond
        // (file sinks name their files after it).
        let nonce = {
            use std::hash::BuildHasher;
            let millis = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let random = std::collections::hash_map::RandomState::new()
                .hash_one((millis, std::process::id()));
            format!("{millis:x}{:06x}", random & 0xff_ffff)
        };
        let reporters_failed = vec![false; config.metrics.reporters.len()];
        let result = JobResult {
            checkpoint_dir: config.checkpoint_dir.clone(),
            ..JobResult::default()
        };
        Ok(Self {
            graph,
            config,
            storage,
            _dir_lock: dir_lock,
            coord_tx,
            coord_rx,
            async_tx,
            async_workers,
            counters: Arc::new(JobCounters::default()),
            metrics: Arc::new(MetricRegistry::default()),
            stats: Arc::default(),
            metrics_sampled: Instant::now(),
            metrics_reported: Instant::now(),
            reporters_failed,
            signal,
            signal_stop: None,
            parallelism,
            next_id,
            first_own_id: next_id,
            claimed_savepoint: None,
            savepoint_tag: savepoint_tag(&nonce),
            nonce,
            result,
            prev_files: HashSet::new(),
            input_ended: None,
            consecutive_failures: 0,
        })
    }

    fn run(mut self) -> Result<JobResult> {
        let started = Instant::now();
        let initial = self.load_restore(self.config.restore.clone().as_ref())?;
        self.result.restored_from = initial.as_ref().map(|r| r.description.clone());
        // Checkpoints with a smaller id are not this job's (another run left them in the
        // checkpoint directory), except the one it claims.
        self.first_own_id = self.next_id;
        let mut claimed = false;
        if let (RestoreMode::Claim, Some(r)) = (self.config.restore_mode, &initial) {
            match (r.claimable, &self.config.restore) {
                (Some(id), _) => {
                    self.first_own_id = id;
                    claimed = true;
                }
                (None, Some(RestoreFrom::Path(path)))
                    if r.manifest.snapshot_type == SnapshotType::Savepoint =>
                {
                    self.claimed_savepoint = Some(path.clone());
                }
                _ => {
                    return Err(RuntimeError::Restore {
                        reason: format!(
                            "claim mode takes over a savepoint or the newest completed checkpoint of the job's checkpoint directory {}; {} is neither",
                            self.config.checkpoint_dir, r.description
                        ),
                    })
                }
            }
        }
        let first_own_id = self.first_own_id;
        let mut restore = initial.clone();
        // A claimed checkpoint is the job's own: restarts restore the latest own one, so
        // the job need not hold on to it (and retention may subsume it once the first
        // attempt is done reading it). A claimed savepoint is kept until the job has
        // checkpoints of its own to restart from.
        let initial = if claimed {
            // Dropped now (not when `run` returns): it holds the checkpoint's restore lease.
            drop(initial);
            None
        } else {
            initial
        };
        let mut attempt = 0u32;
        let strategy = self.config.restart;
        // Restarts since the last reset, and the pause before the next one.
        let (mut counted, mut delay) = (0u32, strategy.delay);
        // With a failure rate: the failures within its interval.
        let mut recent: VecDeque<Instant> = VecDeque::new();
        let outcome = loop {
            let attempt_started = Instant::now();
            let outcome = self.run_once(attempt, restore.take(), started);
            self.stats().run_ended(&run_ended_reason(&outcome));
            // No checkpoint of the ended run is in flight any more (the metric would say
            // otherwise until the next run's first tick, through the restart's pause).
            self.metrics.job(|j| j.in_progress = 0);
            match outcome {
                Outcome::Failed { error, fatal } => {
                    if fatal || strategy.max_restarts == 0 {
                        break Err(error);
                    }
                    let exhausted = match strategy.failure_rate_interval {
                        Some(window) => {
                            let now = Instant::now();
                            recent.push_back(now);
                            while recent
                                .front()
                                .is_some_and(|t| now.duration_since(*t) > window)
                            {
                                recent.pop_front();
                            }
                            recent.len() > strategy.max_restarts as usize
                        }
                        None => {
                            if strategy
                                .reset_after
                                .is_some_and(|after| attempt_started.elapsed() >= after)
                            {
                                (counted, delay) = (0, strategy.delay);
                            }
                            counted >= strategy.max_restarts
                        }
                    };
                    if exhausted {
                        break Err(RuntimeError::RestartsExhausted {
                            restarts: self.result.restarts,
                            last: Box::new(error),
                        });
                    }
                    // A cancellation during the pause ends the job now, as Flink cancels a
                    // restarting job (not after the pause and the next run's start).
                    if self.pause_before_restart(delay) {
                        break Ok(Outcome::Cancelled);
                    }
                    self.result.restarts += 1;
                    let restarts = self.result.restarts;
                    self.metrics.job(|j| j.restarts = restarts);
                    counted += 1;
                    attempt += 1;
                    delay = strategy.next_delay(delay);
                    // This job's latest completed checkpoint; before its first one, the
                    // snapshot the job started from (as Flink does): never a checkpoint of
                    // an earlier run in the same directory, which may be older than the
                    // savepoint this job started from, or another job's.
                    let own = match &self.storage {
                        Some(s) => s.completed_checkpoints()?.into_iter().max(),
                        None => None,
                    };
                    restore = match own {
                        Some(id) if id >= first_own_id => {
                            self.load_restore(Some(&RestoreFrom::Latest))?
                        }
                        _ if claimed => {
                            break Err(RuntimeError::Restore {
                                reason: format!(
                                    "the claimed checkpoint {first_own_id} is gone from {}",
                                    self.config.checkpoint_dir
                                ),
                            })
                        }
                        _ => initial.clone(),
                    };
                    self.result
                        .restarts_restored_from
                        .push(restore.as_ref().map(|r| r.description.clone()));
                }
                other => break Ok(other),
            }
        };
        self.stop_async_workers();
        // What is still queued to the coordinator is of runs that have ended. A task that
        // finished a synchronous phase after its run's coordinator stopped reading (the job
        // was cancelled meanwhile) left its keyed snapshot there, and a changelog snapshot
        // holds pins on the log segments it uploaded. Dropped only with the driver, after
        // the retention below (which keeps pinned files as in flight), those segments
        // stayed behind, referenced by nothing.
        while self.coord_rx.try_recv().is_ok() {}
        let outcome = outcome?;
        let delete = matches!(outcome, Outcome::Cancelled)
            && self.config.checkpoint.retention == CheckpointRetention::DeleteOnCancellation;
        match outcome {
            Outcome::Stopped(path) => self.result.savepoint = Some(path),
            Outcome::Cancelled => self.result.cancelled = true,
            _ => {}
        }
        if let Some(s) = &self.storage {
            if delete {
                // Only this job's checkpoints: those of earlier runs in the directory (the
                // one it was restored from, say) are not its to delete.
                s.discard_from(first_own_id)?;
                if let Some(path) = self.claimed_savepoint.take() {
                    discard_claimed_savepoint(&path)?;
                }
            } else if self.config.checkpoint.interval.is_some() {
                // Every task and snapshot thread has ended: files written for checkpoints
                // that did not complete (log segments uploaded ahead, a materialization
                // no checkpoint used) are referenced by nothing now. A failure here does
                // not fail the job; the next run's retention or `state-dump gc` collects
                // them.
                let _ = s.retain_from(first_own_id, self.config.checkpoint.num_retained.max(1));
            }
        }
        self.result.records = self.counters.source_records.load(Ordering::Relaxed);
        self.result.wall_s = started.elapsed().as_secs_f64();
        if let Some(t) = self.input_ended {
            self.result.input_end_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
        // The sources may have read more after the last tick (a cancellation, say): the
        // final metrics count what the result does, with or without reporters.
        let read = self.result.records;
        self.metrics.job(|j| {
            j.in_progress = 0;
            j.records_read = read;
        });
        self.report_metrics(true);
        self.result.metrics = self.metrics.snapshot();
        let stats = self.stats().snapshot();
        self.result.checkpoint_stats = stats;
        Ok(std::mem::take(&mut self.result))
    }

    /// Waits `pause` before a restart; `true`: the job was cancelled meanwhile. Savepoint
    /// requests wait for the next run (they are queued again); what the failed run's tasks
    /// still send is of no use any more.
    fn pause_before_restart(&mut self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        let mut deferred = Vec::new();
        let cancelled = loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            match self.coord_rx.recv_timeout(left) {
                Ok(CoordMsg::Cancel) => break true,
                Ok(msg @ CoordMsg::Savepoint { .. }) => deferred.push(msg),
                Ok(_) => {}
                Err(_) => break false,
            }
        };
        if !cancelled {
            for msg in deferred {
                let _ = self.coord_tx.send(msg);
            }
        }
        cancelled
    }

    /// `manifest`'s checkpoint id, if it is the newest completed checkpoint of the job's
    /// checkpoint directory (the same manifest is there under that id).
    fn is_newest_own_checkpoint(&self, manifest: &Manifest) -> Result<Option<u64>> {
        let Some(storage) = &self.storage else {
            return Ok(None);
        };
        if manifest.snapshot_type != SnapshotType::Checkpoint {
            return Ok(None);
        }
        let newest = storage.latest_completed()?;
        Ok((newest.as_ref() == Some(manifest)).then_some(manifest.checkpoint_id))
    }

    /// Opens the snapshot to restore from and checks it against the job.
    fn load_restore(&mut self, from: Option<&RestoreFrom>) -> Result<Option<Arc<Restore>>> {
        let Some(from) = from else {
            return Ok(None);
        };
        let (mut manifest, source, description): (
            Manifest,
            Box<dyn cairn_core::SnapshotSource>,
            String,
        ) = match from {
            RestoreFrom::Latest => {
                let Some(storage) = &self.storage else {
                    return Ok(None);
                };
                let Some(m) = storage.latest_completed()? else {
                    return Ok(None);
                };
                let id = m.checkpoint_id;
                (
                    m,
                    Box::new(storage.source(id)),
                    format!("checkpoint {id} in {}", self.config.checkpoint_dir),
                )
            }
            RestoreFrom::Path(path) => open_snapshot(path)?,
        };
        // Only a job in claim mode needs to know (it costs a listing and a manifest read).
        let claimable = match self.config.restore_mode {
            RestoreMode::Claim => self.is_newest_own_checkpoint(&manifest)?,
            RestoreMode::NoClaim => None,
        };
        let uids: HashSet<String> = self.graph.uids().into_iter().collect();
        let unknown: Vec<String> = manifest
            .operators
            .iter()
            .map(|o| o.uid.clone())
            .filter(|u| !uids.contains(u))
            .collect();
        if !unknown.is_empty() {
            if !self.config.allow_non_restored_state {
                return Err(RuntimeError::Restore {
                    reason: format!(
                        "{description} holds state of operators this job does not have: {}; allow non-restored state to drop it",
                        unknown.join(", ")
                    ),
                });
            }
            manifest.operators.retain(|o| uids.contains(&o.uid));
        }
        self.next_id = self.next_id.max(manifest.checkpoint_id + 1);
        let mut restore = Restore::new(manifest, source, description);
        restore.claimable = claimable;
        restore.allow_non_restored = self.config.allow_non_restored_state;
        restore.check_finished_order(&self.graph)?;
        let heads: Vec<&str> = self
            .graph
            .stages
            .iter()
            .filter(|s| !s.is_source)
            .filter_map(|s| s.uids.first().map(String::as_str))
            .collect();
        restore.check_inflight_heads(&heads)?;
        Ok(Some(Arc::new(restore)))
    }

    fn run_once(
        &mut self,
        attempt: u32,
        restore: Option<Arc<Restore>>,
        job_start: Instant,
    ) -> Outcome {
        self.metrics.begin_run(attempt);
        if let Some(r) = &restore {
            self.stats().restored(&r.description);
            let now = epoch_ms();
            self.metrics
                .job(|j| j.last_restore_timestamp_ms = Some(now));
        }
        let cfg = &self.config;
        let checkpointing = cfg.checkpoint.interval.is_some();
        let shared = Arc::new(TaskShared {
            cancel: AtomicBool::new(false),
            snapshot_mode: cfg.checkpoint.snapshot_mode,
            checkpointing,
            run_id: format!("{}-{attempt}", self.nonce),
            clock: cfg.processing_clock.clone(),
            watermark_interval: cfg.auto_watermark_interval,
            metrics: self.metrics.clone(),
            attempt,
        });
        let stages = self.graph.stages.clone();
        let ps = self.parallelism.clone();
        // Event lanes of every task.
        let mut event_tx: Vec<Vec<Sender<TaskEvent>>> = Vec::new();
        let mut event_rx: Vec<Vec<Option<Receiver<TaskEvent>>>> = Vec::new();
        for &p in &ps {
            let (txs, rxs): (Vec<_>, Vec<_>) = (0..p)
                .map(|_| {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    (tx, Some(rx))
                })
                .unzip();
            event_tx.push(txs);
            event_rx.push(rxs);
        }
        // Channels of every exchange. A stage that reads several exchanges (a union)
        // numbers their channels one after the other, in the order of the edges.
        let mut inputs: Vec<Vec<Vec<crate::graph::Erased>>> = ps
            .iter()
            .map(|&p| (0..p).map(|_| Vec::new()).collect())
            .collect();
        let mut next_channel: Vec<usize> = vec![0; ps.len()];
        let mut outputs: Vec<Vec<Option<(StageOutput, LaneFactory)>>> =
            ps.iter().map(|&p| (0..p).map(|_| None).collect()).collect();
        // Per stage and subtask, the side outputs' exchanges.
        let mut sides: Vec<Vec<Vec<SideEdge>>> = ps
            .iter()
            .map(|&p| (0..p).map(|_| Vec::new()).collect())
            .collect();
        for e in &self.graph.edges {
            let (k, down) = (e.from, e.to);
            let (senders, receivers) =
                (e.channels)(ps[k] as usize, ps[down] as usize, cfg.channel_capacity);
            let first_channel = next_channel[down];
            next_channel[down] += ps[k] as usize;
            for (i, s) in senders.into_iter().enumerate() {
                let output = StageOutput {
                    senders: s,
                    events: event_tx[down].clone(),
                    channel: first_channel + i,
                };
                match &e.kind {
                    EdgeKind::Main => outputs[k][i] = Some((output, e.lane.clone())),
                    EdgeKind::Side { uid, tag } => sides[k][i].push(SideEdge {
                        uid: uid.clone(),
                        tag: tag.clone(),
                        output,
                        lane: e.lane.clone(),
                    }),
                }
            }
            for (i, r) in receivers.into_iter().enumerate() {
                inputs[down][i].push(r);
            }
        }
        let source_parallelism: u32 = stages
            .iter()
            .zip(&ps)
            .filter(|(s, _)| s.is_source)
            .map(|(_, p)| *p)
            .sum();
        let align = AlignConfig {
            mode: cfg.checkpoint.mode,
            unaligned: cfg.checkpoint.unaligned,
            aligned_timeout: cfg.checkpoint.aligned_timeout,
        };
        let mut threads = Vec::new();
        let mut all_tasks = Vec::new();
        let mut source_tasks = Vec::new();
        for (k, stage) in stages.iter().enumerate() {
            for i in 0..ps[k] {
                let id = TaskId { stage: k, index: i };
                all_tasks.push(id);
                if stage.is_source {
                    source_tasks.push(id);
                }
                let times = Arc::new(crate::metrics::TaskTimes::default());
                if let Some(head) = stage.uids.first() {
                    let group = self.metrics.operator(attempt, head, i, None);
                    MetricRegistry::task(&group, &times);
                }
                let link = TaskLink {
                    id,
                    attempt,
                    events: match event_rx[k][i as usize].take() {
                        Some(rx) => rx,
                        None => continue,
                    },
                    coord: self.coord_tx.clone(),
                    shared: shared.clone(),
                    times: times.clone(),
                };
                let (output, main_lane) = outputs[k][i as usize].take().unzip();
                let mut ctx = BuildCtx {
                    info: SubtaskInfo {
                        index: i,
                        parallelism: ps[k],
                        max_parallelism: cfg.max_parallelism,
                        attempt,
                    },
                    shared: shared.clone(),
                    restore: restore.clone(),
                    backend: cfg.backend.clone(),
                    storage: self.storage.clone(),
                    changelog: (cfg.checkpoint.snapshot_mode
                        == crate::config::SnapshotMode::Changelog)
                        .then_some(cfg.checkpoint.changelog),
                    input: std::mem::take(&mut inputs[k][i as usize]),
                    output,
                    main_lane,
                    link: Some(link),
                    align: align.clone(),
                    batch_size: cfg.batch_size.max(1),
                    limits: stage.is_source.then(|| SourceLimits {
                        records_per_second: cfg
                            .records_per_second
                            .map(|r| r as f64 / f64::from(source_parallelism.max(1))),
                        fail_at_record: cfg.fail_at_record,
                        counters: self.counters.clone(),
                        batch_size: cfg.batch_size.max(1),
                    }),
                    stage_uids: stage.uids.clone(),
                    sides: std::mem::take(&mut sides[k][i as usize]),
                    times,
                    waker: Some(crate::chain::Waker::new(event_tx[k][i as usize].clone())),
                };
                let build = stage.build.clone();
                // What a panic names: the chained operators, as Flink names a task.
                let task_name = format!("{} subtask {i}", stage.uids.join(" -> "));
                let coord = self.coord_tx.clone();
                let started_tx = self.coord_tx.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!(
                        "cairn-{}-{i}",
                        stage.uids.first().map(String::as_str).unwrap_or("task")
                    ))
                    .spawn(move || {
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            let task = build(&mut ctx)?;
                            // Every side output a stream reads is driven by its operator
                            // (else its stage would wait for barriers and the end forever).
                            if let Some(e) = ctx.sides.first() {
                                return Err(RuntimeError::Config(format!(
                                    "side output {} of operator {}: the operator is not in \
                                     this stage or emits no side outputs",
                                    e.tag, e.uid
                                )));
                            }
                            drop(ctx);
                            let _ = started_tx.send(CoordMsg::TaskStarted { attempt });
                            task.run()
                        }));
                        let msg = match r {
                            Ok(Ok(())) | Ok(Err(RuntimeError::Cancelled)) => {
                                CoordMsg::TaskFinished { attempt, task: id }
                            }
                            Ok(Err(error)) => CoordMsg::TaskFailed { attempt, error },
                            Err(p) => CoordMsg::TaskFailed {
                                attempt,
                                error: RuntimeError::Panic {
                                    task: task_name,
                                    message: panic_message(p.as_ref()),
                                },
                            },
                        };
                        let _ = coord.send(msg);
                    });
                match spawned {
                    Ok(h) => threads.push(h),
                    Err(e) => {
                        shared.cancel.store(true, Ordering::Relaxed);
                        for h in threads {
                            let _ = h.join();
                        }
                        return Outcome::Failed {
                            error: RuntimeError::io("cannot spawn a task thread", "-", e),
                            fatal: true,
                        };
                    }
                }
            }
        }
        let events: Vec<(TaskId, Sender<TaskEvent>)> = all_tasks
            .iter()
            .map(|t| (*t, event_tx[t.stage][t.index as usize].clone()))
            .collect();
        self.input_ended = None;
        let mut run = Run {
            attempt,
            events,
            source_tasks,
            pending: BTreeMap::new(),
            finished: HashSet::new(),
            sources_finished: HashSet::new(),
            data_finished: HashSet::new(),
            job_start,
            tasks_started: 0,
            all_started: None,
            last_trigger: None,
            last_complete: None,
            exit_sent: false,
            final_tried: false,
            stopping: false,
            draining: None,
            stopped_with: None,
            queued: VecDeque::new(),
        };
        let outcome = self.coordinate(&mut run);
        // Tear down.
        shared.cancel.store(true, Ordering::Relaxed);
        for (_, tx) in &run.events {
            let _ = tx.send(TaskEvent::Cancel);
        }
        for h in threads {
            let _ = h.join();
        }
        // The checkpoints in flight end with the run, for the reason it ended (in the
        // statistics; discarding them below leaves their entries as they are now).
        self.stats().run_ended(&run_ended_reason(&outcome));
        let ids: Vec<u64> = run.pending.keys().copied().collect();
        for id in ids {
            self.discard_pending(&mut run, id, "the job stopped".into(), false);
        }
        for SavepointRequest { reply, .. } in run.queued.drain(..).chain(run.draining.take()) {
            let _ = reply.send(Err(refused("the job stopped before the savepoint")));
        }
        match (run.stopped_with.take(), outcome) {
            (Some(stopped), Outcome::Failed { error, .. }) => {
                // The same failure for whoever asked for the stop and for the job's end.
                let source = Arc::new(error);
                stopped.answer(Err(RuntimeError::StopFailed {
                    savepoint: stopped.path.clone(),
                    source: source.clone(),
                }));
                let error = RuntimeError::StopFailed {
                    savepoint: stopped.path.clone(),
                    source,
                };
                Outcome::Failed { error, fatal: true }
            }
            (Some(stopped), outcome) => {
                stopped.answer(Err(refused(format!(
                    "the savepoint {} is complete, but the job was cancelled before it ended; restore from the savepoint to commit what it holds",
                    stopped.path
                ))));
                outcome
            }
            (None, outcome) => outcome,
        }
    }

    /// The coordinator loop of one run.
    fn coordinate(&mut self, run: &mut Run) -> Outcome {
        let total = run.events.len();
        loop {
            match self.coord_rx.recv_timeout(Duration::from_millis(5)) {
                Ok(msg) => {
                    if let Some(outcome) = self.handle(run, msg) {
                        return outcome;
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Outcome::Failed {
                        error: RuntimeError::Config("coordinator channel closed".into()),
                        fatal: true,
                    }
                }
            }
            if run.finished.len() == total {
                return match run.stopped_with.take() {
                    Some(stopped) => {
                        stopped.answer(Ok(stopped.path.clone()));
                        Outcome::Stopped(stopped.path)
                    }
                    None => Outcome::Finished,
                };
            }
            self.on_signal(run);
            self.metrics_tick(run);
            if let Some(o) = self.tick(run) {
                return o;
            }
        }
    }

    fn handle(&mut self, run: &mut Run, msg: CoordMsg) -> Option<Outcome> {
        match msg {
            CoordMsg::Synced {
                attempt,
                task,
                checkpoint_id,
                start_delay,
                alignment,
                sync,
                forward,
                parts,
                inflight_follows,
            } => {
                if attempt != run.attempt {
                    return None;
                }
                let synced = crate::stats::Synced {
                    task: self.task_name(task),
                    subtask: task.index,
                    start_delay,
                    alignment,
                    sync,
                    unaligned: inflight_follows,
                };
                self.stats().synced(checkpoint_id, synced);
                if inflight_follows {
                    if let Some(p) = run.pending.get_mut(&checkpoint_id) {
                        p.inflight_expected += 1;
                    }
                }
                let r = &mut self.result;
                r.sync_phase_ms_max = r.sync_phase_ms_max.max(sync.as_secs_f64() * 1000.0);
                r.barrier_forward_ms_max =
                    r.barrier_forward_ms_max.max(forward.as_secs_f64() * 1000.0);
                if let Some(p) = run.pending.get(&checkpoint_id) {
                    let target: Arc<dyn SnapshotTarget> = match &p.target {
                        Target::Checkpoint(w) => Arc::new(w.clone()),
                        Target::Savepoint(w, _) => w.clone(),
                    };
                    let _ = self.async_tx.send(AsyncJob {
                        attempt,
                        task,
                        checkpoint_id,
                        parts,
                        target,
                        cancel: p.cancel.clone(),
                    });
                }
            }
            CoordMsg::Written {
                attempt,
                task,
                checkpoint_id,
                result,
            } => {
                if attempt != run.attempt {
                    return None;
                }
                match result {
                    Ok(parts) => {
                        let name = self.task_name(task);
                        self.stats().written(checkpoint_id, &name, task.index);
                        let done = match run.pending.get_mut(&checkpoint_id) {
                            Some(p) => {
                                p.written.extend(parts);
                                p.written_tasks += 1;
                                p.is_done(run.events.len())
                            }
                            None => false,
                        };
                        if done {
                            return self.complete(run, checkpoint_id);
                        }
                    }
                    Err(reason) => {
                        return self.fail_checkpoint(
                            run,
                            checkpoint_id,
                            format!("task {task}: {reason}"),
                        )
                    }
                }
            }
            CoordMsg::Inflight {
                attempt,
                checkpoint_id,
                uid,
                index,
                state,
            } => {
                if attempt != run.attempt {
                    return None;
                }
                let done = match run.pending.get_mut(&checkpoint_id) {
                    Some(p) => {
                        p.inflight_received += 1;
                        if let Some(s) = state {
                            p.inflight.push((uid, index, s));
                        }
                        p.is_done(run.events.len())
                    }
                    None => false,
                };
                if done {
                    return self.complete(run, checkpoint_id);
                }
            }
            CoordMsg::Declined {
                attempt,
                checkpoint_id,
                reason,
            } => {
                if attempt == run.attempt {
                    return self.fail_checkpoint(run, checkpoint_id, reason);
                }
            }
            CoordMsg::TaskStarted { attempt } => {
                if attempt == run.attempt {
                    run.tasks_started += 1;
                    if run.tasks_started == run.events.len() {
                        run.all_started = Some(Instant::now());
                        if attempt == 0 {
                            self.result.startup_ms = run.job_start.elapsed().as_secs_f64() * 1000.0;
                        }
                    }
                }
            }
            CoordMsg::SourceFinished { attempt, task } => {
                if attempt == run.attempt {
                    run.sources_finished.insert(task);
                    if run.input_ended() {
                        self.input_ended = Some(Instant::now());
                    }
                }
            }
            CoordMsg::EndOfData { attempt, task } => {
                if attempt == run.attempt {
                    run.data_finished.insert(task);
                }
            }
            CoordMsg::TaskFinished { attempt, task } => {
                if attempt == run.attempt {
                    run.finished.insert(task);
                }
            }
            CoordMsg::TaskFailed { attempt, error } => {
                if attempt == run.attempt {
                    let fatal = error.is_fatal();
                    // A state found unreadable after the operator opened (a lazy
                    // registration) reads as the restore error it is.
                    let error = if fatal { error.registration() } else { error };
                    return Some(Outcome::Failed { error, fatal });
                }
            }
            CoordMsg::Savepoint(request) => {
                if run.exit_sent || run.stopping {
                    let _ = request.reply.send(Err(refused("the job is finishing")));
                } else if run.input_ended() {
                    let _ = request.reply.send(Err(refused(
                        "the job's input has ended; it is finishing with its final checkpoint",
                    )));
                } else if request.drain {
                    Self::drain(run, request);
                } else {
                    run.stopping |= request.stop;
                    run.queued.push_back(request);
                }
            }
            CoordMsg::Cancel => return Some(Outcome::Cancelled),
        }
        None
    }

    /// Starts a stop-with-savepoint `--drain`: the sources end their input, and the
    /// savepoint follows once every task has finished (`tick`). Refused while another
    /// savepoint is under way.
    fn drain(run: &mut Run, request: SavepointRequest) {
        if !run.queued.is_empty() || run.pending.values().any(|p| p.barrier.is_savepoint()) {
            let _ = request.reply.send(Err(refused(
                "a savepoint is under way; drain when it has completed",
            )));
            return;
        }
        run.stopping = true;
        for (task, tx) in &run.events {
            if run.source_tasks.contains(task) {
                let _ = tx.send(TaskEvent::Drain);
            }
        }
        run.draining = Some(request);
    }

    /// SIGINT or SIGTERM, when the job handles them: asks for the stop (a savepoint, drained
    /// or not) unless one is under way or the job is finishing anyway. A stop that failed
    /// is reported and the job runs on, as a failed stop-with-savepoint leaves a Flink job
    /// running; the next signal tries again (without the reset it would exit the process
    /// at once). A stop that a failover ended (a task failed while the job drained, or the
    /// drained savepoint failed) failed too: the restarted job runs on.
    fn on_signal(&mut self, run: &mut Run) {
        let Some((flag, stop)) = self.signal.clone() else {
            return;
        };
        match self.signal_stop.as_ref().map(Receiver::try_recv) {
            Some(Ok(Err(error))) => {
                eprintln!(
                    "stop-with-savepoint failed: {error}; the job runs on (send SIGINT or SIGTERM again to retry)"
                );
                flag.store(false, Ordering::Relaxed);
                self.signal_stop = None;
            }
            // Dropped unanswered: asked again below.
            Some(Err(crossbeam_channel::TryRecvError::Disconnected)) => self.signal_stop = None,
            _ => {}
        }
        // Once the input has ended, the job is finishing anyway (and savepoints are
        // refused): the signal is ignored.
        if flag.load(Ordering::Relaxed)
            && self.signal_stop.is_none()
            && !run.stopping
            && !run.input_ended()
            && !run.all_finished()
        {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let request = SavepointRequest {
                dir: None,
                format: self.config.savepoint_format,
                stop: true,
                drain: stop == SignalStop::SavepointAndDrain,
                reply: tx,
            };
            if request.drain {
                Self::drain(run, request);
            } else {
                run.queued.push_back(request);
                run.stopping = true;
            }
            self.signal_stop = Some(rx);
        }
    }

    /// Timeouts, savepoint requests, periodic and final checkpoints.
    fn tick(&mut self, run: &mut Run) -> Option<Outcome> {
        let cp = self.config.checkpoint.clone();
        let timed_out: Vec<u64> = run
            .pending
            .iter()
            .filter(|(_, p)| p.barrier.started.elapsed() > cp.timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in timed_out {
            let reason = format!("timed out after {:?}", cp.timeout);
            if let Some(o) = self.fail_checkpoint(run, id, reason) {
                return Some(o);
            }
        }
        while let Some(SavepointRequest {
            dir,
            format,
            stop,
            reply,
            ..
        }) = run.queued.pop_front()
        {
            if run.all_finished() {
                // The input ended after the request came: nothing is left to stop.
                let _ = reply.send(Err(refused("the job's input has ended; it is finishing")));
                if stop && run.draining.is_none() {
                    run.stopping = false;
                }
                continue;
            }
            let dir = self.savepoint_dir(dir);
            let kind = BarrierKind::Savepoint { stop, format };
            if let Some(o) = self.trigger(run, kind, Some((dir, reply))) {
                return Some(o);
            }
        }
        // A drained job: its savepoint, at every task, once all have finished.
        if run.all_finished() {
            if let Some(SavepointRequest {
                dir, format, reply, ..
            }) = run.draining.take()
            {
                let kind = BarrierKind::Savepoint { stop: true, format };
                let dir = self.savepoint_dir(dir);
                // As before the final checkpoint: checkpoints in flight are given up, so
                // that none can fail the job now.
                self.subsume(run, u64::MAX, "the drained job's savepoint");
                return self.trigger(run, kind, Some((dir, reply)));
            }
        }
        if run.exit_sent || run.stopping {
            return None;
        }
        if run.all_finished() {
            match cp.interval {
                None => {
                    if !run.pending.values().any(|p| p.barrier.is_savepoint()) {
                        self.exit(run);
                    }
                }
                Some(interval) => return self.final_checkpoint(run, interval),
            }
            return None;
        }
        // Periodic checkpoints go on while the tasks drain after the input ended (finished
        // tasks take part); the final checkpoint gives up any still in flight.
        let interval = cp.interval?;
        // Not before every task runs: a task still restoring its state would hold the
        // checkpoint up until it timed out, and count as a failed checkpoint.
        let all_started = run.all_started?;
        let checkpoints_pending = run
            .pending
            .values()
            .filter(|p| p.barrier.kind == BarrierKind::Checkpoint)
            .count();
        // A minimum pause runs from the end of the last checkpoint, so it allows one
        // checkpoint at a time whatever `max_concurrent` says (as in Flink).
        let max_concurrent = if cp.min_pause.is_zero() {
            cp.max_concurrent.max(1)
        } else {
            1
        };
        if checkpoints_pending >= max_concurrent {
            return None;
        }
        let since_trigger = run.last_trigger.unwrap_or(all_started).elapsed();
        let paused = run
            .last_complete
            .is_none_or(|t| t.elapsed() >= cp.min_pause);
        if since_trigger >= interval && paused {
            return self.trigger(run, BarrierKind::Checkpoint, None);
        }
        None
    }

    /// Where a savepoint asked for in `dir` goes: there, or in the configured directory.
    fn savepoint_dir(&self, dir: Option<String>) -> String {
        dir.or_else(|| self.config.savepoint_dir.clone())
            .unwrap_or_else(|| "./savepoints".into())
    }

    /// Every task has finished: takes the final checkpoint (FLIP-147's order). The
    /// coordinator triggers every task itself, since nothing is in flight any more; each
    /// operator is marked finished and keeps no keyed state, so the checkpoint is small and
    /// quick, and a restore from it ends the job at once. Its completion commits what the
    /// operators emitted up to the end, `finish` included, and then every task exits.
    /// Savepoints in flight complete first; checkpoints in flight are given up.
    fn final_checkpoint(&mut self, run: &mut Run, interval: Duration) -> Option<Outcome> {
        if run
            .pending
            .values()
            .any(|p| p.is_final || p.barrier.is_savepoint())
        {
            return None;
        }
        // A final checkpoint that failed is retried an interval later.
        if run.final_tried && run.last_trigger.is_some_and(|t| t.elapsed() < interval) {
            return None;
        }
        self.subsume_for_final(run);
        run.final_tried = true;
        self.trigger(run, BarrierKind::Checkpoint, None)
    }

    /// Every task has finished: the final checkpoint about to be triggered subsumes the
    /// checkpoints still in flight, so they are given up now instead of delaying the end of
    /// the job by their remaining time (their writes are cancelled and their files deleted;
    /// they count neither as completed nor as failed).
    fn subsume_for_final(&mut self, run: &mut Run) {
        self.subsume(run, u64::MAX, "the final checkpoint");
    }

    /// Checkpoint `id` completed: checkpoints triggered before it and still in flight (with
    /// several concurrent checkpoints) are given up, as Flink subsumes them. Completed later,
    /// they would be published behind a newer checkpoint (and deleted by retention at once)
    /// and notified to the tasks out of order. Savepoints are not subsumed.
    fn subsume_older(&mut self, run: &mut Run, id: u64) {
        self.subsume(run, id, &format!("checkpoint {id}"));
    }

    /// Gives up the checkpoints in flight (not savepoints, not the final one) with ids below
    /// `below`, subsumed by `by`.
    fn subsume(&mut self, run: &mut Run, below: u64, by: &str) {
        let in_flight: Vec<u64> = run
            .pending
            .iter()
            .filter(|(k, p)| {
                **k < below && p.barrier.kind == BarrierKind::Checkpoint && !p.is_final
            })
            .map(|(k, _)| *k)
            .collect();
        for k in in_flight {
            let reason = format!("subsumed by {by}");
            self.stats().ended(k, &reason, true);
            if self.discard_pending(run, k, reason, true).is_some() {
                self.result.checkpoints_subsumed += 1;
            }
        }
    }

    /// Tells every task to exit (after the final checkpoint's or stop-with-savepoint's
    /// completion notification, which the tasks receive first).
    fn exit(&mut self, run: &mut Run) {
        run.exit_sent = true;
        for (_, tx) in &run.events {
            let _ = tx.send(TaskEvent::Exit);
        }
    }

    fn broadcast(&self, run: &Run, n: Notification) {
        for (_, tx) in &run.events {
            let _ = tx.send(TaskEvent::Notify(n));
        }
    }

    /// Starts a checkpoint or savepoint; `Some`: a checkpoint could not even begin, and the
    /// job fails (past the tolerated failures).
    fn trigger(
        &mut self,
        run: &mut Run,
        kind: BarrierKind,
        savepoint: Option<(String, Sender<Result<String>>)>,
    ) -> Option<Outcome> {
        let id = self.next_id;
        self.next_id += 1;
        if kind == BarrierKind::Checkpoint {
            self.metrics.job(|j| j.triggered += 1);
        }
        let triggered_at = Instant::now();
        let (target, reply) = match (kind, savepoint) {
            (BarrierKind::Savepoint { stop, .. }, Some((dir, reply))) => {
                let path = format!(
                    "{}/sp-{id}-{}",
                    dir.trim_end_matches('/'),
                    self.savepoint_tag
                );
                match create_savepoint(&path, id) {
                    Ok(w) => (Target::Savepoint(Arc::new(w), path), Some(reply)),
                    Err(e) => {
                        let reason = format!("savepoint {path}: {e}");
                        // A failed savepoint in the statistics, as a checkpoint that
                        // cannot begin is.
                        self.stats().failed_to_begin(
                            id,
                            SnapshotKind::Savepoint,
                            triggered_at,
                            &reason,
                        );
                        let _ = reply.send(Err(refused(reason.clone())));
                        if run.all_finished() {
                            return Some(drained_savepoint_failed(reason));
                        }
                        if stop {
                            run.stopping = false;
                        }
                        return None;
                    }
                }
            }
            _ => {
                let begun = self.storage.as_ref()?.begin_checkpoint(id);
                match begun {
                    Ok(w) => (Target::Checkpoint(w), None),
                    Err(e) => {
                        run.last_trigger = Some(Instant::now());
                        let reason = format!("cannot begin: {e}");
                        self.stats().failed_to_begin(
                            id,
                            SnapshotKind::Checkpoint,
                            triggered_at,
                            &reason,
                        );
                        return self.checkpoint_failed(id, reason);
                    }
                }
            }
        };
        let is_final = kind == BarrierKind::Checkpoint && run.all_finished();
        // Only a drained job's savepoint is triggered when every task has finished (a
        // savepoint asked for after the input ended is refused).
        let to_every_task = run.all_finished();
        let cp = &self.config.checkpoint;
        let barrier = Barrier {
            id,
            kind,
            unaligned: kind == BarrierKind::Checkpoint
                && !is_final
                && cp.unaligned
                && cp.mode == CheckpointingMode::ExactlyOnce
                && cp.aligned_timeout.is_zero(),
            started: triggered_at,
            to_every_task,
            ended_by_itself: false,
        };
        let snapshot_kind = match kind {
            BarrierKind::Checkpoint => SnapshotKind::Checkpoint,
            BarrierKind::Savepoint { .. } => SnapshotKind::Savepoint,
        };
        self.stats().triggered(
            id,
            snapshot_kind,
            triggered_at,
            epoch_ms(),
            run.events.len(),
        );
        run.pending.insert(
            id,
            Pending {
                barrier,
                target,
                cancel: CancelToken::new(),
                written: Vec::new(),
                written_tasks: 0,
                is_final,
                reply,
                inflight_expected: 0,
                inflight_received: 0,
                inflight: Vec::new(),
            },
        );
        if kind == BarrierKind::Checkpoint {
            run.last_trigger = Some(Instant::now());
        }
        let ended = if barrier.is_drained_savepoint() {
            self.ended_by_themselves(run)
        } else {
            Vec::new()
        };
        for (task, tx) in &run.events {
            if to_every_task || run.source_tasks.contains(task) {
                let ended_by_itself = ended.get(task.stage).copied().unwrap_or(false);
                let _ = tx.send(TaskEvent::Trigger(Barrier {
                    ended_by_itself,
                    ..barrier
                }));
            }
        }
        None
    }

    /// Per stage: whether its input had ended by itself before a drain, so that its
    /// snapshot in the drained savepoint is marked finished. A source stage: every subtask
    /// read its input to the end (a drained source ends without `SourceFinished`). Any
    /// other: every stage it reads had. (A stage whose sources ended in some subtasks only
    /// is not marked: marks in some subtasks only would pin the restore to the old
    /// parallelism; its finished subtasks run `finish` again after a restore.)
    fn ended_by_themselves(&self, run: &Run) -> Vec<bool> {
        let mut ended: Vec<bool> = Vec::with_capacity(self.graph.stages.len());
        for (k, stage) in self.graph.stages.iter().enumerate() {
            let here = if stage.is_source {
                let mut mine = run.source_tasks.iter().filter(|t| t.stage == k).peekable();
                mine.peek().is_some() && mine.all(|t| run.sources_finished.contains(t))
            } else {
                self.graph
                    .upstream(k)
                    .all(|u| ended.get(u).copied().unwrap_or(false))
            };
            ended.push(here);
        }
        ended
    }

    /// Forgets a pending checkpoint: cancels its writes and deletes its files.
    fn discard_pending(
        &mut self,
        run: &mut Run,
        id: u64,
        reason: String,
        notify: bool,
    ) -> Option<Pending> {
        let p = run.pending.remove(&id)?;
        self.discard(run, &p, reason, notify);
        Some(p)
    }

    /// Cancels a pending checkpoint's writes, deletes its files, answers its requester.
    fn discard(&mut self, run: &Run, p: &Pending, reason: String, notify: bool) {
        let id = p.barrier.id;
        self.stats().ended(id, &reason, false);
        p.cancel.cancel();
        match &p.target {
            Target::Checkpoint(_) => {
                if let Some(s) = &self.storage {
                    let _ = s.abort(id);
                }
            }
            // Its files are garbage: no `_metadata` will name them.
            Target::Savepoint(writer, _) => writer.abort(),
        }
        if let Some(reply) = &p.reply {
            let _ = reply.send(Err(refused(format!("savepoint {id} failed: {reason}"))));
        }
        if notify {
            self.broadcast(run, Notification::Aborted(id));
        }
    }

    fn fail_checkpoint(&mut self, run: &mut Run, id: u64, reason: String) -> Option<Outcome> {
        let p = self.discard_pending(run, id, reason.clone(), true)?;
        self.failed(run, p, reason)
    }

    /// Fails a checkpoint already taken out of the pending set.
    fn fail_removed(&mut self, run: &mut Run, p: Pending, reason: String) -> Option<Outcome> {
        self.discard(run, &p, reason.clone(), true);
        self.failed(run, p, reason)
    }

    /// Counts a failed checkpoint; fails the job past the tolerated number.
    fn failed(&mut self, run: &mut Run, p: Pending, reason: String) -> Option<Outcome> {
        let id = p.barrier.id;
        match p.barrier.kind {
            BarrierKind::Savepoint { .. } if p.barrier.is_drained_savepoint() => {
                Some(drained_savepoint_failed(reason))
            }
            BarrierKind::Savepoint { stop, .. } => {
                if stop {
                    run.stopping = false;
                    for (task, tx) in &run.events {
                        if run.source_tasks.contains(task) {
                            let _ = tx.send(TaskEvent::Resume);
                        }
                    }
                }
                None
            }
            BarrierKind::Checkpoint => self.checkpoint_failed(id, reason),
        }
    }

    /// Counts a failed checkpoint (one that could not begin, was declined, timed out, or
    /// could not be written or published); fails the job past the tolerated number in a
    /// row.
    fn checkpoint_failed(&mut self, id: u64, reason: String) -> Option<Outcome> {
        self.result.checkpoints_failed += 1;
        self.metrics.job(|j| j.failed += 1);
        if self.result.checkpoint_failure_reasons.len() < 20 {
            self.result
                .checkpoint_failure_reasons
                .push(format!("checkpoint {id}: {reason}"));
        }
        self.consecutive_failures += 1;
        let tolerated = self.config.checkpoint.tolerable_failures;
        if self.consecutive_failures <= tolerated {
            return None;
        }
        let failed = std::mem::take(&mut self.consecutive_failures);
        Some(Outcome::Failed {
            error: RuntimeError::Checkpoint {
                checkpoint_id: id,
                reason: format!("{reason} ({failed} failed in a row, {tolerated} tolerated)"),
            },
            fatal: false,
        })
    }

    fn manifest(
        &self,
        id: u64,
        kind: SnapshotType,
        written: Vec<WrittenPart>,
    ) -> std::result::Result<Manifest, String> {
        let mut by_uid: BTreeMap<String, Vec<(u32, cairn_format::SubtaskManifest)>> =
            BTreeMap::new();
        for (uid, index, part) in written {
            by_uid.entry(uid).or_default().push((index, part));
        }
        let mut uid_parallelism = HashMap::new();
        for (stage, p) in self.graph.stages.iter().zip(&self.parallelism) {
            for uid in &stage.uids {
                uid_parallelism.insert(uid.clone(), *p);
            }
        }
        let mut ops = Vec::with_capacity(by_uid.len());
        for (uid, mut parts) in by_uid {
            parts.sort_by_key(|(i, _)| *i);
            let parallelism = uid_parallelism.get(&uid).copied().unwrap_or(0);
            if parts.len() != parallelism as usize {
                return Err(format!(
                    "operator {uid} has {} subtask parts, expected {parallelism}",
                    parts.len()
                ));
            }
            ops.push(OperatorManifest {
                uid,
                parallelism,
                max_parallelism: self.config.max_parallelism,
                subtasks: parts.into_iter().map(|(_, s)| s).collect(),
            });
        }
        Ok(assemble_manifest(id, kind, ops))
    }

    fn complete(&mut self, run: &mut Run, id: u64) -> Option<Outcome> {
        let p = run.pending.remove(&id)?;
        let kind = match p.barrier.kind {
            BarrierKind::Checkpoint => SnapshotType::Checkpoint,
            BarrierKind::Savepoint { .. } => SnapshotType::Savepoint,
        };
        let mut p = p;
        let mut written = std::mem::take(&mut p.written);
        let mut missing = None;
        for (uid, index, state) in std::mem::take(&mut p.inflight) {
            match written
                .iter_mut()
                .find(|(u, i, _)| *u == uid && *i == index)
            {
                Some((_, _, part)) => {
                    // Operator states are sorted by name.
                    let states = &mut part.operator_state;
                    let at = states.partition_point(|o| o.name < state.name);
                    states.insert(at, state);
                }
                None => {
                    missing = Some(format!(
                        "in-flight records for operator {uid} subtask {index}, which has no part"
                    ))
                }
            }
        }
        let manifest = match missing.map_or_else(|| self.manifest(id, kind, written), Err) {
            Ok(m) => m,
            Err(reason) => return self.fail_removed(run, p, reason),
        };
        match p.target {
            Target::Checkpoint(writer) => {
                let storage = self.storage.clone()?;
                if let Err(e) = storage.publish(writer, &manifest) {
                    let _ = storage.abort(id);
                    self.broadcast(run, Notification::Aborted(id));
                    self.stats().ended(id, &e.to_string(), false);
                    return self.checkpoint_failed(id, e.to_string());
                }
                let sizes = self.record_stats(&manifest, p.barrier.started.elapsed());
                let path = format!(
                    "{}/chk-{id}",
                    self.config.checkpoint_dir.trim_end_matches('/')
                );
                self.stats()
                    .completed(id, sizes.added, sizes.full, sizes.persisted, path);
                self.consecutive_failures = 0;
                run.last_complete = Some(Instant::now());
                self.subsume_older(run, id);
                self.broadcast(run, Notification::Complete(id));
                // Retention failures do not fail the job; the next completion retries.
                let num_retained = self.config.checkpoint.num_retained.max(1);
                if let Ok(report) = storage.retain_from(self.first_own_id, num_retained) {
                    // A claimed savepoint is subsumed like a checkpoint older than the job's.
                    if report.retained.len() >= num_retained {
                        if let Some(path) = self.claimed_savepoint.take() {
                            if discard_claimed_savepoint(&path).is_err() {
                                self.claimed_savepoint = Some(path);
                            }
                        }
                    }
                }
                if p.is_final {
                    self.exit(run);
                }
            }
            Target::Savepoint(writer, path) => {
                let published = match Arc::try_unwrap(writer) {
                    Ok(w) => w.publish(&manifest).map_err(|e| e.to_string()),
                    Err(writer) => {
                        writer.abort();
                        Err("savepoint files are still being written".into())
                    }
                };
                match published {
                    Ok(()) => {
                        let sizes = Sizes::of(&manifest, None);
                        let (full, persisted) = (sizes.full, sizes.persisted);
                        self.stats()
                            .completed(id, full, full, persisted, path.clone());
                        if matches!(p.barrier.kind, BarrierKind::Savepoint { stop: true, .. }) {
                            // Checkpoints still in flight are given up: the job ends at this
                            // savepoint, and one failing now would fail the stop.
                            self.subsume(run, u64::MAX, &format!("the stopping savepoint {id}"));
                            self.broadcast(run, Notification::Complete(id));
                            run.stopped_with = Some(StoppedWith {
                                path,
                                reply: p.reply.take(),
                            });
                            self.exit(run);
                        } else if let Some(reply) = &p.reply {
                            let _ = reply.send(Ok(path));
                        }
                    }
                    Err(reason) => {
                        let reason = format!("savepoint {path}: {reason}");
                        self.stats().ended(id, &reason, false);
                        if let Some(reply) = &p.reply {
                            let _ = reply.send(Err(refused(reason.clone())));
                        }
                        if p.barrier.is_drained_savepoint() {
                            return Some(drained_savepoint_failed(reason));
                        }
                        if matches!(p.barrier.kind, BarrierKind::Savepoint { stop: true, .. }) {
                            run.stopping = false;
                            for (task, tx) in &run.events {
                                if run.source_tasks.contains(task) {
                                    let _ = tx.send(TaskEvent::Resume);
                                }
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Counts a completed checkpoint and its sizes.
    fn record_stats(&mut self, manifest: &Manifest, duration: Duration) -> Sizes {
        let sizes = Sizes::of(manifest, Some(&self.prev_files));
        let (added, full) = (sizes.added, sizes.full);
        self.result.inflight_records += sizes.persisted;
        self.prev_files = sizes.files.clone();
        self.result.checkpoints_completed += 1;
        self.counters
            .checkpoints_completed
            .fetch_add(1, Ordering::Relaxed);
        let duration_ms = duration.as_secs_f64() * 1000.0;
        self.result.checkpoint_durations_ms.push(duration_ms);
        self.result.checkpoint_bytes.push(added);
        self.metrics.job(|j| {
            j.completed += 1;
            j.last_completed_id = Some(manifest.checkpoint_id);
            j.last_duration_ms = Some(duration_ms);
            j.last_size = Some(added);
            j.last_full_size = Some(full);
        });
        sizes
    }

    /// The checkpoint statistics (a poisoned lock is still usable: each update leaves
    /// them whole).
    fn stats(&self) -> std::sync::MutexGuard<'_, StatsTracker> {
        lock_stats(&self.stats)
    }

    /// What the statistics call task `task`: its first operator.
    fn task_name(&self, task: TaskId) -> String {
        self.graph
            .stages
            .get(task.stage)
            .and_then(|s| s.uids.first())
            .cloned()
            .unwrap_or_else(|| task.to_string())
    }

    /// Keeps the job's metrics current, samples the rates once a second, and reports
    /// every configured interval.
    fn metrics_tick(&mut self, run: &Run) {
        let in_progress = run
            .pending
            .values()
            .filter(|p| p.barrier.kind == BarrierKind::Checkpoint)
            .count() as u64;
        let read = self.counters.source_records.load(Ordering::Relaxed);
        self.metrics.job(|j| {
            j.in_progress = in_progress;
            j.records_read = read;
        });
        if self.metrics_sampled.elapsed() >= SAMPLE_INTERVAL {
            self.metrics_sampled = Instant::now();
            self.metrics.sample();
        }
        self.report_metrics(false);
    }

    /// Reports the metrics when the interval has passed since the last report (or now,
    /// when `now`).
    fn report_metrics(&mut self, now: bool) {
        let reporters = &self.config.metrics.reporters;
        if reporters.is_empty()
            || !(now || self.metrics_reported.elapsed() >= self.config.metrics.interval)
        {
            return;
        }
        self.metrics_reported = Instant::now();
        let read = self.counters.source_records.load(Ordering::Relaxed);
        self.metrics.job(|j| j.records_read = read);
        let snapshot = self.metrics.snapshot();
        crate::metrics::report(reporters, &snapshot, &mut self.reporters_failed);
    }
}

struct Run {
    attempt: u32,
    events: Vec<(TaskId, Sender<TaskEvent>)>,
    source_tasks: Vec<TaskId>,
    pending: BTreeMap<u64, Pending>,
    /// Tasks whose threads returned.
    finished: HashSet<TaskId>,
    sources_finished: HashSet<TaskId>,
    /// Tasks whose input ended and whose operators finished.
    data_finished: HashSet<TaskId>,
    job_start: Instant,
    tasks_started: usize,
    /// When every task of the run was built (its state restored) and running: periodic
    /// checkpoints start then, as Flink triggers none before every task runs.
    all_started: Option<Instant>,
    last_trigger: Option<Instant>,
    last_complete: Option<Instant>,
    /// Every task was told to exit.
    exit_sent: bool,
    /// A final checkpoint was triggered in this run (a failed one is retried an interval
    /// later).
    final_tried: bool,
    stopping: bool,
    /// A stop-with-savepoint `--drain` whose sources are ending their input: its savepoint
    /// is triggered once every task has finished.
    draining: Option<SavepointRequest>,
    /// The stop-with-savepoint whose savepoint is complete, while the tasks end.
    stopped_with: Option<StoppedWith>,
    queued: VecDeque<SavepointRequest>,
}

/// A savepoint that stops the job: its path, and whom to tell once the job has ended.
///
/// The answer waits for the tasks to end, because ending them commits what the savepoint
/// covers (a two-phase-commit sink commits on its completion). When that fails the job
/// ends with [`RuntimeError::StopFailed`], naming the savepoint, and does not restart: the
/// job was asked to stop, and the savepoint holds everything a restore from it commits,
/// whereas a restart from the latest checkpoint, older than the savepoint, would run on.
/// (Flink answers a stop-with-savepoint whose job failed while stopping with the same
/// error, `StopWithSavepointStoppingException`, but fails the job over.)
struct StoppedWith {
    path: String,
    reply: Option<Sender<Result<String>>>,
}

impl StoppedWith {
    /// Tells whoever asked for the stop how it ended.
    fn answer(&self, result: Result<String>) {
        if let Some(reply) = &self.reply {
            let _ = reply.send(result);
        }
    }
}

impl Run {
    /// Every source has read its last record.
    fn input_ended(&self) -> bool {
        self.sources_finished.len() == self.source_tasks.len()
    }

    /// Every task's input has ended and its operators have finished.
    fn all_finished(&self) -> bool {
        self.data_finished.len() == self.events.len()
    }
}

/// Opens a checkpoint (`…/chk-<id>` or its `_metadata`) or a savepoint directory.
///
/// Its errors name `path` as given: the storage's own name the file relative to the
/// directory it opened ("manifest missing path=chk-3/_metadata").
fn open_snapshot(path: &str) -> Result<(Manifest, Box<dyn cairn_core::SnapshotSource>, String)> {
    open_snapshot_at(path).map_err(|e| RuntimeError::Restore {
        reason: format!("cannot read the snapshot {path}: {e}"),
    })
}

fn open_snapshot_at(path: &str) -> Result<(Manifest, Box<dyn cairn_core::SnapshotSource>, String)> {
    let opened = cairn_storage::open_snapshot(path)?;
    let description = opened.description();
    Ok((opened.manifest, opened.source, description))
}

/// Eight random hex digits (from the process's random hash keys), for savepoint names.
fn lock_stats(stats: &std::sync::Mutex<StatsTracker>) -> std::sync::MutexGuard<'_, StatsTracker> {
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// The sizes of a snapshot's manifest.
struct Sizes {
    /// The keyed files it references, by their place in the checkpoint directory.
    files: HashSet<String>,
    /// Bytes not in `prev` (all of them without one): files and operator state.
    added: u64,
    /// Bytes it references in all.
    full: u64,
    /// In-flight records stored (unaligned checkpoints).
    persisted: u64,
}

impl Sizes {
    fn of(manifest: &Manifest, prev: Option<&HashSet<String>>) -> Self {
        let mut sizes = Sizes {
            files: HashSet::new(),
            added: 0,
            full: 0,
            persisted: 0,
        };
        for op in &manifest.operators {
            for s in &op.subtasks {
                for st in &s.operator_state {
                    let bytes = st.elements.iter().map(|e| e.len() as u64).sum::<u64>();
                    sizes.added += bytes;
                    sizes.full += bytes;
                    if st.name == crate::task::INFLIGHT_STATE {
                        sizes.persisted += st.elements.len() as u64;
                    }
                }
                if let Some(h) = &s.keyed {
                    for f in h.files() {
                        let key = match f.area {
                            FileArea::Shared => format!("shared/{}", f.name),
                            _ => format!("chk-{}/{}", manifest.checkpoint_id, f.name),
                        };
                        if sizes.files.insert(key.clone()) {
                            sizes.full += f.size;
                            if !prev.is_some_and(|p| p.contains(&key)) {
                                sizes.added += f.size;
                            }
                        }
                    }
                }
            }
        }
        sizes
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn savepoint_tag(nonce: &str) -> String {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(nonce);
    format!("{:08x}", random as u32)
}

/// What a job tells a second one that finds its checkpoint directory locked.
fn lock_holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!(
        "a job: pid {} on host {}, started {}",
        std::process::id(),
        if host.is_empty() { "?" } else { &host },
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

/// Deletes the savepoint a job in claim mode was restored from; one already gone is fine.
fn discard_claimed_savepoint(path: &str) -> Result<()> {
    match cairn_storage::discard_savepoint(path) {
        Err(e) if !e.is_not_found() => Err(e.into()),
        _ => Ok(()),
    }
}

fn validate(graph: &Dataflow, config: &JobConfig) -> Result<()> {
    let mut seen = HashSet::new();
    for uid in graph.uids() {
        if uid.is_empty() {
            return Err(RuntimeError::Config("an operator has an empty uid".into()));
        }
        if !seen.insert(uid.clone()) {
            return Err(RuntimeError::Config(format!(
                "operator uid {uid} is used twice"
            )));
        }
    }
    for s in &graph.stages {
        let p = s.parallelism.unwrap_or(config.parallelism);
        cairn_core::check_parallelism(p, config.max_parallelism)
            .map_err(|e| RuntimeError::Config(format!("stage {}: {e}", s.uids.join(" → "))))?;
    }
    if config.checkpoint.unaligned && config.checkpoint.mode == CheckpointingMode::AtLeastOnce {
        return Err(RuntimeError::Config(
            "unaligned checkpoints need exactly-once mode".into(),
        ));
    }
    // Values that would not fail but make a job that never gets anywhere.
    if config.checkpoint.interval == Some(Duration::ZERO) {
        return Err(RuntimeError::Config(
            "the checkpoint interval must be positive (None turns checkpointing off)".into(),
        ));
    }
    if config.checkpoint.interval.is_some() && config.checkpoint.timeout.is_zero() {
        return Err(RuntimeError::Config(
            "the checkpoint timeout must be positive (every checkpoint would time out)".into(),
        ));
    }
    let restart = &config.restart;
    if !(restart.backoff_multiplier >= 1.0 && restart.backoff_multiplier.is_finite()) {
        return Err(RuntimeError::Config(format!(
            "the restart backoff multiplier must be a number of at least 1, not {}",
            restart.backoff_multiplier
        )));
    }
    if config.records_per_second == Some(0) {
        return Err(RuntimeError::Config(
            "records_per_second must be at least 1 (None: not throttled)".into(),
        ));
    }
    // A restart would not make it a directory.
    if let StateBackendConfig::RocksDb { local_dir, .. } = &config.backend {
        if local_dir.exists() && !local_dir.is_dir() {
            return Err(RuntimeError::Config(format!(
                "RocksDB's local directory is not a directory path={}",
                local_dir.display()
            )));
        }
    }
    Ok(())
}
