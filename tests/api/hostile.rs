//! Hostile input, generated: arbitrary Authorization headers and arbitrary JSON bodies on
//! every JSON endpoint. Whatever arrives, the answer is a 4xx JSON error (or a success for a
//! body that happens to be valid), never a 5xx, and the server keeps serving.

use crate::helpers::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// JSON values up to a few levels deep, with strings that look like the real fields' values.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z@.]{0,12}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("pro"),
            Just("free"),
            Just("active"),
            Just("2030-01-01T00:00:00Z")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("email".to_owned()),
                    Just("name".to_owned()),
                    Just("password".to_owned()),
                    Just("tier".to_owned()),
                    Just("status".to_owned()),
                    Just("expires_at".to_owned()),
                    Just("expires_in_days".to_owned()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arbitrary_bodies_on_every_json_endpoint_get_a_4xx_json_error_or_succeed() {
    let app = spawn_app().await;
    let (user, _, token_id) = app.user_with_token("a@example.com", "pro").await;
    let cookie = app.session("a@example.com").await;
    let endpoints: Vec<(Method, String, bool)> = vec![
        (Method::POST, "/admin/users".into(), true),
        (
            Method::PUT,
            format!("/admin/users/{user}/subscription"),
            true,
        ),
        (Method::POST, format!("/admin/users/{user}/tokens"), true),
        (Method::POST, "/login".into(), false),
        (Method::POST, "/dashboard/tokens".into(), false),
        (
            Method::POST,
            format!("/dashboard/tokens/{token_id}/regenerate"),
            false,
        ),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let cases: Vec<(Value, Vec<u8>)> = (0..64)
        .map(|_| {
            let v = json_value().new_tree(&mut runner).unwrap().current();
            let raw = proptest::collection::vec(any::<u8>(), 0..64)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            (v, raw)
        })
        .collect();
    for (method, path, admin) in &endpoints {
        for (value, raw) in &cases {
            for body in [serde_json::to_vec(value).unwrap(), raw.clone()] {
                let mut req = app
                    .client
                    .request(method.clone(), format!("{}{path}", app.url))
                    .header("content-type", "application/json")
                    .body(body.clone());
                req = if *admin {
                    req.bearer_auth(&app.admin_token)
                } else {
                    req.header("Cookie", &cookie)
                };
                let r = req.send().await.unwrap();
                let status = r.status();
                let text = r.text().await.unwrap();
                assert!(
                    !status.is_server_error(),
                    "{method} {path} with {:?} -> {status} {text}",
                    String::from_utf8_lossy(&body)
                );
                if status.is_client_error() {
                    let v: Value = serde_json::from_str(&text)
                        .unwrap_or_else(|_| panic!("{method} {path}: non-JSON {status}: {text}"));
                    assert_eq!(v["success"], false);
                    assert!(v["error"].is_string());
                }
            }
        }
    }
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn arbitrary_authorization_headers_are_401_never_anything_else() {
    let config = "[throttle]\nauth_failures = 1000000\n";
    let app = spawn_app_with_config(config).await;
    let (_, token, _) = app.user_with_token("a@example.com", "pro").await;
    let mut runner = TestRunner::new(Config {
        cases: 300,
        ..Config::default()
    });
    // Visible ASCII and tabs/spaces (what a header value may hold), around real fragments.
    let header = (
        prop_oneof![
            Just("Bearer ".to_owned()),
            Just("bearer  ".to_owned()),
            "[ -~\t]{0,12}"
        ],
        prop_oneof![
            "[ -~\t]{0,80}",
            Just(token[..50].to_owned()),
            Just(format!("{token}x")),
            "snpt_[0-9A-Za-z]{46}",
        ],
    );
    for _ in 0..300 {
        let (scheme, rest) = header.new_tree(&mut runner).unwrap().current();
        let value = format!("{scheme}{rest}");
        let Ok(hv) = reqwest::header::HeaderValue::from_str(&value) else {
            continue;
        };
        let r = app
            .client
            .get(format!("{}/test", app.url))
            .header("Authorization", hv)
            .send()
            .await
            .unwrap();
        let status = r.status();
        // A generated value could only succeed by being exactly the real token.
        if value.trim_end() == format!("Bearer {token}")
            || value.trim_end() == format!("bearer  {token}")
        {
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
        assert_eq!(body(r).await["error"], "Unauthorized");
    }
}
