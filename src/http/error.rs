//! The error table: every failure the service reports, with its status and stable name, in
//! one place, and the one JSON error type built from it.

use crate::actors::WriteError;
use crate::command::CommandError;
use crate::state::RateInfo;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::{json, Map, Value};
use std::fmt;

/// Every error the service can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unauthorized,
    PlanDenied,
    RateLimited,
    AuthThrottled,
    LoginThrottled,
    TokenChangesThrottled,
    InvalidCredentials,
    WrongPassword,
    CrossSite,
    NotFound,
    MethodNotAllowed,
    MalformedJson,
    BadRequest,
    InvalidField,
    UnsupportedMediaType,
    PayloadTooLarge,
    EmailTaken,
    TokenAlreadyRevoked,
    TokenLimitReached,
    TokenAlreadyRotated,
    ScopeDenied,
    AddressDenied,
    ServiceUnavailable,
    StreamUnavailable,
    Internal,
}

impl Code {
    /// The table: status, stable name (for logs and metrics), and the default message.
    pub const fn spec(self) -> (u16, &'static str, &'static str) {
        match self {
            Code::Unauthorized => (401, "unauthorized", "Unauthorized"),
            Code::PlanDenied => (
                403,
                "plan_denied",
                "API access is not available on your plan",
            ),
            Code::RateLimited => (429, "rate_limited", "Rate limit exceeded"),
            Code::AuthThrottled => (
                429,
                "auth_throttled",
                "Too many failed authentication attempts",
            ),
            Code::LoginThrottled => (429, "login_throttled", "Too many failed login attempts"),
            Code::TokenChangesThrottled => {
                (429, "token_changes_throttled", "Too many token changes")
            }
            Code::InvalidCredentials => (401, "invalid_credentials", "Invalid credentials"),
            Code::WrongPassword => (403, "wrong_password", "The current password is wrong"),
            Code::CrossSite => (403, "cross_site_request", "Cross-site request refused"),
            Code::NotFound => (404, "not_found", "Not found"),
            Code::MethodNotAllowed => (405, "method_not_allowed", "Method not allowed"),
            Code::MalformedJson => (400, "malformed_json", "Malformed JSON"),
            Code::BadRequest => (400, "bad_request", "Bad request"),
            Code::InvalidField => (422, "invalid_field", "Invalid field"),
            Code::UnsupportedMediaType => (
                415,
                "unsupported_media_type",
                "Content-Type must be application/json",
            ),
            Code::PayloadTooLarge => (413, "payload_too_large", "Request body too large"),
            Code::EmailTaken => (409, "email_taken", "A user with this email already exists"),
            Code::TokenAlreadyRevoked => (409, "token_already_revoked", "Token is already revoked"),
            Code::TokenLimitReached => (
                409,
                "token_limit_reached",
                "Token limit reached: revoke a token before generating another",
            ),
            Code::TokenAlreadyRotated => (
                409,
                "token_already_rotated",
                "Token was already regenerated; revoke it to end its grace period",
            ),
            Code::ScopeDenied => (403, "scope_denied", "Token lacks the required scope"),
            Code::AddressDenied => (403, "address_denied", "Token not allowed from this address"),
            Code::ServiceUnavailable => (503, "service_unavailable", "Service unavailable"),
            Code::StreamUnavailable => (
                503,
                "stream_unavailable",
                "The event stream is unavailable; try again",
            ),
            Code::Internal => (500, "internal", "Internal server error"),
        }
    }

    pub fn status(self) -> StatusCode {
        StatusCode::from_u16(self.spec().0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn name(self) -> &'static str {
        self.spec().1
    }
}

/// The JSON error: `{"success": false, "error": "...", ...extra}` plus headers.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    /// Boxed: errors travel in `Result`s on every path, and a small `Err` keeps them cheap.
    details: Box<Details>,
}

#[derive(Debug, Default)]
struct Details {
    message: Option<String>,
    extra: Map<String, Value>,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    pub fn new(code: Code) -> Self {
        ApiError {
            code,
            details: Box::default(),
        }
    }

    /// 401 with `WWW-Authenticate: Bearer`, as the contract asks.
    pub fn unauthorized() -> Self {
        Self::new(Code::Unauthorized)
            .header(HeaderName::from_static("www-authenticate"), "Bearer".into())
    }

    /// 422 naming the field.
    pub fn invalid_field(field: &str, reason: &str) -> Self {
        Self::new(Code::InvalidField)
            .message(format!("Invalid field {field}: {reason}"))
            .extra("field", json!(field))
    }

    /// 429 for an exhausted window, with the `rate_limit` object and its headers.
    pub fn rate_limited(info: RateInfo, now: i64) -> Self {
        let mut e = Self::new(Code::RateLimited)
            .extra("rate_limit", json!(info))
            .header(
                HeaderName::from_static("retry-after"),
                info.retry_after(now).to_string(),
            );
        for (k, v) in rate_headers(&info, now) {
            e = e.header(k, v.to_str().unwrap_or_default().to_owned());
        }
        e
    }

    /// 429 or 503 with `Retry-After`.
    pub fn retry_after(code: Code, secs: i64) -> Self {
        Self::new(code).header(HeaderName::from_static("retry-after"), secs.to_string())
    }

    /// The JSON response, for handlers that answer with an error without returning `Err`.
    pub fn into_response(self) -> HttpResponse {
        self.error_response()
    }

    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.details.message = Some(m.into());
        self
    }

    pub fn extra(mut self, key: &str, value: Value) -> Self {
        self.details.extra.insert(key.to_owned(), value);
        self
    }

    pub fn header(mut self, name: HeaderName, value: String) -> Self {
        self.details.headers.push((name, value));
        self
    }
}

/// The rate-limit headers of every authenticated response: the product's `X-RateLimit-*`
/// and the IETF draft's `RateLimit-Policy` / `RateLimit` fields. Numbers go straight into
/// header values (no intermediate strings): this runs on every API request.
pub fn rate_headers(info: &RateInfo, now: i64) -> [(HeaderName, HeaderValue); 5] {
    let until_reset = (info.reset - now).max(0);
    let text = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    [
        (
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(info.limit),
        ),
        (
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(info.remaining),
        ),
        (
            HeaderName::from_static("x-ratelimit-reset"),
            HeaderValue::from(info.reset),
        ),
        (
            HeaderName::from_static("ratelimit-policy"),
            text(format!(
                "\"default\";q={};w={}",
                info.limit, info.window_secs
            )),
        ),
        (
            HeaderName::from_static("ratelimit"),
            text(format!(
                "\"default\";r={};t={}",
                info.remaining, until_reset
            )),
        ),
    ]
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (status, name, msg) = self.code.spec();
        write!(
            f,
            "{status} {name}: {}",
            self.details.message.as_deref().unwrap_or(msg)
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = Map::new();
        body.insert("success".into(), Value::Bool(false));
        body.insert(
            "error".into(),
            Value::String(
                self.details
                    .message
                    .clone()
                    .unwrap_or_else(|| self.code.spec().2.to_owned()),
            ),
        );
        body.extend(self.details.extra.clone());
        let mut resp = HttpResponse::build(self.status_code());
        for (k, v) in &self.details.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                resp.insert_header((k.clone(), v));
            }
        }
        resp.insert_header(("cache-control", "no-store"));
        resp.json(Value::Object(body))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::EmailTaken => ApiError::new(Code::EmailTaken),
            CommandError::UserNotFound | CommandError::TokenNotFound => {
                ApiError::new(Code::NotFound)
            }
            CommandError::AlreadyRevoked => ApiError::new(Code::TokenAlreadyRevoked),
            CommandError::TokenLimitReached => ApiError::new(Code::TokenLimitReached),
            CommandError::AlreadyRotated => ApiError::new(Code::TokenAlreadyRotated),
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Rejected(c) => c.into(),
            WriteError::Storage(reason) => {
                tracing::error!(%reason, "command failed in storage");
                ApiError::retry_after(Code::ServiceUnavailable, 1)
            }
            WriteError::Unavailable(reason) => {
                tracing::warn!(%reason, "command refused: event stream unavailable");
                ApiError::retry_after(Code::StreamUnavailable, 1)
            }
        }
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        tracing::error!(error = %e, "writer unavailable");
        ApiError::retry_after(Code::ServiceUnavailable, 1)
    }
}

/// Maps actix's JSON extractor errors onto the table: syntax 400, wrong shape 422 (naming the
/// problem, e.g. an unknown or missing field), wrong content type 415, too large 413.
pub fn json_error(err: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::ContentType => ApiError::new(Code::UnsupportedMediaType),
        E::Overflow { .. } | E::OverflowKnownLength { .. } => ApiError::new(Code::PayloadTooLarge),
        E::Deserialize(e) if e.is_data() => {
            ApiError::new(Code::InvalidField).message(format!("Invalid request body: {e}"))
        }
        E::Deserialize(e) => {
            ApiError::new(Code::MalformedJson).message(format!("Malformed JSON: {e}"))
        }
        other => ApiError::new(Code::MalformedJson).message(format!("Unreadable body: {other}")),
    }
}

/// An error response the framework made itself (a payload over the limit, an unreadable
/// body…), as the JSON error of its status; every other response as it is. Headers the
/// framework set (`Retry-After`, `Allow`) stay.
///
/// `EitherBody`, not a boxed body: the left side passes every other response through
/// without an allocation (this runs on every request, the token checks included).
pub fn json_body_for_errors<B>(
    res: actix_web::dev::ServiceResponse<B>,
) -> actix_web::dev::ServiceResponse<actix_web::body::EitherBody<B>> {
    let status = res.status();
    let is_json = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res.map_into_left_body();
    }
    let code = match status.as_u16() {
        400 => Code::BadRequest,
        404 => Code::NotFound,
        405 => Code::MethodNotAllowed,
        413 => Code::PayloadTooLarge,
        415 => Code::UnsupportedMediaType,
        _ => Code::Internal,
    };
    let mut error = ApiError::new(code);
    if code == Code::Internal && status.as_u16() != 500 {
        error = error.message(status.canonical_reason().unwrap_or("Error"));
    }
    let (req, old) = res.into_parts();
    let mut new = error.error_response();
    *new.status_mut() = status;
    for (name, value) in old.headers() {
        if name != actix_web::http::header::CONTENT_TYPE
            && name != actix_web::http::header::CONTENT_LENGTH
        {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    actix_web::dev::ServiceResponse::new(req, new).map_into_right_body()
}
