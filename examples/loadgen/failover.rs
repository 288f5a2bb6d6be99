//! `failover`: issue + revoke churn that outlives a fault (a NATS server killed under it by
//! `bench/cluster`), with the checks that say nothing acknowledged was lost.
//!
//! CONNS workers, each with its own user, spread over the nodes, issue tokens and revoke them
//! for SECS seconds. A failed call is counted and the worker goes on: a failed issue may have
//! happened (its token was never shown, so nothing depends on it); a failed revoke is sent
//! again until it has a definite answer (200, or 409 when an earlier attempt went through).
//! Every tenth acknowledged token is kept instead of revoked. Meanwhile one checker per node
//! sends `GET /test` with the token of a user whose plan allows LIMIT requests a window, RATE
//! times a second each.
//!
//! At the end, every kept token must be accepted and every revoked one refused on every
//! node, and the limited user must have been admitted at most LIMIT times in all; the
//! process exits 1 otherwise. It prints throughput, failures and when they happened, and
//! acknowledged commands per second, so the gap the fault left shows.

use crate::{check, create_user_on, issue, print_latency, send_revoke, Args};
use reqwest::{Client, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one churning worker saw.
#[derive(Default)]
struct Worker {
    issues: Vec<Duration>,
    revokes: Vec<Duration>,
    /// Acknowledged issues, kept: each must be accepted everywhere at the end.
    kept: Vec<String>,
    /// Acknowledged revokes: each token must be refused everywhere at the end.
    revoked: Vec<String>,
    /// Seconds since the start of each acknowledged command.
    acked_at: Vec<f64>,
    /// Seconds since the start of each failed call, and what it was.
    failed: Vec<(f64, String)>,
    /// A revoke of an acknowledged issue answered 404: the issue was lost.
    unknown_after_issue: usize,
}

/// What one node's checker saw of the limited user.
#[derive(Default)]
struct Checker {
    admitted: u64,
    refused: u64,
    other: u64,
}

/// Waits until `url` says it is ready (caught up with the stream), for at most a minute.
async fn ready(client: &Client, url: &str) -> Result<(), String> {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        let r = client.get(format!("{url}/readyz")).send().await;
        if r.is_ok_and(|r| r.status() == StatusCode::OK) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{url} not ready a minute after the load"))
}

/// The answer to `GET /test` with `token` once it is 200 or 401 (asked again for up to 30 s
/// while it is anything else), or None.
async fn settled(client: &Client, url: &str, token: &str) -> Option<StatusCode> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = check(client, url, token).await {
            return Some(s);
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(BACKOFF).await;
    }
}

/// How long a worker waits after a failed call before the next one.
const BACKOFF: Duration = Duration::from_millis(20);
/// How long after SECS a revoke of an acknowledged issue may still be retried.
const GRACE: Duration = Duration::from_secs(30);

async fn work(
    client: Client,
    url: String,
    admin: String,
    user: u64,
    started: Instant,
    deadline: Instant,
) -> Worker {
    let mut w = Worker::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        let (token, id) = match issue(&client, &url, &admin, user).await {
            Ok(x) => x,
            Err(e) => {
                w.failed
                    .push((started.elapsed().as_secs_f64(), format!("issue: {e}")));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        w.issues.push(t.elapsed());
        w.acked_at.push(started.elapsed().as_secs_f64());
        n += 1;
        if n.is_multiple_of(10) {
            w.kept.push(token);
            continue;
        }
        let t = Instant::now();
        loop {
            match send_revoke(&client, &url, &admin, &id)
                .await
                .map(|r| r.status())
            {
                Ok(StatusCode::OK) | Ok(StatusCode::CONFLICT) => {
                    w.revokes.push(t.elapsed());
                    w.acked_at.push(started.elapsed().as_secs_f64());
                    w.revoked.push(token);
                    break;
                }
                Ok(StatusCode::NOT_FOUND) => {
                    w.unknown_after_issue += 1;
                    break;
                }
                Ok(s) => w
                    .failed
                    .push((started.elapsed().as_secs_f64(), format!("revoke: {s}"))),
                Err(e) => w
                    .failed
                    .push((started.elapsed().as_secs_f64(), format!("revoke: {e}"))),
            }
            if Instant::now() > deadline + GRACE {
                // Neither kept nor revoked: its fate is unknown, so it is not checked.
                break;
            }
            tokio::time::sleep(BACKOFF).await;
        }
    }
    w
}

async fn hammer(
    client: Client,
    url: String,
    token: String,
    rate: f64,
    stop: Arc<AtomicBool>,
) -> Checker {
    let mut c = Checker::default();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        match client
            .get(format!("{url}/test"))
            .bearer_auth(&token)
            .send()
            .await
            .map(|r| r.status())
        {
            Ok(StatusCode::OK) => c.admitted += 1,
            Ok(StatusCode::TOO_MANY_REQUESTS) => c.refused += 1,
            _ => c.other += 1,
        }
    }
    c
}

pub async fn failover(a: &Args) -> Result<(), String> {
    let client = Client::builder()
        .pool_max_idle_per_host(a.conns + a.urls.len())
        .build()
        .map_err(|e| e.to_string())?;
    let mut users = Vec::new();
    for w in 0..a.conns {
        let email = format!("failover-{}@load.test", uuid::Uuid::new_v4());
        users.push(
            create_user_on(
                &client,
                &a.urls[w % a.urls.len()],
                &a.admin,
                &email,
                "business",
            )
            .await?,
        );
    }
    let email = format!("limited-{}@load.test", uuid::Uuid::new_v4());
    let limited = create_user_on(&client, &a.urls[0], &a.admin, &email, "starter").await?;
    let (limited_token, _) = issue(&client, &a.urls[0], &a.admin, limited).await?;

    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.secs);
    let stop = Arc::new(AtomicBool::new(false));
    let checkers: Vec<_> = a
        .urls
        .iter()
        .map(|u| {
            tokio::spawn(hammer(
                client.clone(),
                u.clone(),
                limited_token.clone(),
                a.rate,
                stop.clone(),
            ))
        })
        .collect();
    let workers: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| {
            let url = a.urls[i % a.urls.len()].clone();
            tokio::spawn(work(
                client.clone(),
                url,
                a.admin.clone(),
                user,
                started,
                deadline,
            ))
        })
        .collect();
    let mut all = Worker::default();
    for w in workers {
        let w = w.await.map_err(|e| e.to_string())?;
        all.issues.extend(w.issues);
        all.revokes.extend(w.revokes);
        all.kept.extend(w.kept);
        all.revoked.extend(w.revoked);
        all.acked_at.extend(w.acked_at);
        all.failed.extend(w.failed);
        all.unknown_after_issue += w.unknown_after_issue;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut limit = Checker::default();
    for c in checkers {
        let c = c.await.map_err(|e| e.to_string())?;
        limit.admitted += c.admitted;
        limit.refused += c.refused;
        limit.other += c.other;
    }

    // Every acknowledged command, on every node, once each serves again: a node that has not
    // caught up answers 503 (it fails closed), so such answers are asked again for a while.
    for url in &a.urls {
        ready(&client, url).await?;
    }
    let (mut kept_refused, mut revoked_accepted, mut unanswered) = (0usize, 0usize, 0usize);
    for url in &a.urls {
        for (t, want) in all
            .kept
            .iter()
            .map(|t| (t, StatusCode::OK))
            .chain(all.revoked.iter().map(|t| (t, StatusCode::UNAUTHORIZED)))
        {
            match settled(&client, url, t).await {
                Some(s) if s == want => {}
                Some(StatusCode::OK) => revoked_accepted += 1,
                Some(_) => kept_refused += 1,
                None => unanswered += 1,
            }
        }
    }

    all.issues.sort();
    all.revokes.sort();
    println!("nodes                       {}", a.urls.len());
    println!("workers                     {}", a.conns);
    println!(
        "issues/s                    {:.0}",
        all.issues.len() as f64 / elapsed
    );
    println!(
        "revokes/s                   {:.0}",
        all.revokes.len() as f64 / elapsed
    );
    print_latency("issue p50 / p99", &all.issues);
    print_latency("revoke p50 / p99 (until acked)", &all.revokes);
    let secs = a.secs as usize + 1;
    let mut per_sec = vec![0u64; secs];
    for t in &all.acked_at {
        per_sec[(*t as usize).min(secs - 1)] += 1;
    }
    println!("acked commands per second   {per_sec:?}");
    all.failed.sort_by(|x, y| x.0.total_cmp(&y.0));
    let last = all.failed.last().map_or(0, |f| f.0 as usize);
    let mut failed_per_sec = vec![0u64; last + 1];
    let mut why = std::collections::BTreeMap::<String, u64>::new();
    for (t, e) in &all.failed {
        failed_per_sec[*t as usize] += 1;
        *why.entry(e.chars().take(120).collect()).or_default() += 1;
    }
    println!("failed calls per second     {failed_per_sec:?}");
    for (e, n) in &why {
        println!("  {n:>6} × {e}");
    }
    match (all.failed.first(), all.failed.last()) {
        (Some(first), Some(last)) => {
            println!(
                "failed calls                {} between {:.2} s and {:.2} s (first: {})",
                all.failed.len(),
                first.0,
                last.0,
                first.1
            );
        }
        _ => println!("failed calls                0"),
    }
    println!(
        "kept tokens checked         {} on each node",
        all.kept.len()
    );
    println!(
        "revoked tokens checked      {} on each node",
        all.revoked.len()
    );
    println!("kept tokens refused         {kept_refused}");
    println!("revoked tokens accepted     {revoked_accepted}");
    println!("issues lost (revoke 404)    {}", all.unknown_after_issue);
    println!("checks unanswered           {unanswered}");
    println!(
        "limited user                {} admitted of a limit of {}, {} refused (429), {} other",
        limit.admitted, a.limit, limit.refused, limit.other
    );
    let lost = kept_refused + revoked_accepted + all.unknown_after_issue + unanswered;
    if lost > 0 || limit.admitted > a.limit {
        return Err(format!(
            "{lost} acknowledged commands lost or unchecked; {} admitted of {}",
            limit.admitted, a.limit
        ));
    }
    Ok(())
}
