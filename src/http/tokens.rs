//! Token commands shared by the dashboard and the admin API: issue, revoke, regenerate. The
//! plaintext token is generated here, hashed, and shown once in the 201 response; only its
//! hash reaches the writer.

use super::error::{ApiError, Code};
use super::AppState;
use crate::actors::Execute;
use crate::command::Command;
use crate::domain::{parse_expires_in_days, ApiToken, TokenId, TokenName, UserId};
use crate::event::Event;
use actix_web::HttpResponse;
use chrono::{Duration, Utc};
use serde::Deserialize;
use serde_json::json;
use std::time::Instant;

/// Body of the issue endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub name: String,
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

fn issued_response(token: &ApiToken, envs: &[crate::event::Envelope]) -> HttpResponse {
    let issued = envs.iter().find_map(|e| match &e.event {
        Event::TokenIssued(t) => Some(t),
        _ => None,
    });
    match issued {
        Some(t) => HttpResponse::Created()
            .insert_header(("cache-control", "no-store"))
            .json(json!({
                "success": true,
                "token": token.expose(),
                "token_id": t.token_id,
                "name": t.name,
                "hint": t.hint,
                "expires_at": t.expires_at,
            })),
        None => ApiError::new(Code::Internal).into_response(),
    }
}

/// Issues a token for `user`.
pub async fn issue(app: &AppState, user: UserId, body: NewToken) -> Result<HttpResponse, ApiError> {
    let name = TokenName::parse(&body.name).map_err(|r| ApiError::invalid_field("name", r))?;
    let days = parse_expires_in_days(body.expires_in_days)
        .map_err(|r| ApiError::invalid_field("expires_in_days", r))?;
    let token = ApiToken::generate();
    let cmd = Command::IssueToken {
        user_id: user,
        token_id: TokenId::new(),
        name,
        hash: token.hash(),
        hint: token.hint(),
        expires_at: days.map(|d| Utc::now() + Duration::days(i64::from(d))),
    };
    let envs = app.writer.send(Execute(cmd)).await??;
    Ok(issued_response(&token, &envs))
}

/// Parses a token id from a path; anything else is "not found".
pub fn parse_token_id(s: &str) -> Result<TokenId, ApiError> {
    s.parse()
        .map(TokenId)
        .map_err(|_| ApiError::new(Code::NotFound))
}

/// Revokes `id`; with `owner`, only if that user owns it.
pub async fn revoke(
    app: &AppState,
    id: TokenId,
    owner: Option<UserId>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let envs = app
        .writer
        .send(Execute(Command::RevokeToken {
            token_id: id,
            owner,
        }))
        .await??;
    let (propagated_to, pending) = propagate(app, &envs).await;
    app.metrics
        .revocation_propagation
        .observe(started.elapsed());
    let revoked_at = envs.first().map(|e| e.occurred_at);
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "revoked": {
            "token_id": id,
            "revoked_at": revoked_at,
            "propagated_to": propagated_to,
            "pending": pending,
        }
    })))
}

/// The revocation barrier: which nodes have applied `envs`, and which have not yet. In
/// embedded mode this node is the only node, and it applied the events before the writer
/// replied.
async fn propagate(app: &AppState, envs: &[crate::event::Envelope]) -> (Vec<String>, Vec<String>) {
    match (&app.cluster, envs.last()) {
        (Some(c), Some(last)) => c.barrier(last.seq).await,
        _ => (vec![app.settings.node_id.clone()], vec![]),
    }
}

/// Revokes `old` and issues its replacement in one atomic append.
pub async fn regenerate(
    app: &AppState,
    old: TokenId,
    owner: Option<UserId>,
) -> Result<HttpResponse, ApiError> {
    let token = ApiToken::generate();
    let cmd = Command::RegenerateToken {
        old,
        owner,
        token_id: TokenId::new(),
        hash: token.hash(),
        hint: token.hint(),
    };
    let envs = app.writer.send(Execute(cmd)).await??;
    // The old token stops working everywhere before the new one is shown.
    let (_, pending) = propagate(app, &envs).await;
    if !pending.is_empty() {
        tracing::warn!(
            ?pending,
            "regenerated token's revocation not yet applied on every node"
        );
    }
    Ok(issued_response(&token, &envs))
}
