//! Cluster mode's shared knowledge: how far this node has applied the stream, which other
//! nodes are live and how far they have applied, whether this node is fresh enough to answer
//! token checks, and the one coalesced catch-up query.
//!
//! Owns: the guarantees of DESIGN.md's "Consistency guarantees" — read-your-writes on a miss
//! ([`Cluster::catch_up`]), the revocation barrier ([`Cluster::barrier`]) and bounded
//! staleness ([`Cluster::is_fresh`]). May not touch: the projections (the replicator
//! applies; this module only hears how far it got).
//!
//! [`shared`]: snapshots shared through JetStream, so a new node need not read the stream
//! from sequence 1. [`rounds`]: the writer's rounds, which publish a node's commands and
//! claims in one pipelined burst. [`forward`]: commands go to one writer, the leader.
//! [`retention`]: usage history leaves the stream after
//! `usage_retention_days`.

pub mod chain;
pub mod forward;
mod presence;
pub mod retention;
pub mod rounds;
pub mod shared;

pub use presence::{Announcement, DuplicateId, Peers};

use crate::bus::JetStreamBus;
use crate::config::ClusterSettings;
use crate::signing::Verifier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Why a node cannot answer a token check.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatchUpError {
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
    #[error("not caught up with the stream within the time allowed")]
    TimedOut,
    #[error("the stream ends at seq {stream} but this node applied seq {applied}: was the stream recreated?")]
    Diverged { stream: u64, applied: u64 },
}

/// How long a catch-up waits before asking again a stream that answered behind this node.
const BEHIND_AGAIN: Duration = Duration::from_millis(20);

/// A catch-up query's answer.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// The stream's last sequence.
    last: u64,
    /// When the query was sent.
    at: Instant,
    /// This node's applied sequence when the query was sent: the stream held at least that
    /// much then, unless it lost events.
    applied: u64,
}

/// One node's view of the cluster.
pub struct Cluster {
    pub bus: JetStreamBus,
    pub node_id: String,
    /// Random per process (see [`Announcement::instance`]).
    instance: String,
    /// When this process started (Unix ms): an announcement of another instance of this
    /// node sent before it is an earlier process's (replayed, or in flight at a restart),
    /// not a twin.
    started_at_ms: i64,
    pub settings: ClusterSettings,
    /// The replicator's applied sequence; waiters (the writer, catch-ups) watch it.
    applied: watch::Sender<u64>,
    pub peers: Peers,
    /// Time origin of the millisecond clocks below.
    epoch: Instant,
    /// When (ms after `epoch`) the node last confirmed it had applied everything the stream
    /// held at that moment; 0 means never.
    fresh_ms: AtomicU64,
    /// Set when the replicator met an event it cannot apply: the node fails closed.
    halted: AtomicBool,
    /// The stream's last sequence at the last query (for the replication-lag metric).
    pub stream_last: AtomicU64,
    /// The last sequence this node knows the stream acknowledged for a command it wrote or
    /// forwarded. Commands are validated only against a state that includes it: a revoke
    /// must not be refused for a token whose issue was acknowledged but not applied here
    /// yet (a slow replicator after a failover).
    pub appended: AtomicU64,
    catchup: CatchUpQuery,
    /// The keys whose messages are applied: this node's and `[cluster] trusted_keys`.
    pub verifier: Verifier,
    /// Positions up to this one predate signing: unsigned messages there are applied.
    pub unsigned_through: u64,
    /// Stream messages skipped because no trusted key signed them for their position.
    pub stream_rejected: AtomicU64,
    /// Stream messages passed over because they do not follow the event they name (the
    /// rest of a burst another node's event cut short; see [`chain`]).
    pub stream_void: AtomicU64,
    /// Usage messages older than the retention this node purged from the stream.
    pub usage_purged: AtomicU64,
    /// This node purged the stream's usage below this sequence (it says so in its
    /// announcements).
    pub purged_here: AtomicU64,
    /// The highest such point a trusted node (this one included) announced: missing
    /// positions below it may be passed over, nowhere else.
    purged_below: AtomicU64,
    /// Commands this node forwarded to the leader and got an answer for.
    pub forwarded: AtomicU64,
    /// Forwarded commands (or answers) refused: unsigned, replayed, not for this request.
    pub forward_rejected: AtomicU64,
    /// Commands the leader did not take (no one listened on its subject, or it declined),
    /// so this node ran them itself.
    pub forward_not_taken: AtomicU64,
    /// A leader that did not answer, and until when this node writes itself instead. A std
    /// mutex: held for a comparison or an assignment.
    suspect: parking_lot::Mutex<Option<(String, Instant)>>,
    /// Presence messages ignored because no trusted key signed them.
    pub presence_rejected: AtomicU64,
    /// Set when a revocation was applied: the announcer says so at once. Requests made while
    /// an announcement is being signed and sent share the next one (each says everything
    /// applied so far), so a burst of revocations costs a few signatures, not one each.
    pub announce_wanted: tokio::sync::Notify,
}

/// Coalesces catch-up queries: a query in flight serves only the misses that arrived before
/// it was sent (so read-your-writes holds); misses arriving during it share the next one.
struct CatchUpQuery {
    /// A std mutex: held for a few assignments, never across an `.await`.
    st: parking_lot::Mutex<QueryState>,
    done: tokio::sync::Notify,
    /// Queries sent (for metrics and the tests that concurrent misses share one).
    sent: AtomicU64,
    /// Token checks that missed and asked for a catch-up (garbage never does).
    misses: AtomicU64,
}

struct QueryState {
    /// Tickets handed out to misses.
    issued: u64,
    /// Every ticket up to this one has its answer in `result`.
    served: u64,
    running: bool,
    /// The answer: see [`Asked`].
    result: Result<Asked, CatchUpError>,
}

impl Cluster {
    pub fn new(
        bus: JetStreamBus,
        node_id: String,
        settings: ClusterSettings,
        applied: u64,
        verifier: Verifier,
        unsigned_through: u64,
    ) -> Self {
        let instance = uuid::Uuid::new_v4().to_string();
        Cluster {
            bus,
            node_id: node_id.clone(),
            instance: instance.clone(),
            started_at_ms: chrono::Utc::now().timestamp_millis(),
            settings,
            applied: watch::Sender::new(applied),
            peers: Peers::new(
                node_id,
                instance,
                settings.presence_interval * 3,
                settings.max_staleness + settings.presence_interval,
            ),
            epoch: Instant::now(),
            fresh_ms: AtomicU64::new(0),
            halted: AtomicBool::new(false),
            stream_last: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            catchup: CatchUpQuery {
                st: parking_lot::Mutex::new(QueryState {
                    issued: 0,
                    served: 0,
                    running: false,
                    result: Err(CatchUpError::TimedOut),
                }),
                done: tokio::sync::Notify::new(),
                sent: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            },
            verifier,
            unsigned_through,
            stream_rejected: AtomicU64::new(0),
            stream_void: AtomicU64::new(0),
            usage_purged: AtomicU64::new(0),
            purged_here: AtomicU64::new(0),
            purged_below: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forward_rejected: AtomicU64::new(0),
            forward_not_taken: AtomicU64::new(0),
            suspect: parking_lot::Mutex::new(None),
            presence_rejected: AtomicU64::new(0),
            announce_wanted: tokio::sync::Notify::new(),
        }
    }

    /// Called by the replicator after applying `seq`.
    pub fn applied(&self, seq: u64) {
        self.applied.send_replace(seq);
    }

    /// When this process started (Unix milliseconds).
    pub fn started_at_ms(&self) -> i64 {
        self.started_at_ms
    }

    /// Notes a usage purge point a trusted node announced (or this one made).
    pub fn purged(&self, below: u64) {
        self.purged_below.fetch_max(below, Ordering::Relaxed);
    }

    /// Missing stream positions below this are usage purged after its retention.
    pub fn purged_below(&self) -> u64 {
        self.purged_below.load(Ordering::Relaxed)
    }

    /// The node this one forwards its commands to: the live node with the smallest id, when
    /// that is not this one (see [`forward`]).
    pub fn leader(&self) -> Option<String> {
        let now = Instant::now();
        let leader = self
            .peers
            .smallest_live(now)
            .filter(|id| *id < self.node_id)?;
        let mut suspect = self.suspect.lock();
        match &*suspect {
            Some((id, until)) if *id == leader && now < *until => None,
            Some(_) => {
                *suspect = None;
                Some(leader)
            }
            None => Some(leader),
        }
    }

    /// The leader `id` did not answer a forwarded command: write here instead until the
    /// presence timeout has had time to say whether it is gone.
    pub fn suspect_leader(&self, id: &str) {
        let until = Instant::now() + self.settings.max_staleness;
        *self.suspect.lock() = Some((id.to_owned(), until));
    }

    pub fn applied_seq(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Whether `a` is this very process's own announcement, heard back: it changes nothing,
    /// so it need not be checked (another process's under this node id still is).
    pub fn is_own_echo(&self, a: &Announcement) -> bool {
        a.node_id == self.node_id && a.instance == self.instance
    }

    /// Whether `a` is an earlier process's of this node: sent under this node id by another
    /// instance before this process started. It proves nothing about a twin.
    pub fn is_from_an_earlier_process(&self, a: &Announcement) -> bool {
        a.node_id == self.node_id
            && a.instance != self.instance
            && a.sent_at_ms < self.started_at_ms
    }

    /// Waits until the replicator has applied `seq`, for at most `timeout`.
    pub async fn wait_applied(&self, seq: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Marks the node as having met an event it cannot apply.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::Release);
    }

    pub fn is_halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
    }

    fn ms_since_epoch(&self, t: Instant) -> u64 {
        // +1 so that a confirmation in the very first millisecond is not "never".
        t.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// Records that at `at` the node had applied everything the stream then held.
    pub fn mark_fresh(&self, at: Instant) {
        self.fresh_ms
            .fetch_max(self.ms_since_epoch(at), Ordering::AcqRel);
    }

    /// Whether token checks may be answered: the node confirmed it was caught up within
    /// `max_staleness`, and has not halted.
    pub fn is_fresh(&self) -> bool {
        let fresh = self.fresh_ms.load(Ordering::Acquire);
        fresh != 0
            && !self.is_halted()
            && self.ms_since_epoch(Instant::now()).saturating_sub(fresh)
                <= self.settings.max_staleness.as_millis() as u64
    }

    /// How many queries of the stream's last sequence this node has sent (staleness probes
    /// and catch-ups after misses, coalesced).
    pub fn catchup_queries(&self) -> u64 {
        self.catchup.sent.load(Ordering::Relaxed)
    }

    /// How many token checks missed the index and caught up before answering.
    pub fn catchup_misses(&self) -> u64 {
        self.catchup.misses.load(Ordering::Relaxed)
    }

    /// A token check missed: catch up before answering it (read-your-writes).
    pub async fn catch_up_after_miss(self: &Arc<Self>) -> Result<(), CatchUpError> {
        self.catchup.misses.fetch_add(1, Ordering::Relaxed);
        self.catch_up(self.settings.catchup_timeout).await
    }

    /// The stream's last sequence, asked by one query shared with every concurrent caller
    /// that arrived before it was sent.
    async fn stream_last_seq(self: &Arc<Self>) -> Result<Asked, CatchUpError> {
        let ticket = {
            let mut st = self.catchup.st.lock();
            st.issued += 1;
            st.issued
        };
        loop {
            let notified = self.catchup.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let lead = {
                let mut st = self.catchup.st.lock();
                if st.served >= ticket {
                    return st.result.clone();
                }
                !std::mem::replace(&mut st.running, true)
            };
            if lead {
                // The query runs in its own task, so a caller that gives up (its client went
                // away) cannot leave the others waiting for an answer that never comes.
                let me = self.clone();
                tokio::spawn(async move {
                    let batch = me.catchup.st.lock().issued;
                    let (at, applied) = (Instant::now(), me.applied_seq());
                    me.catchup.sent.fetch_add(1, Ordering::Relaxed);
                    let result = me
                        .bus
                        .last_seq()
                        .await
                        .map(|last| Asked { last, at, applied })
                        .map_err(CatchUpError::Unavailable);
                    if let Ok(a) = result {
                        me.stream_last.fetch_max(a.last, Ordering::Relaxed);
                    }
                    {
                        let mut st = me.catchup.st.lock();
                        st.running = false;
                        st.served = batch;
                        st.result = result;
                    }
                    me.catchup.done.notify_waiters();
                });
            }
            notified.await;
        }
    }

    /// Catches up with the stream as it is now: asks for its last sequence (coalesced) and
    /// waits until the replicator has applied it. On success the node is fresh as of the
    /// moment of the query.
    pub async fn catch_up(self: &Arc<Self>, timeout: Duration) -> Result<(), CatchUpError> {
        let deadline = Instant::now() + timeout;
        loop {
            let Asked { last, at, applied } = self.stream_last_seq().await?;
            if last >= applied {
                return if self.wait_applied(last, timeout).await {
                    self.mark_fresh(at);
                    Ok(())
                } else {
                    Err(CatchUpError::TimedOut)
                };
            }
            // A stream behind what this node applied. Under load a replicated stream answers
            // so for a moment: its leader's store applies committed messages in a queue of its
            // own, and a replica can have delivered later ones already (seen on R3 with two
            // cores: "ends at 22105", applied 22111). So it is asked again, and only a stream
            // that stays behind for the whole timeout has lost events this node applied:
            // serving from this state could contradict it, and new appends would never be
            // accepted. Fail closed.
            if Instant::now() >= deadline {
                let e = CatchUpError::Diverged {
                    stream: last,
                    applied,
                };
                tracing::error!(error = %e, "the node fails closed");
                self.halt();
                return Err(e);
            }
            tracing::debug!(
                last,
                applied,
                "the stream answered behind this node; asking again"
            );
            tokio::time::sleep(BEHIND_AGAIN).await;
        }
    }

    /// The revocation barrier: waits until every live node has announced an applied sequence
    /// of at least `seq`, or `revoke_wait` has passed. Returns (applied, pending) node ids;
    /// this node is among the first, since the writer replied only after applying.
    pub async fn barrier(&self, seq: u64) -> (Vec<String>, Vec<String>) {
        let deadline = Instant::now() + self.settings.revoke_wait;
        loop {
            let changed = self.peers.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (mut done, mut pending) = self.peers.split_at(seq, Instant::now());
            if self.applied_seq() >= seq {
                done.push(self.node_id.clone());
                done.sort();
            } else {
                pending.push(self.node_id.clone());
                pending.sort();
            }
            let now = Instant::now();
            if pending.is_empty() || now >= deadline {
                return (done, pending);
            }
            let _ = tokio::time::timeout(deadline - now, changed).await;
        }
    }

    /// Announces this node and its applied sequence to the others.
    pub async fn announce(&self, leaving: bool) {
        let msg = Announcement {
            node_id: self.node_id.clone(),
            instance: self.instance.clone(),
            applied_seq: self.applied_seq(),
            leaving,
            sent_at_ms: chrono::Utc::now().timestamp_millis(),
            usage_purged_below: self.purged_here.load(Ordering::Relaxed),
        };
        if let Ok(bytes) = serde_json::to_vec(&msg) {
            if let Err(e) = self
                .bus
                .publish_signed(crate::bus::PRESENCE_SUBJECT, bytes)
                .await
            {
                tracing::debug!(error = %e, "presence not sent");
            }
        }
    }
}
