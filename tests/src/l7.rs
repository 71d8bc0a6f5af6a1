//! The layer-7 tests' harness (`tests/tests/mesh_l7.rs`): the three-host cluster of
//! [`crate::mesh`] (a server on host A, agents on B and C, meshd's DNS on 127.0.0.1:53 of A),
//! real backends in the hosts' namespaces, config entries, and clients that run inside a
//! namespace.
//!
//! - [`L7Mesh::start`]: the cluster and `api` v1 (on B: tag `v1`, meta `version=v1`) and v2
//!   (on C: tag `v2`, meta `version=v2`) on [`API_PORT`], `api-backup` on C and `api-new` on B,
//!   each an `l7backend` process (`src/bin/l7backend.rs`) named by its instance ID and
//!   registered with a passing TTL check ([`L7Mesh::set_check`] flips it).
//! - [`L7Mesh::start_python`]: the gRPC and WebSocket peers of `tests/python-tools/`.
//! - [`L7Mesh::requests`]: curl in a namespace, one process for many URLs (one keep-alive
//!   connection), each answer parsed into a [`Reply`]; [`tally`] counts the instances.
//! - [`L7Mesh::upload`] / [`L7Mesh::download`]: bulk bodies of [`crate::pattern`] through curl,
//!   streamed and hashed on the way (never held in memory).
//!
//! Every process started here is a [`Proc`], SIGKILLed and reaped on drop (the cluster's
//! [`crate::netns::Net`] also kills whatever is left in its namespaces).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{Cluster, ClusterSpec, Node};
use crate::mesh::{connect_in, passing, register, ResolvConf, PROPAGATE};
use crate::pattern;
use crate::{wait_until, Resp};

/// The port of every `api` instance (each host has its own loopback).
pub const API_PORT: u16 = 18080;
/// `api-backup`'s port, on C.
pub const BACKUP_PORT: u16 = 18083;
/// `api-new`'s port, on B.
pub const NEW_PORT: u16 = 18084;
/// How long one curl transfer of a small answer may take.
const CURL_MAX_TIME: &str = "20";

/// A tool of `tests/python-tools/`.
pub fn python_tool(name: &str) -> PathBuf {
    crate::binary::workspace_root()
        .join("tests")
        .join("python-tools")
        .join(name)
}

/// A process in a host's namespace, its stdout and stderr in a log file; SIGKILLed and reaped
/// on drop.
pub struct Proc {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Proc {
    /// Starts `program ARGS` in `ns` (`ip netns exec`, which execs: the pid is the program's).
    pub fn spawn(ns: &str, program: &Path, args: &[&str], log: &Path) -> Proc {
        let what = format!("{} {}", program.display(), args.join(" "));
        let out = std::fs::File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = out.try_clone().expect("clone a log file");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what} in {ns}: {e}"));
        Proc {
            child,
            what,
            log: log.to_path_buf(),
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `addr` in `ns` accepts connections; panics with the log if the process
    /// exits or nothing listens in time.
    pub async fn wait_listening(&mut self, ns: &str, addr: std::net::SocketAddr) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if connect_in(ns, addr).await.is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}):\n{}", self.what, self.log());
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "nothing listens on {addr} for {}:\n{}",
                    self.what,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer of a curl batch.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The HTTP status (0 when the transfer failed).
    pub status: u16,
    /// New connections curl opened for this transfer (0: it reused one).
    pub connects: u32,
    /// `1.1` or `2`.
    pub version: String,
    /// The response headers, names lowercase, each an array of values.
    pub headers: Value,
    /// The body as JSON (the backend's echo), `Null` when it is not JSON.
    pub body: Value,
}

impl Reply {
    /// The instance that answered (the body's `instance`, else the `x-instance` header).
    pub fn instance(&self) -> String {
        self.body["instance"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.header("x-instance"))
            .unwrap_or_default()
    }

    /// The path the backend saw.
    pub fn path(&self) -> String {
        self.body["path"].as_str().unwrap_or_default().to_string()
    }

    /// A request header as the backend saw it.
    pub fn seen_header(&self, name: &str) -> Option<String> {
        self.body["headers"][name].as_str().map(str::to_string)
    }

    /// A response header (the first value).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers[name][0].as_str().map(str::to_string)
    }
}

/// How many answers each instance gave.
pub fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in replies {
        *t.entry(r.instance()).or_default() += 1;
    }
    t
}

const META: &str = "\n@@META ";
const END: &str = "\n@@END\n";

/// Splits the output of a curl batch run with [`write_out`] into replies.
fn parse_replies(out: &str) -> Result<Vec<Reply>, String> {
    let mut replies = Vec::new();
    for piece in out.split(END).filter(|p| !p.is_empty()) {
        let (body, meta) = piece
            .rsplit_once(META.trim_start_matches('\n'))
            .ok_or_else(|| format!("no write-out in {piece:?}"))?;
        let body = body.strip_suffix('\n').unwrap_or(body);
        let mut f = meta.splitn(4, ' ');
        let (code, conns, version, headers) = (f.next(), f.next(), f.next(), f.next());
        replies.push(Reply {
            status: code.and_then(|c| c.parse().ok()).unwrap_or(0),
            connects: conns.and_then(|c| c.parse().ok()).unwrap_or(0),
            version: version.unwrap_or_default().to_string(),
            headers: headers
                .and_then(|h| serde_json::from_str(h).ok())
                .unwrap_or(Value::Null),
            body: serde_json::from_str(body).unwrap_or(Value::Null),
        });
    }
    Ok(replies)
}

/// curl's `-w` for [`parse_replies`].
fn write_out() -> String {
    format!("{META}%{{http_code}} %{{num_connects}} %{{http_version}} %{{header_json}}{END}")
}

/// The L7 tests' cluster and backends. Dropping it stops the backends, then the cluster.
pub struct L7Mesh {
    // Field order is drop order.
    procs: Vec<Proc>,
    pub cluster: Cluster,
    _resolv: ResolvConf,
    backend: PathBuf,
}

impl L7Mesh {
    pub fn a(&self) -> &Node {
        self.cluster.server(0)
    }
    pub fn b(&self) -> &Node {
        self.cluster.agent(0)
    }
    pub fn c(&self) -> &Node {
        self.cluster.agent(1)
    }

    /// Starts the cluster (default intention policy allow; DNS on 127.0.0.1:53, which curl
    /// on A resolves `*.virtual.mesh` through) and the `api`, `api-backup` and `api-new`
    /// instances of `backend` (the `l7backend` binary), and waits until A sees them passing.
    pub async fn start(backend: &Path) -> L7Mesh {
        let mut spec = ClusterSpec::default().servers(1).agents(2);
        spec.extra = vec![
            ("default_intention_policy".into(), "\"allow\"".into()),
            ("dns_addr".into(), "\"127.0.0.1:53\"".into()),
        ];
        let cluster = Cluster::start(spec).await;
        let resolv = ResolvConf::new(cluster.server(0).ns());
        let mut mesh = L7Mesh {
            procs: Vec::new(),
            cluster,
            _resolv: resolv,
            backend: backend.to_path_buf(),
        };
        let (b, c) = (1, 2);
        mesh.add_backend(b, "api", "api-v1", API_PORT, "v1").await;
        mesh.add_backend(c, "api", "api-v2", API_PORT, "v2").await;
        mesh.add_backend(c, "api-backup", "api-backup", BACKUP_PORT, "v1")
            .await;
        mesh.add_backend(b, "api-new", "api-new", NEW_PORT, "v1")
            .await;
        for (svc, n) in [("api", 2), ("api-backup", 1), ("api-new", 1)] {
            wait_until(PROPAGATE, &format!("A sees {n} {svc} passing"), || async {
                passing(mesh.a(), svc).await == n
            })
            .await;
        }
        mesh
    }

    /// The node on host `host` (0: A, 1: B, 2: C).
    pub fn node(&self, host: usize) -> &Node {
        match host {
            0 => self.a(),
            1 => self.b(),
            _ => self.c(),
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.cluster.root().join(format!("{name}.log"))
    }

    /// Starts an `l7backend` named `id` on 127.0.0.1:`port` of `host` and registers it as an
    /// instance of `service` with tag `version` and meta `version`, and a TTL check
    /// `<id>-ttl` that is passing.
    pub async fn add_backend(
        &mut self,
        host: usize,
        service: &str,
        id: &str,
        port: u16,
        version: &str,
    ) {
        let ns = self.node(host).ns().to_string();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let log = self.log_path(id);
        let mut p = Proc::spawn(&ns, &self.backend, &[&addr.to_string(), id], &log);
        p.wait_listening(&ns, addr).await;
        self.procs.push(p);
        let node = self.node(host);
        register(
            node.api(),
            json!({"ID": id, "Name": service, "Port": port, "Address": "127.0.0.1",
                   "Tags": [version], "Meta": {"version": version},
                   "Check": {"CheckID": format!("{id}-ttl"), "Name": "ttl", "TTL": "10m"}}),
        )
        .await;
        self.set_check(host, &format!("{id}-ttl"), true).await;
    }

    /// Starts `tests/python-tools/TOOL server 127.0.0.1:PORT NAME` on `host`, registers it as
    /// `service` (instance `name`), and waits until it listens.
    pub async fn start_python(
        &mut self,
        host: usize,
        tool: &str,
        service: &str,
        name: &str,
        port: u16,
    ) {
        let ns = self.node(host).ns().to_string();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        let script = python_tool(tool);
        let log = self.log_path(name);
        let mut p = Proc::spawn(
            &ns,
            Path::new("python3"),
            &[&script.to_string_lossy(), "server", &addr.to_string(), name],
            &log,
        );
        p.wait_listening(&ns, addr).await;
        self.procs.push(p);
        register(
            self.node(host).api(),
            json!({"ID": name, "Name": service, "Port": port, "Address": "127.0.0.1"}),
        )
        .await;
    }

    /// Sets TTL check `check_id` of `host`'s agent passing or critical.
    pub async fn set_check(&self, host: usize, check_id: &str, pass: bool) {
        let verb = if pass { "pass" } else { "fail" };
        self.node(host)
            .api()
            .put(&format!("/v1/agent/check/{verb}/{check_id}"), "")
            .await
            .expect_status(200);
    }

    /// `PUT /v1/config` of `entry` on `node`: the answer, whatever it is.
    pub async fn put_config(&self, node: &Node, entry: &Value) -> Resp {
        node.api().put_json("/v1/config", entry).await
    }

    /// Writes `entry` through B (an agent: the write is forwarded) and panics unless it is
    /// stored.
    pub async fn config(&self, entry: Value) {
        let r = self.put_config(self.b(), &entry).await;
        assert_eq!(
            r.status,
            200,
            "PUT /v1/config {entry}: {} {}",
            r.status,
            r.text()
        );
    }

    /// `DELETE /v1/config/KIND/NAME` through B.
    pub async fn delete_config(&self, kind: &str, name: &str) {
        self.b()
            .api()
            .delete(&format!("/v1/config/{kind}/{name}"))
            .await
            .expect_status(200);
    }

    /// `service-defaults` with `Protocol: protocol` for each of `services`.
    pub async fn protocol(&self, services: &[&str], protocol: &str) {
        for s in services {
            self.config(json!({"Kind": "service-defaults", "Name": s, "Protocol": protocol}))
                .await;
        }
    }

    /// `curl ARGS` in `node`'s namespace: stdout, or the exit code and stderr.
    pub fn curl(&self, node: &Node, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ip")
            .args(["netns", "exec", node.ns(), "curl"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run curl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(format!(
                "curl exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// One curl process in `node`'s namespace fetching every URL of `urls` (one keep-alive
    /// connection while the server keeps it open), each with the extra `args` (`-H ...`,
    /// `--http2-prior-knowledge`, `-X POST`); a reply per URL, or curl's error.
    pub fn requests(
        &self,
        node: &Node,
        urls: &[String],
        args: &[&str],
    ) -> Result<Vec<Reply>, String> {
        let w = write_out();
        let mut all: Vec<&str> = vec!["-sS", "--max-time", CURL_MAX_TIME, "-w", &w];
        all.extend_from_slice(args);
        all.extend(urls.iter().map(String::as_str));
        let replies = parse_replies(&self.curl(node, &all)?)?;
        if replies.len() != urls.len() {
            return Err(format!("{} replies to {} URLs", replies.len(), urls.len()));
        }
        Ok(replies)
    }

    /// `n` requests for `url` from `node` in curl batches of at most 100 (one connection
    /// each); panics naming `what` when a batch fails.
    pub fn many(&self, node: &Node, n: usize, url: &str, args: &[&str], what: &str) -> Vec<Reply> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let k = (n - out.len()).min(100);
            let urls = vec![url.to_string(); k];
            let r = self
                .requests(node, &urls, args)
                .unwrap_or_else(|e| panic!("{what}: {url}: {e}\n{}", node.log()));
            out.extend(r);
        }
        out
    }

    /// Polls batches of 20 requests for `url` (with `args`) from A until `ok` holds for a
    /// batch's tally; returns that tally. Failed batches count as not yet.
    pub async fn wait_tally(
        &self,
        what: &str,
        url: &str,
        args: &[&str],
        ok: impl Fn(&BTreeMap<String, usize>) -> bool,
    ) -> BTreeMap<String, usize> {
        let urls = vec![url.to_string(); 20];
        crate::wait_for(PROPAGATE, what, || async {
            let r = self.requests(self.a(), &urls, args).ok()?;
            let t = tally(&r);
            (r.iter().all(|x| x.status == 200) && ok(&t)).then_some(t)
        })
        .await
    }

    /// POSTs the first `len` bytes of [`pattern`] to `url` from `node` (`curl -T -`: streamed,
    /// chunked) and returns the backend's JSON answer.
    pub async fn upload(
        &self,
        node: &Node,
        url: &str,
        len: u64,
        max_secs: u64,
    ) -> Result<Value, String> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                node.ns(),
                "curl",
                "-sS",
                "--fail",
                "--max-time",
            ])
            .arg(max_secs.to_string())
            .args([
                "-X",
                "POST",
                "-H",
                "content-type: application/octet-stream",
                "-T",
                "-",
                url,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run curl: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        tokio::task::spawn_blocking(move || {
            let writer = std::thread::spawn(move || pattern::write_to(stdin, len));
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            let wrote = writer
                .join()
                .map_err(|_| "the writer panicked".to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "curl exit {:?} (stdin: {wrote:?}): {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            serde_json::from_slice(&out.stdout)
                .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// GETs `url` from `node` with curl (and the extra `args`), hashing the body as it
    /// arrives: its length and SHA-256 (hex), or curl's error.
    pub async fn download(
        &self,
        node: &Node,
        url: &str,
        args: &[&str],
        max_secs: u64,
    ) -> Result<(u64, String), String> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                node.ns(),
                "curl",
                "-sS",
                "--fail",
                "--max-time",
            ])
            .arg(max_secs.to_string())
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run curl: {e}"))?;
        let mut stdout = child.stdout.take().expect("piped stdout");
        tokio::task::spawn_blocking(move || {
            let mut sha = pattern::Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sha.update(&buf[..n]),
                    Err(e) => return Err(format!("read curl's output: {e}")),
                }
            }
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "curl exit {:?} after {} bytes: {}",
                    out.status.code(),
                    sha.len(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok((sha.len(), sha.finish_hex()))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_write_out_is_split_into_replies() {
        let out = format!(
            "{{\"instance\":\"api-v1\",\"path\":\"/a\"}}{META}200 1 1.1 {{\"x-instance\":[\"api-v1\"]}}{END}\
             {META}000 0 0 {{}}{END}\
             not json{META}503 0 2 {{\"x-instance\":[\"api-v2\"],\n\"date\":[\"x\"]}}{END}"
        );
        let r = parse_replies(&out).expect("parse");
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].status, r[0].connects, r[0].version.as_str()),
            (200, 1, "1.1")
        );
        assert_eq!(r[0].instance(), "api-v1");
        assert_eq!(r[0].path(), "/a");
        assert_eq!(r[1].status, 0);
        assert_eq!(r[2].body, Value::Null);
        assert_eq!(r[2].instance(), "api-v2", "from the header");
        assert_eq!(tally(&r).get("api-v1"), Some(&1));
    }
}
