//! The token records of the [`Directory`](super::Directory): every token ever issued, as lists
//! show it.
//!
//! Replay adds one record per `token_issued`, a million of them for a large log, so the layout
//! is chosen for that: records live in fixed-size chunks that are never reallocated, and the
//! two indexes (by token id, by user) hold 4-byte positions. A `HashMap<TokenId, TokenRecord>`
//! moved every 176-byte record each time it grew, and its doubling tables were most of what
//! replay spent touching fresh memory.

use super::TokenRecord;
use crate::domain::{RandomKeys, TokenId, UserId};
use std::collections::HashMap;

/// Records per chunk. Appending never moves a record; the last chunk is the only slack.
const CHUNK: usize = 4096;

#[derive(Default)]
pub struct TokenRecords {
    /// Records in issue order; every chunk but the last is full.
    chunks: Vec<Vec<TokenRecord>>,
    /// Token id → position. Ids are random (v4), hence the pass-through hasher.
    by_id: HashMap<TokenId, u32, RandomKeys>,
    /// User → positions of their tokens, in issue order.
    by_user: HashMap<UserId, Vec<u32>>,
}

impl TokenRecords {
    fn at(&self, pos: u32) -> &TokenRecord {
        let pos = pos as usize;
        &self.chunks[pos / CHUNK][pos % CHUNK]
    }

    fn at_mut(&mut self, pos: u32) -> &mut TokenRecord {
        let pos = pos as usize;
        &mut self.chunks[pos / CHUNK][pos % CHUNK]
    }

    /// Adds a record. A record with an id already present replaces it in place (commands
    /// never issue an id twice; `apply` holds no rules, so it does what the event says).
    pub fn insert(&mut self, rec: TokenRecord) {
        if let Some(&pos) = self.by_id.get(&rec.id) {
            let old = self.at_mut(pos);
            let old_user = old.user_id;
            *old = rec;
            let new_user = old.user_id;
            if old_user != new_user {
                if let Some(list) = self.by_user.get_mut(&old_user) {
                    list.retain(|&p| p != pos);
                }
                self.by_user.entry(new_user).or_default().push(pos);
            }
            return;
        }
        let pos = self.by_id.len();
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        // 4-byte positions keep the indexes small. 2^32 records would take some 700 GB of
        // memory before this saturates; a saturated position would only misaddress lists.
        let pos32 = u32::try_from(pos).unwrap_or(u32::MAX);
        self.by_id.insert(rec.id, pos32);
        self.by_user.entry(rec.user_id).or_default().push(pos32);
        if let Some(last) = self.chunks.last_mut() {
            last.push(rec);
        }
    }

    /// Makes room for `n` more records in the indexes (the chunks are allocated as needed).
    pub fn reserve(&mut self, n: usize) {
        self.by_id.reserve(n);
    }

    /// One record per id.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &TokenId) -> Option<&TokenRecord> {
        self.by_id.get(id).map(|&pos| self.at(pos))
    }

    pub fn get_mut(&mut self, id: &TokenId) -> Option<&mut TokenRecord> {
        let pos = *self.by_id.get(id)?;
        Some(self.at_mut(pos))
    }

    /// A user's records, in issue order.
    pub fn of_user(&self, user: UserId) -> impl DoubleEndedIterator<Item = &TokenRecord> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .map(|&pos| self.at(pos))
    }

    /// Every record, in issue order.
    pub fn iter(&self) -> impl Iterator<Item = &TokenRecord> + '_ {
        self.chunks.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenHash;
    use chrono::Utc;

    fn record(user: u64, i: usize) -> TokenRecord {
        TokenRecord {
            id: TokenId::new(),
            user_id: UserId(user),
            name: format!("t{i}"),
            hint: String::new(),
            hash: TokenHash::of(&format!("t{i}")),
            created_at: Utc::now(),
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
            requests: 0,
        }
    }

    #[test]
    fn records_span_chunks_and_stay_addressable() {
        let mut recs = TokenRecords::default();
        assert!(recs.is_empty());
        let all: Vec<TokenRecord> = (0..CHUNK * 2 + 3)
            .map(|i| record(i as u64 % 3, i))
            .collect();
        for r in &all {
            recs.insert(r.clone());
        }
        assert_eq!(recs.len(), all.len());
        assert_eq!(recs.iter().cloned().collect::<Vec<_>>(), all);
        for r in &all {
            assert_eq!(recs.get(&r.id), Some(r));
        }
        let of_1: Vec<&TokenRecord> = all.iter().filter(|r| r.user_id == UserId(1)).collect();
        assert_eq!(recs.of_user(UserId(1)).collect::<Vec<_>>(), of_1);
        assert_eq!(recs.of_user(UserId(9)).count(), 0);
        let id = all[CHUNK + 1].id;
        if let Some(r) = recs.get_mut(&id) {
            r.requests = 7;
        }
        assert_eq!(recs.get(&id).map(|r| r.requests), Some(7));
    }

    #[test]
    fn an_id_issued_again_replaces_its_record() {
        let mut recs = TokenRecords::default();
        let first = record(1, 0);
        let mut again = record(2, 1);
        again.id = first.id;
        recs.insert(first);
        recs.insert(again.clone());
        assert_eq!(recs.len(), 1);
        assert_eq!(recs.get(&again.id), Some(&again));
        assert_eq!(recs.of_user(UserId(1)).count(), 0);
        assert_eq!(recs.of_user(UserId(2)).collect::<Vec<_>>(), vec![&again]);
    }
}
