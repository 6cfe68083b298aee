//! Timers of keyed process functions (Flink's `TimerService`).
//!
//! A [`KeyedProcessFunction`](crate::KeyedProcessFunction) registers processing-time timers
//! for the key it is processing; when the clock reaches a timer's time, the runtime calls
//! [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer) with that key
//! current. Timers are keyed state: the runtime keeps them in a map state of the operator,
//! [`PROCESSING_TIMERS_STATE`] (key → timer time → a tag), so they are in every checkpoint
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
//! - A timer whose time has passed when it is registered, or while the job was down,
//!   fires as soon as the task gets to it (after a restore: before the first new record,
//!   after the in-flight records of an unaligned checkpoint are replayed). A task fires at
//!   most 1,024 timers between two looks at its events, so a flood of overdue timers, or an
//!   `on_timer` that registers a due timer again, delays barriers but never blocks them.
//! - Timers fire while a task aligns a checkpoint's barriers; their effects and output
//!   belong to the checkpoint being taken, like any record's before the barrier.
//! - When the input ends, pending processing-time timers do not fire (Flink quiesces the
//!   processing-time service at the end of input); a finished operator's snapshot holds
//!   no keyed state, so they are gone with it.
//!
//! The timer state is registered the first time a function registers a timer, or when the
//! snapshot restored from holds it; a keyed operator that never uses timers has no timer
//! state. State names starting with [`TIMER_STATE_PREFIX`] are the runtime's: a function
//! must not register states so named.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use cairn_core::{KeyedStateBackend, MapStateDescriptor, MapStateId, SystemClock, TtlClock};

/// State names starting with this are the runtime's timer states.
pub const TIMER_STATE_PREFIX: &str = "cairn.timers.";

/// The map state holding a keyed operator's processing-time timers: per key, timer time
/// (milliseconds, the clock's) → the domain's tag, 0 (a value that is never empty).
pub const PROCESSING_TIMERS_STATE: &str = "cairn.timers.processing";

/// The value of every entry of [`PROCESSING_TIMERS_STATE`].
const PROCESSING_TIME_TAG: u8 = 0;

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
    Register(u64),
    Delete(u64),
}

/// Registers and deletes timers for the key being processed (Flink's `TimerService`),
/// and reads the processing clock. Registrations take effect when `process` (or
/// `on_timer`) returns.
pub struct TimerService {
    clock: ProcessingClock,
    ops: Vec<TimerOp>,
}

impl fmt::Debug for TimerService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerService")
            .field("pending_ops", &self.ops.len())
            .finish()
    }
}

impl TimerService {
    /// The processing clock's current time (milliseconds).
    pub fn current_processing_time(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Fires [`KeyedProcessFunction::on_timer`](crate::KeyedProcessFunction::on_timer)
    /// for the current key once the processing clock reaches `time` (at once if it has).
    /// A second registration of the same time for the same key does nothing.
    pub fn register_processing_time_timer(&mut self, time: u64) {
        self.ops.push(TimerOp::Register(time));
    }

    /// Deletes the current key's processing-time timer at `time`, if there is one.
    pub fn delete_processing_time_timer(&mut self, time: u64) {
        self.ops.push(TimerOp::Delete(time));
    }
}

/// A keyed operator's timers: the service its function sees, the timer state (registered
/// lazily) and the index of pending timers by time.
pub(crate) struct Timers {
    service: TimerService,
    state: Option<MapStateId<u64, u8, ()>>,
    /// Pending timers: (time, serialized key).
    queue: BTreeSet<(u64, Vec<u8>)>,
}

impl Timers {
    pub(crate) fn new(clock: ProcessingClock) -> Self {
        Self {
            service: TimerService {
                clock,
                ops: Vec::new(),
            },
            state: None,
            queue: BTreeSet::new(),
        }
    }

    /// The service handed to the function.
    pub(crate) fn service(&mut self) -> &mut TimerService {
        &mut self.service
    }

    fn state<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_core::Result<MapStateId<u64, u8, ()>> {
        if let Some(id) = self.state {
            return Ok(id);
        }
        let id =
            backend.register_map(&MapStateDescriptor::<u64, u8>::new(PROCESSING_TIMERS_STATE))?;
        self.state = Some(id);
        Ok(id)
    }

    /// Registers the timer state of a restored operator whose snapshot held it, and indexes
    /// the timers of this subtask's key groups. Leaves the backend's current key unset
    /// or at the last timer's key.
    pub(crate) fn restore<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_core::Result<()> {
        let id = self.state(backend)?;
        for key in backend.keys(id.raw(), &())? {
            backend.set_current_key(&key)?;
            for (time, _) in backend.map_entries(id, &())? {
                self.queue.insert((time, key.clone()));
            }
        }
        Ok(())
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
        let id = backend
            .set_current_key(key)
            .and_then(|()| self.state(backend));
        let result = id.and_then(|id| {
            ops.iter().try_for_each(|op| match *op {
                TimerOp::Register(time) => {
                    if self.queue.insert((time, key.to_vec())) {
                        backend.map_put(id, &(), time, PROCESSING_TIME_TAG)?;
                    }
                    Ok(())
                }
                TimerOp::Delete(time) => {
                    if self.queue.remove(&(time, key.to_vec())) {
                        backend.map_remove(id, &(), &time)?;
                    }
                    Ok(())
                }
            })
        });
        ops.clear();
        self.service.ops = ops;
        result
    }

    /// Whether a timer is pending.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The earliest pending timer's time.
    pub(crate) fn next_time(&self) -> Option<u64> {
        self.queue.first().map(|(time, _)| *time)
    }

    /// The processing clock's time.
    pub(crate) fn now(&self) -> u64 {
        self.service.clock.now_ms()
    }

    /// Removes the earliest timer if it is due at `now`, from the index and (with its key
    /// made current) from the timer state; returns its time and key.
    pub(crate) fn pop_due<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        now: u64,
    ) -> cairn_core::Result<Option<(u64, Vec<u8>)>> {
        let due = self.queue.first().is_some_and(|(time, _)| *time <= now);
        let Some((time, key)) = due.then(|| self.queue.pop_first()).flatten() else {
            return Ok(None);
        };
        let id = self.state(backend)?;
        backend.set_current_key(&key)?;
        backend.map_remove(id, &(), &time)?;
        Ok(Some((time, key)))
    }
}
