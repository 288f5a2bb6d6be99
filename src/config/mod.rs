//! Typed settings, layered: built-in defaults ← `config.toml` ← `SNAPTRACK_*` environment ←
//! command-line flags. Every key of the file is optional; a file that sets only
//! `[tiers.pro]` keeps the defaults for everything else.

mod cluster;
mod history;
mod throttle;

pub use cluster::{redact_url, ClusterSettings, NatsAuth, Secret, StreamTrust};
pub use history::History;

use crate::domain::restrictions::ScopeCatalogue;
pub use throttle::{Throttle, MIN_ADMIN_TOKEN_LEN};

use crate::domain::Tier;
use crate::state::TierTable;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Settings problems: each becomes a one-line error and exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid config file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// One plan's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierSettings {
    pub api_access: bool,
    pub requests: u32,
    pub window_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything `serve` needs. `Debug` is written by hand to keep the admin token out of it.
#[derive(Clone)]
pub struct Settings {
    pub listen: String,
    pub data: PathBuf,
    pub nats: Option<String>,
    pub node_id: String,
    /// Bearer token of the admin API; `None` hides the admin API (404).
    pub admin_token: Option<String>,
    /// The HMAC-SHA256 key of signed leak reports (`leak_report_secret`; env
    /// `SNAPTRACK_AUTH_LEAK_REPORT_SECRET`); `None` hides `POST /leaked-tokens` (404).
    pub leak_report_secret: Option<String>,
    pub tiers: [TierSettings; 4],
    pub throttle: Throttle,
    /// Snapshots and usage retention (`[history]`).
    pub history: History,
    /// Shortest password accepted wherever one is set.
    pub min_password_length: usize,
    /// The session cookie always carries `Secure` (TLS ends before this service, and the
    /// proxy does not say so in `X-Forwarded-Proto`).
    pub cookie_secure: bool,
    /// `[ops] listen`: when set, `/metrics` is served there only.
    pub ops_listen: Option<String>,
    pub usage_flush: Duration,
    pub session_ttl: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    pub tls: Option<TlsSettings>,
    pub cluster: ClusterSettings,
    /// Cluster mode: the signing key and the keys trusted on the stream.
    pub trust: StreamTrust,
    /// Cluster mode: credentials and TLS for NATS.
    pub nats_auth: NatsAuth,
    pub demo: bool,
    /// HTTP worker threads; `None` means one per physical core.
    pub workers: Option<usize>,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, reverse proxies): behind
    /// them, the throttles and the login audit see the client's address instead of the
    /// proxy's. Empty: the TCP peer is the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The scope catalogue tokens pick from (`scopes`; env `SNAPTRACK_AUTH_SCOPES`,
    /// comma-separated). Empty: tokens carry no scopes.
    pub scopes: ScopeCatalogue,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("nats", &self.nats.as_deref().map(redact_url))
            .field("node_id", &self.node_id)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "leak_report_secret",
                &self.leak_report_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("tiers", &self.tiers)
            .field("throttle", &self.throttle)
            .field("history", &self.history)
            .field("min_password_length", &self.min_password_length)
            .field("cookie_secure", &self.cookie_secure)
            .field("ops_listen", &self.ops_listen)
            .field("usage_flush", &self.usage_flush)
            .field("session_ttl", &self.session_ttl)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("trust", &self.trust)
            .field("nats_auth", &self.nats_auth)
            .field("demo", &self.demo)
            .field("workers", &self.workers)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl Default for Settings {
    fn default() -> Self {
        let paid = |requests| TierSettings {
            api_access: true,
            requests,
            window_secs: 60,
        };
        Settings {
            listen: "127.0.0.1:8080".into(),
            data: PathBuf::from("./data"),
            nats: None,
            node_id: "n1".into(),
            admin_token: None,
            leak_report_secret: None,
            tiers: [
                TierSettings {
                    api_access: false,
                    requests: 0,
                    window_secs: 60,
                },
                paid(10),
                paid(20),
                paid(100),
            ],
            throttle: Throttle::default(),
            history: History::default(),
            min_password_length: 12,
            cookie_secure: false,
            ops_listen: None,
            usage_flush: Duration::from_millis(250),
            session_ttl: Duration::from_secs(12 * 3600),
            max_body_bytes: 16 * 1024,
            tls: None,
            cluster: ClusterSettings::default(),
            trust: StreamTrust::default(),
            nats_auth: NatsAuth::default(),
            demo: false,
            workers: None,
            trusted_proxies: Vec::new(),
            scopes: ScopeCatalogue::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data: Option<PathBuf>,
    nats: Option<String>,
    node_id: Option<String>,
    usage_flush_ms: Option<u64>,
    session_ttl_secs: Option<u64>,
    max_body_bytes: Option<usize>,
    workers: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
    scopes: Option<Vec<String>>,
    leak_report_secret: Option<String>,
    #[serde(default)]
    tiers: FileTiers,
    #[serde(default)]
    throttle: throttle::FileThrottle,
    #[serde(default)]
    history: history::FileHistory,
    min_password_length: Option<usize>,
    cookie_secure: Option<bool>,
    ops: Option<FileOps>,
    tls: Option<FileTls>,
    #[serde(default)]
    cluster: cluster::FileCluster,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTiers {
    free: Option<FileTier>,
    starter: Option<FileTier>,
    pro: Option<FileTier>,
    business: Option<FileTier>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTier {
    api_access: Option<bool>,
    requests: Option<u32>,
    window_secs: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOps {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
}

/// What the command line may override.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub nats: Option<String>,
    pub node_id: Option<String>,
    pub demo: bool,
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

/// Trusted proxies: networks (`10.0.0.0/8`, `fd00::/8`) or single addresses. A network with
/// host bits set (`10.1.2.3/8`, perhaps meant as `/32`) and `/0` (every client could then
/// choose its own address) are errors. IPv4-mapped IPv6 entries are taken as IPv4, the form
/// peers are compared in.
fn parse_scopes(names: &[String]) -> Result<ScopeCatalogue, ConfigError> {
    ScopeCatalogue::parse(names).map_err(|reason| ConfigError::Invalid {
        key: "scopes".into(),
        reason,
    })
}

fn parse_proxies(items: &[&str]) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: "trusted_proxies".into(),
        reason,
    };
    items
        .iter()
        .map(|item| {
            let item = item.trim();
            let net = item
                .parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| invalid(format!("{item:?} is neither an address nor a network")))?;
            if net.trunc() != net {
                return Err(invalid(format!(
                    "{item:?} has host bits set: {} or {}/{}?",
                    net.trunc(),
                    net.addr(),
                    net.max_prefix_len()
                )));
            }
            if net.prefix_len() == 0 {
                return Err(invalid(format!(
                    "{item:?} would trust every peer, letting any client choose its address"
                )));
            }
            Ok(match net {
                ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                    Some(v4) if v6.prefix_len() >= 96 => {
                        ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                            .map(ipnet::IpNet::V4)
                            .unwrap_or(net)
                    }
                    _ => net,
                },
                v4 => v4,
            })
        })
        .collect()
}

impl Settings {
    /// Loads settings: defaults, then the file (`--config`, or `./config.toml` when it
    /// exists), then the environment, then the flags.
    pub fn load(o: &Overrides) -> Result<Settings, ConfigError> {
        Self::load_with_env(o, |k| std::env::var(k).ok())
    }

    /// As [`Settings::load`], reading the environment through `env` (tests pass their own).
    pub fn load_with_env(
        o: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let mut s = Settings::default();
        let (path, required) = match &o.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("./config.toml"), false),
        };
        if required || path.exists() {
            s.apply_file(&path)?;
        }
        set(&mut s.listen, env("SNAPTRACK_AUTH_LISTEN"));
        set(&mut s.data, env("SNAPTRACK_AUTH_DATA").map(PathBuf::from));
        if let Some(url) = env("SNAPTRACK_AUTH_NATS_URL") {
            s.nats = Some(url);
        }
        set(&mut s.node_id, env("SNAPTRACK_AUTH_NODE_ID"));
        if let Some(list) = env("SNAPTRACK_AUTH_TRUSTED_PROXIES") {
            let items: Vec<&str> = list.split(',').filter(|p| !p.trim().is_empty()).collect();
            s.trusted_proxies = parse_proxies(&items)?;
        }
        if let Some(list) = env("SNAPTRACK_AUTH_SCOPES") {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect();
            s.scopes = parse_scopes(&names)?;
        }
        cluster::apply_env(&env, &mut s.trust, &mut s.nats_auth);
        s.admin_token = env("SNAPTRACK_ADMIN_TOKEN").filter(|t| !t.is_empty());
        if let Some(k) = env("SNAPTRACK_AUTH_LEAK_REPORT_SECRET") {
            s.leak_report_secret = Some(k).filter(|k| !k.is_empty());
        }
        set(&mut s.listen, o.listen.clone());
        set(&mut s.data, o.data.clone());
        if o.nats.is_some() {
            s.nats = o.nats.clone();
        }
        set(&mut s.node_id, o.node_id.clone());
        s.demo = o.demo;
        s.check()?;
        Ok(s)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let f: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            reason: e.message().to_owned(),
        })?;
        set(&mut self.listen, f.listen);
        set(&mut self.data, f.data);
        if f.nats.is_some() {
            self.nats = f.nats;
        }
        set(&mut self.node_id, f.node_id);
        set(
            &mut self.usage_flush,
            f.usage_flush_ms.map(Duration::from_millis),
        );
        set(
            &mut self.session_ttl,
            f.session_ttl_secs.map(Duration::from_secs),
        );
        set(&mut self.max_body_bytes, f.max_body_bytes);
        if f.workers.is_some() {
            self.workers = f.workers;
        }
        if let Some(list) = f.trusted_proxies {
            let items: Vec<&str> = list.iter().map(String::as_str).collect();
            self.trusted_proxies = parse_proxies(&items)?;
        }
        if let Some(names) = f.scopes {
            self.scopes = parse_scopes(&names)?;
        }
        if let Some(k) = f.leak_report_secret {
            self.leak_report_secret = Some(k).filter(|k| !k.is_empty());
        }
        let tiers = [f.tiers.free, f.tiers.starter, f.tiers.pro, f.tiers.business];
        for (slot, t) in self.tiers.iter_mut().zip(tiers) {
            if let Some(t) = t {
                set(&mut slot.api_access, t.api_access);
                set(&mut slot.requests, t.requests);
                set(&mut slot.window_secs, t.window_secs);
            }
        }
        f.throttle.apply(&mut self.throttle);
        f.history.apply(&mut self.history);
        set(&mut self.min_password_length, f.min_password_length);
        set(&mut self.cookie_secure, f.cookie_secure);
        if let Some(listen) = f.ops.and_then(|o| o.listen) {
            self.ops_listen = Some(listen);
        }
        let base = path.parent().unwrap_or(Path::new("."));
        f.cluster.apply(
            base,
            &mut self.cluster,
            &mut self.trust,
            &mut self.nats_auth,
        );
        if let Some(tls) = f.tls {
            // Relative paths are relative to the config file, as users expect.
            self.tls = Some(TlsSettings {
                cert: base.join(tls.cert),
                key: base.join(tls.key),
            });
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason: reason.into(),
            })
        };
        for tier in Tier::ALL {
            let t = self.tiers[tier.index()];
            if t.api_access && (t.requests == 0 || t.window_secs == 0) {
                return bad(
                    &format!("tiers.{}", tier.as_str()),
                    "requests and window_secs must be positive",
                );
            }
        }
        self.throttle.check()?;
        self.history.check()?;
        if self.min_password_length < 8 {
            return bad("min_password_length", "must be at least 8");
        }

        if self.usage_flush.is_zero() {
            return bad("usage_flush_ms", "must be positive");
        }
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("node_id", "must be letters, digits, '-' or '_'");
        }
        cluster::check(self.nats.as_deref(), &self.cluster, &self.nats_auth)?;
        if self.workers == Some(0) {
            return bad("workers", "must be positive");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes", "must be at least 1024");
        }
        Ok(())
    }

    /// What only `serve` needs besides [`Settings::load`]'s checks: an admin token long
    /// enough not to be guessed (`replay` does not care).
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        // The admin token and the leak reports' key each guard every account.
        let secrets = [
            (
                "SNAPTRACK_ADMIN_TOKEN",
                &self.admin_token,
                "openssl rand -base64 32",
            ),
            (
                "leak_report_secret",
                &self.leak_report_secret,
                "openssl rand -hex 32",
            ),
        ];
        for (key, value, make) in secrets {
            if value
                .as_ref()
                .is_some_and(|v| v.chars().count() < MIN_ADMIN_TOKEN_LEN)
            {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: format!(
                        "must be at least {MIN_ADMIN_TOKEN_LEN} characters; make one with `{make}`"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The per-tier limits the verify path reads.
    pub fn tier_table(&self) -> TierTable {
        TierTable(
            self.tiers
                .map(|t| t.api_access.then_some((t.requests, t.window_secs))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, env: &[(&str, &str)], o: Overrides) -> Result<Settings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, file).unwrap();
        let o = Overrides {
            config: Some(path),
            ..o
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(&o, |k| {
            env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn the_shipped_config_toml_states_the_defaults_and_history_keys_are_checked() {
        let shipped = load(include_str!("../../config.toml"), &[], Overrides::default()).unwrap();
        assert_eq!(shipped.history, History::default());
        assert_eq!(shipped.throttle, Throttle::default());
        let s = load(
            "[history]\nsnapshot_every_events = 10\nusage_retention_days = 7\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.history.snapshot_every_events, 10);
        assert_eq!(s.history.usage_retention_days, 7);
        assert_eq!(s.history.snapshots_kept, 2);
        for bad in [
            "snapshots_kept = 0",
            "usage_record_secs = 0",
            "nonsense = 1",
        ] {
            let e = load(&format!("[history]\n{bad}\n"), &[], Overrides::default());
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_with_only_one_tier_keeps_every_other_default() {
        let s = load("[tiers.pro]\nrequests = 50\n", &[], Overrides::default()).unwrap();
        assert_eq!(s.tiers[Tier::Pro.index()].requests, 50);
        assert_eq!(s.tiers[Tier::Pro.index()].window_secs, 60);
        assert_eq!(s.tiers[Tier::Starter.index()].requests, 10);
        assert_eq!(s.tiers[Tier::Business.index()].requests, 100);
        assert!(!s.tiers[Tier::Free.index()].api_access);
        assert_eq!(s.listen, "127.0.0.1:8080");
    }

    #[test]
    fn flags_beat_environment_beat_file() {
        let file = "listen = \"127.0.0.1:1\"\nnode_id = \"file\"\ndata = \"/f\"\n";
        let env = [
            ("SNAPTRACK_AUTH_LISTEN", "127.0.0.1:2"),
            ("SNAPTRACK_AUTH_NODE_ID", "env"),
        ];
        let s = load(
            file,
            &env,
            Overrides {
                listen: Some("127.0.0.1:3".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:3");
        assert_eq!(s.node_id, "env");
        assert_eq!(s.data, PathBuf::from("/f"));
    }

    #[test]
    fn trusted_proxies_take_networks_and_addresses_from_file_or_environment() {
        let s = load(
            "trusted_proxies = [\"10.0.0.0/8\", \"192.168.0.7\", \"fd00::/8\", \"::ffff:172.16.0.0/108\"]\n",
            &[],
            Overrides::default(),
        )
        .unwrap();
        let shown: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            ["10.0.0.0/8", "192.168.0.7/32", "fd00::/8", "172.16.0.0/12"]
        );
        let s = load(
            "trusted_proxies = [\"10.0.0.0/8\"]\n",
            &[("SNAPTRACK_AUTH_TRUSTED_PROXIES", "127.0.0.1, ::1")],
            Overrides::default(),
        )
        .unwrap();
        let shown: Vec<String> = s.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(
            shown,
            ["127.0.0.1/32", "::1/128"],
            "the environment replaces the file"
        );
        assert!(load("", &[], Overrides::default())
            .unwrap()
            .trusted_proxies
            .is_empty());
        for bad in [
            "trusted_proxies = [\"10.0.0.0/33\"]\n",
            "trusted_proxies = [\"lb\"]\n",
            "trusted_proxies = [\"10.1.2.3/8\"]\n",
            "trusted_proxies = [\"0.0.0.0/0\"]\n",
        ] {
            let err = load(bad, &[], Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("trusted_proxies"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_admin_token() {
        let s = load(
            "",
            &[("SNAPTRACK_ADMIN_TOKEN", "super-secret-admin")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.admin_token.as_deref(), Some("super-secret-admin"));
        assert!(!format!("{s:?}").contains("super-secret-admin"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(matches!(
            load("lisen = \"x\"\n", &[], Overrides::default()),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            load("[tiers.pro]\nrequests = 0\n", &[], Overrides::default()),
            Err(ConfigError::Invalid { .. })
        ));
        let missing = Overrides {
            config: Some("/nonexistent/config.toml".into()),
            ..Default::default()
        };
        assert!(matches!(
            Settings::load_with_env(&missing, |_| None),
            Err(ConfigError::Read { .. })
        ));
    }
}
