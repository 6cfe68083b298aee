//! # cairn-storage — checkpoint and savepoint storage
//!
//! Where Cairn's snapshot bytes go: one implementation over the [`object_store`] crate for
//! memory, the local file system and S3 (`s3://bucket/prefix`, cargo feature `s3`, on by
//! default; GCS and Azure behind the features `gcp` and `azure`, or with a store you build). It lays out a job's checkpoint directory, publishes a checkpoint by writing its
//! manifest last, discovers the latest completed checkpoint, retains the newest N, and
//! garbage-collects subsumed checkpoints and unreferenced shared files. Savepoints are
//! self-contained directories written with [`create_savepoint`] and read with
//! [`open_savepoint`]. Backends write through [`CheckpointWriter`] / [`SavepointWriter`]
//! (`cairn_core::SnapshotTarget`) and restore reads through [`CheckpointSource`] /
//! [`SavepointSource`] (`cairn_core::SnapshotSource`). The manifest's bytes are specified in
//! `format-spec/` and encoded by `cairn-format`.
//!
//! ```
//! use cairn_core::{FileArea, SnapshotType};
//! use cairn_format::Manifest;
//! use cairn_storage::CheckpointStorage;
//!
//! # fn main() -> Result<(), cairn_storage::StorageError> {
//! let storage = CheckpointStorage::open("memory://")?;
//! let id = storage.next_checkpoint_id()?; // 1 in an empty directory
//! let writer = storage.begin_checkpoint(id)?;
//! let file = writer.write(FileArea::Private, "counter/0.state", b"state bytes".to_vec())?;
//! assert_eq!(file.size, 11);
//! // Nothing is complete until the manifest is published.
//! assert!(storage.latest_completed()?.is_none());
//! let manifest = Manifest {
//!     checkpoint_id: id,
//!     snapshot_type: SnapshotType::Checkpoint,
//!     timestamp_ms: 0,
//!     operators: vec![],
//! };
//! storage.publish(writer, &manifest)?;
//! assert_eq!(storage.completed_checkpoints()?, vec![id]);
//! assert_eq!(storage.latest_completed()?, Some(manifest));
//! let bytes = storage.source(id).read(&file)?;
//! assert_eq!(&bytes[..], b"state bytes");
//! # Ok(())
//! # }
//! ```
//!
//! ## Layout
//!
//! ```text
//! <root>/shared/<name>          files several checkpoints may reference (content-named)
//! <root>/chk-<id>/<name>        files owned by checkpoint <id> alone
//! <root>/chk-<id>/_metadata     its manifest, written last: the checkpoint exists iff this
//!                               exists and decodes
//! <root>/_lock                  local directories: the running job's lock (see
//!                               CheckpointStorage::lock_for_job)
//! <savepoint-dir>/_metadata     + all its files, names relative to the directory
//! ```
//!
//! `<root>` is one job's checkpoint directory (`<root>/<job>` in the design's terms). Names
//! are `cairn_core::is_valid_file_name` names; `_metadata` is reserved in private areas.
//!
//! ## Why object_store?
//!
//! A checkpoint needs only whole-object puts, gets, listings and deletes, never in-place
//! updates or appends, so the object-store model fits every target and one implementation
//! serves memory, local disk and cloud stores alike, with the same crash semantics: a put is
//! atomic (all or nothing), so a reader sees a file completely or not at all. Atomic publish
//! therefore needs no rename: every data file is put first, the manifest is put last, and a
//! crash at any point leaves either no manifest (the checkpoint is incomplete and invisible
//! to discovery) or a complete one. A manifest that exists but does not decode (torn by a
//! non-atomic store, corrupt, or from a newer version) counts as "not complete" and is
//! reported by [`CheckpointStorage::scan`] and [`GcReport::corrupt`].
//!
//! ## Durability on local disk
//!
//! What `object_store` 0.14.2's `local.rs` does: `put` writes a staging file `<name>#<n>`
//! next to the target and renames (or, for create-only puts, hard-links) it into place, which
//! is atomic. Its fsyncs are **off by default**: only `LocalFileSystem::with_fsync(true)`
//! (new in the 0.14 line) makes `put`/`copy`/`rename`/multipart-complete `sync_all` the staged
//! file before the rename and fsync the destination's parent directory after it, and fsync
//! every directory it creates up to the first existing one. Deletes are never fsynced, and
//! directory fsyncs are a no-op outside Unix. Staging files left by a crash are skipped by its
//! listings (names ending in `#<digits>`).
//!
//! What this crate adds: [`CheckpointStorage::open`] and [`create_savepoint`] build the
//! `LocalFileSystem` themselves, with `with_fsync(true)`, so write temp → fsync → rename →
//! fsync directory holds for every data file and manifest; they fsync the parent of a root
//! directory they create; when a checkpoint is deleted they fsync its directory after
//! removing `_metadata` and before removing its other files (otherwise a power loss could
//! resurrect a manifest whose files are gone); and they remove whole local checkpoint
//! directories, including staging files of interrupted puts. A store passed to
//! [`CheckpointStorage::from_store`] is used as is: enable `with_fsync(true)` on a
//! `LocalFileSystem` yourself. Cloud stores acknowledge a put only once it is durable.
//!
//! ## Checkpoint ids, retention and GC
//!
//! - Checkpoint ids are strictly increasing within a job directory:
//!   [`CheckpointStorage::begin_checkpoint`] refuses an id below
//!   [`CheckpointStorage::next_checkpoint_id`] (one more than the largest `chk-<id>`
//!   directory, complete or not, and than any id begun in this process).
//! - [`CheckpointStorage::retain`] keeps the newest N completed checkpoints and deletes older
//!   ones (manifest first), and incomplete directories older than the newest completed one
//!   that are not in flight in this process (an incomplete directory newer than it may be a
//!   checkpoint in flight elsewhere and is kept).
//! - A shared file is deleted only when no retained complete manifest references it and no
//!   checkpoint in flight in this process writes or references it
//!   ([`CheckpointWriter::reference_shared`] registers a reused file). A writer registers a
//!   shared name before putting it, and GC re-checks and deletes under the same lock. If a
//!   kept checkpoint's manifest cannot be read, no shared file is deleted.
//! - GC is derived from the manifests that exist, so an interrupted GC is simply run again.
//!   Offline GC (`state-dump gc`) assumes that no job is running on the directory: files a
//!   job in another process is writing are not protected.
//!
//! ## Object stores (S3)
//!
//! `s3://bucket/prefix` is opened with `object_store`'s `AmazonS3Builder::from_env()` plus
//! the URL, so the usual variables apply: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT` (an S3-compatible server) and
//! `AWS_ALLOW_HTTP=true` for an `http://` endpoint. Opening fails with
//! [`StorageError::StoreConfig`], naming the URL and the missing variable, when no
//! credentials are configured or an `http://` endpoint is not allowed; instance-metadata
//! credentials are used only when `AWS_METADATA_ENDPOINT` is set. The bucket must exist.
//!
//! Files larger than 8 MiB are written with a multipart upload in 8 MiB parts (four in
//! flight); the object appears only when the upload completes, so a put stays all or
//! nothing. A failed upload is aborted, which deletes its parts; if the abort fails too
//! ([`StorageError::MultipartAbort`]) the parts stay until a bucket lifecycle rule removes
//! them. The S3 client is reqwest with rustls (aws-lc-rs crypto, built from C source by
//! cargo with a C compiler; no OpenSSL).
//!
//! ## Threading
//!
//! The API is blocking, for task and snapshot threads. Every storage operation is spawned on
//! a tokio runtime that this crate owns, shared by all storages in the process (two worker
//! threads), and the calling thread waits for it: HTTP connections, part uploads and local
//! file I/O run on that runtime's threads, and a caller needs no runtime of its own. The
//! wait parks the calling thread, so a call neither panics nor deadlocks inside another
//! tokio runtime; from async code, call it through `spawn_blocking` (from an async task it
//! would hold that task's worker thread until the I/O is done). `memory://` opens a fresh
//! in-memory store each time; share one with [`CheckpointStorage::from_store`].
//!
//! [`fault`] holds a fault-injecting store for crash tests.

mod checkpoint;
mod cloud;
mod error;
pub mod fault;
mod gc;
mod job;
mod layout;
mod lock;
mod registry;
mod savepoint;
mod store;
mod upload;

pub use checkpoint::{CheckpointSource, CheckpointStatus, CheckpointStorage, CheckpointWriter};
pub use error::StorageError;
pub use gc::GcReport;
pub use job::{
    assemble_manifest, keyed_handles_for, restore_subtask, snapshot_operator, write_savepoint,
    PendingOperator, SubtaskRef,
};
pub use layout::DISCARD_MARKER_NAME;
pub use lock::{DirectoryLock, LOCK_FILE_NAME};
pub use savepoint::{
    create_savepoint, create_savepoint_in, discard_savepoint, discard_savepoint_in, open_savepoint,
    open_savepoint_in, open_snapshot, snapshot_dir, OpenedSnapshot, SavepointSource,
    SavepointWriter,
};
