//! Windows on keyed streams (Flink's `WindowedStream` with its default triggers).
//!
//! [`KeyedStream::window`](crate::KeyedStream::window) groups each key's records into time
//! windows made by a [`WindowAssigner`] — tumbling or sliding, in event time or processing
//! time — and a window function turns each window's records into output when the window
//! fires:
//! - [`WindowedStream::reduce`] folds them with a function (state: a reducing state);
//! - [`WindowedStream::aggregate`] adds them to an accumulator
//!   ([`cairn_core::AggregateFunction`]; state: an aggregating state);
//! - [`WindowedStream::process`] gets them all at once ([`ProcessWindowFunction`]; state:
//!   a list state).
//!
//! `reduce` and `aggregate` emit `(key, window, result)`; `process` emits what the
//! function collects. Every output record has the window's last millisecond
//! ([`TimeWindow::max_timestamp`]) as its timestamp, as in Flink, so a window downstream
//! puts it in the window that contains it.
//!
//! The state is keyed state in the window operator, in the window's namespace, under the
//! name [`WINDOW_CONTENTS_STATE`]; the timers are the operator's event-time or
//! processing-time timers. So checkpoints, savepoints, rescaling, the changelog and
//! backend switches carry open windows like any other state.
//!
//! Semantics, as Flink's `WindowOperator` with `EventTimeTrigger` or
//! `ProcessingTimeTrigger`:
//! - **Event time.** A record goes to every window containing its timestamp
//!   ([`crate::Collector::timestamp`]: an assigner upstream must have given it one; a record
//!   without is an error naming the operator). A window fires when the operator's
//!   watermark reaches its last millisecond, and at the end of the input (the final
//!   watermark), once.
//! - **Lateness.** A window whose last millisecond plus the allowed lateness
//!   ([`WindowedStream::allowed_lateness`], default zero) is at or before the watermark is
//!   late: a record for it is dropped, and a record all of whose windows are late is lost,
//!   or goes to the late data's side output. Within the lateness, a window that has
//!   fired keeps its contents, and each record that reaches it makes it fire again at once
//!   with the updated result (a late firing); its contents are dropped when the watermark
//!   passes its last millisecond plus the lateness.
//! - **Processing time.** A record goes to the windows containing the processing clock's
//!   time when it is processed ([`crate::JobConfig::processing_clock`]); a window fires
//!   when the clock passes its last millisecond, and is then dropped. As in Flink, the
//!   pending processing-time windows do not fire at the end of a bounded input.
//! - Windows start at their assigner's offset plus a multiple of the slide (the size, for
//!   tumbling windows), in milliseconds since the epoch; a window that would start
//!   before the epoch starts at it (it holds the same records: no timestamp is negative).
//!
//! - **Restores.** Open windows and their timers are restored with the state; the
//!   watermark starts over (see [`crate::watermarks`]), so, as in Flink, a record that a
//!   run without the failure would have dropped as late may be replayed before the new
//!   watermark passes it, reach a window that has fired and been dropped, and make it fire
//!   again with that record alone. Which window a timer stands for follows from the
//!   windows' sizes, so the operator keeps them in its operator state
//!   ([`WINDOW_SPEC_STATE`]) and a restore under other windows (size, slide, offset,
//!   lateness or time domain) is refused, naming both: give the operator another uid to
//!   start its windows afresh.
//! - Times are whole milliseconds (a part of one is refused), and a record may be in at
//!   most [`MAX_WINDOWS_PER_RECORD`] sliding windows.
//!
//! - **Sessions** ([`EventTimeSessionWindows`], [`ProcessingTimeSessionWindows`]): windows
//!   that merge, with a gap fixed or per record; see [`sessions`].
//!
//! - **Late data.** [`WindowedStream::side_output_late_data`] sends the records dropped as
//!   late into a side output ([`crate::side`]) instead of losing them.
//!
//! - **Triggers** ([`WindowedStream::trigger`], every kind of window): Flink's count,
//!   continuous (not on sessions) and purging triggers besides the default; see
//!   [`triggers`].
//!
//! - **Evictors** ([`WindowedStream::evictor`], every kind of window): Flink's count, time
//!   and delta evictors; see [`evictors`].
//!
//! - **Windows over a whole stream** ([`Stream::window_all`],
//!   [`Stream::count_window_all`]): the keyed windows of one key, in one subtask.
//!
//! - **Global and count windows** ([`GlobalWindows`], [`KeyedStream::count_window`],
//!   [`KeyedStream::count_window_sliding`]): one window per key for all time, fired by a
//!   count or continuous trigger; see [`global`].
//!
//! - **User-defined triggers** ([`WindowedStream::custom_trigger`], not on sessions): a
//!   [`custom::Trigger`] of one's own, with timers and values per window; see [`custom`].
//!
//! - **The window function's context** (every [`ProcessWindowFunction`], wherever it runs:
//!   `process`, `reduce_and_process`, `aggregate_and_process`, on every kind of window):
//!   [`ProcessWindowFunction::process_with_context`] gets a [`WindowContext`] with the
//!   window, the watermark, the processing clock, per-window and per-key state and side
//!   outputs, and [`ProcessWindowFunction::clear`] is called when a window ends (Flink's
//!   `ProcessWindowFunction.Context` and `clear`); the operator drops a window's
//!   per-window states then. See [`context`].
//!
//! Not built: user-defined evictors, and user-defined triggers on session windows (Flink's
//! `onMerge`).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateId, BincodeCodec,
    KeyedStateBackend, ListStateDescriptor, ListStateId, OperatorListStateDescriptor, RawStateId,
    Redistribution, ReducingStateDescriptor, ReducingStateId, ValueStateDescriptor, ValueStateId,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, Collector, Data, InitContext, Key, KeyedProcessFunction};
use crate::graph::{KeyedStream, Stream};
use crate::side::OutputTag;
use crate::timers::{TimeDomain, Timer, TimerService};
pub use triggers::{
    WindowTrigger, WINDOW_COUNT_STATE, WINDOW_FIRE_TIME_STATE, WINDOW_TRIGGER_STATE,
};

mod all;
pub mod context;
pub mod custom;
pub mod evictors;
pub mod global;
pub mod incremental;
pub mod sessions;
pub mod triggers;

use context::{At, Function, Operator};
pub use context::{KeyedStateStore, WindowContext, WindowStates};
use custom::{fire_and_purge, BoxedTrigger, CustomState, Trigger};
use evictors::{Evictable, Evictor};
pub use global::GlobalWindows;
use incremental::{Folding, ThenProcess};
use triggers::Schedule;

pub use sessions::{
    DynamicGap, EventTimeSessionWindows, FixedGap, ProcessingTimeSessionWindows, SessionGap,
    SessionWindows, MERGING_WINDOW_SET_STATE,
};

/// The name of the keyed state that holds each window's contents (in the window's
/// namespace), as in Flink.
pub const WINDOW_CONTENTS_STATE: &str = "window-contents";

/// A window of time: the milliseconds from `start` (included) to `end` (excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimeWindow {
    /// The first millisecond.
    pub start: u64,
    /// The millisecond after the last.
    pub end: u64,
}

impl TimeWindow {
    /// The one window of [`GlobalWindows`], holding all time (its last millisecond, and
    /// so the timestamp of what it emits, is `u64::MAX - 1`, as Flink's `GlobalWindow`'s
    /// is `Long.MAX_VALUE`).
    pub const GLOBAL: TimeWindow = TimeWindow {
        start: 0,
        end: u64::MAX,
    };

    /// The window's last millisecond: when it fires, and its output's timestamp.
    pub fn max_timestamp(&self) -> u64 {
        self.end.saturating_sub(1)
    }

    /// Whether the windows overlap or touch (Flink's `intersects`): sessions that do
    /// are merged.
    pub fn intersects(&self, other: &TimeWindow) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    /// The smallest window holding both (Flink's `cover`).
    pub fn cover(&self, other: &TimeWindow) -> TimeWindow {
        TimeWindow {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }
}

impl fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::GLOBAL {
            return f.write_str("the global window");
        }
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// Which windows a record belongs to: fixed-size windows, every `slide` milliseconds from
/// `offset` (tumbling windows: `slide == size`), in event time or processing time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowAssigner {
    size: Duration,
    slide: Duration,
    offset: Duration,
    domain: TimeDomain,
}

/// Tumbling windows of event time (Flink's `TumblingEventTimeWindows`).
#[derive(Debug)]
pub struct TumblingEventTimeWindows;

impl TumblingEventTimeWindows {
    /// Windows of `size`, one after the other.
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::new(size, size, TimeDomain::EventTime)
    }
}

/// Sliding windows of event time (Flink's `SlidingEventTimeWindows`).
#[derive(Debug)]
pub struct SlidingEventTimeWindows;

impl SlidingEventTimeWindows {
    /// Windows of `size` starting every `slide`: a record is in `size / slide` of them
    /// (rounded up).
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::new(size, slide, TimeDomain::EventTime)
    }
}

/// Tumbling windows of processing time (Flink's `TumblingProcessingTimeWindows`).
#[derive(Debug)]
pub struct TumblingProcessingTimeWindows;

impl TumblingProcessingTimeWindows {
    /// Windows of `size`, one after the other.
    pub fn of(size: Duration) -> WindowAssigner {
        WindowAssigner::new(size, size, TimeDomain::ProcessingTime)
    }
}

/// Sliding windows of processing time (Flink's `SlidingProcessingTimeWindows`).
#[derive(Debug)]
pub struct SlidingProcessingTimeWindows;

impl SlidingProcessingTimeWindows {
    /// Windows of `size` starting every `slide`.
    pub fn of(size: Duration, slide: Duration) -> WindowAssigner {
        WindowAssigner::new(size, slide, TimeDomain::ProcessingTime)
    }
}

impl WindowAssigner {
    fn new(size: Duration, slide: Duration, domain: TimeDomain) -> Self {
        Self {
            size,
            slide,
            offset: Duration::ZERO,
            domain,
        }
    }

    /// Windows start `offset` after a multiple of the slide (Flink's `withOffset`, e.g. to
    /// align daily windows to a time zone); it must be smaller than the slide.
    pub fn with_offset(mut self, offset: Duration) -> Self {
        self.offset = offset;
        self
    }

    /// The time domain the windows are in.
    pub fn domain(&self) -> TimeDomain {
        self.domain
    }

    /// Size, slide and offset in milliseconds, checked.
    fn millis(&self) -> std::result::Result<Millis, String> {
        let (size, slide, offset) = (
            whole_millis("size", self.size)?,
            whole_millis("slide", self.slide)?,
            whole_millis("offset", self.offset)?,
        );
        if size == 0 || slide == 0 {
            return Err(format!(
                "window size {size} ms and slide {slide} ms: both must be at least 1 ms"
            ));
        }
        if offset >= slide {
            return Err(format!(
                "window offset {offset} ms: it must be smaller than the slide ({slide} ms)"
            ));
        }
        let per_record = size.div_ceil(slide);
        if per_record > MAX_WINDOWS_PER_RECORD {
            return Err(format!(
                "windows of {size} ms every {slide} ms put each record in {per_record} \
                 windows; at most {MAX_WINDOWS_PER_RECORD} are allowed"
            ));
        }
        Ok(Millis {
            size,
            slide,
            offset,
        })
    }
}

/// The most windows one record may belong to (sliding windows: size over slide): each is
/// a copy of the record in state and a timer.
pub const MAX_WINDOWS_PER_RECORD: u64 = 10_000;

/// `d` in milliseconds: a part of a millisecond is refused rather than dropped.
fn whole_millis(what: &str, d: Duration) -> std::result::Result<u64, String> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "window {what} {d:?}: window times are whole milliseconds"
        ));
    }
    u64::try_from(d.as_millis()).map_err(|_| format!("window {what} {d:?} is too long"))
}

/// A [`WindowAssigner`]'s sizes in milliseconds, checked: size and slide at least 1, the
/// offset below the slide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Millis {
    size: u64,
    slide: u64,
    offset: u64,
}

impl Millis {
    /// The window ending at `end`, if windows end there.
    fn window_ending_at(&self, end: u64) -> Option<TimeWindow> {
        let end = i128::from(end);
        let start = end - i128::from(self.size);
        let aligned = (start - i128::from(self.offset)).rem_euclid(i128::from(self.slide)) == 0;
        aligned.then(|| Self::window(start, end))
    }

    /// The windows containing `timestamp`, latest first. A timestamp within a window's
    /// size of `u64::MAX` is refused: its windows could end after it.
    fn assign(&self, timestamp: u64, out: &mut Vec<TimeWindow>) -> std::result::Result<(), String> {
        out.clear();
        if timestamp.checked_add(self.size).is_none() {
            return Err(format!(
                "time {timestamp} ms is too close to u64::MAX for windows of {} ms",
                self.size
            ));
        }
        let (t, size, slide) = (
            i128::from(timestamp),
            i128::from(self.size),
            i128::from(self.slide),
        );
        let mut start = t - (t - i128::from(self.offset)).rem_euclid(slide);
        while start > t - size {
            out.push(Self::window(start, start + size));
            start -= slide;
        }
        Ok(())
    }

    /// `[start, end)` with a start before the epoch moved to it (`end` is positive and at
    /// most `u64::MAX`, as `assign` and `window_ending_at` make it).
    fn window(start: i128, end: i128) -> TimeWindow {
        let clamp = |x: i128| u64::try_from(x.clamp(0, i128::from(u64::MAX))).unwrap_or(0);
        TimeWindow {
            start: clamp(start),
            end: clamp(end),
        }
    }
}

/// A function of all of a window's records at once (Flink's `ProcessWindowFunction`).
///
/// Implement [`process`](Self::process), or, to get the window's context (the watermark,
/// the processing clock, per-window and per-key state, side outputs: see [`context`]),
/// [`process_with_context`](Self::process_with_context), with its per-window states
/// declared in [`open`](Self::open) and, if it must act when a window ends,
/// [`clear`](Self::clear).
pub trait ProcessWindowFunction<K, T, O>: Clone + Send + 'static {
    /// The window of `key` fired with these `elements`, in the order they were added.
    ///
    /// The default fails, naming the operator: a function implements this or
    /// [`process_with_context`](Self::process_with_context).
    fn process(
        &mut self,
        key: &K,
        window: TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let _ = (key, window, elements, out);
        Err(RuntimeError::Config(context::NEITHER.to_string()))
    }

    /// Declares the per-window states the function uses
    /// ([`WindowContext::window_state`]), by their descriptors (`states.value(&d)`, ..).
    /// Called once per subtask and run, when the window operator opens, before any
    /// window fires; the operator drops a window's declared states when the window ends.
    /// The default declares none.
    fn open<B: KeyedStateBackend>(&mut self, states: &mut WindowStates<'_, B>) -> Result<()> {
        let _ = states;
        Ok(())
    }

    /// The window `ctx.window()` of `key` fired with these `elements`, in the order they
    /// were added (Flink's `process(key, context, elements, out)`). The default calls
    /// [`process`](Self::process).
    fn process_with_context<B: KeyedStateBackend>(
        &mut self,
        key: &K,
        elements: Vec<T>,
        ctx: &mut WindowContext<'_, B, O>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.process(key, ctx.window(), elements, out)
    }

    /// The window `ctx.window()` of `key` ends (Flink's `clear(context)`): its time is up
    /// (see [`context`]); not on a purge, and never for global windows. Its per-window
    /// states are still there, and the operator drops them after this call. The default
    /// does nothing.
    fn clear<B: KeyedStateBackend>(
        &mut self,
        key: &K,
        ctx: &mut WindowContext<'_, B, O>,
    ) -> Result<()> {
        let _ = (key, ctx);
        Ok(())
    }
}

/// Adapts a closure as a [`ProcessWindowFunction`].
#[derive(Clone, Debug)]
pub struct FnWindow<F>(pub F);

impl<K, T, O, F> ProcessWindowFunction<K, T, O> for FnWindow<F>
where
    F: FnMut(&K, TimeWindow, Vec<T>, &mut Collector<'_, O>) -> Result<()> + Clone + Send + 'static,
{
    fn process(
        &mut self,
        key: &K,
        window: TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        (self.0)(key, window, elements, out)
    }
}

/// What [`crate::KeyedStream::window`] takes: a [`WindowAssigner`] (tumbling or sliding
/// windows) or [`SessionWindows`]. Sealed.
pub trait Windows: sealed::Sealed + fmt::Debug {}

/// Sealed traits: public (in bounds of public methods) but not nameable outside the
/// crate, so their functions may mention the crate's own contents types.
#[allow(private_bounds, private_interfaces)]
mod sealed {
    use super::{Batch, Merging, Stream, WindowedStream};

    pub trait Sealed {}

    /// How a kind of window makes its operator from contents that may merge (sessions
    /// merge theirs).
    pub trait Build<K, T>: Sized {
        fn build<C: Batch<K, T> + Merging<K, T>>(
            windowed: WindowedStream<K, T, Self>,
            uid: &str,
            contents: C,
        ) -> Stream<C::Out>;
    }

    /// How a kind of window that does not merge makes its operator from any contents.
    pub(super) trait BuildPlain<K, T>: Build<K, T> {
        fn build_plain<C: Batch<K, T>>(
            windowed: WindowedStream<K, T, Self>,
            uid: &str,
            contents: C,
        ) -> Stream<C::Out>;
    }
}

impl sealed::Sealed for WindowAssigner {}
impl Windows for WindowAssigner {}

/// A keyed stream grouped into windows; see [`crate::KeyedStream::window`].
pub struct WindowedStream<K, T, A = WindowAssigner> {
    keyed: KeyedStream<K, T>,
    assigner: A,
    allowed_lateness: Duration,
    late: Option<OutputTag<T>>,
    /// `None`: the default of the windows' time domain.
    trigger: Option<WindowTrigger>,
    evictor: Option<Evictor<T>>,
    /// A user-defined trigger (then `trigger` says so).
    custom: Option<BoxedTrigger<T>>,
    /// Windows over a whole stream ([`Stream::window_all`]): the window operator runs
    /// in one subtask.
    all: bool,
}

impl<K, T, A: Windows> fmt::Debug for WindowedStream<K, T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowedStream")
            .field("assigner", &self.assigner)
            .field("allowed_lateness", &self.allowed_lateness)
            .field("trigger", &self.trigger)
            .field("evictor", &self.evictor)
            .finish_non_exhaustive()
    }
}

impl<K: Key, T: Data, A: Windows> WindowedStream<K, T, A> {
    pub(crate) fn new(keyed: KeyedStream<K, T>, assigner: A) -> Self {
        Self {
            keyed,
            assigner,
            allowed_lateness: Duration::ZERO,
            late: None,
            trigger: None,
            evictor: None,
            custom: None,
            all: false,
        }
    }

    /// How long after the watermark passes a window's end its contents are kept, so that
    /// late records still reach it (Flink's `allowedLateness`; event time only: it is
    /// ignored for processing-time windows).
    pub fn allowed_lateness(mut self, lateness: Duration) -> Self {
        self.allowed_lateness = lateness;
        self
    }

    /// Sends the records dropped as late (every window of theirs is past its allowed
    /// lateness; event time only) into side output `tag` (Flink's `sideOutputLateData`),
    /// with their timestamps; [`Stream::side_output`] with the same tag on the window's
    /// result stream reads them.
    pub fn side_output_late_data(mut self, tag: &OutputTag<T>) -> Self {
        self.late = Some(tag.clone());
        self
    }

    /// When the windows fire (Flink's `trigger`): [`triggers::CountTrigger`],
    /// [`triggers::PurgingTrigger`], or the time domain's default
    /// ([`triggers::EventTimeTrigger`], [`triggers::ProcessingTimeTrigger`]); see
    /// [`triggers`].
    pub fn trigger(mut self, trigger: WindowTrigger) -> Self {
        self.trigger = Some(trigger);
        self.custom = None;
        self
    }

    /// When the windows fire, by a user-defined trigger (Flink's `trigger` with a
    /// `Trigger` of one's own): see [`custom`]. Not on session windows.
    pub fn custom_trigger(mut self, trigger: impl Trigger<T>) -> Self {
        self.trigger = Some(triggers::custom());
        self.custom = Some(BoxedTrigger::new(trigger));
        self
    }

    /// Which of a window's records its function sees (Flink's `evictor`):
    /// [`evictors::CountEvictor`], [`evictors::TimeEvictor`] or
    /// [`evictors::DeltaEvictor`]; see [`evictors`]. The window then keeps every record,
    /// even under `reduce` and `aggregate`.
    pub fn evictor(mut self, evictor: Evictor<T>) -> Self {
        self.evictor = Some(evictor);
        self
    }
}

impl<K: Key, T: Data, A: sealed::Build<K, T>> WindowedStream<K, T, A> {
    /// Folds each window's records with `f` and emits `(key, window, result)` when it
    /// fires (sessions that merge fold their results together).
    pub fn reduce(
        self,
        uid: &str,
        f: impl Fn(T, T) -> T + Clone + Send + Sync + 'static,
    ) -> Stream<(K, TimeWindow, T)> {
        A::build(self, uid, Reduce { f, _t: PhantomData })
    }

    /// Keeps each window's records and gives them to `f` when it fires.
    pub fn process<O: Data>(self, uid: &str, f: impl ProcessWindowFunction<K, T, O>) -> Stream<O> {
        A::build(self, uid, Process::new(f))
    }

    /// Folds each window's records with `f` and gives the result to `process` when it
    /// fires (Flink's `reduce(ReduceFunction, ProcessWindowFunction)`); see [`incremental`].
    pub fn reduce_and_process<O: Data>(
        self,
        uid: &str,
        f: impl Fn(T, T) -> T + Clone + Send + Sync + 'static,
        process: impl ProcessWindowFunction<K, T, O>,
    ) -> Stream<O> {
        let contents = ThenProcess::new(Reduce { f, _t: PhantomData }, process);
        A::build(self, uid, contents)
    }
}

impl<K: Key, T: Data> WindowedStream<K, T> {
    /// Adds each window's records to an accumulator of `function` and emits `(key, window,
    /// result)` when it fires.
    pub fn aggregate<ACC: Data, OUT: Data>(
        self,
        uid: &str,
        function: impl AggregateFunction<T, ACC, OUT> + Clone,
    ) -> Stream<(K, TimeWindow, OUT)> {
        aggregate_plain(self, uid, function)
    }

    /// Adds each window's records to an accumulator of `function` and gives its result to
    /// `process` when it fires (Flink's `aggregate(AggregateFunction,
    /// ProcessWindowFunction)`); see [`incremental`].
    pub fn aggregate_and_process<ACC: Data, V: Data, O: Data>(
        self,
        uid: &str,
        function: impl AggregateFunction<T, ACC, V> + Clone,
        process: impl ProcessWindowFunction<K, V, O>,
    ) -> Stream<O> {
        aggregate_plain_and_process(self, uid, function, process)
    }
}

/// [`WindowedStream::aggregate`] of windows that do not merge (tumbling, sliding, global:
/// sessions take an aggregate function whose accumulators merge).
fn aggregate_plain<K: Key, T: Data, A: sealed::BuildPlain<K, T>, ACC: Data, OUT: Data>(
    windowed: WindowedStream<K, T, A>,
    uid: &str,
    function: impl AggregateFunction<T, ACC, OUT> + Clone,
) -> Stream<(K, TimeWindow, OUT)> {
    let contents = Aggregate {
        function,
        _t: PhantomData,
    };
    A::build_plain(windowed, uid, contents)
}

/// [`WindowedStream::aggregate_and_process`] of windows that do not merge.
fn aggregate_plain_and_process<K, T, A, ACC, V, O>(
    windowed: WindowedStream<K, T, A>,
    uid: &str,
    function: impl AggregateFunction<T, ACC, V> + Clone,
    process: impl ProcessWindowFunction<K, V, O>,
) -> Stream<O>
where
    K: Key,
    T: Data,
    A: sealed::BuildPlain<K, T>,
    ACC: Data,
    V: Data,
    O: Data,
{
    let aggregate = Aggregate {
        function,
        _t: PhantomData,
    };
    A::build_plain(windowed, uid, ThenProcess::new(aggregate, process))
}

// Sealed: the contents types are the crate\'s own, and only the crate builds windows.
#[allow(private_bounds, private_interfaces)]
impl<K: Key, T: Data> sealed::Build<K, T> for WindowAssigner {
    fn build<C: Batch<K, T> + Merging<K, T>>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        contents: C,
    ) -> Stream<C::Out> {
        <Self as sealed::BuildPlain<K, T>>::build_plain(windowed, uid, contents)
    }
}

// Sealed: the contents types are the crate\'s own, and only the crate builds windows.
#[allow(private_bounds, private_interfaces)]
impl<K: Key, T: Data> sealed::BuildPlain<K, T> for WindowAssigner {
    fn build_plain<C: Batch<K, T>>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        contents: C,
    ) -> Stream<C::Out> {
        let op = WindowOperator::new(
            uid,
            windowed.assigner,
            windowed.allowed_lateness,
            windowed.late,
            (windowed.trigger, windowed.custom),
            Evictable::new(contents, windowed.evictor),
        );
        windowed.keyed.process(uid, op).one_subtask_if(windowed.all)
    }
}

/// What a window keeps and emits: the part of the operator that differs between reduce,
/// aggregate and process.
trait Contents<K, T>: Clone + Send + 'static {
    type State: Copy + Send + 'static;
    type Out: Data;
    /// Refuses what cannot work (an evictor keeping nothing).
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
    /// Whether an evictor stands in front of the function.
    fn evicting(&self) -> bool {
        false
    }
    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State>;
    /// Opens a process window function in `operator`: it declares its per-window
    /// states. After [`Contents::register`].
    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        operator: Operator<'_>,
    ) -> Result<()> {
        let _ = (backend, operator);
        Ok(())
    }
    /// Adds `record`, whose timestamp is `timestamp` (kept only under an evictor).
    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        timestamp: Option<u64>,
        record: T,
    ) -> Result<()>;
    /// Emits the result of `window` of `at`'s key, whose contents are kept in the
    /// namespace `stored` (the same window, but for merged sessions); nothing when it has
    /// no contents.
    fn emit<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
    /// [`Contents::emit`], then, when `purge` (a purging trigger), [`Contents::clear`] of
    /// `stored`.
    #[allow(clippy::too_many_arguments)]
    fn fire<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        purge: bool,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        self.emit(state, backend, at, stored, window, out)?;
        if purge {
            self.clear(state, backend, stored)?;
            self.keep_alive(backend, stored)?;
        }
        Ok(())
    }
    /// What a user-defined trigger answered for `window`: fire it, purge it, both or
    /// neither.
    fn act<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        result: custom::TriggerResult,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        match fire_and_purge(result) {
            (true, purge) => self.fire(state, purge, backend, at, window, window, out),
            (false, true) => {
                self.clear(state, backend, window)?;
                self.keep_alive(backend, window)
            }
            (false, false) => Ok(()),
        }
    }
    /// The registered state's untyped identity.
    fn raw(state: Self::State) -> RawStateId;
    /// Drops the window's contents.
    fn clear<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
    ) -> Result<()> {
        Ok(backend.clear(Self::raw(state), window)?)
    }
    /// `window` of `at`'s key ends (its time is up), before its contents are dropped:
    /// if the key has it, a process window function's `clear`, then its per-window
    /// states go ([`Contents::end`], the window held when `known` — the operator knows
    /// the key has it — or when it holds records).
    fn retire<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        known: bool,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (state, backend, at, window, known, out);
        Ok(())
    }
    /// `window` of `at`'s key ends (for a session, the merged session): if it is the
    /// key's — it holds records (`held`), or was emptied while open — a process window
    /// function's `clear`, then its per-window states go.
    fn end<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        held: bool,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (backend, at, window, held, out);
        Ok(())
    }
    /// `window`'s contents were emptied while it is open (purged, or evicted to
    /// nothing), so that [`Contents::retire`] still knows it.
    fn keep_alive<B: KeyedStateBackend>(&self, backend: &mut B, window: &TimeWindow) -> Result<()> {
        let _ = (backend, window);
        Ok(())
    }
}

/// Contents whose function can also take all of a window's records at once: what an
/// evicting window folds when it fires ([`evictors`]).
trait Batch<K, T>: Contents<K, T> {
    /// Emits the result of `window` of `at`'s key holding `elements` (at least one).
    fn apply<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
}

/// Moves the list in the namespace `from` after the one in `into`, and drops `from`.
fn merge_lists<V: Data, B: KeyedStateBackend>(
    state: ListStateId<V, TimeWindow>,
    backend: &mut B,
    from: &TimeWindow,
    into: &TimeWindow,
) -> Result<()> {
    let elements = backend.list_get(state, from)?;
    if !elements.is_empty() {
        backend.list_add_all(state, into, elements)?;
        backend.clear(state.raw(), from)?;
    }
    Ok(())
}

/// Contents that can merge, for merging windows (sessions): Flink's
/// `InternalMergingState::mergeNamespaces`.
trait Merging<K, T>: Contents<K, T> {
    /// Moves what the namespace `from` holds into `into`, after what `into` holds, and
    /// drops `from`.
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()>;
}

/// Emits a reduce's or aggregate's `result` for `window` of `key`, if it has one, with the
/// window's last millisecond as its timestamp.
fn emit_result<K: Clone, V>(
    key: &K,
    window: &TimeWindow,
    result: Option<V>,
    out: &mut Collector<'_, (K, TimeWindow, V)>,
) -> Result<()> {
    match result {
        Some(v) => out.collect_with_timestamp((key.clone(), *window, v), window.max_timestamp()),
        None => Ok(()),
    }
}

fn window_codec() -> Arc<BincodeCodec<TimeWindow>> {
    Arc::new(BincodeCodec::new())
}

#[derive(Clone)]
struct Reduce<T, F> {
    f: F,
    _t: PhantomData<fn() -> T>,
}

impl<K: Key, T: Data, F> Contents<K, T> for Reduce<T, F>
where
    F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    type State = ReducingStateId<T, TimeWindow>;
    type Out = (K, TimeWindow, T);

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        let d = ReducingStateDescriptor::<T>::new(WINDOW_CONTENTS_STATE, self.f.clone())
            .with_namespace(window_codec());
        Ok(backend.register_reducing(&d)?)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        _timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        Ok(backend.reducing_add(state, window, record)?)
    }

    fn emit<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let result = <Self as Folding<K, T>>::result(self, state, backend, stored)?;
        emit_result(at.key, window, result, out)
    }

    fn raw(state: Self::State) -> RawStateId {
        state.raw()
    }
}

impl<K: Key, T: Data, F> Batch<K, T> for Reduce<T, F>
where
    F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    fn apply<B: KeyedStateBackend>(
        &mut self,
        _backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let result = <Self as Folding<K, T>>::fold(self, elements);
        emit_result(at.key, window, result, out)
    }
}

impl<K: Key, T: Data, F> Merging<K, T> for Reduce<T, F>
where
    F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()> {
        if let Some(value) = backend.reducing_get(state, from)? {
            backend.reducing_add(state, into, value)?;
            backend.clear(state.raw(), from)?;
        }
        Ok(())
    }
}

/// Type parameters a struct only names.
type Types<T> = PhantomData<fn() -> T>;

#[derive(Clone)]
struct Aggregate<T, ACC, OUT, A> {
    function: A,
    _t: Types<(T, ACC, OUT)>,
}

impl<K, T, ACC, OUT, A> Contents<K, T> for Aggregate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: AggregateFunction<T, ACC, OUT> + Clone,
{
    type State = AggregatingStateId<T, ACC, OUT, TimeWindow>;
    type Out = (K, TimeWindow, OUT);

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        let d = AggregatingStateDescriptor::new(WINDOW_CONTENTS_STATE, self.function.clone())
            .with_namespace(window_codec());
        Ok(backend.register_aggregating(&d)?)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        _timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        Ok(backend.aggregating_add(state, window, record)?)
    }

    fn emit<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let result = <Self as Folding<K, T>>::result(self, state, backend, stored)?;
        emit_result(at.key, window, result, out)
    }

    fn raw(state: Self::State) -> RawStateId {
        state.raw()
    }
}

impl<K, T, ACC, OUT, A> Batch<K, T> for Aggregate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: AggregateFunction<T, ACC, OUT> + Clone,
{
    fn apply<B: KeyedStateBackend>(
        &mut self,
        _backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let result = <Self as Folding<K, T>>::fold(self, elements);
        emit_result(at.key, window, result, out)
    }
}

/// The result of `function` over `elements`, added to a new accumulator in order.
fn aggregate_all<T, ACC, OUT>(
    function: &impl AggregateFunction<T, ACC, OUT>,
    elements: Vec<T>,
) -> OUT {
    let mut acc = function.create_accumulator();
    for e in elements {
        function.add(&mut acc, e);
    }
    function.result(&acc)
}

#[derive(Clone)]
struct Process<T, O, F> {
    f: Function<F>,
    _t: PhantomData<fn() -> (T, O)>,
}

impl<T, O, F> Process<T, O, F> {
    fn new(f: F) -> Self {
        Self {
            f: Function::new(f),
            _t: PhantomData,
        }
    }
}

impl<K, T, O, F> Contents<K, T> for Process<T, O, F>
where
    K: Key,
    T: Data,
    O: Data,
    F: ProcessWindowFunction<K, T, O>,
{
    type State = ListStateId<T, TimeWindow>;
    type Out = O;

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        let d = ListStateDescriptor::<T>::new(WINDOW_CONTENTS_STATE).with_namespace(window_codec());
        Ok(backend.register_list(&d)?)
    }

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        operator: Operator<'_>,
    ) -> Result<()> {
        self.f.open::<K, T, O, B>(backend, operator)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        _timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        Ok(backend.list_add(state, window, record)?)
    }

    fn emit<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let elements = backend.list_get(state, stored)?;
        if elements.is_empty() {
            return Ok(());
        }
        self.apply(backend, at, window, elements, out)
    }

    fn raw(state: Self::State) -> RawStateId {
        state.raw()
    }

    fn retire<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        known: bool,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let held = known || !backend.list_get(state, window)?.is_empty();
        self.end(backend, at, window, held, out)
    }

    fn end<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        held: bool,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.f.clear::<K, T, O, B>(backend, at, window, held, out)
    }

    fn keep_alive<B: KeyedStateBackend>(&self, backend: &mut B, window: &TimeWindow) -> Result<()> {
        self.f.keep_alive(backend, window)
    }
}

impl<K, T, O, F> Batch<K, T> for Process<T, O, F>
where
    K: Key,
    T: Data,
    O: Data,
    F: ProcessWindowFunction<K, T, O>,
{
    fn apply<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.f.process(backend, at, window, elements, out)
    }
}

impl<K, T, O, F> Merging<K, T> for Process<T, O, F>
where
    K: Key,
    T: Data,
    O: Data,
    F: ProcessWindowFunction<K, T, O>,
{
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()> {
        merge_lists(state, backend, from, into)
    }
}

/// The window operator: a keyed process function over the window contents' state and the
/// operator's timers.
/// The window operators' metric of records dropped as late (Flink's name).
pub(crate) const LATE_DROPPED: &str = "numLateRecordsDropped";

#[derive(Clone)]
struct WindowOperator<K, T, C> {
    uid: String,
    assigner: WindowAssigner,
    allowed_lateness: Duration,
    /// Where records dropped as late go.
    late: Option<OutputTag<T>>,
    /// Counts the records dropped as late without a side output for them (Flink's
    /// `numLateRecordsDropped`); registered in `initialize_state`.
    dropped: crate::metrics::Counter,
    /// The operator's metric group, for its window function's `open`; set in
    /// `initialize_state`.
    metrics: Option<crate::metrics::MetricGroup>,
    /// `None`: the default of the assigner's time domain.
    trigger: Option<WindowTrigger>,
    /// A user-defined trigger.
    custom: Option<BoxedTrigger<T>>,
    contents: C,
    /// The windows of the record being processed (reused).
    windows: Vec<TimeWindow>,
    _k: PhantomData<fn() -> (K, T)>,
}

/// What [`WindowOperator::open`] makes.
struct Opened<S> {
    contents: S,
    millis: Millis,
    /// Allowed lateness in milliseconds (zero for processing time).
    lateness: u64,
    trigger: WindowTrigger,
    /// A count trigger's counts, per window.
    count: Option<ValueStateId<u64, TimeWindow>>,
    /// A continuous trigger's early firings, per window.
    schedule: Option<Schedule>,
    /// A user-defined trigger's state.
    custom: Option<CustomState>,
}

/// The name of the operator state that keeps what an operator's windows are (time domain,
/// size, slide, offset and allowed lateness), checked on restore.
pub const WINDOW_SPEC_STATE: &str = "window-spec";

/// What an operator's windows are (bincode: `event_time` as a byte, then size, slide,
/// offset and lateness as `u64`s): its timers say only when they fire, and which window a
/// timer stands for follows from these, so a restore under other windows is refused
/// (its open windows would never fire, or never be dropped).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WindowSpec {
    event_time: bool,
    millis: Millis,
    /// Allowed lateness in milliseconds (zero for processing time).
    lateness: u64,
}

impl fmt::Display for WindowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Millis {
            size,
            slide,
            offset,
        } = self.millis;
        let domain = if self.event_time {
            "event"
        } else {
            "processing"
        };
        write!(
            f,
            "{domain}-time windows of {size} ms every {slide} ms from offset {offset} ms \
             with {} ms of allowed lateness",
            self.lateness
        )
    }
}

impl<K, T, C> WindowOperator<K, T, C> {
    /// The operator `uid` of windows by `assigner` with `allowed_lateness`, late records
    /// into `late`, firing by a trigger (`None`: the default) or a user-defined one, and
    /// keeping `contents`.
    fn new(
        uid: &str,
        assigner: WindowAssigner,
        allowed_lateness: Duration,
        late: Option<OutputTag<T>>,
        (trigger, custom): (Option<WindowTrigger>, Option<BoxedTrigger<T>>),
        contents: C,
    ) -> Self {
        Self {
            uid: uid.to_string(),
            assigner,
            allowed_lateness,
            late,
            dropped: Default::default(),
            metrics: None,
            trigger,
            custom,
            contents,
            windows: Vec::new(),
            _k: PhantomData,
        }
    }

    /// The trigger, checked against the windows' time domain.
    fn trigger(&self) -> Result<WindowTrigger> {
        checked_trigger(&self.uid, self.trigger, self.assigner.domain)
    }

    /// The windows, checked (and the contents: an evictor).
    fn spec(&self) -> Result<WindowSpec>
    where
        C: Contents<K, T>,
    {
        let config = |e: String| RuntimeError::Config(format!("window operator {}: {e}", self.uid));
        self.contents.check().map_err(config)?;
        let millis = self.assigner.millis().map_err(config)?;
        let event_time = self.assigner.domain == TimeDomain::EventTime;
        let lateness = if event_time {
            whole_millis("allowed lateness", self.allowed_lateness).map_err(config)?
        } else {
            0
        };
        Ok(WindowSpec {
            event_time,
            millis,
            lateness,
        })
    }

    /// One element per subtask, each the same (union: every subtask gets them all back);
    /// the type is named for the state, not the Rust type, so that the code can move.
    fn spec_state() -> OperatorListStateDescriptor<WindowSpec> {
        OperatorListStateDescriptor {
            name: WINDOW_SPEC_STATE.to_string(),
            codec: Arc::new(BincodeCodec::named("cairn.windows.WindowSpec", 1)),
            mode: Redistribution::Union,
        }
    }
}

impl<K, T, C: Contents<K, T>> Checkpointed for WindowOperator<K, T, C> {
    /// Refuses a restore whose windows or trigger were others.
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.dropped = ctx.metrics.counter(LATE_DROPPED)?;
        self.metrics = Some(ctx.metrics.clone());
        keep_spec(
            ctx,
            &self.uid,
            &Self::spec_state(),
            self.spec()?,
            "its open windows would never fire or never be dropped",
        )?;
        let evicting = self.contents.evicting();
        keep_trigger(
            ctx,
            &self.uid,
            self.trigger()?,
            self.assigner.domain,
            evicting,
        )
    }
}

/// Operator `uid`'s trigger (`None`: the default of `domain`), checked against `domain`.
fn checked_trigger(
    uid: &str,
    trigger: Option<WindowTrigger>,
    domain: TimeDomain,
) -> Result<WindowTrigger> {
    let trigger = trigger.unwrap_or_else(|| WindowTrigger::default_for(domain));
    trigger
        .check(domain)
        .map_err(|e| RuntimeError::Config(format!("window operator {uid}: {e}")))?;
    Ok(trigger)
}

/// The name of the operator state that says whether an operator's windows have an
/// evictor, checked on restore.
pub const WINDOW_EVICTOR_STATE: &str = "window-evictor";

/// Whether windows have an evictor (bincode: a byte), kept in operator state: with one,
/// a window keeps its records with their timestamps whatever its function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EvictorSpec {
    evicting: bool,
}

impl fmt::Display for EvictorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.evicting {
            true => "windows with an evictor",
            false => "windows without an evictor",
        })
    }
}

/// Keeps `trigger` in operator state, refusing a restore whose trigger was another (one
/// written before triggers were kept had the default trigger of `domain`), and whether
/// the windows have an evictor (`evicting`), refusing a restore that adds or removes one
/// (one written before evictors existed had none).
fn keep_trigger(
    ctx: &mut InitContext<'_>,
    uid: &str,
    trigger: WindowTrigger,
    domain: TimeDomain,
    evicting: bool,
) -> Result<()> {
    keep_with_default(
        ctx,
        uid,
        (WINDOW_EVICTOR_STATE, "cairn.windows.EvictorSpec"),
        EvictorSpec { evicting: false },
        EvictorSpec { evicting },
        "with an evictor a window keeps its records and their timestamps, without one only \
         what its function keeps",
    )?;
    keep_with_default(
        ctx,
        uid,
        (WINDOW_TRIGGER_STATE, "cairn.windows.WindowTrigger"),
        WindowTrigger::default_for(domain),
        trigger,
        "the timers and counts its windows hold are the old trigger's",
    )
}

/// [`keep_spec`] in the union operator state `name` (its elements' codec named `codec`),
/// where a restored snapshot written before the state was kept holds `old` (the only
/// setting there was then).
fn keep_with_default<S>(
    ctx: &mut InitContext<'_>,
    uid: &str,
    (name, codec): (&str, &str),
    old: S,
    spec: S,
    why: &str,
) -> Result<()>
where
    S: cairn_core::StateValue + PartialEq + fmt::Display + Serialize + serde::de::DeserializeOwned,
{
    let d = OperatorListStateDescriptor {
        name: name.to_string(),
        codec: Arc::new(BincodeCodec::named(codec, 1)),
        mode: Redistribution::Union,
    };
    let id = ctx.operator_state.register_list(&d)?;
    let kept = ctx.operator_state.list(id)?;
    if ctx.is_restored && kept.is_empty() {
        kept.push(old);
    }
    keep_spec(ctx, uid, &d, spec, why)
}

/// Registers a count trigger's counts (per window) when `trigger` is one.
fn register_count<B: KeyedStateBackend>(
    backend: &mut B,
    trigger: &WindowTrigger,
) -> Result<Option<ValueStateId<u64, TimeWindow>>> {
    if trigger.count().is_none() {
        return Ok(None);
    }
    let d = ValueStateDescriptor::<u64>::new(WINDOW_COUNT_STATE).with_namespace(window_codec());
    Ok(Some(backend.register_value(&d)?))
}

/// The keyed states `trigger` fires by: a count trigger's counts, a continuous trigger's
/// early firings, a user-defined trigger's values and timers (`custom`).
type FiringStates = (
    Option<ValueStateId<u64, TimeWindow>>,
    Option<Schedule>,
    Option<CustomState>,
);

/// Registers the keyed states `trigger` fires by (see [`FiringStates`]).
fn register_firing<B: KeyedStateBackend, T>(
    backend: &mut B,
    trigger: &WindowTrigger,
    custom: &Option<BoxedTrigger<T>>,
) -> Result<FiringStates> {
    let custom = match custom {
        Some(_) => Some(CustomState::register(backend)?),
        None => None,
    };
    Ok((
        register_count(backend, trigger)?,
        Schedule::register(backend, trigger)?,
        custom,
    ))
}

/// Counts a record of `window` under a count trigger of `n`: whether the count reaches
/// `n`, in which case it starts over.
fn count_reaches<B: KeyedStateBackend>(
    backend: &mut B,
    count: ValueStateId<u64, TimeWindow>,
    n: u64,
    window: &TimeWindow,
) -> Result<bool> {
    let seen = backend.value_get(count, window)?.unwrap_or(0) + 1;
    if seen >= n {
        backend.clear(count.raw(), window)?;
        Ok(true)
    } else {
        backend.value_update(count, window, seen)?;
        Ok(false)
    }
}

/// Checks that what a window operator's operator state says its windows were is `spec`
/// (refusing the restore naming both, and `why` a change is refused, when not), and
/// keeps `spec` there.
fn keep_spec<S>(
    ctx: &mut InitContext<'_>,
    uid: &str,
    state: &OperatorListStateDescriptor<S>,
    spec: S,
    why: &str,
) -> Result<()>
where
    S: cairn_core::StateValue + PartialEq + fmt::Display,
{
    let id = ctx.operator_state.register_list(state)?;
    if let Some(old) = ctx
        .operator_state
        .list(id)?
        .iter()
        .find(|old| **old != spec)
    {
        return Err(RuntimeError::Restore {
            reason: format!(
                "window operator {uid}: its state holds {old}, this program asks for \
                 {spec}; changing this is not supported ({why}): keep it, or give the \
                 operator another uid"
            ),
        });
    }
    *ctx.operator_state.list(id)? = vec![spec];
    Ok(())
}

/// The time that places the record being processed in windows of `domain`: its
/// timestamp (an error naming operator `uid` when it has none) or the processing clock's.
fn record_time<O>(
    uid: &str,
    domain: TimeDomain,
    out: &Collector<'_, O>,
    timers: &TimerService,
) -> Result<u64> {
    match domain {
        TimeDomain::EventTime => out.timestamp().ok_or_else(|| {
            RuntimeError::user(
                uid,
                "a record without a timestamp reached event-time windows: assign \
                 timestamps upstream (Stream::assign_timestamps_and_watermarks); in-flight \
                 records restored from an unaligned checkpoint written before records \
                 carried timestamps have none",
            )
        }),
        TimeDomain::ProcessingTime => Ok(timers.current_processing_time()),
    }
}

impl<K: Key, T: Data, C: Contents<K, T>> KeyedProcessFunction for WindowOperator<K, T, C> {
    type Key = K;
    type In = T;
    type Out = C::Out;
    type State = Opened<C::State>;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State> {
        let spec = self.spec()?;
        let trigger = self.trigger()?;
        let (count, schedule, custom) = register_firing(backend, &trigger, &self.custom)?;
        let contents = self.contents.register(backend)?;
        // A window emptied while open must be marked when a key's timer may be the end
        // of windows the key does not have (see `on_timer`): under a trigger that sets
        // timers of its own, or with a lateness that makes a window's cleanup time
        // another's end.
        let empties = trigger.purge || self.custom.is_some() || self.contents.evicting();
        let slide = spec.millis.slide;
        let ambiguous = self.custom.is_some()
            || schedule.is_some()
            || (spec.lateness > 0 && spec.lateness.is_multiple_of(slide));
        let operator = Operator {
            uid: &self.uid,
            merging: false,
            marks_purged: empties && ambiguous,
            metrics: self.metrics.as_ref(),
        };
        self.contents.open(backend, operator)?;
        Ok(Opened {
            contents,
            millis: spec.millis,
            lateness: spec.lateness,
            count,
            schedule,
            custom,
            trigger,
        })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        record: T,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let domain = self.assigner.domain;
        let time = record_time(&self.uid, domain, out, timers)?;
        let watermark = timers.current_watermark();
        let mut windows = std::mem::take(&mut self.windows);
        state
            .millis
            .assign(time, &mut windows)
            .map_err(|e| RuntimeError::user(&self.uid, e))?;
        let mut record = Some(record);
        let mut taken = false;
        for (i, window) in windows.iter().enumerate() {
            // Late: its contents are gone (or about to be); the record is dropped for it.
            let cleanup = window.max_timestamp().saturating_add(state.lateness);
            if domain == TimeDomain::EventTime && watermark.is_some_and(|w| cleanup <= w) {
                continue;
            }
            taken = true;
            // The last window takes the record, the others a copy.
            let r = if i + 1 == windows.len() {
                record.take()
            } else {
                record.clone()
            };
            let Some(r) = r else { break };
            let timestamp = out.timestamp();
            if let (Some(custom), Some(custom_state)) = (&mut self.custom, state.custom) {
                // A user-defined trigger: it decides; only the cleanup is the operator's.
                let result =
                    custom.on_element(custom_state, backend, timers, &r, timestamp, window)?;
                self.contents
                    .add(state.contents, backend, window, timestamp, r)?;
                if result != custom::TriggerResult::Continue {
                    let at = At::new(key, timers);
                    self.contents
                        .act(state.contents, backend, &at, window, result, out)?;
                }
                match domain {
                    TimeDomain::EventTime => timers.register_event_time_timer(cleanup),
                    TimeDomain::ProcessingTime => {
                        timers.register_processing_time_timer(window.max_timestamp())
                    }
                }
                continue;
            }
            self.contents
                .add(state.contents, backend, window, timestamp, r)?;
            let fire = window.max_timestamp();
            if let (Some(n), Some(count)) = (state.trigger.count(), state.count) {
                // A count trigger: fire at `n` records since the last firing; only the
                // cleanup is timed.
                if count_reaches(backend, count, n, window)? {
                    self.fire(state, backend, &At::new(key, timers), window, out)?;
                }
                match domain {
                    TimeDomain::EventTime => timers.register_event_time_timer(cleanup),
                    TimeDomain::ProcessingTime => timers.register_processing_time_timer(fire),
                }
            } else if domain == TimeDomain::EventTime {
                if watermark.is_some_and(|w| fire <= w) {
                    // A late record within the allowed lateness: fire again at once.
                    self.fire(state, backend, &At::new(key, timers), window, out)?;
                } else {
                    timers.register_event_time_timer(fire);
                }
                if state.lateness > 0 {
                    timers.register_event_time_timer(cleanup);
                }
            } else {
                timers.register_processing_time_timer(fire);
            }
            if let Some(schedule) = &state.schedule {
                schedule.on_record(backend, timers, window, time)?;
            }
        }
        self.windows = windows;
        // Every window of the record is late (Flink's `isSkippedElement`): its side output,
        // or dropped and counted.
        match (&self.late, record) {
            (Some(tag), Some(r)) if !taken => out.output(tag, r),
            (None, Some(_)) if !taken => {
                self.dropped.inc();
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A timer at `time` fires the window whose last millisecond it is, and drops the
    /// contents of the window whose lateness ends then (the same window without
    /// lateness), and, under a continuous trigger, fires early the windows whose early
    /// firing is due then. A key has one timer per time, so one timer may stand for all
    /// of these, each for another window.
    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let at = At::new(key, timers);
        if let (Some(custom), Some(custom_state)) = (&mut self.custom, state.custom) {
            for (window, result) in custom.on_timer(custom_state, backend, timers, timer)? {
                self.contents
                    .act(state.contents, backend, &at, &window, result, out)?;
            }
        }
        // Only a timer of the windows' own domain ends windows or fires them by time: a
        // user-defined trigger may set timers in the other one too.
        if timer.domain != self.assigner.domain {
            return Ok(());
        }
        if let Some(schedule) = &state.schedule {
            self.fire_early(state, schedule, &at, timer.time, backend, timers, out)?;
        }
        let Some(end) = timer.time.checked_add(1) else {
            return Ok(());
        };
        let timed = state.trigger.timed();
        // Whether the key has each window this timer ends, surely: no trigger sets timers
        // of its own, and no window ends at the timer but the one it cleans up (with
        // lateness, one window's end may be another's cleanup time).
        let own_timers = self.custom.is_none() && state.schedule.is_none();
        let ending = state.millis.window_ending_at(end);
        if let Some(window) = ending {
            if timed {
                self.fire(state, backend, &at, &window, out)?;
            }
            if state.lateness == 0 {
                self.cleanup(state, backend, timers, &at, &window, own_timers, out)?;
            }
        }
        if state.lateness > 0 {
            let Some(end) = end.checked_sub(state.lateness) else {
                return Ok(());
            };
            if let Some(window) = state.millis.window_ending_at(end) {
                let known = own_timers && ending.is_none();
                self.cleanup(state, backend, timers, &at, &window, known, out)?;
            }
        }
        Ok(())
    }
}

impl<K: Key, T: Data, C: Contents<K, T>> WindowOperator<K, T, C> {
    /// Emits `window`'s result, and drops its contents after under a purging trigger.
    fn fire<B: KeyedStateBackend>(
        &mut self,
        state: &Opened<C::State>,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        out: &mut Collector<'_, C::Out>,
    ) -> Result<()> {
        let purge = state.trigger.purge;
        self.contents
            .fire(state.contents, purge, backend, at, window, window, out)
    }

    /// Under a continuous trigger, fires the windows (containing `time`) whose early
    /// firing is due at `time`.
    #[allow(clippy::too_many_arguments)]
    fn fire_early<B: KeyedStateBackend>(
        &mut self,
        state: &Opened<C::State>,
        schedule: &Schedule,
        at: &At<'_, K>,
        time: u64,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, C::Out>,
    ) -> Result<()> {
        if !schedule.may_be_due(time) {
            return Ok(());
        }
        let mut windows = std::mem::take(&mut self.windows);
        state
            .millis
            .assign(time, &mut windows)
            .map_err(|e| RuntimeError::user(&self.uid, e))?;
        for window in &windows {
            if schedule.due(backend, timers, window, time, state.trigger.purge)? {
                self.fire(state, backend, at, window, out)?;
            }
        }
        self.windows = windows;
        Ok(())
    }

    /// Drops `window`'s contents, count, early firing and user-defined trigger's values
    /// (after its `clear`), after calling a process window function's `clear` and
    /// dropping its per-window states if the key has the window (`known`: it surely
    /// has): its time is up.
    #[allow(clippy::too_many_arguments)]
    fn cleanup<B: KeyedStateBackend>(
        &mut self,
        state: &Opened<C::State>,
        backend: &mut B,
        timers: &mut TimerService,
        at: &At<'_, K>,
        window: &TimeWindow,
        known: bool,
        out: &mut Collector<'_, C::Out>,
    ) -> Result<()> {
        if let (Some(custom), Some(custom_state)) = (&mut self.custom, state.custom) {
            custom.clear(custom_state, backend, timers, window)?;
        }
        self.contents
            .retire(state.contents, backend, at, window, known, out)?;
        self.contents.clear(state.contents, backend, window)?;
        if let Some(schedule) = &state.schedule {
            schedule.clear(backend, window)?;
        }
        match state.count {
            Some(count) => Ok(backend.clear(count.raw(), window)?),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(size: u64, slide: u64, offset: u64) -> Millis {
        let d = Duration::from_millis;
        let a =
            WindowAssigner::new(d(size), d(slide), TimeDomain::EventTime).with_offset(d(offset));
        a.millis().expect("valid")
    }

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    fn assign(m: &Millis, t: u64) -> Vec<TimeWindow> {
        let mut out = vec![w(1, 2)];
        m.assign(t, &mut out).expect("assign");
        out
    }

    #[test]
    fn tumbling_windows_hold_each_timestamp_once() {
        let m = millis(10, 10, 0);
        assert_eq!(assign(&m, 0), vec![w(0, 10)]);
        assert_eq!(assign(&m, 9), vec![w(0, 10)]);
        assert_eq!(assign(&m, 10), vec![w(10, 20)]);
        assert_eq!(m.window_ending_at(20), Some(w(10, 20)));
        assert_eq!(m.window_ending_at(15), None);
        let offset = millis(10, 10, 3);
        assert_eq!(assign(&offset, 12), vec![w(3, 13)]);
        assert_eq!(assign(&offset, 13), vec![w(13, 23)]);
        assert_eq!(
            assign(&offset, 2),
            vec![w(0, 3)],
            "[-7, 3) starts at the epoch"
        );
        assert_eq!(offset.window_ending_at(3), Some(w(0, 3)));
        assert_eq!(offset.window_ending_at(13), Some(w(3, 13)));
        assert_eq!(offset.window_ending_at(10), None);
    }

    #[test]
    fn sliding_windows_hold_each_timestamp_size_over_slide_times() {
        let m = millis(10, 4, 0);
        assert_eq!(assign(&m, 13), vec![w(12, 22), w(8, 18), w(4, 14)]);
        assert_eq!(assign(&m, 12), vec![w(12, 22), w(8, 18), w(4, 14)]);
        assert_eq!(
            assign(&m, 11),
            vec![w(8, 18), w(4, 14)],
            "[0, 10) ends before 11"
        );
        assert_eq!(
            assign(&m, 1),
            vec![w(0, 10), w(0, 6), w(0, 2)],
            "windows starting before the epoch start at it, each its own end"
        );
        for t in 0..100 {
            for window in assign(&m, t) {
                assert!(window.start <= t && t < window.end, "{t} in {window}");
                assert_eq!(m.window_ending_at(window.end), Some(window));
            }
        }
        let near_the_end = u64::MAX - 10;
        assert_eq!(assign(&m, near_the_end).len(), 3);
        let err = m
            .assign(near_the_end + 1, &mut Vec::new())
            .expect_err("too late");
        assert!(err.contains("too close to u64::MAX"), "{err}");
    }

    #[test]
    fn bad_sizes_are_errors() {
        let d = Duration::from_millis;
        let e = TimeDomain::EventTime;
        let err = |a: WindowAssigner| a.millis().expect_err("invalid");
        assert!(err(WindowAssigner::new(d(0), d(0), e)).contains("at least 1 ms"));
        let half = Duration::from_micros(500);
        assert!(err(WindowAssigner::new(d(10), half, e)).contains("whole milliseconds"));
        let offset = WindowAssigner::new(d(10), d(5), e).with_offset(d(5));
        assert!(err(offset).contains("smaller than the slide"));
        let fraction = WindowAssigner::new(Duration::from_micros(1_500), d(1), e);
        assert!(err(fraction).contains("whole milliseconds"));
        let many = WindowAssigner::new(d(10_001), d(1), e);
        assert!(err(many).contains("10001 windows"), "{}", err(many));
        assert!(WindowAssigner::new(d(10_000), d(1), e).millis().is_ok());
    }

    type SumOp = WindowOperator<u64, u64, Reduce<u64, fn(u64, u64) -> u64>>;

    /// A window operator over `u64`s of key 1 emitting `(key, window, u64)` over a
    /// hashmap backend, driven as its keyed operator drives it.
    pub(super) struct Harness<F: KeyedProcessFunction> {
        pub(super) backend: cairn_hashmap::HashMapBackend,
        op: F,
        pub(super) state: F::State,
        timers: crate::timers::Timers,
        emitted: crate::chain::Recorder<(u64, TimeWindow, u64)>,
        /// The side output named [`LATE`], of `u64` records.
        late: crate::chain::Recorder<u64>,
        sides: crate::side::SideOutputs,
        key: Vec<u8>,
    }

    /// The late data's side output of the harness.
    pub(super) const LATE: &str = "late";

    /// A reduce adding `u64`s.
    pub(super) fn sum() -> Reduce<u64, fn(u64, u64) -> u64> {
        Reduce {
            f: |a, b| a + b,
            _t: PhantomData,
        }
    }

    impl Harness<SumOp> {
        fn new(
            assigner: WindowAssigner,
            lateness: u64,
            clock: Arc<cairn_core::ManualClock>,
        ) -> Self {
            Self::with_trigger(assigner, lateness, None, clock)
        }

        fn with_trigger(
            assigner: WindowAssigner,
            lateness: u64,
            trigger: Option<WindowTrigger>,
            clock: Arc<cairn_core::ManualClock>,
        ) -> Self {
            let late = Some(crate::side::OutputTag::new(LATE));
            let lateness = Duration::from_millis(lateness);
            let op = WindowOperator::new("sum", assigner, lateness, late, (trigger, None), sum());
            Harness::of(op, clock)
        }

        fn contents(&mut self, window: TimeWindow) -> Option<u64> {
            self.backend.set_current_key(&self.key).expect("key");
            let id = self.state.contents;
            self.backend.reducing_get(id, &window).expect("get")
        }
    }

    impl<F> Harness<F>
    where
        F: KeyedProcessFunction<Key = u64, In = u64, Out = (u64, TimeWindow, u64)>,
    {
        pub(super) fn of(mut op: F, clock: Arc<cairn_core::ManualClock>) -> Self {
            use cairn_core::Codec;
            let mut backend = cairn_hashmap::HashMapBackend::new(cairn_hashmap::HashMapConfig {
                uid: "sum".into(),
                max_parallelism: 128,
                key_group_range: cairn_core::KeyGroupRange::new(0, 127),
                key_codec: BincodeCodec::<u64>::new().identity().clone(),
            })
            .expect("backend");
            let state = op.open(&mut backend).expect("open");
            let key = BincodeCodec::<u64>::new().encode_to_vec(&1).expect("key");
            backend.set_current_key(&key).expect("key");
            let clock = crate::timers::ProcessingClock::new(clock);
            let late = crate::chain::Recorder::new();
            let lane: Box<dyn crate::chain::Chain<u64>> = Box::new(late.clone());
            let sides = crate::side::SideOutputs::new("sum", vec![(LATE.into(), Box::new(lane))]);
            Self {
                backend,
                op,
                state,
                timers: crate::timers::Timers::new(clock),
                emitted: crate::chain::Recorder::new(),
                late,
                sides,
                key,
            }
        }

        pub(super) fn process(&mut self, value: u64, timestamp: Option<u64>) {
            self.backend.set_current_key(&self.key).expect("key");
            let mut out = Collector::with_sides(&mut self.emitted, timestamp, &mut self.sides);
            let timers = self.timers.service();
            self.op
                .process(&self.state, &1, value, &mut self.backend, timers, &mut out)
                .expect("process");
            self.timers
                .apply(&mut self.backend, &self.key)
                .expect("timers");
        }

        fn on_timer(&mut self, time: u64, domain: TimeDomain, key: &[u8]) {
            self.backend.set_current_key(key).expect("key");
            let timestamp = (domain == TimeDomain::EventTime).then_some(time);
            let mut out = Collector::with_sides(&mut self.emitted, timestamp, &mut self.sides);
            let timer = Timer { time, domain };
            let timers = self.timers.service();
            self.op
                .on_timer(&self.state, &1, timer, &mut self.backend, timers, &mut out)
                .expect("timer");
            self.timers.apply(&mut self.backend, key).expect("timers");
        }

        /// The watermark advances: due event-time timers fire.
        pub(super) fn advance(&mut self, watermark: u64) {
            self.timers.advance_watermark(watermark);
            while let Some((time, key)) = self.timers.pop_event_due(&mut self.backend).expect("due")
            {
                self.on_timer(time, TimeDomain::EventTime, &key);
            }
        }

        /// Due processing-time timers fire.
        pub(super) fn fire_processing(&mut self) {
            let now = self.timers.now();
            while let Some((time, key)) = self
                .timers
                .pop_processing_due(&mut self.backend, now)
                .expect("due")
            {
                self.on_timer(time, TimeDomain::ProcessingTime, &key);
            }
        }

        /// The pending timers' times in `domain`.
        pub(super) fn pending(&self, domain: TimeDomain) -> Vec<u64> {
            self.timers.pending(domain)
        }

        /// Sets the backend's current key to the harness's key.
        pub(super) fn select_key(&mut self) {
            self.backend.set_current_key(&self.key).expect("key");
        }

        pub(super) fn emitted(&mut self) -> Vec<((u64, TimeWindow, u64), Option<u64>)> {
            self.emitted.take_records()
        }

        /// What went to the late data's side output since the last call.
        pub(super) fn late(&mut self) -> Vec<(u64, Option<u64>)> {
            self.late.take_records()
        }
    }

    /// A fired window's contents are dropped when it fires without lateness, and when
    /// its lateness has passed with it; until then a fired window keeps them.
    #[test]
    fn a_window_keeps_its_contents_until_its_lateness_has_passed() {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
        for lateness in [0, 5] {
            let mut h = Harness::new(
                tumbling,
                lateness,
                Arc::new(cairn_core::ManualClock::new(0)),
            );
            h.process(1, Some(3));
            h.process(2, Some(8));
            let window = w(0, 10);
            assert_eq!(h.contents(window), Some(3));
            h.advance(8);
            assert_eq!(h.emitted(), vec![], "before its end");
            h.advance(9);
            assert_eq!(h.emitted(), vec![((1, window, 3), Some(9))]);
            if lateness == 0 {
                assert_eq!(h.contents(window), None, "dropped when it fires");
            } else {
                assert_eq!(h.contents(window), Some(3), "kept for the lateness");
                h.advance(13);
                assert_eq!(h.contents(window), Some(3), "until its end");
                h.advance(14);
                assert_eq!(h.contents(window), None, "dropped after its lateness");
                assert_eq!(h.emitted(), vec![], "a cleanup does not fire");
            }
        }
    }

    /// A record within the lateness of a window that has fired makes it fire again at
    /// once, with everything it holds; one past the lateness is dropped.
    #[test]
    fn a_late_record_within_the_lateness_fires_its_window_at_once() {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let mut h = Harness::new(tumbling, 5, Arc::new(cairn_core::ManualClock::new(0)));
        h.process(1, Some(3));
        h.advance(9);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 1), Some(9))]);
        h.process(2, Some(9));
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 10), 3), Some(9))],
            "at once, not at the next watermark"
        );
        h.advance(14);
        assert_eq!(h.emitted(), vec![], "the cleanup does not fire");
        assert_eq!(h.late(), vec![], "nothing was late before");
        h.process(4, Some(0));
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![], "dropped: the window is gone");
        assert_eq!(h.contents(w(0, 10)), None);
        assert_eq!(
            h.late(),
            vec![(4, Some(0))],
            "into the late data's side output"
        );
    }

    /// A count trigger fires a window every `n` records with its running result, not when
    /// the watermark passes its end; what it had not fired is dropped at the cleanup.
    #[test]
    fn a_count_trigger_fires_every_n_records_and_not_by_time() {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let clock = Arc::new(cairn_core::ManualClock::new(0));
        let count = Some(triggers::CountTrigger::of(2));
        let mut h = Harness::with_trigger(tumbling, 0, count, clock);
        h.process(1, Some(1));
        assert_eq!(h.emitted(), vec![]);
        h.process(2, Some(2));
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 3), Some(9))]);
        h.process(4, Some(3));
        h.process(8, Some(4));
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 15), Some(9))], "running");
        h.process(16, Some(5));
        h.process(32, Some(12));
        let count = h.state.count.expect("a count state");
        h.select_key();
        assert_eq!(h.backend.value_get(count, &w(0, 10)).expect("get"), Some(1));
        h.advance(9);
        assert_eq!(h.emitted(), vec![], "time does not fire it");
        assert_eq!(h.contents(w(0, 10)), None, "cleaned up");
        h.select_key();
        assert_eq!(
            h.backend.value_get(count, &w(0, 10)).expect("get"),
            None,
            "and its count"
        );
        assert_eq!(h.contents(w(10, 20)), Some(32));
        h.process(64, Some(13));
        assert_eq!(
            h.emitted(),
            vec![((1, w(10, 20), 96), Some(19))],
            "a count of its own"
        );
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![]);
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A purging trigger drops a window's contents after each firing: a count trigger's
    /// firings each have what came since the last; a late firing within the lateness has
    /// only the late record.
    #[test]
    fn a_purging_trigger_drops_the_contents_after_each_firing() {
        let tumbling = || TumblingEventTimeWindows::of(Duration::from_millis(10));
        let clock = Arc::new(cairn_core::ManualClock::new(0));
        let purging_count = Some(triggers::PurgingTrigger::of(triggers::CountTrigger::of(2)));
        let mut h = Harness::with_trigger(tumbling(), 0, purging_count, clock.clone());
        for (v, t) in [(1, 1), (2, 2), (4, 3), (8, 4), (16, 5)] {
            h.process(v, Some(t));
        }
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 10), 3), Some(9)), ((1, w(0, 10), 12), Some(9))]
        );
        assert_eq!(h.contents(w(0, 10)), Some(16));
        h.advance(9);
        assert_eq!(h.emitted(), vec![]);
        assert_eq!(h.contents(w(0, 10)), None);

        let purging_time = Some(triggers::PurgingTrigger::of(
            triggers::EventTimeTrigger::create(),
        ));
        let mut h = Harness::with_trigger(tumbling(), 5, purging_time, clock);
        h.process(1, Some(3));
        h.process(2, Some(4));
        h.advance(9);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 3), Some(9))]);
        h.process(4, Some(8));
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 10), 4), Some(9))],
            "the late firing has the late record only"
        );
        h.advance(14);
        assert_eq!(h.contents(w(0, 10)), None);
    }

    /// A count trigger on processing-time windows: counts fire, the clock only cleans up.
    #[test]
    fn a_count_trigger_on_processing_time_windows() {
        let clock = Arc::new(cairn_core::ManualClock::new(3));
        let tumbling = TumblingProcessingTimeWindows::of(Duration::from_millis(10));
        let count = Some(triggers::CountTrigger::of(3));
        let mut h = Harness::with_trigger(tumbling, 0, count, clock.clone());
        for v in [1, 2, 4, 8] {
            h.process(v, None);
        }
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 7), Some(9))]);
        clock.set(10);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![], "the clock does not fire it");
        assert_eq!(h.contents(w(0, 10)), None);
    }

    /// A snapshot written before triggers were kept in operator state had the default
    /// trigger: restored under a count trigger it is refused, under the default it is
    /// not; an operator that is new takes any trigger.
    #[test]
    fn a_restore_from_before_triggers_were_kept_has_the_default_trigger() {
        let op = |trigger| WindowOperator {
            uid: "sum".into(),
            assigner: TumblingEventTimeWindows::of(Duration::from_millis(10)),
            allowed_lateness: Duration::ZERO,
            late: None::<crate::side::OutputTag<u64>>,
            dropped: Default::default(),
            metrics: None,
            trigger,
            custom: None,
            contents: sum(),
            windows: Vec::new(),
            _k: PhantomData::<fn() -> (u64, u64)>,
        };
        let init = |trigger, is_restored| {
            let mut state = cairn_core::OperatorStateBackend::new("sum");
            let mut ctx = InitContext {
                operator_state: &mut state,
                is_restored,
                subtask: crate::function::SubtaskInfo {
                    index: 0,
                    parallelism: 1,
                    max_parallelism: 128,
                    attempt: 0,
                },
                run_id: "run",
                checkpointing: true,
                metrics: &crate::metrics::MetricGroup::unregistered("sum.0"),
            };
            op(trigger).initialize_state(&mut ctx)
        };
        let count = Some(triggers::CountTrigger::of(2));
        let err = init(count, true).expect_err("another trigger").to_string();
        assert!(
            err.contains("holds an event-time trigger")
                && err.contains("asks for a count trigger of 2 records"),
            "{err}"
        );
        init(None, true).expect("the default trigger");
        init(count, false).expect("a new operator");
    }

    /// Triggers that cannot work are configuration errors.
    #[test]
    fn triggers_that_cannot_work_are_refused() {
        let event = TimeDomain::EventTime;
        let processing = TimeDomain::ProcessingTime;
        assert!(triggers::CountTrigger::of(0).check(event).is_err());
        assert!(triggers::CountTrigger::of(1).check(processing).is_ok());
        let err = triggers::EventTimeTrigger::create()
            .check(processing)
            .expect_err("mismatch");
        assert!(
            err.contains("event-time trigger on processing-time windows"),
            "{err}"
        );
        assert!(
            triggers::PurgingTrigger::of(triggers::ProcessingTimeTrigger::create())
                .check(event)
                .is_err()
        );
    }

    /// A record goes to the late data's side output only when every one of its sliding
    /// windows is late (Flink's `isSkippedElement`): one that some window still takes is
    /// not late, whichever of its windows is.
    #[test]
    fn a_record_is_late_data_when_all_its_sliding_windows_are_late() {
        let sliding =
            SlidingEventTimeWindows::of(Duration::from_millis(10), Duration::from_millis(5));
        let mut h = Harness::new(sliding, 0, Arc::new(cairn_core::ManualClock::new(0)));
        h.process(1, Some(12));
        h.advance(14);
        assert_eq!(h.emitted(), vec![((1, w(5, 15), 1), Some(14))]);
        // In [5, 15), late, and [10, 20), open.
        h.process(2, Some(12));
        assert_eq!(h.late(), vec![], "[10, 20) took it");
        // In [0, 10) and [5, 15), both late.
        h.process(4, Some(7));
        assert_eq!(h.late(), vec![(4, Some(7))]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(10, 20), 3), Some(19))]);
        assert_eq!(h.late(), vec![]);
    }

    /// Processing-time windows take the clock's time, not the record's, and fire when
    /// the clock passes their end, dropping their contents.
    #[test]
    fn processing_time_windows_go_by_the_clock() {
        let clock = Arc::new(cairn_core::ManualClock::new(3));
        let tumbling = TumblingProcessingTimeWindows::of(Duration::from_millis(10));
        let mut h = Harness::new(tumbling, 5, clock.clone());
        h.process(1, Some(1_000));
        clock.set(8);
        h.process(2, None);
        clock.set(12);
        h.process(4, Some(0));
        assert_eq!(h.contents(w(0, 10)), Some(3));
        assert_eq!(h.contents(w(10, 20)), Some(4));
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![], "watermarks do not fire them");
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 3), Some(9))]);
        assert_eq!(h.contents(w(0, 10)), None, "no lateness in processing time");
        clock.set(19);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, w(10, 20), 4), Some(19))]);
    }
}
