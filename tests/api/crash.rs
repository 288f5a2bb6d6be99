//! Crash safety under load: nodes killed with SIGKILL at random moments while clients issue and
//! revoke tokens; after a restart every acknowledged issue authenticates and every
//! acknowledged revoke rejects.

use crate::helpers::{churn, spawn_app_with_config, Acked, TestApp};
use crate::nats::{spawn_cluster_with, CLUSTER_CONFIG};
use rand::Rng;
use reqwest::StatusCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The checks afterwards fail (401) by the hundred from one address: lift the throttle.
const CONFIG: &str = "[throttle]\nauth_failures = 1000000\n[tiers.business]\nrequests = 1000000\n";

/// Churns on `nodes` (by index into `apps`) with two clients each, kills `victim` once five
/// revokes were acknowledged and a random 0–300 ms more have passed, and returns what the
/// clients saw acknowledged.
async fn churn_and_kill(apps: &mut [TestApp], nodes: &[usize], victim: usize, user: u64) -> Acked {
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(crate::helpers::Progress::default());
    let writers: Vec<_> = nodes
        .iter()
        .flat_map(|&n| [n, n])
        .map(|n| {
            let app = &apps[n];
            tokio::spawn(churn(
                app.url.clone(),
                app.admin_token.clone(),
                user,
                stop.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while progress.revoked.load(Ordering::Relaxed) < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load never got going"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wait = rand::thread_rng().gen_range(0..300);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    apps[victim].kill().await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked
}

/// Every acknowledged issue works and every acknowledged revoke rejects on `app`.
async fn holds(app: &TestApp, acked: &Acked) {
    for t in &acked.live {
        let r = app.get_test(t).await;
        let (status, retry) = (r.status(), r.headers().get("retry-after").cloned());
        let text = r.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{}: {retry:?} {text}", app.url);
    }
    for t in &acked.revoked {
        assert_eq!(
            app.get_test(t).await.status(),
            StatusCode::UNAUTHORIZED,
            "{}",
            app.url
        );
    }
}

#[tokio::test]
async fn an_embedded_node_killed_under_load_keeps_every_acknowledged_command() {
    let app = spawn_app_with_config(CONFIG).await;
    let user = app.create_user("ann@example.com", "business").await;
    let mut apps = [app];
    let mut all = Acked::default();
    for _ in 0..4 {
        let acked = churn_and_kill(&mut apps, &[0], 0, user).await;
        all.extend(acked);
        apps[0].start(&[]).await;
        holds(&apps[0], &all).await;
    }
    assert!(all.revoked.len() >= 15, "the load barely ran");
}

#[tokio::test]
async fn a_cluster_node_killed_under_load_keeps_every_acknowledged_command() {
    let mut c = spawn_cluster_with(&format!("{CLUSTER_CONFIG}{CONFIG}")).await;
    let user = c.nodes[0].create_user("ann@example.com", "business").await;
    let mut all = Acked::default();
    for round in 0..3 {
        let victim = round % 2;
        let acked = churn_and_kill(&mut c.nodes, &[0, 1], victim, user).await;
        all.extend(acked);
        c.nodes[victim].start(&[]).await;
        c.nodes[victim].wait_ready().await;
        for n in &c.nodes {
            holds(n, &all).await;
        }
    }
    assert!(all.revoked.len() >= 15, "the load barely ran");
}
