//! Criterion benchmarks of the core: the verify path, replay, and durable appends.
//!
//! `cargo bench --bench core` (figures in the README). Replay builds a log of 1M token events
//! once (a few seconds) before measuring.

use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use chrono::Utc;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use snaptrack_auth::bus::SledLog;
use snaptrack_auth::domain::token::hash_if_well_formed;
use snaptrack_auth::domain::{ApiToken, Tier, TokenHash, TokenId, UserId};
use snaptrack_auth::event::{
    Envelope, Event, RevokeReason, TokenIssued, TokenRevoked, UserRegistered,
};
use snaptrack_auth::http::auth::bearer_token;
use snaptrack_auth::state::{Ask, State, TierTable};
use std::sync::Arc;
use std::time::Duration;

/// The same allocator as the binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BIG: TierTable = TierTable([
    None,
    Some((u32::MAX, 60)),
    Some((u32::MAX, 60)),
    Some((u32::MAX, 60)),
]);

fn user_event() -> Event {
    Event::UserRegistered(UserRegistered {
        user_id: UserId(1),
        email: "bench@example.com".into(),
        name: "Bench".into(),
        credential_id: "c0ffee".into(),
        tier: Tier::Business,
    })
}

fn issued(hash: TokenHash, user: u64) -> Event {
    Event::TokenIssued(TokenIssued {
        token_id: TokenId::new(),
        user_id: UserId(user),
        name: "bench token".into(),
        token_sha256: hash,
        hint: "snpt_…abcd".into(),
        expires_at: None,
        scopes: None,
        allowed_ips: None,
    })
}

/// A token with three scopes of a catalogue and a four-entry allowlist (IPv4 and IPv6).
fn issued_restricted(hash: TokenHash, user: u64) -> Event {
    let mut e = issued(hash, user);
    if let Event::TokenIssued(t) = &mut e {
        t.scopes = Some(vec![
            "websites:read".into(),
            "websites:write".into(),
            "reports:read".into(),
        ]);
        t.allowed_ips = Some(vec![
            "10.0.0.0/8".into(),
            "192.168.0.0/16".into(),
            "2001:db8::/32".into(),
            "203.0.113.7/32".into(),
        ]);
    }
    e
}

fn envelope(seq: u64, event: Event) -> Envelope {
    Envelope {
        event_id: uuid::Uuid::new_v4(),
        seq,
        occurred_at: Utc::now(),
        node_id: "n1".into(),
        event,
    }
}

/// A state with one business user and `n` tokens; returns it and one of the tokens.
fn state_with_tokens(n: u64) -> (State, ApiToken) {
    state_with(n, issued)
}

/// As [`state_with_tokens`], the returned token made by `first`.
fn state_with(n: u64, first: fn(TokenHash, u64) -> Event) -> (State, ApiToken) {
    let state = State::new("n1");
    state.apply(&envelope(1, user_event())).unwrap();
    let token = ApiToken::generate();
    state.apply(&envelope(2, first(token.hash(), 1))).unwrap();
    for i in 0..n.saturating_sub(1) {
        let mut raw = [0u8; 32];
        raw[..8].copy_from_slice(&i.to_le_bytes());
        let hash = TokenHash::of(&format!("snpt_bench_{i}"));
        state.apply(&envelope(3 + i, issued(hash, 1))).unwrap();
    }
    (state, token)
}

/// The check of a token with scopes and an allowlist among a million tokens, asked for the
/// scope it carries from the last address of its list, beside an unrestricted token's
/// check in the same state.
fn restricted_at_a_million(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    now: i64,
) {
    use snaptrack_auth::state::RequiredScope;
    let (state, token) = state_with(1_000_000, issued_restricted);
    let plain = ApiToken::generate();
    let seq = state.applied_seq() + 1;
    state
        .apply(&envelope(seq, issued(plain.hash(), 1)))
        .unwrap();
    let ask = Ask {
        scope: Some(RequiredScope {
            name: "reports:read",
            in_catalogue: true,
        }),
        ip: Some("203.0.113.7".parse().unwrap()),
    };
    g.bench_function("full_check_1m_tokens_scope_and_allowlist", |b| {
        b.iter(|| {
            state
                .verify(black_box(token.expose()), now, &BIG, black_box(ask))
                .unwrap()
        })
    });
    g.bench_function("full_check_1m_tokens_unrestricted", |b| {
        b.iter(|| {
            state
                .verify(black_box(plain.expose()), now, &BIG, black_box(ask))
                .unwrap()
        })
    });
}

fn verify(c: &mut Criterion) {
    let (state, token) = state_with_tokens(100_000);
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {}", token.expose())).unwrap(),
    );
    let mut g = c.benchmark_group("verify");
    g.bench_function("header_to_record", |b| {
        b.iter(|| {
            let t = bearer_token(black_box(&headers)).unwrap();
            let hash = hash_if_well_formed(t).unwrap();
            let tokens = state.tokens.pin();
            tokens.get(&hash).unwrap().token_id
        })
    });
    let now = Utc::now().timestamp();
    g.bench_function("full_check_with_rate_limit", |b| {
        b.iter(|| {
            state
                .verify(
                    black_box(bearer_token(&headers).unwrap()),
                    now,
                    &BIG,
                    Ask::default(),
                )
                .unwrap()
        })
    });
    let live = state.tokens.pin().get(&token.hash()).unwrap().clone();
    restricted_at_a_million(&mut g, now);
    g.bench_function("rate_limit_check_alone", |b| {
        b.iter(|| {
            state
                .rate_limits
                .try_admit(black_box(live.user_id), live.token_id, now, u32::MAX, 60)
                .unwrap()
        })
    });
    // Cluster mode's claiming buckets, measured inside a granted claim (the steady state):
    // claims ramp up (a sixteenth of the share, then doubling) until the last covers the
    // measured iterations.
    g.bench_function("rate_limit_check_alone_claiming", |b| {
        b.iter_custom(|iters| {
            let rl = snaptrack_auth::state::RateLimits::default();
            rl.use_claims();
            let admit = || rl.try_admit(live.user_id, live.token_id, now, u32::MAX, 60);
            loop {
                let _ = admit();
                let claims = rl.drain_claims(now * 1000);
                for c in &claims {
                    rl.apply_claim(c, true);
                }
                if claims
                    .first()
                    .is_some_and(|e| u64::from(e.requests) >= iters)
                {
                    break;
                }
                while admit().is_ok() {}
            }
            let started = std::time::Instant::now();
            for _ in 0..iters {
                black_box(admit().unwrap());
            }
            started.elapsed()
        })
    });
    g.bench_function("garbage_rejected_by_checksum", |b| {
        let garbage = format!("{}zzzzzz", &token.expose()[..45]);
        b.iter(|| hash_if_well_formed(black_box(&garbage)).unwrap_err())
    });
    g.finish();
}

const REPLAY_EVENTS: u64 = 1_000_000;

fn replay(c: &mut Criterion) {
    // One log of 1M events (a user and its tokens), built once, written as the service writes
    // it: one event per append, a group commit every 100 (a busy node's rounds), and the
    // log's own merging of small records.
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let now = Utc::now();
    log.append(vec![user_event()], "n1", now).unwrap();
    for i in 0..REPLAY_EVENTS - 1 {
        let hash = TokenHash::of(&format!("snpt_bench_{i}"));
        log.append(vec![issued(hash, 1)], "n1", now).unwrap();
        if i % 100 == 99 {
            log.flush_blocking().unwrap();
        }
    }
    log.flush_blocking().unwrap();
    // As the service does when it stops cleanly: the next replay sizes the token maps once.
    log.save_token_count(REPLAY_EVENTS as usize - 1).unwrap();
    let envelopes: Vec<Envelope> = log.iter_from(1).map(|e| e.unwrap()).collect();
    let json: Vec<Vec<u8>> = envelopes.iter().map(Envelope::to_json).collect();
    drop(envelopes);

    let mut g = c.benchmark_group("replay");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(REPLAY_EVENTS));
    g.bench_function("1M_events_from_sled_into_ready_index", |b| {
        b.iter_batched(
            || State::new("n1"),
            |state| {
                let n = log.replay_into(&state).unwrap();
                assert_eq!(n, REPLAY_EVENTS);
                state
            },
            BatchSize::PerIteration,
        )
    });
    // After a crash there is no saved count, and the maps grow as they fill.
    log.save_token_count(0).unwrap();
    g.bench_function("1M_events_from_sled_without_size_hint", |b| {
        b.iter_batched(
            || State::new("n1"),
            |state| {
                let n = log.replay_into(&state).unwrap();
                assert_eq!(n, REPLAY_EVENTS);
                state
            },
            BatchSize::PerIteration,
        )
    });
    // What a cluster node pays per event of the stream: JSON, one buffer per NATS message,
    // into maps sized beforehand (as replay sizes them from the saved count).
    let sized = || {
        let state = State::new("n1");
        state.reserve_tokens(REPLAY_EVENTS as usize);
        state
    };
    g.bench_function("1M_events_json_decode_and_apply_from_memory", |b| {
        b.iter_batched(
            sized,
            |state| {
                for (i, bytes) in json.iter().enumerate() {
                    let env = Envelope::decode(bytes, i as u64 + 1).unwrap();
                    state.apply_owned(env).unwrap();
                }
                state
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn append(c: &mut Criterion) {
    const TASKS: u64 = 64;
    const PER_TASK: u64 = 50;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SledLog::open(dir.path()).unwrap());
    let mut g = c.benchmark_group("append");
    g.sample_size(20);
    g.throughput(Throughput::Elements(TASKS * PER_TASK));
    g.bench_function("durable_64_concurrent_appenders", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut tasks = Vec::new();
                for t in 0..TASKS {
                    let log = log.clone();
                    tasks.push(tokio::spawn(async move {
                        for _ in 0..PER_TASK {
                            let e = Event::TokenRevoked(TokenRevoked {
                                token_id: TokenId::new(),
                                user_id: UserId(t + 1),
                                reason: RevokeReason::Revoked,
                                by: None,
                                url: None,
                                source: None,
                            });
                            let envs = log.append(vec![e], "n1", Utc::now()).unwrap();
                            log.wait_durable(envs[0].seq).await.unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("durable_one_appender_at_a_time", |b| {
        b.iter(|| {
            rt.block_on(async {
                let e = Event::TokenRevoked(TokenRevoked {
                    token_id: TokenId::new(),
                    user_id: UserId(1),
                    reason: RevokeReason::Revoked,
                    by: None,
                    url: None,
                    source: None,
                });
                let envs = log.append(vec![e], "n1", Utc::now()).unwrap();
                log.wait_durable(envs[0].seq).await.unwrap();
            })
        })
    });
    g.finish();
}

/// Cluster mode's cost per message: the publishing node signs it, every node checks it.
fn signing(c: &mut Criterion) {
    use snaptrack_auth::signing::{Signer, Verifier};
    let signer = Signer::generate();
    let verifier = Verifier::new(&signer, &[Signer::generate().public_key().to_owned()]).unwrap();
    let (_, token) = state_with_tokens(1);
    let env = envelope(42, issued(token.hash(), 1));
    let payload = env.to_json();
    let subject = snaptrack_auth::bus::subject(env.event.kind());
    let header = signer.sign(&subject, &payload);
    let mut g = c.benchmark_group("signing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign_one_event", |b| {
        b.iter(|| black_box(signer.sign(black_box(&subject), black_box(&payload))))
    });
    g.bench_function("verify_one_event", |b| {
        b.iter(|| {
            black_box(verifier.verify(black_box(&subject), black_box(&payload), Some(&header)))
                .unwrap()
        })
    });
    // The same bytes with ring's Ed25519, which `signing` used before: side by side, on the
    // machine at hand, since which is faster depends on the CPU.
    use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut signed = subject.as_bytes().to_vec();
    signed.push(b'\n');
    signed.extend_from_slice(&payload);
    let sig = pair.sign(&signed);
    let sig_hex = hex::encode(sig.as_ref());
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    g.bench_function("ring_sign_one_event", |b| {
        b.iter(|| black_box(pair.sign(black_box(&signed))))
    });
    g.bench_function("ring_verify_one_event", |b| {
        b.iter(|| {
            // (with the header's hex decoding, as `verify_one_event` does)
            let sig = hex::decode(black_box(&sig_hex)).unwrap();
            black_box(public.verify(black_box(&signed), &sig)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, verify, replay, append, signing);
criterion_main!(benches);
