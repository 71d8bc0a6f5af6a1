//! The cluster part of the configuration: the QUIC bind and advertised addresses, how a server
//! bootstraps or joins, how an agent enrolls, the TLS files, and the liveness bounds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, FileConfig, Origin};
use crate::cli::AgentArgs;
use registry::duration::parse_go_duration;

/// UDP port of the QUIC endpoint.
pub const DEFAULT_QUIC_PORT: u16 = 8301;
pub const DEFAULT_LIVENESS_TIMEOUT: &str = "10s";
pub const DEFAULT_HEARTBEAT_INTERVAL: &str = "1s";

/// The PEM files of this host's TLS identity.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
}

/// How this host takes part in the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// QUIC (UDP) address to bind.
    pub bind: SocketAddr,
    /// IP other hosts reach this one at; the QUIC port is the bound one.
    pub advertise_ip: IpAddr,
    /// Servers: bootstrap once this many servers know each other (0: join an existing cluster).
    pub bootstrap_expect: u32,
    /// Servers to join (`IP:PORT`), retried until one answers.
    pub retry_join: Vec<SocketAddr>,
    pub join_token: Option<String>,
    pub tls: TlsFiles,
    /// A node without heartbeats for this long is marked failed.
    pub liveness_timeout: Duration,
    /// How often an agent heartbeats.
    pub heartbeat_interval: Duration,
    /// Leave the cluster (deregistering this node) on SIGTERM/SIGINT.
    pub leave_on_terminate: bool,
}

/// Parses `IP:PORT` or `IP` (port 8301).
pub fn parse_join_addr(s: &str) -> Result<SocketAddr, String> {
    super::parse_ip_port(s, DEFAULT_QUIC_PORT)
}

/// Builds the cluster configuration. `src(flag_given)` names where a key came from; `server`
/// and `dev` are already decided.
pub(super) fn build(
    args: &AgentArgs,
    file: &FileConfig,
    file_name: &str,
    server: bool,
    http_ip: IpAddr,
) -> Result<ClusterConfig, ConfigError> {
    let origin = Origin(file_name);
    let invalid = |flag: bool, key: &'static str, value: String, reason: String| {
        origin.invalid(flag, key, value, reason)
    };

    let bind = match (&args.bind, &file.bind_addr) {
        (Some(a), _) => *a,
        (None, Some(s)) => s.parse().map_err(|e| {
            invalid(
                false,
                "bind_addr",
                s.clone(),
                format!("{e}; expected IP:PORT, for example 0.0.0.0:8301"),
            )
        })?,
        (None, None) if args.dev => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_QUIC_PORT)
        }
        (None, None) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_QUIC_PORT),
    };

    let advertise_ip = match (&args.advertise, &file.advertise_addr) {
        (Some(ip), _) => *ip,
        (None, Some(a)) => a.parse::<IpAddr>().map_err(|e| {
            invalid(
                false,
                "advertise_addr",
                a.clone(),
                format!("{e}; expected an IP address"),
            )
        })?,
        (None, None) if !bind.ip().is_unspecified() => bind.ip(),
        (None, None) if !http_ip.is_unspecified() => http_ip,
        (None, None) => {
            return Err(invalid(
                false,
                "advertise_addr",
                String::new(),
                "bind_addr and http_addr are unspecified (0.0.0.0): set advertise_addr \
                 (--advertise IP) to the address other hosts reach this one at"
                    .into(),
            ))
        }
    };

    let flag_join = !args.join.is_empty();
    let join_strings: Vec<String> = if flag_join {
        args.join.clone()
    } else {
        file.retry_join.clone().unwrap_or_default()
    };
    let mut retry_join = Vec::new();
    for s in &join_strings {
        let a = parse_join_addr(s).map_err(|r| invalid(flag_join, "retry_join", s.clone(), r))?;
        retry_join.push(a);
    }

    let bootstrap_expect = match args.bootstrap_expect.or(file.bootstrap_expect) {
        Some(n) if !server => {
            return Err(invalid(
                args.bootstrap_expect.is_some(),
                "bootstrap_expect",
                n.to_string(),
                "only servers bootstrap a cluster; add server = true (--server) or remove it"
                    .into(),
            ))
        }
        Some(n) if n == 0 || n > 7 => {
            return Err(invalid(
                args.bootstrap_expect.is_some(),
                "bootstrap_expect",
                n.to_string(),
                "must be 1 to 7 (3 or 5 recommended)".into(),
            ))
        }
        Some(n) => n,
        None if args.dev => 1,
        None => 0,
    };

    let join_token = args.join_token.clone().or(file.join_token.clone());
    if let Some(t) = &join_token {
        if t.is_empty() || t.len() > 512 || t.chars().any(|c| c.is_control()) {
            return Err(invalid(
                args.join_token.is_some(),
                "join_token",
                "<redacted>".into(),
                "must be 1-512 printable characters".into(),
            ));
        }
    }
    let tls = TlsFiles {
        ca_file: args.ca_file.clone().or(file.ca_file.clone()),
        cert_file: args.cert_file.clone().or(file.cert_file.clone()),
        key_file: args.key_file.clone().or(file.key_file.clone()),
        ca_key_file: args.ca_key_file.clone().or(file.ca_key_file.clone()),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        return Err(invalid(
            false,
            "cert_file",
            String::new(),
            "cert_file and key_file go together: set both or neither".into(),
        ));
    }

    if !args.dev {
        if tls.ca_file.is_none() {
            return Err(invalid(
                false,
                "ca_file",
                String::new(),
                "every host needs the mesh CA certificate (create one with \
                 `meshctl tls ca create`), or run with --dev"
                    .into(),
            ));
        }
        if server {
            if tls.cert_file.is_none() {
                return Err(invalid(
                    false,
                    "cert_file",
                    String::new(),
                    "a server needs its certificate and key (`meshctl tls cert create --server \
                     --node NAME`): set cert_file and key_file"
                        .into(),
                ));
            }
            if bootstrap_expect == 0 && retry_join.is_empty() {
                return Err(invalid(
                    false,
                    "bootstrap_expect",
                    String::new(),
                    "a server needs bootstrap_expect (to form a cluster) or retry_join (to join \
                     one)"
                        .into(),
                ));
            }
            if bootstrap_expect > 1 && retry_join.is_empty() {
                return Err(invalid(
                    false,
                    "retry_join",
                    String::new(),
                    format!(
                        "bootstrap_expect = {bootstrap_expect} needs the other servers' \
                         addresses in retry_join (--join ADDR)"
                    ),
                ));
            }
        } else {
            if retry_join.is_empty() {
                return Err(invalid(
                    false,
                    "retry_join",
                    String::new(),
                    "an agent needs at least one server address to join (--join ADDR)".into(),
                ));
            }
            if tls.cert_file.is_none() && join_token.is_none() {
                return Err(invalid(
                    false,
                    "join_token",
                    String::new(),
                    "an agent enrolls with the servers' join token (--join-token TOKEN) \
                     unless it has a node certificate (cert_file, key_file)"
                        .into(),
                ));
            }
        }
    }

    let dur = |key: &'static str, v: &Option<String>, default: &str| {
        let s = v.clone().unwrap_or_else(|| default.to_string());
        match parse_go_duration(&s) {
            Ok(d) if d >= Duration::from_millis(100) => Ok(d),
            Ok(_) => Err(invalid(false, key, s, "must be at least 100ms".into())),
            Err(e) => Err(invalid(false, key, s, e.to_string())),
        }
    };
    let liveness_timeout = dur(
        "liveness_timeout",
        &file.liveness_timeout,
        DEFAULT_LIVENESS_TIMEOUT,
    )?;
    let heartbeat_interval = dur(
        "heartbeat_interval",
        &file.heartbeat_interval,
        DEFAULT_HEARTBEAT_INTERVAL,
    )?;
    if heartbeat_interval * 2 > liveness_timeout {
        return Err(invalid(
            false,
            "liveness_timeout",
            format!("{liveness_timeout:?}"),
            format!(
                "must be at least twice heartbeat_interval ({heartbeat_interval:?}), or one \
                 lost heartbeat would mark a node failed"
            ),
        ));
    }

    Ok(ClusterConfig {
        bind,
        advertise_ip,
        bootstrap_expect,
        retry_join,
        join_token,
        tls,
        liveness_timeout,
        heartbeat_interval,
        // Consul's defaults: agents leave on terminate, servers do not.
        leave_on_terminate: file.leave_on_terminate.unwrap_or(!server),
    })
}
