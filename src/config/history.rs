//! How much history a node keeps and how it starts fast (`[history]`): snapshot cadence,
//! how many snapshots stay, and how long hourly usage roll-ups are kept.

use super::{set, ConfigError};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// A snapshot is taken once this many events were applied since the last one...
    pub snapshot_every_events: u64,
    /// ...or this long after the last one, if any event was applied since.
    pub snapshot_every: Duration,
    /// Snapshots kept on disk: the newest, and older ones to fall back on should the newest
    /// be unreadable.
    pub snapshots_kept: usize,
    /// Hourly usage roll-ups older than this many days are deleted.
    pub usage_retention_days: u32,
    /// A user's usage is recorded in the log once per this many seconds (or per rate-limit
    /// window, when that is longer). Shorter: fresher usage across nodes and restarts, more
    /// records.
    pub usage_record_secs: u32,
}

impl Default for History {
    fn default() -> Self {
        History {
            snapshot_every_events: 100_000,
            snapshot_every: Duration::from_secs(600),
            snapshots_kept: 2,
            usage_retention_days: 90,
            usage_record_secs: 3600,
        }
    }
}

impl History {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str| ConfigError::Invalid {
            key: format!("history.{key}"),
            reason: "must be positive".into(),
        };
        if self.snapshot_every_events == 0 {
            return Err(bad("snapshot_every_events"));
        }
        if self.snapshot_every.is_zero() {
            return Err(bad("snapshot_every_secs"));
        }
        if self.snapshots_kept == 0 {
            return Err(bad("snapshots_kept"));
        }
        if self.usage_retention_days == 0 {
            return Err(bad("usage_retention_days"));
        }
        if self.usage_record_secs == 0 {
            return Err(bad("usage_record_secs"));
        }
        Ok(())
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHistory {
    snapshot_every_events: Option<u64>,
    snapshot_every_secs: Option<u64>,
    snapshots_kept: Option<usize>,
    usage_retention_days: Option<u32>,
    usage_record_secs: Option<u32>,
}

impl FileHistory {
    pub(super) fn apply(self, h: &mut History) {
        set(&mut h.snapshot_every_events, self.snapshot_every_events);
        set(
            &mut h.snapshot_every,
            self.snapshot_every_secs.map(Duration::from_secs),
        );
        set(&mut h.snapshots_kept, self.snapshots_kept);
        set(&mut h.usage_retention_days, self.usage_retention_days);
        set(&mut h.usage_record_secs, self.usage_record_secs);
    }
}
