//! DNS across hosts (namespace harness: 1 server, 2 agents, each host its own network
//! namespace and so its own loopback): a service registered on agent B's API shows up in the
//! answers of agent A's meshd at its default DNS address 127.0.0.1:8600, queried with `dig`
//! inside A's namespace; A answers from its local view even with its mesh link cut; an
//! instance whose check fails on B leaves A's answers; deregistered on B, it is gone from A.

use std::time::Duration;

use serde_json::json;
use tests::cluster::{Cluster, ClusterSpec, Node};
use tests::dig::{Dig, DigAnswer};
use tests::Api;

/// Bound for a change on one host to reach another host's DNS answers.
const PROPAGATE: Duration = Duration::from_secs(15);
const DNS_ADDR: &str = "127.0.0.1:8600";

fn dig_on(node: &Node) -> Dig {
    Dig::new(DNS_ADDR.parse().expect("an address")).in_netns(node.ns())
}

async fn register(api: &Api, body: serde_json::Value) {
    api.put_json("/v1/agent/service/register", &body)
        .await
        .expect_status(200);
}

/// The node address `api` has for `node` (its local view).
async fn node_address(api: &Api, node: &str) -> String {
    let r = api.get(&format!("/v1/catalog/node/{node}?stale")).await;
    r.expect_status(200);
    r.json()["Node"]["Address"]
        .as_str()
        .unwrap_or_else(|| panic!("no Node.Address for {node}: {}", r.text()))
        .to_string()
}

async fn wait_a(dig: &Dig, name: &str, want: &[&str], what: &str) -> DigAnswer {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    dig.wait_for(PROPAGATE, what, name, "A", &[], |a| {
        a.status == "NOERROR" && a.rdatas("A") == want
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_registered_on_one_host_is_answered_by_another_hosts_dns() {
    let cluster = Cluster::start(ClusterSpec::default().servers(1).agents(2)).await;
    let (a, b) = (cluster.agent(0), cluster.agent(1));
    let server = cluster.server(0);
    let dig_a = dig_on(a);
    let dig_b = dig_on(b);
    let dig_s = dig_on(server);

    // Every host serves DNS on its own loopback, for its own node.
    for (n, dig) in [(a, &dig_a), (b, &dig_b), (server, &dig_s)] {
        let ans = dig
            .wait_for(
                PROPAGATE,
                &format!("{} answers DNS on {DNS_ADDR} in {}", n.name(), n.ns()),
                "mesh",
                "SOA",
                &[],
                |x| x.status == "NOERROR",
            )
            .await;
        assert!(ans.has_flag("aa"), "{ans}");
    }

    // Registered on B: one instance with its own address, one on B's node address.
    register(
        b.api(),
        json!({"ID": "shared-b", "Name": "shared", "Port": 9000, "Address": "10.30.0.2",
               "Tags": ["blue"]}),
    )
    .await;
    register(
        b.api(),
        json!({"ID": "noaddr-b", "Name": "noaddr", "Port": 9100}),
    )
    .await;

    let ans = wait_a(
        &dig_a,
        "shared.service.mesh",
        &["10.30.0.2"],
        "B's instance is in A's answers",
    )
    .await;
    assert!(ans.has_flag("aa"), "{ans}");
    let ans = dig_a.must("blue.shared.service.mesh", "A", &[]).await;
    assert_eq!(ans.rdatas("A"), vec!["10.30.0.2"], "{ans}");
    let ans = dig_a.must("_shared._tcp.service.mesh", "SRV", &[]).await;
    let srvs = ans.srvs();
    assert_eq!(srvs.len(), 1, "{ans}");
    assert_eq!(srvs[0].port, 9000, "{ans}");
    assert_eq!(srvs[0].target, "0a1e0002.addr.dc1.mesh.", "{ans}");
    assert_eq!(
        ans.additionals("A")
            .iter()
            .map(|r| r.rdata.as_str())
            .collect::<Vec<_>>(),
        vec!["10.30.0.2"],
        "{ans}"
    );

    // No service address: B's node address, and the SRV target is B's node name.
    let b_ip = node_address(a.api(), b.name()).await;
    let ans = wait_a(
        &dig_a,
        "noaddr.service.mesh",
        &[&b_ip],
        "B's address-less instance is answered with B's node address",
    )
    .await;
    assert_eq!(ans.status, "NOERROR");
    let ans = dig_a.must("_noaddr._tcp.service.mesh", "SRV", &[]).await;
    let target = format!("{}.node.dc1.mesh.", b.name());
    assert_eq!(
        ans.srvs()
            .iter()
            .map(|s| s.target.clone())
            .collect::<Vec<_>>(),
        vec![target.clone()],
        "{ans}"
    );
    assert!(
        ans.additional
            .iter()
            .any(|r| r.rtype == "A" && r.name == target && r.rdata == b_ip),
        "the A record of {target} in the additional section:\n{ans}"
    );
    let ans = dig_a
        .must(&format!("{}.node.mesh", b.name()), "A", &[])
        .await;
    assert_eq!(ans.rdatas("A"), vec![b_ip.clone()], "{ans}");

    // The server's host answers the same.
    wait_a(
        &dig_s,
        "shared.service.mesh",
        &["10.30.0.2"],
        "B's instance is in the server's answers",
    )
    .await;

    // A second instance on A: both hosts see both.
    register(
        a.api(),
        json!({"ID": "shared-a", "Name": "shared", "Port": 9000, "Address": "10.30.0.1"}),
    )
    .await;
    wait_a(
        &dig_b,
        "shared.service.mesh",
        &["10.30.0.1", "10.30.0.2"],
        "B sees A's instance",
    )
    .await;
    wait_a(
        &dig_a,
        "shared.service.mesh",
        &["10.30.0.1", "10.30.0.2"],
        "A sees both",
    )
    .await;

    // A answers from its local view: with its mesh link cut, the answer is still there.
    cluster.cut_agent(0);
    let ans = dig_a.must("shared.service.mesh", "A", &["+tcp"]).await;
    assert_eq!(
        ans.rdatas("A"),
        vec!["10.30.0.1", "10.30.0.2"],
        "A answers from its local view while cut off:\n{ans}"
    );
    let ans = dig_a.must("shared.service.mesh", "A", &[]).await;
    assert_eq!(ans.rdatas("A"), vec!["10.30.0.1", "10.30.0.2"], "{ans}");
    cluster.heal_agent(0);

    // A check failing on B takes B's instance out of A's answers.
    register(
        b.api(),
        json!({"ID": "checked-b", "Name": "checked", "Port": 80, "Address": "10.30.1.2",
               "Check": {"CheckID": "checked-b-ttl", "TTL": "10m"}}),
    )
    .await;
    register(
        a.api(),
        json!({"ID": "checked-a", "Name": "checked", "Port": 80, "Address": "10.30.1.1"}),
    )
    .await;
    b.api()
        .put("/v1/agent/check/pass/checked-b-ttl", "")
        .await
        .expect_status(200);
    wait_a(
        &dig_a,
        "checked.service.mesh",
        &["10.30.1.1", "10.30.1.2"],
        "B's passing instance is in A's answers",
    )
    .await;
    b.api()
        .put("/v1/agent/check/fail/checked-b-ttl", "")
        .await
        .expect_status(200);
    wait_a(
        &dig_a,
        "checked.service.mesh",
        &["10.30.1.1"],
        "B's failing instance left A's answers",
    )
    .await;

    // Deregistered on B: gone from A.
    b.api()
        .put("/v1/agent/service/deregister/shared-b", "")
        .await
        .expect_status(200);
    wait_a(
        &dig_a,
        "shared.service.mesh",
        &["10.30.0.1"],
        "B's deregistered instance is gone from A's answers",
    )
    .await;
    b.api()
        .put("/v1/agent/service/deregister/noaddr-b", "")
        .await
        .expect_status(200);
    let ans = dig_a
        .wait_for(
            PROPAGATE,
            "noaddr is NXDOMAIN on A once deregistered on B",
            "noaddr.service.mesh",
            "A",
            &[],
            |x| x.status == "NXDOMAIN",
        )
        .await;
    assert!(ans.authority_soa().is_some(), "{ans}");
}
