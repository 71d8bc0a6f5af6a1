//! An agent that knows one server falls over to another when that one dies.
//!
//! The agent's `retry_join` names only server 0; it learns the others from the servers'
//! answers. Server 0 is then SIGKILLed: the agent's watch stream moves to another server, so a
//! service registered afterwards (through a surviving server) reaches the agent's local view,
//! and writes through the agent still succeed. The view also resumes from its index: the
//! agent does not load a full snapshot again (its snapshot counter stays at 1).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tests::cluster::{kv_put, Cluster, ClusterSpec, Role, WriteOutcome, SERVE_TIMEOUT};
use tests::sys::metric_value;
use tests::{wait_until, Api};

async fn sees_service(api: &Api, name: &str) -> bool {
    match api
        .send(
            Method::GET,
            &format!("/v1/catalog/service/{name}?stale"),
            None,
            Some(Duration::from_secs(2)),
        )
        .await
    {
        Ok(r) if r.status == 200 => serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.as_array().map(|a| !a.is_empty()))
            .unwrap_or(false),
        _ => false,
    }
}

async fn snapshots_loaded(api: &Api) -> Option<f64> {
    let r = api
        .send(Method::GET, "/metrics", None, Some(Duration::from_secs(2)))
        .await
        .ok()?;
    metric_value(&r.text(), "meshd_watch_snapshots_loaded_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_another_server_when_its_only_known_server_dies() {
    let mut cluster =
        Cluster::start(ClusterSpec::default().servers(3).agents(0).spare_hosts(1)).await;
    let host = cluster.spare_host(0);
    let mut cfg = cluster.agent_config("lone", host);
    cfg.retry_join = vec![cluster.server(0).quic_addr()];
    let mut agent = cluster.spawn(Role::Agent, host, cfg);
    agent
        .wait_serving(SERVE_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("the agent did not serve: {e:#}"));
    let api = agent.api().clone();

    // Before the fault: the view works and has loaded exactly one snapshot.
    let r = api
        .send(
            Method::PUT,
            "/v1/agent/service/register",
            Some(
                json!({"Name": "before", "Port": 1})
                    .to_string()
                    .into_bytes(),
            ),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("register before");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(Duration::from_secs(10), "the view shows `before`", || {
        let api = api.clone();
        async move { sees_service(&api, "before").await }
    })
    .await;
    // It learns the other servers from heartbeat answers within a couple of seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = snapshots_loaded(&api).await;
    eprintln!("snapshots loaded before the fault: {before:?}");

    cluster.server_mut(0).kill9();
    let killed = Instant::now();

    // A service registered through a surviving server reaches the agent's view.
    let survivor = cluster.server(1).api().clone();
    let mut registered = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !registered && Instant::now() < deadline {
        let r = survivor
            .send(
                Method::PUT,
                "/v1/catalog/register",
                Some(
                    json!({"Node": "ext", "Address": "10.0.0.9", "Service": {"Service": "after", "Port": 2}})
                        .to_string()
                        .into_bytes(),
                ),
                Some(Duration::from_secs(10)),
            )
            .await;
        registered = matches!(r, Ok(r) if r.status == 200);
        if !registered {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        registered,
        "no write accepted by the surviving servers within 30 s"
    );
    eprintln!(
        "the surviving servers accepted a write {:?} after the kill",
        killed.elapsed()
    );
    wait_until(
        Duration::from_secs(30),
        "the agent's view shows `after` (registered after its server died)",
        || {
            let api = api.clone();
            async move { sees_service(&api, "after").await }
        },
    )
    .await;
    eprintln!(
        "the agent's view caught up {:?} after the kill",
        killed.elapsed()
    );

    // Writes through the agent go to a surviving server.
    let outcome = kv_put(&api, "through-the-agent", b"v", Duration::from_secs(20)).await;
    assert!(
        matches!(outcome, WriteOutcome::Acked),
        "write through the agent after its server died: {outcome:?}"
    );

    // It resumed from its index rather than reloading the whole registry.
    let after = snapshots_loaded(&api).await;
    eprintln!("snapshots loaded after the fault: {after:?}");
    assert_eq!(
        before, after,
        "the agent reloaded a full snapshot after failover"
    );
    drop(agent);
}
