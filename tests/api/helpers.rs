//! `spawn_app()`: starts the real `snaptrack-auth` binary on port 0 with its own data
//! directory and admin token, and a `TestApp` with a method per endpoint. Everything the
//! process writes to stdout and stderr is kept, so tests can search it for secrets.

use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_snaptrack-auth");

pub struct TestApp {
    pub url: String,
    pub admin_token: String,
    pub dir: Arc<tempfile::TempDir>,
    pub client: Client,
    child: Option<Child>,
    output: Arc<Mutex<Vec<String>>>,
    config: Option<String>,
    extra_env: Vec<(String, String)>,
}

/// Options for [`spawn_app_with`].
#[derive(Default, Clone)]
pub struct Opts {
    /// Contents of a config.toml to pass with `--config`.
    pub config: Option<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Start without SNAPTRACK_ADMIN_TOKEN.
    pub no_admin: bool,
    /// Files to write into the app's directory before it starts (name, contents).
    pub files: Vec<(String, String)>,
    /// The HTTP client to use (e.g. one that trusts a test certificate).
    pub client: Option<Client>,
    /// A data directory to start on (copied, so the fixture stays as it is).
    pub data_from: Option<PathBuf>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Opts::default()).await
}

/// A `TestApp` started with this config.toml.
pub async fn spawn_app_with_config(config: &str) -> TestApp {
    spawn_app_with(Opts {
        config: Some(config.into()),
        ..Default::default()
    })
    .await
}

pub async fn spawn_app_with(opts: Opts) -> TestApp {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    for (name, contents) in &opts.files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    if let Some(from) = &opts.data_from {
        copy_dir(from, &dir.path().join("data"));
    }
    let admin_token = if opts.no_admin {
        String::new()
    } else {
        format!("adm-{}", uuid::Uuid::new_v4())
    };
    let mut app = TestApp {
        url: String::new(),
        admin_token,
        dir,
        client: opts.client.clone().unwrap_or_else(|| {
            Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap()
        }),
        child: None,
        output: Arc::new(Mutex::new(Vec::new())),
        config: opts.config,
        extra_env: opts.env,
    };
    app.start(&[]).await;
    app
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Reads lines of a child's stream into `sink`; sends the listening URL once seen.
fn pump(
    stream: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    tx: Option<std::sync::mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(url)) = (&tx, line.strip_prefix("listening on ")) {
                let _ = tx.send(url.to_owned());
            }
            sink.lock().unwrap().push(line);
        }
    });
}

impl TestApp {
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the binary (again) on the same data directory, on a fresh port.
    pub async fn start(&mut self, extra_args: &[&str]) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(self.data_dir())
            .args(extra_args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "trace")
            .env_remove("SNAPTRACK_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(c) = &self.config {
            let path = self.dir.path().join("config.toml");
            std::fs::write(&path, c).unwrap();
            cmd.arg("--config").arg(path);
        }
        if !self.admin_token.is_empty() {
            cmd.env("SNAPTRACK_ADMIN_TOKEN", &self.admin_token);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start snaptrack-auth");
        let (tx, rx) = std::sync::mpsc::channel();
        pump(child.stdout.take().unwrap(), self.output.clone(), Some(tx));
        pump(child.stderr.take().unwrap(), self.output.clone(), None);
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .unwrap()
            .unwrap_or_else(|_| panic!("server did not start: {:?}", self.output.lock().unwrap()));
        self.url = url;
        self.child = Some(child);
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }

    /// Kills the process with SIGKILL: no shutdown, no final flush.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
    }

    /// Waits until `GET /readyz` answers 200 (cluster nodes: caught up with the stream).
    pub async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never became ready: {:?}",
                self.url,
                self.output().iter().rev().take(20).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert!(
            status.success(),
            "exit status {status:?}; last output: {:#?}",
            self.output()
                .iter()
                .rev()
                .take(30)
                .rev()
                .collect::<Vec<_>>()
        );
        self.start(&[]).await;
    }

    /// Every line the process printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    // ---- public API ----

    pub async fn get_test(&self, token: &str) -> Response {
        self.client
            .get(format!("{}/test", self.url))
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
    }

    pub async fn get_with_auth(&self, path: &str, header: &[u8]) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .header(
                "Authorization",
                reqwest::header::HeaderValue::from_bytes(header).unwrap(),
            )
            .send()
            .await
            .unwrap()
    }

    // ---- admin API ----

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
    }

    pub async fn post_user(&self, body: &Value) -> Response {
        self.admin(reqwest::Method::POST, "/admin/users")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, email: &str, tier: &str) -> u64 {
        let r = self
            .post_user(
                &json!({"email": email, "name": "John Doe", "password": PASSWORD, "tier": tier}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json::<Value>().await.unwrap()["user"]["id"]
            .as_u64()
            .unwrap()
    }

    pub async fn post_token(&self, user: u64, body: &Value) -> Response {
        self.admin(
            reqwest::Method::POST,
            &format!("/admin/users/{user}/tokens"),
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    /// Issues a token for `user`; returns (token, token_id).
    pub async fn issue_token(&self, user: u64) -> (String, String) {
        let r = self.post_token(user, &json!({"name": "ci"})).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        (
            v["token"].as_str().unwrap().to_owned(),
            v["token_id"].as_str().unwrap().to_owned(),
        )
    }

    /// A user with a token, ready to call the API.
    pub async fn user_with_token(&self, email: &str, tier: &str) -> (u64, String, String) {
        let id = self.create_user(email, tier).await;
        let (t, tid) = self.issue_token(id).await;
        (id, t, tid)
    }

    pub async fn revoke_admin(&self, token_id: &str) -> Response {
        self.admin(
            reqwest::Method::DELETE,
            &format!("/admin/tokens/{token_id}"),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn put_subscription(&self, user: u64, body: &Value) -> Response {
        self.admin(
            reqwest::Method::PUT,
            &format!("/admin/users/{user}/subscription"),
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    pub async fn get_user(&self, user: u64) -> Response {
        self.admin(reqwest::Method::GET, &format!("/admin/users/{user}"))
            .send()
            .await
            .unwrap()
    }

    // ---- dashboard ----

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.client
            .post(format!("{}/login", self.url))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap()
    }

    /// Logs in and returns the `Cookie` header value.
    pub async fn session(&self, email: &str) -> String {
        let r = self.login(email, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK);
        session_cookie(&r).expect("session cookie")
    }

    pub fn dash(
        &self,
        method: reqwest::Method,
        path: &str,
        cookie: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .header("Cookie", cookie)
    }

    pub async fn list_tokens(&self, cookie: &str) -> Response {
        self.dash(reqwest::Method::GET, "/dashboard/tokens", cookie)
            .send()
            .await
            .unwrap()
    }

    pub async fn generate(&self, cookie: &str, body: &Value) -> Response {
        self.dash(reqwest::Method::POST, "/dashboard/tokens", cookie)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn revoke(&self, cookie: &str, id: &str) -> Response {
        self.dash(
            reqwest::Method::DELETE,
            &format!("/dashboard/tokens/{id}"),
            cookie,
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn regenerate(&self, cookie: &str, id: &str) -> Response {
        self.dash(
            reqwest::Method::POST,
            &format!("/dashboard/tokens/{id}/regenerate"),
            cookie,
        )
        .send()
        .await
        .unwrap()
    }

    /// Regenerate with a body (`{"grace_secs": N}`).
    pub async fn regenerate_with(&self, cookie: &str, id: &str, body: &Value) -> Response {
        self.dash(
            reqwest::Method::POST,
            &format!("/dashboard/tokens/{id}/regenerate"),
            cookie,
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    /// `POST /dashboard/password`.
    pub async fn change_password(&self, cookie: &str, current: &str, new: &str) -> Response {
        self.dash(reqwest::Method::POST, "/dashboard/password", cookie)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
            .await
            .unwrap()
    }

    /// `POST /dashboard/sessions/end-all` (log out everywhere).
    pub async fn end_all_sessions(&self, cookie: &str) -> Response {
        self.dash(reqwest::Method::POST, "/dashboard/sessions/end-all", cookie)
            .send()
            .await
            .unwrap()
    }

    /// The operator's regenerate of any user's token.
    pub async fn regenerate_admin(&self, id: &str, body: &Value) -> Response {
        self.admin(
            reqwest::Method::POST,
            &format!("/admin/tokens/{id}/regenerate"),
        )
        .json(body)
        .send()
        .await
        .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    /// Runs `snaptrack-auth replay` on this app's data directory.
    pub fn replay(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .arg("replay")
            .arg("--data")
            .arg(self.data_dir())
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Secret hygiene, for every test of the suite: the process ran at RUST_LOG=trace;
        // nothing it printed or stored may hold a token or the test password.
        if !std::thread::panicking() {
            let printed = self.output().join("\n");
            assert_no_secrets("its output", printed.as_bytes());
            for (path, bytes) in all_files(&self.data_dir()) {
                assert_no_secrets(&path.display().to_string(), &bytes);
            }
        }
    }
}

/// Every well-formed API token (prefix, length, alphabet and checksum) in `text`.
/// The `events=N` of the last "log replayed" line: events applied after the snapshot.
pub fn replayed_events(app: &TestApp) -> u64 {
    let out = app.output();
    let line = out
        .iter()
        .rev()
        .find(|l| l.contains("log replayed"))
        .expect("a log replayed line");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("events=")?.parse().ok())
        .unwrap_or_else(|| panic!("no events= in {line}"))
}

/// Polls until `token` gets 401 on `app`, within `within`; returns how long it took.
pub async fn until_refused(app: &TestApp, token: &str, within: Duration) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let s = app.get_test(token).await.status();
        if s == StatusCode::UNAUTHORIZED {
            return started.elapsed();
        }
        assert_eq!(s, StatusCode::OK);
        assert!(
            started.elapsed() < within,
            "still accepted after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn tokens_in(text: &str) -> Vec<&str> {
    use snaptrack_auth::domain::token::{ApiToken, PREFIX, TOKEN_LEN};
    text.match_indices(PREFIX)
        .filter_map(|(i, _)| text.get(i..i + TOKEN_LEN))
        .filter(|t| ApiToken::parse(t).is_ok())
        .collect()
}

/// Panics if `bytes` (named `what`) hold an API token or the tests' password.
pub fn assert_no_secrets(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let tokens = tokens_in(&text);
    assert!(tokens.is_empty(), "{what} holds an API token");
    assert!(!text.contains(PASSWORD), "{what} holds the password");
}

/// What [`churn`] has done so far, while it runs.
#[derive(Default)]
pub struct Progress {
    /// Revokes acknowledged.
    pub revoked: std::sync::atomic::AtomicUsize,
    /// Commands answered 503.
    pub refused: std::sync::atomic::AtomicUsize,
}

/// What a churning writer saw acknowledged.
#[derive(Default)]
pub struct Acked {
    /// Issued and still live (a revoke that failed is not known to have done nothing, so
    /// its token is in neither list).
    pub live: Vec<String>,
    /// Issued, then revoked.
    pub revoked: Vec<String>,
    /// Commands answered 503.
    pub refused: usize,
}

impl Acked {
    pub fn extend(&mut self, other: Acked) {
        self.live.extend(other.live);
        self.revoked.extend(other.revoked);
        self.refused += other.refused;
    }
}

/// Issues and revokes tokens of `user` on `url` until `stop` or until the server goes away,
/// recording what was acknowledged and counting acknowledged revokes in `progress`.
pub async fn churn(
    url: String,
    admin: String,
    user: u64,
    stop: Arc<std::sync::atomic::AtomicBool>,
    progress: Arc<Progress>,
) -> Acked {
    let client = Client::new();
    let mut acked = Acked::default();
    let mut issued = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let Ok(r) = client
            .post(format!("{url}/admin/users/{user}/tokens"))
            .bearer_auth(&admin)
            .json(&json!({"name": "load"}))
            .send()
            .await
        else {
            break; // the server went away: the outcome of this one is unknown
        };
        let v = match r.status() {
            StatusCode::CREATED => body(r).await,
            StatusCode::SERVICE_UNAVAILABLE => {
                acked.refused += 1;
                progress
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            s => panic!("unexpected {s}"),
        };
        let token = v["token"].as_str().unwrap().to_owned();
        // Keep a few (well under the 100-token limit), revoke the rest.
        issued += 1;
        if issued % 4 == 0 && acked.live.len() < 5 {
            acked.live.push(token);
            continue;
        }
        let id = v["token_id"].as_str().unwrap();
        let outcome = client
            .delete(format!("{url}/admin/tokens/{id}"))
            .bearer_auth(&admin)
            .send()
            .await;
        match outcome.as_ref().map(|r| r.status()) {
            Ok(StatusCode::OK) => {
                acked.revoked.push(token);
                progress
                    .revoked
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // Not acknowledged: the stream may or may not have stored it before the error.
            Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                acked.refused += 1;
                progress
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(s) => panic!("unexpected {s}"),
            Err(_) => break, // unknown outcome: neither live nor revoked for sure
        }
    }
    acked
}

pub const PASSWORD: &str = "correct horse battery staple";

/// `name=value` of the session cookie set by a response.
pub fn session_cookie(r: &Response) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("snaptrack_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

/// Every file under `dir`, read as bytes.
pub fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue; // never created, or removed by the test
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

pub async fn body(r: Response) -> Value {
    r.json().await.unwrap()
}

/// The `Retry-After` of a response, in seconds.
pub fn retry_after(r: &Response) -> i64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A client whose connections come from `addr` (any 127.x.y.z reaches the server on loopback):
/// another client address, for the per-address throttles.
pub fn client_from(addr: &str) -> Client {
    Client::builder()
        .local_address(Some(addr.parse().unwrap()))
        .build()
        .unwrap()
}

/// A gauge or counter from a node's `/metrics`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// How far a node has applied the log, as `/readyz` says.
pub async fn applied_seq(app: &TestApp) -> u64 {
    body(app.get("/readyz").await).await["applied_seq"]
        .as_u64()
        .unwrap()
}

/// What one node answered a user's requests, counted by window (`X-RateLimit-Reset`).
#[derive(Default)]
pub struct Tally {
    pub admitted: std::collections::HashMap<String, usize>,
    /// The window this node found used up (a 429 with a Retry-After beyond the next sync).
    pub exhausted: Option<String>,
}

/// Sends requests with `token` to `node`, `pace` apart, until the node says the window (not
/// just its grant) is used up, or `until` passes.
pub async fn until_used_up(
    node: &TestApp,
    token: &str,
    pace: Duration,
    until: std::time::Instant,
) -> Tally {
    let mut t = Tally::default();
    while std::time::Instant::now() < until {
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        let r = node.get_test(token).await;
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            // Too stale to decide for a moment, or the stream is down: not admitted.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let reset = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .to_owned();
        match r.status() {
            StatusCode::OK => *t.admitted.entry(reset).or_default() += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                if retry > 1 {
                    t.exhausted = Some(reset);
                    return t;
                }
            }
            s => panic!("unexpected {s}"),
        }
    }
    t
}
