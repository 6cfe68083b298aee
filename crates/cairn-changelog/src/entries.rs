//! A changelog handle as canonical entries, without the program: for tools (`state-dump`
//! summary, entries, diff, convert) and tests.

use std::collections::BTreeMap;

use cairn_core::{KeyGroupRange, KeyedData, KeyedStateHandle, Result, SnapshotSource, StateError};
use cairn_format::{decode_list, encode_list, ChangelogOp};

use crate::restore::{check_sequence, read_segment};

/// Canonical entries: (state name, key group, key, namespace, user key) → value (list
/// state: a canonical list value), as in a canonical state file.
pub type ChangelogEntries = BTreeMap<(String, u32, Vec<u8>, Vec<u8>, Option<Vec<u8>>), Vec<u8>>;

/// The entries of `handle` for the key groups in `range`: `scan_materialized` adds the
/// entries of one materialized (canonical or native) handle, restricted to `range`, to the
/// map it is given; then every segment's records are applied in order, byte for byte.
/// A non-changelog handle is passed to `scan_materialized` as it is.
pub fn changelog_entries(
    handle: &KeyedStateHandle,
    range: KeyGroupRange,
    source: &dyn SnapshotSource,
    mut scan_materialized: impl FnMut(&KeyedStateHandle, &mut ChangelogEntries) -> Result<()>,
) -> Result<ChangelogEntries> {
    let mut out = ChangelogEntries::new();
    let KeyedData::Changelog {
        materialized,
        segments,
    } = &handle.data
    else {
        scan_materialized(handle, &mut out)?;
        return Ok(out);
    };
    let range = range.intersect(&handle.key_group_range);
    check_sequence("reading changelog entries", segments)?;
    for m in materialized {
        scan_materialized(m, &mut out)?;
    }
    out.retain(|k, _| range.contains(k.1));
    for seg in segments {
        read_segment(seg, range, source, |state, _kind, r| {
            let base = (
                state.to_string(),
                r.key_group,
                r.key.to_vec(),
                r.namespace.to_vec(),
            );
            let key = |uk: Option<&[u8]>| {
                (
                    base.0.clone(),
                    base.1,
                    base.2.clone(),
                    base.3.clone(),
                    uk.map(<[u8]>::to_vec),
                )
            };
            match r.op {
                ChangelogOp::Set => {
                    out.insert(key(None), r.value.unwrap_or_default().to_vec());
                }
                ChangelogOp::Clear => {
                    let lo = key(None);
                    let doomed: Vec<_> = out
                        .range(lo..)
                        .take_while(|(k, _)| {
                            (&k.0, k.1, &k.2, &k.3) == (&base.0, base.1, &base.2, &base.3)
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        out.remove(&k);
                    }
                }
                ChangelogOp::ListAppend | ChangelogOp::ListSet => {
                    let mut elements: Vec<Vec<u8>> = Vec::new();
                    if r.op == ChangelogOp::ListAppend {
                        if let Some(old) = out.get(&key(None)) {
                            elements = decode_list(old)
                                .map_err(|e| StateError::layer("list value", e))?
                                .into_iter()
                                .map(<[u8]>::to_vec)
                                .collect();
                        }
                    }
                    let new = decode_list(r.value.unwrap_or_default())
                        .map_err(|e| StateError::layer("list value", e))?;
                    elements.extend(new.into_iter().map(<[u8]>::to_vec));
                    if elements.is_empty() {
                        out.remove(&key(None));
                    } else {
                        let mut v = Vec::new();
                        encode_list(elements.iter().map(Vec::as_slice), &mut v);
                        out.insert(key(None), v);
                    }
                }
                ChangelogOp::MapPut => {
                    out.insert(key(r.user_key), r.value.unwrap_or_default().to_vec());
                }
                ChangelogOp::MapRemove => {
                    out.remove(&key(r.user_key));
                }
            }
            Ok(())
        })?;
    }
    Ok(out)
}
