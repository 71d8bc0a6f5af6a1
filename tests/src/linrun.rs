//! A Jepsen-style run of the KV store under faults, checked for linearizability.
//!
//! Three servers, each in its own network namespace. Clients (4 by default) each send every
//! request to a random server: half `PUT /v1/kv/lin/kN` with a value unique to the run, half
//! `GET /v1/kv/lin/kN?raw&consistent`, over a few keys. Every operation's invocation and
//! completion are taken on one clock; a write that failed or timed out may or may not have
//! happened. Meanwhile the [`nemesis`](crate::nemesis) injects one fault after another
//! ([`Plan::gap`] between one's heal and the next), cycling through [`Plan::faults`]. When the time is up and enough faults
//! were injected, the clients stop, every server reads every key once more, and
//! [`lincheck`](crate::lincheck) checks the history.
//!
//! A run that finds no linearization saves, under [`Plan::artifacts`]: `history.jsonl` (every
//! operation), `faults.json` (the fault timeline), `violation.txt` (the failing segment on a
//! timeline, the longest valid order found and the faults around it), `violation.json`,
//! `summary.json`, and each server's log.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use reqwest::Method;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterSpec};
use crate::lincheck::{self, Kind, Op, Report};
use crate::nemesis::{self, Fault, Injected};
use crate::Api;

/// The shape of one run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The clients run at least this long...
    pub duration: Duration,
    /// ...and until this many faults were injected.
    pub min_faults: usize,
    /// The pause between one fault's heal and the next fault.
    pub gap: Duration,
    pub faults: Vec<Fault>,
    pub clients: usize,
    pub keys: usize,
    /// A client gives up on a request after this long (a write's outcome is then unknown).
    pub op_timeout: Duration,
    pub seed: u64,
    /// The servers' `snapshot_threshold`: small, so that snapshots are taken and installed
    /// during the run.
    pub snapshot_threshold: u64,
    /// Where a failing run leaves its history.
    pub artifacts: PathBuf,
    /// Save the history of a run that passed too (`LINCHECK_SAVE=always`).
    pub save_always: bool,
}

/// Most operations one client sends in a run, whatever its length.
const MAX_OPS_PER_CLIENT: usize = 2_000_000;
/// How long the cluster may go without a leader after a fault is healed.
const LEADER_WAIT: Duration = Duration::from_secs(30);

impl Plan {
    /// The run in CI: about 60 s, at least 10 faults, every kind of fault at least once.
    pub fn ci(seed: u64) -> Plan {
        Plan {
            duration: Duration::from_secs(60),
            min_faults: 10,
            gap: Duration::from_millis(1500),
            faults: faults_from_env(),
            clients: 4,
            keys: 3,
            op_timeout: Duration::from_secs(3),
            seed,
            snapshot_threshold: 100,
            artifacts: default_artifacts(),
            save_always: std::env::var("LINCHECK_SAVE").is_ok_and(|v| v == "always"),
        }
    }

    /// One run of the long mode: `seconds` long and at least one fault per 7.5 s of it.
    pub fn soak(seed: u64, seconds: u64) -> Plan {
        Plan {
            duration: Duration::from_secs(seconds),
            min_faults: (seconds as f64 / 7.5).ceil() as usize,
            ..Plan::ci(seed)
        }
    }
}

/// The faults named in `LIN_FAULTS` (comma-separated), else every kind.
fn faults_from_env() -> Vec<Fault> {
    match std::env::var("LIN_FAULTS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|n| {
                Fault::parse(n.trim()).unwrap_or_else(|| panic!("LIN_FAULTS: no fault named {n:?}"))
            })
            .collect(),
        _ => Fault::ALL.to_vec(),
    }
}

/// `target/lincheck` of the workspace (or `$LINCHECK_ARTIFACTS`).
pub fn default_artifacts() -> PathBuf {
    if let Ok(dir) = std::env::var("LINCHECK_ARTIFACTS") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("lincheck")
}

/// What a run did and what the check found.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub seed: u64,
    /// Wall-clock time of the history's zero, to line the history up with the servers' logs.
    pub started_unix_ms: u128,
    pub seconds: f64,
    pub ops: usize,
    pub reads_ok: usize,
    pub reads_failed: usize,
    pub writes_ok: usize,
    pub writes_unknown: usize,
    /// Latency of the reads and writes that succeeded: median and 99th percentile, in ms.
    pub read_ms: (f64, f64),
    pub write_ms: (f64, f64),
    pub faults: Vec<Injected>,
    /// Server starts that loaded the state from a stored snapshot.
    pub snapshot_loads: usize,
    /// Snapshots installed from a leader.
    pub snapshot_installs: usize,
    /// Times a server took the lead (an election won, or its leadership restored at a
    /// restart), from the servers' logs.
    pub leaderships: usize,
    pub check_ms: u128,
    pub check: Report,
    /// Where the history was saved (a failing run only).
    pub artifacts: Option<PathBuf>,
}

impl Outcome {
    pub fn linearizable(&self) -> bool {
        self.check.linearizable()
    }

    /// One line for a log: the counts and the verdict.
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {:.0} s, {} ops ({} reads ok, {} failed; {} writes ok, {} unknown; p50/p99 \
             read {:.1}/{:.1} ms, write {:.1}/{:.1} ms), {} faults, {} leaderships, {} snapshot \
             loads, {} installs; check: {} segments (largest {}), {} configurations in {} ms: {}",
            self.seed,
            self.seconds,
            self.ops,
            self.reads_ok,
            self.reads_failed,
            self.writes_ok,
            self.writes_unknown,
            self.read_ms.0,
            self.read_ms.1,
            self.write_ms.0,
            self.write_ms.1,
            self.faults.len(),
            self.leaderships,
            self.snapshot_loads,
            self.snapshot_installs,
            self.check.segments,
            self.check.largest_segment,
            self.check.configurations,
            self.check_ms,
            if self.linearizable() {
                "linearizable".to_string()
            } else if let Some(v) = &self.check.violation {
                format!("NOT LINEARIZABLE (key {}: {})", v.key, v.reason)
            } else {
                format!("inconclusive: {:?}", self.check.inconclusive)
            }
        )
    }
}

type History = Arc<Mutex<Vec<Op>>>;

fn micros(t0: Instant) -> u64 {
    t0.elapsed().as_micros() as u64
}

fn key_path(key: &str) -> String {
    format!("/v1/kv/{key}")
}

/// One operation against `api`, recorded in `history`.
async fn one_op(
    api: &Api,
    server: &str,
    client: usize,
    key: &str,
    write: Option<String>,
    timeout: Duration,
    t0: Instant,
) -> Op {
    let invoke = micros(t0);
    let (kind, res) = match &write {
        Some(v) => (
            Kind::Write,
            api.send(
                Method::PUT,
                &key_path(key),
                Some(v.clone().into_bytes()),
                Some(timeout),
            )
            .await,
        ),
        None => (
            Kind::Read,
            api.send(
                Method::GET,
                &format!("{}?raw&consistent", key_path(key)),
                None,
                Some(timeout),
            )
            .await,
        ),
    };
    let done = micros(t0);
    let mut op = Op {
        client,
        key: key.to_string(),
        kind,
        value: write.clone(),
        invoke,
        complete: Some(done),
        ok: false,
        server: server.to_string(),
        error: String::new(),
    };
    match res {
        Err(e) => {
            op.complete = None;
            op.error = if e.is_timeout() {
                "timeout".into()
            } else {
                format!("{e}")
            };
        }
        Ok(r) => match (kind, r.status) {
            (Kind::Write, 200) if r.text().trim() == "true" => op.ok = true,
            (Kind::Read, 200) => {
                op.ok = true;
                op.value = Some(r.text());
            }
            (Kind::Read, 404) => {
                op.ok = true;
                op.value = None;
            }
            (_, status) => {
                let body = r.text();
                op.error = format!(
                    "{status}: {}",
                    body.trim().chars().take(200).collect::<String>()
                );
            }
        },
    }
    op
}

/// Runs `plan` against a new cluster.
pub async fn run(plan: &Plan) -> anyhow::Result<Outcome> {
    let mut spec = ClusterSpec::default()
        .servers(3)
        .snapshot_threshold(plan.snapshot_threshold);
    spec.log_level = "info".into();
    let mut cluster = Cluster::start(spec).await;
    let servers: Vec<(String, Api)> = cluster
        .servers()
        .iter()
        .map(|s| (s.name().to_string(), s.api().clone()))
        .collect();
    let keys: Vec<String> = (0..plan.keys).map(|k| format!("lin/k{k}")).collect();

    let t0 = Instant::now();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let history: History = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..plan.clients {
        let (servers, keys, history, stop) =
            (servers.clone(), keys.clone(), history.clone(), stop.clone());
        let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(1000).wrapping_add(c as u64));
        let timeout = plan.op_timeout;
        clients.spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) && n < MAX_OPS_PER_CLIENT {
                let key = &keys[rng.random_range(0..keys.len())];
                let (name, api) = &servers[rng.random_range(0..servers.len())];
                let write = rng.random_bool(0.5).then(|| format!("c{c}n{n}"));
                let op = one_op(api, name, c, key, write, timeout, t0).await;
                let failed = !op.ok;
                history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(op);
                if failed {
                    // A server that is down refuses at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n += 1;
            }
        });
    }

    let faults = nemesis_loop(&mut cluster, plan, t0).await;
    stop.store(true, Ordering::SeqCst);
    while clients.join_next().await.is_some() {}
    let faults = faults?;

    // Every server reads every key once more, after the last fault healed.
    final_reads(&cluster, &servers, &keys, plan, &history, t0).await?;
    let seconds = t0.elapsed().as_secs_f64();

    let history = std::mem::take(&mut *history.lock().unwrap_or_else(PoisonError::into_inner));
    let checked = Instant::now();
    let check = lincheck::check(&history);
    let check_ms = checked.elapsed().as_millis();

    let count = |kind: Kind, ok: bool| {
        history
            .iter()
            .filter(|o| o.kind == kind && o.ok == ok)
            .count()
    };
    // From the servers' logs, each read once.
    let (mut snapshot_loads, mut snapshot_installs, mut leaderships) = (0, 0, 0);
    for server in cluster.servers() {
        for line in server.log().lines() {
            snapshot_loads +=
                usize::from(line.contains("loaded the state from the stored snapshot"));
            snapshot_installs += usize::from(line.contains("installed a snapshot"));
            leaderships += usize::from(line.contains("state=Leader"));
        }
    }
    let mut outcome = Outcome {
        seed: plan.seed,
        started_unix_ms,
        seconds,
        ops: history.len(),
        reads_ok: count(Kind::Read, true),
        reads_failed: count(Kind::Read, false),
        writes_ok: count(Kind::Write, true),
        writes_unknown: count(Kind::Write, false),
        read_ms: latency(&history, Kind::Read),
        write_ms: latency(&history, Kind::Write),
        faults,
        snapshot_loads,
        snapshot_installs,
        leaderships,
        check_ms,
        check,
        artifacts: None,
    };
    if !outcome.linearizable() || plan.save_always {
        save(&cluster, plan, &history, &mut outcome)?;
    }
    Ok(outcome)
}

/// Median and 99th percentile latency (ms) of the successful operations of `kind`.
fn latency(history: &[Op], kind: Kind) -> (f64, f64) {
    let mut l: Vec<u64> = history
        .iter()
        .filter(|o| o.kind == kind && o.ok)
        .filter_map(|o| o.complete.map(|c| c - o.invoke))
        .collect();
    if l.is_empty() {
        return (0.0, 0.0);
    }
    l.sort_unstable();
    let at = |q: f64| l[((l.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

/// Injects faults until the plan is done; every fault is healed when it returns.
async fn nemesis_loop(
    cluster: &mut Cluster,
    plan: &Plan,
    t0: Instant,
) -> anyhow::Result<Vec<Injected>> {
    let mut rng = StdRng::seed_from_u64(plan.seed ^ 0x006e_656d_6573_6973);
    let hard_bound = plan.duration * 2 + Duration::from_secs(120);
    let clock = move || t0.elapsed().as_millis() as u64;
    let mut done = Vec::new();
    let mut k = 0u32;
    while t0.elapsed() < plan.duration || done.len() < plan.min_faults {
        anyhow::ensure!(
            t0.elapsed() < hard_bound,
            "only {} of {} faults within {hard_bound:?}",
            done.len(),
            plan.min_faults
        );
        tokio::time::sleep(plan.gap).await;
        let fault = plan.faults[k as usize % plan.faults.len()];
        k += 1;
        let leader = wait_leader(cluster).await;
        let mut pick = |n: usize| rng.random_range(0..n);
        let injected = nemesis::inject(cluster, fault, leader, &mut pick, &clock).await?;
        tracing_line(&injected);
        done.push(injected);
    }
    Ok(done)
}

fn tracing_line(i: &Injected) {
    eprintln!(
        "[{:>7.1} s] {} on {} (leader {}), healed at {:.1} s",
        i.start_ms as f64 / 1000.0,
        i.fault.name(),
        i.victims.join(", "),
        i.leader.as_deref().unwrap_or("unknown"),
        i.healed_ms as f64 / 1000.0
    );
}

/// The current leader, waiting up to [`LEADER_WAIT`] for one; `None` if none came.
async fn wait_leader(cluster: &Cluster) -> Option<usize> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(l) = cluster.leader_within(Duration::from_secs(1)).await {
            return Some(l);
        }
        if Instant::now() > deadline {
            eprintln!(
                "no leader within {LEADER_WAIT:?}; the next fault picks its victim at random"
            );
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn final_reads(
    cluster: &Cluster,
    servers: &[(String, Api)],
    keys: &[String],
    plan: &Plan,
    history: &History,
    t0: Instant,
) -> anyhow::Result<()> {
    let _ = wait_leader(cluster).await;
    let client = plan.clients;
    for (name, api) in servers {
        for key in keys {
            let deadline = Instant::now() + LEADER_WAIT;
            loop {
                let op = one_op(api, name, client, key, None, plan.op_timeout, t0).await;
                let ok = op.ok;
                history
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(op);
                if ok {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{name} answered no consistent read of {key} within {LEADER_WAIT:?} after the faults"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// Saves what a failing run needs to be understood, and records where in `outcome`.
fn save(
    cluster: &Cluster,
    plan: &Plan,
    history: &[Op],
    outcome: &mut Outcome,
) -> anyhow::Result<()> {
    let dir = plan
        .artifacts
        .join(format!("{}-seed{}", outcome.started_unix_ms, plan.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).with_context(|| format!("write {name}"))
    };
    let mut lines = String::new();
    for op in history {
        lines.push_str(&serde_json::to_string(op)?);
        lines.push('\n');
    }
    write("history.jsonl", lines)?;
    write(
        "faults.json",
        serde_json::to_string_pretty(&outcome.faults)?,
    )?;
    if let Some(v) = &outcome.check.violation {
        let from = v.ops.iter().map(|o| o.invoke).min().unwrap_or(0) / 1000;
        let to = v.ops.iter().filter_map(|o| o.complete).max().unwrap_or(0) / 1000;
        let mut text = v.render();
        text.push_str(&format!(
            "\nsegment: {:.3} s to {:.3} s of the run (history zero: unix {} ms)\nfaults around it:\n",
            from as f64 / 1000.0,
            to as f64 / 1000.0,
            outcome.started_unix_ms
        ));
        for f in &outcome.faults {
            if f.healed_ms + 10_000 >= from && f.start_ms <= to + 1000 {
                text.push_str(&format!(
                    "  {:.3} s - {:.3} s: {} on {} (leader {})\n",
                    f.start_ms as f64 / 1000.0,
                    f.healed_ms as f64 / 1000.0,
                    f.fault.name(),
                    f.victims.join(", "),
                    f.leader.as_deref().unwrap_or("unknown")
                ));
            }
        }
        write("violation.txt", text)?;
        write("violation.json", serde_json::to_string_pretty(v)?)?;
    }
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    for s in cluster.servers() {
        let _ = std::fs::copy(s.log_path(), logs.join(format!("{}.log", s.name())));
    }
    outcome.artifacts = Some(dir.clone());
    write("summary.json", serde_json::to_string_pretty(&*outcome)?)?;
    Ok(())
}
