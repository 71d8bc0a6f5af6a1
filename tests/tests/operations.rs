//! Operating one meshd: the systemd readiness protocol (`READY=1` only once the API and DNS
//! answer, `RELOADING=1`/`READY=1` around SIGHUP, `WATCHDOG=1`, `STOPPING=1`), reloads of the
//! service definitions (added, removed, and a broken file that changes nothing), the recent-log
//! endpoint, and `meshd validate` on ten broken configurations.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tests::binary::meshd_bin;
use tests::cluster::Tls;
use tests::dig::Dig;
use tests::meshd::{Meshd, MeshdOptions};
use tests::netns::send_signal;
use tests::wait::wait_until;
use tokio::net::UnixDatagram;

const WAIT: Duration = Duration::from_secs(20);

/// The notifications received on our `NOTIFY_SOCKET`.
struct Notifications {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        Notifications {
            sock: UnixDatagram::bind(path).expect("bind the notify socket"),
            seen: Vec::new(),
        }
    }

    /// Receives until a datagram has a line equal to `line`; returns that datagram.
    async fn until(&mut self, line: &str) -> String {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let n = tokio::time::timeout_at(deadline, self.sock.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {line} within {WAIT:?}; got {:?}", self.seen))
                .expect("recv on the notify socket");
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }

    /// The lines of every datagram seen, watchdog pings left out.
    fn states(&self) -> Vec<String> {
        self.seen
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .filter(|l| l.ends_with("=1") && l != "WATCHDOG=1")
            .collect()
    }
}

#[tokio::test]
async fn systemd_hears_ready_only_when_api_and_dns_answer_then_reload_and_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&sock);
    let opts = MeshdOptions {
        env: vec![
            ("NOTIFY_SOCKET".into(), sock.display().to_string()),
            ("WATCHDOG_USEC".into(), "400000".into()),
        ],
        ..MeshdOptions::default()
    }
    .node("notify-1");
    // The notifications are read, and acted on, apart from the harness, which waits for the
    // serving line on stdout: the moment READY=1 arrives, the addresses its STATUS= names are
    // asked once each (dig has +tries=1), with no retry.
    let at_ready = tokio::spawn(async move {
        let ready = notes.until("READY=1").await;
        let states_before = notes.states();
        let (http, dns) = ready_addresses(&ready);
        let leader = tests::http::Api::new(&format!("http://{http}"))
            .send(reqwest::Method::GET, "/v1/status/leader", None, None)
            .await;
        let answer = Dig::new(dns).query("notify-1.node.mesh", "A", &[]).await;
        (notes, ready, states_before, http, dns, leader, answer)
    });
    let mut meshd = Meshd::start(opts).await;
    let (mut notes, ready, states_before, http, dns, leader, answer) =
        at_ready.await.expect("the notify task");
    assert_eq!(
        states_before,
        ["READY=1"],
        "READY=1 is the first state sent"
    );
    assert_eq!(http, meshd.http_addr(), "{ready:?} names the API");
    assert_eq!(dns, meshd.dns_addr(), "{ready:?} names DNS");
    let leader = leader.expect("the API answers when READY=1 arrives");
    assert_eq!(leader.status, 200, "{}", leader.text());
    let answer = answer.expect("DNS answers when READY=1 arrives");
    assert!(
        answer.status == "NOERROR" && !answer.answer.is_empty(),
        "{answer:?}"
    );
    notes.until("WATCHDOG=1").await;

    let pid = meshd.pid().expect("running");
    send_signal(pid, libc::SIGHUP);
    let reloading = notes.until("RELOADING=1").await;
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    notes.until("READY=1").await;
    assert_eq!(notes.states(), ["READY=1", "RELOADING=1", "READY=1"]);
    let metrics = meshd.api().metrics().await;
    assert!(
        metrics.contains("meshd_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );

    send_signal(pid, libc::SIGTERM);
    notes.until("STOPPING=1").await;
    let status = wait_exit(&mut meshd).await;
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

/// The API and DNS addresses in READY=1's `STATUS=serving: http IP:PORT, dns IP:PORT`.
fn ready_addresses(datagram: &str) -> (SocketAddr, SocketAddr) {
    let status = datagram
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving: "))
        .unwrap_or_else(|| panic!("READY=1 without a serving STATUS=: {datagram:?}"));
    let addr = |key: &str| -> SocketAddr {
        status
            .split(", ")
            .find_map(|part| part.strip_prefix(key))
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no {key:?}IP:PORT in {status:?}"))
    };
    (addr("http "), addr("dns "))
}

async fn wait_exit(meshd: &mut Meshd) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(s) = meshd.exited() {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "meshd did not exit within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a config file");
}

async fn service_ids(meshd: &Meshd) -> Vec<String> {
    let s = meshd.api().get("/v1/agent/services").await.json();
    let mut ids: Vec<String> = s
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}

#[tokio::test]
async fn reload_registers_new_files_removes_gone_ones_and_rejects_broken_ones() {
    let defs = tempfile::tempdir().expect("tempdir");
    let d = defs.path();
    write(
        d,
        "web.json",
        r#"{"service": {"name": "web", "port": 8080}}"#,
    );
    let opts = MeshdOptions::default()
        .node("reload-1")
        .arg("--config-dir")
        .arg(&d.display().to_string());
    let meshd = Meshd::start(opts).await;
    let pid = meshd.pid().expect("running");
    assert_eq!(service_ids(&meshd).await, ["web"]);
    // A service registered through the API is not the reload's to remove.
    meshd
        .api()
        .put_json("/v1/agent/service/register", &json!({"Name": "by-api"}))
        .await
        .expect_status(200);

    // A new file, with a check, appears on SIGHUP.
    write(
        d,
        "db.json",
        r#"{"service": {"name": "db", "port": 5432, "check": {"ttl": "30s"}}}"#,
    );
    send_signal(pid, libc::SIGHUP);
    wait_until(WAIT, "db registered by the reload", || async {
        service_ids(&meshd).await == ["by-api", "db", "web"]
    })
    .await;
    let checks = meshd.api().get("/v1/agent/checks").await.json();
    assert!(
        checks
            .as_object()
            .expect("map")
            .values()
            .any(|c| c["ServiceID"] == "db"),
        "{checks}"
    );

    // A removed file deregisters its service (through the API's reload this time).
    std::fs::remove_file(d.join("web.json")).expect("remove");
    let r = meshd.api().put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("removed web"), "{}", r.text());
    assert_eq!(service_ids(&meshd).await, ["by-api", "db"]);

    // A broken file: the reload is refused with the file and the reason, nothing changes.
    write(d, "cache.json", r#"{"service": {"name": "cache"}}"#);
    write(
        d,
        "zz-broken.json",
        r#"{"service": {"name": "x", "port": "eighty"}}"#,
    );
    let r = meshd.api().put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(
        r.text().contains("zz-broken.json") && r.text().contains("Port"),
        "{}",
        r.text()
    );
    send_signal(pid, libc::SIGHUP);
    wait_until(WAIT, "the SIGHUP's rejection logged", || async {
        meshd.log().matches("configuration reload rejected").count() >= 2
    })
    .await;
    assert!(meshd.log().contains("zz-broken.json"));
    assert_eq!(
        service_ids(&meshd).await,
        ["by-api", "db"],
        "nothing changed"
    );
    let metrics = meshd.api().metrics().await;
    assert!(
        metrics.contains("meshd_config_reloads_total{result=\"error\"} 2")
            && metrics.contains("meshd_config_last_reload_successful 0"),
        "{metrics}"
    );

    // Fixed: the next reload applies everything.
    std::fs::remove_file(d.join("zz-broken.json")).expect("remove");
    let r = meshd.api().put("/v1/agent/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(service_ids(&meshd).await, ["by-api", "cache", "db"]);

    // The recent log lines are served, and name the reloads.
    let logs = meshd.api().get("/v1/agent/logs?lines=2000").await;
    assert_eq!(logs.status, 200);
    assert!(
        logs.text().contains("configuration reloaded"),
        "{}",
        logs.text()
    );
    let bad = meshd.api().get("/v1/agent/logs?lines=0").await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}

/// Ten broken configurations, each with the error that names its file, key and reason.
#[test]
fn validate_names_file_key_and_reason_for_ten_broken_configs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases: [(&str, &str, &[&str]); 10] = [
        (
            "01-unknown-key.toml",
            "data_dir = \"/var/lib/meshd\"\ndatacentre = \"east\"\n",
            &["line 2", "`datacentre`", "unknown field"],
        ),
        (
            "02-wrong-type.toml",
            "data_dir = \"/var/lib/meshd\"\nsnapshot_threshold = \"many\"\n",
            &["line 2", "`snapshot_threshold`", "expected u64"],
        ),
        (
            "03-nested-type.toml",
            "data_dir = \"/var/lib/meshd\"\n[dns_config]\nnode_ttl = 5\n",
            &["line 3", "`dns_config.node_ttl`", "expected a string"],
        ),
        (
            "04-bad-duration.toml",
            "data_dir = \"/var/lib/meshd\"\ndrain_timeout = \"soon\"\n",
            &["`drain_timeout`", "\"soon\"", "invalid duration"],
        ),
        (
            "05-bad-address.toml",
            "data_dir = \"/var/lib/meshd\"\nhttp_addr = \"localhost\"\n",
            &["`http_addr`", "\"localhost\"", "IP:PORT"],
        ),
        (
            "06-bad-node-name.toml",
            "data_dir = \"/var/lib/meshd\"\nnode_name = \"web 1\"\n",
            &["`node_name`", "\"web 1\"", "not allowed"],
        ),
        (
            "07-no-data-dir.toml",
            "node_name = \"a\"\n",
            &["`data_dir`", "required"],
        ),
        (
            "08-syntax.toml",
            "data_dir = \"/var/lib/meshd\"\nserver = tru\n",
            &["line 2"],
        ),
        (
            "09-port-type.json",
            r#"{"service": {"name": "web", "port": "eighty"}}"#,
            &["service #1", "Port", "eighty"],
        ),
        (
            "10-check-interval.json",
            r#"{"services": [{"name": "a"}, {"name": "b", "check": {"http": "http://127.0.0.1/", "interval": "often"}}]}"#,
            &["service #2", "Check.Interval", "often"],
        ),
    ];
    expect_one_error_per_file(d, &cases);

    // A valid server configuration (its TLS files are loaded and checked too) and a service
    // file pass, as a directory, with exit 0.
    let good = tempfile::tempdir().expect("tempdir");
    let g = good.path();
    let tls = Tls::create(g).expect("a CA");
    let cert = tls.server_cert("s1", "dc1").expect("a server certificate");
    let server_toml = format!(
        "node_name = \"s1\"\nserver = true\nbootstrap_expect = 1\ndata_dir = \"/var/lib/meshd\"\n\
         drain_timeout = \"15s\"\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        tls.ca_file.display().to_string(),
        cert.cert_file.display().to_string(),
        cert.key_file.display().to_string()
    );
    write(g, "meshd.toml", &server_toml);
    write(g, "web.json", r#"{"service": {"name": "web", "port": 80}}"#);
    let out = validate(g);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));

    // The same file naming a key of another certificate is refused, naming the keys.
    let other = tls.server_cert("s2", "dc1").expect("another certificate");
    write(
        g,
        "meshd.toml",
        &server_toml.replace(
            &format!("{:?}", cert.key_file.display().to_string()),
            &format!("{:?}", other.key_file.display().to_string()),
        ),
    );
    let out = validate(g);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("key_file") && stderr.contains("does not match"),
        "{stderr}"
    );
}

/// Beyond the ten: a misspelt key in a service definition, a standalone check file (which
/// meshd does not run) and a TOML key given twice are named too, one error per file.
#[test]
fn validate_names_misspelt_definition_keys_standalone_checks_and_duplicate_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "web.json",
            r#"{"service": {"name": "web", "port": 80, "check": {"tcp": "127.0.0.1:80", "interval": "5s", "timout": "1s"}}}"#,
            &["web.json", "unknown key `Check.timout`"],
        ),
        (
            "disk.json",
            r#"{"check": {"name": "disk", "ttl": "30s"}}"#,
            &["disk.json", "standalone check definitions"],
        ),
        (
            "meshd.toml",
            "data_dir = \"/var/lib/meshd\"\nlog_level = \"info\"\nlog_level = \"debug\"\n",
            &["meshd.toml", "line 3", "`log_level`", "duplicate key"],
        ),
    ];
    expect_one_error_per_file(d, &cases);
}

/// Writes each `(file name, text, wanted fragments)` into `d`, runs `meshd validate d`, and
/// expects exit 1 and one `error:` line per file, naming it and holding every fragment.
fn expect_one_error_per_file(d: &Path, cases: &[(&str, &str, &[&str])]) {
    for (name, text, _) in cases {
        write(d, name, text);
    }
    let out = validate(d);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), cases.len(), "one error per file:\n{stderr}");
    for (name, _, wants) in cases {
        let line = errors
            .iter()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no error names {name}:\n{stderr}"));
        for want in *wants {
            assert!(line.contains(want), "{name}: {want:?} not in {line:?}");
        }
    }
}

fn validate(path: &Path) -> std::process::Output {
    std::process::Command::new(meshd_bin())
        .arg("validate")
        .arg(path)
        .output()
        .expect("run meshd validate")
}
