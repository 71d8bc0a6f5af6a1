//! Agent configuration: the TOML file, merged with flags, validated into a [`RuntimeConfig`].
//!
//! Every problem is reported with the file (or flag), the key, the bad value and the reason,
//! before anything is bound or opened.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::AgentArgs;
pub use cluster::ClusterConfig;
pub use connect::ConnectConfig;
pub use dns::{DnsConfig, FileDnsConfig};

mod cluster;
mod connect;
mod dns;
use registry::duration::parse_go_duration;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";
pub const DEFAULT_DATACENTER: &str = "dc1";
pub const DEFAULT_SNAPSHOT_THRESHOLD: u64 = 8192;
pub const DEFAULT_CHECK_UPDATE_INTERVAL: &str = "5m";
pub const DEFAULT_CACHE_MB: u64 = 64;
/// The most runtime threads `worker_threads` may ask for.
pub const MAX_WORKER_THREADS: u64 = 1024;
pub const DEFAULT_DRAIN_TIMEOUT: &str = "30s";

/// A configuration error; its message names the source, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The TOML is malformed, or a key is unknown or of the wrong type.
    #[error("config file {path}{}: {}{reason}", line.map(|l| format!(", line {l}")).unwrap_or_default(), if key.is_empty() { String::new() } else { format!("key `{key}`: ") })]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        key: String,
        reason: String,
    },
    #[error("{source_name}: key `{key}` = {value:?}: {reason}")]
    Invalid {
        source_name: String,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// Parses `IP:PORT`, `[IPv6]:PORT`, or a bare `IP` with `default_port`. Host names are not
/// resolved.
pub fn parse_ip_port(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| {
            format!("expected IP:PORT or IP (port {default_port}); host names are not resolved")
        })
}

/// Where a key's value came from, for error messages: the command line or the named file.
pub(crate) struct Origin<'a>(pub &'a str);

impl Origin<'_> {
    pub fn name(&self, from_flag: bool) -> String {
        if from_flag {
            "command line".to_string()
        } else {
            self.0.to_string()
        }
    }

    /// The error for a bad value of `key`.
    pub fn invalid(
        &self,
        from_flag: bool,
        key: &'static str,
        value: String,
        reason: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            source_name: self.name(from_flag),
            key,
            value,
            reason,
        }
    }
}

/// The keys of the TOML file. Unknown keys are errors.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_name: Option<String>,
    pub datacenter: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub server: Option<bool>,
    pub http_addr: Option<String>,
    /// Address other hosts reach this node at (default: the HTTP address's IP).
    pub advertise_addr: Option<String>,
    pub config_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_json: Option<bool>,
    pub node_meta: Option<BTreeMap<String, String>>,
    /// Raft log entries between snapshots.
    pub snapshot_threshold: Option<u64>,
    /// How often a check whose status is unchanged may write new output (Go duration).
    pub check_update_interval: Option<String>,
    /// sled cache size in MiB.
    pub cache_mb: Option<u64>,
    /// QUIC (UDP) bind address, `IP:PORT`.
    pub bind_addr: Option<String>,
    pub bootstrap_expect: Option<u32>,
    /// Servers to join, `IP:PORT` (retried until one answers).
    pub retry_join: Option<Vec<String>>,
    pub join_token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    /// Go duration after which a node without heartbeats is marked failed.
    pub liveness_timeout: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub leave_on_terminate: Option<bool>,
    /// DNS server address (UDP and TCP), `IP:PORT`.
    pub dns_addr: Option<String>,
    /// The DNS domain meshd answers for (default `mesh`).
    pub domain: Option<String>,
    /// A second domain answered like `domain` (for example `consul`).
    pub alt_domain: Option<String>,
    /// Upstream resolvers for names outside the domains (`IP` or `IP:PORT`).
    pub recursors: Option<Vec<String>>,
    /// Consul's DNS knobs.
    pub dns_config: Option<FileDnsConfig>,
    /// Servers: the IPv4 range service virtual IPs come from.
    pub virtual_ip_range: Option<String>,
    /// Lifetime of service leaf certificates (Go duration, at least 1m; default 72h).
    pub leaf_cert_ttl: Option<String>,
    /// Servers: `allow` or `deny` for callers no intention names (cluster-wide).
    pub default_intention_policy: Option<String>,
    /// At SIGTERM, how long open HTTP requests and proxied connections may take to finish
    /// (Go duration, default 30s).
    pub drain_timeout: Option<String>,
    /// How connections to virtual IPs reach the data plane: `auto` (default), `sk_lookup`
    /// or `listeners`.
    pub proxy_capture: Option<String>,
    /// With `listeners` capture: the most virtual-IP listening sockets (default 1024).
    pub proxy_listener_limit: Option<u64>,
    /// File descriptors the data plane always leaves free for the control plane (default: a
    /// tenth of RLIMIT_NOFILE, at least 256).
    pub proxy_reserved_fds: Option<u64>,
    /// Proxied connections at once, both directions (default 16384).
    pub proxy_max_connections: Option<u64>,
    /// Threads of the async runtime that runs everything but blocking disk work (default: one
    /// per core). On a host whose cores are busy with the applications meshd serves, fewer
    /// threads hand work between cores less often (see tests/bench/RESULTS.md).
    pub worker_threads: Option<u64>,
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub dev: bool,
    pub server: bool,
    pub node_name: String,
    pub datacenter: String,
    /// `None` in dev mode without --data-dir: a temporary directory is used.
    pub data_dir: Option<PathBuf>,
    pub http_addr: SocketAddr,
    pub advertise_addr: String,
    pub config_dir: Option<PathBuf>,
    pub log_level: String,
    pub log_json: bool,
    pub node_meta: BTreeMap<String, String>,
    pub snapshot_threshold: u64,
    pub check_update_interval: Duration,
    pub cache_bytes: u64,
    pub cluster: ClusterConfig,
    pub dns: DnsConfig,
    pub connect: ConnectConfig,
    pub drain_timeout: Duration,
    /// `None`: one per core.
    pub worker_threads: Option<usize>,
}

/// Reads and parses a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let parse_error = |key: String, e: &toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        key,
        reason: e.message().trim().replace('\n', " "),
    };
    let de = toml::Deserializer::parse(&text).map_err(|e| {
        // A syntax error has no key path; a duplicate key's span is the key itself.
        let key = match e.span() {
            Some(s) if e.message().starts_with("duplicate key") => text
                .get(s)
                .map(|k| k.trim().trim_matches('"').to_string())
                .unwrap_or_default(),
            _ => String::new(),
        };
        parse_error(key, &e)
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { String::new() } else { key };
        parse_error(key, e.inner())
    })
}

/// Merges flags over the file and validates the result.
pub fn build(args: &AgentArgs) -> Result<RuntimeConfig, ConfigError> {
    let file = match &args.config {
        Some(p) => read_file(p)?,
        None => FileConfig::default(),
    };
    let file_name = args
        .config
        .as_ref()
        .map(|p| format!("config file {}", p.display()))
        .unwrap_or_else(|| "defaults".into());
    // The source of a key: the flag if given, else the file.
    let origin = Origin(&file_name);
    let src = |flag_given: bool| origin.name(flag_given);

    let node_name = match (&args.node, &file.node_name) {
        (Some(n), _) | (None, Some(n)) => n.clone(),
        (None, None) => hostname(),
    };
    validate_name(&node_name).map_err(|reason| ConfigError::Invalid {
        source_name: src(args.node.is_some()),
        key: "node_name",
        value: node_name.clone(),
        reason,
    })?;

    let datacenter = args
        .datacenter
        .clone()
        .or(file.datacenter.clone())
        .unwrap_or_else(|| DEFAULT_DATACENTER.into());
    validate_name(&datacenter).map_err(|reason| ConfigError::Invalid {
        source_name: src(args.datacenter.is_some()),
        key: "datacenter",
        value: datacenter.clone(),
        reason,
    })?;

    let http_addr = match (&args.http_addr, &file.http_addr) {
        (Some(a), _) => *a,
        (None, Some(s)) => s.parse().map_err(|e| ConfigError::Invalid {
            source_name: file_name.clone(),
            key: "http_addr",
            value: s.clone(),
            reason: format!("{e}; expected IP:PORT, for example 127.0.0.1:8500"),
        })?,
        (None, None) => DEFAULT_HTTP_ADDR
            .parse()
            .map_err(|_| ConfigError::Invalid {
                source_name: "defaults".into(),
                key: "http_addr",
                value: DEFAULT_HTTP_ADDR.into(),
                reason: "bad built-in default".into(),
            })?,
    };

    let server = args.server || args.dev || file.server.unwrap_or(false);
    let data_dir = args.data_dir.clone().or(file.data_dir.clone());
    if data_dir.is_none() && !args.dev {
        return Err(ConfigError::Invalid {
            source_name: src(false),
            key: "data_dir",
            value: String::new(),
            reason: "a data directory is required unless --dev is given (use --data-dir DIR)"
                .into(),
        });
    }
    let log_level = args
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|e| ConfigError::Invalid {
        source_name: src(args.log_level.is_some()),
        key: "log_level",
        value: log_level.clone(),
        reason: format!("{e}; expected error, warn, info, debug or trace"),
    })?;

    let snapshot_threshold = file
        .snapshot_threshold
        .unwrap_or(DEFAULT_SNAPSHOT_THRESHOLD);
    if snapshot_threshold < 16 {
        return Err(ConfigError::Invalid {
            source_name: file_name.clone(),
            key: "snapshot_threshold",
            value: snapshot_threshold.to_string(),
            reason: "must be at least 16 log entries".into(),
        });
    }

    let cui = file
        .check_update_interval
        .clone()
        .unwrap_or_else(|| DEFAULT_CHECK_UPDATE_INTERVAL.into());
    let check_update_interval = parse_go_duration(&cui).map_err(|e| ConfigError::Invalid {
        source_name: file_name.clone(),
        key: "check_update_interval",
        value: cui.clone(),
        reason: e.to_string(),
    })?;

    let cache_mb = file.cache_mb.unwrap_or(DEFAULT_CACHE_MB);
    if cache_mb == 0 {
        return Err(ConfigError::Invalid {
            source_name: file_name.clone(),
            key: "cache_mb",
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }

    let dt = file
        .drain_timeout
        .clone()
        .unwrap_or_else(|| DEFAULT_DRAIN_TIMEOUT.into());
    let drain_timeout = parse_go_duration(&dt).map_err(|e| ConfigError::Invalid {
        source_name: file_name.clone(),
        key: "drain_timeout",
        value: dt.clone(),
        reason: e.to_string(),
    })?;

    let worker_threads = match file.worker_threads {
        None => None,
        Some(n @ 1..=MAX_WORKER_THREADS) => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::Invalid {
                source_name: file_name.clone(),
                key: "worker_threads",
                value: n.to_string(),
                reason: format!("must be 1 to {MAX_WORKER_THREADS}"),
            })
        }
    };

    let node_meta = file.node_meta.clone().unwrap_or_default();
    for k in node_meta.keys() {
        if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid {
                source_name: file_name.clone(),
                key: "node_meta",
                value: k.clone(),
                reason: "meta keys must be 1-128 printable characters".into(),
            });
        }
    }

    let cluster = cluster::build(args, &file, &file_name, server, http_addr.ip())?;
    let advertise_addr = cluster.advertise_ip.to_string();
    let dns = dns::build(args, &file, &file_name)?;
    let connect = connect::build(&file, &origin, args.dev)?;

    Ok(RuntimeConfig {
        dev: args.dev,
        server,
        node_name,
        datacenter,
        data_dir,
        http_addr,
        advertise_addr,
        config_dir: args.config_dir.clone().or(file.config_dir.clone()),
        log_level,
        log_json: args.log_json || file.log_json.unwrap_or(false),
        node_meta,
        snapshot_threshold,
        check_update_interval,
        cache_bytes: cache_mb * 1024 * 1024,
        cluster,
        dns,
        connect,
        drain_timeout,
        worker_threads,
    })
}

/// Node and datacenter names: 1-63 characters of letters, digits, `-`, `_` and `.`,
/// starting with a letter or digit (they become DNS labels later).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return Err("must start with a letter or digit".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} is not allowed (letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

fn hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name = raw.trim();
    if name.is_empty() {
        "meshd".into()
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> AgentArgs {
        AgentArgs {
            dev: true,
            node: Some("n1".into()),
            ..AgentArgs::default()
        }
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let f = write("node_name = \"a\"\nbogus_key = 1\n");
        let mut a = args();
        a.config = Some(f.path().to_path_buf());
        let e = build(&a).expect_err("unknown key").to_string();
        assert!(e.contains(&f.path().display().to_string()), "{e}");
        assert!(e.contains("bogus_key"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_reason() {
        let f = write("http_addr = \"nonsense\"\n");
        let mut a = args();
        a.config = Some(f.path().to_path_buf());
        let e = build(&a).expect_err("bad addr").to_string();
        assert!(e.contains("http_addr") && e.contains("nonsense"), "{e}");
    }

    #[test]
    fn worker_threads_are_bounded() {
        let mut a = args();
        for (text, want) in [("", Ok(None)), ("worker_threads = 2\n", Ok(Some(2)))] {
            let f = write(text);
            a.config = Some(f.path().to_path_buf());
            assert_eq!(build(&a).map(|c| c.worker_threads).map_err(|_| ()), want);
        }
        for bad in ["0", "1025"] {
            let f = write(&format!("worker_threads = {bad}\n"));
            a.config = Some(f.path().to_path_buf());
            let e = build(&a).expect_err("out of range").to_string();
            assert!(
                e.contains("worker_threads") && e.contains("1 to 1024"),
                "{e}"
            );
        }
    }

    #[test]
    fn flags_override_file() {
        let f = write("node_name = \"from-file\"\ndatacenter = \"east\"\n");
        let mut a = args();
        a.config = Some(f.path().to_path_buf());
        let c = build(&a).expect("valid");
        assert_eq!(c.node_name, "n1");
        assert_eq!(c.datacenter, "east");
        assert_eq!(c.http_addr.to_string(), DEFAULT_HTTP_ADDR);
    }

    #[test]
    fn data_dir_required_outside_dev() {
        let a = AgentArgs {
            server: true,
            node: Some("n1".into()),
            ..AgentArgs::default()
        };
        let e = build(&a).expect_err("no data dir").to_string();
        assert!(e.contains("data_dir"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("web-1.a_b").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }
}
