//! Token commands shared by the dashboard and the admin API: issue, revoke, regenerate. The
//! plaintext token is generated here, hashed, and shown once in the 201 response; only its
//! hash reaches the writer.

use super::error::{ApiError, Code};
use super::AppState;
use crate::actors::Execute;
use crate::command::Command;
use crate::domain::restrictions::{parse_allowed_ips, ScopeError};
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
    /// Scope names from the catalogue; left out (or `null`): every scope.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Addresses and CIDR networks; left out (or `null`): from anywhere.
    #[serde(default)]
    pub allowed_ips: Option<Vec<String>>,
}

/// Body of the regenerate endpoints; an empty body is the default (no grace).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Regenerate {
    /// How long the old token keeps working, 0 to [`MAX_GRACE_SECS`].
    #[serde(default)]
    pub grace_secs: Option<i64>,
}

/// Seven days: the longest grace an old token gets.
pub const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;

impl Regenerate {
    /// From a body that may be empty (today's clients send none) or JSON.
    pub fn from_body(body: &[u8]) -> Result<Regenerate, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Regenerate::default());
        }
        serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                ApiError::new(Code::InvalidField).message(format!("Invalid request body: {e}"))
            } else {
                ApiError::new(Code::MalformedJson).message(format!("Malformed JSON: {e}"))
            }
        })
    }

    /// The grace period, `None` for none.
    fn grace(&self) -> Result<Option<Duration>, ApiError> {
        match self.grace_secs.unwrap_or(0) {
            0 => Ok(None),
            n if (1..=MAX_GRACE_SECS).contains(&n) => Ok(Some(Duration::seconds(n))),
            _ => Err(ApiError::invalid_field(
                "grace_secs",
                &format!("must be 0 to {MAX_GRACE_SECS} seconds (7 days)"),
            )),
        }
    }
}

/// The scopes a new token asks for, against the catalogue: unknown names are a 422 naming
/// them.
fn pick_scopes(
    app: &AppState,
    asked: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, ApiError> {
    let Some(asked) = asked else { return Ok(None) };
    app.settings
        .scopes
        .pick(&asked)
        .map(Some)
        .map_err(|e| match e {
            ScopeError::Unknown(names) => ApiError::new(Code::InvalidField)
                .message(format!("Unknown scopes: {}", names.join(", ")))
                .extra("field", json!("scopes"))
                .extra("unknown_scopes", json!(names)),
            ScopeError::Empty => ApiError::invalid_field(
                "scopes",
                "must name at least one scope (leave it out for every scope)",
            ),
        })
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
    let scopes = pick_scopes(app, body.scopes)?;
    let allowed_ips = body
        .allowed_ips
        .map(|l| parse_allowed_ips(&l))
        .transpose()
        .map_err(|r| ApiError::invalid_field("allowed_ips", &r))?;
    let token = ApiToken::generate();
    let cmd = Command::IssueToken {
        user_id: user,
        token_id: TokenId::new(),
        name,
        hash: token.hash(),
        hint: token.hint(),
        expires_at: days.map(|d| Utc::now() + Duration::days(i64::from(d))),
        scopes,
        allowed_ips,
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
pub(super) async fn propagate(
    app: &AppState,
    envs: &[crate::event::Envelope],
) -> (Vec<String>, Vec<String>) {
    match (&app.cluster, envs.last()) {
        (Some(c), Some(last)) => c.barrier(last.seq).await,
        _ => (vec![app.settings.node_id.clone()], vec![]),
    }
}

/// Issues `old`'s replacement and ends `old` (at once, or after the grace) in one atomic
/// append.
pub async fn regenerate(
    app: &AppState,
    old: TokenId,
    owner: Option<UserId>,
    body: Regenerate,
) -> Result<HttpResponse, ApiError> {
    let grace = body.grace()?;
    let token = ApiToken::generate();
    let cmd = Command::RegenerateToken {
        old,
        owner,
        token_id: TokenId::new(),
        hash: token.hash(),
        hint: token.hint(),
        grace,
    };
    let envs = app.writer.send(Execute(cmd)).await??;
    // The old token stops working everywhere before the new one is shown (or, with a
    // grace period, every node knows when it stops).
    let (_, pending) = propagate(app, &envs).await;
    if !pending.is_empty() {
        tracing::warn!(
            ?pending,
            "regenerated token's revocation not yet applied on every node"
        );
    }
    Ok(issued_response(&token, &envs))
}
