//! Prints token revocations as they happen, from any node of a cluster.
//!
//! ```text
//! cargo run --example revocation_subscriber -- [NATS_URL] [--from-start]
//! ```
//!
//! It reads the JetStream stream `SNAPTRACK_AUTH` through an ordered consumer filtered to
//! `snaptrack.auth.v1.token.revoked`: only events the stream stored, each once, in order. With
//! `--from-start` it first prints every revocation in the stream's history. (A plain NATS
//! subscription to the subject works too, but also sees publishes that the stream refused
//! because another node appended first; the node then validates again and publishes anew.)

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let from_start = args.iter().any(|a| a == "--from-start");
    let url = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());

    let client = async_nats::connect(&url).await?;
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
    eprintln!("listening for revocations on {url}");
    let mut messages = consumer.messages().await?;
    while let Some(msg) = messages.next().await {
        let msg = msg?;
        // The envelope: {"event_id", "seq", "occurred_at", "node_id", "type", "version", "data"}.
        let env: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        println!(
            "{} seq {} token {} of user {} revoked on node {} ({})",
            env["occurred_at"].as_str().unwrap_or("?"),
            env["seq"],
            env["data"]["token_id"].as_str().unwrap_or("?"),
            env["data"]["user_id"],
            env["node_id"].as_str().unwrap_or("?"),
            env["data"]["reason"].as_str().unwrap_or("?"),
        );
    }
    Ok(())
}
