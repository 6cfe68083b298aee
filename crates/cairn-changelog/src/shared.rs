//! State shared by the task thread, the background uploader, materializations and the
//! asynchronous phases of checkpoints: the files the backend wrote, who holds them, the
//! segments being written, the materializations in progress and the pool of empty record
//! chunks.
//!
//! # Holding and releasing files
//!
//! Every file (segment or materialized file) is *held* by the parties that may still put
//! it in a manifest: the current chain (materialization plus the segments after it), the
//! confirmed materialization (the wrapped backend's incremental base), each running
//! materialization (it may reference the base's files) and each pending checkpoint. A file
//! nobody holds is released: with a [`ChangelogStorage`] its pin ends (retention then
//! deletes it once no retained manifest references it), and it leaves the table.
//!
//! # Durability
//!
//! With a storage, files are uploaded (pinned) in the background as soon as they exist.
//! Without one, a checkpoint's asynchronous phase writes every file its handle needs that
//! no completed checkpoint wrote yet, or that its target no longer holds (retention deleted
//! it), through the checkpoint's own target: the bytes stay in memory as long as a holder
//! may put the file in a manifest; rewriting the same bytes under the same name is harmless.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use cairn_core::{
    CancelToken, FileArea, FileRef, KeyedStateHandle, Result, SnapshotTarget, StateError,
};

use cairn_format::ChangelogChunk;

use crate::config::{ChangelogStorage, LogBackpressure};
use crate::error::ChangelogError;
use crate::log::{CHUNK_CAPACITY, POOLED_CHUNKS};

/// Who holds a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    Chain,
    Confirmed,
    Mat(u64),
    Pending(u64),
}

#[derive(Debug)]
struct FileEntry {
    file: FileRef,
    /// Kept until the file is durable for good (uploaded with a storage; written by a
    /// completed checkpoint without one).
    bytes: Option<Arc<Vec<u8>>>,
    uploading: bool,
    /// Uploaded through the storage (pinned).
    pinned: bool,
    /// Written by (or referenced in) a completed checkpoint.
    confirmed: bool,
}

#[derive(Debug)]
enum SegState {
    /// Opened on the task thread; its encoder (the background thread, or the task thread
    /// if that could not be started) is writing it.
    Writing,
    Encoded,
    Failed(String),
}

/// A materialization's outcome.
#[derive(Clone, Debug)]
pub(crate) enum MatState {
    Running,
    Done(Arc<KeyedStateHandle>),
    Failed(String),
}

#[derive(Debug, Default)]
struct Tables {
    files: HashMap<String, FileEntry>,
    segments: HashMap<String, SegState>,
    holders: HashMap<Holder, HashSet<String>>,
    refs: HashMap<String, usize>,
    mats: HashMap<u64, MatState>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) uid: String,
    /// `changelog/<uid>-<nonce>`: the directory of this instance's files in `shared/`.
    pub(crate) prefix: String,
    pub(crate) storage: Option<Arc<dyn ChangelogStorage>>,
    tables: Mutex<Tables>,
    cond: Condvar,
    /// Bytes of the sealed buffers encoded so far, as buffered and as encoded: their
    /// ratio is the log's compression, which the size trigger applies to buffered bytes.
    log_raw: AtomicU64,
    log_stored: AtomicU64,
    /// Empty chunks for the task thread's log: the encoder returns them once written.
    chunks: Mutex<Vec<ChangelogChunk>>,
    /// Encoded bytes of the chunks handed to the encoder and not written yet
    /// ([`InFlight`]), their bound, and the task thread's waits for room.
    in_flight: Mutex<u64>,
    room: Condvar,
    max_in_flight: u64,
    waits: AtomicU64,
    waited_ns: AtomicU64,
    /// The backend was dropped: no checkpoint of it can use a segment it did not upload
    /// already, so the worker uploads none any more.
    closed: AtomicBool,
}

/// Bytes of a chunk on their way to the encoder, counted in flight until this is dropped
/// (with the chunk's work: written, failed, or lost with a panic).
#[derive(Debug)]
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut n = self
            .shared
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(self.bytes);
        self.shared.room.notify_all();
    }
}

impl Shared {
    pub(crate) fn new(
        uid: String,
        prefix: String,
        storage: Option<Arc<dyn ChangelogStorage>>,
        max_in_flight: u64,
    ) -> Self {
        Self {
            uid,
            prefix,
            storage,
            tables: Mutex::new(Tables::default()),
            cond: Condvar::new(),
            log_raw: AtomicU64::new(0),
            log_stored: AtomicU64::new(0),
            chunks: Mutex::new(Vec::new()),
            in_flight: Mutex::new(0),
            room: Condvar::new(),
            max_in_flight,
            waits: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The backend is being dropped (see `closed`).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether [`Self::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Counts `bytes` of a chunk handed to the encoder as in flight until the returned
    /// token is dropped. Waits first while they would take the bytes in flight past the
    /// bound, unless none are in flight (a chunk larger than the bound still goes).
    pub(crate) fn reserve(self: &Arc<Self>, bytes: usize) -> InFlight {
        let bytes = bytes as u64;
        let full = |n: u64| n > 0 && n.saturating_add(bytes) > self.max_in_flight;
        let mut n = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if full(*n) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            let start = std::time::Instant::now();
            while full(*n) {
                n = self.room.wait(n).unwrap_or_else(|p| p.into_inner());
            }
            let waited = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.waited_ns.fetch_add(waited, Ordering::Relaxed);
        }
        *n += bytes;
        InFlight {
            shared: self.clone(),
            bytes,
        }
    }

    /// Encoded bytes in flight to the encoder (tests).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> u64 {
        *self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How often the task thread waited (or waits) for room in flight, and how long it
    /// waited in total (finished waits).
    pub(crate) fn backpressure(&self) -> LogBackpressure {
        LogBackpressure {
            waits: self.waits.load(Ordering::Relaxed),
            waited: std::time::Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
        }
    }

    /// Encoded bytes per buffered byte over the segments encoded so far (1 before the
    /// first).
    pub(crate) fn log_compression(&self) -> f64 {
        let raw = self.log_raw.load(Ordering::Relaxed);
        let stored = self.log_stored.load(Ordering::Relaxed);
        if raw == 0 {
            1.0
        } else {
            stored as f64 / raw as f64
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Tables>) -> MutexGuard<'a, Tables> {
        self.cond.wait(g).unwrap_or_else(|p| p.into_inner())
    }

    /// Like [`Self::wait`], but for 50 ms at most: a waiter that polls a cancel token.
    fn wait_polling<'a>(&self, g: MutexGuard<'a, Tables>) -> MutexGuard<'a, Tables> {
        self.cond
            .wait_timeout(g, std::time::Duration::from_millis(50))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    fn background_err(&self, what: &'static str, message: String) -> StateError {
        StateError::layer(
            format!("changelog {what} uid={}", self.uid),
            ChangelogError::Background {
                what,
                uid: self.uid.clone(),
                message,
            },
        )
    }

    // ---- holders -------------------------------------------------------------------

    /// Adds `names` to `holder`.
    pub(crate) fn hold<'a>(&self, holder: Holder, names: impl IntoIterator<Item = &'a str>) {
        let mut t = self.lock();
        let mut added = Vec::new();
        {
            let set = t.holders.entry(holder).or_default();
            for n in names {
                if set.insert(n.to_string()) {
                    added.push(n.to_string());
                }
            }
        }
        for n in added {
            *t.refs.entry(n).or_insert(0) += 1;
        }
    }

    /// Replaces what `holder` holds (holding the new names before dropping the old ones).
    pub(crate) fn hold_exactly<'a>(
        &self,
        holder: Holder,
        names: impl IntoIterator<Item = &'a str>,
    ) {
        let names: Vec<&str> = names.into_iter().collect();
        let old = self.lock().holders.remove(&holder).unwrap_or_default();
        self.hold(holder, names);
        self.drop_refs(old);
    }

    /// Ends `holder`.
    pub(crate) fn release_holder(&self, holder: Holder) {
        let old = self.lock().holders.remove(&holder).unwrap_or_default();
        self.drop_refs(old);
    }

    fn drop_refs(&self, names: HashSet<String>) {
        let mut released = Vec::new();
        {
            let mut t = self.lock();
            for n in names {
                let gone = match t.refs.get_mut(&n) {
                    Some(r) => {
                        *r -= 1;
                        *r == 0
                    }
                    None => false,
                };
                if gone {
                    t.refs.remove(&n);
                    if let Some(e) = release_if_idle(&mut t, &n) {
                        released.push(e);
                    }
                }
            }
        }
        self.unpin(released);
    }

    fn unpin(&self, released: Vec<FileRef>) {
        if let Some(s) = &self.storage {
            for f in &released {
                s.release(f);
            }
        }
    }

    /// How many files the table holds (for tests and diagnostics).
    pub(crate) fn file_count(&self) -> usize {
        self.lock().files.len()
    }

    // ---- segments ------------------------------------------------------------------

    /// Segment `name` opened: [`Self::segment_file`] waits until it is written.
    pub(crate) fn open_segment(&self, name: &str) {
        self.lock()
            .segments
            .insert(name.to_string(), SegState::Writing);
    }

    /// Segment `name` is written: records its file (and the log's compression, `raw`
    /// being its records' encoded bytes). Released at once if nobody holds it any more.
    pub(crate) fn segment_encoded(&self, name: &str, bytes: Vec<u8>, raw: u64) {
        self.log_raw.fetch_add(raw, Ordering::Relaxed);
        self.log_stored
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let file = local_ref(name, &bytes);
        let released = {
            let mut t = self.lock();
            t.files.insert(
                name.to_string(),
                FileEntry {
                    file,
                    bytes: Some(Arc::new(bytes)),
                    uploading: false,
                    pinned: false,
                    confirmed: false,
                },
            );
            t.segments.insert(name.to_string(), SegState::Encoded);
            self.cond.notify_all();
            release_if_idle(&mut t, name)
        };
        self.unpin(released.into_iter().collect());
    }

    /// Segment `name` cannot be written: [`Self::segment_file`] fails with `message`
    /// (the first failure of a segment is kept).
    pub(crate) fn segment_failed(&self, name: &str, message: String) {
        let mut t = self.lock();
        match t.segments.get(name) {
            Some(SegState::Failed(_) | SegState::Encoded) => {}
            Some(SegState::Writing) | None => {
                t.segments
                    .insert(name.to_string(), SegState::Failed(message));
            }
        }
        // Kept even if nobody holds it yet: a segment is held when it is sealed, and may
        // fail before.
        self.cond.notify_all();
    }

    /// The file of segment `name`, once written (waits while it is being written, until
    /// `cancel` is cancelled: the checkpoint `checkpoint_id` that waits then fails).
    pub(crate) fn segment_file(
        &self,
        name: &str,
        cancel: &CancelToken,
        checkpoint_id: u64,
    ) -> Result<FileRef> {
        let mut t = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(StateError::Cancelled { checkpoint_id });
            }
            match t.segments.get(name) {
                None => {
                    // Released after it was encoded, or never known.
                    return t.files.get(name).map(|e| e.file.clone()).ok_or_else(|| {
                        self.background_err("segment upload", format!("unknown segment {name}"))
                    });
                }
                Some(SegState::Encoded) => {
                    return t.files.get(name).map(|e| e.file.clone()).ok_or_else(|| {
                        self.background_err("segment upload", format!("lost segment {name}"))
                    })
                }
                Some(SegState::Failed(m)) => {
                    return Err(self.background_err("segment upload", m.clone()))
                }
                Some(SegState::Writing) => {
                    t = self.wait_polling(t);
                }
            }
        }
    }

    /// An empty chunk from the pool, or a new one.
    pub(crate) fn take_chunk(&self) -> ChangelogChunk {
        let pooled = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).pop();
        pooled.unwrap_or_else(|| ChangelogChunk::with_capacity(CHUNK_CAPACITY))
    }

    /// Empties `chunk` and keeps it for [`Self::take_chunk`] (unless the pool is full or
    /// the chunk grew beyond [`CHUNK_CAPACITY`] for a large record).
    pub(crate) fn recycle_chunk(&self, mut chunk: ChangelogChunk) {
        if chunk.len_bytes() > CHUNK_CAPACITY {
            return;
        }
        chunk.clear();
        let mut pool = self.chunks.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOLED_CHUNKS {
            pool.push(chunk);
        }
    }

    /// Chunks in the pool (tests).
    #[cfg(test)]
    pub(crate) fn pooled_chunks(&self) -> usize {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The bytes of file `name`, while the table keeps them (tests).
    #[cfg(test)]
    pub(crate) fn file_bytes(&self, name: &str) -> Option<Arc<Vec<u8>>> {
        self.lock().files.get(name).and_then(|e| e.bytes.clone())
    }

    // ---- files ---------------------------------------------------------------------

    /// Records a file a materialization wrote (bytes in memory). Returns its reference;
    /// an existing entry with the same name must have the same content.
    pub(crate) fn add_file(&self, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        let file = local_ref(name, &bytes);
        let mut t = self.lock();
        if let Some(e) = t.files.get_mut(name) {
            if e.file != file {
                return Err(self.background_err(
                    "materialization",
                    format!("a file is written twice with different content name={name}"),
                ));
            }
            if !e.pinned && !e.uploading {
                // Written again (a content-named file): without a pin, retention may have
                // deleted the earlier copy, so the next checkpoint writes it once more.
                e.bytes = Some(Arc::new(bytes));
                e.confirmed = false;
            }
            return Ok(file);
        }
        t.files.insert(
            name.to_string(),
            FileEntry {
                file: file.clone(),
                bytes: Some(Arc::new(bytes)),
                uploading: false,
                pinned: false,
                confirmed: false,
            },
        );
        Ok(file)
    }

    /// Makes file `name` durable for the checkpoint writing through `target`: with a
    /// storage, uploads it (pinned) unless that happened; without one, writes it through
    /// `target` unless a completed checkpoint did. Files not in the table are durable
    /// already (written by an earlier, completed checkpoint).
    pub(crate) fn make_durable(
        &self,
        name: &str,
        target: Option<&dyn SnapshotTarget>,
        cancel: &CancelToken,
        checkpoint_id: u64,
    ) -> Result<()> {
        let mut t = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(StateError::Cancelled { checkpoint_id });
            }
            let Some(e) = t.files.get_mut(name) else {
                return Ok(());
            };
            if e.pinned {
                return Ok(());
            }
            if e.confirmed {
                // Written by a completed checkpoint, but without a pin retention deletes it
                // once no retained checkpoint references it (a materialization started
                // before the completion may still reference the base before it): ask the
                // target, and write it again if it is gone.
                let Some(target) = target.filter(|_| self.storage.is_none()) else {
                    return Ok(());
                };
                let file = e.file.clone();
                drop(t);
                if target.holds_shared(&file)? {
                    return Ok(());
                }
                t = self.lock();
                let Some(e) = t.files.get_mut(name) else {
                    return Err(self.background_err(
                        "segment upload",
                        format!("a shared file is gone and its bytes are not kept name={name}"),
                    ));
                };
                e.confirmed = false;
                continue;
            }
            let Some(bytes) = e.bytes.clone() else {
                return Ok(());
            };
            match (&self.storage, target) {
                (Some(storage), _) => {
                    if e.uploading {
                        t = self.wait(t);
                        continue;
                    }
                    e.uploading = true;
                    drop(t);
                    let up = storage.upload(name, &bytes);
                    t = self.lock();
                    let expected = t.files.get(name).map(|e| e.file.clone());
                    let result = match (up, expected) {
                        (Ok(f), Some(exp)) if f == exp => Ok(()),
                        (Ok(f), _) => {
                            storage.release(&f);
                            Err(self.background_err(
                                "segment upload",
                                format!("uploaded file differs from its reference name={name}"),
                            ))
                        }
                        (Err(e), _) => Err(e),
                    };
                    if let Some(e) = t.files.get_mut(name) {
                        e.uploading = false;
                        if result.is_ok() {
                            e.pinned = true;
                            e.bytes = None;
                        }
                    }
                    let orphan = if t.refs.contains_key(name) {
                        None
                    } else {
                        release_if_idle(&mut t, name)
                    };
                    self.cond.notify_all();
                    drop(t);
                    self.unpin(orphan.into_iter().collect());
                    return result;
                }
                (None, Some(target)) => {
                    let expected = e.file.clone();
                    drop(t);
                    let written =
                        target.write_file(FileArea::Shared, name, bytes.as_ref().clone())?;
                    if written != expected {
                        return Err(self.background_err(
                            "segment upload",
                            format!("written file differs from its reference name={name}"),
                        ));
                    }
                    return Ok(());
                }
                (None, None) => return Ok(()),
            }
        }
    }

    /// These files are in a completed checkpoint. With a storage (they are pinned) keep no
    /// bytes for them; without one keep them while the file is held: retention may delete
    /// the file once no retained checkpoint references it, and a later checkpoint that
    /// still references it then writes it again ([`Self::make_durable`]).
    pub(crate) fn confirm_names(&self, names: &[String]) {
        let mut t = self.lock();
        for n in names {
            if let Some(e) = t.files.get_mut(n) {
                e.confirmed = true;
                if !e.uploading && self.storage.is_some() {
                    e.bytes = None;
                }
            }
        }
    }

    // ---- materializations ------------------------------------------------------------

    pub(crate) fn mat_started(&self, id: u64) {
        self.lock().mats.insert(id, MatState::Running);
    }

    pub(crate) fn mat_finished(&self, id: u64, outcome: MatState) {
        let mut t = self.lock();
        t.mats.insert(id, outcome);
        self.cond.notify_all();
    }

    /// Materializations that finished, removed from the table.
    pub(crate) fn take_finished_mats(&self) -> Vec<(u64, MatState)> {
        let mut t = self.lock();
        let done: Vec<u64> = t
            .mats
            .iter()
            .filter(|(_, s)| !matches!(s, MatState::Running))
            .map(|(id, _)| *id)
            .collect();
        let mut out: Vec<(u64, MatState)> = done
            .into_iter()
            .filter_map(|id| t.mats.remove(&id).map(|s| (id, s)))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Waits for materialization `id` (which may have been taken by the task thread
    /// already: `known` then supplies it).
    pub(crate) fn wait_mat(
        &self,
        id: u64,
        known: &Mutex<HashMap<u64, Arc<KeyedStateHandle>>>,
        cancel: &CancelToken,
        checkpoint_id: u64,
    ) -> Result<Arc<KeyedStateHandle>> {
        let mut t = self.lock();
        loop {
            if cancel.is_cancelled() {
                return Err(StateError::Cancelled { checkpoint_id });
            }
            match t.mats.get(&id) {
                Some(MatState::Done(h)) => return Ok(h.clone()),
                Some(MatState::Failed(m)) => {
                    return Err(self.background_err("materialization", m.clone()))
                }
                Some(MatState::Running) => {
                    t = self.wait_polling(t);
                }
                None => {
                    let k = known.lock().unwrap_or_else(|p| p.into_inner());
                    return k.get(&id).cloned().ok_or_else(|| {
                        self.background_err(
                            "materialization",
                            format!("materialization {id} was discarded"),
                        )
                    });
                }
            }
        }
    }
}

/// Removes file `name` from the table if nobody holds it and nothing is in progress on
/// it; returns it if it was pinned (to be unpinned outside the lock).
fn release_if_idle(t: &mut Tables, name: &str) -> Option<FileRef> {
    if t.refs.contains_key(name) {
        return None;
    }
    if matches!(t.segments.get(name), Some(SegState::Writing)) {
        return None;
    }
    match t.files.get(name) {
        Some(e) if e.uploading => return None,
        _ => {}
    }
    t.segments.remove(name);
    t.files.remove(name).filter(|e| e.pinned).map(|e| e.file)
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The backend and every snapshot of it are gone: nothing will reference these
        // files any more, so end their pins.
        let t = self.tables.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = &self.storage {
            for e in t.files.values().filter(|e| e.pinned) {
                s.release(&e.file);
            }
        }
    }
}

/// The reference of `bytes` stored as shared file `name`.
pub(crate) fn local_ref(name: &str, bytes: &[u8]) -> FileRef {
    FileRef {
        area: FileArea::Shared,
        name: name.to_string(),
        size: bytes.len() as u64,
        crc32: crc32fast::hash(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "changelog/op-1/0000000000.cls";

    /// A checkpoint waiting for a segment that is never finished (say its encoder died)
    /// fails once it is cancelled, as its timeout does, instead of waiting forever; a
    /// segment finished meanwhile is returned.
    #[test]
    fn waiting_for_a_segment_ends_when_it_is_written_or_the_checkpoint_is_cancelled() {
        let shared = Arc::new(Shared::new(
            "op".into(),
            "changelog/op-1".into(),
            None,
            u64::MAX,
        ));
        shared.open_segment(SEG);
        shared.hold(Holder::Chain, [SEG]);
        // The waiter's outcome, or a failure if it still waits after 10 s.
        let wait = |cancel: &CancelToken| {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || tx.send(shared.segment_file(SEG, &cancel, 7)));
            rx
        };
        let outcome = |rx: std::sync::mpsc::Receiver<Result<FileRef>>| {
            rx.recv_timeout(std::time::Duration::from_secs(10))
                .expect("still waiting")
        };

        let cancel = CancelToken::new();
        let waiter = wait(&cancel);
        std::thread::sleep(std::time::Duration::from_millis(120));
        assert!(
            waiter.try_recv().is_err(),
            "waits while the segment is written"
        );
        cancel.cancel();
        let e = outcome(waiter).unwrap_err();
        assert!(
            matches!(e, StateError::Cancelled { checkpoint_id: 7 }),
            "{e}"
        );

        let waiter = wait(&CancelToken::new());
        std::thread::sleep(std::time::Duration::from_millis(60));
        shared.segment_encoded(SEG, vec![1, 2, 3], 3);
        let file = outcome(waiter).unwrap();
        assert_eq!((file.name.as_str(), file.size), (SEG, 3));
    }
}
