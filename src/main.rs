//! The `snaptrack-auth` binary: parses arguments and calls the library. Every failure is one
//! line on stderr and exit code 2 (1 for `test-token`'s server answers).

use clap::{Args, Parser, Subcommand};
use snaptrack_auth::config::{Overrides, Settings};
use snaptrack_auth::http::Application;
use snaptrack_auth::replay;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: replay and the projections allocate and free many small objects, and glibc's
/// malloc spent a fifth of replay time consolidating free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "snaptrack-auth",
    version,
    about = "API-token authentication for the SnapTrack API"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API, the dashboard and the admin API.
    Serve(ServeArgs),
    /// Print the event log (the audit log) as JSON lines.
    Replay(ReplayArgs),
    /// Check SNAPTRACK_API_TOKEN against SNAPTRACK_API_URL's GET /test.
    TestToken,
    /// Write a new Ed25519 signing key for a cluster node and print its public key.
    Keygen(KeygenArgs),
}

#[derive(Args)]
struct KeygenArgs {
    /// Where to write the private key (created with mode 0600; never overwritten).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Config file (default ./config.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (the event log).
    #[arg(long)]
    data: Option<PathBuf>,
    /// NATS URL: run in cluster mode.
    #[arg(long)]
    nats: Option<String>,
    /// This node's id.
    #[arg(long)]
    node_id: Option<String>,
    /// Create a demo user (pro plan) once and print its credentials.
    #[arg(long)]
    demo: bool,
}

#[derive(Args)]
struct ReplayArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data: Option<PathBuf>,
    /// Only events about this user id.
    #[arg(long)]
    user: Option<u64>,
    /// Only events of this type, e.g. token_revoked.
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only events at or after this RFC 3339 time.
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Only events at or before this RFC 3339 time.
    #[arg(long)]
    until: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Print the tokens valid at this RFC 3339 time instead of events.
    #[arg(long)]
    at: Option<chrono::DateTime<chrono::FixedOffset>>,
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("snaptrack-auth: {msg}");
    ExitCode::from(2)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The NATS client traces every protocol operation, its CONNECT with the credentials
    // among them: never below debug, whatever RUST_LOG asks.
    let filter = match "async_nats::connection=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(a: ServeArgs) -> ExitCode {
    let settings = match Settings::load(&Overrides {
        config: a.config,
        listen: a.listen,
        data: a.data,
        nats: a.nats,
        node_id: a.node_id,
        demo: a.demo,
    }) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    init_logging();
    // Kept alive until the exit below, so its blocking threads are never torn down.
    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        let app = Application::build(settings)
            .await
            .map_err(|e| e.to_string())?;
        app.stop_on_signals().map_err(|e| e.to_string())?;
        if let Some(demo) = &app.demo {
            match &demo.password {
                Some(p) => println!("demo user created: email {} password {p}", demo.email),
                None => println!("demo user exists: email {}", demo.email),
            }
        }
        if let Some(ops) = app.ops_url() {
            println!("metrics on {ops}");
        }
        println!("listening on {}", app.url());
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        // Everything is flushed: exit now, without tearing down the runtime's blocking
        // threads. Their thread-local destructors run sled's deferred garbage (crossbeam-epoch),
        // which can panic once the database is gone and abort the process at exit.
        Ok(()) => {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            std::process::exit(0)
        }
        Err(e) => fail(e),
    }
}

fn replay_cmd(a: ReplayArgs) -> ExitCode {
    let settings = match Settings::load(&Overrides {
        config: a.config,
        data: a.data,
        ..Default::default()
    }) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let utc = |t: Option<chrono::DateTime<chrono::FixedOffset>>| t.map(|t| t.to_utc());
    let filter = replay::Filter {
        user: a.user,
        kind: a.kind,
        since: utc(a.since),
        until: utc(a.until),
        at: utc(a.at),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match replay::run(&settings.data, &filter, &mut out) {
        Ok(()) => match std::io::Write::flush(&mut out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Err(e) => fail(e),
    }
}

fn test_token() -> ExitCode {
    let token = match std::env::var("SNAPTRACK_API_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => return fail("SNAPTRACK_API_TOKEN is not set"),
    };
    let url = match std::env::var("SNAPTRACK_API_URL") {
        Ok(u) if !u.is_empty() => u,
        _ => return fail("SNAPTRACK_API_URL is not set"),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    match runtime.block_on(snaptrack_auth::client::test_token(&url, &token)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("snaptrack-auth: {e}");
            ExitCode::from(1)
        }
    }
}

fn keygen(a: KeygenArgs) -> ExitCode {
    match snaptrack_auth::signing::Signer::write_new(&a.out) {
        Ok(signer) => {
            println!("{}", signer.public_key());
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Cmd::Serve(a) => serve(a),
        Cmd::Replay(a) => replay_cmd(a),
        Cmd::TestToken => test_token(),
        Cmd::Keygen(a) => keygen(a),
    }
}
