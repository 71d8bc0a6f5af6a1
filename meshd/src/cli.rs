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
    Agent(AgentArgs),
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
}
