//! `POST /leaked-tokens`: signed leak reports (GitHub secret scanning's partner shape). A bad
//! or missing signature changes nothing; each known token is revoked at once on every node,
//! with the URL; the answer labels each report and says nothing of unknown tokens.

use crate::helpers::*;
use crate::nats::{spawn_node, NatsServer, CLUSTER_CONFIG};
use hmac::{Hmac, Mac};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRET: &str = "leak-report-secret-0123456789abcdef";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn post(app: &TestApp, body: &[u8], signature: Option<&str>) -> Response {
    let mut r = app
        .client
        .post(format!("{}/leaked-tokens", app.url))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(s) = signature {
        r = r.header("X-Snaptrack-Signature", s);
    }
    r.send().await.unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn report(token: &str, url: &str) -> Value {
    json!({"token": token, "type": "snaptrack_api_token", "url": url, "source": "github"})
}

#[tokio::test]
async fn without_a_secret_the_endpoint_does_not_exist() {
    let app = spawn_app().await;
    let body = br#"[]"#;
    let r = post(&app, body, Some(&sign(body))).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_signed_report_revokes_known_tokens_and_labels_each_one() {
    let config = format!("leak_report_secret = \"{SECRET}\"\n");
    let app = spawn_app_with_config(&config).await;
    let user = app.create_user("ann@example.com", "pro").await;
    let (live, live_id) = app.issue_token(user).await;
    let (gone, gone_id) = app.issue_token(user).await;
    assert_eq!(app.revoke_admin(&gone_id).await.status(), StatusCode::OK);
    let stranger = snaptrack_auth::domain::ApiToken::generate();
    let url = "https://github.com/octo/app/blob/main/.env";
    let reports = json!([
        report(&live, url),
        report(&gone, url),
        report(stranger.expose(), url),
        report("not a token at all", url),
    ]);
    let signed = serde_json::to_vec(&reports).unwrap();

    // Unsigned, badly signed, signed for another body: 401, and nothing changes.
    for sig in [None, Some("sha256=00".to_owned()), Some(sign(b"[]"))] {
        let r = post(&app, &signed, sig.as_deref()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(body(r).await["success"], false);
    }
    assert_eq!(app.get_test(&live).await.status(), StatusCode::OK);

    // Signed: one answer per report, in order.
    let r = post(&app, &signed, Some(&sign(&signed))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer = body(r).await;
    let labels: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "true_positive",
            "true_positive",
            "false_positive",
            "false_positive"
        ]
    );
    for (a, r) in answer
        .as_array()
        .unwrap()
        .iter()
        .zip(reports.as_array().unwrap())
    {
        assert_eq!(a["token_hash"], sha256_hex(r["token"].as_str().unwrap()));
        assert_eq!(a["token_type"], "snaptrack_api_token");
        assert_eq!(a.as_object().unwrap().len(), 3, "nothing more: {a}");
    }
    // Revoked at once, with why, who and where; the one revoked before keeps its reason.
    assert_eq!(app.get_test(&live).await.status(), StatusCode::UNAUTHORIZED);
    let cookie = app.session("ann@example.com").await;
    let tokens = body(app.list_tokens(&cookie).await).await;
    let entry = |id: &str| {
        tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        entry(&live_id)["revocation"],
        json!({"reason": "leaked", "by": "leak_report", "url": url, "source": "github"})
    );
    assert_eq!(entry(&gone_id)["revocation"]["reason"], "revoked");
    assert_eq!(entry(&gone_id)["revocation"]["by"], "operator");
    let events = body(
        app.dash(reqwest::Method::GET, "/dashboard/events", &cookie)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let leaked = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "token_revoked" && e["token_id"] == live_id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(leaked["by"], "leak_report");
    assert_eq!(leaked["url"], url);
    // The same report again changes nothing more (still labelled as known).
    let r = post(&app, &signed, Some(&sign(&signed))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let out = app.replay(&["--type", "token_revoked"]);
    let revocations = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(revocations, 2, "one by the operator, one by the report");
    assert_no_secrets("replay", &out.stdout);

    // Bad bodies, signed: 400 and 422, nothing changes.
    for (bad, status) in [
        (&b"[{not json"[..], StatusCode::BAD_REQUEST),
        (&br#"{"token": "x"}"#[..], StatusCode::UNPROCESSABLE_ENTITY),
        (&br#"[{"type": "x"}]"#[..], StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let r = post(&app, bad, Some(&sign(bad))).await;
        assert_eq!(r.status(), status, "{}", String::from_utf8_lossy(bad));
    }
    // Bad signatures count against the address like failed token checks (a fresh node,
    // whose address has no other failures): past the limit even a good one waits.
    let config = format!("leak_report_secret = \"{SECRET}\"\n[throttle]\nauth_failures = 3\n");
    let fresh = spawn_app_with_config(&config).await;
    for _ in 0..3 {
        let r = post(&fresh, &signed, Some("sha256=00")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = post(&fresh, &signed, Some(&sign(&signed))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_token_issued_elsewhere_a_moment_ago_is_revoked_on_every_node_before_the_answer() {
    let nats = NatsServer::start();
    // A top-level key, before the config's tables.
    let config = format!("leak_report_secret = \"{SECRET}\"\n{CLUSTER_CONFIG}");
    let a = spawn_node(&nats, "a", &config).await;
    let b = spawn_node(&nats, "b", &config).await;
    let user = a.create_user("ann@example.com", "pro").await;
    let (token, _) = a.issue_token(user).await;
    let signed = serde_json::to_vec(&json!([report(&token, "https://example.com/paste")])).unwrap();
    let r = post(&b, &signed, Some(&sign(&signed))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(body(r).await[0]["label"], "true_positive");
    for node in [&a, &b] {
        assert_eq!(
            node.get_test(&token).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[test]
fn a_short_secret_is_refused_at_start_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .env("SNAPTRACK_AUTH_LEAK_REPORT_SECRET", "too-short-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("leak_report_secret") && err.contains("at least 24"),
        "{err}"
    );
    assert!(!err.contains("too-short-secret"), "{err}");
}
