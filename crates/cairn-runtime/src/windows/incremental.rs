//! Incremental aggregation with a process window function (Flink's
//! `reduce(ReduceFunction, ProcessWindowFunction)` and
//! `aggregate(AggregateFunction, ProcessWindowFunction)`):
//! [`WindowedStream::reduce_and_process`](crate::WindowedStream::reduce_and_process) and
//! [`WindowedStream::aggregate_and_process`](crate::WindowedStream::aggregate_and_process).
//!
//! A window keeps only its running reduction or accumulator (as `reduce` and `aggregate`
//! do); when it fires, the [`ProcessWindowFunction`] gets that one value, with the key and
//! the window, and emits what it likes, with the window's last millisecond as timestamp.
//! With an evictor, the window keeps its records and folds them when it fires, as Flink
//! does. On every kind of window (sessions merge their values as `reduce` and `aggregate`
//! do).

use cairn_core::{KeyedStateBackend, RawStateId};

use super::context::{At, Function, Operator};
use super::{
    aggregate_all, Aggregate, Batch, Contents, Merging, ProcessWindowFunction, Reduce, TimeWindow,
    Types,
};
use crate::error::Result;
use crate::function::{Collector, Data, Key};
use cairn_core::AggregateFunction;

/// Contents that fold a window's records into one value: a reduction or an aggregate.
pub(super) trait Folding<K, T>: Contents<K, T> {
    /// What a window folds into.
    type Value: Data;
    /// The value of the window kept in the namespace `stored`, if it has records.
    fn result<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        stored: &TimeWindow,
    ) -> Result<Option<Self::Value>>;
    /// The value of `elements` (at least one).
    fn fold(&mut self, elements: Vec<T>) -> Option<Self::Value>;
}

impl<K: Key, T: Data, F> Folding<K, T> for Reduce<T, F>
where
    F: Fn(T, T) -> T + Clone + Send + Sync + 'static,
{
    type Value = T;

    fn result<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        stored: &TimeWindow,
    ) -> Result<Option<T>> {
        Ok(backend.reducing_get(state, stored)?)
    }

    fn fold(&mut self, elements: Vec<T>) -> Option<T> {
        elements.into_iter().reduce(|a, b| (self.f)(a, b))
    }
}

impl<K, T, ACC, OUT, A> Folding<K, T> for Aggregate<T, ACC, OUT, A>
where
    K: Key,
    T: Data,
    ACC: Data,
    OUT: Data,
    A: AggregateFunction<T, ACC, OUT> + Clone,
{
    type Value = OUT;

    fn result<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        stored: &TimeWindow,
    ) -> Result<Option<OUT>> {
        Ok(backend.aggregating_get(state, stored)?)
    }

    fn fold(&mut self, elements: Vec<T>) -> Option<OUT> {
        Some(aggregate_all(&self.function, elements))
    }
}

/// A folding window function followed by a process window function of its value.
#[derive(Clone)]
pub(super) struct ThenProcess<C, F, O> {
    inner: C,
    f: Function<F>,
    _o: Types<O>,
}

impl<C, F, O> ThenProcess<C, F, O> {
    pub(super) fn new(inner: C, f: F) -> Self {
        Self {
            inner,
            f: Function::new(f),
            _o: Types::default(),
        }
    }

    /// Gives `value` (if any) of `window` of `at`'s key to the process function.
    fn process<K, T, B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        value: Option<C::Value>,
        out: &mut Collector<'_, O>,
    ) -> Result<()>
    where
        C: Folding<K, T>,
        F: ProcessWindowFunction<K, C::Value, O>,
    {
        match value {
            Some(v) => self.f.process(backend, at, window, vec![v], out),
            None => Ok(()),
        }
    }
}

impl<K, T, C, F, O> Contents<K, T> for ThenProcess<C, F, O>
where
    K: Key,
    T: Data,
    O: Data,
    C: Folding<K, T>,
    F: ProcessWindowFunction<K, C::Value, O>,
{
    type State = C::State;
    type Out = O;

    fn check(&self) -> std::result::Result<(), String> {
        self.inner.check()
    }

    fn register<B: KeyedStateBackend>(&self, backend: &mut B) -> Result<Self::State> {
        self.inner.register(backend)
    }

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        operator: Operator<'_>,
    ) -> Result<()> {
        self.inner.open(backend, operator)?;
        self.f.open::<K, C::Value, O, B>(backend, operator)
    }

    fn add<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
        timestamp: Option<u64>,
        record: T,
    ) -> Result<()> {
        self.inner.add(state, backend, window, timestamp, record)
    }

    fn emit<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        stored: &TimeWindow,
        window: &TimeWindow,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let value = self.inner.result(state, backend, stored)?;
        self.process(backend, at, window, value, out)
    }

    fn raw(state: Self::State) -> RawStateId {
        C::raw(state)
    }

    fn clear<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        window: &TimeWindow,
    ) -> Result<()> {
        self.inner.clear(state, backend, window)
    }

    fn retire<B: KeyedStateBackend>(
        &mut self,
        state: Self::State,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        known: bool,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let held = known || self.inner.result(state, backend, window)?.is_some();
        self.end(backend, at, window, held, out)
    }

    fn end<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        held: bool,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        self.f
            .clear::<K, C::Value, O, B>(backend, at, window, held, out)
    }

    fn keep_alive<B: KeyedStateBackend>(&self, backend: &mut B, window: &TimeWindow) -> Result<()> {
        self.f.keep_alive(backend, window)
    }
}

impl<K, T, C, F, O> Batch<K, T> for ThenProcess<C, F, O>
where
    K: Key,
    T: Data,
    O: Data,
    C: Folding<K, T>,
    F: ProcessWindowFunction<K, C::Value, O>,
{
    fn apply<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()> {
        let value = self.inner.fold(elements);
        self.process(backend, at, window, value, out)
    }
}

impl<K, T, C, F, O> Merging<K, T> for ThenProcess<C, F, O>
where
    K: Key,
    T: Data,
    O: Data,
    C: Folding<K, T> + Merging<K, T>,
    F: ProcessWindowFunction<K, C::Value, O>,
{
    fn merge<B: KeyedStateBackend>(
        &self,
        state: Self::State,
        backend: &mut B,
        from: &TimeWindow,
        into: &TimeWindow,
    ) -> Result<()> {
        self.inner.merge(state, backend, from, into)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cairn_core::ManualClock;

    use super::*;
    use crate::windows::evictors::{CountEvictor, Evictable};
    use crate::windows::tests::{sum, Harness};
    use crate::windows::{FnWindow, TumblingEventTimeWindows, WindowOperator};

    type Out<'a> = Collector<'a, (u64, TimeWindow, u64)>;

    /// Emits `(key, window, 10 × value + how many values it got)`.
    fn tenfold() -> impl ProcessWindowFunction<u64, u64, (u64, TimeWindow, u64)> {
        FnWindow(
            |k: &u64, w: TimeWindow, values: Vec<u64>, out: &mut Out<'_>| {
                let n = values.len() as u64;
                out.collect((*k, w, 10 * values.into_iter().sum::<u64>() + n))
            },
        )
    }

    fn harness<C>(contents: C) -> Harness<WindowOperator<u64, u64, C>>
    where
        C: Contents<u64, u64, Out = (u64, TimeWindow, u64)>,
    {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(100));
        let op = WindowOperator::new(
            "sum",
            tumbling,
            Duration::ZERO,
            None,
            (None, None),
            contents,
        );
        Harness::of(op, Arc::new(ManualClock::new(0)))
    }

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    /// The process function gets the window's one folded value, with its key and window,
    /// and its output has the window's last millisecond.
    #[test]
    fn the_process_function_gets_the_folded_value() {
        let mut h = harness(ThenProcess::new(sum(), tenfold()));
        for (v, t) in [(1, 5), (2, 50), (4, 150)] {
            h.process(v, Some(t));
        }
        h.advance(u64::MAX);
        assert_eq!(
            h.emitted(),
            vec![
                ((1, w(0, 100), 31), Some(99)),
                ((1, w(100, 200), 41), Some(199))
            ]
        );
    }

    /// With an evictor, the window keeps its records and folds what the evictor leaves.
    #[test]
    fn behind_an_evictor_the_records_are_folded_when_the_window_fires() {
        let contents = Evictable::new(
            ThenProcess::new(sum(), tenfold()),
            Some(CountEvictor::of(2)),
        );
        let mut h = harness(contents);
        for (v, t) in [(1, 5), (2, 50), (4, 60)] {
            h.process(v, Some(t));
        }
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 100), 61), Some(99))]);
    }
}
