//! Secret hygiene: run a whole session of use with logging at trace level, then search every
//! line the process printed, every file of its data directory and the replay output for any
//! issued token or password. None may appear.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn no_token_or_password_is_written_anywhere() {
    let mut app = spawn_app().await;
    let password = "s3cret-Pa55word-that-must-not-leak";
    let r = app
        .post_user(&json!({"email": "john@example.com", "name": "John", "password": password, "tier": "pro"}))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut tokens = Vec::new();
    let (t, tid) = app.issue_token(1).await;
    tokens.push(t.clone());
    assert_eq!(app.get_test(&t).await.status(), StatusCode::OK);
    // A typo of a real token, and the token in the wrong scheme: rejected, never echoed.
    // (Another character than the one there: a random token holds an `x` there 1 time in 62.)
    let other = if &t[20..21] == "x" { "y" } else { "x" };
    let typo = format!("{}{other}{}", &t[..20], &t[21..]);
    assert_eq!(app.get_test(&typo).await.status(), StatusCode::UNAUTHORIZED);
    app.get_with_auth("/test", format!("Basic {t}").as_bytes())
        .await;
    let r = app.login("john@example.com", password).await;
    let cookie = session_cookie(&r).unwrap();
    app.login("john@example.com", &format!("{password}-wrong"))
        .await;
    let r = app.generate(&cookie, &json!({"name": "dash"})).await;
    let v = body(r).await;
    tokens.push(v["token"].as_str().unwrap().to_owned());
    let r = app
        .regenerate(&cookie, v["token_id"].as_str().unwrap())
        .await;
    tokens.push(body(r).await["token"].as_str().unwrap().to_owned());
    app.revoke_admin(&tid).await;
    assert_eq!(app.get_test(&t).await.status(), StatusCode::UNAUTHORIZED);
    app.get("/metrics").await;
    app.stop().await;

    let session_value = cookie.split_once('=').unwrap().1.to_owned();
    let mut secrets: Vec<String> = vec![password.to_owned(), session_value];
    for t in &tokens {
        secrets.push(t.clone());
        secrets.push(t[5..45].to_owned()); // the random part alone
    }
    let output = app.output();
    assert!(
        output
            .iter()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "trace logging was on"
    );
    for line in &output {
        for s in &secrets {
            assert!(!line.contains(s.as_str()), "secret in log line: {line}");
        }
    }
    let files = all_files(&app.data_dir());
    assert!(!files.is_empty());
    for (path, bytes) in files {
        for s in &secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "secret in {}",
                path.display()
            );
        }
    }
    let replay = String::from_utf8(app.replay(&[]).stdout).unwrap();
    assert!(replay.contains("token_issued") && replay.contains("login_failed"));
    for s in &secrets {
        assert!(!replay.contains(s.as_str()));
    }
}

/// The scan every `TestApp` runs when dropped (see `helpers.rs`) finds tokens by their
/// shape and checksum, wherever they sit in the text, and ignores hints and near misses.
#[test]
fn the_secret_scan_finds_tokens_and_only_tokens() {
    let t = snaptrack_auth::domain::ApiToken::generate();
    let t = t.expose();
    // A one-character typo fails the checksum.
    let other = if t.ends_with('Q') { 'R' } else { 'Q' };
    let typo = format!("{}{other}", &t[..t.len() - 1]);
    let hint = format!("snpt_…{}", &t[t.len() - 4..]);
    let text = format!("x={t}&y=1 hint {hint} typo {typo}");
    assert_eq!(tokens_in(&text), vec![t]);
    assert!(std::panic::catch_unwind(|| assert_no_secrets("text", text.as_bytes())).is_err());
    assert!(std::panic::catch_unwind(|| assert_no_secrets("text", PASSWORD.as_bytes())).is_err());
    assert_no_secrets("text", b"nothing to see");
}
