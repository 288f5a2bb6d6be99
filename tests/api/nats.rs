//! A `nats-server` of the test's own, on a free loopback port with its own store directory,
//! so the test can kill and restart it; and `spawn_cluster()`, three nodes on top of it.

use crate::helpers::{assert_no_secrets, spawn_app_with, Opts, TestApp};
use futures_util::StreamExt;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct NatsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Arguments besides port and store (`-c FILE` for a configured server).
    args: Vec<String>,
    /// Environment of the server (variables its configuration file reads).
    env: Vec<(String, String)>,
    /// A signing key per node id of [`ROSTER`], each trusting all the others.
    pub keys: Keyring,
    /// The server binary: `nats-server`, or a newer one for a clustered server (see
    /// [`NatsCluster`]).
    bin: String,
}

/// The node ids tests use; each gets a signing key that every node trusts.
pub const ROSTER: [&str; 6] = ["a", "b", "c", "d", "e", "solo"];

/// Signing keys of the roster's nodes, written under one directory.
pub struct Keyring {
    dir: tempfile::TempDir,
    pub public: Vec<(String, String)>,
}

impl Keyring {
    fn new() -> Keyring {
        let dir = tempfile::tempdir().unwrap();
        let public = ROSTER
            .iter()
            .map(|id| {
                let signer = snaptrack_auth::signing::Signer::write_new(
                    &dir.path().join(format!("{id}.nk")),
                )
                .unwrap();
                (id.to_string(), signer.public_key().to_owned())
            })
            .collect();
        Keyring { dir, public }
    }

    /// The private key file of node `id`.
    pub fn path(&self, id: &str) -> std::path::PathBuf {
        assert!(ROSTER.contains(&id), "no key for node id {id:?}");
        self.dir.path().join(format!("{id}.nk"))
    }

    /// Every roster key, as `SNAPTRACK_AUTH_TRUSTED_KEYS` takes them.
    pub fn trusted(&self) -> String {
        let keys: Vec<&str> = self.public.iter().map(|(_, k)| k.as_str()).collect();
        keys.join(",")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl NatsServer {
    pub fn start() -> NatsServer {
        Self::start_with(vec!["-a".into(), "127.0.0.1".into()])
    }

    /// A server started with these arguments (besides `-js`, the port and the store).
    pub fn start_with(args: Vec<String>) -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            args,
            env: vec![],
            keys: Keyring::new(),
            bin: "nats-server".into(),
        };
        s.run();
        s
    }

    /// A server run from a configuration file's text, on loopback.
    pub fn start_with_config(config: &str) -> NatsServer {
        Self::start_with_config_env(config, &[])
    }

    /// As [`NatsServer::start_with_config`], with environment variables for the server.
    pub fn start_with_config_env(config: &str, env: &[(&str, &str)]) -> NatsServer {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut s = Self::configured(config, env, "nats-server".into());
        s.run();
        s
    }

    /// A server of `bin` on loopback, run from a configuration file's text; not started.
    fn configured(config: &str, env: Vec<(String, String)>, bin: String) -> NatsServer {
        let mut s = NatsServer {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            args: vec![],
            env,
            keys: Keyring::new(),
            bin,
        };
        let path = s.dir.path().join("nats.conf");
        std::fs::write(&path, config).unwrap();
        s.args = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-c".into(),
            path.display().to_string(),
        ];
        s
    }

    /// A file beside the server's store, for configurations that name files.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// The environment that makes a node `id` of this cluster: NATS URL, node id, its
    /// signing key and the roster's keys.
    pub fn node_env(&self, id: &str) -> Vec<(String, String)> {
        vec![
            ("SNAPTRACK_AUTH_NATS_URL".into(), self.url()),
            ("SNAPTRACK_AUTH_NODE_ID".into(), id.into()),
            (
                "SNAPTRACK_AUTH_SIGNING_KEY".into(),
                self.keys.path(id).display().to_string(),
            ),
            ("SNAPTRACK_AUTH_TRUSTED_KEYS".into(), self.keys.trusted()),
        ]
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store.
    pub fn run(&mut self) {
        let child = Command::new(&self.bin)
            .arg("-js")
            .args(&self.args)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path().join("js"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server) must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut child = child;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                child.try_wait().ok().flatten().is_none(),
                "nats-server exited (port {} taken?)",
                self.port
            );
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }

    /// Kills the server with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three nats-servers clustered on loopback (routes on free ports), JetStream on each with
/// `sync_interval: always`: the engine a deployment outgrows one machine with. Its config
/// needs a server that knows `sync_interval` (2.10 or later; Debian 12 ships 2.9):
/// `SNAPTRACK_TEST_NATS_SERVER` names it, else the one `scripts/install-nats-server` installs
/// (`.ci/run` runs it).
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start() -> NatsCluster {
        let bin = std::env::var("SNAPTRACK_TEST_NATS_SERVER")
            .unwrap_or("/usr/local/bin/nats-server-2.15.1".into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: run scripts/install-nats-server (a NATS cluster with \
             sync_interval needs nats-server 2.10 or later)"
        );
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let list: Vec<String> = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let servers = routes
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let config = format!(
                    "server_name: n{i}\njetstream {{ sync_interval: always }}\n\
                     cluster {{ name: snaptrack, listen: 127.0.0.1:{route}, routes: [{}] }}\n",
                    list.join(", ")
                );
                // Nodes take their keys from the first server's (see `node_env`).
                let mut s = NatsServer::configured(&config, vec![], bin.clone());
                let log = s.file("nats.log").display().to_string();
                s.args.extend(["-l".into(), log]);
                s
            })
            .collect::<Vec<_>>();
        let mut c = NatsCluster { servers };
        for s in &mut c.servers {
            s.run();
        }
        c
    }

    /// The last lines of every server's log (for a failing test to show).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.servers.iter().enumerate() {
            let log = std::fs::read_to_string(s.file("nats.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!("--- nats n{i}\n"));
            for l in &lines[lines.len().saturating_sub(25)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until JetStream answers (the servers elected a meta leader): a node that starts
    /// before cannot open its credential bucket and exits.
    pub async fn wait_for_jetstream(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = async_nats::connect(self.servers[0].url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        while js.query_account().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "no JetStream meta leader\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every server's URL, as a node's `nats` setting takes a cluster.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.servers.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// The environment of node `id`: as [`NatsServer::node_env`], with every server's URL.
    pub fn node_env(&self, id: &str) -> Vec<(String, String)> {
        let mut env = self.servers[0].node_env(id);
        env[0].1 = self.url();
        env
    }
}

/// Cluster timing for tests: a staleness bound short enough for quick fault tests, long
/// enough that a node starved of CPU for a moment on a loaded machine does not go stale.
pub const CLUSTER_CONFIG: &str = "\
usage_flush_ms = 100
[cluster]
max_staleness_ms = 2500
presence_interval_ms = 100
revoke_wait_ms = 5000
catchup_timeout_ms = 2000
";

/// A node of a cluster on `nats`, with id `id`.
pub async fn spawn_node(nats: &NatsServer, id: &str, config: &str) -> TestApp {
    let app = spawn_app_with(Opts {
        config: Some(config.into()),
        env: nats.node_env(id),
        ..Default::default()
    })
    .await;
    app.wait_ready().await;
    app
}

pub struct TestCluster {
    pub nats: NatsServer,
    pub nodes: Vec<TestApp>,
    /// Every message said on NATS while the cluster ran, searched for secrets at the end.
    said: Arc<Mutex<Vec<Vec<u8>>>>,
    recorder: tokio::task::JoinHandle<()>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.recorder.abort();
        if !std::thread::panicking() {
            for payload in self.said.lock().unwrap().iter() {
                assert_no_secrets("a NATS message", payload);
            }
        }
    }
}

/// A NATS server and three nodes, `a`, `b` and `c`, all ready and aware of each other.
pub async fn spawn_cluster() -> TestCluster {
    spawn_cluster_with(CLUSTER_CONFIG).await
}

pub async fn spawn_cluster_with(config: &str) -> TestCluster {
    spawn_cluster_recorded(config, true).await
}

/// A cluster with no recorder listening on every subject: NATS then answers "no responders"
/// to a request on a subject no node takes (a recorder counts as a responder).
pub async fn spawn_cluster_unrecorded(config: &str) -> TestCluster {
    spawn_cluster_recorded(config, false).await
}

async fn spawn_cluster_recorded(config: &str, record: bool) -> TestCluster {
    let nats = NatsServer::start();
    let said = Arc::new(Mutex::new(Vec::new()));
    let recorder = if record {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let mut all = client.subscribe(">").await.unwrap();
        client.flush().await.unwrap();
        let sink = said.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(m) = all.next().await {
                sink.lock().unwrap().push(m.payload.to_vec());
            }
        })
    } else {
        tokio::spawn(async {})
    };
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(spawn_node(&nats, id, config).await);
    }
    let c = TestCluster {
        nats,
        nodes,
        said,
        recorder,
    };
    c.wait_for_peers().await;
    c
}

impl TestCluster {
    /// Waits until a revoke on any node would wait for all three: each node has heard the
    /// other two (they announce every 100 ms).
    pub async fn wait_for_peers(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &self.nodes {
            loop {
                let text = node.get("/metrics").await.text().await.unwrap();
                if text.contains("snaptrack_cluster_live_nodes 3") {
                    break;
                }
                assert!(Instant::now() < deadline, "nodes never saw each other");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
