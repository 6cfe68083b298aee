//! Joins of two streams by key and event time: the window join and co-group (Flink's
//! `DataStream.join(..).where(..).equalTo(..).window(..)` and `coGroup`), and the interval
//! join.
//!
//! **Window join.** `a.join(b).on(key_a, key_b).window(assigner)` puts the records of both
//! streams into the windows of their key (a keyed connection whose `Either`s go into one
//! window operator, as Flink builds it on a tagged union) and, when a window fires,
//! [`WindowJoin::apply`] gives every pair of a left and a right record of that key and
//! window to a function (an inner join), [`WindowJoin::co_group`] all of both sides at
//! once. The results have the window's last millisecond as their timestamp. Tumbling,
//! sliding and session windows; lateness is the window operator's
//! ([`crate::windows::WindowedStream`]).
//!
//! **Interval join.** Records of two keyed streams
//! with equal keys are joined when the right one's event time lies within bounds relative
//! to the left one's, `left + lower <= right <= left + upper` (each bound inclusive unless
//! made exclusive). Each pair goes to a [`ProcessJoinFunction`]; what it emits has the
//! later of the two timestamps.
//!
//! It is a keyed connection ([`crate::connect`]) of the two streams: each side's records
//! wait in keyed map state (`left-buffer`, `right-buffer`: event time → records) for
//! matches from the other side, and an event-time timer drops them once the watermark
//! says no match can come (left: at `t + max(upper, 0)`; right: at `t + max(-lower, 0)`).
//! Both inputs need timestamps ([`crate::Stream::assign_timestamps_and_watermarks`]); a
//! record older than the operator's watermark is late and dropped, as in Flink, or sent to
//! a side output ([`IntervalJoined::side_output_left_late_data`]). The state
//! is keyed state like any other: checkpoints, savepoints, rescaling and backend switches
//! carry it.

use std::marker::PhantomData;

use cairn_core::{KeyedStateBackend, MapStateDescriptor, MapStateId};

use crate::connect::{Either, KeyedCoProcessFunction};
use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, Collector, Data, InitContext, Key, SnapshotContext};
use crate::graph::{KeyedStream, Stream};
use crate::side::OutputTag;
use crate::timers::{Timer, TimerService};
use crate::windows::{
    ProcessWindowFunction, SessionGap, SessionWindows, TimeWindow, WindowAssigner, WindowedStream,
    Windows,
};

/// When a pair was joined: the event times of its two records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JoinContext {
    /// The left record's event time (milliseconds).
    pub left_timestamp: u64,
    /// The right record's event time.
    pub right_timestamp: u64,
}

impl JoinContext {
    /// The later of the two: the timestamp of what the function emits.
    pub fn timestamp(&self) -> u64 {
        self.left_timestamp.max(self.right_timestamp)
    }
}

/// A function of the joined pairs (Flink's `ProcessJoinFunction`), with checkpoint hooks.
pub trait ProcessJoinFunction<A, B, Out>: Checkpointed + Clone + Send + 'static {
    /// Processes one pair.
    fn process(
        &mut self,
        left: &A,
        right: &B,
        ctx: &JoinContext,
        out: &mut Collector<'_, Out>,
    ) -> Result<()>;
}

/// Adapts a closure `FnMut(&A, &B, &JoinContext, &mut Collector<Out>)` as a
/// [`ProcessJoinFunction`].
#[derive(Clone, Debug)]
pub struct FnJoin<F>(pub F);

impl<F> Checkpointed for FnJoin<F> {}

impl<A, B, Out, F> ProcessJoinFunction<A, B, Out> for FnJoin<F>
where
    F: FnMut(&A, &B, &JoinContext, &mut Collector<'_, Out>) -> Result<()> + Clone + Send + 'static,
{
    fn process(
        &mut self,
        left: &A,
        right: &B,
        ctx: &JoinContext,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        (self.0)(left, right, ctx, out)
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Joins this stream's records with `other`'s of the same key whose event times are
    /// close (Flink's `intervalJoin`); set the bounds with [`IntervalJoin::between`].
    pub fn interval_join<B: Data>(self, other: KeyedStream<K, B>) -> IntervalJoin<K, T, B> {
        IntervalJoin {
            left: self,
            right: other,
        }
    }
}

/// Two keyed streams to join; see [`KeyedStream::interval_join`].
pub struct IntervalJoin<K, A, B> {
    left: KeyedStream<K, A>,
    right: KeyedStream<K, B>,
}

impl<K, A, B> std::fmt::Debug for IntervalJoin<K, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoin").finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data> IntervalJoin<K, A, B> {
    /// Joins a left record at `t` with the right records from `t + lower_ms` to
    /// `t + upper_ms` (milliseconds; negative bounds reach back in time), both inclusive.
    pub fn between(self, lower_ms: i64, upper_ms: i64) -> IntervalJoined<K, A, B> {
        IntervalJoined {
            join: self,
            late: (None, None),
            bounds: Bounds {
                lower: lower_ms,
                upper: upper_ms,
                lower_inclusive: true,
                upper_inclusive: true,
            },
        }
    }
}

/// An interval join with its bounds; see [`IntervalJoin::between`].
pub struct IntervalJoined<K, A, B> {
    join: IntervalJoin<K, A, B>,
    bounds: Bounds,
    late: LateTags<A, B>,
}

/// The side outputs of the late records of each side of an interval join.
type LateTags<A, B> = (Option<OutputTag<A>>, Option<OutputTag<B>>);

impl<K, A, B> std::fmt::Debug for IntervalJoined<K, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoined")
            .field("bounds", &self.bounds)
            .finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data> IntervalJoined<K, A, B> {
    /// Excludes `t + lower` itself.
    pub fn lower_bound_exclusive(mut self) -> Self {
        self.bounds.lower_inclusive = false;
        self
    }

    /// Excludes `t + upper` itself.
    pub fn upper_bound_exclusive(mut self) -> Self {
        self.bounds.upper_inclusive = false;
        self
    }

    /// Sends the left records that come late (older than the operator's watermark) into
    /// side output `tag` instead of dropping them (Flink's `sideOutputLeftLateData`);
    /// [`Stream::side_output`] on the join's result stream reads them.
    pub fn side_output_left_late_data(mut self, tag: &OutputTag<A>) -> Self {
        self.late.0 = Some(tag.clone());
        self
    }

    /// The same for the right records (Flink's `sideOutputRightLateData`).
    pub fn side_output_right_late_data(mut self, tag: &OutputTag<B>) -> Self {
        self.late.1 = Some(tag.clone());
        self
    }

    /// Gives each pair to `f`, the keyed operator with uid `uid` (its parallelism is the
    /// job's unless set on the result).
    pub fn process<Out: Data, F: ProcessJoinFunction<A, B, Out>>(
        self,
        uid: &str,
        f: F,
    ) -> Stream<Out> {
        let (left, left_key) = self.join.left.into_parts();
        let (right, right_key) = self.join.right.into_parts();
        left.connect(right)
            .key_by(move |a: &A| left_key(a), move |b: &B| right_key(b))
            .process(
                uid,
                IntervalJoinOp {
                    f,
                    bounds: self.bounds,
                    late: self.late,
                    uid: String::new(),
                    _t: PhantomData,
                },
            )
    }
}

impl<T: Data> Stream<T> {
    /// Joins this stream with `other` by key and window (Flink's `join`); give the keys
    /// with [`JoinStreams::on`].
    pub fn join<B: Data>(self, other: Stream<B>) -> JoinStreams<T, B> {
        JoinStreams {
            left: self,
            right: other,
        }
    }
}

/// Two streams to join by key and window; see [`Stream::join`].
pub struct JoinStreams<A, B> {
    left: Stream<A>,
    right: Stream<B>,
}

impl<A, B> std::fmt::Debug for JoinStreams<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinStreams").finish_non_exhaustive()
    }
}

impl<A: Data, B: Data> JoinStreams<A, B> {
    /// Joins records whose keys are equal: `left_key` of the left stream's records
    /// (Flink's `where`), `right_key` of the right one's (`equalTo`).
    pub fn on<K: Key>(
        self,
        left_key: impl Fn(&A) -> K + Clone + Send + Sync + 'static,
        right_key: impl Fn(&B) -> K + Clone + Send + Sync + 'static,
    ) -> KeyedJoin<K, A, B> {
        KeyedJoin {
            keyed: self
                .left
                .connect(self.right)
                .key_by(left_key, right_key)
                .into_keyed(),
        }
    }
}

/// Two streams keyed for a window join; see [`JoinStreams::on`].
pub struct KeyedJoin<K, A, B> {
    keyed: KeyedStream<K, Either<A, B>>,
}

impl<K, A, B> std::fmt::Debug for KeyedJoin<K, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedJoin").finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data> KeyedJoin<K, A, B> {
    /// Joins within the windows of `assigner`: tumbling, sliding or session windows, of
    /// event or processing time.
    pub fn window<W: JoinWindows<K, Either<A, B>>>(self, assigner: W) -> WindowJoin<K, A, B, W> {
        WindowJoin {
            windowed: self.keyed.window(assigner),
        }
    }
}

/// A window join; see [`crate::joins`].
pub struct WindowJoin<K, A, B, W = WindowAssigner> {
    windowed: WindowedStream<K, Either<A, B>, W>,
}

impl<K, A, B, W> std::fmt::Debug for WindowJoin<K, A, B, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowJoin").finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data, W: JoinWindows<K, Either<A, B>>> WindowJoin<K, A, B, W> {
    /// Keeps windows for `lateness` after their end (their records may join late ones;
    /// each firing joins everything the window holds).
    pub fn allowed_lateness(self, lateness: std::time::Duration) -> Self {
        Self {
            windowed: self.windowed.allowed_lateness(lateness),
        }
    }

    /// Gives every pair of a left and a right record of a key's fired window to `f` (an
    /// inner join: a window with records of one side only gives nothing), in the
    /// operator with uid `uid`.
    pub fn apply<Out: Data>(
        self,
        uid: &str,
        f: impl FnMut(&A, &B, &mut Collector<'_, Out>) -> Result<()> + Clone + Send + 'static,
    ) -> Stream<Out> {
        let mut f = f;
        self.co_group(uid, move |_: &K, _, lefts: Vec<A>, rights: Vec<B>, out| {
            for a in &lefts {
                for b in &rights {
                    f(a, b, out)?;
                }
            }
            Ok(())
        })
    }

    /// Gives all left and all right records of a key's fired window to `f` at once
    /// (Flink's `coGroup`: either side may be empty), in the operator with uid `uid`.
    pub fn co_group<Out: Data>(
        self,
        uid: &str,
        f: impl FnMut(&K, TimeWindow, Vec<A>, Vec<B>, &mut Collector<'_, Out>) -> Result<()>
            + Clone
            + Send
            + 'static,
    ) -> Stream<Out> {
        W::process(self.windowed, uid, CoGroup { f, _t: PhantomData })
    }
}

/// The window assigners a window join can use: their operator gives a window's records
/// to a process function.
pub trait JoinWindows<K, T>: Windows + Sized {
    /// The operator with uid `uid` giving each fired window's records to `f`.
    fn process<O: Data>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        f: impl ProcessWindowFunction<K, T, O>,
    ) -> Stream<O>;
}

impl<K: Key, T: Data> JoinWindows<K, T> for WindowAssigner {
    fn process<O: Data>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        f: impl ProcessWindowFunction<K, T, O>,
    ) -> Stream<O> {
        windowed.process(uid, f)
    }
}

impl<K: Key, T: Data, G: SessionGap<T> + std::fmt::Debug> JoinWindows<K, T> for SessionWindows<G> {
    fn process<O: Data>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        f: impl ProcessWindowFunction<K, T, O>,
    ) -> Stream<O> {
        windowed.process(uid, f)
    }
}

/// A co-group function as the window function of the join's `Either`s.
struct CoGroup<F, A, B> {
    f: F,
    _t: PhantomData<fn(A, B)>,
}

impl<F: Clone, A, B> Clone for CoGroup<F, A, B> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, A, B, Out, F> ProcessWindowFunction<K, Either<A, B>, Out> for CoGroup<F, A, B>
where
    A: Send + 'static,
    B: Send + 'static,
    F: FnMut(&K, TimeWindow, Vec<A>, Vec<B>, &mut Collector<'_, Out>) -> Result<()>
        + Clone
        + Send
        + 'static,
{
    fn process(
        &mut self,
        key: &K,
        window: TimeWindow,
        elements: Vec<Either<A, B>>,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        let (mut lefts, mut rights) = (Vec::new(), Vec::new());
        for e in elements {
            match e {
                Either::Left(a) => lefts.push(a),
                Either::Right(b) => rights.push(b),
            }
        }
        (self.f)(key, window, lefts, rights, out)
    }
}

/// The bounds of an interval join, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bounds {
    lower: i64,
    upper: i64,
    lower_inclusive: bool,
    upper_inclusive: bool,
}

impl Bounds {
    /// Whether a left record at `left` and a right one at `right` join.
    fn joins(&self, left: u64, right: u64) -> bool {
        let d = i128::from(right) - i128::from(left);
        let (lower, upper) = (i128::from(self.lower), i128::from(self.upper));
        (if self.lower_inclusive {
            d >= lower
        } else {
            d > lower
        }) && (if self.upper_inclusive {
            d <= upper
        } else {
            d < upper
        })
    }

    /// When a left record at `t` can match no right record to come.
    fn left_cleanup(&self, t: u64) -> u64 {
        t.saturating_add(self.upper.max(0).unsigned_abs())
    }

    /// When a right record at `t` can match no left record to come.
    fn right_cleanup(&self, t: u64) -> u64 {
        t.saturating_add(self.lower.min(0).unsigned_abs())
    }
}

/// The interval join's keyed function.
struct IntervalJoinOp<K, A, B, Out, F> {
    f: F,
    bounds: Bounds,
    /// Where late records of each side go (dropped when `None`).
    late: LateTags<A, B>,
    /// The operator (for errors), known from `initialize_state`.
    uid: String,
    _t: PhantomData<fn(K, A, B) -> Out>,
}

impl<K, A, B, Out, F: Clone> Clone for IntervalJoinOp<K, A, B, Out, F> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            bounds: self.bounds,
            late: self.late.clone(),
            uid: self.uid.clone(),
            _t: PhantomData,
        }
    }
}

impl<K, A, B, Out, F: Checkpointed> Checkpointed for IntervalJoinOp<K, A, B, Out, F> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.uid = ctx.operator_state.uid().to_string();
        self.f.initialize_state(ctx)
    }
    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        self.f.snapshot_state(ctx)
    }
    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        self.f.notify_checkpoint_complete(checkpoint_id)
    }
    fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
        self.f.notify_checkpoint_aborted(checkpoint_id)
    }
}

/// The two buffers: event time → records waiting for a match.
struct Buffers<A, B> {
    left: MapStateId<u64, Vec<A>, ()>,
    right: MapStateId<u64, Vec<B>, ()>,
}

impl<K, A, B, Out, F> IntervalJoinOp<K, A, B, Out, F>
where
    A: Data,
    B: Data,
    Out: Data,
    F: ProcessJoinFunction<A, B, Out>,
{
    /// The event time of the record `out` holds, or an error naming the side.
    fn timestamp_of(&self, side: &str, out: &Collector<'_, Out>) -> Result<u64> {
        out.timestamp().ok_or_else(|| {
            RuntimeError::user(
                &self.uid,
                format!(
                    "a record of the {side} input of the interval join has no timestamp; \
                     assign timestamps upstream (assign_timestamps_and_watermarks)"
                ),
            )
        })
    }

    /// Emits `f`'s result for the pair, with the pair's timestamp.
    fn emit(
        &mut self,
        left: &A,
        right: &B,
        ctx: JoinContext,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        let own = out.timestamp();
        out.set_timestamp(Some(ctx.timestamp()));
        let r = self.f.process(left, right, &ctx, out);
        out.set_timestamp(own);
        r
    }
}

impl<K, A, B, Out, F> KeyedCoProcessFunction for IntervalJoinOp<K, A, B, Out, F>
where
    K: Key,
    A: Data,
    B: Data,
    Out: Data,
    F: ProcessJoinFunction<A, B, Out>,
{
    type Key = K;
    type In1 = A;
    type In2 = B;
    type Out = Out;
    type State = Buffers<A, B>;

    fn open<S: KeyedStateBackend>(&mut self, backend: &mut S) -> Result<Self::State> {
        if i128::from(self.bounds.lower) > i128::from(self.bounds.upper) {
            return Err(RuntimeError::Config(format!(
                "interval join {}: the lower bound {} ms is above the upper bound {} ms",
                self.uid, self.bounds.lower, self.bounds.upper
            )));
        }
        Ok(Buffers {
            left: backend.register_map(&MapStateDescriptor::new("left-buffer"))?,
            right: backend.register_map(&MapStateDescriptor::new("right-buffer"))?,
        })
    }

    fn process1<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        _key: &K,
        input: A,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        let t = self.timestamp_of("left", out)?;
        if timers.current_watermark().is_some_and(|w| t < w) {
            return match &self.late.0 {
                Some(tag) => out.output(tag, input),
                None => Ok(()),
            };
        }
        let bounds = self.bounds;
        let joins = |right: u64| bounds.joins(t, right);
        arrive(
            backend,
            state.left,
            state.right,
            t,
            input,
            joins,
            |a, b, right| {
                let ctx = JoinContext {
                    left_timestamp: t,
                    right_timestamp: right,
                };
                self.emit(a, b, ctx, out)
            },
        )?;
        timers.register_event_time_timer(bounds.left_cleanup(t));
        Ok(())
    }

    fn process2<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        _key: &K,
        input: B,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        let t = self.timestamp_of("right", out)?;
        if timers.current_watermark().is_some_and(|w| t < w) {
            return match &self.late.1 {
                Some(tag) => out.output(tag, input),
                None => Ok(()),
            };
        }
        let bounds = self.bounds;
        let joins = |left: u64| bounds.joins(left, t);
        arrive(
            backend,
            state.right,
            state.left,
            t,
            input,
            joins,
            |b, a, left| {
                let ctx = JoinContext {
                    left_timestamp: left,
                    right_timestamp: t,
                };
                self.emit(a, b, ctx, out)
            },
        )?;
        timers.register_event_time_timer(bounds.right_cleanup(t));
        Ok(())
    }

    /// Drops the records that can match nothing more.
    fn on_timer<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        _key: &K,
        timer: Timer,
        backend: &mut S,
        _timers: &mut TimerService,
        _out: &mut Collector<'_, Out>,
    ) -> Result<()> {
        for (t, _) in backend.map_entries(state.left, &())? {
            if self.bounds.left_cleanup(t) <= timer.time {
                backend.map_remove(state.left, &(), &t)?;
            }
        }
        for (t, _) in backend.map_entries(state.right, &())? {
            if self.bounds.right_cleanup(t) <= timer.time {
                backend.map_remove(state.right, &(), &t)?;
            }
        }
        Ok(())
    }
}

/// A record of one side at `t` arrives: each waiting record of the other side at a time
/// that `joins` is given to `pair` with it (and that time), then it waits in its own side's
/// buffer.
fn arrive<S: KeyedStateBackend, Own: Data, Other: Data>(
    backend: &mut S,
    own: MapStateId<u64, Vec<Own>, ()>,
    other: MapStateId<u64, Vec<Other>, ()>,
    t: u64,
    input: Own,
    joins: impl Fn(u64) -> bool,
    mut pair: impl FnMut(&Own, &Other, u64) -> Result<()>,
) -> Result<()> {
    for (other_t, others) in backend.map_entries(other, &())? {
        if joins(other_t) {
            for o in &others {
                pair(&input, o, other_t)?;
            }
        }
    }
    let mut waiting = backend.map_get(own, &(), &t)?.unwrap_or_default();
    waiting.push(input);
    Ok(backend.map_put(own, &(), t, waiting)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(lower: i64, upper: i64) -> Bounds {
        Bounds {
            lower,
            upper,
            lower_inclusive: true,
            upper_inclusive: true,
        }
    }

    #[test]
    fn bounds_join_within_the_interval_and_clean_up_once_nothing_can_match() {
        let b = bounds(-2, 3);
        assert!(b.joins(10, 8) && b.joins(10, 13) && b.joins(10, 10));
        assert!(!b.joins(10, 7) && !b.joins(10, 14));
        let exclusive = Bounds {
            lower_inclusive: false,
            upper_inclusive: false,
            ..b
        };
        assert!(!exclusive.joins(10, 8) && !exclusive.joins(10, 13) && exclusive.joins(10, 9));
        // A left record at 10 matches right ones up to 13; a right one at 10 left ones up
        // to 12.
        assert_eq!((b.left_cleanup(10), b.right_cleanup(10)), (13, 12));
        // Bounds both in the past or both in the future.
        let past = bounds(-5, -1);
        assert_eq!((past.left_cleanup(10), past.right_cleanup(10)), (10, 15));
        let future = bounds(1, 5);
        assert_eq!(
            (future.left_cleanup(10), future.right_cleanup(10)),
            (15, 10)
        );
        // Near the ends of time.
        let widest = bounds(i64::MIN, i64::MAX);
        assert!(widest.joins(0, i64::MAX as u64) && widest.joins(u64::MAX, u64::MAX / 2));
        assert!(!widest.joins(0, u64::MAX) && !widest.joins(u64::MAX, 0));
        assert_eq!(bounds(0, i64::MAX).left_cleanup(u64::MAX - 1), u64::MAX);
    }
}
