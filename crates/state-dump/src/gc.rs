//! `state-dump gc`: retention and garbage collection of a job's checkpoint directory,
//! offline, through `cairn-storage` (`CheckpointStorage::gc_plan` for `--dry-run`,
//! `CheckpointStorage::retain` otherwise). Both derive what to delete from the manifests
//! that exist, so `--dry-run` lists exactly what `gc` then deletes, and an interrupted `gc`
//! is simply run again.
//!
//! A job running in another process may be writing files for a checkpoint it has not
//! published yet: shared files that no manifest references and incomplete checkpoint
//! directories younger than `--min-age` (default one hour, as `git gc` keeps young loose
//! objects) are kept and listed; `--min-age 0` deletes them too when no job runs. On a local
//! directory the running job's lock (`CheckpointStorage::lock_for_job`) tells: gc refuses
//! `--min-age 0` while a job holds it, and otherwise holds it itself while deleting, so no
//! job starts on the directory meanwhile (one that starts waits for it,
//! `CheckpointStorage::lock_briefly`). Subsumed
//! checkpoints and their files go at any age: a running job on the same directory should
//! keep at least as many as `gc --retain` does, and the minimum age should exceed its
//! checkpoint interval and timeout. (Test: `cairn-runtime`'s
//! `job_end::gc_from_another_process_takes_nothing_a_running_job_needs`; without the
//! minimum age, completed checkpoints of the running job lose shared files.)

use std::time::Duration;

use cairn_storage::{GcReport, StorageError};
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
    /// (`chk-<id>/`), incomplete ones, shared files (`shared/<name>`), then staging files
    /// of interrupted puts (`shared/<name>#<n>`).
    pub deleted: Vec<String>,
    /// Incomplete checkpoint directories kept (newer than the newest complete one, or
    /// younger than the minimum age).
    pub kept_incomplete: Vec<u64>,
    /// Shared files no manifest references, kept because they are younger than the
    /// minimum age (`shared/<name>`).
    pub kept_young: Vec<String>,
    /// The minimum age, in seconds.
    pub min_age_s: u64,
    /// Checkpoints whose manifest does not decode, with the error.
    pub corrupt: Vec<String>,
    /// Why shared files were not collected, if they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_skipped: Option<String>,
    /// Who holds the directory's lock, when a job does (local directories only): it runs,
    /// and what it may be writing is kept by the minimum age alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_running: Option<String>,
}

impl GcOutcome {
    fn from_report(
        root: &JobRoot,
        r: GcReport,
        dry_run: bool,
        min_age: Duration,
        job_running: Option<String>,
    ) -> Self {
        let mut deleted: Vec<String> = r
            .subsumed
            .iter()
            .chain(&r.incomplete)
            .map(|id| format!("chk-{id}/"))
            .collect();
        deleted.extend(
            r.shared_deleted
                .iter()
                .chain(&r.staging_deleted)
                .map(|n| format!("shared/{n}")),
        );
        Self {
            root: root.location.clone(),
            dry_run,
            retained: r.retained,
            deleted,
            kept_incomplete: r.kept_incomplete,
            kept_young: r
                .shared_young
                .iter()
                .map(|n| format!("shared/{n}"))
                .collect(),
            min_age_s: min_age.as_secs(),
            corrupt: r
                .corrupt
                .into_iter()
                .map(|(id, e)| format!("chk-{id}: {}", e.replace('\n', " ")))
                .collect(),
            shared_skipped: r.shared_skipped,
            job_running,
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
        if let Some(holder) = &self.job_running {
            out.push_str(&format!(
                "a job is writing this directory ({holder}): what it may be writing is kept by --min-age {}s\n",
                self.min_age_s
            ));
        }
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
        if !self.kept_young.is_empty() {
            out.push_str(&format!(
                "kept {} unreferenced shared file(s) younger than --min-age {}s (a running job may be writing them; --min-age 0 deletes them if none runs)\n",
                self.kept_young.len(),
                self.min_age_s
            ));
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
/// retained manifest references, except what is younger than `min_age` and may belong to a
/// checkpoint in flight (see the module doc); with `dry_run`, only says what it would
/// delete.
pub fn gc(
    root: &JobRoot,
    retain: usize,
    min_age: Duration,
    dry_run: bool,
) -> Result<GcOutcome, DumpError> {
    if retain == 0 {
        return Err(DumpError::usage("--retain must be at least 1"));
    }
    // A local directory's lock says whether a job writes it. Without one, gc holds the lock
    // itself while it deletes, so that no job starts on the directory meanwhile.
    let (job_running, _held) = if dry_run {
        (root.storage.lock_holder().map_err(|e| root.err(e))?, None)
    } else {
        let me = format!("state-dump gc: pid {}", std::process::id());
        match root.storage.lock_briefly(&me) {
            Ok(held) => (None, Some(held)),
            Err(StorageError::DirectoryInUse { holder, .. }) => (Some(holder), None),
            Err(e) => return Err(root.err(e)),
        }
    };
    if let (Some(holder), false, true) = (&job_running, dry_run, min_age.is_zero()) {
        return Err(DumpError::usage(format!(
            "a job is writing {} ({holder}): --min-age 0 would delete the files of its checkpoints in flight; give a minimum age above its checkpoint interval and timeout, or stop the job first",
            root.location
        )));
    }
    let report = if dry_run {
        root.storage.gc_plan_min_age(retain, min_age)
    } else {
        root.storage.retain_min_age(retain, min_age)
    }
    .map_err(|e| root.err(e))?;
    Ok(GcOutcome::from_report(
        root,
        report,
        dry_run,
        min_age,
        job_running,
    ))
}

/// Parses a `--min-age`: `0`, or a number with a unit `s`, `m`, `h` or `d` (`90s`, `10m`,
/// `1h`, `2d`).
pub fn parse_min_age(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?}: give a unit: s, m, h or d (as 10m), or 0"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a whole number and a unit (as 10m), or 0"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_ages_parse() {
        assert_eq!(parse_min_age("0"), Ok(Duration::ZERO));
        assert_eq!(parse_min_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_min_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_min_age("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_min_age("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["", "10", "h", "1.5h", "-1h", "1w", "99999999999999999999d"] {
            assert!(parse_min_age(bad).is_err(), "{bad}");
        }
    }
}
