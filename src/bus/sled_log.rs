mod compact;

use super::record::{Entry, Events, Reader};
use crate::event::{upcast::Upcasters, DecodeError, Envelope, Event};
use chrono::{DateTime, Utc};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
    #[error("event at seq {seq} cannot be encoded for the log: {reason}")]
    Encode { seq: u64, reason: String },
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
/// Each sled value is a record of consecutive events, keyed by the first one's sequence
/// number; [`super::record`] has the format (a checksum, then the events in a compact
/// binary form). sled recovers a torn tail of its own files to a consistent prefix; the
/// checksum and the contiguity check at replay catch anything else, and name the record.
///
/// Writing is a group commit: [`SledLog::append`] numbers and encodes events and queues them
/// in memory; [`SledLog::wait_durable`] elects one leader at a time that writes everything
/// queued to sled as one record and flushes it, while later appends queue up for the next
/// round. sled never sees an insert while it flushes, and N concurrent appends cost one
/// record and one flush.
///
/// Replay pays per sled value (about a microsecond) far more than per event, so small
/// records do not stay small: once the records written since the last large one hold
/// [`CHUNK_EVENTS`] events or [`CHUNK_BYTES`] bytes, the leader rewrites them as one record,
/// in the same sled batch as the round's new events (sled applies a batch atomically, so a
/// crash leaves either form, never a mix).
pub struct SledLog {
    db: sled::Db,
    /// Sequence numbering and the events not yet written. A std (parking_lot) mutex, not
    /// tokio's: it is held to push or take a vector, never across an `.await` or any I/O.
    queue: parking_lot::Mutex<Queue>,
    /// The small records written since the last large one, to merge. Only the flushing
    /// leader takes it (a std mutex for the same reason as `queue`).
    tail: parking_lot::Mutex<Tail>,
    commit: GroupCommit,
    /// Held from taking what is queued until sled has it, across the blocking write: a
    /// round whose leader was cancelled mid-write still holds it, so the next round cannot
    /// write before it (records must reach sled in order). It holds the error of a write
    /// whose round ended before it could record it, for the next round to fail the log
    /// with. tokio's, for its owned guard, which can move into the blocking task.
    writing: Arc<tokio::sync::Mutex<Option<String>>>,
    /// How old events are read: the built-in upcasters, with the node's credential sink once
    /// set (`crate::credentials`), so the hashes of v1 events reach the credential store.
    upcasters: parking_lot::RwLock<Arc<Upcasters>>,
}

/// Small records are merged once together they hold this many events...
pub const CHUNK_EVENTS: u32 = 1024;
/// ...or this many bytes (well under the size where sled stores a value as a separate file).
pub const CHUNK_BYTES: usize = 64 * 1024;

/// The meta key of [`SledLog::save_token_count`].
const TOKEN_COUNT: &str = "token_count";
/// The meta key of [`SledLog::start_after`].
const BASE: &str = "base_seq";

fn base_of(db: &sled::Db) -> Result<u64, sled::Error> {
    Ok(db
        .open_tree("meta")?
        .get(BASE)?
        .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
        .unwrap_or(0))
}

struct Queue {
    /// Last assigned sequence number.
    last_assigned: u64,
    /// Last sequence number taken for writing. A round that holds the write gate knows
    /// every earlier write has reached sled, so once its own flush is done the log is
    /// durable this far (even if an earlier round was cancelled before saying so).
    taken: u64,
    /// Encoded events not yet handed to sled, in sequence order.
    pending: Events,
}

/// See [`SledLog::tail`].
#[derive(Default)]
struct Tail {
    /// Their events, in order, as the merged record will hold them.
    events: Events,
    /// Their keys (first sequence numbers).
    keys: Vec<u64>,
}

impl Tail {
    /// The sled batch that writes `new` as one record, or, when the run of small records is
    /// due for merging, rewrites the run and `new` as one record at the run's first key.
    fn write(&mut self, new: Events) -> sled::Batch {
        let mut batch = sled::Batch::default();
        if new.is_empty() {
            return batch;
        }
        let due = self.events.count + new.count >= CHUNK_EVENTS
            || self.events.bytes.len() + new.bytes.len() >= CHUNK_BYTES;
        if !due {
            batch.insert(&key(new.first), new.record());
            self.keys.push(new.first);
            self.events.extend(new);
            return batch;
        }
        self.events.extend(new);
        for k in self.keys.iter().skip(1) {
            batch.remove(&key(*k));
        }
        batch.insert(&key(self.events.first), self.events.record());
        *self = Tail::default();
        batch
    }

    /// The small records a previous process left at the end of the log, so that they are
    /// merged too: trailing batch records, contiguous, together under the merge thresholds.
    /// Stops at a legacy or large record.
    fn recover(db: &sled::Db) -> Result<Tail, LogError> {
        let mut found: Vec<Events> = Vec::new();
        let (mut count, mut bytes) = (0u32, 0usize);
        for item in db.iter().rev() {
            let (k, v) = item?;
            let first = seq_of(&k, 0)?;
            let Some(events) = Events::from_record(first, v)? else {
                break;
            };
            let follows = found
                .last()
                .is_none_or(|next| events.first + u64::from(events.count) == next.first);
            if !follows
                || count + events.count >= CHUNK_EVENTS
                || bytes + events.bytes.len() >= CHUNK_BYTES
            {
                break;
            }
            count += events.count;
            bytes += events.bytes.len();
            found.push(events);
        }
        let mut tail = Tail::default();
        for events in found.into_iter().rev() {
            tail.keys.push(events.first);
            tail.events.extend(events);
        }
        Ok(tail)
    }
}

/// One leader's round of the group commit: from taking the leader's role to publishing its
/// outcome. Dropped unfinished (its future cancelled), it still hands the role back.
struct Round<'a> {
    log: &'a SledLog,
}

impl<'a> Round<'a> {
    /// Starts a round; the caller has set `flushing`.
    fn new(log: &'a SledLog) -> Self {
        Round { log }
    }

    /// Records the outcome (durable up to `target`, or failed for good) and ends the round.
    fn finish(self, result: Result<(), String>, target: u64) -> Result<(), LogError> {
        self.log.commit.flushes.fetch_add(1, Ordering::Relaxed);
        let mut st = self.log.commit.state.lock();
        match result {
            Ok(()) => {
                st.durable = st.durable.max(target);
                Ok(())
            }
            Err(e) => {
                st.failed = Some(e.clone());
                Err(LogError::Failed(e))
            }
        }
        // `self` drops here: the role is handed back and waiters are woken.
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.log.commit.state.lock().flushing = false;
        self.log.commit.notify.notify_waiters();
    }
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

fn seq_of(k: &[u8], near: u64) -> Result<u64, LogError> {
    let bytes: [u8; 8] = k.try_into().map_err(|_| LogError::Corrupt {
        seq: near,
        reason: format!("key of {} bytes", k.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Applies `batch` and flushes, then records the outcome in the write gate (`gate`, see
/// [`SledLog::writing`]). Blocking.
fn write_and_flush(
    db: &sled::Db,
    batch: sled::Batch,
    gate: &mut Option<String>,
) -> Result<(), String> {
    let result = db
        .apply_batch(batch)
        .and_then(|()| db.flush().map(drop))
        .map_err(|e| e.to_string());
    *gate = result.as_ref().err().cloned();
    result
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
        // The last record is checked whole (a torn or corrupt tail stops the service here,
        // naming it); it says where the log ends.
        let last = match db.last().map_err(|e| open_err(e.to_string()))? {
            None => 0,
            Some((k, v)) => Reader::open(seq_of(&k, 0)?, v)?.end() - 1,
        };
        // A log seeded from a snapshot (cluster mode) starts after it.
        let base = base_of(&db).map_err(|e| open_err(e.to_string()))?;
        let last = last.max(base);
        let tail = Tail::recover(&db)?;
        Ok(SledLog {
            db,
            queue: parking_lot::Mutex::new(Queue {
                last_assigned: last,
                taken: last,
                pending: Events::default(),
            }),
            tail: parking_lot::Mutex::new(tail),
            commit: GroupCommit {
                state: parking_lot::Mutex::new(CommitState {
                    durable: last,
                    flushing: false,
                    failed: None,
                }),
                notify: tokio::sync::Notify::new(),
                flushes: AtomicU64::new(0),
            },
            writing: Arc::new(tokio::sync::Mutex::new(None)),
            upcasters: parking_lot::RwLock::new(Arc::new(Upcasters::builtin())),
        })
    }

    /// The last sequence number assigned (not necessarily durable yet).
    pub fn last_seq(&self) -> u64 {
        self.queue.lock().last_assigned
    }

    /// Makes an empty log start after `seq`: a cluster node seeded from a snapshot at `seq`
    /// mirrors the stream from `seq + 1` and never holds what came before.
    pub fn start_after(&self, seq: u64) -> Result<(), LogError> {
        let mut q = self.queue.lock();
        if q.last_assigned != 0 || !q.pending.is_empty() {
            return Err(LogError::Failed(format!(
                "cannot start the log after seq {seq}: it holds events up to seq {}",
                q.last_assigned
            )));
        }
        self.set_meta(BASE, &seq.to_string())?;
        q.last_assigned = seq;
        q.taken = seq;
        self.commit.state.lock().durable = seq;
        Ok(())
    }

    /// Where the log starts: 0, or the seq of the snapshot it was seeded from.
    pub fn base(&self) -> Result<u64, LogError> {
        Ok(base_of(&self.db)?)
    }

    /// The last sequence number written and flushed.
    pub fn durable_seq(&self) -> u64 {
        self.commit.state.lock().durable
    }

    /// Why the log stopped accepting appends, if it did.
    pub fn failure(&self) -> Option<String> {
        self.commit.state.lock().failed.clone()
    }

    /// A failed log takes nothing more (fail-stop, so no gap can follow).
    fn refuse_if_failed(&self) -> Result<(), LogError> {
        match &self.commit.state.lock().failed {
            Some(reason) => Err(LogError::Failed(reason.clone())),
            None => Ok(()),
        }
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
        self.refuse_if_failed()?;
        let mut q = self.queue.lock();
        let envs = Envelope::numbered(events, q.last_assigned, node_id, at);
        // Encode all before taking any: a failure leaves the queue as it was.
        let mut encoded = Events::default();
        for env in &envs {
            encoded.push(env).map_err(|reason| LogError::Encode {
                seq: env.seq,
                reason,
            })?;
        }
        q.pending.extend(encoded);
        q.last_assigned += envs.len() as u64;
        Ok(envs)
    }

    /// Queues an envelope numbered elsewhere (cluster mode: by the stream), which must
    /// follow the last one. Not durable until [`SledLog::wait_durable`] returns for it.
    pub fn mirror(&self, env: &Envelope) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        let mut q = self.queue.lock();
        if env.seq != q.last_assigned + 1 {
            return Err(LogError::Gap {
                expected: q.last_assigned + 1,
                found: env.seq,
            });
        }
        q.pending.push(env).map_err(|reason| LogError::Encode {
            seq: env.seq,
            reason,
        })?;
        q.last_assigned = env.seq;
        Ok(())
    }

    /// Queues a foreign position (cluster mode: a stream message no trusted node signed),
    /// which must follow the last one, so the log stays contiguous and a restart passes over
    /// it again without asking the stream.
    pub fn mirror_foreign(&self, seq: u64) -> Result<(), LogError> {
        self.refuse_if_failed()?;
        let mut q = self.queue.lock();
        if seq != q.last_assigned + 1 {
            return Err(LogError::Gap {
                expected: q.last_assigned + 1,
                found: seq,
            });
        }
        q.pending.push_foreign(seq);
        q.last_assigned = seq;
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
            // Leader. The guard ends the round even if this future is dropped mid-way (a
            // runtime shutting down), so no later caller waits for a leader that is gone.
            let round = Round::new(self);
            // Let appenders that are ready to run queue their events first, so this round
            // covers them too.
            tokio::task::yield_now().await;
            let mut gate = self.writing.clone().lock_owned().await;
            let (batch, target) = match self.take_pending(&mut gate) {
                Ok(taken) => taken,
                Err(e) => return round.finish(Err(e), 0),
            };
            let db = self.db.clone();
            let result =
                tokio::task::spawn_blocking(move || write_and_flush(&db, batch, &mut gate))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
            round.finish(result, target)?;
        }
    }

    /// Takes what is queued: the sled batch that writes it (see [`Tail::write`]) and how far
    /// the log is durable once that batch is flushed; or the error of an earlier write that
    /// its round could not record. Only the leader calls this, holding the write gate
    /// (`gate`), which from here says failed until [`write_and_flush`] records otherwise:
    /// should the write never run or never finish (a runtime dropping the blocking task, a
    /// panic), the next round must not take the batch for written.
    fn take_pending(&self, gate: &mut Option<String>) -> Result<(sled::Batch, u64), String> {
        if let Some(e) = gate.clone() {
            return Err(e);
        }
        let mut q = self.queue.lock();
        let pending = std::mem::take(&mut q.pending);
        if !pending.is_empty() {
            q.taken = pending.last();
        }
        *gate = Some(format!("the write up to seq {} did not complete", q.taken));
        Ok((self.tail.lock().write(pending), q.taken))
    }

    /// Writes and flushes everything queued, synchronously (tools, tests). Takes the leader's
    /// role like [`SledLog::wait_durable`], waiting for a running round to end first; so it
    /// must not be called on a thread that a running round needs to finish (a current-thread
    /// runtime's only thread).
    pub fn flush_blocking(&self) -> Result<(), LogError> {
        loop {
            let mut st = self.commit.state.lock();
            if let Some(reason) = &st.failed {
                // What is queued follows records that never reached the disk: writing it
                // would leave a gap, and the log could not be replayed.
                return Err(LogError::Failed(reason.clone()));
            }
            if !std::mem::replace(&mut st.flushing, true) {
                break;
            }
            drop(st);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let round = Round::new(self);
        let mut gate = loop {
            match self.writing.try_lock() {
                Ok(guard) => break guard,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        };
        let (batch, target) = match self.take_pending(&mut gate) {
            Ok(taken) => taken,
            Err(e) => return round.finish(Err(e), 0),
        };
        let result = write_and_flush(&self.db, batch, &mut gate);
        round.finish(result, target)
    }

    /// Every event from `from` (inclusive) in order, checked: checksums, decoding, and no
    /// gaps. The first problem ends the iteration with an error naming the sequence number.
    /// Foreign positions (see [`Entry::Foreign`]) are left out.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<Envelope, LogError>> + '_ {
        self.entries_from(from).filter_map(|entry| match entry {
            Ok(Entry::Event(env)) => Some(Ok(env)),
            Ok(Entry::Foreign(_)) => None,
            Err(e) => Some(Err(e)),
        })
    }

    /// Every position from `from` (inclusive) in order, foreign ones included; checked as
    /// [`SledLog::iter_from`].
    pub fn entries_from(&self, from: u64) -> impl Iterator<Item = Result<Entry, LogError>> + '_ {
        let expected = from.max(1);
        let mut scan = Scan {
            db: &self.db,
            iter: self.db.range(key(expected)..),
            record: None,
            expected,
            failed: None,
            upcasters: self.upcasters(),
        };
        if let Err(e) = scan.reseek() {
            scan.failed = Some(Some(e));
        }
        scan
    }

    /// The upcasters this log reads old events with (also for the stream's, in cluster mode).
    pub fn upcasters(&self) -> Arc<Upcasters> {
        self.upcasters.read().clone()
    }

    /// Reads old events from now on handing their credentials to `sink`.
    pub fn set_credential_sink(&self, sink: crate::event::upcast::CredentialSink) {
        let mut u = self.upcasters.write();
        *u = Arc::new(Upcasters::builtin().with_credential_sink(sink));
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

    /// A tree of the log's database beside the events, for state kept in place rather than
    /// appended (see [`crate::history`]). Writes to it share the log's flushes.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, LogError> {
        Ok(self.db.open_tree(name)?)
    }

    /// Saves how many tokens the state holds, for the next start's replay to size its maps
    /// (see [`SledLog::replay_into`]).
    pub fn save_token_count(&self, tokens: usize) -> Result<(), LogError> {
        self.set_meta(TOKEN_COUNT, &tokens.to_string())
    }

    /// Writes raw bytes under a sequence number, bypassing every check. For tests that need a
    /// corrupt or out-of-order log.
    #[doc(hidden)]
    pub fn insert_raw_for_tests(&self, seq: u64, value: &[u8]) -> Result<(), LogError> {
        self.db.insert(key(seq), value)?;
        Ok(())
    }

    /// The raw record at `seq`, if one starts there. For tests.
    #[doc(hidden)]
    pub fn raw_for_tests(&self, seq: u64) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.db.get(key(seq))?.map(|v| v.to_vec()))
    }

    /// How many records (sled values) hold the log. For tests of merging.
    #[doc(hidden)]
    pub fn record_count_for_tests(&self) -> usize {
        self.db.len()
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
    ///
    /// When the log holds a token count saved by [`SledLog::save_token_count`] (at a clean
    /// stop), the token maps are sized for it first. The count is only a hint: capped by the
    /// number of events to replay, and a missing or stale one only costs time.
    pub fn replay_into(&self, state: &crate::state::State) -> Result<u64, LogError> {
        let to_replay = self.last_seq().saturating_sub(state.applied_seq());
        let hint = self
            .meta(TOKEN_COUNT)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        state.reserve_tokens(hint.min(to_replay) as usize);
        let mut n = 0;
        for entry in self.entries_from(state.applied_seq() + 1) {
            match entry? {
                Entry::Event(env) => {
                    state.apply_owned(env)?;
                    n += 1;
                }
                Entry::Foreign(seq) => state.pass_over(seq)?,
            }
        }
        Ok(n)
    }
}

/// A checked scan of the log from `expected` on.
struct Scan<'a> {
    db: &'a sled::Db,
    /// Records after `record`.
    iter: sled::Iter,
    /// The record being read.
    record: Option<Reader>,
    /// Sequence number of the next event to yield.
    expected: u64,
    /// Set once the scan has failed: the error, until it is yielded.
    failed: Option<Option<LogError>>,
    upcasters: Arc<Upcasters>,
}

impl Scan<'_> {
    /// Positions the scan at the record holding `expected`, if one does: at the start, and
    /// when the next record is not where the last one ended (a run of small records may have
    /// been merged under a scan of the live log). Returns whether it found one.
    fn reseek(&mut self) -> Result<bool, LogError> {
        let Some(item) = self.db.range(..=key(self.expected)).next_back() else {
            return Ok(false);
        };
        let (k, v) = item?;
        let first = seq_of(&k, self.expected)?;
        let mut reader = Reader::open(first, v)?;
        if reader.end() <= self.expected {
            return Ok(false);
        }
        reader.skip_to(self.expected)?;
        self.record = Some(reader);
        self.iter = self.db.range(key(first + 1)..);
        Ok(true)
    }

    /// The next entry; `None` at the end of the log.
    fn step(&mut self) -> Result<Option<Entry>, LogError> {
        loop {
            if let Some(reader) = &mut self.record {
                if let Some(next) = reader.next_entry(&self.upcasters) {
                    self.expected += 1;
                    return next.map(Some);
                }
                self.record = None;
            }
            let Some(item) = self.iter.next() else {
                return match self.reseek()? {
                    true => continue,
                    false => Ok(None),
                };
            };
            let (k, v) = item?;
            let first = seq_of(&k, self.expected)?;
            if first < self.expected {
                return Err(LogError::Corrupt {
                    seq: first,
                    reason: format!(
                        "record overlaps the one before it, which ends at seq {}",
                        self.expected - 1
                    ),
                });
            }
            if first > self.expected {
                if self.reseek()? {
                    continue;
                }
                return Err(LogError::Gap {
                    expected: self.expected,
                    found: first,
                });
            }
            self.record = Some(Reader::open(first, v)?);
        }
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(failed) = &mut self.failed {
            return failed.take().map(Err);
        }
        let item = self.step().transpose();
        if matches!(item, Some(Err(_))) {
            self.failed = Some(None);
        }
        item
    }
}
