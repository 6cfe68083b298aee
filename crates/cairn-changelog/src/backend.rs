//! [`ChangelogBackend`]: construction, the registered states, the record log, and
//! materialization triggers. The trait implementation is in `ops.rs`, checkpoints in
//! `checkpoint.rs`, restore and replay in `restore.rs`.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cairn_core::{
    KeyedStateBackend, KeyedStateHandle, RawStateId, Result, SnapshotOptions, StateError, StateMeta,
};
use cairn_format::{ChangelogOp, ChangelogRecord, FileState};

use crate::config::{ChangelogConfig, ChangelogStorage, LogBackpressure};
use crate::error::ChangelogError;
use crate::log::{spawn_worker, LogBuffer};
use crate::restore::OwnedRecord;
use crate::shared::{Holder, MatState, Shared};

/// Records between checks of the materialization triggers.
const TRIGGER_CHECK_EVERY: u32 = 1024;

/// A registered state.
pub(crate) struct StateInfo {
    pub(crate) meta: StateMeta,
    /// The typed codecs (`PlainCodecs<V, N>` or `MapCodecs<UK, UV, N>`), for logging.
    pub(crate) codecs: Box<dyn Any + Send>,
    /// The namespace codec (`CodecRef<N>`), for every change (`clear` knows only `N`).
    pub(crate) ns_codec: Box<dyn Any + Send>,
    /// Aggregating state: where the wrapped aggregate function leaves the encoded
    /// accumulator after each add.
    pub(crate) acc_slot: Option<crate::ops::AccSlot>,
}

/// A segment in a chain.
#[derive(Clone, Debug)]
pub(crate) struct SegRef {
    pub(crate) seq: u64,
    pub(crate) name: String,
    pub(crate) first_sqn: u64,
    pub(crate) records: u64,
}

/// The current materialization and the segments after it.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub(crate) mat: Option<(u64, Arc<KeyedStateHandle>)>,
    /// The materialization's carry segment (replayed first), kept apart from `segments`
    /// so that a newer materialization never inherits it.
    pub(crate) carry: Option<SegRef>,
    pub(crate) segments: Vec<SegRef>,
}

impl Chain {
    /// The carry (if any), then the segments.
    pub(crate) fn all_segments(&self) -> Vec<SegRef> {
        self.carry
            .iter()
            .chain(self.segments.iter())
            .cloned()
            .collect()
    }
}

/// A materialization in progress.
#[derive(Debug)]
pub(crate) struct MatRun {
    pub(crate) inner_id: u64,
    /// The sequence number of the first segment after it.
    pub(crate) boundary: u64,
    /// Records of restored states not registered when it started (not in the wrapped
    /// backend's snapshot): replayed right after it.
    pub(crate) carry: Option<SegRef>,
}

/// A checkpoint whose completion has not been notified.
#[derive(Debug)]
pub(crate) enum PendingCheckpoint {
    /// A changelog checkpoint: which materialization it uses (and whether it waits for it),
    /// and every file name it references once known.
    Changelog {
        mat: Option<u64>,
        wait: bool,
        names: Vec<String>,
    },
    /// A full checkpoint passed through to the wrapped backend under `inner_id`.
    Full { inner_id: u64 },
}

/// Log-based incremental checkpoints around any [`KeyedStateBackend`]; see the crate docs.
pub struct ChangelogBackend<B: KeyedStateBackend> {
    pub(crate) inner: B,
    pub(crate) config: ChangelogConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) states: Vec<StateInfo>,
    /// Wrapped backend's state index → index in `states` (`u32::MAX`: none).
    pub(crate) by_raw: Vec<u32>,
    /// The state table of the open segment (index = index in `states`; grows while it is
    /// open).
    table: Arc<Vec<FileState>>,
    /// The open segment's records; its sequence number is `next_seg`.
    log: LogBuffer,
    pub(crate) scratch: Vec<u8>,
    pub(crate) scratch_ns: Vec<u8>,
    log_bytes_since_mat: u64,
    next_seg: u64,
    pub(crate) chain: Chain,
    pub(crate) running: BTreeMap<u64, MatRun>,
    /// Finished materializations whose holders wait for pending checkpoints to end.
    done_mats: HashSet<u64>,
    /// Handles of finished materializations, for checkpoints that wait for one.
    pub(crate) known: Arc<Mutex<HashMap<u64, Arc<KeyedStateHandle>>>>,
    mat_inner_ids: HashMap<u64, u64>,
    next_mat: u64,
    pub(crate) next_inner_id: u64,
    /// A materialization must complete before the next checkpoint can use the chain
    /// (after a restore, a full checkpoint or a registration that migrated a state).
    pub(crate) needs_mat: bool,
    /// Materializations with a smaller id started before a full checkpoint or before a
    /// registration that migrated a state: never adopted, no later checkpoint waits for
    /// them.
    pub(crate) tainted_below: u64,
    last_mat_start: Instant,
    last_mat_bytes: u64,
    confirmed: Option<u64>,
    pub(crate) pending: BTreeMap<u64, PendingCheckpoint>,
    /// What restored handles say about each state (checked at registration).
    pub(crate) restored_metas: BTreeMap<String, StateMeta>,
    /// Restored records of states not registered yet, by state name.
    pub(crate) replay: HashMap<String, Vec<OwnedRecord>>,
    pub(crate) restored: bool,
    /// The first state whose replay failed, and why: it is part-replayed, so no snapshot
    /// may be taken any more.
    pub(crate) replay_failed: Option<(String, String)>,
    ops_since_check: u32,
    /// The last failure of a background materialization, if the next one has not
    /// succeeded yet.
    last_error: Option<String>,
    /// Materializations that failed since the last one that succeeded.
    mat_failures: u32,
    /// Materialization threads not known to have ended.
    mat_threads: Vec<crate::materialize::MatThread>,
}

impl<B: KeyedStateBackend> fmt::Debug for ChangelogBackend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangelogBackend")
            .field("uid", &self.config.uid)
            .field("key_group_range", &self.inner.key_group_range())
            .field("states", &self.table)
            .field("buffered_records", &self.log.records())
            .field("chain_mat", &self.chain.mat.as_ref().map(|(id, _)| id))
            .field("chain_segments", &self.chain.segments.len())
            .field("running_mats", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Nothing a backend started writes to the checkpoint directory once it is dropped: running
/// materializations are cancelled and the log's worker uploads no more segments (no
/// checkpoint of this backend can use them; a pending one uploads what it needs itself),
/// and the drop waits for those threads. So when a job has ended, its files are all there
/// and stay as they are.
impl<B: KeyedStateBackend> Drop for ChangelogBackend<B> {
    fn drop(&mut self) {
        self.shared.close();
        for t in &self.mat_threads {
            t.cancel.cancel();
        }
        for t in self.mat_threads.drain(..) {
            // It catches a panic of the snapshot (failing that materialization).
            let _ = t.handle.join();
        }
        self.log.close();
    }
}

impl<B: KeyedStateBackend> ChangelogBackend<B> {
    /// Wraps `inner` (a fresh backend): log segments and materializations are uploaded in
    /// the background to `storage`, which must be the job's checkpoint directory (every
    /// checkpoint this backend takes must be written to it).
    pub fn new(inner: B, config: ChangelogConfig, storage: Arc<dyn ChangelogStorage>) -> Self {
        Self::build(inner, config, Some(storage))
    }

    /// Wraps `inner` without a storage of its own: segments and materialized files are
    /// kept in memory until a checkpoint's asynchronous phase writes them through the
    /// checkpoint's target (materialization still runs in the background). For tests,
    /// and when the checkpoint directory is not known when the backend is created.
    pub fn with_checkpoint_uploads(inner: B, config: ChangelogConfig) -> Self {
        Self::build(inner, config, None)
    }

    fn build(
        inner: B,
        config: ChangelogConfig,
        storage: Option<Arc<dyn ChangelogStorage>>,
    ) -> Self {
        let prefix = format!(
            "changelog/{}-{:016x}",
            clean_uid(&config.uid),
            nonce(&config.uid)
        );
        let shared = Arc::new(Shared::new(
            config.uid.clone(),
            prefix,
            storage,
            config.options.max_in_flight_bytes,
        ));
        let log = LogBuffer::new(
            shared.clone(),
            spawn_worker(shared.clone()),
            0,
            config.options.segment_bytes,
        );
        Self {
            inner,
            config,
            shared,
            states: Vec::new(),
            by_raw: Vec::new(),
            table: Arc::new(Vec::new()),
            log,
            scratch: Vec::new(),
            scratch_ns: Vec::new(),
            log_bytes_since_mat: 0,
            next_seg: 0,
            chain: Chain::default(),
            running: BTreeMap::new(),
            done_mats: HashSet::new(),
            known: Arc::new(Mutex::new(HashMap::new())),
            mat_inner_ids: HashMap::new(),
            next_mat: 1,
            next_inner_id: 1,
            needs_mat: false,
            tainted_below: 0,
            last_mat_start: Instant::now(),
            last_mat_bytes: 0,
            confirmed: None,
            pending: BTreeMap::new(),
            restored_metas: BTreeMap::new(),
            replay: HashMap::new(),
            restored: false,
            replay_failed: None,
            ops_since_check: 0,
            last_error: None,
            mat_failures: 0,
            mat_threads: Vec::new(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The operator uid.
    pub fn uid(&self) -> &str {
        &self.config.uid
    }

    /// Records buffered and not sealed into a segment yet.
    pub fn buffered_records(&self) -> u64 {
        self.log.records()
    }

    /// How often the task thread waited because the background thread was
    /// [`max_in_flight_bytes`](crate::ChangelogOptions::max_in_flight_bytes) behind, and
    /// how long in total.
    pub fn log_backpressure(&self) -> LogBackpressure {
        self.shared.backpressure()
    }

    /// How many files (segments and materialized files) the backend still tracks.
    pub fn tracked_files(&self) -> usize {
        self.shared.file_count()
    }

    /// The last background materialization failure, if no materialization succeeded since.
    pub fn last_materialization_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Checks the materialization triggers (time, log size) now and starts one if due.
    /// The backend checks them by itself every few records and at every checkpoint; a
    /// runtime may also call this on a timer.
    pub fn maybe_materialize(&mut self) -> Result<()> {
        self.poll_mats();
        self.check_mat_failures()?;
        if !self.running.is_empty() || self.log_bytes_since_mat + self.log.len_bytes() as u64 == 0 {
            return Ok(());
        }
        let by_time = self
            .config
            .options
            .materialization_interval
            .is_some_and(|d| self.last_mat_start.elapsed() >= d);
        // Compared as stored: the materialized size is what its files take, so the log's
        // buffered bytes count at the compression its encoded segments achieve.
        let buffered = self.log_bytes_since_mat + self.log.len_bytes() as u64;
        let log_bytes = (buffered as f64 * self.shared.log_compression()) as u64;
        let threshold = self
            .config
            .options
            .min_log_bytes
            .max((self.last_mat_bytes as f64 * self.config.options.log_to_state_ratio) as u64);
        if by_time || log_bytes >= threshold {
            self.start_mat()?;
        }
        Ok(())
    }

    /// Fails once more materializations failed in a row than
    /// [`crate::ChangelogOptions::max_materialization_failures`] allows.
    pub(crate) fn check_mat_failures(&self) -> Result<()> {
        let allowed = self.config.options.max_materialization_failures;
        if self.mat_failures <= allowed {
            return Ok(());
        }
        Err(StateError::layer(
            format!("materializing uid={}", self.config.uid),
            ChangelogError::MaterializationFailures {
                uid: self.config.uid.clone(),
                failures: self.mat_failures,
                allowed,
                last: self.last_error.clone().unwrap_or_default(),
            },
        ))
    }

    pub(crate) fn next_mat_id(&self) -> u64 {
        self.next_mat
    }

    /// Whether a materialization is still running (takes finished ones first).
    pub fn is_materializing(&mut self) -> bool {
        self.poll_mats();
        !self.running.is_empty()
    }

    /// Starts a materialization now (the wrapped backend's synchronous phase runs here).
    pub fn materialize_now(&mut self) -> Result<()> {
        self.poll_mats();
        self.start_mat()
    }

    // ---- states --------------------------------------------------------------------

    /// Records a registered state (or finds it again); returns its index in `states`.
    pub(crate) fn add_state(
        &mut self,
        raw: RawStateId,
        meta: StateMeta,
        codecs: Box<dyn Any + Send>,
        ns_codec: Box<dyn Any + Send>,
        acc_slot: Option<crate::ops::AccSlot>,
    ) -> usize {
        let i = raw.index as usize;
        if let Some(&w) = self.by_raw.get(i) {
            if w != u32::MAX {
                return w as usize;
            }
        }
        if self.by_raw.len() <= i {
            self.by_raw.resize(i + 1, u32::MAX);
        }
        let w = self.states.len();
        if let Some(slot) = self.by_raw.get_mut(i) {
            *slot = w as u32;
        }
        let mut table = self.table.as_ref().clone();
        table.push(FileState {
            name: meta.name.clone(),
            kind: meta.kind,
        });
        self.table = Arc::new(table);
        self.states.push(StateInfo {
            meta,
            codecs,
            ns_codec,
            acc_slot,
        });
        w
    }

    /// The index in `states` of a registered state.
    pub(crate) fn state_index(&self, raw: RawStateId) -> Result<usize> {
        match self.by_raw.get(raw.index as usize) {
            Some(&w) if w != u32::MAX => Ok(w as usize),
            _ => Err(StateError::UnknownState { index: raw.index }),
        }
    }

    pub(crate) fn type_mismatch(&self, w: usize) -> StateError {
        let state = self
            .states
            .get(w)
            .map(|s| s.meta.name.clone())
            .unwrap_or_default();
        StateError::layer(
            format!("logging a change uid={} state={state}", self.config.uid),
            ChangelogError::TypeMismatch {
                uid: self.config.uid.clone(),
                state,
            },
        )
    }

    /// Every state the next handle describes: the registered ones and the restored ones
    /// not registered (yet), sorted by name.
    pub(crate) fn handle_metas(&self) -> Vec<StateMeta> {
        let mut metas: BTreeMap<String, StateMeta> = self.restored_metas.clone();
        for s in &self.states {
            metas.insert(s.meta.name.clone(), s.meta.clone());
        }
        metas.into_values().collect()
    }

    // ---- the log -------------------------------------------------------------------

    /// Logs a change of the current key of state `w` (in `scratch_ns`'s namespace).
    pub(crate) fn log_change(
        &mut self,
        w: usize,
        op: ChangelogOp,
        user_key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<()> {
        let (Some(key), Some(kg)) = (self.inner.current_key(), self.inner.current_key_group())
        else {
            return Err(StateError::NoCurrentKey {
                state: self
                    .states
                    .get(w)
                    .map(|s| s.meta.name.clone())
                    .unwrap_or_default(),
            });
        };
        let full = self.log.push(&ChangelogRecord {
            key_group: kg,
            state: w as u32,
            op,
            key,
            namespace: &self.scratch_ns,
            user_key,
            value,
        });
        if full {
            self.cut_log();
        }
        self.ops_since_check += 1;
        if self.ops_since_check >= TRIGGER_CHECK_EVERY {
            self.ops_since_check = 0;
            self.maybe_materialize()?;
        }
        Ok(())
    }

    /// The current chunk is full: seals the segment if it reached its size, or hands the
    /// chunk to the encoder.
    #[cold]
    #[inline(never)]
    fn cut_log(&mut self) {
        if self.log.len_bytes() >= self.config.options.segment_bytes {
            self.seal();
        } else {
            let (prefix, seq) = (&self.shared.prefix, self.next_seg);
            self.log.hand_off(&self.table, || segment_name(prefix, seq));
        }
    }

    /// Seals the open segment into the chain (finished in the background). O(1).
    pub(crate) fn seal(&mut self) {
        let seq = self.next_seg;
        let shared = &self.shared;
        let Some(sealed) = self.log.seal(
            &self.table,
            || segment_name(&shared.prefix, seq),
            |name| shared.hold(Holder::Chain, [name]),
        ) else {
            return;
        };
        self.next_seg += 1;
        self.log_bytes_since_mat += sealed.bytes as u64;
        self.chain.segments.push(SegRef {
            seq,
            name: sealed.name.to_string(),
            first_sqn: sealed.first_sqn,
            records: sealed.records,
        });
    }

    // ---- materialization -----------------------------------------------------------

    /// Starts a materialization: seals the log (the boundary), writes the records of
    /// unregistered restored states as a carry segment, and runs the wrapped backend's
    /// synchronous phase here and its asynchronous phase on a thread of its own.
    pub(crate) fn start_mat(&mut self) -> Result<()> {
        self.seal();
        let mat_id = self.next_mat;
        let carry = self.carry_segment(mat_id)?;
        let inner_id = self.next_inner_id;
        let phase = self
            .inner
            .snapshot(SnapshotOptions::incremental_checkpoint(inner_id))?;
        self.next_inner_id += 1;
        self.next_mat += 1;
        // A running materialization may reference the confirmed one's files.
        let base: Vec<String> = self
            .confirmed
            .and_then(|c| self.known_handle(c))
            .map(|h| h.files().map(|f| f.name.clone()).collect())
            .unwrap_or_default();
        self.shared
            .hold(Holder::Mat(mat_id), base.iter().map(String::as_str));
        self.running.insert(
            mat_id,
            MatRun {
                inner_id,
                boundary: self.next_seg,
                carry,
            },
        );
        self.mat_inner_ids.insert(mat_id, inner_id);
        self.last_mat_start = Instant::now();
        self.log_bytes_since_mat = 0;
        self.mat_threads.retain(|t| !t.handle.is_finished());
        self.mat_threads.extend(crate::materialize::spawn(
            self.shared.clone(),
            mat_id,
            inner_id,
            phase,
        ));
        Ok(())
    }

    /// The pending replay records as one segment, if any.
    fn carry_segment(&mut self, mat_id: u64) -> Result<Option<SegRef>> {
        if self.replay.is_empty() {
            return Ok(None);
        }
        let mut names: Vec<&String> = self.replay.keys().collect();
        names.sort();
        let mut table = Vec::new();
        for name in &names {
            let kind = self
                .restored_metas
                .get(name.as_str())
                .map(|m| m.kind)
                .ok_or_else(|| StateError::Restore {
                    reason: format!(
                        "restored records of a state without metadata uid={} state={name}",
                        self.config.uid
                    ),
                })?;
            table.push(FileState {
                name: (*name).clone(),
                kind,
            });
        }
        let table = Arc::new(table);
        let name = format!(
            "{}/{}{mat_id}.cls",
            self.shared.prefix,
            crate::restore::CARRY_PREFIX
        );
        let mut buf = self.log.fork(0, usize::MAX);
        for (i, state) in names.iter().enumerate() {
            for r in self.replay.get(state.as_str()).into_iter().flatten() {
                if buf.push(&r.as_record(i as u32)) {
                    buf.hand_off(&table, || name.clone());
                }
            }
        }
        let shared = &self.shared;
        // Held before the worker may finish it (an unheld file is released at once).
        let Some(sealed) = buf.seal(
            &table,
            || name.clone(),
            |n| shared.hold(Holder::Mat(mat_id), [n]),
        ) else {
            return Ok(None);
        };
        Ok(Some(SegRef {
            seq: self.next_seg,
            name: sealed.name.to_string(),
            first_sqn: 0,
            records: sealed.records,
        }))
    }

    fn known_handle(&self, id: u64) -> Option<Arc<KeyedStateHandle>> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Takes finished materializations: adopts the newest usable one as the chain's.
    pub(crate) fn poll_mats(&mut self) {
        for (id, state) in self.shared.take_finished_mats() {
            let Some(run) = self.running.remove(&id) else {
                continue;
            };
            match state {
                MatState::Done(handle) => {
                    self.known
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id, handle.clone());
                    let newer = self.chain.mat.as_ref().is_none_or(|(cur, _)| id > *cur);
                    if id >= self.tainted_below && newer {
                        self.adopt(id, handle, run);
                    } else {
                        self.inner.notify_checkpoint_aborted(run.inner_id);
                    }
                    self.last_error = None;
                    self.mat_failures = 0;
                }
                MatState::Failed(message) => {
                    self.inner.notify_checkpoint_aborted(run.inner_id);
                    self.last_error = Some(message);
                    self.mat_failures = self.mat_failures.saturating_add(1);
                }
                MatState::Running => {}
            }
            self.done_mats.insert(id);
        }
        self.release_mat_holders();
    }

    fn adopt(&mut self, id: u64, handle: Arc<KeyedStateHandle>, run: MatRun) {
        let segments: Vec<SegRef> = self
            .chain
            .segments
            .iter()
            .filter(|s| s.seq >= run.boundary)
            .cloned()
            .collect();
        self.last_mat_bytes = handle.files().map(|f| f.size).sum();
        let mut names: Vec<&str> = handle.files().map(|f| f.name.as_str()).collect();
        names.extend(run.carry.iter().map(|s| s.name.as_str()));
        names.extend(segments.iter().map(|s| s.name.as_str()));
        self.shared.hold_exactly(Holder::Chain, names);
        self.chain = Chain {
            mat: Some((id, handle)),
            carry: run.carry,
            segments,
        };
        if id >= self.tainted_below {
            self.needs_mat = false;
        }
    }

    /// Ends the holders of finished materializations no pending checkpoint waits for.
    pub(crate) fn release_mat_holders(&mut self) {
        let waited: HashSet<u64> = self
            .pending
            .values()
            .filter_map(|p| match p {
                PendingCheckpoint::Changelog {
                    mat: Some(m),
                    wait: true,
                    ..
                } => Some(*m),
                _ => None,
            })
            .collect();
        let free: Vec<u64> = self
            .done_mats
            .iter()
            .filter(|id| !waited.contains(id))
            .copied()
            .collect();
        for id in free {
            self.done_mats.remove(&id);
            self.shared.release_holder(Holder::Mat(id));
        }
        // Handles older than the chain's and the confirmed one that no pending checkpoint
        // uses are not needed any more.
        let keep_from = self
            .confirmed
            .min(self.chain.mat.as_ref().map(|(id, _)| *id))
            .unwrap_or(0);
        let pending_mats: HashSet<u64> = self
            .pending
            .values()
            .filter_map(|p| match p {
                PendingCheckpoint::Changelog { mat, .. } => *mat,
                PendingCheckpoint::Full { .. } => None,
            })
            .collect();
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| *id >= keep_from || pending_mats.contains(id));
    }

    /// Checkpoint `checkpoint_id`, which used materialization `mat`, completed.
    pub(crate) fn mat_confirmed(&mut self, mat: u64) {
        if self.confirmed.is_some_and(|c| c >= mat) {
            return;
        }
        let Some(handle) = self.known_handle(mat) else {
            return;
        };
        if let Some(inner_id) = self.mat_inner_ids.get(&mat) {
            self.inner.notify_checkpoint_complete(*inner_id);
        }
        self.mat_inner_ids.retain(|id, _| *id > mat);
        self.confirmed = Some(mat);
        self.shared.hold_exactly(
            Holder::Confirmed,
            handle.files().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        );
    }

    /// A restored state was registered with a codec that migrates its values (the wrapped
    /// backend converted its entries, replay converts its records): no checkpoint taken
    /// from now on may use a materialization started before, nor the carry segments, which
    /// hold the state's records in the old schema (see "Schema evolution" in the crate
    /// docs). Like after a full checkpoint, the next changelog checkpoint starts a
    /// materialization (unless one started since is running) and waits for it.
    pub(crate) fn migrated(&mut self) {
        self.needs_mat = true;
        self.tainted_below = self.next_mat;
    }

    /// Fails once a replay failed: the state it left part-replayed would be snapshotted so.
    pub(crate) fn check_replay_failed(&self) -> Result<()> {
        match &self.replay_failed {
            None => Ok(()),
            Some((state, message)) => Err(StateError::layer(
                format!("snapshot uid={}", self.config.uid),
                ChangelogError::ReplayFailed {
                    uid: self.config.uid.clone(),
                    state: state.clone(),
                    message: message.clone(),
                },
            )),
        }
    }

    /// Fails if a restored state still has records to replay (a canonical snapshot of the
    /// wrapped backend would miss them).
    pub(crate) fn check_replayed(&self) -> Result<()> {
        match self.replay.keys().min() {
            None => Ok(()),
            Some(state) => Err(StateError::layer(
                format!("snapshot uid={}", self.config.uid),
                ChangelogError::UnreplayedState {
                    uid: self.config.uid.clone(),
                    state: state.clone(),
                },
            )),
        }
    }
}

/// The name of segment `seq`.
fn segment_name(prefix: &str, seq: u64) -> String {
    format!("{prefix}/{seq:010}.cls")
}

/// The uid reduced to `[A-Za-z0-9_-]`, at most 40 bytes (file names).
fn clean_uid(uid: &str) -> String {
    let s: String = uid
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    if s.is_empty() {
        "op".into()
    } else {
        s
    }
}

/// A per-instance random number (std's randomly keyed hasher, the time and a counter), so
/// two instances never write the same segment names.
fn nonce(uid: &str) -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write(uid.as_bytes());
    h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cairn_core::{
        BincodeCodec, Codec, CodecError, CodecRef, KeyGroupRange, KeyedStateBackend,
        ListStateDescriptor, ListStateId, MapStateDescriptor, StateAccess, ValueStateDescriptor,
    };
    use cairn_hashmap::{HashMapBackend, HashMapConfig};

    use super::*;

    fn backend(min_log_bytes: u64) -> ChangelogBackend<HashMapBackend> {
        let key_codec = BincodeCodec::<u64>::new().identity().clone();
        let inner = HashMapBackend::new(HashMapConfig {
            uid: "op".into(),
            max_parallelism: 8,
            key_group_range: KeyGroupRange::all(8),
            key_codec: key_codec.clone(),
        })
        .unwrap();
        let mut config = ChangelogConfig::new("op", key_codec);
        config.options.materialization_interval = None;
        config.options.log_to_state_ratio = 0.0;
        config.options.min_log_bytes = min_log_bytes;
        config.options.segment_bytes = 16 << 10;
        ChangelogBackend::with_checkpoint_uploads(inner, config)
    }

    /// The size trigger compares sizes as stored: a log of very compressible records
    /// materializes only when its encoded size, not its buffered size, reaches the
    /// threshold (a buffered log many times the threshold used to materialize at once).
    #[test]
    fn size_trigger_counts_the_log_as_stored() {
        const MIN: u64 = 64 << 10;
        let mut b = backend(MIN);
        let s = b
            .register_value(&ValueStateDescriptor::<[u64; 8]>::new("v"))
            .unwrap();
        let mut k = 0u64;
        let mut write = |b: &mut ChangelogBackend<HashMapBackend>, n: u64| {
            for _ in 0..n {
                b.set_current_key(&(k % 1000).to_le_bytes()).unwrap();
                b.value(&s).update([7; 8]).unwrap();
                k += 1;
            }
        };
        let first = b.next_mat_id();
        // A segment and a little (below the threshold even uncompressed), then wait until
        // the background worker encoded the segment.
        write(&mut b, 300);
        assert!(b.log_bytes_since_mat > 0, "a segment was sealed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while b.shared.log_compression() >= 1.0 {
            assert!(Instant::now() < deadline, "no segment encoded");
            std::thread::sleep(Duration::from_millis(5));
        }
        let compression = b.shared.log_compression();
        assert!(compression < 0.25, "records compress well: {compression}");
        assert_eq!(b.next_mat_id(), first, "nothing reaches the threshold yet");
        // Buffered bytes past the threshold several times over, stored ones not.
        let record = b.log_bytes_since_mat + b.log.len_bytes() as u64;
        let per_record = record / 300;
        let buffered_past = 3 * MIN / per_record;
        write(&mut b, buffered_past);
        let buffered = b.log_bytes_since_mat + b.log.len_bytes() as u64;
        assert!(buffered > 2 * MIN, "{buffered}");
        assert_eq!(
            b.next_mat_id(),
            first,
            "buffered {buffered} bytes, stored fewer"
        );
        // It starts once the stored size passes it too.
        let stored_past = (2.0 * MIN as f64 / (per_record as f64 * compression)) as u64;
        let mut written = 0;
        while b.next_mat_id() == first && written < stored_past {
            write(&mut b, 100);
            written += 100;
        }
        assert_eq!(b.next_mat_id(), first + 1, "a materialization started");
    }

    /// A namespace codec that cannot encode 13.
    struct NoThirteen(BincodeCodec<u64>);

    impl Codec<u64> for NoThirteen {
        fn encode(&self, value: &u64, out: &mut Vec<u8>) -> std::result::Result<(), CodecError> {
            if *value == 13 {
                return Err(CodecError {
                    codec: "no-thirteen".into(),
                    op: "encode",
                    detail: "13".into(),
                });
            }
            self.0.encode(value, out)
        }
        fn decode(&self, bytes: &[u8]) -> std::result::Result<u64, CodecError> {
            self.0.decode(bytes)
        }
        fn identity(&self) -> &cairn_core::CodecIdentity {
            self.0.identity()
        }
    }

    /// A change whose log record cannot be encoded fails before the wrapped backend
    /// changes: otherwise the state would hold what the log (and so a restore) lacks.
    #[test]
    fn a_change_that_cannot_be_logged_is_not_made() {
        let mut b = backend(u64::MAX);
        let ns: CodecRef<u64> = Arc::new(NoThirteen(BincodeCodec::new()));
        let list = b
            .register_list(&ListStateDescriptor {
                name: "l".into(),
                element: Arc::new(BincodeCodec::<u64>::new()),
                namespace: ns.clone(),
            })
            .unwrap();
        let map = b
            .register_map(&MapStateDescriptor {
                name: "m".into(),
                user_key: Arc::new(BincodeCodec::<u64>::new()),
                value: Arc::new(BincodeCodec::<u64>::new()),
                namespace: ns,
            })
            .unwrap();
        b.set_current_key(&1u64.to_le_bytes()).unwrap();
        b.list_add(list, &12, 5).unwrap();
        b.map_put(map, &12, 1, 2).unwrap();
        let logged = b.log.len_bytes();
        assert!(b.list_add(list, &13, 5).is_err());
        assert!(b.list_add_all(list, &13, vec![5, 6]).is_err());
        assert!(b.list_update(list, &13, vec![5]).is_err());
        assert!(b.map_put(map, &13, 1, 2).is_err());
        assert_eq!(b.list_get(list, &13).unwrap(), Vec::<u64>::new());
        assert_eq!(b.map_get(map, &13, &1).unwrap(), None);
        // Clearing an existing entry under a namespace it cannot log: the entry stays.
        let keep = ListStateId::<u64, u64>::new(list.raw());
        assert!(b.clear(keep.raw(), &13u64).is_err());
        assert_eq!(b.list_get(list, &12).unwrap(), vec![5]);
        assert_eq!(b.log.len_bytes(), logged, "nothing logged");
    }
}
