//! Each user's security log: their own logins (succeeded and failed, with the client
//! address), tokens issued and revoked, plan changes and logouts, newest first, for Settings →
//! Security log. A projection of the event log like the roll-ups, in the sled tree
//! `security_log`:
//!
//! ```text
//! user u64 BE | seq u64 BE → the entry's JSON ({"type", "occurred_at", ...})
//! "\xFF\xFFthrough"        → seq u64 LE (the last log seq read)
//! ```
//!
//! A user's entries are contiguous and in log order, so a page is one reverse range scan from a
//! cursor (the seq of the last entry shown). Entries never carry a hash: a login says where
//! from, a token its name and hint. Usage records are not security events and stay out.
//! Failed logins name an email, not a user: they are filed under the account that has the
//! email, when one does.

use crate::bus::{LogError, SledLog};
use crate::domain::UserId;
use crate::event::{Envelope, Event};
use crate::state::State;
use serde_json::{json, Value};

const TREE: &str = "security_log";
const THROUGH: &[u8] = b"\xFF\xFFthrough";
/// Events read per round (bounds a first catch-up over a long history).
const ROUND: usize = 100_000;

/// See the module doc.
pub struct SecurityLog {
    tree: sled::Tree,
}

fn key(user: UserId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&user.0.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The user an event concerns and what the log shows of it; `None` for events that are not
/// part of anyone's security log.
fn entry(env: &Envelope, state: &State) -> Option<(UserId, Value)> {
    let at = env.occurred_at;
    let (user, mut v) = match &env.event {
        Event::UserRegistered(e) => (e.user_id, json!({"tier": e.tier})),
        Event::SubscriptionChanged(e) => (
            e.user_id,
            json!({"tier": e.tier, "status": e.status, "expires_at": e.expires_at}),
        ),
        Event::TokenIssued(e) => (
            e.user_id,
            json!({"token_id": e.token_id, "name": e.name, "hint": e.hint, "expires_at": e.expires_at,
                   "scopes": e.scopes, "allowed_ips": e.allowed_ips}),
        ),
        Event::TokenRotated(e) => (
            e.user_id,
            json!({"token_id": e.token_id, "replaced_by": e.replaced_by, "expires_at": e.expires_at}),
        ),
        Event::TokenRevoked(e) => (
            e.user_id,
            json!({"token_id": e.token_id, "reason": e.reason, "by": e.by, "url": e.url,
                   "source": e.source}),
        ),
        Event::LoginSucceeded(e) => (e.user_id, json!({"client_ip": e.client_ip})),
        Event::LoginFailed(e) => (
            state.user_with_email(&e.email)?,
            json!({"client_ip": e.client_ip}),
        ),
        Event::SessionEnded(e) => (e.user_id, json!({})),
        Event::PasswordChanged(e) => (e.user_id, json!({"sessions_ended": e.sessions_ended.len()})),
        Event::UsageRecorded(_) | Event::UsageClaimed(_) => return None,
    };
    v["type"] = json!(env.event.kind());
    v["occurred_at"] = json!(at);
    Some((user, v))
}

impl SecurityLog {
    pub fn open(log: &SledLog) -> Result<Self, LogError> {
        Ok(SecurityLog {
            tree: log.tree(TREE)?,
        })
    }

    /// The last log sequence number read.
    pub fn through(&self) -> Result<u64, LogError> {
        Ok(self.tree.get(THROUGH)?.map_or(0, |v| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&v[..8.min(v.len())]);
            u64::from_le_bytes(x)
        }))
    }

    /// Files the events after `through`, up to `until`, in rounds (one sled batch each, with
    /// the new `through`). Blocking. Returns how many entries were added.
    pub fn catch_up(&self, log: &SledLog, state: &State, until: u64) -> Result<u64, LogError> {
        let mut added = 0;
        loop {
            let from = self.through()?;
            if from >= until {
                return Ok(added);
            }
            let mut batch = sled::Batch::default();
            let (mut last, mut read) = (from, 0usize);
            for env in log.iter_from(from + 1) {
                let env = env?;
                if env.seq > until {
                    break;
                }
                last = env.seq;
                read += 1;
                if let Some((user, v)) = entry(&env, state) {
                    batch.insert(&key(user, env.seq), v.to_string().as_bytes());
                    added += 1;
                }
                if read >= ROUND {
                    break;
                }
            }
            if read < ROUND {
                last = until;
            }
            batch.insert(THROUGH, &last.to_le_bytes());
            self.tree.apply_batch(batch)?;
        }
    }

    /// Up to `limit` of `user`'s entries before `before` (a seq; `None`: from the newest),
    /// newest first, and the cursor of the next page (`None`: no more).
    pub fn page(
        &self,
        user: UserId,
        before: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Value>, Option<u64>), LogError> {
        let end = key(user, before.unwrap_or(u64::MAX));
        let mut found: Vec<(u64, Value)> = Vec::new();
        for item in self.tree.range(key(user, 0)..end).rev() {
            let (k, v) = item?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[8..16]);
            if let Ok(value) = serde_json::from_slice::<Value>(&v) {
                found.push((u64::from_be_bytes(seq), value));
            }
            if found.len() > limit {
                break;
            }
        }
        let next = (found.len() > limit).then(|| found[limit - 1].0);
        found.truncate(limit);
        Ok((found.into_iter().map(|(_, v)| v).collect(), next))
    }
}
