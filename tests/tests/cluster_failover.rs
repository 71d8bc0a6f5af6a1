//! SIGKILL the leader of a 3-server cluster: a new leader is elected and writes through a
//! surviving server succeed again within 10 s; the old leader restarts on its data dir and
//! catches up (its `?stale` reads show the writes made while it was down).

use std::time::{Duration, Instant};

use tests::cluster::{kv_get_stale, kv_put, Cluster, ClusterSpec, WriteOutcome};
use tests::wait_until;

const FAILOVER_BOUND: Duration = Duration::from_secs(10);
const WRITES_WHILE_DOWN: usize = 20;
/// Bound on one write attempt while there is no leader (the measurement's resolution).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_within_10s_after_the_leader_is_killed_and_it_catches_up() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3)).await;
    let old = cluster.wait_leader(Duration::from_secs(10)).await;
    let survivor = (old + 1) % 3;
    let api = cluster.server(survivor).api().clone();
    assert_eq!(
        kv_put(&api, "before/kill", b"1", Duration::from_secs(10)).await,
        WriteOutcome::Acked
    );

    cluster.server_mut(old).kill9();
    let killed = Instant::now();
    let mut last = None;
    let mut attempts = 0;
    let acked_at = loop {
        attempts += 1;
        let o = kv_put(&api, "after/first", b"1", ATTEMPT_TIMEOUT).await;
        if o.is_acked() {
            break killed.elapsed();
        }
        last = Some(o);
        assert!(
            killed.elapsed() < FAILOVER_BOUND + Duration::from_secs(20),
            "no write acknowledged through {} within {:?} of killing the leader; last: {last:?}",
            cluster.server(survivor).name(),
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "first write acknowledged {acked_at:?} after SIGKILL of the leader ({attempts} attempts, \
         last failure {last:?})"
    );
    assert!(
        acked_at <= FAILOVER_BOUND,
        "writes resumed only after {acked_at:?} (> {FAILOVER_BOUND:?}); last failure {last:?}"
    );
    let new = cluster.wait_leader(Duration::from_secs(10)).await;
    assert_ne!(new, old, "the killed server cannot be the leader");

    for i in 0..WRITES_WHILE_DOWN {
        let o = kv_put(
            &api,
            &format!("while-down/{i:03}"),
            format!("v{i}").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            o,
            WriteOutcome::Acked,
            "write {i} while the old leader is down"
        );
    }

    cluster.server_mut(old).restart().await;
    let old_api = cluster.server(old).api().clone();
    let restarted = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the restarted old leader's ?stale reads show every write made while it was down",
        || {
            let old_api = old_api.clone();
            async move {
                for i in 0..WRITES_WHILE_DOWN {
                    match kv_get_stale(&old_api, &format!("while-down/{i:03}")).await {
                        Ok(Some(v)) if v == format!("v{i}").as_bytes() => {}
                        _ => return false,
                    }
                }
                matches!(kv_get_stale(&old_api, "after/first").await, Ok(Some(_)))
            }
        },
    )
    .await;
    eprintln!(
        "old leader caught up {:?} after its restart",
        restarted.elapsed()
    );

    // And it takes part again: a write through it is acknowledged.
    wait_until(
        Duration::from_secs(10),
        "a write through the restarted server is acknowledged",
        || {
            let old_api = old_api.clone();
            async move {
                kv_put(&old_api, "after/restart", b"x", Duration::from_secs(3))
                    .await
                    .is_acked()
            }
        },
    )
    .await;
}
