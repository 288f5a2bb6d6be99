//! Where events are made durable and ordered.
//!
//! - [`SledLog`], the embedded log: a sled database; sequence numbers assigned here, appends
//!   made durable by group commit. In cluster mode the same log is each node's local mirror
//!   of the stream, keyed by stream sequence.
//! - [`JetStreamBus`], the cluster's shared log: the JetStream stream `SNAPTRACK_AUTH`,
//!   whose stream sequence is the global order.
//!
//! Owns: the bytes on disk and on the wire. May not touch: the projections (the writer or
//! the replicator applies; replay reads what is here).

mod connect;
mod jetstream;
mod record;
mod sled_log;

pub use jetstream::{subject, JetStreamBus, PublishFailure, PRESENCE_SUBJECT, STREAM, SUBJECTS};
pub use record::Entry;
pub use sled_log::{LogError, SledLog};
