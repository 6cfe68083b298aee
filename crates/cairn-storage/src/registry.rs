//! The in-process registry of in-flight checkpoints and the shared files they write or
//! reference, which garbage collection must not delete.
//!
//! One registry serves every [`CheckpointStorage`] open on a directory in this process
//! ([`Registry::for_directory`]).
//!
//! Protocol (what makes GC safe against writers in the same process):
//! - a writer registers a shared name **before** it puts (or references) the file;
//! - GC checks a candidate against the registry and deletes it while holding the registry
//!   lock, so a registration is either seen by GC or happens after the delete (then the
//!   writer's put recreates the file, or its reference check finds it missing);
//! - while any GC runs, a finished (published or aborted) checkpoint stays registered until
//!   the last GC ends, because that GC may have listed the manifests before the publish.
//!
//! Shared files written *outside* a checkpoint (a changelog backend uploads log segments and
//! materialized snapshots in the background, before any manifest references them) are
//! **pinned**: [`CheckpointStorage::write_pinned_shared`] pins the name before the put, and
//! GC keeps a pinned name like an in-flight one until [`CheckpointStorage::unpin_shared`]
//! (the writer releases it once a completed checkpoint no longer needs it; from then on the
//! normal rules apply: it is deleted when no retained manifest references it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use cairn_core::{FileArea, FileRef};

use crate::checkpoint::CheckpointStorage;
use crate::error::StorageError;
use crate::layout::{check_name, join, put_file, shared_dir};
use crate::store::DirectoryKey;

/// Where a writer is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriterState {
    Open,
    /// The manifest is being written.
    Publishing,
    Published,
    Aborted,
}

impl WriterState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            WriterState::Open => "open",
            WriterState::Publishing => "publishing",
            WriterState::Published => "published",
            WriterState::Aborted => "aborted",
        }
    }
}

#[derive(Debug)]
struct Entry {
    shared: HashSet<String>,
    state: WriterState,
}

#[derive(Debug, Default)]
pub(crate) struct RegistryState {
    entries: BTreeMap<u64, Entry>,
    gc_running: usize,
    /// The highest checkpoint id begun in this process.
    max_begun: Option<u64>,
    /// Completed checkpoints being restored in this process, with the number of readers.
    restoring: BTreeMap<u64, usize>,
    /// Shared files written outside a checkpoint, with the number of pins.
    pinned: HashMap<String, usize>,
}

#[derive(Debug, Default)]
pub(crate) struct Registry {
    state: Mutex<RegistryState>,
}

/// The registry of every checkpoint directory a storage in this process has open.
static REGISTRIES: Mutex<BTreeMap<DirectoryKey, Weak<Registry>>> = Mutex::new(BTreeMap::new());

impl Registry {
    /// The registry of directory `key`, shared by every storage open on it in this process:
    /// two handles on one directory (say the job's, and one a restore opened by path) must
    /// see each other's in-flight checkpoints, pins and restores, and count ids together.
    pub(crate) fn for_directory(key: DirectoryKey) -> Arc<Registry> {
        let mut all = REGISTRIES.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, r| r.strong_count() > 0);
        if let Some(registry) = all.get(&key).and_then(Weak::upgrade) {
            return registry;
        }
        let registry = Arc::new(Registry::default());
        all.insert(key, Arc::downgrade(&registry));
        registry
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, RegistryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RegistryState {
    /// Registers a new in-flight checkpoint; `Err` with the reason if the id is taken.
    pub(crate) fn begin(&mut self, id: u64) -> Result<(), String> {
        if let Some(max) = self.max_begun {
            if id <= max {
                return Err(format!(
                    "checkpoint ids must increase; {max} was already begun"
                ));
            }
        }
        self.entries.insert(
            id,
            Entry {
                shared: HashSet::new(),
                state: WriterState::Open,
            },
        );
        self.max_begun = Some(id);
        Ok(())
    }

    pub(crate) fn max_begun(&self) -> Option<u64> {
        self.max_begun
    }

    /// The state of checkpoint `id`'s writer, if it is registered.
    pub(crate) fn state(&self, id: u64) -> Option<WriterState> {
        self.entries.get(&id).map(|e| e.state)
    }

    /// Registers `name` as written or referenced by open checkpoint `id`; `Ok(true)` when
    /// the name was not registered for `id` before.
    pub(crate) fn add_shared(&mut self, id: u64, name: &str) -> Result<bool, WriterState> {
        match self.entries.get_mut(&id) {
            Some(e) if e.state == WriterState::Open => Ok(e.shared.insert(name.to_string())),
            Some(e) => Err(e.state),
            None => Err(WriterState::Aborted),
        }
    }

    /// Undoes an [`Self::add_shared`] that returned `Ok(true)` (a reference that failed).
    pub(crate) fn remove_shared(&mut self, id: u64, name: &str) {
        if let Some(e) = self.entries.get_mut(&id) {
            e.shared.remove(name);
        }
    }

    /// Moves open checkpoint `id` to publishing (no more files, no abort).
    pub(crate) fn start_publish(&mut self, id: u64) -> Result<(), WriterState> {
        match self.entries.get_mut(&id) {
            Some(e) if e.state == WriterState::Open => {
                e.state = WriterState::Publishing;
                Ok(())
            }
            Some(e) => Err(e.state),
            None => Err(WriterState::Aborted),
        }
    }

    /// Ends checkpoint `id` (published or aborted). Its registrations are dropped now, or when
    /// the last running GC ends.
    pub(crate) fn finish(&mut self, id: u64, state: WriterState) {
        if self.gc_running > 0 {
            if let Some(e) = self.entries.get_mut(&id) {
                e.state = state;
            }
        } else {
            self.entries.remove(&id);
        }
    }

    /// Whether checkpoint `id` is registered (open, or finished during a running GC).
    pub(crate) fn is_in_flight(&self, id: u64) -> bool {
        self.entries.contains_key(&id)
    }

    /// Whether shared file `name` is protected.
    pub(crate) fn is_shared_in_flight(&self, name: &str) -> bool {
        self.pinned.contains_key(name) || self.entries.values().any(|e| e.shared.contains(name))
    }

    /// Pins shared file `name` (counted: each pin needs its own unpin).
    pub(crate) fn pin(&mut self, name: &str) {
        *self.pinned.entry(name.to_string()).or_insert(0) += 1;
    }

    /// Drops one pin of `name`.
    pub(crate) fn unpin(&mut self, name: &str) {
        if let Some(n) = self.pinned.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                self.pinned.remove(name);
            }
        }
    }

    /// A restore of checkpoint `id` starts reading; GC keeps it until [`Self::end_restore`].
    pub(crate) fn begin_restore(&mut self, id: u64) {
        *self.restoring.entry(id).or_insert(0) += 1;
    }

    /// A restore of checkpoint `id` is done reading.
    pub(crate) fn end_restore(&mut self, id: u64) {
        if let Some(n) = self.restoring.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.restoring.remove(&id);
            }
        }
    }

    /// Whether a restore is reading checkpoint `id`.
    pub(crate) fn is_restoring(&self, id: u64) -> bool {
        self.restoring.contains_key(&id)
    }

    pub(crate) fn gc_started(&mut self) {
        self.gc_running += 1;
    }

    pub(crate) fn gc_ended(&mut self) {
        self.gc_running = self.gc_running.saturating_sub(1);
        if self.gc_running == 0 {
            self.entries
                .retain(|_, e| matches!(e.state, WriterState::Open | WriterState::Publishing));
        }
    }
}

impl CheckpointStorage {
    /// Writes shared file `name` outside any checkpoint and pins it: GC in this process keeps
    /// it until [`CheckpointStorage::unpin_shared`], even while no manifest references it.
    /// The pin is taken before the put, so a concurrent GC never deletes the new file. On
    /// error the pin is dropped again. Each successful call needs one unpin.
    pub fn write_pinned_shared(&self, name: &str, bytes: Vec<u8>) -> Result<FileRef, StorageError> {
        check_name(FileArea::Shared, name)?;
        self.inner.registry.lock().pin(name);
        let path = join(&shared_dir(&self.inner.root), name);
        let written = put_file(&self.inner.store, &path, FileArea::Shared, name, bytes);
        if written.is_err() {
            self.inner.registry.lock().unpin(name);
        }
        written
    }

    /// Drops one pin of shared file `name` (see [`CheckpointStorage::write_pinned_shared`]);
    /// the file is then deleted by retention once no retained manifest references it.
    pub fn unpin_shared(&self, name: &str) {
        self.inner.registry.lock().unpin(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_shared_files_survive_gc_until_unpinned() {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let f = storage
            .write_pinned_shared("log/seg-1", b"records".to_vec())
            .unwrap();
        assert_eq!(f.size, 7);
        // A second pin of the same name (a retried upload) needs its own unpin.
        storage
            .write_pinned_shared("log/seg-1", b"records".to_vec())
            .unwrap();
        let report = storage.retain(1).unwrap();
        assert!(report.shared_deleted.is_empty(), "{report:?}");
        assert_eq!(report.shared_in_flight, vec!["log/seg-1".to_string()]);
        storage.unpin_shared("log/seg-1");
        assert!(storage.retain(1).unwrap().shared_deleted.is_empty());
        storage.unpin_shared("log/seg-1");
        let report = storage.retain(1).unwrap();
        assert_eq!(report.shared_deleted, vec!["log/seg-1".to_string()]);
        assert!(storage.write_pinned_shared("../x", vec![]).is_err());
    }

    #[test]
    fn finished_entries_stay_registered_while_gc_runs() {
        let reg = Registry::default();
        let mut st = reg.lock();
        st.begin(1).unwrap();
        st.add_shared(1, "a").unwrap();
        st.gc_started();
        st.finish(1, WriterState::Published);
        assert!(st.is_shared_in_flight("a"));
        assert_eq!(st.add_shared(1, "b"), Err(WriterState::Published));
        st.gc_ended();
        assert!(!st.is_shared_in_flight("a"));
        assert!(!st.is_in_flight(1));
    }

    #[test]
    fn ids_must_increase() {
        let reg = Registry::default();
        let mut st = reg.lock();
        st.begin(5).unwrap();
        assert!(st.begin(5).is_err());
        assert!(st.begin(4).is_err());
        st.begin(6).unwrap();
    }
}
