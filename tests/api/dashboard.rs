//! The dashboard's JSON endpoints: login, sessions, generate, list, revoke, regenerate,
//! ownership, CSRF, login throttling.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn login_sets_a_strict_http_only_cookie_and_wrong_credentials_look_the_same() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    let r = app.login("John@Example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("snaptrack_session="));
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    assert!(set.contains("Path=/"), "{set}");
    assert!(!set.contains("Secure"), "plain HTTP: no Secure");
    let v = body(r).await;
    assert_eq!(v["user"]["email"], "john@example.com");
    let wrong = app.login("john@example.com", "wrong password").await;
    let unknown = app.login("nobody@example.com", "wrong password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert!(session_cookie(&wrong).is_none());
    let (a, b) = (body(wrong).await, body(unknown).await);
    assert_eq!(a, json!({"success": false, "error": "Invalid credentials"}));
    assert_eq!(a, b);
}

#[tokio::test]
async fn login_accepts_an_html_form() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    let r = app
        .client
        .post(format!("{}/login", app.url))
        .form(&[("email", "john@example.com"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(session_cookie(&r).is_some());
    let r = app
        .client
        .post(format!("{}/login", app.url))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn generate_list_revoke_regenerate() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    let c = app.session("john@example.com").await;
    let r = app.generate(&c, &json!({"name": "first"})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let first = body(r).await;
    let r = app
        .generate(&c, &json!({"name": "second", "expires_in_days": 7}))
        .await;
    let second = body(r).await;
    let t1 = first["token"].as_str().unwrap();
    let t2 = second["token"].as_str().unwrap();
    assert_eq!(app.get_test(t1).await.status(), StatusCode::OK);
    // The list: newest first, hints only, never a token or hash.
    let r = app.list_tokens(&c).await;
    assert_eq!(r.status(), StatusCode::OK);
    let list = body(r).await;
    let text = list.to_string();
    assert!(!text.contains(t1) && !text.contains(t2));
    assert!(!text.contains("hash") && !text.contains("sha256"));
    let items = list["tokens"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["name"], "second");
    assert_eq!(items[1]["name"], "first");
    for key in [
        "id",
        "name",
        "hint",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ] {
        assert!(items[0].get(key).is_some(), "{key}");
    }
    // Revoke: the next request with the old token is a 401.
    let id1 = first["token_id"].as_str().unwrap();
    let r = app.revoke(&c, id1).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await["revoked"]["token_id"], id1);
    assert_eq!(app.get_test(t1).await.status(), StatusCode::UNAUTHORIZED);
    let list = body(app.list_tokens(&c).await).await;
    assert!(list["tokens"][1]["revoked_at"].is_string());
    // Regenerate: old token dead, new one works, same name and lifetime.
    let id2 = second["token_id"].as_str().unwrap();
    let r = app.regenerate(&c, id2).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let third = body(r).await;
    let t3 = third["token"].as_str().unwrap();
    assert_eq!(third["name"], "second");
    assert!(third["expires_at"].is_string());
    assert_eq!(app.get_test(t2).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.get_test(t3).await.status(), StatusCode::OK);
    assert_eq!(app.regenerate(&c, id2).await.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn another_users_token_is_not_found_and_stays_valid() {
    let app = spawn_app().await;
    let (_, victim_token, victim_id) = app.user_with_token("victim@example.com", "pro").await;
    app.create_user("mallory@example.com", "pro").await;
    let c = app.session("mallory@example.com").await;
    let r = app.revoke(&c, &victim_id).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "Not found"})
    );
    assert_eq!(
        app.regenerate(&c, &victim_id).await.status(),
        StatusCode::NOT_FOUND
    );
    let list = body(app.list_tokens(&c).await).await;
    assert_eq!(list["tokens"], json!([]));
    assert_eq!(app.get_test(&victim_token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn without_a_live_session_nothing_works() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    assert_eq!(
        app.list_tokens("snaptrack_session=forged").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = app
        .client
        .get(format!("{}/dashboard/tokens", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let c = app.session("john@example.com").await;
    assert_eq!(app.list_tokens(&c).await.status(), StatusCode::OK);
    let r = app.dash(Method::POST, "/logout", &c).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("snaptrack_session=;"));
    assert_eq!(app.list_tokens(&c).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.generate(&c, &json!({"name": "x"})).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cross_site_state_changes_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    let c = app.session("john@example.com").await;
    let r = app
        .dash(Method::POST, "/dashboard/tokens", &c)
        .header("Origin", "https://evil.example")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(r).await["success"], false);
    let r = app
        .dash(Method::POST, "/dashboard/tokens", &c)
        .header("Sec-Fetch-Site", "cross-site")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(body(app.list_tokens(&c).await).await["tokens"], json!([]));
    // Same origin is fine.
    let r = app
        .dash(Method::POST, "/dashboard/tokens", &c)
        .header("Origin", app.url.clone())
        .header("Sec-Fetch-Site", "same-origin")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let config = "[throttle]\nlogin_failures = 3\nlogin_window_secs = 600\n";
    let app = spawn_app_with_config(config).await;
    app.create_user("john@example.com", "pro").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("john@example.com", "nope nope").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = app.login("john@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    let other = client_from("127.0.0.3");
    let r = other
        .post(format!("{}/login", app.url))
        .json(&json!({"email": "john@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn sessions_expire() {
    let config = "session_ttl_secs = 1\n";
    let app = spawn_app_with_config(config).await;
    app.create_user("john@example.com", "pro").await;
    let r = app.login("john@example.com", PASSWORD).await;
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("Max-Age=1"), "{set}");
    let c = session_cookie(&r).unwrap();
    assert_eq!(app.list_tokens(&c).await.status(), StatusCode::OK);
    // Wait out the configured lifetime (the session's own end, not a guess).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(app.list_tokens(&c).await.status(), StatusCode::UNAUTHORIZED);
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/settings/api-keys", app.url))
        .header("Cookie", &c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_guesses_cannot_outrun_the_login_throttle() {
    let config = "[throttle]\nlogin_failures = 3\nlogin_window_secs = 600\n";
    let app = spawn_app_with_config(config).await;
    app.create_user("john@example.com", "pro").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = reqwest::Client::new();
        let url = format!("{}/login", app.url);
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"email": "john@example.com", "password": format!("guess number {i}")});
            client.post(url).json(&body).send().await.unwrap().status()
        }));
    }
    let mut checked = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert!(checked <= 3, "{checked} guesses were checked");
}

#[tokio::test]
async fn a_failed_login_names_only_existing_accounts_in_the_audit_log() {
    let mut app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    app.login("john@example.com", "wrong password").await;
    // Someone pastes a password into the email field.
    app.login("hunter2@secret.pw", "whatever it is").await;
    app.stop().await;
    let out = String::from_utf8(app.replay(&["--type", "login_failed"]).stdout).unwrap();
    assert_eq!(out.lines().count(), 2);
    assert!(out.contains("john@example.com"));
    assert!(out.contains("<unknown account>"));
    assert!(!out.contains("hunter2"));
}

#[tokio::test]
async fn the_origin_check_ignores_case() {
    let app = spawn_app().await;
    app.create_user("john@example.com", "pro").await;
    let c = app.session("john@example.com").await;
    let local = app.url.replace("127.0.0.1", "localhost");
    let r = app
        .client
        .post(format!("{local}/dashboard/tokens"))
        .header("Cookie", &c)
        .header("Origin", local.replace("localhost", "LocalHost"))
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}
