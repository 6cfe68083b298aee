/// Errors of encoding and decoding (every decode error names the file and, where it has
/// one, the byte offset).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes are not what the format says (bad magic, checksum mismatch, bad length,
    /// truncation, unsorted entries, out-of-range values...).
    #[error("corrupt {kind}: {detail} path={path} offset={offset}")]
    Corrupt {
        /// `manifest`, `state file` or `list value`.
        kind: &'static str,
        /// The file (empty for a list value, which is decoded without its file).
        path: String,
        /// Where in the file (for a list value: where in the value).
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// A version this build does not read.
    #[error("unsupported {kind} version {found}: this build reads version {supported}; upgrade cairn to read it path={path}")]
    UnsupportedVersion {
        /// `manifest` or `state file`.
        kind: &'static str,
        /// The file.
        path: String,
        /// The version in the file.
        found: u16,
        /// What this build reads.
        supported: &'static str,
    },
    /// A file of a supported version uses a feature this build does not know: an unknown
    /// required feature flag, or an unknown tag where the format reserves room for
    /// additions (e.g. a new kind of keyed data).
    #[error("unsupported {kind} feature: {detail}; upgrade cairn to read it path={path} offset={offset}")]
    UnsupportedFeature {
        /// `manifest` or `state file`.
        kind: &'static str,
        /// The file.
        path: String,
        /// Where in the file.
        offset: u64,
        /// Which feature.
        detail: String,
    },
    /// Invalid input to an encoder (unsorted entries, invalid names, limits).
    #[error("cannot encode {kind}: {detail}")]
    Invalid {
        /// `manifest` or `state file`.
        kind: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl FormatError {
    /// Whether the error says the bytes are damaged ([`FormatError::Corrupt`]), as opposed
    /// to written by a newer build or rejected on encode.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, FormatError::Corrupt { .. })
    }
}
