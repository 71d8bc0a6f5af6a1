//! Data-plane keys: `leaf_cert_ttl` (lifetime of service leaves) and, on servers,
//! `default_intention_policy` (what callers no intention names get, cluster-wide).

use std::time::Duration;

use registry::intention::Action;

use super::{ConfigError, FileConfig, Origin};
use crate::duration::parse_go_duration;

/// Service leaves live 72 hours unless configured (Consul's default).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub leaf_ttl: Duration,
    /// Written to the registry by servers when set; `--dev` sets `allow`.
    pub default_intention_policy: Option<Action>,
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
    Ok(ConnectConfig {
        leaf_ttl,
        default_intention_policy,
    })
}
