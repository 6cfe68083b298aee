//! Restore: checks the handles (key codec, ranges, agreeing state metas, every key group of
//! the backend's range supplied exactly once) and dispatches to the canonical restore
//! (SST ingestion, `ingest.rs`) and the native one (`native_restore.rs`): handles of both
//! kinds supply disjoint key groups, so the native instance is built first and the canonical
//! pieces are ingested into it.

use cairn_core::*;

use crate::backend::RocksDbBackend;
use crate::ingest::Piece;

fn restore_error(reason: String) -> StateError {
    StateError::Restore { reason }
}

pub(crate) fn restore(
    b: &mut RocksDbBackend,
    handles: &[KeyedStateHandle],
    source: &dyn SnapshotSource,
) -> Result<()> {
    if b.restored || !b.states.is_empty() {
        return Err(restore_error(format!(
            "restore must be called once, on a fresh backend, before any state is registered uid={}",
            b.uid
        )));
    }
    let metas = cairn_core::restore_metas(&b.uid, &b.key_codec, b.max_parallelism, handles)?;
    let mut claimed = vec![false; b.range.len() as usize];
    let mut claim = |r: KeyGroupRange, what: &dyn Fn() -> String| -> Result<()> {
        for kg in r.intersect(&b.range).iter() {
            let c = &mut claimed[(kg - b.range.start) as usize];
            if *c {
                return Err(restore_error(format!(
                    "key group {kg} is supplied twice ({}) uid={}",
                    what(),
                    b.uid
                )));
            }
            *c = true;
        }
        Ok(())
    };
    let mut pieces = Vec::new();
    let mut native: Vec<&KeyedStateHandle> = Vec::new();
    for h in handles {
        match &h.data {
            KeyedData::Canonical { files } => {
                for cf in files {
                    for r in &cf.key_groups {
                        if !h.key_group_range.contains_range(r) {
                            return Err(restore_error(format!(
                                "file {} supplies key groups {r} outside its handle's range {} uid={}",
                                cf.file, h.key_group_range, b.uid
                            )));
                        }
                        let mine = r.intersect(&b.range);
                        if mine.is_empty() {
                            continue;
                        }
                        claim(mine, &|| format!("file {}", cf.file))?;
                        pieces.push(Piece {
                            range: mine,
                            file: cf.file.clone(),
                        });
                    }
                }
            }
            KeyedData::RocksNative { .. } => {
                if h.key_group_range.intersect(&b.range).is_empty() {
                    continue;
                }
                claim(h.key_group_range, &|| {
                    format!("native handle of key groups {}", h.key_group_range)
                })?;
                native.push(h);
            }
            KeyedData::Changelog { .. } => {
                return Err(restore_error(format!(
                    "a changelog checkpoint restores only under a changelog backend (snapshot mode changelog); to switch take a savepoint (canonical), or turn this checkpoint into one with `state-dump convert CHECKPOINT --out DIR` key_groups={} uid={}",
                    h.key_group_range, b.uid
                )))
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(restore_error(format!(
                    "unsupported keyed data in handle for key groups {} uid={}",
                    h.key_group_range, b.uid
                )))
            }
        }
    }
    if let Some(i) = claimed.iter().position(|c| !c) {
        return Err(restore_error(format!(
            "key group {} of this backend's range {} is supplied by no handle (handles missing, or the snapshot was taken with another max parallelism) uid={}",
            b.range.start + i as u32,
            b.range,
            b.uid
        )));
    }
    b.restored = true;
    let uid = b.uid.clone();
    // Both kinds at once: a changelog checkpoint rescaled before every old subtask had
    // materialized.
    if !native.is_empty() {
        crate::native_restore::restore(b, &native, &metas, source).map_err(|e| naming(e, &uid))?;
    }
    if native.is_empty() || !pieces.is_empty() {
        crate::ingest::ingest(b, pieces, &metas, source).map_err(|e| naming(e, &uid))?;
    }
    b.metas = metas;
    Ok(())
}

/// Adds the operator uid to an error of the restore's reading and building phases (which
/// name the file, the offset and the state where they know them): a caller of the backend
/// alone, not through the runtime, learns which operator's snapshot failed. Variants with
/// a uid of their own are left alone.
fn naming(e: StateError, uid: &str) -> StateError {
    let tag = format!("uid={uid}");
    let has = |s: &str| s.split_whitespace().any(|w| w == tag);
    match e {
        StateError::Restore { reason } if !has(&reason) => StateError::Restore {
            reason: format!("{reason} {tag}"),
        },
        StateError::Layer { context, source } if !has(&context) => StateError::Layer {
            context: format!("{context} {tag}"),
            source,
        },
        e => e,
    }
}
