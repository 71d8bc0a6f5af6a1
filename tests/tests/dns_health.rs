//! DNS follows health: an instance whose check turns critical leaves the answers within one
//! check interval (plus a little slack for the state write and the local view), comes back
//! when it passes again, stays while it only warns, and a service with no healthy instance is
//! NXDOMAIN. Checked with real `dig` against `meshd agent --dev`, with an HTTP check against a
//! switchable test server and with TTL checks.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::dig::{Dig, DigAnswer};
use tests::{wait_until, Api, Meshd, TestHttpServer};

/// The check interval of the HTTP check (and the TTL of the TTL check).
const INTERVAL: Duration = Duration::from_secs(1);
/// What the state write and the agent's local view may add to one check interval.
const SLACK: Duration = Duration::from_secs(3);
/// How long a first registration may take to show.
const VISIBLE: Duration = Duration::from_secs(10);

fn addrs(a: &DigAnswer) -> Vec<String> {
    a.rdatas("A")
}

/// Waits (bounded by one interval plus slack) until `name`'s A answer is exactly `want`
/// (`None`: NXDOMAIN) and returns how long it took from `since`.
async fn wait_dns(dig: &Dig, name: &str, want: Option<&[&str]>, since: Instant, what: &str) {
    let want: Option<Vec<String>> = want.map(|w| {
        let mut v: Vec<String> = w.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    });
    let bound = INTERVAL + SLACK;
    let left = bound.saturating_sub(since.elapsed());
    let a = dig
        .wait_for(left, what, name, "A", &[], |a| match &want {
            Some(w) => a.status == "NOERROR" && &addrs(a) == w,
            None => a.status == "NXDOMAIN",
        })
        .await;
    eprintln!(
        "{what}: after {:?} (bound {bound:?}); answer {:?} {:?}",
        since.elapsed(),
        a.status,
        addrs(&a)
    );
}

async fn wait_check(api: &Api, service: &str, check: &str, want: &str) {
    wait_until(
        VISIBLE,
        &format!("check {check} of {service} is {want}"),
        || async move { api.check_status(service, check).await.as_deref() == Some(want) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_turning_critical_takes_the_instance_out_of_dns() {
    let target = TestHttpServer::start(200).await;
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    let dig = Dig::new(meshd.dns_addr());
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "hc-1", "Name": "hc", "Port": target.addr().port(), "Address": "10.9.0.1",
                "Check": {"CheckID": "hc-1-http", "HTTP": target.url("/health"),
                          "Interval": "1s", "Timeout": "1s"}}),
    )
    .await
    .expect_status(200);
    // A second instance without checks keeps the name alive.
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "hc-2", "Name": "hc", "Port": 80, "Address": "10.9.0.2"}),
    )
    .await
    .expect_status(200);

    wait_check(api, "hc", "hc-1-http", "passing").await;
    dig.wait_for(
        VISIBLE,
        "both instances answered while passing",
        "hc.service.mesh",
        "A",
        &[],
        |a| addrs(a) == ["10.9.0.1", "10.9.0.2"],
    )
    .await;

    for round in 0..2 {
        // Critical: out of the answers within one interval (+ slack).
        target.set_status(500);
        let t = Instant::now();
        wait_dns(
            &dig,
            "hc.service.mesh",
            Some(&["10.9.0.2"]),
            t,
            &format!("round {round}: the critical instance left the A answers"),
        )
        .await;
        let a = dig.must("_hc._tcp.service.mesh", "SRV", &[]).await;
        assert_eq!(a.srvs().len(), 1, "critical instance left SRV too:\n{a}");
        assert_eq!(a.srvs()[0].port, 80, "{a}");

        // Passing again: back.
        target.set_status(200);
        let t = Instant::now();
        wait_dns(
            &dig,
            "hc.service.mesh",
            Some(&["10.9.0.1", "10.9.0.2"]),
            t,
            &format!("round {round}: the passing instance is back"),
        )
        .await;
    }

    // Warning (429) is still answered (only_passing is off by default).
    target.set_status(429);
    wait_check(api, "hc", "hc-1-http", "warning").await;
    let a = dig.must("hc.service.mesh", "A", &[]).await;
    assert_eq!(
        addrs(&a),
        ["10.9.0.1", "10.9.0.2"],
        "a warning instance stays:\n{a}"
    );

    // No healthy instance left: NXDOMAIN, with the SOA.
    api.put("/v1/agent/service/deregister/hc-2", "")
        .await
        .expect_status(200);
    target.set_status(500);
    let t = Instant::now();
    wait_dns(
        &dig,
        "hc.service.mesh",
        None,
        t,
        "the service with no healthy instance is NXDOMAIN",
    )
    .await;
    let a = dig.must("hc.service.mesh", "A", &[]).await;
    assert!(a.authority_soa().is_some(), "SOA in the authority:\n{a}");

    target.set_status(200);
    let t = Instant::now();
    wait_dns(
        &dig,
        "hc.service.mesh",
        Some(&["10.9.0.1"]),
        t,
        "the instance is back once passing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_check_failing_or_expiring_takes_the_instance_out_of_dns() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    let dig = Dig::new(meshd.dns_addr());
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "tt-1", "Name": "tt", "Port": 80, "Address": "10.9.1.1",
                "Check": {"CheckID": "tt-1-ttl", "TTL": "1s"}}),
    )
    .await
    .expect_status(200);
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "tt-2", "Name": "tt", "Port": 80, "Address": "10.9.1.2",
                "Check": {"CheckID": "tt-2-ttl", "TTL": "10m"}}),
    )
    .await
    .expect_status(200);
    // A new TTL check starts critical: only after a pass is an instance answered.
    api.put("/v1/agent/check/pass/tt-2-ttl", "")
        .await
        .expect_status(200);
    dig.wait_for(
        VISIBLE,
        "tt-2 (passed) answered, tt-1 (never passed) not",
        "tt.service.mesh",
        "A",
        &[],
        |a| addrs(a) == ["10.9.1.2"],
    )
    .await;

    // tt-1 passes: in; its 1 s TTL runs out: out within the TTL plus slack.
    api.put("/v1/agent/check/pass/tt-1-ttl", "")
        .await
        .expect_status(200);
    let t = Instant::now();
    wait_dns(
        &dig,
        "tt.service.mesh",
        Some(&["10.9.1.1", "10.9.1.2"]),
        t,
        "tt-1 answered after its pass",
    )
    .await;
    let t = Instant::now();
    wait_dns(
        &dig,
        "tt.service.mesh",
        Some(&["10.9.1.2"]),
        t,
        "tt-1 left the answers when its TTL expired",
    )
    .await;

    // An explicit fail takes tt-2 out at once; no instance left: NXDOMAIN.
    api.put("/v1/agent/check/fail/tt-2-ttl", "")
        .await
        .expect_status(200);
    let t = Instant::now();
    wait_dns(
        &dig,
        "tt.service.mesh",
        None,
        t,
        "tt-2 left on fail; no healthy instance",
    )
    .await;

    api.put("/v1/agent/check/pass/tt-2-ttl", "")
        .await
        .expect_status(200);
    let t = Instant::now();
    wait_dns(
        &dig,
        "tt.service.mesh",
        Some(&["10.9.1.2"]),
        t,
        "tt-2 back on pass",
    )
    .await;
}
