//! The extractors that decide who is calling: [`Caller`] (API token, flow 1's hot path),
//! [`Admin`] (the admin token) and [`SessionUser`] (the dashboard cookie).

use super::error::{ApiError, Code};
use super::AppState;
use crate::domain::TokenHash;
use crate::state::{Ask, Denied, RequiredScope, UserView, Verified};
use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, FromRequest, HttpRequest};
use chrono::Utc;
use futures_util::future::{ready, Either, LocalBoxFuture, Ready};
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "snaptrack_session";

/// The token of `Authorization: Bearer <token>`, or `None` for anything else: no header, two
/// headers, non-ASCII bytes, another scheme (the scheme is case-insensitive), no token, or
/// whitespace inside the token.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let mut all = headers.get_all(header::AUTHORIZATION);
    let value = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty() && !token.contains(|c: char| c.is_ascii_whitespace())).then_some(token)
}

/// The client's address, as the throttles and the login audit count it: the TCP peer, or,
/// when the peer is a trusted proxy (`trusted_proxies`), the address it forwarded
/// ([`forwarded_client`]). IPv6 addresses are cut to their /64 (one host usually holds a
/// whole /64, and could rotate through it).
pub fn client_ip(req: &HttpRequest) -> Option<IpAddr> {
    client_addr(req).map(throttle_key)
}

/// The client's full address (the peer, or the client behind a trusted proxy), canonical:
/// what a token's address allowlist is checked against.
pub fn client_addr(req: &HttpRequest) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map_or(&[][..], |app| app.settings.trusted_proxies.as_slice());
    Some(forwarded_client(peer, req.headers(), trusted).to_canonical())
}

/// What the throttles count an address as: itself, or its /64 for IPv6.
fn throttle_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(seg))
        }
        v4 => v4,
    }
}

/// The scope a caller requires: `X-Required-Scope`, else `?scope=`. `Err` when what was
/// sent is not a scope name at all (a caller's mistake, 400).
fn required_scope<'a>(
    req: &'a HttpRequest,
    catalogue: &crate::domain::restrictions::ScopeCatalogue,
    buf: &'a mut Option<String>,
) -> Result<Option<RequiredScope<'a>>, ApiError> {
    let bad = || ApiError::new(Code::BadRequest).message("The required scope is not a scope name");
    // Every value given counts: a client must not be able to override the scope a proxy
    // requires by adding a header of its own (or a query parameter), so values that differ
    // are refused rather than one of them picked.
    let mut name: Option<&'a str> = None;
    let mut conflict = false;
    for v in req.headers().get_all("x-required-scope") {
        let v = v.to_str().map_err(|_| bad())?.trim();
        conflict |= name.is_some_and(|n| n != v);
        name = Some(v);
    }
    let q = req.query_string();
    if !q.is_empty() {
        let mut from_query: Option<String> = None;
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if k == "scope" {
                conflict |= from_query.as_deref().is_some_and(|n| n != v);
                from_query = Some(v.into_owned());
            }
        }
        if let Some(v) = from_query {
            conflict |= name.is_some_and(|n| n != v);
            if name.is_none() {
                name = Some(buf.insert(v).as_str());
            }
        }
    }
    if conflict {
        return Err(ApiError::new(Code::BadRequest)
            .message("Conflicting required scopes: give one X-Required-Scope or ?scope="));
    }
    let Some(name) = name else { return Ok(None) };
    if !crate::domain::restrictions::is_scope_name(name) {
        return Err(bad());
    }
    Ok(Some(RequiredScope {
        name,
        in_catalogue: catalogue.contains(name),
    }))
}

/// Whether the session cookie must carry `Secure`: the service speaks TLS itself,
/// `cookie_secure` says TLS ends before it, or the peer is a trusted proxy whose
/// `X-Forwarded-Proto` (its last entry: the one it wrote) is `https`. From any other peer the
/// header is ignored.
pub fn cookie_must_be_secure(req: &HttpRequest, settings: &crate::config::Settings) -> bool {
    if settings.tls.is_some() || settings.cookie_secure {
        return true;
    }
    let Some(peer) = req.peer_addr().map(|p| p.ip().to_canonical()) else {
        return false;
    };
    settings
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&peer))
        && req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The client behind `peer`. A peer that is not a trusted proxy is the client, whatever its
/// headers say. Behind a trusted one, `X-Forwarded-For` (every such header, in order, as one
/// list) is read from the right, since each proxy appends the address it saw: the first
/// address that is not itself a trusted proxy is the client, and whatever stands to its left
/// was written by that client and is ignored. An entry that is not an address ends the walk
/// at the last address known good.
pub fn forwarded_client(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| {
        let ip = ip.to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    };
    if !is_trusted(peer) {
        return peer;
    }
    // Split as bytes: a client's non-ASCII entry must not hide the entry its proxy appended
    // to the same line.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let hop = std::str::from_utf8(hop).unwrap_or("").trim();
        let parsed = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<std::net::SocketAddr>().map(|a| a.ip()));
        let Ok(ip) = parsed else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

fn app(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::new(Code::Internal))
}

/// A request with a valid API token, on a plan with API access, within its rate limit. The
/// request has been counted.
pub struct Caller(pub Verified);

/// What the synchronous part of a check decided.
enum Step {
    Done(Result<Caller, ApiError>),
    /// Cluster mode, a well-formed token this node does not know: it may have been issued on
    /// another node a moment ago. Catch up with the stream and look again.
    CatchUp(Arc<crate::cluster::Cluster>),
    /// Cluster mode, this node used its grant of the caller's limit: wait for the claim
    /// round that asks for more, and look again. Carries the window (its reset) it was for.
    Sync(Arc<crate::cluster::rounds::Rounds>, i64),
}

/// What a request has already waited for: a catch-up at most once, a sync once per window
/// and at most twice (a one-second window may roll over while its claim is on the stream;
/// the new window's first sync must not be refused as if the old one were still used up).
#[derive(Clone, Copy, Default)]
struct Tried {
    catch_up: bool,
    syncs: u8,
    /// The reset of the window the last sync was for.
    synced_for: Option<i64>,
}

impl Tried {
    fn may_sync(&self, reset: i64) -> bool {
        self.syncs < 2 && self.synced_for != Some(reset)
    }
}

impl Caller {
    /// The check, after what `tried` says was already done. A token issued elsewhere a
    /// moment ago may need both: a catch-up to know it, then a sync to claim its requests.
    fn check(req: &HttpRequest, tried: Tried) -> Step {
        let app = match app(req) {
            Ok(app) => app,
            Err(e) => return Step::Done(Err(e)),
        };
        if app.state.is_poisoned() {
            return Step::Done(Err(ApiError::retry_after(Code::ServiceUnavailable, 5)));
        }
        if let Some(c) = &app.cluster {
            if !c.is_fresh() {
                // Bounded staleness: too long without confirming this node is caught up.
                return Step::Done(Err(ApiError::retry_after(Code::ServiceUnavailable, 1)));
            }
        }
        let now = Utc::now().timestamp();
        let addr = client_addr(req);
        let ip = addr.map(throttle_key);
        if let Some(wait) = app.auth_throttle.blocked(ip, now) {
            return Step::Done(Err(ApiError::retry_after(Code::AuthThrottled, wait)));
        }
        let mut buf = None;
        let scope = match required_scope(req, &app.settings.scopes, &mut buf) {
            Ok(s) => s,
            Err(e) => return Step::Done(Err(e)),
        };
        let ask = Ask { scope, ip: addr };
        let started = Instant::now();
        let outcome = match bearer_token(req.headers()) {
            None => Err(Denied::Unauthorized("header")),
            Some(token) => app.state.verify(token, now, &app.tiers, ask),
        };
        app.metrics.verify_latency.observe(started.elapsed());
        let outcome = match (outcome, &app.cluster, &app.rounds) {
            (Err(Denied::Unauthorized("unknown")), Some(c), _) if !tried.catch_up => {
                return Step::CatchUp(c.clone());
            }
            (Err(Denied::RateLimited(info)), _, Some(rounds))
                if info.share_used && tried.may_sync(info.reset) =>
            {
                return Step::Sync(rounds.clone(), info.reset);
            }
            (outcome, _, _) => outcome,
        };
        Step::Done(match outcome {
            Ok(v) => Ok(Caller(v)),
            Err(Denied::Unauthorized(reason)) => {
                tracing::debug!(reason, "token rejected");
                app.auth_throttle.record_failure(ip, now);
                Err(ApiError::unauthorized())
            }
            Err(Denied::Plan { tier, lapse }) => {
                let mut e =
                    ApiError::new(Code::PlanDenied).extra("current_plan", json!(tier.as_str()));
                if let Some(l) = lapse {
                    e = e.extra("subscription_status", json!(l.as_str()));
                }
                Err(e)
            }
            Err(Denied::Scope(name)) => Err(ApiError::new(Code::ScopeDenied)
                .message(format!("Token lacks the scope {name}"))
                .extra("required_scope", json!(name))),
            Err(Denied::Address) => Err(ApiError::new(Code::AddressDenied)),
            Err(Denied::RateLimited(info)) => Err(ApiError::rate_limited(info, now)),
        })
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Either<
        Ready<Result<Self, Self::Error>>,
        LocalBoxFuture<'static, Result<Self, Self::Error>>,
    >;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let first = match Caller::check(req, Tried::default()) {
            Step::Done(r) => return Either::Left(ready(r)),
            step => step,
        };
        let req = req.clone();
        Either::Right(Box::pin(async move {
            let mut tried = Tried::default();
            let mut step = first;
            loop {
                match step {
                    Step::Done(r) => return r,
                    Step::CatchUp(cluster) => {
                        if let Err(e) = cluster.catch_up_after_miss().await {
                            tracing::warn!(error = %e, "catch-up for an unknown token failed");
                            return Err(ApiError::retry_after(Code::ServiceUnavailable, 1));
                        }
                        tried.catch_up = true;
                    }
                    Step::Sync(rounds, reset) => {
                        if !rounds.claim_round().await {
                            tracing::warn!("no claim round finished in time");
                        }
                        tried.syncs += 1;
                        tried.synced_for = Some(reset);
                    }
                }
                step = Caller::check(&req, tried);
            }
        }))
    }
}

/// A request carrying `SNAPTRACK_ADMIN_TOKEN`. Without that setting the admin API does not
/// exist (404).
pub struct Admin;

impl Admin {
    fn check(req: &HttpRequest) -> Result<Admin, ApiError> {
        use subtle::ConstantTimeEq;
        let app = app(req)?;
        let Some(expected) = app.settings.admin_token.as_deref() else {
            return Err(ApiError::new(Code::NotFound));
        };
        let now = Utc::now().timestamp();
        let ip = client_ip(req);
        if let Some(wait) = app.auth_throttle.blocked(ip, now) {
            return Err(ApiError::retry_after(Code::AuthThrottled, wait));
        }
        let given = bearer_token(req.headers()).unwrap_or("");
        // Compare hashes: equal length, so the comparison's time says nothing about the
        // length of the secret either.
        let a = TokenHash::of(given);
        let b = TokenHash::of(expected);
        if bool::from(a.as_bytes().ct_eq(b.as_bytes())) && !given.is_empty() {
            Ok(Admin)
        } else {
            app.auth_throttle.record_failure(ip, now);
            Err(ApiError::unauthorized())
        }
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Admin::check(req))
    }
}

/// A dashboard request with a live session.
pub struct SessionUser {
    pub user: Arc<UserView>,
    pub session: TokenHash,
}

impl SessionUser {
    pub fn from_cookie(req: &HttpRequest) -> Option<SessionUser> {
        let app = req.app_data::<web::Data<AppState>>()?;
        let cookie = req.cookie(SESSION_COOKIE)?;
        let hash = TokenHash::of(cookie.value());
        let session = app.state.session(&hash, Utc::now())?;
        let user = app.state.user(session.user_id)?;
        Some(SessionUser {
            user,
            session: hash,
        })
    }
}

impl FromRequest for SessionUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(SessionUser::from_cookie(req).ok_or_else(ApiError::unauthorized))
    }
}

/// Refuses state-changing dashboard requests from other sites: `Sec-Fetch-Site` other than
/// same-origin/none, or an `Origin` whose host is not this request's `Host`. Requests without
/// either header (scripts, tests) pass: the `SameSite=Strict` cookie keeps other sites' pages
/// from sending a session anyway.
pub fn same_origin(req: &HttpRequest) -> Result<(), ApiError> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Err(ApiError::new(Code::CrossSite));
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin == "null" || !origin_host.eq_ignore_ascii_case(host) {
            return Err(ApiError::new(Code::CrossSite));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies_and_read_from_the_right() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted: Vec<ipnet::IpNet> = ["10.0.0.0/8", "fd00::/8"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(
                    header::HeaderName::from_static("x-forwarded-for"),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            h
        };
        let cases: &[(&str, &[&str], &str)] = &[
            // An untrusted peer is the client, whatever it claims.
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            // Behind a trusted proxy: the address it appended.
            ("10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // A client's own forged entries stand to the left and are ignored.
            (
                "10.0.0.2",
                &["1.1.1.1, 2.2.2.2, 198.51.100.1"],
                "198.51.100.1",
            ),
            // Through a chain of trusted proxies, in one header or several.
            ("10.0.0.2", &["198.51.100.1, 10.9.9.9"], "198.51.100.1"),
            (
                "10.0.0.2",
                &["6.6.6.6, 198.51.100.1", "10.9.9.9"],
                "198.51.100.1",
            ),
            // With ports, and IPv6 (also as a mapped IPv4 peer).
            ("10.0.0.2", &["198.51.100.1:4711"], "198.51.100.1"),
            ("fd00::1", &["[2001:db8::5]:443"], "2001:db8::5"),
            ("::ffff:10.0.0.2", &["198.51.100.1"], "198.51.100.1"),
            // No header, or garbage where the client should be: the last address known good.
            ("10.0.0.2", &[], "10.0.0.2"),
            ("10.0.0.2", &["198.51.100.1, unknown"], "10.0.0.2"),
            ("10.0.0.2", &["unknown, 10.9.9.9"], "10.9.9.9"),
        ];
        // Bytes that are not ASCII in a client's entry do not hide what the proxy appended.
        let mut h = HeaderMap::new();
        h.append(
            header::HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_bytes("é, 198.51.100.1".as_bytes()).unwrap(),
        );
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &h, &trusted),
            ip("198.51.100.1")
        );
        for (peer, headers, want) in cases {
            assert_eq!(
                forwarded_client(ip(peer), &xff(headers), &trusted),
                ip(want),
                "peer {peer}, X-Forwarded-For {headers:?}"
            );
        }
        assert_eq!(
            forwarded_client(ip("10.0.0.2"), &xff(&["198.51.100.1"]), &[]),
            ip("10.0.0.2"),
            "nothing trusted: the header is ignored"
        );
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn parses_the_bearer_scheme_case_insensitively() {
        assert_eq!(bearer_token(&headers(&[b"Bearer abc"])), Some("abc"));
        assert_eq!(bearer_token(&headers(&[b"bEaReR abc"])), Some("abc"));
    }

    #[test]
    fn everything_else_is_none() {
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Basic abc",
            b"Bearerabc",
            b"Bearer a b",
            b"Bearer a\tb",
            b"Token abc",
            b"Bearer \xff\xfe",
        ] {
            assert_eq!(bearer_token(&headers(&[bad])), None, "{bad:?}");
        }
        assert_eq!(bearer_token(&headers(&[])), None);
        assert_eq!(bearer_token(&headers(&[b"Bearer a", b"Bearer b"])), None);
    }
}
