//! A leader SIGKILLed and restarted at once must not answer a `?consistent` read with a state
//! older than a write it acknowledged before the kill (issue 14).
//!
//! The defect this catches: openraft 0.9 lets a leader that restarts before any follower stood
//! resume its term at once, from its committed vote, and take as its read index the larger of
//! the first entry of its term and the commit index read back from disk. That commit index is
//! written without a sync (sled flushes it with the next log append), so after a SIGKILL it can
//! lag the last write acknowledged, and the restarted leader confirmed its leadership and
//! answered from a state without that write. The fix: a server that opens its log never
//! resumes a leadership from before the restart (the vote is read back as not committed), so
//! it stands in an election like any other, and a new leader's read index is its new blank
//! entry, after everything acknowledged.
//!
//! Each round: a writer PUTs increasing numbers to one key through the leader, the leader is
//! SIGKILLed between two writes and started again at once, and readers send `?consistent`
//! reads to it as fast as it answers. Every answer must be at least the last number
//! acknowledged before the kill. The same round also checks that the restarted server did not
//! come back as the leader of its old term.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::cluster::{kv_get_consistent, kv_put, probe, Cluster, ClusterSpec, WriteOutcome};
use tests::sys::metric_value;
use tests::Api;

const KEY: &str = "restart/counter";
const ROUNDS: usize = 8;
/// Reads checked per round once the restarted server answers.
const READS_PER_ROUND: usize = 200;
const READERS: usize = 4;

/// `GET ?consistent` of [`KEY`]: the number, `None` on any failure.
async fn read(api: &Api) -> Option<u64> {
    let value = kv_get_consistent(api, KEY).await.ok()??;
    String::from_utf8(value).ok()?.trim().parse().ok()
}

/// The term a server's Raft metrics report (`meshd_raft_term`), if it answers.
async fn term(api: &Api) -> Option<f64> {
    let r = probe(api, "/metrics").await?;
    metric_value(&r.text(), "meshd_raft_term")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_never_reads_behind_its_acknowledged_writes() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3)).await;
    let mut next = 1u64;
    for round in 0..ROUNDS {
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let api = cluster.server(leader).api().clone();
        let term_before = term(&api).await;

        // Writes flowing when the kill comes: the last acknowledged one is the floor.
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (api, acked) = (api.clone(), acked.clone());
            let start = next;
            tokio::spawn(async move {
                let mut n = start;
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(10) {
                    match kv_put(&api, KEY, n.to_string().as_bytes(), Duration::from_secs(3)).await
                    {
                        WriteOutcome::Acked => acked.store(n, Ordering::SeqCst),
                        _ => break,
                    }
                    n += 1;
                }
                n
            })
        };
        let want = next + 20;
        tests::wait_until(Duration::from_secs(10), "20 writes acknowledged", || {
            let acked = acked.clone();
            async move { acked.load(Ordering::SeqCst) >= want }
        })
        .await;
        cluster.server_mut(leader).kill9();
        let floor = acked.load(Ordering::SeqCst);
        next = writer.await.expect("writer") + 1;
        cluster
            .server_mut(leader)
            .spawn()
            .expect("start the server again");

        // Read from the restarted server as soon as it answers.
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..READERS {
            let api = api.clone();
            readers.spawn(async move {
                let mut seen = Vec::new();
                let started = Instant::now();
                while seen.len() < READS_PER_ROUND / READERS
                    && started.elapsed() < Duration::from_secs(30)
                {
                    if let Some(v) = read(&api).await {
                        seen.push(v);
                    }
                }
                seen
            });
        }
        let mut seen = Vec::new();
        while let Some(r) = readers.join_next().await {
            seen.extend(r.expect("reader"));
        }
        assert!(
            !seen.is_empty(),
            "round {round}: the restarted server answered no consistent read within 30 s"
        );
        let stale: Vec<u64> = seen.iter().copied().filter(|&v| v < floor).collect();
        assert!(
            stale.is_empty(),
            "round {round}: the restarted leader answered {} of {} consistent reads with a value \
             older than {floor}, acknowledged before the kill: {:?}",
            stale.len(),
            seen.len(),
            &stale[..stale.len().min(10)]
        );
        // It stood in an election: its term is past the one it led before the kill.
        if let (Some(before), Some(after)) = (term_before, term(&api).await) {
            assert!(
                after > before,
                "round {round}: the restarted server is still in term {after} (led {before})"
            );
        }
        eprintln!(
            "round {round}: floor {floor}, {} reads from the restarted server, all fresh",
            seen.len()
        );
    }
}
