//! History that grows with state, not traffic: usage recorded once per window, the open window
//! checkpointed in place, snapshots restored at start (and passed over when unusable).

use crate::helpers::*;
use reqwest::StatusCode;
use std::time::Duration;

/// Waits until two more rounds of the usage checkpoint were saved: everything admitted
/// before the call is then on disk.
async fn checkpointed(app: &TestApp) {
    let start = metric(app, "snaptrack_usage_checkpoints_total").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(app, "snaptrack_usage_checkpoints_total").await < start + 2.0 {
        assert!(std::time::Instant::now() < deadline, "no checkpoint rounds");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn traffic_spread_over_many_users_appends_almost_no_events() {
    let config = "[tiers.pro]\nrequests = 1000\nwindow_secs = 3600\n";
    let mut app = spawn_app_with_config(config).await;
    let mut tokens = Vec::new();
    for i in 0..40 {
        let (_, token, _) = app
            .user_with_token(&format!("u{i}@example.com"), "pro")
            .await;
        tokens.push(token);
    }
    let before = applied_seq(&app).await;
    // Round robin, so every user has requests in every usage flush (the case that used to
    // append one event per user per flush).
    let mut admitted = 0u64;
    for _ in 0..15 {
        let rounds = tokens.iter().map(|t| app.get_test(t));
        for r in futures_util::future::join_all(rounds).await {
            assert_eq!(r.status(), StatusCode::OK);
            admitted += 1;
        }
    }
    checkpointed(&app).await;
    let appended = applied_seq(&app).await - before;
    assert!(
        appended as f64 <= 0.1 * admitted as f64,
        "{appended} events for {admitted} requests"
    );
    // A clean stop records nothing for windows still open: their counts are checkpointed.
    app.restart().await;
    let c = app.session("u0@example.com").await;
    let list = body(app.list_tokens(&c).await).await;
    assert_eq!(list["tokens"][0]["requests"], 15);
    let v = body(app.get_test(&tokens[0]).await).await;
    assert_eq!(v["rate_limit"]["remaining"], 1000 - 16);
}

#[tokio::test]
async fn usage_is_recorded_once_per_user_per_period_and_counts_stay_exact() {
    // Records every second instead of every hour, so periods end during the test.
    let config =
        "[tiers.pro]\nrequests = 1000\nwindow_secs = 1\n[history]\nusage_record_secs = 1\n";
    let mut app = spawn_app_with_config(config).await;
    let (_, a, _) = app.user_with_token("a@example.com", "pro").await;
    let (_, b, _) = app.user_with_token("b@example.com", "pro").await;
    let mut admitted = 0;
    // Spans several one-second windows.
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        for t in [&a, &b] {
            assert_eq!(app.get_test(t).await.status(), StatusCode::OK);
            admitted += 1;
        }
    }
    assert!(app.stop().await.success());
    let out = app.replay(&["--type", "usage_recorded"]);
    assert!(out.status.success(), "{out:?}");
    let mut seen = std::collections::HashSet::new();
    let mut recorded = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (
            e["data"]["user_id"].as_u64().unwrap(),
            e["data"]["window_start"].as_i64().unwrap(),
        );
        assert!(seen.insert(key), "two records of period {key:?}");
        recorded += e["data"]["requests"].as_u64().unwrap();
    }
    assert!(
        seen.len() >= 2,
        "periods ended during the traffic were recorded: {out:?}"
    );
    app.start(&[]).await;
    // What the records hold plus the checkpointed rest: every admitted request.
    let mut listed = 0;
    for email in ["a@example.com", "b@example.com"] {
        let c = app.session(email).await;
        let list = body(app.list_tokens(&c).await).await;
        listed += list["tokens"][0]["requests"].as_u64().unwrap();
    }
    assert_eq!(listed, admitted);
    assert!(recorded <= admitted);
}

#[tokio::test]
async fn a_clean_restart_replays_a_handful_and_kill_9_loses_no_event_and_at_most_a_flush_of_counts()
{
    let config = "[tiers.starter]\nrequests = 100\nwindow_secs = 3600\n";
    let mut app = spawn_app_with_config(config).await;
    let (user, token, _) = app.user_with_token("a@example.com", "starter").await;
    for _ in 0..20 {
        app.issue_token(user).await;
    }
    app.restart().await;
    assert_eq!(
        replayed_events(&app),
        0,
        "all in the snapshot taken at the stop"
    );
    let seq = applied_seq(&app).await;
    assert_eq!(metric(&app, "snaptrack_snapshot_seq").await, seq as f64);
    assert!(metric(&app, "snaptrack_snapshot_age_seconds").await < 600.0);
    for _ in 0..10 {
        assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    }
    checkpointed(&app).await;
    let (late, _) = app.issue_token(user).await;
    // Possibly lost: at most the requests of the last flush interval.
    for _ in 0..3 {
        assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    }
    app.kill().await;
    app.start(&[]).await;
    assert!(replayed_events(&app) <= 2, "the issue since the snapshot");
    assert_eq!(app.get_test(&late).await.status(), StatusCode::OK);
    let v = body(app.get_test(&token).await).await;
    let remaining = v["rate_limit"]["remaining"].as_u64().unwrap();
    // 10 checkpointed for sure, the 3 after maybe, and this one.
    assert!((100 - 14..=100 - 11).contains(&remaining), "{remaining}");
}

/// What is done to a snapshot file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

fn snapshot_files(app: &TestApp) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(app.data_dir().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snap"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn unusable_snapshots_are_passed_over_for_older_ones_or_the_log() {
    let mut app = spawn_app().await;
    let (user, token, _) = app.user_with_token("a@example.com", "pro").await;
    app.restart().await;
    let first = applied_seq(&app).await;
    let (revoked_later, id) = app.issue_token(user).await;
    app.revoke_admin(&id).await;
    app.restart().await;
    let total = applied_seq(&app).await;
    let files = snapshot_files(&app);
    assert_eq!(files.len(), 2, "{files:?}");
    let newest = files[1].clone();
    let good = std::fs::read(&newest).unwrap();
    let damage: [(&str, Damage); 3] = [
        (
            "checksum",
            Box::new(|b: &mut Vec<u8>| *b.last_mut().unwrap() ^= 0x55),
        ),
        (
            "truncated",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2)),
        ),
        (
            "format 99",
            Box::new(|b: &mut Vec<u8>| b[8..12].copy_from_slice(&99u32.to_le_bytes())),
        ),
    ];
    for (why, damage) in damage {
        app.stop().await;
        let mut bad = good.clone();
        damage(&mut bad);
        std::fs::write(&newest, &bad).unwrap();
        // Stopping again would write a fresh snapshot over it: start on the damaged one.
        app.start(&[]).await;
        assert_eq!(
            replayed_events(&app),
            total - first,
            "{why}: restored the older snapshot and replayed the rest"
        );
        let warned = app
            .output()
            .iter()
            .any(|l| l.contains("snapshot unusable") && l.contains(newest.to_str().unwrap()));
        assert!(warned, "{why}: one warning naming it");
        assert_eq!(app.get_test(&token).await.status(), StatusCode::OK, "{why}");
        assert_eq!(
            app.get_test(&revoked_later).await.status(),
            StatusCode::UNAUTHORIZED,
            "{why}"
        );
        assert_eq!(applied_seq(&app).await, total);
    }
    // Both unusable: a full replay.
    app.stop().await;
    for f in snapshot_files(&app) {
        std::fs::write(&f, b"SNAPTRKS\x01").unwrap();
    }
    app.start(&[]).await;
    assert_eq!(replayed_events(&app), total);
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_snapshot_ahead_of_the_log_is_refused() {
    let mut app = spawn_app().await;
    app.user_with_token("a@example.com", "pro").await;
    assert!(app.stop().await.success());
    let snap = snapshot_files(&app).pop().unwrap();
    // A data directory whose log was lost, with the snapshot left behind.
    let other = tempfile::tempdir().unwrap();
    let data = other.path().join("data");
    std::fs::create_dir_all(data.join("snapshots")).unwrap();
    std::fs::copy(
        &snap,
        data.join("snapshots").join(snap.file_name().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("SNAPTRACK_ADMIN_TOKEN", "adm-0123456789abcdefghijklmn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ahead") || err.contains("lost or replaced"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `GET /dashboard/tokens/{id}/usage`, as (hour start, requests).
async fn token_hours(app: &TestApp, cookie: &str, id: &str) -> Vec<(i64, u64)> {
    let path = format!("/dashboard/tokens/{id}/usage");
    let r = app
        .dash(reqwest::Method::GET, &path, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    body(r).await["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["start"].as_i64().unwrap(),
                h["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn total(hours: &[(i64, u64)]) -> u64 {
    hours.iter().map(|h| h.1).sum()
}

#[tokio::test]
async fn hourly_usage_per_token_survives_restarts_and_is_the_owners_only() {
    let config =
        "[tiers.pro]\nrequests = 1000\nwindow_secs = 1\n[history]\nusage_record_secs = 1\n";
    let mut app = spawn_app_with_config(config).await;
    let (user, t1, id1) = app.user_with_token("a@example.com", "pro").await;
    let (t2, id2) = app.issue_token(user).await;
    for _ in 0..5 {
        app.get_test(&t1).await;
    }
    for _ in 0..3 {
        app.get_test(&t2).await;
    }
    let c = app.session("a@example.com").await;
    let h1 = token_hours(&app, &c, &id1).await;
    assert_eq!(total(&h1), 5, "the open period counts at once: {h1:?}");
    assert!(h1.iter().all(|h| h.0 % 3600 == 0));
    assert_eq!(total(&token_hours(&app, &c, &id2).await), 3);
    app.restart().await;
    let c = app.session("a@example.com").await;
    // After the restart the ended periods are in the roll-ups, rolled up in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = (
            total(&token_hours(&app, &c, &id1).await),
            total(&token_hours(&app, &c, &id2).await),
        );
        if got == (5, 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for q in ["?days=0", "?days=91", "?days=x", "?weeks=1"] {
        let path = format!("/dashboard/tokens/{id1}/usage{q}");
        let r = app
            .dash(reqwest::Method::GET, &path, &c)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{q}");
        assert_eq!(body(r).await["field"], "days", "{q}");
    }
    // Another user's token, an unknown one, no session.
    app.user_with_token("b@example.com", "pro").await;
    let other = app.session("b@example.com").await;
    let path = format!("/dashboard/tokens/{id1}/usage");
    let r = app
        .dash(reqwest::Method::GET, &path, &other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = app
        .dash(reqwest::Method::GET, "/dashboard/tokens/nope/usage", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get(&path).await.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_fresh_cluster_node_starts_from_the_shared_snapshot_and_refuses_an_untrusted_one() {
    use crate::nats::{spawn_node, NatsServer, CLUSTER_CONFIG};
    let nats = NatsServer::start();
    let mut a = spawn_node(&nats, "a", CLUSTER_CONFIG).await;
    let user = a.create_user("ann@example.com", "pro").await;
    let (kept, _) = a.issue_token(user).await;
    let (revoked_before, id) = a.issue_token(user).await;
    a.revoke_admin(&id).await;
    let (revoked_after, id_after) = a.issue_token(user).await;
    // A clean stop takes a snapshot and shares it.
    a.restart().await;
    a.wait_ready().await;
    assert!(
        a.output().iter().any(|l| l.contains("snapshot shared")),
        "shared at the stop"
    );
    let at_snapshot = applied_seq(&a).await;
    // After the snapshot: a revoke and an issue.
    a.revoke_admin(&id_after).await;
    let (issued_after, _) = a.issue_token(user).await;
    let last = applied_seq(&a).await;

    let check = |node: &TestApp| {
        let node = node.url.clone();
        let (kept, issued_after) = (kept.clone(), issued_after.clone());
        let (rb, ra) = (revoked_before.clone(), revoked_after.clone());
        async move {
            let client = reqwest::Client::new();
            let status = |t: String| {
                let (client, node) = (client.clone(), node.clone());
                async move {
                    client
                        .get(format!("{node}/test"))
                        .bearer_auth(t)
                        .send()
                        .await
                        .unwrap()
                        .status()
                }
            };
            assert_eq!(status(kept).await, StatusCode::OK);
            assert_eq!(status(issued_after).await, StatusCode::OK);
            assert_eq!(status(rb).await, StatusCode::UNAUTHORIZED);
            assert_eq!(status(ra).await, StatusCode::UNAUTHORIZED);
        }
    };
    let mut b = spawn_node(&nats, "b", CLUSTER_CONFIG).await;
    let seeded = format!("seeded from the shared snapshot seq={at_snapshot}");
    assert!(
        b.output().iter().any(|l| l.contains(&seeded)),
        "{seeded}: {:?}",
        b.output()
            .iter()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
    );
    assert!(
        b.output()
            .iter()
            .any(|l| l.contains(&format!("consuming the stream from={}", at_snapshot + 1))),
        "reads the stream after the snapshot, not from 1"
    );
    while applied_seq(&b).await < last {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check(&b).await;
    // Its log starts after the snapshot: without a usable one it refuses to start, saying
    // how to seed it again (rather than failing on a gap at seq 1).
    assert!(b.stop().await.success());
    std::fs::remove_dir_all(b.data_dir().join("snapshots")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(b.data_dir())
        .arg("--config")
        .arg(b.dir.path().join("config.toml"))
        .envs(nats.node_env("b"))
        .env("SNAPTRACK_ADMIN_TOKEN", "adm-0123456789abcdefghijklmn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("empty the data directory to seed"), "{err}");

    // A snapshot no trusted node signed, claiming to be newer, is refused: a fresh node
    // reads the stream from 1 instead, and is just as right.
    let stranger = std::sync::Arc::new(snaptrack_auth::signing::Signer::generate());
    let forger = snaptrack_auth::bus::JetStreamBus::connect(
        &nats.url(),
        "forger",
        1,
        &Default::default(),
        stranger,
    )
    .await
    .unwrap();
    let (_, created) = forger.identity().await.unwrap();
    let bytes = std::fs::read(snapshot_files(&a).pop().unwrap()).unwrap();
    assert!(
        snaptrack_auth::cluster::shared::share(&forger, &created, last + 100, &bytes)
            .await
            .unwrap()
    );
    let c = spawn_node(&nats, "c", CLUSTER_CONFIG).await;
    assert!(
        c.output()
            .iter()
            .any(|l| l.contains("not signed by a trusted node")),
        "{:?}",
        c.output()
            .iter()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
    );
    while applied_seq(&c).await < last {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    check(&c).await;
}

/// A data directory the binary before token restrictions left at a clean stop: its snapshot
/// is format 1 (see `tests/fixtures/format1/tokens.json`).
#[tokio::test]
async fn a_data_directory_from_before_token_restrictions_restarts_from_its_snapshot() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("tokens.json")).unwrap()).unwrap();
    let mut app = spawn_app_with(Opts {
        data_from: Some(fixture.join("data")),
        ..Default::default()
    })
    .await;
    assert_eq!(
        replayed_events(&app),
        0,
        "restored from the format-1 snapshot"
    );
    assert!(!app.output().iter().any(|l| l.contains("snapshot unusable")));
    let (live, revoked) = (&about["live"], &about["revoked"]);
    let r = app
        .login(
            about["user"]["email"].as_str().unwrap(),
            about["user"]["password"].as_str().unwrap(),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let cookie = session_cookie(&r).unwrap();
    let v = body(app.list_tokens(&cookie).await).await;
    let tokens = v["tokens"].as_array().unwrap();
    let listed = tokens.iter().find(|t| t["id"] == live["token_id"]).unwrap();
    assert_eq!(listed["requests"], live["requests"]);
    assert!(listed["scopes"].is_null() && listed["allowed_ips"].is_null());
    let r = app.get_test(live["token"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get_test(revoked["token"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The next stop writes today's format, which the next start restores.
    app.restart().await;
    assert_eq!(replayed_events(&app), 0);
    let r = app.get_test(live["token"].as_str().unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// The list shows where each token was last used from: at once (this node's view), then
/// from the usage record (`usage_recorded` v2's `last_ip`) after a restart.
#[tokio::test]
async fn the_list_shows_each_tokens_last_client_address_across_restarts() {
    let config = "trusted_proxies = [\"127.0.0.1\"]\n[tiers.pro]\nrequests = 1000\nwindow_secs = 1\n[history]\nusage_record_secs = 1\n";
    let mut app = spawn_app_with_config(config).await;
    let (_, token, id) = app.user_with_token("a@example.com", "pro").await;
    let from = |app: &TestApp, ip: &'static str| {
        app.client
            .get(format!("{}/test", app.url))
            .bearer_auth(&token)
            .header("X-Forwarded-For", ip)
            .send()
    };
    let listed = |v: serde_json::Value| {
        v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id.as_str())
            .unwrap()["last_used_from"]
            .clone()
    };
    let c = app.session("a@example.com").await;
    assert!(
        listed(body(app.list_tokens(&c).await).await).is_null(),
        "never used"
    );
    assert_eq!(
        from(&app, "203.0.113.9").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        from(&app, "2001:db8::5").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(listed(body(app.list_tokens(&c).await).await), "2001:db8::5");
    // The period ends within a second or two; its record carries the address.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = String::from_utf8(app.replay(&["--type", "usage_recorded"]).stdout).unwrap();
        if out.contains("\"last_ip\":\"2001:db8::5\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no record with the address: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.restart().await;
    let c = app.session("a@example.com").await;
    assert_eq!(listed(body(app.list_tokens(&c).await).await), "2001:db8::5");
}
