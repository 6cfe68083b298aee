//! Configuration of a [`crate::RocksDbBackend`] and the RocksDB options derived from it.
//!
//! The options are tuned for keyed state that a checkpoint makes durable:
//!
//! - **A write-ahead log that is never synced, and checkpoints that keep the memtables.**
//!   With [`RocksDbOptions::checkpoint_wal`] (the default) every write goes to the WAL,
//!   buffered in memory (`manual_wal_flush`) and never fsynced: a crash loses the local
//!   instance anyway, and the job restores from its last checkpoint. A native checkpoint
//!   then starts a new log (`seal.rs`), flushes that buffer and takes the logs instead of
//!   flushing the memtables (`create_checkpoint_with_log_size(.., u64::MAX)`), and opening
//!   the checkpoint replays them. The memtables go on serving reads of recently evicted keys, as they do without
//!   checkpoints; a flush per checkpoint left them empty every second, so those reads went
//!   to level-0 files instead (bloom probes, index and data blocks), and every checkpoint
//!   added level-0 files for compaction to merge into the base level. W1 at parallelism 2
//!   (1M keys, 20M records, checkpoint every second, 2026-11-23, one run each alternated
//!   with config c): config d ran at 846-854k records/s with the WAL against 657-738k
//!   with a flush per checkpoint (c: 959-1,006k), CPU per record 1.14x c's against
//!   1.35-1.50x. The cost is upload volume: a checkpoint uploads the log of every write
//!   since the last one (shared, named by content; the older logs are referenced), which
//!   for W1 is more than the compressed level-0 files a flush wrote: 18-20 MB at p50
//!   against 8-10 MB. When each checkpoint copied the live log whole, it was 38-43 MB. The
//!   WAL is bounded by flushing the column family that holds its oldest part once it
//!   passes 64 MiB (`MAX_TOTAL_WAL_BYTES`), and by flushing every memtable once 16 logs
//!   are live (a state that changes slowly). Every open refuses a log that does not replay
//!   whole (`AbsoluteConsistency`): a checkpoint's copy ends at a record boundary, so a
//!   short or damaged one is corrupt, never silently cut.
//!   Without the option, writes skip the WAL and every native checkpoint flushes the
//!   memtables (the checkpoint then holds SST files only).
//! - **One block cache** ([`RocksDbOptions::block_cache_bytes`]) shared by every column
//!   family, with index and filter blocks cached too, so memory is bounded per backend. It
//!   is a HyperClockCache: a lookup takes no lock and moves no list entry. A get that misses
//!   the write-back cache looks up three or more blocks per SST file it visits (filter
//!   partition, index partition, data block); with an LRU cache those lookups (the shard
//!   mutex, the hash chain, the LRU list) were 13% of W1 config d's task thread.
//! - **A hash index in every data block** (`BinaryAndHash`, about 1.3 bytes per key): a
//!   point lookup finds its key in the block by hash instead of a binary search over the
//!   restart points (7% of config d's task thread). Iterators still seek by binary search.
//!
//!   With both, W1 (1M keys, parallelism 1, 20M records) config c ran at 265-272k
//!   records/s, against 243-262k before, with the default write-back cache; with 524,288
//!   entries c ran at 446-463k against 400-446k, and d at 367-372k against 345-361k (one
//!   run of each, two alternated rounds, 2026-11-23). The machine's speed drifts: an hour
//!   later one alternated round gave 228k and 252k against 218k.
//! - **Level-0 compaction from RocksDB's default of four files.** A native checkpoint adds
//!   two level-0 files a second (the seal's ingested file and the flush that ingestion
//!   forces), and a get that misses the write-back cache probes every level-0 file's
//!   filter. From two files on, W1 config d ran 5-8% faster (258-276k against 245-249k
//!   records/s; 397-411k against 367-372k with 524,288 entries). But it doubles how often
//!   level 0 is merged into the base level, which uniform updates rewrite whole, and every
//!   rewritten file is uploaded by the next incremental checkpoint: for a large state that
//!   costs more than the reads save, so the default stays.
//! - **Write buffers** of [`RocksDbOptions::write_buffer_bytes`] per column family (two of
//!   them, so a flush does not stall writes), each with a whole-key bloom filter (2% of its
//!   size): a get of a key the memtable does not hold skips the skiplist search, which was
//!   29% of W1 config c with a write-back cache of 65,536 entries (for 1M keys, so
//!   most accesses are gets, and evictions keep the memtable full). With the filter c ran
//!   19-30% faster, 180-225k against 138-183k records/s (3M records, 4 alternated pairs,
//!   load 0.3-1.3); with a cache that holds every key it changes nothing measurable.
//! - **Compression**: LZ4 for the upper levels (cheap, where data is rewritten soon) and
//!   ZSTD for the bottommost level (most bytes live there, and native checkpoints upload
//!   them), when [`RocksDbOptions::compression`] is on.
//! - **Bloom filters** (whole-key, [`RocksDbOptions::bloom_bits_per_key`]) so a get of a
//!   missing key rarely reads a data block; dynamic level sizes keep space amplification low.
//!   Index and filters are partitioned: a get loads a few KiB of them, never a whole
//!   file's filter (a file of a million keys has a 1.2 MiB filter, which would be re-read
//!   and re-checksummed on every get when it does not stay in its cache shard).
//!   Filters stay in the bottommost level too. Without them (`optimize_filters_for_hits`)
//!   every get of a key that is not stored yet, the first access of each new key, reads a
//!   bottommost data block: W1 config d (1M keys, 2M-entry cache, checkpoint every second)
//!   ran 5-6% slower, 1.21-1.30M against 1.29-1.36M records/s, 7 interleaved pairs, load
//!   1.4-2.1. Only the files a canonical restore builds have none (`ingest.rs`).
//! - **A merge operator** that concatenates, on every column family: list appends are
//!   merges (no read), and only list states ever merge.
//! - **A compaction filter** on every state column family of a live instance (not in
//!   [`column_family_options`], which has no state to look up): it drops the expired
//!   entries of states with a TTL and keeps everything else (`ttl.rs`). With a filter,
//!   RocksDB would compact every file at least every 30 days; only states with a TTL keep
//!   that (as Flink sets it for them), the others get no periodic compactions. Manual
//!   compactions also rewrite the bottommost level unless told to skip it (`db.rs`'s
//!   `keep_only` does).

use std::path::PathBuf;

use cairn_core::{CodecIdentity, KeyGroupRange};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, DBRecoveryMode,
    DataBlockIndexType, MergeOperands, Options, WriteOptions,
};

/// Configuration of a [`crate::RocksDbBackend`].
#[derive(Debug, Clone)]
pub struct RocksDbConfig {
    /// The operator uid (used in errors and file names).
    pub uid: String,
    /// The job's maximum parallelism (number of key groups).
    pub max_parallelism: u32,
    /// The key groups this backend owns; non-empty, within `0..max_parallelism`.
    pub key_group_range: KeyGroupRange,
    /// Identity of the key codec (recorded in snapshots, checked on restore).
    pub key_codec: CodecIdentity,
    /// A local directory for the backend (created if missing). The backend works in its own
    /// fresh subdirectory, removed when the backend is dropped, so several backends may
    /// share one `local_dir`.
    pub local_dir: PathBuf,
    /// RocksDB and cache tuning.
    pub options: RocksDbOptions,
}

/// Tuning of the RocksDB instance and of the write-back cache in front of it.
#[derive(Debug, Clone, PartialEq)]
pub struct RocksDbOptions {
    /// Block cache (a HyperClockCache) shared by every column family, in bytes (default 64 MiB).
    pub block_cache_bytes: usize,
    /// Memtable size per column family, in bytes (default 32 MiB).
    pub write_buffer_bytes: usize,
    /// LZ4 for upper levels and ZSTD for the bottommost level; off stores blocks raw
    /// (default on).
    pub compression: bool,
    /// Bits per key of the bloom filters; 0 disables them (default 10).
    pub bloom_bits_per_key: f64,
    /// Background flush and compaction threads (default 2).
    pub background_jobs: i32,
    /// Entries of the write-back cache of deserialized values; 0 turns the cache off and
    /// every access is a RocksDB get or write (default 262,144). Each entry takes a 64-byte
    /// slot of a table kept between 5/16 and 5/8 full (100-200 bytes per entry), plus its
    /// key when over 30 bytes and its value when it is not a primitive number. While a
    /// snapshot is being sealed the cache may hold up to twice this many entries.
    ///
    /// The default's table takes 32 MiB, 64 MiB while a snapshot is sealed: as much as the
    /// block cache and the write buffers of one state. Size it to the working set where
    /// memory allows: W1 config c (1M keys, parallelism 1, 20M records) ran at 228-272k
    /// records/s with the default and 446-463k with 524,288 entries (peak RSS of its
    /// process 176-180 against 217-222 MiB), and about 2.7M with 2M entries (5M records).
    /// A larger cache also makes each record cheaper, so a checkpoint's work weighs more:
    /// config d (checkpoint every second) ran at 0.80-0.94 of c with the default and
    /// 0.79-0.83 with 524,288 entries.
    pub cache_capacity: usize,
    /// Entries of the spill (default 0: none). With a spill, dirty entries evicted from the
    /// write-back cache are kept there, encoded, until the next snapshot writes them
    /// together with the cache's dirty entries: a checkpoint writes each changed key once,
    /// as one file per state, and nothing else goes through the memtable. Once it holds
    /// this many it is written out off the task thread. The set the last seal wrote is kept
    /// as a second-level cache of encoded values. Without one, each eviction sweep is
    /// written to the memtable.
    ///
    /// It trades memory for speed, like a larger cache: two sets of up to this many
    /// entries (about 60 bytes each for W1's keys, the index included, with the vectors'
    /// growth on top) and a copy while a seal runs. W1 at parallelism 1 (1M keys, 20M
    /// records, cache 262,144, two alternated rounds, 2026-11-23), 262,144 against none:
    /// config c 389,666 and 411,101 against 320,826 and 323,320 records/s (CPU per record
    /// 0.86x), peak RSS 279 against 177 MiB; config d 327,702 and 321,166 against 326,206
    /// and 330,546 (CPU per record 0.96x), checkpoint bytes p50 3.5-3.7 against 5.2-5.5 MB,
    /// peak RSS 491-549 against 349-392 MiB. So it does not make a checkpoint cheaper per
    /// record; it makes the run without checkpoints faster, with memory.
    pub spill_capacity: usize,
    /// Whether writes go to the write-ahead log (buffered, never synced) so that a native
    /// checkpoint takes the logs instead of flushing the memtables (default on). Off,
    /// writes skip the log and every checkpoint flushes the memtables: smaller uploads
    /// (SST files only), but reads of recently evicted keys then go to level-0 files, and
    /// the files each checkpoint adds must be compacted. See the module documentation for
    /// figures.
    pub checkpoint_wal: bool,
    /// Whether incremental checkpoints (`SnapshotOptions::incremental`) are native RocksDB
    /// checkpoints that upload only new SST and log files (default). Off, they are written
    /// like full checkpoints: one canonical state file that every backend and tool reads.
    pub native_incremental: bool,
}

impl Default for RocksDbOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            compression: true,
            bloom_bits_per_key: 10.0,
            background_jobs: 2,
            cache_capacity: 1 << 18,
            spill_capacity: 0,
            checkpoint_wal: true,
            native_incremental: true,
        }
    }
}

/// The list merge operator: concatenates stored list forms.
fn concat_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut out = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for op in operands.iter() {
        out.extend_from_slice(op);
    }
    Some(out)
}

/// Name of the merge operator (RocksDB checks it when reopening an instance).
const MERGE_OPERATOR: &str = "cairn.list.concat";

/// Keys per one-byte bucket of a data block's hash index (RocksDB's
/// `data_block_hash_table_util_ratio`; 0.75 is its recommended value).
const DATA_BLOCK_HASH_RATIO: f64 = 0.75;

/// Options of every column family (and of SST files built for ingestion).
pub fn column_family_options(o: &RocksDbOptions, cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_merge_operator_associative(MERGE_OPERATOR, concat_merge);
    opts.set_write_buffer_size(o.write_buffer_bytes.max(1 << 20));
    opts.set_max_write_buffer_number(2);
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.02);
    opts.set_level_compaction_dynamic_level_bytes(true);
    if o.compression {
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_bottommost_compression_type(DBCompressionType::Zstd);
    } else {
        opts.set_compression_type(DBCompressionType::None);
    }
    opts.set_block_based_table_factory(&table_options(o, cache, true));
    opts
}

/// The table options of every column family; without `filter`, files get no bloom filter.
fn table_options(o: &RocksDbOptions, cache: &Cache, filter: bool) -> BlockBasedOptions {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned index and filters: a point lookup loads a few KiB of filter and index,
    // never a whole file's filter (MiBs for a file of a million keys, re-read and
    // re-checksummed on every get once it no longer fits a cache shard).
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_pin_top_level_index_and_filter(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    if filter && o.bloom_bits_per_key > 0.0 {
        table.set_partition_filters(true);
        table.set_bloom_filter(o.bloom_bits_per_key, false);
    }
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(DATA_BLOCK_HASH_RATIO);
    table.set_format_version(5);
    table
}

/// Options of the SST files a canonical restore builds: the column family's, without a
/// bloom filter (see `ingest.rs`).
pub(crate) fn restore_sst_options(o: &RocksDbOptions, cache: &Cache) -> Options {
    let mut opts = column_family_options(o, cache);
    opts.set_block_based_table_factory(&table_options(o, cache, false));
    opts
}

/// The block cache shared by an instance's column families: a HyperClockCache that sizes
/// its own table (no lock per lookup, see the module doc).
pub(crate) fn block_cache(bytes: usize) -> Cache {
    Cache::new_hyper_clock_cache(bytes.max(1 << 20), 0)
}

/// Options of the instance (the default column family gets the column-family options).
pub(crate) fn db_options(o: &RocksDbOptions, cache: &Cache) -> Options {
    let mut opts = column_family_options(o, cache);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(o.background_jobs.max(1));
    if o.checkpoint_wal {
        opts.set_manual_wal_flush(true);
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    }
    opts.set_wal_recovery_mode(DBRecoveryMode::AbsoluteConsistency);
    opts.set_max_manifest_file_size(MAX_MANIFEST_BYTES);
    opts
}

/// The MANIFEST size past which RocksDB starts a new one (holding the current file list
/// only). A native checkpoint uploads the MANIFEST whole, and it grows with every flush and
/// compaction (about 170 bytes per checkpoint of a small state): with RocksDB's default of
/// 1 GiB, a job checkpointing every second would upload 14 MB more of it each day.
const MAX_MANIFEST_BYTES: usize = 64 << 10;

/// The write-ahead log size past which RocksDB flushes the column family holding its
/// oldest part: a bound on what a checkpoint uploads of the log.
pub(crate) const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// How the instance's writes go: through the write-ahead log exactly when
/// [`RocksDbOptions::checkpoint_wal`] is on (a checkpoint without a flush relies on every
/// write being in the log).
pub(crate) fn write_options(o: &RocksDbOptions) -> WriteOptions {
    let mut write = WriteOptions::default();
    write.disable_wal(!o.checkpoint_wal);
    write
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_concatenates_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let o = RocksDbOptions::default();
        let cache = Cache::new_lru_cache(1 << 20);
        let db = rocksdb::DB::open(&db_options(&o, &cache), dir.path()).unwrap();
        db.put(b"k", b"ab").unwrap();
        db.merge(b"k", b"c").unwrap();
        db.merge(b"k", b"de").unwrap();
        db.merge(b"n", b"x").unwrap();
        assert_eq!(db.get(b"k").unwrap().unwrap(), b"abcde");
        assert_eq!(db.get(b"n").unwrap().unwrap(), b"x");
        db.flush().unwrap();
        db.merge(b"k", b"f").unwrap();
        assert_eq!(db.get(b"k").unwrap().unwrap(), b"abcdef");
    }
}
