//! The HTTP layer: routes, extractors, the error table, and [`Application`], which opens the
//! log, replays it, starts the actors and serves.
//!
//! Owns: translation between HTTP and commands/queries. May not touch: the log (only the
//! writer appends) or the projections' internals (it reads them through `State`'s methods).

pub mod account;
pub mod admin;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod leaks;
pub mod metrics;
pub mod ops;
pub mod pages;
pub mod public;
pub mod security_log;
pub mod throttle;
pub mod tokens;
pub mod usage;

use crate::actors::{flush_and_checkpoint, replicator, Execute, UsageFlusher, Writer};
use crate::bus::{JetStreamBus, LogError, SledLog};
use crate::cluster::rounds::Rounds;
use crate::cluster::Cluster;
use crate::command::{Command, CommandError};
use crate::config::Settings;
use crate::credentials::Credentials;
use crate::domain::{Email, Password, Tier, UserName};
use crate::history::{Quiesce, SecurityLog, SnapshotStore, UsageCheckpoint, UsageRollups};
use crate::signing::{Signer, Verifier};
use crate::state::{State, TierTable};
use actix::{Actor, Addr};
use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{web, App, HttpServer};
use error::{json_error, ApiError, Code};
use metrics::Metrics;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use throttle::FailureThrottle;

/// What every handler shares, behind `web::Data`.
pub struct AppState {
    pub state: Arc<State>,
    pub writer: Addr<Writer>,
    pub log: Arc<SledLog>,
    /// Where this node's snapshots are, and the newest one's sequence number and age.
    pub snapshots: Arc<SnapshotStore>,
    /// The open rate-limit windows' checkpoint (its rounds are a metric).
    pub checkpoint: Arc<UsageCheckpoint>,
    /// Requests per token per hour, for the usage chart.
    pub rollups: Arc<UsageRollups>,
    /// Each user's security events, for Settings → Security log.
    pub security_log: Arc<SecurityLog>,
    /// Password hashes by credential id (never in the log).
    pub credentials: Arc<Credentials>,
    /// `Some` in cluster mode.
    pub cluster: Option<Arc<Cluster>>,
    /// `Some` in cluster mode: the writer's rounds, which requests wait on for claims.
    pub rounds: Option<Arc<Rounds>>,
    /// Per-tier limits, copied out of the settings so the verify path reads one small array.
    pub tiers: TierTable,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub auth_throttle: FailureThrottle,
    pub login_throttle: FailureThrottle,
    /// Failed logins per account (a hash of the compared email), from any address.
    pub account_login_throttle: FailureThrottle<crate::domain::TokenHash>,
    /// Token changes per user through the dashboard.
    pub token_changes: FailureThrottle<crate::domain::UserId>,
    /// Set once replay is done (always, in embedded mode, before the server accepts).
    pub ready: AtomicBool,
    /// An argon2id hash of a random password: logins for unknown emails verify against it,
    /// so they take as long as logins for known ones.
    pub dummy_hash: String,
    /// Bounds concurrent argon2 verifications (memory-hard: ~19 MiB each).
    pub password_checks: tokio::sync::Semaphore,
}

/// Why `serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("{0}")]
    Other(String),
}

/// Credentials of the `--demo` user, printed once when it is created.
pub struct DemoUser {
    pub email: String,
    pub password: Option<String>,
}

/// A built, listening service.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    /// The `[ops] listen` server (`/metrics`, `/healthz`, `/readyz`), running in a task of
    /// its own, and its address.
    ops: Option<(
        ServerHandle,
        SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    tls: bool,
    writer: Addr<Writer>,
    log: Arc<SledLog>,
    /// Read at shutdown, for the token count the next start sizes its maps with.
    state: Arc<State>,
    /// Saved at shutdown, after the last usage flush.
    checkpoint: Arc<UsageCheckpoint>,
    /// A snapshot is taken at every clean stop.
    snapshots: Arc<SnapshotStore>,
    /// Shared (cluster mode) before the stop's snapshot is.
    credentials: Arc<Credentials>,
    /// The background rounds' gate, closed at a stop before the last round.
    quiesce: Arc<Quiesce>,
    cluster: Option<Arc<Cluster>>,
    /// Cluster mode's replicator, announcer and writer rounds.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub demo: Option<DemoUser>,
}

fn load_tls(settings: &Settings) -> Result<Option<rustls::ServerConfig>, StartError> {
    let Some(tls) = &settings.tls else {
        return Ok(None);
    };
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| StartError::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(&tls.cert)?;
    let key_pem = read(&tls.key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("bad certificate {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError::Tls(format!(
            "no certificate in {}",
            tls.cert.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| StartError::Tls(format!("bad key {}: {e}", tls.key.display())))?
        .ok_or_else(|| StartError::Tls(format!("no private key in {}", tls.key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| StartError::Tls(e.to_string()))?;
    Ok(Some(config))
}

/// Every route pattern, hot ones first (metrics find a route by scanning this list).
pub const ROUTES: &[&str] = &[
    "/test",
    "/auth",
    "/login",
    "/logout",
    "/settings/api-keys",
    "/assets/{name}",
    "/dashboard/tokens",
    "/dashboard/tokens/{id}",
    "/dashboard/tokens/{id}/regenerate",
    "/dashboard/tokens/{id}/usage",
    "/dashboard/events",
    "/dashboard/password",
    "/dashboard/sessions/end-all",
    "/leaked-tokens",
    "/settings/security-log",
    "/settings/account",
    "/admin/users",
    "/admin/users/{id}",
    "/admin/users/{id}/subscription",
    "/admin/users/{id}/tokens",
    "/admin/tokens/{id}",
    "/admin/tokens/{id}/regenerate",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Every route. Each resource is named after its pattern (for metrics) and answers other
/// methods with a JSON 405.
pub fn routes(cfg: &mut web::ServiceConfig) {
    fn resource(path: &'static str) -> actix_web::Resource {
        debug_assert!(ROUTES.contains(&path), "{path} missing from ROUTES");
        web::resource(path)
            .name(path)
            .default_service(web::to(|| async {
                ApiError::new(Code::MethodNotAllowed).into_response()
            }))
    }
    cfg.service(resource("/test").route(web::get().to(public::test)))
        .service(resource("/auth").route(web::get().to(public::forward_auth)))
        .service(
            resource("/login")
                .route(web::get().to(pages::login_page))
                .route(web::post().to(dashboard::login)),
        )
        .service(resource("/settings/api-keys").route(web::get().to(pages::api_keys_page)))
        .service(resource("/assets/{name}").route(web::get().to(pages::asset)))
        .service(resource("/logout").route(web::post().to(dashboard::logout)))
        .service(
            resource("/dashboard/tokens")
                .route(web::get().to(dashboard::list))
                .route(web::post().to(dashboard::generate)),
        )
        .service(resource("/dashboard/tokens/{id}").route(web::delete().to(dashboard::revoke)))
        .service(
            resource("/dashboard/tokens/{id}/regenerate")
                .route(web::post().to(dashboard::regenerate)),
        )
        .service(resource("/dashboard/tokens/{id}/usage").route(web::get().to(usage::token_usage)))
        .service(resource("/dashboard/events").route(web::get().to(security_log::events)))
        .service(resource("/dashboard/password").route(web::post().to(account::change_password)))
        .service(resource("/leaked-tokens").route(web::post().to(leaks::report)))
        .service(
            resource("/dashboard/sessions/end-all")
                .route(web::post().to(account::end_all_sessions)),
        )
        .service(resource("/settings/security-log").route(web::get().to(pages::security_log_page)))
        .service(resource("/settings/account").route(web::get().to(pages::account_page)))
        .service(resource("/admin/users").route(web::post().to(admin::create_user)))
        .service(resource("/admin/users/{id}").route(web::get().to(admin::get_user)))
        .service(
            resource("/admin/users/{id}/subscription")
                .route(web::put().to(admin::put_subscription)),
        )
        .service(resource("/admin/users/{id}/tokens").route(web::post().to(admin::issue_token)))
        .service(resource("/admin/tokens/{id}").route(web::delete().to(admin::revoke_token)))
        .service(
            resource("/admin/tokens/{id}/regenerate")
                .route(web::post().to(admin::regenerate_token)),
        )
        .service(resource("/healthz").route(web::get().to(ops::healthz)))
        .service(resource("/readyz").route(web::get().to(ops::readyz)))
        .service(resource("/metrics").route(web::get().to(ops::metrics)));
}

/// Cluster mode's keys: the one this node signs with, and the ones whose messages it applies.
fn load_keys(settings: &Settings) -> Result<(Signer, Verifier), StartError> {
    let path = settings.trust.signing_key.as_ref().ok_or_else(|| {
        StartError::Other(
            "cluster mode needs a signing key: make one with `snaptrack-auth keygen --out PATH`, then set [cluster] signing_key = \"PATH\" (or SNAPTRACK_AUTH_SIGNING_KEY), and list every node's public key in [cluster] trusted_keys".into(),
        )
    })?;
    let signer = Signer::load(path).map_err(|e| StartError::Other(e.to_string()))?;
    let verifier = Verifier::new(&signer, &settings.trust.trusted_keys)
        .map_err(|e| StartError::Other(format!("[cluster] trusted_keys: {e}")))?;
    tracing::info!(
        public_key = signer.public_key(),
        trusted = verifier.len(),
        "stream messages signed and checked"
    );
    Ok((signer, verifier))
}

/// The `[ops] listen` server: `/metrics` (served there only), `/healthz` and `/readyz`, on
/// an address of its own so that operators can keep it off the public network.
fn ops_server(
    addr: &str,
    app_state: web::Data<AppState>,
) -> Result<(Server, SocketAddr), StartError> {
    let listen_err = |e: std::io::Error| StartError::Listen {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    let listener = TcpListener::bind(addr).map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .app_data(ops::OpsListener)
            .route("/metrics", web::get().to(ops::metrics))
            .route("/healthz", web::get().to(ops::healthz))
            .route("/readyz", web::get().to(ops::readyz))
            .default_service(web::to(|| async {
                ApiError::new(Code::NotFound).into_response()
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(listen_err)?
    .run();
    Ok((server, bound))
}

/// What start-up restored: the log, the state, and the usage checkpoint.
pub struct Restored {
    pub log: Arc<SledLog>,
    pub state: Arc<State>,
    pub checkpoint: Arc<UsageCheckpoint>,
    pub snapshots: Arc<SnapshotStore>,
    pub rollups: Arc<UsageRollups>,
    pub security_log: Arc<SecurityLog>,
}

/// Opens the log in `settings.data`, replays it into a fresh state, and puts the
/// checkpointed rate-limit windows back.
pub fn open_and_replay(settings: &Settings) -> Result<Restored, StartError> {
    let log = open_log(settings)?;
    restore(settings, log)
}

/// Opens the log in `settings.data`, checking that it was written in this node's mode.
pub fn open_log(settings: &Settings) -> Result<Arc<SledLog>, StartError> {
    let log = Arc::new(SledLog::open(&settings.data)?);
    // Embedded logs number events themselves; cluster logs mirror the stream's numbers. One
    // data directory holds one kind: mixing them would apply unrelated events on top.
    let mode = if settings.nats.is_some() {
        "cluster"
    } else {
        "embedded"
    };
    let written_by = match log.meta("mode")? {
        // Logs from before the marker existed are embedded ones.
        None if log.last_seq() > 0 => Some("embedded".to_owned()),
        other => other,
    };
    match written_by {
        Some(m) if m != mode => {
            return Err(StartError::Other(format!(
                "the data directory {} holds a log written in {m} mode; a node in {mode} mode needs another (or an empty) data directory",
                settings.data.display()
            )))
        }
        Some(_) => {}
        None => log.set_meta("mode", mode)?,
    }
    Ok(log)
}

/// Restores the newest usable snapshot in `settings.data` (if any), replays the log after
/// it, and puts the checkpointed rate-limit windows back.
pub fn restore(settings: &Settings, log: Arc<SledLog>) -> Result<Restored, StartError> {
    // Cluster mode: nodes claim their requests before admitting them (one global limit).
    let claims = settings.nats.is_some();
    let started = std::time::Instant::now();
    let snapshots = Arc::new(SnapshotStore::new(
        &settings.data,
        settings.history.snapshots_kept,
    ));
    let state = match snapshots
        .newest_valid(log.last_seq())
        .map_err(|e| StartError::Other(e.to_string()))?
    {
        Some(loaded) => {
            // An older format held the password hashes: they go to the credential store.
            let upcasters = log.upcasters();
            for (id, phc) in &loaded.credentials {
                upcasters.hand_over(id, phc);
            }
            let (seq, read) = (loaded.image.applied_seq, started.elapsed());
            let state = State::from_image(&settings.node_id, claims, loaded.image);
            tracing::info!(
                seq,
                path = %loaded.path.display(),
                read_ms = read.as_millis() as u64,
                build_ms = (started.elapsed() - read).as_millis() as u64,
                "snapshot restored"
            );
            state
        }
        None => {
            let state = State::new(&settings.node_id);
            if claims {
                state.rate_limits.use_claims();
            }
            state
        }
    };
    state
        .rate_limits
        .set_record_secs(settings.history.usage_record_secs);
    let base = log.base()?;
    if base > state.applied_seq() {
        return Err(StartError::Other(format!(
            "the log in {} starts after seq {base} (the node was seeded from a shared snapshot), and no usable snapshot reaches it: empty the data directory to seed the node again",
            settings.data.display()
        )));
    }
    let state = Arc::new(state);
    let n = log.replay_into(&state)?;
    tracing::info!(
        events = n,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "log replayed"
    );
    let checkpoint = Arc::new(UsageCheckpoint::open(&log)?);
    let windows = checkpoint.load()?;
    tracing::debug!(windows = windows.len(), "usage checkpoint restored");
    state.rate_limits.restore_checkpoint(windows);
    let rollups = Arc::new(UsageRollups::open(&log)?);
    let security_log = Arc::new(SecurityLog::open(&log)?);
    Ok(Restored {
        log,
        state,
        checkpoint,
        snapshots,
        rollups,
        security_log,
    })
}

async fn ensure_demo_user(
    state: &State,
    writer: &Addr<Writer>,
    credentials: &Credentials,
    min_password_length: usize,
) -> Result<DemoUser, StartError> {
    const EMAIL: &str = "demo@snaptrack.dev";
    if state.email_taken(EMAIL) {
        return Ok(DemoUser {
            email: EMAIL.into(),
            password: None,
        });
    }
    // Random base62, as long as the policy asks and at least 20 characters.
    let len = min_password_length.max(20);
    let mut password = String::with_capacity(len);
    while password.len() < len {
        password.push_str(&crate::domain::ApiToken::generate().expose()[5..45]);
    }
    password.truncate(len);
    let parsed = Password::parse(&password, min_password_length, &[EMAIL])
        .map_err(|e| StartError::Other(format!("demo password: {e}")))?;
    let credential_id = account::store_password(credentials, parsed)
        .await
        .map_err(|e| StartError::Other(e.to_string()))?;
    let cmd = Command::RegisterUser {
        email: Email::parse(EMAIL).map_err(|e| StartError::Other(e.into()))?,
        name: UserName::parse("Demo User").map_err(|e| StartError::Other(e.into()))?,
        credential_id,
        tier: Tier::Pro,
    };
    match writer.send(Execute(cmd)).await {
        Ok(Ok(_)) => Ok(DemoUser {
            email: EMAIL.into(),
            password: Some(password),
        }),
        Ok(Err(crate::actors::WriteError::Rejected(CommandError::EmailTaken))) => Ok(DemoUser {
            email: EMAIL.into(),
            password: None,
        }),
        Ok(Err(e)) => Err(StartError::Other(e.to_string())),
        Err(e) => Err(StartError::Other(e.to_string())),
    }
}

impl Application {
    /// Opens and replays the log, starts the actors, binds `settings.listen`. Must run inside
    /// an actix system (the binary's `#[actix_web::main]`, or `#[actix_web::test]`).
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let listener = TcpListener::bind(&settings.listen).map_err(|e| StartError::Listen {
            addr: settings.listen.clone(),
            reason: e.to_string(),
        })?;
        Self::build_with_listener(settings, listener).await
    }

    /// As [`Application::build`], on a listener the caller bound (tests bind port 0).
    pub async fn build_with_listener(
        settings: Settings,
        listener: TcpListener,
    ) -> Result<Self, StartError> {
        settings
            .check_serve()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let tls = load_tls(&settings)?;
        // Before the log is touched: a node without its key must not start at all.
        let keys = match &settings.nats {
            Some(url) => Some((url.clone(), load_keys(&settings)?)),
            None => None,
        };
        let log = open_log(&settings)?;
        // Before anything is read: old events and snapshots hand their hashes to it.
        let credentials = Credentials::open(&log)?;
        // Cluster mode: connect first, so that an empty data directory can be seeded from
        // the snapshot the nodes share.
        let connected = match keys {
            None => None,
            Some((url, (signer, verifier))) => {
                let bus = JetStreamBus::connect(
                    &url,
                    &settings.node_id,
                    settings.cluster.replicas,
                    &settings.nats_auth,
                    Arc::new(signer),
                )
                .await
                .map_err(StartError::Nats)?;
                credentials
                    .connect(&bus)
                    .await
                    .map_err(|e| StartError::Nats(e.to_string()))?;
                let store = SnapshotStore::new(&settings.data, settings.history.snapshots_kept);
                let wait = settings
                    .cluster
                    .catchup_timeout
                    .max(std::time::Duration::from_secs(5));
                crate::cluster::shared::seed(&bus, &verifier, &log, &store, wait).await;
                Some((bus, verifier))
            }
        };
        let Restored {
            log,
            state,
            checkpoint,
            snapshots,
            rollups,
            security_log,
        } = restore(&settings, log)?;
        // What old events and snapshots handed over is durable before any new snapshot (which
        // no longer holds it) can be written.
        credentials
            .flush()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let (writer, cluster, tasks) = match connected {
            Some((bus, verifier)) => {
                let cluster = Arc::new(Cluster::new(
                    bus,
                    settings.node_id.clone(),
                    settings.cluster,
                    state.applied_seq(),
                    verifier,
                    settings.trust.unsigned_through,
                ));
                let mut tasks = replicator::start(cluster.clone(), state.clone(), log.clone());
                tasks.push(tokio::spawn(crate::cluster::shared::share_periodically(
                    cluster.clone(),
                    snapshots.clone(),
                    credentials.clone(),
                )));
                tasks.push(tokio::spawn(crate::cluster::retention::purge_periodically(
                    cluster.clone(),
                    log.clone(),
                )));
                // Aborted with the other tasks, after the last usage flush at a stop.
                let (rounds, round_task) = Rounds::start(state.clone(), cluster.clone());
                tasks.push(round_task);
                tasks.push(tokio::spawn(crate::cluster::forward::serve(
                    cluster.clone(),
                    rounds.clone(),
                )));
                let writer = Writer::clustered(
                    state.clone(),
                    log.clone(),
                    cluster.node_id.clone(),
                    rounds.clone(),
                )
                .start();
                (writer, Some((cluster, rounds)), tasks)
            }
            None => (
                Writer::new(state.clone(), log.clone(), settings.node_id.clone()).start(),
                None,
                vec![],
            ),
        };
        let (cluster, rounds) = match cluster {
            Some((c, r)) => (Some(c), Some(r)),
            None => (None, None),
        };
        let mut tasks = tasks;
        let quiesce = Arc::new(Quiesce::default());
        tasks.push(tokio::spawn(crate::history::snapshot_periodically(
            state.clone(),
            log.clone(),
            snapshots.clone(),
            settings.history.snapshot_every_events,
            settings.history.snapshot_every,
            quiesce.clone(),
        )));
        tasks.push(tokio::spawn(crate::history::roll_up_periodically(
            rollups.clone(),
            log.clone(),
            snapshots.clone(),
            settings.history.usage_retention_days,
            std::time::Duration::from_secs(2),
            quiesce.clone(),
        )));
        tasks.push(tokio::spawn(crate::history::follow_security_log(
            security_log.clone(),
            log.clone(),
            state.clone(),
            std::time::Duration::from_secs(2),
            quiesce.clone(),
        )));
        UsageFlusher::new(
            writer.clone(),
            state.clone(),
            checkpoint.clone(),
            settings.usage_flush,
            quiesce.clone(),
        )
        .start();
        let demo = if settings.demo {
            Some(
                ensure_demo_user(&state, &writer, &credentials, settings.min_password_length)
                    .await?,
            )
        } else {
            None
        };
        let dummy_hash = web::block(|| {
            let random = crate::domain::ApiToken::generate();
            Password::parse(random.expose(), 0, &[]).map(|p| p.hash())
        })
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|r| r.ok())
        .ok_or_else(|| StartError::Other("cannot compute the dummy password hash".into()))?;
        let settings = Arc::new(settings);
        let app_state = web::Data::new(AppState {
            state: state.clone(),
            writer: writer.clone(),
            log: log.clone(),
            snapshots: snapshots.clone(),
            checkpoint: checkpoint.clone(),
            rollups: rollups.clone(),
            security_log: security_log.clone(),
            credentials: credentials.clone(),
            cluster: cluster.clone(),
            rounds,
            tiers: settings.tier_table(),
            settings: settings.clone(),
            metrics: Arc::new(Metrics::new(ROUTES)),
            auth_throttle: FailureThrottle::new(
                settings.throttle.auth_failures,
                settings.throttle.auth_window_secs,
            ),
            login_throttle: FailureThrottle::new(
                settings.throttle.login_failures,
                settings.throttle.login_window_secs,
            ),
            account_login_throttle: FailureThrottle::new(
                settings.throttle.account_login_failures,
                settings.throttle.account_login_window_secs,
            ),
            token_changes: FailureThrottle::new(
                settings.throttle.token_changes,
                settings.throttle.token_changes_window_secs,
            ),
            ready: AtomicBool::new(true),
            dummy_hash,
            password_checks: tokio::sync::Semaphore::new(4),
        });
        let max_body = settings.max_body_bytes;
        let app_state_for_ops = app_state.clone();
        let factory = move || {
            let metrics = app_state.metrics.clone();
            App::new()
                .app_data(app_state.clone())
                .app_data(
                    web::JsonConfig::default()
                        .limit(max_body)
                        .error_handler(|e, _| json_error(e).into()),
                )
                .app_data(web::PayloadConfig::default().limit(max_body))
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|_, _| ApiError::new(Code::NotFound).into()),
                )
                .wrap_fn(move |req, srv| {
                    let metrics = metrics.clone();
                    let fut = srv.call(req);
                    async move {
                        // Every error is JSON, those the framework raises itself included;
                        // and no response is sniffed into another type.
                        let mut res = error::json_body_for_errors(fut.await?);
                        res.headers_mut().insert(
                            actix_web::http::header::X_CONTENT_TYPE_OPTIONS,
                            actix_web::http::header::HeaderValue::from_static("nosniff"),
                        );
                        metrics.count_request(res.request().match_name(), res.status().as_u16());
                        Ok(res)
                    }
                })
                .configure(routes)
                .default_service(web::to(|| async {
                    ApiError::new(Code::NotFound).into_response()
                }))
        };
        let addr = listener.local_addr().map_err(|e| StartError::Listen {
            addr: settings.listen.clone(),
            reason: e.to_string(),
        })?;
        let listen_err = |e: std::io::Error| StartError::Listen {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        // Signals are ours to handle (see `stop_on_signals`), so that they are registered
        // before `serve` announces that it listens.
        let mut server = HttpServer::new(factory)
            .shutdown_timeout(10)
            .disable_signals();
        if let Some(n) = settings.workers {
            server = server.workers(n);
        }
        let ops = match &settings.ops_listen {
            Some(ops_addr) => {
                let (server, bound) = ops_server(ops_addr, app_state_for_ops)?;
                // A server runs while it is polled: this one beside the main one.
                Some((server.handle(), bound, actix_web::rt::spawn(server)))
            }
            None => None,
        };
        let is_tls = tls.is_some();
        let server = match tls {
            Some(cfg) => server.listen_rustls_0_23(listener, cfg),
            None => server.listen(listener),
        }
        .map_err(listen_err)?
        .run();
        Ok(Application {
            server,
            addr,
            ops,
            tls: is_tls,
            writer,
            log,
            state,
            checkpoint,
            snapshots,
            credentials,
            quiesce,
            cluster,
            tasks,
            demo,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://…` of the `[ops] listen` server, when there is one.
    pub fn ops_url(&self) -> Option<String> {
        self.ops
            .as_ref()
            .map(|(_, addr, _)| format!("http://{addr}"))
    }

    /// `http://…` or `https://…` with the bound address.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A handle to stop the server (tests; the binary stops on SIGTERM/SIGINT).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Installs SIGTERM and SIGINT handlers now (synchronously) that stop the server
    /// gracefully: stop accepting, finish in-flight requests, then `run_until_stopped`
    /// flushes and returns.
    pub fn stop_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let handle = self.server.handle();
        let ops = self.ops.as_ref().map(|(handle, _, _)| handle.clone());
        actix_web::rt::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            handle.stop(true).await;
            if let Some(ops) = ops {
                ops.stop(true).await;
            }
        });
        Ok(())
    }

    /// Serves until stopped, then flushes usage and the log. In cluster mode the node also
    /// tells the others it is leaving, so revokes stop waiting for it.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await?;
        if let Some((handle, _, task)) = self.ops {
            handle.stop(true).await;
            if let Ok(result) = task.await {
                result?;
            }
        }
        // No background round starts from here, and the one running ends first: the process
        // must not exit in the middle of one.
        self.quiesce.close().await;
        match flush_and_checkpoint(&self.writer, &self.state, &self.checkpoint).await {
            Ok(n) => tracing::info!(events = n, "usage recorded and checkpointed at shutdown"),
            Err(e) => tracing::error!(error = %e, "usage round at shutdown failed"),
        }
        // Stop the replicator and the announcer first, so that no tick announces this node
        // as live again after it said it leaves.
        for task in &self.tasks {
            task.abort();
        }
        if let Some(c) = &self.cluster {
            c.announce(true).await;
            if let Err(e) = c.bus.client().flush().await {
                tracing::debug!(error = %e, "NATS flush at shutdown failed");
            }
        }
        if let Err(e) = self.log.wait_durable(self.log.last_seq()).await {
            tracing::error!(error = %e, "final log flush failed");
        }
        if let Err(e) = self.log.save_token_count(self.state.tokens.len()) {
            tracing::warn!(error = %e, "could not save the token count for the next start");
        }
        match crate::history::take(&self.state, &self.log, &self.snapshots).await {
            Ok(Some(seq)) => tracing::info!(seq, "snapshot taken at shutdown"),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "snapshot at shutdown failed"),
        }
        if let Some(c) = &self.cluster {
            let mut shared = 0;
            let share = crate::cluster::shared::share_newest(
                c,
                &self.snapshots,
                &self.credentials,
                &mut shared,
            );
            match tokio::time::timeout(std::time::Duration::from_secs(5), share).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "snapshot not shared at shutdown"),
                Err(_) => tracing::warn!("snapshot not shared at shutdown: NATS too slow"),
            }
        }
        Ok(())
    }
}
