//! Blocking queries at scale (Consul issues #8995, #9647): 10,000 concurrent waiting queries on
//! one agent, a mix of services and keys, all woken by the writes they wait on; then 10,000 more
//! whose clients disconnect, after which `meshd_api_blocking_queries` returns to 0 and meshd's
//! open file descriptors return to their baseline: no task or socket is left behind.
//!
//! The connections are raw tokio `TcpStream`s with hand-written HTTP/1.1 (see `tests::raw`).
//! `RLIMIT_NOFILE` is raised to the hard limit first (meshd inherits it); with a lower hard limit
//! the test uses fewer connections, but never fewer than [`MIN_QUERIES`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tests::raw::{read_response, send_get};
use tests::sys::{open_fds, raise_nofile_limit};
use tests::{wait_until, Api, Meshd};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const TARGET_QUERIES: usize = 10_000;
const MIN_QUERIES: usize = 4_000;
/// File descriptors kept free for everything else in each process.
const FD_HEADROOM: u64 = 1_000;
/// Connections being opened at once (stays under the listen backlog).
const CONNECT_CONCURRENCY: usize = 128;
const SERVICES: usize = 5;
const KEYS: usize = 5;
/// Fds meshd may hold above its idle baseline once all clients are gone.
const FD_SLACK: usize = 32;
/// Generous bound for phases that touch every connection on a 2-core machine.
const PHASE: Duration = Duration::from_secs(180);
/// meshd's memory while holding the queries must stay under this (bounded memory).
const MAX_RSS_KIB: u64 = 1024 * 1024;

/// The blocking queries to spread the connections over, each with the index it waits past.
async fn current_queries(api: &Api) -> Vec<(String, u64)> {
    let mut bases = Vec::new();
    for j in 0..SERVICES {
        bases.push(format!("/v1/health/service/bq-svc-{j}?"));
        bases.push(format!("/v1/catalog/service/bq-svc-{j}?"));
    }
    for j in 0..KEYS {
        bases.push(format!("/v1/kv/bq/k{j}?"));
    }
    bases.push("/v1/kv/bq/?recurse&".into());
    bases.push("/v1/catalog/services?".into());
    let mut out = Vec::new();
    for b in bases {
        let r = api.get(b.trim_end_matches(['?', '&'])).await;
        r.expect_status(200);
        let idx = r.must_index();
        out.push((format!("{b}index={idx}&wait=5m"), idx));
    }
    out
}

/// The writes every query above waits on: one per service and one per key.
async fn wake_all(api: &Api, round: usize) {
    for j in 0..SERVICES {
        api.put_json(
            "/v1/agent/service/register",
            &json!({"ID": format!("bq-svc-{j}"), "Name": format!("bq-svc-{j}"), "Port": 7000 + j,
                    "Tags": [format!("round-{round}")]}),
        )
        .await
        .expect_status(200);
    }
    for j in 0..KEYS {
        api.put(&format!("/v1/kv/bq/k{j}"), format!("round-{round}"))
            .await
            .expect_true();
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Opens `n` blocking queries; each task reads its response and checks it is a 200 with an
/// index past the one it waited on. `opened` counts requests sent, `answered` responses read.
fn open_queries(
    tasks: &mut JoinSet<Result<(), String>>,
    addr: SocketAddr,
    queries: &[(String, u64)],
    n: usize,
    opened: &Arc<AtomicUsize>,
    answered: &Arc<AtomicUsize>,
) {
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 0..n {
        let (path, waited) = queries[i % queries.len()].clone();
        let (sem, opened, answered) = (sem.clone(), opened.clone(), answered.clone());
        tasks.spawn(async move {
            let mut stream = {
                let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
                send_get(addr, &path)
                    .await
                    .map_err(|e| format!("query {i} ({path}): connect/send: {e}"))?
            };
            opened.fetch_add(1, Ordering::SeqCst);
            let r = read_response(&mut stream)
                .await
                .map_err(|e| format!("query {i} ({path}): {e}"))?;
            answered.fetch_add(1, Ordering::SeqCst);
            match r.index() {
                _ if r.status != 200 => Err(format!(
                    "query {i} ({path}): status {} body {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                )),
                Some(idx) if idx > waited => Ok(()),
                other => Err(format!(
                    "query {i} ({path}): X-Consul-Index {other:?}, not past {waited}"
                )),
            }
        });
    }
}

async fn blocking_gauge(api: &Api) -> f64 {
    api.blocking_queries()
        .await
        .expect("/metrics has meshd_api_blocking_queries")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_blocking_queries_wake_and_disconnect_cleanly() {
    let limit = raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    let n = TARGET_QUERIES.min(limit.saturating_sub(FD_HEADROOM) as usize);
    assert!(
        n >= MIN_QUERIES,
        "RLIMIT_NOFILE hard limit {limit} allows only {n} connections; raise it (ulimit -Hn) \
         to at least {}",
        MIN_QUERIES as u64 + FD_HEADROOM
    );
    eprintln!("RLIMIT_NOFILE {limit}: using {n} concurrent blocking queries per round");

    // Started after raising the limit, so meshd inherits it.
    let meshd = Meshd::start_default().await;
    let api = meshd.api().clone();
    let addr = meshd.http_addr();
    let pid = meshd.pid().expect("meshd is running");
    wake_all(&api, 0).await;

    let idle_gauge = blocking_gauge(&api).await;
    assert_eq!(idle_gauge, 0.0, "no blocking query yet");
    let baseline_fds = open_fds(pid).expect("read meshd's /proc/PID/fd");
    eprintln!("meshd idle: {baseline_fds} fds, RSS {:?} KiB", rss_kib(pid));

    // Round 1: n waiting queries, woken by the writes they wait on.
    let queries = current_queries(&api).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let t = Instant::now();
    open_queries(&mut tasks, addr, &queries, n, &opened, &answered);
    wait_until(
        PHASE,
        &format!("{n} blocking queries are waiting in meshd"),
        || async { blocking_gauge(&api).await >= n as f64 },
    )
    .await;
    eprintln!(
        "round 1: {n} queries waiting after {:?}; meshd {} fds, RSS {:?} KiB",
        t.elapsed(),
        open_fds(pid).unwrap_or(0),
        rss_kib(pid)
    );
    if let Some(rss) = rss_kib(pid) {
        assert!(
            rss < MAX_RSS_KIB,
            "meshd uses {rss} KiB holding {n} blocking queries"
        );
    }
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "queries answered before anything they wait on changed"
    );
    assert_eq!(opened.load(Ordering::SeqCst), n);

    let t = Instant::now();
    wake_all(&api, 1).await;
    let mut errors = Vec::new();
    let collected = tokio::time::timeout(PHASE, async {
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
    })
    .await;
    let answered_n = answered.load(Ordering::SeqCst);
    assert!(
        collected.is_ok(),
        "only {answered_n} of {n} blocking queries returned within {PHASE:?} of the wake-up writes"
    );
    eprintln!(
        "round 1: all {n} answered {:?} after the writes",
        t.elapsed()
    );
    assert!(
        errors.is_empty(),
        "{} of {n} woken queries failed, e.g.:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    wait_until(
        Duration::from_secs(30),
        "meshd_api_blocking_queries is 0 after every query was answered",
        || async { blocking_gauge(&api).await == 0.0 },
    )
    .await;

    // Round 2: n waiting queries whose clients go away.
    let queries = current_queries(&api).await;
    let opened = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    open_queries(&mut tasks, addr, &queries, n, &opened, &answered);
    wait_until(
        PHASE,
        &format!("{n} more blocking queries are waiting in meshd"),
        || async { blocking_gauge(&api).await >= n as f64 },
    )
    .await;
    let loaded_fds = open_fds(pid).expect("meshd fds");
    assert!(
        loaded_fds >= baseline_fds + n * 9 / 10,
        "meshd holds {loaded_fds} fds with {n} open queries (baseline {baseline_fds})"
    );
    assert_eq!(answered.load(Ordering::SeqCst), 0);

    // Disconnect every client: aborting the tasks drops (closes) their sockets.
    let t = Instant::now();
    tasks.shutdown().await;
    wait_until(
        Duration::from_secs(10),
        "meshd_api_blocking_queries returns to 0 after the clients disconnected",
        || async { blocking_gauge(&api).await == 0.0 },
    )
    .await;
    eprintln!(
        "round 2: gauge back to 0 {:?} after disconnect",
        t.elapsed()
    );
    wait_until(
        Duration::from_secs(10),
        &format!("meshd's open fds return to near its baseline of {baseline_fds}"),
        || async { open_fds(pid).is_ok_and(|f| f <= baseline_fds + FD_SLACK) },
    )
    .await;
    eprintln!(
        "round 2: meshd back to {} fds {:?} after disconnect, RSS {:?} KiB",
        open_fds(pid).unwrap_or(0),
        t.elapsed(),
        rss_kib(pid)
    );

    // Still serving.
    api.put("/v1/kv/bq/after", "ok").await.expect_true();
}
