//! Unit tests of the command-line definition: parsing, defaults, conflicts and the
//! Consul-style single-dash flags.

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
        parse(&["service", "register", "--name", "w", "--port", "1", "--meta", "novalue"]).is_err()
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

#[test]
fn operations_commands() {
    assert!(matches!(
        parse(&["version"]).unwrap().command,
        Command::Version
    ));
    assert!(matches!(
        parse(&["reload"]).unwrap().command,
        Command::Reload
    ));

    let Command::Debug(args) = parse(&["debug"]).unwrap().command else {
        panic!("wrong command");
    };
    assert_eq!(
        (args.output_file, args.log_lines),
        (None, ops::DEFAULT_LOG_LINES)
    );
    let Command::Debug(args) = parse(&["debug", "--output-file", "x.tgz", "--log-lines", "2000"])
        .unwrap()
        .command
    else {
        panic!("wrong command");
    };
    assert_eq!(args.output_file, Some(PathBuf::from("x.tgz")));
    assert_eq!(args.log_lines, 2000);
    for bad in ["0", "2001", "-1", "many"] {
        assert!(parse(&["debug", "--log-lines", bad]).is_err(), "{bad}");
    }

    let Command::Completion(args) = parse(&["completion", "zsh"]).unwrap().command else {
        panic!("wrong command");
    };
    assert_eq!(args.shell, clap_complete::Shell::Zsh);
    assert!(parse(&["completion"]).is_err());
    assert!(parse(&["completion", "tcsh"]).is_err());

    let Command::Man(args) = parse(&["man"]).unwrap().command else {
        panic!("wrong command");
    };
    assert_eq!(args.dir, None);
    let Command::Man(args) = parse(&["man", "--dir", "target/man"]).unwrap().command else {
        panic!("wrong command");
    };
    assert_eq!(args.dir, Some(PathBuf::from("target/man")));

    let cli = parse(&["snapshot", "inspect", "s.snap"]).unwrap();
    let Command::Snapshot(SnapshotCommand::Inspect { file }) = cli.command else {
        panic!("wrong command");
    };
    assert_eq!(file, PathBuf::from("s.snap"));
}

#[test]
fn help_documents_the_exit_codes() {
    let help = Cli::command().render_long_help().to_string();
    for want in ["Exit status:", "0  success", "1  an error", "2  bad usage"] {
        assert!(help.contains(want), "no {want:?} in --help");
    }
}

#[test]
fn config_chain_and_read_of_l7_kinds() {
    let cli = parse(&["config", "chain", "api"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Config(ConfigCommand::Chain { ref service }) if service == "api"
    ));
    let cli = parse(&[
        "config",
        "read",
        "--kind",
        "service-router",
        "--name",
        "api",
    ])
    .unwrap();
    assert!(matches!(
        cli.command,
        Command::Config(ConfigCommand::Read { ref kind, .. }) if kind == "service-router"
    ));
    assert!(parse(&["config", "chain"]).is_err());
}
