//! Session windows (Flink's `EventTimeSessionWindows`, `ProcessingTimeSessionWindows` and
//! their dynamic-gap forms).
//!
//! A record at time `t` opens the window `[t, t + gap)`; windows of one key that overlap
//! or touch ([`TimeWindow::intersects`]) merge into one, so a session is a run of records
//! none of which is a gap or more after the one before, and it ends a gap after its last
//! record. The gap is fixed ([`EventTimeSessionWindows::with_gap`]) or taken from each
//! record ([`EventTimeSessionWindows::with_dynamic_gap`]).
//!
//! Firing, lateness, output and timestamps are as for the other windows (see
//! [`crate::windows`]): an event-time session fires when the watermark reaches its last
//! millisecond; a record within the allowed lateness that reaches (or extends) a session
//! which has fired makes it fire again at once; a record whose session, merged, is past
//! its lateness is dropped.
//!
//! State, as in Flink's `MergingWindowSet`: each key keeps its open sessions in the keyed
//! state [`MERGING_WINDOW_SET_STATE`], each with the namespace its contents are kept
//! under in [`WINDOW_CONTENTS_STATE`] — the window it started as — so that a session
//! that grows does not move its contents; when two sessions merge, the later one's
//! contents are added to the earlier one's (a process function then sees the earlier
//! session's records first). `aggregate` keeps the accumulator as a value state and
//! needs accumulators that merge ([`MergingAggregateFunction`]).
//!
//! A process window function's [`clear`](super::ProcessWindowFunction::clear) is called
//! when a session is dropped (its cleanup time), with the whole session as its window;
//! per-window state is refused on sessions, as in Flink (see [`super::context`]).
//!
//! Restores: the sessions are kept whole, so a program may change the gap; a change of
//! time domain or allowed lateness is refused (the timers that drop sessions were set by
//! the old lateness), as is a restore of tumbling or sliding windows' state into
//! sessions or back (the operator state [`WINDOW_SPEC_STATE`] has another type).

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{
    BincodeCodec, KeyedStateBackend, MergingAggregateFunction, OperatorListStateDescriptor,
    RawStateId, Redistribution, ValueStateDescriptor, ValueStateId,
};
use serde::{Deserialize, Serialize};

use super::context::{At, Operator};
use super::incremental::{Folding, ThenProcess};
use super::{
    aggregate_all, checked_trigger, emit_result, keep_spec, keep_trigger, record_time,
    register_count, sealed, whole_millis, window_codec, Batch, Contents, Evictable, Merging,
    ProcessWindowFunction, TimeWindow, Types, WindowTrigger, WindowedStream, Windows,
    WINDOW_CONTENTS_STATE, WINDOW_SPEC_STATE,
};
use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, Collector, Data, InitContext, Key, KeyedProcessFunction};
use crate::graph::Stream;
use crate::side::OutputTag;
use crate::timers::{TimeDomain, Timer, TimerService};

/// The name of the keyed state that holds a key's open sessions (Flink's
/// `merging-window-set`).
pub const MERGING_WINDOW_SET_STATE: &str = "merging-window-set";

/// Session windows of event time (Flink's `EventTimeSessionWindows`).
#[derive(Debug)]
pub struct EventTimeSessionWindows;

impl EventTimeSessionWindows {
    /// Sessions that end `gap` after their last record.
    pub fn with_gap(gap: Duration) -> SessionWindows<FixedGap> {
        SessionWindows::new(FixedGap(gap), TimeDomain::EventTime)
    }

    /// Sessions that end, after their last record, the gap `gap(record)` gives (Flink's
    /// `withDynamicGap`; name the record's type in the closure: `|e: &Event| ..`).
    pub fn with_dynamic_gap<T, F>(gap: F) -> SessionWindows<DynamicGap<F>>
    where
        F: Fn(&T) -> Duration + Clone + Send + 'static,
    {
        SessionWindows::new(DynamicGap(gap), TimeDomain::EventTime)
    }
}

/// Session windows of processing time (Flink's `ProcessingTimeSessionWindows`).
#[derive(Debug)]
pub struct ProcessingTimeSessionWindows;

impl ProcessingTimeSessionWindows {
    /// Sessions that end `gap` after their last record was processed.
    pub fn with_gap(gap: Duration) -> SessionWindows<FixedGap> {
        SessionWindows::new(FixedGap(gap), TimeDomain::ProcessingTime)
    }

    /// Sessions that end, after their last record was processed, the gap `gap(record)`
    /// gives (name the record's type in the closure: `|e: &Event| ..`).
    pub fn with_dynamic_gap<T, F>(gap: F) -> SessionWindows<DynamicGap<F>>
    where
        F: Fn(&T) -> Duration + Clone + Send + 'static,
    {
        SessionWindows::new(DynamicGap(gap), TimeDomain::ProcessingTime)
    }
}

/// Session windows with a gap of `G` ([`FixedGap`] or [`DynamicGap`]), for
/// [`crate::KeyedStream::window`].
#[derive(Clone, Copy, Debug)]
pub struct SessionWindows<G> {
    gap: G,
    domain: TimeDomain,
}

impl<G> SessionWindows<G> {
    fn new(gap: G, domain: TimeDomain) -> Self {
        Self { gap, domain }
    }

    /// The time domain the sessions are in.
    pub fn domain(&self) -> TimeDomain {
        self.domain
    }
}

impl<G> sealed::Sealed for SessionWindows<G> {}
impl<G: fmt::Debug> Windows for SessionWindows<G> {}

/// How long a session lasts after a record of type `T`: [`FixedGap`] or [`DynamicGap`]
/// (sealed).
pub trait SessionGap<T>: sealed::Sealed + Clone + Send + 'static {
    /// The gap after `record`: whole milliseconds, at least one.
    fn gap(&self, record: &T) -> Duration;

    /// The gap if it is the same for every record (checked when the job starts).
    fn fixed(&self) -> Option<Duration> {
        None
    }
}

/// The same gap after every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedGap(pub Duration);

impl sealed::Sealed for FixedGap {}
impl<F> sealed::Sealed for DynamicGap<F> {}

impl<T> SessionGap<T> for FixedGap {
    fn gap(&self, _: &T) -> Duration {
        self.0
    }

    fn fixed(&self) -> Option<Duration> {
        Some(self.0)
    }
}

/// A gap taken from each record by a function.
#[derive(Clone, Copy)]
pub struct DynamicGap<F>(pub F);

impl<F> fmt::Debug for DynamicGap<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DynamicGap(..)")
    }
}

impl<T, F> SessionGap<T> for DynamicGap<F>
where
    F: Fn(&T) -> Duration + Clone + Send + 'static,
{
    fn gap(&self, record: &T) -> Duration {
        (self.0)(record)
    }
}

impl<K: Key, T: Data, G: SessionGap<T> + fmt::Debug> WindowedStream<K, T, SessionWindows<G>> {
    /// Adds each session's records to an accumulator of `function` and emits `(key,
    /// session, result)` when it fires; merging sessions merge their accumulators.
    pub fn aggregate<ACC: Data, OUT: Data>(
        self,
        uid: &str,
        function: impl MergingAggregateFunction<T, ACC, OUT> + Clone,
    ) -> Stream<(K, TimeWindow, OUT)> {
        let accumulate = Accumulate {
            function,
            _t: PhantomData,
        };
        sealed::Build::build(self, uid, accumulate)
    }

    /// Adds each session's records to an accumulator of `function` (merged when sessions
    /// merge) and gives its result to `process` when it fires; see
    /// [`super::incremental`].
    pub fn aggregate_and_process<ACC: Data, V: Data, O: Data>(
        self,
        uid: &str,
        function: impl MergingAggregateFunction<T, ACC, V> + Clone,
        process: impl ProcessWindowFunction<K, V, O>,
    ) -> Stream<O> {
        let accumulate = Accumulate {
            function,
            _t: PhantomData,
        };
        sealed::Build::build(self, uid, ThenProcess::new(accumulate, process))
    }
}

// Sealed: the contents types are the crate\'s own, and only the crate builds windows.
#[allow(private_bounds, private_interfaces)]
impl<K: Key, T: Data, G: SessionGap<T> + fmt::Debug> sealed::Build<K, T> for SessionWindows<G> {
    fn build<C: Batch<K, T> + Merging<K, T>>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        contents: C,
    ) -> Stream<C::Out> {
        let op = SessionOperator {
            uid: uid.to_string(),
            sessions: windowed.assigner,
            allowed_lateness: windowed.allowed_lateness,
            late: windowed.late,
            dropped: Default::default(),
            metrics: None,
            trigger: windowed.trigger,
            contents: Evictable::new(contents, windowed.evictor),
            _k: PhantomData,
        };
        windowed.keyed.process(uid, op).one_subtask_if(windowed.all)
    }
}

/// An aggregate over merging windows: the accumulator as a value state, so that two can
/// be merged (an aggregating state gives only the result).
#[derive(Clone)]
struct Accumulate<T, ACC, OUT, A> {
    function: A,
    _t: Types<(T, ACC, OUT)>,
}

impl<K, T, ACC, OUT, A> Contents<K, T> for Accumulate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: MergingAggregateFunction<T, ACC, OUT> + Clone,
{
    type State = ValueStateId<ACC, TimeWindow>;
    type Out = (K, TimeWindow, OUT);

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        let d =
            ValueStateDescriptor::<ACC>::new(WINDOW_CONTENTS_STATE).with_namespace(window_codec());
        Ok(backend.register_value(&d)?)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        _timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        let mut acc = match backend.value_get(state, window)? {
            Some(acc) => acc,
            None => self.function.create_accumulator(),
        };
        self.function.add(&mut acc, record);
        Ok(backend.value_update(state, window, acc)?)
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

impl<K, T, ACC, OUT, A> Batch<K, T> for Accumulate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: MergingAggregateFunction<T, ACC, OUT> + Clone,
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

impl<K, T, ACC, OUT, A> Folding<K, T> for Accumulate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: MergingAggregateFunction<T, ACC, OUT> + Clone,
{
    type Value = OUT;

    fn result<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        stored: &TimeWindow,
    ) -> Result<Option<OUT>> {
        let acc = backend.value_get(state, stored)?;
        Ok(acc.map(|acc| self.function.result(&acc)))
    }

    fn fold(&mut self, elements: Vec<T>) -> Option<OUT> {
        Some(aggregate_all(&self.function, elements))
    }
}

impl<K, T, ACC, OUT, A> Merging<K, T> for Accumulate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: MergingAggregateFunction<T, ACC, OUT> + Clone,
{
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()> {
        let Some(b) = backend.value_get(state, from)? else {
            return Ok(());
        };
        let merged = match backend.value_get(state, into)? {
            Some(a) => self.function.merge(a, b),
            None => b,
        };
        backend.value_update(state, into, merged)?;
        Ok(backend.clear(state.raw(), from)?)
    }
}

/// One open session of a key: its window, the namespace its contents are kept under (the
/// window it started as, which it holds), and its one pending timer.
///
/// The timer is lazy: a session that grows keeps the timer it has, and when that fires
/// before the session is due, it is moved on to the session's end (or, once the session
/// has fired, to its cleanup time). A record that extends a session thus costs no timer
/// work (Flink deletes and registers a timer per record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    window: TimeWindow,
    stored: TimeWindow,
    /// The time of its pending timer: at or before its end while it has not fired, at or
    /// before its cleanup time once it has.
    timer: u64,
    /// It fired at its current end and waits for its cleanup time (with allowed lateness).
    fired: bool,
}

/// What a session operator's state must agree with on restore: its time domain and
/// allowed lateness (bincode: `event_time` as a byte, then the lateness as a `u64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionSpec {
    event_time: bool,
    /// Allowed lateness in milliseconds (zero for processing time).
    lateness: u64,
}

impl fmt::Display for SessionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = if self.event_time {
            "event"
        } else {
            "processing"
        };
        write!(
            f,
            "{domain}-time session windows with {} ms of allowed lateness",
            self.lateness
        )
    }
}

/// The session window operator.
#[derive(Clone)]
struct SessionOperator<K, T, G, C> {
    uid: String,
    sessions: SessionWindows<G>,
    allowed_lateness: Duration,
    /// Where records dropped as late go.
    late: Option<OutputTag<T>>,
    /// Counts the records dropped as late without a side output for them.
    dropped: crate::metrics::Counter,
    /// The operator's metric group, for its window function's `open`; set in
    /// `initialize_state`.
    metrics: Option<crate::metrics::MetricGroup>,
    /// `None`: the default of the time domain.
    trigger: Option<WindowTrigger>,
    contents: C,
    _k: PhantomData<fn() -> (K, T)>,
}

/// What [`SessionOperator::open`] makes.
struct Opened<S> {
    contents: S,
    sessions: ValueStateId<Vec<Session>, ()>,
    /// Allowed lateness in milliseconds (zero for processing time).
    lateness: u64,
    trigger: WindowTrigger,
    /// A count trigger's counts, per session (in its contents' namespace).
    count: Option<ValueStateId<u64, TimeWindow>>,
}

impl<K, T, G: SessionGap<T>, C> SessionOperator<K, T, G, C> {
    fn event_time(&self) -> bool {
        self.sessions.domain == TimeDomain::EventTime
    }

    /// The trigger, checked against the time domain; continuous triggers are refused.
    fn trigger(&self) -> Result<WindowTrigger> {
        let trigger = checked_trigger(&self.uid, self.trigger, self.sessions.domain)?;
        if trigger.interval().is_some() || trigger.is_custom() {
            return Err(RuntimeError::Config(format!(
                "window operator {}: {trigger} on session windows is not supported",
                self.uid
            )));
        }
        Ok(trigger)
    }

    /// The spec, checked, and a fixed gap checked.
    fn spec(&self) -> Result<SessionSpec>
    where
        C: Contents<K, T>,
    {
        let config = |e: String| RuntimeError::Config(format!("window operator {}: {e}", self.uid));
        self.contents.check().map_err(config)?;
        if let Some(gap) = self.sessions.gap.fixed() {
            check_gap(gap).map_err(config)?;
        }
        let lateness = if self.event_time() {
            whole_millis("allowed lateness", self.allowed_lateness).map_err(config)?
        } else {
            0
        };
        Ok(SessionSpec {
            event_time: self.event_time(),
            lateness,
        })
    }

    fn spec_state() -> OperatorListStateDescriptor<SessionSpec> {
        OperatorListStateDescriptor {
            name: WINDOW_SPEC_STATE.to_string(),
            codec: Arc::new(BincodeCodec::named("cairn.windows.SessionSpec", 1)),
            mode: Redistribution::Union,
        }
    }

    /// The time after which a session is dropped: its end plus the lateness (event time).
    fn cleanup_time(state_lateness: u64, window: &TimeWindow) -> u64 {
        window.max_timestamp().saturating_add(state_lateness)
    }

    /// Registers a timer at `time` in the sessions' time domain.
    fn register(&self, timers: &mut TimerService, time: u64) {
        if self.event_time() {
            timers.register_event_time_timer(time);
        } else {
            timers.register_processing_time_timer(time);
        }
    }
}

/// A gap in whole milliseconds, at least one.
fn check_gap(gap: Duration) -> std::result::Result<u64, String> {
    match whole_millis("session gap", gap)? {
        0 => Err("a session gap of 0 ms: it must be at least 1 ms".to_string()),
        ms => Ok(ms),
    }
}

impl<K, T, G: SessionGap<T>, C: Contents<K, T>> Checkpointed for SessionOperator<K, T, G, C> {
    /// Refuses a restore whose sessions were of another time domain or lateness.
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.dropped = ctx.metrics.counter(super::LATE_DROPPED)?;
        self.metrics = Some(ctx.metrics.clone());
        keep_spec(
            ctx,
            &self.uid,
            &Self::spec_state(),
            self.spec()?,
            "the timers that drop its sessions were set for the old time domain and lateness",
        )?;
        let evicting = self.contents.evicting();
        keep_trigger(
            ctx,
            &self.uid,
            self.trigger()?,
            self.sessions.domain,
            evicting,
        )
    }
}

impl<K, T, G, C> KeyedProcessFunction for SessionOperator<K, T, G, C>
where
    K: Key,
    T: Data,
    G: SessionGap<T>,
    C: Merging<K, T>,
{
    type Key = K;
    type In = T;
    type Out = C::Out;
    type State = Opened<C::State>;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State> {
        let spec = self.spec()?;
        let mut index = ValueStateDescriptor::<Vec<Session>>::new(MERGING_WINDOW_SET_STATE);
        index.value = Arc::new(BincodeCodec::named("cairn.windows.Sessions", 2));
        let trigger = self.trigger()?;
        let contents = self.contents.register(backend)?;
        // The operator keeps each key's sessions: nothing to mark.
        let operator = Operator {
            uid: &self.uid,
            merging: true,
            marks_purged: false,
            metrics: self.metrics.as_ref(),
        };
        self.contents.open(backend, operator)?;
        Ok(Opened {
            contents,
            sessions: backend.register_value(&index)?,
            lateness: spec.lateness,
            count: register_count(backend, &trigger)?,
            trigger,
        })
    }

    /// Adds the record's window to the key's sessions, merging those it overlaps or
    /// touches, and the record to the merged session's contents. The merged session keeps
    /// the earliest of its sessions' timers (see [`Session`]).
    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        record: T,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let event_time = self.event_time();
        let time = record_time(&self.uid, self.sessions.domain, out, timers)?;
        let user = |e: String| RuntimeError::user(&self.uid, e);
        let gap = check_gap(self.sessions.gap.gap(&record)).map_err(user)?;
        let end = time.checked_add(gap).ok_or_else(|| {
            user(format!(
                "time {time} ms plus the session gap of {gap} ms is past u64::MAX"
            ))
        })?;
        let new = TimeWindow { start: time, end };
        let sessions = backend.value_get(state.sessions, &())?.unwrap_or_default();
        let (merging, mut open): (Vec<Session>, Vec<Session>) = sessions
            .into_iter()
            .partition(|s| s.window.intersects(&new));
        let window = merging.iter().fold(new, |w, s| w.cover(&s.window));
        // Within one session, which it does not extend: the sessions stay as they are.
        let unchanged = matches!(merging.as_slice(), [s] if s.window == window);
        let watermark = timers.current_watermark();
        let cleanup = Self::cleanup_time(state.lateness, &window);
        if event_time && watermark.is_some_and(|w| cleanup <= w) {
            // Late even merged: its sessions are gone; the record is dropped, into the
            // late data's side output if there is one.
            return match &self.late {
                Some(tag) => out.output(tag, record),
                None => {
                    self.dropped.inc();
                    Ok(())
                }
            };
        }
        // The merged session keeps the first one's namespace; the others' contents move.
        let stored = merging.first().map_or(window, |s| s.stored);
        for s in merging.iter().skip(1) {
            self.contents
                .merge(state.contents, backend, &s.stored, &stored)?;
        }
        self.contents
            .add(state.contents, backend, &stored, out.timestamp(), record)?;
        let fired = match (state.trigger.count(), state.count) {
            (Some(n), Some(count)) => {
                // A count trigger: the merged sessions' counts add up (Flink's
                // `CountTrigger.onMerge`); it fires at `n`, and its session's timer is its
                // cleanup time from the start (as if it had fired by time).
                let mut seen = 1;
                for s in &merging {
                    seen += backend.value_get(count, &s.stored)?.unwrap_or(0);
                    if s.stored != stored {
                        backend.clear(count.raw(), &s.stored)?;
                    }
                }
                if seen >= n {
                    backend.clear(count.raw(), &stored)?;
                    self.contents.fire(
                        state.contents,
                        state.trigger.purge,
                        backend,
                        &At::new(key, timers),
                        &stored,
                        &window,
                        out,
                    )?;
                } else {
                    backend.value_update(count, &stored, seen)?;
                }
                true
            }
            _ => {
                // A session whose end the watermark has passed has fired (its timer went
                // off): within the allowed lateness, it fires again at once.
                let fired = event_time && watermark.is_some_and(|w| window.max_timestamp() <= w);
                if fired {
                    self.contents.fire(
                        state.contents,
                        state.trigger.purge,
                        backend,
                        &At::new(key, timers),
                        &stored,
                        &window,
                        out,
                    )?;
                }
                fired
            }
        };
        if unchanged {
            // Its timer stands.
            return Ok(());
        }
        // The merged sessions' earliest timer stays unless it is after the session is due;
        // the others go, unless another session of the key has them too (a key has one
        // timer per time).
        let due = if fired {
            cleanup
        } else {
            window.max_timestamp()
        };
        let timer = match merging.iter().map(|s| s.timer).min() {
            Some(t) if t <= due => t,
            _ => {
                self.register(timers, due);
                due
            }
        };
        for t in merging.iter().map(|s| s.timer) {
            if t != timer && !open.iter().any(|s| s.timer == t) {
                if event_time {
                    timers.delete_event_time_timer(t);
                } else {
                    timers.delete_processing_time_timer(t);
                }
            }
        }
        open.push(Session {
            window,
            stored,
            timer,
            fired,
        });
        open.sort_unstable_by_key(|s| s.window.start);
        Ok(backend.value_update(state.sessions, &(), open)?)
    }

    /// For the sessions whose timer this is: fires those whose end it has reached, drops
    /// those whose cleanup time it has reached (without lateness: the same), and moves the
    /// others' timers on to when they are due.
    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let Some(sessions) = backend.value_get(state.sessions, &())? else {
            return Ok(());
        };
        let now = timer.time;
        if !sessions.iter().any(|s| s.timer == now) {
            return Ok(());
        }
        let at = At::new(key, timers);
        let mut open = Vec::with_capacity(sessions.len());
        for mut s in sessions {
            if s.timer != now {
                open.push(s);
                continue;
            }
            if !s.fired && s.window.max_timestamp() <= now {
                self.contents.fire(
                    state.contents,
                    state.trigger.purge,
                    backend,
                    &at,
                    &s.stored,
                    &s.window,
                    out,
                )?;
                s.fired = true;
            }
            let due = if s.fired {
                Self::cleanup_time(state.lateness, &s.window)
            } else {
                s.window.max_timestamp()
            };
            if due <= now {
                // The session ends: its function's `clear` (a session in the list is the
                // key's, whatever it holds).
                self.contents.end(backend, &at, &s.window, true, out)?;
                self.contents.clear(state.contents, backend, &s.stored)?;
                if let Some(count) = state.count {
                    backend.clear(count.raw(), &s.stored)?;
                }
                continue;
            }
            self.register(timers, due);
            s.timer = due;
            open.push(s);
        }
        if open.is_empty() {
            Ok(backend.clear(state.sessions.raw(), &())?)
        } else {
            Ok(backend.value_update(state.sessions, &(), open)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::tests::{sum, Harness};
    use crate::windows::{Process, Reduce};
    use cairn_core::ManualClock;

    type SumSessions<G> = SessionOperator<u64, u64, G, Reduce<u64, fn(u64, u64) -> u64>>;

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    fn harness<G: SessionGap<u64>>(
        sessions: SessionWindows<G>,
        lateness: u64,
        clock: Arc<ManualClock>,
    ) -> Harness<SumSessions<G>> {
        harness_with_trigger(sessions, lateness, None, clock)
    }

    fn harness_with_trigger<G: SessionGap<u64>>(
        sessions: SessionWindows<G>,
        lateness: u64,
        trigger: Option<WindowTrigger>,
        clock: Arc<ManualClock>,
    ) -> Harness<SumSessions<G>> {
        let op = SessionOperator {
            uid: "sessions".into(),
            sessions,
            allowed_lateness: Duration::from_millis(lateness),
            late: None,
            dropped: Default::default(),
            metrics: None,
            trigger,
            contents: sum(),
            _k: PhantomData,
        };
        Harness::of(op, clock)
    }

    fn event_time(gap: u64, lateness: u64) -> Harness<SumSessions<FixedGap>> {
        let sessions = EventTimeSessionWindows::with_gap(Duration::from_millis(gap));
        harness(sessions, lateness, Arc::new(ManualClock::new(0)))
    }

    impl<G: SessionGap<u64>> Harness<SumSessions<G>> {
        /// The key's open sessions.
        fn sessions(&mut self) -> Vec<Session> {
            self.select_key();
            let id = self.state.sessions;
            self.backend
                .value_get(id, &())
                .expect("get")
                .unwrap_or_default()
        }

        /// What the namespace `stored` holds.
        fn contents(&mut self, stored: TimeWindow) -> Option<u64> {
            self.select_key();
            let id = self.state.contents;
            self.backend.reducing_get(id, &stored).expect("get")
        }
    }

    /// Event-time sessions of a 10 ms gap under `trigger`.
    fn triggered(trigger: WindowTrigger) -> Harness<SumSessions<FixedGap>> {
        let sessions = EventTimeSessionWindows::with_gap(Duration::from_millis(10));
        harness_with_trigger(sessions, 0, Some(trigger), Arc::new(ManualClock::new(0)))
    }

    /// A count trigger on sessions fires at `n` records with the running result, not at
    /// the session's end; merging sessions add their counts up (Flink's `onMerge`); a
    /// session's timer is its cleanup time, which drops its contents and count.
    #[test]
    fn a_count_trigger_on_sessions_adds_the_merged_counts_up() {
        let mut h = triggered(crate::windows::triggers::CountTrigger::of(3));
        h.process(1, Some(0));
        h.process(2, Some(20));
        assert_eq!(
            h.sessions(),
            vec![
                session(w(0, 10), w(0, 10), 9, true),
                session(w(20, 30), w(20, 30), 29, true),
            ],
            "timers at the cleanup, as if fired"
        );
        h.process(4, Some(10));
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 30), 7), Some(29))],
            "1 + 1 + 1 records: the merged count reaches 3"
        );
        h.process(8, Some(12));
        h.process(16, Some(14));
        assert_eq!(h.emitted(), vec![], "counted from the last firing");
        h.process(32, Some(15));
        assert_eq!(h.emitted(), vec![((1, w(0, 30), 63), Some(29))], "running");
        h.process(64, Some(16));
        h.advance(100);
        assert_eq!(h.emitted(), vec![], "time does not fire it");
        assert_eq!(h.sessions(), vec![]);
        assert_eq!(h.contents(w(0, 10)), None);
        let count = h.state.count.expect("counts");
        h.select_key();
        assert_eq!(h.backend.value_get(count, &w(0, 10)).expect("get"), None);
        assert_eq!(h.backend.value_get(count, &w(20, 30)).expect("get"), None);
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A purging trigger on sessions: each firing has what came since the last, by count
    /// or at the session's end.
    #[test]
    fn a_purging_trigger_on_sessions_drops_the_contents_after_each_firing() {
        use crate::windows::triggers::{CountTrigger, EventTimeTrigger, PurgingTrigger};
        let mut h = triggered(PurgingTrigger::of(CountTrigger::of(2)));
        for (v, t) in [(1, 0), (2, 1), (4, 2)] {
            h.process(v, Some(t));
        }
        assert_eq!(h.emitted(), vec![((1, w(0, 11), 3), Some(10))]);
        assert_eq!(h.contents(w(0, 10)), Some(4));
        h.advance(100);
        assert_eq!(h.emitted(), vec![]);
        assert_eq!(h.contents(w(0, 10)), None);

        let mut h = triggered(PurgingTrigger::of(EventTimeTrigger::create()));
        h.process(1, Some(0));
        h.advance(9);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 1), Some(9))]);
        assert_eq!(h.contents(w(0, 10)), None, "purged when it fired");
        h.advance(100);
        assert_eq!(h.sessions(), vec![]);
    }

    /// A session `window` kept under `stored`, with its timer at `timer`, `fired` or not.
    fn session(window: TimeWindow, stored: TimeWindow, timer: u64, fired: bool) -> Session {
        Session {
            window,
            stored,
            timer,
            fired,
        }
    }

    /// Records less than a gap apart make one session, which ends a gap after its last
    /// record; a record exactly a gap after the session's last touches it and joins it. A
    /// growing session keeps its first timer, which moves on to its end when it fires.
    #[test]
    fn records_within_the_gap_make_one_session() {
        let mut h = event_time(10, 0);
        h.process(1, Some(0));
        h.process(2, Some(5));
        h.process(4, Some(15));
        h.process(8, Some(26));
        assert_eq!(
            h.sessions(),
            vec![
                session(w(0, 25), w(0, 10), 9, false),
                session(w(26, 36), w(26, 36), 35, false),
            ]
        );
        assert_eq!(
            h.contents(w(0, 10)),
            Some(7),
            "kept where the session began"
        );
        assert_eq!(h.pending(TimeDomain::EventTime), vec![9, 35]);
        h.advance(23);
        assert_eq!(h.emitted(), vec![]);
        assert_eq!(
            h.pending(TimeDomain::EventTime),
            vec![24, 35],
            "moved on to the session's end"
        );
        h.advance(24);
        assert_eq!(h.emitted(), vec![((1, w(0, 25), 7), Some(24))]);
        assert_eq!(h.contents(w(0, 10)), None, "dropped when it fires");
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(26, 36), 8), Some(35))]);
        assert_eq!(h.sessions(), vec![], "no session left");
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A record between two sessions, within a gap of both, merges them into one, which
    /// keeps the earlier timer; the other goes.
    #[test]
    fn a_record_bridging_two_sessions_merges_them() {
        let mut h = event_time(10, 0);
        h.process(1, Some(0));
        h.process(2, Some(20));
        assert_eq!(h.pending(TimeDomain::EventTime), vec![9, 29]);
        h.process(16, Some(11));
        h.process(32, Some(11));
        h.process(64, Some(21));
        assert_eq!(
            h.sessions(),
            vec![
                session(w(0, 10), w(0, 10), 9, false),
                session(w(11, 31), w(20, 30), 29, false),
            ],
            "[11, 21) is 11 ms after [0, 10) began: it joins [20, 30) only"
        );
        h.process(4, Some(10));
        assert_eq!(h.sessions(), vec![session(w(0, 31), w(0, 10), 9, false)]);
        assert_eq!(h.contents(w(0, 10)), Some(119));
        assert_eq!(h.contents(w(20, 30)), None, "moved into the first");
        assert_eq!(h.pending(TimeDomain::EventTime), vec![9]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 31), 119), Some(30))]);
    }

    /// A session that has fired keeps its contents for the allowed lateness: a record
    /// that reaches it fires it again at once, one that extends it past the watermark
    /// makes it fire at its new end, and one whose session would be past its lateness
    /// is dropped.
    #[test]
    fn late_records_within_the_lateness_reach_their_session() {
        let mut h = event_time(10, 5);
        h.process(1, Some(0));
        assert_eq!(h.pending(TimeDomain::EventTime), vec![9]);
        h.advance(9);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 1), Some(9))]);
        assert_eq!(
            h.sessions(),
            vec![session(w(0, 10), w(0, 10), 14, true)],
            "fired; its timer moved on to its cleanup time"
        );
        h.process(2, Some(0));
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 10), 3), Some(9))],
            "fires again at once"
        );
        h.process(4, Some(8));
        assert_eq!(h.emitted(), vec![], "extended to [0, 18): not yet");
        assert_eq!(
            h.sessions(),
            vec![session(w(0, 18), w(0, 10), 14, false)],
            "not fired at its new end; the earlier timer stays"
        );
        h.advance(17);
        assert_eq!(h.emitted(), vec![((1, w(0, 18), 7), Some(17))]);
        h.advance(22);
        assert_eq!(h.sessions(), vec![], "dropped after its lateness");
        assert_eq!(h.contents(w(0, 10)), None);
        h.process(8, Some(7));
        assert_eq!(
            h.sessions(),
            vec![],
            "[7, 17) is past its lateness: dropped"
        );
        h.process(8, Some(8));
        assert_eq!(
            h.sessions(),
            vec![],
            "[8, 18) ends its lateness at 22, the watermark: dropped"
        );
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![]);
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A key has one timer per time: a timer a merged session leaves goes only if no other
    /// session has it (here the fired session's cleanup time is the other's end).
    #[test]
    fn a_merged_sessions_time_that_another_session_needs_stays() {
        let mut h = event_time(10, 20);
        h.process(1, Some(0));
        h.process(2, Some(20));
        h.advance(9);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 1), Some(9))]);
        assert_eq!(h.pending(TimeDomain::EventTime), vec![29]);
        h.process(4, Some(5));
        assert_eq!(
            h.sessions(),
            vec![
                session(w(0, 15), w(0, 10), 14, false),
                session(w(20, 30), w(20, 30), 29, false),
            ]
        );
        assert_eq!(h.pending(TimeDomain::EventTime), vec![14, 29]);
        h.advance(29);
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 15), 5), Some(14)), ((1, w(20, 30), 2), Some(29))]
        );
    }

    /// One timer may be one session's end and another's cleanup: both happen.
    #[test]
    fn a_timer_that_is_one_sessions_end_and_anothers_cleanup_does_both() {
        let mut h = event_time(10, 20);
        h.process(1, Some(0));
        h.process(2, Some(20));
        assert_eq!(h.pending(TimeDomain::EventTime), vec![9, 29]);
        h.advance(29);
        assert_eq!(
            h.emitted(),
            vec![((1, w(0, 10), 1), Some(9)), ((1, w(20, 30), 2), Some(29))]
        );
        assert_eq!(h.contents(w(0, 10)), None, "[0, 10) dropped at 29");
        assert_eq!(
            h.sessions(),
            vec![session(w(20, 30), w(20, 30), 49, true)],
            "[20, 30) kept until 49"
        );
    }

    /// A record inside a session, not extending it, adds to it and leaves the sessions
    /// as they are.
    #[test]
    fn a_record_within_a_session_adds_to_it() {
        let mut h = event_time(10, 0);
        h.process(1, Some(5));
        h.process(2, Some(0));
        h.process(4, Some(3));
        assert_eq!(h.sessions(), vec![session(w(0, 15), w(5, 15), 14, false)]);
        assert_eq!(h.contents(w(5, 15)), Some(7));
        assert_eq!(h.pending(TimeDomain::EventTime), vec![14]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 15), 7), Some(14))]);
    }

    /// Adds `u64`s, merging sums.
    #[derive(Clone)]
    struct Sum;

    impl cairn_core::AggregateFunction<u64, u64, u64> for Sum {
        fn create_accumulator(&self) -> u64 {
            0
        }
        fn add(&self, acc: &mut u64, input: u64) {
            *acc += input;
        }
        fn result(&self, acc: &u64) -> u64 {
            *acc
        }
    }

    impl MergingAggregateFunction<u64, u64, u64> for Sum {
        fn merge(&self, a: u64, b: u64) -> u64 {
            a + b
        }
    }

    /// Sessions with a gap of 10 ms over `contents`.
    fn with_contents<C>(contents: C) -> Harness<SessionOperator<u64, u64, FixedGap, C>>
    where
        C: Merging<u64, u64, Out = (u64, TimeWindow, u64)>,
    {
        let op = SessionOperator {
            uid: "sessions".into(),
            sessions: EventTimeSessionWindows::with_gap(Duration::from_millis(10)),
            allowed_lateness: Duration::ZERO,
            late: None,
            dropped: Default::default(),
            metrics: None,
            trigger: None,
            contents,
            _k: PhantomData,
        };
        Harness::of(op, Arc::new(ManualClock::new(0)))
    }

    /// Records at 0, 20 and then 10 (bridging the two).
    fn bridge<F>(h: &mut Harness<F>)
    where
        F: KeyedProcessFunction<Key = u64, In = u64, Out = (u64, TimeWindow, u64)>,
    {
        h.process(1, Some(0));
        h.process(2, Some(20));
        h.process(4, Some(10));
    }

    /// An aggregate's sessions merge their accumulators, and the merged one's namespace
    /// is emptied.
    #[test]
    fn merging_aggregate_sessions_merge_accumulators() {
        let mut h = with_contents(Accumulate {
            function: Sum,
            _t: PhantomData,
        });
        bridge(&mut h);
        h.select_key();
        let id = h.state.contents;
        assert_eq!(h.backend.value_get(id, &w(0, 10)).expect("get"), Some(7));
        assert_eq!(h.backend.value_get(id, &w(20, 30)).expect("get"), None);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 30), 7), Some(29))]);
    }

    /// A process function's sessions merge their records (the earlier session's, the
    /// later one's, then the new record), and the merged one's namespace is emptied.
    #[test]
    fn merging_process_sessions_merge_their_records() {
        type Out = (u64, TimeWindow, u64);
        let sum =
            |key: &u64, window: TimeWindow, records: Vec<u64>, out: &mut Collector<'_, Out>| {
                out.collect((*key, window, records.iter().sum()))
            };
        let mut h = with_contents(Process::new(crate::windows::FnWindow(sum)));
        bridge(&mut h);
        h.select_key();
        let id = h.state.contents;
        assert_eq!(
            h.backend.list_get(id, &w(0, 10)).expect("get"),
            vec![1, 2, 4]
        );
        assert!(h.backend.list_get(id, &w(20, 30)).expect("get").is_empty());
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 30), 7), Some(29))]);
    }

    /// Processing-time sessions take the clock's time and fire when it passes their end.
    #[test]
    fn processing_time_sessions_go_by_the_clock() {
        let clock = Arc::new(ManualClock::new(100));
        let sessions = ProcessingTimeSessionWindows::with_gap(Duration::from_millis(10));
        let mut h = harness(sessions, 5, clock.clone());
        h.process(1, Some(0));
        clock.set(105);
        h.process(2, None);
        assert_eq!(h.pending(TimeDomain::ProcessingTime), vec![109]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![], "watermarks do not fire them");
        clock.set(110);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![], "not yet at its end");
        assert_eq!(h.pending(TimeDomain::ProcessingTime), vec![114]);
        clock.set(114);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, w(100, 115), 3), Some(114))]);
        assert_eq!(h.sessions(), vec![], "no lateness in processing time");
    }

    /// A dynamic gap comes from each record: here the record's value in milliseconds.
    #[test]
    fn a_dynamic_gap_comes_from_each_record() {
        let gap = |v: &u64| Duration::from_millis(*v);
        let sessions = EventTimeSessionWindows::with_dynamic_gap(gap);
        let mut h = harness(sessions, 0, Arc::new(ManualClock::new(0)));
        h.process(20, Some(0));
        h.process(1, Some(25));
        h.process(3, Some(19));
        assert_eq!(h.sessions().len(), 2, "[19, 22) extends the first only");
        h.process(6, Some(19));
        assert_eq!(
            h.sessions(),
            vec![session(w(0, 26), w(0, 20), 19, false)],
            "[19, 25) touches [25, 26)"
        );
        assert_eq!(h.pending(TimeDomain::EventTime), vec![19]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 26), 30), Some(25))]);
    }

    /// Sessions as Flink's `EventTimeTrigger` with allowed lateness defines them, without
    /// timers: what the operator must emit, step by step (key 1; sums of distinct powers
    /// of two name the records a result holds).
    struct Model {
        gap: u64,
        lateness: u64,
        watermark: Option<u64>,
        /// Window, sum of its records, whether it fired at its current end.
        sessions: Vec<(TimeWindow, u64, bool)>,
    }

    type Emitted = Vec<((u64, TimeWindow, u64), Option<u64>)>;

    impl Model {
        fn cleanup(&self, window: &TimeWindow) -> u64 {
            window.max_timestamp().saturating_add(self.lateness)
        }

        fn process(&mut self, value: u64, time: u64) -> Emitted {
            let new = w(time, time + self.gap);
            let (merging, mut open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sessions)
                .into_iter()
                .partition(|(window, _, _)| window.intersects(&new));
            let window = merging.iter().fold(new, |a, (b, _, _)| a.cover(b));
            let passed = |t: u64| self.watermark.is_some_and(|w| t <= w);
            if passed(self.cleanup(&window)) {
                // Late: dropped, nothing changes.
                open.extend(merging);
                open.sort_unstable_by_key(|(window, _, _)| window.start);
                self.sessions = open;
                return Vec::new();
            }
            let sum = merging.iter().map(|(_, sum, _)| sum).sum::<u64>() + value;
            let fired = passed(window.max_timestamp());
            open.push((window, sum, fired));
            open.sort_unstable_by_key(|(window, _, _)| window.start);
            self.sessions = open;
            if fired {
                vec![((1, window, sum), Some(window.max_timestamp()))]
            } else {
                Vec::new()
            }
        }

        fn advance(&mut self, to: u64) -> Emitted {
            let watermark = self.watermark.map_or(to, |w| w.max(to));
            self.watermark = Some(watermark);
            let mut out = Vec::new();
            for (window, sum, fired) in &mut self.sessions {
                if !*fired && window.max_timestamp() <= watermark {
                    out.push(((1, *window, *sum), Some(window.max_timestamp())));
                    *fired = true;
                }
            }
            out.sort_unstable_by_key(|(_, t)| *t);
            let lateness = self.lateness;
            self.sessions.retain(|(window, _, _)| {
                window.max_timestamp().saturating_add(lateness) > watermark
            });
            out
        }
    }

    /// Random scripts of records (near the watermark, late, far ahead) and watermark
    /// advances over random gaps and lateness: the operator emits what the model does,
    /// after every step, and ends with no session, state or timer.
    #[test]
    fn sessions_match_a_model_of_flinks_semantics() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for script in 0..1_500 {
            let gap = 1 + next(20);
            let lateness = [0, 1, 5, 20][next(4) as usize];
            let mut h = event_time(gap, lateness);
            let mut model = Model {
                gap,
                lateness,
                watermark: None,
                sessions: Vec::new(),
            };
            let mut records = 0;
            for step in 0..1 + next(60) {
                let watermark = model.watermark.unwrap_or(0);
                let context =
                    format!("script {script} step {step}, gap {gap}, lateness {lateness}");
                if records < 60 && next(3) > 0 {
                    let time = match next(6) {
                        0 => watermark.saturating_sub(next(gap + lateness + 2)),
                        1 => watermark + 40 + next(400),
                        _ => watermark + next(2 * gap + 2),
                    };
                    let value = 1 << records;
                    records += 1;
                    h.process(value, Some(time));
                    assert_eq!(
                        h.emitted(),
                        model.process(value, time),
                        "record at {time}, {context}"
                    );
                } else {
                    let to = watermark
                        + [0, next(4), next(gap + lateness + 2), next(600)][next(4) as usize];
                    h.advance(to);
                    assert_eq!(h.emitted(), model.advance(to), "watermark {to}, {context}");
                }
            }
            h.advance(u64::MAX);
            assert_eq!(
                h.emitted(),
                model.advance(u64::MAX),
                "the end, script {script}"
            );
            assert_eq!(h.sessions(), vec![], "script {script}");
            assert_eq!(
                h.pending(TimeDomain::EventTime),
                Vec::<u64>::new(),
                "script {script}"
            );
        }
    }
}
