//! Intentions (`/v1/connect/intentions`), config entries (`/v1/config`), the CA roots and
//! `POST /v1/mesh/ca/rotate`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::{assert_status, Harness, Reply};

async fn post(h: &Harness, uri: &str, body: Value) -> Reply {
    h.call(Method::POST, uri, body.to_string()).await
}

async fn delete(h: &Harness, uri: &str) -> Reply {
    h.call(Method::DELETE, uri, Body::empty()).await
}

/// Creates an intention; returns its ID.
async fn create(h: &Harness, src: &str, dst: &str, action: &str) -> String {
    let r = post(
        h,
        "/v1/connect/intentions",
        json!({"SourceName": src, "DestinationName": dst, "Action": action}),
    )
    .await;
    assert_status(&r, StatusCode::OK);
    let id = r.json()["ID"].as_str().expect("an ID").to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "not a UUID: {id}");
    id
}

/// `(SourceName, DestinationName, Precedence)` of a list.
fn pairs(v: &Value) -> Vec<(String, String, u64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|i| {
            (
                i["SourceName"].as_str().unwrap_or_default().to_string(),
                i["DestinationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                i["Precedence"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn p(s: &str, d: &str, prec: u64) -> (String, String, u64) {
    (s.to_string(), d.to_string(), prec)
}

async fn allowed(h: &Harness, query: &str) -> bool {
    let r = h
        .get(&format!("/v1/connect/intentions/check?{query}"))
        .await;
    assert_status(&r, StatusCode::OK);
    r.json()["Allowed"]
        .as_bool()
        .unwrap_or_else(|| panic!("no Allowed: {}", r.text()))
}

#[tokio::test]
async fn intentions_create_list_exact_check_match_and_delete() {
    let h = Harness::new().await;
    let r = h.get("/v1/connect/intentions").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!([]));

    let web_api = create(&h, "web", "api", "allow").await;
    create(&h, "*", "api", "deny").await;
    create(&h, "web", "*", "deny").await;
    let r = h.get("/v1/connect/intentions").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        pairs(&r.json()),
        vec![p("web", "api", 9), p("*", "api", 8), p("web", "*", 6)]
    );
    let list_index = r.index();

    // The same pair again is refused, naming it; nothing changes.
    let r = post(
        &h,
        "/v1/connect/intentions",
        json!({"SourceName": "web", "DestinationName": "api", "Action": "deny"}),
    )
    .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("duplicate intention found") && r.text().contains("web => api"),
        "{}",
        r.text()
    );
    assert_eq!(h.get("/v1/connect/intentions").await.index(), list_index);

    // Exact, with Consul's fields.
    let r = h
        .get("/v1/connect/intentions/exact?source=web&destination=api")
        .await;
    assert_status(&r, StatusCode::OK);
    let i = r.json();
    assert_eq!(i["ID"], web_api.as_str());
    assert_eq!(i["SourceType"], "consul");
    assert_eq!(i["Action"], "allow");
    assert_eq!(i["Precedence"], 9);
    assert_eq!(i["Meta"], json!({}));
    assert!(i["CreateIndex"].as_u64() > Some(0));
    let r = h
        .get("/v1/connect/intentions/exact?source=db&destination=api")
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);

    // The exact pair beats the wildcards; the wildcard source decides for others.
    assert!(allowed(&h, "source=web&destination=api").await);
    assert!(!allowed(&h, "source=batch&destination=api").await);
    assert!(!allowed(&h, "source=web&destination=db").await);

    // Match: the intentions that apply to a name, highest precedence first.
    let r = h
        .get("/v1/connect/intentions/match?by=destination&name=api")
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        pairs(&r.json()["api"]),
        vec![p("web", "api", 9), p("*", "api", 8), p("web", "*", 6)]
    );
    let r = h
        .get("/v1/connect/intentions/match?by=destination&name=db")
        .await;
    assert_eq!(pairs(&r.json()["db"]), vec![p("web", "*", 6)]);
    let r = h
        .get("/v1/connect/intentions/match?by=source&name=web&name=db")
        .await;
    assert_eq!(
        pairs(&r.json()["web"]),
        vec![p("web", "api", 9), p("*", "api", 8), p("web", "*", 6)]
    );
    assert_eq!(pairs(&r.json()["db"]), vec![p("*", "api", 8)]);

    // PUT exact updates in place (same ID).
    let r = h
        .put(
            "/v1/connect/intentions/exact?source=web&destination=api",
            json!({"Action": "deny", "Description": "no", "Meta": {"Owner": "ops"}}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let i = h.get(&format!("/v1/connect/intentions/{web_api}")).await;
    assert_status(&i, StatusCode::OK);
    let i = i.json();
    assert_eq!(
        (&i["Action"], &i["Description"], &i["Meta"]),
        (&json!("deny"), &json!("no"), &json!({"Owner": "ops"}))
    );
    assert!(!allowed(&h, "source=web&destination=api").await);
    // ...and creates a pair that does not exist.
    let r = h
        .put(
            "/v1/connect/intentions/exact?source=db&destination=api",
            json!({"Action": "allow"}),
        )
        .await;
    assert_eq!(r.json(), json!(true));
    assert!(allowed(&h, "source=db&destination=api").await);

    // By ID: a body without the names keeps the pair; another pair is refused.
    let r = h
        .put(
            &format!("/v1/connect/intentions/{web_api}"),
            json!({"Action": "allow"}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    assert!(allowed(&h, "source=web&destination=api").await);
    let r = h
        .put(
            &format!("/v1/connect/intentions/{web_api}"),
            json!({"SourceName": "web", "DestinationName": "db", "Action": "allow"}),
        )
        .await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let r = h
        .put(
            "/v1/connect/intentions/00000000-0000-0000-0000-000000000000",
            json!({"Action": "allow"}),
        )
        .await;
    assert_status(&r, StatusCode::NOT_FOUND);

    let r = delete(&h, &format!("/v1/connect/intentions/{web_api}")).await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let r = h.get(&format!("/v1/connect/intentions/{web_api}")).await;
    assert_status(&r, StatusCode::NOT_FOUND);
    let r = delete(&h, "/v1/connect/intentions/exact?source=db&destination=api").await;
    assert_eq!(r.json(), json!(true));
    assert_eq!(
        pairs(&h.get("/v1/connect/intentions").await.json()),
        vec![p("*", "api", 8), p("web", "*", 6)]
    );
}

#[tokio::test]
async fn node_sources_are_their_own_kind() {
    let h = Harness::new().await;
    let r = post(
        &h,
        "/v1/connect/intentions",
        json!({"SourceName": "host-1", "SourceType": "node", "DestinationName": "api",
               "Action": "deny"}),
    )
    .await;
    assert_status(&r, StatusCode::OK);
    // A service of the same name is another pair.
    create(&h, "host-1", "api", "allow").await;
    assert!(!allowed(&h, "source=host-1&destination=api&source-type=node").await);
    assert!(allowed(&h, "source=host-1&destination=api").await);
    let r = h
        .get("/v1/connect/intentions/exact?source=host-1&destination=api&source-type=node")
        .await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(
        (&r.json()["SourceType"], &r.json()["Action"]),
        (&json!("node"), &json!("deny"))
    );
    let r = delete(
        &h,
        "/v1/connect/intentions/exact?source=host-1&destination=api&source-type=node",
    )
    .await;
    assert_status(&r, StatusCode::OK);
    let list = h.get("/v1/connect/intentions").await.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["SourceType"], "consul");
}

#[tokio::test]
async fn bad_intentions_are_400_and_change_nothing() {
    let h = Harness::new().await;
    create(&h, "web", "api", "allow").await;
    let before = h.get("/v1/connect/intentions").await;
    let cases: Vec<(Method, &str, &str, &str)> = vec![
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a","DestinationName":"b","Action":"maybe"}"#,
            "Action",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a","DestinationName":"b"}"#,
            "Action",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"DestinationName":"b","Action":"allow"}"#,
            "SourceName",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a b","DestinationName":"b","Action":"allow"}"#,
            "SourceName",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a","DestinationName":"","Action":"allow"}"#,
            "DestinationName",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a","DestinationName":"b","Action":"allow","SourceType":"pod"}"#,
            "SourceType",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            r#"{"SourceName":"a","DestinationName":"b","Action":1}"#,
            "Action",
        ),
        (
            Method::POST,
            "/v1/connect/intentions",
            "{nope",
            "invalid JSON",
        ),
        (
            Method::PUT,
            "/v1/connect/intentions/exact?source=a",
            r#"{"Action":"allow"}"#,
            "destination",
        ),
        (
            Method::PUT,
            "/v1/connect/intentions/exact?source=a&destination=b",
            r#"{"Action":"permit"}"#,
            "Action",
        ),
        (
            Method::PUT,
            "/v1/connect/intentions/exact?source=a&destination=b&source-type=x",
            r#"{"Action":"allow"}"#,
            "source-type",
        ),
        (
            Method::DELETE,
            "/v1/connect/intentions/exact?destination=b",
            "",
            "source",
        ),
        (
            Method::GET,
            "/v1/connect/intentions/exact?source=a",
            "",
            "destination",
        ),
        (
            Method::GET,
            "/v1/connect/intentions/check?destination=b",
            "",
            "source",
        ),
        (Method::GET, "/v1/connect/intentions/match?name=b", "", "by"),
        (
            Method::GET,
            "/v1/connect/intentions/match?by=source",
            "",
            "name",
        ),
    ];
    for (method, uri, body, want) in cases {
        let r = h.call(method.clone(), uri, body.to_string()).await;
        assert_status(&r, StatusCode::BAD_REQUEST);
        assert!(
            r.text().contains(want),
            "{method} {uri} {body}: {} (wanted {want:?})",
            r.text()
        );
        assert!(!r.text().contains('\n'), "multi-line error: {}", r.text());
    }
    let after = h.get("/v1/connect/intentions").await;
    assert_eq!(after.json(), before.json());
    assert_eq!(after.index(), before.index());

    // Consul matches keys case-insensitively and ignores unknown ones.
    let r = post(
        &h,
        "/v1/connect/intentions",
        json!({"sourcename": "db", "destination_name": "api", "action": "deny",
               "Meta": {"keep_Case": "x"}, "Namespace": "default", "Unknown": 1}),
    )
    .await;
    assert_status(&r, StatusCode::OK);
    let r = h
        .get("/v1/connect/intentions/exact?source=db&destination=api")
        .await;
    assert_eq!(r.json()["Action"], "deny");
    assert_eq!(r.json()["Meta"], json!({"keep_Case": "x"}));
}

#[tokio::test]
async fn an_intentions_watch_wakes_on_a_change() {
    let h = Harness::new().await;
    let index = h.get("/v1/connect/intentions").await.index();
    let app = h.app.clone();
    let watch = tokio::spawn(async move {
        let req = Request::builder()
            .uri(format!("/v1/connect/intentions?index={index}&wait=20s"))
            .body(Body::empty())
            .expect("request");
        app.oneshot(req).await.expect("infallible")
    });
    let gauge = h.ctx.metrics.blocking_queries.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while gauge.get() != 1 {
        assert!(tokio::time::Instant::now() < deadline, "never waited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A KV write does not answer it; an intention does.
    assert_status(&h.call(Method::PUT, "/v1/kv/k", "v").await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!watch.is_finished(), "a KV write woke the intentions watch");
    create(&h, "web", "api", "allow").await;
    let resp = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(resp.status(), StatusCode::OK);
    let new_index: u64 = resp
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("index");
    assert!(new_index > index);
}

#[tokio::test]
async fn config_entries_put_read_list_cas_and_delete() {
    let h = Harness::new().await;
    let r = h.get("/v1/config/service-defaults").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!([]));

    let entry = json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http",
        "LoadBalancer": {"Policy": "least_request"},
        "Limits": {"MaxConnections": 10, "MaxPendingConnects": 2}, "Meta": {"a": "b"}});
    let r = h.put("/v1/config", entry).await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let r = h.get("/v1/config/service-defaults/api").await;
    assert_status(&r, StatusCode::OK);
    let e = r.json();
    assert_eq!(e["LoadBalancer"]["Policy"], "least_request");
    assert_eq!(e["Limits"]["MaxConnections"], 10);
    assert_eq!(e["Meta"], json!({"a": "b"}));
    let modify = e["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert_eq!(r.index(), modify);

    // Snake-case keys, as Consul's config files spell them.
    let r = h
        .put(
            "/v1/config",
            json!({"kind": "service-defaults", "name": "db",
                   "load_balancer": {"policy": "ring_hash"}}),
        )
        .await;
    assert_status(&r, StatusCode::OK);
    let list = h.get("/v1/config/service-defaults").await.json();
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|e| e["Name"].as_str())
        .collect();
    assert_eq!(names, vec!["api", "db"]);
    assert_eq!(list[1]["LoadBalancer"]["Policy"], "ring_hash");

    // CAS: the current ModifyIndex only.
    let r = h
        .put(
            "/v1/config?cas=1",
            json!({"Kind": "service-defaults", "Name": "api"}),
        )
        .await;
    assert_eq!(r.json(), json!(false));
    let r = h
        .put(
            &format!("/v1/config?cas={modify}"),
            json!({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"}),
        )
        .await;
    assert_eq!(r.json(), json!(true));

    // Bad entries: 400 naming the field; nothing written.
    let before = h.get("/v1/config/service-defaults").await;
    for (body, want) in [
        (
            r#"{"Kind":"service-defaults","Name":"api","LoadBalancer":{"Policy":"random"}}"#,
            "LoadBalancer.Policy",
        ),
        (r#"{"Kind":"mesh","Name":"api"}"#, "Kind"),
        (r#"{"Kind":"service-defaults","Name":"a b"}"#, "Name"),
        (
            r#"{"Kind":"service-defaults","Name":"api","Protocol":"udp"}"#,
            "Protocol",
        ),
        (
            r#"{"Kind":"service-defaults","Name":"api","Limits":{"MaxConnections":-1}}"#,
            "MaxConnections",
        ),
        (
            r#"{"Kind":"service-defaults","Name":"api","Expose":{}}"#,
            "Expose",
        ),
        ("[]", "config entry"),
        ("", "empty body"),
    ] {
        let r = h.call(Method::PUT, "/v1/config", body.to_string()).await;
        assert_status(&r, StatusCode::BAD_REQUEST);
        assert!(r.text().contains(want), "{body}: {}", r.text());
    }
    let r = h.call(Method::PUT, "/v1/config?cas=x", "{}").await;
    assert_status(&r, StatusCode::BAD_REQUEST);
    let after = h.get("/v1/config/service-defaults").await;
    assert_eq!(
        (after.json(), after.index()),
        (before.json(), before.index())
    );

    let r = delete(&h, "/v1/config/service-defaults/api").await;
    assert_status(&r, StatusCode::OK);
    assert_eq!(r.json(), json!(true));
    let r = h.get("/v1/config/service-defaults/api").await;
    assert_status(&r, StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/v1/config/service-defaults")
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

/// The roots, once the dev server has imported its CA.
async fn roots(h: &Harness) -> Reply {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = h.get("/v1/agent/connect/ca/roots").await;
        assert_status(&r, StatusCode::OK);
        if r.json()["Roots"].as_array().is_some_and(|a| !a.is_empty()) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no CA root: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ca_roots_show_the_active_root_and_a_rotation_adds_one() {
    let h = Harness::new().await;
    let r = roots(&h).await;
    let v = r.json();
    assert_eq!(h.get("/v1/connect/ca/roots").await.json(), v);
    assert!(!r.text().contains("PRIVATE KEY"), "a key in {}", r.text());
    let root = &v["Roots"][0];
    assert_eq!(v["ActiveRootID"], root["ID"]);
    assert_eq!(v["TrustDomain"], registry::ca::DEFAULT_TRUST_DOMAIN);
    assert_eq!(root["Active"], true);
    assert_eq!(root["IntermediateCerts"], json!([]));
    assert!(root["RootCert"]
        .as_str()
        .is_some_and(|c| c.starts_with("-----BEGIN CERTIFICATE-----")));
    for field in ["SerialNumber", "SigningKeyID"] {
        let s = root[field].as_str().unwrap_or_default();
        assert!(s.contains(':'), "{field}: {root}");
    }
    for field in ["NotBefore", "NotAfter"] {
        let s = root[field].as_str().unwrap_or_default();
        assert!(s.ends_with('Z') && s.contains('T'), "{field}: {root}");
    }
    let index = r.index();
    assert_eq!(root["ModifyIndex"].as_u64(), Some(index));

    let r = h
        .call(Method::POST, "/v1/mesh/ca/rotate", Body::empty())
        .await;
    assert_status(&r, StatusCode::OK);
    let new_id = r.json()["ActiveRootID"]
        .as_str()
        .expect("ActiveRootID")
        .to_string();
    assert_ne!(new_id, root["ID"].as_str().unwrap_or_default());
    let r = h.get("/v1/agent/connect/ca/roots").await;
    assert!(r.index() > index);
    let v = r.json();
    assert_eq!(v["ActiveRootID"], new_id.as_str());
    assert_eq!(v["TrustDomain"], registry::ca::DEFAULT_TRUST_DOMAIN);
    let all = v["Roots"].as_array().expect("roots");
    assert_eq!(all.len(), 2, "{v}");
    for r in all {
        assert_eq!(r["Active"] == true, r["ID"] == new_id.as_str(), "{v}");
        let pem = r["RootCert"].as_str().unwrap_or_default();
        let want = format!("{:016x}", registry::archive::fnv1a(pem.as_bytes()));
        assert_eq!(r["ID"], want.as_str());
    }
}
