//! One job per checkpoint directory: an advisory lock on local directories.
//!
//! Two jobs writing checkpoints into one directory at once corrupt each other's state: both
//! count checkpoint ids from the same newest checkpoint, so their `chk-<id>` directories
//! clash, and each one's retention deletes shared files the other's checkpoints use. Flink
//! avoids this by giving every job run a directory of its own (`<dir>/<job id>/`); Cairn's
//! directory is named by the user (`--checkpoint-dir`, `./checkpoints` by default), so a
//! second job started on the same directory must be refused instead.
//!
//! On a local directory the job takes an exclusive `flock` on `<dir>/_lock` and holds it
//! until it ends. The operating system releases it when the process dies in any way
//! (SIGKILL included), so a crashed job never leaves a stale lock behind: the next run
//! restores at once. The file itself stays (deleting it would let two processes lock two
//! different inodes under one name); it holds a line saying who holds the lock, for the
//! message the next job prints. On NFS, Linux emulates `flock` with POSIX locks (per
//! process, not per open file): jobs in different processes still exclude each other. A
//! file system without locks runs the job unlocked. Object stores (S3 and the others) have no such lock; there
//! one directory per job remains the user's duty (see [`CheckpointStorage::lock_for_job`]).

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::checkpoint::CheckpointStorage;
use crate::error::StorageError;

/// The lock file in a local checkpoint directory.
pub const LOCK_FILE_NAME: &str = "_lock";

/// A job's hold on its checkpoint directory, from [`CheckpointStorage::lock_for_job`];
/// released when dropped (or when the process ends).
pub struct DirectoryLock {
    /// The locked file, or `None` where the store has no lock (object stores, memory, a
    /// file system without `flock`).
    held: Option<(File, PathBuf)>,
}

impl fmt::Debug for DirectoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryLock")
            .field("path", &self.held.as_ref().map(|(_, p)| p))
            .finish()
    }
}

impl DirectoryLock {
    /// Whether a lock is held: false where the store offers none.
    pub fn is_locked(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for DirectoryLock {
    /// Clears the holder's line (best effort) before the lock goes with the file: a job
    /// that finds the lock taken then never names a holder that has let go. (After a crash
    /// the line stays, but then nobody holds the lock.)
    fn drop(&mut self) {
        if let Some((file, _)) = &self.held {
            let _ = file.set_len(0);
        }
    }
}

/// How long [`CheckpointStorage::lock_for_job`] tries before it refuses: long enough for a
/// probe ([`CheckpointStorage::lock_holder`]) to let go.
const LOCK_PATIENCE: Duration = Duration::from_millis(250);

/// How long [`CheckpointStorage::lock_for_job`] waits for a brief holder
/// ([`CheckpointStorage::lock_briefly`], such as `state-dump gc`) to let go.
const BRIEF_PATIENCE: Duration = Duration::from_secs(120);

/// How a brief holder's line starts in the lock file.
const BRIEF_MARK: &str = "(brief) ";

/// Who holds a lock that could not be taken.
struct Held {
    dir: String,
    holder: String,
    /// Taken with [`CheckpointStorage::lock_briefly`].
    brief: bool,
}

impl From<Held> for StorageError {
    fn from(h: Held) -> Self {
        StorageError::DirectoryInUse {
            dir: h.dir,
            holder: h.holder,
        }
    }
}

impl CheckpointStorage {
    /// Takes this checkpoint directory for one job, until the returned guard drops: a second
    /// job that asks while the first holds it gets [`StorageError::DirectoryInUse`], with
    /// the `holder` text the first one gave (say, its process id and host).
    ///
    /// Local directories only (opened with [`CheckpointStorage::open`]): an exclusive
    /// advisory lock (`flock`) on `<dir>/_lock`, which the operating system releases when the
    /// process ends, however it ends. Elsewhere (object stores, `memory://`, a store given to
    /// [`CheckpointStorage::from_store`], a file system without locks) nothing is locked and
    /// [`DirectoryLock::is_locked`] says so: giving each job a directory of its own is then
    /// the user's duty. Reading a directory (restore, `state-dump`) takes no lock.
    ///
    /// A lock taken by [`CheckpointStorage::lock_briefly`] (a tool such as `state-dump gc`
    /// deleting old checkpoints) is waited for, up to two minutes, instead of refused.
    pub fn lock_for_job(&self, holder: &str) -> Result<DirectoryLock, StorageError> {
        self.lock(holder, false, &mut |_| {}, BRIEF_PATIENCE)
    }

    /// [`CheckpointStorage::lock_for_job`], calling `waiting` once with the brief holder's
    /// text when it starts to wait for one (so a job can say why it does not start yet).
    pub fn lock_for_job_reporting(
        &self,
        holder: &str,
        waiting: &mut dyn FnMut(&str),
    ) -> Result<DirectoryLock, StorageError> {
        self.lock(holder, false, waiting, BRIEF_PATIENCE)
    }

    /// [`CheckpointStorage::lock_for_job`] for a holder that lets go soon (a tool such as
    /// `state-dump gc`, while it deletes): a job that asks meanwhile waits for it, where it
    /// would refuse to run beside another job. It waits like a job for a holder already
    /// there.
    pub fn lock_briefly(&self, holder: &str) -> Result<DirectoryLock, StorageError> {
        self.lock(holder, true, &mut |_| {}, BRIEF_PATIENCE)
    }

    fn lock(
        &self,
        holder: &str,
        brief: bool,
        waiting: &mut dyn FnMut(&str),
        brief_patience: Duration,
    ) -> Result<DirectoryLock, StorageError> {
        let Some(dir) = self.inner.store.local_path(&self.inner.root) else {
            return Ok(DirectoryLock { held: None });
        };
        let path = dir.join(LOCK_FILE_NAME);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| StorageError::io("open", &path, e))
        };
        let line = if brief {
            format!("{BRIEF_MARK}{holder}")
        } else {
            holder.to_string()
        };
        let started = Instant::now();
        // Once a brief holder was seen, keep waiting for it: its line is empty for a moment
        // while it lets go (and while a next holder takes over before it writes its own).
        let mut seen_brief = false;
        loop {
            match try_lock(open()?, path.clone(), Some(&line))? {
                Ok(lock) => return Ok(lock),
                Err(held) => {
                    if held.brief && !seen_brief {
                        waiting(&held.holder);
                    }
                    seen_brief |= held.brief;
                    let patience = if seen_brief {
                        brief_patience
                    } else {
                        LOCK_PATIENCE
                    };
                    if started.elapsed() >= patience {
                        return Err(if seen_brief {
                            StorageError::DirectoryBusy {
                                dir: held.dir,
                                holder: held.holder,
                                waited_s: patience.as_secs(),
                            }
                        } else {
                            held.into()
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Who holds this directory's lock (see [`CheckpointStorage::lock_for_job`]): the
    /// holder's text while a job (or a `state-dump gc`) holds it, `None` when nobody does or
    /// the store has no lock. Creates nothing: a directory no job ever locked has no lock
    /// file and nobody holds it.
    pub fn lock_holder(&self) -> Result<Option<String>, StorageError> {
        let Some(dir) = self.inner.store.local_path(&self.inner.root) else {
            return Ok(None);
        };
        let path = dir.join(LOCK_FILE_NAME);
        // Read-only: flock needs no write access (a copied, read-only directory probes).
        let file = match OpenOptions::new().read(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageError::io("open", &path, e)),
        };
        match try_lock(file, path, None)? {
            // Taken for a moment and let go again.
            Ok(_) => Ok(None),
            Err(held) => Ok(Some(held.holder)),
        }
    }
}

/// Locks `file` at `path` and writes `holder` into it (`None`: a probe, which writes
/// nothing), or says who holds it.
fn try_lock(
    mut file: File,
    path: PathBuf,
    holder: Option<&str>,
) -> Result<Result<DirectoryLock, Held>, StorageError> {
    match file.try_lock() {
        Ok(()) => {
            if let Some(holder) = holder {
                // Who holds it, for the message a second job prints: best effort (a full
                // disk does not stop the job), not synced (it matters while this process
                // lives).
                // Written over the old line, then cut to length: the line is never empty
                // for a moment on the way.
                let _ = file
                    .seek(SeekFrom::Start(0))
                    .and_then(|_| file.write_all(holder.as_bytes()))
                    .and_then(|()| file.set_len(holder.len() as u64));
            }
            Ok(Ok(DirectoryLock {
                held: Some((file, path)),
            }))
        }
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            // The holder writes its line just after locking: it may not be there yet (or,
            // after a crash of an earlier holder, be that one's).
            let _ = file.read_to_string(&mut text);
            let text = text.trim();
            let (brief, holder) = match text.strip_prefix(BRIEF_MARK) {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            Ok(Err(Held {
                dir: path.parent().unwrap_or(&path).display().to_string(),
                holder: if holder.is_empty() {
                    "a process that has not said who it is".into()
                } else {
                    holder.chars().take(200).collect()
                },
                brief,
            }))
        }
        Err(TryLockError::Error(e)) if no_locks_here(&e) => Ok(Ok(DirectoryLock { held: None })),
        Err(TryLockError::Error(e)) => Err(StorageError::io("lock", &path, e)),
    }
}

/// The file system offers no locks: not supported, or (Linux, NFS without a lock manager)
/// `ENOLCK`.
fn no_locks_here(e: &std::io::Error) -> bool {
    const ENOLCK: i32 = 37;
    e.kind() == ErrorKind::Unsupported
        || (cfg!(target_os = "linux") && e.raw_os_error() == Some(ENOLCK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_job_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let first = CheckpointStorage::open(url).unwrap();
        let second = CheckpointStorage::open(url).unwrap();
        let held = first.lock_for_job("pid=1 host=a").unwrap();
        assert!(held.is_locked());
        let err = second.lock_for_job("pid=2 host=b").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StorageError::DirectoryInUse { .. }), "{msg}");
        assert!(msg.contains("pid=1 host=a"), "{msg}");
        assert!(msg.contains(dir.path().to_str().unwrap()), "{msg}");
        // The same storage asking again is a second job too.
        assert!(first.lock_for_job("pid=1 host=a").is_err());
        drop(held);
        let taken = second.lock_for_job("pid=2 host=b").unwrap();
        assert!(taken.is_locked());
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(
            text, "pid=2 host=b",
            "the holder line is replaced, not appended"
        );
        drop(taken);
        // The file stays, without the holder's line; the lock does not.
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE_NAME)).unwrap();
        assert_eq!(text, "", "a released lock still names its holder");
        first.lock_for_job("pid=3").unwrap();
    }

    #[test]
    fn the_holder_is_known_without_taking_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let storage = CheckpointStorage::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(storage.lock_holder().unwrap(), None);
        assert!(
            !dir.path().join(LOCK_FILE_NAME).exists(),
            "a probe created the lock file"
        );
        let held = storage.lock_for_job("job 7").unwrap();
        assert_eq!(storage.lock_holder().unwrap().as_deref(), Some("job 7"));
        // The probe left the holder's line alone.
        assert_eq!(storage.lock_holder().unwrap().as_deref(), Some("job 7"));
        drop(held);
        assert_eq!(storage.lock_holder().unwrap(), None);
    }

    /// A job waits for a brief holder (gc deleting) to let go, but not for another job.
    #[test]
    fn a_job_waits_for_a_brief_holder_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap();
        let storage = CheckpointStorage::open(url).unwrap();
        let hold_for = Duration::from_millis(400);
        let lock_file = dir.path().join(LOCK_FILE_NAME);
        let hold = |brief: bool| {
            let held = if brief {
                storage.lock_briefly("gc pid=1").unwrap()
            } else {
                storage.lock_for_job("job pid=1").unwrap()
            };
            let lock_file = lock_file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(hold_for);
                if brief {
                    // The holder's line is empty for a while before it lets go (as in its
                    // drop): a job that saw a brief holder keeps waiting.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&lock_file)
                        .and_then(|f| f.set_len(0))
                        .unwrap();
                }
                std::thread::sleep(hold_for);
                drop(held);
            })
        };
        let releasing = hold(true);
        assert_eq!(storage.lock_holder().unwrap().as_deref(), Some("gc pid=1"));
        let started = Instant::now();
        let mut told = Vec::new();
        let job = storage
            .lock_for_job_reporting("job pid=2", &mut |h| told.push(h.to_string()))
            .unwrap();
        assert!(
            started.elapsed() >= LOCK_PATIENCE,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(told, ["gc pid=1"], "the wait is reported once");
        releasing.join().unwrap();
        drop(job);

        // A brief holder that stays too long: the job gives up, saying what held it.
        let releasing = hold(true);
        let err = storage
            .lock("job pid=2", false, &mut |_| {}, Duration::from_millis(200))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StorageError::DirectoryBusy { .. }), "{msg}");
        assert!(
            msg.contains("gc pid=1") && msg.contains("state-dump gc"),
            "{msg}"
        );
        releasing.join().unwrap();

        let releasing = hold(false);
        let err = storage.lock_for_job("job pid=2").unwrap_err();
        assert!(err.to_string().contains("job pid=1"), "{err}");
        // A brief holder does not wait for a job either.
        let err = storage.lock_briefly("gc pid=3").unwrap_err();
        assert!(err.to_string().contains("job pid=1"), "{err}");
        releasing.join().unwrap();
    }

    #[test]
    fn stores_without_a_lock_say_so() {
        let storage = CheckpointStorage::open("memory://").unwrap();
        let a = storage.lock_for_job("a").unwrap();
        let b = storage.lock_for_job("b").unwrap();
        assert!(!a.is_locked() && !b.is_locked());
        assert_eq!(storage.lock_holder().unwrap(), None);
    }
}
