//! Job-level snapshots: the two phases of every subtask of an operator, assembled into a
//! manifest; and restore of one subtask, at any parallelism, from a manifest. This is the
//! savepoint API of the library, used by the runtime and by tools.

use cairn_core::{
    redistribute, CancelToken, KeyGroupRange, KeyedStateBackend, KeyedStateHandle,
    OperatorStateBackend, OperatorStateSnapshot, SnapshotOptions, SnapshotSource, SnapshotTarget,
    SnapshotType, StateError,
};
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};

/// The state of one subtask handed to [`snapshot_operator`]: its keyed backend, if the
/// operator is keyed, and its operator state.
#[derive(Debug)]
pub struct SubtaskRef<'a, B> {
    /// The keyed backend (`None` for operators without keyed state).
    pub keyed: Option<&'a mut B>,
    /// The operator state.
    pub operator: &'a OperatorStateBackend,
}

/// An operator whose synchronous phases ran; [`PendingOperator::run`] finishes it.
pub struct PendingOperator {
    uid: String,
    max_parallelism: u32,
    checkpoint_id: u64,
    subtasks: Vec<PendingSubtask>,
}

struct PendingSubtask {
    range: KeyGroupRange,
    keyed: Option<Box<dyn cairn_core::AsyncSnapshot>>,
    operator_state: Vec<OperatorStateSnapshot>,
}

impl std::fmt::Debug for PendingOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingOperator")
            .field("uid", &self.uid)
            .field("checkpoint_id", &self.checkpoint_id)
            .field("parallelism", &self.subtasks.len())
            .finish()
    }
}

/// Runs the synchronous phase of every subtask of operator `uid` (index order). The
/// returned value owns no borrow of the backends, so processing may go on while
/// [`PendingOperator::run`] writes.
pub fn snapshot_operator<'a, B: KeyedStateBackend + 'a>(
    uid: &str,
    max_parallelism: u32,
    subtasks: impl IntoIterator<Item = SubtaskRef<'a, B>>,
    options: SnapshotOptions,
) -> Result<PendingOperator, StateError> {
    let subtasks: Vec<SubtaskRef<'a, B>> = subtasks.into_iter().collect();
    let parallelism = subtasks.len() as u32;
    let mut pending = Vec::with_capacity(subtasks.len());
    for (index, s) in subtasks.into_iter().enumerate() {
        let range = KeyGroupRange::for_subtask(max_parallelism, parallelism, index as u32)?;
        let keyed = match s.keyed {
            Some(b) => {
                if b.key_group_range() != range || b.max_parallelism() != max_parallelism {
                    return Err(StateError::Restore {
                        reason: format!(
                            "subtask {index} of operator {uid} owns key groups {} of {} but should own {range} of {max_parallelism}",
                            b.key_group_range(),
                            b.max_parallelism()
                        ),
                    });
                }
                Some(b.snapshot(options)?)
            }
            None => None,
        };
        pending.push(PendingSubtask {
            range,
            keyed,
            operator_state: s.operator.snapshot()?,
        });
    }
    Ok(PendingOperator {
        uid: uid.to_string(),
        max_parallelism,
        checkpoint_id: options.checkpoint_id,
        subtasks: pending,
    })
}

impl PendingOperator {
    /// Runs the asynchronous phases and returns the operator's part of the manifest.
    pub fn run(
        self,
        target: &dyn SnapshotTarget,
        cancel: &CancelToken,
    ) -> Result<OperatorManifest, StateError> {
        let parallelism = self.subtasks.len() as u32;
        let mut subtasks = Vec::with_capacity(self.subtasks.len());
        for s in self.subtasks {
            let keyed = match s.keyed {
                Some(phase) => Some(phase.run(target, cancel)?),
                None => None,
            };
            subtasks.push(SubtaskManifest {
                key_group_range: s.range,
                keyed,
                operator_state: s.operator_state,
            });
        }
        Ok(OperatorManifest {
            uid: self.uid,
            parallelism,
            max_parallelism: self.max_parallelism,
            subtasks,
        })
    }
}

/// Builds a manifest from operator parts (sorted by uid).
pub fn assemble_manifest(
    checkpoint_id: u64,
    snapshot_type: SnapshotType,
    mut operators: Vec<OperatorManifest>,
) -> Manifest {
    operators.sort_by(|a, b| a.uid.cmp(&b.uid));
    Manifest {
        checkpoint_id,
        snapshot_type,
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        operators,
    }
}

/// Writes a canonical savepoint of `operators` (synchronous phases taken with
/// [`SnapshotOptions::savepoint`]) to `url`, and returns its manifest.
pub fn write_savepoint(
    url: &str,
    checkpoint_id: u64,
    operators: Vec<PendingOperator>,
) -> Result<Manifest, StateError> {
    let writer = crate::create_savepoint(url, checkpoint_id)?;
    let cancel = CancelToken::new();
    let mut parts = Vec::with_capacity(operators.len());
    for op in operators {
        parts.push(op.run(&writer, &cancel)?);
    }
    let manifest = assemble_manifest(checkpoint_id, SnapshotType::Savepoint, parts);
    writer.publish(&manifest)?;
    Ok(manifest)
}

/// Restores subtask `index` of `parallelism` of operator `uid` from a manifest: the keyed
/// state of the key groups it owns (from every old subtask that held some of them) and its
/// share of the operator state. `keyed` must be a fresh backend for exactly that subtask's
/// key-group range.
pub fn restore_subtask<B: KeyedStateBackend>(
    manifest: &Manifest,
    uid: &str,
    parallelism: u32,
    index: u32,
    keyed: Option<&mut B>,
    operator: &mut OperatorStateBackend,
    source: &dyn SnapshotSource,
) -> Result<(), StateError> {
    let op = manifest.operator(uid).ok_or_else(|| StateError::Restore {
        reason: format!(
            "snapshot has no operator {uid} checkpoint_id={}",
            manifest.checkpoint_id
        ),
    })?;
    // Key groups matter only to keyed state: an operator without any restores at any max
    // parallelism (its operator state is redistributed by subtask), and the check comes
    // before the key-group range, which the snapshot's max parallelism may not allow.
    let has_keyed_state = op
        .subtasks
        .iter()
        .any(|s| s.keyed.as_ref().is_some_and(|k| !k.states.is_empty()));
    if let Some(b) = keyed {
        if has_keyed_state && b.max_parallelism() != op.max_parallelism {
            return Err(StateError::Restore {
                reason: format!(
                    "operator {uid} was snapshotted with max parallelism {} but the backend has {}; the max parallelism of keyed state cannot change",
                    op.max_parallelism,
                    b.max_parallelism()
                ),
            });
        }
        let range = KeyGroupRange::for_subtask(b.max_parallelism(), parallelism, index)?;
        if b.key_group_range() != range {
            return Err(StateError::Restore {
                reason: format!(
                    "backend owns key groups {} but subtask {index} of {parallelism} owns {range}",
                    b.key_group_range()
                ),
            });
        }
        // An operator that kept no keyed state in the snapshot restores as empty.
        let handles = keyed_handles_for(op, range);
        if has_keyed_state && !handles.is_empty() {
            b.restore(&handles, source)?;
        }
    }
    let old: Vec<Vec<OperatorStateSnapshot>> = op
        .subtasks
        .iter()
        .map(|s| s.operator_state.clone())
        .collect();
    let mut shares = redistribute(uid, &old, parallelism)?;
    operator.restore(shares.swap_remove(index as usize))?;
    Ok(())
}

/// The keyed handles of `op` that hold key groups of `range`.
pub fn keyed_handles_for(op: &OperatorManifest, range: KeyGroupRange) -> Vec<KeyedStateHandle> {
    op.subtasks
        .iter()
        .filter_map(|s| s.keyed.as_ref())
        .filter(|h| !h.key_group_range.intersect(&range).is_empty())
        .cloned()
        .collect()
}
