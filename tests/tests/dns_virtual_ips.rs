//! Virtual IPs in a 3-server cluster with an agent: 500 services get 500 distinct addresses in
//! 127.100.0.0/16; the table is the same on every node, and stays so through a SIGKILL of the
//! leader (a new leader allocates for new names without reusing freed addresses first), the old
//! leader's restart on its data dir, and a full restart (SIGTERM, start) of a follower. Small
//! snapshot thresholds make the restarted servers load the table from a snapshot image.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::cluster::{Cluster, ClusterSpec};
use tests::{wait_for, Api};

const SERVICES: usize = 500;
const LATE: usize = 20;
const FREED: usize = 10;
const CONCURRENCY: usize = 32;
const RANGE: &str = "127.100.0.0/16";

/// One row of `/v1/mesh/virtual-ips`: service, IP, CreateIndex.
type Row = (String, Ipv4Addr, u64);

fn name(i: usize) -> String {
    format!("svc-{i:03}")
}

fn late_name(i: usize) -> String {
    format!("late-{i:03}")
}

/// The external node a service is registered on.
fn ext_node(i: usize) -> String {
    format!("ext-{}", i % 10)
}

/// `PUT /v1/catalog/register` of service `svc` on node `ext_node(i)`, retried until it is
/// acknowledged (a write may meet the failover); panics after 30 s.
async fn register(api: &Api, i: usize, svc: &str) {
    let body = json!({
        "Node": ext_node(i),
        "Address": format!("10.0.0.{}", i % 10 + 1),
        "Service": {"ID": svc, "Service": svc, "Port": 8000 + i},
    });
    catalog_write(api, "/v1/catalog/register", &body).await;
}

async fn deregister(api: &Api, i: usize, svc: &str) {
    let body = json!({"Node": ext_node(i), "ServiceID": svc});
    catalog_write(api, "/v1/catalog/deregister", &body).await;
}

async fn catalog_write(api: &Api, path: &str, body: &Value) {
    let bytes = body.to_string().into_bytes();
    let start = Instant::now();
    loop {
        let r = api
            .send(
                Method::PUT,
                path,
                Some(bytes.clone()),
                Some(Duration::from_secs(10)),
            )
            .await;
        let last = match r {
            Ok(r) if r.status == 200 => return,
            Ok(r) => format!("status {}: {}", r.status, r.text()),
            Err(e) => format!("{e}"),
        };
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path} {body} through {} not acknowledged within 30 s; last: {last}",
            api.base()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /v1/mesh/virtual-ips` (`?stale` when asked): the range and the rows; `None` when the
/// node does not answer 200 with that shape.
async fn virtual_ips(api: &Api, stale: bool) -> Option<(String, Vec<Row>)> {
    let path = if stale {
        "/v1/mesh/virtual-ips?stale"
    } else {
        "/v1/mesh/virtual-ips"
    };
    let r = api
        .send(Method::GET, path, None, Some(Duration::from_secs(5)))
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    assert!(r.index().is_some(), "no X-Consul-Index on {path}");
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    let range = v.get("Range")?.as_str()?.to_string();
    let mut rows = Vec::new();
    for e in v.get("VirtualIPs")?.as_array()? {
        rows.push((
            e.get("Service")?.as_str()?.to_string(),
            e.get("IP")?.as_str()?.parse().ok()?,
            e.get("CreateIndex")?.as_u64()?,
        ));
    }
    Some((range, rows))
}

/// Checks one table: the range, the names expected exactly, every address distinct and in the
/// range, rows sorted by name. Returns service → address.
fn check_table(range: &str, rows: &[Row], want: &BTreeSet<String>) -> BTreeMap<String, Ipv4Addr> {
    assert_eq!(range, RANGE);
    let names: BTreeSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(names.len(), rows.len(), "a name listed twice");
    let missing: Vec<&String> = want.difference(&names).collect();
    let extra: Vec<&String> = names.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "names differ: missing {missing:?}, unexpected {extra:?}"
    );
    assert!(
        rows.windows(2).all(|w| w[0].0 < w[1].0),
        "rows are not sorted by name"
    );
    let addrs: BTreeSet<Ipv4Addr> = rows.iter().map(|r| r.1).collect();
    assert_eq!(addrs.len(), rows.len(), "an address given twice");
    for (svc, ip, _) in rows {
        let o = ip.octets();
        assert!(
            o[0] == 127 && o[1] == 100 && *ip != Ipv4Addr::new(127, 100, 0, 0),
            "{svc} got {ip}, outside {RANGE} or its network address"
        );
        assert_ne!(
            *ip,
            Ipv4Addr::new(127, 100, 255, 255),
            "{svc} got the broadcast"
        );
    }
    rows.iter().map(|r| (r.0.clone(), r.1)).collect()
}

/// Waits until every node's `?stale` table equals `want` (rows, CreateIndex included).
async fn wait_all_equal(cluster: &Cluster, want: &[Row], what: &str) {
    let nodes: Vec<(String, Api)> = cluster
        .servers()
        .iter()
        .chain(cluster.agents())
        .map(|n| (n.name().to_string(), n.api().clone()))
        .collect();
    for (node, api) in nodes {
        let start = Instant::now();
        loop {
            let t = virtual_ips(&api, true).await;
            if t.as_ref()
                .is_some_and(|(r, rows)| r == RANGE && rows == want)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: {node}'s table never matched the leader's ({} rows); last had {:?} rows",
                want.len(),
                t.map(|(_, rows)| rows.len())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_services_keep_distinct_stable_virtual_ips_through_failover_and_restarts() {
    let mut cluster = Cluster::start(
        ClusterSpec::default()
            .servers(3)
            .agents(1)
            .snapshot_threshold(20),
    )
    .await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let apis: Vec<Api> = cluster
        .servers()
        .iter()
        .chain(cluster.agents())
        .map(|n| n.api().clone())
        .collect();

    // 500 registrations, 32 at a time, through every node (the agent forwards its writes).
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..CONCURRENCY {
        let api = apis[w % apis.len()].clone();
        let next = next.clone();
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= SERVICES {
                    return;
                }
                register(&api, i, &name(i)).await;
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.expect("a registration worker panicked");
    }
    eprintln!("{SERVICES} services registered in {:?}", started.elapsed());

    let leader_api = cluster.server(leader).api().clone();
    let (range, rows) = wait_for(
        Duration::from_secs(10),
        "the leader lists 500 virtual IPs",
        || {
            let api = leader_api.clone();
            async move {
                virtual_ips(&api, false)
                    .await
                    .filter(|(_, r)| r.len() == SERVICES)
            }
        },
    )
    .await;
    let all: BTreeSet<String> = (0..SERVICES).map(name).collect();
    let first = check_table(&range, &rows, &all);
    // Nothing was freed yet: the 500 addresses are the first 500 of the range.
    let max = first.values().max().copied();
    assert_eq!(max, Some(Ipv4Addr::new(127, 100, 1, 244)), "500th address");
    wait_all_equal(&cluster, &rows, "after the registrations").await;

    // SIGKILL the leader; a new one is elected.
    cluster.server_mut(leader).kill9();
    let new_leader = cluster.wait_leader(Duration::from_secs(30)).await;
    assert_ne!(new_leader, leader);
    let new_api = cluster.server(new_leader).api().clone();
    let agent_api = cluster.agent(0).api().clone();
    let (_, rows) = virtual_ips(&new_api, false)
        .await
        .expect("the new leader answers");
    assert_eq!(
        check_table(RANGE, &rows, &all),
        first,
        "the new leader's table differs"
    );

    // Under the new leader: free 10 names, then 20 new names get new addresses, not the freed
    // ones (the cursor is past them), and nobody else's address moves.
    let mut freed = BTreeSet::new();
    for i in 0..FREED {
        deregister(&new_api, i, &name(i)).await;
        freed.insert(first[&name(i)]);
    }
    for i in 0..LATE {
        let api = if i % 2 == 0 { &new_api } else { &agent_api };
        register(api, i, &late_name(i)).await;
    }
    let mut want: BTreeSet<String> = (FREED..SERVICES).map(name).collect();
    want.extend((0..LATE).map(late_name));
    let (range, reference) = virtual_ips(&new_api, false)
        .await
        .expect("the new leader answers");
    let now = check_table(&range, &reference, &want);
    for i in FREED..SERVICES {
        assert_eq!(now[&name(i)], first[&name(i)], "{} moved", name(i));
    }
    for i in 0..LATE {
        let ip = now[&late_name(i)];
        assert!(
            !freed.contains(&ip),
            "{} got a freed address {ip}",
            late_name(i)
        );
    }

    // The old leader restarts on its data dir and catches up: every node has the same table.
    cluster.server_mut(leader).restart().await;
    wait_all_equal(&cluster, &reference, "after the old leader's restart").await;

    // A full restart of a follower: SIGTERM, start again.
    let current = cluster.wait_leader(Duration::from_secs(30)).await;
    let follower = (0..3).find(|&i| i != current).expect("a follower");
    let status = cluster.server_mut(follower).stop().await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the follower did not exit cleanly: {status:?}"
    );
    cluster.server_mut(follower).start().await;
    cluster.wait_leader(Duration::from_secs(30)).await;
    wait_all_equal(&cluster, &reference, "after a follower's full restart").await;

    // Consistent reads through every node agree too.
    for n in cluster.servers().iter().chain(cluster.agents()) {
        let api = n.api().clone();
        let t = wait_for(
            Duration::from_secs(30),
            "a consistent read of the virtual IPs",
            || {
                let api = api.clone();
                async move { virtual_ips(&api, false).await }
            },
        )
        .await;
        assert_eq!(t.1, reference, "{}'s consistent read differs", n.name());
    }
}
