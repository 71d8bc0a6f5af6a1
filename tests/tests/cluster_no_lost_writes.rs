//! No lost writes under server faults: 4 clients write distinct keys (`client<i>/<n>`, value =
//! the key) through three agents and the servers, while the test SIGKILLs and restarts servers
//! (at least 5 faults, the current leader SIGKILLed at least twice, one server down at a time).
//! At the end, with every server back, every acknowledged key is on every server (`?stale`
//! reads on each, after a barrier write all of them have applied), and no key appears that no
//! client attempted.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::cluster::{kv_entries_stale, kv_get_stale, kv_put, Cluster, ClusterSpec, WriteOutcome};
use tests::wait_until;

const CLIENTS: usize = 4;
/// The load runs at least this long, and until the fault schedule is done.
const LOAD_TIME: Duration = Duration::from_secs(25);
/// Hard bound on the whole load phase.
const LOAD_HARD_BOUND: Duration = Duration::from_secs(150);
/// Bound on writes per client.
const MAX_WRITES_PER_CLIENT: usize = 5_000;
const MIN_FAULTS: usize = 5;
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Record {
    attempted: BTreeSet<String>,
    acked: BTreeSet<String>,
    refused: usize,
    no_answer: usize,
    examples: Vec<String>,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    KillFollower,
    TermFollower,
    KillLeaderRestartAtOnce,
}

const SCHEDULE: [Fault; 6] = [
    Fault::KillLeader,
    Fault::KillFollower,
    Fault::KillLeader,
    Fault::TermFollower,
    Fault::KillLeaderRestartAtOnce,
    Fault::KillFollower,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_while_servers_are_killed() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3).agents(3)).await;
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));

    // Clients 0-2 write through agents 0-2; client 3 through the servers in turn.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let apis: Vec<tests::Api> = if c < 3 {
            vec![cluster.agent(c).api().clone()]
        } else {
            cluster.servers().iter().map(|s| s.api().clone()).collect()
        };
        let (record, stop) = (record.clone(), stop.clone());
        clients.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < MAX_WRITES_PER_CLIENT {
                let key = format!("client{c}/{n:05}");
                let api = &apis[n % apis.len()];
                record.lock().expect("record").attempted.insert(key.clone());
                let o = kv_put(api, &key, key.as_bytes(), WRITE_TIMEOUT).await;
                let failed = {
                    let mut r = record.lock().expect("record");
                    match o {
                        WriteOutcome::Acked => {
                            r.acked.insert(key);
                            false
                        }
                        other => {
                            if matches!(other, WriteOutcome::Refused { .. }) {
                                r.refused += 1;
                            } else {
                                r.no_answer += 1;
                            }
                            if r.examples.len() < 10 {
                                r.examples
                                    .push(format!("{key} via {}: {other:?}", api.base()));
                            }
                            true
                        }
                    }
                };
                if failed {
                    // Do not spin on a node that is down.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
        });
    }

    // Faults, one server down at a time.
    let started = Instant::now();
    let mut faults = Vec::new();
    let mut leader_kills = 0;
    let mut step = 0;
    while faults.len() < MIN_FAULTS || leader_kills < 2 || started.elapsed() < LOAD_TIME {
        assert!(
            started.elapsed() < LOAD_HARD_BOUND,
            "the fault schedule did not finish within {LOAD_HARD_BOUND:?}: {faults:?}"
        );
        // Let the load run a little between faults.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let fault = SCHEDULE[step % SCHEDULE.len()];
        step += 1;
        let leader = cluster.wait_leader(Duration::from_secs(30)).await;
        let follower = (leader + 1 + step % 2) % 3;
        let (victim, how) = match fault {
            Fault::KillLeader | Fault::KillLeaderRestartAtOnce => (leader, "SIGKILL leader"),
            Fault::KillFollower => (follower, "SIGKILL follower"),
            Fault::TermFollower => (follower, "SIGTERM follower"),
        };
        let name = cluster.server(victim).name().to_string();
        match fault {
            Fault::TermFollower => {
                let status = cluster.server_mut(victim).stop().await;
                eprintln!("{name} stopped with {status:?}");
            }
            _ => cluster.server_mut(victim).kill9(),
        }
        if matches!(fault, Fault::KillLeader | Fault::KillLeaderRestartAtOnce) {
            leader_kills += 1;
        }
        if !matches!(fault, Fault::KillLeaderRestartAtOnce) {
            // The two others elect (or keep) a leader while it is down.
            let l = cluster.wait_leader(Duration::from_secs(30)).await;
            assert_ne!(l, victim);
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        cluster.server_mut(victim).restart().await;
        let acked = record.lock().expect("record").acked.len();
        eprintln!(
            "fault {}: {how} {name} at {:?} (acked so far: {acked})",
            faults.len() + 1,
            started.elapsed()
        );
        faults.push(format!("{how} {name}"));
    }
    stop.store(true, Ordering::SeqCst);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(r) = clients.join_next().await {
            r.expect("client task");
        }
    })
    .await;
    assert!(drained.is_ok(), "clients did not stop within 30 s");

    let record = std::mem::take(&mut *record.lock().expect("record"));
    eprintln!(
        "load: {:?}, {} faults {faults:?}; {} attempted, {} acknowledged, {} refused, {} no \
         answer; e.g. {:#?}",
        started.elapsed(),
        faults.len(),
        record.attempted.len(),
        record.acked.len(),
        record.refused,
        record.no_answer,
        record.examples
    );
    assert!(
        record.acked.len() >= 100,
        "too few writes acknowledged ({}) for the test to mean anything",
        record.acked.len()
    );

    // Every server back, a leader, then a barrier write every server must apply.
    for i in 0..3 {
        if !cluster.server_mut(i).is_running() {
            cluster.server_mut(i).restart().await;
        }
    }
    let leader = cluster.wait_leader(Duration::from_secs(30)).await;
    let lapi = cluster.server(leader).api().clone();
    wait_until(
        Duration::from_secs(30),
        "the barrier write is acknowledged",
        || {
            let lapi = lapi.clone();
            async move {
                kv_put(&lapi, "barrier", b"done", Duration::from_secs(5))
                    .await
                    .is_acked()
            }
        },
    )
    .await;
    for s in cluster.servers() {
        let api = s.api().clone();
        wait_until(
            Duration::from_secs(60),
            &format!("{} applies the barrier write", s.name()),
            || {
                let api = api.clone();
                async move { matches!(kv_get_stale(&api, "barrier").await, Ok(Some(v)) if v == b"done") }
            },
        )
        .await;
    }

    for s in cluster.servers() {
        let kv = kv_entries_stale(s.api(), "client")
            .await
            .unwrap_or_else(|e| panic!("read {}'s keys: {e}", s.name()));
        let keys: BTreeSet<String> = kv.keys().cloned().collect();
        let lost: Vec<&String> = record.acked.difference(&keys).collect();
        assert!(
            lost.is_empty(),
            "{}: {} acknowledged writes are missing, e.g. {:?}",
            s.name(),
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let invented: Vec<&String> = keys.difference(&record.attempted).collect();
        assert!(
            invented.is_empty(),
            "{}: keys no client attempted: {invented:?}",
            s.name()
        );
        let wrong: Vec<&String> = kv
            .iter()
            .filter(|(k, v)| k.as_bytes() != v.as_slice())
            .map(|(k, _)| k)
            .collect();
        assert!(wrong.is_empty(), "{}: wrong values for {wrong:?}", s.name());
        eprintln!(
            "{}: {} client keys ({} acknowledged, {} more from unacknowledged attempts)",
            s.name(),
            keys.len(),
            record.acked.len(),
            keys.len() - record.acked.len()
        );
    }
    // The same on all servers.
    let mut sets = Vec::new();
    for s in cluster.servers() {
        sets.push(kv_entries_stale(s.api(), "client").await.expect("keys"));
    }
    assert!(
        sets.iter().all(|s| s == &sets[0]),
        "the servers' contents differ after the barrier: sizes {:?}",
        sets.iter().map(|s| s.len()).collect::<Vec<_>>()
    );
}
