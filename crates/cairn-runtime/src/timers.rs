//! Timers of keyed process functions (Flink's `TimerService`).
//!
//! A [`KeyedProcessFunction`](crate::KeyedProcessFunction) registers processing-time and
//! event-time timers for the key it is processing; when the processing clock, or the
//! operator's watermark ([`crate::watermarks`]), reaches a timer's time, the runtime calls
//! [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer) with that key
//! current. Timers are keyed state: the runtime keeps each domain's in a map state of the
//! operator, [`PROCESSING_TIMERS_STATE`] and [`EVENT_TIMERS_STATE`] (key → timer time → a
//! tag), so they are in every checkpoint
//! and savepoint, move with their key group when the job is rescaled, go through the
//! changelog, and restore under the other backend from a canonical savepoint, exactly like
//! the function's own state. Each subtask also keeps its timers ordered by time in memory,
//! rebuilt from that state when it starts; this index costs memory in proportion to the
//! number of pending timers, under either backend (Flink keeps RocksDB timers in RocksDB
//! by default; heap timers are its other option).
//!
//! Semantics, as in Flink:
//! - A key has at most one timer per time: registering a time again does nothing.
//! - A timer fires once, in the task's thread, between records (never during `process`),
//!   and is removed from state before `on_timer` runs; `on_timer` may register new timers.
//! - A processing-time timer whose time has passed when it is registered, or while the
//!   job was down, fires as soon as the task gets to it (after a restore: before the first
//!   new record, after the in-flight records of an unaligned checkpoint are replayed). A
//!   task fires at most 1,024 of them between two looks at its events, so a flood of
//!   overdue timers, or an `on_timer` that registers a due timer again, delays barriers
//!   but never blocks them.
//! - Timers fire while a task aligns a checkpoint's barriers; their effects and output
//!   belong to the checkpoint being taken, like any record's before the barrier.
//! - When the input ends, pending processing-time timers do not fire (Flink quiesces the
//!   processing-time service at the end of input); a finished operator's snapshot holds
//!   no keyed state, so they are gone with it. Every pending event-time timer fires then
//!   (the final watermark), before the operator's output ends.
//! - Event-time timers fire when a watermark reaches the operator, all those at or before
//!   it (those that `on_timer` registers at or before it too), before the records behind
//!   it; the watermark is forwarded downstream after them.
//!
//! The timer state is registered the first time a function registers a timer, or when the
//! snapshot restored from holds it; a keyed operator that never uses timers has no timer
//! state. State names starting with [`TIMER_STATE_PREFIX`] are the runtime's: a function
//! must not register states so named.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use cairn_core::{KeyedStateBackend, MapStateDescriptor, MapStateId, SystemClock, TtlClock};

/// State names starting with this are the runtime's timer states.
pub const TIMER_STATE_PREFIX: &str = "cairn.timers.";

/// The map state holding a keyed operator's processing-time timers: per key, timer time
/// (milliseconds, the clock's) → the domain's tag, 0 (a value that is never empty).
pub const PROCESSING_TIMERS_STATE: &str = "cairn.timers.processing";

/// The map state holding a keyed operator's event-time timers: per key, timer time
/// (milliseconds of event time) → the domain's tag, 1.
pub const EVENT_TIMERS_STATE: &str = "cairn.timers.event";

/// The clock of processing-time timers ([`crate::JobConfig::processing_clock`]): the
/// system's wall clock in milliseconds since the Unix epoch unless a test sets another
/// (e.g. [`cairn_core::ManualClock`]). A task waiting for input wakes at least every 50
/// ms, so a clock that jumps ahead is noticed within that.
#[derive(Clone)]
pub struct ProcessingClock(Arc<dyn TtlClock>);

impl ProcessingClock {
    /// A clock reading `clock`.
    pub fn new(clock: Arc<dyn TtlClock>) -> Self {
        Self(clock)
    }

    /// The current time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.0.now_ms()
    }
}

impl Default for ProcessingClock {
    /// The system's wall clock.
    fn default() -> Self {
        Self(Arc::new(SystemClock))
    }
}

impl fmt::Debug for ProcessingClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProcessingClock")
    }
}

/// The time domain of a timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeDomain {
    /// The job's processing clock ([`ProcessingClock`]).
    ProcessingTime,
    /// Event time: the operator's current watermark ([`crate::watermarks`]).
    EventTime,
}

impl TimeDomain {
    /// The state holding this domain's timers.
    pub fn state_name(self) -> &'static str {
        match self {
            TimeDomain::ProcessingTime => PROCESSING_TIMERS_STATE,
            TimeDomain::EventTime => EVENT_TIMERS_STATE,
        }
    }

    /// The value of every entry of this domain's timer state.
    fn tag(self) -> u8 {
        match self {
            TimeDomain::ProcessingTime => 0,
            TimeDomain::EventTime => 1,
        }
    }
}

/// A timer that fired: given to
/// [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    /// The time it was registered for (milliseconds).
    pub time: u64,
    /// Its domain.
    pub domain: TimeDomain,
}

/// What a function asked of the service for the current key.
#[derive(Clone, Copy, Debug)]
enum TimerOp {
    Register(TimeDomain, u64),
    Delete(TimeDomain, u64),
}

/// Registers and deletes timers for the key being processed (Flink's `TimerService`),
/// and reads the processing clock and the current watermark. Registrations take effect
/// when `process` (or `on_timer`) returns.
pub struct TimerService {
    clock: ProcessingClock,
    watermark: Option<u64>,
    ops: Vec<TimerOp>,
}

impl fmt::Debug for TimerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerService")
            .field("watermark", &self.watermark)
            .field("pending_ops", &self.ops.len())
            .finish()
    }
}

impl TimerService {
    /// The processing clock's current time (milliseconds).
    pub fn current_processing_time(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The operator's current watermark (event time, milliseconds): every event-time timer
    /// at or before it has fired. `None` until the first watermark reaches the operator
    /// (Flink's `Long.MIN_VALUE`); it starts over after a restore.
    pub fn current_watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// Fires [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer)
    /// for the current key once the processing clock reaches `time` (at once if it has).
    /// A second registration of the same time for the same key does nothing.
    pub fn register_processing_time_timer(&mut self, time: u64) {
        self.ops
            .push(TimerOp::Register(TimeDomain::ProcessingTime, time));
    }

    /// Deletes the current key's processing-time timer at `time`, if there is one.
    pub fn delete_processing_time_timer(&mut self, time: u64) {
        self.ops
            .push(TimerOp::Delete(TimeDomain::ProcessingTime, time));
    }

    /// Fires [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer)
    /// for the current key once the operator's watermark reaches `time`: when a watermark
    /// at or after `time` arrives (one at or before the current watermark fires with the
    /// next watermark or at the end of the input), before the records behind that
    /// watermark. A second registration of the same time for the same key does nothing.
    pub fn register_event_time_timer(&mut self, time: u64) {
        self.ops
            .push(TimerOp::Register(TimeDomain::EventTime, time));
    }

    /// Deletes the current key's event-time timer at `time`, if there is one.
    pub fn delete_event_time_timer(&mut self, time: u64) {
        self.ops.push(TimerOp::Delete(TimeDomain::EventTime, time));
    }
}

/// One domain's timers: the timer state (registered lazily) and the index of pending
/// timers by time.
struct DomainTimers {
    domain: TimeDomain,
    state: Option<MapStateId<u64, u8, ()>>,
    /// Pending timers: time → serialized keys (looked up without copying a key, since a
    /// function may register the same timer for every record of its key).
    queue: BTreeMap<u64, BTreeSet<Vec<u8>>>,
}

impl DomainTimers {
    fn new(domain: TimeDomain) -> Self {
        Self {
            domain,
            state: None,
            queue: BTreeMap::new(),
        }
    }

    fn contains(&self, time: u64, key: &[u8]) -> bool {
        self.queue.get(&time).is_some_and(|keys| keys.contains(key))
    }

    /// The earliest pending time.
    fn first_time(&self) -> Option<u64> {
        self.queue.first_key_value().map(|(time, _)| *time)
    }

    fn state<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_core::Result<MapStateId<u64, u8, ()>> {
        if let Some(id) = self.state {
            return Ok(id);
        }
        let descriptor = MapStateDescriptor::<u64, u8>::new(self.domain.state_name());
        let id = backend.register_map(&descriptor)?;
        self.state = Some(id);
        Ok(id)
    }

    fn restore<B: KeyedStateBackend>(&mut self, backend: &mut B) -> cairn_core::Result<()> {
        let id = self.state(backend)?;
        for key in backend.keys(id.raw(), &())? {
            backend.set_current_key(&key)?;
            for (time, _) in backend.map_entries(id, &())? {
                self.queue.entry(time).or_default().insert(key.clone());
            }
        }
        Ok(())
    }

    /// Registers (`register`) or deletes a timer of `key`, the backend's current key.
    fn apply<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &[u8],
        time: u64,
        register: bool,
    ) -> cairn_core::Result<()> {
        if register {
            if !self.contains(time, key) {
                let id = self.state(backend)?;
                backend.map_put(id, &(), time, self.domain.tag())?;
                self.queue.entry(time).or_default().insert(key.to_vec());
            }
        } else if self.contains(time, key) {
            let id = self.state(backend)?;
            backend.map_remove(id, &(), &time)?;
            if let Some(keys) = self.queue.get_mut(&time) {
                keys.remove(key);
                if keys.is_empty() {
                    self.queue.remove(&time);
                }
            }
        }
        Ok(())
    }

    /// Removes the earliest timer if it is due at `now`, from the index and (with its key
    /// made current) from the timer state; returns its time and key.
    fn pop_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        now: u64,
    ) -> cairn_core::Result<Option<(u64, Vec<u8>)>> {
        let Some(mut first) = self.queue.first_entry().filter(|e| *e.key() <= now) else {
            return Ok(None);
        };
        let time = *first.key();
        let Some(key) = first.get_mut().pop_first() else {
            // Never empty: an emptied time is removed.
            first.remove();
            return Ok(None);
        };
        if first.get().is_empty() {
            first.remove();
        }
        let id = self.state(backend)?;
        backend.set_current_key(&key)?;
        backend.map_remove(id, &(), &time)?;
        Ok(Some((time, key)))
    }
}

/// A keyed operator's timers: the service its function sees, and each domain's timers.
pub(crate) struct Timers {
    service: TimerService,
    processing: DomainTimers,
    event: DomainTimers,
}

impl Timers {
    pub(crate) fn new(clock: ProcessingClock) -> Self {
        Self {
            service: TimerService {
                clock,
                watermark: None,
                ops: Vec::new(),
            },
            processing: DomainTimers::new(TimeDomain::ProcessingTime),
            event: DomainTimers::new(TimeDomain::EventTime),
        }
    }

    /// The service handed to the function.
    pub(crate) fn service(&mut self) -> &mut TimerService {
        &mut self.service
    }

    fn domain(&mut self, domain: TimeDomain) -> &mut DomainTimers {
        match domain {
            TimeDomain::ProcessingTime => &mut self.processing,
            TimeDomain::EventTime => &mut self.event,
        }
    }

    /// Registers the timer state of `domain` in a restored operator whose snapshot held
    /// it, and indexes the timers of this subtask's key groups. Leaves the backend's
    /// current key unset or at the last timer's key.
    pub(crate) fn restore<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        domain: TimeDomain,
    ) -> cairn_core::Result<()> {
        self.domain(domain).restore(backend)
    }

    /// Applies what the function asked of the service while `key` (serialized) was the
    /// backend's current key. (Inlined: per record, the common case is nothing to do.)
    #[inline]
    pub(crate) fn apply<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &[u8],
    ) -> cairn_core::Result<()> {
        if self.service.ops.is_empty() {
            return Ok(());
        }
        self.apply_ops(backend, key)
    }

    fn apply_ops<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        key: &[u8],
    ) -> cairn_core::Result<()> {
        let mut ops = std::mem::take(&mut self.service.ops);
        // The function may have moved the backend's current key (walking `keys()`, say):
        // the state entries must be the index's key's.
        let result = backend.set_current_key(key).and_then(|()| {
            ops.iter().try_for_each(|op| match *op {
                TimerOp::Register(domain, time) => {
                    self.domain(domain).apply(backend, key, time, true)
                }
                TimerOp::Delete(domain, time) => {
                    self.domain(domain).apply(backend, key, time, false)
                }
            })
        });
        ops.clear();
        self.service.ops = ops;
        result
    }

    /// Whether a processing-time timer is pending.
    pub(crate) fn has_processing_timers(&self) -> bool {
        !self.processing.queue.is_empty()
    }

    /// The earliest pending processing-time timer's time.
    pub(crate) fn next_processing_time(&self) -> Option<u64> {
        self.processing.first_time()
    }

    /// The processing clock's time.
    pub(crate) fn now(&self) -> u64 {
        self.service.clock.now_ms()
    }

    /// Removes the earliest processing-time timer if it is due at `now` (see
    /// [`DomainTimers::pop_due`]).
    pub(crate) fn pop_processing_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        now: u64,
    ) -> cairn_core::Result<Option<(u64, Vec<u8>)>> {
        self.processing.pop_due(backend, now)
    }

    /// The pending timers' times in `domain`, earliest first (each once).
    #[cfg(test)]
    pub(crate) fn pending(&self, domain: TimeDomain) -> Vec<u64> {
        let timers = match domain {
            TimeDomain::ProcessingTime => &self.processing,
            TimeDomain::EventTime => &self.event,
        };
        timers.queue.keys().copied().collect()
    }

    /// The operator's watermark advances to `watermark` (never back).
    pub(crate) fn advance_watermark(&mut self, watermark: u64) {
        self.service.watermark = Some(
            self.service
                .watermark
                .map_or(watermark, |w| w.max(watermark)),
        );
    }

    /// Removes the earliest event-time timer if the current watermark has reached it.
    pub(crate) fn pop_event_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_core::Result<Option<(u64, Vec<u8>)>> {
        match self.service.watermark {
            Some(watermark) => self.event.pop_due(backend, watermark),
            None => Ok(None),
        }
    }
}
