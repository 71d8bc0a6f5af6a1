//! The connect API of a real `meshd agent --dev`, over HTTP and through meshctl: intentions
//! (create, list, exact, check, match, delete; precedence; duplicates and bad input refused with
//! nothing written; `meshctl intention` and its check exit codes), service-defaults config
//! entries (`PUT /v1/config`, read, list, delete; `meshctl config`), and the CA roots with a
//! rotation (`meshctl ca rotate`).

use std::time::Duration;

use serde_json::{json, Value};
use tests::meshctl::{meshctl, meshctl_with};
use tests::{wait_for, Api, Meshd};

/// Creates an intention over HTTP; returns its ID.
async fn create(api: &Api, src: &str, dst: &str, action: &str) -> String {
    let r = api
        .post_json(
            "/v1/connect/intentions",
            &json!({"SourceName": src, "DestinationName": dst, "Action": action,
                "Description": format!("{src} to {dst}")}),
        )
        .await;
    r.expect_status(200);
    r.json()["ID"]
        .as_str()
        .unwrap_or_else(|| panic!("no ID: {}", r.text()))
        .to_string()
}

/// `SourceName DestinationName Precedence` of each intention listed.
async fn listed(api: &Api) -> (Vec<String>, u64) {
    let r = api.get("/v1/connect/intentions").await;
    r.expect_status(200);
    let list: Vec<Value> = r.parse();
    let rows = list
        .iter()
        .map(|i| {
            format!(
                "{} {} {}",
                i["SourceName"].as_str().unwrap_or_default(),
                i["DestinationName"].as_str().unwrap_or_default(),
                i["Precedence"]
            )
        })
        .collect();
    (rows, r.must_index())
}

async fn allowed(api: &Api, src: &str, dst: &str) -> bool {
    let r = api
        .get(&format!(
            "/v1/connect/intentions/check?source={src}&destination={dst}"
        ))
        .await;
    r.expect_status(200);
    r.json()["Allowed"]
        .as_bool()
        .unwrap_or_else(|| panic!("no Allowed: {}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_over_http() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    let web_api = create(api, "web", "api", "allow").await;
    create(api, "*", "api", "deny").await;
    create(api, "web", "*", "deny").await;
    let (rows, index) = listed(api).await;
    assert_eq!(rows, vec!["web api 9", "* api 8", "web * 6"]);

    // Exact beats the wildcards, each wildcard decides for the others.
    assert!(allowed(api, "web", "api").await);
    assert!(!allowed(api, "batch", "api").await);
    assert!(!allowed(api, "web", "db").await);

    let r = api
        .get("/v1/connect/intentions/exact?source=web&destination=api")
        .await;
    r.expect_status(200);
    let i = r.json();
    assert_eq!(i["ID"], web_api.as_str());
    assert_eq!(i["Action"], "allow");
    assert_eq!(i["SourceType"], "consul");
    assert_eq!(i["Description"], "web to api");
    api.get("/v1/connect/intentions/exact?source=db&destination=api")
        .await
        .expect_status(404);
    let r = api.get(&format!("/v1/connect/intentions/{web_api}")).await;
    r.expect_status(200);
    assert_eq!(r.json()["SourceName"], "web");

    let r = api
        .get("/v1/connect/intentions/match?by=destination&name=api")
        .await;
    r.expect_status(200);
    // Those whose destination is api or any: exact, any source, any destination.
    let precedences: Vec<u64> = r.json()["api"]
        .as_array()
        .expect("a list for api")
        .iter()
        .filter_map(|i| i["Precedence"].as_u64())
        .collect();
    assert_eq!(precedences, vec![9, 8, 6]);

    // A duplicate pair and bad input: 400 naming the cause, nothing written.
    let dup = api
        .post_json(
            "/v1/connect/intentions",
            &json!({"SourceName": "web", "DestinationName": "api", "Action": "deny"}),
        )
        .await;
    dup.expect_status(400);
    assert!(
        dup.text().contains("duplicate intention found"),
        "{}",
        dup.text()
    );
    let bad = [
        json!({"SourceName": "db", "DestinationName": "api", "Action": "maybe"}),
        json!({"SourceName": "db", "DestinationName": "api"}),
        json!({"SourceName": "db", "Action": "allow"}),
        json!({"SourceName": "d b", "DestinationName": "api", "Action": "allow"}),
    ];
    for body in &bad {
        let r = api.post_json("/v1/connect/intentions", body).await;
        r.expect_status(400);
        assert!(!r.text().trim().is_empty() && !r.text().trim().contains('\n'));
    }
    let r = api.post_json("/v1/connect/intentions", &bad[0]).await;
    assert!(r.text().contains("Action"), "{}", r.text());
    let r = api
        .put_json(
            "/v1/connect/intentions/exact?source=db&destination=api",
            &json!({"Action": "permit"}),
        )
        .await;
    r.expect_status(400);
    assert!(r.text().contains("permit"), "{}", r.text());
    api.put_json(
        "/v1/connect/intentions/exact?source=db",
        &json!({"Action": "allow"}),
    )
    .await
    .expect_status(400);
    api.get("/v1/connect/intentions/check?source=db")
        .await
        .expect_status(400);
    assert_eq!(listed(api).await, (rows.clone(), index));

    // Upsert through exact, delete through exact and by ID.
    api.put_json(
        "/v1/connect/intentions/exact?source=web&destination=api",
        &json!({"Action": "deny"}),
    )
    .await
    .expect_true();
    assert!(!allowed(api, "web", "api").await);
    let r = api
        .get("/v1/connect/intentions/exact?source=web&destination=api")
        .await;
    assert_eq!(r.json()["ID"], web_api.as_str(), "an upsert keeps the ID");
    api.delete("/v1/connect/intentions/exact?source=web&destination=api")
        .await
        .expect_true();
    api.get(&format!("/v1/connect/intentions/{web_api}"))
        .await
        .expect_status(404);
    let any_api = api
        .get("/v1/connect/intentions/exact?source=*&destination=api")
        .await
        .json()["ID"]
        .as_str()
        .expect("ID")
        .to_string();
    api.delete(&format!("/v1/connect/intentions/{any_api}"))
        .await
        .expect_true();
    let (rows, after) = listed(api).await;
    assert_eq!(rows, vec!["web * 6"]);
    assert!(after > index);

    // A blocking list answers when an intention changes.
    let watcher = api.clone();
    let watch = tokio::spawn(async move {
        watcher
            .get_timeout(
                &format!("/v1/connect/intentions?index={after}&wait=30s"),
                Duration::from_secs(40),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    create(api, "batch", "db", "allow").await;
    let r = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch answers on a change")
        .expect("task");
    r.expect_status(200);
    assert!(r.must_index() > after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meshctl_intention_commands() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    let out = meshctl(api, &["intention", "create", "web", "api"]).await;
    assert!(out.expect(0).contains("web => api"), "{}", out.describe());
    let out = meshctl(api, &["intention", "check", "web", "api"]).await;
    assert_eq!(out.expect(0).trim(), "Allowed");

    // A second create of the pair fails naming the duplicate; --replace updates it.
    meshctl(api, &["intention", "create", "--deny", "web", "api"])
        .await
        .expect_error("duplicate intention found");
    meshctl(
        api,
        &[
            "intention",
            "create",
            "--deny",
            "--replace",
            "--description",
            "closed",
            "web",
            "api",
        ],
    )
    .await
    .expect(0);
    let out = meshctl(api, &["intention", "check", "web", "api"]).await;
    assert_eq!(out.expect(2).trim(), "Denied");
    let out = meshctl(api, &["-o", "json", "intention", "get", "web", "api"]).await;
    let i: Value = serde_json::from_str(out.expect(0)).expect("JSON");
    assert_eq!(
        (&i["Action"], &i["Description"]),
        (&json!("deny"), &json!("closed"))
    );

    // A node identity as the source, and a wildcard source for services.
    meshctl(
        api,
        &["intention", "create", "--deny", "node:host-1", "api"],
    )
    .await
    .expect(0);
    meshctl(api, &["intention", "create", "--allow", "*", "api"])
        .await
        .expect(0);
    meshctl(api, &["intention", "check", "node:host-1", "api"])
        .await
        .expect(2);
    meshctl(api, &["intention", "check", "host-1", "api"])
        .await
        .expect(0);
    let r = api
        .get("/v1/connect/intentions/exact?source=host-1&destination=api&source-type=node")
        .await;
    r.expect_status(200);
    assert_eq!(r.json()["SourceType"], "node");

    // The list: highest precedence first, node sources shown as node:NAME.
    let out = meshctl(api, &["intention", "list"]).await;
    let lines: Vec<Vec<&str>> = out
        .expect(0)
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        vec!["ID", "Source", "Action", "Destination", "Precedence"],
        "{}",
        out.describe()
    );
    let rows: Vec<Vec<&str>> = lines[1..].iter().map(|l| l[1..].to_vec()).collect();
    assert_eq!(
        rows,
        vec![
            vec!["node:host-1", "deny", "api", "9"],
            vec!["web", "deny", "api", "9"],
            vec!["*", "allow", "api", "8"],
        ],
        "{}",
        out.describe()
    );

    // Delete; a missing pair is an error for get, bad usage is clap's exit 2.
    let out = meshctl(api, &["intention", "delete", "web", "api"]).await;
    out.expect(0);
    meshctl(api, &["intention", "get", "web", "api"])
        .await
        .expect_error("no intention from web to api");
    meshctl(api, &["intention", "check", "web", "api"])
        .await
        .expect(0);
    meshctl(api, &["intention", "create", "--allow", "--deny", "a", "b"])
        .await
        .expect(2);
    meshctl(api, &["intention", "create", "bad name", "api"])
        .await
        .expect_error("SourceName");
    let r = api.get("/v1/connect/intentions").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(2), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_entries_over_http_and_meshctl() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    let r = api.get("/v1/config/service-defaults").await;
    r.expect_status(200);
    assert_eq!(r.json(), json!([]));

    api.put_json(
        "/v1/config",
        &json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http",
                "LoadBalancer": {"Policy": "least_request"},
                "Limits": {"MaxConnections": 100, "MaxPendingConnects": 10}}),
    )
    .await
    .expect_true();
    let r = api.get("/v1/config/service-defaults/api").await;
    r.expect_status(200);
    let e = r.json();
    assert_eq!(e["LoadBalancer"]["Policy"], "least_request");
    assert_eq!(e["Limits"]["MaxConnections"], 100);
    assert_eq!(r.must_index(), e["ModifyIndex"].as_u64().expect("index"));
    api.get("/v1/config/service-defaults/db")
        .await
        .expect_status(404);

    // A bad policy: 400 naming the field, nothing written (over HTTP and through meshctl).
    let before = api.get("/v1/config/service-defaults").await;
    let bad = json!({"Kind": "service-defaults", "Name": "api",
                     "LoadBalancer": {"Policy": "random"}});
    let r = api.put_json("/v1/config", &bad).await;
    r.expect_status(400);
    assert!(r.text().contains("LoadBalancer.Policy"), "{}", r.text());
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, bad.to_string()).expect("write");
    meshctl(api, &["config", "write", bad_file.to_str().expect("path")])
        .await
        .expect_error("LoadBalancer.Policy");
    let after = api.get("/v1/config/service-defaults").await;
    assert_eq!(
        (after.json(), after.must_index()),
        (before.json(), before.must_index())
    );

    // meshctl: write from a file and from stdin, read, list, delete.
    let file = dir.path().join("db.json");
    std::fs::write(
        &file,
        r#"{"Kind": "service-defaults", "Name": "db", "LoadBalancer": {"Policy": "ring_hash"}}"#,
    )
    .expect("write");
    meshctl(api, &["config", "write", file.to_str().expect("path")])
        .await
        .expect(0);
    meshctl_with(
        api,
        &["config", "write", "-"],
        Some(r#"{"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}"#),
    )
    .await
    .expect(0);
    let out = meshctl(
        api,
        &[
            "config",
            "read",
            "--kind",
            "service-defaults",
            "--name",
            "db",
        ],
    )
    .await;
    let e: Value = serde_json::from_str(out.expect(0)).expect("JSON");
    assert_eq!(e["LoadBalancer"]["Policy"], "ring_hash");
    let out = meshctl(api, &["config", "list", "--kind", "service-defaults"]).await;
    let names: Vec<&str> = out
        .expect(0)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(names, vec!["api", "db", "web"], "{}", out.describe());
    meshctl(
        api,
        &[
            "config",
            "delete",
            "--kind",
            "service-defaults",
            "--name",
            "db",
        ],
    )
    .await
    .expect(0);
    meshctl(
        api,
        &[
            "config",
            "read",
            "--kind",
            "service-defaults",
            "--name",
            "db",
        ],
    )
    .await
    .expect_error("no config entry service-defaults/db");
    api.delete("/v1/config/service-defaults/api")
        .await
        .expect_true();
    let r = api.get("/v1/config/service-defaults").await;
    let left: Vec<Value> = r.parse();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["Name"], "web");
    meshctl(api, &["config", "write", "/nonexistent/entry.json"])
        .await
        .expect_error("/nonexistent/entry.json");
}

/// The roots once the dev server has imported its CA.
async fn roots(api: &Api) -> tests::Resp {
    wait_for(
        Duration::from_secs(20),
        "the dev CA root is listed",
        || async {
            let r = api.get("/v1/agent/connect/ca/roots").await;
            let has =
                r.status == 200 && r.json()["Roots"].as_array().is_some_and(|a| !a.is_empty());
            has.then_some(r)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_roots_and_rotation() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    let r = roots(api).await;
    let v = r.json();
    assert!(!r.text().contains("PRIVATE KEY"), "a key: {}", r.text());
    let same = api.get("/v1/connect/ca/roots").await;
    assert_eq!(same.json(), v);
    let list = v["Roots"].as_array().expect("Roots");
    assert_eq!(list.len(), 1, "{v}");
    let old = &list[0];
    let fields: Vec<&str> = old
        .as_object()
        .expect("a root object")
        .keys()
        .map(String::as_str)
        .collect();
    for f in [
        "ID",
        "Name",
        "SerialNumber",
        "SigningKeyID",
        "NotBefore",
        "NotAfter",
        "RootCert",
        "IntermediateCerts",
        "Active",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(fields.contains(&f), "{f} missing from {old}");
    }
    assert_eq!(v["ActiveRootID"], old["ID"]);
    assert_eq!(old["Active"], true);
    assert!(
        v["TrustDomain"].as_str().is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert!(
        old["NotAfter"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{old}"
    );
    let index = r.must_index();
    assert_eq!(Some(index), old["ModifyIndex"].as_u64());
    let trust_domain = v["TrustDomain"].clone();

    // meshctl ca roots marks the active one.
    let out = meshctl(api, &["ca", "roots"]).await;
    let old_id = old["ID"].as_str().expect("ID").to_string();
    assert!(
        out.expect(0)
            .lines()
            .any(|l| l.contains(&old_id) && l.contains("active")),
        "{}",
        out.describe()
    );

    // A watch on the roots answers at the rotation.
    let watcher = api.clone();
    let watch = tokio::spawn(async move {
        watcher
            .get_timeout(
                &format!("/v1/agent/connect/ca/roots?index={index}&wait=30s"),
                Duration::from_secs(40),
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = meshctl(api, &["ca", "rotate"]).await;
    out.expect(0);
    let r = tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("the watch answers at the rotation")
        .expect("task");
    r.expect_status(200);
    assert!(r.must_index() > index);

    let v = api.get("/v1/connect/ca/roots").await.json();
    let new_id = v["ActiveRootID"]
        .as_str()
        .expect("ActiveRootID")
        .to_string();
    assert_ne!(new_id, old_id);
    assert!(out.stdout.contains(&new_id), "{}", out.describe());
    assert_eq!(
        v["TrustDomain"], trust_domain,
        "a rotation keeps the trust domain"
    );
    let list = v["Roots"].as_array().expect("Roots");
    assert_eq!(list.len(), 2, "{v}");
    for root in list {
        let id = root["ID"].as_str().unwrap_or_default();
        assert!(id == new_id || id == old_id, "{v}");
        assert_eq!(root["Active"] == true, id == new_id, "{v}");
    }
    let out = meshctl(api, &["ca", "roots"]).await;
    let active: Vec<&str> = out
        .expect(0)
        .lines()
        .filter(|l| l.contains("active"))
        .collect();
    assert_eq!(active.len(), 1, "{}", out.describe());
    assert!(active[0].contains(&new_id), "{}", out.describe());
}
