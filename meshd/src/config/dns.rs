//! The DNS part of the configuration: where the DNS server listens, the domains it answers
//! for, the upstream resolvers for other names, and Consul's `dns_config` knobs (TTLs,
//! `only_passing`, `a_record_limit`). Also the servers' virtual IP range.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, FileConfig, Origin};
use crate::cli::AgentArgs;
use registry::duration::parse_go_duration;

pub const DEFAULT_DNS_ADDR: &str = "127.0.0.1:8600";
pub const DEFAULT_DOMAIN: &str = "mesh";
pub const DEFAULT_VIRTUAL_IP_RANGE: &str = "127.100.0.0/16";
/// As Consul's `dns_config.recursor_timeout`.
pub const DEFAULT_RECURSOR_TIMEOUT: Duration = Duration::from_secs(2);
/// Port of a recursor given as a bare IP.
const DNS_PORT: u16 = 53;

/// Consul's `dns_config` table.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileDnsConfig {
    /// Leave instances whose checks warn out of answers.
    pub only_passing: Option<bool>,
    /// TTL of service records: a map from service name (or `*` for every other) to a Go
    /// duration.
    pub service_ttl: Option<BTreeMap<String, String>>,
    /// TTL of node records (Go duration).
    pub node_ttl: Option<String>,
    /// At most this many A/AAAA records in an answer (0: no limit).
    pub a_record_limit: Option<u32>,
    /// How long a recursor may take to answer (Go duration, default 2s).
    pub recursor_timeout: Option<String>,
}

/// The validated DNS configuration.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// UDP and TCP address (the same port for both).
    pub addr: SocketAddr,
    /// The primary domain, lowercase, without dots at the ends (`mesh`).
    pub domain: String,
    pub alt_domain: Option<String>,
    /// Upstream resolvers for names outside the domains; empty: such names are refused.
    pub recursors: Vec<SocketAddr>,
    pub only_passing: bool,
    /// Per-service TTLs; `*` is the default for the others.
    pub service_ttl: BTreeMap<String, Duration>,
    pub node_ttl: Duration,
    pub a_record_limit: u32,
    pub recursor_timeout: Duration,
    /// Servers: the range virtual IPs are taken from.
    pub virtual_ip_range: String,
}

impl DnsConfig {
    /// The TTL (seconds) of the records of service `name`.
    pub fn service_ttl(&self, name: &str) -> u32 {
        self.service_ttl
            .get(name)
            .or_else(|| self.service_ttl.get("*"))
            .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
            .unwrap_or(0)
    }

    pub fn node_ttl(&self) -> u32 {
        self.node_ttl.as_secs().min(u32::MAX as u64) as u32
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8600)),
            domain: DEFAULT_DOMAIN.into(),
            alt_domain: None,
            recursors: Vec::new(),
            only_passing: false,
            service_ttl: BTreeMap::new(),
            node_ttl: Duration::ZERO,
            a_record_limit: 0,
            recursor_timeout: DEFAULT_RECURSOR_TIMEOUT,
            virtual_ip_range: DEFAULT_VIRTUAL_IP_RANGE.into(),
        }
    }
}

/// Parses a recursor: `IP:PORT`, `[IPv6]:PORT` or a bare `IP` (port 53).
pub fn parse_recursor(s: &str) -> Result<SocketAddr, String> {
    super::parse_ip_port(s, DNS_PORT)
}

/// Checks a domain: DNS labels of letters, digits and `-`; returns it lowercase without the
/// leading and trailing dots.
pub fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err("must not be empty".into());
    }
    if d.len() > 200 {
        return Err("must be at most 200 characters".into());
    }
    for label in d.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} must be 1 to 63 characters"));
        }
        if !label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "label {label:?} may hold only letters, digits, '-' and '_'"
            ));
        }
    }
    Ok(d)
}

/// Builds the DNS configuration from flags over the file.
pub(super) fn build(
    args: &AgentArgs,
    file: &FileConfig,
    file_name: &str,
) -> Result<DnsConfig, ConfigError> {
    let origin = Origin(file_name);
    let invalid = |flag: bool, key: &'static str, value: String, reason: String| {
        origin.invalid(flag, key, value, reason)
    };

    let addr = match (&args.dns_addr, &file.dns_addr) {
        (Some(a), _) => *a,
        (None, Some(s)) => s.parse().map_err(|e| {
            invalid(
                false,
                "dns_addr",
                s.clone(),
                format!("{e}; expected IP:PORT, for example {DEFAULT_DNS_ADDR}"),
            )
        })?,
        (None, None) => SocketAddr::from((Ipv4Addr::LOCALHOST, 8600)),
    };

    let domain_raw = args
        .domain
        .clone()
        .or(file.domain.clone())
        .unwrap_or_else(|| DEFAULT_DOMAIN.into());
    let domain = parse_domain(&domain_raw)
        .map_err(|r| invalid(args.domain.is_some(), "domain", domain_raw.clone(), r))?;
    let alt_domain = match args.alt_domain.clone().or(file.alt_domain.clone()) {
        None => None,
        Some(raw) => {
            let d = parse_domain(&raw)
                .map_err(|r| invalid(args.alt_domain.is_some(), "alt_domain", raw.clone(), r))?;
            if d == domain {
                return Err(invalid(
                    args.alt_domain.is_some(),
                    "alt_domain",
                    raw,
                    "must differ from `domain`".into(),
                ));
            }
            Some(d)
        }
    };

    let from_flags = !args.recursor.is_empty();
    let raw_recursors = if from_flags {
        args.recursor.clone()
    } else {
        file.recursors.clone().unwrap_or_default()
    };
    let mut recursors = Vec::new();
    for r in &raw_recursors {
        recursors.push(
            parse_recursor(r)
                .map_err(|reason| invalid(from_flags, "recursors", r.clone(), reason))?,
        );
    }

    let dc = file.dns_config.clone().unwrap_or_default();
    let mut service_ttl = BTreeMap::new();
    for (name, raw) in dc.service_ttl.clone().unwrap_or_default() {
        let d = parse_go_duration(&raw).map_err(|e| {
            invalid(
                false,
                "dns_config.service_ttl",
                format!("{name} = {raw}"),
                e.to_string(),
            )
        })?;
        service_ttl.insert(name, d);
    }
    let node_ttl = match &dc.node_ttl {
        None => Duration::ZERO,
        Some(raw) => parse_go_duration(raw)
            .map_err(|e| invalid(false, "dns_config.node_ttl", raw.clone(), e.to_string()))?,
    };

    let recursor_timeout = match &dc.recursor_timeout {
        None => DEFAULT_RECURSOR_TIMEOUT,
        Some(raw) => match parse_go_duration(raw) {
            Ok(d) if d >= Duration::from_millis(10) => d,
            Ok(_) => {
                return Err(invalid(
                    false,
                    "dns_config.recursor_timeout",
                    raw.clone(),
                    "must be at least 10ms".into(),
                ))
            }
            Err(e) => {
                return Err(invalid(
                    false,
                    "dns_config.recursor_timeout",
                    raw.clone(),
                    e.to_string(),
                ))
            }
        },
    };

    let virtual_ip_range = file
        .virtual_ip_range
        .clone()
        .unwrap_or_else(|| DEFAULT_VIRTUAL_IP_RANGE.into());
    virtual_ip_range
        .parse::<registry::Ipv4Cidr>()
        .map_err(|e| {
            invalid(
                false,
                "virtual_ip_range",
                virtual_ip_range.clone(),
                e.to_string(),
            )
        })?;

    Ok(DnsConfig {
        addr,
        domain,
        alt_domain,
        recursors,
        only_passing: dc.only_passing.unwrap_or(false),
        service_ttl,
        node_ttl,
        a_record_limit: dc.a_record_limit.unwrap_or(0),
        recursor_timeout,
        virtual_ip_range,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(parse_domain("Mesh.").unwrap(), "mesh");
        assert_eq!(parse_domain("a.b").unwrap(), "a.b");
        assert!(parse_domain("").is_err());
        assert!(parse_domain("a..b").is_err());
        assert!(parse_domain("a b").is_err());
    }

    #[test]
    fn recursors() {
        assert_eq!(
            parse_recursor("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_recursor("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert!(parse_recursor("dns.example").is_err());
    }

    #[test]
    fn ttls() {
        let mut c = DnsConfig::default();
        c.service_ttl.insert("*".into(), Duration::from_secs(5));
        c.service_ttl.insert("web".into(), Duration::from_secs(1));
        assert_eq!(c.service_ttl("web"), 1);
        assert_eq!(c.service_ttl("db"), 5);
        assert_eq!(DnsConfig::default().service_ttl("x"), 0);
    }
}
