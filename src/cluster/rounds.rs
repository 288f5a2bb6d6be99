//! Cluster mode's writer: rounds. A round publishes, in one pipelined burst, every command
//! waiting on this node and one `usage_claimed` message holding every user's claims, waits
//! until the stream has them and this node applied them, and answers each caller. So the
//! messages a node publishes for claims are bounded by its round rate, not by its users, and
//! concurrent commands share a round trip instead of queueing for one each.
//!
//! **Order.** Every command of a round is validated against the state at the applied
//! sequence S, and the burst is published "expected last sequence S" (each later message
//! expecting its predecessor): if another node appended first, nothing after S lands, the
//! node catches up and the round validates again. Two commands of a round must not decide
//! on the same user (a token count, a session, the next user id): the events they produce
//! name their users, and a command whose users an earlier one in the round touched waits
//! for the next attempt, validated against a state that includes the first. Commands of one
//! round all wait for their answers, so any order among them is one a client could see.

use super::Cluster;
use crate::bus::PublishFailure;
use crate::command::{handle, Command, WriteError};
use crate::domain::UserId;
use crate::event::{Claim, Envelope, Event, UsageClaimed, UsageRecorded};
use crate::state::State;
use chrono::{DateTime, Utc};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};

/// What a command gets when other nodes kept appending first until its time was up.
fn kept_appending() -> WriteError {
    WriteError::Unavailable("other nodes kept appending first; try again".into())
}

/// How often an idle node looks for windows about to end (claims ahead of the next one).
const TICK: Duration = Duration::from_millis(100);

/// Commands and flushes waiting for a round, and the round counters requests wait on.
pub struct Rounds {
    state: Arc<State>,
    cluster: Arc<Cluster>,
    /// A std mutex: held for a push or a drain, never across an `.await`.
    queue: parking_lot::Mutex<VecDeque<Job>>,
    /// Woken when a job is queued.
    wake: Notify,
    /// Rounds started; a round drains the claims wanted before it started.
    started: AtomicU64,
    /// The last round finished: its claims are applied here (or given back).
    finished: watch::Sender<u64>,
    /// Stream messages this node published.
    published: AtomicU64,
    /// The last burst met another node's event: send the next one's first message alone
    /// (see `JetStreamBus::publish`). With one writer (the leader) that is rare.
    contended: AtomicBool,
}

enum Job {
    Command(Box<CommandJob>),
    Flush {
        periods: bool,
        reply: oneshot::Sender<Result<usize, WriteError>>,
    },
}

struct CommandJob {
    cmd: Command,
    now: DateTime<Utc>,
    /// The node the client called: its events name it.
    origin: String,
    /// Other nodes may keep appending first: give up after this.
    deadline: Instant,
    /// Events of this command still to publish after some of them landed: they follow at
    /// the next free sequences without validating again (they cannot have become invalid: a
    /// regenerated token's replacement is new to everyone).
    rest: Option<Vec<Event>>,
    /// What landed so far.
    done: Vec<Envelope>,
    reply: oneshot::Sender<Result<Vec<Envelope>, WriteError>>,
}

impl CommandJob {
    /// Answers the caller: with what landed, or the error. It may have gone away: nothing
    /// to tell, then.
    fn answer(self, result: Result<(), WriteError>) {
        let _ = self.reply.send(result.map(|()| self.done));
    }
}

/// The usage a round carries: period records, and the claims message.
#[derive(Default)]
struct Usage {
    records: Vec<UsageRecorded>,
    claims: Vec<Claim>,
    flushes: Vec<oneshot::Sender<Result<usize, WriteError>>>,
    /// Usage events that landed (for the flushes' answer).
    written: usize,
}

impl Rounds {
    /// Starts the round loop. Abort the handle to stop it (after the last flush).
    pub fn start(
        state: Arc<State>,
        cluster: Arc<Cluster>,
    ) -> (Arc<Rounds>, tokio::task::JoinHandle<()>) {
        let rounds = Arc::new(Rounds {
            state,
            cluster,
            queue: parking_lot::Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            started: AtomicU64::new(0),
            finished: watch::Sender::new(0),
            published: AtomicU64::new(0),
            contended: AtomicBool::new(false),
        });
        let task = tokio::spawn(rounds.clone().run());
        (rounds, task)
    }

    /// Runs `cmd`: forwarded to the leader when there is one that takes it, otherwise in
    /// this node's next round. Either way applied here before it returns.
    pub async fn execute(
        &self,
        cmd: Command,
        now: DateTime<Utc>,
    ) -> Result<Vec<Envelope>, WriteError> {
        // Usage records are this node's own: it publishes them itself.
        if !matches!(cmd, Command::RecordUsage(_)) {
            if let Some(leader) = self.cluster.leader() {
                let forwarded = super::forward::forward(&self.cluster, &leader, &cmd, now).await;
                if let super::forward::Forwarded::Ran(result) = forwarded {
                    return result;
                }
            }
        }
        let origin = self.cluster.node_id.clone();
        self.execute_here(cmd, now, origin).await
    }

    /// Runs `cmd` in this node's next round: validated, published, applied here. Its events
    /// name `origin` as their node: the node the client called (this one, or the one that
    /// forwarded it).
    pub async fn execute_here(
        &self,
        cmd: Command,
        now: DateTime<Utc>,
        origin: String,
    ) -> Result<Vec<Envelope>, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.push(Job::Command(Box::new(CommandJob {
            cmd,
            now,
            origin,
            deadline: Instant::now() + self.cluster.settings.catchup_timeout,
            rest: None,
            done: Vec::new(),
            reply,
        })));
        answer
            .await
            .unwrap_or_else(|_| Err(WriteError::Unavailable("the writer stopped".into())))
    }

    /// Publishes the claims due, and with `periods` the records of the periods that ended,
    /// in the next round. Returns how many usage events landed.
    pub async fn flush(&self, periods: bool) -> Result<usize, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.push(Job::Flush { periods, reply });
        answer
            .await
            .unwrap_or_else(|_| Err(WriteError::Unavailable("the writer stopped".into())))
    }

    /// Waits for a round that started after the caller's claim was asked for (see
    /// `RateLimits::demand`) to finish, for at most `catchup_timeout`. False: it did not in
    /// time.
    pub async fn claim_round(&self) -> bool {
        let timeout = self.cluster.settings.catchup_timeout;
        let ticket = self.started.load(Ordering::SeqCst) + 1;
        self.state.rate_limits.demand().notify_one();
        let mut rx = self.finished.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|f| *f >= ticket))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Rounds run so far, and stream messages this node published.
    pub fn counts(&self) -> (u64, u64) {
        (
            *self.finished.borrow(),
            self.published.load(Ordering::Relaxed),
        )
    }

    fn push(&self, job: Job) {
        self.queue.lock().push_back(job);
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            if self.queue.lock().is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.state.rate_limits.demand().notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
            }
            let round = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let jobs: Vec<Job> = self.queue.lock().drain(..).collect();
            self.round(jobs).await;
            self.finished.send_replace(round);
        }
    }

    /// One round: everything queued, and the claims due, until each is answered.
    async fn round(&self, jobs: Vec<Job>) {
        let mut commands = Vec::new();
        let mut usage = Usage::default();
        let mut periods = false;
        for job in jobs {
            match job {
                Job::Command(c) => commands.push(*c),
                Job::Flush { periods: p, reply } => {
                    periods |= p;
                    usage.flushes.push(reply);
                }
            }
        }
        let now = Utc::now();
        if periods {
            usage.records = self.state.drain_usage(now.timestamp());
        }
        usage.claims = self.state.rate_limits.drain_claims(now.timestamp_millis());
        let timeout = self.cluster.settings.catchup_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.is_poisoned() || self.cluster.is_halted() {
                let e = || {
                    WriteError::Storage(
                        "this node cannot apply the event stream; restart it".into(),
                    )
                };
                return self.fail(commands, usage, e);
            }
            if Instant::now() >= deadline {
                let e = || {
                    WriteError::Unavailable("other nodes kept appending first; try again".into())
                };
                return self.fail(commands, usage, e);
            }
            // Validate against a state with everything this node knows was appended: a
            // command answered before it was applied here (its wait timed out) must not be
            // missing when the next one is decided.
            let appended = self.cluster.appended.load(Ordering::Relaxed);
            if self.state.applied_seq() < appended {
                let left = deadline.saturating_duration_since(Instant::now());
                if !self.cluster.wait_applied(appended, left).await {
                    let e = || {
                        WriteError::Unavailable(format!(
                            "not caught up in time to seq {appended}, which this node appended"
                        ))
                    };
                    return self.fail(commands, usage, e);
                }
            }
            let base = self.state.applied_seq();
            let (batch, mut later) = self.validate(commands);
            let mut envs: Vec<Envelope> = Vec::new();
            let node = &self.cluster.node_id;
            let mut next = base;
            let mut number = |event: Event, at: DateTime<Utc>, node: &str| {
                next += 1;
                Envelope {
                    event_id: uuid::Uuid::new_v4(),
                    seq: next,
                    occurred_at: at,
                    node_id: node.to_owned(),
                    event,
                }
            };
            for (job, events) in &batch {
                envs.extend(
                    events
                        .iter()
                        .cloned()
                        .map(|e| number(e, job.now, &job.origin)),
                );
            }
            envs.extend(
                usage
                    .records
                    .iter()
                    .cloned()
                    .map(|r| number(Event::UsageRecorded(r), now, node)),
            );
            if !usage.claims.is_empty() {
                let claims = UsageClaimed {
                    claims: usage.claims.clone(),
                };
                envs.push(number(Event::UsageClaimed(claims), Utc::now(), node));
            }
            if envs.is_empty() && later.is_empty() {
                for reply in usage.flushes.drain(..) {
                    let _ = reply.send(Ok(usage.written));
                }
                return;
            }
            let (landed, failure) = if envs.is_empty() {
                (0, None)
            } else {
                let contended = self.contended.load(Ordering::Relaxed);
                self.cluster.bus.publish(&envs, contended).await
            };
            self.contended.store(
                matches!(failure, Some(PublishFailure::Conflict { .. })),
                Ordering::Relaxed,
            );
            self.published.fetch_add(landed as u64, Ordering::Relaxed);
            if landed > 0 {
                self.cluster
                    .appended
                    .fetch_max(envs[landed - 1].seq, Ordering::Relaxed);
            }
            // Settle what landed: whole commands are answered once applied here; the rest
            // of a command cut short is published next, unvalidated.
            let mut at = 0;
            let mut answered = Vec::new();
            for (mut job, events) in batch {
                let n = events.len();
                let took = landed.saturating_sub(at).min(n);
                let forced = !job.done.is_empty();
                job.done.extend_from_slice(&envs[at..at + took]);
                if took == n {
                    answered.push(job);
                } else {
                    if took > 0 || forced {
                        job.rest = Some(events[took..].to_vec());
                    }
                    later.push(job);
                }
                at += n;
            }
            let records = usage.records.len();
            let took = landed.saturating_sub(at).min(records);
            usage.records.drain(..took);
            usage.written += took;
            at += records;
            if !usage.claims.is_empty() && landed > at {
                usage.claims.clear();
                usage.written += 1;
            }
            let last = if landed > 0 {
                envs[landed - 1].seq
            } else {
                base
            };
            // Requeued jobs go first: a command cut short must follow its first events.
            later.sort_by_key(|j| j.rest.is_none());
            commands = later;
            match failure {
                None => {
                    if !self.cluster.wait_applied(last, timeout).await {
                        // The stream has it, so it happened: say so. This node applies it once
                        // it hears from the stream again (and answers checks with 503 until).
                        tracing::warn!(seq = last, "appended, but not applied here in time");
                    }
                    for job in answered {
                        job.answer(Ok(()));
                    }
                }
                Some(PublishFailure::Unavailable(reason)) => {
                    self.cluster.wait_applied(last, timeout).await;
                    for job in answered {
                        job.answer(Ok(()));
                    }
                    let e = || WriteError::Unavailable(reason.clone());
                    return self.fail(commands, usage, e);
                }
                Some(PublishFailure::Conflict { last: stream_last }) => {
                    // Another node appended first: catch up with the stream, then again.
                    let caught_up = match stream_last {
                        // A conflict naming a last sequence below what this node applied
                        // would mean the stream lost events; the error's figure is no proof
                        // of that (a replicated stream's leader may report one it had not
                        // caught up to), so ask the stream itself: `catch_up` fails closed
                        // if it really ends before this node's state.
                        Some(l) if l >= base => {
                            if self.cluster.wait_applied(l.max(last), timeout).await {
                                Ok(())
                            } else {
                                Err(format!("not caught up to seq {l} in time"))
                            }
                        }
                        _ => self
                            .cluster
                            .catch_up(timeout)
                            .await
                            .map_err(|e| e.to_string()),
                    };
                    for job in answered {
                        job.answer(Ok(()));
                    }
                    if let Err(reason) = caught_up {
                        let e = || WriteError::Unavailable(reason.clone());
                        return self.fail(commands, usage, e);
                    }
                }
            }
        }
    }

    /// Validates `commands` against the state as it is, in order: the ones to publish now
    /// with their events, and the ones that wait for the next attempt (they decide on a
    /// user an earlier one does). Rejected and empty commands are answered here.
    fn validate(
        &self,
        commands: Vec<CommandJob>,
    ) -> (Vec<(CommandJob, Vec<Event>)>, Vec<CommandJob>) {
        let mut users: HashSet<UserId> = HashSet::new();
        let mut batch = Vec::new();
        let mut later = Vec::new();
        for mut job in commands {
            if Instant::now() >= job.deadline {
                job.answer(Err(kept_appending()));
                continue;
            }
            let events = match job.rest.take() {
                Some(events) => events,
                None => match handle(&self.state, job.cmd.clone(), job.now) {
                    Ok(events) => events,
                    Err(e) => {
                        job.answer(Err(e.into()));
                        continue;
                    }
                },
            };
            if events.is_empty() {
                job.answer(Ok(()));
                continue;
            }
            let touched: Vec<UserId> = events.iter().filter_map(Event::user_id).collect();
            if touched.iter().any(|u| users.contains(u)) {
                if !job.done.is_empty() {
                    job.rest = Some(events);
                }
                later.push(job);
                continue;
            }
            users.extend(touched);
            batch.push((job, events));
        }
        (batch, later)
    }

    /// Answers everything left with the error `e` makes, and gives back the usage that did
    /// not land, so the next round carries it.
    fn fail(&self, commands: Vec<CommandJob>, mut usage: Usage, e: impl Fn() -> WriteError) {
        for job in commands {
            job.answer(Err(e()));
        }
        self.state.rate_limits.restore(&usage.records);
        self.state.rate_limits.restore_claims(&usage.claims);
        for reply in usage.flushes.drain(..) {
            let _ = reply.send(Err(e()));
        }
    }
}
