//! The backend conformance suite, run by the heap backend.

mod common;

conformance_tests!(common::factories::HashMapFactory);
