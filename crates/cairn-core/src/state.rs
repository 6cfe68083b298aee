//! State kinds and their descriptors.
//!
//! A descriptor is declared once per operator (name, kind, codecs) and registered with the
//! backend when the operator opens; registration returns a typed id through which the state
//! is accessed. The descriptor's codecs are stored with the state in every snapshot and
//! checked on restore.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{BincodeCodec, Codec, CodecIdentity, Compatibility};
use crate::error::{Result, StateError};

/// The kinds of keyed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StateKind {
    /// One value per key and namespace.
    Value,
    /// A list of values per key and namespace.
    List,
    /// A map of user keys to values per key and namespace.
    Map,
    /// A value that folds every added value with a reduce function.
    Reducing,
    /// An accumulator that folds inputs with an aggregate function.
    Aggregating,
}

impl StateKind {
    /// The kind's stable code in the format (`format-spec/README.md`).
    pub fn code(self) -> u8 {
        match self {
            StateKind::Value => 1,
            StateKind::List => 2,
            StateKind::Map => 3,
            StateKind::Reducing => 4,
            StateKind::Aggregating => 5,
        }
    }

    /// The kind of a stable code, if known.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => StateKind::Value,
            2 => StateKind::List,
            3 => StateKind::Map,
            4 => StateKind::Reducing,
            5 => StateKind::Aggregating,
            _ => return None,
        })
    }
}

/// What a snapshot records about one keyed state.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StateMeta {
    /// The state name, unique within the operator.
    pub name: String,
    /// The state kind.
    pub kind: StateKind,
    /// Codec of the namespace.
    pub namespace: CodecIdentity,
    /// Codec of the value (list element, map value, accumulator for aggregating state).
    pub value: CodecIdentity,
    /// Codec of the map's user key (map state only).
    pub user_key: Option<CodecIdentity>,
}

impl StateMeta {
    /// Checks that a program registering `expected` can use state described by `self`: the
    /// same kind and compatible namespace, value and user-key codecs. `self` is either what a
    /// snapshot stored (`restored`, errors name operator `uid` and both sides) or an earlier
    /// registration in the same run.
    pub fn check_compatible(&self, expected: &StateMeta, uid: &str, restored: bool) -> Result<()> {
        if self.kind != expected.kind {
            return Err(if restored {
                StateError::IncompatibleKind {
                    uid: uid.to_string(),
                    state: expected.name.clone(),
                    stored: self.kind,
                    expected: expected.kind,
                }
            } else {
                StateError::KindMismatch {
                    state: expected.name.clone(),
                    registered: self.kind,
                    requested: expected.kind,
                }
            });
        }
        let parts: [(&'static str, Option<&CodecIdentity>, Option<&CodecIdentity>); 3] = [
            (
                "namespace",
                Some(&self.namespace),
                Some(&expected.namespace),
            ),
            ("value", Some(&self.value), Some(&expected.value)),
            (
                "user key",
                self.user_key.as_ref(),
                expected.user_key.as_ref(),
            ),
        ];
        for (part, stored, wanted) in parts {
            let ok = match (stored, wanted) {
                (Some(s), Some(w)) => s.is_compatible_with(w),
                (None, None) => true,
                _ => false,
            };
            if !ok {
                return Err(StateError::IncompatibleCodec {
                    uid: uid.to_string(),
                    state: expected.name.clone(),
                    part,
                    stored: Box::new(stored.cloned().unwrap_or_else(no_codec)),
                    expected: Box::new(wanted.cloned().unwrap_or_else(no_codec)),
                });
            }
        }
        Ok(())
    }
}

/// What registering a restored state takes, as [`StateMeta::resolve`] decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateMigration {
    /// The stored entries are read as they are.
    AsIs,
    /// Every stored value (value, list element, map value, accumulator) is decoded with
    /// [`Codec::decode_from`] and written again in the registered codec, before the state
    /// is used and before a snapshot can include it.
    Values,
}

/// How the codecs a program registers read the identities a snapshot stored: the
/// namespace's, the value's and the user key's (map state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecVerdicts {
    /// The namespace codec's verdict.
    pub namespace: Compatibility,
    /// The value codec's verdict.
    pub value: Compatibility,
    /// The user-key codec's verdict, when both sides have one.
    pub user_key: Option<Compatibility>,
}

impl StateMeta {
    /// Decides how a program registering `expected` reads the state a snapshot described
    /// as `self`, given its codecs' `verdicts` on the stored identities: the kind must be
    /// the same; namespaces and user keys are compared as bytes, so they must read as is;
    /// values may migrate. Errors name operator `uid`, the state and both identities.
    pub fn resolve(
        &self,
        expected: &StateMeta,
        verdicts: CodecVerdicts,
        uid: &str,
    ) -> Result<StateMigration> {
        if self.kind != expected.kind {
            return Err(StateError::IncompatibleKind {
                uid: uid.to_string(),
                state: expected.name.clone(),
                stored: self.kind,
                expected: expected.kind,
            });
        }
        let incompatible =
            |part, stored: Option<&CodecIdentity>, wanted: Option<&CodecIdentity>| {
                StateError::IncompatibleCodec {
                    uid: uid.to_string(),
                    state: expected.name.clone(),
                    part,
                    stored: Box::new(stored.cloned().unwrap_or_else(no_codec)),
                    expected: Box::new(wanted.cloned().unwrap_or_else(no_codec)),
                }
            };
        let user_key = match (&self.user_key, &expected.user_key, verdicts.user_key) {
            (Some(s), Some(w), Some(v)) => Some((s, w, v)),
            (None, None, _) => None,
            (s, w, _) => return Err(incompatible("user key", s.as_ref(), w.as_ref())),
        };
        let keys = [
            Some((
                "namespace",
                &self.namespace,
                &expected.namespace,
                verdicts.namespace,
            )),
            user_key.map(|(s, w, v)| ("user key", s, w, v)),
        ];
        for (part, stored, wanted, verdict) in keys.into_iter().flatten() {
            match verdict {
                Compatibility::AsIs => {}
                Compatibility::AfterMigration => {
                    return Err(StateError::UnsupportedMigration {
                        uid: uid.to_string(),
                        state: expected.name.clone(),
                        part,
                        stored: Box::new(stored.clone()),
                        expected: Box::new(wanted.clone()),
                    })
                }
                Compatibility::Incompatible => {
                    return Err(incompatible(part, Some(stored), Some(wanted)))
                }
            }
        }
        match verdicts.value {
            Compatibility::AsIs => Ok(StateMigration::AsIs),
            Compatibility::AfterMigration => Ok(StateMigration::Values),
            Compatibility::Incompatible => Err(incompatible(
                "value",
                Some(&self.value),
                Some(&expected.value),
            )),
        }
    }
}

fn no_codec() -> CodecIdentity {
    CodecIdentity {
        encoding: String::new(),
        type_name: "(none)".into(),
        version: 0,
        schema: None,
    }
}

/// Values kept in state: owned, clonable, shareable with snapshot threads.
pub trait StateValue: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> StateValue for T {}

/// Namespaces (e.g. windows) that scope state below the key.
pub trait Namespace: Clone + Eq + Hash + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Send + Sync + 'static> Namespace for T {}

/// Map state's user keys.
pub trait UserKey: Clone + Eq + Hash + Send + Sync + 'static {}
impl<T: Clone + Eq + Hash + Send + Sync + 'static> UserKey for T {}

/// The namespace of state that is not scoped to a namespace; encodes to zero bytes.
pub type VoidNamespace = ();

/// Folds two values into one (`ReducingState`).
pub type ReduceFn<V> = Arc<dyn Fn(V, V) -> V + Send + Sync>;

/// Folds inputs into an accumulator and derives a result from it (`AggregatingState`).
pub trait AggregateFunction<IN, ACC, OUT>: Send + Sync + 'static {
    /// A fresh accumulator.
    fn create_accumulator(&self) -> ACC;
    /// Adds one input to an accumulator.
    fn add(&self, acc: &mut ACC, input: IN);
    /// The result of an accumulator.
    fn result(&self, acc: &ACC) -> OUT;
}

/// An [`AggregateFunction`] whose accumulators can be merged (Flink's
/// `AggregateFunction.merge`): merging windows (sessions) need it when two windows become
/// one.
pub trait MergingAggregateFunction<IN, ACC, OUT>: AggregateFunction<IN, ACC, OUT> {
    /// One accumulator holding the inputs of both `a` and `b` (`a`'s first).
    fn merge(&self, a: ACC, b: ACC) -> ACC;
}

/// The untyped identity of a registered state: its index in the backend and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RawStateId {
    /// Index assigned by the backend at registration.
    pub index: u32,
    /// The state kind.
    pub kind: StateKind,
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident<$($p:ident),*>) => {
        $(#[$doc])*
        pub struct $name<$($p),*> {
            raw: RawStateId,
            _types: PhantomData<fn() -> ($($p,)*)>,
        }
        impl<$($p),*> $name<$($p),*> {
            /// Made by a backend when the state is registered.
            pub fn new(raw: RawStateId) -> Self {
                Self { raw, _types: PhantomData }
            }
            /// The untyped identity.
            pub fn raw(&self) -> RawStateId {
                self.raw
            }
        }
        impl<$($p),*> Clone for $name<$($p),*> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<$($p),*> Copy for $name<$($p),*> {}
        impl<$($p),*> fmt::Debug for $name<$($p),*> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.raw.index)
            }
        }
    };
}

typed_id!(
    /// A registered `ValueState<V>` in namespace type `N`.
    ValueStateId<V, N>
);
typed_id!(
    /// A registered `ListState<V>` in namespace type `N`.
    ListStateId<V, N>
);
typed_id!(
    /// A registered `MapState<UK, UV>` in namespace type `N`.
    MapStateId<UK, UV, N>
);
typed_id!(
    /// A registered `ReducingState<V>` in namespace type `N`.
    ReducingStateId<V, N>
);
typed_id!(
    /// A registered `AggregatingState<IN, ACC, OUT>` in namespace type `N`.
    AggregatingStateId<IN, ACC, OUT, N>
);

/// Shared codec handle.
pub type CodecRef<T> = Arc<dyn Codec<T>>;

fn bincode<T: Serialize + DeserializeOwned + Send + Sync + 'static>() -> CodecRef<T> {
    Arc::new(BincodeCodec::<T>::new())
}

/// Describes a `ValueState<V>`.
pub struct ValueStateDescriptor<V, N = VoidNamespace> {
    /// The state name.
    pub name: String,
    /// Codec of the value.
    pub value: CodecRef<V>,
    /// Codec of the namespace.
    pub namespace: CodecRef<N>,
}

/// Describes a `ListState<V>`.
pub struct ListStateDescriptor<V, N = VoidNamespace> {
    /// The state name.
    pub name: String,
    /// Codec of one element.
    pub element: CodecRef<V>,
    /// Codec of the namespace.
    pub namespace: CodecRef<N>,
}

/// Describes a `MapState<UK, UV>`.
pub struct MapStateDescriptor<UK, UV, N = VoidNamespace> {
    /// The state name.
    pub name: String,
    /// Codec of the user key.
    pub user_key: CodecRef<UK>,
    /// Codec of the user value.
    pub value: CodecRef<UV>,
    /// Codec of the namespace.
    pub namespace: CodecRef<N>,
}

/// Describes a `ReducingState<V>`.
pub struct ReducingStateDescriptor<V, N = VoidNamespace> {
    /// The state name.
    pub name: String,
    /// Codec of the value.
    pub value: CodecRef<V>,
    /// Codec of the namespace.
    pub namespace: CodecRef<N>,
    /// The reduce function.
    pub reduce: ReduceFn<V>,
}

/// Describes an `AggregatingState<IN, ACC, OUT>`.
pub struct AggregatingStateDescriptor<IN, ACC, OUT, N = VoidNamespace> {
    /// The state name.
    pub name: String,
    /// Codec of the accumulator (what is stored).
    pub accumulator: CodecRef<ACC>,
    /// Codec of the namespace.
    pub namespace: CodecRef<N>,
    /// The aggregate function.
    pub function: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> ValueStateDescriptor<V> {
    /// A value state with bincode codecs and no namespace.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: bincode(),
            namespace: bincode(),
        }
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> ListStateDescriptor<V> {
    /// A list state with bincode codecs and no namespace.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            element: bincode(),
            namespace: bincode(),
        }
    }
}

impl<UK: 'static, UV: 'static> MapStateDescriptor<UK, UV>
where
    UK: Serialize + DeserializeOwned + Send + Sync + 'static,
    UV: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// A map state with bincode codecs and no namespace.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            user_key: bincode(),
            value: bincode(),
            namespace: bincode(),
        }
    }
}

impl<V: Serialize + DeserializeOwned + Send + Sync + 'static> ReducingStateDescriptor<V> {
    /// A reducing state with bincode codecs and no namespace.
    pub fn new(
        name: impl Into<String>,
        reduce: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            value: bincode(),
            namespace: bincode(),
            reduce: Arc::new(reduce),
        }
    }
}

impl<IN: 'static, ACC: 'static, OUT: 'static> AggregatingStateDescriptor<IN, ACC, OUT>
where
    ACC: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// An aggregating state with a bincode accumulator codec and no namespace.
    pub fn new(name: impl Into<String>, function: impl AggregateFunction<IN, ACC, OUT>) -> Self {
        Self {
            name: name.into(),
            accumulator: bincode(),
            namespace: bincode(),
            function: Arc::new(function),
        }
    }
}

impl<V: 'static> ValueStateDescriptor<V> {
    /// A value state whose values `codec` encodes (e.g. an [`crate::EvolvingCodec`] that
    /// reads an older schema), without a namespace.
    pub fn with_codec(name: impl Into<String>, codec: impl Codec<V>) -> Self {
        Self {
            name: name.into(),
            value: Arc::new(codec),
            namespace: bincode(),
        }
    }
}

impl<V: 'static> ListStateDescriptor<V> {
    /// A list state whose elements `codec` encodes, without a namespace.
    pub fn with_codec(name: impl Into<String>, codec: impl Codec<V>) -> Self {
        Self {
            name: name.into(),
            element: Arc::new(codec),
            namespace: bincode(),
        }
    }
}

impl<UK: 'static, UV: 'static> MapStateDescriptor<UK, UV> {
    /// A map state with these codecs of user keys and values, without a namespace.
    pub fn with_codecs(
        name: impl Into<String>,
        user_key: impl Codec<UK>,
        value: impl Codec<UV>,
    ) -> Self {
        Self {
            name: name.into(),
            user_key: Arc::new(user_key),
            value: Arc::new(value),
            namespace: bincode(),
        }
    }
}

impl<V: 'static> ReducingStateDescriptor<V> {
    /// A reducing state whose values `codec` encodes, without a namespace.
    pub fn with_codec(
        name: impl Into<String>,
        codec: impl Codec<V>,
        reduce: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            value: Arc::new(codec),
            namespace: bincode(),
            reduce: Arc::new(reduce),
        }
    }
}

impl<IN: 'static, ACC: 'static, OUT: 'static> AggregatingStateDescriptor<IN, ACC, OUT> {
    /// An aggregating state whose accumulators `codec` encodes, without a namespace.
    pub fn with_codec(
        name: impl Into<String>,
        codec: impl Codec<ACC>,
        function: impl AggregateFunction<IN, ACC, OUT>,
    ) -> Self {
        Self {
            name: name.into(),
            accumulator: Arc::new(codec),
            namespace: bincode(),
            function: Arc::new(function),
        }
    }
}

macro_rules! namespace_builder {
    ($name:ident<$($p:ident),*>, $($field:ident),*) => {
        impl<$($p,)* N> $name<$($p,)* N> {
            /// The same state scoped to namespaces of type `N2`, encoded with `codec`.
            pub fn with_namespace<N2>(self, codec: CodecRef<N2>) -> $name<$($p,)* N2> {
                $name { name: self.name, namespace: codec, $($field: self.$field),* }
            }
        }
    };
}
namespace_builder!(ValueStateDescriptor<V>, value);
namespace_builder!(ListStateDescriptor<V>, element);
namespace_builder!(MapStateDescriptor<UK, UV>, user_key, value);
namespace_builder!(ReducingStateDescriptor<V>, value, reduce);
namespace_builder!(AggregatingStateDescriptor<IN, ACC, OUT>, accumulator, function);

/// `resolve` and `meta` of a descriptor whose value codec is field `$value` (and user-key
/// codec `$user_key`, for maps).
macro_rules! described {
    ($name:ident<$($p:ident),*>, $kind:ident, $value:ident $(, $user_key:ident)?) => {
        impl<$($p: 'static,)* N: 'static> $name<$($p,)* N> {
            /// How this descriptor reads the state a snapshot described as `stored` (see
            /// [`StateMeta::resolve`]); errors name operator `uid`.
            pub fn resolve(&self, stored: &StateMeta, uid: &str) -> Result<StateMigration> {
                let verdicts = CodecVerdicts {
                    namespace: self.namespace.compatibility(&stored.namespace),
                    value: self.$value.compatibility(&stored.value),
                    user_key: None$(.or(stored
                        .user_key
                        .as_ref()
                        .map(|s| self.$user_key.compatibility(s))))?,
                };
                stored.resolve(&self.meta(), verdicts, uid)
            }

            /// What snapshots record about this state.
            pub fn meta(&self) -> StateMeta {
                meta(
                    &self.name,
                    StateKind::$kind,
                    &*self.namespace,
                    self.$value.identity(),
                    None$(.or(Some(self.$user_key.identity())))?,
                )
            }
        }
    };
}
described!(ValueStateDescriptor<V>, Value, value);
described!(ListStateDescriptor<V>, List, element);
described!(MapStateDescriptor<UK, UV>, Map, value, user_key);
described!(ReducingStateDescriptor<V>, Reducing, value);
described!(AggregatingStateDescriptor<IN, ACC, OUT>, Aggregating, accumulator);

fn meta<N: 'static>(
    name: &str,
    kind: StateKind,
    namespace: &dyn Codec<N>,
    value: &CodecIdentity,
    user_key: Option<&CodecIdentity>,
) -> StateMeta {
    StateMeta {
        name: name.to_string(),
        kind,
        namespace: namespace.identity().clone(),
        value: value.clone(),
        user_key: user_key.cloned(),
    }
}

impl<V: 'static, N: 'static> fmt::Debug for ValueStateDescriptor<V, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.meta(), f)
    }
}
impl<V: 'static, N: 'static> fmt::Debug for ListStateDescriptor<V, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.meta(), f)
    }
}
impl<UK: 'static, UV: 'static, N: 'static> fmt::Debug for MapStateDescriptor<UK, UV, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.meta(), f)
    }
}
impl<V: 'static, N: 'static> fmt::Debug for ReducingStateDescriptor<V, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.meta(), f)
    }
}
impl<IN: 'static, ACC: 'static, OUT: 'static, N: 'static> fmt::Debug
    for AggregatingStateDescriptor<IN, ACC, OUT, N>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.meta(), f)
    }
}
