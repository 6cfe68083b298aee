//! User-defined triggers (Flink's `Trigger`), given to
//! [`WindowedStream::custom_trigger`](crate::WindowedStream::custom_trigger).
//!
//! A [`Trigger`] is told of each record a window receives and of each timer it registered,
//! and answers with a [`TriggerResult`]: fire the window, purge it, both, or nothing. Its
//! [`TriggerContext`] gives it the watermark and the processing clock, timers of either
//! domain for the window, and small named values kept per key and window (its state,
//! bincode-encoded, as Flink's partitioned trigger state).
//!
//! As in Flink:
//! - the window operator still drops a window's contents, and calls [`Trigger::clear`],
//!   when its time is up: event-time windows when the watermark passes their last
//!   millisecond plus the allowed lateness, processing-time windows when the clock passes
//!   their last millisecond (global windows never); nothing fires then unless the trigger
//!   fires it (Flink's `EventTimeTrigger` registers a timer at the window's last
//!   millisecond for that);
//! - a record within the allowed lateness reaches its window and the trigger, which
//!   decides whether it fires again;
//! - timers the trigger does not delete in [`Trigger::clear`] still fire, for a window
//!   that may be empty (firing an empty window emits nothing).
//!
//! How it is kept: the trigger's values are a keyed map state
//! ([`WINDOW_TRIGGER_VALUES_STATE`], name → bytes, in the window's namespace); a key has
//! one timer per time and domain, so the windows each timer stands for are a keyed map
//! state of their own ([`WINDOW_TRIGGER_TIMERS_STATE`], (event time?, time) → windows).
//! Both go through checkpoints, savepoints, rescaling and backend switches as any keyed
//! state. The operator keeps in its operator state that its trigger is user-defined, so a
//! restore under a built-in trigger (or the other way round) is refused; a restore under
//! another user-defined trigger is not checked: the values it finds are the old one's.
//!
//! Not on session windows (Flink's `onMerge` is not built).

use std::sync::Arc;

use cairn_core::{BincodeCodec, Codec, KeyedStateBackend, MapStateDescriptor, MapStateId};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{window_codec, TimeWindow};
use crate::error::{Result, RuntimeError};
use crate::timers::{TimeDomain, Timer, TimerService};

/// The name of the keyed state holding a user-defined trigger's values (name → bytes, in
/// the window's namespace).
pub const WINDOW_TRIGGER_VALUES_STATE: &str = "window-trigger-values";

/// The name of the keyed state holding which windows each timer of a user-defined trigger
/// stands for ((event time?, time) → windows).
pub const WINDOW_TRIGGER_TIMERS_STATE: &str = "window-trigger-timers";

/// What a trigger asks of its window (Flink's `TriggerResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerResult {
    /// Nothing.
    Continue,
    /// Emit the window's result; keep its contents.
    Fire,
    /// Drop the window's contents without emitting.
    Purge,
    /// Emit the window's result, then drop its contents.
    FireAndPurge,
}

impl TriggerResult {
    fn fires(self) -> bool {
        matches!(self, TriggerResult::Fire | TriggerResult::FireAndPurge)
    }

    fn purges(self) -> bool {
        matches!(self, TriggerResult::Purge | TriggerResult::FireAndPurge)
    }
}

/// A user-defined trigger (Flink's `Trigger`) of windows of `T` records; see
/// [`crate::windows::custom`]. One instance runs per subtask; what it must remember goes
/// in the context's values, not in its fields (they are not checkpointed).
pub trait Trigger<T>: Clone + Send + 'static {
    /// `record`, with `timestamp`, was added to `window`.
    fn on_element(
        &mut self,
        record: &T,
        timestamp: Option<u64>,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> Result<TriggerResult>;

    /// An event-time timer this trigger registered for `window` at `time` fired.
    fn on_event_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> Result<TriggerResult> {
        let _ = (time, window, ctx);
        Ok(TriggerResult::Continue)
    }

    /// A processing-time timer this trigger registered for `window` at `time` fired.
    fn on_processing_time(
        &mut self,
        time: u64,
        window: &TimeWindow,
        ctx: &mut TriggerContext<'_>,
    ) -> Result<TriggerResult> {
        let _ = (time, window, ctx);
        Ok(TriggerResult::Continue)
    }

    /// `window`'s time is up and its contents are dropped: delete its timers. (Its values
    /// are dropped after this call.)
    fn clear(&mut self, window: &TimeWindow, ctx: &mut TriggerContext<'_>) -> Result<()> {
        let _ = (window, ctx);
        Ok(())
    }
}

/// What a trigger may do while it is called: read the time, set timers for its window,
/// and keep values for its window and key.
pub struct TriggerContext<'a> {
    watermark: Option<u64>,
    processing_time: u64,
    requests: &'a mut Vec<(TimeDomain, u64, bool)>,
    values: &'a mut dyn Values,
}

impl std::fmt::Debug for TriggerContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerContext")
            .field("watermark", &self.watermark)
            .field("processing_time", &self.processing_time)
            .finish_non_exhaustive()
    }
}

impl TriggerContext<'_> {
    /// The operator's watermark (`None` before the first).
    pub fn current_watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// The processing clock's time.
    pub fn current_processing_time(&self) -> u64 {
        self.processing_time
    }

    /// Calls [`Trigger::on_event_time`] for this window when the watermark reaches
    /// `time` (at the next watermark, if it has).
    pub fn register_event_time_timer(&mut self, time: u64) {
        self.requests.push((TimeDomain::EventTime, time, true));
    }

    /// Calls [`Trigger::on_processing_time`] for this window when the clock reaches
    /// `time`.
    pub fn register_processing_time_timer(&mut self, time: u64) {
        self.requests.push((TimeDomain::ProcessingTime, time, true));
    }

    /// Deletes this window's event-time timer at `time`.
    pub fn delete_event_time_timer(&mut self, time: u64) {
        self.requests.push((TimeDomain::EventTime, time, false));
    }

    /// Deletes this window's processing-time timer at `time`.
    pub fn delete_processing_time_timer(&mut self, time: u64) {
        self.requests
            .push((TimeDomain::ProcessingTime, time, false));
    }

    /// The value named `name` of this window and key, if one was put.
    pub fn get<V: Serialize + DeserializeOwned + Send + Sync + 'static>(
        &mut self,
        name: &str,
    ) -> Result<Option<V>> {
        let Some(bytes) = self.values.get(name)? else {
            return Ok(None);
        };
        let value = BincodeCodec::<V>::named("trigger value", 1)
            .decode(&bytes)
            .map_err(|e| RuntimeError::Restore {
                reason: format!(
                    "the trigger value {name} in state {WINDOW_TRIGGER_VALUES_STATE} does \
                         not decode as {}: {e}",
                    std::any::type_name::<V>()
                ),
            })?;
        Ok(Some(value))
    }

    /// Puts `value` under `name` for this window and key.
    pub fn put<V: Serialize + DeserializeOwned + Send + Sync + 'static>(
        &mut self,
        name: &str,
        value: &V,
    ) -> Result<()> {
        let bytes = BincodeCodec::<V>::named("trigger value", 1)
            .encode_to_vec(value)
            .map_err(|e| RuntimeError::Config(format!("trigger value {name}: {e}")))?;
        self.values.put(name, bytes)
    }

    /// Removes the value named `name` of this window and key.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        self.values.remove(name)
    }
}

/// A trigger's values for one window of the current key.
trait Values {
    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>>;
    fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<()>;
    fn remove(&mut self, name: &str) -> Result<()>;
}

struct WindowValues<'b, B> {
    backend: &'b mut B,
    state: MapStateId<String, Vec<u8>, TimeWindow>,
    window: TimeWindow,
}

impl<B: KeyedStateBackend> Values for WindowValues<'_, B> {
    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .backend
            .map_get(self.state, &self.window, &name.to_string())?)
    }

    fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<()> {
        Ok(self
            .backend
            .map_put(self.state, &self.window, name.to_string(), bytes)?)
    }

    fn remove(&mut self, name: &str) -> Result<()> {
        Ok(self
            .backend
            .map_remove(self.state, &self.window, &name.to_string())?)
    }
}

/// A user-defined trigger behind a pointer, so that the window operators need no type
/// parameter for it.
pub(crate) struct BoxedTrigger<T>(Box<dyn Erased<T>>);

impl<T> Clone for BoxedTrigger<T> {
    fn clone(&self) -> Self {
        BoxedTrigger(self.0.clone_box())
    }
}

impl<T> std::fmt::Debug for BoxedTrigger<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a user-defined trigger")
    }
}

impl<T: 'static> BoxedTrigger<T> {
    pub(crate) fn new(trigger: impl Trigger<T>) -> Self {
        BoxedTrigger(Box::new(trigger))
    }
}

/// [`Trigger`] without `Clone`, so that it can be boxed.
trait Erased<T>: Send {
    fn clone_box(&self) -> Box<dyn Erased<T>>;
    fn call(&mut self, call: Call<'_, T>, ctx: &mut TriggerContext<'_>) -> Result<TriggerResult>;
}

/// One call of a trigger.
enum Call<'r, T> {
    Element(&'r T, Option<u64>, &'r TimeWindow),
    Timer(Timer, &'r TimeWindow),
    Clear(&'r TimeWindow),
}

impl<T: 'static, X: Trigger<T>> Erased<T> for X {
    fn clone_box(&self) -> Box<dyn Erased<T>> {
        Box::new(self.clone())
    }

    fn call(&mut self, call: Call<'_, T>, ctx: &mut TriggerContext<'_>) -> Result<TriggerResult> {
        match call {
            Call::Element(record, timestamp, window) => {
                self.on_element(record, timestamp, window, ctx)
            }
            Call::Timer(timer, window) => match timer.domain {
                TimeDomain::EventTime => self.on_event_time(timer.time, window, ctx),
                TimeDomain::ProcessingTime => self.on_processing_time(timer.time, window, ctx),
            },
            Call::Clear(window) => self.clear(window, ctx).map(|()| TriggerResult::Continue),
        }
    }
}

/// The keyed states a user-defined trigger runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CustomState {
    values: MapStateId<String, Vec<u8>, TimeWindow>,
    timers: MapStateId<(bool, u64), Vec<TimeWindow>, ()>,
}

impl CustomState {
    pub(crate) fn register<B: KeyedStateBackend>(backend: &mut B) -> Result<Self> {
        let values = MapStateDescriptor::<String, Vec<u8>>::new(WINDOW_TRIGGER_VALUES_STATE)
            .with_namespace(window_codec());
        let mut timers =
            MapStateDescriptor::<(bool, u64), Vec<TimeWindow>>::new(WINDOW_TRIGGER_TIMERS_STATE);
        timers.value = Arc::new(BincodeCodec::named("cairn.windows.TimerWindows", 1));
        Ok(Self {
            values: backend.register_map(&values)?,
            timers: backend.register_map(&timers)?,
        })
    }
}

impl<T: 'static> BoxedTrigger<T> {
    /// Calls the trigger for `window` of the current key, then applies the timers it set.
    fn run<B: KeyedStateBackend>(
        &mut self,
        state: CustomState,
        backend: &mut B,
        timers: &mut TimerService,
        window: &TimeWindow,
        call: Call<'_, T>,
    ) -> Result<TriggerResult> {
        let mut requests = Vec::new();
        let result = {
            let mut values = WindowValues {
                backend: &mut *backend,
                state: state.values,
                window: *window,
            };
            let mut ctx = TriggerContext {
                watermark: timers.current_watermark(),
                processing_time: timers.current_processing_time(),
                requests: &mut requests,
                values: &mut values,
            };
            self.0.call(call, &mut ctx)?
        };
        for (domain, time, register) in requests {
            let at = (domain == TimeDomain::EventTime, time);
            let mut windows = backend.map_get(state.timers, &(), &at)?.unwrap_or_default();
            let had = windows.contains(window);
            if register && !had {
                windows.push(*window);
                backend.map_put(state.timers, &(), at, windows)?;
                // A key's timer at this time may stand for other windows and for the
                // operator's own cleanup: it is never deleted, and finds nothing.
                match domain {
                    TimeDomain::EventTime => timers.register_event_time_timer(time),
                    TimeDomain::ProcessingTime => timers.register_processing_time_timer(time),
                }
            } else if !register && had {
                windows.retain(|w| w != window);
                if windows.is_empty() {
                    backend.map_remove(state.timers, &(), &at)?;
                } else {
                    backend.map_put(state.timers, &(), at, windows)?;
                }
            }
        }
        Ok(result)
    }

    /// The trigger's answer to `record` reaching `window`.
    pub(crate) fn on_element<B: KeyedStateBackend>(
        &mut self,
        state: CustomState,
        backend: &mut B,
        timers: &mut TimerService,
        record: &T,
        timestamp: Option<u64>,
        window: &TimeWindow,
    ) -> Result<TriggerResult> {
        let call = Call::Element(record, timestamp, window);
        self.run(state, backend, timers, window, call)
    }

    /// The windows `timer` stands for and the trigger's answer for each.
    pub(crate) fn on_timer<B: KeyedStateBackend>(
        &mut self,
        state: CustomState,
        backend: &mut B,
        timers: &mut TimerService,
        timer: Timer,
    ) -> Result<Vec<(TimeWindow, TriggerResult)>> {
        let at = (timer.domain == TimeDomain::EventTime, timer.time);
        let Some(windows) = backend.map_get(state.timers, &(), &at)? else {
            return Ok(Vec::new());
        };
        backend.map_remove(state.timers, &(), &at)?;
        let mut results = Vec::with_capacity(windows.len());
        for window in windows {
            let result = self.run(state, backend, timers, &window, Call::Timer(timer, &window))?;
            results.push((window, result));
        }
        Ok(results)
    }

    /// `window`'s time is up: the trigger clears it, and its values go.
    pub(crate) fn clear<B: KeyedStateBackend>(
        &mut self,
        state: CustomState,
        backend: &mut B,
        timers: &mut TimerService,
        window: &TimeWindow,
    ) -> Result<()> {
        self.run(state, backend, timers, window, Call::Clear(window))?;
        Ok(backend.clear(state.values.raw(), window)?)
    }
}

/// Whether `result` fires, and whether it purges, for the operators.
pub(crate) fn fire_and_purge(result: TriggerResult) -> (bool, bool) {
    (result.fires(), result.purges())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_core::ManualClock;

    use super::*;
    use crate::windows::tests::{sum, Harness};
    use crate::windows::{
        SlidingEventTimeWindows, TumblingEventTimeWindows, TumblingProcessingTimeWindows,
        WindowAssigner, WindowOperator,
    };

    type Sum = crate::windows::Reduce<u64, fn(u64, u64) -> u64>;

    fn harness(
        assigner: WindowAssigner,
        lateness: u64,
        trigger: impl Trigger<u64>,
        clock: Arc<ManualClock>,
    ) -> Harness<WindowOperator<u64, u64, Sum>> {
        let firing = (
            Some(super::super::triggers::custom()),
            Some(BoxedTrigger::new(trigger)),
        );
        let lateness = Duration::from_millis(lateness);
        let op = WindowOperator::new("sum", assigner, lateness, None, firing, sum());
        Harness::of(op, clock)
    }

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    /// Fires and purges every third record of a window (counting in its values), and
    /// fires what is left when the watermark reaches the window's end (a timer it sets).
    #[derive(Clone)]
    struct EveryThirdOrEnd;

    impl Trigger<u64> for EveryThirdOrEnd {
        fn on_element(
            &mut self,
            _: &u64,
            _: Option<u64>,
            window: &TimeWindow,
            ctx: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            let count = ctx.get::<u64>("count")?.unwrap_or(0) + 1;
            ctx.register_event_time_timer(window.max_timestamp());
            if count == 3 {
                ctx.remove("count")?;
                return Ok(TriggerResult::FireAndPurge);
            }
            ctx.put("count", &count)?;
            Ok(TriggerResult::Continue)
        }

        fn on_event_time(
            &mut self,
            time: u64,
            window: &TimeWindow,
            _: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            Ok(match time == window.max_timestamp() {
                true => TriggerResult::Fire,
                false => TriggerResult::Continue,
            })
        }

        fn clear(&mut self, window: &TimeWindow, ctx: &mut TriggerContext<'_>) -> Result<()> {
            ctx.delete_event_time_timer(window.max_timestamp());
            Ok(())
        }
    }

    /// The trigger's answers are acted on, its values are kept per window, its timers
    /// call it back for their window, and a window's time being up clears it all.
    #[test]
    fn a_user_defined_trigger_fires_and_purges_its_windows() {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(100));
        let clock = Arc::new(ManualClock::new(0));
        let mut h = harness(tumbling, 0, EveryThirdOrEnd, clock);
        for (v, t) in [(1, 1), (2, 2), (4, 3), (8, 4), (16, 150)] {
            h.process(v, Some(t));
        }
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 7), Some(99))]);
        h.advance(99);
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 8), Some(99))], "its end");
        h.select_key();
        let state = h.state.custom.expect("custom");
        let values = h
            .backend
            .map_entries(state.values, &w(0, 100))
            .expect("values");
        assert_eq!(values, vec![], "cleared with the window");
        let timers = h.backend.map_entries(state.timers, &()).expect("timers");
        assert_eq!(
            timers,
            vec![((true, 199), vec![w(100, 200)])],
            "the window still open"
        );
        let counted = h
            .backend
            .map_get(state.values, &w(100, 200), &"count".to_string())
            .expect("count");
        assert!(counted.is_some(), "{counted:?}");
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(100, 200), 16), Some(199))]);
    }

    /// Fires at a fixed time, whatever the window, unless the record is 0, which deletes
    /// its window's timer.
    #[derive(Clone)]
    struct At(u64);

    impl Trigger<u64> for At {
        fn on_element(
            &mut self,
            record: &u64,
            _: Option<u64>,
            _: &TimeWindow,
            ctx: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            match *record {
                0 => ctx.delete_event_time_timer(self.0),
                _ => ctx.register_event_time_timer(self.0),
            }
            Ok(TriggerResult::Continue)
        }

        fn on_event_time(
            &mut self,
            _: u64,
            _: &TimeWindow,
            _: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            Ok(TriggerResult::Fire)
        }
    }

    /// One timer of a key stands for every window that registered it; a window that
    /// deleted its registration is not called.
    #[test]
    fn a_timer_calls_back_each_window_that_set_it() {
        let sliding =
            SlidingEventTimeWindows::of(Duration::from_millis(100), Duration::from_millis(50));
        let clock = Arc::new(ManualClock::new(0));
        let mut h = harness(sliding, 0, At(70), clock);
        h.process(1, Some(60));
        h.advance(70);
        let mut fired = h.emitted();
        fired.sort();
        assert_eq!(
            fired,
            vec![
                ((1, w(0, 100), 1), Some(99)),
                ((1, w(50, 150), 1), Some(149))
            ]
        );
        // Both windows again, then [0, 100) deletes its timer (a 0 at 10 is only in it).
        h.process(2, Some(60));
        h.process(0, Some(10));
        h.advance(75);
        assert_eq!(
            h.emitted(),
            vec![((1, w(50, 150), 3), Some(149))],
            "a timer set at or before the watermark fires with the next"
        );
    }

    /// Fires on every processing-time timer it set, one per record, 10 ms after it.
    #[derive(Clone)]
    struct Later;

    impl Trigger<u64> for Later {
        fn on_element(
            &mut self,
            _: &u64,
            _: Option<u64>,
            _: &TimeWindow,
            ctx: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            let now = ctx.current_processing_time();
            ctx.register_processing_time_timer(now + 10);
            Ok(TriggerResult::Continue)
        }

        fn on_processing_time(
            &mut self,
            _: u64,
            _: &TimeWindow,
            _: &mut TriggerContext<'_>,
        ) -> Result<TriggerResult> {
            Ok(TriggerResult::FireAndPurge)
        }
    }

    #[test]
    fn a_user_defined_processing_time_trigger() {
        let tumbling = TumblingProcessingTimeWindows::of(Duration::from_millis(100));
        let clock = Arc::new(ManualClock::new(5));
        let mut h = harness(tumbling, 0, Later, clock.clone());
        h.process(1, None);
        clock.set(12);
        h.process(2, None);
        clock.set(15);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 3), Some(99))]);
        clock.set(22);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![], "purged: nothing left to emit");
        clock.set(99);
        h.fire_processing();
        assert_eq!(h.pending(TimeDomain::ProcessingTime), Vec::<u64>::new());
    }
}
