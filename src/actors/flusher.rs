use super::writer::{FlushUsage, WriteError, Writer};
use crate::history::{Quiesce, UsageCheckpoint};
use crate::state::State;
use actix::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Every `interval`: asks the writer to record the rate-limit windows that closed, then
/// overwrites the checkpoint of the open ones. The last round at shutdown is run by the
/// application after the HTTP server has drained its requests ([`flush_and_checkpoint`]).
pub struct UsageFlusher {
    writer: Addr<Writer>,
    state: Arc<State>,
    checkpoint: Arc<UsageCheckpoint>,
    interval: Duration,
    /// Closed at a stop: no round starts after it, and the stop waits for the one running.
    gate: Arc<Quiesce>,
}

impl UsageFlusher {
    pub fn new(
        writer: Addr<Writer>,
        state: Arc<State>,
        checkpoint: Arc<UsageCheckpoint>,
        interval: Duration,
        gate: Arc<Quiesce>,
    ) -> Self {
        UsageFlusher {
            writer,
            state,
            checkpoint,
            interval,
            gate,
        }
    }
}

/// Why a round of [`flush_and_checkpoint`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error("usage flush failed: {0}")]
    Write(#[from] WriteError),
    #[error("writer unavailable: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("usage checkpoint failed: {0}")]
    Checkpoint(String),
}

/// One round: records the closed windows (durably), then checkpoints the open ones. In that
/// order, so that a window's checkpoint row only goes once its record is in the log; a
/// failed flush skips the checkpoint, and what changed is saved by the next round. Returns
/// how many records were written.
pub async fn flush_and_checkpoint(
    writer: &Addr<Writer>,
    state: &Arc<State>,
    checkpoint: &Arc<UsageCheckpoint>,
) -> Result<usize, FlushError> {
    let _turn = checkpoint.turn.lock().await;
    let written = writer.send(FlushUsage { periods: true }).await??;
    let images = state.rate_limits.checkpoint();
    let users: Vec<_> = images.iter().map(|i| i.user).collect();
    let cp = checkpoint.clone();
    let saved = tokio::task::spawn_blocking(move || cp.save(&images))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    if let Err(e) = saved {
        // Saved by the next round, then.
        state.rate_limits.mark_changed(users);
        return Err(FlushError::Checkpoint(e));
    }
    Ok(written)
}

impl Actor for UsageFlusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, _| {
            let (writer, state, cp) = (
                act.writer.clone(),
                act.state.clone(),
                act.checkpoint.clone(),
            );
            let gate = act.gate.clone();
            actix::spawn(async move {
                let Some(_inside) = gate.enter().await else {
                    return;
                };
                if let Err(e) = flush_and_checkpoint(&writer, &state, &cp).await {
                    tracing::error!(error = %e, "usage round failed");
                }
            });
        });
    }
}
