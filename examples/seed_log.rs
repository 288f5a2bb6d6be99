//! Writes a data directory holding `N` users' worth of `token_issued` events (1,000,000 tokens
//! by default), through the same rules and log as the service, for cold-start and memory
//! measurements (`bench/coldstart`).
//!
//! `cargo run --release --example seed_log -- DATA_DIR [TOKENS]`

use snaptrack_auth::actors::Writer;
use snaptrack_auth::bus::SledLog;
use snaptrack_auth::command::Command;
use snaptrack_auth::domain::{ApiToken, Email, Tier, TokenId, TokenName, UserId, UserName};
use snaptrack_auth::state::State;
use std::sync::Arc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: seed_log DATA_DIR [TOKENS]")?;
    let tokens: u64 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let log = Arc::new(SledLog::open(std::path::Path::new(&dir))?);
    let state = Arc::new(State::new("seed"));
    log.replay_into(&state)?;
    let writer = Writer::new(state.clone(), log.clone(), "seed".into());
    // 100 tokens per user: the most a user may hold.
    let users = tokens.div_ceil(100);
    let now = chrono::Utc::now();
    for u in 0..users {
        writer.execute_now(
            Command::RegisterUser {
                email: Email::parse(&format!("user{u}@example.com"))?,
                name: UserName::parse("Seed User")?,
                credential_id: "c0ffee".into(),
                tier: Tier::Business,
            },
            now,
        )?;
        let user_id = UserId(state.next_user_id().0 - 1);
        for _ in 0..100.min(tokens - u * 100) {
            let t = ApiToken::generate();
            writer.execute_now(
                Command::IssueToken {
                    user_id,
                    token_id: TokenId::new(),
                    name: TokenName::parse("seeded")?,
                    hash: t.hash(),
                    hint: t.hint(),
                    expires_at: None,
                    scopes: None,
                    allowed_ips: None,
                },
                now,
            )?;
        }
        if u % 100 == 99 {
            log.flush_blocking()?;
        }
    }
    log.flush_blocking()?;
    // As the service does when it stops cleanly.
    log.save_token_count(state.tokens.len())?;
    println!("{} events in {dir}", log.last_seq());
    Ok(())
}
