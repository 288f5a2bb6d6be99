//! Flow 2's rules: `handle(state, command) -> Result<Vec<Event>>`. Every rule of the service
//! lives here and nowhere else; a rejected command produces no event. `handle` is pure: ids,
//! hashes and the clock come in with the command, so tests can replay it exactly.

use crate::domain::{Email, Subscription, Tier, TokenHash, TokenId, TokenName, UserId, UserName};
use crate::event::{
    Event, LoginFailed, LoginSucceeded, PasswordChanged, RevokeReason, RevokedBy, SessionEnded,
    SubscriptionChanged, TokenIssued, TokenRevoked, TokenRotated, UsageRecorded, UserRegistered,
};
use crate::state::State;
use chrono::{DateTime, Utc};

/// A request to change state. It holds hashes and ids, never a secret, so a node may forward
/// it to the cluster's writer (`cluster::forward`): what it carries the stream carries too.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum Command {
    RegisterUser {
        email: Email,
        name: UserName,
        /// The id the password's argon2id hash was stored under in the credential store,
        /// before the command reaches the writer (hashing is slow and must not hold up the
        /// single writer; the hash itself never enters an event).
        credential_id: String,
        tier: Tier,
    },
    /// A user's password changed (the new hash already stored under `credential_id`); every
    /// session of the user but `keep` ends with it.
    ChangePassword {
        user_id: UserId,
        credential_id: String,
        keep: Option<TokenHash>,
    },
    /// Log out everywhere: every session of the user ends.
    EndAllSessions {
        user_id: UserId,
    },
    ChangeSubscription {
        user_id: UserId,
        subscription: Subscription,
    },
    IssueToken {
        user_id: UserId,
        token_id: TokenId,
        name: TokenName,
        hash: TokenHash,
        hint: String,
        expires_at: Option<DateTime<Utc>>,
        /// Scopes picked from the catalogue (`None`: every scope).
        scopes: Option<Vec<String>>,
        /// Canonical networks (`None`: from anywhere).
        allowed_ips: Option<Vec<ipnet::IpNet>>,
    },
    /// `owner: Some(u)` when a user acts on their own tokens: another user's token is then
    /// "not found", exactly as if it did not exist.
    RevokeToken {
        token_id: TokenId,
        owner: Option<UserId>,
    },
    /// A signed leak report: every known token it names that is not revoked yet is revoked,
    /// with where it was found.
    RevokeLeaked {
        reports: Vec<LeakedToken>,
    },
    /// Issues a replacement for `old` with the same name, lifetime and restrictions, and
    /// ends `old` in the same step: at once (`grace: None`), or when the grace ends.
    RegenerateToken {
        old: TokenId,
        owner: Option<UserId>,
        token_id: TokenId,
        hash: TokenHash,
        hint: String,
        #[serde(with = "grace_ms")]
        grace: Option<chrono::Duration>,
    },
    RecordUsage(Vec<UsageRecorded>),
    RecordLogin {
        user_id: UserId,
        session: TokenHash,
        expires_at: DateTime<Utc>,
        client_ip: Option<String>,
    },
    RecordLoginFailure {
        email: String,
        client_ip: Option<String>,
    },
    EndSession {
        session: TokenHash,
    },
}

/// A grace period as whole milliseconds (chrono's `Duration` has no serde form of its own).
mod grace_ms {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(g: &Option<chrono::Duration>, s: S) -> Result<S::Ok, S::Error> {
        match g {
            Some(d) => s.serialize_some(&d.num_milliseconds()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<chrono::Duration>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(chrono::Duration::milliseconds))
    }
}

/// One token a leak report names, by its hash (the plaintext never reaches the writer).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeakedToken {
    pub hash: TokenHash,
    pub url: String,
    pub source: String,
}

/// Active (not revoked, not expired) tokens one user may hold: enough for "separate tokens
/// for different applications", and a bound on what one account can make the service store.
pub const MAX_ACTIVE_TOKENS: usize = 100;

/// Why a command was rejected. Each maps to one row of the error table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CommandError {
    #[error("a user with this email already exists")]
    EmailTaken,
    #[error("user not found")]
    UserNotFound,
    #[error("token not found")]
    TokenNotFound,
    #[error("token is already revoked")]
    AlreadyRevoked,
    #[error("this user already has the maximum number of active tokens")]
    TokenLimitReached,
    #[error("token was already regenerated")]
    AlreadyRotated,
}

/// Why a command did not happen (or, for `Unavailable`, may not have).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] CommandError),
    #[error("storage failed: {0}")]
    Storage(String),
    /// Cluster mode: the stream could not take the events; nothing was changed unless the
    /// stream stored an event whose acknowledgement was lost.
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::bus::LogError> for WriteError {
    fn from(e: crate::bus::LogError) -> Self {
        WriteError::Storage(e.to_string())
    }
}

/// Validates `cmd` against `state` at `now` and returns the events it produces.
pub fn handle(state: &State, cmd: Command, now: DateTime<Utc>) -> Result<Vec<Event>, CommandError> {
    match cmd {
        Command::RegisterUser {
            email,
            name,
            credential_id,
            tier,
        } => {
            if state.email_taken(email.as_str()) {
                return Err(CommandError::EmailTaken);
            }
            Ok(vec![Event::UserRegistered(UserRegistered {
                user_id: state.next_user_id(),
                email: email.as_str().to_owned(),
                name: name.as_str().to_owned(),
                tier,
                credential_id,
            })])
        }
        Command::ChangePassword {
            user_id,
            credential_id,
            keep,
        } => {
            state.user(user_id).ok_or(CommandError::UserNotFound)?;
            Ok(vec![Event::PasswordChanged(PasswordChanged {
                user_id,
                credential_id,
                sessions_ended: state
                    .sessions_of(user_id, now)
                    .into_iter()
                    .filter(|s| Some(*s) != keep)
                    .collect(),
            })])
        }
        Command::EndAllSessions { user_id } => {
            state.user(user_id).ok_or(CommandError::UserNotFound)?;
            Ok(state
                .sessions_of(user_id, now)
                .into_iter()
                .map(|session_sha256| {
                    Event::SessionEnded(SessionEnded {
                        user_id,
                        session_sha256,
                    })
                })
                .collect())
        }
        Command::ChangeSubscription {
            user_id,
            subscription,
        } => {
            state.user(user_id).ok_or(CommandError::UserNotFound)?;
            Ok(vec![Event::SubscriptionChanged(SubscriptionChanged {
                user_id,
                tier: subscription.tier,
                status: subscription.status,
                expires_at: subscription.expires_at,
            })])
        }
        Command::IssueToken {
            user_id,
            token_id,
            name,
            hash,
            hint,
            expires_at,
            scopes,
            allowed_ips,
        } => {
            state.user(user_id).ok_or(CommandError::UserNotFound)?;
            if state.active_token_count(user_id, now) >= MAX_ACTIVE_TOKENS {
                return Err(CommandError::TokenLimitReached);
            }
            Ok(vec![Event::TokenIssued(TokenIssued {
                token_id,
                user_id,
                name: name.as_str().to_owned(),
                token_sha256: hash,
                hint,
                expires_at,
                scopes,
                allowed_ips: allowed_ips.map(|l| l.iter().map(|n| n.to_string()).collect()),
            })])
        }
        Command::RevokeToken { token_id, owner } => {
            let rec = owned_token(state, token_id, owner)?;
            Ok(vec![Event::TokenRevoked(TokenRevoked {
                token_id,
                user_id: rec.user_id,
                reason: RevokeReason::Revoked,
                by: Some(revoked_by(owner)),
                url: None,
                source: None,
            })])
        }
        Command::RevokeLeaked { reports } => {
            // Each known token not yet revoked, once, in one atomic append; the rest (unknown,
            // already revoked, named twice) change nothing.
            let mut seen = std::collections::HashSet::new();
            let mut events = Vec::new();
            for r in reports {
                let Some(id) = state.tokens.pin().get(&r.hash).map(|t| t.token_id) else {
                    continue;
                };
                let Some(rec) = state.token(id) else { continue };
                if rec.revoked_at.is_some() || !seen.insert(id) {
                    continue;
                }
                events.push(Event::TokenRevoked(TokenRevoked {
                    token_id: id,
                    user_id: rec.user_id,
                    reason: RevokeReason::Leaked,
                    by: Some(RevokedBy::LeakReport),
                    url: Some(r.url),
                    source: Some(r.source),
                }));
            }
            Ok(events)
        }
        Command::RegenerateToken {
            old,
            owner,
            token_id,
            hash,
            hint,
            grace,
        } => {
            let rec = owned_token(state, old, owner)?;
            if rec.replaced_by.is_some() {
                // In its grace period already: one replacement per token. Revoking it ends
                // the grace at once.
                return Err(CommandError::AlreadyRotated);
            }
            // Regenerating an active token at once swaps one active token for another; with
            // a grace period both are active for a while, and an expired one's replacement
            // is one more: those count against the cap like a new token.
            let adds_one = !rec.is_active_at(now) || grace.is_some();
            if adds_one && state.active_token_count(rec.user_id, now) >= MAX_ACTIVE_TOKENS {
                return Err(CommandError::TokenLimitReached);
            }
            let lifetime = rec.expires_at.map(|e| e - rec.created_at);
            let ending = match grace {
                // The old token never outlives its own expiry.
                Some(g) if rec.is_active_at(now) => Event::TokenRotated(TokenRotated {
                    token_id: old,
                    user_id: rec.user_id,
                    replaced_by: token_id,
                    expires_at: rec.expires_at.map_or(now + g, |e| e.min(now + g)),
                }),
                _ => Event::TokenRevoked(TokenRevoked {
                    token_id: old,
                    user_id: rec.user_id,
                    reason: RevokeReason::Regenerated,
                    by: Some(revoked_by(owner)),
                    url: None,
                    source: None,
                }),
            };
            let restrictions = rec.restrictions.as_deref();
            Ok(vec![
                ending,
                Event::TokenIssued(TokenIssued {
                    token_id,
                    user_id: rec.user_id,
                    name: rec.name,
                    token_sha256: hash,
                    hint,
                    expires_at: lifetime.map(|l| now + l),
                    scopes: restrictions.and_then(|r| r.scope_names()),
                    allowed_ips: restrictions.and_then(|r| r.ip_strings()),
                }),
            ])
        }
        Command::RecordUsage(usage) => Ok(usage.into_iter().map(Event::UsageRecorded).collect()),
        Command::RecordLogin {
            user_id,
            session,
            expires_at,
            client_ip,
        } => {
            state.user(user_id).ok_or(CommandError::UserNotFound)?;
            Ok(vec![Event::LoginSucceeded(LoginSucceeded {
                user_id,
                session_sha256: session,
                expires_at,
                client_ip,
            })])
        }
        Command::RecordLoginFailure { email, client_ip } => {
            Ok(vec![Event::LoginFailed(LoginFailed { email, client_ip })])
        }
        Command::EndSession { session } => {
            // Ending an unknown or expired session changes nothing and is not an error: logout
            // is idempotent.
            let Some(s) = state.sessions.pin().get(&session).copied() else {
                return Ok(vec![]);
            };
            Ok(vec![Event::SessionEnded(SessionEnded {
                user_id: s.user_id,
                session_sha256: session,
            })])
        }
    }
}

/// A change made with an owner is the user's own (the dashboard); without, an operator's.
fn revoked_by(owner: Option<UserId>) -> RevokedBy {
    match owner {
        Some(_) => RevokedBy::User,
        None => RevokedBy::Operator,
    }
}

fn owned_token(
    state: &State,
    id: TokenId,
    owner: Option<UserId>,
) -> Result<crate::state::TokenRecord, CommandError> {
    let rec = state.token(id).ok_or(CommandError::TokenNotFound)?;
    if owner.is_some_and(|o| o != rec.user_id) {
        return Err(CommandError::TokenNotFound);
    }
    if rec.revoked_at.is_some() {
        return Err(CommandError::AlreadyRevoked);
    }
    Ok(rec)
}
