//! Running a keyed operator of several subtasks through checkpoints, savepoints and restores,
//! and reading a snapshot's canonical entries back for comparison.

use std::collections::BTreeMap;

use cairn_core::*;
use cairn_format::{Manifest, OperatorManifest, StateFileReader};

/// Creates fresh backends of one kind; the conformance suite is generic over this.
pub trait BackendFactory {
    type Backend: KeyedStateBackend;
    /// A fresh, empty backend for `uid` owning `range` of `max_parallelism` key groups.
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> Self::Backend;
}

/// Canonical entries of a snapshot: (state name, key group, key, namespace, user key) → value.
pub type Entries = BTreeMap<(String, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>), Vec<u8>>;

/// Reads every keyed entry of operator `uid` in a manifest, checking that each key group is
/// supplied exactly once.
pub fn canonical_entries(manifest: &Manifest, uid: &str, source: &dyn SnapshotSource) -> Entries {
    let op = manifest.operator(uid).expect("operator in manifest");
    let mut out = Entries::new();
    for sub in &op.subtasks {
        let Some(handle) = &sub.keyed else { continue };
        let KeyedData::Canonical { files } = &handle.data else {
            panic!("not canonical")
        };
        for f in files {
            let bytes = source.read_file(&f.file).expect("read state file");
            let reader = StateFileReader::open(bytes, &f.file.name).expect("open state file");
            let names: Vec<String> = reader.states().iter().map(|s| s.name.clone()).collect();
            for range in &f.key_groups {
                reader
                    .scan::<cairn_format::FormatError, _>(*range, |e| {
                        let k = (
                            names[e.state as usize].clone(),
                            e.key_group,
                            e.key.to_vec(),
                            e.namespace.to_vec(),
                            e.user_key.map(<[u8]>::to_vec),
                        );
                        assert!(out.insert(k, e.value.to_vec()).is_none(), "duplicate entry");
                        Ok(())
                    })
                    .expect("scan state file");
            }
        }
    }
    out
}

/// Writes a canonical savepoint `id` of `op` to `<dir>/sp-<id>` and returns its path.
pub fn write_savepoint_of<B: KeyedStateBackend>(
    op: &mut Operator<B>,
    dir: &std::path::Path,
    id: u64,
) -> String {
    let url = dir
        .join(format!("sp-{id}"))
        .to_str()
        .expect("UTF-8 path")
        .to_string();
    let pending = cairn_storage::snapshot_operator(
        &op.uid,
        op.max_parallelism,
        op.subtasks
            .iter_mut()
            .map(|(b, o)| cairn_storage::SubtaskRef {
                keyed: Some(b),
                operator: o,
            }),
        SnapshotOptions::savepoint(id),
    )
    .expect("savepoint synchronous phase");
    cairn_storage::write_savepoint(&url, id, vec![pending]).expect("write savepoint");
    url
}

/// The canonical entries of a savepoint of `op` (savepoints are canonical for every
/// backend and leave the incremental-checkpoint bookkeeping alone).
pub fn savepoint_entries<B: KeyedStateBackend>(op: &mut Operator<B>) -> Entries {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = write_savepoint_of(op, dir.path(), u64::MAX);
    let (m, source) = cairn_storage::open_savepoint(&url).expect("open savepoint");
    canonical_entries(&m, &op.uid, &source)
}

/// A keyed operator: one backend and one operator-state backend per subtask.
pub struct Operator<B> {
    pub uid: String,
    pub max_parallelism: u32,
    pub subtasks: Vec<(B, OperatorStateBackend)>,
}

impl<B: KeyedStateBackend> Operator<B> {
    pub fn new<F: BackendFactory<Backend = B>>(
        f: &F,
        uid: &str,
        max_parallelism: u32,
        parallelism: u32,
    ) -> Self {
        let subtasks = (0..parallelism)
            .map(|i| {
                let range = KeyGroupRange::for_subtask(max_parallelism, parallelism, i).unwrap();
                (
                    f.create(uid, max_parallelism, range),
                    OperatorStateBackend::new(uid),
                )
            })
            .collect();
        Self {
            uid: uid.to_string(),
            max_parallelism,
            subtasks,
        }
    }

    pub fn parallelism(&self) -> u32 {
        self.subtasks.len() as u32
    }

    /// The subtask that owns `key`.
    pub fn owner(&mut self, key: &str) -> &mut B {
        let kg = key_group_for_key(&super::schema::key_bytes(key), self.max_parallelism);
        let i = subtask_for_key_group(kg, self.parallelism(), self.max_parallelism);
        &mut self.subtasks[i as usize].0
    }

    /// Runs both snapshot phases of every subtask and returns the operator's manifest part.
    pub fn snapshot(
        &mut self,
        target: &dyn SnapshotTarget,
        options: SnapshotOptions,
    ) -> OperatorManifest {
        // Synchronous phases first (as at a barrier), then the asynchronous ones.
        let pending: Vec<_> = self
            .subtasks
            .iter_mut()
            .map(|(b, o)| {
                (
                    b.snapshot(options).expect("sync phase"),
                    o.snapshot().expect("operator state snapshot"),
                )
            })
            .collect();
        let p = self.parallelism();
        let subtasks = pending
            .into_iter()
            .enumerate()
            .map(
                |(i, (async_phase, operator_state))| cairn_format::SubtaskManifest {
                    key_group_range: KeyGroupRange::for_subtask(self.max_parallelism, p, i as u32)
                        .unwrap(),
                    keyed: Some(
                        async_phase
                            .run(target, &CancelToken::new())
                            .expect("async phase"),
                    ),
                    operator_state,
                },
            )
            .collect();
        OperatorManifest {
            uid: self.uid.clone(),
            parallelism: p,
            max_parallelism: self.max_parallelism,
            subtasks,
        }
    }

    pub fn notify_complete(&mut self, id: u64) {
        for (b, _) in &mut self.subtasks {
            b.notify_checkpoint_complete(id);
        }
    }

    pub fn notify_aborted(&mut self, id: u64) {
        for (b, _) in &mut self.subtasks {
            b.notify_checkpoint_aborted(id);
        }
    }

    /// Restores operator `uid` of `manifest` at `parallelism`.
    pub fn restore<F: BackendFactory<Backend = B>>(
        f: &F,
        manifest: &Manifest,
        uid: &str,
        parallelism: u32,
        source: &dyn SnapshotSource,
    ) -> Self {
        let op = manifest.operator(uid).expect("operator in manifest");
        let mut me = Self::new(f, uid, op.max_parallelism, parallelism);
        let old_ops: Vec<_> = op
            .subtasks
            .iter()
            .map(|s| s.operator_state.clone())
            .collect();
        let new_ops = redistribute(uid, &old_ops, parallelism).expect("redistribute");
        for ((b, o), ops) in me.subtasks.iter_mut().zip(new_ops) {
            let range = b.key_group_range();
            let handles: Vec<KeyedStateHandle> = op
                .subtasks
                .iter()
                .filter_map(|s| s.keyed.clone())
                .filter(|h| !h.key_group_range.intersect(&range).is_empty())
                .collect();
            b.restore(&handles, source).expect("restore keyed");
            o.restore(ops).expect("restore operator state");
        }
        me
    }
}

/// Builds a manifest of one snapshot.
pub fn manifest(
    id: u64,
    snapshot_type: SnapshotType,
    operators: Vec<OperatorManifest>,
) -> Manifest {
    Manifest {
        checkpoint_id: id,
        snapshot_type,
        timestamp_ms: 1_700_000_000_000 + id,
        operators,
    }
}
