use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The plans of the product document. Only paid plans carry API access (by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Starter,
    Pro,
    Business,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Free, Tier::Starter, Tier::Pro, Tier::Business];

    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s {
            "free" => Ok(Tier::Free),
            "starter" => Ok(Tier::Starter),
            "pro" => Ok(Tier::Pro),
            "business" => Ok(Tier::Business),
            _ => Err("must be one of free, starter, pro, business"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Starter => "starter",
            Tier::Pro => "pro",
            Tier::Business => "business",
        }
    }

    /// Index into per-tier tables.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionStatus {
    Active,
    Inactive,
}

impl SubscriptionStatus {
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        match s {
            "active" => Ok(SubscriptionStatus::Active),
            "inactive" => Ok(SubscriptionStatus::Inactive),
            _ => Err("must be active or inactive"),
        }
    }
}

/// A user's plan: tier, status and an optional end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub tier: Tier,
    pub status: SubscriptionStatus,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a subscription does not allow API access right now, beyond its tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    Inactive,
    Expired,
}

impl Lapse {
    pub fn as_str(self) -> &'static str {
        match self {
            Lapse::Inactive => "inactive",
            Lapse::Expired => "expired",
        }
    }
}

impl Subscription {
    pub fn active(tier: Tier) -> Self {
        Subscription {
            tier,
            status: SubscriptionStatus::Active,
            expires_at: None,
        }
    }

    /// `None` when the subscription is in force at `now_secs`.
    pub fn lapse_at(&self, now_secs: i64) -> Option<Lapse> {
        if self.status == SubscriptionStatus::Inactive {
            return Some(Lapse::Inactive);
        }
        match self.expires_at {
            Some(t) if t.timestamp() <= now_secs => Some(Lapse::Expired),
            _ => None,
        }
    }
}
