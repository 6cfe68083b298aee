//! Round trip: a real job keeps value, list, map, reducing and aggregating state per key at
//! parallelism 2, is stopped with a savepoint once it has read all its input, and the
//! reader's view of that savepoint equals a model computed from the input — under both
//! backends.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_core::{
    AggregatingStateDescriptor, AggregatingStateId, KeyedStateBackend, ListStateDescriptor,
    ListStateId, MapStateDescriptor, MapStateId, OperatorListStateDescriptor,
    ReducingStateDescriptor, ReducingStateId, StateKind, ValueStateDescriptor, ValueStateId,
};
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, Job, JobConfig, KeyedProcessFunction, StateBackendConfig,
    TimerService,
};
use cairn_state_processor::SavepointReader;
use common::*;

const TOTAL: u64 = 30_000;
const KEYS: u64 = 700;
const SEED: u64 = 17;

/// The job's states, registered by every subtask.
fn value() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("count")
}
fn list() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("thirds")
}
fn map() -> MapStateDescriptor<u64, u64> {
    MapStateDescriptor::new("by-rest")
}
fn reducing() -> ReducingStateDescriptor<u64> {
    ReducingStateDescriptor::new("key-sum", |a: u64, b| a + b)
}
fn aggregating() -> AggregatingStateDescriptor<u64, u64, u64> {
    AggregatingStateDescriptor::new("counted", Counting)
}

/// Per key: `count` (records so far), `thirds` (every third count), `by-rest` (count % 4 →
/// the last count with that rest), `key-sum` (the key, summed per record), `counted` (an
/// aggregate of 1 per record).
#[derive(Clone, Debug)]
struct Kinds;

struct States {
    count: ValueStateId<u64, ()>,
    thirds: ListStateId<u64, ()>,
    by_rest: MapStateId<u64, u64, ()>,
    key_sum: ReducingStateId<u64, ()>,
    counted: AggregatingStateId<u64, u64, u64, ()>,
}

impl Checkpointed for Kinds {}

impl KeyedProcessFunction for Kinds {
    type Key = u64;
    type In = u64;
    type Out = (u64, u64);
    type State = States;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<States> {
        Ok(States {
            count: b.register_value(&value())?,
            thirds: b.register_list(&list())?,
            by_rest: b.register_map(&map())?,
            key_sum: b.register_reducing(&reducing())?,
            counted: b.register_aggregating(&aggregating())?,
        })
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        s: &States,
        key: &u64,
        _record: u64,
        b: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        let n = b.value_get(s.count, &())?.unwrap_or(0) + 1;
        b.value_update(s.count, &(), n)?;
        if n % 3 == 0 {
            b.list_add(s.thirds, &(), n)?;
        }
        b.map_put(s.by_rest, &(), n % 4, n)?;
        b.reducing_add(s.key_sum, &(), *key)?;
        b.aggregating_add(s.counted, &(), 1)?;
        out.collect((*key, n))
    }
}

/// What the job's state holds once it has processed every record, from the input alone.
#[derive(Debug, Default, PartialEq, Eq)]
struct Model {
    count: BTreeMap<u64, u64>,
    thirds: BTreeMap<u64, Vec<u64>>,
    by_rest: BTreeMap<u64, Vec<(u64, u64)>>,
    key_sum: BTreeMap<u64, u64>,
}

fn model(generator: &GeneratorSource) -> Model {
    let mut m = Model::default();
    for n in 0..TOTAL {
        *m.count.entry(generator.key_of(n)).or_default() += 1;
    }
    for (&k, &c) in &m.count {
        let thirds: Vec<u64> = (1..=c).filter(|i| i % 3 == 0).collect();
        if !thirds.is_empty() {
            m.thirds.insert(k, thirds);
        }
        let mut by_rest: BTreeMap<u64, u64> = BTreeMap::new();
        for i in 1..=c {
            by_rest.insert(i % 4, i);
        }
        m.by_rest.insert(k, by_rest.into_iter().collect());
        m.key_sum.insert(k, k * c);
    }
    m
}

/// Runs the job at parallelism 2 under `backend` until it has read everything, stops it
/// with a savepoint and returns the savepoint's path.
fn run_and_stop(dir: &std::path::Path, backend: StateBackendConfig) -> String {
    let generator = GeneratorSource::new(TOTAL, KEYS, SEED).idle_at_end();
    let graph = source("gen", generator)
        .key_by(|k: &u64| *k)
        .process("kinds", Kinds)
        .sink("sink", DiscardSink);
    let config = JobConfig {
        name: "round-trip".into(),
        parallelism: 2,
        checkpoint_dir: s(&dir.join("checkpoints")),
        savepoint_dir: Some(s(&dir.join("savepoints"))),
        backend,
        ..JobConfig::default()
    };
    let handle = Job::new(graph, config).start().expect("start");
    let started = Instant::now();
    while handle.records_read() < TOTAL {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job read {} of {TOTAL} records",
            handle.records_read()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let result = handle.wait().expect("job");
    assert_eq!(result.records, TOTAL, "{result:?}");
    assert_eq!(result.savepoint.as_deref(), Some(savepoint.as_str()));
    savepoint
}

fn round_trip(backend: StateBackendConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let savepoint = run_and_stop(dir.path(), backend);
    let want = model(&GeneratorSource::new(TOTAL, KEYS, SEED));
    assert_eq!(want.count.values().sum::<u64>(), TOTAL);

    let reader = SavepointReader::open(&savepoint).expect("open");
    assert_eq!(reader.max_parallelism(), Some(128));
    let uids: Vec<(String, u32)> = reader
        .operators()
        .into_iter()
        .map(|o| (o.uid, o.parallelism))
        .collect();
    assert_eq!(
        uids,
        [("gen".into(), 2), ("kinds".into(), 2), ("sink".into(), 2)]
    );
    let kinds = reader.operator("kinds").expect("kinds");
    let states: Vec<(&str, StateKind)> = kinds
        .keyed_states
        .iter()
        .map(|m| (m.name.as_str(), m.kind))
        .collect();
    assert_eq!(
        states,
        [
            ("by-rest", StateKind::Map),
            ("count", StateKind::Value),
            ("counted", StateKind::Aggregating),
            ("key-sum", StateKind::Reducing),
            ("thirds", StateKind::List),
        ]
    );
    // The generator's splits: every one done, on both subtasks.
    let next = OperatorListStateDescriptor::<(u64, u64)>::split("next");
    assert_eq!(
        reader
            .read_operator_state_by_subtask("gen", &next)
            .expect("generator state"),
        [vec![], vec![]]
    );

    let mut keyed = reader.keyed_state::<u64>("kinds").expect("keyed state");
    let count: BTreeMap<u64, u64> = keyed.values(&value()).expect("count").into_iter().collect();
    assert_eq!(count, want.count);
    let thirds: BTreeMap<u64, Vec<u64>> =
        keyed.lists(&list()).expect("thirds").into_iter().collect();
    assert_eq!(thirds, want.thirds);
    let by_rest: BTreeMap<u64, Vec<(u64, u64)>> =
        keyed.maps(&map()).expect("by-rest").into_iter().collect();
    assert_eq!(by_rest, want.by_rest);
    let key_sum: BTreeMap<u64, u64> = keyed
        .reducing(&reducing())
        .expect("key-sum")
        .into_iter()
        .collect();
    assert_eq!(key_sum, want.key_sum);
    let counted: BTreeMap<u64, u64> = keyed
        .aggregating(&aggregating())
        .expect("counted")
        .into_iter()
        .collect();
    assert_eq!(counted, want.count);
}

#[test]
fn hashmap_job_state_reads_back_as_the_model_says() {
    round_trip(StateBackendConfig::HashMap);
}

#[test]
fn rocksdb_job_state_reads_back_as_the_model_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    round_trip(StateBackendConfig::RocksDb {
        local_dir: dir.path().to_path_buf(),
        options: Default::default(),
    });
}
