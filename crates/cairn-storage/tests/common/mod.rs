//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use cairn_core::{
    CanonicalFile, CodecIdentity, FileRef, KeyGroupRange, KeyedData, KeyedStateHandle,
    SnapshotType, BINCODE_V1,
};
use cairn_format::{Manifest, OperatorManifest, SubtaskManifest};
use cairn_storage::{CheckpointStorage, StorageError};

/// A valid manifest with one operator whose subtask `i` has one canonical file, `files[i]`.
pub fn manifest(id: u64, snapshot_type: SnapshotType, files: &[FileRef]) -> Manifest {
    let max_parallelism = 128;
    let parallelism = files.len() as u32;
    let subtasks = files
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let range = KeyGroupRange::for_subtask(max_parallelism, parallelism, i as u32).unwrap();
            SubtaskManifest {
                key_group_range: range,
                keyed: Some(KeyedStateHandle {
                    key_group_range: range,
                    key_codec: CodecIdentity {
                        encoding: BINCODE_V1.to_string(),
                        type_name: "u64".to_string(),
                        version: 1,
                        schema: None,
                    },
                    states: vec![],
                    data: KeyedData::Canonical {
                        files: vec![CanonicalFile {
                            file: f.clone(),
                            key_groups: vec![range],
                        }],
                    },
                }),
                operator_state: vec![],
            }
        })
        .collect::<Vec<_>>();
    let operators = if files.is_empty() {
        vec![]
    } else {
        vec![OperatorManifest {
            uid: "op".to_string(),
            parallelism,
            max_parallelism,
            subtasks,
        }]
    };
    Manifest {
        checkpoint_id: id,
        snapshot_type,
        timestamp_ms: 1_700_000_000_000 + id,
        operators,
    }
}

/// The bytes of a test file: deterministic, distinct per name.
pub fn content(name: &str, len: usize) -> Vec<u8> {
    name.bytes().cycle().take(len.max(1)).collect()
}

/// Checks that every file of checkpoint `id` exists with its size and CRC.
pub fn assert_restorable(storage: &CheckpointStorage, id: u64) {
    let m = storage
        .verify(id)
        .unwrap_or_else(|e| panic!("checkpoint {id} does not verify: {e}"));
    assert_eq!(m.checkpoint_id, id);
}

/// Unwraps an error, panicking on Ok.
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, StorageError>) -> StorageError {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// The names of the files under `<job>/shared/` in `store`.
pub fn shared_on_store(
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    job: &str,
) -> std::collections::BTreeSet<String> {
    use futures::TryStreamExt;
    let prefix = object_store::path::Path::from(format!("{job}/shared"));
    futures::executor::block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
        .expect("list shared files")
        .into_iter()
        .map(|m| {
            m.location
                .prefix_match(&prefix)
                .expect("listed under the prefix")
                .map(|p| p.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect()
}
