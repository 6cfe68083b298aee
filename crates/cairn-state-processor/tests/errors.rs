//! Every refusal of the reader and the writer is an error (never a panic) that names what
//! and where: the uid, the state, the descriptor's and the stored identity, the savepoint's
//! path, the damaged file.

mod common;

use cairn_core::{
    KeyedStateBackend, ListStateDescriptor, OperatorListStateDescriptor, StateError,
    ValueStateDescriptor, ValueStateId,
};
use cairn_state_processor::{
    KeyedStateBootstrapFunction, SavepointReader, SavepointWriter, StateProcessorError,
};
use common::*;

/// A savepoint with a keyed operator `count` (String keys, `count` u64 at parallelism 2)
/// and an operator `src` with split state `offsets` (u64) and union state `shared`.
fn savepoint(dir: &std::path::Path) -> String {
    let path = s(&dir.join("sp"));
    let mut writer = SavepointWriter::new(128).expect("writer");
    let words = (0..50).map(|i| (format!("w{i}"), i));
    writer
        .with_keyed_operator("count", 2, words, |(w, _)| w.clone(), SetCount::new())
        .expect("count")
        .with_operator_state(
            "src",
            2,
            &OperatorListStateDescriptor::<u64>::split("offsets"),
            vec![1, 2, 3],
        )
        .expect("offsets")
        .with_operator_state(
            "src",
            2,
            &OperatorListStateDescriptor::<u64>::union("shared"),
            vec![4],
        )
        .expect("shared");
    writer.write(&path).expect("write");
    path
}

fn message<T: std::fmt::Debug>(r: Result<T, StateProcessorError>) -> (StateProcessorError, String) {
    let e = r.expect_err("an error");
    let m = e.to_string();
    (e, m)
}

fn contains_all(m: &str, parts: &[&str]) {
    for p in parts {
        assert!(m.contains(p), "{p:?} is not in the message: {m}");
    }
}

#[test]
fn reader_refusals_name_what_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = savepoint(dir.path());
    let reader = SavepointReader::open(&path).expect("open");

    // No savepoint there.
    let missing = s(&dir.path().join("nothing"));
    let (e, m) = message(SavepointReader::open(&missing));
    assert!(matches!(e, StateProcessorError::Open { .. }), "{e:?}");
    contains_all(&m, &[&missing, "_metadata"]);

    // Unknown uid: names it, the savepoint and what it has.
    let (e, m) = message(reader.keyed_state::<String>("counter"));
    assert!(
        matches!(e, StateProcessorError::UnknownOperator { .. }),
        "{e:?}"
    );
    assert_eq!(
        m,
        format!("operator counter is not in savepoint {path}; it has: count, src")
    );
    let (_, m) = message(reader.operator("counter"));
    contains_all(&m, &["counter", &path, "count, src"]);

    // Unknown keyed state name.
    let mut keyed = reader.keyed_state::<String>("count").expect("keyed");
    let (e, m) = message(keyed.values(&ValueStateDescriptor::<u64>::new("total")));
    assert!(
        matches!(e, StateProcessorError::UnknownState { .. }),
        "{e:?}"
    );
    assert_eq!(
        m,
        format!("operator count in savepoint {path} has no keyed state total; it has: count")
    );

    // Another value codec: both identities named.
    let (e, m) = message(keyed.values(&ValueStateDescriptor::<String>::new("count")));
    assert!(
        matches!(
            &e,
            StateProcessorError::Incompatible { source, .. }
                if matches!(**source, StateError::IncompatibleCodec { .. })
        ),
        "{e:?}"
    );
    contains_all(
        &m,
        &[
            "state count of operator count",
            &path,
            "stored u64@v1 (bincode1-fixint-le)",
            "registered alloc::string::String@v1 (bincode1-fixint-le)",
        ],
    );

    // Another kind.
    let (e, m) = message(keyed.lists(&ListStateDescriptor::<u64>::new("count")));
    assert!(
        matches!(
            &e,
            StateProcessorError::Incompatible { source, .. }
                if matches!(**source, StateError::IncompatibleKind { .. })
        ),
        "{e:?}"
    );
    contains_all(&m, &["count", &path, "Value", "List"]);

    // A key codec that is not the stored one.
    let (e, m) = message(reader.keyed_state::<u64>("count"));
    assert!(matches!(e, StateProcessorError::KeyCodec { .. }), "{e:?}");
    assert_eq!(
        m,
        format!(
            "the key codec of operator count does not match savepoint {path}: stored \
             alloc::string::String@v1 (bincode1-fixint-le), given u64@v1 (bincode1-fixint-le)"
        )
    );

    // Keyed state of an operator that has none.
    let mut none = reader.keyed_state::<String>("src").expect("no keyed state");
    let (_, m) = message(none.values(&ValueStateDescriptor::<u64>::new("count")));
    assert_eq!(
        m,
        format!("operator src in savepoint {path} has no keyed state count; it has: (none)")
    );

    // Operator state: unknown name, other mode, other codec.
    let (_, m) = message(
        reader.read_operator_state("src", &OperatorListStateDescriptor::<u64>::split("next")),
    );
    assert_eq!(
        m,
        format!(
            "operator src in savepoint {path} has no operator state next; it has: offsets, shared"
        )
    );
    let (e, m) = message(
        reader.read_operator_state("src", &OperatorListStateDescriptor::<u64>::union("offsets")),
    );
    assert!(
        matches!(e, StateProcessorError::ModeMismatch { .. }),
        "{e:?}"
    );
    contains_all(&m, &["offsets", "src", &path, "Split", "Union"]);
    let (_, m) = message(
        reader.read_operator_state("src", &OperatorListStateDescriptor::<i32>::split("offsets")),
    );
    contains_all(&m, &["offsets", "src", &path, "u64@v1", "i32@v1"]);
    let (_, m) = message(
        reader.read_operator_state("count", &OperatorListStateDescriptor::<u64>::split("x")),
    );
    contains_all(
        &m,
        &["operator count", &path, "no operator state x", "(none)"],
    );
}

#[test]
fn a_damaged_state_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = savepoint(dir.path());
    let files = files_ending(&dir.path().join("sp"), ".cst");
    assert_eq!(files.len(), 2, "one state file per subtask: {files:?}");
    flip_a_byte(&files[1]);
    let name = files[1]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    let reader = SavepointReader::open(&path).expect("the manifest is intact");
    let (e, m) = message(reader.keyed_state::<String>("count"));
    assert!(matches!(e, StateProcessorError::Read { .. }), "{e:?}");
    contains_all(&m, &["operator count", &path, &name, "checksum"]);

    // Copying it into a new savepoint fails the same way, and publishes nothing.
    let copy = s(&dir.path().join("copy"));
    let (e, m) = message(
        SavepointWriter::from_existing(&path)
            .expect("writer")
            .write(&copy),
    );
    assert!(matches!(e, StateProcessorError::Read { .. }), "{e:?}");
    contains_all(&m, &["operator count", &path, &name]);
    assert!(
        !dir.path().join("copy").exists(),
        "a failed write deletes what it wrote, the directory included: {:?}",
        files_ending(&dir.path().join("copy"), "")
    );
    let (_, m) = message(SavepointReader::open(&copy));
    contains_all(&m, &[&copy, "_metadata"]);
}

#[test]
fn a_damaged_manifest_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = savepoint(dir.path());
    let manifest = dir.path().join("sp").join("_metadata");
    flip_a_byte(&manifest);
    let (e, m) = message(SavepointReader::open(&path));
    assert!(matches!(e, StateProcessorError::Open { .. }), "{e:?}");
    contains_all(&m, &[&s(&manifest), "corrupt"]);
    let (_, m) = message(SavepointWriter::from_existing(&path));
    contains_all(&m, &[&s(&manifest)]);
}

/// Fails at the record with value 13.
struct FailAt13;

impl KeyedStateBootstrapFunction for FailAt13 {
    type Key = u32;
    type In = u32;
    type States = ValueStateId<u32, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
        b.register_value(&ValueStateDescriptor::<u32>::new("v"))
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        v: &Self::States,
        _key: &u32,
        record: u32,
        b: &mut B,
    ) -> cairn_core::Result<()> {
        if record == 13 {
            return Err(StateError::layer(
                "checking the record",
                "unlucky record=13",
            ));
        }
        b.value_update(*v, &(), record)
    }
}

#[test]
fn writer_refusals_name_what_and_where() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = savepoint(dir.path());

    for bad in [0, 32769] {
        let (e, m) = message(SavepointWriter::new(bad));
        assert!(
            matches!(e, StateProcessorError::InvalidMaxParallelism { .. }),
            "{e:?}"
        );
        contains_all(&m, &[&bad.to_string(), "1..=32768"]);
    }

    let mut w = SavepointWriter::new(8).expect("writer");
    for p in [0, 9] {
        let (e, m) = message(
            w.with_keyed_operator("count", p, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
                .map(|_| ()),
        );
        assert!(
            matches!(e, StateProcessorError::InvalidParallelism { .. }),
            "{e:?}"
        );
        contains_all(&m, &["count", &format!("parallelism {p}"), "1..=8"]);
        let (_, m) = message(
            w.with_operator_state(
                "src",
                p,
                &OperatorListStateDescriptor::<u64>::split("o"),
                vec![],
            )
            .map(|_| ()),
        );
        contains_all(&m, &["src", &format!("parallelism {p}")]);
    }
    let (e, _) = message(
        w.with_keyed_operator("", 1, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
            .map(|_| ()),
    );
    assert!(matches!(e, StateProcessorError::InvalidUid { .. }), "{e:?}");

    // A uid twice: keyed state twice, operator state twice, another parallelism.
    w.with_keyed_operator("count", 2, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
        .expect("count");
    let (e, m) = message(
        w.with_keyed_operator("count", 2, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
            .map(|_| ()),
    );
    assert!(
        matches!(e, StateProcessorError::DuplicateOperator { .. }),
        "{e:?}"
    );
    contains_all(&m, &["operator count", "bootstrapped keyed state"]);
    let offsets = OperatorListStateDescriptor::<u64>::split("offsets");
    w.with_operator_state("src", 2, &offsets, vec![1])
        .expect("offsets");
    let (e, m) = message(
        w.with_operator_state("src", 2, &offsets, vec![2])
            .map(|_| ()),
    );
    assert!(
        matches!(e, StateProcessorError::DuplicateState { .. }),
        "{e:?}"
    );
    contains_all(&m, &["offsets", "src"]);
    let (e, m) = message(
        w.with_operator_state(
            "src",
            3,
            &OperatorListStateDescriptor::<u64>::split("more"),
            vec![],
        )
        .map(|_| ()),
    );
    assert!(
        matches!(e, StateProcessorError::ParallelismMismatch { .. }),
        "{e:?}"
    );
    contains_all(&m, &["src", "parallelism 2", "not 3"]);
    let (e, m) = message(
        w.with_keyed_operator("src", 3, vec![(1u32, 1u64)], |r| r.0, SetCount::new())
            .map(|_| ()),
    );
    assert!(
        matches!(e, StateProcessorError::ParallelismMismatch { .. }),
        "{e:?}"
    );
    contains_all(&m, &["src", "parallelism 2", "not 3"]);

    // A name the runtime reserves.
    let (e, m) = message(
        w.with_operator_state(
            "src",
            2,
            &OperatorListStateDescriptor::<u64>::split("cairn.x"),
            vec![],
        )
        .map(|_| ()),
    );
    assert!(matches!(e, StateProcessorError::Bootstrap { .. }), "{e:?}");
    contains_all(&m, &["cairn.x", "src", "reserved"]);

    // A bootstrap function's failure, with the uid.
    let (e, m) = message(
        w.with_keyed_operator("fails", 2, 0..20u32, |r| *r, FailAt13)
            .map(|_| ()),
    );
    assert!(matches!(e, StateProcessorError::Bootstrap { .. }), "{e:?}");
    contains_all(&m, &["operator fails", "unlucky record=13"]);

    // Renames and removals of what is not there, renames onto what is.
    let (e, m) = message(w.remove_operator("nope").map(|_| ()));
    assert!(
        matches!(e, StateProcessorError::UnknownOperator { .. }),
        "{e:?}"
    );
    assert_eq!(
        m,
        "operator nope is not in the savepoint being written; it has: count, src"
    );
    let (_, m) = message(w.change_uid("nope", "other").map(|_| ()));
    contains_all(&m, &["operator nope", "count, src"]);
    let (e, m) = message(w.change_uid("count", "src").map(|_| ()));
    assert!(
        matches!(e, StateProcessorError::DuplicateOperator { .. }),
        "{e:?}"
    );
    contains_all(&m, &["operator src", "bootstrapped operator state"]);
    let (e, _) = message(w.change_uid("count", "").map(|_| ()));
    assert!(matches!(e, StateProcessorError::InvalidUid { .. }), "{e:?}");
    assert_eq!(
        w.uids(),
        ["count", "src"],
        "refusals leave the writer unchanged"
    );

    // From an existing savepoint: its uids are taken until removed.
    let mut existing = SavepointWriter::from_existing(&path).expect("from existing");
    let (e, m) = message(
        existing
            .with_keyed_operator(
                "count",
                2,
                vec![("a".to_string(), 1u64)],
                |r| r.0.clone(),
                SetCount::new(),
            )
            .map(|_| ()),
    );
    assert!(
        matches!(e, StateProcessorError::DuplicateOperator { .. }),
        "{e:?}"
    );
    contains_all(&m, &["operator count", &format!("from savepoint {path}")]);
    let (_, m) = message(
        existing
            .with_operator_state(
                "src",
                2,
                &OperatorListStateDescriptor::<u64>::split("new"),
                vec![],
            )
            .map(|_| ()),
    );
    contains_all(&m, &["operator src", &path]);
    existing.change_uid("src", "source").expect("rename");
    let (_, m) = message(existing.change_uid("count", "source").map(|_| ()));
    contains_all(
        &m,
        &["operator source", "operator src from savepoint", &path],
    );

    // Never written over a savepoint, the one it came from included; nothing changes there.
    let before = std::fs::read(dir.path().join("sp").join("_metadata")).expect("manifest");
    let (e, m) = message(existing.write(&path));
    assert!(
        matches!(e, StateProcessorError::SavepointExists { .. }),
        "{e:?}"
    );
    contains_all(&m, &[&path, "already exists"]);
    assert_eq!(
        std::fs::read(dir.path().join("sp").join("_metadata")).expect("manifest"),
        before
    );
    let (e, _) = message(w.write(&path));
    assert!(
        matches!(e, StateProcessorError::SavepointExists { .. }),
        "{e:?}"
    );
}
