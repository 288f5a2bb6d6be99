use super::writer::{FlushUsage, Writer};
use actix::prelude::*;
use std::time::Duration;

/// Asks the writer to flush usage every `interval`. The final flush at shutdown is sent by
/// the application after the HTTP server has drained its requests.
pub struct UsageFlusher {
    writer: Addr<Writer>,
    interval: Duration,
}

impl UsageFlusher {
    pub fn new(writer: Addr<Writer>, interval: Duration) -> Self {
        UsageFlusher { writer, interval }
    }
}

impl Actor for UsageFlusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.interval, |act, _| {
            let writer = act.writer.clone();
            actix::spawn(async move {
                match writer.send(FlushUsage).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "usage flush failed"),
                    Err(e) => tracing::error!(error = %e, "writer unavailable for usage flush"),
                }
            });
        });
    }
}
