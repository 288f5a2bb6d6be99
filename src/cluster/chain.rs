//! Which stream messages are events: signed by a trusted node for the position they landed
//! at, and, for one that names its predecessor (`Snaptrack-Follows`), right after that event
//! when it counted itself. A node publishes a round's events pipelined (see
//! `JetStreamBus::publish`); when one of them is refused because another node's event took
//! its place, a later one of the same burst may still fit after that event. It did not
//! follow what it was validated after, so every node passes over it the same way: the rule
//! reads nothing but the stream.
//!
//! The predecessor is known from the last message judged; after a restart, from the local
//! mirror; on a node restored from a shared snapshot, by fetching the messages before it from
//! the stream and judging them the same way.

use super::Cluster;
use crate::bus::{Entry, SledLog};
use crate::event::Envelope;
use crate::signing::{FOLLOWS, HEADER as SIGNATURE, LEGACY_FOLLOWS};
use async_nats::HeaderMap;
use uuid::Uuid;

/// What a stream message is.
#[derive(Debug)]
pub enum Verdict {
    /// A trusted node's event, for this position.
    Event(Box<Envelope>),
    /// Not a trusted node's event for this position: never applied, warned about.
    PassOver(String),
    /// A trusted node's event that does not follow the event it names: left over from a
    /// burst cut short by another node's event. Never applied; expected under contention.
    Void(String),
    /// Signed by a trusted node, yet not readable here: the node fails closed.
    Halt(String),
}

/// A message as it came off the stream.
pub struct Message<'m> {
    pub seq: u64,
    pub subject: &'m str,
    pub payload: &'m [u8],
    pub headers: Option<&'m HeaderMap>,
}

impl Message<'_> {
    fn header(&self, name: &'static str) -> Option<&str> {
        self.headers.and_then(|h| h.get(name)).map(|v| v.as_str())
    }
}

/// The event id at the last position judged, so the next message's predecessor is known
/// without a lookup.
#[derive(Default)]
pub struct Chain {
    /// (sequence, the event there if it counted).
    last: Option<(u64, Option<Uuid>)>,
}

impl Chain {
    /// Notes what the position `seq` turned out to hold (`None`: nothing that counts).
    pub fn record(&mut self, seq: u64, event: Option<Uuid>) {
        self.last = Some((seq, event));
    }

    /// Judges `msg` as it came off the stream: a message this node published itself, byte
    /// for byte, skips the signature check. An error: the predecessor could not be looked
    /// up (try again).
    pub async fn judge(
        &mut self,
        cluster: &Cluster,
        log: &SledLog,
        msg: Message<'_>,
    ) -> Result<Verdict, String> {
        let (env, follows) = match check(cluster, log, &msg, true) {
            Checked::Event(env, follows) => (*env, follows),
            Checked::Not(verdict) => return Ok(verdict),
        };
        let Some(follows) = follows else {
            return Ok(Verdict::Event(Box::new(env)));
        };
        let before = self.event_at(cluster, log, msg.seq - 1).await?;
        Ok(follow(env, &follows, before))
    }

    /// The event that counted at `seq`, if one did.
    async fn event_at(
        &mut self,
        cluster: &Cluster,
        log: &SledLog,
        seq: u64,
    ) -> Result<Option<Uuid>, String> {
        if let Some(known) = self.known(log, seq) {
            return Ok(known);
        }
        // Back through the stream to a message that follows nothing or to a known position,
        // then forward again, judging each like the replicator does.
        let mut fetched = Vec::new();
        let mut at = seq;
        loop {
            let msg = cluster.bus.message_at(at).await?;
            let follows = msg
                .as_ref()
                .is_some_and(|m| m.headers.get(FOLLOWS).is_some());
            fetched.push((at, msg));
            if !follows || at <= 1 || self.known(log, at - 1).is_some() {
                break;
            }
            at -= 1;
        }
        while let Some((at, msg)) = fetched.pop() {
            let event = match &msg {
                // Gone from the stream (limits, a purge): nothing there counts now.
                None => None,
                Some(m) => {
                    let msg = Message {
                        seq: at,
                        subject: m.subject.as_str(),
                        payload: &m.payload,
                        headers: Some(&m.headers),
                    };
                    match check(cluster, log, &msg, false) {
                        Checked::Event(env, None) => Some(env.event_id),
                        Checked::Event(env, Some(follows)) => {
                            let env = *env;
                            let before = match self.known(log, at - 1) {
                                Some(b) => b,
                                None => return Err(format!("seq {} unknown", at - 1)),
                            };
                            match follow(env, &follows, before) {
                                Verdict::Event(env) => Some(env.event_id),
                                _ => None,
                            }
                        }
                        Checked::Not(_) => None,
                    }
                }
            };
            self.record(at, event);
        }
        Ok(self.known(log, seq).flatten())
    }

    /// What `seq` holds, from the last position judged or the local mirror; `None`: not
    /// known here.
    fn known(&self, log: &SledLog, seq: u64) -> Option<Option<Uuid>> {
        if seq == 0 {
            return Some(None);
        }
        if let Some((at, event)) = self.last {
            if at == seq {
                return Some(event);
            }
        }
        match log.entries_from(seq).next() {
            Some(Ok(Entry::Event(env))) if env.seq == seq => Some(Some(env.event_id)),
            Some(Ok(Entry::Foreign(at))) if at == seq => Some(None),
            _ => None,
        }
    }
}

enum Checked {
    /// A trusted node's event for this position, and the event it must follow, if it names
    /// one.
    Event(Box<Envelope>, Option<String>),
    Not(Verdict),
}

/// Everything but the predecessor: the signature, the position, the decoding.
fn check(cluster: &Cluster, log: &SledLog, msg: &Message<'_>, mine: bool) -> Checked {
    let seq = msg.seq;
    // Only a trusted node's signature over this subject and these bytes makes a message an
    // event; anything else on the subjects is someone else's and must not stop the node.
    let header = msg.header(SIGNATURE);
    let follows = msg.header(FOLLOWS);
    // An event an earlier version published to follow another carries that condition,
    // which nats-server enforced, and the signature covers it (see `signing`).
    let legacy = msg.header(LEGACY_FOLLOWS);
    // What this node published itself, byte for byte and following the same event, is its
    // own event: no need to check its signature (every node checks the others').
    let own = mine
        && legacy.is_none()
        && cluster
            .bus
            .published_here(seq, msg.payload, follows.map(str::trim));
    // Written before nodes signed, by the operator's word (`unsigned_through`).
    let history = header.is_none() && seq <= cluster.unsigned_through;
    if !own && !history {
        if let Err(why) =
            cluster
                .verifier
                .verify_after(msg.subject, msg.payload, header, follows.or(legacy))
        {
            return Checked::Not(Verdict::PassOver(why.to_string()));
        }
    }
    // With the log's upcasters: a v1 event's password hash goes to the credential store.
    match Envelope::decode_with(msg.payload, seq, &log.upcasters()) {
        Ok(env) if env.seq == seq => Checked::Event(Box::new(env), follows.map(str::to_owned)),
        // A real event published again: it was signed for another position.
        Ok(env) => Checked::Not(Verdict::PassOver(format!(
            "signed for seq {}, not for this position",
            env.seq
        ))),
        // Signed by a trusted node, yet not readable here (a version from the future): a real
        // node's event this node cannot apply.
        Err(e) => Checked::Not(Verdict::Halt(e.to_string())),
    }
}

/// `env`, if the event that counted right before it is the one it names.
fn follow(env: Envelope, follows: &str, before: Option<Uuid>) -> Verdict {
    if before.is_some_and(|b| b.to_string() == follows.trim()) {
        Verdict::Event(Box::new(env))
    } else {
        Verdict::Void(format!(
            "follows event {}, which is not the event before it",
            follows.trim()
        ))
    }
}
