//! Side outputs (`cairn_runtime::side`): a window's late data and a process function's
//! records in a side output reach their own sinks exactly once, through failures,
//! unaligned checkpoints, a stop-with-savepoint and a restore under the other backend at
//! another parallelism; graphs that cannot run are refused, naming the stream.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use cairn_runtime::function::FnProcess;
use cairn_runtime::sinks::TwoPhaseFileSink;
use cairn_runtime::sources::FileSource;
use cairn_runtime::{
    source, Checkpointed, Collector, EventTimeSessionWindows, Job, JobConfig, JobGraph, OutputTag,
    ProcessFunction, RestoreFrom, SnapshotMode, StateBackendConfig, TumblingEventTimeWindows,
    WatermarkStrategy,
};

use common::{is_late_event, write_late_events as write_events, BEHIND, LATE_EVENTS as EVENTS};

/// source (parallelism 1, so that only the events written behind are late) → parse →
/// timestamps → key_by → tumbling 100 ms windows (or `sessions` with a gap of 3 ms: a
/// key's events are 5 ms apart)
/// counting events, late data into a side output → sink of `(key and window end,
/// count)`; the late events → sink of `(key and time, 1)`.
fn window_job(
    input: &Path,
    output: &Path,
    late_output: &Path,
    fail_at: Vec<u64>,
    sessions: bool,
) -> JobGraph {
    let late = OutputTag::<(u64, u64)>::new("late");
    let keyed = source("source", FileSource::new(input))
        .parallelism(1)
        .process("parse", common::ParseEvents::new(fail_at))
        .parallelism(1)
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .parallelism(1)
        .key_by(|(key, _): &(u64, u64)| *key);
    let counted = if sessions {
        keyed
            .window(EventTimeSessionWindows::with_gap(Duration::from_millis(3)))
            .side_output_late_data(&late)
            .aggregate("windows", common::CountEvents)
    } else {
        keyed
            .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
            .side_output_late_data(&late)
            .aggregate("windows", common::CountEvents)
    };
    counted
        .side_output(&late)
        .map("late-label", |(key, t): (u64, u64)| {
            (key * 1_000_000 + t, 1)
        })
        .sink("late-sink", common::count_sink(late_output));
    counted
        .process("label", FnProcess(common::label_window))
        .sink("sink", common::count_sink(output))
}

/// Every event is counted once in all: in a window, or in the late output, each late
/// one once; only events written behind are late, and some are.
fn check_windows_and_late(output: &Path, late_output: &Path) {
    let windows: u64 = common::read_output(output).values().flatten().sum();
    let late = common::read_output(late_output);
    for (event, ones) in &late {
        assert_eq!(ones, &vec![1], "late event {event} committed once");
        let event: u64 = event.parse().expect("late event");
        let (key, time) = (event / 1_000_000, event % 1_000_000);
        assert!(
            key >= 100 && is_late_event(time + BEHIND),
            "event of key {key} at {time} was not written behind"
        );
    }
    assert!(!late.is_empty(), "no event was late");
    assert_eq!(
        windows + late.len() as u64,
        EVENTS,
        "{windows} in windows and {} late",
        late.len()
    );
}

/// Starts `graph`, waits until it has read 2,000 lines (past its failure) and `output`
/// has committed something, stops it with a savepoint, and returns the savepoint.
fn stop_part_way(graph: JobGraph, cfg: JobConfig, output: &Path) -> String {
    let handle = Job::new(graph, cfg).start().expect("start");
    let started = Instant::now();
    while handle.records_read() < 2_000 {
        assert!(started.elapsed() < Duration::from_secs(20), "nothing read");
        std::thread::sleep(Duration::from_millis(5));
    }
    common::wait_for_commit(output);
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let first = handle.wait().expect("first run");
    assert_eq!(first.restarts, 1, "{first:?}");
    assert!(first.records < EVENTS, "the input ended before the stop");
    savepoint
}

/// Late data through a failure, a savepoint, and a restore with a failure under the
/// other backend at parallelism 3 (`second`), checkpoints `unaligned` or not.
fn late_data_case(
    first: StateBackendConfig,
    second: StateBackendConfig,
    unaligned: bool,
    sessions: bool,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_events(dir.path());
    let output = dir.path().join("out");
    let late_output = dir.path().join("late");
    let mut cfg = common::event_time_config(dir.path(), first, SnapshotMode::Full, unaligned, 2);
    cfg.records_per_second = Some(4_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    let graph = window_job(&input, &output, &late_output, vec![900], sessions);
    let savepoint = stop_part_way(graph, cfg, &output);

    let mut cfg =
        common::event_time_config(dir.path(), second, SnapshotMode::Incremental, unaligned, 3);
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let graph = window_job(&input, &output, &late_output, vec![1_500], sessions);
    let result = Job::new(graph, cfg).run().expect("restored run");
    assert_eq!(result.restarts, 1, "{result:?}");
    check_windows_and_late(&output, &late_output);
}

#[test]
fn late_data_reaches_its_sink_exactly_once_heap_then_rocksdb() {
    late_data_case(
        StateBackendConfig::HashMap,
        StateBackendConfig::rocksdb(),
        false,
        false,
    );
}

#[test]
fn late_data_reaches_its_sink_exactly_once_unaligned_rocksdb_then_heap() {
    late_data_case(
        StateBackendConfig::rocksdb(),
        StateBackendConfig::HashMap,
        true,
        false,
    );
}

/// Sessions' late data: a record whose merged session is past its lateness.
#[test]
fn late_data_of_sessions_reaches_its_sink_exactly_once() {
    late_data_case(
        StateBackendConfig::HashMap,
        StateBackendConfig::rocksdb(),
        false,
        true,
    );
}

/// Passes words on, and words of more than `LONG` letters also into side output `long`.
#[derive(Clone, Debug)]
struct Tokenize {
    long: OutputTag<String>,
}

const LONG: usize = 2;

impl Checkpointed for Tokenize {}

impl ProcessFunction<String, String> for Tokenize {
    fn process(
        &mut self,
        line: String,
        out: &mut Collector<'_, String>,
    ) -> cairn_runtime::Result<()> {
        for w in line.split(' ').filter(|w| !w.is_empty()) {
            if w.len() > LONG {
                out.output(&self.long, w.to_string())?;
            }
            out.collect(w.to_string())?;
        }
        Ok(())
    }
}

/// The word count with long words also sent, each occurrence with count 1, to a side
/// sink: source → tokenize (side output `long` → its own stage → sink) → fail → key_by →
/// count → sink.
fn wordcount_with_long_words(
    input: &Path,
    output: &Path,
    long_output: &Path,
    fail: common::FailAt,
) -> JobGraph {
    let long = OutputTag::<String>::new("long");
    let words = source("source", FileSource::new(input))
        .process("tokenize", Tokenize { long: long.clone() });
    words
        .side_output(&long)
        .map("long-one", |w: String| (w, 1))
        .parallelism(2)
        .sink(
            "long-sink",
            TwoPhaseFileSink::new(long_output, common::format_line),
        );
    words
        .process("fail", fail)
        .key_by(|w: &String| w.clone())
        .process("count", common::Count::new())
        .sink("sink", TwoPhaseFileSink::new(output, common::format_line))
}

/// A process function's side output: every long word's occurrence committed once in the
/// side sink, every count once in the main one, through two failures with unaligned
/// checkpoints at parallelism 3, the side stage at 2.
#[test]
fn a_process_functions_side_output_is_exactly_once_across_failures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, expected) = common::write_input(dir.path(), 3_000, 2_000, 5);
    let output = dir.path().join("out");
    let long_output = dir.path().join("long");
    let mut cfg = common::config(dir.path(), 20);
    cfg.parallelism = 3;
    cfg.records_per_second = Some(2_000);
    cfg.checkpoint.unaligned = true;
    cfg.restart = cairn_runtime::RestartStrategy::fixed_delay(3, Duration::from_millis(10));
    let graph = wordcount_with_long_words(
        &input,
        &output,
        &long_output,
        common::FailAt::at(vec![3_000, 8_000]),
    );
    let result = Job::new(graph, cfg).run().expect("run");
    assert_eq!(result.restarts, 2, "{result:?}");
    // Checkpoints complete while the job runs (the side stage takes part in them).
    assert!(
        result.restarts_restored_from.iter().all(Option::is_some),
        "{result:?}"
    );
    common::check_exactly_once(&expected, &common::read_output(&output));
    let long: BTreeMap<String, u64> = expected
        .iter()
        .filter(|(w, _)| w.len() > LONG)
        .map(|(w, n)| (w.clone(), *n))
        .collect();
    assert!(!long.is_empty() && long.len() < expected.len());
    let seen = common::read_output(&long_output);
    let counted: BTreeMap<String, u64> = seen
        .iter()
        .map(|(w, ones)| {
            assert!(ones.iter().all(|n| *n == 1), "{w}: {ones:?}");
            (w.clone(), ones.len() as u64)
        })
        .collect();
    assert_eq!(counted, long, "each long word's occurrences, once each");
}

/// A two-phase file sink of lines.
fn string_sink(output: &Path) -> TwoPhaseFileSink<String> {
    TwoPhaseFileSink::new(output, |s: &String, o: &mut Vec<u8>| {
        o.extend_from_slice(s.as_bytes())
    })
}

/// Graphs that cannot run are refused when the job starts, naming the stream: a side
/// output that no sink ends, one read twice, one of an operator that emits none.
#[test]
fn graphs_with_side_outputs_that_cannot_run_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_events(dir.path());
    let out = dir.path().join("out");
    let refused = |graph: JobGraph| -> String {
        Job::new(graph, common::config(dir.path(), 50))
            .start()
            .expect_err("refused")
            .to_string()
    };
    let tag = OutputTag::<String>::new("extra");
    let lines = || source("source", FileSource::new(&input));

    let tokens = lines().process("tokenize", Tokenize { long: tag.clone() });
    let _unended = tokens.side_output(&tag);
    let err = refused(tokens.sink("sink", string_sink(&out)));
    assert!(
        err.contains("side output extra of operator tokenize does not end in a sink"),
        "{err}"
    );

    let tokens = lines().process("tokenize", Tokenize { long: tag.clone() });
    tokens.side_output(&tag).sink("a", string_sink(&out));
    tokens.side_output(&tag).sink("b", string_sink(&out));
    let err = refused(tokens.sink("sink", string_sink(&out)));
    assert!(err.contains("read by two streams"), "{err}");

    let stamped = lines().assign_timestamps_and_watermarks(
        "timestamps",
        WatermarkStrategy::for_monotonous_timestamps(|_: &String| 0),
    );
    stamped.side_output(&tag).sink("a", string_sink(&out));
    let err = refused(stamped.sink("sink", string_sink(&out)));
    assert!(
        err.contains("side output extra of operator timestamps")
            && err.contains("only a process function"),
        "{err}"
    );
}

/// Passes events on, and a copy of each into side output `copy`.
#[derive(Clone, Debug)]
struct Copy {
    copy: OutputTag<(u64, u64)>,
}

impl Checkpointed for Copy {}

impl ProcessFunction<(u64, u64), (u64, u64)> for Copy {
    fn process(
        &mut self,
        event: (u64, u64),
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        out.output(&self.copy, event)?;
        out.collect(event)
    }
}

/// Watermarks go down side outputs too: event-time windows on a side stream fire (and
/// their results are committed) while the input is still being read, not only at its end.
#[test]
fn watermarks_reach_the_windows_of_a_side_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write_events(dir.path());
    let output = dir.path().join("out");
    let copy = OutputTag::<(u64, u64)>::new("copy");
    let events = source("source", FileSource::new(&input))
        .process("parse", common::ParseEvents::new(Vec::new()))
        .assign_timestamps_and_watermarks(
            "timestamps",
            WatermarkStrategy::for_monotonous_timestamps(|(_, t): &(u64, u64)| *t),
        )
        .process("copy", Copy { copy: copy.clone() });
    events
        .side_output(&copy)
        .key_by(|(key, _): &(u64, u64)| *key)
        .window(TumblingEventTimeWindows::of(Duration::from_millis(100)))
        .aggregate("windows", common::CountEvents)
        .process("label", FnProcess(common::label_window))
        .sink("sink", common::count_sink(&output));
    let graph = events.sink("discard", cairn_runtime::sinks::DiscardSink);
    let mut cfg = common::config(dir.path(), 20);
    cfg.parallelism = 2;
    cfg.records_per_second = Some(2_000);
    cfg.auto_watermark_interval = Duration::from_millis(10);
    let handle = Job::new(graph, cfg).start().expect("start");
    common::wait_for_commit(&output);
    assert!(
        handle.records_read() < EVENTS,
        "nothing was committed before the input ended"
    );
    handle.cancel();
    handle.wait().expect("cancelled run");
}
