//! State time-to-live: keyed state whose entries expire a fixed time after they were last
//! written (or read), as Flink's `StateTtlConfig` does.
//!
//! A state with a TTL stores each value beside the time it was last written, in
//! milliseconds, as a [`TtlValue`]; list elements and map entries carry one each. The
//! wrapping happens above the backend: [`TtlStateAccess`] registers an ordinary state whose
//! values are `TtlValue<V>` (encoded by [`TtlCodec`]), so every backend, snapshot kind and
//! restore path handles TTL state as it handles any other, and a savepoint of it restores
//! under the other backend or at another parallelism with its timestamps.
//!
//! Semantics, with Flink's names and defaults:
//!
//! - **Expiry.** An entry written at `t` is expired from `t + ttl` on (processing time from the
//!   config's [`TtlClock`]). The duration is the program's setting, not stored: a program
//!   restored with another duration applies it to the stored timestamps at once.
//! - **Update type** ([`TtlUpdate`]): timestamps are refreshed when an entry is created or
//!   written (`OnCreateAndWrite`, the default), or also when it is read (`OnReadAndWrite`).
//!   Adding to a reducing or aggregating state is a write; so is `ListState::add`, which
//!   stamps only the added element.
//! - **Visibility** ([`TtlVisibility`]): an expired entry is never returned
//!   (`NeverReturnExpired`, the default), or returned by the one read that finds it
//!   (`ReturnExpiredIfNotCleanedUp`).
//! - **Cleanup.** A read that finds an expired entry removes it (a list keeps its unexpired
//!   elements). Entries that are never read again are dropped by the backend in the
//!   background, where it can ([`KeyedStateBackend::enable_ttl_cleanup`]): the heap backend
//!   sweeps a few entries per state access, RocksDB drops them in compactions. Until then
//!   they stay in the state and its snapshots; reads never return them.
//! - **Compatibility.** The stored encoding says whether a state has a TTL (the encoding
//!   name gets the prefix [`TTL_ENCODING_PREFIX`]): a program that enables or disables the
//!   TTL of a restored state gets [`StateError::IncompatibleCodec`] naming both sides, as
//!   Flink refuses such a restore. Keys, namespaces and map keys are never wrapped.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use cairn_core::{ManualClock, StateTtlConfig, ValueStateDescriptor};
//!
//! let clock = Arc::new(ManualClock::new(1_000));
//! let ttl = StateTtlConfig::new(Duration::from_secs(60)).with_clock(clock.clone());
//! let last_seen = ValueStateDescriptor::<u64>::new("last_seen");
//! // In an operator's `open`: let id = backend.register_value_with_ttl(&last_seen, &ttl)?;
//! // and per record:           backend.ttl_value(&id).update(now)?;
//! # let _ = (last_seen, ttl);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::KeyedStateBackend;
use crate::codec::{Codec, CodecError, CodecIdentity, Compatibility};
use crate::error::{Result, StateError};
use crate::state::*;

/// The prefix of a TTL state's value encoding: `cairn-ttl1+<the value codec's encoding>`
/// (`format-spec/README.md`, "Values of states with a TTL").
pub const TTL_ENCODING_PREFIX: &str = "cairn-ttl1+";

/// Bytes of the timestamp in front of every encoded TTL value.
const TIMESTAMP_BYTES: usize = 8;

/// A source of processing time for TTL, in milliseconds.
///
/// TTL is processing time, as in Flink: the background cleanup (the heap backend's sweep,
/// RocksDB's compaction filter) reads the clock whenever it runs, so a clock must not go
/// back, or the cleanup may drop an entry that a read at an earlier time would still find
/// live. A clock driven by the records' own times (for tests, or event time) is sound only
/// where each backend instance sees them in order. A clock kept in a process function is
/// shared by every subtask the runtime clones the function into; give each subtask its
/// own (made in `open`).
pub trait TtlClock: Send + Sync + 'static {
    /// The current time in milliseconds (since the Unix epoch for [`SystemClock`]).
    fn now_ms(&self) -> u64;
}

/// The system's wall clock, the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl TtlClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to (tests, simulations, replays).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }
    /// Sets the time.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::Relaxed);
    }
    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_add(ms))
            });
    }
}

impl TtlClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// When an entry's timestamp is refreshed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TtlUpdate {
    /// When it is created or written (the default).
    #[default]
    OnCreateAndWrite,
    /// Also when it is read.
    OnReadAndWrite,
}

/// Whether a read returns an expired entry that is still stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TtlVisibility {
    /// Never (the default).
    #[default]
    NeverReturnExpired,
    /// Once: the read that finds it returns it and removes it.
    ReturnExpiredIfNotCleanedUp,
}

/// How the heap backend's background cleanup of a state with a TTL goes (Flink's
/// `cleanupIncrementally(cleanupSize, runCleanupForEveryRecord)`): each access to the state
/// looks at about `entries` more entries of it for expired ones, and with `every_record`
/// so does every record (each new current key), whatever states it accesses. Zero
/// `entries` turns the cleanup off. Other backends have their own cleanup (RocksDB: in
/// compactions) and ignore this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IncrementalCleanup {
    /// Entries looked at per access (Flink's `cleanupSize`; default 5).
    pub entries: usize,
    /// Whether every record runs the cleanup too (Flink's `runCleanupForEveryRecord`;
    /// default false).
    pub every_record: bool,
}

impl Default for IncrementalCleanup {
    fn default() -> Self {
        Self {
            entries: 5,
            every_record: false,
        }
    }
}

/// The TTL of a state (Flink's `StateTtlConfig`).
#[derive(Clone)]
pub struct StateTtlConfig {
    ttl: Duration,
    update: TtlUpdate,
    visibility: TtlVisibility,
    clock: Arc<dyn TtlClock>,
    full_snapshot_cleanup: bool,
    incremental_cleanup: IncrementalCleanup,
}

impl fmt::Debug for StateTtlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateTtlConfig")
            .field("ttl", &self.ttl)
            .field("update", &self.update)
            .field("visibility", &self.visibility)
            .field("full_snapshot_cleanup", &self.full_snapshot_cleanup)
            .field("incremental_cleanup", &self.incremental_cleanup)
            .finish_non_exhaustive()
    }
}

impl StateTtlConfig {
    /// Entries expire `ttl` after their last write; expired entries are never returned; the
    /// system clock. A zero `ttl` is refused when the state is registered.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            update: TtlUpdate::default(),
            visibility: TtlVisibility::default(),
            clock: Arc::new(SystemClock),
            full_snapshot_cleanup: false,
            incremental_cleanup: IncrementalCleanup::default(),
        }
    }
    /// When timestamps are refreshed.
    pub fn with_update(mut self, update: TtlUpdate) -> Self {
        self.update = update;
        self
    }
    /// Whether expired entries may be returned once.
    pub fn with_visibility(mut self, visibility: TtlVisibility) -> Self {
        self.visibility = visibility;
        self
    }
    /// The clock that stamps and expires entries.
    pub fn with_clock(mut self, clock: Arc<dyn TtlClock>) -> Self {
        self.clock = clock;
        self
    }
    /// Leaves what has expired out of full snapshots (Flink's `cleanupFullSnapshot`):
    /// canonical savepoints, full checkpoints, and the heap backend's incremental
    /// checkpoints (which write each changed key group whole) hold only the values, list
    /// elements and map entries that had not expired at the snapshot's synchronous phase.
    /// RocksDB's native incremental checkpoints and native savepoints are files and keep
    /// everything, as in Flink. Restores are the
    /// same either way (reads never return what has expired); the snapshots are smaller.
    pub fn with_full_snapshot_cleanup(mut self) -> Self {
        self.full_snapshot_cleanup = true;
        self
    }
    /// How the heap backend's background cleanup goes ([`IncrementalCleanup`]; Flink's
    /// `cleanupIncrementally(entries, every_record)`).
    pub fn with_incremental_cleanup(mut self, entries: usize, every_record: bool) -> Self {
        self.incremental_cleanup = IncrementalCleanup {
            entries,
            every_record,
        };
        self
    }
    /// The time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
    /// When timestamps are refreshed.
    pub fn update(&self) -> TtlUpdate {
        self.update
    }
    /// Whether expired entries may be returned once.
    pub fn visibility(&self) -> TtlVisibility {
        self.visibility
    }
    /// Whether full snapshots leave out what has expired
    /// ([`Self::with_full_snapshot_cleanup`]).
    pub fn cleans_up_full_snapshots(&self) -> bool {
        self.full_snapshot_cleanup
    }
    /// How the heap backend's background cleanup goes.
    pub fn incremental_cleanup(&self) -> IncrementalCleanup {
        self.incremental_cleanup
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an entry stamped at `stamped_ms` has expired at `now_ms`.
    pub fn is_expired(&self, stamped_ms: u64, now_ms: u64) -> bool {
        stamped_ms.saturating_add(self.ttl_ms()) <= now_ms
    }

    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn refresh_on_read(&self) -> bool {
        self.update == TtlUpdate::OnReadAndWrite
    }

    fn return_expired(&self) -> bool {
        self.visibility == TtlVisibility::ReturnExpiredIfNotCleanedUp
    }

    fn check(&self, state: &str) -> Result<()> {
        if self.ttl_ms() == 0 {
            return Err(StateError::InvalidTtl {
                state: state.to_string(),
                reason: "the time to live must be at least one millisecond",
            });
        }
        Ok(())
    }
}

/// A stored value of a state with a TTL: the value and when it was last written (or read,
/// with [`TtlUpdate::OnReadAndWrite`]), in milliseconds of the config's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TtlValue<V> {
    /// When the value was last stamped.
    pub stamped_ms: u64,
    /// The user's value.
    pub value: V,
}

/// The codec of [`TtlValue`]s: the timestamp as 8 little-endian bytes, then the value in its
/// own codec. Its identity is the value codec's, with the encoding prefixed by
/// [`TTL_ENCODING_PREFIX`].
pub struct TtlCodec<V> {
    inner: CodecRef<V>,
    identity: CodecIdentity,
}

impl<V> fmt::Debug for TtlCodec<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlCodec")
            .field("identity", &self.identity)
            .finish()
    }
}

impl<V: 'static> TtlCodec<V> {
    /// Wraps the codec of the user's values.
    pub fn new(inner: CodecRef<V>) -> Self {
        let mut identity = inner.identity().clone();
        identity.encoding = format!("{TTL_ENCODING_PREFIX}{}", identity.encoding);
        Self { inner, identity }
    }
}

impl<V: 'static> Codec<TtlValue<V>> for TtlCodec<V> {
    fn encode(&self, value: &TtlValue<V>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(&value.stamped_ms.to_le_bytes());
        self.inner.encode(&value.value, out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<TtlValue<V>, CodecError> {
        let (stamp, rest) = split_stamp(bytes, &self.identity)?;
        Ok(TtlValue {
            stamped_ms: stamp,
            value: self.inner.decode(rest)?,
        })
    }

    fn identity(&self) -> &CodecIdentity {
        &self.identity
    }

    /// What the value codec says of the stored identity without the TTL prefix: a state
    /// with a TTL evolves its values as any other. State stored without a TTL is
    /// incompatible (as in Flink, a TTL cannot be turned on or off on restore).
    fn compatibility(&self, stored: &CodecIdentity) -> Compatibility {
        match untimed(stored) {
            Some(inner) => self.inner.compatibility(&inner),
            None => Compatibility::Incompatible,
        }
    }

    fn decode_from(&self, stored: &CodecIdentity, bytes: &[u8]) -> Result<TtlValue<V>, CodecError> {
        if stored.is_compatible_with(&self.identity) {
            return self.decode(bytes);
        }
        let Some(inner) = untimed(stored) else {
            return Err(CodecError {
                codec: self.identity.to_string(),
                op: "decode",
                detail: format!("{stored} is not the codec of a state with a TTL"),
            });
        };
        let (stamp, rest) = split_stamp(bytes, &self.identity)?;
        Ok(TtlValue {
            stamped_ms: stamp,
            value: self.inner.decode_from(&inner, rest)?,
        })
    }
}

/// The stamp of an encoded TTL value and the value's bytes after it.
fn split_stamp<'a>(
    bytes: &'a [u8],
    identity: &CodecIdentity,
) -> Result<(u64, &'a [u8]), CodecError> {
    match bytes.split_first_chunk::<TIMESTAMP_BYTES>() {
        Some((stamp, rest)) => Ok((u64::from_le_bytes(*stamp), rest)),
        None => Err(CodecError {
            codec: identity.to_string(),
            op: "decode",
            detail: format!(
                "{} bytes cannot hold the {TIMESTAMP_BYTES}-byte timestamp of a value with a TTL",
                bytes.len()
            ),
        }),
    }
}

/// The identity of a TTL state's values without the TTL: `stored` with the prefix of its
/// encoding removed, if it has it.
fn untimed(stored: &CodecIdentity) -> Option<CodecIdentity> {
    let encoding = stored.encoding.strip_prefix(TTL_ENCODING_PREFIX)?;
    Some(CodecIdentity {
        encoding: encoding.to_string(),
        ..stored.clone()
    })
}

/// The timestamp of an encoded TTL value, for tools and backends that see bytes: `None`
/// when `bytes` are too short to hold one.
pub fn ttl_stamp_of(bytes: &[u8]) -> Option<u64> {
    bytes
        .first_chunk::<TIMESTAMP_BYTES>()
        .map(|s| u64::from_le_bytes(*s))
}

/// What a backend needs to drop the expired entries of a state with a TTL before a read
/// finds them (given to [`KeyedStateBackend::enable_ttl_cleanup`]): the state's duration and
/// clock, and where a stored value (a value, list element or map value) keeps its stamp.
pub struct TtlCleanup<V> {
    config: StateTtlConfig,
    stamp: fn(&V) -> u64,
}

impl<V> Clone for TtlCleanup<V> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            stamp: self.stamp,
        }
    }
}

impl<V> fmt::Debug for TtlCleanup<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TtlCleanup")
            .field("ttl", &self.config.ttl)
            .finish_non_exhaustive()
    }
}

impl<V> TtlCleanup<V> {
    /// The current time of the state's clock.
    pub fn now_ms(&self) -> u64 {
        self.config.now()
    }
    /// Whether a stored value has expired at `now_ms`.
    pub fn is_expired(&self, value: &V, now_ms: u64) -> bool {
        self.config.is_expired((self.stamp)(value), now_ms)
    }
    /// Whether full snapshots leave out what has expired
    /// ([`StateTtlConfig::with_full_snapshot_cleanup`]).
    pub fn in_full_snapshots(&self) -> bool {
        self.config.full_snapshot_cleanup
    }
    /// How the heap backend's background cleanup goes
    /// ([`StateTtlConfig::with_incremental_cleanup`]).
    pub fn incremental(&self) -> IncrementalCleanup {
        self.config.incremental_cleanup
    }
    /// Whether an encoded stored value (stamp first, see [`TtlCodec`]) has expired at
    /// `now_ms`; bytes too short to hold a stamp are not judged expired (a read reports
    /// them as corrupt).
    pub fn is_expired_encoded(&self, bytes: &[u8], now_ms: u64) -> bool {
        ttl_stamp_of(bytes).is_some_and(|stamp| self.config.is_expired(stamp, now_ms))
    }
}

fn stamp_of<V>(value: &TtlValue<V>) -> u64 {
    value.stamped_ms
}

fn cleanup<V>(config: &StateTtlConfig) -> TtlCleanup<TtlValue<V>> {
    TtlCleanup {
        config: config.clone(),
        stamp: stamp_of::<V>,
    }
}

fn wrap<V: 'static>(codec: &CodecRef<V>) -> CodecRef<TtlValue<V>> {
    Arc::new(TtlCodec::new(codec.clone()))
}

macro_rules! ttl_id {
    ($(#[$doc:meta])* $name:ident<$($p:ident),*>, $inner:ty) => {
        $(#[$doc])*
        pub struct $name<$($p),*> {
            inner: $inner,
            ttl: StateTtlConfig,
        }
        impl<$($p),*> $name<$($p),*> {
            /// The untyped identity of the state underneath.
            pub fn raw(&self) -> RawStateId {
                self.inner.raw()
            }
            /// The state's TTL.
            pub fn ttl(&self) -> &StateTtlConfig {
                &self.ttl
            }
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                Self { inner: self.inner, ttl: self.ttl.clone() }
            }
        }
        impl<$($p),*> fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("inner", &self.inner)
                    .field("ttl", &self.ttl)
                    .finish()
            }
        }
    };
}
ttl_id!(
    /// A registered `ValueState<V>` with a TTL.
    TtlValueStateId<V, N>, ValueStateId<TtlValue<V>, N>
);
ttl_id!(
    /// A registered `ListState<V>` with a TTL per element.
    TtlListStateId<V, N>, ListStateId<TtlValue<V>, N>
);
ttl_id!(
    /// A registered `MapState<UK, UV>` with a TTL per entry.
    TtlMapStateId<UK, UV, N>, MapStateId<UK, TtlValue<UV>, N>
);
ttl_id!(
    /// A registered `ReducingState<V>` with a TTL.
    TtlReducingStateId<V, N>, ReducingStateId<TtlValue<V>, N>
);
ttl_id!(
    /// A registered `AggregatingState<IN, ACC, OUT>` with a TTL.
    TtlAggregatingStateId<IN, ACC, OUT, N>,
    AggregatingStateId<TtlInput<IN>, TtlValue<ACC>, (bool, OUT), N>
);

/// The input of an aggregating state with a TTL: a user input, or a refresh of the
/// accumulator's timestamp (a read under [`TtlUpdate::OnReadAndWrite`]).
#[derive(Debug)]
pub enum TtlInput<IN> {
    /// Adds the input (to a fresh accumulator when the stored one has expired).
    Add(IN),
    /// Stamps the accumulator with the current time.
    Refresh,
}

/// The user's aggregate function on TTL accumulators; its result says whether the
/// accumulator had expired.
struct TtlAggregate<IN, ACC, OUT> {
    inner: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
    ttl: StateTtlConfig,
}

impl<IN: 'static, ACC: 'static, OUT: 'static>
    AggregateFunction<TtlInput<IN>, TtlValue<ACC>, (bool, OUT)> for TtlAggregate<IN, ACC, OUT>
{
    fn create_accumulator(&self) -> TtlValue<ACC> {
        TtlValue {
            stamped_ms: self.ttl.now(),
            value: self.inner.create_accumulator(),
        }
    }

    fn add(&self, acc: &mut TtlValue<ACC>, input: TtlInput<IN>) {
        let now = self.ttl.now();
        if let TtlInput::Add(input) = input {
            if self.ttl.is_expired(acc.stamped_ms, now) {
                acc.value = self.inner.create_accumulator();
            }
            self.inner.add(&mut acc.value, input);
        }
        acc.stamped_ms = now;
    }

    fn result(&self, acc: &TtlValue<ACC>) -> (bool, OUT) {
        (
            self.ttl.is_expired(acc.stamped_ms, self.ttl.now()),
            self.inner.result(&acc.value),
        )
    }
}

/// Registration of and access to states with a TTL, on any [`KeyedStateBackend`].
///
/// Registering a state with a TTL under a name registers an ordinary state of that name
/// whose values are [`TtlValue`]s; use its id only through the accessors here.
pub trait TtlStateAccess: KeyedStateBackend + Sized {
    /// Registers (or re-fetches) a value state with a TTL.
    fn register_value_with_ttl<V: StateValue, N: Namespace>(
        &mut self,
        d: &ValueStateDescriptor<V, N>,
        ttl: &StateTtlConfig,
    ) -> Result<TtlValueStateId<V, N>> {
        ttl.check(&d.name)?;
        let inner = self.register_value(&ValueStateDescriptor {
            name: d.name.clone(),
            value: wrap(&d.value),
            namespace: d.namespace.clone(),
        })?;
        self.enable_ttl_cleanup(inner.raw(), cleanup::<V>(ttl))?;
        Ok(TtlValueStateId {
            inner,
            ttl: ttl.clone(),
        })
    }

    /// Registers (or re-fetches) a list state with a TTL per element.
    fn register_list_with_ttl<V: StateValue, N: Namespace>(
        &mut self,
        d: &ListStateDescriptor<V, N>,
        ttl: &StateTtlConfig,
    ) -> Result<TtlListStateId<V, N>> {
        ttl.check(&d.name)?;
        let inner = self.register_list(&ListStateDescriptor {
            name: d.name.clone(),
            element: wrap(&d.element),
            namespace: d.namespace.clone(),
        })?;
        self.enable_ttl_cleanup(inner.raw(), cleanup::<V>(ttl))?;
        Ok(TtlListStateId {
            inner,
            ttl: ttl.clone(),
        })
    }

    /// Registers (or re-fetches) a map state with a TTL per entry.
    fn register_map_with_ttl<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        d: &MapStateDescriptor<UK, UV, N>,
        ttl: &StateTtlConfig,
    ) -> Result<TtlMapStateId<UK, UV, N>> {
        ttl.check(&d.name)?;
        let inner = self.register_map(&MapStateDescriptor {
            name: d.name.clone(),
            user_key: d.user_key.clone(),
            value: wrap(&d.value),
            namespace: d.namespace.clone(),
        })?;
        self.enable_ttl_cleanup(inner.raw(), cleanup::<UV>(ttl))?;
        Ok(TtlMapStateId {
            inner,
            ttl: ttl.clone(),
        })
    }

    /// Registers (or re-fetches) a reducing state with a TTL: a value added to an expired
    /// one replaces it.
    fn register_reducing_with_ttl<V: StateValue, N: Namespace>(
        &mut self,
        d: &ReducingStateDescriptor<V, N>,
        ttl: &StateTtlConfig,
    ) -> Result<TtlReducingStateId<V, N>> {
        ttl.check(&d.name)?;
        let (reduce, config) = (d.reduce.clone(), ttl.clone());
        let inner = self.register_reducing(&ReducingStateDescriptor {
            name: d.name.clone(),
            value: wrap(&d.value),
            namespace: d.namespace.clone(),
            reduce: Arc::new(move |old: TtlValue<V>, new: TtlValue<V>| {
                if config.is_expired(old.stamped_ms, new.stamped_ms) {
                    new
                } else {
                    TtlValue {
                        stamped_ms: new.stamped_ms,
                        value: reduce(old.value, new.value),
                    }
                }
            }),
        })?;
        self.enable_ttl_cleanup(inner.raw(), cleanup::<V>(ttl))?;
        Ok(TtlReducingStateId {
            inner,
            ttl: ttl.clone(),
        })
    }

    /// Registers (or re-fetches) an aggregating state with a TTL: an input added to an
    /// expired accumulator starts a fresh one.
    fn register_aggregating_with_ttl<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
        ttl: &StateTtlConfig,
    ) -> Result<TtlAggregatingStateId<IN, ACC, OUT, N>> {
        ttl.check(&d.name)?;
        let inner = self.register_aggregating(&AggregatingStateDescriptor {
            name: d.name.clone(),
            accumulator: wrap(&d.accumulator),
            namespace: d.namespace.clone(),
            function: Arc::new(TtlAggregate {
                inner: d.function.clone(),
                ttl: ttl.clone(),
            }),
        })?;
        self.enable_ttl_cleanup(inner.raw(), cleanup::<ACC>(ttl))?;
        Ok(TtlAggregatingStateId {
            inner,
            ttl: ttl.clone(),
        })
    }

    /// The value state `id` with a TTL, in the void namespace.
    fn ttl_value<'a, V: StateValue>(
        &'a mut self,
        id: &'a TtlValueStateId<V, VoidNamespace>,
    ) -> TtlValueAccess<'a, Self, V, VoidNamespace> {
        self.ttl_value_in(id, &())
    }
    /// The value state `id` with a TTL, in namespace `ns`.
    fn ttl_value_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &'a TtlValueStateId<V, N>,
        ns: &'a N,
    ) -> TtlValueAccess<'a, Self, V, N> {
        TtlValueAccess { b: self, id, ns }
    }
    /// The list state `id` with a TTL, in the void namespace.
    fn ttl_list<'a, V: StateValue>(
        &'a mut self,
        id: &'a TtlListStateId<V, VoidNamespace>,
    ) -> TtlListAccess<'a, Self, V, VoidNamespace> {
        self.ttl_list_in(id, &())
    }
    /// The list state `id` with a TTL, in namespace `ns`.
    fn ttl_list_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &'a TtlListStateId<V, N>,
        ns: &'a N,
    ) -> TtlListAccess<'a, Self, V, N> {
        TtlListAccess { b: self, id, ns }
    }
    /// The map state `id` with a TTL, in the void namespace.
    fn ttl_map<'a, UK: UserKey, UV: StateValue>(
        &'a mut self,
        id: &'a TtlMapStateId<UK, UV, VoidNamespace>,
    ) -> TtlMapAccess<'a, Self, UK, UV, VoidNamespace> {
        self.ttl_map_in(id, &())
    }
    /// The map state `id` with a TTL, in namespace `ns`.
    fn ttl_map_in<'a, UK: UserKey, UV: StateValue, N: Namespace>(
        &'a mut self,
        id: &'a TtlMapStateId<UK, UV, N>,
        ns: &'a N,
    ) -> TtlMapAccess<'a, Self, UK, UV, N> {
        TtlMapAccess { b: self, id, ns }
    }
    /// The reducing state `id` with a TTL, in the void namespace.
    fn ttl_reducing<'a, V: StateValue>(
        &'a mut self,
        id: &'a TtlReducingStateId<V, VoidNamespace>,
    ) -> TtlReducingAccess<'a, Self, V, VoidNamespace> {
        self.ttl_reducing_in(id, &())
    }
    /// The reducing state `id` with a TTL, in namespace `ns`.
    fn ttl_reducing_in<'a, V: StateValue, N: Namespace>(
        &'a mut self,
        id: &'a TtlReducingStateId<V, N>,
        ns: &'a N,
    ) -> TtlReducingAccess<'a, Self, V, N> {
        TtlReducingAccess { b: self, id, ns }
    }
    /// The aggregating state `id` with a TTL, in the void namespace.
    fn ttl_aggregating<'a, IN: 'static, ACC: StateValue, OUT: 'static>(
        &'a mut self,
        id: &'a TtlAggregatingStateId<IN, ACC, OUT, VoidNamespace>,
    ) -> TtlAggregatingAccess<'a, Self, IN, ACC, OUT, VoidNamespace> {
        self.ttl_aggregating_in(id, &())
    }
    /// The aggregating state `id` with a TTL, in namespace `ns`.
    fn ttl_aggregating_in<'a, IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &'a mut self,
        id: &'a TtlAggregatingStateId<IN, ACC, OUT, N>,
        ns: &'a N,
    ) -> TtlAggregatingAccess<'a, Self, IN, ACC, OUT, N> {
        TtlAggregatingAccess { b: self, id, ns }
    }
}

impl<B: KeyedStateBackend> TtlStateAccess for B {}

macro_rules! ttl_accessor {
    ($(#[$doc:meta])* $name:ident<$($p:ident),*>, $id:ident) => {
        $(#[$doc])*
        pub struct $name<'a, B, $($p,)* N> {
            b: &'a mut B,
            id: &'a $id<$($p,)* N>,
            ns: &'a N,
        }
        impl<B, $($p,)* N> fmt::Debug for $name<'_, B, $($p,)* N> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($name)).field("id", self.id).finish_non_exhaustive()
            }
        }
    };
}
ttl_accessor!(
    /// Access to a `ValueState` with a TTL for the current key.
    TtlValueAccess<V>, TtlValueStateId
);
ttl_accessor!(
    /// Access to a `ListState` with a TTL for the current key.
    TtlListAccess<V>, TtlListStateId
);
ttl_accessor!(
    /// Access to a `MapState` with a TTL for the current key.
    TtlMapAccess<UK, UV>, TtlMapStateId
);
ttl_accessor!(
    /// Access to a `ReducingState` with a TTL for the current key.
    TtlReducingAccess<V>, TtlReducingStateId
);
ttl_accessor!(
    /// Access to an `AggregatingState` with a TTL for the current key.
    TtlAggregatingAccess<IN, ACC, OUT>, TtlAggregatingStateId
);

/// What a read does with one stored value (a value, reducing value or map entry).
enum Read<V> {
    /// Live: return it as stored.
    Keep(V),
    /// Live, and reads refresh: store the re-stamped value and return the value.
    Restamp(V, TtlValue<V>),
    /// Expired: remove it, and return what the visibility allows.
    Remove(Option<V>),
}

fn read<V: Clone>(ttl: &StateTtlConfig, stored: TtlValue<V>) -> Read<V> {
    let now = ttl.now();
    if ttl.is_expired(stored.stamped_ms, now) {
        Read::Remove(ttl.return_expired().then_some(stored.value))
    } else if ttl.refresh_on_read() {
        let value = stored.value.clone();
        Read::Restamp(
            value,
            TtlValue {
                stamped_ms: now,
                value: stored.value,
            },
        )
    } else {
        Read::Keep(stored.value)
    }
}

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> TtlValueAccess<'_, B, V, N> {
    /// The value, unless it has expired.
    pub fn get(&mut self) -> Result<Option<V>> {
        let Some(stored) = self.b.value_get(self.id.inner, self.ns)? else {
            return Ok(None);
        };
        match read(&self.id.ttl, stored) {
            Read::Keep(value) => Ok(Some(value)),
            Read::Restamp(value, fresh) => {
                self.b.value_update(self.id.inner, self.ns, fresh)?;
                Ok(Some(value))
            }
            Read::Remove(out) => {
                self.b.clear(self.id.raw(), self.ns)?;
                Ok(out)
            }
        }
    }
    /// Sets the value, stamped now.
    pub fn update(&mut self, value: V) -> Result<()> {
        let stamped_ms = self.id.ttl.now();
        self.b
            .value_update(self.id.inner, self.ns, TtlValue { stamped_ms, value })
    }
    /// Removes the value.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> TtlListAccess<'_, B, V, N> {
    /// The unexpired elements, in order (with [`TtlVisibility::ReturnExpiredIfNotCleanedUp`]
    /// the expired ones too, this once). Expired elements are removed from the list.
    pub fn get(&mut self) -> Result<Vec<V>> {
        let stored = self.b.list_get(self.id.inner, self.ns)?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let ttl = &self.id.ttl;
        let now = ttl.now();
        let total = stored.len();
        let mut live = Vec::with_capacity(total);
        let mut out = Vec::with_capacity(total);
        for element in stored {
            if ttl.is_expired(element.stamped_ms, now) {
                if ttl.return_expired() {
                    out.push(element.value);
                }
            } else {
                out.push(element.value.clone());
                live.push(element);
            }
        }
        let refresh = ttl.refresh_on_read() && !live.is_empty();
        if refresh {
            for element in &mut live {
                element.stamped_ms = now;
            }
        }
        if live.len() < total || refresh {
            // An empty list clears the state.
            self.b.list_update(self.id.inner, self.ns, live)?;
        }
        Ok(out)
    }
    /// Appends one element, stamped now.
    pub fn add(&mut self, value: V) -> Result<()> {
        let stamped_ms = self.id.ttl.now();
        self.b
            .list_add(self.id.inner, self.ns, TtlValue { stamped_ms, value })
    }
    /// Appends several elements, stamped now.
    pub fn add_all(&mut self, values: Vec<V>) -> Result<()> {
        let stamped = self.stamp(values);
        self.b.list_add_all(self.id.inner, self.ns, stamped)
    }
    /// Replaces the elements, all stamped now.
    pub fn update(&mut self, values: Vec<V>) -> Result<()> {
        let stamped = self.stamp(values);
        self.b.list_update(self.id.inner, self.ns, stamped)
    }
    /// Removes the list.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }

    fn stamp(&self, values: Vec<V>) -> Vec<TtlValue<V>> {
        let stamped_ms = self.id.ttl.now();
        values
            .into_iter()
            .map(|value| TtlValue { stamped_ms, value })
            .collect()
    }
}

impl<B: KeyedStateBackend, UK: UserKey, UV: StateValue, N: Namespace>
    TtlMapAccess<'_, B, UK, UV, N>
{
    /// The value under `user_key`, unless it has expired.
    pub fn get(&mut self, user_key: &UK) -> Result<Option<UV>> {
        let Some(stored) = self.b.map_get(self.id.inner, self.ns, user_key)? else {
            return Ok(None);
        };
        match read(&self.id.ttl, stored) {
            Read::Keep(value) => Ok(Some(value)),
            Read::Restamp(value, fresh) => {
                self.b
                    .map_put(self.id.inner, self.ns, user_key.clone(), fresh)?;
                Ok(Some(value))
            }
            Read::Remove(out) => {
                self.b.map_remove(self.id.inner, self.ns, user_key)?;
                Ok(out)
            }
        }
    }
    /// Puts a value under `user_key`, stamped now.
    pub fn put(&mut self, user_key: UK, value: UV) -> Result<()> {
        let stamped_ms = self.id.ttl.now();
        self.b.map_put(
            self.id.inner,
            self.ns,
            user_key,
            TtlValue { stamped_ms, value },
        )
    }
    /// Removes `user_key`.
    pub fn remove(&mut self, user_key: &UK) -> Result<()> {
        self.b.map_remove(self.id.inner, self.ns, user_key)
    }
    /// Whether `user_key` holds a value that [`TtlMapAccess::get`] would return (it is a
    /// read: it removes an expired entry, and refreshes a live one when reads refresh).
    pub fn contains(&mut self, user_key: &UK) -> Result<bool> {
        Ok(self.get(user_key)?.is_some())
    }
    /// The unexpired entries, sorted by the user key's encoding (with
    /// [`TtlVisibility::ReturnExpiredIfNotCleanedUp`] the expired ones too, this once).
    /// Expired entries are removed.
    pub fn entries(&mut self) -> Result<Vec<(UK, UV)>> {
        let stored = self.b.map_entries(self.id.inner, self.ns)?;
        let mut out = Vec::with_capacity(stored.len());
        for (user_key, entry) in stored {
            match read(&self.id.ttl, entry) {
                Read::Keep(value) => out.push((user_key, value)),
                Read::Restamp(value, fresh) => {
                    self.b
                        .map_put(self.id.inner, self.ns, user_key.clone(), fresh)?;
                    out.push((user_key, value));
                }
                Read::Remove(expired) => {
                    self.b.map_remove(self.id.inner, self.ns, &user_key)?;
                    out.extend(expired.map(|value| (user_key, value)));
                }
            }
        }
        Ok(out)
    }
    /// Whether the map has no unexpired entry (a read of every entry, as
    /// [`TtlMapAccess::entries`]).
    pub fn is_empty(&mut self) -> Result<bool> {
        Ok(self.entries()?.is_empty())
    }
    /// Removes the whole map.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, V: StateValue, N: Namespace> TtlReducingAccess<'_, B, V, N> {
    /// The reduced value, unless it has expired.
    pub fn get(&mut self) -> Result<Option<V>> {
        let Some(stored) = self.b.reducing_get(self.id.inner, self.ns)? else {
            return Ok(None);
        };
        match read(&self.id.ttl, stored) {
            Read::Keep(value) => Ok(Some(value)),
            Read::Restamp(value, fresh) => {
                // A reducing state has no setter: cleared, the added value is the new one.
                self.b.clear(self.id.raw(), self.ns)?;
                self.b.reducing_add(self.id.inner, self.ns, fresh)?;
                Ok(Some(value))
            }
            Read::Remove(out) => {
                self.b.clear(self.id.raw(), self.ns)?;
                Ok(out)
            }
        }
    }
    /// Folds in a value (into nothing when the stored one has expired), stamped now.
    pub fn add(&mut self, value: V) -> Result<()> {
        let stamped_ms = self.id.ttl.now();
        self.b
            .reducing_add(self.id.inner, self.ns, TtlValue { stamped_ms, value })
    }
    /// Removes the reduced value.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

impl<B: KeyedStateBackend, IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>
    TtlAggregatingAccess<'_, B, IN, ACC, OUT, N>
{
    /// The aggregate's result, unless the accumulator has expired.
    pub fn get(&mut self) -> Result<Option<OUT>> {
        let Some((expired, out)) = self.b.aggregating_get(self.id.inner, self.ns)? else {
            return Ok(None);
        };
        let ttl = &self.id.ttl;
        if expired {
            self.b.clear(self.id.raw(), self.ns)?;
            return Ok(ttl.return_expired().then_some(out));
        }
        if ttl.refresh_on_read() {
            self.b
                .aggregating_add(self.id.inner, self.ns, TtlInput::Refresh)?;
        }
        Ok(Some(out))
    }
    /// Adds an input (to a fresh accumulator when the stored one has expired), stamped now.
    pub fn add(&mut self, input: IN) -> Result<()> {
        self.b
            .aggregating_add(self.id.inner, self.ns, TtlInput::Add(input))
    }
    /// Removes the accumulator.
    pub fn clear(&mut self) -> Result<()> {
        self.b.clear(self.id.raw(), self.ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::BincodeCodec;

    #[test]
    fn a_ttl_value_is_its_stamp_then_the_value_in_its_own_codec() {
        let inner: CodecRef<u32> = Arc::new(BincodeCodec::<u32>::new());
        let codec = TtlCodec::new(inner);
        let bytes = codec
            .encode_to_vec(&TtlValue {
                stamped_ms: 0x0102_0304_0506_0708,
                value: 9,
            })
            .unwrap();
        assert_eq!(bytes, [8, 7, 6, 5, 4, 3, 2, 1, 9, 0, 0, 0]);
        assert_eq!(ttl_stamp_of(&bytes), Some(0x0102_0304_0506_0708));
        assert_eq!(codec.decode(&bytes).unwrap().value, 9);
        assert_eq!(codec.identity().encoding, "cairn-ttl1+bincode1-fixint-le");
        assert_eq!(codec.identity().type_name, "u32");
        let short = codec.decode(&bytes[..7]).unwrap_err();
        assert!(short.to_string().contains("7 bytes cannot hold"), "{short}");
        assert!(codec.decode(&bytes[..11]).is_err());
    }

    #[test]
    fn entries_expire_exactly_ttl_after_their_stamp() {
        let ttl = StateTtlConfig::new(Duration::from_millis(100));
        assert!(!ttl.is_expired(1_000, 1_099));
        assert!(ttl.is_expired(1_000, 1_100));
        // No overflow at the end of time.
        assert!(!ttl.is_expired(u64::MAX - 5, u64::MAX - 1));
        let forever = StateTtlConfig::new(Duration::MAX);
        assert!(!forever.is_expired(1, u64::MAX - 1));
        assert!(StateTtlConfig::new(Duration::from_micros(999))
            .check("s")
            .is_err());
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(5);
        clock.advance(Duration::from_millis(10));
        assert_eq!(clock.now_ms(), 15);
        clock.set(3);
        assert_eq!(clock.now_ms(), 3);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ms(), u64::MAX);
        assert!(SystemClock.now_ms() > 1_600_000_000_000);
    }
}
