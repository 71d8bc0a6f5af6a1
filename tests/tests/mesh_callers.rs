//! Identities on the data plane (namespace harness, see `tests::mesh::Mesh`): intentions are
//! enforced per calling service — found from the uid owning the caller's socket on a virtual
//! IP, or from the upstream port — and a long-lived connection survives a leaf renewal and a
//! root rotation.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tests::cluster::Node;
use tests::mesh::{
    connect_in, curl, metric_sum, register, virtual_ip, Echo, Mesh, API_PORT, PROPAGATE,
    UPSTREAM_PORT,
};
use tests::{wait_for, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `batch`'s upstream to `api` on host A.
const BATCH_UPSTREAM: u16 = 19192;
const ECHO_PORT: u16 = 17008;

/// `curl URL` in `node`'s namespace as uid/gid `uid` (through `setpriv`).
fn curl_as(mesh: &Mesh, node: &Node, uid: u32, url: &str) -> Result<String, String> {
    let id = uid.to_string();
    let out = mesh
        .cluster
        .net()
        .command(node.host(), "setpriv")
        .args([
            &format!("--reuid={id}"),
            &format!("--regid={id}"),
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

async fn intention(node: &Node, src: &str, dst: &str, action: &str) {
    node.api()
        .put_json(
            &format!("/v1/connect/intentions/exact?source={src}&destination={dst}"),
            &json!({ "Action": action }),
        )
        .await
        .expect_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_are_enforced_per_calling_service() {
    let mesh = Mesh::start(&[("default_intention_policy", "\"deny\"")]).await;
    let a = mesh.a();
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
    intention(a, "web", "api", "allow").await;
    intention(a, "batch", "api", "deny").await;
    let vip = virtual_ip(a, "api").await;
    let vip_url = format!("http://{vip}:{API_PORT}/");
    let web_up = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    let batch_up = format!("http://127.0.0.1:{BATCH_UPSTREAM}/");

    wait_until(
        PROPAGATE,
        "root (web) reaches api through its virtual IP",
        || async { curl(&mesh.cluster, a, &vip_url).is_ok() },
    )
    .await;
    wait_until(PROPAGATE, "web's upstream answers", || async {
        curl(&mesh.cluster, a, &web_up).is_ok()
    })
    .await;
    for _ in 0..3 {
        let body = curl(&mesh.cluster, a, &vip_url).expect("web through the virtual IP");
        assert!(body == "api-b" || body == "api-c", "{body}");
        curl(&mesh.cluster, a, &web_up).expect("web through its upstream");
        // setpriv works (uid 0 through it is web), so a failure as nobody is the denial.
        curl_as(&mesh, a, 0, &vip_url).expect("root through setpriv");
        let r = curl_as(&mesh, a, 65534, &vip_url);
        assert!(
            r.is_err(),
            "nobody (batch) reached api through the virtual IP: {r:?}"
        );
        let r = curl(&mesh.cluster, a, &batch_up);
        assert!(r.is_err(), "batch's upstream reached api: {r:?}");
    }
    let mut denied = 0.0;
    for n in [mesh.b(), mesh.c()] {
        let m = n.api().metrics().await;
        denied += metric_sum(
            &m,
            "meshd_proxy_connections_denied_total",
            &[("source", "batch"), ("destination", "api")],
        );
    }
    assert!(denied >= 6.0, "B and C counted {denied} denials of batch");

    // Flip web to deny: its new connections are refused.
    intention(a, "web", "api", "deny").await;
    wait_until(PROPAGATE, "web is denied after the flip", || async {
        curl(&mesh.cluster, a, &web_up).is_err() && curl(&mesh.cluster, a, &vip_url).is_err()
    })
    .await;
}

/// One line through an echo connection and back.
async fn echo_line(conn: &mut TcpStream, i: usize) -> Result<(), String> {
    let line = format!("line {i}\n");
    conn.write_all(line.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut back = vec![0u8; line.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .map_err(|_| "no echo within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if back == line.as_bytes() {
        Ok(())
    } else {
        Err(format!("echoed {back:?}"))
    }
}

async fn leaf_pem(node: &Node, service: &str) -> String {
    let r = node
        .api()
        .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
        .await;
    r.expect_status(200);
    r.json()["CertPEM"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_connection_survives_leaf_renewal_and_root_rotation() {
    let mesh = Mesh::start(&[
        ("default_intention_policy", "\"allow\""),
        ("leaf_cert_ttl", "\"1m\""),
    ])
    .await;
    let (a, c) = (mesh.a(), mesh.c());
    let echo = Echo::start(c.ns(), ECHO_PORT);
    register(
        c.api(),
        json!({"Name": "echo", "Port": echo.addr().port(), "Address": "127.0.0.1"}),
    )
    .await;
    let vip = virtual_ip(a, "echo").await;
    let target: SocketAddr = format!("{vip}:{ECHO_PORT}").parse().expect("address");
    let mut conn = wait_for(PROPAGATE, "an echo connection through the mesh", || async {
        let mut conn = connect_in(a.ns(), target).await.ok()?;
        echo_line(&mut conn, 0).await.ok()?;
        Some(conn)
    })
    .await;
    // A's only service is web: the connection carries web's leaf.
    let first = leaf_pem(a, "web").await;
    let mut i = 1;

    // Renewal at half the 1-minute life; the connection keeps echoing meanwhile.
    let renewed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            echo_line(&mut conn, i)
                .await
                .unwrap_or_else(|e| panic!("echo {i} before the renewal: {e}"));
            i += 1;
            let now = leaf_pem(a, "web").await;
            if now != first {
                return now;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await
    .expect("web's leaf renewed within 60 s");
    echo_line(&mut conn, i)
        .await
        .expect("echo after the renewal");
    i += 1;

    // Rotation: a new root; web's leaf is re-issued under it.
    let roots_before = a.api().get("/v1/connect/ca/roots").await.json();
    let r = a
        .api()
        .request(reqwest::Method::POST, "/v1/mesh/ca/rotate", None)
        .await;
    r.expect_status(200);
    let new_root = r.json()["ActiveRootID"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(
        roots_before["ActiveRootID"].as_str(),
        Some(new_root.as_str())
    );
    let deadline = tokio::time::Instant::now() + PROPAGATE;
    loop {
        echo_line(&mut conn, i)
            .await
            .unwrap_or_else(|e| panic!("echo {i} during the rotation: {e}"));
        i += 1;
        if leaf_pem(a, "web").await != renewed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web's leaf was not re-issued under the new root within {PROPAGATE:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let roots = a.api().get("/v1/connect/ca/roots").await.json();
    assert_eq!(roots["Roots"].as_array().map(Vec::len), Some(2), "{roots}");
    assert_eq!(roots["ActiveRootID"].as_str(), Some(new_root.as_str()));
    for k in 0..3 {
        echo_line(&mut conn, 1000 + k)
            .await
            .unwrap_or_else(|e| panic!("the old connection after the rotation: {e}"));
    }
    // A new connection carries the new leaf, and C trusts it.
    wait_until(PROPAGATE, "a new connection after the rotation", || async {
        match connect_in(a.ns(), target).await {
            Ok(mut fresh) => echo_line(&mut fresh, 0).await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    // The old connection ends cleanly: half-close, EOF.
    conn.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .await
        .expect("EOF after the half-close");
    assert!(rest.is_empty(), "{rest:?}");
}
