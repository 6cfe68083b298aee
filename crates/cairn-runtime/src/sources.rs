//! Replayable sources: lines of a file, and a deterministic generator.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;

use cairn_core::{OperatorListStateDescriptor, OperatorListStateId};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};
use crate::function::{
    Checkpointed, Collector, InitContext, SnapshotContext, Source, SourceStatus,
};

/// A byte range of the input file; a line belongs to the split its first byte is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSplit {
    /// Offset of the next line to read (always the start of a line).
    pub position: u64,
    /// Lines starting at or after this offset belong to the next split.
    pub end: u64,
}

/// Reads the lines of a file, split by byte ranges over the subtasks. Its position (the
/// splits with their offsets) is operator state, dealt round-robin on rescale, so a
/// restore at any parallelism reads every line exactly once from the checkpoint on. A
/// restore over a file that is not the one the snapshot read (shorter than a saved position
/// or a split's end, or with a saved position no longer at the start of a line) fails and
/// says so; a file cut while the job reads it is [`RuntimeError::BadInput`].
///
/// Lines end at `\n`; a `\r` before it (or at the end of the file) is dropped, and the last
/// line needs no line end. A line that is not UTF-8 is [`RuntimeError::BadInput`], naming the
/// offset of its first bad byte.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    state: Option<OperatorListStateId<FileSplit>>,
    splits: Vec<FileSplit>,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
}

impl Clone for FileSource {
    fn clone(&self) -> Self {
        Self::new(self.path.clone())
    }
}

impl FileSource {
    /// Reads `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            state: None,
            splits: Vec::new(),
            reader: None,
            buf: Vec::with_capacity(256),
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> RuntimeError {
        RuntimeError::io(what, &self.path, e)
    }

    /// The start of the first line at or after `offset`.
    fn line_start_at(&self, offset: u64) -> Result<u64> {
        if offset == 0 {
            return Ok(0);
        }
        let file = File::open(&self.path).map_err(|e| self.io("cannot open the input", e))?;
        let mut r = BufReader::new(file);
        r.seek(SeekFrom::Start(offset - 1))
            .map_err(|e| self.io("cannot seek in the input", e))?;
        let mut skipped = Vec::new();
        let n = r
            .read_until(b'\n', &mut skipped)
            .map_err(|e| self.io("cannot read the input", e))?;
        Ok(offset - 1 + n as u64)
    }
}

impl FileSource {
    /// A restored position must lie in the file and start a line, and a split's end must lie
    /// in the file, as they did when the snapshot was taken: otherwise the input is not the
    /// file the snapshot read (replaced, truncated or edited), and reading on would silently
    /// lose or repeat lines. A file that grew is read up to its length at the first start
    /// (the splits' ends).
    fn check_restored_positions(&self) -> Result<()> {
        let changed = |what: String| {
            RuntimeError::Restore {
            reason: format!(
                "{what}: the input changed since the snapshot (a file source replays the same file) path={}",
                self.path.display()
            ),
        }
        };
        let open_splits: Vec<&FileSplit> =
            self.splits.iter().filter(|s| s.position < s.end).collect();
        if open_splits.is_empty() {
            return Ok(());
        }
        let mut file = File::open(&self.path).map_err(|e| self.io("cannot open the input", e))?;
        let len = file
            .metadata()
            .map_err(|e| self.io("cannot read the input's size", e))?
            .len();
        for split in open_splits {
            if split.position > len {
                return Err(changed(format!(
                    "the input is {len} bytes, shorter than the restored read position {}",
                    split.position
                )));
            }
            // Every split ends within the file it was made of (the last one at its end): a
            // file cut at a line boundary past the position would end the split early.
            if split.end > len {
                return Err(changed(format!(
                    "the input is {len} bytes, shorter than the end {} of a restored split \
                     (read up to {})",
                    split.end, split.position
                )));
            }
            if split.position == 0 {
                continue;
            }
            let mut before = [0u8; 1];
            file.seek(SeekFrom::Start(split.position - 1))
                .and_then(|_| std::io::Read::read_exact(&mut file, &mut before))
                .map_err(|e| self.io("cannot read the input", e))?;
            if before[0] != b'\n' {
                return Err(changed(format!(
                    "the restored read position {} does not start a line",
                    split.position
                )));
            }
        }
        Ok(())
    }
}

impl Checkpointed for FileSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<FileSplit>::split("splits"))?;
        self.state = Some(id);
        if ctx.is_restored {
            self.splits = ctx.operator_state.list(id)?.clone();
            self.check_restored_positions()?;
        } else {
            let meta = std::fs::metadata(&self.path)
                .map_err(|e| self.io("cannot read the input's size", e))?;
            if !meta.is_file() {
                // Not worth a restart: it will not be a file the next time either.
                return Err(RuntimeError::Config(format!(
                    "the file source's input is not a regular file (a directory?) path={}",
                    self.path.display()
                )));
            }
            let len = meta.len();
            let p = u64::from(ctx.subtask.parallelism);
            let i = u64::from(ctx.subtask.index);
            let (start, end) = (len * i / p, len * (i + 1) / p);
            let position = self.line_start_at(start)?;
            self.splits = vec![FileSplit { position, end }];
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        if let Some(id) = self.state {
            *ctx.operator_state.list(id)? = self.splits.clone();
        }
        Ok(())
    }
}

impl Source for FileSource {
    type Out = String;

    fn poll(&mut self, out: &mut Collector<'_, String>, max: usize) -> Result<SourceStatus> {
        let mut emitted = 0;
        while emitted < max {
            let Some(split) = self.splits.first().copied() else {
                return Ok(SourceStatus::End);
            };
            if split.position >= split.end {
                self.splits.remove(0);
                self.reader = None;
                continue;
            }
            if self.reader.is_none() {
                let file =
                    File::open(&self.path).map_err(|e| self.io("cannot open the input", e))?;
                let mut r = BufReader::with_capacity(64 * 1024, file);
                r.seek(SeekFrom::Start(split.position))
                    .map_err(|e| self.io("cannot seek in the input", e))?;
                self.reader = Some(r);
            }
            self.buf.clear();
            let n = match self.reader.as_mut() {
                Some(r) => r
                    .read_until(b'\n', &mut self.buf)
                    .map_err(|e| RuntimeError::io("cannot read the input", &self.path, e))?,
                None => 0,
            };
            if n == 0 {
                // A split ends within the file it was made of, and its last line is read
                // whole: the file was cut while the job read it, and the lines up to the
                // split's end are gone.
                return Err(RuntimeError::BadInput {
                    path: self.path.display().to_string(),
                    offset: split.position,
                    reason: format!(
                        "the input ended before the end {} of a split: it was cut while the \
                         job read it (a file source reads a file that does not change)",
                        split.end
                    ),
                });
            }
            let mut line = &self.buf[..];
            if line.last() == Some(&b'\n') {
                line = &line[..line.len() - 1];
            }
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let text = std::str::from_utf8(line).map_err(|e| RuntimeError::BadInput {
                path: self.path.display().to_string(),
                offset: split.position + e.valid_up_to() as u64,
                reason: format!("the line at offset {} is not UTF-8 ({e})", split.position),
            })?;
            let text = text.to_string();
            self.splits[0].position += n as u64;
            out.collect(text)?;
            emitted += 1;
        }
        Ok(SourceStatus::More)
    }
}

/// A deterministic bounded source of `u64` keys: record `n` (of `total`) is a hash of
/// `(seed, n)` modulo `keys`.
///
/// Its position is a list of splits `(next, stride)` in operator state: a split emits
/// records `next, next + stride, …` below `total`. Subtask `i` of `p` starts with the one
/// split `(i, p)`. Like [`FileSource`]'s splits, they are dealt round-robin on restore, so
/// the job can restore at any parallelism and every record is emitted exactly once from the
/// checkpoint on. A subtask emits its splits one after another, in order; a subtask
/// without a split emits nothing.
#[derive(Clone, Debug)]
pub struct GeneratorSource {
    total: u64,
    keys: u64,
    seed: u64,
    state: Option<OperatorListStateId<(u64, u64)>>,
    /// `(next, stride)` splits still to emit; the first one is being emitted.
    splits: Vec<(u64, u64)>,
    idle_at_end: bool,
}

impl GeneratorSource {
    /// `total` records over `keys` distinct keys.
    pub fn new(total: u64, keys: u64, seed: u64) -> Self {
        Self {
            total,
            keys: keys.max(1),
            seed,
            state: None,
            // Until the runtime initializes it: every record, in order.
            splits: vec![(0, 1)],
            idle_at_end: false,
        }
    }

    /// Stay idle after the last record instead of ending (so that a savepoint can be taken
    /// of the final state).
    pub fn idle_at_end(mut self) -> Self {
        self.idle_at_end = true;
        self
    }

    /// The key of record `n`.
    pub fn key_of(&self, n: u64) -> u64 {
        splitmix64(self.seed ^ splitmix64(n)) % self.keys
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Checkpointed for GeneratorSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        // The state's name and element type are those of the snapshots written when each
        // subtask held exactly one split: they restore as they are.
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<(u64, u64)>::split("next"))?;
        self.state = Some(id);
        if ctx.is_restored {
            let splits = ctx.operator_state.list(id)?.clone();
            if let Some((next, _)) = splits.iter().find(|(_, stride)| *stride == 0) {
                return Err(RuntimeError::Restore {
                    reason: format!(
                        "the generator source's state holds a split with stride 0: next={next}"
                    ),
                });
            }
            self.splits = splits;
        } else {
            let p = u64::from(ctx.subtask.parallelism);
            let i = u64::from(ctx.subtask.index);
            self.splits = vec![(i, p)];
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        if let Some(id) = self.state {
            *ctx.operator_state.list(id)? = self.splits.clone();
        }
        Ok(())
    }
}

impl Source for GeneratorSource {
    type Out = u64;

    fn poll(&mut self, out: &mut Collector<'_, u64>, max: usize) -> Result<SourceStatus> {
        let mut emitted = 0;
        while emitted < max {
            let Some(&(next, stride)) = self.splits.first() else {
                return Ok(if self.idle_at_end {
                    SourceStatus::Idle
                } else {
                    SourceStatus::End
                });
            };
            if next >= self.total {
                self.splits.remove(0);
                continue;
            }
            // Past u64::MAX the split is done (next stays >= total).
            self.splits[0].0 = next.saturating_add(stride);
            out.collect(self.key_of(next))?;
            emitted += 1;
        }
        Ok(SourceStatus::More)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use cairn_core::{redistribute, OperatorStateBackend, OperatorStateSnapshot};

    use super::*;
    use crate::chain::Recorder;
    use crate::function::SubtaskInfo;

    /// A generator whose keys are distinct (the hash is a bijection): records map back to
    /// their index.
    fn generator(total: u64) -> (GeneratorSource, HashMap<u64, u64>) {
        let g = GeneratorSource::new(total, u64::MAX, 9);
        let index: HashMap<u64, u64> = (0..total).map(|n| (g.key_of(n), n)).collect();
        assert_eq!(index.len() as u64, total);
        (g, index)
    }

    /// Subtask `index` of `parallelism` of `source`, fresh (`None`) or restored from its
    /// share.
    fn init<S: Checkpointed>(
        mut source: S,
        index: u32,
        parallelism: u32,
        restored: Option<Vec<OperatorStateSnapshot>>,
    ) -> Result<(S, OperatorStateBackend)> {
        let mut backend = OperatorStateBackend::new("source");
        let is_restored = restored.is_some();
        if let Some(states) = restored {
            backend.restore(states)?;
        }
        source.initialize_state(&mut InitContext {
            operator_state: &mut backend,
            is_restored,
            subtask: SubtaskInfo {
                index,
                parallelism,
                max_parallelism: 128,
                attempt: 0,
            },
            run_id: "test",
            checkpointing: true,
            metrics: &crate::metrics::MetricGroup::unregistered("source.0"),
        })?;
        Ok((source, backend))
    }

    /// A generator subtask (see [`init`]).
    fn subtask(
        proto: &GeneratorSource,
        index: u32,
        parallelism: u32,
        restored: Option<Vec<OperatorStateSnapshot>>,
    ) -> Result<(GeneratorSource, OperatorStateBackend)> {
        init(proto.clone(), index, parallelism, restored)
    }

    /// Polls up to `max` records; the indices emitted, and the status.
    fn poll(
        g: &mut GeneratorSource,
        index: &HashMap<u64, u64>,
        max: usize,
    ) -> (Vec<u64>, SourceStatus) {
        let mut chain = Recorder::new();
        let status = g
            .poll(&mut Collector::new(&mut chain, None), max)
            .expect("poll");
        let emitted = chain.take_records();
        (emitted.iter().map(|(k, _)| index[k]).collect(), status)
    }

    fn snapshot(
        g: &mut GeneratorSource,
        backend: &mut OperatorStateBackend,
    ) -> Vec<OperatorStateSnapshot> {
        g.snapshot_state(&mut SnapshotContext {
            operator_state: backend,
            checkpoint_id: 1,
            is_savepoint: false,
        })
        .expect("snapshot");
        backend.snapshot().expect("operator state")
    }

    /// Runs `old` subtasks for a few records each (a different number per subtask), takes a
    /// snapshot, restores it at `new` subtasks and runs them to the end: every index once.
    fn rescale(old: u32, new: u32) -> Vec<Vec<(u64, u64)>> {
        let total = 1000;
        let (proto, index) = generator(total);
        let mut emitted = Vec::new();
        let mut states = Vec::new();
        for i in 0..old {
            let (mut g, mut backend) = subtask(&proto, i, old, None).expect("init");
            let (got, _) = poll(&mut g, &index, 50 + 37 * i as usize);
            emitted.extend(got);
            states.push(snapshot(&mut g, &mut backend));
        }
        let mut splits = Vec::new();
        for (i, share) in redistribute("gen", &states, new)
            .expect("redistribute")
            .into_iter()
            .enumerate()
        {
            let (mut g, _) = subtask(&proto, i as u32, new, Some(share)).expect("restore");
            splits.push(g.splits.clone());
            loop {
                let (got, status) = poll(&mut g, &index, 64);
                emitted.extend(got);
                if matches!(status, SourceStatus::End) {
                    break;
                }
            }
        }
        emitted.sort_unstable();
        assert_eq!(emitted, (0..total).collect::<Vec<_>>(), "{old} -> {new}");
        splits
    }

    #[test]
    fn generator_restores_at_another_parallelism_emitting_each_record_once() {
        // 1 -> 3: one split, on subtask 0; the others have none.
        let splits = rescale(1, 3);
        assert_eq!(
            splits.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![1, 0, 0]
        );
        // 3 -> 2: subtask 0 emits two splits, one after the other.
        let splits = rescale(3, 2);
        // Subtask i emitted 50 + 37 i records: i + 3 (50 + 37 i) is next.
        assert_eq!(splits, vec![vec![(150, 3), (374, 3)], vec![(262, 3)]]);
        rescale(2, 5);
        rescale(4, 4);
    }

    #[test]
    fn generator_subtask_emits_its_splits_one_after_another() {
        let (proto, index) = generator(20);
        let (mut g, _) = subtask(&proto, 0, 2, None).expect("init");
        g.splits = vec![(17, 3), (4, 5)];
        let (got, status) = poll(&mut g, &index, 100);
        assert_eq!(got, vec![17, 4, 9, 14, 19]);
        assert!(matches!(status, SourceStatus::End));
    }

    #[test]
    fn generator_subtask_without_splits_ends_or_idles() {
        let (proto, index) = generator(10);
        let (mut g, mut backend) = subtask(&proto, 0, 1, None).expect("init");
        g.splits.clear();
        let empty = snapshot(&mut g, &mut backend);
        let (mut g, _) = subtask(&proto, 0, 1, Some(empty.clone())).expect("restore");
        let (got, status) = poll(&mut g, &index, 10);
        assert!(got.is_empty() && matches!(status, SourceStatus::End));
        let idle = proto.clone().idle_at_end();
        let (mut g, _) = subtask(&idle, 0, 1, Some(empty)).expect("restore");
        let (got, status) = poll(&mut g, &index, 10);
        assert!(got.is_empty() && matches!(status, SourceStatus::Idle));
    }

    #[test]
    fn generator_split_with_stride_zero_is_a_restore_error() {
        let (proto, _) = generator(10);
        let (mut g, mut backend) = subtask(&proto, 0, 1, None).expect("init");
        g.splits = vec![(3, 0)];
        let bad = snapshot(&mut g, &mut backend);
        let err = subtask(&proto, 0, 1, Some(bad)).expect_err("stride 0");
        assert!(matches!(err, RuntimeError::Restore { .. }), "{err:?}");
        assert!(err.to_string().contains("stride 0: next=3"), "{err}");
    }

    /// Polls up to `max` lines (`usize::MAX`: to the end).
    fn read(f: &mut FileSource, max: usize) -> Vec<String> {
        let mut chain = Recorder::new();
        let mut lines = Vec::new();
        loop {
            let left = max - lines.len().min(max);
            if left == 0 {
                break;
            }
            let status = f
                .poll(&mut Collector::new(&mut chain, None), left.min(16))
                .expect("poll");
            lines.extend(chain.take_records().into_iter().map(|(line, _)| line));
            if status == SourceStatus::End {
                break;
            }
        }
        lines
    }

    /// Runs the file source through a chain of parallelisms: each stage reads a different
    /// number of lines per subtask, snapshots, and the next restores its redistributed
    /// state; the last reads to the end. Every line is read exactly once overall.
    fn file_through(parallelisms: &[u32]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("input.txt");
        let lines: Vec<String> = (0..997)
            .map(|i| {
                format!(
                    "{i}:{}",
                    "y".repeat(if i % 101 == 0 { 3000 } else { i % 17 })
                )
            })
            .collect();
        std::fs::write(&path, lines.join("\n")).expect("write");
        let mut read_so_far = Vec::new();
        let mut states: Option<Vec<Vec<OperatorStateSnapshot>>> = None;
        for (stage, &p) in parallelisms.iter().enumerate() {
            let last = stage + 1 == parallelisms.len();
            let shares: Vec<Option<Vec<OperatorStateSnapshot>>> = match &states {
                Some(old) => redistribute("file", old, p)
                    .expect("redistribute")
                    .into_iter()
                    .map(Some)
                    .collect(),
                None => (0..p).map(|_| None).collect(),
            };
            let mut next = Vec::new();
            for (i, share) in shares.into_iter().enumerate() {
                let (mut f, mut backend) =
                    init(FileSource::new(&path), i as u32, p, share).expect("init");
                let max = if last { usize::MAX } else { 40 + 23 * i };
                read_so_far.extend(read(&mut f, max));
                f.snapshot_state(&mut SnapshotContext {
                    operator_state: &mut backend,
                    checkpoint_id: stage as u64 + 1,
                    is_savepoint: false,
                })
                .expect("snapshot");
                next.push(backend.snapshot().expect("operator state"));
            }
            states = Some(next);
        }
        read_so_far.sort();
        let mut want = lines;
        want.sort();
        assert!(
            read_so_far == want,
            "{parallelisms:?}: {} lines read",
            read_so_far.len()
        );
    }

    #[test]
    fn file_source_restores_at_other_parallelisms_reading_each_line_once() {
        file_through(&[1, 3, 2]);
        file_through(&[3, 1, 4]);
        file_through(&[2, 5, 5, 3]);
        file_through(&[4, 2, 1]);
    }
}
