//! Reload and drain across hosts (server A, agents B and C in their own network namespaces):
//! - a connection proxied from A to B stays up while A reloads with a new server certificate
//!   and B reloads a new `drain_timeout` and `log_level`;
//! - SIGTERM on B while a proxied connection into it is open: B refuses new streams, cuts the
//!   connection at its (reloaded) 1 s `drain_timeout` and exits 0;
//! - SIGTERM on A during a transfer from A to C: A takes no new connections, the transfer
//!   completes byte for byte within `drain_timeout`, then A exits 0.

use std::time::Duration;

use serde_json::json;
use tests::mesh::{
    connect_in, echo_hashes, echo_hashes_paced, echo_through_vip, metric_sum, register, Echo, Mesh,
    PROPAGATE,
};
use tests::netns::send_signal;
use tests::wait::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO_PORT: u16 = 7400;

/// One small echo round trip on an open connection.
async fn round_trip(conn: &mut TcpStream, what: &[u8]) -> std::io::Result<()> {
    conn.write_all(what).await?;
    let mut back = vec![0u8; what.len()];
    tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no echo within 10 s"))??;
    if back != what {
        return Err(std::io::Error::other("echo differs"));
    }
    Ok(())
}

async fn reloads_ok(api: &tests::http::Api) -> f64 {
    metric_sum(
        &api.metrics().await,
        "meshd_config_reloads_total",
        &[("result", "ok")],
    )
}

#[tokio::test]
async fn proxied_connections_survive_reloads_and_drain_on_sigterm() {
    let mut mesh = Mesh::start(&[
        ("default_intention_policy", "\"allow\""),
        ("drain_timeout", "\"30s\""),
    ])
    .await;
    let echo_b = Echo::start(mesh.b().ns(), ECHO_PORT);
    let echo_c = Echo::start(mesh.c().ns(), ECHO_PORT);
    register(
        mesh.b().api(),
        json!({"Name": "echo", "Port": echo_b.addr().port(), "Address": "127.0.0.1"}),
    )
    .await;
    register(
        mesh.c().api(),
        json!({"Name": "echo2", "Port": echo_c.addr().port(), "Address": "127.0.0.1"}),
    )
    .await;
    let to_b = echo_through_vip(mesh.a(), "echo", ECHO_PORT).await;
    let to_c = echo_through_vip(mesh.a(), "echo2", ECHO_PORT).await;

    // --- Reloads while a connection from A to B is open ---------------------------------------
    let mut open = connect_in(mesh.a().ns(), to_b).await.expect("connect");
    round_trip(&mut open, b"before the reloads")
        .await
        .expect("echo");

    // A: a new server certificate in the same files. B: a shorter drain_timeout.
    let a_name = mesh.a().name().to_string();
    mesh.cluster
        .tls()
        .server_cert(&a_name, "dc1")
        .expect("re-issue A's certificate");
    let mut b_config = mesh.b().config().clone();
    b_config.extra.retain(|(k, _)| k != "drain_timeout");
    b_config
        .extra
        .push(("drain_timeout".into(), "\"1s\"".into()));
    b_config.log_level = "warn".into();
    mesh.cluster
        .agent_mut(0)
        .set_config(b_config)
        .expect("rewrite B's config");
    for node in [mesh.a(), mesh.b()] {
        send_signal(node.pid().expect("running"), libc::SIGHUP);
    }
    wait_until(PROPAGATE, "A and B reloaded", || async {
        reloads_ok(mesh.a().api()).await >= 1.0 && reloads_ok(mesh.b().api()).await >= 1.0
    })
    .await;
    assert!(
        mesh.a().log().contains("TLS certificate"),
        "A's reload installed its new certificate"
    );
    // B's new log level (warn) applied before the reload logged its summary at info.
    assert!(mesh.a().log().contains("configuration reloaded"));
    assert!(
        !mesh.b().log().contains("configuration reloaded"),
        "B's log level is warn after its reload"
    );
    round_trip(&mut open, b"after the reloads")
        .await
        .expect("the open connection survives both reloads");
    let fresh = connect_in(mesh.a().ns(), to_b).await.expect("connect");
    let (x, y) = echo_hashes(fresh, 1 << 20).await.expect("a new connection");
    assert_eq!(x, y);

    // --- SIGTERM on B with a connection into it open: cut at B's 1 s drain_timeout ------------
    send_signal(mesh.b().pid().expect("running"), libc::SIGTERM);
    let status = mesh
        .cluster
        .agent_mut(0)
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("B exits after its drain timeout");
    assert_eq!(status.code(), Some(0), "B's exit status");
    assert!(
        mesh.b().log().contains("cut at the drain timeout"),
        "B logged the cut connection"
    );
    let mut buf = [0u8; 16];
    let after = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = open.write_all(b"still there?").await;
        open.read(&mut buf).await
    })
    .await
    .expect("the cut connection ends instead of hanging");
    assert!(
        matches!(after, Ok(0) | Err(_)),
        "B's connection was cut: {after:?}"
    );

    // --- SIGTERM on A during a transfer from A to C: it completes, then A exits 0 -------------
    let conn = connect_in(mesh.a().ns(), to_c).await.expect("connect");
    // 24 MiB paced at 64 KiB per 8 ms: about 3 s.
    let transfer = tokio::spawn(echo_hashes_paced(conn, 24 << 20, Duration::from_millis(8)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!transfer.is_finished(), "the transfer is still running");
    send_signal(mesh.a().pid().expect("running"), libc::SIGTERM);
    wait_until(PROPAGATE, "A stops accepting", || async {
        match connect_in(mesh.a().ns(), to_c).await {
            Err(_) => true,
            Ok(c) => echo_hashes(c, 16).await.is_err(),
        }
    })
    .await;
    let (sent, back) = transfer
        .await
        .expect("transfer task")
        .expect("the transfer completes during the drain");
    assert_eq!(sent, back, "24 MiB came back different");
    let status = mesh
        .cluster
        .server_mut(0)
        .wait_exit(Duration::from_secs(40))
        .await
        .expect("A exits once the transfer is done");
    assert_eq!(status.code(), Some(0), "A's exit status");
    let log = mesh.a().log();
    assert!(log.contains("drained"), "A drained without cutting");
}
