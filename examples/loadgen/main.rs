//! The load generator for the command benchmarks (`bench/cluster`, `bench/run`).
//!
//! ```text
//! loadgen propagation --admin TOKEN [--n 1000] URL...   # revocation propagation
//! loadgen churn --admin TOKEN [--secs 10] [--conns 16] URL...   # issue + revoke throughput
//! loadgen flood [--from 127.0.0.2] [--rate 10000] [--secs 10] [--conns 16] URL   # garbage
//! loadgen users --admin TOKEN [--n 300] [--conns 16] URL...   # N users, a token each
//! loadgen failover --admin TOKEN [--secs 10] [--conns 16] [--limit 3000] [--rate 200] URL...
//! ```
//!
//! `propagation`: for each of N tokens, issue it on one node, use it on every node, revoke it
//! on the next node, and ask every *other* node until each rejects it. Prints p50/p99 of the
//! revoke call and of "revoke sent until every other node rejects", and how many checks after
//! a revoke had returned still accepted the token (must be 0).
//!
//! `churn`: CONNS workers, each with its own user, spread over the nodes, issue a token and
//! revoke it, again and again, for SECS seconds. Prints issues/s, revokes/s and latencies.
//!
//! `flood`: CONNS connections from the address FROM send `GET /test` with garbage tokens (bad
//! checksums), RATE a second in all (0: as fast as they can), for SECS seconds, and print how many were sent per second
//! and how they were answered (401 until the per-address throttle turns them into 429s).
//!
//! `users`: creates N users with one token each, CONNS at a time spread over the nodes, and
//! prints the tokens, one per line (for `bench/cluster`'s many-users run with wrk).
//!
//! `failover`: churn that goes on through a fault and checks that nothing acknowledged was
//! lost, with a user on the starter tier (its limit is `--limit`) checked `--rate` times a
//! second on each node (see `failover.rs`).
//!
//! The users are created on the business tier; give it a large limit in the nodes' config.

mod failover;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

struct Args {
    mode: String,
    admin: String,
    n: usize,
    secs: u64,
    conns: usize,
    from: String,
    rate: f64,
    /// `failover`: the limited user's plan limit (what the nodes' config gives starter).
    limit: u64,
    urls: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mode = it
        .next()
        .ok_or("usage: loadgen propagation|churn --admin TOKEN URL...")?;
    let mut a = Args {
        mode,
        admin: String::new(),
        n: 1000,
        secs: 10,
        conns: 16,
        from: "127.0.0.2".into(),
        rate: 10_000.0,
        limit: 3000,
        urls: vec![],
    };
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--admin" => a.admin = value()?,
            "--n" => a.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--secs" => a.secs = value()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--conns" => a.conns = value()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--from" => a.from = value()?,
            "--rate" => a.rate = value()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--limit" => a.limit = value()?.parse().map_err(|e| format!("--limit: {e}"))?,
            url => a.urls.push(url.trim_end_matches('/').to_owned()),
        }
    }
    if a.urls.is_empty() || (a.admin.is_empty() && a.mode != "flood") {
        return Err("need --admin and at least one URL".into());
    }
    Ok(a)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Prints `label  p50 / p99 ms` of the latencies in `sorted`.
fn print_latency(label: &str, sorted: &[Duration]) {
    println!(
        "{label:<35} {:.3} / {:.3} ms",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99)
    );
}

async fn create_user(client: &Client, url: &str, admin: &str, email: &str) -> Result<u64, String> {
    create_user_on(client, url, admin, email, "business").await
}

async fn create_user_on(
    client: &Client,
    url: &str,
    admin: &str,
    email: &str,
    tier: &str,
) -> Result<u64, String> {
    let r = client
        .post(format!("{url}/admin/users"))
        .bearer_auth(admin)
        .json(&json!({"email": email, "name": "Load", "password": "load generator password 7f3k9q", "tier": tier}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    v["user"]["id"].as_u64().ok_or(format!("create user: {v}"))
}

async fn issue(
    client: &Client,
    url: &str,
    admin: &str,
    user: u64,
) -> Result<(String, String), String> {
    let r = client
        .post(format!("{url}/admin/users/{user}/tokens"))
        .bearer_auth(admin)
        .json(&json!({"name": "load"}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    match (v["token"].as_str(), v["token_id"].as_str()) {
        (Some(t), Some(id)) => Ok((t.to_owned(), id.to_owned())),
        _ => Err(format!("issue: {v}")),
    }
}

/// `DELETE /admin/tokens/{id}`: the answer, or why there was none.
async fn send_revoke(
    client: &Client,
    url: &str,
    admin: &str,
    id: &str,
) -> Result<reqwest::Response, String> {
    client
        .delete(format!("{url}/admin/tokens/{id}"))
        .bearer_auth(admin)
        .send()
        .await
        .map_err(|e| e.to_string())
}

async fn revoke(client: &Client, url: &str, admin: &str, id: &str) -> Result<Value, String> {
    let r = send_revoke(client, url, admin, id).await?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    if status != StatusCode::OK {
        return Err(format!("revoke: {status} {v}"));
    }
    Ok(v)
}

/// The status of `GET /test` with `token`, and the body when it is not 200 or 401.
async fn check(client: &Client, url: &str, token: &str) -> Result<StatusCode, String> {
    let r = client
        .get(format!("{url}/test"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    if status != StatusCode::OK && status != StatusCode::UNAUTHORIZED {
        let retry = r.headers().get("retry-after").cloned();
        let body = r.text().await.unwrap_or_default();
        return Err(format!("{url}: {status} (retry-after {retry:?}) {body}"));
    }
    Ok(status)
}

async fn propagation(a: &Args) -> Result<(), String> {
    let client = Client::new();
    let k = a.urls.len();
    let user = create_user(
        &client,
        &a.urls[0],
        &a.admin,
        &format!("prop-{}@load.test", uuid::Uuid::new_v4()),
    )
    .await?;
    let (mut calls, mut rejected_everywhere) = (Vec::new(), Vec::new());
    let (mut accepted_after_revoke, mut pending_reports) = (0, 0);
    for i in 0..a.n {
        let (token, id) = issue(&client, &a.urls[i % k], &a.admin, user).await?;
        for url in &a.urls {
            let s = check(&client, url, &token).await?;
            if s != StatusCode::OK {
                return Err(format!("token not valid on {url} right after issue: {s}"));
            }
        }
        let on = (i + 1) % k;
        let started = Instant::now();
        let v = revoke(&client, &a.urls[on], &a.admin, &id).await?;
        calls.push(started.elapsed());
        if v["revoked"]["pending"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
        {
            pending_reports += 1;
        }
        for (j, url) in a.urls.iter().enumerate() {
            if j == on {
                continue;
            }
            // The barrier promises the first answer is already a rejection.
            loop {
                match check(&client, url, &token).await? {
                    StatusCode::UNAUTHORIZED => break,
                    _ => accepted_after_revoke += 1,
                }
            }
        }
        rejected_everywhere.push(started.elapsed());
    }
    calls.sort();
    rejected_everywhere.sort();
    println!("revocations                 {}", a.n);
    println!("nodes                       {k}");
    print_latency("revoke call p50 / p99", &calls);
    print_latency("until all others reject p50 / p99", &rejected_everywhere);
    println!("accepted after revoke       {accepted_after_revoke}");
    println!("revokes with pending nodes  {pending_reports}");
    Ok(())
}

async fn churn(a: &Args) -> Result<(), String> {
    let client = Client::builder()
        .pool_max_idle_per_host(a.conns)
        .build()
        .map_err(|e| e.to_string())?;
    let mut users = Vec::new();
    for w in 0..a.conns {
        let url = &a.urls[w % a.urls.len()];
        users.push(
            create_user(
                &client,
                url,
                &a.admin,
                &format!("churn-{}@load.test", uuid::Uuid::new_v4()),
            )
            .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let started = Instant::now();
    let workers: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(w, user)| {
            let (client, admin) = (client.clone(), a.admin.clone());
            let url = a.urls[w % a.urls.len()].clone();
            tokio::spawn(async move {
                let (mut issues, mut revokes) = (Vec::new(), Vec::new());
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (_, id) = issue(&client, &url, &admin, user).await?;
                    issues.push(t.elapsed());
                    let t = Instant::now();
                    revoke(&client, &url, &admin, &id).await?;
                    revokes.push(t.elapsed());
                }
                Ok::<_, String>((issues, revokes))
            })
        })
        .collect();
    let (mut issues, mut revokes) = (Vec::new(), Vec::new());
    for w in workers {
        let (i, r) = w.await.map_err(|e| e.to_string())??;
        issues.extend(i);
        revokes.extend(r);
    }
    let elapsed = started.elapsed().as_secs_f64();
    issues.sort();
    revokes.sort();
    println!("nodes                       {}", a.urls.len());
    println!("workers                     {}", a.conns);
    println!("issues                      {}", issues.len());
    println!(
        "issues/s                    {:.0}",
        issues.len() as f64 / elapsed
    );
    println!(
        "revokes/s                   {:.0}",
        revokes.len() as f64 / elapsed
    );
    print_latency("issue p50 / p99", &issues);
    print_latency("revoke p50 / p99", &revokes);
    Ok(())
}

async fn flood(a: &Args) -> Result<(), String> {
    let from: std::net::IpAddr = a.from.parse().map_err(|e| format!("--from: {e}"))?;
    let client = Client::builder()
        .local_address(from)
        .pool_max_idle_per_host(a.conns)
        .build()
        .map_err(|e| e.to_string())?;
    let url = format!("{}/test", a.urls[0]);
    let deadline = Instant::now() + Duration::from_secs(a.secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..a.conns)
        .map(|w| {
            let (client, url) = (client.clone(), url.clone());
            let period = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.conns as f64 / a.rate));
            tokio::spawn(async move {
                let mut counts = std::collections::BTreeMap::<u16, u64>::new();
                let mut i = 0u64;
                let mut tick = period.map(tokio::time::interval);
                while Instant::now() < deadline {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    // Well-formed in length, prefix and alphabet; its checksum does not match.
                    let garbage = format!("snpt_{w:0>40}{i:0>6}");
                    i += 1;
                    let status = client
                        .get(&url)
                        .bearer_auth(&garbage)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?
                        .status();
                    *counts.entry(status.as_u16()).or_default() += 1;
                }
                Ok::<_, String>(counts)
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<u16, u64>::new();
    for w in workers {
        for (k, v) in w.await.map_err(|e| e.to_string())?? {
            *counts.entry(k).or_default() += v;
        }
    }
    let total: u64 = counts.values().sum();
    println!(
        "garbage requests/s          {:.0}",
        total as f64 / started.elapsed().as_secs_f64()
    );
    println!("answers                     {counts:?}");
    Ok(())
}

async fn users(a: &Args) -> Result<(), String> {
    let client = Client::builder()
        .pool_max_idle_per_host(a.conns)
        .build()
        .map_err(|e| e.to_string())?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..a.conns)
        .map(|w| {
            let (client, admin, next, n) = (client.clone(), a.admin.clone(), next.clone(), a.n);
            let url = a.urls[w % a.urls.len()].clone();
            tokio::spawn(async move {
                let mut tokens = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    let email = format!("user-{}@load.test", uuid::Uuid::new_v4());
                    let user = create_user(&client, &url, &admin, &email).await?;
                    tokens.push(issue(&client, &url, &admin, user).await?.0);
                }
                Ok::<_, String>(tokens)
            })
        })
        .collect();
    let mut out = String::new();
    for w in workers {
        for t in w.await.map_err(|e| e.to_string())?? {
            out.push_str(&t);
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

#[tokio::main]
async fn main() {
    let result = match parse() {
        Ok(a) if a.mode == "propagation" => propagation(&a).await,
        Ok(a) if a.mode == "churn" => churn(&a).await,
        Ok(a) if a.mode == "flood" => flood(&a).await,
        Ok(a) if a.mode == "users" => users(&a).await,
        Ok(a) if a.mode == "failover" => failover::failover(&a).await,
        Ok(a) => Err(format!("unknown mode {}", a.mode)),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}
