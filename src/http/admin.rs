//! The admin API (Bearer `SNAPTRACK_ADMIN_TOKEN`): users, plans and tokens.

use super::auth::Admin;
use super::error::{ApiError, Code};
use super::public::UserBody;
use super::tokens::{self, NewToken};
use super::AppState;
use crate::actors::Execute;
use crate::command::Command;
use crate::domain::{Email, Password, Subscription, SubscriptionStatus, Tier, UserId, UserName};
use crate::event::Event;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    email: String,
    name: String,
    password: String,
    tier: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    tier: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
}

fn parse_user_id(s: &str) -> Result<UserId, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .map(UserId)
        .ok_or_else(|| ApiError::new(Code::NotFound))
}

fn field<T>(name: &str, r: Result<T, &'static str>) -> Result<T, ApiError> {
    r.map_err(|reason| ApiError::invalid_field(name, reason))
}

/// `POST /admin/users`.
pub async fn create_user(
    _: Admin,
    app: web::Data<AppState>,
    body: web::Json<NewUser>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let email = field("email", Email::parse(&b.email))?;
    let name = field("name", UserName::parse(&b.name))?;
    let tier = field("tier", Tier::parse(&b.tier))?;
    if app.state.email_taken(email.as_str()) {
        return Err(ApiError::new(Code::EmailTaken));
    }
    let min_len = app.settings.min_password_length;
    let words = [email.as_str().to_owned(), name.as_str().to_owned()];
    let password = web::block(move || {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        Password::parse(&b.password, min_len, &words)
    })
    .await
    .map_err(|_| ApiError::new(Code::Internal))?
    .map_err(|weak| ApiError::invalid_field("password", &weak.to_string()))?;
    let credential_id = super::account::store_password(&app.credentials, password).await?;
    let envs = app
        .writer
        .send(Execute(Command::RegisterUser {
            email,
            name,
            credential_id,
            tier,
        }))
        .await??;
    let id = envs
        .iter()
        .find_map(|e| match &e.event {
            Event::UserRegistered(u) => Some(u.user_id),
            _ => None,
        })
        .ok_or_else(|| ApiError::new(Code::Internal))?;
    let user = app
        .state
        .user(id)
        .ok_or_else(|| ApiError::new(Code::Internal))?;
    Ok(HttpResponse::Created().json(json!({"success": true, "user": UserBody::of(&user)})))
}

fn user_details(app: &AppState, id: UserId) -> Result<HttpResponse, ApiError> {
    let user = app
        .state
        .user(id)
        .ok_or_else(|| ApiError::new(Code::NotFound))?;
    let tokens = app.state.tokens_of(id);
    let active = tokens.iter().filter(|t| t.revoked_at.is_none()).count();
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "user": UserBody::of(&user),
        "subscription": user.subscription,
        "created_at": user.created_at,
        "tokens": {"total": tokens.len(), "active": active, "items": tokens},
    })))
}

/// `GET /admin/users/{id}`.
pub async fn get_user(
    _: Admin,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    user_details(&app, parse_user_id(&path)?)
}

/// `PUT /admin/users/{id}/subscription`.
pub async fn put_subscription(
    _: Admin,
    app: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<SubscriptionBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_user_id(&path)?;
    let b = body.into_inner();
    let tier = field("tier", Tier::parse(&b.tier))?;
    let status = match b.status.as_deref() {
        None => SubscriptionStatus::Active,
        Some(s) => field("status", SubscriptionStatus::parse(s))?,
    };
    let expires_at = match b.expires_at.as_deref() {
        None => None,
        Some(s) => Some(field(
            "expires_at",
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| "must be an RFC 3339 time or null"),
        )?),
    };
    app.writer
        .send(Execute(Command::ChangeSubscription {
            user_id: id,
            subscription: Subscription {
                tier,
                status,
                expires_at,
            },
        }))
        .await??;
    user_details(&app, id)
}

/// `POST /admin/users/{id}/tokens`.
pub async fn issue_token(
    _: Admin,
    app: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_user_id(&path)?;
    tokens::issue(&app, id, body.into_inner()).await
}

/// `POST /admin/tokens/{token_id}/regenerate`: as the dashboard's, for any user's token.
pub async fn regenerate_token(
    _: Admin,
    app: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = tokens::parse_token_id(&path)?;
    let body = tokens::Regenerate::from_body(&body)?;
    tokens::regenerate(&app, id, None, body).await
}

/// `DELETE /admin/tokens/{token_id}`.
pub async fn revoke_token(
    _: Admin,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    tokens::revoke(&app, tokens::parse_token_id(&path)?, None).await
}
