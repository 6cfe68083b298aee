//! Sinks: a two-phase-commit file sink (exactly-once output), a discarding sink, and a
//! printing sink (Flink's `print()`).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::{OperatorListStateDescriptor, OperatorListStateId};

use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, InitContext, Sink, SnapshotContext};

/// Drops every record.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardSink;

impl Checkpointed for DiscardSink {}

impl<T> Sink<T> for DiscardSink {
    #[inline]
    fn write(&mut self, _record: T) -> Result<()> {
        Ok(())
    }
}

/// Prints each record's `Debug` form on a line, as Flink's `print()` does: prefixed with
/// `<subtask + 1>> ` when the sink runs in more than one subtask, `<prefix>> ` when given
/// a prefix (Flink's `print(sinkIdentifier)`), or `<prefix>:<subtask + 1>> ` with both. Lines go to standard output, or
/// to any writer ([`PrintSink::to`]), each written whole. For looking at a job, not for
/// output that must survive failures: records replayed after a restore print again.
pub struct PrintSink {
    prefix: Option<String>,
    out: Arc<std::sync::Mutex<dyn Write + Send>>,
    /// `Some(index)` when the sink runs in more than one subtask.
    subtask: Option<u32>,
    line: Vec<u8>,
}

impl Clone for PrintSink {
    fn clone(&self) -> Self {
        Self {
            prefix: self.prefix.clone(),
            out: self.out.clone(),
            subtask: self.subtask,
            line: Vec::new(),
        }
    }
}

impl std::fmt::Debug for PrintSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrintSink")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Default for PrintSink {
    fn default() -> Self {
        Self::to(Arc::new(std::sync::Mutex::new(std::io::stdout())))
    }
}

impl PrintSink {
    /// Prints to standard output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Prints to `out`, shared by every subtask.
    pub fn to(out: Arc<std::sync::Mutex<dyn Write + Send>>) -> Self {
        Self {
            prefix: None,
            out,
            subtask: None,
            line: Vec::new(),
        }
    }

    /// Puts `prefix` before each line (Flink's sink identifier).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }
}

impl Checkpointed for PrintSink {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        self.subtask = (ctx.subtask.parallelism > 1).then_some(ctx.subtask.index);
        Ok(())
    }
}

impl<T: std::fmt::Debug> Sink<T> for PrintSink {
    fn write(&mut self, record: T) -> Result<()> {
        // Flink's `PrintSinkOutputWriter`: `id> `, `1> ` or `id:1> `.
        let prefix = match (&self.prefix, self.subtask) {
            (Some(p), Some(i)) => format!("{p}:{}> ", i + 1),
            (Some(p), None) => format!("{p}> "),
            (None, Some(i)) => format!("{}> ", i + 1),
            (None, None) => String::new(),
        };
        self.line.clear();
        self.line
            .extend_from_slice(format!("{prefix}{record:?}\n").as_bytes());
        let mut out = self
            .out
            .lock()
            .map_err(|_| RuntimeError::Config("the print sink's writer is poisoned".into()))?;
        out.write_all(&self.line)
            .map_err(|source| RuntimeError::Io {
                message: "print a record".into(),
                path: "the print sink's writer".into(),
                source,
            })
    }

    fn finish(&mut self) -> Result<()> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| RuntimeError::Config("the print sink's writer is poisoned".into()))?;
        out.flush().map_err(|source| RuntimeError::Io {
            message: "flush printed records".into(),
            path: "the print sink's writer".into(),
            source,
        })
    }
}

impl<T: crate::function::Data + std::fmt::Debug> crate::Stream<T> {
    /// Ends the dataflow in a [`PrintSink`] to standard output with uid `uid` (Flink's
    /// `print()`).
    pub fn print(self, uid: &str) -> crate::JobGraph {
        self.sink(uid, PrintSink::new())
    }
}

type Format<T> = Arc<dyn Fn(&T, &mut Vec<u8>) + Send + Sync>;

/// Writes records as lines into files of a directory, exactly once.
///
/// Names starting with `.` are not output: `.part-<lineage>-<run>-<subtask>-<n>.inprogress`
/// is being written; at a barrier it is flushed, fsynced and renamed `.part-…-<n>.pending`
/// (pre-commit), and the pending files go into operator state; when the checkpoint
/// completes they are renamed `part-<lineage>-<run>-<subtask>-<n>` (commit). On restore, the
/// pending files of the restored checkpoint are committed (a rename is idempotent) and every
/// other dot-file of an earlier run of the same lineage is deleted (abort). Without
/// checkpointing, files are committed at the end of the input.
///
/// The lineage is the job run that started from empty state, kept in operator state through
/// every restore: a job's restarts and restores abort what its own earlier runs left, and
/// never the files of another job writing into the same directory (whose pending files
/// wait for that job's checkpoint to complete). Two jobs restored from one snapshot share a
/// lineage, so they must not share an output directory while both run.
///
/// Pre-committed files belong to the directory they were written in. The state names each
/// by its absolute path, and a restored job commits those of its own output directory; a
/// file the restored job cannot find there and that never was committed there is lost, an
/// error. A job restored with another output directory (a fork of the job, say, from a
/// savepoint) leaves the snapshot's files of the first directory alone: they hold output
/// from before the snapshot, which belongs to that directory and which the fork does not
/// emit again, and whether they are committed there is decided by the job that writes there
/// (a job restored from an older checkpoint aborts them). Unless it finds them in its own
/// directory: then the directory was moved, and it commits them. Snapshots of earlier
/// versions (and directories whose path is not UTF-8) hold the bare file name, which names
/// a file of the restored job's directory.
pub struct TwoPhaseFileSink<T> {
    dir: PathBuf,
    format: Format<T>,
    state: Option<OperatorListStateId<(u64, String)>>,
    lineage_state: Option<OperatorListStateId<String>>,
    /// Pre-committed: (checkpoint id, committed path).
    pending: Vec<(u64, PathBuf)>,
    current: Option<(BufWriter<File>, String)>,
    /// `<lineage>-<run>-<subtask>`.
    prefix: String,
    /// The job run this job's state started in: the first part of its file names.
    lineage: String,
    seq: u64,
    checkpointing: bool,
    line: Vec<u8>,
}

impl<T> std::fmt::Debug for TwoPhaseFileSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoPhaseFileSink")
            .field("dir", &self.dir)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl<T> Clone for TwoPhaseFileSink<T> {
    /// A fresh instance for another subtask: same directory and format, no state.
    fn clone(&self) -> Self {
        Self::with_format(self.dir.clone(), self.format.clone())
    }
}

impl<T> TwoPhaseFileSink<T> {
    /// Writes into `dir` (created if missing); `format` appends one record's line (without
    /// the newline) to the buffer.
    pub fn new(
        dir: impl Into<PathBuf>,
        format: impl Fn(&T, &mut Vec<u8>) + Send + Sync + 'static,
    ) -> Self {
        Self::with_format(dir.into(), Arc::new(format))
    }

    fn with_format(dir: PathBuf, format: Format<T>) -> Self {
        Self {
            dir,
            format,
            state: None,
            lineage_state: None,
            pending: Vec::new(),
            current: None,
            prefix: String::new(),
            lineage: String::new(),
            seq: 0,
            checkpointing: false,
            line: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> RuntimeError {
        RuntimeError::io(what, path, e)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("cannot sync the output directory", &self.dir, e))
    }

    /// Where a pre-committed file named by the restored state is committed by this job: in
    /// this directory, or `None` when it belongs to another one (see the type's doc).
    fn own_target(&self, checkpoint_id: u64, entry: &str) -> Result<Option<PathBuf>> {
        let target = self.restored_target(checkpoint_id, entry)?;
        if target.parent() == Some(self.dir.as_path()) {
            return Ok(Some(target));
        }
        let here = match target.file_name() {
            Some(name) => self.dir.join(name),
            None => return Ok(None),
        };
        let moved = here.exists() || pending_path(&here).exists();
        Ok(moved.then_some(here))
    }

    /// Makes `target` visible: renames its pending file; done already if only `target`
    /// exists.
    fn commit(&self, target: &Path) -> Result<()> {
        let pending = pending_path(target);
        match std::fs::rename(&pending, target) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if target.exists() {
                    Ok(())
                } else {
                    Err(self.io(
                        "a pre-committed output file is missing; its records are lost",
                        &pending,
                        e,
                    ))
                }
            }
            Err(e) => Err(self.io("cannot commit an output file", &pending, e)),
        }
    }

    /// Closes the file being written and renames it pending; returns its committed path.
    fn pre_commit(&mut self) -> Result<Option<PathBuf>> {
        let Some((mut w, name)) = self.current.take() else {
            return Ok(None);
        };
        let inprogress = self.path(&format!(".{name}.inprogress"));
        w.flush()
            .and_then(|_| w.get_ref().sync_all())
            .map_err(|e| self.io("cannot flush an output file", &inprogress, e))?;
        drop(w);
        let pending = self.path(&format!(".{name}.pending"));
        std::fs::rename(&inprogress, &pending)
            .map_err(|e| self.io("cannot pre-commit an output file", &inprogress, e))?;
        self.sync_dir()?;
        Ok(Some(self.path(&name)))
    }

    /// How the state names a pending file: its path, or its name where the path is not
    /// UTF-8.
    fn state_entry(&self, target: &Path) -> String {
        match target.to_str() {
            Some(path) => path.to_string(),
            None => target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// The committed path of a pending file named by the restored state: an absolute path
    /// to a `part-…` file, or (earlier versions) a bare `part-…` name in this directory.
    fn restored_target(&self, checkpoint_id: u64, entry: &str) -> Result<PathBuf> {
        let path = Path::new(entry);
        let name = path.file_name().and_then(|n| n.to_str());
        let plain = path.components().count() == 1;
        match name {
            Some(name) if name.starts_with("part-") && (plain || path.is_absolute()) => {
                Ok(if plain {
                    self.path(name)
                } else {
                    path.to_path_buf()
                })
            }
            _ => Err(RuntimeError::Restore {
                reason: format!(
                    "the file sink's restored state names {entry:?} as a file pre-committed \
                     by checkpoint {checkpoint_id}: not an absolute path or name of a part-… \
                     file (output directory {})",
                    self.dir.display()
                ),
            }),
        }
    }

    /// Deletes dot-files of earlier runs of this lineage (in-progress and pending files no
    /// restored checkpoint committed).
    fn abort_leftovers(&self, run_id: &str) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|e| self.io("cannot list the output directory", &self.dir, e))?;
        let lineage = format!(".part-{}-", self.lineage);
        let own = format!("{lineage}{run_id}-");
        for entry in entries {
            let entry =
                entry.map_err(|e| self.io("cannot list the output directory", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&lineage) && !name.starts_with(&own) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| self.io("cannot delete an aborted output file", &path, e))?;
            }
        }
        Ok(())
    }
}

/// Whether `part` can be a part of a file name: what a run id is made of (a restored
/// lineage is checked, as the state may be damaged or hostile).
fn is_name_part(part: &str) -> bool {
    !part.is_empty() && part.len() <= 64 && part.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Where the pre-committed file of `target` (`…/part-…`) is: `…/.part-….pending`.
fn pending_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.pending"))
}

impl<T> Checkpointed for TwoPhaseFileSink<T> {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        if self.dir.exists() && !self.dir.is_dir() {
            // Not worth a restart: it will not be a directory the next time either.
            return Err(RuntimeError::Config(format!(
                "the sink's output directory is not a directory path={}",
                self.dir.display()
            )));
        }
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| self.io("cannot create the output directory", &self.dir, e))?;
        // The state records absolute paths; a relative directory is taken from here.
        if let Ok(absolute) = std::path::absolute(&self.dir) {
            self.dir = absolute;
        }
        self.checkpointing = ctx.checkpointing;
        // Union: every subtask sees every pre-committed file; subtask 0 recovers them all.
        let id = ctx.operator_state.register_list(
            &OperatorListStateDescriptor::<(u64, String)>::union("pending"),
        )?;
        self.state = Some(id);
        let restored = std::mem::take(ctx.operator_state.list(id)?);
        // Every subtask snapshots the lineage (union): each restored one sees it. A
        // snapshot without it (earlier versions) starts a lineage of its own.
        let lineage_id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<String>::union("lineage"))?;
        self.lineage_state = Some(lineage_id);
        let run_nonce = ctx.run_id.rsplit_once('-').map_or(ctx.run_id, |(n, _)| n);
        self.lineage = ctx
            .operator_state
            .list(lineage_id)?
            .first()
            .filter(|l| is_name_part(l))
            .cloned()
            .unwrap_or_else(|| run_nonce.to_string());
        self.prefix = format!("{}-{}-{}", self.lineage, ctx.run_id, ctx.subtask.index);
        if ctx.subtask.index == 0 {
            for (id, entry) in &restored {
                if let Some(target) = self.own_target(*id, entry)? {
                    self.commit(&target)?;
                }
            }
            self.sync_dir()?;
            self.abort_leftovers(ctx.run_id)?;
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        if let Some(target) = self.pre_commit()? {
            self.pending.push((ctx.checkpoint_id, target));
        }
        if let Some(id) = self.state {
            let entries = self
                .pending
                .iter()
                .map(|(c, target)| (*c, self.state_entry(target)))
                .collect();
            *ctx.operator_state.list(id)? = entries;
        }
        if let Some(id) = self.lineage_state {
            *ctx.operator_state.list(id)? = vec![self.lineage.clone()];
        }
        Ok(())
    }

    fn notify_checkpoint_complete(&mut self, checkpoint_id: u64) -> Result<()> {
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(id, _)| *id <= checkpoint_id);
        self.pending = keep;
        for (_, target) in &done {
            self.commit(target)?;
        }
        if !done.is_empty() {
            self.sync_dir()?;
        }
        Ok(())
    }
}

impl<T: Send + 'static> Sink<T> for TwoPhaseFileSink<T> {
    fn write(&mut self, record: T) -> Result<()> {
        if self.current.is_none() {
            let name = format!("part-{}-{}", self.prefix, self.seq);
            self.seq += 1;
            let path = self.path(&format!(".{name}.inprogress"));
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| self.io("cannot create an output file", &path, e))?;
            self.current = Some((BufWriter::with_capacity(64 * 1024, file), name));
        }
        self.line.clear();
        (self.format)(&record, &mut self.line);
        self.line.push(b'\n');
        if let Some((w, name)) = self.current.as_mut() {
            if let Err(e) = w.write_all(&self.line) {
                let path = self.dir.join(format!(".{name}.inprogress"));
                return Err(RuntimeError::io("cannot write an output file", path, e));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // With checkpointing, the final checkpoint (taken after every task has finished)
        // pre-commits the file being written and its completion commits it, so what `finish`
        // emitted upstream is committed exactly once too. Without checkpointing, everything
        // is committed now.
        if self.checkpointing {
            return Ok(());
        }
        if let Some(target) = self.pre_commit()? {
            self.commit(&target)?;
        }
        for (_, target) in std::mem::take(&mut self.pending) {
            self.commit(&target)?;
        }
        self.sync_dir()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &Path) -> TwoPhaseFileSink<String> {
        TwoPhaseFileSink::new(dir, |l: &String, o: &mut Vec<u8>| o.extend(l.as_bytes()))
    }

    #[test]
    fn restored_entries_are_paths_or_bare_names_of_part_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = sink(dir.path());
        // Earlier versions stored the bare name: it is looked up in this directory.
        assert_eq!(
            s.restored_target(3, "part-1-0-2").expect("bare name"),
            dir.path().join("part-1-0-2")
        );
        // The state names a file by its absolute path, which may be another directory.
        let elsewhere = Path::new("/data/run-1/part-1-0-2");
        assert_eq!(
            s.restored_target(3, elsewhere.to_str().expect("utf-8"))
                .expect("absolute path"),
            elsewhere
        );
        assert_eq!(s.state_entry(elsewhere), "/data/run-1/part-1-0-2");
        for bad in [
            "",
            "../part-1",
            "sub/part-1-0-2",
            "/etc/passwd",
            "/data/.part-1.pending",
            "x",
        ] {
            let e = s.restored_target(7, bad).expect_err(bad).to_string();
            assert!(
                e.contains("checkpoint 7") && e.contains(&format!("{bad:?}")),
                "{bad:?}: {e}"
            );
        }
    }
}
