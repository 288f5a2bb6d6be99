//! Writes the data directory a node would have after DAYS days in production, without waiting
//! DAYS days: every event with the time it would have had, the snapshots the node would have
//! taken, and the hourly usage roll-ups it would have rolled up. `bench/history` runs it and
//! then starts the real binary on the result.
//!
//! ```text
//! history_sim DATA_DIR [--days 30] [--users 100000] [--tokens 1000000] [--rate 1000]
//!             [--active 5000] [--churn 1000] [--logins 5000] [--spread 3] [--password P]
//! ```
//!
//! Day 0 registers USERS users and issues TOKENS tokens among them. Then, every simulated hour,
//! RATE requests a second (RATE × 3600 an hour) are spread over ACTIVE users (drawn at random
//! each hour) and up to 3 tokens each; each active user gets the one usage record a node
//! writes per user per hour, whatever the request rate. Every day also brings CHURN token
//! regenerations (a revoke and an issue) and LOGINS dashboard logins. SPREAD: how many of an
//! active user's tokens an hour's requests may go to. PASSWORD: every simulated user's password
//! (stored in the credential store, so the dashboard can be logged in to; without it no
//! password works).

use rand::{Rng, SeedableRng};
use snaptrack_auth::actors::Writer;
use snaptrack_auth::bus::SledLog;
use snaptrack_auth::command::Command;
use snaptrack_auth::config::History;
use snaptrack_auth::domain::{
    ApiToken, Email, Tier, TokenHash, TokenId, TokenName, UserId, UserName,
};
use snaptrack_auth::event::{TokenUsage, UsageRecorded};
use snaptrack_auth::history::{snapshot, SnapshotStore, UsageRollups};
use snaptrack_auth::state::State;
use std::sync::Arc;
use std::time::Instant;

struct Args {
    dir: String,
    days: u32,
    users: u64,
    tokens: u64,
    rate: u64,
    active: u64,
    churn: u64,
    logins: u64,
    spread: u64,
    password: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        dir: String::new(),
        days: 30,
        users: 100_000,
        tokens: 1_000_000,
        rate: 1000,
        active: 5000,
        churn: 1000,
        logins: 5000,
        spread: 3,
        password: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--days" => a.days = num("--days")? as u32,
            "--users" => a.users = num("--users")?,
            "--tokens" => a.tokens = num("--tokens")?,
            "--rate" => a.rate = num("--rate")?,
            "--active" => a.active = num("--active")?,
            "--churn" => a.churn = num("--churn")?,
            "--logins" => a.logins = num("--logins")?,
            "--spread" => a.spread = num("--spread")?.max(1),
            "--password" => a.password = Some(it.next().ok_or("--password needs a value")?),
            d if !d.starts_with("--") && a.dir.is_empty() => a.dir = d.to_owned(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.dir.is_empty() || a.users == 0 || a.tokens < a.users {
        return Err("usage: history_sim DATA_DIR [--days N] [--users N] [--tokens N] [--rate N] [--active N] [--churn N] [--logins N]".into());
    }
    Ok(a)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = parse()?;
    let started = Instant::now();
    let data = std::path::Path::new(&a.dir);
    let log = Arc::new(SledLog::open(data)?);
    log.set_meta("mode", "embedded")?;
    if let Some(p) = &a.password {
        let phc = snaptrack_auth::domain::Password::parse(p, 0, &[])
            .map_err(|e| e.to_string())?
            .hash()
            .map_err(|e| e.to_string())?;
        let creds = log.tree("credentials")?;
        creds.insert("c0ffee", phc.as_bytes())?;
        creds.flush()?;
    }
    let state = Arc::new(State::new("n1"));
    let writer = Writer::new(state.clone(), log.clone(), "n1".into());
    let history = History::default();
    let store = SnapshotStore::new(data, history.snapshots_kept);
    let rollups = UsageRollups::open(&log)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let t0 = chrono::Utc::now() - chrono::Duration::days(i64::from(a.days) + 1);
    let t0 = t0 - chrono::Duration::seconds(t0.timestamp().rem_euclid(3600));
    let mut last_snapshot = 0u64;
    // What the node's background work would have done by `at`: snapshots every
    // `snapshot_every_events`, roll-ups every few seconds.
    let mut settle =
        |state: &State, log: &SledLog, force: bool| -> Result<(), Box<dyn std::error::Error>> {
            log.flush_blocking()?;
            rollups.catch_up(log, log.durable_seq())?;
            if force || state.applied_seq() - last_snapshot >= history.snapshot_every_events {
                let image = state.image();
                let bytes = snapshot::encode(&image, chrono::Utc::now().timestamp())?;
                store.write(image.applied_seq, chrono::Utc::now().timestamp(), &bytes)?;
                last_snapshot = image.applied_seq;
            }
            Ok(())
        };

    // Day 0: the users and their tokens.
    let per_user = a.tokens.div_ceil(a.users);
    let mut tokens: Vec<Vec<TokenId>> = Vec::with_capacity(a.users as usize);
    let mut issued = 0;
    for u in 0..a.users {
        let at = t0 + chrono::Duration::milliseconds(u as i64);
        writer.execute_now(
            Command::RegisterUser {
                email: Email::parse(&format!("user{u}@example.com"))?,
                name: UserName::parse("Sim User")?,
                credential_id: "c0ffee".into(),
                tier: Tier::Business,
            },
            at,
        )?;
        let user_id = UserId(u + 1);
        let mut mine = Vec::new();
        for _ in 0..per_user.min(a.tokens - issued) {
            let id = TokenId::new();
            let t = ApiToken::generate();
            writer.execute_now(
                Command::IssueToken {
                    user_id,
                    token_id: id,
                    name: TokenName::parse("sim")?,
                    hash: t.hash(),
                    hint: t.hint(),
                    expires_at: None,
                    scopes: None,
                    allowed_ips: None,
                },
                at,
            )?;
            mine.push(id);
            issued += 1;
        }
        tokens.push(mine);
        if u % 1000 == 999 {
            settle(&state, &log, false)?;
        }
    }
    settle(&state, &log, false)?;
    eprintln!(
        "day 0: {} users, {issued} tokens, {} events ({:.0} s)",
        a.users,
        log.last_seq(),
        started.elapsed().as_secs_f64()
    );

    let hourly = a.rate * 3600;
    let mut usage_records = 0u64;
    let mut requests_total = 0u64;
    for day in 0..a.days {
        for hour in 0..24 {
            let start = t0 + chrono::Duration::hours(i64::from(day * 24 + hour + 24));
            // This hour's usage: one record per active user, written as the hour ends.
            let per_active = (hourly / a.active.max(1)).max(1);
            let mut batch = Vec::new();
            for _ in 0..a.active.min(a.users) {
                let u = rng.gen_range(0..a.users);
                let mine = &tokens[u as usize];
                if mine.is_empty() {
                    continue;
                }
                let used = rng.gen_range(1..=(a.spread as usize).min(mine.len()));
                let mut tallies = Vec::new();
                for k in 0..used {
                    let id = mine[rng.gen_range(0..mine.len())];
                    if tallies.iter().any(|t: &TokenUsage| t.token_id == id) {
                        continue;
                    }
                    let share =
                        per_active / used as u64 + u64::from(k == 0) * (per_active % used as u64);
                    tallies.push(TokenUsage {
                        token_id: id,
                        requests: share as u32,
                        last_used_at: start + chrono::Duration::seconds(rng.gen_range(0..3600)),
                        last_ip: Some("203.0.113.7".into()),
                    });
                }
                let requests: u32 = tallies.iter().map(|t| t.requests).sum();
                requests_total += u64::from(requests);
                batch.push(UsageRecorded {
                    user_id: UserId(u + 1),
                    window_start: start.timestamp(),
                    window_secs: 3600,
                    requests,
                    tokens: tallies,
                });
                if batch.len() == 1000 {
                    usage_records += batch.len() as u64;
                    writer.execute_now(
                        Command::RecordUsage(std::mem::take(&mut batch)),
                        start + chrono::Duration::hours(1),
                    )?;
                }
            }
            if !batch.is_empty() {
                usage_records += batch.len() as u64;
                writer.execute_now(
                    Command::RecordUsage(batch),
                    start + chrono::Duration::hours(1),
                )?;
            }
            // This hour's share of the day's security events.
            for _ in 0..a.churn / 24 {
                let u = rng.gen_range(0..a.users);
                let mine = &mut tokens[u as usize];
                if mine.is_empty() {
                    continue;
                }
                let k = rng.gen_range(0..mine.len());
                let (old, new) = (mine[k], TokenId::new());
                let t = ApiToken::generate();
                writer.execute_now(
                    Command::RegenerateToken {
                        old,
                        owner: None,
                        token_id: new,
                        hash: t.hash(),
                        hint: t.hint(),
                        grace: None,
                    },
                    start + chrono::Duration::minutes(30),
                )?;
                mine[k] = new;
            }
            for _ in 0..a.logins / 24 {
                let u = rng.gen_range(0..a.users);
                let at = start + chrono::Duration::minutes(45);
                writer.execute_now(
                    Command::RecordLogin {
                        user_id: UserId(u + 1),
                        session: TokenHash::of(ApiToken::generate().expose()),
                        expires_at: at + chrono::Duration::hours(12),
                        client_ip: Some("203.0.113.7".into()),
                    },
                    at,
                )?;
            }
            settle(&state, &log, false)?;
        }
        if day % 5 == 4 || day + 1 == a.days {
            eprintln!(
                "day {}: {} events, {usage_records} usage records ({:.0} s)",
                day + 1,
                log.last_seq(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    // The clean stop at the end: a snapshot, and the token count.
    settle(&state, &log, true)?;
    log.save_token_count(state.tokens.len())?;
    println!(
        "simulated {} days: {} events ({usage_records} usage records for {requests_total} requests, {:.4} per request), {} roll-up rows, snapshot at seq {last_snapshot}, in {:.0} s",
        a.days,
        log.last_seq(),
        usage_records as f64 / requests_total.max(1) as f64,
        rollups.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
