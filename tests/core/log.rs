//! The sled log: append, scan, last sequence, group commit, and refusing a damaged log.

use super::Core;
use snaptrack_auth::bus::{LogError, SledLog};
use snaptrack_auth::domain::{TokenId, UserId};
use snaptrack_auth::event::{Event, RevokeReason, TokenRevoked};
use std::sync::Arc;

fn event(i: u64) -> Event {
    Event::TokenRevoked(TokenRevoked {
        token_id: TokenId::new(),
        user_id: UserId(i + 1),
        reason: RevokeReason::Revoked,
    })
}

#[tokio::test]
async fn appends_are_numbered_scanned_in_order_and_survive_reopening() {
    let core = Core::new();
    let now = chrono::Utc::now();
    let a = core
        .log
        .append(vec![event(0), event(1)], "n1", now)
        .unwrap();
    let b = core.log.append(vec![event(2)], "n1", now).unwrap();
    core.log.wait_durable(3).await.unwrap();
    assert_eq!((a[0].seq, a[1].seq, b[0].seq), (1, 2, 3));
    assert_eq!(core.log.last_seq(), 3);
    let from2: Vec<u64> = core.log.iter_from(2).map(|e| e.unwrap().seq).collect();
    assert_eq!(from2, vec![2, 3]);
    let dir = core.dir;
    drop(core.writer);
    drop(core.log);
    let log = SledLog::open(dir.path()).unwrap();
    let all: Vec<_> = log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], b[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_flushes() {
    let core = Core::new();
    let log = core.log.clone();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let envs = log
                    .append(vec![event(t * 100 + i)], "n1", chrono::Utc::now())
                    .unwrap();
                log.wait_durable(envs[0].seq).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.last_seq(), 64 * 20);
    let flushes = log.flush_count();
    assert!(
        flushes < 64 * 20 / 2,
        "{flushes} flushes for 1280 appends: no group commit"
    );
    assert_eq!(log.iter_from(1).filter(|e| e.is_ok()).count(), 1280);
}

fn damaged(f: impl FnOnce(&SledLog)) -> LogError {
    let core = Core::new();
    let now = chrono::Utc::now();
    for i in 0..5 {
        core.log.append(vec![event(i)], "n1", now).unwrap();
    }
    core.log.flush_blocking().unwrap();
    f(&core.log);
    core.log.flush_blocking().unwrap();
    let dir = core.dir;
    drop(core.writer);
    drop(core.log);
    let log = Arc::new(SledLog::open(dir.path()).unwrap());
    let state = snaptrack_auth::state::State::new("n1");
    log.replay_into(&state).unwrap_err()
}

#[test]
fn a_corrupt_record_stops_replay_naming_its_seq() {
    let err = damaged(|log| {
        let mut bytes = log.iter_from(3).next().unwrap().unwrap().to_json();
        bytes[20] ^= 1;
        let mut rec = crc32fast::hash(b"something else").to_le_bytes().to_vec();
        rec.extend_from_slice(&bytes);
        log.insert_raw_for_tests(3, &rec).unwrap();
    });
    assert!(matches!(err, LogError::Corrupt { seq: 3, .. }), "{err}");
    assert!(err.to_string().contains("seq 3"));
}

#[test]
fn a_torn_record_stops_replay_naming_its_seq() {
    let err = damaged(|log| log.insert_raw_for_tests(5, &[1, 2]).unwrap());
    assert!(matches!(err, LogError::Corrupt { seq: 5, .. }), "{err}");
}

#[test]
fn a_gap_stops_replay_naming_the_missing_seq() {
    let err = damaged(|log| log.remove_for_tests(2).unwrap());
    assert!(
        matches!(
            err,
            LogError::Gap {
                expected: 2,
                found: 3
            }
        ),
        "{err}"
    );
}

#[test]
fn an_undecodable_event_with_a_good_checksum_stops_replay() {
    let err = damaged(|log| {
        let json = br#"{"event_id":"00000000-0000-4000-8000-000000000001","seq":4,"occurred_at":"2024-01-01T00:00:00Z","node_id":"n1","type":"token_revoked","version":2,"data":{}}"#;
        let mut rec = crc32fast::hash(json).to_le_bytes().to_vec();
        rec.extend_from_slice(json);
        log.insert_raw_for_tests(4, &rec).unwrap();
    });
    assert!(err.to_string().contains("seq 4"), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn a_log_held_by_another_owner_is_a_clear_error_after_a_short_wait() {
    let core = Core::new();
    let started = std::time::Instant::now();
    let err = SledLog::open(core.dir.path())
        .err()
        .expect("the log is held by `core`");
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "it waited for the holder"
    );
    assert!(matches!(err, LogError::Open { .. }), "{err}");
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
}
