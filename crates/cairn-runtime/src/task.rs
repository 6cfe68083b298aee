//! Task loops: a source task drives a source and its chain; an input task reads its input
//! channels, aligns barriers (or not), and drives its chain.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{BincodeCodec, Codec, KeyGroupRange, OperatorStateSnapshot, Redistribution};
use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};

use crate::chain::{
    Barrier, BarrierKind, Chain, DataMsg, Notification, OpSetup, SyncPhase, TaskEvent, TaskShared,
};
use crate::config::CheckpointingMode;
use crate::coordinator::{CoordMsg, TaskId};
use crate::error::{Result, RuntimeError};
use crate::function::{Collector, Source, SourceStatus};

/// The name of the operator state that holds a task's in-flight input records in an
/// unaligned checkpoint (on the task's first operator).
pub const INFLIGHT_STATE: &str = "cairn.inflight";

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
}

/// What a task needs to talk to the coordinator.
pub(crate) struct TaskLink {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) events: Receiver<TaskEvent>,
    pub(crate) coord: Sender<CoordMsg>,
    pub(crate) shared: Arc<TaskShared>,
}

impl TaskLink {
    /// The synchronous phase that started at `started` is done.
    fn synced(&self, id: u64, started: Instant, sync: SyncPhase) {
        self.synced_with(id, started, sync, false);
    }

    /// `inflight_follows`: an [`CoordMsg::Inflight`] message completes this task's part.
    fn synced_with(&self, id: u64, started: Instant, sync: SyncPhase, inflight_follows: bool) {
        let SyncPhase { parts, forward } = sync;
        // The coordinator outlives every task of its run.
        let _ = self.coord.send(CoordMsg::Synced {
            attempt: self.attempt,
            task: self.id,
            checkpoint_id: id,
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

/// Counts records on their way from a source into its chain.
struct Counted<T> {
    next: Box<dyn Chain<T>>,
    count: u64,
}

impl<T> Chain<T> for Counted<T> {
    #[inline]
    fn push(&mut self, record: T) -> Result<()> {
        self.count += 1;
        self.next.push(record)
    }
    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.next.snapshot(barrier, sync)
    }
    fn notify(&mut self, n: Notification) -> Result<()> {
        self.next.notify(n)
    }
    fn finish(&mut self) -> Result<()> {
        self.next.finish()
    }
    fn flush(&mut self) -> Result<()> {
        self.next.flush()
    }
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
}

impl<S: Source> SourceTask<S> {
    pub(crate) fn new(
        mut setup: OpSetup,
        mut source: S,
        chain: Box<dyn Chain<S::Out>>,
        link: TaskLink,
        limits: SourceLimits,
    ) -> Result<Self> {
        let range = KeyGroupRange::for_subtask(
            setup.info.max_parallelism,
            setup.info.parallelism,
            setup.info.index,
        )
        .map_err(|e| RuntimeError::state(&setup.uid, e))?;
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
        })
    }

    fn snapshot(&mut self, barrier: &Barrier) -> Result<()> {
        let t = Instant::now();
        let mut sync = SyncPhase::default();
        self.setup
            .snapshot(&mut self.source, barrier, self.range, None, &mut sync)?;
        self.chain.snapshot(barrier, &mut sync)?;
        self.link.synced(barrier.id, t, sync);
        Ok(())
    }

    /// Handles one event; `Ok(true)`: the task is done.
    fn on_event(&mut self, ev: TaskEvent, stopped: &mut bool) -> Result<bool> {
        match ev {
            TaskEvent::Trigger(b) => {
                self.snapshot(&b)?;
                if b.kind == (BarrierKind::Savepoint { stop: true }) {
                    *stopped = true;
                }
            }
            TaskEvent::Notify(n) => {
                self.setup.notify(&mut self.source, n)?;
                self.chain.notify(n)?;
            }
            TaskEvent::EndInput => {
                self.chain.finish()?;
                return Ok(true);
            }
            TaskEvent::Resume => *stopped = false,
            TaskEvent::Cancel => return Err(RuntimeError::Cancelled),
            TaskEvent::Barrier { .. } => {}
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
        let mut ended = false;
        let mut stopped = false;
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
            let mut idle = ended || stopped;
            if !idle {
                let max = self.allowance(started);
                if max == 0 {
                    idle = true;
                } else {
                    let before = self.chain.count;
                    let status = {
                        let mut out = Collector {
                            next: &mut self.chain,
                        };
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
                            ended = true;
                            idle = true;
                            let _ = self.link.coord.send(CoordMsg::SourceFinished {
                                attempt: self.link.attempt,
                                task: self.link.id,
                            });
                        }
                    }
                }
            }
            if idle {
                self.chain.flush()?;
                let wait = if ended || stopped {
                    Duration::from_millis(50)
                } else {
                    Duration::from_millis(1)
                };
                match self.link.events.recv_timeout(wait) {
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
    pub(crate) codec: BincodeCodec<X>,
    /// Union for keyed inputs (each new subtask keeps its key groups), split otherwise.
    pub(crate) mode: Redistribution,
    /// The task's first operator, which carries the state.
    pub(crate) uid: String,
}

struct InChannel<X> {
    rx: Receiver<DataMsg<X>>,
    /// Batches taken from `rx`.
    received: u64,
    ended: bool,
    /// Barriers announced on this channel, with the batch count before each.
    announced: VecDeque<(Barrier, u64)>,
    /// Batches taken from `rx` early (unaligned checkpoints), processed before `rx`.
    replay: VecDeque<Vec<X>>,
    /// The newest barrier announced on this channel (by event or by marker).
    last_announced: u64,
}

impl<X> InChannel<X> {
    /// Stopped at an announced barrier: every batch before it has been taken.
    fn at_barrier(&self) -> bool {
        self.announced
            .front()
            .is_some_and(|(_, seq)| self.received >= *seq)
    }
}

/// What [`InputTask::take`] found.
enum Taken<X> {
    Batch(Vec<X>),
    /// A barrier marker or the end of the channel.
    State,
    Nothing,
}

/// A checkpoint this task is aligning.
struct Align {
    barrier: Barrier,
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
    restored: Vec<X>,
    align: Option<Align>,
    /// Barriers with ids up to this one are done here (snapshotted or given up).
    last_handled: u64,
    next_read: usize,
}

impl<X: crate::function::Data> InputTask<X> {
    pub(crate) fn new(
        chain: Box<dyn Chain<X>>,
        inputs: Vec<Receiver<DataMsg<X>>>,
        link: TaskLink,
        config: AlignConfig,
        inflight: InflightConfig<X>,
        restored: Vec<X>,
    ) -> Self {
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
                })
                .collect(),
            link,
            config,
            inflight,
            restored,
            align: None,
            last_handled: 0,
            next_read: 0,
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
                        Self::record(&self.inflight.codec, &batch, &mut a.inflight)?;
                    }
                }
                Ok(Taken::Batch(batch))
            }
            Ok(DataMsg::Barrier(b)) => {
                self.announce(i, b, self.channels[i].received);
                Ok(Taken::State)
            }
            Ok(DataMsg::End) => {
                self.channels[i].ended = true;
                Ok(Taken::State)
            }
            Err(TryRecvError::Empty) => Ok(Taken::Nothing),
            Err(TryRecvError::Disconnected) => Err(RuntimeError::Cancelled),
        }
    }

    /// Barrier `b` stands after `seq` batches of channel `i` (told by the event lane or by
    /// the marker in the data, whichever comes first).
    fn announce(&mut self, i: usize, b: Barrier, seq: u64) {
        let last_handled = self.last_handled;
        if let Some(c) = self.channels.get_mut(i) {
            if b.id > last_handled && b.id > c.last_announced {
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

    fn record(codec: &BincodeCodec<X>, batch: &[X], into: &mut Vec<Vec<u8>>) -> Result<()> {
        for r in batch {
            let bytes = codec
                .encode_to_vec(r)
                .map_err(|e| RuntimeError::Checkpoint {
                    checkpoint_id: 0,
                    reason: format!("cannot encode an in-flight record: {e}"),
                })?;
            into.push(bytes);
        }
        Ok(())
    }

    fn process(&mut self, batch: Vec<X>) -> Result<()> {
        self.chain.push_batch(batch)
    }

    fn drain_events(&mut self) -> Result<()> {
        loop {
            match self.link.events.try_recv() {
                Ok(ev) => self.on_event(ev)?,
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(RuntimeError::Cancelled),
            }
        }
    }

    fn on_event(&mut self, ev: TaskEvent) -> Result<()> {
        match ev {
            TaskEvent::Barrier {
                channel,
                barrier,
                seq,
            } => self.announce(channel, barrier, seq),
            TaskEvent::Notify(n) => {
                if let Notification::Aborted(id) = n {
                    if self.align.as_ref().is_some_and(|a| a.barrier.id == id) {
                        self.align = None;
                        self.last_handled = self.last_handled.max(id);
                    }
                }
                self.chain.notify(n)?;
            }
            TaskEvent::Cancel => return Err(RuntimeError::Cancelled),
            TaskEvent::Trigger(_) | TaskEvent::EndInput | TaskEvent::Resume => {}
        }
        Ok(())
    }

    fn drop_stale(&mut self) {
        let last = self.last_handled;
        for c in &mut self.channels {
            while c.announced.front().is_some_and(|(b, _)| b.id <= last) {
                c.announced.pop_front();
            }
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
                    Self::record(&self.inflight.codec, &b, &mut a.inflight)?;
                    c.replay.push_back(b);
                }
                // Markers of barriers announced already (by their events).
                Ok(DataMsg::Barrier(_)) => {}
                Ok(DataMsg::End) => c.ended = true,
                Err(RecvTimeoutError::Timeout) => {
                    if self.link.shared.cancelled() {
                        return Err(RuntimeError::Cancelled);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(RuntimeError::Cancelled),
            }
        }
        Ok(())
    }

    fn progress(&mut self) -> Result<()> {
        self.drop_stale();
        let newest = self
            .channels
            .iter()
            .filter_map(|c| c.announced.front().map(|(b, _)| *b))
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
                    } else if !(self.channels[i].received >= seq
                        && self.channels[i].replay.is_empty())
                    {
                        continue;
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
            for batch in &self.channels[i].replay {
                Self::record(&self.inflight.codec, batch, &mut a.inflight)?;
            }
            a.recording[i] = true;
        }
        let t = Instant::now();
        let mut barrier = a.barrier;
        barrier.unaligned = true;
        let mut sync = SyncPhase::default();
        self.chain.snapshot(&barrier, &mut sync)?;
        // The asynchronous phase starts now; the in-flight records follow when every
        // channel's barrier has come.
        self.link.synced_with(a.barrier.id, t, sync, true);
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
            let mut sync = SyncPhase::default();
            self.chain.snapshot(&a.barrier, &mut sync)?;
            self.link.synced(id, t, sync);
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
                    if let Taken::Batch(batch) = self.take(i)? {
                        self.channels[i].replay.push_back(batch);
                    }
                }
                if let Some(batch) = self.channels[i].replay.pop_front() {
                    self.next_read = i + 1;
                    self.process(batch)?;
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
                Taken::State => return Ok(true),
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
        let _ = sel.ready_timeout(timeout);
        Ok(())
    }
}

impl<X: crate::function::Data> Task for InputTask<X> {
    fn run(mut self: Box<Self>) -> Result<()> {
        for r in std::mem::take(&mut self.restored) {
            self.chain.push(r)?;
        }
        loop {
            self.drain_events()?;
            self.progress()?;
            if self.align.is_none() && self.channels.iter().all(|c| c.ended && c.replay.is_empty())
            {
                self.chain.finish()?;
                return Ok(());
            }
            if !self.read_one()? {
                self.chain.flush()?;
                self.wait()?;
            }
        }
    }
}
