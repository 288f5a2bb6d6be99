//! The projections: every piece of in-memory state, and the one [`State::apply`] that folds an
//! event into them. Replay at start-up, live application and tests all run the same `apply`;
//! it holds no rules (those live in [`crate::command`]) and does no I/O.
//!
//! Layout by reader:
//! - the verify path reads `tokens`, `users` and `rate_limits`: lock-free maps (papaya), so a
//!   verify never waits for the applier, and the applier never waits for a verify;
//! - the dashboard and admin API read the [`Directory`] behind a read-write lock that is only
//!   held for map operations, never across an `.await`.

pub mod image;
mod last_seen;
mod ratelimit;
mod records;
pub mod retention;
mod verify;

pub use image::Image;
pub use last_seen::LastSeen;
pub use ratelimit::{BucketImage, RateInfo, RateLimits, WindowImage};
pub use records::TokenRecords;
pub use verify::{Ask, Denied, RequiredScope, TierTable, Verified};

use crate::domain::restrictions::Restrictions;
use crate::domain::{RandomKeys, Subscription, TokenHash, TokenId, UserId};
use crate::event::{Envelope, Event};
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A token as the verify path needs it: 40 bytes beside its 32-byte key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveToken {
    pub token_id: TokenId,
    pub user_id: UserId,
    /// Epoch seconds; `i64::MAX` when the token never expires, [`LiveToken::REVOKED`] once
    /// revoked.
    pub expires_at: i64,
    /// Scopes and allowlist, shared with the token's record. `None` for the common token
    /// that has every scope from anywhere: the check then asks nothing and touches no
    /// other memory.
    pub restrictions: Option<Arc<Restrictions>>,
}

impl LiveToken {
    /// `expires_at` of a revoked token. Revoked tokens stay in the index so that a check
    /// knows them without asking anyone: in cluster mode an unknown token makes the node
    /// catch up with the stream, and a leaked token's retries must not cause that.
    pub const REVOKED: i64 = i64::MIN;
}

/// What `/test` shows of a user, and what the plan check needs.
#[derive(Debug, Clone, PartialEq)]
pub struct UserView {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub subscription: Subscription,
    pub created_at: DateTime<Utc>,
}

/// A token as lists show it. Never holds the token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenRecord {
    pub id: TokenId,
    #[serde(skip)]
    pub user_id: UserId,
    pub name: String,
    pub hint: String,
    #[serde(skip)]
    pub hash: TokenHash,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Requests counted by `usage_recorded` events.
    pub requests: u64,
    /// The client address of its last use (`usage_recorded` v2, or this node's own view).
    pub last_used_from: Option<std::net::IpAddr>,
    /// Lists show `scopes` and `allowed_ips` (`null`: every scope, from anywhere).
    #[serde(flatten, serialize_with = "restrictions_fields")]
    pub restrictions: Option<Arc<Restrictions>>,
    /// Regenerated with a grace period: the token issued in its place (it stops at
    /// `expires_at`).
    pub replaced_by: Option<TokenId>,
    /// Why and by whom it was revoked (`null` while it is not).
    pub revocation: Option<Box<Revocation>>,
}

/// What a `token_revoked` said: why, who, and for a leak where it was found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub reason: crate::event::RevokeReason,
    /// `None` for revocations recorded before `token_revoked` v2.
    pub by: Option<crate::event::RevokedBy>,
    pub url: Option<String>,
    pub source: Option<String>,
}

/// A record's restrictions as two fields of the list entry.
fn restrictions_fields<S: serde::Serializer>(
    r: &Option<Arc<Restrictions>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Restrictions", 2)?;
    st.serialize_field("scopes", &r.as_ref().and_then(|r| r.scope_names()))?;
    st.serialize_field("allowed_ips", &r.as_ref().and_then(|r| r.ip_strings()))?;
    st.end()
}

impl TokenRecord {
    /// Neither revoked nor expired at `t`.
    pub fn is_active_at(&self, t: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > t)
    }
}

/// A dashboard session, keyed by the SHA-256 of its cookie value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub expires_at: DateTime<Utc>,
}

/// Cold-path projections: lookups by email, credential ids, token records.
#[derive(Default)]
pub struct Directory {
    pub emails: HashMap<String, UserId>,
    /// Each user's current credential (the key of the password's hash in the credential
    /// store; never the hash).
    pub credential_ids: HashMap<UserId, String>,
    pub token_records: TokenRecords,
    /// Every session by expiry: each login drops the sessions that expired before it, so
    /// expired sessions do not pile up in `sessions` while the node runs.
    pub session_expiry: std::collections::BTreeSet<(DateTime<Utc>, TokenHash)>,
    pub last_user_id: u64,
    /// Which ended tokens stay in memory (see [`retention`]).
    pub endings: retention::Endings,
}

/// The event does not follow the last applied one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cannot apply seq {found}: expected seq {expected}")]
pub struct ApplyError {
    pub expected: u64,
    pub found: u64,
}

/// Every projection of the log.
pub struct State {
    /// Token hash → token. Revoked and expired tokens stay and fail the expiry check.
    ///
    /// Incremental resizes (papaya's default): a blocking resize replayed no faster, and live
    /// it would stall the applier for the whole copy of a large table. Replay avoids growing
    /// it at all when it knows the count ([`State::reserve_tokens`]).
    pub tokens: papaya::HashMap<TokenHash, LiveToken, RandomKeys>,
    /// User id → profile and plan. Replaced whole (an `Arc`) when the plan changes.
    pub users: papaya::HashMap<UserId, Arc<UserView>>,
    pub rate_limits: RateLimits,
    /// Where each token was last used from (this node's view; see [`LastSeen`]).
    pub last_seen: LastSeen,
    /// Session hash → session.
    pub sessions: papaya::HashMap<TokenHash, Session, RandomKeys>,
    /// First 8 bytes of the hashes of tokens that left memory (see [`retention`]): a check
    /// of one is a 401 at once, with no catch-up. Read only when the index misses.
    evicted: papaya::HashSet<u64>,
    directory: RwLock<Directory>,
    applied_seq: AtomicU64,
    /// Set when the log failed to make applied events durable: memory is then ahead of the
    /// disk, so the node fails closed (token checks and readiness answer 503) until it is
    /// restarted and rebuilds its state from what the log really holds.
    poisoned: std::sync::atomic::AtomicBool,
    /// This node's id: its own `usage_recorded` events settle its in-flight counts.
    local_node: String,
    /// Held by each apply and by [`State::image`], so an image is taken between two applies.
    /// Only ever contended by an image being taken (every few minutes).
    apply_gate: parking_lot::Mutex<()>,
}

impl State {
    pub fn new(local_node: &str) -> Self {
        State {
            tokens: papaya::HashMap::builder().hasher(RandomKeys).build(),
            users: papaya::HashMap::new(),
            rate_limits: RateLimits::default(),
            last_seen: LastSeen::default(),
            sessions: papaya::HashMap::builder().hasher(RandomKeys).build(),
            evicted: papaya::HashSet::new(),
            directory: RwLock::new(Directory::default()),
            applied_seq: AtomicU64::new(0),
            poisoned: std::sync::atomic::AtomicBool::new(false),
            local_node: local_node.to_owned(),
            apply_gate: parking_lot::Mutex::new(()),
        }
    }

    /// Makes room for `tokens` more tokens at once, so that replay does not grow the token
    /// maps step by step (each step of the lock-free index rehashes every entry through its
    /// pointer: a third of replay time at 1M tokens). See [`SledLog::replay_into`].
    ///
    /// [`SledLog::replay_into`]: crate::bus::SledLog::replay_into
    pub fn reserve_tokens(&self, tokens: usize) {
        self.tokens.pin().reserve(tokens);
        self.directory.write().token_records.reserve(tokens);
    }

    /// Marks the state as ahead of the durable log (see `poisoned`).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Whether the state may be ahead of the durable log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The last sequence number applied.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq.load(Ordering::Acquire)
    }

    /// Folds one event into every projection. Events must come in sequence order without
    /// gaps. Only one thread applies (the writer or the replicator); readers run concurrently.
    pub fn apply(&self, env: &Envelope) -> Result<(), ApplyError> {
        self.apply_event(env.seq, env.occurred_at, &env.node_id, env.event.clone())
    }

    /// As [`State::apply`], consuming the envelope: replay moves strings into the
    /// projections instead of copying them.
    pub fn apply_owned(&self, env: Envelope) -> Result<(), ApplyError> {
        self.apply_event(env.seq, env.occurred_at, &env.node_id, env.event)
    }

    /// Moves past `seq`, a position of the log that holds no event of this service (cluster
    /// mode: a message on the stream that no trusted node signed). Same order rule as
    /// [`State::apply`]; nothing else changes.
    pub fn pass_over(&self, seq: u64) -> Result<(), ApplyError> {
        let _gate = self.apply_gate.lock();
        let expected = self.applied_seq() + 1;
        if seq != expected {
            return Err(ApplyError {
                expected,
                found: seq,
            });
        }
        self.applied_seq.store(seq, Ordering::Release);
        Ok(())
    }

    fn apply_event(
        &self,
        seq: u64,
        occurred_at: DateTime<Utc>,
        node_id: &str,
        event: Event,
    ) -> Result<(), ApplyError> {
        let _gate = self.apply_gate.lock();
        let expected = self.applied_seq() + 1;
        if seq != expected {
            return Err(ApplyError {
                expected,
                found: seq,
            });
        }
        match event {
            Event::UserRegistered(e) => {
                self.users.pin().insert(
                    e.user_id,
                    Arc::new(UserView {
                        id: e.user_id,
                        name: e.name,
                        email: e.email.clone(),
                        subscription: Subscription::active(e.tier),
                        created_at: occurred_at,
                    }),
                );
                let mut d = self.directory.write();
                // Compared as today's emails are (NFKC, lower case), events written before
                // that included; of two that now look alike, the first keeps the address.
                d.emails
                    .entry(crate::domain::email_key(&e.email))
                    .or_insert(e.user_id);
                d.credential_ids.insert(e.user_id, e.credential_id);
                d.last_user_id = d.last_user_id.max(e.user_id.0);
            }
            Event::SubscriptionChanged(e) => {
                let users = self.users.pin();
                if let Some(old) = users.get(&e.user_id) {
                    let mut user = UserView::clone(old);
                    user.subscription = e.subscription();
                    users.insert(e.user_id, Arc::new(user));
                }
            }
            Event::TokenIssued(e) => {
                let restrictions =
                    Restrictions::from_event(e.scopes.as_deref(), e.allowed_ips.as_deref())
                        .map(Arc::new);
                self.tokens.pin().insert(
                    e.token_sha256,
                    LiveToken {
                        token_id: e.token_id,
                        user_id: e.user_id,
                        expires_at: e.expires_at.map_or(i64::MAX, |t| t.timestamp()),
                        restrictions: restrictions.clone(),
                    },
                );
                let mut d = self.directory.write();
                let gone = d
                    .endings
                    .issued(e.user_id, e.token_id, e.expires_at, occurred_at);
                d.token_records.insert(TokenRecord {
                    id: e.token_id,
                    user_id: e.user_id,
                    name: e.name,
                    hint: e.hint,
                    hash: e.token_sha256,
                    created_at: occurred_at,
                    last_used_at: None,
                    expires_at: e.expires_at,
                    revoked_at: None,
                    requests: 0,
                    restrictions,
                    replaced_by: None,
                    revocation: None,
                    last_used_from: None,
                });
                self.forget(&mut d, gone);
            }
            Event::TokenRotated(e) => {
                let mut d = self.directory.write();
                let mut gone = Vec::new();
                if let Some(rec) = d.token_records.get_mut(&e.token_id) {
                    let before = rec.expires_at;
                    // Only ever shortens: an earlier expiry stands.
                    let expires_at = before.map_or(e.expires_at, |b| b.min(e.expires_at));
                    rec.expires_at = Some(expires_at);
                    rec.replaced_by = Some(e.replaced_by);
                    let (hash, user, revoked) = (rec.hash, rec.user_id, rec.revoked_at.is_some());
                    let tokens = self.tokens.pin();
                    if let Some(live) = tokens.get(&hash) {
                        if live.expires_at != LiveToken::REVOKED {
                            tokens.insert(
                                hash,
                                LiveToken {
                                    expires_at: live.expires_at.min(expires_at.timestamp()),
                                    ..live.clone()
                                },
                            );
                        }
                    }
                    if !revoked {
                        gone = d.endings.expiry_changed(
                            user,
                            e.token_id,
                            before,
                            expires_at,
                            occurred_at,
                        );
                    }
                }
                self.forget(&mut d, gone);
            }
            Event::TokenRevoked(e) => {
                let mut d = self.directory.write();
                let mut gone = Vec::new();
                if let Some(rec) = d.token_records.get_mut(&e.token_id) {
                    let newly = rec.revoked_at.is_none();
                    if newly {
                        rec.revoked_at = Some(occurred_at);
                        rec.revocation = Some(Box::new(Revocation {
                            reason: e.reason,
                            by: e.by,
                            url: e.url,
                            source: e.source,
                        }));
                    }
                    let (hash, user, expires_at) = (rec.hash, rec.user_id, rec.expires_at);
                    let tokens = self.tokens.pin();
                    if let Some(live) = tokens.get(&hash) {
                        tokens.insert(
                            hash,
                            LiveToken {
                                expires_at: LiveToken::REVOKED,
                                ..live.clone()
                            },
                        );
                    }
                    if newly {
                        gone = d.endings.revoked(user, e.token_id, expires_at, occurred_at);
                    }
                }
                self.forget(&mut d, gone);
            }
            Event::UsageClaimed(e) => {
                let own = node_id == self.local_node;
                for c in &e.claims {
                    self.rate_limits.apply_claim(c, own);
                }
            }
            Event::UsageRecorded(e) => {
                self.rate_limits.apply(&e, node_id == self.local_node);
                if !e.tokens.is_empty() {
                    let mut d = self.directory.write();
                    for t in &e.tokens {
                        if let Some(rec) = d.token_records.get_mut(&t.token_id) {
                            rec.requests += u64::from(t.requests);
                            let newest = rec.last_used_at.is_none_or(|l| t.last_used_at >= l);
                            if let (true, Some(ip)) = (newest, t.last_ip.as_deref()) {
                                rec.last_used_from = ip.parse().ok().or(rec.last_used_from);
                            }
                            rec.last_used_at = rec.last_used_at.max(Some(t.last_used_at));
                        }
                    }
                }
            }
            Event::LoginSucceeded(e) => {
                let mut d = self.directory.write();
                let sessions = self.sessions.pin();
                // By the event's time, not the clock, so that replay drops the same ones.
                while let Some(&(expiry, hash)) = d.session_expiry.first() {
                    if expiry > occurred_at {
                        break;
                    }
                    d.session_expiry.pop_first();
                    sessions
                        .remove_if(&hash, |_, s| s.expires_at == expiry)
                        .ok();
                }
                sessions.insert(
                    e.session_sha256,
                    Session {
                        user_id: e.user_id,
                        expires_at: e.expires_at,
                    },
                );
                d.session_expiry.insert((e.expires_at, e.session_sha256));
            }
            Event::LoginFailed(_) => {}
            Event::SessionEnded(e) => {
                let mut d = self.directory.write();
                if let Some(s) = self.sessions.pin().remove(&e.session_sha256) {
                    d.session_expiry.remove(&(s.expires_at, e.session_sha256));
                }
            }
            Event::PasswordChanged(e) => {
                let mut d = self.directory.write();
                d.credential_ids.insert(e.user_id, e.credential_id);
                let sessions = self.sessions.pin();
                for hash in e.sessions_ended {
                    if let Some(s) = sessions.remove(&hash) {
                        d.session_expiry.remove(&(s.expires_at, hash));
                    }
                }
            }
        }
        self.applied_seq.store(seq, Ordering::Release);
        Ok(())
    }

    /// Takes tokens that ended long ago out of the index and the records (see
    /// [`retention`]); their hashes' prefixes stay in `evicted`.
    fn forget(&self, d: &mut Directory, gone: Vec<TokenId>) {
        if gone.is_empty() {
            return;
        }
        let (tokens, evicted) = (self.tokens.pin(), self.evicted.pin());
        for id in gone {
            if let Some(rec) = d.token_records.remove(&id) {
                tokens.remove(&rec.hash);
                self.last_seen.forget(id);
                evicted.insert(rec.hash.prefix());
            }
        }
    }

    /// Whether a token with this hash ended long ago and left memory.
    pub fn left_memory(&self, hash: &TokenHash) -> bool {
        self.evicted.pin().contains(&hash.prefix())
    }

    /// A user's profile and plan.
    pub fn user(&self, id: UserId) -> Option<Arc<UserView>> {
        self.users.pin().get(&id).cloned()
    }

    /// The user with this email (compared after NFKC and lower-casing), and the id of their
    /// password's credential.
    pub fn credentials(&self, email: &str) -> Option<(UserId, String)> {
        let d = self.directory.read();
        let id = *d.emails.get(&crate::domain::email_key(email))?;
        Some((id, d.credential_ids.get(&id)?.clone()))
    }

    /// The id of a user's current credential.
    pub fn credential_of(&self, user: UserId) -> Option<String> {
        self.directory.read().credential_ids.get(&user).cloned()
    }

    /// The sessions a user holds (unexpired at `now`), by the SHA-256 of their cookie.
    pub fn sessions_of(&self, user: UserId, now: DateTime<Utc>) -> Vec<TokenHash> {
        let mut out: Vec<TokenHash> = self
            .sessions
            .pin()
            .iter()
            .filter(|(_, s)| s.user_id == user && s.expires_at > now)
            .map(|(h, _)| *h)
            .collect();
        out.sort();
        out
    }

    /// The user with this email (compared as [`State::credentials`] does).
    pub fn user_with_email(&self, email: &str) -> Option<UserId> {
        self.directory
            .read()
            .emails
            .get(&crate::domain::email_key(email))
            .copied()
    }

    pub fn email_taken(&self, email: &str) -> bool {
        self.directory
            .read()
            .emails
            .contains_key(&crate::domain::email_key(email))
    }

    /// The id the next registered user gets.
    pub fn next_user_id(&self) -> UserId {
        UserId(self.directory.read().last_user_id + 1)
    }

    pub fn token(&self, id: TokenId) -> Option<TokenRecord> {
        self.directory.read().token_records.get(&id).cloned()
    }

    /// A user's tokens, newest first, with the usage not in the log yet (the open rate-limit
    /// window's) added to what the log holds.
    pub fn tokens_of(&self, user: UserId) -> Vec<TokenRecord> {
        let mut out: Vec<TokenRecord> = {
            let d = self.directory.read();
            d.token_records.of_user(user).rev().cloned().collect()
        };
        out.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        for (token, requests, at) in self.rate_limits.unrecorded(user) {
            if let Some(rec) = out.iter_mut().find(|r| r.id == token) {
                rec.requests += u64::from(requests);
                let at = chrono::TimeZone::timestamp_opt(&Utc, at, 0).single();
                rec.last_used_at = rec.last_used_at.max(at);
            }
        }
        // What this node saw since the last record: a newer use, and where from.
        for rec in &mut out {
            if let Some((at, ip)) = self.last_seen.get(rec.id) {
                let at = chrono::TimeZone::timestamp_opt(&Utc, at, 0).single();
                if at >= rec.last_used_at {
                    rec.last_used_at = at;
                    rec.last_used_from = Some(ip);
                }
            }
        }
        out
    }

    /// The usage records due (see `RateLimits::drain`), each token's tally with the address
    /// this node last saw it used from, when that use is the tally's last or later.
    pub fn drain_usage(&self, now: i64) -> Vec<crate::event::UsageRecorded> {
        let mut usage = self.rate_limits.drain(now);
        for record in &mut usage {
            for t in &mut record.tokens {
                if let Some((at, ip)) = self.last_seen.get(t.token_id) {
                    if at >= t.last_used_at.timestamp() {
                        t.last_ip = Some(ip.to_string());
                    }
                }
            }
        }
        usage
    }

    /// How many of a user's tokens are neither revoked nor expired at `now`.
    pub fn active_token_count(&self, user: UserId, now: DateTime<Utc>) -> usize {
        let d = self.directory.read();
        d.token_records
            .of_user(user)
            .filter(|r| r.is_active_at(now))
            .count()
    }

    /// The live session with this hash at `now`.
    pub fn session(&self, hash: &TokenHash, now: DateTime<Utc>) -> Option<Session> {
        self.sessions
            .pin()
            .get(hash)
            .copied()
            .filter(|s| s.expires_at > now)
    }

    /// Tokens valid at `at`: issued, not revoked, not expired (for `replay --at`).
    pub fn valid_tokens_at(&self, at: DateTime<Utc>) -> Vec<TokenRecord> {
        let d = self.directory.read();
        let mut out: Vec<TokenRecord> = d
            .token_records
            .iter()
            .filter(|r| r.is_active_at(at))
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.created_at, r.id));
        out
    }

    /// A canonical, comparable dump of every deterministic projection: used by tests to show
    /// that replay and live application agree.
    pub fn snapshot(&self) -> Snapshot {
        let d = self.directory.read();
        let mut tokens: Vec<(TokenHash, LiveToken)> = self
            .tokens
            .pin()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        tokens.sort_by_key(|(k, _)| *k);
        let mut users: Vec<UserView> = self
            .users
            .pin()
            .iter()
            .map(|(_, v)| UserView::clone(v))
            .collect();
        users.sort_by_key(|u| u.id);
        let mut records: Vec<TokenRecord> = d.token_records.iter().cloned().collect();
        records.sort_by_key(|r| r.id);
        let mut sessions: Vec<(TokenHash, Session)> =
            self.sessions.pin().iter().map(|(k, v)| (*k, *v)).collect();
        sessions.sort_by_key(|(k, _)| *k);
        Snapshot {
            applied_seq: self.applied_seq(),
            tokens,
            users,
            records,
            sessions,
            session_expiry: d.session_expiry.iter().copied().collect(),
        }
    }
}

/// See [`State::snapshot`].
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub applied_seq: u64,
    pub tokens: Vec<(TokenHash, LiveToken)>,
    pub users: Vec<UserView>,
    pub records: Vec<TokenRecord>,
    pub sessions: Vec<(TokenHash, Session)>,
    pub session_expiry: Vec<(DateTime<Utc>, TokenHash)>,
}
