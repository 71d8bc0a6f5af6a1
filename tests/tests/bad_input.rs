//! Bad input: malformed and invalid requests each get a 400 with a one-line message, and a full
//! dump of the registry (catalog, health, nodes, KV, agent services and checks) is identical
//! before and after them.

use reqwest::Method;
use serde_json::json;
use tests::dump::full_dump;
use tests::Meshd;

/// (what, method, path, body)
fn bad_requests() -> Vec<(&'static str, Method, String, Option<Vec<u8>>)> {
    let put = Method::PUT;
    let get = Method::GET;
    let b = |s: &str| Some(s.as_bytes().to_vec());
    vec![
        (
            "malformed JSON",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-web-1", "Name": "bi-web", "Port": "#),
        ),
        (
            "not JSON at all",
            put.clone(),
            "/v1/agent/service/register".into(),
            b("hello"),
        ),
        (
            "Port is a string",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-web-1", "Name": "bi-web", "Port": "abc"}"#),
        ),
        (
            "Port out of range",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-web-1", "Name": "bi-web", "Port": 70000}"#),
        ),
        (
            "Tags is not a list",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-web-1", "Name": "bi-web", "Tags": "primary"}"#),
        ),
        (
            "Weights of the wrong type",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-web-1", "Name": "bi-web", "Weights": {"Passing": "heavy"}}"#),
        ),
        (
            "a check of no known type",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"Name": "bi-new", "Check": {"CheckID": "bi-c", "Interval": "10s"}}"#),
        ),
        (
            "a check interval that is not a duration",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(
                r#"{"Name": "bi-new", "Check": {"HTTP": "http://127.0.0.1:9/", "Interval": "often"}}"#,
            ),
        ),
        (
            "missing Name",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"ID": "bi-nameless", "Port": 8080}"#),
        ),
        (
            "invalid service name",
            put.clone(),
            "/v1/agent/service/register".into(),
            b(r#"{"Name": "bad name/with slash"}"#),
        ),
        (
            "check update with an unknown status",
            put.clone(),
            "/v1/agent/check/update/bi-ttl".into(),
            b(r#"{"Status": "fine-ish", "Output": "?"}"#),
        ),
        (
            "bad ?index",
            get.clone(),
            "/v1/health/service/bi-web?index=abc".into(),
            None,
        ),
        (
            "bad ?wait",
            get.clone(),
            "/v1/health/service/bi-web?index=1&wait=forever".into(),
            None,
        ),
        (
            "?stale with ?consistent",
            get.clone(),
            "/v1/catalog/services?stale&consistent".into(),
            None,
        ),
        (
            "unknown health state",
            get.clone(),
            "/v1/health/state/sleepy".into(),
            None,
        ),
        (
            "catalog register without Node",
            put.clone(),
            "/v1/catalog/register".into(),
            b(r#"{"Address": "127.0.0.3", "Service": {"Service": "bi-orphan", "Port": 1}}"#),
        ),
        (
            "catalog register with malformed JSON",
            put.clone(),
            "/v1/catalog/register".into(),
            b(r#"{"Node": "bi-ext", "Address": "#),
        ),
        (
            "catalog deregister without Node",
            put.clone(),
            "/v1/catalog/deregister".into(),
            b(r#"{"ServiceID": "bi-db-1"}"#),
        ),
        (
            "KV flags not a number",
            put.clone(),
            "/v1/kv/bi/key?flags=abc".into(),
            b("changed"),
        ),
        (
            "KV cas not a number",
            put.clone(),
            "/v1/kv/bi/key?cas=latest".into(),
            b("changed"),
        ),
        (
            "KV key too large",
            put.clone(),
            format!("/v1/kv/{}", "k".repeat(10_000)),
            b("v"),
        ),
        ("KV key missing", put.clone(), "/v1/kv/".into(), b("v")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_400_and_changes_nothing() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    // Some state to protect.
    api.put_json(
        "/v1/agent/service/register",
        &json!({"ID": "bi-web-1", "Name": "bi-web", "Port": 8080, "Tags": ["a"],
                "Meta": {"k": "v"},
                "Check": {"CheckID": "bi-ttl", "Name": "ttl", "TTL": "1h"}}),
    )
    .await
    .expect_status(200);
    api.put_json(
        "/v1/catalog/register",
        &json!({"Node": "bi-ext", "Address": "127.0.0.7",
                "Service": {"ID": "bi-db-1", "Service": "bi-db", "Port": 5432}}),
    )
    .await
    .expect_true();
    api.put("/v1/kv/bi/key", "original").await.expect_true();
    api.put("/v1/kv/bi/other?flags=3", "x").await.expect_true();

    let before = full_dump(api).await;

    let cases = bad_requests();
    assert!(cases.len() >= 10);
    let mut failures = Vec::new();
    for (what, method, path, body) in cases {
        let r = api.request(method.clone(), &path, body).await;
        let msg = r.text();
        let shown_path: String = path.chars().take(80).collect();
        if r.status != 400 {
            failures.push(format!(
                "{what}: {method} {shown_path} -> {} (want 400): {msg:?}",
                r.status
            ));
        } else if msg.trim().is_empty() {
            failures.push(format!(
                "{what}: {method} {shown_path} -> 400 with an empty message"
            ));
        } else if msg.trim().contains('\n') {
            failures.push(format!(
                "{what}: {method} {shown_path} -> 400 with a multi-line message: {msg:?}"
            ));
        }
    }

    let after = full_dump(api).await;
    assert!(
        failures.is_empty(),
        "{} bad requests were not answered 400 with a one-line message:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        before.json_equal(&after),
        "the registry changed after rejected requests.\n--- before ---\n{}\n--- after ---\n{}",
        before.to_text(),
        after.to_text()
    );
    assert!(
        before == after,
        "same registry, but the dump is not byte-identical (unstable field order?).\n\
         --- before ---\n{}\n--- after ---\n{}",
        before.to_text(),
        after.to_text()
    );
}
