use crate::bus::SledLog;
use crate::cluster::rounds::Rounds;
pub use crate::command::WriteError;
use crate::command::{handle, Command};
use crate::event::Envelope;
use crate::state::State;
use actix::prelude::*;
use chrono::Utc;
use std::sync::Arc;

/// Runs a command: validate, append, apply, wait until durable. Replies with the envelopes.
#[derive(Message)]
#[rtype(result = "Result<Vec<Envelope>, WriteError>")]
pub struct Execute(pub Command);

/// Writes the usage due: with `periods`, the `usage_recorded` records of the periods that
/// ended; in cluster mode also the claims due, in the next round's `usage_claimed` message.
/// Replies with how many usage events were written. Only the usage round ([`crate::actors::flush_and_checkpoint`]) records periods: it
/// checkpoints right after, so a period leaves the checkpoint only once its record is in.
#[derive(Message)]
#[rtype(result = "Result<usize, WriteError>")]
pub struct FlushUsage {
    pub periods: bool,
}

/// The one writer of a node.
///
/// Embedded mode: validation, sequence assignment, the sled insert and `apply` happen
/// synchronously inside the handler, so the next command is validated against state that
/// already includes this one's events. Only the wait for durability is asynchronous, which
/// lets concurrent commands share one flush (group commit). A reply is sent only once its
/// events are durable; a crash can lose only commands that were never acknowledged.
///
/// Cluster mode: commands and usage go to the node's [`Rounds`], which publishes them in
/// rounds, each validated against the state at applied sequence S and published with
/// "expected last sequence S": if another node appended first, the round catches up and
/// validates again. It replies once the replicator has applied the events here, so the
/// caller reads its own write.
pub struct Writer {
    state: Arc<State>,
    log: Arc<SledLog>,
    node_id: String,
    /// `Some` in cluster mode: the stream is the log, and the replicator applies.
    rounds: Option<Arc<Rounds>>,
}

impl Writer {
    pub fn new(state: Arc<State>, log: Arc<SledLog>, node_id: String) -> Self {
        Writer {
            state,
            log,
            node_id,
            rounds: None,
        }
    }

    /// A writer that publishes to the cluster's stream, through its rounds.
    pub fn clustered(
        state: Arc<State>,
        log: Arc<SledLog>,
        node_id: String,
        rounds: Arc<Rounds>,
    ) -> Self {
        Writer {
            state,
            log,
            node_id,
            rounds: Some(rounds),
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
        if let Some(rounds) = &self.rounds {
            let rounds = rounds.clone();
            return Box::pin(async move { rounds.execute(cmd, Utc::now()).await });
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
        if let Some(rounds) = &self.rounds {
            let rounds = rounds.clone();
            return Box::pin(async move { rounds.flush(msg.periods).await });
        }
        if !msg.periods {
            return Box::pin(async { Ok(0) });
        }
        let usage = self.state.drain_usage(Utc::now().timestamp());
        if usage.is_empty() {
            return Box::pin(async { Ok(0) });
        }
        let fut = self.commit(Command::RecordUsage(usage));
        Box::pin(async move { Ok(fut.await?.len()) })
    }
}
