//! `state-dump files`: which checkpoints (and savepoints) reference which files of a job's
//! checkpoint directory, shared files nothing references (orphans), and referenced files
//! that are missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cairn_core::FileArea;
use cairn_format::MANIFEST_FILE_NAME;
use cairn_storage::CheckpointStatus;
use serde::Serialize;

use crate::error::DumpError;
use crate::open::{open_snapshot, JobRoot};
use crate::table;

/// One `chk-<id>` directory.
#[derive(Debug, Serialize)]
pub struct CheckpointFiles {
    /// The checkpoint id.
    pub id: u64,
    /// `complete`, `incomplete` (no manifest) or `corrupt` (a manifest that does not decode).
    pub status: &'static str,
    /// Why the manifest does not decode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its private files (names relative to `chk-<id>/`), sorted.
    pub private: Vec<String>,
    /// The shared files it references (names relative to `shared/`), sorted.
    pub shared: Vec<String>,
    /// Its private files that are not in `chk-<id>/` (local directories only), sorted.
    pub missing_private: Vec<String>,
}

/// One shared file.
#[derive(Debug, Serialize)]
pub struct SharedFile {
    /// Its name relative to `shared/`.
    pub name: String,
    /// Its size as referenced (`null` for an orphan nothing references).
    pub size: Option<u64>,
    /// The complete checkpoints that reference it.
    pub referenced_by: Vec<u64>,
    /// Referenced but not in `shared/` (local directories only).
    pub missing: bool,
}

/// A savepoint found in a subdirectory of the root.
#[derive(Debug, Serialize)]
pub struct SavepointFiles {
    /// Its directory.
    pub path: String,
    /// Its id.
    pub id: u64,
    /// Its files (all private: savepoints never reference shared files).
    pub files: usize,
}

/// What `files` reports.
#[derive(Debug, Serialize)]
pub struct FilesReport {
    /// The job's checkpoint directory.
    pub root: String,
    /// Every `chk-<id>` directory, by id.
    pub checkpoints: Vec<CheckpointFiles>,
    /// Every shared file referenced by a complete checkpoint or present, by name.
    pub shared: Vec<SharedFile>,
    /// Shared files no complete checkpoint references (what `gc` deletes).
    pub orphans: Vec<String>,
    /// Why orphans could not be determined, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orphans_unknown: Option<String>,
    /// Savepoints in subdirectories of the root; they reference no shared files.
    pub savepoints: Vec<SavepointFiles>,
}

/// Lists the files of a job's checkpoint directory.
pub fn list_files(root: &JobRoot) -> Result<FilesReport, DumpError> {
    let scan = root.storage.scan().map_err(|e| root.err(e))?;
    let mut checkpoints = Vec::new();
    let mut shared: BTreeMap<String, SharedFile> = BTreeMap::new();
    for (id, status) in scan {
        let mut c = CheckpointFiles {
            id,
            status: "incomplete",
            error: None,
            private: Vec::new(),
            shared: Vec::new(),
            missing_private: Vec::new(),
        };
        match status {
            CheckpointStatus::Complete(m) => {
                c.status = "complete";
                let mut private = BTreeSet::new();
                let mut sh = BTreeSet::new();
                for f in m.files() {
                    match f.area {
                        FileArea::Private => {
                            private.insert(f.name.clone());
                        }
                        FileArea::Shared => {
                            sh.insert(f.name.clone());
                            let e = shared.entry(f.name.clone()).or_insert_with(|| SharedFile {
                                name: f.name.clone(),
                                size: Some(f.size),
                                referenced_by: Vec::new(),
                                missing: false,
                            });
                            if e.referenced_by.last() != Some(&id) {
                                e.referenced_by.push(id);
                            }
                        }
                    }
                }
                c.private = private.into_iter().collect();
                c.shared = sh.into_iter().collect();
            }
            CheckpointStatus::Corrupt(e) => {
                c.status = "corrupt";
                c.error = Some(root.err(e).one_line());
            }
            _ => {}
        }
        checkpoints.push(c);
    }
    // Orphans: what GC would delete if every complete checkpoint were retained.
    let plan = root.storage.gc_plan(usize::MAX).map_err(|e| root.err(e))?;
    let orphans_unknown = plan.shared_skipped.clone();
    let orphans: Vec<String> = plan
        .shared_deleted
        .iter()
        .chain(&plan.shared_in_flight)
        .cloned()
        .collect();
    for o in &orphans {
        shared.entry(o.clone()).or_insert_with(|| SharedFile {
            name: o.clone(),
            size: None,
            referenced_by: Vec::new(),
            missing: false,
        });
    }
    let local = Path::new(&root.location);
    if local.is_dir() {
        for f in shared.values_mut() {
            if !f.referenced_by.is_empty() {
                f.missing = !local.join("shared").join(&f.name).is_file();
            }
        }
        for c in &mut checkpoints {
            let dir = local.join(format!("chk-{}", c.id));
            c.missing_private = c
                .private
                .iter()
                .filter(|name| !dir.join(name).is_file())
                .cloned()
                .collect();
        }
    }
    Ok(FilesReport {
        root: root.location.clone(),
        checkpoints,
        shared: shared.into_values().collect(),
        orphans,
        orphans_unknown,
        savepoints: savepoints_under(local),
    })
}

/// Savepoint directories directly under `dir` (local directories only).
fn savepoints_under(dir: &Path) -> Vec<SavepointFiles> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    dirs.sort();
    for p in dirs {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "shared" || name.starts_with("chk-") || !p.join(MANIFEST_FILE_NAME).is_file() {
            continue;
        }
        if let Some(s) = p.to_str().and_then(|s| open_snapshot(s).ok()) {
            out.push(SavepointFiles {
                path: s.location.clone(),
                id: s.manifest.checkpoint_id,
                files: s.manifest.files().count(),
            });
        }
    }
    out
}

impl FilesReport {
    /// Whether something is wrong: a referenced shared or private file missing, or a
    /// corrupt manifest.
    pub fn has_problems(&self) -> bool {
        self.shared.iter().any(|f| f.missing)
            || self
                .checkpoints
                .iter()
                .any(|c| c.status == "corrupt" || !c.missing_private.is_empty())
    }

    /// The human form.
    pub fn render(&self) -> String {
        let mut out = format!("job checkpoint directory {}\n\n", self.root);
        let rows: Vec<Vec<String>> = self
            .checkpoints
            .iter()
            .map(|c| {
                vec![
                    format!("chk-{}", c.id),
                    c.status.to_string(),
                    c.private.len().to_string(),
                    c.shared.len().to_string(),
                    match (&c.error, c.missing_private.as_slice()) {
                        (Some(e), _) => e.clone(),
                        (None, []) => String::new(),
                        (None, missing) => format!(
                            "MISSING {} private file(s): {}",
                            missing.len(),
                            missing.join(", ")
                        ),
                    },
                ]
            })
            .collect();
        out.push_str(&table::render(
            &["CHECKPOINT", "STATUS", "PRIVATE", "SHARED", "ERROR"],
            &rows,
        ));
        let rows: Vec<Vec<String>> = self
            .shared
            .iter()
            .map(|f| {
                let refs: Vec<String> = f
                    .referenced_by
                    .iter()
                    .map(|id| format!("chk-{id}"))
                    .collect();
                vec![
                    format!("shared/{}", f.name),
                    f.size.map_or("-".into(), |s| s.to_string()),
                    if f.missing {
                        "MISSING".into()
                    } else if refs.is_empty() {
                        "orphan".into()
                    } else {
                        "ok".into()
                    },
                    refs.join(", "),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table::render(
            &["SHARED FILE", "BYTES", "STATUS", "REFERENCED BY"],
            &rows,
        ));
        if let Some(why) = &self.orphans_unknown {
            out.push_str(&format!("\norphans unknown: {why}\n"));
        } else {
            out.push_str(&format!("\n{} orphan(s)\n", self.orphans.len()));
        }
        for s in &self.savepoints {
            out.push_str(&format!(
                "savepoint {} at {}: {} files, no shared files\n",
                s.id, s.path, s.files
            ));
        }
        out
    }
}
