//! Snapshots: the synchronous phase (freeze the cache's dirty entries and hand them to a seal
//! worker that writes them and takes a RocksDB checkpoint of hard links into a scratch
//! directory, `seal.rs`) and the bookkeeping of native incremental checkpoints.
//!
//! The asynchronous phase waits for the checkpoint directory and then works on it alone, so
//! it runs on any thread and is unaffected by later writes; the directory is deleted when
//! the phase ends, fails, is cancelled or is dropped without running. What it writes:
//!
//! - savepoints and full checkpoints: one canonical state file (`canonical.rs`);
//! - incremental checkpoints into a target that takes shared files: the native checkpoint
//!   directory (`native.rs`), uploading only the SST and log files that the base does not
//!   hold.
//!
//! # The base of incremental checkpoints
//!
//! The base is the file list of the last *completed* native checkpoint (known from
//! `notify_checkpoint_complete`). Every checkpoint is recorded as pending with a slot for
//! its outcome; completing `n` makes `n`'s files the base (or ends the base if `n` was
//! written privately: retention may then delete the old base's shared files) and forgets
//! older pendings; aborting forgets `n`. While a full checkpoint is pending, a new
//! incremental one takes no base: the full one may complete first and end it. Unlike the
//! heap backend's, a native checkpoint always describes the whole instance, so a lost or
//! aborted checkpoint loses no changes. A restore from one native handle that is used as is
//! seeds the base with that handle's shared files. Those may live in another checkpoint
//! directory than the one the backend now writes to (a job restored from another job's
//! checkpoint), so a checkpoint references a file of a restored base only when its target
//! holds the file (`SnapshotTarget::holds_shared`) and uploads it otherwise.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, OnceLock};

use cairn_core::{
    AsyncSnapshot, CancelToken, CodecIdentity, KeyGroupRange, KeyedStateHandle, NativeFile, Result,
    SnapshotOptions, SnapshotTarget, SnapshotType, StateMeta,
};

use crate::backend::{clean_uid, nonce, RocksDbBackend};
use crate::db::io_err;
use crate::options::RocksDbOptions;
use crate::ttl::SnapshotExpiry;

/// The shared files of a native checkpoint (SST and log files) by their local name: file
/// numbers are never reused within an instance, an SST file never changes and a log only
/// grows, so name and size identify a file's content.
pub(crate) type NativeFiles = HashMap<String, NativeFile>;

#[derive(Debug)]
pub(crate) enum Outcome {
    /// Written natively with shared SST and log files: usable as a base.
    Native(Arc<NativeFiles>),
    /// Written privately (canonical): ends the base when completed.
    Private,
}

#[derive(Debug)]
struct Pending {
    incremental: bool,
    outcome: Arc<OnceLock<Outcome>>,
}

/// The files an incremental checkpoint may reference instead of uploading them.
#[derive(Clone, Debug)]
pub(crate) struct Base {
    /// The checkpoint they were written for; 0 for the snapshot the backend restored.
    id: u64,
    pub(crate) files: Arc<NativeFiles>,
}

impl Base {
    /// Files of the restored snapshot, which the target may not hold: check each before
    /// referencing it.
    pub(crate) fn is_restored(&self) -> bool {
        self.id == 0
    }
}

/// What a checkpoint's synchronous phase hands its asynchronous phase: the base it may
/// reference and the slot for its outcome.
type Plan = (Option<Base>, Arc<OnceLock<Outcome>>);

/// The incremental-checkpoint bookkeeping of a backend.
#[derive(Debug, Default)]
pub(crate) struct Incremental {
    pending: BTreeMap<u64, Pending>,
    base: Option<Base>,
}

impl Incremental {
    /// Records checkpoint `id` as pending; returns the base it may use and its outcome slot.
    fn begin(&mut self, id: u64, incremental: bool) -> Plan {
        let full_pending = self.pending.values().any(|p| !p.incremental);
        let outcome = Arc::new(OnceLock::new());
        self.pending.insert(
            id,
            Pending {
                incremental,
                outcome: outcome.clone(),
            },
        );
        let base = if full_pending || !incremental {
            None
        } else {
            self.base.clone()
        };
        (base, outcome)
    }

    pub(crate) fn complete(&mut self, id: u64) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        match p.outcome.get() {
            Some(Outcome::Native(files)) => {
                self.base = Some(Base {
                    id,
                    files: files.clone(),
                })
            }
            Some(Outcome::Private) => self.base = None,
            None => return,
        }
        self.pending.retain(|&k, _| k > id);
    }

    pub(crate) fn abort(&mut self, id: u64) {
        self.pending.remove(&id);
    }

    /// After a restore from a native handle used as is: its shared files are the base (they
    /// are in the restored snapshot's shared storage, under the same local names in the
    /// restored instance), so a first checkpoint into that storage uploads only what changed
    /// since the restored checkpoint.
    pub(crate) fn seed(&mut self, files: NativeFiles) {
        self.pending.clear();
        self.base = Some(Base {
            id: 0,
            files: Arc::new(files),
        });
    }

    #[cfg(test)]
    pub(crate) fn base_id(&self) -> Option<u64> {
        self.base.as_ref().map(|b| b.id)
    }
}

/// A RocksDB checkpoint directory, deleted on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the synchronous phase captured.
#[derive(Debug)]
pub(crate) struct SyncView {
    pub(crate) options: SnapshotOptions,
    pub(crate) uid: String,
    pub(crate) range: KeyGroupRange,
    pub(crate) key_codec: CodecIdentity,
    /// Every state with a column family, sorted by name.
    pub(crate) states: Vec<StateMeta>,
    /// What a canonical snapshot leaves out of each of `states` (TTL full-snapshot
    /// cleanup; native checkpoints keep everything).
    pub(crate) expiry: Vec<Option<SnapshotExpiry>>,
    pub(crate) dir: ScratchDir,
    pub(crate) rocks: RocksDbOptions,
}

/// The asynchronous phase of a RocksDB snapshot.
#[derive(Debug)]
struct RocksSnapshot {
    options: SnapshotOptions,
    uid: String,
    range: KeyGroupRange,
    key_codec: CodecIdentity,
    states: Vec<StateMeta>,
    /// What a canonical snapshot leaves out of each of `states` (TTL full-snapshot cleanup).
    expiry: Vec<Option<SnapshotExpiry>>,
    rocks: RocksDbOptions,
    /// Where the seal worker sends the scratch directory once the checkpoint is in it
    /// (taken by `run`; a snapshot dropped without running waits for it, so the directory
    /// is gone when the drop returns).
    ready: Option<Receiver<Result<ScratchDir>>>,
    /// For checkpoints: the base and the outcome slot.
    incremental: Option<Plan>,
}

/// The synchronous phase: freezes the cache's dirty entries and starts the seal worker that
/// writes them and creates the RocksDB checkpoint (`seal.rs`).
pub(crate) fn take(
    b: &mut RocksDbBackend,
    options: SnapshotOptions,
) -> Result<Box<dyn AsyncSnapshot>> {
    b.settle()?;
    let seq = b.seq;
    b.seq += 1;
    let name = format!(
        "{}.snap-{}-{seq}",
        b.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "rocks".into()),
        options.checkpoint_id
    );
    // The scratch directory exists from the synchronous phase on; the seal worker creates
    // the RocksDB checkpoint inside it.
    let dir = b.local_dir.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| io_err("removing stale snapshot dir", &dir, e))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| io_err("creating snapshot dir", &dir, e))?;
    // A native savepoint flushes the memtables first: it then holds compressed SST files
    // only, instead of a log of every write since the last flush that a restore replays.
    let ready = b.seal(ScratchDir(dir), options.is_native_savepoint())?;
    // A checkpoint that will be written privately counts as full: its completion ends the
    // base.
    let native = options.incremental && b.options.native_incremental;
    let incremental = (options.snapshot_type == SnapshotType::Checkpoint)
        .then(|| b.inc.begin(options.checkpoint_id, native));
    let states: Vec<StateMeta> = b.metas.values().cloned().collect();
    Ok(Box::new(RocksSnapshot {
        options,
        uid: b.uid.clone(),
        range: b.range,
        key_codec: b.key_codec.clone(),
        expiry: b.ttl.snapshot_expiry(&states),
        states,
        rocks: b.options.clone(),
        ready: Some(ready),
        incremental,
    }))
}

impl AsyncSnapshot for RocksSnapshot {
    fn run(
        mut self: Box<Self>,
        target: &dyn SnapshotTarget,
        cancel: &CancelToken,
    ) -> Result<KeyedStateHandle> {
        let ready = self.ready.take();
        let holder = crate::seal::wait(ready.as_ref(), self.options.checkpoint_id)?;
        let view = SyncView {
            options: self.options,
            uid: std::mem::take(&mut self.uid),
            range: self.range,
            key_codec: self.key_codec.clone(),
            states: std::mem::take(&mut self.states),
            expiry: std::mem::take(&mut self.expiry),
            dir: ScratchDir(crate::seal::checkpoint_dir(&holder.0)),
            rocks: self.rocks.clone(),
        };
        let incremental = self.incremental.take();
        // Removed (with the checkpoint in it) when this phase ends.
        let _holder = holder;
        let native = match view.options.snapshot_type {
            SnapshotType::Checkpoint => {
                view.options.incremental
                    && view.rocks.native_incremental
                    && target.supports_shared()
            }
            SnapshotType::Savepoint => view.options.is_native_savepoint(),
        };
        let (handle, outcome) = if native {
            let base = incremental.as_ref().and_then(|(b, _)| b.as_ref());
            let (handle, files) = crate::native::write(&view, base, target, cancel)?;
            (handle, Outcome::Native(Arc::new(files)))
        } else {
            (
                crate::canonical::write(&view, target, cancel)?,
                Outcome::Private,
            )
        };
        if let Some((_, slot)) = incremental {
            // Set once: a snapshot runs at most once (`self: Box<Self>`).
            let _ = slot.set(outcome);
        }
        Ok(handle)
    }
}

impl Drop for RocksSnapshot {
    fn drop(&mut self) {
        if let Some(ready) = self.ready.take() {
            // Wait for the seal worker, then drop the directory it sends.
            let _ = ready.recv();
        }
    }
}

/// `rocks-<uid>-<uidhash>-<checkpoint>-<start>_<end>-<nonce>`: unique per operator, subtask
/// and attempt.
pub(crate) fn private_prefix(uid: &str, checkpoint_id: u64, range: KeyGroupRange) -> String {
    format!(
        "rocks-{}-{:08x}-{checkpoint_id}-{}_{}-{:016x}",
        clean_uid(uid),
        cairn_core::murmur3_32(uid.as_bytes(), 0),
        range.start,
        range.end,
        nonce()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_moves_on_completion_and_ends_after_a_full_checkpoint() {
        let mut inc = Incremental::default();
        let (base, o1) = inc.begin(1, true);
        assert!(base.is_none());
        o1.set(Outcome::Native(Arc::new(NativeFiles::new())))
            .unwrap();
        inc.complete(1);
        assert_eq!(inc.base_id(), Some(1));
        let (_, o2) = inc.begin(2, false);
        let (base3, _) = inc.begin(3, true);
        assert!(
            base3.is_none(),
            "no base while a full checkpoint is pending"
        );
        o2.set(Outcome::Private).unwrap();
        inc.complete(2);
        assert_eq!(inc.base_id(), None);
        let (base4, o4) = inc.begin(4, true);
        assert!(base4.is_none());
        o4.set(Outcome::Native(Arc::new(NativeFiles::new())))
            .unwrap();
        inc.abort(4);
        inc.complete(4);
        assert_eq!(inc.base_id(), None);
    }
}
