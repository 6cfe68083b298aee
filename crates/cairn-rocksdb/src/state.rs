//! Registered states: the typed codecs and functions of each descriptor, kept behind
//! `dyn Any` and recovered by downcasting on access, plus the untyped encoders the cache
//! flush and `clear`/`keys` need.

use std::any::{Any, TypeId};
use std::sync::Arc;

use cairn_core::{
    AggregateFunction, Codec, CodecError, CodecRef, ReduceFn, Result, StateError, StateMeta,
};

/// Encodes a namespace given as `&dyn Any` (it must be the state's namespace type).
pub(crate) type EncodeNs = Box<dyn Fn(&dyn Any, &mut Vec<u8>) -> Result<()> + Send>;
/// Encodes a cached value (`Option<V>` as `dyn Any`): `Ok(false)` when it is absent.
pub(crate) type EncodeValue = Box<dyn Fn(&dyn Any, &mut Vec<u8>) -> Result<bool> + Send>;

/// A registered state.
pub(crate) struct Registered {
    pub(crate) meta: StateMeta,
    /// One of [`Single`], [`Agg`], [`ListOf`], [`MapOf`].
    pub(crate) typed: Box<dyn Any + Send>,
    pub(crate) type_name: &'static str,
    /// The type of its stored values, list elements or map values (TTL cleanup checks it).
    pub(crate) value_type: TypeId,
    pub(crate) encode_ns: EncodeNs,
    pub(crate) encode_value: EncodeValue,
}

/// Value and reducing states.
pub(crate) struct Single<V, N> {
    pub(crate) ns: CodecRef<N>,
    pub(crate) value: CodecRef<V>,
    pub(crate) reduce: Option<ReduceFn<V>>,
}

/// Aggregating states.
pub(crate) struct Agg<IN, ACC, OUT, N> {
    pub(crate) ns: CodecRef<N>,
    pub(crate) acc: CodecRef<ACC>,
    pub(crate) func: Arc<dyn AggregateFunction<IN, ACC, OUT>>,
}

/// List states.
pub(crate) struct ListOf<V, N> {
    pub(crate) ns: CodecRef<N>,
    pub(crate) element: CodecRef<V>,
}

/// Map states.
pub(crate) struct MapOf<UK, UV, N> {
    pub(crate) ns: CodecRef<N>,
    pub(crate) user_key: CodecRef<UK>,
    pub(crate) value: CodecRef<UV>,
}

pub(crate) fn codec_error(state: &str) -> impl Fn(CodecError) -> StateError + '_ {
    move |source| StateError::Codec {
        state: state.to_string(),
        source,
    }
}

pub(crate) fn type_mismatch(state: &str, expected: &'static str) -> StateError {
    StateError::layer(
        format!("accessing state state={state}"),
        format!("the state is used with another type than registered expected={expected}"),
    )
}

/// The namespace encoder of a state with namespace type `N`.
pub(crate) fn ns_encoder<N: Send + Sync + 'static>(name: &str, codec: CodecRef<N>) -> EncodeNs {
    let name = name.to_string();
    Box::new(move |ns, out| {
        let ns = ns
            .downcast_ref::<N>()
            .ok_or_else(|| type_mismatch(&name, std::any::type_name::<N>()))?;
        codec.encode(ns, out).map_err(codec_error(&name))
    })
}

/// The cached-value encoder of a state whose cached values are `Option<V>`.
pub(crate) fn value_encoder<V: Send + Sync + 'static>(
    name: &str,
    codec: CodecRef<V>,
) -> EncodeValue {
    let name = name.to_string();
    Box::new(move |v, out| {
        match v
            .downcast_ref::<Option<V>>()
            .ok_or_else(|| type_mismatch(&name, std::any::type_name::<V>()))?
        {
            Some(v) => codec
                .encode(v, out)
                .map(|_| true)
                .map_err(codec_error(&name)),
            None => Ok(false),
        }
    })
}

/// An encoder for states that are never cached (lists).
pub(crate) fn no_value_encoder(name: &str) -> EncodeValue {
    let name = name.to_string();
    Box::new(move |_, _| Err(type_mismatch(&name, "a cacheable state")))
}

/// Decodes with `codec`, naming the state on failure.
pub(crate) fn decode<V: 'static>(codec: &dyn Codec<V>, state: &str, bytes: &[u8]) -> Result<V> {
    codec.decode(bytes).map_err(codec_error(state))
}
