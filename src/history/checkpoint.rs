//! The usage checkpoint: every user's open rate-limit window, one row per user in the sled
//! tree `usage_windows`, overwritten in place (never appended), so it holds at most one row
//! per user whatever the traffic.
//!
//! A row is a version byte and the [`WindowImage`] in postcard. A row this binary cannot read
//! (a later version, damage) is passed over with a warning: a checkpoint only ever holds
//! counts of the last moments before a stop, and losing them errs towards admitting, never
//! towards a wrong token decision.

use crate::bus::{LogError, SledLog};
use crate::domain::UserId;
use crate::state::WindowImage;

/// The tree's name in the log's database.
const TREE: &str = "usage_windows";
/// The row format this binary writes and reads.
const VERSION: u8 = 1;

/// See the module doc.
pub struct UsageCheckpoint {
    tree: sled::Tree,
    /// One save at a time, after the usage flush it follows: a window's row may only go
    /// once its record is durable. tokio's: it is held across the flush's `.await`.
    pub turn: tokio::sync::Mutex<()>,
    /// Rounds saved (for `/metrics`: a test or an operator can tell that counts made before
    /// some moment are on disk once two more rounds have passed).
    saves: std::sync::atomic::AtomicU64,
}

fn key(user: UserId) -> [u8; 8] {
    user.0.to_be_bytes()
}

impl UsageCheckpoint {
    pub fn open(log: &SledLog) -> Result<Self, LogError> {
        Ok(UsageCheckpoint {
            tree: log.tree(TREE)?,
            turn: tokio::sync::Mutex::new(()),
            saves: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Every row this binary can read.
    pub fn load(&self) -> Result<Vec<WindowImage>, LogError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            match decode(&v) {
                Some(img) => out.push(img),
                None => tracing::warn!(
                    key = %hex::encode(&k),
                    "usage checkpoint row unreadable; its counts are not restored"
                ),
            }
        }
        Ok(out)
    }

    /// Overwrites the rows of `images` (removing empty ones) and flushes. Blocking.
    pub fn save(&self, images: &[WindowImage]) -> Result<(), LogError> {
        if !images.is_empty() {
            self.write(images)?;
        }
        self.saves
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How many rounds were saved since start.
    pub fn saves(&self) -> u64 {
        self.saves.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write(&self, images: &[WindowImage]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for img in images {
            if img.is_empty() {
                batch.remove(&key(img.user));
            } else {
                batch.insert(&key(img.user), encode(img));
            }
        }
        self.tree.apply_batch(batch)?;
        self.tree.flush()?;
        Ok(())
    }

    /// How many rows the checkpoint holds (tests, the history benchmark).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }
}

fn encode(img: &WindowImage) -> Vec<u8> {
    let mut out = vec![VERSION];
    // A WindowImage is plain integers and ids: postcard cannot fail on it.
    out.extend(postcard::to_allocvec(img).unwrap_or_default());
    out
}

fn decode(v: &[u8]) -> Option<WindowImage> {
    match v.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TokenId;

    #[test]
    fn rows_are_overwritten_removed_and_unreadable_ones_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        let cp = UsageCheckpoint::open(&log).unwrap();
        let t = TokenId::new();
        let img = |user, requests| WindowImage {
            user: UserId(user),
            window_start: 60,
            window_secs: 60,
            requests,
            tallies: vec![(t, requests, 61)],
        };
        cp.save(&[img(1, 1), img(2, 5)]).unwrap();
        cp.save(&[img(1, 2)]).unwrap();
        assert_eq!(cp.len(), 2, "overwritten, not appended");
        let mut empty = img(2, 0);
        empty.tallies.clear();
        cp.save(&[empty]).unwrap();
        cp.tree.insert(key(UserId(3)), vec![9, 1, 2]).unwrap();
        assert_eq!(cp.load().unwrap(), vec![img(1, 2)]);
    }
}
