//! Compaction: usage records that aged out of `usage_retention_days` leave the log.
//!
//! A compacted record keeps its position as an empty entry (the form of [`Entry::Foreign`]),
//! so the log stays contiguous and replay passes over it; the security events around it are
//! kept, rewritten in the current binary form (events of an older version come back as the
//! upcasters read them, which is how replay reads them anyway). Only records wholly at or before `through` are
//! touched (the caller passes the oldest snapshot kept and how far the hourly roll-ups have
//! read, so no start needs what goes and the roll-ups have it), and never the run of small
//! records the group commit may still merge.

use super::{key, seq_of, LogError, SledLog};
use crate::bus::record::{Entry, Events, Reader};
use crate::event::Event;
use chrono::{DateTime, Utc};

/// The meta key: the first record not yet wholly past the cutoff.
const FROM: &str = "compacted_from";

impl SledLog {
    /// Where compaction got to: every usage event before this sequence occurred before the
    /// cutoff of a compaction that ran, and left the log (1 before any did).
    pub fn compacted_below(&self) -> Result<u64, LogError> {
        Ok(self.meta(FROM)?.and_then(|v| v.parse().ok()).unwrap_or(1))
    }

    /// Empties the positions of `usage_recorded` events that occurred before `cutoff`, in
    /// records that end at or before `through`. Blocking. Resumes where the last call
    /// stopped: records are in time order, so it stops at the first with younger usage.
    /// Returns how many records of usage went.
    pub fn compact_usage(&self, cutoff: DateTime<Utc>, through: u64) -> Result<u64, LogError> {
        let from = self.compacted_below()?;
        let upcasters = self.upcasters();
        let (mut compacted, mut next) = (0u64, from);
        loop {
            // One record at a time under the write gate: the group commit's leader holds it
            // from taking the queue (and deciding a merge of the small records at the end)
            // until sled has the batch, so no merge can be decided or written while a record
            // is read and rewritten here; between records, commits go on.
            let gate = self.writing.blocking_lock();
            if let Some(failed) = gate.as_ref() {
                return Err(LogError::Failed(failed.clone()));
            }
            let merging = self.tail.lock().keys.first().copied().unwrap_or(u64::MAX);
            let Some(item) = self.db.range(key(next)..).next() else {
                break;
            };
            let (k, v) = item?;
            let first = seq_of(&k, next)?;
            if first >= merging {
                break;
            }
            let mut reader = Reader::open(first, v)?;
            let end = reader.end();
            if end - 1 > through {
                break;
            }
            let (mut out, mut changed, mut young) = (Events::default(), false, false);
            while let Some(entry) = reader.next_entry(&upcasters) {
                match entry? {
                    Entry::Event(env) => match &env.event {
                        Event::UsageRecorded(_) | Event::UsageClaimed(_)
                            if env.occurred_at < cutoff =>
                        {
                            out.push_foreign(env.seq);
                            changed = true;
                            compacted += 1;
                        }
                        other => {
                            young |=
                                matches!(other, Event::UsageRecorded(_) | Event::UsageClaimed(_));
                            out.push(&env).map_err(|reason| LogError::Encode {
                                seq: env.seq,
                                reason,
                            })?;
                        }
                    },
                    Entry::Foreign(seq) => out.push_foreign(seq),
                }
            }
            if changed {
                self.db.insert(key(first), out.record())?;
            }
            drop(gate);
            if young {
                break;
            }
            next = end;
        }
        self.db.flush()?;
        if next != from {
            self.set_meta(FROM, &next.to_string())?;
        }
        Ok(compacted)
    }
}
