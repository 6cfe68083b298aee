//! When windows fire: Flink's built-in triggers, given to
//! [`WindowedStream::trigger`](crate::WindowedStream::trigger).
//!
//! - [`EventTimeTrigger::create`] and [`ProcessingTimeTrigger::create`]: the default of
//!   event-time and processing-time windows; a window fires when the watermark (or the
//!   processing clock) passes its last millisecond, and again for each record within the
//!   allowed lateness.
//! - [`CountTrigger::of`]`(n)`: a window fires each time it has received `n` records since
//!   it last fired (its contents are kept, so a reduce or an aggregate emits its running
//!   result); it does not fire when time passes its end. Its count is keyed state
//!   ([`WINDOW_COUNT_STATE`], in the window's namespace).
//! - [`PurgingTrigger::of`]`(trigger)`: fires when `trigger` does and then drops the
//!   window's contents (Flink's `FIRE_AND_PURGE`), so each firing emits what came since the
//!   last.
//!
//! Whatever the trigger, a window's contents (and count) are dropped when the watermark
//! passes its last millisecond plus the allowed lateness (event time) or the clock passes
//! its last millisecond (processing time), as Flink's cleanup timers do; what a count
//! trigger had not fired by then is not emitted. The trigger is kept in the operator's
//! state ([`WINDOW_TRIGGER_STATE`]) and a restore under another trigger is refused (the
//! timers the old one set would not stand for what the new one needs).
//!
//! - [`ContinuousEventTimeTrigger::of`]`(interval)` and
//!   [`ContinuousProcessingTimeTrigger::of`]`(interval)`: besides firing as the time
//!   trigger of their domain does, a window fires early each time the watermark (or the
//!   clock) passes a multiple of `interval` (since the epoch), from the first multiple
//!   after the time of its first record (or after the watermark or clock then, if later)
//!   until its last millisecond, so a long window emits its running result. A window's
//!   next early firing is keyed state ([`WINDOW_FIRE_TIME_STATE`], in its namespace), as
//!   in Flink; under a purging trigger, the early firings stop at the first, until the
//!   next record. Unlike Flink, the early firings stop at the window's end rather than
//!   going on through the allowed lateness (each late record fires the window anyway).
//!   As with Flink's timers, an early firing still pending when the input ends fires at
//!   the final watermark and the window's end firing follows with the same result; and a
//!   global window (which never ends) fires early at every multiple the watermark or clock
//!   passes, with its unchanged result when no record came. Not on session windows.
//!
//! On session windows a count trigger counts each session's records; sessions that merge
//! add their counts up (Flink's `CountTrigger.onMerge`), and a session's timer is its
//! cleanup time from the start.
//!
//! On global windows ([`crate::GlobalWindows`]) the default is to never fire; an
//! event-time trigger fires the window once, at the end of the input (the final
//! watermark), and a processing-time trigger is refused (the global window never ends).

use std::fmt;

use std::time::Duration;

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use serde::{Deserialize, Serialize};

use super::{window_codec, TimeWindow};
use crate::error::Result;
use crate::timers::{TimeDomain, TimerService};

/// The name of the keyed state in which a count trigger counts a window's records.
pub const WINDOW_COUNT_STATE: &str = "window-count";

/// The name of the keyed state in which a continuous trigger keeps a window's next early
/// firing.
pub const WINDOW_FIRE_TIME_STATE: &str = "window-fire-time";

/// The name of the operator state that keeps an operator's trigger, checked on restore.
pub const WINDOW_TRIGGER_STATE: &str = "window-trigger";

/// When a window fires; made by [`EventTimeTrigger`], [`ProcessingTimeTrigger`],
/// [`CountTrigger`], [`ContinuousEventTimeTrigger`], [`ContinuousProcessingTimeTrigger`]
/// and [`PurgingTrigger`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowTrigger {
    pub(crate) fires: Fires,
    /// The contents are dropped after each firing.
    pub(crate) purge: bool,
}

/// What makes a window fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Fires {
    /// Time passing its last millisecond, in this domain (`true`: event time).
    Time { event_time: bool },
    /// Every this many records.
    Count(u64),
    /// As `Time`, and early at every multiple of `interval` (new variants go last: the
    /// trigger is kept in operator state with bincode, which numbers them).
    Continuous {
        event_time: bool,
        interval: Duration,
    },
    /// Never (global windows' default).
    Never,
    /// A user-defined trigger ([`crate::windows::custom`]).
    Custom,
}

impl WindowTrigger {
    /// The default trigger of windows in `domain`.
    pub(crate) fn default_for(domain: TimeDomain) -> Self {
        Self {
            fires: Fires::Time {
                event_time: domain == TimeDomain::EventTime,
            },
            purge: false,
        }
    }

    /// Refuses a trigger that cannot work with windows in `domain`.
    pub(crate) fn check(&self, domain: TimeDomain) -> std::result::Result<(), String> {
        match self.fires {
            Fires::Time { event_time } | Fires::Continuous { event_time, .. }
                if event_time != (domain == TimeDomain::EventTime) =>
            {
                Err(format!(
                    "{self} on {} windows is not supported",
                    if domain == TimeDomain::EventTime {
                        "event-time"
                    } else {
                        "processing-time"
                    }
                ))
            }
            Fires::Never => Err(format!("{self} on time windows is not supported")),
            _ => self.check_counts(),
        }
    }

    /// Refuses a trigger that cannot work with global windows.
    pub(crate) fn check_global(&self) -> std::result::Result<(), String> {
        match self.fires {
            Fires::Time { event_time: false } => Err(format!(
                "{self} on global windows never fires (the global window never ends): use a \
                 count or continuous trigger"
            )),
            _ => self.check_counts(),
        }
    }

    /// Refuses a count of 0 and an interval that is not a positive whole number of
    /// milliseconds.
    fn check_counts(&self) -> std::result::Result<(), String> {
        match self.fires {
            Fires::Count(0) => Err("a count trigger of 0 records never fires".into()),
            Fires::Continuous { interval, .. } => interval_millis(interval).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// The count a window fires at, for a count trigger.
    pub(crate) fn count(&self) -> Option<u64> {
        match self.fires {
            Fires::Count(n) => Some(n),
            _ => None,
        }
    }

    /// Whether this is a user-defined trigger.
    pub(crate) fn is_custom(&self) -> bool {
        self.fires == Fires::Custom
    }

    /// Whether windows fire when time passes their end (a time or continuous trigger).
    pub(crate) fn timed(&self) -> bool {
        matches!(self.fires, Fires::Time { .. } | Fires::Continuous { .. })
    }

    /// Whether a global window fires at the end of the input (an event-time or
    /// continuous event-time trigger: the final watermark passes its last millisecond).
    pub(crate) fn fires_at_end_of_input(&self) -> bool {
        matches!(
            self.fires,
            Fires::Time { event_time: true }
                | Fires::Continuous {
                    event_time: true,
                    ..
                }
        )
    }

    /// A continuous trigger's interval in milliseconds (checked by [`Self::check`]).
    pub(crate) fn interval(&self) -> Option<u64> {
        match self.fires {
            Fires::Continuous { interval, .. } => interval_millis(interval).ok(),
            _ => None,
        }
    }
}

/// A continuous trigger's `interval` in milliseconds: at least one, and whole.
fn interval_millis(interval: Duration) -> std::result::Result<u64, String> {
    let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 || !interval.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "a continuous trigger's interval of {interval:?}: it must be a whole number of \
             milliseconds, at least one"
        ));
    }
    Ok(ms)
}

/// The first multiple of `interval` after `time`, if there is one below `u64::MAX`: when
/// a continuous trigger fires next (Flink's `time - time % interval + interval`).
pub(crate) fn next_multiple(time: u64, interval: u64) -> Option<u64> {
    (time / interval)
        .checked_add(1)?
        .checked_mul(interval)
        .filter(|t| *t < u64::MAX)
}

impl fmt::Display for WindowTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = match self.fires {
            Fires::Time { event_time: true } => "an event-time trigger".to_string(),
            Fires::Time { event_time: false } => "a processing-time trigger".to_string(),
            Fires::Count(n) => format!("a count trigger of {n} records"),
            Fires::Continuous {
                event_time,
                interval,
            } => format!(
                "a continuous {} trigger every {interval:?}",
                if event_time {
                    "event-time"
                } else {
                    "processing-time"
                }
            ),
            Fires::Never => "no trigger (global windows' default)".to_string(),
            Fires::Custom => "a user-defined trigger".to_string(),
        };
        if self.purge {
            write!(f, "a purging trigger of {inner}")
        } else {
            f.write_str(&inner)
        }
    }
}

/// Flink's `EventTimeTrigger`: fires when the watermark passes a window's end.
#[derive(Clone, Copy, Debug)]
pub struct EventTimeTrigger;

impl EventTimeTrigger {
    /// The trigger.
    pub fn create() -> WindowTrigger {
        WindowTrigger::default_for(TimeDomain::EventTime)
    }
}

/// Flink's `ProcessingTimeTrigger`: fires when the processing clock passes a window's end.
#[derive(Clone, Copy, Debug)]
pub struct ProcessingTimeTrigger;

impl ProcessingTimeTrigger {
    /// The trigger.
    pub fn create() -> WindowTrigger {
        WindowTrigger::default_for(TimeDomain::ProcessingTime)
    }
}

/// Flink's `CountTrigger`: fires every `n` records of a window.
#[derive(Clone, Copy, Debug)]
pub struct CountTrigger;

impl CountTrigger {
    /// Fires a window each time it has received `n` records since it last fired.
    pub fn of(n: u64) -> WindowTrigger {
        WindowTrigger {
            fires: Fires::Count(n),
            purge: false,
        }
    }
}

/// Flink's `PurgingTrigger`: drops a window's contents after each firing.
#[derive(Clone, Copy, Debug)]
pub struct PurgingTrigger;

impl PurgingTrigger {
    /// Fires when `trigger` does, then drops the window's contents.
    pub fn of(trigger: WindowTrigger) -> WindowTrigger {
        WindowTrigger {
            purge: true,
            ..trigger
        }
    }
}

/// Flink's `ContinuousEventTimeTrigger`: fires when the watermark passes a window's end,
/// and early each time it passes a multiple of an interval.
#[derive(Clone, Copy, Debug)]
pub struct ContinuousEventTimeTrigger;

impl ContinuousEventTimeTrigger {
    /// Fires a window each time the watermark passes a multiple of `interval` within it
    /// (whole milliseconds, checked when the job is built), and at its end.
    pub fn of(interval: Duration) -> WindowTrigger {
        WindowTrigger {
            fires: Fires::Continuous {
                event_time: true,
                interval,
            },
            purge: false,
        }
    }
}

/// Flink's `ContinuousProcessingTimeTrigger`: fires when the processing clock passes a
/// window's end, and early each time it passes a multiple of an interval.
#[derive(Clone, Copy, Debug)]
pub struct ContinuousProcessingTimeTrigger;

impl ContinuousProcessingTimeTrigger {
    /// Fires a window each time the clock passes a multiple of `interval` within it (whole
    /// milliseconds, checked when the job is built), and at its end.
    pub fn of(interval: Duration) -> WindowTrigger {
        WindowTrigger {
            fires: Fires::Continuous {
                event_time: false,
                interval,
            },
            purge: false,
        }
    }
}

/// A continuous trigger's early firings: each window's next one is keyed state in its
/// namespace ([`WINDOW_FIRE_TIME_STATE`]), with a timer of its key at that time (a key has
/// one timer per time, so the timer may stand for several windows, and for their ends).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Schedule {
    interval: u64,
    event_time: bool,
    next: ValueStateId<u64, TimeWindow>,
}

impl Schedule {
    /// Registers the next firings' state when `trigger` is continuous (and checked).
    pub(crate) fn register<B: KeyedStateBackend>(
        backend: &mut B,
        trigger: &WindowTrigger,
    ) -> Result<Option<Self>> {
        let (Fires::Continuous { event_time, .. }, Some(interval)) =
            (trigger.fires, trigger.interval())
        else {
            return Ok(None);
        };
        let d =
            ValueStateDescriptor::<u64>::new(WINDOW_FIRE_TIME_STATE).with_namespace(window_codec());
        Ok(Some(Self {
            interval,
            event_time,
            next: backend.register_value(&d)?,
        }))
    }

    /// The time domain of the early firings.
    pub(crate) fn domain(&self) -> TimeDomain {
        if self.event_time {
            TimeDomain::EventTime
        } else {
            TimeDomain::ProcessingTime
        }
    }

    /// Whether a timer at `time` may be an early firing.
    pub(crate) fn may_be_due(&self, time: u64) -> bool {
        time.is_multiple_of(self.interval)
    }

    /// The time in the trigger's domain: the watermark (0 before the first) or the clock.
    fn now(&self, timers: &TimerService) -> u64 {
        if self.event_time {
            timers.current_watermark().unwrap_or(0)
        } else {
            timers.current_processing_time()
        }
    }

    /// A record at `time` reached `window`: schedules the window's first early firing,
    /// unless one is.
    pub(crate) fn on_record<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        timers: &mut TimerService,
        window: &TimeWindow,
        time: u64,
    ) -> Result<()> {
        if backend.value_get(self.next, window)?.is_some() {
            return Ok(());
        }
        self.schedule_after(backend, timers, window, time.max(self.now(timers)))
    }

    /// Schedules `window`'s early firing at the first multiple of the interval after
    /// `after`, if that is before the window's last millisecond (where it fires anyway).
    fn schedule_after<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        timers: &mut TimerService,
        window: &TimeWindow,
        after: u64,
    ) -> Result<()> {
        match next_multiple(after, self.interval).filter(|t| *t < window.max_timestamp()) {
            Some(t) => {
                backend.value_update(self.next, window, t)?;
                if self.event_time {
                    timers.register_event_time_timer(t);
                } else {
                    timers.register_processing_time_timer(t);
                }
                Ok(())
            }
            None => self.clear(backend, window),
        }
    }

    /// Whether `window` fires early at the timer at `time`; when it does, its next early
    /// firing is scheduled, after the current time (so a watermark far ahead fires it
    /// once, not once per interval), but none after a purging firing, which leaves it
    /// empty: its next record schedules one.
    pub(crate) fn due<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        timers: &mut TimerService,
        window: &TimeWindow,
        time: u64,
        purge: bool,
    ) -> Result<bool> {
        if backend.value_get(self.next, window)? != Some(time) {
            return Ok(false);
        }
        if purge {
            self.clear(backend, window)?;
        } else {
            let now = time.max(self.now(timers));
            self.schedule_after(backend, timers, window, now)?;
        }
        Ok(true)
    }

    /// Drops `window`'s next early firing (its timer may stand for other windows: it stays,
    /// and finds nothing).
    pub(crate) fn clear<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        window: &TimeWindow,
    ) -> Result<()> {
        Ok(backend.clear(self.next.raw(), window)?)
    }
}

/// What the operator state of a window operator with a user-defined trigger says of it.
pub(crate) fn custom() -> WindowTrigger {
    WindowTrigger {
        fires: Fires::Custom,
        purge: false,
    }
}

/// Global windows' default trigger.
pub(crate) fn never() -> WindowTrigger {
    WindowTrigger {
        fires: Fires::Never,
        purge: false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::ManualClock;

    use super::*;
    use crate::windows::tests::{sum, Harness};
    use crate::windows::{
        SlidingEventTimeWindows, TumblingEventTimeWindows, TumblingProcessingTimeWindows,
        WindowAssigner, WindowOperator,
    };

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    type Sum = crate::windows::Reduce<u64, fn(u64, u64) -> u64>;

    fn harness(
        assigner: WindowAssigner,
        trigger: WindowTrigger,
        clock: Arc<ManualClock>,
    ) -> Harness<WindowOperator<u64, u64, Sum>> {
        let firing = (Some(trigger), None);
        let op = WindowOperator::new("sum", assigner, Duration::ZERO, None, firing, sum());
        Harness::of(op, clock)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A continuous event-time trigger fires a window at each multiple of its interval
    /// the watermark passes after the window's first record, with the running result,
    /// and at the window's end; a watermark passing several multiples fires it once.
    #[test]
    fn a_continuous_event_time_trigger_fires_early_at_each_interval() {
        let tumbling = TumblingEventTimeWindows::of(ms(100));
        let clock = Arc::new(ManualClock::new(0));
        let mut h = harness(tumbling, ContinuousEventTimeTrigger::of(ms(30)), clock);
        let window = w(0, 100);
        h.advance(2);
        h.process(1, Some(5));
        h.advance(29);
        assert_eq!(h.emitted(), vec![], "the first multiple after 5 is 30");
        h.advance(30);
        assert_eq!(h.emitted(), vec![((1, window, 1), Some(99))]);
        h.process(2, Some(40));
        h.advance(60);
        assert_eq!(h.emitted(), vec![((1, window, 3), Some(99))]);
        h.process(4, Some(70));
        h.advance(95);
        assert_eq!(
            h.emitted(),
            vec![((1, window, 7), Some(99))],
            "90 fires; the next multiple, 120, is past the window's end"
        );
        assert_eq!(h.pending(TimeDomain::EventTime), vec![99]);
        h.advance(99);
        assert_eq!(h.emitted(), vec![((1, window, 7), Some(99))], "its end");
        assert_eq!(h.pending(TimeDomain::EventTime), Vec::<u64>::new());

        // A watermark jumping over every multiple fires once early, then at the end.
        h.process(8, Some(105));
        h.advance(190);
        assert_eq!(h.emitted(), vec![((1, w(100, 200), 8), Some(199))]);
        assert_eq!(h.pending(TimeDomain::EventTime), vec![199]);
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(100, 200), 8), Some(199))]);
    }

    /// A record behind the watermark schedules its window's early firing after the
    /// watermark, not after its own time.
    #[test]
    fn an_early_firing_is_scheduled_after_the_watermark() {
        let tumbling = TumblingEventTimeWindows::of(ms(100));
        let clock = Arc::new(ManualClock::new(0));
        let mut h = harness(tumbling, ContinuousEventTimeTrigger::of(ms(30)), clock);
        h.advance(65);
        h.process(1, Some(10));
        assert_eq!(h.pending(TimeDomain::EventTime), vec![90, 99]);
    }

    /// Under a purging continuous trigger, each early firing has what came since the last,
    /// and a window that emptied fires again only after its next record.
    #[test]
    fn a_purging_continuous_trigger_emits_what_came_since_the_last_firing() {
        let tumbling = TumblingEventTimeWindows::of(ms(100));
        let clock = Arc::new(ManualClock::new(0));
        let trigger = PurgingTrigger::of(ContinuousEventTimeTrigger::of(ms(30)));
        let mut h = harness(tumbling, trigger, clock);
        let window = w(0, 100);
        h.process(1, Some(5));
        h.process(2, Some(6));
        h.advance(30);
        assert_eq!(h.emitted(), vec![((1, window, 3), Some(99))]);
        assert_eq!(
            h.pending(TimeDomain::EventTime),
            vec![99],
            "no early firing after a purge"
        );
        h.advance(60);
        h.process(4, Some(65));
        h.advance(99);
        assert_eq!(h.emitted(), vec![((1, window, 4), Some(99))], "at 90");
    }

    /// Sliding windows: each window a record is in fires early on its own schedule.
    #[test]
    fn each_sliding_window_fires_early() {
        let sliding = SlidingEventTimeWindows::of(ms(100), ms(50));
        let clock = Arc::new(ManualClock::new(0));
        let mut h = harness(sliding, ContinuousEventTimeTrigger::of(ms(40)), clock);
        h.process(1, Some(60));
        h.advance(80);
        let mut fired = h.emitted();
        fired.sort();
        assert_eq!(
            fired,
            vec![
                ((1, w(0, 100), 1), Some(99)),
                ((1, w(50, 150), 1), Some(149))
            ]
        );
        h.advance(120);
        assert_eq!(
            h.emitted(),
            vec![
                ((1, w(0, 100), 1), Some(99)),
                ((1, w(50, 150), 1), Some(149))
            ],
            "[0, 100) ends at 99, [50, 150) fires early at 120"
        );
    }

    /// A continuous processing-time trigger fires by the clock.
    #[test]
    fn a_continuous_processing_time_trigger_fires_by_the_clock() {
        let tumbling = TumblingProcessingTimeWindows::of(ms(100));
        let clock = Arc::new(ManualClock::new(10));
        let trigger = ContinuousProcessingTimeTrigger::of(ms(25));
        let mut h = harness(tumbling, trigger, clock.clone());
        let window = w(0, 100);
        h.process(1, None);
        clock.set(24);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![]);
        clock.set(26);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, window, 1), Some(99))]);
        h.process(2, None);
        clock.set(80);
        h.fire_processing();
        assert_eq!(
            h.emitted(),
            vec![((1, window, 3), Some(99))],
            "at 50, and once: the next is 100, the end's"
        );
        clock.set(99);
        h.fire_processing();
        assert_eq!(h.emitted(), vec![((1, window, 3), Some(99))]);
    }

    #[test]
    fn continuous_triggers_that_cannot_work_are_refused() {
        let event = TimeDomain::EventTime;
        let zero = ContinuousEventTimeTrigger::of(Duration::ZERO).check(event);
        assert!(zero.expect_err("zero").contains("at least one"));
        let part = ContinuousEventTimeTrigger::of(Duration::from_micros(1500)).check(event);
        assert!(part.expect_err("part").contains("whole number"));
        let other = ContinuousProcessingTimeTrigger::of(ms(10)).check(event);
        assert!(other.expect_err("domain").contains("not supported"));
        assert!(ContinuousEventTimeTrigger::of(ms(10)).check(event).is_ok());
        assert_eq!(next_multiple(0, 30), Some(30));
        assert_eq!(next_multiple(30, 30), Some(60));
        assert_eq!(next_multiple(u64::MAX - 5, 30), None);
    }
}
