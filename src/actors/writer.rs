use crate::bus::{LogError, PublishFailure, SledLog};
use crate::cluster::Cluster;
use crate::command::{handle, Command, CommandError};
use crate::event::{Envelope, Event};
use crate::state::State;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// Runs a command: validate, append, apply, wait until durable. Replies with the envelopes.
#[derive(Message)]
#[rtype(result = "Result<Vec<Envelope>, WriteError>")]
pub struct Execute(pub Command);

/// Drains the rate-limit buckets into `usage_recorded` events: cluster mode's claims, and,
/// with `periods`, the records of the periods that ended. Replies with how many events were
/// written. Only the usage round ([`crate::actors::flush_and_checkpoint`]) records periods: it
/// checkpoints right after, so a period leaves the checkpoint only once its record is in.
#[derive(Message)]
#[rtype(result = "Result<usize, WriteError>")]
pub struct FlushUsage {
    pub periods: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Rejected(#[from] CommandError),
    #[error("storage failed: {0}")]
    Storage(String),
    /// Cluster mode: the stream could not take the events; nothing was changed unless the
    /// stream stored an event whose acknowledgement was lost.
    #[error("the event stream is unavailable: {0}")]
    Unavailable(String),
}

impl From<LogError> for WriteError {
    fn from(e: LogError) -> Self {
        WriteError::Storage(e.to_string())
    }
}

/// The one writer of a node.
///
/// Embedded mode: validation, sequence assignment, the sled insert and `apply` happen
/// synchronously inside the handler, so the next command is validated against state that
/// already includes this one's events. Only the wait for durability is asynchronous, which
/// lets concurrent commands share one flush (group commit). A reply is sent only once its
/// events are durable; a crash can lose only commands that were never acknowledged.
///
/// Cluster mode: commands take turns. Each is validated against the state at applied
/// sequence S and its events published with "expected last sequence S": if another node
/// appended first, the writer catches up and validates again. It replies once the replicator
/// has applied the events here, so the caller reads its own write.
pub struct Writer {
    state: Arc<State>,
    log: Arc<SledLog>,
    node_id: String,
    /// `Some` in cluster mode: the stream is the log, and the replicator applies.
    cluster: Option<Arc<Cluster>>,
}

impl Writer {
    pub fn new(state: Arc<State>, log: Arc<SledLog>, node_id: String) -> Self {
        Writer {
            state,
            log,
            node_id,
            cluster: None,
        }
    }

    /// A writer that publishes to the cluster's stream.
    pub fn clustered(state: Arc<State>, log: Arc<SledLog>, cluster: Arc<Cluster>) -> Self {
        Writer {
            state,
            log,
            node_id: cluster.node_id.clone(),
            cluster: Some(cluster),
        }
    }

    /// The synchronous part of a command: validate against current state, append (not yet
    /// durable), apply. Public so tests can drive the same path without an actor system.
    pub fn execute_now(
        &self,
        cmd: Command,
        now: chrono::DateTime<Utc>,
    ) -> Result<Vec<Envelope>, WriteError> {
        if self.state.is_poisoned() {
            return Err(WriteError::Storage(
                "the event log failed; restart the node".into(),
            ));
        }
        let events = handle(&self.state, cmd, now)?;
        if events.is_empty() {
            return Ok(vec![]);
        }
        let envs = self.log.append(events, &self.node_id, now)?;
        for env in &envs {
            self.state
                .apply(env)
                .map_err(|e| WriteError::Storage(e.to_string()))?;
        }
        Ok(envs)
    }

    fn commit(&self, cmd: Command) -> ResponseFuture<Result<Vec<Envelope>, WriteError>> {
        if let Some(cluster) = &self.cluster {
            return Box::pin(execute_clustered(
                self.state.clone(),
                cluster.clone(),
                cmd,
                Utc::now(),
            ));
        }
        let outcome = self.execute_now(cmd, Utc::now());
        let log = self.log.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let envs = outcome?;
            if let Some(last) = envs.last() {
                if let Err(e) = log.wait_durable(last.seq).await {
                    // The events are applied but not durable: fail closed until a restart
                    // rebuilds the state from the log.
                    tracing::error!(error = %e, "event log write failed; node fails closed");
                    state.poison();
                    return Err(e.into());
                }
            }
            Ok(envs)
        })
    }
}

impl Actor for Writer {
    type Context = Context<Self>;
}

impl Handler<Execute> for Writer {
    type Result = ResponseFuture<Result<Vec<Envelope>, WriteError>>;

    fn handle(&mut self, msg: Execute, _: &mut Self::Context) -> Self::Result {
        self.commit(msg.0)
    }
}

impl Handler<FlushUsage> for Writer {
    type Result = ResponseFuture<Result<usize, WriteError>>;

    fn handle(&mut self, msg: FlushUsage, _: &mut Self::Context) -> Self::Result {
        if let Some(cluster) = &self.cluster {
            return Box::pin(flush_clustered(
                self.state.clone(),
                cluster.clone(),
                msg.periods,
            ));
        }
        let usage = self.state.drain_usage(Utc::now().timestamp(), msg.periods);
        if usage.is_empty() {
            return Box::pin(async { Ok(0) });
        }
        let fut = self.commit(Command::RecordUsage(usage));
        Box::pin(async move { Ok(fut.await?.len()) })
    }
}

/// Cluster mode's command path (see [`Writer`]).
///
/// A command of several events (regenerate; a usage flush) is validated once, against the
/// state before its first event. If another node appends between two of its events, the rest
/// follow at the next free sequences without validating again: they cannot have become
/// invalid (a regenerated token's replacement is new to everyone; usage only adds).
async fn execute_clustered(
    state: Arc<State>,
    cluster: Arc<Cluster>,
    cmd: Command,
    now: DateTime<Utc>,
) -> Result<Vec<Envelope>, WriteError> {
    let _turn = cluster.writer_turn.lock().await;
    publish_command(&state, &cluster, cmd, now).await
}

/// Cluster mode's usage flush. The counts are drained inside the writer's turn, so a flush
/// returns only once every count drained before it was asked for is applied here: a request
/// that found its node's share of a limit used can ask for one and then look again.
async fn flush_clustered(
    state: Arc<State>,
    cluster: Arc<Cluster>,
    periods: bool,
) -> Result<usize, WriteError> {
    let _turn = cluster.writer_turn.lock().await;
    let usage = state.drain_usage(Utc::now().timestamp(), periods);
    if usage.is_empty() {
        return Ok(0);
    }
    match publish_command(
        &state,
        &cluster,
        Command::RecordUsage(usage.clone()),
        Utc::now(),
    )
    .await
    {
        Ok(envs) => Ok(envs.len()),
        Err(e) => {
            if matches!(e, WriteError::Unavailable(_)) {
                // Not written (or, rarely, written but not acknowledged): count them again
                // in the next flush. Counting twice errs on the side of the limit.
                state.rate_limits.restore(&usage);
            }
            Err(e)
        }
    }
}

/// Validates, publishes and waits until applied; the caller holds the writer's turn.
async fn publish_command(
    state: &Arc<State>,
    cluster: &Arc<Cluster>,
    cmd: Command,
    now: DateTime<Utc>,
) -> Result<Vec<Envelope>, WriteError> {
    if state.is_poisoned() || cluster.is_halted() {
        return Err(WriteError::Storage(
            "this node cannot apply the event stream; restart it".into(),
        ));
    }
    let timeout = cluster.settings.catchup_timeout;
    // Other nodes may keep appending first; keep trying for as long as a catch-up may take.
    let deadline = std::time::Instant::now() + timeout;
    let mut published: Vec<Envelope> = Vec::new();
    let mut rest: Option<Vec<Event>> = None;
    while std::time::Instant::now() < deadline {
        let base = state.applied_seq();
        let events = match rest.take() {
            Some(events) => events,
            None => handle(state, cmd.clone(), now)?,
        };
        if events.is_empty() {
            return Ok(published);
        }
        let envs = Envelope::numbered(events, base, &cluster.node_id, now);
        let (landed, failure) = cluster.bus.publish(&envs).await;
        published.extend_from_slice(&envs[..landed]);
        let conflict = match failure {
            None => None,
            Some(PublishFailure::Conflict { last }) => {
                if !published.is_empty() {
                    rest = Some(envs[landed..].iter().map(|e| e.event.clone()).collect());
                }
                Some(last)
            }
            Some(PublishFailure::Unavailable(reason)) => {
                return Err(WriteError::Unavailable(reason));
            }
        };
        let Some(stream_last) = conflict else {
            let last = published.last().map_or(base, |e| e.seq);
            if !cluster.wait_applied(last, timeout).await {
                // The stream has it, so it happened: say so. This node applies it once it
                // hears from the stream again (and answers checks with 503 until then).
                tracing::warn!(seq = last, "appended, but not applied here in time");
            }
            return Ok(published);
        };
        // Another node appended first: catch up with the stream, then try again.
        match stream_last {
            Some(last) if last < base => {
                // The stream holds less than this node applied: it was recreated or lost
                // events. Nothing published now could be trusted.
                cluster.halt();
                return Err(WriteError::Unavailable(format!(
                    "the stream ends at seq {last} but this node applied seq {base}"
                )));
            }
            Some(last) => {
                if !cluster.wait_applied(last, timeout).await {
                    return Err(WriteError::Unavailable(format!(
                        "not caught up to seq {last} in time"
                    )));
                }
            }
            None => cluster
                .catch_up(timeout)
                .await
                .map_err(|e| WriteError::Unavailable(e.to_string()))?,
        }
    }
    Err(WriteError::Unavailable(
        "other nodes kept appending first; try again".into(),
    ))
}
