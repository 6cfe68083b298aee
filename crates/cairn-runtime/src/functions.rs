//! Ready-made functions.

use std::marker::PhantomData;

use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};

use crate::error::Result;
use crate::function::{Checkpointed, Collector, Data, Key, KeyedProcessFunction};

/// Counts the records of each key in a `ValueState<u64>` named `count` (one get and one
/// update per record) and emits `(key, count so far)`: the word count's keyed operator.
pub struct Count<K, T> {
    _types: PhantomData<fn() -> (K, T)>,
}

impl<K, T> Count<K, T> {
    /// The counting function.
    pub fn new() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<K, T> Default for Count<K, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, T> Clone for Count<K, T> {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl<K, T> std::fmt::Debug for Count<K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Count")
    }
}

impl<K, T> Checkpointed for Count<K, T> {}

impl<K: Key, T: Data> KeyedProcessFunction for Count<K, T> {
    type Key = K;
    type In = T;
    type Out = (K, u64);
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::<u64>::new("count"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        count: &Self::State,
        key: &K,
        _record: T,
        backend: &mut B,
        _timers: &mut crate::timers::TimerService,
        out: &mut Collector<'_, (K, u64)>,
    ) -> Result<()> {
        let n = backend.value_get(*count, &())?.unwrap_or(0) + 1;
        backend.value_update(*count, &(), n)?;
        out.collect((key.clone(), n))
    }
}

/// Flink's rolling aggregations `min`, `max`, `minBy` and `maxBy` on a keyed stream: each
/// is [`crate::KeyedStream::reduce`] with its function, emitting `(key, result so far)` for
/// every record (state: the `ValueState` named `reduce`).
impl<K: Key, T: Data + Sync> crate::KeyedStream<K, T> {
    /// The least value of each key so far.
    pub fn min(self, uid: &str) -> crate::Stream<(K, T)>
    where
        T: Ord,
    {
        self.reduce(uid, Ord::min)
    }

    /// The greatest value of each key so far (the later of equals).
    pub fn max(self, uid: &str) -> crate::Stream<(K, T)>
    where
        T: Ord,
    {
        self.reduce(uid, Ord::max)
    }

    /// The record of each key with the least `by` so far (the first of equals).
    pub fn min_by<O: Ord>(
        self,
        uid: &str,
        by: impl Fn(&T) -> O + Clone + Send + Sync + 'static,
    ) -> crate::Stream<(K, T)> {
        self.reduce(uid, move |a, b| if by(&b) < by(&a) { b } else { a })
    }

    /// The record of each key with the greatest `by` so far (the first of equals).
    pub fn max_by<O: Ord>(
        self,
        uid: &str,
        by: impl Fn(&T) -> O + Clone + Send + Sync + 'static,
    ) -> crate::Stream<(K, T)> {
        self.reduce(uid, move |a, b| if by(&b) > by(&a) { b } else { a })
    }
}
