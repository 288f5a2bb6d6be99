//! `GET /dashboard/usage?days=N`: the session user's requests per token per hour over the last
//! N days (default 7, at most `usage_retention_days`), from the hourly roll-ups plus what the
//! open rate-limit windows hold and the log does not yet. The dashboard's usage chart reads it.

use super::auth::SessionUser;
use super::error::{ApiError, Code};
use super::AppState;
use crate::domain::TokenId;
use actix_web::{web, HttpResponse};
use chrono::{TimeZone, Utc};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    days: Option<i64>,
}

/// `GET /dashboard/usage`.
pub async fn usage(
    s: SessionUser,
    app: web::Data<AppState>,
    q: Result<web::Query<UsageQuery>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    let q = q.map_err(|_| ApiError::invalid_field("days", "must be a whole number of days"))?;
    let max = i64::from(app.settings.history.usage_retention_days);
    let days = q.days.unwrap_or(7.min(max));
    if !(1..=max).contains(&days) {
        return Err(ApiError::invalid_field(
            "days",
            &format!("must be from 1 to {max}"),
        ));
    }
    let now = Utc::now().timestamp();
    let from = now - days * 86_400;
    let (rollups, user) = (app.rollups.clone(), s.user.id);
    let rows = web::block(move || rollups.hours_of(user, from, now + 3600))
        .await
        .map_err(|_| ApiError::new(Code::Internal))?
        .map_err(|e| {
            tracing::error!(error = %e, "usage roll-ups unreadable");
            ApiError::new(Code::Internal)
        })?;
    let mut hours: BTreeMap<(i64, TokenId), u64> = BTreeMap::new();
    for r in rows {
        *hours.entry((r.hour, r.token_id)).or_default() += r.requests;
    }
    // Rolled up only as far as the log holds records: add what is not recorded yet. (A
    // record written since the roll-ups' last round is in neither, for up to a round.)
    for (token, requests, at) in app.state.rate_limits.unrecorded(user) {
        if at >= from {
            *hours.entry((at - at.rem_euclid(3600), token)).or_default() += u64::from(requests);
        }
    }
    let hours: Vec<_> = hours
        .into_iter()
        .map(|((hour, token), requests)| {
            let hour = Utc.timestamp_opt(hour, 0).single().unwrap_or_default();
            json!({"hour": hour, "token_id": token, "requests": requests})
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({"success": true, "days": days, "hours": hours})))
}
