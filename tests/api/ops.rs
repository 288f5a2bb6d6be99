//! Health, readiness and metrics.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    app.get_test(&token).await;
    app.get_test("nope").await;
    app.get("/no/such/route").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    for needle in [
        "snaptrack_http_requests_total{route=\"/test\",status=\"200\"} 1",
        "snaptrack_http_requests_total{route=\"/test\",status=\"401\"} 1",
        "snaptrack_verify_duration_seconds_count 2",
        "snaptrack_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "snaptrack_http_requests_total{route=\"/admin/users/{id}/tokens\",status=\"201\"} 1",
        "snaptrack_replication_lag_events 0",
        "snaptrack_live_tokens 1",
        "# TYPE snaptrack_revocation_propagation_seconds histogram",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let gauge = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}"))
            .parse()
            .unwrap()
    };
    assert!(gauge("snaptrack_applied_seq") >= 2.0);
    assert_eq!(
        gauge("snaptrack_applied_seq"),
        gauge("snaptrack_log_last_seq")
    );
    assert!(!text.contains(&token));
}
