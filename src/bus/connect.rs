//! How a node connects to NATS: the servers, its credentials (user and password, token,
//! nkey, `.creds` file) and TLS, with no secret in any log line or error.
//!
//! Credentials in a URL (`nats://user:password@host:4222`) are taken out of it before the
//! client sees the URL: the client logs server addresses, and sends only the options' user
//! and password anyway.

use crate::config::{redact_url, NatsAuth};
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use std::time::Duration;

/// Connects to the servers of `url` (comma-separated) as `auth` says.
///
/// A first attempt is made at once: credentials the server refuses are a configuration
/// error, returned (the node stops with one line naming the problem, never the secret).
/// A server that cannot be reached is not: the client then keeps connecting in the
/// background, and every operation fails with "unavailable" until it has.
pub async fn connect(
    url: &str,
    node_id: &str,
    auth: &NatsAuth,
) -> Result<async_nats::Client, String> {
    // Two TLS back ends are linked (the HTTP side's ring, the NATS client's default): name
    // one, or the NATS client's TLS panics. A provider installed already stays.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let shown = redact_url(url);
    let mut servers = Vec::new();
    // From the first URL that has any: (user, password), or a token alone (`nats://TOKEN@host`).
    let mut url_user: Option<(String, Option<String>)> = None;
    for entry in url.split(',') {
        let addr: ServerAddr = entry
            .trim()
            .parse()
            .map_err(|_| format!("bad NATS URL {:?}", redact_url(entry.trim())))?;
        if let Some(user) = addr.username() {
            url_user.get_or_insert_with(|| (decode(user), addr.password().map(decode)));
        }
        servers.push(without_credentials(&addr)?);
    }
    let first = options(node_id, auth, url_user.as_ref())
        .await?
        .connect(servers.clone())
        .await;
    match first {
        Ok(client) => Ok(client),
        Err(e)
            if matches!(
                e.kind(),
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
            ) =>
        {
            Err(format!(
                "NATS at {shown} refused this node's credentials ({}); check the user and password, token, nkey or creds file in [cluster]",
                describe(auth, url_user.is_some())
            ))
        }
        Err(e) if matches!(e.kind(), ConnectErrorKind::Tls) || tls_refused(&e) => Err(format!(
            "TLS with NATS at {shown} failed: {e}; check nats_tls_ca, nats_tls_cert and nats_tls_key"
        )),
        Err(e) => {
            tracing::warn!(nats = %shown, error = %e, "NATS not reachable yet; connecting in the background");
            options(node_id, auth, url_user.as_ref())
                .await?
                .retry_on_initial_connect()
                .connect(servers)
                .await
                .map_err(|e| format!("cannot connect to NATS at {shown}: {e}"))
        }
    }
}

/// The client's options: name, reconnection, credentials and TLS.
async fn options(
    node_id: &str,
    auth: &NatsAuth,
    url_user: Option<&(String, Option<String>)>,
) -> Result<ConnectOptions, String> {
    let mut o = ConnectOptions::new()
        .name(format!("snaptrack-auth {node_id}"))
        // Reconnect quickly: while disconnected, commands fail and checks go stale.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).min(1000))
        })
        .connection_timeout(Duration::from_secs(2));
    if let (Some(user), Some(pass)) = (&auth.user, &auth.password) {
        o = o.user_and_password(user.clone(), pass.expose().to_owned());
    } else if let Some((user, pass)) = url_user {
        o = match pass {
            Some(pass) => o.user_and_password(user.clone(), pass.clone()),
            None => o.token(user.clone()),
        };
    }
    if let Some(token) = &auth.token {
        o = o.token(token.expose().to_owned());
    }
    if let Some(path) = &auth.nkey {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the NATS nkey seed {}: {e}", path.display()))?;
        let seed = seed.trim().to_owned();
        if nkeys::KeyPair::from_seed(&seed).is_err() {
            return Err(format!(
                "the NATS nkey file {} holds no nkey seed",
                path.display()
            ));
        }
        o = o.nkey(seed);
    }
    if let Some(path) = &auth.creds {
        o = o.credentials_file(path).await.map_err(|e| {
            format!(
                "cannot read the NATS credentials file {}: {}",
                path.display(),
                e.kind()
            )
        })?;
    }
    if let Some(ca) = &auth.tls_ca {
        o = o.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&auth.tls_cert, &auth.tls_key) {
        o = o
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    Ok(o)
}

/// Whether the server answered, but the TLS handshake failed: it refused this node's
/// certificate (or sent none this node trusts). Unlike an unreachable server, that does not
/// mend by waiting.
fn tls_refused(e: &async_nats::ConnectError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let io_inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if io_inner || err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        cur = err.source();
    }
    // The client may keep only the message.
    let text = e.to_string();
    text.contains("received fatal alert") || text.contains("invalid peer certificate")
}

/// What kind of credentials were offered (never their values).
fn describe(auth: &NatsAuth, url_user: bool) -> String {
    let mut kinds = Vec::new();
    if let Some(user) = &auth.user {
        kinds.push(format!("user {user:?}"));
    } else if url_user {
        kinds.push("the user in the URL".into());
    }
    if auth.token.is_some() {
        kinds.push("a token".into());
    }
    if let Some(p) = &auth.nkey {
        kinds.push(format!("the nkey in {}", p.display()));
    }
    if let Some(p) = &auth.creds {
        kinds.push(format!("the creds file {}", p.display()));
    }
    if auth.tls_cert.is_some() {
        kinds.push("a TLS client certificate".into());
    }
    if kinds.is_empty() {
        "no credentials were given".into()
    } else {
        format!("offered {}", kinds.join(", "))
    }
}

/// Percent-decoding of a URL's user or password (`p%40ss` is `p@ss`).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The address without user and password.
fn without_credentials(addr: &ServerAddr) -> Result<ServerAddr, String> {
    let url = addr.as_url_str();
    let Some(scheme_end) = url.find("://") else {
        return Ok(addr.clone());
    };
    let rest = &url[scheme_end + 3..];
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    format!("{}{}", &url[..scheme_end + 3], &rest[host_start..])
        .parse()
        .map_err(|_| format!("bad NATS URL {:?}", redact_url(url)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_are_decoded() {
        let addr: ServerAddr = "nats://node:p%40ss@127.0.0.1:4222".parse().unwrap();
        assert_eq!(addr.username(), Some("node"));
        assert_eq!(decode(addr.password().unwrap()), "p@ss");
        let bare = without_credentials(&addr).unwrap();
        assert_eq!(bare.username(), None);
        assert_eq!(bare.host(), "127.0.0.1");
        assert_eq!(bare.port(), 4222);
        assert!(!format!("{bare:?}").contains("p%40ss"));
        assert_eq!(decode("a%2"), "a%2");
        assert_eq!(decode("%41b"), "Ab");
        assert_eq!(decode("%é%"), "%é%");
    }
}
