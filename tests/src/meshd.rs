//! One running `meshd agent --dev` process.
//!
//! [`Meshd::start`] spawns the binary with `--http-addr 127.0.0.1:0`, `--dns-addr 127.0.0.1:0`
//! (unless the caller's args hold a `--dns-addr`) and a data dir (a fresh temp dir unless one is
//! given), and waits (up to [`START_TIMEOUT`]) for the one line meshd prints on stdout once it
//! serves:
//!
//! ```text
//! ==> meshd serving: http=http://127.0.0.1:PORT dns=127.0.0.1:PORT node=NAME datacenter=dc1 data_dir=DIR
//! ```
//!
//! meshd's stderr (its log) goes to a file; the file is printed when a start fails and when a
//! [`Meshd`] is dropped while the test is panicking. [`Meshd::kill9`] SIGKILLs the process and
//! reaps it; [`Meshd::restart`] starts it again on the same data dir; dropping a [`Meshd`] kills
//! the process.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use crate::binary::meshd_bin;
use crate::http::Api;

/// How long a start may take until the serving line appears.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The prefix of the line meshd prints once it serves.
pub const SERVING_PREFIX: &str = "==> meshd serving:";

/// How much of the log tail is printed on failure.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// How to start meshd.
#[derive(Clone, Debug, Default)]
pub struct MeshdOptions {
    /// `--node NAME`; meshd's default (the hostname) when `None`.
    pub node: Option<String>,
    /// `--data-dir DIR`; a temp dir owned by the [`Meshd`] when `None`.
    pub data_dir: Option<PathBuf>,
    /// `--log-level LEVEL`; `debug` when `None` (the log is only shown on failure).
    pub log_level: Option<String>,
    /// Further arguments after `agent --dev ...`.
    pub args: Vec<String>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

impl MeshdOptions {
    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
}

/// What the serving line said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Base URL of the HTTP API, e.g. `http://127.0.0.1:43123`.
    pub http: String,
    pub node: String,
    pub datacenter: String,
    pub data_dir: String,
    /// The DNS address (`IP:PORT`, UDP and TCP), when the line has `dns=`.
    pub dns: Option<String>,
}

impl Serving {
    /// Parses a serving line; `None` if `line` is not one or lacks `http=`.
    pub fn parse(line: &str) -> Option<Serving> {
        let rest = line.trim().strip_prefix(SERVING_PREFIX)?;
        let mut s = Serving {
            http: String::new(),
            node: String::new(),
            datacenter: String::new(),
            data_dir: String::new(),
            dns: None,
        };
        for word in rest.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            match k {
                "http" => s.http = v.trim_end_matches('/').to_string(),
                "node" => s.node = v.to_string(),
                "datacenter" => s.datacenter = v.to_string(),
                "data_dir" => s.data_dir = v.to_string(),
                "dns" => s.dns = Some(v.to_string()),
                _ => {}
            }
        }
        if s.http.is_empty() {
            None
        } else {
            Some(s)
        }
    }
}

/// A running meshd agent. Dropping it kills the process.
pub struct Meshd {
    child: Option<Child>,
    opts: MeshdOptions,
    data_dir: PathBuf,
    _temp_data: Option<TempDir>,
    _log_dir: TempDir,
    log_path: PathBuf,
    serving: Serving,
    api: Api,
}

impl Meshd {
    /// Starts `meshd agent --dev` with default options.
    pub async fn start_default() -> Meshd {
        Meshd::start(MeshdOptions::default()).await
    }

    /// Starts meshd and waits until it serves; panics (with its log) if it does not within
    /// [`START_TIMEOUT`].
    pub async fn start(opts: MeshdOptions) -> Meshd {
        let log_dir = tempfile::Builder::new()
            .prefix("meshd-log-")
            .tempdir()
            .expect("create a temp dir for the meshd log");
        let log_path = log_dir.path().join("meshd.log");
        let (temp_data, data_dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("meshd-data-")
                    .tempdir()
                    .expect("create a temp data dir");
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let (child, serving) = spawn(&opts, &data_dir, &log_path).await;
        let api = Api::new(&serving.http);
        Meshd {
            child: Some(child),
            opts,
            data_dir,
            _temp_data: temp_data,
            _log_dir: log_dir,
            log_path,
            serving,
            api,
        }
    }

    /// The HTTP client for this agent (cheap to clone).
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// Base URL, e.g. `http://127.0.0.1:43123`.
    pub fn url(&self) -> &str {
        &self.serving.http
    }

    /// `host:port` of the HTTP API.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        let hostport = self
            .serving
            .http
            .trim_start_matches("http://")
            .trim_end_matches('/');
        hostport
            .parse()
            .unwrap_or_else(|e| panic!("serving line has a bad http address {hostport:?}: {e}"))
    }

    /// The DNS address (UDP and TCP) from the serving line; panics if the line has no `dns=`.
    pub fn dns_addr(&self) -> std::net::SocketAddr {
        let Some(dns) = &self.serving.dns else {
            panic!(
                "meshd's serving line has no dns= field (a meshd without DNS?): {:?}",
                self.serving
            );
        };
        dns.parse()
            .unwrap_or_else(|e| panic!("serving line has a bad dns address {dns:?}: {e}"))
    }

    /// What the serving line said.
    pub fn serving(&self) -> &Serving {
        &self.serving
    }

    /// The node name meshd reported.
    pub fn node(&self) -> &str {
        &self.serving.node
    }

    /// The data dir meshd runs on.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The whole log (stderr, and stdout lines after the serving line) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILLs meshd and reaps it. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            // kill() is SIGKILL on Unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs meshd (if running) and starts it again on the same data dir and options.
    /// Its HTTP port changes (port 0); use [`Meshd::api`] again afterwards.
    pub async fn restart(&mut self) {
        self.kill9();
        let mut opts = self.opts.clone();
        opts.data_dir = Some(self.data_dir.clone());
        let (child, serving) = spawn(&opts, &self.data_dir, &self.log_path).await;
        self.api = Api::new(&serving.http);
        self.serving = serving;
        self.child = Some(child);
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        match self.child.as_mut() {
            None => None,
            Some(c) => c.try_wait().ok().flatten(),
        }
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- meshd log ({}) ----\n{}\n---- end of meshd log ----",
                self.log_path.display(),
                log_tail(&self.log_path)
            );
        }
    }
}

/// The last [`LOG_TAIL_BYTES`] of a log file.
fn log_tail(path: &Path) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::from("(log unreadable)");
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        format!("[... {start} bytes elided ...]\n{text}")
    } else {
        text
    }
}

/// What the stdout reader thread reports.
enum StdoutEvent {
    Serving(Serving),
    Eof(Vec<String>),
}

/// Spawns meshd and waits for its serving line; panics with the log on failure.
async fn spawn(opts: &MeshdOptions, data_dir: &Path, log_path: &Path) -> (Child, Serving) {
    let opts = opts.clone();
    let data_dir = data_dir.to_path_buf();
    let log_path = log_path.to_path_buf();
    let bin = meshd_bin();
    match tokio::task::spawn_blocking(move || spawn_blocking(&bin, &opts, &data_dir, &log_path))
        .await
    {
        Ok(Ok(started)) => started,
        Ok(Err(why)) => panic!("{why}"),
        Err(e) => panic!("the meshd start task failed: {e}"),
    }
}

/// Spawns meshd and blocks until its serving line; the error says why it did not serve, with
/// the tail of its log.
fn spawn_blocking(
    bin: &Path,
    opts: &MeshdOptions,
    data_dir: &Path,
    log_path: &Path,
) -> Result<(Child, Serving), String> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open the meshd log file");
    let mut args: Vec<String> = vec![
        "agent".into(),
        "--dev".into(),
        "--http-addr".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--log-level".into(),
        opts.log_level.clone().unwrap_or_else(|| "debug".into()),
    ];
    if let Some(n) = &opts.node {
        args.push("--node".into());
        args.push(n.clone());
    }
    let has_dns_addr = opts
        .args
        .iter()
        .any(|a| a == "--dns-addr" || a.starts_with("--dns-addr="));
    if !has_dns_addr {
        args.push("--dns-addr".into());
        args.push("127.0.0.1:0".into());
    }
    args.extend(opts.args.iter().cloned());
    let _ = writeln!(
        log,
        "==== harness: starting {} {}",
        bin.display(),
        args.join(" ")
    );
    let stderr = log.try_clone().expect("clone the meshd log file handle");
    let mut cmd = Command::new(bin);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .env("RUST_BACKTRACE", "1");
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().expect("meshd stdout is piped");

    let (tx, rx) = mpsc::channel();
    let mut out_log = log.try_clone().expect("clone the meshd log file handle");
    std::thread::spawn(move || {
        let mut before = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(out_log, "[stdout] {line}");
            if !sent {
                if let Some(s) = Serving::parse(&line) {
                    let _ = tx.send(StdoutEvent::Serving(s));
                    sent = true;
                } else {
                    before.push(line);
                }
            }
        }
        if !sent {
            let _ = tx.send(StdoutEvent::Eof(before));
        }
    });

    match rx.recv_timeout(START_TIMEOUT) {
        Ok(StdoutEvent::Serving(s)) => {
            if !s.http.starts_with("http://") {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "serving line has an http= that is not an http:// URL: {s:?}"
                ));
            }
            Ok((child, s))
        }
        Ok(StdoutEvent::Eof(lines)) => {
            let status = child.wait().ok();
            Err(format!(
                "meshd exited before printing its serving line (status {status:?}); stdout: \
                 {lines:?}\n---- meshd log ----\n{}",
                log_tail(log_path)
            ))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "meshd did not print `{SERVING_PREFIX} http=...` within {START_TIMEOUT:?}\n\
                 ---- meshd log ----\n{}",
                log_tail(log_path)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_serving_line() {
        let s = Serving::parse(
            "==> meshd serving: http=http://127.0.0.1:41234 node=n1 datacenter=dc1 \
             data_dir=/tmp/x",
        )
        .expect("a serving line");
        assert_eq!(s.http, "http://127.0.0.1:41234");
        assert_eq!(s.node, "n1");
        assert_eq!(s.datacenter, "dc1");
        assert_eq!(s.data_dir, "/tmp/x");
        assert_eq!(s.dns, None);
        assert!(Serving::parse("some log line").is_none());
        let s = Serving::parse(
            "==> meshd serving: http=http://127.0.0.1:41234 dns=127.0.0.1:40001 \
             quic=127.0.0.1:8301 node=n1 datacenter=dc1 data_dir=/tmp/x role=server",
        )
        .expect("a serving line");
        assert_eq!(s.http, "http://127.0.0.1:41234");
        assert_eq!(s.dns.as_deref(), Some("127.0.0.1:40001"));
        assert_eq!(s.node, "n1");
    }
}
