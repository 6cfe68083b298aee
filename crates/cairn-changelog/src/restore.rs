//! Restore: the materialized snapshots go to the wrapped backend as they are (natively for
//! RocksDB); the segments are read for this backend's key groups and kept as records per
//! state until the program registers the state, which replays them through the typed API
//! (the wrapped backend then holds exactly the checkpoint's state). A restored state with
//! records that is never registered is carried: the first materialization after the
//! restore writes its records as a carry segment. Records are decoded under the identities
//! the restored handles name, converted when the program's codec migrates the state's
//! values (see "Schema evolution" in the crate docs).
//!
//! A segment is read only whole, checked against the size and CRC32 the manifest records,
//! and its footer must agree with the manifest's sequence numbers and record count: a torn
//! or damaged segment fails the restore, naming the file; it is never replayed in part.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_core::*;
use cairn_format::{
    decode_list, ChangelogOp, ChangelogRecord, ChangelogSegmentReader, FormatError, StateFileWriter,
};

use crate::backend::ChangelogBackend;
use crate::error::ChangelogError;
use crate::ops::AggInput;

/// A restored record, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OwnedRecord {
    pub(crate) key_group: u32,
    pub(crate) op: ChangelogOp,
    pub(crate) key: Vec<u8>,
    pub(crate) namespace: Vec<u8>,
    pub(crate) user_key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
}

impl OwnedRecord {
    pub(crate) fn as_record(&self, state: u32) -> ChangelogRecord<'_> {
        ChangelogRecord {
            key_group: self.key_group,
            state,
            op: self.op,
            key: &self.key,
            namespace: &self.namespace,
            user_key: self.user_key.as_deref(),
            value: self.value.as_deref(),
        }
    }
}

/// Serves the source's files plus synthesized empty state files.
struct OverlaySource<'a> {
    source: &'a dyn SnapshotSource,
    extra: BTreeMap<String, Bytes>,
}

impl SnapshotSource for OverlaySource<'_> {
    fn read_file(&self, file: &FileRef) -> Result<Bytes> {
        match (file.area, self.extra.get(&file.name)) {
            (FileArea::Private, Some(b)) => Ok(b.clone()),
            _ => self.source.read_file(file),
        }
    }
}

/// Reads segment `seg` and calls `f` for each record of `range`.
pub fn read_segment(
    seg: &ChangelogSegment,
    range: KeyGroupRange,
    source: &dyn SnapshotSource,
    mut f: impl FnMut(&str, StateKind, &ChangelogRecord<'_>) -> Result<()>,
) -> Result<()> {
    let path = seg.file.to_string();
    let bytes = source.read_file(&seg.file)?;
    let crc = crc32fast::hash(&bytes);
    if bytes.len() as u64 != seg.file.size || crc != seg.file.crc32 {
        let mismatch = format!(
            "size or checksum differs size={} expected_size={} crc32={crc:#010x} expected_crc32={:#010x}",
            bytes.len(),
            seg.file.size,
            seg.file.crc32
        );
        // Damage the segment's own checks find is located (file and offset); a segment
        // that reads but is not the one the handle names is the mismatch alone.
        if let Err(e) = ChangelogSegmentReader::open(bytes, &path).and_then(|r| r.verify_all()) {
            return Err(StateError::layer(
                format!("reading changelog segment path={path}: {mismatch}"),
                e,
            ));
        }
        return Err(StateError::layer(
            format!("reading changelog segment path={path}"),
            ChangelogError::SegmentMismatch {
                path: path.clone(),
                detail: mismatch,
            },
        ));
    }
    let layer =
        |e: FormatError| StateError::layer(format!("reading changelog segment path={path}"), e);
    let reader = ChangelogSegmentReader::open(bytes, &path).map_err(layer)?;
    if reader.first_sqn() != seg.first_sqn || reader.record_count() != seg.records {
        return Err(StateError::layer(
            format!("reading changelog segment path={path}"),
            ChangelogError::SegmentMismatch {
                path: path.clone(),
                detail: format!(
                    "sequence numbers differ first_sqn={} expected_first_sqn={} records={} expected_records={}",
                    reader.first_sqn(),
                    seg.first_sqn,
                    reader.record_count(),
                    seg.records
                ),
            },
        ));
    }
    let states = reader.states().to_vec();
    reader
        .scan::<ScanError, _>(range, |r| {
            let s = states.get(r.state as usize).ok_or_else(|| {
                ScanError::Format(FormatError::Invalid {
                    kind: "changelog segment",
                    detail: format!("unknown state index={}", r.state),
                })
            })?;
            f(&s.name, s.kind, r).map_err(ScanError::State)
        })
        .map_err(|e| match e {
            ScanError::Format(e) => layer(e),
            ScanError::State(e) => e,
        })
}

/// Checks that `segments` (one handle's, in replay order) number their records without a
/// gap or an overlap: each segment starts where the previous one ends. The only exception
/// is a carry segment (`carry-<id>.cls`, the records of restored states that were not
/// registered when a materialization started), which numbers its records on its own and
/// is replayed before the segments after the materialization.
/// `context` says what was being done (errors).
pub(crate) fn check_sequence(context: &str, segments: &[ChangelogSegment]) -> Result<()> {
    for pair in segments.windows(2) {
        let [prev, next] = pair else { continue };
        if is_carry(prev) {
            continue;
        }
        let expected = prev.first_sqn.checked_add(prev.records);
        if expected != Some(next.first_sqn) {
            return Err(StateError::layer(
                context.to_string(),
                ChangelogError::SequenceGap {
                    path: next.file.to_string(),
                    previous: prev.file.to_string(),
                    expected_first_sqn: expected.unwrap_or(u64::MAX),
                    first_sqn: next.first_sqn,
                },
            ));
        }
    }
    Ok(())
}

/// Whether `seg` is a carry segment (see [`check_sequence`]).
fn is_carry(seg: &ChangelogSegment) -> bool {
    let file = seg.file.name.rsplit('/').next().unwrap_or_default();
    file.starts_with(CARRY_PREFIX)
}

/// How the file name of a carry segment starts.
pub(crate) const CARRY_PREFIX: &str = "carry-";

/// A scan's error: the segment's or the callback's.
enum ScanError {
    Format(FormatError),
    State(StateError),
}

impl From<FormatError> for ScanError {
    fn from(e: FormatError) -> Self {
        ScanError::Format(e)
    }
}

/// An empty canonical handle for `range` (a changelog handle without materialization: its
/// key groups start empty).
fn empty_handle(
    h: &KeyedStateHandle,
    extra: &mut BTreeMap<String, Bytes>,
) -> Result<KeyedStateHandle> {
    let bytes = StateFileWriter::new(Vec::new())
        .and_then(|w| w.finish())
        .map_err(|e| StateError::layer("writing an empty state file", e))?;
    let r = h.key_group_range;
    let name = format!("changelog-empty-{}_{}.cst", r.start, r.end);
    let file = FileRef {
        area: FileArea::Private,
        name: name.clone(),
        size: bytes.len() as u64,
        crc32: crc32fast::hash(&bytes),
    };
    extra.insert(name, Bytes::from(bytes));
    Ok(KeyedStateHandle {
        key_group_range: r,
        key_codec: h.key_codec.clone(),
        states: Vec::new(),
        data: KeyedData::Canonical {
            files: vec![CanonicalFile {
                file,
                key_groups: vec![r],
            }],
        },
    })
}

impl<B: KeyedStateBackend> ChangelogBackend<B> {
    pub(crate) fn restore_handles(
        &mut self,
        handles: &[KeyedStateHandle],
        source: &dyn SnapshotSource,
    ) -> Result<()> {
        let uid = self.config.uid.clone();
        if self.restored || !self.states.is_empty() || self.buffered_records() > 0 {
            return Err(StateError::Restore {
                reason: format!(
                    "restore must be called once, on a fresh backend, before any state is registered uid={uid}"
                ),
            });
        }
        self.restored = true;
        let range = self.inner.key_group_range();
        let metas = restore_metas(
            &uid,
            &self.config.key_codec,
            self.max_parallelism(),
            handles,
        )?;
        let mut mats: Vec<KeyedStateHandle> = Vec::new();
        let mut extra = BTreeMap::new();
        let mut logs = Vec::new();
        let mut any_changelog = false;
        for h in handles {
            match &h.data {
                KeyedData::Changelog {
                    materialized,
                    segments,
                } => {
                    any_changelog = true;
                    if materialized.is_empty() {
                        mats.push(empty_handle(h, &mut extra)?);
                    }
                    for m in materialized {
                        if !m.key_group_range.intersect(&range).is_empty() && !mats.contains(m) {
                            mats.push(m.clone());
                        }
                    }
                    logs.push((h.key_group_range.intersect(&range), segments));
                }
                _ => mats.push(h.clone()),
            }
        }
        if any_changelog {
            check_cover(&uid, range, handles)?;
        }
        for (_, segments) in &logs {
            check_sequence(&format!("restoring uid={uid}"), segments)?;
        }
        let overlay = OverlaySource { source, extra };
        self.inner.restore(&mats, &overlay)?;
        // Read every record of this range now: a damaged segment fails the restore.
        for (r, segments) in logs {
            if r.is_empty() {
                continue;
            }
            for seg in segments.iter() {
                read_segment(seg, r, source, |name, kind, rec| {
                    let meta = metas.get(name).filter(|m| m.kind == kind).ok_or_else(|| {
                        StateError::layer(
                            format!("restoring uid={uid}"),
                            ChangelogError::UnknownState {
                                path: seg.file.to_string(),
                                state: name.to_string(),
                                detail: format!(
                                    "the handle does not describe it as {kind:?} state"
                                ),
                            },
                        )
                    })?;
                    self.replay
                        .entry(meta.name.clone())
                        .or_default()
                        .push(OwnedRecord {
                            key_group: rec.key_group,
                            op: rec.op,
                            key: rec.key.to_vec(),
                            namespace: rec.namespace.to_vec(),
                            user_key: rec.user_key.map(<[u8]>::to_vec),
                            value: rec.value.map(<[u8]>::to_vec),
                        });
                    Ok(())
                })?;
            }
        }
        self.restored_metas = metas;
        // The restored files may be a savepoint's or another checkpoint's: materialize
        // into this job's shared area before the first checkpoint can complete.
        self.needs_mat = true;
        self.start_mat()
    }

    /// Replays the restored records of `name` (if any) through `apply`, with each record's
    /// namespace decoded by `namespace`, then restores the current key. The records were
    /// written under the identities the restored handles describe (`stored`, given to
    /// `apply`): their values are decoded with [`Codec::decode_from`], which converts them
    /// when the state's value schema evolved. A failure names the operator, the state and
    /// the record's key group; it leaves the state part-replayed, so the backend refuses
    /// every snapshot from then on (`ChangelogError::ReplayFailed`).
    fn replay_with<N: 'static>(
        &mut self,
        name: &str,
        namespace: &CodecRef<N>,
        mut apply: impl FnMut(&mut B, &OwnedRecord, &N, &StateMeta) -> Result<()>,
    ) -> Result<()> {
        let Some(records) = self.replay.remove(name) else {
            return Ok(());
        };
        let uid = self.config.uid.clone();
        // Marked failed until it finishes: a conversion that panics part-way (the records
        // are taken) leaves snapshots refused, not missing what it did not replay.
        let unfinished = self.replay_failed.is_none();
        if unfinished {
            self.replay_failed = Some((
                name.to_string(),
                "the replay of its restored changes did not finish (a conversion panicked)"
                    .to_string(),
            ));
        }
        let replayed = match self.restored_metas.get(name).cloned() {
            Some(stored) => self.replay_records(name, &records, |b, r| {
                decode_from(name, namespace, &stored.namespace, &r.namespace)
                    .and_then(|ns| apply(b, r, &ns, &stored))
            }),
            None => Err(StateError::Restore {
                reason: format!(
                    "restored changelog records of a state the handles do not describe uid={uid} state={name}"
                ),
            }),
        };
        match &replayed {
            Ok(()) if unfinished => self.replay_failed = None,
            Ok(()) => {}
            Err(e) if unfinished => self.replay_failed = Some((name.to_string(), e.to_string())),
            Err(_) => {}
        }
        replayed
    }

    /// Applies `records` of state `name` in order, each under its key; restores the
    /// current key after them.
    fn replay_records(
        &mut self,
        name: &str,
        records: &[OwnedRecord],
        mut apply: impl FnMut(&mut B, &OwnedRecord) -> Result<()>,
    ) -> Result<()> {
        let previous = self.inner.current_key().map(<[u8]>::to_vec);
        for r in records {
            self.inner
                .set_current_key(&r.key)
                .and_then(|()| apply(&mut self.inner, r))
                .map_err(|e| {
                    StateError::layer(
                        format!(
                            "replaying changelog uid={} state={name} key_group={}",
                            self.config.uid, r.key_group
                        ),
                        e,
                    )
                })?;
        }
        if let Some(k) = previous {
            self.inner.set_current_key(&k)?;
        }
        Ok(())
    }

    pub(crate) fn replay_value<V: StateValue, N: Namespace>(
        &mut self,
        id: ValueStateId<V, N>,
        d: &ValueStateDescriptor<V, N>,
    ) -> Result<()> {
        self.replay_with(&d.name, &d.namespace, |b, r, ns, stored| {
            match (r.op, &r.value) {
                (ChangelogOp::Set, Some(v)) => {
                    b.value_update(id, ns, decode_from(&d.name, &d.value, &stored.value, v)?)
                }
                _ => b.clear(id.raw(), ns),
            }
        })
    }

    pub(crate) fn replay_list<V: StateValue, N: Namespace>(
        &mut self,
        id: ListStateId<V, N>,
        d: &ListStateDescriptor<V, N>,
    ) -> Result<()> {
        let elements = |v: &[u8], stored: &StateMeta| -> Result<Vec<V>> {
            decode_list(v)
                .map_err(|e| StateError::layer(format!("list value state={}", d.name), e))?
                .into_iter()
                .map(|e| decode_from(&d.name, &d.element, &stored.value, e))
                .collect()
        };
        self.replay_with(&d.name, &d.namespace, |b, r, ns, stored| {
            match (r.op, &r.value) {
                (ChangelogOp::ListAppend, Some(v)) => b.list_add_all(id, ns, elements(v, stored)?),
                (ChangelogOp::ListSet, Some(v)) => b.list_update(id, ns, elements(v, stored)?),
                _ => b.clear(id.raw(), ns),
            }
        })
    }

    pub(crate) fn replay_map<UK: UserKey, UV: StateValue, N: Namespace>(
        &mut self,
        id: MapStateId<UK, UV, N>,
        d: &MapStateDescriptor<UK, UV, N>,
    ) -> Result<()> {
        let user_key = |uk: &[u8], stored: &StateMeta| match &stored.user_key {
            Some(s) => decode_from(&d.name, &d.user_key, s, uk),
            None => decode(&d.name, &d.user_key, uk),
        };
        self.replay_with(&d.name, &d.namespace, |b, r, ns, stored| {
            match (r.op, &r.user_key, &r.value) {
                (ChangelogOp::MapPut, Some(uk), Some(v)) => b.map_put(
                    id,
                    ns,
                    user_key(uk, stored)?,
                    decode_from(&d.name, &d.value, &stored.value, v)?,
                ),
                (ChangelogOp::MapRemove, Some(uk), _) => {
                    b.map_remove(id, ns, &user_key(uk, stored)?)
                }
                _ => b.clear(id.raw(), ns),
            }
        })
    }

    pub(crate) fn replay_reducing<V: StateValue, N: Namespace>(
        &mut self,
        id: ReducingStateId<V, N>,
        d: &ReducingStateDescriptor<V, N>,
    ) -> Result<()> {
        self.replay_with(&d.name, &d.namespace, |b, r, ns, stored| {
            b.clear(id.raw(), ns)?;
            match (r.op, &r.value) {
                // Adding to an empty reducing state stores the value as it is.
                (ChangelogOp::Set, Some(v)) => {
                    b.reducing_add(id, ns, decode_from(&d.name, &d.value, &stored.value, v)?)
                }
                _ => Ok(()),
            }
        })
    }

    pub(crate) fn replay_aggregating<IN: 'static, ACC: StateValue, OUT: 'static, N: Namespace>(
        &mut self,
        id: AggregatingStateId<AggInput<IN, ACC>, ACC, OUT, N>,
        d: &AggregatingStateDescriptor<IN, ACC, OUT, N>,
    ) -> Result<()> {
        self.replay_with(&d.name, &d.namespace, |b, r, ns, stored| {
            match (r.op, &r.value) {
                (ChangelogOp::Set, Some(v)) => {
                    let acc = decode_from(&d.name, &d.accumulator, &stored.value, v)?;
                    b.aggregating_add(id, ns, AggInput::Set(acc))
                }
                _ => b.clear(id.raw(), ns),
            }
        })
    }
}

fn decode<T: 'static>(state: &str, codec: &CodecRef<T>, bytes: &[u8]) -> Result<T> {
    codec.decode(bytes).map_err(|source| StateError::Codec {
        state: state.to_string(),
        source,
    })
}

/// Decodes `bytes` written under `stored` (a restored record's identity), converting them
/// when `codec` reads `stored` after a migration.
fn decode_from<T: 'static>(
    state: &str,
    codec: &CodecRef<T>,
    stored: &CodecIdentity,
    bytes: &[u8],
) -> Result<T> {
    codec
        .decode_from(stored, bytes)
        .map_err(|source| StateError::Codec {
            state: state.to_string(),
            source,
        })
}

/// The handles' ranges must cover `range` (a gap is an error, never empty state).
fn check_cover(uid: &str, range: KeyGroupRange, handles: &[KeyedStateHandle]) -> Result<()> {
    let mut ranges: Vec<KeyGroupRange> = handles
        .iter()
        .map(|h| h.key_group_range.intersect(&range))
        .filter(|r| !r.is_empty())
        .collect();
    ranges.sort_by_key(|r| r.start);
    let mut next = range.start;
    for r in ranges {
        if r.start > next {
            break;
        }
        next = next.max(r.end);
    }
    if next < range.end {
        return Err(StateError::Restore {
            reason: format!(
                "the handles do not cover the key-group range range={range} first_missing={next} uid={uid}"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cairn_format::{ChangelogSegmentWriter, FileState};

    use super::*;

    /// Serves one file's bytes as they are (no size or CRC32 check, unlike the storage).
    struct Unchecked(Bytes);

    impl SnapshotSource for Unchecked {
        fn read_file(&self, _file: &FileRef) -> Result<Bytes> {
            Ok(self.0.clone())
        }
    }

    fn segment(state: &str) -> Vec<u8> {
        let states = vec![FileState {
            name: state.into(),
            kind: StateKind::Value,
        }];
        let mut w = ChangelogSegmentWriter::new(states, 7).unwrap();
        w.add(&ChangelogRecord {
            key_group: 3,
            state: 0,
            op: ChangelogOp::Set,
            key: b"k",
            namespace: b"",
            user_key: None,
            value: Some(b"1"),
        })
        .unwrap();
        w.finish().unwrap()
    }

    fn read(seg: &ChangelogSegment, bytes: Vec<u8>) -> Result<u64> {
        let mut n = 0;
        read_segment(
            seg,
            KeyGroupRange::new(0, 8),
            &Unchecked(Bytes::from(bytes)),
            |_, _, _| {
                n += 1;
                Ok(())
            },
        )?;
        Ok(n)
    }

    /// A segment whose size or CRC32 differs from the handle's is an error that locates the
    /// damage (file and offset) whenever the segment's own checks find it, whatever the
    /// source checks (the corruption matrix's changelog checkpoint found restores that
    /// named no offset; the storage's sources now locate it themselves, this covers the
    /// others).
    #[test]
    fn a_damaged_segment_is_located_a_different_one_is_a_mismatch() {
        let good = segment("v");
        let seg = ChangelogSegment {
            file: FileRef {
                area: FileArea::Shared,
                name: "changelog/1.cls".into(),
                size: good.len() as u64,
                crc32: crc32fast::hash(&good),
            },
            first_sqn: 7,
            records: 1,
        };
        assert_eq!(read(&seg, good.clone()).unwrap(), 1);
        // A flipped bit in the record's value (the block starts at 26, after the 16-byte
        // header and the state table; its payload at 50, after the 24-byte block header;
        // the value 20 bytes into the record, after its key group u16).
        let mut bad = good.clone();
        let value_at = 50 + 20;
        bad[value_at] ^= 0x01;
        let e = read(&seg, bad).unwrap_err().to_string();
        assert!(e.contains("size or checksum differs"), "{e}");
        assert!(e.contains("record block checksum mismatch"), "{e}");
        assert!(e.contains("path=shared/changelog/1.cls offset=26"), "{e}");
        // A cut: the footer is gone.
        let e = read(&seg, good[..good.len() - 1].to_vec())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad footer magic"), "{e}");
        assert!(e.contains("path=shared/changelog/1.cls offset="), "{e}");
        // An intact segment of the same size that is not the one the handle names (another
        // state name: a change in a block, with the block's CRC32 recomputed, would not
        // change the whole-file CRC32, which is linear).
        let e = read(&seg, segment("w")).unwrap_err().to_string();
        assert!(
            e.contains("changelog segment does not match its handle: size or checksum differs"),
            "{e}"
        );
    }
}
