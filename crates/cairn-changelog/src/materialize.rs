//! Materialization: the wrapped backend's own incremental snapshot, taken in the background
//! and written into the shared area, so later checkpoints can reference it.
//!
//! The wrapped backend writes through [`MatTarget`]: its shared files keep their names (its
//! incremental bookkeeping references them by name later); its private files (a RocksDB
//! checkpoint's `CURRENT`, `MANIFEST`, `OPTIONS`) move to `<prefix>/m<id>/<name>` in the
//! shared area, and the handle is rewritten to match.

use std::sync::Arc;
use std::thread::JoinHandle;

use cairn_core::{
    AsyncSnapshot, CancelToken, FileArea, FileRef, KeyedStateHandle, Result, SnapshotTarget,
    StateError,
};

use crate::shared::{Holder, MatState, Shared};

/// The target a materialization writes through.
struct MatTarget {
    shared: Arc<Shared>,
    mat_id: u64,
    inner_id: u64,
    cancel: CancelToken,
}

impl MatTarget {
    fn private_name(&self, name: &str) -> String {
        format!("{}/m{}/{name}", self.shared.prefix, self.mat_id)
    }
}

impl SnapshotTarget for MatTarget {
    fn checkpoint_id(&self) -> u64 {
        self.inner_id
    }

    fn supports_shared(&self) -> bool {
        true
    }

    fn write_file(&self, area: FileArea, name: &str, bytes: Vec<u8>) -> Result<FileRef> {
        let name = match area {
            FileArea::Shared => name.to_string(),
            FileArea::Private => self.private_name(name),
        };
        // Held by the materialization until it is adopted or discarded.
        self.shared.hold(Holder::Mat(self.mat_id), [name.as_str()]);
        let file = self.shared.add_file(&name, bytes)?;
        if self.shared.storage.is_some() {
            self.shared
                .make_durable(&name, None, &self.cancel, self.inner_id)?;
        }
        Ok(file)
    }
}

/// A materialization running on its own thread.
#[derive(Debug)]
pub(crate) struct MatThread {
    pub(crate) cancel: CancelToken,
    pub(crate) handle: JoinHandle<()>,
}

/// Runs a materialization's asynchronous phase on its own thread; the outcome lands in
/// `shared`. Returns the thread (none if it could not be started: then the outcome is a
/// failure already).
pub(crate) fn spawn(
    shared: Arc<Shared>,
    mat_id: u64,
    inner_id: u64,
    phase: Box<dyn AsyncSnapshot>,
) -> Option<MatThread> {
    shared.mat_started(mat_id);
    let thread_shared = shared.clone();
    let cancel = CancelToken::new();
    let thread_cancel = cancel.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("cairn-materialize-{mat_id}"))
        .spawn(move || run(thread_shared, mat_id, inner_id, phase, &thread_cancel));
    match spawned {
        Ok(handle) => Some(MatThread { cancel, handle }),
        Err(e) => {
            shared.mat_finished(
                mat_id,
                MatState::Failed(format!("cannot start a thread: {e}")),
            );
            None
        }
    }
}

fn run(
    shared: Arc<Shared>,
    mat_id: u64,
    inner_id: u64,
    phase: Box<dyn AsyncSnapshot>,
    cancel: &CancelToken,
) {
    let target = MatTarget {
        shared: shared.clone(),
        mat_id,
        inner_id,
        cancel: cancel.clone(),
    };
    // A panic fails this materialization (checkpoints waiting for it fail) and nothing else.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| phase.run(&target, cancel)));
    let ran = ran.unwrap_or_else(|_| {
        Err(StateError::layer(
            format!("materialization {mat_id} uid={}", shared.uid),
            "the snapshot panicked",
        ))
    });
    let outcome = match ran {
        Ok(mut handle) => {
            relocate_private(&mut handle, &target);
            shared.hold(
                Holder::Mat(mat_id),
                handle.files().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            );
            MatState::Done(Arc::new(handle))
        }
        Err(e) => MatState::Failed(e.to_string()),
    };
    shared.mat_finished(mat_id, outcome);
}

/// Points the handle's private files at their shared names.
fn relocate_private(handle: &mut KeyedStateHandle, target: &MatTarget) {
    for f in handle.files_mut() {
        if f.area == FileArea::Private {
            f.name = target.private_name(&f.name);
            f.area = FileArea::Shared;
        }
    }
}
