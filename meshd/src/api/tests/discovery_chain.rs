//! L7 config entries (`service-router`, `service-splitter`, `service-resolver`) through
//! `/v1/config`, their write-time 400s, and `GET /v1/discovery-chain/{service}`.

use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{assert_status, Harness};

#[tokio::test]
async fn l7_entries_compile_into_the_discovery_chain() {
    let h = Harness::new().await;
    // No entries: a tcp chain of one route to the service itself.
    let r = h.get("/v1/discovery-chain/api").await;
    assert_status(&r, StatusCode::OK);
    let c = &r.json()["Chain"];
    assert_eq!(c["ServiceName"], "api");
    assert_eq!(c["Protocol"], "tcp");
    assert_eq!(c["StartNode"], "resolver:api");
    assert_eq!(c["Targets"]["api"]["Service"], "api");

    for entry in [
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
        json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
               "ConnectTimeout": "3s",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == \"1\""},
                           "v2": {"Filter": "\"v2\" in Service.Tags", "OnlyPassing": true}},
               "Failover": {"v2": {"Service": "api-backup"}}}),
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 75.5, "ServiceSubset": "v1"}, {"Weight": 24.5, "ServiceSubset": "v2"}]}),
        // Snake-case keys, as Consul's config files spell them; header names are data.
        json!({"kind": "service-router", "name": "api", "routes": [
            {"match": {"http": {"path_prefix": "/admin",
                                "header": [{"name": "X-Role", "exact": "admin"}]}},
             "destination": {"service_subset": "v2", "prefix_rewrite": "/",
                             "request_headers": {"set": {"X-From-Router": "yes"}},
                             "num_retries": 2}}]}),
    ] {
        let r = h.put("/v1/config", entry.clone()).await;
        assert_status(&r, StatusCode::OK);
        assert_eq!(r.json(), json!(true), "{entry}");
    }
    let stored = h.get("/v1/config/service-router/api").await.json();
    assert_eq!(
        stored["Routes"][0]["Match"]["HTTP"]["Header"][0]["Name"],
        "X-Role"
    );
    assert_eq!(
        stored["Routes"][0]["Destination"]["RequestHeaders"]["Set"],
        json!({"X-From-Router": "yes"})
    );
    assert!(stored.get("Protocol").is_none(), "{stored}");

    let r = h.get("/v1/discovery-chain/api").await;
    assert_status(&r, StatusCode::OK);
    let c = &r.json()["Chain"];
    assert_eq!(c["Protocol"], "http");
    assert_eq!(c["StartNode"], "router:api");
    assert_eq!(c["Nodes"]["router:api"]["Type"], "router");
    assert_eq!(c["Nodes"]["splitter:api"]["Type"], "splitter");
    let routes = c["Routes"].as_array().expect("routes");
    assert_eq!(routes.len(), 2);
    assert_eq!(routes[0]["Splits"][0]["Target"], "v2.api");
    assert_eq!(routes[0]["PrefixRewrite"], "/");
    assert_eq!(routes[0]["NumRetries"], 2);
    assert_eq!(routes[1]["Splits"][0]["Weight"], 75.5);
    assert_eq!(routes[1]["Splits"][1]["Target"], "v2.api");
    let v2 = &c["Targets"]["v2.api"];
    assert_eq!(v2["ID"], "v2.api");
    assert_eq!(v2["ServiceSubset"], "v2");
    assert_eq!(v2["Subset"]["Filter"], "\"v2\" in Service.Tags");
    assert_eq!(v2["Subset"]["OnlyPassing"], true);
    assert_eq!(v2["Failover"], json!(["api-backup"]));
    assert_eq!(v2["ConnectTimeout"], "3s");

    // A delete changes the chain (and wakes a blocking query on it).
    let index = r.index();
    let r = h
        .call(
            Method::DELETE,
            "/v1/config/service-router/api",
            axum::body::Body::empty(),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let r = h
        .get(&format!("/v1/discovery-chain/api?index={index}&wait=5s"))
        .await;
    assert!(r.index() > index);
    assert!(r.json()["Chain"]["Nodes"].get("router:api").is_none());
}

#[tokio::test]
async fn bad_l7_entries_are_400s_naming_the_field() {
    let h = Harness::new().await;
    let r = h
        .put(
            "/v1/config",
            json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let route = |m: serde_json::Value| json!({"Kind": "service-router", "Name": "api", "Routes": [{}, {"Match": {"HTTP": m}}]});
    for (body, want) in [
        (
            json!({"Kind": "service-router", "Name": "api", "Foo": 1}),
            "unknown field `Foo`",
        ),
        (
            route(json!({"PathRegex": "(["})),
            "Routes[1].Match.HTTP.PathRegex: bad regex",
        ),
        (
            route(json!({"PathExact": "/a", "PathRegex": "/b"})),
            "Routes[1].Match.HTTP: at most one of PathExact, PathPrefix, PathRegex",
        ),
        (
            route(json!({"Header": [{"Name": "x", "Present": true, "Suffix": "b"}]})),
            "Routes[1].Match.HTTP.Header[0]: only one of",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "api", "Splits": [
                {"Weight": 60}, {"Weight": 30, "Service": "b"}]}),
            "Splits: weights sum to 90, not 100",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v2"}),
            "DefaultSubset: \"v2\" is not one of Subsets",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "api",
                   "Subsets": {"v2": {"Filter": "Service.Meta.version =="}}}),
            "Subsets.v2.Filter: at position",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "api", "Subsets": {}}),
            "Subsets: not a field of a service-splitter entry",
        ),
        // Checked against the state where the write is applied: db is tcp.
        (
            json!({"Kind": "service-router", "Name": "db", "Routes": [{}]}),
            "does not permit advanced routing or splitting behavior",
        ),
    ] {
        let r = h.put("/v1/config", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.text().contains(want), "{want}: {}", r.text());
    }
    for kind in ["service-router", "service-splitter", "service-resolver"] {
        assert_eq!(h.get(&format!("/v1/config/{kind}")).await.json(), json!([]));
    }

    // With a router, api cannot go back to tcp.
    let r = h
        .put(
            "/v1/config",
            json!({"Kind": "service-router", "Name": "api", "Routes": [{}]}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let r = h
        .put(
            "/v1/config",
            json!({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("Protocol"), "{}", r.text());
    let r = h
        .call(
            Method::DELETE,
            "/v1/config/service-defaults/api",
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let r = h.get("/v1/discovery-chain/bad%20name").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}
