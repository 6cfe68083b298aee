//! The states every conformance and model test registers: one of each kind, plus a
//! namespaced one, with simple types whose canonical bytes are easy to reason about.

use cairn_core::*;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Sum and count, averaged on read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SumCount {
    pub sum: u64,
    pub count: u64,
}

#[derive(Debug)]
pub struct Average;

impl AggregateFunction<u64, SumCount, u64> for Average {
    fn create_accumulator(&self) -> SumCount {
        SumCount::default()
    }
    fn add(&self, acc: &mut SumCount, input: u64) {
        acc.sum += input;
        acc.count += 1;
    }
    fn result(&self, acc: &SumCount) -> u64 {
        acc.sum / acc.count.max(1)
    }
}

/// Registered ids of the test schema.
#[derive(Debug, Clone, Copy)]
pub struct Ids {
    pub value: ValueStateId<u64, VoidNamespace>,
    pub list: ListStateId<String, VoidNamespace>,
    pub map: MapStateId<u32, String, VoidNamespace>,
    pub reducing: ReducingStateId<i64, VoidNamespace>,
    pub aggregating: AggregatingStateId<u64, SumCount, u64, VoidNamespace>,
    pub windowed: ValueStateId<u64, u32>,
}

pub fn value_desc() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("value")
}
pub fn list_desc() -> ListStateDescriptor<String> {
    ListStateDescriptor::new("list")
}
pub fn map_desc() -> MapStateDescriptor<u32, String> {
    MapStateDescriptor::new("map")
}
pub fn reducing_desc() -> ReducingStateDescriptor<i64> {
    ReducingStateDescriptor::new("reducing", |a, b| a + b)
}
pub fn aggregating_desc() -> AggregatingStateDescriptor<u64, SumCount, u64> {
    AggregatingStateDescriptor::new("aggregating", Average)
}
pub fn windowed_desc() -> ValueStateDescriptor<u64, u32> {
    ValueStateDescriptor::new("windowed").with_namespace(Arc::new(BincodeCodec::<u32>::new()))
}

/// Registers every state of the schema.
pub fn register<B: KeyedStateBackend>(b: &mut B) -> Ids {
    Ids {
        value: b.register_value(&value_desc()).expect("register value"),
        list: b.register_list(&list_desc()).expect("register list"),
        map: b.register_map(&map_desc()).expect("register map"),
        reducing: b
            .register_reducing(&reducing_desc())
            .expect("register reducing"),
        aggregating: b
            .register_aggregating(&aggregating_desc())
            .expect("register aggregating"),
        windowed: b
            .register_value(&windowed_desc())
            .expect("register windowed"),
    }
}

/// Keys are strings, serialized with the default codec.
pub fn key_codec() -> BincodeCodec<String> {
    BincodeCodec::<String>::new()
}

pub fn key_bytes(key: &str) -> Vec<u8> {
    key_codec()
        .encode_to_vec(&key.to_string())
        .expect("encode key")
}

/// Sets the current key; the key must belong to the backend's range.
pub fn set_key<B: KeyedStateBackend>(b: &mut B, key: &str) {
    b.set_current_key(&key_bytes(key)).expect("set key");
}

/// The first `n` keys named `k<i>` whose key group lies in `range`.
pub fn keys_in(range: KeyGroupRange, max_parallelism: u32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| range.contains(key_group_for_key(&key_bytes(k), max_parallelism)))
        .take(n)
        .collect()
}
