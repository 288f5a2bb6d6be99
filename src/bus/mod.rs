//! Where events are made durable and ordered. The embedded log ([`SledLog`]) is a sled
//! database: sequence numbers assigned here, appends made durable by group commit.
//!
//! Owns: the bytes on disk. May not touch: the projections (the writer applies what it
//! appended; replay reads what is here).

mod sled_log;

pub use sled_log::{LogError, SledLog};
