//! The dataflow API: sources, operators, exchanges (`key_by` and the partitionings of
//! Flink's `DataStream`: `rebalance`, `rescale`, `shuffle`, `global`, `partition_custom`,
//! `broadcast`; `forward` is chaining), unions and sinks. Operators between exchanges run
//! chained in one task per subtask. The stages form a directed acyclic graph from the
//! sources: an operator's side outputs ([`crate::side`]) are exchanges into stages of their
//! own, each ending in its own sink, and a union ([`Stream::union`]) is a stage that reads
//! several exchanges, whose channels it numbers one after the other (barriers align, and
//! watermarks combine, over all of them). Every exchange connects each sending subtask
//! with each receiving one; a partitioning picks which channels carry records, while
//! barriers, watermarks and the end of input go on all of them.

use std::any::Any;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cairn_changelog::{ChangelogBackend, ChangelogConfig, ChangelogOptions};
use cairn_core::{
    key_group_for_key, redistribute, BincodeCodec, Codec, KeyGroupRange, KeyedStateBackend,
    OperatorStateBackend, OperatorStateSnapshot, Redistribution, SnapshotSource,
    ValueStateDescriptor, ValueStateId,
};
use cairn_format::Manifest;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig};
use cairn_storage::restore_subtask;
use crossbeam_channel::{Receiver, Sender};

use crate::broadcast::{BroadcastConnectedStreams, BroadcastStream};
use crate::chain::{
    custom_out_of_range, BroadcastOut, Chain, CustomRoute, DataMsg, ExchangeOut, GlobalRoute,
    KeyRoute, KeyedOp, MapItem, MaybeKeyed, OpSetup, PartitionFn, ProcessOp, RebalanceRoute,
    RescaleRoute, Route, ShuffleRoute, SinkOp, TaskEvent, TaskShared, FINISHED_STATE,
};
use crate::config::StateBackendConfig;
use crate::connect::{ConnectedStreams, Either};
use crate::error::{Result, RuntimeError};
use crate::function::{
    Checkpointed, Collector, Data, FnProcess, Key, KeyedProcessFunction, ProcessFunction, Sink,
    Source, SubtaskInfo,
};
use crate::inflight::InflightCodec;
use crate::side::{OutputTag, SideChain, SideOutputs};
use crate::task::{
    AlignConfig, InflightConfig, InputTask, SourceLimits, SourceTask, Task, TaskLink,
};
use crate::timers::TimeDomain;
use crate::watermarks::{AssignOp, WatermarkStrategy};
use crate::windows::{WindowedStream, Windows};

/// The snapshot a run restores from, prepared once per run.
pub(crate) struct Restore {
    /// The manifest, without in-flight channel state.
    pub(crate) manifest: Manifest,
    /// In-flight channel state per uid, per old subtask.
    pub(crate) inflight: HashMap<String, Vec<Vec<OperatorStateSnapshot>>>,
    /// Per uid, per old subtask: finished in the snapshot ([`FINISHED_STATE`]).
    pub(crate) finished: HashMap<String, Vec<bool>>,
    pub(crate) source: Box<dyn SnapshotSource>,
    /// What it is (for errors and summaries).
    pub(crate) description: String,
    /// Its id, when it is the newest completed checkpoint of the job's own checkpoint
    /// directory (the one a job in claim mode may take over).
    pub(crate) claimable: Option<u64>,
    /// State the job does not take may be dropped (`JobConfig::allow_non_restored_state`).
    pub(crate) allow_non_restored: bool,
}

impl Restore {
    pub(crate) fn new(
        mut manifest: Manifest,
        source: Box<dyn SnapshotSource>,
        description: String,
    ) -> Self {
        let mut inflight = HashMap::new();
        let mut finished = HashMap::new();
        for op in &mut manifest.operators {
            let mut per_subtask = Vec::with_capacity(op.subtasks.len());
            let mut finished_subtasks = Vec::with_capacity(op.subtasks.len());
            let mut any = false;
            for s in &mut op.subtasks {
                let (taken, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut s.operator_state)
                    .into_iter()
                    .partition(|o| o.name == crate::task::INFLIGHT_STATE);
                any |= !taken.is_empty();
                s.operator_state = kept;
                finished_subtasks.push(s.operator_state.iter().any(|o| o.name == FINISHED_STATE));
                s.operator_state.retain(|o| o.name != FINISHED_STATE);
                per_subtask.push(taken);
            }
            if any {
                inflight.insert(op.uid.clone(), per_subtask);
            }
            finished.insert(op.uid.clone(), finished_subtasks);
        }
        Self {
            manifest,
            inflight,
            finished,
            source,
            description,
            claimable: None,
            allow_non_restored: false,
        }
    }
}

/// Which old subtasks of an operator had finished in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finished<'a> {
    /// None of them (also: the snapshot lacks the operator).
    None,
    /// Some, as flags per old subtask.
    Some(&'a [bool]),
    All,
}

impl Restore {
    /// Which old subtasks of operator `uid` had finished.
    pub(crate) fn finished(&self, uid: &str) -> Finished<'_> {
        let flags = self
            .finished
            .get(uid)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if !flags.iter().any(|f| *f) {
            Finished::None
        } else if flags.iter().all(|f| *f) {
            Finished::All
        } else {
            Finished::Some(flags)
        }
    }

    /// Refuses a snapshot in which an operator had finished (in any subtask) while an
    /// operator upstream of it in the job's `graph` had not finished in every subtask or is
    /// new: that one would send records to an operator that no longer has its keyed state
    /// and never runs `finish` again. (Within a stage, [`BuildCtx`] refuses a mix.)
    pub(crate) fn check_finished_order(&self, graph: &Dataflow) -> Result<()> {
        // Per stage (in dataflow order): an operator at or upstream of it that had not
        // finished everywhere.
        let mut running: Vec<Option<&str>> = Vec::with_capacity(graph.stages.len());
        for (k, stage) in graph.stages.iter().enumerate() {
            let upstream = graph
                .upstream(k)
                .find_map(|u| running.get(u).copied().flatten());
            if let Some(up) = upstream {
                if let Some(uid) = stage
                    .uids
                    .iter()
                    .find(|u| self.finished(u) != Finished::None)
                {
                    return Err(RuntimeError::Restore {
                        reason: format!(
                            "operator {uid} had finished in {} but operator {up} upstream of it \
                             had not (or is new): it would send records to a finished operator",
                            self.description
                        ),
                    });
                }
            }
            running.push(upstream.or_else(|| {
                stage
                    .uids
                    .iter()
                    .find(|u| self.finished(u) != Finished::All)
                    .map(String::as_str)
            }));
        }
        Ok(())
    }

    /// Refuses in-flight records (of an unaligned checkpoint) stored on an operator that is
    /// no longer the first after an exchange (`heads`): only that one replays them, so they
    /// would be lost.
    pub(crate) fn check_inflight_heads(&self, heads: &[&str]) -> Result<()> {
        let mut lost: Vec<&str> = self
            .inflight
            .iter()
            .filter(|(uid, _)| !heads.contains(&uid.as_str()))
            .filter(|(_, subtasks)| subtasks.iter().flatten().any(|s| !s.elements.is_empty()))
            .map(|(uid, _)| uid.as_str())
            .collect();
        lost.sort_unstable();
        match lost.first() {
            None => Ok(()),
            Some(uid) => Err(RuntimeError::Restore {
                reason: format!(
                    "operator {uid} holds in-flight records in {} but is no longer the first \
                     operator after an exchange, which replays them: they would be lost; \
                     restore the job as it was, or from a savepoint or an aligned checkpoint",
                    self.description
                ),
            }),
        }
    }
}

/// A type-erased end of an exchange's channels.
pub(crate) type Erased = Box<dyn Any + Send>;

/// One subtask's end of an exchange out of its stage.
pub(crate) struct StageOutput {
    /// `Vec<Sender<DataMsg<Y>>>`, one per receiving subtask.
    pub(crate) senders: Erased,
    /// The receiving tasks' event lanes.
    pub(crate) events: Vec<Sender<TaskEvent>>,
    /// This subtask's channel index at every receiver: a stage that reads several
    /// exchanges (a union) numbers their channels one after the other.
    pub(crate) channel: usize,
}
type Senders<Y> = Vec<Sender<DataMsg<Y>>>;
/// A keyed operator erased into its task's chain, reading records of `E::Record`.
type KeyedChain<F, E> = Box<dyn Chain<<E as KeyedInput<F>>::Record>>;

/// The records a keyed operator reads: `(key, record)` ([`ByKey`]), or also records
/// without a key ([`MaybeByKey`]: a keyed broadcast connection).
pub(crate) trait KeyedInput<F: KeyedProcessFunction> {
    type Record: Data;
    fn erase<S: KeyedStateBackend + 'static>(op: KeyedOp<F, S>) -> KeyedChain<F, Self>;
}

/// `(key, record)`.
pub(crate) struct ByKey;

impl<F: KeyedProcessFunction> KeyedInput<F> for ByKey {
    type Record = (F::Key, F::In);
    fn erase<S: KeyedStateBackend + 'static>(op: KeyedOp<F, S>) -> KeyedChain<F, Self> {
        Box::new(op)
    }
}

/// `(Some(key), record)`, or `(None, record)` for a record without a key.
pub(crate) struct MaybeByKey;

impl<F: KeyedProcessFunction> KeyedInput<F> for MaybeByKey {
    type Record = (Option<F::Key>, F::In);
    fn erase<S: KeyedStateBackend + 'static>(op: KeyedOp<F, S>) -> KeyedChain<F, Self> {
        Box::new(MaybeKeyed(op))
    }
}

/// Everything one subtask's task is built from.
pub(crate) struct BuildCtx {
    pub(crate) info: SubtaskInfo,
    pub(crate) shared: Arc<TaskShared>,
    pub(crate) restore: Option<Arc<Restore>>,
    pub(crate) backend: StateBackendConfig,
    /// The job's checkpoint storage (changelog segments are uploaded to it).
    pub(crate) storage: Option<cairn_storage::CheckpointStorage>,
    /// Wrap keyed backends in the changelog, with these options.
    pub(crate) changelog: Option<ChangelogOptions>,
    /// `Vec<Receiver<DataMsg<X>>>` of each exchange the stage reads, in channel order.
    pub(crate) input: Vec<Erased>,
    /// The stage's main output, and the lane that makes the chain sending into it.
    pub(crate) output: Option<StageOutput>,
    pub(crate) main_lane: Option<LaneFactory>,
    pub(crate) link: Option<TaskLink>,
    pub(crate) align: AlignConfig,
    pub(crate) batch_size: usize,
    pub(crate) limits: Option<SourceLimits>,
    /// The stage's operator uids (the first one carries in-flight state).
    pub(crate) stage_uids: Vec<String>,
    /// The exchanges of the stage's side outputs that streams read; each is taken by its
    /// operator.
    pub(crate) sides: Vec<SideEdge>,
    /// Where the task's time goes.
    pub(crate) times: Arc<crate::metrics::TaskTimes>,
    /// Wakes the task from other threads.
    pub(crate) waker: Option<crate::chain::Waker>,
}

/// A side output's exchange out of one subtask.
pub(crate) struct SideEdge {
    pub(crate) uid: String,
    pub(crate) tag: String,
    pub(crate) output: StageOutput,
    pub(crate) lane: LaneFactory,
}

/// Makes the chain that sends an output's records into its exchange (a
/// `Box<dyn Chain<Y>>`, erased).
pub(crate) type LaneFactory =
    Arc<dyn Fn(&mut BuildCtx, StageOutput) -> Result<Box<dyn SideChain>> + Send + Sync>;

impl BuildCtx {
    /// The operator state (and, with `keyed`, the keyed state) of operator `uid` for this
    /// subtask, restored when the snapshot has the operator.
    fn setup<B: KeyedStateBackend>(&self, uid: &str, keyed: Option<&mut B>) -> Result<OpSetup> {
        let mut operator_state = OperatorStateBackend::new(uid);
        let mut is_restored = false;
        let mut restored_timers = Vec::new();
        if let Some(r) = &self.restore {
            if let Some(op) = r.manifest.operator(uid) {
                // Any old subtask's timers may belong to this subtask's key groups now.
                let has_state = |name: &str| {
                    op.subtasks.iter().any(|s| {
                        s.keyed
                            .as_ref()
                            .is_some_and(|k| k.states.iter().any(|m| m.name == name))
                    })
                };
                restored_timers = [TimeDomain::ProcessingTime, TimeDomain::EventTime]
                    .into_iter()
                    .filter(|d| has_state(d.state_name()))
                    .collect();
                // An operator that is no longer keyed (its uid now names another kind of
                // operator) would drop its keyed state (a keyed operator without states
                // loses nothing).
                if keyed.is_none()
                    && !r.allow_non_restored
                    && op
                        .subtasks
                        .iter()
                        .any(|s| s.keyed.as_ref().is_some_and(|k| !k.states.is_empty()))
                {
                    return Err(RuntimeError::Restore {
                        reason: format!(
                            "operator {uid} has keyed state in {} but is not a keyed operator in \
                             this job; allow non-restored state to drop it",
                            r.description
                        ),
                    });
                }
                restore_subtask(
                    &r.manifest,
                    uid,
                    self.info.parallelism,
                    self.info.index,
                    keyed,
                    &mut operator_state,
                    r.source.as_ref(),
                )
                .map_err(|e| RuntimeError::Restore {
                    reason: format!(
                        "operator {uid} subtask {} of {} from {}: {e}",
                        self.info.index, self.info.parallelism, r.description
                    ),
                })?;
                is_restored = true;
            }
        }
        let io = Arc::new(crate::metrics::IoMetrics::default());
        let metrics =
            self.shared
                .metrics
                .operator(self.shared.attempt, uid, self.info.index, Some(&io));
        Ok(OpSetup {
            uid: uid.to_string(),
            info: self.info,
            operator_state,
            is_restored,
            restored_timers,
            shared: self.shared.clone(),
            io,
            metrics,
            waker: self.waker.clone(),
        })
    }

    /// Whether this subtask's task had finished in the snapshot it restores from: every
    /// operator of the stage is marked finished there. An operator finished in some old
    /// subtasks only can be restored at its old parallelism only (each subtask keeps its
    /// own mark); a stage in which some operators finished and others did not (or are new)
    /// cannot be restored, since the finished ones must not run again and the others must.
    fn restored_finished(&self) -> Result<bool> {
        let Some(r) = &self.restore else {
            return Ok(false);
        };
        let err = |reason: String| RuntimeError::Restore {
            reason: format!("{reason} in {}", r.description),
        };
        let mut finished = Vec::with_capacity(self.stage_uids.len());
        for uid in &self.stage_uids {
            let done = match r.finished(uid) {
                Finished::None => false,
                Finished::All => true,
                Finished::Some(flags) if flags.len() == self.info.parallelism as usize => flags
                    .get(self.info.index as usize)
                    .copied()
                    .unwrap_or(false),
                Finished::Some(flags) => {
                    return Err(err(format!(
                        "operator {uid} had finished in {} of its {} subtasks; restore it at \
                         parallelism {}, not {}",
                        flags.iter().filter(|f| **f).count(),
                        flags.len(),
                        flags.len(),
                        self.info.parallelism
                    )))
                }
            };
            finished.push((uid, done));
        }
        let (done, running): (Vec<_>, Vec<_>) = finished.into_iter().partition(|(_, d)| *d);
        match (done.first(), running.first()) {
            (Some((a, _)), Some((b, _))) => Err(err(format!(
                "operator {a} had finished but operator {b}, chained in the same task (subtask \
                 {}), had not or is new",
                self.info.index
            ))),
            (Some(_), None) => Ok(true),
            _ => Ok(false),
        }
    }

    fn plain_setup(&self, uid: &str) -> Result<OpSetup> {
        self.setup::<HashMapBackend>(uid, None)
    }

    /// The side outputs of operator `uid` that streams read.
    fn take_sides(&mut self, uid: &str) -> Result<SideOutputs> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sides)
            .into_iter()
            .partition(|e| e.uid == uid);
        self.sides = rest;
        let mut lanes = Vec::with_capacity(mine.len());
        for e in mine {
            lanes.push((e.tag, (e.lane)(self, e.output)?));
        }
        Ok(SideOutputs::new(uid, lanes))
    }

    fn take_link(&mut self) -> Result<TaskLink> {
        self.link
            .take()
            .ok_or_else(|| RuntimeError::Config("a task was built twice".into()))
    }

    /// The channels of every exchange the stage reads, one after the other.
    fn take_input<X: 'static>(&mut self) -> Result<Vec<Receiver<DataMsg<X>>>> {
        let mut channels = Vec::new();
        for erased in std::mem::take(&mut self.input) {
            let edge = erased
                .downcast::<Vec<Receiver<DataMsg<X>>>>()
                .map_err(|_| RuntimeError::Config("stage input has the wrong type".into()))?;
            channels.extend(*edge);
        }
        if channels.is_empty() {
            return Err(RuntimeError::Config("stage has no input".into()));
        }
        Ok(channels)
    }

    fn take_output<Y: 'static>(&mut self) -> Result<(TypedOutput<Y>, Vec<Sender<TaskEvent>>)> {
        let output = self
            .output
            .take()
            .ok_or_else(|| RuntimeError::Config("stage has no output".into()))?;
        typed_output(output)
    }

    /// A round-robin exchange out of this subtask into `out`.
    fn rebalance_out<Y: Data>(
        &self,
        out: TypedOutput<Y>,
        events: Vec<Sender<TaskEvent>>,
    ) -> Box<dyn Chain<Y>> {
        Box::new(ExchangeOut::new(
            RebalanceRoute {
                next: self.info.index as usize,
                in_batch: 0,
                batch_size: self.batch_size,
            },
            out.channel,
            out.senders,
            events,
            self.batch_size,
            self.shared.clone(),
            self.times.clone(),
        ))
    }

    /// This subtask's share of the in-flight records stored for operator `uid`, dealt as
    /// the job's exchange into it deals them (`mode`: union for a keyed input, whose
    /// subtasks `keep` their key groups' records; split otherwise).
    fn restored_inflight<X: Data>(
        &self,
        uid: &str,
        codec: &InflightCodec<X>,
        mode: Redistribution,
        keep: impl Fn(&X) -> Result<bool>,
    ) -> Result<Vec<(X, Option<u64>)>> {
        let Some(r) = &self.restore else {
            return Ok(Vec::new());
        };
        let Some(old) = r.inflight.get(uid) else {
            return Ok(Vec::new());
        };
        let restore_err = |reason: String| RuntimeError::Restore {
            reason: format!(
                "in-flight records of operator {uid} from {}: {reason}",
                r.description
            ),
        };
        // The records go where the job's exchange sends them now, whatever mode the
        // snapshot says: keyed records stored as split state (a damaged or hand-made
        // manifest, or a program whose `rebalance` into `uid` became a `key_by` of the same
        // record type) were dealt round-robin and each new subtask kept only its key groups'
        // share of its deal, so the others were lost without a word; rebalanced records
        // stored as union state would be replayed by every subtask.
        let old: Vec<Vec<OperatorStateSnapshot>> = old
            .iter()
            .map(|subtask| {
                subtask
                    .iter()
                    .map(|s| OperatorStateSnapshot { mode, ..s.clone() })
                    .collect()
            })
            .collect();
        let mut shares = redistribute(uid, &old, self.info.parallelism)
            .map_err(|e| restore_err(e.to_string()))?;
        let index = self.info.index as usize;
        if index >= shares.len() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for s in shares.swap_remove(index) {
            let Some(layout) = codec.decoder(&s.codec) else {
                let job = codec.record_identity();
                return Err(restore_err(format!(
                    "stored record type {} v{} in encoding {} but the job's input is {} v{} \
                     (encoding {})",
                    s.codec.type_name,
                    s.codec.version,
                    s.codec.encoding,
                    job.type_name,
                    job.version,
                    codec.identity().encoding
                )));
            };
            for (i, bytes) in s.elements.iter().enumerate() {
                let (x, timestamp) = codec
                    .decode(layout, bytes)
                    .map_err(|e| restore_err(format!("record {i}: {e}")))?;
                if keep(&x)? {
                    out.push((x, timestamp));
                }
            }
        }
        Ok(out)
    }
}

/// One subtask's senders into an exchange, of the type its records have, and its channel
/// index at the receivers.
pub(crate) struct TypedOutput<Y> {
    senders: Senders<Y>,
    channel: usize,
}

/// An exchange's senders, of the type its records have.
fn typed_output<Y: 'static>(
    output: StageOutput,
) -> Result<(TypedOutput<Y>, Vec<Sender<TaskEvent>>)> {
    let senders = output
        .senders
        .downcast::<Vec<Sender<DataMsg<Y>>>>()
        .map_err(|_| RuntimeError::Config("stage output has the wrong type".into()))?;
    Ok((
        TypedOutput {
            senders: *senders,
            channel: output.channel,
        },
        output.events,
    ))
}

/// The end of a chain that deals its records round-robin into the output's exchange.
fn rebalance_tail<T: Data>() -> ChainFactory<T> {
    Arc::new(|ctx: &mut BuildCtx| {
        let (out, events) = ctx.take_output::<T>()?;
        Ok(ctx.rebalance_out(out, events))
    })
}

/// The end of a chain that sends its records into the output's exchange by the route
/// `make` gives for this subtask and the number of receiving subtasks.
fn routed_tail<T: Data, R: Route<T, Item = T> + 'static>(
    make: impl Fn(&BuildCtx, usize) -> R + Send + Sync + 'static,
) -> ChainFactory<T> {
    Arc::new(move |ctx: &mut BuildCtx| {
        let (out, events) = ctx.take_output::<T>()?;
        let route = make(ctx, out.senders.len());
        Ok(Box::new(ExchangeOut::new(
            route,
            out.channel,
            out.senders,
            events,
            ctx.batch_size,
            ctx.shared.clone(),
            ctx.times.clone(),
        )) as Box<dyn Chain<T>>)
    })
}

/// [`Stream::shuffle`]'s route.
fn shuffle_tail<T: Data>() -> ChainFactory<T> {
    routed_tail(|ctx, _| ShuffleRoute::new(ctx.info.index))
}

/// [`Stream::rescale`]'s route.
fn rescale_tail<T: Data>() -> ChainFactory<T> {
    routed_tail(|ctx, downstream| {
        RescaleRoute::new(
            ctx.info.index as usize,
            ctx.info.parallelism as usize,
            downstream,
            ctx.batch_size,
        )
    })
}

/// [`Stream::global`]'s route.
fn global_tail<T: Data>() -> ChainFactory<T> {
    routed_tail(|_, _| GlobalRoute)
}

/// The head of a stage after [`Stream::global`]: in-flight records restore into subtask 0
/// only (every subtask reads them all, as union state, and the others drop them).
fn global_head<Y: Data>(
    ctx: &mut BuildCtx,
    inputs: Vec<Receiver<DataMsg<Y>>>,
    chain: Box<dyn Chain<Y>>,
) -> Result<Box<dyn Task>> {
    let first = ctx.info.index == 0;
    input_task(ctx, inputs, chain, Redistribution::Union, move |_| {
        Ok(first)
    })
}

/// [`Stream::partition_custom`]'s route; a partition out of range fails the last operator
/// before the exchange.
fn custom_tail<T: Data>(partition: PartitionFn<T>) -> ChainFactory<T> {
    routed_tail(move |ctx, _| CustomRoute {
        partition: partition.clone(),
        uid: ctx.stage_uids.last().cloned().unwrap_or_default(),
    })
}

/// The head of a stage after [`Stream::partition_custom`]: each subtask keeps the
/// in-flight records that the partitioner puts in it at the stage's parallelism now
/// (every subtask reads them all, as union state); one put out of range fails the stage's
/// first operator.
fn custom_head<Y: Data>(partition: PartitionFn<Y>) -> HeadFn<Y> {
    Arc::new(move |ctx, inputs, chain| {
        let (index, partitions) = (ctx.info.index, ctx.info.parallelism);
        let uid = ctx.stage_uids.first().cloned().unwrap_or_default();
        let partition = partition.clone();
        input_task(ctx, inputs, chain, Redistribution::Union, move |y| {
            let p = partition(y, partitions);
            if p >= partitions {
                return Err(custom_out_of_range(&uid, p, partitions));
            }
            Ok(p == index)
        })
    })
}

/// Turns the tail of the stage an exchange leads into (a `ChainFactory<U>` of the
/// stage's records, as `&dyn Any`) into the lane that sends into it; `None` when the tail
/// has another record type. An edge's adapter stays when the edge is re-routed (the stage
/// it leads into is keyed after all) or moved into a union or connection; the lane is
/// made again from it.
pub(crate) type Adapter = Arc<dyn Fn(&dyn Any) -> Option<LaneFactory> + Send + Sync>;

/// The adapter of an exchange into a stage whose records are the sender's, `T`.
fn same_records<T: Data>() -> Adapter {
    Arc::new(|tail: &dyn Any| {
        let tail = tail.downcast_ref::<ChainFactory<T>>()?;
        Some(lane_of(tail.clone()))
    })
}

/// `inner` (an adapter for a stage of `T`s) for a stage of `U`s: the sender's records
/// become `U`s by `wrap` before they are routed.
fn wrapped<T: Data, U: Data>(inner: Adapter, wrap: fn(T) -> U) -> Adapter {
    Arc::new(move |tail: &dyn Any| {
        let tail = tail.downcast_ref::<ChainFactory<U>>()?.clone();
        let wrapping: ChainFactory<T> = Arc::new(move |ctx: &mut BuildCtx| {
            Ok(Box::new(crate::connect::Wrap::new(wrap, tail(ctx)?)) as Box<dyn Chain<T>>)
        });
        inner(&wrapping)
    })
}

/// The lane that `tail` (which takes the output from the context) makes.
fn lane_of<T: Data>(tail: ChainFactory<T>) -> LaneFactory {
    Arc::new(move |ctx: &mut BuildCtx, output: StageOutput| {
        let saved = ctx.output.replace(output);
        let chain = tail(ctx);
        ctx.output = saved;
        Ok(Box::new(chain?) as Box<dyn SideChain>)
    })
}

/// A chain that makes each record a `U` by `wrap` in front of `tail`.
fn wrapping<T: Data, U: Data>(wrap: fn(T) -> U, tail: ChainFactory<U>) -> ChainFactory<T> {
    Arc::new(move |ctx: &mut BuildCtx| {
        Ok(Box::new(crate::connect::Wrap::new(wrap, tail(ctx)?)) as Box<dyn Chain<T>>)
    })
}

/// An adapter whose route is `tail`'s, whatever the stage's: the inputs of a broadcast
/// connection, each with its own partitioning.
fn fixed<T: Data>(inner: Adapter, tail: ChainFactory<T>) -> Adapter {
    Arc::new(move |_: &dyn Any| inner(&tail))
}

/// The end of a chain that sends every record to every subtask of the next stage.
fn broadcast_tail<T: Data>() -> ChainFactory<T> {
    Arc::new(|ctx: &mut BuildCtx| {
        let (out, events) = ctx.take_output::<T>()?;
        Ok(Box::new(BroadcastOut::new(
            out.channel,
            out.senders,
            events,
            ctx.batch_size,
            ctx.shared.clone(),
            ctx.times.clone(),
        )) as Box<dyn Chain<T>>)
    })
}

/// The head of a broadcast connection's stage. In-flight records restore at the old
/// parallelism only, each subtask's own ([`crate::broadcast`]).
fn broadcast_head<Y: Data>(
    ctx: &mut BuildCtx,
    inputs: Vec<Receiver<DataMsg<Y>>>,
    chain: Box<dyn Chain<Y>>,
) -> Result<Box<dyn Task>> {
    if let (Some(r), Some(uid)) = (&ctx.restore, ctx.stage_uids.first()) {
        if let Some(old) = r.inflight.get(uid) {
            let held = old.iter().flatten().any(|s| !s.elements.is_empty());
            if held && old.len() != ctx.info.parallelism as usize {
                return Err(RuntimeError::Restore {
                    reason: format!(
                        "operator {uid} reads a broadcast stream and holds in-flight records \
                         of {} subtasks in {}; restore it at parallelism {}, or rescale from \
                         a savepoint or an aligned checkpoint",
                        old.len(),
                        r.description,
                        old.len()
                    ),
                });
            }
        }
    }
    input_task(ctx, inputs, chain, Redistribution::Split, |_| Ok(true))
}

/// The end of a stage's chain: its main output's lane.
fn main_tail<T: Data>() -> ChainFactory<T> {
    Arc::new(|ctx: &mut BuildCtx| {
        let missing = || RuntimeError::Config("stage has no output".into());
        let lane = ctx.main_lane.take().ok_or_else(missing)?;
        let output = ctx.output.take().ok_or_else(missing)?;
        lane(ctx, output)?
            .into_any()
            .downcast::<Box<dyn Chain<T>>>()
            .map(|chain| *chain)
            .map_err(|_| RuntimeError::Config("stage output has the wrong type".into()))
    })
}

type ChainFactory<T> = Arc<dyn Fn(&mut BuildCtx) -> Result<Box<dyn Chain<T>>> + Send + Sync>;
pub(crate) type TaskFactory = Arc<dyn Fn(&mut BuildCtx) -> Result<Box<dyn Task>> + Send + Sync>;

/// Creates the channels of an exchange for a run.
pub(crate) type EdgeFactory = Arc<
    dyn Fn(usize, usize, usize) -> (Vec<Box<dyn Any + Send>>, Vec<Box<dyn Any + Send>>)
        + Send
        + Sync,
>;

fn edge<Y: Send + 'static>() -> EdgeFactory {
    Arc::new(|upstream, downstream, capacity| {
        // channels[u][d]
        let mut senders: Vec<Vec<Sender<DataMsg<Y>>>> = (0..upstream).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<Receiver<DataMsg<Y>>>> =
            (0..downstream).map(|_| Vec::new()).collect();
        for s in senders.iter_mut() {
            for r in receivers.iter_mut() {
                let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
                s.push(tx);
                r.push(rx);
            }
        }
        (
            senders
                .into_iter()
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .collect(),
            receivers
                .into_iter()
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .collect(),
        )
    })
}

/// One stage: operators chained in one task per subtask.
#[derive(Clone)]
pub(crate) struct Stage {
    /// Its id in the graph being built.
    id: usize,
    pub(crate) uids: Vec<String>,
    /// `None`: the job's default parallelism.
    pub(crate) parallelism: Option<u32>,
    pub(crate) build: TaskFactory,
    pub(crate) is_source: bool,
}

/// Which output of its stage an exchange is.
#[derive(Clone)]
pub(crate) enum EdgeKind {
    /// The end of the stage's chain.
    Main,
    /// Side output `tag` of operator `uid`.
    Side { uid: String, tag: String },
}

/// An exchange between two stages.
#[derive(Clone)]
pub(crate) struct Edge {
    /// Stage ids while the graph is built; indexes into [`Dataflow::stages`] once resolved.
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) kind: EdgeKind,
    /// Makes the chain that sends into the exchange (its route).
    pub(crate) lane: LaneFactory,
    /// Makes `lane` again when the exchange is re-routed or moved.
    pub(crate) adapt: Adapter,
    pub(crate) channels: EdgeFactory,
    /// A partitioning asked for on the sending stream that the exchange of the union (or
    /// connection) it leads into would undo (`a.shuffle().union(b)`): the job is refused
    /// with this message unless a `key_by` or a partitioning right after the union
    /// re-routes the edge (the last partitioning wins, as in Flink).
    pub(crate) undone: Option<String>,
}

/// A graph while its streams are built: every stream of one dataflow shares it.
#[derive(Default)]
struct Parts {
    /// Stages whose stream has moved on (an exchange) or ended (a sink).
    stages: Vec<Stage>,
    edges: Vec<Edge>,
    /// Stages still open, with what they are (a graph with one cannot run).
    open: Vec<(usize, String)>,
    /// What was asked that cannot work (reported when the job is made).
    errors: Vec<String>,
}

/// Stage ids, unique among all graphs (two graphs merge when a union joins them).
static NEXT_STAGE_ID: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Parts {
    /// A new open stage, described as `what`.
    fn open_stage(&mut self, what: String) -> usize {
        let id = NEXT_STAGE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open.push((id, what));
        id
    }

    /// Stage `stage` is complete.
    fn close(&mut self, stage: Stage) {
        self.open.retain(|(id, _)| *id != stage.id);
        self.stages.push(stage);
    }

    /// Makes the exchanges into stage `id` send into `tail` (the end of a chain of the
    /// stage's records, `T`) over channels of `Y`: each edge's lane is made by its adapter.
    /// `explicit`: the route was asked for after the union (a `key_by` or a partitioning),
    /// and replaces any asked for before it.
    fn route_into<T: Data, Y: Data>(&mut self, id: usize, tail: &ChainFactory<T>, explicit: bool) {
        let mut wrong = false;
        for e in self.edges.iter_mut().filter(|e| e.to == id) {
            if explicit {
                e.undone = None;
            }
            e.channels = edge::<Y>();
            match (e.adapt)(tail) {
                Some(lane) => e.lane = lane,
                None => wrong = true,
            }
        }
        if wrong {
            let what = format!(
                "{}: an exchange into it carries records of another type",
                self.describe(id)
            );
            self.errors.push(what);
        }
    }

    /// What open stage `id` is.
    fn describe(&self, id: usize) -> &str {
        self.open
            .iter()
            .find(|(i, _)| *i == id)
            .map_or("a stream", |(_, what)| what.as_str())
    }
}

/// The graph that a dataflow's streams build, shared by all of them. A union of streams of
/// two graphs (two sources) moves one graph into the other, which the moved one's streams
/// then follow.
#[derive(Clone, Default)]
struct SharedParts(Arc<std::sync::Mutex<Slot>>);

enum Slot {
    Here(Parts),
    MovedTo(SharedParts),
}

impl Default for Slot {
    fn default() -> Self {
        Self::Here(Parts::default())
    }
}

impl SharedParts {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while the lock is held leaves plain data behind: keep using it.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The handle of the graph itself (following moves).
    fn root(&self) -> SharedParts {
        let next = match &*self.slot() {
            Slot::Here(_) => return self.clone(),
            Slot::MovedTo(next) => next.clone(),
        };
        next.root()
    }

    /// Runs `f` on the graph.
    fn with<R>(&self, f: impl FnOnce(&mut Parts) -> R) -> R {
        let root = self.root();
        let mut slot = root.slot();
        match &mut *slot {
            Slot::Here(parts) => f(parts),
            // Moved between `root` and here (streams built on two threads): follow it.
            Slot::MovedTo(_) => {
                drop(slot);
                root.with(f)
            }
        }
    }

    /// Moves the graph of `other` into this one (nothing when it is the same graph).
    fn absorb(&self, other: &SharedParts) {
        let (mine, theirs) = (self.root(), other.root());
        if Arc::ptr_eq(&mine.0, &theirs.0) {
            return;
        }
        let taken = std::mem::replace(&mut *theirs.slot(), Slot::MovedTo(mine.clone()));
        match taken {
            Slot::Here(parts) => mine.with(|p| {
                p.stages.extend(parts.stages);
                p.edges.extend(parts.edges);
                p.open.extend(parts.open);
                p.errors.extend(parts.errors);
            }),
            // Moved meanwhile: move where it went.
            Slot::MovedTo(next) => {
                *theirs.slot() = Slot::MovedTo(next.clone());
                self.absorb(&next);
            }
        }
    }
}

/// A complete dataflow, ready to run with [`crate::Job`]. Every sink of a dataflow (the
/// main stream's and its side outputs') returns a `JobGraph` of the whole of it: run any
/// one of them once the streams have all ended in sinks.
#[derive(Clone)]
pub struct JobGraph {
    parts: SharedParts,
}

impl std::fmt::Debug for JobGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let uids: Vec<Vec<String>> = self
            .parts
            .with(|p| p.stages.iter().map(|s| s.uids.clone()).collect());
        f.debug_list().entries(uids).finish()
    }
}

impl JobGraph {
    /// This dataflow and `other` as one job (as a Flink job runs every sink of its
    /// environment): they share its checkpoints, savepoints, restarts and end. Their
    /// operator uids must differ.
    pub fn and(self, other: JobGraph) -> JobGraph {
        self.parts.absorb(&other.parts);
        self
    }

    /// Every operator uid, stages in dataflow order (the sources' first).
    pub fn uids(&self) -> Vec<String> {
        match self.resolve() {
            Ok(d) => d.uids(),
            Err(_) => self
                .parts
                .with(|p| p.stages.iter().flat_map(|s| s.uids.clone()).collect()),
        }
    }

    /// The stages in dataflow order (each after every stage it reads) and the exchanges
    /// between them; refused while a stream has not ended in a sink.
    pub(crate) fn resolve(&self) -> Result<Dataflow> {
        self.parts.with(|parts| parts.resolve())
    }
}

impl Parts {
    fn resolve(&self) -> Result<Dataflow> {
        if let Some(e) = self.errors.first() {
            return Err(RuntimeError::Config(e.clone()));
        }
        if let Some((_, what)) = self.open.first() {
            return Err(RuntimeError::Config(format!(
                "{what} does not end in a sink"
            )));
        }
        if let Some(undone) = self.edges.iter().find_map(|e| e.undone.as_ref()) {
            return Err(RuntimeError::Config(undone.clone()));
        }
        // From the sources on, a stage once every stage it reads is placed.
        let mut inputs: HashMap<usize, usize> = HashMap::new();
        for e in &self.edges {
            *inputs.entry(e.to).or_default() += 1;
        }
        let mut ready: std::collections::VecDeque<usize> = self
            .stages
            .iter()
            .filter(|s| s.is_source)
            .map(|s| s.id)
            .collect();
        let mut order = Vec::with_capacity(self.stages.len());
        while let Some(id) = ready.pop_front() {
            order.push(id);
            for e in self.edges.iter().filter(|e| e.from == id) {
                if let Some(n) = inputs.get_mut(&e.to) {
                    *n -= 1;
                    if *n == 0 {
                        ready.push_back(e.to);
                    }
                }
            }
        }
        let index_of = |id: usize| order.iter().position(|&o| o == id);
        let mut stages = Vec::with_capacity(order.len());
        for &id in &order {
            let stage = self.stages.iter().find(|s| s.id == id).ok_or_else(|| {
                RuntimeError::Config(format!("stage {id} of the graph is missing"))
            })?;
            stages.push(stage.clone());
        }
        if stages.len() != self.stages.len() {
            return Err(RuntimeError::Config(
                "a stage of the graph is not reached from a source".into(),
            ));
        }
        let mut edges = Vec::with_capacity(self.edges.len());
        for e in &self.edges {
            let (Some(from), Some(to)) = (index_of(e.from), index_of(e.to)) else {
                return Err(RuntimeError::Config(
                    "an exchange of the graph leads nowhere".into(),
                ));
            };
            edges.push(Edge {
                from,
                to,
                ..e.clone()
            });
        }
        Ok(Dataflow { stages, edges })
    }
}

/// A [`JobGraph`] resolved for a run.
#[derive(Clone)]
pub(crate) struct Dataflow {
    /// Each after every stage it reads (the sources' first).
    pub(crate) stages: Vec<Stage>,
    /// Between indexes of `stages`; a stage's input exchanges in the order their channels
    /// are numbered.
    pub(crate) edges: Vec<Edge>,
}

impl Dataflow {
    /// Every operator uid, stages in dataflow order.
    pub(crate) fn uids(&self) -> Vec<String> {
        self.stages.iter().flat_map(|s| s.uids.clone()).collect()
    }

    /// The stages that stage `k` reads.
    pub(crate) fn upstream(&self, k: usize) -> impl Iterator<Item = usize> + '_ {
        self.edges.iter().filter(move |e| e.to == k).map(|e| e.from)
    }
}

type OpenStage<T> = Box<dyn FnOnce(ChainFactory<T>) -> TaskFactory>;

/// Makes the task of a stage that reads exchanges of `Y`s, its first operator reading them.
type Head<Y> =
    fn(&mut BuildCtx, Vec<Receiver<DataMsg<Y>>>, Box<dyn Chain<Y>>) -> Result<Box<dyn Task>>;

/// A stream of records of type `T` whose current stage is still open.
pub struct Stream<T> {
    parts: SharedParts,
    /// The current stage's id.
    id: usize,
    uids: Vec<String>,
    parallelism: Option<u32>,
    is_source: bool,
    /// The last operator may emit side outputs (a process function or a window).
    sides_ok: bool,
    /// A partitioning (`rebalance`, `shuffle`, ...) not yet made, with the parallelism set
    /// after it: the next operator or sink makes it, and a `key_by` or another
    /// partitioning replaces it (the last partitioning wins, as in Flink).
    pending: Option<Pending<T>>,
    /// `forward()` was called on the current stage.
    forward: Option<ForwardMark>,
    open: OpenStage<T>,
}

/// Makes the task of a stage that reads exchanges of `Y`s (a [`Head`] that may capture).
type HeadFn<Y> = Arc<
    dyn Fn(&mut BuildCtx, Vec<Receiver<DataMsg<Y>>>, Box<dyn Chain<Y>>) -> Result<Box<dyn Task>>
        + Send
        + Sync,
>;

/// A partitioning asked for on a stream and not yet made; see [`Stream::rebalance`].
struct Pending<T> {
    /// Its method, for errors (`shuffle`).
    name: &'static str,
    /// The end of the sending chain, which routes the records.
    tail: ChainFactory<T>,
    /// The head of the stage after it, which restores in-flight records as the route
    /// deals them.
    head: HeadFn<T>,
    /// The parallelism set after it: the next stage's.
    after: Option<u32>,
}

/// Where `forward()` was called on a stage; see [`Stream::forward`].
#[derive(Clone, Copy, Debug)]
struct ForwardMark {
    /// How many operators the stage had then (the last of them is the one before it).
    before: usize,
    /// The stage's parallelism then (`None`: not set).
    parallelism: Option<u32>,
}

impl<T> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("uids", &self.uids).finish()
    }
}

/// Starts a dataflow at a source with uid `uid`.
pub fn source<S: Source>(uid: &str, source: S) -> Stream<S::Out> {
    let uid_owned = uid.to_string();
    let source = Prototype::new(source);
    let parts = SharedParts::default();
    let id = parts.with(|p| p.open_stage(format!("the stream of source {uid}")));
    Stream {
        parts,
        id,
        uids: vec![uid.to_string()],
        parallelism: None,
        is_source: true,
        sides_ok: false,
        pending: None,
        forward: None,
        open: Box::new(move |rest: ChainFactory<S::Out>| {
            Arc::new(move |ctx: &mut BuildCtx| {
                let chain = rest(ctx)?;
                let setup = ctx.plain_setup(&uid_owned)?;
                let link = ctx.take_link()?;
                let limits = ctx
                    .limits
                    .take()
                    .ok_or_else(|| RuntimeError::Config("source without limits".into()))?;
                let finished = ctx.restored_finished()?;
                let task = SourceTask::new(setup, source.get()?, chain, link, limits, finished)?;
                Ok(Box::new(task) as Box<dyn Task>)
            })
        }),
    }
}

impl<T: Data> Stream<T> {
    /// Sets the parallelism of the current stage (the operators since the last exchange);
    /// right after a partitioning (`rebalance()`, `shuffle()`, ...), that of the stage after
    /// it. After [`Stream::forward`], a parallelism other than the one set before it is
    /// refused when the job is made.
    pub fn parallelism(mut self, p: u32) -> Self {
        if let Some(pending) = &mut self.pending {
            // The stage after the exchange.
            pending.after = Some(p);
            return self;
        }
        if let Some(mark) = self.forward {
            if let Some(q) = mark.parallelism.filter(|q| *q != p) {
                let before = match self.uids[..mark.before.min(self.uids.len())].last() {
                    Some(uid) => format!("operator {uid}"),
                    None => "the stream".to_string(),
                };
                let after = match self.uids.get(mark.before) {
                    Some(uid) => format!("operator {uid}"),
                    None => "the stream after it".to_string(),
                };
                self.parts.with(|parts| {
                    parts.errors.push(format!(
                        "forward() from {before} at parallelism {q} into {after} at parallelism \
                         {p}: forward keeps each record in its subtask, so both need the same \
                         parallelism; use rebalance(), rescale() or shuffle() to change it"
                    ))
                });
            }
        }
        self.parallelism = Some(p);
        self
    }

    /// Makes a pending partitioning: the stream then starts the stage after it.
    fn settle(mut self) -> Self {
        match self.pending.take() {
            None => self,
            Some(Pending {
                tail, head, after, ..
            }) => {
                let mut next =
                    self.exchange::<T>(tail, move |ctx, inputs, chain| head(ctx, inputs, chain));
                next.parallelism = after;
                next
            }
        }
    }

    /// Asks for partitioning `name`, made by the next operator or sink: the sending chain
    /// ends in `tail`, and the stage after it reads with `head`. It replaces a partitioning
    /// asked for before it (keeping the parallelism set after that one).
    fn partitioned(
        mut self,
        name: &'static str,
        tail: ChainFactory<T>,
        head: HeadFn<T>,
    ) -> Stream<T> {
        let after = self.pending.take().and_then(|p| p.after);
        self.pending = Some(Pending {
            name,
            tail,
            head,
            after,
        });
        self.forward = None;
        self.sides_ok = false;
        self
    }

    /// What a union or connection of this stream would undo: its pending partitioning
    /// other than `rebalance` (the union's own route), or `forward()` (`None`: nothing).
    fn undone_by_union(&self) -> Option<&'static str> {
        match &self.pending {
            Some(p) if p.name != "rebalance" => Some(p.name),
            Some(_) => None,
            None => self.forward.map(|_| "forward"),
        }
    }

    /// Adds operator `uid` to the current stage: `make` builds a subtask's instance in
    /// front of the rest of the chain.
    fn chained<U: Data>(
        self,
        uid: &str,
        make: impl Fn(&mut BuildCtx, &str, Box<dyn Chain<U>>) -> Result<Box<dyn Chain<T>>>
            + Send
            + Sync
            + 'static,
    ) -> Stream<U> {
        let Stream {
            parts,
            id,
            mut uids,
            parallelism,
            is_source,
            sides_ok: _,
            pending: _,
            forward,
            open,
        } = self.settle();
        uids.push(uid.to_string());
        let uid = uid.to_string();
        Stream {
            parts,
            id,
            uids,
            parallelism,
            is_source,
            sides_ok: false,
            pending: None,
            forward,
            open: Box::new(move |rest: ChainFactory<U>| {
                open(Arc::new(move |ctx: &mut BuildCtx| {
                    let next = rest(ctx)?;
                    make(ctx, &uid, next)
                }))
            }),
        }
    }

    /// Adds a non-keyed operator, chained into the current stage.
    pub fn process<U: Data, F: ProcessFunction<T, U>>(self, uid: &str, f: F) -> Stream<U> {
        let f = Prototype::new(f);
        self.chained(uid, move |ctx, uid, next| {
            let setup = ctx.plain_setup(uid)?;
            let sides = ctx.take_sides(uid)?;
            Ok(Box::new(ProcessOp::new(setup, f.get()?, next, sides)?))
        })
        .emitting_side_outputs()
    }

    /// The last operator emits side outputs.
    fn emitting_side_outputs(mut self) -> Self {
        self.sides_ok = true;
        self
    }

    /// The records that the stream's last operator (a process function, keyed or not, or
    /// a window) emits into side output `tag` (Flink's `getSideOutput`), as a stream that
    /// starts a new stage: they cross an exchange, dealt round-robin (or by key, when
    /// [`Stream::key_by`] follows at once), and the stage has the job's parallelism unless
    /// set. It must end in a sink, as every stream must.
    /// See [`crate::side`].
    pub fn side_output<X: Data>(&self, tag: &OutputTag<X>) -> Stream<X> {
        let uid = self.uids.last().cloned().unwrap_or_default();
        let to = self.parts.with(|parts| {
            let what = match self.uids.last() {
                Some(uid) => format!("side output {} of operator {uid}", tag.name()),
                // Behind an exchange, before any operator: name the stream.
                None => format!("side output {} of {}", tag.name(), parts.describe(self.id)),
            };
            if let Some(p) = &self.pending {
                parts.errors.push(format!(
                    "{what} after {name}(): take the side output before the {name}",
                    name = p.name
                ));
            } else if !self.sides_ok {
                parts.errors.push(format!(
                    "{what}: only a process function (keyed or not) or a window emits side \
                     outputs"
                ));
            } else if parts.edges.iter().any(|e| {
                matches!(&e.kind, EdgeKind::Side { uid: u, tag: t } if *u == uid && t == tag.name())
            }) {
                parts
                    .errors
                    .push(format!("{what} is read by two streams; read it once"));
            }
            let to = parts.open_stage(what);
            parts.edges.push(Edge {
                from: self.id,
                to,
                kind: EdgeKind::Side {
                    uid,
                    tag: tag.name().to_string(),
                },
                lane: lane_of(rebalance_tail::<X>()),
                adapt: same_records::<X>(),
                channels: edge::<X>(),
                undone: None,
            });
            to
        });
        Stream {
            parts: self.parts.clone(),
            id: to,
            uids: Vec::new(),
            parallelism: None,
            is_source: false,
            sides_ok: false,
            pending: None,
            forward: None,
            open: rebalanced_input(),
        }
    }

    /// Adds an operator with uid `uid`, chained into the current stage, that reads the
    /// records' event time with `strategy` and emits watermarks behind them (Flink's
    /// `assignTimestampsAndWatermarks`); see [`crate::watermarks`]. Watermarks from
    /// upstream are dropped.
    pub fn assign_timestamps_and_watermarks(
        self,
        uid: &str,
        strategy: WatermarkStrategy<T>,
    ) -> Stream<T> {
        self.chained(uid, move |ctx, uid, next| {
            let setup = ctx.plain_setup(uid)?;
            Ok(Box::new(AssignOp::new(setup, strategy.clone(), next)?))
        })
    }

    /// One record in, one out.
    pub fn map<U: Data>(
        self,
        uid: &str,
        f: impl Fn(T) -> U + Clone + Send + Sync + 'static,
    ) -> Stream<U> {
        self.process(
            uid,
            FnProcess(move |x: T, out: &mut Collector<'_, U>| out.collect(f(x))),
        )
    }

    /// One record in, any number out.
    pub fn flat_map<U: Data, I: IntoIterator<Item = U>>(
        self,
        uid: &str,
        f: impl Fn(T) -> I + Clone + Send + Sync + 'static,
    ) -> Stream<U> {
        self.process(
            uid,
            FnProcess(move |x: T, out: &mut Collector<'_, U>| {
                for y in f(x) {
                    out.collect(y)?;
                }
                Ok(())
            }),
        )
    }

    /// Keeps the records for which `f` is true.
    pub fn filter(
        self,
        uid: &str,
        f: impl Fn(&T) -> bool + Clone + Send + Sync + 'static,
    ) -> Stream<T> {
        self.process(
            uid,
            FnProcess(move |x: T, out: &mut Collector<'_, T>| {
                if f(&x) {
                    out.collect(x)?;
                }
                Ok(())
            }),
        )
    }

    /// Ends the current stage with an exchange whose channels carry `Y`; the next stage
    /// starts with `head` (its first operator) reading them.
    fn exchange<Y: Data>(
        self,
        tail: ChainFactory<T>,
        head: impl Fn(&mut BuildCtx, Vec<Receiver<DataMsg<Y>>>, Box<dyn Chain<Y>>) -> Result<Box<dyn Task>>
            + Send
            + Sync
            + 'static,
    ) -> Stream<Y> {
        let Stream {
            parts,
            id,
            uids,
            parallelism,
            is_source,
            sides_ok: _,
            pending,
            forward: _,
            open,
        } = self;
        // A pending partitioning is replaced by this exchange (the last partitioning wins,
        // as in Flink); the parallelism set after it is the next stage's.
        let after = pending.and_then(|p| p.after);
        if uids.is_empty() {
            // A stream with no operator yet (a side output, a union) that exchanges at once
            // (`side_output(..).key_by(..)`): the exchanges into it take this one's route,
            // and the stage reads them with `head`, as Flink's
            // `getSideOutput(tag).keyBy(..)` or `union(..).keyBy(..)`.
            parts.with(|p| p.route_into::<T, Y>(id, &tail, true));
            return Stream {
                parts,
                id,
                uids,
                parallelism: after.or(parallelism),
                is_source,
                sides_ok: false,
                pending: None,
                forward: None,
                open: input_stage(head),
            };
        }
        let next = parts.with(|p| {
            let what = format!(
                "the stream after operator {}",
                uids.last().map_or("?", String::as_str)
            );
            let next = p.open_stage(what);
            p.edges.push(Edge {
                from: id,
                to: next,
                kind: EdgeKind::Main,
                lane: lane_of(tail),
                adapt: same_records::<T>(),
                channels: edge::<Y>(),
                undone: None,
            });
            p.close(Stage {
                id,
                uids,
                parallelism,
                build: open(main_tail::<T>()),
                is_source,
            });
            next
        });
        Stream {
            parts,
            id: next,
            uids: Vec::new(),
            parallelism: after,
            is_source: false,
            sides_ok: false,
            pending: None,
            forward: None,
            open: input_stage(head),
        }
    }

    /// Merges this stream with `other`, whose records have the same type (Flink's
    /// `union`): the next operator reads the records of both, and the streams may come from
    /// different sources. The union starts a new stage behind an exchange from each stream,
    /// dealt round-robin (or by key, when [`Stream::key_by`] follows at once); its
    /// parallelism is the job's unless set after the union. Each stream's records keep
    /// their order; the two are interleaved as they arrive. Barriers align across all of
    /// the union's inputs, and its watermark is the least of theirs (as Flink's).
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        self.join_inputs(other, "union", |a| a, |a| a)
    }

    /// Connects this stream with `other`, whose records may have another type (Flink's
    /// `connect`): a function of both inputs ([`crate::connect`]) reads them, keyed by a key
    /// of each ([`ConnectedStreams::key_by`]) or not. As for [`Stream::union`], the
    /// connection starts a new stage behind an exchange from each stream; barriers align
    /// across both inputs, and its watermark is the lesser of theirs.
    pub fn connect<B: Data>(self, other: Stream<B>) -> ConnectedStreams<T, B> {
        ConnectedStreams::new(self.join_inputs(
            other,
            "connection",
            |a| wrapped(a, Either::<T, B>::Left),
            |a| wrapped(a, Either::<T, B>::Right),
        ))
    }

    /// A new stage of `U`s that reads this stream and `other`, which become `U`s by
    /// `left` and `right` (adapters of their records), described by `what` of the two.
    fn join_inputs<B: Data, U: Data>(
        self,
        other: Stream<B>,
        what: &str,
        left: impl Fn(Adapter) -> Adapter,
        right: impl Fn(Adapter) -> Adapter,
    ) -> Stream<U> {
        self.join_routed(
            other,
            |a, b| format!("the {what} of {a} and {b}"),
            (left, right),
            rebalance_tail::<U>(),
            rebalanced_head::<U>,
            true,
        )
    }

    /// [`Stream::join_inputs`], with the lanes made from `route` (unless an adapter has a
    /// route of its own) and the stage read by `head`. A partitioning asked for on either
    /// stream that `route` would undo refuses the job unless a route asked for after the
    /// join replaces it ([`Edge::undone`]); `left_routed`: this stream's own adapter routes
    /// it (a key), so its partitioning is replaced at once.
    fn join_routed<B: Data, U: Data>(
        self,
        other: Stream<B>,
        what: impl Fn(&str, &str) -> String,
        (left, right): (impl Fn(Adapter) -> Adapter, impl Fn(Adapter) -> Adapter),
        route: ChainFactory<U>,
        head: Head<U>,
        left_undone: bool,
    ) -> Stream<U> {
        let undone_a = self
            .undone_by_union()
            .filter(|_| left_undone)
            .map(|name| (self.parts.with(|p| self.describe_in(p)), name));
        let undone_b = other
            .undone_by_union()
            .map(|name| (other.parts.with(|p| other.describe_in(p)), name));
        let (a, b) = (self.settle(), other.settle());
        a.parts.absorb(&b.parts);
        let parts = a.parts.clone();
        let (to, what) = parts.with(|p| {
            let what = what(&a.describe_in(p), &b.describe_in(p));
            (p.open_stage(what.clone()), what)
        });
        let message = |undone: Option<(String, &str)>| {
            undone.map(|(stream, name)| match name {
                "forward" => format!(
                    "{stream}: forward() before {what} cannot keep records in their subtasks: \
                     its exchange deals them round-robin"
                ),
                _ => format!(
                    "{stream}: {name}() before {what} would be undone by its exchange, which \
                     deals records round-robin; partition after it instead"
                ),
            })
        };
        a.into_input::<U>(to, left, message(undone_a));
        b.into_input::<U>(to, right, message(undone_b));
        parts.with(|p| p.route_into::<U, U>(to, &route, false));
        Stream {
            parts,
            id: to,
            uids: Vec::new(),
            parallelism: None,
            is_source: false,
            sides_ok: false,
            pending: None,
            forward: None,
            open: input_stage(head),
        }
    }

    /// What the stream is, for errors.
    fn describe_in(&self, parts: &Parts) -> String {
        match self.uids.last() {
            Some(uid) => format!("the stream of operator {uid}"),
            None => parts.describe(self.id).to_string(),
        }
    }

    /// Ends the stream in stage `to`, of `U`s, its records adapted by `input`: its stage
    /// sends into an exchange into `to`, or, when it has no operator yet, the exchanges
    /// into it go into `to` instead. The lanes are made by the caller. `undone`: the
    /// partitioning of the stream that `to`'s route undoes, as the error ([`Edge::undone`]).
    fn into_input<U: Data>(
        self,
        to: usize,
        input: impl Fn(Adapter) -> Adapter,
        undone: Option<String>,
    ) {
        let Stream {
            parts,
            id,
            uids,
            parallelism,
            is_source,
            open,
            ..
        } = self;
        parts.with(|p| {
            if uids.is_empty() {
                if parallelism.is_some() {
                    let what = format!("{}: its parallelism", p.describe(id));
                    p.errors.push(format!(
                        "{what} was set before a union (or connection), which replaces its \
                         stage; set the parallelism after the union"
                    ));
                }
                for e in p.edges.iter_mut().filter(|e| e.to == id) {
                    e.to = to;
                    e.adapt = input(e.adapt.clone());
                    if undone.is_some() {
                        e.undone.clone_from(&undone);
                    }
                }
                p.open.retain(|(i, _)| *i != id);
            } else {
                p.edges.push(Edge {
                    from: id,
                    to,
                    kind: EdgeKind::Main,
                    // Made by the caller (`route_into`).
                    lane: lane_of(rebalance_tail::<T>()),
                    adapt: input(same_records::<T>()),
                    channels: edge::<U>(),
                    undone,
                });
                p.close(Stage {
                    id,
                    uids,
                    parallelism,
                    build: open(main_tail::<T>()),
                    is_source,
                });
            }
        });
    }

    /// Redistributes records round-robin to the next stage (Flink's `rebalance()`), which
    /// may have another parallelism: [`Stream::parallelism`] after `rebalance` sets it. A
    /// `key_by` or another partitioning right after replaces it, as the last partitioning
    /// does in Flink. The partitionings below are made the same way; with each, records
    /// keep their timestamps, and barriers, watermarks and the end of input go to every
    /// downstream subtask (every channel of the exchange exists, whichever carry records).
    pub fn rebalance(self) -> Stream<T> {
        self.partitioned(
            "rebalance",
            rebalance_tail::<T>(),
            Arc::new(rebalanced_head::<T>),
        )
    }

    /// Sends each record to a downstream subtask drawn uniformly at random (Flink's
    /// `shuffle()`). Each upstream subtask draws from its own deterministic sequence
    /// (splitmix64 seeded by its subtask index), so the same input is dealt the same way in
    /// every run. In-flight records of an unaligned checkpoint restore as a `rebalance`'s
    /// do: each subtask its own at the same parallelism, dealt round-robin at another.
    pub fn shuffle(self) -> Stream<T> {
        self.partitioned(
            "shuffle",
            shuffle_tail::<T>(),
            Arc::new(rebalanced_head::<T>),
        )
    }

    /// Round-robin over a subset of the downstream subtasks only (Flink's `rescale()`):
    /// upstream subtask `i` of `u` reaches the downstream subtasks that Flink's POINTWISE
    /// pattern connects it to: with `d >= u` downstream subtasks, the contiguous range
    /// `ceil(i·d/u)..ceil((i+1)·d/u)` (2 into 4: subtask 0 reaches 0 and 1, subtask 1
    /// reaches 2 and 3); with `d < u`, one subtask, shared by several upstream subtasks
    /// (4 into 2: 0 and 1 reach 0, 2 and 3 reach 1).
    ///
    /// Cairn keeps the exchange's channels all-to-all and sends only the records within
    /// the subset: barriers, watermarks and the end of input still go on every channel, so
    /// barrier alignment and watermarks work unchanged (a downstream subtask that no
    /// upstream subtask feeds records still sees their barriers and watermarks). In-flight
    /// records of an unaligned checkpoint restore as a `rebalance`'s do: each subtask its
    /// own at the same parallelism, dealt round-robin at another (they were already across
    /// the exchange).
    pub fn rescale(self) -> Stream<T> {
        self.partitioned(
            "rescale",
            rescale_tail::<T>(),
            Arc::new(rebalanced_head::<T>),
        )
    }

    /// Starts a new chain (Flink's `startNewChain()`): the next operator runs in tasks of
    /// its own, fed by those of the operators before it behind an exchange that keeps each
    /// record in its subtask (a [`Stream::rescale`] at the same parallelism), so the two
    /// chains run on different threads, pipelined. A partitioning asked for before it
    /// stays (it starts a new chain already). At another parallelism set after it, the
    /// exchange deals records as `rescale()` does (Flink's would rebalance).
    pub fn start_new_chain(self) -> Stream<T> {
        if self.pending.is_some() {
            return self;
        }
        let parallelism = self.parallelism;
        let stream = self.rescale();
        match parallelism {
            Some(p) => stream.parallelism(p),
            None => stream,
        }
    }

    /// Adds operator `uid`, made by `make` from its setup and a clone of `f`, at the head
    /// of a stage of its own: behind the partitioning asked for, or else behind
    /// [`Stream::rescale`] (which keeps each record in its subtask when the parallelism
    /// stays; after [`Stream::forward`] it must stay). A task polls only its first operator between records and while it waits
    /// for input, which an asynchronous operator needs for its completions.
    pub(crate) fn heading_stage<U: Data, F: Clone + Send + 'static>(
        self,
        uid: &str,
        f: F,
        make: impl Fn(OpSetup, F, Box<dyn Chain<U>>) -> Result<Box<dyn Chain<T>>>
            + Send
            + Sync
            + 'static,
    ) -> Stream<U> {
        // After `forward()`, the rescale must keep each record in its subtask: the stage
        // keeps the parallelism, and another set on it is refused as after `forward()`.
        let forward = self.forward.map(|_| self.parallelism);
        let stream = match (self.pending.is_some(), forward) {
            (true, _) => self,
            (false, Some(Some(p))) => self.rescale().parallelism(p),
            (false, _) => self.rescale(),
        };
        let f = Prototype::new(f);
        let mut stream = stream.chained(uid, move |ctx, uid, next| {
            make(ctx.plain_setup(uid)?, f.get()?, next)
        });
        if let Some(parallelism) = forward {
            stream.forward = Some(ForwardMark {
                before: 0,
                parallelism,
            });
        }
        stream
    }

    /// Sends every record to subtask 0 of the next stage (Flink's `global()`); the other
    /// subtasks get barriers, watermarks and the end of input only. In-flight records of an
    /// unaligned checkpoint go to subtask 0 on restore, at any parallelism.
    pub fn global(self) -> Stream<T> {
        self.partitioned("global", global_tail::<T>(), Arc::new(global_head::<T>))
    }

    /// Sends each record to the downstream subtask that `partitioner` picks for its key
    /// (Flink's `partitionCustom`): `partitioner(&key_of(record), n)` with `n` the next
    /// stage's parallelism, which must be below `n`. A partition out of range fails the
    /// operator before the exchange (the error names it; the job restarts as for any
    /// failure), never panics. In-flight records of an unaligned checkpoint restore where
    /// the partitioner puts them at the new parallelism.
    pub fn partition_custom<K: 'static>(
        self,
        partitioner: impl Fn(&K, u32) -> u32 + Clone + Send + Sync + 'static,
        key_of: impl Fn(&T) -> K + Clone + Send + Sync + 'static,
    ) -> Stream<T> {
        let partition: PartitionFn<T> = Arc::new(move |t: &T, n| partitioner(&key_of(t), n));
        self.partitioned(
            "partition_custom",
            custom_tail(partition.clone()),
            custom_head(partition),
        )
    }

    /// Keeps each record in the subtask it is in (Flink's `forward()`). Operators between
    /// exchanges already run chained in one task per subtask, each subtask's records going
    /// straight to the next operator of the same subtask: that is forward partitioning, so
    /// `forward()` builds no exchange. It replaces a partitioning asked for right before it
    /// and checks the parallelism: Flink refuses a forward between operators of different
    /// parallelism, and Cairn refuses, when the job is made, a [`Stream::parallelism`]
    /// after `forward()` other than one set before it, naming both operators (set before
    /// none, it sets the parallelism of the whole chain, as it always does). `forward()`
    /// right after a union, connection or side output, whose records come through an
    /// exchange, or right before a union or connection, whose exchange deals them
    /// round-robin, is refused.
    pub fn forward(mut self) -> Stream<T> {
        let after = self.pending.take().and_then(|p| p.after);
        if self.uids.is_empty() {
            self.parts.with(|p| {
                let what = p.describe(self.id).to_string();
                p.errors.push(format!(
                    "forward() right after {what}: its records come through an exchange, dealt \
                     round-robin (or by key); forward() keeps records in the subtask of the \
                     operator before it, and there is none"
                ));
            });
        }
        self.forward = Some(ForwardMark {
            before: self.uids.len(),
            parallelism: self.parallelism,
        });
        match after {
            Some(p) => self.parallelism(p),
            None => self,
        }
    }

    /// Makes this a broadcast stream (Flink's `broadcast(descriptor)`): every subtask of the
    /// operator that reads it gets every record; see [`crate::broadcast`].
    pub fn broadcast(self) -> BroadcastStream<T> {
        BroadcastStream {
            stream: self.settle(),
        }
    }

    /// Connects this stream with a broadcast stream (Flink's `connect(broadcastStream)`),
    /// for a [`crate::broadcast::BroadcastProcessFunction`]: this stream's records are
    /// dealt round-robin, the broadcast stream's go to every subtask.
    pub fn connect_broadcast<B: Data>(
        self,
        other: BroadcastStream<B>,
    ) -> BroadcastConnectedStreams<T, B> {
        BroadcastConnectedStreams {
            stream: self.join_broadcast(
                other,
                wrapping(Either::<T, B>::Left, rebalance_tail()),
                Either::Right,
                true,
            ),
        }
    }

    /// A new stage of `Y`s that reads this stream through `tail` and `other`'s records,
    /// made `Y`s by `wrap`, sent to every subtask. `undone`: `tail` undoes a partitioning
    /// asked for on this stream, refused (not a key, which replaces it).
    fn join_broadcast<B: Data, Y: Data>(
        self,
        other: BroadcastStream<B>,
        tail: ChainFactory<T>,
        wrap: fn(B) -> Y,
        undone: bool,
    ) -> Stream<Y> {
        let broadcast = wrapping(wrap, broadcast_tail::<Y>());
        self.join_routed(
            other.stream,
            |a, b| format!("the connection of {a} with {b}, broadcast,"),
            (
                move |inner| fixed(inner, tail.clone()),
                move |inner| fixed(inner, broadcast.clone()),
            ),
            broadcast_tail::<Y>(),
            broadcast_head::<Y>,
            undone,
        )
    }

    /// Partitions the stream by key: records with the same key go to the same subtask of
    /// the next stage, which owns the key's key group.
    pub fn key_by<K: Key>(
        self,
        key_of: impl Fn(&T) -> K + Clone + Send + Sync + 'static,
    ) -> KeyedStream<K, T> {
        KeyedStream {
            stream: self,
            key_of: Arc::new(key_of),
            _k: PhantomData,
        }
    }

    /// Ends the dataflow in a sink with uid `uid`.
    pub fn sink<S: Sink<T>>(self, uid: &str, sink: S) -> JobGraph {
        let Stream {
            parts,
            id,
            mut uids,
            parallelism,
            is_source,
            sides_ok: _,
            pending: _,
            forward: _,
            open,
        } = self.settle();
        uids.push(uid.to_string());
        let uid = uid.to_string();
        let sink = Prototype::new(sink);
        let build = open(Arc::new(move |ctx: &mut BuildCtx| {
            let setup = ctx.plain_setup(&uid)?;
            Ok(Box::new(SinkOp::new(setup, sink.get()?)?) as Box<dyn Chain<T>>)
        }));
        parts.with(|p| {
            p.close(Stage {
                id,
                uids,
                parallelism,
                build,
                is_source,
            })
        });
        JobGraph { parts }
    }
}

/// A stage that reads an exchange, its first operator reading it with `head`.
fn input_stage<Y: Data>(
    head: impl Fn(&mut BuildCtx, Vec<Receiver<DataMsg<Y>>>, Box<dyn Chain<Y>>) -> Result<Box<dyn Task>>
        + Send
        + Sync
        + 'static,
) -> OpenStage<Y> {
    let head = Arc::new(head);
    Box::new(move |rest: ChainFactory<Y>| {
        Arc::new(move |ctx: &mut BuildCtx| {
            let chain = rest(ctx)?;
            let inputs = ctx.take_input::<Y>()?;
            head(ctx, inputs, chain)
        })
    })
}

/// The head of a stage that reads a round-robin exchange.
fn rebalanced_head<Y: Data>(
    ctx: &mut BuildCtx,
    inputs: Vec<Receiver<DataMsg<Y>>>,
    chain: Box<dyn Chain<Y>>,
) -> Result<Box<dyn Task>> {
    input_task(ctx, inputs, chain, Redistribution::Split, |_| Ok(true))
}

/// A stage that reads a round-robin exchange.
fn rebalanced_input<Y: Data>() -> OpenStage<Y> {
    input_stage(rebalanced_head::<Y>)
}

/// The task of a stage that reads an exchange.
fn input_task<X: Data>(
    ctx: &mut BuildCtx,
    inputs: Vec<Receiver<DataMsg<X>>>,
    chain: Box<dyn Chain<X>>,
    mode: Redistribution,
    keep: impl Fn(&X) -> Result<bool>,
) -> Result<Box<dyn Task>> {
    let uid = ctx
        .stage_uids
        .first()
        .cloned()
        .ok_or_else(|| RuntimeError::Config("a stage without operators".into()))?;
    let codec = InflightCodec::<X>::new();
    let restored = ctx.restored_inflight(&uid, &codec, mode, keep)?;
    let finished = ctx.restored_finished()?;
    let link = ctx.take_link()?;
    Ok(Box::new(InputTask::new(
        chain,
        inputs,
        link,
        ctx.align.clone(),
        InflightConfig { codec, mode, uid },
        restored,
        finished,
    )))
}

/// A keyed stream's key function.
pub(crate) type KeyOf<K, T> = Arc<dyn Fn(&T) -> K + Send + Sync>;

/// A stream partitioned by key; see [`Stream::key_by`].
pub struct KeyedStream<K, T> {
    stream: Stream<T>,
    key_of: KeyOf<K, T>,
    _k: PhantomData<fn() -> K>,
}

impl<K, T> std::fmt::Debug for KeyedStream<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish()
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// The stream and its key function.
    pub(crate) fn into_parts(self) -> (Stream<T>, KeyOf<K, T>) {
        (self.stream, self.key_of)
    }

    /// The end of a chain that sends each record, made a `Y` by `map`, to the subtask of
    /// its key's key group.
    fn key_tail<Y: Data>(
        &self,
        map: impl Fn((K, T)) -> Y + Copy + Send + Sync + 'static,
    ) -> ChainFactory<T> {
        let key_of = self.key_of.clone();
        Arc::new(move |ctx: &mut BuildCtx| {
            let (out, events) = ctx.take_output::<Y>()?;
            let key_of = key_of.clone();
            let route = KeyRoute {
                key_of: move |t: &T| key_of(t),
                codec: BincodeCodec::<K>::new(),
                buf: Vec::with_capacity(64),
                max_parallelism: ctx.info.max_parallelism,
                uid: ctx.stage_uids.last().cloned().unwrap_or_default(),
            };
            Ok(Box::new(ExchangeOut::new(
                MapItem { route, map },
                out.channel,
                out.senders,
                events,
                ctx.batch_size,
                ctx.shared.clone(),
                ctx.times.clone(),
            )) as Box<dyn Chain<T>>)
        })
    }

    /// The stage of a keyed broadcast connection: `(Some(key), Left(record))` from this
    /// stream, `(None, Right(record))` from `other`.
    pub(crate) fn join_broadcast<B: Data>(
        self,
        other: BroadcastStream<B>,
    ) -> Stream<(Option<K>, Either<T, B>)> {
        let tail = self.key_tail(|(k, t)| (Some(k), Either::<T, B>::Left(t)));
        self.stream
            .join_broadcast(other, tail, |b| (None, Either::Right(b)), false)
    }

    /// Adds a keyed operator with uid `uid` after a hash exchange by key group; it starts a
    /// new stage (set its parallelism on the returned stream).
    pub fn process<F>(self, uid: &str, f: F) -> Stream<F::Out>
    where
        F: KeyedProcessFunction<Key = K, In = T>,
    {
        let tail = self.key_tail::<(K, T)>(|kt| kt);
        let keyed_input = self.stream.exchange::<(K, T)>(tail, |ctx, inputs, chain| {
            let max_parallelism = ctx.info.max_parallelism;
            let range =
                KeyGroupRange::for_subtask(max_parallelism, ctx.info.parallelism, ctx.info.index)
                    .map_err(|e| RuntimeError::Config(e.to_string()))?;
            let codec = BincodeCodec::<K>::new();
            input_task(ctx, inputs, chain, Redistribution::Union, move |(k, _)| {
                let bytes = codec
                    .encode_to_vec(k)
                    .map_err(|e| RuntimeError::Config(format!("key encoding: {e}")))?;
                Ok(range.contains(key_group_for_key(&bytes, max_parallelism)))
            })
        });
        keyed_input.keyed(uid, f)
    }

    /// Groups each key's records into windows of time made by `assigner` (Flink's
    /// `window`); a window function on the result makes the operator
    /// ([`crate::windows`]).
    pub fn window<A: Windows>(self, assigner: A) -> WindowedStream<K, T, A> {
        WindowedStream::new(self, assigner)
    }

    /// Keeps, per key, the running reduction of the values with `f`, and emits
    /// `(key, reduced value)` for every record (state: `ValueState` named `reduce`).
    pub fn reduce(
        self,
        uid: &str,
        f: impl Fn(T, T) -> T + Clone + Send + Sync + 'static,
    ) -> Stream<(K, T)>
    where
        T: Sync,
    {
        self.process(uid, Reduce::<K, T, _> { f, _t: PhantomData })
    }

    /// [`KeyedStream::reduce`] with `+`.
    pub fn sum(self, uid: &str) -> Stream<(K, T)>
    where
        T: Sync + std::ops::Add<Output = T>,
    {
        self.reduce(uid, |a, b| a + b)
    }
}

impl<K: Key, X: Data> Stream<(Option<K>, X)> {
    /// Adds the keyed operator of a keyed broadcast connection, whose broadcast records
    /// come without a key.
    pub(crate) fn keyed_maybe<F>(self, uid: &str, f: F) -> Stream<F::Out>
    where
        F: KeyedProcessFunction<Key = K, In = X>,
    {
        let f = Prototype::new(f);
        self.chained(uid, move |ctx, uid, next| {
            build_keyed::<F, MaybeByKey>(ctx, uid, f.get()?, next)
        })
        .emitting_side_outputs()
    }
}

impl<K: Key, T: Data> Stream<(K, T)> {
    fn keyed<F>(self, uid: &str, f: F) -> Stream<F::Out>
    where
        F: KeyedProcessFunction<Key = K, In = T>,
    {
        let f = Prototype::new(f);
        self.chained(uid, move |ctx, uid, next| {
            build_keyed::<F, ByKey>(ctx, uid, f.get()?, next)
        })
        .emitting_side_outputs()
    }
}

pub(crate) fn build_keyed<F: KeyedProcessFunction, E: KeyedInput<F>>(
    ctx: &mut BuildCtx,
    uid: &str,
    f: F,
    next: Box<dyn Chain<F::Out>>,
) -> Result<KeyedChain<F, E>> {
    let codec = BincodeCodec::<F::Key>::new();
    let max_parallelism = ctx.info.max_parallelism;
    let key_group_range =
        KeyGroupRange::for_subtask(max_parallelism, ctx.info.parallelism, ctx.info.index)
            .map_err(|e| RuntimeError::state(uid, e))?;
    let key_codec = codec.identity().clone();
    match ctx.backend.clone() {
        StateBackendConfig::HashMap => {
            let b = HashMapBackend::new(HashMapConfig {
                uid: uid.to_string(),
                max_parallelism,
                key_group_range,
                key_codec,
            })
            .map_err(|e| RuntimeError::state(uid, e))?;
            keyed_op::<F, _, E>(ctx, uid, f, b, codec, next)
        }
        StateBackendConfig::RocksDb { local_dir, options } => {
            let b = RocksDbBackend::new(RocksDbConfig {
                uid: uid.to_string(),
                max_parallelism,
                key_group_range,
                key_codec,
                local_dir,
                options,
            })
            .map_err(|e| RuntimeError::state(uid, e))?;
            keyed_op::<F, _, E>(ctx, uid, f, b, codec, next)
        }
    }
}

/// The keyed operator on backend `b`, wrapped in the changelog when the job uses it, with
/// its state restored.
fn keyed_op<F: KeyedProcessFunction, B: KeyedStateBackend + 'static, E: KeyedInput<F>>(
    ctx: &mut BuildCtx,
    uid: &str,
    f: F,
    b: B,
    codec: BincodeCodec<F::Key>,
    next: Box<dyn Chain<F::Out>>,
) -> Result<KeyedChain<F, E>> {
    if let Some(options) = ctx.changelog {
        let config = ChangelogConfig::with_options(uid, codec.identity().clone(), options);
        let mut b = match &ctx.storage {
            Some(s) => ChangelogBackend::new(b, config, Arc::new(s.clone())),
            None => ChangelogBackend::with_checkpoint_uploads(b, config),
        };
        let setup = ctx.setup(uid, Some(&mut b))?;
        let sides = ctx.take_sides(uid)?;
        Ok(E::erase(KeyedOp::new(setup, f, b, codec, next, sides)?))
    } else {
        let mut b = b;
        let setup = ctx.setup(uid, Some(&mut b))?;
        let sides = ctx.take_sides(uid)?;
        Ok(E::erase(KeyedOp::new(setup, f, b, codec, next, sides)?))
    }
}

/// The keyed function behind [`KeyedStream::reduce`].
struct Reduce<K, T, F> {
    f: F,
    _t: PhantomData<fn() -> (K, T)>,
}

impl<K, T, F: Clone> Clone for Reduce<K, T, F> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, T, F> Checkpointed for Reduce<K, T, F> {}

impl<K, T, F> KeyedProcessFunction for Reduce<K, T, F>
where
    K: Key,
    T: Data + Sync,
    F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    type Key = K;
    type In = T;
    type Out = (K, T);
    type State = ValueStateId<T, ()>;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::<T>::new("reduce"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        input: T,
        backend: &mut B,
        _timers: &mut crate::timers::TimerService,
        out: &mut Collector<'_, (K, T)>,
    ) -> Result<()> {
        let next = match backend.value_get(*state, &())? {
            Some(acc) => (self.f)(acc, input),
            None => input,
        };
        backend.value_update(*state, &(), next.clone())?;
        out.collect((key.clone(), next))
    }
}

/// The instance a user gives for an operator; each subtask gets a clone. (A mutex makes
/// it shareable by the task factories without asking user types to be `Sync`.)
struct Prototype<F>(std::sync::Mutex<F>);

impl<F: Clone> Prototype<F> {
    fn new(f: F) -> Self {
        Self(std::sync::Mutex::new(f))
    }

    fn get(&self) -> Result<F> {
        self.0
            .lock()
            .map(|f| f.clone())
            .map_err(|_| RuntimeError::Config("an operator prototype was poisoned".into()))
    }
}
