//! The DNS server: hickory-server on one address, UDP and TCP on the same port, answering the
//! mesh's names from this host's local view of the registry (a lookup never leaves the host),
//! forwarding other names to the configured recursors or refusing them.
//!
//! - [`names`]: what a query name asks for;
//! - [`answer`]: the records for it, from the state;
//! - [`handler`]: the hickory request handler (checks, dispatch, metrics);
//! - [`recursor`]: upstream resolvers for foreign names;
//! - `udp`: the UDP loop (TCP is hickory-server's), `mmsg`: its batched socket I/O, `fast`:
//!   the fast path for plain A/AAAA questions, `cache`: healthy instances per service.
//!
//! UDP answers are cut to 512 bytes, or the client's EDNS size (at most 4096), with TC set so
//! the client asks again over TCP, where a message may hold 65,535 bytes. One task reads each
//! UDP socket in batches and answers in place; hickory-server handles each TCP connection in
//! its own task, with an idle timeout, so a slow or hostile client holds only its own
//! connection.

pub mod answer;
mod cache;
mod fast;
pub mod handler;
pub mod metrics;
mod mmsg;
pub mod names;
pub mod recursor;
mod udp;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hickory_server::Server;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::DnsConfig;
use crate::store::Store;
use handler::Handler;
pub use metrics::DnsMetrics;

/// The largest UDP answer we send, whatever a client's EDNS size says (fragments get lost).
pub const MAX_UDP_PAYLOAD: u16 = 4096;

/// How many bytes a UDP answer may take: 512 without EDNS (RFC 1035), else the client's EDNS
/// size within 512..=[`MAX_UDP_PAYLOAD`]. Also the size our own OPT record states.
pub fn udp_payload_limit(edns_size: Option<u16>) -> u16 {
    edns_size.map_or(512, |s| s.clamp(512, MAX_UDP_PAYLOAD))
}

/// A TCP connection that sends no complete query for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-connection buffer of answers waiting to be written.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Receive and send buffers of the UDP sockets, for bursts.
const UDP_BUFFER_BYTES: usize = 4 << 20;
/// How many times an ephemeral port is retried when TCP cannot take the UDP socket's port.
const PORT_ATTEMPTS: usize = 16;

/// A running DNS server; stopped by the cancellation token given to [`start`].
pub struct Dns {
    /// The bound address (UDP and TCP).
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Dns {
    /// Waits until the server has stopped (after the token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Binds the sockets and starts serving. `ns_ip` is what `ns.<domain>` answers.
pub async fn start(
    cfg: DnsConfig,
    datacenter: String,
    ns_ip: IpAddr,
    store: Store,
    metrics: DnsMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<Dns> {
    let recursor = recursor::Recursor::new(&cfg.recursors, cfg.recursor_timeout)
        .map_err(|e| anyhow::anyhow!("configuring the DNS recursors: {e}"))?;
    let (udp, tcp) = bind(cfg.addr)?;
    let addr = tcp.local_addr()?;
    let handler = Handler {
        store,
        domains: std::iter::once(cfg.domain.clone())
            .chain(cfg.alt_domain.clone())
            .collect(),
        cfg: Arc::new(cfg),
        datacenter,
        ns_ip,
        recursor,
        metrics,
        cache: Default::default(),
        fast: Default::default(),
    };
    let handler = Arc::new(handler);
    let mut udp_tasks = tokio::task::JoinSet::new();
    for s in udp {
        udp_tasks.spawn(udp::serve(s, handler.clone(), cancel.clone()));
    }
    let mut server = Server::new(Shared(handler));
    server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
    let task = tokio::spawn(async move {
        cancel.cancelled().await;
        if let Err(e) = server.shutdown_gracefully().await {
            tracing::warn!(error = %e, "DNS server stopped with an error");
        }
        while udp_tasks.join_next().await.is_some() {}
    });
    tracing::info!(%addr, "DNS serving (UDP and TCP)");
    Ok(Dns { addr, task })
}

/// The handler as hickory-server's TCP side holds it, shared with the UDP tasks.
struct Shared(Arc<Handler>);

#[async_trait::async_trait]
impl hickory_server::server::RequestHandler for Shared {
    async fn handle_request<
        R: hickory_server::server::ResponseHandler,
        T: hickory_server::net::runtime::Time,
    >(
        &self,
        request: &hickory_server::server::Request,
        response_handle: R,
    ) -> hickory_server::server::ResponseInfo {
        self.0
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// One UDP socket per core on the same port (SO_REUSEPORT: the kernel spreads clients over
/// them) and a TCP listener on that port. With port 0 the UDP socket picks the port; if TCP
/// cannot have it, another is tried.
fn bind(addr: SocketAddr) -> anyhow::Result<(Vec<tokio::net::UdpSocket>, tokio::net::TcpListener)> {
    let sockets = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let attempts = if addr.port() == 0 { PORT_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let first = udp_socket(addr).with_context(|| format!("binding DNS (UDP) on {addr}"))?;
        let bound = first.local_addr()?;
        let mut udp = vec![first];
        for _ in 1..sockets {
            udp.push(udp_socket(bound).with_context(|| format!("binding DNS (UDP) on {bound}"))?);
        }
        match tcp_listener(bound) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    let e = last.map(|e| e.to_string()).unwrap_or_default();
    anyhow::bail!("binding DNS (TCP) on the UDP port near {addr}: {e}")
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Best effort: the kernel caps these at net.core.rmem_max / wmem_max.
    let _ = s.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = s.set_send_buffer_size(UDP_BUFFER_BYTES);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}
