//! Per-record timestamps (Flink's `StreamRecord` timestamp and `Context.timestamp()`).
//!
//! A source emits records with and without timestamps (`collect_with_timestamp`,
//! `collect`); they go through a chained `map`, a `key_by` exchange at parallelism 2 and a
//! keyed function, which reports what `Collector::timestamp` says for each record, and
//! fires a processing-time and an event-time timer per key; a last function reports the
//! timestamp of everything the keyed function emitted. Expected, as in Flink: a record
//! keeps its timestamp (or none) through every operator and exchange, what a function
//! emits has its input's, an event-time timer's output has the timer's time, and a
//! processing-time timer's output and what `finish` emits have none. The sink sees each
//! record's timestamp, and the watermark its task passed on, in its `SinkContext`.

use std::sync::{Arc, Mutex};

use cairn_core::{KeyedStateBackend, ManualClock, ValueStateDescriptor, ValueStateId};
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobConfig, KeyedProcessFunction,
    ProcessFunction, ProcessingClock, Sink, SinkContext, Source, SourceStatus, TimeDomain, Timer,
    TimerService,
};
use serde::{Deserialize, Serialize};

const RECORDS: u64 = 300;
const KEYS: u64 = 4;

/// Record `n`'s timestamp: `10 n`, except that every third record has none.
fn timestamp_of(n: u64) -> Option<u64> {
    (!n.is_multiple_of(3)).then_some(10 * n)
}

/// Emits its subtask's share of `0..RECORDS` with [`timestamp_of`]; no state (the job runs
/// without checkpoints).
#[derive(Clone, Debug, Default)]
struct StampedSource {
    next: u64,
    step: u64,
}

impl Checkpointed for StampedSource {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.next = u64::from(ctx.subtask.index);
        self.step = u64::from(ctx.subtask.parallelism);
        Ok(())
    }
}

impl Source for StampedSource {
    type Out = u64;

    fn poll(
        &mut self,
        out: &mut Collector<'_, u64>,
        max: usize,
    ) -> cairn_runtime::Result<SourceStatus> {
        assert_eq!(out.timestamp(), None, "a source's poll has no input record");
        for _ in 0..max {
            if self.next >= RECORDS {
                return Ok(SourceStatus::End);
            }
            let n = self.next;
            self.next += self.step;
            match timestamp_of(n) {
                Some(t) => out.collect_with_timestamp(n, t)?,
                None => out.collect(n)?,
            }
        }
        Ok(SourceStatus::More)
    }
}

/// What the keyed function emits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Out {
    /// Record `n` arrived with timestamp `seen`.
    Record { n: u64, seen: Option<u64> },
    /// A timer of `key` fired.
    Fired { key: u64, domain: u8, time: u64 },
    /// The last function's `finish`.
    Finish,
}

/// Reports each record's timestamp; the first record of a key registers a processing-time
/// timer due at once and an event-time timer at `1_000_000 + key` (it fires with the
/// final watermark at the end of the input: no assigner sends watermarks).
#[derive(Clone, Debug)]
struct Report;

impl Checkpointed for Report {}

impl KeyedProcessFunction for Report {
    type Key = u64;
    type In = u64;
    type Out = Out;
    type State = ValueStateId<bool, ()>;

    fn open<B: KeyedStateBackend>(
        &mut self,
        backend: &mut B,
    ) -> cairn_runtime::Result<Self::State> {
        Ok(backend.register_value(&ValueStateDescriptor::<bool>::new("seen"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        state: &Self::State,
        key: &u64,
        n: u64,
        backend: &mut B,
        timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        if backend.value_get(*state, &())?.is_none() {
            backend.value_update(*state, &(), true)?;
            timers.register_processing_time_timer(0);
            timers.register_event_time_timer(1_000_000 + key);
        }
        let seen = out.timestamp();
        out.collect(Out::Record { n, seen })
    }

    fn on_timer<B: KeyedStateBackend>(
        &mut self,
        _state: &Self::State,
        key: &u64,
        timer: Timer,
        _backend: &mut B,
        _timers: &mut TimerService,
        out: &mut Collector<'_, Out>,
    ) -> cairn_runtime::Result<()> {
        let domain = u8::from(timer.domain == TimeDomain::EventTime);
        out.collect(Out::Fired {
            key: *key,
            domain,
            time: timer.time,
        })
    }
}

/// Pairs each record with the timestamp it arrived with; `finish` emits [`Out::Finish`].
#[derive(Clone, Debug)]
struct Stamp;

impl Checkpointed for Stamp {}

impl ProcessFunction<Out, (Out, Option<u64>)> for Stamp {
    fn process(
        &mut self,
        input: Out,
        out: &mut Collector<'_, (Out, Option<u64>)>,
    ) -> cairn_runtime::Result<()> {
        let timestamp = out.timestamp();
        out.collect((input, timestamp))
    }

    fn finish(&mut self, out: &mut Collector<'_, (Out, Option<u64>)>) -> cairn_runtime::Result<()> {
        let timestamp = out.timestamp();
        out.collect((Out::Finish, timestamp))
    }
}

/// What the job emits: a record of the keyed function and the timestamp it came with.
type Emitted = (Out, Option<u64>);

/// Collects into a shared list, with the sink's context of each record.
#[derive(Clone, Debug)]
struct Collect(Arc<Mutex<Vec<(Emitted, SinkContext)>>>);

impl Checkpointed for Collect {}

impl Sink<Emitted> for Collect {
    fn write(&mut self, record: Emitted) -> cairn_runtime::Result<()> {
        self.write_with_context(record, &SinkContext::default())
    }

    fn write_with_context(
        &mut self,
        record: Emitted,
        context: &SinkContext,
    ) -> cairn_runtime::Result<()> {
        self.0.lock().expect("lock").push((record, *context));
        Ok(())
    }
}

#[test]
fn records_keep_their_timestamps_and_timer_output_gets_the_timers() {
    let output = Arc::new(Mutex::new(Vec::new()));
    let graph = source("source", StampedSource::default())
        .map("same", |n: u64| n)
        .key_by(|n: &u64| n % KEYS)
        .process("report", Report)
        .process("stamp", Stamp)
        .sink("sink", Collect(output.clone()));
    let cfg = JobConfig {
        parallelism: 2,
        batch_size: 16,
        processing_clock: ProcessingClock::new(Arc::new(ManualClock::new(0))),
        ..JobConfig::default()
    };
    Job::new(graph, cfg).run().expect("job");

    let mut expected = Vec::new();
    for n in 0..RECORDS {
        let seen = timestamp_of(n);
        expected.push((Out::Record { n, seen }, seen));
    }
    for key in 0..KEYS {
        // A processing-time timer's output has no timestamp; an event-time timer's has
        // the timer's time.
        let time = 1_000_000 + key;
        expected.push((
            Out::Fired {
                key,
                domain: 0,
                time: 0,
            },
            None,
        ));
        expected.push((
            Out::Fired {
                key,
                domain: 1,
                time,
            },
            Some(time),
        ));
    }
    // `stamp` runs in both subtasks of the keyed stage; its `finish` output has none.
    expected.extend([(Out::Finish, None), (Out::Finish, None)]);
    expected.sort();
    let written = std::mem::take(&mut *output.lock().expect("lock"));
    for (record, context) in &written {
        // The sink sees the timestamp `stamp` saw; no assigner sends watermarks, and the
        // end of the input stands for the final one (it is not passed on).
        let expected = SinkContext {
            timestamp: record.1,
            watermark: None,
        };
        assert_eq!(*context, expected, "the sink's context of {record:?}");
    }
    let mut output: Vec<Emitted> = written.into_iter().map(|(record, _)| record).collect();
    output.sort();
    let first_difference = output.iter().zip(&expected).find(|(o, e)| o != e);
    assert_eq!(first_difference, None, "output against expected");
    assert_eq!(output.len(), expected.len());
}
