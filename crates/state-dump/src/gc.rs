//! `state-dump gc`: retention and garbage collection of a job's checkpoint directory,
//! offline, through `cairn-storage` (`CheckpointStorage::gc_plan` for `--dry-run`,
//! `CheckpointStorage::retain` otherwise). Both derive what to delete from the manifests
//! that exist, so `--dry-run` lists exactly what `gc` then deletes, and an interrupted `gc`
//! is simply run again.
//!
//! Assumes no job is writing to the directory (files a running job in another process is
//! writing are not protected).

use cairn_storage::GcReport;
use serde::Serialize;

use crate::error::DumpError;
use crate::open::JobRoot;
use crate::table;

/// What `gc` deleted, or would delete with `--dry-run`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GcOutcome {
    /// The job's checkpoint directory.
    pub root: String,
    /// Nothing was deleted.
    pub dry_run: bool,
    /// Complete checkpoints kept, ascending.
    pub retained: Vec<u64>,
    /// Everything deleted (or to delete), in order: subsumed checkpoint directories
    /// (`chk-<id>/`), incomplete ones, then shared files (`shared/<name>`).
    pub deleted: Vec<String>,
    /// Incomplete checkpoint directories kept (newer than the newest complete one).
    pub kept_incomplete: Vec<u64>,
    /// Checkpoints whose manifest does not decode, with the error.
    pub corrupt: Vec<String>,
    /// Why shared files were not collected, if they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_skipped: Option<String>,
}

impl GcOutcome {
    fn from_report(root: &JobRoot, r: GcReport, dry_run: bool) -> Self {
        let mut deleted: Vec<String> = r
            .subsumed
            .iter()
            .chain(&r.incomplete)
            .map(|id| format!("chk-{id}/"))
            .collect();
        deleted.extend(r.shared_deleted.iter().map(|n| format!("shared/{n}")));
        Self {
            root: root.location.clone(),
            dry_run,
            retained: r.retained,
            deleted,
            kept_incomplete: r.kept_incomplete,
            corrupt: r
                .corrupt
                .into_iter()
                .map(|(id, e)| format!("chk-{id}: {}", e.replace('\n', " ")))
                .collect(),
            shared_skipped: r.shared_skipped,
        }
    }

    /// The human form.
    pub fn render(&self) -> String {
        let action = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let retained: Vec<String> = self.retained.iter().map(|id| format!("chk-{id}")).collect();
        let mut out = format!(
            "{}: retaining {}\n",
            self.root,
            if retained.is_empty() {
                "no complete checkpoint".to_string()
            } else {
                retained.join(", ")
            }
        );
        let rows: Vec<Vec<String>> = self
            .deleted
            .iter()
            .map(|p| vec![action.to_string(), format!("{}/{p}", self.root)])
            .collect();
        if rows.is_empty() {
            out.push_str("nothing to delete\n");
        } else {
            out.push_str(&table::render(&["ACTION", "PATH"], &rows));
        }
        for id in &self.kept_incomplete {
            out.push_str(&format!("kept incomplete chk-{id} (may be in flight)\n"));
        }
        for c in &self.corrupt {
            out.push_str(&format!("corrupt manifest: {c}\n"));
        }
        if let Some(why) = &self.shared_skipped {
            out.push_str(&format!("shared files not collected: {why}\n"));
        }
        out
    }
}

/// Keeps the newest `retain` complete checkpoints of the job at `root` and deletes what no
/// retained manifest references; with `dry_run`, only says what it would delete.
pub fn gc(root: &JobRoot, retain: usize, dry_run: bool) -> Result<GcOutcome, DumpError> {
    if retain == 0 {
        return Err(DumpError::usage("--retain must be at least 1"));
    }
    let report = if dry_run {
        root.storage.gc_plan(retain)
    } else {
        root.storage.retain(retain)
    }
    .map_err(|e| root.err(e))?;
    Ok(GcOutcome::from_report(root, report, dry_run))
}
