//! `GET /test` and `GET /auth`: the exact bodies, headers, and every row of the failure table.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

const SMALL_LIMITS: &str = "[tiers.starter]\nrequests = 3\nwindow_secs = 3600\n";

#[tokio::test]
async fn test_returns_the_product_documents_body_and_counts_the_call() {
    let app = spawn_app().await;
    let (id, token, _) = app.user_with_token("john@example.com", "pro").await;
    let r = app.get_test(&token).await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    let v = body(r).await;
    let reset = v["rate_limit"]["reset"].as_i64().unwrap();
    assert_eq!(
        v,
        json!({
            "success": true,
            "message": "API is working",
            "user": {"id": id, "name": "John Doe", "email": "john@example.com", "subscription_tier": "pro"},
            "rate_limit": {"limit": 20, "remaining": 19, "reset": reset}
        })
    );
    let now = chrono::Utc::now().timestamp();
    assert!(
        reset > now && reset <= now + 60,
        "reset {reset} is the window's end"
    );
    assert_eq!(h["x-ratelimit-limit"], "20");
    assert_eq!(h["x-ratelimit-remaining"], "19");
    assert_eq!(h["x-ratelimit-reset"], reset.to_string().as_str());
    assert_eq!(h["ratelimit-policy"], "\"default\";q=20;w=60");
    assert!(h["ratelimit"]
        .to_str()
        .unwrap()
        .starts_with("\"default\";r=19;t="));
    let v = body(app.get_test(&token).await).await;
    assert_eq!(v["rate_limit"]["remaining"], 18);
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    for scheme in ["bearer", "BEARER", "BeArEr"] {
        let r = app
            .get_with_auth("/test", format!("{scheme} {token}").as_bytes())
            .await;
        assert_eq!(r.status(), StatusCode::OK, "{scheme}");
    }
}

async fn assert_unauthorized(r: reqwest::Response, case: &str) {
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{case}");
    assert_eq!(r.headers()["www-authenticate"], "Bearer", "{case}");
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "Unauthorized"}),
        "{case}"
    );
}

#[tokio::test]
async fn every_malformed_or_unknown_credential_is_a_401_with_the_documents_body() {
    let app = spawn_app().await;
    let (_, token, token_id) = app.user_with_token("a@example.com", "pro").await;
    // Missing header.
    assert_unauthorized(app.get("/test").await, "missing").await;
    // Malformed headers.
    let typo = {
        let mut b = token.clone().into_bytes();
        b[10] = if b[10] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    let unknown = "snpt_0000000000000000000000000000000000000000".to_owned();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", b"".to_vec()),
        ("scheme only", b"Bearer".to_vec()),
        ("scheme and space", b"Bearer ".to_vec()),
        ("basic", format!("Basic {token}").into_bytes()),
        ("no space", format!("Bearer{token}").into_bytes()),
        ("token only", token.clone().into_bytes()),
        ("two tokens", format!("Bearer {token} {token}").into_bytes()),
        ("non-ascii", b"Bearer \xe2\x82\xac\xff".to_vec()),
        ("truncated", format!("Bearer {}", &token[..50]).into_bytes()),
        ("too long", format!("Bearer {token}x").into_bytes()),
        (
            "bad prefix",
            format!("Bearer sk_{}", &token[3..]).into_bytes(),
        ),
        ("bad checksum", format!("Bearer {typo}").into_bytes()),
        (
            "unknown, bad checksum",
            format!("Bearer {unknown}000000").into_bytes(),
        ),
        ("huge", format!("Bearer {}", "a".repeat(8000)).into_bytes()),
    ];
    for (case, header) in cases {
        assert_unauthorized(app.get_with_auth("/test", &header).await, case).await;
        assert_unauthorized(app.get_with_auth("/auth", &header).await, case).await;
    }
    // Two Authorization headers.
    let r = app
        .client
        .get(format!("{}/test", app.url))
        .header("Authorization", format!("Bearer {token}"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_unauthorized(r, "two headers").await;
    // Well-formed but unknown: a fresh token of the right shape.
    let foreign = snaptrack_auth::domain::ApiToken::generate();
    assert_unauthorized(app.get_test(foreign.expose()).await, "unknown").await;
    // Revoked.
    assert_eq!(app.revoke_admin(&token_id).await.status(), StatusCode::OK);
    assert_unauthorized(app.get_test(&token).await, "revoked").await;
}

#[tokio::test]
async fn the_free_plan_is_a_403_with_the_documents_body() {
    let app = spawn_app().await;
    let (_, token, _) = app.user_with_token("free@example.com", "free").await;
    let r = app.get_test(&token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "API access is not available on your plan", "current_plan": "free"})
    );
}

#[tokio::test]
async fn an_inactive_or_expired_paid_plan_is_a_403_naming_the_status() {
    let app = spawn_app().await;
    let (id, token, _) = app.user_with_token("a@example.com", "pro").await;
    let r = app
        .put_subscription(id, &json!({"tier": "pro", "status": "inactive"}))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get_test(&token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "API access is not available on your plan",
               "current_plan": "pro", "subscription_status": "inactive"})
    );
    let r = app
        .put_subscription(
            id,
            &json!({"tier": "starter", "status": "active", "expires_at": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body(app.get_test(&token).await).await;
    assert_eq!(v["current_plan"], "starter");
    assert_eq!(v["subscription_status"], "expired");
    // A future end date is in force.
    app.put_subscription(
        id,
        &json!({"tier": "starter", "status": "active", "expires_at": "2999-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_exhausted_window_is_a_429_and_failures_do_not_count() {
    let app = spawn_app_with_config(SMALL_LIMITS).await;
    let (id, token, _) = app.user_with_token("a@example.com", "starter").await;
    // A 403 first: the plan check comes before the rate limit and counts nothing.
    app.put_subscription(id, &json!({"tier": "free"})).await;
    for _ in 0..5 {
        assert_eq!(app.get_test(&token).await.status(), StatusCode::FORBIDDEN);
    }
    app.put_subscription(id, &json!({"tier": "starter"})).await;
    for remaining in [2, 1, 0] {
        let v = body(app.get_test(&token).await).await;
        assert_eq!(v["rate_limit"]["remaining"], remaining);
    }
    let r = app.get_test(&token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = retry_after(&r);
    assert!((1..=3600).contains(&retry));
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    let v = body(r).await;
    assert_eq!(v["success"], false);
    assert_eq!(v["error"], "Rate limit exceeded");
    assert_eq!(v["rate_limit"]["limit"], 3);
    assert_eq!(v["rate_limit"]["remaining"], 0);
    // The order: a bad token is still a 401, a 429 does not count either.
    assert_eq!(
        app.get_test("snpt_nope").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get_test(&token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // /auth counts against the same limit.
    assert_eq!(
        app.get_with_auth("/auth", format!("Bearer {token}").as_bytes())
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn forward_auth_answers_with_identity_headers_and_an_empty_body() {
    let app = spawn_app().await;
    let (id, token, token_id) = app.user_with_token("a@example.com", "business").await;
    let r = app
        .get_with_auth("/auth", format!("Bearer {token}").as_bytes())
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert_eq!(h["x-auth-user-id"], id.to_string().as_str());
    assert_eq!(h["x-auth-tier"], "business");
    assert_eq!(h["x-auth-token-id"], token_id.as_str());
    assert_eq!(h["x-ratelimit-limit"], "100");
    assert_eq!(h["x-ratelimit-remaining"], "99");
    assert!(r.bytes().await.unwrap().is_empty());
    // And it counts: /test now shows 98 left.
    assert_eq!(
        body(app.get_test(&token).await).await["rate_limit"]["remaining"],
        98
    );
}

#[tokio::test]
async fn a_plan_change_takes_effect_on_the_next_request() {
    let app = spawn_app().await;
    let (id, token, _) = app.user_with_token("a@example.com", "pro").await;
    assert_eq!(
        body(app.get_test(&token).await).await["rate_limit"]["limit"],
        20
    );
    app.put_subscription(id, &json!({"tier": "business"})).await;
    let v = body(app.get_test(&token).await).await;
    assert_eq!(v["rate_limit"]["limit"], 100);
    assert_eq!(v["user"]["subscription_tier"], "business");
    app.put_subscription(id, &json!({"tier": "free"})).await;
    assert_eq!(app.get_test(&token).await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn repeated_failures_throttle_one_address_and_not_another() {
    let config = "[throttle]\nauth_failures = 5\nauth_window_secs = 3600\n";
    let app = spawn_app_with_config(config).await;
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    for _ in 0..5 {
        assert_eq!(
            app.get_test("garbage").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = app.get_test("garbage").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(body(r).await["success"], false);
    // Even a valid token from the throttled address waits.
    assert_eq!(
        app.get_test(&token).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client address (127.0.0.2 reaches the server on loopback) is unaffected.
    let other = client_from("127.0.0.2");
    let r = other
        .get(format!("{}/test", app.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled_not_the_proxy() {
    // 127.0.0.1 plays the load balancer; 127.0.0.2 is a client that is not one.
    let config = "trusted_proxies = [\"127.0.0.1\"]\n[throttle]\nauth_failures = 3\nauth_window_secs = 3600\n";
    let app = spawn_app_with_config(config).await;
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    let via = |client: &reqwest::Client, forwarded_for: &str, bearer: &str| {
        client
            .get(format!("{}/test", app.url))
            .header("X-Forwarded-For", forwarded_for)
            .bearer_auth(bearer)
            .send()
    };
    let proxy = reqwest::Client::new();
    // One client behind the proxy fails until it is throttled...
    for _ in 0..3 {
        let r = via(&proxy, "198.51.100.7", "garbage").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = via(&proxy, "198.51.100.7", &token).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...while another client behind the same proxy is not.
    let r = via(&proxy, "198.51.100.8", &token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A peer that is not a trusted proxy cannot pass its failures on to someone else's
    // address: they count against its own.
    let other = client_from("127.0.0.2");
    for _ in 0..3 {
        let r = via(&other, "198.51.100.8", "garbage").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = via(&other, "198.51.100.9", &token).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let r = via(&proxy, "198.51.100.8", &token).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
