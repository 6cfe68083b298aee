//! Asynchronous I/O (Flink's `AsyncDataStream`): an operator that calls an external
//! service for each record without waiting for the answer before the next record.
//!
//! [`Stream::unordered_wait`] and [`Stream::ordered_wait`] give each record to an
//! [`AsyncFunction`], which starts the call (on a thread pool of its own, a client's
//! callbacks, ...) and completes the [`ResultFuture`] it was handed, from any thread, with
//! the records to emit, or with an error. [`BlockingCalls`] runs a blocking function on a
//! pool of threads for the common case of a blocking client.
//!
//! As in Flink's `AsyncWaitOperator`:
//! - at most `capacity` calls are in flight per subtask; at capacity the task waits for
//!   one to complete (backpressure);
//! - `ordered_wait` emits results in the order of the records; `unordered_wait` as they
//!   complete, but never across a watermark: a watermark waits in the operator until
//!   every call before it is emitted, and the results of calls after it wait for it
//!   (calls after it start meanwhile);
//! - each result carries the timestamp of its record;
//! - a call that has not completed `timeout` after it started is given to
//!   [`AsyncFunction::timeout`], whose default fails the job (it restarts as for any
//!   failure), as does a call completed with an error;
//! - a checkpoint stores the records whose calls are in flight (or whose results wait
//!   for an earlier one, ordered), in the operator's state ([`ASYNC_INFLIGHT_STATE`],
//!   split among subtasks on rescale), and a restore calls them again: results are exactly
//!   once downstream if the calls can be repeated (lookups), at least once outside;
//! - at the end of the input, the operator waits for every call;
//! - with an [`AsyncRetryStrategy`] (`*_wait_with_retry`), a call whose records or error
//!   the strategy's predicates accept starts again after a delay, up to a number of times,
//!   within the timeout.
//!
//! The operator starts a new stage behind an exchange that keeps each record in its
//! subtask (when the parallelism is unchanged) so that its task looks for completions
//! between records and while it waits for input. A completion wakes the task (an event on
//! its control lane, one until the task looks, as Flink's mailbox is woken), so a result
//! is emitted as soon as it arrives, and an idle task with calls in flight sleeps until a
//! completion, a timeout or a retry is due.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_core::{BincodeCodec, KeyGroupRange, OperatorListStateDescriptor, Redistribution};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::chain::{Barrier, Chain, Notification, OpSetup, SyncPhase, Waker};
use crate::error::{Result, RuntimeError};
use crate::function::{Checkpointed, Collector, Data};
use crate::graph::Stream;
use crate::watermarks::Mark;

/// The name of the operator state holding the records whose asynchronous calls were in
/// flight at a checkpoint, with their timestamps.
pub const ASYNC_INFLIGHT_STATE: &str = "cairn.async.inflight";

/// A function called asynchronously for each record (Flink's `AsyncFunction`). One
/// instance runs per subtask; it may keep operator state ([`Checkpointed`]).
pub trait AsyncFunction<T, O: Send + 'static>: Checkpointed + Clone + Send + 'static {
    /// Starts the call for `input`, which completes `result` (from any thread) with the
    /// records to emit for it. An error returned here fails the job at once.
    fn async_invoke(&mut self, input: T, result: ResultFuture<O>) -> Result<()>;

    /// The call for `input` did not complete in time: what to emit for it instead, or
    /// `None` (the default) to fail the job.
    fn timeout(&mut self, input: &T) -> Option<Vec<O>> {
        let _ = input;
        None
    }
}

/// What a call completes (Flink's `ResultFuture`). Dropping it without completing it
/// completes it with an error.
pub struct ResultFuture<O: Send + 'static> {
    seq: u64,
    tx: Option<Sender<Completion<O>>>,
    /// Wakes the operator's task once the completion is sent.
    waker: Option<Waker>,
}

/// A completed call: its sequence number and its records or error.
type Completion<O> = (u64, std::result::Result<Vec<O>, String>);

impl<O: Send + 'static> fmt::Debug for ResultFuture<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResultFuture")
            .field("seq", &self.seq)
            .finish()
    }
}

impl<O: Send + 'static> ResultFuture<O> {
    /// Completes the call with the records to emit for its input.
    pub fn complete(mut self, results: Vec<O>) {
        self.send(Ok(results));
    }

    /// Completes the call with an error: the job fails.
    pub fn complete_exceptionally(mut self, error: impl fmt::Display) {
        self.send(Err(error.to_string()));
    }

    fn send(&mut self, result: std::result::Result<Vec<O>, String>) {
        if let Some(tx) = self.tx.take() {
            // The operator may be gone (failed, restarted): the result is not wanted.
            let _ = tx.send((self.seq, result));
            if let Some(waker) = &self.waker {
                waker.wake();
            }
        }
    }
}

impl<O: Send + 'static> Drop for ResultFuture<O> {
    fn drop(&mut self) {
        self.send(Err(
            "the result future was dropped without being completed".into()
        ));
    }
}

/// Whether results keep the order of their records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    Ordered,
    Unordered,
}

/// How an asynchronous operator waits: its order, timeout and capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AsyncOptions {
    pub(crate) order: Order,
    pub(crate) timeout: Duration,
    pub(crate) capacity: usize,
}

impl AsyncOptions {
    /// Refuses a capacity of zero.
    pub(crate) fn check(&self, uid: &str) -> Result<()> {
        if self.capacity == 0 {
            return Err(RuntimeError::Config(format!(
                "asynchronous operator {uid}: a capacity of 0 calls in flight lets none start"
            )));
        }
        Ok(())
    }
}

/// How long a waiting operator blocks before it looks whether the job was cancelled.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// One call: its record, the record's timestamp, when it times out, and its results once
/// it completed.
struct Entry<T, O> {
    input: T,
    timestamp: Option<u64>,
    /// Covers every attempt, as in Flink.
    deadline: Instant,
    results: Option<Vec<O>>,
    /// Attempts made after the first.
    retries: u32,
    /// When the next attempt starts, while one is pending.
    retry_at: Option<Instant>,
}

/// When to call again (Flink's `AsyncRetryStrategy`): after a call completes with records
/// or an error that a predicate of the strategy asks to retry, the call starts again
/// after a delay, fixed or growing, up to `max_retries` times; the last answer stands
/// after that. The operator's timeout covers every attempt. Without a predicate for
/// records (or errors), those are never retried.
pub struct AsyncRetryStrategy<O> {
    max_retries: u32,
    delay: Duration,
    multiplier: f64,
    max_delay: Duration,
    on_result: Option<RetryIf<[O]>>,
    on_error: Option<RetryIf<str>>,
}

type RetryIf<X> = Arc<dyn Fn(&X) -> bool + Send + Sync>;

impl<O> Clone for AsyncRetryStrategy<O> {
    fn clone(&self) -> Self {
        Self {
            max_retries: self.max_retries,
            delay: self.delay,
            multiplier: self.multiplier,
            max_delay: self.max_delay,
            on_result: self.on_result.clone(),
            on_error: self.on_error.clone(),
        }
    }
}

impl<O> fmt::Debug for AsyncRetryStrategy<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncRetryStrategy")
            .field("max_retries", &self.max_retries)
            .field("delay", &self.delay)
            .field("multiplier", &self.multiplier)
            .field("max_delay", &self.max_delay)
            .finish_non_exhaustive()
    }
}

impl<O> AsyncRetryStrategy<O> {
    /// Up to `max_retries` more attempts, each `delay` after the last answer (Flink's
    /// `FixedDelayRetryStrategy`).
    pub fn fixed_delay(max_retries: u32, delay: Duration) -> Self {
        Self::exponential_backoff(max_retries, delay, delay, 1.0)
    }

    /// Up to `max_retries` more attempts, the first `initial_delay` after the first
    /// answer, each next delay `multiplier` times the last, at most `max_delay` (Flink's
    /// `ExponentialBackoffDelayRetryStrategy`).
    pub fn exponential_backoff(
        max_retries: u32,
        initial_delay: Duration,
        max_delay: Duration,
        multiplier: f64,
    ) -> Self {
        Self {
            max_retries,
            delay: initial_delay,
            multiplier: multiplier.max(1.0),
            max_delay: max_delay.max(initial_delay),
            on_result: None,
            on_error: None,
        }
    }

    /// Retries a call whose records `retry` accepts (Flink's `ifResult`).
    pub fn retry_if_result(mut self, retry: impl Fn(&[O]) -> bool + Send + Sync + 'static) -> Self {
        self.on_result = Some(Arc::new(retry));
        self
    }

    /// Retries a call completed with an error that `retry` accepts (Flink's
    /// `ifException`).
    pub fn retry_if_error(mut self, retry: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(retry));
        self
    }

    /// Whether an answer after `retries` retries calls for another.
    fn wants(&self, retries: u32, answer: &std::result::Result<Vec<O>, String>) -> bool {
        retries < self.max_retries
            && match answer {
                Ok(records) => self.on_result.as_ref().is_some_and(|p| p(records)),
                Err(error) => self.on_error.as_ref().is_some_and(|p| p(error)),
            }
    }

    /// The delay before retry number `retry` (from 1).
    fn delay(&self, retry: u32) -> Duration {
        let factor = self.multiplier.powi(retry.saturating_sub(1).min(64) as i32);
        self.delay.mul_f64(factor).min(self.max_delay)
    }
}

/// The asynchronous operator in a chain.
pub(crate) struct AsyncOp<T, O: Send + 'static, F> {
    setup: OpSetup,
    range: KeyGroupRange,
    f: F,
    next: Box<dyn Chain<O>>,
    options: AsyncOptions,
    tx: Sender<Completion<O>>,
    rx: Receiver<Completion<O>>,
    /// The calls in flight and those completed but not emitted, by sequence number.
    calls: BTreeMap<u64, Entry<T, O>>,
    retry: Option<AsyncRetryStrategy<O>>,
    /// The marks (watermarks, idleness) waiting for calls before them, numbered in the
    /// same sequence.
    marks: BTreeMap<u64, Mark>,
    next_seq: u64,
    state: cairn_core::OperatorListStateId<(T, Option<u64>)>,
}

impl<T: Data, O: Data, F: AsyncFunction<T, O>> AsyncOp<T, O, F> {
    /// Initializes the function and the operator state, and calls again what was in
    /// flight at the checkpoint restored from.
    pub(crate) fn new(
        mut setup: OpSetup,
        mut f: F,
        next: Box<dyn Chain<O>>,
        options: AsyncOptions,
        retry: Option<AsyncRetryStrategy<O>>,
    ) -> Result<Self> {
        options.check(&setup.uid)?;
        setup.output_into(next.as_ref());
        setup.initialize(&mut f)?;
        let d = OperatorListStateDescriptor {
            name: ASYNC_INFLIGHT_STATE.to_string(),
            codec: Arc::new(BincodeCodec::<(T, Option<u64>)>::new()),
            mode: Redistribution::Split,
        };
        let state = setup
            .operator_state
            .register_reserved_list(&d)
            .map_err(|e| RuntimeError::state(&setup.uid, e))?;
        let restored = std::mem::take(
            setup
                .operator_state
                .list(state)
                .map_err(|e| RuntimeError::state(&setup.uid, e))?,
        );
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut op = Self {
            range: setup.range()?,
            setup,
            f,
            next,
            options,
            tx,
            rx,
            calls: BTreeMap::new(),
            retry,
            marks: BTreeMap::new(),
            next_seq: 0,
            state,
        };
        for (input, timestamp) in restored {
            op.start(input, timestamp)?;
        }
        Ok(op)
    }

    /// Starts the call for `input`, waiting first while `capacity` calls are in flight.
    fn start(&mut self, input: T, timestamp: Option<u64>) -> Result<()> {
        while self.calls.len() >= self.options.capacity {
            self.wait_one()?;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.calls.insert(
            seq,
            Entry {
                input: input.clone(),
                timestamp,
                deadline: Instant::now() + self.options.timeout,
                results: None,
                retries: 0,
                retry_at: None,
            },
        );
        self.invoke(seq, input)
    }

    /// Starts an attempt of call `seq` for `input`.
    fn invoke(&mut self, seq: u64, input: T) -> Result<()> {
        let result = ResultFuture {
            seq,
            tx: Some(self.tx.clone()),
            waker: self.setup.waker.clone(),
        };
        self.f
            .async_invoke(input, result)
            .map_err(|e| e.with_uid(&self.setup.uid))
    }

    /// Starts the retries that are due.
    fn retry_due(&mut self) -> Result<()> {
        let now = Instant::now();
        let due: Vec<(u64, T)> = self
            .calls
            .iter_mut()
            .filter(|(_, e)| e.results.is_none() && e.retry_at.is_some_and(|t| t <= now))
            .map(|(seq, e)| {
                e.retry_at = None;
                (*seq, e.input.clone())
            })
            .collect();
        for (seq, input) in due {
            self.invoke(seq, input)?;
        }
        Ok(())
    }

    /// The earliest timeout or retry of a call not completed yet.
    fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter(|e| e.results.is_none())
            .map(|e| e.retry_at.map_or(e.deadline, |t| t.min(e.deadline)))
            .min()
    }

    /// Takes in the completions that arrived and the timeouts that passed, and emits what
    /// may be emitted; does not wait.
    fn poll(&mut self) -> Result<()> {
        if let Some(waker) = &self.setup.waker {
            waker.looking();
        }
        while let Ok((seq, result)) = self.rx.try_recv() {
            self.complete(seq, result)?;
        }
        self.time_out()?;
        self.retry_due()?;
        self.emit_ready()
    }

    /// Waits for a completion or the earliest timeout, then emits what may be emitted. It
    /// waits in slices and gives up when the job is cancelled (or fails elsewhere): a call
    /// that does not answer must not hold a cancellation or a restart until its timeout.
    fn wait_one(&mut self) -> Result<()> {
        let Some(deadline) = self.next_deadline() else {
            // Everything completed: only the emission was missing.
            return self.emit_ready();
        };
        loop {
            if self.setup.shared.cancelled() {
                return Err(RuntimeError::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(WAIT_SLICE)) {
                Ok((seq, result)) => {
                    self.complete(seq, result)?;
                    break;
                }
                Err(RecvTimeoutError::Timeout) if left > WAIT_SLICE => {}
                // Past the deadline; or disconnected, which cannot be (the operator holds
                // a sender).
                Err(_) => break,
            }
        }
        self.poll()
    }

    /// Waits for every call in flight and emits all results and marks.
    fn wait_all(&mut self) -> Result<()> {
        while !self.calls.is_empty() {
            self.wait_one()?;
        }
        self.emit_ready()
    }

    fn complete(&mut self, seq: u64, result: std::result::Result<Vec<O>, String>) -> Result<()> {
        // A call completed twice, or after its timeout: the first answer stands.
        let Some(entry) = self
            .calls
            .get_mut(&seq)
            .filter(|e| e.results.is_none() && e.retry_at.is_none())
        else {
            return Ok(());
        };
        if let Some(retry) = self
            .retry
            .as_ref()
            .filter(|r| r.wants(entry.retries, &result))
        {
            entry.retries += 1;
            entry.retry_at = Some(Instant::now() + retry.delay(entry.retries));
            return Ok(());
        }
        match result {
            Ok(records) => {
                entry.results = Some(records);
                Ok(())
            }
            Err(error) => Err(RuntimeError::user(
                &self.setup.uid,
                format!("an asynchronous call failed: {error}"),
            )),
        }
    }

    /// Gives the calls past their deadline to the function's `timeout`.
    fn time_out(&mut self) -> Result<()> {
        let now = Instant::now();
        for entry in self.calls.values_mut() {
            if entry.results.is_some() || entry.deadline > now {
                continue;
            }
            match self.f.timeout(&entry.input) {
                Some(records) => entry.results = Some(records),
                None => {
                    return Err(RuntimeError::user(
                        &self.setup.uid,
                        format!(
                            "an asynchronous call timed out after {:?}",
                            self.options.timeout
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Emits what may go, in sequence: the completed calls' results and the marks
    /// (watermarks) behind them. Ordered, up to the first call still in flight; unordered,
    /// also every completed call between that one and the next mark (a result never passes
    /// a mark, nor a mark a call before it).
    fn emit_ready(&mut self) -> Result<()> {
        loop {
            let call = self
                .calls
                .first_key_value()
                .map(|(s, e)| (*s, e.results.is_some()));
            let mark = self.marks.first_key_value().map(|(s, _)| *s);
            match (call, mark) {
                (None, None) => return Ok(()),
                (None, Some(m)) => self.emit_mark(m)?,
                (Some((c, _)), Some(m)) if m < c => self.emit_mark(m)?,
                (Some((c, true)), _) => self.emit_call(c)?,
                (Some((c, false)), _) => {
                    if self.options.order == Order::Unordered {
                        let before = mark.unwrap_or(u64::MAX);
                        let done: Vec<u64> = self
                            .calls
                            .range(c..before)
                            .filter(|(_, e)| e.results.is_some())
                            .map(|(seq, _)| *seq)
                            .collect();
                        for seq in done {
                            self.emit_call(seq)?;
                        }
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Emits the results of call `seq` (completed), with its record's timestamp.
    fn emit_call(&mut self, seq: u64) -> Result<()> {
        let Some(entry) = self.calls.remove(&seq) else {
            return Ok(());
        };
        let mut out = Collector::new(self.next.as_mut(), entry.timestamp);
        for record in entry.results.unwrap_or_default() {
            out.collect(record)?;
        }
        Ok(())
    }

    /// Passes mark `seq` on.
    fn emit_mark(&mut self, seq: u64) -> Result<()> {
        match self.marks.remove(&seq) {
            Some(mark) => self.next.mark(mark),
            None => Ok(()),
        }
    }
}

impl<T: Data, O: Data, F: AsyncFunction<T, O>> Chain<T> for AsyncOp<T, O, F> {
    fn push(&mut self, record: T, timestamp: Option<u64>) -> Result<()> {
        self.setup.io.record();
        self.start(record, timestamp)?;
        self.poll()
    }

    fn input_io(&self) -> Option<Arc<crate::metrics::IoMetrics>> {
        Some(self.setup.io.clone())
    }

    /// The mark goes once every call before it is emitted; calls after it start meanwhile.
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.setup.io.mark(mark);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.marks.insert(seq, mark);
        self.emit_ready()
    }

    /// Stores the records of the calls not emitted yet.
    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.poll()?;
        let inflight = self
            .calls
            .values()
            .map(|e| (e.input.clone(), e.timestamp))
            .collect();
        *self
            .setup
            .operator_state
            .list(self.state)
            .map_err(|e| RuntimeError::state(&self.setup.uid, e))? = inflight;
        self.setup
            .snapshot(&mut self.f, barrier, self.range, None, sync)?;
        self.next.snapshot(barrier, sync)
    }

    fn notify(&mut self, n: Notification) -> Result<()> {
        self.setup.notify(&mut self.f, n)?;
        self.next.notify(n)
    }

    fn finish(&mut self) -> Result<()> {
        self.wait_all()?;
        self.next.finish()
    }

    fn end(&mut self) -> Result<()> {
        self.next.end()
    }

    fn flush(&mut self) -> Result<()> {
        self.poll()?;
        self.next.flush()
    }

    fn fire_timers(&mut self) -> Result<()> {
        self.poll()?;
        self.next.fire_timers()
    }

    /// A completion wakes the task ([`Waker`]); while calls are in flight it also looks at
    /// the earliest timeout or retry, and at once when a completion is waiting. (Without a
    /// waker, in unit tests, it looks every millisecond.)
    fn timer_wait(&self) -> Option<Duration> {
        let own = match (self.rx.is_empty(), self.calls.is_empty()) {
            (false, _) => Some(Duration::ZERO),
            (true, false) if self.setup.waker.is_none() => Some(Duration::from_millis(1)),
            (true, false) => self
                .next_deadline()
                .map(|t| t.saturating_duration_since(Instant::now())),
            (true, true) => None,
        };
        match (own, self.next.timer_wait()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// An [`AsyncFunction`] that runs a blocking function on a pool of threads, for clients
/// without an asynchronous interface. Clones share the pool: the subtasks of an operator
/// (each a clone) share its threads.
pub struct BlockingCalls<T, O: Send + 'static> {
    pool: Arc<Pool<T, O>>,
}

impl<T, O: Send + 'static> Clone for BlockingCalls<T, O> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<T, O: Send + 'static> fmt::Debug for BlockingCalls<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingCalls")
            .field("threads", &self.pool.threads)
            .finish()
    }
}

type Call<T, O> = (T, ResultFuture<O>);
type BlockingFn<T, O> = Arc<dyn Fn(T) -> std::result::Result<Vec<O>, String> + Send + Sync>;

struct Pool<T, O: Send + 'static> {
    threads: usize,
    tx: Sender<Call<T, O>>,
}

impl<T: Send + 'static, O: Send + 'static> BlockingCalls<T, O> {
    /// Runs `f` on `threads` threads (at least one); an `Err`, or a panic, completes the
    /// call with that error (the thread lives on). The threads stop when the last clone is
    /// dropped.
    pub fn new(
        threads: usize,
        f: impl Fn(T) -> std::result::Result<Vec<O>, String> + Send + Sync + 'static,
    ) -> Self {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::unbounded::<Call<T, O>>();
        let f: BlockingFn<T, O> = Arc::new(f);
        for i in 0..threads {
            let (rx, f) = (rx.clone(), f.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("cairn-async-{i}"))
                .spawn(move || {
                    for (input, result) in rx {
                        // A panic fails the call, not the thread: the pool outlives the
                        // job's attempts (each restart clones the same function).
                        let call =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(input)));
                        match call {
                            Ok(Ok(records)) => result.complete(records),
                            Ok(Err(e)) => result.complete_exceptionally(e),
                            Err(panic) => result.complete_exceptionally(format!(
                                "the blocking call panicked: {}",
                                crate::job::panic_message(panic.as_ref())
                            )),
                        }
                    }
                });
            // A thread that did not start leaves the others; with none, calls fail
            // (their futures are dropped with the channel).
            drop(spawned);
        }
        Self {
            pool: Arc::new(Pool { threads, tx }),
        }
    }
}

impl<T, O: Send + 'static> Checkpointed for BlockingCalls<T, O> {}

impl<T: Data, O: Data> AsyncFunction<T, O> for BlockingCalls<T, O> {
    fn async_invoke(&mut self, input: T, result: ResultFuture<O>) -> Result<()> {
        // With no thread running, the call is dropped with its future, which completes
        // it with an error.
        let _ = self.pool.tx.send((input, result));
        Ok(())
    }
}

impl<T: Data> Stream<T> {
    /// Calls `f` asynchronously for each record and emits the results as the calls
    /// complete (Flink's `AsyncDataStream.unorderedWait`), with at most `capacity` calls
    /// in flight per subtask and each given `timeout`; see [`crate::asyncio`].
    pub fn unordered_wait<O: Data>(
        self,
        uid: &str,
        f: impl AsyncFunction<T, O>,
        timeout: Duration,
        capacity: usize,
    ) -> Stream<O> {
        self.async_wait(uid, f, Order::Unordered, timeout, capacity, None)
    }

    /// [`Stream::unordered_wait`], emitting the results in the order of their records
    /// (Flink's `AsyncDataStream.orderedWait`).
    pub fn ordered_wait<O: Data>(
        self,
        uid: &str,
        f: impl AsyncFunction<T, O>,
        timeout: Duration,
        capacity: usize,
    ) -> Stream<O> {
        self.async_wait(uid, f, Order::Ordered, timeout, capacity, None)
    }

    /// [`Stream::unordered_wait`] with retries (Flink's `unorderedWaitWithRetry`); see
    /// [`AsyncRetryStrategy`].
    pub fn unordered_wait_with_retry<O: Data>(
        self,
        uid: &str,
        f: impl AsyncFunction<T, O>,
        timeout: Duration,
        capacity: usize,
        retry: AsyncRetryStrategy<O>,
    ) -> Stream<O> {
        self.async_wait(uid, f, Order::Unordered, timeout, capacity, Some(retry))
    }

    /// [`Stream::ordered_wait`] with retries (Flink's `orderedWaitWithRetry`); see
    /// [`AsyncRetryStrategy`].
    pub fn ordered_wait_with_retry<O: Data>(
        self,
        uid: &str,
        f: impl AsyncFunction<T, O>,
        timeout: Duration,
        capacity: usize,
        retry: AsyncRetryStrategy<O>,
    ) -> Stream<O> {
        self.async_wait(uid, f, Order::Ordered, timeout, capacity, Some(retry))
    }

    fn async_wait<O: Data, F: AsyncFunction<T, O>>(
        self,
        uid: &str,
        f: F,
        order: Order,
        timeout: Duration,
        capacity: usize,
        retry: Option<AsyncRetryStrategy<O>>,
    ) -> Stream<O> {
        let options = AsyncOptions {
            order,
            timeout,
            capacity,
        };
        self.heading_stage(uid, f, move |setup, f, next| {
            let op = AsyncOp::new(setup, f, next, options, retry.clone())?;
            Ok(Box::new(op) as Box<dyn Chain<T>>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{Recorder, TaskEvent};

    /// With a call in flight, the task would next look at its timeout; the completion
    /// wakes it instead, and its result is emitted when it looks.
    #[test]
    fn a_completion_wakes_the_task() {
        let (tx, events) = crossbeam_channel::unbounded();
        let setup = OpSetup::for_test("lookup", Some(Waker::new(tx)));
        let log = Recorder::new();
        let calls = BlockingCalls::new(1, |v: u64| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(vec![2 * v])
        });
        let options = AsyncOptions {
            order: Order::Ordered,
            timeout: Duration::from_secs(60),
            capacity: 4,
        };
        let mut op = AsyncOp::new(setup, calls, Box::new(log.clone()), options, None).expect("op");
        op.push(21, Some(5)).expect("push");
        let wait = op.timer_wait().expect("a call in flight");
        assert!(
            wait > Duration::from_secs(30),
            "looks at the timeout: {wait:?}"
        );
        let woken = events.recv_timeout(Duration::from_secs(10));
        assert!(matches!(woken, Ok(TaskEvent::Wake)), "{woken:?}");
        assert_eq!(op.timer_wait(), Some(Duration::ZERO), "a completion waits");
        op.fire_timers().expect("look");
        assert_eq!(log.take_records(), vec![(42, Some(5))]);
        assert_eq!(op.timer_wait(), None, "nothing in flight");
        // Having looked, the task is woken by the next completion too.
        op.push(1, None).expect("push");
        let woken = events.recv_timeout(Duration::from_secs(10));
        assert!(matches!(woken, Ok(TaskEvent::Wake)), "{woken:?}");
        op.fire_timers().expect("look");
        assert_eq!(log.take_records(), vec![(2, None)]);
    }

    #[test]
    fn retry_delays_grow_to_their_bound() {
        let ms = Duration::from_millis;
        let fixed = AsyncRetryStrategy::<u64>::fixed_delay(3, ms(5));
        assert_eq!(
            (1..=3).map(|r| fixed.delay(r)).collect::<Vec<_>>(),
            vec![ms(5); 3]
        );
        let growing = AsyncRetryStrategy::<u64>::exponential_backoff(5, ms(10), ms(50), 2.0);
        let delays: Vec<_> = (1..=5).map(|r| growing.delay(r)).collect();
        assert_eq!(delays, vec![ms(10), ms(20), ms(40), ms(50), ms(50)]);
        let busy = growing.retry_if_error(|e| e == "busy");
        assert!(busy.wants(0, &Err("busy".into())));
        assert!(!busy.wants(5, &Err("busy".into())), "out of retries");
        assert!(!busy.wants(0, &Err("gone".into())));
        assert!(!busy.wants(0, &Ok(vec![])), "no predicate for records");
    }
}
