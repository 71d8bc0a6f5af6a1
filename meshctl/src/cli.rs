//! The command line: global flags, subcommands and their arguments. Doc comments are the help
//! text; value parsers reject bad input before any request is sent.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueHint};

use crate::client::parse_http_addr;
use crate::output::Format;

mod ops;

pub use ops::{CompletionArgs, DebugArgs, ManArgs, EXIT_STATUS_HELP};

/// Environment variable that sets `--http-addr`.
pub const HTTP_ADDR_ENV: &str = "MESH_HTTP_ADDR";
/// The agent's HTTP API when nothing else is said.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// Operate a meshd cluster through the local agent's HTTP API.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    /// Address of the meshd agent's HTTP API: host:port or http://host:port.
    #[arg(
        long,
        global = true,
        env = HTTP_ADDR_ENV,
        default_value = DEFAULT_HTTP_ADDR,
        value_name = "ADDR",
        value_parser = parse_http_addr,
    )]
    pub http_addr: String,

    /// Output format: an aligned table, or JSON (pretty-printed): the API's answer for reads,
    /// an object such as {"Ok": true, ...} for commands that act.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the members of the cluster: name, address, status, type (server/client) and DC.
    Members,
    /// List the services in the catalog with their tags.
    Services,
    /// Register or deregister a service instance on the local agent.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Query the catalog.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Show every instance of a service with its health and its checks.
    Health(HealthArgs),
    /// Read and write the key/value store.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Make the local agent leave the cluster gracefully and shut down.
    Leave,
    /// Cluster operations: the Raft peer set.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Save, restore or inspect a snapshot of the servers' state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create the mesh CA and server certificates, offline, in the current directory.
    #[command(subcommand)]
    Tls(TlsCommand),
    /// Who may call whom: create, delete, list, get and check intentions.
    #[command(subcommand)]
    Intention(IntentionCommand),
    /// The mesh CA: list the roots, rotate to a new one.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Config entries (service-defaults, service-router, service-splitter, service-resolver):
    /// write, read, list, delete; and a service's compiled discovery chain.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make the local agent reload its configuration and service definitions.
    Reload,
    /// Collect the agent's state, metrics and recent logs into one .tar.gz for a bug report.
    Debug(DebugArgs),
    /// Print meshctl's version and the agent's (exit 0 even when the agent does not answer).
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completion(CompletionArgs),
    /// Print the man page meshctl(1), or write every page into a directory.
    Man(ManArgs),
}

#[derive(Subcommand, Debug)]
pub enum IntentionCommand {
    /// Create an intention from SRC to DST (allow unless --deny). `*` is any service;
    /// `node:NAME` names a node identity as the source.
    Create {
        src: String,
        dst: String,
        /// Allow the connections (the default).
        #[arg(long, conflicts_with = "deny")]
        allow: bool,
        /// Deny the connections.
        #[arg(long)]
        deny: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// Replace an existing intention of the same pair instead of failing.
        #[arg(long)]
        replace: bool,
    },
    /// Delete the intention from SRC to DST.
    Delete { src: String, dst: String },
    /// Show the intention from SRC to DST.
    Get { src: String, dst: String },
    /// List every intention, highest precedence first.
    List,
    /// Whether SRC may connect to DST: exit 0 when allowed, 2 when denied.
    Check { src: String, dst: String },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// List the trusted roots; the active one signs new certificates.
    Roots,
    /// Add a new active root: leaves are re-issued under it, the old roots stay trusted.
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Write the config entry in FILE (JSON, any kind; `-` reads stdin).
    Write {
        #[arg(value_hint = ValueHint::FilePath)]
        file: PathBuf,
    },
    /// Show one config entry (--kind service-defaults, service-router, service-splitter or
    /// service-resolver).
    Read {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
    },
    /// List the config entries of a kind.
    List {
        #[arg(long)]
        kind: String,
    },
    /// Delete one config entry.
    Delete {
        #[arg(long)]
        kind: String,
        #[arg(long)]
        name: String,
    },
    /// Show the discovery chain compiled for SERVICE: its routes, their weighted splits, and
    /// the targets (subset filters, failover).
    Chain { service: String },
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// The servers' Raft configuration.
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(Subcommand, Debug)]
pub enum RaftCommand {
    /// List the Raft peers: node, ID, address, state (leader, follower, learner) and vote.
    ListPeers,
    /// Remove a peer from the Raft configuration, by ID or by address.
    RemovePeer(RemovePeerArgs),
}

/// Exactly one of `--id` and `--address` (Consul's `-id`/`-address` are accepted too).
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("peer").args(["id", "address"]).required(true)))]
pub struct RemovePeerArgs {
    /// Raft ID of the peer to remove.
    #[arg(long)]
    pub id: Option<String>,

    /// Address (host:port) of the peer to remove.
    #[arg(long)]
    pub address: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a snapshot of the servers' state to FILE (GET /v1/snapshot).
    Save {
        /// Where to write the snapshot (written to FILE.tmp, then renamed).
        #[arg(value_hint = ValueHint::FilePath)]
        file: PathBuf,

        /// Let any server answer, not only the leader (the snapshot may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Restore the servers' state from a snapshot FILE (PUT /v1/snapshot).
    Restore {
        /// A snapshot written by `meshctl snapshot save`.
        #[arg(value_hint = ValueHint::FilePath)]
        file: PathBuf,
    },
    /// Check a snapshot FILE offline and show its index, size and what it holds.
    Inspect {
        /// A snapshot written by `meshctl snapshot save`.
        #[arg(value_hint = ValueHint::FilePath)]
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// The certificate authority.
    #[command(subcommand)]
    Ca(TlsCaCommand),
    /// Leaf certificates.
    #[command(subcommand)]
    Cert(TlsCertCommand),
}

#[derive(Subcommand, Debug)]
pub enum TlsCaCommand {
    /// Create a CA: writes mesh-agent-ca.pem and mesh-agent-ca-key.pem (never overwrites).
    Create {
        /// Trust domain named by the CA and every SPIFFE ID it signs.
        #[arg(long, default_value = registry::ca::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,

        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825, value_parser = clap::value_parser!(u32).range(1..))]
        days: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum TlsCertCommand {
    /// Create a server certificate: writes <dc>-server-mesh-<n>.pem and its -key.pem.
    Create(CertCreateArgs),
}

#[derive(Args, Debug)]
pub struct CertCreateArgs {
    /// Create a server certificate (the only kind created offline).
    #[arg(long)]
    pub server: bool,

    /// Node name of the server the certificate is for.
    #[arg(long)]
    pub node: Option<String>,

    /// Datacenter of the server.
    #[arg(long, default_value = "dc1")]
    pub dc: String,

    /// The CA certificate.
    #[arg(long, default_value = "mesh-agent-ca.pem", value_hint = ValueHint::FilePath)]
    pub ca: PathBuf,

    /// The CA's private key.
    #[arg(long, default_value = "mesh-agent-ca-key.pem", value_hint = ValueHint::FilePath)]
    pub key: PathBuf,

    /// Days the certificate is valid (never past the CA's expiry).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..))]
    pub days: u32,
}

/// Consul spells long flags with one dash (`-id`, `-address`, `-stale`); clap would read
/// those as bundles of short flags. Rewrites the ones meshctl shares with Consul to the
/// double-dash form, after the subcommand that takes them and before any `--`.
pub fn consul_style_args<I>(args: I) -> Vec<std::ffi::OsString>
where
    I: IntoIterator,
    I::Item: Into<std::ffi::OsString>,
{
    const SINGLE_DASH: &[(&str, &[&str])] =
        &[("remove-peer", &["id", "address"]), ("save", &["stale"])];
    let mut flags: &[&str] = &[];
    let mut out = Vec::new();
    for arg in args {
        let arg: std::ffi::OsString = arg.into();
        let rewritten = arg.to_str().and_then(|a| {
            if a == "--" {
                flags = &[];
                return None;
            }
            if let Some((_, f)) = SINGLE_DASH.iter().find(|(cmd, _)| *cmd == a) {
                flags = f;
                return None;
            }
            let body = a.strip_prefix('-').filter(|b| !b.starts_with('-'))?;
            let name = body.split_once('=').map_or(body, |(n, _)| n);
            flags.contains(&name).then(|| format!("-{a}").into())
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[derive(Subcommand, Debug)]
pub enum ServiceCommand {
    /// Register a service instance, from a Consul service-definition JSON file or from flags.
    Register(Box<RegisterArgs>),
    /// Deregister a service instance (and its checks) by ID.
    Deregister {
        /// ID of the service instance (its name, unless registered with --id).
        id: String,
    },
}

/// A service from a file, or from flags; at most one check kind from flags.
#[derive(Args, Debug)]
#[command(group(
    ArgGroup::new("check")
        .args(["check_http", "check_tcp", "check_ttl"])
        .multiple(false)
))]
pub struct RegisterArgs {
    /// Consul service-definition JSON: a service object or {"service": {...}}; `-` reads stdin.
    #[arg(
        value_name = "FILE",
        value_hint = ValueHint::FilePath,
        conflicts_with_all = [
            "name", "port", "id", "address", "tags", "meta",
            "check_http", "check_tcp", "check_ttl", "check_interval",
        ],
    )]
    pub file: Option<PathBuf>,

    /// Service name.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,

    /// Port the service listens on.
    #[arg(long, required_unless_present = "file")]
    pub port: Option<u16>,

    /// Instance ID, unique on this node (default: the name).
    #[arg(long)]
    pub id: Option<String>,

    /// Address of the instance (default: the node's address).
    #[arg(long)]
    pub address: Option<String>,

    /// A tag; repeat for several.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,

    /// A metadata entry KEY=VALUE; repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,

    /// HTTP check: GET this URL every --check-interval; 2xx passes, 429 warns, else critical.
    #[arg(long, value_name = "URL", requires = "check_interval")]
    pub check_http: Option<String>,

    /// TCP check: connect to HOST:PORT every --check-interval.
    #[arg(long, value_name = "HOST:PORT", requires = "check_interval")]
    pub check_tcp: Option<String>,

    /// TTL check: critical unless passed within this duration (PUT /v1/agent/check/pass/ID).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub check_ttl: Option<String>,

    /// How often the HTTP or TCP check runs (Go duration: 10s, 1m30s, 500ms).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        requires = "check",
        conflicts_with = "check_ttl",
    )]
    pub check_interval: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// List the nodes in the catalog.
    Nodes,
}

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Service name.
    pub service: String,

    /// Only instances whose checks all pass.
    #[arg(long)]
    pub passing: bool,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print the raw value of KEY; with --recurse, every KEY:VALUE under the prefix.
    Get {
        /// The key, or the prefix with --recurse.
        #[arg(required_unless_present = "recurse")]
        key: Option<String>,

        /// Treat KEY as a prefix and print every entry under it.
        #[arg(long)]
        recurse: bool,
    },
    /// Write VALUE at KEY. VALUE `-` reads stdin, `@FILE` reads a file (`\@` for a literal @).
    Put {
        /// The key, like app/config/db.
        key: String,

        /// The value (empty when omitted).
        #[arg(allow_hyphen_values = true)]
        value: Option<String>,

        /// An opaque 64-bit number stored with the entry.
        #[arg(long)]
        flags: Option<u64>,

        /// Write only if the entry's ModifyIndex is INDEX (0: only if the key does not exist).
        #[arg(long, value_name = "INDEX")]
        cas: Option<u64>,
    },
    /// Delete KEY, or with --recurse every key under the prefix KEY.
    Delete {
        /// The key, or the prefix with --recurse.
        key: String,

        /// Delete every key that starts with KEY.
        #[arg(long, conflicts_with = "cas")]
        recurse: bool,

        /// Delete only if the entry's ModifyIndex is INDEX.
        #[arg(long, value_name = "INDEX")]
        cas: Option<u64>,
    },
    /// List the keys under PREFIX, one level deep (up to the separator).
    Ls {
        /// Key prefix (default: the whole store).
        #[arg(default_value = "")]
        prefix: String,

        /// List keys only up to the next SEPARATOR after the prefix; "" lists every key.
        #[arg(long, default_value = "/")]
        separator: String,
    },
}

/// Parses `--meta KEY=VALUE`.
pub fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Checks that `s` is a positive Go duration ("10s", "1m30s", "500ms") and returns it as given:
/// the agent parses it, so meshctl sends the text the user wrote.
pub fn parse_duration(s: &str) -> Result<String, String> {
    let bad =
        || format!("invalid duration {s:?}: use a number with a unit, like 10s, 1m30s or 500ms");
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total_ns = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total_ns += value * scale;
        rest = tail;
    }
    if total_ns <= 0.0 {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests;
