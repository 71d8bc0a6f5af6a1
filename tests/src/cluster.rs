//! A meshd cluster on one machine: servers and agents, each `meshd agent --config FILE` in its
//! own network namespace ([`crate::netns`]), talking mutual-TLS QUIC over the mesh bridge.
//!
//! [`Cluster::start`] makes the TLS material offline with the built `meshctl` ([`Tls`]: a CA,
//! one server certificate per server), writes one TOML config per node, starts the servers,
//! waits until they agree on a leader, then starts the agents and waits until each one sees
//! the leader and shows up alive in `/v1/agent/members`.
//!
//! Every node serves HTTP on `0.0.0.0:8500` in its namespace; the test reaches it over the
//! host's control link ([`Node::api`]), which stays up while the mesh link is cut. QUIC binds
//! the host's mesh address, port 8301.
//!
//! A [`Node`] is one process: [`Node::kill9`], [`Node::stop`] (SIGTERM), [`Node::restart`]
//! (same config and data dir), [`Node::wait_exit`]. Its stderr and stdout go to
//! `<temp>/logs/<node>.log`; the tail of every node's log is printed when the test panics (set
//! `MESHD_KEEP_LOGS=1` to keep the whole temp dir and print its path). [`Cluster::spawn`] starts
//! an extra node with any config (a wrong join token, another CA) without waiting for it to
//! serve, for tests that expect it to fail.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;

use crate::binary::meshd_bin;
use crate::http::Api;
use crate::meshd::SERVING_PREFIX;
use crate::netns::{self, Net};

/// UDP port of every node's QUIC endpoint.
pub const QUIC_PORT: u16 = 8301;
/// TCP port of every node's HTTP API (in its own namespace).
pub const HTTP_PORT: u16 = 8500;
/// The join token of a [`Cluster`].
pub const JOIN_TOKEN: &str = "secret-token";
/// How long a node may take to print its serving line.
pub const SERVE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the servers may take to elect a first leader.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent may take to enroll and show up alive.
pub const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one probing request (leader, members, ...).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long [`Node::stop`] waits after SIGTERM before it SIGKILLs.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of each node's log is printed when a test panics.
const LOG_TAIL_BYTES: u64 = 24 * 1024;
/// Environment variable: keep the cluster's temp dir (configs, data, logs) after the test.
pub const KEEP_ENV: &str = "MESHD_KEEP_LOGS";
/// Environment variable naming the meshctl binary.
pub const MESHCTL_BIN_ENV: &str = "MESHCTL_BIN";

/// The meshctl binary: `MESHCTL_BIN`, else `meshctl` beside the meshd binary under test.
pub fn meshctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os(MESHCTL_BIN_ENV) {
        return PathBuf::from(p);
    }
    let p = meshd_bin().with_file_name("meshctl");
    assert!(
        p.is_file(),
        "meshctl binary not found at {}. Build it with `cargo build -p meshctl`, or point \
         {MESHCTL_BIN_ENV} at one.",
        p.display()
    );
    p
}

// ---------------------------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------------------------

/// A mesh CA made with `meshctl tls ca create`, and the certificates signed with it.
#[derive(Clone, Debug)]
pub struct Tls {
    dir: PathBuf,
    /// `mesh-agent-ca.pem`.
    pub ca_file: PathBuf,
    /// `mesh-agent-ca-key.pem`.
    pub ca_key_file: PathBuf,
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

fn run_meshctl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let bin = meshctl_bin();
    let out = std::process::Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`meshctl {}` in {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn pem_files(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".pem") {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

impl Tls {
    /// Creates a CA in `dir` (which must exist) with `meshctl tls ca create`.
    pub fn create(dir: &Path) -> anyhow::Result<Tls> {
        run_meshctl(dir, &["tls", "ca", "create"])?;
        let tls = Tls {
            dir: dir.to_path_buf(),
            ca_file: dir.join("mesh-agent-ca.pem"),
            ca_key_file: dir.join("mesh-agent-ca-key.pem"),
        };
        for f in [&tls.ca_file, &tls.ca_key_file] {
            if !f.is_file() {
                bail!(
                    "`meshctl tls ca create` did not write {} (files: {:?})",
                    f.display(),
                    pem_files(dir)?
                );
            }
        }
        Ok(tls)
    }

    /// The directory the CA lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Signs a server certificate for `node` in `dc` with `meshctl tls cert create --server`,
    /// and renames it to `<node>.pem` / `<node>-key.pem`.
    pub fn server_cert(&self, node: &str, dc: &str) -> anyhow::Result<CertFiles> {
        let before = pem_files(&self.dir)?;
        run_meshctl(
            &self.dir,
            &[
                "tls", "cert", "create", "--server", "--node", node, "--dc", dc,
            ],
        )?;
        let new: Vec<String> = pem_files(&self.dir)?
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        let key = new.iter().find(|f| f.ends_with("-key.pem"));
        let cert = new.iter().find(|f| !f.ends_with("-key.pem"));
        let (Some(cert), Some(key)) = (cert, key) else {
            bail!(
                "`meshctl tls cert create --server --node {node} --dc {dc}` wrote {new:?}, not \
                 a certificate and a key (expected {dc}-server-mesh-N.pem and -key.pem)"
            );
        };
        let files = CertFiles {
            cert_file: self.dir.join(format!("{node}.pem")),
            key_file: self.dir.join(format!("{node}-key.pem")),
        };
        std::fs::rename(self.dir.join(cert), &files.cert_file)?;
        std::fs::rename(self.dir.join(key), &files.key_file)?;
        Ok(files)
    }
}

// ---------------------------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------------------------

/// One node's TOML configuration. `None` keys are left out of the file.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    pub node_name: String,
    pub datacenter: String,
    pub data_dir: PathBuf,
    pub server: bool,
    pub bootstrap_expect: Option<u32>,
    pub retry_join: Vec<String>,
    pub bind_addr: String,
    pub http_addr: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub ca_key_file: Option<PathBuf>,
    pub join_token: Option<String>,
    pub liveness_timeout: Option<String>,
    pub snapshot_threshold: Option<u64>,
    pub log_level: String,
    /// Further `key = value` lines, the value written as given (TOML).
    pub extra: Vec<(String, String)>,
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.display().to_string())
}

impl NodeConfig {
    /// The TOML text.
    pub fn to_toml(&self) -> String {
        let mut t = String::new();
        let mut line = |k: &str, v: String| {
            let _ = writeln!(t, "{k} = {v}");
        };
        line("node_name", toml_str(&self.node_name));
        line("datacenter", toml_str(&self.datacenter));
        line("data_dir", toml_path(&self.data_dir));
        line("server", self.server.to_string());
        if let Some(n) = self.bootstrap_expect {
            line("bootstrap_expect", n.to_string());
        }
        let joins: Vec<String> = self.retry_join.iter().map(|a| toml_str(a)).collect();
        line("retry_join", format!("[{}]", joins.join(", ")));
        line("bind_addr", toml_str(&self.bind_addr));
        line("http_addr", toml_str(&self.http_addr));
        for (k, v) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_key_file", &self.ca_key_file),
        ] {
            if let Some(p) = v {
                line(k, toml_path(p));
            }
        }
        if let Some(s) = &self.join_token {
            line("join_token", toml_str(s));
        }
        if let Some(s) = &self.liveness_timeout {
            line("liveness_timeout", toml_str(s));
        }
        if let Some(n) = self.snapshot_threshold {
            line("snapshot_threshold", n.to_string());
        }
        line("log_level", toml_str(&self.log_level));
        for (k, v) in &self.extra {
            line(k, v.clone());
        }
        t
    }
}

// ---------------------------------------------------------------------------------------------
// The serving line
// ---------------------------------------------------------------------------------------------

/// What a cluster node's serving line said:
/// `==> meshd serving: http=... quic=IP:PORT node=... datacenter=... data_dir=... role=...`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterServing {
    pub http: String,
    pub quic: String,
    pub node: String,
    pub datacenter: String,
    pub data_dir: String,
    pub role: String,
}

impl ClusterServing {
    /// Parses a serving line; `None` if `line` is not one.
    pub fn parse(line: &str) -> Option<ClusterServing> {
        let rest = line.trim().strip_prefix(SERVING_PREFIX)?;
        let mut s = ClusterServing::default();
        for word in rest.split_whitespace() {
            let Some((k, v)) = word.split_once('=') else {
                continue;
            };
            let v = v.to_string();
            match k {
                "http" => s.http = v,
                "quic" => s.quic = v,
                "node" => s.node = v,
                "datacenter" => s.datacenter = v,
                "data_dir" => s.data_dir = v,
                "role" => s.role = v,
                _ => {}
            }
        }
        Some(s)
    }
}

// ---------------------------------------------------------------------------------------------
// A node process
// ---------------------------------------------------------------------------------------------

/// Servers vote; agents do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Agent,
}

/// What the stdout reader thread saw.
#[derive(Default)]
struct StdoutState {
    serving: Option<ClusterServing>,
    eof: bool,
}

/// One meshd process in a host of the [`Net`]. Dropping it SIGKILLs the process.
pub struct Node {
    name: String,
    role: Role,
    host: usize,
    ns: String,
    mesh_ip: Ipv4Addr,
    control_ip: Ipv4Addr,
    config: NodeConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    stdout: Arc<Mutex<StdoutState>>,
    api: Api,
    /// Run meshd through this command (it must exec meshd, so the pid stays meshd's).
    launcher: Vec<String>,
}

impl Node {
    /// The node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The host (namespace index in the [`Net`]).
    pub fn host(&self) -> usize {
        self.host
    }

    /// The network namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// The HTTP client, over the host's control link.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// The host's mesh address.
    pub fn mesh_ip(&self) -> Ipv4Addr {
        self.mesh_ip
    }

    /// The host's control-link address (where [`Node::api`] points).
    pub fn control_ip(&self) -> Ipv4Addr {
        self.control_ip
    }

    /// `IP:8301`, the QUIC address this node binds and advertises.
    pub fn quic_addr(&self) -> String {
        format!("{}:{QUIC_PORT}", self.mesh_ip)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The process id, while it has not been reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The serving line of the current process, once printed.
    pub fn serving(&self) -> Option<ClusterServing> {
        self.stdout.lock().expect("stdout state").serving.clone()
    }

    /// The whole log so far (stderr, stdout lines prefixed `[stdout]`, harness notes `====`),
    /// without ANSI color codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// The log's warnings and errors: lines at WARN or ERROR level, and meshd's last words
    /// (`meshd: ...` on stderr when it exits on an error).
    pub fn problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("meshd:"))
            .map(str::to_string)
            .collect()
    }

    /// Where the log is.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Log lines containing `needle` (case-insensitive), at most `max`.
    pub fn log_lines(&self, needle: &str, max: usize) -> Vec<String> {
        let needle = needle.to_lowercase();
        self.log()
            .lines()
            .filter(|l| l.to_lowercase().contains(&needle))
            .take(max)
            .map(str::to_string)
            .collect()
    }

    /// Appends a harness note to the log (shows where in the log a fault happened).
    pub fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "==== harness: {what}");
        }
    }

    /// Whether the process is running (reaps it when it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The exit status, if the process exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the process (no-op if running) without waiting for it to serve.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        std::fs::write(&self.config_path, self.config.to_toml())
            .with_context(|| format!("write {}", self.config_path.display()))?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("open {}", self.log_path.display()))?;
        let bin = meshd_bin();
        let _ = writeln!(
            log,
            "==== harness: starting `ip netns exec {} {}{} agent --config {}` with:\n{}",
            self.ns,
            self.launcher
                .iter()
                .map(|a| format!("{a} "))
                .collect::<String>(),
            bin.display(),
            self.config_path.display(),
            self.config.to_toml()
        );
        let stderr = log.try_clone()?;
        let mut child = std::process::Command::new("ip")
            .arg("netns")
            .arg("exec")
            .arg(&self.ns)
            .args(&self.launcher)
            .arg(&bin)
            .arg("agent")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .env("RUST_BACKTRACE", "1")
            .spawn()
            .with_context(|| format!("spawn meshd in {}", self.ns))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let state = Arc::new(Mutex::new(StdoutState::default()));
        let st = state.clone();
        let mut out_log = log;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(out_log, "[stdout] {line}");
                if let Some(s) = ClusterServing::parse(&line) {
                    st.lock().expect("stdout state").serving.get_or_insert(s);
                }
            }
            st.lock().expect("stdout state").eof = true;
        });
        self.stdout = state;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the current process prints its serving line; fails (with the log tail)
    /// when it exits first or `timeout` passes.
    pub async fn wait_serving(&mut self, timeout: Duration) -> anyhow::Result<ClusterServing> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.serving() {
                return Ok(s);
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited ({status}) before serving\n---- log of {} ----\n{}",
                    self.name,
                    self.name,
                    log_tail(&self.log_path, LOG_TAIL_BYTES)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not print `{SERVING_PREFIX}` within {timeout:?}\n---- log of {} \
                     ----\n{}",
                    self.name,
                    self.name,
                    log_tail(&self.log_path, LOG_TAIL_BYTES)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process and waits for its serving line; panics with the log on failure.
    pub async fn start(&mut self) {
        self.spawn()
            .unwrap_or_else(|e| panic!("start {}: {e:#}", self.name));
        if let Err(e) = self.wait_serving(SERVE_TIMEOUT).await {
            panic!("{e:#}");
        }
    }

    /// SIGKILLs the process and reaps it. No-op when not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.note("SIGKILL");
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs (if running) and starts again with the same config and data dir; waits until
    /// it serves.
    pub async fn restart(&mut self) {
        self.kill9();
        self.start().await;
    }

    /// Replaces the node's configuration file (for a reload; a restart also reads it).
    pub fn set_config(&mut self, config: NodeConfig) -> anyhow::Result<()> {
        std::fs::write(&self.config_path, config.to_toml())
            .with_context(|| format!("write {}", self.config_path.display()))?;
        self.config = config;
        Ok(())
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit (SIGKILL after that, which
    /// fails the caller's expectations: the status says so). `None` when not running.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let pid = self.pid()?;
        self.note("SIGTERM");
        netns::send_signal(pid, libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT).await {
            Some(s) => Some(s),
            None => {
                self.note("did not exit after SIGTERM; SIGKILL");
                let mut child = self.child.take()?;
                let _ = child.kill();
                child.wait().ok()
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None` if it still runs.
    /// The process is reaped (a later [`Node::restart`] starts a new one).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.exited() {
                self.child = None;
                return Some(s);
            }
            if self.child.is_none() || start.elapsed() > timeout {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ({}, {}) ----\n{}\n---- end of log of {} ----",
                self.name,
                self.ns,
                self.log_path.display(),
                log_tail(&self.log_path, LOG_TAIL_BYTES),
                self.name
            );
        }
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... final`), which a log written with colors
/// has.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for f in chars.by_ref() {
                if ('@'..='~').contains(&f) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `bytes` of a log file, without ANSI color codes.
pub fn log_tail(path: &Path, bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(bytes);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::from("(log unreadable)");
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = strip_ansi(&String::from_utf8_lossy(&buf));
    if start > 0 {
        format!("[... {start} bytes elided ...]\n{text}")
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// What [`Cluster::start`] builds.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub servers: usize,
    pub agents: usize,
    /// Hosts with nothing started on them, for [`Cluster::spawn`].
    pub spare_hosts: usize,
    pub datacenter: String,
    pub snapshot_threshold: Option<u64>,
    pub liveness_timeout: Option<String>,
    pub log_level: String,
    /// Further `key = value` lines for every node's config.
    pub extra: Vec<(String, String)>,
    /// A command every node's meshd is run through (`setpriv ...` to drop capabilities);
    /// empty: meshd itself.
    pub launcher: Vec<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            servers: 3,
            agents: 0,
            spare_hosts: 0,
            datacenter: "dc1".into(),
            snapshot_threshold: None,
            liveness_timeout: None,
            log_level: "debug".into(),
            extra: Vec::new(),
            launcher: Vec::new(),
        }
    }
}

impl ClusterSpec {
    pub fn servers(mut self, n: usize) -> Self {
        self.servers = n;
        self
    }

    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    pub fn spare_hosts(mut self, n: usize) -> Self {
        self.spare_hosts = n;
        self
    }

    pub fn snapshot_threshold(mut self, n: u64) -> Self {
        self.snapshot_threshold = Some(n);
        self
    }

    pub fn liveness_timeout(mut self, d: &str) -> Self {
        self.liveness_timeout = Some(d.to_string());
        self
    }
}

/// Servers on hosts `0..servers`, agents after them, then the spare hosts.
pub struct Cluster {
    // Field order is drop order: processes first, then the network, then the files.
    servers: Vec<Node>,
    agents: Vec<Node>,
    net: Net,
    tls: Tls,
    spec: ClusterSpec,
    dir: Option<TempDir>,
    root: PathBuf,
}

impl Cluster {
    /// Builds the network and TLS material, starts the servers and waits for a leader, then
    /// starts the agents and waits until each is alive in the members list. Panics (printing
    /// every node's log tail) when something does not come up in time.
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let t0 = Instant::now();
        let mut c = Cluster::prepare(spec).unwrap_or_else(|e| panic!("prepare a cluster: {e:#}"));
        for s in &mut c.servers {
            s.spawn()
                .unwrap_or_else(|e| panic!("start {}: {e:#}", s.name));
        }
        for s in &mut c.servers {
            if let Err(e) = s.wait_serving(SERVE_TIMEOUT).await {
                panic!("{e:#}");
            }
        }
        let leader = c.wait_leader(LEADER_TIMEOUT).await;
        eprintln!(
            "cluster {}: {} servers serving, leader {} after {:?}",
            c.net.id(),
            c.servers.len(),
            c.servers[leader].name,
            t0.elapsed()
        );
        for a in &mut c.agents {
            a.spawn()
                .unwrap_or_else(|e| panic!("start {}: {e:#}", a.name));
        }
        for a in &mut c.agents {
            if let Err(e) = a.wait_serving(SERVE_TIMEOUT).await {
                panic!("{e:#}");
            }
        }
        if !c.agents.is_empty() {
            c.wait_agents_ready(AGENT_READY_TIMEOUT).await;
            eprintln!(
                "cluster {}: {} agents alive after {:?}",
                c.net.id(),
                c.agents.len(),
                t0.elapsed()
            );
        }
        c
    }

    /// The network, TLS material and configs, nothing started.
    pub fn prepare(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        if spec.servers == 0 {
            bail!("a cluster needs at least one server");
        }
        let dir = tempfile::Builder::new()
            .prefix("meshd-cluster-")
            .tempdir()
            .context("create the cluster's temp dir")?;
        let root = dir.path().to_path_buf();
        for sub in ["tls", "config", "data", "logs"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        let net = Net::new(spec.servers + spec.agents + spec.spare_hosts)?;
        let tls = Tls::create(&root.join("tls"))?;
        let mut c = Cluster {
            servers: Vec::new(),
            agents: Vec::new(),
            net,
            tls,
            spec,
            dir: Some(dir),
            root,
        };
        for i in 0..c.spec.servers {
            let name = format!("s{}", i + 1);
            let cfg = c.server_config(&name, i)?;
            let node = c.node(&name, Role::Server, i, cfg);
            c.servers.push(node);
        }
        for i in 0..c.spec.agents {
            let name = format!("a{}", i + 1);
            let host = c.spec.servers + i;
            let cfg = c.agent_config(&name, host);
            let node = c.node(&name, Role::Agent, host, cfg);
            c.agents.push(node);
        }
        Ok(c)
    }

    fn node(&self, name: &str, role: Role, host: usize, config: NodeConfig) -> Node {
        let h = self.net.host(host);
        Node {
            name: name.to_string(),
            role,
            host,
            ns: h.ns.clone(),
            mesh_ip: h.mesh_ip,
            control_ip: h.control_ip,
            config,
            config_path: self.root.join("config").join(format!("{name}.toml")),
            log_path: self.root.join("logs").join(format!("{name}.log")),
            child: None,
            stdout: Arc::new(Mutex::new(StdoutState::default())),
            api: Api::new(&format!("http://{}:{HTTP_PORT}", h.control_ip)),
            launcher: self.spec.launcher.clone(),
        }
    }

    /// The servers' QUIC addresses (`IP:8301`), every server's `retry_join`.
    pub fn server_addrs(&self) -> Vec<String> {
        (0..self.spec.servers)
            .map(|i| format!("{}:{QUIC_PORT}", self.net.host(i).mesh_ip))
            .collect()
    }

    fn base_config(&self, name: &str, host: usize) -> NodeConfig {
        let h = self.net.host(host);
        NodeConfig {
            node_name: name.to_string(),
            datacenter: self.spec.datacenter.clone(),
            data_dir: self.root.join("data").join(name),
            server: false,
            bootstrap_expect: None,
            retry_join: self.server_addrs(),
            bind_addr: format!("{}:{QUIC_PORT}", h.mesh_ip),
            http_addr: format!("0.0.0.0:{HTTP_PORT}"),
            ca_file: Some(self.tls.ca_file.clone()),
            cert_file: None,
            key_file: None,
            ca_key_file: None,
            join_token: Some(JOIN_TOKEN.into()),
            liveness_timeout: self.spec.liveness_timeout.clone(),
            snapshot_threshold: self.spec.snapshot_threshold,
            log_level: self.spec.log_level.clone(),
            extra: self.spec.extra.clone(),
        }
    }

    /// A server's config on `host` (signs its certificate with the cluster's CA).
    pub fn server_config(&self, name: &str, host: usize) -> anyhow::Result<NodeConfig> {
        let cert = self.tls.server_cert(name, &self.spec.datacenter)?;
        Ok(NodeConfig {
            server: true,
            bootstrap_expect: Some(self.spec.servers as u32),
            cert_file: Some(cert.cert_file),
            key_file: Some(cert.key_file),
            ca_key_file: Some(self.tls.ca_key_file.clone()),
            ..self.base_config(name, host)
        })
    }

    /// An agent's config on `host`: the servers to join, the CA and the join token.
    pub fn agent_config(&self, name: &str, host: usize) -> NodeConfig {
        NodeConfig {
            snapshot_threshold: None,
            ..self.base_config(name, host)
        }
    }

    /// The host index of spare host `k` (after the servers and agents).
    pub fn spare_host(&self, k: usize) -> usize {
        assert!(
            k < self.spec.spare_hosts,
            "spare host {k} of {}",
            self.spec.spare_hosts
        );
        self.spec.servers + self.spec.agents + k
    }

    /// Starts an extra node on `host` with `config`, without waiting for it to serve. The
    /// caller owns it (its log is printed if the test panics while it is alive).
    pub fn spawn(&self, role: Role, host: usize, config: NodeConfig) -> Node {
        let name = config.node_name.clone();
        let mut node = self.node(&name, role, host, config);
        node.spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e:#}"));
        node
    }

    pub fn server(&self, i: usize) -> &Node {
        &self.servers[i]
    }

    pub fn server_mut(&mut self, i: usize) -> &mut Node {
        &mut self.servers[i]
    }

    pub fn agent(&self, i: usize) -> &Node {
        &self.agents[i]
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Node {
        &mut self.agents[i]
    }

    pub fn servers(&self) -> &[Node] {
        &self.servers
    }

    pub fn agents(&self) -> &[Node] {
        &self.agents
    }

    pub fn net(&self) -> &Net {
        &self.net
    }

    pub fn net_mut(&mut self) -> &mut Net {
        &mut self.net
    }

    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The cluster's temp dir (configs, data, logs, TLS).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Cuts server `i`'s mesh link.
    pub fn cut_server(&self, i: usize) {
        self.servers[i].note("mesh link cut");
        self.net.cut(self.servers[i].host).expect("cut");
    }

    pub fn heal_server(&self, i: usize) {
        self.servers[i].note("mesh link healed");
        self.net.heal(self.servers[i].host).expect("heal");
    }

    pub fn cut_agent(&self, i: usize) {
        self.agents[i].note("mesh link cut");
        self.net.cut(self.agents[i].host).expect("cut");
    }

    pub fn heal_agent(&self, i: usize) {
        self.agents[i].note("mesh link healed");
        self.net.heal(self.agents[i].host).expect("heal");
    }

    /// The index of the server whose QUIC address is `addr`.
    pub fn server_by_addr(&self, addr: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.quic_addr() == addr)
    }

    /// What each server says the leader is (`None`: no answer; `Some("")`: no leader).
    pub async fn leader_views(&self) -> Vec<Option<String>> {
        self.leader_views_within(PROBE_TIMEOUT).await
    }

    /// [`Cluster::leader_views`], waiting at most `timeout` for each server (a paused one
    /// never answers).
    pub async fn leader_views_within(&self, timeout: Duration) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for s in &self.servers {
            let view = tokio::time::timeout(timeout, leader_addr(s.api())).await;
            out.push(view.ok().flatten());
        }
        out
    }

    /// The leader a majority of all servers names, as a server index.
    pub async fn leader(&self) -> Option<usize> {
        self.leader_within(PROBE_TIMEOUT).await
    }

    /// [`Cluster::leader`], waiting at most `timeout` for each server's view.
    pub async fn leader_within(&self, timeout: Duration) -> Option<usize> {
        let views = self.leader_views_within(timeout).await;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for v in views.into_iter().flatten() {
            if !v.is_empty() {
                *counts.entry(v).or_default() += 1;
            }
        }
        let quorum = self.servers.len() / 2 + 1;
        counts
            .into_iter()
            .find(|(_, n)| *n >= quorum)
            .and_then(|(addr, _)| self.server_by_addr(&addr))
    }

    /// Waits until a majority of servers name the same leader, which is one of them and is
    /// running; panics with every server's view after `timeout`.
    pub async fn wait_leader(&mut self, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(i) = self.leader().await {
                if self.servers[i].is_running() {
                    return i;
                }
            }
            if start.elapsed() > timeout {
                let views = self.leader_views().await;
                panic!("no leader agreed by a majority within {timeout:?}; views: {views:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every agent names a leader and shows up alive (Status 1) in the leader's
    /// `/v1/agent/members`.
    pub async fn wait_agents_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let mut missing = Vec::new();
            for a in &self.agents {
                match leader_addr(a.api()).await {
                    Some(l) if !l.is_empty() => {}
                    other => missing.push(format!("{} sees leader {other:?}", a.name)),
                }
            }
            let leader = self.leader().await;
            match leader {
                None => missing.push("no leader".into()),
                Some(l) => {
                    let members = members(self.servers[l].api()).await.unwrap_or_default();
                    for a in &self.agents {
                        match members.iter().find(|m| m.name == a.name) {
                            Some(m) if m.status == STATUS_ALIVE => {}
                            Some(m) => missing.push(format!("{} has status {}", a.name, m.status)),
                            None => missing.push(format!("{} is not a member", a.name)),
                        }
                    }
                }
            }
            if missing.is_empty() {
                return;
            }
            if start.elapsed() > timeout {
                panic!("agents not ready within {timeout:?}: {missing:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::env::var_os(KEEP_ENV).is_some();
        if keep {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("cluster files kept in {}", p.display());
            }
        } else if std::thread::panicking() {
            eprintln!(
                "cluster files in {} (removed; set {KEEP_ENV}=1 to keep them)",
                self.root.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Consul-shaped calls the cluster tests share
// ---------------------------------------------------------------------------------------------

/// `Status` of a member: alive.
pub const STATUS_ALIVE: u64 = 1;
/// `Status` of a member: left.
pub const STATUS_LEFT: u64 = 3;
/// `Status` of a member: failed.
pub const STATUS_FAILED: u64 = 4;

/// One entry of `/v1/agent/members`.
#[derive(Clone, Debug, Deserialize)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Addr", default)]
    pub addr: String,
    #[serde(rename = "Port", default)]
    pub port: u64,
    #[serde(rename = "Tags", default)]
    pub tags: BTreeMap<String, String>,
    #[serde(rename = "Status")]
    pub status: u64,
}

/// One server of `/v1/operator/raft/configuration`.
#[derive(Clone, Debug, Deserialize)]
pub struct RaftServer {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Node", default)]
    pub node: String,
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Leader", default)]
    pub leader: bool,
    #[serde(rename = "Voter", default)]
    pub voter: bool,
}

/// A GET with [`PROBE_TIMEOUT`]; `None` on a transport error.
pub async fn probe(api: &Api, path: &str) -> Option<crate::http::Resp> {
    api.send(Method::GET, path, None, Some(PROBE_TIMEOUT))
        .await
        .ok()
}

/// `/v1/status/leader`: `Some("")` when the node knows no leader, `None` when it does not
/// answer 200 with a JSON string.
pub async fn leader_addr(api: &Api) -> Option<String> {
    let r = probe(api, "/v1/status/leader").await?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice::<String>(&r.body).ok()
}

/// `/v1/agent/members`, `None` when it does not answer 200 with the expected JSON.
pub async fn members(api: &Api) -> Option<Vec<Member>> {
    let r = probe(api, "/v1/agent/members").await?;
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

/// The `Status` of member `name` as `api` reports it.
pub async fn member_status(api: &Api, name: &str) -> Option<u64> {
    members(api)
        .await?
        .into_iter()
        .find(|m| m.name == name)
        .map(|m| m.status)
}

/// `/v1/operator/raft/configuration` servers.
pub async fn raft_servers(api: &Api) -> Option<Vec<RaftServer>> {
    let r = probe(api, "/v1/operator/raft/configuration").await?;
    if r.status != 200 {
        return None;
    }
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    serde_json::from_value(v.get("Servers")?.clone()).ok()
}

/// The outcome of a write: acknowledged (200 `true`), refused with a status, or no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Acked,
    Refused { status: u16, body: String },
    NoAnswer(String),
}

impl WriteOutcome {
    pub fn is_acked(&self) -> bool {
        matches!(self, WriteOutcome::Acked)
    }
}

/// `PUT /v1/kv/<key>` with `value`, bounded by `timeout`.
pub async fn kv_put(api: &Api, key: &str, value: &[u8], timeout: Duration) -> WriteOutcome {
    match api
        .send(
            Method::PUT,
            &format!("/v1/kv/{key}"),
            Some(value.to_vec()),
            Some(timeout),
        )
        .await
    {
        Ok(r) if r.status == 200 && r.text().trim() == "true" => WriteOutcome::Acked,
        Ok(r) => WriteOutcome::Refused {
            status: r.status,
            body: r.text(),
        },
        Err(e) => WriteOutcome::NoAnswer(format!("{e}")),
    }
}

/// `GET /v1/kv/<key>?raw&stale`: the value, `Ok(None)` on 404, `Err` otherwise.
pub async fn kv_get_stale(api: &Api, key: &str) -> Result<Option<Vec<u8>>, String> {
    kv_get(api, key, "stale").await
}

/// `GET /v1/kv/<key>?raw&consistent`: the value, `Ok(None)` on 404, `Err` otherwise.
pub async fn kv_get_consistent(api: &Api, key: &str) -> Result<Option<Vec<u8>>, String> {
    kv_get(api, key, "consistent").await
}

async fn kv_get(api: &Api, key: &str, consistency: &str) -> Result<Option<Vec<u8>>, String> {
    let r = api
        .send(
            Method::GET,
            &format!("/v1/kv/{key}?raw&{consistency}"),
            None,
            Some(PROBE_TIMEOUT),
        )
        .await
        .map_err(|e| format!("{e}"))?;
    match r.status {
        200 => Ok(Some(r.body)),
        404 => Ok(None),
        s => Err(format!("status {s}: {}", r.text())),
    }
}

/// `GET /v1/kv/<prefix>?keys&stale`: the sorted keys (an empty list on 404).
pub async fn kv_keys_stale(api: &Api, prefix: &str) -> Result<Vec<String>, String> {
    let r = api
        .send(
            Method::GET,
            &format!("/v1/kv/{prefix}?keys&stale"),
            None,
            Some(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| format!("{e}"))?;
    match r.status {
        200 => {
            let mut keys: Vec<String> =
                serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
            keys.sort();
            Ok(keys)
        }
        404 => Ok(Vec::new()),
        s => Err(format!("status {s}: {}", r.text())),
    }
}

/// `GET /v1/kv/<prefix>?recurse&stale` as key -> decoded value (empty on 404).
pub async fn kv_entries_stale(
    api: &Api,
    prefix: &str,
) -> Result<BTreeMap<String, Vec<u8>>, String> {
    use base64::Engine as _;
    let r = api
        .send(
            Method::GET,
            &format!("/v1/kv/{prefix}?recurse&stale"),
            None,
            Some(Duration::from_secs(10)),
        )
        .await
        .map_err(|e| format!("{e}"))?;
    match r.status {
        200 => {}
        404 => return Ok(BTreeMap::new()),
        s => return Err(format!("status {s}: {}", r.text())),
    }
    let entries: Vec<Value> =
        serde_json::from_slice(&r.body).map_err(|e| format!("{e}: {}", r.text()))?;
    let mut out = BTreeMap::new();
    for e in entries {
        let key = e["Key"].as_str().ok_or("an entry without Key")?.to_string();
        let value = match e["Value"].as_str() {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|err| format!("{key}: {err}"))?,
            None => Vec::new(),
        };
        out.insert(key, value);
    }
    Ok(out)
}

/// The value of the sample of `name` whose labels include `label="value"` in Prometheus text.
pub fn metric_with_label(text: &str, name: &str, label: &str, value: &str) -> Option<f64> {
    let want = format!("{label}=\"{value}\"");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, v) = rest.split_once('}')?;
            labels
                .split(',')
                .any(|kv| kv.trim() == want)
                .then(|| v.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .reduce(|a, b| a + b)
}

/// The socket address of a `IP:PORT` string, for comparisons.
pub fn socket_addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cluster_serving_line() {
        let s = ClusterServing::parse(
            "==> meshd serving: http=http://0.0.0.0:8500 quic=10.64.1.11:8301 node=s1 \
             datacenter=dc1 data_dir=/tmp/x role=server",
        )
        .expect("a serving line");
        assert_eq!(s.quic, "10.64.1.11:8301");
        assert_eq!(s.role, "server");
        assert_eq!(s.node, "s1");
        assert!(ClusterServing::parse("nope").is_none());
    }

    #[test]
    fn strips_colors() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "2026  WARN x"
        );
    }

    #[test]
    fn writes_toml() {
        let c = NodeConfig {
            node_name: "s1".into(),
            datacenter: "dc1".into(),
            data_dir: "/tmp/d".into(),
            server: true,
            bootstrap_expect: Some(3),
            retry_join: vec!["10.1.1.1:8301".into(), "10.1.1.2:8301".into()],
            bind_addr: "10.1.1.1:8301".into(),
            http_addr: "0.0.0.0:8500".into(),
            join_token: Some("a\"b".into()),
            log_level: "debug".into(),
            ..NodeConfig::default()
        };
        let t = c.to_toml();
        assert!(
            t.contains("retry_join = [\"10.1.1.1:8301\", \"10.1.1.2:8301\"]\n"),
            "{t}"
        );
        assert!(t.contains("join_token = \"a\\\"b\"\n"), "{t}");
        assert!(t.contains("bootstrap_expect = 3\n"), "{t}");
        assert!(!t.contains("cert_file"), "{t}");
    }

    #[test]
    fn reads_labelled_metrics() {
        let text = "# TYPE meshd_raft_snapshots counter\n\
                    meshd_raft_snapshots_total{op=\"built\"} 3\n\
                    meshd_raft_snapshots_total{op=\"installed\"} 1\n";
        assert_eq!(
            metric_with_label(text, "meshd_raft_snapshots_total", "op", "installed"),
            Some(1.0)
        );
        assert_eq!(
            metric_with_label(text, "meshd_raft_snapshots_total", "op", "x"),
            None
        );
    }
}
