//! # Cairn
//!
//! State backends and snapshot storage for stream processors. This facade re-exports the
//! crates; see the README for the architecture and `format-spec/` for the bytes.

pub use cairn_core as core;
pub use cairn_format as format;
pub use cairn_hashmap as hashmap;
pub use cairn_runtime as runtime;
pub use cairn_storage as storage;
