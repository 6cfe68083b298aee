//! A keyed process function's `Checkpointed::initialize_state` runs before its `open`, and
//! its `InitContext` tells the instance which subtask it is (the backend `open` gets owns
//! that subtask's key groups) and whether its state was restored: not on a fresh start, yes
//! after a restart from a checkpoint and after a restore from a savepoint at another
//! parallelism.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::{KeyGroupRange, KeyedStateBackend, ValueStateDescriptor, ValueStateId};
use cairn_runtime::sinks::DiscardSink;
use cairn_runtime::sources::GeneratorSource;
use cairn_runtime::{
    source, Checkpointed, Collector, InitContext, Job, JobConfig, JobGraph, KeyedProcessFunction,
    RestartStrategy, RestoreFrom, RuntimeError, SubtaskInfo,
};

/// What one instance saw when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Opened {
    /// From `initialize_state`; `None`: it had not run before `open`.
    init: Option<(SubtaskInfo, bool)>,
    /// The backend's key groups are those of the subtask `initialize_state` named.
    owns_its_key_groups: bool,
}

/// A per-key count that logs what each instance saw in `open`, and fails once, at its
/// first record after a checkpoint completed, when armed.
#[derive(Clone, Debug)]
struct Probe {
    log: Arc<Mutex<Vec<Opened>>>,
    armed: Arc<AtomicBool>,
    /// Set by `initialize_state`: the subtask and `is_restored`.
    init: Option<(SubtaskInfo, bool)>,
    notified: bool,
}

impl Probe {
    fn new(armed: bool) -> Self {
        Self {
            log: Arc::default(),
            armed: Arc::new(AtomicBool::new(armed)),
            init: None,
            notified: false,
        }
    }

    fn opened(&self) -> Vec<Opened> {
        self.log.lock().expect("log").clone()
    }
}

impl Checkpointed for Probe {
    fn initialize_state(&mut self, ctx: &mut InitContext<'_>) -> cairn_runtime::Result<()> {
        self.init = Some((ctx.subtask, ctx.is_restored));
        Ok(())
    }

    fn notify_checkpoint_complete(&mut self, _id: u64) -> cairn_runtime::Result<()> {
        self.notified = true;
        Ok(())
    }
}

impl KeyedProcessFunction for Probe {
    type Key = u64;
    type In = u64;
    type Out = (u64, u64);
    type State = ValueStateId<u64, ()>;

    fn open<B: KeyedStateBackend>(&mut self, b: &mut B) -> cairn_runtime::Result<Self::State> {
        let owns_its_key_groups = self.init.is_some_and(|(s, _)| {
            KeyGroupRange::for_subtask(s.max_parallelism, s.parallelism, s.index).ok()
                == Some(b.key_group_range())
        });
        self.log.lock().expect("log").push(Opened {
            init: self.init,
            owns_its_key_groups,
        });
        Ok(b.register_value(&ValueStateDescriptor::new("count"))?)
    }

    fn process<B: KeyedStateBackend>(
        &mut self,
        count: &Self::State,
        key: &u64,
        _record: u64,
        b: &mut B,
        _timers: &mut cairn_runtime::TimerService,
        out: &mut Collector<'_, (u64, u64)>,
    ) -> cairn_runtime::Result<()> {
        if self.notified && self.armed.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::user("count", "injected failure"));
        }
        let n = b.value_get(*count, &())?.unwrap_or(0) + 1;
        b.value_update(*count, &(), n)?;
        out.collect((*key, n))
    }
}

fn graph(probe: Probe, generator: GeneratorSource) -> JobGraph {
    source("source", generator)
        .key_by(|k: &u64| *k)
        .process("count", probe)
        .sink("sink", DiscardSink)
}

fn job_config(dir: &std::path::Path, parallelism: u32) -> JobConfig {
    let mut cfg = common::config(dir, 20);
    cfg.parallelism = parallelism;
    cfg.restart = RestartStrategy::fixed_delay(1, Duration::from_millis(10));
    cfg.records_per_second = Some(20_000);
    cfg
}

/// What the instances of one run (`attempt`) saw, by subtask index.
fn run_of(opened: &[Opened], attempt: u32) -> Vec<(u32, u32, bool)> {
    let mut run: Vec<(u32, u32, bool)> = opened
        .iter()
        .filter_map(|o| o.init)
        .filter(|(s, _)| s.attempt == attempt)
        .map(|(s, restored)| (s.index, s.parallelism, restored))
        .collect();
    run.sort_unstable();
    run
}

#[test]
fn keyed_functions_learn_their_subtask_and_restore_before_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A fresh start at parallelism 2, a failure after a checkpoint completed, then a
    // savepoint of the restarted run.
    let first = Probe::new(true);
    let generator = GeneratorSource::new(20_000, 1000, 3).idle_at_end();
    let handle = Job::new(graph(first.clone(), generator), job_config(dir.path(), 2))
        .start()
        .expect("start");
    let started = Instant::now();
    while first.opened().len() < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no restart: {:?}",
            first.opened()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let savepoint = handle
        .stop_with_savepoint(None)
        .expect("stop with savepoint");
    let result = handle.wait().expect("first job");
    assert_eq!(result.restarts, 1, "{result:?}");
    let opened = first.opened();
    assert!(
        opened
            .iter()
            .all(|o| o.init.is_some() && o.owns_its_key_groups),
        "{opened:?}"
    );
    assert_eq!(run_of(&opened, 0), [(0, 2, false), (1, 2, false)]);
    assert_eq!(run_of(&opened, 1), [(0, 2, true), (1, 2, true)]);

    // Restored from the savepoint at parallelism 3.
    let second = Probe::new(false);
    let mut cfg = job_config(dir.path(), 3);
    cfg.checkpoint_dir = dir.path().join("checkpoints-2").display().to_string();
    cfg.restore = Some(RestoreFrom::Path(savepoint));
    let generator = GeneratorSource::new(20_000, 1000, 3);
    let result = Job::new(graph(second.clone(), generator), cfg)
        .run()
        .expect("second job");
    assert_eq!(result.restarts, 0, "{result:?}");
    let opened = second.opened();
    assert!(
        opened
            .iter()
            .all(|o| o.init.is_some() && o.owns_its_key_groups),
        "{opened:?}"
    );
    assert_eq!(
        run_of(&opened, 0),
        [(0, 3, true), (1, 3, true), (2, 3, true)]
    );
}
