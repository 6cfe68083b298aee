//! Windows over a whole stream (Flink's `windowAll`, `countWindowAll`).
//!
//! [`Stream::window_all`] groups every record of the stream into windows, whatever its
//! key: it is a keyed window of the one key `()`, so the window function sees `()` as the
//! key and `reduce` and `aggregate` emit `((), window, result)`. As in Flink, the window
//! operator runs in one subtask (the operators chained after it too, until the next
//! exchange or [`Stream::parallelism`]), and everything else about windows holds:
//! triggers, evictors, lateness, state, restores.

use super::evictors::CountEvictor;
use super::triggers::{CountTrigger, PurgingTrigger};
use super::{GlobalWindows, WindowedStream, Windows};
use crate::function::Data;
use crate::graph::Stream;

impl<T: Data> Stream<T> {
    /// Groups all of the stream's records into windows made by `assigner` (Flink's
    /// `windowAll`); see [`crate::windows`].
    pub fn window_all<A: Windows>(self, assigner: A) -> WindowedStream<(), T, A> {
        let mut windowed = self.key_by(|_| ()).window(assigner);
        windowed.all = true;
        windowed
    }

    /// Windows of `size` records of the whole stream (Flink's `countWindowAll(size)`).
    pub fn count_window_all(self, size: u64) -> WindowedStream<(), T, GlobalWindows> {
        self.window_all(GlobalWindows::create())
            .trigger(PurgingTrigger::of(CountTrigger::of(size)))
    }

    /// Every `slide` records of the whole stream, a window of the last `size` (Flink's
    /// `countWindowAll(size, slide)`).
    pub fn count_window_all_sliding(
        self,
        size: u64,
        slide: u64,
    ) -> WindowedStream<(), T, GlobalWindows> {
        self.window_all(GlobalWindows::create())
            .evictor(CountEvictor::of(size))
            .trigger(CountTrigger::of(slide))
    }
}

impl<T: Data> Stream<T> {
    /// This stream with the parallelism of its current stage set to one when `one`.
    pub(super) fn one_subtask_if(self, one: bool) -> Self {
        if one {
            self.parallelism(1)
        } else {
            self
        }
    }
}
