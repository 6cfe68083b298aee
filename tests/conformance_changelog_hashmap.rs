//! The backend conformance suite, run unchanged by the heap backend wrapped in a changelog
//! backend (segments and materializations written by the checkpoints).

mod common;

conformance_tests!(common::factories::ChangelogFactory::new(
    common::factories::HashMapFactory
));
