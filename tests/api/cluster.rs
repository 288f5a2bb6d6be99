//! Cluster mode: a `nats-server` of the test's own and three real nodes (`a`, `b`, `c`).

use crate::helpers::{applied_seq, body, churn, metric, until_used_up, Acked, PASSWORD};
use crate::nats::{spawn_cluster, spawn_cluster_with, spawn_node, CLUSTER_CONFIG};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A user's tokens as a node lists them: id and revocation time (usage counts, which
/// arrive with the next flush, left out).
async fn token_list(app: &crate::helpers::TestApp, user: u64) -> Vec<(Value, Value)> {
    let v = body(app.get_user(user).await).await;
    v["tokens"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].clone(), t["revoked_at"].clone()))
        .collect()
}

#[tokio::test]
async fn a_token_issued_on_one_node_works_on_every_node_at_once() {
    let c = spawn_cluster().await;
    let [a, b, cc] = &c.nodes[..] else {
        unreachable!()
    };
    let user = a.create_user("ann@example.com", "pro").await;
    for _ in 0..5 {
        let (token, _) = a.issue_token(user).await;
        // No sleep: the very next request, on another node.
        for node in [b, cc] {
            let r = node.get_test(&token).await;
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(body(r).await["user"]["id"], user);
        }
    }
    // Users registered on one node are known everywhere, and ids are never handed out twice.
    let second = b.create_user("bob@example.com", "starter").await;
    assert_eq!(second, user + 1);
    let dup = cc
        .post_user(
            &json!({"email": "ann@example.com", "name": "A", "password": PASSWORD, "tier": "pro"}),
        )
        .await;
    assert_eq!(dup.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_revoke_returns_once_every_node_rejects_the_token() {
    let c = spawn_cluster().await;
    let [a, b, cc] = &c.nodes[..] else {
        unreachable!()
    };
    let user = a.create_user("ann@example.com", "pro").await;
    for _ in 0..5 {
        let (token, id) = a.issue_token(user).await;
        for node in [a, b] {
            assert_eq!(node.get_test(&token).await.status(), StatusCode::OK);
        }
        let r = cc.revoke_admin(&id).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v = body(r).await;
        assert_eq!(v["revoked"]["propagated_to"], json!(["a", "b", "c"]), "{v}");
        assert_eq!(v["revoked"]["pending"], json!([]));
        for node in [a, b, cc] {
            assert_eq!(
                node.get_test(&token).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
    }
}

#[tokio::test]
async fn a_stopped_node_is_pending_until_it_leaves_the_live_set() {
    let mut c = spawn_cluster().await;
    let user = c.nodes[0].create_user("ann@example.com", "pro").await;
    let (_, id) = c.nodes[0].issue_token(user).await;
    // A graceful stop says goodbye: the next revoke does not wait for it.
    c.nodes[2].stop().await;
    let v = body(c.nodes[0].revoke_admin(&id).await).await;
    assert_eq!(v["revoked"]["propagated_to"], json!(["a", "b"]), "{v}");
    assert_eq!(v["revoked"]["pending"], json!([]));
    // A killed node says nothing: it is pending until it has been silent for a while.
    let (_, id) = c.nodes[0].issue_token(user).await;
    c.nodes[1].kill().await;
    let v = body(c.nodes[0].revoke_admin(&id).await).await;
    let pending = v["revoked"]["pending"].as_array().unwrap().clone();
    assert!(
        pending.is_empty() || pending == [json!("b")],
        "only the killed node may be pending: {v}"
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_catch_up_and_garbage_causes_none() {
    let c = spawn_cluster().await;
    let [a, b, _] = &c.nodes[..] else {
        unreachable!()
    };
    let user = a.create_user("ann@example.com", "business").await;
    let (token, id) = a.issue_token(user).await;
    // A well-formed token nobody issued misses on every request.
    let unknown = snaptrack_auth::domain::ApiToken::generate();
    let unknown = unknown.expose();
    let misses = metric(b, "snaptrack_catchup_misses_total").await;
    let queries = metric(b, "snaptrack_catchup_queries_total").await;
    // Open the 50 connections first, so that the misses arrive together.
    futures_util::future::join_all((0..50).map(|_| b.get("/healthz"))).await;
    let started = Instant::now();
    let all = futures_util::future::join_all((0..50).map(|_| b.get_test(unknown))).await;
    let elapsed_ms = started.elapsed().as_millis() as f64;
    assert!(all.iter().all(|r| r.status() == StatusCode::UNAUTHORIZED));
    let new_misses = metric(b, "snaptrack_catchup_misses_total").await - misses;
    let new_queries = metric(b, "snaptrack_catchup_queries_total").await - queries;
    assert_eq!(new_misses, 50.0);
    // A query serves every miss that arrived while the one before it was in flight; the
    // staleness probes (every 100 ms) add theirs.
    let probes = elapsed_ms / 100.0 + 2.0;
    assert!(
        new_queries <= 25.0 + probes,
        "50 misses in {elapsed_ms} ms sent {new_queries} queries"
    );

    // Garbage (bad checksum or shape) and known tokens (revoked) never cause a catch-up.
    assert_eq!(a.revoke_admin(&id).await.status(), StatusCode::OK);
    let misses = metric(b, "snaptrack_catchup_misses_total").await;
    let mut garbage = token.clone();
    garbage.pop();
    garbage.push(if token.ends_with('A') { 'B' } else { 'A' });
    // From another address, so that the failures above do not throttle these.
    let other = crate::helpers::client_from("127.0.0.2");
    for t in [garbage.as_str(), "snpt_short", "nonsense", token.as_str()] {
        for _ in 0..10 {
            let r = other
                .get(format!("{}/test", b.url))
                .bearer_auth(t)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{t}");
        }
    }
    assert_eq!(metric(b, "snaptrack_catchup_misses_total").await, misses);
}

#[tokio::test]
async fn a_killed_node_catches_up_when_restarted() {
    let mut c = spawn_cluster().await;
    let user = c.nodes[0].create_user("ann@example.com", "pro").await;
    let (kept, _) = c.nodes[0].issue_token(user).await;
    let (revoked, revoked_id) = c.nodes[0].issue_token(user).await;
    assert_eq!(c.nodes[1].get_test(&kept).await.status(), StatusCode::OK);

    c.nodes[1].kill().await;
    // Meanwhile, on the other nodes:
    assert_eq!(
        c.nodes[2].revoke_admin(&revoked_id).await.status(),
        StatusCode::OK
    );
    let (late, _) = c.nodes[0].issue_token(user).await;

    c.nodes[1].start(&[]).await;
    c.nodes[1].wait_ready().await;
    let b = &c.nodes[1];
    assert_eq!(b.get_test(&kept).await.status(), StatusCode::OK);
    assert_eq!(b.get_test(&late).await.status(), StatusCode::OK);
    assert_eq!(
        b.get_test(&revoked).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert!(applied_seq(b).await >= applied_seq(&c.nodes[0]).await - 1);
}

#[tokio::test]
async fn a_node_with_an_empty_data_directory_rebuilds_from_the_stream() {
    let mut c = spawn_cluster().await;
    let user = c.nodes[0].create_user("ann@example.com", "pro").await;
    let (token, _) = c.nodes[0].issue_token(user).await;
    let (_, revoked) = c.nodes[1].issue_token(user).await;
    assert_eq!(
        c.nodes[1].revoke_admin(&revoked).await.status(),
        StatusCode::OK
    );

    c.nodes[2].stop().await;
    std::fs::remove_dir_all(c.nodes[2].data_dir()).unwrap();
    c.nodes[2].start(&[]).await;
    c.nodes[2].wait_ready().await;
    let node = &c.nodes[2];
    assert_eq!(node.get_test(&token).await.status(), StatusCode::OK);
    let here = token_list(node, user).await;
    assert_eq!(here, token_list(&c.nodes[0], user).await);
    assert_eq!(here.len(), 2);
}

#[tokio::test]
async fn nats_killed_mid_stream_loses_no_acknowledged_event_and_nodes_recover() {
    // The checks at the end make a 401 per revoked token: lift the throttle; and a 200 per
    // live token on each node: a limit that is not what this test is about.
    let mut c = spawn_cluster_with(&format!(
        "{CLUSTER_CONFIG}[throttle]\nauth_failures = 1000000\n[tiers.pro]\nrequests = 1000\n"
    ))
    .await;
    let user = c.nodes[0].create_user("ann@example.com", "pro").await;
    let (old, _) = c.nodes[0].issue_token(user).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = Arc::new(crate::helpers::Progress::default());
    // Two writers issue and revoke on two nodes.
    let writers: Vec<_> = c.nodes[..2]
        .iter()
        .map(|n| {
            tokio::spawn(churn(
                n.url.clone(),
                n.admin_token.clone(),
                user,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    // Let some land, then kill the broker.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&c.nodes[2], "snaptrack_applied_seq").await < 12.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.nats.kill();
    let killed = Instant::now();
    // Cut off, a node stops answering token checks within the staleness bound (2.5 s).
    loop {
        let s = c.nodes[2].get_test(&old).await.status();
        if s == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        // Still answering: admitted, or refused for want of a claim it cannot publish now.
        assert!(
            matches!(s, StatusCode::OK | StatusCode::TOO_MANY_REQUESTS),
            "{s}"
        );
        assert!(killed.elapsed() < Duration::from_secs(6), "still answering");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands fail at once with a clear 503 and change nothing.
    let before = token_list(&c.nodes[0], user).await;
    let r = c.nodes[0]
        .post_token(user, &json!({"name": "while down"}))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body(r).await["error"],
        "The event stream is unavailable; try again"
    );
    assert_eq!(token_list(&c.nodes[0], user).await, before);
    // The writers meet the outage too before it ends (a request sent just before the
    // restart may wait through it and succeed).
    while progress.refused.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no writer refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.nats.run();
    for n in &c.nodes {
        n.wait_ready().await;
    }
    // And the writers get through again.
    let before = metric(&c.nodes[2], "snaptrack_applied_seq").await;
    while metric(&c.nodes[2], "snaptrack_applied_seq").await < before + 10.0 {
        assert!(Instant::now() < deadline + Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Acked::default();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    assert!(
        all.refused > 0,
        "no command was refused while NATS was down"
    );
    assert!(!all.revoked.is_empty(), "no revoke was acknowledged");
    // Every acknowledged issue works and every acknowledged revoke rejects, on every node.
    for n in &c.nodes {
        for t in &all.live {
            assert_eq!(n.get_test(t).await.status(), StatusCode::OK, "{}", n.url);
        }
        for t in all.revoked.iter().step_by(2) {
            assert_eq!(
                n.get_test(t).await.status(),
                StatusCode::UNAUTHORIZED,
                "{}",
                n.url
            );
        }
    }
    // Every node holds the same tokens.
    let first = token_list(&c.nodes[0], user).await;
    for n in &c.nodes[1..] {
        assert_eq!(token_list(n, user).await, first);
    }
}

#[tokio::test]
async fn nodes_share_one_rate_limit() {
    const LIMIT: usize = 30;
    let config =
        format!("{CLUSTER_CONFIG}\n[tiers.starter]\nrequests = {LIMIT}\nwindow_secs = 3600\n");
    let c = spawn_cluster_with(&config).await;
    let user = c.nodes[0].create_user("ann@example.com", "starter").await;
    let (token, _) = c.nodes[0].issue_token(user).await;
    let token = token.as_str();
    // Every node hammered at once, 3 × 40 requests for a limit of 30.
    let calls = c
        .nodes
        .iter()
        .flat_map(|n| (0..40).map(move |_| n.get_test(token)));
    let responses = futures_util::future::join_all(calls).await;
    let mut admitted: std::collections::HashMap<String, usize> = Default::default();
    for r in &responses {
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            continue; // briefly too stale to decide (a loaded machine): not admitted
        }
        let reset = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .to_owned();
        match r.status() {
            StatusCode::OK => *admitted.entry(reset).or_default() += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            s => panic!("unexpected {s}"),
        }
    }
    // Then each node, one request at a time, until it says the window is used up.
    let mut exhausted = String::new();
    for n in &c.nodes {
        let until = Instant::now() + Duration::from_secs(20);
        let t = until_used_up(n, token, Duration::ZERO, until).await;
        for (reset, k) in t.admitted {
            *admitted.entry(reset).or_default() += k;
        }
        exhausted = t.exhausted.expect("never exhausted");
    }
    // The window may have rolled over during the test (once an hour): count per window.
    // Nodes claim requests before admitting them, so the limit holds exactly.
    for (reset, n) in &admitted {
        assert!(*n <= LIMIT, "window {reset}: {n} admitted, limit {LIMIT}");
    }
    assert_eq!(admitted[&exhausted], LIMIT, "the window was used up");
}

#[tokio::test]
async fn every_event_is_published_on_its_subject_without_secrets() {
    let c = spawn_cluster().await;
    let client = async_nats::connect(c.nats.url()).await.unwrap();
    let mut all = client.subscribe("snaptrack.auth.>").await.unwrap();
    let mut revoked = client
        .subscribe("snaptrack.auth.v1.token.revoked")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let a = &c.nodes[0];
    let user = a.create_user("ann@example.com", "pro").await;
    let (token, id) = a.issue_token(user).await;
    let cookie = a.session("ann@example.com").await;
    assert_eq!(a.get_test(&token).await.status(), StatusCode::OK);
    assert_eq!(c.nodes[1].revoke_admin(&id).await.status(), StatusCode::OK);
    let msg = tokio::time::timeout(Duration::from_secs(5), revoked.next())
        .await
        .unwrap()
        .unwrap();
    let env: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(env["type"], "token_revoked");
    assert_eq!(env["version"], 2);
    assert_eq!(env["data"]["by"], "operator");
    assert_eq!(env["node_id"], "b");
    assert_eq!(env["data"]["token_id"], id);
    assert!(env["seq"].as_u64().unwrap() >= 3);
    // Everything said on NATS so far: no token, password or session cookie in it.
    // Read until the revocation and a presence announcement (nodes announce at once after
    // applying a revocation, so one follows it even when all this took less than a tick);
    // presence goes on forever.
    let mut seen = Vec::new();
    let (mut revocation, mut presence) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, all.next()).await {
        revocation |= m.subject.as_str() == "snaptrack.auth.v1.token.revoked";
        presence |= m.subject.as_str() == "snaptrack.auth.nodes";
        seen.push((m.subject.to_string(), m.payload.to_vec()));
        if revocation && presence {
            break;
        }
    }
    let subjects: std::collections::HashSet<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    for s in [
        "snaptrack.auth.v1.user.registered",
        "snaptrack.auth.v1.token.issued",
        "snaptrack.auth.v1.login.succeeded",
        "snaptrack.auth.v1.token.revoked",
        "snaptrack.auth.v1.usage.claimed",
        "snaptrack.auth.nodes",
    ] {
        assert!(subjects.contains(s), "{s} not seen in {subjects:?}");
    }
    let session = cookie.split_once('=').unwrap().1;
    for (subject, payload) in &seen {
        let text = String::from_utf8_lossy(payload);
        for secret in [token.as_str(), PASSWORD, session] {
            assert!(!text.contains(secret), "secret on {subject}");
        }
    }
}

#[tokio::test]
async fn a_single_node_cluster_serves_the_whole_api() {
    // One node on its own broker: the same answers as embedded mode.
    let nats = crate::nats::NatsServer::start();
    let a = spawn_node(&nats, "solo", CLUSTER_CONFIG).await;
    let (_, token, id) = a.user_with_token("ann@example.com", "pro").await;
    assert_eq!(a.get_test(&token).await.status(), StatusCode::OK);
    let v = body(a.revoke_admin(&id).await).await;
    assert_eq!(v["revoked"]["propagated_to"], json!(["solo"]));
    assert_eq!(a.get_test(&token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        a.revoke_admin(&id).await.status(),
        StatusCode::CONFLICT,
        "already revoked"
    );
}

#[tokio::test]
async fn regenerate_and_multi_user_usage_flushes_land_whole_in_a_cluster() {
    // Usage recorded every second (not every hour or window), so node a hears of node b's.
    let c = spawn_cluster_with(&format!(
        "{CLUSTER_CONFIG}[history]\nusage_record_secs = 1\n[tiers.pro]\nwindow_secs = 1\n"
    ))
    .await;
    let [a, b, _] = &c.nodes[..] else {
        unreachable!()
    };
    // Regenerate: two events (revoke, issue) published as one pipelined command.
    let user = a.create_user("ann@example.com", "pro").await;
    let cookie = a.session("ann@example.com").await;
    let r = a.generate(&cookie, &json!({"name": "laptop"})).await;
    let old = body(r).await;
    let r = a
        .regenerate(&cookie, old["token_id"].as_str().unwrap())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let new = body(r).await;
    let (old, new) = (
        old["token"].as_str().unwrap(),
        new["token"].as_str().unwrap(),
    );
    for node in &c.nodes {
        assert_eq!(node.get_test(old).await.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(node.get_test(new).await.status(), StatusCode::OK);
    }
    // Usage of several users: one flush, one record per user, pipelined.
    let mut tokens = vec![new.to_owned()];
    for i in 0..4 {
        tokens.push(
            b.user_with_token(&format!("u{i}@example.com"), "pro")
                .await
                .1,
        );
    }
    for t in &tokens {
        assert_eq!(b.get_test(t).await.status(), StatusCode::OK);
    }
    // Every user's token list on node a shows the request made on node b once recorded.
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in user..user + 5 {
        loop {
            let v = body(a.get_user(id).await).await;
            let used: u64 = v["tokens"]["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["requests"].as_u64().unwrap_or(0))
                .sum();
            if used >= 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "usage of user {id} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn no_request_that_starts_after_a_revoke_returned_is_accepted() {
    // Hundreds of 401s from one address: lift the throttle.
    let config = format!(
        "{CLUSTER_CONFIG}\n[tiers.business]\nrequests = 1000000\n[throttle]\nauth_failures = 1000000\n"
    );
    let c = spawn_cluster_with(&config).await;
    let user = c.nodes[0].create_user("ann@example.com", "business").await;
    for round in 0..3 {
        let (token, id) = c.nodes[round % 3].issue_token(user).await;
        let returned: Arc<std::sync::OnceLock<Instant>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicUsize::new(0));
        // Eight clients hammer the token on the two nodes that do not revoke it.
        let users: Vec<_> = (0..8)
            .map(|i| {
                let url = c.nodes[(round + 1 + i % 2) % 3].url.clone();
                let (token, returned, stop, counted) = (
                    token.clone(),
                    returned.clone(),
                    stop.clone(),
                    counted.clone(),
                );
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let after = returned.get().is_some_and(|t| started > *t);
                        let status = client
                            .get(format!("{url}/test"))
                            .bearer_auth(&token)
                            .send()
                            .await
                            .unwrap()
                            .status();
                        seen.push((after, status));
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    seen
                })
            })
            .collect();
        let wait_for = |n: usize| {
            let counted = counted.clone();
            async move {
                while counted.load(Ordering::Relaxed) < n {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        wait_for(40).await;
        let r = c.nodes[(round + 2) % 3].revoke_admin(&id).await;
        returned.set(Instant::now()).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let so_far = counted.load(Ordering::Relaxed);
        wait_for(so_far + 80).await;
        stop.store(true, Ordering::Relaxed);
        let (mut before, mut after) = (0, 0);
        for u in users {
            for (started_after, status) in u.await.unwrap() {
                if started_after {
                    after += 1;
                    // 401, or 503 if the node is briefly too stale to decide: never accepted.
                    assert_ne!(status, StatusCode::OK, "accepted after the revoke returned");
                } else if status == StatusCode::OK {
                    before += 1;
                }
            }
        }
        assert!(before > 0 && after >= 40, "{before} before, {after} after");
    }
}

#[tokio::test]
async fn two_processes_with_one_node_id_both_stop_serving() {
    let c = spawn_cluster().await;
    let twin = crate::helpers::spawn_app_with(crate::helpers::Opts {
        config: Some(CLUSTER_CONFIG.into()),
        env: c.nats.node_env("a"),
        ..Default::default()
    })
    .await;
    // Each hears the other's announcement within a presence interval (100 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in [&c.nodes[0], &twin] {
        while !node
            .output()
            .iter()
            .any(|l| l.contains("another process announces node id \"a\""))
        {
            assert!(Instant::now() < deadline, "{} did not notice", node.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while node.get("/readyz").await.status() != StatusCode::SERVICE_UNAVAILABLE {
            assert!(Instant::now() < deadline, "{} still serving", node.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_node_refuses_a_recreated_stream_and_an_embedded_data_directory() {
    let mut c = spawn_cluster().await;
    let user = c.nodes[0].create_user("ann@example.com", "pro").await;
    let (token, _) = c.nodes[0].issue_token(user).await;
    c.nodes[0].stop().await;
    // Someone deletes the stream and creates an empty one of the same name.
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.unwrap());
    js.delete_stream("SNAPTRACK_AUTH").await.unwrap();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SNAPTRACK_AUTH".into(),
        subjects: vec!["snaptrack.auth.v1.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    c.nodes[0].start(&[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.nodes[0]
        .output()
        .iter()
        .any(|l| l.contains("the stream was recreated since this node mirrored it"))
    {
        assert!(Instant::now() < deadline, "no complaint about the stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It fails closed: neither ready nor answering token checks.
    assert_eq!(
        c.nodes[0].get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        c.nodes[0].get_test(&token).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    // An embedded node's data directory cannot join a cluster, nor the other way round.
    let mut embedded = crate::helpers::spawn_app().await;
    embedded.create_user("bob@example.com", "pro").await;
    embedded.stop().await;
    let dir = embedded.data_dir();
    let out = std::process::Command::new(crate::helpers::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            &c.nats.url(),
            "--data",
        ])
        .arg(&dir)
        .env("SNAPTRACK_AUTH_SIGNING_KEY", c.nats.keys.path("d"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds a log written in embedded mode"),
        "{err}"
    );
    c.nodes[1].stop().await;
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(c.nodes[1].data_dir())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds a log written in cluster mode"), "{err}");
}

/// A burst whose acks never come (a stream leader that died with them, as in the R3
/// failover of `bench/cluster`) fails in about one ack timeout (1 s), not one per message:
/// the writer's round, and every command waiting on it, is held up that long at most. It was
/// a second per message, and a leader's clients waited up to 19 s after a failover.
#[tokio::test]
async fn a_burst_whose_acks_are_lost_fails_in_one_ack_timeout_not_one_per_message() {
    use snaptrack_auth::bus::{JetStreamBus, PublishFailure, SUBJECTS};
    use snaptrack_auth::event::{Envelope, Event, UsageClaimed};
    let nats = crate::nats::NatsServer::start();
    // Something takes every message and never answers.
    let sink = async_nats::connect(nats.url()).await.unwrap();
    let mut swallowed = sink.subscribe(SUBJECTS).await.unwrap();
    sink.flush().await.unwrap();
    let signer = Arc::new(snaptrack_auth::signing::Signer::generate());
    let bus = JetStreamBus::connect(&nats.url(), "a", 1, &Default::default(), signer)
        .await
        .unwrap();
    bus.client().flush().await.unwrap();
    const BURST: u64 = 20;
    let envs: Vec<Envelope> = (1..=BURST)
        .map(|seq| Envelope {
            event_id: uuid::Uuid::new_v4(),
            seq,
            occurred_at: chrono::Utc::now(),
            node_id: "a".into(),
            event: Event::UsageClaimed(UsageClaimed { claims: vec![] }),
        })
        .collect();
    let started = Instant::now();
    let (landed, failure) = bus.publish(&envs, false).await;
    let took = started.elapsed();
    assert_eq!(landed, 0);
    assert!(
        matches!(failure, Some(PublishFailure::Unavailable(_))),
        "{failure:?}"
    );
    // Every message went out; none was answered.
    for _ in 0..BURST {
        swallowed.next().await.unwrap();
    }
    assert!(
        took < Duration::from_secs(BURST / 2),
        "{took:?} for {BURST} lost acks of 1 s each: read one after another"
    );
}
