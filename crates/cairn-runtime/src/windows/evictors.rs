//! Evictors: which of a window's records its function sees, given to
//! [`WindowedStream::evictor`](crate::WindowedStream::evictor) (Flink's `Evictor`).
//!
//! - [`CountEvictor::of`]`(n)`: keeps the last `n` records a window received.
//! - [`TimeEvictor::of`]`(size)`: keeps the records whose timestamps are within `size` of
//!   the latest timestamp in the window: those at or before `latest - size` go (records
//!   without a timestamp count as the earliest; when none has one, none goes).
//! - [`DeltaEvictor::of`]`(threshold, delta)`: drops each record whose `delta` to the
//!   window's last record is at or above `threshold`.
//! - [`Evictor::custom`]`(f)`: the user's own (Flink's `Evictor` interface): `f` gets the
//!   window's records with their timestamps, oldest first, and removes what it evicts.
//!
//! An evictor acts each time the window fires, before its function (or after it, with
//! [`Evictor::evict_after`]), and what it drops is gone from the window for good, as in
//! Flink's `EvictingWindowOperator`. A window with an evictor keeps all its records, with
//! their timestamps, whatever the function (a list state of `(timestamp, record)` named
//! [`crate::windows::WINDOW_CONTENTS_STATE`]), and a reduce or an aggregate folds them when the
//! window fires. So whether a window operator has an evictor is kept in its operator state
//! ([`crate::windows::WINDOW_EVICTOR_STATE`]), and a restore that adds or removes one is
//! refused, naming the operator. When the evictor leaves no record, the function is not
//! called.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{KeyedStateBackend, ListStateDescriptor, ListStateId, RawStateId};

use super::context::{At, Operator};
use super::{merge_lists, window_codec, Batch, Contents, Merging, TimeWindow};
use crate::error::Result;
use crate::function::{Collector, Data, Key};

/// A record kept by an evicting window: its timestamp, if it has one, and itself.
pub(crate) type Stamped<T> = (Option<u64>, T);

/// Which of a window's records its function sees; made by [`CountEvictor`],
/// [`TimeEvictor`] and [`DeltaEvictor`].
pub struct Evictor<T> {
    kind: Kind<T>,
    /// Evicts after the window function rather than before.
    after: bool,
}

type Delta<T> = Arc<dyn Fn(&T, &T) -> f64 + Send + Sync>;
type Custom<T> = Arc<dyn Fn(&mut Vec<(Option<u64>, T)>) + Send + Sync>;

enum Kind<T> {
    Count(u64),
    Time(Duration),
    Delta { threshold: f64, delta: Delta<T> },
    Custom(Custom<T>),
}

impl<T> Clone for Evictor<T> {
    fn clone(&self) -> Self {
        let kind = match &self.kind {
            Kind::Count(n) => Kind::Count(*n),
            Kind::Time(d) => Kind::Time(*d),
            Kind::Delta { threshold, delta } => Kind::Delta {
                threshold: *threshold,
                delta: delta.clone(),
            },
            Kind::Custom(f) => Kind::Custom(f.clone()),
        };
        Self {
            kind,
            after: self.after,
        }
    }
}

impl<T> fmt::Debug for Evictor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let when = if self.after { "after" } else { "before" };
        match &self.kind {
            Kind::Count(n) => write!(f, "CountEvictor({n}, {when})"),
            Kind::Time(d) => write!(f, "TimeEvictor({d:?}, {when})"),
            Kind::Delta { threshold, .. } => write!(f, "DeltaEvictor({threshold}, {when})"),
            Kind::Custom(_) => write!(f, "Evictor::custom({when})"),
        }
    }
}

/// Flink's `CountEvictor`.
#[derive(Clone, Copy, Debug)]
pub struct CountEvictor;

impl CountEvictor {
    /// Keeps the last `max_count` records of a window (at least one, checked when the job
    /// is built).
    pub fn of<T>(max_count: u64) -> Evictor<T> {
        Evictor::new(Kind::Count(max_count))
    }
}

/// Flink's `TimeEvictor`.
#[derive(Clone, Copy, Debug)]
pub struct TimeEvictor;

impl TimeEvictor {
    /// Keeps the records within `window_size` of the window's latest timestamp (a positive
    /// whole number of milliseconds, checked when the job is built).
    pub fn of<T>(window_size: Duration) -> Evictor<T> {
        Evictor::new(Kind::Time(window_size))
    }
}

/// Flink's `DeltaEvictor`.
#[derive(Clone, Copy, Debug)]
pub struct DeltaEvictor;

impl DeltaEvictor {
    /// Drops each record whose `delta` to the window's last record is at or above
    /// `threshold`.
    pub fn of<T>(
        threshold: f64,
        delta: impl Fn(&T, &T) -> f64 + Send + Sync + 'static,
    ) -> Evictor<T> {
        Evictor::new(Kind::Delta {
            threshold,
            delta: Arc::new(delta),
        })
    }
}

impl<T> Evictor<T> {
    fn new(kind: Kind<T>) -> Self {
        Self { kind, after: false }
    }

    /// The user's own evictor (Flink's `Evictor` interface): each time the window fires,
    /// `evict` gets the window's records with their timestamps (`None` for a record
    /// without one), oldest first, and removes the ones it evicts (e.g. with
    /// `Vec::retain`), as Flink's evictors remove through the iterator. It must only
    /// remove: the window keeps what is left only when it left fewer records. It runs on
    /// the task thread and must be deterministic, since a restored job fires the restored
    /// windows again.
    pub fn custom(evict: impl Fn(&mut Vec<(Option<u64>, T)>) + Send + Sync + 'static) -> Self {
        Self::new(Kind::Custom(Arc::new(evict)))
    }

    /// Evicts after the window function instead of before it (Flink's `doEvictAfter`):
    /// the function sees every record, and the next firing only those kept.
    pub fn evict_after(mut self) -> Self {
        self.after = true;
        self
    }

    /// Refuses an evictor that would keep nothing or whose size is not whole
    /// milliseconds.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        match &self.kind {
            Kind::Count(0) => Err("a count evictor of 0 records keeps none".into()),
            Kind::Time(d) if d.is_zero() || !d.subsec_nanos().is_multiple_of(1_000_000) => {
                Err(format!(
                    "a time evictor of {d:?}: its size must be a whole number of \
                     milliseconds, at least one"
                ))
            }
            Kind::Delta { threshold, .. } if threshold.is_nan() => {
                Err("a delta evictor's threshold is NaN".into())
            }
            _ => Ok(()),
        }
    }

    /// Drops from `elements` what this evictor evicts; whether it dropped any.
    pub(crate) fn evict(&self, elements: &mut Vec<Stamped<T>>) -> bool
    where
        T: Clone,
    {
        let before = elements.len();
        match &self.kind {
            Kind::Count(n) => {
                let n = usize::try_from(*n).unwrap_or(usize::MAX);
                if elements.len() > n {
                    elements.drain(..elements.len() - n);
                }
            }
            Kind::Time(size) => {
                let size = u64::try_from(size.as_millis()).unwrap_or(u64::MAX);
                let latest = elements.iter().filter_map(|(t, _)| *t).max();
                if let Some(cutoff) = latest.and_then(|l| l.checked_sub(size)) {
                    elements.retain(|(t, _)| t.is_some_and(|t| t > cutoff));
                }
            }
            Kind::Delta { threshold, delta } => {
                if let Some((_, last)) = elements.last().cloned() {
                    elements.retain(|(_, e)| delta(e, &last) < *threshold);
                }
            }
            Kind::Custom(evict) => evict(elements),
        }
        elements.len() != before
    }
}

/// A window's contents, with or without an evictor: with one, the window keeps every
/// record, stamped, and folds them with the function when it fires.
#[derive(Clone)]
pub(crate) struct Evictable<C, T> {
    inner: C,
    evictor: Option<Evictor<T>>,
}

impl<C, T> Evictable<C, T> {
    pub(crate) fn new(inner: C, evictor: Option<Evictor<T>>) -> Self {
        Self { inner, evictor }
    }
}

/// The state of [`Evictable`] contents: the function's own, or the stamped records.
#[derive(Clone, Copy, Debug)]
pub(crate) enum EvictableState<S, L> {
    Plain(S),
    Stamped(L),
}

type StampedList<T> = ListStateId<Stamped<T>, TimeWindow>;

impl<K: Key, T: Data, C: Batch<K, T>> Contents<K, T> for Evictable<C, T> {
    type State = EvictableState<C::State, StampedList<T>>;
    type Out = C::Out;

    fn check(&self) -> std::result::Result<(), String> {
        match &self.evictor {
            Some(evictor) => evictor.check(),
            None => Ok(()),
        }
    }

    fn evicting(&self) -> bool {
        self.evictor.is_some()
    }

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        if self.evictor.is_none() {
            return Ok(EvictableState::Plain(self.inner.register(backend)?));
        }
        let d = ListStateDescriptor::<Stamped<T>>::new(super::WINDOW_CONTENTS_STATE)
            .with_namespace(window_codec());
        Ok(EvictableState::Stamped(backend.register_list(&d)?))
    }

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        operator: Operator<'_>,
    ) -> Result<()> {
        self.inner.open(backend, operator)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        match state {
            EvictableState::Plain(s) => self.inner.add(s, backend, window, timestamp, record),
            EvictableState::Stamped(l) => Ok(backend.list_add(l, window, (timestamp, record))?),
        }
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
        match state {
            EvictableState::Plain(s) => self.inner.emit(s, backend, at, stored, window, out),
            EvictableState::Stamped(l) => self.emit_evicting(l, backend, at, stored, window, out),
        }
    }

    fn raw(state: Self::State) -> RawStateId {
        match state {
            EvictableState::Plain(s) => C::raw(s),
            EvictableState::Stamped(l) => l.raw(),
        }
    }

    fn retire<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        known: bool,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        match state {
            EvictableState::Plain(s) => self.inner.retire(s, backend, at, window, known, out),
            EvictableState::Stamped(l) => {
                let held = known || !backend.list_get(l, window)?.is_empty();
                self.inner.end(backend, at, window, held, out)
            }
        }
    }

    fn end<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        held: bool,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        self.inner.end(backend, at, window, held, out)
    }

    fn keep_alive<B: KeyedStateBackend>(&self, backend: &mut B, window: &TimeWindow) -> Result<()> {
        self.inner.keep_alive(backend, window)
    }
}

impl<C, T: Data> Evictable<C, T> {
    /// Evicts, applies the function to what is left, evicts (when after), and keeps what
    /// is left.
    fn emit_evicting<K: Key, B: KeyedStateBackend>(
        &mut self,
        state: StampedList<T>,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, C::Out>,
    ) -> Result<()>
    where
        C: Batch<K, T>,
    {
        let mut elements = backend.list_get(state, stored)?;
        let evictor = self.evictor.as_ref();
        let after = evictor.is_some_and(|e| e.after);
        let evict = |elements: &mut Vec<Stamped<T>>| evictor.is_some_and(|e| e.evict(elements));
        let evicted_before = !after && evict(&mut elements);
        if elements.is_empty() {
            // Nothing came, or nothing is left: no call (and nothing to keep).
            if evicted_before {
                backend.clear(state.raw(), stored)?;
                self.inner.keep_alive(backend, stored)?;
            }
            return Ok(());
        }
        if !evicted_before && !after {
            // The window keeps what it holds: the records move to the function.
            let records = elements.into_iter().map(|(_, r)| r).collect();
            return self.inner.apply(backend, at, window, records, out);
        }
        let records = elements.iter().map(|(_, r)| r.clone()).collect();
        self.inner.apply(backend, at, window, records, out)?;
        let evicted_after = after && evict(&mut elements);
        if !(evicted_before || evicted_after) {
            Ok(())
        } else if elements.is_empty() {
            backend.clear(state.raw(), stored)?;
            self.inner.keep_alive(backend, stored)
        } else {
            Ok(backend.list_update(state, stored, elements)?)
        }
    }
}

impl<K: Key, T: Data, C: Batch<K, T> + Merging<K, T>> Merging<K, T> for Evictable<C, T> {
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()> {
        match state {
            EvictableState::Plain(s) => self.inner.merge(s, backend, from, into),
            EvictableState::Stamped(l) => merge_lists(l, backend, from, into),
        }
    }
}

#[cfg(test)]
mod tests {

    use cairn_core::ManualClock;

    use super::*;
    use crate::windows::tests::{sum, Harness};
    use crate::windows::triggers::CountTrigger;
    use crate::windows::{TumblingEventTimeWindows, WindowOperator, WindowTrigger};

    fn stamped(ts: &[u64]) -> Vec<Stamped<u64>> {
        ts.iter().map(|t| (Some(*t), *t)).collect()
    }

    fn values(elements: &[Stamped<u64>]) -> Vec<u64> {
        elements.iter().map(|(_, v)| *v).collect()
    }

    type Sum = crate::windows::Reduce<u64, fn(u64, u64) -> u64>;

    /// Sums of tumbling event-time windows of 100 ms behind `evictor`.
    fn harness(
        evictor: Evictor<u64>,
        trigger: Option<WindowTrigger>,
    ) -> Harness<WindowOperator<u64, u64, Evictable<Sum, u64>>> {
        let op = WindowOperator::new(
            "sum",
            TumblingEventTimeWindows::of(Duration::from_millis(100)),
            Duration::ZERO,
            None,
            (trigger, None),
            Evictable::new(sum(), Some(evictor)),
        );
        Harness::of(op, Arc::new(ManualClock::new(0)))
    }

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    /// A reduce behind a count evictor folds the window's last records only.
    #[test]
    fn a_reduce_behind_a_count_evictor_folds_the_last_records() {
        let mut h = harness(CountEvictor::of(2), None);
        for (v, t) in [(1, 10), (2, 20), (4, 15)] {
            h.process(v, Some(t));
        }
        h.advance(99);
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 6), Some(99))]);
    }

    /// What an evictor drops is gone for the next firing; evicting after the function
    /// lets the function see it once.
    #[test]
    fn evicting_before_or_after_the_function() {
        for (after, expected) in [(false, [2, 8]), (true, [3, 14])] {
            let evictor = CountEvictor::of(1);
            let evictor = if after {
                evictor.evict_after()
            } else {
                evictor
            };
            let mut h = harness(evictor, Some(CountTrigger::of(2)));
            for v in [1, 2, 4, 8] {
                h.process(v, Some(v));
            }
            let fired: Vec<u64> = h.emitted().into_iter().map(|((_, _, v), _)| v).collect();
            assert_eq!(fired, expected, "after: {after}");
        }
    }

    /// A time evictor keeps the records within its size of the latest timestamp.
    #[test]
    fn a_time_evictor_in_a_window() {
        let mut h = harness(TimeEvictor::of(Duration::from_millis(10)), None);
        for (v, t) in [(1, 5), (2, 50), (4, 55), (8, 60)] {
            h.process(v, Some(t));
        }
        h.advance(99);
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 12), Some(99))]);
    }

    #[test]
    fn a_count_evictor_keeps_the_last_records() {
        let e = CountEvictor::of::<u64>(2);
        let mut elements = stamped(&[5, 1, 9, 3]);
        assert!(e.evict(&mut elements));
        assert_eq!(values(&elements), vec![9, 3]);
        assert!(!e.evict(&mut elements), "two are within the count");
        assert!(CountEvictor::of::<u64>(0).check().is_err());
    }

    #[test]
    fn a_time_evictor_keeps_what_is_within_its_size_of_the_latest() {
        let e = TimeEvictor::of::<u64>(Duration::from_millis(10));
        let mut elements = stamped(&[5, 21, 30, 11, 20]);
        assert!(e.evict(&mut elements));
        assert_eq!(
            values(&elements),
            vec![21, 30],
            "20 is at the cutoff: it goes"
        );
        let mut young = stamped(&[3, 7]);
        assert!(!e.evict(&mut young), "the cutoff is before the epoch");
        let mut untimed: Vec<Stamped<u64>> = vec![(None, 1), (None, 2)];
        assert!(!e.evict(&mut untimed), "none has a timestamp: none goes");
        let mut mixed: Vec<Stamped<u64>> = vec![(None, 1), (Some(100), 2)];
        assert!(e.evict(&mut mixed));
        assert_eq!(
            values(&mixed),
            vec![2],
            "no timestamp counts as the earliest"
        );
        assert!(TimeEvictor::of::<u64>(Duration::ZERO).check().is_err());
        assert!(TimeEvictor::of::<u64>(Duration::from_micros(1500))
            .check()
            .is_err());
    }

    #[test]
    fn a_delta_evictor_drops_what_is_far_from_the_last_record() {
        let e = DeltaEvictor::of(5.0, |a: &u64, b: &u64| a.abs_diff(*b) as f64);
        let mut elements = stamped(&[1, 20, 8, 12, 10]);
        assert!(e.evict(&mut elements));
        assert_eq!(
            values(&elements),
            vec![8, 12, 10],
            "1 and 20 are 5 or more away"
        );
        assert!(DeltaEvictor::of(f64::NAN, |_: &u64, _: &u64| 0.0)
            .check()
            .is_err());
    }

    /// Keeps the even values and those without a timestamp.
    fn evens() -> Evictor<u64> {
        Evictor::custom(|elements: &mut Vec<(Option<u64>, u64)>| {
            elements.retain(|(t, v)| t.is_none() || v % 2 == 0)
        })
    }

    #[test]
    fn a_custom_evictor_removes_what_it_chooses_and_says_whether_it_did() {
        let e = evens();
        let mut elements = stamped(&[1, 2, 3, 4]);
        assert!(e.evict(&mut elements));
        assert_eq!(values(&elements), vec![2, 4]);
        assert!(!e.evict(&mut elements), "nothing more to remove");
        let mut untimed: Vec<Stamped<u64>> = vec![(None, 1), (Some(3), 3)];
        assert!(e.evict(&mut untimed));
        assert_eq!(values(&untimed), vec![1]);
        assert!(e.check().is_ok());
        assert_eq!(format!("{:?}", e.evict_after()), "Evictor::custom(after)");
    }

    /// A custom evictor in a window: before the function, the sum leaves out the odd
    /// values and they are gone for the next firing; after it, the function sees them once.
    #[test]
    fn a_custom_evictor_in_a_window_before_or_after_the_function() {
        for (after, expected) in [(false, [2, 6]), (true, [3, 7])] {
            let evictor = if after {
                evens().evict_after()
            } else {
                evens()
            };
            let mut h = harness(evictor, Some(CountTrigger::of(2)));
            for v in [1, 2, 4, 1] {
                h.process(v, Some(v));
            }
            let fired: Vec<u64> = h.emitted().into_iter().map(|((_, _, v), _)| v).collect();
            assert_eq!(fired, expected, "after: {after}");
        }
    }
}
