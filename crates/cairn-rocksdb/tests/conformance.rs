//! The cross-crate conformance suite (`tests/common/conformance.rs` of the workspace), run
//! by the RocksDB backend with the write-back cache on (the default), tiny (constant
//! evictions) and off.
//!
//! The suite reads incremental checkpoints back with `harness::canonical_entries`, which
//! reads canonical state files only; so the full suite runs with
//! `native_incremental: false`, and the `native` module runs every test that does not read
//! an incremental checkpoint's files with native incremental checkpoints (the default).
//! `tests/native.rs` covers native checkpoints in depth.

#[path = "../../../tests/common/mod.rs"]
mod common;
mod rocks_factory;

use rocks_factory::RocksFactory;

mod cached {
    use super::common;
    crate::conformance_tests!(super::RocksFactory::canonical(1 << 16));
}

mod tiny_cache {
    use super::common;
    crate::conformance_tests!(super::RocksFactory::canonical(2));
}

mod uncached {
    use super::common;
    crate::conformance_tests!(super::RocksFactory::canonical(0));
}

mod native {
    use super::common;
    crate::conformance_tests!(@each super::RocksFactory::default();
        value_state, list_state, map_state, reducing_and_aggregating_state,
        namespaces_are_isolated, registration_rules, key_and_range_errors,
        snapshot_and_restore_every_kind, snapshot_is_isolated_from_later_writes,
        cancelled_async_phase_fails,
        incremental_after_full_checkpoint_and_retention,
        restore_from_another_max_parallelism_is_refused_not_empty,
        restore_from_handles_that_leave_key_groups_uncovered_is_refused,
        incremental_checkpoint_in_flight_across_a_full_checkpoint_survives_retention,
        unregistered_restored_state_is_kept, restore_checks_codecs, keys_iteration);
}
