//! Event time: timestamps, watermarks and event-time timers (Flink's `WatermarkStrategy`).
//!
//! [`Stream::assign_timestamps_and_watermarks`](crate::Stream::assign_timestamps_and_watermarks)
//! adds an operator that reads each record's event time (milliseconds) with the strategy's
//! timestamp function and, periodically ([`crate::JobConfig::auto_watermark_interval`],
//! default 200 ms as Flink's `pipeline.auto-watermark-interval`), emits a watermark: the
//! largest timestamp seen, less the strategy's bound on out-of-orderness, less 1 ms (so a
//! record exactly as late as the bound is not late). A watermark `w` says that no record
//! with a timestamp at or before `w` should follow.
//!
//! Watermarks travel in the data, behind the records sent before them: an exchange sends
//! each one to every downstream subtask, and a task's watermark is the smallest of its
//! inputs' (an input that has ended no longer holds it back). When a keyed operator's
//! watermark advances, it fires its event-time timers up to it
//! ([`crate::TimerService::register_event_time_timer`]), in time order, before it
//! processes the records behind the watermark, then forwards the watermark. When the
//! input ends, every pending event-time timer fires (Flink's final `MAX_WATERMARK`), before
//! the operator's output ends; processing-time timers do not.
//!
//! What is not kept: watermarks are not in checkpoints (as in Flink). After a restore, a
//! task's watermark starts over from none and rises again as the sources replay; the
//! event-time timers are keyed state and are restored with it, so a timer that fired
//! before the checkpoint does not fire again, and one that had not fires when the new
//! watermark passes it. The in-flight records of an unaligned checkpoint are stored
//! without the watermarks between them. An operator's watermark never goes back within
//! a run; an assigner drops the watermarks that reach it from upstream and emits its own.
//!
//! Not built: idleness (Flink's `withIdleness`): an input that never sends a watermark
//! (a source subtask without records that does not end, or a stream with no assigner
//! upstream) holds its task's watermark back; and per-record timestamps: records do not
//! carry their timestamp, so a function that needs it computes it from the record.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::KeyGroupRange;

use crate::chain::{Barrier, Chain, Notification, OpSetup, SyncPhase};
use crate::error::Result;
use crate::function::Checkpointed;

/// How an assigner reads event time from records and derives watermarks from it.
pub struct WatermarkStrategy<T> {
    timestamp: Arc<dyn Fn(&T) -> u64 + Send + Sync>,
    out_of_orderness: Duration,
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            timestamp: self.timestamp.clone(),
            out_of_orderness: self.out_of_orderness,
        }
    }
}

impl<T> fmt::Debug for WatermarkStrategy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatermarkStrategy")
            .field("out_of_orderness", &self.out_of_orderness)
            .finish()
    }
}

impl<T> WatermarkStrategy<T> {
    /// Records arrive at most `max_out_of_orderness` later (in event time) than the
    /// newest record before them (Flink's `forBoundedOutOfOrderness`); `timestamp` gives a
    /// record's event time in milliseconds.
    pub fn for_bounded_out_of_orderness(
        max_out_of_orderness: Duration,
        timestamp: impl Fn(&T) -> u64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            timestamp: Arc::new(timestamp),
            out_of_orderness: max_out_of_orderness,
        }
    }

    /// Timestamps never go back (Flink's `forMonotonousTimestamps`).
    pub fn for_monotonous_timestamps(
        timestamp: impl Fn(&T) -> u64 + Send + Sync + 'static,
    ) -> Self {
        Self::for_bounded_out_of_orderness(Duration::ZERO, timestamp)
    }

    /// The watermark after records up to `max_timestamp`: `None` while it would be before
    /// the epoch.
    fn watermark_for(&self, max_timestamp: u64) -> Option<u64> {
        let bound = u64::try_from(self.out_of_orderness.as_millis()).unwrap_or(u64::MAX);
        max_timestamp.checked_sub(bound)?.checked_sub(1)
    }
}

/// Records an assigner passes between two looks at the clock.
const CHECK_EVERY: u32 = 64;

/// The assigner in a chain: passes records on, tracks the largest timestamp, and emits a
/// watermark when it has advanced and the interval has passed (looking at the clock every
/// [`CHECK_EVERY`] records and whenever its task is about to wait).
pub(crate) struct AssignOp<T> {
    setup: OpSetup,
    range: KeyGroupRange,
    strategy: WatermarkStrategy<T>,
    /// Implements [`Checkpointed`] with nothing to keep.
    hooks: NoState,
    interval: Duration,
    max_timestamp: Option<u64>,
    emitted: Option<u64>,
    last_emit: Instant,
    unchecked: u32,
    next: Box<dyn Chain<T>>,
}

#[derive(Clone, Copy)]
struct NoState;

impl Checkpointed for NoState {}

impl<T> AssignOp<T> {
    pub(crate) fn new(
        mut setup: OpSetup,
        strategy: WatermarkStrategy<T>,
        next: Box<dyn Chain<T>>,
    ) -> Result<Self> {
        let mut hooks = NoState;
        setup.initialize(&mut hooks)?;
        Ok(Self {
            range: setup.range()?,
            interval: setup.shared.watermark_interval,
            setup,
            strategy,
            hooks,
            max_timestamp: None,
            emitted: None,
            last_emit: Instant::now(),
            unchecked: 0,
            next,
        })
    }

    /// Emits the current watermark if it advanced and the interval has passed.
    fn maybe_emit(&mut self) -> Result<()> {
        self.unchecked = 0;
        let Some(watermark) = self
            .max_timestamp
            .and_then(|t| self.strategy.watermark_for(t))
        else {
            return Ok(());
        };
        if self.emitted.is_some_and(|e| e >= watermark) || self.last_emit.elapsed() < self.interval
        {
            return Ok(());
        }
        self.last_emit = Instant::now();
        self.emitted = Some(watermark);
        self.next.watermark(watermark)
    }
}

impl<T: Send> Chain<T> for AssignOp<T> {
    #[inline]
    fn push(&mut self, record: T) -> Result<()> {
        let timestamp = (self.strategy.timestamp)(&record);
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
        self.next.push(record)?;
        self.unchecked += 1;
        if self.unchecked >= CHECK_EVERY {
            self.maybe_emit()?;
        }
        Ok(())
    }

    /// Watermarks from upstream are dropped: this assigner's replace them.
    fn watermark(&mut self, _watermark: u64) -> Result<()> {
        Ok(())
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.setup
            .snapshot(&mut self.hooks, barrier, self.range, None, sync)?;
        self.next.snapshot(barrier, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        self.next.notify(n)
    }

    fn finish(&mut self) -> Result<()> {
        // The end of the output stands for the final watermark downstream.
        self.next.finish()
    }

    fn end(&mut self) -> Result<()> {
        self.next.end()
    }

    fn flush(&mut self) -> Result<()> {
        self.maybe_emit()?;
        self.next.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_trails_the_largest_timestamp_by_the_bound_and_one() {
        let s = WatermarkStrategy::<u64>::for_bounded_out_of_orderness(
            Duration::from_millis(100),
            |t| *t,
        );
        assert_eq!(s.watermark_for(1_000), Some(899));
        assert_eq!(s.watermark_for(101), Some(0));
        assert_eq!(s.watermark_for(100), None, "before the epoch");
        let m = WatermarkStrategy::<u64>::for_monotonous_timestamps(|t| *t);
        assert_eq!(m.watermark_for(1), Some(0));
        assert_eq!(m.watermark_for(0), None);
        let huge = WatermarkStrategy::<u64>::for_bounded_out_of_orderness(Duration::MAX, |t| *t);
        assert_eq!(huge.watermark_for(u64::MAX), None);
    }
}
