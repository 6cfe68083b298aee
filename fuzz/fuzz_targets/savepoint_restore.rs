//! A whole savepoint directory → `open_savepoint_in` → restore of every subtask of every
//! operator into heap backends, at the savepoint's parallelism and at parallelism 1. Must
//! never panic.
//!
//! Input: the directory's files, each as `name_len u8, name, len u32 LE, bytes` (what
//! `fuzz/ci.sh` packs from `format-spec/vectors/savepoint/`). Checksum comparisons in the
//! format are switched off, and the manifest's file references are rewritten to the sizes
//! and CRC32s of the files given, so that damaged state files get past the storage's
//! whole-file check and reach the state file reader and the heap backend's restore.
#![no_main]

use std::sync::Arc;

use cairn_core::{FileArea, KeyGroupRange, KeyedData, OperatorStateBackend};
use cairn_format::{decode_manifest, Manifest, MANIFEST_FILE_NAME};
use cairn_hashmap::{HashMapBackend, HashMapConfig};
use cairn_storage::{create_savepoint_in, open_savepoint_in, restore_subtask};
use libfuzzer_sys::fuzz_target;
use object_store::memory::InMemory;
use object_store::path::Path;

fn files(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some((&n, rest)) = data.split_first() {
        let Some((name, rest)) = rest.split_at_checked(usize::from(n)) else {
            break;
        };
        let Some((len, rest)) = rest.split_at_checked(4) else {
            break;
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let bytes = rest.get(..len.min(rest.len())).unwrap_or_default();
        out.push((String::from_utf8_lossy(name).into_owned(), bytes.to_vec()));
        data = rest.get(bytes.len()..).unwrap_or_default();
    }
    out
}

fn restore_all(m: &Manifest, source: &cairn_storage::SavepointSource) {
    for op in &m.operators {
        let key_codec = op
            .subtasks
            .iter()
            .find_map(|s| s.keyed.as_ref())
            .map(|h| h.key_codec.clone());
        for p in [op.parallelism, 1] {
            for i in 0..p {
                let Ok(range) = KeyGroupRange::for_subtask(op.max_parallelism, p, i) else {
                    continue;
                };
                let mut operator = OperatorStateBackend::new(op.uid.clone());
                let mut keyed = key_codec.clone().and_then(|key_codec| {
                    HashMapBackend::new(HashMapConfig {
                        uid: op.uid.clone(),
                        max_parallelism: op.max_parallelism,
                        key_group_range: range,
                        key_codec,
                    })
                    .ok()
                });
                let _ = restore_subtask(m, &op.uid, p, i, keyed.as_mut(), &mut operator, source);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    cairn_format::fuzzing::set_skip_checksums(true);
    let files = files(data);
    let Some((_, manifest)) = files.iter().find(|(n, _)| n == MANIFEST_FILE_NAME) else {
        return;
    };
    let Ok(mut m) = decode_manifest(manifest, "fuzz/_metadata") else {
        return;
    };
    let store = Arc::new(InMemory::new());
    let dir = Path::from("sp");
    let Ok(writer) = create_savepoint_in(store.clone(), dir.clone(), m.checkpoint_id) else {
        return;
    };
    let mut written = std::collections::HashMap::new();
    for (name, bytes) in &files {
        if name != MANIFEST_FILE_NAME {
            if let Ok(f) = writer.write(FileArea::Private, name, bytes.clone()) {
                written.insert(name.clone(), f);
            }
        }
    }
    for sub in m.operators.iter_mut().flat_map(|o| o.subtasks.iter_mut()) {
        if let Some(KeyedData::Canonical { files }) = sub.keyed.as_mut().map(|h| &mut h.data) {
            for f in files {
                if let Some(w) = written.get(&f.file.name) {
                    f.file = w.clone();
                }
            }
        }
    }
    if writer.publish(&m).is_err() {
        return;
    }
    let Ok((m, source)) = open_savepoint_in(store, dir) else {
        return;
    };
    restore_all(&m, &source);
});
