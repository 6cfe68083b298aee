//! Cairn's demo: a word count with exactly-once output runs through a failure and its
//! recovery, stops with a savepoint, and finishes under the other backend at another
//! parallelism; then the output is checked and the snapshots are shown.
//!
//! `cargo run --example demo [DIR]` — DIR defaults to a fresh directory under the system's
//! temporary directory; input, output, checkpoints and the savepoint stay there.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn::runtime::functions::Count;
use cairn::runtime::sinks::TwoPhaseFileSink;
use cairn::runtime::sources::FileSource;
use cairn::runtime::{
    source, CheckpointConfig, Job, JobConfig, JobGraph, JobResult, RestoreFrom, StateBackendConfig,
};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const LINES: usize = 40_000;

fn graph(input: &Path, output: &Path) -> JobGraph {
    source("source", FileSource::new(input))
        .flat_map("tokenize", |line: String| {
            line.split(' ')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .key_by(|w: &String| w.clone())
        .process("count", Count::<String, String>::new())
        .sink(
            "sink",
            TwoPhaseFileSink::new(output, |(w, n): &(String, u64), out: &mut Vec<u8>| {
                out.extend_from_slice(format!("{w}\t{n}").as_bytes())
            }),
        )
}

/// Zipf-like words: a few frequent, many rare.
fn write_input(path: &Path) -> Result<BTreeMap<String, u64>> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut text = String::new();
    let mut counts = BTreeMap::new();
    for _ in 0..LINES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let words = 2 + x % 6;
        for j in 0..words {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let rank = 1 + (x % 2000) * (x % 2000) / 2000;
            let w = format!("w{rank}");
            if j > 0 {
                text.push(' ');
            }
            text.push_str(&w);
            *counts.entry(w).or_insert(0u64) += 1;
        }
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(counts)
}

fn read_output(dir: &Path) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        for line in std::fs::read_to_string(e.path())?.lines() {
            let (w, n) = line.split_once('\t').ok_or("bad output line")?;
            out.entry(w.to_string()).or_default().push(n.parse()?);
        }
    }
    Ok(out)
}

fn checkpoints(r: &JobResult) -> String {
    let mut d = r.checkpoint_durations_ms.clone();
    d.sort_by(f64::total_cmp);
    let mut b = r.checkpoint_bytes.clone();
    b.sort_unstable();
    format!(
        "{} checkpoints completed (duration p50 {:.1} ms, bytes p50 {}, longest synchronous phase {:.2} ms)",
        r.checkpoints_completed,
        d.get(d.len() / 2).copied().unwrap_or(0.0),
        b.get(b.len() / 2).copied().unwrap_or(0),
        r.sync_phase_ms_max
    )
}

fn main() -> Result<()> {
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("input.txt");
    let output = dir.join("output");
    let expected = write_input(&input)?;
    let words: u64 = expected.values().sum();
    println!(
        "Cairn demo: word count with exactly-once output, in {}",
        dir.display()
    );
    println!(
        "\n1. input: {LINES} lines, {words} words, {} distinct",
        expected.len()
    );

    let base = JobConfig {
        checkpoint: CheckpointConfig {
            interval: Some(Duration::from_millis(100)),
            num_retained: 2,
            ..CheckpointConfig::default()
        },
        checkpoint_dir: dir.join("checkpoints").display().to_string(),
        savepoint_dir: Some(dir.join("savepoints").display().to_string()),
        ..JobConfig::default()
    };

    println!(
        "\n2. run 1: hashmap backend, parallelism 2, a checkpoint every 100 ms, \
         a task failure injected after 10000 lines, the source throttled to 20000 lines/s"
    );
    let handle = Job::new(
        graph(&input, &output),
        JobConfig {
            parallelism: 2,
            backend: StateBackendConfig::HashMap,
            records_per_second: Some(20_000),
            fail_at_record: Some(10_000),
            ..base.clone()
        },
    )
    .start()?;
    std::thread::sleep(Duration::from_millis(1200));
    let savepoint = handle.stop_with_savepoint(None)?;
    let first = handle.wait()?;
    println!(
        "   failed once and restarted from its latest checkpoint ({} restart); \
         the sources read {} lines (replays included)",
        first.restarts, first.records
    );
    println!("   {}", checkpoints(&first));
    println!("   stopped with a savepoint (canonical format): {savepoint}");
    let committed: usize = read_output(&output)?.values().map(Vec::len).sum();
    println!("   output committed so far: {committed} lines");

    println!("\n3. run 2: rocksdb backend, parallelism 3, restored from that savepoint");
    let second = Job::new(
        graph(&input, &output),
        JobConfig {
            parallelism: 3,
            backend: StateBackendConfig::rocksdb(),
            restore: Some(RestoreFrom::Path(savepoint.clone())),
            checkpoint_dir: dir.join("checkpoints-rocksdb").display().to_string(),
            ..base.clone()
        },
    )
    .run()?;
    println!(
        "   restored in {:.1} ms, read the remaining input: {} lines; {}",
        second.startup_ms,
        second.records,
        checkpoints(&second)
    );

    println!("\n4. the committed output");
    let out = read_output(&output)?;
    let lines: usize = out.values().map(Vec::len).sum();
    let mut wrong = 0;
    for (w, n) in &expected {
        let mut got = out.get(w).cloned().unwrap_or_default();
        got.sort_unstable();
        if got != (1..=*n).collect::<Vec<_>>() {
            wrong += 1;
        }
    }
    println!("   {lines} lines for {words} word occurrences");
    println!(
        "   every word occurring n times has the counts 1..n exactly once: {}",
        if wrong == 0 && lines as u64 == words {
            "yes".to_string()
        } else {
            format!("NO ({wrong} words wrong)")
        }
    );
    let mut top: Vec<(&String, &u64)> = expected.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = top
        .iter()
        .take(5)
        .map(|(w, n)| format!("{w}={n}"))
        .collect();
    println!("   most frequent: {}", top.join(", "));

    println!("\n5. look inside the snapshots:");
    println!("   cargo run -p state-dump -- summary {savepoint}");
    println!(
        "   cargo run -p state-dump -- entries {savepoint} --uid count --state count --limit 5"
    );
    println!(
        "   cargo run -p state-dump -- files {}",
        dir.join("checkpoints-rocksdb").display()
    );
    if wrong != 0 || lines as u64 != words {
        return Err("the output is not exactly once".into());
    }
    Ok(())
}
