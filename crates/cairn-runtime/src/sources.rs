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
/// restore at any parallelism reads every line exactly once from the checkpoint on.
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

impl Checkpointed for FileSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> Result<()> {
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<FileSplit>::split("splits"))?;
        self.state = Some(id);
        if ctx.is_restored {
            self.splits = ctx.operator_state.list(id)?.clone();
        } else {
            let len = std::fs::metadata(&self.path)
                .map_err(|e| self.io("cannot read the input's size", e))?
                .len();
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
                // End of file before the split's end (the file shrank or the split's end is
                // the file length).
                self.splits.remove(0);
                self.reader = None;
                continue;
            }
            let mut line = &self.buf[..];
            if line.last() == Some(&b'\n') {
                line = &line[..line.len() - 1];
            }
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let text = std::str::from_utf8(line).map_err(|e| RuntimeError::Io {
                message: format!("input line is not UTF-8 at offset {}", split.position),
                path: self.path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
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
/// `(seed, n)` modulo `keys`. Subtask `i` of `p` emits records `i, i + p, …`; its position
/// is operator state.
#[derive(Clone, Debug)]
pub struct GeneratorSource {
    total: u64,
    keys: u64,
    seed: u64,
    state: Option<OperatorListStateId<(u64, u64)>>,
    next: u64,
    step: u64,
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
            next: 0,
            step: 1,
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
        // (next record, stride): a subtask emits next, next + stride, …
        let id = ctx
            .operator_state
            .register_list(&OperatorListStateDescriptor::<(u64, u64)>::split("next"))?;
        self.state = Some(id);
        self.step = u64::from(ctx.subtask.parallelism);
        self.next = u64::from(ctx.subtask.index);
        if ctx.is_restored {
            match ctx.operator_state.list(id)?.as_slice() {
                [(next, stride)] if *stride == self.step => self.next = *next,
                _ => {
                    return Err(RuntimeError::Restore {
                        reason: format!(
                            "the generator source restores only at its old parallelism (now {})",
                            self.step
                        ),
                    })
                }
            }
        }
        Ok(())
    }

    fn snapshot_state(&mut self, ctx: &mut SnapshotContext<'_>) -> Result<()> {
        if let Some(id) = self.state {
            *ctx.operator_state.list(id)? = vec![(self.next, self.step)];
        }
        Ok(())
    }
}

impl Source for GeneratorSource {
    type Out = u64;

    fn poll(&mut self, out: &mut Collector<'_, u64>, max: usize) -> Result<SourceStatus> {
        for _ in 0..max {
            if self.next >= self.total {
                return Ok(if self.idle_at_end {
                    SourceStatus::Idle
                } else {
                    SourceStatus::End
                });
            }
            let k = self.key_of(self.next);
            self.next += self.step;
            out.collect(k)?;
        }
        Ok(SourceStatus::More)
    }
}
