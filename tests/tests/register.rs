//! Registering a service through the agent API: `/v1/agent/services` echoes every field exactly
//! as registered, the catalog and health endpoints show the instance with the right fields, and
//! deregistering removes it everywhere.

use std::time::Duration;

use serde_json::{json, Value};
use tests::{wait_until, Meshd, MeshdOptions};

fn web_registration() -> Value {
    json!({
        "ID": "web-1",
        "Name": "web",
        "Tags": ["v1", "primary"],
        "Meta": {"version": "1.2.3", "team": "edge"},
        "Port": 8080,
        "Address": "127.0.0.1",
        "TaggedAddresses": {
            "lan": {"Address": "127.0.0.1", "Port": 8080},
            "wan": {"Address": "127.0.0.2", "Port": 80}
        },
        "EnableTagOverride": true,
        "Weights": {"Passing": 10, "Warning": 3},
        "Check": {"CheckID": "web-ttl", "Name": "web ttl", "TTL": "30s"}
    })
}

/// The fields `/v1/agent/services` must echo exactly (Nomad re-registers on any difference).
fn assert_agent_service_echo(got: &Value) {
    assert_eq!(got["ID"], "web-1", "{got}");
    assert_eq!(got["Service"], "web", "{got}");
    assert_eq!(got["Tags"], json!(["v1", "primary"]), "{got}");
    assert_eq!(
        got["Meta"],
        json!({"version": "1.2.3", "team": "edge"}),
        "{got}"
    );
    assert_eq!(got["Port"], 8080, "{got}");
    assert_eq!(got["Address"], "127.0.0.1", "{got}");
    assert_eq!(
        got["TaggedAddresses"],
        json!({
            "lan": {"Address": "127.0.0.1", "Port": 8080},
            "wan": {"Address": "127.0.0.2", "Port": 80}
        }),
        "{got}"
    );
    assert_eq!(got["EnableTagOverride"], true, "{got}");
    assert_eq!(
        got["Weights"],
        json!({"Passing": 10, "Warning": 3}),
        "{got}"
    );
    // Consul omits an empty Kind; if present it must be the empty (typical) kind.
    if let Some(kind) = got.get("Kind") {
        assert_eq!(kind, "", "{got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_shows_in_agent_catalog_and_health_then_deregister_removes_it() {
    let meshd = Meshd::start(MeshdOptions::default().node("reg-node")).await;
    let api = meshd.api();
    assert_eq!(meshd.node(), "reg-node");
    assert_eq!(meshd.serving().datacenter, "dc1");

    api.put_json("/v1/agent/service/register", &web_registration())
        .await
        .expect_status(200);

    // Agent view: echoed exactly.
    let r = api.get("/v1/agent/services").await;
    r.expect_status(200);
    let services = r.json();
    assert_eq!(
        services.as_object().map(|m| m.len()),
        Some(1),
        "exactly one service: {services}"
    );
    assert_agent_service_echo(&services["web-1"]);

    let r = api.get("/v1/agent/service/web-1").await;
    r.expect_status(200);
    assert_agent_service_echo(&r.json());

    // The check is the agent's.
    let checks = api.get("/v1/agent/checks").await;
    checks.expect_status(200);
    let checks = checks.json();
    let c = &checks["web-ttl"];
    assert_eq!(c["CheckID"], "web-ttl", "{checks}");
    assert_eq!(c["Name"], "web ttl", "{checks}");
    assert_eq!(c["ServiceID"], "web-1", "{checks}");
    assert_eq!(c["ServiceName"], "web", "{checks}");

    // Catalog view.
    let r = api.get("/v1/catalog/service/web").await;
    r.expect_status(200);
    assert!(r.must_index() >= 1);
    let inst: Vec<Value> = r.parse();
    assert_eq!(inst.len(), 1, "{inst:?}");
    let i = &inst[0];
    assert_eq!(i["Node"], "reg-node", "{i}");
    assert_eq!(i["Datacenter"], "dc1", "{i}");
    assert_eq!(i["ServiceID"], "web-1", "{i}");
    assert_eq!(i["ServiceName"], "web", "{i}");
    assert_eq!(i["ServiceTags"], json!(["v1", "primary"]), "{i}");
    assert_eq!(
        i["ServiceMeta"],
        json!({"version": "1.2.3", "team": "edge"}),
        "{i}"
    );
    assert_eq!(i["ServicePort"], 8080, "{i}");
    assert_eq!(i["ServiceAddress"], "127.0.0.1", "{i}");
    assert_eq!(
        i["ServiceTaggedAddresses"]["wan"],
        json!({"Address": "127.0.0.2", "Port": 80}),
        "{i}"
    );
    assert_eq!(i["ServiceEnableTagOverride"], true, "{i}");
    assert_eq!(
        i["ServiceWeights"],
        json!({"Passing": 10, "Warning": 3}),
        "{i}"
    );
    let create = i["CreateIndex"].as_u64().expect("CreateIndex is a number");
    let modify = i["ModifyIndex"].as_u64().expect("ModifyIndex is a number");
    assert!(create >= 1 && modify >= create, "{i}");

    // Tag filter.
    let r = api.get("/v1/catalog/service/web?tag=primary").await;
    assert_eq!(
        r.parse::<Vec<Value>>().len(),
        1,
        "tag=primary: {}",
        r.text()
    );
    let r = api.get("/v1/catalog/service/web?tag=nope").await;
    r.expect_status(200);
    assert_eq!(r.parse::<Vec<Value>>().len(), 0, "tag=nope: {}", r.text());

    // The catalog's service list.
    let r = api.get("/v1/catalog/services").await;
    r.expect_status(200);
    let all = r.json();
    // The union of the instances' tags; Consul gives no order.
    let mut tags: Vec<&str> = all["web"]
        .as_array()
        .unwrap_or_else(|| panic!("web's tags are a list: {all}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort_unstable();
    assert_eq!(tags, ["primary", "v1"], "{all}");

    // The node.
    let r = api.get("/v1/catalog/node/reg-node").await;
    r.expect_status(200);
    let node = r.json();
    assert_eq!(node["Node"]["Node"], "reg-node", "{node}");
    assert_eq!(node["Services"]["web-1"]["Service"], "web", "{node}");

    // Health view: the instance with its node and its checks.
    let r = api.get("/v1/health/service/web").await;
    r.expect_status(200);
    assert!(r.must_index() >= 1);
    let entries: Vec<Value> = r.parse();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let e = &entries[0];
    assert_eq!(e["Node"]["Node"], "reg-node", "{e}");
    assert_eq!(e["Node"]["Datacenter"], "dc1", "{e}");
    assert_eq!(e["Service"]["ID"], "web-1", "{e}");
    assert_eq!(e["Service"]["Service"], "web", "{e}");
    assert_eq!(e["Service"]["Tags"], json!(["v1", "primary"]), "{e}");
    assert_eq!(e["Service"]["Port"], 8080, "{e}");
    assert_eq!(
        e["Service"]["Weights"],
        json!({"Passing": 10, "Warning": 3}),
        "{e}"
    );
    let checks = e["Checks"].as_array().expect("Checks is an array");
    let ttl = checks
        .iter()
        .find(|c| c["CheckID"] == "web-ttl")
        .unwrap_or_else(|| panic!("web-ttl among the instance's checks: {e}"));
    assert_eq!(ttl["ServiceID"], "web-1", "{ttl}");
    assert_eq!(ttl["ServiceName"], "web", "{ttl}");
    assert_eq!(ttl["Node"], "reg-node", "{ttl}");
    assert_eq!(ttl["Type"], "ttl", "{ttl}");

    // A TTL check starts critical (Consul), so ?passing hides the instance until it passes.
    api.put("/v1/agent/check/pass/web-ttl", "")
        .await
        .expect_status(200);
    wait_until(Duration::from_secs(10), "web is passing", || async {
        let r = api.get("/v1/health/service/web?passing").await;
        r.status == 200 && r.parse::<Vec<Value>>().len() == 1
    })
    .await;
    let r = api.get("/v1/health/service/web?passing=1&tag=v1").await;
    assert_eq!(r.parse::<Vec<Value>>().len(), 1, "{}", r.text());

    // Deregister: gone from every view.
    api.put("/v1/agent/service/deregister/web-1", "")
        .await
        .expect_status(200);
    let r = api.get("/v1/agent/services").await;
    r.expect_status(200);
    assert_eq!(r.json(), json!({}), "agent services after deregister");
    let r = api.get("/v1/agent/service/web-1").await;
    r.expect_status(404);
    assert!(r.must_index() >= 1, "404 carries X-Consul-Index");
    let r = api.get("/v1/agent/checks").await;
    assert!(
        r.json().get("web-ttl").is_none(),
        "the service's check is removed with it: {}",
        r.text()
    );
    let r = api.get("/v1/catalog/service/web").await;
    r.expect_status(200);
    assert_eq!(r.parse::<Vec<Value>>().len(), 0, "{}", r.text());
    let r = api.get("/v1/health/service/web").await;
    r.expect_status(200);
    assert_eq!(r.parse::<Vec<Value>>().len(), 0, "{}", r.text());
    let r = api.get("/v1/catalog/services").await;
    assert!(r.json().get("web").is_none(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_register_and_deregister_of_a_foreign_node() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    api.put_json(
        "/v1/catalog/register",
        &json!({
            "Node": "ext-1",
            "Address": "127.0.0.9",
            "NodeMeta": {"rack": "r1"},
            "Service": {"ID": "db-1", "Service": "db", "Port": 5432, "Tags": ["primary"]},
            "Check": {"CheckID": "db-alive", "Name": "db alive", "Status": "passing",
                      "ServiceID": "db-1"}
        }),
    )
    .await
    .expect_true();

    let r = api.get("/v1/catalog/nodes").await;
    r.expect_status(200);
    let nodes: Vec<Value> = r.parse();
    let ext = nodes
        .iter()
        .find(|n| n["Node"] == "ext-1")
        .unwrap_or_else(|| panic!("ext-1 in nodes: {nodes:?}"));
    assert_eq!(ext["Address"], "127.0.0.9");
    assert_eq!(ext["Meta"]["rack"], "r1");
    let local = nodes
        .iter()
        .find(|n| n["Node"] == meshd.node())
        .unwrap_or_else(|| panic!("the agent's own node in nodes: {nodes:?}"));
    assert!(local["CreateIndex"].as_u64().is_some(), "{local}");

    let r = api.get("/v1/health/service/db?passing").await;
    let e: Vec<Value> = r.parse();
    assert_eq!(e.len(), 1, "{}", r.text());
    assert_eq!(e[0]["Service"]["Port"], 5432);
    assert_eq!(e[0]["Node"]["Address"], "127.0.0.9");
    let r = api.get("/v1/health/node/ext-1").await;
    r.expect_status(200);
    let checks: Vec<Value> = r.parse();
    assert!(
        checks.iter().any(|c| c["CheckID"] == "db-alive"),
        "{checks:?}"
    );
    let r = api.get("/v1/health/state/passing").await;
    r.expect_status(200);
    let passing: Vec<Value> = r.parse();
    assert!(
        passing.iter().any(|c| c["CheckID"] == "db-alive"),
        "{passing:?}"
    );

    // Deregister just the service, then the node.
    api.put_json(
        "/v1/catalog/deregister",
        &json!({"Node": "ext-1", "ServiceID": "db-1"}),
    )
    .await
    .expect_true();
    let r = api.get("/v1/catalog/service/db").await;
    assert_eq!(r.parse::<Vec<Value>>().len(), 0, "{}", r.text());
    api.put_json("/v1/catalog/deregister", &json!({"Node": "ext-1"}))
        .await
        .expect_true();
    let r = api.get("/v1/catalog/node/ext-1").await;
    assert!(
        r.status == 404 || (r.status == 200 && r.text().trim() == "null"),
        "a deregistered node is gone: {} {}",
        r.status,
        r.text()
    );
    assert!(r.must_index() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_self_endpoints() {
    let meshd = Meshd::start(MeshdOptions::default().node("self-node")).await;
    let api = meshd.api();
    let r = api.get("/v1/status/leader").await;
    r.expect_status(200);
    let leader: String = r.parse();
    assert!(!leader.is_empty(), "a single dev server leads itself");
    let r = api.get("/v1/status/peers").await;
    r.expect_status(200);
    let peers: Vec<String> = r.parse();
    assert_eq!(peers.len(), 1, "{peers:?}");

    let r = api.get("/v1/agent/self").await;
    r.expect_status(200);
    let s = r.json();
    assert_eq!(s["Config"]["Datacenter"], "dc1", "{s}");
    assert_eq!(s["Config"]["NodeName"], "self-node", "{s}");
    assert_eq!(s["Config"]["Server"], true, "{s}");
    assert!(
        s["Config"]["Version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{s}"
    );
    assert!(s.get("Member").is_some(), "{s}");
}
