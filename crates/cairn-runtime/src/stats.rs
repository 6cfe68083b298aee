//! Checkpoint statistics (Flink's checkpoint monitoring): what each recent checkpoint and
//! savepoint took, where its time went in each task, and how big it is, read through
//! [`crate::JobHandle::checkpoint_stats`] while the job runs and in
//! [`crate::JobResult::checkpoint_stats`] at its end.
//!
//! The history holds the checkpoints and savepoints in flight and the last
//! [`HISTORY`] that ended (Flink's `web.checkpoints.history`), newest first. Each task's
//! line says when the barrier reached it (the start delay), how long it aligned (from the
//! first barrier to the snapshot; zero for sources and for a task that went unaligned at
//! once), its synchronous phase, its asynchronous phase (from the end of the synchronous
//! phase to the task's part being written) and its acknowledgement (from the trigger).
//! The counts are of checkpoints; savepoints appear in the history and as
//! [`CheckpointStats::latest_savepoint`].

use std::time::{Duration, Instant};

use serde::Serialize;

/// Finished checkpoints and savepoints the history keeps (Flink's default).
pub const HISTORY: usize = 10;

/// Checkpoint statistics of a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckpointStats {
    /// How many checkpoints (not savepoints) did what.
    pub counts: CheckpointCounts,
    /// The newest completed checkpoint.
    pub latest_completed: Option<CheckpointStatsEntry>,
    /// The newest completed savepoint.
    pub latest_savepoint: Option<CheckpointStatsEntry>,
    /// The newest checkpoint or savepoint that failed.
    pub latest_failed: Option<CheckpointStatsEntry>,
    /// The snapshot the current run restored from, if any.
    pub latest_restored: Option<RestoredSnapshot>,
    /// Checkpoints and savepoints in flight and the last [`HISTORY`] ended, newest first.
    pub history: Vec<CheckpointStatsEntry>,
    /// Over every completed checkpoint.
    pub summary: CheckpointSummary,
}

/// How many checkpoints did what, over every run of the job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckpointCounts {
    /// Runs that restored from a snapshot.
    pub restored: u64,
    /// Triggered.
    pub total: u64,
    /// In flight now.
    pub in_progress: u64,
    /// Completed.
    pub completed: u64,
    /// Failed (declined, timed out, failed to write, or cut off by a failure of the job).
    pub failed: u64,
    /// Given up for a newer one that completed first, or for the final checkpoint.
    pub discarded: u64,
}

/// Checkpoint or savepoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum SnapshotKind {
    /// A checkpoint.
    Checkpoint,
    /// A savepoint.
    Savepoint,
}

/// Where a checkpoint or savepoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CheckpointStatus {
    /// Triggered, not yet complete.
    InProgress,
    /// Published.
    Completed,
    /// Failed ([`CheckpointStatsEntry::failure_message`] says why).
    Failed,
    /// Given up for a newer checkpoint (subsumed); not a failure.
    Discarded,
}

/// One checkpoint or savepoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckpointStatsEntry {
    /// Its id.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: SnapshotKind,
    /// Whether some task took it unaligned.
    pub unaligned: bool,
    /// Where it stands.
    pub status: CheckpointStatus,
    /// Why it failed or was given up.
    pub failure_message: Option<String>,
    /// When it was triggered, milliseconds since the Unix epoch.
    pub trigger_timestamp_ms: u64,
    /// From the trigger to its end (publication, failure), milliseconds; `None` in flight.
    pub end_to_end_duration_ms: Option<f64>,
    /// Bytes it added (files not in the previous checkpoint, and operator state), when it
    /// completed.
    pub checkpointed_size: Option<u64>,
    /// Bytes it references in all, when it completed.
    pub state_size: Option<u64>,
    /// In-flight records it stored (unaligned checkpoints).
    pub persisted_records: u64,
    /// Subtasks (tasks) taking part.
    pub num_subtasks: usize,
    /// Subtasks whose part is written.
    pub acknowledged_subtasks: usize,
    /// Where it is (a savepoint's path, a checkpoint's directory), when it completed.
    pub external_path: Option<String>,
    /// Each task's part as far as it got, in task order.
    pub subtasks: Vec<SubtaskCheckpointStats>,
}

/// One task's part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SubtaskCheckpointStats {
    /// The task's first operator (a task runs the operators between two exchanges).
    pub task: String,
    /// Its subtask index.
    pub subtask: u32,
    /// From the trigger until the barrier reached the task, milliseconds.
    pub start_delay_ms: f64,
    /// From the task's first barrier to its snapshot, milliseconds.
    pub alignment_ms: f64,
    /// The synchronous phase, milliseconds.
    pub sync_ms: f64,
    /// The asynchronous phase, milliseconds; `None` until written.
    pub async_ms: Option<f64>,
    /// From the trigger until the task's part was written, milliseconds.
    pub ack_ms: Option<f64>,
    /// The task took it unaligned.
    pub unaligned: bool,
}

/// A snapshot a run restored from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoredSnapshot {
    /// Which snapshot (`"checkpoint 7 in <dir>"`, `"savepoint <path>"`).
    pub description: String,
    /// When the run restored, milliseconds since the Unix epoch.
    pub restore_timestamp_ms: u64,
}

/// The smallest, mean and largest of a figure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct MinAvgMax {
    /// The smallest.
    pub min: f64,
    /// The mean.
    pub avg: f64,
    /// The largest.
    pub max: f64,
}

/// Figures over every completed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CheckpointSummary {
    /// End-to-end duration, milliseconds.
    pub end_to_end_duration_ms: MinAvgMax,
    /// Bytes added.
    pub checkpointed_size: MinAvgMax,
    /// Bytes referenced.
    pub state_size: MinAvgMax,
}

/// A task's synchronous phase, as the coordinator learns it.
pub(crate) struct Synced {
    pub(crate) task: String,
    pub(crate) subtask: u32,
    pub(crate) start_delay: Duration,
    pub(crate) alignment: Duration,
    pub(crate) sync: Duration,
    pub(crate) unaligned: bool,
}

/// Keeps the statistics as the coordinator sees checkpoints go.
#[derive(Debug, Default)]
pub(crate) struct StatsTracker {
    stats: CheckpointStats,
    /// Per entry of the history: when it was triggered, and when each subtask synced.
    clocks: Vec<(u64, Instant, Vec<Instant>)>,
    /// Running figures of every completed checkpoint (kept as sums, not as lists: a long
    /// run completes checkpoints without end).
    durations: Running,
    checkpointed: Running,
    full: Running,
}

/// The count, sum, smallest and largest of a figure so far.
#[derive(Debug, Default)]
struct Running {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Running {
    fn add(&mut self, v: f64) {
        if self.n == 0 {
            (self.min, self.max) = (v, v);
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.n += 1;
        self.sum += v;
    }

    fn summary(&self) -> MinAvgMax {
        if self.n == 0 {
            return MinAvgMax::default();
        }
        MinAvgMax {
            min: self.min,
            avg: self.sum / self.n as f64,
            max: self.max,
        }
    }
}

impl StatsTracker {
    fn entry(&mut self, id: u64) -> Option<&mut CheckpointStatsEntry> {
        self.stats.history.iter_mut().find(|e| e.id == id)
    }

    fn started(&self, id: u64) -> Option<Instant> {
        self.clocks.iter().find(|c| c.0 == id).map(|c| c.1)
    }

    /// Checkpoint or savepoint `id` was triggered at `started`, on `num_subtasks` tasks.
    pub(crate) fn triggered(
        &mut self,
        id: u64,
        kind: SnapshotKind,
        started: Instant,
        trigger_timestamp_ms: u64,
        num_subtasks: usize,
    ) {
        if kind == SnapshotKind::Checkpoint {
            self.stats.counts.total += 1;
            self.stats.counts.in_progress += 1;
        }
        self.stats.history.insert(
            0,
            CheckpointStatsEntry {
                id,
                kind,
                unaligned: false,
                status: CheckpointStatus::InProgress,
                failure_message: None,
                trigger_timestamp_ms,
                end_to_end_duration_ms: None,
                checkpointed_size: None,
                state_size: None,
                persisted_records: 0,
                num_subtasks,
                acknowledged_subtasks: 0,
                external_path: None,
                subtasks: Vec::new(),
            },
        );
        self.clocks.push((id, started, Vec::new()));
    }

    /// A task's synchronous phase of `id` ended now.
    pub(crate) fn synced(&mut self, id: u64, s: Synced) {
        if let Some(c) = self.clocks.iter_mut().find(|c| c.0 == id) {
            c.2.push(Instant::now());
        }
        if let Some(e) = self.entry(id) {
            e.unaligned |= s.unaligned;
            e.subtasks.push(SubtaskCheckpointStats {
                task: s.task,
                subtask: s.subtask,
                start_delay_ms: ms(s.start_delay),
                alignment_ms: ms(s.alignment),
                sync_ms: ms(s.sync),
                async_ms: None,
                ack_ms: None,
                unaligned: s.unaligned,
            });
        }
    }

    /// Task (`task`, `subtask`)'s part of `id` is written now.
    pub(crate) fn written(&mut self, id: u64, task: &str, subtask: u32) {
        let now = Instant::now();
        let Some(e) = self.stats.history.iter_mut().find(|e| e.id == id) else {
            return;
        };
        let Some(i) = e
            .subtasks
            .iter()
            .position(|s| s.task == task && s.subtask == subtask)
        else {
            return;
        };
        // The trigger and this subtask's synchronous phase (synced in the entry's order).
        let Some((started, synced)) = self
            .clocks
            .iter()
            .find(|c| c.0 == id)
            .map(|c| (c.1, c.2.get(i).copied()))
        else {
            return;
        };
        e.acknowledged_subtasks += 1;
        let s = &mut e.subtasks[i];
        s.ack_ms = Some(ms(now.duration_since(started)));
        s.async_ms = synced.map(|t| ms(now.duration_since(t)));
    }

    /// `id` completed (published), having added `added` bytes of `full`, with
    /// `persisted_records` in-flight records, at `path`.
    pub(crate) fn completed(
        &mut self,
        id: u64,
        added: u64,
        full: u64,
        persisted_records: u64,
        path: String,
    ) {
        let duration = self.started(id).map(|t| ms(t.elapsed()));
        let Some(e) = self.entry(id) else {
            return;
        };
        e.status = CheckpointStatus::Completed;
        e.end_to_end_duration_ms = duration;
        e.checkpointed_size = Some(added);
        e.state_size = Some(full);
        e.persisted_records = persisted_records;
        e.external_path = Some(path);
        let e = e.clone();
        if e.kind == SnapshotKind::Checkpoint {
            let c = &mut self.stats.counts;
            c.completed += 1;
            c.in_progress = c.in_progress.saturating_sub(1);
            self.durations.add(duration.unwrap_or(0.0));
            self.checkpointed.add(added as f64);
            self.full.add(full as f64);
            self.stats.summary = CheckpointSummary {
                end_to_end_duration_ms: self.durations.summary(),
                checkpointed_size: self.checkpointed.summary(),
                state_size: self.full.summary(),
            };
            self.stats.latest_completed = Some(e);
        } else {
            self.stats.latest_savepoint = Some(e);
        }
        self.trim();
    }

    /// `id` ended without completing: failed, or (`discarded`) given up for a newer one.
    pub(crate) fn ended(&mut self, id: u64, reason: &str, discarded: bool) {
        let duration = self.started(id).map(|t| ms(t.elapsed()));
        let Some(e) = self.entry(id) else {
            return;
        };
        if e.status != CheckpointStatus::InProgress {
            return;
        }
        e.status = if discarded {
            CheckpointStatus::Discarded
        } else {
            CheckpointStatus::Failed
        };
        e.failure_message = Some(reason.to_string());
        e.end_to_end_duration_ms = duration;
        let e = e.clone();
        if e.kind == SnapshotKind::Checkpoint {
            let c = &mut self.stats.counts;
            c.in_progress = c.in_progress.saturating_sub(1);
            if discarded {
                c.discarded += 1;
            } else {
                c.failed += 1;
            }
        }
        if !discarded {
            self.stats.latest_failed = Some(e);
        }
        self.trim();
    }

    /// A checkpoint or savepoint that failed before it could begin (no entry was made for
    /// it): a failed entry (counted when a checkpoint).
    pub(crate) fn failed_to_begin(
        &mut self,
        id: u64,
        kind: SnapshotKind,
        started: Instant,
        reason: &str,
    ) {
        self.triggered(id, kind, started, crate::job::epoch_ms(), 0);
        self.ended(id, reason, false);
    }

    /// Every checkpoint still in flight ended with the run (a failure, a cancellation).
    pub(crate) fn run_ended(&mut self, reason: &str) {
        let in_flight: Vec<u64> = self
            .stats
            .history
            .iter()
            .filter(|e| e.status == CheckpointStatus::InProgress)
            .map(|e| e.id)
            .collect();
        for id in in_flight {
            self.ended(id, reason, false);
        }
    }

    /// A run restored from `description`.
    pub(crate) fn restored(&mut self, description: &str) {
        self.stats.counts.restored += 1;
        self.stats.latest_restored = Some(RestoredSnapshot {
            description: description.to_string(),
            restore_timestamp_ms: crate::job::epoch_ms(),
        });
    }

    /// Keeps every entry in flight and the newest [`HISTORY`] ended.
    fn trim(&mut self) {
        let mut ended = 0;
        self.stats.history.retain(|e| {
            if e.status == CheckpointStatus::InProgress {
                return true;
            }
            ended += 1;
            ended <= HISTORY
        });
        let kept: Vec<u64> = self.stats.history.iter().map(|e| e.id).collect();
        self.clocks.retain(|c| kept.contains(&c.0));
    }

    pub(crate) fn snapshot(&self) -> CheckpointStats {
        self.stats.clone()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(task: &str, subtask: u32) -> Synced {
        Synced {
            task: task.into(),
            subtask,
            start_delay: Duration::from_millis(2),
            alignment: Duration::from_millis(3),
            sync: Duration::from_millis(1),
            unaligned: subtask == 1,
        }
    }

    #[test]
    fn entries_go_from_in_progress_to_their_end_and_the_history_keeps_ten() {
        let mut t = StatsTracker::default();
        let now = Instant::now();
        t.triggered(1, SnapshotKind::Checkpoint, now, 1000, 2);
        t.synced(1, synced("source", 0));
        t.synced(1, synced("count", 1));
        t.written(1, "count", 1);
        let s = t.snapshot();
        assert_eq!(s.counts.in_progress, 1);
        let e = &s.history[0];
        assert_eq!(
            (e.status, e.unaligned, e.acknowledged_subtasks),
            (CheckpointStatus::InProgress, true, 1)
        );
        assert_eq!(e.subtasks[1].task, "count");
        assert!(e.subtasks[1].ack_ms.is_some() && e.subtasks[0].ack_ms.is_none());
        assert_eq!(e.subtasks[0].alignment_ms, 3.0);
        t.written(1, "source", 0);
        t.completed(1, 10, 30, 4, "chk-1".into());
        t.triggered(2, SnapshotKind::Savepoint, now, 2000, 2);
        t.ended(2, "disk full", false);
        t.triggered(3, SnapshotKind::Checkpoint, now, 3000, 2);
        t.ended(3, "subsumed by checkpoint 4", true);
        // Ending twice counts once.
        t.ended(3, "again", false);
        let s = t.snapshot();
        assert_eq!(
            s.counts,
            CheckpointCounts {
                restored: 0,
                total: 2,
                in_progress: 0,
                completed: 1,
                failed: 0,
                discarded: 1
            }
        );
        assert_eq!(
            s.latest_completed
                .as_ref()
                .map(|e| (e.id, e.checkpointed_size, e.state_size)),
            Some((1, Some(10), Some(30)))
        );
        assert_eq!(
            s.latest_failed.as_ref().map(|e| e.id),
            Some(2),
            "a savepoint's failure"
        );
        assert_eq!(
            s.history.iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![3, 2, 1]
        );
        assert_eq!(
            s.summary.checkpointed_size,
            MinAvgMax {
                min: 10.0,
                avg: 10.0,
                max: 10.0
            }
        );
        for id in 4..20 {
            t.triggered(id, SnapshotKind::Checkpoint, now, 0, 1);
            if id != 19 {
                t.completed(id, id, id, 0, String::new());
            }
        }
        let s = t.snapshot();
        let ids: Vec<u64> = s.history.iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            (9..20).rev().collect::<Vec<_>>(),
            "in flight, then the last ten"
        );
        assert_eq!(s.summary.checkpointed_size.max, 18.0);
        assert_eq!(s.summary.checkpointed_size.min, 4.0);
        t.run_ended("the job failed over");
        assert_eq!(t.snapshot().history[0].status, CheckpointStatus::Failed);
        assert_eq!(t.snapshot().counts.failed, 1);
    }
}
