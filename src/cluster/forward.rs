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
use crate::signing::HEADER as SIGNATURE;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(SIGNATURE, signer.sign(&subject, &payload).as_str());
    let timeout = cluster.settings.catchup_timeout * 2;
    let sent = cluster
        .bus
        .client()
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(payload.into())
                .headers(headers)
                .timeout(Some(timeout)),
        )
        .await;
    let reply = match sent {
        Ok(r) => r,
        Err(e) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
            return Forwarded::NotTaken
        }
        Err(e) => {
            // Sent, and no answer: it may have run. The next commands are written here
            // until it is clear whether the leader is gone.
            cluster.suspect_leader(leader);
            return Forwarded::Ran(Err(WriteError::Unavailable(format!(
                "the cluster's writer {leader} did not answer: {e}"
            ))));
        }
    };
    let signed = reply.headers.as_ref().and_then(|h| h.get(SIGNATURE));
    let trusted = cluster
        .verifier
        .verify(SIGNED_AS, &reply.payload, signed.map(|v| v.as_str()))
        .is_ok();
    let answer = serde_json::from_slice::<Answer>(&reply.payload)
        .ok()
        .filter(|a| trusted && a.id == id);
    let Some(answer) = answer else {
        tracing::warn!(
            leader,
            "an answer to a forwarded command was not the leader's"
        );
        cluster.forward_rejected.fetch_add(1, Ordering::Relaxed);
        return Forwarded::Ran(Err(WriteError::Unavailable(
            "the cluster's writer gave no trustworthy answer; the command may have happened".into(),
        )));
    };
    let raws = match answer.outcome {
        Outcome::Declined => return Forwarded::NotTaken,
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
        let request = match admit(&cluster, &seen, &msg) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(reason = why, "refused a forwarded command");
                cluster.forward_rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let (cluster, rounds) = (cluster.clone(), rounds.clone());
        tokio::spawn(async move {
            let outcome = if cluster.is_halted() || !cluster.is_fresh() {
                Outcome::Declined
            } else {
                match rounds
                    .execute_here(request.cmd, request.now, request.from)
                    .await
                {
                    Ok(envs) => Outcome::Done(
                        envs.iter()
                            .filter_map(|e| {
                                let json = String::from_utf8(e.to_json()).ok()?;
                                serde_json::value::RawValue::from_string(json).ok()
                            })
                            .collect(),
                    ),
                    Err(e) => Outcome::Failed(e),
                }
            };
            let answer = Answer {
                id: request.id,
                outcome,
            };
            let Ok(payload) = serde_json::to_vec(&answer) else {
                return;
            };
            let (_, signer, _) = cluster.bus.jetstream();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(SIGNATURE, signer.sign(SIGNED_AS, &payload).as_str());
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

/// Request ids run lately, with when they arrived: a replay within [`RECENT`] is refused
/// by id, one after it by its age.
#[derive(Default)]
struct Seen {
    ids: HashMap<uuid::Uuid, Instant>,
}

/// A forwarded request this node may run: signed by a trusted node for this subject,
/// readable, recent, and new.
fn admit(
    cluster: &Cluster,
    seen: &parking_lot::Mutex<Seen>,
    msg: &async_nats::Message,
) -> Result<Request, &'static str> {
    let signed = msg.headers.as_ref().and_then(|h| h.get(SIGNATURE));
    cluster
        .verifier
        .verify(
            msg.subject.as_str(),
            &msg.payload,
            signed.map(|v| v.as_str()),
        )
        .map_err(|_| "not signed by a trusted node")?;
    let request: Request = serde_json::from_slice(&msg.payload).map_err(|_| "unreadable")?;
    let age = Utc::now().timestamp_millis() - request.sent_at_ms;
    if age.unsigned_abs() > RECENT.as_millis() as u64 {
        return Err("not recent: a replay");
    }
    let mut seen = seen.lock();
    let now = Instant::now();
    seen.ids
        .retain(|_, at| now.duration_since(*at) <= RECENT * 2);
    if seen.ids.insert(request.id, now).is_some() {
        return Err("sent before: a replay");
    }
    Ok(request)
}
