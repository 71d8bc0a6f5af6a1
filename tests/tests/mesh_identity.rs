//! Who a caller is on the data plane (namespace harness, see `tests::mesh::Mesh`: a server on
//! host A, agents on B and C):
//!
//! - intentions are enforced per calling identity: on a virtual IP the caller is the local
//!   service registered with the `User` owning the caller's socket (root is `web`, nobody is
//!   `batch`), through an explicit upstream it is the service that declared the upstream,
//!   whatever the uid; denials are counted per source at the destination, and flipping an
//!   intention applies to new connections within seconds;
//! - one long-lived connection keeps echoing while its host's leaf is renewed at half life
//!   and then re-issued under a new root (`meshctl ca rotate`), a new connection carries the
//!   new leaf and is trusted at the destination, and the old one still ends cleanly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::cluster::Node;
use tests::mesh::{
    connect_in, curl, curl_as, metric_sum, register, virtual_ip, Echo, Mesh, API_PORT, PROPAGATE,
    UPSTREAM_PORT,
};
use tests::meshctl::meshctl;
use tests::{wait_for, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// `batch`'s explicit upstream to `api` on host A.
const BATCH_UPSTREAM: u16 = 19192;
/// The echo server's port on C (and so the port of `echo`'s virtual IP).
const ECHO_PORT: u16 = 17009;
/// `nobody` on Debian.
const NOBODY: u32 = 65534;
/// How long a flipped intention may take to stop new connections.
const FLIP: Duration = Duration::from_secs(10);
/// Bound on one echo round trip through the mesh.
const ECHO_TIMEOUT: Duration = Duration::from_secs(10);

/// Log lines of the data plane (tunnels, denials, leaves, roots) and problems, the last 60 of
/// each node: what a failure message shows besides the tails printed on drop.
fn logs(nodes: &[&Node]) -> String {
    const KEYS: [&str; 10] = [
        "tunnel", "denied", "refused", "leaf", "roots", "rotat", " WARN ", " ERROR ", "====",
        "meshd:",
    ];
    let mut out = String::new();
    for n in nodes {
        let text = n.log();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| KEYS.iter().any(|k| l.contains(k)))
            .collect();
        let skip = lines.len().saturating_sub(60);
        out.push_str(&format!("---- {} (data-plane lines) ----\n", n.name()));
        for l in &lines[skip..] {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Asserts that `r` is a prompt refusal (not the 5 s timeout of a hang).
fn assert_refused(r: Result<String, String>, took: Duration, what: &str, nodes: &[&Node]) {
    match r {
        Ok(body) => panic!("{what} reached api (answer {body:?})\n{}", logs(nodes)),
        Err(e) => assert!(
            took < Duration::from_secs(4) && !e.contains("timed out"),
            "{what} was not refused at once but failed after {took:?}: {e}\n{}",
            logs(nodes)
        ),
    }
}

fn assert_api(r: Result<String, String>, what: &str, nodes: &[&Node]) {
    match r {
        Ok(body) => assert!(
            body == "api-b" || body == "api-c",
            "{what}: unexpected answer {body:?}"
        ),
        Err(e) => panic!("{what} failed: {e}\n{}", logs(nodes)),
    }
}

/// The sum of `meshd_proxy_connections_denied_total` for `source` → `destination` in
/// `direction` over `nodes`.
async fn denied(nodes: &[&Node], source: &str, destination: &str, direction: &str) -> f64 {
    let mut sum = 0.0;
    for n in nodes {
        let m = n.api().metrics().await;
        sum += metric_sum(
            &m,
            "meshd_proxy_connections_denied_total",
            &[
                ("source", source),
                ("destination", destination),
                ("direction", direction),
            ],
        );
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_are_enforced_per_caller_identity() {
    let mesh = Mesh::start(&[("default_intention_policy", "\"deny\"")]).await;
    let (a, b, c) = (mesh.a(), mesh.b(), mesh.c());
    let all = [a, b, c];
    register(
        a.api(),
        json!({"Name": "web", "Port": 8000, "Address": "127.0.0.1", "User": "root",
               "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                   {"DestinationName": "api", "LocalBindPort": UPSTREAM_PORT}]}}}}),
    )
    .await;
    register(
        a.api(),
        json!({"Name": "batch", "Port": 8001, "Address": "127.0.0.1", "User": "nobody",
               "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                   {"DestinationName": "api", "LocalBindPort": BATCH_UPSTREAM}]}}}}),
    )
    .await;
    for (src, action) in [("web", "allow"), ("batch", "deny")] {
        let r = a
            .api()
            .post_json(
                "/v1/connect/intentions",
                &json!({"SourceName": src, "DestinationName": "api", "Action": action}),
            )
            .await;
        r.expect_status(200);
    }
    let vip = virtual_ip(a, "api").await;
    let vip_url = format!("http://{vip}:{API_PORT}/");
    let web_up = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    let batch_up = format!("http://127.0.0.1:{BATCH_UPSTREAM}/");

    // Everything is in place once web gets through both ways and batch's upstream listens
    // (refused by the destination, not "connection refused" on A).
    wait_until(
        PROPAGATE,
        "web reaches api (virtual IP and upstream)",
        || async {
            curl(&mesh.cluster, a, &vip_url).is_ok() && curl(&mesh.cluster, a, &web_up).is_ok()
        },
    )
    .await;
    wait_until(
        PROPAGATE,
        "batch's upstream on A accepts (curl fails past connecting)",
        || async {
            curl(&mesh.cluster, a, &batch_up)
                .err()
                .is_some_and(|e| !e.contains("(7)"))
        },
    )
    .await;
    let web_denied_before = denied(&[b, c], "web", "api", "inbound").await;
    let batch_denied_before = denied(&[b, c], "batch", "api", "inbound").await;

    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        // Virtual IP: the socket's owner decides. root is web (allowed)...
        assert_api(
            curl(&mesh.cluster, a, &vip_url),
            &format!("round {round}: root (web) through api's virtual IP"),
            &all,
        );
        // ...setpriv itself is not what fails (uid 0 through it is still web)...
        assert_api(
            curl_as(&mesh.cluster, a, 0, &vip_url),
            &format!("round {round}: uid 0 through setpriv on api's virtual IP"),
            &all,
        );
        // ...and nobody is batch (denied).
        let t = Instant::now();
        let r = curl_as(&mesh.cluster, a, NOBODY, &vip_url);
        assert_refused(
            r,
            t.elapsed(),
            &format!("round {round}: nobody (batch) through api's virtual IP"),
            &all,
        );
        // Upstreams: the port decides, whoever connects (root here).
        assert_api(
            curl(&mesh.cluster, a, &web_up),
            &format!("round {round}: root through web's upstream"),
            &all,
        );
        let t = Instant::now();
        let r = curl(&mesh.cluster, a, &batch_up);
        assert_refused(
            r,
            t.elapsed(),
            &format!("round {round}: root through batch's upstream"),
            &all,
        );
    }

    // Each refused connection was denied at the destination as batch → api, never as web.
    let batch_denied = denied(&[b, c], "batch", "api", "inbound").await - batch_denied_before;
    assert!(
        batch_denied >= (2 * ROUNDS) as f64,
        "B and C counted {batch_denied} inbound denials of batch → api, wanted at least {} \
         (virtual IP as nobody and batch's upstream, {ROUNDS} rounds each)\nB:\n{}\nC:\n{}\n{}",
        2 * ROUNDS,
        b.api().metrics().await,
        c.api().metrics().await,
        logs(&all)
    );
    let web_denied = denied(&[b, c], "web", "api", "inbound").await - web_denied_before;
    assert_eq!(
        web_denied,
        0.0,
        "web was denied while allowed\n{}",
        logs(&all)
    );
    let outbound = denied(&[a], "batch", "api", "outbound").await;
    assert!(
        outbound >= (2 * ROUNDS) as f64,
        "A counted {outbound} outbound denials of batch → api\n{}\n{}",
        a.api().metrics().await,
        logs(&all)
    );

    // Flip web → api to deny: new connections are refused within seconds.
    a.note("flip web -> api to deny");
    a.api()
        .put_json(
            "/v1/connect/intentions/exact?source=web&destination=api",
            &json!({"Action": "deny"}),
        )
        .await
        .expect_status(200);
    let flipped = Instant::now();
    wait_until(
        FLIP,
        "web's new connections are denied after the flip",
        || async {
            curl(&mesh.cluster, a, &vip_url).is_err() && curl(&mesh.cluster, a, &web_up).is_err()
        },
    )
    .await;
    let took = flipped.elapsed();
    for url in [&vip_url, &web_up] {
        let t = Instant::now();
        let r = curl(&mesh.cluster, a, url);
        assert_refused(
            r,
            t.elapsed(),
            &format!("root (web) {url} after the flip"),
            &all,
        );
    }
    let web_denied = denied(&[b, c], "web", "api", "inbound").await - web_denied_before;
    assert!(
        web_denied >= 2.0,
        "B and C counted {web_denied} denials of web after the flip\n{}",
        logs(&all)
    );
    // batch is still denied; nothing else changed.
    let t = Instant::now();
    let r = curl_as(&mesh.cluster, a, NOBODY, &vip_url);
    assert_refused(r, t.elapsed(), "nobody (batch) after the flip", &all);
    eprintln!(
        "denials of batch at B and C: {batch_denied}, outbound at A: {outbound}; the flip \
         took effect in {took:?}"
    );
}

/// One line through an echo connection and back.
async fn echo_line(conn: &mut TcpStream, i: usize) -> Result<(), String> {
    let line = format!("line {i}\n");
    conn.write_all(line.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; line.len()];
    tokio::time::timeout(ECHO_TIMEOUT, conn.read_exact(&mut back))
        .await
        .map_err(|_| format!("no echo within {ECHO_TIMEOUT:?}"))?
        .map_err(|e| format!("read: {e}"))?;
    if back == line.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "sent {line:?}, got {:?}",
            String::from_utf8_lossy(&back)
        ))
    }
}

/// One connection kept echoing a line a second in the background until stopped.
struct KeptConnection {
    echoed: Arc<AtomicUsize>,
    error: Arc<Mutex<Option<String>>>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Option<TcpStream>>,
}

impl KeptConnection {
    fn start(mut conn: TcpStream) -> KeptConnection {
        let echoed = Arc::new(AtomicUsize::new(0));
        let error = Arc::new(Mutex::new(None));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (n, err) = (echoed.clone(), error.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let i = n.load(Ordering::SeqCst);
                if let Err(e) = echo_line(&mut conn, i).await {
                    *err.lock().expect("error slot") = Some(format!(
                        "line {i}, {:?} after the connection was kept: {e}",
                        started.elapsed()
                    ));
                    return None;
                }
                n.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    _ = &mut stopped => return Some(conn),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
        KeptConnection {
            echoed,
            error,
            stop: Some(stop),
            task,
        }
    }

    fn echoed(&self) -> usize {
        self.echoed.load(Ordering::SeqCst)
    }

    /// Panics (with the logs of `nodes`) if the connection stopped echoing.
    fn check(&self, when: &str, nodes: &[&Node]) {
        if let Some(e) = self.error.lock().expect("error slot").clone() {
            panic!(
                "the long-lived connection broke {when}: {e}\n{}",
                logs(nodes)
            );
        }
    }

    /// Waits until it has echoed two more lines than now (it still works after an event).
    async fn still_echoes(&self, when: &str, nodes: &[&Node]) {
        let from = self.echoed();
        wait_until(
            ECHO_TIMEOUT + Duration::from_secs(5),
            &format!("the long-lived connection echoes {when}"),
            || async {
                self.check(when, nodes);
                self.echoed() >= from + 2
            },
        )
        .await;
    }

    /// Stops the echo loop and hands the connection back.
    async fn finish(mut self, nodes: &[&Node]) -> TcpStream {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let conn = (&mut self.task).await.expect("the echo task");
        self.check("at the end", nodes);
        conn.expect("the connection back")
    }
}

/// The leaf `node` holds for `service`: (SerialNumber, CertPEM).
async fn leaf(node: &Node, service: &str) -> (String, String) {
    let r = node
        .api()
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    r.expect_status(200);
    let v = r.json();
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("leaf of {service}: no {k} in {v}"))
            .to_string()
    };
    assert_eq!(
        v["ServiceURI"]
            .as_str()
            .map(|u| u.ends_with(&format!("/svc/{service}"))),
        Some(true),
        "leaf of {service}: {v}"
    );
    (field("SerialNumber"), field("CertPEM"))
}

fn leaves_issued(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("meshd_proxy_leaves_issued"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum()
}

/// Whether `openssl verify` accepts `leaf_pem` against `root_pem` alone.
fn verifies(dir: &std::path::Path, root_pem: &str, leaf_pem: &str) -> Result<(), String> {
    let (root, leaf) = (dir.join("root.pem"), dir.join("leaf.pem"));
    std::fs::write(&root, root_pem).expect("write root.pem");
    std::fs::write(&leaf, leaf_pem).expect("write leaf.pem");
    let out = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&root)
        .arg(&leaf)
        .output()
        .map_err(|e| format!("run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `meshctl --http-addr <node> -o json ca rotate`: the new active root's ID.
async fn meshctl_rotate(node: &Node) -> String {
    let run = meshctl(node.api(), &["-o", "json", "ca", "rotate"]).await;
    if run.code != Some(0) {
        panic!("{}\n{}", run.describe(), logs(&[node]));
    }
    let text = run.stdout;
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("`meshctl -o json ca rotate` printed no JSON ({e}): {text}"));
    v["ActiveRootID"]
        .as_str()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| panic!("`meshctl ca rotate` named no new root: {text}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_connection_survives_leaf_renewal_and_root_rotation() {
    let started = Instant::now();
    let mesh = Mesh::start(&[
        ("default_intention_policy", "\"allow\""),
        ("leaf_cert_ttl", "\"1m\""),
    ])
    .await;
    let (a, c) = (mesh.a(), mesh.c());
    let nodes = [a, c];
    let echo = Echo::start(c.ns(), ECHO_PORT);
    register(
        c.api(),
        json!({"Name": "echo", "Port": echo.addr().port(), "Address": "127.0.0.1"}),
    )
    .await;
    let vip = virtual_ip(a, "echo").await;
    let target: SocketAddr = format!("{vip}:{ECHO_PORT}").parse().expect("address");
    let conn = wait_for(
        PROPAGATE,
        "an echo connection through echo's virtual IP",
        || async {
            let mut conn = connect_in(a.ns(), target).await.ok()?;
            echo_line(&mut conn, 0).await.ok()?;
            Some(conn)
        },
    )
    .await;
    let kept = KeptConnection::start(conn);
    let setup = started.elapsed();

    // A hosts only web: a connection from A to a virtual IP carries web's leaf.
    let (first_serial, first_pem) = leaf(a, "web").await;
    let roots_before = a.api().get("/v1/connect/ca/roots").await.json();
    let old_root = roots_before["ActiveRootID"]
        .as_str()
        .expect("an active root")
        .to_string();
    let issued_before = leaves_issued(&a.api().metrics().await);

    // Renewal at half the 1-minute life, while the connection keeps echoing.
    let (renewed_serial, renewed_pem) = wait_for(
        Duration::from_secs(60),
        "web's leaf on A is renewed (1-minute leaves renew at 30 s)",
        || async {
            kept.check("before the renewal", &nodes);
            let (serial, pem) = leaf(a, "web").await;
            (serial != first_serial).then_some((serial, pem))
        },
    )
    .await;
    let renewal_at = started.elapsed();
    a.note("web's leaf renewed");
    assert_ne!(
        renewed_pem, first_pem,
        "a new serial but the same certificate"
    );
    let issued = leaves_issued(&a.api().metrics().await);
    assert!(
        issued > issued_before,
        "meshd_proxy_leaves_issued_total on A did not grow with the renewal ({issued_before} → {issued})"
    );
    kept.still_echoes("after the renewal", &nodes).await;

    // Rotation: a new active root; web's leaf is re-issued under it.
    a.note("meshctl ca rotate");
    let new_root = meshctl_rotate(a).await;
    assert_ne!(new_root, old_root, "the rotation kept the old root active");
    let (_, rotated_pem) = wait_for(
        PROPAGATE,
        "web's leaf on A is re-issued after the rotation",
        || async {
            kept.check("during the rotation", &nodes);
            let (serial, pem) = leaf(a, "web").await;
            (serial != renewed_serial).then_some((serial, pem))
        },
    )
    .await;
    let rotation_at = started.elapsed();
    let roots = a.api().get("/v1/connect/ca/roots").await.json();
    let list = roots["Roots"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "two roots after one rotation: {roots}");
    assert_eq!(
        roots["ActiveRootID"].as_str(),
        Some(new_root.as_str()),
        "{roots}"
    );
    let root_pem = |id: &str| -> String {
        let r = list
            .iter()
            .find(|r| r["ID"] == id)
            .unwrap_or_else(|| panic!("no root {id} in {roots}"));
        assert_eq!(r["Active"].as_bool(), Some(id == new_root), "{roots}");
        r["RootCert"].as_str().expect("RootCert").to_string()
    };
    let (old_pem, new_pem) = (root_pem(&old_root), root_pem(&new_root));
    let dir = tempfile::tempdir().expect("temp dir");
    verifies(dir.path(), &new_pem, &rotated_pem)
        .unwrap_or_else(|e| panic!("the re-issued leaf does not chain to the new root: {e}"));
    assert!(
        verifies(dir.path(), &old_pem, &rotated_pem).is_err(),
        "the re-issued leaf still chains to the old root"
    );
    verifies(dir.path(), &old_pem, &renewed_pem)
        .unwrap_or_else(|e| panic!("the renewed leaf does not chain to the old root: {e}"));

    // The old connection (old leaf, old root) still echoes...
    kept.still_echoes("after the rotation", &nodes).await;
    // ...a new one (new leaf) is trusted by C...
    let mut fresh = wait_for(
        Duration::from_secs(10),
        "a new connection through echo's virtual IP after the rotation",
        || async {
            kept.check("while opening a new connection", &nodes);
            let mut fresh = connect_in(a.ns(), target).await.ok()?;
            echo_line(&mut fresh, 0).await.ok()?;
            Some(fresh)
        },
    )
    .await;
    for i in 1..4 {
        echo_line(&mut fresh, i).await.unwrap_or_else(|e| {
            panic!(
                "the new connection after the rotation: {e}\n{}",
                logs(&nodes)
            )
        });
    }
    // ...and the old one ends cleanly: half-close, then EOF with nothing more.
    let echoed = kept.echoed();
    let mut conn = kept.finish(&nodes).await;
    conn.shutdown()
        .await
        .expect("half-close the old connection");
    let mut rest = Vec::new();
    tokio::time::timeout(ECHO_TIMEOUT, conn.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no EOF within {ECHO_TIMEOUT:?} after half-closing the old connection\n{}",
                logs(&nodes)
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "the old connection did not end cleanly after the half-close: {e}\n{}",
                logs(&nodes)
            )
        });
    assert!(rest.is_empty(), "bytes after the half-close: {rest:?}");
    fresh
        .shutdown()
        .await
        .expect("half-close the new connection");
    let mut rest = Vec::new();
    tokio::time::timeout(ECHO_TIMEOUT, fresh.read_to_end(&mut rest))
        .await
        .expect("EOF on the new connection")
        .expect("the new connection ends cleanly");
    eprintln!(
        "set up in {setup:?}; renewal seen at {renewal_at:?}, re-issue after the rotation at \
         {rotation_at:?}; {echoed} lines through the old connection; total {:?}",
        started.elapsed()
    );
}
