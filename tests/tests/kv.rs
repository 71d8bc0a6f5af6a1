//! The KV store: put/get, recurse, keys with a separator, raw, flags, check-and-set (create-only
//! with `cas=0`, update only at the right ModifyIndex), delete with `cas` and `recurse`, and the
//! 512 KiB value limit (413).

use base64::Engine as _;
use serde_json::Value;
use tests::{Api, Meshd};

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The single entry at `key`; panics unless it exists.
async fn entry(api: &Api, key: &str) -> Value {
    let r = api.get(&format!("/v1/kv/{key}")).await;
    r.expect_status(200);
    let mut v: Vec<Value> = r.parse();
    assert_eq!(v.len(), 1, "GET /v1/kv/{key}: {}", r.text());
    v.remove(0)
}

fn idx(e: &Value, field: &str) -> u64 {
    e[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is a number in {e}"))
}

async fn keys(api: &Api, path: &str) -> Vec<String> {
    let r = api.get(path).await;
    r.expect_status(200);
    r.parse()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_recurse_keys_raw_flags() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    api.put("/v1/kv/app/config/a", "alpha").await.expect_true();
    api.put("/v1/kv/app/config/b?flags=42", "beta")
        .await
        .expect_true();
    api.put("/v1/kv/app/config/sub/c", "gamma")
        .await
        .expect_true();
    api.put("/v1/kv/app/other", "delta").await.expect_true();
    api.put("/v1/kv/apple", "not under app/")
        .await
        .expect_true();
    api.put("/v1/kv/app/empty", "").await.expect_true();

    let a = entry(api, "app/config/a").await;
    assert_eq!(a["Key"], "app/config/a");
    assert_eq!(a["Value"], b64(b"alpha"));
    assert_eq!(a["Flags"], 0);
    assert_eq!(a["LockIndex"], 0);
    let (ci, mi) = (idx(&a, "CreateIndex"), idx(&a, "ModifyIndex"));
    assert!(ci >= 1 && mi == ci, "a fresh key: {a}");

    let b = entry(api, "app/config/b").await;
    assert_eq!(b["Flags"], 42, "{b}");
    assert_eq!(b["Value"], b64(b"beta"));
    assert!(
        idx(&b, "ModifyIndex") > mi,
        "later writes have higher indexes"
    );

    // An empty value is null, as in Consul.
    let e = entry(api, "app/empty").await;
    assert!(e["Value"].is_null(), "empty value is null: {e}");

    // raw: the bytes, as text/plain.
    let r = api.get("/v1/kv/app/config/a?raw").await;
    r.expect_status(200);
    assert_eq!(r.body, b"alpha");
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "raw content-type: {ct:?}");

    // recurse: every key under the prefix, sorted.
    let r = api.get("/v1/kv/app/config/?recurse").await;
    r.expect_status(200);
    let all: Vec<Value> = r.parse();
    let got: Vec<&str> = all.iter().filter_map(|e| e["Key"].as_str()).collect();
    assert_eq!(got, ["app/config/a", "app/config/b", "app/config/sub/c"]);
    assert_eq!(all[2]["Value"], b64(b"gamma"));
    let r = api.get("/v1/kv/app?recurse").await;
    let n = r.parse::<Vec<Value>>().len();
    assert_eq!(n, 6, "prefix `app` matches app/... and apple: {}", r.text());

    // keys, with and without a separator.
    assert_eq!(
        keys(api, "/v1/kv/app/?keys").await,
        [
            "app/config/a",
            "app/config/b",
            "app/config/sub/c",
            "app/empty",
            "app/other"
        ]
    );
    assert_eq!(
        keys(api, "/v1/kv/app/?keys&separator=/").await,
        ["app/config/", "app/empty", "app/other"]
    );
    assert_eq!(
        keys(api, "/v1/kv/app/config/?keys&separator=/").await,
        ["app/config/a", "app/config/b", "app/config/sub/"]
    );
    assert!(
        keys(api, "/v1/kv/nothing/here/?keys").await.is_empty(),
        "?keys on an empty prefix is []"
    );

    // Overwrite keeps CreateIndex, moves ModifyIndex.
    api.put("/v1/kv/app/config/a?flags=7", "alpha2")
        .await
        .expect_true();
    let a2 = entry(api, "app/config/a").await;
    assert_eq!(idx(&a2, "CreateIndex"), ci);
    assert!(idx(&a2, "ModifyIndex") > mi);
    assert_eq!(a2["Flags"], 7);
    assert_eq!(a2["Value"], b64(b"alpha2"));

    // Missing key: 404 with an index.
    let r = api.get("/v1/kv/app/missing").await;
    r.expect_status(404);
    assert!(r.must_index() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_set() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    // cas=0 creates only once.
    api.put("/v1/kv/lock/x?cas=0", "one").await.expect_true();
    let r = api.put("/v1/kv/lock/x?cas=0", "two").await;
    r.expect_status(200);
    assert_eq!(r.text().trim(), "false", "cas=0 on an existing key fails");
    let e = entry(api, "lock/x").await;
    assert_eq!(e["Value"], b64(b"one"), "the failed cas=0 changed nothing");
    let m = idx(&e, "ModifyIndex");

    // The right ModifyIndex succeeds.
    api.put(&format!("/v1/kv/lock/x?cas={m}"), "three")
        .await
        .expect_true();
    let e2 = entry(api, "lock/x").await;
    assert_eq!(e2["Value"], b64(b"three"));
    let m2 = idx(&e2, "ModifyIndex");
    assert!(m2 > m);

    // A stale (and a made-up) ModifyIndex fails and changes nothing.
    for wrong in [m, m2 + 1000, 1] {
        let r = api.put(&format!("/v1/kv/lock/x?cas={wrong}"), "four").await;
        r.expect_status(200);
        assert_eq!(
            r.text().trim(),
            "false",
            "cas={wrong} with ModifyIndex {m2}"
        );
    }
    let e3 = entry(api, "lock/x").await;
    assert_eq!(e3, e2, "failed cas writes changed nothing");

    // cas on a key that does not exist, non-zero: fails.
    let r = api.put(&format!("/v1/kv/lock/absent?cas={m2}"), "v").await;
    assert_eq!(r.text().trim(), "false");
    api.get("/v1/kv/lock/absent").await.expect_status(404);

    // Delete with cas: wrong index fails, right one deletes.
    let r = api.delete(&format!("/v1/kv/lock/x?cas={m}")).await;
    r.expect_status(200);
    assert_eq!(r.text().trim(), "false");
    assert_eq!(
        entry(api, "lock/x").await,
        e2,
        "failed delete-cas changed nothing"
    );
    api.delete(&format!("/v1/kv/lock/x?cas={m2}"))
        .await
        .expect_true();
    api.get("/v1/kv/lock/x").await.expect_status(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recursive_delete() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();
    for k in ["tree/a", "tree/b/c", "tree/b/d", "treehouse", "other"] {
        api.put(&format!("/v1/kv/{k}"), k).await.expect_true();
    }
    api.delete("/v1/kv/tree/a").await.expect_true();
    api.get("/v1/kv/tree/a").await.expect_status(404);
    // Deleting a missing key is not an error.
    api.delete("/v1/kv/tree/a").await.expect_true();

    api.delete("/v1/kv/tree/?recurse").await.expect_true();
    api.get("/v1/kv/tree/?recurse").await.expect_status(404);
    assert_eq!(
        keys(api, "/v1/kv/?keys").await,
        ["other", "treehouse"],
        "only keys under tree/ were deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values() {
    let meshd = Meshd::start_default().await;
    let api = meshd.api();

    // Well under the limit: stored and returned intact.
    let big: Vec<u8> = (0..400 * 1024).map(|i| (i % 251) as u8).collect();
    api.put("/v1/kv/big/ok", big.clone()).await.expect_true();
    let r = api.get("/v1/kv/big/ok?raw").await;
    r.expect_status(200);
    assert!(r.body == big, "400 KiB value round-trips");

    // Over 512 KiB: 413, nothing stored.
    let too_big = vec![b'x'; 512 * 1024 + 1];
    let r = api.put("/v1/kv/big/no", too_big).await;
    assert_eq!(r.status, 413, "a value over 512 KiB: {}", r.text());
    api.get("/v1/kv/big/no").await.expect_status(404);
    let r = api.put("/v1/kv/big/ok", vec![b'y'; 600 * 1024]).await;
    assert_eq!(r.status, 413);
    let r = api.get("/v1/kv/big/ok?raw").await;
    assert!(r.body == big, "the rejected overwrite changed nothing");
}
