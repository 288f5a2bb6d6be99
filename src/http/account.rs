//! The account's own settings (session cookie): change password, and log out everywhere. And
//! the two steps every password takes: stored as a hash in the credential store under a new
//! id before any event names it ([`store_password`]), and read back from there to be checked
//! ([`password_hash_of`]).

use super::auth::{client_ip, same_origin, SessionUser};
use super::error::{ApiError, Code};
use super::AppState;
use crate::actors::Execute;
use crate::command::Command;
use crate::credentials::{CredentialError, Credentials};
use crate::domain::{email_key, verify_password, Password, TokenHash, UserId};
use crate::event::Event;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;

fn unavailable(e: CredentialError) -> ApiError {
    tracing::error!(error = %e, "credential store unavailable");
    match e {
        CredentialError::Remote(_) => ApiError::retry_after(Code::ServiceUnavailable, 1),
        CredentialError::Local(_) | CredentialError::Flush(_) => ApiError::new(Code::Internal),
    }
}

/// Hashes `password` (argon2id, off the executor) and stores the hash under a fresh
/// credential id, which it returns for the event to name.
pub async fn store_password(
    credentials: &Credentials,
    password: Password,
) -> Result<String, ApiError> {
    let phc = web::block(move || password.hash())
        .await
        .map_err(|_| ApiError::new(Code::Internal))?
        .map_err(|_| ApiError::new(Code::Internal))?;
    let id = Credentials::new_id();
    credentials.put(&id, &phc).await.map_err(unavailable)?;
    Ok(id)
}

/// What the login of an email without an account reads instead of a credential: the same
/// store round trip, so that an unreachable bucket answers 503 either way (no answer tells
/// whether an account exists).
pub const NO_CREDENTIAL: &str = "absent";

/// The hash a credential id names; `None` if the store does not hold it (the caller checks
/// against the dummy hash then, so the answer takes as long and says as little).
pub async fn password_hash_of(
    app: &AppState,
    credential_id: &str,
) -> Result<Option<String>, ApiError> {
    let found = app
        .credentials
        .get(credential_id)
        .await
        .map_err(unavailable)?;
    if found.is_none() && credential_id != NO_CREDENTIAL {
        tracing::error!(
            credential_id,
            "a user's credential is missing from the store"
        );
    }
    Ok(found)
}

/// Checks `password` against `phc` with at most a few argon2 checks at once (each takes
/// ~19 MiB and tens of milliseconds).
async fn check_password(app: &AppState, password: String, phc: String) -> Result<bool, ApiError> {
    let permit = app
        .password_checks
        .acquire()
        .await
        .map_err(|_| ApiError::new(Code::Internal))?;
    let matches = web::block(move || verify_password(&password, &phc))
        .await
        .map_err(|_| ApiError::new(Code::Internal))?;
    drop(permit);
    Ok(matches)
}

/// Counts a sign-in attempt (a login, or a current password checked) before the password is
/// checked, in the same step as the look at the count, so parallel guesses cannot outrun the
/// throttle. Per address, and per account from any address: the same for an email without
/// an account, so the answer tells nothing (keyed by a hash, so the map holds no typed-in
/// text). Returns the account's key, for [`forgive_sign_in`].
pub fn count_sign_in(
    app: &AppState,
    ip: Option<IpAddr>,
    email: &str,
    now: i64,
) -> Result<TokenHash, ApiError> {
    if let Some(ip) = ip {
        app.login_throttle
            .try_count(ip, now)
            .map_err(|wait| ApiError::retry_after(Code::LoginThrottled, wait))?;
    }
    let account = TokenHash::of(&email_key(email));
    if let Err(wait) = app.account_login_throttle.try_count(account, now) {
        app.login_throttle.forgive(ip, now);
        return Err(ApiError::retry_after(Code::LoginThrottled, wait));
    }
    Ok(account)
}

/// A successful sign-in takes its count back.
pub fn forgive_sign_in(app: &AppState, ip: Option<IpAddr>, account: TokenHash, now: i64) {
    app.login_throttle.forgive(ip, now);
    app.account_login_throttle.forgive(Some(account), now);
}

/// Checks `password` against the credential of `known` (user, credential id), or against
/// the dummy hash when there is none, so that the answer takes as long either way (the
/// store is read either way too). A user whose hash cannot be found is refused as any wrong
/// password. Returns the user whose password it was checked against, and whether it matched.
pub async fn check_sign_in(
    app: &AppState,
    known: Option<(UserId, String)>,
    password: String,
) -> Result<(Option<UserId>, bool), ApiError> {
    let (user_id, phc) = match known {
        Some((id, credential)) => match password_hash_of(app, &credential).await? {
            Some(phc) => (Some(id), phc),
            None => (None, app.dummy_hash.clone()),
        },
        None => {
            password_hash_of(app, NO_CREDENTIAL).await?;
            (None, app.dummy_hash.clone())
        }
    };
    let matches = check_password(app, password, phc).await?;
    Ok((user_id, matches))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /dashboard/password`: the current password, then the new one (the same rules as at
/// registration). Every other session of the user ends; this one stays. A wrong current
/// password counts as a failed login (the same throttles) and changes nothing.
pub async fn change_password(
    req: HttpRequest,
    s: SessionUser,
    app: web::Data<AppState>,
    body: web::Json<ChangePassword>,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    let body = body.into_inner();
    let now = Utc::now().timestamp();
    let ip = client_ip(&req);
    // Guessing the current password with a stolen session is guessing a login: the same
    // throttles, counted before the check.
    let account = count_sign_in(&app, ip, &s.user.email, now)?;
    let mine = app.state.credential_of(s.user.id).map(|c| (s.user.id, c));
    let (known, matches) = check_sign_in(&app, mine, body.current_password).await?;
    if !matches || known.is_none() {
        // In the security log as any failed sign-in (never the password that was tried).
        app.writer
            .send(Execute(Command::RecordLoginFailure {
                email: s.user.email.clone(),
                client_ip: ip.map(|i| i.to_string()),
            }))
            .await??;
        return Err(ApiError::new(Code::WrongPassword));
    }
    forgive_sign_in(&app, ip, account, now);
    let min_len = app.settings.min_password_length;
    let words = [s.user.email.clone(), s.user.name.clone()];
    let new = web::block(move || {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        Password::parse(&body.new_password, min_len, &words)
    })
    .await
    .map_err(|_| ApiError::new(Code::Internal))?
    .map_err(|weak| ApiError::invalid_field("new_password", &weak.to_string()))?;
    let credential_id = store_password(&app.credentials, new).await?;
    let envs = app
        .writer
        .send(Execute(Command::ChangePassword {
            user_id: s.user.id,
            credential_id,
            keep: Some(s.session),
        }))
        .await??;
    // As a revoke: the other sessions end, and the new password works, on every node before
    // the answer.
    super::tokens::propagate(&app, &envs).await;
    let ended = envs.iter().find_map(|e| match &e.event {
        Event::PasswordChanged(p) => Some(p.sessions_ended.len()),
        _ => None,
    });
    Ok(HttpResponse::Ok().json(json!({
        "success": true,
        "sessions_ended": ended.unwrap_or(0),
    })))
}

/// `POST /dashboard/sessions/end-all`: log out everywhere, this session included.
pub async fn end_all_sessions(
    req: HttpRequest,
    s: SessionUser,
    app: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    same_origin(&req)?;
    let envs = app
        .writer
        .send(Execute(Command::EndAllSessions { user_id: s.user.id }))
        .await??;
    super::tokens::propagate(&app, &envs).await;
    let mut gone = super::dashboard::session_cookie(&req, &app, String::new());
    gone.make_removal();
    Ok(HttpResponse::Ok()
        .cookie(gone)
        .json(json!({"success": true, "sessions_ended": envs.len()})))
}
