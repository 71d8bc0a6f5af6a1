//! Leave: `PUT /v1/agent/leave` on an agent makes the process exit 0, and every server's
//! `/v1/agent/members` shows it as left (Status 3); the other agent stays alive.

use std::time::{Duration, Instant};

use tests::cluster::{member_status, Cluster, ClusterSpec, STATUS_ALIVE, STATUS_LEFT};
use tests::wait_until;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_leaves_exits_0_and_is_left_in_members() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3).agents(2)).await;
    let leaving = cluster.agent(1).name().to_string();
    let staying = cluster.agent(0).name().to_string();

    let r = cluster
        .agent(1)
        .api()
        .send(
            reqwest::Method::PUT,
            "/v1/agent/leave",
            None,
            Some(Duration::from_secs(30)),
        )
        .await;
    let t = Instant::now();
    match r {
        Ok(r) => assert_eq!(
            r.status,
            200,
            "PUT /v1/agent/leave: {} {}",
            r.status,
            r.text()
        ),
        // The agent may close the connection as it exits; the exit status below decides.
        Err(e) => eprintln!("PUT /v1/agent/leave: no answer ({e})"),
    }
    let status = cluster
        .agent_mut(1)
        .wait_exit(Duration::from_secs(30))
        .await;
    let Some(status) = status else {
        panic!("{leaving} still runs 30 s after PUT /v1/agent/leave");
    };
    assert!(
        status.success(),
        "{leaving} exited with {status} after leaving"
    );
    eprintln!(
        "{leaving} exited ({status}) {:?} after the leave",
        t.elapsed()
    );

    for s in cluster.servers() {
        let api = s.api().clone();
        let leaving = leaving.clone();
        wait_until(
            Duration::from_secs(30),
            &format!(
                "{} shows {leaving} as left (Status {STATUS_LEFT})",
                s.name()
            ),
            || {
                let (api, leaving) = (api.clone(), leaving.clone());
                async move { member_status(&api, &leaving).await == Some(STATUS_LEFT) }
            },
        )
        .await;
        assert_eq!(
            member_status(&api, &staying).await,
            Some(STATUS_ALIVE),
            "{} on {}",
            staying,
            s.name()
        );
    }
    eprintln!("left on every server {:?} after the leave", t.elapsed());
}

/// The leader itself leaves: it exits 0, the others drop it from the Raft configuration and
/// elect a new leader among themselves, it is left in members, and writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_that_leaves_exits_0_and_leaves_the_raft_configuration() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3).agents(1)).await;
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let leaving = cluster.server(leader).name().to_string();
    let leaving_addr = cluster.server(leader).quic_addr();
    let r = cluster
        .server(leader)
        .api()
        .send(
            reqwest::Method::PUT,
            "/v1/agent/leave",
            None,
            Some(Duration::from_secs(30)),
        )
        .await;
    match r {
        Ok(r) => assert_eq!(r.status, 200, "PUT /v1/agent/leave: {}", r.text()),
        Err(e) => eprintln!("PUT /v1/agent/leave: no answer ({e})"),
    }
    let status = cluster
        .server_mut(leader)
        .wait_exit(Duration::from_secs(30))
        .await;
    let Some(status) = status else {
        panic!("{leaving} still runs 30 s after PUT /v1/agent/leave");
    };
    assert!(status.success(), "{leaving} exited with {status}");

    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &others {
        let api = cluster.server(i).api().clone();
        let (gone, name) = (leaving_addr.clone(), cluster.server(i).name().to_string());
        wait_until(
            Duration::from_secs(30),
            &format!("{name}'s Raft configuration drops {gone} and has a leader"),
            || {
                let (api, gone) = (api.clone(), gone.clone());
                async move {
                    match tests::cluster::raft_servers(&api).await {
                        Some(servers) => {
                            servers.len() == 2
                                && servers.iter().all(|s| s.address != gone)
                                && servers.iter().any(|s| s.leader)
                        }
                        None => false,
                    }
                }
            },
        )
        .await;
        let api = cluster.server(i).api().clone();
        let leaving = leaving.clone();
        wait_until(
            Duration::from_secs(30),
            &format!("{name} shows {leaving} as left"),
            || {
                let (api, leaving) = (api.clone(), leaving.clone());
                async move { member_status(&api, &leaving).await == Some(STATUS_LEFT) }
            },
        )
        .await;
    }
    // Two voters of two: writes through either survivor and through the agent succeed.
    let mut apis: Vec<_> = others
        .iter()
        .map(|&i| cluster.server(i).api().clone())
        .collect();
    apis.push(cluster.agent(0).api().clone());
    for (n, api) in apis.iter().enumerate() {
        let key = format!("after-leave/{n}");
        let ok = tests::cluster::kv_put(api, &key, b"v", Duration::from_secs(15)).await;
        assert!(
            matches!(ok, tests::cluster::WriteOutcome::Acked),
            "write {key} after the leader left: {ok:?}"
        );
    }
}
