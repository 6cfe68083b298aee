//! # cairn-format — Cairn's on-disk format, version 1
//!
//! Pure encode and decode of the files a Cairn snapshot consists of, with no I/O policy:
//!
//! - the **manifest** (`_metadata`, [`encode_manifest`] / [`decode_manifest`]): the
//!   checkpoint id and kind, and per operator uid its parallelism, max parallelism and per
//!   subtask the key-group range, keyed states with their codec identities, the files that
//!   hold them (with size and checksum) and the operator state;
//! - the **canonical state file** ([`StateFileWriter`] / [`StateFileReader`]): entries
//!   sorted by `(key group, state, key, namespace[, user key])` in zstd-compressed,
//!   CRC32-checked blocks that each hold one key group, indexed by key group so a reader
//!   touches only the key groups it restores;
//! - the canonical **list value** ([`encode_list`] / [`decode_list`]);
//! - the **changelog segment** ([`ChangelogSegmentWriter`] / [`ChangelogSegmentReader`]):
//!   the state changes a changelog backend records between materializations, in the order
//!   they happened, each record carrying its key group, in CRC32-checked blocks that say
//!   which key groups they hold (the writer writes version 2, readers also read version 1).
//!
//! Readers never panic and never allocate more than the input justifies: every length is
//! checked against the bytes that remain before anything is allocated, and every damaged
//! byte is a [`FormatError::Corrupt`] naming the file and the offset. A file written by a
//! newer format version is a [`FormatError::UnsupportedVersion`] that says which version
//! this build reads.
//!
//! The normative byte layout is `format-spec/README.md` in the repository; the golden
//! vectors in `format-spec/vectors/` pin it.
//!
//! ```
//! use bytes::Bytes;
//! use cairn_core::{KeyGroupRange, StateKind};
//! use cairn_format::{EntryRef, FileState, StateFileReader, StateFileWriter};
//!
//! let mut w = StateFileWriter::new(vec![FileState { name: "count".into(), kind: StateKind::Value }])?;
//! for (kg, key) in [(3, b"a"), (3, b"b"), (7, b"c")] {
//!     w.add(&EntryRef { key_group: kg, state: 0, key, namespace: b"", user_key: None, value: b"1" })?;
//! }
//! let bytes = w.finish()?;
//!
//! let r = StateFileReader::open(Bytes::from(bytes), "chk-1/state-0")?;
//! let mut keys = Vec::new();
//! r.scan(KeyGroupRange::new(0, 5), |e| -> Result<(), cairn_format::FormatError> {
//!     keys.push(e.key.to_vec());
//!     Ok(())
//! })?;
//! assert_eq!(keys, [b"a".to_vec(), b"b".to_vec()]);
//! # Ok::<(), cairn_format::FormatError>(())
//! ```
//!
//! ## Why a hand-written binary encoding?
//!
//! A serde format would tie the bytes to a crate's version and to Rust type layouts. The
//! format is meant to outlive every program that writes it, be read by tools in other
//! languages and be fuzzed: so every field is spelled out in the spec, with a byte table,
//! and the code mirrors the tables.

mod block;
mod changelog;
mod changelog_chunk;
mod changelog_reader;
mod codec;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod list;
mod manifest;
mod manifest_body;
mod manifest_codec;
mod state_file;
mod state_reader;

pub use changelog::{
    encode_changelog_record, encode_changelog_record_v2, ChangelogOp, ChangelogRecord,
    ChangelogSegmentWriter, SegmentBlock, CHANGELOG_MAGIC,
};
pub use changelog_chunk::ChangelogChunk;
pub use changelog_reader::ChangelogSegmentReader;
pub use error::FormatError;
pub use list::{decode_list, encode_list};
pub use manifest::{
    decode_manifest, encode_manifest, Manifest, OperatorManifest, SubtaskManifest,
    MANIFEST_FILE_NAME, MANIFEST_MAGIC, MAX_MANIFEST_LEN,
};
pub use state_file::{
    EntryRef, FileState, KeyGroupStats, StateFileWriter, MAX_BLOCK_LEN, STATE_FILE_MAGIC,
    TARGET_BLOCK_LEN,
};
pub use state_reader::StateFileReader;
