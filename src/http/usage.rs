//! `GET /dashboard/tokens/{id}/usage[?days=N]`: one of the session user's tokens, requests per
//! clock hour over the last N days (default and at most `usage_retention_days`), oldest first,
//! from the hourly roll-ups plus what the open usage period holds and the log does not yet.
//! The dashboard's usage chart reads it. Another user's token, or an unknown one: 404.

use super::auth::SessionUser;
use super::error::{ApiError, Code};
use super::tokens::parse_token_id;
use super::AppState;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    days: Option<i64>,
}

/// `GET /dashboard/tokens/{id}/usage`.
pub async fn token_usage(
    s: SessionUser,
    app: web::Data<AppState>,
    path: web::Path<String>,
    q: Result<web::Query<UsageQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_token_id(&path)?;
    let q = q.map_err(|_| ApiError::invalid_field("days", "must be a whole number of days"))?;
    let max = i64::from(app.settings.history.usage_retention_days);
    let days = q.days.unwrap_or(max);
    if !(1..=max).contains(&days) {
        return Err(ApiError::invalid_field(
            "days",
            &format!("must be from 1 to {max}"),
        ));
    }
    let user = s.user.id;
    match app.state.token(id) {
        Some(t) if t.user_id == user => {}
        _ => return Err(ApiError::new(Code::NotFound)),
    }
    let now = Utc::now().timestamp();
    let from = now - days * 86_400;
    let (rollups, log) = (app.rollups.clone(), app.log.clone());
    let rows = web::block(move || rollups.hours_with_log(&log, user, from, now + 3600))
        .await
        .map_err(|_| ApiError::new(Code::Internal))?
        .map_err(|e| {
            tracing::error!(error = %e, "usage roll-ups unreadable");
            ApiError::new(Code::Internal)
        })?;
    let mut hours: BTreeMap<i64, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.token_id == id) {
        *hours.entry(r.hour).or_default() += r.requests;
    }
    // The roll-ups and the log's records past them hold the ended periods: add what is not
    // recorded yet.
    for (token, requests, at) in app.state.rate_limits.unrecorded(user) {
        if token == id && at >= from {
            *hours.entry(at - at.rem_euclid(3600)).or_default() += u64::from(requests);
        }
    }
    let hours: Vec<_> = hours
        .into_iter()
        .map(|(start, requests)| json!({"start": start, "requests": requests}))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({"success": true, "hours": hours})))
}
