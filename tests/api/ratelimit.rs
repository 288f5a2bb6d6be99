//! Rate limits on one node: exact under concurrency, and fixed windows that roll over.

use crate::helpers::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_limit_n_exactly_n_of_200_concurrent_requests_succeed() {
    let config = "[tiers.business]\nrequests = 50\nwindow_secs = 3600\n";
    let app = spawn_app_with_config(config).await;
    let (_, token, _) = app.user_with_token("a@example.com", "business").await;
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let client = reqwest::Client::new(); // one connection each: real concurrency
        let url = format!("{}/test", app.url);
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = r.status();
            let remaining: i64 = r.headers()["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (status, remaining)
        }));
    }
    let mut ok = Vec::new();
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap() {
            (StatusCode::OK, remaining) => ok.push(remaining),
            (StatusCode::TOO_MANY_REQUESTS, 0) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ok.len(), 50, "never more, never fewer");
    assert_eq!(limited, 150);
    ok.sort();
    assert_eq!(
        ok,
        (0..50).collect::<Vec<_>>(),
        "each admitted request saw its own count"
    );
}

#[tokio::test]
async fn a_fixed_window_rolls_over_at_its_reset() {
    let config = "[tiers.starter]\nrequests = 2\nwindow_secs = 2\n";
    let app = spawn_app_with_config(config).await;
    let (_, token, _) = app.user_with_token("a@example.com", "starter").await;
    // Move to the start of a fresh window, so the calls below share one.
    let probe = body(app.get_test(&token).await).await;
    wait_until(probe["rate_limit"]["reset"].as_i64().unwrap()).await;
    let first = body(app.get_test(&token).await).await;
    assert_eq!(first["rate_limit"]["remaining"], 1);
    let reset = first["rate_limit"]["reset"].as_i64().unwrap();
    let second = body(app.get_test(&token).await).await;
    assert_eq!(second["rate_limit"]["remaining"], 0);
    assert_eq!(second["rate_limit"]["reset"], reset);
    let r = app.get_test(&token).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = retry_after(&r);
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(body(r).await["rate_limit"]["reset"], reset);
    wait_until(reset).await;
    let v = body(app.get_test(&token).await).await;
    assert_eq!(v["rate_limit"]["remaining"], 1, "a new window");
    assert_eq!(v["rate_limit"]["reset"], reset + 2);
}

/// Waits for the wall clock to pass `epoch` seconds: the window's own end, not a guess.
async fn wait_until(epoch: i64) {
    let now = chrono::Utc::now();
    let target = chrono::DateTime::from_timestamp(epoch, 0).unwrap();
    if target > now {
        tokio::time::sleep((target - now).to_std().unwrap() + std::time::Duration::from_millis(20))
            .await;
    }
}
