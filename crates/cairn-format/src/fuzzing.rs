//! Fuzzing support, compiled only under `cfg(fuzzing)` (set by `cargo fuzz`).

use std::sync::atomic::{AtomicBool, Ordering};

static SKIP_CHECKSUMS: AtomicBool = AtomicBool::new(false);

/// Makes every CRC32 comparison succeed (`true`) so the fuzzer reaches the parsers behind
/// the checksums, or restores checking (`false`, the default). Only in fuzz builds.
pub fn set_skip_checksums(skip: bool) {
    SKIP_CHECKSUMS.store(skip, Ordering::Relaxed);
}

pub(crate) fn skip_checksums() -> bool {
    SKIP_CHECKSUMS.load(Ordering::Relaxed)
}
