//! Flow 1, the hot path: from a token's text to an admitted caller, or a denial. No I/O, no
//! actor, no lock but the caller's own rate-limit bucket.

use super::{RateInfo, State, UserView};
use crate::domain::restrictions::Restrictions;
use crate::domain::token::{hash_if_well_formed, TokenFormatError};
use crate::domain::{Lapse, Tier, TokenId};
use std::net::IpAddr;
use std::sync::Arc;

/// Per-tier limits, indexed by [`Tier::index`]: `None` means no API access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierTable(pub [Option<(u32, u32)>; 4]);

impl TierTable {
    /// `(requests, window_secs)` of a tier, or `None` without API access.
    pub fn limits(&self, tier: Tier) -> Option<(u32, u32)> {
        self.0[tier.index()]
    }
}

/// What the caller of a check asks of the token besides being valid: a scope, and the
/// address the request comes from (the allowlist's).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// `X-Required-Scope` (or `?scope=`).
    pub scope: Option<RequiredScope<'a>>,
    /// The client's full address, as the throttles see it (before any /64 cut).
    pub ip: Option<IpAddr>,
}

/// A scope a caller requires. One outside the catalogue is carried by no token, not even
/// one with every scope: a typo in a proxy's configuration then refuses, never admits.
#[derive(Debug, Clone, Copy)]
pub struct RequiredScope<'a> {
    pub name: &'a str,
    pub in_catalogue: bool,
}

/// An admitted request.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: Arc<UserView>,
    pub token_id: TokenId,
    pub rate: RateInfo,
    /// The time of the check, epoch seconds.
    pub at: i64,
    /// When the token stops (epoch seconds), if it ever does: responses say so.
    pub expires_at: Option<i64>,
    /// The token's scopes (`None`: every scope), for `X-Auth-Scopes`.
    pub restrictions: Option<Arc<Restrictions>>,
}

/// Why a request is refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// 401: malformed, unknown, revoked or expired. The reason is for metrics only.
    Unauthorized(&'static str),
    /// 403: the plan has no API access, or the subscription lapsed.
    Plan { tier: Tier, lapse: Option<Lapse> },
    /// 403: the token does not carry the scope the caller requires.
    Scope(String),
    /// 403: the token's allowlist does not hold the request's address.
    Address,
    /// 429: the window's requests are used up.
    RateLimited(RateInfo),
}

impl From<TokenFormatError> for Denied {
    fn from(e: TokenFormatError) -> Self {
        Denied::Unauthorized(match e {
            TokenFormatError::Length => "length",
            TokenFormatError::Prefix => "prefix",
            TokenFormatError::Alphabet => "alphabet",
            TokenFormatError::Checksum => "checksum",
        })
    }
}

impl State {
    /// Why a well-formed token is not in the index: it ended long ago and left memory (as
    /// final as a revocation, and no reason to catch up), or it is unknown. Kept out of
    /// line: the hot path is the hit.
    #[cold]
    #[inline(never)]
    fn unknown(&self, hash: &crate::domain::TokenHash) -> Denied {
        if self.left_memory(hash) {
            Denied::Unauthorized("forgotten")
        } else {
            Denied::Unauthorized("unknown")
        }
    }

    /// Checks a token at `now` (epoch seconds) for what `ask` requires and, when it
    /// passes, counts the request. Checks in order: 401, plan 403, scope and address 403,
    /// 429; only an admitted request counts.
    pub fn verify(
        &self,
        token: &str,
        now: i64,
        tiers: &TierTable,
        ask: Ask<'_>,
    ) -> Result<Verified, Denied> {
        let hash = hash_if_well_formed(token)?;
        let tokens = self.tokens.pin();
        let live = tokens.get(&hash).ok_or_else(|| self.unknown(&hash))?;
        if live.expires_at <= now {
            return Err(Denied::Unauthorized(
                if live.expires_at == super::LiveToken::REVOKED {
                    "revoked"
                } else {
                    "expired"
                },
            ));
        }
        let user = self
            .users
            .pin()
            .get(&live.user_id)
            .cloned()
            .ok_or(Denied::Unauthorized("unknown user"))?;
        let sub = user.subscription;
        let (limit, window) = match (tiers.limits(sub.tier), sub.lapse_at(now)) {
            (Some(l), None) => l,
            (_, lapse) => {
                return Err(Denied::Plan {
                    tier: sub.tier,
                    lapse,
                })
            }
        };
        if let Some(required) = ask.scope {
            let has = required.in_catalogue
                && live
                    .restrictions
                    .as_deref()
                    .is_none_or(|r| r.has_scope(required.name));
            if !has {
                return Err(Denied::Scope(required.name.to_owned()));
            }
        }
        if let Some(r) = live.restrictions.as_deref() {
            if !r.allows(ask.ip) {
                return Err(Denied::Address);
            }
        }
        let rate = self
            .rate_limits
            .try_admit(live.user_id, live.token_id, now, limit, window)
            .map_err(Denied::RateLimited)?;
        if let Some(ip) = ask.ip {
            self.last_seen.note(live.token_id, now, ip);
        }
        Ok(Verified {
            user,
            token_id: live.token_id,
            rate,
            at: now,
            expires_at: (live.expires_at != i64::MAX).then_some(live.expires_at),
            restrictions: live.restrictions.clone(),
        })
    }
}
