//! Building SST files per column family for ingestion (restore builds files instead of
//! putting entry by entry: no memtable, no write amplification, files land in the
//! bottommost level when their ranges do not overlap existing data).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_core::Result;
use rocksdb::{Options, SstFileWriter};

use crate::db::{io_err, rocks_err, Instance};

/// One SST writer per column family, named by column family (native restore); keys must arrive in strictly increasing order per
/// column family (RocksDB checks it).
pub(crate) struct SstBuilder<'a> {
    opts: &'a Options,
    dir: PathBuf,
    writers: BTreeMap<String, (SstFileWriter<'a>, PathBuf)>,
}

impl<'a> SstBuilder<'a> {
    /// Writes files into `dir` (created; removed by [`Self::ingest_into`] or on error by the
    /// caller's cleanup).
    pub(crate) fn new(opts: &'a Options, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| io_err("creating ingest dir", &dir, e))?;
        Ok(Self {
            opts,
            dir,
            writers: BTreeMap::new(),
        })
    }

    /// Adds an entry to the file of `cf`.
    pub(crate) fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) -> Result<()> {
        if !self.writers.contains_key(cf) {
            let path = self.dir.join(format!("{}.sst", self.writers.len()));
            let w = SstFileWriter::create(self.opts);
            w.open(&path)
                .map_err(|e| rocks_err("sst open", &path, cf, e))?;
            self.writers.insert(cf.to_string(), (w, path));
        }
        match self.writers.get_mut(cf) {
            Some((w, path)) => w
                .put(key, value)
                .map_err(|e| rocks_err("sst put", path, cf, e)),
            None => Ok(()),
        }
    }

    /// Finishes every file and ingests it into its column family of `inst`, then removes
    /// the directory.
    pub(crate) fn ingest_into(self, inst: &Instance) -> Result<()> {
        let Self { dir, writers, .. } = self;
        let result = (|| {
            for (cf, (mut w, path)) in writers {
                w.finish()
                    .map_err(|e| rocks_err("sst finish", &path, &cf, e))?;
                drop(w);
                inst.ingest(&cf, vec![path])?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// One SST file under construction.
struct OpenFile<'a> {
    writer: SstFileWriter<'a>,
    path: PathBuf,
}

/// The SST files of one restore worker: at most one per column family, named
/// `<worker>-<cf>.sst` in a directory the caller owns (and removes). Keys must arrive in
/// strictly increasing order per column family (RocksDB checks it). Column families are
/// indexes into `cf_names`.
pub(crate) struct SstSet<'a> {
    opts: &'a Options,
    dir: &'a Path,
    worker: usize,
    cf_names: &'a [String],
    files: Vec<Option<OpenFile<'a>>>,
}

impl<'a> SstSet<'a> {
    pub(crate) fn new(
        opts: &'a Options,
        dir: &'a Path,
        worker: usize,
        cf_names: &'a [String],
    ) -> Self {
        Self {
            opts,
            dir,
            worker,
            cf_names,
            files: cf_names.iter().map(|_| None).collect(),
        }
    }

    fn cf_name(&self, cf: usize) -> &str {
        self.cf_names.get(cf).map_or("?", String::as_str)
    }

    /// Adds an entry to the file of column family `cf`, opening it on first use.
    #[inline]
    pub(crate) fn put(&mut self, cf: usize, key: &[u8], value: &[u8]) -> Result<()> {
        if let Some(Some(f)) = self.files.get_mut(cf) {
            let names = self.cf_names;
            return f.writer.put(key, value).map_err(|e| {
                let name = names.get(cf).map_or("?", String::as_str);
                rocks_err("sst put", &f.path, name, e)
            });
        }
        self.open(cf)?;
        self.put(cf, key, value)
    }

    #[cold]
    fn open(&mut self, cf: usize) -> Result<()> {
        let path = self.dir.join(format!("{}-{cf}.sst", self.worker));
        let name = self.cf_name(cf).to_string();
        let Some(slot) = self.files.get_mut(cf) else {
            return Err(cairn_core::StateError::Restore {
                reason: format!("no column family with index {cf} path={}", path.display()),
            });
        };
        let writer = SstFileWriter::create(self.opts);
        writer
            .open(&path)
            .map_err(|e| rocks_err("sst open", &path, &name, e))?;
        *slot = Some(OpenFile { writer, path });
        Ok(())
    }

    /// Finishes every file; returns `(column family, file)` of each, in column-family order.
    pub(crate) fn finish(self) -> Result<Vec<(usize, PathBuf)>> {
        let mut out = Vec::new();
        for (cf, f) in self.files.into_iter().enumerate() {
            let Some(OpenFile { mut writer, path }) = f else {
                continue;
            };
            let name = self.cf_names.get(cf).map_or("?", String::as_str);
            writer
                .finish()
                .map_err(|e| rocks_err("sst finish", &path, name, e))?;
            out.push((cf, path));
        }
        Ok(out)
    }
}
