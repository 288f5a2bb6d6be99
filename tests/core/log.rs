//! The sled log: append, scan, last sequence, group commit, and refusing a damaged log.

use super::Core;
use snaptrack_auth::bus::{LogError, SledLog};
use snaptrack_auth::domain::{TokenId, UserId};
use snaptrack_auth::event::{Envelope, Event, RevokeReason, TokenRevoked};
use std::sync::Arc;

fn event(i: u64) -> Event {
    Event::TokenRevoked(TokenRevoked {
        token_id: TokenId::new(),
        user_id: UserId(i + 1),
        reason: RevokeReason::Revoked,
        by: None,
        url: None,
        source: None,
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

/// A log of five events, each in a record of its own (as a quiet node writes them), damaged
/// by `f`, reopened and replayed: the error replay stops with.
fn damaged(f: impl FnOnce(&SledLog)) -> LogError {
    let core = Core::new();
    let now = chrono::Utc::now();
    for i in 0..5 {
        core.log.append(vec![event(i)], "n1", now).unwrap();
        core.log.flush_blocking().unwrap();
    }
    assert_eq!(core.log.record_count_for_tests(), 5);
    f(&core.log);
    core.log.flush_blocking().unwrap();
    let dir = core.dir;
    drop(core.writer);
    drop(core.log);
    // Damage at the end of the log stops it at open; anywhere else, at replay.
    let log = match SledLog::open(dir.path()) {
        Ok(log) => Arc::new(log),
        Err(e) => return e,
    };
    let state = snaptrack_auth::state::State::new("n1");
    log.replay_into(&state).unwrap_err()
}

/// A batch record as `bus::record` defines it: checksum, tag 0xB1, count, then each event's
/// length and bytes.
fn batch_record(events: &[&[u8]]) -> Vec<u8> {
    let mut rest = vec![0xB1];
    rest.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        rest.extend_from_slice(&(e.len() as u32).to_le_bytes());
        rest.extend_from_slice(e);
    }
    let mut rec = crc32fast::hash(&rest).to_le_bytes().to_vec();
    rec.extend_from_slice(&rest);
    rec
}

/// A legacy record: checksum, then one JSON envelope.
fn json_record(env: &Envelope) -> Vec<u8> {
    let json = env.to_json();
    let mut rec = crc32fast::hash(&json).to_le_bytes().to_vec();
    rec.extend_from_slice(&json);
    rec
}

#[test]
fn a_corrupt_record_stops_replay_naming_its_seq() {
    let err = damaged(|log| {
        let mut rec = log.raw_for_tests(3).unwrap().unwrap();
        let mid = rec.len() / 2;
        rec[mid] ^= 1;
        log.insert_raw_for_tests(3, &rec).unwrap();
    });
    assert!(matches!(err, LogError::Corrupt { seq: 3, .. }), "{err}");
    assert!(err.to_string().contains("seq 3"));
}

#[test]
fn a_torn_record_stops_the_log_naming_its_seq() {
    // At the end of the log (where a crash tears records), opening fails...
    let err = damaged(|log| log.insert_raw_for_tests(5, &[1, 2]).unwrap());
    assert!(matches!(err, LogError::Corrupt { seq: 5, .. }), "{err}");
    // ...and in the middle, replay does.
    let err = damaged(|log| log.insert_raw_for_tests(2, &[1, 2, 3, 4, 5, 6]).unwrap());
    assert!(matches!(err, LogError::Corrupt { seq: 2, .. }), "{err}");
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
fn overlapping_records_stop_replay() {
    // Record 2 claims to hold two events, so the record at 3 overlaps it.
    let err = damaged(|log| {
        let one = log.iter_from(2).next().unwrap().unwrap();
        let a = one.encode_binary().unwrap();
        log.insert_raw_for_tests(2, &batch_record(&[&a, &a]))
            .unwrap();
    });
    assert!(matches!(err, LogError::Corrupt { seq: 3, .. }), "{err}");
    assert!(err.to_string().contains("overlaps"), "{err}");
}

#[test]
fn an_undecodable_event_with_a_good_checksum_stops_replay() {
    // In a binary record...
    let err = damaged(|log| {
        log.insert_raw_for_tests(4, &batch_record(&[b"\x07garbage"]))
            .unwrap()
    });
    assert!(matches!(err, LogError::Decode(_)), "{err}");
    assert!(err.to_string().contains("seq 4"), "{err}");
    // ...and in a legacy JSON one.
    let err = damaged(|log| {
        let json = br#"{"event_id":"00000000-0000-4000-8000-000000000001","seq":4,"occurred_at":"2024-01-01T00:00:00Z","node_id":"n1","type":"token_revoked","version":9,"data":{}}"#;
        let mut rec = crc32fast::hash(json).to_le_bytes().to_vec();
        rec.extend_from_slice(json);
        log.insert_raw_for_tests(4, &rec).unwrap();
    });
    assert!(err.to_string().contains("seq 4"), "{err}");
    assert!(err.to_string().contains("version 9"), "{err}");
    // A record that says it holds more events than it does.
    let err = damaged(|log| {
        let mut rec = batch_record(&[]);
        rec[5] = 1;
        let crc = crc32fast::hash(&rec[4..]).to_le_bytes();
        rec[..4].copy_from_slice(&crc);
        log.insert_raw_for_tests(4, &rec).unwrap();
    });
    assert!(matches!(err, LogError::Corrupt { seq: 4, .. }), "{err}");
}

#[test]
fn small_records_are_merged_and_every_event_stays_in_place() {
    let core = Core::new();
    let now = chrono::Utc::now();
    let mut appended = Vec::new();
    // 300 group commits of 10 events: 3,000 events, about three merges' worth.
    for round in 0..300 {
        let events = (0..10).map(|i| event(round * 10 + i)).collect();
        appended.extend(core.log.append(events, "n1", now).unwrap());
        core.log.flush_blocking().unwrap();
    }
    // Merged: a few large records, then the rounds since the last merge (fewer than 1,024
    // events, so at most 102 records of 10).
    let records = core.log.record_count_for_tests();
    assert!(
        records <= 105,
        "{records} records for 300 rounds: nothing merged"
    );
    let all: Vec<Envelope> = core.log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(all, appended);
    // A scan may start anywhere, inside a merged record or not.
    for from in [1, 2, 1023, 1024, 1025, 2999, 3000] {
        let seqs: Vec<u64> = core.log.iter_from(from).map(|e| e.unwrap().seq).collect();
        assert_eq!(seqs, (from..=3000).collect::<Vec<_>>(), "from {from}");
    }
    assert_eq!(core.log.iter_from(3001).count(), 0);
    // Reopened, the log knows where it ends and appends after it.
    let dir = core.dir;
    drop(core.writer);
    drop(core.log);
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq(), 3000);
    let next = log.append(vec![event(0)], "n1", now).unwrap();
    assert_eq!(next[0].seq, 3001);
    log.flush_blocking().unwrap();
    let state = snaptrack_auth::state::State::new("n1");
    assert_eq!(log.replay_into(&state).unwrap(), 3001);
}

/// A log of two legacy records (one JSON envelope each), as written before the binary form.
fn legacy_log(dir: &std::path::Path) -> Vec<Envelope> {
    let old = Envelope::numbered(vec![event(0), event(1)], 0, "n1", chrono::Utc::now());
    let log = SledLog::open(dir).unwrap();
    for env in &old {
        log.insert_raw_for_tests(env.seq, &json_record(env))
            .unwrap();
    }
    log.flush_blocking().unwrap();
    old
}

#[test]
fn a_log_of_legacy_json_records_is_still_read_and_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let now = chrono::Utc::now();
    let old = legacy_log(dir.path());
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq(), 2);
    let new = log.append(vec![event(2)], "n1", now).unwrap();
    log.flush_blocking().unwrap();
    let all: Vec<Envelope> = log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(all, [old, new].concat());
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

#[test]
fn a_saved_token_count_is_only_a_hint() {
    let core = Core::new();
    let now = chrono::Utc::now();
    core.log
        .append((0..10).map(event).collect(), "n1", now)
        .unwrap();
    core.log.flush_blocking().unwrap();
    let reference = core.replayed().snapshot();
    // Wildly wrong counts change nothing: the reservation is capped by the events to replay.
    for count in [0, 3, usize::MAX] {
        core.log.save_token_count(count).unwrap();
        let state = snaptrack_auth::state::State::new("n1");
        assert_eq!(core.log.replay_into(&state).unwrap(), 10);
        assert_eq!(state.snapshot(), reference);
    }
}

/// `rounds` group commits of 10 events each.
fn rounds(log: &SledLog, rounds: u64) -> Vec<Envelope> {
    let now = chrono::Utc::now();
    let mut appended = Vec::new();
    for round in 0..rounds {
        let events = (0..10).map(|i| event(round * 10 + i)).collect();
        appended.extend(log.append(events, "n1", now).unwrap());
        log.flush_blocking().unwrap();
    }
    appended
}

#[test]
fn small_records_left_by_a_previous_process_are_merged_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut appended = {
        let log = SledLog::open(dir.path()).unwrap();
        rounds(&log, 50)
    };
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.record_count_for_tests(), 50);
    appended.extend(rounds(&log, 60));
    // 1,100 events: the first 1,030 (including the previous process's 500) merged into one
    // record, then the rounds since.
    let records = log.record_count_for_tests();
    assert!(
        records <= 10,
        "{records} records: the old small ones were not merged"
    );
    let all: Vec<Envelope> = log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(all, appended);
}

#[test]
fn merging_starts_after_legacy_records() {
    let dir = tempfile::tempdir().unwrap();
    let old = legacy_log(dir.path());
    let log = SledLog::open(dir.path()).unwrap();
    let new = rounds(&log, 110);
    assert!(log.record_count_for_tests() < 20);
    let all: Vec<Envelope> = log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(all, [old, new].concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_blocking_and_group_commits_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SledLog::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let envs = log
                    .append(vec![event(t * 1000 + i)], "n1", chrono::Utc::now())
                    .unwrap();
                log.wait_durable(envs[0].seq).await.unwrap();
            }
        }));
    }
    let flusher = {
        let log = log.clone();
        std::thread::spawn(move || {
            for i in 0..300 {
                log.append(vec![event(9000 + i)], "n1", chrono::Utc::now())
                    .unwrap();
                log.flush_blocking().unwrap();
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    flusher.join().unwrap();
    // 1,500 events through both paths, with merges: every one is there, in order.
    assert_eq!(log.last_seq(), 1500);
    let seqs: Vec<u64> = log.iter_from(1).map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, (1..=1500).collect::<Vec<_>>());
    drop(log);
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.iter_from(1).filter(|e| e.is_ok()).count(), 1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_group_commit_round_neither_hangs_nor_loses_the_log() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(SledLog::open(dir.path()).unwrap());
    let mut last = 0;
    for n in 0..200u64 {
        let envs = log
            .append(vec![event(n)], "n1", chrono::Utc::now())
            .unwrap();
        last = envs[0].seq;
        // Give up on the wait after a varying moment: before leading, while the leader
        // yields, while sled writes, or not at all.
        let _ = tokio::time::timeout(Duration::from_micros(n * 10), log.wait_durable(last)).await;
    }
    // The next wait still completes, and every event is there in order.
    tokio::time::timeout(Duration::from_secs(10), log.wait_durable(last))
        .await
        .expect("a cancelled round left the log waiting for a leader that is gone")
        .unwrap();
    assert_eq!(last, 200);
    let seqs: Vec<u64> = log.iter_from(1).map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}

#[test]
fn foreign_positions_are_kept_passed_over_at_replay_and_survive_merging() {
    // A mirror log as cluster mode writes it: events and, between them, positions that held
    // a message no trusted node signed.
    let core = Core::new();
    let now = chrono::Utc::now();
    let mut events = Vec::new();
    let mut foreign = Vec::new();
    for seq in 1..=2100u64 {
        if seq % 7 == 3 {
            core.log.mirror_foreign(seq).unwrap();
            foreign.push(seq);
        } else {
            let env = Envelope::numbered(vec![event(seq)], seq - 1, "n1", now).remove(0);
            core.log.mirror(&env).unwrap();
            events.push(env);
        }
        if seq % 10 == 0 {
            core.log.flush_blocking().unwrap();
        }
    }
    core.log.flush_blocking().unwrap();
    assert!(
        core.log.record_count_for_tests() < 210,
        "small records merged"
    );
    // Out of order is refused, like an event.
    assert!(core.log.mirror_foreign(2102).is_err());
    let seen: Vec<Envelope> = core.log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(seen, events, "the audit view leaves foreign positions out");
    let marked: Vec<u64> = core
        .log
        .entries_from(1)
        .filter_map(|e| match e.unwrap() {
            snaptrack_auth::bus::Entry::Foreign(seq) => Some(seq),
            snaptrack_auth::bus::Entry::Event(_) => None,
        })
        .collect();
    assert_eq!(marked, foreign);
    // Replay passes over them: the state reaches the last position, having applied only
    // the events.
    let state = snaptrack_auth::state::State::new("n1");
    assert_eq!(core.log.replay_into(&state).unwrap(), events.len() as u64);
    assert_eq!(state.applied_seq(), 2100);
    // Reopened, the log still ends at the last position and the next one follows it.
    let dir = core.dir;
    drop(core.writer);
    drop(core.log);
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.last_seq(), 2100);
    log.mirror_foreign(2101).unwrap();
    log.flush_blocking().unwrap();
    let state = snaptrack_auth::state::State::new("n1");
    log.replay_into(&state).unwrap();
    assert_eq!(state.applied_seq(), 2101);
}

#[test]
fn usage_older_than_the_cutoff_leaves_the_log_and_everything_else_stays_in_place() {
    use snaptrack_auth::bus::Entry;
    use snaptrack_auth::event::UsageRecorded;
    let core = Core::new();
    let now = chrono::Utc::now();
    let old = now - chrono::Duration::days(100);
    let usage = |u| {
        Event::UsageRecorded(UsageRecorded {
            user_id: UserId(u),
            window_start: 0,
            window_secs: 3600,
            requests: 1,
            tokens: vec![],
        })
    };
    // 1,100 old events (every other one usage): one large record once merged.
    let events: Vec<Event> = (0..1100)
        .map(|i| if i % 2 == 0 { usage(i) } else { event(i) })
        .collect();
    core.log.append(events, "n1", old).unwrap();
    core.log.flush_blocking().unwrap();
    // Young usage after it, in a small record the group commit may still merge.
    core.log
        .append((0..10).map(usage).collect(), "n1", now)
        .unwrap();
    core.log.flush_blocking().unwrap();
    let last = core.log.last_seq();
    let cutoff = now - chrono::Duration::days(90);
    assert_eq!(
        core.log.compact_usage(cutoff, 500).unwrap(),
        0,
        "only records wholly before `through`"
    );
    assert_eq!(core.log.compact_usage(cutoff, last).unwrap(), 550);
    let kept: Vec<Envelope> = core.log.iter_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(kept.len(), 550 + 10);
    assert!(kept[..550]
        .iter()
        .all(|e| matches!(e.event, Event::TokenRevoked(_))));
    let foreign = core
        .log
        .entries_from(1)
        .filter(|e| matches!(e, Ok(Entry::Foreign(_))))
        .count();
    assert_eq!(foreign, 550, "their positions stay, empty");
    // Replay passes over them; compacting again finds nothing; reopening keeps it all.
    let replayed = core.replayed();
    assert_eq!(replayed.applied_seq(), last);
    assert_eq!(core.log.compact_usage(cutoff, last).unwrap(), 0);
    let Core {
        dir, log, writer, ..
    } = core;
    drop((log, writer));
    let log = SledLog::open(dir.path()).unwrap();
    assert_eq!(log.iter_from(1).count(), 560);
    assert_eq!(log.compact_usage(cutoff, log.last_seq()).unwrap(), 0);
}
