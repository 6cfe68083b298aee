//! The `state-dump` binary: parses the command line and calls the library (see its docs).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;
use state_dump::{DumpError, EntriesOptions, EXIT_DATA, EXIT_OK};

/// Inspect, verify, diff, convert and clean up Cairn checkpoints and savepoints.
///
/// PATH is a checkpoint directory (<job>/chk-<id>), a savepoint directory, or its _metadata
/// file, as a local path, a file:// URL or an s3://bucket/prefix URL (configured by the
/// AWS_* environment variables: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
/// AWS_ENDPOINT, AWS_ALLOW_HTTP). ROOT is a job's checkpoint directory (holding chk-<id>/
/// and shared/). Exit codes: 0 ok (verify: clean), 1 an error in the data (verify:
/// corruption), 2 bad usage or not a snapshot.
#[derive(Debug, Parser)]
#[command(name = "state-dump", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Kind, id, time, format version and backend, and per operator uid: parallelism,
    /// states (name, kind, codecs), entries, bytes and files.
    Summary {
        /// The checkpoint or savepoint.
        path: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The decoded keys, namespaces and values of one keyed state (raw hex where the
    /// codec stores no schema).
    Entries {
        /// The checkpoint or savepoint.
        path: String,
        /// The operator uid.
        #[arg(long)]
        uid: String,
        /// The state name.
        #[arg(long)]
        state: String,
        /// Only entries of this key group.
        #[arg(long)]
        key_group: Option<u32>,
        /// Only this key: as decoded (`hello`, `42`, a JSON value) or as hex.
        #[arg(long)]
        key: Option<String>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<u64>,
        /// One JSON object per line: {"key":…,"namespace":…,"value":…,"key_group":…}
        /// (plus "user_key" for map state). A value of a state with a TTL (each list
        /// element's, each map value's) is {"ttl_stamped_ms":…,"value":…}.
        #[arg(long)]
        json: bool,
    },
    /// Every checksum and every referenced file with its size: exit 0 clean, 1 corruption
    /// (each finding names the file and offset), 2 not a snapshot or bad usage.
    Verify {
        /// The checkpoint or savepoint.
        path: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Operators, states and keys added, removed and changed from PATH_A to PATH_B.
    Diff {
        /// The snapshot before.
        path_a: String,
        /// The snapshot after.
        path_b: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Which checkpoints (and savepoints under ROOT) reference which shared files; orphans
    /// and missing files.
    Files {
        /// The job's checkpoint directory.
        root: String,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Keep the newest --retain complete checkpoints and delete everything no retained
    /// manifest references (subsumed and incomplete checkpoints, unreferenced shared
    /// files). Beside a running job, what is younger than --min-age stays; on a local
    /// directory gc knows from the job's lock whether one runs, and then refuses --min-age 0.
    Gc {
        /// The job's checkpoint directory.
        root: String,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// How many complete checkpoints to keep.
        #[arg(long, default_value_t = 1)]
        retain: usize,
        /// Keep unreferenced shared files and incomplete checkpoint directories younger
        /// than this (a job running elsewhere may be writing them): 0, or a number with
        /// s, m, h or d.
        #[arg(long, default_value = "1h", value_parser = state_dump::parse_min_age)]
        min_age: std::time::Duration,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Convert any checkpoint (native RocksDB, canonical full or incremental, changelog) or
    /// savepoint into a self-contained canonical savepoint in DIR that every backend
    /// restores.
    Convert {
        /// The checkpoint or savepoint.
        path: String,
        /// The savepoint directory to write (must not hold a savepoint, nor be a job's
        /// checkpoint directory or lie in its chk-<id>/ or shared/ directories).
        #[arg(long, value_name = "DIR")]
        out: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Prints a report as JSON or in its human form; a closed pipe is not an error.
fn print<T: Serialize>(
    json: bool,
    report: &T,
    human: impl FnOnce(&T) -> String,
) -> Result<(), DumpError> {
    let text = if json {
        let mut s = serde_json::to_string(report).map_err(|e| DumpError::Data {
            path: "<stdout>".into(),
            detail: e.to_string(),
        })?;
        s.push('\n');
        s
    } else {
        human(report)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DumpError::Data {
            path: "<stdout>".into(),
            detail: format!("write failed: {e}"),
        }),
        _ => Ok(()),
    }
}

fn run(cli: Cli) -> Result<i32, DumpError> {
    let progress = state_dump::progress_for_stderr();
    let progress = progress.as_ref();
    match cli.command {
        Command::Summary { path, json } => {
            let s = state_dump::open_snapshot(&path)?;
            print(json, &state_dump::summarize(&s, progress)?, |r| r.render())?;
        }
        Command::Entries {
            path,
            uid,
            state,
            key_group,
            key,
            limit,
            json,
        } => {
            let s = state_dump::open_snapshot(&path)?;
            let opts = EntriesOptions {
                uid,
                state,
                key_group,
                key,
                limit,
                json,
            };
            state_dump::write_entries(&s, &opts, &mut std::io::stdout().lock(), progress)?;
        }
        Command::Verify { path, json } => {
            let s = state_dump::open_snapshot(&path)?;
            let r = state_dump::verify(&s, progress)?;
            print(json, &r, |r| r.render())?;
            if !r.is_clean() {
                eprintln!(
                    "state-dump: verify found {} problem(s) path={}",
                    r.findings.len(),
                    r.path
                );
                return Ok(EXIT_DATA);
            }
        }
        Command::Diff {
            path_a,
            path_b,
            json,
        } => {
            let a = state_dump::open_snapshot(&path_a)?;
            let b = state_dump::open_snapshot(&path_b)?;
            print(json, &state_dump::diff(&a, &b, progress)?, |r| r.render())?;
        }
        Command::Files { root, json } => {
            let root = state_dump::open_job_root(&root)?;
            let r = state_dump::list_files(&root)?;
            print(json, &r, |r| r.render())?;
            if r.has_problems() {
                eprintln!(
                    "state-dump: missing files or corrupt manifests path={}",
                    r.root
                );
                return Ok(EXIT_DATA);
            }
        }
        Command::Gc {
            root,
            dry_run,
            retain,
            min_age,
            json,
        } => {
            let root = state_dump::open_job_root(&root)?;
            print(
                json,
                &state_dump::gc(&root, retain, min_age, dry_run)?,
                |r| r.render(),
            )?;
        }
        Command::Convert { path, out, json } => {
            let s = state_dump::open_snapshot(&path)?;
            print(json, &state_dump::convert(&s, &out, progress)?, |r| {
                r.render()
            })?;
        }
    }
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("state-dump: {}", e.one_line());
            e.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
