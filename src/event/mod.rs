//! The event contract: every change of state is one of these, inside an [`Envelope`].
//!
//! Names are past tense; each type carries an explicit version. Old versions are upcast on raw
//! JSON ([`upcast`]) before typed decoding, so a log written by an older binary always decodes.
//! The JSON Schemas and golden fixtures in the project's `events/` directory are the contract
//! for other programs; a test decodes every fixture.

mod binary;
mod envelope;
pub mod upcast;

pub use envelope::{DecodeError, Envelope};

use crate::domain::{Subscription, SubscriptionStatus, Tier, TokenHash, TokenId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A user account was created. v2 names the user's password by `credential_id` only: the
/// argon2id PHC string lives in the credential store (`crate::credentials`), never in the
/// log or on the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub tier: Tier,
    /// The key of the password's hash in the credential store.
    pub credential_id: String,
}

/// `user_registered` v1, which carried the argon2id hash itself: kept as the binary reader
/// of old local logs. The upcaster to v2 moves the hash to the credential store
/// ([`upcast::Upcasters::with_credential_sink`]) and leaves only its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRegisteredV1 {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub tier: Tier,
}

/// A user's password was changed: says that it was, and the key of the new hash in the
/// credential store, never the hash. The user's other sessions end with it, in the same
/// event, so no node can apply the one without the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChanged {
    pub user_id: UserId,
    pub credential_id: String,
    /// The SHA-256 of each session that ended with the change.
    pub sessions_ended: Vec<TokenHash>,
}

/// A user's plan changed (tier, status or end date).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionChanged {
    pub user_id: UserId,
    pub tier: Tier,
    pub status: SubscriptionStatus,
    pub expires_at: Option<DateTime<Utc>>,
}

impl SubscriptionChanged {
    pub fn subscription(&self) -> Subscription {
        Subscription {
            tier: self.tier,
            status: self.status,
            expires_at: self.expires_at,
        }
    }
}

/// A token was issued. Carries the token's SHA-256, never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssued {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub token_sha256: TokenHash,
    pub hint: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// v2: the scopes the token carries, from the catalogue; `None` for every scope.
    pub scopes: Option<Vec<String>>,
    /// v2: the addresses and networks (canonical CIDR) it may be used from; `None` for
    /// anywhere.
    pub allowed_ips: Option<Vec<String>>,
}

/// `token_issued` v1, as logs written before scopes and allowlists hold it: kept so that
/// the local log's binary form of v1 still reads ([`upcast::Upcasters::builtin`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenIssuedV1 {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub name: String,
    pub token_sha256: TokenHash,
    pub hint: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token was regenerated with a grace period: it keeps working until `expires_at`, then
/// stops on every node with no further event (the time decides). `replaced_by` is the token
/// issued in its place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRotated {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub replaced_by: TokenId,
    pub expires_at: DateTime<Utc>,
}

/// Why a token was revoked. New reasons go at the end (the binary form numbers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Revoked,
    Regenerated,
    /// v2: a leak report found it public (`POST /leaked-tokens`).
    Leaked,
}

/// Who revoked a token (v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokedBy {
    /// Its owner, through the dashboard.
    User,
    /// An operator, through the admin API.
    Operator,
    /// A signed leak report.
    LeakReport,
}

/// A token stopped being valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevoked {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub reason: RevokeReason,
    /// v2: who; `None` for revocations recorded before v2.
    pub by: Option<RevokedBy>,
    /// v2: where a leak report found the token public (`reason: leaked` only).
    pub url: Option<String>,
    /// v2: who reported it (the report's `source`, e.g. a code host).
    pub source: Option<String>,
}

/// `token_revoked` v1, without who or where: kept as the binary reader of old local logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRevokedV1 {
    pub token_id: TokenId,
    pub user_id: UserId,
    pub reason: RevokeReason,
}

/// One token's share of a usage record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    pub token_id: TokenId,
    pub requests: u32,
    pub last_used_at: DateTime<Utc>,
    /// v2: the client address of the token's last use the node saw (`None`: not known).
    pub last_ip: Option<String>,
}

/// `usage_recorded` v1's token share, without the address: kept for the binary reader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUsageV1 {
    pub token_id: TokenId,
    pub requests: u32,
    pub last_used_at: DateTime<Utc>,
}

/// `usage_recorded` v1: kept as the binary reader of old local logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecordedV1 {
    pub user_id: UserId,
    pub window_start: i64,
    pub window_secs: u32,
    pub requests: u32,
    pub tokens: Vec<TokenUsageV1>,
}

/// Requests a node admitted for one user in one rate-limit window since its last flush.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecorded {
    pub user_id: UserId,
    /// Start of the fixed window, epoch seconds.
    pub window_start: i64,
    pub window_secs: u32,
    pub requests: u32,
    pub tokens: Vec<TokenUsage>,
}

/// Cluster mode: requests one node reserves under users' limits, one claim per user, all
/// published in one message per claim round (see `state::ratelimit::claims`). The stream's
/// order decides how much of each claim was still free: every node folds them alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageClaimed {
    pub claims: Vec<Claim>,
}

/// One user's claim: `requests` of the window starting at `window_start` (the current one,
/// or the next one when claimed ahead of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    pub user_id: UserId,
    pub window_start: i64,
    pub window_secs: u32,
    pub requests: u32,
}

/// A dashboard login succeeded; the session is stored only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginSucceeded {
    pub user_id: UserId,
    pub session_sha256: TokenHash,
    pub expires_at: DateTime<Utc>,
    pub client_ip: Option<String>,
}

/// A dashboard login failed. Never carries the password that was tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFailed {
    pub email: String,
    pub client_ip: Option<String>,
}

/// A dashboard session ended (logout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionEnded {
    pub user_id: UserId,
    pub session_sha256: TokenHash,
}

/// Every event type, at the version this binary writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    UserRegistered(UserRegistered),
    SubscriptionChanged(SubscriptionChanged),
    TokenIssued(TokenIssued),
    TokenRevoked(TokenRevoked),
    UsageRecorded(UsageRecorded),
    LoginSucceeded(LoginSucceeded),
    LoginFailed(LoginFailed),
    SessionEnded(SessionEnded),
    TokenRotated(TokenRotated),
    PasswordChanged(PasswordChanged),
    UsageClaimed(UsageClaimed),
}

/// The type names, as they appear in the envelope's `type` field and (with dots) in NATS
/// subjects.
///
/// The position is the type's code in the local log's binary form: new types go at the end.
pub const TYPES: [&str; 11] = [
    "user_registered",
    "subscription_changed",
    "token_issued",
    "token_revoked",
    "usage_recorded",
    "login_succeeded",
    "login_failed",
    "session_ended",
    "token_rotated",
    "password_changed",
    "usage_claimed",
];

impl Event {
    /// The envelope's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::UserRegistered(_) => "user_registered",
            Event::SubscriptionChanged(_) => "subscription_changed",
            Event::TokenIssued(_) => "token_issued",
            Event::TokenRevoked(_) => "token_revoked",
            Event::UsageRecorded(_) => "usage_recorded",
            Event::LoginSucceeded(_) => "login_succeeded",
            Event::LoginFailed(_) => "login_failed",
            Event::SessionEnded(_) => "session_ended",
            Event::TokenRotated(_) => "token_rotated",
            Event::PasswordChanged(_) => "password_changed",
            Event::UsageClaimed(_) => "usage_claimed",
        }
    }

    /// The version this binary writes for each type. Bump it together with an upcaster from
    /// the previous version.
    pub fn current_version(kind: &str) -> Option<u32> {
        match kind {
            "token_issued" | "user_registered" | "token_revoked" | "usage_recorded" => Some(2),
            _ => TYPES.contains(&kind).then_some(1),
        }
    }

    /// The user the event concerns, if any (for `replay --user`).
    pub fn user_id(&self) -> Option<UserId> {
        match self {
            Event::UserRegistered(e) => Some(e.user_id),
            Event::SubscriptionChanged(e) => Some(e.user_id),
            Event::TokenIssued(e) => Some(e.user_id),
            Event::TokenRevoked(e) => Some(e.user_id),
            Event::UsageRecorded(e) => Some(e.user_id),
            Event::LoginSucceeded(e) => Some(e.user_id),
            Event::LoginFailed(_) => None,
            Event::SessionEnded(e) => Some(e.user_id),
            Event::TokenRotated(e) => Some(e.user_id),
            Event::PasswordChanged(e) => Some(e.user_id),
            // Many users' claims: see [`Event::concerns`].
            Event::UsageClaimed(_) => None,
        }
    }

    /// Whether the event concerns `user` (for `replay --user`): its user, or for a claim
    /// message, one of the users it claims for.
    pub fn concerns(&self, user: UserId) -> bool {
        match self {
            Event::UsageClaimed(e) => e.claims.iter().any(|c| c.user_id == user),
            other => other.user_id() == Some(user),
        }
    }

    pub(crate) fn serialize_data<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Event::UserRegistered(e) => e.serialize(s),
            Event::SubscriptionChanged(e) => e.serialize(s),
            Event::TokenIssued(e) => e.serialize(s),
            Event::TokenRevoked(e) => e.serialize(s),
            Event::UsageRecorded(e) => e.serialize(s),
            Event::LoginSucceeded(e) => e.serialize(s),
            Event::LoginFailed(e) => e.serialize(s),
            Event::SessionEnded(e) => e.serialize(s),
            Event::TokenRotated(e) => e.serialize(s),
            Event::PasswordChanged(e) => e.serialize(s),
            Event::UsageClaimed(e) => e.serialize(s),
        }
    }

    /// Typed decoding of a current-version `data` object given as text.
    pub(crate) fn decode_data(kind: &str, data: &str) -> Result<Event, String> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(data);
        let event = DataSeed(kind)
            .deserialize(&mut de)
            .map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())?;
        Ok(event)
    }
}

/// Decodes the `data` of a current-version event of type `.0`, from any deserializer: the one
/// table from type name to payload type, used by the single-pass envelope decoding and by
/// [`Event::decode_data`].
pub(crate) struct DataSeed<'a>(pub &'a str);

impl<'de> serde::de::DeserializeSeed<'de> for DataSeed<'_> {
    type Value = Event;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Event, D::Error> {
        Ok(match self.0 {
            "user_registered" => Event::UserRegistered(UserRegistered::deserialize(d)?),
            "subscription_changed" => {
                Event::SubscriptionChanged(SubscriptionChanged::deserialize(d)?)
            }
            "token_issued" => Event::TokenIssued(TokenIssued::deserialize(d)?),
            "token_revoked" => Event::TokenRevoked(TokenRevoked::deserialize(d)?),
            "usage_recorded" => Event::UsageRecorded(UsageRecorded::deserialize(d)?),
            "login_succeeded" => Event::LoginSucceeded(LoginSucceeded::deserialize(d)?),
            "login_failed" => Event::LoginFailed(LoginFailed::deserialize(d)?),
            "session_ended" => Event::SessionEnded(SessionEnded::deserialize(d)?),
            "token_rotated" => Event::TokenRotated(TokenRotated::deserialize(d)?),
            "password_changed" => Event::PasswordChanged(PasswordChanged::deserialize(d)?),
            "usage_claimed" => Event::UsageClaimed(UsageClaimed::deserialize(d)?),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "unknown event type {other:?}"
                )))
            }
        })
    }
}
