//! Command-line interface of the `meshd` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// meshd: service mesh daemon — registry server, Consul-compatible HTTP API and health checks.
#[derive(Parser, Debug)]
#[command(name = "meshd", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the meshd agent (and, with --server or --dev, a registry server).
    Agent(Box<AgentArgs>),
    /// Check configuration without starting, as `consul validate`: TOML agent configurations
    /// (with the service definitions of their config_dir), JSON service definitions, or
    /// directories of them. Every error names the file, the key and the reason; exit 1 when
    /// any is found.
    Validate(ValidateArgs),
}

/// Arguments of `meshd validate`.
#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Files (`*.toml`: agent configuration, `*.json`: service definitions) or directories.
    #[arg(required = true, value_name = "FILE|DIR")]
    pub paths: Vec<PathBuf>,
    /// Print only the errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Flags of `meshd agent`. Each overrides the same key of the `--config` file.
#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// Development mode: a single server with everything on loopback; data in a temporary
    /// directory unless --data-dir is given.
    #[arg(long)]
    pub dev: bool,
    /// Run as a registry server (votes in Raft, stores the registry).
    #[arg(long)]
    pub server: bool,
    /// Node name in the catalog (default: the hostname).
    #[arg(long = "node", value_name = "NAME")]
    pub node: Option<String>,
    /// Datacenter name (default: dc1).
    #[arg(long, value_name = "NAME")]
    pub datacenter: Option<String>,
    /// Directory for the registry's data (required unless --dev).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the HTTP API (default: 127.0.0.1:8500).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of service definitions (Consul JSON, `*.json`), registered at start.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Write logs as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Wait for this many servers before bootstrapping the Raft cluster (servers only).
    #[arg(long, value_name = "N")]
    pub bootstrap_expect: Option<u32>,
    /// A server to join (IP:PORT, port 8301 if omitted); repeat for several. Retried until it
    /// works, as Consul's --retry-join.
    #[arg(long = "join", visible_alias = "retry-join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// QUIC address (UDP) for Raft, agent RPC and tunnels (default 0.0.0.0:8301; 127.0.0.1:8301
    /// with --dev).
    #[arg(long, value_name = "IP:PORT")]
    pub bind: Option<SocketAddr>,
    /// IP other hosts reach this one at (default: the bind IP).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<std::net::IpAddr>,
    /// Join token: on servers, the token agents must present; on agents, the one to present.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MESHD_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// The mesh CA certificate (PEM) that every certificate is checked against.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// This host's certificate (PEM; servers: from `meshctl tls cert create --server`).
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,
    /// The key of --cert-file (PEM).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// The CA's private key, imported into the registry when the cluster bootstraps so that
    /// any leader can sign node certificates (servers only).
    #[arg(long, value_name = "FILE")]
    pub ca_key_file: Option<PathBuf>,
    /// DNS address, UDP and TCP (default: 127.0.0.1:8600; port 0 picks a free port).
    #[arg(long, value_name = "IP:PORT")]
    pub dns_addr: Option<SocketAddr>,
    /// The DNS domain to answer for (default: mesh).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// A second domain answered like --domain (for example consul).
    #[arg(long, value_name = "DOMAIN")]
    pub alt_domain: Option<String>,
    /// An upstream resolver for names outside the domains (IP or IP:PORT); repeat for several.
    /// Without one, such names are refused.
    #[arg(long, value_name = "ADDR")]
    pub recursor: Vec<String>,
}
