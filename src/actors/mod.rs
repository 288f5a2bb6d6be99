//! The actors that own writes: the [`Writer`] (one per node: it serialises commands, appends
//! their events and applies them) and the [`UsageFlusher`] (turns counted requests into
//! `usage_recorded` events every few hundred milliseconds).
//!
//! In embedded mode the writer applies what it appended itself, in log order, so the
//! "applier" of the design is the writer's call to [`crate::state::State::apply`]. In cluster
//! mode the [`replicator`] applies every event arriving from the stream, own ones included,
//! through the same call, and the writer waits for it.

mod flusher;
pub mod replicator;
mod writer;

pub use flusher::{flush_and_checkpoint, FlushError, UsageFlusher};
pub use writer::{Execute, FlushUsage, WriteError, Writer};
