//! What user code implements: sources, processing functions (keyed and not), sinks, and
//! the checkpoint hooks they share.

use std::hash::Hash;

use cairn_core::{KeyedStateBackend, OperatorStateBackend};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::chain::Chain;
use crate::error::Result;
use crate::metrics::MetricGroup;
use crate::side::{OutputTag, SideOutputs};
use crate::timers::{Timer, TimerService};

/// Records that flow between operators: cloneable, shareable between task threads, and
/// serializable (unaligned checkpoints store in-flight records).
pub trait Data: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Data for T {}

/// Keys of a keyed stream: serialized once per record with the key codec; the key group
/// comes from those bytes.
pub trait Key: Data + Eq + Hash + Sync {}
impl<T: Data + Eq + Hash + Sync> Key for T {}

/// Which subtask an operator instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubtaskInfo {
    /// This subtask's index.
    pub index: u32,
    /// The operator's parallelism.
    pub parallelism: u32,
    /// The job's max parallelism.
    pub max_parallelism: u32,
    /// How many times the job restarted in this process before this instance was made.
    pub attempt: u32,
}

/// Given to [`Checkpointed::initialize_state`] when an operator instance starts.
#[derive(Debug)]
pub struct InitContext<'a> {
    /// The operator's operator state, already holding this subtask's restored share.
    pub operator_state: &'a mut OperatorStateBackend,
    /// Whether the job was restored from a snapshot that has this operator.
    pub is_restored: bool,
    /// Which subtask this is.
    pub subtask: SubtaskInfo,
    /// A nonce unique to this run of the job (process and restart attempt), for naming files.
    pub run_id: &'a str,
    /// Whether the job checkpoints (a 2PC sink commits on completion; otherwise at the end).
    pub checkpointing: bool,
    /// Where the operator registers its own metrics (Flink's
    /// `getRuntimeContext().getMetricGroup()`): counters, gauges, meters and histograms
    /// scoped `<uid>.<subtask>`; keep what it returns in a field. See [`crate::metrics`].
    pub metrics: &'a MetricGroup,
}

/// Given to [`Checkpointed::snapshot_state`] in the synchronous phase of a snapshot.
#[derive(Debug)]
pub struct SnapshotContext<'a> {
    /// The operator's operator state: write what the snapshot should hold.
    pub operator_state: &'a mut OperatorStateBackend,
    /// The checkpoint (or savepoint) id.
    pub checkpoint_id: u64,
    /// Whether this is a savepoint.
    pub is_savepoint: bool,
}

/// Checkpoint hooks (Flink's `CheckpointedFunction` and `CheckpointListener`); every
/// method has a default that does nothing.
pub trait Checkpointed {
    /// Called once per instance before any record: register operator state (restored
    /// elements are already there). In a [`KeyedProcessFunction`] it runs first, before
    /// [`KeyedProcessFunction::open`]: keep what `open` needs from `ctx` (the subtask,
    /// whether the state was restored) in a field.
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// The synchronous phase: put what must survive a failure into operator state.
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
    /// Checkpoint `checkpoint_id` completed (its manifest is durable).
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
    /// Checkpoint `checkpoint_id` will never complete.
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        let _ = checkpoint_id;
        Ok(())
    }
}

/// Where a function emits records: the next operator of the chain, called directly.
///
/// It also holds the timestamp of the record being processed (Flink's
/// `Context.timestamp()`), which [`Collector::collect`] gives to every record it emits.
pub struct Collector<'a, T> {
    next: &'a mut dyn Chain<T>,
    timestamp: Option<u64>,
    /// The operator's side outputs that some stream reads.
    sides: Option<&'a mut SideOutputs>,
}

impl<T> std::fmt::Debug for Collector<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

impl<'a, T> Collector<'a, T> {
    /// A collector into `next` for a record with `timestamp`.
    pub(crate) fn new(next: &'a mut dyn Chain<T>, timestamp: Option<u64>) -> Self {
        Self {
            next,
            timestamp,
            sides: None,
        }
    }

    /// [`Collector::new`] for an operator with side outputs.
    pub(crate) fn with_sides(
        next: &'a mut dyn Chain<T>,
        timestamp: Option<u64>,
        sides: &'a mut SideOutputs,
    ) -> Self {
        Self {
            next,
            timestamp,
            sides: Some(sides),
        }
    }

    /// Emits `record` into the side output `tag` (Flink's `Context.output`), with the
    /// timestamp of the record being processed; [`crate::Stream::side_output`] reads it.
    /// Dropped when no stream reads the tag (and in a source's `poll`), as in Flink.
    pub fn output<X: Data>(&mut self, tag: &OutputTag<X>, record: X) -> Result<()> {
        match &mut self.sides {
            Some(sides) => sides.push(tag, record, self.timestamp),
            None => Ok(()),
        }
    }

    /// Emits one record downstream, with the timestamp of the record being processed
    /// ([`Collector::timestamp`]).
    #[inline]
    pub fn collect(&mut self, record: T) -> Result<()> {
        self.next.push(record, self.timestamp)
    }

    /// Emits one record downstream with the event time `timestamp` (milliseconds), as
    /// Flink's `collectWithTimestamp` (a source) or `setAbsoluteTimestamp` (an operator)
    /// do. An assigner downstream replaces it with its own.
    #[inline]
    pub fn collect_with_timestamp(&mut self, record: T, timestamp: u64) -> Result<()> {
        self.next.push(record, Some(timestamp))
    }

    /// Gives what [`Collector::collect`] emits from now on `timestamp` (a window's
    /// result gets the window's last millisecond).
    pub(crate) fn set_timestamp(&mut self, timestamp: Option<u64>) {
        self.timestamp = timestamp;
    }

    /// The event time of the record being processed, in milliseconds (Flink's
    /// `Context.timestamp()`): what an assigner upstream
    /// ([`crate::Stream::assign_timestamps_and_watermarks`]) or a function emitting it with
    /// [`Collector::collect_with_timestamp`] gave it, carried through every operator and
    /// exchange since. `None` when the record has none (no assigner upstream), in a
    /// source's `poll`, in a function's `finish`, and in `on_timer` of a processing-time
    /// timer; in `on_timer` of an event-time timer it is the timer's time.
    #[inline]
    pub fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

/// What [`Source::poll`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceStatus {
    /// More records may follow at once.
    More,
    /// Nothing to emit right now; poll again soon.
    Idle,
    /// The (bounded) source is exhausted.
    End,
}

/// A replayable source. Each subtask has its own instance (cloned from the one given to the
/// job); its position lives in operator state, so a restore rewinds it.
pub trait Source: Checkpointed + Clone + Send + 'static {
    /// The records it emits.
    type Out: Data;
    /// Emits up to `max` records.
    fn poll(&mut self, out: &mut Collector<'_, Self::Out>, max: usize) -> Result<SourceStatus>;
}

/// A non-keyed function from records to zero or more records, with checkpoint hooks.
pub trait ProcessFunction<In, Out>: Checkpointed + Clone + Send + 'static {
    /// Processes one record.
    fn process(&mut self, input: In, out: &mut Collector<'_, Out>) -> Result<()>;
    /// The input ended (bounded input): emit what is left.
    fn finish(&mut self, out: &mut Collector<'_, Out>) -> Result<()> {
        let _ = out;
        Ok(())
    }
}

/// A function on a keyed stream, with keyed state in the backend. The backend's current
/// key is the record's key while [`KeyedProcessFunction::process`] runs.
pub trait KeyedProcessFunction: Checkpointed + Clone + Send + 'static {
    /// The key type.
    type Key: Key;
    /// Input records.
    type In: Data;
    /// Output records.
    type Out: Data;
    /// Handles to registered states (e.g. a `ValueStateId`), made by
    /// [`KeyedProcessFunction::open`].
    type State: Send + 'static;
    /// Registers the keyed states (restored entries are checked against the descriptors).
    ///
    /// Called once per instance, before any record and after
    /// [`Checkpointed::initialize_state`], whose [`InitContext`] says which subtask this is
    /// ([`InitContext::subtask`]) and whether the job was restored from a checkpoint or
    /// savepoint holding this operator ([`InitContext::is_restored`]: true after a restart
    /// from a checkpoint, false on a fresh start or a restart that started over): keep
    /// them there for `open`. The backend already holds the restored state of this
    /// subtask's key groups ([`KeyedStateBackend::key_group_range`]).
    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State>;
    /// Processes one record of `key`. `timers` registers timers for `key`
    /// ([`crate::timers`]).
    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        input: Self::In,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;

    /// Processes a record that has no key: only the broadcast input of a keyed broadcast
    /// connection ([`crate::broadcast`]) has them, and its adapter implements this. Other
    /// functions never get one; the default refuses it.
    #[doc(hidden)]
    fn process_unkeyed<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        input: Self::In,
        backend: &mut B,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (state, input, backend, out);
        Err(crate::error::RuntimeError::Config(
            "a record without a key reached a keyed operator".into(),
        ))
    }

    /// A timer of `key` fired (Flink's `onTimer`): `key` is the backend's current key, and
    /// the timer is already gone from state; `timers` may register new ones. The default
    /// does nothing.
    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (state, key, timer, backend, timers, out);
        Ok(())
    }
}

/// A sink: the end of a dataflow. Each subtask has its own instance.
pub trait Sink<In>: Checkpointed + Clone + Send + 'static {
    /// Writes one record.
    fn write(&mut self, record: In) -> Result<()>;
    /// Writes one record, knowing its timestamp and the sink's watermark (Flink's
    /// `SinkWriter.write(element, context)`); by default [`Sink::write`]. A sink that
    /// uses the context implements this, and `write` as this with
    /// [`SinkContext::default`].
    fn write_with_context(&mut self, record: In, context: &SinkContext) -> Result<()> {
        let _ = context;
        self.write(record)
    }
    /// The input ended; everything written must now be (or become, at the final
    /// checkpoint's completion) visible.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a sink knows about the record it writes (Flink's `SinkWriter.Context`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkContext {
    /// The record's timestamp ([`Collector::timestamp`]), if it has one.
    pub timestamp: Option<u64>,
    /// The newest watermark the sink's task has passed on to it, if any: a window's result
    /// arrives before the watermark that fired it. The end of the input stands for the
    /// final watermark, which is not passed on (what operators emit at the end arrives
    /// with the last watermark before it).
    pub watermark: Option<u64>,
}

/// Adapts a closure `FnMut(In, &mut Collector<Out>)` as a [`ProcessFunction`].
#[derive(Clone, Debug)]
pub struct FnProcess<F>(pub F);

impl<F> Checkpointed for FnProcess<F> {}

impl<In, Out, F> ProcessFunction<In, Out> for FnProcess<F>
where
    F: FnMut(In, &mut Collector<'_, Out>) -> Result<()> + Clone + Send + 'static,
{
    fn process(&mut self, input: In, out: &mut Collector<'_, Out>) -> Result<()> {
        (self.0)(input, out)
    }
}
