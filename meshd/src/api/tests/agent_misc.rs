//! Agent checks, maintenance, definition files, self/members/status/metrics, and requests
//! the API refuses.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{assert_status, Harness, NODE};

#[tokio::test]
async fn agent_checks_ttl_and_maintenance() {
    let h = Harness::new().await;
    let r = h
        .put(
            "/v1/agent/check/register",
            json!({"name": "mem", "ttl": "30s", "notes": "n"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let c = &h.get("/v1/agent/checks").await.json()["mem"];
    assert_eq!(
        (c["Status"].clone(), c["Notes"].clone()),
        (json!("critical"), json!("n"))
    );

    let r = h
        .call(
            Method::PUT,
            "/v1/agent/check/warn/mem?note=hmm",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let c = &h.get("/v1/agent/checks").await.json()["mem"];
    assert_eq!(
        (c["Status"].clone(), c["Output"].clone()),
        (json!("warning"), json!("hmm"))
    );

    let r = h
        .put(
            "/v1/agent/check/update/mem",
            json!({"Status": "passing", "Output": "fine"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        h.get("/v1/agent/checks").await.json()["mem"]["Status"],
        "passing"
    );
    let r = h
        .put("/v1/agent/check/update/mem", json!({"Status": "sideways"}))
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let r = h
        .call(Method::PUT, "/v1/agent/check/pass/nope", Body::empty())
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);
    let r = h
        .put(
            "/v1/agent/check/register",
            json!({"name": "orphan", "ttl": "5s", "serviceid": "ghost"}),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);

    // Maintenance: a critical check takes the instance out of ?passing.
    let r = h
        .put("/v1/agent/service/register", json!({"Name": "web"}))
        .await;
    assert_status(&r, StatusCode::OK);
    // "mem" is a node-level check: failing, it fails every instance on the node.
    let r = h
        .call(Method::PUT, "/v1/agent/check/fail/mem", Body::empty())
        .await;
    assert_status(&r, StatusCode::OK);
    let passing = h.get("/v1/health/service/web?passing=1").await.json();
    assert_eq!(passing.as_array().map(Vec::len), Some(0), "{passing}");
    assert_eq!(
        h.get("/v1/health/service/web?passing=false")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let r = h
        .call(Method::PUT, "/v1/agent/check/deregister/mem", Body::empty())
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        h.get("/v1/health/service/web?passing")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/maintenance/web?enable=true&reason=deploy",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let c = &h.get("/v1/agent/checks").await.json()["_service_maintenance:web"];
    assert_eq!(c["Name"], "Service Maintenance Mode");
    assert_eq!(c["Notes"], "deploy");
    assert_eq!(c["Status"], "critical");
    assert_eq!(
        h.get("/v1/health/service/web?passing")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    let all = h.get("/v1/health/service/web").await.json();
    assert_eq!(all[0]["Checks"].as_array().map(Vec::len), Some(2), "{all}");
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/maintenance/web?enable=false",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(h
        .get("/v1/agent/checks")
        .await
        .json()
        .get("_service_maintenance:web")
        .is_none());
    for q in ["", "?enable=perhaps"] {
        let r = h
            .call(
                Method::PUT,
                &format!("/v1/agent/service/maintenance/web{q}"),
                Body::empty(),
            )
            .await;
        assert_status(&r, StatusCode::BAD_REQUEST);
    }
    let r = h
        .call(
            Method::PUT,
            "/v1/agent/service/maintenance/ghost?enable=true",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);

    let r = h
        .call(
            Method::PUT,
            "/v1/agent/maintenance?enable=true",
            Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(h
        .get("/v1/agent/checks")
        .await
        .json()
        .get("_node_maintenance")
        .is_some());
}

#[tokio::test]
async fn definition_files_in_both_forms() {
    use super::super::{parse_definitions, register_prepared};
    let h = Harness::new().await;
    let register = |v: serde_json::Value| {
        let ctx = h.ctx.clone();
        async move {
            let defs = parse_definitions(&v)?;
            register_prepared(&ctx, defs, false).await
        }
    };
    let one = json!({"service": {"name": "a", "port": 1, "check": {"ttl": "5s"}}});
    register(one).await.expect("one service");
    let many = json!({"services": [{"name": "b"}, {"name": "c", "id": "c1"}]});
    let ids = register(many).await.expect("list");
    assert_eq!(ids, vec!["b", "c1"]);
    let bare = json!({"Name": "d"});
    register(bare).await.expect("bare definition");
    let services = h.get("/v1/agent/services").await.json();
    let mut ids: Vec<&String> = services.as_object().expect("map").keys().collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c1", "d"]);
    // A bad entry stops the whole file before anything is written.
    let bad = json!({"services": [{"name": "e"}, {"port": 1}]});
    let e = register(bad).await.expect_err("bad");
    assert!(e.to_string().contains("service #2"), "{e}");
    assert!(h.get("/v1/agent/services").await.json().get("e").is_none());
    // What was registered is recognised as such (a reload skips it); a change is not.
    let defs =
        parse_definitions(&json!({"service": {"name": "a", "port": 1, "check": {"ttl": "5s"}}}))
            .expect("valid");
    assert_eq!(
        super::super::registered_unchanged(&h.ctx, &[&defs[0]]),
        [true]
    );
    let defs =
        parse_definitions(&json!({"service": {"name": "a", "port": 2, "check": {"ttl": "5s"}}}))
            .expect("valid");
    assert_eq!(
        super::super::registered_unchanged(&h.ctx, &[&defs[0]]),
        [false]
    );
    // The same ID twice in one file is refused.
    let twice = json!({"services": [{"name": "f"}, {"name": "f"}]});
    let e = parse_definitions(&twice)
        .expect_err("duplicate")
        .to_string();
    assert!(e.contains("defined twice"), "{e}");
}

/// Definition files are decoded strictly: a key no field reads, a top-level key besides
/// `service`/`services`, and a standalone check are errors that name them. The same body
/// through the API is accepted, as Consul accepts fields it does not model.
#[tokio::test]
async fn definition_files_name_unknown_keys() {
    use super::super::parse_definitions;
    let err = |v: serde_json::Value| {
        parse_definitions(&v)
            .map(|p| p.len())
            .expect_err("refused")
            .to_string()
    };
    let e = err(json!({"service": {"name": "a", "tagz": ["x"]}}));
    assert!(e.contains("unknown key `tagz`"), "{e}");
    let e = err(
        json!({"services": [{"name": "a"}, {"name": "b", "check": {"ttl": "5s", "intervall": "1s"}}]}),
    );
    assert!(
        e.contains("service #2") && e.contains("unknown key `Check.intervall`"),
        "{e}"
    );
    let e = err(
        json!({"name": "a", "Checks": [{"ttl": "5s"}, {"tcp": "127.0.0.1:1", "interval": "1s", "tmeout": "1s"}]}),
    );
    assert!(e.contains("unknown key `Checks.1.tmeout`"), "{e}");
    let e = err(json!({"service": {"name": "a"}, "servise": {}}));
    assert!(e.contains("unknown top-level key `servise`"), "{e}");
    for standalone in [
        json!({"check": {"name": "disk", "ttl": "30s"}}),
        json!({"service": {"name": "a"}, "checks": [{"ttl": "30s"}]}),
    ] {
        let e = err(standalone);
        assert!(e.contains("standalone check definitions"), "{e}");
    }
    let e = err(json!({"service": ["a"]}));
    assert!(e.contains("\"service\" must be"), "{e}");
    // Keys in Consul's other spellings, Meta's own keys, and Connect are not unknown.
    let ok = json!({"service": {"name": "a", "enable_tag_override": true,
        "meta": {"anything-goes": "1"}, "connect": {"sidecar_service": {}},
        "check": {"HTTP": "http://127.0.0.1/", "interval": "10s", "header": {"X-Y": ["z"]}}}});
    assert_eq!(parse_definitions(&ok).expect("valid").len(), 1);

    let h = Harness::new().await;
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "api-lenient", "Tagz": ["x"], "Locality": {"Region": "r"}}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
}

#[tokio::test]
async fn self_members_status_and_metrics() {
    let h = Harness::new().await;
    let s = h.get("/v1/agent/self").await;
    assert_status(&s, StatusCode::OK);
    let s = s.json();
    assert_eq!(s["Config"]["NodeName"], NODE);
    assert_eq!(s["Config"]["Datacenter"], "dc1");
    assert_eq!(
        s["Config"]["Version"],
        crate::local::CONSUL_API_COMPAT_VERSION
    );
    assert_eq!(s["Config"]["MeshdVersion"], crate::local::MESHD_VERSION);
    assert_eq!(s["Config"]["Server"], true);
    for k in [
        "Member",
        "xDS",
        "Stats",
        "Config",
        "Coord",
        "DebugConfig",
        "Meta",
    ] {
        assert!(s.get(k).is_some(), "missing {k}");
    }
    let members = h.get("/v1/agent/members").await.json();
    assert!(
        members.as_array().is_some_and(|m| m.contains(&s["Member"])),
        "{members} lacks {}",
        s["Member"]
    );
    assert_eq!(s["Member"]["Status"], 1);

    let leader = h.get("/v1/status/leader").await;
    assert_status(&leader, StatusCode::OK);
    assert!(leader.json().as_str().is_some_and(|l| !l.is_empty()));
    assert!(h.get("/v1/status/peers").await.json().is_array());
    assert_eq!(
        h.get("/v1/catalog/datacenters").await.json(),
        json!(["dc1"])
    );

    let m = h.get("/v1/agent/metrics?format=prometheus").await;
    assert_status(&m, StatusCode::OK);
    assert!(
        m.text().contains("meshd_api_requests_total"),
        "{}",
        m.text()
    );
    assert!(m.text().contains("meshd_api_blocking_queries"));
    let m = h.get("/metrics").await;
    assert!(
        m.text().contains("route=\"/v1/agent/self\""),
        "{}",
        m.text()
    );
    let m = h.get("/v1/agent/metrics").await.json();
    assert!(m.get("Timestamp").is_some() && m["Gauges"].is_array());
    assert_status(
        &h.get("/v1/agent/metrics?format=xml").await,
        StatusCode::BAD_REQUEST,
    );
}

#[tokio::test]
async fn unknown_paths_methods_and_params() {
    let h = Harness::new().await;
    assert_status(&h.get("/v1/nope").await, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::DELETE, "/v1/agent/services", Body::empty())
        .await;
    assert_status(&r, StatusCode::METHOD_NOT_ALLOWED);
    assert_status(
        &h.get("/v1/catalog/services?dc=elsewhere").await,
        StatusCode::INTERNAL_SERVER_ERROR,
    );
    assert_status(&h.get("/v1/catalog/services?dc=dc1").await, StatusCode::OK);
    assert_status(
        &h.get("/v1/catalog/services?filter=x").await,
        StatusCode::BAD_REQUEST,
    );
    assert_status(
        &h.get("/v1/catalog/services?index=abc").await,
        StatusCode::BAD_REQUEST,
    );
    assert_status(
        &h.get("/v1/catalog/services?index=1&wait=10").await,
        StatusCode::BAD_REQUEST,
    );
    let r = h.get("/v1/catalog/services?stale&consistent").await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("cannot specify ?stale with ?consistent"));
    assert_status(&h.get("/v1/catalog/services?stale").await, StatusCode::OK);
    assert_status(
        &h.get("/v1/catalog/services?consistent").await,
        StatusCode::OK,
    );
    assert_status(
        &h.get("/v1/health/state/bogus").await,
        StatusCode::BAD_REQUEST,
    );
    assert_status(&h.get("/v1/health/state/any").await, StatusCode::OK);
}
