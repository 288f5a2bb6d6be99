//! Claiming mode's rules (cluster mode): how much of a user's window a node asks for, when it
//! asks, and how the stream's order turns claims into grants.
//!
//! - **Ahead of need.** A node asks again once half of its last claim is used, while the
//!   rest still admits requests ([`BucketInner::admit_claimed`] raises `early`); a request
//!   waits on the stream only when it finds the node's grant used up before that claim came.
//! - **Ahead of the window.** In the last part of a window ([`lead_secs`]) a node that
//!   served the user claims for the next window too, up to what it used in this one; the
//!   claims are kept beside the window ([`Ahead`]) and become its grant when it begins, so
//!   the first requests of a window do not all wait on claims.
//! - **Batched.** [`RateLimits::drain_claims`] gathers every user's claim into one list: the
//!   round publishes it as one `usage_claimed` message, however many users it holds.
//! - **Zero overshoot.** A claim is granted only as far as the window had room when the
//!   stream ordered it ([`BucketInner::fold_claim`]); a node admits only granted requests.

use super::{Bucket, BucketInner, RateLimits};
use crate::domain::UserId;
use crate::event::Claim;

/// The next window's claims, made before it began.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ahead {
    /// Start of the window claimed in; 0: none.
    pub start: i64,
    /// Requests in applied claims for it, from every node.
    pub logged: u32,
    /// Claimed by this node, not yet applied.
    pub in_flight: u32,
    /// What this node's applied claims were granted.
    pub granted: u32,
}

/// How long before a window ends a node claims for the next one: a tenth of the window, at
/// least a quarter of a second, at most half the window.
fn lead_secs(window_secs: u32) -> f64 {
    let w = f64::from(window_secs.max(1));
    (w / 10.0).max(0.25).min(w / 2.0)
}

/// The smallest claim worth a round: a sixteenth of a node's share of the limit.
fn floor(limit: u32, nodes: u32) -> u32 {
    (limit / nodes.max(1).saturating_mul(16)).max(1)
}

impl BucketInner {
    /// Admits one request against this node's grant: `Ok(remaining)`, or `Err(share_used)`
    /// (true: the node's grant is used, a claim is wanted; false: the window is). Raises
    /// `early` once half of the last claim is used (and some of it is left), so the next
    /// claim is on its way before the grant runs out.
    pub(super) fn admit_claimed(&mut self, limit: u32) -> Result<u32, bool> {
        if limit < self.limit {
            // The plan shrank mid-window: what this node was granted under the old limit
            // counts only as far as the new one leaves room.
            let cap = self.local.saturating_add(limit.saturating_sub(self.logged));
            self.granted = self.granted.min(cap);
        }
        self.limit = limit;
        if self.local >= self.granted {
            if self.logged >= limit && self.in_flight == 0 {
                return Err(false);
            }
            self.wanted += 1;
            return Err(true);
        }
        self.local += 1;
        let left = self.granted - self.local;
        // `left > 0`: ahead of need, not eager. A node whose grant ran out claims when a
        // request wants it, so a burst that stopped leaves nothing claimed behind it.
        if !self.early
            && self.in_flight == 0
            && self.logged < limit
            && left > 0
            && left <= self.last_claim / 2
        {
            self.early = true;
        }
        // What nobody has claimed, plus what this node claimed and has not used.
        Ok(limit.saturating_sub(self.logged) + left)
    }

    /// How many requests to claim now for the current window, 0 for none: the waiting
    /// demand, or twice the previous claim (at least [`floor`]) up to a 1/K share of what
    /// is left, whichever is larger. Claims ramp up like TCP's slow start: a node that keeps
    /// needing requests claims ever more at a time, while a claim lost with a restart, or
    /// made beside another node's from a stale view, stays small.
    pub(super) fn next_claim(&mut self, nodes: u32) -> u32 {
        let wanted = std::mem::take(&mut self.wanted);
        let early = std::mem::take(&mut self.early);
        let free = self.limit.saturating_sub(self.logged);
        if wanted == 0 && (!early || self.in_flight > 0 || free == 0) {
            return 0;
        }
        let ramp = self
            .last_claim
            .saturating_mul(2)
            .max(floor(self.limit, nodes))
            .min(free / nodes.max(1));
        self.last_claim = wanted.max(ramp).clamp(1, free.max(1));
        self.last_claim
    }

    /// The claim for the next window, in the last part of this one, when this node served
    /// the user in it and has not claimed ahead yet: what it used here, up to a 1/K share.
    pub(super) fn ahead_claim(&mut self, now_ms: i64, nodes: u32) -> Option<(i64, u32)> {
        if self.window_secs == 0 || self.local == 0 || self.limit == 0 {
            return None;
        }
        let next = self.window_start + i64::from(self.window_secs);
        let lead_ms = (lead_secs(self.window_secs) * 1000.0) as i64;
        if now_ms < next * 1000 - lead_ms || now_ms >= next * 1000 {
            return None;
        }
        if self.ahead.start == next && (self.ahead.in_flight > 0 || self.ahead.granted > 0) {
            return None;
        }
        if self.ahead.start != next {
            self.ahead = Ahead {
                start: next,
                ..Ahead::default()
            };
        }
        let free = self.limit.saturating_sub(self.ahead.logged);
        let n = self.local.min(free / nodes.max(1));
        if n == 0 {
            return None;
        }
        self.ahead.in_flight += n;
        Some((next, n))
    }

    /// The window at `start` (of the same length) begins: what was claimed ahead for it,
    /// if anything, is its grant. Called on a fresh window, after the counts were reset.
    pub(super) fn take_ahead(&mut self, start: i64) {
        let ahead = std::mem::take(&mut self.ahead);
        if ahead.start == start && ahead.start != 0 {
            self.logged = ahead.logged;
            self.in_flight = ahead.in_flight;
            self.granted = ahead.granted;
            self.last_claim = ahead.granted.max(ahead.in_flight);
        }
    }

    /// Folds a claim in, in the stream's order. `own`: this node made it. It enters the
    /// window's `logged`; this node's own leave `in_flight`, granted as far as the window had
    /// room for them when they were ordered.
    pub(super) fn fold_claim(&mut self, c: &Claim, own: bool) {
        let next = self.window_start + i64::from(self.window_secs);
        if c.window_secs == self.window_secs && c.window_start == next && self.window_secs > 0 {
            if self.ahead.start != next {
                self.ahead = Ahead {
                    start: next,
                    ..Ahead::default()
                };
            }
            let a = &mut self.ahead;
            let before = a.logged;
            a.logged = a.logged.saturating_add(c.requests);
            if own {
                let granted = c.requests.min(self.limit.saturating_sub(before));
                if a.in_flight >= c.requests {
                    a.in_flight -= c.requests;
                    a.granted += granted;
                }
                // Otherwise an earlier process's claim (replayed): it may have used it, so
                // it counts against the limit and this one never uses it.
            }
            return;
        }
        if c.window_start > self.window_start || self.window_secs == 0 {
            self.roll_to(c.window_start, c.window_secs);
        }
        if c.window_start != self.window_start || c.window_secs != self.window_secs {
            return;
        }
        let before = self.logged;
        self.logged = self.logged.saturating_add(c.requests);
        if !own {
            return;
        }
        let granted = c.requests.min(self.limit.saturating_sub(before));
        self.granted += granted;
        if self.in_flight >= c.requests {
            self.in_flight -= c.requests;
        } else {
            // A claim this process did not make (an earlier run of this node, replayed):
            // whatever it was granted may have been used.
            self.in_flight = 0;
            self.local += granted;
        }
    }

    /// Takes back a claim that was never ordered (its round failed): it is asked for again.
    fn unclaim(&mut self, c: &Claim) {
        if c.window_secs != self.window_secs {
            return;
        }
        if c.window_start == self.window_start {
            self.in_flight = self.in_flight.saturating_sub(c.requests);
            self.wanted = self.wanted.saturating_add(c.requests);
        } else if c.window_start == self.ahead.start {
            self.ahead.in_flight = self.ahead.in_flight.saturating_sub(c.requests);
        }
    }
}

impl RateLimits {
    /// Every claim due at `now_ms` (epoch milliseconds), one per user at most for each
    /// window: what waiting requests want, what `early` asks for, and claims ahead of the
    /// next window. They are in flight from here until applied or given back with
    /// [`RateLimits::restore_claims`].
    pub fn drain_claims(&self, now_ms: i64) -> Vec<Claim> {
        if !self.claiming() {
            return Vec::new();
        }
        let nodes = self.nodes().max(1);
        let map = self.buckets.pin();
        let mut out = Vec::new();
        for (user, bucket) in map.iter() {
            let mut b = bucket.inner.lock();
            let requests = b.next_claim(nodes);
            if requests > 0 {
                b.in_flight += requests;
                out.push(Claim {
                    user_id: *user,
                    window_start: b.window_start,
                    window_secs: b.window_secs,
                    requests,
                });
            }
            if let Some((start, requests)) = b.ahead_claim(now_ms, nodes) {
                out.push(Claim {
                    user_id: *user,
                    window_start: start,
                    window_secs: b.window_secs,
                    requests,
                });
            }
        }
        out
    }

    /// Folds a claim in (see [`BucketInner::fold_claim`]).
    pub fn apply_claim(&self, c: &Claim, own: bool) {
        if !self.claiming() {
            return;
        }
        let map = self.buckets.pin();
        let bucket = map.get_or_insert_with(c.user_id, Bucket::default);
        bucket.inner.lock().fold_claim(c, own);
    }

    /// Gives back claims that were drained but never ordered (their round failed), so that
    /// the next round asks for them again.
    pub fn restore_claims(&self, claims: &[Claim]) {
        let map = self.buckets.pin();
        for c in claims {
            if let Some(b) = map.get(&c.user_id) {
                b.inner.lock().unclaim(c);
            }
        }
    }

    /// Notified when a claim is wanted: a request found this node's grant used, or used
    /// half of its last claim. The claim round waits on it.
    pub fn demand(&self) -> &tokio::sync::Notify {
        &self.demand
    }

    /// The next window's claims of `user` as this node knows them: (start, requests of
    /// every node, granted here). For tests and the snapshot.
    pub fn ahead_of(&self, user: UserId) -> Option<(i64, u32, u32)> {
        let map = self.buckets.pin();
        let b = map.get(&user)?.inner.lock();
        (b.ahead.start != 0).then_some((b.ahead.start, b.ahead.logged, b.ahead.granted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenId;
    use futures_util::FutureExt;

    const U: UserId = UserId(1);

    fn claiming(nodes: u32) -> RateLimits {
        let rl = RateLimits::default();
        rl.use_claims();
        rl.set_nodes(nodes);
        rl
    }

    /// Drains the claims due at `now` seconds and folds them in as the stream would, as
    /// this node's own.
    fn round(rl: &RateLimits, now: i64) -> Vec<u32> {
        let claims = rl.drain_claims(now * 1000);
        for c in &claims {
            rl.apply_claim(c, true);
        }
        claims.iter().map(|c| c.requests).collect()
    }

    fn wanted(rl: &RateLimits) -> bool {
        rl.demand().notified().now_or_never().is_some()
    }

    #[test]
    fn claiming_admits_only_what_was_claimed_and_granted() {
        let rl = claiming(3);
        let t = TokenId::new();
        // Nothing claimed yet: refused, and the refusal asks for a claim.
        let refused = rl.try_admit(U, t, 0, 10, 60).unwrap_err();
        assert!(refused.share_used);
        assert_eq!(refused.retry_after(0), 1);
        assert!(wanted(&rl));
        let claim = rl.drain_claims(0);
        assert_eq!(claim[0].requests, 1, "what was wanted");
        assert!(
            rl.try_admit(U, t, 0, 10, 60).unwrap_err().share_used,
            "not applied yet"
        );
        assert!(wanted(&rl), "asked again");
        rl.apply_claim(&claim[0], true);
        rl.try_admit(U, t, 0, 10, 60).unwrap();
        // The second refused request still wants one: the claim ramps to twice the last.
        assert_eq!(round(&rl, 0), vec![2]);
        rl.try_admit(U, t, 0, 10, 60).unwrap();
        assert!(
            wanted(&rl),
            "half of it used: the next is asked for ahead of need"
        );
        rl.try_admit(U, t, 0, 10, 60).unwrap();
        assert_eq!(round(&rl, 0), vec![2], "4, capped at a third of the 7 left");
        assert!(rl.drain_claims(0).is_empty(), "nothing wanted");
        assert!(rl.try_admit(U, t, 0, 10, 60).is_ok());
    }

    #[test]
    fn the_next_claim_is_asked_for_at_half_used_while_the_rest_still_admits() {
        let rl = claiming(1);
        let t = TokenId::new();
        assert!(rl.try_admit(U, t, 0, 1000, 60).is_err());
        assert!(wanted(&rl));
        // The first claim is at least a sixteenth of the share: 62 of 1000.
        assert_eq!(round(&rl, 0), vec![62]);
        assert!(!wanted(&rl));
        for _ in 0..30 {
            rl.try_admit(U, t, 0, 1000, 60).unwrap();
        }
        assert!(!wanted(&rl), "less than half used");
        rl.try_admit(U, t, 0, 1000, 60).unwrap();
        assert!(wanted(&rl), "half used: claim more");
        let next = rl.drain_claims(0);
        assert_eq!(next[0].requests, 124);
        // While that claim is on the stream, the rest of the grant still admits.
        for _ in 0..31 {
            rl.try_admit(U, t, 0, 1000, 60).unwrap();
        }
        assert!(
            rl.drain_claims(0).is_empty(),
            "one claim on its way at a time"
        );
        rl.apply_claim(&next[0], true);
        assert_eq!(
            rl.try_admit(U, t, 0, 1000, 60).unwrap().remaining,
            1000 - 186 + 123
        );
    }

    #[test]
    fn claims_are_granted_in_log_order_up_to_the_limit() {
        // Two nodes' buckets, fed the same events in the same order.
        let (a, b) = (claiming(2), claiming(2));
        let t = TokenId::new();
        for _ in 0..8 {
            let _ = a.try_admit(U, t, 0, 10, 60);
            let _ = b.try_admit(U, t, 0, 10, 60);
        }
        let (ca, cb) = (a.drain_claims(0), b.drain_claims(0));
        assert_eq!((ca[0].requests, cb[0].requests), (8, 8));
        // The stream ordered a's claim first: a gets 8, b the 2 left.
        for rl in [&a, &b] {
            rl.apply_claim(&ca[0], std::ptr::eq(rl, &a));
            rl.apply_claim(&cb[0], std::ptr::eq(rl, &b));
        }
        let admitted = |rl: &RateLimits| {
            (0..20)
                .filter(|_| rl.try_admit(U, t, 0, 10, 60).is_ok())
                .count()
        };
        assert_eq!((admitted(&a), admitted(&b)), (8, 2));
        // Both now know the window is used up: not a share, the window (Retry-After to its end).
        for rl in [&a, &b] {
            let refused = rl.try_admit(U, t, 0, 10, 60).unwrap_err();
            assert!(!refused.share_used);
            assert_eq!(refused.retry_after(0), 60);
        }
    }

    #[test]
    fn a_smaller_limit_cuts_what_was_granted_under_the_larger_one() {
        let rl = claiming(1);
        let t = TokenId::new();
        for _ in 0..30 {
            let _ = rl.try_admit(U, t, 0, 100, 60);
        }
        round(&rl, 0);
        for _ in 0..5 {
            rl.try_admit(U, t, 0, 100, 60).unwrap();
        }
        // Downgraded to 10: 25 granted requests are left, but the window has no room for them.
        let refused = rl.try_admit(U, t, 0, 10, 60).unwrap_err();
        assert!(!refused.share_used, "{refused:?}");
    }

    #[test]
    fn claims_replayed_after_a_restart_count_as_used() {
        let rl = claiming(2);
        let t = TokenId::new();
        for _ in 0..5 {
            let _ = rl.try_admit(U, t, 0, 10, 60);
        }
        let claim = rl.drain_claims(0);
        assert_eq!(claim[0].requests, 5);
        // A fresh process replays the claim it made in its previous life: those 5 may have
        // been used, so it must claim anew from the 5 left.
        let fresh = claiming(2);
        fresh.apply_claim(&claim[0], true);
        for _ in 0..9 {
            assert!(fresh.try_admit(U, t, 0, 10, 60).unwrap_err().share_used);
        }
        let next = fresh.drain_claims(0);
        assert_eq!(next[0].requests, 5, "what was wanted, up to the 5 left");
    }

    #[test]
    fn a_claim_that_was_never_ordered_is_asked_for_again() {
        let rl = claiming(1);
        let t = TokenId::new();
        let _ = rl.try_admit(U, t, 0, 10, 60);
        let lost = rl.drain_claims(0);
        assert!(rl.drain_claims(0).is_empty(), "in flight");
        rl.restore_claims(&lost);
        let again = rl.drain_claims(0);
        assert_eq!(again.len(), 1, "asked for again, in the next round");
        assert!(again[0].requests >= lost[0].requests);
    }

    #[test]
    fn claims_of_an_older_window_do_not_count() {
        let rl = claiming(2);
        let c = |start, requests| Claim {
            user_id: U,
            window_start: start,
            window_secs: 60,
            requests,
        };
        rl.apply_claim(&c(60, 4), false);
        rl.apply_claim(&c(0, 4), false);
        assert_eq!(rl.used(U), 4);
        // A usage_recorded claim of an old log is the same claim.
        rl.apply(
            &crate::event::UsageRecorded {
                user_id: U,
                window_start: 60,
                window_secs: 60,
                requests: 3,
                tokens: vec![],
            },
            false,
        );
        assert_eq!(rl.used(U), 7);
    }

    #[test]
    fn a_node_that_served_a_user_claims_the_next_window_before_it_begins() {
        let (a, b) = (claiming(2), claiming(2));
        let t = TokenId::new();
        for rl in [&a, &b] {
            for _ in 0..6 {
                let _ = rl.try_admit(U, t, 10, 10, 60);
            }
        }
        let (ca, cb) = (a.drain_claims(10_000), b.drain_claims(10_000));
        for rl in [&a, &b] {
            rl.apply_claim(&ca[0], std::ptr::eq(rl, &a));
            rl.apply_claim(&cb[0], std::ptr::eq(rl, &b));
        }
        let admitted = |rl: &RateLimits, now| {
            (0..10)
                .filter(|_| rl.try_admit(U, t, now, 10, 60).is_ok())
                .count()
        };
        assert_eq!((admitted(&a, 20), admitted(&b, 20)), (6, 4));
        // Too early for the next window: a tenth of 60 s before its end, at 54 s.
        assert!(a.drain_claims(53_000).is_empty());
        // Then each claims what it used here (a: 6 → capped at half of 10; b: 4).
        let (na, nb) = (a.drain_claims(54_000), b.drain_claims(54_500));
        assert_eq!(
            (na.len(), na[0].window_start, na[0].requests, nb[0].requests),
            (1, 60, 5, 4)
        );
        assert!(a.drain_claims(55_000).is_empty(), "once per window");
        for rl in [&a, &b] {
            rl.apply_claim(&na[0], std::ptr::eq(rl, &a));
            rl.apply_claim(&nb[0], std::ptr::eq(rl, &b));
        }
        assert_eq!(a.ahead_of(U), Some((60, 9, 5)));
        assert_eq!(b.ahead_of(U), Some((60, 9, 4)));
        // The window this one is in still counts as it did.
        assert_eq!(a.used(U), 10);
        // The new window's first requests are admitted at once, from the claims ahead.
        assert_eq!((admitted(&a, 60), admitted(&b, 60)), (5, 4));
        assert_eq!(a.used(U), 9);
    }

    #[test]
    fn claims_ahead_survive_a_snapshot() {
        let rl = claiming(1);
        let t = TokenId::new();
        let _ = rl.try_admit(U, t, 10, 10, 60);
        round(&rl, 10);
        rl.try_admit(U, t, 10, 10, 60).unwrap();
        let other = Claim {
            user_id: U,
            window_start: 60,
            window_secs: 60,
            requests: 7,
        };
        rl.apply_claim(&other, false);
        let images = rl.export();
        assert_eq!(images.len(), 2, "the window, and the next one's claims");
        let fresh = claiming(1);
        fresh.import(images.clone());
        assert_eq!(fresh.export(), images);
        assert_eq!(fresh.ahead_of(U), Some((60, 7, 0)));
    }
}
