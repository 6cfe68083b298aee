//! Word count with exactly-once output: `<word>\t<count so far>` for every word occurrence,
//! written by a two-phase-commit file sink. See `--help`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cairn_runtime::functions::Count;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, CheckpointConfig, CheckpointingMode, Job, JobConfig, JsonLinesReporter, MetricsConfig,
    RestoreFrom, RestoreMode, SnapshotMode, StateBackendConfig,
};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Hashmap,
    Rocksdb,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Snapshot {
    Full,
    Incremental,
    Changelog,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Claim {
    NoClaim,
    Claim,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SavepointType {
    Canonical,
    Native,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    ExactlyOnce,
    AtLeastOnce,
}

/// Counts words exactly once, with checkpoints, failure recovery and savepoints.
#[derive(Parser, Debug)]
#[command(name = "wordcount")]
struct Args {
    /// Lines of words separated by spaces (or any other whitespace: tabs, which would make the
    /// output ambiguous, never end up in a word).
    #[arg(long)]
    input: PathBuf,
    /// The two-phase-commit sink's directory (names starting with "." are not output yet).
    #[arg(long, default_value = "./output")]
    output: PathBuf,
    #[arg(long, value_enum, default_value = "hashmap")]
    backend: Backend,
    #[arg(long, value_enum, default_value = "incremental")]
    snapshot: Snapshot,
    /// A path, file://…, or s3://bucket/prefix: one job's at a time (a local directory is
    /// locked while a job checkpoints into it).
    #[arg(long, default_value = "./checkpoints")]
    checkpoint_dir: String,
    /// 0: no periodic checkpoints (the output is committed when the input ends, and a
    /// failure starts the job over)
    #[arg(long, default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    #[arg(long, value_enum, default_value = "exactly-once")]
    mode: Mode,
    /// Unaligned checkpoints (in-flight records are stored in the checkpoint).
    #[arg(long)]
    unaligned: bool,
    /// With --unaligned: start aligned, switch to unaligned after this long.
    #[arg(long, requires = "unaligned")]
    aligned_timeout_ms: Option<u64>,
    #[arg(long, default_value_t = 1)]
    parallelism: u32,
    #[arg(long, default_value_t = 128)]
    max_parallelism: u32,
    /// A checkpoint or savepoint directory, or "latest" (newest checkpoint under
    /// --checkpoint-dir).
    #[arg(long)]
    restore: Option<String>,
    /// With --restore: "claim" takes over the restored savepoint or checkpoint (a checkpoint
    /// must be the newest in --checkpoint-dir), which retention then deletes in time;
    /// "no-claim" (the default) never deletes it.
    #[arg(long, value_enum, requires = "restore")]
    restore_mode: Option<Claim>,
    /// Where stop-with-savepoint (SIGINT/SIGTERM) writes.
    #[arg(long, default_value = "./savepoints")]
    savepoint_dir: String,
    /// The savepoint's format (Flink's `--type`): canonical restores under either backend;
    /// native (RocksDB's own files) is faster to take and restore, under rocksdb only.
    #[arg(long, value_enum, default_value = "canonical")]
    savepoint_format: SavepointType,
    /// On SIGINT/SIGTERM, drain before the savepoint (Flink's `flink stop --drain`): the
    /// source ends its input, every operator finishes, and what the job read is committed;
    /// for a job that is to end for good.
    #[arg(long)]
    drain: bool,
    /// Inject one task failure after the source has read this many lines in total.
    #[arg(long)]
    fail_at_record: Option<u64>,
    /// Throttle the source to this many lines per second in total.
    #[arg(long)]
    records_per_second: Option<u64>,
    /// RocksDB's local working directory (default: the system temp directory).
    #[arg(long)]
    local_dir: Option<PathBuf>,
    /// Completed checkpoints to keep.
    #[arg(long, default_value_t = 3)]
    retained: usize,
    /// Append the job's metrics to this file as JSON lines, every --metrics-interval-ms
    /// and once at the end ("-": standard error).
    #[arg(long)]
    metrics_file: Option<String>,
    /// How often --metrics-file gets a line (Flink's reporter interval).
    #[arg(long, default_value_t = 10_000, requires = "metrics_file")]
    metrics_interval_ms: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wordcount: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Checked before the job starts: in the job, a missing input is a task failure, retried
    // by the restart strategy before it fails the job.
    if let Err(e) = std::fs::File::open(&args.input) {
        return Err(format!("cannot read --input {}: {e}", args.input.display()).into());
    }
    // So is a snapshot to restore that is not there (the job would say only that a manifest
    // is missing), when it is a local path.
    if let Some(path) = args.restore.as_deref().and_then(local_path) {
        if let Err(e) = std::fs::metadata(path) {
            return Err(format!("cannot read --restore {path}: {e}").into());
        }
    }
    // And an output directory that cannot be created (the sink says it of one that is a
    // file).
    if !args.output.exists() {
        if let Err(e) = std::fs::create_dir_all(&args.output) {
            return Err(format!("cannot create --output {}: {e}", args.output.display()).into());
        }
    }
    let snapshot_mode = match args.snapshot {
        Snapshot::Full => SnapshotMode::Full,
        Snapshot::Incremental => SnapshotMode::Incremental,
        Snapshot::Changelog => SnapshotMode::Changelog,
    };
    let backend = match args.backend {
        Backend::Hashmap => StateBackendConfig::HashMap,
        Backend::Rocksdb => match &args.local_dir {
            Some(dir) => StateBackendConfig::RocksDb {
                local_dir: dir.clone(),
                options: Default::default(),
            },
            None => StateBackendConfig::rocksdb(),
        },
    };
    let restore = match args.restore.as_deref() {
        None => None,
        Some("latest") => Some(RestoreFrom::Latest),
        Some(path) => Some(RestoreFrom::Path(path.to_string())),
    };
    let mut metrics =
        MetricsConfig::default().every(Duration::from_millis(args.metrics_interval_ms));
    match args.metrics_file.as_deref() {
        None => {}
        Some("-") => metrics = metrics.with_reporter(JsonLinesReporter::to_stderr()),
        Some(path) => metrics = metrics.with_reporter(JsonLinesReporter::to_file(path)?),
    }
    let config = JobConfig {
        name: "wordcount".into(),
        metrics,
        parallelism: args.parallelism,
        max_parallelism: args.max_parallelism,
        checkpoint: CheckpointConfig {
            interval: (args.checkpoint_interval_ms > 0)
                .then(|| Duration::from_millis(args.checkpoint_interval_ms)),
            mode: match args.mode {
                Mode::ExactlyOnce => CheckpointingMode::ExactlyOnce,
                Mode::AtLeastOnce => CheckpointingMode::AtLeastOnce,
            },
            unaligned: args.unaligned,
            aligned_timeout: Duration::from_millis(args.aligned_timeout_ms.unwrap_or(0)),
            num_retained: args.retained.max(1),
            retention: cairn_runtime::CheckpointRetention::RetainOnCancellation,
            snapshot_mode,
            ..CheckpointConfig::default()
        },
        checkpoint_dir: args.checkpoint_dir.clone(),
        savepoint_dir: Some(args.savepoint_dir.clone()),
        savepoint_format: match args.savepoint_format {
            SavepointType::Canonical => cairn_runtime::SavepointFormat::Canonical,
            SavepointType::Native => cairn_runtime::SavepointFormat::Native,
        },
        backend,
        restore: restore.clone(),
        restore_mode: match args.restore_mode {
            None | Some(Claim::NoClaim) => RestoreMode::NoClaim,
            Some(Claim::Claim) => RestoreMode::Claim,
        },
        records_per_second: args.records_per_second,
        fail_at_record: args.fail_at_record,
        ..JobConfig::default()
    };
    let graph = source("source", FileSource::new(&args.input))
        .flat_map("tokenize", |line: String| {
            line.split_whitespace()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        })
        .key_by(|w: &String| w.clone())
        .process("count", Count::<String, String>::new())
        .sink(
            "sink",
            TwoPhaseFileSink::new(&args.output, |(w, n): &(String, u64), out: &mut Vec<u8>| {
                out.extend_from_slice(w.as_bytes());
                out.push(b'\t');
                out.extend_from_slice(n.to_string().as_bytes());
            }),
        );
    let job = Job::new(graph, config);
    let job = if args.drain {
        job.stop_with_savepoint_and_drain_on_signals()
    } else {
        job.stop_with_savepoint_on_signals()
    };
    let result = job.run()?;
    if restore == Some(RestoreFrom::Latest) && result.restored_from.is_none() {
        eprintln!(
            "wordcount: no completed checkpoint under {}; started from the beginning",
            args.checkpoint_dir
        );
    }
    if let Some(from) = &result.restored_from {
        eprintln!("wordcount: restored from {from}");
    }
    for (i, from) in result.restarts_restored_from.iter().enumerate() {
        let n = i + 1;
        match from {
            Some(from) => eprintln!("wordcount: restart {n} restored from {from}"),
            None => eprintln!(
                "wordcount: restart {n} started from the beginning (no checkpoint had completed)"
            ),
        }
    }
    let summary = serde_json::json!({
        "records": result.records,
        "checkpoints_completed": result.checkpoints_completed,
        "checkpoints_failed": result.checkpoints_failed,
        "checkpoints_subsumed": result.checkpoints_subsumed,
        "restarts": result.restarts,
        // Per restart: the snapshot it restored from, or null (started from the beginning).
        "restarts_restored_from": result.restarts_restored_from,
        "savepoint": result.savepoint,
        "checkpoint_dir": result.checkpoint_dir,
        "output": args.output.display().to_string(),
        "restored_from": result.restored_from,
        "wall_s": result.wall_s,
    });
    println!("{summary}");
    Ok(())
}

/// The local path a `--restore` value names: a path or a `file://` URL; `None` for
/// "latest" and other URLs (S3).
fn local_path(restore: &str) -> Option<&str> {
    if restore == "latest" {
        return None;
    }
    match restore.strip_prefix("file://") {
        Some(path) => Some(path),
        None => (!restore.contains("://")).then_some(restore),
    }
}
