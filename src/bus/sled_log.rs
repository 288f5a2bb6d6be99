use crate::event::{DecodeError, Envelope, Event};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

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
    #[error("event log write failed, refusing further appends: {0}")]
    Failed(String),
}

impl From<crate::state::ApplyError> for LogError {
    fn from(e: crate::state::ApplyError) -> Self {
        LogError::Gap {
            expected: e.expected,
            found: e.found,
        }
    }
}

/// The embedded event log.
///
/// Records are keyed by sequence number (8 bytes, big-endian, so sled's order is log order);
/// each value is a CRC32 of the JSON envelope (4 bytes, little-endian) followed by the JSON.
/// sled recovers a torn tail of its own files to a consistent prefix; the CRC and the
/// contiguity check at replay catch anything else, and name the record.
///
/// Writing is a group commit: [`SledLog::append`] numbers and encodes events and queues them
/// in memory; [`SledLog::wait_durable`] elects one leader at a time that writes everything
/// queued to sled in one batch and flushes it, while later appends queue up for the next
/// round. sled never sees an insert while it flushes, and N concurrent appends cost one
/// batch and one flush.
pub struct SledLog {
    db: sled::Db,
    /// Sequence numbering and the queue of unwritten records. A std (parking_lot) mutex, not
    /// tokio's: it is held to push or take a vector, never across an `.await` or any I/O.
    queue: parking_lot::Mutex<Queue>,
    commit: GroupCommit,
}

struct Queue {
    /// Last assigned sequence number.
    last_assigned: u64,
    /// Encoded records not yet handed to sled, in sequence order.
    pending: Vec<(u64, Vec<u8>)>,
}

/// Who is flushing, and how far the log is durable.
struct GroupCommit {
    /// A std mutex for the same reason as `queue`.
    state: parking_lot::Mutex<CommitState>,
    notify: tokio::sync::Notify,
    flushes: AtomicU64,
}

struct CommitState {
    /// Highest sequence number written and flushed.
    durable: u64,
    /// A leader is writing and flushing now.
    flushing: bool,
    /// A write failed: the log no longer accepts appends (fail-stop, so no gap can follow).
    failed: Option<String>,
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

/// Writes `records` in one sled batch and flushes. Blocking.
fn write_and_flush(db: &sled::Db, records: Vec<(u64, Vec<u8>)>) -> Result<(), sled::Error> {
    if !records.is_empty() {
        let mut batch = sled::Batch::default();
        for (seq, rec) in records {
            batch.insert(&key(seq), rec);
        }
        db.apply_batch(batch)?;
    }
    db.flush()?;
    Ok(())
}

impl SledLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        let open_err = |reason: String| LogError::Open {
            path: dir.display().to_string(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let config = sled::Config::new()
            .path(dir.join("events"))
            // We flush explicitly after every batch; sled's own periodic flusher would only
            // compete with ours.
            .flush_every_ms(None)
            // The log is read once, front to back, at start-up, and then only written: a
            // small page cache does as well as sled's 1 GiB default and keeps resident memory
            // for the projections.
            .cache_capacity(64 * 1024 * 1024);
        // sled holds an exclusive lock on its files until its last internal reference is
        // gone, which can trail a `drop` (or a previous process's exit) by a few
        // milliseconds: wait up to 2 s for it before calling the log busy.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                // sled reports a held lock as an `Other` I/O error with this message.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 40 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(open_err(e.to_string())),
            }
        };
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
            queue: parking_lot::Mutex::new(Queue {
                last_assigned: last,
                pending: Vec::new(),
            }),
            commit: GroupCommit {
                state: parking_lot::Mutex::new(CommitState {
                    durable: last,
                    flushing: false,
                    failed: None,
                }),
                notify: tokio::sync::Notify::new(),
                flushes: AtomicU64::new(0),
            },
        })
    }

    /// The last sequence number assigned (not necessarily durable yet).
    pub fn last_seq(&self) -> u64 {
        self.queue.lock().last_assigned
    }

    /// Why the log stopped accepting appends, if it did.
    pub fn failure(&self) -> Option<String> {
        self.commit.state.lock().failed.clone()
    }

    /// How many flushes the log has made: with group commit, far fewer than appends.
    pub fn flush_count(&self) -> u64 {
        self.commit.flushes.load(Ordering::Relaxed)
    }

    /// Wraps `events` in envelopes with the next sequence numbers and queues them. Not
    /// durable until [`SledLog::wait_durable`] returns for the last one. No I/O.
    pub fn append(
        &self,
        events: Vec<Event>,
        node_id: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, LogError> {
        if let Some(reason) = &self.commit.state.lock().failed {
            return Err(LogError::Failed(reason.clone()));
        }
        let mut q = self.queue.lock();
        let envs = Envelope::numbered(events, q.last_assigned, node_id, at);
        for env in &envs {
            q.pending.push((env.seq, encode_record(env)));
        }
        q.last_assigned += envs.len() as u64;
        Ok(envs)
    }

    /// Queues an envelope numbered elsewhere (cluster mode: by the stream), which must
    /// follow the last one. Not durable until [`SledLog::wait_durable`] returns for it.
    pub fn mirror(&self, env: &Envelope) -> Result<(), LogError> {
        if let Some(reason) = &self.commit.state.lock().failed {
            return Err(LogError::Failed(reason.clone()));
        }
        let mut q = self.queue.lock();
        if env.seq != q.last_assigned + 1 {
            return Err(LogError::Gap {
                expected: q.last_assigned + 1,
                found: env.seq,
            });
        }
        q.pending.push((env.seq, encode_record(env)));
        q.last_assigned = env.seq;
        Ok(())
    }

    /// Returns once everything up to `seq` is written and flushed. Concurrent callers share
    /// the work: one leader writes and flushes all that is queued, the rest wait for it.
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
                if let Some(reason) = &st.failed {
                    return Err(LogError::Failed(reason.clone()));
                }
                !std::mem::replace(&mut st.flushing, true)
            };
            if !lead {
                notified.await;
                continue;
            }
            // Leader. Let appenders that are ready to run queue their events first, so this
            // round covers them too.
            tokio::task::yield_now().await;
            let records = std::mem::take(&mut self.queue.lock().pending);
            let target = records.last().map(|r| r.0);
            let db = self.db.clone();
            let result = tokio::task::spawn_blocking(move || write_and_flush(&db, records))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            self.commit.flushes.fetch_add(1, Ordering::Relaxed);
            {
                let mut st = self.commit.state.lock();
                st.flushing = false;
                match &result {
                    Ok(()) => st.durable = st.durable.max(target.unwrap_or(0)),
                    Err(e) => st.failed = Some(e.clone()),
                }
            }
            self.commit.notify.notify_waiters();
            if let Err(e) = result {
                return Err(LogError::Failed(e));
            }
        }
    }

    /// Writes and flushes everything queued, synchronously (shutdown, tools). Must not run
    /// concurrently with `wait_durable`.
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        if let Some(reason) = &self.commit.state.lock().failed {
            // What is queued follows records that never reached the disk: writing it would
            // leave a gap, and the log could not be replayed.
            return Err(LogError::Failed(reason.clone()));
        }
        let records = std::mem::take(&mut self.queue.lock().pending);
        let target = records.last().map(|r| r.0);
        write_and_flush(&self.db, records)?;
        let mut st = self.commit.state.lock();
        st.durable = st.durable.max(target.unwrap_or(0));
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

    /// A value of the log's metadata (beside the events: which mode wrote them, which
    /// stream they mirror).
    pub fn meta(&self, key: &str) -> Result<Option<String>, LogError> {
        let tree = self.db.open_tree("meta")?;
        Ok(tree
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets a metadata value and flushes it.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), LogError> {
        let tree = self.db.open_tree("meta")?;
        tree.insert(key, value.as_bytes())?;
        tree.flush()?;
        Ok(())
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
            state.apply_owned(env)?;
            n += 1;
        }
        Ok(n)
    }
}
