//! The dashboard's JSON endpoints (session cookie): login, logout, list, generate, revoke,
//! regenerate. Passwords are checked with argon2id against a dummy hash when the email is
//! unknown, so the answer takes the same time and has the same body either way.

use super::account;
use super::auth::{client_ip, cookie_must_be_secure, same_origin, SessionUser, SESSION_COOKIE};
use super::error::{ApiError, Code};
use super::public::UserBody;
use super::tokens::{self, NewToken};
use super::AppState;
use crate::actors::Execute;
use crate::command::Command;
use crate::domain::{Email, TokenHash};
use actix_web::cookie::{time, Cookie, SameSite};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::Utc;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
}

fn parse_login(req: &HttpRequest, body: &[u8]) -> Result<LoginBody, ApiError> {
    match req.content_type() {
        "application/x-www-form-urlencoded" => serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::new(Code::InvalidField).message(format!("Invalid form: {e}"))),
        "application/json" => serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                ApiError::new(Code::InvalidField).message(format!("Invalid request body: {e}"))
            } else {
                ApiError::new(Code::MalformedJson).message(format!("Malformed JSON: {e}"))
            }
        }),
        _ => Err(ApiError::new(Code::UnsupportedMediaType)
            .message("Content-Type must be application/json or a form")),
    }
}

pub(super) fn session_cookie(req: &HttpRequest, app: &AppState, value: String) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value)
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(cookie_must_be_secure(req, &app.settings))
        .max_age(time::Duration::seconds(
            app.settings.session_ttl.as_secs() as i64
        ))
        .finish()
}

/// `POST /login`.
pub async fn login(
    req: HttpRequest,
    app: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    let ip = client_ip(&req);
    let now = Utc::now();
    let creds = parse_login(&req, &body)?;
    let account = account::count_sign_in(&app, ip, &creds.email, now.timestamp())?;
    let email = Email::parse(&creds.email).ok();
    let lookup = |app: &AppState| {
        email
            .as_ref()
            .and_then(|e| app.state.credentials(e.as_str()))
    };
    let known = lookup(&app);
    let (mut user_id, mut matches) =
        account::check_sign_in(&app, known.clone(), creds.password.clone()).await?;
    // Cluster mode: the account or its new password may come from another node a moment ago.
    // A failed login first catches up with the stream (known or not, so no answer tells
    // whether an account exists), and checks again if that changed the account.
    if let (false, Some(c)) = (matches, &app.cluster) {
        if c.catch_up_after_miss().await.is_ok() {
            let now_known = lookup(&app);
            if now_known != known {
                (user_id, matches) =
                    account::check_sign_in(&app, now_known, creds.password).await?;
            }
        }
    }
    let client_ip = ip.map(|i| i.to_string());
    let Some(user_id) = user_id.filter(|_| matches) else {
        // The audit log names the account only when it exists: what was typed into the email
        // field of a failed login may be anything, a password included.
        let email = if user_id.is_some() {
            email.map_or_else(String::new, |e| e.as_str().to_owned())
        } else {
            "<unknown account>".to_owned()
        };
        app.writer
            .send(Execute(Command::RecordLoginFailure { email, client_ip }))
            .await??;
        return Err(ApiError::new(Code::InvalidCredentials));
    };
    account::forgive_sign_in(&app, ip, account, now.timestamp());
    let mut raw = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut raw);
    let value = hex::encode(raw);
    let ttl =
        chrono::Duration::from_std(app.settings.session_ttl).unwrap_or(chrono::Duration::hours(12));
    app.writer
        .send(Execute(Command::RecordLogin {
            user_id,
            session: TokenHash::of(&value),
            expires_at: now + ttl,
            client_ip,
        }))
        .await??;
    let user = app
        .state
        .user(user_id)
        .ok_or_else(|| ApiError::new(Code::Internal))?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&req, &app, value))
        .insert_header(("cache-control", "no-store"))
        .json(json!({"success": true, "user": UserBody::of(&user)})))
}

/// `POST /logout`: ends the session if there is one, and clears the cookie either way.
pub async fn logout(req: HttpRequest, app: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    if let Some(s) = SessionUser::from_cookie(&req) {
        app.writer
            .send(Execute(Command::EndSession { session: s.session }))
            .await??;
    }
    let mut gone = session_cookie(&req, &app, String::new());
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({"success": true})))
}

/// `GET /dashboard/tokens`.
pub async fn list(s: SessionUser, app: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({"success": true, "tokens": app.state.tokens_of(s.user.id)}))
}

/// Counts one token change of the session's user through the dashboard, or refuses it (429)
/// once `[throttle] token_changes` are used up in this window.
fn count_token_change(app: &AppState, s: &SessionUser) -> Result<(), ApiError> {
    app.token_changes
        .try_count(s.user.id, Utc::now().timestamp())
        .map_err(|wait| ApiError::retry_after(Code::TokenChangesThrottled, wait))
}

/// `POST /dashboard/tokens`.
pub async fn generate(
    req: HttpRequest,
    s: SessionUser,
    app: web::Data<AppState>,
    body: web::Json<NewToken>,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    count_token_change(&app, &s)?;
    tokens::issue(&app, s.user.id, body.into_inner()).await
}

/// `DELETE /dashboard/tokens/{id}`.
pub async fn revoke(
    req: HttpRequest,
    s: SessionUser,
    app: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    count_token_change(&app, &s)?;
    tokens::revoke(&app, tokens::parse_token_id(&path)?, Some(s.user.id)).await
}

/// `POST /dashboard/tokens/{id}/regenerate`.
pub async fn regenerate(
    req: HttpRequest,
    s: SessionUser,
    app: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    let id = tokens::parse_token_id(&path)?;
    let body = tokens::Regenerate::from_body(&body)?;
    count_token_change(&app, &s)?;
    tokens::regenerate(&app, id, Some(s.user.id), body).await
}
