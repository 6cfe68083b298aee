//! The reader reads a savepoint of an older program with the newer program's descriptors:
//! codecs that migrate ([`EvolvingCodec`]) convert keyed and operator state as they are
//! read; a codec that does not read the stored schema is refused, naming both. With the
//! writer, that migrates a savepoint offline (Flink's State Processor API use for schema
//! changes): the rewritten savepoint holds only the new schema.

mod common;

use cairn_core::{
    BincodeCodec, Codec, EvolvingCodec, KeyedStateBackend, OperatorListStateDescriptor,
    Redistribution, ValueStateDescriptor, ValueStateId,
};
use cairn_state_processor::{KeyedStateBootstrapFunction, SavepointReader, SavepointWriter};
use common::*;

/// The newer program's count: the old `u64` and whether it is even.
type Count = (u64, bool);

fn count_codec() -> EvolvingCodec<Count> {
    EvolvingCodec::new(BincodeCodec::<Count>::named("Count", 2))
        .migrates_from(BincodeCodec::<u64>::new(), |n: u64| {
            (n, n.is_multiple_of(2))
        })
}

fn count_v2() -> ValueStateDescriptor<Count> {
    ValueStateDescriptor::with_codec("count", count_codec())
}

fn offsets_v2() -> OperatorListStateDescriptor<Count> {
    OperatorListStateDescriptor {
        name: "offsets".into(),
        codec: std::sync::Arc::new(count_codec()),
        mode: Redistribution::Split,
    }
}

/// Writes the new program's counts as they are.
struct SetCountV2;

impl KeyedStateBootstrapFunction for SetCountV2 {
    type Key = String;
    type In = (String, Count);
    type States = ValueStateId<Count, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
        b.register_value(&count_v2())
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        count: &Self::States,
        _key: &String,
        (_, c): (String, Count),
        b: &mut B,
    ) -> cairn_core::Result<()> {
        b.value_update(*count, &(), c)
    }
}

#[test]
fn an_old_savepoint_reads_and_rewrites_in_the_new_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = s(&dir.path().join("old"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator(
            "count",
            2,
            (0..40u64).map(|i| (format!("w{i}"), i * 3)),
            |(w, _)| w.clone(),
            SetCount::new(),
        )
        .expect("count")
        .with_operator_state(
            "count",
            2,
            &OperatorListStateDescriptor::<u64>::split("offsets"),
            vec![5, 6, 7],
        )
        .expect("offsets");
    writer.write(&old).expect("write");

    let reader = SavepointReader::open(&old).expect("open");
    let mut keyed = reader.keyed_state::<String>("count").expect("keyed");
    let mut counts = keyed.values(&count_v2()).expect("migrated values");
    counts.sort();
    let mut want: Vec<(String, Count)> = (0..40u64)
        .map(|i| (format!("w{i}"), (i * 3, (i * 3).is_multiple_of(2))))
        .collect();
    want.sort();
    assert_eq!(counts, want);
    let mut offsets = reader
        .read_operator_state("count", &offsets_v2())
        .expect("migrated operator state");
    offsets.sort();
    assert_eq!(offsets, [(5, false), (6, true), (7, false)]);

    // A codec that does not read the old schema is refused, naming both.
    let e = keyed
        .values(&ValueStateDescriptor::with_codec(
            "count",
            BincodeCodec::<Count>::named("Count", 2),
        ))
        .unwrap_err()
        .to_string();
    assert!(e.contains("u64@v1") && e.contains("Count@v2"), "{e}");

    // Rewritten offline, the savepoint holds the new schema only.
    let new = s(&dir.path().join("new"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    writer
        .with_keyed_operator("count", 3, counts.clone(), |(w, _)| w.clone(), SetCountV2)
        .expect("count")
        .with_operator_state("count", 3, &offsets_v2(), offsets.clone())
        .expect("offsets");
    writer.write(&new).expect("write");
    let reader = SavepointReader::open(&new).expect("open");
    let mut keyed = reader.keyed_state::<String>("count").expect("keyed");
    let mut again = keyed.values(&count_v2()).expect("values");
    again.sort();
    assert_eq!(again, counts);
    let plain = ValueStateDescriptor::<Count>::with_codec(
        "count",
        BincodeCodec::<Count>::named("Count", 2),
    );
    assert_eq!(
        plain.value.identity(),
        count_codec().identity(),
        "the new savepoint's identity is the current codec's"
    );
    let mut as_is = keyed.values(&plain).expect("the new schema reads as is");
    as_is.sort();
    assert_eq!(as_is, counts);
    assert!(keyed
        .values(&ValueStateDescriptor::<u64>::new("count"))
        .is_err());
}
