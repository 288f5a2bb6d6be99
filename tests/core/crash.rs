//! kill -9: a child process appends under load and is killed at a random moment. After
//! reopening, every append that had returned is there, and the log is a clean prefix.
//!
//! The child is this same test binary, re-run with `CRASH_CHILD_DIR` set: the
//! `crash_child` test then becomes the writer.

use rand::Rng;
use snaptrack_auth::bus::SledLog;
use snaptrack_auth::domain::{TokenId, UserId};
use snaptrack_auth::event::{Event, RevokeReason, TokenRevoked};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_CHILD_DIR") else {
        return; // Only a child started by the test below writes.
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let log = Arc::new(SledLog::open(std::path::Path::new(&dir)).unwrap());
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let log = log.clone();
            let out = out.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let e = Event::TokenRevoked(TokenRevoked {
                        token_id: TokenId::new(),
                        user_id: UserId(w + 1),
                        reason: RevokeReason::Revoked,
                        by: None,
                        url: None,
                        source: None,
                    });
                    let envs = log.append(vec![e], "child", chrono::Utc::now()).unwrap();
                    log.wait_durable(envs[0].seq).await.unwrap();
                    let mut o = out.lock().unwrap();
                    writeln!(o, "ack {} {}", envs[0].seq, envs[0].event_id).unwrap();
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn every_acknowledged_append_survives_kill_9() {
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CRASH_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let acks = Arc::new(Mutex::new(HashMap::new()));
        let reader = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let parts: Vec<&str> = line.split(' ').collect();
                    if let ["ack", seq, id] = parts[..] {
                        acks.lock()
                            .unwrap()
                            .insert(seq.parse::<u64>().unwrap(), id.to_owned());
                    }
                }
            })
        };
        // Wait for the first acknowledgements, then kill at a random moment. Later rounds
        // wait longer, past the point where the log starts merging small records (1,024
        // events), so some kills land on a round that merges.
        let deadline = Instant::now() + Duration::from_secs(30);
        let first_acks = 50 + round * 600;
        while acks.lock().unwrap().len() < first_acks {
            assert!(Instant::now() < deadline, "child made no progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        // SIGKILL, as kill -9.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        reader.join().unwrap();
        let acks = acks.lock().unwrap().clone();
        let log = SledLog::open(dir.path()).unwrap();
        let mut found = HashMap::new();
        for env in log.iter_from(1) {
            let env =
                env.unwrap_or_else(|e| panic!("round {round}: log is not a clean prefix: {e}"));
            found.insert(env.seq, env.event_id.to_string());
        }
        assert_eq!(found.len() as u64, log.last_seq());
        for (seq, id) in &acks {
            assert_eq!(
                found.get(seq),
                Some(id),
                "round {round}: acknowledged seq {seq} lost"
            );
        }
        eprintln!(
            "round {round}: {} acknowledged, {} in the log after kill -9, in {} records",
            acks.len(),
            found.len(),
            log.record_count_for_tests()
        );
    }
}
