//! A minimal streaming runtime on Cairn's state backends.
//!
//! A job is a dataflow — replayable [`Source`]s, non-keyed operators, `key_by`
//! exchanges into keyed operators with state in a [`cairn_core::KeyedStateBackend`], and a
//! [`Sink`], with side outputs ([`side`]) branching into streams with sinks of their own
//! and unions ([`Stream::union`]), connections ([`connect`]) and broadcast connections
//! ([`broadcast`]) joining streams —
//! run at a given parallelism, one thread per subtask, with bounded channels
//! between stages (backpressure). Operators between two exchanges are chained in one task.
//!
//! Checkpoints follow Chandy–Lamport: the coordinator injects barriers at the sources;
//! tasks align them (exactly-once), or not (at-least-once), or let them overtake in-flight
//! records, which are then stored in the checkpoint (unaligned). The synchronous phase runs
//! on the task thread and the barrier is forwarded right after it; the asynchronous phase
//! runs on worker threads; the coordinator publishes the manifest when every part is in and
//! then notifies the tasks (two-phase-commit sinks commit). A failed task restarts the job
//! from the latest completed checkpoint.
//!
//! Keyed state can expire, as with Flink's state TTL: a [`KeyedProcessFunction`] registers
//! a state with a TTL in `open` through [`cairn_core::TtlStateAccess`] (implemented by every
//! backend), configured by a [`cairn_core::StateTtlConfig`] (the duration, when an entry's
//! stamp is refreshed, whether expired entries are visible, the background cleanup). Stamps
//! are in snapshots and survive restores. TTL is processing time by the config's clock,
//! which must not go back; a clock kept in a function is shared by every subtask the
//! function is cloned into, so give each subtask its own, made in `open`
//! ([`cairn_core::TtlClock`] has the rules).
//!
//! Keyed process functions have processing-time timers ([`timers`], Flink's
//! `TimerService`): `process` registers them for its key, and `on_timer` runs when the
//! job's processing clock ([`JobConfig::processing_clock`]) reaches them. They are keyed
//! state, so checkpoints, savepoints, rescaling and backend switches carry them.
//!
//! Event time ([`watermarks`]): [`Stream::assign_timestamps_and_watermarks`] gives each
//! record its timestamp, which travels with it from then on ([`Collector::timestamp`]),
//! and emits watermarks behind them; they flow to every downstream
//! subtask, a task's watermark is the smallest of its inputs', and a keyed operator fires
//! its event-time timers as its watermark passes them, and all of them at the end of the
//! input. [`KeyedStream::window`] groups a keyed stream into tumbling, sliding, session,
//! global or count windows of event or processing time, with a reduce, aggregate or
//! process function, Flink's triggers and evictors or one's own ([`windows`]);
//! [`Stream::window_all`] does so for a whole stream.
//!
//! Exchanges partition as Flink's do: by key, round robin, rescaled, shuffled, to one
//! subtask, by a custom partitioner, or broadcast. [`Stream::unordered_wait`] and
//! [`Stream::ordered_wait`] call external services asynchronously ([`asyncio`], Flink's
//! `AsyncDataStream`), with the calls in flight kept in checkpoints.
//!
//! ```no_run
//! use cairn_runtime::{source, sinks::DiscardSink, sources::GeneratorSource, Job, JobConfig};
//! # fn main() -> cairn_runtime::Result<()> {
//! // 1M records over 1000 keys; per key, the running sum of its records.
//! let graph = source("source", GeneratorSource::new(1_000_000, 1000, 42))
//!     .key_by(|k: &u64| *k)
//!     .sum("sum")
//!     .sink("sink", DiscardSink);
//! let result = Job::new(graph, JobConfig::default()).run()?;
//! println!("{} records", result.records);
//! # Ok(())
//! # }
//! ```

pub mod asyncio;
pub mod broadcast;
mod chain;
pub mod config;
pub mod connect;
mod coordinator;
mod error;
pub mod function;
pub mod functions;
mod graph;
pub mod inflight;
mod job;
pub mod joins;
pub mod metrics;
pub mod side;
pub mod sinks;
pub mod sources;
pub mod stats;
mod task;
pub mod timers;
pub mod watermarks;
pub mod windows;

pub use broadcast::{
    BroadcastConnectedStreams, BroadcastProcessFunction, BroadcastState, BroadcastStateDescriptor,
    BroadcastStream, KeyedBroadcastConnectedStreams, KeyedBroadcastProcessFunction, KeyedStates,
};
/// The format of a savepoint ([`JobConfig::savepoint_format`],
/// [`JobHandle::trigger_savepoint_as`]).
pub use cairn_core::SavepointFormat;
pub use chain::FINISHED_STATE;
pub use config::{
    ChangelogOptions, CheckpointConfig, CheckpointRetention, CheckpointingMode, JobConfig,
    RestartStrategy, RestoreFrom, RestoreMode, SnapshotMode, StateBackendConfig,
};
pub use connect::{
    CoProcessFunction, ConnectedKeyedStreams, ConnectedStreams, Either, KeyedCoProcessFunction,
};
pub use error::{Result, RuntimeError};
pub use function::{
    Checkpointed, Collector, Data, InitContext, Key, KeyedProcessFunction, ProcessFunction, Sink,
    SinkContext, SnapshotContext, Source, SourceStatus, SubtaskInfo,
};
pub use graph::{source, JobGraph, KeyedStream, Stream};
pub use job::{Job, JobHandle, JobResult};
pub use joins::{
    FnJoin, IntervalJoin, IntervalJoined, JoinContext, JoinStreams, JoinWindows, KeyedJoin,
    ProcessJoinFunction, WindowJoin,
};
pub use metrics::{
    Counter, Histogram, HistogramStatistics, JsonLinesReporter, Meter, MetricGroup, MetricReporter,
    MetricValue, Metrics, MetricsConfig,
};
pub use side::OutputTag;
pub use stats::CheckpointStats;
pub use task::INFLIGHT_STATE;
pub use timers::{ProcessingClock, TimeDomain, Timer, TimerService};
pub use watermarks::WatermarkStrategy;
pub use windows::custom::{Trigger, TriggerContext, TriggerResult};
pub use windows::evictors::{CountEvictor, DeltaEvictor, Evictor, TimeEvictor};
pub use windows::triggers::{
    ContinuousEventTimeTrigger, ContinuousProcessingTimeTrigger, CountTrigger, EventTimeTrigger,
    ProcessingTimeTrigger, PurgingTrigger,
};
pub use windows::{
    DynamicGap, EventTimeSessionWindows, FixedGap, FnWindow, GlobalWindows, KeyedStateStore,
    ProcessWindowFunction, ProcessingTimeSessionWindows, SessionGap, SessionWindows,
    SlidingEventTimeWindows, SlidingProcessingTimeWindows, TimeWindow, TumblingEventTimeWindows,
    TumblingProcessingTimeWindows, WindowAssigner, WindowContext, WindowStates, WindowTrigger,
    WindowedStream, Windows,
};
