//! Token restrictions: scopes from the catalogue, address allowlists, and regenerate with a
//! grace period; each rule and each error, the order of the checks, and that a refused call
//! never counts.

use crate::helpers::{
    body, client_from, replayed_events, spawn_app_with_config, until_refused, TestApp,
};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const CONFIG: &str = r#"
scopes = ["websites:read", "websites:write", "reports:read"]
trusted_proxies = ["127.0.0.1/32"]
[tiers.pro]
requests = 1000
window_secs = 60
"#;

/// `GET path` with the token, from `client`, with extra headers.
async fn call(
    app: &TestApp,
    client: &Client,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut r = client
        .get(format!("{}{path}", app.url))
        .header("Authorization", format!("Bearer {token}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

/// A pro user with a session; returns (user id, cookie).
async fn user(app: &TestApp, email: &str, tier: &str) -> (u64, String) {
    let id = app.create_user(email, tier).await;
    (id, app.session(email).await)
}

/// Generates a token through the dashboard with `extra` fields; returns (token, id).
async fn generate(app: &TestApp, cookie: &str, extra: Value) -> (String, String) {
    let mut b = json!({"name": "restricted"});
    b.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let r = app.generate(cookie, &b).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = body(r).await;
    (
        v["token"].as_str().unwrap().to_owned(),
        v["token_id"].as_str().unwrap().to_owned(),
    )
}

/// The list entry of one token.
async fn listed(app: &TestApp, cookie: &str, id: &str) -> Value {
    let v = body(app.list_tokens(cookie).await).await;
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not listed: {v}"))
}

fn remaining(r: &Response) -> i64 {
    r.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn scopes_come_from_the_catalogue_and_callers_require_them() {
    let app = spawn_app_with_config(CONFIG).await;
    let c = &app.client;
    let (_, cookie) = user(&app, "ann@example.com", "pro").await;
    let (narrow, narrow_id) = generate(
        &app,
        &cookie,
        json!({"scopes": ["reports:read", "websites:read"]}),
    )
    .await;
    let (full, _) = generate(&app, &cookie, json!({})).await;

    // The list shows them, in catalogue order; a token without scopes has every scope.
    let entry = listed(&app, &cookie, &narrow_id).await;
    assert_eq!(entry["scopes"], json!(["websites:read", "reports:read"]));
    assert_eq!(entry["allowed_ips"], Value::Null);
    let r = call(&app, c, "/auth", &narrow, &[]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-scopes"], "websites:read reports:read");
    let r = call(&app, c, "/auth", &full, &[]).await;
    assert_eq!(
        r.headers()["x-auth-scopes"],
        "websites:read websites:write reports:read"
    );

    // Required by header or query, on /auth and /test.
    for path in ["/auth", "/test"] {
        let r = call(
            &app,
            c,
            path,
            &narrow,
            &[("X-Required-Scope", "websites:write")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            body(r).await,
            json!({"success": false, "error": "Token lacks the scope websites:write",
                   "required_scope": "websites:write"})
        );
        let r = call(
            &app,
            c,
            &format!("{path}?scope=websites%3Awrite"),
            &narrow,
            &[],
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let r = call(&app, c, &format!("{path}?scope=reports:read"), &narrow, &[]).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let r = call(
            &app,
            c,
            path,
            &full,
            &[("X-Required-Scope", "websites:write")],
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "{path}: every scope");
    }
    // A scope outside the catalogue is nobody's, not even a full token's (a proxy's typo
    // refuses rather than admits); something that is not a scope name is the caller's 400.
    let r = call(
        &app,
        c,
        "/auth",
        &full,
        &[("X-Required-Scope", "websites:wirte")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["required_scope"], "websites:wirte");
    // A client cannot override the scope its proxy requires: values that differ are refused,
    // the same value twice is one requirement.
    let r = call(
        &app,
        c,
        "/auth?scope=websites:write",
        &narrow,
        &[("X-Required-Scope", "websites:read")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        c,
        "/auth?scope=websites:write&scope=websites:read",
        &narrow,
        &[],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .get(format!("{}/auth", app.url))
        .bearer_auth(&narrow)
        .header("X-Required-Scope", "websites:read")
        .header("X-Required-Scope", "websites:write")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = call(
        &app,
        c,
        "/auth?scope=websites:read",
        &narrow,
        &[("X-Required-Scope", "websites:read")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(&app, c, "/auth", &full, &[("X-Required-Scope", "a b")]).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Malformed before the token is looked at: a 400 even with no valid token.
    let r = call(
        &app,
        c,
        "/auth",
        "snpt_nope",
        &[("X-Required-Scope", "a b")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(r).await["success"], false);

    // Unknown names are a 422 naming them, and an empty list is refused; nothing is issued.
    let before = body(app.list_tokens(&cookie).await).await["tokens"]
        .as_array()
        .unwrap()
        .len();
    let r = app
        .generate(
            &cookie,
            &json!({"name": "x", "scopes": ["websites:read", "admin", "billing:write"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let v = body(r).await;
    assert_eq!(v["error"], "Unknown scopes: admin, billing:write");
    assert_eq!(v["unknown_scopes"], json!(["admin", "billing:write"]));
    for bad in [json!([]), json!("websites:read"), json!([1])] {
        let r = app
            .generate(&cookie, &json!({"name": "x", "scopes": bad}))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let after = body(app.list_tokens(&cookie).await).await["tokens"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after);

    // The admin API takes them too.
    let uid = app.create_user("bob@example.com", "pro").await;
    let r = app
        .post_token(uid, &json!({"name": "ci", "scopes": ["reports:read"]}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t = body(r).await["token"].as_str().unwrap().to_owned();
    let r = call(&app, c, "/auth", &t, &[]).await;
    assert_eq!(r.headers()["x-auth-scopes"], "reports:read");
}

#[tokio::test]
async fn checks_run_401_then_plan_then_scope_and_address_then_429_and_refusals_never_count() {
    let app = spawn_app_with_config(CONFIG).await;
    let c = &app.client;
    let (_, cookie) = user(&app, "ann@example.com", "starter").await;
    let (t, id) = generate(
        &app,
        &cookie,
        json!({"scopes": ["websites:read"], "allowed_ips": ["127.0.0.1"]}),
    )
    .await;
    let lacks = [("X-Required-Scope", "websites:write")];
    let has = [("X-Required-Scope", "websites:read")];
    let elsewhere = client_from("127.0.0.2");

    // Refused calls first: none of them counts.
    for _ in 0..3 {
        assert_eq!(
            call(&app, c, "/auth", &t, &lacks).await.status(),
            StatusCode::FORBIDDEN
        );
        let r = call(&app, &elsewhere, "/auth", &t, &has).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            body(r).await,
            json!({"success": false, "error": "Token not allowed from this address"})
        );
    }
    let r = call(&app, c, "/test", &t, &has).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(remaining(&r), 9, "the first counted call of the window");

    // Use the window up: a scope or address refusal still answers 403, not 429.
    for _ in 0..9 {
        assert_eq!(
            call(&app, c, "/auth", &t, &has).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        call(&app, c, "/auth", &t, &has).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        call(&app, c, "/auth", &t, &lacks).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&app, &elsewhere, "/auth", &t, &has).await.status(),
        StatusCode::FORBIDDEN
    );

    // The plan's 403 comes before the scope's.
    let uid = app.create_user("free@example.com", "free").await;
    let r = app
        .post_token(uid, &json!({"name": "x", "scopes": ["reports:read"]}))
        .await;
    let free = body(r).await["token"].as_str().unwrap().to_owned();
    let r = call(&app, c, "/auth", &free, &lacks).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["current_plan"], "free");

    // And 401 before everything.
    assert_eq!(app.revoke(&cookie, &id).await.status(), StatusCode::OK);
    assert_eq!(
        call(&app, &elsewhere, "/auth", &t, &lacks).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn allowlists_take_ipv4_ipv6_and_networks_and_see_the_client_behind_a_trusted_proxy() {
    let app = spawn_app_with_config(CONFIG).await;
    let c = &app.client;
    let (_, cookie) = user(&app, "ann@example.com", "pro").await;
    let (t, id) = generate(
        &app,
        &cookie,
        json!({"allowed_ips": ["127.0.0.4/30", "2001:db8:1::/48", "2001:db8::5"]}),
    )
    .await;
    assert_eq!(
        listed(&app, &cookie, &id).await["allowed_ips"],
        json!(["127.0.0.4/30", "2001:db8:1::/48", "2001:db8::5/128"])
    );
    // Direct peers.
    for (from, want) in [
        ("127.0.0.5", StatusCode::OK),
        ("127.0.0.7", StatusCode::OK),
        ("127.0.0.8", StatusCode::FORBIDDEN),
        ("127.0.0.3", StatusCode::FORBIDDEN),
    ] {
        let r = call(&app, &client_from(from), "/auth", &t, &[]).await;
        assert_eq!(r.status(), want, "from {from}");
    }
    // Behind the trusted proxy (127.0.0.1): the forwarded client, IPv6 included, whole (not
    // cut to its /64 as the throttles count it).
    for (xff, want) in [
        ("2001:db8::5", StatusCode::OK),
        ("2001:db8::6", StatusCode::FORBIDDEN),
        ("2001:db8:1:ffff::9", StatusCode::OK),
        ("[2001:db8::5]:443", StatusCode::OK),
        ("127.0.0.6", StatusCode::OK),
        ("::ffff:127.0.0.6", StatusCode::OK),
        ("198.51.100.1", StatusCode::FORBIDDEN),
        // The proxy itself is not on the list, and a client's forged entry to the left of the
        // one the proxy appended is ignored.
        ("127.0.0.5, 198.51.100.1", StatusCode::FORBIDDEN),
    ] {
        let r = call(&app, c, "/auth", &t, &[("X-Forwarded-For", xff)]).await;
        assert_eq!(r.status(), want, "X-Forwarded-For {xff}");
    }
    // From a peer that is not a trusted proxy, the header is not believed.
    let r = call(
        &app,
        &client_from("127.0.0.3"),
        "/auth",
        &t,
        &[("X-Forwarded-For", "2001:db8::5")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Bad lists are a 422 on the field, and issue nothing.
    for bad in [
        json!(["10.0.0.0/33"]),
        json!(["example.com"]),
        json!([]),
        json!("10.0.0.1"),
        json!(vec!["10.0.0.1"; 33]),
    ] {
        let r = app
            .generate(&cookie, &json!({"name": "x", "allowed_ips": bad}))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        let v = body(r).await;
        if bad.is_array() {
            assert_eq!(v["field"], "allowed_ips", "{v}");
        }
    }
    assert_eq!(
        body(app.list_tokens(&cookie).await).await["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn regenerate_with_a_grace_period_keeps_the_old_token_until_it_ends() {
    let mut app = spawn_app_with_config(CONFIG).await;
    let (_, cookie) = user(&app, "ann@example.com", "pro").await;
    let (old, old_id) = generate(
        &app,
        &cookie,
        json!({"scopes": ["reports:read"], "allowed_ips": ["127.0.0.0/8"]}),
    )
    .await;

    // Bad graces change nothing.
    for bad in [
        json!({"grace_secs": -1}),
        json!({"grace_secs": 604_801}),
        json!({"grace_secs": "an hour"}),
        json!({"grace": 60}),
    ] {
        let r = app.regenerate_with(&cookie, &old_id, &bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let r = app
        .dash(
            reqwest::Method::POST,
            &format!("/dashboard/tokens/{old_id}/regenerate"),
            &cookie,
        )
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        body(app.list_tokens(&cookie).await).await["tokens"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(app.get_test(&old).await.status(), StatusCode::OK);

    let grace = 3;
    let r = app
        .regenerate_with(&cookie, &old_id, &json!({"grace_secs": grace}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = body(r).await;
    let new = v["token"].as_str().unwrap().to_owned();
    let new_id = v["token_id"].as_str().unwrap().to_owned();
    // The new token keeps the old one's restrictions.
    let r = app.get_test(&new).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("x-token-expires-at").is_none());
    let r = call(&app, &app.client, "/auth", &new, &[]).await;
    assert_eq!(r.headers()["x-auth-scopes"], "reports:read");
    let entry = listed(&app, &cookie, &new_id).await;
    assert_eq!(entry["allowed_ips"], json!(["127.0.0.0/8"]));

    // The old one works on, saying when it stops; the list shows it.
    let r = app.get_test(&old).await;
    assert_eq!(r.status(), StatusCode::OK);
    let stops: i64 = r.headers()["x-token-expires-at"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!((now..=now + grace).contains(&stops), "{stops} vs {now}");
    let entry = listed(&app, &cookie, &old_id).await;
    assert_eq!(entry["replaced_by"], new_id.as_str());
    assert_eq!(entry["revoked_at"], Value::Null);
    let expires_at = chrono::DateTime::parse_from_rfc3339(entry["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp();
    assert_eq!(expires_at, stops);
    // It can be replaced only once.
    let r = app
        .regenerate_with(&cookie, &old_id, &json!({"grace_secs": 60}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Across a restart, the grace still ends when it said.
    app.restart().await;
    let cookie = app.session("ann@example.com").await;
    assert_eq!(app.get_test(&old).await.status(), StatusCode::OK);
    until_refused(&app, &old, Duration::from_secs(grace as u64 + 5)).await;
    assert!(chrono::Utc::now().timestamp() >= stops);
    assert_eq!(app.get_test(&new).await.status(), StatusCode::OK);

    // A token in its grace can still be revoked at once.
    let r = app
        .regenerate_with(&cookie, &new_id, &json!({"grace_secs": 3600}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.get_test(&new).await.status(), StatusCode::OK);
    assert_eq!(app.revoke(&cookie, &new_id).await.status(), StatusCode::OK);
    assert_eq!(app.get_test(&new).await.status(), StatusCode::UNAUTHORIZED);

    // Without a body, today's behaviour: the old token stops at once.
    let (t, id) = generate(&app, &cookie, json!({})).await;
    assert_eq!(
        app.regenerate(&cookie, &id).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.get_test(&t).await.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .regenerate_with(&cookie, &id, &json!({"grace_secs": 0}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "already revoked");

    // The admin API regenerates any user's token the same way.
    let (t, id) = generate(&app, &cookie, json!({})).await;
    let r = app.regenerate_admin(&id, &json!({"grace_secs": 600})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert!(app
        .get_test(&t)
        .await
        .headers()
        .contains_key("x-token-expires-at"));

    // The log says all of it, and never the tokens.
    let out = app.replay(&[]);
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let issued = events
        .iter()
        .find(|e| e["type"] == "token_issued" && e["data"]["token_id"] == old_id.as_str())
        .unwrap();
    assert_eq!(issued["version"], 2);
    assert_eq!(issued["data"]["scopes"], json!(["reports:read"]));
    assert_eq!(issued["data"]["allowed_ips"], json!(["127.0.0.0/8"]));
    let rotated = events
        .iter()
        .find(|e| e["type"] == "token_rotated" && e["data"]["token_id"] == old_id.as_str())
        .unwrap();
    assert_eq!(rotated["data"]["replaced_by"], new_id.as_str());
    for t in [&old, &new] {
        assert!(!text.contains(t.as_str()));
    }
    // `replay --at` a moment inside the grace: both tokens valid, the old one with its end
    // and its successor, both with their restrictions.
    let inside = rotated["occurred_at"].as_str().unwrap();
    let out = app.replay(&["--at", inside]);
    let valid: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let at = |id: &str| valid.iter().find(|t| t["token_id"] == id).cloned();
    let was = at(&old_id).expect("the old token was valid in its grace");
    assert_eq!(was["replaced_by"], new_id.as_str());
    assert_eq!(was["scopes"], json!(["reports:read"]));
    assert_eq!(at(&new_id).unwrap()["allowed_ips"], json!(["127.0.0.0/8"]));
}

#[tokio::test]
async fn restrictions_survive_a_restart_from_the_snapshot_and_from_a_full_replay() {
    let mut app = spawn_app_with_config(CONFIG).await;
    let (_, cookie) = user(&app, "ann@example.com", "pro").await;
    let (t, _) = generate(
        &app,
        &cookie,
        json!({"scopes": ["websites:read"], "allowed_ips": ["127.0.0.2"]}),
    )
    .await;
    check(&app, &t).await;
    // A clean stop writes a snapshot, which the start restores.
    app.restart().await;
    assert_eq!(replayed_events(&app), 0, "restored from the snapshot");
    check(&app, &t).await;
    // Without snapshots, the log alone.
    app.stop().await;
    std::fs::remove_dir_all(app.data_dir().join("snapshots")).ok();
    app.start(&[]).await;
    assert!(replayed_events(&app) > 0, "replayed from the log");
    check(&app, &t).await;
}

/// The token of the restart test: scope websites:read, only from 127.0.0.2.
async fn check(app: &TestApp, t: &str) {
    let from2 = client_from("127.0.0.2");
    let ok = call(
        app,
        &from2,
        "/auth",
        t,
        &[("X-Required-Scope", "websites:read")],
    )
    .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let lacks = call(
        app,
        &from2,
        "/auth",
        t,
        &[("X-Required-Scope", "reports:read")],
    )
    .await;
    assert_eq!(lacks.status(), StatusCode::FORBIDDEN);
    let elsewhere = call(app, &app.client, "/auth", t, &[]).await;
    assert_eq!(elsewhere.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn restrictions_and_grace_hold_on_every_node_of_a_cluster() {
    let config = format!(
        "scopes = [\"websites:read\", \"websites:write\"]\n{}\n\
         [tiers.pro]\nrequests = 1000\nwindow_secs = 60\n",
        crate::nats::CLUSTER_CONFIG
    );
    let c = crate::nats::spawn_cluster_with(&config).await;
    let [a, b, cc] = &c.nodes[..] else {
        unreachable!()
    };
    let uid = a.create_user("ann@example.com", "pro").await;
    let r = a
        .post_token(
            uid,
            &json!({"name": "ci", "scopes": ["websites:read"], "allowed_ips": ["127.0.0.1"]}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v = body(r).await;
    let (old, old_id) = (
        v["token"].as_str().unwrap().to_owned(),
        v["token_id"].as_str().unwrap().to_owned(),
    );
    // Issued on a, restricted on b and c at once.
    for node in [b, cc] {
        let r = call(node, &node.client, "/auth", &old, &[]).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-auth-scopes"], "websites:read");
        let lacks = [("X-Required-Scope", "websites:write")];
        let r = call(node, &node.client, "/auth", &old, &lacks).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = call(node, &client_from("127.0.0.2"), "/auth", &old, &[]).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    // Regenerated on c with a grace: the old token works on a and b, then stops on each
    // by itself, with no further command.
    let r = cc
        .regenerate_admin(&old_id, &json!({"grace_secs": 2}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let new = body(r).await["token"].as_str().unwrap().to_owned();
    for node in [a, b] {
        assert_eq!(node.get_test(&new).await.status(), StatusCode::OK);
        let r = node.get_test(&old).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers().contains_key("x-token-expires-at"));
    }
    for node in [a, b, cc] {
        until_refused(node, &old, Duration::from_secs(8)).await;
        assert_eq!(node.get_test(&new).await.status(), StatusCode::OK);
    }
    // Nothing was published for the end of the grace: the time decided.
    let out = a.replay(&["--type", "token_revoked"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(&old_id), "{text}");
}
