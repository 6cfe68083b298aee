//! Restore from native checkpoints: download every file of a handle into a fresh
//! directory and open it.
//!
//! When one handle covers exactly the backend's range, its instance is used as is.
//! Otherwise (rescaling) the handle that overlaps the range most becomes the instance: every
//! key outside the range is deleted with range deletions (then compacted away), and the
//! overlapping key groups of the other handles are copied in by scanning each read-only
//! and ingesting SST files, checking every copied key's group.

use std::collections::BTreeMap;
use std::path::Path;

use cairn_core::*;

use crate::backend::RocksDbBackend;
use crate::db::{io_err, scan_db, Instance, DEFAULT_CF};
use crate::layout::{decode_key, kg_bound};
use crate::sst::SstBuilder;

pub(crate) fn restore(
    b: &mut RocksDbBackend,
    handles: &[&KeyedStateHandle],
    metas: &BTreeMap<String, StateMeta>,
    source: &dyn SnapshotSource,
) -> Result<()> {
    let range = b.range;
    let overlap = |h: &&KeyedStateHandle| h.key_group_range.intersect(&range).len();
    let Some(base_i) = (0..handles.len()).max_by_key(|&i| handles.get(i).map_or(0, overlap)) else {
        return Err(StateError::Restore {
            reason: format!("no native handle to restore uid={}", b.uid),
        });
    };
    let seq = b.seq;
    b.seq += 3;
    let dir = b.root.join(format!("db-{seq}"));
    let base = handles
        .get(base_i)
        .copied()
        .ok_or_else(|| StateError::Restore {
            reason: "native handle vanished".into(),
        })?;
    download(base, &dir, source)?;
    // Replace the empty instance made by `new`.
    if let Some(old) = b.inst.take() {
        let path = old.path.clone();
        drop(old);
        let _ = std::fs::remove_dir_all(&path);
    }
    let mut inst = Instance::open(&dir, &b.options, &b.ttl, metas)
        .map_err(|e| StateError::layer(format!("opening {}", describe(base)), e))?;
    if handles.len() == 1 && base.key_group_range == range {
        if let KeyedData::RocksNative { files } = &base.data {
            b.inc.seed(
                files
                    .iter()
                    // A native savepoint's files are private to it: the next checkpoint
                    // uploads them again rather than reference another directory's files.
                    .filter(|f| {
                        f.file.area == FileArea::Shared
                            && crate::native::shared_kind(&f.local_name).is_some()
                    })
                    .map(|f| (f.local_name.clone(), f.clone()))
                    .collect(),
            );
        }
    } else {
        inst.keep_only(&kg_bound(range.start), &kg_bound(range.end))?;
    }
    for meta in metas.values() {
        inst.ensure_cf(meta)?;
    }
    for (i, h) in handles.iter().enumerate() {
        if i == base_i {
            continue;
        }
        let tmp = b.root.join(format!("rescale-{seq}-{i}"));
        let ingest = b.root.join(format!("ingest-{seq}-{i}"));
        let result = download(h, &tmp, source).and_then(|()| {
            copy_range(
                &inst,
                &tmp,
                h,
                range,
                b.max_parallelism,
                &b.options,
                &ingest,
            )
            .map_err(|e| StateError::layer(format!("copying from {}", describe(h)), e))
        });
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&ingest);
        result?;
    }
    b.inst = Some(inst);
    Ok(())
}

/// The native checkpoint of `h`, for errors: its key groups and where its files are (the
/// directory of its `CURRENT` file in the snapshot).
fn describe(h: &KeyedStateHandle) -> String {
    let current = match &h.data {
        KeyedData::RocksNative { files } => files.iter().find(|f| f.local_name == "CURRENT"),
        _ => None,
    };
    let dir = current.map_or_else(String::new, |f| {
        let name = f.file.to_string();
        name.rsplit_once('/')
            .map_or(name.clone(), |(dir, _)| dir.to_string())
    });
    format!("native snapshot dir={dir} key_groups={}", h.key_group_range)
}

/// Writes every file of `h` into `dir` under its local name, checking size and CRC32.
pub(crate) fn download(
    h: &KeyedStateHandle,
    dir: &Path,
    source: &dyn SnapshotSource,
) -> Result<()> {
    let KeyedData::RocksNative { files } = &h.data else {
        return Err(StateError::Restore {
            reason: "not a native handle".into(),
        });
    };
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io_err("removing stale dir", dir, e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating restore dir", dir, e))?;
    if !files.iter().any(|f| f.local_name == "CURRENT") {
        return Err(StateError::Restore {
            reason: format!(
                "native handle has no CURRENT file key_groups={}",
                h.key_group_range
            ),
        });
    }
    for f in files {
        if !is_valid_file_name(&f.local_name) || f.local_name.contains('/') {
            return Err(StateError::Restore {
                reason: format!(
                    "invalid local file name in native handle name={}",
                    f.local_name
                ),
            });
        }
        let bytes = source.read_file(&f.file).map_err(|e| {
            StateError::layer(format!("reading native checkpoint file file={}", f.file), e)
        })?;
        let crc = crc32fast::hash(&bytes);
        if bytes.len() as u64 != f.file.size || crc != f.file.crc32 {
            return Err(StateError::Restore {
                reason: format!(
                    "native checkpoint file does not match its reference (size or crc32) file={} size={} expected_size={} crc32={crc:#010x} expected_crc32={:#010x}",
                    f.file,
                    bytes.len(),
                    f.file.size,
                    f.file.crc32
                ),
            });
        }
        let path = dir.join(&f.local_name);
        std::fs::write(&path, &bytes).map_err(|e| io_err("writing restored file", &path, e))?;
    }
    Ok(())
}

/// Copies the key groups of `range` that the instance in `dir` (handle `h`) holds into
/// `inst`.
fn copy_range(
    inst: &Instance,
    dir: &Path,
    h: &KeyedStateHandle,
    range: KeyGroupRange,
    max_p: u32,
    options: &crate::RocksDbOptions,
    ingest_dir: &Path,
) -> Result<()> {
    let mine = h.key_group_range.intersect(&range);
    let (db, names) = Instance::open_read_only(dir, options)?;
    let opts = inst.sst_options();
    let mut ssts = SstBuilder::new(&opts, ingest_dir.to_path_buf())?;
    for name in names.iter().filter(|n| n.as_str() != DEFAULT_CF) {
        if inst.db.cf_handle(name).is_none() {
            return Err(StateError::Restore {
                reason: format!("native handle holds a state not in the handles' states cf={name}"),
            });
        }
        scan_db(
            &db,
            dir,
            name,
            &kg_bound(mine.start),
            &kg_bound(mine.end),
            |k, v| {
                let ok = decode_key(k).is_some_and(|d| {
                    mine.contains(d.key_group) && key_group_for_key(&d.key, max_p) == d.key_group
                });
                if !ok {
                    return Err(StateError::Restore {
                    reason: format!(
                        "native checkpoint entry in the wrong key group (another max parallelism?) cf={name} dir={}",
                        dir.display()
                    ),
                });
                }
                ssts.put(name, k, v)
            },
        )?;
    }
    drop(db);
    ssts.ingest_into(inst)
}
