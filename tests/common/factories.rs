//! The backend factories the suites run with.

use cairn_core::{Codec, KeyGroupRange};
use cairn_hashmap::{HashMapBackend, HashMapConfig};

use super::harness::BackendFactory;

/// Heap backends.
pub struct HashMapFactory;

impl BackendFactory for HashMapFactory {
    type Backend = HashMapBackend;
    fn create(&self, uid: &str, max_parallelism: u32, range: KeyGroupRange) -> HashMapBackend {
        HashMapBackend::new(HashMapConfig {
            uid: uid.to_string(),
            max_parallelism,
            key_group_range: range,
            key_codec: super::schema::key_codec().identity().clone(),
        })
        .expect("create hashmap backend")
    }
}
