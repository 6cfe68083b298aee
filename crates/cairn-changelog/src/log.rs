//! The record log: the task thread's buffer and the encoding of segments behind it.
//!
//! The task thread appends each record, in arrival order, to one [`ChangelogChunk`] of
//! about [`CHUNK_BYTES`] (the record encoded with its key group, the chunk noting which ops
//! each state used and the key-group bounds). A full chunk is handed off to the segment's
//! encoder and replaced by an emptied one from a small pool in [`Shared`]; the open
//! segment's name is assigned when its first chunk (or its seal) goes out. Sealing hands
//! off the last partial chunk and closes the segment, in O(1).
//!
//! The encoder ([`Encoder`]), on the backend's background thread ([`spawn_worker`]), owns
//! the open segment's [`ChangelogSegmentWriter`]: it writes each chunk as one compressed
//! block (checked against the state table from the chunk's op masks, without decoding),
//! returns the chunk to the pool, and on the seal finishes the file and records it in
//! [`Shared`] (failures included, which the checkpoint that needs the segment reports).
//! If the thread cannot be started, the task thread runs the same encoder itself.
//!
//! Backpressure: a chunk's bytes count as in flight from its hand-off until the encoder
//! has written it ([`Shared::reserve`]); a hand-off that would take them past the
//! configured bound waits. With a storage the same thread uploads each sealed segment, so
//! a slow storage holds the chunks behind the upload back too, and the bound covers it.
//!
//! Why arrival order (segment format version 2) rather than blocks grouped by key group:
//! grouping needs the whole segment buffered by key group (it used a 4 MiB buffer per key
//! group), and those buffers cost the task thread about a quarter of its throughput.
//! Measured on W1 f-hashmap (parallelism 1, materialization off, 5 alternated runs), as a
//! ratio to W1 a (the heap backend without checkpoints): 0.60 with the per-key-group
//! buffers, 0.75-0.79 with one recycled 64 KiB chunk compressed in the background, and
//! still 0.62 when the grouped buffers were kept only on the background thread (their
//! footprint evicts the task's data from the shared L3). A reader replays a segment in
//! file order and filters the records by key group; each block names its key-group range,
//! so a restore skips the blocks of other key groups without decompressing them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use cairn_core::CancelToken;
use cairn_format::{
    ChangelogChunk, ChangelogRecord, ChangelogSegmentWriter, FileState, FormatError,
};

use crate::shared::{InFlight, Shared};

/// A chunk is handed off once it holds this many encoded bytes.
pub(crate) const CHUNK_BYTES: usize = 64 << 10;

/// What a chunk is allocated with: room for the record that crosses [`CHUNK_BYTES`]. A
/// chunk that grew beyond it (a larger record) is not recycled.
pub(crate) const CHUNK_CAPACITY: usize = CHUNK_BYTES + (16 << 10);

/// Empty chunks the pool in [`Shared`] keeps, at most.
pub(crate) const POOLED_CHUNKS: usize = 16;

/// A segment's state table.
pub(crate) type States = Arc<Vec<FileState>>;

/// What an [`Encoder`] is told, in the order it happened on the task thread.
#[derive(Debug)]
pub(crate) enum Work {
    /// Segment `name` opens; its first record has sequence number `first_sqn`.
    Open {
        name: Arc<str>,
        first_sqn: u64,
        states: States,
    },
    /// The next records of segment `name`; `states` is the table they refer to (the
    /// segment's, possibly extended since).
    Chunk {
        name: Arc<str>,
        states: States,
        chunk: ChangelogChunk,
        /// Its bytes, counted in flight until the work is done.
        in_flight: InFlight,
    },
    /// Segment `name` has all its records: finish it and record it in [`Shared`].
    Seal { name: Arc<str>, states: States },
}

impl Work {
    fn name(&self) -> &Arc<str> {
        match self {
            Work::Open { name, .. } | Work::Chunk { name, .. } | Work::Seal { name, .. } => name,
        }
    }
}

/// Where a [`LogBuffer`]'s work goes.
#[derive(Debug)]
pub(crate) enum Sink {
    /// The background thread ([`spawn_worker`]); the sink that started it holds its handle.
    Worker(mpsc::Sender<Work>, Option<JoinHandle<()>>),
    /// An encoder on this thread (the background thread could not be started).
    Inline(Encoder),
}

impl Sink {
    fn send(&mut self, shared: &Arc<Shared>, work: Work) {
        let work = match self {
            Sink::Worker(tx, _) => match tx.send(work) {
                Ok(()) => return,
                // The worker is gone (it only ends when the channel closes, so this is
                // defence): encode here from now on. The segments it had open fail, and
                // so does this one unless this opens it.
                Err(mpsc::SendError(work)) => {
                    *self = Sink::Inline(Encoder::new(shared.clone()));
                    work
                }
            },
            Sink::Inline(_) => work,
        };
        if let Sink::Inline(encoder) = self {
            encoder.handle(work);
        }
    }

    /// A sink to the same worker, or another inline encoder.
    fn fork(&self, shared: &Arc<Shared>) -> Sink {
        match self {
            Sink::Worker(tx, _) => Sink::Worker(tx.clone(), None),
            Sink::Inline(_) => Sink::Inline(Encoder::new(shared.clone())),
        }
    }
}

/// Starts the background thread that encodes segments and, with a storage, uploads them;
/// returns the sink for its work (an inline encoder if the thread cannot be started). The
/// thread ends once every sender is gone (the backend dropped, [`LogBuffer::close`]),
/// after the work queued.
pub(crate) fn spawn_worker(shared: Arc<Shared>) -> Sink {
    let (tx, rx) = mpsc::channel::<Work>();
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("cairn-changelog-{}", shared.uid.replace('\0', "_")))
        .spawn(move || run_worker(thread_shared, rx));
    match spawned {
        Ok(handle) => Sink::Worker(tx, Some(handle)),
        Err(_) => Sink::Inline(Encoder::new(shared)),
    }
}

fn run_worker(shared: Arc<Shared>, rx: mpsc::Receiver<Work>) {
    let mut encoder = Encoder::new(shared.clone());
    for work in rx {
        let name = work.name().clone();
        // A panic fails the segment rather than the thread (whose segments would wait
        // for it forever).
        match catch_unwind(AssertUnwindSafe(|| encoder.handle(work))) {
            // Once the backend is closed, no checkpoint of it can need a segment that is
            // not uploaded yet (a pending one uploads what it needs itself).
            Ok(Some(done)) if shared.storage.is_some() && !shared.is_closed() => {
                // An upload error is retried by the checkpoint that needs the segment; a
                // panicking storage must not end the thread either (the segments queued
                // behind would never be written).
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    shared.make_durable(&done, None, &CancelToken::new(), 0)
                }));
            }
            Ok(_) => {}
            Err(_) => encoder.abandon(&name, "the encoder panicked"),
        }
    }
}

/// Writes segments from the [`Work`] it is given, in order; finished segments and failures
/// land in [`Shared`]. Segments still open when it is dropped fail.
#[derive(Debug)]
pub(crate) struct Encoder {
    shared: Arc<Shared>,
    /// Segments opened and not sealed yet (one at a time from a backend's log; a carry
    /// segment is written while the log has none open).
    open: Vec<Writing>,
}

/// A segment being written.
#[derive(Debug)]
struct Writing {
    name: Arc<str>,
    states: States,
    /// `None` once it failed (its later chunks are dropped).
    writer: Option<ChangelogSegmentWriter>,
    /// Encoded bytes of its records (before blocks and compression).
    raw: u64,
}

impl Writing {
    fn add(&mut self, states: &States, chunk: &ChangelogChunk) -> Result<(), FormatError> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        if !Arc::ptr_eq(&self.states, states) {
            w.set_states(states.as_ref().clone())?;
            self.states = states.clone();
        }
        w.add_chunk(chunk)?;
        self.raw += chunk.len_bytes() as u64;
        Ok(())
    }
}

impl Encoder {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            open: Vec::new(),
        }
    }

    /// Does `work`; returns the segment it finished, if it did.
    pub(crate) fn handle(&mut self, work: Work) -> Option<Arc<str>> {
        match work {
            Work::Open {
                name,
                first_sqn,
                states,
            } => {
                let writer = match ChangelogSegmentWriter::new(states.as_ref().clone(), first_sqn) {
                    Ok(w) => Some(w),
                    Err(e) => {
                        self.fail(&name, &e);
                        None
                    }
                };
                self.open.push(Writing {
                    name,
                    states,
                    writer,
                    raw: 0,
                });
                None
            }
            Work::Chunk {
                name,
                states,
                chunk,
                in_flight,
            } => {
                match self.open.iter_mut().find(|w| w.name == name) {
                    Some(seg) => {
                        if let Err(e) = seg.add(&states, &chunk) {
                            seg.writer = None;
                            let message = failure(&self.shared.uid, &name, &e);
                            self.shared.segment_failed(&name, message);
                        }
                    }
                    None => self.fail(&name, &"records of a segment that is not open"),
                }
                self.shared.recycle_chunk(chunk);
                drop(in_flight);
                None
            }
            Work::Seal { name, states } => {
                let Some(i) = self.open.iter().position(|w| w.name == name) else {
                    self.fail(&name, &"sealing a segment that is not open");
                    return None;
                };
                let seg = self.open.swap_remove(i);
                let mut w = seg.writer?;
                let bytes = if Arc::ptr_eq(&seg.states, &states) {
                    w.finish()
                } else {
                    w.set_states(states.as_ref().clone())
                        .and_then(|()| w.finish())
                };
                match bytes {
                    Ok(bytes) => {
                        self.shared.segment_encoded(&name, bytes, seg.raw);
                        Some(name)
                    }
                    Err(e) => {
                        self.fail(&name, &e);
                        None
                    }
                }
            }
        }
    }

    /// Fails segment `name` (whose work could not be done) and forgets it.
    fn abandon(&mut self, name: &Arc<str>, why: &str) {
        self.open.retain(|w| &w.name != name);
        self.fail(name, &why);
    }

    fn fail(&self, name: &str, e: &dyn std::fmt::Display) {
        self.shared
            .segment_failed(name, failure(&self.shared.uid, name, e));
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        for seg in std::mem::take(&mut self.open) {
            self.fail(
                &seg.name,
                &"the backend was dropped before the segment was sealed",
            );
        }
    }
}

/// The message of a segment's failure.
fn failure(uid: &str, name: &str, e: &dyn std::fmt::Display) -> String {
    format!("encoding changelog segment uid={uid} name={name}: {e}")
}

/// The records of the open segment: the chunks handed off and the current one.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    /// The records not handed off yet, in arrival order.
    chunk: ChangelogChunk,
    /// [`Self::push`] reports a full chunk once it holds this many bytes: [`CHUNK_BYTES`],
    /// or fewer when the segment reaches `segment_bytes` first.
    cut: usize,
    segment_bytes: usize,
    /// The open segment's name (a segment opens when its first chunk is handed off).
    open: Option<Arc<str>>,
    /// Bytes and records of the chunks handed off to the open segment.
    handed_bytes: usize,
    handed_records: u64,
    /// Sequence number of the open segment's first record.
    first_sqn: u64,
    shared: Arc<Shared>,
    sink: Sink,
}

/// A sealed segment.
#[derive(Debug)]
pub(crate) struct Sealed {
    pub(crate) name: Arc<str>,
    pub(crate) first_sqn: u64,
    pub(crate) records: u64,
    /// Encoded bytes of its records (before blocks and compression).
    pub(crate) bytes: usize,
}

impl LogBuffer {
    /// A buffer whose first record gets sequence number `first_sqn` and whose segments
    /// are written by `sink`; the caller seals a segment once it holds `segment_bytes`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        sink: Sink,
        first_sqn: u64,
        segment_bytes: usize,
    ) -> Self {
        Self {
            chunk: shared.take_chunk(),
            cut: CHUNK_BYTES.min(segment_bytes),
            segment_bytes,
            open: None,
            handed_bytes: 0,
            handed_records: 0,
            first_sqn,
            shared,
            sink,
        }
    }

    /// Ends the worker this buffer started, after the work queued, and waits for it (a
    /// buffer from [`Self::fork`] has nothing to wait for). Later work is encoded on the
    /// calling thread.
    pub(crate) fn close(&mut self) {
        let inline = Sink::Inline(Encoder::new(self.shared.clone()));
        if let Sink::Worker(tx, handle) = std::mem::replace(&mut self.sink, inline) {
            drop(tx);
            if let Some(handle) = handle {
                // A panic of the worker's own was caught per work item already.
                let _ = handle.join();
            }
        }
    }

    /// Another buffer whose segments the same encoder writes (the same worker).
    pub(crate) fn fork(&self, first_sqn: u64, segment_bytes: usize) -> Self {
        Self::new(
            self.shared.clone(),
            self.sink.fork(&self.shared),
            first_sqn,
            segment_bytes,
        )
    }

    /// Appends one record to the current chunk; `true` when the chunk is full (hand it
    /// off, or seal the segment if [`Self::len_bytes`] reached the segment size).
    // Inlined into `log_change`: per record, only the chunk's own push and a comparison.
    #[inline(always)]
    pub(crate) fn push(&mut self, r: &ChangelogRecord<'_>) -> bool {
        self.chunk.push(r);
        self.chunk.len_bytes() >= self.cut
    }

    /// Encoded bytes of the open segment's records (handed off or not).
    pub(crate) fn len_bytes(&self) -> usize {
        self.handed_bytes + self.chunk.len_bytes()
    }

    /// Records of the open segment (handed off or not).
    pub(crate) fn records(&self) -> u64 {
        self.handed_records + self.chunk.len() as u64
    }

    /// Hands the current chunk (if it holds records) to the encoder, opening the segment
    /// under the name `name` gives if it is not open yet; `states` is the table its records
    /// refer to.
    pub(crate) fn hand_off(&mut self, states: &States, name: impl FnOnce() -> String) {
        if self.chunk.is_empty() {
            return;
        }
        let name = self.open_segment(states, name);
        // Backpressure: waits while the encoder is too far behind.
        let in_flight = self.shared.reserve(self.chunk.len_bytes());
        let chunk = std::mem::replace(&mut self.chunk, self.shared.take_chunk());
        self.handed_bytes += chunk.len_bytes();
        self.handed_records += chunk.len() as u64;
        self.cut = CHUNK_BYTES.min(self.segment_bytes.saturating_sub(self.handed_bytes));
        self.sink.send(
            &self.shared,
            Work::Chunk {
                name,
                states: states.clone(),
                chunk,
                in_flight,
            },
        );
    }

    fn open_segment(&mut self, states: &States, name: impl FnOnce() -> String) -> Arc<str> {
        if let Some(open) = &self.open {
            return open.clone();
        }
        let name: Arc<str> = name().into();
        // Known before anyone can ask for it: a checkpoint waits until it is written.
        self.shared.open_segment(&name);
        self.sink.send(
            &self.shared,
            Work::Open {
                name: name.clone(),
                first_sqn: self.first_sqn,
                states: states.clone(),
            },
        );
        self.open = Some(name.clone());
        name
    }

    /// Seals the open segment (`None` when it has no records: no segment): hands off the
    /// last chunk, lets `hold` hold the segment (before it can be finished: an unheld
    /// segment is released when written) and has the encoder finish it with `states`. The
    /// buffer goes on at the next sequence number. O(1).
    pub(crate) fn seal(
        &mut self,
        states: &States,
        name: impl FnOnce() -> String,
        hold: impl FnOnce(&str),
    ) -> Option<Sealed> {
        self.hand_off(states, name);
        let name = self.open.take()?;
        let sealed = Sealed {
            name: name.clone(),
            first_sqn: self.first_sqn,
            records: self.handed_records,
            bytes: self.handed_bytes,
        };
        hold(&name);
        self.sink.send(
            &self.shared,
            Work::Seal {
                name,
                states: states.clone(),
            },
        );
        self.first_sqn += self.handed_records;
        self.handed_records = 0;
        self.handed_bytes = 0;
        self.cut = CHUNK_BYTES.min(self.segment_bytes);
        Some(sealed)
    }
}

impl Drop for LogBuffer {
    fn drop(&mut self) {
        self.shared.recycle_chunk(std::mem::take(&mut self.chunk));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cairn_core::{KeyGroupRange, StateKind};
    use cairn_format::{ChangelogOp, ChangelogSegmentReader};

    use super::*;
    use crate::shared::Holder;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new("op".into(), "p".into(), None, u64::MAX))
    }

    fn sink(shared: &Arc<Shared>, inline: bool) -> Sink {
        if inline {
            Sink::Inline(Encoder::new(shared.clone()))
        } else {
            spawn_worker(shared.clone())
        }
    }

    fn states(names: &[(&str, StateKind)]) -> States {
        Arc::new(
            names
                .iter()
                .map(|(name, kind)| FileState {
                    name: (*name).into(),
                    kind: *kind,
                })
                .collect(),
        )
    }

    /// What the backend does with a full chunk.
    fn push(buf: &mut LogBuffer, states: &States, r: &ChangelogRecord<'_>) -> Option<Sealed> {
        if buf.push(r) {
            if buf.len_bytes() >= buf.segment_bytes {
                return seal(buf, states, "seg");
            }
            buf.hand_off(states, || "seg".to_string());
        }
        None
    }

    fn seal(buf: &mut LogBuffer, states: &States, name: &str) -> Option<Sealed> {
        let shared = buf.shared.clone();
        buf.seal(
            states,
            || name.to_string(),
            |n| shared.hold(Holder::Chain, [n]),
        )
    }

    /// The segment's file, once written.
    fn segment(shared: &Shared, name: &str) -> cairn_core::Result<ChangelogSegmentReader> {
        shared.segment_file(name, &CancelToken::new(), 0)?;
        let bytes = shared.file_bytes(name).unwrap();
        Ok(ChangelogSegmentReader::open(Bytes::from(bytes.as_ref().clone()), name).unwrap())
    }

    type Pushed = (u32, u32, Vec<u8>, Vec<u8>);

    fn scan(reader: &ChangelogSegmentReader, range: KeyGroupRange) -> Vec<Pushed> {
        let mut read = Vec::new();
        reader
            .scan::<cairn_format::FormatError, _>(range, |r| {
                read.push((
                    r.key_group,
                    r.state,
                    r.key.to_vec(),
                    r.value.unwrap_or_default().to_vec(),
                ));
                Ok(())
            })
            .unwrap();
        read
    }

    /// A segment holds the records in the order they were pushed, every key group
    /// interleaved, through the worker or the inline encoder; a state registered while
    /// the segment is open is in its table; the chunks come back to the pool.
    #[test]
    fn a_segment_holds_the_records_in_push_order() {
        for inline in [false, true] {
            let shared = shared();
            let mut buf = LogBuffer::new(shared.clone(), sink(&shared, inline), 10, usize::MAX);
            let mut table = states(&[("v", StateKind::Value)]);
            let mut pushed: Vec<Pushed> = Vec::new();
            let mut x = 1u64;
            for i in 0..6000u32 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i == 3000 {
                    table = states(&[("v", StateKind::Value), ("w", StateKind::Value)]);
                }
                let kg = [5, 0, 9, 5, 3, 5][(x % 6) as usize];
                let state = if i >= 3000 { (x % 2) as u32 } else { 0 };
                let key = i.to_be_bytes().to_vec();
                let value = vec![(x >> 8) as u8; 1 + (x % 40) as usize];
                let r = ChangelogRecord {
                    key_group: kg,
                    state,
                    op: ChangelogOp::Set,
                    key: &key,
                    namespace: b"",
                    user_key: None,
                    value: Some(&value),
                };
                assert!(push(&mut buf, &table, &r).is_none());
                pushed.push((kg, state, key, value));
            }
            assert_eq!(buf.records(), 6000);
            let sealed = seal(&mut buf, &table, "unused").unwrap();
            assert_eq!(&*sealed.name, "seg", "named when its first chunk went out");
            assert_eq!((sealed.first_sqn, sealed.records), (10, 6000));
            assert_eq!((buf.records(), buf.len_bytes()), (0, 0));

            let reader = segment(&shared, "seg").unwrap();
            assert_eq!(reader.version(), 2);
            assert_eq!(reader.first_sqn(), 10);
            assert_eq!(reader.record_count(), 6000);
            assert_eq!(reader.states(), table.as_slice());
            assert!(reader.blocks().len() > 1);
            assert_eq!(scan(&reader, KeyGroupRange::new(0, 16)), pushed);
            // One key group: its records, in order.
            let five: Vec<Pushed> = pushed.iter().filter(|r| r.0 == 5).cloned().collect();
            assert_eq!(scan(&reader, KeyGroupRange::new(5, 6)), five);
            assert!(shared.pooled_chunks() > 0, "inline={inline}");
            assert!(shared.pooled_chunks() <= POOLED_CHUNKS);
        }
    }

    /// Chunks go out once they hold CHUNK_BYTES (one block each), or earlier when the
    /// segment reaches its size first; the counts cover handed-off and buffered records.
    #[test]
    fn chunks_are_cut_at_chunk_bytes() {
        let shared = shared();
        let table = states(&[("v", StateKind::Value)]);
        let value = [1u8; 100];
        let r = ChangelogRecord {
            key_group: 2,
            state: 0,
            op: ChangelogOp::Set,
            key: b"key",
            namespace: b"",
            user_key: None,
            value: Some(&value),
        };
        let mut one = Vec::new();
        cairn_format::encode_changelog_record_v2(&r, &mut one);
        let per_chunk = CHUNK_BYTES.div_ceil(one.len());

        let mut buf = LogBuffer::new(shared.clone(), sink(&shared, false), 0, usize::MAX);
        for i in 1..=3 * per_chunk + 7 {
            let full = buf.push(&r);
            assert_eq!(full, i % per_chunk == 0, "record {i}");
            if full {
                buf.hand_off(&table, || "cut".to_string());
            }
            assert_eq!(buf.records(), i as u64);
            assert_eq!(buf.len_bytes(), i * one.len());
        }
        seal(&mut buf, &table, "unused").unwrap();
        let reader = segment(&shared, "cut").unwrap();
        let counts: Vec<u32> = reader.blocks().iter().map(|b| b.records).collect();
        let p = per_chunk as u32;
        assert_eq!(counts, [p, p, p, 7]);
        assert!(reader
            .blocks()
            .iter()
            .all(|b| b.key_groups == KeyGroupRange::new(2, 3)));

        // A segment size below CHUNK_BYTES: the push that reaches it reports it.
        let small = 10 * one.len() + 1;
        let mut buf = LogBuffer::new(shared.clone(), sink(&shared, false), 0, small);
        let reached: Vec<bool> = (0..12).map(|_| buf.push(&r)).collect();
        assert_eq!(reached.iter().position(|f| *f), Some(10));
    }

    /// Sequence numbers go on after a seal; an empty seal makes no segment (and names
    /// none); each segment is named once, when it opens.
    #[test]
    fn numbering_continues_after_a_seal() {
        let shared = shared();
        let table = states(&[("v", StateKind::Value)]);
        let mut buf = LogBuffer::new(shared.clone(), sink(&shared, false), 100, usize::MAX);
        let rec = |kg| ChangelogRecord {
            key_group: kg,
            state: 0,
            op: ChangelogOp::Clear,
            key: b"k",
            namespace: b"",
            user_key: None,
            value: None,
        };
        let mut names = 0;
        let mut name = |n: &str| {
            names += 1;
            n.to_string()
        };
        assert!(buf
            .seal(&table, || name("empty"), |_| panic!("nothing to hold"))
            .is_none());
        for kg in [3, 1, 3] {
            buf.push(&rec(kg));
        }
        let a = buf
            .seal(&table, || name("a"), |n| shared.hold(Holder::Chain, [n]))
            .unwrap();
        assert_eq!((a.first_sqn, a.records), (100, 3));
        assert!(buf
            .seal(&table, || name("empty"), |_| panic!("nothing to hold"))
            .is_none());
        buf.push(&rec(0));
        let b = buf
            .seal(&table, || name("b"), |n| shared.hold(Holder::Chain, [n]))
            .unwrap();
        assert_eq!((b.first_sqn, b.records), (103, 1));
        assert_eq!(names, 2);
        assert_eq!(segment(&shared, "a").unwrap().first_sqn(), 100);
        let b = segment(&shared, "b").unwrap();
        assert_eq!((b.first_sqn(), b.record_count()), (103, 1));
    }

    /// A record the state table does not allow fails its segment, with the state index,
    /// the op, the key group, the uid and the segment's name in the message; the next
    /// segment is written as usual.
    #[test]
    fn a_refused_record_fails_the_segment() {
        for inline in [false, true] {
            let shared = shared();
            let table = states(&[("v", StateKind::Value), ("m", StateKind::Map)]);
            let mut buf = LogBuffer::new(shared.clone(), sink(&shared, inline), 0, usize::MAX);
            let value = vec![7u8; 1000];
            let rec = |kg, state, op, user_key: Option<&'static [u8]>, value| ChangelogRecord {
                key_group: kg,
                state,
                op,
                key: b"k",
                namespace: b"",
                user_key,
                value,
            };
            for i in 0..300u32 {
                if buf.push(&rec(i % 3, 0, ChangelogOp::Set, None, Some(&value[..]))) {
                    buf.hand_off(&table, || "bad".to_string());
                }
                buf.push(&rec(i % 2, 1, ChangelogOp::MapPut, Some(b"u"), Some(b"x")));
            }
            buf.hand_off(&table, || "bad".to_string());
            // In a chunk of its own (after two valid ones).
            buf.push(&rec(5, 0, ChangelogOp::MapRemove, Some(b"u"), None));
            let sealed = seal(&mut buf, &table, "unused").unwrap();
            assert_eq!((&*sealed.name, sealed.records), ("bad", 601));
            let e = segment(&shared, "bad").err().unwrap().to_string();
            assert!(
                e.contains("uid=op")
                    && e.contains("name=bad")
                    && e.contains("changelog op MapRemove does not apply to Value state index=0")
                    && e.contains("key_group=5"),
                "{e}"
            );

            buf.push(&rec(5, 1, ChangelogOp::MapRemove, Some(b"u"), None));
            seal(&mut buf, &table, "good").unwrap();
            assert_eq!(segment(&shared, "good").unwrap().record_count(), 1);
        }
    }

    /// A storage whose uploads wait until it is opened; keeps what it was given.
    #[derive(Debug, Default)]
    struct GatedStorage {
        open: std::sync::Mutex<bool>,
        cond: std::sync::Condvar,
        files: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
    }

    impl GatedStorage {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.cond.notify_all();
        }
    }

    impl crate::ChangelogStorage for GatedStorage {
        fn upload(&self, name: &str, bytes: &[u8]) -> cairn_core::Result<cairn_core::FileRef> {
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.cond.wait(open).unwrap();
            }
            let file = crate::shared::local_ref(name, bytes);
            self.files
                .lock()
                .unwrap()
                .insert(name.to_string(), bytes.to_vec());
            Ok(file)
        }
        fn release(&self, _: &cairn_core::FileRef) {}
    }

    /// Pushes about 12 chunks of records from another thread, sealing each full chunk as
    /// segment `seg-<n>`; returns the thread (which returns the buffer and how many
    /// records it pushed) and the count of segments sealed so far.
    fn push_segments(
        mut buf: LogBuffer,
    ) -> (
        std::thread::JoinHandle<(LogBuffer, u64)>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        let sealed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = sealed.clone();
        let pusher = std::thread::spawn(move || {
            let table = states(&[("v", StateKind::Value)]);
            let shared = buf.shared.clone();
            let value = [7u8; 100];
            let n = 12 * CHUNK_BYTES / 100;
            for i in 0..n {
                let key = (i as u64).to_be_bytes();
                let r = ChangelogRecord {
                    key_group: (i % 7) as u32,
                    state: 0,
                    op: ChangelogOp::Set,
                    key: &key,
                    namespace: b"",
                    user_key: None,
                    value: Some(&value),
                };
                if buf.push(&r) {
                    let seq = count.load(std::sync::atomic::Ordering::SeqCst);
                    buf.seal(
                        &table,
                        || format!("seg-{seq}"),
                        |name| shared.hold(Holder::Chain, [name]),
                    );
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            (buf, n as u64)
        });
        (pusher, sealed)
    }

    /// A log whose background thread is stuck (here: in an upload) stops the task thread
    /// once `max_in_flight` bytes of chunks wait for it, and lets it go on when the thread
    /// catches up; every record is then written. Without the bound the task runs ahead.
    #[test]
    fn the_task_waits_while_the_encoder_is_too_far_behind() {
        let wait_until = |what: &str, done: &dyn Fn() -> bool| {
            let start = std::time::Instant::now();
            while !done() {
                assert!(start.elapsed().as_secs() < 20, "timed out waiting: {what}");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let max = 3 * CHUNK_BYTES as u64;
        for bounded in [true, false] {
            let storage = Arc::new(GatedStorage::default());
            let shared = Arc::new(Shared::new(
                "op".into(),
                "p".into(),
                Some(storage.clone()),
                if bounded { max } else { u64::MAX },
            ));
            let buf = LogBuffer::new(shared.clone(), spawn_worker(shared.clone()), 0, CHUNK_BYTES);
            let (pusher, sealed) = push_segments(buf);
            if bounded {
                wait_until("the task to wait", &|| shared.backpressure().waits > 0);
                // The first segment is stuck in its upload and the next ones wait to be
                // encoded, within the bound; the task waits.
                std::thread::sleep(std::time::Duration::from_millis(50));
                assert!(!pusher.is_finished());
                let in_flight = shared.in_flight();
                assert!(
                    (CHUNK_BYTES as u64..=max).contains(&in_flight),
                    "{in_flight}"
                );
                assert!(sealed.load(std::sync::atomic::Ordering::SeqCst) < 6);
            } else {
                wait_until("the task to finish", &|| pusher.is_finished());
                assert_eq!(shared.backpressure().waits, 0);
                assert!(shared.in_flight() > max, "{}", shared.in_flight());
            }
            storage.open();
            let (buf, pushed) = pusher.join().unwrap();
            let segments = sealed.load(std::sync::atomic::Ordering::SeqCst);
            assert!(segments >= 11, "{segments}");
            let mut records = 0;
            wait_until("the uploads", &|| {
                storage.files.lock().unwrap().len() == segments && shared.in_flight() == 0
            });
            for n in 0..segments {
                let name = format!("seg-{n}");
                let file = shared.segment_file(&name, &CancelToken::new(), 0).unwrap();
                let bytes = storage.files.lock().unwrap().remove(&name).unwrap();
                assert_eq!(file, crate::shared::local_ref(&name, &bytes));
                let reader = ChangelogSegmentReader::open(Bytes::from(bytes), &name).unwrap();
                records += reader.record_count();
            }
            assert_eq!(records + buf.records(), pushed);
            assert_eq!(shared.backpressure().waits > 0, bounded);
        }
    }
}
