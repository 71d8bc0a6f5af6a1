//! KV and catalog/health routes.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

use super::{assert_status, Harness};

#[tokio::test]
async fn kv_get_put_delete() {
    let h = Harness::new().await;
    // Listing keys where there are none is `[]`, at the root and under a prefix.
    for uri in ["/v1/kv/?keys", "/v1/kv/app/?keys"] {
        let r = h.get(uri).await;
        assert_status(&r, StatusCode::OK);
        assert_eq!(r.json(), json!([]));
    }

    let r = h
        .call(Method::PUT, "/v1/kv/app/config?flags=42", "hello")
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let put_index = r.index();

    let r = h.get("/v1/kv/app/config").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.index(), put_index);
    let e = &r.json()[0];
    assert_eq!(e["Key"], "app/config");
    assert_eq!(e["Value"], "aGVsbG8=");
    assert_eq!(e["Flags"], 42);
    assert_eq!(e["ModifyIndex"], put_index);
    let raw = h.get("/v1/kv/app/config?raw").await;
    assert_eq!(raw.text(), "hello");
    assert_eq!(
        raw.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain")
    );

    let missing = h.get("/v1/kv/app/missing").await;
    assert_status(&missing, StatusCode::NOT_FOUND);

    // CAS: 0 creates only; the current ModifyIndex updates; anything else fails.
    let r = h.call(Method::PUT, "/v1/kv/app/config?cas=0", "x").await;
    assert_eq!(r.json(), json!(false));
    let r = h.call(Method::PUT, "/v1/kv/app/new?cas=0", "x").await;
    assert_eq!(r.json(), json!(true));
    let r = h.call(Method::PUT, "/v1/kv/app/config?cas=1", "x").await;
    assert_eq!(r.json(), json!(false));
    let r = h
        .call(
            Method::PUT,
            &format!("/v1/kv/app/config?cas={put_index}"),
            "bye",
        )
        .await;
    assert_eq!(r.json(), json!(true));
    assert_eq!(h.get("/v1/kv/app/config?raw").await.text(), "bye");

    h.call(Method::PUT, "/v1/kv/app/sub/a", "1").await;
    h.call(Method::PUT, "/v1/kv/app/sub/b", "").await;
    let keys = h.get("/v1/kv/app/?keys&separator=/").await.json();
    assert_eq!(keys, json!(["app/config", "app/new", "app/sub/"]));
    let all = h.get("/v1/kv/app/?recurse").await.json();
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    assert_eq!(all[3]["Value"], json!(null));

    // Bad input changes nothing.
    let before = h.get("/v1/kv/app/?recurse").await.index();
    let big = vec![b'x'; 512 * 1024 + 1];
    assert_status(
        &h.call(Method::PUT, "/v1/kv/app/config", big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    );
    for (m, uri) in [
        (Method::PUT, "/v1/kv//abs"),
        (Method::PUT, "/v1/kv/"),
        (Method::PUT, "/v1/kv/app/x?flags=abc"),
        (Method::PUT, "/v1/kv/app/x?cas=-1"),
        (Method::PUT, "/v1/kv/app/x?acquire=abc"),
        (Method::DELETE, "/v1/kv/app/?recurse&cas=3"),
        (Method::DELETE, "/v1/kv/"),
        (Method::GET, "/v1/kv/"),
        (Method::GET, "/v1/kv/app/x%01y"),
    ] {
        let r = h.call(m.clone(), uri, "v").await;
        assert_status(&r, StatusCode::BAD_REQUEST);
    }
    assert_eq!(h.get("/v1/kv/app/?recurse").await.index(), before);
    assert_eq!(h.get("/v1/kv/app/config?raw").await.text(), "bye");

    // Deletes.
    let r = h
        .call(Method::DELETE, "/v1/kv/app/new?cas=1", Body::empty())
        .await;
    assert_eq!(r.json(), json!(false));
    let idx = h.get("/v1/kv/app/new").await.json()[0]["ModifyIndex"].clone();
    let r = h
        .call(
            Method::DELETE,
            &format!("/v1/kv/app/new?cas={idx}"),
            Body::empty(),
        )
        .await;
    assert_eq!(r.json(), json!(true));
    assert_status(&h.get("/v1/kv/app/new").await, StatusCode::NOT_FOUND);
    let r = h
        .call(Method::DELETE, "/v1/kv/app/sub/?recurse", Body::empty())
        .await;
    assert_eq!(r.json(), json!(true));
    assert_eq!(
        h.get("/v1/kv/app/?keys").await.json(),
        json!(["app/config"])
    );
    let r = h
        .call(Method::DELETE, "/v1/kv/?recurse", Body::empty())
        .await;
    assert_eq!(r.json(), json!(true));
    assert_status(&h.get("/v1/kv/?recurse").await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn catalog_register_query_deregister() {
    let h = Harness::new().await;
    let reg = json!({
        "node": "ext1", "address": "192.0.2.10", "node_meta": {"env": "prod"},
        "tagged_addresses": {"wan": "198.51.100.1"},
        "service": {"service": "redis", "id": "redis1", "port": 6379, "tags": ["Primary"]},
        "check": {"check_id": "redis-alive", "name": "Redis alive", "status": "passing",
                  "service_id": "redis1", "output": "PONG"}
    });
    let r = h.put("/v1/catalog/register", reg).await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let other = json!({"Node": "ext2", "Address": "192.0.2.11",
                       "Service": {"Service": "redis", "ID": "redis2", "Tags": ["replica"]}});
    assert_status(&h.put("/v1/catalog/register", other).await, StatusCode::OK);

    let services = h.get("/v1/catalog/services").await.json();
    assert_eq!(services["redis"], json!(["Primary", "replica"]));
    let r = h
        .put(
            "/v1/agent/service/register",
            json!({"Name": "web", "Tags": ["v1", "primary", "v1"]}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let services = h.get("/v1/catalog/services").await.json();
    assert_eq!(
        services["web"],
        json!(["v1", "primary"]),
        "registration order, deduplicated"
    );
    let filtered = h
        .get("/v1/catalog/services?node-meta=env:prod")
        .await
        .json();
    assert_eq!(filtered["redis"], json!(["Primary"]));

    let r = h.get("/v1/catalog/service/redis?tag=primary").await;
    assert_status(&r, StatusCode::OK);
    let list = r.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let cs = &list[0];
    assert_eq!(cs["Node"], "ext1");
    assert_eq!(cs["Address"], "192.0.2.10");
    assert_eq!(cs["Datacenter"], "dc1");
    assert_eq!(cs["ServiceID"], "redis1");
    assert_eq!(cs["ServiceName"], "redis");
    assert_eq!(cs["ServicePort"], 6379);
    assert_eq!(cs["ServiceAddress"], "");
    assert_eq!(cs["NodeMeta"], json!({"env": "prod"}));
    assert_eq!(cs["TaggedAddresses"], json!({"wan": "198.51.100.1"}));
    assert_eq!(cs["ServiceWeights"], json!({"Passing": 1, "Warning": 1}));
    for k in [
        "ID",
        "ServiceKind",
        "ServiceTags",
        "ServiceMeta",
        "ServiceTaggedAddresses",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(cs.get(k).is_some(), "CatalogService lacks {k}");
    }
    assert_eq!(
        h.get("/v1/catalog/service/redis?node-meta=env:dev")
            .await
            .json(),
        json!([])
    );
    assert_eq!(h.get("/v1/catalog/service/nothing").await.json(), json!([]));

    let nodes = h.get("/v1/catalog/nodes?node-meta=env:prod").await.json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    let node = h.get("/v1/catalog/node/ext1").await.json();
    assert_eq!(node["Node"]["Node"], "ext1");
    assert_eq!(node["Services"]["redis1"]["Service"], "redis");
    assert_status(
        &h.get("/v1/catalog/node/ghost").await,
        StatusCode::NOT_FOUND,
    );

    let health = h.get("/v1/health/service/redis?passing").await.json();
    assert_eq!(health.as_array().map(Vec::len), Some(2), "{health}");
    let checks = h.get("/v1/health/checks/redis").await.json();
    assert_eq!(checks[0]["CheckID"], "redis-alive");
    assert_eq!(checks[0]["Output"], "PONG");
    assert_eq!(checks[0]["ServiceName"], "redis");
    assert_eq!(
        h.get("/v1/health/node/ext1")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(h.get("/v1/health/node/ghost").await.json(), json!([]));
    assert_eq!(h.get("/v1/health/state/critical").await.json(), json!([]));

    // Bad registrations.
    for body in [
        json!({"Address": "192.0.2.1"}),
        json!({"Node": "n"}),
        json!({"Node": "n", "Address": "192.0.2.1", "ID": "not-a-uuid"}),
        json!({"Node": "n", "Address": "192.0.2.1", "Service": {"Port": 1}}),
        json!({"Node": "n", "Address": "192.0.2.1", "Check": {"Name": "c", "Status": "meh"}}),
        json!({"Node": "n", "Address": "192.0.2.1", "Check": {"CheckID": "c", "ServiceID": "ghost"}}),
    ] {
        let r = h.put("/v1/catalog/register", body.clone()).await;
        assert_status(&r, StatusCode::BAD_REQUEST);
    }
    let r = h
        .put(
            "/v1/catalog/register",
            json!({"Node": "n", "Address": "a", "Datacenter": "dc9"}),
        )
        .await;
    assert_status(&r, StatusCode::INTERNAL_SERVER_ERROR);
    assert_status(&h.get("/v1/catalog/node/n").await, StatusCode::NOT_FOUND);

    // Deregistration: a service, then the node.
    let r = h
        .put(
            "/v1/catalog/deregister",
            json!({"Node": "ext1", "ServiceID": "redis1"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        h.get("/v1/catalog/service/redis")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(h.get("/v1/health/node/ext1").await.json(), json!([]));
    assert_status(
        &h.put("/v1/catalog/deregister", json!({"Node": "ext2"}))
            .await,
        StatusCode::OK,
    );
    assert_status(&h.get("/v1/catalog/node/ext2").await, StatusCode::NOT_FOUND);
    assert_status(
        &h.put("/v1/catalog/deregister", json!({})).await,
        StatusCode::BAD_REQUEST,
    );
}
