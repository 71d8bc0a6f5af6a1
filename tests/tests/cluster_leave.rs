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
