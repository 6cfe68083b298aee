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
//! the operator's output ends; processing-time timers do not. As in Flink, that includes
//! the timers `on_timer` registers meanwhile, so a function that always registers a later
//! one (a periodic event-time timer) must stop doing so at the end of the input, e.g.
//! when the watermark is `u64::MAX`, or its task never finishes.
//!
//! At a barrier, a task takes the watermarks its inputs sent before the barrier first, so
//! the timers they fire belong to the snapshot. A stop-with-savepoint (without drain, as
//! in Flink) stops the assigners at its barrier: no watermark follows it, and no
//! event-time timer fires after the savepoint, unless the stop fails.
//!
//! What is not kept: watermarks are not in checkpoints (as in Flink). After a restore, a
//! task's watermark starts over from none and rises again as the sources replay; the
//! event-time timers are keyed state and are restored with it, so a timer that fired
//! before the checkpoint does not fire again, and one that had not fires when the new
//! watermark passes it. The in-flight records of an unaligned checkpoint are stored
//! without the watermarks between them. An operator's watermark never goes back within
//! a run; an assigner drops the watermarks that reach it from upstream and emits its own.
//!
//! Idleness ([`WatermarkStrategy::with_idleness`], Flink's `withIdleness`): an assigner
//! that has passed no record for the timeout marks its output idle, and active again
//! before its next record. A task leaves idle inputs out of its watermark, so a quiet
//! source subtask does not hold the others back; when every input is idle, the task
//! forwards the largest of their watermarks and goes idle itself. An input that comes
//! back counts again once its watermark has caught up with the task's (Flink's
//! `StatusWatermarkValve`); until then its records may be late. Without idleness, an
//! input that sends no watermark (a source subtask without records that does not end,
//! or a stream with no assigner upstream) holds its task's watermark back.
//!
//! Timestamps travel with the records: the assigner gives each record the timestamp it
//! reads, and every operator and exchange after it carries it along; a function reads it
//! with [`crate::Collector::timestamp`] (Flink's `Context.timestamp()`), and what it
//! emits gets it too (see there for where a record has none). Unaligned checkpoints store
//! each in-flight record's timestamp with it ([`crate::inflight`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::KeyGroupRange;

use crate::chain::{Barrier, BarrierKind, Chain, Notification, OpSetup, SyncPhase};
use crate::error::{Result, RuntimeError};
use crate::function::Checkpointed;

/// How an assigner reads event time from records and derives watermarks from it.
pub struct WatermarkStrategy<T> {
    timestamp: TimestampOf<T>,
    out_of_orderness: Duration,
    idleness: Option<Duration>,
}

/// Where an assigner takes a record's event time from.
enum TimestampOf<T> {
    /// A function of the record.
    Extract(Arc<dyn Fn(&T) -> u64 + Send + Sync>),
    /// The timestamp the record already carries (a source's
    /// [`crate::Collector::collect_with_timestamp`]).
    Record,
}

impl<T> Clone for TimestampOf<T> {
    fn clone(&self) -> Self {
        match self {
            TimestampOf::Extract(f) => TimestampOf::Extract(f.clone()),
            TimestampOf::Record => TimestampOf::Record,
        }
    }
}

impl<T> Clone for WatermarkStrategy<T> {
    fn clone(&self) -> Self {
        Self {
            timestamp: self.timestamp.clone(),
            out_of_orderness: self.out_of_orderness,
            idleness: self.idleness,
        }
    }
}

impl<T> fmt::Debug for WatermarkStrategy<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatermarkStrategy")
            .field("out_of_orderness", &self.out_of_orderness)
            .field("idleness", &self.idleness)
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
            timestamp: TimestampOf::Extract(Arc::new(timestamp)),
            out_of_orderness: max_out_of_orderness,
            idleness: None,
        }
    }

    /// [`WatermarkStrategy::for_bounded_out_of_orderness`] over the timestamps the records
    /// already carry, set by a source with [`crate::Collector::collect_with_timestamp`]
    /// (Flink's strategies without a `TimestampAssigner`, which keep the record's
    /// timestamp). A record without one is an error naming the assigner.
    pub fn for_record_timestamps(max_out_of_orderness: Duration) -> Self {
        Self {
            timestamp: TimestampOf::Record,
            out_of_orderness: max_out_of_orderness,
            idleness: None,
        }
    }

    /// Marks the output idle when no record has passed for `timeout` (Flink's
    /// `withIdleness`): downstream tasks then leave it out of their watermark until it
    /// passes records again. The assigner looks every 64 records and whenever its task is
    /// about to wait, so idleness is noticed within the timeout plus about 50 ms.
    pub fn with_idleness(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
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
    /// Records passed since the last look at the clock.
    unchecked: u32,
    /// When the last look saw records (idleness).
    last_active: Instant,
    /// The output is marked idle.
    idle: bool,
    /// The barrier of this stop-with-savepoint has passed: nothing more leaves the
    /// assigner (as nothing leaves a stopped source in Flink) unless the stop fails.
    stopping: Option<u64>,
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
        setup.output_into(next.as_ref());
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
            last_active: Instant::now(),
            idle: false,
            stopping: None,
            next,
        })
    }

    /// Marks the output idle when no record has passed for the idleness timeout; emits the
    /// current watermark if it advanced and the interval has passed.
    fn maybe_emit(&mut self) -> Result<()> {
        let active = self.unchecked > 0;
        self.unchecked = 0;
        // A zero interval turns periodic watermarks off, as in Flink.
        if self.interval.is_zero() || self.stopping.is_some() {
            return Ok(());
        }
        if let Some(timeout) = self.strategy.idleness {
            if active {
                self.last_active = Instant::now();
            } else if !self.idle && self.last_active.elapsed() >= timeout {
                self.idle = true;
                return self.next.mark(Mark::Idle);
            }
        }
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
        self.next.mark(Mark::Watermark(watermark))
    }
}

impl<T: Send> Chain<T> for AssignOp<T> {
    #[inline]
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        self.setup.io.record();
        if self.idle {
            self.idle = false;
            self.last_active = Instant::now();
            self.next.mark(Mark::Active)?;
        }
        let timestamp = match &self.strategy.timestamp {
            TimestampOf::Extract(f) => f(&record),
            TimestampOf::Record => timestamp.ok_or_else(|| {
                RuntimeError::user(
                    &self.setup.uid,
                    "a record without a timestamp reached an assigner of the records' own \
                     timestamps (WatermarkStrategy::for_record_timestamps): its source \
                     must emit it with Collector::collect_with_timestamp",
                )
            })?,
        };
        self.max_timestamp = Some(self.max_timestamp.map_or(timestamp, |m| m.max(timestamp)));
        self.next.push(record, Some(timestamp))?;
        self.unchecked += 1;
        if self.unchecked >= CHECK_EVERY {
            self.maybe_emit()?;
        }
        Ok(())
    }

    /// Event-time progress from upstream is dropped: this assigner's replaces it.
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.setup.io.mark(mark);
        Ok(())
    }

    fn input_io(&self) -> Option<std::sync::Arc<crate::metrics::IoMetrics>> {
        Some(self.setup.io.clone())
    }

    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        if let BarrierKind::Savepoint { stop: true, .. } = barrier.kind {
            self.stopping = Some(barrier.id);
        }
        self.setup
            .snapshot(&mut self.hooks, barrier, self.range, None, sync)?;
        self.next.snapshot(barrier, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        if let Notification::Aborted(id) = n {
            if self.stopping == Some(id) {
                // The stop failed: the job goes on.
                self.stopping = None;
            }
        }
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

/// Event-time progress in the data lane, behind the records sent before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// No record at or before this time (milliseconds) should follow.
    Watermark(u64),
    /// The sender passes no records, so no watermarks, for now (Flink's
    /// `WatermarkStatus.IDLE`).
    Idle,
    /// The sender passes records again.
    Active,
}

/// One input of a [`Valve`].
#[derive(Clone, Copy, Debug)]
struct Input {
    watermark: Option<u64>,
    idle: bool,
    /// Counts in the minimum: not idle, and its watermark has caught up with the output
    /// since it was last idle.
    aligned: bool,
    ended: bool,
}

/// Combines a task's inputs' event-time progress into its own (Flink's
/// `StatusWatermarkValve`): the output watermark is the smallest of the aligned active
/// inputs' and never goes back; when every input that has not ended is idle, the output
/// takes the largest of their watermarks and goes idle; an input back from idleness
/// counts again once its watermark reaches the output's. Ended inputs do not count; when
/// every input has ended, the end of the input stands for the final watermark.
#[derive(Debug)]
pub(crate) struct Valve {
    inputs: Vec<Input>,
    output: Option<u64>,
    idle: bool,
}

impl Valve {
    pub(crate) fn new(inputs: usize) -> Self {
        let input = Input {
            watermark: None,
            idle: false,
            aligned: true,
            ended: false,
        };
        Self {
            inputs: vec![input; inputs],
            output: None,
            idle: false,
        }
    }

    /// Input `i` brought `mark`; what the task forwards goes to `out`.
    pub(crate) fn input(&mut self, i: usize, mark: Mark, out: &mut Vec<Mark>) {
        let output = self.output;
        let Some(input) = self.inputs.get_mut(i).filter(|c| !c.ended) else {
            return;
        };
        match mark {
            // An idle input sends none (its assigner goes active first): ignored if it does.
            Mark::Watermark(_) if input.idle => {}
            Mark::Watermark(w) => {
                input.watermark = input.watermark.max(Some(w));
                input.aligned |= output.is_none_or(|o| w >= o);
                self.advance(out);
            }
            Mark::Idle if input.idle => {}
            Mark::Idle => {
                input.idle = true;
                input.aligned = false;
                self.settle(out);
            }
            Mark::Active if !input.idle => {}
            Mark::Active => {
                input.idle = false;
                input.aligned = input
                    .watermark
                    .is_some_and(|w| output.is_none_or(|o| w >= o))
                    || output.is_none();
                if self.idle {
                    self.idle = false;
                    out.push(Mark::Active);
                }
            }
        }
    }

    /// Input `i` has ended (and everything it sent is processed).
    pub(crate) fn end(&mut self, i: usize, out: &mut Vec<Mark>) {
        let Some(input) = self.inputs.get_mut(i).filter(|c| !c.ended) else {
            return;
        };
        input.ended = true;
        input.idle = false;
        input.aligned = false;
        if self.inputs.iter().all(|c| c.ended) {
            return;
        }
        self.settle(out);
    }

    /// After an input stopped counting: the output idles if no input is active, and its
    /// watermark may rise.
    fn settle(&mut self, out: &mut Vec<Mark>) {
        if self.inputs.iter().any(|c| !c.ended && !c.idle) {
            return self.advance(out);
        }
        // Every open input is idle: none will advance, so their largest watermark is safe.
        let largest = self
            .inputs
            .iter()
            .filter(|c| !c.ended)
            .filter_map(|c| c.watermark)
            .max();
        if let Some(w) = largest {
            self.emit(w, out);
        }
        if !self.idle {
            self.idle = true;
            out.push(Mark::Idle);
        }
    }

    /// Forwards the smallest watermark of the aligned active inputs if it rose.
    fn advance(&mut self, out: &mut Vec<Mark>) {
        let mut smallest: Option<Option<u64>> = None;
        for c in self
            .inputs
            .iter()
            .filter(|c| !c.ended && !c.idle && c.aligned)
        {
            smallest = Some(smallest.map_or(c.watermark, |s| s.min(c.watermark)));
        }
        if let Some(Some(w)) = smallest {
            self.emit(w, out);
        }
    }

    fn emit(&mut self, w: u64, out: &mut Vec<Mark>) {
        if self.output.is_none_or(|o| w > o) {
            self.output = Some(w);
            out.push(Mark::Watermark(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(valve: &mut Valve, i: usize, mark: Mark) -> Vec<Mark> {
        let mut out = Vec::new();
        valve.input(i, mark, &mut out);
        out
    }

    fn ended(valve: &mut Valve, i: usize) -> Vec<Mark> {
        let mut out = Vec::new();
        valve.end(i, &mut out);
        out
    }

    use crate::chain::{Recorder, Seen};
    use Mark::{Active, Idle, Watermark};

    /// An assigner over `strategy` emitting whenever it looks, and what it passes on.
    fn assigner(strategy: WatermarkStrategy<u64>) -> (AssignOp<u64>, Recorder<u64>) {
        let setup = OpSetup::for_test("timestamps", None);
        let log = Recorder::new();
        let op = AssignOp::new(setup, strategy, Box::new(log.clone())).expect("assigner");
        (op, log)
    }

    /// The assigner emits a watermark when it looks (every 64 records, and on flush) and
    /// it rose; with idleness it goes idle when a look sees no record for the timeout, and
    /// active again before its next record; it drops marks from upstream.
    #[test]
    fn the_assigner_emits_rising_watermarks_behind_its_records_and_goes_idle_and_back() {
        let strategy = WatermarkStrategy::for_bounded_out_of_orderness(
            Duration::from_millis(10),
            |t: &u64| *t,
        )
        .with_idleness(Duration::ZERO);
        let (mut op, log) = assigner(strategy);
        let take = || log.take();
        op.mark(Watermark(1_000)).expect("upstream mark");
        op.push(100, None).expect("push");
        op.push(50, Some(7)).expect("push");
        assert_eq!(
            take(),
            vec![Seen::Record(100, Some(100)), Seen::Record(50, Some(50))],
            "each record gets the strategy's timestamp, replacing the one it had"
        );
        op.flush().expect("flush");
        assert_eq!(take(), vec![Seen::Mark(Watermark(89))]);
        op.flush().expect("flush");
        assert_eq!(
            take(),
            vec![Seen::Mark(Idle)],
            "no record since the last look"
        );
        op.flush().expect("flush");
        assert_eq!(take(), vec![]);
        op.push(95, None).expect("push");
        op.flush().expect("flush");
        assert_eq!(
            take(),
            vec![Seen::Mark(Active), Seen::Record(95, Some(95))],
            "the watermark did not rise"
        );
        for t in 0..64 {
            op.push(200 + t, None).expect("push");
        }
        let seen = take();
        assert_eq!(seen.len(), 65);
        assert_eq!(
            seen[64],
            Seen::Mark(Watermark(252)),
            "a look after 64 records"
        );
    }

    /// An assigner of the records' own timestamps keeps each record's, derives the
    /// watermark from them, and refuses a record without one, naming itself.
    #[test]
    fn an_assigner_of_record_timestamps_keeps_them() {
        let strategy = WatermarkStrategy::for_record_timestamps(Duration::from_millis(10));
        let (mut op, log) = assigner(strategy);
        let take = || log.take();
        op.push(1, Some(100)).expect("push");
        op.push(2, Some(50)).expect("push");
        op.flush().expect("flush");
        assert_eq!(
            take(),
            vec![
                Seen::Record(1, Some(100)),
                Seen::Record(2, Some(50)),
                Seen::Mark(Watermark(89))
            ]
        );
        let err = op.push(3, None).expect_err("no timestamp");
        let message = err.to_string();
        assert!(
            message.contains("operator timestamps failed")
                && message.contains("without a timestamp"),
            "{message}"
        );
    }

    #[test]
    fn the_valve_forwards_the_smallest_watermark_when_it_rises() {
        let mut v = Valve::new(3);
        assert_eq!(marks(&mut v, 0, Watermark(10)), vec![]);
        assert_eq!(marks(&mut v, 1, Watermark(20)), vec![]);
        assert_eq!(marks(&mut v, 2, Watermark(5)), vec![Watermark(5)]);
        assert_eq!(marks(&mut v, 2, Watermark(30)), vec![Watermark(10)]);
        assert_eq!(
            marks(&mut v, 0, Watermark(8)),
            vec![],
            "an input never goes back"
        );
        assert_eq!(marks(&mut v, 0, Watermark(25)), vec![Watermark(20)]);
        assert_eq!(ended(&mut v, 1), vec![Watermark(25)]);
        assert_eq!(ended(&mut v, 0), vec![Watermark(30)]);
        assert_eq!(
            ended(&mut v, 2),
            vec![],
            "the end stands for the final watermark"
        );
    }

    #[test]
    fn idle_inputs_do_not_hold_the_watermark_back_and_all_idle_flushes_the_largest() {
        let mut v = Valve::new(3);
        marks(&mut v, 0, Watermark(10));
        marks(&mut v, 1, Watermark(40));
        assert_eq!(
            marks(&mut v, 2, Idle),
            vec![Watermark(10)],
            "2 never sent one"
        );
        assert_eq!(marks(&mut v, 0, Idle), vec![Watermark(40)]);
        assert_eq!(
            marks(&mut v, 0, Watermark(50)),
            vec![],
            "ignored while idle"
        );
        assert_eq!(
            marks(&mut v, 1, Idle),
            vec![Idle],
            "all idle: the largest (40) is out already; the task goes idle"
        );
        // Input 0 comes back behind the output: it counts once it has caught up.
        assert_eq!(marks(&mut v, 0, Active), vec![Active]);
        assert_eq!(marks(&mut v, 0, Watermark(35)), vec![]);
        assert_eq!(marks(&mut v, 0, Watermark(45)), vec![Watermark(45)]);
        // Input 2 comes back with no watermark at all: it waits to catch up too.
        assert_eq!(marks(&mut v, 2, Active), vec![]);
        assert_eq!(marks(&mut v, 0, Watermark(60)), vec![Watermark(60)]);
        assert_eq!(marks(&mut v, 2, Watermark(55)), vec![]);
        assert_eq!(marks(&mut v, 2, Watermark(70)), vec![]);
        assert_eq!(marks(&mut v, 0, Watermark(90)), vec![Watermark(70)]);
    }

    #[test]
    fn every_idle_input_flushes_the_largest_watermark_and_an_end_leaves_the_idle_ones() {
        let mut v = Valve::new(2);
        marks(&mut v, 0, Watermark(10));
        marks(&mut v, 1, Watermark(30));
        assert_eq!(marks(&mut v, 1, Idle), vec![]);
        assert_eq!(marks(&mut v, 0, Idle), vec![Watermark(30), Idle]);
        let mut v = Valve::new(2);
        marks(&mut v, 0, Watermark(10));
        marks(&mut v, 1, Idle);
        assert_eq!(
            ended(&mut v, 0),
            vec![Idle],
            "only an idle input is left; it has no watermark"
        );
        assert_eq!(marks(&mut v, 1, Active), vec![Active]);
        assert_eq!(
            marks(&mut v, 1, Watermark(5)),
            vec![],
            "behind the output (10)"
        );
        assert_eq!(marks(&mut v, 1, Watermark(12)), vec![Watermark(12)]);
    }

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
