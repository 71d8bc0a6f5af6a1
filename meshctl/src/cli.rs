//! The command line: global flags, subcommands and their arguments. Doc comments are the help
//! text; value parsers reject bad input before any request is sent.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

use crate::client::parse_http_addr;
use crate::output::Format;

/// Environment variable that sets `--http-addr`.
pub const HTTP_ADDR_ENV: &str = "MESH_HTTP_ADDR";
/// The agent's HTTP API when nothing else is said.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8500";

/// Operate a meshd cluster through the local agent's HTTP API.
#[derive(Parser, Debug)]
#[command(name = "meshctl", version)]
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

    /// Output format: an aligned table, or the API's JSON (pretty-printed).
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
    /// Save or restore a snapshot of the servers' state.
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
    /// Config entries (`service-defaults`): write, read, list, delete.
    #[command(subcommand)]
    Config(ConfigCommand),
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
    /// Write the config entry in FILE (JSON; `-` reads stdin).
    Write { file: PathBuf },
    /// Show one config entry.
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
        file: PathBuf,

        /// Let any server answer, not only the leader (the snapshot may be stale).
        #[arg(long)]
        stale: bool,
    },
    /// Restore the servers' state from a snapshot FILE (PUT /v1/snapshot).
    Restore {
        /// A snapshot written by `meshctl snapshot save`.
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
    #[arg(long, default_value = "mesh-agent-ca.pem")]
    pub ca: PathBuf,

    /// The CA's private key.
    #[arg(long, default_value = "mesh-agent-ca-key.pem")]
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
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("meshctl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_and_defaults() {
        // The test environment could set MESH_HTTP_ADDR; pass the flag to stay independent.
        let cli = parse(&["--http-addr", "127.0.0.1:8500", "members"]).unwrap();
        assert_eq!(cli.http_addr, "http://127.0.0.1:8500");
        assert_eq!(cli.output, Format::Table);
        assert!(matches!(cli.command, Command::Members));

        let cli = parse(&[
            "services",
            "-o",
            "json",
            "--http-addr",
            "http://10.0.0.1:9500/",
        ])
        .unwrap();
        assert_eq!(cli.http_addr, "http://10.0.0.1:9500");
        assert_eq!(cli.output, Format::Json);

        assert!(parse(&["members", "-o", "yaml"]).is_err());
        assert!(parse(&["members", "--http-addr", "https://x:1"]).is_err());
    }

    #[test]
    fn service_register_from_flags() {
        let cli = parse(&[
            "service",
            "register",
            "--name",
            "web",
            "--port",
            "8080",
            "--tag",
            "a",
            "--tag",
            "b",
            "--meta",
            "version=1=2",
            "--check-http",
            "http://127.0.0.1:8080/health",
            "--check-interval",
            "10s",
        ])
        .unwrap();
        let Command::Service(ServiceCommand::Register(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.name.as_deref(), Some("web"));
        assert_eq!(args.port, Some(8080));
        assert_eq!(args.tags, ["a", "b"]);
        assert_eq!(args.meta, [("version".to_string(), "1=2".to_string())]);
        assert_eq!(args.check_interval.as_deref(), Some("10s"));
        assert!(args.file.is_none());
    }

    #[test]
    fn service_register_rejects_bad_combinations() {
        // Neither a file nor a name.
        assert!(parse(&["service", "register"]).is_err());
        // A name without a port.
        assert!(parse(&["service", "register", "--name", "web"]).is_err());
        // A file and flags.
        assert!(parse(&["service", "register", "web.json", "--name", "web"]).is_err());
        // Two check kinds.
        assert!(parse(&[
            "service",
            "register",
            "--name",
            "w",
            "--port",
            "1",
            "--check-ttl",
            "30s",
            "--check-tcp",
            "127.0.0.1:1",
            "--check-interval",
            "10s",
        ])
        .is_err());
        // An HTTP check without an interval, an interval without a check, a TTL with one.
        assert!(parse(&[
            "service",
            "register",
            "--name",
            "w",
            "--port",
            "1",
            "--check-http",
            "http://x/"
        ])
        .is_err());
        assert!(parse(&[
            "service",
            "register",
            "--name",
            "w",
            "--port",
            "1",
            "--check-interval",
            "10s"
        ])
        .is_err());
        assert!(parse(&[
            "service",
            "register",
            "--name",
            "w",
            "--port",
            "1",
            "--check-ttl",
            "30s",
            "--check-interval",
            "10s",
        ])
        .is_err());
        // Bad values.
        assert!(parse(&["service", "register", "--name", "w", "--port", "70000"]).is_err());
        assert!(
            parse(&["service", "register", "--name", "w", "--port", "1", "--meta", "novalue"])
                .is_err()
        );
        assert!(parse(&[
            "service",
            "register",
            "--name",
            "w",
            "--port",
            "1",
            "--check-ttl",
            "30"
        ])
        .is_err());
    }

    #[test]
    fn service_register_from_file() {
        let cli = parse(&["service", "register", "web.json"]).unwrap();
        let Command::Service(ServiceCommand::Register(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.file, Some(PathBuf::from("web.json")));
    }

    #[test]
    fn kv_commands() {
        let cli = parse(&["kv", "put", "a/b", "-", "--cas", "0", "--flags", "42"]).unwrap();
        let Command::Kv(KvCommand::Put {
            key,
            value,
            flags,
            cas,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(
            (key.as_str(), value.as_deref(), flags, cas),
            ("a/b", Some("-"), Some(42), Some(0))
        );

        assert!(parse(&["kv", "get"]).is_err());
        assert!(parse(&["kv", "get", "--recurse"]).is_ok());
        assert!(parse(&["kv", "delete", "a", "--recurse", "--cas", "3"]).is_err());

        let cli = parse(&["kv", "ls"]).unwrap();
        let Command::Kv(KvCommand::Ls { prefix, separator }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((prefix.as_str(), separator.as_str()), ("", "/"));
    }

    #[test]
    fn health_args() {
        let cli = parse(&["health", "web", "--passing"]).unwrap();
        let Command::Health(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.service, "web");
        assert!(args.passing);
    }

    #[test]
    fn operator_and_snapshot_commands() {
        let cli = parse(&["operator", "raft", "list-peers", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Operator(OperatorCommand::Raft(RaftCommand::ListPeers))
        ));
        let cli = parse(&["operator", "raft", "remove-peer", "--id", "abc"]).unwrap();
        let Command::Operator(OperatorCommand::Raft(RaftCommand::RemovePeer(args))) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!((args.id.as_deref(), args.address), (Some("abc"), None));
        assert!(parse(&["operator", "raft", "remove-peer"]).is_err());
        assert!(parse(&[
            "operator",
            "raft",
            "remove-peer",
            "--id",
            "a",
            "--address",
            "b"
        ])
        .is_err());

        let cli = parse(&["snapshot", "save", "--stale", "s.snap"]).unwrap();
        let Command::Snapshot(SnapshotCommand::Save { file, stale }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((file, stale), (PathBuf::from("s.snap"), true));
        assert!(parse(&["snapshot", "restore"]).is_err());
        assert!(matches!(parse(&["leave"]).unwrap().command, Command::Leave));
    }

    #[test]
    fn consul_single_dash_flags() {
        let args = |a: &[&str]| -> Vec<String> {
            consul_style_args(a.iter().copied())
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect()
        };
        assert_eq!(
            args(&["meshctl", "operator", "raft", "remove-peer", "-id", "x"]),
            ["meshctl", "operator", "raft", "remove-peer", "--id", "x"]
        );
        assert_eq!(
            args(&[
                "meshctl",
                "operator",
                "raft",
                "remove-peer",
                "-address=10.0.0.1:8301"
            ]),
            [
                "meshctl",
                "operator",
                "raft",
                "remove-peer",
                "--address=10.0.0.1:8301"
            ]
        );
        assert_eq!(
            args(&["meshctl", "snapshot", "save", "-stale", "f"]),
            ["meshctl", "snapshot", "save", "--stale", "f"]
        );
        // Not after another command, not a value, not after `--`.
        assert_eq!(
            args(&["meshctl", "kv", "put", "k", "-id"]),
            ["meshctl", "kv", "put", "k", "-id"]
        );
        assert_eq!(
            args(&["meshctl", "snapshot", "save", "--", "-stale"]),
            ["meshctl", "snapshot", "save", "--", "-stale"]
        );
        let cli = Cli::try_parse_from(consul_style_args([
            "meshctl",
            "operator",
            "raft",
            "remove-peer",
            "-id",
            "r1",
        ]))
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Operator(OperatorCommand::Raft(RaftCommand::RemovePeer(
                RemovePeerArgs { id: Some(_), .. }
            )))
        ));
    }

    #[test]
    fn tls_commands() {
        let cli = parse(&["tls", "ca", "create"]).unwrap();
        let Command::Tls(TlsCommand::Ca(TlsCaCommand::Create { trust_domain, days })) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!((trust_domain.as_str(), days), ("mesh.local", 1825));
        assert!(parse(&["tls", "ca", "create", "--days", "0"]).is_err());

        let cli = parse(&["tls", "cert", "create", "--server", "--node", "s1"]).unwrap();
        let Command::Tls(TlsCommand::Cert(TlsCertCommand::Create(args))) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.server);
        assert_eq!(args.node.as_deref(), Some("s1"));
        assert_eq!((args.dc.as_str(), args.days), ("dc1", 365));
        assert_eq!(args.ca, PathBuf::from("mesh-agent-ca.pem"));
        assert_eq!(args.key, PathBuf::from("mesh-agent-ca-key.pem"));
    }

    #[test]
    fn durations() {
        for ok in ["10s", "1m30s", "500ms", "1.5h", "2us", "100ns"] {
            assert_eq!(parse_duration(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["", "10", "s", "10x", "0s", "-5s", "1m 30s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
