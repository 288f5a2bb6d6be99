//! Cluster mode's settings: its timing, and who a node is to NATS and to the other nodes
//! (its signing key, the keys it trusts, its NATS credentials and TLS). Secrets here never
//! reach `Debug`, an error or a log line.

use super::{set, ConfigError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Cluster mode's timing (ignored in embedded mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSettings {
    /// A node that has not confirmed it is caught up with the stream for this long answers
    /// token checks with 503: the bound on how long a cut-off node can serve a revoked token.
    pub max_staleness: Duration,
    /// How often a node announces its applied sequence on `snaptrack.auth.nodes` (it also
    /// announces at once after applying a revocation). A node unheard for three intervals
    /// is no longer live.
    pub presence_interval: Duration,
    /// How long a revoke waits for every live node to apply it before answering with the
    /// laggards in `pending`.
    pub revoke_wait: Duration,
    /// How long a token check that misses waits for the node to catch up with the stream.
    pub catchup_timeout: Duration,
    /// Replicas of the JetStream stream when this node creates it (3 on a NATS cluster).
    pub replicas: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            max_staleness: Duration::from_secs(5),
            presence_interval: Duration::from_millis(200),
            revoke_wait: Duration::from_secs(2),
            catchup_timeout: Duration::from_secs(1),
            replicas: 1,
        }
    }
}

/// A secret string: compared and used, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How a node proves itself to NATS. Every field is optional: with none, it connects as
/// NATS allows anonymous clients. User and password may also come in the URL
/// (`nats://user:password@host:4222`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A file holding an nkey seed (`SU…`), for servers that list the user's public nkey.
    pub nkey: Option<PathBuf>,
    /// A `.creds` file (JWT and seed), for servers in operator mode.
    pub creds: Option<PathBuf>,
    /// CA certificate(s) that sign the server's certificate; setting any TLS file requires
    /// TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for servers that verify clients (`verify: true`).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Who a node is to the other nodes: the key it signs with, and the keys it accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamTrust {
    /// A file holding this node's Ed25519 private key (`snaptrack-auth keygen --out PATH`).
    /// Required in cluster mode.
    pub signing_key: Option<PathBuf>,
    /// Public keys (`U…`) accepted besides the node's own: one per other node, and the new
    /// key while keys are rotated.
    pub trusted_keys: Vec<String>,
    /// Stream positions up to this one were written before nodes signed (an upgrade from an
    /// unsigned version): unsigned messages there are applied as before. 0: none.
    pub unsigned_through: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCluster {
    max_staleness_ms: Option<u64>,
    presence_interval_ms: Option<u64>,
    revoke_wait_ms: Option<u64>,
    catchup_timeout_ms: Option<u64>,
    replicas: Option<usize>,
    signing_key: Option<PathBuf>,
    trusted_keys: Option<Vec<String>>,
    unsigned_through: Option<u64>,
    nats_user: Option<String>,
    nats_password: Option<String>,
    nats_token: Option<String>,
    nats_nkey: Option<PathBuf>,
    nats_creds: Option<PathBuf>,
    nats_tls_ca: Option<PathBuf>,
    nats_tls_cert: Option<PathBuf>,
    nats_tls_key: Option<PathBuf>,
}

impl FileCluster {
    /// Applies the file's `[cluster]` table; relative paths are relative to the file's
    /// directory `base`.
    pub(super) fn apply(
        self,
        base: &Path,
        timing: &mut ClusterSettings,
        trust: &mut StreamTrust,
        auth: &mut NatsAuth,
    ) {
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        set(&mut timing.max_staleness, ms(self.max_staleness_ms));
        set(&mut timing.presence_interval, ms(self.presence_interval_ms));
        set(&mut timing.revoke_wait, ms(self.revoke_wait_ms));
        set(&mut timing.catchup_timeout, ms(self.catchup_timeout_ms));
        set(&mut timing.replicas, self.replicas);
        let path = |p: Option<PathBuf>| p.map(|p| base.join(p));
        if let Some(p) = path(self.signing_key) {
            trust.signing_key = Some(p);
        }
        set(&mut trust.trusted_keys, self.trusted_keys);
        set(&mut trust.unsigned_through, self.unsigned_through);
        let or = |slot: &mut Option<PathBuf>, v: Option<PathBuf>| {
            if v.is_some() {
                *slot = v;
            }
        };
        if self.nats_user.is_some() {
            auth.user = self.nats_user;
        }
        if let Some(p) = self.nats_password {
            auth.password = Some(Secret(p));
        }
        if let Some(t) = self.nats_token {
            auth.token = Some(Secret(t));
        }
        or(&mut auth.nkey, path(self.nats_nkey));
        or(&mut auth.creds, path(self.nats_creds));
        or(&mut auth.tls_ca, path(self.nats_tls_ca));
        or(&mut auth.tls_cert, path(self.nats_tls_cert));
        or(&mut auth.tls_key, path(self.nats_tls_key));
    }
}

/// The environment's part: `SNAPTRACK_AUTH_SIGNING_KEY`, `SNAPTRACK_AUTH_TRUSTED_KEYS`
/// (comma-separated), `SNAPTRACK_AUTH_UNSIGNED_THROUGH`, `SNAPTRACK_AUTH_NATS_PASSWORD`,
/// `SNAPTRACK_AUTH_NATS_TOKEN`.
pub(super) fn apply_env(
    env: &impl Fn(&str) -> Option<String>,
    trust: &mut StreamTrust,
    auth: &mut NatsAuth,
) {
    if let Some(p) = env("SNAPTRACK_AUTH_SIGNING_KEY").filter(|p| !p.is_empty()) {
        trust.signing_key = Some(PathBuf::from(p));
    }
    if let Some(list) = env("SNAPTRACK_AUTH_TRUSTED_KEYS") {
        trust.trusted_keys = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some(n) = env("SNAPTRACK_AUTH_UNSIGNED_THROUGH").and_then(|n| n.trim().parse().ok()) {
        trust.unsigned_through = n;
    }
    if let Some(p) = env("SNAPTRACK_AUTH_NATS_PASSWORD").filter(|p| !p.is_empty()) {
        auth.password = Some(Secret(p));
    }
    if let Some(t) = env("SNAPTRACK_AUTH_NATS_TOKEN").filter(|t| !t.is_empty()) {
        auth.token = Some(Secret(t));
    }
}

pub(super) fn check(
    nats: Option<&str>,
    c: &ClusterSettings,
    auth: &NatsAuth,
) -> Result<(), ConfigError> {
    let bad = |key: &str, reason: String| {
        Err(ConfigError::Invalid {
            key: key.into(),
            reason,
        })
    };
    if let Some(url) = nats {
        for server in url.split(',') {
            if server.trim().parse::<async_nats::ServerAddr>().is_err() {
                return bad(
                    "nats",
                    format!("{:?} is not a NATS URL", redact_url(server.trim())),
                );
            }
        }
    }
    if c.max_staleness.is_zero() || c.presence_interval.is_zero() || c.catchup_timeout.is_zero() {
        return bad("cluster", "durations must be positive".into());
    }
    if c.max_staleness <= c.presence_interval {
        return bad(
            "cluster.max_staleness_ms",
            "must be longer than presence_interval_ms".into(),
        );
    }
    if !(1..=5).contains(&c.replicas) {
        return bad("cluster.replicas", "must be between 1 and 5".into());
    }
    if auth.tls_cert.is_some() != auth.tls_key.is_some() {
        return bad(
            "cluster.nats_tls_cert",
            "nats_tls_cert and nats_tls_key go together".into(),
        );
    }
    if auth.password.is_some() && auth.user.is_none() {
        return bad("cluster.nats_password", "needs nats_user".into());
    }
    Ok(())
}

/// `url` with any user information replaced, for logs and errors:
/// `nats://node:secret@host:4222` → `nats://***@host:4222`. Works on lists and on text
/// that is not a URL at all (everything up to the last `@` of each entry is hidden).
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|entry| {
            let (scheme, rest) = match entry.find("://") {
                Some(i) => (&entry[..i + 3], &entry[i + 3..]),
                None => ("", entry),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => entry.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_information() {
        assert_eq!(
            redact_url("nats://node:s3cret@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("nats://a:b@h1:1, tls://tok@h2:2,nats://h3:3"),
            "nats://***@h1:1, tls://***@h2:2,nats://h3:3"
        );
        assert_eq!(redact_url("p@ss@host"), "***@host");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let auth = NatsAuth {
            user: Some("node".into()),
            password: Some(Secret::new("hunter2-password".into())),
            token: Some(Secret::new("tok-value".into())),
            ..Default::default()
        };
        let shown = format!("{auth:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok-value"),
            "{shown}"
        );
    }
}
