//! Progress of long operations: the library reports through [`Progress`]; the binary shows
//! a one-line counter on a terminal ([`TerminalProgress`]) and nothing when stderr is piped.

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Receives the progress of a long operation.
pub trait Progress {
    /// A new phase with `total` steps.
    fn start(&self, what: &str, total: u64);
    /// `n` more steps are done.
    fn inc(&self, n: u64);
    /// The phase is over.
    fn finish(&self);
}

/// Shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn inc(&self, _: u64) {}
    fn finish(&self) {}
}

/// A counter on stderr (`verify: 3/12 files`), redrawn at most ten times a second and
/// erased when the phase ends. Use [`progress_for_stderr`] to get one only on a terminal.
#[derive(Debug)]
pub struct TerminalProgress {
    what: RefCell<String>,
    total: Cell<u64>,
    done: Cell<u64>,
    drawn: Cell<Option<Instant>>,
}

/// A [`TerminalProgress`] when stderr is a terminal, else [`NoProgress`].
pub fn progress_for_stderr() -> Box<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Box::new(TerminalProgress {
            what: RefCell::new(String::new()),
            total: Cell::new(0),
            done: Cell::new(0),
            drawn: Cell::new(None),
        })
    } else {
        Box::new(NoProgress)
    }
}

impl TerminalProgress {
    fn draw(&self, force: bool) {
        let now = Instant::now();
        if !force
            && self
                .drawn
                .get()
                .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.drawn.set(Some(now));
        let what = self.what.borrow();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K{what}: {}/{}",
            self.done.get(),
            self.total.get()
        );
        let _ = err.flush();
    }
}

impl Progress for TerminalProgress {
    fn start(&self, what: &str, total: u64) {
        *self.what.borrow_mut() = what.to_string();
        self.total.set(total);
        self.done.set(0);
        self.draw(true);
    }
    fn inc(&self, n: u64) {
        self.done.set(self.done.get().saturating_add(n));
        self.draw(false);
    }
    fn finish(&self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
