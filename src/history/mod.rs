//! History that grows with what the service knows, not with its traffic.
//!
//! - [`UsageCheckpoint`]: the open rate-limit windows, overwritten in place every flush, so a
//!   restart (even after `kill -9`) restores them without their requests ever being events.
//! - [`UsageRollups`]: requests per token per hour, rolled up from the log's usage records
//!   and kept `usage_retention_days`.
//! - [`SecurityLog`]: each user's own security events, newest first, for Settings → Security
//!   log (a projection of the log, beside it).
//! - [`snapshot`]: the whole state at a sequence number, so a start replays only what
//!   followed it; [`take`] writes one.
//!
//! [`Quiesce`] lets a stop wait for the background work of all three before the process
//! exits.
//!
//! Owns: state kept beside the log rather than in it. May not touch: the log's events (only
//! the writer appends) or the projections' internals (it reads them through `State`).

mod checkpoint;
pub mod rollup;
pub mod security_log;
pub mod snapshot;

pub use checkpoint::UsageCheckpoint;
pub use rollup::UsageRollups;
pub use security_log::SecurityLog;
pub use snapshot::{SnapshotError, SnapshotStore};

use crate::bus::SledLog;
use crate::state::State;
use std::sync::Arc;

/// The background work's gate (usage rounds, snapshots, roll-ups): each round enters it, and
/// a stop closes it, waiting for the rounds inside to finish. A round's blocking part runs on
/// a thread of its own that an aborted task does not stop, and a process must not exit with
/// such a thread halfway through a sled write (or the allocator's teardown under it).
#[derive(Default)]
pub struct Quiesce {
    /// `true` once closed. tokio's: guards are held across `.await`s and moved into
    /// blocking closures (owned guards).
    closed: Arc<tokio::sync::RwLock<bool>>,
}

/// Held while a background round runs.
pub type Entered = tokio::sync::OwnedRwLockReadGuard<bool>;

impl Quiesce {
    /// Enters for one round; `None` once the gate is closed.
    pub async fn enter(&self) -> Option<Entered> {
        let guard = self.closed.clone().read_owned().await;
        (!*guard).then_some(guard)
    }

    /// Closes the gate and waits until every round inside has finished.
    pub async fn close(&self) {
        *self.closed.write().await = true;
    }
}

/// Takes a snapshot of `state` now: the image between two applies, then (once the log is
/// durable that far) the file. Returns its sequence number; `None` when the newest snapshot
/// already stands there.
pub async fn take(
    state: &Arc<State>,
    log: &Arc<SledLog>,
    store: &Arc<SnapshotStore>,
) -> Result<Option<u64>, String> {
    let st = state.clone();
    let image = tokio::task::spawn_blocking(move || st.image())
        .await
        .map_err(|e| e.to_string())?;
    let seq = image.applied_seq;
    if store.status.get().is_some_and(|(s, _)| s == seq) {
        return Ok(None);
    }
    log.wait_durable(seq).await.map_err(|e| e.to_string())?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let taken_at = chrono::Utc::now().timestamp();
        let bytes = snapshot::encode(&image, taken_at)?;
        store
            .write(seq, taken_at, &bytes)
            .map_err(|e| e.to_string())?;
        Ok(Some(seq))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Takes a snapshot whenever `every_events` events were applied since the last one, or
/// `every` passed and any were. Runs until aborted.
pub async fn snapshot_periodically(
    state: Arc<State>,
    log: Arc<SledLog>,
    store: Arc<SnapshotStore>,
    every_events: u64,
    every: std::time::Duration,
    gate: Arc<Quiesce>,
) {
    let mut last_at = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1).min(every));
    loop {
        tick.tick().await;
        let since = store.status.get().map_or(0, |(s, _)| s);
        let pending = state.applied_seq().saturating_sub(since);
        if pending == 0 || (pending < every_events && last_at.elapsed() < every) {
            continue;
        }
        let Some(_inside) = gate.enter().await else {
            return;
        };
        last_at = std::time::Instant::now();
        let started = std::time::Instant::now();
        match take(&state, &log, &store).await {
            Ok(Some(seq)) => tracing::info!(
                seq,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot taken"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "snapshot failed; the log still has everything"),
        }
    }
}

/// Rolls up the log's new usage records every `every`, and once an hour (and at start)
/// deletes roll-ups older than `retention_days` and compacts the usage records that old out
/// of the log (only those the roll-ups have read and the oldest snapshot kept covers). Runs
/// until aborted.
pub async fn roll_up_periodically(
    rollups: Arc<UsageRollups>,
    log: Arc<SledLog>,
    snapshots: Arc<SnapshotStore>,
    retention_days: u32,
    every: std::time::Duration,
    gate: Arc<Quiesce>,
) {
    let mut tick = tokio::time::interval(every);
    let mut pruned_at: Option<std::time::Instant> = None;
    loop {
        tick.tick().await;
        let Some(inside) = gate.enter().await else {
            return;
        };
        let (r, l, store) = (rollups.clone(), log.clone(), snapshots.clone());
        let prune = pruned_at.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(3600));
        let result = tokio::task::spawn_blocking(move || {
            let _inside = inside;
            let durable = l.durable_seq();
            let rolled = r.catch_up(&l, durable)?;
            if !prune {
                return Ok::<_, crate::bus::LogError>((rolled, None));
            }
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(retention_days));
            let pruned = r.prune(cutoff.timestamp())?;
            let oldest_snapshot = store.list().ok().and_then(|l| l.last().map(|s| s.0));
            let through = oldest_snapshot.unwrap_or(0).min(r.through()?);
            let compacted = l.compact_usage(cutoff, through)?;
            Ok((rolled, Some((pruned, compacted))))
        })
        .await;
        match result {
            Ok(Ok((rolled, pruned))) => {
                if let Some((pruned, compacted)) = pruned {
                    pruned_at = Some(std::time::Instant::now());
                    if pruned > 0 || compacted > 0 {
                        tracing::info!(pruned, compacted, "usage older than the retention removed");
                    }
                }
                if rolled > 0 {
                    tracing::debug!(rolled, "usage rolled up");
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "usage roll-up failed"),
            Err(e) => tracing::error!(error = %e, "usage roll-up task failed"),
        }
    }
}

/// Files new events in the users' security logs every `every`. Runs until aborted.
pub async fn follow_security_log(
    security: Arc<SecurityLog>,
    log: Arc<SledLog>,
    state: Arc<State>,
    every: std::time::Duration,
    gate: Arc<Quiesce>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(inside) = gate.enter().await else {
            return;
        };
        let (sec, l, st) = (security.clone(), log.clone(), state.clone());
        let result = tokio::task::spawn_blocking(move || {
            let _inside = inside;
            sec.catch_up(&l, &st, l.durable_seq())
        })
        .await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "security log update failed"),
            Err(e) => tracing::error!(error = %e, "security log task failed"),
        }
    }
}
