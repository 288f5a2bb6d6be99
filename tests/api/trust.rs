//! The stream as a trust boundary: messages that no trusted node signed for their position
//! are never applied and never stop a node. The attacker is a plain NATS client (the
//! `async_nats` crate, none of our code) with publish rights on the stream's subjects.

use crate::helpers::{applied_seq, body, metric, spawn_app_with, Opts};
use crate::nats::{spawn_cluster, spawn_node, CLUSTER_CONFIG};
use async_nats::jetstream;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Digest;
use snaptrack_auth::domain::ApiToken;
use std::time::{Duration, Instant};

/// The stream's last sequence.
async fn stream_last(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// Publishes a message on the stream as the attacker: with `signature` as the
/// `Snaptrack-Signature` header when given. Returns where the stream stored it.
async fn forge(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    signature: Option<&str>,
) -> u64 {
    let mut msg = jetstream::message::PublishMessage::build().payload(payload.into());
    if let Some(sig) = signature {
        msg = msg.header("Snaptrack-Signature", sig);
    }
    js.send_publish(subject.to_owned(), msg)
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// A `token_issued` event for `user`, as a real one looks, for a token the attacker chose,
/// numbered for position `seq`.
fn issued(template: &Value, token: &ApiToken, seq: u64) -> Vec<u8> {
    let mut v = template.clone();
    v["event_id"] = uuid::Uuid::new_v4().to_string().into();
    v["seq"] = seq.into();
    v["data"]["token_id"] = uuid::Uuid::new_v4().to_string().into();
    v["data"]["token_sha256"] = hex::encode(sha2::Sha256::digest(token.expose().as_bytes())).into();
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn forged_replayed_and_junk_messages_change_nothing_and_stop_no_node() {
    let mut c = spawn_cluster().await;
    let [a, b, cc] = &c.nodes[..] else {
        unreachable!()
    };
    // Watch the stream as any subscriber can: subjects, headers, payloads.
    let attacker = async_nats::connect(c.nats.url()).await.unwrap();
    let mut seen = attacker
        .subscribe("snaptrack.auth.v1.token.issued")
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    let js = jetstream::new(attacker.clone());

    let user = a.create_user("victim@example.com", "pro").await;
    let (real, real_id) = a.issue_token(user).await;
    let issued_msg = tokio::time::timeout(Duration::from_secs(10), seen.next())
        .await
        .unwrap()
        .unwrap();
    let real_signature = issued_msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Snaptrack-Signature"))
        .map(|v| v.as_str().to_owned())
        .expect("a node's message carries its signature");
    let template: Value = serde_json::from_slice(&issued_msg.payload).unwrap();
    assert_eq!(b.revoke_admin(&real_id).await.status(), StatusCode::OK);
    let rejected_before = metric(a, "snaptrack_stream_rejected_total").await;
    assert_eq!(rejected_before, 0.0);

    let subject = "snaptrack.auth.v1.token.issued";
    let mut chosen = Vec::new();
    // 1. An unsigned token_issued, numbered for the very position it will land at.
    let t = ApiToken::generate();
    let next = stream_last(&js).await + 1;
    assert_eq!(
        forge(&js, subject, issued(&template, &t, next), None).await,
        next
    );
    chosen.push(t);
    // 2. The same with the signature header of a real message.
    let t = ApiToken::generate();
    let next = stream_last(&js).await + 1;
    forge(
        &js,
        subject,
        issued(&template, &t, next),
        Some(&real_signature),
    )
    .await;
    chosen.push(t);
    // 3. Signed properly, by a key no node trusts.
    let stranger = snaptrack_auth::signing::Signer::generate();
    let t = ApiToken::generate();
    let next = stream_last(&js).await + 1;
    let payload = issued(&template, &t, next);
    let sig = stranger.sign(subject, &payload);
    forge(&js, subject, payload, Some(&sig)).await;
    chosen.push(t);
    // 4. A real signed event with one field altered (another user), at its new position.
    let mut altered = template.clone();
    altered["data"]["user_id"] = (user + 1000).into();
    altered["seq"] = (stream_last(&js).await + 1).into();
    forge(
        &js,
        subject,
        serde_json::to_vec(&altered).unwrap(),
        Some(&real_signature),
    )
    .await;
    // 5. The real, signed token_issued again, after its token was revoked.
    forge(
        &js,
        subject,
        issued_msg.payload.to_vec(),
        Some(&real_signature),
    )
    .await;
    // 6. Junk.
    forge(
        &js,
        "snaptrack.auth.v1.token.revoked",
        b"not json at all".to_vec(),
        None,
    )
    .await;
    // 7. An unsigned presence message claiming to be node a from another process (which,
    //    believed, would stop a as a twin) far ahead of everyone.
    let fake = serde_json::json!({"node_id": "a", "instance": "evil", "applied_seq": 1_000_000,
        "sent_at_ms": chrono::Utc::now().timestamp_millis()});
    attacker
        .publish(
            "snaptrack.auth.nodes",
            serde_json::to_vec(&fake).unwrap().into(),
        )
        .await
        .unwrap();
    attacker.flush().await.unwrap();

    // A command right away: its expected last sequence may well be taken by the forgeries;
    // the writer catches up past them and publishes again.
    let (after, _) = cc.issue_token(user).await;
    let last = stream_last(&js).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in [a, b, cc] {
        while applied_seq(node).await < last
            || metric(node, "snaptrack_presence_rejected_total").await < 1.0
        {
            assert!(
                Instant::now() < deadline,
                "{} did not get past the forgeries",
                node.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for node in [a, b, cc] {
        assert_eq!(
            node.get("/readyz").await.status(),
            StatusCode::OK,
            "{}",
            node.url
        );
        assert_eq!(metric(node, "snaptrack_stream_rejected_total").await, 6.0);
        for t in &chosen {
            assert_eq!(
                node.get_test(t.expose()).await.status(),
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(
            node.get_test(&real).await.status(),
            StatusCode::UNAUTHORIZED,
            "stays revoked"
        );
        assert_eq!(node.get_test(&after).await.status(), StatusCode::OK);
        let v = body(node.get_user(user).await).await;
        assert_eq!(v["tokens"]["items"].as_array().unwrap().len(), 2, "{v}");
        let warned = node
            .output()
            .iter()
            .filter(|l| l.contains("rejected a message on the stream"))
            .count();
        assert_eq!(warned, 6, "one warning per message");
    }
    assert!(
        a.output()
            .iter()
            .all(|l| !l.contains("another process announces")),
        "the unsigned presence message was not believed"
    );
    assert!(
        a.output()
            .iter()
            .any(|l| l.contains("rejected a message on the stream")
                && l.contains(&format!("seq={next}"))),
        "the warning names the stream sequence"
    );

    // A fresh node reads the same stream from the start and agrees; so does a node that
    // restarts from its local mirror (which marks the positions it passed over).
    let d = spawn_node(&c.nats, "d", CLUSTER_CONFIG).await;
    assert!(applied_seq(&d).await >= last);
    assert_eq!(metric(&d, "snaptrack_stream_rejected_total").await, 6.0);
    for t in &chosen {
        assert_eq!(
            d.get_test(t.expose()).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(d.get_test(&real).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(d.get_test(&after).await.status(), StatusCode::OK);
    c.nodes[1].restart().await;
    c.nodes[1].wait_ready().await;
    let (a, b) = (&c.nodes[0], &c.nodes[1]);
    assert!(applied_seq(b).await >= last);
    for t in &chosen {
        assert_eq!(
            b.get_test(t.expose()).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(b.get_test(&after).await.status(), StatusCode::OK);
    let (again, _) = b.issue_token(user).await;
    assert_eq!(a.get_test(&again).await.status(), StatusCode::OK);
    // The audit log reads past the marked positions too: every event, and the tokens valid
    // now (the two issued since, no forged one).
    // The mirror is flushed behind the replicator (nothing waits for it): read until a's
    // log on disk holds the last token.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = a.replay(&["--at", &chrono::Utc::now().to_rfc3339()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let valid = String::from_utf8_lossy(&out.stdout).lines().count();
        if valid == 2 || Instant::now() >= deadline {
            assert_eq!(valid, 2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = a.replay(&["--type", "token_issued"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[tokio::test]
async fn cluster_mode_needs_a_signing_key_and_keygen_makes_one() {
    let dir = tempfile::tempdir().unwrap();
    // No key: exit 2, naming the command that makes one.
    let out = std::process::Command::new(crate::helpers::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--nats",
            "nats://127.0.0.1:1",
            "--data",
        ])
        .arg(dir.path().join("data"))
        .env_remove("SNAPTRACK_AUTH_SIGNING_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("snaptrack-auth keygen"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // keygen: a private key readable by its owner only, the public key on stdout.
    let key = dir.path().join("node.nk");
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap();
    assert_eq!(public.lines().count(), 1);
    let public = public.trim();
    assert!(public.starts_with('U') && public.len() == 56, "{public}");
    let seed = std::fs::read_to_string(&key).unwrap();
    assert!(!seed.contains(public));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        snaptrack_auth::signing::Signer::load(&key)
            .unwrap()
            .public_key(),
        public
    );
    // Never overwritten.
    let out = std::process::Command::new(crate::helpers::BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), seed);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // A key file that is not a key, and a trusted key that is not one: exit 2.
    let nats = crate::nats::NatsServer::start();
    std::fs::write(dir.path().join("junk.nk"), "hello").unwrap();
    for (signing, trusted) in [
        (dir.path().join("junk.nk"), String::new()),
        (key.clone(), "SUAJUNK".to_owned()),
    ] {
        let out = std::process::Command::new(crate::helpers::BIN)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--nats",
                &nats.url(),
                "--data",
            ])
            .arg(dir.path().join("data2"))
            .env("SNAPTRACK_AUTH_SIGNING_KEY", &signing)
            .env("SNAPTRACK_AUTH_TRUSTED_KEYS", &trusted)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains(seed.trim()), "{err}");
    }
    // The key it made serves.
    let node = spawn_app_with(Opts {
        config: Some(CLUSTER_CONFIG.into()),
        env: vec![
            ("SNAPTRACK_AUTH_NATS_URL".into(), nats.url()),
            ("SNAPTRACK_AUTH_NODE_ID".into(), "k".into()),
            (
                "SNAPTRACK_AUTH_SIGNING_KEY".into(),
                key.display().to_string(),
            ),
        ],
        ..Default::default()
    })
    .await;
    node.wait_ready().await;
    let (_, token, _) = node.user_with_token("ann@example.com", "pro").await;
    assert_eq!(node.get_test(&token).await.status(), StatusCode::OK);
    assert!(node.output().iter().all(|l| !l.contains(seed.trim())));
}

#[tokio::test]
async fn a_replayed_announcement_of_an_earlier_process_stops_nothing() {
    let nats = crate::nats::NatsServer::start();
    let mut a = spawn_node(&nats, "a", CLUSTER_CONFIG).await;
    // Record one of this process's own signed announcements.
    let attacker = async_nats::connect(nats.url()).await.unwrap();
    let mut presence = attacker.subscribe("snaptrack.auth.nodes").await.unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(10), presence.next())
        .await
        .unwrap()
        .unwrap();
    assert!(recorded.headers.is_some(), "announcements are signed");
    // The node restarts (a new process, a new instance) well within the staleness bound;
    // the attacker plays the old process's announcement back to it.
    a.restart().await;
    a.wait_ready().await;
    let before = metric(&a, "snaptrack_presence_rejected_total").await;
    attacker
        .publish_with_headers(
            "snaptrack.auth.nodes",
            recorded.headers.clone().unwrap(),
            recorded.payload.clone(),
        )
        .await
        .unwrap();
    attacker.flush().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&a, "snaptrack_presence_rejected_total").await <= before {
        assert!(
            Instant::now() < deadline,
            "the replayed announcement was not seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(a.get("/readyz").await.status(), StatusCode::OK);
    assert!(a
        .output()
        .iter()
        .all(|l| !l.contains("another process announces")));
}

#[tokio::test]
async fn history_written_before_signing_is_applied_only_up_to_unsigned_through() {
    // A stream written by nodes of the version before signing: a user and a token, unsigned.
    let nats = crate::nats::NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "SNAPTRACK_AUTH".into(),
        subjects: vec!["snaptrack.auth.v1.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let token = ApiToken::generate();
    let registered: Value = serde_json::from_str(include_str!(
        "../../events/fixtures/user_registered.v1.json"
    ))
    .unwrap();
    let template: Value =
        serde_json::from_str(include_str!("../../events/fixtures/token_issued.v1.json")).unwrap();
    let for_user_1 = |token: &ApiToken, seq| {
        let mut v = serde_json::from_slice::<Value>(&issued(&template, token, seq)).unwrap();
        v["data"]["user_id"] = 1.into();
        serde_json::to_vec(&v).unwrap()
    };
    forge(
        &js,
        "snaptrack.auth.v1.user.registered",
        serde_json::to_vec(&registered).unwrap(),
        None,
    )
    .await;
    forge(
        &js,
        "snaptrack.auth.v1.token.issued",
        for_user_1(&token, 2),
        None,
    )
    .await;
    // Upgraded with the operator's word that positions 1-2 predate signing: applied.
    let upgraded = crate::helpers::spawn_app_with(Opts {
        config: Some(CLUSTER_CONFIG.into()),
        env: [
            nats.node_env("a"),
            vec![("SNAPTRACK_AUTH_UNSIGNED_THROUGH".into(), "2".into())],
        ]
        .concat(),
        ..Default::default()
    })
    .await;
    upgraded.wait_ready().await;
    assert_eq!(
        upgraded.get_test(token.expose()).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        metric(&upgraded, "snaptrack_stream_rejected_total").await,
        0.0
    );
    // An unsigned message after that position is not history: passed over.
    let later = ApiToken::generate();
    forge(
        &js,
        "snaptrack.auth.v1.token.issued",
        for_user_1(&later, 3),
        None,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&upgraded, "snaptrack_stream_rejected_total").await < 1.0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        upgraded.get_test(later.expose()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Without the setting, the unsigned history is someone else's: nothing of it applies.
    let strict = spawn_node(&nats, "b", CLUSTER_CONFIG).await;
    assert_eq!(
        strict.get_test(token.expose()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        metric(&strict, "snaptrack_stream_rejected_total").await,
        3.0
    );
}

/// Publishes `payload` on `subject` as node `signer` would in a pipelined burst: expecting
/// position `seq`, and naming `follows` as its predecessor when given. Returns its event id.
pub(crate) async fn publish_following(
    js: &jetstream::Context,
    signer: &snaptrack_auth::signing::Signer,
    subject: &str,
    payload: Vec<u8>,
    seq: u64,
    follows: Option<&str>,
) -> String {
    let event_id = serde_json::from_slice::<Value>(&payload).unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sig = signer.sign_after(subject, &payload, follows);
    let mut msg = jetstream::message::PublishMessage::build()
        .payload(payload.into())
        .header("Snaptrack-Signature", sig.as_str())
        .expected_last_sequence(seq - 1);
    if let Some(f) = follows {
        msg = msg.header("Snaptrack-Follows", f);
    }
    let ack = js
        .send_publish(subject.to_owned(), msg)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(ack.sequence, seq);
    event_id
}

#[tokio::test]
async fn an_event_that_does_not_follow_the_event_it_names_is_void_on_every_node() {
    use crate::nats::NatsServer;
    let nats = NatsServer::start();
    let mut a = spawn_node(&nats, "a", CLUSTER_CONFIG).await;
    let user = a.create_user("ann@example.com", "pro").await;
    let (kept, _) = a.issue_token(user).await;
    // A clean stop shares a snapshot at s: a fresh node starts there, without the event at s
    // in its mirror.
    a.restart().await;
    a.wait_ready().await;
    let s = applied_seq(&a).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    let mut template = None;
    for seq in 1..=s {
        let m = stream.get_raw_message(seq).await.unwrap();
        if m.subject.as_str() == "snaptrack.auth.v1.token.issued" {
            template = Some(serde_json::from_slice::<Value>(&m.payload).unwrap());
        }
    }
    let template = template.expect("a token_issued on the stream");
    let at_s: Value =
        serde_json::from_slice(&stream.get_raw_message(s).await.unwrap().payload).unwrap();
    let at_s = at_s["event_id"].as_str().unwrap().to_owned();

    // Signed by node a, as the rest of its bursts would be.
    let signer = snaptrack_auth::signing::Signer::load(&nats.keys.path("a")).unwrap();
    let subject = "snaptrack.auth.v1.token.issued";
    let tokens: Vec<ApiToken> = (0..5).map(|_| ApiToken::generate()).collect();
    let publish = |i: usize, follows: Option<String>| {
        let payload = issued(&template, &tokens[i], s + 1 + i as u64);
        let (js, signer) = (js.clone(), &signer);
        async move {
            publish_following(
                &js,
                signer,
                subject,
                payload,
                s + 1 + i as u64,
                follows.as_deref(),
            )
            .await
        }
    };
    // s+1 follows the event at s: counts.
    publish(0, Some(at_s)).await;
    // s+2 names an event that is not the one before it: void.
    let void = publish(1, Some(uuid::Uuid::new_v4().to_string())).await;
    // s+3 follows s+2, which did not count: void too.
    publish(2, Some(void)).await;
    // s+4 follows nothing: counts; s+5 follows it: counts.
    let first = publish(3, None).await;
    publish(4, Some(first)).await;
    let last = s + 5;

    wait_for_seq(&a, last).await;
    check_follows(&a, &kept, &tokens).await;
    assert_eq!(metric(&a, "snaptrack_stream_void_total").await, 2.0);
    assert_eq!(metric(&a, "snaptrack_stream_rejected_total").await, 0.0);

    // A fresh node seeded from the snapshot at s fetches the event at s from the stream to
    // judge s+1, and agrees.
    let b = spawn_node(&nats, "b", CLUSTER_CONFIG).await;
    assert!(
        b.output()
            .iter()
            .any(|l| l.contains(&format!("seeded from the shared snapshot seq={s}"))),
        "b starts from the snapshot"
    );
    wait_for_seq(&b, last).await;
    check_follows(&b, &kept, &tokens).await;
    assert_eq!(metric(&b, "snaptrack_stream_void_total").await, 2.0);

    // A restart reads its verdicts back from the local mirror.
    a.restart().await;
    a.wait_ready().await;
    wait_for_seq(&a, last).await;
    check_follows(&a, &kept, &tokens).await;
}

/// Waits until `node` applied the stream up to `seq`.
pub(crate) async fn wait_for_seq(node: &crate::helpers::TestApp, seq: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while applied_seq(node).await < seq {
        assert!(
            Instant::now() < deadline,
            "{} did not apply seq {seq}",
            node.url
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `node` answers for the tokens of the void-message test: the one issued before, and
/// the five published at s+1..s+5 (s+2 and s+3 void).
async fn check_follows(node: &crate::helpers::TestApp, kept: &str, tokens: &[ApiToken]) {
    assert_eq!(node.get_test(kept).await.status(), StatusCode::OK);
    let want = [
        StatusCode::OK,
        StatusCode::UNAUTHORIZED,
        StatusCode::UNAUTHORIZED,
        StatusCode::OK,
        StatusCode::OK,
    ];
    for (i, (t, w)) in tokens.iter().zip(want).enumerate() {
        assert_eq!(
            node.get_test(t.expose()).await.status(),
            w,
            "{}: token at s+{}",
            node.url,
            i + 1
        );
    }
}
