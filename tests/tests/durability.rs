//! Durability: with `--data-dir`, 1,000 registrations and 1,000 KV keys are written 16 at a
//! time; meshd is SIGKILLed right after the last acknowledgment and restarted on the same dir.
//! Every acknowledged write is there, and a new write's index is above every earlier one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tests::{Api, Meshd, MeshdOptions};

const REGISTRATIONS: usize = 1_000;
const KEYS: usize = 1_000;
const CONCURRENCY: usize = 16;
const NODE: &str = "dur-node";

/// One acknowledged write and the `X-Consul-Index` its response carried (if any).
#[derive(Clone, Debug)]
enum Acked {
    Service { i: usize, index: Option<u64> },
    Key { i: usize, index: Option<u64> },
}

fn service_id(i: usize) -> String {
    format!("dur-svc-{i:04}")
}

fn key(i: usize) -> String {
    format!("dur/key-{i:04}")
}

fn value(i: usize) -> String {
    format!("value of key {i} / {}", i * 7919)
}

fn port(i: usize) -> u64 {
    20_000 + i as u64
}

async fn write(api: &Api, job: usize) -> Result<Acked, String> {
    if job < REGISTRATIONS {
        let i = job;
        let body = json!({
            "Node": NODE,
            "Address": "127.0.0.42",
            "Service": {"ID": service_id(i), "Service": service_id(i), "Port": port(i),
                        "Tags": [format!("t{i}")]}
        });
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let r = api
            .send(
                reqwest::Method::PUT,
                "/v1/catalog/register",
                Some(bytes),
                None,
            )
            .await
            .map_err(|e| format!("register {i}: {e}"))?;
        if r.status != 200 || r.text().trim() != "true" {
            return Err(format!("register {i}: {} {}", r.status, r.text()));
        }
        Ok(Acked::Service {
            i,
            index: r.index(),
        })
    } else {
        let i = job - REGISTRATIONS;
        let r = api
            .send(
                reqwest::Method::PUT,
                &format!("/v1/kv/{}", key(i)),
                Some(value(i).into_bytes()),
                None,
            )
            .await
            .map_err(|e| format!("kv {i}: {e}"))?;
        if r.status != 200 || r.text().trim() != "true" {
            return Err(format!("kv {i}: {} {}", r.status, r.text()));
        }
        Ok(Acked::Key {
            i,
            index: r.index(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::Builder::new()
        .prefix("meshd-durability-")
        .tempdir()
        .expect("temp data dir");
    let mut meshd = Meshd::start(
        MeshdOptions::default()
            .node("dur-agent")
            .data_dir(dir.path()),
    )
    .await;
    let api = meshd.api().clone();

    // 2,000 writes, interleaved registrations and keys, 16 in flight.
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<Acked>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let order: Arc<Vec<usize>> = Arc::new(
        (0..REGISTRATIONS.max(KEYS))
            .flat_map(|i| {
                let mut v = Vec::new();
                if i < REGISTRATIONS {
                    v.push(i);
                }
                if i < KEYS {
                    v.push(REGISTRATIONS + i);
                }
                v
            })
            .collect(),
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (api, next, acked, errors, order) = (
            api.clone(),
            next.clone(),
            acked.clone(),
            errors.clone(),
            order.clone(),
        );
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(&job) = order.get(n) else { break };
                match write(&api, job).await {
                    Ok(a) => acked.lock().expect("acked lock").push(a),
                    Err(e) => errors.lock().expect("errors lock").push(e),
                }
            }
        });
    }
    let all_done = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(r) = workers.join_next().await {
            r.expect("writer task");
        }
    })
    .await;
    // Kill right after the last acknowledgment: nothing gets a chance to flush lazily.
    meshd.kill9();
    all_done.expect("2,000 writes finish within 300 s");

    let acked = acked.lock().expect("acked lock").clone();
    let errors = errors.lock().expect("errors lock").clone();
    assert!(
        errors.is_empty(),
        "{} writes failed before the kill, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(acked.len(), REGISTRATIONS + KEYS);
    let max_ack_index = acked
        .iter()
        .filter_map(|a| match a {
            Acked::Service { index, .. } | Acked::Key { index, .. } => *index,
        })
        .max()
        .unwrap_or(0);

    meshd.restart().await;
    let api = meshd.api().clone();

    // Every registration.
    let r = api.get(&format!("/v1/catalog/node/{NODE}")).await;
    r.expect_status(200);
    let node = r.json();
    let services = node["Services"]
        .as_object()
        .unwrap_or_else(|| panic!("node {NODE} has a Services map after restart: {node}"));
    let mut max_seen = 0u64;
    let mut missing = Vec::new();
    for a in &acked {
        if let Acked::Service { i, .. } = a {
            match services.get(&service_id(*i)) {
                None => missing.push(service_id(*i)),
                Some(s) => {
                    assert_eq!(s["Port"].as_u64(), Some(port(*i)), "{s}");
                    assert_eq!(s["Tags"], json!([format!("t{i}")]), "{s}");
                    let m = s["ModifyIndex"].as_u64().expect("ModifyIndex");
                    max_seen = max_seen.max(m);
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged registrations lost after SIGKILL, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );

    // Every key.
    let r = api.get("/v1/kv/dur/?recurse").await;
    r.expect_status(200);
    let entries: Vec<Value> = r.parse();
    let by_key: BTreeMap<String, Value> = entries
        .into_iter()
        .filter_map(|e| Some((e["Key"].as_str()?.to_string(), e)))
        .collect();
    let mut lost = Vec::new();
    for a in &acked {
        if let Acked::Key { i, index } = a {
            match by_key.get(&key(*i)) {
                None => lost.push(key(*i)),
                Some(e) => {
                    let want = base64::engine::general_purpose::STANDARD.encode(value(*i));
                    assert_eq!(e["Value"], want.as_str(), "value of {}", key(*i));
                    let m = e["ModifyIndex"].as_u64().expect("ModifyIndex");
                    // Each key is written once: its ModifyIndex is the index acknowledged for it.
                    if let Some(acked_index) = index {
                        assert_eq!(m, *acked_index, "ModifyIndex of {}", key(*i));
                    }
                    max_seen = max_seen.max(m);
                }
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged KV writes lost after SIGKILL, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // Concurrent writes may share a log index (group commit), so 2,000 writes need not reach
    // index 2,000; but every acknowledged index is at or below what the restarted store holds.
    assert!(
        max_seen >= max_ack_index,
        "the restarted store's highest KV index {max_seen} is below an acknowledged index {max_ack_index}"
    );
    let earlier = max_seen.max(max_ack_index);

    // Indexes continue upward.
    api.put("/v1/kv/dur-after/restart", "new")
        .await
        .expect_true();
    let r = api.get("/v1/kv/dur-after/restart").await;
    let e: Vec<Value> = r.parse();
    let new_index = e[0]["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert!(
        new_index > earlier,
        "a write after the restart has index {new_index}, not above the earlier {earlier}"
    );
    api.put_json(
        "/v1/catalog/register",
        &json!({"Node": NODE, "Address": "127.0.0.42",
                "Service": {"ID": "after-restart", "Service": "after-restart", "Port": 1}}),
    )
    .await
    .expect_true();
    let r = api.get("/v1/catalog/service/after-restart").await;
    let s: Vec<Value> = r.parse();
    let reg_index = s[0]["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert!(reg_index > new_index, "{reg_index} > {new_index}");
    let global = api.get("/v1/catalog/services").await.must_index();
    assert!(
        global >= reg_index,
        "X-Consul-Index {global} >= {reg_index}"
    );

    // And once more, a second crash right after one more write.
    api.put("/v1/kv/dur-after/second", "x").await.expect_true();
    meshd.restart().await;
    let r = meshd.api().get("/v1/kv/dur-after/second?raw").await;
    r.expect_status(200);
    assert_eq!(r.body, b"x");
}
