//! `GET /dashboard/events[?before=CURSOR]`: the session user's own security events, newest
//! first, 50 a page: `{"success": true, "events": [{"type", "occurred_at", ...}], "next":
//! CURSOR|null}`. Read from [`crate::history::SecurityLog`], brought up to date with the log
//! first, so a user sees their own last action at once.

use super::auth::SessionUser;
use super::error::{ApiError, Code};
use super::AppState;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

/// Entries per page.
const PAGE: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    before: Option<u64>,
}

/// `GET /dashboard/events`.
pub async fn events(
    s: SessionUser,
    app: web::Data<AppState>,
    q: Result<web::Query<EventsQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let q = q.map_err(|_| ApiError::invalid_field("before", "must be a cursor from \"next\""))?;
    let (security, log, state, user) = (
        app.security_log.clone(),
        app.log.clone(),
        app.state.clone(),
        s.user.id,
    );
    let page = web::block(move || {
        security.catch_up(&log, &state, log.durable_seq())?;
        security.page(user, q.before, PAGE)
    })
    .await
    .map_err(|_| ApiError::new(Code::Internal))?
    .map_err(|e| {
        tracing::error!(error = %e, "security log unreadable");
        ApiError::new(Code::Internal)
    })?;
    let (events, next) = page;
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({"success": true, "events": events, "next": next})))
}
