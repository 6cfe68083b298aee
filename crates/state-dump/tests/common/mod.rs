//! Test helpers: running the binary, and a small keyed job on the heap or the RocksDB
//! backend whose checkpoints and savepoints the tests inspect, with a model of what it
//! wrote.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use cairn_core::{
    key_group_for_key, subtask_for_key_group, BincodeCodec, CancelToken, Codec, KeyGroupRange,
    ListStateDescriptor, MapStateDescriptor, OperatorStateBackend, SnapshotOptions, SnapshotSource,
    SnapshotType, StateAccess, ValueStateDescriptor,
};
use cairn_format::Manifest;
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_rocksdb::{RocksDbBackend, RocksDbConfig, RocksDbOptions};
use cairn_storage::{
    assemble_manifest, restore_subtask, snapshot_operator, write_savepoint, CheckpointStorage,
    SubtaskRef,
};
use serde_json::Value;

pub const UID: &str = "count";
pub const MAX_P: u32 = 16;

/// A changelog backend around `inner` with small segments (600 bytes) that materializes
/// only when asked (`materialize_now`) or when the log is large.
pub fn small_changelog<B: cairn_core::KeyedStateBackend>(
    inner: B,
    key: &BincodeCodec<String>,
    storage: &CheckpointStorage,
) -> cairn_changelog::ChangelogBackend<B> {
    let mut config = cairn_changelog::ChangelogConfig::new(UID, key.identity().clone());
    config.options.segment_bytes = 600;
    config.options.min_log_bytes = 1 << 30;
    config.options.materialization_interval = None;
    cairn_changelog::ChangelogBackend::new(inner, config, std::sync::Arc::new(storage.clone()))
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The stdout as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
    /// The stdout as JSON lines.
    pub fn lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
    /// Asserts a failure with `code` and a one-line stderr containing every needle.
    pub fn assert_error(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr is not one line: {self:?}");
        assert!(lines[0].starts_with("state-dump: "), "{self:?}");
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}: {self:?}");
        }
    }
}

/// Runs the binary with `args`; asserts it did not panic.
pub fn run(args: &[&str]) -> Run {
    run_env(args, &[])
}

/// Runs the binary with `args` and environment variables `env`; asserts it did not panic.
pub fn run_env(args: &[&str], env: &[(&str, &Path)]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_state-dump"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run state-dump");
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !r.stderr.contains("panicked") && r.code != 101,
        "state-dump panicked: {r:?}"
    );
    r
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../format-spec/vectors")
}

/// Copies a directory (flat) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// One key's state in the model: count, events, tags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyState {
    pub count: Option<u64>,
    pub events: Vec<u64>,
    pub tags: BTreeMap<String, u64>,
}

pub type Model = BTreeMap<String, KeyState>;

fn count_desc() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("count")
}
fn events_desc() -> ListStateDescriptor<u64> {
    ListStateDescriptor::new("events")
}
fn tags_desc() -> MapStateDescriptor<String, u64> {
    MapStateDescriptor::new("tags")
}

/// A keyed operator `count` at some parallelism on the heap backend (default) or the
/// RocksDB backend.
pub struct Job<B = HashMapBackend> {
    pub subtasks: Vec<(B, OperatorStateBackend)>,
    key: BincodeCodec<String>,
}

/// A heap backend of operator [`UID`] for `range`.
pub fn heap(range: KeyGroupRange, key: &BincodeCodec<String>) -> HashMapBackend {
    HashMapBackend::new(HashMapConfig {
        uid: UID.into(),
        max_parallelism: MAX_P,
        key_group_range: range,
        key_codec: key.identity().clone(),
    })
    .unwrap()
}

impl Job<cairn_changelog::ChangelogBackend<HashMapBackend>> {
    /// The changelog over the heap backend, with small segments ([`small_changelog`]) in
    /// `storage`.
    pub fn heap_changelog(parallelism: u32, storage: &CheckpointStorage) -> Self {
        Self::with(parallelism, |range, key| {
            small_changelog(heap(range, key), key, storage)
        })
    }
}

impl Job<HashMapBackend> {
    /// On the heap backend.
    pub fn new(parallelism: u32) -> Self {
        Self::with(parallelism, heap)
    }

    /// A fresh heap job at `parallelism` restored from a manifest.
    pub fn restore(m: &Manifest, source: &dyn SnapshotSource, parallelism: u32) -> Self {
        Self::new(parallelism).restored(m, source)
    }
}

impl Job<RocksDbBackend> {
    /// On the RocksDB backend, its instances under `local_dir`.
    pub fn rocks(parallelism: u32, local_dir: &Path, options: RocksDbOptions) -> Self {
        Self::with(parallelism, |range, key| {
            RocksDbBackend::new(RocksDbConfig {
                uid: UID.into(),
                max_parallelism: MAX_P,
                key_group_range: range,
                key_codec: key.identity().clone(),
                local_dir: local_dir.to_path_buf(),
                options: options.clone(),
            })
            .unwrap()
        })
    }
}

impl<B: StateAccess> Job<B> {
    /// One backend per subtask from `make(range, key codec)`.
    pub fn with(
        parallelism: u32,
        mut make: impl FnMut(KeyGroupRange, &BincodeCodec<String>) -> B,
    ) -> Self {
        let key = BincodeCodec::<String>::new();
        let subtasks = (0..parallelism)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(MAX_P, parallelism, i).unwrap();
                (make(range, &key), OperatorStateBackend::new(UID))
            })
            .collect();
        Self { subtasks, key }
    }

    /// This (fresh) job with every subtask restored from a manifest.
    pub fn restored(mut self, m: &Manifest, source: &dyn SnapshotSource) -> Self {
        let parallelism = self.subtasks.len() as u32;
        for (i, (b, o)) in self.subtasks.iter_mut().enumerate() {
            restore_subtask(m, UID, parallelism, i as u32, Some(b), o, source).unwrap();
        }
        self
    }

    fn backend(&mut self, word: &str) -> &mut B {
        let k = self.key.encode_to_vec(&word.to_string()).unwrap();
        let kg = key_group_for_key(&k, MAX_P);
        let p = self.subtasks.len() as u32;
        let b = &mut self.subtasks[subtask_for_key_group(kg, p, MAX_P) as usize].0;
        b.set_current_key(&k).unwrap();
        b
    }

    /// Applies one update to the job and the model: count += 1, event appended, tag set.
    pub fn update(&mut self, model: &mut Model, word: &str, event: u64, tag: Option<(&str, u64)>) {
        let b = self.backend(word);
        let count = b.register_value(&count_desc()).unwrap();
        let events = b.register_list(&events_desc()).unwrap();
        let tags = b.register_map(&tags_desc()).unwrap();
        let c = b.value(&count).get().unwrap().unwrap_or(0) + 1;
        b.value(&count).update(c).unwrap();
        b.list(&events).add(event).unwrap();
        let m = model.entry(word.to_string()).or_default();
        m.count = Some(c);
        m.events.push(event);
        if let Some((t, v)) = tag {
            b.map(&tags).put(t.to_string(), v).unwrap();
            m.tags.insert(t.to_string(), v);
        }
    }

    /// Removes a word from every state.
    pub fn remove(&mut self, model: &mut Model, word: &str) {
        let b = self.backend(word);
        let count = b.register_value(&count_desc()).unwrap();
        let events = b.register_list(&events_desc()).unwrap();
        let tags = b.register_map(&tags_desc()).unwrap();
        b.value(&count).clear().unwrap();
        b.list(&events).clear().unwrap();
        b.map(&tags).clear().unwrap();
        model.remove(word);
    }

    /// The job's state read back through the API, for the words of `model`.
    pub fn read(&mut self, words: impl IntoIterator<Item = String>) -> Model {
        let mut out = Model::new();
        for w in words {
            let b = self.backend(&w);
            let count = b.register_value(&count_desc()).unwrap();
            let events = b.register_list(&events_desc()).unwrap();
            let tags = b.register_map(&tags_desc()).unwrap();
            let ks = KeyState {
                count: b.value(&count).get().unwrap(),
                events: b.list(&events).get().unwrap(),
                tags: b.map(&tags).entries().unwrap().into_iter().collect(),
            };
            if ks != KeyState::default() {
                out.insert(w, ks);
            }
        }
        out
    }

    /// Takes checkpoint `id` into `storage` and completes it.
    pub fn checkpoint(
        &mut self,
        storage: &CheckpointStorage,
        id: u64,
        incremental: bool,
    ) -> Manifest {
        let options = if incremental {
            SnapshotOptions::incremental_checkpoint(id)
        } else {
            SnapshotOptions::full_checkpoint(id)
        };
        let pending = snapshot_operator(
            UID,
            MAX_P,
            self.subtasks.iter_mut().map(|(b, o)| SubtaskRef {
                keyed: Some(b),
                operator: &*o,
            }),
            options,
        )
        .unwrap();
        let writer = storage.begin_checkpoint(id).unwrap();
        let part = pending.run(&writer, &CancelToken::new()).unwrap();
        let m = assemble_manifest(id, SnapshotType::Checkpoint, vec![part]);
        storage.publish(writer, &m).unwrap();
        for (b, _) in &mut self.subtasks {
            b.notify_checkpoint_complete(id);
        }
        m
    }

    /// Writes savepoint `id` to `dir`.
    pub fn savepoint(&mut self, dir: &Path, id: u64) -> Manifest {
        let pending = snapshot_operator(
            UID,
            MAX_P,
            self.subtasks.iter_mut().map(|(b, o)| SubtaskRef {
                keyed: Some(b),
                operator: &*o,
            }),
            SnapshotOptions::savepoint(id),
        )
        .unwrap();
        write_savepoint(s(dir), id, vec![pending]).unwrap()
    }
}

/// Applies a deterministic batch of updates: `n` words from `first`.
pub fn batch<B: StateAccess>(job: &mut Job<B>, model: &mut Model, first: u64, n: u64) {
    for i in first..first + n {
        let word = format!("w{}", i % 40);
        let tag = (i % 3 == 0).then_some((if i % 2 == 0 { "even" } else { "odd" }, i));
        job.update(model, &word, i, tag);
    }
}

/// The entries `state-dump entries --json` must print for `state` of the model, as
/// (key, namespace, user key, value) sorted.
pub fn expected(model: &Model, state: &str) -> Vec<(Value, Value, Option<Value>, Value)> {
    let mut out = Vec::new();
    for (k, ks) in model {
        let key = Value::String(k.clone());
        match state {
            "count" => {
                if let Some(c) = ks.count {
                    out.push((key, Value::Null, None, Value::from(c)));
                }
            }
            "events" => {
                if !ks.events.is_empty() {
                    out.push((key, Value::Null, None, Value::from(ks.events.clone())));
                }
            }
            "tags" => {
                for (t, v) in &ks.tags {
                    out.push((
                        key.clone(),
                        Value::Null,
                        Some(Value::from(t.clone())),
                        Value::from(*v),
                    ));
                }
            }
            _ => unreachable!(),
        }
    }
    out.sort_by_key(|e| format!("{e:?}"));
    out
}

/// The entries of `state` at `path` as printed by the binary, in the shape of [`expected`];
/// also checks each line's key group against the key.
pub fn dumped(path: &str, state: &str) -> Vec<(Value, Value, Option<Value>, Value)> {
    let r = run(&["entries", path, "--uid", UID, "--state", state, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut out: Vec<_> = r
        .lines()
        .into_iter()
        .map(|l| {
            let key = l["key"].as_str().unwrap().to_string();
            let bytes = BincodeCodec::<String>::new().encode_to_vec(&key).unwrap();
            assert_eq!(
                l["key_group"].as_u64(),
                Some(u64::from(key_group_for_key(&bytes, MAX_P))),
                "{l}"
            );
            (
                l["key"].clone(),
                l["namespace"].clone(),
                l.get("user_key").cloned(),
                l["value"].clone(),
            )
        })
        .collect();
    out.sort_by_key(|e| format!("{e:?}"));
    out
}

/// Asserts that the binary prints exactly the model's state for every state.
pub fn assert_dump_matches(path: &str, model: &Model) {
    for state in ["count", "events", "tags"] {
        assert_eq!(
            dumped(path, state),
            expected(model, state),
            "state {state} at {path}"
        );
    }
}
