//! Usage history on the shared stream has a retention of its own: usage messages older than
//! `usage_retention_days` leave the stream, security events stay for ever, and a node that
//! reads the stream from the start passes over the hole.

use crate::helpers::{metric, spawn_app_with, Opts};
use crate::nats::{spawn_node, NatsServer, CLUSTER_CONFIG};
use crate::trust::{publish_following, wait_for_seq};
use async_nats::jetstream;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Old usage published on the stream: more than one record of the local log holds, so
/// that most of it lands in merged records compaction may rewrite.
const OLD: u64 = 1100;

#[tokio::test]
async fn usage_older_than_the_retention_leaves_the_stream_and_security_events_stay() {
    let nats = NatsServer::start();
    let config =
        format!("{CLUSTER_CONFIG}[history]\nusage_retention_days = 1\nsnapshots_kept = 1\n");
    let mut a = spawn_node(&nats, "a", &config).await;
    let user = a.create_user("ann@example.com", "pro").await;
    let (first, first_id) = a.issue_token(user).await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    let s = stream.get_info().await.unwrap().state.last_sequence;
    let node_id =
        serde_json::from_slice::<Value>(&stream.get_raw_message(s).await.unwrap().payload).unwrap()
            ["node_id"]
            .clone();

    // 100 days of usage records, as node a wrote them back then (signed with its key).
    let signer = snaptrack_auth::signing::Signer::load(&nats.keys.path("a")).unwrap();
    let old = chrono::Utc::now() - chrono::Duration::days(100);
    for i in 1..=OLD {
        let at = old + chrono::Duration::minutes(i as i64);
        let payload = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "seq": s + i,
            "occurred_at": at.to_rfc3339(),
            "node_id": node_id,
            "type": "usage_recorded",
            "version": 2,
            "data": {
                "user_id": user,
                "window_start": at.timestamp() - 60,
                "window_secs": 60,
                "requests": 1,
                "tokens": []
            }
        });
        let payload = serde_json::to_vec(&payload).unwrap();
        let subject = "snaptrack.auth.v1.usage.recorded";
        publish_following(&js, &signer, subject, payload, s + i, None).await;
    }
    // Security events after it: one revoke, one issue.
    assert_eq!(a.revoke_admin(&first_id).await.status(), StatusCode::OK);
    let (second, _) = a.issue_token(user).await;
    // Young usage after the old: a's claims for these checks must stay.
    for _ in 0..3 {
        assert_eq!(a.get_test(&second).await.status(), StatusCode::OK);
    }
    let last = stream.get_info().await.unwrap().state.last_sequence;
    wait_for_seq(&a, last).await;
    let before = subjects(&stream, last).await;
    assert_eq!(before.len() as u64, last);

    // The clean stop snapshots at `last`; the start compacts the log's old usage, and the
    // node purges the stream below where that got to.
    a.restart().await;
    a.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&a, "snaptrack_stream_usage_purged_total").await == 0.0 {
        assert!(Instant::now() < deadline, "no usage purged from the stream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let purged = metric(&a, "snaptrack_stream_usage_purged_total").await as u64;
    let after = subjects(&stream, last).await;
    let gone: Vec<u64> = before
        .keys()
        .filter(|seq| !after.contains_key(seq))
        .copied()
        .collect();
    assert_eq!(gone.len() as u64, purged);
    assert!(
        purged >= OLD / 2,
        "only {purged} of {OLD} old records purged"
    );
    assert!(
        gone.iter().all(|seq| (s + 1..=s + OLD).contains(seq)),
        "only the old usage goes: {gone:?}"
    );
    assert_eq!(gone.first(), Some(&(s + 1)), "from the oldest on");
    assert!(
        before
            .range(s + OLD + 1..)
            .any(|(_, subject)| subject == "snaptrack.auth.v1.usage.claimed"),
        "young claims on the stream"
    );
    for (seq, subject) in &before {
        if !subject.starts_with("snaptrack.auth.v1.usage.") {
            assert_eq!(
                after.get(seq),
                Some(subject),
                "security event at {seq} kept"
            );
        }
    }
    assert_eq!(first_check(&a, &first, &second).await, (401, 200));

    // A fresh node with no shared snapshot to start from reads the stream from 1 and passes
    // over the hole.
    let bucket = js
        .get_object_store("SNAPTRACK_AUTH_SNAPSHOTS")
        .await
        .unwrap();
    bucket.delete("latest").await.unwrap();
    let b = spawn_node(&nats, "b", CLUSTER_CONFIG).await;
    wait_for_seq(&b, last).await;
    assert_eq!(first_check(&b, &first, &second).await, (401, 200));
    assert_eq!(metric(&b, "snaptrack_stream_rejected_total").await, 0.0);
    assert!(
        !b.output()
            .iter()
            .any(|l| l.contains("seeded from the shared snapshot")),
        "b read the stream itself"
    );

    // A message deleted above the purge point (by anyone with the JetStream API's rights)
    // is not passed over: a node reading across it stalls and answers 503, as before.
    let (third, _) = a.issue_token(user).await;
    let third_at = stream.get_info().await.unwrap().state.last_sequence;
    let m = stream.get_raw_message(third_at).await.unwrap();
    assert_eq!(m.subject.as_str(), "snaptrack.auth.v1.token.issued");
    let (fourth, _) = a.issue_token(user).await;
    assert!(stream.delete_message(third_at).await.unwrap());
    let bucket = js
        .get_object_store("SNAPTRACK_AUTH_SNAPSHOTS")
        .await
        .unwrap();
    let _ = bucket.delete("latest").await;
    let c = spawn_app_with(Opts {
        config: Some(CLUSTER_CONFIG.into()),
        env: nats.node_env("c"),
        ..Default::default()
    })
    .await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for t in [&first, &second, &third, &fourth] {
            let status = c.get_test(t).await.status();
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "c serves across a deleted event"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The subject at each position of the stream up to `last` that it still holds.
async fn subjects(stream: &jetstream::stream::Stream, last: u64) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.insert(seq, m.subject.to_string());
        }
    }
    out
}

/// What `node` answers for the revoked token and the one issued after the old usage.
async fn first_check(node: &crate::helpers::TestApp, revoked: &str, kept: &str) -> (u16, u16) {
    (
        node.get_test(revoked).await.status().as_u16(),
        node.get_test(kept).await.status().as_u16(),
    )
}
