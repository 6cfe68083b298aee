//! The RocksDB instance of a backend: opening, column families (one per state, named after
//! it), and the error wrapping every call site uses.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_core::{Result, StateError, StateMeta};
use rocksdb::{
    Cache, ColumnFamily, IngestExternalFileOptions, Options, WriteBatch, WriteOptions, DB,
};

use crate::options::{
    block_cache, column_family_options, db_options, restore_sst_options, RocksDbOptions,
};
use crate::ttl::TtlRegistry;

/// Wraps a RocksDB error with what was being done.
pub(crate) fn rocks_err(op: &str, path: &Path, cf: &str, e: rocksdb::Error) -> StateError {
    StateError::layer(format!("rocksdb {op} path={} cf={cf}", path.display()), e)
}

/// Wraps an I/O error with what was being done.
pub(crate) fn io_err(op: &str, path: &Path, e: std::io::Error) -> StateError {
    StateError::layer(format!("{op} path={}", path.display()), e)
}

/// The name RocksDB gives the column family that always exists (holds no state).
pub(crate) const DEFAULT_CF: &str = "default";

/// An open instance with the options its column families are created with.
pub(crate) struct Instance {
    /// Shared with the seal worker of a snapshot while it runs (`seal.rs`).
    pub(crate) db: Arc<DB>,
    pub(crate) path: PathBuf,
    cache: Cache,
    options: RocksDbOptions,
    write: WriteOptions,
    /// The backend's TTL registry, which the compaction filter of every state column
    /// family reads (`ttl.rs`).
    ttl: Arc<TtlRegistry>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Opens (or creates) the instance at `path` with every column family it has; those of
    /// the states of `metas` with a TTL get the TTL compaction filter reading `ttl`
    /// (`ttl.rs`).
    pub(crate) fn open(
        path: &Path,
        options: &RocksDbOptions,
        ttl: &Arc<TtlRegistry>,
        metas: &BTreeMap<String, StateMeta>,
    ) -> Result<Self> {
        let cache = block_cache(options.block_cache_bytes);
        let db_opts = db_options(options, &cache);
        let names = if path.join("CURRENT").exists() {
            DB::list_cf(&db_opts, path).map_err(|e| rocks_err("list_cf", path, "*", e))?
        } else {
            vec![DEFAULT_CF.to_string()]
        };
        let cfs: Vec<_> = names
            .iter()
            .map(|n| {
                let with_ttl = metas.get(n).is_some_and(crate::ttl::has_ttl);
                rocksdb::ColumnFamilyDescriptor::new(
                    n,
                    cf_options(options, &cache, n, ttl, with_ttl),
                )
            })
            .collect();
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)
            .map_err(|e| rocks_err("open", path, "*", e))?;
        let write = crate::options::write_options(options);
        Ok(Self {
            db: Arc::new(db),
            path: path.to_path_buf(),
            cache,
            options: options.clone(),
            write,
            ttl: ttl.clone(),
        })
    }

    /// Opens a checkpoint directory read-only (for snapshots and rescaling).
    pub(crate) fn open_read_only(
        path: &Path,
        options: &RocksDbOptions,
    ) -> Result<(DB, Vec<String>)> {
        let cache = block_cache(8 << 20);
        let opts = db_options(options, &cache);
        let names = DB::list_cf(&opts, path).map_err(|e| rocks_err("list_cf", path, "*", e))?;
        let cfs: Vec<_> = names
            .iter()
            .map(|n| {
                rocksdb::ColumnFamilyDescriptor::new(n, column_family_options(options, &cache))
            })
            .collect();
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false)
            .map_err(|e| rocks_err("open read-only", path, "*", e))?;
        Ok((db, names))
    }

    /// The options SST files for ingestion are written with.
    pub(crate) fn sst_options(&self) -> Options {
        self.lz4_sst(column_family_options(&self.options, &self.cache))
    }

    /// The options of the SST files a canonical restore ingests into its empty column
    /// families: without a bloom filter (see `ingest.rs`).
    pub(crate) fn restore_sst_options(&self) -> Options {
        self.lz4_sst(restore_sst_options(&self.options, &self.cache))
    }

    fn lz4_sst(&self, mut opts: Options) -> Options {
        // SstFileWriter compresses with the bottommost compression when one is set (ZSTD);
        // restore writes its files with the cheaper LZ4 instead, and compaction rewrites them
        // with ZSTD when they reach the bottom level in the normal course.
        if self.options.compression {
            opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
        }
        opts
    }

    /// The column family of state `name`.
    pub(crate) fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| StateError::Restore {
            reason: format!(
                "column family missing in the rocksdb instance cf={name} path={}",
                self.path.display()
            ),
        })
    }

    /// Creates the column family of state `meta` unless it exists.
    pub(crate) fn ensure_cf(&mut self, meta: &StateMeta) -> Result<()> {
        let name = meta.name.as_str();
        if self.db.cf_handle(name).is_some() {
            return Ok(());
        }
        let with_ttl = crate::ttl::has_ttl(meta);
        let opts = cf_options(&self.options, &self.cache, name, &self.ttl, with_ttl);
        let path = &self.path;
        Arc::get_mut(&mut self.db)
            .ok_or_else(|| {
                StateError::layer(
                    format!("rocksdb create_cf path={} cf={name}", path.display()),
                    "the instance is in use by a snapshot's seal worker",
                )
            })?
            .create_cf(name, &opts)
            .map_err(|e| rocks_err("create_cf", path, name, e))
    }

    /// Column families that hold states.
    pub(crate) fn state_cfs(&self) -> Result<Vec<String>> {
        let opts = Options::default();
        let mut names =
            DB::list_cf(&opts, &self.path).map_err(|e| rocks_err("list_cf", &self.path, "*", e))?;
        names.retain(|n| n != DEFAULT_CF);
        Ok(names)
    }

    /// How every write of the instance goes (`options::write_options`).
    pub(crate) fn write_options(&self) -> &WriteOptions {
        &self.write
    }

    pub(crate) fn write(&self, batch: WriteBatch) -> Result<()> {
        self.db
            .write_opt(batch, &self.write)
            .map_err(|e| rocks_err("write batch", &self.path, "*", e))
    }

    pub(crate) fn put(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .put_cf_opt(self.cf(cf)?, key, value, &self.write)
            .map_err(|e| rocks_err("put", &self.path, cf, e))
    }

    pub(crate) fn merge(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .merge_cf_opt(self.cf(cf)?, key, value, &self.write)
            .map_err(|e| rocks_err("merge", &self.path, cf, e))
    }

    pub(crate) fn delete(&self, cf: &str, key: &[u8]) -> Result<()> {
        self.db
            .delete_cf_opt(self.cf(cf)?, key, &self.write)
            .map_err(|e| rocks_err("delete", &self.path, cf, e))
    }

    /// Calls `f` with the value of `key`, if present.
    pub(crate) fn get<T>(
        &self,
        cf: &str,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        match self
            .db
            .get_pinned_cf(self.cf(cf)?, key)
            .map_err(|e| rocks_err("get", &self.path, cf, e))?
        {
            Some(v) => f(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `f` for every entry with `lower <= key < upper`, in key order.
    pub(crate) fn scan(
        &self,
        cf: &str,
        lower: &[u8],
        upper: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        scan_db(&self.db, &self.path, cf, lower, upper, f)
    }

    /// Ingests SST files into `cf` (moving them).
    pub(crate) fn ingest(&self, cf: &str, files: Vec<PathBuf>) -> Result<()> {
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.db
            .ingest_external_file_cf_opts(self.cf(cf)?, &opts, files)
            .map_err(|e| rocks_err("ingest", &self.path, cf, e))
    }

    /// Deletes every key outside `[lower, upper)` in every state column family and compacts
    /// the deleted ranges away.
    pub(crate) fn keep_only(&self, lower: &[u8], upper: &[u8]) -> Result<()> {
        let end = crate::layout::end_of_all();
        // RocksDB's default also rewrites the bottommost level when the column family has
        // a compaction filter, which a state with a TTL has (`ttl.rs`); none of its states
        // is registered yet, so that would only cost time.
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Skip);
        for name in self.state_cfs()? {
            let cf = self.cf(&name)?;
            for (from, to) in [(&[][..], lower), (upper, end.as_slice())] {
                if from >= to {
                    continue;
                }
                self.db
                    .delete_range_cf_opt(cf, from, to, &self.write)
                    .map_err(|e| rocks_err("delete_range", &self.path, &name, e))?;
                self.db
                    .compact_range_cf_opt(cf, Some(from), Some(to), &compact);
            }
        }
        Ok(())
    }
}

/// The options of column family `name` of a live instance: [`column_family_options`], and
/// for the column family of a state with a TTL (`with_ttl`) the TTL compaction filter, which
/// keeps everything until the state enables TTL cleanup.
fn cf_options(
    o: &RocksDbOptions,
    cache: &Cache,
    name: &str,
    ttl: &Arc<TtlRegistry>,
    with_ttl: bool,
) -> Options {
    let mut opts = column_family_options(o, cache);
    if with_ttl && name != DEFAULT_CF {
        crate::ttl::install_filter(&mut opts, ttl, name);
    }
    opts
}

/// Calls `f` for every entry of `cf` in `db` with `lower <= key < upper`, in key order.
pub(crate) fn scan_db(
    db: &DB,
    path: &Path,
    cf: &str,
    lower: &[u8],
    upper: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let handle = db.cf_handle(cf).ok_or_else(|| StateError::Restore {
        reason: format!(
            "column family missing in the rocksdb instance cf={cf} path={}",
            path.display()
        ),
    })?;
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_iterate_lower_bound(lower.to_vec());
    ro.set_iterate_upper_bound(upper.to_vec());
    let mut it = db.raw_iterator_cf_opt(handle, ro);
    it.seek(lower);
    while it.valid() {
        match (it.key(), it.value()) {
            (Some(k), Some(v)) => f(k, v)?,
            _ => break,
        }
        it.next();
    }
    it.status().map_err(|e| rocks_err("iterate", path, cf, e))
}
