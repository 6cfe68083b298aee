//! Bootstrapping keyed state: [`KeyedStateBootstrapFunction`] and the heap backends it
//! writes to, one per subtask of the new operator.

use std::sync::Arc;

use cairn_core::{
    key_group_for_key, subtask_for_key_group, BincodeCodec, CodecRef, KeyedStateBackend,
    OperatorStateBackend, SnapshotOptions, StateError,
};
use cairn_hashmap::HashMapBackend;
use cairn_storage::{snapshot_operator, PendingOperator, SubtaskRef};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Writes keyed state for the records of a new operator, as Flink's
/// `KeyedStateBootstrapFunction` does: [`SavepointWriter::with_keyed_operator`] calls
/// [`open`](Self::open) once per subtask's backend, then [`process`](Self::process) for each
/// record with the backend of the subtask that owns the record's key, its key set as the
/// current key.
///
/// Register the same descriptors (names, kinds, codecs) that the job's
/// `KeyedProcessFunction` registers in its `open`: the job checks them when it restores.
/// The methods are generic over the backend, as a `KeyedProcessFunction`'s are, so state
/// code can be shared with the job.
///
/// ```
/// use cairn_core::{KeyedStateBackend, ValueStateDescriptor, ValueStateId};
/// use cairn_state_processor::KeyedStateBootstrapFunction;
///
/// /// Sets the runtime's `Count` state (`ValueState<u64>` named `count`) of each word.
/// struct Counts;
///
/// impl KeyedStateBootstrapFunction for Counts {
///     type Key = String;
///     type In = (String, u64);
///     type States = ValueStateId<u64, ()>;
///
///     fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_core::Result<Self::States> {
///         b.register_value(&ValueStateDescriptor::<u64>::new("count"))
///     }
///
///     fn process<B: KeyedStateBackend>(
///         &mut self,
///         count: &Self::States,
///         _word: &String,
///         (_, n): (String, u64),
///         b: &mut B,
///     ) -> cairn_core::Result<()> {
///         b.value_update(*count, &(), n)
///     }
/// }
/// ```
///
/// [`SavepointWriter::with_keyed_operator`]: crate::SavepointWriter::with_keyed_operator
pub trait KeyedStateBootstrapFunction {
    /// The key type.
    type Key: Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The records.
    type In;
    /// Handles to the registered states (e.g. a `ValueStateId`), made by
    /// [`KeyedStateBootstrapFunction::open`].
    type States;

    /// The codec of the keys; by default the runtime's (`BincodeCodec<Key>`, what `key_by`
    /// uses). The job restoring the savepoint must encode its keys with the same identity.
    fn key_codec(&self) -> CodecRef<Self::Key> {
        Arc::new(BincodeCodec::<Self::Key>::new())
    }

    /// Registers the states in `backend` (called once per subtask).
    fn open<B: KeyedStateBackend>(&mut self, backend: &mut B) -> cairn_core::Result<Self::States>;

    /// Writes the state of one record; `key` is the backend's current key.
    fn process<B: KeyedStateBackend>(
        &mut self,
        states: &Self::States,
        key: &Self::Key,
        record: Self::In,
        backend: &mut B,
    ) -> cairn_core::Result<()>;
}

/// Runs `function` over `records` in one heap backend per subtask of `parallelism` and
/// takes the synchronous phase of a savepoint (`checkpoint_id`) of them.
pub(crate) fn bootstrap<F: KeyedStateBootstrapFunction>(
    uid: &str,
    max_parallelism: u32,
    parallelism: u32,
    checkpoint_id: u64,
    records: impl IntoIterator<Item = F::In>,
    key_of: impl Fn(&F::In) -> F::Key,
    mut function: F,
) -> cairn_core::Result<PendingOperator> {
    let key_codec = function.key_codec();
    let mut backends = (0..parallelism)
        .map(|index| {
            HashMapBackend::for_subtask(
                uid,
                max_parallelism,
                parallelism,
                index,
                key_codec.identity().clone(),
            )
        })
        .collect::<cairn_core::Result<Vec<_>>>()?;
    let states = backends
        .iter_mut()
        .map(|b| function.open(b))
        .collect::<cairn_core::Result<Vec<_>>>()?;
    let mut key_bytes = Vec::new();
    for record in records {
        let key = key_of(&record);
        key_bytes.clear();
        key_codec
            .encode(&key, &mut key_bytes)
            .map_err(|source| StateError::Codec {
                state: "(key)".to_string(),
                source,
            })?;
        let key_group = key_group_for_key(&key_bytes, max_parallelism);
        let subtask = subtask_for_key_group(key_group, parallelism, max_parallelism) as usize;
        let (Some(backend), Some(states)) = (backends.get_mut(subtask), states.get(subtask)) else {
            return Err(StateError::Restore {
                reason: format!("key group {key_group} maps to no subtask of {parallelism}"),
            });
        };
        backend.set_current_key(&key_bytes)?;
        function.process(states, &key, record, backend)?;
    }
    let operator_states: Vec<OperatorStateBackend> = (0..parallelism)
        .map(|_| OperatorStateBackend::new(uid))
        .collect();
    snapshot_operator(
        uid,
        max_parallelism,
        backends
            .iter_mut()
            .zip(&operator_states)
            .map(|(b, operator)| SubtaskRef {
                keyed: Some(b),
                operator,
            }),
        SnapshotOptions::savepoint(checkpoint_id),
    )
}
