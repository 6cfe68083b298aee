//! The broadcast state pattern (Flink's `broadcast(descriptor)`, `BroadcastProcessFunction`
//! and `KeyedBroadcastProcessFunction`): a low-volume stream (rules, configuration) goes to
//! every subtask of an operator that also reads a main stream, and each subtask keeps what
//! it says in **broadcast state**, maps that are the same on every subtask.
//!
//! `rules.broadcast()` makes a [`BroadcastStream`]; `events.connect_broadcast(rules)` (or
//! `events.key_by(..).connect(rules)`) feeds both to one function, whose
//! `process_broadcast` sees every broadcast record on every subtask and may change the
//! broadcast state, and whose `process` sees the main stream's records (by key, with keyed
//! state and timers, when keyed) and only reads it. Updates must be deterministic, so
//! every subtask's copy stays the same: Flink's rule too.
//!
//! Checkpoints: barriers align over both inputs, so with aligned checkpoints every
//! subtask's copy holds the same broadcast records. Each subtask stores its copy (union
//! operator state `cairn.broadcast`, entries tagged by subtask); a restore at the same
//! parallelism takes each subtask's own copy (so in-flight records of an unaligned
//! checkpoint replay onto the state they were overtaken on), and at another parallelism
//! new subtask `i` takes old subtask `i mod old parallelism`'s. In-flight records of a
//! broadcast connection restore only at its old parallelism (a broadcast record in flight
//! to one old subtask is not in flight to the others): rescale from a savepoint or an
//! aligned checkpoint.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use cairn_core::{
    BincodeCodec, Codec, CodecIdentity, CodecRef, Compatibility, KeyedStateBackend,
    OperatorListStateDescriptor, RawStateId,
};
use serde::{Deserialize, Serialize};

use crate::connect::Either;
use crate::error::{Result, RuntimeError};
use crate::function::{
    Checkpointed, Collector, Data, InitContext, Key, KeyedProcessFunction, ProcessFunction,
    SnapshotContext,
};
use crate::graph::{KeyedStream, Stream};
use crate::timers::{Timer, TimerService};

/// The operator state that holds every subtask's copy of its broadcast state.
pub const BROADCAST_STATE: &str = "cairn.broadcast";

/// A stream whose records go to every subtask of the operator that reads it; see
/// [`crate::broadcast`].
pub struct BroadcastStream<B> {
    pub(crate) stream: Stream<B>,
}

impl<B> std::fmt::Debug for BroadcastStream<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastStream")
            .field("stream", &self.stream)
            .finish()
    }
}

/// The name and codecs of one map of broadcast state.
pub struct BroadcastStateDescriptor<K, V> {
    name: String,
    key: CodecRef<K>,
    value: CodecRef<V>,
}

impl<K, V> Clone for BroadcastStateDescriptor<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
        }
    }
}

impl<K: 'static, V: 'static> std::fmt::Debug for BroadcastStateDescriptor<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastStateDescriptor")
            .field("name", &self.name)
            .field("key", self.key.identity())
            .field("value", self.value.identity())
            .finish()
    }
}

impl<K: Data + Ord, V: Data> BroadcastStateDescriptor<K, V> {
    /// A map of broadcast state named `name` (unique among the operator's), with bincode
    /// codecs.
    pub fn new(name: &str) -> Self {
        Self::with_codecs(name, BincodeCodec::<K>::new(), BincodeCodec::<V>::new())
    }

    /// A map of broadcast state whose keys and values these codecs encode: e.g. an
    /// [`cairn_core::EvolvingCodec`] that reads what an older program stored (state schema
    /// evolution; both keys and values may migrate, since the map is kept typed).
    pub fn with_codecs(name: &str, key: impl Codec<K>, value: impl Codec<V>) -> Self {
        Self {
            name: name.to_string(),
            key: Arc::new(key),
            value: Arc::new(value),
        }
    }
}

/// One element of a subtask's stored copy.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredEntry {
    subtask: u32,
    /// The map (empty for [`Stored::Copy`]).
    state: String,
    item: Stored,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Stored {
    /// The subtask stored a copy (which may be empty).
    Copy,
    /// The map's key and value types.
    Types(Box<Types>),
    /// One entry of the map, encoded.
    Entry(Vec<u8>, Vec<u8>),
}

/// A map's key and value codecs, compared when it is registered after a restore.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Types {
    key: CodecIdentity,
    value: CodecIdentity,
}

/// A map's entries, encoded (key, value).
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A restored map, until the function registers it.
#[derive(Default)]
struct RestoredMap {
    types: Option<Types>,
    entries: Entries,
}

/// A map of broadcast state with its types erased.
trait ErasedMap: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn types(&self) -> Types;
    /// Its entries, encoded.
    fn encode(&self) -> Result<Entries>;
}

/// A registered map with its descriptor's codecs.
struct TypedMap<K, V> {
    map: BTreeMap<K, V>,
    key: CodecRef<K>,
    value: CodecRef<V>,
}

impl<K: Data + Ord, V: Data> ErasedMap for TypedMap<K, V> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn types(&self) -> Types {
        Types {
            key: self.key.identity().clone(),
            value: self.value.identity().clone(),
        }
    }
    fn encode(&self) -> Result<Entries> {
        let mut out = Vec::with_capacity(self.map.len());
        for (k, v) in &self.map {
            let k = self
                .key
                .encode_to_vec(k)
                .map_err(|e| RuntimeError::Config(format!("broadcast state key: {e}")))?;
            let v = self
                .value
                .encode_to_vec(v)
                .map_err(|e| RuntimeError::Config(format!("broadcast state value: {e}")))?;
            out.push((k, v));
        }
        Ok(out)
    }
}

/// A subtask's broadcast state: maps registered by the function's `open`, restored from
/// the snapshot the job started from. A function's `process_broadcast` may change them;
/// `process` reads them.
#[derive(Default)]
pub struct BroadcastState {
    /// The operator (for errors).
    uid: String,
    maps: Vec<(String, Box<dyn ErasedMap>)>,
    /// Restored maps by name, until they are registered.
    restored: BTreeMap<String, RestoredMap>,
}

impl std::fmt::Debug for BroadcastState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastState")
            .field(
                "maps",
                &self.maps.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl BroadcastState {
    /// Registers map `d` (once, in `open`), with its restored entries, decoded by the
    /// descriptor's codecs from what the snapshot stored ([`Codec::decode_from`]: a codec
    /// may read an older schema and convert it). A map stored with keys or values the
    /// codecs do not read is refused, naming both; so is a restored entry that does not
    /// decode or convert (which entry).
    pub fn register<K: Data + Ord, V: Data>(
        &mut self,
        d: &BroadcastStateDescriptor<K, V>,
    ) -> Result<()> {
        if self.maps.iter().any(|(n, _)| *n == d.name) {
            return Err(self.error(&d.name, "is registered twice"));
        }
        let restore_error = |reason: String| RuntimeError::Restore {
            reason: format!(
                "broadcast state {} of operator {}: {reason}",
                d.name, self.uid
            ),
        };
        let stored = self
            .restored
            .get(&d.name)
            .and_then(|r| r.types.clone())
            .unwrap_or_else(|| Types {
                key: d.key.identity().clone(),
                value: d.value.identity().clone(),
            });
        if d.key.compatibility(&stored.key) == Compatibility::Incompatible
            || d.value.compatibility(&stored.value) == Compatibility::Incompatible
        {
            return Err(restore_error(format!(
                "stored with keys {} and values {} but registered with keys {} and values {}",
                stored.key,
                stored.value,
                d.key.identity(),
                d.value.identity()
            )));
        }
        let mut map = BTreeMap::new();
        if let Some(restored) = self.restored.get(&d.name) {
            for (i, (k, v)) in restored.entries.iter().enumerate() {
                let k = d
                    .key
                    .decode_from(&stored.key, k)
                    .map_err(|e| restore_error(format!("restored entry {i}: key: {e}")))?;
                let v = d
                    .value
                    .decode_from(&stored.value, v)
                    .map_err(|e| restore_error(format!("restored entry {i}: value: {e}")))?;
                map.insert(k, v);
            }
        }
        // Taken out only now: a registration that failed leaves the restored map to later
        // snapshots as it was.
        self.restored.remove(&d.name);
        self.maps.push((
            d.name.clone(),
            Box::new(TypedMap {
                map,
                key: d.key.clone(),
                value: d.value.clone(),
            }),
        ));
        Ok(())
    }

    /// Map `d`, to read.
    pub fn get<K: Data + Ord, V: Data>(
        &self,
        d: &BroadcastStateDescriptor<K, V>,
    ) -> Result<&BTreeMap<K, V>> {
        let (_, map) = self
            .maps
            .iter()
            .find(|(n, _)| *n == d.name)
            .ok_or_else(|| self.error(&d.name, "is not registered (register it in open)"))?;
        map.as_any()
            .downcast_ref::<TypedMap<K, V>>()
            .map(|t| &t.map)
            .ok_or_else(|| self.error(&d.name, "is registered with other types"))
    }

    /// Map `d`, to change (in `process_broadcast`).
    pub fn get_mut<K: Data + Ord, V: Data>(
        &mut self,
        d: &BroadcastStateDescriptor<K, V>,
    ) -> Result<&mut BTreeMap<K, V>> {
        let Some(index) = self.maps.iter().position(|(n, _)| *n == d.name) else {
            return Err(self.error(&d.name, "is not registered (register it in open)"));
        };
        let Self { uid, maps, .. } = self;
        match maps[index].1.as_any_mut().downcast_mut::<TypedMap<K, V>>() {
            Some(t) => Ok(&mut t.map),
            None => Err(RuntimeError::User {
                uid: uid.clone(),
                message: format!("broadcast state {} is registered with other types", d.name),
            }),
        }
    }

    fn error(&self, state: &str, reason: &str) -> RuntimeError {
        RuntimeError::User {
            uid: self.uid.clone(),
            message: format!("broadcast state {state} {reason}"),
        }
    }

    /// Takes this subtask's copy from the restored operator state (see the module's
    /// rules) and registers the operator state it is stored in.
    fn initialize(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.uid = ctx.operator_state.uid().to_string();
        let id =
            ctx.operator_state.register_reserved_list(
                &OperatorListStateDescriptor::<StoredEntry>::union(BROADCAST_STATE),
            )?;
        let stored = std::mem::take(ctx.operator_state.list(id)?);
        let mut copies: Vec<u32> = stored.iter().map(|e| e.subtask).collect();
        copies.sort_unstable();
        copies.dedup();
        let me = ctx.subtask.index;
        let from = if copies.len() == ctx.subtask.parallelism as usize {
            Some(me)
        } else {
            copies.get(me as usize % copies.len().max(1)).copied()
        };
        for e in stored.into_iter().filter(|e| Some(e.subtask) == from) {
            match e.item {
                Stored::Copy => {}
                Stored::Types(types) => {
                    self.restored.entry(e.state).or_default().types = Some(*types);
                }
                Stored::Entry(k, v) => self
                    .restored
                    .entry(e.state)
                    .or_default()
                    .entries
                    .push((k, v)),
            }
        }
        Ok(())
    }

    /// Stores this subtask's copy (`subtask`) in the operator state: the mark, then per
    /// map its types and entries.
    fn snapshot(&self, ctx: &mut SnapshotContext<'_>, subtask: u32) -> Result<()> {
        let id =
            ctx.operator_state.register_reserved_list(
                &OperatorListStateDescriptor::<StoredEntry>::union(BROADCAST_STATE),
            )?;
        let element = |state: &str, item: Stored| StoredEntry {
            subtask,
            state: state.to_string(),
            item,
        };
        let mut stored = vec![element("", Stored::Copy)];
        for (state, map) in &self.maps {
            stored.push(element(state, Stored::Types(Box::new(map.types()))));
            for (k, v) in map.encode()? {
                stored.push(element(state, Stored::Entry(k, v)));
            }
        }
        // Restored maps the function no longer registers are kept as they were.
        for (state, map) in &self.restored {
            if let Some(types) = &map.types {
                stored.push(element(state, Stored::Types(Box::new(types.clone()))));
            }
            for (k, v) in &map.entries {
                stored.push(element(state, Stored::Entry(k.clone(), v.clone())));
            }
        }
        *ctx.operator_state.list(id)? = stored;
        Ok(())
    }
}

/// The keyed state of every key of a subtask, as a keyed broadcast function's
/// `process_broadcast` reaches it (Flink's `Context.applyToKeyedState`).
pub struct KeyedStates<'a, S, K> {
    backend: &'a mut S,
    /// The operator (for errors).
    uid: String,
    _k: PhantomData<fn() -> K>,
}

impl<S, K> std::fmt::Debug for KeyedStates<'_, S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStates")
            .field("uid", &self.uid)
            .finish()
    }
}

impl<S: KeyedStateBackend, K: Key> KeyedStates<'_, S, K> {
    /// Runs `f` for every key of this subtask that has an entry in `state` (in the
    /// default namespace `()`; take its id's `raw()`), with that key current in the
    /// backend, so `f` may read, change or clear any of the key's states.
    pub fn apply_to_keyed_state(
        &mut self,
        state: RawStateId,
        mut f: impl FnMut(&K, &mut S) -> Result<()>,
    ) -> Result<()> {
        let codec = BincodeCodec::<K>::new();
        let keys = self
            .backend
            .keys(state, &())
            .map_err(|e| RuntimeError::state(&self.uid, e))?;
        for bytes in keys {
            let key = codec.decode(&bytes).map_err(|e| {
                RuntimeError::user(&self.uid, format!("a key of the keyed state: {e}"))
            })?;
            self.backend
                .set_current_key(&bytes)
                .map_err(|e| RuntimeError::state(&self.uid, e))?;
            f(&key, self.backend)?;
        }
        Ok(())
    }
}

/// A function of a main stream and a broadcast stream (Flink's `BroadcastProcessFunction`).
pub trait BroadcastProcessFunction<In, Bc, Out>: Checkpointed + Clone + Send + 'static {
    /// Registers the broadcast state's maps (restored entries are in them). Runs once per
    /// instance, after [`Checkpointed::initialize_state`].
    fn open(&mut self, broadcast: &mut BroadcastState) -> Result<()>;
    /// Processes one record of the main stream; the broadcast state is read-only here.
    fn process(
        &mut self,
        input: In,
        broadcast: &BroadcastState,
        out: &mut Collector<'_, Out>,
    ) -> Result<()>;
    /// Processes one broadcast record (every subtask gets each).
    fn process_broadcast(
        &mut self,
        input: Bc,
        broadcast: &mut BroadcastState,
        out: &mut Collector<'_, Out>,
    ) -> Result<()>;
}

/// A function of a keyed stream and a broadcast stream (Flink's
/// `KeyedBroadcastProcessFunction`): keyed state and timers for the keyed records,
/// broadcast state for all.
pub trait KeyedBroadcastProcessFunction: Checkpointed + Clone + Send + 'static {
    /// The key type of the keyed stream.
    type Key: Key;
    /// Records of the keyed stream.
    type In: Data;
    /// Records of the broadcast stream.
    type Broadcast: Data;
    /// Output records.
    type Out: Data;
    /// Handles to registered keyed states.
    type State: Send + 'static;
    /// Registers the keyed states and the broadcast state's maps (restored entries are in
    /// them), as [`KeyedProcessFunction::open`].
    fn open<S: KeyedStateBackend>(
        &mut self,
        backend: &mut S,
        broadcast: &mut BroadcastState,
    ) -> Result<Self::State>;
    /// Processes one record of `key`; the broadcast state is read-only here.
    #[allow(clippy::too_many_arguments)]
    fn process<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        input: Self::In,
        broadcast: &BroadcastState,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
    /// Processes one broadcast record (every subtask gets each), with no current key;
    /// `keyed` reaches the keyed state of every key of this subtask (Flink's
    /// `applyToKeyedState`).
    fn process_broadcast<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        input: Self::Broadcast,
        broadcast: &mut BroadcastState,
        keyed: &mut KeyedStates<'_, S, Self::Key>,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()>;
    /// A timer of `key` fired, as [`KeyedProcessFunction::on_timer`]. The default does
    /// nothing.
    #[allow(clippy::too_many_arguments)]
    fn on_timer<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &Self::Key,
        timer: Timer,
        broadcast: &BroadcastState,
        backend: &mut S,
        timers: &mut TimerService,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        let _ = (state, key, timer, broadcast, backend, timers, out);
        Ok(())
    }
}

/// A stream connected with a broadcast stream; see [`Stream::connect_broadcast`].
pub struct BroadcastConnectedStreams<A, B> {
    pub(crate) stream: Stream<Either<A, B>>,
}

impl<A, B> std::fmt::Debug for BroadcastConnectedStreams<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastConnectedStreams")
            .finish_non_exhaustive()
    }
}

impl<A: Data, B: Data> BroadcastConnectedStreams<A, B> {
    /// Sets the parallelism of the operator's stage.
    pub fn parallelism(self, p: u32) -> Self {
        Self {
            stream: self.stream.parallelism(p),
        }
    }

    /// Reads both with `f`, an operator with uid `uid` (the main stream's records are
    /// dealt round-robin among its subtasks; every subtask gets every broadcast record).
    pub fn process<Out: Data, F: BroadcastProcessFunction<A, B, Out>>(
        self,
        uid: &str,
        f: F,
    ) -> Stream<Out> {
        let f = WithBroadcast {
            f,
            broadcast: BroadcastState::default(),
            subtask: 0,
            _t: PhantomData,
        };
        self.stream.process(uid, f)
    }
}

/// A keyed stream connected with a broadcast stream; see [`KeyedStream::connect`].
pub struct KeyedBroadcastConnectedStreams<K, A, B> {
    pub(crate) stream: Stream<(Option<K>, Either<A, B>)>,
}

impl<K, A, B> std::fmt::Debug for KeyedBroadcastConnectedStreams<K, A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedBroadcastConnectedStreams")
            .finish_non_exhaustive()
    }
}

impl<K: Key, A: Data, B: Data> KeyedBroadcastConnectedStreams<K, A, B> {
    /// Sets the parallelism of the operator's stage.
    pub fn parallelism(self, p: u32) -> Self {
        Self {
            stream: self.stream.parallelism(p),
        }
    }

    /// Reads both with `f`, a keyed operator with uid `uid`.
    pub fn process<F>(self, uid: &str, f: F) -> Stream<F::Out>
    where
        F: KeyedBroadcastProcessFunction<Key = K, In = A, Broadcast = B>,
    {
        let f = KeyedWithBroadcast {
            f,
            broadcast: BroadcastState::default(),
            subtask: 0,
        };
        self.stream.keyed_maybe(uid, f)
    }
}

impl<K: Key, T: Data> KeyedStream<K, T> {
    /// Connects this keyed stream with a broadcast stream (Flink's
    /// `keyBy(..).connect(broadcastStream)`), for a [`KeyedBroadcastProcessFunction`].
    pub fn connect<B: Data>(
        self,
        other: BroadcastStream<B>,
    ) -> KeyedBroadcastConnectedStreams<K, T, B> {
        KeyedBroadcastConnectedStreams {
            stream: self.join_broadcast(other),
        }
    }
}

/// Checkpoint hooks of a function with broadcast state: the state first, then the
/// function's own, then `$open` (with the wrapper as `$s`).
macro_rules! checkpointed_with_broadcast {
    ($ty:ty, [$($g:tt)*], where [$($w:tt)*], |$s:ident| $open:expr) => {
        impl<$($g)*> Checkpointed for $ty where $($w)* {
            fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
                self.subtask = ctx.subtask.index;
                self.broadcast.initialize(ctx)?;
                self.f.initialize_state(ctx)?;
                let $s = self;
                $open
            }
            fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
                self.broadcast.snapshot(ctx, self.subtask)?;
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

/// A [`BroadcastProcessFunction`] with its broadcast state, as the function of the
/// connection's records.
struct WithBroadcast<F, A, B, Out> {
    f: F,
    broadcast: BroadcastState,
    subtask: u32,
    _t: PhantomData<fn(A, B) -> Out>,
}

/// A clone starts with empty broadcast state: operators are cloned from their prototype
/// before they are initialized.
impl<F: Clone, A, B, Out> Clone for WithBroadcast<F, A, B, Out> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            broadcast: BroadcastState::default(),
            subtask: self.subtask,
            _t: PhantomData,
        }
    }
}

// A non-keyed function has no `open` of its own: its broadcast state's maps are
// registered after `initialize_state`.
checkpointed_with_broadcast!(
    WithBroadcast<F, A, B, Out>,
    [F, A, B, Out],
    where [F: BroadcastProcessFunction<A, B, Out>],
    |s| s.f.open(&mut s.broadcast)
);

impl<A: Data, B: Data, Out: 'static, F> ProcessFunction<Either<A, B>, Out>
    for WithBroadcast<F, A, B, Out>
where
    F: BroadcastProcessFunction<A, B, Out>,
{
    fn process(&mut self, input: Either<A, B>, out: &mut Collector<'_, Out>) -> Result<()> {
        match input {
            Either::Left(a) => self.f.process(a, &self.broadcast, out),
            Either::Right(b) => self.f.process_broadcast(b, &mut self.broadcast, out),
        }
    }
}

/// A [`KeyedBroadcastProcessFunction`] with its broadcast state, as the keyed function of
/// the connection's records (the broadcast ones come without a key).
struct KeyedWithBroadcast<F> {
    f: F,
    broadcast: BroadcastState,
    subtask: u32,
}

/// A clone starts with empty broadcast state, as [`WithBroadcast`]'s.
impl<F: Clone> Clone for KeyedWithBroadcast<F> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            broadcast: BroadcastState::default(),
            subtask: self.subtask,
        }
    }
}

checkpointed_with_broadcast!(KeyedWithBroadcast<F>, [F], where [F: Checkpointed], |_s| Ok(()));

impl<F: KeyedBroadcastProcessFunction> KeyedProcessFunction for KeyedWithBroadcast<F> {
    type Key = F::Key;
    type In = Either<F::In, F::Broadcast>;
    type Out = F::Out;
    type State = F::State;

    fn open<S: KeyedStateBackend>(&mut self, backend: &mut S) -> Result<Self::State> {
        self.f.open(backend, &mut self.broadcast)
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
            Either::Left(a) => self
                .f
                .process(state, key, a, &self.broadcast, backend, timers, out),
            Either::Right(_) => Err(RuntimeError::Config(
                "a broadcast record came with a key".into(),
            )),
        }
    }

    fn process_unkeyed<S: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        input: Self::In,
        backend: &mut S,
        out: &mut Collector<'_, Self::Out>,
    ) -> Result<()> {
        match input {
            Either::Right(b) => {
                let mut keyed = KeyedStates {
                    backend,
                    uid: self.broadcast.uid.clone(),
                    _k: PhantomData,
                };
                self.f
                    .process_broadcast(state, b, &mut self.broadcast, &mut keyed, out)
            }
            Either::Left(_) => Err(RuntimeError::Config(
                "a record of the keyed input came without a key".into(),
            )),
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
        self.f
            .on_timer(state, key, timer, &self.broadcast, backend, timers, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_core::EvolvingCodec;

    /// A subtask's state as restored from a snapshot of an older program that kept
    /// `u64` weights by rule name.
    fn restored_v1() -> BroadcastState {
        let (k, v) = (BincodeCodec::<String>::new(), BincodeCodec::<u64>::new());
        let entries = [("r1", 1u64), ("r2", 2)]
            .iter()
            .map(|(r, w)| {
                (
                    k.encode_to_vec(&r.to_string()).unwrap(),
                    v.encode_to_vec(w).unwrap(),
                )
            })
            .collect();
        let mut state = BroadcastState {
            uid: "rules".into(),
            ..BroadcastState::default()
        };
        state.restored.insert(
            "weights".into(),
            RestoredMap {
                types: Some(Types {
                    key: k.identity().clone(),
                    value: v.identity().clone(),
                }),
                entries,
            },
        );
        state
    }

    fn weights_v2() -> BroadcastStateDescriptor<String, (u64, bool)> {
        BroadcastStateDescriptor::with_codecs(
            "weights",
            BincodeCodec::<String>::new(),
            EvolvingCodec::new(BincodeCodec::<(u64, bool)>::named("Weight", 2))
                .migrates_from(BincodeCodec::<u64>::new(), |w: u64| (w, w > 1)),
        )
    }

    #[test]
    fn restored_maps_migrate_to_the_registered_codecs_and_store_the_new_schema() {
        let mut state = restored_v1();
        state.register(&weights_v2()).unwrap();
        let map = state.get(&weights_v2()).unwrap();
        assert_eq!(
            map.iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect::<Vec<_>>(),
            [("r1", (1, false)), ("r2", (2, true))]
        );
        // What the next snapshot stores: the new identity and the new encoding.
        let (_, erased) = &state.maps[0];
        assert_eq!(erased.types().value.type_name, "Weight");
        let v2 = BincodeCodec::<(u64, bool)>::named("Weight", 2);
        let encoded = erased.encode().unwrap();
        assert_eq!(v2.decode(&encoded[1].1).unwrap(), (2, true));
    }

    #[test]
    fn an_unreadable_map_is_refused_naming_both_schemas_and_kept() {
        let mut state = restored_v1();
        let plain = BroadcastStateDescriptor::<String, (u64, bool)>::new("weights");
        let e = state.register(&plain).unwrap_err().to_string();
        assert!(e.contains("u64@v1") && e.contains("(u64, bool)@v1"), "{e}");
        assert!(e.contains("operator rules"), "{e}");
        assert!(
            state.restored.contains_key("weights"),
            "kept for later snapshots"
        );
        // A conversion that fails names the entry, and the map is kept too.
        let refusing = BroadcastStateDescriptor::<String, u64>::with_codecs(
            "weights",
            BincodeCodec::<String>::new(),
            EvolvingCodec::new(BincodeCodec::<u64>::named("Weight", 2)).try_migrates_from(
                BincodeCodec::<u64>::new(),
                |w: u64| if w == 2 { Err("two".into()) } else { Ok(w) },
            ),
        );
        let e = state.register(&refusing).unwrap_err().to_string();
        assert!(e.contains("restored entry 1") && e.contains("two"), "{e}");
        assert!(state.restored.contains_key("weights"));
    }
}
