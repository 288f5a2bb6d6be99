//! Hourly usage roll-ups: requests per token per clock hour, read from the `usage_recorded`
//! records of the log and kept [`History::usage_retention_days`] days. The dashboard's usage
//! chart reads them; the log itself keeps one record per user per period, and no counter.
//!
//! Two sled trees beside the log:
//!
//! ```text
//! usage_hourly:          user u64 BE | hour u64 BE | token id (16) → requests u64 LE | last use i64 LE
//! usage_hourly_by_hour:  hour u64 BE | user u64 BE → ()      (what retention deletes, in order)
//! usage_hourly:          "through" → seq u64 LE              (the last log seq rolled up)
//! ```
//!
//! A user's rows are contiguous (a chart reads one range); retention walks the second tree
//! from its start. Rolling up is a projection of the log like any other: each round reads the
//! records after `through` and writes their rows and the new `through` in one sled batch, so
//! a crash repeats nothing and misses nothing, and a data directory from before roll-ups
//! existed gets its whole usage history rolled up on first start, in the background.
//!
//! [`History::usage_retention_days`]: crate::config::History::usage_retention_days

use crate::bus::{LogError, SledLog};
use crate::domain::{TokenId, UserId};
use crate::event::{Event, UsageRecorded};
use std::collections::BTreeMap;

const ROWS: &str = "usage_hourly";
const BY_HOUR: &str = "usage_hourly_by_hour";
/// Sorts after every row key (those start with a user id, never `0xFF…`).
const THROUGH: &[u8] = b"\xFF\xFFthrough";
/// Records read per round (bounds the memory of a first roll-up over a long history).
const ROUND: usize = 100_000;
/// Log positions past the roll-ups that a chart reads at most. Further behind, the roll-ups
/// are still catching up (a first start over a long history): the chart shows what they
/// hold so far rather than scan the log on every request.
const TAIL: u64 = 10_000;

/// One hour of one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourOfUse {
    /// Start of the hour, epoch seconds.
    pub hour: i64,
    pub token_id: TokenId,
    pub requests: u64,
    /// Epoch seconds.
    pub last_used_at: i64,
}

/// See the module doc.
pub struct UsageRollups {
    rows: sled::Tree,
    by_hour: sled::Tree,
}

fn row_key(user: UserId, hour: i64, token: TokenId) -> [u8; 32] {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&user.0.to_be_bytes());
    k[8..16].copy_from_slice(&(hour.max(0) as u64).to_be_bytes());
    k[16..].copy_from_slice(token.0.as_bytes());
    k
}

fn hour_key(hour: i64, user: UserId) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&(hour.max(0) as u64).to_be_bytes());
    k[8..].copy_from_slice(&user.0.to_be_bytes());
    k
}

fn be_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_le_bytes(x)
}

fn value(requests: u64, last: i64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&requests.to_le_bytes());
    v[8..].copy_from_slice(&last.to_le_bytes());
    v
}

impl UsageRollups {
    pub fn open(log: &SledLog) -> Result<Self, LogError> {
        Ok(UsageRollups {
            rows: log.tree(ROWS)?,
            by_hour: log.tree(BY_HOUR)?,
        })
    }

    /// The last log sequence number rolled up.
    pub fn through(&self) -> Result<u64, LogError> {
        Ok(self.rows.get(THROUGH)?.map_or(0, |v| le_u64(&v)))
    }

    /// Rolls up the records after `through`, up to `until`, in rounds. Blocking. Returns how
    /// many records were rolled up.
    pub fn catch_up(&self, log: &SledLog, until: u64) -> Result<u64, LogError> {
        let mut done = 0;
        loop {
            let from = self.through()?;
            if from >= until {
                return Ok(done);
            }
            let mut records = Vec::new();
            let mut last = from;
            for env in log.iter_from(from + 1) {
                let env = env?;
                if env.seq > until {
                    break;
                }
                last = env.seq;
                if let Event::UsageRecorded(u) = env.event {
                    records.push(u);
                }
                if records.len() >= ROUND {
                    break;
                }
            }
            // A round cut short stops at its last record; otherwise everything up to `until`
            // was read (positions after the last event may be foreign ones, left out).
            if records.len() < ROUND {
                last = until;
            }
            if last == from {
                return Ok(done);
            }
            done += records.len() as u64;
            self.add(&records, last)?;
        }
    }

    /// Adds `records` to the rows and moves `through` to `seq`, in one batch.
    fn add(&self, records: &[UsageRecorded], seq: u64) -> Result<(), LogError> {
        let mut sums: BTreeMap<[u8; 32], (u64, i64)> = BTreeMap::new();
        let mut hours = BTreeMap::new();
        for r in records {
            for t in &r.tokens {
                let at = t.last_used_at.timestamp();
                let hour = at - at.rem_euclid(3600);
                let e = sums
                    .entry(row_key(r.user_id, hour, t.token_id))
                    .or_insert((0, i64::MIN));
                e.0 += u64::from(t.requests);
                e.1 = e.1.max(at);
                hours.insert(hour_key(hour, r.user_id), ());
            }
        }
        let mut batch = sled::Batch::default();
        for (k, (requests, last)) in sums {
            let (old_requests, old_last) = match self.rows.get(k)? {
                Some(v) if v.len() == 16 => (le_u64(&v), le_u64(&v[8..]) as i64),
                _ => (0, i64::MIN),
            };
            batch.insert(&k, &value(old_requests + requests, old_last.max(last)));
        }
        batch.insert(THROUGH, &seq.to_le_bytes());
        let mut hour_batch = sled::Batch::default();
        for k in hours.keys() {
            hour_batch.insert(k, &[]);
        }
        // The hour index first: should a crash fall between the two, an index entry without
        // rows costs retention one empty range delete; rows without one would never go.
        self.by_hour.apply_batch(hour_batch)?;
        self.rows.apply_batch(batch)?;
        Ok(())
    }

    /// Deletes the rows of hours before `cutoff` (epoch seconds). Blocking. Returns how many
    /// (user, hour) groups went.
    pub fn prune(&self, cutoff: i64) -> Result<u64, LogError> {
        let mut n = 0;
        let end = hour_key(cutoff - cutoff.rem_euclid(3600), UserId(0));
        for item in self.by_hour.range(..end) {
            let (k, _) = item?;
            let (hour, user) = (be_u64(&k), be_u64(&k[8..]));
            let mut from = [0u8; 16];
            from[..8].copy_from_slice(&user.to_be_bytes());
            from[8..].copy_from_slice(&hour.to_be_bytes());
            let mut batch = sled::Batch::default();
            for row in self.rows.scan_prefix(from) {
                batch.remove(row?.0);
            }
            self.rows.apply_batch(batch)?;
            self.by_hour.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// `user`'s hours from `from` (inclusive) to `to` (exclusive), epoch seconds, by hour and
    /// token.
    pub fn hours_of(&self, user: UserId, from: i64, to: i64) -> Result<Vec<HourOfUse>, LogError> {
        let start = row_key(
            user,
            from - from.rem_euclid(3600),
            TokenId(uuid::Uuid::nil()),
        );
        let end = row_key(user, to.max(0), TokenId(uuid::Uuid::nil()));
        let mut out = Vec::new();
        for item in self.rows.range(start..end) {
            let (k, v) = item?;
            if v.len() != 16 {
                continue;
            }
            let token = uuid::Uuid::from_slice(&k[16..]).unwrap_or_default();
            out.push(HourOfUse {
                hour: be_u64(&k[8..]) as i64,
                token_id: TokenId(token),
                requests: le_u64(&v),
                last_used_at: le_u64(&v[8..]) as i64,
            });
        }
        Ok(out)
    }

    /// As [`UsageRollups::hours_of`], with the records the log holds past the roll-ups added
    /// (those written since the last round, every 2 s, which would otherwise be in neither
    /// for a moment). The rows and `through` are read again if a round lands meanwhile, so
    /// nothing counts twice. More than [`TAIL`] positions behind, only the rows.
    pub fn hours_with_log(
        &self,
        log: &SledLog,
        user: UserId,
        from: i64,
        to: i64,
    ) -> Result<Vec<HourOfUse>, LogError> {
        let first_hour = from - from.rem_euclid(3600);
        let (through, mut out) = loop {
            let through = self.through()?;
            let out = self.hours_of(user, from, to)?;
            // A round writes its rows and `through` in one batch.
            if self.through()? == through {
                break (through, out);
            }
        };
        if log.last_seq().saturating_sub(through) > TAIL {
            return Ok(out);
        }
        for env in log.iter_from(through + 1) {
            if let Event::UsageRecorded(u) = env?.event {
                if u.user_id != user {
                    continue;
                }
                for t in &u.tokens {
                    let at = t.last_used_at.timestamp();
                    let hour = at - at.rem_euclid(3600);
                    // The hours `hours_of` reads: from `from`'s hour, before `to`.
                    if hour >= first_hour && hour < to {
                        out.push(HourOfUse {
                            hour,
                            token_id: t.token_id,
                            requests: u64::from(t.requests),
                            last_used_at: at,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// How many rows there are (the history benchmark).
    pub fn len(&self) -> usize {
        self.rows.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TokenUsage;
    use chrono::TimeZone;

    fn record(user: u64, token: TokenId, at: i64, requests: u32) -> Event {
        Event::UsageRecorded(UsageRecorded {
            user_id: UserId(user),
            window_start: at - at.rem_euclid(60),
            window_secs: 60,
            requests,
            tokens: vec![TokenUsage {
                token_id: token,
                requests,
                last_used_at: chrono::Utc.timestamp_opt(at, 0).unwrap(),
                last_ip: None,
            }],
        })
    }

    #[test]
    fn rolls_up_per_token_per_hour_once_and_prunes_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        let (t1, t2) = (TokenId::new(), TokenId::new());
        let h = 1_000 * 3600;
        let events = vec![
            record(1, t1, h + 10, 3),
            record(1, t1, h + 70, 2),
            record(1, t2, h + 3600 + 5, 7),
            record(2, t1, h + 20, 1),
        ];
        log.append(events, "n1", chrono::Utc::now()).unwrap();
        log.flush_blocking().unwrap();
        let r = UsageRollups::open(&log).unwrap();
        assert_eq!(r.catch_up(&log, log.last_seq()).unwrap(), 4);
        assert_eq!(r.catch_up(&log, log.last_seq()).unwrap(), 0, "once");
        let hours = r.hours_of(UserId(1), h, h + 7200).unwrap();
        assert_eq!(
            hours
                .iter()
                .map(|x| (x.hour, x.token_id, x.requests))
                .collect::<Vec<_>>(),
            vec![(h, t1, 5), (h + 3600, t2, 7)]
        );
        assert_eq!(hours[0].last_used_at, h + 70);
        assert_eq!(
            r.prune(h + 3600).unwrap(),
            2,
            "user 1's and user 2's first hour"
        );
        assert_eq!(r.hours_of(UserId(1), 0, i64::MAX / 2).unwrap().len(), 1);
        assert!(r.hours_of(UserId(2), 0, i64::MAX / 2).unwrap().is_empty());
        // Reopened: `through` survived, nothing is added twice.
        drop(r);
        let r = UsageRollups::open(&log).unwrap();
        assert_eq!(r.through().unwrap(), 1 + 3);
        assert_eq!(r.catch_up(&log, log.last_seq()).unwrap(), 0);
    }

    #[test]
    fn a_chart_counts_the_records_past_the_roll_ups_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        let t = TokenId::new();
        let h = 2_000 * 3600;
        log.append(vec![record(1, t, h + 10, 3)], "n1", chrono::Utc::now())
            .unwrap();
        log.flush_blocking().unwrap();
        let r = UsageRollups::open(&log).unwrap();
        r.catch_up(&log, log.last_seq()).unwrap();
        // Written after the last round: in the log only, for now.
        log.append(
            vec![record(1, t, h + 70, 2), record(2, t, h + 80, 9)],
            "n1",
            chrono::Utc::now(),
        )
        .unwrap();
        log.flush_blocking().unwrap();
        let sum = |hours: Vec<HourOfUse>| hours.iter().map(|x| x.requests).sum::<u64>();
        assert_eq!(sum(r.hours_of(UserId(1), h, h + 3600).unwrap()), 3);
        assert_eq!(
            sum(r.hours_with_log(&log, UserId(1), h, h + 3600).unwrap()),
            5
        );
        // Outside the range asked for: not counted.
        assert_eq!(
            sum(r
                .hours_with_log(&log, UserId(1), h + 3600, h + 7200)
                .unwrap()),
            0
        );
        // Rolled up since: still counted once.
        r.catch_up(&log, log.last_seq()).unwrap();
        assert_eq!(
            sum(r.hours_with_log(&log, UserId(1), h, h + 3600).unwrap()),
            5
        );
    }

    #[test]
    fn a_chart_far_behind_the_log_reads_the_roll_ups_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        let t = TokenId::new();
        let h = 3_000 * 3600;
        let records = (0..=TAIL).map(|i| record(1, t, h + (i % 3600) as i64, 1));
        log.append(records.collect(), "n1", chrono::Utc::now())
            .unwrap();
        log.flush_blocking().unwrap();
        let r = UsageRollups::open(&log).unwrap();
        // Not rolled up yet, TAIL + 1 positions behind: no scan of the log per chart.
        assert!(r
            .hours_with_log(&log, UserId(1), h, h + 3600)
            .unwrap()
            .is_empty());
        r.catch_up(&log, log.last_seq()).unwrap();
        let rows = r.hours_with_log(&log, UserId(1), h, h + 3600).unwrap();
        assert_eq!(rows.iter().map(|x| x.requests).sum::<u64>(), TAIL + 1);
    }
}
