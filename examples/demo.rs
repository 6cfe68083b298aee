//! Cairn's demo: a word-count operator on the heap backend goes through checkpoints, a crash,
//! a restore, a savepoint and a restore at another parallelism, and prints what it did.
//!
//! `cargo run --example demo [DIR]` — DIR defaults to a fresh directory under the system's
//! temporary directory; checkpoints and the savepoint stay there for inspection.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn::core::{
    key_group_for_key, subtask_for_key_group, BincodeCodec, CancelToken, Codec, KeyGroupRange,
    KeyedStateBackend, ListStateDescriptor, OperatorListStateDescriptor, OperatorStateBackend,
    SnapshotOptions, SnapshotType, StateAccess, ValueStateDescriptor,
};
use cairn::hashmap::{HashMapBackend, HashMapConfig};
use cairn::storage::{
    assemble_manifest, open_savepoint, restore_subtask, snapshot_operator, write_savepoint,
    CheckpointStorage, SubtaskRef,
};

const UID: &str = "count";
const MAX_PARALLELISM: u32 = 128;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// One parallel instance of the counting operator.
struct Subtask {
    keyed: HashMapBackend,
    operator: OperatorStateBackend,
}

/// The job: `parallelism` subtasks counting words, each remembering the last few words it saw
/// (a list state) and how many lines it consumed (operator state, split on rescale).
struct Job {
    subtasks: Vec<Subtask>,
    key: BincodeCodec<String>,
}

fn count_desc() -> ValueStateDescriptor<u64> {
    ValueStateDescriptor::new("count")
}
fn recent_desc() -> ListStateDescriptor<u32> {
    ListStateDescriptor::new("positions")
}
fn lines_desc() -> OperatorListStateDescriptor<u64> {
    OperatorListStateDescriptor::split("lines-consumed")
}

impl Job {
    fn new(parallelism: u32) -> Result<Self> {
        let key = BincodeCodec::<String>::new();
        let mut subtasks = Vec::new();
        for i in 0..parallelism {
            let keyed = HashMapBackend::new(HashMapConfig {
                uid: UID.into(),
                max_parallelism: MAX_PARALLELISM,
                key_group_range: KeyGroupRange::for_subtask(MAX_PARALLELISM, parallelism, i)?,
                key_codec: key.identity().clone(),
            })?;
            subtasks.push(Subtask {
                keyed,
                operator: OperatorStateBackend::new(UID),
            });
        }
        Ok(Self { subtasks, key })
    }

    fn parallelism(&self) -> u32 {
        self.subtasks.len() as u32
    }

    /// Routes each word to the subtask owning its key group and counts it.
    fn process(&mut self, lines: &[String], first_line: u64) -> Result<()> {
        let p = self.parallelism();
        let mut key = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            for (pos, word) in line.split(' ').enumerate() {
                key.clear();
                self.key.encode(&word.to_string(), &mut key)?;
                let kg = key_group_for_key(&key, MAX_PARALLELISM);
                let s = &mut self.subtasks[subtask_for_key_group(kg, p, MAX_PARALLELISM) as usize];
                let count = s.keyed.register_value(&count_desc())?;
                let recent = s.keyed.register_list(&recent_desc())?;
                s.keyed.set_current_key(&key)?;
                let c = s.keyed.value(&count).get()?.unwrap_or(0);
                s.keyed.value(&count).update(c + 1)?;
                let mut positions = s.keyed.list(&recent).get()?;
                positions.push(pos as u32);
                if positions.len() > 3 {
                    positions.remove(0);
                }
                s.keyed.list(&recent).update(positions)?;
            }
            // Each subtask counts the lines it consumed, like a source's offset; the counters
            // are dealt out again on rescale (split redistribution), so their sum is kept.
            let owner = &mut self.subtasks[(first_line as usize + n) % p as usize];
            let lines = owner.operator.register_list(&lines_desc())?;
            let counters = owner.operator.list(lines)?;
            match counters.first_mut() {
                Some(c) => *c += 1,
                None => counters.push(1),
            }
        }
        Ok(())
    }

    fn count(&mut self, word: &str) -> Result<Option<u64>> {
        let key = self.key.encode_to_vec(&word.to_string())?;
        let kg = key_group_for_key(&key, MAX_PARALLELISM);
        let p = self.parallelism();
        let s = &mut self.subtasks[subtask_for_key_group(kg, p, MAX_PARALLELISM) as usize];
        let count = s.keyed.register_value(&count_desc())?;
        s.keyed.set_current_key(&key)?;
        Ok(s.keyed.value(&count).get()?)
    }

    /// Every word and its count, sorted, read through the public API.
    fn all_counts(&mut self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for s in &mut self.subtasks {
            let count = s.keyed.register_value(&count_desc())?;
            for key in s.keyed.keys(count.raw(), &())? {
                s.keyed.set_current_key(&key)?;
                let c = s.keyed.value(&count).get()?.unwrap_or(0);
                out.push((self.key.decode(&key)?, c));
            }
        }
        out.sort();
        Ok(out)
    }

    fn lines_consumed(&mut self) -> Result<u64> {
        let mut sum = 0;
        for s in &mut self.subtasks {
            let id = s.operator.register_list(&lines_desc())?;
            sum += s.operator.list(id)?.iter().sum::<u64>();
        }
        Ok(sum)
    }

    /// Takes a checkpoint: synchronous phases, asynchronous phases, manifest last.
    fn checkpoint(
        &mut self,
        storage: &CheckpointStorage,
        id: u64,
        incremental: bool,
    ) -> Result<(cairn::format::Manifest, f64)> {
        let options = if incremental {
            SnapshotOptions::incremental_checkpoint(id)
        } else {
            SnapshotOptions::full_checkpoint(id)
        };
        let t = Instant::now();
        let pending = snapshot_operator(
            UID,
            MAX_PARALLELISM,
            self.subtasks.iter_mut().map(|s| SubtaskRef {
                keyed: Some(&mut s.keyed),
                operator: &s.operator,
            }),
            options,
        )?;
        let sync_ms = t.elapsed().as_secs_f64() * 1e3;
        let writer = storage.begin_checkpoint(id)?;
        let part = pending.run(&writer, &CancelToken::new())?;
        let manifest = assemble_manifest(id, SnapshotType::Checkpoint, vec![part]);
        storage.publish(writer, &manifest)?;
        for s in &mut self.subtasks {
            s.keyed.notify_checkpoint_complete(id);
        }
        Ok((manifest, sync_ms))
    }

    /// A fresh job at `parallelism` restored from a manifest.
    fn restore(
        manifest: &cairn::format::Manifest,
        source: &dyn cairn::core::SnapshotSource,
        parallelism: u32,
    ) -> Result<Self> {
        let mut job = Self::new(parallelism)?;
        for (i, s) in job.subtasks.iter_mut().enumerate() {
            restore_subtask(
                manifest,
                UID,
                parallelism,
                i as u32,
                Some(&mut s.keyed),
                &mut s.operator,
                source,
            )?;
        }
        Ok(job)
    }
}

/// Deterministic text: lines of words drawn from a small vocabulary.
fn lines(from: u64, n: u64) -> Vec<String> {
    const WORDS: [&str; 12] = [
        "stone", "trail", "cairn", "river", "ridge", "marker", "summit", "valley", "path", "snow",
        "wind", "pass",
    ];
    (from..from + n)
        .map(|l| {
            (0..8)
                .map(|w| {
                    let x = (l * 31 + w * 7 + l * w) % 1000;
                    format!("{}{}", WORDS[(x % 12) as usize], x % 97)
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// Bytes of the files `m` references that `previous` did not: what the checkpoint wrote.
fn new_bytes(m: &cairn::format::Manifest, previous: Option<&cairn::format::Manifest>) -> u64 {
    let old: std::collections::HashSet<_> = previous.into_iter().flat_map(|p| p.files()).collect();
    m.files().filter(|f| !old.contains(f)).map(|f| f.size).sum()
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let root: PathBuf = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id())),
    };
    if root.exists() {
        return Err(format!("{} exists; give a new directory", root.display()).into());
    }
    let checkpoints = root.join("checkpoints");
    let savepoint = root.join("savepoints").join("sp-3");
    std::fs::create_dir_all(&checkpoints)?;
    println!("cairn demo in {}", root.display());

    let storage = CheckpointStorage::open(checkpoints.to_str().ok_or("non-UTF-8 path")?)?;
    let mut job = Job::new(2)?;
    job.process(&lines(0, 20_000), 0)?;
    let words = job.all_counts()?.len();
    println!("1. counted 20000 lines at parallelism 2: {words} distinct words, \"cairn7\" seen {:?} times", job.count("cairn7")?);

    let (m1, sync_ms) = job.checkpoint(&storage, 1, true)?;
    println!(
        "2. checkpoint 1 (incremental; the first holds everything): {} bytes written, synchronous phase {sync_ms:.3} ms",
        new_bytes(&m1, None)
    );
    job.process(&lines(20_000, 5), 20_000)?;
    let (m2, sync_ms) = job.checkpoint(&storage, 2, true)?;
    println!(
        "   5 more lines, checkpoint 2 (incremental): {} bytes written for the changed key groups, {} bytes referenced from checkpoint 1, synchronous phase {sync_ms:.3} ms",
        new_bytes(&m2, Some(&m1)),
        m2.files().map(|f| f.size).sum::<u64>() - new_bytes(&m2, Some(&m1))
    );
    let expected = job.all_counts()?;
    let expected_lines = job.lines_consumed()?;
    job.process(&lines(20_050, 10), 20_050)?;
    println!("   10 more lines processed, then the process \"crashes\" before checkpoint 3");
    drop(job);

    let latest = storage
        .latest_completed()?
        .ok_or("no completed checkpoint")?;
    let mut job = Job::restore(&latest, &storage.source(latest.checkpoint_id), 2)?;
    assert_eq!(job.all_counts()?, expected);
    assert_eq!(job.lines_consumed()?, expected_lines);
    println!(
        "3. restored checkpoint {} at parallelism 2: {} words, identical to the state at the checkpoint",
        latest.checkpoint_id,
        expected.len()
    );
    job.process(&lines(20_050, 10), 20_050)?;
    let expected = job.all_counts()?;
    let expected_lines = job.lines_consumed()?;

    let pending = snapshot_operator(
        UID,
        MAX_PARALLELISM,
        job.subtasks.iter_mut().map(|s| SubtaskRef {
            keyed: Some(&mut s.keyed),
            operator: &s.operator,
        }),
        SnapshotOptions::savepoint(3),
    )?;
    write_savepoint(
        savepoint.to_str().ok_or("non-UTF-8 path")?,
        3,
        vec![pending],
    )?;
    println!(
        "4. replayed the 10 lost lines and wrote canonical savepoint 3 to {} ({} bytes)",
        savepoint.display(),
        dir_size(&savepoint)
    );

    let (manifest, source) = open_savepoint(savepoint.to_str().ok_or("non-UTF-8 path")?)?;
    for p in [3u32, 1] {
        let mut rescaled = Job::restore(&manifest, &source, p)?;
        assert_eq!(rescaled.all_counts()?, expected);
        assert_eq!(rescaled.lines_consumed()?, expected_lines);
        let ranges: Vec<String> = (0..p)
            .map(|i| KeyGroupRange::for_subtask(MAX_PARALLELISM, p, i).map(|r| r.to_string()))
            .collect::<std::result::Result<_, _>>()?;
        println!(
            "5. restored the savepoint at parallelism {p} (key groups {}): {} words and {} lines consumed, identical",
            ranges.join(", "),
            expected.len(),
            expected_lines
        );
    }

    let report = storage.retain(1)?;
    println!(
        "6. retention of the newest checkpoint deleted {} checkpoints and shared files; checkpoints left: {:?}",
        report.subsumed.len() + report.shared_deleted.len(),
        storage.completed_checkpoints()?
    );
    println!("done; inspect {}", root.display());
    Ok(())
}
