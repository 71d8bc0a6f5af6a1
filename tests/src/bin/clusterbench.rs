//! clusterbench: a meshd cluster against an etcd cluster of the same size on one machine, and
//! the propagation of a registration to agents' local views. Used by `tests/bench/cluster.sh`.
//!
//! Layout (the tests crate's [`tests::netns`] and [`tests::cluster`] harness): one bridge, one
//! network namespace per host. Hosts `0..servers` run the meshd servers (mutual-TLS QUIC,
//! `bootstrap_expect`, sled with durable group commit), the next `agents` hosts the meshd
//! agents (enrolled with the join token, `retry_join` = the servers), and the last `servers`
//! hosts the etcd members (`--initial-cluster`, data dirs beside meshd's). Every HTTP API
//! listens on the host's mesh address; the load comes from the root namespace, which has an
//! address on the bridge.
//!
//! Phases:
//!
//! 1. **Throughput** (`--phase throughput|all`): the servers and etcd members only. For each
//!    round and each client count, `regbench` (the registration load tool) runs against meshd
//!    (`PUT /v1/catalog/register`) and etcd (`POST /v3/kv/put`, the same registration JSON as
//!    value), interleaved (meshd first in odd rounds, etcd first in even ones). With
//!    `--write-to all` (default) the clients spread round-robin over every server / member:
//!    followers forward to the leader on both sides; `--write-to leader` sends everything to
//!    the leader. Each run prints regbench's JSON line on stdout, and on stderr what the
//!    leader's disk did (syncs and appends per sync, from meshd's `/metrics` and etcd's) and
//!    the CPU each side used.
//! 2. **Propagation** (`--phase propagation|all`): etcd is stopped, the throughput phase's node
//!    and services are deregistered (unless `--keep-load-data`), and the agents start. For
//!    each sample, every agent gets a blocking query on the new service's name
//!    (`GET /v1/catalog/service/<name>?stale&index=<X-Consul-Index>&wait=5s`), opened before
//!    the write (checked with each agent's `meshd_api_blocking_queries` gauge); then one agent
//!    (in turn) registers the service (`PUT /v1/agent/service/register`). The time the 200
//!    came back is the acknowledgment; each agent's visibility is when its blocking query
//!    answered with the instance. Prints one JSON line with p50/p99/max of (visible - acked)
//!    over all agent x sample pairs; a pair seen before the acknowledgment counts as 0 and is
//!    counted in `negative`.
//!
//! Finally a Markdown summary (averages over rounds, meshd/etcd ratios) on stdout. Every loop
//! is bounded in time and count; SIGINT/SIGTERM (and any failure) stop every process and
//! remove the namespaces and the temp dir (`MESHD_KEEP_LOGS=1` keeps the dir).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use clap::{Parser, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use tests::cluster::{self, Cluster, ClusterSpec, HTTP_PORT};
use tests::sys::metric_value;
use tests::Api;

#[path = "common/stats.rs"]
mod stats;
use stats::{percentile_ms, round3};

/// etcd's client and peer ports (each member in its own namespace).
const ETCD_CLIENT_PORT: u16 = 2379;
const ETCD_PEER_PORT: u16 = 2380;
/// How long the etcd members may take to report healthy.
const ETCD_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a probe (health, status, metrics).
const PROBE: Duration = Duration::from_secs(5);
/// Pause between two load runs, so background work of one (snapshots, compaction) does not
/// land in the next.
const PAUSE_BETWEEN_RUNS: Duration = Duration::from_secs(2);
/// The `wait` of a propagation blocking query.
const BLOCKING_WAIT: &str = "5s";
/// How long one propagation sample may take before an agent counts as not having seen it.
const SAMPLE_GIVE_UP: Duration = Duration::from_secs(10);
/// How long to wait for every agent's blocking query to be parked before the write.
const ARM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WriteTo {
    /// Clients spread round-robin over every server (etcd: every member).
    All,
    /// Every client writes to the leader.
    Leader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Throughput,
    Propagation,
    All,
}

/// meshd cluster vs etcd cluster writes/s, and propagation to agents.
#[derive(Parser, Debug)]
#[command(name = "clusterbench")]
struct Args {
    /// meshd servers, and etcd members.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// meshd agents for the propagation phase.
    #[arg(long, default_value_t = 10)]
    agents: usize,
    /// Client counts of the throughput runs (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    clients: Vec<usize>,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Repetitions of the throughput matrix (the meshd/etcd order alternates).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where the writes go.
    #[arg(long, value_enum, default_value_t = WriteTo::All)]
    write_to: WriteTo,
    /// Propagation samples (registrations).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Bound on the whole propagation phase, in seconds (fewer samples when it ends first).
    #[arg(long, default_value_t = 300.0)]
    propagation_limit: f64,
    /// Which phases to run.
    #[arg(long, value_enum, default_value_t = Phase::All)]
    phase: Phase,
    /// The regbench binary (default: beside this one).
    #[arg(long)]
    regbench: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    /// meshd's log level (nodes' logs are in the temp dir).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Start the agents with the throughput phase's registrations still in the catalog
    /// (hundreds of thousands of services) instead of deregistering their node first.
    #[arg(long)]
    keep_load_data: bool,
}

// ---------------------------------------------------------------------------------------------
// etcd members
// ---------------------------------------------------------------------------------------------

/// One etcd process in a host of the cluster's net. Dropping it SIGKILLs it.
struct EtcdMember {
    name: String,
    url: String,
    api: Api,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl EtcdMember {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `members` etcd members on the cluster's spare hosts and waits until all are healthy.
async fn start_etcd(
    cluster: &Cluster,
    etcd: &Path,
    members: usize,
) -> anyhow::Result<Vec<EtcdMember>> {
    let hosts: Vec<(String, usize)> = (0..members)
        .map(|k| (format!("e{}", k + 1), cluster.spare_host(k)))
        .collect();
    let peer_url = |h: usize| format!("http://{}:{ETCD_PEER_PORT}", cluster.net().host(h).mesh_ip);
    let initial: Vec<String> = hosts
        .iter()
        .map(|(n, h)| format!("{n}={}", peer_url(*h)))
        .collect();
    let initial = initial.join(",");
    let mut out = Vec::new();
    for (name, h) in &hosts {
        let url = format!(
            "http://{}:{ETCD_CLIENT_PORT}",
            cluster.net().host(*h).mesh_ip
        );
        let data = cluster.root().join("data").join(name);
        let log = cluster.root().join("logs").join(format!("{name}.log"));
        let log_file = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let child = cluster
            .net()
            .command(*h, etcd)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &url])
            .args(["--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url(*h)])
            .args(["--initial-advertise-peer-urls", &peer_url(*h)])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "clusterbench"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {} in host {h}", etcd.display()))?;
        out.push(EtcdMember {
            name: name.clone(),
            api: Api::new(&url),
            url,
            log,
            child: Some(child),
        });
    }
    let start = Instant::now();
    for m in &mut out {
        loop {
            let healthy = m
                .api
                .send(Method::GET, "/health", None, Some(PROBE))
                .await
                .is_ok_and(|r| r.status == 200 && r.text().contains("\"health\":\"true\""));
            if healthy {
                break;
            }
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || start.elapsed() > ETCD_READY_TIMEOUT {
                bail!(
                    "etcd member {} not healthy (exited: {exited:?}) after {:?}\n---- {} \
                     ----\n{}",
                    m.name,
                    start.elapsed(),
                    m.log.display(),
                    cluster::log_tail(&m.log, 8 * 1024)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(out)
}

/// The node regbench registers its services on (its default `--node`).
const BENCH_NODE: &str = "bench-node";

/// Deregisters the throughput phase's node (and so its services) in one write, and waits until
/// every server's local state has dropped it.
async fn drop_load_data(cluster: &mut Cluster) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let leader = cluster.wait_leader(cluster::LEADER_TIMEOUT).await;
    let services = |r: &tests::Resp| {
        serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["Services"].as_object().map(|m| m.len()))
            .unwrap_or(0)
    };
    let r = cluster
        .server(leader)
        .api()
        .send(
            Method::GET,
            &format!("/v1/catalog/node/{BENCH_NODE}?stale"),
            None,
            Some(Duration::from_secs(60)),
        )
        .await?;
    let n = if r.status == 200 { services(&r) } else { 0 };
    let body = serde_json::to_vec(&json!({ "Node": BENCH_NODE }))?;
    let r = cluster
        .server(leader)
        .api()
        .send(
            Method::PUT,
            "/v1/catalog/deregister",
            Some(body),
            Some(Duration::from_secs(60)),
        )
        .await?;
    ensure!(
        r.status == 200,
        "deregister {BENCH_NODE}: {} {}",
        r.status,
        r.text()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    for s in cluster.servers() {
        loop {
            let r = s
                .api()
                .send(
                    Method::GET,
                    &format!("/v1/catalog/node/{BENCH_NODE}?stale"),
                    None,
                    Some(PROBE),
                )
                .await;
            if r.is_ok_and(|r| r.status == 404) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} still lists {BENCH_NODE} 60 s after its deregistration",
                s.name()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "== deregistered {BENCH_NODE} ({n} services) on every server in {:.1?}",
        t0.elapsed()
    );
    Ok(())
}

/// The index of the member every member names as leader (`/v3/maintenance/status`).
async fn etcd_leader(members: &[EtcdMember]) -> Option<usize> {
    let mut ids = Vec::new();
    let mut leaders = Vec::new();
    for m in members {
        let r = m
            .api
            .send(
                Method::POST,
                "/v3/maintenance/status",
                Some(b"{}".to_vec()),
                Some(PROBE),
            )
            .await
            .ok()?;
        let v: Value = serde_json::from_slice(&r.body).ok()?;
        ids.push(v["header"]["member_id"].as_str()?.to_string());
        leaders.push(v["leader"].as_str()?.to_string());
    }
    let first = leaders.first()?;
    if leaders.iter().any(|l| l != first) {
        return None;
    }
    ids.iter().position(|id| id == first)
}

// ---------------------------------------------------------------------------------------------
// Measurements around a run: the leader's disk, CPU per process
// ---------------------------------------------------------------------------------------------

/// CPU seconds (user + system) a process used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds used by this process's waited-for children (the regbench runs).
#[allow(unsafe_code)]
fn children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage writes only into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of each named process.
fn cpu_of(procs: &[(String, Option<u32>)]) -> Vec<(String, f64)> {
    procs
        .iter()
        .map(|(n, pid)| (n.clone(), pid.and_then(cpu_seconds).unwrap_or(0.0)))
        .collect()
}

/// Prometheus text of `<api>/metrics`, empty when it does not answer.
async fn metrics_text(api: &Api) -> String {
    match api.send(Method::GET, "/metrics", None, Some(PROBE)).await {
        Ok(r) if r.status == 200 => r.text(),
        _ => String::new(),
    }
}

/// Counters of the leader's write path; deltas over a run tell how it batched and synced.
#[derive(Clone, Copy, Debug, Default)]
struct DiskCounters {
    /// meshd: group commits; etcd: WAL fsyncs.
    syncs: f64,
    sync_seconds: f64,
    /// meshd: log entries made durable by the group commits (each a batch of writes).
    appends: f64,
    /// meshd: Raft writes (registry writes through Raft) and their total time.
    writes: f64,
    write_seconds: f64,
}

impl DiskCounters {
    fn meshd(text: &str) -> DiskCounters {
        let m = |n: &str| metric_value(text, n).unwrap_or(0.0);
        DiskCounters {
            syncs: m("meshd_raft_log_flush_batch_count"),
            sync_seconds: m("meshd_raft_log_flush_duration_seconds_sum"),
            appends: m("meshd_raft_log_flush_batch_sum"),
            writes: m("meshd_raft_write_duration_seconds_count"),
            write_seconds: m("meshd_raft_write_duration_seconds_sum"),
        }
    }

    fn etcd(text: &str) -> DiskCounters {
        let m = |n: &str| metric_value(text, n).unwrap_or(0.0);
        DiskCounters {
            syncs: m("etcd_disk_wal_fsync_duration_seconds_count"),
            sync_seconds: m("etcd_disk_wal_fsync_duration_seconds_sum"),
            ..DiskCounters::default()
        }
    }

    fn minus(self, before: DiskCounters) -> DiskCounters {
        DiskCounters {
            syncs: self.syncs - before.syncs,
            sync_seconds: self.sync_seconds - before.sync_seconds,
            appends: self.appends - before.appends,
            writes: self.writes - before.writes,
            write_seconds: self.write_seconds - before.write_seconds,
        }
    }
}

fn per(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// One side of the comparison, as the load tool sees it.
struct Target {
    name: &'static str,
    urls: Vec<String>,
    /// The leader's API (for its `/metrics`).
    leader_api: Api,
    leader_name: String,
    /// Processes whose CPU is counted for this side.
    procs: Vec<(String, Option<u32>)>,
}

/// Runs regbench once; returns its JSON line.
async fn run_regbench(
    regbench: &Path,
    target: &Target,
    clients: usize,
    duration: f64,
    prefix: &str,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(regbench);
    cmd.args(["--target", target.name])
        .args(["--clients", &clients.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--prefix", prefix])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for u in &target.urls {
        cmd.args(["--url", u]);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("run {}", regbench.display()))?;
    let bound = Duration::from_secs_f64(duration) + Duration::from_secs(90);
    let out = tokio::time::timeout(bound, child.wait_with_output())
        .await
        .with_context(|| format!("regbench did not finish within {bound:?}"))??;
    ensure!(out.status.success(), "regbench failed ({})", out.status);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    serde_json::from_str::<Value>(&line)
        .with_context(|| format!("regbench printed {line:?}, not a JSON line"))?;
    Ok(line)
}

/// One measured run: regbench's line, plus what the leader and the processes did meanwhile.
async fn measured_run(
    regbench: &Path,
    target: &Target,
    clients: usize,
    duration: f64,
    prefix: &str,
) -> anyhow::Result<Value> {
    let parse = |t: &str| match target.name {
        "meshd" => DiskCounters::meshd(t),
        _ => DiskCounters::etcd(t),
    };
    let disk0 = parse(&metrics_text(&target.leader_api).await);
    let cpu0 = cpu_of(&target.procs);
    let load0 = children_cpu_seconds();
    let t0 = Instant::now();
    let line = run_regbench(regbench, target, clients, duration, prefix).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let load = children_cpu_seconds() - load0;
    let cpu1 = cpu_of(&target.procs);
    let disk = parse(&metrics_text(&target.leader_api).await).minus(disk0);
    println!("{line}");
    let run: Value = serde_json::from_str(&line)?;
    let acked = run["requests"].as_f64().unwrap_or(0.0);

    let cores: Vec<String> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|((n, a), (_, b))| format!("{n} {:.2}", (b - a) / elapsed))
        .collect();
    let total: f64 = cpu0.iter().zip(&cpu1).map(|((_, a), (_, b))| b - a).sum();
    let disk_note = if target.name == "meshd" {
        format!(
            "{:.0} group commits ({:.1} writes and {:.1} log entries per sync, mean sync {:.2} \
             ms), mean Raft write {:.2} ms",
            disk.syncs,
            per(acked, disk.syncs),
            per(disk.appends, disk.syncs),
            1000.0 * per(disk.sync_seconds, disk.syncs),
            1000.0 * per(disk.write_seconds, disk.writes),
        )
    } else {
        format!(
            "{:.0} WAL fsyncs ({:.1} writes per fsync, mean fsync {:.2} ms)",
            disk.syncs,
            per(acked, disk.syncs),
            1000.0 * per(disk.sync_seconds, disk.syncs),
        )
    };
    eprintln!(
        "   {} {clients} clients: leader {}: {disk_note}; CPU (cores): {} = {:.2}, regbench \
         {:.2}",
        target.name,
        target.leader_name,
        cores.join(", "),
        total / elapsed,
        load / elapsed
    );
    Ok(run)
}

async fn throughput(
    args: &Args,
    regbench: &Path,
    cluster: &mut Cluster,
    etcd: &[EtcdMember],
) -> anyhow::Result<Vec<Value>> {
    let leader = cluster.wait_leader(cluster::LEADER_TIMEOUT).await;
    let mesh_url = |i: usize| format!("http://{}:{HTTP_PORT}", cluster.server(i).mesh_ip());
    let meshd_urls = match args.write_to {
        WriteTo::All => (0..args.servers).map(mesh_url).collect(),
        WriteTo::Leader => vec![mesh_url(leader)],
    };
    let meshd = Target {
        name: "meshd",
        urls: meshd_urls,
        leader_api: Api::new(&mesh_url(leader)),
        leader_name: cluster.server(leader).name().to_string(),
        procs: cluster
            .servers()
            .iter()
            .map(|s| (s.name().to_string(), s.pid()))
            .collect(),
    };
    let mut e_leader = None;
    let start = Instant::now();
    while e_leader.is_none() && start.elapsed() < ETCD_READY_TIMEOUT {
        e_leader = etcd_leader(etcd).await;
        if e_leader.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let e_leader = e_leader.context("the etcd members do not agree on a leader")?;
    let etcd_target = Target {
        name: "etcd",
        urls: match args.write_to {
            WriteTo::All => etcd.iter().map(|m| m.url.clone()).collect(),
            WriteTo::Leader => vec![etcd[e_leader].url.clone()],
        },
        leader_api: etcd[e_leader].api.clone(),
        leader_name: etcd[e_leader].name.clone(),
        procs: etcd.iter().map(|m| (m.name.clone(), m.pid())).collect(),
    };
    eprintln!(
        "== throughput: meshd leader {} ({}), etcd leader {} ({}); writes to {:?}: meshd {:?}, \
         etcd {:?}",
        meshd.leader_name,
        cluster.server(leader).mesh_ip(),
        etcd_target.leader_name,
        etcd_target.urls.len(),
        args.write_to,
        meshd.urls,
        etcd_target.urls
    );
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &c in &args.clients {
            let order = if round % 2 == 1 {
                [&meshd, &etcd_target]
            } else {
                [&etcd_target, &meshd]
            };
            for t in order {
                let prefix = format!("r{round}-c{c}");
                let r = measured_run(regbench, t, c, args.duration, &prefix).await?;
                runs.push(r);
                tokio::time::sleep(PAUSE_BETWEEN_RUNS).await;
            }
        }
    }
    // A leader change during the runs would make the figures above a different experiment.
    let after = cluster.wait_leader(cluster::LEADER_TIMEOUT).await;
    if after != leader {
        eprintln!(
            "WARNING: the meshd leader changed during the runs ({} -> {})",
            cluster.server(leader).name(),
            cluster.server(after).name()
        );
    }
    if etcd_leader(etcd).await != Some(e_leader) {
        eprintln!("WARNING: the etcd leader changed during the runs");
    }
    Ok(runs)
}

// ---------------------------------------------------------------------------------------------
// Propagation
// ---------------------------------------------------------------------------------------------

/// What one propagation sample measured.
struct Sample {
    /// Time from sending the registration to its 200.
    ack: Duration,
    /// Per agent: visible minus acknowledged, in seconds (negative: seen before the ack);
    /// `None` when the agent did not see it within [`SAMPLE_GIVE_UP`].
    seen: Vec<Option<f64>>,
    /// Agents whose blocking query was not confirmed parked before the write.
    unarmed: usize,
}

/// Whether a `/v1/catalog/service/<name>` answer lists instance `id`.
fn lists(body: &[u8], id: &str) -> bool {
    serde_json::from_slice::<Vec<Value>>(body)
        .is_ok_and(|l| l.iter().any(|s| s["ServiceID"].as_str() == Some(id)))
}

/// Blocking queries on `name` from `index` until instance `id` shows up; when it does, the
/// instant its answer arrived.
async fn watch_for(
    api: Api,
    name: String,
    id: String,
    mut index: u64,
    give_up: Instant,
) -> Option<Instant> {
    while Instant::now() < give_up {
        let path = format!("/v1/catalog/service/{name}?stale&index={index}&wait={BLOCKING_WAIT}");
        match api
            .send(Method::GET, &path, None, Some(Duration::from_secs(10)))
            .await
        {
            Ok(r) if r.status == 200 => {
                let at = Instant::now();
                if lists(&r.body, &id) {
                    return Some(at);
                }
                if let Some(i) = r.index() {
                    index = i;
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    None
}

/// How many blocking queries `api` has parked.
async fn parked_queries(api: &Api) -> f64 {
    metric_value(&metrics_text(api).await, "meshd_api_blocking_queries").unwrap_or(0.0)
}

async fn one_sample(apis: &[Api], writer: usize, name: &str) -> anyhow::Result<Sample> {
    // The index each agent's view of this name has now (the name is new: its table's index).
    let mut indexes = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        let r = api
            .send(
                Method::GET,
                &format!("/v1/catalog/service/{name}?stale"),
                None,
                Some(PROBE),
            )
            .await
            .with_context(|| format!("agent {i}: read {name}"))?;
        ensure!(r.status == 200, "agent {i}: {} {}", r.status, r.text());
        ensure!(!lists(&r.body, name), "agent {i} already lists {name}");
        indexes.push(r.index().context("no X-Consul-Index")?);
    }
    let give_up = Instant::now() + SAMPLE_GIVE_UP;
    let watchers: Vec<_> = apis
        .iter()
        .zip(&indexes)
        .map(|(api, &index)| {
            tokio::spawn(watch_for(
                api.clone(),
                name.to_string(),
                name.to_string(),
                index,
                give_up,
            ))
        })
        .collect();
    // Write only once every agent has its query parked: then the figure is the push latency
    // (a query that arrived after the change would answer at once, which is still correct but
    // adds a request time).
    let armed_by = Instant::now() + ARM_TIMEOUT;
    let mut unarmed = apis.len();
    tokio::time::sleep(Duration::from_millis(10)).await;
    while Instant::now() < armed_by {
        unarmed = 0;
        for api in apis {
            if parked_queries(api).await < 1.0 {
                unarmed += 1;
            }
        }
        if unarmed == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let body = json!({
        "ID": name,
        "Name": name,
        "Port": 20_000,
        "Tags": ["bench", "v1"],
        "Meta": {"bench": "propagation"}
    });
    let sent = Instant::now();
    let r = apis[writer]
        .send(
            Method::PUT,
            "/v1/agent/service/register",
            Some(serde_json::to_vec(&body)?),
            Some(Duration::from_secs(10)),
        )
        .await
        .with_context(|| format!("register {name} on agent {writer}"))?;
    let acked = Instant::now();
    ensure!(
        r.status == 200,
        "register {name} on agent {writer}: {} {}",
        r.status,
        r.text()
    );
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.ok().flatten().map(|at| {
            if at >= acked {
                (at - acked).as_secs_f64()
            } else {
                -(acked - at).as_secs_f64()
            }
        }));
    }
    Ok(Sample {
        ack: acked - sent,
        seen,
        unarmed,
    })
}

async fn propagation(args: &Args, cluster: &mut Cluster) -> anyhow::Result<Value> {
    let t0 = Instant::now();
    for i in 0..args.agents {
        cluster.agent_mut(i).spawn()?;
    }
    for i in 0..args.agents {
        cluster
            .agent_mut(i)
            .wait_serving(cluster::SERVE_TIMEOUT)
            .await?;
    }
    cluster
        .wait_agents_ready(cluster::AGENT_READY_TIMEOUT)
        .await;
    eprintln!(
        "== propagation: {} agents alive after {:.1?}; {} samples",
        args.agents,
        t0.elapsed(),
        args.samples
    );
    let apis: Vec<Api> = cluster
        .agents()
        .iter()
        .map(|a| Api::new(&format!("http://{}:{HTTP_PORT}", a.mesh_ip())))
        .collect();
    let limit = Instant::now() + Duration::from_secs_f64(args.propagation_limit);
    let mut samples = Vec::new();
    for s in 0..args.samples {
        if Instant::now() >= limit {
            eprintln!("WARNING: propagation phase stopped at its time limit after {s} samples");
            break;
        }
        let name = format!("prop-{s}");
        samples.push(one_sample(&apis, s % apis.len(), &name).await?);
    }

    let mut delays = Vec::new();
    let (mut negative, mut missing, mut unarmed) = (0usize, 0usize, 0usize);
    let mut max_negative: f64 = 0.0;
    let mut acks = Vec::new();
    // Visible minus the time the registration was sent (never negative).
    let mut from_send = Vec::new();
    for s in &samples {
        acks.push(s.ack);
        unarmed += s.unarmed;
        for v in &s.seen {
            if let Some(d) = v {
                from_send.push(Duration::from_secs_f64((s.ack.as_secs_f64() + d).max(0.0)));
            }
            match v {
                None => missing += 1,
                Some(d) if *d < 0.0 => {
                    negative += 1;
                    max_negative = max_negative.max(-d);
                    delays.push(Duration::ZERO);
                }
                Some(d) => delays.push(Duration::from_secs_f64(*d)),
            }
        }
    }
    delays.sort();
    acks.sort();
    from_send.sort();
    let line = format!(
        "{{\"target\":\"meshd\",\"test\":\"propagation\",\"agents\":{},\"samples\":{},\
         \"pairs\":{},\"missing\":{missing},\"negative\":{negative},\"p50_ms\":{},\
         \"p99_ms\":{},\"max_ms\":{},\"max_negative_ms\":{},\"unarmed\":{unarmed},\
         \"ack_p50_ms\":{},\"ack_p99_ms\":{},\"sent_p50_ms\":{},\"sent_p99_ms\":{}}}",
        apis.len(),
        samples.len(),
        delays.len() + missing,
        round3(percentile_ms(&delays, 50.0)),
        round3(percentile_ms(&delays, 99.0)),
        round3(percentile_ms(&delays, 100.0)),
        round3(max_negative * 1000.0),
        round3(percentile_ms(&acks, 50.0)),
        round3(percentile_ms(&acks, 99.0)),
        round3(percentile_ms(&from_send, 50.0)),
        round3(percentile_ms(&from_send, 99.0)),
    );
    println!("{line}");
    Ok(serde_json::from_str(&line)?)
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

fn summary(args: &Args, runs: &[Value], prop: Option<&Value>) {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut by: BTreeMap<(usize, String), Vec<&Value>> = BTreeMap::new();
    for r in runs {
        let c = r["clients"].as_u64().unwrap_or(0) as usize;
        let t = r["target"].as_str().unwrap_or("?").to_string();
        by.entry((c, t)).or_default().push(r);
    }
    let avg = |rs: &[&Value], k: &str| rs.iter().map(|r| f(r, k)).sum::<f64>() / rs.len() as f64;
    println!();
    if !runs.is_empty() {
        println!(
            "Cluster: {n} meshd servers vs {n} etcd members, writes to {}, {} s per run, \
             {} round(s) (averages)",
            match args.write_to {
                WriteTo::All => "every server/member (round-robin)",
                WriteTo::Leader => "the leader",
            },
            args.duration,
            args.rounds,
            n = args.servers
        );
        println!();
        println!(
            "| clients | meshd writes/s | meshd p50 ms | meshd p99 ms | etcd writes/s | etcd p50 \
             ms | etcd p99 ms | meshd/etcd writes/s | etcd/meshd p99 |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        let mut errors = 0.0;
        for &c in &args.clients {
            let (Some(m), Some(e)) = (
                by.get(&(c, "meshd".to_string())),
                by.get(&(c, "etcd".to_string())),
            ) else {
                continue;
            };
            errors += m
                .iter()
                .chain(e.iter())
                .map(|r| f(r, "errors"))
                .sum::<f64>();
            println!(
                "| {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                avg(m, "writes_per_s"),
                avg(m, "p50_ms"),
                avg(m, "p99_ms"),
                avg(e, "writes_per_s"),
                avg(e, "p50_ms"),
                avg(e, "p99_ms"),
                per(avg(m, "writes_per_s"), avg(e, "writes_per_s")),
                per(avg(e, "p99_ms"), avg(m, "p99_ms")),
            );
        }
        if errors > 0.0 {
            println!("\nWARNING: {errors} requests failed; see the JSON lines above.");
        }
        println!();
    }
    if let Some(p) = prop {
        println!("Propagation: acknowledged registration -> visible in each agent's local view");
        println!();
        println!(
            "| agents | samples | pairs | p50 ms | p99 ms | max ms | seen before the ack (as 0) \
             | not seen in {} s | register p50 / p99 ms | visible after send p50 / p99 ms |",
            SAMPLE_GIVE_UP.as_secs()
        );
        println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} (max {:.2} ms early) | {} | {:.2} / \
             {:.2} | {:.2} / {:.2} |",
            p["agents"],
            p["samples"],
            p["pairs"],
            f(p, "p50_ms"),
            f(p, "p99_ms"),
            f(p, "max_ms"),
            p["negative"],
            f(p, "max_negative_ms"),
            p["missing"],
            f(p, "ack_p50_ms"),
            f(p, "ack_p99_ms"),
            f(p, "sent_p50_ms"),
            f(p, "sent_p99_ms"),
        );
        if f(p, "unarmed") > 0.0 {
            println!(
                "\nNOTE: {} agent x sample pairs had no blocking query confirmed parked before \
                 the write.",
                p["unarmed"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!((1..=7).contains(&args.servers), "--servers must be 1 to 7");
    ensure!(args.agents >= 1, "--agents must be at least 1");
    ensure!(
        args.duration.is_finite() && args.duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    ensure!(
        args.clients.iter().all(|&c| c >= 1),
        "--clients must be at least 1"
    );
    let do_throughput = args.phase != Phase::Propagation;
    let do_propagation = args.phase != Phase::Throughput;
    let regbench = match &args.regbench {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("regbench"),
    };
    if do_throughput {
        ensure!(
            regbench.is_file(),
            "regbench not found at {} (build it: cargo build --release -p tests --bin \
             regbench, or pass --regbench)",
            regbench.display()
        );
        let v = std::process::Command::new(&args.etcd)
            .arg("--version")
            .output()
            .with_context(|| {
                format!("run {} --version (is etcd installed?)", args.etcd.display())
            })?;
        eprintln!(
            "== {}",
            String::from_utf8_lossy(&v.stdout)
                .lines()
                .next()
                .unwrap_or("etcd ?")
        );
    }
    eprintln!(
        "== meshd {}, meshctl {}",
        tests::binary::meshd_bin().display(),
        cluster::meshctl_bin().display()
    );

    let spec = ClusterSpec {
        servers: args.servers,
        agents: args.agents,
        spare_hosts: if do_throughput { args.servers } else { 0 },
        log_level: args.log_level.clone(),
        ..ClusterSpec::default()
    };
    // Declared first, dropped last: the etcd members and agents go before the network.
    let mut cluster = Cluster::prepare(spec)?;
    eprintln!(
        "== net {} (bridge {}, root {}), files in {}",
        cluster.net().id(),
        cluster.net().bridge(),
        cluster.net().root_mesh_ip(),
        cluster.root().display()
    );
    for i in 0..args.servers {
        cluster.server_mut(i).spawn()?;
    }
    for i in 0..args.servers {
        cluster
            .server_mut(i)
            .wait_serving(cluster::SERVE_TIMEOUT)
            .await?;
    }
    let leader = cluster.wait_leader(cluster::LEADER_TIMEOUT).await;
    eprintln!(
        "== {} meshd servers up, leader {}",
        args.servers,
        cluster.server(leader).name()
    );

    let mut runs = Vec::new();
    if do_throughput {
        let etcd = start_etcd(&cluster, &args.etcd, args.servers).await?;
        eprintln!("== {} etcd members healthy", etcd.len());
        runs = throughput(&args, &regbench, &mut cluster, &etcd).await?;
        drop(etcd);
        if do_propagation && !args.keep_load_data {
            drop_load_data(&mut cluster).await?;
        }
    }
    let prop = if do_propagation {
        Some(propagation(&args, &mut cluster).await?)
    } else {
        None
    };
    summary(&args, &runs, prop.as_ref());
    Ok(())
}

/// Points the harness at the meshd and meshctl beside this binary (the release build that
/// `cluster.sh` makes), unless `MESHD_BIN` / `MESHCTL_BIN` say otherwise.
fn default_binaries() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    for (var, name) in [
        (tests::binary::MESHD_BIN_ENV, "meshd"),
        (cluster::MESHCTL_BIN_ENV, "meshctl"),
    ] {
        let p = exe.with_file_name(name);
        if std::env::var_os(var).is_none() && p.is_file() {
            // Single-threaded still: no runtime or thread has started.
            std::env::set_var(var, p);
        }
    }
}

async fn interrupted() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => bail!("terminated (SIGTERM)"),
        _ = int.recv() => bail!("interrupted (SIGINT)"),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    default_binaries();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On a signal the benchmark's future is dropped: nodes, etcd members, the network and the
    // temp dir go with it.
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            r = interrupted() => r,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from(["clusterbench", "--clients", "16,64", "--rounds", "2"])
            .expect("valid args");
        assert_eq!(a.clients, [16, 64]);
        assert_eq!(a.servers, 3);
        assert_eq!(a.agents, 10);
        assert_eq!(a.write_to, WriteTo::All);
        assert_eq!(a.phase, Phase::All);
    }

    #[test]
    fn disk_counters_from_metrics() {
        let text = "meshd_raft_log_flush_batch_sum 30\n\
                    meshd_raft_log_flush_batch_count 10\n\
                    meshd_raft_write_duration_seconds_count{kind=\"catalog_register\"} 100\n\
                    meshd_raft_write_duration_seconds_count{kind=\"kv_set\"} 20\n";
        let d = DiskCounters::meshd(text);
        assert_eq!(d.syncs, 10.0);
        assert_eq!(d.appends, 30.0);
        assert_eq!(d.writes, 120.0);
        let e = DiskCounters::etcd("etcd_disk_wal_fsync_duration_seconds_count 7\n");
        assert_eq!(e.syncs, 7.0);
        assert_eq!(per(1.0, 0.0), 0.0);
    }

    #[test]
    fn a_catalog_answer_lists_an_instance() {
        assert!(lists(br#"[{"ServiceID":"prop-1"}]"#, "prop-1"));
        assert!(!lists(b"[]", "prop-1"));
        assert!(!lists(b"not json", "prop-1"));
    }

    #[test]
    fn cpu_of_this_process() {
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
