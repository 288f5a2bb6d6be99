use crate::event::{DecodeError, Envelope, Event};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use uuid::Uuid;

/// Failures of the log. Each names the sequence number it concerns, when there is one.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the event log in {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("event log I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("event log is corrupt at seq {seq}: {reason}")]
    Corrupt { seq: u64, reason: String },
    #[error("event log has a gap: expected seq {expected}, found seq {found}")]
    Gap { expected: u64, found: u64 },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The embedded event log.
///
/// Records are keyed by sequence number (8 bytes, big-endian, so sled's order is log order);
/// each value is a CRC32 of the JSON envelope (4 bytes, little-endian) followed by the JSON.
/// sled recovers a torn tail of its own files to a consistent prefix; the CRC and the
/// contiguity check at replay catch anything else, and name the record.
pub struct SledLog {
    db: sled::Db,
    /// Last assigned sequence number. A std (parking_lot) mutex, not tokio's: it is held for
    /// an in-memory sled insert only, never across an `.await`, so the order of keys written
    /// is the order of sequence numbers handed out.
    last_assigned: parking_lot::Mutex<u64>,
    commit: GroupCommit,
}

/// Group commit: appenders that arrive while a flush runs wait for the next one, so N
/// concurrent appends cost one or two flushes rather than N.
struct GroupCommit {
    /// `durable` is the highest sequence number known flushed; `flushing` says a leader is
    /// flushing now. A std mutex for the same reason as above.
    state: parking_lot::Mutex<CommitState>,
    notify: tokio::sync::Notify,
    flushes: AtomicU64,
}

struct CommitState {
    durable: u64,
    flushing: bool,
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn encode_record(env: &Envelope) -> Vec<u8> {
    let json = env.to_json();
    let mut out = Vec::with_capacity(json.len() + 4);
    out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

fn decode_record(seq: u64, value: &[u8]) -> Result<Envelope, LogError> {
    if value.len() < 4 {
        return Err(LogError::Corrupt {
            seq,
            reason: "record shorter than its checksum".into(),
        });
    }
    let (crc, json) = value.split_at(4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(json) != crc {
        return Err(LogError::Corrupt {
            seq,
            reason: "checksum mismatch".into(),
        });
    }
    let env = Envelope::decode(json, seq)?;
    if env.seq != seq {
        return Err(LogError::Corrupt {
            seq,
            reason: format!("record says seq {}", env.seq),
        });
    }
    Ok(env)
}

impl SledLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let open_err = |reason: String| LogError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let db = sled::Config::new()
            .path(dir.join("events"))
            .open()
            .map_err(|e| open_err(e.to_string()))?;
        let last = match db.last().map_err(|e| open_err(e.to_string()))? {
            None => 0,
            Some((k, _)) => {
                let bytes: [u8; 8] = k.as_ref().try_into().map_err(|_| LogError::Corrupt {
                    seq: 0,
                    reason: format!("key of {} bytes", k.len()),
                })?;
                u64::from_be_bytes(bytes)
            }
        };
        Ok(SledLog {
            db,
            last_assigned: parking_lot::Mutex::new(last),
            commit: GroupCommit {
                state: parking_lot::Mutex::new(CommitState {
                    durable: last,
                    flushing: false,
                }),
                notify: tokio::sync::Notify::new(),
                flushes: AtomicU64::new(0),
            },
        })
    }

    /// The last sequence number written (not necessarily flushed yet).
    pub fn last_seq(&self) -> u64 {
        *self.last_assigned.lock()
    }

    /// How many flushes the log has made: with group commit, far fewer than appends.
    pub fn flush_count(&self) -> u64 {
        self.commit.flushes.load(Ordering::Relaxed)
    }

    /// Wraps `events` in envelopes with the next sequence numbers and writes them in one
    /// atomic batch. Not durable until [`SledLog::wait_durable`] returns for the last one.
    pub fn append(
        &self,
        events: Vec<Event>,
        node_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, LogError> {
        let mut last = self.last_assigned.lock();
        let envs: Vec<Envelope> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| Envelope {
                event_id: Uuid::new_v4(),
                seq: *last + 1 + i as u64,
                occurred_at: at,
                node_id: node_id.to_owned(),
                event,
            })
            .collect();
        let mut batch = sled::Batch::default();
        for env in &envs {
            batch.insert(&key(env.seq), encode_record(env));
        }
        self.db.apply_batch(batch)?;
        *last += envs.len() as u64;
        Ok(envs)
    }

    /// Returns once everything up to `seq` has been flushed. Concurrent callers share
    /// flushes: one leader flushes, the rest wait for its result.
    pub async fn wait_durable(&self, seq: u64) -> Result<(), LogError> {
        loop {
            let notified = self.commit.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a flush finishing in between still wakes us.
            notified.as_mut().enable();
            let lead = {
                let mut st = self.commit.state.lock();
                if st.durable >= seq {
                    return Ok(());
                }
                !std::mem::replace(&mut st.flushing, true)
            };
            if !lead {
                notified.await;
                continue;
            }
            let target = self.last_seq();
            let db = self.db.clone();
            let result = tokio::task::spawn_blocking(move || db.flush()).await;
            self.commit.flushes.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = self.commit.state.lock();
                st.flushing = false;
                if matches!(result, Ok(Ok(_))) {
                    st.durable = st.durable.max(target);
                }
            }
            self.commit.notify.notify_waiters();
            match result {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(LogError::Io(e)),
                Err(e) => {
                    return Err(LogError::Io(sled::Error::ReportableBug(format!(
                        "flush task failed: {e}"
                    ))))
                }
            }
        }
    }

    /// Flushes synchronously (start-up, shutdown, tools).
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        self.db.flush()?;
        let mut st = self.commit.state.lock();
        st.durable = st.durable.max(self.last_seq());
        Ok(())
    }

    /// Every event from `from` (inclusive) in order, checked: checksums, decoding, and no
    /// gaps. The first problem ends the iteration with an error naming the sequence number.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<Envelope, LogError>> + '_ {
        let mut expected = from.max(1);
        let mut failed = false;
        self.db.range(key(expected)..).map_while(move |item| {
            if failed {
                return None;
            }
            let result = (|| {
                let (k, v) = item?;
                let seq =
                    u64::from_be_bytes(k.as_ref().try_into().map_err(|_| LogError::Corrupt {
                        seq: expected,
                        reason: format!("key of {} bytes", k.len()),
                    })?);
                if seq != expected {
                    return Err(LogError::Gap {
                        expected,
                        found: seq,
                    });
                }
                let env = decode_record(seq, &v)?;
                expected += 1;
                Ok(env)
            })();
            failed = result.is_err();
            Some(result)
        })
    }

    /// Writes raw bytes under a sequence number, bypassing every check. For tests that need a
    /// corrupt or out-of-order log.
    #[doc(hidden)]
    pub fn insert_raw_for_tests(&self, seq: u64, value: &[u8]) -> Result<(), LogError> {
        self.db.insert(key(seq), value)?;
        Ok(())
    }

    /// Removes a record, bypassing every check. For tests that need a gap.
    #[doc(hidden)]
    pub fn remove_for_tests(&self, seq: u64) -> Result<(), LogError> {
        self.db.remove(key(seq))?;
        Ok(())
    }
}

impl SledLog {
    /// Applies every event of the log to `state`, in order. Returns how many were applied.
    /// Any problem (corruption, a gap, an undecodable event) stops it with an error naming
    /// the sequence number: a partial state is never served.
    pub fn replay_into(&self, state: &crate::state::State) -> Result<u64, LogError> {
        let mut n = 0;
        for env in self.iter_from(state.applied_seq() + 1) {
            let env = env?;
            state.apply(&env).map_err(|e| LogError::Gap {
                expected: e.expected,
                found: e.found,
            })?;
            n += 1;
        }
        Ok(n)
    }
}
