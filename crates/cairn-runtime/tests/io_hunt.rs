//! Sources and sinks at their edges (a helper's hunt over the file source, the generator and
//! the two-phase-commit file sink): the sink driven by hand through its checkpoint hooks,
//! subtask by subtask, with crashes between any two steps; the file source through jobs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use cairn_core::{redistribute, OperatorStateBackend, OperatorStateSnapshot};
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, InitContext, Job, JobConfig, RestoreFrom, RuntimeError, Sink,
    SnapshotContext, SubtaskInfo,
};

use common::{cancel_after, config};

// ---------------------------------------------------------------------------------------
// The two-phase-commit sink, by hand.
// ---------------------------------------------------------------------------------------

/// One sink subtask and its operator state.
#[derive(Debug)]
struct Sub {
    sink: TwoPhaseFileSink<String>,
    state: OperatorStateBackend,
}

fn proto(dir: &Path) -> TwoPhaseFileSink<String> {
    TwoPhaseFileSink::new(dir, |l: &String, o: &mut Vec<u8>| o.extend(l.as_bytes()))
}

/// Subtask `index` of `parallelism` in run `run_id` (`<nonce>-<attempt>`), fresh or
/// restored from its share.
fn open(
    dir: &Path,
    index: u32,
    parallelism: u32,
    run_id: &str,
    restored: Option<Vec<OperatorStateSnapshot>>,
) -> cairn_runtime::Result<Sub> {
    let mut state = OperatorStateBackend::new("sink");
    let is_restored = restored.is_some();
    if let Some(share) = restored {
        state.restore(share).map_err(|source| RuntimeError::State {
            uid: "sink".into(),
            source,
        })?;
    }
    let mut sink = proto(dir).clone();
    sink.initialize_state(&mut InitContext {
        operator_state: &mut state,
        is_restored,
        subtask: SubtaskInfo {
            index,
            parallelism,
            max_parallelism: 128,
            attempt: 0,
        },
        run_id,
        checkpointing: true,
        metrics: &cairn_runtime::MetricGroup::unregistered("sink.0"),
    })?;
    Ok(Sub { sink, state })
}

/// Opens every subtask of a run (subtask 0 first, as its recovery does not wait for the
/// others anyway), restored from `snapshot` (one entry per old subtask) when given.
fn open_all(
    dir: &Path,
    parallelism: u32,
    run_id: &str,
    snapshot: Option<&[Vec<OperatorStateSnapshot>]>,
) -> Vec<Sub> {
    let shares: Vec<Option<Vec<OperatorStateSnapshot>>> = match snapshot {
        Some(old) => redistribute("sink", old, parallelism)
            .expect("redistribute")
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..parallelism).map(|_| None).collect(),
    };
    shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| open(dir, i as u32, parallelism, run_id, share).expect("open"))
        .collect()
}

impl Sub {
    fn write(&mut self, lines: impl IntoIterator<Item = String>) {
        for l in lines {
            self.sink.write(l).expect("write");
        }
    }

    /// The synchronous phase of checkpoint `id`: pre-commits, returns the subtask's state.
    fn snapshot(&mut self, id: u64) -> Vec<OperatorStateSnapshot> {
        self.sink
            .snapshot_state(&mut SnapshotContext {
                operator_state: &mut self.state,
                checkpoint_id: id,
                is_savepoint: false,
            })
            .expect("snapshot");
        self.state.snapshot().expect("operator state")
    }
}

/// Checkpoint `id` of every subtask (the snapshot of the job's sink operator).
fn checkpoint(subs: &mut [Sub], id: u64) -> Vec<Vec<OperatorStateSnapshot>> {
    subs.iter_mut().map(|s| s.snapshot(id)).collect()
}

fn lines(tag: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|i| format!("{tag}{i}")).collect()
}

/// Committed lines (files not starting with `.`), sorted; and the dot-files left.
fn output(dir: &Path) -> (Vec<String>, Vec<String>) {
    let mut committed = Vec::new();
    let mut dot = Vec::new();
    for e in std::fs::read_dir(dir).expect("list output") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            dot.push(name);
        } else {
            let text = std::fs::read_to_string(e.path()).expect("read output");
            committed.extend(text.lines().map(str::to_string));
        }
    }
    committed.sort();
    dot.sort();
    (committed, dot)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Flink's TwoPhaseCommitSinkFunction: a notification commits every transaction
/// pre-committed by that checkpoint or an earlier one (notifications may be skipped or
/// arrive late), and an aborted checkpoint's transaction is committed by the next one that
/// completes.
#[test]
fn a_later_notification_commits_every_earlier_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut subs = open_all(&out, 1, "n1-0", None);
    let s = &mut subs[0];
    s.write(lines("a", 0..3));
    s.snapshot(1);
    s.write(lines("b", 0..3));
    s.snapshot(2);
    s.write(lines("c", 0..3));
    s.snapshot(3);
    s.sink.notify_checkpoint_aborted(3).expect("abort 3");
    s.write(lines("d", 0..3));
    assert!(output(&out).0.is_empty(), "nothing committed yet");
    s.sink.notify_checkpoint_complete(2).expect("complete 2");
    let want: Vec<String> = sorted([lines("a", 0..3), lines("b", 0..3)].concat());
    assert_eq!(output(&out).0, want);
    // A late notification of an earlier checkpoint: done already.
    s.sink
        .notify_checkpoint_complete(1)
        .expect("late complete 1");
    assert_eq!(output(&out).0, want);
    s.snapshot(4);
    s.sink.notify_checkpoint_complete(4).expect("complete 4");
    let (committed, dot) = output(&out);
    assert_eq!(
        committed,
        sorted([want, lines("c", 0..3), lines("d", 0..3)].concat())
    );
    assert!(dot.is_empty(), "{dot:?}");
}

/// The job crashes after checkpoint 2 completed and before any subtask was notified (or
/// after some were): its pre-committed files are committed by the restore, at any
/// parallelism; what was written after (pre-committed for checkpoint 3, which never
/// completed, or in progress) is aborted and deleted. A crash during that recovery, and a
/// second recovery from the same checkpoint, commit nothing twice.
#[test]
fn a_restore_at_any_parallelism_commits_every_old_subtasks_files_once() {
    for (old, new) in [(3, 1), (1, 3), (2, 2), (3, 2)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let mut subs = open_all(&out, old, "n1-0", None);
        let mut want = Vec::new();
        for (i, s) in subs.iter_mut().enumerate() {
            let first = lines(&format!("s{i}c1-"), 0..5);
            let second = lines(&format!("s{i}c2-"), 0..7);
            s.write(first.clone());
            s.snapshot(1);
            s.write(second.clone());
            want.extend(first);
            want.extend(second);
        }
        subs[0]
            .sink
            .notify_checkpoint_complete(1)
            .expect("complete 1");
        let chk2 = checkpoint(&mut subs, 2);
        // Subtask 0 commits checkpoint 2, then the process dies.
        subs[0]
            .sink
            .notify_checkpoint_complete(2)
            .expect("complete 2");
        for s in subs.iter_mut() {
            s.write(lines("after-", 0..3));
            s.snapshot(3);
            s.write(lines("lost-", 0..3));
        }
        drop(subs);
        let want = sorted(want);

        // Recovery, at another parallelism.
        let restored = open_all(&out, new, "n2-0", Some(&chk2));
        let (committed, dot) = output(&out);
        assert_eq!(committed, want, "{old} -> {new}");
        assert!(dot.is_empty(), "{old} -> {new}: {dot:?}");
        drop(restored);

        // It crashes too; a third run recovers from checkpoint 2 again.
        let again = open_all(&out, old, "n3-0", Some(&chk2));
        assert_eq!(output(&out).0, want, "{old} -> {new} -> {old}");
        drop(again);
    }
}

/// A crash in the middle of a recovery, after it committed some of the restored files:
/// the next recovery commits the others, and the first ones once.
#[test]
fn a_recovery_interrupted_half_way_commits_the_rest_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut subs = open_all(&out, 3, "n1-0", None);
    let mut want = Vec::new();
    for (i, s) in subs.iter_mut().enumerate() {
        let l = lines(&format!("s{i}-"), 0..4);
        s.write(l.clone());
        want.extend(l);
    }
    let chk1 = checkpoint(&mut subs, 1);
    drop(subs);
    // What a recovery that died after its first rename leaves.
    let mut pending: Vec<PathBuf> = std::fs::read_dir(&out)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".pending"))
        .collect();
    pending.sort();
    assert_eq!(pending.len(), 3, "{pending:?}");
    let name = pending[0]
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    let committed = name
        .trim_start_matches('.')
        .trim_end_matches(".pending")
        .to_string();
    std::fs::rename(&pending[0], out.join(committed)).expect("rename");
    let _recovered = open_all(&out, 2, "n2-0", Some(&chk1));
    let (committed, dot) = output(&out);
    assert_eq!(committed, sorted(want));
    assert!(dot.is_empty(), "{dot:?}");
}

/// Committed names never collide: every run (and restart attempt) names its files after
/// itself, so a restored run writing as many files as the one before adds to the output
/// instead of replacing it.
#[test]
fn committed_file_names_never_collide_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let mut want = Vec::new();
    let mut snapshot: Option<Vec<Vec<OperatorStateSnapshot>>> = None;
    for attempt in 0..4 {
        let run = format!("n1-{attempt}");
        let mut subs = open_all(&out, 2, &run, snapshot.as_deref());
        for (i, s) in subs.iter_mut().enumerate() {
            let l = lines(&format!("r{attempt}s{i}-"), 0..3);
            s.write(l.clone());
            want.extend(l);
        }
        let chk = checkpoint(&mut subs, attempt + 1);
        for s in subs.iter_mut() {
            s.sink
                .notify_checkpoint_complete(attempt + 1)
                .expect("complete");
        }
        snapshot = Some(chk);
    }
    assert_eq!(output(&out).0, sorted(want));
}

/// An output directory that cannot be created or written is an error naming it, never a
/// panic (the test runs as root, so a directory under a regular file stands for one
/// without write permission: both fail in the operating system's calls).
#[test]
fn an_output_directory_that_cannot_be_written_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("out");
    let err = open(&under, 0, 1, "n1-0", None).expect_err("a directory under a file");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot create the output directory")
            && msg.contains(&under.display().to_string()),
        "{msg}"
    );
    // A directory that disappears while the job runs.
    let out = dir.path().join("out");
    let mut s = open(&out, 0, 1, "n1-0", None).expect("open");
    std::fs::remove_dir(&out).expect("remove the directory");
    let err = s
        .sink
        .write("x".into())
        .expect_err("write into a missing directory");
    assert!(
        err.to_string().contains("cannot create an output file"),
        "{err}"
    );
}

/// The id of the newest completed checkpoint in `dir` (0: none).
fn newest_checkpoint(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().join("_metadata").is_file())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok())
            .max()
            .unwrap_or(0)
    })
}

/// A word count cancelled (with its checkpoints retained) at parallelism 3, restored at 2
/// and cancelled again, restored at 1 and run to the end, with three injected failures on
/// the way: exactly once (at least once), and nothing of the earlier runs is left in the
/// output directory: their in-progress and pending files were committed or aborted.
#[test]
fn a_job_cancelled_and_restored_at_other_parallelisms_leaves_only_its_output() {
    use cairn_runtime::CheckpointingMode;
    for mode in [
        CheckpointingMode::ExactlyOnce,
        CheckpointingMode::AtLeastOnce,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (input, expected) = common::write_input(dir.path(), 3000, 200, 17);
        let output = dir.path().join("out");
        let mut cfg = config(dir.path(), 15);
        cfg.checkpoint.mode = mode;
        cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
        cfg.records_per_second = Some(10_000);
        cfg.restart.delay = std::time::Duration::from_millis(5);
        // Word counts over every run (replays included; ~10,500 words in the input): two
        // failures early in the first run and one late in the last, away from the
        // cancellations (after ~2,800 and ~5,600 words), where a failure could coincide
        // with the cancel and never count as a restart (a CI run saw 2 restarts of 3 so).
        let fail = common::FailAt::at(vec![500, 2000, 9000]);
        let mut restore = None;
        let mut restarts = 0;
        let checkpoints = dir.path().join("checkpoints");
        for (p, lines) in [(3, 800), (2, 800), (1, 0)] {
            let before = newest_checkpoint(&checkpoints);
            let mut c = cfg.clone();
            c.parallelism = p;
            c.restore = restore.clone();
            let graph = common::wordcount(&input, &output, Some(fail.clone()), None);
            let handle = Job::new(graph, c).start().expect("start");
            let result = if lines > 0 {
                // Once a checkpoint of this run is also complete: a loaded machine may read
                // the lines before any completes.
                let read = handle.records_read() + lines;
                let started = std::time::Instant::now();
                while (handle.records_read() < read || newest_checkpoint(&checkpoints) <= before)
                    && started.elapsed() < std::time::Duration::from_secs(20)
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                handle.cancel();
                handle.wait().expect("run")
            } else {
                handle.wait().expect("last run")
            };
            assert!(result.checkpoints_completed > 0, "p{p}: {result:?}");
            restarts += result.restarts;
            restore = Some(RestoreFrom::Latest);
        }
        assert_eq!(restarts, 3, "{mode:?}");
        let got = common::read_output(&output);
        match mode {
            CheckpointingMode::ExactlyOnce => common::check_exactly_once(&expected, &got),
            _ => common::check_at_least_once(&expected, &got),
        }
        let (_, dot) = self::output(&output);
        assert!(dot.is_empty(), "{mode:?}: {dot:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The file source, through jobs.
// ---------------------------------------------------------------------------------------

/// Collects every record of every subtask (no checkpoints: the job runs once).
#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl Checkpointed for Collect {}

impl Sink<String> for Collect {
    fn write(&mut self, record: String) -> cairn_runtime::Result<()> {
        self.0
            .lock()
            .map_err(|_| RuntimeError::user("collect", "poisoned"))?
            .push(record);
        Ok(())
    }
}

/// Every line the file source reads from `input` at `parallelism`, sorted.
fn read_lines(input: &Path, parallelism: u32) -> cairn_runtime::Result<Vec<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let collect = Collect::default();
    let graph = source("source", FileSource::new(input)).sink("sink", collect.clone());
    let cfg = JobConfig {
        parallelism,
        checkpoint_dir: dir.path().join("checkpoints").display().to_string(),
        ..JobConfig::default()
    };
    Job::new(graph, cfg).run()?;
    let got = collect.0.lock().expect("lock").clone();
    Ok(sorted(got))
}

/// Empty files, files without a final newline, CRLF line ends, empty lines and lines much
/// longer than the reader's buffer (so that a line spans reads), at parallelism 1 to 4
/// (splits that start in the middle of a long line, or hold no line at all): every line
/// exactly once, without its line end.
#[test]
fn file_source_reads_every_line_once_at_its_edges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let long = |c: char, n: usize| std::iter::repeat_n(c, n).collect::<String>();
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        ("empty", String::new(), vec![]),
        ("one newline", "\n".into(), vec![String::new()]),
        (
            "no final newline",
            "a\nb".into(),
            vec!["a".into(), "b".into()],
        ),
        (
            "crlf",
            "a\r\nb\r\n\r\nc\r\n".into(),
            vec!["a".into(), "b".into(), String::new(), "c".into()],
        ),
        (
            "long lines",
            format!("{}\nx\n{}\ny", long('l', 200_000), long('m', 70_000)),
            vec![
                long('l', 200_000),
                "x".into(),
                long('m', 70_000),
                "y".into(),
            ],
        ),
        (
            "utf-8 across buffers",
            format!("{}é\n{}\n", long('a', 65_535), long('€', 30_000)),
            vec![format!("{}é", long('a', 65_535)), long('€', 30_000)],
        ),
    ];
    for (case, text, want) in cases {
        let input = dir.path().join(format!("{}.txt", case.replace(' ', "-")));
        std::fs::write(&input, &text).expect("write input");
        for p in 1..=4 {
            let got = read_lines(&input, p).unwrap_or_else(|e| panic!("{case} at p{p}: {e}"));
            assert!(
                got == sorted(want.clone()),
                "{case} at p{p}: {} lines",
                got.len()
            );
        }
    }
}

/// Bytes that are not UTF-8 are an error naming the file and the offset of the first bad
/// byte (here in the second subtask's split), not a panic and not a skipped line.
#[test]
fn file_source_names_the_offset_of_bytes_that_are_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("bad.txt");
    let mut bytes = b"good line\n".repeat(100);
    let bad_line = bytes.len() as u64;
    bytes.extend_from_slice(b"ok \xff\xfe rest\n");
    bytes.extend_from_slice(&b"good line\n".repeat(100));
    std::fs::write(&input, &bytes).expect("write input");
    let err = read_lines(&input, 2).expect_err("not UTF-8");
    let msg = err.to_string();
    assert!(
        msg.contains(&input.display().to_string())
            && msg.contains(&format!("offset {}", bad_line + 3)),
        "{msg}"
    );
}

/// Writes `n` numbered lines; returns the path, the lines and each line's end offset.
fn numbered_input(dir: &Path, n: usize) -> (PathBuf, Vec<String>, Vec<usize>) {
    let lines: Vec<String> = (0..n)
        .map(|i| format!("line {i:05} {}", "x".repeat(i % 13)))
        .collect();
    let mut text = String::new();
    let mut ends = Vec::new();
    for l in &lines {
        text.push_str(l);
        text.push('\n');
        ends.push(text.len());
    }
    let path = dir.join("input.txt");
    std::fs::write(&path, text).expect("write input");
    (path, lines, ends)
}

/// A collecting sink for checkpointed jobs (at-least-once for the test's purpose: only the
/// refusal matters).
fn collect_job(input: &Path, collect: &Collect, cfg: JobConfig) -> Job {
    Job::new(
        source("source", FileSource::new(input)).sink("sink", collect.clone()),
        cfg,
    )
}

/// A file truncated after the snapshot, at a line boundary past every saved position: the
/// restored source would find the end of the file before the ends of its splits and
/// silently skip the lines that are gone. The restore fails and says so.
#[test]
fn a_restore_over_a_file_cut_at_a_line_boundary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _, ends) = numbered_input(dir.path(), 4000);
    let mut cfg = config(dir.path(), 20);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(8000);
    cfg.checkpoint.retention = cairn_runtime::CheckpointRetention::RetainOnCancellation;
    let collect = Collect::default();
    let handle = collect_job(&input, &collect, cfg.clone())
        .start()
        .expect("start");
    let first = cancel_after(handle, 600).expect("first run");
    assert!(
        first.cancelled && first.checkpoints_completed > 0,
        "{first:?}"
    );
    let original = std::fs::read(&input).expect("read input");
    let mut latest = cfg;
    latest.restore = Some(RestoreFrom::Latest);
    // Cut at the end of line 1999 (subtask 0's split ends about there; subtask 1's is
    // past it) and at the end of line 3499 (inside subtask 1's split).
    for cut in [ends[1999], ends[3499]] {
        std::fs::write(&input, &original[..cut]).expect("cut the input");
        let err = collect_job(&input, &Collect::default(), latest.clone())
            .run()
            .expect_err("a file cut short");
        let msg = err.to_string();
        assert!(
            msg.contains("the input changed since the snapshot")
                && msg.contains(&format!("{cut} bytes")),
            "cut at {cut}: {msg}"
        );
    }
    std::fs::write(&input, &original).expect("restore the input");
    let result = collect_job(&input, &Collect::default(), latest)
        .run()
        .expect("the original input restores");
    assert!(result.restored_from.is_some(), "{result:?}");
}

/// A file cut while the job reads it (past what the reader has buffered): the source finds
/// the end of the file before the end of its split. That is an error naming the offset, not
/// the silent end of the input.
#[test]
fn a_file_cut_while_the_job_reads_it_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, _, ends) = numbered_input(dir.path(), 40_000);
    let cfg = JobConfig {
        checkpoint_dir: dir.path().join("checkpoints").display().to_string(),
        records_per_second: Some(20_000),
        ..JobConfig::default()
    };
    let handle = collect_job(&input, &Collect::default(), cfg)
        .start()
        .expect("start");
    while handle.records_read() < 200 {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let original = std::fs::read(&input).expect("read input");
    let cut = ends[19_999];
    std::fs::write(&input, &original[..cut]).expect("cut the input");
    let err = handle.wait().expect_err("a file cut short");
    let msg = err.to_string();
    assert!(
        matches!(err, RuntimeError::BadInput { offset, .. } if offset as usize == cut)
            && msg.contains("it was cut while the job read it"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// The word count example's command line.
// ---------------------------------------------------------------------------------------

/// The example binary, built (once per test process) with the profile of this test.
fn wordcount_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
            cmd.args([
                "build",
                "--quiet",
                "-p",
                "cairn-runtime",
                "--example",
                "wordcount",
            ]);
            if profile_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build");
            assert!(status.success(), "cargo build --example wordcount failed");
            profile_dir.join("examples").join("wordcount")
        })
        .clone()
}

/// Runs the word count in `dir` with `args`: exit code, stdout, stderr.
fn wordcount(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(wordcount_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run the word count");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Arguments that cannot work: clap's usage errors exit with 2, the rest with 1 and a
/// message naming the argument, before the job starts (nothing is created, no restarts).
/// Before, a `--restore` path that does not exist said only "manifest missing
/// path=chk-3/_metadata" (and created the checkpoint directory), an output directory
/// that cannot be created failed after the restart strategy's three restarts, and
/// `--aligned-timeout-ms` without `--unaligned` or `--restore-mode` without `--restore`
/// were silently ignored.
#[test]
fn wordcount_refuses_bad_arguments_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "a b\nb c\n").expect("write input");
    std::fs::write(d.join("a-file"), "x").expect("write");
    let missing = d.join("no-such").join("chk-3");
    let missing = missing.to_str().expect("utf-8");
    let file_url = format!("file://{missing}");
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (vec![], 2, "--input <INPUT>".into()),
        (
            vec!["--input", "in.txt", "--backend", "foo"],
            2,
            "invalid value 'foo' for '--backend".into(),
        ),
        (
            vec!["--input", "in.txt", "--aligned-timeout-ms", "10"],
            2,
            "--unaligned".into(),
        ),
        (
            vec!["--input", "in.txt", "--restore-mode", "claim"],
            2,
            "--restore <RESTORE>".into(),
        ),
        (
            vec!["--input", "in.txt", "--restore", missing],
            1,
            format!("cannot read --restore {missing}: No such file or directory"),
        ),
        (
            vec!["--input", "in.txt", "--restore", &file_url],
            1,
            format!("cannot read --restore {missing}: No such file or directory"),
        ),
        (
            vec!["--input", "in.txt", "--output", "a-file/out"],
            1,
            "cannot create --output a-file/out: Not a directory".into(),
        ),
    ];
    for (args, code, says) in cases {
        let (got, _, stderr) = wordcount(d, &args);
        assert_eq!(got, Some(code), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&says) && !stderr.contains("restarts") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
        assert!(
            !d.join("checkpoints").exists(),
            "{args:?} created the checkpoint directory"
        );
    }
}

/// The summary is one JSON line, the last of stdout, with what the job did; a restore from
/// the checkpoint it names says where it restored from.
#[test]
fn wordcount_prints_a_json_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("in.txt"), "a b\r\nb c\n\nc").expect("write input");
    let summary = |stdout: &str| -> serde_json::Value {
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary")
    };
    let (code, stdout, stderr) = wordcount(d, &["--input", "in.txt", "--parallelism", "2"]);
    assert_eq!(code, Some(0), "{stderr}");
    let first = summary(&stdout);
    assert_eq!(first["records"], 4, "{first}");
    assert_eq!(first["restarts"], 0, "{first}");
    assert_eq!(first["output"], "./output", "{first}");
    assert!(
        first["restored_from"].is_null() && first["savepoint"].is_null(),
        "{first}"
    );
    let completed = first["checkpoints_completed"].as_u64().expect("a count");
    assert!(completed >= 1, "the final checkpoint: {first}");
    let mut counts = common::read_output(&d.join("output"));
    counts.values_mut().for_each(|n| n.sort_unstable());
    let want: Vec<(String, Vec<u64>)> = vec![
        ("a".into(), vec![1]),
        ("b".into(), vec![1, 2]),
        ("c".into(), vec![1, 2]),
    ];
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), want);
    let chk = format!("checkpoints/chk-{completed}");
    let (code, stdout, stderr) = wordcount(d, &["--input", "in.txt", "--restore", &chk]);
    assert_eq!(code, Some(0), "{stderr}");
    let again = summary(&stdout);
    assert!(
        again["restored_from"]
            .as_str()
            .is_some_and(|s| s.contains(&chk)),
        "{again}"
    );
}
