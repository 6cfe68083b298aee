//! # state-dump — see inside Cairn checkpoints and savepoints
//!
//! The library behind the `state-dump` binary: it reads a snapshot's manifest (which carries
//! operator uids, state names and codec identities with value schemas) and its canonical
//! state files, and shows everything without the program that wrote them. The binary is a
//! thin `clap` front over these functions; none of them prints (output goes to the
//! `Write` you pass or comes back as a report with `render()` and `serde` JSON).
//!
//! | command | library | what |
//! |---|---|---|
//! | `summary PATH` | [`summarize`] | kind, id, time, format version, backend; per operator uid its parallelism, states (name, kind, codecs), entries, bytes, files |
//! | `entries PATH --uid U --state S` | [`write_entries`] | decoded keys, namespaces and values ([`Decoder`]: the schema stored in the codec identity; raw hex without one; a value of a state with a TTL as `{"ttl_stamped_ms": N, "value": …}`) |
//! | `verify PATH` | [`verify`] | every file present with the recorded size and CRC32, every block checksum (state files, native RocksDB SSTs, changelog segments), every value of a state with a TTL long enough for its stamp |
//! | `diff A B` | [`diff()`] | operators, states and entries added, removed, changed (canonical bytes compared) |
//! | `files ROOT` | [`list_files`] | which checkpoints reference which shared files; orphans; missing files |
//! | `gc ROOT [--dry-run]` | [`gc()`] | keep the newest `--retain N` checkpoints, delete what no retained manifest references and is older than `--min-age` (default 1h) |
//! | `convert PATH --out DIR` | [`convert()`] | any checkpoint (native RocksDB, canonical full or incremental, changelog) or savepoint to a self-contained canonical savepoint |
//!
//! PATH is a checkpoint directory (`<job>/chk-<id>`, whose shared files live in
//! `<job>/shared/`), a savepoint directory, or either's `_metadata` file, given as a local
//! path, a `file://` URL or an `s3://bucket/prefix` URL ([`open_snapshot`]). ROOT is a job's
//! checkpoint directory ([`open_job_root`]), by path or URL. Object-store URLs go through
//! `cairn-storage`, which configures S3 from the usual `AWS_*` environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, as `object_store`'s `AmazonS3Builder::from_env()` reads them); a missing
//! credential or a plain-http endpoint without `AWS_ALLOW_HTTP=true` is a usage error (exit
//! 2) naming the URL and the variable.
//!
//! Exit codes: `verify` exits 0 when clean, 1 on corruption (each finding names the file, and the
//! offset where there is one), 2 when PATH is not a snapshot or the usage is wrong; the other commands exit 0
//! on success, 1 on an error in the data, 2 on bad usage or a path that is not a snapshot
//! ([`DumpError::exit_code`]). Errors are one line on stderr, naming what and where.
//!
//! Native RocksDB checkpoints (`KeyedData::RocksNative`, the RocksDB backend's incremental
//! checkpoints) are read by `entries`, `diff` and `convert` through
//! `cairn_rocksdb::scan_native_handle`, which yields a native handle's entries in the same
//! canonical form and order as a state file: each handle's files are copied into a scratch
//! directory under the system's temporary directory (`TMPDIR`), checked against the
//! manifest's sizes and CRC32s, opened read-only and removed afterwards, so a native
//! checkpoint dumps, diffs and converts exactly like a canonical one (and `diff` compares
//! the two equal when they hold the same state). `summary` reports no entry count for
//! native data (that needs a full scan); `verify` checks native files by size and
//! whole-file CRC32 and then reads every intact native handle through, so RocksDB checks
//! every block checksum, naming the SST file it rejects.
//!
//! Changelog checkpoints (`KeyedData::Changelog`, written by `cairn-changelog` around
//! either backend) are read by `entries`, `diff` and `convert` through
//! `cairn_changelog::changelog_entries`: the materialized canonical or native handles go
//! through the scanners above, then the segments are replayed on top; one subtask's
//! replayed entries are held in memory at a time. Each segment is read whole and checked
//! first (size, whole-file CRC32, footer's first sequence number and record count against
//! the manifest), so a truncated or damaged segment is an error naming its path and the
//! offset of the damage. `summary` reports kind `changelog` with its materialized files
//! and segments (no entry count); `verify` checks every segment that way and through
//! `cairn_changelog::read_segment` (every block and record), and the materialized files
//! like those of the other kinds; `files` and `gc` count every nested file as referenced.
//!
//! ## An example session
//!
//! On the checkpoints and savepoint of the demo (`cargo run --example demo -- /tmp/x`):
//!
//! ```text
//! $ state-dump summary /tmp/x/checkpoints/chk-2
//! checkpoint 2 at /tmp/x/checkpoints/chk-2
//! time            2026-11-21T20:57:54.857Z
//! format version  1
//! backend         canonical (heap backend or canonical savepoint)
//! files           4 (38443 bytes, 4 shared)
//!
//! UID    PARALLELISM  MAX_PARALLELISM  DATA       ENTRIES  BYTES  FILES  KEY
//! count  2            128              canonical  2000     38443  4      alloc::string::String@v1
//! …
//! $ state-dump entries /tmp/x/checkpoints/chk-2 --uid count --state count --json --limit 2
//! {"key":"path38","namespace":null,"value":60,"key_group":0}
//! {"key":"snow11","namespace":null,"value":140,"key_group":0}
//! $ state-dump verify /tmp/x/checkpoints/chk-2; echo $?
//! checkpoint 2 at /tmp/x/checkpoints/chk-2: 4 files, 38443 bytes, 2510 entries checked: clean
//! 0
//! $ state-dump convert /tmp/x/checkpoints/chk-2 --out /tmp/x/savepoints/from-chk-2
//! wrote savepoint 2 to /tmp/x/savepoints/from-chk-2: 1 operators, 2 state files, 2000 entries, 30511 bytes (from /tmp/x/checkpoints/chk-2)
//! $ state-dump diff /tmp/x/checkpoints/chk-2 /tmp/x/savepoints/from-chk-2
//! …
//! no differences
//! $ state-dump gc /tmp/x/checkpoints --dry-run
//! /tmp/x/checkpoints: retaining chk-2
//! nothing to delete
//! ```
//!
//! The schema decoder is specified in [`schema_decode`](Decoder); the file formats in
//! `format-spec/README.md`.

mod changelog;
mod convert;
mod diff;
mod entries;
mod error;
mod files;
mod gc;
mod open;
mod progress;
mod scan;
mod schema_decode;
mod summary;
mod table;
mod verify;

pub use convert::{convert, ConvertReport};
pub use diff::{diff, DiffReport, EntryDiff, StateDiff};
pub use entries::{write_entries, DecodedEntry, Decoders, EntriesOptions};
pub use error::{DumpError, EXIT_DATA, EXIT_OK, EXIT_USAGE};
pub use files::{list_files, CheckpointFiles, FilesReport, SavepointFiles, SharedFile};
pub use gc::{gc, parse_min_age, GcOutcome};
pub use open::{open_job_root, open_snapshot, JobRoot, Snapshot};
pub use progress::{progress_for_stderr, NoProgress, Progress, TerminalProgress};
pub use scan::{scan_operator, Entry};
pub use schema_decode::{hex, raw, Decoder};
pub use summary::{
    summarize, ChangelogSummary, OperatorStateSummary, OperatorSummary, StateSummary, Summary,
    FORMAT_VERSION,
};
pub use verify::{verify, Finding, VerifyReport};
