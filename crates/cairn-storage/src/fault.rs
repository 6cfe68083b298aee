//! A fault-injecting [`ObjectStore`] wrapper for crash and error tests, in the spirit of
//! SlateDB's `FailingObjectStore`.
//!
//! [`FaultyObjectStore`] forwards to an inner store and can: crash at the Nth write (put,
//! multipart put and each of its parts, completion and abort, copy, rename, delete —
//! counted from creation), before or after the write
//! reaches the inner store, after which **every** operation fails, as if the process had
//! died; fail the Nth operation of one kind once; fail writes with a probability (seeded,
//! reproducible); and add latency to every call (or to the puts of some paths). It counts
//! operations and logs writes, so a test can first run a scenario to count its writes and
//! then crash at each of them.
//!
//! ```
//! use std::sync::Arc;
//! use cairn_storage::fault::{CrashPoint, FaultyObjectStore};
//! use object_store::memory::InMemory;
//!
//! let inner = Arc::new(InMemory::new());
//! let faulty = FaultyObjectStore::new(inner.clone());
//! faulty.crash_at_write(3, CrashPoint::BeforeWrite);
//! assert!(!faulty.is_crashed());
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    UploadPart,
};

/// The operations the wrapper counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum OpKind {
    /// `put_opts`.
    Put,
    /// `put_multipart_opts` (counted when the upload starts).
    PutMultipart,
    /// One part of a multipart upload (`MultipartUpload::put_part`).
    PutPart,
    /// The completion of a multipart upload (`MultipartUpload::complete`).
    CompleteMultipart,
    /// The abort of a multipart upload (`MultipartUpload::abort`).
    AbortMultipart,
    /// `get_opts` (also `head`, `get_range`).
    Get,
    /// `list`, `list_with_delimiter`.
    List,
    /// One object of `delete_stream` (also `delete`).
    Delete,
    /// `copy_opts`.
    Copy,
    /// `rename_opts`.
    Rename,
}

impl OpKind {
    /// Whether the operation changes the store.
    pub fn is_write(self) -> bool {
        !matches!(self, OpKind::Get | OpKind::List)
    }
}

/// Whether the crashing write reaches the inner store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The write is not applied (the process died before the request).
    BeforeWrite,
    /// The write is applied but the caller gets an error (died before the acknowledgement).
    AfterWrite,
}

/// The error the wrapper injects (the source of an `object_store::Error::Generic`).
#[derive(Debug, thiserror::Error)]
#[error("injected fault: {what} op={op:?} path={path}")]
pub struct InjectedFault {
    /// `crash`, `crashed`, `nth`, `nth-after` or `random`.
    pub what: &'static str,
    /// The operation.
    pub op: OpKind,
    /// The object path.
    pub path: String,
}

#[derive(Debug, Default)]
struct Config {
    crash_at_write: Option<(u64, CrashPoint)>,
    fail_nth: Option<(OpKind, u64)>,
    fail_nth_after: Option<(OpKind, u64)>,
    /// Probability in parts per million, and the xorshift state.
    fail_ppm: u32,
    rng: u64,
    latency: Option<Duration>,
    /// Latency of the puts whose path contains the string, instead of `latency`.
    path_latency: Option<(String, Duration)>,
    writes: u64,
    counts: HashMap<OpKind, u64>,
    log: Vec<(OpKind, Path)>,
}

#[derive(Debug, Default)]
struct State {
    crashed: AtomicBool,
    config: Mutex<Config>,
}

enum Decision {
    Proceed,
    FailBefore(InjectedFault),
    FailAfter(InjectedFault),
}

/// An [`ObjectStore`] that injects faults into an inner store. Clones share their state.
#[derive(Clone)]
pub struct FaultyObjectStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<State>,
}

impl fmt::Debug for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyObjectStore")
            .field("inner", &self.inner.to_string())
            .field("crashed", &self.is_crashed())
            .finish_non_exhaustive()
    }
}

impl fmt::Display for FaultyObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyObjectStore({})", self.inner)
    }
}

impl FaultyObjectStore {
    /// Wraps `inner`; no faults until configured.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            state: Arc::default(),
        }
    }

    fn config(&self) -> MutexGuard<'_, Config> {
        self.state.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Crashes at the `n`th write (1-based, counting every write since creation).
    pub fn crash_at_write(&self, n: u64, point: CrashPoint) {
        self.config().crash_at_write = Some((n, point));
    }

    /// Fails the `n`th operation of `kind` (1-based, since creation) once, without crashing.
    pub fn fail_nth(&self, kind: OpKind, n: u64) {
        self.config().fail_nth = Some((kind, n));
    }

    /// Fails the `n`th operation of `kind` (1-based, since creation) once, without crashing,
    /// **after** it reached the inner store: the write lands but the caller sees an error
    /// (a request whose acknowledgement was lost, a timeout after the upload completed).
    pub fn fail_nth_after(&self, kind: OpKind, n: u64) {
        self.config().fail_nth_after = Some((kind, n));
    }

    /// Fails each write with probability `p` (0.0..=1.0), without crashing; `seed` makes the
    /// sequence reproducible.
    pub fn fail_writes_with_probability(&self, p: f64, seed: u64) {
        let mut c = self.config();
        c.fail_ppm = (p.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        c.rng = seed | 1;
    }

    /// Sleeps for `latency` before every operation (`None` turns it off).
    pub fn set_latency(&self, latency: Option<Duration>) {
        self.config().latency = latency;
    }

    /// Sleeps for `latency` before every put (and multipart part) whose path contains
    /// `part`, instead of the latency of [`Self::set_latency`]; e.g. `"chk-7/"` slows the
    /// upload of one checkpoint's files.
    pub fn set_put_latency_for(&self, part: &str, latency: Duration) {
        self.config().path_latency = Some((part.to_string(), latency));
    }

    /// Crashes now: every further operation fails.
    pub fn crash(&self) {
        self.state.crashed.store(true, Ordering::SeqCst);
    }

    /// Whether the store has crashed.
    pub fn is_crashed(&self) -> bool {
        self.state.crashed.load(Ordering::SeqCst)
    }

    /// Writes attempted so far (including failed ones, excluding those after the crash).
    pub fn writes(&self) -> u64 {
        self.config().writes
    }

    /// Operations of `kind` attempted so far (excluding those after the crash).
    pub fn count(&self, kind: OpKind) -> u64 {
        self.config().counts.get(&kind).copied().unwrap_or(0)
    }

    /// The writes attempted so far, in order.
    pub fn write_log(&self) -> Vec<(OpKind, Path)> {
        self.config().log.clone()
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    fn decide(&self, op: OpKind, path: &Path) -> (Decision, Option<Duration>) {
        let fault = |what| InjectedFault {
            what,
            op,
            path: path.to_string(),
        };
        let mut c = self.config();
        let latency = match &c.path_latency {
            Some((part, d))
                if matches!(op, OpKind::Put | OpKind::PutMultipart | OpKind::PutPart)
                    && path.as_ref().contains(part.as_str()) =>
            {
                Some(*d)
            }
            _ => c.latency,
        };
        if self.is_crashed() {
            return (Decision::FailBefore(fault("crashed")), latency);
        }
        let count = c.counts.entry(op).or_insert(0);
        *count += 1;
        let count = *count;
        if c.fail_nth == Some((op, count)) {
            return (Decision::FailBefore(fault("nth")), latency);
        }
        if c.fail_nth_after == Some((op, count)) {
            return (Decision::FailAfter(fault("nth-after")), latency);
        }
        if !op.is_write() {
            return (Decision::Proceed, latency);
        }
        c.writes += 1;
        c.log.push((op, path.clone()));
        if let Some((n, point)) = c.crash_at_write {
            if c.writes == n {
                self.crash();
                let d = match point {
                    CrashPoint::BeforeWrite => Decision::FailBefore(fault("crash")),
                    CrashPoint::AfterWrite => Decision::FailAfter(fault("crash")),
                };
                return (d, latency);
            }
        }
        if c.fail_ppm > 0 {
            // xorshift64
            let mut x = c.rng;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.rng = x;
            if (x % 1_000_000) < u64::from(c.fail_ppm) {
                return (Decision::FailBefore(fault("random")), latency);
            }
        }
        (Decision::Proceed, latency)
    }

    /// Runs `op` on the inner store under the fault policy.
    async fn run<T, F>(&self, kind: OpKind, path: &Path, op: F) -> object_store::Result<T>
    where
        F: std::future::Future<Output = object_store::Result<T>>,
    {
        let (decision, latency) = self.decide(kind, path);
        apply(decision, latency, op).await
    }
}

/// Carries out a decision about `op` (not polled when the decision fails it before).
async fn apply<T, F>(
    decision: Decision,
    latency: Option<Duration>,
    op: F,
) -> object_store::Result<T>
where
    F: std::future::Future<Output = object_store::Result<T>>,
{
    if let Some(d) = latency {
        tokio::time::sleep(d).await;
    }
    match decision {
        Decision::Proceed => op.await,
        Decision::FailBefore(f) => Err(injected(f)),
        Decision::FailAfter(f) => {
            // The write lands; the caller still sees a failure.
            let _ = op.await;
            Err(injected(f))
        }
    }
}

/// A multipart upload of a [`FaultyObjectStore`]: its parts, completion and abort go
/// through the store's fault policy.
#[derive(Debug)]
struct FaultyUpload {
    store: FaultyObjectStore,
    path: Path,
    inner: Box<dyn MultipartUpload>,
}

impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (decision, latency) = self.store.decide(OpKind::PutPart, &self.path);
        if let Decision::FailBefore(f) = decision {
            // The part never reaches the inner upload (which numbers parts as they come).
            return apply(
                Decision::FailBefore(f),
                latency,
                futures::future::ready(Ok(())),
            )
            .boxed();
        }
        apply(decision, latency, self.inner.put_part(data)).boxed()
    }

    fn complete<'a, 'b>(&'a mut self) -> BoxFuture<'b, object_store::Result<PutResult>>
    where
        'a: 'b,
        Self: 'b,
    {
        let (decision, latency) = self.store.decide(OpKind::CompleteMultipart, &self.path);
        apply(decision, latency, self.inner.complete()).boxed()
    }

    fn abort<'a, 'b>(&'a mut self) -> BoxFuture<'b, object_store::Result<()>>
    where
        'a: 'b,
        Self: 'b,
    {
        let (decision, latency) = self.store.decide(OpKind::AbortMultipart, &self.path);
        apply(decision, latency, self.inner.abort()).boxed()
    }
}

fn injected(f: InjectedFault) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyObjectStore",
        source: Box::new(f),
    }
}

// `ObjectStore` is declared with `#[async_trait]`; these are the signatures that macro
// generates, written out so this crate does not need the `async-trait` dependency.
impl ObjectStore for FaultyObjectStore {
    fn put_opts<'l0, 'l1, 'a>(
        &'l0 self,
        location: &'l1 Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> BoxFuture<'a, object_store::Result<PutResult>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        self.run(
            OpKind::Put,
            location,
            self.inner.put_opts(location, payload, opts),
        )
        .boxed()
    }

    fn put_multipart_opts<'l0, 'l1, 'a>(
        &'l0 self,
        location: &'l1 Path,
        opts: PutMultipartOptions,
    ) -> BoxFuture<'a, object_store::Result<Box<dyn MultipartUpload>>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        async move {
            let inner = self
                .run(
                    OpKind::PutMultipart,
                    location,
                    self.inner.put_multipart_opts(location, opts),
                )
                .await?;
            let upload = FaultyUpload {
                store: self.clone(),
                path: location.clone(),
                inner,
            };
            Ok(Box::new(upload) as Box<dyn MultipartUpload>)
        }
        .boxed()
    }

    fn get_opts<'l0, 'l1, 'a>(
        &'l0 self,
        location: &'l1 Path,
        options: GetOptions,
    ) -> BoxFuture<'a, object_store::Result<GetResult>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        self.run(
            OpKind::Get,
            location,
            self.inner.get_opts(location, options),
        )
        .boxed()
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    this.run(OpKind::Delete, &location, this.inner.delete(&location))
                        .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let at = prefix.cloned().unwrap_or_default();
        match self.decide(OpKind::List, &at).0 {
            Decision::Proceed => self.inner.list(prefix),
            Decision::FailBefore(f) | Decision::FailAfter(f) => {
                futures::stream::once(futures::future::ready(Err(injected(f)))).boxed()
            }
        }
    }

    fn list_with_delimiter<'l0, 'l1, 'a>(
        &'l0 self,
        prefix: Option<&'l1 Path>,
    ) -> BoxFuture<'a, object_store::Result<ListResult>>
    where
        'l0: 'a,
        'l1: 'a,
        Self: 'a,
    {
        async move {
            let at = prefix.cloned().unwrap_or_default();
            self.run(OpKind::List, &at, self.inner.list_with_delimiter(prefix))
                .await
        }
        .boxed()
    }

    fn copy_opts<'l0, 'l1, 'l2, 'a>(
        &'l0 self,
        from: &'l1 Path,
        to: &'l2 Path,
        options: CopyOptions,
    ) -> BoxFuture<'a, object_store::Result<()>>
    where
        'l0: 'a,
        'l1: 'a,
        'l2: 'a,
        Self: 'a,
    {
        self.run(OpKind::Copy, to, self.inner.copy_opts(from, to, options))
            .boxed()
    }

    fn rename_opts<'l0, 'l1, 'l2, 'a>(
        &'l0 self,
        from: &'l1 Path,
        to: &'l2 Path,
        options: RenameOptions,
    ) -> BoxFuture<'a, object_store::Result<()>>
    where
        'l0: 'a,
        'l1: 'a,
        'l2: 'a,
        Self: 'a,
    {
        self.run(
            OpKind::Rename,
            to,
            self.inner.rename_opts(from, to, options),
        )
        .boxed()
    }
}
