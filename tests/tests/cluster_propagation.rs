//! 3 servers and 3 agents form a cluster; a service registered on agent A is in agent C's
//! local view (`/v1/catalog/service/<name>?stale` on C) within 1 s of the acknowledgment.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::cluster::{Cluster, ClusterSpec};

/// The bound the design promises for an agent's local view.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);
/// How long to keep looking after the bound, to report how late it was.
const GIVE_UP: Duration = Duration::from_secs(10);
/// Registrations measured (the worst one must be within the bound).
const ROUNDS: usize = 5;

/// Whether C's local view lists instance `id` of service `name`.
async fn visible(api: &tests::Api, name: &str, id: &str) -> bool {
    let Ok(r) = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/catalog/service/{name}?stale"),
            None,
            Some(Duration::from_secs(2)),
        )
        .await
    else {
        return false;
    };
    if r.status != 200 {
        return false;
    }
    let Ok(list) = serde_json::from_slice::<Vec<Value>>(&r.body) else {
        return false;
    };
    list.iter().any(|s| s["ServiceID"].as_str() == Some(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_on_one_agent_reaches_another_agents_local_view_within_1s() {
    let cluster = Cluster::start(ClusterSpec::default().servers(3).agents(3)).await;
    let a = cluster.agent(0).api().clone();
    let c = cluster.agent(2).api().clone();
    let a_node = cluster.agent(0).name().to_string();

    let mut times = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("web{round}");
        let id = format!("web{round}-1");
        let r = a
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": id, "Name": name, "Port": 8080 + round, "Tags": ["v1"]}),
            )
            .await;
        r.expect_status(200);
        let acked = Instant::now();
        // A tight poll (10 ms): the point is the measurement.
        let seen = loop {
            if visible(&c, &name, &id).await {
                break Some(acked.elapsed());
            }
            if acked.elapsed() > GIVE_UP {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let Some(t) = seen else {
            panic!("{id} registered on {a_node} never showed up in agent C's ?stale view within {GIVE_UP:?}");
        };
        eprintln!("round {round}: {id} visible on agent C {t:?} after the acknowledgment");
        times.push(t);
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    eprintln!("propagation A -> C: {times:?}, worst {worst:?}");
    assert!(
        worst <= PROPAGATION_BOUND,
        "a registration took {worst:?} (> {PROPAGATION_BOUND:?}) to reach agent C: {times:?}"
    );

    // C's view has the instance on A's node, with what was registered.
    let r = c.get("/v1/catalog/service/web0?stale").await;
    r.expect_status(200);
    let list: Vec<Value> = r.parse();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["Node"], a_node.as_str(), "{list:?}");
    assert_eq!(list[0]["ServicePort"], 8080, "{list:?}");
    assert_eq!(list[0]["ServiceTags"], json!(["v1"]), "{list:?}");
}
