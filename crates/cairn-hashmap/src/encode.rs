//! Canonical entries of one key group, encoded into an arena and sorted in file order.

use std::cmp::Ordering;

use cairn_core::{Codec, CodecError, KeyGroup};
use cairn_format::{encode_list, EntryRef, FormatError, StateFileWriter};

/// A byte range in an arena.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: usize,
    end: usize,
}

impl Span {
    #[inline]
    pub(crate) fn of<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start..self.end).unwrap_or(&[])
    }
}

/// Appends `bytes` to `buf` and returns their span.
pub(crate) fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) -> Span {
    let start = buf.len();
    buf.extend_from_slice(bytes);
    Span {
        start,
        end: buf.len(),
    }
}

/// Appends what `f` writes to `buf` and returns its span.
pub(crate) fn push_with<E>(
    buf: &mut Vec<u8>,
    f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Span, E> {
    let start = buf.len();
    f(buf)?;
    Ok(Span {
        start,
        end: buf.len(),
    })
}

/// The part shared by every canonical entry of one `(state, key, namespace)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head {
    pub(crate) state: u32,
    pub(crate) key: Span,
    pub(crate) ns: Span,
}

#[derive(Clone, Copy, Debug)]
struct Encoded {
    head: Head,
    user_key: Option<Span>,
    value: Span,
}

/// The encoded entries of one key group of every state of a snapshot.
#[derive(Debug, Default)]
pub(crate) struct KgBuffer {
    /// The arena every span points into.
    pub(crate) buf: Vec<u8>,
    /// Scratch space for list elements.
    scratch: Vec<u8>,
    /// Scratch spans for list elements.
    spans: Vec<Span>,
    items: Vec<Encoded>,
}

impl KgBuffer {
    /// Empties the buffer, keeping its capacity.
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    /// Starts the entries of `(state, key, namespace)`; `encode_ns` appends the namespace.
    pub(crate) fn head(
        &mut self,
        state: u32,
        key: &[u8],
        encode_ns: impl FnOnce(&mut Vec<u8>) -> Result<(), CodecError>,
    ) -> Result<Head, CodecError> {
        let key = push_bytes(&mut self.buf, key);
        let ns = push_with(&mut self.buf, encode_ns)?;
        Ok(Head { state, key, ns })
    }

    /// Adds one canonical entry.
    pub(crate) fn push(&mut self, head: Head, user_key: Option<Span>, value: Span) {
        self.items.push(Encoded {
            head,
            user_key,
            value,
        });
    }

    /// Adds the entry of a list: the canonical list encoding of its elements.
    pub(crate) fn push_list<V: 'static>(
        &mut self,
        head: Head,
        elements: &[V],
        codec: &dyn Codec<V>,
    ) -> Result<(), CodecError> {
        self.scratch.clear();
        self.spans.clear();
        for e in elements {
            let span = push_with(&mut self.scratch, |b| codec.encode(e, b))?;
            self.spans.push(span);
        }
        let (scratch, spans) = (&self.scratch, &self.spans);
        let value = push_with(&mut self.buf, |b| {
            encode_list(spans.iter().map(|s| s.of(scratch)), b);
            Ok::<(), CodecError>(())
        })?;
        self.push(head, None, value);
        Ok(())
    }

    /// Sorts the entries by `(state, key, namespace, user key)` and appends them to `writer`
    /// as key group `kg`.
    pub(crate) fn write_sorted(
        &mut self,
        kg: KeyGroup,
        writer: &mut StateFileWriter,
    ) -> Result<(), FormatError> {
        let buf = &self.buf;
        self.items.sort_unstable_by(|a, b| compare(buf, a, b));
        for e in &self.items {
            writer.add(&EntryRef {
                key_group: kg,
                state: e.head.state,
                key: e.head.key.of(buf),
                namespace: e.head.ns.of(buf),
                user_key: e.user_key.map(|s| s.of(buf)),
                value: e.value.of(buf),
            })?;
        }
        Ok(())
    }
}

fn compare(buf: &[u8], a: &Encoded, b: &Encoded) -> Ordering {
    a.head
        .state
        .cmp(&b.head.state)
        .then_with(|| a.head.key.of(buf).cmp(b.head.key.of(buf)))
        .then_with(|| a.head.ns.of(buf).cmp(b.head.ns.of(buf)))
        .then_with(|| {
            a.user_key
                .map(|s| s.of(buf))
                .cmp(&b.user_key.map(|s| s.of(buf)))
        })
}
