//! Flow 1, the hot path: from a token's text to an admitted caller, or a denial. No I/O, no
//! actor, no lock but the caller's own rate-limit bucket.

use super::{RateInfo, State, UserView};
use crate::domain::token::{hash_if_well_formed, TokenFormatError};
use crate::domain::{Lapse, Tier, TokenId};
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

/// An admitted request.
#[derive(Debug, Clone)]
pub struct Verified {
    pub user: Arc<UserView>,
    pub token_id: TokenId,
    pub rate: RateInfo,
    /// The time of the check, epoch seconds.
    pub at: i64,
}

/// Why a request is refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// 401: malformed, unknown, revoked or expired. The reason is for metrics only.
    Unauthorized(&'static str),
    /// 403: the plan has no API access, or the subscription lapsed.
    Plan { tier: Tier, lapse: Option<Lapse> },
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

    /// Checks a token at `now` (epoch seconds) and, when it passes, counts the request.
    pub fn verify(&self, token: &str, now: i64, tiers: &TierTable) -> Result<Verified, Denied> {
        let hash = hash_if_well_formed(token)?;
        let live = {
            let tokens = self.tokens.pin();
            *tokens.get(&hash).ok_or_else(|| self.unknown(&hash))?
        };
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
        let rate = self
            .rate_limits
            .try_admit(live.user_id, live.token_id, now, limit, window)
            .map_err(Denied::RateLimited)?;
        Ok(Verified {
            user,
            token_id: live.token_id,
            rate,
            at: now,
        })
    }
}
