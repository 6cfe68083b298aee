//! Connected streams (Flink's `connect`, `CoProcessFunction` and
//! `KeyedCoProcessFunction`): one operator reads two streams whose records may have
//! different types, and may share state between them — a stream of rules and one of
//! events, or the two sides of a join.
//!
//! `a.connect(b)` is a new stage behind an exchange from each input, as a union is
//! ([`crate::Stream::union`]): each input's records travel as [`Either`] (`Left` from the
//! first, `Right` from the second) and the operator's function gets them by input,
//! [`CoProcessFunction::process1`] and [`CoProcessFunction::process2`]. Keyed by a key of
//! each input ([`ConnectedStreams::key_by`]), records with the same key meet at the same
//! subtask, and a [`KeyedCoProcessFunction`] keeps keyed state and timers that both inputs
//! see. Barriers align over both inputs, so a checkpoint holds the state as of the same
//! point of each; the operator's watermark is the lesser of its inputs'. In-flight records
//! of an unaligned checkpoint are stored as `Either`s on the operator.

use std::marker::PhantomData;

use cairn_core::KeyedStateBackend;
use serde::{Deserialize, Serialize};

use crate::chain::Chain;
use crate::error::Result;
use crate::function::{
    Checkpointed, Collector, Data, FnProcess, InitContext, Key, KeyedProcessFunction,
    ProcessFunction, SnapshotContext,
};
use crate::graph::Stream;
use crate::timers::{Timer, TimerService};

/// A record of two connected streams: of the first (`Left`) or the second (`Right`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// A record of the first stream (`a` of `a.connect(b)`).
    Left(A),
    /// A record of the second stream.
    Right(B),
}

/// A function of two inputs (Flink's `CoProcessFunction`), with checkpoint hooks.
pub trait CoProcessFunction<A, B, Out>: Checkpointed + Clone + Send + 'static {
    /// Processes one record of the first input.
    fn process1(&mut self, input: A, out: &mut Collector<'_, Out>) -> Result<()>;
    /// Processes one record of the second input.
    fn process2(&mut self, input: B, out: &mut Collector<'_, Out>) -> Result<()>;
    /// Both inputs ended (bounded input): emit what is left.
    fn finish(&mut self, out: &mut Collector<'_, Out>) -> Result<()> {
        let _ = out;
        Ok(())
    }
}

/// A function of two inputs keyed alike (Flink's `KeyedCoProcessFunction`), with keyed
/// state in the backend that records of both inputs see, and timers. The backend's
/// current key is the record's key while it runs.
pub trait KeyedCoProcessFunction: Checkpointed + Clone + Send + 'static {
    /// The key type, of both inputs.
    type Key: Key;
    /// Records of the first input.
    type In1: Data;
    /// Records of the second input.
    type In2: Data;
    /// Output records.
    type Out: Data;
    /// Handles to registered states, made by [`KeyedCoProcessFunction::open`].
    type State: Send + 'static;
    /// Registers the keyed states, as [`KeyedProcessFunction::open`].
    fn open<S: KeyedStateBackend>(&mut self, backend: &mut S) -> Result<Self::State>;
    /// Processes one record of the first input, of `key`.
    #[allow(clippy::too_many_arguments)]
    fn process1<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        input: Self::In1,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
    /// Processes one record of the second input, of `key`.
    #[allow(clippy::too_many_arguments)]
    fn process2<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        input: Self::In2,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
    /// A timer of `key` fired, as [`KeyedProcessFunction::on_timer`]. The default does
    /// nothing.
    fn on_timer<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        timer: Timer,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (state, key, timer, backend, timers, out);
        Ok(())
    }
}

/// Two streams connected by [`Stream::connect`], to be read by one function.
pub struct ConnectedStreams<A, B> {
    stream: Stream<Either<A, B>>,
}

impl<A, B> std::fmt::Debug for ConnectedStreams<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectedStreams").finish_non_exhaustive()
    }
}

impl<A: Data, B: Data> ConnectedStreams<A, B> {
    pub(crate) fn new(stream: Stream<Either<A, B>>) -> Self {
        Self { stream }
    }

    /// Sets the parallelism of the connection's stage.
    pub fn parallelism(self, p: u32) -> Self {
        Self {
            stream: self.stream.parallelism(p),
        }
    }

    /// Reads both inputs with `f`, an operator with uid `uid` (records of both are dealt
    /// round-robin among its subtasks).
    pub fn process<Out: Data, F: CoProcessFunction<A, B, Out>>(
        self,
        uid: &str,
        f: F,
    ) -> Stream<Out> {
        self.stream.process(uid, CoProcess { f, _t: PhantomData })
    }

    /// Maps the first input's records with `f1` and the second's with `f2` (Flink's
    /// `CoMapFunction`).
    pub fn map<Out: Data>(
        self,
        uid: &str,
        f1: impl Fn(A) -> Out + Clone + Send + Sync + 'static,
        f2: impl Fn(B) -> Out + Clone + Send + Sync + 'static,
    ) -> Stream<Out> {
        self.stream.process(
            uid,
            FnProcess(move |x: Either<A, B>, out: &mut Collector<'_, Out>| {
                out.collect(match x {
                    Either::Left(a) => f1(a),
                    Either::Right(b) => f2(b),
                })
            }),
        )
    }

    /// Partitions both inputs by key, `key1` of the first input's records and `key2` of
    /// the second's: records with equal keys go to the same subtask.
    pub fn key_by<K: Key>(
        self,
        key1: impl Fn(&A) -> K + Clone + Send + Sync + 'static,
        key2: impl Fn(&B) -> K + Clone + Send + Sync + 'static,
    ) -> ConnectedKeyedStreams<K, A, B> {
        ConnectedKeyedStreams {
            keyed: self.stream.key_by(move |x: &Either<A, B>| match x {
                Either::Left(a) => key1(a),
                Either::Right(b) => key2(b),
            }),
        }
    }
}

/// Connected streams partitioned by key; see [`ConnectedStreams::key_by`].
pub struct ConnectedKeyedStreams<K, A, B> {
    keyed: crate::graph::KeyedStream<K, Either<A, B>>,
}

impl<K, A, B> std::fmt::Debug for ConnectedKeyedStreams<K, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectedKeyedStreams")
            .finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data> ConnectedKeyedStreams<K, A, B> {
    /// The records of both, keyed, as one stream of `Either`s (a window join's input).
    pub(crate) fn into_keyed(self) -> crate::graph::KeyedStream<K, Either<A, B>> {
        self.keyed
    }

    /// Reads both inputs with `f`, a keyed operator with uid `uid` whose state both see.
    pub fn process<F>(self, uid: &str, f: F) -> Stream<F::Out>
    where
        F: KeyedCoProcessFunction<Key = K, In1 = A, In2 = B>,
    {
        self.keyed.process(uid, KeyedCoProcess { f })
    }
}

/// A [`CoProcessFunction`] as the function of the connection's records.
struct CoProcess<F, A, B> {
    f: F,
    _t: PhantomData<fn(A, B)>,
}

impl<F: Clone, A, B> Clone for CoProcess<F, A, B> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _t: PhantomData,
        }
    }
}

/// Checkpoint hooks of a wrapped function, passed to it.
macro_rules! checkpointed_by_field {
    ($ty:ty, [$($g:tt)*]) => {
        impl<$($g)*> Checkpointed for $ty where F: Checkpointed {
            fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
                self.f.initialize_state(ctx)
            }
            fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
                self.f.snapshot_state(ctx)
            }
            fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
                self.f.notify_checkpoint_complete(checkpoint_id)
            }
            fn notify_checkpoint_aborted(&mut self, checkpoint_id: u64) -> Result<()> {
                self.f.notify_checkpoint_aborted(checkpoint_id)
            }
        }
    };
}

checkpointed_by_field!(CoProcess<F, A, B>, [F, A, B]);
checkpointed_by_field!(KeyedCoProcess<F>, [F]);

impl<A: Data, B: Data, Out, F> ProcessFunction<Either<A, B>, Out> for CoProcess<F, A, B>
where
    F: CoProcessFunction<A, B, Out>,
{
    fn process(&mut self, input: Either<A, B>, out: &mut Collector<'_, Out>) -> Result<()> {
        match input {
            Either::Left(a) => self.f.process1(a, out),
            Either::Right(b) => self.f.process2(b, out),
        }
    }

    fn finish(&mut self, out: &mut Collector<'_, Out>) -> Result<()> {
        self.f.finish(out)
    }
}

/// A [`KeyedCoProcessFunction`] as the keyed function of the connection's records.
#[derive(Clone)]
struct KeyedCoProcess<F> {
    f: F,
}

impl<F: KeyedCoProcessFunction> KeyedProcessFunction for KeyedCoProcess<F> {
    type Key = F::Key;
    type In = Either<F::In1, F::In2>;
    type Out = F::Out;
    type State = F::State;

    fn open<S: KeyedStateBackend>(&mut self, backend: &mut S) -> Result<Self::State> {
        self.f.open(backend)
    }

    fn process<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        input: Self::In,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        match input {
            Either::Left(a) => self.f.process1(state, key, a, backend, timers, out),
            Either::Right(b) => self.f.process2(state, key, b, backend, timers, out),
        }
    }

    fn on_timer<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        timer: Timer,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        self.f.on_timer(state, key, timer, backend, timers, out)
    }
}

/// The end of an input's chain in a connection: makes each record a `U` (`Left` or
/// `Right`) and passes it on to the exchange.
pub(crate) struct Wrap<T, U> {
    wrap: fn(T) -> U,
    next: Box<dyn Chain<U>>,
}

impl<T, U> Wrap<T, U> {
    pub(crate) fn new(wrap: fn(T) -> U, next: Box<dyn Chain<U>>) -> Self {
        Self { wrap, next }
    }
}

impl<T: Send, U: Send> Chain<T> for Wrap<T, U> {
    #[inline]
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        self.next.push((self.wrap)(record), timestamp)
    }
    crate::chain::pass_on_to!(next);
}
