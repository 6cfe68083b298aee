//! The context of a process window function (Flink's `ProcessWindowFunction.Context`),
//! its per-window and per-key states, and its `clear`.
//!
//! A [`ProcessWindowFunction`] that implements
//! [`process_with_context`](ProcessWindowFunction::process_with_context) gets, with a
//! fired window's records, a [`WindowContext`]:
//! - the window ([`WindowContext::window`]), the operator's event-time watermark
//!   ([`WindowContext::current_watermark`]) and the job's processing clock as the
//!   operator's timers read it ([`WindowContext::current_processing_time`]);
//! - [`WindowContext::window_state`]: keyed state of the key *and the window* (the
//!   window's namespace, as Flink's `windowState()`), and [`WindowContext::global_state`]:
//!   keyed state of the key across all its windows (no namespace, as Flink's
//!   `globalState()`); both take the value, list, map, reducing and aggregating states'
//!   descriptors the rest of the runtime uses ([`cairn_core::ValueStateDescriptor`], ..);
//! - [`WindowContext::output`]: a record into a side output, as
//!   [`Collector::output`](crate::Collector::output) (which the function's collector also
//!   offers).
//!
//! The states live in the window operator's keyed backend like its own, so checkpoints,
//! savepoints, rescaling, the changelog and backend switches carry them. Each access
//! registers the state by its descriptor (or fetches it again: a lookup by name), so a
//! function may build its descriptors where it uses them.
//!
//! ```
//! use cairn_core::{KeyedStateBackend, ValueStateDescriptor};
//! use cairn_runtime::{Collector, ProcessWindowFunction, TimeWindow, WindowContext, WindowStates};
//!
//! /// Emits `(key, window, the window's firings so far, the key's firings so far)`.
//! #[derive(Clone)]
//! struct Firings;
//!
//! type Out = (u64, TimeWindow, u64, u64);
//!
//! fn fires() -> ValueStateDescriptor<u64> {
//!     ValueStateDescriptor::new("fires")
//! }
//!
//! fn total() -> ValueStateDescriptor<u64> {
//!     ValueStateDescriptor::new("total")
//! }
//!
//! impl ProcessWindowFunction<u64, u64, Out> for Firings {
//!     fn open<B: KeyedStateBackend>(
//!         &mut self,
//!         states: &mut WindowStates<'_, B>,
//!     ) -> cairn_runtime::Result<()> {
//!         states.value(&fires()) // per window: declared
//!     }
//!
//!     fn process_with_context<B: KeyedStateBackend>(
//!         &mut self,
//!         key: &u64,
//!         _elements: Vec<u64>,
//!         ctx: &mut WindowContext<'_, B, Out>,
//!         out: &mut Collector<'_, Out>,
//!     ) -> cairn_runtime::Result<()> {
//!         let mut fired = ctx.window_state().value(&fires())?;
//!         let n = fired.get()?.unwrap_or(0) + 1;
//!         fired.update(n)?;
//!         let mut all = ctx.global_state().value(&total())?;
//!         let t = all.get()?.unwrap_or(0) + 1;
//!         all.update(t)?;
//!         out.collect((*key, ctx.window(), n, t))
//!     }
//! }
//! ```
//!
//! **Per-window states are declared** in [`ProcessWindowFunction::open`], by their
//! descriptors ([`WindowStates`]), before any window fires; using one that is not is an
//! error naming the operator. This is where Cairn differs from Flink, which registers
//! them lazily and leaves them behind unless the function's `clear` drops them: the
//! operator knows every per-window state, so when a window is cleaned up it calls the
//! function's [`clear`](ProcessWindowFunction::clear) and then **drops the window's
//! per-window states itself**, whether `clear` did or not, also for windows restored
//! from a snapshot that this run has not touched yet. Per-key states
//! ([`WindowContext::global_state`]) need no declaration and are never dropped by the
//! operator.
//!
//! `clear` is called as Flink's `WindowOperator.clearAllState` calls it: once per window
//! of the key, when its time is up — event-time windows when the watermark passes their
//! last millisecond plus the allowed lateness, processing-time windows when the clock
//! passes their last millisecond, sessions when they are dropped. A purging trigger's
//! purge does not call it (the window goes on), and global windows never end, so neither
//! their `clear` is called nor their per-window states dropped. A window is the key's from
//! its first record to its end, also while a purge (or an evictor) has left it empty. A
//! key's timer may be the end of windows the key never had (under a user-defined or
//! continuous trigger, or with a lateness that is a multiple of the slide): the operator
//! then calls `clear` only for a window that holds records or that it marked
//! ([`WINDOW_PURGED_STATE`]) when it was emptied. After a restore the watermark starts
//! over, so a window that ended before may be made again by a replayed record (see
//! [`crate::windows`]); it starts with no per-window state, as with no contents.
//!
//! **Merging windows** (sessions) refuse per-window state, as Flink does ("Per-window state
//! is not allowed when using merging windows."): declaring one is a configuration error
//! naming the operator when the job starts. [`WindowContext::global_state`] works on them.
//!
//! State names: the window operators' own keyed states
//! ([`super::WINDOW_CONTENTS_STATE`], [`super::WINDOW_COUNT_STATE`], ..) and names
//! starting with [`cairn_core::RESERVED_STATE_PREFIX`] are refused, and a name is either
//! per-window or per-key, not both.

use std::fmt;
use std::sync::Arc;

use cairn_core::{
    Aggregating, AggregatingStateDescriptor, BincodeCodec, CodecRef, KeyedStateBackend, List,
    ListStateDescriptor, Map, MapStateDescriptor, Namespace, RawStateId, Reducing,
    ReducingStateDescriptor, StateAccess, StateValue, UserKey, Value, ValueStateDescriptor,
    ValueStateId, RESERVED_STATE_PREFIX,
};

use super::custom::{WINDOW_TRIGGER_TIMERS_STATE, WINDOW_TRIGGER_VALUES_STATE};
use super::sessions::MERGING_WINDOW_SET_STATE;
use super::triggers::{WINDOW_COUNT_STATE, WINDOW_FIRE_TIME_STATE};
use super::{window_codec, ProcessWindowFunction, TimeWindow, WINDOW_CONTENTS_STATE};
use crate::error::{Result, RuntimeError};
use crate::function::{Collector, Data};
use crate::metrics::MetricGroup;
use crate::side::OutputTag;
use crate::timers::TimerService;

/// The name of the keyed state (in the window's namespace) that marks a window whose
/// contents a purging trigger or an evictor emptied while it was open, so that its
/// function's `clear` is still called when it ends. Only a window operator of a process
/// window function that may empty windows so, and whose timers do not tell which windows
/// a key has (see [`crate::windows::context`]), keeps it.
pub const WINDOW_PURGED_STATE: &str = "window-purged";

/// The keyed states of the window operators themselves: a function may not name its own
/// so.
const OPERATOR_STATES: [&str; 7] = [
    WINDOW_CONTENTS_STATE,
    WINDOW_PURGED_STATE,
    WINDOW_COUNT_STATE,
    WINDOW_FIRE_TIME_STATE,
    WINDOW_TRIGGER_VALUES_STATE,
    WINDOW_TRIGGER_TIMERS_STATE,
    MERGING_WINDOW_SET_STATE,
];

/// What the default [`ProcessWindowFunction::process`] fails with.
pub(super) const NEITHER: &str =
    "a process window function must implement process or process_with_context";

/// A side-output record emitted through a [`WindowContext`], waiting for the function's
/// call to return.
type Pending<O> = Box<dyn FnOnce(&mut Collector<'_, O>) -> Result<()>>;

/// What a process window function is told, and may use, when its window fires or ends
/// (Flink's `ProcessWindowFunction.Context`); see [`crate::windows::context`].
pub struct WindowContext<'a, B, O> {
    backend: &'a mut B,
    states: &'a FunctionStates,
    window: TimeWindow,
    watermark: Option<u64>,
    processing_time: u64,
    sides: Vec<Pending<O>>,
}

impl<B, O> fmt::Debug for WindowContext<'_, B, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowContext")
            .field("uid", &self.states.uid)
            .field("window", &self.window)
            .field("watermark", &self.watermark)
            .field("processing_time", &self.processing_time)
            .finish_non_exhaustive()
    }
}

impl<B, O> WindowContext<'_, B, O> {
    /// The window that fired (or ends): for a session, the whole merged session.
    pub fn window(&self) -> TimeWindow {
        self.window
    }

    /// The window operator's event-time watermark when it called the function (`None`
    /// before the first watermark reached it; it starts over after a restore). A window
    /// fired by the watermark sees the watermark that fired it.
    pub fn current_watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// The job's processing clock ([`crate::JobConfig::processing_clock`]) in
    /// milliseconds, as the window operator's timers read it when it called the function.
    pub fn current_processing_time(&self) -> u64 {
        self.processing_time
    }
}

impl<B: KeyedStateBackend, O> WindowContext<'_, B, O> {
    /// Keyed state of this key and this window (Flink's `windowState()`): each window of
    /// the key has its own. Only states declared in [`ProcessWindowFunction::open`]; none
    /// on merging windows (sessions). The operator drops them when the window ends.
    pub fn window_state(&mut self) -> KeyedStateStore<'_, B, TimeWindow> {
        KeyedStateStore {
            backend: &mut *self.backend,
            namespace: &self.window,
            codec: &self.states.window_codec,
            scope: Scope::Window,
            states: self.states,
        }
    }

    /// Keyed state of this key across all its windows (Flink's `globalState()`): what one
    /// window puts there, the key's other windows see. Registered at its first use.
    pub fn global_state(&mut self) -> KeyedStateStore<'_, B, ()> {
        KeyedStateStore {
            backend: &mut *self.backend,
            namespace: &(),
            codec: &self.states.void_codec,
            scope: Scope::Global,
            states: self.states,
        }
    }
}

impl<B, O: 'static> WindowContext<'_, B, O> {
    /// Emits `record` into the side output `tag` (Flink's `Context.output`), with the
    /// window's last millisecond as its timestamp; [`crate::Stream::side_output`] on the
    /// window's result stream reads it. It goes out when the function returns (not if it
    /// fails), in the order emitted; dropped when no stream reads the tag.
    pub fn output<X: Data>(&mut self, tag: &OutputTag<X>, record: X) -> Result<()> {
        let tag = tag.clone();
        self.sides.push(Box::new(move |out: &mut Collector<'_, O>| {
            out.output(&tag, record)
        }));
        Ok(())
    }
}

/// Which states a [`KeyedStateStore`] reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// The key's in the window's namespace.
    Window,
    /// The key's, without a namespace.
    Global,
}

/// Keyed state of a window function's key, in a window's namespace
/// ([`WindowContext::window_state`]) or in none ([`WindowContext::global_state`]) (Flink's
/// `KeyedStateStore`). Each method takes a state's descriptor (its namespace codec is not
/// used: the store's namespace is the window, or none), registers the state with the
/// backend (or fetches it again) and gives access to it for the key:
/// `ctx.window_state().value(&descriptor)?.get()?`.
pub struct KeyedStateStore<'a, B, N> {
    backend: &'a mut B,
    namespace: &'a N,
    codec: &'a CodecRef<N>,
    scope: Scope,
    states: &'a FunctionStates,
}

impl<B, N: fmt::Debug> fmt::Debug for KeyedStateStore<'_, B, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStateStore")
            .field("uid", &self.states.uid)
            .field("namespace", self.namespace)
            .finish_non_exhaustive()
    }
}

impl<'a, B: KeyedStateBackend, N: Namespace> KeyedStateStore<'a, B, N> {
    /// The value state of descriptor `d`.
    pub fn value<V: StateValue>(self, d: &ValueStateDescriptor<V>) -> Result<Value<'a, B, V, N>> {
        self.check(&d.name)?;
        let scoped = ValueStateDescriptor {
            name: d.name.clone(),
            value: d.value.clone(),
            namespace: self.codec.clone(),
        };
        let id = self
            .backend
            .register_value(&scoped)
            .map_err(|e| self.states.registration(e))?;
        Ok(self.backend.value_in(&id, self.namespace))
    }

    /// The list state of descriptor `d`.
    pub fn list<V: StateValue>(self, d: &ListStateDescriptor<V>) -> Result<List<'a, B, V, N>> {
        self.check(&d.name)?;
        let scoped = ListStateDescriptor {
            name: d.name.clone(),
            element: d.element.clone(),
            namespace: self.codec.clone(),
        };
        let id = self
            .backend
            .register_list(&scoped)
            .map_err(|e| self.states.registration(e))?;
        Ok(self.backend.list_in(&id, self.namespace))
    }

    /// The map state of descriptor `d`.
    pub fn map<UK: UserKey, UV: StateValue>(
        self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<Map<'a, B, UK, UV, N>> {
        self.check(&d.name)?;
        let scoped = MapStateDescriptor {
            name: d.name.clone(),
            user_key: d.user_key.clone(),
            value: d.value.clone(),
            namespace: self.codec.clone(),
        };
        let id = self
            .backend
            .register_map(&scoped)
            .map_err(|e| self.states.registration(e))?;
        Ok(self.backend.map_in(&id, self.namespace))
    }

    /// The reducing state of descriptor `d`.
    pub fn reducing<V: StateValue>(
        self,
        d: &ReducingStateDescriptor<V>,
    ) -> Result<Reducing<'a, B, V, N>> {
        self.check(&d.name)?;
        let scoped = ReducingStateDescriptor {
            name: d.name.clone(),
            value: d.value.clone(),
            namespace: self.codec.clone(),
            reduce: d.reduce.clone(),
        };
        let id = self
            .backend
            .register_reducing(&scoped)
            .map_err(|e| self.states.registration(e))?;
        Ok(self.backend.reducing_in(&id, self.namespace))
    }

    /// The aggregating state of descriptor `d`.
    pub fn aggregating<IN: 'static, ACC: StateValue, OUT: 'static>(
        self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT>,
    ) -> Result<Aggregating<'a, B, IN, ACC, OUT, N>> {
        self.check(&d.name)?;
        let scoped = AggregatingStateDescriptor {
            name: d.name.clone(),
            accumulator: d.accumulator.clone(),
            namespace: self.codec.clone(),
            function: d.function.clone(),
        };
        let id = self
            .backend
            .register_aggregating(&scoped)
            .map_err(|e| self.states.registration(e))?;
        Ok(self.backend.aggregating_in(&id, self.namespace))
    }

    /// Refuses a state this store may not reach.
    fn check(&self, name: &str) -> Result<()> {
        match self.scope {
            Scope::Window => self.states.check_window(name),
            Scope::Global => self.states.check_global(name),
        }
    }
}

/// What [`ProcessWindowFunction::open`] gets: declares the function's per-window states
/// ([`WindowContext::window_state`]) by their descriptors, registering each with the
/// operator's backend in the windows' namespace, so that the operator drops them when a
/// window ends. Declaring one twice is declaring it once.
pub struct WindowStates<'a, B> {
    backend: &'a mut B,
    states: &'a mut FunctionStates,
    metrics: MetricGroup,
}

impl<B> fmt::Debug for WindowStates<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowStates")
            .field("uid", &self.states.uid)
            .field("declared", &self.states.per_window)
            .finish_non_exhaustive()
    }
}

impl<B> WindowStates<'_, B> {
    /// The window operator's metric group (Flink's `getRuntimeContext().getMetricGroup()`
    /// in a rich window function's `open`): the function's own counters, gauges, meters
    /// and histograms, scoped `<uid>.<subtask>`; keep the handles it returns.
    pub fn metrics(&self) -> &MetricGroup {
        &self.metrics
    }
}

impl<B: KeyedStateBackend> WindowStates<'_, B> {
    /// Declares the per-window value state of descriptor `d`.
    pub fn value<V: StateValue>(&mut self, d: &ValueStateDescriptor<V>) -> Result<()> {
        self.states.check_declaration(&d.name)?;
        let scoped = ValueStateDescriptor {
            name: d.name.clone(),
            value: d.value.clone(),
            namespace: self.states.window_codec.clone(),
        };
        let raw = self.backend.register_value(&scoped).map(|id| id.raw());
        self.states.declared(&d.name, raw)
    }

    /// Declares the per-window list state of descriptor `d`.
    pub fn list<V: StateValue>(&mut self, d: &ListStateDescriptor<V>) -> Result<()> {
        self.states.check_declaration(&d.name)?;
        let scoped = ListStateDescriptor {
            name: d.name.clone(),
            element: d.element.clone(),
            namespace: self.states.window_codec.clone(),
        };
        let raw = self.backend.register_list(&scoped).map(|id| id.raw());
        self.states.declared(&d.name, raw)
    }

    /// Declares the per-window map state of descriptor `d`.
    pub fn map<UK: UserKey, UV: StateValue>(
        &mut self,
        d: &MapStateDescriptor<UK, UV>,
    ) -> Result<()> {
        self.states.check_declaration(&d.name)?;
        let scoped = MapStateDescriptor {
            name: d.name.clone(),
            user_key: d.user_key.clone(),
            value: d.value.clone(),
            namespace: self.states.window_codec.clone(),
        };
        let raw = self.backend.register_map(&scoped).map(|id| id.raw());
        self.states.declared(&d.name, raw)
    }

    /// Declares the per-window reducing state of descriptor `d`.
    pub fn reducing<V: StateValue>(&mut self, d: &ReducingStateDescriptor<V>) -> Result<()> {
        self.states.check_declaration(&d.name)?;
        let scoped = ReducingStateDescriptor {
            name: d.name.clone(),
            value: d.value.clone(),
            namespace: self.states.window_codec.clone(),
            reduce: d.reduce.clone(),
        };
        let raw = self.backend.register_reducing(&scoped).map(|id| id.raw());
        self.states.declared(&d.name, raw)
    }

    /// Declares the per-window aggregating state of descriptor `d`.
    pub fn aggregating<IN: 'static, ACC: StateValue, OUT: 'static>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT>,
    ) -> Result<()> {
        self.states.check_declaration(&d.name)?;
        let scoped = AggregatingStateDescriptor {
            name: d.name.clone(),
            accumulator: d.accumulator.clone(),
            namespace: self.states.window_codec.clone(),
            function: d.function.clone(),
        };
        let raw = self
            .backend
            .register_aggregating(&scoped)
            .map(|id| id.raw());
        self.states.declared(&d.name, raw)
    }
}

/// The window operator a process window function opens in.
#[derive(Clone, Copy, Debug)]
pub(super) struct Operator<'a> {
    /// Its uid.
    pub(super) uid: &'a str,
    /// Its windows merge (sessions).
    pub(super) merging: bool,
    /// It marks the windows whose contents are emptied while they are open (by a purging
    /// or user-defined trigger, or an evictor) in [`WINDOW_PURGED_STATE`]: it cannot tell
    /// from its timers alone whether a key has a window that ends, and an empty window
    /// may be the key's.
    pub(super) marks_purged: bool,
    /// Its metric group (`None` before `initialize_state`, in unit tests).
    pub(super) metrics: Option<&'a MetricGroup>,
}

/// What a window operator keeps for its process window function: its uid, whether its
/// windows merge, and the per-window states the function declared (in this run's
/// backend).
#[derive(Clone)]
pub(super) struct FunctionStates {
    uid: String,
    merging: bool,
    per_window: Vec<(String, RawStateId)>,
    /// Marks the windows emptied while open ([`WINDOW_PURGED_STATE`]), when the operator
    /// needs it.
    purged: Option<ValueStateId<bool, TimeWindow>>,
    window_codec: CodecRef<TimeWindow>,
    void_codec: CodecRef<()>,
}

impl FunctionStates {
    fn new() -> Self {
        Self {
            uid: String::new(),
            merging: false,
            per_window: Vec::new(),
            purged: None,
            window_codec: window_codec(),
            void_codec: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    /// A configuration error of the operator: `what`.
    fn refuse(&self, what: String) -> RuntimeError {
        RuntimeError::Config(format!("window operator {}: {what}", self.uid))
    }

    /// A state registration's error, naming the operator (one contradicting the restored
    /// state is a restore error).
    fn registration(&self, e: cairn_core::StateError) -> RuntimeError {
        RuntimeError::state(&self.uid, e).registration()
    }

    /// Refuses a name that is the operator's.
    fn check_name(&self, name: &str) -> Result<()> {
        if name.starts_with(RESERVED_STATE_PREFIX) || OPERATOR_STATES.contains(&name) {
            return Err(self.refuse(format!(
                "the window function's state {name}: the name is the window operator's or \
                 the runtime's own, take another"
            )));
        }
        Ok(())
    }

    /// Refuses per-window state on merging windows, and a name that is the operator's.
    fn check_declaration(&self, name: &str) -> Result<()> {
        if self.merging {
            return Err(self.refuse(format!(
                "per-window state {name}: per-window state is not allowed when using merging \
                 windows (sessions), as in Flink; keep it per key (WindowContext::global_state)"
            )));
        }
        self.check_name(name)
    }

    /// Notes the declared state `name`, registered as `raw` (or not: the error).
    fn declared(&mut self, name: &str, raw: cairn_core::Result<RawStateId>) -> Result<()> {
        let raw = raw.map_err(|e| self.registration(e))?;
        if !self.per_window.iter().any(|(n, _)| n == name) {
            self.per_window.push((name.to_string(), raw));
        }
        Ok(())
    }

    /// Refuses a per-window state that is not declared (or on merging windows).
    fn check_window(&self, name: &str) -> Result<()> {
        self.check_declaration(name)?;
        if self.per_window.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        Err(self.refuse(format!(
            "per-window state {name} is not declared: declare it in \
             ProcessWindowFunction::open (states.value(&descriptor), ..) so that the operator \
             drops it when each window ends"
        )))
    }

    /// Refuses a per-key state named as the operator's or as a per-window state.
    fn check_global(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        if self.per_window.iter().any(|(n, _)| n == name) {
            return Err(self.refuse(format!(
                "state {name} is declared per window: a per-key state (global_state) needs \
                 another name"
            )));
        }
        Ok(())
    }
}

/// Whose window a window function is called for, and when: the key, and the operator's
/// watermark and processing clock at the call.
pub(super) struct At<'a, K> {
    pub(super) key: &'a K,
    watermark: Option<u64>,
    processing_time: u64,
}

impl<'a, K> At<'a, K> {
    /// `key` at the time `timers` read.
    pub(super) fn new(key: &'a K, timers: &TimerService) -> Self {
        Self {
            key,
            watermark: timers.current_watermark(),
            processing_time: timers.current_processing_time(),
        }
    }
}

/// A process window function as a window operator runs it: with its declared per-window
/// states, which it drops when a window ends.
#[derive(Clone)]
pub(super) struct Function<F> {
    f: F,
    states: FunctionStates,
}

impl<F> Function<F> {
    pub(super) fn new(f: F) -> Self {
        Self {
            f,
            states: FunctionStates::new(),
        }
    }

    /// Opens the function in `operator` over `backend`: it declares its per-window
    /// states.
    pub(super) fn open<K, T, O, B>(&mut self, backend: &mut B, operator: Operator<'_>) -> Result<()>
    where
        F: ProcessWindowFunction<K, T, O>,
        B: KeyedStateBackend,
    {
        let uid = operator.uid;
        let mut states = FunctionStates::new();
        states.uid = uid.to_string();
        states.merging = operator.merging;
        if operator.marks_purged {
            let d = ValueStateDescriptor::<bool>::new(WINDOW_PURGED_STATE)
                .with_namespace(states.window_codec.clone());
            let purged = backend
                .register_value(&d)
                .map_err(|e| states.registration(e))?;
            states.purged = Some(purged);
        }
        let metrics = operator
            .metrics
            .cloned()
            .unwrap_or_else(|| MetricGroup::unregistered(uid));
        let mut declare = WindowStates {
            backend,
            states: &mut states,
            metrics,
        };
        let opened = self.f.open(&mut declare).map_err(|e| named(e, uid));
        self.states = states;
        opened
    }

    /// `window`'s contents were emptied while it is open (purged, or evicted to
    /// nothing): marks it, so that it still ends with the function's `clear`.
    pub(super) fn keep_alive<B: KeyedStateBackend>(
        &self,
        backend: &mut B,
        window: &TimeWindow,
    ) -> Result<()> {
        match self.states.purged {
            Some(purged) => backend
                .value_update(purged, window, true)
                .map_err(|e| RuntimeError::state(&self.states.uid, e)),
            None => Ok(()),
        }
    }

    /// Calls the function for `window` of `at`'s key holding `elements`, its output
    /// stamped with the window's last millisecond.
    pub(super) fn process<K, T, O, B>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        elements: Vec<T>,
        out: &mut Collector<'_, O>,
    ) -> Result<()>
    where
        F: ProcessWindowFunction<K, T, O>,
        B: KeyedStateBackend,
    {
        out.set_timestamp(Some(window.max_timestamp()));
        let mut ctx = context(&self.states, backend, at, window);
        let called = self.f.process_with_context(at.key, elements, &mut ctx, out);
        let sides = std::mem::take(&mut ctx.sides);
        called.map_err(|e| named(e, &self.states.uid))?;
        flush(sides, window, out)
    }

    /// `window` of `at`'s key ends (its time is up): when it is one of the key's — it
    /// holds records (`held`), or was emptied while open — calls the function's `clear`,
    /// then drops the window's per-window states and mark. A timer's time may be the end
    /// of a window that the key does not have: nothing happens then.
    pub(super) fn clear<K, T, O, B>(
        &mut self,
        backend: &mut B,
        at: &At<'_, K>,
        window: &TimeWindow,
        held: bool,
        out: &mut Collector<'_, O>,
    ) -> Result<()>
    where
        F: ProcessWindowFunction<K, T, O>,
        B: KeyedStateBackend,
    {
        let uid = &self.states.uid;
        let purged = match self.states.purged {
            Some(purged) => backend
                .value_get(purged, window)
                .map_err(|e| RuntimeError::state(uid, e))?
                .is_some(),
            None => false,
        };
        if !(held || purged) {
            return Ok(());
        }
        let mut ctx = context(&self.states, backend, at, window);
        let called = self.f.clear(at.key, &mut ctx);
        let sides = std::mem::take(&mut ctx.sides);
        called.map_err(|e| named(e, &self.states.uid))?;
        flush(sides, window, out)?;
        let marks = self.states.purged.filter(|_| purged).map(|p| p.raw());
        for raw in self
            .states
            .per_window
            .iter()
            .map(|(_, raw)| *raw)
            .chain(marks)
        {
            backend
                .clear(raw, window)
                .map_err(|e| RuntimeError::state(&self.states.uid, e))?;
        }
        Ok(())
    }
}

/// The context of a call for `window` of `at`'s key.
fn context<'c, K, B, O>(
    states: &'c FunctionStates,
    backend: &'c mut B,
    at: &At<'_, K>,
    window: &TimeWindow,
) -> WindowContext<'c, B, O> {
    WindowContext {
        backend,
        states,
        window: *window,
        watermark: at.watermark,
        processing_time: at.processing_time,
        sides: Vec::new(),
    }
}

/// `e`, from the function of operator `uid`, with the operator named where it is not.
fn named(e: RuntimeError, uid: &str) -> RuntimeError {
    match e {
        RuntimeError::Config(m) if m == NEITHER => {
            RuntimeError::Config(format!("window operator {uid}: {m}"))
        }
        other => other.with_uid(uid),
    }
}

/// Emits the side-output records `sides` of `window` into `out`, with the window's last
/// millisecond as their timestamp.
fn flush<O>(sides: Vec<Pending<O>>, window: &TimeWindow, out: &mut Collector<'_, O>) -> Result<()> {
    if sides.is_empty() {
        return Ok(());
    }
    let previous = out.timestamp();
    out.set_timestamp(Some(window.max_timestamp()));
    let result = sides.into_iter().try_for_each(|push| push(out));
    out.set_timestamp(previous);
    result
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use cairn_core::{ManualClock, ValueStateDescriptor};

    use super::*;
    use crate::windows::evictors::Evictable;
    use crate::windows::tests::{Harness, LATE};
    use crate::windows::triggers::{CountTrigger, PurgingTrigger};
    use crate::windows::{
        window_codec, FnWindow, Process, TumblingEventTimeWindows, WindowOperator, WindowTrigger,
    };

    type Out = (u64, TimeWindow, u64);

    fn fires() -> ValueStateDescriptor<u64> {
        ValueStateDescriptor::new("fires")
    }

    fn total() -> ValueStateDescriptor<u64> {
        ValueStateDescriptor::new("total")
    }

    /// Counts its firings per window (`fires`, per window) and per key (`total`), emitting
    /// `(key, window, 1_000 × fires + total)`; its `clear` emits `1_000 × window start +
    /// fires` into the harness's side output (named [`LATE`]).
    #[derive(Clone)]
    struct Firings;

    impl ProcessWindowFunction<u64, u64, Out> for Firings {
        fn open<B: KeyedStateBackend>(&mut self, states: &mut WindowStates<'_, B>) -> Result<()> {
            states.value(&fires())
        }

        fn process_with_context<B: KeyedStateBackend>(
            &mut self,
            key: &u64,
            _elements: Vec<u64>,
            ctx: &mut WindowContext<'_, B, Out>,
            out: &mut Collector<'_, Out>,
        ) -> Result<()> {
            let mut fired = ctx.window_state().value(&fires())?;
            let n = fired.get()?.unwrap_or(0) + 1;
            fired.update(n)?;
            let mut all = ctx.global_state().value(&total())?;
            let t = all.get()?.unwrap_or(0) + 1;
            all.update(t)?;
            out.collect((*key, ctx.window(), 1_000 * n + t))
        }

        fn clear<B: KeyedStateBackend>(
            &mut self,
            _key: &u64,
            ctx: &mut WindowContext<'_, B, Out>,
        ) -> Result<()> {
            let n = ctx.window_state().value(&fires())?.get()?.unwrap_or(0);
            let start = ctx.window().start;
            ctx.output(&OutputTag::new(LATE), 1_000 * start + n)
        }
    }

    type Op<F> = WindowOperator<u64, u64, Evictable<Process<u64, Out, F>, u64>>;

    fn harness<F: ProcessWindowFunction<u64, u64, Out>>(
        f: F,
        lateness: u64,
        trigger: Option<WindowTrigger>,
    ) -> Harness<Op<F>> {
        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let op = WindowOperator::new(
            "fn",
            tumbling,
            Duration::from_millis(lateness),
            None,
            (trigger, None),
            Evictable::new(Process::new(f), None),
        );
        Harness::of(op, Arc::new(ManualClock::new(0)))
    }

    fn w(start: u64, end: u64) -> TimeWindow {
        TimeWindow { start, end }
    }

    impl<F: ProcessWindowFunction<u64, u64, Out>> Harness<Op<F>> {
        /// The key's `fires` in `window`.
        fn fires(&mut self, window: TimeWindow) -> Option<u64> {
            self.select_key();
            let d = fires().with_namespace(window_codec());
            let id = self.backend.register_value(&d).expect("register");
            self.backend.value_get(id, &window).expect("get")
        }

        /// Whether `window` is marked as emptied while open.
        fn purged(&mut self, window: TimeWindow) -> Option<bool> {
            self.select_key();
            let d = ValueStateDescriptor::<bool>::new(WINDOW_PURGED_STATE)
                .with_namespace(window_codec());
            let id = self.backend.register_value(&d).expect("register");
            self.backend.value_get(id, &window).expect("get")
        }
    }

    /// A count trigger fires a window every 2 records: its per-window count goes 1, 2 in
    /// each window, its per-key count on across windows; each window's `clear` comes once,
    /// at its cleanup time (end plus lateness), sees its count, and the count is gone
    /// after — also for a window whose last records never fired.
    #[test]
    fn firings_count_per_window_and_per_key_and_clear_ends_each_window_once() {
        let mut h = harness(Firings, 5, Some(CountTrigger::of(2)));
        for (v, t) in [(1, 1), (1, 2), (1, 3), (1, 4), (1, 12), (1, 13), (1, 5)] {
            h.process(v, Some(t));
        }
        assert_eq!(
            h.emitted(),
            vec![
                ((1, w(0, 10), 1_001), Some(9)),
                ((1, w(0, 10), 2_002), Some(9)),
                ((1, w(10, 20), 1_003), Some(19)),
            ]
        );
        assert_eq!((h.fires(w(0, 10)), h.fires(w(10, 20))), (Some(2), Some(1)));
        h.advance(13);
        assert_eq!(h.late(), vec![], "before the cleanup time 14");
        h.advance(14);
        assert_eq!(
            h.late(),
            vec![(2, Some(9))],
            "once, stamped with the window's end"
        );
        assert_eq!(h.fires(w(0, 10)), None, "dropped after its clear");
        assert_eq!(h.fires(w(10, 20)), Some(1));
        h.advance(u64::MAX);
        assert_eq!(h.late(), vec![(10_001, Some(19))]);
        assert_eq!(h.fires(w(10, 20)), None);
        assert_eq!(h.emitted(), vec![]);
    }

    /// With a lateness of one window, the timer at a window's end is also the cleanup
    /// time of the window before, which this key does not have: no `clear` for it.
    #[test]
    fn no_clear_for_a_window_the_key_does_not_have() {
        let mut h = harness(Firings, 10, None);
        h.process(1, Some(25));
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(20, 30), 1_001), Some(29))]);
        assert_eq!(h.late(), vec![(20_001, Some(29))], "[20, 30) only, once");
    }

    /// Under a purging trigger a window whose contents were purged is still the key's:
    /// its `clear` comes at its cleanup time. With a lateness of one window (a key's timer
    /// may then be the end of a window it does not have) the operator marks the window,
    /// and the mark goes with its states; without, its timers tell, and it needs none.
    #[test]
    fn a_purged_window_still_ends_with_clear() {
        for lateness in [0, 10] {
            let purging = Some(PurgingTrigger::of(CountTrigger::of(2)));
            let mut h = harness(Firings, lateness, purging);
            for t in [1, 2, 3, 4] {
                h.process(1, Some(t));
            }
            assert_eq!(
                h.emitted(),
                vec![
                    ((1, w(0, 10), 1_001), Some(9)),
                    ((1, w(0, 10), 2_002), Some(9))
                ]
            );
            assert_eq!(h.purged(w(0, 10)), (lateness > 0).then_some(true));
            h.advance(u64::MAX);
            assert_eq!(h.late(), vec![(2, Some(9))], "lateness {lateness}");
            assert_eq!((h.fires(w(0, 10)), h.purged(w(0, 10))), (None, None));
        }
    }

    /// A process function that does not declare its per-window state, or uses a name of
    /// the operator's, or a per-window name per key, fails naming the operator and the
    /// state.
    #[test]
    fn undeclared_reserved_and_doubly_used_states_are_refused() {
        #[derive(Clone)]
        struct Uses(&'static str, bool);

        impl ProcessWindowFunction<u64, u64, Out> for Uses {
            fn open<B: KeyedStateBackend>(
                &mut self,
                states: &mut WindowStates<'_, B>,
            ) -> Result<()> {
                states.value(&fires())
            }

            fn process_with_context<B: KeyedStateBackend>(
                &mut self,
                _: &u64,
                _: Vec<u64>,
                ctx: &mut WindowContext<'_, B, Out>,
                _: &mut Collector<'_, Out>,
            ) -> Result<()> {
                let d = ValueStateDescriptor::<u64>::new(self.0);
                match self.1 {
                    true => ctx.window_state().value(&d)?.update(1)?,
                    false => ctx.global_state().value(&d)?.update(1)?,
                }
                Ok(())
            }
        }

        let cases = [
            (
                Uses("other", true),
                "per-window state other is not declared",
            ),
            (Uses("fires", false), "state fires is declared per window"),
            (
                Uses(WINDOW_CONTENTS_STATE, false),
                "state window-contents: the name",
            ),
            (Uses("cairn.x", false), "state cairn.x: the name"),
        ];
        for (f, message) in cases {
            let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
            let mut op: Op<Uses> = WindowOperator::new(
                "fn",
                tumbling,
                Duration::ZERO,
                None,
                (None, None),
                Evictable::new(Process::new(f), None),
            );
            let mut backend = test_backend();
            let state = crate::KeyedProcessFunction::open(&mut op, &mut backend).expect("open");
            select_key_1(&mut backend);
            let err = fire_once(&mut op, &state, &mut backend).expect_err("refused");
            let text = err.to_string();
            assert!(
                matches!(err, RuntimeError::Config(_))
                    && text.contains("window operator fn:")
                    && text.contains(message),
                "{text}"
            );
        }
    }

    /// A function that implements neither `process` nor `process_with_context` fails at
    /// its first firing, naming the operator.
    #[test]
    fn a_function_implementing_neither_process_fails_naming_the_operator() {
        #[derive(Clone)]
        struct Nothing;
        impl ProcessWindowFunction<u64, u64, Out> for Nothing {}

        let tumbling = TumblingEventTimeWindows::of(Duration::from_millis(10));
        let mut op: Op<Nothing> = WindowOperator::new(
            "fn",
            tumbling,
            Duration::ZERO,
            None,
            (None, None),
            Evictable::new(Process::new(Nothing), None),
        );
        let mut backend = test_backend();
        let state = crate::KeyedProcessFunction::open(&mut op, &mut backend).expect("open");
        select_key_1(&mut backend);
        let err = fire_once(&mut op, &state, &mut backend).expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!("invalid job: window operator fn: {NEITHER}")
        );
    }

    /// The plain closure form still works, and its output has the window's end.
    #[test]
    fn fn_window_still_works() {
        let sum = FnWindow(
            |k: &u64, w: TimeWindow, v: Vec<u64>, out: &mut Collector<'_, Out>| {
                out.collect((*k, w, v.iter().sum()))
            },
        );
        let mut h = harness(sum, 0, None);
        h.process(3, Some(1));
        h.process(4, Some(2));
        h.advance(u64::MAX);
        assert_eq!(h.emitted(), vec![((1, w(0, 10), 7), Some(9))]);
        assert_eq!(h.late(), vec![]);
    }

    /// A hashmap backend of `u64` keys, key 1 current.
    fn test_backend() -> cairn_hashmap::HashMapBackend {
        use cairn_core::Codec;
        cairn_hashmap::HashMapBackend::new(cairn_hashmap::HashMapConfig {
            uid: "fn".into(),
            max_parallelism: 128,
            key_group_range: cairn_core::KeyGroupRange::new(0, 127),
            key_codec: BincodeCodec::<u64>::new().identity().clone(),
        })
        .expect("backend")
    }

    fn select_key_1(backend: &mut cairn_hashmap::HashMapBackend) {
        use cairn_core::Codec;
        let key = BincodeCodec::<u64>::new().encode_to_vec(&1).expect("key");
        backend.set_current_key(&key).expect("key");
    }

    /// Adds a record at time 1 and fires its window (the watermark passes 9), with no
    /// side outputs.
    fn fire_once<F: ProcessWindowFunction<u64, u64, Out>>(
        op: &mut Op<F>,
        state: &<Op<F> as crate::KeyedProcessFunction>::State,
        backend: &mut cairn_hashmap::HashMapBackend,
    ) -> Result<()> {
        use crate::KeyedProcessFunction;
        let mut emitted = crate::chain::Recorder::<Out>::new();
        let clock = crate::timers::ProcessingClock::new(Arc::new(ManualClock::new(0)));
        let mut timers = crate::timers::Timers::new(clock);
        let mut out = Collector::new(&mut emitted, Some(1));
        op.process(state, &1, 1, backend, timers.service(), &mut out)?;
        timers.advance_watermark(9);
        let timer = crate::timers::Timer {
            time: 9,
            domain: crate::timers::TimeDomain::EventTime,
        };
        let mut out = Collector::new(&mut emitted, Some(9));
        op.on_timer(state, &1, timer, backend, timers.service(), &mut out)
    }
}
