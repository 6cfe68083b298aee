//! The golden vectors in `format-spec/vectors/` pin the exact bytes of format v1: each is
//! regenerated from code and compared byte for byte, and each committed file must decode to
//! what the code says (or fail with the pinned error).
//!
//! Regenerate after an intended format change with
//! `CAIRN_REGENERATE_VECTORS=1 cargo test -p cairn-format --test golden`.

mod common;

use std::fs;

use bytes::Bytes;
use cairn_core::KeyGroupRange;
use cairn_format::{decode_list, decode_manifest, FormatError, StateFileReader};
use common::*;

fn regenerate() -> bool {
    std::env::var_os("CAIRN_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// With `CAIRN_REGENERATE_VECTORS=1`, this test rewrites every vector (and the other tests
/// of this file do nothing, so they never read a half-written directory).
#[test]
fn regenerate_vectors() {
    if !regenerate() {
        return;
    }
    let write = |name: &str, bytes: &[u8]| {
        let path = vectors_dir().join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
    };
    for v in valid_vectors() {
        write(&v.name, &v.bytes);
    }
    let mut errors = String::new();
    for c in corrupt_vectors() {
        write(&c.vector.name, &c.vector.bytes);
        let e = decode(
            c.vector.kind,
            &c.vector.bytes,
            &format!("vectors/{}", c.vector.name),
        )
        .expect_err(&c.vector.name);
        errors.push_str(&format!("{}: {e}\n", c.vector.name));
    }
    write("corrupt/errors.txt", errors.as_bytes());
}

fn check_bytes(name: &str, bytes: &[u8]) {
    let path = vectors_dir().join(name);
    let committed = fs::read(&path).unwrap_or_else(|e| {
        panic!("missing vector {name} ({e}); run with CAIRN_REGENERATE_VECTORS=1")
    });
    if committed != bytes {
        let at = committed
            .iter()
            .zip(bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(committed.len().min(bytes.len()));
        panic!(
            "vector {name} differs from what the code writes at byte {at} (committed {} bytes, code {} bytes); \
             if the format change is intended, bump the version or regenerate with CAIRN_REGENERATE_VECTORS=1",
            committed.len(),
            bytes.len()
        );
    }
}

fn read(name: &str) -> Vec<u8> {
    fs::read(vectors_dir().join(name)).unwrap()
}

#[test]
fn valid_vectors_are_byte_exact() {
    if regenerate() {
        return;
    }
    for v in valid_vectors() {
        assert!(
            v.bytes.len() <= 3 * 1024,
            "vector {} too large: {}",
            v.name,
            v.bytes.len()
        );
        check_bytes(&v.name, &v.bytes);
    }
}

#[test]
fn corrupt_vectors_are_byte_exact_and_fail_as_pinned() {
    if regenerate() {
        return;
    }
    let mut errors = String::new();
    for c in corrupt_vectors() {
        check_bytes(&c.vector.name, &c.vector.bytes);
        let path = format!("vectors/{}", c.vector.name);
        let e = decode(c.vector.kind, &read(&c.vector.name), &path).expect_err(&c.vector.name);
        assert!(
            c.expect.matches(&e),
            "{}: expected {:?}, got {e}",
            c.vector.name,
            c.expect
        );
        errors.push_str(&format!("{}: {e}\n", c.vector.name));
    }
    check_bytes("corrupt/errors.txt", errors.as_bytes());
}

#[test]
fn committed_savepoint_decodes_to_the_logical_content() {
    if regenerate() {
        return;
    }
    let m = decode_manifest(&read("savepoint/_metadata"), "savepoint/_metadata").unwrap();
    assert_eq!(m, savepoint_manifest());
    // Every referenced file exists in the savepoint directory with the recorded size and
    // checksum, and holds exactly the entries of its subtask.
    for (i, st) in m.operators[0].subtasks.iter().enumerate() {
        let handle = st.keyed.as_ref().unwrap();
        let f = handle.files().next().unwrap();
        let bytes = read(&format!("savepoint/{}", f.name));
        assert_eq!(
            (bytes.len() as u64, crc32fast::hash(&bytes)),
            (f.size, f.crc32)
        );
        let r = StateFileReader::open(Bytes::from(bytes), &f.name).unwrap();
        assert_eq!(r.states(), file_states());
        let mut got = Vec::new();
        r.scan(
            KeyGroupRange::all(MAX_PARALLELISM),
            |e| -> Result<(), FormatError> {
                got.push((
                    e.key_group,
                    e.state,
                    e.key.to_vec(),
                    e.namespace.to_vec(),
                    e.user_key.map(<[u8]>::to_vec),
                    e.value.to_vec(),
                ));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got, entries(i as u32));
        assert!(r
            .key_groups()
            .iter()
            .all(|k| handle.key_group_range.contains(k.key_group)));
    }
    let m = decode_manifest(&read("checkpoint-incremental.manifest"), "c").unwrap();
    assert_eq!(m, checkpoint_manifest());
    let m = decode_manifest(&read("checkpoint-native.manifest"), "n").unwrap();
    assert_eq!(m, native_manifest());
    let r = StateFileReader::open(Bytes::from(read("empty.state")), "empty.state").unwrap();
    assert!(r.key_groups().is_empty());
    r.verify_all().unwrap();
    assert_eq!(
        decode_list(&read("list-value.bin")).unwrap(),
        vec![&b"first"[..], b"", b"third element"]
    );
}

#[test]
fn savepoint_vector_uses_both_block_encodings() {
    if regenerate() {
        return;
    }
    // The vectors must exercise zstd and stored blocks: the compression byte of each data
    // block is at its offset in the index.
    let bytes = read("savepoint/counter-0.state");
    let r = StateFileReader::open(Bytes::from(bytes.clone()), "s").unwrap();
    let kgs = r.key_groups();
    assert!(kgs.len() >= 2);
    let mut codecs = std::collections::BTreeSet::new();
    let mut offset = 16 + 20 + 30 + 4; // header, state table block (30-byte payload)
    for k in kgs {
        codecs.insert(bytes[offset]);
        offset += k.bytes as usize;
    }
    assert_eq!(
        codecs,
        [0u8, 1].into_iter().collect(),
        "compression codes used"
    );
}
