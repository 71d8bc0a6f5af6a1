//! Cut the leader of a 3-server cluster away from the other two (its mesh link down; the test
//! still reaches its HTTP API over the control link). The majority elects a leader and keeps
//! acknowledging writes; the cut server answers writes and default (consistent) reads with an
//! error, never a 200. After the heal the three servers converge on the same `?stale` KV
//! contents, and the writes the cut server refused are nowhere.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tests::cluster::{kv_entries_stale, kv_get_stale, kv_put, Cluster, ClusterSpec, WriteOutcome};
use tests::wait::poll_until;

const MAJORITY_WRITES: usize = 20;
/// How long the cut server may take to answer a request (with an error).
const MINORITY_ANSWER: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_majority_writes_the_minority_refuses_and_all_converge_after_heal() {
    let mut cluster = Cluster::start(ClusterSpec::default().servers(3)).await;
    let cut = cluster.wait_leader(Duration::from_secs(10)).await;
    let majority: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    let m_api = cluster.server(majority[0]).api().clone();
    let cut_api = cluster.server(cut).api().clone();
    assert!(kv_put(&m_api, "pre/1", b"before", Duration::from_secs(10))
        .await
        .is_acked());

    cluster.cut_server(cut);
    let t = Instant::now();

    // The majority: a write is acknowledged again, then every write is.
    let resumed = poll_until(Duration::from_secs(20), || {
        let m_api = m_api.clone();
        async move {
            kv_put(&m_api, "majority/first", b"1", Duration::from_secs(3))
                .await
                .is_acked()
        }
    })
    .await;
    assert!(
        resumed,
        "the majority ({}, {}) acknowledged no write within 20 s of the cut",
        cluster.server(majority[0]).name(),
        cluster.server(majority[1]).name()
    );
    eprintln!("majority writes resumed {:?} after the cut", t.elapsed());
    for i in 0..MAJORITY_WRITES {
        let via = cluster.server(majority[i % 2]).api().clone();
        let o = kv_put(
            &via,
            &format!("majority/{i:03}"),
            format!("m{i}").as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(o, WriteOutcome::Acked, "majority write {i}");
    }

    // The minority: writes and consistent reads answer with an error, never a 200. Every
    // answer is recorded; violations fail the test after the heal and convergence checks.
    let mut answers = Vec::new();
    let mut violations = Vec::new();
    for n in 0..2 {
        let key = format!("minority/{n}");
        let started = Instant::now();
        let o = kv_put(&cut_api, &key, b"must not be stored", MINORITY_ANSWER).await;
        let took = started.elapsed();
        match &o {
            WriteOutcome::Refused { status, .. } if !(200..300).contains(status) => {}
            WriteOutcome::NoAnswer(_) => violations.push(format!(
                "write {key}: no answer within {MINORITY_ANSWER:?} (expected an error status)"
            )),
            other => violations.push(format!("write {key}: {other:?} (expected an error status)")),
        }
        answers.push(format!("write {key}: {o:?} after {took:?}"));

        let started = Instant::now();
        let r = cut_api
            .send(
                reqwest::Method::GET,
                "/v1/kv/pre/1",
                None,
                Some(MINORITY_ANSWER),
            )
            .await;
        let took = started.elapsed();
        match &r {
            Ok(r) if !(200..300).contains(&r.status) => answers.push(format!(
                "consistent read: {} after {took:?}: {}",
                r.status,
                r.text()
            )),
            Ok(r) => {
                violations.push(format!(
                    "consistent read answered {} ({}) (expected an error status)",
                    r.status,
                    r.text()
                ));
                answers.push(format!("consistent read: {} after {took:?}", r.status));
            }
            Err(e) => {
                violations.push(format!(
                    "consistent read: no answer within {MINORITY_ANSWER:?} (expected an error \
                     status): {e}"
                ));
                answers.push(format!("consistent read: no answer after {took:?}"));
            }
        }
    }
    eprintln!("the cut server's answers: {answers:#?}");
    // Its stale view still answers (locally).
    match kv_get_stale(&cut_api, "pre/1").await {
        Ok(Some(v)) if v == b"before" => {}
        other => violations.push(format!("?stale read on the cut server: {other:?}")),
    }

    cluster.heal_server(cut);
    let healed = Instant::now();
    let apis: Vec<tests::Api> = cluster.servers().iter().map(|s| s.api().clone()).collect();
    let mut last: Vec<Result<BTreeMap<String, Vec<u8>>, String>> = Vec::new();
    let converged = {
        let deadline = Duration::from_secs(30);
        let start = Instant::now();
        loop {
            last.clear();
            for api in &apis {
                last.push(kv_entries_stale(api, "").await);
            }
            let first = &last[0];
            let done = first
                .as_ref()
                .is_ok_and(|m| m.contains_key(&format!("majority/{:03}", MAJORITY_WRITES - 1)))
                && last.iter().all(|x| x == first);
            if done || start.elapsed() > deadline {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let summary: Vec<String> = last
        .iter()
        .map(|x| match x {
            Ok(m) => format!("{} keys: {:?}", m.len(), m.keys().collect::<Vec<_>>()),
            Err(e) => e.clone(),
        })
        .collect();
    assert!(
        converged,
        "the servers' ?stale KV contents differ 30 s after the heal: {summary:#?}"
    );
    eprintln!("converged {:?} after the heal", healed.elapsed());
    let kv = last[0].as_ref().expect("converged contents");
    assert_eq!(kv.get("pre/1").map(Vec::as_slice), Some(&b"before"[..]));
    for i in 0..MAJORITY_WRITES {
        assert_eq!(
            kv.get(&format!("majority/{i:03}")),
            Some(&format!("m{i}").into_bytes()),
            "majority/{i:03}"
        );
    }
    let leaked: Vec<&String> = kv.keys().filter(|k| k.starts_with("minority/")).collect();
    assert!(
        leaked.is_empty(),
        "writes the cut server did not acknowledge were applied after the heal: {leaked:?}"
    );
    assert!(
        violations.is_empty(),
        "the cut server (the old leader) misbehaved while cut off: {violations:#?}"
    );
}
