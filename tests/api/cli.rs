//! The binary as operators and customers use it: restarts, signals, flags, replay, test-token.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::Command;

#[tokio::test]
async fn a_restart_keeps_users_tokens_revocations_and_the_rate_count() {
    let config = "[tiers.starter]\nrequests = 5\nwindow_secs = 3600\n";
    let mut app = spawn_app_with_config(config).await;
    let (id, live, _) = app.user_with_token("a@example.com", "starter").await;
    let (_, dead, dead_id) = app.user_with_token("b@example.com", "pro").await;
    app.revoke_admin(&dead_id).await;
    for _ in 0..3 {
        assert_eq!(app.get_test(&live).await.status(), StatusCode::OK);
    }
    // SIGTERM: graceful stop, exit 0, usage flushed.
    app.restart().await;
    let c = app.session("a@example.com").await;
    let list = body(app.list_tokens(&c).await).await;
    assert_eq!(list["tokens"][0]["requests"], 3, "per-token usage survives");
    assert!(list["tokens"][0]["last_used_at"].is_string());
    let v = body(app.get_test(&live).await).await;
    assert_eq!(v["user"]["id"], id);
    assert_eq!(
        v["rate_limit"]["remaining"], 1,
        "restarting does not reset the limit"
    );
    assert_eq!(app.get_test(&dead).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.create_user("c@example.com", "pro").await, 3);
    // A clean stop saves the size of the token index (the live and the revoked token), for the
    // next start to size its maps before replay.
    assert!(app.stop().await.success());
    let log = snaptrack_auth::bus::SledLog::open(&app.data_dir()).unwrap();
    assert_eq!(log.meta("token_count").unwrap().as_deref(), Some("2"));
}

#[tokio::test]
async fn sigterm_exits_zero_and_logs_go_to_stderr() {
    let mut app = spawn_app().await;
    let status = app.stop().await;
    assert!(status.success(), "{status:?}");
    let out = app.output();
    assert_eq!(
        out.iter()
            .filter(|l| l.starts_with("listening on http://127.0.0.1:"))
            .count(),
        1
    );
}

fn run(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("SNAPTRACK_ADMIN_TOKEN")
        .output()
        .unwrap()
}

fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.is_empty());
    err
}

#[test]
fn bad_flags_configs_and_data_dirs_are_one_line_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let err = one_line_error(&run(&["serve", "--bogus"], p));
    assert!(err.contains("--bogus"), "{err}");
    let err = one_line_error(&run(&["serve", "--config", "/nonexistent.toml"], p));
    assert!(
        err.contains("/nonexistent.toml") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::write(p.join("bad.toml"), "[tiers.pro]\nrequests = \"many\"\n").unwrap();
    let err = one_line_error(&run(&["serve", "--config", "bad.toml"], p));
    assert!(
        err.contains("bad.toml") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::write(p.join("afile"), "not a directory").unwrap();
    let err = one_line_error(&run(
        &["serve", "--listen", "127.0.0.1:0", "--data", "afile"],
        p,
    ));
    assert!(err.contains("afile") && err.lines().count() == 1, "{err}");
    let err = one_line_error(&run(&["serve", "--listen", "nonsense"], p));
    assert!(err.contains("nonsense"), "{err}");
    let err = one_line_error(&run(&["serve", "--nats", "not a url"], p));
    assert!(
        err.contains("not a url") && err.lines().count() == 1,
        "{err}"
    );
    std::fs::write(p.join("stale.toml"), "[cluster]\nmax_staleness_ms = 0\n").unwrap();
    let err = one_line_error(&run(&["serve", "--config", "stale.toml"], p));
    assert!(err.contains("cluster") && err.lines().count() == 1, "{err}");
    let err = one_line_error(&run(&["replay", "--data", "nowhere"], p));
    assert!(err.contains("nowhere"), "{err}");
    let err = one_line_error(&run(&["replay", "--data", ".", "--since", "yesterday"], p));
    assert!(err.contains("yesterday"), "{err}");
    assert_eq!(run(&["--help"], p).status.code(), Some(0));
}

#[tokio::test]
async fn a_damaged_log_refuses_to_start_naming_the_seq() {
    let mut app = spawn_app().await;
    app.create_user("a@example.com", "pro").await;
    app.stop().await;
    {
        let log = snaptrack_auth::bus::SledLog::open(&app.data_dir()).unwrap();
        log.insert_raw_for_tests(1, b"\x00\x00\x00\x00garbage")
            .unwrap();
        log.flush_blocking().unwrap();
    }
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(app.data_dir())
        .output()
        .unwrap();
    let err = one_line_error(&out);
    assert!(err.contains("seq 1"), "{err}");
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn replay_prints_the_audit_log_filters_it_and_answers_what_was_valid_at_t() {
    let app = spawn_app().await;
    let (a, _, ta) = app.user_with_token("a@example.com", "pro").await;
    let (_, _, tb) = app.user_with_token("b@example.com", "pro").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // distinct seconds for --at
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    app.revoke_admin(&ta).await;
    // While the server runs.
    let all = lines(&app.replay(&[]));
    let seqs: Vec<u64> = all.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "oldest first, no gaps"
    );
    let types: Vec<&str> = all.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        &types[..5],
        [
            "user_registered",
            "token_issued",
            "user_registered",
            "token_issued",
            "token_revoked"
        ]
    );
    for e in &all {
        for key in [
            "event_id",
            "seq",
            "occurred_at",
            "node_id",
            "type",
            "version",
            "data",
        ] {
            assert!(e.get(key).is_some(), "{key} in {e}");
        }
        // At v2: token_issued (scopes and allowlists), user_registered (a credential id, no
        // hash), token_revoked (by whom) and usage_recorded (last addresses); the rest at v1.
        let at_v2 = [
            "token_issued",
            "user_registered",
            "token_revoked",
            "usage_recorded",
        ];
        let want = if at_v2.iter().any(|t| e["type"] == *t) {
            2
        } else {
            1
        };
        assert!(e["data"].get("password_hash").is_none(), "{e}");
        assert_eq!(e["version"], want, "{e}");
        assert_eq!(e["node_id"], "n1");
    }
    let revoked = lines(&app.replay(&["--type", "token_revoked"]));
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["data"]["token_id"], ta.as_str());
    let mine = lines(&app.replay(&["--user", &a.to_string()]));
    assert!(mine.iter().all(|e| e["data"]["user_id"] == json!(a)));
    assert_eq!(mine.len(), 3);
    let t = between.to_rfc3339();
    assert!(lines(&app.replay(&["--until", &t])).len() == 4);
    assert!(lines(&app.replay(&["--since", &t, "--type", "token_revoked"])).len() == 1);
    // At `between`, both tokens were valid; now only b's.
    let at_then = lines(&app.replay(&["--at", &t]));
    assert_eq!(at_then.len(), 2);
    let now = lines(&app.replay(&["--at", &chrono::Utc::now().to_rfc3339()]));
    assert_eq!(now.len(), 1);
    assert_eq!(now[0]["token_id"], tb.as_str());
    let out = app.replay(&["--type", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn test_token_reports_the_user_and_limit_or_the_servers_error() {
    let app = spawn_app().await;
    let (_, token, tid) = app.user_with_token("john@example.com", "pro").await;
    let run = |token: &str| {
        Command::new(BIN)
            .arg("test-token")
            .env("SNAPTRACK_API_TOKEN", token)
            .env("SNAPTRACK_API_URL", &app.url)
            .output()
            .unwrap()
    };
    let out = run(&token);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("API is working"), "{text}");
    assert!(text.contains("John Doe <john@example.com>"), "{text}");
    assert!(text.contains("plan: pro"), "{text}");
    assert!(text.contains("19 of 20 remaining"), "{text}");
    assert!(!text.contains(&token));
    app.revoke_admin(&tid).await;
    let out = run(&token);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("401") && err.contains("Unauthorized"), "{err}");
    assert!(!err.contains(&token));
    let out = Command::new(BIN)
        .arg("test-token")
        .env_remove("SNAPTRACK_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The email and password `--demo` printed ("demo user created: email E password P").
fn demo_credentials(app: &TestApp) -> (String, String) {
    let line = app
        .output()
        .into_iter()
        .find(|l| l.starts_with("demo user created"))
        .expect("credentials printed");
    let parts: Vec<&str> = line.split_whitespace().collect();
    (parts[4].to_owned(), parts[6].to_owned())
}

#[tokio::test]
async fn demo_creates_a_pro_user_once() {
    let mut app = spawn_app().await;
    app.stop().await;
    app.start(&["--demo"]).await;
    let (email, password) = demo_credentials(&app);
    let r = app.login(&email, &password).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["user"]["subscription_tier"], "pro");
    app.stop().await;
    app.start(&["--demo"]).await;
    let out = app.output();
    assert_eq!(
        out.iter()
            .filter(|l| l.starts_with("demo user created"))
            .count(),
        1
    );
    assert!(out.iter().any(|l| l.starts_with("demo user exists")));
}

#[tokio::test]
async fn the_demo_password_follows_the_configured_policy() {
    let mut app = spawn_app_with_config("min_password_length = 32\n").await;
    app.stop().await;
    app.start(&["--demo"]).await;
    let (email, password) = demo_credentials(&app);
    assert_eq!(password.chars().count(), 32);
    assert_eq!(app.login(&email, &password).await.status(), StatusCode::OK);
}
