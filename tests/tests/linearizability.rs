//! Linearizability of the KV store under faults (issue 14): a Jepsen-style run
//! ([`tests::linrun`]) of three servers, four clients and the nemesis, checked by
//! [`tests::lincheck`].
//!
//! - `kv_is_linearizable_under_faults`: the CI run, about 60 s with at least 10 faults, every
//!   kind of fault at least once.
//! - `soak` (ignored; `tests/bench/linearizability.sh` runs it): `LIN_RUNS` runs (10) of
//!   `LIN_SECONDS` (300) each, with at least one fault per 7.5 s; stops at the first run that is not
//!   linearizable and leaves its history under `target/lincheck/`.

use std::time::{SystemTime, UNIX_EPOCH};

use tests::linrun::{self, Plan};

fn seed() -> u64 {
    match std::env::var("LIN_SEED") {
        Ok(s) => s.parse().expect("LIN_SEED is a number"),
        Err(_) => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1),
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .map(|s| s.parse().unwrap_or_else(|_| panic!("{name} is a number")))
        .unwrap_or(default)
}

async fn run_and_check(plan: Plan) {
    let outcome = linrun::run(&plan)
        .await
        .unwrap_or_else(|e| panic!("the run failed: {e:#}"));
    eprintln!("{}", outcome.summary());
    println!(
        "{}",
        serde_json::to_string(&outcome).expect("the outcome serializes")
    );
    assert!(
        outcome.faults.len() >= plan.min_faults,
        "{} faults",
        outcome.faults.len()
    );
    if !outcome.linearizable() {
        let detail = outcome
            .check
            .violation
            .as_ref()
            .map(|v| v.render())
            .unwrap_or_default();
        panic!(
            "{}\n{detail}\nhistory, fault timeline and logs saved in {:?}",
            outcome.summary(),
            outcome.artifacts
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_is_linearizable_under_faults() {
    run_and_check(Plan::ci(seed())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by tests/bench/linearizability.sh"]
async fn soak() {
    let runs = env_u64("LIN_RUNS", 10);
    let seconds = env_u64("LIN_SECONDS", 300);
    let first = seed();
    for r in 0..runs {
        eprintln!("run {} of {runs}", r + 1);
        run_and_check(Plan::soak(first + r, seconds)).await;
    }
}
