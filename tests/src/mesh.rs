//! Data-plane test servers and clients that live in a host's network namespace: an HTTP server
//! that names itself, a TCP echo server (half-close aware: it shuts its side down when the
//! client does), and connections made from inside a namespace. Sockets are created on a thread
//! that entered the namespace (see [`crate::netns::in_netns`]) and then driven by tokio.
//!
//! [`Mesh`] is the data-plane tests' cluster: a server on host A, agents on hosts B and C, an
//! HTTP server registered as `api` on B and on C (127.0.0.1 only), and `web` on A with an
//! explicit upstream to `api`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use serde_json::json;

use crate::cluster::{Cluster, ClusterSpec, Node};
use crate::netns::in_netns;
use crate::{wait_for, wait_until, Api};

/// Bound on reading one request head.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener on `addr` in namespace `ns`, with a backlog for thousands of connections at once
/// (std's 128 would make the kernel drop and reset connections under the tests' load).
fn listen_in(ns: &str, addr: &str) -> TcpListener {
    let sa: SocketAddr = addr.parse().expect("a socket address");
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&sa.into())?;
        s.listen(4096)?;
        Ok(s.into())
    };
    let std = in_netns(ns, bind)
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("bind {addr} in {ns}: {e}"));
    std.set_nonblocking(true).expect("nonblocking listener");
    TcpListener::from_std(std).expect("tokio listener")
}

/// A TCP connection to `addr` made from inside namespace `ns`.
pub async fn connect_in(ns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let ns = ns.to_string();
    let std = tokio::task::spawn_blocking(move || {
        in_netns(&ns, || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })
    })
    .await
    .map_err(std::io::Error::other)?
    .map_err(std::io::Error::other)??;
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// An HTTP server on 127.0.0.1 of a namespace whose every answer is `200` with its name as
/// the body (`Connection: close`).
pub struct NamedHttp {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl NamedHttp {
    /// Binds `127.0.0.1:port` (0: any) in `ns`.
    pub fn start(ns: &str, port: u16, name: &str) -> NamedHttp {
        let listener = listen_in(ns, &format!("127.0.0.1:{port}"));
        let addr = listener.local_addr().expect("local address");
        let hits = Arc::new(AtomicU64::new(0));
        let (h, body) = (hits.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (h, body) = (h.clone(), body.clone());
                tokio::spawn(async move {
                    let _ = answer(conn, &body, &h).await;
                });
            }
        });
        NamedHttp { addr, hits, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for NamedHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(mut conn: TcpStream, body: &str, hits: &AtomicU64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head = async {
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
        }
    };
    if !matches!(tokio::time::timeout(READ_TIMEOUT, head).await, Ok(Ok(true))) {
        return Ok(());
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

/// A TCP echo server on 127.0.0.1 of a namespace: every byte comes back in order; when the
/// client half-closes, the server finishes sending what it read and half-closes too.
pub struct Echo {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    pub fn start(ns: &str, port: u16) -> Echo {
        let listener = listen_in(ns, &format!("127.0.0.1:{port}"));
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.into_split();
                    if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                        let _ = w.shutdown().await;
                    }
                });
            }
        });
        Echo { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An [`Echo`] on `port` of `node`'s namespace, registered there as the service `echo`
/// (127.0.0.1 only, so the mesh is the way in from other hosts).
pub async fn register_echo(node: &Node, port: u16) -> Echo {
    let echo = Echo::start(node.ns(), port);
    register(
        node.api(),
        json!({"Name": "echo", "Port": echo.addr().port(), "Address": "127.0.0.1"}),
    )
    .await;
    echo
}

/// Sends `len` deterministic bytes on `conn` while reading everything back; returns the
/// SHA-256 of what was sent and of what came back. Half-closes after sending.
pub async fn echo_hashes(conn: TcpStream, len: u64) -> std::io::Result<([u8; 32], [u8; 32])> {
    echo_hashes_paced(conn, len, Duration::ZERO).await
}

/// [`echo_hashes`], pausing `pause` after each 64 KiB block: a transfer that lasts.
pub async fn echo_hashes_paced(
    conn: TcpStream,
    len: u64,
    pause: Duration,
) -> std::io::Result<([u8; 32], [u8; 32])> {
    use ring::digest::{Context, SHA256};
    let digest = |c: Context| -> [u8; 32] {
        let d = c.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    };
    let (mut r, mut w) = conn.into_split();
    let send = async move {
        let mut h = Context::new(&SHA256);
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while sent < len {
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let n = (len - sent).min(block.len() as u64) as usize;
            w.write_all(&block[..n]).await?;
            h.update(&block[..n]);
            sent += n as u64;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        w.shutdown().await?;
        Ok::<_, std::io::Error>(digest(h))
    };
    let recv = async move {
        let mut h = Context::new(&SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok::<_, std::io::Error>(digest(h))
    };
    let (a, b) = tokio::try_join!(send, recv)?;
    Ok((a, b))
}

/// `service`'s virtual IP and `port` as `node` sees it, once an echo through it from `node`'s
/// namespace comes back intact.
pub async fn echo_through_vip(node: &Node, service: &str, port: u16) -> SocketAddr {
    let vip = virtual_ip(node, service).await;
    let target: SocketAddr = format!("{vip}:{port}").parse().expect("address");
    wait_until(PROPAGATE, "echo answers through its virtual IP", || async {
        match connect_in(node.ns(), target).await {
            Ok(conn) => matches!(echo_hashes(conn, 16).await, Ok((x, y)) if x == y),
            Err(_) => false,
        }
    })
    .await;
    target
}

/// The port `api` listens on, on B and C (each host has its own loopback).
pub const API_PORT: u16 = 18080;
/// `web`'s explicit upstream to `api` on host A.
pub const UPSTREAM_PORT: u16 = 19191;
pub const PROPAGATE: Duration = Duration::from_secs(20);

pub async fn register(api: &Api, body: serde_json::Value) {
    api.put_json("/v1/agent/service/register", &body)
        .await
        .expect_status(200);
}

/// The virtual IP `node` has for `service`.
pub async fn virtual_ip(node: &Node, service: &str) -> String {
    wait_for(
        PROPAGATE,
        &format!("{service} has a virtual IP"),
        || async {
            let r = node.api().get("/v1/mesh/virtual-ips?stale").await;
            r.json()["VirtualIPs"]
                .as_array()
                .and_then(|v| v.iter().find(|e| e["Service"] == service))
                .and_then(|e| e["IP"].as_str())
                .map(str::to_string)
        },
    )
    .await
}

pub async fn passing(node: &Node, service: &str) -> usize {
    let r = node
        .api()
        .get(&format!("/v1/health/service/{service}?passing&stale"))
        .await;
    r.json().as_array().map(|a| a.len()).unwrap_or(0)
}

/// `curl` run in `node`'s namespace; the body, or the error.
pub fn curl(cluster: &Cluster, node: &Node, url: &str) -> Result<String, String> {
    let out = cluster
        .net()
        .exec(node.host(), "curl", &["-sS", "--max-time", "10", url])
        .map_err(|e| e.to_string())?;
    output_text(&out)
}

/// `curl -sS --max-time 5 URL` in `node`'s namespace as uid/gid `uid` with no supplementary
/// groups (`setpriv`, util-linux).
pub fn curl_as(cluster: &Cluster, node: &Node, uid: u32, url: &str) -> Result<String, String> {
    let out = cluster
        .net()
        .command(node.host(), "setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "curl",
            "-sS",
            "--max-time",
            "5",
            url,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("run setpriv: {e}"))?;
    output_text(&out)
}

/// Stdout of a successful run; else the exit code and stderr.
fn output_text(out: &std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Mesh {
    pub cluster: Cluster,
    /// `api` on B, then on C.
    pub servers: Vec<NamedHttp>,
    _resolv: ResolvConf,
}

impl Mesh {
    pub fn a(&self) -> &Node {
        self.cluster.server(0)
    }
    pub fn b(&self) -> &Node {
        self.cluster.agent(0)
    }
    pub fn c(&self) -> &Node {
        self.cluster.agent(1)
    }

    /// Starts the cluster (each node's config gets the `extra` lines, and serves DNS on
    /// 127.0.0.1:53 of its namespace, which `curl` there resolves through) and registers the
    /// services. `api` instances have a TCP check every second.
    pub async fn start(extra: &[(&str, &str)]) -> Mesh {
        let mut spec = ClusterSpec::default().servers(1).agents(2);
        spec.extra = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("dns_addr".to_string(), "\"127.0.0.1:53\"".to_string())])
            .collect();
        let cluster = Cluster::start(spec).await;
        let resolv = ResolvConf::new(cluster.server(0).ns());
        let (b, c) = (cluster.agent(0), cluster.agent(1));
        let servers = vec![
            NamedHttp::start(b.ns(), API_PORT, "api-b"),
            NamedHttp::start(c.ns(), API_PORT, "api-c"),
        ];
        for (node, id) in [(c, "api-c"), (b, "api-b")] {
            register(
                node.api(),
                json!({"ID": id, "Name": "api", "Port": API_PORT, "Address": "127.0.0.1",
                       "Check": {"TCP": format!("127.0.0.1:{API_PORT}"), "Interval": "1s"}}),
            )
            .await;
        }
        register(
            cluster.server(0).api(),
            json!({"Name": "web", "Port": 8000, "Address": "127.0.0.1",
                   "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
                       {"DestinationName": "api", "LocalBindPort": UPSTREAM_PORT}]}}}}),
        )
        .await;
        let mesh = Mesh {
            cluster,
            servers,
            _resolv: resolv,
        };
        wait_until(PROPAGATE, "A sees both api instances passing", || async {
            passing(mesh.a(), "api").await == 2
        })
        .await;
        mesh
    }
}

/// `/etc/netns/<ns>/resolv.conf` naming meshd's DNS on 127.0.0.1 (`ip netns exec` mounts it
/// over `/etc/resolv.conf`); removed on drop.
pub struct ResolvConf {
    dir: std::path::PathBuf,
}

impl ResolvConf {
    pub fn new(ns: &str) -> ResolvConf {
        let dir = std::path::PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&dir).expect("create /etc/netns/<ns>");
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:2\n",
        )
        .expect("write resolv.conf");
        ResolvConf { dir }
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a raw tunnel attempt got.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    /// The QUIC/TLS handshake failed (the peer refused our certificate).
    HandshakeFailed(String),
    /// The destination answered the header with this status byte and message.
    Answer(u8, String),
    /// The stream ended without an answer.
    NoAnswer(String),
}

/// Opens a QUIC connection from namespace `ns` to a meshd at `addr` with ALPN
/// `meshd-tunnel/1`, verifying it against `roots_pem` as `server_name`, presenting
/// `client` (certificate and key PEM) or nothing, and asks for `service` on `port`.
pub async fn tunnel_probe(
    ns: &str,
    addr: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    client: Option<(&str, &str)>,
    service: &str,
    port: u16,
) -> Probe {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.expect("root PEM")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut tls = match client {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.expect("client cert PEM"))
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![b"meshd-tunnel/1".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let socket = in_netns(ns, || std::net::UdpSocket::bind("0.0.0.0:0"))
        .expect("enter the namespace")
        .expect("bind UDP");
    let runtime = quinn::default_runtime().expect("tokio runtime");
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .expect("QUIC endpoint");
    let cfg = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    let attempt = async {
        let conn = match endpoint.connect_with(cfg, addr, server_name) {
            Ok(c) => match c.await {
                Ok(c) => c,
                Err(e) => return Probe::HandshakeFailed(e.to_string()),
            },
            Err(e) => return Probe::HandshakeFailed(e.to_string()),
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            // A refused client certificate shows up once the server's alert arrives.
            Err(e) => return Probe::HandshakeFailed(e.to_string()),
        };
        let mut header = vec![1u8, service.len() as u8];
        header.extend_from_slice(service.as_bytes());
        header.extend_from_slice(&port.to_be_bytes());
        header.push(0);
        if let Err(e) = send.write_all(&header).await {
            return Probe::HandshakeFailed(e.to_string());
        }
        match recv.read_to_end(1024).await {
            Ok(b) if b.len() >= 2 => {
                Probe::Answer(b[0], String::from_utf8_lossy(&b[2..]).to_string())
            }
            Ok(b) => Probe::NoAnswer(format!("{} bytes", b.len())),
            Err(e) => Probe::HandshakeFailed(e.to_string()),
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Probe::NoAnswer("timed out".into()));
    endpoint.close(0u32.into(), b"done");
    r
}

/// The sum of the samples of `name` whose labels include every `(label, value)`, 0 if none.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, v) = rest.split_once('}')?;
            let have: Vec<&str> = set.split(',').map(str::trim).collect();
            want.iter()
                .all(|w| have.contains(&w.as_str()))
                .then(|| v.split_whitespace().next()?.parse::<f64>().ok())?
        })
        .sum()
}
