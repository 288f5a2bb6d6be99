//! One writer: commands on any node are written to the stream by the leader (the live node
//! with the smallest id), and the forwarding subject is a trust boundary like the stream:
//! a request no trusted node signed, or one recorded and sent again, changes nothing.

use crate::helpers::{body, metric};
use crate::nats::{spawn_cluster, spawn_cluster_unrecorded, CLUSTER_CONFIG};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// The plan `node` shows for `user`.
async fn tier(node: &crate::helpers::TestApp, user: u64) -> String {
    let v = body(node.get_user(user).await).await;
    v["user"]["subscription_tier"].as_str().unwrap().to_owned()
}

/// Sends a forwarded-command request to node a as the attacker; whether anyone answered
/// within a second.
async fn send(client: &async_nats::Client, payload: Vec<u8>, signature: Option<&str>) -> bool {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(s) = signature {
        headers.insert("Snaptrack-Signature", s);
    }
    let request = async_nats::Request::new()
        .payload(payload.into())
        .headers(headers)
        .timeout(Some(Duration::from_secs(1)));
    client
        .send_request("snaptrack.auth.nodes.a.commands", request)
        .await
        .is_ok()
}

#[tokio::test]
async fn commands_on_any_node_are_written_by_the_leader_and_forged_or_replayed_ones_change_nothing()
{
    let mut c = spawn_cluster().await;
    let client = async_nats::connect(c.nats.url()).await.unwrap();
    let mut requests = client
        .subscribe("snaptrack.auth.nodes.a.commands")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    // Commands on b and c: a writes them, they name the node the client called.
    let user = b.create_user("ann@example.com", "pro").await;
    let (token, _) = c.nodes[2].issue_token(user).await;
    let to = |tier: &str| json!({"tier": tier, "status": "active", "expires_at": null});
    let r = b.put_subscription(user, &to("starter")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["user"]["subscription_tier"], "starter");
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let changed: Value =
        serde_json::from_slice(&stream.get_raw_message(last).await.unwrap().payload).unwrap();
    assert_eq!(changed["type"], "subscription_changed");
    assert_eq!(
        changed["node_id"], "b",
        "events name the node the client called"
    );
    // (Before any token check: those make b publish its own rate-limit claims.)
    assert_eq!(metric(b, "snaptrack_published_messages_total").await, 0.0);
    for n in &c.nodes {
        assert_eq!(
            n.get_test(&token).await.status(),
            StatusCode::OK,
            "{}",
            n.url
        );
    }
    assert_eq!(metric(b, "snaptrack_commands_forwarded_total").await, 2.0);
    assert_eq!(
        metric(&c.nodes[2], "snaptrack_commands_forwarded_total").await,
        1.0
    );
    assert_eq!(metric(a, "snaptrack_commands_forwarded_total").await, 0.0);

    // What b sent a for the plan change, as the attacker recorded it off the wire.
    let mut recorded = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), requests.next()).await {
        if String::from_utf8_lossy(&m.payload).contains("ChangeSubscription") {
            recorded = Some(m);
            break;
        }
    }
    let recorded = recorded.expect("b forwarded the plan change to a");
    assert!(
        !String::from_utf8_lossy(&recorded.payload).contains(&token),
        "no token in a forwarded command"
    );
    let signature = recorded
        .headers
        .as_ref()
        .unwrap()
        .get("Snaptrack-Signature")
        .unwrap()
        .as_str()
        .to_owned();
    let r = b.put_subscription(user, &to("business")).await;
    assert_eq!(r.status(), StatusCode::OK);

    // Sent again as it was: refused (seen before); no answer, nothing changes.
    assert!(!send(&client, recorded.payload.to_vec(), Some(&signature)).await);
    // A fresh id and time under the old signature, and unsigned: refused.
    let mut forged: Value = serde_json::from_slice(&recorded.payload).unwrap();
    forged["id"] = uuid::Uuid::new_v4().to_string().into();
    forged["sent_at_ms"] = chrono::Utc::now().timestamp_millis().into();
    forged["cmd"]["ChangeSubscription"]["subscription"]["tier"] = "free".into();
    let forged = serde_json::to_vec(&forged).unwrap();
    assert!(!send(&client, forged.clone(), Some(&signature)).await);
    assert!(!send(&client, forged, None).await);
    assert_eq!(metric(a, "snaptrack_forward_rejected_total").await, 3.0);
    for n in &c.nodes {
        assert_eq!(tier(n, user).await, "business", "{}", n.url);
    }

    // Someone else answers first, with the right request id but no leader's signature: b
    // ignores it, counts it, and takes the leader's answer.
    let mut liar = client
        .subscribe("snaptrack.auth.nodes.a.commands")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let liar_client = client.clone();
    let lying = tokio::spawn(async move {
        while let Some(m) = liar.next().await {
            let id = serde_json::from_slice::<Value>(&m.payload).unwrap()["id"].clone();
            let answer = json!({"id": id, "outcome": {"Failed": {"Rejected": "UserNotFound"}}});
            let reply = m.reply.unwrap();
            liar_client
                .publish(reply, serde_json::to_vec(&answer).unwrap().into())
                .await
                .unwrap();
        }
    });
    let (third, _) = c.nodes[1].issue_token(user).await;
    assert_eq!(c.nodes[2].get_test(&third).await.status(), StatusCode::OK);
    assert_eq!(
        metric(&c.nodes[1], "snaptrack_forward_rejected_total").await,
        1.0
    );
    lying.abort();

    // The leader gone: b writes itself. (NATS would answer "no responders" at once, but
    // the test's recorder listens on every subject: b waits for an answer in vain once, says
    // so, and writes itself from then on; `a_leader_no_one_listens_for_is_passed_over_at_once`
    // runs without the recorder.)
    c.nodes[0].kill().await;
    let r = c.nodes[1]
        .post_token(user, &json!({"name": "after the leader"}))
        .await;
    // (Or b's presence timeout passed first, and it wrote itself at once.)
    assert!(
        [StatusCode::SERVICE_UNAVAILABLE, StatusCode::CREATED].contains(&r.status()),
        "{}",
        r.status()
    );
    let (second, _) = c.nodes[1].issue_token(user).await;
    for n in &c.nodes[1..] {
        assert_eq!(
            n.get_test(&second).await.status(),
            StatusCode::OK,
            "{}",
            n.url
        );
    }
}

#[tokio::test]
async fn a_leader_no_one_listens_for_is_passed_over_at_once() {
    // Presence keeps a for 30 s after its last word, so b still takes a for the leader when
    // it forwards: only NATS's "no responders" can tell it a is gone.
    let config = CLUSTER_CONFIG.replace("max_staleness_ms = 2500", "max_staleness_ms = 30000");
    let mut c = spawn_cluster_unrecorded(&config).await;
    let user = c.nodes[1].create_user("nat@example.com", "pro").await;
    assert_eq!(
        metric(&c.nodes[1], "snaptrack_forward_not_taken_total").await,
        0.0
    );
    let forwarded = metric(&c.nodes[1], "snaptrack_commands_forwarded_total").await;
    assert!(forwarded >= 1.0, "b forwarded its command to a");

    c.nodes[0].kill().await;
    // Synchronise on NATS having dropped a's subscription: a request to a's subject gets
    // "no responders".
    let client = async_nats::connect(c.nats.url()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request = async_nats::Request::new()
            .payload("{}".into())
            .timeout(Some(Duration::from_millis(200)));
        let r = client
            .send_request("snaptrack.auth.nodes.a.commands", request)
            .await;
        match r {
            Err(e) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => break,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a's subscription stayed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // b forwards to a, hears at once that no one listens, and writes itself: no 503.
    let r = c.nodes[1]
        .post_token(user, &json!({"name": "no one listens"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = body(r).await["token"].as_str().unwrap().to_owned();
    assert_eq!(
        metric(&c.nodes[1], "snaptrack_forward_not_taken_total").await,
        1.0
    );
    assert_eq!(
        metric(&c.nodes[1], "snaptrack_commands_forwarded_total").await,
        forwarded,
        "no answer came from a"
    );
    for n in &c.nodes[1..] {
        assert_eq!(
            n.get_test(&token).await.status(),
            StatusCode::OK,
            "{}",
            n.url
        );
    }
}
