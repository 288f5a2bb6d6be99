//! What narrows a token: the scopes it carries (a subset of the configured catalogue) and the
//! addresses it may be used from. Parsed once, at generation; the verify path only asks
//! [`Restrictions::has_scope`] and [`Restrictions::allows`].

use ipnet::IpNet;
use std::net::IpAddr;

/// Longest scope name, and most scopes in a catalogue or on one token.
pub const MAX_SCOPE_LEN: usize = 64;
pub const MAX_SCOPES: usize = 64;
/// Most entries in one token's address allowlist.
pub const MAX_ALLOWED_IPS: usize = 32;

/// The scope names the service knows (`scopes` in `config.toml`). Empty: the service has no
/// scopes, and a token may carry none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeCatalogue(Vec<String>, String);

impl ScopeCatalogue {
    /// A catalogue from configured names: each 1 to 64 characters of letters, digits and
    /// `: . _ -`, no duplicates, at most 64 of them.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.len() > MAX_SCOPES {
            return Err(format!("at most {MAX_SCOPES} scopes"));
        }
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            if !is_scope_name(n) {
                return Err(format!(
                    "{n:?} is not a scope name (1 to {MAX_SCOPE_LEN} letters, digits, ':', '.', '_' or '-')"
                ));
            }
            if out.contains(n) {
                return Err(format!("{n:?} is listed twice"));
            }
            out.push(n.clone());
        }
        let joined = out.join(" ");
        Ok(ScopeCatalogue(out, joined))
    }

    /// Every scope, space-separated: `X-Auth-Scopes` of a token with every scope (made once,
    /// not per request).
    pub fn joined(&self) -> &str {
        &self.1
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|s| s == name)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }

    /// The scopes a token asks for, in catalogue order without duplicates; every name not in
    /// the catalogue is named in the error (in the order given). An empty list is refused:
    /// a token that can do nothing is a mistake, and "every scope" is said by leaving the
    /// list out.
    pub fn pick(&self, asked: &[String]) -> Result<Vec<String>, ScopeError> {
        let unknown: Vec<String> = asked
            .iter()
            .filter(|n| !self.contains(n))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(ScopeError::Unknown(unknown));
        }
        if asked.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(self
            .0
            .iter()
            .filter(|s| asked.contains(s))
            .cloned()
            .collect())
    }
}

/// Why a token's scopes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    Unknown(Vec<String>),
    Empty,
}

/// 1 to 64 letters, digits, `:`, `.`, `_` or `-`.
pub fn is_scope_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= MAX_SCOPE_LEN
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// An address allowlist entry: an address (a /32 or /128) or a network, in canonical form
/// (host bits cleared, IPv4-mapped IPv6 written as IPv4).
pub fn parse_allowed_ip(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match s.parse::<IpAddr>() {
            Ok(a) => IpNet::from(a.to_canonical()),
            Err(_) => return Err(format!("{s:?} is not an IP address or CIDR network")),
        },
    };
    let net = match net {
        IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
            let v4 = v6
                .addr()
                .to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net)
        }
        other => other,
    };
    Ok(net.trunc())
}

/// A token's allowlist from what a client sent: 1 to 32 entries, canonical, without
/// duplicates. The error names the first bad entry.
pub fn parse_allowed_ips(list: &[String]) -> Result<Vec<IpNet>, String> {
    if list.is_empty() {
        return Err("must list at least one address or network".into());
    }
    if list.len() > MAX_ALLOWED_IPS {
        return Err(format!("at most {MAX_ALLOWED_IPS} entries"));
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(list.len());
    for s in list {
        let net = parse_allowed_ip(s)?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// What a restricted token may do. A token without restrictions has none of these (every
/// scope, from anywhere), and the verify path then asks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Restrictions {
    /// `None`: every scope.
    pub scopes: Option<Box<[Box<str>]>>,
    /// `None`: from anywhere. `Some` of an empty list (only from a damaged event): from
    /// nowhere, so a list that cannot be read fails closed.
    pub allowed_ips: Option<Box<[IpNet]>>,
    /// The scopes space-separated, as `X-Auth-Scopes` says them (made once, not per
    /// request); `None` with every scope.
    pub scopes_joined: Option<Box<str>>,
}

impl Restrictions {
    /// From an event's fields; `None` when the token is not restricted at all. Allowlist
    /// entries that do not parse are left out (the command only ever writes good ones).
    pub fn from_event(
        scopes: Option<&[String]>,
        allowed_ips: Option<&[String]>,
    ) -> Option<Restrictions> {
        if scopes.is_none() && allowed_ips.is_none() {
            return None;
        }
        Some(Restrictions {
            scopes_joined: scopes.map(|s| s.join(" ").into()),
            scopes: scopes.map(|s| s.iter().map(|n| n.as_str().into()).collect()),
            allowed_ips: allowed_ips
                .map(|l| l.iter().filter_map(|s| parse_allowed_ip(s).ok()).collect()),
        })
    }

    /// Whether the token carries `scope`. Linear: a token carries a handful at most, and
    /// comparing short strings beats hashing them.
    #[inline]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .as_deref()
            .is_none_or(|s| s.iter().any(|n| &**n == scope))
    }

    /// Whether a call from `ip` may use the token. An unknown address (no peer) is allowed
    /// only when the token has no allowlist.
    #[inline]
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        match (&self.allowed_ips, ip) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(nets), Some(ip)) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(&ip))
            }
        }
    }

    /// The scopes as the event and lists carry them.
    pub fn scope_names(&self) -> Option<Vec<String>> {
        self.scopes
            .as_deref()
            .map(|s| s.iter().map(|n| n.to_string()).collect())
    }

    /// The allowlist as the event and lists carry it.
    pub fn ip_strings(&self) -> Option<Vec<String>> {
        self.allowed_ips
            .as_deref()
            .map(|l| l.iter().map(|n| n.to_string()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_catalogue_picks_known_scopes_in_its_order_and_names_the_unknown() {
        let c = ScopeCatalogue::parse(&names(&["websites:read", "websites:write", "reports:read"]))
            .unwrap();
        assert_eq!(
            c.pick(&names(&["reports:read", "websites:read", "reports:read"])),
            Ok(names(&["websites:read", "reports:read"]))
        );
        assert_eq!(
            c.pick(&names(&["websites:read", "admin", "x y"])),
            Err(ScopeError::Unknown(names(&["admin", "x y"])))
        );
        assert_eq!(c.pick(&[]), Err(ScopeError::Empty));
        assert!(ScopeCatalogue::parse(&names(&["a", "a"])).is_err());
        assert!(ScopeCatalogue::parse(&names(&["has space"])).is_err());
        assert!(ScopeCatalogue::parse(&names(&[""])).is_err());
    }

    #[test]
    fn allowlists_take_addresses_and_networks_of_both_families_in_canonical_form() {
        let got = parse_allowed_ips(&names(&[
            "203.0.113.7",
            "10.1.2.3/8",
            "2001:db8::1/32",
            "::ffff:192.0.2.1",
            "2001:db8::5",
            "10.0.0.0/8",
        ]))
        .unwrap();
        let want: Vec<IpNet> = [
            "203.0.113.7/32",
            "10.0.0.0/8",
            "2001:db8::/32",
            "192.0.2.1/32",
            "2001:db8::5/128",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(got, want);
        for bad in ["", "10.0.0.0/33", "example.com", "1.2.3", "::1/129"] {
            assert!(parse_allowed_ips(&names(&[bad])).is_err(), "{bad}");
        }
        assert!(parse_allowed_ips(&[]).is_err());
        assert!(parse_allowed_ips(&vec!["10.0.0.1".to_string(); MAX_ALLOWED_IPS + 1]).is_err());
    }

    #[test]
    fn restrictions_check_scopes_and_addresses() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let r = Restrictions::from_event(
            Some(&names(&["websites:read"])),
            Some(&names(&["10.0.0.0/8", "2001:db8::5/128"])),
        )
        .unwrap();
        assert!(r.has_scope("websites:read"));
        assert!(!r.has_scope("websites:write"));
        assert!(r.allows(ip("10.9.8.7")));
        assert!(r.allows(ip("::ffff:10.9.8.7")), "mapped IPv4 is IPv4");
        assert!(r.allows(ip("2001:db8::5")));
        assert!(!r.allows(ip("2001:db8::6")));
        assert!(!r.allows(ip("11.0.0.1")));
        assert!(!r.allows(None));
        let open = Restrictions::from_event(Some(&names(&["a"])), None).unwrap();
        assert!(open.allows(None) && open.allows(ip("1.1.1.1")));
        assert_eq!(Restrictions::from_event(None, None), None);
        let damaged = Restrictions::from_event(None, Some(&names(&["junk"]))).unwrap();
        assert!(
            !damaged.allows(ip("1.1.1.1")),
            "an unreadable list fails closed"
        );
    }
}
