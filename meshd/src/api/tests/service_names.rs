//! Service names and `Connect` blocks at every door: agent and catalog registration,
//! intentions and leaf certificates refuse a name that could never be served (400 naming the
//! field, nothing stored), and a `Connect` block is checked field by field and echoed in
//! Consul's shape.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{assert_status, Harness, NODE};

fn upstream(u: Value) -> Value {
    json!({"Name": "web", "Connect": {"SidecarService": {"Proxy": {"Upstreams": [u]}}}})
}

/// Each body is refused with a one-line 400 that contains `want`, and nothing is stored.
async fn refused(h: &Harness, path: &str, cases: Vec<(Value, String)>) {
    let before = h.get("/v1/catalog/services").await;
    for (body, want) in cases {
        let r = h.put(path, body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(
            r.text().contains(&want),
            "{body}: {:?} (wanted {want:?})",
            r.text()
        );
        assert!(!r.text().contains('\n'), "multi-line error: {}", r.text());
    }
    let after = h.get("/v1/catalog/services").await;
    assert_eq!(after.json(), before.json());
    assert_eq!(after.index(), before.index());
    assert_eq!(h.get("/v1/agent/services").await.json(), json!({}));
}

#[tokio::test]
async fn names_no_dns_label_or_certificate_can_carry_are_400() {
    let h = Harness::new().await;
    let long = "a".repeat(64);
    let cases = vec![
        (
            json!({"Name": "web.v2", "Port": 80}),
            "invalid Name: service name \"web.v2\" has '.' at position 4".to_string(),
        ),
        (
            json!({"Name": "web#2"}),
            "invalid Name: service name \"web#2\" has '#' at position 4".into(),
        ),
        (
            json!({"Name": "_web"}),
            "invalid Name: service name \"_web\" starts with '_'".into(),
        ),
        (
            json!({"Name": long}),
            "invalid Name: service name \"aaaa".into(),
        ),
        (json!({"Name": "a b"}), "has ' ' at position 2".into()),
        (
            json!({"Service": "a#b"}),
            "invalid Service: service name".into(),
        ),
    ];
    refused(&h, "/v1/agent/service/register", cases).await;
    // The catalog's door: the service's name is `Service`.
    let cases = vec![(
        json!({"Node": "ext-1", "Address": "10.0.0.1",
               "Service": {"Service": "db.primary", "Port": 5432}}),
        "invalid Service: service name \"db.primary\" has '.' at position 3".to_string(),
    )];
    refused(&h, "/v1/catalog/register", cases).await;

    // The longest name that is one DNS label is fine.
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "b".repeat(63)}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
}

#[tokio::test]
async fn a_bad_connect_block_is_400_naming_the_field() {
    let h = Harness::new().await;
    let f = "Connect.SidecarService.Proxy.Upstreams[0]";
    let cases = vec![
        (
            upstream(json!({"DestinationName": "api", "LocalBindPort": 0})),
            format!("{f}.LocalBindPort must be a port 1..=65535"),
        ),
        (
            upstream(json!({"DestinationName": "api", "LocalBindPort": 70000})),
            format!("{f}.LocalBindPort must be a port 1..=65535"),
        ),
        (
            upstream(json!({"DestinationName": "api", "LocalBindPort": "9000"})),
            format!("field {f}.LocalBindPort"),
        ),
        (
            upstream(json!({"LocalBindPort": 9000})),
            format!("{f}.DestinationName must be a service name"),
        ),
        (
            upstream(json!({"DestinationName": "api.v2", "LocalBindPort": 9000})),
            format!("invalid {f}.DestinationName: service name \"api.v2\""),
        ),
        (
            upstream(json!({"DestinationName": "api", "LocalBindPort": 9000,
                            "LocalBindAddress": "here"})),
            format!("{f}.LocalBindAddress \"here\" is not an IP address"),
        ),
        (
            json!({"Name": "web", "Connect": {"SidecarService": {"Proxy": {"Upstreams": {}}}}}),
            "field Connect.SidecarService.Proxy.Upstreams".into(),
        ),
        (
            json!({"Name": "web", "Connect": "yes"}),
            "field Connect".into(),
        ),
    ];
    refused(&h, "/v1/agent/service/register", cases).await;
}

#[tokio::test]
async fn connect_is_echoed_in_consul_shape() {
    let h = Harness::new().await;
    // py-consul's snake_case spelling, an unknown key, and opaque Config maps.
    let def = json!({"name": "web", "port": 8080, "connect": {"sidecar_service": {
        "tags": ["ignored"], "proxy": {"config": {"local_key": 1}, "upstreams": [
            {"destination_name": "api", "local_bind_port": 9191,
             "config": {"connect_timeout_ms": 500}}]}}}});
    let r = h.put("/v1/agent/service/register", def).await;
    assert_status(&r, StatusCode::OK);
    let want = json!({"SidecarService": {"Proxy": {"Config": {"local_key": 1}, "Upstreams": [
        {"DestinationName": "api", "LocalBindPort": 9191,
         "Config": {"connect_timeout_ms": 500}}]}}});
    let svc = h.get("/v1/agent/service/web").await.json();
    assert_eq!(svc["Connect"], want);
    let cat = h.get("/v1/catalog/service/web").await.json();
    assert_eq!(cat[0]["ServiceConnect"], want);
    let up = h
        .ctx
        .registry
        .read()
        .node_services(NODE)
        .next()
        .map(|s| s.upstreams());
    assert_eq!(up.map(|u| u[0].bind_port), Some(9191));
    // No block: none shown by the agent, `{}` by the catalog, as Consul.
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "db"}))
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(h
        .get("/v1/agent/service/db")
        .await
        .json()
        .get("Connect")
        .is_none());
    let cat = h.get("/v1/catalog/service/db").await.json();
    assert_eq!(cat[0]["ServiceConnect"], json!({}));
}

#[tokio::test]
async fn intentions_and_leaves_refuse_what_no_service_can_be_named() {
    let h = Harness::new().await;
    for (src, dst, want) in [
        (
            "web.v2",
            "api",
            "invalid SourceName: service name \"web.v2\"",
        ),
        (
            "web",
            "a#b",
            "invalid DestinationName: service name \"a#b\"",
        ),
        ("web", "", "invalid DestinationName: service name is empty"),
    ] {
        let body = json!({"SourceName": src, "DestinationName": dst, "Action": "allow"});
        let r = h
            .call(Method::POST, "/v1/connect/intentions", body.to_string())
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{body}: {}", r.text());
    }
    assert_eq!(h.get("/v1/connect/intentions").await.json(), json!([]));
    // Wildcards and node sources keep working.
    let node = json!({"SourceName": "host-1.dc1", "SourceType": "node",
                      "DestinationName": "*", "Action": "deny"});
    let r = h
        .call(Method::POST, "/v1/connect/intentions", node.to_string())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let r = h.get("/v1/agent/connect/ca/leaf/web.v2").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(
        r.text()
            .contains("invalid service: service name \"web.v2\""),
        "{}",
        r.text()
    );
}
