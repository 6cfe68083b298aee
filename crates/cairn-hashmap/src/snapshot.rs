//! Snapshots: the synchronous phase's view, the asynchronous phase that writes one canonical
//! state file, and the bookkeeping of incremental checkpoints.
//!
//! # Incremental checkpoints
//!
//! The backend marks a key group dirty on every mutation (including `clear`). An
//! incremental checkpoint writes the key groups dirty since the *base* — the last completed
//! incremental checkpoint whose files are in the shared area — into one new shared file, and
//! references every other key group in the base's files. Per pending checkpoint the backend
//! keeps the key groups dirtied since the previous snapshot (`own`), so that:
//! - a snapshot includes the dirty groups of every still-pending earlier snapshot (dirty
//!   since the base, not since the previous snapshot);
//! - completing checkpoint `n` makes its file mapping the base and forgets pendings `<= n`
//!   (their changes are in `n`);
//! - aborting checkpoint `n` merges its `own` set back, so nothing is lost.
//!
//! Without a base (the first checkpoint, after a restore, or when the last completed one
//! could not write shared files) every key group is written. A state registered after the
//! base needs no special case: its entries exist only in key groups it wrote to, which are
//! dirty. Full checkpoints and savepoints neither use nor change this bookkeeping.
//!
//! # Referencing the base while other checkpoints are in flight
//!
//! Retention deletes the shared files that no retained checkpoint references, except those
//! that a checkpoint in flight wrote or declared with [`SnapshotTarget::holds_shared`].
//! When every pending checkpoint has the same base as a new one, the new one references a
//! base file only for key groups that those pending ones reference in that file too (it
//! writes every key group dirty since the base, a superset of theirs), so whichever of them
//! completes keeps the file. A pending checkpoint planned against an *older* base (or none)
//! does not: it may complete while the new one is in flight, and then retention deletes the
//! new one's base files (checkpoints 2 and 3 in flight, 2 completes, 4 is based on 2, 3
//! completes and subsumes 2). The new one then declares each base file it keeps with
//! `holds_shared` (which protects it in `cairn-storage`) and rewrites, from its own
//! immutable view, the key groups of a file the target does not hold.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, OnceLock};

use cairn_core::{
    murmur3_32, AsyncSnapshot, CancelToken, CanonicalFile, CodecIdentity, FileArea, FileRef,
    KeyGroupRange, KeyedData, KeyedStateHandle, Result, SnapshotOptions, SnapshotTarget,
    SnapshotType, StateError, StateMeta,
};
use cairn_format::{FileState, StateFileWriter};

use crate::encode::{KgBuffer, KgWriter};
use crate::error::internal;
use crate::state::StateSnapshot;

/// Which file supplies each key group (index `kg - range.start`).
#[derive(Debug)]
pub(crate) struct KgFiles {
    files: Vec<FileRef>,
    of_kg: Vec<usize>,
}

/// What an incremental snapshot's asynchronous phase produced.
#[derive(Debug)]
enum Outcome {
    /// Shared files, usable as a base.
    Shared(Arc<KgFiles>),
    /// The target took no shared files: a full snapshot in the private area.
    Private,
}

#[derive(Debug)]
struct Pending {
    own: Vec<bool>,
    /// Whether the checkpoint may reference the base (false: a full checkpoint).
    incremental: bool,
    /// The id of the base its plan references (`None`: it writes every key group).
    base_id: Option<u64>,
    outcome: Arc<OnceLock<Outcome>>,
}

/// The incremental-checkpoint bookkeeping of a backend.
#[derive(Debug)]
pub(crate) struct Incremental {
    /// Key groups mutated since the last incremental snapshot's synchronous phase.
    pub(crate) dirty: Vec<bool>,
    pending: BTreeMap<u64, Pending>,
    base: Option<(u64, Arc<KgFiles>)>,
}

impl Incremental {
    pub(crate) fn new(key_groups: u32) -> Self {
        Self {
            dirty: vec![false; key_groups as usize],
            pending: BTreeMap::new(),
            base: None,
        }
    }

    /// Starts incremental snapshot `id`: the key groups to write and the base to reference.
    fn begin(&mut self, id: u64, incremental: bool) -> IncrementalPlan {
        let n = self.dirty.len();
        let own = std::mem::replace(&mut self.dirty, vec![false; n]);
        let mut write = own.clone();
        for p in self.pending.values() {
            for (w, d) in write.iter_mut().zip(&p.own) {
                *w |= *d;
            }
        }
        // A full checkpoint still pending may complete before this one and end the base
        // (retention may then delete the base's shared files), so do not reference it.
        let full_pending = self.pending.values().any(|p| !p.incremental);
        let base = if full_pending || !incremental {
            None
        } else {
            self.base.clone()
        };
        let base_id = base.as_ref().map(|(b, _)| *b);
        // A pending checkpoint planned against another base may complete while this one is
        // in flight and subsume the base: declare the base files (module docs).
        let declare_base = base.is_some() && self.pending.values().any(|p| p.base_id != base_id);
        let outcome = Arc::new(OnceLock::new());
        // A retried id replaces the older attempt; keep the older attempt's changes.
        if let Some(old) = self.pending.insert(
            id,
            Pending {
                own,
                incremental,
                base_id,
                outcome: outcome.clone(),
            },
        ) {
            self.merge_back(&old.own);
        }
        IncrementalPlan {
            incremental,
            write,
            base: base.map(|(_, b)| b),
            declare_base,
            outcome,
        }
    }

    fn merge_back(&mut self, own: &[bool]) {
        for (d, o) in self.dirty.iter_mut().zip(own) {
            *d |= *o;
        }
    }

    pub(crate) fn complete(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match p.outcome.get() {
            Some(Outcome::Shared(files)) => {
                self.base = Some((id, files.clone()));
                // Earlier pendings' changes are in checkpoint `id`.
                self.pending.retain(|&k, _| k > id);
            }
            Some(Outcome::Private) => {
                self.base = None;
                self.pending.retain(|&k, _| k > id);
            }
            // Completed without our handle: keep its changes for the next checkpoint.
            None => self.merge_back(&p.own),
        }
    }

    pub(crate) fn abort(&mut self, id: u64) {
        if let Some(p) = self.pending.remove(&id) {
            self.merge_back(&p.own);
        }
    }

    /// Whether a base exists (for tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn base_id(&self) -> Option<u64> {
        self.base.as_ref().map(|(id, _)| *id)
    }
}

#[derive(Debug)]
struct IncrementalPlan {
    /// Whether the checkpoint may reference the base (a full checkpoint writes everything
    /// privately, and its completion ends the base: retention may then delete the base's
    /// shared files, which the full checkpoint does not reference).
    incremental: bool,
    write: Vec<bool>,
    base: Option<Arc<KgFiles>>,
    /// Whether to reference a base file only if the target holds it for this checkpoint
    /// (`SnapshotTarget::holds_shared`), and rewrite its key groups otherwise.
    declare_base: bool,
    outcome: Arc<OnceLock<Outcome>>,
}

/// A state in a snapshot: what the handle records and its entries.
pub(crate) struct SnapshotState {
    pub(crate) meta: StateMeta,
    pub(crate) entries: Arc<dyn StateSnapshot>,
}

/// The view the synchronous phase captures.
pub(crate) struct SyncView {
    pub(crate) options: SnapshotOptions,
    pub(crate) uid: Arc<str>,
    pub(crate) range: KeyGroupRange,
    pub(crate) key_codec: CodecIdentity,
    /// Sorted by name.
    pub(crate) states: Vec<SnapshotState>,
}

/// The asynchronous phase of a heap snapshot.
pub(crate) struct HeapSnapshot {
    view: SyncView,
    incremental: Option<IncrementalPlan>,
}

impl HeapSnapshot {
    /// Captures a snapshot; every checkpoint (full or incremental) is recorded as pending in
    /// `inc`, so that its completion moves or ends the base. Savepoints leave `inc` alone.
    pub(crate) fn new(mut view: SyncView, inc: &mut Incremental) -> Self {
        view.states.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        let o = view.options;
        let incremental = (o.snapshot_type == SnapshotType::Checkpoint)
            .then(|| inc.begin(o.checkpoint_id, o.incremental));
        Self { view, incremental }
    }
}

impl AsyncSnapshot for HeapSnapshot {
    fn run(
        self: Box<Self>,
        target: &dyn SnapshotTarget,
        cancel: &CancelToken,
    ) -> Result<KeyedStateHandle> {
        let HeapSnapshot { view, incremental } = *self;
        // Checked up front too: an incremental checkpoint with no key group to write would
        // otherwise never look at the token and hand out a handle of a cancelled snapshot.
        if cancel.is_cancelled() {
            return Err(StateError::Cancelled {
                checkpoint_id: view.options.checkpoint_id,
            });
        }
        let range = view.range;
        let n = range.len() as usize;
        let shared = incremental
            .as_ref()
            .filter(|p| p.incremental && target.supports_shared());
        // The key groups to write, and the file of every other key group.
        let (mut write, base): (Vec<bool>, Option<&KgFiles>) = match shared {
            Some(p) => match &p.base {
                Some(b) if b.of_kg.len() == n => (p.write.clone(), Some(b)),
                _ => (vec![true; n], None),
            },
            None => (vec![true; n], None),
        };
        if let (Some(b), true) = (base, shared.is_some_and(|p| p.declare_base)) {
            declare_base_files(target, b, &mut write)?;
        }
        let area = if shared.is_some() {
            FileArea::Shared
        } else {
            FileArea::Private
        };
        let new_file = if write.iter().any(|w| *w) {
            let bytes = encode_file(&view, &write, cancel)?;
            let name = file_name(&view.uid, view.options.checkpoint_id, range);
            Some(target.write_file(area, &name, bytes)?)
        } else {
            None
        };
        // kg -> file mapping.
        let mut files: Vec<FileRef> = Vec::new();
        let mut of_kg = Vec::with_capacity(n);
        for (i, w) in write.iter().enumerate() {
            let f = match (w, &new_file, base) {
                (true, Some(f), _) => f,
                (false, _, Some(b)) => b
                    .of_kg
                    .get(i)
                    .and_then(|&j| b.files.get(j))
                    .ok_or_else(|| internal("base mapping out of range"))?,
                _ => return Err(internal("key group without a file")),
            };
            let j = match files.iter().position(|x| x == f) {
                Some(j) => j,
                None => {
                    files.push(f.clone());
                    files.len() - 1
                }
            };
            of_kg.push(j);
        }
        let canonical = canonical_files(range, &files, &of_kg);
        if let Some(p) = &incremental {
            let outcome = if shared.is_some() {
                Outcome::Shared(Arc::new(KgFiles { files, of_kg }))
            } else {
                Outcome::Private
            };
            // Set once; a second run of the same snapshot is impossible (`self: Box<Self>`).
            let _ = p.outcome.set(outcome);
        }
        Ok(KeyedStateHandle {
            key_group_range: range,
            key_codec: view.key_codec,
            states: view.states.into_iter().map(|s| s.meta).collect(),
            data: KeyedData::Canonical { files: canonical },
        })
    }
}

/// Declares every base file that a key group not in `write` takes from `base` to `target`
/// (which protects it from retention while this checkpoint is in flight); the key groups of
/// a file the target does not hold any more are added to `write`.
fn declare_base_files(
    target: &dyn SnapshotTarget,
    base: &KgFiles,
    write: &mut [bool],
) -> Result<()> {
    let mut held: Vec<Option<bool>> = vec![None; base.files.len()];
    for (w, &j) in write.iter_mut().zip(&base.of_kg) {
        if *w {
            continue;
        }
        let (Some(slot), Some(file)) = (held.get_mut(j), base.files.get(j)) else {
            return Err(internal("base mapping out of range"));
        };
        let holds = match *slot {
            Some(h) => h,
            None => *slot.insert(target.holds_shared(file)?),
        };
        if !holds {
            *w = true;
        }
    }
    Ok(())
}

fn encode_file(view: &SyncView, write: &[bool], cancel: &CancelToken) -> Result<Vec<u8>> {
    let table = view
        .states
        .iter()
        .map(|s| FileState {
            name: s.meta.name.clone(),
            kind: s.meta.kind,
        })
        .collect();
    let ctx = || {
        format!(
            "writing state file uid={} checkpoint_id={}",
            view.uid, view.options.checkpoint_id
        )
    };
    let mut writer = StateFileWriter::new(table).map_err(|e| StateError::layer(ctx(), e))?;
    let mut buf = KgBuffer::default();
    for (kg_idx, kg) in view.range.iter().enumerate() {
        if !write.get(kg_idx).copied().unwrap_or(false) {
            continue;
        }
        if cancel.is_cancelled() {
            return Err(StateError::Cancelled {
                checkpoint_id: view.options.checkpoint_id,
            });
        }
        let mut out = KgWriter {
            writer: &mut writer,
            kg,
            context: &ctx,
        };
        // States in file order (sorted by name), so every state's entries follow those of
        // the states before it.
        for (i, s) in view.states.iter().enumerate() {
            s.entries.write_kg(kg_idx, i as u32, &mut buf, &mut out)?;
        }
    }
    writer.finish().map_err(|e| StateError::layer(ctx(), e))
}

/// Files in order of their first key group, each with its key groups as ranges.
fn canonical_files(range: KeyGroupRange, files: &[FileRef], of_kg: &[usize]) -> Vec<CanonicalFile> {
    let mut out: Vec<CanonicalFile> = files
        .iter()
        .map(|f| CanonicalFile {
            file: f.clone(),
            key_groups: Vec::new(),
        })
        .collect();
    for (kg, &j) in range.iter().zip(of_kg) {
        if let Some(cf) = out.get_mut(j) {
            match cf.key_groups.last_mut() {
                Some(last) if last.end == kg => last.end = kg + 1,
                _ => cf.key_groups.push(KeyGroupRange::new(kg, kg + 1)),
            }
        }
    }
    out
}

/// `hm-<uid>-<uidhash>-<checkpoint>-<kgstart>_<kgend>-<nonce>.cst`: unique per operator,
/// subtask and attempt (a retried checkpoint id never overwrites another attempt's file).
fn file_name(uid: &str, checkpoint_id: u64, range: KeyGroupRange) -> String {
    let clean: String = uid
        .chars()
        .take(32)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let hash = murmur3_32(uid.as_bytes(), 0);
    let nonce = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "hm-{clean}-{hash:08x}-{checkpoint_id}-{}_{}-{nonce:016x}.cst",
        range.start, range.end
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_valid_and_unique() {
        let r = KeyGroupRange::new(3, 9);
        let a = file_name("my op/ü ..", 7, r);
        let b = file_name("my op/ü ..", 7, r);
        assert!(cairn_core::is_valid_file_name(&a), "{a}");
        assert_ne!(a, b);
        assert!(a.starts_with("hm-my_op____"), "{a}");
        assert!(a.contains("-7-3_9-"), "{a}");
    }

    #[test]
    fn pending_dirty_sets_accumulate_until_completion() {
        let mut inc = Incremental::new(4);
        inc.dirty[0] = true;
        let p1 = inc.begin(1, true);
        assert_eq!(p1.write, [true, false, false, false]);
        inc.dirty[1] = true;
        let p2 = inc.begin(2, true);
        assert_eq!(p2.write, [true, true, false, false]);
        // Abort 2: its own changes come back.
        inc.abort(2);
        assert_eq!(inc.dirty, [false, true, false, false]);
        let files = Arc::new(KgFiles {
            files: vec![],
            of_kg: vec![0; 4],
        });
        p1.outcome.set(Outcome::Shared(files)).unwrap();
        inc.complete(1);
        assert_eq!(inc.base_id(), Some(1));
        let p3 = inc.begin(3, true);
        assert_eq!(p3.write, [false, true, false, false]);
        assert!(p3.base.is_some());
        assert!(!p3.declare_base, "no other checkpoint pending");
        // Completing without an outcome keeps the changes.
        inc.complete(3);
        assert_eq!(inc.dirty, [false, true, false, false]);
        assert_eq!(inc.base_id(), Some(1));
    }

    #[test]
    fn base_files_are_declared_while_a_checkpoint_of_another_base_is_pending() {
        let files = || {
            Arc::new(KgFiles {
                files: vec![],
                of_kg: vec![0; 2],
            })
        };
        let mut inc = Incremental::new(2);
        let p1 = inc.begin(1, true);
        let p2 = inc.begin(2, true); // no base, like 1
        assert!(!p2.declare_base);
        p1.outcome.set(Outcome::Shared(files())).unwrap();
        inc.complete(1);
        // 2 (planned without a base) may complete while 3 (based on 1) is in flight.
        let p3 = inc.begin(3, true);
        assert!(p3.base.is_some() && p3.declare_base);
        p2.outcome.set(Outcome::Shared(files())).unwrap();
        inc.complete(2);
        // 3 is based on 1 and 4 on 2: 3 may complete while 4 is in flight.
        let p4 = inc.begin(4, true);
        assert!(p4.declare_base);
        p3.outcome.set(Outcome::Shared(files())).unwrap();
        inc.complete(3);
        // 4 is pending with base 2, 5 is based on 3.
        assert!(inc.begin(5, true).declare_base);
        inc.abort(4);
        inc.abort(5);
        // Nothing pending, or pending with the same base: nothing to declare.
        let p6 = inc.begin(6, true);
        assert!(!p6.declare_base);
        assert!(!inc.begin(7, true).declare_base);
    }
}
