//! Shared test code: the test schema, the snapshot harness and the conformance suite.
#![allow(dead_code, unreachable_pub, missing_debug_implementations)]

pub mod conformance;
pub mod evolution;
pub mod factories;
pub mod harness;
pub mod model;
pub mod schema;
