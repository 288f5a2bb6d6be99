//! Per-user fixed-window rate-limit buckets.
//!
//! A bucket counts three kinds of admitted requests in the current window:
//! `logged` (in `usage_recorded` events applied from the log, from every node), `local`
//! (admitted here, not yet flushed) and `in_flight` (flushed into an event that this node has
//! not applied yet). Their sum is the window's usage, so a flush never opens a gap in which
//! the same requests are counted nowhere, and on one node the count is exact.

use crate::domain::{TokenId, UserId};
use crate::event::{TokenUsage, UsageRecorded};
use chrono::{TimeZone, Utc};

/// What a rate-limited response shows: the product document's `rate_limit` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// End of the window, epoch seconds.
    pub reset: i64,
    /// Length of the window (for the IETF `RateLimit-Policy` field; not in the body).
    #[serde(skip)]
    pub window_secs: u32,
    /// Refused because this node used its share of the window until the next sync, not
    /// because the window is used up (cluster mode only; not in the body).
    #[serde(skip)]
    pub share_used: bool,
}

impl RateInfo {
    /// Seconds until a retry can succeed, at least 1 (for `Retry-After`): the window's end,
    /// or the next sync when only this node's share is used.
    pub fn retry_after(&self, now: i64) -> i64 {
        if self.share_used {
            1
        } else {
            (self.reset - now).max(1)
        }
    }
}

pub struct RateLimits {
    buckets: papaya::HashMap<UserId, Bucket>,
    /// Live nodes sharing each user's limit (1 in embedded mode). Between two syncs a node
    /// admits at most its share, `(limit - logged) / nodes`, of what the window has left,
    /// which bounds how far K nodes hammered at once can overshoot the limit together.
    nodes: std::sync::atomic::AtomicU32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            buckets: papaya::HashMap::default(),
            nodes: std::sync::atomic::AtomicU32::new(1),
        }
    }
}

#[derive(Default)]
struct Bucket {
    /// A mutex per user, not an atomic: admission must read and bump three counters and
    /// the per-token tally as one step. Only requests of the same user ever contend, and the
    /// critical section is a few arithmetic operations (parking_lot: no syscall uncontended).
    inner: parking_lot::Mutex<BucketInner>,
}

#[derive(Default)]
struct BucketInner {
    window_start: i64,
    window_secs: u32,
    logged: u32,
    local: u32,
    in_flight: u32,
    /// Per-token counts and last use since the last flush, for "monitor usage".
    tallies: Vec<(TokenId, u32, i64)>,
    /// Unflushed counts of windows that ended before they were flushed.
    carried: Vec<(i64, u32, u32)>,
}

fn window_start(now: i64, window_secs: u32) -> i64 {
    now - now.rem_euclid(i64::from(window_secs.max(1)))
}

impl BucketInner {
    fn roll_to(&mut self, start: i64, secs: u32) {
        if self.window_start == start && self.window_secs == secs {
            return;
        }
        if self.local > 0 {
            self.carried
                .push((self.window_start, self.window_secs, self.local));
        }
        self.window_start = start;
        self.window_secs = secs;
        self.logged = 0;
        self.local = 0;
        self.in_flight = 0;
    }
}

impl RateLimits {
    /// Admits one request of `user` with `token` at `now` under `limit` per `window_secs`,
    /// or refuses it without counting it.
    pub fn try_admit(
        &self,
        user: UserId,
        token: TokenId,
        now: i64,
        limit: u32,
        window_secs: u32,
    ) -> Result<RateInfo, RateInfo> {
        let map = self.buckets.pin();
        let bucket = map.get_or_insert_with(user, Bucket::default);
        let mut b = bucket.inner.lock();
        let start = window_start(now, window_secs);
        // Never roll backwards: another node's event may have moved the bucket into a window
        // this node's clock has not reached yet.
        if start > b.window_start || b.window_secs != window_secs {
            b.roll_to(start, window_secs);
        }
        let reset = b.window_start + i64::from(b.window_secs);
        let unsynced = b.local.saturating_add(b.in_flight);
        let used = b.logged.saturating_add(unsynced);
        let refused = |share_used| RateInfo {
            limit,
            remaining: 0,
            reset,
            window_secs,
            share_used,
        };
        if used >= limit {
            return Err(refused(false));
        }
        let nodes = self.nodes.load(std::sync::atomic::Ordering::Relaxed).max(1);
        if nodes > 1 && unsynced >= ((limit - b.logged) / nodes).max(1) {
            return Err(refused(true));
        }
        b.local += 1;
        match b.tallies.iter_mut().find(|t| t.0 == token) {
            Some(t) => {
                t.1 += 1;
                t.2 = t.2.max(now);
            }
            None => b.tallies.push((token, 1, now)),
        }
        Ok(RateInfo {
            limit,
            remaining: limit - used - 1,
            reset,
            window_secs,
            share_used: false,
        })
    }

    /// Sets how many live nodes share each limit (cluster mode's presence).
    pub fn set_nodes(&self, nodes: u32) {
        self.nodes
            .store(nodes.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many live nodes share each limit.
    pub fn nodes(&self) -> u32 {
        self.nodes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Gives back counts drained into events that were never written (the stream was
    /// unavailable), so the next flush carries them.
    pub fn restore(&self, events: &[UsageRecorded]) {
        let map = self.buckets.pin();
        for e in events {
            let bucket = map.get_or_insert_with(e.user_id, Bucket::default);
            let mut b = bucket.inner.lock();
            if e.window_start == b.window_start && e.window_secs == b.window_secs {
                b.in_flight = b.in_flight.saturating_sub(e.requests);
                b.local += e.requests;
            } else if e.requests > 0 {
                b.carried.push((e.window_start, e.window_secs, e.requests));
            }
            for t in &e.tokens {
                let last = t.last_used_at.timestamp();
                match b.tallies.iter_mut().find(|x| x.0 == t.token_id) {
                    Some(x) => {
                        x.1 += t.requests;
                        x.2 = x.2.max(last);
                    }
                    None => b.tallies.push((t.token_id, t.requests, last)),
                }
            }
        }
    }

    /// Usage of `user` in its current window as this node knows it (for dashboards, tests).
    pub fn used(&self, user: UserId) -> u32 {
        let map = self.buckets.pin();
        map.get(&user).map_or(0, |b| {
            let b = b.inner.lock();
            b.logged + b.local + b.in_flight
        })
    }

    /// Takes every unflushed count as `usage_recorded` events. The counts move to
    /// `in_flight`, where they keep counting until the events are applied.
    pub fn drain(&self) -> Vec<UsageRecorded> {
        let mut out = Vec::new();
        let map = self.buckets.pin();
        for (user, bucket) in map.iter() {
            let mut b = bucket.inner.lock();
            for (start, secs, requests) in std::mem::take(&mut b.carried) {
                out.push(UsageRecorded {
                    user_id: *user,
                    window_start: start,
                    window_secs: secs,
                    requests,
                    tokens: Vec::new(),
                });
            }
            if b.local == 0 && b.tallies.is_empty() {
                continue;
            }
            let tokens = std::mem::take(&mut b.tallies)
                .into_iter()
                .map(|(token_id, requests, last)| TokenUsage {
                    token_id,
                    requests,
                    last_used_at: Utc.timestamp_opt(last, 0).single().unwrap_or_default(),
                })
                .collect();
            out.push(UsageRecorded {
                user_id: *user,
                window_start: b.window_start,
                window_secs: b.window_secs,
                requests: b.local,
                tokens,
            });
            b.in_flight += b.local;
            b.local = 0;
        }
        out
    }

    /// Folds a `usage_recorded` event in. `own` says this node flushed it, so its count
    /// leaves `in_flight` as it enters `logged`.
    pub fn apply(&self, e: &UsageRecorded, own: bool) {
        let map = self.buckets.pin();
        let bucket = map.get_or_insert_with(e.user_id, Bucket::default);
        let mut b = bucket.inner.lock();
        if e.window_start > b.window_start {
            b.roll_to(e.window_start, e.window_secs);
        }
        if e.window_start == b.window_start && e.window_secs == b.window_secs {
            b.logged = b.logged.saturating_add(e.requests);
            if own {
                b.in_flight = b.in_flight.saturating_sub(e.requests);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: UserId = UserId(1);

    #[test]
    fn admits_exactly_the_limit_per_window() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        let now = 1_000_030;
        for i in 0..5 {
            let info = rl.try_admit(U, t, now, 5, 60).unwrap();
            assert_eq!(info.remaining, 4 - i);
            assert_eq!(info.reset, 1_000_080);
        }
        assert_eq!(rl.try_admit(U, t, now, 5, 60).unwrap_err().remaining, 0);
        // Next window.
        assert!(rl.try_admit(U, t, now + 60, 5, 60).is_ok());
    }

    #[test]
    fn a_flush_keeps_counting_until_applied() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        for _ in 0..3 {
            rl.try_admit(U, t, 120, 5, 60).unwrap();
        }
        let events = rl.drain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].requests, 3);
        assert_eq!(events[0].tokens[0].requests, 3);
        assert_eq!(rl.used(U), 3, "in flight still counts");
        rl.apply(&events[0], true);
        assert_eq!(rl.used(U), 3, "logged now, not twice");
        // Another node's usage adds.
        rl.apply(&events[0], false);
        assert_eq!(rl.used(U), 6);
    }

    #[test]
    fn counts_left_at_a_window_end_are_carried_to_the_flush() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        rl.try_admit(U, t, 59, 5, 60).unwrap();
        rl.try_admit(U, t, 61, 5, 60).unwrap();
        let events = rl.drain();
        let windows: Vec<_> = events
            .iter()
            .map(|e| (e.window_start, e.requests))
            .collect();
        assert!(
            windows.contains(&(0, 1)) && windows.contains(&(60, 1)),
            "{windows:?}"
        );
    }

    #[test]
    fn with_three_nodes_each_admits_its_share_until_synced() {
        let rl = RateLimits::default();
        rl.set_nodes(3);
        let t = TokenId::new();
        for _ in 0..3 {
            rl.try_admit(U, t, 0, 10, 60).unwrap();
        }
        let refused = rl.try_admit(U, t, 0, 10, 60).unwrap_err();
        assert!(refused.share_used);
        assert_eq!(refused.retry_after(0), 1);
        // Synced: 3 logged, (10 - 3) / 3 = 2 more.
        let events = rl.drain();
        rl.apply(&events[0], true);
        for _ in 0..2 {
            rl.try_admit(U, t, 0, 10, 60).unwrap();
        }
        assert!(rl.try_admit(U, t, 0, 10, 60).unwrap_err().share_used);
    }

    #[test]
    fn restored_counts_are_flushed_again() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        for _ in 0..2 {
            rl.try_admit(U, t, 0, 10, 60).unwrap();
        }
        let events = rl.drain();
        rl.restore(&events);
        assert_eq!(rl.used(U), 2);
        let again = rl.drain();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].requests, 2);
        assert_eq!(again[0].tokens[0].requests, 2);
    }

    #[test]
    fn replay_of_old_windows_does_not_count() {
        let rl = RateLimits::default();
        let e = |start, requests| UsageRecorded {
            user_id: U,
            window_start: start,
            window_secs: 60,
            requests,
            tokens: vec![],
        };
        rl.apply(&e(60, 4), false);
        rl.apply(&e(0, 4), false);
        assert_eq!(rl.used(U), 4);
        assert_eq!(
            rl.try_admit(U, TokenId::new(), 100, 5, 60)
                .unwrap()
                .remaining,
            0
        );
    }
}
