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
    /// Records by position; every chunk but the last is full. `None`: a record removed
    /// (its token left memory, see `retention`), whose position a later record reuses.
    /// `Option` costs nothing here (the record's strings give it a niche).
    chunks: Vec<Vec<Option<TokenRecord>>>,
    /// Positions of removed records, to reuse.
    free: Vec<u32>,
    /// Positions ever used (the next new one).
    used: usize,
    /// Token id → position. Ids are random (v4), hence the pass-through hasher.
    by_id: HashMap<TokenId, u32, RandomKeys>,
    /// User → positions of their tokens, in issue order.
    by_user: HashMap<UserId, Vec<u32>>,
}

impl TokenRecords {
    /// The record at a position an index holds (indexes hold only live positions).
    fn at(&self, pos: u32) -> Option<&TokenRecord> {
        let pos = pos as usize;
        self.chunks.get(pos / CHUNK)?.get(pos % CHUNK)?.as_ref()
    }

    fn slot_mut(&mut self, pos: u32) -> Option<&mut Option<TokenRecord>> {
        let pos = pos as usize;
        self.chunks.get_mut(pos / CHUNK)?.get_mut(pos % CHUNK)
    }

    /// Adds a record. A record with an id already present replaces it in place (commands
    /// never issue an id twice; `apply` holds no rules, so it does what the event says).
    pub fn insert(&mut self, rec: TokenRecord) {
        if let Some(&pos) = self.by_id.get(&rec.id) {
            let new_user = rec.user_id;
            let Some(slot) = self.slot_mut(pos) else {
                return;
            };
            let old_user = slot.as_ref().map(|r| r.user_id);
            *slot = Some(rec);
            if old_user != Some(new_user) {
                if let Some(list) = old_user.and_then(|u| self.by_user.get_mut(&u)) {
                    list.retain(|&p| p != pos);
                }
                self.by_user.entry(new_user).or_default().push(pos);
            }
            return;
        }
        let (id, user) = (rec.id, rec.user_id);
        let pos32 = match self.free.pop() {
            Some(pos) => {
                if let Some(slot) = self.slot_mut(pos) {
                    *slot = Some(rec);
                }
                pos
            }
            None => {
                let pos = self.used;
                self.used += 1;
                if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
                    self.chunks.push(Vec::with_capacity(CHUNK));
                }
                if let Some(last) = self.chunks.last_mut() {
                    last.push(Some(rec));
                }
                // 4-byte positions keep the indexes small. 2^32 records would take some 700
                // GB of memory before this saturates; a saturated position would only
                // misaddress lists.
                u32::try_from(pos).unwrap_or(u32::MAX)
            }
        };
        self.by_id.insert(id, pos32);
        self.by_user.entry(user).or_default().push(pos32);
    }

    /// Removes a record (its token left memory); its position is reused.
    pub fn remove(&mut self, id: &TokenId) -> Option<TokenRecord> {
        let pos = self.by_id.remove(id)?;
        let rec = self.slot_mut(pos)?.take()?;
        if let Some(list) = self.by_user.get_mut(&rec.user_id) {
            list.retain(|&p| p != pos);
        }
        self.free.push(pos);
        Some(rec)
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
        self.by_id.get(id).and_then(|&pos| self.at(pos))
    }

    pub fn get_mut(&mut self, id: &TokenId) -> Option<&mut TokenRecord> {
        let pos = *self.by_id.get(id)?;
        self.slot_mut(pos)?.as_mut()
    }

    /// A user's records, in issue order.
    pub fn of_user(&self, user: UserId) -> impl DoubleEndedIterator<Item = &TokenRecord> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|&pos| self.at(pos))
    }

    /// Every user with records, by id.
    pub fn users(&self) -> Vec<UserId> {
        let mut out: Vec<UserId> = self.by_user.keys().copied().collect();
        out.sort();
        out
    }

    /// Every record, by position (issue order until records are removed).
    pub fn iter(&self) -> impl Iterator<Item = &TokenRecord> + '_ {
        self.chunks.iter().flatten().flatten()
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
            restrictions: None,
            replaced_by: None,
            revocation: None,
            last_used_from: None,
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
    fn removed_records_leave_every_index_and_their_place_is_reused() {
        let mut recs = TokenRecords::default();
        let all: Vec<TokenRecord> = (0..10).map(|i| record(1, i)).collect();
        for r in &all {
            recs.insert(r.clone());
        }
        assert_eq!(recs.remove(&all[3].id), Some(all[3].clone()));
        assert_eq!(recs.remove(&all[3].id), None);
        assert_eq!(recs.len(), 9);
        assert!(recs.get(&all[3].id).is_none());
        assert_eq!(recs.of_user(UserId(1)).count(), 9);
        assert_eq!(recs.iter().count(), 9);
        let newer = record(2, 10);
        recs.insert(newer.clone());
        assert_eq!(
            recs.chunks.iter().map(Vec::len).sum::<usize>(),
            10,
            "reused"
        );
        assert_eq!(recs.get(&newer.id), Some(&newer));
        assert_eq!(recs.of_user(UserId(2)).collect::<Vec<_>>(), vec![&newer]);
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
