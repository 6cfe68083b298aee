//! Every single-bit flip and every truncation of every golden vector is detected: a typed
//! error, never a panic, never a successful decode.

mod common;

use std::time::Instant;

use common::*;

fn assert_rejected(kind: FileKind, bytes: &[u8], what: &str) {
    let outcome = std::panic::catch_unwind(|| decode(kind, bytes, "v"));
    match outcome {
        Ok(Err(_)) => {}
        Ok(Ok(())) => panic!("{what}: decoded successfully"),
        Err(_) => panic!("{what}: decoder panicked"),
    }
}

fn every_bit_flip(v: &Vector) {
    let mut b = v.bytes.clone();
    for i in 0..b.len() {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            assert_rejected(v.kind, &b, &format!("{}: flip byte {i} bit {bit}", v.name));
            b[i] ^= 1 << bit;
        }
    }
}

fn every_truncation(v: &Vector) {
    for cut in 0..v.bytes.len() {
        assert_rejected(
            v.kind,
            &v.bytes[..cut],
            &format!("{}: truncated at {cut}", v.name),
        );
    }
}

#[test]
fn every_bit_flip_of_every_file_is_detected() {
    let start = Instant::now();
    for v in valid_vectors() {
        // A list value is not a file: it lives inside a state file's data block, whose CRC
        // covers it, and has no checksum of its own (format-spec/README.md, "List value").
        if v.kind == FileKind::ListValue {
            continue;
        }
        decode(v.kind, &v.bytes, &v.name).unwrap();
        every_bit_flip(&v);
    }
    eprintln!("bit flips checked in {:?}", start.elapsed());
}

#[test]
fn every_truncation_of_every_vector_is_detected() {
    for v in valid_vectors() {
        every_truncation(&v);
    }
}

#[test]
fn appended_bytes_are_detected() {
    for v in valid_vectors() {
        let mut b = v.bytes.clone();
        b.push(0);
        assert_rejected(v.kind, &b, &format!("{}: one byte appended", v.name));
    }
}

/// The footer's reserved field (10 bytes before the end, past the footer's CRC, which
/// covers the header's) is reported at its own offset when it is not zero. Before, it was
/// reported at the header's reserved field (offset 12).
#[test]
fn a_set_footer_reserved_field_is_reported_where_it_is() {
    for v in valid_vectors() {
        if v.kind != FileKind::StateFile {
            continue;
        }
        let at = v.bytes.len() - 10;
        let mut b = v.bytes.clone();
        b[at] ^= 1;
        let msg = decode(v.kind, &b, "v")
            .expect_err("a reserved bit set")
            .to_string();
        assert!(
            msg.contains("reserved footer field") && msg.contains(&format!("offset={at}")),
            "{}: byte {at}: {msg}",
            v.name
        );
    }
}
