//! The admin API: users, plans, tokens; and every way a request to it can be bad.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn creating_users_assigns_ids_from_one_and_refuses_duplicates() {
    let app = spawn_app().await;
    let r = app
        .post_user(&json!({"email": "John@Example.com", "name": "John Doe", "password": PASSWORD, "tier": "pro"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        body(r).await,
        json!({"success": true, "user": {"id": 1, "name": "John Doe", "email": "john@example.com", "subscription_tier": "pro"}})
    );
    assert_eq!(app.create_user("jane@example.com", "starter").await, 2);
    let r = app
        .post_user(&json!({"email": "JOHN@example.com", "name": "Other", "password": PASSWORD, "tier": "free"}))
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(body(r).await["success"], false);
}

/// Registrations at once (96, on one HTTP worker) each flush the credential store: sled's `flush_async` called
/// concurrently could wait for ever (spacejam/sled#1241), and the node stopped answering
/// anything: this test failed that way before the fix.
#[tokio::test]
async fn many_registrations_at_once_all_complete() {
    let app = spawn_app_with(Opts {
        config: Some("workers = 1\n".into()),
        ..Opts::default()
    })
    .await;
    let all = futures_util::future::join_all((0..96).map(|i| {
        let app = &app;
        async move {
            app.create_user(&format!("user{i}@example.com"), "pro")
                .await
        }
    }));
    let mut ids = tokio::time::timeout(std::time::Duration::from_secs(60), all)
        .await
        .expect("registrations stuck");
    ids.sort();
    assert_eq!(ids, (1..=96).collect::<Vec<u64>>());
}

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let good = json!({"email": "a@example.com", "name": "A", "password": PASSWORD, "tier": "pro"});
    for (field, value) in [
        ("email", json!("not-an-email")),
        ("name", json!("")),
        ("password", json!("short")),
        ("tier", json!("platinum")),
    ] {
        let mut b = good.clone();
        b[field] = value;
        let r = app.post_user(&b).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{field}");
        let v = body(r).await;
        assert_eq!(v["field"], field);
        assert!(v["error"].as_str().unwrap().contains(field));
    }
    // Wrong type, missing and unknown fields: 422 naming the problem.
    let r = app
        .post_user(&json!({"email": 5, "name": "A", "password": PASSWORD, "tier": "pro"}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .post_user(&json!({"email": "a@example.com", "password": PASSWORD, "tier": "pro"}))
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(r).await["error"].as_str().unwrap().contains("name"));
    let mut extra = good.clone();
    extra["admin"] = json!(true);
    let r = app.post_user(&extra).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body(r).await["error"].as_str().unwrap().contains("admin"));
    // Bad JSON 400, wrong content type 415, oversized 413.
    let raw = |ct: &str, b: Vec<u8>| {
        app.admin(Method::POST, "/admin/users")
            .header("content-type", ct.to_owned())
            .body(b)
            .send()
    };
    let r = raw("application/json", b"{\"email\":".to_vec())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(r).await["success"], false);
    let r = raw("text/plain", serde_json::to_vec(&good).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut big = good.clone();
    big["name"] = json!("x".repeat(100_000));
    let r = raw("application/json", serde_json::to_vec(&big).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body(r).await["success"], false);
    // Nothing was created by any of that.
    assert_eq!(app.get_user(1).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.create_user("a@example.com", "pro").await, 1);
}

#[tokio::test]
async fn the_admin_token_is_required_and_without_one_the_admin_api_does_not_exist() {
    let app = spawn_app().await;
    let body_ = json!({"email": "a@example.com", "name": "A", "password": PASSWORD, "tier": "pro"});
    let r = app
        .client
        .post(format!("{}/admin/users", app.url))
        .json(&body_)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "Unauthorized"})
    );
    let r = app
        .client
        .post(format!("{}/admin/users", app.url))
        .bearer_auth(format!("{}x", app.admin_token))
        .json(&body_)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let hidden = spawn_app_with(Opts {
        no_admin: true,
        ..Default::default()
    })
    .await;
    let r = hidden
        .client
        .get(format!("{}/admin/users/1", hidden.url))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_user_shows_plan_and_token_summaries_and_plans_can_change() {
    let app = spawn_app().await;
    let (id, _, tid) = app.user_with_token("a@example.com", "pro").await;
    app.issue_token(id).await;
    app.revoke_admin(&tid).await;
    let v = body(app.get_user(id).await).await;
    assert_eq!(v["user"]["subscription_tier"], "pro");
    assert_eq!(v["subscription"]["status"], "active");
    assert_eq!(v["tokens"]["total"], 2);
    assert_eq!(v["tokens"]["active"], 1);
    assert!(!v.to_string().contains("sha256") && !v.to_string().contains("hash"));
    let r = app
        .put_subscription(
            id,
            &json!({"tier": "business", "status": "active", "expires_at": "2030-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body(r).await;
    assert_eq!(v["user"]["subscription_tier"], "business");
    assert_eq!(v["subscription"]["expires_at"], "2030-01-01T00:00:00Z");
    for bad in [
        json!({"tier": "gold"}),
        json!({"tier": "pro", "status": "paused"}),
        json!({"tier": "pro", "expires_at": "tomorrow"}),
    ] {
        let r = app.put_subscription(id, &bad).await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    assert_eq!(
        app.put_subscription(999, &json!({"tier": "pro"}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get_user(999).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.admin(Method::GET, "/admin/users/abc")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn issuing_and_revoking_tokens() {
    let app = spawn_app().await;
    let id = app.create_user("a@example.com", "pro").await;
    let r = app
        .post_token(id, &json!({"name": "deploy", "expires_in_days": 30}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let v = body(r).await;
    let token = v["token"].as_str().unwrap();
    assert!(token.starts_with("snpt_") && token.len() == 51);
    assert_eq!(v["name"], "deploy");
    assert_eq!(v["hint"], format!("snpt_…{}", &token[47..]));
    let expires = chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap()).unwrap();
    let days = (expires.to_utc() - chrono::Utc::now()).num_hours();
    assert!((29 * 24..=30 * 24).contains(&days), "{days}");
    assert_eq!(app.get_test(token).await.status(), StatusCode::OK);
    for bad in [
        json!({"name": ""}),
        json!({"name": "x", "expires_in_days": 0}),
        json!({"name": "x", "expires_in_days": 99999}),
    ] {
        assert_eq!(
            app.post_token(id, &bad).await.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    assert_eq!(
        app.post_token(99, &json!({"name": "x"})).await.status(),
        StatusCode::NOT_FOUND
    );
    let tid = v["token_id"].as_str().unwrap();
    let r = app.revoke_admin(tid).await;
    assert_eq!(r.status(), StatusCode::OK);
    let v = body(r).await;
    assert_eq!(v["revoked"]["token_id"], tid);
    assert_eq!(v["revoked"]["propagated_to"], json!(["n1"]));
    assert_eq!(v["revoked"]["pending"], json!([]));
    assert!(v["revoked"]["revoked_at"].is_string());
    assert_eq!(app.get_test(token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.revoke_admin(tid).await.status(), StatusCode::CONFLICT);
    assert_eq!(
        app.revoke_admin("not-a-uuid").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.revoke_admin(&uuid::Uuid::new_v4().to_string())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let app = spawn_app().await;
    let r = app.get("/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body(r).await,
        json!({"success": false, "error": "Not found"})
    );
    let r = app
        .client
        .post(format!("{}/test", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body(r).await["success"], false);
}
