//! Joins against a model computed from the input. The interval join (Flink's
//! `intervalJoin`): every pair of equal keys whose event times are within the bounds is
//! joined exactly once (through failures, aligned and unaligned, under both backends;
//! across a savepoint restored at another parallelism and backend), with the later
//! timestamp of the two; exclusive and negative bounds; the buffers are cleaned up as the
//! watermark passes; and what the join refuses. The window join and co-group (Flink's
//! `join(..).where(..).equalTo(..).window(..)` and `coGroup`): every pair of a key's
//! tumbling or sliding window, and each window's records of both sides, exactly once.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Collector, EventTimeSessionWindows, FnJoin, Job, JobConfig, JoinContext, KeyedStream,
    RestoreFrom, RuntimeError, SlidingEventTimeWindows, SnapshotMode, StateBackendConfig, Stream,
    TimeWindow, TumblingEventTimeWindows, WatermarkStrategy,
};
use common::*;

/// Left events: `n % 5` at `2n` ms; right events: `m % 5` at `2m + 7` ms (their event
/// times advance alike as they are read, so the watermark keeps up with both).
const LEFT: u64 = 1500;
const RIGHT: u64 = 2000;

fn left_event(n: u64) -> (u64, u64) {
    (n % 5, 2 * n)
}

fn right_event(m: u64) -> (u64, u64) {
    (m % 5, 2 * m + 7)
}

/// Writes both inputs (`key time` lines) into `dir`.
fn write_events(dir: &Path) -> (PathBuf, PathBuf) {
    (
        write_event_file(dir, "left.txt", LEFT, &left_event),
        write_event_file(dir, "right.txt", RIGHT, &right_event),
    )
}

/// Writes events `at(0..n)` as `key time` lines into `dir/name`.
fn write_event_file(dir: &Path, name: &str, n: u64, at: &dyn Fn(u64) -> (u64, u64)) -> PathBuf {
    let text: String = (0..n)
        .map(|i| {
            let (k, t) = at(i);
            format!("{k} {t}\n")
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write events");
    path
}

/// The co-group's function of the window tests: a window's records of both sides,
/// counted, as `key/window end/lefts/rights`.
fn count_sides(
    k: &u64,
    w: TimeWindow,
    lefts: Vec<(u64, u64)>,
    rights: Vec<(u64, u64)>,
    out: &mut Collector<'_, (String, u64)>,
) -> cairn_runtime::Result<()> {
    let end = w.end;
    out.collect((format!("{k}/{end}/{}/{}", lefts.len(), rights.len()), 1))
}

/// Every pair the join must emit, as `key/left time/right time` → 1.
fn model(
    lower: i64,
    upper: i64,
    lower_inclusive: bool,
    upper_inclusive: bool,
) -> BTreeMap<String, u64> {
    let mut pairs = BTreeMap::new();
    for (k, tl) in (0..LEFT).map(left_event) {
        for (k2, tr) in (0..RIGHT).map(right_event) {
            let d = tr as i64 - tl as i64;
            let above = if lower_inclusive {
                d >= lower
            } else {
                d > lower
            };
            let below = if upper_inclusive {
                d <= upper
            } else {
                d < upper
            };
            if k == k2 && above && below {
                pairs.insert(format!("{k}/{tl}/{tr}"), 1);
            }
        }
    }
    pairs
}

/// The events of file source `source-<side>`, parsed (failing at `fail_at`) and stamped.
fn events(side: &str, path: &Path, fail_at: Vec<u64>) -> KeyedStream<u64, (u64, u64)> {
    source(&format!("source-{side}"), FileSource::new(path))
        .process(&format!("parse-{side}"), ParseEvents::new(fail_at))
        .assign_timestamps_and_watermarks(
            &format!("timestamps-{side}"),
            WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
        )
        .key_by(|e: &(u64, u64)| e.0)
}

/// Labels each pair `key/left time/right time`, checking the emitted timestamp.
fn label(
    left: &(u64, u64),
    right: &(u64, u64),
    ctx: &JoinContext,
    out: &mut Collector<'_, (String, u64)>,
) -> cairn_runtime::Result<()> {
    let expected = (left.1, right.1);
    if (ctx.left_timestamp, ctx.right_timestamp) != expected
        || out.timestamp() != Some(left.1.max(right.1))
    {
        return Err(RuntimeError::user(
            "join",
            format!(
                "pair {left:?} {right:?}: context {ctx:?}, timestamp {:?}",
                out.timestamp()
            ),
        ));
    }
    out.collect((format!("{}/{}/{}", left.0, left.1, right.1), 1))
}

type Join = fn(
    cairn_runtime::IntervalJoin<u64, (u64, u64), (u64, u64)>,
) -> cairn_runtime::IntervalJoined<u64, (u64, u64), (u64, u64)>;

fn graph(
    left: &Path,
    right: &Path,
    output: &Path,
    fail_at: Vec<u64>,
    bounds: Join,
) -> cairn_runtime::JobGraph {
    bounds(events("left", left, fail_at).interval_join(events("right", right, Vec::new())))
        .process("join", FnJoin(label))
        .sink("sink", TwoPhaseFileSink::new(output, format_line))
}

fn run_config(dir: &Path, backend: StateBackendConfig, unaligned: bool, p: u32) -> JobConfig {
    let mut cfg = event_time_config(dir, backend, SnapshotMode::Incremental, unaligned, p);
    cfg.records_per_second = Some(20_000);
    cfg
}

#[test]
fn pairs_within_the_bounds_are_joined_exactly_once_through_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    let want = model(-20, 10, true, true);
    assert!(want.len() > 2000, "a model with pairs: {}", want.len());
    for (backend, unaligned, p) in [
        (StateBackendConfig::HashMap, false, 1),
        (StateBackendConfig::rocksdb(), true, 3),
        (StateBackendConfig::HashMap, true, 2),
    ] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let cfg = run_config(run_dir.path(), backend, unaligned, p);
        let result = Job::new(
            graph(&left, &right, &output, vec![600, 1300], |j| {
                j.between(-20, 10)
            }),
            cfg,
        )
        .run()
        .expect("job");
        assert_eq!(result.restarts, 2, "p{p} unaligned {unaligned}: {result:?}");
        check_exactly_once(&want, &read_output(&output));
    }
}

#[test]
fn exclusive_and_negative_bounds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    let cases: [(Join, BTreeMap<String, u64>); 3] = [
        (
            |j| {
                j.between(-20, 10)
                    .lower_bound_exclusive()
                    .upper_bound_exclusive()
            },
            model(-20, 10, false, false),
        ),
        (|j| j.between(-40, -15), model(-40, -15, true, true)),
        (|j| j.between(-3, -3), model(-3, -3, true, true)),
    ];
    for (bounds, want) in cases {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let cfg = run_config(run_dir.path(), StateBackendConfig::HashMap, false, 2);
        Job::new(graph(&left, &right, &output, Vec::new(), bounds), cfg)
            .run()
            .expect("job");
        assert!(!want.is_empty());
        check_exactly_once(&want, &read_output(&output));
    }
}

/// A savepoint under the hashmap backend at parallelism 2, restored under RocksDB at
/// parallelism 3: the buffered records move with their keys and still find their pairs.
#[test]
fn buffered_records_survive_a_savepoint_restored_at_another_parallelism_and_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    let output = dir.path().join("out");
    let mut cfg = run_config(dir.path(), StateBackendConfig::HashMap, false, 2);
    cfg.records_per_second = Some(4_000);
    let handle = Job::new(
        graph(&left, &right, &output, Vec::new(), |j| j.between(-20, 10)),
        cfg.clone(),
    )
    .start()
    .expect("start");
    while handle.records_read() < 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    cfg.parallelism = 3;
    cfg.backend = StateBackendConfig::rocksdb();
    cfg.records_per_second = None;
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let second = Job::new(
        graph(&left, &right, &output, Vec::new(), |j| j.between(-20, 10)),
        cfg,
    )
    .run()
    .expect("restored run");
    assert_eq!(
        first.records + second.records,
        LEFT + RIGHT,
        "{first:?} {second:?}"
    );
    check_exactly_once(&model(-20, 10, true, true), &read_output(&output));
}

fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .expect("savepoint directory")
        .flatten()
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                dir_size(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// The buffers hold only what can still match: two savepoints of one run, after 500 and
/// after 3,300 records, are about the same size (were either side's buffer never dropped,
/// the second would hold six times its records: compressed, about twice the size).
#[test]
fn buffers_are_dropped_as_the_watermark_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    let output = dir.path().join("out");
    let mut cfg = run_config(dir.path(), StateBackendConfig::HashMap, false, 1);
    cfg.records_per_second = Some(3_000);
    let handle = Job::new(
        graph(&left, &right, &output, Vec::new(), |j| j.between(-20, 10)),
        cfg,
    )
    .start()
    .expect("start");
    let mut sizes = Vec::new();
    for records in [500, 3300] {
        while handle.records_read() < records {
            std::thread::sleep(Duration::from_millis(5));
        }
        let savepoint = handle.trigger_savepoint(None).expect("savepoint");
        sizes.push(dir_size(Path::new(&savepoint)));
    }
    handle.cancel();
    let _ = handle.wait();
    assert!(
        sizes[1] < sizes[0] * 3 / 2,
        "savepoint sizes after 500 and 3,300 records: {sizes:?}"
    );
}

/// Refused: bounds the wrong way round (when the job starts, naming the operator), and
/// records without timestamps (naming the operator and the side).
#[test]
fn what_the_join_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    let output = dir.path().join("out");
    let mut cfg = run_config(dir.path(), StateBackendConfig::HashMap, false, 1);
    cfg.restart.max_restarts = 0;
    let error = Job::new(
        graph(&left, &right, &output, Vec::new(), |j| j.between(10, -10)),
        cfg.clone(),
    )
    .run()
    .expect_err("refused")
    .to_string();
    assert!(
        error.contains("interval join join: the lower bound 10 ms is above the upper bound -10 ms"),
        "{error}"
    );

    let untimed = |side: &str, path: &Path| {
        source(&format!("source-{side}"), FileSource::new(path))
            .process(&format!("parse-{side}"), ParseEvents::new(Vec::new()))
            .key_by(|e: &(u64, u64)| e.0)
    };
    let graph = untimed("left", &left)
        .interval_join(untimed("right", &right))
        .between(-5, 5)
        .process("join", FnJoin(label))
        .sink("sink", TwoPhaseFileSink::new(&output, format_line));
    let error = Job::new(graph, cfg).run().expect_err("refused").to_string();
    assert!(
        error.contains("operator join failed")
            && error.contains("input of the interval join has no timestamp"),
        "{error}"
    );
}

/// The events of `source-<side>`, parsed and stamped, not keyed (a window join keys them).
fn stamped(side: &str, path: &Path, fail_at: Vec<u64>) -> Stream<(u64, u64)> {
    source(&format!("source-{side}"), FileSource::new(path))
        .process(&format!("parse-{side}"), ParseEvents::new(fail_at))
        .assign_timestamps_and_watermarks(
            &format!("timestamps-{side}"),
            WatermarkStrategy::for_monotonous_timestamps(|e: &(u64, u64)| e.1),
        )
}

/// The windows (`size`, `slide` ms) an event at `t` falls in, as their ends (a window
/// that would start before the epoch starts at it, and keeps its end).
fn window_ends(t: u64, size: u64, slide: u64) -> Vec<u64> {
    let (t, size, slide) = (t as i64, size as i64, slide as i64);
    let mut start = t - t % slide;
    let mut ends = Vec::new();
    while start > t - size {
        ends.push((start + size) as u64);
        start -= slide;
    }
    ends
}

/// Every pair of equal keys in a common window (`key/left time/right time/window end`)
/// and, per key and window with records, `key/window end/lefts/rights`.
fn window_model(size: u64, slide: u64) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let (mut pairs, mut groups) = (BTreeMap::new(), BTreeMap::new());
    let mut sides: BTreeMap<(u64, u64), (u64, u64)> = BTreeMap::new();
    for (k, tl) in (0..LEFT).map(left_event) {
        for w in window_ends(tl, size, slide) {
            sides.entry((k, w)).or_default().0 += 1;
            for (k2, tr) in (0..RIGHT).map(right_event) {
                if k == k2 && window_ends(tr, size, slide).contains(&w) {
                    pairs.insert(format!("{k}/{tl}/{tr}/{w}"), 1);
                }
            }
        }
    }
    for (k, tr) in (0..RIGHT).map(right_event) {
        for w in window_ends(tr, size, slide) {
            sides.entry((k, w)).or_default().1 += 1;
        }
    }
    for ((k, w), (l, r)) in sides {
        groups.insert(format!("{k}/{w}/{l}/{r}"), 1);
    }
    (pairs, groups)
}

#[test]
fn a_window_join_and_co_group_see_every_window_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (left, right) = write_events(dir.path());
    for (backend, unaligned, p, size, slide) in [
        (StateBackendConfig::HashMap, false, 2, 50, 50),
        (StateBackendConfig::rocksdb(), true, 3, 60, 20),
    ] {
        let (pairs, groups) = window_model(size, slide);
        let windows = || {
            if size == slide {
                TumblingEventTimeWindows::of(Duration::from_millis(size))
            } else {
                SlidingEventTimeWindows::of(
                    Duration::from_millis(size),
                    Duration::from_millis(slide),
                )
            }
        };
        let keyed = || {
            stamped("left", &left, vec![700, 1400])
                .join(stamped("right", &right, Vec::new()))
                .on(|e: &(u64, u64)| e.0, |e: &(u64, u64)| e.0)
                .window(windows())
        };
        // The pairs: a result's timestamp is its window's last millisecond.
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let joined = keyed().apply(
            "join",
            move |l: &(u64, u64), r: &(u64, u64), out: &mut Collector<'_, (String, u64)>| {
                let end = out.timestamp().map_or(0, |t| t + 1);
                out.collect((format!("{}/{}/{}/{end}", l.0, l.1, r.1), 1))
            },
        );
        let cfg = run_config(run_dir.path(), backend.clone(), unaligned, p);
        let result = Job::new(
            joined.sink("sink", TwoPhaseFileSink::new(&output, format_line)),
            cfg,
        )
        .run()
        .expect("join");
        assert_eq!(result.restarts, 2, "p{p} unaligned {unaligned}: {result:?}");
        check_exactly_once(&pairs, &read_output(&output));

        // The groups: both sides of every window with records, either side maybe empty.
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let grouped = keyed().co_group("co-group", count_sides);
        let cfg = run_config(run_dir.path(), backend, unaligned, p);
        let result = Job::new(
            grouped.sink("sink", TwoPhaseFileSink::new(&output, format_line)),
            cfg,
        )
        .run()
        .expect("co-group");
        assert_eq!(result.restarts, 2, "p{p} unaligned {unaligned}: {result:?}");
        check_exactly_once(&groups, &read_output(&output));
    }
}

/// Session windows: each input comes in bursts, one a second (left: 60 events 3 ms apart,
/// right: 40 events 4 ms apart, keys `n % 3`), so each key's burst is one session of both
/// inputs (a 100 ms gap); the co-group sees each session's records of both sides once.
#[test]
fn a_session_window_co_group_sees_each_session_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let burst = |n: u64, per_burst: u64, spacing: u64, offset: u64| {
        (
            n % 3,
            (n / per_burst) * 1000 + (n % per_burst) * spacing + offset,
        )
    };
    let left_at = |n: u64| burst(n, 60, 3, 0);
    let right_at = |m: u64| burst(m, 40, 4, 1);
    let (left, right) = (
        write_event_file(dir.path(), "left.txt", 600, &left_at),
        write_event_file(dir.path(), "right.txt", 400, &right_at),
    );
    // Per key and burst: the session's end (its last event + the gap) and both counts.
    let mut sessions: BTreeMap<(u64, u64), (u64, u64, u64)> = BTreeMap::new();
    for (k, t) in (0..600).map(left_at) {
        let s = sessions.entry((k, t / 1000)).or_default();
        s.0 = s.0.max(t + 100);
        s.1 += 1;
    }
    for (k, t) in (0..400).map(right_at) {
        let s = sessions.entry((k, t / 1000)).or_default();
        s.0 = s.0.max(t + 100);
        s.2 += 1;
    }
    let want: BTreeMap<String, u64> = sessions
        .iter()
        .map(|((k, _), (end, l, r))| (format!("{k}/{end}/{l}/{r}"), 1))
        .collect();
    assert_eq!(want.len(), 30);
    for (backend, unaligned, p) in [
        (StateBackendConfig::HashMap, false, 2),
        (StateBackendConfig::rocksdb(), true, 3),
    ] {
        let run_dir = tempfile::tempdir().expect("tempdir");
        let output = run_dir.path().join("out");
        let grouped = stamped("left", &left, vec![400])
            .join(stamped("right", &right, Vec::new()))
            .on(|e: &(u64, u64)| e.0, |e: &(u64, u64)| e.0)
            .window(EventTimeSessionWindows::with_gap(Duration::from_millis(
                100,
            )))
            .co_group("co-group", count_sides);
        let mut cfg = run_config(run_dir.path(), backend, unaligned, p);
        cfg.records_per_second = Some(2_000);
        let result = Job::new(
            grouped.sink("sink", TwoPhaseFileSink::new(&output, format_line)),
            cfg,
        )
        .run()
        .expect("co-group");
        assert_eq!(result.restarts, 1, "p{p} unaligned {unaligned}: {result:?}");
        check_exactly_once(&want, &read_output(&output));
    }
}

/// Late records (older than the join's watermark) go to each side's late side output
/// instead of being dropped: both inputs are the late-events script (every 40th event from
/// 3,000 on is 3 s behind), and nothing else is late or lost (one subtask per operator, so
/// the watermark follows each input closely; no failure, as a restore starts without one).
#[test]
fn late_records_of_each_side_go_to_their_side_outputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = write_late_events(dir.path());
    let (late_left, late_right) = (
        cairn_runtime::OutputTag::<(u64, u64)>::new("late-left"),
        cairn_runtime::OutputTag::<(u64, u64)>::new("late-right"),
    );
    let collected = || std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64)>::new()));
    let (lefts, rights) = (collected(), collected());
    let pairs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64, u64)>::new()));
    let joined = events_keyed("left", &events)
        .interval_join(events_keyed("right", &events))
        .between(-5, 5)
        .side_output_left_late_data(&late_left)
        .side_output_right_late_data(&late_right)
        .process(
            "join",
            FnJoin(
                |l: &(u64, u64),
                 r: &(u64, u64),
                 _: &JoinContext,
                 out: &mut Collector<'_, (u64, u64, u64)>| {
                    out.collect((l.0, l.1, r.1))
                },
            ),
        );
    let _left = joined
        .side_output(&late_left)
        .sink("late-left-sink", Collect(lefts.clone()));
    let _right = joined
        .side_output(&late_right)
        .sink("late-right-sink", Collect(rights.clone()));
    let graph = joined.sink("sink", Collect(pairs.clone()));
    let mut cfg = run_config(dir.path(), StateBackendConfig::HashMap, false, 1);
    cfg.records_per_second = Some(6_000);
    Job::new(graph, cfg).run().expect("job");

    let late: Vec<(u64, u64)> = (0..LATE_EVENTS)
        .filter(|n| is_late_event(*n))
        .map(|n| (100 + n % 5, n - BEHIND))
        .collect();
    for (side, got) in [("left", &lefts), ("right", &rights)] {
        let mut got = got.lock().expect("lock").clone();
        got.sort_unstable();
        assert_eq!(got, late, "the late records of the {side} side");
    }
    let on_time: Vec<u64> = (0..LATE_EVENTS).filter(|n| !is_late_event(*n)).collect();
    let mut want = Vec::new();
    for &l in &on_time {
        for &r in &on_time {
            if l % 5 == r % 5 && r + 5 >= l && r <= l + 5 {
                want.push((l % 5, l, r));
            }
        }
    }
    let mut got = pairs.lock().expect("lock").clone();
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the pairs of the records on time");
}

/// The events of `source-<side>`, parsed, stamped and keyed.
fn events_keyed(side: &str, path: &Path) -> KeyedStream<u64, (u64, u64)> {
    events(side, path, Vec::new())
}
