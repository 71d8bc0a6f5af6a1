//! Liveness: with `liveness_timeout = "3s"`, agent B's mesh link is cut. The servers mark B
//! failed (Status 4 in `/v1/agent/members`) and its service instance leaves
//! `/v1/health/service/<name>?passing` (agent A's instance stays); after the heal B is alive
//! again and its instance is back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::cluster::{member_status, Cluster, ClusterSpec, STATUS_ALIVE, STATUS_FAILED};
use tests::wait::poll_until;
use tests::{wait_until, Api};

const LIVENESS: Duration = Duration::from_secs(3);
/// How long after the cut B may take to be marked failed (the bound plus detection slack).
const FAIL_BOUND: Duration = Duration::from_secs(15);
const SERVICE: &str = "pay";

/// The nodes of the passing instances of `SERVICE`, as `api` reports them.
async fn passing_nodes(api: &Api) -> Option<Vec<String>> {
    let r = api
        .send(
            reqwest::Method::GET,
            &format!("/v1/health/service/{SERVICE}?passing"),
            None,
            Some(Duration::from_secs(3)),
        )
        .await
        .ok()?;
    if r.status != 200 {
        return None;
    }
    let list: Vec<Value> = serde_json::from_slice(&r.body).ok()?;
    let mut nodes: Vec<String> = list
        .iter()
        .filter_map(|e| e["Node"]["Node"].as_str().map(str::to_string))
        .collect();
    nodes.sort();
    Some(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_agent_is_marked_failed_and_its_instances_leave_health_until_heal() {
    let mut cluster = Cluster::start(
        ClusterSpec::default()
            .servers(3)
            .agents(2)
            .liveness_timeout("3s"),
    )
    .await;
    let a = cluster.agent(0).name().to_string();
    let b = cluster.agent(1).name().to_string();
    for i in 0..2 {
        let name = cluster.agent(i).name().to_string();
        cluster
            .agent(i)
            .api()
            .put_json(
                "/v1/agent/service/register",
                &json!({"ID": format!("{SERVICE}-{name}"), "Name": SERVICE, "Port": 9000}),
            )
            .await
            .expect_status(200);
    }
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let sapi = cluster.server(leader).api().clone();
    let both = {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    };
    {
        let (sapi, both) = (sapi.clone(), both.clone());
        wait_until(
            Duration::from_secs(10),
            "both instances pass before the cut",
            || {
                let (sapi, both) = (sapi.clone(), both.clone());
                async move { passing_nodes(&sapi).await == Some(both) }
            },
        )
        .await;
    }

    cluster.cut_agent(1);
    let cut = Instant::now();
    let failed = poll_until(FAIL_BOUND, || {
        let (sapi, b) = (sapi.clone(), b.clone());
        async move { member_status(&sapi, &b).await == Some(STATUS_FAILED) }
    })
    .await;
    let took = cut.elapsed();
    assert!(
        failed,
        "{b} is not failed (Status {STATUS_FAILED}) {FAIL_BOUND:?} after its link was cut; \
         status now {:?}",
        member_status(&sapi, &b).await
    );
    eprintln!("{b} marked failed {took:?} after the cut (liveness_timeout {LIVENESS:?})");
    assert!(
        took >= LIVENESS - Duration::from_millis(1500),
        "{b} was marked failed after {took:?}, before the liveness timeout"
    );
    let only_a = poll_until(Duration::from_secs(5), || {
        let (sapi, a) = (sapi.clone(), a.clone());
        async move { passing_nodes(&sapi).await == Some(vec![a]) }
    })
    .await;
    assert!(
        only_a,
        "?passing still lists {b}'s instance while it is failed: {:?}",
        passing_nodes(&sapi).await
    );
    // The other servers agree.
    for s in cluster.servers() {
        let api = s.api().clone();
        let st = member_status(&api, &b).await;
        eprintln!("{} says {b} has status {st:?}", s.name());
    }

    cluster.heal_agent(1);
    let healed = Instant::now();
    let alive = poll_until(Duration::from_secs(30), || {
        let (sapi, b) = (sapi.clone(), b.clone());
        async move { member_status(&sapi, &b).await == Some(STATUS_ALIVE) }
    })
    .await;
    assert!(
        alive,
        "{b} is not alive 30 s after the heal: status {:?}",
        member_status(&sapi, &b).await
    );
    let back = poll_until(Duration::from_secs(30), || {
        let (sapi, both) = (sapi.clone(), both.clone());
        async move { passing_nodes(&sapi).await == Some(both) }
    })
    .await;
    assert!(
        back,
        "{b}'s instance is not passing 30 s after the heal: {:?}",
        passing_nodes(&sapi).await
    );
    eprintln!(
        "{b} alive and passing {:?} after the heal",
        healed.elapsed()
    );
    assert!(cluster.agent_mut(1).is_running(), "{b} kept running");
}
