//! Snapshot catch-up: with `snapshot_threshold = 50`, a follower is SIGKILLed, 500 keys are
//! written, the others snapshot and compact their logs, and the restarted follower catches up
//! by installing a snapshot from the leader: every key is in its `?stale` view, and its
//! metrics (`meshd_raft_snapshots_total{op="installed"}`) or its log say it installed one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::cluster::{kv_keys_stale, kv_put, metric_with_label, Cluster, ClusterSpec};
use tests::sys::metric_value;
use tests::wait_until;

const KEYS: usize = 500;
const IN_FLIGHT: usize = 8;
const SNAPSHOTS: &str = "meshd_raft_snapshots_total";
const PURGED: &str = "meshd_raft_log_entries_purged_total";

async fn metrics(api: &tests::Api) -> String {
    match api
        .send(
            reqwest::Method::GET,
            "/metrics",
            None,
            Some(Duration::from_secs(5)),
        )
        .await
    {
        Ok(r) if r.status == 200 => r.text(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_compacted_entries_catches_up_from_a_snapshot() {
    let mut cluster =
        Cluster::start(ClusterSpec::default().servers(3).snapshot_threshold(50)).await;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let lapi = cluster.server(leader).api().clone();
    cluster.server_mut(follower).kill9();

    // 500 keys, 8 in flight, through the leader.
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..IN_FLIGHT {
        let api = lapi.clone();
        tasks.spawn(async move {
            let mut failed = Vec::new();
            for i in (w..KEYS).step_by(IN_FLIGHT) {
                let key = format!("snap/{i:04}");
                let o = kv_put(&api, &key, key.as_bytes(), Duration::from_secs(10)).await;
                if !o.is_acked() {
                    failed.push(format!("{key}: {o:?}"));
                }
            }
            failed
        });
    }
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        failed.extend(r.expect("writer"));
    }
    assert!(
        failed.is_empty(),
        "{} writes failed with one follower down, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    eprintln!("{KEYS} keys written in {:?}", started.elapsed());

    // The two live servers built snapshots and purged log entries.
    for i in [leader, other] {
        let api = cluster.server(i).api().clone();
        let name = cluster.server(i).name().to_string();
        wait_until(
            Duration::from_secs(20),
            &format!("{name} builds a snapshot and purges its log"),
            || {
                let api = api.clone();
                async move {
                    let m = metrics(&api).await;
                    metric_with_label(&m, SNAPSHOTS, "op", "built").unwrap_or(0.0) >= 1.0
                        && metric_value(&m, PURGED).unwrap_or(0.0) > 0.0
                }
            },
        )
        .await;
        let m = metrics(&api).await;
        eprintln!(
            "{name}: snapshots built {:?}, log entries purged {:?}",
            metric_with_label(&m, SNAPSHOTS, "op", "built"),
            metric_value(&m, PURGED)
        );
    }

    cluster.server_mut(follower).restart().await;
    let restarted = Instant::now();
    let fapi = cluster.server(follower).api().clone();
    let fname = cluster.server(follower).name().to_string();
    let last = Arc::new(AtomicUsize::new(0));
    let caught_up = tests::wait::poll_until(Duration::from_secs(60), || {
        let (fapi, last) = (fapi.clone(), last.clone());
        async move {
            let n = kv_keys_stale(&fapi, "snap/")
                .await
                .map(|k| k.len())
                .unwrap_or(0);
            last.store(n, Ordering::SeqCst);
            n == KEYS
        }
    })
    .await;
    assert!(
        caught_up,
        "{fname} has {} of {KEYS} keys 60 s after its restart",
        last.load(Ordering::SeqCst)
    );
    eprintln!(
        "{fname} has all {KEYS} keys {:?} after its restart",
        restarted.elapsed()
    );

    // It caught up by a snapshot, not by replaying the log.
    let m = metrics(&fapi).await;
    let installed = metric_with_label(&m, SNAPSHOTS, "op", "installed").unwrap_or(0.0);
    let log = cluster.server(follower).log();
    let log_lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("install") && l.contains("snapshot")
        })
        .take(5)
        .collect();
    eprintln!("{fname}: {SNAPSHOTS}{{op=\"installed\"}} = {installed}; log: {log_lines:#?}");
    assert!(
        installed >= 1.0,
        "{fname} did not install a snapshot ({SNAPSHOTS}{{op=\"installed\"}} = {installed}; \
         snapshot lines in its log: {log_lines:?})"
    );
}
