//! Side outputs (Flink's `OutputTag`, `Context.output` and `getSideOutput`).
//!
//! A function emits a record of any type into a side output named by an [`OutputTag`]
//! ([`crate::Collector::output`]); [`crate::Stream::side_output`] on the stream of the
//! operator's results gives the side output's records as a stream of their own, which
//! starts a new stage (its records cross an exchange, dealt round-robin as
//! [`crate::Stream::rebalance`] deals them, or by key when the stream is keyed at once:
//! `side_output(&tag).key_by(..)`) and ends in a sink of its own. A window
//! operator sends the records it drops as late into the tag given to
//! [`crate::windows::WindowedStream::side_output_late_data`].
//!
//! Each side output is an exchange like the main output's: barriers, watermarks and the
//! end of the input go down every one of an operator's outputs, so the side branch takes
//! part in checkpoints (aligned, unaligned, at-least-once), savepoints and restores as any
//! stage does. Records emitted into a tag that no stream reads are dropped, as in Flink.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::chain::{Barrier, Chain, Notification, SyncPhase};
use crate::error::{Result, RuntimeError};
use crate::function::Data;
use crate::watermarks::Mark;

/// The name and record type of a side output.
pub struct OutputTag<X> {
    name: Arc<str>,
    _x: PhantomData<fn() -> X>,
}

impl<X> Clone for OutputTag<X> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _x: PhantomData,
        }
    }
}

impl<X> std::fmt::Debug for OutputTag<X> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OutputTag").field(&self.name).finish()
    }
}

impl<X: Data> OutputTag<X> {
    /// A side output named `name` (unique among one operator's side outputs).
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            _x: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An output's chain with its record type erased (a side output's, or a stage's main
/// output's while the stage is built); every call but `push` is the same for all record
/// types.
pub(crate) trait SideChain: Send {
    /// The chain, as `Box<dyn Chain<X>>`.
    fn as_any(&mut self) -> &mut dyn Any;
    /// The chain, as `Box<Box<dyn Chain<X>>>`.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn mark(&mut self, mark: Mark) -> Result<()>;
    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()>;
    fn notify(&mut self, n: Notification) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
    fn end(&mut self) -> Result<()>;
    fn flush(&mut self) -> Result<()>;
}

impl<X: Data> SideChain for Box<dyn Chain<X>> {
    fn as_any(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn mark(&mut self, mark: Mark) -> Result<()> {
        self.as_mut().mark(mark)
    }
    fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.as_mut().snapshot(barrier, sync)
    }
    fn notify(&mut self, n: Notification) -> Result<()> {
        self.as_mut().notify(n)
    }
    fn finish(&mut self) -> Result<()> {
        self.as_mut().finish()
    }
    fn end(&mut self) -> Result<()> {
        self.as_mut().end()
    }
    fn flush(&mut self) -> Result<()> {
        self.as_mut().flush()
    }
}

/// One operator's side outputs that some stream reads, by tag name.
#[derive(Default)]
pub(crate) struct SideOutputs {
    /// The operator's uid (for errors).
    uid: String,
    lanes: Vec<(String, Box<dyn SideChain>)>,
}

impl SideOutputs {
    pub(crate) fn new(uid: &str, lanes: Vec<(String, Box<dyn SideChain>)>) -> Self {
        Self {
            uid: uid.to_string(),
            lanes,
        }
    }

    /// Emits `record` into side output `tag`; dropped when no stream reads it.
    pub(crate) fn push<X: Data>(
        &mut self,
        tag: &OutputTag<X>,
        record: X,
        timestamp: Option<u64>,
    ) -> Result<()> {
        let Some((_, lane)) = self.lanes.iter_mut().find(|(name, _)| **name == *tag.name) else {
            return Ok(());
        };
        match lane.as_any().downcast_mut::<Box<dyn Chain<X>>>() {
            Some(chain) => chain.push(record, timestamp),
            None => Err(RuntimeError::Config(format!(
                "operator {} emits records of type {} into side output {}, whose stream reads \
                 another type",
                self.uid,
                std::any::type_name::<X>(),
                tag.name
            ))),
        }
    }

    pub(crate) fn mark(&mut self, mark: Mark) -> Result<()> {
        self.each(|l| l.mark(mark))
    }

    pub(crate) fn snapshot(&mut self, barrier: &Barrier, sync: &mut SyncPhase) -> Result<()> {
        self.each(|l| l.snapshot(barrier, sync))
    }

    pub(crate) fn notify(&mut self, n: Notification) -> Result<()> {
        self.each(|l| l.notify(n))
    }

    pub(crate) fn finish(&mut self) -> Result<()> {
        self.each(|l| l.finish())
    }

    pub(crate) fn end(&mut self) -> Result<()> {
        self.each(|l| l.end())
    }

    pub(crate) fn flush(&mut self) -> Result<()> {
        self.each(|l| l.flush())
    }

    fn each(&mut self, mut f: impl FnMut(&mut dyn SideChain) -> Result<()>) -> Result<()> {
        for (_, lane) in &mut self.lanes {
            f(lane.as_mut())?;
        }
        Ok(())
    }
}
