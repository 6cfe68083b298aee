//! Messages to the checkpoint coordinator, and the asynchronous-phase workers.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::{CancelToken, SavepointFormat, SnapshotTarget};
use cairn_format::SubtaskManifest;
use crossbeam_channel::{Receiver, Sender};

use crate::chain::OperatorPart;
use crate::error::RuntimeError;

/// A task: stage index and subtask index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TaskId {
    pub(crate) stage: usize,
    pub(crate) index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stage, self.index)
    }
}

/// A finished operator part: `(uid, subtask index, manifest part)`.
pub(crate) type WrittenPart = (String, u32, SubtaskManifest);

/// What tasks, workers and the job handle tell the coordinator.
pub(crate) enum CoordMsg {
    /// A task finished the synchronous phase of a checkpoint.
    Synced {
        attempt: u32,
        task: TaskId,
        checkpoint_id: u64,
        /// From the trigger until the task began handling the barrier.
        start_delay: Duration,
        /// From the task's first barrier until its snapshot (aligning).
        alignment: Duration,
        /// The state capture: the task's operators' snapshots (keyed and operator state).
        sync: Duration,
        /// Forwarding the barrier downstream after the capture (flushing output batches
        /// into full channels included).
        forward: Duration,
        parts: Vec<OperatorPart>,
        /// An [`CoordMsg::Inflight`] follows (unaligned checkpoint).
        inflight_follows: bool,
    },
    /// The in-flight records of an unaligned checkpoint at one task, for the operator
    /// state of its first operator (`None`: there were none).
    Inflight {
        attempt: u32,
        checkpoint_id: u64,
        uid: String,
        index: u32,
        state: Option<cairn_core::OperatorStateSnapshot>,
    },
    /// A task's asynchronous phase finished.
    Written {
        attempt: u32,
        task: TaskId,
        checkpoint_id: u64,
        result: Result<Vec<WrittenPart>, String>,
    },
    /// A task gave up a checkpoint.
    Declined {
        attempt: u32,
        checkpoint_id: u64,
        reason: String,
    },
    /// A task is built (its state restored) and about to process records.
    TaskStarted {
        attempt: u32,
    },
    /// A source read its last record.
    SourceFinished {
        attempt: u32,
        task: TaskId,
    },
    /// A task's input ended and its operators finished (it waits for the final checkpoint).
    EndOfData {
        attempt: u32,
        task: TaskId,
    },
    /// A task's thread returned.
    TaskFinished {
        attempt: u32,
        task: TaskId,
    },
    TaskFailed {
        attempt: u32,
        error: RuntimeError,
    },
    /// From the job handle: take a savepoint (`stop`: then end the job).
    Savepoint(SavepointRequest),
    /// From the job handle: cancel the job.
    Cancel,
}

/// A savepoint to take: where (or the configured directory), in which format, whether the
/// job then stops, and where to answer with its path.
pub(crate) struct SavepointRequest {
    pub(crate) dir: Option<String>,
    pub(crate) format: SavepointFormat,
    pub(crate) stop: bool,
    /// Stop-with-savepoint `--drain`: the sources end their input first (implies `stop`).
    pub(crate) drain: bool,
    pub(crate) reply: Sender<crate::Result<String>>,
}

/// One task's asynchronous phase.
pub(crate) struct AsyncJob {
    pub(crate) attempt: u32,
    pub(crate) task: TaskId,
    pub(crate) checkpoint_id: u64,
    pub(crate) parts: Vec<OperatorPart>,
    pub(crate) target: Arc<dyn SnapshotTarget>,
    pub(crate) cancel: CancelToken,
}

/// Runs asynchronous phases off the task threads.
pub(crate) fn spawn_async_workers(
    threads: usize,
    jobs: Receiver<AsyncJob>,
    reply: Sender<CoordMsg>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads.max(1))
        .filter_map(|i| {
            let jobs = jobs.clone();
            let reply = reply.clone();
            std::thread::Builder::new()
                .name(format!("cairn-async-{i}"))
                .spawn(move || {
                    while let Ok(job) = jobs.recv() {
                        let AsyncJob {
                            attempt,
                            task,
                            checkpoint_id,
                            parts,
                            target,
                            cancel,
                        } = job;
                        let result = write_parts(parts, target.as_ref(), &cancel);
                        // The coordinator publishes once every part is in; it may then
                        // need to own the target alone.
                        drop(target);
                        let _ = reply.send(CoordMsg::Written {
                            attempt,
                            task,
                            checkpoint_id,
                            result,
                        });
                    }
                })
                .ok()
        })
        .collect()
}

fn write_parts(
    parts: Vec<OperatorPart>,
    target: &dyn SnapshotTarget,
    cancel: &CancelToken,
) -> Result<Vec<WrittenPart>, String> {
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        let keyed = match p.keyed {
            Some(phase) => Some(
                phase
                    .run(target, cancel)
                    .map_err(|e| format!("operator {} subtask {}: {e}", p.uid, p.index))?,
            ),
            None => None,
        };
        out.push((
            p.uid,
            p.index,
            SubtaskManifest {
                key_group_range: p.range,
                keyed,
                operator_state: p.operator_state,
            },
        ));
    }
    Ok(out)
}
