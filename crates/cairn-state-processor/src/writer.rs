//! [`SavepointWriter`]: a new savepoint, empty or from an existing one, with operators
//! removed, renamed or bootstrapped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use cairn_core::{
    check_parallelism, CancelToken, FileArea, FileRef, KeyGroupRange, KeyedData,
    OperatorListStateDescriptor, OperatorStateBackend, OperatorStateSnapshot, SnapshotTarget,
    SnapshotType, StateError, StateValue, DEFAULT_MAX_PARALLELISM,
};
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_storage::{
    assemble_manifest, create_savepoint, PendingOperator, SavepointWriter as StorageWriter,
    StorageError,
};

use crate::bootstrap::{bootstrap, KeyedStateBootstrapFunction};
use crate::error::{list_names, Result, StateProcessorError};
use crate::snapshot::{self, Opened};

/// The id of a savepoint written from scratch (a job restored from it numbers its own
/// checkpoints on from there).
const NEW_SAVEPOINT_ID: u64 = 1;

/// Writes a canonical savepoint offline: Flink's `SavepointWriter`.
///
/// Start from nothing ([`SavepointWriter::new`]) or from an existing savepoint
/// ([`SavepointWriter::from_existing`]: its operators are kept as they are, files and
/// all); remove operators, change uids, bootstrap the keyed state and the operator state
/// of new operators; then [`SavepointWriter::write`] it to a new path. The result is a
/// savepoint as the runtime writes it: a job restores it under either backend, at any
/// parallelism up to the max parallelism. See the [crate docs](crate) for an example.
///
/// Every method checks its arguments and leaves the writer unchanged when it refuses them.
pub struct SavepointWriter {
    max_parallelism: u32,
    checkpoint_id: u64,
    base: Option<Opened>,
    /// Operators of the existing savepoint by their new uid (the manifest part still has
    /// the old one).
    existing: BTreeMap<String, OperatorManifest>,
    /// Bootstrapped operators by uid; no uid is in both maps.
    new: BTreeMap<String, NewOperator>,
}

/// A bootstrapped operator.
struct NewOperator {
    parallelism: u32,
    keyed: Option<PendingOperator>,
    /// Per subtask, its operator states (in the order they were added).
    operator_states: Vec<Vec<OperatorStateSnapshot>>,
}

impl NewOperator {
    fn new(parallelism: u32) -> Self {
        Self {
            parallelism,
            keyed: None,
            operator_states: vec![Vec::new(); parallelism as usize],
        }
    }

    fn has_state(&self, name: &str) -> bool {
        self.operator_states
            .iter()
            .flatten()
            .any(|s| s.name == name)
    }
}

impl fmt::Debug for SavepointWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SavepointWriter")
            .field("max_parallelism", &self.max_parallelism)
            .field("checkpoint_id", &self.checkpoint_id)
            .field("base", &self.base.as_ref().map(|b| &b.path))
            .field("operators", &self.uids())
            .finish()
    }
}

impl SavepointWriter {
    /// An empty savepoint whose new operators have `max_parallelism` key groups (the job
    /// that restores their keyed state must have the same max parallelism).
    pub fn new(max_parallelism: u32) -> Result<Self> {
        check_parallelism(1, max_parallelism)
            .map_err(|_| StateProcessorError::InvalidMaxParallelism { max_parallelism })?;
        Ok(Self {
            max_parallelism,
            checkpoint_id: NEW_SAVEPOINT_ID,
            base: None,
            existing: BTreeMap::new(),
            new: BTreeMap::new(),
        })
    }

    /// A savepoint holding every operator of the savepoint (or canonical checkpoint) at
    /// `path`, whose files are copied when the new one is written (a checkpoint's shared
    /// files become the savepoint's own). New operators get its max parallelism
    /// ([`crate::SavepointReader::max_parallelism`]; 128 if it has no operators), and the
    /// new savepoint keeps its id. Changelog checkpoints are refused: their state is not
    /// in files a savepoint may hold.
    pub fn from_existing(path: &str) -> Result<Self> {
        let base = snapshot::open(path)?;
        for op in &base.manifest.operators {
            let changelog = op
                .subtasks
                .iter()
                .filter_map(|s| s.keyed.as_ref())
                .any(|h| matches!(h.data, KeyedData::Changelog { .. }));
            if changelog {
                return Err(StateProcessorError::Unsupported {
                    uid: op.uid.clone(),
                    snapshot: base.description.clone(),
                    reason: "it is changelog data (a checkpoint of a job with the changelog \
                             on); start from a savepoint of the job instead"
                        .to_string(),
                });
            }
        }
        let max_parallelism = base
            .manifest
            .operators
            .iter()
            .map(|o| o.max_parallelism)
            .max()
            .unwrap_or(DEFAULT_MAX_PARALLELISM);
        let existing = base
            .manifest
            .operators
            .iter()
            .map(|o| (o.uid.clone(), o.clone()))
            .collect();
        Ok(Self {
            max_parallelism,
            checkpoint_id: base.manifest.checkpoint_id,
            base: Some(base),
            existing,
            new: BTreeMap::new(),
        })
    }

    /// The max parallelism of new operators.
    pub fn max_parallelism(&self) -> u32 {
        self.max_parallelism
    }

    /// The uids of the savepoint being written, sorted.
    pub fn uids(&self) -> Vec<&str> {
        let mut uids: Vec<&str> = self
            .existing
            .keys()
            .chain(self.new.keys())
            .map(String::as_str)
            .collect();
        uids.sort_unstable();
        uids
    }

    /// Removes operator `uid` (from the existing savepoint, or bootstrapped): a job
    /// restored from the new savepoint no longer needs to allow non-restored state for it,
    /// and one that still has it starts it empty.
    pub fn remove_operator(&mut self, uid: &str) -> Result<&mut Self> {
        if self.existing.remove(uid).is_none() && self.new.remove(uid).is_none() {
            return Err(self.unknown(uid));
        }
        Ok(self)
    }

    /// Gives operator `old` the uid `new` (Flink's `changeOperatorIdentifier`): a job whose
    /// operator has uid `new` restores its state.
    pub fn change_uid(&mut self, old: &str, new: &str) -> Result<&mut Self> {
        check_uid(new)?;
        if !self.existing.contains_key(old) && !self.new.contains_key(old) {
            return Err(self.unknown(old));
        }
        if old == new {
            return Ok(self);
        }
        self.check_absent(new)?;
        if let Some(op) = self.existing.remove(old) {
            self.existing.insert(new.to_string(), op);
        } else if let Some(op) = self.new.remove(old) {
            self.new.insert(new.to_string(), op);
        }
        Ok(self)
    }

    /// Adds a keyed operator `uid` at `parallelism` whose keyed state `function` writes
    /// from `records` (Flink's `OperatorTransformation.bootstrapWith(…).keyBy(…)`): each
    /// record goes, in order, to the subtask owning the key group of `key_of(record)`,
    /// whose heap backend has that key as its current key; each subtask's backend is then
    /// snapshotted as a canonical savepoint part. The operator may also get operator state
    /// ([`SavepointWriter::with_operator_state`], same parallelism).
    pub fn with_keyed_operator<F, I>(
        &mut self,
        uid: &str,
        parallelism: u32,
        records: I,
        key_of: impl Fn(&F::In) -> F::Key,
        function: F,
    ) -> Result<&mut Self>
    where
        F: KeyedStateBootstrapFunction,
        I: IntoIterator<Item = F::In>,
    {
        self.check_new(uid, parallelism, None)?;
        let pending = bootstrap(
            uid,
            self.max_parallelism,
            parallelism,
            self.checkpoint_id,
            records,
            key_of,
            function,
        )
        .map_err(|source| StateProcessorError::Bootstrap {
            uid: uid.to_string(),
            source: Box::new(source),
        })?;
        self.new
            .entry(uid.to_string())
            .or_insert_with(|| NewOperator::new(parallelism))
            .keyed = Some(pending);
        Ok(self)
    }

    /// Gives operator `uid` (new, or bootstrapped keyed state at the same parallelism) the
    /// operator list state `descriptor` holding `elements`: split in order into
    /// `parallelism` contiguous runs, subtask `i` holding the `i`-th. So a job restored at
    /// this parallelism gives subtask `i` its run; at another, a split state's elements
    /// are dealt round-robin in this order, and a union state gives every subtask all of
    /// them, in this order, whatever the parallelism.
    pub fn with_operator_state<V: StateValue>(
        &mut self,
        uid: &str,
        parallelism: u32,
        descriptor: &OperatorListStateDescriptor<V>,
        elements: Vec<V>,
    ) -> Result<&mut Self> {
        self.check_new(uid, parallelism, Some(&descriptor.name))?;
        let bootstrap_error = |source: StateError| StateProcessorError::Bootstrap {
            uid: uid.to_string(),
            source: Box::new(source),
        };
        // Built apart first: a refused state leaves the operator as it was.
        let n = elements.len();
        let p = parallelism as usize;
        let mut elements = elements.into_iter();
        let mut parts = Vec::with_capacity(p);
        for i in 0..p {
            let run = (i + 1) * n / p - i * n / p;
            let mut backend = OperatorStateBackend::new(uid);
            let id = backend.register_list(descriptor).map_err(bootstrap_error)?;
            backend
                .list(id)
                .map_err(bootstrap_error)?
                .extend(elements.by_ref().take(run));
            parts.push(backend.snapshot().map_err(bootstrap_error)?);
        }
        let op = self
            .new
            .entry(uid.to_string())
            .or_insert_with(|| NewOperator::new(parallelism));
        for (states, mut part) in op.operator_states.iter_mut().zip(parts) {
            states.append(&mut part);
        }
        Ok(self)
    }

    /// Writes the savepoint to `path` (a directory, created if missing, or a storage URL;
    /// `<dir>/_metadata` names `<dir>`, as for [`crate::SavepointReader::open`]): every
    /// file first, the manifest (`_metadata`) last and atomically, as the runtime's
    /// savepoints are; so the savepoint exists exactly when it is complete. Refuses a path
    /// that holds a savepoint already, and the job directory of the checkpoint it started
    /// from (its shared files would be replaced by their copies). On failure nothing is
    /// published and the files written are deleted.
    pub fn write(self, path: &str) -> Result<()> {
        let write_error = |source: StateError| StateProcessorError::Write {
            path: path.to_string(),
            source: Box::new(source),
        };
        // The savepoint's directory: a path given as `<dir>/_metadata` names `<dir>`, as it
        // does for the reader (not a directory named `_metadata` that no reader finds).
        let dir = snapshot::dir_of(path);
        // A checkpoint's shared files are copied as private `shared/<name>`: written into
        // the checkpoint's own job directory, they would be its very files, replaced in
        // place, then shared with the job (whose checkpoint GC deletes them) or, should the
        // write fail, deleted with what it wrote.
        if let Some(base) = &self.base {
            if let Some(job_dir) = base.job_dir.as_deref() {
                if snapshot::same_dir(dir, job_dir) {
                    return Err(write_error(StateError::layer(
                        "checking the target",
                        format!(
                            "it is the job directory of {}, whose shared files the savepoint's \
                             own copies would replace; write to another directory",
                            base.description
                        ),
                    )));
                }
            }
        }
        let storage = match create_savepoint(dir, self.checkpoint_id) {
            Ok(storage) => storage,
            Err(StorageError::SavepointExists { .. }) => {
                return Err(StateProcessorError::SavepointExists {
                    path: path.to_string(),
                })
            }
            Err(e) => return Err(write_error(StateError::layer("creating the savepoint", e))),
        };
        let target = Target {
            storage: &storage,
            names: Mutex::new(HashSet::new()),
        };
        let manifest = match self.assemble(&target, path) {
            Ok(manifest) => manifest,
            Err(e) => {
                storage.abort();
                return Err(e);
            }
        };
        storage
            .publish(&manifest)
            .map_err(|e| write_error(StateError::layer("publishing the manifest", e)))
    }

    /// Writes every operator's files and returns the manifest naming them.
    fn assemble(self, target: &Target<'_>, path: &str) -> Result<Manifest> {
        let write_error = |source: StateError| StateProcessorError::Write {
            path: path.to_string(),
            source: Box::new(source),
        };
        let cancel = CancelToken::new();
        let mut copied: HashMap<(FileArea, String), FileRef> = HashMap::new();
        let mut operators = Vec::with_capacity(self.existing.len() + self.new.len());
        if let Some(base) = &self.base {
            for (uid, mut op) in self.existing {
                for subtask in &mut op.subtasks {
                    let Some(handle) = &mut subtask.keyed else {
                        continue;
                    };
                    for file in handle.files_mut() {
                        *file = copy_file(base, &op.uid, file, target, &mut copied, path)?;
                    }
                }
                op.uid = uid;
                operators.push(op);
            }
        }
        for (uid, new) in self.new {
            let mut op = match new.keyed {
                Some(pending) => pending.run(target, &cancel).map_err(write_error)?,
                None => OperatorManifest {
                    uid: uid.clone(),
                    parallelism: new.parallelism,
                    max_parallelism: self.max_parallelism,
                    subtasks: (0..new.parallelism)
                        .map(|index| {
                            KeyGroupRange::for_subtask(self.max_parallelism, new.parallelism, index)
                                .map(|key_group_range| SubtaskManifest {
                                    key_group_range,
                                    keyed: None,
                                    operator_state: Vec::new(),
                                })
                        })
                        .collect::<cairn_core::Result<_>>()
                        .map_err(write_error)?,
                },
            };
            for (subtask, mut states) in op.subtasks.iter_mut().zip(new.operator_states) {
                states.sort_by(|a, b| a.name.cmp(&b.name));
                subtask.operator_state = states;
            }
            op.uid = uid;
            operators.push(op);
        }
        let manifest = assemble_manifest(self.checkpoint_id, SnapshotType::Savepoint, operators);
        manifest
            .validate()
            .map_err(|e| write_error(StateError::layer("the manifest is not valid", e)))?;
        Ok(manifest)
    }

    /// Checks that operator `uid` can get keyed state (`state` is `None`) or operator
    /// state `state` at `parallelism`.
    fn check_new(&self, uid: &str, parallelism: u32, state: Option<&str>) -> Result<()> {
        check_uid(uid)?;
        if parallelism == 0 || parallelism > self.max_parallelism {
            return Err(StateProcessorError::InvalidParallelism {
                uid: uid.to_string(),
                parallelism,
                max_parallelism: self.max_parallelism,
            });
        }
        if self.existing.contains_key(uid) {
            return self.check_absent(uid);
        }
        match self.new.get(uid) {
            None => Ok(()),
            Some(op) => {
                let duplicate = match state {
                    None => op.keyed.is_some(),
                    Some(name) => op.has_state(name),
                };
                match (duplicate, state) {
                    (true, Some(name)) => Err(StateProcessorError::DuplicateState {
                        uid: uid.to_string(),
                        state: name.to_string(),
                    }),
                    (true, None) => self.check_absent(uid),
                    (false, _) if op.parallelism != parallelism => {
                        Err(StateProcessorError::ParallelismMismatch {
                            uid: uid.to_string(),
                            existing: op.parallelism,
                            parallelism,
                        })
                    }
                    (false, _) => Ok(()),
                }
            }
        }
    }

    /// An error if the savepoint being written has operator `uid`.
    fn check_absent(&self, uid: &str) -> Result<()> {
        let from = self.base.as_ref().map_or("", |b| b.description.as_str());
        let origin = match (self.existing.get(uid), self.new.get(uid)) {
            (Some(op), _) if op.uid == uid => format!("from {from}"),
            (Some(op), _) => format!("operator {} from {from}", op.uid),
            (None, Some(op)) if op.keyed.is_some() => "bootstrapped keyed state".into(),
            (None, Some(_)) => "bootstrapped operator state".into(),
            (None, None) => return Ok(()),
        };
        Err(StateProcessorError::DuplicateOperator {
            uid: uid.to_string(),
            origin,
        })
    }

    fn unknown(&self, uid: &str) -> StateProcessorError {
        StateProcessorError::UnknownOperator {
            uid: uid.to_string(),
            snapshot: "the savepoint being written".to_string(),
            available: list_names(self.uids()),
        }
    }
}

fn check_uid(uid: &str) -> Result<()> {
    if uid.is_empty() {
        return Err(StateProcessorError::InvalidUid {
            uid: uid.to_string(),
            reason: "a uid must not be empty",
        });
    }
    Ok(())
}

/// Copies `file` of operator `uid` from the existing snapshot into the new savepoint (once,
/// however often it is referenced): a private file keeps its name, a shared file of a
/// checkpoint becomes private file `shared/<name>`.
fn copy_file(
    base: &Opened,
    uid: &str,
    file: &FileRef,
    target: &Target<'_>,
    copied: &mut HashMap<(FileArea, String), FileRef>,
    path: &str,
) -> Result<FileRef> {
    let key = (file.area, file.name.clone());
    if let Some(done) = copied.get(&key) {
        return Ok(done.clone());
    }
    let bytes = base
        .source
        .read_file(file)
        .map_err(|source| StateProcessorError::Read {
            uid: uid.to_string(),
            what: format!("file {file}"),
            snapshot: base.description.clone(),
            source: Box::new(source),
        })?;
    let name = match file.area {
        FileArea::Private => file.name.clone(),
        FileArea::Shared => format!("shared/{}", file.name),
    };
    let written = target
        .write_file(FileArea::Private, &name, bytes.to_vec())
        .map_err(|source| StateProcessorError::Write {
            path: path.to_string(),
            source: Box::new(source),
        })?;
    copied.insert(key, written.clone());
    Ok(written)
}

/// The storage's savepoint writer, refusing a file name written twice (two operators'
/// files must never overwrite each other).
struct Target<'a> {
    storage: &'a StorageWriter,
    names: Mutex<HashSet<String>>,
}

impl SnapshotTarget for Target<'_> {
    fn checkpoint_id(&self) -> u64 {
        self.storage.checkpoint_id()
    }

    fn supports_shared(&self) -> bool {
        false
    }

    fn write_file(
        &self,
        area: FileArea,
        name: &str,
        bytes: Vec<u8>,
    ) -> cairn_core::Result<FileRef> {
        let fresh = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        if !fresh {
            return Err(StateError::layer(
                format!("writing savepoint file name={name}"),
                "two files of the savepoint have this name",
            ));
        }
        self.storage.write_file(area, name, bytes)
    }
}
