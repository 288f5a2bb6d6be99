//! Cluster mode's two background tasks.
//!
//! - The replicator mirrors the stream into the local sled log, by stream sequence, and
//!   applies each event to the projections: the "apply" flow for own and others' events
//!   alike. It resumes from the local log's last sequence, skips redeliveries, and on a gap
//!   starts a new consumer from the first missing sequence, so no event is applied twice or
//!   out of order; positions the stream no longer holds (usage past its retention) are
//!   passed over. A message that no trusted key signed for its position is never applied:
//!   it is passed over (and marked so in the local log), counted, and the node serves on.
//! - The announcer says on `snaptrack.auth.nodes` how far this node has applied, hears the
//!   others, and checks every interval that the node is caught up (bounded staleness).
//!
//! They are tokio tasks rather than actors: each is one loop over a stream or a timer, and
//! nothing sends them messages.

use crate::bus::SledLog;
use crate::cluster::chain::{Chain, Message, Verdict};
use crate::cluster::{Announcement, Cluster};
use crate::event::Event;
use crate::signing::signature_of;
use crate::state::State;
use async_nats::jetstream;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pause before reconnecting a consumer that failed.
const RETRY: Duration = Duration::from_millis(100);
/// A consumer that makes no progress for this long while the stream is ahead is replaced.
const STALL: Duration = Duration::from_millis(500);

/// Starts the replicator and the announcer. Abort the handles to stop them.
pub fn start(
    cluster: Arc<Cluster>,
    state: Arc<State>,
    log: Arc<SledLog>,
) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(replicate(cluster.clone(), state.clone(), log)),
        tokio::spawn(announce(cluster, state)),
    ]
}

async fn replicate(cluster: Arc<Cluster>, state: Arc<State>, log: Arc<SledLog>) {
    let flushing = Arc::new(AtomicBool::new(false));
    let mut chain = Chain::default();
    loop {
        // Create the stream only on a node that has applied nothing: one that has must find
        // the stream it came from, not a new empty one (which the staleness probe would then
        // report as diverged).
        let identity = async {
            if state.applied_seq() == 0 {
                cluster.bus.ensure_stream().await?;
            }
            cluster.bus.identity().await
        };
        let created = match identity.await {
            Ok((_, created)) => created,
            Err(e) => {
                tracing::warn!(error = %e, "stream not available; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if let Err(reason) = same_stream(&log, &created) {
            tracing::error!(reason, "the node fails closed");
            cluster.halt();
            return;
        }
        let start = state.applied_seq() + 1;
        let mut messages = match cluster.bus.consume_from(start).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume the stream; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::debug!(from = start, "consuming the stream");
        // A consumer can outlive its server (NATS restarted) and then wait forever. The
        // staleness probe knows how far the stream goes: no progress while behind it for a
        // whole tick means a new consumer.
        let mut watchdog = tokio::time::interval(STALL);
        watchdog.tick().await;
        let mut progress = state.applied_seq();
        // The consumer's start, until its first message came.
        let mut first = Some(start);
        loop {
            let item = tokio::select! {
                item = messages.next() => item,
                _ = watchdog.tick() => {
                    let applied = state.applied_seq();
                    if applied == progress && cluster.stream_last.load(Ordering::Relaxed) > applied {
                        tracing::warn!(applied, "stream consumer stalled; reconnecting");
                        break;
                    }
                    progress = applied;
                    continue;
                }
            };
            let Some(item) = item else { break };
            let first_of = first.take();
            match receive(&cluster, &state, &log, &mut chain, item, first_of).await {
                Received::Applied => {}
                Received::Skipped => continue,
                Received::Reconnect => break,
                Received::Halt => return,
            }
            if !flushing.swap(true, Ordering::AcqRel) {
                let (log, flushing, state) = (log.clone(), flushing.clone(), state.clone());
                tokio::spawn(async move {
                    // The mirror is a cache of the stream: a lost tail is fetched again at
                    // restart, so nothing waits for this flush.
                    if let Err(e) = log.wait_durable(log.last_seq()).await {
                        tracing::error!(error = %e, "local mirror write failed; node fails closed");
                        state.poison();
                    }
                    flushing.store(false, Ordering::Release);
                });
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Whether the stream created at `created` is the one the local log mirrors (recording it
/// the first time). A stream deleted and created again holds other events under the same
/// numbers.
fn same_stream(log: &SledLog, created: &str) -> Result<(), String> {
    match log.meta("stream_created") {
        Ok(Some(known)) if known != created => Err(format!(
            "the stream was recreated since this node mirrored it (created {known}, now {created}); start the node with an empty data directory"
        )),
        Ok(Some(_)) => Ok(()),
        Ok(None) => log
            .set_meta("stream_created", created)
            .map_err(|e| format!("cannot record the stream's identity: {e}")),
        Err(e) => Err(format!("cannot read the stream's identity: {e}")),
    }
}

enum Received {
    Applied,
    /// Delivered again after a reconnect: already applied.
    Skipped,
    /// The consumer failed or skipped ahead: start a new one from the next sequence.
    Reconnect,
    /// An event this node cannot apply: it fails closed.
    Halt,
}

/// Mirrors and applies one delivered message, if it is the next one. `first_of`: the
/// consumer's start, when this is its first message.
async fn receive(
    cluster: &Cluster,
    state: &State,
    log: &SledLog,
    chain: &mut Chain,
    item: Result<jetstream::Message, impl std::fmt::Display>,
    first_of: Option<u64>,
) -> Received {
    let msg = match item {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "stream consumer failed; reconnecting");
            return Received::Reconnect;
        }
    };
    let seq = match msg.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(error = %e, "message without stream metadata; reconnecting");
            return Received::Reconnect;
        }
    };
    let expected = state.applied_seq() + 1;
    if seq < expected {
        return Received::Skipped;
    }
    if seq > expected {
        // Positions the stream no longer holds below a trusted node's usage purge point
        // are usage past its retention: passed over. Anything else is a delivery gap (fetch
        // again from the first missing) or a message someone deleted (the node stalls and
        // goes stale rather than skip it).
        // A consumer started at `expected` never skips a message the stream holds, so its
        // first one being `seq` means everything before it is gone.
        if first_of == Some(expected) && seq <= cluster.purged_below() {
            if let Err(r) = pass_over_gone(state, log, cluster, chain, expected, seq) {
                return r;
            }
        } else {
            tracing::warn!(expected, found = seq, "gap in the stream; refetching");
            return Received::Reconnect;
        }
    }
    let judged = chain
        .judge(
            cluster,
            log,
            Message {
                seq,
                subject: msg.subject.as_str(),
                payload: &msg.payload,
                headers: msg.headers.as_ref(),
            },
        )
        .await;
    let env = match judged {
        Ok(Verdict::Event(env)) => *env,
        Ok(Verdict::PassOver(reason)) => {
            chain.record(seq, None);
            tracing::warn!(seq, reason, "rejected a message on the stream: not applied");
            cluster.stream_rejected.fetch_add(1, Ordering::Relaxed);
            return pass_over(state, log, cluster, seq);
        }
        Ok(Verdict::Void(reason)) => {
            chain.record(seq, None);
            tracing::debug!(seq, reason, "passed over the rest of a burst cut short");
            cluster.stream_void.fetch_add(1, Ordering::Relaxed);
            return pass_over(state, log, cluster, seq);
        }
        Ok(Verdict::Halt(reason)) => return halt(cluster, seq, &reason),
        Err(e) => {
            tracing::warn!(seq, error = %e, "cannot judge a message yet; reconnecting");
            return Received::Reconnect;
        }
    };
    let event_id = env.event_id;
    // The node a revocation was asked of waits for everyone else to say they have it; it
    // knows itself (the events of a forwarded command name the node that forwarded it).
    let revocation = matches!(env.event, Event::TokenRevoked(_)) && env.node_id != cluster.node_id;
    if let Err(e) = log.mirror(&env) {
        state.poison();
        return halt(cluster, seq, &e.to_string());
    }
    if let Err(e) = state.apply_owned(env) {
        return halt(cluster, seq, &e.to_string());
    }
    chain.record(seq, Some(event_id));
    cluster.applied(seq);
    if revocation {
        // The revoking node is waiting for everyone to say they have it.
        cluster.announce_wanted.notify_one();
    }
    Received::Applied
}

/// Skips a message that is not an event at `seq` (see [`Verdict`]): never applied, and marked
/// in the local log so that a restart passes over it too.
fn pass_over(state: &State, log: &SledLog, cluster: &Cluster, seq: u64) -> Received {
    if let Err(e) = log.mirror_foreign(seq) {
        state.poison();
        return halt(cluster, seq, &e.to_string());
    }
    if let Err(e) = state.pass_over(seq) {
        return halt(cluster, seq, &e.to_string());
    }
    cluster.applied(seq);
    Received::Applied
}

/// Passes over the positions `from..to`, which the stream delivered nothing for and no
/// longer holds (removed by the usage retention): nothing there counts.
fn pass_over_gone(
    state: &State,
    log: &SledLog,
    cluster: &Cluster,
    chain: &mut Chain,
    from: u64,
    to: u64,
) -> Result<(), Received> {
    tracing::debug!(from, to, "positions gone from the stream; passed over");
    for seq in from..to {
        if let Err(e) = log.mirror_foreign(seq) {
            state.poison();
            return Err(halt(cluster, seq, &e.to_string()));
        }
        if let Err(e) = state.pass_over(seq) {
            return Err(halt(cluster, seq, &e.to_string()));
        }
    }
    chain.record(to - 1, None);
    cluster.applied(to - 1);
    Ok(())
}

fn halt(cluster: &Cluster, seq: u64, reason: &str) -> Received {
    tracing::error!(
        seq,
        reason,
        "cannot apply an event from the stream; the node fails closed"
    );
    cluster.halt();
    Received::Halt
}

async fn announce(cluster: Arc<Cluster>, state: Arc<State>) {
    let mut sub = loop {
        match cluster
            .bus
            .client()
            .subscribe(crate::bus::PRESENCE_SUBJECT)
            .await
        {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to presence; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    let mut tick = tokio::time::interval(cluster.settings.presence_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { return };
                match heard(&cluster, &msg) {
                    Ok(a) => {
                        cluster.purged(a.usage_purged_below);
                        if let Err(e) = cluster.peers.heard(a, Instant::now()) {
                            tracing::error!(error = %e, "the node fails closed");
                            cluster.halt();
                        }
                    }
                    Err(why) => tracing::debug!(reason = %why, "ignoring an announcement"),
                }
                // Each limit is shared by the live nodes (see `RateLimits`).
                state.rate_limits.set_nodes(cluster.peers.live_count(Instant::now()) as u32);
            }
            _ = cluster.announce_wanted.notified() => {
                cluster.announce(false).await;
            }
            _ = tick.tick() => {
                cluster.announce(false).await;
                state.rate_limits.set_nodes(cluster.peers.live_count(Instant::now()) as u32);
                // The staleness probe runs beside the loop, so announcements keep flowing
                // while NATS is slow.
                if !probing.swap(true, Ordering::AcqRel) {
                    let (cluster, probing) = (cluster.clone(), probing.clone());
                    tokio::spawn(async move {
                        if let Err(e) = cluster.catch_up(cluster.settings.max_staleness).await {
                            tracing::debug!(error = %e, "staleness probe failed");
                        }
                        probing.store(false, Ordering::Release);
                    });
                }
            }
        }
    }
}

/// The announcement in a presence message, if a trusted node signed it lately.
fn heard(cluster: &Cluster, msg: &async_nats::Message) -> Result<Announcement, String> {
    let header = signature_of(msg);
    let checked = serde_json::from_slice::<Announcement>(&msg.payload)
        .map_err(|e| e.to_string())
        .and_then(|a| {
            // This process's own announcement changes nothing: no signature to check.
            if cluster.is_own_echo(&a) {
                return Ok(a);
            }
            cluster
                .verifier
                .verify(msg.subject.as_str(), &msg.payload, header)
                .map_err(|e| e.to_string())?;
            let now = chrono::Utc::now().timestamp_millis();
            if !a.is_recent(now, cluster.settings.max_staleness) {
                Err(format!("sent at {} ms, too long ago", a.sent_at_ms))
            } else if cluster.is_from_an_earlier_process(&a) {
                // Replayed, or still in flight when this process started: not a twin.
                Err("sent by an earlier process of this node".into())
            } else {
                Ok(a)
            }
        });
    if checked.is_err() {
        cluster.presence_rejected.fetch_add(1, Ordering::Relaxed);
    }
    checked
}
