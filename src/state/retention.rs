//! What memory keeps of tokens that ended (revoked or expired): per user, the
//! [`ENDED_KEPT`] that ended most recently. Older ones leave the projections (the token
//! index and the records) and live on in the log only; their hashes' first 8 bytes stay in
//! a set, so that a check of such a token is a 401 at once, with no catch-up in cluster
//! mode. Without this, one account regenerating in a loop grows memory without bound.
//!
//! "Now" is the time of the event being applied, never the clock, so that replay and every
//! node evict exactly the same tokens.

use crate::domain::{TokenId, UserId};
use chrono::{DateTime, Utc};
use std::collections::{BTreeSet, HashMap};

/// Ended tokens kept in memory (and in the lists) per user.
pub const ENDED_KEPT: usize = 100;

/// One user's tokens that will end by time, and those that ended, by end time.
#[derive(Default)]
struct UserEndings {
    /// Active tokens with an expiry, by expiry.
    expiring: BTreeSet<(DateTime<Utc>, TokenId)>,
    ended: BTreeSet<(DateTime<Utc>, TokenId)>,
}

/// Every user's endings.
#[derive(Default)]
pub struct Endings {
    users: HashMap<UserId, UserEndings>,
}

impl Endings {
    /// A token was issued at `at`. Returns the tokens that must leave memory.
    pub fn issued(
        &mut self,
        user: UserId,
        id: TokenId,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Vec<TokenId> {
        let u = self.users.entry(user).or_default();
        match expires_at {
            Some(e) if e <= at => {
                u.ended.insert((e, id));
            }
            Some(e) => {
                u.expiring.insert((e, id));
            }
            None => {}
        }
        Self::settle(u, at)
    }

    /// A token was revoked at `at` (it expires at `expires_at`, if ever). Returns the tokens
    /// that must leave memory.
    pub fn revoked(
        &mut self,
        user: UserId,
        id: TokenId,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Vec<TokenId> {
        let u = self.users.entry(user).or_default();
        let mut evicted = Self::settle(u, at);
        let ended_before = match expires_at {
            // Still waiting to expire: it ends now.
            Some(e) => !u.expiring.remove(&(e, id)),
            None => false,
        };
        if !ended_before {
            u.ended.insert((at, id));
            evicted.extend(Self::evict(u));
        }
        evicted
    }

    /// An active token's expiry moved from `before` to `after` at `at` (regenerated with a
    /// grace period). Returns the tokens that must leave memory.
    pub fn expiry_changed(
        &mut self,
        user: UserId,
        id: TokenId,
        before: Option<DateTime<Utc>>,
        after: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Vec<TokenId> {
        let u = self.users.entry(user).or_default();
        let mut evicted = Self::settle(u, at);
        let still_active = match before {
            Some(b) => u.expiring.remove(&(b, id)),
            None => true,
        };
        if still_active {
            if after <= at {
                u.ended.insert((after, id));
                evicted.extend(Self::evict(u));
            } else {
                u.expiring.insert((after, id));
            }
        }
        evicted
    }

    /// Every user's expiring and ended tokens, by user (for snapshots).
    #[allow(clippy::type_complexity)]
    pub fn export(
        &self,
    ) -> Vec<(
        UserId,
        Vec<(DateTime<Utc>, TokenId)>,
        Vec<(DateTime<Utc>, TokenId)>,
    )> {
        let mut out: Vec<_> = self
            .users
            .iter()
            .map(|(u, e)| {
                (
                    *u,
                    e.expiring.iter().copied().collect(),
                    e.ended.iter().copied().collect(),
                )
            })
            .collect();
        out.sort_by_key(|(u, _, _)| *u);
        out
    }

    /// Puts one user's exported endings back.
    pub fn import(
        &mut self,
        user: UserId,
        expiring: Vec<(DateTime<Utc>, TokenId)>,
        ended: Vec<(DateTime<Utc>, TokenId)>,
    ) {
        let u = self.users.entry(user).or_default();
        u.expiring.extend(expiring);
        u.ended.extend(ended);
    }

    /// Moves what expired by `at` to the ended, then evicts beyond the bound.
    fn settle(u: &mut UserEndings, at: DateTime<Utc>) -> Vec<TokenId> {
        while let Some(&(e, id)) = u.expiring.first() {
            if e > at {
                break;
            }
            u.expiring.pop_first();
            u.ended.insert((e, id));
        }
        Self::evict(u)
    }

    fn evict(u: &mut UserEndings) -> Vec<TokenId> {
        let mut out = Vec::new();
        while u.ended.len() > ENDED_KEPT {
            if let Some((_, id)) = u.ended.pop_first() {
                out.push(id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn keeps_the_most_recently_ended_per_user() {
        let mut e = Endings::default();
        let (u, t0) = (UserId(1), Utc::now());
        let ids: Vec<TokenId> = (0..ENDED_KEPT + 5).map(|_| TokenId::new()).collect();
        let mut evicted = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let at = t0 + Duration::seconds(i as i64);
            evicted.extend(e.issued(u, *id, None, at));
            evicted.extend(e.revoked(u, *id, None, at));
        }
        assert_eq!(evicted, ids[..5].to_vec(), "the oldest endings leave first");
        // Another user is unaffected.
        assert!(e.issued(UserId(2), TokenId::new(), None, t0).is_empty());
    }

    #[test]
    fn expiry_ends_a_token_by_the_events_time() {
        let mut e = Endings::default();
        let (u, t0) = (UserId(1), Utc::now());
        let short = TokenId::new();
        assert!(e
            .issued(u, short, Some(t0 + Duration::minutes(1)), t0)
            .is_empty());
        // Revoked after it expired: it ended at its expiry, once.
        let later = t0 + Duration::hours(1);
        e.revoked(u, short, Some(t0 + Duration::minutes(1)), later);
        let mut evicted = Vec::new();
        for i in 0..ENDED_KEPT as i64 {
            let id = TokenId::new();
            evicted.extend(e.issued(u, id, None, later + Duration::seconds(i)));
            evicted.extend(e.revoked(u, id, None, later + Duration::seconds(i)));
        }
        assert_eq!(evicted, vec![short]);
    }
}
