//! `GET /v1/mesh/virtual-ips`.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use registry::Command;
use serde_json::{json, Value};

use super::{assert_status, Harness};

/// The `(Service, IP)` pairs of a reply, in order.
fn pairs(v: &Value) -> Vec<(String, String)> {
    v["VirtualIPs"]
        .as_array()
        .unwrap_or_else(|| panic!("no VirtualIPs: {v}"))
        .iter()
        .map(|e| {
            (
                e["Service"].as_str().unwrap_or_default().to_string(),
                e["IP"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn virtual_ips_are_listed_stable_and_freed() {
    let h = Harness::new().await;
    let r = h.get("/v1/mesh/virtual-ips").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        r.json(),
        json!({"Range": "127.100.0.0/16", "VirtualIPs": []})
    );

    for (name, id) in [("web", "web-1"), ("db", "db-1"), ("web", "web-2")] {
        let r = h
            .put(
                "/v1/agent/service/register",
                json!({"Name": name, "ID": id, "Port": 80}),
            )
            .await;
        assert_status(&r, StatusCode::OK);
    }
    let r = h.get("/v1/mesh/virtual-ips").await;
    assert_status(&r, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["Range"], "127.100.0.0/16");
    assert_eq!(
        pairs(&v),
        vec![
            ("db".to_string(), "127.100.0.2".to_string()),
            ("web".to_string(), "127.100.0.1".to_string()),
        ]
    );
    let db_index = v["VirtualIPs"][0]["CreateIndex"]
        .as_u64()
        .expect("CreateIndex");
    // The header is the table's index: the write that gave db its address.
    assert_eq!(r.index(), db_index);
    assert_eq!(h.ctx.registry.read().virtual_ips_index(), db_index);
    // The query helpers agree with the listing.
    assert_eq!(
        h.ctx.registry.read().virtual_ip("web"),
        "127.100.0.1".parse().ok()
    );

    // ?stale and ?consistent answer the same.
    for q in ["?stale", "?consistent"] {
        let r = h.get(&format!("/v1/mesh/virtual-ips{q}")).await;
        assert_status(&r, StatusCode::OK);
        assert_eq!(r.json(), v, "{q}");
    }
    let r = h.get("/v1/mesh/virtual-ips?stale&consistent").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = h.get("/v1/mesh/virtual-ips?index=abc").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // One web instance goes: web keeps its address. The last one: freed.
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/deregister/web-1",
            axum::body::Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let v = h.get("/v1/mesh/virtual-ips").await.json();
    assert_eq!(pairs(&v).len(), 2);
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/deregister/web-2",
            axum::body::Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let r = h.get("/v1/mesh/virtual-ips").await;
    assert_eq!(
        pairs(&r.json()),
        vec![("db".to_string(), "127.100.0.2".to_string())]
    );
    assert!(r.index() > db_index);
    // A new name takes the next address, not the freed one.
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "api"}))
        .await;
    assert_status(&r, StatusCode::OK);
    let v = h.get("/v1/mesh/virtual-ips").await.json();
    assert_eq!(
        pairs(&v),
        vec![
            ("api".to_string(), "127.100.0.3".to_string()),
            ("db".to_string(), "127.100.0.2".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_range_change_keeps_addresses_and_a_bad_range_is_rejected() {
    let h = Harness::new().await;
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "web"}))
        .await;
    assert_status(&r, StatusCode::OK);

    let bad = h
        .ctx
        .registry
        .write(Command::VirtualIpRange {
            cidr: "10.0.0.0/31".into(),
        })
        .await
        .expect("written");
    match bad.response {
        registry::Response::Rejected(why) => assert!(why.contains("/30"), "{why}"),
        other => panic!("accepted: {other:?}"),
    }
    let ok = h
        .ctx
        .registry
        .write(Command::VirtualIpRange {
            cidr: "10.20.0.0/24".into(),
        })
        .await
        .expect("written");
    assert_eq!(ok.response, registry::Response::Done);

    let r = h
        .put("/v1/agent/service/register", json!({"Name": "db"}))
        .await;
    assert_status(&r, StatusCode::OK);
    let v = h.get("/v1/mesh/virtual-ips").await.json();
    assert_eq!(v["Range"], "10.20.0.0/24");
    assert_eq!(
        pairs(&v),
        vec![
            ("db".to_string(), "10.20.0.1".to_string()),
            ("web".to_string(), "127.100.0.1".to_string()),
        ]
    );
}

#[tokio::test]
async fn a_blocking_query_wakes_only_for_the_table() {
    let h = Harness::new().await;
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "web"}))
        .await;
    assert_status(&r, StatusCode::OK);
    let index = h.get("/v1/mesh/virtual-ips").await.index();

    let uri = format!("/v1/mesh/virtual-ips?index={index}&wait=20s");
    let watch = tokio::spawn(get_owned(h.app.clone(), uri));
    let gauge = h.ctx.metrics.blocking_queries.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while gauge.get() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the query never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A KV write and another instance of web (same name) do not change the table.
    assert_status(&h.call(Method::PUT, "/v1/kv/k", "v").await, StatusCode::OK);
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "web", "ID": "web-2"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!watch.is_finished(), "a write elsewhere woke the query");

    // A new name does.
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "db"}))
        .await;
    assert_status(&r, StatusCode::OK);
    let (status, new_index, body) = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(new_index > index);
    let names: BTreeSet<String> = pairs(&body).into_iter().map(|(s, _)| s).collect();
    assert_eq!(names, BTreeSet::from(["db".to_string(), "web".to_string()]));
}

/// A `GET` on a clone of the router, to move into a task: status, index and JSON body.
async fn get_owned(app: axum::Router, uri: String) -> (StatusCode, u64, Value) {
    use tower::ServiceExt as _;
    let req = axum::http::Request::builder()
        .uri(uri)
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = app.oneshot(req).await.expect("infallible");
    let status = resp.status();
    let index = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, index, v)
}
