//! Operations: liveness, readiness and Prometheus metrics.

use super::AppState;
use actix_web::{web, HttpResponse};
use serde_json::json;
use std::sync::atomic::Ordering;

/// `GET /healthz`: 200 while the process serves.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"success": true, "status": "ok"}))
}

/// `GET /readyz`: 200 once the log has been replayed and, in cluster mode, the node is
/// caught up with the stream; 503 before.
pub async fn readyz(app: web::Data<AppState>) -> HttpResponse {
    let applied = app.state.applied_seq();
    let caught_up = app.cluster.as_ref().is_none_or(|c| c.is_fresh());
    if app.ready.load(Ordering::Acquire) && !app.state.is_poisoned() && caught_up {
        HttpResponse::Ok().json(json!({"success": true, "status": "ready", "applied_seq": applied}))
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("retry-after", "1"))
            .json(json!({"success": false, "error": "Service unavailable", "applied_seq": applied}))
    }
}

/// Marks the app of the `[ops] listen` address: with one configured, `/metrics` is served
/// there only.
#[derive(Clone, Copy)]
pub struct OpsListener;

/// `GET /metrics`.
pub async fn metrics(req: actix_web::HttpRequest, app: web::Data<AppState>) -> HttpResponse {
    if app.settings.ops_listen.is_some() && req.app_data::<OpsListener>().is_none() {
        return super::error::ApiError::new(super::error::Code::NotFound).into_response();
    }
    let mut gauges = vec![
        (
            "snaptrack_applied_seq",
            "Sequence number of the last event applied on this node.",
            app.state.applied_seq() as f64,
        ),
        (
            "snaptrack_log_last_seq",
            "Sequence number of the last event in this node's log.",
            app.log.last_seq() as f64,
        ),
        (
            "snaptrack_replication_lag_events",
            "Events in the log not yet applied on this node.",
            app.log.last_seq().saturating_sub(app.state.applied_seq()) as f64,
        ),
        (
            "snaptrack_log_flushes_total",
            "Flushes of the event log (group commit shares one among concurrent appends).",
            app.log.flush_count() as f64,
        ),
        (
            "snaptrack_live_tokens",
            "Tokens in the index (revoked and expired ones included).",
            app.state.tokens.len() as f64,
        ),
    ];
    gauges.push((
        "snaptrack_usage_checkpoints_total",
        "Rounds of the usage checkpoint saved since start (open rate-limit windows, in place).",
        app.checkpoint.saves() as f64,
    ));
    gauges.push((
        "snaptrack_snapshot_seq",
        "Sequence number of the newest snapshot of this node (0: none yet).",
        app.snapshots
            .status
            .get()
            .map_or(0.0, |(seq, _)| seq as f64),
    ));
    if let Some((_, taken_at)) = app.snapshots.status.get() {
        gauges.push((
            "snaptrack_snapshot_age_seconds",
            "Seconds since the newest snapshot of this node was taken.",
            (chrono::Utc::now().timestamp() - taken_at).max(0) as f64,
        ));
    }
    if let Some(c) = &app.cluster {
        let stream_last = c.stream_last.load(Ordering::Relaxed);
        gauges.extend([
            (
                "snaptrack_stream_last_seq",
                "Last sequence of the JetStream stream at this node's last query.",
                stream_last as f64,
            ),
            (
                "snaptrack_stream_lag_events",
                "Events in the stream (at the last query) not yet applied on this node.",
                stream_last.saturating_sub(app.state.applied_seq()) as f64,
            ),
            (
                "snaptrack_catchup_queries_total",
                "Queries of the stream's last sequence (staleness probes and misses).",
                c.catchup_queries() as f64,
            ),
            (
                "snaptrack_catchup_misses_total",
                "Token checks that missed the index and caught up with the stream first.",
                c.catchup_misses() as f64,
            ),
            (
                "snaptrack_cluster_live_nodes",
                "Nodes this node has heard from recently, itself included: they share each rate limit.",
                f64::from(app.state.rate_limits.nodes()),
            ),
            (
                "snaptrack_stream_rejected_total",
                "Messages on the stream that no trusted key signed for their position: passed over, never applied.",
                c.stream_rejected.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_stream_void_total",
                "Signed messages passed over because they do not follow the event they name: the rest of a burst another node's event cut short.",
                c.stream_void.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_stream_usage_purged_total",
                "Usage messages older than usage_retention_days this node purged from the stream (security events are never purged).",
                c.usage_purged.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_commands_forwarded_total",
                "Commands this node forwarded to the cluster's writer (the live node with the smallest id) and got its answer for.",
                c.forwarded.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_forward_not_taken_total",
                "Commands the cluster's writer did not take (no one listened on its subject: it stopped; or it declined: not caught up), run by this node itself.",
                c.forward_not_taken.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_forward_rejected_total",
                "Forwarded commands refused (unsigned, from an untrusted key, replayed, stale) and answers not signed for their request.",
                c.forward_rejected.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_presence_rejected_total",
                "Presence messages ignored: unsigned, signed by an unknown key, or too old.",
                c.presence_rejected.load(Ordering::Relaxed) as f64,
            ),
            (
                "snaptrack_cluster_fresh",
                "1 while this node may answer token checks (bounded staleness).",
                f64::from(u8::from(c.is_fresh())),
            ),
        ]);
    }
    if let Some(r) = &app.rounds {
        let (rounds, published) = r.counts();
        gauges.extend([
            (
                "snaptrack_write_rounds_total",
                "Writer rounds run: each publishes this node's waiting commands and claims in one burst.",
                rounds as f64,
            ),
            (
                "snaptrack_published_messages_total",
                "Stream messages this node published (commands' events, usage records, claim messages).",
                published as f64,
            ),
        ]);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(app.metrics.render(&gauges))
}
