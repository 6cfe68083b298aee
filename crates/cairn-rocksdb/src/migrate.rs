//! State schema evolution: rewriting the stored values of a restored state in the codec a
//! newer program registers (`cairn_core::EvolvingCodec`, Flink's state migration).
//!
//! When a restored state is registered for the first time in a run, the descriptor decides
//! how its codecs read what the snapshot stored (`resolve`, [`cairn_core::StateMeta::resolve`]).
//! As is (the same identity, or one the codec reads unchanged), only the backend's record of
//! the state ([`RocksDbBackend`]'s `metas`) takes the new identity. After migration, every
//! stored value of the state's column family is converted before registration returns:
//!
//! 1. The backend waits for the seal worker of the last snapshot (`settle`): the checkpoint
//!    it creates must not see any of the rewrite, since its snapshot describes the state
//!    with the old identity.
//! 2. One scan of the column family, in key order (a consistent RocksDB iterator: merged
//!    list operands, range deletions of a rescale applied), converts each value with the
//!    descriptor's codec (`Codec::decode_from` the stored identity, then `Codec::encode`),
//!    and each element of a list (`len u32 LE, element` repeated, `layout.rs`). The state
//!    was not registered before in this run, so neither the write-back cache nor the spill
//!    holds any of its entries (both are keyed by the index registration assigns), and
//!    nothing else writes its column family meanwhile.
//! 3. The converted entries are written as SST files of at most the memtable size
//!    (`RocksDbOptions::write_buffer_bytes`, at least 1 MiB; keys and values before
//!    compression) in a scratch directory, never held in memory, and all of them are
//!    ingested into the column family in **one** call, which RocksDB applies atomically.
//!    The ingested files get a sequence number above every older version, so they shadow
//!    them at once.
//! 4. The column family is compacted (`compact_whole`), which drops the old versions.
//! 5. Only then does the backend record the new identity.
//!
//! Why compact: without it the old versions stay until RocksDB compacts on its own, which
//! for a state below the size of its base level (RocksDB's default, 256 MiB) only later
//! writes make it do.
//! Measured on 1M `u64` values migrated to a 16-byte struct (release build, restored from a
//! savepoint, 2 cores under other load, twice each): the migration took 0.39-0.40 s and
//! left 31.8 MB of SST files (the restored 12.9 MB and the ingested 19 MB, LZ4), which
//! stayed so (no background compaction within seconds), and the next native checkpoint
//! uploaded all of it (31.9 MB; after a native restore it would upload the 19 MB, and the
//! eventual compaction's output later again); with the compaction it took 0.93 s and left
//! one 11.7 MB file (ZSTD, the bottommost level), which is what the checkpoint uploaded.
//! Reads and scans (canonical snapshots, map iteration) also stop skipping shadowed
//! versions. A migration happens once, when the job starts; the half second per million
//! entries is worth the space and upload it saves.
//!
//! TTL states need nothing of their own: their codec (`TtlCodec`) reads the stamp in front
//! of every stored value (and list element) and writes it back unchanged, and their column
//! family's compaction filter (`ttl.rs`) reads only that stamp, which is the same before and
//! after the rewrite (the filter acts only once the state registers its TTL, after this).
//!
//! **A failed migration changes nothing.** A value the codec cannot decode or convert, a
//! malformed list or a failed write fails the registration with an error naming the
//! operator, the state, the key group and both identities (and the codec's message), before
//! anything is ingested: the column family keeps the old bytes and the backend the old
//! identity, so the state is as restored and not registered, and a later snapshot describes
//! it as the snapshot it came from did (the runtime fails the job on the error anyway).
//!
//! Why SST ingestion rather than write batches: a migration rewrites a whole state, which
//! in batches would go through the write-ahead log and the memtables (and be flushed into
//! level-0 files anyway), and batches commit one by one, so a conversion failing halfway
//! would leave the column family half in each schema under the old identity. Ingestion
//! writes the same files directly, keeps memory bounded just as well, and is all or nothing.
//! Its one cost here: it flushes the state's memtable first when that holds entries of the
//! state (after a restore that replayed a log).
//!
//! Native incremental checkpoints stay right throughout: one taken before the migration
//! (the state restored, not registered) holds the old files and the old identity; one taken
//! after it references the files live then, the rewritten ones, under the new identity.
//! (Were old versions still live, as without the compaction, they would be referenced too,
//! and harmless: RocksDB's newest version wins in the restored instance as here.)

use std::path::{Path, PathBuf};

use cairn_core::{
    CodecError, CodecIdentity, KeyGroup, Result, StateError, StateKind, StateMeta, StateMigration,
};
use rocksdb::{Options, SstFileWriter};

use crate::backend::RocksDbBackend;
use crate::db::{io_err, rocks_err};
use crate::layout::{end_of_all, list_elements, push_list_element, KG_PREFIX_LEN};

/// Converts one stored value (a value, a list element, a map value, an accumulator) stored
/// under the given identity into the registered codec's encoding, appended to `out`.
pub(crate) type Convert<'a> =
    dyn Fn(&CodecIdentity, &[u8], &mut Vec<u8>) -> std::result::Result<(), CodecError> + 'a;

/// Decides how a descriptor reads a restored state (the descriptor's `resolve`, given the
/// stored meta and the operator uid).
pub(crate) type Resolve<'a> = dyn Fn(&StateMeta, &str) -> Result<StateMigration> + 'a;

/// What registering a state needs for restored ones: how its descriptor reads them and how
/// it converts a stored value.
pub(crate) struct Evolution<'a> {
    pub(crate) resolve: &'a Resolve<'a>,
    pub(crate) convert: &'a Convert<'a>,
}

/// What a migration did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Migrated {
    /// Entries (RocksDB keys) rewritten.
    pub(crate) entries: u64,
    /// SST files ingested.
    pub(crate) files: usize,
}

/// Why one stored value could not be converted.
enum Failure {
    Codec(CodecError),
    MalformedList,
}

impl RocksDbBackend {
    /// Rewrites every stored value of the restored state `stored` in the encoding of
    /// `meta`'s codec, through `convert` (see the module documentation). Leaves the column
    /// family unchanged on error.
    pub(crate) fn migrate_values(
        &mut self,
        stored: &StateMeta,
        meta: &StateMeta,
        convert: &Convert<'_>,
    ) -> Result<Migrated> {
        let file_bytes = self.options.write_buffer_bytes.max(1 << 20) as u64;
        self.migrate_values_in_files_of(stored, meta, convert, file_bytes)
    }

    /// [`Self::migrate_values`] with SST files of at most about `file_bytes` (keys and
    /// values before compression).
    pub(crate) fn migrate_values_in_files_of(
        &mut self,
        stored: &StateMeta,
        meta: &StateMeta,
        convert: &Convert<'_>,
        file_bytes: u64,
    ) -> Result<Migrated> {
        self.settle()?;
        let seq = self.seq;
        self.seq += 1;
        let dir = self.root.join(format!("migrate-{seq}"));
        let inst = self.inst()?;
        let name = meta.name.as_str();
        let uid = self.uid.as_str();
        let result = (|| {
            std::fs::create_dir_all(&dir).map_err(|e| io_err("creating migration dir", &dir, e))?;
            let opts = inst.sst_options();
            let mut files = Files::new(&opts, &dir, name, file_bytes);
            let (mut value, mut element) = (Vec::new(), Vec::new());
            let mut entries = 0u64;
            inst.scan(name, &[], &end_of_all(), |k, v| {
                value.clear();
                convert_stored(
                    meta.kind,
                    convert,
                    &stored.value,
                    v,
                    &mut value,
                    &mut element,
                )
                .map_err(|f| failed(uid, stored, meta, k, f))?;
                entries += 1;
                files.put(k, &value)
            })?;
            let paths = files.finish()?;
            let count = paths.len();
            if count > 0 {
                inst.ingest(name, paths)?;
                compact_whole(inst, name)?;
            }
            Ok(Migrated {
                entries,
                files: count,
            })
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// Compacts the column family `cf` after a migration ingested its rewritten values: the
/// old versions go, rather than doubling the state on disk (and in what native checkpoints
/// upload) until RocksDB compacts on its own, which for a state below the size of its base
/// level only more writes would make it do. The ingested files lie above the old ones, so
/// compacting them down into the bottommost level rewrites each entry once; the bottommost
/// level is not compacted into itself again (`Skip`), not even for the compaction filter of
/// a state with a TTL, which does nothing for the state before its registration ends.
fn compact_whole(inst: &crate::db::Instance, cf: &str) -> Result<()> {
    let mut opts = rocksdb::CompactOptions::default();
    opts.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Skip);
    opts.set_exclusive_manual_compaction(false);
    inst.db
        .compact_range_cf_opt(inst.cf(cf)?, None::<&[u8]>, None::<&[u8]>, &opts);
    Ok(())
}

/// Converts the stored value `old` of a state of `kind` into `out` (lists element by
/// element, with `element` as scratch).
fn convert_stored(
    kind: StateKind,
    convert: &Convert<'_>,
    from: &CodecIdentity,
    old: &[u8],
    out: &mut Vec<u8>,
    element: &mut Vec<u8>,
) -> std::result::Result<(), Failure> {
    if kind != StateKind::List {
        return convert(from, old, out).map_err(Failure::Codec);
    }
    for e in list_elements(old).ok_or(Failure::MalformedList)? {
        element.clear();
        convert(from, e, element).map_err(Failure::Codec)?;
        push_list_element(out, element);
    }
    Ok(())
}

/// The error of a value that could not be converted: names the operator, the state, the
/// key group of its RocksDB key `key` and both identities, and keeps the codec's message.
fn failed(uid: &str, stored: &StateMeta, meta: &StateMeta, key: &[u8], f: Failure) -> StateError {
    let kg = key.first_chunk::<KG_PREFIX_LEN>().map_or_else(
        || "?".to_string(),
        |b| KeyGroup::from(u16::from_be_bytes(*b)).to_string(),
    );
    let context = format!(
        "migrating the stored values of a restored state from {} to {} uid={uid} state={} key_group={kg}",
        stored.value, meta.value, meta.name
    );
    // Typed sources, so the runtime tells a value that no restart can convert from a
    // failure of the layers below.
    match f {
        Failure::Codec(source) => StateError::layer(
            context,
            StateError::Codec {
                state: meta.name.clone(),
                source,
            },
        ),
        Failure::MalformedList => StateError::Restore {
            reason: format!("{context}: malformed stored list value"),
        },
    }
}

/// The SST files of one migration: a new file once the last one holds `limit` bytes.
struct Files<'a> {
    opts: &'a Options,
    dir: &'a Path,
    cf: &'a str,
    limit: u64,
    open: Option<(SstFileWriter<'a>, PathBuf, u64)>,
    done: Vec<PathBuf>,
}

impl<'a> Files<'a> {
    fn new(opts: &'a Options, dir: &'a Path, cf: &'a str, limit: u64) -> Self {
        Self {
            opts,
            dir,
            cf,
            limit,
            open: None,
            done: Vec::new(),
        }
    }

    /// Adds an entry (keys in strictly increasing order, as RocksDB checks).
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (writer, path, bytes) = match &mut self.open {
            Some(open) => open,
            None => {
                let path = self.dir.join(format!("{}.sst", self.done.len()));
                let writer = SstFileWriter::create(self.opts);
                writer
                    .open(&path)
                    .map_err(|e| rocks_err("sst open", &path, self.cf, e))?;
                self.open.insert((writer, path, 0))
            }
        };
        writer
            .put(key, value)
            .map_err(|e| rocks_err("sst put", path, self.cf, e))?;
        *bytes += (key.len() + value.len()) as u64;
        if *bytes >= self.limit {
            self.close()?;
        }
        Ok(())
    }

    /// Finishes the open file, if any.
    fn close(&mut self) -> Result<()> {
        if let Some((mut writer, path, _)) = self.open.take() {
            writer
                .finish()
                .map_err(|e| rocks_err("sst finish", &path, self.cf, e))?;
            self.done.push(path);
        }
        Ok(())
    }

    /// Every file, finished, in key order.
    fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.close()?;
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_core::*;

    use super::*;
    use crate::ops::converter;
    use crate::test_support::{u64_backend, Mem};

    const KEYS: u64 = 3_000;

    fn value_v2() -> ValueStateDescriptor<(u64, String)> {
        ValueStateDescriptor {
            name: "value".into(),
            value: Arc::new(
                EvolvingCodec::new(BincodeCodec::<(u64, String)>::named("Pair", 2))
                    .migrates_from(BincodeCodec::<u64>::new(), |n: u64| (n, format!("#{n}"))),
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    fn list_v2() -> ListStateDescriptor<u64> {
        ListStateDescriptor {
            name: "list".into(),
            element: Arc::new(
                EvolvingCodec::new(BincodeCodec::<u64>::named("Len", 2))
                    .migrates_from(BincodeCodec::<String>::new(), |s: String| s.len() as u64),
            ),
            namespace: Arc::new(BincodeCodec::<()>::new()),
        }
    }

    fn set_key(b: &mut RocksDbBackend, k: u64) {
        b.set_current_key(&BincodeCodec::<u64>::new().encode_to_vec(&k).unwrap())
            .unwrap();
    }

    /// A backend restored from a savepoint of keys `0..KEYS` in the old schema: a `u64`
    /// value and a list of `k % 4` strings per key.
    fn restored(dir: &Path) -> RocksDbBackend {
        let mut b = u64_backend(dir, KeyGroupRange::all(128), 64);
        let value = b
            .register_value(&ValueStateDescriptor::<u64>::new("value"))
            .unwrap();
        let list = b
            .register_list(&ListStateDescriptor::<String>::new("list"))
            .unwrap();
        for k in 0..KEYS {
            set_key(&mut b, k);
            b.value(&value).update(k).unwrap();
            for i in 0..k % 4 {
                b.list(&list).add("x".repeat(i as usize + 1)).unwrap();
            }
        }
        let mem = Mem::default();
        let handle = b
            .snapshot(SnapshotOptions::savepoint(1))
            .unwrap()
            .run(&mem, &CancelToken::new())
            .unwrap();
        let mut r = u64_backend(dir, KeyGroupRange::all(128), 64);
        r.restore(&[handle], &mem).unwrap();
        r
    }

    fn leftovers(b: &RocksDbBackend) -> Vec<String> {
        std::fs::read_dir(&b.root)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("migrate-"))
            .collect()
    }

    #[test]
    fn a_large_state_is_written_as_several_files_and_ingested_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = restored(dir.path());
        for (stored, meta, convert) in [
            (
                b.metas["value"].clone(),
                value_v2().meta(),
                Box::new(converter(&value_v2().value)) as Box<Convert<'_>>,
            ),
            (
                b.metas["list"].clone(),
                list_v2().meta(),
                Box::new(converter(&list_v2().element)),
            ),
        ] {
            let done = b
                .migrate_values_in_files_of(&stored, &meta, &*convert, 4 << 10)
                .unwrap();
            let expected = if meta.kind == StateKind::List {
                KEYS / 4 * 3
            } else {
                KEYS
            };
            assert_eq!(done.entries, expected, "{}", meta.name);
            assert!(done.files > 5, "{} {done:?}", meta.name);
            // Compacted: the live files hold each entry once, in its new version only.
            let live: u64 = b
                .inst()
                .unwrap()
                .db
                .live_files()
                .unwrap()
                .iter()
                .filter(|f| f.column_family_name == meta.name)
                .map(|f| f.num_entries)
                .sum();
            assert_eq!(live, expected, "{}", meta.name);
            b.metas.insert(meta.name.clone(), meta);
        }
        assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        // The registrations read as is now.
        let value = b.register_value(&value_v2()).unwrap();
        let list = b.register_list(&list_v2()).unwrap();
        for k in 0..KEYS {
            set_key(&mut b, k);
            assert_eq!(b.value(&value).get().unwrap(), Some((k, format!("#{k}"))));
            let expected: Vec<u64> = (1..=k % 4).collect();
            assert_eq!(b.list(&list).get().unwrap(), expected, "key {k}");
        }
    }

    /// A conversion failing at the last key, after several files were written, ingests
    /// none of them: the column family keeps the old bytes, the backend the old identity.
    #[test]
    fn a_failure_after_several_files_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = restored(dir.path());
        let before = b.stored_entries("value").unwrap();
        let last = before.last().unwrap().clone();
        let stored = b.metas["value"].clone();
        let meta = value_v2().meta();
        let codec = value_v2().value;
        let convert = |from: &CodecIdentity, old: &[u8], out: &mut Vec<u8>| {
            if old == last.1.as_slice() {
                return Err(CodecError {
                    codec: "test".into(),
                    op: "migrate",
                    detail: "the last one".into(),
                });
            }
            converter(&codec)(from, old, out)
        };
        let err = b
            .migrate_values_in_files_of(&stored, &meta, &convert, 4 << 10)
            .unwrap_err()
            .to_string();
        let kg = u16::from_be_bytes([last.0[0], last.0[1]]);
        for part in [
            "uid=op",
            "state=value",
            &format!("key_group={kg}"),
            "the last one",
            "u64@v1",
            "Pair@v2",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        assert_eq!(b.stored_entries("value").unwrap(), before);
        assert_eq!(b.metas["value"], stored);
        assert!(leftovers(&b).is_empty(), "{:?}", leftovers(&b));
        // The old program still reads it.
        let old = b
            .register_value(&ValueStateDescriptor::<u64>::new("value"))
            .unwrap();
        set_key(&mut b, 7);
        assert_eq!(b.value(&old).get().unwrap(), Some(7));
    }
}
