//! [`SavepointReader`]: what a savepoint holds, and its operator state.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_core::{
    BincodeCodec, CodecIdentity, CodecRef, Compatibility, OperatorListStateDescriptor,
    Redistribution, SnapshotType, StateError, StateMeta, StateValue,
};
use cairn_format::{Manifest, OperatorManifest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{list_names, Result, StateProcessorError};
use crate::keyed::KeyedStateReader;
use crate::snapshot::{self, Opened};

/// Reads a canonical savepoint (or a canonical checkpoint) offline: Flink's
/// `SavepointReader`.
///
/// Opening reads the manifest only; state files are read (and their checksums checked)
/// when state is read. See the [crate docs](crate) for an example.
#[derive(Debug)]
pub struct SavepointReader {
    opened: Opened,
}

/// What a snapshot holds of one operator.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OperatorInfo {
    /// The operator uid.
    pub uid: String,
    /// The parallelism it ran at (its number of subtasks in the snapshot).
    pub parallelism: u32,
    /// Its max parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The codec identity of its keys, if it has keyed state.
    pub key_codec: Option<CodecIdentity>,
    /// Its keyed states (name, kind, codec identities), sorted by name.
    pub keyed_states: Vec<StateMeta>,
    /// Its operator states, sorted by name.
    pub operator_states: Vec<OperatorStateInfo>,
}

/// What a snapshot holds of one operator state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OperatorStateInfo {
    /// The state name.
    pub name: String,
    /// How it is redistributed on restore.
    pub mode: Redistribution,
    /// The codec identity of its elements.
    pub codec: CodecIdentity,
    /// Its elements over every subtask.
    pub elements: usize,
}

impl SavepointReader {
    /// Opens the savepoint at `path` (its directory or its `_metadata`; a local path or a
    /// storage URL such as `s3://bucket/sp-1`). A checkpoint (`…/chk-<id>`) opens too (a
    /// savepoint in a directory so named opens as the savepoint); only canonical keyed state
    /// can be read from either.
    pub fn open(path: &str) -> Result<Self> {
        Ok(Self {
            opened: snapshot::open(path)?,
        })
    }

    /// The snapshot's path, as given (without a trailing `/` or `/_metadata`).
    pub fn path(&self) -> &str {
        &self.opened.path
    }

    /// The snapshot's checkpoint (or savepoint) id.
    pub fn checkpoint_id(&self) -> u64 {
        self.opened.manifest.checkpoint_id
    }

    /// Savepoint or checkpoint.
    pub fn snapshot_type(&self) -> SnapshotType {
        self.opened.manifest.snapshot_type
    }

    /// The snapshot's max parallelism: the largest of its operators' (a job gives all of
    /// them its own); `None` for a snapshot without operators.
    pub fn max_parallelism(&self) -> Option<u32> {
        self.opened
            .manifest
            .operators
            .iter()
            .map(|o| o.max_parallelism)
            .max()
    }

    /// The manifest, as decoded.
    pub fn manifest(&self) -> &Manifest {
        &self.opened.manifest
    }

    /// Every operator, sorted by uid.
    pub fn operators(&self) -> Vec<OperatorInfo> {
        self.opened.manifest.operators.iter().map(info).collect()
    }

    /// The operator `uid`; an error lists the uids the snapshot has.
    pub fn operator(&self, uid: &str) -> Result<OperatorInfo> {
        self.op(uid).map(info)
    }

    /// The keyed state of operator `uid`, whose keys are encoded with the runtime's key
    /// codec (`BincodeCodec<K>`, as `key_by` gives them). Reads every state file of every
    /// subtask (checking their checksums) into one heap backend that owns every key group;
    /// the reader then decodes the states you ask for with your descriptors.
    pub fn keyed_state<K>(&self, uid: &str) -> Result<KeyedStateReader<K>>
    where
        K: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.keyed_state_with_codec(uid, Arc::new(BincodeCodec::<K>::new()))
    }

    /// [`SavepointReader::keyed_state`] with keys encoded by `key_codec`, whose identity
    /// must be the stored one.
    pub fn keyed_state_with_codec<K: 'static>(
        &self,
        uid: &str,
        key_codec: CodecRef<K>,
    ) -> Result<KeyedStateReader<K>> {
        KeyedStateReader::restore(&self.opened, self.op(uid)?, key_codec)
    }

    /// The elements of operator list state `descriptor.name` of operator `uid`, of every
    /// subtask in subtask order: for a split state, everything its subtasks held; for a
    /// union state, once, what each subtask of a restored job gets. The descriptor's mode
    /// and codec must be the stored ones.
    pub fn read_operator_state<V: StateValue>(
        &self,
        uid: &str,
        descriptor: &OperatorListStateDescriptor<V>,
    ) -> Result<Vec<V>> {
        Ok(self
            .read_operator_state_by_subtask(uid, descriptor)?
            .into_iter()
            .flatten()
            .collect())
    }

    /// The elements of operator list state `descriptor.name` of operator `uid`, per subtask
    /// of the snapshot (index = subtask; a subtask without the state has none).
    pub fn read_operator_state_by_subtask<V: StateValue>(
        &self,
        uid: &str,
        descriptor: &OperatorListStateDescriptor<V>,
    ) -> Result<Vec<Vec<V>>> {
        let op = self.op(uid)?;
        let name = &descriptor.name;
        let stored: Vec<_> = op
            .subtasks
            .iter()
            .flat_map(|s| s.operator_state.iter())
            .filter(|s| &s.name == name)
            .collect();
        let Some(first) = stored.first() else {
            let info = info(op);
            return Err(StateProcessorError::UnknownState {
                uid: uid.to_string(),
                state: name.clone(),
                what: "operator",
                snapshot: self.opened.description.clone(),
                available: list_names(info.operator_states.iter().map(|s| s.name.as_str())),
            });
        };
        if first.mode != descriptor.mode {
            return Err(StateProcessorError::ModeMismatch {
                uid: uid.to_string(),
                state: name.clone(),
                snapshot: self.opened.description.clone(),
                stored: first.mode,
                expected: descriptor.mode,
            });
        }
        let expected = descriptor.codec.identity();
        if let Some(s) = stored
            .iter()
            .find(|s| descriptor.codec.compatibility(&s.codec) == Compatibility::Incompatible)
        {
            return Err(StateProcessorError::Incompatible {
                uid: uid.to_string(),
                state: name.clone(),
                snapshot: self.opened.description.clone(),
                source: Box::new(StateError::IncompatibleCodec {
                    uid: uid.to_string(),
                    state: name.clone(),
                    part: "operator list element",
                    stored: Box::new(s.codec.clone()),
                    expected: Box::new(expected.clone()),
                }),
            });
        }
        let mut out = Vec::with_capacity(op.subtasks.len());
        for subtask in &op.subtasks {
            let mut values = Vec::new();
            for s in subtask.operator_state.iter().filter(|s| &s.name == name) {
                for bytes in &s.elements {
                    let v = descriptor
                        .codec
                        .decode_from(&s.codec, bytes)
                        .map_err(|source| StateProcessorError::Read {
                            uid: uid.to_string(),
                            what: format!("operator state {name}"),
                            snapshot: self.opened.description.clone(),
                            source: Box::new(StateError::Codec {
                                state: name.clone(),
                                source,
                            }),
                        })?;
                    values.push(v);
                }
            }
            out.push(values);
        }
        Ok(out)
    }

    fn op(&self, uid: &str) -> Result<&OperatorManifest> {
        self.opened
            .manifest
            .operator(uid)
            .ok_or_else(|| StateProcessorError::UnknownOperator {
                uid: uid.to_string(),
                snapshot: self.opened.description.clone(),
                available: list_names(
                    self.opened
                        .manifest
                        .operators
                        .iter()
                        .map(|o| o.uid.as_str()),
                ),
            })
    }
}

/// Summarizes one operator of a manifest.
pub(crate) fn info(op: &OperatorManifest) -> OperatorInfo {
    let mut keyed = BTreeMap::<&str, &StateMeta>::new();
    let mut key_codec = None;
    let mut operator = BTreeMap::<&str, OperatorStateInfo>::new();
    for s in &op.subtasks {
        if let Some(h) = &s.keyed {
            key_codec.get_or_insert_with(|| h.key_codec.clone());
            for m in &h.states {
                keyed.entry(m.name.as_str()).or_insert(m);
            }
        }
        for o in &s.operator_state {
            operator
                .entry(o.name.as_str())
                .or_insert_with(|| OperatorStateInfo {
                    name: o.name.clone(),
                    mode: o.mode,
                    codec: o.codec.clone(),
                    elements: 0,
                })
                .elements += o.elements.len();
        }
    }
    OperatorInfo {
        uid: op.uid.clone(),
        parallelism: op.parallelism,
        max_parallelism: op.max_parallelism,
        key_codec,
        keyed_states: keyed.into_values().cloned().collect(),
        operator_states: operator.into_values().collect(),
    }
}
