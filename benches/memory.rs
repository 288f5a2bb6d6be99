//! Memory of the token index at 1M live tokens, counted by a global allocator that tracks
//! live bytes. `cargo bench --bench memory` prints bytes per token: for the index alone (the
//! hash → live-token map the verify path reads) and for the whole state built by replaying
//! 1M `token_issued` events (index + token records for the dashboard).

use chrono::Utc;
use snaptrack_auth::domain::{TokenHash, TokenId, UserId};
use snaptrack_auth::event::{Envelope, Event, TokenIssued};
use snaptrack_auth::state::{LiveToken, State};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: u64 = 1_000_000;

fn main() {
    // Criterion-style filters and flags are ignored: this bench has one measurement.
    let hashes: Vec<TokenHash> = (0..N)
        .map(|i| TokenHash::of(&format!("snpt_mem_{i}")))
        .collect();

    let before = LIVE.load(Ordering::Relaxed);
    let index: papaya::HashMap<TokenHash, LiveToken> = papaya::HashMap::new();
    {
        let pinned = index.pin();
        for h in &hashes {
            pinned.insert(
                *h,
                LiveToken {
                    token_id: TokenId::new(),
                    user_id: UserId(1),
                    expires_at: i64::MAX,
                    restrictions: None,
                },
            );
        }
    }
    let index_bytes = LIVE.load(Ordering::Relaxed) - before;
    drop(index);

    let before = LIVE.load(Ordering::Relaxed);
    let state = State::new("n1");
    for (i, h) in hashes.iter().enumerate() {
        let env = Envelope {
            event_id: uuid::Uuid::new_v4(),
            seq: i as u64 + 1,
            occurred_at: Utc::now(),
            node_id: "n1".into(),
            event: Event::TokenIssued(TokenIssued {
                token_id: TokenId::new(),
                user_id: UserId(1 + i as u64 % 1000),
                name: "bench token".into(),
                token_sha256: *h,
                hint: "snpt_…abcd".into(),
                expires_at: None,
                scopes: None,
                allowed_ips: None,
            }),
        };
        state.apply(&env).unwrap();
    }
    let state_bytes = LIVE.load(Ordering::Relaxed) - before;
    println!("live tokens: {N}");
    println!(
        "token index (hash -> live token): {} bytes, {:.0} bytes per token",
        index_bytes,
        index_bytes as f64 / N as f64
    );
    println!(
        "whole state after replaying {N} token_issued events: {} bytes, {:.0} bytes per token",
        state_bytes,
        state_bytes as f64 / N as f64
    );
    drop(state);
}
