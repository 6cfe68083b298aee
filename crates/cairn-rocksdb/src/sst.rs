//! Building SST files per column family for ingestion (restore builds files instead of
//! putting entry by entry: no memtable, no write amplification, files land in the
//! bottommost level when their ranges do not overlap existing data).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_core::Result;
use rocksdb::{Options, SstFileWriter};

use crate::db::{io_err, rocks_err, Instance};

/// One SST writer per column family; keys must arrive in strictly increasing order per
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
