//! Restore: checks the handles (key codec, ranges, agreeing state metas, every key group of
//! the backend's range supplied exactly once) and dispatches to the canonical restore
//! (SST ingestion, `canonical.rs`) or the native one (`native_restore.rs`). Mixing both
//! kinds of handle in one restore is refused.

use std::collections::BTreeMap;

use cairn_core::*;

use crate::backend::RocksDbBackend;
use crate::canonical::Piece;

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
    let mut metas: BTreeMap<String, StateMeta> = BTreeMap::new();
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
        check_handle(b, h)?;
        for m in &h.states {
            match metas.get(&m.name) {
                Some(seen) if !same_meta(seen, m) => {
                    return Err(restore_error(format!(
                        "handles disagree on state {}: {:?} vs {:?} uid={}",
                        m.name, seen, m, b.uid
                    )))
                }
                Some(_) => {}
                None => {
                    metas.insert(m.name.clone(), m.clone());
                }
            }
        }
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
    if !native.is_empty() && !pieces.is_empty() {
        return Err(restore_error(format!(
            "cannot restore from canonical and native handles at once; restore from one snapshot uid={}",
            b.uid
        )));
    }
    b.restored = true;
    if native.is_empty() {
        crate::canonical::ingest(b, pieces, &metas, source)?;
    } else {
        crate::native_restore::restore(b, &native, &metas, source)?;
    }
    b.metas = metas;
    Ok(())
}

fn same_meta(a: &StateMeta, b: &StateMeta) -> bool {
    a.kind == b.kind
        && a.namespace.is_compatible_with(&b.namespace)
        && a.value.is_compatible_with(&b.value)
        && match (&a.user_key, &b.user_key) {
            (Some(x), Some(y)) => x.is_compatible_with(y),
            (None, None) => true,
            _ => false,
        }
}

fn check_handle(b: &RocksDbBackend, h: &KeyedStateHandle) -> Result<()> {
    if !h.key_codec.is_compatible_with(&b.key_codec) {
        return Err(StateError::IncompatibleCodec {
            uid: b.uid.clone(),
            state: "(key)".to_string(),
            part: "key",
            stored: Box::new(h.key_codec.clone()),
            expected: Box::new(b.key_codec.clone()),
        });
    }
    if h.key_group_range.is_empty() || h.key_group_range.end > b.max_parallelism {
        return Err(restore_error(format!(
            "handle key-group range {} does not fit max parallelism {} uid={}",
            h.key_group_range, b.max_parallelism, b.uid
        )));
    }
    Ok(())
}
