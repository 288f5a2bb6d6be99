//! HTTPS from the config's `[tls]` certificate and key, with a self-signed certificate.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test]
async fn serves_https_with_secure_cookies() {
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let app = spawn_app_with(Opts {
        config: Some("[tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n".into()),
        files: vec![
            ("cert.pem".into(), cert.pem()),
            ("key.pem".into(), key_pair.serialize_pem()),
        ],
        client: Some(client),
        ..Default::default()
    })
    .await;
    assert!(app.url.starts_with("https://127.0.0.1:"), "{}", app.url);
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    let r = app.login("a@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Secure"));
    // Plain HTTP to the TLS port does not get an answer.
    let plain = app.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
}

#[test]
fn a_missing_certificate_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[tls]\ncert = \"no.pem\"\nkey = \"no.pem\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "d",
            "--config",
            "c.toml",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no.pem") && err.trim().lines().count() == 1,
        "{err}"
    );
}
