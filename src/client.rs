//! `snaptrack-auth test-token`: the product document's "Testing Your Token", for a
//! customer's shell. The token comes from the environment, never the command line (where
//! shell history and `ps` would keep it), and is never printed.

use serde::Deserialize;
use std::fmt;

#[derive(Debug, Deserialize)]
pub struct TestUser {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub subscription_tier: String,
}

#[derive(Debug, Deserialize)]
pub struct TestRate {
    pub limit: u32,
    pub remaining: u32,
    pub reset: i64,
}

/// A successful `GET /test`.
#[derive(Debug, Deserialize)]
pub struct TestReport {
    pub message: String,
    pub user: TestUser,
    pub rate_limit: TestRate,
}

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reset = chrono::DateTime::from_timestamp(self.rate_limit.reset, 0)
            .map_or_else(|| self.rate_limit.reset.to_string(), |t| t.to_rfc3339());
        write!(
            f,
            "{}\nuser: {} <{}> (id {})\nplan: {}\nrate limit: {} of {} remaining, resets at {}",
            self.message,
            self.user.name,
            self.user.email,
            self.user.id,
            self.user.subscription_tier,
            self.rate_limit.remaining,
            self.rate_limit.limit,
            reset
        )
    }
}

/// Calls `GET {url}/test` with the token. An error carries the server's status and message.
pub async fn test_token(url: &str, token: &str) -> Result<TestReport, String> {
    let endpoint = format!("{}/test", url.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .get(&endpoint)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {endpoint}: {}", e.without_url()))?;
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| format!("{status}: unreadable response: {}", e.without_url()))?;
    if status.is_success() {
        serde_json::from_value(body).map_err(|e| format!("unexpected response: {e}"))
    } else {
        let msg = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("unknown error");
        let plan = body
            .get("current_plan")
            .and_then(|p| p.as_str())
            .map(|p| format!(" (current plan: {p})"))
            .unwrap_or_default();
        Err(format!("{status}: {msg}{plan}"))
    }
}
