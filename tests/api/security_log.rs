//! Settings → Security log: each user's own events, newest first, paginated, with no hash.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

async fn events(app: &TestApp, cookie: &str, before: Option<&Value>) -> Value {
    let path = match before {
        Some(c) => format!("/dashboard/events?before={c}"),
        None => "/dashboard/events".to_owned(),
    };
    let r = app
        .dash(reqwest::Method::GET, &path, cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    body(r).await
}

fn types(v: &Value) -> Vec<String> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn each_user_sees_only_their_own_events_newest_first_in_pages() {
    let mut app = spawn_app().await;
    let ann = app.create_user("ann@example.com", "pro").await;
    app.create_user("bob@example.com", "pro").await;
    // A failed login for ann, then her session, then 60 tokens (one revoked).
    assert_eq!(
        app.login("ann@example.com", "not her password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let ann_c = app.session("ann@example.com").await;
    let mut last = String::new();
    for _ in 0..60 {
        last = app.issue_token(ann).await.1;
    }
    app.revoke_admin(&last).await;
    let first = events(&app, &ann_c, None).await;
    let got = types(&first);
    assert_eq!(got.len(), 50, "a page");
    assert_eq!(got[0], "token_revoked", "newest first");
    assert!(got[1..].iter().all(|t| t == "token_issued"));
    let cursor = first["next"].clone();
    assert!(cursor.is_u64(), "{first}");
    let second = events(&app, &ann_c, Some(&cursor)).await;
    assert_eq!(
        types(&second),
        vec![
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "token_issued",
            "login_succeeded",
            "login_failed",
            "user_registered",
        ]
    );
    assert!(second["next"].is_null());
    let login = &second["events"][11];
    assert_eq!(login["client_ip"], "127.0.0.1");
    // No hash of anything, ever.
    let text = format!("{first}{second}");
    assert!(
        !text.contains("argon2") && !text.contains("sha256"),
        "{text}"
    );
    // Bob sees his own account and login only.
    let bob_c = app.session("bob@example.com").await;
    assert_eq!(
        types(&events(&app, &bob_c, None).await),
        vec!["login_succeeded", "user_registered"]
    );
    // Kept across a restart; bad cursors are a 422; no session is a 401.
    app.restart().await;
    let ann_c = app.session("ann@example.com").await;
    let again = events(&app, &ann_c, None).await;
    assert_eq!(types(&again)[0], "login_succeeded");
    assert_eq!(types(&again)[1], "token_revoked");
    let r = app
        .dash(reqwest::Method::GET, "/dashboard/events?before=x", &ann_c)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        app.get("/dashboard/events").await.status(),
        StatusCode::UNAUTHORIZED
    );
    let page = app.get("/settings/security-log").await;
    assert!(
        page.url().path().ends_with("/login"),
        "logged out: to the login page"
    );
}
