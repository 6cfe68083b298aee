//! Task loops: a source task drives a source and its chain; an input task reads its input
//! channels, aligns barriers (or not), and drives its chain.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{KeyGroupRange, OperatorStateSnapshot, Redistribution};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};

use crate::chain::{
    Barrier, BarrierKind, Batch, Chain, DataMsg, Notification, OpSetup, SyncPhase, TaskEvent,
    TaskShared,
};
use crate::config::CheckpointingMode;
use crate::coordinator::{CoordMsg, TaskId};
use crate::error::{Result, RuntimeError};
use crate::function::{Collector, Source, SourceStatus};
use crate::inflight::InflightCodec;
use crate::metrics::TaskTimes;
use crate::watermarks::{Mark, Valve};

/// The name of the operator state that holds a task's in-flight input records in an
/// unaligned checkpoint (on the task's first operator), each with its timestamp
/// ([`crate::inflight`] has the layout).
pub const INFLIGHT_STATE: &str = "cairn.inflight";

/// Restored in-flight records replayed between two looks at the cancellation flag.
const REPLAY_CANCEL_CHECK: usize = 16;

/// A runnable task.
pub(crate) trait Task: Send {
    fn run(self: Box<Self>) -> Result<()>;
}

/// Counters shared by every run of a job in this process.
#[derive(Debug, Default)]
pub(crate) struct JobCounters {
    /// Records the sources have read, over every attempt.
    pub(crate) source_records: AtomicU64,
    /// The injected failure fired (it fires once per process).
    pub(crate) failure_fired: AtomicBool,
    /// Checkpoints completed, over every attempt (savepoints not counted).
    pub(crate) checkpoints_completed: AtomicU64,
}

/// What a task needs to talk to the coordinator.
pub(crate) struct TaskLink {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) events: Receiver<TaskEvent>,
    pub(crate) coord: Sender<CoordMsg>,
    pub(crate) shared: Arc<TaskShared>,
    /// Where the task's time goes (waiting for input is idle time).
    pub(crate) times: Arc<TaskTimes>,
}

impl TaskLink {
    /// The synchronous phase of `barrier` that started at `started` is done; the task
    /// began handling the barrier at `begun` (its first barrier of an aligned checkpoint;
    /// `started` when it did not align).
    fn synced(&self, barrier: &Barrier, begun: Instant, started: Instant, sync: SyncPhase) {
        self.synced_with(barrier, begun, started, sync, false);
    }

    /// The task's input has ended and its operators have finished; it waits for the final
    /// checkpoint (or, without checkpoints, for the others) before it exits.
    fn end_of_data(&self) {
        let _ = self.coord.send(CoordMsg::EndOfData {
            attempt: self.attempt,
            task: self.id,
        });
    }

    /// `inflight_follows`: an [`CoordMsg::Inflight`] message completes this task's part.
    fn synced_with(
        &self,
        barrier: &Barrier,
        begun: Instant,
        started: Instant,
        sync: SyncPhase,
        inflight_follows: bool,
    ) {
        let SyncPhase { parts, forward, .. } = sync;
        // The coordinator outlives every task of its run.
        let _ = self.coord.send(CoordMsg::Synced {
            attempt: self.attempt,
            task: self.id,
            checkpoint_id: barrier.id,
            start_delay: begun.saturating_duration_since(barrier.started),
            alignment: started.saturating_duration_since(begun),
            sync: started.elapsed().saturating_sub(forward),
            forward,
            parts,
            inflight_follows,
        });
    }

    fn declined(&self, id: u64, reason: String) {
        let _ = self.coord.send(CoordMsg::Declined {
            attempt: self.attempt,
            checkpoint_id: id,
            reason,
        });
    }
}

/// Ends a task's output when its input has ended: runs the operators' `finish`, or only
/// ends the output when the task is `restored_finished` (its operators finished before the
/// snapshot it was restored from). Then tells the coordinator.
fn end_chain<T>(chain: &mut dyn Chain<T>, restored_finished: bool, link: &TaskLink) -> Result<()> {
    if restored_finished {
        chain.end()?;
    } else {
        chain.finish()?;
    }
    link.end_of_data();
    Ok(())
}

/// Counts records on their way from a source into its chain.
struct Counted<T> {
    next: Box<dyn Chain<T>>,
    count: u64,
}

impl<T> Chain<T> for Counted<T> {
    #[inline]
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        self.count += 1;
        self.next.push(record, timestamp)
    }
    crate::chain::pass_on_to!(next);
}

/// Source throttling and failure injection settings.
pub(crate) struct SourceLimits {
    /// This subtask's share of the records-per-second limit.
    pub(crate) records_per_second: Option<f64>,
    pub(crate) fail_at_record: Option<u64>,
    pub(crate) counters: Arc<JobCounters>,
    pub(crate) batch_size: usize,
}

/// A source and its chain.
pub(crate) struct SourceTask<S: Source> {
    setup: OpSetup,
    range: KeyGroupRange,
    source: S,
    chain: Counted<S::Out>,
    link: TaskLink,
    limits: SourceLimits,
    /// Restored from a snapshot in which this task had finished: it reads nothing and ends
    /// its output without running `finish` again.
    restored_finished: bool,
    /// The input ended and the chain's output was ended.
    finished: bool,
}

impl<S: Source> SourceTask<S> {
    pub(crate) fn new(
        mut setup: OpSetup,
        mut source: S,
        chain: Box<dyn Chain<S::Out>>,
        link: TaskLink,
        limits: SourceLimits,
        restored_finished: bool,
    ) -> Result<Self> {
        let range = KeyGroupRange::for_subtask(
            setup.info.max_parallelism,
            setup.info.parallelism,
            setup.info.index,
        )
        .map_err(|e| RuntimeError::state(&setup.uid, e))?;
        setup.output_into(chain.as_ref());
        setup.initialize(&mut source)?;
        Ok(Self {
            setup,
            range,
            source,
            chain: Counted {
                next: chain,
                count: 0,
            },
            link,
            limits,
            restored_finished,
            finished: false,
        })
    }

    /// The source has no more records: ends the chain's output (running the operators'
    /// `finish`, unless they ran before the snapshot this task was restored from).
    fn end_of_input(&mut self) -> Result<()> {
        let _ = self.link.coord.send(CoordMsg::SourceFinished {
            attempt: self.link.attempt,
            task: self.link.id,
        });
        end_chain(&mut self.chain, self.restored_finished, &self.link)?;
        self.finished = true;
        Ok(())
    }

    fn snapshot(&mut self, barrier: &Barrier) -> Result<()> {
        let t = Instant::now();
        let mut sync = SyncPhase::new(
            self.finished && (!barrier.is_drained_savepoint() || barrier.ended_by_itself),
        );
        self.setup
            .snapshot(&mut self.source, barrier, self.range, None, &mut sync)?;
        self.chain.snapshot(barrier, &mut sync)?;
        self.link.synced(barrier, t, t, sync);
        Ok(())
    }

    /// Handles one event; `Ok(true)`: the task is done.
    fn on_event(&mut self, ev: TaskEvent, stopped: &mut bool) -> Result<bool> {
        match ev {
            TaskEvent::Trigger(b) => {
                self.snapshot(&b)?;
                if matches!(b.kind, BarrierKind::Savepoint { stop: true, .. }) {
                    *stopped = true;
                }
            }
            TaskEvent::Notify(n) => {
                self.setup.notify(&mut self.source, n)?;
                self.chain.notify(n)?;
            }
            TaskEvent::Exit => return Ok(true),
            TaskEvent::Resume => *stopped = false,
            TaskEvent::Drain => {
                // The input did not end: no `SourceFinished`, and the snapshot of the
                // drained job keeps this source's position.
                if !self.finished {
                    end_chain(&mut self.chain, self.restored_finished, &self.link)?;
                    self.finished = true;
                }
            }
            TaskEvent::Cancel => return Err(RuntimeError::Cancelled),
            TaskEvent::Barrier { .. } | TaskEvent::Wake => {}
        }
        Ok(false)
    }

    /// How many records the next poll may emit (throttle and failure injection).
    fn allowance(&self, started: Instant) -> usize {
        let mut max = self.limits.batch_size;
        if let Some(rate) = self.limits.records_per_second {
            let due = (rate * started.elapsed().as_secs_f64()) as u64 + 1;
            max = max.min(due.saturating_sub(self.chain.count) as usize);
        }
        if let Some(at) = self.limits.fail_at_record {
            if !self.limits.counters.failure_fired.load(Ordering::Relaxed) {
                let read = self.limits.counters.source_records.load(Ordering::Relaxed);
                max = max.min(at.saturating_sub(read).max(1) as usize);
            }
        }
        max
    }

    fn account(&mut self, emitted: u64) -> Result<()> {
        let c = &self.limits.counters;
        let total = c.source_records.fetch_add(emitted, Ordering::Relaxed) + emitted;
        if let Some(at) = self.limits.fail_at_record {
            if total >= at && !c.failure_fired.swap(true, Ordering::Relaxed) {
                return Err(RuntimeError::InjectedFailure { records: total });
            }
        }
        Ok(())
    }
}

impl<S: Source> Task for SourceTask<S> {
    fn run(mut self: Box<Self>) -> Result<()> {
        let started = Instant::now();
        let mut stopped = false;
        if self.restored_finished {
            self.end_of_input()?;
        }
        loop {
            loop {
                match self.link.events.try_recv() {
                    Ok(ev) => {
                        if self.on_event(ev, &mut stopped)? {
                            return Ok(());
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Err(RuntimeError::Cancelled),
                }
            }
            if self.link.shared.cancelled() {
                return Err(RuntimeError::Cancelled);
            }
            let mut idle = self.finished || stopped;
            if !idle {
                let max = self.allowance(started);
                if max == 0 {
                    idle = true;
                } else {
                    let before = self.chain.count;
                    let status = {
                        let mut out = Collector::new(&mut self.chain, None);
                        self.source
                            .poll(&mut out, max)
                            .map_err(|e| e.with_uid(&self.setup.uid))?
                    };
                    let emitted = self.chain.count - before;
                    self.account(emitted)?;
                    match status {
                        SourceStatus::More => {}
                        SourceStatus::Idle => idle = true,
                        SourceStatus::End => {
                            idle = true;
                            self.end_of_input()?;
                        }
                    }
                }
            }
            if idle {
                self.chain.flush()?;
                let wait = if self.finished || stopped {
                    Duration::from_millis(50)
                } else {
                    Duration::from_millis(1)
                };
                let waited = Instant::now();
                let event = self.link.events.recv_timeout(wait);
                self.link.times.idle(waited.elapsed());
                match event {
                    Ok(ev) => {
                        if self.on_event(ev, &mut stopped)? {
                            return Ok(());
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return Err(RuntimeError::Cancelled),
                }
            }
        }
    }
}

/// How a task stores its in-flight input in an unaligned checkpoint.
pub(crate) struct InflightConfig<X> {
    pub(crate) codec: InflightCodec<X>,
    /// Union for keyed inputs (each new subtask keeps its key groups), split otherwise.
    pub(crate) mode: Redistribution,
    /// The task's first operator, which carries the state.
    pub(crate) uid: String,
}

/// What a channel's replay queue holds, in the channel's order.
enum Queued<X> {
    Batch(Batch<X>),
    Mark(Mark),
}

struct InChannel<X> {
    rx: Receiver<DataMsg<X>>,
    /// Batches taken from `rx`.
    received: u64,
    ended: bool,
    /// Barriers announced on this channel, with the batch count before each.
    announced: VecDeque<(Barrier, u64)>,
    /// Batches (and the watermarks between them) taken from `rx` early (unaligned
    /// checkpoints), processed before `rx`.
    replay: VecDeque<Queued<X>>,
    /// The newest barrier announced on this channel (by event or by marker).
    last_announced: u64,
    /// The newest barrier whose marker was taken from `rx`.
    marker_taken: u64,
}

impl<X> InChannel<X> {
    /// Stopped at an announced barrier: every batch before it has been taken, and the
    /// marker too. Between the last batch and the marker only event-time marks can come
    /// (or the end, when the sender ended before the barrier and sent no marker): they
    /// belong before the barrier, so they are taken first.
    fn at_barrier(&self) -> bool {
        self.announced
            .front()
            .is_some_and(|(b, seq)| self.received >= *seq && self.at_marker(b.id))
    }

    /// The marker of barrier `id` was taken, or none will come.
    fn at_marker(&self, id: u64) -> bool {
        self.marker_taken >= id || self.ended
    }

    /// It has ended, and everything it sent is processed.
    fn drained(&self) -> bool {
        self.ended && self.replay.is_empty()
    }
}

/// What [`InputTask::take`] found.
enum Taken<X> {
    Batch(Batch<X>),
    Mark(Mark),
    /// A barrier marker or the end of the channel.
    State,
    Nothing,
}

/// A checkpoint this task is aligning.
struct Align {
    barrier: Barrier,
    /// When the task began handling it (its first barrier reached the front).
    begun: Instant,
    arrived: Vec<bool>,
    /// The snapshot was taken ahead of the barriers; in-flight input is being recorded.
    unaligned: bool,
    recording: Vec<bool>,
    inflight: Vec<Vec<u8>>,
}

/// Barrier handling of an input task.
#[derive(Clone, Debug)]
pub(crate) struct AlignConfig {
    pub(crate) mode: CheckpointingMode,
    pub(crate) unaligned: bool,
    pub(crate) aligned_timeout: Duration,
}

/// A task fed by channels from the previous stage.
pub(crate) struct InputTask<X> {
    chain: Box<dyn Chain<X>>,
    channels: Vec<InChannel<X>>,
    link: TaskLink,
    config: AlignConfig,
    inflight: InflightConfig<X>,
    /// In-flight records of the unaligned checkpoint restored from, with their timestamps.
    restored: Vec<(X, Option<u64>)>,
    align: Option<Align>,
    /// Barriers with ids up to this one are done here (snapshotted or given up).
    last_handled: u64,
    /// Checkpoints above `last_handled` that the coordinator aborted: their barriers are
    /// dropped when they come, never aligned or snapshotted (Flink ignores barriers of
    /// checkpoints it knows are aborted). Only these ids: the coordinator aborts each
    /// checkpoint it gives up by its own notification, and an older checkpoint or savepoint
    /// still running must not be lost with a newer one.
    aborted: BTreeSet<u64>,
    next_read: usize,
    /// Restored from a snapshot in which this task had finished: when its input ends it
    /// ends its output without running `finish` again.
    restored_finished: bool,
    /// Every input ended and the chain's output was ended.
    finished: bool,
    /// The channels' event-time progress, combined.
    valve: Valve,
    /// What the valve forwards (reused).
    marks: Vec<Mark>,
}

impl<X: crate::function::Data> InputTask<X> {
    pub(crate) fn new(
        chain: Box<dyn Chain<X>>,
        inputs: Vec<Receiver<DataMsg<X>>>,
        link: TaskLink,
        config: AlignConfig,
        inflight: InflightConfig<X>,
        restored: Vec<(X, Option<u64>)>,
        restored_finished: bool,
    ) -> Self {
        let n = inputs.len();
        Self {
            chain,
            channels: inputs
                .into_iter()
                .map(|rx| InChannel {
                    rx,
                    received: 0,
                    ended: false,
                    announced: VecDeque::new(),
                    replay: VecDeque::new(),
                    last_announced: 0,
                    marker_taken: 0,
                })
                .collect(),
            link,
            config,
            inflight,
            restored,
            align: None,
            last_handled: 0,
            aborted: BTreeSet::new(),
            next_read: 0,
            restored_finished,
            finished: false,
            valve: Valve::new(n),
            marks: Vec::new(),
        }
    }

    fn blocked(&self, i: usize) -> bool {
        self.config.mode == CheckpointingMode::ExactlyOnce
            && self
                .align
                .as_ref()
                .is_some_and(|a| a.arrived[i] && !a.unaligned)
    }

    /// Whether batches may be taken from channel `i` now.
    fn can_take(&self, i: usize) -> bool {
        let c = &self.channels[i];
        !c.ended && !c.at_barrier() && !self.blocked(i)
    }

    /// Whether channel `i`'s next batch comes straight from its channel.
    fn readable(&self, i: usize) -> bool {
        self.can_take(i) && self.channels[i].replay.is_empty()
    }

    /// Takes one message from channel `i`: a batch (recorded if an unaligned checkpoint
    /// is recording this channel), or a barrier marker or the end, which change the
    /// channel's state.
    fn take(&mut self, i: usize) -> Result<Taken<X>> {
        match self.channels[i].rx.try_recv() {
            Ok(DataMsg::Batch(batch)) => {
                self.channels[i].received += 1;
                if self.recording(i) {
                    if let Some(a) = self.align.as_mut() {
                        Self::record(&self.inflight.codec, &batch, a)?;
                    }
                }
                Ok(Taken::Batch(batch))
            }
            Ok(DataMsg::Barrier(b)) => {
                let c = &mut self.channels[i];
                c.marker_taken = c.marker_taken.max(b.id);
                self.announce(i, b, self.channels[i].received);
                Ok(Taken::State)
            }
            Ok(DataMsg::Mark(m)) => Ok(Taken::Mark(m)),
            Ok(DataMsg::End) => {
                self.channels[i].ended = true;
                Ok(Taken::State)
            }
            Err(TryRecvError::Empty) => Ok(Taken::Nothing),
            Err(TryRecvError::Disconnected) => Err(self.upstream_gone()),
        }
    }

    /// An input's upstream task has ended, which it does on the job's teardown or after its
    /// `Exit`. The coordinator sends `Exit` to every task only after it has sent each of
    /// them the completion of the final checkpoint or of a stopping savepoint, so that
    /// notification is queued here already: it is handled before the task ends (a sink
    /// commits on it), or a stop would skip this task's commit.
    fn upstream_gone(&mut self) -> RuntimeError {
        while let Ok(ev) = self.link.events.try_recv() {
            match ev {
                TaskEvent::Notify(n) => {
                    if let Notification::Aborted(id) = n {
                        self.aborted_checkpoint(id);
                    }
                    if let Err(e) = self.chain.notify(n) {
                        return e;
                    }
                }
                TaskEvent::Exit | TaskEvent::Cancel => break,
                TaskEvent::Barrier { .. }
                | TaskEvent::Trigger(_)
                | TaskEvent::Resume
                | TaskEvent::Drain
                | TaskEvent::Wake => {}
            }
        }
        RuntimeError::Cancelled
    }

    /// Barrier `b` stands after `seq` batches of channel `i` (told by the event lane or by
    /// the marker in the data, whichever comes first).
    fn announce(&mut self, i: usize, b: Barrier, seq: u64) {
        let last_handled = self.last_handled;
        let aborted = self.aborted.contains(&b.id);
        if let Some(c) = self.channels.get_mut(i) {
            if b.id > last_handled && !aborted && b.id > c.last_announced {
                c.last_announced = b.id;
                c.announced.push_back((b, seq));
            }
        }
    }

    fn recording(&self, i: usize) -> bool {
        self.align
            .as_ref()
            .is_some_and(|a| a.unaligned && a.recording[i])
    }

    fn record(codec: &InflightCodec<X>, batch: &Batch<X>, a: &mut Align) -> Result<()> {
        for (r, timestamp) in batch.iter() {
            let bytes = codec
                .encode(r, timestamp)
                .map_err(|e| RuntimeError::Checkpoint {
                    checkpoint_id: a.barrier.id,
                    reason: format!("cannot encode an in-flight record: {e}"),
                })?;
            a.inflight.push(bytes);
        }
        Ok(())
    }

    /// Replays the in-flight records of the unaligned checkpoint restored from, with their
    /// timestamps. A replay can be long (deep channels, a slow operator), and it runs
    /// before the loop that watches for cancellation: without the check a task went on
    /// replaying (running user code) for all of it after the job was cancelled or another
    /// task had failed, and the teardown and restart waited for it.
    fn replay_restored(&mut self) -> Result<()> {
        for (i, (record, timestamp)) in std::mem::take(&mut self.restored).into_iter().enumerate() {
            if i % REPLAY_CANCEL_CHECK == 0 && self.link.shared.cancelled() {
                return Err(RuntimeError::Cancelled);
            }
            self.chain.push(record, timestamp)?;
        }
        Ok(())
    }

    fn process(&mut self, batch: Batch<X>) -> Result<()> {
        self.chain.push_batch(batch)
    }

    /// Channel `i` brought `mark`: forwards what changes the task's event-time progress.
    fn channel_mark(&mut self, i: usize, mark: Mark) -> Result<()> {
        self.valve.input(i, mark, &mut self.marks);
        self.forward_marks()
    }

    /// Channel `i` stops counting in the task's watermark if it has ended and everything
    /// it sent is processed.
    fn channel_drained(&mut self, i: usize) -> Result<()> {
        if self.channels[i].drained() {
            self.valve.end(i, &mut self.marks);
        }
        self.forward_marks()
    }

    fn forward_marks(&mut self) -> Result<()> {
        for k in 0..self.marks.len() {
            self.chain.mark(self.marks[k])?;
        }
        self.marks.clear();
        Ok(())
    }

    /// Handles the queued events; `Ok(true)`: the task is done.
    fn drain_events(&mut self) -> Result<bool> {
        loop {
            match self.link.events.try_recv() {
                Ok(ev) => {
                    if self.on_event(ev)? {
                        return Ok(true);
                    }
                }
                Err(TryRecvError::Empty) => return Ok(false),
                Err(TryRecvError::Disconnected) => return Err(RuntimeError::Cancelled),
            }
        }
    }

    /// `Ok(true)`: the task is done.
    fn on_event(&mut self, ev: TaskEvent) -> Result<bool> {
        match ev {
            TaskEvent::Barrier {
                channel,
                barrier,
                seq,
            } => self.announce(channel, barrier, seq),
            TaskEvent::Notify(n) => {
                if let Notification::Aborted(id) = n {
                    self.aborted_checkpoint(id);
                }
                self.chain.notify(n)?;
            }
            TaskEvent::Trigger(b) => self.triggered(b)?,
            TaskEvent::Exit => return Ok(true),
            TaskEvent::Cancel => return Err(RuntimeError::Cancelled),
            TaskEvent::Resume | TaskEvent::Drain | TaskEvent::Wake => {}
        }
        Ok(false)
    }

    /// The coordinator triggered this task itself: the final checkpoint, or the savepoint
    /// of a drained job, taken when every task has finished. Nothing is in flight, so the
    /// snapshot is taken at once.
    fn triggered(&mut self, b: Barrier) -> Result<()> {
        if !b.to_every_task || !self.finished {
            self.link.declined(
                b.id,
                format!(
                    "task {} was triggered directly before its input ended",
                    self.link.id
                ),
            );
            return Ok(());
        }
        self.last_handled = self.last_handled.max(b.id);
        self.drop_stale();
        let t = Instant::now();
        let mut sync = SyncPhase::new(!b.is_drained_savepoint() || b.ended_by_itself);
        self.chain.snapshot(&b, &mut sync)?;
        self.link.synced(&b, t, t, sync);
        Ok(())
    }

    /// Ends the output once every input has ended and nothing is left to process or align.
    fn end_if_drained(&mut self) -> Result<()> {
        if !self.finished
            && self.align.is_none()
            && self.channels.iter().all(|c| c.ended && c.replay.is_empty())
        {
            self.end_of_input()?;
        }
        Ok(())
    }

    /// Finished, or restored finished and about to end its output: a snapshot marks the
    /// operators finished either way.
    fn is_finished(&self) -> bool {
        self.finished || self.restored_finished
    }

    /// Every input ended: ends the chain's output (running the operators' `finish`, unless
    /// they ran before the snapshot this task was restored from) and tells the coordinator.
    fn end_of_input(&mut self) -> Result<()> {
        end_chain(self.chain.as_mut(), self.restored_finished, &self.link)?;
        self.finished = true;
        Ok(())
    }

    /// The coordinator gave up checkpoint `id`: stop aligning it (an unaligned one stops
    /// recording; the batches already taken into replay queues are still processed, and
    /// the recorded copies are dropped), and drop its barriers, those announced already
    /// and those still to come.
    fn aborted_checkpoint(&mut self, id: u64) {
        if id <= self.last_handled {
            return;
        }
        if self.align.as_ref().is_some_and(|a| a.barrier.id == id) {
            self.align = None;
            self.last_handled = id;
        } else {
            self.aborted.insert(id);
        }
        self.drop_stale();
    }

    /// Forgets announced barriers that are handled or aborted.
    fn drop_stale(&mut self) {
        let last = self.last_handled;
        self.aborted.retain(|id| *id > last);
        let aborted = &self.aborted;
        for c in &mut self.channels {
            c.announced
                .retain(|(b, _)| b.id > last && !aborted.contains(&b.id));
        }
    }

    /// Takes batches of channel `i` up to `seq` (they are queued: the sender sent them
    /// before announcing the barrier) into its replay queue, recording them.
    fn drain_to(&mut self, i: usize, seq: u64, a: &mut Align) -> Result<()> {
        let c = &mut self.channels[i];
        while c.received < seq && !c.ended {
            match c.rx.recv_timeout(Duration::from_millis(50)) {
                Ok(DataMsg::Batch(b)) => {
                    c.received += 1;
                    Self::record(&self.inflight.codec, &b, a)?;
                    c.replay.push_back(Queued::Batch(b));
                }
                // Not stored in the checkpoint: after a restore, watermarks start over.
                Ok(DataMsg::Mark(m)) => c.replay.push_back(Queued::Mark(m)),
                // Markers of barriers announced already (by their events).
                Ok(DataMsg::Barrier(b)) => c.marker_taken = c.marker_taken.max(b.id),
                Ok(DataMsg::End) => c.ended = true,
                Err(RecvTimeoutError::Timeout) => {
                    if self.link.shared.cancelled() {
                        return Err(RuntimeError::Cancelled);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(RuntimeError::Cancelled),
            }
        }
        self.channel_drained(i)
    }

    fn progress(&mut self) -> Result<()> {
        self.drop_stale();
        // A newer barrier gives up the alignment in progress only on a channel that has not
        // brought the aligned barrier yet (it skipped it). On a channel that has, the newer
        // barrier is queued behind the alignment (the event lane overtakes the data, and
        // a savepoint may run at the same time as a checkpoint).
        let align = self.align.as_ref();
        let newest = self
            .channels
            .iter()
            .enumerate()
            .filter(|(i, _)| align.is_none_or(|a| !a.arrived[*i]))
            .filter_map(|(_, c)| c.announced.front().map(|(b, _)| *b))
            .max_by_key(|b| b.id);
        if let Some(b) = newest {
            if self.align.as_ref().is_none_or(|a| b.id > a.barrier.id) {
                if let Some(old) = self.align.take() {
                    self.link.declined(
                        old.barrier.id,
                        format!(
                            "task {} saw the barrier of checkpoint {} before aligning it",
                            self.link.id, b.id
                        ),
                    );
                }
                self.last_handled = self.last_handled.max(b.id - 1);
                self.drop_stale();
                let n = self.channels.len();
                self.align = Some(Align {
                    barrier: b,
                    begun: Instant::now(),
                    arrived: vec![false; n],
                    unaligned: false,
                    recording: vec![false; n],
                    inflight: Vec::new(),
                });
            }
        }
        let Some(mut a) = self.align.take() else {
            return Ok(());
        };
        self.arrivals(&mut a)?;
        if !a.unaligned && self.should_go_unaligned(&a) {
            self.go_unaligned(&mut a)?;
        }
        if a.arrived.iter().all(|x| *x) {
            self.complete(a)
        } else {
            self.align = Some(a);
            Ok(())
        }
    }

    fn arrivals(&mut self, a: &mut Align) -> Result<()> {
        for i in 0..self.channels.len() {
            if a.arrived[i] {
                continue;
            }
            let front = self.channels[i].announced.front().copied();
            match front {
                Some((b, seq)) if b.id == a.barrier.id => {
                    if a.unaligned {
                        self.drain_to(i, seq, a)?;
                    } else {
                        let c = &self.channels[i];
                        if !(c.received >= seq && c.replay.is_empty() && c.at_marker(b.id)) {
                            continue;
                        }
                    }
                    self.channels[i].announced.pop_front();
                    a.arrived[i] = true;
                    a.recording[i] = false;
                }
                _ => {
                    let c = &self.channels[i];
                    if c.ended && (a.unaligned || c.replay.is_empty()) {
                        a.arrived[i] = true;
                        a.recording[i] = false;
                    }
                }
            }
        }
        Ok(())
    }

    fn should_go_unaligned(&self, a: &Align) -> bool {
        if a.barrier.is_savepoint() || self.config.mode != CheckpointingMode::ExactlyOnce {
            return false;
        }
        a.barrier.unaligned
            || (self.config.unaligned && a.barrier.started.elapsed() >= self.config.aligned_timeout)
            || self.channels.iter().any(|c| {
                c.announced
                    .front()
                    .is_some_and(|(b, _)| b.id == a.barrier.id && b.unaligned)
            })
    }

    /// Snapshots now, ahead of the barriers still to come, and records every input record
    /// before them that this task has not processed yet.
    fn go_unaligned(&mut self, a: &mut Align) -> Result<()> {
        a.unaligned = true;
        for i in 0..self.channels.len() {
            if a.arrived[i] {
                continue;
            }
            for queued in &self.channels[i].replay {
                if let Queued::Batch(batch) = queued {
                    Self::record(&self.inflight.codec, batch, a)?;
                }
            }
            a.recording[i] = true;
        }
        let t = Instant::now();
        let mut barrier = a.barrier;
        barrier.unaligned = true;
        let mut sync = SyncPhase::new(self.is_finished());
        self.chain.snapshot(&barrier, &mut sync)?;
        // The asynchronous phase starts now; the in-flight records follow when every
        // channel's barrier has come.
        self.link.synced_with(&a.barrier, a.begun, t, sync, true);
        // Channels whose barrier is announced: take what precedes it now.
        self.arrivals(a)
    }

    fn complete(&mut self, mut a: Align) -> Result<()> {
        let id = a.barrier.id;
        self.last_handled = self.last_handled.max(id);
        if a.unaligned {
            let state = (!a.inflight.is_empty()).then(|| OperatorStateSnapshot {
                name: INFLIGHT_STATE.to_string(),
                mode: self.inflight.mode,
                codec: self.inflight.codec.identity().clone(),
                elements: std::mem::take(&mut a.inflight),
            });
            let _ = self.link.coord.send(CoordMsg::Inflight {
                attempt: self.link.attempt,
                checkpoint_id: id,
                uid: self.inflight.uid.clone(),
                index: self.link.id.index,
                state,
            });
        } else {
            let t = Instant::now();
            let mut sync = SyncPhase::new(self.is_finished());
            self.chain.snapshot(&a.barrier, &mut sync)?;
            self.link.synced(&a.barrier, a.begun, t, sync);
        }
        Ok(())
    }

    /// Takes one batch from a replay queue or a readable channel; `false` when none is
    /// ready.
    fn read_one(&mut self) -> Result<bool> {
        let n = self.channels.len();
        for k in 0..n {
            let i = (self.next_read + k) % n;
            if self.blocked(i) {
                continue;
            }
            if !self.channels[i].replay.is_empty() {
                // Keep the channel moving behind the replayed batches (one in, one out), so
                // that the sender is not blocked, and cannot miss a barrier trigger, for as
                // long as the replay lasts.
                if self.can_take(i) {
                    match self.take(i)? {
                        Taken::Batch(batch) => {
                            self.channels[i].replay.push_back(Queued::Batch(batch));
                        }
                        Taken::Mark(m) => self.channels[i].replay.push_back(Queued::Mark(m)),
                        Taken::State | Taken::Nothing => {}
                    }
                }
                if let Some(queued) = self.channels[i].replay.pop_front() {
                    self.next_read = i + 1;
                    match queued {
                        Queued::Batch(batch) => self.process(batch)?,
                        Queued::Mark(m) => self.channel_mark(i, m)?,
                    }
                    // The end of the channel counts once its replay is done.
                    self.channel_drained(i)?;
                    return Ok(true);
                }
            }
            if !self.readable(i) {
                continue;
            }
            match self.take(i)? {
                Taken::Batch(batch) => {
                    self.next_read = i + 1;
                    self.process(batch)?;
                    return Ok(true);
                }
                Taken::Mark(m) => {
                    self.channel_mark(i, m)?;
                    return Ok(true);
                }
                Taken::State => {
                    // An ended channel no longer holds the watermark back.
                    self.channel_drained(i)?;
                    return Ok(true);
                }
                Taken::Nothing => {}
            }
        }
        Ok(false)
    }

    /// Waits until a readable channel or the event lane has something, or a short timeout
    /// (to notice cancellation and the aligned-checkpoint timeout).
    fn wait(&mut self) -> Result<()> {
        if self.link.shared.cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        let mut sel = Select::new();
        for i in 0..self.channels.len() {
            if self.readable(i) {
                sel.recv(&self.channels[i].rx);
            }
        }
        sel.recv(&self.link.events);
        let timeout = if self.align.is_some() {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(50)
        };
        let timeout = match self.chain.timer_wait() {
            Some(timer) if !self.finished => timeout.min(timer),
            _ => timeout,
        };
        let waited = Instant::now();
        let _ = sel.ready_timeout(timeout);
        self.link.times.idle(waited.elapsed());
        Ok(())
    }
}

impl<X: crate::function::Data> Task for InputTask<X> {
    fn run(mut self: Box<Self>) -> Result<()> {
        self.replay_restored()?;
        loop {
            if self.drain_events()? {
                return Ok(());
            }
            self.progress()?;
            self.end_if_drained()?;
            if !self.finished {
                // Due processing-time timers fire between batches, aligning or not; none
                // fires once the input has ended (see `crate::timers`).
                self.chain.fire_timers()?;
            }
            if self.finished || !self.read_one()? {
                self.chain.flush()?;
                self.wait()?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! An [`InputTask`] driven step by step, without threads: its channels, event lane and
    //! coordinator lane are in the test's hands.

    use std::sync::Mutex;

    use crossbeam_channel::{unbounded, Sender};

    use super::*;
    use crate::chain::SyncPhase;
    use crate::config::SnapshotMode;

    /// What the chain saw: processed records and the snapshots taken.
    #[derive(Default)]
    struct Seen {
        records: Vec<u64>,
        /// The timestamp of each record.
        timestamps: Vec<Option<u64>>,
        /// Watermarks forwarded to the chain, each after the records before it.
        watermarks: Vec<(usize, u64)>,
        /// Per snapshot: how many watermarks were forwarded before it.
        watermarks_at_snapshot: Vec<usize>,
        snapshots: Vec<(u64, bool)>,
        /// Per snapshot: taken as finished.
        finished: Vec<bool>,
        /// `finish` or `end`, as called.
        ends: Vec<&'static str>,
    }

    struct Recorder(Arc<Mutex<Seen>>);

    impl Chain<u64> for Recorder {
        fn push(&mut self, record: u64, timestamp: Option<u64>) -> Result<()> {
            let mut seen = self.0.lock().map_err(|_| RuntimeError::Cancelled)?;
            seen.records.push(record);
            seen.timestamps.push(timestamp);
            Ok(())
        }
        fn mark(&mut self, mark: Mark) -> Result<()> {
            let mut seen = self.0.lock().map_err(|_| RuntimeError::Cancelled)?;
            if let Mark::Watermark(watermark) = mark {
                let after = seen.records.len();
                seen.watermarks.push((after, watermark));
            }
            Ok(())
        }
        fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
            let mut seen = self.0.lock().map_err(|_| RuntimeError::Cancelled)?;
            seen.snapshots.push((barrier.id, barrier.unaligned));
            let marks = seen.watermarks.len();
            seen.watermarks_at_snapshot.push(marks);
            seen.finished.push(sync.finished);
            Ok(())
        }
        fn notify(&mut self, _n: Notification) -> Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            let mut seen = self.0.lock().map_err(|_| RuntimeError::Cancelled)?;
            seen.ends.push("finish");
            Ok(())
        }
        fn end(&mut self) -> Result<()> {
            let mut seen = self.0.lock().map_err(|_| RuntimeError::Cancelled)?;
            seen.ends.push("end");
            Ok(())
        }
        fn flush(&mut self) -> Result<()> {
            Ok(())
        }
    }

    struct Harness {
        task: InputTask<u64>,
        data: Vec<Sender<DataMsg<u64>>>,
        /// Batches sent per channel (the `seq` of the next barrier).
        sent: Vec<u64>,
        events: Sender<TaskEvent>,
        coord: Receiver<CoordMsg>,
        seen: Arc<Mutex<Seen>>,
    }

    fn barrier(id: u64, kind: BarrierKind, unaligned: bool) -> Barrier {
        Barrier {
            id,
            kind,
            unaligned,
            started: Instant::now(),
            to_every_task: false,
            ended_by_itself: false,
        }
    }

    impl Harness {
        fn new(channels: usize) -> Self {
            Self::restored(channels, false)
        }

        /// `restored_finished`: restored from a snapshot in which the task had finished.
        fn restored(channels: usize, restored_finished: bool) -> Self {
            Self::build(channels, restored_finished, Vec::new())
        }

        /// Restored with in-flight records to replay.
        fn build(
            channels: usize,
            restored_finished: bool,
            inflight: Vec<(u64, Option<u64>)>,
        ) -> Self {
            let (data, inputs): (Vec<_>, Vec<_>) = (0..channels).map(|_| unbounded()).unzip();
            let (events, events_rx) = unbounded();
            let (coord_tx, coord) = unbounded();
            let seen = Arc::new(Mutex::new(Seen::default()));
            let link = TaskLink {
                id: TaskId { stage: 1, index: 0 },
                attempt: 0,
                events: events_rx,
                coord: coord_tx,
                shared: Arc::new(TaskShared {
                    cancel: AtomicBool::new(false),
                    snapshot_mode: SnapshotMode::Full,
                    checkpointing: true,
                    run_id: "test".into(),
                    clock: Default::default(),
                    watermark_interval: Duration::from_millis(200),
                    metrics: Default::default(),
                    attempt: 0,
                }),
                times: Default::default(),
            };
            let task = InputTask::new(
                Box::new(Recorder(seen.clone())),
                inputs,
                link,
                AlignConfig {
                    mode: CheckpointingMode::ExactlyOnce,
                    unaligned: false,
                    aligned_timeout: Duration::from_secs(3600),
                },
                InflightConfig {
                    codec: InflightCodec::new(),
                    mode: Redistribution::Split,
                    uid: "op".into(),
                },
                inflight,
                restored_finished,
            );
            Self {
                task,
                data,
                sent: vec![0; channels],
                events,
                coord,
                seen,
            }
        }

        fn batch(&mut self, channel: usize, records: &[u64]) {
            let batch = Batch::from_records(records.to_vec());
            self.data[channel]
                .send(DataMsg::Batch(batch))
                .expect("send batch");
            self.sent[channel] += 1;
        }

        /// A batch of records with timestamps.
        fn stamped_batch(&mut self, channel: usize, records: &[(u64, Option<u64>)]) {
            let mut batch = Batch::with_capacity(records.len());
            for &(r, t) in records {
                batch.push(r, t);
            }
            self.data[channel]
                .send(DataMsg::Batch(batch))
                .expect("send batch");
            self.sent[channel] += 1;
        }

        /// The barrier as an upstream task forwards it: event first, then the marker.
        fn barrier(&mut self, channel: usize, b: Barrier) {
            self.events
                .send(TaskEvent::Barrier {
                    channel,
                    barrier: b,
                    seq: self.sent[channel],
                })
                .expect("send barrier event");
            self.data[channel]
                .send(DataMsg::Barrier(b))
                .expect("send barrier marker");
        }

        fn watermark(&mut self, channel: usize, w: u64) {
            self.data[channel]
                .send(DataMsg::Mark(Mark::Watermark(w)))
                .expect("send watermark");
        }

        /// The watermarks forwarded to the chain, each with the number of records
        /// processed before it.
        fn watermarks(&self) -> Vec<(usize, u64)> {
            self.seen.lock().expect("lock").watermarks.clone()
        }

        /// The end of channel `channel`.
        fn end(&mut self, channel: usize) {
            self.data[channel].send(DataMsg::End).expect("send end");
        }

        /// A barrier forwarded by an upstream task that has ended its output: on the event
        /// lane only.
        fn barrier_after_end(&mut self, channel: usize, b: Barrier) {
            self.events
                .send(TaskEvent::Barrier {
                    channel,
                    barrier: b,
                    seq: self.sent[channel],
                })
                .expect("send barrier event");
        }

        fn trigger(&self, b: Barrier) {
            self.events
                .send(TaskEvent::Trigger(b))
                .expect("send trigger");
        }

        fn ends(&self) -> Vec<&'static str> {
            self.seen.lock().expect("lock").ends.clone()
        }

        fn finished_snapshots(&self) -> Vec<bool> {
            self.seen.lock().expect("lock").finished.clone()
        }

        fn abort(&self, id: u64) {
            self.events
                .send(TaskEvent::Notify(Notification::Aborted(id)))
                .expect("send abort");
        }

        /// What the task loop does, until it has nothing to read.
        fn run_idle(&mut self) {
            for _ in 0..100 {
                self.task.drain_events().expect("events");
                self.task.progress().expect("progress");
                self.task.end_if_drained().expect("end");
                if self.task.finished || !self.task.read_one().expect("read") {
                    return;
                }
            }
            panic!("the task did not become idle");
        }

        fn records(&self) -> Vec<u64> {
            self.seen.lock().expect("lock").records.clone()
        }

        fn snapshots(&self) -> Vec<(u64, bool)> {
            self.seen.lock().expect("lock").snapshots.clone()
        }

        /// Checkpoint ids of the coordinator messages sent so far, as `(kind, id)`.
        fn coord_messages(&self) -> Vec<(&'static str, u64)> {
            self.coord
                .try_iter()
                .map(|m| match m {
                    CoordMsg::Synced { checkpoint_id, .. } => ("synced", checkpoint_id),
                    CoordMsg::Inflight { checkpoint_id, .. } => ("inflight", checkpoint_id),
                    CoordMsg::Declined { checkpoint_id, .. } => ("declined", checkpoint_id),
                    CoordMsg::EndOfData { .. } => ("end_of_data", 0),
                    _ => ("other", 0),
                })
                .collect()
        }
    }

    #[test]
    fn aligned_barrier_of_a_checkpoint_aborted_before_it_came_is_dropped() {
        let mut h = Harness::new(2);
        h.abort(1);
        h.run_idle();
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, false));
        h.batch(0, &[7]);
        h.run_idle();
        // Channel 1 never delivers barrier 1: aligning it would block channel 0 for good.
        assert_eq!(h.records(), vec![7], "the batch behind the aborted barrier");
        assert!(h.snapshots().is_empty(), "{:?}", h.snapshots());
        assert!(h.task.align.is_none());
        // Barrier 1 comes on channel 1 too, late: still nothing to do.
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, false));
        h.batch(1, &[8]);
        h.run_idle();
        assert_eq!(h.records(), vec![7, 8]);
        assert!(h.snapshots().is_empty(), "{:?}", h.snapshots());
        assert_eq!(h.coord_messages(), vec![]);
        // The next checkpoint is aligned as usual.
        h.barrier(0, barrier(2, BarrierKind::Checkpoint, false));
        h.batch(0, &[9]);
        h.run_idle();
        assert_eq!(
            h.records(),
            vec![7, 8],
            "channel 0 waits for barrier 2 on channel 1"
        );
        h.barrier(1, barrier(2, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(h.records(), vec![7, 8, 9]);
        assert_eq!(h.snapshots(), vec![(2, false)]);
        assert_eq!(h.coord_messages(), vec![("synced", 2)]);
    }

    #[test]
    fn unaligned_barrier_of_a_checkpoint_aborted_before_it_came_takes_no_snapshot() {
        let mut h = Harness::new(2);
        h.abort(1);
        h.batch(1, &[1]);
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, true));
        h.batch(0, &[2]);
        h.run_idle();
        h.batch(1, &[3]);
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, true));
        h.batch(1, &[4]);
        h.run_idle();
        let mut records = h.records();
        records.sort_unstable();
        assert_eq!(records, vec![1, 2, 3, 4]);
        assert!(h.snapshots().is_empty(), "{:?}", h.snapshots());
        assert_eq!(h.coord_messages(), vec![]);
    }

    #[test]
    fn abort_while_recording_an_unaligned_checkpoint_keeps_every_record() {
        let mut h = Harness::new(2);
        h.batch(1, &[1]);
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, true));
        h.batch(0, &[2]);
        h.run_idle();
        // Snapshot taken ahead of channel 1's barrier; channel 1 is being recorded.
        assert_eq!(h.snapshots(), vec![(1, true)]);
        assert_eq!(h.coord_messages(), vec![("synced", 1)]);
        h.batch(1, &[3]);
        h.abort(1);
        h.run_idle();
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, true));
        h.batch(1, &[4]);
        h.run_idle();
        let mut records = h.records();
        records.sort_unstable();
        assert_eq!(records, vec![1, 2, 3, 4]);
        assert!(h.task.align.is_none());
        // No in-flight records are sent for the aborted checkpoint.
        assert_eq!(h.coord_messages(), vec![]);
    }

    #[test]
    fn aborting_a_newer_checkpoint_leaves_an_older_savepoint_alone() {
        let mut h = Harness::new(2);
        let savepoint = BarrierKind::Savepoint {
            stop: false,
            format: cairn_core::SavepointFormat::Canonical,
        };
        // Savepoint 1 and checkpoint 2 run at once; checkpoint 2 fails elsewhere before
        // savepoint 1's barriers reach this task.
        h.abort(2);
        h.barrier(0, barrier(1, savepoint, false));
        h.batch(0, &[5]);
        h.run_idle();
        assert_eq!(h.records(), Vec::<u64>::new(), "aligning savepoint 1");
        h.barrier(1, barrier(1, savepoint, false));
        h.run_idle();
        assert_eq!(h.records(), vec![5]);
        assert_eq!(h.snapshots(), vec![(1, false)]);
        // Checkpoint 2's barriers are dropped.
        h.barrier(0, barrier(2, BarrierKind::Checkpoint, false));
        h.batch(0, &[6]);
        h.run_idle();
        assert_eq!(h.records(), vec![5, 6]);
        assert_eq!(h.snapshots(), vec![(1, false)]);
        assert_eq!(h.coord_messages(), vec![("synced", 1)]);
    }

    #[test]
    fn newer_barrier_on_an_aligned_channel_waits_for_the_alignment_in_progress() {
        let mut h = Harness::new(2);
        let savepoint = BarrierKind::Savepoint {
            stop: false,
            format: cairn_core::SavepointFormat::Canonical,
        };
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, false));
        h.run_idle();
        // Channel 0 is blocked at barrier 1, but the event lane overtakes its data: the
        // barrier of savepoint 2 is announced before channel 1 brings barrier 1.
        h.batch(0, &[1]);
        h.barrier(0, barrier(2, savepoint, false));
        h.run_idle();
        assert_eq!(h.records(), Vec::<u64>::new());
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(
            h.snapshots(),
            vec![(1, false)],
            "checkpoint 1 completes here"
        );
        assert_eq!(h.records(), vec![1]);
        h.barrier(1, barrier(2, savepoint, false));
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, false), (2, false)]);
        assert_eq!(h.coord_messages(), vec![("synced", 1), ("synced", 2)]);
    }

    #[test]
    fn alignment_is_given_up_when_a_channel_skips_its_barrier() {
        let mut h = Harness::new(2);
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, false));
        h.run_idle();
        // Channel 1's sender never forwarded barrier 1 (it gave it up): barrier 2 comes first.
        h.batch(1, &[1]);
        h.barrier(1, barrier(2, BarrierKind::Checkpoint, false));
        h.run_idle();
        h.barrier(0, barrier(2, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(h.records(), vec![1]);
        assert_eq!(h.snapshots(), vec![(2, false)]);
        assert_eq!(h.coord_messages(), vec![("declined", 1), ("synced", 2)]);
    }

    /// A task finishes once every channel has ended, not before; a barrier that an ended
    /// upstream forwards on the event lane only is aligned at once, and the snapshots taken
    /// after the task finished mark it finished.
    #[test]
    fn a_task_finishes_when_every_channel_ended_and_then_snapshots_as_finished() {
        let mut h = Harness::new(2);
        h.batch(0, &[1]);
        h.end(0);
        h.batch(1, &[2]);
        h.run_idle();
        assert!(h.ends().is_empty(), "channel 1 is still open");
        h.barrier_after_end(0, barrier(1, BarrierKind::Checkpoint, false));
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, false));
        h.batch(1, &[3]);
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, false)]);
        assert_eq!(h.finished_snapshots(), vec![false]);
        h.end(1);
        h.run_idle();
        assert_eq!(h.records(), vec![1, 2, 3]);
        assert_eq!(h.ends(), vec!["finish"]);
        h.barrier_after_end(0, barrier(2, BarrierKind::Checkpoint, false));
        h.barrier_after_end(1, barrier(2, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, false), (2, false)]);
        assert_eq!(h.finished_snapshots(), vec![false, true]);
        assert_eq!(
            h.coord_messages(),
            vec![("synced", 1), ("end_of_data", 0), ("synced", 2)]
        );
        assert_eq!(h.ends(), vec!["finish"], "finish runs once");
    }

    /// The final checkpoint is triggered on the task directly; a task whose input has not
    /// ended declines it, a finished one snapshots at once (and drops that barrier if an
    /// upstream forwards it too).
    #[test]
    fn a_direct_trigger_snapshots_a_finished_task_and_is_declined_before() {
        let mut h = Harness::new(1);
        let mut final_barrier = barrier(3, BarrierKind::Checkpoint, false);
        final_barrier.to_every_task = true;
        h.batch(0, &[1]);
        h.trigger(final_barrier);
        h.run_idle();
        assert_eq!(h.coord_messages(), vec![("declined", 3)]);
        h.end(0);
        h.run_idle();
        let mut final_barrier = barrier(4, BarrierKind::Checkpoint, false);
        final_barrier.to_every_task = true;
        h.trigger(final_barrier);
        h.barrier_after_end(0, final_barrier);
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(4, false)]);
        assert_eq!(h.finished_snapshots(), vec![true]);
        assert_eq!(h.coord_messages(), vec![("end_of_data", 0), ("synced", 4)]);
    }

    /// A task restored finished ends its output without `finish`, and a snapshot taken
    /// before its input ended marks it finished already.
    #[test]
    fn a_task_restored_finished_ends_without_finish() {
        let mut h = Harness::restored(1, true);
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(h.finished_snapshots(), vec![true]);
        h.end(0);
        h.run_idle();
        assert_eq!(h.ends(), vec!["end"]);
        assert_eq!(h.coord_messages(), vec![("synced", 1), ("end_of_data", 0)]);
    }

    /// A task's watermark is the smallest of its channels' (none while a channel has sent
    /// none), forwarded behind the records before it, only when it rises; a channel that
    /// has ended stops holding it back.
    #[test]
    fn the_watermark_is_the_smallest_of_the_channels_and_an_ended_channel_stops_counting() {
        let mut h = Harness::new(2);
        h.batch(0, &[1]);
        h.watermark(0, 100);
        h.run_idle();
        assert_eq!(h.watermarks(), vec![], "channel 1 has sent no watermark");
        h.watermark(1, 50);
        h.run_idle();
        assert_eq!(h.watermarks(), vec![(1, 50)]);
        h.batch(1, &[2]);
        h.watermark(1, 200);
        h.run_idle();
        assert_eq!(h.watermarks(), vec![(1, 50), (2, 100)]);
        // A watermark that does not raise the smallest is not forwarded, nor one that
        // goes back.
        h.watermark(1, 150);
        h.watermark(0, 90);
        h.run_idle();
        assert_eq!(h.watermarks(), vec![(1, 50), (2, 100)]);
        h.watermark(0, 150);
        h.run_idle();
        assert_eq!(h.watermarks(), vec![(1, 50), (2, 100), (2, 150)]);
        h.batch(0, &[3]);
        h.end(0);
        h.run_idle();
        assert_eq!(
            h.watermarks(),
            vec![(1, 50), (2, 100), (2, 150), (3, 200)],
            "channel 0 ended: channel 1's watermark counts alone"
        );
        // The end of every channel stands for the final watermark: none is forwarded.
        h.end(1);
        h.run_idle();
        assert_eq!(h.ends(), vec!["finish"]);
        assert_eq!(h.watermarks().len(), 4);
    }

    /// An aligned checkpoint blocks a channel at its barrier, and the watermarks behind
    /// the barrier with it; a watermark sent after a channel's last batch before the
    /// barrier (it does not count in the barrier's position) is processed before the
    /// snapshot, as in Flink.
    #[test]
    fn watermarks_before_an_aligned_barrier_come_before_the_snapshot_and_those_behind_after() {
        let mut h = Harness::new(2);
        h.watermark(0, 100);
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, false));
        h.watermark(0, 500);
        h.batch(0, &[1]);
        h.watermark(1, 10);
        h.batch(1, &[2]);
        h.watermark(1, 400);
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, false));
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, false)]);
        assert_eq!(h.records(), vec![2, 1]);
        assert_eq!(h.watermarks(), vec![(0, 10), (1, 100), (1, 400)]);
        assert_eq!(
            h.seen.lock().expect("lock").watermarks_at_snapshot,
            vec![2],
            "10 and 100 before the snapshot (channel 1's 400 lifted it to channel 0's 100), \
             400 after (channel 0's 500 is behind its barrier)"
        );
    }

    /// An unaligned checkpoint takes the batches before a channel's barrier into the
    /// channel's replay queue; the watermarks between them stay in place (processed after
    /// the batches before them, never ahead of them) and are not stored with the
    /// in-flight records.
    #[test]
    fn unaligned_replay_keeps_watermarks_between_their_batches_and_does_not_store_them() {
        let mut h = Harness::new(2);
        h.watermark(0, 50);
        h.batch(1, &[1]);
        h.watermark(1, 10);
        h.batch(1, &[2]);
        h.watermark(1, 20);
        h.batch(1, &[3]);
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, true));
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, true));
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, true)]);
        assert_eq!(h.records(), vec![1, 2, 3]);
        assert_eq!(h.watermarks(), vec![(1, 10), (2, 20)]);
        let stored: Vec<usize> = h
            .coord
            .try_iter()
            .filter_map(|m| match m {
                CoordMsg::Inflight { state, .. } => Some(state.map_or(0, |s| s.elements.len())),
                _ => None,
            })
            .collect();
        assert_eq!(stored, vec![3], "the three records, no watermark");
    }

    /// A channel that has ended still holds the watermark back while batches it sent wait
    /// in its replay queue.
    #[test]
    fn an_ended_channel_holds_the_watermark_back_until_its_replayed_batches_are_processed() {
        let mut h = Harness::new(2);
        h.watermark(0, 100);
        h.batch(1, &[1]);
        h.watermark(1, 10);
        h.batch(1, &[2]);
        h.end(1);
        h.barrier_after_end(1, barrier(1, BarrierKind::Checkpoint, true));
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, true));
        h.run_idle();
        assert_eq!(h.snapshots(), vec![(1, true)]);
        assert_eq!(h.records(), vec![1, 2]);
        assert_eq!(h.watermarks(), vec![(1, 10), (2, 100)]);
    }

    /// An unaligned checkpoint stores each in-flight record with its timestamp (or none),
    /// and a task restored from it replays them with their timestamps.
    #[test]
    fn in_flight_records_are_stored_and_replayed_with_their_timestamps() {
        let mut h = Harness::new(2);
        h.stamped_batch(1, &[(1, Some(100)), (2, None), (3, Some(u64::MAX))]);
        h.batch(1, &[4]);
        h.barrier(1, barrier(1, BarrierKind::Checkpoint, true));
        h.barrier(0, barrier(1, BarrierKind::Checkpoint, true));
        h.run_idle();
        let expected = vec![(1, Some(100)), (2, None), (3, Some(u64::MAX)), (4, None)];
        let processed = |h: &Harness| {
            let seen = h.seen.lock().expect("lock");
            let pairs = seen
                .records
                .iter()
                .copied()
                .zip(seen.timestamps.iter().copied());
            pairs.collect::<Vec<_>>()
        };
        assert_eq!(processed(&h), expected, "processed with their timestamps");
        let codec = InflightCodec::<u64>::new();
        let stored: Vec<(u64, Option<u64>)> = h
            .coord
            .try_iter()
            .filter_map(|m| match m {
                CoordMsg::Inflight { state, .. } => state,
                _ => None,
            })
            .flat_map(|s| {
                let layout = codec.decoder(&s.codec).expect("the in-flight codec");
                assert_eq!(layout, crate::inflight::Layout::Timestamped);
                s.elements
                    .iter()
                    .map(|e| codec.decode(layout, e).expect("decode"))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(stored, expected, "stored with their timestamps");
        let mut restored = Harness::build(1, false, stored);
        restored.task.replay_restored().expect("replay");
        assert_eq!(
            processed(&restored),
            expected,
            "replayed with their timestamps"
        );
    }
}
