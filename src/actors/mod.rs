//! The actors that own writes: the [`Writer`] (one per node: it serialises commands, appends
//! their events and applies them) and the [`UsageFlusher`] (turns counted requests into
//! `usage_recorded` events every few hundred milliseconds).
//!
//! In embedded mode the writer applies what it appended itself, in log order, so the
//! "applier" of the design is the writer's call to [`crate::state::State::apply`]; the cluster
//! mode's replicator will apply events arriving from the stream through the same call.

mod flusher;
mod writer;

pub use flusher::UsageFlusher;
pub use writer::{Execute, FlushUsage, WriteError, Writer};
