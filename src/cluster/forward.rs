//! One writer for the stream: a node forwards its commands to the cluster's leader, the live
//! node with the smallest id, which runs them in its own rounds. Three nodes racing for each
//! stream position waste most rounds on conflicts (`bench/cluster`: one cluster node alone
//! runs issue + revoke about as fast as an embedded node, three together at a quarter of
//! that); one writer batches everyone's commands instead.
//!
//! Leadership only decides who writes, never what is right: every round is still published
//! "expected last sequence S", so two nodes that both think they lead (views of who is live
//! differ for a moment) are as safe as three racing writers were, only slower. A node that
//! finds no leader listening (NATS says no one subscribes: it stopped), or one that declines
//! (it cannot write: not caught up, fails closed) runs the command in its own round. One
//! that waited for an answer in vain says so (503: it may have happened) and writes its
//! next commands itself for a staleness bound, until presence tells whether the leader is
//! gone.
//!
//! What travels is a [`Command`]: ids, hashes and names, never a secret (the plaintext token
//! a client sees is made on the node it called and only its hash is in the command). A
//! request is signed by the node that sends it and names when it was sent and a random id;
//! the leader runs only a trusted node's request, only once, and only while it is recent, so
//! a request recorded off the wire and sent again (an old plan change, say) changes nothing.
//! The answer is signed by the leader for that request id. The forwarding node answers its
//! caller once it has applied the events itself (read-your-writes, as before).

use super::rounds::Rounds;
use super::Cluster;
use crate::command::{Command, WriteError};
use crate::event::Envelope;
use crate::signing::signature_of;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request older (or further in the future) than this is refused: a replay.
const RECENT: Duration = Duration::from_secs(10);
/// What an answer is signed as (never published on: it names what is signed).
const SIGNED_AS: &str = "snaptrack.auth.forwarded";

/// Where node `id` takes forwarded commands (core NATS, outside the stream's subjects).
pub fn subject(id: &str) -> String {
    format!("{}.{id}.commands", crate::bus::PRESENCE_SUBJECT)
}

#[derive(Serialize, Deserialize)]
struct Request {
    /// Random: the leader runs each id once.
    id: uuid::Uuid,
    from: String,
    sent_at_ms: i64,
    /// The clock the command is validated at (the caller's, as in a local round).
    now: DateTime<Utc>,
    cmd: Command,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    /// The request answered.
    id: uuid::Uuid,
    outcome: Outcome,
}

#[derive(Serialize, Deserialize)]
enum Outcome {
    /// The events that landed, as the stream holds them (the envelope JSON).
    Done(Vec<Box<serde_json::value::RawValue>>),
    Failed(WriteError),
    /// This node cannot write now: run it yourself.
    Declined,
}

/// What forwarding a command gave.
pub enum Forwarded {
    /// The leader ran it: its answer.
    Ran(Result<Vec<Envelope>, WriteError>),
    /// No leader took it: run it here.
    NotTaken,
}

/// Sends `cmd` to `leader` and waits for its answer, for at most `catchup_timeout` twice
/// over (the leader's round gives up after one).
pub async fn forward(
    cluster: &Cluster,
    leader: &str,
    cmd: &Command,
    now: DateTime<Utc>,
) -> Forwarded {
    let id = uuid::Uuid::new_v4();
    let request = Request {
        id,
        from: cluster.node_id.clone(),
        sent_at_ms: Utc::now().timestamp_millis(),
        now,
        cmd: cmd.clone(),
    };
    let payload = match serde_json::to_vec(&request) {
        Ok(p) => p,
        Err(_) => return Forwarded::NotTaken,
    };
    let subject = subject(leader);
    let (_, signer, _) = cluster.bus.jetstream();
    let headers = signer.headers(&subject, &payload);
    let timeout = cluster.settings.catchup_timeout * 2;
    let answer = match ask(cluster, subject, headers, payload, id, timeout).await {
        Asked::Answer(a) => a,
        Asked::NoOne => return not_taken(cluster),
        Asked::Silence(why) => {
            // Sent, and no answer: it may have run. The next commands are written here
            // until it is clear whether the leader is gone.
            cluster.suspect_leader(leader);
            return Forwarded::Ran(Err(WriteError::Unavailable(format!(
                "the cluster's writer {leader} did not answer: {why}"
            ))));
        }
    };
    let raws = match answer.outcome {
        Outcome::Declined => return not_taken(cluster),
        Outcome::Failed(e) => return Forwarded::Ran(Err(e)),
        Outcome::Done(raws) => raws,
    };
    let mut envs = Vec::with_capacity(raws.len());
    for raw in raws {
        match Envelope::decode(raw.get().as_bytes(), 0) {
            Ok(env) => envs.push(env),
            Err(e) => {
                return Forwarded::Ran(Err(WriteError::Unavailable(format!(
                    "the cluster's writer answered an event this node cannot read: {e}"
                ))))
            }
        }
    }
    cluster.forwarded.fetch_add(1, Ordering::Relaxed);
    if let Some(last) = envs.last() {
        cluster.appended.fetch_max(last.seq, Ordering::Relaxed);
        if !cluster
            .wait_applied(last.seq, cluster.settings.catchup_timeout)
            .await
        {
            // The stream has it, so it happened; checks here answer 503 until applied.
            tracing::warn!(seq = last.seq, "appended, but not applied here in time");
        }
    }
    Forwarded::Ran(Ok(envs))
}

/// The leader did not take the command: counted, and run here.
fn not_taken(cluster: &Cluster) -> Forwarded {
    cluster.forward_not_taken.fetch_add(1, Ordering::Relaxed);
    Forwarded::NotTaken
}

enum Asked {
    /// The leader's answer, signed for the request.
    Answer(Answer),
    /// NATS says no one listens on the subject.
    NoOne,
    /// No trusted answer in time.
    Silence(String),
}

/// Publishes the request and waits for the answer the leader signed for `id`: anything else
/// on the reply subject (someone else's junk, an answer to another request) is counted and
/// ignored, so it can neither stand for the answer nor cut the wait short.
async fn ask(
    cluster: &Cluster,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
    id: uuid::Uuid,
    timeout: Duration,
) -> Asked {
    let client = cluster.bus.client();
    let inbox = client.new_inbox();
    let mut replies = match client.subscribe(inbox.clone()).await {
        Ok(s) => s,
        Err(e) => return Asked::Silence(e.to_string()),
    };
    if let Err(e) = client
        .publish_with_reply_and_headers(subject, inbox, headers, payload.into())
        .await
    {
        return Asked::Silence(e.to_string());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let reply = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => return Asked::Silence("the connection closed".into()),
            Err(_) => return Asked::Silence("timed out".into()),
        };
        if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Asked::NoOne;
        }
        let trusted = cluster
            .verifier
            .verify(SIGNED_AS, &reply.payload, signature_of(&reply))
            .is_ok();
        match serde_json::from_slice::<Answer>(&reply.payload) {
            Ok(a) if trusted && a.id == id => return Asked::Answer(a),
            _ => {
                tracing::warn!("ignored an answer to a forwarded command: not the leader's");
                cluster.forward_rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Takes the commands other nodes forward to this one, runs each in this node's rounds and
/// answers. Runs until aborted.
pub async fn serve(cluster: Arc<Cluster>, rounds: Arc<Rounds>) {
    let subject = subject(&cluster.node_id);
    let mut sub = loop {
        match cluster.bus.client().subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take forwarded commands; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let seen: Arc<parking_lot::Mutex<Seen>> = Arc::default();
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let (id, run) = match admit(&cluster, &seen, &msg) {
            Admitted::Run(r) => (r.id, Some(r)),
            Admitted::Decline(id, why) => {
                // A trusted node's request this node will not run (stale: the clocks
                // disagree; unreadable: another version): say so, it never ran.
                tracing::warn!(reason = why, "declined a forwarded command");
                (id, None)
            }
            Admitted::Refuse(why) => {
                tracing::warn!(reason = why, "refused a forwarded command");
                cluster.forward_rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (cluster, rounds) = (cluster.clone(), rounds.clone());
        tokio::spawn(async move {
            let outcome = match run {
                None => Outcome::Declined,
                Some(_) if cluster.is_halted() || !cluster.is_fresh() => Outcome::Declined,
                Some(request) => match rounds
                    .execute_here(request.cmd, request.now, request.from)
                    .await
                {
                    Ok(envs) => done(&envs),
                    Err(e) => Outcome::Failed(e),
                },
            };
            let answer = Answer { id, outcome };
            let Ok(payload) = serde_json::to_vec(&answer) else {
                return;
            };
            let (_, signer, _) = cluster.bus.jetstream();
            let headers = signer.headers(SIGNED_AS, &payload);
            if let Err(e) = cluster
                .bus
                .client()
                .publish_with_headers(reply, headers, payload.into())
                .await
            {
                tracing::warn!(error = %e, "cannot answer a forwarded command");
            }
        });
    }
}

/// The answer for events that landed: their envelope JSON.
fn done(envs: &[Envelope]) -> Outcome {
    let mut raws = Vec::with_capacity(envs.len());
    for env in envs {
        let raw = String::from_utf8(env.to_json())
            .ok()
            .and_then(|json| serde_json::value::RawValue::from_string(json).ok());
        match raw {
            Some(r) => raws.push(r),
            // Cannot happen (the envelope is JSON this node wrote); never answer short.
            None => {
                return Outcome::Failed(WriteError::Storage(
                    "an appended event could not be encoded for the answer".into(),
                ))
            }
        }
    }
    Outcome::Done(raws)
}

/// Request ids run lately, in the order they came: a replay within [`RECENT`] is refused
/// by id, one after it by its age, one sent before this process started by that.
#[derive(Default)]
struct Seen {
    ids: std::collections::HashSet<uuid::Uuid>,
    order: std::collections::VecDeque<(Instant, uuid::Uuid)>,
}

impl Seen {
    /// Remembers `id`; false if it was seen within the window.
    fn first_time(&mut self, id: uuid::Uuid, now: Instant) -> bool {
        while let Some((at, old)) = self.order.front().copied() {
            if now.duration_since(at) <= RECENT * 2 {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }
}

enum Admitted {
    Run(Request),
    /// A trusted node's request not to run: answered "declined" (it never ran).
    Decline(uuid::Uuid, &'static str),
    /// Not a trusted node's, or a replay: no answer.
    Refuse(&'static str),
}

/// Whether a forwarded request may run: signed by a trusted node for this subject,
/// readable, recent, sent since this process started, and new.
fn admit(
    cluster: &Cluster,
    seen: &parking_lot::Mutex<Seen>,
    msg: &async_nats::Message,
) -> Admitted {
    if cluster
        .verifier
        .verify(msg.subject.as_str(), &msg.payload, signature_of(msg))
        .is_err()
    {
        return Admitted::Refuse("not signed by a trusted node");
    }
    let request: Request = match serde_json::from_slice(&msg.payload) {
        Ok(r) => r,
        Err(_) => {
            let id = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                .ok()
                .and_then(|v| v["id"].as_str().and_then(|s| s.parse().ok()));
            return match id {
                Some(id) => Admitted::Decline(id, "unreadable here (another version?)"),
                None => Admitted::Refuse("unreadable"),
            };
        }
    };
    if request.sent_at_ms < cluster.started_at_ms() {
        return Admitted::Refuse("sent before this process started: a replay");
    }
    let age = Utc::now().timestamp_millis().abs_diff(request.sent_at_ms);
    if age > RECENT.as_millis() as u64 {
        return Admitted::Decline(request.id, "not recent (clocks apart?)");
    }
    if !seen.lock().first_time(request.id, Instant::now()) {
        return Admitted::Refuse("sent before: a replay");
    }
    Admitted::Run(request)
}
