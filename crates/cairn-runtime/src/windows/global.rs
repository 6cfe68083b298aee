//! Global windows and count windows (Flink's `GlobalWindows` and `countWindow`).
//!
//! [`GlobalWindows::create`] puts all of a key's records into one window,
//! [`TimeWindow::GLOBAL`], which never ends: nothing is ever late, its contents are never
//! dropped by time (only by a purging trigger or an evictor), and a record needs no
//! timestamp. Its default trigger never fires, as Flink's `NeverTrigger`; give it one
//! ([`WindowedStream::trigger`]):
//! - a count trigger ([`super::triggers::CountTrigger`]), maybe purging;
//! - a continuous trigger, of event time (the watermark passing each multiple of its
//!   interval, from the first record's timestamp on) or of processing time;
//! - an event-time trigger ([`super::triggers::EventTimeTrigger`]), which fires once, at
//!   the end of the input (the final watermark passes the window's last millisecond), as
//!   in Flink; a continuous event-time trigger fires then too.
//!
//! A processing-time trigger is refused: it would never fire.
//!
//! Count windows are global windows with a trigger and an evictor:
//! - [`KeyedStream::count_window`]`(n)` fires every `n` records of a key with those `n`
//!   (a purging count trigger);
//! - [`KeyedStream::count_window_sliding`]`(size, slide)` fires every `slide` records of
//!   a key with its last `size` (a count trigger of `slide` and a count evictor of `size`).
//!
//! As in Flink, what a count window holds when the input ends is not emitted, and a
//! global window never ends: a process window function's
//! [`clear`](super::ProcessWindowFunction::clear) is never called for it, and its
//! per-window states stay (see [`super::context`]).
//!
//! The operator keeps in its operator state that its windows are global
//! ([`super::WINDOW_SPEC_STATE`]) and its trigger, and a restore of another window
//! operator under the same uid is refused, naming the state.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use cairn_core::{AggregateFunction, KeyedStateBackend};
use cairn_core::{BincodeCodec, OperatorListStateDescriptor, Redistribution, ValueStateId};
use serde::{Deserialize, Serialize};

use super::context::{At, Operator};
use super::custom::{BoxedTrigger, CustomState, TriggerResult};
use super::evictors::{CountEvictor, Evictable};
use super::triggers::{self, CountTrigger, PurgingTrigger, Schedule};
use super::{
    aggregate_plain, aggregate_plain_and_process, count_reaches, keep_spec, keep_trigger,
    register_firing, sealed, Batch, Contents, Merging, ProcessWindowFunction, TimeWindow,
    WindowTrigger, WindowedStream, Windows, WINDOW_SPEC_STATE,
};
use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, Collector, Data, InitContext, Key, KeyedProcessFunction};
use crate::graph::{KeyedStream, Stream};
use crate::timers::{TimeDomain, Timer, TimerService};

/// Global windows: one window per key, for all time; see [`self`](crate::windows::global).
#[derive(Clone, Copy, Debug)]
pub struct GlobalWindows;

impl GlobalWindows {
    /// The assigner (Flink's `GlobalWindows.create()`).
    pub fn create() -> Self {
        GlobalWindows
    }
}

impl sealed::Sealed for GlobalWindows {}
impl Windows for GlobalWindows {}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Windows of `size` records per key (Flink's `countWindow(size)`): each window fires
    /// with its `size` records and is then emptied; see [`crate::windows::global`].
    pub fn count_window(self, size: u64) -> WindowedStream<K, T, GlobalWindows> {
        self.window(GlobalWindows::create())
            .trigger(PurgingTrigger::of(CountTrigger::of(size)))
    }

    /// Sliding windows of records (Flink's `countWindow(size, slide)`): every `slide`
    /// records of a key, a window fires with the last `size` of them.
    pub fn count_window_sliding(
        self,
        size: u64,
        slide: u64,
    ) -> WindowedStream<K, T, GlobalWindows> {
        self.window(GlobalWindows::create())
            .evictor(CountEvictor::of(size))
            .trigger(CountTrigger::of(slide))
    }
}

// Sealed: the contents types are the crate\'s own, and only the crate builds windows.
#[allow(private_bounds, private_interfaces)]
impl<K: Key, T: Data> sealed::Build<K, T> for GlobalWindows {
    fn build<C: Batch<K, T> + Merging<K, T>>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        contents: C,
    ) -> Stream<C::Out> {
        <Self as sealed::BuildPlain<K, T>>::build_plain(windowed, uid, contents)
    }
}

impl<K: Key, T: Data> WindowedStream<K, T, GlobalWindows> {
    /// Adds each key's records to an accumulator of `function` and emits `(key,
    /// TimeWindow::GLOBAL, result)` when its window fires.
    pub fn aggregate<ACC: Data, OUT: Data>(
        self,
        uid: &str,
        function: impl AggregateFunction<T, ACC, OUT> + Clone,
    ) -> Stream<(K, TimeWindow, OUT)> {
        aggregate_plain(self, uid, function)
    }

    /// Adds each key's records to an accumulator of `function` and gives its result to
    /// `process` when its window fires; see [`super::incremental`].
    pub fn aggregate_and_process<ACC: Data, V: Data, O: Data>(
        self,
        uid: &str,
        function: impl AggregateFunction<T, ACC, V> + Clone,
        process: impl ProcessWindowFunction<K, V, O>,
    ) -> Stream<O> {
        aggregate_plain_and_process(self, uid, function, process)
    }
}

// Sealed: the contents types are the crate\'s own, and only the crate builds windows.
#[allow(private_bounds, private_interfaces)]
impl<K: Key, T: Data> sealed::BuildPlain<K, T> for GlobalWindows {
    fn build_plain<C: Batch<K, T>>(
        windowed: WindowedStream<K, T, Self>,
        uid: &str,
        contents: C,
    ) -> Stream<C::Out> {
        let op = GlobalOperator {
            uid: uid.to_string(),
            trigger: windowed.trigger,
            custom: windowed.custom,
            contents: Evictable::new(contents, windowed.evictor),
            metrics: None,
            _k: PhantomData,
        };
        windowed.keyed.process(uid, op).one_subtask_if(windowed.all)
    }
}

/// What the spec state of a global window operator holds: that its windows are global
/// (nothing else can change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct GlobalSpec;

impl fmt::Display for GlobalSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("global windows")
    }
}

/// The operator of global windows: a keyed process function over the window contents'
/// state in the namespace [`TimeWindow::GLOBAL`].
#[derive(Clone)]
struct GlobalOperator<K, T, C> {
    uid: String,
    /// `None`: never fires.
    trigger: Option<WindowTrigger>,
    /// A user-defined trigger.
    custom: Option<BoxedTrigger<T>>,
    contents: C,
    /// The operator's metric group, for its window function's `open`; set in
    /// `initialize_state`.
    metrics: Option<crate::metrics::MetricGroup>,
    _k: PhantomData<fn() -> (K, T)>,
}

/// What [`GlobalOperator::open`] makes.
struct Opened<S> {
    contents: S,
    trigger: WindowTrigger,
    count: Option<ValueStateId<u64, TimeWindow>>,
    schedule: Option<Schedule>,
    custom: Option<CustomState>,
}

impl<K, T, C: Contents<K, T>> GlobalOperator<K, T, C> {
    /// The trigger and the contents, checked.
    fn trigger(&self) -> Result<WindowTrigger> {
        let trigger = self.trigger.unwrap_or_else(triggers::never);
        let config = |e: String| RuntimeError::Config(format!("window operator {}: {e}", self.uid));
        self.contents.check().map_err(config)?;
        trigger.check_global().map_err(config)?;
        Ok(trigger)
    }

    fn spec_state() -> OperatorListStateDescriptor<GlobalSpec> {
        OperatorListStateDescriptor {
            name: WINDOW_SPEC_STATE.to_string(),
            codec: Arc::new(BincodeCodec::named("cairn.windows.GlobalSpec", 1)),
            mode: Redistribution::Union,
        }
    }

    /// Emits the window's result, and drops its contents after when `purge`.
    fn fire<B: KeyedStateBackend>(
        &mut self,
        state: &Opened<C::State>,
        purge: bool,
        backend: &mut B,
        at: &At<'_, K>,
        out: &mut Collector<'_, C::Out>,
    ) -> Result<()> {
        let window = &TimeWindow::GLOBAL;
        self.contents
            .fire(state.contents, purge, backend, at, window, window, out)
    }
}

impl<K, T, C: Contents<K, T>> Checkpointed for GlobalOperator<K, T, C> {
    /// Refuses a restore of other windows or under another trigger.
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.metrics = Some(ctx.metrics.clone());
        keep_spec(
            ctx,
            &self.uid,
            &Self::spec_state(),
            GlobalSpec,
            "its state is another window operator's",
        )?;
        let (trigger, evicting) = (self.trigger()?, self.contents.evicting());
        keep_trigger(
            ctx,
            &self.uid,
            trigger,
            TimeDomain::ProcessingTime,
            evicting,
        )
    }
}

impl<K: Key, T: Data, C: Contents<K, T>> KeyedProcessFunction for GlobalOperator<K, T, C> {
    type Key = K;
    type In = T;
    type Out = C::Out;
    type State = Opened<C::State>;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State> {
        let trigger = self.trigger()?;
        let (count, schedule, custom) = register_firing(backend, &trigger, &self.custom)?;
        let contents = self.contents.register(backend)?;
        // Global windows never end: nothing to mark.
        let operator = Operator {
            uid: &self.uid,
            merging: false,
            marks_purged: false,
            metrics: self.metrics.as_ref(),
        };
        self.contents.open(backend, operator)?;
        Ok(Opened {
            contents,
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
        let window = &TimeWindow::GLOBAL;
        let timestamp = out.timestamp();
        if let (Some(custom), Some(custom_state)) = (&mut self.custom, state.custom) {
            let result =
                custom.on_element(custom_state, backend, timers, &record, timestamp, window)?;
            self.contents
                .add(state.contents, backend, window, timestamp, record)?;
            if result == TriggerResult::Continue {
                return Ok(());
            }
            let at = At::new(key, timers);
            return self
                .contents
                .act(state.contents, backend, &at, window, result, out);
        }
        self.contents
            .add(state.contents, backend, window, timestamp, record)?;
        if let (Some(n), Some(count)) = (state.trigger.count(), state.count) {
            if count_reaches(backend, count, n, window)? {
                let at = At::new(key, timers);
                self.fire(state, state.trigger.purge, backend, &at, out)?;
            }
            return Ok(());
        }
        if let Some(schedule) = &state.schedule {
            let time = match schedule.domain() {
                TimeDomain::EventTime => timestamp.unwrap_or(0),
                TimeDomain::ProcessingTime => timers.current_processing_time(),
            };
            schedule.on_record(backend, timers, window, time)?;
        }
        if state.trigger.fires_at_end_of_input() {
            timers.register_event_time_timer(window.max_timestamp());
        }
        Ok(())
    }

    /// An early firing of a continuous trigger, or the end of the input under an
    /// event-time trigger.
    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &K,
        timer: Timer,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let window = &TimeWindow::GLOBAL;
        let at = At::new(key, timers);
        if let Some(schedule) = &state.schedule {
            let purge = state.trigger.purge;
            if schedule.may_be_due(timer.time)
                && schedule.due(backend, timers, window, timer.time, purge)?
            {
                self.fire(state, purge, backend, &at, out)?;
            }
        }
        if let (Some(custom), Some(custom_state)) = (&mut self.custom, state.custom) {
            for (_, result) in custom.on_timer(custom_state, backend, timers, timer)? {
                self.contents
                    .act(state.contents, backend, &at, window, result, out)?;
            }
        }
        if timer.domain == TimeDomain::EventTime
            && timer.time == window.max_timestamp()
            && state.trigger.fires_at_end_of_input()
        {
            self.fire(state, state.trigger.purge, backend, &at, out)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_core::ManualClock;

    use super::*;
    use crate::windows::custom::TriggerResult;
    use crate::windows::tests::{sum, Harness};
    use crate::windows::triggers::{
        ContinuousProcessingTimeTrigger, EventTimeTrigger, ProcessingTimeTrigger,
    };
    use crate::windows::Evictor;
    use crate::windows::Reduce;

    type Sum = Reduce<u64, fn(u64, u64) -> u64>;
    type Op = GlobalOperator<u64, u64, Evictable<Sum, u64>>;

    fn op(trigger: Option<WindowTrigger>, evictor: Option<Evictor<u64>>) -> Op {
        GlobalOperator {
            uid: "sum".into(),
            trigger,
            custom: None,
            contents: Evictable::new(sum(), evictor),
            metrics: None,
            _k: PhantomData,
        }
    }

    fn harness(
        trigger: Option<WindowTrigger>,
        evictor: Option<Evictor<u64>>,
        clock: Arc<ManualClock>,
    ) -> Harness<Op> {
        Harness::of(op(trigger, evictor), clock)
    }

    fn fired(h: &mut Harness<Op>) -> Vec<u64> {
        h.emitted()
            .into_iter()
            .map(|((key, window, sum), timestamp)| {
                assert_eq!((key, window), (1, TimeWindow::GLOBAL));
                assert_eq!(
                    timestamp,
                    Some(u64::MAX - 1),
                    "the window's last millisecond"
                );
                sum
            })
            .collect()
    }

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(0))
    }

    /// A count window (a purging count trigger) fires every `n` records with those; what
    /// is left at the end of the input is not emitted.
    #[test]
    fn a_count_window_fires_every_n_records_with_those() {
        let trigger = PurgingTrigger::of(CountTrigger::of(3));
        let mut h = harness(Some(trigger), None, clock());
        for v in [1, 2, 4, 8, 16, 32, 64, 128] {
            h.process(v, None);
        }
        assert_eq!(fired(&mut h), vec![7, 56]);
        h.advance(u64::MAX);
        assert_eq!(fired(&mut h), Vec::<u64>::new());
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A sliding count window (a count trigger and a count evictor) fires every `slide`
    /// records with the last `size`.
    #[test]
    fn a_sliding_count_window_fires_with_the_last_records() {
        let mut h = harness(
            Some(CountTrigger::of(2)),
            Some(CountEvictor::of(3)),
            clock(),
        );
        for v in [1, 2, 4, 8, 16, 32] {
            h.process(v, Some(v));
        }
        assert_eq!(fired(&mut h), vec![1 + 2, 2 + 4 + 8, 8 + 16 + 32]);
    }

    /// An event-time trigger fires a global window once, at the end of the input; without
    /// a trigger, it never fires and sets no timer.
    #[test]
    fn an_event_time_trigger_fires_a_global_window_at_the_end_of_the_input() {
        let mut h = harness(Some(EventTimeTrigger::create()), None, clock());
        h.process(1, Some(5));
        h.process(2, None);
        h.advance(1_000_000);
        assert_eq!(fired(&mut h), Vec::<u64>::new());
        h.advance(u64::MAX);
        assert_eq!(fired(&mut h), vec![3]);

        let mut never = harness(None, None, clock());
        never.process(1, Some(5));
        never.advance(u64::MAX);
        assert_eq!(fired(&mut never), Vec::<u64>::new());
        assert_eq!(never.pending(TimeDomain::EventTime), Vec::<u64>::new());
    }

    /// A continuous processing-time trigger fires a global window at each multiple of its
    /// interval the clock passes, once however many it passes at a time.
    #[test]
    fn a_continuous_trigger_fires_a_global_window_by_the_clock() {
        let clock = clock();
        let trigger = ContinuousProcessingTimeTrigger::of(Duration::from_millis(10));
        let mut h = harness(Some(trigger), None, clock.clone());
        h.process(1, None);
        clock.set(10);
        h.fire_processing();
        assert_eq!(fired(&mut h), vec![1]);
        h.process(2, None);
        clock.set(35);
        h.fire_processing();
        assert_eq!(fired(&mut h), vec![3]);
        assert_eq!(h.pending(TimeDomain::ProcessingTime), vec![40]);
    }

    /// Fires and purges a global window at each record 0.
    #[derive(Clone)]
    struct AtZero;

    impl crate::windows::custom::Trigger<u64> for AtZero {
        fn on_element(
            &mut self,
            record: &u64,
            _: Option<u64>,
            _: &TimeWindow,
            _: &mut crate::windows::custom::TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            Ok(match record {
                0 => TriggerResult::FireAndPurge,
                _ => TriggerResult::Continue,
            })
        }
    }

    #[test]
    fn a_user_defined_trigger_on_a_global_window() {
        let mut op = op(Some(triggers::custom()), None);
        op.custom = Some(BoxedTrigger::new(AtZero));
        let mut h = Harness::of(op, clock());
        for v in [1, 2, 0, 4, 0, 0, 8] {
            h.process(v, None);
        }
        assert_eq!(fired(&mut h), vec![3, 4, 0]);
        h.advance(u64::MAX);
        assert_eq!(fired(&mut h), Vec::<u64>::new());
    }

    #[test]
    fn triggers_that_never_fire_a_global_window_are_refused() {
        let err = op(Some(ProcessingTimeTrigger::create()), None)
            .trigger()
            .expect_err("refused");
        let message = err.to_string();
        assert!(
            message.contains("sum") && message.contains("never fires"),
            "{message}"
        );
        let zero = op(Some(CountTrigger::of(1)), Some(CountEvictor::of(0))).trigger();
        assert!(zero.is_err(), "an evictor keeping nothing");
    }
}
