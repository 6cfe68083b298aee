//! Retention and garbage collection, derived from the manifests that exist (so it survives
//! crashes and can run offline) plus this process's in-flight registry.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_core::FileArea;

use crate::checkpoint::{CheckpointStatus, CheckpointStorage};
use crate::error::StorageError;
use crate::layout::{checkpoint_dir, join_listed, shared_dir};
use crate::store::staging_base;

/// What [`CheckpointStorage::retain`] deleted, or [`CheckpointStorage::gc_plan`] would delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Completed checkpoints kept (the newest `num_retained`), ascending.
    pub retained: Vec<u64>,
    /// Completed checkpoints deleted (subsumed), ascending.
    pub subsumed: Vec<u64>,
    /// Completed checkpoints beyond the retained ones, kept because a restore in this
    /// process is reading them (see [`CheckpointStorage::source`]), ascending.
    pub kept_restoring: Vec<u64>,
    /// Incomplete (or corrupt-manifest) checkpoint directories deleted: older than the newest
    /// completed checkpoint and not in flight in this process.
    pub incomplete: Vec<u64>,
    /// Incomplete checkpoint directories kept: in flight here, or newer than the newest
    /// completed checkpoint (maybe in flight elsewhere).
    pub kept_incomplete: Vec<u64>,
    /// Shared files deleted (names relative to `shared/`), sorted.
    pub shared_deleted: Vec<String>,
    /// Unreferenced shared files kept because a checkpoint in flight here writes or
    /// references them, sorted.
    pub shared_in_flight: Vec<String>,
    /// Shared files that no manifest references, kept because they are younger than the
    /// minimum age (see [`CheckpointStorage::retain_min_age`]), sorted.
    pub shared_young: Vec<String>,
    /// Staging files of interrupted puts in a local `shared/` deleted: `<name>#<n>`, where
    /// `object_store` writes a file before renaming it to `<name>`, left behind by a process
    /// that died in between (names relative to `shared/`, sorted). Listings never show them
    /// and no manifest can name them. One whose `<name>` a checkpoint in flight here writes
    /// is kept in [`GcReport::shared_in_flight`], and one younger than the minimum age in
    /// [`GcReport::shared_young`].
    pub staging_deleted: Vec<String>,
    /// Checkpoints whose manifest exists but does not decode, with the error.
    pub corrupt: Vec<(u64, String)>,
    /// Why shared files were not collected at all, if they were not.
    pub shared_skipped: Option<String>,
}

/// Increments the registry's GC count for the duration of a GC.
struct GcGuard<'a>(&'a CheckpointStorage);

impl<'a> GcGuard<'a> {
    fn new(s: &'a CheckpointStorage) -> Self {
        s.inner.registry.lock().gc_started();
        Self(s)
    }
}

impl Drop for GcGuard<'_> {
    fn drop(&mut self) {
        self.0.inner.registry.lock().gc_ended();
    }
}

impl CheckpointStorage {
    /// Keeps the newest `num_retained` (≥ 1) completed checkpoints and deletes the rest:
    /// older completed checkpoints (manifest first), incomplete directories older than the
    /// newest completed one and not in flight here, and shared files that no remaining
    /// manifest references and no in-flight checkpoint here writes or references.
    pub fn retain(&self, num_retained: usize) -> Result<GcReport, StorageError> {
        self.retain_from(0, num_retained)
    }

    /// [`CheckpointStorage::retain`] for a job whose first own checkpoint id is `first_id`:
    /// it keeps the newest `num_retained` of its own completed checkpoints (ids from
    /// `first_id` up) and deletes its older ones; the completed checkpoints of earlier runs in
    /// the directory stay, with the shared files they use (as Flink's default restore mode,
    /// in which a job never deletes the checkpoint it was restored from). Incomplete
    /// directories older than the newest kept checkpoint go whichever run left them: no one
    /// can restore them.
    pub fn retain_from(
        &self,
        first_id: u64,
        num_retained: usize,
    ) -> Result<GcReport, StorageError> {
        self.apply_retention(first_id, num_retained, Duration::ZERO)
    }

    /// [`CheckpointStorage::retain`] run from another process than the job's (a tool such
    /// as `state-dump gc`), which cannot see the job's in-flight checkpoints: shared files
    /// that no manifest references and incomplete checkpoint directories modified less than
    /// `min_age` ago are kept ([`GcReport::shared_young`], [`GcReport::kept_incomplete`]),
    /// since a job running elsewhere may be writing them for a checkpoint it has not
    /// published yet. Subsumed checkpoints and their files go at any age. Ages are the
    /// store's modification times against this machine's clock.
    pub fn retain_min_age(
        &self,
        num_retained: usize,
        min_age: Duration,
    ) -> Result<GcReport, StorageError> {
        self.apply_retention(0, num_retained, min_age)
    }

    fn apply_retention(
        &self,
        first_id: u64,
        num_retained: usize,
        min_age: Duration,
    ) -> Result<GcReport, StorageError> {
        let _guard = GcGuard::new(self);
        let mut report = self.plan(first_id, num_retained, min_age)?;
        for &id in &report.subsumed {
            // A restore that began after the plan holds on to the checkpoint's files only if
            // its manifest was kept: skip it (its shared files may still go; the restore then
            // fails cleanly with a missing file rather than reading wrong state).
            if self.inner.registry.lock().is_restoring(id) {
                continue;
            }
            self.delete_checkpoint_dir(id)?;
        }
        let mut deleted_incomplete = Vec::new();
        for &id in &report.incomplete {
            if self.inner.registry.lock().is_in_flight(id) {
                report.kept_incomplete.push(id);
                continue;
            }
            self.delete_checkpoint_dir(id)?;
            deleted_incomplete.push(id);
        }
        report.incomplete = deleted_incomplete;
        report.kept_incomplete.sort_unstable();
        let shared = shared_dir(&self.inner.root);
        let mut deleted = Vec::new();
        for name in std::mem::take(&mut report.shared_deleted) {
            // Check and delete under the registry lock: a writer registers before it puts.
            let reg = self.inner.registry.lock();
            if reg.is_shared_in_flight(&name) {
                report.shared_in_flight.push(name);
                continue;
            }
            self.inner.store.delete(&join_listed(&shared, &name))?;
            drop(reg);
            deleted.push(name);
        }
        report.shared_deleted = deleted;
        let staging = std::mem::take(&mut report.staging_deleted);
        self.delete_staging(staging, &mut report)?;
        report.shared_in_flight.sort_unstable();
        Ok(report)
    }

    /// Deletes the staging files `names` in `shared/` (see [`GcReport::staging_deleted`]),
    /// except one whose target file is in flight here now.
    fn delete_staging(
        &self,
        names: Vec<String>,
        report: &mut GcReport,
    ) -> Result<(), StorageError> {
        let shared = shared_dir(&self.inner.root);
        for name in names {
            let reg = self.inner.registry.lock();
            if staging_target(&name).is_some_and(|t| reg.is_shared_in_flight(t)) {
                report.shared_in_flight.push(name);
                continue;
            }
            self.inner.store.remove_local_staging(&shared, &name)?;
            drop(reg);
            report.staging_deleted.push(name);
        }
        Ok(())
    }

    /// Discards every checkpoint: deletes every checkpoint directory (manifest first) and
    /// every shared file, except what a checkpoint in flight or a restore in this process
    /// uses.
    pub fn discard_all(&self) -> Result<GcReport, StorageError> {
        self.discard_from(0)
    }

    /// Discards the checkpoints of a job whose first own checkpoint id is `first_id` (for a
    /// job cancelled without retained checkpoints): deletes the checkpoint directories with
    /// an id from `first_id` up (manifest first), except one in flight or being restored in
    /// this process, and then the shared files that no remaining manifest references. The
    /// checkpoints of earlier runs in the same directory stay, with their files: among them
    /// the one the job may have been restored from, and others a user retained (in Flink
    /// each run has a directory of its own, and a job never deletes a checkpoint it was
    /// restored from in its default restore mode).
    pub fn discard_from(&self, first_id: u64) -> Result<GcReport, StorageError> {
        let _guard = GcGuard::new(self);
        let mut report = GcReport::default();
        // Listed before the manifests, as in `plan`.
        let shared = shared_dir(&self.inner.root);
        let mut shared_files = Vec::new();
        for meta in self.inner.store.list(&shared)? {
            if let Some(parts) = meta.location.prefix_match(&shared) {
                let name: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
                shared_files.push(name.join("/"));
            }
        }
        // No manifest names a staging file: each is garbage unless its put is in flight.
        let staging = self.inner.store.local_staging_files(&shared)?;
        self.delete_staging(staging.into_iter().map(|(n, _)| n).collect(), &mut report)?;
        let mut referenced = BTreeSet::new();
        let mut kept_corrupt = false;
        for (id, status) in self.scan()? {
            if id < first_id {
                match &status {
                    CheckpointStatus::Complete(m) => referenced.extend(
                        m.files()
                            .filter(|f| f.area == FileArea::Shared)
                            .map(|f| f.name.clone()),
                    ),
                    CheckpointStatus::Corrupt(e) => {
                        report.corrupt.push((id, e.to_string()));
                        kept_corrupt = true;
                    }
                    CheckpointStatus::Incomplete => {}
                }
                continue;
            }
            let busy = {
                let reg = self.inner.registry.lock();
                reg.is_in_flight(id) || reg.is_restoring(id)
            };
            if busy {
                report.kept_incomplete.push(id);
                continue;
            }
            self.delete_checkpoint_dir(id)?;
            match status {
                CheckpointStatus::Complete(_) => report.subsumed.push(id),
                _ => report.incomplete.push(id),
            }
        }
        if !report.kept_incomplete.is_empty() {
            report.shared_skipped = Some("a checkpoint is in flight or being restored".into());
            return Ok(report);
        }
        if kept_corrupt {
            report.shared_skipped = Some(
                "a kept checkpoint has a manifest this build cannot read; its shared files are unknown"
                    .into(),
            );
            return Ok(report);
        }
        for name in shared_files {
            if referenced.contains(&name) {
                continue;
            }
            let reg = self.inner.registry.lock();
            if reg.is_shared_in_flight(&name) {
                report.shared_in_flight.push(name);
                continue;
            }
            self.inner.store.delete(&join_listed(&shared, &name))?;
            drop(reg);
            report.shared_deleted.push(name);
        }
        Ok(report)
    }

    /// What [`CheckpointStorage::retain`] would delete now, without deleting anything.
    pub fn gc_plan(&self, num_retained: usize) -> Result<GcReport, StorageError> {
        self.gc_plan_min_age(num_retained, Duration::ZERO)
    }

    /// What [`CheckpointStorage::retain_min_age`] would delete now, without deleting
    /// anything.
    pub fn gc_plan_min_age(
        &self,
        num_retained: usize,
        min_age: Duration,
    ) -> Result<GcReport, StorageError> {
        let _guard = GcGuard::new(self);
        self.plan(0, num_retained, min_age)
    }

    fn plan(
        &self,
        first_id: u64,
        num_retained: usize,
        min_age: Duration,
    ) -> Result<GcReport, StorageError> {
        if num_retained == 0 {
            return Err(StorageError::InvalidArgument {
                reason: "num_retained must be at least 1".into(),
            });
        }
        let young = Youth::new(min_age);
        let mut report = GcReport::default();
        // List the shared files before the manifests: a file put after this listing is not a
        // candidate, and one listed here was registered by its writer before the put.
        let shared = shared_dir(&self.inner.root);
        let mut shared_files = BTreeMap::new();
        for meta in self.inner.store.list(&shared)? {
            if let Some(parts) = meta.location.prefix_match(&shared) {
                let name: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
                shared_files.insert(name.join("/"), young.is_young(&meta));
            }
        }
        let staging = self.inner.store.local_staging_files(&shared)?;
        let scan = self.scan()?;
        // Incomplete directories with a file younger than the minimum age (listed before the
        // registry is locked).
        let mut young_dirs = BTreeSet::new();
        if young.applies() {
            for (id, status) in &scan {
                if matches!(status, CheckpointStatus::Complete(_)) {
                    continue;
                }
                let dir = checkpoint_dir(&self.inner.root, *id);
                if self
                    .inner
                    .store
                    .list(&dir)?
                    .iter()
                    .any(|m| young.is_young(m))
                {
                    young_dirs.insert(*id);
                }
            }
        }
        let complete: Vec<u64> = scan
            .iter()
            .filter(|(id, s)| *id >= first_id && matches!(s, CheckpointStatus::Complete(_)))
            .map(|(id, _)| *id)
            .collect();
        let split = complete.len().saturating_sub(num_retained);
        report.retained = complete[split..].to_vec();
        let newest = report.retained.last().copied();
        let mut referenced = BTreeSet::new();
        // Shared files of the subsumed checkpoints: completed files, deleted at any age.
        let mut of_subsumed = BTreeSet::new();
        let mut kept_corrupt = false;
        {
            let reg = self.inner.registry.lock();
            for &id in &complete[..split] {
                if reg.is_restoring(id) {
                    report.kept_restoring.push(id);
                } else {
                    report.subsumed.push(id);
                }
            }
            for (id, status) in &scan {
                match status {
                    CheckpointStatus::Complete(m) => {
                        let files = m
                            .files()
                            .filter(|f| f.area == FileArea::Shared)
                            .map(|f| f.name.clone());
                        if *id < first_id
                            || report.retained.contains(id)
                            || report.kept_restoring.contains(id)
                        {
                            referenced.extend(files);
                        } else if young.applies() {
                            of_subsumed.extend(files);
                        }
                    }
                    CheckpointStatus::Incomplete | CheckpointStatus::Corrupt(_) => {
                        if let CheckpointStatus::Corrupt(e) = status {
                            report.corrupt.push((*id, e.to_string()));
                        }
                        let older = newest.is_some_and(|n| *id < n);
                        if older && !reg.is_in_flight(*id) && !young_dirs.contains(id) {
                            report.incomplete.push(*id);
                        } else {
                            report.kept_incomplete.push(*id);
                            kept_corrupt |= matches!(status, CheckpointStatus::Corrupt(_));
                        }
                    }
                }
            }
            // No manifest names a staging file (`#` is not allowed in a file name), so each
            // one goes, corrupt manifests or not, unless its put may be running.
            for (name, modified) in staging {
                if staging_target(&name).is_some_and(|t| reg.is_shared_in_flight(t)) {
                    report.shared_in_flight.push(name);
                } else if young.is_young_at(modified) {
                    report.shared_young.push(name);
                } else {
                    report.staging_deleted.push(name);
                }
            }
            if kept_corrupt {
                report.shared_skipped = Some(
                    "a kept checkpoint has a manifest this build cannot read; its shared files are unknown"
                        .into(),
                );
            } else {
                for (name, is_young) in shared_files {
                    if referenced.contains(&name) {
                        continue;
                    }
                    if reg.is_shared_in_flight(&name) {
                        report.shared_in_flight.push(name);
                    } else if is_young && !of_subsumed.contains(&name) {
                        report.shared_young.push(name);
                    } else {
                        report.shared_deleted.push(name);
                    }
                }
            }
        }
        report.shared_in_flight.sort_unstable();
        report.shared_young.sort_unstable();
        Ok(report)
    }
}

/// Which objects are younger than a minimum age.
struct Youth {
    /// Objects modified after this (milliseconds since the epoch) are young; `None`: none is.
    cutoff_ms: Option<i64>,
}

impl Youth {
    fn new(min_age: Duration) -> Self {
        let cutoff_ms = (!min_age.is_zero()).then(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            ms(now).saturating_sub(ms(min_age))
        });
        Self { cutoff_ms }
    }

    fn applies(&self) -> bool {
        self.cutoff_ms.is_some()
    }

    fn is_young(&self, meta: &object_store::ObjectMeta) -> bool {
        self.cutoff_ms
            .is_some_and(|cutoff| meta.last_modified.timestamp_millis() > cutoff)
    }

    /// [`Youth::is_young`] for a file-system modification time; an unknown one is young
    /// whenever a minimum age applies.
    fn is_young_at(&self, modified: Option<SystemTime>) -> bool {
        let Some(cutoff) = self.cutoff_ms else {
            return false;
        };
        modified
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .is_none_or(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX) > cutoff)
    }
}

/// The shared file a staging file `name` (relative to `shared/`) is written for: `name`
/// without its `#<n>` suffix.
fn staging_target(name: &str) -> Option<&str> {
    let file = name.rsplit('/').next().unwrap_or(name);
    let base = staging_base(file)?;
    Some(&name[..name.len() - file.len() + base.len()])
}
