//! The state as one value ([`Image`]): what a snapshot holds. [`State::image`] takes it
//! between two applies; [`State::from_image`] builds a state that continues from it exactly as
//! the state that replayed the log up to the same sequence number would.
//!
//! Canonical: every list is in a fixed order, so two states that replayed the same events
//! give equal images (the property tests compare them). Times are seconds and nanoseconds,
//! not RFC 3339 strings: a million tokens' worth of dates must decode in milliseconds.

use super::ratelimit::BucketImage;
use super::{LiveToken, Revocation, Session, State, TokenRecord, UserView};
use crate::domain::restrictions::Restrictions;
use crate::domain::{Subscription, TokenHash, TokenId, UserId};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An instant, as the log's binary form holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ts(i64, u32);

impl From<DateTime<Utc>> for Ts {
    fn from(t: DateTime<Utc>) -> Self {
        Ts(t.timestamp(), t.timestamp_subsec_nanos())
    }
}

impl From<Ts> for DateTime<Utc> {
    fn from(t: Ts) -> Self {
        Utc.timestamp_opt(t.0, t.1).single().unwrap_or_default()
    }
}

fn ts_opt(t: Option<DateTime<Utc>>) -> Option<Ts> {
    t.map(Ts::from)
}

fn dt_opt(t: Option<Ts>) -> Option<DateTime<Utc>> {
    t.map(DateTime::from)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserImage {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub subscription: Subscription,
    pub created_at: Ts,
    /// The id of the user's credential (never the hash; format 3). `None` only if the log
    /// never named one (it always does).
    pub credential_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordImage {
    pub id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub hint: String,
    pub hash: TokenHash,
    pub created_at: Ts,
    pub last_used_at: Option<Ts>,
    pub expires_at: Option<Ts>,
    pub revoked_at: Option<Ts>,
    pub requests: u64,
    /// As `token_issued` v2 carries them.
    pub scopes: Option<Vec<String>>,
    pub allowed_ips: Option<Vec<String>>,
    pub replaced_by: Option<TokenId>,
    /// Why and by whom it was revoked (format 3).
    pub revocation: Option<Revocation>,
    /// Where it was last used from (format 3).
    pub last_used_from: Option<std::net::IpAddr>,
}

/// One user's tokens that will end by time and those that ended (see `retention`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndingsImage {
    pub user: UserId,
    pub expiring: Vec<(Ts, TokenId)>,
    pub ended: Vec<(Ts, TokenId)>,
}

/// Every projection at `applied_seq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    pub applied_seq: u64,
    pub users: Vec<UserImage>,
    /// Compared email → user (more than one email may have been registered per key).
    pub emails: Vec<(String, UserId)>,
    pub last_user_id: u64,
    /// The token index: hash, id, owner, expiry as [`LiveToken`] holds it.
    pub tokens: Vec<(TokenHash, TokenId, UserId, i64)>,
    /// By user, each user's in issue order.
    pub records: Vec<RecordImage>,
    pub sessions: Vec<(TokenHash, UserId, Ts)>,
    pub session_expiry: Vec<(Ts, TokenHash)>,
    pub evicted: Vec<u64>,
    pub endings: Vec<EndingsImage>,
    pub buckets: Vec<BucketImage>,
}

impl State {
    /// The state as one value, taken between two applies (the applier waits meanwhile).
    pub fn image(&self) -> Image {
        let _gate = self.apply_gate.lock();
        let d = self.directory.read();
        let mut users: Vec<UserImage> = self
            .users
            .pin()
            .iter()
            .map(|(_, u)| UserImage {
                id: u.id,
                name: u.name.clone(),
                email: u.email.clone(),
                subscription: u.subscription,
                created_at: u.created_at.into(),
                credential_id: d.credential_ids.get(&u.id).cloned(),
            })
            .collect();
        users.sort_by_key(|u| u.id);
        let mut emails: Vec<(String, UserId)> =
            d.emails.iter().map(|(k, v)| (k.clone(), *v)).collect();
        emails.sort();
        let mut tokens: Vec<(TokenHash, TokenId, UserId, i64)> = self
            .tokens
            .pin()
            .iter()
            .map(|(h, t)| (*h, t.token_id, t.user_id, t.expires_at))
            .collect();
        tokens.sort_by_key(|t| t.0);
        let records = d
            .token_records
            .users()
            .into_iter()
            .flat_map(|u| d.token_records.of_user(u))
            .map(|r| RecordImage {
                id: r.id,
                user_id: r.user_id,
                name: r.name.clone(),
                hint: r.hint.clone(),
                hash: r.hash,
                created_at: r.created_at.into(),
                last_used_at: ts_opt(r.last_used_at),
                expires_at: ts_opt(r.expires_at),
                revoked_at: ts_opt(r.revoked_at),
                requests: r.requests,
                scopes: r.restrictions.as_ref().and_then(|x| x.scope_names()),
                allowed_ips: r.restrictions.as_ref().and_then(|x| x.ip_strings()),
                replaced_by: r.replaced_by,
                revocation: r.revocation.as_deref().cloned(),
                last_used_from: r.last_used_from,
            })
            .collect();
        let mut sessions: Vec<(TokenHash, UserId, Ts)> = self
            .sessions
            .pin()
            .iter()
            .map(|(h, s)| (*h, s.user_id, s.expires_at.into()))
            .collect();
        sessions.sort_by_key(|s| s.0);
        let mut evicted: Vec<u64> = self.evicted.pin().iter().copied().collect();
        evicted.sort_unstable();
        let conv = |v: Vec<(DateTime<Utc>, TokenId)>| -> Vec<(Ts, TokenId)> {
            v.into_iter().map(|(t, id)| (t.into(), id)).collect()
        };
        Image {
            applied_seq: self.applied_seq(),
            users,
            emails,
            last_user_id: d.last_user_id,
            tokens,
            records,
            sessions,
            session_expiry: d
                .session_expiry
                .iter()
                .map(|(t, h)| ((*t).into(), *h))
                .collect(),
            evicted,
            endings: d
                .endings
                .export()
                .into_iter()
                .map(|(user, expiring, ended)| EndingsImage {
                    user,
                    expiring: conv(expiring),
                    ended: conv(ended),
                })
                .collect(),
            buckets: self.rate_limits.export(),
        }
    }

    /// A state that continues from `image` (set to claiming mode first if `claims`). The
    /// next event it applies must be `image.applied_seq + 1`.
    pub fn from_image(local_node: &str, claims: bool, image: Image) -> State {
        let state = State::new(local_node);
        if claims {
            state.rate_limits.use_claims();
        }
        state.reserve_tokens(image.tokens.len());
        let Image {
            applied_seq,
            users,
            emails,
            last_user_id,
            tokens,
            records,
            sessions,
            session_expiry,
            evicted,
            endings,
            buckets,
        } = image;
        // Restricted tokens share their restrictions between the index and the record; the
        // few that have any are found first.
        let restricted: HashMap<TokenHash, Arc<Restrictions>> = records
            .iter()
            .filter_map(|r| {
                Restrictions::from_event(r.scopes.as_deref(), r.allowed_ips.as_deref())
                    .map(|x| (r.hash, Arc::new(x)))
            })
            .collect();
        // Two halves on two threads: the lock-free token index (most of the work, with a
        // million tokens) and everything behind the directory's lock.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let index = state.tokens.pin();
                for (hash, token_id, user_id, expires_at) in tokens {
                    index.insert(
                        hash,
                        LiveToken {
                            token_id,
                            user_id,
                            expires_at,
                            restrictions: restricted.get(&hash).cloned(),
                        },
                    );
                }
                let live = state.sessions.pin();
                for (hash, user_id, expires_at) in sessions {
                    live.insert(
                        hash,
                        Session {
                            user_id,
                            expires_at: expires_at.into(),
                        },
                    );
                }
                let gone = state.evicted.pin();
                for p in evicted {
                    gone.insert(p);
                }
            });
            let mut d = state.directory.write();
            let profiles = state.users.pin();
            for u in users {
                if let Some(c) = u.credential_id {
                    d.credential_ids.insert(u.id, c);
                }
                profiles.insert(
                    u.id,
                    Arc::new(UserView {
                        id: u.id,
                        name: u.name,
                        email: u.email,
                        subscription: u.subscription,
                        created_at: u.created_at.into(),
                    }),
                );
            }
            d.emails.extend(emails);
            d.last_user_id = last_user_id;
            for r in records {
                d.token_records.insert(TokenRecord {
                    id: r.id,
                    user_id: r.user_id,
                    name: r.name,
                    hint: r.hint,
                    hash: r.hash,
                    created_at: r.created_at.into(),
                    last_used_at: dt_opt(r.last_used_at),
                    expires_at: dt_opt(r.expires_at),
                    revoked_at: dt_opt(r.revoked_at),
                    requests: r.requests,
                    restrictions: restricted.get(&r.hash).cloned(),
                    replaced_by: r.replaced_by,
                    revocation: r.revocation.map(Box::new),
                    last_used_from: r.last_used_from,
                });
            }
            d.session_expiry.extend(
                session_expiry
                    .into_iter()
                    .map(|(t, h)| (DateTime::from(t), h)),
            );
            for e in endings {
                let conv = |v: Vec<(Ts, TokenId)>| {
                    v.into_iter()
                        .map(|(t, id)| (DateTime::from(t), id))
                        .collect()
                };
                d.endings.import(e.user, conv(e.expiring), conv(e.ended));
            }
        });
        state.rate_limits.import(buckets);
        state.applied_seq.store(applied_seq, Ordering::Release);
        state
    }
}
