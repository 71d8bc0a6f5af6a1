//! The caller side of a proxied connection: who is calling, the destination's limits, a
//! healthy endpoint chosen by the destination's balancing policy, then a direct connection
//! (same host) or a tunnel stream (another host), retried on another endpoint when it fails.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::ca;
use registry::model::Status as Health;
use tokio::net::TcpStream;

use super::balance::Endpoint;
use super::budget::Ticket;
use super::capture;
use super::metrics::{Dest, Pair};
use super::tunnel::{read_answer, Header, IdentityKey, Status};
use super::{splice, Inner};
use crate::transport::ALPN_TUNNEL;

/// Endpoints tried for one connection before it is given up.
const MAX_ATTEMPTS: usize = 3;
/// Bound of one attempt: connect (or tunnel stream), header and answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new service's first connection waits for its leaf.
const LEAF_WAIT: Duration = Duration::from_secs(3);

/// What a listener forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A virtual IP: the caller is found from its socket.
    Vip { service: String },
    /// An explicit upstream of a local service: the caller is that service.
    Upstream { source: String, destination: String },
    /// The capture listener: the virtual IP (and so the service) is the connection's local
    /// address, then as [`Route::Vip`].
    Captured,
}

impl Route {
    /// The service called, when the listener alone says it (`None` for [`Route::Captured`],
    /// where the connection's local address does).
    pub fn destination(&self) -> Option<&str> {
        match self {
            Route::Vip { service } => Some(service),
            Route::Upstream { destination, .. } => Some(destination),
            Route::Captured => None,
        }
    }
}

/// A chosen endpoint: on this host (connect directly) or another (tunnel to its QUIC address).
struct Target {
    endpoint: Endpoint,
    instance: String,
    port: u16,
    /// The QUIC address of the endpoint's host, `None` when it is this host.
    quic: Option<SocketAddr>,
}

/// Proxies one accepted connection, admitted with `ticket` (two descriptors).
pub async fn handle(inner: Arc<Inner>, tcp: TcpStream, route: Arc<Route>, mut ticket: Ticket) {
    let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
        return;
    };
    let destination = match route.destination() {
        Some(d) => d.to_string(),
        None => match capture::route(&inner.store.read(), local) {
            Some(service) => service,
            None => {
                inner.metrics.refuse("", "", "no_route");
                tracing::debug!(%local, "captured connection to no service's virtual IP and port");
                return reset(tcp);
            }
        },
    };
    let source = match &*route {
        Route::Upstream { source, .. } => Some(source.clone()),
        Route::Vip { .. } | Route::Captured => inner.attribute(local, peer),
    };
    let source_label = source
        .clone()
        .unwrap_or_else(|| format!("node:{}", inner.node));
    let limits = inner.limits(&destination);
    let counts = inner.dest_counts(&destination);
    for (limit, count, reason, name) in [
        (
            limits.max_connections,
            &counts.active,
            "max_connections",
            "MaxConnections",
        ),
        (
            limits.max_pending_connects,
            &counts.pending,
            "max_pending_connects",
            "MaxPendingConnects",
        ),
    ] {
        if limit > 0 && count.load(Ordering::Relaxed) >= limit {
            inner.metrics.refuse(&source_label, &destination, reason);
            tracing::warn!(%destination, source = %source_label, limit,
                "connection refused: the destination's {name} limit is reached");
            return reset(tcp);
        }
    }
    let _active = counts.hold_active();
    let pending = counts.hold_pending();
    let started = Instant::now();
    let listen_port = local.port();
    let balancer = inner.balancer(&destination);
    let pair = Pair {
        source: source_label.clone(),
        destination: destination.clone(),
        direction: "outbound",
    };
    let mut exclude: Vec<String> = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        let candidates = inner.endpoints(&destination, &route, listen_port);
        let endpoints: Vec<Endpoint> = candidates.iter().map(|t| t.endpoint.clone()).collect();
        let Some(ep) = balancer.pick(&endpoints, &exclude, peer.ip()) else {
            break;
        };
        let Some(target) = candidates.into_iter().find(|t| t.endpoint.key == ep.key) else {
            break;
        };
        if attempt > 0 {
            inner
                .metrics
                .connect_retries
                .get_or_create(&Dest {
                    destination: destination.clone(),
                })
                .inc();
        }
        let _in_flight = balancer.start(&ep.key);
        let connected = match target.quic {
            None => connect_local(target.endpoint.addr)
                .await
                .map(Connected::Local)
                .map_err(|e| TunnelError::Retry(e.to_string())),
            Some(quic) => inner
                .open_tunnel(source.as_deref(), &destination, &target, quic)
                .await
                .map(|(send, recv)| Connected::Tunnel(send, recv)),
        };
        match connected {
            Ok(upstream) => {
                drop(pending);
                if matches!(upstream, Connected::Tunnel(..)) {
                    // A tunnel stream is no descriptor: only the caller's socket is held.
                    ticket.release(1);
                }
                inner.observe_connect(&destination, started);
                let counters = inner.counters(&pair);
                let _open = inner.open_guard(pair);
                match upstream {
                    Connected::Local(up) => splice::tcp_tcp(tcp, up, &counters).await,
                    Connected::Tunnel(send, recv) => {
                        splice::tcp_tunnel(tcp, send, recv, &counters).await
                    }
                }
                return;
            }
            Err(TunnelError::Final(status, why)) => {
                if status == Status::Denied {
                    inner.metrics.denied.get_or_create(&pair).inc();
                } else {
                    inner
                        .metrics
                        .refuse(&source_label, &destination, "refused_by_destination");
                }
                tracing::info!(%destination, source = %source_label, node = %target.endpoint.node, ?status, %why, "connection refused by the destination");
                return reset(tcp);
            }
            Err(TunnelError::Retry(why)) => {
                tracing::debug!(%destination, node = %target.endpoint.node, %why, "endpoint failed; trying another");
            }
        }
        exclude.push(ep.key);
    }
    let reason = if exclude.is_empty() {
        "no_endpoint"
    } else {
        "connect_failed"
    };
    inner.metrics.refuse(&source_label, &destination, reason);
    tracing::warn!(%destination, source = %source_label, tried = exclude.len(),
        "connection dropped: no healthy endpoint answered");
    reset(tcp);
}

async fn connect_local(addr: SocketAddr) -> std::io::Result<TcpStream> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Closes the caller's connection with a reset: it learns at once that nothing is there.
pub fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

/// An endpoint that answered: on this host, or through a tunnel.
enum Connected {
    Local(TcpStream),
    Tunnel(quinn::SendStream, quinn::RecvStream),
}

pub enum TunnelError {
    /// The destination refused for a reason another endpoint would share (denied).
    Final(Status, String),
    /// This endpoint failed; another may do.
    Retry(String),
}

impl Inner {
    /// The healthy endpoints of `destination` (passing only), for a route on `listen_port`.
    fn endpoints(&self, destination: &str, route: &Route, listen_port: u16) -> Vec<Target> {
        let st = self.store.read();
        let healthy: Vec<_> = st
            .health_service(destination)
            .into_iter()
            .filter(|e| e.status() == Health::Passing)
            .collect();
        // A virtual IP port maps to the instances on that port, when some use it.
        let on_port = matches!(route, Route::Vip { .. } | Route::Captured)
            && healthy.iter().any(|e| e.service.port == listen_port);
        healthy
            .into_iter()
            .filter(|e| !on_port || e.service.port == listen_port)
            .filter_map(|e| {
                let node = e.node.node.clone();
                let (addr, quic) = if node == self.node {
                    (
                        super::inbound::local_addr(&e.service.address, e.service.port),
                        None,
                    )
                } else {
                    let quic: SocketAddr = st.member(&node)?.addr.parse().ok()?;
                    (quic, Some(quic))
                };
                Some(Target {
                    endpoint: Endpoint {
                        key: format!("{node}/{}", e.service.id),
                        addr,
                        node,
                        weight: e.service.weights.passing,
                    },
                    instance: e.service.id.clone(),
                    port: e.service.port,
                    quic,
                })
            })
            .collect()
    }

    /// A tunnel stream to `target`, its header sent and the destination's answer read.
    async fn open_tunnel(
        &self,
        source: Option<&str>,
        destination: &str,
        target: &Target,
        quic: SocketAddr,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TunnelError> {
        let (key, leaf) = match source {
            Some(s) => match self.leaf(s).await {
                Some(l) => (
                    IdentityKey {
                        service: Some(s.to_string()),
                        generation: l.generation,
                    },
                    Some(l),
                ),
                None => {
                    return Err(TunnelError::Final(
                        Status::Unauthenticated,
                        format!("no leaf certificate for {s} yet"),
                    ))
                }
            },
            None => (
                IdentityKey {
                    service: None,
                    generation: 0,
                },
                None,
            ),
        };
        let server_name = ca::node_host_name(&target.endpoint.node, &self.datacenter);
        let attempt = async {
            let conn = self
                .connections
                .get(
                    &self.transport,
                    quic,
                    &server_name,
                    &key,
                    || match &leaf {
                        Some(l) => l.client_config(&self.transport.roots()),
                        None => self.transport.client_config(ALPN_TUNNEL),
                    },
                    &self.metrics.tunnels,
                )
                .await
                .map_err(|e| TunnelError::Retry(e.to_string()))?;
            let (mut send, mut recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => {
                    self.connections.forget(quic, &key);
                    return Err(TunnelError::Retry(e.to_string()));
                }
            };
            let header = Header {
                service: destination.to_string(),
                port: target.port,
                instance: target.instance.clone(),
            }
            .encode()
            .map_err(|e| TunnelError::Final(Status::BadHeader, e.to_string()))?;
            send.write_all(&header)
                .await
                .map_err(|e| TunnelError::Retry(e.to_string()))?;
            let (status, why) = read_answer(&mut recv)
                .await
                .map_err(|e| TunnelError::Retry(e.to_string()))?;
            match status {
                Status::Ok => Ok((send, recv)),
                s if s.retryable() => Err(TunnelError::Retry(why)),
                s => Err(TunnelError::Final(s, why)),
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(TunnelError::Retry(format!(
                "no answer within {ATTEMPT_TIMEOUT:?}"
            ))),
        }
    }

    /// The leaf of a local service, waiting briefly for a new service's first one.
    async fn leaf(&self, service: &str) -> Option<Arc<super::leaves::Leaf>> {
        if let Some(l) = self.leaves.get(service) {
            return Some(l);
        }
        let mut changed = self.leaves.subscribe();
        let deadline = tokio::time::Instant::now() + LEAF_WAIT;
        loop {
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return self.leaves.get(service);
            }
            if let Some(l) = self.leaves.get(service) {
                return Some(l);
            }
        }
    }

    fn observe_connect(&self, destination: &str, started: Instant) {
        self.metrics
            .connect_seconds
            .get_or_create(&Dest {
                destination: destination.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}
