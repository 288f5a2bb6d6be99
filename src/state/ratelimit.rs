//! Per-user fixed-window rate-limit buckets, in one of two modes.
//!
//! **Counting** (embedded mode, one node): a bucket counts the admitted requests of the
//! current window in `local`. The count is exact; it is state, not history: checkpointed in
//! place, never an event.
//!
//! **Claiming** (cluster mode, K nodes): counting after the fact would let every node admit
//! the whole limit before hearing of the others. Instead a node admits only against
//! requests it has *claimed*: a claim it publishes (in a `usage_claimed` message) before
//! admitting them. The stream orders every node's claims, and each node folds them in that
//! order, so all agree on how much of each claim was still free: a claim beyond the limit is
//! granted only up to it. Admitted requests never exceed granted claims, so the whole
//! cluster admits at most the limit per window — exactly, with no slack. What a node
//! claimed but did not use is lost to the other nodes for that window. When and how much a
//! node claims (ahead of need, ahead of the window, in ramps) is [`claims`]'s.
//!
//! **History, not traffic.** In both modes usage reaches the log once per user per period
//! ([`period_secs`]: an hour, or the window when that is longer), in one `usage_recorded`
//! record written when the period ends: its per-token, per-hour tallies and (when counting)
//! its total. Until then it is state: [`RateLimits::checkpoint`] hands what changed to the
//! usage checkpoint, which overwrites it in place, and a restart puts it back with
//! [`RateLimits::restore_checkpoint`].

mod claims;

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
    /// Claiming mode (cluster) rather than counting mode (see the module doc). Set once, at
    /// start-up, before the log is replayed.
    claims: std::sync::atomic::AtomicBool,
    /// Live nodes sharing each user's limit: a claim ramps up to at most a 1/K share of what
    /// is left (more only when that many requests are waiting).
    nodes: std::sync::atomic::AtomicU32,
    /// The shortest period a usage record covers (see [`period_secs`]).
    record_secs: std::sync::atomic::AtomicU32,
    /// Claiming: woken when a claim is wanted (see [`RateLimits::demand`]). A tokio
    /// `Notify`: it keeps a wake-up that came while the claim round was busy.
    demand: tokio::sync::Notify,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            buckets: papaya::HashMap::default(),
            claims: std::sync::atomic::AtomicBool::new(false),
            nodes: std::sync::atomic::AtomicU32::new(1),
            record_secs: std::sync::atomic::AtomicU32::new(3600),
            demand: tokio::sync::Notify::new(),
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

/// One user's window. Field meanings per mode: see the module doc.
#[derive(Default)]
struct BucketInner {
    window_start: i64,
    window_secs: u32,
    /// Requests in applied events of this window, from every node (claims, when claiming).
    logged: u32,
    /// Admitted here in this window (counting: and not yet recorded).
    local: u32,
    /// Claiming: claimed by this node, not yet applied.
    in_flight: u32,
    /// Claiming: what this node's applied claims were granted in this window.
    granted: u32,
    /// Claiming: requests refused for want of a claim since the last flush.
    wanted: u32,
    /// Claiming: the limit at the last request, to tell how much of a claim was free.
    limit: u32,
    /// Claiming: this node's last claim in this window (claims ramp up from it).
    last_claim: u32,
    /// Claiming: half of the last claim is used; the next round claims more before the rest
    /// runs out.
    early: bool,
    /// Claiming: the next window's claims, made in the last part of this one.
    ahead: claims::Ahead,
    /// Per token per clock hour: requests and last use (epoch seconds), for "monitor
    /// usage"; recorded when their period ends (see [`period_secs`]).
    tallies: Vec<(TokenId, u32, i64)>,
    /// Periods that ended and are not recorded yet.
    carried: Vec<Closed>,
    /// Changed since the last checkpoint.
    dirty: bool,
    /// End of the newest period this node recorded (its own records, applied): checkpointed
    /// tallies before it are in the log already, and are not restored.
    recorded: Option<i64>,
}

/// A period that ended, waiting for its record.
struct Closed {
    start: i64,
    secs: u32,
    /// Counting: the period's requests. Claiming: 0 (its claims are in the log already).
    requests: u32,
    tallies: Vec<(TokenId, u32, i64)>,
}

/// The period a usage record covers: `record_secs` (an hour unless configured otherwise),
/// or the rate-limit window when that is longer. So a user's usage reaches the log at most
/// once a period and at most once a window, however many requests and however short the
/// window.
fn period_secs(window_secs: u32, record_secs: u32) -> i64 {
    i64::from(window_secs.max(record_secs).max(1))
}

/// A user's open window as a checkpoint holds it (see the module doc): overwritten in place
/// while the window is open, never appended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowImage {
    pub user: UserId,
    pub window_start: i64,
    pub window_secs: u32,
    /// Counting: requests admitted in the window. Claiming: 0 (replayed claims count).
    pub requests: u32,
    /// Per token: requests in the window and last use (epoch seconds).
    pub tallies: Vec<(TokenId, u32, i64)>,
}

impl WindowImage {
    /// Nothing to keep: the row can go.
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.tallies.is_empty()
    }
}

fn window_start(now: i64, window_secs: u32) -> i64 {
    now - now.rem_euclid(i64::from(window_secs.max(1)))
}

impl BucketInner {
    fn roll_to(&mut self, start: i64, secs: u32) {
        if self.window_start == start && self.window_secs == secs {
            return;
        }
        let same_length = self.window_secs == secs;
        self.window_start = start;
        self.window_secs = secs;
        self.logged = 0;
        self.local = 0;
        self.in_flight = 0;
        self.granted = 0;
        self.wanted = 0;
        self.last_claim = 0;
        self.early = false;
        if same_length {
            self.take_ahead(start);
        } else {
            self.ahead = claims::Ahead::default();
        }
    }

    /// Moves the tallies of periods that ended by `now` to `carried`, one record each.
    /// When claiming, the record's `requests` is 0: its claims are in the log already.
    fn close_periods(&mut self, now: i64, claims: bool, record_secs: u32) {
        let p = period_secs(self.window_secs, record_secs);
        let mut ended: Vec<Closed> = Vec::new();
        self.tallies.retain(|&t| {
            let start = t.2 - t.2.rem_euclid(p);
            if start + p > now {
                return true;
            }
            match ended.iter_mut().find(|c| c.start == start) {
                Some(c) => c.tallies.push(t),
                None => ended.push(Closed {
                    start,
                    secs: p as u32,
                    requests: 0,
                    tallies: vec![t],
                }),
            }
            false
        });
        for mut c in ended {
            if !claims {
                c.requests = c.tallies.iter().map(|t| t.1).sum();
            }
            self.carried.push(c);
            self.dirty = true;
        }
    }

    /// Adds `requests` of `token`, last at `at`, to the tallies of the next record. One tally
    /// per token per slot: the record's period, or each clock hour of it when the period is
    /// longer (its record then lists a token once per hour it was used in, for the hourly
    /// roll-ups).
    fn tally(&mut self, token: TokenId, requests: u32, at: i64, record_secs: u32) {
        let slot = period_secs(self.window_secs, record_secs).min(3600);
        let this = at.div_euclid(slot);
        match self
            .tallies
            .iter_mut()
            .find(|t| t.0 == token && t.2.div_euclid(slot) == this)
        {
            Some(t) => {
                t.1 += requests;
                t.2 = t.2.max(at);
            }
            None => self.tallies.push((token, requests, at)),
        }
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
        let refused = |share_used| RateInfo {
            limit,
            remaining: 0,
            reset,
            window_secs,
            share_used,
        };
        let remaining = if self.claiming() {
            let early = b.early;
            match b.admit_claimed(limit) {
                Ok(remaining) => {
                    if b.early && !early {
                        self.demand.notify_one();
                    }
                    remaining
                }
                Err(share_used) => {
                    if share_used {
                        self.demand.notify_one();
                    }
                    return Err(refused(share_used));
                }
            }
        } else {
            let used = b.logged.saturating_add(b.local).saturating_add(b.in_flight);
            if used >= limit {
                return Err(refused(false));
            }
            b.local += 1;
            limit - used - 1
        };
        b.tally(token, 1, now, self.record_secs());
        b.dirty = true;
        Ok(RateInfo {
            limit,
            remaining,
            reset,
            window_secs,
            share_used: false,
        })
    }

    /// Switches to claiming mode (cluster mode; before the log is replayed).
    pub fn use_claims(&self) {
        self.claims
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn claiming(&self) -> bool {
        self.claims.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets the shortest period a usage record covers (`[history] usage_record_secs`).
    pub fn set_record_secs(&self, secs: u32) {
        self.record_secs
            .store(secs.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    fn record_secs(&self) -> u32 {
        self.record_secs.load(std::sync::atomic::Ordering::Relaxed)
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

    /// Gives back period records that were drained but never written (the stream was
    /// unavailable), so the next flush carries them.
    pub fn restore(&self, events: &[UsageRecorded]) {
        let map = self.buckets.pin();
        for e in events {
            let bucket = map.get_or_insert_with(e.user_id, Bucket::default);
            let mut b = bucket.inner.lock();
            b.carried.push(Closed {
                start: e.window_start,
                secs: e.window_secs,
                requests: e.requests,
                tallies: e
                    .tokens
                    .iter()
                    .map(|t| (t.token_id, t.requests, t.last_used_at.timestamp()))
                    .collect(),
            });
        }
    }

    /// Usage of `user` in its current window as this node knows it (for dashboards, tests);
    /// when claiming, what all nodes have claimed.
    pub fn used(&self, user: UserId) -> u32 {
        let map = self.buckets.pin();
        map.get(&user).map_or(0, |b| {
            let b = b.inner.lock();
            if self.claiming() {
                // Claims beyond the limit were never granted.
                if b.limit > 0 {
                    b.logged.min(b.limit)
                } else {
                    b.logged
                }
            } else {
                b.logged + b.local + b.in_flight
            }
        })
    }

    /// `user`'s usage not in the log yet (the current period's, and ended ones' not recorded
    /// yet), per token per hour: requests and last use (epoch seconds); a token may appear
    /// once per hour. Lists and the usage chart add it to what the log holds.
    pub fn unrecorded(&self, user: UserId) -> Vec<(TokenId, u32, i64)> {
        let map = self.buckets.pin();
        let Some(bucket) = map.get(&user) else {
            return Vec::new();
        };
        let b = bucket.inner.lock();
        let mut out = b.tallies.clone();
        for c in &b.carried {
            out.extend_from_slice(&c.tallies);
        }
        out
    }

    /// The records due at `now`: one per user per period that ended (see [`period_secs`]),
    /// with its requests (when counting) and per-token tallies. The open window's count is
    /// state, never a record: kept by [`RateLimits::checkpoint`]. (Claims are drained apart:
    /// [`RateLimits::drain_claims`].)
    pub fn drain(&self, now: i64) -> Vec<UsageRecorded> {
        let mut out = Vec::new();
        let map = self.buckets.pin();
        let claiming = self.claiming();
        let record_secs = self.record_secs();
        for (user, bucket) in map.iter() {
            let mut b = bucket.inner.lock();
            b.close_periods(now, claiming, record_secs);
            for c in std::mem::take(&mut b.carried) {
                out.push(UsageRecorded {
                    user_id: *user,
                    window_start: c.start,
                    window_secs: c.secs,
                    requests: c.requests,
                    tokens: to_usage(c.tallies),
                });
            }
        }
        out
    }

    /// The open windows that changed since the last call, for the checkpoint to overwrite
    /// (an empty image: the row can go). Should saving them fail, [`RateLimits::mark_changed`]
    /// puts them back in the next call.
    pub fn checkpoint(&self) -> Vec<WindowImage> {
        let map = self.buckets.pin();
        let claiming = self.claiming();
        let mut out = Vec::new();
        for (user, bucket) in map.iter() {
            let mut b = bucket.inner.lock();
            if !std::mem::take(&mut b.dirty) {
                continue;
            }
            // Periods that ended and wait for their record (one that could not be written
            // yet) are kept too: a restart records them.
            let mut tallies = b.tallies.clone();
            for c in &b.carried {
                tallies.extend_from_slice(&c.tallies);
            }
            out.push(WindowImage {
                user: *user,
                window_start: b.window_start,
                window_secs: b.window_secs,
                requests: if claiming { 0 } else { b.local },
                tallies,
            });
        }
        out
    }

    /// Marks these users' windows as changed (their checkpoint rows could not be saved).
    pub fn mark_changed(&self, users: impl IntoIterator<Item = UserId>) {
        let map = self.buckets.pin();
        for user in users {
            if let Some(b) = map.get(&user) {
                b.inner.lock().dirty = true;
            }
        }
    }

    /// Puts checkpointed windows back, after the log was replayed: the window's count (when
    /// counting), and the tallies of periods the log holds no record of from this node (it
    /// may have recorded one, then stopped before the checkpoint said so). Periods that
    /// ended meanwhile are recorded at the next flush.
    pub fn restore_checkpoint(&self, images: Vec<WindowImage>) {
        let map = self.buckets.pin();
        let claiming = self.claiming();
        let record_secs = self.record_secs();
        for img in images {
            if img.is_empty() {
                continue;
            }
            let bucket = map.get_or_insert_with(img.user, Bucket::default);
            let mut b = bucket.inner.lock();
            b.dirty = true;
            if img.window_start > b.window_start || b.window_secs == 0 {
                b.roll_to(img.window_start, img.window_secs);
            }
            if !claiming && img.window_start == b.window_start && img.window_secs == b.window_secs {
                b.local = b.local.saturating_add(img.requests);
            }
            let recorded = b.recorded.unwrap_or(i64::MIN);
            for (token, n, at) in img.tallies {
                if at >= recorded {
                    b.tally(token, n, at, record_secs);
                }
            }
        }
    }

    /// Folds a `usage_recorded` event in. `own` says this node wrote it. In claiming mode
    /// one with `requests > 0` is a claim, as logs written before `usage_claimed` hold them
    /// ([`RateLimits::apply_claim`]). Any other record is history of a period that ended: it
    /// changes no count, and this node's own say how far its usage is recorded.
    pub fn apply(&self, e: &UsageRecorded, own: bool) {
        if self.claiming() && e.requests > 0 {
            return self.apply_claim(
                &crate::event::Claim {
                    user_id: e.user_id,
                    window_start: e.window_start,
                    window_secs: e.window_secs,
                    requests: e.requests,
                },
                own,
            );
        }
        if !own {
            return;
        }
        let map = self.buckets.pin();
        let bucket = map.get_or_insert_with(e.user_id, Bucket::default);
        let mut b = bucket.inner.lock();
        // Whatever this node still holds of the period is in this record (a restart may have
        // restored it from the checkpoint before the stream brought the record back): it must
        // not be recorded twice.
        let end = e.window_start + i64::from(e.window_secs);
        b.recorded = b.recorded.max(Some(end));
        b.tallies.retain(|t| t.2 >= end);
        b.carried.retain(|c| c.start >= end);
    }
}

/// A bucket as a snapshot holds it: what applying the log gave it, nothing of this
/// process's own traffic (the open window's count is the checkpoint's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BucketImage {
    pub user: UserId,
    pub window_start: i64,
    pub window_secs: u32,
    pub logged: u32,
    pub recorded: Option<i64>,
}

impl RateLimits {
    /// Every bucket the log gave something to, by user; a bucket with claims for its next
    /// window gives a second entry for that window.
    pub fn export(&self) -> Vec<BucketImage> {
        let map = self.buckets.pin();
        let mut out: Vec<BucketImage> = Vec::new();
        for (user, bucket) in map.iter() {
            let b = bucket.inner.lock();
            let ahead = b.ahead.start != 0 && b.ahead.logged > 0;
            if b.logged > 0 || b.recorded.is_some() || ahead {
                out.push(BucketImage {
                    user: *user,
                    window_start: b.window_start,
                    window_secs: b.window_secs,
                    logged: b.logged,
                    recorded: b.recorded,
                });
            }
            if ahead {
                out.push(BucketImage {
                    user: *user,
                    window_start: b.ahead.start,
                    window_secs: b.window_secs,
                    logged: b.ahead.logged,
                    recorded: None,
                });
            }
        }
        out.sort_by_key(|b| (b.user, b.window_start));
        out
    }

    /// Puts exported buckets back (into an empty `RateLimits`). A second entry of a user,
    /// for the window after the first's, is what was claimed ahead for it.
    pub fn import(&self, images: Vec<BucketImage>) {
        let map = self.buckets.pin();
        for img in images {
            let bucket = map.get_or_insert_with(img.user, Bucket::default);
            let mut b = bucket.inner.lock();
            let next = b.window_start + i64::from(b.window_secs);
            if b.window_secs != 0 && img.window_secs == b.window_secs && img.window_start == next {
                b.ahead = claims::Ahead {
                    start: next,
                    logged: img.logged,
                    ..claims::Ahead::default()
                };
                continue;
            }
            b.window_start = img.window_start;
            b.window_secs = img.window_secs;
            b.logged = img.logged;
            b.recorded = img.recorded;
        }
    }
}

fn to_usage(tallies: Vec<(TokenId, u32, i64)>) -> Vec<TokenUsage> {
    tallies
        .into_iter()
        .map(|(token_id, requests, last)| TokenUsage {
            token_id,
            requests,
            last_used_at: Utc.timestamp_opt(last, 0).single().unwrap_or_default(),
            last_ip: None,
        })
        .collect()
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
    fn usage_is_recorded_once_per_hour_and_the_window_count_is_state() {
        let rl = RateLimits::default();
        let (t1, t2) = (TokenId::new(), TokenId::new());
        for now in [120, 130, 200, 3599] {
            rl.try_admit(U, t1, now, 5, 60).unwrap();
        }
        rl.try_admit(U, t2, 3600, 5, 60).unwrap();
        assert_eq!(rl.used(U), 1, "the window of 3600");
        assert!(rl.drain(3599).is_empty(), "the hour is not over");
        let events = rl.drain(3600);
        assert_eq!(
            events.len(),
            1,
            "one record for the hour, not one per window"
        );
        let e = &events[0];
        assert_eq!((e.window_start, e.window_secs, e.requests), (0, 3600, 4));
        assert_eq!(e.tokens.len(), 1);
        assert_eq!(
            (e.tokens[0].requests, e.tokens[0].last_used_at.timestamp()),
            (4, 3599)
        );
        assert!(rl.drain(3700).is_empty(), "once");
        rl.apply(e, true);
        assert_eq!(rl.used(U), 1, "a record changes no count");
        assert_eq!(rl.unrecorded(U), vec![(t2, 1, 3600)]);
    }

    #[test]
    fn steady_traffic_still_ends_short_periods() {
        let rl = RateLimits::default();
        rl.set_record_secs(1);
        let t = TokenId::new();
        for now in [10, 10, 11, 12] {
            rl.try_admit(U, t, now, 100, 1).unwrap();
        }
        let periods: Vec<_> = rl
            .drain(12)
            .iter()
            .map(|e| (e.window_start, e.requests))
            .collect();
        assert_eq!(periods, vec![(10, 2), (11, 1)]);
    }

    #[test]
    fn only_the_usage_round_records_periods_and_an_own_record_settles_restored_tallies() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        rl.try_admit(U, t, 10, 5, 60).unwrap();
        let images = rl.checkpoint();
        let records = rl.drain(3600);
        assert_eq!(records.len(), 1);
        // A restart restored the checkpoint before the stream brought its own record back:
        // the record settles what the checkpoint held, which is not recorded twice.
        let fresh = RateLimits::default();
        fresh.restore_checkpoint(images);
        assert_eq!(fresh.unrecorded(U).len(), 1);
        fresh.apply(&records[0], true);
        assert!(fresh.unrecorded(U).is_empty());
        assert!(fresh.drain(7200).is_empty());
    }

    #[test]
    fn a_checkpoint_keeps_periods_whose_record_could_not_be_written() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        rl.try_admit(U, t, 10, 5, 60).unwrap();
        let records = rl.drain(3600);
        rl.restore(&records);
        let images = rl.checkpoint();
        let fresh = RateLimits::default();
        fresh.restore_checkpoint(images);
        assert_eq!(fresh.drain(3600), records);
    }

    #[test]
    fn a_window_longer_than_an_hour_is_one_record_with_hourly_tallies() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        for now in [10, 20, 3610, 7300] {
            rl.try_admit(U, t, now, 100, 86_400).unwrap();
        }
        assert!(rl.drain(86_399).is_empty());
        let events = rl.drain(86_400);
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].window_secs, events[0].requests), (86_400, 4));
        let hours: Vec<_> = events[0]
            .tokens
            .iter()
            .map(|u| (u.requests, u.last_used_at.timestamp()))
            .collect();
        assert_eq!(hours, vec![(2, 20), (1, 3610), (1, 7300)]);
    }

    #[test]
    fn a_checkpoint_restores_the_window_and_skips_what_was_recorded() {
        let rl = RateLimits::default();
        let (t1, t2) = (TokenId::new(), TokenId::new());
        rl.try_admit(U, t1, 3590, 5, 60).unwrap();
        rl.try_admit(U, t2, 3595, 5, 60).unwrap();
        let images = rl.checkpoint();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].requests, 2);
        assert!(rl.checkpoint().is_empty(), "only what changed");
        let fresh = RateLimits::default();
        fresh.restore_checkpoint(images.clone());
        assert_eq!(fresh.used(U), 2);
        assert_eq!(fresh.try_admit(U, t1, 3599, 5, 60).unwrap().remaining, 2);
        assert_eq!(fresh.drain(3600)[0].tokens.len(), 2, "both tokens' tallies");
        // The hour was recorded before the checkpoint said so (a crash in between): the log
        // has it, and the checkpoint's copy is not recorded twice.
        let recorded = rl.drain(3600);
        let again = RateLimits::default();
        again.apply(&recorded[0], true);
        again.restore_checkpoint(images);
        assert!(again.drain(3600).is_empty());
        assert!(again.unrecorded(U).is_empty());
        assert_eq!(again.used(U), 2, "the window's count is state, restored");
    }

    #[test]
    fn records_never_written_are_written_at_the_next_flush() {
        let rl = RateLimits::default();
        let t = TokenId::new();
        for _ in 0..2 {
            rl.try_admit(U, t, 0, 10, 60).unwrap();
        }
        let events = rl.drain(3600);
        rl.restore(&events);
        let again = rl.drain(3600);
        assert_eq!(again, events);
        assert_eq!(again[0].requests, 2);
        assert_eq!(again[0].tokens[0].requests, 2);
    }
}
