//! Operators chained inside one task, and the channels between tasks.
//!
//! A task runs a chain: each operator calls the next one directly (Flink's operator
//! chaining); the last element is a sink or an [`ExchangeOut`] that batches records into
//! bounded channels to the next stage's tasks. Barriers travel on each receiving task's
//! event channel, stamped with the number of batches sent before them on that data channel,
//! so a receiver knows exactly where in the data the barrier stands (aligned) and can also
//! act on it at once, ahead of the queued data (unaligned).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{
    key_group_for_key, subtask_for_key_group, AsyncSnapshot, BincodeCodec, Codec, KeyGroupRange,
    KeyedStateBackend, OperatorStateBackend, OperatorStateSnapshot, Redistribution,
    SavepointFormat, SnapshotOptions,
};
use crossbeam_channel::{SendTimeoutError, Sender};

use crate::config::SnapshotMode;
use crate::error::{Result, RuntimeError, StateResultExt};
use crate::function::{
    Checkpointed, Collector, InitContext, Key, KeyedProcessFunction, ProcessFunction, Sink,
    SinkContext, SnapshotContext, SubtaskInfo,
};
use crate::metrics::{IoMetrics, MetricGroup, MetricRegistry, TaskTimes};
use crate::side::SideOutputs;
use crate::timers::{ProcessingClock, TimeDomain, Timer, Timers};
use crate::watermarks::Mark;

/// What kind of snapshot a barrier starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BarrierKind {
    Checkpoint,
    /// A savepoint in `format`; `stop`: the sources stop after it (stop-with-savepoint).
    Savepoint {
        stop: bool,
        format: SavepointFormat,
    },
}

/// A checkpoint barrier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Barrier {
    pub(crate) id: u64,
    pub(crate) kind: BarrierKind,
    /// The barrier overtakes in-flight data (set at trigger, or by a task whose alignment
    /// timed out).
    pub(crate) unaligned: bool,
    /// When the coordinator triggered it.
    pub(crate) started: Instant,
    /// The coordinator triggered every task itself (the final checkpoint, taken when every
    /// task has finished): no task forwards it.
    pub(crate) to_every_task: bool,
    /// In the savepoint of a drained job, sent to a task whose input (every source
    /// upstream of its stage, in every subtask) had ended by itself before the drain: its
    /// snapshot is marked finished as in any checkpoint, so a restore does not run its
    /// operators' `finish` again.
    pub(crate) ended_by_itself: bool,
}

impl Barrier {
    pub(crate) fn is_savepoint(&self) -> bool {
        matches!(self.kind, BarrierKind::Savepoint { .. })
    }

    /// The savepoint of a drained job (stop-with-savepoint `--drain`): taken, as the final
    /// checkpoint, at every task once all have finished, but its snapshots are not marked
    /// finished (except those of tasks whose input [`Barrier::ended_by_itself`]): a restore
    /// from it goes on from the sources' positions with the state.
    pub(crate) fn is_drained_savepoint(&self) -> bool {
        self.to_every_task && self.is_savepoint()
    }
}

/// Checkpoint outcomes delivered to every task.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Notification {
    Complete(u64),
    Aborted(u64),
}

/// Records with their timestamps (event time in milliseconds, where a record has one:
/// [`Collector::timestamp`]), in order. The timestamps are a column beside the records,
/// empty while no record of the batch has one, so a stream without event time carries
/// nothing more than its records.
#[derive(Debug)]
pub(crate) struct Batch<T> {
    records: Vec<T>,
    /// The timestamps of the records up to the last one that has a timestamp (empty when
    /// none has); the records after it have none.
    timestamps: Vec<Option<u64>>,
}

impl<T> Batch<T> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            records: Vec::with_capacity(n),
            timestamps: Vec::new(),
        }
    }

    /// Records without timestamps.
    #[cfg(test)]
    pub(crate) fn from_records(records: Vec<T>) -> Self {
        Self {
            records,
            timestamps: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, record: T, timestamp: Option<u64>) {
        if timestamp.is_some() {
            if self.timestamps.is_empty() {
                // The first: the column will likely fill the batch.
                self.timestamps.reserve(self.records.capacity());
            }
            // The records since the last timestamp have none.
            self.timestamps.resize(self.records.len(), None);
            self.timestamps.push(timestamp);
        }
        self.records.push(record);
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, and their timestamps (see [`Batch::timestamp`] for those left out).
    pub(crate) fn into_parts(self) -> (Vec<T>, Vec<Option<u64>>) {
        (self.records, self.timestamps)
    }

    /// The timestamp of record `i` (none past the column's end).
    pub(crate) fn timestamp(&self, i: usize) -> Option<u64> {
        self.timestamps.get(i).copied().flatten()
    }

    /// The records with their timestamps, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&T, Option<u64>)> {
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| (r, self.timestamp(i)))
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = (T, Option<u64>);
    type IntoIter = std::iter::Zip<
        std::vec::IntoIter<T>,
        std::iter::Chain<std::vec::IntoIter<Option<u64>>, std::iter::Repeat<Option<u64>>>,
    >;

    /// The records with their timestamps, in order.
    fn into_iter(self) -> Self::IntoIter {
        let timestamps = self.timestamps.into_iter().chain(std::iter::repeat(None));
        self.records.into_iter().zip(timestamps)
    }
}

/// The data lane of a channel.
#[derive(Debug)]
pub(crate) enum DataMsg<T> {
    Batch(Batch<T>),
    /// The barrier's place in the data, behind the batches sent before it. The receiver
    /// usually learns of the barrier earlier, from the event lane; this marker makes sure it
    /// never reads past the barrier without knowing.
    Barrier(Barrier),
    /// Event-time progress (a watermark, or the sender going idle or active again) behind
    /// the batches sent before it; it does not count as a batch in barrier positions.
    Mark(Mark),
    End,
}

/// A task's control and barrier lane (unbounded; every message is small).
#[derive(Debug)]
pub(crate) enum TaskEvent {
    /// A barrier sent on input channel `channel` after `seq` batches.
    Barrier {
        channel: usize,
        barrier: Barrier,
        seq: u64,
    },
    /// Sources (and, for the final checkpoint, every task): snapshot now.
    Trigger(Barrier),
    Notify(Notification),
    /// Every task: the job is done (its final checkpoint or its stop-with-savepoint
    /// completed, or it runs without checkpoints and every task has finished). The task
    /// returns without running any operator's `finish`.
    Exit,
    /// Sources: a stop-with-savepoint failed; go on reading.
    Resume,
    /// Sources: stop reading and end the input (stop-with-savepoint `--drain`): the final
    /// watermark and every operator's `finish` follow, as at the end of a bounded input.
    Drain,
    /// Tear down.
    Cancel,
    /// Work for the task came from another thread (an asynchronous call completed): it
    /// looks at once instead of at its next timer ([`Waker`]).
    Wake,
}

/// Wakes a task from another thread ([`TaskEvent::Wake`]), at most once until the task
/// has looked: many completions between two looks send one event.
#[derive(Clone, Debug)]
pub(crate) struct Waker {
    events: Sender<TaskEvent>,
    pending: Arc<AtomicBool>,
}

impl Waker {
    pub(crate) fn new(events: Sender<TaskEvent>) -> Self {
        Self {
            events,
            pending: Arc::default(),
        }
    }

    /// Called after the work was handed over (sent on its channel).
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // A task that is gone needs no waking.
            let _ = self.events.send(TaskEvent::Wake);
        }
    }

    /// Called by the task before it takes the work: what is handed over after this wakes
    /// it again.
    pub(crate) fn looking(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }
}

/// One operator's result of the synchronous phase.
pub(crate) struct OperatorPart {
    pub(crate) uid: String,
    pub(crate) index: u32,
    pub(crate) range: KeyGroupRange,
    pub(crate) keyed: Option<Box<dyn AsyncSnapshot>>,
    pub(crate) operator_state: Vec<OperatorStateSnapshot>,
}

/// What the synchronous phase of one barrier collects along a task's chain.
#[derive(Default)]
pub(crate) struct SyncPhase {
    /// Every operator's snapshot, in chain order.
    pub(crate) parts: Vec<OperatorPart>,
    /// Time spent forwarding the barrier downstream (flushing output batches and sending the
    /// barrier, waiting while the channels are full): not part of the state capture.
    pub(crate) forward: Duration,
    /// Set by the task before the phase: its input has ended and its operators have
    /// finished. Each operator is then marked finished ([`FINISHED_STATE`]) and keeps no
    /// keyed state: no record will ever reach it again, and a restore from this snapshot
    /// does not run it (FLIP-147's final checkpoint).
    pub(crate) finished: bool,
}

impl SyncPhase {
    /// The synchronous phase of a task that has (`finished`) or has not finished.
    pub(crate) fn new(finished: bool) -> Self {
        Self {
            finished,
            ..Self::default()
        }
    }
}

/// The name of the operator state that marks an operator subtask as finished in a snapshot
/// (one element: the subtask index). A task whose operators are all marked finished is
/// restored finished: it ends its output at once, without running `finish` again.
pub const FINISHED_STATE: &str = "cairn.finished";

/// What every task of one run shares.
#[derive(Debug)]
pub(crate) struct TaskShared {
    pub(crate) cancel: AtomicBool,
    pub(crate) snapshot_mode: SnapshotMode,
    pub(crate) checkpointing: bool,
    pub(crate) run_id: String,
    /// The clock of processing-time timers.
    pub(crate) clock: ProcessingClock,
    /// How often assigners emit watermarks.
    pub(crate) watermark_interval: Duration,
    /// The job's metrics.
    pub(crate) metrics: Arc<MetricRegistry>,
    /// The run (restart attempt) the tasks belong to.
    pub(crate) attempt: u32,
}

impl TaskShared {
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    pub(crate) fn options(&self, barrier: &Barrier) -> SnapshotOptions {
        if let BarrierKind::Savepoint { format, .. } = barrier.kind {
            SnapshotOptions::savepoint_as(barrier.id, format)
        } else {
            match self.snapshot_mode {
                SnapshotMode::Full => SnapshotOptions::full_checkpoint(barrier.id),
                SnapshotMode::Incremental | SnapshotMode::Changelog => {
                    SnapshotOptions::incremental_checkpoint(barrier.id)
                }
            }
        }
    }
}

/// Sends on a bounded channel, waking up now and then to notice cancellation; the time a
/// full channel keeps it waiting counts as the task's backpressured time.
pub(crate) fn send_blocking<T>(
    tx: &Sender<T>,
    msg: T,
    shared: &TaskShared,
    times: &TaskTimes,
) -> Result<()> {
    let mut msg = match tx.try_send(msg) {
        Ok(()) => return Ok(()),
        Err(crossbeam_channel::TrySendError::Full(m)) => m,
        Err(crossbeam_channel::TrySendError::Disconnected(m)) => m,
    };
    loop {
        let started = Instant::now();
        let sent = tx.send_timeout(msg, Duration::from_millis(20));
        times.backpressured(started.elapsed());
        match sent {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(m)) => {
                if shared.cancelled() {
                    return Err(RuntimeError::Cancelled);
                }
                msg = m;
            }
            // The receiving task is gone: the job is being torn down.
            Err(SendTimeoutError::Disconnected(_)) => return Err(RuntimeError::Cancelled),
        }
    }
}

/// An element of a task's operator chain, receiving records of type `T`.
pub(crate) trait Chain<T>: Send {
    /// Processes one record with its timestamp (`None`: it has none).
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()>;
    /// Processes the records of a batch in order (one dynamic call per batch: the loop
    /// calls [`Chain::push`] of the implementing type directly).
    fn push_batch(&mut self, batch: Batch<T>) -> Result<()> {
        for (record, timestamp) in batch {
            self.push(record, timestamp)?;
        }
        Ok(())
    }
    /// Event-time progress of this element's input (see [`crate::watermarks`]): on a
    /// watermark, fire the event-time timers up to it; then pass it on.
    fn mark(&mut self, mark: Mark) -> Result<()>;
    /// The synchronous phase of `barrier` for this operator and those after it; the last
    /// element forwards the barrier.
    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()>;
    /// A checkpoint completed or was aborted.
    fn notify(&mut self, n: Notification) -> Result<()>;
    /// The input ended: emit what is left, end the output.
    fn finish(&mut self) -> Result<()>;
    /// The input ended and the task had finished already in the snapshot it was restored
    /// from: end the output without running any operator's `finish` (it ran before).
    fn end(&mut self) -> Result<()>;
    /// Sends partly filled output batches (the task is about to wait for input).
    fn flush(&mut self) -> Result<()>;
    /// Fires the timers that are due. Only a keyed operator has timers, and a keyed
    /// operator always heads its task's chain (`key_by` ends a chain), so only the head's
    /// matter: the default does nothing.
    fn fire_timers(&mut self) -> Result<()> {
        Ok(())
    }
    /// How long until the earliest pending timer is due (zero when it is), by the
    /// processing clock; `None` without timers.
    fn timer_wait(&self) -> Option<Duration> {
        None
    }
    /// What counts the records (and watermarks) into this element, for the operator before
    /// it ([`crate::metrics`]); `None` for an element that counts nothing.
    fn input_io(&self) -> Option<Arc<IoMetrics>> {
        None
    }
}

/// Setup common to every operator instance.
pub(crate) struct OpSetup {
    pub(crate) uid: String,
    pub(crate) info: SubtaskInfo,
    pub(crate) operator_state: OperatorStateBackend,
    pub(crate) is_restored: bool,
    /// The domains whose timer state the snapshot restored from holds for this operator.
    pub(crate) restored_timers: Vec<TimeDomain>,
    pub(crate) shared: Arc<TaskShared>,
    /// Counts the records into the operator and its input watermark.
    pub(crate) io: Arc<IoMetrics>,
    /// The operator subtask's metrics.
    pub(crate) metrics: MetricGroup,
    /// Wakes the operator's task from other threads.
    pub(crate) waker: Option<Waker>,
}

impl OpSetup {
    /// The setup of subtask 0 of 1 of operator `uid`, with nothing restored, in a task of
    /// its own (unit tests of operators).
    #[cfg(test)]
    pub(crate) fn for_test(uid: &str, waker: Option<Waker>) -> Self {
        let shared = Arc::new(TaskShared {
            cancel: AtomicBool::new(false),
            snapshot_mode: SnapshotMode::Full,
            checkpointing: false,
            run_id: "test".into(),
            clock: Default::default(),
            watermark_interval: Duration::from_nanos(1),
            metrics: Default::default(),
            attempt: 0,
        });
        Self {
            uid: uid.into(),
            info: SubtaskInfo {
                index: 0,
                parallelism: 1,
                max_parallelism: 128,
                attempt: 0,
            },
            operator_state: OperatorStateBackend::new(uid),
            is_restored: false,
            restored_timers: Vec::new(),
            io: Default::default(),
            metrics: MetricGroup::unregistered(&format!("{uid}.0")),
            waker,
            shared,
        }
    }

    pub(crate) fn range(&self) -> Result<KeyGroupRange> {
        KeyGroupRange::for_subtask(
            self.info.max_parallelism,
            self.info.parallelism,
            self.info.index,
        )
        .in_op(&self.uid)
    }

    /// The operator's main output goes into `next`: its records and watermarks count as
    /// the operator's output.
    pub(crate) fn output_into<T>(&self, next: &dyn Chain<T>) {
        if let Some(io) = next.input_io() {
            MetricRegistry::output(&self.metrics, &io);
        }
    }

    pub(crate) fn initialize(&mut self, f: &mut dyn Checkpointed) -> Result<()> {
        let mut ctx = InitContext {
            operator_state: &mut self.operator_state,
            is_restored: self.is_restored,
            subtask: self.info,
            run_id: &self.shared.run_id,
            checkpointing: self.shared.checkpointing,
            metrics: &self.metrics,
        };
        f.initialize_state(&mut ctx)
            .map_err(|e| e.with_uid(&self.uid).registration())
    }

    pub(crate) fn snapshot(
        &mut self,
        f: &mut dyn Checkpointed,
        barrier: &Barrier,
        range: KeyGroupRange,
        keyed: Option<Box<dyn AsyncSnapshot>>,
        sync: &mut SyncPhase,
    ) -> Result<()> {
        let mut ctx = SnapshotContext {
            operator_state: &mut self.operator_state,
            checkpoint_id: barrier.id,
            is_savepoint: barrier.is_savepoint(),
        };
        f.snapshot_state(&mut ctx)
            .map_err(|e| e.with_uid(&self.uid).registration())?;
        let mut operator_state = self.operator_state.snapshot().in_op(&self.uid)?;
        if sync.finished {
            let codec = BincodeCodec::<u32>::new();
            let index = codec.encode_to_vec(&self.info.index).map_err(|source| {
                let state = FINISHED_STATE.to_string();
                RuntimeError::state(&self.uid, cairn_core::StateError::Codec { state, source })
            })?;
            // Operator states are sorted by name.
            let at = operator_state.partition_point(|o| o.name.as_str() < FINISHED_STATE);
            let marker = OperatorStateSnapshot {
                name: FINISHED_STATE.to_string(),
                mode: Redistribution::Split,
                codec: codec.identity().clone(),
                elements: vec![index],
            };
            operator_state.insert(at, marker);
        }
        sync.parts.push(OperatorPart {
            uid: self.uid.clone(),
            index: self.info.index,
            range,
            keyed,
            operator_state,
        });
        Ok(())
    }

    pub(crate) fn notify(&self, f: &mut dyn Checkpointed, n: Notification) -> Result<()> {
        match n {
            Notification::Complete(id) => f.notify_checkpoint_complete(id),
            Notification::Aborted(id) => f.notify_checkpoint_aborted(id),
        }
        .map_err(|e| e.with_uid(&self.uid))
    }
}

/// A non-keyed [`ProcessFunction`] in a chain.
pub(crate) struct ProcessOp<F, Out> {
    setup: OpSetup,
    range: KeyGroupRange,
    f: F,
    next: Box<dyn Chain<Out>>,
    sides: SideOutputs,
}

impl<F, Out> ProcessOp<F, Out> {
    pub(crate) fn new<In>(
        mut setup: OpSetup,
        mut f: F,
        next: Box<dyn Chain<Out>>,
        sides: SideOutputs,
    ) -> Result<Self>
    where
        F: ProcessFunction<In, Out>,
    {
        setup.output_into(next.as_ref());
        setup.initialize(&mut f)?;
        Ok(Self {
            range: setup.range()?,
            setup,
            f,
            next,
            sides,
        })
    }
}

impl<In, Out, F> Chain<In> for ProcessOp<F, Out>
where
    F: ProcessFunction<In, Out>,
    Out: Send + 'static,
{
    #[inline]
    fn push(&mut self, record: In, timestamp: Option<u64>) -> Result<()> {
        self.setup.io.record();
        let mut out = Collector::with_sides(self.next.as_mut(), timestamp, &mut self.sides);
        self.f
            .process(record, &mut out)
            .map_err(|e| e.with_uid(&self.setup.uid))
    }

    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.setup.io.mark(mark);
        self.sides.mark(mark)?;
        self.next.mark(mark)
    }

    fn input_io(&self) -> Option<Arc<IoMetrics>> {
        Some(self.setup.io.clone())
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.setup
            .snapshot(&mut self.f, barrier, self.range, None, sync)?;
        self.sides.snapshot(barrier, sync)?;
        self.next.snapshot(barrier, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        self.setup.notify(&mut self.f, n)?;
        self.sides.notify(n)?;
        self.next.notify(n)
    }

    fn finish(&mut self) -> Result<()> {
        let mut out = Collector::with_sides(self.next.as_mut(), None, &mut self.sides);
        self.f
            .finish(&mut out)
            .map_err(|e| e.with_uid(&self.setup.uid))?;
        self.sides.finish()?;
        self.next.finish()
    }

    fn end(&mut self) -> Result<()> {
        self.sides.end()?;
        self.next.end()
    }

    fn flush(&mut self) -> Result<()> {
        self.sides.flush()?;
        self.next.flush()
    }
}

/// A [`KeyedProcessFunction`] with its keyed state backend.
pub(crate) struct KeyedOp<F: KeyedProcessFunction, B> {
    setup: OpSetup,
    f: F,
    state: F::State,
    backend: B,
    key_codec: BincodeCodec<F::Key>,
    key_buf: Vec<u8>,
    timers: Timers,
    next: Box<dyn Chain<F::Out>>,
    sides: SideOutputs,
}

impl<F: KeyedProcessFunction, B: KeyedStateBackend> KeyedOp<F, B> {
    /// `backend` is fresh or restored for this subtask's key groups.
    pub(crate) fn new(
        mut setup: OpSetup,
        mut f: F,
        mut backend: B,
        key_codec: BincodeCodec<F::Key>,
        next: Box<dyn Chain<F::Out>>,
        sides: SideOutputs,
    ) -> Result<Self> {
        setup.output_into(next.as_ref());
        setup.initialize(&mut f)?;
        let state = f
            .open(&mut backend)
            .map_err(|e| e.with_uid(&setup.uid).registration())?;
        let mut timers = Timers::new(setup.shared.clock.clone());
        for &domain in &setup.restored_timers {
            timers
                .restore(&mut backend, domain)
                .in_op(&setup.uid)
                .map_err(RuntimeError::registration)?;
        }
        Ok(Self {
            setup,
            f,
            state,
            backend,
            key_codec,
            key_buf: Vec::with_capacity(64),
            timers,
            next,
            sides,
        })
    }
}

/// Records per prefetch chunk: a keyed operator (whose backend prefetches) hints its backend
/// at the keys of the next chunk before it processes the current one, so that their state's
/// cache misses overlap with one another and with the current chunk's work. A chunk's
/// work (a few microseconds) covers a miss; two chunks of state stay cached.
const PREFETCH_CHUNK: usize = 16;

impl<F: KeyedProcessFunction, B: KeyedStateBackend> KeyedOp<F, B> {
    /// Hints the backend at the keys of `records` (a key that fails to encode is not
    /// hinted; processing reports it).
    fn hint<'a>(&mut self, records: impl Iterator<Item = &'a (F::Key, F::In)>)
    where
        F::Key: 'a,
        F::In: 'a,
    {
        for (key, _) in records {
            self.key_buf.clear();
            if self.key_codec.encode(key, &mut self.key_buf).is_ok() {
                self.backend.prefetch_key(&self.key_buf);
            }
        }
    }
}

impl<F: KeyedProcessFunction, B: KeyedStateBackend> Chain<(F::Key, F::In)> for KeyedOp<F, B> {
    /// Processes the batch [`PREFETCH_CHUNK`] records at a time, hinting the backend at the
    /// next chunk's keys before each chunk.
    fn push_batch(&mut self, batch: Batch<(F::Key, F::In)>) -> Result<()> {
        let (records, timestamps) = batch.into_parts();
        let timestamp = |i: usize| timestamps.get(i).copied().flatten();
        let mut records = records.into_iter();
        let mut i = 0;
        if !self.backend.prefetches() {
            for record in records {
                self.push(record, timestamp(i))?;
                i += 1;
            }
            return Ok(());
        }
        self.hint(records.as_slice().iter().take(PREFETCH_CHUNK));
        while !records.as_slice().is_empty() {
            let next = records.as_slice().iter().skip(PREFETCH_CHUNK);
            self.hint(next.take(PREFETCH_CHUNK));
            for record in records.by_ref().take(PREFETCH_CHUNK) {
                self.push(record, timestamp(i))?;
                i += 1;
            }
        }
        Ok(())
    }

    #[inline]
    fn push(&mut self, (key, value): (F::Key, F::In), timestamp: Option<u64>) -> Result<()> {
        self.setup.io.record();
        self.key_buf.clear();
        self.key_codec
            .encode(&key, &mut self.key_buf)
            .map_err(|e| RuntimeError::user(&self.setup.uid, format!("key encoding: {e}")))?;
        self.backend
            .set_current_key(&self.key_buf)
            .in_op(&self.setup.uid)?;
        let mut out = Collector::with_sides(self.next.as_mut(), timestamp, &mut self.sides);
        let timers = self.timers.service();
        self.f
            .process(
                &self.state,
                &key,
                value,
                &mut self.backend,
                timers,
                &mut out,
            )
            .map_err(|e| e.with_uid(&self.setup.uid))?;
        self.timers
            .apply(&mut self.backend, &self.key_buf)
            .in_op(&self.setup.uid)
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        let keyed = if sync.finished {
            None
        } else {
            let options = self.setup.shared.options(barrier);
            Some(self.backend.snapshot(options).in_op(&self.setup.uid)?)
        };
        let range = self.backend.key_group_range();
        self.setup
            .snapshot(&mut self.f, barrier, range, keyed, sync)?;
        self.sides.snapshot(barrier, sync)?;
        self.next.snapshot(barrier, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        match n {
            Notification::Complete(id) => self.backend.notify_checkpoint_complete(id),
            Notification::Aborted(id) => self.backend.notify_checkpoint_aborted(id),
        }
        self.setup.notify(&mut self.f, n)?;
        self.sides.notify(n)?;
        self.next.notify(n)
    }

    /// The input ended: the final watermark fires every pending event-time timer, then
    /// the outputs end.
    fn finish(&mut self) -> Result<()> {
        self.advance_watermark(u64::MAX)?;
        self.sides.finish()?;
        self.next.finish()
    }

    fn end(&mut self) -> Result<()> {
        self.sides.end()?;
        self.next.end()
    }

    fn flush(&mut self) -> Result<()> {
        self.sides.flush()?;
        self.next.flush()
    }

    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.setup.io.mark(mark);
        if let Mark::Watermark(watermark) = mark {
            self.advance_watermark(watermark)?;
        }
        self.sides.mark(mark)?;
        self.next.mark(mark)
    }

    fn input_io(&self) -> Option<Arc<IoMetrics>> {
        Some(self.setup.io.clone())
    }

    fn fire_timers(&mut self) -> Result<()> {
        if !self.timers.has_processing_timers() {
            return Ok(());
        }
        let now = self.timers.now();
        // At most `TIMERS_PER_CALL`, so that many overdue timers (after a restore), or an
        // `on_timer` that registers a due timer again, never keep the task from its events
        // (barriers, cancellation): the run loop calls again at once while one is due.
        for _ in 0..TIMERS_PER_CALL {
            let due = self.timers.pop_processing_due(&mut self.backend, now);
            let Some((time, key)) = due.in_op(&self.setup.uid)? else {
                break;
            };
            self.on_timer(TimeDomain::ProcessingTime, time, &key)?;
        }
        Ok(())
    }

    fn timer_wait(&self) -> Option<Duration> {
        let next = self.timers.next_processing_time()?;
        Some(Duration::from_millis(
            next.saturating_sub(self.timers.now()),
        ))
    }
}

/// The [`Chain`] methods other than `push` of an element that passes all of them on to
/// `self.$next` (a wrapper around another chain).
macro_rules! pass_on_to {
    ($($next:tt)+) => {
        fn mark(&mut self, mark: $crate::watermarks::Mark) -> $crate::error::Result<()> {
            self.$($next)+.mark(mark)
        }
        fn snapshot(
            &mut self,
            barrier: &$crate::chain::Barrier,
            sync: &mut $crate::chain::SyncPhase,
        ) -> $crate::error::Result<()> {
            self.$($next)+.snapshot(barrier, sync)
        }
        fn notify(&mut self, n: $crate::chain::Notification) -> $crate::error::Result<()> {
            self.$($next)+.notify(n)
        }
        fn finish(&mut self) -> $crate::error::Result<()> {
            self.$($next)+.finish()
        }
        fn end(&mut self) -> $crate::error::Result<()> {
            self.$($next)+.end()
        }
        fn flush(&mut self) -> $crate::error::Result<()> {
            self.$($next)+.flush()
        }
        fn input_io(&self) -> Option<std::sync::Arc<$crate::metrics::IoMetrics>> {
            self.$($next)+.input_io()
        }
    };
}
pub(crate) use pass_on_to;

/// A keyed operator that also reads records without a key (`None`): the broadcast input of
/// a broadcast connection, which [`KeyedProcessFunction::process_unkeyed`] takes with no
/// current key. Everything else is the keyed operator's.
pub(crate) struct MaybeKeyed<F: KeyedProcessFunction, B>(pub(crate) KeyedOp<F, B>);

impl<F: KeyedProcessFunction, B: KeyedStateBackend> Chain<(Option<F::Key>, F::In)>
    for MaybeKeyed<F, B>
{
    #[inline]
    fn push(
        &mut self,
        (key, value): (Option<F::Key>, F::In),
        timestamp: Option<u64>,
    ) -> Result<()> {
        let op = &mut self.0;
        match key {
            Some(key) => op.push((key, value), timestamp),
            None => {
                op.setup.io.record();
                let mut out = Collector::with_sides(op.next.as_mut(), timestamp, &mut op.sides);
                op.f.process_unkeyed(&op.state, value, &mut op.backend, &mut out)
                    .map_err(|e| e.with_uid(&op.setup.uid))
            }
        }
    }
    pass_on_to!(0);
    fn fire_timers(&mut self) -> Result<()> {
        self.0.fire_timers()
    }
    fn timer_wait(&self) -> Option<Duration> {
        self.0.timer_wait()
    }
}

impl<F: KeyedProcessFunction, B: KeyedStateBackend> KeyedOp<F, B> {
    /// Runs the function's `on_timer` for the timer of `key_bytes` at `time`, already
    /// removed from state and made current.
    fn on_timer(&mut self, domain: TimeDomain, time: u64, key_bytes: &[u8]) -> Result<()> {
        let uid = &self.setup.uid;
        let key = self
            .key_codec
            .decode(key_bytes)
            .map_err(|e| RuntimeError::user(uid, format!("timer key decoding: {e}")))?;
        // What an event-time timer emits has the timer's time as its timestamp; what a
        // processing-time timer emits has none (as in Flink).
        let timestamp = (domain == TimeDomain::EventTime).then_some(time);
        let mut out = Collector::with_sides(self.next.as_mut(), timestamp, &mut self.sides);
        let timers = self.timers.service();
        self.f
            .on_timer(
                &self.state,
                &key,
                Timer { time, domain },
                &mut self.backend,
                timers,
                &mut out,
            )
            .map_err(|e| e.with_uid(uid))?;
        self.timers.apply(&mut self.backend, key_bytes).in_op(uid)
    }

    /// The operator's watermark advances: fires every event-time timer up to it, in time
    /// order, including those that `on_timer` registers at or before it (as Flink does;
    /// a function that always registers one more never returns, so the loop looks at the
    /// cancellation flag now and then).
    fn advance_watermark(&mut self, watermark: u64) -> Result<()> {
        self.timers.advance_watermark(watermark);
        let mut fired = 0usize;
        loop {
            let due = self.timers.pop_event_due(&mut self.backend);
            let Some((time, key)) = due.in_op(&self.setup.uid)? else {
                return Ok(());
            };
            self.on_timer(TimeDomain::EventTime, time, &key)?;
            fired += 1;
            if fired.is_multiple_of(TIMERS_PER_CALL) && self.setup.shared.cancelled() {
                return Err(RuntimeError::Cancelled);
            }
        }
    }
}

/// Timers one [`Chain::fire_timers`] call fires at most.
const TIMERS_PER_CALL: usize = 1024;

/// A [`Sink`] at the end of a chain.
pub(crate) struct SinkOp<S> {
    setup: OpSetup,
    range: KeyGroupRange,
    sink: S,
    /// The record's timestamp and the last watermark.
    context: SinkContext,
}

impl<S> SinkOp<S> {
    pub(crate) fn new<In>(mut setup: OpSetup, mut sink: S) -> Result<Self>
    where
        S: Sink<In>,
    {
        setup.initialize(&mut sink)?;
        Ok(Self {
            range: setup.range()?,
            setup,
            sink,
            context: SinkContext::default(),
        })
    }
}

impl<In, S: Sink<In>> Chain<In> for SinkOp<S> {
    #[inline]
    fn push(&mut self, record: In, timestamp: Option<u64>) -> Result<()> {
        self.setup.io.record();
        self.context.timestamp = timestamp;
        self.sink
            .write_with_context(record, &self.context)
            .map_err(|e| e.with_uid(&self.setup.uid))
    }

    /// Keeps the watermark for the sink's context.
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.setup.io.mark(mark);
        if let Mark::Watermark(w) = mark {
            self.context.watermark = Some(w);
        }
        Ok(())
    }

    fn input_io(&self) -> Option<Arc<IoMetrics>> {
        Some(self.setup.io.clone())
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.setup
            .snapshot(&mut self.sink, barrier, self.range, None, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        self.setup.notify(&mut self.sink, n)
    }

    fn finish(&mut self) -> Result<()> {
        self.sink.finish().map_err(|e| e.with_uid(&self.setup.uid))
    }

    fn end(&mut self) -> Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Picks the channel of a record and what travels on it.
pub(crate) trait Route<T>: Send {
    type Item: Send + 'static;
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, Self::Item)>;
}

/// Round robin over the downstream subtasks, one batch at a time.
pub(crate) struct RebalanceRoute {
    pub(crate) next: usize,
    pub(crate) in_batch: usize,
    pub(crate) batch_size: usize,
}

impl<T: Send + 'static> Route<T> for RebalanceRoute {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, T)> {
        if self.in_batch >= self.batch_size {
            self.in_batch = 0;
            self.next = (self.next + 1) % channels.max(1);
        }
        self.in_batch += 1;
        Ok((self.next % channels.max(1), record))
    }
}

/// Every record to one channel, `target`, set by [`BroadcastOut`] before each push.
pub(crate) struct FixedRoute {
    target: usize,
}

impl<T: Send + 'static> Route<T> for FixedRoute {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, _channels: usize) -> Result<(usize, T)> {
        Ok((self.target, record))
    }
}

/// Another route whose items are made into `Y` by `map` (the items of a broadcast
/// connection's keyed input: `(Some(key), Left(record))`).
pub(crate) struct MapItem<R, M> {
    pub(crate) route: R,
    /// A closure, so that an identity map costs nothing (inlined).
    pub(crate) map: M,
}

impl<T, R, M, Y> Route<T> for MapItem<R, M>
where
    R: Route<T>,
    M: Fn(R::Item) -> Y + Send,
    Y: Send + 'static,
{
    type Item = Y;
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, Y)> {
        let (i, item) = self.route.route(record, channels)?;
        Ok((i, (self.map)(item)))
    }
}

/// The end of a chain that sends every record to every receiving subtask (Flink's
/// `broadcast()` partitioning), in batches per channel as any exchange does.
pub(crate) struct BroadcastOut<T: Send + 'static> {
    out: ExchangeOut<FixedRoute, T>,
}

impl<T: Clone + Send + 'static> BroadcastOut<T> {
    pub(crate) fn new(
        channel: usize,
        senders: Vec<Sender<DataMsg<T>>>,
        events: Vec<Sender<TaskEvent>>,
        batch_size: usize,
        shared: Arc<TaskShared>,
        times: Arc<TaskTimes>,
    ) -> Self {
        let route = FixedRoute { target: 0 };
        let mut out = ExchangeOut::new(route, channel, senders, events, batch_size, shared, times);
        // Each record goes to every channel but counts once, here.
        out.count = false;
        Self { out }
    }
}

impl<T: Clone + Send + 'static> Chain<T> for BroadcastOut<T> {
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        self.out.io.record();
        let last = self.out.senders.len().saturating_sub(1);
        for i in 0..last {
            self.out.route.target = i;
            self.out.push(record.clone(), timestamp)?;
        }
        self.out.route.target = last;
        self.out.push(record, timestamp)
    }
    pass_on_to!(out);
}

/// By key group of the record's key (`key_by`).
pub(crate) struct KeyRoute<K, F> {
    pub(crate) key_of: F,
    pub(crate) codec: BincodeCodec<K>,
    pub(crate) buf: Vec<u8>,
    pub(crate) max_parallelism: u32,
    pub(crate) uid: String,
}

impl<T, K, F> Route<T> for KeyRoute<K, F>
where
    T: Send + 'static,
    K: Key,
    F: Fn(&T) -> K + Send + 'static,
{
    type Item = (K, T);
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, (K, T))> {
        let key = (self.key_of)(&record);
        if channels == 1 {
            // One receiver owns every key group: nothing to compute (the receiver serializes
            // the key and checks its key group when it sets the current key).
            return Ok((0, (key, record)));
        }
        self.buf.clear();
        self.codec
            .encode(&key, &mut self.buf)
            .map_err(|e| RuntimeError::user(&self.uid, format!("key encoding: {e}")))?;
        let kg = key_group_for_key(&self.buf, self.max_parallelism);
        let target = subtask_for_key_group(kg, channels as u32, self.max_parallelism) as usize;
        Ok((target, (key, record)))
    }
}

/// Each record to a downstream subtask drawn uniformly at random (Flink's
/// `ShufflePartitioner`). The draws are a splitmix64 sequence seeded from the sending
/// subtask's index, not from the clock: a run deals the same records the same way, and
/// no dependency is needed.
pub(crate) struct ShuffleRoute {
    state: u64,
}

impl ShuffleRoute {
    /// The route of sending subtask `subtask`.
    pub(crate) fn new(subtask: u32) -> Self {
        Self {
            state: splitmix64(u64::from(subtask)),
        }
    }

    /// The next draw of the splitmix64 sequence.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(SPLITMIX_GAMMA);
        mix64(self.state)
    }
}

const SPLITMIX_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One step of splitmix64 from `x`.
fn splitmix64(x: u64) -> u64 {
    mix64(x.wrapping_add(SPLITMIX_GAMMA))
}

impl<T: Send + 'static> Route<T> for ShuffleRoute {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, T)> {
        // A draw scaled into 0..channels (the high bits of the product): uniform without
        // the bias of `%`.
        let n = channels.max(1) as u128;
        let i = ((u128::from(self.next_u64()) * n) >> 64) as usize;
        Ok((i, record))
    }
}

/// The downstream subtasks that upstream subtask `index` of `upstream` reaches in a
/// rescale exchange into `downstream` subtasks, as Flink's POINTWISE distribution pattern
/// connects them: when `downstream >= upstream`, subtask `i` gets the contiguous range
/// `ceil(i·d/u)..ceil((i+1)·d/u)`; otherwise downstream subtask `j` reads the upstream
/// subtasks `floor(j·u/d)..floor((j+1)·u/d)`, so several upstream subtasks share it. Never
/// empty.
pub(crate) fn rescale_targets(
    index: usize,
    upstream: usize,
    downstream: usize,
) -> std::ops::Range<usize> {
    let (u, d) = (upstream.max(1), downstream.max(1));
    let i = index.min(u - 1);
    if d >= u {
        let start = (i * d).div_ceil(u);
        let end = ((i + 1) * d).div_ceil(u);
        start..end.max(start + 1).min(d)
    } else {
        // The downstream subtask whose range of upstream subtasks holds `i`.
        let j = (0..d).rfind(|j| j * u / d <= i).unwrap_or(0);
        j..j + 1
    }
}

/// Round robin, one batch at a time, over the downstream subtasks that this upstream
/// subtask reaches in a rescale exchange ([`rescale_targets`]; Flink's
/// `RescalePartitioner`).
pub(crate) struct RescaleRoute {
    targets: std::ops::Range<usize>,
    /// Offset into `targets` of the current batch's subtask.
    next: usize,
    in_batch: usize,
    batch_size: usize,
}

impl RescaleRoute {
    /// The route of upstream subtask `index` of `upstream` into `downstream` subtasks.
    pub(crate) fn new(index: usize, upstream: usize, downstream: usize, batch_size: usize) -> Self {
        Self {
            targets: rescale_targets(index, upstream, downstream),
            next: 0,
            in_batch: 0,
            batch_size: batch_size.max(1),
        }
    }
}

impl<T: Send + 'static> Route<T> for RescaleRoute {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, T)> {
        let len = self.targets.len().max(1);
        if self.in_batch >= self.batch_size {
            self.in_batch = 0;
            self.next = (self.next + 1) % len;
        }
        self.in_batch += 1;
        Ok(((self.targets.start + self.next) % channels.max(1), record))
    }
}

/// Every record to downstream subtask 0 (Flink's `GlobalPartitioner`).
pub(crate) struct GlobalRoute;

impl<T: Send + 'static> Route<T> for GlobalRoute {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, _channels: usize) -> Result<(usize, T)> {
        Ok((0, record))
    }
}

/// A user function of a record and the number of partitions that picks the record's
/// partition (`partition_custom`: the key function and the partitioner, composed).
pub(crate) type PartitionFn<T> = Arc<dyn Fn(&T, u32) -> u32 + Send + Sync>;

/// To the downstream subtask a user's partitioner picks (Flink's `partitionCustom`); a
/// partition out of range fails operator `uid` (the last before the exchange).
pub(crate) struct CustomRoute<T> {
    pub(crate) partition: PartitionFn<T>,
    pub(crate) uid: String,
}

impl<T: Send + 'static> Route<T> for CustomRoute<T> {
    type Item = T;
    #[inline]
    fn route(&mut self, record: T, channels: usize) -> Result<(usize, T)> {
        let partitions = u32::try_from(channels).unwrap_or(u32::MAX);
        let p = (self.partition)(&record, partitions);
        if p >= partitions {
            return Err(custom_out_of_range(&self.uid, p, partitions));
        }
        Ok((p as usize, record))
    }
}

/// The error of a custom partitioner that picked partition `p` of `partitions`, in
/// operator `uid`.
pub(crate) fn custom_out_of_range(uid: &str, p: u32, partitions: u32) -> RuntimeError {
    RuntimeError::user(
        uid,
        format!(
            "the custom partitioner picked a partition out of range (partitions are 0 to \
             {}): partition={p} partitions={partitions}",
            partitions.saturating_sub(1)
        ),
    )
}

/// The end of a task's chain when another stage follows: batches records per channel and
/// forwards barriers.
pub(crate) struct ExchangeOut<R: Route<T>, T> {
    route: R,
    /// This subtask's index = its channel index at every receiver.
    index: usize,
    senders: Vec<Sender<DataMsg<R::Item>>>,
    events: Vec<Sender<TaskEvent>>,
    buffers: Vec<Batch<R::Item>>,
    sent: Vec<u64>,
    batch_size: usize,
    shared: Arc<TaskShared>,
    /// Where the task's time goes (waiting for room in a channel is backpressure).
    times: Arc<TaskTimes>,
    /// Counts the records sent (when `count`) and the watermarks.
    io: Arc<IoMetrics>,
    count: bool,
    /// The end of the output was sent: barriers go on the event lanes only (a marker
    /// behind the end would never be read, and could fill the channel).
    ended: bool,
    _in: std::marker::PhantomData<fn(T)>,
}

impl<R: Route<T>, T> ExchangeOut<R, T> {
    pub(crate) fn new(
        route: R,
        index: usize,
        senders: Vec<Sender<DataMsg<R::Item>>>,
        events: Vec<Sender<TaskEvent>>,
        batch_size: usize,
        shared: Arc<TaskShared>,
        times: Arc<TaskTimes>,
    ) -> Self {
        let n = senders.len();
        Self {
            route,
            index,
            senders,
            events,
            buffers: (0..n).map(|_| Batch::with_capacity(batch_size)).collect(),
            sent: vec![0; n],
            batch_size: batch_size.max(1),
            shared,
            times,
            io: Arc::default(),
            count: true,
            ended: false,
            _in: std::marker::PhantomData,
        }
    }

    fn send_buffer(&mut self, i: usize) -> Result<()> {
        if self.buffers[i].is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.buffers[i], Batch::with_capacity(self.batch_size));
        if self.count {
            self.io.add(batch.len() as u64);
        }
        send_blocking(
            &self.senders[i],
            DataMsg::Batch(batch),
            &self.shared,
            &self.times,
        )?;
        self.sent[i] += 1;
        Ok(())
    }
}

impl<R: Route<T>, T: Send> Chain<T> for ExchangeOut<R, T> {
    #[inline]
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        let (i, item) = self.route.route(record, self.senders.len())?;
        self.buffers[i].push(item, timestamp);
        if self.buffers[i].len() >= self.batch_size {
            self.send_buffer(i)?;
        }
        Ok(())
    }

    /// Sends the batches before the mark, then the mark on every channel.
    fn mark(&mut self, mark: Mark) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        self.flush()?;
        self.io.mark(mark);
        for tx in &self.senders {
            send_blocking(tx, DataMsg::Mark(mark), &self.shared, &self.times)?;
        }
        Ok(())
    }

    fn input_io(&self) -> Option<Arc<IoMetrics>> {
        Some(self.io.clone())
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        if barrier.to_every_task {
            return Ok(());
        }
        let started = Instant::now();
        let forwarded = self.forward(barrier);
        sync.forward += started.elapsed();
        forwarded
    }

    fn notify(&mut self, _n: Notification) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()?;
        for tx in &self.senders {
            send_blocking(tx, DataMsg::End, &self.shared, &self.times)?;
        }
        self.ended = true;
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.finish()
    }

    fn flush(&mut self) -> Result<()> {
        for i in 0..self.buffers.len() {
            self.send_buffer(i)?;
        }
        Ok(())
    }
}

impl<R: Route<T>, T: Send> ExchangeOut<R, T> {
    /// Sends the batches before the barrier, then the barrier on every channel.
    fn forward(&mut self, barrier: &Barrier) -> Result<()> {
        self.flush()?;
        // First the event (it overtakes queued data), then the marker in the data.
        for (i, events) in self.events.iter().enumerate() {
            // A receiver that is gone is being torn down; the coordinator sees why.
            let _ = events.send(TaskEvent::Barrier {
                channel: self.index,
                barrier: *barrier,
                seq: self.sent[i],
            });
        }
        if !self.ended {
            for tx in &self.senders {
                send_blocking(tx, DataMsg::Barrier(*barrier), &self.shared, &self.times)?;
            }
        }
        Ok(())
    }
}

/// What reached a [`Recorder`], in order (tests).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen<T> {
    /// A record and its timestamp.
    Record(T, Option<u64>),
    Mark(Mark),
}

/// The end of a chain that records what reaches it (tests); clones share the record.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct Recorder<T>(Arc<std::sync::Mutex<Vec<Seen<T>>>>);

#[cfg(test)]
impl<T> Recorder<T> {
    pub(crate) fn new() -> Self {
        Self(Arc::default())
    }

    /// Everything seen since the last take.
    pub(crate) fn take(&self) -> Vec<Seen<T>> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }

    /// The records (and their timestamps) seen since the last take; marks are dropped.
    pub(crate) fn take_records(&self) -> Vec<(T, Option<u64>)> {
        self.take()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Record(record, timestamp) => Some((record, timestamp)),
                Seen::Mark(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
impl<T: Send> Chain<T> for Recorder<T> {
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        let seen = Seen::Record(record, timestamp);
        self.0.lock().expect("lock").push(seen);
        Ok(())
    }
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.0.lock().expect("lock").push(Seen::Mark(mark));
        Ok(())
    }
    fn snapshot(&mut self, _: &Barrier, _: &mut SyncPhase) -> Result<()> {
        Ok(())
    }
    fn notify(&mut self, _: Notification) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    fn end(&mut self) -> Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Completions between two looks send one wake-up; once the task looks, the next
    /// completion wakes it again.
    #[test]
    fn a_waker_wakes_once_until_the_task_looks() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let waker = Waker::new(tx);
        let other = waker.clone();
        waker.wake();
        other.wake();
        waker.wake();
        assert_eq!(rx.try_iter().count(), 1);
        waker.looking();
        other.wake();
        assert!(matches!(rx.try_recv(), Ok(TaskEvent::Wake)));
        assert!(rx.try_recv().is_err());
    }

    /// A batch carries no timestamp column until a record has a timestamp; every record
    /// reads back with its own timestamp or none.
    #[test]
    fn a_batch_keeps_each_records_timestamp_and_none_before_the_first() {
        let mut b = Batch::with_capacity(4);
        b.push('a', None);
        b.push('b', None);
        assert!(b.timestamps.is_empty(), "no column without timestamps");
        b.push('c', Some(30));
        b.push('d', None);
        b.push('e', Some(0));
        let expected = vec![
            ('a', None),
            ('b', None),
            ('c', Some(30)),
            ('d', None),
            ('e', Some(0)),
        ];
        let by_ref: Vec<_> = b.iter().map(|(r, t)| (*r, t)).collect();
        assert_eq!(by_ref, expected);
        assert_eq!(b.len(), 5);
        assert_eq!(b.into_iter().collect::<Vec<_>>(), expected);
        let plain = Batch::from_records(vec![1, 2]);
        assert_eq!(
            plain.into_iter().collect::<Vec<_>>(),
            vec![(1, None), (2, None)]
        );
    }

    /// Rescale connects as Flink's POINTWISE pattern: with more downstream subtasks each
    /// upstream one gets a contiguous range, together covering all of them once; with
    /// fewer, contiguous groups of upstream subtasks share one downstream subtask.
    #[test]
    fn rescale_targets_are_flinks_pointwise_ranges() {
        assert_eq!(rescale_targets(0, 2, 4), 0..2);
        assert_eq!(rescale_targets(1, 2, 4), 2..4);
        assert_eq!(rescale_targets(0, 2, 3), 0..2);
        assert_eq!(rescale_targets(1, 2, 3), 2..3);
        let shared: Vec<_> = (0..4).map(|i| rescale_targets(i, 4, 2)).collect();
        assert_eq!(shared, vec![0..1, 0..1, 1..2, 1..2]);
        let three_into_two: Vec<_> = (0..3).map(|i| rescale_targets(i, 3, 2)).collect();
        assert_eq!(three_into_two, vec![0..1, 1..2, 1..2]);
        for u in 1..9 {
            for d in 1..9 {
                let mut reached = vec![0; d];
                for i in 0..u {
                    let r = rescale_targets(i, u, d);
                    assert!(!r.is_empty() && r.end <= d, "{i} of {u} into {d}: {r:?}");
                    if d >= u {
                        r.for_each(|j| reached[j] += 1);
                    } else {
                        assert_eq!(r.len(), 1);
                        reached[r.start] += 1;
                    }
                }
                assert!(reached.iter().all(|n| *n >= 1), "{u} into {d}: {reached:?}");
                if d >= u {
                    assert!(reached.iter().all(|n| *n == 1), "{u} into {d}: {reached:?}");
                }
            }
        }
    }

    /// A shuffle deals about evenly and the same way for the same subtask, differently
    /// for another.
    #[test]
    fn shuffle_draws_are_uniform_and_seeded_by_subtask() {
        let deal = |subtask: u32| -> Vec<usize> {
            let mut r = ShuffleRoute::new(subtask);
            (0..4000)
                .map(|x| Route::<u32>::route(&mut r, x, 4).map(|(i, _)| i))
                .collect::<Result<_>>()
                .expect("route")
        };
        let a = deal(0);
        assert_eq!(a, deal(0));
        assert_ne!(a, deal(1));
        for j in 0..4 {
            let n = a.iter().filter(|i| **i == j).count();
            assert!((800..1200).contains(&n), "subtask {j} got {n} of 4000");
        }
    }
}
