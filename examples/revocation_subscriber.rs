//! Prints token revocations as they happen, from any node of a cluster, and checks that a
//! trusted node signed each one.
//!
//! ```text
//! SNAPTRACK_AUTH_TRUSTED_KEYS=UA…,UB…  NATS_USER=snaptrack-subscriber NATS_PASSWORD=… \
//!   cargo run --example revocation_subscriber -- [NATS_URL] [--from-start] [--count N]
//! ```
//!
//! It reads the JetStream stream `SNAPTRACK_AUTH` through an ordered consumer filtered to
//! `snaptrack.auth.v1.token.revoked`: only events the stream stored, each once, in order. With
//! `--from-start` it first prints every revocation in the stream's history; with `--count N`
//! it stops after N messages. (A plain NATS subscription to the subject works too, but also
//! sees publishes that the stream refused because another node appended first; the node
//! then validates again and publishes anew.)
//!
//! With the nodes' public keys in `SNAPTRACK_AUTH_TRUSTED_KEYS` (comma-separated; each node
//! prints its own at start-up, `snaptrack-auth keygen` printed it when the key was made),
//! every message is checked as the nodes check it: the Ed25519 signature in its
//! `Snaptrack-Signature` header, over its subject, a newline and its payload (and, for an
//! event published to follow another, a newline and the event id in its `Snaptrack-Follows`,
//! or in older messages `Nats-Expected-Last-Msg-Id`), by a trusted key, for the stream
//! position it landed at; and one that names an event in `Snaptrack-Follows` counts only if
//! the stream's message right before it is that event and counts itself (read back with
//! direct gets: the rest of a node's burst that another node's event cut short is void).
//! Anything else is reported as `REJECTED` and not believed. Credentials come from the
//! environment, never the command line.

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use snaptrack_auth::signing::{Verifier, FOLLOWS, HEADER, LEGACY_FOLLOWS};

/// A message's check under way: its event id and signer, or why it does not count.
type Checking<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(String, String), String>> + 'a>>;

/// Whether the message at `seq` (subject, payload, headers) is a trusted node's event for
/// that position, following what it names: its event id and signer, or why not.
fn check<'a>(
    stream: &'a jetstream::stream::Stream,
    verifier: &'a Verifier,
    seq: u64,
    subject: String,
    payload: bytes::Bytes,
    headers: Option<async_nats::HeaderMap>,
) -> Checking<'a> {
    Box::pin(async move {
        let header = |name: &str| {
            headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let follows = header(FOLLOWS);
        let predecessor = follows.clone().or_else(|| header(LEGACY_FOLLOWS));
        let key = verifier
            .verify_after(
                &subject,
                &payload,
                header(HEADER).as_deref(),
                predecessor.as_deref(),
            )
            .map_err(|e| e.to_string())?
            .to_owned();
        let env: serde_json::Value =
            serde_json::from_slice(&payload).map_err(|e| format!("not an event ({e})"))?;
        if env["seq"].as_u64() != Some(seq) {
            return Err(format!("signed for another position than {seq}"));
        }
        if let Some(follows) = follows {
            let before = stream
                .get_raw_message(seq - 1)
                .await
                .map_err(|e| format!("cannot read seq {}: {e}", seq - 1))?;
            let (id, _) = check(
                stream,
                verifier,
                seq - 1,
                before.subject.to_string(),
                before.payload,
                Some(before.headers),
            )
            .await
            .map_err(|why| format!("void: the event before it does not count ({why})"))?;
            if id != follows.trim() {
                return Err(format!("void: follows {follows}, not the event before it"));
            }
        }
        let id = env["event_id"].as_str().unwrap_or_default().to_owned();
        Ok((id, key))
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let from_start = args.iter().any(|a| a == "--from-start");
    let count: Option<usize> = args
        .iter()
        .position(|a| a == "--count")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?;
    let url = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--count"))
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let trusted: Vec<String> = std::env::var("SNAPTRACK_AUTH_TRUSTED_KEYS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    let verifier = (!trusted.is_empty())
        .then(|| Verifier::from_keys(&trusted))
        .transpose()?;

    let mut options = async_nats::ConnectOptions::new();
    if let (Ok(user), Ok(password)) = (std::env::var("NATS_USER"), std::env::var("NATS_PASSWORD")) {
        options = options.user_and_password(user, password);
    }
    let client = options.connect(&url).await?;
    let js = jetstream::new(client);
    let stream = js.get_stream("SNAPTRACK_AUTH").await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "snaptrack.auth.v1.token.revoked".into(),
            deliver_policy: if from_start {
                consumer::DeliverPolicy::All
            } else {
                consumer::DeliverPolicy::New
            },
            ..Default::default()
        })
        .await?;
    eprintln!(
        "listening for revocations on {url}{}",
        if verifier.is_some() {
            " (checking signatures)"
        } else {
            " (signatures NOT checked)"
        }
    );
    let mut messages = consumer.messages().await?;
    let mut seen = 0;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        seen += 1;
        let position = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
        // The envelope: {"event_id", "seq", "occurred_at", "node_id", "type", "version", "data"}.
        let env = serde_json::from_slice::<serde_json::Value>(&msg.payload);
        let checked = match &verifier {
            None => Ok("unchecked".to_owned()),
            Some(v) => check(
                &stream,
                v,
                position,
                msg.subject.to_string(),
                msg.payload.clone(),
                msg.headers.clone(),
            )
            .await
            .map(|(_, key)| format!("signed by {key}")),
        };
        match (checked, env) {
            (Ok(by), Ok(env)) => println!(
                "{} seq {} token {} of user {} revoked on node {} ({}); {by}",
                env["occurred_at"].as_str().unwrap_or("?"),
                env["seq"],
                env["data"]["token_id"].as_str().unwrap_or("?"),
                env["data"]["user_id"],
                env["node_id"].as_str().unwrap_or("?"),
                env["data"]["reason"].as_str().unwrap_or("?"),
            ),
            (Err(why), _) => println!("REJECTED stream seq {position}: {why}"),
            (Ok(_), Err(e)) => println!("REJECTED stream seq {position}: not an event ({e})"),
        }
        if count == Some(seen) {
            break;
        }
    }
    Ok(())
}
