//! Canonical state files: written by scanning a RocksDB checkpoint in key order (restored
//! by building SST files and ingesting them, `ingest.rs`).
//!
//! The layout (`layout.rs`) makes each key group of each state one contiguous key range in
//! the state's column family, ordered as the state file orders entries, so no sort is
//! needed either way.

use cairn_core::*;
use cairn_format::{EntryRef, FileState, StateFileWriter};

use crate::db::{scan_db, Instance};
use crate::layout::{decode_key, kg_bound, list_to_canonical};
use crate::snapshot::{private_prefix, SyncView};
use crate::ttl::{SnapshotExpiry, Verdict};

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
        &view.expiry,
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
/// order, with list values converted to their canonical form, leaving out what `expiry`
/// (by state, as `states`; missing: nothing) says has expired. `each_kg` runs before each
/// key group (cancellation checks).
pub(crate) fn scan_checkpoint(
    path: &std::path::Path,
    rocks: &crate::RocksDbOptions,
    range: KeyGroupRange,
    states: &[StateMeta],
    expiry: &[Option<SnapshotExpiry>],
    each_kg: &mut dyn FnMut(KeyGroup) -> Result<()>,
    entry: &mut dyn FnMut(EntryRef<'_>) -> Result<()>,
) -> Result<()> {
    let (db, names) = Instance::open_read_only(path, rocks)?;
    let mut list_buf = Vec::new();
    let mut live_buf = Vec::new();
    for kg in range.iter() {
        each_kg(kg)?;
        for (i, meta) in states.iter().enumerate() {
            if !names.contains(&meta.name) {
                continue;
            }
            let is_map = meta.kind == StateKind::Map;
            let is_list = meta.kind == StateKind::List;
            let expiry = expiry.get(i).and_then(Option::as_ref);
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
                    let v = match expiry.map(|e| e.judge(v, &mut live_buf)) {
                        Some(Verdict::Remove) => return Ok(()),
                        Some(Verdict::Rewrite) => &live_buf[..],
                        Some(Verdict::Keep) | None => v,
                    };
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
