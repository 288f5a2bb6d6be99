//! The account: change password (ends every other session), log out everywhere, and no
//! password hash in anything that leaves the process: not on `snaptrack.auth.>`, not in
//! `replay`, not in a snapshot; logins still work after restarts, upgrades and on every node.

use crate::helpers::*;
use crate::nats::{spawn_cluster, spawn_node, CLUSTER_CONFIG};
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::time::Duration;

const NEW_PASSWORD: &str = "a brand new passphrase, long and odd 7391";

fn no_hash(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.contains("$argon2"), "{what} holds a password hash");
}

#[tokio::test]
async fn change_password_ends_the_other_sessions_and_log_out_everywhere_ends_all() {
    let mut app = spawn_app().await;
    app.create_user("ann@example.com", "pro").await;
    let here = app.session("ann@example.com").await;
    let elsewhere = app.session("ann@example.com").await;

    // A wrong current password changes nothing, and counts as a failed login.
    let r = app
        .change_password(&here, "not it at all", NEW_PASSWORD)
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["error"], "The current password is wrong");
    // A weak new one is a 422 on new_password; bad JSON a 400; no session a 401.
    let r = app.change_password(&here, PASSWORD, "password").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(r).await["error"]
        .as_str()
        .unwrap()
        .contains("new_password"));
    let r = app
        .dash(reqwest::Method::POST, "/dashboard/password", &here)
        .header("Content-Type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = app.change_password("x=y", PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.list_tokens(&elsewhere).await.status(), StatusCode::OK);
    assert_eq!(
        app.login("ann@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );

    // The change: this session stays, every other one ends, the old password stops.
    let r = app.change_password(&here, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    // `elsewhere` and the session of the login just above.
    assert_eq!(body(r).await["sessions_ended"], 2);
    assert_eq!(app.list_tokens(&here).await.status(), StatusCode::OK);
    assert_eq!(
        app.list_tokens(&elsewhere).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app.login("ann@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.login("ann@example.com", NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let third = session_cookie(&r).unwrap();

    // Log out everywhere: every session, this one included.
    let r = app.end_all_sessions(&here).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["sessions_ended"], 2);
    for s in [&here, &third] {
        assert_eq!(app.list_tokens(s).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        app.end_all_sessions(&here).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // The security log says both, and the log holds no hash.
    let s = session_cookie(&app.login("ann@example.com", NEW_PASSWORD).await).unwrap();
    let v = body(
        app.dash(reqwest::Method::GET, "/dashboard/events", &s)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let types: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(types.contains(&"password_changed"), "{types:?}");
    assert!(
        types.contains(&"login_failed"),
        "the wrong current password: {types:?}"
    );
    assert!(types.iter().filter(|t| **t == "session_ended").count() >= 2);
    let changed = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "password_changed")
        .unwrap();
    assert_eq!(changed["sessions_ended"], 2);
    let out = app.replay(&[]);
    no_hash("replay", &out.stdout);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"password_changed\""));

    // After a restart (from the snapshot) and after a full replay, the new password works.
    app.restart().await;
    assert_eq!(replayed_events(&app), 0);
    for f in std::fs::read_dir(app.data_dir().join("snapshots")).unwrap() {
        no_hash("a snapshot", &std::fs::read(f.unwrap().path()).unwrap());
    }
    let r = app.login("ann@example.com", NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    app.stop().await;
    std::fs::remove_dir_all(app.data_dir().join("snapshots")).unwrap();
    app.start(&[]).await;
    let r = app.login("ann@example.com", NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.login("ann@example.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn no_hash_on_the_stream_or_in_replay_and_logins_work_on_every_node() {
    let c = spawn_cluster().await;
    let client = async_nats::connect(c.nats.url()).await.unwrap();
    let mut said = client.subscribe("snaptrack.auth.v1.>").await.unwrap();
    client.flush().await.unwrap();
    let (a, b, cc) = (&c.nodes[0], &c.nodes[1], &c.nodes[2]);
    a.create_user("ann@example.com", "pro").await;
    // Registered on a: logs in on b and c at once (the hash comes from the bucket).
    let on_b = b.session("ann@example.com").await;
    let on_c = cc.session("ann@example.com").await;
    // Changed on b: c's session ends, the new password works on a and c, the old nowhere.
    let r = b.change_password(&on_b, PASSWORD, NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    for node in [a, b, cc] {
        let r = node.login("ann@example.com", NEW_PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = node.login("ann@example.com", PASSWORD).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        cc.list_tokens(&on_c).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Nothing said on the service's subjects holds a hash; the events say what happened.
    let mut kinds = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), said.next()).await {
        no_hash(m.subject.as_str(), &m.payload);
        kinds.push(m.subject.to_string());
    }
    for s in [
        "snaptrack.auth.v1.user.registered",
        "snaptrack.auth.v1.password.changed",
    ] {
        assert!(kinds.iter().any(|k| k == s), "{s} not in {kinds:?}");
    }
    for node in [a, b, cc] {
        no_hash("replay", &node.replay(&[]).stdout);
    }
    // A node that joins later, with an empty data directory, logs the user in too.
    let d = spawn_node(&c.nats, "d", CLUSTER_CONFIG).await;
    let r = d.login("ann@example.com", NEW_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A data directory from before the credential store (its `user_registered` is v1, with the
/// hash), read in full without its snapshot: the hash moves to the credential store on the
/// way, the login works, and `replay` shows v2 without it.
#[tokio::test]
async fn an_old_log_replayed_in_full_keeps_its_logins_and_replay_shows_no_hash() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1");
    let about: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("tokens.json")).unwrap()).unwrap();
    // The log alone: no snapshot to take the hash from.
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(copy.path().join("events")).unwrap();
    for f in std::fs::read_dir(fixture.join("data/events")).unwrap() {
        let f = f.unwrap();
        let to = copy.path().join("events").join(f.file_name());
        if f.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(to).unwrap();
        } else {
            std::fs::copy(f.path(), to).unwrap();
        }
    }
    let app = spawn_app_with(Opts {
        data_from: Some(copy.path().to_owned()),
        ..Default::default()
    })
    .await;
    assert_eq!(replayed_events(&app), 4, "the whole log");
    let (email, password) = (
        about["user"]["email"].as_str().unwrap(),
        about["user"]["password"].as_str().unwrap(),
    );
    assert_eq!(app.login(email, password).await.status(), StatusCode::OK);
    let out = app.replay(&["--type", "user_registered"]);
    no_hash("replay", &out.stdout);
    let line: serde_json::Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["version"], 2);
    assert_eq!(line["data"]["credential_id"], "v1-user-1");
}
