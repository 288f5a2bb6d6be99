//! The public API: `GET /test` (the product document's "Testing Your Token") and `GET /auth`
//! (forward auth for proxies and API nodes). Both are a [`Caller`] and a response.

use super::auth::Caller;
use super::error::rate_headers;
use super::AppState;
use actix_web::{web, HttpResponse, HttpResponseBuilder};
use serde::Serialize;

#[derive(Serialize)]
struct TestBody<'a> {
    success: bool,
    message: &'static str,
    user: UserBody<'a>,
    rate_limit: crate::state::RateInfo,
}

/// The `user` object of the product document.
#[derive(Serialize)]
pub struct UserBody<'a> {
    pub id: u64,
    pub name: &'a str,
    pub email: &'a str,
    pub subscription_tier: &'static str,
}

impl<'a> UserBody<'a> {
    pub fn of(u: &'a crate::state::UserView) -> Self {
        UserBody {
            id: u.id.0,
            name: &u.name,
            email: &u.email,
            subscription_tier: u.subscription.tier.as_str(),
        }
    }
}

fn ok_with_rate(caller: &Caller) -> HttpResponseBuilder {
    let mut r = HttpResponse::Ok();
    for h in rate_headers(&caller.0.rate, caller.0.at) {
        r.insert_header(h);
    }
    if let Some(at) = caller.0.expires_at {
        // When this token stops (its expiry, or the end of its grace after a regenerate), so
        // that a client can tell it must move to the new one in time.
        r.insert_header(("x-token-expires-at", at.to_string()));
    }
    r
}

/// `GET /test`.
pub async fn test(caller: Caller) -> HttpResponse {
    let body = TestBody {
        success: true,
        message: "API is working",
        user: UserBody::of(&caller.0.user),
        rate_limit: caller.0.rate,
    };
    ok_with_rate(&caller).json(body)
}

/// `GET /auth`: 200, empty body, identity in headers; `X-Auth-Scopes` lists the token's
/// scopes (a token without restrictions has every scope of the catalogue).
pub async fn forward_auth(caller: Caller, app: web::Data<AppState>) -> HttpResponse {
    let v = &caller.0;
    let scopes: &str = match v
        .restrictions
        .as_deref()
        .and_then(|r| r.scopes_joined.as_deref())
    {
        Some(s) => s,
        None => app.settings.scopes.joined(),
    };
    use actix_web::http::header::HeaderValue;
    let scopes = if scopes.is_empty() {
        HeaderValue::from_static("")
    } else {
        HeaderValue::from_str(scopes).unwrap_or_else(|_| HeaderValue::from_static(""))
    };
    ok_with_rate(&caller)
        .insert_header(("x-auth-user-id", v.user.id.to_string()))
        .insert_header(("x-auth-tier", v.user.subscription.tier.as_str()))
        .insert_header(("x-auth-token-id", v.token_id.to_string()))
        .insert_header(("x-auth-scopes", scopes))
        .finish()
}
