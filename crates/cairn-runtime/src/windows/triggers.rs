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
//! On session windows a count trigger counts each session's records; sessions that merge
//! add their counts up (Flink's `CountTrigger.onMerge`), and a session's timer is its
//! cleanup time from the start.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::timers::TimeDomain;

/// The name of the keyed state in which a count trigger counts a window's records.
pub const WINDOW_COUNT_STATE: &str = "window-count";

/// The name of the operator state that keeps an operator's trigger, checked on restore.
pub const WINDOW_TRIGGER_STATE: &str = "window-trigger";

/// When a window fires; made by [`EventTimeTrigger`], [`ProcessingTimeTrigger`],
/// [`CountTrigger`] and [`PurgingTrigger`].
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
            Fires::Time { event_time } if event_time != (domain == TimeDomain::EventTime) => {
                Err(format!(
                    "{self} on {} windows is not supported",
                    if domain == TimeDomain::EventTime {
                        "event-time"
                    } else {
                        "processing-time"
                    }
                ))
            }
            Fires::Count(0) => Err("a count trigger of 0 records never fires".into()),
            _ => Ok(()),
        }
    }

    /// The count a window fires at, for a count trigger.
    pub(crate) fn count(&self) -> Option<u64> {
        match self.fires {
            Fires::Count(n) => Some(n),
            Fires::Time { .. } => None,
        }
    }
}

impl fmt::Display for WindowTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = match self.fires {
            Fires::Time { event_time: true } => "an event-time trigger".to_string(),
            Fires::Time { event_time: false } => "a processing-time trigger".to_string(),
            Fires::Count(n) => format!("a count trigger of {n} records"),
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
