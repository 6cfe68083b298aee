//! Canonical state files: written by scanning a RocksDB checkpoint in key order, and
//! restored by building SST files and ingesting them.
//!
//! Both directions are sequential: the layout (`layout.rs`) makes each key group of each
//! state one contiguous key range in the state's column family, ordered as the state file
//! orders entries, so no sort is needed either way.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use cairn_core::*;
use cairn_format::{EntryRef, FileState, FormatError, StateFileReader, StateFileWriter};

use crate::backend::RocksDbBackend;
use crate::db::{scan_db, Instance};
use crate::layout::{
    decode_key, kg_bound, list_from_canonical, list_to_canonical, push_escaped, push_kg,
};
use crate::snapshot::{private_prefix, SyncView};
use crate::sst::SstBuilder;

/// Writes the checkpoint directory of `view` as one canonical state file in the private
/// area and returns the handle.
pub(crate) fn write(
    view: &SyncView,
    target: &dyn SnapshotTarget,
    cancel: &CancelToken,
) -> Result<KeyedStateHandle> {
    let id = view.options.checkpoint_id;
    let ctx = || format!("writing state file uid={} checkpoint_id={id}", view.uid);
    let table = view
        .states
        .iter()
        .map(|s| FileState {
            name: s.name.clone(),
            kind: s.kind,
        })
        .collect();
    let mut writer = StateFileWriter::new(table).map_err(|e| StateError::layer(ctx(), e))?;
    scan_checkpoint(
        &view.dir.0,
        &view.rocks,
        view.range,
        &view.states,
        &mut |_| {
            if cancel.is_cancelled() {
                return Err(StateError::Cancelled { checkpoint_id: id });
            }
            Ok(())
        },
        &mut |e| {
            writer.add(&e).map_err(|err| {
                StateError::layer(format!("{} key_group={}", ctx(), e.key_group), err)
            })
        },
    )?;
    let bytes = writer.finish().map_err(|e| StateError::layer(ctx(), e))?;
    let name = format!("{}.cst", private_prefix(&view.uid, id, view.range));
    let file = target.write_file(FileArea::Private, &name, bytes)?;
    Ok(KeyedStateHandle {
        key_group_range: view.range,
        key_codec: view.key_codec.clone(),
        states: view.states.clone(),
        data: KeyedData::Canonical {
            files: vec![CanonicalFile {
                file,
                key_groups: vec![view.range],
            }],
        },
    })
}

/// Opens the RocksDB checkpoint at `path` read-only and calls `entry` for every entry of
/// `states` (the file-table order: `EntryRef::state` indexes it) in `range`, in canonical
/// order, with list values converted to their canonical form. `each_kg` runs before each
/// key group (cancellation checks).
pub(crate) fn scan_checkpoint(
    path: &std::path::Path,
    rocks: &crate::RocksDbOptions,
    range: KeyGroupRange,
    states: &[StateMeta],
    each_kg: &mut dyn FnMut(KeyGroup) -> Result<()>,
    entry: &mut dyn FnMut(EntryRef<'_>) -> Result<()>,
) -> Result<()> {
    let (db, names) = Instance::open_read_only(path, rocks)?;
    let mut list_buf = Vec::new();
    for kg in range.iter() {
        each_kg(kg)?;
        for (i, meta) in states.iter().enumerate() {
            if !names.contains(&meta.name) {
                continue;
            }
            let is_map = meta.kind == StateKind::Map;
            let is_list = meta.kind == StateKind::List;
            scan_db(
                &db,
                path,
                &meta.name,
                &kg_bound(kg),
                &kg_bound(kg + 1),
                |k, v| {
                    let d = decode_key(k).ok_or_else(|| corrupt_key(&meta.name, kg))?;
                    if d.key_group != kg || (!is_map && !d.rest.is_empty()) {
                        return Err(corrupt_key(&meta.name, kg));
                    }
                    let value = if is_list {
                        list_buf.clear();
                        list_to_canonical(v, &mut list_buf)
                            .ok_or_else(|| corrupt_key(&meta.name, kg))?;
                        &list_buf[..]
                    } else {
                        v
                    };
                    entry(EntryRef {
                        key_group: kg,
                        state: i as u32,
                        key: &d.key,
                        namespace: &d.namespace,
                        user_key: is_map.then_some(d.rest),
                        value,
                    })
                },
            )?;
        }
    }
    Ok(())
}

fn corrupt_key(state: &str, kg: KeyGroup) -> StateError {
    StateError::layer(
        format!("scanning rocksdb checkpoint state={state} key_group={kg}"),
        "malformed key or stored value",
    )
}

/// One piece of a canonical restore: key groups read from one file.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub(crate) range: KeyGroupRange,
    pub(crate) file: FileRef,
}

enum ScanError {
    Format(FormatError),
    State(StateError),
}

impl From<FormatError> for ScanError {
    fn from(e: FormatError) -> Self {
        ScanError::Format(e)
    }
}

/// Restores canonical `pieces` (disjoint, any order) into the backend's instance by
/// building one SST file per state and ingesting it. `metas` are the handles' states.
pub(crate) fn ingest(
    b: &mut RocksDbBackend,
    mut pieces: Vec<Piece>,
    metas: &BTreeMap<String, StateMeta>,
    source: &dyn SnapshotSource,
) -> Result<()> {
    pieces.sort_by_key(|p| p.range.start);
    let dir = b.root.join(format!("ingest-{}", b.seq));
    b.seq += 1;
    let max_p = b.max_parallelism;
    let inst = b.inst.as_mut().ok_or_else(|| StateError::Restore {
        reason: "the rocksdb instance is closed".into(),
    })?;
    for name in metas.keys() {
        inst.ensure_cf(name)?;
    }
    let inst = &*inst;
    let opts = inst.sst_options();
    let mut ssts = SstBuilder::new(&opts, dir.clone())?;
    let mut readers: HashMap<(FileArea, String), (StateFileReader, Vec<&StateMeta>)> =
        HashMap::new();
    let result = (|| {
        for piece in &pieces {
            let file_key = (piece.file.area, piece.file.name.clone());
            if !readers.contains_key(&file_key) {
                let bytes: Bytes = source.read_file(&piece.file)?;
                let path = piece.file.to_string();
                let reader = StateFileReader::open(bytes, &path)
                    .map_err(|e| StateError::layer(format!("reading state file path={path}"), e))?;
                let states = file_states(&reader, metas, &path)?;
                readers.insert(file_key.clone(), (reader, states));
            }
            let Some((reader, states)) = readers.get(&file_key) else {
                continue;
            };
            scan_piece(reader, states, piece, max_p, &mut ssts)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ssts.ingest_into(inst),
        Err(e) => {
            drop(ssts);
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// The file's state table resolved to the handles' states.
fn file_states<'m>(
    reader: &StateFileReader,
    metas: &'m BTreeMap<String, StateMeta>,
    path: &str,
) -> Result<Vec<&'m StateMeta>> {
    reader
        .states()
        .iter()
        .map(|fs| match metas.get(&fs.name) {
            Some(m) if m.kind == fs.kind => Ok(m),
            Some(m) => Err(corrupt(
                path,
                format!(
                    "state {} is {:?} in the file but {:?} in its handle",
                    fs.name, fs.kind, m.kind
                ),
            )),
            None => Err(corrupt(
                path,
                format!("state {} is not in its handle", fs.name),
            )),
        })
        .collect()
}

fn corrupt(path: &str, detail: String) -> StateError {
    StateError::layer(
        format!("restoring keyed state path={path}"),
        format!("corrupt snapshot: {detail}"),
    )
}

fn scan_piece(
    reader: &StateFileReader,
    states: &[&StateMeta],
    piece: &Piece,
    max_p: u32,
    ssts: &mut SstBuilder<'_>,
) -> Result<()> {
    let path = piece.file.to_string();
    let range = piece.range;
    let mut key = Vec::new();
    let result = reader.scan(range, |e: EntryRef<'_>| -> Result<(), ScanError> {
        let fail = |d: String| ScanError::State(corrupt(&path, d));
        if !range.contains(e.key_group) {
            return Err(fail(format!("entry of key group {} outside {range}", e.key_group)));
        }
        let meta = states
            .get(e.state as usize)
            .ok_or_else(|| fail(format!("entry of unknown state {}", e.state)))?;
        let computed = key_group_for_key(e.key, max_p);
        if computed != e.key_group {
            return Err(fail(format!(
                "entry of state {} stored in key group {} but its key hashes to {computed} (another max parallelism?)",
                meta.name, e.key_group
            )));
        }
        if e.user_key.is_some() != (meta.kind == StateKind::Map) {
            return Err(fail(format!("user key mismatch for {:?} state {}", meta.kind, meta.name)));
        }
        key.clear();
        push_kg(&mut key, e.key_group);
        push_escaped(&mut key, e.key);
        push_escaped(&mut key, e.namespace);
        if let Some(uk) = e.user_key {
            key.extend_from_slice(uk);
        }
        let value = if meta.kind == StateKind::List {
            list_from_canonical(e.value).map_err(ScanError::Format)?
        } else {
            e.value
        };
        ssts.put(&meta.name, &key, value).map_err(ScanError::State)
    });
    match result {
        Ok(()) => Ok(()),
        Err(ScanError::Format(e)) => Err(StateError::layer(
            format!("reading state file path={path}"),
            e,
        )),
        Err(ScanError::State(e)) => Err(e),
    }
}
