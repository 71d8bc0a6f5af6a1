//! Data-plane keys: `leaf_cert_ttl` (lifetime of service leaves), on servers
//! `default_intention_policy` (what callers no intention names get, cluster-wide), and the
//! proxy's capture and bounds: `proxy_capture`, `proxy_listener_limit`, `proxy_reserved_fds`,
//! `proxy_max_connections`.

use std::time::Duration;

use registry::intention::Action;

use crate::proxy::budget::DEFAULT_MAX_CONNECTIONS;
use crate::proxy::capture::{Mode, DEFAULT_LISTENER_LIMIT};

use super::{ConfigError, FileConfig, Origin};
use registry::duration::parse_go_duration;

/// Service leaves live 72 hours unless configured (Consul's default).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub leaf_ttl: Duration,
    /// Written to the registry by servers when set; `--dev` sets `allow`.
    pub default_intention_policy: Option<Action>,
    pub capture: Mode,
    /// Virtual-IP listeners at most, when capture falls back to listeners.
    pub listener_limit: usize,
    /// Descriptors the data plane leaves free (`None`: a tenth of the limit, at least 256).
    pub reserved_fds: Option<u64>,
    pub max_connections: u64,
}

pub fn build(
    file: &FileConfig,
    origin: &Origin<'_>,
    dev: bool,
) -> Result<ConnectConfig, ConfigError> {
    let leaf_ttl = match &file.leaf_cert_ttl {
        None => DEFAULT_LEAF_TTL,
        Some(raw) => {
            let bad = |reason: String| origin.invalid(false, "leaf_cert_ttl", raw.clone(), reason);
            let d = parse_go_duration(raw).map_err(|e| bad(e.to_string()))?;
            if d < registry::ca::MIN_LEAF_TTL {
                return Err(bad("must be at least 1m".into()));
            }
            d
        }
    };
    let default_intention_policy = match &file.default_intention_policy {
        Some(raw) => Some(Action::parse(raw).map_err(|reason| {
            origin.invalid(false, "default_intention_policy", raw.clone(), reason)
        })?),
        None if dev => Some(Action::Allow),
        None => None,
    };
    let capture = match &file.proxy_capture {
        None => Mode::Auto,
        Some(raw) => raw
            .parse()
            .map_err(|reason| origin.invalid(false, "proxy_capture", raw.clone(), reason))?,
    };
    let listener_limit = file
        .proxy_listener_limit
        .unwrap_or(DEFAULT_LISTENER_LIMIT as u64);
    let listener_limit = usize::try_from(listener_limit)
        .ok()
        .filter(|n| *n <= 1_000_000)
        .ok_or_else(|| {
            origin.invalid(
                false,
                "proxy_listener_limit",
                listener_limit.to_string(),
                "must be at most 1000000 (each is a listening socket)".into(),
            )
        })?;
    if let Some(n) = file.proxy_reserved_fds {
        if n < 16 {
            return Err(origin.invalid(
                false,
                "proxy_reserved_fds",
                n.to_string(),
                "must be at least 16: the API, DNS and Raft need descriptors to keep serving"
                    .into(),
            ));
        }
    }
    let max_connections = file
        .proxy_max_connections
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(origin.invalid(
            false,
            "proxy_max_connections",
            "0".into(),
            "must be at least 1".into(),
        ));
    }
    Ok(ConnectConfig {
        leaf_ttl,
        default_intention_policy,
        capture,
        listener_limit,
        reserved_fds: file.proxy_reserved_fds,
        max_connections,
    })
}
