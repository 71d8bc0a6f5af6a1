//! Enrollment refuses outsiders, on a live 3-server cluster:
//! - an agent with a wrong join token exits non-zero, saying so ("join token");
//! - a server whose certificate comes from another CA never enters the Raft configuration, and
//!   the TLS handshake is refused (its log or the servers' say so);
//! - an agent whose `ca_file` is another CA refuses the servers: it exits non-zero with a
//!   message about the certificate.
//!
//! None of them is registered: `/v1/catalog/nodes` and `/v1/agent/members` do not list them.

use std::time::{Duration, Instant};

use serde_json::Value;
use tests::cluster::{members, raft_servers, Cluster, ClusterSpec, Role, Tls};

const EXIT_BOUND: Duration = Duration::from_secs(60);
/// How long the rogue server is watched for (it retries joining all along).
const ROGUE_WATCH: Duration = Duration::from_secs(15);

/// The lines of `lines` that mention one of `words` (case-insensitive), at most 3.
fn mentions(lines: &[String], words: &[&str]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| {
            let l = l.to_lowercase();
            words.iter().any(|w| l.contains(w))
        })
        .take(3)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_wrong_ca_and_foreign_server_are_refused() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3).spare_hosts(3)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let lapi = cluster.server(leader).api().clone();

    // A second CA, unknown to the cluster.
    let other_dir = cluster.root().join("other-ca");
    std::fs::create_dir_all(&other_dir).expect("mkdir other-ca");
    let other = Tls::create(&other_dir).expect("create a second CA");

    // (1) An agent with a wrong join token.
    let mut cfg = cluster.agent_config("bad-token", cluster.spare_host(0));
    cfg.join_token = Some("not-the-token".into());
    let mut bad_token = cluster.spawn(Role::Agent, cluster.spare_host(0), cfg);

    // (2) A server with a certificate from the other CA (trusting the cluster's CA, so it is
    // the servers that must refuse it).
    let rogue_cert = other
        .server_cert("rogue-s", "dc1")
        .expect("sign a server cert with the other CA");
    let mut cfg = cluster.agent_config("rogue-s", cluster.spare_host(1));
    cfg.server = true;
    cfg.cert_file = Some(rogue_cert.cert_file);
    cfg.key_file = Some(rogue_cert.key_file);
    let mut rogue = cluster.spawn(Role::Server, cluster.spare_host(1), cfg);

    // (3) An agent that trusts the other CA: it must refuse the servers.
    let mut cfg = cluster.agent_config("wrong-ca", cluster.spare_host(2));
    cfg.ca_file = Some(other.ca_file.clone());
    let mut wrong_ca = cluster.spawn(Role::Agent, cluster.spare_host(2), cfg);

    // The rogue server never shows up in the Raft configuration.
    let t = Instant::now();
    let mut seen_configs = 0;
    while t.elapsed() < ROGUE_WATCH {
        if let Some(servers) = raft_servers(&lapi).await {
            seen_configs += 1;
            assert!(
                servers.iter().all(
                    |s| s.node != "rogue-s" && s.address != format!("{}:8301", rogue.mesh_ip())
                ),
                "a server with a foreign certificate entered the Raft configuration: {servers:?}"
            );
            assert_eq!(servers.len(), 3, "{servers:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        seen_configs > 0,
        "/v1/operator/raft/configuration never answered"
    );

    // Requirements that do not stop the test at once: all are reported at the end.
    let mut violations = Vec::new();

    let status = bad_token.wait_exit(EXIT_BOUND).await;
    let Some(status) = status else {
        panic!("the agent with a wrong join token still runs after {EXIT_BOUND:?}");
    };
    assert!(!status.success(), "wrong join token: exit {status}");
    let said = mentions(&bad_token.problems(), &["join token"]);
    eprintln!("wrong join token: {status}, {said:#?}");
    if said.is_empty() {
        violations.push(format!(
            "the agent with a wrong join token exited ({status}) without an error that \
             mentions the join token: {:?}",
            bad_token.problems()
        ));
    }

    let status = wrong_ca.wait_exit(EXIT_BOUND).await;
    let Some(status) = status else {
        panic!("the agent trusting another CA still runs after {EXIT_BOUND:?}");
    };
    assert!(!status.success(), "wrong CA: exit {status}");
    let said = mentions(&wrong_ca.problems(), &["certificate"]);
    eprintln!("agent trusting another CA: {status}, {said:#?}");
    if said.is_empty() {
        violations.push(format!(
            "the agent trusting another CA exited ({status}) without an error that mentions \
             the certificate: {:?}",
            wrong_ca.problems()
        ));
    }

    // The servers refused the foreign server's handshake...
    let rogue_ip = format!("{}:", rogue.mesh_ip());
    let mut by_servers = Vec::new();
    for s in cluster.servers() {
        for l in s.problems() {
            if l.contains(&rogue_ip) {
                let low = l.to_lowercase();
                if low.contains("certificate") || low.contains("handshake") {
                    by_servers.push(format!("{}: {l}", s.name()));
                }
            }
        }
    }
    by_servers.truncate(3);
    eprintln!("servers refusing the foreign server: {by_servers:#?}");
    if by_servers.is_empty() {
        violations.push(
            "no server logged a refused handshake or certificate from the foreign server".into(),
        );
    }
    // ...and the foreign server's own log says so.
    let own = mentions(
        &rogue.problems(),
        &[
            "certificate",
            "handshake",
            "unknownca",
            "unknown ca",
            "bad certificate",
        ],
    );
    eprintln!("the foreign server's own warnings about it: {own:#?}");
    if own.is_empty() {
        violations.push(format!(
            "the foreign server's log never says its handshake or certificate was refused; \
             its warnings: {:?}",
            rogue.problems().into_iter().take(5).collect::<Vec<_>>()
        ));
    }
    rogue.kill9();

    // Nothing of theirs is registered.
    let r = lapi.get("/v1/catalog/nodes").await;
    r.expect_status(200);
    let nodes: Vec<Value> = r.parse();
    let names: Vec<&str> = nodes.iter().filter_map(|n| n["Node"].as_str()).collect();
    for who in ["bad-token", "rogue-s", "wrong-ca"] {
        assert!(!names.contains(&who), "{who} is in the catalog: {names:?}");
    }
    let m = members(&lapi).await.expect("members");
    for who in ["bad-token", "rogue-s", "wrong-ca"] {
        assert!(m.iter().all(|x| x.name != who), "{who} is a member: {m:?}");
    }
    assert!(cluster.server_mut(leader).is_running());
    assert!(violations.is_empty(), "{violations:#?}");
}
