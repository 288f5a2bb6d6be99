//! Nodes log in to NATS servers that require it: user and password (in the URL or the
//! config), a token, an nkey, TLS with a client certificate; a wrong credential is one clear
//! error that never shows the secret; and the deployment the README gives, run as it is.

use crate::helpers::{body, spawn_app_with, Opts, TestApp, BIN, PASSWORD};
use crate::nats::{NatsServer, CLUSTER_CONFIG};
use reqwest::StatusCode;
use serde_json::json;
use std::time::{Duration, Instant};

const SECRET: &str = "nats-Secret-9f8e7d6c5b4a";

/// A node `id` of `nats` with `extra` appended to the test cluster config and `url` as its
/// NATS URL; waits until it is ready and checks that it serves.
async fn node_with(nats: &NatsServer, id: &str, url: &str, extra: &str) -> TestApp {
    let mut env = nats.node_env(id);
    env[0].1 = url.to_owned();
    let app = spawn_app_with(Opts {
        config: Some(format!("{CLUSTER_CONFIG}{extra}")),
        env,
        ..Default::default()
    })
    .await;
    app.wait_ready().await;
    let (_, token, _) = app
        .user_with_token(&format!("{}@example.com", uuid::Uuid::new_v4()), "pro")
        .await;
    assert_eq!(app.get_test(&token).await.status(), StatusCode::OK);
    assert_no_secret(&app.output().join("\n"));
    app
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(SECRET), "the NATS secret was printed");
}

/// Runs `serve` against `url` with `extra` config and expects exit 2 within 30 s: returns
/// its stderr.
fn refused(nats: &NatsServer, url: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, format!("{CLUSTER_CONFIG}{extra}")).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(dir.path().join("data"))
        .envs(nats.node_env("e"))
        .env("SNAPTRACK_AUTH_NATS_URL", url)
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let said: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .take(5)
                .collect();
            panic!("a node with a wrong credential kept running: {said:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("listening on"), "it never served");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_secret(&stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("snaptrack-auth:"))
        .collect();
    assert_eq!(ours.len(), 1, "one error line: {stderr}");
    stderr
}

fn conf(body: &str) -> String {
    format!("jetstream: enabled\n{body}\n")
}

#[tokio::test]
async fn user_and_password_in_the_url_or_the_config() {
    let nats = NatsServer::start_with_config(&conf(&format!(
        "authorization {{ users = [ {{ user: node, password: \"{SECRET}\" }} ] }}"
    )));
    let port = nats.port;
    node_with(
        &nats,
        "a",
        &format!("nats://node:{SECRET}@127.0.0.1:{port}"),
        "",
    )
    .await;
    node_with(
        &nats,
        "b",
        &nats.url(),
        &format!("nats_user = \"node\"\nnats_password = \"{SECRET}\"\n"),
    )
    .await;
    // Wrong password, no credentials: exit 2, one line, no secret.
    let err = refused(
        &nats,
        &format!("nats://node:wrong-{SECRET}@127.0.0.1:{port}"),
        "",
    );
    assert!(err.contains("refused this node's credentials"), "{err}");
    assert!(err.contains("nats://***@127.0.0.1"), "{err}");
    let err = refused(&nats, &nats.url(), "");
    assert!(err.contains("no credentials were given"), "{err}");
}

#[tokio::test]
async fn a_token() {
    let nats =
        NatsServer::start_with_config(&conf(&format!("authorization {{ token: \"{SECRET}\" }}")));
    node_with(
        &nats,
        "a",
        &nats.url(),
        &format!("nats_token = \"{SECRET}\"\n"),
    )
    .await;
    let err = refused(&nats, &nats.url(), "nats_token = \"not-it\"\n");
    assert!(err.contains("a token"), "{err}");
}

#[tokio::test]
async fn an_nkey() {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&conf(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}",
        user.public_key()
    )));
    let seed = nats.file("node.nk");
    std::fs::write(&seed, user.seed().unwrap()).unwrap();
    let app = node_with(
        &nats,
        "a",
        &nats.url(),
        &format!("nats_nkey = \"{}\"\n", seed.display()),
    )
    .await;
    assert!(!app.output().join("\n").contains(&user.seed().unwrap()));
    let other = nats.file("other.nk");
    std::fs::write(&other, nkeys::KeyPair::new_user().seed().unwrap()).unwrap();
    let err = refused(
        &nats,
        &nats.url(),
        &format!("nats_nkey = \"{}\"\n", other.display()),
    );
    assert!(err.contains("the nkey in"), "{err}");
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = issue(vec!["node".into()]);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let ca_file = file("ca.pem", &ca.pem());
    let nats = NatsServer::start_with_config(&conf(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{ca_file}\", verify: true, timeout: 2 }}",
        file("server.pem", &server_cert),
        file("server-key.pem", &server_key),
    )));
    let tls = format!(
        "nats_tls_ca = \"{ca_file}\"\nnats_tls_cert = \"{}\"\nnats_tls_key = \"{}\"\n",
        file("client.pem", &client_cert),
        file("client-key.pem", &client_key)
    );
    node_with(&nats, "a", &nats.url(), &tls).await;
    // Without the client certificate the server refuses the handshake.
    let err = refused(
        &nats,
        &nats.url(),
        &format!("nats_tls_ca = \"{ca_file}\"\n"),
    );
    assert!(err.contains("TLS with NATS"), "{err}");
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, issued (signed) by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": subject,
        "sub": subject,
        "nats": nats,
    });
    let claims = b64(claims.to_string().as_bytes());
    let signed = format!("{header}.{claims}");
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64(&sig))
}

/// A `.creds` file: a user's JWT and its nkey seed, as `nsc` writes them.
fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[tokio::test]
async fn a_creds_file_in_operator_mode() {
    // An operator, an account with JetStream, a user: the JWTs `nsc` would make.
    let operator = nkeys::KeyPair::new_operator();
    let system = nkeys::KeyPair::new_account();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1,
            "streams": -1, "consumer": -1},
            "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
    );
    // JetStream needs a system account.
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        json!({"limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1},
            "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let conf = format!(
        "jetstream: enabled\noperator: {operator_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {system_jwt}\n  {acc}: {account_jwt}\n}}\n",
        sys = system.public_key(),
        acc = account.public_key()
    );
    let nats = NatsServer::start_with_config(&conf);
    let seed = user.seed().unwrap();
    let creds = nats.file("node.creds");
    std::fs::write(&creds, creds_file(&user_jwt, &seed)).unwrap();
    let app = node_with(
        &nats,
        "a",
        &nats.url(),
        &format!("nats_creds = \"{}\"\n", creds.display()),
    )
    .await;
    assert!(!app.output().join("\n").contains(&seed));
    // A user the account never signed is refused.
    let stranger = nkeys::KeyPair::new_user();
    let forged = jwt(
        &stranger,
        &stranger.public_key(),
        json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let other = nats.file("other.creds");
    std::fs::write(&other, creds_file(&forged, &stranger.seed().unwrap())).unwrap();
    let err = refused(
        &nats,
        &nats.url(),
        &format!("nats_creds = \"{}\"\n", other.display()),
    );
    assert!(err.contains("the creds file"), "{err}");
    assert!(!err.contains(&stranger.seed().unwrap()));
}

/// The README's deployment, run as the file gives it: nodes log in as `snaptrack-node`,
/// subscribers as `snaptrack-subscriber` read revocations (and check their signatures with
/// the example subscriber) and cannot publish on the stream.
#[tokio::test]
async fn the_readme_deployment_lets_subscribers_read_and_not_write() {
    let deployment = include_str!("../../deploy/nats-server.conf");
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(deployment),
        "the README shows deploy/nats-server.conf as it is"
    );
    let node_password = format!("node-{SECRET}");
    let subscriber_password = "subscriber-password-for-tests";
    let nats = NatsServer::start_with_config_env(
        deployment,
        &[
            ("SNAPTRACK_NODE_PASSWORD", &node_password),
            ("SNAPTRACK_SUBSCRIBER_PASSWORD", subscriber_password),
        ],
    );
    let node_config =
        format!("nats_user = \"snaptrack-node\"\nnats_password = \"{node_password}\"\n");
    let mut a = node_with(&nats, "a", &nats.url(), &node_config).await;
    let b = node_with(&nats, "b", &nats.url(), &node_config).await;
    let user = a.create_user("ann@example.com", "pro").await;
    let (token, id) = a.issue_token(user).await;
    assert_eq!(b.revoke_admin(&id).await.status(), StatusCode::OK);
    // The nodes' rights cover the credential bucket: a user registered on a logs in on b.
    let r = b.login("ann@example.com", PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK);
    // The nodes' rights cover sharing snapshots: a clean stop shares one.
    assert!(a.stop().await.success());
    assert!(
        a.output().iter().any(|l| l.contains("snapshot shared")),
        "{:?}",
        a.output()
            .iter()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
    );
    a.start(&[]).await;
    a.wait_ready().await;

    // A subscriber may not publish on the stream's subjects: nothing lands.
    let subscriber = async_nats::ConnectOptions::new()
        .user_and_password("snaptrack-subscriber".into(), subscriber_password.into())
        .connect(nats.url())
        .await
        .unwrap();
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(subscriber.clone());
    let mut stream = js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let attempt = js
        .publish("snaptrack.auth.v1.token.revoked", "forged".into())
        .await;
    let refused = match attempt {
        Err(_) => true,
        Ok(ack) => ack.await.is_err(),
    };
    assert!(refused, "the subscriber published on the stream");
    // Nor read the shared snapshot, nor write it; nor the credential store's bucket.
    assert!(
        js.get_object_store("SNAPTRACK_AUTH_SNAPSHOTS")
            .await
            .is_err(),
        "the subscriber opened the snapshot bucket"
    );
    assert!(
        js.get_key_value("SNAPTRACK_AUTH_CREDENTIALS")
            .await
            .is_err(),
        "the subscriber opened the credential bucket"
    );
    let forged_hash = subscriber
        .publish("$KV.SNAPTRACK_AUTH_CREDENTIALS.v1-user-1", "x".into())
        .await;
    subscriber.flush().await.unwrap();
    drop(forged_hash);
    subscriber
        .publish("snaptrack.auth.v1.token.issued", "forged".into())
        .await
        .unwrap();
    subscriber.flush().await.unwrap();
    // The nodes may have flushed usage meanwhile; nothing of the subscriber's landed. (Read
    // with the nodes' rights: a subscriber consumes, it does not fetch single messages.)
    let reader = async_nats::ConnectOptions::new()
        .user_and_password("snaptrack-node".into(), node_password.clone())
        .connect(nats.url())
        .await
        .unwrap();
    let node_js = async_nats::jetstream::new(reader);
    let creds = node_js
        .get_key_value("SNAPTRACK_AUTH_CREDENTIALS")
        .await
        .unwrap();
    assert!(
        creds.get("v1-user-1").await.unwrap().is_none(),
        "the subscriber wrote into the credential bucket"
    );
    let mut stored = node_js.get_stream("SNAPTRACK_AUTH").await.unwrap();
    let now_last = stored.info().await.unwrap().state.last_sequence;
    for seq in last + 1..=now_last {
        let m = stored.get_raw_message(seq).await.unwrap();
        assert_ne!(
            &m.payload[..],
            b"forged",
            "the subscriber's message is in the stream"
        );
    }

    // Someone with the nodes' rights forges a revocation; the example subscriber, reading as
    // a subscriber with the nodes' public keys, believes the real one only.
    let writer = async_nats::ConnectOptions::new()
        .user_and_password("snaptrack-node".into(), node_password.clone())
        .connect(nats.url())
        .await
        .unwrap();
    async_nats::jetstream::new(writer)
        .publish(
            "snaptrack.auth.v1.token.revoked",
            "{\"forged\": true}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let example = std::path::Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples/revocation_subscriber");
    let out = tokio::task::spawn_blocking({
        let (url, keys) = (nats.url(), nats.keys.trusted());
        move || {
            std::process::Command::new(example)
                .args([url.as_str(), "--from-start", "--count", "2"])
                .env("SNAPTRACK_AUTH_TRUSTED_KEYS", keys)
                .env("NATS_USER", "snaptrack-subscriber")
                .env("NATS_PASSWORD", "subscriber-password-for-tests")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(
        lines[0].contains(&id) && lines[0].contains("signed by U"),
        "{printed}"
    );
    assert!(
        lines[1].starts_with("REJECTED") && lines[1].contains("unsigned"),
        "{printed}"
    );
    // The nodes passed over the forgery too, and still refuse the revoked token.
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in [&a, &b] {
        while body(node.get("/readyz").await).await["applied_seq"]
            .as_u64()
            .unwrap()
            < last + 1
        {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            node.get_test(&token).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(node.get("/readyz").await.status(), StatusCode::OK);
    }
}
