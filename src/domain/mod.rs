//! Plain types that parse, not validate: once a value of one of these types exists, it is
//! well-formed. Nothing here does I/O or knows about HTTP, actors or the log.

mod tier;
pub mod token;
mod user;

pub use tier::{Lapse, Subscription, SubscriptionStatus, Tier};
pub use token::{ApiToken, TokenFormatError, TokenHash};
pub use user::{verify_password, Email, Password, UserName};

use serde::{Deserialize, Serialize};

/// A user's id: integers from 1, assigned by the writer in log order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub u64);

impl std::fmt::Display for UserId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A token's public id (a random UUID): what lists show and revoke takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenId(pub uuid::Uuid);

impl TokenId {
    pub fn new() -> Self {
        TokenId(uuid::Uuid::new_v4())
    }
}

impl Default for TokenId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A token's display name, 1–100 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenName(String);

impl TokenName {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let t = s.trim();
        if t.is_empty() {
            return Err("must not be empty");
        }
        if t.chars().count() > 100 {
            return Err("must be at most 100 characters");
        }
        if t.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(TokenName(t.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Days until a token expires: 1 to 3650.
pub fn parse_expires_in_days(days: Option<i64>) -> Result<Option<u32>, &'static str> {
    match days {
        None => Ok(None),
        Some(d) if (1..=3650).contains(&d) => Ok(Some(d as u32)),
        Some(_) => Err("must be between 1 and 3650"),
    }
}
