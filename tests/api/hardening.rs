//! What one account, one address or one operator mistake can do: throttles per account,
//! the bound on what memory keeps of ended tokens, the password and name rules, the admin
//! token's minimum, `Secure` behind proxies, JSON for the framework's own errors, and
//! `/metrics` on an address of its own.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn token_changes_through_the_dashboard_are_throttled_per_user() {
    let app =
        spawn_app_with_config("[throttle]\ntoken_changes = 4\ntoken_changes_window_secs = 86400\n")
            .await;
    app.create_user("ann@example.com", "pro").await;
    app.create_user("bob@example.com", "pro").await;
    let ann = app.session("ann@example.com").await;
    let v = body(app.generate(&ann, &json!({"name": "a"})).await).await;
    let id = v["token_id"].as_str().unwrap().to_owned();
    let v = body(app.regenerate(&ann, &id).await).await;
    let id = v["token_id"].as_str().unwrap().to_owned();
    assert_eq!(app.revoke(&ann, &id).await.status(), StatusCode::OK);
    assert_eq!(
        app.generate(&ann, &json!({"name": "b"})).await.status(),
        StatusCode::CREATED
    );
    // The fifth change in the window: refused, and nothing changes.
    let before = body(app.list_tokens(&ann).await).await["tokens"].clone();
    let r = app.generate(&ann, &json!({"name": "c"})).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&r) > 0);
    let v = body(r).await;
    assert_eq!(
        v,
        json!({"success": false, "error": "Too many token changes"})
    );
    assert_eq!(body(app.list_tokens(&ann).await).await["tokens"], before);
    // Revoking and regenerating count too; another user and the admin API are unaffected.
    let listed = before.as_array().unwrap();
    let live = listed.iter().find(|t| t["revoked_at"].is_null()).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        app.revoke(&ann, &live).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let bob = app.session("bob@example.com").await;
    assert_eq!(
        app.generate(&bob, &json!({"name": "b"})).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(app.revoke_admin(&live).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_from_any_address_and_for_unknown_emails() {
    let config = "[throttle]\nlogin_failures = 100\naccount_login_failures = 5\naccount_login_window_secs = 86400\n";
    let app = spawn_app_with_config(config).await;
    app.create_user("ann@example.com", "pro").await;
    app.create_user("bob@example.com", "pro").await;
    let login = |client: reqwest::Client, email: &str, password: &str| {
        let url = format!("{}/login", app.url);
        let body = json!({"email": email, "password": password});
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    for email in ["ann@example.com", "nobody@example.com"] {
        // Five wrong passwords, each from another address.
        for i in 0..5 {
            let r = login(
                client_from(&format!("127.0.0.{}", 10 + i)),
                email,
                "wrong wrong",
            )
            .await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{email} attempt {i}");
        }
        // Then every address is refused for that email, the right password included, the
        // same way whether or not it has an account.
        let password = if email.starts_with("ann") {
            PASSWORD
        } else {
            "wrong wrong"
        };
        let r = login(client_from("127.0.0.20"), email, password).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{email}");
        assert!(retry_after(&r) > 0);
        assert_eq!(
            body(r).await,
            json!({"success": false, "error": "Too many failed login attempts"})
        );
        // The email's look-alike in case is the same account.
        let r = login(client_from("127.0.0.21"), &email.to_uppercase(), password).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // Another account is not affected.
    let r = login(client_from("127.0.0.22"), "bob@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn passwords_names_and_emails_follow_the_rules() {
    let app = spawn_app().await;
    let user = |email: &str, name: &str, password: &str| json!({"email": email, "name": name, "password": password, "tier": "pro"});
    for (password, reason) in [
        ("short pass", "at least 12 characters"),
        ("            ", "whitespace"),
        ("password1234", "too common or too easy to guess"),
        ("qwertyuiopas", "too common or too easy to guess"),
    ] {
        let r = app.post_user(&user("a@example.com", "A", password)).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{password:?}");
        let v = body(r).await;
        assert_eq!(v["field"], "password");
        assert!(
            v["error"].as_str().unwrap().contains(reason),
            "{password:?}: {v}"
        );
    }
    for (email, name, field) in [
        ("ann\u{200b}@example.com", "Ann", "email"),
        ("ann@example.com\u{202e}", "Ann", "email"),
        ("ann@example.com", "Ann\u{200b}", "name"),
        ("ann@example.com", "\u{202e}nnA", "name"),
    ] {
        let r = app.post_user(&user(email, name, PASSWORD)).await;
        assert_eq!(
            r.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{email:?} {name:?}"
        );
        assert_eq!(body(r).await["field"], field);
    }
    assert_eq!(
        app.post_user(&user("ann@example.com", "Ann", PASSWORD))
            .await
            .status(),
        StatusCode::CREATED
    );
    // A look-alike after NFKC and lower-casing is the same address.
    for twin in ["ＡＮＮ@example.com", "Ann@Example.com", "ａnn@example.com"] {
        let r = app.post_user(&user(twin, "Ann", PASSWORD)).await;
        assert_eq!(r.status(), StatusCode::CONFLICT, "{twin}");
    }
    assert_eq!(
        app.login("ＡＮＮ@example.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[test]
fn a_short_admin_token_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for token in ["x", "change-me", &"a".repeat(23)] {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("SNAPTRACK_ADMIN_TOKEN", token)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{token}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least 24 characters"), "{err}");
        assert!(err.contains("openssl rand"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

fn set_cookie(r: &reqwest::Response) -> String {
    r.headers()["set-cookie"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_session_cookie_is_secure_behind_a_trusted_https_proxy_only() {
    let trusted = spawn_app_with_config("trusted_proxies = [\"127.0.0.1\"]\n").await;
    trusted.create_user("ann@example.com", "pro").await;
    let login = |app: &TestApp, proto: Option<&'static str>| {
        let mut req = app
            .client
            .post(format!("{}/login", app.url))
            .json(&json!({"email": "ann@example.com", "password": PASSWORD}));
        if let Some(p) = proto {
            req = req.header("x-forwarded-proto", p);
        }
        req.send()
    };
    let r = login(&trusted, Some("https")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(set_cookie(&r).contains("Secure"), "{}", set_cookie(&r));
    let r = login(&trusted, Some("http")).await.unwrap();
    assert!(!set_cookie(&r).contains("Secure"));
    let r = login(&trusted, None).await.unwrap();
    assert!(!set_cookie(&r).contains("Secure"));
    // From a peer that is not a trusted proxy, the header means nothing.
    let untrusted = spawn_app_with_config("trusted_proxies = [\"10.0.0.0/8\"]\n").await;
    untrusted.create_user("ann@example.com", "pro").await;
    let r = login(&untrusted, Some("https")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!set_cookie(&r).contains("Secure"));
    // cookie_secure forces it.
    let forced = spawn_app_with_config("cookie_secure = true\n").await;
    forced.create_user("ann@example.com", "pro").await;
    let r = login(&forced, None).await.unwrap();
    assert!(set_cookie(&r).contains("Secure"));
}

#[tokio::test]
async fn framework_errors_are_json_and_nothing_is_sniffed() {
    let app = spawn_app().await;
    let is_json_error = |r: &reqwest::Response| {
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
            && r.headers()["x-content-type-options"] == "nosniff"
    };
    // A body over the limit, to a route that reads raw bytes and to a JSON one.
    let big = "x".repeat(64 * 1024);
    for path in ["/login", "/admin/users"] {
        let r = app
            .client
            .post(format!("{}{path}", app.url))
            .bearer_auth(&app.admin_token)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert!(is_json_error(&r), "{path}: {:?}", r.headers());
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["success"], false);
        assert!(v["error"].is_string());
    }
    let cases = [
        (
            reqwest::Method::PUT,
            "/test",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            reqwest::Method::GET,
            "/nowhere",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            reqwest::Method::POST,
            "/admin/users",
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            reqwest::Method::POST,
            "/admin/users",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, content_type, status) in cases {
        let mut req = app
            .client
            .request(method.clone(), format!("{}{path}", app.url))
            .bearer_auth(&app.admin_token)
            .body("{not json");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        assert!(is_json_error(&r), "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["success"], false);
    }
    // Successful JSON answers too.
    let r = app.get("/healthz").await;
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn metrics_can_live_on_an_address_of_their_own() {
    let app = spawn_app_with_config("[ops]\nlisten = \"127.0.0.1:0\"\n").await;
    let ops = app
        .output()
        .iter()
        .find_map(|l| l.strip_prefix("metrics on ").map(str::to_owned))
        .expect("the ops address is printed");
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let r = reqwest::get(format!("{ops}/metrics")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("snaptrack_applied_seq"));
    for path in ["/healthz", "/readyz"] {
        let r = reqwest::get(format!("{ops}{path}")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    assert_eq!(
        reqwest::get(format!("{ops}/test")).await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "only operations there"
    );
    // Without [ops], /metrics stays where it was.
    let plain = spawn_app().await;
    assert_eq!(plain.get("/metrics").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn memory_keeps_the_active_and_the_last_hundred_ended_tokens_per_user() {
    let mut app = spawn_app().await;
    let user = app.create_user("ann@example.com", "pro").await;
    // 130 tokens issued and revoked (the admin API is not throttled), 3 left active.
    let mut ended = Vec::new();
    for _ in 0..130 {
        let (token, id) = app.issue_token(user).await;
        assert_eq!(app.revoke_admin(&id).await.status(), StatusCode::OK);
        ended.push((token, id));
    }
    let mut active = Vec::new();
    for _ in 0..3 {
        active.push(app.issue_token(user).await.0);
    }
    check_retention(&app, user, &ended, &active).await;
    app.restart().await;
    check_retention(&app, user, &ended, &active).await;
}

/// What `memory_keeps_…` expects of the lists and checks, before and after a restart.
async fn check_retention(app: &TestApp, user: u64, ended: &[(String, String)], active: &[String]) {
    let cookie = app.session("ann@example.com").await;
    let listed = body(app.list_tokens(&cookie).await).await;
    let listed = listed["tokens"].as_array().unwrap().clone();
    assert_eq!(
        listed.len(),
        103,
        "3 active and the 100 most recently ended"
    );
    let ids: Vec<&str> = listed.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&ended[29].1.as_str()));
    assert!(ids.contains(&ended[30].1.as_str()));
    let v = body(app.get_user(user).await).await;
    assert_eq!(v["tokens"]["items"].as_array().unwrap().len(), 103);
    // Forgotten or not, an ended token is a 401; an active one works.
    for (token, _) in [&ended[0], &ended[129]] {
        assert_eq!(app.get_test(token).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(app.get_test(&active[0]).await.status(), StatusCode::OK);
    // A forgotten token is gone for commands too.
    assert_eq!(
        app.revoke_admin(&ended[0].1).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_forgotten_token_is_refused_on_every_node_without_a_catch_up() {
    let c = crate::nats::spawn_cluster().await;
    let [a, b, _] = &c.nodes[..] else {
        unreachable!()
    };
    let user = a.create_user("ann@example.com", "pro").await;
    let mut ended = Vec::new();
    for _ in 0..102 {
        let (token, id) = a.issue_token(user).await;
        assert_eq!(a.revoke_admin(&id).await.status(), StatusCode::OK);
        ended.push(token);
    }
    let before = metric(b, "snaptrack_catchup_misses_total").await;
    for token in &ended[..2] {
        assert_eq!(b.get_test(token).await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        metric(b, "snaptrack_catchup_misses_total").await,
        before,
        "no catch-up for a forgotten token"
    );
    // A token nobody issued still makes the node catch up first (read-your-writes).
    let unknown = snaptrack_auth::domain::ApiToken::generate();
    assert_eq!(
        b.get_test(unknown.expose()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        metric(b, "snaptrack_catchup_misses_total").await,
        before + 1.0
    );
}
