//! Cluster mode's rate-limit claims under load: many users at once, window boundaries, NATS
//! killed while claims are outstanding, and a three-server NATS cluster losing a server.

use crate::helpers::*;
use crate::nats::{spawn_cluster_with, CLUSTER_CONFIG};
use reqwest::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn starter(limit: usize, window_secs: u64) -> String {
    format!("{CLUSTER_CONFIG}\n[tiers.starter]\nrequests = {limit}\nwindow_secs = {window_secs}\n")
}

#[tokio::test]
async fn many_users_at_once_across_three_nodes_each_get_exactly_their_limit() {
    const LIMIT: usize = 24;
    const USERS: usize = 12;
    let c = spawn_cluster_with(&starter(LIMIT, 3600)).await;
    let mut tokens = Vec::new();
    for i in 0..USERS {
        let user = c.nodes[i % 3]
            .create_user(&format!("user{i}@example.com"), "starter")
            .await;
        tokens.push(c.nodes[i % 3].issue_token(user).await.0);
    }
    // Every user on every node at once, each until its node says the window is used up.
    let until = Instant::now() + Duration::from_secs(60);
    let runs = tokens.iter().enumerate().flat_map(|(u, token)| {
        c.nodes
            .iter()
            .map(move |n| async move { (u, until_used_up(n, token, Duration::ZERO, until).await) })
    });
    let results = futures_util::future::join_all(runs).await;
    let mut per_user: HashMap<(usize, String), usize> = HashMap::new();
    let mut exhausted: HashMap<usize, Vec<String>> = HashMap::new();
    for (u, t) in results {
        for (reset, n) in t.admitted {
            *per_user.entry((u, reset)).or_default() += n;
        }
        exhausted
            .entry(u)
            .or_default()
            .push(t.exhausted.expect("a node never found the window used up"));
    }
    for ((u, reset), n) in &per_user {
        assert!(
            *n <= LIMIT,
            "user {u}: {n} admitted in the window to {reset}"
        );
    }
    for (u, windows) in exhausted {
        // Every node stopped in the same window (an hour's boundary may pass in between):
        // that window admitted exactly the limit, no more, no fewer.
        let last = windows.iter().max().unwrap();
        assert_eq!(
            per_user.get(&(u, last.clone())).copied().unwrap_or(0),
            LIMIT,
            "user {u}"
        );
    }
}

#[tokio::test]
async fn no_window_admits_more_than_the_limit_across_its_boundaries() {
    const LIMIT: usize = 10;
    let c = spawn_cluster_with(&starter(LIMIT, 1)).await;
    let user = c.nodes[0].create_user("ann@example.com", "starter").await;
    let (token, _) = c.nodes[0].issue_token(user).await;
    // Three hammers per node for about four one-second windows.
    let until = Instant::now() + Duration::from_millis(4200);
    let hammers = c.nodes.iter().flat_map(|n| {
        let token = token.as_str();
        (0..3).map(move |_| async move {
            let mut admitted: HashMap<i64, usize> = HashMap::new();
            while Instant::now() < until {
                let r = n.get_test(token).await;
                if r.status() == StatusCode::OK {
                    let reset: i64 = r.headers()["x-ratelimit-reset"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    *admitted.entry(reset).or_default() += 1;
                } else {
                    assert!(
                        matches!(
                            r.status(),
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                        ),
                        "{}",
                        r.status()
                    );
                }
            }
            admitted
        })
    });
    let mut windows: HashMap<i64, usize> = HashMap::new();
    for admitted in futures_util::future::join_all(hammers).await {
        for (reset, n) in admitted {
            *windows.entry(reset).or_default() += n;
        }
    }
    assert!(windows.len() >= 3, "{windows:?}");
    for (reset, n) in &windows {
        assert!(
            *n <= LIMIT,
            "{n} admitted in the window to {reset}: {windows:?}"
        );
    }
    // The claims made ahead of each window are used in it: whole windows in the middle of
    // the run are not starved by them.
    let mut middle: Vec<_> = windows.iter().collect();
    middle.sort();
    let middle = &middle[1..middle.len() - 1];
    assert!(
        middle.iter().any(|(_, n)| **n == LIMIT),
        "no whole window reached the limit: {windows:?}"
    );
}

#[tokio::test]
async fn nats_killed_while_claims_are_outstanding_admits_no_more_than_the_limit() {
    const LIMIT: usize = 6000;
    let mut c = spawn_cluster_with(&starter(LIMIT, 3600)).await;
    let user = c.nodes[0].create_user("ann@example.com", "starter").await;
    let (token, _) = c.nodes[0].issue_token(user).await;
    let (nats, nodes) = (&mut c.nats, &c.nodes);
    // Two paced hammers per node (about 1,000 requests a second in all) while NATS dies
    // with claims on their way, stays away until every node is stale, and comes back.
    let until = Instant::now() + Duration::from_secs(60);
    let token_ref = token.as_str();
    let pace = Duration::from_millis(5);
    let hammers = futures_util::future::join_all(
        nodes
            .iter()
            .flat_map(|n| (0..2).map(move |_| until_used_up(n, token_ref, pace, until))),
    );
    // NATS stays away until every node is stale (its readiness says so, and it refuses
    // the token with a 503 rather than guess), however slow a loaded machine makes that.
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        nats.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in nodes {
            while n.get("/readyz").await.status() == StatusCode::OK {
                assert!(Instant::now() < deadline, "{} never went stale", n.url);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let r = n.get_test(token_ref).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", n.url);
        }
        nats.run();
    };
    let (tallies, ()) = tokio::join!(hammers, outage);
    let mut admitted: HashMap<String, usize> = HashMap::new();
    for t in &tallies {
        assert!(
            t.exhausted.is_some(),
            "a node never found the window used up"
        );
        for (reset, n) in &t.admitted {
            *admitted.entry(reset.clone()).or_default() += n;
        }
    }
    for (reset, n) in &admitted {
        assert!(*n <= LIMIT, "{n} admitted in the window to {reset}");
    }
    // After the outage every node serves again, and the window stays used up.
    for n in nodes {
        n.wait_ready().await;
        let r = n.get_test(&token).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}

#[tokio::test]
async fn a_three_server_nats_cluster_loses_a_server_mid_load_and_nothing_else() {
    const LIMIT: usize = 3000;
    let mut nats = crate::nats::NatsCluster::start();
    nats.wait_for_jetstream().await;
    // CLUSTER_CONFIG ends in its [cluster] table.
    let config = format!(
        "{CLUSTER_CONFIG}replicas = 3\n[tiers.starter]\nrequests = {LIMIT}\nwindow_secs = 3600\n\
         [tiers.business]\nrequests = 100000\n[throttle]\nauth_failures = 1000000\n"
    );
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        let app = spawn_app_with(Opts {
            config: Some(config.clone()),
            env: nats.node_env(id),
            ..Default::default()
        })
        .await;
        // The JetStream cluster elects its leaders first: readiness waits for the stream.
        app.wait_ready().await;
        nodes.push(app);
    }
    // The churning writers' tokens are checked on every node at the end: a limit that is
    // not what this test is about.
    let owner = nodes[0].create_user("ann@example.com", "business").await;
    // The stream the nodes made has three replicas, one on each server.
    let client = async_nats::connect(nats.servers[0].url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("SNAPTRACK_AUTH")
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert_eq!(
        info.cluster.as_ref().map(|c| c.replicas.len()),
        Some(2),
        "a leader and two replicas"
    );
    let user = nodes[1].create_user("bob@example.com", "starter").await;
    let (token, _) = nodes[2].issue_token(user).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = Arc::new(crate::helpers::Progress::default());
    let writers: Vec<_> = nodes
        .iter()
        .map(|n| {
            tokio::spawn(churn(
                n.url.clone(),
                n.admin_token.clone(),
                owner,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(90);
    let pace = Duration::from_millis(2);
    let token_ref = token.as_str();
    let hammers = futures_util::future::join_all(
        nodes
            .iter()
            .map(|n| until_used_up(n, token_ref, pace, until)),
    );
    let progress_seen = progress.clone();
    let fault = async {
        // Some commands through, then one server of three dies (JetStream keeps a quorum).
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress_seen
            .revoked
            .load(std::sync::atomic::Ordering::Relaxed)
            < 20
        {
            if Instant::now() >= deadline {
                for n in &nodes {
                    let out = n.output();
                    let tail: Vec<_> = out
                        .iter()
                        .filter(|l| {
                            l.contains(" WARN ")
                                || l.contains(" ERROR ")
                                || l.contains("INFO snaptrack")
                        })
                        .rev()
                        .take(30)
                        .collect();
                    eprintln!("--- {}: {tail:#?}", n.url);
                }
                panic!("no command got through before the kill\n{}", nats.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        nats.servers[1].kill();
        let at = progress_seen
            .revoked
            .load(std::sync::atomic::Ordering::Relaxed);
        // The writers get through again without it, and without a restart of any node.
        let deadline = Instant::now() + Duration::from_secs(30);
        while progress_seen
            .revoked
            .load(std::sync::atomic::Ordering::Relaxed)
            < at + 40
        {
            assert!(
                Instant::now() < deadline,
                "no command got through after the kill"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (tallies, ()) = tokio::join!(hammers, fault);
    let mut acked = Acked::default();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    // No request admitted over the limit, and the window was used up on every node.
    let mut admitted: HashMap<String, usize> = HashMap::new();
    for t in &tallies {
        assert!(
            t.exhausted.is_some(),
            "a node never found the window used up"
        );
        for (reset, n) in &t.admitted {
            *admitted.entry(reset.clone()).or_default() += n;
        }
    }
    for (reset, n) in &admitted {
        assert!(*n <= LIMIT, "{n} admitted in the window to {reset}");
    }
    // No acknowledged command lost: every issued token works and every revoked one is
    // refused, on every node.
    assert!(!acked.revoked.is_empty());
    for n in &nodes {
        n.wait_ready().await;
        for t in &acked.live {
            assert_eq!(n.get_test(t).await.status(), StatusCode::OK, "{}", n.url);
        }
        for t in &acked.revoked {
            assert_eq!(
                n.get_test(t).await.status(),
                StatusCode::UNAUTHORIZED,
                "{}",
                n.url
            );
        }
    }
}
