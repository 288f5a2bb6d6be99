//! `POST /leaked-tokens`: leak reports in the shape GitHub's secret scanning sends its
//! partners, signed with a shared secret. Each known token a report names is revoked at once
//! on every node (`token_revoked` v2, reason `leaked`, with the URL and source); the answer
//! labels every report without telling the reporter anything about tokens it does not know.

use super::auth::client_ip;
use super::error::{ApiError, Code};
use super::AppState;
use crate::actors::Execute;
use crate::command::{Command, LeakedToken};
use crate::domain::token::hash_if_well_formed;
use crate::domain::TokenHash;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;

/// The header carrying `sha256=<lowercase hex HMAC-SHA256 of the raw body>`.
pub const SIGNATURE_HEADER: &str = "X-Snaptrack-Signature";
/// Reports one request may carry (the body limit bounds it too).
const MAX_REPORTS: usize = 1000;

/// One report. Fields a reporter adds later are ignored, as GitHub may add them.
#[derive(Deserialize)]
struct Report {
    token: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    source: String,
}

/// Whether `header` is `sha256=<hex>` and the HMAC of `body` under `secret` (compared in
/// constant time).
fn signed(secret: &str, header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_sig) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Parses the reports of a signed body: a JSON array (400 when not JSON, 422 when not
/// that shape).
fn parse(body: &[u8]) -> Result<Vec<Report>, ApiError> {
    let reports: Vec<Report> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            ApiError::new(Code::InvalidField).message(format!(
                "A leak report is a JSON array of {{\"token\", \"type\", \"url\", \"source\"}}: {e}"
            ))
        } else {
            ApiError::new(Code::MalformedJson).message(format!("Malformed JSON: {e}"))
        }
    })?;
    if reports.len() > MAX_REPORTS {
        return Err(ApiError::new(Code::InvalidField)
            .message(format!("At most {MAX_REPORTS} reports per request")));
    }
    Ok(reports)
}

/// `POST /leaked-tokens`.
pub async fn report(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let Some(secret) = app.settings.leak_report_secret.as_deref() else {
        return Err(ApiError::new(Code::NotFound));
    };
    let now = Utc::now().timestamp();
    let ip = client_ip(&req);
    if let Some(wait) = app.auth_throttle.blocked(ip, now) {
        return Err(ApiError::retry_after(Code::AuthThrottled, wait));
    }
    let header = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    if !signed(secret, header, &body) {
        app.auth_throttle.record_failure(ip, now);
        return Err(ApiError::new(Code::Unauthorized).message("Invalid or missing signature"));
    }
    let reports = parse(&body)?;
    // Well-formed tokens by hash; in cluster mode one this node does not know yet (issued
    // elsewhere a moment ago) first makes it catch up with the stream.
    let hashes: Vec<Option<TokenHash>> = reports
        .iter()
        .map(|r| hash_if_well_formed(&r.token).ok())
        .collect();
    let known = |h: &Option<TokenHash>| h.is_some_and(|h| app.state.tokens.pin().contains_key(&h));
    if let Some(c) = &app.cluster {
        if hashes.iter().any(|h| h.is_some() && !known(h)) {
            if let Err(e) = c.catch_up_after_miss().await {
                tracing::warn!(error = %e, "catch-up for a leak report failed");
                return Err(ApiError::retry_after(Code::ServiceUnavailable, 1));
            }
        }
    }
    let labels: Vec<bool> = hashes.iter().map(known).collect();
    let leaked: Vec<LeakedToken> = reports
        .iter()
        .zip(&hashes)
        .zip(&labels)
        .filter(|(_, known)| **known)
        .filter_map(|((r, h), _)| {
            Some(LeakedToken {
                hash: (*h)?,
                url: r.url.clone(),
                source: r.source.clone(),
            })
        })
        .collect();
    let found = leaked.len();
    if !leaked.is_empty() {
        let envs = app
            .writer
            .send(Execute(Command::RevokeLeaked { reports: leaked }))
            .await??;
        // As every revoke: on every node before the answer.
        super::tokens::propagate(&app, &envs).await;
        tracing::info!(
            reports = reports.len(),
            found,
            revoked = envs.len(),
            "leak report"
        );
    } else {
        tracing::info!(reports = reports.len(), found, "leak report");
    }
    let answer: Vec<_> = reports
        .iter()
        .zip(&labels)
        .map(|(r, known)| {
            json!({
                "token_hash": TokenHash::of(&r.token).to_hex(),
                "token_type": r.token_type,
                "label": if *known { "true_positive" } else { "false_positive" },
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_hmac_of_the_body_is_accepted() {
        let body = br#"[{"token":"x","type":"t","url":"u","source":"s"}]"#;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"k".repeat(32).as_slice()).unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let secret = "k".repeat(32);
        assert!(signed(&secret, Some(&good), body));
        assert!(!signed(&secret, Some(&good), b"[]"), "another body");
        assert!(
            !signed(&"j".repeat(32), Some(&good), body),
            "another secret"
        );
        assert!(
            !signed(&secret, Some(&good[7..]), body),
            "no sha256= prefix"
        );
        assert!(!signed(&secret, Some("sha256=zz"), body), "not hex");
        assert!(
            !signed(&secret, Some(&good[..good.len() - 2]), body),
            "cut short"
        );
        assert!(!signed(&secret, None, body), "missing");
    }
}
