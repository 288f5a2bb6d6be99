use crate::config::NatsAuth;
use crate::event::Envelope;
use crate::signing::{Signer, FOLLOWS, HEADER as SIGNATURE};
use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use std::sync::Arc;
use std::time::Duration;

/// The stream every node writes to and mirrors.
pub const STREAM: &str = "SNAPTRACK_AUTH";
/// The subjects the stream captures: one per event type.
pub const SUBJECTS: &str = "snaptrack.auth.v1.>";
/// The usage subjects (`usage_claimed`, `usage_recorded`): history with a retention of its
/// own, purged from the stream once older than `usage_retention_days` (see
/// `cluster::retention`). Every other subject is security history, kept for ever.
pub const USAGE_SUBJECTS: &str = "snaptrack.auth.v1.usage.>";
/// Where nodes announce themselves and their applied sequence (core NATS, not in the stream).
pub const PRESENCE_SUBJECT: &str = "snaptrack.auth.nodes";

/// The subject of an event type: `token_revoked` → `snaptrack.auth.v1.token.revoked`.
pub fn subject(kind: &str) -> String {
    format!("snaptrack.auth.v1.{}", kind.replace('_', "."))
}

/// Why a publish did not land.
#[derive(Debug, thiserror::Error)]
pub enum PublishFailure {
    /// Another node appended first: the stream's last sequence is not the one this node
    /// validated the command against. Catch up (to `last`, when the stream said) and try
    /// again.
    #[error("another node appended first")]
    Conflict { last: Option<u64> },
    /// NATS or the stream did not answer in time, or refused for another reason.
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

/// A connection to NATS and the JetStream stream `SNAPTRACK_AUTH`.
///
/// Publishing is optimistic concurrency: each event is published with
/// `Nats-Expected-Last-Sequence` set to the sequence before its own, so the stream accepts
/// it only right there, and the envelope's `seq` is exactly its stream sequence. `Nats-Msg-Id` is the event id, so a retried publish is
/// stored once. Every message carries this node's signature (`Snaptrack-Signature`), which
/// the other nodes check before applying it.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    js: jetstream::Context,
    replicas: usize,
    signer: Arc<Signer>,
    /// What this node published lately, by the sequence it was published for: the
    /// replicator recognises its own events byte for byte (and the event each had to
    /// follow) and skips checking their signatures. A std mutex: held for a push or a pop,
    /// never across an `.await`.
    sent: Arc<parking_lot::Mutex<std::collections::VecDeque<Sent>>>,
}

/// A message this node published: its position, payload, and the event it follows.
struct Sent {
    seq: u64,
    payload: bytes::Bytes,
    follows: Option<String>,
}

/// Publishes remembered for [`JetStreamBus::published_here`]; older ones are checked like
/// anyone's.
const SENT_KEPT: usize = 4096;

impl JetStreamBus {
    /// Connects to `url` (or a comma-separated list of the servers of a NATS cluster), with
    /// the credentials and TLS of `auth`. Returns at once: the client connects (and later
    /// reconnects, to any server of the cluster) in the background, and every operation
    /// fails with "unavailable" until it has.
    pub async fn connect(
        url: &str,
        node_id: &str,
        replicas: usize,
        auth: &NatsAuth,
        signer: Arc<Signer>,
    ) -> Result<Self, String> {
        let client = super::connect::connect(url, node_id, auth).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(client.clone());
        Ok(JetStreamBus {
            client,
            js,
            replicas,
            signer,
            sent: Arc::default(),
        })
    }

    /// Whether the stream's message at `seq` is, byte for byte and with the same
    /// [`FOLLOWS`], what this node published for that position. Forgets everything
    /// published for `seq` and before.
    pub fn published_here(&self, seq: u64, payload: &[u8], follows: Option<&str>) -> bool {
        let mut sent = self.sent.lock();
        let mut mine = false;
        while let Some(s) = sent.front() {
            if s.seq > seq {
                break;
            }
            mine |= s.seq == seq && s.payload[..] == *payload && s.follows.as_deref() == follows;
            sent.pop_front();
        }
        mine
    }

    /// The JetStream context (shared snapshots), the key this node signs with, and the
    /// stream's replica count.
    pub fn jetstream(&self) -> (&jetstream::Context, &Signer, usize) {
        (&self.js, &self.signer, self.replicas)
    }

    /// The core NATS client (presence).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Publishes `payload` on core NATS `subject`, signed (presence).
    pub async fn publish_signed(
        &self,
        subject: &'static str,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let headers = self.signer.headers(subject, &payload);
        self.client
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| e.to_string())
    }

    /// Creates the stream unless it exists.
    pub async fn ensure_stream(&self) -> Result<(), String> {
        self.js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![SUBJECTS.into()],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot open stream {STREAM}: {e}"))
    }

    /// Publishes `envs` (consecutive sequence numbers, the first expecting the stream to end
    /// at the one before it) on their subjects, pipelined: all are sent, then the acks are
    /// read. Returns how many landed in a row from the first, and why the next did not.
    ///
    /// Each message expects the stream's last sequence to be the one before its own, and
    /// each after the first names its predecessor in [`FOLLOWS`] (signed with it). When one
    /// is refused because another node's event took its place, a later one may still fit
    /// after that event: it lands, but it does not follow its predecessor, so every node
    /// passes over it (see `actors::replicator`), and the conflict's `last` counts it, so
    /// the writer catches up past it. The stream's own guard, `Nats-Expected-Last-Msg-Id`,
    /// is not used: on a clustered (R3) stream nats-server checks it again when it applies
    /// a pipelined message, and a mismatch there is a critical write error that stops the
    /// stream for every node (nats-server 2.15, seen by `tests/api/claims.rs`).
    ///
    /// With `first_alone`, the first message is sent alone and acknowledged before the rest
    /// go: most conflicts are over it, and a burst whose first message is refused then sends
    /// nothing that could land after another's event. Worth a round trip only while other
    /// nodes write too.
    pub async fn publish(
        &self,
        envs: &[Envelope],
        first_alone: bool,
    ) -> (usize, Option<PublishFailure>) {
        let unavailable = |e: &dyn std::fmt::Display| PublishFailure::Unavailable(e.to_string());
        let mut acks = Vec::with_capacity(envs.len());
        let mut failure = None;
        let mut landed = 0;
        for (i, env) in envs.iter().enumerate() {
            let subject = subject(env.event.kind());
            let payload = env.to_json();
            let follows = (i > 0).then(|| envs[i - 1].event_id.to_string());
            let signature = self
                .signer
                .sign_after(&subject, &payload, follows.as_deref());
            let payload = bytes::Bytes::from(payload);
            let mut publish = jetstream::message::PublishMessage::build()
                .header(SIGNATURE, signature.as_str())
                .payload(payload.clone())
                .message_id(env.event_id.to_string())
                .expected_last_sequence(env.seq - 1);
            if let Some(f) = &follows {
                publish = publish.header(FOLLOWS, f.as_str());
            }
            {
                let mut sent = self.sent.lock();
                if sent.len() == SENT_KEPT {
                    sent.pop_front();
                }
                sent.push_back(Sent {
                    seq: env.seq,
                    payload,
                    follows,
                });
            }
            let ack = match self.js.send_publish(subject, publish).await {
                Ok(ack) => ack,
                Err(e) => {
                    failure = Some(unavailable(&e));
                    break;
                }
            };
            if i == 0 && first_alone && envs.len() > 1 {
                if let Err(f) = settled(ack.await, env) {
                    return (0, Some(f));
                }
                landed = 1;
            } else {
                acks.push((ack, env));
            }
        }
        // All acks are awaited at once: each waits up to the context's timeout from when it
        // is first polled, so reading them one after another would wait that long for each
        // lost one (a burst sent to a stream leader that died is a second per message).
        let results = futures_util::future::join_all(
            acks.into_iter()
                .map(|(ack, env)| async move { (ack.await, env) }),
        )
        .await;
        // The highest sequence a message of this burst took after the first refused one.
        let mut void_through = None;
        for (result, env) in results {
            if failure.is_some() {
                if let Ok(ack) = result {
                    void_through = Some(ack.sequence);
                }
                continue;
            }
            match settled(result, env) {
                Ok(()) => landed += 1,
                Err(f) => failure = Some(f),
            }
        }
        if let (Some(PublishFailure::Conflict { last }), Some(v)) = (&mut failure, void_through) {
            *last = Some(last.map_or(v, |l| l.max(v)));
        }
        (landed, failure)
    }

    /// The stream, with its info as of now.
    async fn stream(&self) -> Result<stream::Stream, String> {
        self.js
            .get_stream(STREAM)
            .await
            .map_err(|e| format!("stream {STREAM} unavailable: {e}"))
    }

    /// The stream's message at `seq`, or `None` if the stream no longer holds it.
    pub async fn message_at(
        &self,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, String> {
        let stream = self.stream().await?;
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => {
                Ok(None)
            }
            Err(e) => Err(format!("cannot read seq {seq} of {STREAM}: {e}")),
        }
    }

    /// Removes the usage messages (`USAGE_SUBJECTS`) before sequence `below` from the stream;
    /// the other messages stay where they are. Returns how many went.
    pub async fn purge_usage(&self, below: u64) -> Result<u64, String> {
        let stream = self.stream().await?;
        let purged = stream
            .purge()
            .filter(USAGE_SUBJECTS)
            .sequence(below)
            .await
            .map_err(|e| format!("cannot purge usage from {STREAM}: {e}"))?;
        Ok(purged.purged)
    }

    /// The stream's last sequence.
    pub async fn last_seq(&self) -> Result<u64, String> {
        Ok(self.identity().await?.0)
    }

    /// The stream's last sequence and its creation time: a stream deleted and created again
    /// has another.
    pub async fn identity(&self) -> Result<(u64, String), String> {
        let stream = self.stream().await?;
        let info = stream.cached_info();
        Ok((info.state.last_sequence, info.created.to_string()))
    }

    /// An ordered consumer delivering every event from `start` (inclusive), in order.
    pub async fn consume_from(&self, start: u64) -> Result<consumer::pull::Ordered, String> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create a consumer on {STREAM}: {e}"))?;
        consumer
            .messages()
            .await
            .map_err(|e| format!("cannot consume {STREAM}: {e}"))
    }
}

/// What an ack says of `env`: stored at its own sequence, or why not.
fn settled(
    result: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    env: &Envelope,
) -> Result<(), PublishFailure> {
    match result {
        Ok(ack) if ack.sequence == env.seq => Ok(()),
        // Only a duplicate of an earlier publish of the same event id can land elsewhere.
        Ok(ack) => Err(PublishFailure::Unavailable(format!(
            "stream stored event {} at seq {}, expected {}",
            env.event_id, ack.sequence, env.seq
        ))),
        Err(e) => Err(match e.kind() {
            PublishErrorKind::WrongLastSequence => PublishFailure::Conflict {
                last: last_sequence_in(&e.to_string()),
            },
            _ => PublishFailure::Unavailable(e.to_string()),
        }),
    }
}

/// The stream's actual last sequence in its "wrong last sequence: N" error, if it says.
fn last_sequence_in(error: &str) -> Option<u64> {
    const MARK: &str = "wrong last sequence: ";
    let at = error.rfind(MARK)? + MARK.len();
    let digits: String = error[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_last_sequence_from_the_conflict_error() {
        let e = "wrong last sequence: wrong last sequence: 42 (code 400, error code 10071)";
        assert_eq!(super::last_sequence_in(e), Some(42));
        assert_eq!(super::last_sequence_in("wrong last sequence"), None);
    }

    #[test]
    fn subjects_follow_the_contract() {
        assert_eq!(
            super::subject("token_revoked"),
            "snaptrack.auth.v1.token.revoked"
        );
        assert_eq!(
            super::subject("usage_recorded"),
            "snaptrack.auth.v1.usage.recorded"
        );
    }
}
