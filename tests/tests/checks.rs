//! Health checks run by the agent: a TTL check expires to critical and passes again on
//! `/v1/agent/check/pass`; an HTTP check follows a real HTTP server going 200 → 500 → 429 → 200
//! (and a hanging one times out to critical); a TCP check follows a listener.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::check_target::HANG;
use tests::{wait_until, Api, Meshd, TestHttpServer};

/// How long a status change may take to show (interval 1 s, generous on a shared machine).
const FOLLOW: Duration = Duration::from_secs(15);

async fn wait_status(api: &Api, service: &str, check: &str, want: &str) {
    wait_until(
        FOLLOW,
        &format!("check {check} of {service} is {want}"),
        || async move { api.check_status(service, check).await.as_deref() == Some(want) },
    )
    .await;
}

async fn passing_instances(api: &Api, service: &str) -> usize {
    let r = api
        .get(&format!("/v1/health/service/{service}?passing"))
        .await;
    r.expect_status(200);
    r.parse::<Vec<Value>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_check_expires_to_critical_and_passes_again() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "ttl-1", "Name": "ttl-svc", "Port": 1234,
                "Check": {"CheckID": "ttl-check", "Name": "ttl", "TTL": "1s"}}),
    )
    .await
    .expect_status(200);
    assert!(api.check_status("ttl-svc", "ttl-check").await.is_some());

    // Pass, then let the TTL run out.
    api.put("/v1/agent/check/pass/ttl-check?note=all+good", "")
        .await
        .expect_status(200);
    let passed = Instant::now();
    wait_status(api, "ttl-svc", "ttl-check", "passing").await;
    assert_eq!(passing_instances(api, "ttl-svc").await, 1);
    wait_status(api, "ttl-svc", "ttl-check", "critical").await;
    let expired_after = passed.elapsed();
    assert!(
        expired_after >= Duration::from_millis(900),
        "a 1 s TTL expired after only {expired_after:?}"
    );
    assert_eq!(passing_instances(api, "ttl-svc").await, 0);
    let agent_checks = api.get("/v1/agent/checks").await.json();
    assert_eq!(
        agent_checks["ttl-check"]["Status"], "critical",
        "{agent_checks}"
    );

    // Pass again.
    api.put("/v1/agent/check/pass/ttl-check", "")
        .await
        .expect_status(200);
    wait_status(api, "ttl-svc", "ttl-check", "passing").await;

    // update with Status and Output; warn and fail.
    api.put_json(
        "/v1/agent/check/update/ttl-check",
        &json!({"Status": "warning", "Output": "disk 91% full"}),
    )
    .await
    .expect_status(200);
    let c = api
        .health_check("ttl-svc", "ttl-check")
        .await
        .expect("the check exists");
    assert_eq!(c["Status"], "warning", "{c}");
    assert_eq!(c["Output"], "disk 91% full", "{c}");
    api.put("/v1/agent/check/fail/ttl-check", "")
        .await
        .expect_status(200);
    assert_eq!(
        api.check_status("ttl-svc", "ttl-check").await.as_deref(),
        Some("critical")
    );
    api.put("/v1/agent/check/warn/ttl-check", "")
        .await
        .expect_status(200);
    assert_eq!(
        api.check_status("ttl-svc", "ttl-check").await.as_deref(),
        Some("warning")
    );

    // Unknown check: 404, not a crash.
    let r = api.put("/v1/agent/check/pass/no-such-check", "").await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_check_follows_the_server() {
    let target = TestHttpServer::start(200).await;
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "http-1", "Name": "http-svc", "Port": target.addr().port(),
                "Check": {"CheckID": "http-check", "Name": "http",
                          "HTTP": target.url("/health"), "Interval": "1s", "Timeout": "1s"}}),
    )
    .await
    .expect_status(200);

    wait_status(api, "http-svc", "http-check", "passing").await;
    assert!(target.hits() >= 1, "meshd probed the test server");
    assert_eq!(passing_instances(api, "http-svc").await, 1);

    target.set_status(500);
    wait_status(api, "http-svc", "http-check", "critical").await;
    assert_eq!(passing_instances(api, "http-svc").await, 0);

    target.set_status(200);
    wait_status(api, "http-svc", "http-check", "passing").await;
    assert_eq!(passing_instances(api, "http-svc").await, 1);

    target.set_status(429);
    wait_status(api, "http-svc", "http-check", "warning").await;

    target.set_status(HANG);
    wait_status(api, "http-svc", "http-check", "critical").await;

    target.set_status(200);
    wait_status(api, "http-svc", "http-check", "passing").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_follows_the_listener() {
    let target = TestHttpServer::start(200).await;
    // A port with nothing listening: bind, learn the port, close.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
        l.local_addr().expect("probe port address")
    };
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "tcp-1", "Name": "tcp-svc", "Port": target.addr().port(),
        "Checks": [
            {"CheckID": "tcp-up", "Name": "up", "TCP": target.addr().to_string(),
             "Interval": "1s", "Timeout": "1s"},
            {"CheckID": "tcp-down", "Name": "down", "TCP": closed.to_string(),
             "Interval": "1s", "Timeout": "1s"}
        ]}),
    )
    .await
    .expect_status(200);
    wait_status(api, "tcp-svc", "tcp-up", "passing").await;
    wait_status(api, "tcp-svc", "tcp-down", "critical").await;
    assert_eq!(
        passing_instances(api, "tcp-svc").await,
        0,
        "one critical check keeps the instance out of ?passing"
    );
}
