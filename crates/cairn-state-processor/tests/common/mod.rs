//! Helpers of the state processor's tests: bootstrap functions, a collecting sink, inputs.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::Path;

use cairn_core::{
    AggregateFunction, AggregatingStateDescriptor, AggregatingStateId, KeyedStateBackend,
    ListStateDescriptor, ListStateId, MapStateDescriptor, MapStateId, ReducingStateDescriptor,
    ReducingStateId, ValueStateDescriptor, ValueStateId,
};
use cairn_state_processor::KeyedStateBootstrapFunction;

/// Sets the runtime's `Count` state (`ValueState<u64>` named `count`) of each key to the
/// record's number.
pub struct SetCount<K>(pub std::marker::PhantomData<K>);

impl<K> SetCount<K> {
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<K> KeyedStateBootstrapFunction for SetCount<K>
where
    K: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    type Key = K;
    type In = (K, u64);
    type States = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
        b.register_value(&count_descriptor())
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        count: &Self::States,
        _key: &K,
        (_, n): (K, u64),
        b: &mut B,
    ) -> cairn_core::Result<()> {
        b.value_update(*count, &(), n)
    }
}

/// The descriptor of the runtime's `Count`.
pub fn count_descriptor() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("count")
}

/// Counts its inputs (the aggregating state of [`AllKinds`]).
pub struct Counting;

impl AggregateFunction<u64, u64, u64> for Counting {
    fn create_accumulator(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, input: u64) {
        *acc += input;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// The descriptors of every state kind that [`AllKinds`] (and the round trip's job) keep
/// per key.
pub struct Descriptors {
    pub value: ValueStateDescriptor<u64>,
    pub list: ListStateDescriptor<u64>,
    pub map: MapStateDescriptor<u64, u64>,
    pub reducing: ReducingStateDescriptor<u64>,
    pub aggregating: AggregatingStateDescriptor<u64, u64, u64>,
}

pub fn descriptors() -> Descriptors {
    Descriptors {
        value: ValueStateDescriptor::new("last"),
        list: ListStateDescriptor::new("all"),
        map: MapStateDescriptor::new("by-rest"),
        reducing: ReducingStateDescriptor::new("sum", |a: u64, b| a + b),
        aggregating: AggregatingStateDescriptor::new("counted", Counting),
    }
}

/// Registered ids of [`Descriptors`].
pub struct Ids {
    pub value: ValueStateId<u64, ()>,
    pub list: ListStateId<u64, ()>,
    pub map: MapStateId<u64, u64, ()>,
    pub reducing: ReducingStateId<u64, ()>,
    pub aggregating: AggregatingStateId<u64, u64, u64, ()>,
}

pub fn register<B: KeyedStateBackend>(b: &mut B) -> cairn_core::Result<Ids> {
    let d = descriptors();
    Ok(Ids {
        value: b.register_value(&d.value)?,
        list: b.register_list(&d.list)?,
        map: b.register_map(&d.map)?,
        reducing: b.register_reducing(&d.reducing)?,
        aggregating: b.register_aggregating(&d.aggregating)?,
    })
}

/// Records `(key, v)`: value = last `v`, list = every `v` in order, map = `v % 5 → v`
/// (the last), reducing = sum of `v`, aggregating = number of records.
pub struct AllKinds;

impl KeyedStateBootstrapFunction for AllKinds {
    type Key = u32;
    type In = (u32, u64);
    type States = Ids;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Ids> {
        register(b)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &Ids,
        _key: &u32,
        (_, v): (u32, u64),
        b: &mut B,
    ) -> cairn_core::Result<()> {
        b.value_update(s.value, &(), v)?;
        b.list_add(s.list, &(), v)?;
        b.map_put(s.map, &(), v % 5, v)?;
        b.reducing_add(s.reducing, &(), v)?;
        b.aggregating_add(s.aggregating, &(), 1)
    }
}

/// What [`AllKinds`] leaves per key, computed from the records alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindsModel {
    pub value: BTreeMap<u32, u64>,
    pub list: BTreeMap<u32, Vec<u64>>,
    pub map: BTreeMap<u32, BTreeMap<u64, u64>>,
    pub reducing: BTreeMap<u32, u64>,
    pub aggregating: BTreeMap<u32, u64>,
}

impl KindsModel {
    pub fn of(records: &[(u32, u64)]) -> Self {
        let mut m = Self::default();
        for &(k, v) in records {
            m.value.insert(k, v);
            m.list.entry(k).or_default().push(v);
            m.map.entry(k).or_default().insert(v % 5, v);
            *m.reducing.entry(k).or_default() += v;
            *m.aggregating.entry(k).or_default() += 1;
        }
        m
    }
}

/// A deterministic xorshift generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Every file under `dir` whose name ends with `suffix`.
pub fn files_ending(dir: &Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Flips one byte in the middle of `file`.
pub fn flip_a_byte(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x5a;
    std::fs::write(file, bytes).expect("write");
}

/// `path` as a string.
pub fn s(path: &Path) -> String {
    path.display().to_string()
}
