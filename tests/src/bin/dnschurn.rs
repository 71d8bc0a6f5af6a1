//! dnschurn: bulk registration and health churn for the DNS benchmark (`tests/bench/dns.sh`).
//!
//! Both subcommands read a file of catalog registrations, one JSON object per line, as
//! `PUT /v1/catalog/register` takes them (`{"Node", "Address", "Service": {...}, "Checks":
//! [{"CheckID", "Name", "Status", "ServiceID"}]}`); the benchmark script writes that file
//! together with the NSD zone holding the same records.
//!
//! - `register`: PUTs every line, `--concurrency` requests in flight; prints
//!   `{"op":"register","registrations","errors","duration_s","per_s"}`.
//! - `churn`: open-loop health changes at `--rate` per second for `--duration` seconds: change
//!   `k` is due at `start + k / rate`; it picks a random instance (first check of a random line,
//!   not one whose previous change is still in flight) and flips that check between `passing`
//!   and `critical` with `PUT /v1/catalog/register` (`SkipNodeUpdate`, the check only; the
//!   service stays). At most `--concurrency` changes are in flight; a change that cannot start
//!   on time waits and counts as `late` (more than 50 ms behind). Stops sending at the
//!   deadline, waits at most 10 s for the last answers (each request times out after 5 s), and
//!   prints `{"op":"churn","rate","duration_s","changes","errors","late","critical_at_end",
//!   "p50_ms","p99_ms","max_ms"}` (latencies of the acknowledged changes).
//!
//! Every request goes to `--url` (meshd's HTTP API on loopback) only.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[path = "common/stats.rs"]
mod stats;
use stats::{percentile_ms, round3};

/// Bulk catalog registration and health churn against meshd (DNS benchmark).
#[derive(Parser, Debug)]
#[command(name = "dnschurn")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Register every line of the file.
    Register {
        #[command(flatten)]
        common: Common,
    },
    /// Flip the health of random instances at a fixed rate.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Health changes per second (open loop).
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds to go on for.
        #[arg(long, default_value_t = 20.0)]
        duration: f64,
        /// Stop after this many changes (0: no limit but the duration).
        #[arg(long, default_value_t = 0)]
        max_changes: u64,
        /// Seed of the instance choice.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// DNS queries over TCP, one in flight per connection, for a fixed time.
    Query(QueryArgs),
}

#[derive(clap::Args, Debug, Clone)]
struct QueryArgs {
    /// DNS server, IP:PORT (loopback).
    #[arg(long)]
    server: std::net::SocketAddr,
    /// The name to ask for.
    #[arg(long)]
    name: String,
    /// Query type: A, AAAA, SRV, TXT, ANY or a number.
    #[arg(long, default_value = "SRV")]
    qtype: String,
    /// TCP connections, each with one query in flight.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds to go on for.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Seconds to wait for one answer before it counts as a timeout (and the connection is
    /// opened again).
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

#[derive(clap::Args, Debug)]
struct Common {
    /// meshd's HTTP API, e.g. http://127.0.0.1:8500.
    #[arg(long)]
    url: String,
    /// Registrations, one JSON object per line (PUT /v1/catalog/register bodies).
    #[arg(long)]
    file: std::path::PathBuf,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// What a churn change needs of a registration: the node and its (first) check.
#[derive(Debug, Clone)]
struct Instance {
    node: String,
    address: String,
    check_id: String,
    check_name: String,
    service_id: String,
}

impl Instance {
    fn from_registration(v: &Value) -> anyhow::Result<Instance> {
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let check = v
            .get("Checks")
            .and_then(|c| c.get(0))
            .or_else(|| v.get("Check"))
            .context("a registration without a check")?;
        let check_id = s(check, "CheckID").context("a check without CheckID")?;
        Ok(Instance {
            node: s(v, "Node").context("a registration without Node")?,
            address: s(v, "Address").unwrap_or_default(),
            check_name: s(check, "Name").unwrap_or_else(|| check_id.clone()),
            service_id: s(check, "ServiceID").unwrap_or_default(),
            check_id,
        })
    }

    /// The body that sets this instance's check to `status`, leaving the node and service.
    fn status_body(&self, status: &str) -> Value {
        json!({
            "Node": self.node,
            "Address": self.address,
            "SkipNodeUpdate": true,
            "Checks": [{
                "CheckID": self.check_id,
                "Name": self.check_name,
                "ServiceID": self.service_id,
                "Status": status,
            }]
        })
    }
}

fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(5))
        .build()
        .context("build the HTTP client")
}

/// One `PUT /v1/catalog/register`; `Ok` when meshd answered 200 `true`.
async fn put(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<(), String> {
    let resp = client
        .put(url)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if status.is_success() && body.as_ref() == b"true" {
        Ok(())
    } else {
        Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    }
}

/// Counts errors and keeps the first one.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: Mutex<Option<String>>,
}

impl Errors {
    fn add(&self, e: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }

    fn report(&self, tool: &str) -> u64 {
        let n = self.count.load(Ordering::Relaxed);
        if let Some(e) = self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            eprintln!("dnschurn {tool}: {n} errors; first: {e}");
        }
        n
    }
}

async fn register(c: Common) -> anyhow::Result<String> {
    anyhow::ensure!(c.concurrency >= 1, "--concurrency must be at least 1");
    let regs = read_lines(&c.file)?;
    let client = client(c.concurrency)?;
    let url = format!("{}/v1/catalog/register", c.url.trim_end_matches('/'));
    let sem = Arc::new(Semaphore::new(c.concurrency));
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for reg in &regs {
        let permit = sem.clone().acquire_owned().await.context("semaphore")?;
        let body = serde_json::to_vec(reg).context("encode a registration")?;
        let (client, url, errors) = (client.clone(), url.clone(), errors.clone());
        tasks.spawn(async move {
            if let Err(e) = put(&client, &url, body).await {
                errors.add(e);
            }
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = start.elapsed().as_secs_f64();
    let errors = errors.report("register");
    let done = regs.len() as u64 - errors;
    Ok(format!(
        "{{\"op\":\"register\",\"registrations\":{done},\"errors\":{errors},\
         \"duration_s\":{},\"per_s\":{}}}",
        round3(elapsed),
        round3(done as f64 / elapsed.max(1e-9)),
    ))
}

/// xorshift64*: a small, seeded choice of instances (no dependency for it).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 32) as usize * n) >> 32
    }
}

/// Health of each instance and whether a change of it is in flight.
struct Health {
    critical: Vec<bool>,
    busy: Vec<bool>,
}

async fn churn(
    c: Common,
    rate: f64,
    duration: f64,
    max_changes: u64,
    seed: u64,
) -> anyhow::Result<String> {
    anyhow::ensure!(c.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(rate.is_finite() && rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        duration.is_finite() && duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    let instances: Vec<Instance> = read_lines(&c.file)?
        .iter()
        .map(Instance::from_registration)
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!instances.is_empty(), "no registrations in the file");
    let n = instances.len();
    anyhow::ensure!(
        n > c.concurrency,
        "--concurrency must be below the number of instances ({n})"
    );
    let instances = Arc::new(instances);
    let client = client(c.concurrency)?;
    let url = format!("{}/v1/catalog/register", c.url.trim_end_matches('/'));
    let sem = Arc::new(Semaphore::new(c.concurrency));
    let errors = Arc::new(Errors::default());
    let health = Arc::new(Mutex::new(Health {
        critical: vec![false; n],
        busy: vec![false; n],
    }));
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut rng = Rng::new(seed);
    let mut late = 0u64;
    let mut changes = 0u64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        if max_changes > 0 && changes >= max_changes {
            break;
        }
        let due = start + Duration::from_secs_f64(changes as f64 / rate);
        if due >= deadline {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit =
            match tokio::time::timeout_at(deadline.into(), sem.clone().acquire_owned()).await {
                Ok(p) => p.context("semaphore")?,
                Err(_) => break, // still saturated at the deadline
            };
        if Instant::now().duration_since(due) > Duration::from_millis(50) {
            late += 1;
        }
        // A random instance with no change in flight (fewer are busy than there are
        // instances, so this ends).
        let (i, status) = {
            let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
            let i = loop {
                let i = rng.below(n);
                if !h.busy[i] {
                    break i;
                }
            };
            h.busy[i] = true;
            (i, if h.critical[i] { "passing" } else { "critical" })
        };
        let body = serde_json::to_vec(&instances[i].status_body(status))
            .context("encode a check update")?;
        let (client, url, errors, health, latencies) = (
            client.clone(),
            url.clone(),
            errors.clone(),
            health.clone(),
            latencies.clone(),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let outcome = put(&client, &url, body).await;
            let took = sent.elapsed();
            let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
            h.busy[i] = false;
            match outcome {
                Ok(()) => {
                    h.critical[i] = status == "critical";
                    drop(h);
                    latencies
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(took);
                }
                Err(e) => {
                    drop(h);
                    errors.add(e);
                }
            }
            drop(permit);
        });
        changes += 1;
        while tasks.try_join_next().is_some() {}
    }
    let sending = start.elapsed().as_secs_f64();
    // The last answers: each request times out after 5 s anyway.
    let drain = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drain.is_err() {
        tasks.abort_all();
        eprintln!("dnschurn churn: requests still running 10 s after the deadline, aborted");
    }
    let errors_n = errors.report("churn");
    let critical_at_end = health
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .critical
        .iter()
        .filter(|c| **c)
        .count();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    lat.sort();
    let acked = lat.len() as u64;
    Ok(format!(
        "{{\"op\":\"churn\",\"rate\":{rate},\"duration_s\":{},\"changes\":{changes},\
         \"acknowledged\":{acked},\"errors\":{errors_n},\"late\":{late},\"instances\":{n},\
         \"critical_at_end\":{critical_at_end},\"changes_per_s\":{},\"p50_ms\":{},\
         \"p99_ms\":{},\"max_ms\":{}}}",
        round3(sending),
        round3(acked as f64 / sending.max(1e-9)),
        round3(percentile_ms(&lat, 50.0)),
        round3(percentile_ms(&lat, 99.0)),
        round3(percentile_ms(&lat, 100.0)),
    ))
}

/// The numeric value of a query type name.
fn qtype_code(t: &str) -> anyhow::Result<u16> {
    Ok(match t.to_ascii_uppercase().as_str() {
        "A" => 1,
        "NS" => 2,
        "SOA" => 6,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "ANY" => 255,
        other => other
            .parse()
            .with_context(|| format!("unknown query type {t:?}"))?,
    })
}

/// A DNS query message (RD set, no EDNS, as dnsperf sends them).
fn query_message(id: u16, name: &str, qtype: u16) -> anyhow::Result<Vec<u8>> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        anyhow::ensure!(
            !label.is_empty() && label.len() < 64,
            "bad label {label:?} in {name:?}"
        );
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    Ok(m)
}

/// What the header of an answer says.
#[derive(Debug, PartialEq, Eq)]
struct AnswerHeader {
    id: u16,
    truncated: bool,
    rcode: u8,
    answers: u16,
    additional: u16,
}

fn answer_header(m: &[u8]) -> Option<AnswerHeader> {
    if m.len() < 12 || m[2] & 0x80 == 0 {
        return None;
    }
    Some(AnswerHeader {
        id: u16::from_be_bytes([m[0], m[1]]),
        truncated: m[2] & 0x02 != 0,
        rcode: m[3] & 0x0f,
        answers: u16::from_be_bytes([m[6], m[7]]),
        additional: u16::from_be_bytes([m[10], m[11]]),
    })
}

fn rcode_name(r: u8) -> String {
    match r {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// What one TCP connection measured.
#[derive(Default)]
struct QueryStats {
    latencies: Vec<Duration>,
    bytes: u64,
    answers: Vec<u16>,
    additional: u64,
    truncated: u64,
    rcodes: std::collections::BTreeMap<String, u64>,
    timeouts: u64,
    errors: u64,
    reconnects: u64,
    first_error: Option<String>,
}

async fn query_connection(
    q: Arc<QueryArgs>,
    qtype: u16,
    seed: u16,
    deadline: Instant,
) -> QueryStats {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut st = QueryStats::default();
    let timeout = Duration::from_secs_f64(q.timeout);
    let mut id = seed;
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = vec![0u8; 65_535];
    while Instant::now() < deadline {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => {
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(q.server)).await
                {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        st.reconnects += 1;
                        conn.insert(s)
                    }
                    Ok(Err(e)) => {
                        st.errors += 1;
                        st.first_error.get_or_insert(format!("connect: {e}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(_) => {
                        st.timeouts += 1;
                        continue;
                    }
                }
            }
        };
        id = id.wrapping_add(1);
        let msg = match query_message(id, &q.name, qtype) {
            Ok(m) => m,
            Err(e) => {
                st.errors += 1;
                st.first_error.get_or_insert(format!("{e:#}"));
                break;
            }
        };
        let mut frame = (msg.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(&msg);
        let start = Instant::now();
        let exchange = async {
            stream.write_all(&frame).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let len = u16::from_be_bytes(len) as usize;
            stream.read_exact(&mut buf[..len]).await?;
            Ok::<usize, std::io::Error>(len)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(len)) => {
                let took = start.elapsed();
                match answer_header(&buf[..len]) {
                    Some(h) if h.id == id => {
                        st.latencies.push(took);
                        st.bytes += len as u64;
                        st.answers.push(h.answers);
                        st.additional += u64::from(h.additional);
                        st.truncated += u64::from(h.truncated);
                        *st.rcodes.entry(rcode_name(h.rcode)).or_default() += 1;
                    }
                    other => {
                        st.errors += 1;
                        st.first_error
                            .get_or_insert(format!("unexpected answer {other:?} to id {id}"));
                        conn = None;
                    }
                }
            }
            Ok(Err(e)) => {
                st.errors += 1;
                st.first_error.get_or_insert(format!("exchange: {e}"));
                conn = None;
            }
            Err(_) => {
                st.timeouts += 1;
                conn = None;
            }
        }
    }
    st
}

async fn query(q: QueryArgs) -> anyhow::Result<String> {
    anyhow::ensure!(q.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(
        q.duration.is_finite() && q.duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    anyhow::ensure!(
        q.timeout.is_finite() && q.timeout > 0.0,
        "--timeout must be a positive number of seconds"
    );
    let qtype = qtype_code(&q.qtype)?;
    query_message(0, &q.name, qtype)?;
    let q = Arc::new(q);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(q.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..q.connections {
        tasks.spawn(query_connection(
            q.clone(),
            qtype,
            (i as u16).wrapping_mul(4099),
            deadline,
        ));
    }
    let mut all = QueryStats::default();
    while let Some(r) = tasks.join_next().await {
        let s = r.context("a connection task failed")?;
        all.latencies.extend(s.latencies);
        all.bytes += s.bytes;
        all.answers.extend(s.answers);
        all.additional += s.additional;
        all.truncated += s.truncated;
        for (k, v) in s.rcodes {
            *all.rcodes.entry(k).or_default() += v;
        }
        all.timeouts += s.timeouts;
        all.errors += s.errors;
        all.reconnects += s.reconnects;
        if all.first_error.is_none() {
            all.first_error = s.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(e) = &all.first_error {
        eprintln!("dnschurn query: {} errors; first: {e}", all.errors);
    }
    all.latencies.sort();
    let n = all.latencies.len() as u64;
    let mean = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
    let sum: Duration = all.latencies.iter().sum();
    let rcodes: serde_json::Map<String, Value> = all
        .rcodes
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    Ok(format!(
        "{{\"op\":\"query\",\"transport\":\"tcp\",\"name\":{},\"qtype\":{},\"connections\":{},\
         \"completed\":{n},\"timeouts\":{},\"errors\":{},\"reconnects\":{},\"duration_s\":{},\
         \"qps\":{},\"avg_ms\":{},\"p50_ms\":{},\"p90_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\
         \"max_ms\":{},\"resp_bytes\":{},\"answers_min\":{},\"answers_avg\":{},\
         \"answers_max\":{},\"additional_avg\":{},\"truncated\":{},\"rcodes\":{}}}",
        json!(q.name),
        json!(q.qtype.to_ascii_uppercase()),
        q.connections,
        all.timeouts,
        all.errors,
        all.reconnects.saturating_sub(q.connections as u64),
        round3(elapsed),
        round3(n as f64 / elapsed),
        round3(if n == 0 {
            0.0
        } else {
            sum.as_secs_f64() * 1000.0 / n as f64
        }),
        round3(percentile_ms(&all.latencies, 50.0)),
        round3(percentile_ms(&all.latencies, 90.0)),
        round3(percentile_ms(&all.latencies, 99.0)),
        round3(percentile_ms(&all.latencies, 99.9)),
        round3(percentile_ms(&all.latencies, 100.0)),
        mean(all.bytes).round(),
        all.answers.iter().min().copied().unwrap_or(0),
        round3(mean(all.answers.iter().map(|&a| u64::from(a)).sum())),
        all.answers.iter().max().copied().unwrap_or(0),
        round3(mean(all.additional)),
        all.truncated,
        Value::Object(rcodes),
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dnschurn: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.cmd {
            Cmd::Register { common } => register(common).await,
            Cmd::Churn {
                common,
                rate,
                duration,
                max_changes,
                seed,
            } => churn(common, rate, duration, max_changes, seed).await,
            Cmd::Query(q) => query(q).await,
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dnschurn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_of_a_registration() {
        let v = json!({
            "Node": "n1", "Address": "127.32.0.1",
            "Service": {"ID": "big-1", "Service": "big", "Port": 1},
            "Checks": [{"CheckID": "chk-big-1", "Name": "alive", "Status": "passing",
                        "ServiceID": "big-1"}]
        });
        let i = Instance::from_registration(&v).expect("instance");
        assert_eq!(i.check_id, "chk-big-1");
        let b = i.status_body("critical");
        assert_eq!(b["Checks"][0]["Status"], "critical");
        assert_eq!(b["Checks"][0]["ServiceID"], "big-1");
        assert_eq!(b["SkipNodeUpdate"], true);
        assert!(b.get("Service").is_none());
        assert!(Instance::from_registration(&json!({"Node": "n"})).is_err());
    }

    #[test]
    fn rng_stays_in_range() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let x = r.below(10);
            seen[x] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn query_and_answer_header() {
        let m = query_message(0x1234, "_big._tcp.service.mesh.", 33).expect("query");
        assert_eq!(&m[..2], &[0x12, 0x34]);
        assert_eq!(m.len(), 12 + 24 + 4);
        assert_eq!(&m[12..17], b"\x04_big");
        assert!(answer_header(&m).is_none(), "a query is not an answer");
        let mut a = m.clone();
        a[2] |= 0x82; // QR, TC
        a[3] = 3;
        a[7] = 5;
        a[11] = 1;
        let h = answer_header(&a).expect("answer");
        assert_eq!(
            h,
            AnswerHeader {
                id: 0x1234,
                truncated: true,
                rcode: 3,
                answers: 5,
                additional: 1
            }
        );
        assert_eq!(qtype_code("srv").expect("SRV"), 33);
        assert_eq!(qtype_code("65").expect("number"), 65);
        assert!(qtype_code("nope").is_err());
        assert!(query_message(1, "a..b", 1).is_err());
    }

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from([
            "dnschurn",
            "churn",
            "--url",
            "http://127.0.0.1:8500",
            "--file",
            "r.jsonl",
            "--rate",
            "100",
        ])
        .expect("valid args");
        match a.cmd {
            Cmd::Churn { rate, duration, .. } => {
                assert_eq!(rate, 100.0);
                assert_eq!(duration, 20.0);
            }
            _ => panic!("wrong subcommand"),
        }
    }
}
