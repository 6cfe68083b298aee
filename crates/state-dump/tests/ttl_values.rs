//! States with a TTL (`cairn_core::TtlStateAccess`) in a heap backend's savepoint: `summary`
//! marks their codecs `(ttl)`, `entries` shows every value with its stamp (each list
//! element and map value its own), and a value too short for its stamp is a one-line error
//! naming the entry, exit 1, never a panic or a silent fallback. `verify` finds such values
//! in every snapshot kind it reads (canonical state files of heap and RocksDB checkpoints
//! and savepoints, native RocksDB checkpoints, changelog segments and what changelog
//! handles materialized), named as `entries` names them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_changelog::ChangelogBackend;
use cairn_core::{
    key_group_for_key, BincodeCodec, Codec, CodecError, CodecIdentity, FileArea, KeyGroupRange,
    KeyedData, KeyedStateBackend, ListStateDescriptor, ManualClock, MapStateDescriptor,
    StateAccess, StateTtlConfig, TtlCodec, TtlStateAccess, ValueStateDescriptor, BINCODE_V1,
};
use cairn_format::{
    decode_list, encode_list, ChangelogSegmentReader, EntryRef, FormatError, StateFileReader,
};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::CheckpointStorage;
use common::*;
use serde_json::{json, Value};

/// The clock when the first values are written.
const T0: u64 = 1_700_000_000_000;
/// When the second batch is written.
const T1: u64 = T0 + 1_000;

fn key(k: &str) -> Vec<u8> {
    BincodeCodec::<String>::new()
        .encode_to_vec(&k.to_string())
        .unwrap()
}

fn kg(k: &str) -> u64 {
    u64::from(key_group_for_key(&key(k), MAX_P))
}

fn ttl(clock: &Arc<ManualClock>) -> StateTtlConfig {
    StateTtlConfig::new(Duration::from_secs(60)).with_clock(clock.clone())
}

/// Writes three states with a TTL of one minute and a plain one, the clock at T0 then T1:
///
/// - `last_seen` (value, `String`): alice `login` at T0, bob `logout` at T1;
/// - `events` (list, `u64`): alice `[1 at T0, 2 at T1]`;
/// - `tags` (map, `String → u64`): alice `red → 1` at T0, `blue → 2` at T1;
/// - `count` (value, `u64`, no TTL): alice 2.
fn fill<B: KeyedStateBackend>(b: &mut B, clock: &Arc<ManualClock>) {
    clock.set(T0);
    let ttl = ttl(clock);
    let last_seen = b
        .register_value_with_ttl(&ValueStateDescriptor::<String>::new("last_seen"), &ttl)
        .unwrap();
    let events = b
        .register_list_with_ttl(&ListStateDescriptor::<u64>::new("events"), &ttl)
        .unwrap();
    let tags = b
        .register_map_with_ttl(&MapStateDescriptor::<String, u64>::new("tags"), &ttl)
        .unwrap();
    let count = b
        .register_value(&ValueStateDescriptor::<u64>::new("count"))
        .unwrap();

    b.set_current_key(&key("alice")).unwrap();
    b.ttl_value(&last_seen).update("login".into()).unwrap();
    b.ttl_list(&events).add(1).unwrap();
    b.ttl_map(&tags).put("red".into(), 1).unwrap();
    b.value(&count).update(2).unwrap();
    clock.set(T1);
    b.ttl_list(&events).add(2).unwrap();
    b.ttl_map(&tags).put("blue".into(), 2).unwrap();
    b.set_current_key(&key("bob")).unwrap();
    b.ttl_value(&last_seen).update("logout".into()).unwrap();
}

/// Savepoint 9 at `dir/sp` of operator `count` (parallelism 1, heap backend) with the
/// states of [`fill`]. Nothing has expired when the savepoint is taken (T1 is a second
/// after T0).
fn savepoint(dir: &Path) -> PathBuf {
    let clock = Arc::new(ManualClock::new(T0));
    let mut job = Job::new(1);
    fill(&mut job.subtasks[0].0, &clock);
    let sp = dir.join("sp");
    job.savepoint(&sp, 9);
    sp
}

fn entries(path: &Path, state: &str, extra: &[&str]) -> Run {
    let mut args = vec!["entries", s(path), "--uid", UID, "--state", state];
    args.extend_from_slice(extra);
    run(&args)
}

/// `{"ttl_stamped_ms": stamp, "value": value}`.
fn stamped(stamp: u64, value: Value) -> Value {
    json!({"ttl_stamped_ms": stamp, "value": value})
}

#[test]
fn the_manifest_stores_the_ttl_encoding_on_values_only() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint(dir.path());
    let m =
        cairn_format::decode_manifest(&std::fs::read(sp.join("_metadata")).unwrap(), "m").unwrap();
    let h = m.operators[0].subtasks[0].keyed.as_ref().unwrap();
    assert_eq!(h.key_codec.encoding, BINCODE_V1);
    let by_name = |n: &str| h.states.iter().find(|s| s.name == n).unwrap();
    for name in ["last_seen", "events", "tags"] {
        let st = by_name(name);
        assert_eq!(st.value.encoding, "cairn-ttl1+bincode1-fixint-le", "{name}");
        assert_eq!(st.namespace.encoding, BINCODE_V1, "{name}");
    }
    assert_eq!(
        by_name("tags").user_key.as_ref().unwrap().encoding,
        BINCODE_V1
    );
    assert_eq!(by_name("count").value.encoding, BINCODE_V1);
    // The inner codec's type name and version are kept.
    assert_eq!(
        by_name("last_seen").value.type_name,
        "alloc::string::String"
    );
    assert_eq!(by_name("events").value.type_name, "u64");
}

#[test]
fn summary_marks_the_codecs_of_states_with_a_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint(dir.path());
    let r = run(&["summary", s(&sp), "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let j = r.json();
    let op = &j["operators"][0];
    assert_eq!(op["entries"], 6, "{j}");
    let states: Vec<(String, String, String, Value)> = op["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                s["value"].as_str().unwrap().to_string(),
                s["user_key"].clone(),
            )
        })
        .collect();
    let st = |n: &str, k: &str, v: &str, uk: Value| (n.into(), k.into(), v.into(), uk);
    assert_eq!(
        states,
        vec![
            st("count", "value", "u64@v1", Value::Null),
            st("events", "list", "u64@v1 (ttl)", Value::Null),
            st(
                "last_seen",
                "value",
                "alloc::string::String@v1 (ttl)",
                Value::Null
            ),
            st(
                "tags",
                "map",
                "u64@v1 (ttl)",
                json!("alloc::string::String@v1")
            ),
        ]
    );
    let text = run(&["summary", s(&sp)]);
    assert_eq!(text.code, 0, "{text:?}");
    let line = text
        .stdout
        .lines()
        .find(|l| l.starts_with("last_seen "))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(
        line.ends_with("alloc::string::String@v1 (ttl)"),
        "{}",
        text.stdout
    );
}

#[test]
fn entries_show_each_value_with_its_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint(dir.path());

    let r = entries(&sp, "last_seen", &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut lines = r.lines();
    lines.sort_by_key(|l| l["key"].as_str().unwrap().to_string());
    assert_eq!(
        lines,
        vec![
            json!({"key": "alice", "namespace": null, "key_group": kg("alice"),
                   "value": stamped(T0, json!("login"))}),
            json!({"key": "bob", "namespace": null, "key_group": kg("bob"),
                   "value": stamped(T1, json!("logout"))}),
        ]
    );
    // The exact line: the stamp before the value, as `entries --json` documents it.
    let r = entries(&sp, "last_seen", &["--json", "--key", "alice"]);
    assert_eq!(
        r.stdout,
        format!(
            "{{\"key\":\"alice\",\"namespace\":null,\"value\":{{\"ttl_stamped_ms\":{T0},\"value\":\"login\"}},\"key_group\":{}}}\n",
            kg("alice")
        )
    );

    // Each list element carries its own stamp.
    let r = entries(&sp, "events", &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.lines(),
        vec![
            json!({"key": "alice", "namespace": null, "key_group": kg("alice"),
                    "value": [stamped(T0, json!(1)), stamped(T1, json!(2))]})
        ]
    );

    // Each map value carries its own; user keys are plain.
    let r = entries(&sp, "tags", &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut lines = r.lines();
    lines.sort_by_key(|l| l["user_key"].as_str().unwrap().to_string());
    assert_eq!(
        lines,
        vec![
            json!({"key": "alice", "namespace": null, "user_key": "blue",
                   "key_group": kg("alice"), "value": stamped(T1, json!(2))}),
            json!({"key": "alice", "namespace": null, "user_key": "red",
                   "key_group": kg("alice"), "value": stamped(T0, json!(1))}),
        ]
    );

    // A state without a TTL is shown as before.
    let r = entries(&sp, "count", &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.lines()[0]["value"], json!(2));

    // The table shows the same JSON in its VALUE column.
    let r = entries(&sp, "last_seen", &["--key", "bob"]);
    assert_eq!(r.code, 0, "{r:?}");
    let rows: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{}", r.stdout);
    assert!(rows[0].starts_with("KEY_GROUP") && rows[0].ends_with("VALUE"));
    assert!(
        rows[1].ends_with(&format!(r#"{{"ttl_stamped_ms":{T1},"value":"logout"}}"#)),
        "{}",
        r.stdout
    );
}

/// One entry of the savepoint: its key group, state index, key, namespace, user key and
/// value.
type Owned = (u32, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

/// A copy of the savepoint at `to` whose state file has `damage` applied to the value of
/// (`state`, `k`[, `user_key`]), the manifest's size and checksum of the file updated: a
/// value a writer got wrong, in a file whose checksums are all right.
fn damaged(
    sp: &Path,
    to: &Path,
    state: &str,
    k: &str,
    user_key: Option<&str>,
    damage: impl Fn(&[u8]) -> Vec<u8>,
) {
    copy_dir(sp, to);
    let mpath = to.join("_metadata");
    let mut m = cairn_format::decode_manifest(&std::fs::read(&mpath).unwrap(), "m").unwrap();
    let h = m.operators[0].subtasks[0].keyed.as_mut().unwrap();
    assert!(matches!(h.data, KeyedData::Canonical { .. }));
    let mut hits = 0;
    for f in h.files_mut() {
        assert_eq!(f.area, FileArea::Private);
        let path = to.join(&f.name);
        let r = StateFileReader::open(std::fs::read(&path).unwrap().into(), &f.name).unwrap();
        let index = r.states().iter().position(|s| s.name == state).unwrap() as u32;
        let mut all: Vec<Owned> = Vec::new();
        r.scan(KeyGroupRange::all(MAX_P), |e| -> Result<(), FormatError> {
            all.push((
                e.key_group,
                e.state,
                e.key.to_vec(),
                e.namespace.to_vec(),
                e.user_key.map(<[u8]>::to_vec),
                e.value.to_vec(),
            ));
            Ok(())
        })
        .unwrap();
        let mut w = cairn_format::StateFileWriter::new(r.states().to_vec()).unwrap();
        for (g, st, kb, ns, uk, v) in &mut all {
            if *st == index && *kb == key(k) && uk.as_deref() == user_key.map(key).as_deref() {
                *v = damage(v);
                hits += 1;
            }
            w.add(&EntryRef {
                key_group: *g,
                state: *st,
                key: kb,
                namespace: ns,
                user_key: uk.as_deref(),
                value: v,
            })
            .unwrap();
        }
        let bytes = w.finish().unwrap();
        f.size = bytes.len() as u64;
        f.crc32 = crc32fast::hash(&bytes);
        std::fs::write(&path, bytes).unwrap();
    }
    assert_eq!(hits, 1, "the entry to damage");
    std::fs::write(&mpath, cairn_format::encode_manifest(&m).unwrap()).unwrap();
}

#[test]
fn a_value_too_short_for_its_stamp_is_an_error_naming_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint(dir.path());

    // A value state's value cut to 5 bytes.
    let bad = dir.path().join("bad-value");
    damaged(&sp, &bad, "last_seen", "bob", None, |v| v[..5].to_vec());
    let r = entries(&bad, "last_seen", &["--json"]);
    r.assert_error(
        1,
        &[
            "damaged value of state last_seen: 5 bytes cannot hold the 8-byte timestamp of a value with a TTL",
            &format!("key_group={}", kg("bob")),
            r#"key="bob""#,
            "uid=count",
            &format!("path={}", s(&bad)),
        ],
    );
    // The table stops the same way, and so does a diff against the good savepoint.
    entries(&bad, "last_seen", &[]).assert_error(1, &["damaged value of state last_seen"]);
    run(&["diff", s(&sp), s(&bad)]).assert_error(
        1,
        &[
            "damaged value of state last_seen",
            &format!("path={}", s(&bad)),
        ],
    );
    // Other keys and states still dump (the file's checksums are all right).
    let r = entries(&bad, "last_seen", &["--json", "--key", "alice"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.lines()[0]["value"], stamped(T0, json!("login")));
    let r = entries(&bad, "count", &["--json"]);
    assert_eq!(r.code, 0, "{r:?}");

    // One list element cut to 3 bytes: the error says which.
    let bad = dir.path().join("bad-element");
    damaged(&sp, &bad, "events", "alice", None, |v| {
        let elements = decode_list(v).unwrap();
        let mut out = Vec::new();
        encode_list([elements[0], &elements[1][..3]], &mut out);
        out
    });
    entries(&bad, "events", &["--json"]).assert_error(
        1,
        &[
            "damaged value of state events: list element 1 of 2: 3 bytes cannot hold the 8-byte timestamp",
            r#"key="alice""#,
        ],
    );

    // A map value emptied: the error names the user key.
    let bad = dir.path().join("bad-map-value");
    damaged(&sp, &bad, "tags", "alice", Some("red"), |_| Vec::new());
    entries(&bad, "tags", &["--json"]).assert_error(
        1,
        &[
            "damaged value of state tags: 0 bytes cannot hold the 8-byte timestamp",
            r#"user_key="red""#,
            r#"key="alice""#,
        ],
    );
}

/// The decoder reads the golden TTL vectors of `format-spec/vectors/` as the spec says.
#[test]
fn the_golden_ttl_vectors_decode() {
    let codec = cairn_core::TtlCodec::new(Arc::new(BincodeCodec::<String>::new()));
    let d = state_dump::Decoder::for_codec(codec.identity());
    assert!(d.has_ttl() && d.has_schema());
    let bytes = std::fs::read(vectors().join("ttl-value.bin")).unwrap();
    assert_eq!(
        d.decode(&bytes).unwrap(),
        stamped(1_700_000_000_123, json!("last seen"))
    );
    let bytes = std::fs::read(vectors().join("ttl-list-value.bin")).unwrap();
    let elements: Vec<Value> = decode_list(&bytes)
        .unwrap()
        .into_iter()
        .map(|e| d.decode(e).unwrap())
        .collect();
    assert_eq!(
        elements,
        vec![
            stamped(1_700_000_000_000, json!("first")),
            stamped(1_700_000_060_000, json!("second")),
            stamped(1_700_000_000_000, json!("")),
        ]
    );
    let short = std::fs::read(vectors().join("corrupt/ttl-value-short")).unwrap();
    assert_eq!(
        d.decode(&short).unwrap_err(),
        "7 bytes cannot hold the 8-byte timestamp of a value with a TTL"
    );
}

/// `verify --json` of `path`: the run and its findings as (path, problem).
fn verify(path: &Path) -> (Run, Vec<(String, String)>) {
    let r = run(&["verify", s(path), "--json"]);
    let findings = r.json()["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("{r:?}"))
        .iter()
        .map(|f| {
            assert_eq!(f["offset"], Value::Null, "{f}");
            (
                f["path"].as_str().unwrap().to_string(),
                f["problem"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (r, findings)
}

/// The one state file of a savepoint with one subtask.
fn state_file(sp: &Path) -> PathBuf {
    let m =
        cairn_format::decode_manifest(&std::fs::read(sp.join("_metadata")).unwrap(), "m").unwrap();
    let h = m.operators[0].subtasks[0].keyed.as_ref().unwrap();
    let files: Vec<_> = h.files().collect();
    assert_eq!(files.len(), 1, "{h:?}");
    sp.join(&files[0].name)
}

/// Verifies a copy of the savepoint at `sp` with the value of (`state`, `k`[, `user_key`])
/// damaged (see [`damaged`]): one finding, `problem` in the state file, which is also what
/// `entries` says of the value.
fn verify_damaged(
    sp: &Path,
    bad: &Path,
    (state, k, user_key): (&str, &str, Option<&str>),
    damage: impl Fn(&[u8]) -> Vec<u8>,
    problem: &str,
) {
    damaged(sp, bad, state, k, user_key, damage);
    let (r, findings) = verify(bad);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(
        r.stderr,
        format!("state-dump: verify found 1 problem(s) path={}\n", s(bad))
    );
    // The state file (its checksums are all right), and the entry as `entries` names it.
    let file = s(&state_file(bad)).to_string();
    assert_eq!(findings, vec![(file.clone(), problem.to_string())]);
    entries(bad, state, &["--json"]).assert_error(1, &[problem]);
    // The table shows the same.
    let text = run(&["verify", s(bad)]);
    assert_eq!(text.code, 1, "{text:?}");
    let row = text
        .stdout
        .lines()
        .find(|l| l.starts_with(&file))
        .unwrap_or_else(|| panic!("{}", text.stdout));
    assert!(row.ends_with(problem), "{}", text.stdout);
}

#[test]
fn verify_names_a_value_too_short_for_its_stamp_as_entries_does() {
    let dir = tempfile::tempdir().unwrap();
    let sp = savepoint(dir.path());
    let (r, findings) = verify(&sp);
    assert_eq!((r.code, findings.len()), (0, 0), "{r:?}");
    assert_eq!(r.json()["entries"], 6, "{r:?}");

    // A value state's value cut to 5 bytes.
    verify_damaged(
        &sp,
        &dir.path().join("bad-value"),
        ("last_seen", "bob", None),
        |v| v[..5].to_vec(),
        &format!(
            "damaged value of state last_seen: 5 bytes cannot hold the 8-byte timestamp of a value with a TTL key_group={} key=\"bob\" uid=count",
            kg("bob")
        ),
    );
    // One list element cut to 3 bytes.
    verify_damaged(
        &sp,
        &dir.path().join("bad-element"),
        ("events", "alice", None),
        |v| {
            let elements = decode_list(v).unwrap();
            let mut out = Vec::new();
            encode_list([elements[0], &elements[1][..3]], &mut out);
            out
        },
        &format!(
            "damaged value of state events: list element 1 of 2: 3 bytes cannot hold the 8-byte timestamp of a value with a TTL key_group={} key=\"alice\" uid=count",
            kg("alice")
        ),
    );
    // A map value emptied.
    verify_damaged(
        &sp,
        &dir.path().join("bad-map-value"),
        ("tags", "alice", Some("red")),
        |_| Vec::new(),
        &format!(
            "damaged value of state tags: 0 bytes cannot hold the 8-byte timestamp of a value with a TTL key_group={} key=\"alice\" user_key=\"red\" uid=count",
            kg("alice")
        ),
    );
}

/// Stores the bytes it is given under the identity of the TTL codec of a default codec: a
/// writer that may get the stamp wrong.
struct Forged(CodecIdentity);

impl Forged {
    fn of<V: 'static>(inner: BincodeCodec<V>) -> Arc<Self>
    where
        BincodeCodec<V>: Codec<V>,
    {
        Arc::new(Self(TtlCodec::new(Arc::new(inner)).identity().clone()))
    }
}

impl Codec<Vec<u8>> for Forged {
    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }

    fn identity(&self) -> &CodecIdentity {
        &self.0
    }
}

/// A sound TTL value: the stamp T0, then `value` in `codec`.
fn stamped_bytes<V>(codec: BincodeCodec<V>, value: &V) -> Vec<u8>
where
    BincodeCodec<V>: Codec<V>,
{
    let mut out = T0.to_le_bytes().to_vec();
    out.extend(codec.encode_to_vec(value).unwrap());
    out
}

/// Beside the states of [`fill`], the three kinds written through [`Forged`] codecs, as a
/// writer that gets the stamp wrong would (sound values unless `short`):
///
/// - `forged_value` (`String`): alice sound, bob 5 bytes and carol 2 bytes;
/// - `forged_events` (list, `u64`): alice a sound element, then a 3-byte one;
/// - `forged_tags` (map, `String → u64`): alice `blue` sound, `red` empty.
fn forge<B: KeyedStateBackend>(b: &mut B, short: bool) {
    let string = || BincodeCodec::<String>::new();
    let number = || BincodeCodec::<u64>::new();
    let value = b
        .register_value(&ValueStateDescriptor {
            name: "forged_value".into(),
            value: Forged::of(string()),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        })
        .unwrap();
    let events = b
        .register_list(&ListStateDescriptor {
            name: "forged_events".into(),
            element: Forged::of(number()),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        })
        .unwrap();
    let tags = b
        .register_map(&MapStateDescriptor {
            name: "forged_tags".into(),
            user_key: Arc::new(string()),
            value: Forged::of(number()),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        })
        .unwrap();
    let cut = |v: Vec<u8>, len: usize| if short { v[..len].to_vec() } else { v };
    b.set_current_key(&key("alice")).unwrap();
    b.value(&value)
        .update(stamped_bytes(string(), &"ok".to_string()))
        .unwrap();
    b.list(&events).add(stamped_bytes(number(), &1)).unwrap();
    b.list(&events)
        .add(cut(stamped_bytes(number(), &2), 3))
        .unwrap();
    b.map(&tags)
        .put("blue".into(), stamped_bytes(number(), &2))
        .unwrap();
    b.map(&tags)
        .put("red".into(), cut(stamped_bytes(number(), &1), 0))
        .unwrap();
    for (k, len) in [("bob", 5), ("carol", 2)] {
        b.set_current_key(&key(k)).unwrap();
        b.value(&value)
            .update(cut(stamped_bytes(string(), &k.to_string()), len))
            .unwrap();
    }
}

/// A later write for an incremental checkpoint: dave's `last_seen`.
fn touch<B: KeyedStateBackend>(b: &mut B, clock: &Arc<ManualClock>) {
    let last_seen = b
        .register_value_with_ttl(
            &ValueStateDescriptor::<String>::new("last_seen"),
            &ttl(clock),
        )
        .unwrap();
    b.set_current_key(&key("dave")).unwrap();
    b.ttl_value(&last_seen).update("idle".into()).unwrap();
}

/// Where `verify` names a short value.
#[derive(Clone, Copy, Debug)]
enum Found {
    /// The canonical state file that holds it.
    StateFile,
    /// The changelog segment whose record holds it.
    Segment,
    /// The snapshot (a native RocksDB handle's files are merged: no single file).
    Snapshot,
}

/// Materializes the (one) subtask and waits until it has finished.
fn materialize<B: KeyedStateBackend>(b: &mut ChangelogBackend<B>) {
    b.materialize_now().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while b.is_materializing() {
        assert!(Instant::now() < deadline, "materialization did not finish");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(b.last_materialization_error(), None);
}

/// The data kind of the (one) keyed handle of the snapshot at `path`, and of what a
/// changelog handle materialized.
fn data_kinds(path: &Path) -> (String, Vec<String>) {
    let m = cairn_format::decode_manifest(&std::fs::read(path.join("_metadata")).unwrap(), "m")
        .unwrap();
    let h = m.operators[0].subtasks[0].keyed.as_ref().unwrap();
    let kind = |d: &KeyedData| {
        match d {
            KeyedData::Canonical { .. } => "canonical",
            KeyedData::RocksNative { .. } => "native",
            KeyedData::Changelog { .. } => "changelog",
            _ => "other",
        }
        .to_string()
    };
    let materialized = match &h.data {
        KeyedData::Changelog { materialized, .. } => {
            materialized.iter().map(|m| kind(&m.data)).collect()
        }
        _ => Vec::new(),
    };
    (kind(&h.data), materialized)
}

/// One snapshot of each kind `verify` reads, all holding the states of [`fill`] and
/// [`forge`] (parallelism 1): (what, path, where a short value is named).
fn every_kind(dir: &Path, short: bool) -> Vec<(&'static str, PathBuf, Found)> {
    let clock = Arc::new(ManualClock::new(T0));
    let mut out = Vec::new();

    // Heap: a savepoint, a full checkpoint and an incremental one after it.
    let root = dir.join("heap");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut heap = Job::new(1);
    fill(&mut heap.subtasks[0].0, &clock);
    forge(&mut heap.subtasks[0].0, short);
    heap.savepoint(&dir.join("heap-sp"), 9);
    out.push(("heap savepoint", dir.join("heap-sp"), Found::StateFile));
    heap.checkpoint(&storage, 1, false);
    out.push(("heap full checkpoint", root.join("chk-1"), Found::StateFile));
    touch(&mut heap.subtasks[0].0, &clock);
    heap.checkpoint(&storage, 2, true);
    out.push((
        "heap incremental checkpoint",
        root.join("chk-2"),
        Found::StateFile,
    ));

    // RocksDB: a native incremental checkpoint and a savepoint.
    let root = dir.join("rocks");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut rocks = Job::rocks(1, &dir.join("rocks-local"), RocksDbOptions::default());
    fill(&mut rocks.subtasks[0].0, &clock);
    forge(&mut rocks.subtasks[0].0, short);
    rocks.checkpoint(&storage, 1, true);
    out.push((
        "rocksdb native checkpoint",
        root.join("chk-1"),
        Found::Snapshot,
    ));
    rocks.savepoint(&dir.join("rocks-sp"), 9);
    out.push(("rocksdb savepoint", dir.join("rocks-sp"), Found::StateFile));

    // Changelog over the heap backend: the values in segments only, then materialized.
    let root = dir.join("changelog");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let mut job = Job::heap_changelog(1, &storage);
    fill(&mut job.subtasks[0].0, &clock);
    forge(&mut job.subtasks[0].0, short);
    job.checkpoint(&storage, 1, true);
    out.push(("changelog segments", root.join("chk-1"), Found::Segment));
    materialize(&mut job.subtasks[0].0);
    job.checkpoint(&storage, 2, true);
    out.push((
        "changelog materialized on the heap",
        root.join("chk-2"),
        Found::StateFile,
    ));

    // Changelog over RocksDB, materialized: a native handle.
    let root = dir.join("changelog-rocks");
    let storage = CheckpointStorage::open(s(&root)).unwrap();
    let local = dir.join("changelog-rocks-local");
    let mut job = Job::with(1, |range, key| {
        let rocks = RocksDbBackend::new(RocksDbConfig {
            uid: UID.into(),
            max_parallelism: MAX_P,
            key_group_range: range,
            key_codec: key.identity().clone(),
            local_dir: local.clone(),
            options: RocksDbOptions::default(),
        })
        .unwrap();
        small_changelog(rocks, key, &storage)
    });
    fill(&mut job.subtasks[0].0, &clock);
    forge(&mut job.subtasks[0].0, short);
    materialize(&mut job.subtasks[0].0);
    job.checkpoint(&storage, 1, true);
    out.push((
        "changelog materialized in RocksDB",
        root.join("chk-1"),
        Found::Snapshot,
    ));
    out
}

#[test]
fn verify_passes_sound_ttl_values_in_every_snapshot_kind() {
    let dir = tempfile::tempdir().unwrap();
    let kinds = every_kind(dir.path(), false);
    let seen: Vec<(String, Vec<String>)> = kinds.iter().map(|(_, p, _)| data_kinds(p)).collect();
    assert_eq!(
        seen,
        [
            ("canonical", vec![]),
            ("canonical", vec![]),
            ("canonical", vec![]),
            ("native", vec![]),
            ("canonical", vec![]),
            ("changelog", vec![]),
            ("changelog", vec!["canonical"]),
            ("changelog", vec!["native"]),
        ]
        .map(|(k, m)| (k.to_string(), m.into_iter().map(String::from).collect()))
    );
    for (what, path, _) in &kinds {
        let (r, findings) = verify(path);
        assert_eq!((r.code, findings), (0, vec![]), "{what}: {r:?}");
        assert!(r.json()["entries"].as_u64() > Some(0), "{what}: {r:?}");
    }
}

#[test]
fn verify_finds_values_too_short_for_their_stamp_in_every_snapshot_kind() {
    let dir = tempfile::tempdir().unwrap();
    for (what, path, found) in every_kind(dir.path(), true) {
        let (r, findings) = verify(&path);
        assert_eq!(r.code, 1, "{what}: {r:?}");
        r.assert_error(1, &["verify found", &format!("path={}", s(&path))]);
        // Per state: the short values counted, and the one named by each finding.
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        for (file, problem) in &findings {
            let state = problem
                .strip_prefix("damaged value of state ")
                .and_then(|p| p.split_once(':'))
                .map(|(st, _)| st.to_string())
                .unwrap_or_else(|| panic!("{what}: {problem}"));
            assert!(
                problem.contains(" bytes cannot hold the 8-byte timestamp of a value with a TTL "),
                "{what}: {problem}"
            );
            assert!(problem.contains(" uid=count"), "{what}: {problem}");
            let named = |k: &str| problem.contains(&format!("key_group={} key=\"{k}\"", kg(k)));
            match state.as_str() {
                "forged_value" => assert!(named("bob") || named("carol"), "{what}: {problem}"),
                "forged_events" => assert!(
                    named("alice") && problem.contains(": 3 bytes cannot hold"),
                    "{what}: {problem}"
                ),
                "forged_tags" => assert!(
                    named("alice") && problem.contains(r#"user_key="red""#),
                    "{what}: {problem}"
                ),
                _ => panic!("{what}: a finding about a sound state: {problem}"),
            }
            let n = problem
                .split_once(" short_values=")
                .map_or(1, |(_, n)| n.parse().unwrap());
            *counted.entry(state).or_default() += n;
            // Where the value is.
            let bytes = || std::fs::read(file).unwrap_or_else(|e| panic!("{what}: {file}: {e}"));
            match found {
                Found::StateFile => {
                    StateFileReader::open(bytes().into(), file)
                        .unwrap_or_else(|e| panic!("{what}: {file}: {e}"));
                }
                Found::Segment => {
                    ChangelogSegmentReader::open(bytes().into(), file)
                        .unwrap_or_else(|e| panic!("{what}: {file}: {e}"));
                }
                Found::Snapshot => assert_eq!(file, s(&path), "{what}"),
            }
        }
        let want: BTreeMap<String, u64> = [
            ("forged_events", 1),
            ("forged_tags", 1),
            ("forged_value", 2),
        ]
        .map(|(st, n)| (st.to_string(), n))
        .into();
        assert_eq!(counted, want, "{what}: {findings:?}");
    }
}
