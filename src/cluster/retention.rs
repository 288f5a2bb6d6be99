//! Usage history leaves the shared stream once it is older than `usage_retention_days`:
//! the usage subjects are purged below the point this node's log compacted its own usage to,
//! and security events stay for ever.
//!
//! Claims and period records stay on the one stream, in the one order the state is built
//! from (a claim counts against the plan the stream gave the user just before it; the
//! snapshot, the mirror and the shared snapshot each stand at one sequence number), so usage
//! gets its own retention by subject rather than a stream of its own: the purge removes
//! `snaptrack.auth.v1.usage.>` messages only, and the sequence numbers of everything else
//! stay. The point is the log's compaction point (`SledLog::compacted_below`): every usage
//! event before it is older than the retention, rolled up here, and covered by the oldest
//! snapshot this node keeps, so no start of this node needs what goes. The node says how far
//! it purged in its (signed) announcements; a node that reads the stream across the hole
//! passes over missing positions below the highest such point it heard, and nowhere else (a
//! message deleted by anyone else stops it, as before: it fails closed). No
//! security event names a usage message as its predecessor (a burst publishes its commands'
//! events first), so the rule of [`super::chain`] never voids one for a purge.

use super::Cluster;
use crate::bus::SledLog;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the compaction point is looked at (a meta read; the purge runs when it moved).
const EVERY: Duration = Duration::from_secs(5);

/// Purges the stream's usage below the local log's compaction point whenever that moves.
/// Runs until aborted. Every node does it; a purge is idempotent.
pub async fn purge_periodically(cluster: Arc<Cluster>, log: Arc<SledLog>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        let below = match log.compacted_below() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read how far usage was compacted");
                continue;
            }
        };
        if below <= cluster.purged_here.load(Ordering::Relaxed).max(1) {
            continue;
        }
        match cluster.bus.purge_usage(below).await {
            Ok(purged) => {
                cluster.purged_here.store(below, Ordering::Relaxed);
                cluster.purged(below);
                cluster.usage_purged.fetch_add(purged, Ordering::Relaxed);
                if purged > 0 {
                    tracing::info!(
                        below,
                        purged,
                        "usage older than the retention purged from the stream"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "usage purge failed; trying again"),
        }
    }
}
