//! Where each token was last used from, as this node saw it: the client address of its last
//! admitted request. Observed on the verify path and kept in memory only; it reaches the log
//! in the usage records (`usage_recorded` v2, each token's `last_ip`), which every node applies
//! to the token's record, so lists show it after restarts and on every node.
//!
//! The verify path writes only when something changed (another second, or another address):
//! a token used many times a second from one client costs one lookup per request.

use crate::domain::TokenId;
use std::net::IpAddr;

/// See the module doc.
#[derive(Default)]
pub struct LastSeen {
    /// A lock-free map (papaya), as the token index: read on every admitted request.
    map: papaya::HashMap<TokenId, (i64, IpAddr)>,
}

impl LastSeen {
    /// `token` was used at `now` (epoch seconds) from `ip`.
    pub fn note(&self, token: TokenId, now: i64, ip: IpAddr) {
        let map = self.map.pin();
        match map.get(&token) {
            Some(&(at, from)) if from == ip && at >= now => {}
            _ => {
                map.insert(token, (now, ip));
            }
        }
    }

    /// When and from where `token` was last used, as this node saw it.
    pub fn get(&self, token: TokenId) -> Option<(i64, IpAddr)> {
        self.map.pin().get(&token).copied()
    }

    /// Forgets a token (revoked, or gone from memory).
    pub fn forget(&self, token: TokenId) {
        self.map.pin().remove(&token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_use_and_its_address() {
        let seen = LastSeen::default();
        let t = TokenId::new();
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(seen.get(t), None);
        seen.note(t, 100, a);
        seen.note(t, 100, a);
        assert_eq!(seen.get(t), Some((100, a)));
        seen.note(t, 101, b);
        assert_eq!(seen.get(t), Some((101, b)));
        seen.forget(t);
        assert_eq!(seen.get(t), None);
    }
}
