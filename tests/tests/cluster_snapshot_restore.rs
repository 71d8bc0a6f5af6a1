//! Snapshot save and restore: services and KV on a live 3-server cluster are saved with
//! `GET /v1/snapshot`; a new single dev server restores them with `PUT /v1/snapshot` and then
//! serves the same catalog services and the same KV keys and values. A snapshot with one byte
//! flipped is refused with 400 and changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use tests::cluster::{Cluster, ClusterSpec};
use tests::dump::full_dump;
use tests::{wait_until, Api, Meshd};

const KEYS: usize = 30;

fn value(i: usize) -> Vec<u8> {
    let mut v = format!("value {i} ").into_bytes();
    v.extend((0..=255u8).map(|b| b.wrapping_add(i as u8)));
    v
}

/// Catalog services: name -> sorted tags.
async fn services(api: &Api) -> BTreeMap<String, BTreeSet<String>> {
    let r = api.get("/v1/catalog/services").await;
    r.expect_status(200);
    r.parse()
}

/// The instances of `name`: (node, service ID, port, sorted tags).
async fn instances(api: &Api, name: &str) -> BTreeSet<(String, String, u64, Vec<String>)> {
    let r = api.get(&format!("/v1/catalog/service/{name}")).await;
    r.expect_status(200);
    let list: Vec<Value> = r.parse();
    list.iter()
        .map(|s| {
            let mut tags: Vec<String> = s["ServiceTags"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            tags.sort();
            (
                s["Node"].as_str().unwrap_or_default().to_string(),
                s["ServiceID"].as_str().unwrap_or_default().to_string(),
                s["ServicePort"].as_u64().unwrap_or_default(),
                tags,
            )
        })
        .collect()
}

/// Every KV entry: key -> value bytes.
async fn kv(api: &Api) -> BTreeMap<String, Vec<u8>> {
    tests::cluster::kv_entries_stale(api, "")
        .await
        .unwrap_or_else(|e| panic!("read the KV store of {}: {e}", api.base()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_snapshot_restores_on_a_new_server_and_a_corrupt_one_is_refused() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3).agents(1)).await;
    let agent = cluster.agent(0).api().clone();
    let server = cluster.server(0).api().clone();
    agent
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "api-1", "Name": "api", "Port": 8080, "Tags": ["v1", "blue"]}),
        )
        .await
        .expect_status(200);
    server
        .put_json(
            "/v1/agent/service/register",
            &json!({"ID": "db-1", "Name": "db", "Port": 5432, "Tags": ["primary"]}),
        )
        .await
        .expect_status(200);
    for i in 0..KEYS {
        server
            .put(&format!("/v1/kv/app/k{i:02}"), value(i))
            .await
            .expect_true();
    }
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let lapi = cluster.server(leader).api().clone();
    wait_until(
        Duration::from_secs(10),
        "both services are in the catalog",
        || {
            let lapi = lapi.clone();
            async move {
                let s = services(&lapi).await;
                s.contains_key("api") && s.contains_key("db")
            }
        },
    )
    .await;

    let want_services = services(&lapi).await;
    let mut want_instances = BTreeMap::new();
    for name in want_services.keys() {
        want_instances.insert(name.clone(), instances(&lapi, name).await);
    }
    let want_kv = kv(&lapi).await;
    assert_eq!(want_kv.len(), KEYS, "{:?}", want_kv.keys());

    let r = lapi
        .get_timeout("/v1/snapshot", Duration::from_secs(60))
        .await;
    r.expect_status(200);
    let snapshot = r.body.clone();
    eprintln!(
        "snapshot: {} bytes, Content-Type {:?}, X-Consul-Index {:?}",
        snapshot.len(),
        r.header("Content-Type"),
        r.index()
    );
    assert!(!snapshot.is_empty());

    // A new single dev server restores it.
    let dev = Meshd::start_default().await;
    let r = dev.api().put("/v1/snapshot", snapshot.clone()).await;
    assert_eq!(
        r.status,
        200,
        "restore on a new server: {} {}",
        r.status,
        r.text()
    );
    let got_services = services(dev.api()).await;
    assert_eq!(
        got_services, want_services,
        "catalog services after the restore"
    );
    for (name, want) in &want_instances {
        assert_eq!(
            &instances(dev.api(), name).await,
            want,
            "instances of {name} after the restore"
        );
    }
    assert_eq!(kv(dev.api()).await, want_kv, "KV after the restore");

    // One flipped byte: refused with 400, nothing changes.
    let before = full_dump(dev.api()).await;
    for at in [
        snapshot.len() / 2,
        snapshot.len() - 1,
        10.min(snapshot.len() - 1),
    ] {
        let mut bad = snapshot.clone();
        bad[at] ^= 0x5a;
        let r = dev.api().put("/v1/snapshot", bad).await;
        assert_eq!(
            r.status,
            400,
            "a snapshot with byte {at} of {} flipped: {} {}",
            snapshot.len(),
            r.status,
            r.text()
        );
        eprintln!("byte {at} flipped: 400 {}", r.text().trim());
    }
    let after = full_dump(dev.api()).await;
    assert!(
        before.json_equal(&after),
        "a refused snapshot changed the server:\n--- before\n{}\n--- after\n{}",
        before.to_text(),
        after.to_text()
    );
    assert!(cluster.server_mut(leader).is_running());
}
