//! Route tests against a real single-server registry in a temporary directory.

mod agent_misc;
mod blocking_http;
mod connect_api;
mod discovery_chain;
mod kv_catalog;
mod service_names;
mod virtual_ips;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use registry::{Check, Command, Node, Register, Status};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::{router, ApiContext, ApiMetrics};
use crate::checks::CheckRunner;
use crate::local::AgentInfo;

pub(super) struct Harness {
    pub ctx: Arc<ApiContext>,
    pub app: Router,
    _cluster: crate::cluster::Cluster,
    _dir: tempfile::TempDir,
}

pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index: {:?}", self.headers))
    }
}

pub(super) const NODE: &str = "node1";

impl Harness {
    pub async fn new() -> Harness {
        // As main does: one crypto provider for the check runner's HTTPS client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut metrics = prometheus_client::registry::Registry::default();
        let args = crate::cli::AgentArgs {
            dev: true,
            node: Some(NODE.into()),
            data_dir: Some(dir.path().to_path_buf()),
            bind: Some("127.0.0.1:0".parse().expect("addr")),
            ..Default::default()
        };
        let cfg = crate::config::build(&args).expect("dev config");
        let cluster = crate::cluster::Cluster::start(
            &cfg,
            dir.path(),
            1,
            &mut metrics,
            tokio_util::sync::CancellationToken::new(),
        )
        .await
        .expect("dev server starts")
        .expect("not cancelled");
        let registry = cluster.store.clone();
        let agent = AgentInfo {
            node: NODE.into(),
            node_id: "0b1e8e43-6f2c-4c40-9e0a-5d7f0e1c2a3b".into(),
            address: "127.0.0.1".into(),
            datacenter: "dc1".into(),
            server: true,
            node_meta: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
        };
        let applied = registry
            .write(Command::Register(Register {
                node: Node {
                    id: agent.node_id.clone(),
                    node: agent.node.clone(),
                    address: agent.address.clone(),
                    datacenter: agent.datacenter.clone(),
                    meta: agent.node_meta.clone(),
                    ..Node::default()
                },
                checks: vec![Check {
                    node: NODE.into(),
                    check_id: "serfHealth".into(),
                    name: "Mesh Health Status".into(),
                    status: Status::Passing,
                    output: registry::model::NODE_ALIVE_OUTPUT.into(),
                    ..Check::default()
                }],
                ..Register::default()
            }))
            .await
            .expect("node registered");
        assert_eq!(applied.response, registry::Response::Done);
        // The leader's liveness loop records this node as a member shortly after start; wait
        // for it, so no test sees that write land in the middle of what it measures.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while registry.read().member(NODE).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "this node never became a member"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let checks = CheckRunner::new(
            registry.clone(),
            NODE.into(),
            Duration::from_secs(60),
            &mut metrics,
        )
        .expect("check runner");
        let api_metrics = ApiMetrics::new(&mut metrics);
        let ctx = Arc::new(ApiContext::new(
            registry,
            agent,
            checks,
            Arc::new(metrics),
            api_metrics,
            tokio_util::sync::CancellationToken::new(),
        ));
        let app = router(ctx.clone());
        Harness {
            ctx,
            app,
            _cluster: cluster,
            _dir: dir,
        }
    }

    pub async fn call(&self, method: Method, uri: &str, body: impl Into<Body>) -> Reply {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body.into())
            .expect("request");
        let resp = self.app.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body")
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, Body::empty()).await
    }

    pub async fn put(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::PUT, uri, body.to_string()).await
    }
}

pub(super) fn assert_status(r: &Reply, want: StatusCode) {
    assert_eq!(r.status, want, "body: {}", r.text());
    assert!(r.index() >= 1);
}

#[tokio::test]
async fn agent_service_round_trips_and_reregistration_changes_nothing() {
    let h = Harness::new().await;
    // py-consul's spelling: lowercase and snake_case keys.
    let def = json!({
        "name": "web", "id": "web-1", "port": 8080, "address": "10.0.0.5",
        "tags": ["v1", "primary"], "meta": {"version_tag": "1.2"},
        "enabletagoverride": true,
        "tagged_addresses": {"lan": {"address": "10.0.0.5", "port": 8080}},
        "checks": [
            {"http": "http://127.0.0.1:8080/health", "interval": "90s", "timeout": "2000ms",
             "header": {"X-Custom": ["a"]}, "tls_skip_verify": true,
             "deregister_critical_service_after": "10m"},
            {"ttl": "30s"}
        ]
    });
    let r = h.put("/v1/agent/service/register", def.clone()).await;
    assert_status(&r, StatusCode::OK);

    let r = h.get("/v1/agent/services").await;
    assert_status(&r, StatusCode::OK);
    assert!(r.headers.contains_key("x-consul-knownleader"));
    assert!(r.headers.contains_key("x-consul-lastcontact"));
    let svc = &r.json()["web-1"];
    assert_eq!(
        *svc,
        json!({
            "ID": "web-1", "Service": "web", "Tags": ["v1", "primary"],
            "Meta": {"version_tag": "1.2"}, "Port": 8080, "Address": "10.0.0.5",
            "TaggedAddresses": {"lan": {"Address": "10.0.0.5", "Port": 8080}},
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": true,
            "CreateIndex": svc["CreateIndex"], "ModifyIndex": svc["ModifyIndex"],
            "Datacenter": "dc1"
        })
    );

    let checks = h.get("/v1/agent/checks").await.json();
    let http = &checks["service:web-1:1"];
    assert_eq!(http["Name"], "Service 'web' check");
    assert_eq!(http["Status"], "critical");
    assert_eq!(http["ServiceID"], "web-1");
    assert_eq!(http["ServiceName"], "web");
    assert_eq!(http["Type"], "http");
    assert_eq!(http["Interval"], "1m30s");
    assert_eq!(http["Definition"]["Timeout"], "2s");
    assert_eq!(
        http["Definition"]["DeregisterCriticalServiceAfter"],
        "10m0s"
    );
    assert_eq!(http["Definition"]["TLSSkipVerify"], true);
    assert_eq!(http["Definition"]["Header"]["X-Custom"], json!(["a"]));
    assert_eq!(checks["service:web-1:2"]["Type"], "ttl");

    // A TTL pass, then a re-registration: the check keeps its status, no index moves.
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/check/pass/service:web-1:2?note=ok",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let before = h.get("/v1/catalog/service/web").await.index();
    let r = h.put("/v1/agent/service/register", def).await;
    assert_status(&r, StatusCode::OK);
    let after = h.get("/v1/catalog/service/web").await;
    assert_eq!(
        after.index(),
        before,
        "an identical re-registration bumped the index"
    );
    let checks = h.get("/v1/agent/checks").await.json();
    assert_eq!(checks["service:web-1:2"]["Status"], "passing");
    assert_eq!(checks["service:web-1:2"]["Output"], "ok");

    // Deregistration removes the service and its checks.
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/deregister/web-1",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(h.get("/v1/agent/services").await.json(), json!({}));
    let checks = h.get("/v1/agent/checks").await.json();
    assert_eq!(checks.as_object().map(|m| m.len()), Some(1), "{checks}");
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/deregister/web-1",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn minimal_service_gets_consul_defaults() {
    let h = Harness::new().await;
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "db", "Check": {"TTL": "10s"}}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let svc = h.get("/v1/agent/service/db").await.json();
    assert_eq!(svc["ID"], "db");
    assert_eq!(svc["Tags"], json!([]));
    assert_eq!(svc["Meta"], json!({}));
    assert_eq!(svc["Weights"], json!({"Passing": 1, "Warning": 1}));
    assert!(svc.get("Kind").is_none() && svc.get("TaggedAddresses").is_none());
    let checks = h.get("/v1/agent/checks").await.json();
    assert_eq!(checks["service:db"]["Name"], "Service 'db' check");
    let r = h.get("/v1/agent/service/nope").await;
    assert_status(&r, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_registrations_are_400_and_change_nothing() {
    let h = Harness::new().await;
    let before = h.get("/v1/agent/services").await.index();
    let cases: Vec<(&str, &str)> = vec![
        ("{not json", "invalid JSON"),
        ("", "empty body"),
        (r#"["a"]"#, "JSON object"),
        (r#"{"Port": 80}"#, "Missing service name"),
        (r#"{"Name": "x", "Port": 70000}"#, "out of range"),
        (r#"{"Name": "x", "Port": "80"}"#, "Port"),
        (r#"{"Name": "x", "Tags": "a"}"#, "Tags"),
        (r#"{"Name": "x\u0001y"}"#, "invalid Name"),
        (r#"{"Name": "bad name/with slash"}"#, "invalid Name"),
        (r#"{"Name": "x", "ID": "a/b"}"#, "invalid service ID"),
        (
            r#"{"Name": "x", "Check": {"TTL": "5s", "CheckID": "a?b"}}"#,
            "invalid check ID",
        ),
        (r#"{"Name": "x", "Meta": {"bad key": "v"}}"#, "Meta"),
        (
            r#"{"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}"#,
            "unsupported check type",
        ),
        (r#"{"Name": "x", "Check": {"Interval": "10s"}}"#, "no type"),
        (
            r#"{"Name": "x", "Check": {"HTTP": "http://a/", "TTL": "5s", "Interval": "1s"}}"#,
            "ambiguous",
        ),
        (
            r#"{"Name": "x", "Check": {"HTTP": "http://a/"}}"#,
            "Interval",
        ),
        (
            r#"{"Name": "x", "Check": {"TCP": "nohostport", "Interval": "1s"}}"#,
            "host:port",
        ),
        (
            r#"{"Name": "x", "Check": {"HTTP": "ftp://a/", "Interval": "1s"}}"#,
            "HTTP check URL",
        ),
        (
            r#"{"Name": "x", "Check": {"TTL": "5 parsecs"}}"#,
            "Check.TTL",
        ),
        (
            r#"{"Name": "x", "Check": {"TTL": "5s", "Status": "great"}}"#,
            "Invalid check status",
        ),
        (
            r#"{"Name": "x", "Weights": {"Passing": 0, "Warning": 3}}"#,
            "Passing",
        ),
        (r#"{"Name": "x", "Kind": "spaceship"}"#, "Kind"),
    ];
    for (body, want) in cases {
        let r = h
            .call(Method::PUT, "/v1/agent/service/register", body.to_string())
            .await;
        assert_status(&r, StatusCode::BAD_REQUEST);
        assert!(
            r.text().contains(want),
            "{body}: {} (wanted {want:?})",
            r.text()
        );
        assert!(!r.text().contains('\n'), "multi-line error: {}", r.text());
    }
    let after = h.get("/v1/agent/services").await;
    assert_eq!(after.json(), json!({}));
    assert_eq!(after.index(), before);

    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/register?replace-existing-checks=perhaps",
            r#"{"Name":"x"}"#,
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn replace_existing_checks_removes_missing_checks() {
    let h = Harness::new().await;
    let two = json!({"Name": "api", "Checks": [{"TTL": "5s"}, {"TTL": "6s"}]});
    assert_status(
        &h.put("/v1/agent/service/register", two).await,
        StatusCode::OK,
    );
    let one = json!({"Name": "api", "Checks": [{"TTL": "5s", "CheckID": "service:api:1"}]});
    let r = h.put("/v1/agent/service/register", one.clone()).await;
    assert_status(&r, StatusCode::OK);
    assert!(h
        .get("/v1/agent/checks")
        .await
        .json()
        .get("service:api:2")
        .is_some());
    let r = h
        .put("/v1/agent/service/register?replace-existing-checks", one)
        .await;
    assert_status(&r, StatusCode::OK);
    let checks = h.get("/v1/agent/checks").await.json();
    assert!(checks.get("service:api:2").is_none(), "{checks}");
    assert!(checks.get("service:api:1").is_some(), "{checks}");
}
