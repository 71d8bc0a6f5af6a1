//! The control plane outlives the data plane's exhaustion (issue 13). Agent B's descriptor
//! limit is lowered with `prlimit` until the connections it proxies fail; meanwhile B's HTTP
//! API (new connections included), DNS, heartbeats and writes through Raft keep working, every
//! refusal is counted and the limit is named in the log; once the connections close, B
//! proxies again by itself.

use std::time::{Duration, Instant};

use tests::cluster::{member_status, STATUS_ALIVE};
use tests::dig::Dig;
use tests::mesh::{
    connect_in, echo_through_vip, metric_sum, register_echo, virtual_ip, Mesh, PROPAGATE,
};
use tests::sys::{metric_value, open_fds, raise_nofile_limit, set_nofile_limit};
use tests::{wait_for, wait_until, Api};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ECHO_PORT: u16 = 17009;
/// Descriptors B keeps for its control plane (`proxy_reserved_fds`).
const RESERVE: usize = 64;
/// Room left for proxied connections when B's limit is lowered.
const ROOM: usize = 40;
/// Connections tried at most before one must have failed.
const MAX_TRIES: usize = 400;
/// The liveness bound: B must stay alive through several of them.
const LIVENESS: Duration = Duration::from_secs(3);

/// One round trip through `conn`; false when the connection was refused or cut.
async fn round_trip(conn: &mut TcpStream) -> bool {
    let attempt = async {
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"ping")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Ok(true))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_starved_data_plane_leaves_the_control_plane_serving() {
    raise_nofile_limit().expect("raise the open-file limit");
    let mesh = Mesh::start(&[
        ("default_intention_policy", "\"allow\""),
        ("liveness_timeout", "\"3s\""),
        ("proxy_reserved_fds", &RESERVE.to_string()),
    ])
    .await;
    let (a, b, c) = (mesh.a(), mesh.b(), mesh.c());
    let _echo = register_echo(c, ECHO_PORT).await;
    let target = echo_through_vip(b, "echo", ECHO_PORT).await;

    // B's limit: what it holds now, the reserve, and room for about ROOM connections.
    let pid = b.pid().expect("B runs");
    let open = open_fds(pid).expect("B's descriptors");
    let limit = open + RESERVE + ROOM;
    set_nofile_limit(pid, limit as u64).expect("prlimit");
    wait_until(
        PROPAGATE,
        "B's budget follows the lowered limit",
        || async {
            let m = b.api().metrics().await;
            metric_value(&m, "meshd_proxy_descriptor_budget")
                .is_some_and(|v| v <= (ROOM + 8) as f64)
        },
    )
    .await;

    // Connections through B until one fails.
    let mut held = Vec::new();
    let mut failed = None;
    for i in 0..MAX_TRIES {
        match connect_in(b.ns(), target).await {
            Ok(mut conn) => {
                if round_trip(&mut conn).await {
                    held.push(conn);
                } else {
                    failed = Some(i);
                    break;
                }
            }
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                    ),
                    "connection {i} failed otherwise than by a refusal: {e}"
                );
                failed = Some(i);
                break;
            }
        }
    }
    let failed = failed.unwrap_or_else(|| panic!("{MAX_TRIES} connections all went through"));
    eprintln!(
        "B: limit {limit} ({open} open before), {} connections held, number {failed} refused",
        held.len()
    );
    assert!(
        held.len() >= ROOM / 2,
        "only {} connections before the limit",
        held.len()
    );

    // Counted and logged with the limit's name.
    let m = b.api().metrics().await;
    assert!(
        metric_sum(
            &m,
            "meshd_proxy_limit_refusals_total",
            &[("limit", "descriptors")]
        ) >= 1.0,
        "the refusal is counted"
    );
    assert!(
        metric_sum(
            &m,
            "meshd_proxy_connections_refused_total",
            &[("reason", "descriptor_limit")]
        ) >= 1.0
    );
    assert!(
        b.log().contains("descriptor budget is used up"),
        "the refusal is logged with its limit"
    );

    // While the connections are held: B's API over new connections, DNS, writes through Raft,
    // and heartbeats for several liveness bounds.
    let missed = |m: &str| metric_value(m, "meshd_liveness_heartbeats_missed").unwrap_or(0.0);
    let missed_before = missed(&b.api().metrics().await);
    let vip = virtual_ip(b, "echo").await;
    let dig = Dig::new("127.0.0.1:53".parse().expect("address")).in_netns(b.ns());
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < LIVENESS * 3 {
        round += 1;
        for _ in 0..16 {
            // A new client: a new connection to B's API each time.
            Api::new(b.api().base())
                .get("/v1/agent/self")
                .await
                .expect_status(200);
        }
        let answer = dig.must("echo.virtual.mesh", "A", &[]).await;
        assert_eq!(answer.rdatas("A"), vec![vip.clone()], "B's DNS");
        b.api()
            .put("/v1/kv/limits/round", round.to_string())
            .await
            .expect_true();
        assert_eq!(
            member_status(a.api(), b.name()).await,
            Some(STATUS_ALIVE),
            "the server sees B alive"
        );
        // Pacing the checks over the liveness bound.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        missed(&b.api().metrics().await),
        missed_before,
        "B missed no heartbeat"
    );
    assert!(
        held.len() >= ROOM / 2 && round >= 3,
        "{round} rounds of checks"
    );

    // The held connections still work, and once they close B proxies again.
    for conn in held.iter_mut().take(3) {
        assert!(round_trip(conn).await, "a held connection still echoes");
    }
    drop(held);
    wait_for(
        PROPAGATE,
        "B proxies again once the connections closed",
        || async {
            let mut conn = connect_in(b.ns(), target).await.ok()?;
            round_trip(&mut conn).await.then_some(())
        },
    )
    .await;
    wait_until(
        PROPAGATE,
        "B's data plane holds nothing but that",
        || async {
            let m = b.api().metrics().await;
            metric_value(&m, "meshd_proxy_descriptors_held").is_some_and(|v| v <= 1.0)
        },
    )
    .await;
}
