//! regbench: registration writes per second and latency against meshd or etcd.
//!
//! Each of `--clients` tasks issues one write at a time over a keep-alive HTTP/1.1 connection
//! until `--duration` seconds pass or `--max-requests` writes were sent in total. With several
//! `--url`s (a cluster), client `i` writes to URL `i mod n`, so the clients spread evenly over
//! the servers:
//!
//! - meshd: `PUT /v1/catalog/register`, a distinct service per request on one node;
//! - etcd: `POST /v3/kv/put` through etcd's JSON gateway, key
//!   `/registry/<node>/<service-id>` and the same registration JSON as value (base64, as the
//!   gateway wants).
//!
//! Prints one JSON line: `{target, clients, requests, errors, duration_s, writes_per_s, p50_ms,
//! p99_ms}` (`requests` counts successful writes; latencies are of successful writes).
//! Used by `tests/bench/registration.sh` (one server) and, through `clusterbench`, by
//! `tests/bench/cluster.sh` (3-server clusters).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, ValueEnum};
use serde_json::json;

#[path = "common/stats.rs"]
mod stats;
use stats::{percentile_ms, round3};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Meshd,
    Etcd,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Meshd => "meshd",
            Target::Etcd => "etcd",
        }
    }
}

/// Registration write benchmark (meshd catalog register vs etcd put).
#[derive(Parser, Debug)]
#[command(name = "regbench")]
struct Args {
    /// What the URL points at.
    #[arg(long, value_enum)]
    target: Target,
    /// Base URL: meshd's HTTP API (http://127.0.0.1:8500) or etcd's client URL
    /// (http://127.0.0.1:2379). Repeat it (or separate with commas) to spread the clients
    /// round-robin over several servers of one cluster.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    urls: Vec<String>,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many requests in total (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_requests: u64,
    /// Node name the registrations go to.
    #[arg(long, default_value = "bench-node")]
    node: String,
    /// Prefix of the service IDs (distinct per run, so runs do not overwrite each other).
    #[arg(long, default_value = "bench")]
    prefix: String,
}

/// What one client measured.
#[derive(Default)]
struct ClientStats {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// The registration a request writes, as JSON text.
fn registration(node: &str, service_id: &str, n: u64) -> serde_json::Value {
    json!({
        "Node": node,
        "Address": "127.0.0.1",
        "Service": {
            "ID": service_id,
            "Service": service_id,
            "Port": 10_000 + (n % 50_000),
            "Tags": ["bench", "v1"],
            "Meta": {"seq": n.to_string()}
        }
    })
}

/// Builds request number `n` for the target at `base`.
fn request(
    client: &reqwest::Client,
    args: &Args,
    base: &str,
    n: u64,
) -> anyhow::Result<reqwest::RequestBuilder> {
    let service_id = format!("{}-{n}", args.prefix);
    let reg = registration(&args.node, &service_id, n);
    let base = base.trim_end_matches('/');
    Ok(match args.target {
        Target::Meshd => client
            .put(format!("{base}/v1/catalog/register"))
            .body(serde_json::to_vec(&reg).context("encode the registration")?),
        Target::Etcd => {
            let b64 = base64::engine::general_purpose::STANDARD;
            let key = format!("/registry/{}/{service_id}", args.node);
            let value = serde_json::to_vec(&reg).context("encode the registration")?;
            let body = json!({"key": b64.encode(key), "value": b64.encode(value)});
            client
                .post(format!("{base}/v3/kv/put"))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).context("encode the etcd put")?)
        }
    })
}

async fn run_client(
    client: reqwest::Client,
    args: Arc<Args>,
    base: String,
    next: Arc<AtomicU64>,
    deadline: Instant,
) -> ClientStats {
    let mut stats = ClientStats::default();
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let n = next.fetch_add(1, Ordering::SeqCst);
        if args.max_requests > 0 && n >= args.max_requests {
            break;
        }
        let req = match request(&client, &args, &base, n) {
            Ok(r) => r,
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert_with(|| format!("{e:#}"));
                continue;
            }
        };
        let start = Instant::now();
        let outcome = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                // Read the body so the connection is reused.
                match resp.bytes().await {
                    Ok(body) if status.is_success() => {
                        if args.target == Target::Meshd && body.as_ref() != b"true" {
                            Err(format!(
                                "meshd answered {status} {:?}",
                                String::from_utf8_lossy(&body)
                            ))
                        } else {
                            Ok(())
                        }
                    }
                    Ok(body) => Err(format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    )),
                    Err(e) => Err(format!("reading the body: {e}")),
                }
            }
            Err(e) => Err(format!("{e}")),
        };
        match outcome {
            Ok(()) => stats.latencies.push(start.elapsed()),
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
            }
        }
    }
    stats
}

async fn run(args: Args) -> anyhow::Result<String> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        args.urls.iter().all(|u| !u.trim().is_empty()),
        "--url must not be empty"
    );
    anyhow::ensure!(
        args.duration.is_finite() && args.duration > 0.0,
        "--duration must be a positive number of seconds"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(args.clients)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .context("build the HTTP client")?;
    let args = Arc::new(args);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let base = args.urls[i % args.urls.len()].clone();
        tasks.spawn(run_client(
            client.clone(),
            args.clone(),
            base,
            next.clone(),
            deadline,
        ));
    }
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let s = r.context("a client task failed")?;
        latencies.extend(s.latencies);
        errors += s.errors;
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let requests = latencies.len() as u64;
    if let Some(e) = &first_error {
        eprintln!("regbench: {errors} errors; first: {e}");
    }
    // Fields in a fixed, readable order (serde_json sorts object keys).
    Ok(format!(
        "{{\"target\":\"{}\",\"clients\":{},\"requests\":{},\"errors\":{},\
         \"duration_s\":{},\"writes_per_s\":{},\"p50_ms\":{},\"p99_ms\":{}}}",
        args.target.name(),
        args.clients,
        requests,
        errors,
        round3(elapsed),
        round3(requests as f64 / elapsed),
        round3(percentile_ms(&latencies, 50.0)),
        round3(percentile_ms(&latencies, 99.0)),
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
            eprintln!("regbench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("regbench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_parse() {
        let a = Args::try_parse_from([
            "regbench",
            "--target",
            "etcd",
            "--url",
            "http://127.0.0.1:2379",
            "--clients",
            "16",
            "--duration",
            "5",
            "--max-requests",
            "100",
        ])
        .expect("valid args");
        assert_eq!(a.target, Target::Etcd);
        assert_eq!(a.clients, 16);
        assert_eq!(a.max_requests, 100);
        assert_eq!(a.urls, ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn several_urls() {
        let a = Args::try_parse_from([
            "regbench",
            "--target",
            "meshd",
            "--url",
            "http://10.0.0.11:8500,http://10.0.0.12:8500",
            "--url",
            "http://10.0.0.13:8500",
        ])
        .expect("valid args");
        assert_eq!(a.urls.len(), 3);
        assert_eq!(a.urls[2], "http://10.0.0.13:8500");
    }
}
