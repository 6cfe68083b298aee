//! The crash-recovery harness: runs the `wordcount` example as a child process, SIGKILLs
//! it at random moments (while it processes, uploads a checkpoint, writes a manifest,
//! commits output), restarts it with `--restore latest` at a parallelism drawn for each
//! run (1 to 3), and finally lets it finish at parallelism 2; then
//! checks the exactly-once property of the committed output (at-least-once: nothing lost).
//!
//! Quick by default (3 kills per configuration). The long setting:
//! `CAIRN_KILLS=200 cargo test --release -p cairn-runtime --test crash_wordcount -- --nocapture`
//! (`CAIRN_KILL_SEED` picks the random moments).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The example binary, built (once per test process) with the profile of this test.
fn wordcount_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
            let release = profile_dir.ends_with("release");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "cairn-runtime",
                "--example",
                "wordcount",
            ]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build --example wordcount failed");
            let bin = profile_dir.join("examples").join("wordcount");
            assert!(bin.exists(), "{} is missing", bin.display());
            bin
        })
        .clone()
}

struct Config {
    backend: &'static str,
    extra: &'static [&'static str],
    exactly_once: bool,
}

fn run_config(cfg: &Config) {
    let kills = env_u64("CAIRN_KILLS", 3);
    // Each configuration its own moments (FNV-1a of its arguments).
    let mut seed = std::iter::once(cfg.backend)
        .chain(cfg.extra.iter().copied())
        .flat_map(str::bytes)
        .fold(env_u64("CAIRN_KILL_SEED", 0x5eed), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
        | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Enough input for about two seconds per run at the throttle below.
    let lines = 2000 + kills as usize * 300;
    let (input, expected) = write_input(dir.path(), lines, 500, 21);
    let output = dir.path().join("out");
    let checkpoints = dir.path().join("checkpoints");
    let local = dir.path().join("rocksdb");
    // Every run (after a kill, from the latest checkpoint) at a parallelism of its own.
    let args = |restore: bool, parallelism: u64| {
        let mut a: Vec<String> = vec![
            "--input".into(),
            input.display().to_string(),
            "--output".into(),
            output.display().to_string(),
            "--backend".into(),
            cfg.backend.into(),
            "--checkpoint-dir".into(),
            checkpoints.display().to_string(),
            "--checkpoint-interval-ms".into(),
            "50".into(),
            "--parallelism".into(),
            parallelism.to_string(),
            "--records-per-second".into(),
            "1000".into(),
            "--local-dir".into(),
            local.display().to_string(),
        ];
        a.extend(cfg.extra.iter().map(|s| s.to_string()));
        if restore {
            a.extend(["--restore".to_string(), "latest".to_string()]);
        }
        a
    };
    let bin = wordcount_bin();
    let started = Instant::now();
    for k in 0..kills {
        let mut child = Command::new(&bin)
            .args(args(k > 0, 1 + rand() % 3))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wordcount");
        let delay = Duration::from_millis(50 + rand() % 600);
        std::thread::sleep(delay);
        let finished = child.try_wait().expect("try_wait").is_some();
        if !finished {
            child.kill().expect("SIGKILL");
        }
        child.wait().expect("wait");
    }
    let mut out = Command::new(&bin)
        .args(args(kills > 0, 2))
        .output()
        .expect("final run");
    // A checkpoint in which some subtasks of an operator had finished restores only at its
    // parallelism; the run says which.
    if let Some((_, p)) = demanded_parallelism(&String::from_utf8_lossy(&out.stderr)) {
        out = Command::new(&bin)
            .args(args(true, u64::from(p)))
            .output()
            .expect("final run");
    }
    assert!(
        out.status.success(),
        "final run failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {stdout}"));
    for field in [
        "records",
        "checkpoints_completed",
        "restarts",
        "savepoint",
        "checkpoint_dir",
        "output",
    ] {
        assert!(
            summary.get(field).is_some(),
            "summary lacks {field}: {summary}"
        );
    }
    let got = read_output(&output);
    if cfg.exactly_once {
        check_exactly_once(&expected, &got);
    } else {
        check_at_least_once(&expected, &got);
    }
    eprintln!(
        "{} {:?}: {kills} kills, exactly-once={} held, {:.1} s",
        cfg.backend,
        cfg.extra,
        cfg.exactly_once,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn hashmap_aligned() {
    run_config(&Config {
        backend: "hashmap",
        extra: &[],
        exactly_once: true,
    });
}

#[test]
fn hashmap_unaligned() {
    run_config(&Config {
        backend: "hashmap",
        extra: &["--unaligned"],
        exactly_once: true,
    });
}

#[test]
fn hashmap_at_least_once() {
    run_config(&Config {
        backend: "hashmap",
        extra: &["--mode", "at-least-once"],
        exactly_once: false,
    });
}

#[test]
fn hashmap_changelog() {
    run_config(&Config {
        backend: "hashmap",
        extra: &["--snapshot", "changelog"],
        exactly_once: true,
    });
}

#[test]
fn rocksdb_changelog_unaligned() {
    run_config(&Config {
        backend: "rocksdb",
        extra: &["--snapshot", "changelog", "--unaligned"],
        exactly_once: true,
    });
}

#[test]
fn rocksdb_full() {
    run_config(&Config {
        backend: "rocksdb",
        extra: &["--snapshot", "full"],
        exactly_once: true,
    });
}

#[test]
fn rocksdb_aligned() {
    run_config(&Config {
        backend: "rocksdb",
        extra: &[],
        exactly_once: true,
    });
}

#[test]
fn rocksdb_unaligned() {
    run_config(&Config {
        backend: "rocksdb",
        extra: &["--unaligned"],
        exactly_once: true,
    });
}

#[test]
fn rocksdb_at_least_once() {
    run_config(&Config {
        backend: "rocksdb",
        extra: &["--mode", "at-least-once"],
        exactly_once: false,
    });
}

/// SIGINT stops the job with a savepoint (its path in the summary); the job then finishes
/// from that savepoint under RocksDB at parallelism 3, exactly once.
#[test]
fn sigint_stops_with_a_savepoint_that_restores_under_rocksdb() {
    sigint_then_finish_under_rocksdb("hashmap", &[], |h| {
        matches!(h.data, cairn_core::KeyedData::Canonical { .. })
    });
}

/// `--drain`: SIGINT drains the job (the source ends its input, `finish` runs) before the
/// savepoint; the savepoint keeps the state and the source's position, so the job finishes
/// from it under RocksDB at parallelism 3, exactly once.
#[test]
fn sigint_with_drain_stops_with_a_savepoint_that_restores_under_rocksdb() {
    sigint_then_finish_under_rocksdb("hashmap", &["--drain"], |h| {
        matches!(h.data, cairn_core::KeyedData::Canonical { .. })
    });
}

/// `--savepoint-format native` under RocksDB: the signal's savepoint holds RocksDB's own
/// files, and it restores under RocksDB at another parallelism.
#[test]
fn sigint_stops_with_a_native_savepoint_under_rocksdb() {
    sigint_then_finish_under_rocksdb("rocksdb", &["--savepoint-format", "native"], |h| {
        matches!(h.data, cairn_core::KeyedData::RocksNative { .. })
    });
}

/// Runs the word count under `backend` at parallelism 2 with `extra` options, stops it with
/// SIGINT, checks that `format` holds for the keyed handles of the savepoint's `count`
/// operator, finishes the job from the savepoint under RocksDB at parallelism 3, and checks
/// the output is exactly once.
fn sigint_then_finish_under_rocksdb(
    backend: &str,
    extra: &[&str],
    format: impl Fn(&cairn_core::KeyedStateHandle) -> bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 23);
    let output = dir.path().join("out");
    let common = |backend: &str, parallelism: &str| -> Vec<String> {
        [
            "--input",
            &input.display().to_string(),
            "--output",
            &output.display().to_string(),
            "--checkpoint-dir",
            &dir.path().join("checkpoints").display().to_string(),
            "--savepoint-dir",
            &dir.path().join("savepoints").display().to_string(),
            "--local-dir",
            &dir.path().join("rocksdb").display().to_string(),
            "--backend",
            backend,
            "--parallelism",
            parallelism,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let bin = wordcount_bin();
    let child = Command::new(&bin)
        .args(common(backend, "2"))
        .args(["--records-per-second", "2000"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    let savepoint = summary["savepoint"]
        .as_str()
        .unwrap_or_else(|| panic!("no savepoint in {summary}"))
        .to_string();
    assert!(summary["records"].as_u64().unwrap_or(0) < 3000, "{summary}");
    let (m, _) = cairn_storage::open_savepoint(&savepoint).expect("open the savepoint");
    let count = m.operator("count").expect("the count operator");
    for st in &count.subtasks {
        let h = st.keyed.as_ref().expect("keyed state");
        assert!(format(h), "the savepoint's format: {h:?}");
    }
    let out = Command::new(&bin)
        .args(common("rocksdb", "3"))
        .args(["--restore", &savepoint])
        .output()
        .expect("restore run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_exactly_once(&expected, &read_output(&output));
}

/// Paths that cannot work are refused at once, naming what is wrong, not after the restart
/// strategy has retried the job three times: a missing input (the example checks it), an
/// input that is a directory or an output that is a file (the source and the sink say so as
/// configuration errors, as the job does of a RocksDB local directory that is a file), and
/// an S3 URL that lost its `//` (a local directory named `s3:` would otherwise be filled).
#[test]
fn paths_that_cannot_work_are_refused_before_any_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _) = write_input(dir.path(), 10, 5, 3);
    let missing = dir.path().join("no-such-input.txt");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"not a directory").expect("write");
    let p = |path: &Path| path.display().to_string();
    let cases: [(&str, String, String, String, String); 5] = [
        (
            "missing input",
            p(&missing),
            p(&dir.path().join("out")),
            p(&dir.path().join("checkpoints")),
            format!("cannot read --input {}", missing.display()),
        ),
        (
            "input is a directory",
            p(dir.path()),
            p(&dir.path().join("out")),
            p(&dir.path().join("checkpoints")),
            format!(
                "input is not a regular file (a directory?) path={}",
                dir.path().display()
            ),
        ),
        (
            "output is a file",
            p(&input),
            p(&a_file),
            p(&dir.path().join("checkpoints")),
            format!(
                "output directory is not a directory path={}",
                a_file.display()
            ),
        ),
        (
            "s3 url without //",
            p(&input),
            p(&dir.path().join("out")),
            "s3:/bucket/jobs".to_string(),
            "s3 URL without `//`".to_string(),
        ),
        (
            "rocksdb local directory is a file",
            p(&input),
            p(&dir.path().join("out")),
            p(&dir.path().join("checkpoints")),
            format!(
                "local directory is not a directory path={}",
                a_file.display()
            ),
        ),
    ];
    for (case, input, output, checkpoints, says) in cases {
        let out = Command::new(wordcount_bin())
            .current_dir(dir.path())
            .args(["--input", &input, "--output", &output])
            .args(["--checkpoint-dir", &checkpoints])
            .args(match case {
                "rocksdb local directory is a file" => {
                    vec![
                        "--backend",
                        "rocksdb",
                        "--local-dir",
                        a_file.to_str().unwrap_or(""),
                    ]
                }
                _ => vec![],
            })
            .output()
            .expect("run the word count");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{case}: {stderr}");
        assert!(
            stderr.contains(&says) && !stderr.contains("restarts"),
            "{case}: {stderr}"
        );
    }
    assert!(!dir.path().join("s3:").exists());
}

/// `--checkpoint-interval-ms 0` runs without periodic checkpoints: a failure starts the job
/// over, the sink discards what the failed attempt wrote and commits when the input ends,
/// so the output is still exactly once. Words are split at any whitespace (tabs, several
/// spaces, CRLF line ends), so no word holds the tab that separates it from its count.
/// `--metrics-file` gets the job's metrics: its last line counts every word occurrence
/// once into `count` and `sink` (the run after the restart read the whole input).
#[test]
fn without_checkpoints_a_failure_starts_over_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 4000, 200, 41);
    let text = std::fs::read_to_string(&input).expect("read input");
    let mixed: String = text
        .lines()
        .enumerate()
        .map(|(i, line)| match i % 4 {
            0 => format!("{}\n", line.replace(' ', "\t")),
            1 => format!("  {}  \r\n", line.replace(' ', " \t  ")),
            _ => format!("{line}\n"),
        })
        .collect();
    std::fs::write(&input, mixed).expect("write input");
    let output = dir.path().join("out");
    let out = Command::new(wordcount_bin())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .args(["--checkpoint-interval-ms", "0", "--parallelism", "2"])
        .args(["--fail-at-record", "2500"])
        .arg("--metrics-file")
        .arg(dir.path().join("metrics.jsonl"))
        .output()
        .expect("run the word count");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    assert_eq!(summary["checkpoints_completed"], 0, "{summary}");
    assert_eq!(summary["restarts"], 1, "{summary}");
    // The restart restored nothing: it started over.
    assert_eq!(
        summary["restarts_restored_from"],
        serde_json::json!([null]),
        "{summary}"
    );
    assert!(
        stderr.contains("restart 1 started from the beginning"),
        "{stderr}"
    );
    check_exactly_once(&expected, &read_output(&output));
    let metrics = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("metrics");
    let last: serde_json::Value =
        serde_json::from_str(metrics.lines().last().unwrap_or("{}")).expect("a JSON line");
    let values = &last["values"];
    let words: u64 = expected.values().sum();
    for uid in ["count", "sink"] {
        let n: u64 = (0..2)
            .map(|i| {
                values[format!("{uid}.{i}.numRecordsIn")]
                    .as_u64()
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(n, words, "{uid}: {last}");
    }
    assert_eq!(values["job.numRestarts"], 1, "{last}");
    assert_eq!(values["job.numberOfCompletedCheckpoints"], 0, "{last}");
}

/// SIGINT when the savepoint cannot be written (the savepoint directory is a file): the
/// failure is reported on stderr and the job runs on, as a Flink job does after a failed
/// stop-with-savepoint; the next SIGINT tries again (it does not kill the process), and the
/// job finishes its input exactly once. Before, the stop was retried silently on every
/// loop, and a second SIGINT exited the process at once.
#[test]
fn a_stop_that_fails_is_reported_and_the_job_runs_on() {
    a_stop_that_fails(&[]);
}

/// With `--drain`: the drained savepoint that cannot be written fails the job over (its
/// sources ended their input); the stop is reported once and the job reads on from its
/// latest checkpoint, and is not drained again until the next SIGINT (which fails the
/// same way), so the job finishes its input exactly once. Before, a failover kept the
/// signal's stop asked for, and each run drained and failed again until the restart
/// strategy gave up.
#[test]
fn a_drained_stop_that_fails_is_reported_and_the_job_reads_on() {
    a_stop_that_fails(&["--drain"]);
}

/// SIGINT twice with `extra` options while the savepoint directory is a file.
fn a_stop_that_fails(extra: &[&str]) {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = write_input(dir.path(), 3000, 300, 31);
    let output = dir.path().join("out");
    let not_a_dir = dir.path().join("savepoints");
    std::fs::write(&not_a_dir, b"a file").expect("write");
    let mut child = Command::new(wordcount_bin())
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .arg("--checkpoint-dir")
        .arg(dir.path().join("checkpoints"))
        .arg("--savepoint-dir")
        .arg(&not_a_dir)
        .args(["--records-per-second", "1500"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    for attempt in 1..=2 {
        std::thread::sleep(Duration::from_millis(300));
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill -INT");
        assert!(status.success());
        // Wait for the report (or the end of stderr, if the process exited).
        loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).expect("read stderr");
            seen.push_str(&line);
            if n == 0 || line.contains("stop-with-savepoint failed") {
                break;
            }
        }
        assert_eq!(
            seen.matches("stop-with-savepoint failed").count(),
            attempt,
            "{seen}"
        );
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}: {seen}", out.status);
    assert!(
        seen.contains("the job runs on") && seen.contains(&not_a_dir.display().to_string()),
        "{seen}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("{}")).expect("summary");
    assert!(summary["savepoint"].is_null(), "{summary}");
    check_exactly_once(&expected, &read_output(&output));
}
