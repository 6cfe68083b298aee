//! Checkpoints and savepoints.
//!
//! - An incremental checkpoint is the chain: the last materialization plus the segments
//!   after it. The synchronous phase only seals the open segment (O(1)); the asynchronous
//!   phase waits until the background thread has written that tail, uploads anything not
//!   uploaded yet and returns a [`KeyedData::Changelog`] handle.
//! - A full checkpoint and a savepoint are the wrapped backend's own (canonical, or as it
//!   writes full checkpoints): a savepoint taken with changelog on restores without it.
//!   After a full checkpoint the chain starts over with a new materialization, because
//!   retention may delete the files of the changelog checkpoints before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_core::{
    AsyncSnapshot, CancelToken, ChangelogSegment, CodecIdentity, KeyGroupRange, KeyedData,
    KeyedStateBackend, KeyedStateHandle, Result, SnapshotOptions, SnapshotTarget, SnapshotType,
    StateMeta,
};

use crate::backend::{ChangelogBackend, PendingCheckpoint, SegRef};
use crate::shared::{Holder, Shared};

/// Which materialization a checkpoint uses.
#[derive(Debug)]
enum MatPlan {
    None,
    Ready(Arc<KeyedStateHandle>),
    Wait(u64),
}

/// The asynchronous phase of a changelog checkpoint.
struct ChangelogSnapshot {
    shared: Arc<Shared>,
    known: Arc<Mutex<HashMap<u64, Arc<KeyedStateHandle>>>>,
    checkpoint_id: u64,
    range: KeyGroupRange,
    key_codec: CodecIdentity,
    states: Vec<StateMeta>,
    mat: MatPlan,
    segments: Vec<SegRef>,
}

impl AsyncSnapshot for ChangelogSnapshot {
    fn run(
        self: Box<Self>,
        target: &dyn SnapshotTarget,
        cancel: &CancelToken,
    ) -> Result<KeyedStateHandle> {
        let id = self.checkpoint_id;
        // Checked first: a checkpoint with nothing to wait for or write (no change since the
        // start) would otherwise hand out a handle although cancelled.
        if cancel.is_cancelled() {
            return Err(cairn_core::StateError::Cancelled { checkpoint_id: id });
        }
        let mat = match &self.mat {
            MatPlan::None => None,
            MatPlan::Ready(h) => Some(h.clone()),
            MatPlan::Wait(m) => Some(self.shared.wait_mat(*m, &self.known, cancel, id)?),
        };
        let target = target.supports_shared().then_some(target);
        if let Some(h) = &mat {
            for f in h.files() {
                self.shared.make_durable(&f.name, target, cancel, id)?;
                self.declare(f, target, id)?;
            }
        }
        let mut segments = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            if cancel.is_cancelled() {
                return Err(cairn_core::StateError::Cancelled { checkpoint_id: id });
            }
            let file = self.shared.segment_file(&s.name, cancel, id)?;
            self.shared.make_durable(&s.name, target, cancel, id)?;
            self.declare(&file, target, id)?;
            segments.push(ChangelogSegment {
                file,
                first_sqn: s.first_sqn,
                records: s.records,
            });
        }
        Ok(KeyedStateHandle {
            key_group_range: self.range,
            key_codec: self.key_codec,
            states: self.states,
            data: KeyedData::Changelog {
                materialized: mat.map(|h| h.as_ref().clone()).into_iter().collect(),
                segments,
            },
        })
    }
}

impl ChangelogSnapshot {
    /// Declares `file`, uploaded (pinned) through the backend's storage, to the checkpoint's
    /// target (`SnapshotTarget::holds_shared`, which protects it in `cairn-storage` until the
    /// checkpoint is published or aborted). The backend's pin alone is not enough: it ends
    /// when the backend is dropped, and a task that fails (or ends) drops it while the
    /// coordinator may still publish a checkpoint whose handle the task sent. Retention run
    /// by another checkpoint's completion in between deleted the segments that the handle
    /// references, and the publish failed with a missing file (the hunt's
    /// `tests/overlap_hunt.rs` in `cairn-runtime`: a task failing while changelog
    /// checkpoints were in flight). Without a storage, files are written through the target
    /// or checked with it ([`Shared::make_durable`]).
    fn declare(
        &self,
        file: &cairn_core::FileRef,
        target: Option<&dyn SnapshotTarget>,
        id: u64,
    ) -> Result<()> {
        let Some(target) = target.filter(|_| self.shared.storage.is_some()) else {
            return Ok(());
        };
        if target.holds_shared(file)? {
            return Ok(());
        }
        Err(cairn_core::StateError::layer(
            format!(
                "changelog checkpoint uid={} checkpoint_id={id}",
                self.shared.uid
            ),
            format!("an uploaded shared file is gone name={}", file.name),
        ))
    }
}

impl<B: KeyedStateBackend> ChangelogBackend<B> {
    pub(crate) fn take_snapshot(
        &mut self,
        options: SnapshotOptions,
    ) -> Result<Box<dyn AsyncSnapshot>> {
        self.poll_mats();
        self.check_mat_failures()?;
        self.check_replay_failed()?;
        match (options.snapshot_type, options.incremental) {
            (SnapshotType::Savepoint, _) => {
                self.check_replayed()?;
                self.inner.snapshot(options)
            }
            (SnapshotType::Checkpoint, false) => {
                self.check_replayed()?;
                let inner_id = self.next_inner_id;
                let phase = self.inner.snapshot(SnapshotOptions {
                    checkpoint_id: inner_id,
                    ..options
                })?;
                self.next_inner_id += 1;
                self.pending
                    .insert(options.checkpoint_id, PendingCheckpoint::Full { inner_id });
                // The chain's files may go with the checkpoints this one subsumes: start
                // over from a materialization begun after it.
                self.needs_mat = true;
                self.tainted_below = self.next_mat_id();
                Ok(phase)
            }
            (SnapshotType::Checkpoint, true) => self.changelog_checkpoint(options.checkpoint_id),
        }
    }

    fn changelog_checkpoint(&mut self, checkpoint_id: u64) -> Result<Box<dyn AsyncSnapshot>> {
        if self.needs_mat && !self.running.keys().any(|id| *id >= self.tainted_below) {
            self.start_mat()?;
        } else {
            self.maybe_materialize()?;
        }
        self.seal();
        let (mat, mat_id, segments) = if self.needs_mat {
            let (id, run) = self
                .running
                .iter()
                .rev()
                .find(|(id, _)| **id >= self.tainted_below)
                .ok_or_else(|| cairn_core::StateError::Restore {
                    reason: format!("no materialization to wait for uid={}", self.config.uid),
                })?;
            let mut segs: Vec<SegRef> = run.carry.iter().cloned().collect();
            segs.extend(
                self.chain
                    .segments
                    .iter()
                    .filter(|s| s.seq >= run.boundary)
                    .cloned(),
            );
            (MatPlan::Wait(*id), Some(*id), segs)
        } else {
            match &self.chain.mat {
                Some((id, h)) => (
                    MatPlan::Ready(h.clone()),
                    Some(*id),
                    self.chain.all_segments(),
                ),
                None => (MatPlan::None, None, self.chain.all_segments()),
            }
        };
        let mut names: Vec<String> = segments.iter().map(|s| s.name.clone()).collect();
        if let MatPlan::Ready(h) = &mat {
            names.extend(h.files().map(|f| f.name.clone()));
        }
        self.shared.hold(
            Holder::Pending(checkpoint_id),
            names.iter().map(String::as_str),
        );
        self.pending.insert(
            checkpoint_id,
            PendingCheckpoint::Changelog {
                mat: mat_id,
                wait: matches!(mat, MatPlan::Wait(_)),
                names,
            },
        );
        Ok(Box::new(ChangelogSnapshot {
            shared: self.shared.clone(),
            known: self.known.clone(),
            checkpoint_id,
            range: self.inner.key_group_range(),
            key_codec: self.config.key_codec.clone(),
            states: self.handle_metas(),
            mat,
            segments,
        }))
    }

    pub(crate) fn checkpoint_complete(&mut self, checkpoint_id: u64) {
        self.poll_mats();
        // Completing a checkpoint subsumes every older pending one.
        let older: Vec<u64> = self
            .pending
            .range(..checkpoint_id)
            .map(|(id, _)| *id)
            .collect();
        for id in older {
            if let Some(p) = self.pending.remove(&id) {
                self.end_pending(id, p, false);
            }
        }
        if let Some(p) = self.pending.remove(&checkpoint_id) {
            self.end_pending(checkpoint_id, p, true);
        }
        self.release_mat_holders();
    }

    pub(crate) fn checkpoint_aborted(&mut self, checkpoint_id: u64) {
        self.poll_mats();
        if let Some(p) = self.pending.remove(&checkpoint_id) {
            self.end_pending(checkpoint_id, p, false);
        }
        self.release_mat_holders();
    }

    fn end_pending(&mut self, checkpoint_id: u64, p: PendingCheckpoint, completed: bool) {
        match p {
            PendingCheckpoint::Full { inner_id } => {
                if completed {
                    self.inner.notify_checkpoint_complete(inner_id);
                } else {
                    self.inner.notify_checkpoint_aborted(inner_id);
                }
            }
            PendingCheckpoint::Changelog {
                mat, wait, names, ..
            } => {
                if completed {
                    let mut all = names;
                    if let (Some(m), true) = (mat, wait) {
                        if let Some(h) =
                            self.known.lock().unwrap_or_else(|p| p.into_inner()).get(&m)
                        {
                            all.extend(h.files().map(|f| f.name.clone()));
                        }
                    }
                    self.shared.confirm_names(&all);
                    if let Some(m) = mat {
                        self.mat_confirmed(m);
                    }
                }
                self.shared.release_holder(Holder::Pending(checkpoint_id));
            }
        }
    }
}
