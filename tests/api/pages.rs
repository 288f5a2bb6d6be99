//! The dashboard pages over plain HTTP: redirects, security headers, the plan notice.

use crate::helpers::*;
use reqwest::StatusCode;

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn pages_need_a_session_and_carry_a_content_security_policy() {
    let app = spawn_app().await;
    let r = no_redirects()
        .get(format!("{}/settings/api-keys", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/login");
    let r = app.get("/login").await;
    assert_eq!(r.status(), StatusCode::OK);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(r.text().await.unwrap().contains("<form id=\"login-form\""));
    for asset in ["app.css", "login.js", "api-keys.js"] {
        assert_eq!(
            app.get(&format!("/assets/{asset}")).await.status(),
            StatusCode::OK
        );
    }
    assert_eq!(
        app.get("/assets/nope.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_free_plan_is_told_api_access_needs_starter_and_names_are_escaped() {
    let app = spawn_app().await;
    let r = app
        .post_user(&serde_json::json!({"email": "f@example.com", "name": "<script>alert(1)</script>", "password": PASSWORD, "tier": "free"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let cookie = app.session("f@example.com").await;
    let r = no_redirects()
        .get(format!("{}/settings/api-keys", app.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("Starter plan or higher"));
    assert!(!html.contains("<script>alert(1)</script>"));
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // With a session, the login page goes straight to the keys.
    let r = no_redirects()
        .get(format!("{}/login", app.url))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
}
