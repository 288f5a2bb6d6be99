//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! fantoccini). Log in, generate a token, read it from the page, use it over HTTP, revoke it
//! in the page with the confirmation, see the 401, reload and see it revoked; a leak report
//! revokes another and the page says where it was found; the security log lists it all;
//! change the password and log out everywhere in Settings → Account. Saves a
//! screenshot of the API Keys page to `target/screenshots/api-keys.png`
//! (`scripts/screenshot` copies it to `docs/api-keys.png` for the README).

use crate::helpers::*;
use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::StatusCode;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Browser {
    let port = free_port();
    let driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver (Debian package chromium-driver) must be installed: .ci/run installs it",
        );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1100",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    // fantoccini's TLS stack and ours bring two crypto providers; pick one for the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = ClientBuilder::rustls()
        .expect("TLS roots")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("connect to chromedriver");
    Browser {
        client,
        driver,
        _profile: profile,
    }
}

/// Waits until `f` holds, polling the page (the page changes after a fetch completes).
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn type_into(c: &Client, css: &str, keys: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .send_keys(keys)
        .await
        .unwrap();
}

async fn path(c: &Client) -> String {
    c.current_url().await.unwrap().path().to_owned()
}

#[tokio::test]
async fn log_in_generate_use_revoke_in_a_real_browser() {
    let app = spawn_app_with_config(&format!(
        "scopes = [\"websites:read\", \"websites:write\", \"reports:read\"]\nleak_report_secret = \"{LEAK_SECRET}\"\n"
    ))
    .await;
    app.create_user("john@example.com", "pro").await;
    let b = browser().await;
    let c = &b.client;

    // Logged out, the API keys page sends you to the login page.
    c.goto(&format!("{}/settings/api-keys", app.url))
        .await
        .unwrap();
    assert_eq!(path(c).await, "/login");

    // A wrong password shows the message.
    type_into(c, "#email", "john@example.com").await;
    type_into(c, "#password", "wrong password").await;
    click(c, "#login-form button").await;
    until("the login error", || async {
        text(c, "#login-error").await == "Invalid email or password."
    })
    .await;

    // The right one goes to Settings → API Keys.
    let pw = c.find(Locator::Css("#password")).await.unwrap();
    pw.clear().await.unwrap();
    pw.send_keys(PASSWORD).await.unwrap();
    click(c, "#login-form button").await;
    until("the API keys page", || async {
        path(c).await == "/settings/api-keys"
    })
    .await;
    assert_eq!(text(c, "#plan").await.to_lowercase(), "pro");
    until("the empty list", || async {
        text(c, "#tokens-body").await.contains("No API tokens yet")
    })
    .await;

    // Generate API Token, narrowed to one scope and this machine: shown once, with a Copy
    // button and the warning.
    type_into(c, "#token-name", "laptop").await;
    click(c, "#scope-2").await;
    type_into(c, "#allowed-ips", "127.0.0.1, ::1").await;
    click(c, "#generate").await;
    until("the new token", || async {
        text(c, "#new-token").await.starts_with("snpt_")
    })
    .await;
    let token = text(c, "#new-token").await;
    assert_eq!(token.len(), 51);
    assert!(text(c, "#once")
        .await
        .contains("won't be able to see it again"));
    assert!(c.find(Locator::Css("#copy")).await.is_ok());
    until("the token in the list", || async {
        text(c, "#tokens-body").await.contains("laptop")
    })
    .await;
    assert_eq!(
        text(c, "td.access").await,
        "reports:read; from 127.0.0.1/32, ::1/128"
    );
    let png = c.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("api-keys.png"), &png).unwrap();

    // The token works over HTTP, with its scope, from here, and nowhere else.
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    let auth = |client: reqwest::Client, scope: &'static str| {
        let (url, token) = (app.url.clone(), token.clone());
        async move {
            client
                .get(format!("{url}/auth"))
                .bearer_auth(token)
                .header("X-Required-Scope", scope)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        auth(app.client.clone(), "websites:write").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        auth(client_from("127.0.0.2"), "reports:read").await,
        StatusCode::FORBIDDEN
    );

    // The list shows its last use and where from.
    c.refresh().await.unwrap();
    until("the last use's address", || async {
        text(c, "#tokens-body").await.contains("from 127.0.0.1")
    })
    .await;

    // Its usage chart shows the request: per hour over 7 days, per day over 90.
    click(c, "button.usage").await;
    until("the usage chart", || async {
        text(c, ".usage-total").await == "1 request in the last 7 days"
    })
    .await;
    let bars = c.find_all(Locator::Css("td.usage svg rect")).await.unwrap();
    assert_eq!(bars.len(), 1, "one hour with requests");
    std::fs::write(dir.join("usage-chart.png"), c.screenshot().await.unwrap()).unwrap();
    click(c, "button.range").await;
    until("the 90-day chart", || async {
        text(c, ".usage-total").await == "1 request in the last 90 days"
    })
    .await;
    click(c, "button.usage").await;
    until("the chart closed", || async {
        c.find_all(Locator::Css("td.usage"))
            .await
            .unwrap()
            .is_empty()
    })
    .await;

    // Regenerate with a grace period: the new token is shown once, the old one works on and
    // the list says when it stops.
    click(c, "button.regenerate").await;
    until("the regenerate dialog", || async {
        text(c, "#regenerate-dialog")
            .await
            .contains("Regenerate this token?")
    })
    .await;
    c.find(Locator::Css("#grace option[value='3600']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    click(c, "#regenerate-confirm").await;
    until("the regenerated token", || async {
        let t = text(c, "#new-token").await;
        t.starts_with("snpt_") && t != token
    })
    .await;
    let renewed = text(c, "#new-token").await;
    until("the old token's end in the list", || async {
        text(c, "#tokens-body").await.contains("stops at")
    })
    .await;
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    assert_eq!(app.get_test(&renewed).await.status(), StatusCode::OK);
    std::fs::write(dir.join("regenerate.png"), c.screenshot().await.unwrap()).unwrap();
    click(c, "#done").await;
    // The new token is not needed further: revoke it over HTTP, and the old one in the page
    // (the only Revoke button left).
    let cookie = app.session("john@example.com").await;
    let list = body(app.list_tokens(&cookie).await).await;
    let new_id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["replaced_by"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.revoke(&cookie, &new_id).await.status(), StatusCode::OK);
    c.refresh().await.unwrap();
    until("one token left to revoke", || async {
        c.find_all(Locator::Css("button.revoke"))
            .await
            .map(|b| b.len() == 1)
            .unwrap_or(false)
    })
    .await;

    // Revoke Token, confirm in the dialog.
    click(c, "button.revoke").await;
    until("the confirmation", || async {
        text(c, "#revoke-dialog")
            .await
            .contains("Revoke this token?")
    })
    .await;
    click(c, "#revoke-confirm").await;
    until("the revoked status", || async {
        c.find_all(Locator::Css("button.revoke"))
            .await
            .map(|b| b.is_empty())
            .unwrap_or(false)
    })
    .await;
    assert_eq!(
        app.get_test(&token).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Reload: the token is gone from the page for good; the list shows it revoked.
    c.refresh().await.unwrap();
    until("the list after reload", || async {
        text(c, "#tokens-body")
            .await
            .to_lowercase()
            .contains("revoked")
    })
    .await;
    let source = c.source().await.unwrap();
    assert!(!source.contains(&token), "the token is never shown again");
    assert!(!source.contains(&token[5..45]));

    // A token found public: the scanner's signed report revokes it, and the page says where.
    let r = app.generate(&cookie, &json!({"name": "leaky"})).await;
    let leaky = body(r).await["token"].as_str().unwrap().to_owned();
    let url = "https://github.com/octo/app/blob/main/.env";
    let report = serde_json::to_vec(&json!([{"token": leaky, "type": "snaptrack_api_token",
        "url": url, "source": "github"}]))
    .unwrap();
    let r = app
        .client
        .post(format!("{}/leaked-tokens", app.url))
        .header("X-Snaptrack-Signature", leak_signature(&report))
        .body(report)
        .send()
        .await
        .unwrap();
    assert_eq!(body(r).await[0]["label"], "true_positive");
    assert_eq!(
        app.get_test(&leaky).await.status(),
        StatusCode::UNAUTHORIZED
    );
    c.refresh().await.unwrap();
    until("the leak in the list", || async {
        text(c, "#tokens-body")
            .await
            .contains(&format!("revoked: found public at {url}"))
    })
    .await;

    // Settings → Security log lists the failed and the good sign-in and the token's life.
    click(c, "a[href='/settings/security-log']").await;
    until("the security log", || async {
        let t = text(c, "#events-body").await;
        t.contains("Token revoked")
            && t.contains("Token generated")
            && t.contains("Token regenerated")
            && t.contains("Signed in")
            && t.contains(&format!("found public at {url}"))
    })
    .await;
    assert!(text(c, "#events-body").await.contains("Failed sign-in"));
    assert!(text(c, "#events-body").await.contains("laptop"));
    std::fs::write(dir.join("security-log.png"), c.screenshot().await.unwrap()).unwrap();

    // Log out: the page is closed again. Then log in once more.
    click(c, "#logout").await;
    until("the login page", || async { path(c).await == "/login" }).await;
    c.goto(&format!("{}/settings/api-keys", app.url))
        .await
        .unwrap();
    assert_eq!(path(c).await, "/login");
    type_into(c, "#email", "john@example.com").await;
    type_into(c, "#password", PASSWORD).await;
    click(c, "#login-form button").await;
    until("the API keys page", || async {
        path(c).await == "/settings/api-keys"
    })
    .await;

    // Settings → Account: change the password (a wrong current one is refused in the page),
    // then log out everywhere.
    click(c, "a[href='/settings/account']").await;
    until("the account page", || async {
        path(c).await == "/settings/account"
    })
    .await;
    type_into(c, "#current-password", "not my password").await;
    type_into(c, "#new-password", NEW_PASSWORD).await;
    click(c, "#change-password").await;
    until("the refusal", || async {
        text(c, "#password-error")
            .await
            .contains("current password is wrong")
    })
    .await;
    c.find(Locator::Css("#current-password"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    c.find(Locator::Css("#new-password"))
        .await
        .unwrap()
        .clear()
        .await
        .unwrap();
    type_into(c, "#current-password", PASSWORD).await;
    type_into(c, "#new-password", NEW_PASSWORD).await;
    click(c, "#change-password").await;
    until("the change", || async {
        text(c, "#password-status")
            .await
            .contains("Password changed")
    })
    .await;
    std::fs::write(dir.join("account.png"), c.screenshot().await.unwrap()).unwrap();
    // The session of the HTTP calls above ended with it; the page's stays.
    assert_eq!(
        app.list_tokens(&cookie).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("john@example.com", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    click(c, "#end-all").await;
    until("the login page", || async { path(c).await == "/login" }).await;
    c.goto(&format!("{}/settings/account", app.url))
        .await
        .unwrap();
    assert_eq!(path(c).await, "/login", "logged out everywhere");
    b.client.clone().close().await.unwrap();
}

const LEAK_SECRET: &str = "browser-test-leak-secret-0123456789";
const NEW_PASSWORD: &str = "an entirely new passphrase for john 5512";

fn leak_signature(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(LEAK_SECRET.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}
