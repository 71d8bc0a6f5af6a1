//! meshctl as operators and scripts use it, against a real `meshd agent --dev`: `version`
//! (both versions; an absent agent is said, exit 0), `completion` and `man` (generated from the
//! CLI definition), `-o json` on every command (the list of commands comes from the man pages
//! `meshctl man --dir` writes, so a new command without a JSON check fails here), the exit
//! codes (0 success, 1 error, 2 bad usage or denied), `reload` (applied, or refused with the
//! agent's reason) and `debug` (a .tar.gz with every part and an index).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tests::cluster::meshctl_bin;
use tests::meshctl::{meshctl, Ctl};
use tests::{Api, Meshd, MeshdOptions, TestHttpServer};

/// Bound of a whole test (each meshctl run is bounded too, by the helper).
const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs `body` within [`TEST_TIMEOUT`].
async fn bounded<F: std::future::Future<Output = ()>>(what: &str, body: F) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .unwrap_or_else(|_| panic!("{what} ran over {TEST_TIMEOUT:?}"));
}

/// An address nothing listens on.
fn dead_api() -> Api {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    Api::new(&format!("http://127.0.0.1:{port}"))
}

/// stdout of a successful run, as JSON.
fn json_of(out: &Ctl) -> Value {
    let text = out.expect(0);
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", out.describe()))
}

/// Runs meshctl in `dir` (for `tls`, which writes into the current directory); panics unless
/// it succeeds; returns stdout.
async fn meshctl_in(dir: &Path, args: &[&str]) -> String {
    let child = tokio::process::Command::new(meshctl_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("`meshctl {}` ran over 60s", args.join(" ")))
        .expect("run meshctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`meshctl {}` failed: {stdout}{stderr}",
        args.join(" ")
    );
    stdout
}

/// Runs `tar ARGS` and returns stdout; panics on failure.
fn tar(args: &[&str]) -> String {
    let out = std::process::Command::new("tar")
        .args(args)
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The man pages in `dir` as command paths: `meshctl-kv-get.1` is `kv-get`; `meshctl.1` is not
/// listed.
fn man_commands(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .expect("read the man dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            Some(
                name.strip_prefix("meshctl-")?
                    .strip_suffix(".1")?
                    .to_string(),
            )
        })
        .collect()
}

/// The commands without subcommands: `kv-get`, but not `kv`.
fn leaves(commands: &BTreeSet<String>) -> BTreeSet<String> {
    commands
        .iter()
        .filter(|c| {
            !commands
                .iter()
                .any(|other| other.starts_with(&format!("{c}-")))
        })
        .cloned()
        .collect()
}

/// The command an argument list runs: its longest leading run of words that names a page.
fn command_of(args: &[&str], commands: &BTreeSet<String>) -> Option<String> {
    let words: Vec<&str> = args
        .iter()
        .copied()
        .take_while(|a| !a.starts_with('-'))
        .collect();
    (1..=words.len())
        .rev()
        .map(|n| words[..n].join("-"))
        .find(|c| commands.contains(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_shows_meshctl_and_agent_versions() {
    bounded("version", async {
        let meshd = Meshd::start_default().await;
        let api = meshd.api();
        let me = api.get("/v1/agent/self").await.json();
        let meshd_version = me["Config"]["MeshdVersion"].as_str().expect("MeshdVersion");
        let consul_version = me["Config"]["Version"].as_str().expect("Version");

        let out = meshctl(api, &["version"]).await;
        let text = out.expect(0);
        let meshctl_line = format!("meshctl v{}", env!("CARGO_PKG_VERSION"));
        assert!(text.starts_with(&meshctl_line), "{}", out.describe());
        assert!(
            text.contains(&format!("meshd v{meshd_version}"))
                && text.contains(&format!("Consul API v{consul_version}")),
            "{}",
            out.describe()
        );

        let v = json_of(&meshctl(api, &["-o", "json", "version"]).await);
        assert_eq!(v["Meshctl"], env!("CARGO_PKG_VERSION"));
        assert_eq!(v["Agent"]["Reachable"], true);
        assert_eq!(v["Agent"]["MeshdVersion"], meshd_version);
        assert_eq!(v["Agent"]["ConsulAPIVersion"], consul_version);

        // No agent: meshctl's version, the agent said unreachable, still exit 0.
        let dead = dead_api();
        let out = meshctl(&dead, &["version"]).await;
        let text = out.expect(0);
        assert!(
            text.starts_with(&meshctl_line) && text.contains("unreachable"),
            "{}",
            out.describe()
        );
        let v = json_of(&meshctl(&dead, &["-o", "json", "version"]).await);
        assert_eq!(v["Agent"]["Reachable"], false);
        assert!(v["Agent"]["Error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_and_man_come_from_the_cli_definition() {
    bounded("completion and man", async {
        // Offline: an agent address that answers nothing does not matter.
        let api = dead_api();
        let subcommands = ["members", "kv", "intention", "debug", "reload", "version"];
        let bash = meshctl(&api, &["completion", "bash"]).await;
        let script = bash.expect(0);
        assert!(
            script.contains("complete -F _meshctl"),
            "{}",
            bash.describe()
        );
        for sub in subcommands {
            assert!(script.contains(sub), "bash completion lacks {sub}");
        }
        for shell in ["zsh", "fish"] {
            let out = meshctl(&api, &["completion", shell]).await;
            let script = out.expect(0);
            for sub in subcommands {
                assert!(script.contains(sub), "{shell} completion lacks {sub}");
            }
        }

        let man = meshctl(&api, &["man"]).await;
        let page = man.expect(0);
        // clap_mangen's page: a two-line preamble (the `Aq` string), then the title.
        let title = page
            .lines()
            .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
            .unwrap_or_default();
        assert!(title.starts_with(".TH meshctl 1 "), "{}", man.describe());
        assert!(page.lines().take(3).any(|l| l == title));
        assert!(
            page.contains("Exit status"),
            "the exit codes are documented"
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let man_dir = dir.path().join("man");
        let man_dir_s = man_dir.display().to_string();
        let out = meshctl(&api, &["man", "--dir", &man_dir_s]).await;
        out.expect(0);
        let pages = man_commands(&man_dir);
        assert!(man_dir.join("meshctl.1").is_file());
        for want in ["kv", "kv-get", "debug", "operator-raft-list-peers", "man"] {
            assert!(pages.contains(want), "no meshctl-{want}.1 in {pages:?}");
        }
        let kv = std::fs::read_to_string(man_dir.join("meshctl-kv-get.1")).expect("read");
        assert!(kv.contains(".TH meshctl-kv-get 1"), "{kv}");
    })
    .await;
}

/// Every command run by [`every_command_prints_json_with_o_json`], in order, `{d}` standing
/// for a scratch directory. `leave` is last: the agent stops.
const JSON_COMMANDS: &[&str] = &[
    "version",
    "members",
    "services",
    "catalog nodes",
    "service register --name web --port 8080 --check-ttl 30s",
    "service register {d}/api.json",
    "health web",
    "health web --passing",
    "kv put app/db postgres",
    "kv get app/db",
    "kv get --recurse app/",
    "kv ls",
    "kv delete app/db",
    "kv delete --recurse app/",
    "operator raft list-peers",
    "snapshot save {d}/s.snap",
    "snapshot inspect {d}/s.snap",
    "snapshot restore {d}/s.snap",
    "intention create web api",
    "intention create --replace --description d web api",
    "intention list",
    "intention get web api",
    "intention check web api",
    "intention delete web api",
    "ca roots",
    "ca rotate",
    "config write {d}/entry.json",
    "config read --kind service-defaults --name db",
    "config list --kind service-defaults",
    "config delete --kind service-defaults --name db",
    "config chain db",
    "reload",
    "debug --output-file {d}/d.tar.gz --log-lines 10",
    "completion bash",
    "man",
    "man --dir {d}/man2",
    "service deregister web",
    "service deregister api",
    "leave",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_json_with_o_json() {
    bounded("-o json everywhere", async {
        let meshd = Meshd::start_default().await;
        let api = meshd.api();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).expect("write");
        write("api.json", r#"{"service": {"name": "api", "port": 9090}}"#);
        write(
            "entry.json",
            r#"{"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"}"#,
        );
        let man_dir = d.join("man");
        let man_dir_s = man_dir.display().to_string();
        meshctl(api, &["man", "--dir", &man_dir_s]).await.expect(0);
        let commands = man_commands(&man_dir);

        let d_s = d.display().to_string();
        let mut covered = BTreeSet::new();
        for line in JSON_COMMANDS {
            let args: Vec<String> = line
                .split_whitespace()
                .map(|a| a.replace("{d}", &d_s))
                .collect();
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let full: Vec<&str> = ["-o", "json"].into_iter().chain(args.clone()).collect();
            let out = meshctl(api, &full).await;
            let v = json_of(&out);
            assert!(v.is_object() || v.is_array(), "{}", out.describe());
            covered.extend(command_of(&args, &commands));
        }
        // Offline, in a scratch directory: `tls` writes there.
        let tls = d.join("tls");
        std::fs::create_dir_all(&tls).expect("mkdir");
        for args in [
            &["tls", "ca", "create"][..],
            &["tls", "cert", "create", "--server", "--node", "s1"],
        ] {
            let full: Vec<&str> = ["-o", "json"].iter().chain(args).copied().collect();
            let stdout = meshctl_in(&tls, &full).await;
            let v: Value = serde_json::from_str(&stdout)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"));
            assert_eq!(v["Ok"], true, "{stdout}");
            covered.extend(command_of(args, &commands));
        }

        // Removing a Raft peer needs a second server (the cluster tests); a dev agent only
        // refuses it (exit 1, see `exit_codes`). Its JSON is unit-tested in meshctl.
        let mut expected = leaves(&commands);
        expected.remove("operator-raft-remove-peer");
        let missing: Vec<&String> = expected.difference(&covered).collect();
        assert!(missing.is_empty(), "no -o json check for: {missing:?}");
    })
    .await;
}

/// Panics unless `out` failed with usage status 2, nothing on stdout and clap's message.
fn expect_usage(out: &Ctl) {
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
    assert!(out.stderr.contains("Usage:") || out.stderr.contains("error:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes() {
    bounded("exit codes", async {
        let meshd = Meshd::start_default().await;
        let api = meshd.api();

        // 2: the command line does not parse.
        for args in [
            &["bogus"][..],
            &["kv"],
            &["kv", "get"],
            &["debug", "--log-lines", "0"],
            &["completion", "tcsh"],
            &["-o", "yaml", "members"],
        ] {
            expect_usage(&meshctl(api, args).await);
        }

        // 1: not found, said so.
        meshctl(api, &["kv", "get", "no/such/key"])
            .await
            .expect_error("not found");
        meshctl(api, &["-o", "json", "intention", "get", "x", "y"])
            .await
            .expect_error("not found");
        let out = meshctl(
            api,
            &[
                "config",
                "read",
                "--kind",
                "service-defaults",
                "--name",
                "nope",
            ],
        )
        .await;
        out.expect_error("not found");
        assert!(out.stdout.is_empty());

        // 1: the API refused.
        meshctl(api, &["service", "deregister", "nope"])
            .await
            .expect_error("404");
        meshctl(
            api,
            &[
                "-o",
                "json",
                "operator",
                "raft",
                "remove-peer",
                "--id",
                "424242",
            ],
        )
        .await
        .expect_error("no server");

        // 1: a file that is not a snapshot.
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.snap");
        std::fs::write(
            &junk,
            b"not a snapshot at all, but long enough to have a header",
        )
        .expect("write");
        meshctl(api, &["snapshot", "inspect", &junk.display().to_string()])
            .await
            .expect_error("junk.snap");

        // 1: no agent; nothing written by debug.
        let dead = dead_api();
        for args in [&["members"][..], &["reload"], &["-o", "json", "kv", "ls"]] {
            let out = meshctl(&dead, args).await;
            out.expect_error("cannot connect");
            assert!(out.stdout.is_empty(), "{}", out.describe());
        }
        let tgz = dir.path().join("never.tar.gz");
        meshctl(
            &dead,
            &["debug", "--output-file", &tgz.display().to_string()],
        )
        .await
        .expect_error("no debug archive written");
        assert!(!tgz.exists());

        // 2: denied, the answer on stdout and no error line.
        meshctl(api, &["intention", "create", "--deny", "x", "y"])
            .await
            .expect(0);
        let out = meshctl(api, &["intention", "check", "x", "y"]).await;
        assert_eq!(out.expect(2).trim(), "Denied");
        assert!(out.stderr.is_empty(), "{}", out.describe());
        let out = meshctl(api, &["-o", "json", "intention", "check", "x", "y"]).await;
        assert_eq!(out.code, Some(2), "{}", out.describe());
        let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(v["Allowed"], false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_or_names_the_broken_file() {
    bounded("reload", async {
        let defs = tempfile::tempdir().expect("tempdir");
        let d = defs.path();
        std::fs::write(
            d.join("web.json"),
            r#"{"service": {"name": "web", "port": 8080}}"#,
        )
        .expect("write");
        let opts = MeshdOptions::default()
            .node("reload-ctl")
            .arg("--config-dir")
            .arg(&d.display().to_string());
        let meshd = Meshd::start(opts).await;
        let api = meshd.api();

        std::fs::write(
            d.join("db.json"),
            r#"{"service": {"name": "db", "port": 5432}}"#,
        )
        .expect("write");
        let out = meshctl(api, &["reload"]).await;
        assert!(
            out.expect(0)
                .starts_with("Configuration reload triggered\n"),
            "{}",
            out.describe()
        );
        let services = api.get("/v1/agent/services").await.json();
        assert!(services.get("db").is_some(), "{services}");
        let v = json_of(&meshctl(api, &["-o", "json", "reload"]).await);
        assert_eq!(v["Ok"], true);
        assert!(v["Reloaded"].is_string(), "{v}");

        // Refused: exit 1, the agent's reason (the file) as the error, nothing on stdout.
        std::fs::write(
            d.join("zz-broken.json"),
            r#"{"service": {"name": "x", "port": "eighty"}}"#,
        )
        .expect("write");
        for args in [&["reload"][..], &["-o", "json", "reload"]] {
            let out = meshctl(api, args).await;
            out.expect_error("zz-broken.json");
            assert!(out.stdout.is_empty(), "{}", out.describe());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_archive_has_every_part() {
    bounded("debug", async {
        let meshd = Meshd::start_default().await;
        let api = meshd.api();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("report.tar.gz");
        let file_s = file.display().to_string();

        let out = meshctl(
            api,
            &["debug", "--output-file", &file_s, "--log-lines", "20"],
        )
        .await;
        assert_eq!(
            out.expect(0).trim(),
            format!("Saved debug archive: {file_s}"),
            "{}",
            out.describe()
        );
        let parts = [
            "agent.json",
            "members.json",
            "raft.json",
            "services.json",
            "checks.json",
            "metrics.prom",
            "logs.txt",
            "index.json",
        ];
        let listing: BTreeSet<String> =
            tar(&["tzf", &file_s]).lines().map(str::to_string).collect();
        let mut want: BTreeSet<String> = parts.iter().map(|p| format!("report/{p}")).collect();
        want.insert("report/".to_string());
        assert_eq!(listing, want);

        let read = |part: &str| tar(&["xzf", &file_s, "-O", &format!("report/{part}")]);
        let index: Value = serde_json::from_str(&read("index.json")).expect("index.json");
        let listed: Vec<&str> = index["Parts"]
            .as_array()
            .expect("Parts")
            .iter()
            .map(|p| p["File"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(listed, parts[..parts.len() - 1]);
        for p in index["Parts"].as_array().expect("Parts") {
            assert_eq!(p["Ok"], true, "{p}");
            assert!(p["Source"]
                .as_str()
                .is_some_and(|s| s.starts_with("GET /v1/")));
        }
        let agent: Value = serde_json::from_str(&read("agent.json")).expect("agent.json");
        assert_eq!(agent["Config"]["NodeName"], meshd.node());
        assert!(read("metrics.prom").contains("# TYPE"));
        let logs = read("logs.txt");
        let lines = logs.lines().count();
        assert!((1..=20).contains(&lines), "{lines} log lines: {logs}");

        // An existing archive is not overwritten.
        meshctl(api, &["debug", "--output-file", &file_s])
            .await
            .expect_error("already exists");

        // -o json: the file and the parts.
        let other = dir.path().join("other.tgz").display().to_string();
        let v = json_of(&meshctl(api, &["-o", "json", "debug", "--output-file", &other]).await);
        assert_eq!(v["Ok"], true);
        assert_eq!(v["File"], other);
        assert_eq!(v["Parts"].as_array().map(Vec::len), Some(parts.len() - 1));
        assert!(tar(&["tzf", &other]).contains("other/logs.txt"));

        // An agent answering 404 to everything (no logs endpoint, nor anything else): the
        // archive is still written, every part a note, a warning for each on stderr.
        let stub = TestHttpServer::start(404).await;
        let degraded = dir.path().join("degraded.tar.gz").display().to_string();
        let out = meshctl(
            &Api::new(&stub.url("")),
            &["debug", "--output-file", &degraded],
        )
        .await;
        out.expect(0);
        assert!(
            out.stderr
                .contains("Warning: logs.txt: the agent does not serve its logs"),
            "{}",
            out.describe()
        );
        let listing = tar(&["tzf", &degraded]);
        assert_eq!(listing.lines().count(), parts.len() + 1, "{listing}");
        let read = |part: &str| tar(&["xzf", &degraded, "-O", &format!("degraded/{part}")]);
        assert!(read("logs.txt").contains("does not serve its logs"));
        let index: Value = serde_json::from_str(&read("index.json")).expect("index.json");
        let failed = index["Parts"].as_array().expect("Parts").iter();
        assert!(failed.clone().all(|p| p["Ok"] == false), "{index}");
        assert_eq!(failed.count(), parts.len() - 1);
    })
    .await;
}

#[test]
fn command_paths_and_leaves() {
    let commands: BTreeSet<String> = [
        "kv",
        "kv-get",
        "kv-put",
        "members",
        "service",
        "services",
        "service-register",
        "operator",
        "operator-raft",
        "operator-raft-list-peers",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        leaves(&commands).into_iter().collect::<Vec<_>>(),
        [
            "kv-get",
            "kv-put",
            "members",
            "operator-raft-list-peers",
            "service-register",
            "services"
        ]
    );
    assert_eq!(
        command_of(&["kv", "get", "a/b"], &commands).as_deref(),
        Some("kv-get")
    );
    assert_eq!(
        command_of(&["operator", "raft", "list-peers", "--stale"], &commands).as_deref(),
        Some("operator-raft-list-peers")
    );
    assert_eq!(
        command_of(&["services"], &commands).as_deref(),
        Some("services")
    );
    assert_eq!(command_of(&["nope"], &commands), None);
}
