//! The benchmark's baseline: a bare actix-web server answering `GET /test` with the same JSON
//! body and the same five rate-limit headers as SnapTrack's `/test` (fixed values), without
//! any authentication. `bench/http` runs it side by side with the real service, so the
//! difference is the cost of the auth check itself.
//!
//! `cargo run --release --example baseline -- 127.0.0.1:0 [workers]`

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;

#[derive(Serialize)]
struct User {
    id: u64,
    name: &'static str,
    email: &'static str,
    subscription_tier: &'static str,
}

#[derive(Serialize)]
struct RateLimit {
    limit: u32,
    remaining: u32,
    reset: i64,
}

#[derive(Serialize)]
struct Body {
    success: bool,
    message: &'static str,
    user: User,
    rate_limit: RateLimit,
}

async fn test() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("x-ratelimit-limit", 20u32))
        .insert_header(("x-ratelimit-remaining", 19u32))
        .insert_header(("x-ratelimit-reset", 1706371200i64))
        .insert_header(("ratelimit-policy", "\"default\";q=20;w=60"))
        .insert_header(("ratelimit", "\"default\";r=19;t=42"))
        .json(Body {
            success: true,
            message: "API is working",
            user: User {
                id: 1,
                name: "John Doe",
                email: "john@example.com",
                subscription_tier: "pro",
            },
            rate_limit: RateLimit {
                limit: 20,
                remaining: 19,
                reset: 1706371200,
            },
        })
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    let listener = std::net::TcpListener::bind(addr)?;
    println!("listening on http://{}", listener.local_addr()?);
    HttpServer::new(|| App::new().route("/test", web::get().to(test)))
        .workers(workers)
        .listen(listener)?
        .run()
        .await
}
