//! [`KeyedStateReader`]: an operator's keyed state, restored into one heap backend that
//! owns every key group, read through the descriptors the job registers.

use std::collections::BTreeMap;
use std::fmt;

use cairn_core::{
    AggregatingStateDescriptor, CodecRef, KeyGroupRange, KeyedData, KeyedStateBackend,
    KeyedStateHandle, ListStateDescriptor, MapStateDescriptor, RawStateId, ReducingStateDescriptor,
    StateError, StateMeta, StateMigration, StateValue, UserKey, ValueStateDescriptor,
};
use cairn_format::OperatorManifest;
use cairn_hashmap::{HashMapBackend, HashMapConfig};

use crate::error::{list_names, Result, StateProcessorError};
use crate::snapshot::Opened;

/// The entries of one key's map state, sorted by the user key's encoding.
pub type MapEntries<UK, UV> = Vec<(UK, UV)>;

/// The keyed state of one operator of a snapshot, typed by the caller's descriptors.
///
/// Made by [`crate::SavepointReader::keyed_state`]: every subtask's part is restored into
/// one [`HashMapBackend`] covering the key groups `0..max_parallelism`, so every key of the
/// operator is read, whatever parallelism the job ran at. Each read registers its
/// descriptor (checked against the stored kind and codecs first, as a restoring job's
/// registration is), lists the keys that have an entry with
/// [`KeyedStateBackend::keys`], and reads each. Results are sorted by the key's encoding.
///
/// The read methods cover states in the void namespace (not scoped to a window). For
/// anything else (namespaced or TTL states), [`KeyedStateReader::backend`] gives the
/// backend itself.
pub struct KeyedStateReader<K> {
    uid: String,
    snapshot: String,
    key_codec: CodecRef<K>,
    /// The stored states, by name.
    states: BTreeMap<String, StateMeta>,
    backend: HashMapBackend,
}

impl<K: 'static> fmt::Debug for KeyedStateReader<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedStateReader")
            .field("uid", &self.uid)
            .field("snapshot", &self.snapshot)
            .field("key_codec", self.key_codec.identity())
            .field("states", &self.states.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<K: 'static> KeyedStateReader<K> {
    /// Restores every keyed handle of `op` into a backend owning all its key groups.
    pub(crate) fn restore(
        opened: &Opened,
        op: &OperatorManifest,
        key_codec: CodecRef<K>,
    ) -> Result<Self> {
        let uid = op.uid.clone();
        let snapshot = opened.description.clone();
        let handles: Vec<KeyedStateHandle> =
            op.subtasks.iter().filter_map(|s| s.keyed.clone()).collect();
        let expected = key_codec.identity();
        let mut states = BTreeMap::new();
        for h in &handles {
            check_readable(h).map_err(|reason| StateProcessorError::Unsupported {
                uid: uid.clone(),
                snapshot: snapshot.clone(),
                reason,
            })?;
            if !h.states.is_empty() && !h.key_codec.is_compatible_with(expected) {
                return Err(StateProcessorError::KeyCodec {
                    uid,
                    snapshot,
                    stored: Box::new(h.key_codec.clone()),
                    expected: Box::new(expected.clone()),
                });
            }
            for m in &h.states {
                states.entry(m.name.clone()).or_insert_with(|| m.clone());
            }
        }
        let read_error = |source: StateError| StateProcessorError::Read {
            uid: uid.clone(),
            what: "keyed state".to_string(),
            snapshot: snapshot.clone(),
            source: Box::new(source),
        };
        let mut backend = HashMapBackend::new(HashMapConfig {
            uid: uid.clone(),
            max_parallelism: op.max_parallelism,
            key_group_range: KeyGroupRange::all(op.max_parallelism),
            key_codec: expected.clone(),
        })
        .map_err(read_error)?;
        if !states.is_empty() {
            backend
                .restore(&handles, opened.source.as_ref())
                .map_err(read_error)?;
        }
        Ok(Self {
            uid,
            snapshot,
            key_codec,
            states,
            backend,
        })
    }

    /// The operator uid.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The stored keyed states (name, kind, codec identities), sorted by name.
    pub fn states(&self) -> impl Iterator<Item = &StateMeta> {
        self.states.values()
    }

    /// The backend holding the restored state (it owns every key group): register any
    /// descriptor (with a namespace, or a TTL through `cairn_core::TtlStateAccess`) and
    /// read it with [`KeyedStateBackend`]'s methods.
    pub fn backend(&mut self) -> &mut HashMapBackend {
        &mut self.backend
    }

    /// Every `(key, value)` of value state `descriptor`.
    pub fn values<V: StateValue>(
        &mut self,
        descriptor: &ValueStateDescriptor<V>,
    ) -> Result<Vec<(K, V)>> {
        self.check(&descriptor.name, |m, uid| descriptor.resolve(m, uid))?;
        self.read(
            &descriptor.name,
            |b| b.register_value(descriptor).map(|id| (id.raw(), id)),
            |b, id| b.value_get(*id, &()),
        )
    }

    /// Every `(key, elements)` of list state `descriptor` (elements in list order; keys
    /// without elements are absent).
    pub fn lists<V: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<V>,
    ) -> Result<Vec<(K, Vec<V>)>> {
        self.check(&descriptor.name, |m, uid| descriptor.resolve(m, uid))?;
        self.read(
            &descriptor.name,
            |b| b.register_list(descriptor).map(|id| (id.raw(), id)),
            |b, id| {
                let list = b.list_get(*id, &())?;
                Ok((!list.is_empty()).then_some(list))
            },
        )
    }

    /// Every `(key, entries)` of map state `descriptor` (entries sorted by the user key's
    /// encoding; keys whose map is empty are absent).
    pub fn maps<UK: UserKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<UK, UV>,
    ) -> Result<Vec<(K, MapEntries<UK, UV>)>> {
        self.check(&descriptor.name, |m, uid| descriptor.resolve(m, uid))?;
        self.read(
            &descriptor.name,
            |b| b.register_map(descriptor).map(|id| (id.raw(), id)),
            |b, id| {
                let entries = b.map_entries(*id, &())?;
                Ok((!entries.is_empty()).then_some(entries))
            },
        )
    }

    /// Every `(key, reduced value)` of reducing state `descriptor`.
    pub fn reducing<V: StateValue>(
        &mut self,
        descriptor: &ReducingStateDescriptor<V>,
    ) -> Result<Vec<(K, V)>> {
        self.check(&descriptor.name, |m, uid| descriptor.resolve(m, uid))?;
        self.read(
            &descriptor.name,
            |b| b.register_reducing(descriptor).map(|id| (id.raw(), id)),
            |b, id| b.reducing_get(*id, &()),
        )
    }

    /// Every `(key, result)` of aggregating state `descriptor`: the aggregate function's
    /// result of each stored accumulator.
    pub fn aggregating<IN: 'static, ACC: StateValue, OUT: 'static>(
        &mut self,
        descriptor: &AggregatingStateDescriptor<IN, ACC, OUT>,
    ) -> Result<Vec<(K, OUT)>> {
        self.check(&descriptor.name, |m, uid| descriptor.resolve(m, uid))?;
        self.read(
            &descriptor.name,
            |b| b.register_aggregating(descriptor).map(|id| (id.raw(), id)),
            |b, id| b.aggregating_get(*id, &()),
        )
    }

    /// Checks that the snapshot has state `name` and that the descriptor reads it
    /// (`resolve`: the same kind, codecs that read the stored ones as is or migrate them).
    fn check(
        &self,
        name: &str,
        resolve: impl FnOnce(&StateMeta, &str) -> cairn_core::Result<StateMigration>,
    ) -> Result<()> {
        let stored = self
            .states
            .get(name)
            .ok_or_else(|| StateProcessorError::UnknownState {
                uid: self.uid.clone(),
                state: name.to_string(),
                what: "keyed",
                snapshot: self.snapshot.clone(),
                available: list_names(self.states.keys().map(String::as_str)),
            })?;
        resolve(stored, &self.uid)
            .map(|_| ())
            .map_err(|source| StateProcessorError::Incompatible {
                uid: self.uid.clone(),
                state: name.to_string(),
                snapshot: self.snapshot.clone(),
                source: Box::new(source),
            })
    }

    /// Registers a state with `register` and reads every key's entry with `get`.
    fn read<Id, T>(
        &mut self,
        name: &str,
        register: impl FnOnce(&mut HashMapBackend) -> cairn_core::Result<(RawStateId, Id)>,
        mut get: impl FnMut(&mut HashMapBackend, &Id) -> cairn_core::Result<Option<T>>,
    ) -> Result<Vec<(K, T)>> {
        let backend = &mut self.backend;
        let key_codec = &self.key_codec;
        let result = (|| {
            let (raw, id) = register(backend)?;
            let keys = backend.keys(raw, &())?;
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                backend.set_current_key(&key)?;
                if let Some(value) = get(backend, &id)? {
                    let key = key_codec.decode(&key).map_err(|source| StateError::Codec {
                        state: "(key)".to_string(),
                        source,
                    })?;
                    out.push((key, value));
                }
            }
            Ok(out)
        })();
        result.map_err(|source| StateProcessorError::Read {
            uid: self.uid.clone(),
            what: format!("keyed state {name}"),
            snapshot: self.snapshot.clone(),
            source,
        })
    }
}

/// Whether a handle holds canonical data (the reason and the way out if not).
fn check_readable(h: &KeyedStateHandle) -> std::result::Result<(), String> {
    match &h.data {
        KeyedData::Canonical { .. } => Ok(()),
        KeyedData::RocksNative { .. } => Err(
            "it is in RocksDB's native format; turn the savepoint into a canonical one with \
             `state-dump convert` and read that"
                .to_string(),
        ),
        KeyedData::Changelog { .. } => Err(
            "it is changelog data (a checkpoint of a job with the changelog on); read a \
             savepoint of the job instead"
                .to_string(),
        ),
        _ => Err("it is keyed data of a kind this build does not know".to_string()),
    }
}
