//! The data plane across hosts (namespace harness: a server on host A, agents on hosts B and
//! C): an HTTP server registered as `api` on C (bound to 127.0.0.1 only) and a second instance
//! on B, reached from A through `api`'s virtual IP (by its DNS name too) and through an
//! explicit upstream; callers without a mesh identity and denied callers kept out; bulk,
//! concurrency and half-close through one tunnel; failover when C's instance stops and when C
//! dies.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tests::cluster::Tls;
use tests::mesh::{
    connect_in, curl, echo_hashes, echo_through_vip, metric_sum, passing, register_echo,
    tunnel_probe, virtual_ip, Mesh, NamedHttp, Probe, API_PORT, PROPAGATE, UPSTREAM_PORT,
};
use tests::{wait_for, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port of the echo service on C.
const ECHO_PORT: u16 = 17007;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_api_through_its_virtual_ip_and_an_upstream_spread_over_both_instances() {
    let mesh = Mesh::start(&[("default_intention_policy", "\"allow\"")]).await;
    let vip = virtual_ip(mesh.a(), "api").await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for url in [
        format!("http://api.virtual.mesh:{API_PORT}/"),
        format!("http://{vip}:{API_PORT}/"),
        format!("http://127.0.0.1:{UPSTREAM_PORT}/"),
    ] {
        wait_until(PROPAGATE, &format!("{url} answers from A"), || async {
            curl(&mesh.cluster, mesh.a(), &url).is_ok()
        })
        .await;
        for _ in 0..20 {
            let body = curl(&mesh.cluster, mesh.a(), &url)
                .unwrap_or_else(|e| panic!("curl {url} from A: {e}\n{}", mesh.a().log()));
            *seen.entry(body).or_default() += 1;
        }
    }
    assert_eq!(
        seen.keys().cloned().collect::<Vec<_>>(),
        vec!["api-b".to_string(), "api-c".to_string()],
        "requests spread over both instances: {seen:?}"
    );
    let _ = mesh.b();
    let _ = mesh.c();
}

/// A QUIC client with no certificate, or with one from another CA, never reaches `api` on C;
/// a deny intention stops `web`'s connections (virtual IP and upstream) and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_the_intentions_allow_reach_api() {
    let mesh = Mesh::start(&[("default_intention_policy", "\"allow\"")]).await;
    let (a, c) = (mesh.a(), mesh.c());
    let c_quic: SocketAddr = c.quic_addr().parse().expect("C's QUIC address");
    let c_name = format!("{}.node.dc1.mesh", c.name());
    let roots = std::fs::read_to_string(&mesh.cluster.tls().ca_file).expect("CA file");
    let hits_before = mesh.servers[1].hits();

    // No client certificate: the handshake is admitted (enrollment needs that) but the tunnel
    // is refused before anything is connected.
    let p = tunnel_probe(a.ns(), c_quic, &c_name, &roots, None, "api", API_PORT).await;
    assert!(
        matches!(&p, Probe::Answer(5, why) if why.contains("certificate")),
        "anonymous tunnel: {p:?}"
    );

    // A certificate from another CA: the handshake fails.
    let other = tempfile::tempdir().expect("temp dir");
    let other_ca = Tls::create(other.path()).expect("another CA");
    let evil = other_ca
        .server_cert("evil", "dc1")
        .expect("a cert of the other CA");
    let (cert, key) = (
        std::fs::read_to_string(&evil.cert_file).expect("cert"),
        std::fs::read_to_string(&evil.key_file).expect("key"),
    );
    let p = tunnel_probe(
        a.ns(),
        c_quic,
        &c_name,
        &roots,
        Some((&cert, &key)),
        "api",
        API_PORT,
    )
    .await;
    assert!(matches!(p, Probe::HandshakeFailed(_)), "other CA: {p:?}");
    assert_eq!(mesh.servers[1].hits(), hits_before, "api on C was reached");
    let m = c.api().metrics().await;
    assert!(
        metric_sum(
            &m,
            "meshd_proxy_connections_refused_total",
            &[("reason", "no_certificate")]
        ) >= 1.0,
        "C counts the anonymous tunnel"
    );
    // The client sees the failure before C's side of the handshake has finished failing.
    wait_until(
        Duration::from_secs(10),
        "C counts the refused handshake",
        || async {
            let m = c.api().metrics().await;
            metric_sum(
                &m,
                "meshd_quic_handshake_failures_total",
                &[("direction", "inbound")],
            ) >= 1.0
        },
    )
    .await;

    // A deny intention names web: both ways from A fail, and the denial is counted.
    let vip = virtual_ip(a, "api").await;
    let vip_url = format!("http://{vip}:{API_PORT}/");
    let up_url = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    wait_until(
        PROPAGATE,
        "web reaches api before the intention",
        || async {
            curl(&mesh.cluster, a, &vip_url).is_ok() && curl(&mesh.cluster, a, &up_url).is_ok()
        },
    )
    .await;
    a.api()
        .put_json(
            "/v1/connect/intentions/exact?source=web&destination=api",
            &json!({"Action": "deny"}),
        )
        .await
        .expect_status(200);
    wait_until(PROPAGATE, "the deny intention takes effect", || async {
        curl(&mesh.cluster, a, &vip_url).is_err()
    })
    .await;
    for url in [&vip_url, &up_url] {
        for _ in 0..5 {
            let r = curl(&mesh.cluster, a, url);
            assert!(r.is_err(), "{url} answered despite the deny: {r:?}");
        }
    }
    let mut denied = 0.0;
    for n in [mesh.b(), mesh.c()] {
        let m = n.api().metrics().await;
        denied += metric_sum(
            &m,
            "meshd_proxy_connections_denied_total",
            &[
                ("source", "web"),
                ("destination", "api"),
                ("direction", "inbound"),
            ],
        );
    }
    assert!(denied >= 10.0, "B and C counted {denied} denials of web");

    // Deleting the intention lets web in again (default allow).
    a.api()
        .delete("/v1/connect/intentions/exact?source=web&destination=api")
        .await
        .expect_status(200);
    wait_until(PROPAGATE, "web reaches api again", || async {
        curl(&mesh.cluster, a, &up_url).is_ok()
    })
    .await;
}

/// 256 MiB through the mesh and back arrive intact, 1,000 concurrent connections share one
/// tunnel, and half-closes behave as TCP's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_many_connections_through_one_tunnel_arrive_intact() {
    tests::sys::raise_nofile_limit().expect("raise the open file limit");
    let mesh = Mesh::start(&[("default_intention_policy", "\"allow\"")]).await;
    let (a, c) = (mesh.a(), mesh.c());
    let _echo = register_echo(c, ECHO_PORT).await;
    let target = echo_through_vip(a, "echo", ECHO_PORT).await;

    let conn = connect_in(a.ns(), target).await.expect("connect");
    let (sent, back) = echo_hashes(conn, 256 << 20).await.expect("256 MiB echo");
    assert_eq!(sent, back, "256 MiB came back different");

    let mut tasks = tokio::task::JoinSet::new();
    let ns = a.ns().to_string();
    for i in 0..1000u64 {
        let ns = ns.clone();
        tasks.spawn(async move {
            let conn = connect_in(&ns, target)
                .await
                .map_err(|e| format!("{i}: {e}"))?;
            let (x, y) = echo_hashes(conn, 4096 + i)
                .await
                .map_err(|e| format!("{i}: {e}"))?;
            if x == y {
                Ok(())
            } else {
                Err(format!("{i}: bytes differ"))
            }
        });
    }
    let mut failures = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(Err(e)) | Err(e) = r.map_err(|e| e.to_string()) {
                failures.push(e);
            }
        }
    })
    .await;
    assert!(all.is_ok(), "1,000 connections did not finish in 120 s");
    for n in [a, c] {
        let out = mesh
            .cluster
            .net()
            .exec(n.host(), "nstat", &["-az"])
            .expect("nstat");
        let text = String::from_utf8_lossy(&out.stdout);
        for l in text.lines().filter(|l| {
            l.contains("Listen")
                || l.contains("Abort")
                || l.contains("Reset")
                || l.contains("Cookie")
        }) {
            eprintln!("{} {l}", n.name());
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let m = a.api().metrics().await;
    let tunnels = tests::sys::metric_value(&m, "meshd_proxy_tunnels_active").unwrap_or(-1.0);
    assert_eq!(tunnels, 1.0, "A holds one tunnel to C");

    // Half-close: the client says it is done, and still reads the whole answer, then EOF.
    let mut conn = connect_in(a.ns(), target).await.expect("connect");
    conn.write_all(b"half-closed").await.expect("write");
    conn.shutdown().await.expect("shutdown write");
    let mut back = Vec::new();
    conn.read_to_end(&mut back).await.expect("read to EOF");
    assert_eq!(back, b"half-closed");
    // The server side closes first (HTTP with Connection: close): the client sees EOF while
    // its own side is still open.
    let api_vip = virtual_ip(a, "api").await;
    let mut http = connect_in(
        a.ns(),
        format!("{api_vip}:{API_PORT}").parse().expect("addr"),
    )
    .await
    .expect("connect api");
    http.write_all(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        .await
        .expect("request");
    let mut resp = Vec::new();
    http.read_to_end(&mut resp).await.expect("response to EOF");
    assert!(
        String::from_utf8_lossy(&resp).ends_with("api-b")
            || String::from_utf8_lossy(&resp).ends_with("api-c")
    );
}

/// With C's instance stopped, then C killed outright, every request still succeeds on B once
/// the health check (then the liveness bound) has noticed, and failed endpoints are retried
/// on another meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_to_b_when_cs_instance_stops_and_when_c_dies() {
    let mut mesh = Mesh::start(&[
        ("default_intention_policy", "\"allow\""),
        ("liveness_timeout", "\"5s\""),
    ])
    .await;
    let url = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    wait_until(PROPAGATE, "web reaches api", || async {
        curl(&mesh.cluster, mesh.a(), &url).is_ok()
    })
    .await;

    // Stop the instance on C: connects to it fail and are retried on B at once.
    drop(mesh.servers.pop());
    for i in 0..30 {
        let body = curl(&mesh.cluster, mesh.a(), &url)
            .unwrap_or_else(|e| panic!("request {i} after C's instance stopped: {e}"));
        assert_eq!(body, "api-b");
    }
    wait_until(PROPAGATE, "A sees C's instance critical", || async {
        passing(mesh.a(), "api").await == 1
    })
    .await;
    for i in 0..20 {
        let r = curl(&mesh.cluster, mesh.a(), &url);
        assert_eq!(
            r.as_deref(),
            Ok("api-b"),
            "request {i} once the check noticed"
        );
    }

    // Back on C, then C dies outright.
    let c_ns = mesh.c().ns().to_string();
    mesh.servers
        .push(NamedHttp::start(&c_ns, API_PORT, "api-c"));
    wait_until(PROPAGATE, "A sees both instances again", || async {
        passing(mesh.a(), "api").await == 2
    })
    .await;
    mesh.cluster.agent_mut(1).kill9();
    wait_until(
        Duration::from_secs(30),
        "A sees C failed (liveness bound)",
        || async { passing(mesh.a(), "api").await == 1 },
    )
    .await;
    for i in 0..20 {
        let r = curl(&mesh.cluster, mesh.a(), &url);
        assert_eq!(r.as_deref(), Ok("api-b"), "request {i} after C died");
    }
}

/// `service-defaults` set per service: a consistent hash sends one caller to one instance;
/// least request spreads; `Limits.MaxConnections` refuses the connection past the cap, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_defaults_choose_the_policy_and_cap_connections() {
    let mesh = Mesh::start(&[("default_intention_policy", "\"allow\"")]).await;
    let a = mesh.a();
    let url = format!("http://127.0.0.1:{UPSTREAM_PORT}/");
    let bodies = |n: usize| {
        let (cluster, a, url) = (&mesh.cluster, a, url.clone());
        async move {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..n {
                let body = curl(cluster, a, &url).unwrap_or_else(|e| panic!("curl {url}: {e}"));
                *seen.entry(body).or_default() += 1;
            }
            seen
        }
    };
    let set = |body: serde_json::Value| async move {
        let r = a.api().put_json("/v1/config", &body).await;
        r.expect_status(200);
    };
    wait_until(PROPAGATE, "web reaches api", || async {
        curl(&mesh.cluster, a, &url).is_ok()
    })
    .await;

    set(json!({"Kind": "service-defaults", "Name": "api",
               "LoadBalancer": {"Policy": "ring_hash"}}))
    .await;
    wait_until(PROPAGATE, "A applies ring_hash to api", || async {
        bodies(10).await.len() == 1
    })
    .await;
    let seen = bodies(20).await;
    assert_eq!(
        seen.len(),
        1,
        "one caller, one instance under ring_hash: {seen:?}"
    );

    set(json!({"Kind": "service-defaults", "Name": "api",
               "LoadBalancer": {"Policy": "least_request"}}))
    .await;
    wait_until(PROPAGATE, "least_request uses both instances", || async {
        bodies(20).await.len() == 2
    })
    .await;

    // A cap of 2 connections from A to echo: two held open, the third is refused.
    let _echo = register_echo(mesh.c(), ECHO_PORT).await;
    set(json!({"Kind": "service-defaults", "Name": "echo",
               "Limits": {"MaxConnections": 2}}))
    .await;
    let vip = virtual_ip(a, "echo").await;
    let target: SocketAddr = format!("{vip}:{ECHO_PORT}").parse().expect("address");
    let mut held = Vec::new();
    for i in 0..2 {
        let mut conn = wait_for(PROPAGATE, "a connection to echo", || async {
            let mut c = connect_in(a.ns(), target).await.ok()?;
            c.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.ok()?;
            Some(c)
        })
        .await;
        conn.write_all(b"held")
            .await
            .unwrap_or_else(|e| panic!("held {i}: {e}"));
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf)
            .await
            .expect("echo of a held connection");
        held.push(conn);
    }
    // The third is reset at once. The reset may arrive before the client's connect has
    // returned (then the connect fails), or after (then the read fails or finds nothing).
    match connect_in(a.ns(), target).await {
        Err(e) => assert!(
            matches!(
                e.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionAborted
            ),
            "the third connection failed otherwise than by a reset: {e}"
        ),
        Ok(mut third) => {
            let _ = third.write_all(b"over").await;
            let mut buf = Vec::new();
            let r = third.read_to_end(&mut buf).await;
            assert!(
                r.is_err() || buf.is_empty(),
                "the third connection was served past MaxConnections: {r:?} {buf:?}"
            );
        }
    }
    let m = a.api().metrics().await;
    assert!(
        metric_sum(
            &m,
            "meshd_proxy_connections_refused_total",
            &[("destination", "echo"), ("reason", "max_connections")]
        ) >= 1.0,
        "the refusal is counted"
    );
    assert!(
        a.log().contains("MaxConnections limit is reached"),
        "the refusal is logged with its cause"
    );
    // Closing one frees a slot.
    drop(held.pop());
    wait_for(PROPAGATE, "a slot frees up", || async {
        let mut c = connect_in(a.ns(), target).await.ok()?;
        c.write_all(b"free").await.ok()?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.ok()?;
        Some(())
    })
    .await;
}
