//! Blocking queries: a query on `/v1/health/service/x?index=N` returns within 1 s of a change to
//! x, waits out its `wait` when only another service changes (x's index is x's own highest
//! ModifyIndex, Consul issue #3890), and every response, 404s included, carries
//! `X-Consul-Index` >= 1.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::{wait_until, Api, Meshd};

async fn register(api: &Api, id: &str, name: &str, tag: &str) {
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": id, "Name": name, "Port": 9000, "Tags": [tag]}),
    )
    .await
    .expect_status(200);
}

/// Waits until meshd reports at least `n` waiting blocking queries, so that a following write
/// happens while the query is parked (not before it arrived).
async fn wait_blocking_at_least(api: &Api, n: f64) {
    wait_until(
        Duration::from_secs(10),
        &format!("meshd_api_blocking_queries >= {n} in /metrics"),
        || async move { api.blocking_queries().await.is_some_and(|v| v >= n) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_returns_within_a_second_of_a_change() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api().clone();
    register(&api, "x-1", "x", "a").await;

    let r = api.get("/v1/health/service/x").await;
    r.expect_status(200);
    let n = r.must_index();
    assert!(n >= 1);

    let baseline = api.blocking_queries().await.unwrap_or(0.0);
    let q = {
        let api = api.clone();
        tokio::spawn(async move {
            let r = api
                .get_timeout(
                    &format!("/v1/health/service/x?index={n}&wait=30s"),
                    Duration::from_secs(60),
                )
                .await;
            (r, Instant::now())
        })
    };
    wait_blocking_at_least(&api, baseline + 1.0).await;
    assert!(!q.is_finished(), "the query returned before any change");

    // The change: x's tags.
    register(&api, "x-1", "x", "b").await;
    let acked = Instant::now();
    let (r, returned) = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("the blocking query returns after a change")
        .expect("query task");
    r.expect_status(200);
    let late = returned.saturating_duration_since(acked);
    assert!(
        late < Duration::from_secs(1),
        "returned {late:?} after the change was acknowledged (want < 1 s)"
    );
    let m = r.must_index();
    assert!(m > n, "index moved forward: {n} -> {m}");
    let entries: Vec<Value> = r.parse();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["Service"]["Tags"], json!(["b"]));

    // A query with an index already passed returns at once.
    let t = Instant::now();
    let r = api
        .get_timeout(
            &format!("/v1/health/service/x?index={n}&wait=20s"),
            Duration::from_secs(30),
        )
        .await;
    r.expect_status(200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "an index behind the current one answers at once, took {:?}",
        t.elapsed()
    );
    assert_eq!(r.must_index(), m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_query_is_not_woken_by_another_service() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api().clone();
    register(&api, "x-1", "x", "a").await;
    register(&api, "y-1", "y", "a").await;

    let r = api.get("/v1/health/service/x").await;
    let n = r.must_index();
    let baseline = api.blocking_queries().await.unwrap_or(0.0);
    let wait = Duration::from_secs(3);
    let started = Instant::now();
    let q = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get_timeout(
                &format!("/v1/health/service/x?index={n}&wait=3s"),
                Duration::from_secs(30),
            )
            .await
        })
    };
    wait_blocking_at_least(&api, baseline + 1.0).await;

    // Writes to y and to KV only.
    for i in 0..5 {
        register(&api, "y-1", "y", &format!("t{i}")).await;
        api.put(&format!("/v1/kv/other/{i}"), "v")
            .await
            .expect_true();
    }
    let y = api.get("/v1/health/service/y").await.must_index();
    assert!(y > n, "y's writes came after x's index: y={y} x={n}");

    let r = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("the blocking query returns by its wait")
        .expect("query task");
    let took = started.elapsed();
    r.expect_status(200);
    assert_eq!(
        r.must_index(),
        n,
        "x did not change, so its index stays {n} (it must not be the global index)"
    );
    assert!(
        took >= wait - Duration::from_millis(300),
        "returned after {took:?}, before its wait of {wait:?}: woken by another service's write"
    );
    assert!(
        took < wait + Duration::from_secs(5),
        "returned after {took:?}, long after its wait of {wait:?}"
    );

    // Go durations in milliseconds are accepted too.
    let t = Instant::now();
    let r = api
        .get_timeout(
            &format!("/v1/health/service/x?index={n}&wait=1500ms"),
            Duration::from_secs(30),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.must_index(), n);
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "wait=1500ms returned after {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_blocking_query_wakes_on_its_key() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api().clone();
    api.put("/v1/kv/watch/me", "1").await.expect_true();
    let r = api.get("/v1/kv/watch/me").await;
    let n = r.must_index();
    let baseline = api.blocking_queries().await.unwrap_or(0.0);
    let q = {
        let api = api.clone();
        tokio::spawn(async move {
            let r = api
                .get_timeout(
                    &format!("/v1/kv/watch/me?index={n}&wait=30s"),
                    Duration::from_secs(60),
                )
                .await;
            (r, Instant::now())
        })
    };
    wait_blocking_at_least(&api, baseline + 1.0).await;
    api.put("/v1/kv/watch/me", "2").await.expect_true();
    let acked = Instant::now();
    let (r, returned) = tokio::time::timeout(Duration::from_secs(30), q)
        .await
        .expect("returns after the change")
        .expect("query task");
    let late = returned.saturating_duration_since(acked);
    assert!(
        late < Duration::from_secs(1),
        "returned {late:?} after the change"
    );
    r.expect_status(200);
    assert!(r.must_index() > n);
    let e: Vec<Value> = r.parse();
    assert_eq!(e[0]["Value"], "Mg==", "base64 of \"2\": {}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_consul_index() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    register(api, "idx-1", "idx", "a").await;
    api.put("/v1/kv/idx/a", "v").await.expect_true();

    // (path, status, whether it is a registry read that also reports X-Consul-KnownLeader)
    let paths = [
        ("/v1/kv/idx/a", 200, true),
        ("/v1/kv/does/not/exist", 404, true),
        ("/v1/kv/does/not/?recurse", 404, true),
        ("/v1/agent/service/no-such-id", 404, false),
        ("/v1/catalog/services", 200, true),
        ("/v1/catalog/service/idx", 200, true),
        ("/v1/catalog/service/no-such-service", 200, true),
        ("/v1/catalog/nodes", 200, true),
        ("/v1/health/service/idx", 200, true),
        ("/v1/health/service/no-such-service", 200, true),
        ("/v1/health/checks/idx", 200, true),
        ("/v1/health/state/any", 200, true),
    ];
    for (path, want, registry_read) in paths {
        let r = api.get(path).await;
        assert_eq!(r.status, want, "GET {path}: {}", r.text());
        let idx = r.must_index();
        assert!(idx >= 1, "GET {path}: X-Consul-Index {idx} < 1");
        if registry_read {
            assert_eq!(
                r.header("X-Consul-KnownLeader").as_deref(),
                Some("true"),
                "GET {path}: X-Consul-KnownLeader"
            );
            assert!(
                r.header("X-Consul-LastContact").is_some(),
                "GET {path}: no X-Consul-LastContact"
            );
        }
    }
    // A service nobody registered: its own index is still >= 1, so a client can block on it.
    let r = api.get("/v1/health/service/never-registered").await;
    let n = r.must_index();
    assert!(n >= 1);
}
