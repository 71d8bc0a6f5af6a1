//! The host's one QUIC endpoint: outgoing calls and streams (with a connection cache per peer
//! and protocol), and the accept loop that hands each incoming stream to the handler of its
//! connection's ALPN together with the peer's verified SPIFFE ID.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use registry::ca::SpiffeId;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::frame::{read_frame, write_frame, FrameError};
use super::tls::{self, TlsMaterial};

/// Bound of a QUIC handshake: hosts of a mesh answer in milliseconds; a dead one should not
/// hold a caller (a write, a failover) for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Socket buffer size asked for the endpoint's UDP socket, each way.
const UDP_BUFFER: usize = 8 << 20;

/// A stream accepted from a peer.
pub struct Incoming {
    pub alpn: Vec<u8>,
    /// The peer's verified identity (`None`: no client certificate, only on enrollment).
    pub peer: Option<SpiffeId>,
    pub remote: SocketAddr,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// What serves incoming streams.
pub type Handler = Arc<dyn Fn(Incoming) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("{addr}: {source}")]
    Frame {
        addr: SocketAddr,
        #[source]
        source: FrameError,
    },
    #[error("{addr}: stream: {reason}")]
    Stream { addr: SocketAddr, reason: String },
    #[error("{addr}: closed the stream without an answer")]
    NoAnswer { addr: SocketAddr },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("TLS setup: {0}")]
    Tls(String),
}

impl TransportError {
    /// Whether retrying cannot help: the peer's certificate is not from our CA, or ours is
    /// refused.
    pub fn is_certificate_error(&self) -> bool {
        let r = self.to_string();
        names_certificate(&r) || r.to_ascii_lowercase().contains("handshake failed")
    }
}

/// Whether a TLS failure's text says a certificate was refused (rustls and quinn name the
/// verifier error or the alert).
fn names_certificate(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("certificate") || r.contains("unknownissuer") || r.contains("unknown ca")
}

struct Identity {
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    material: Option<TlsMaterial>,
    /// The protocols served (none until an agent has its certificate).
    alpns: Vec<Vec<u8>>,
}

/// Metrics of the endpoint.
#[derive(Clone, Default)]
pub struct TransportMetrics {
    pub handshake_failures: Family<Vec<(String, String)>, Counter>,
    pub connections: Gauge,
}

/// The QUIC endpoint; cheap to share behind an `Arc`.
pub struct Transport {
    endpoint: quinn::Endpoint,
    server_name: String,
    identity: RwLock<Identity>,
    /// Client configs per ALPN, rebuilt when the identity changes.
    clients: Mutex<HashMap<Vec<u8>, quinn::ClientConfig>>,
    conns: Mutex<HashMap<(SocketAddr, Vec<u8>), quinn::Connection>>,
    metrics: TransportMetrics,
    /// Where streams of [`super::ALPN_TUNNEL`] go, once the data plane runs.
    tunnel: OnceLock<Handler>,
}

impl Transport {
    /// Binds the endpoint. With `material`, it also serves `alpns` (clients verified against
    /// the roots; anonymous clients admitted on `anonymous_alpn`s only, checked per stream by
    /// the handler through [`Incoming::peer`]).
    pub fn bind(
        addr: SocketAddr,
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
        material: Option<TlsMaterial>,
        server_name: String,
        alpns: &[&[u8]],
        metrics: TransportMetrics,
    ) -> Result<Transport, TransportError> {
        let server = match &material {
            Some(m) => Some(
                tls::quic_server_config(m, alpns, true)
                    .map_err(|e| TransportError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(|e| TransportError::Connect {
            addr,
            reason: format!("bind UDP: {e}"),
        })?;
        // Large buffers keep bulk tunnels from dropping datagrams (see STACK.md); the kernel
        // caps them at net.core.{r,w}mem_max.
        let s2 = socket2::SockRef::from(&socket);
        let _ = s2.set_recv_buffer_size(UDP_BUFFER);
        let _ = s2.set_send_buffer_size(UDP_BUFFER);
        let runtime = quinn::default_runtime().ok_or_else(|| TransportError::Connect {
            addr,
            reason: "no async runtime".into(),
        })?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
                .map_err(|e| TransportError::Connect {
                    addr,
                    reason: format!("QUIC endpoint: {e}"),
                })?;
        Ok(Transport {
            endpoint,
            server_name,
            identity: RwLock::new(Identity {
                roots,
                material,
                alpns: alpns.iter().map(|a| a.to_vec()).collect(),
            }),
            clients: Mutex::default(),
            conns: Mutex::default(),
            metrics,
            tunnel: OnceLock::new(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Installs this host's certificate (after enrollment): it presents it on new connections
    /// and, unless `alpns` is empty, serves those protocols.
    pub fn set_identity(
        &self,
        material: TlsMaterial,
        alpns: &[&[u8]],
    ) -> Result<(), TransportError> {
        if !alpns.is_empty() {
            let server = tls::quic_server_config(&material, alpns, true)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            self.endpoint.set_server_config(Some(server));
        }
        let mut id = self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        id.roots = material.roots.clone();
        id.material = Some(material);
        id.alpns = alpns.iter().map(|a| a.to_vec()).collect();
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Trusts exactly `roots` from now on (a CA rotation adds one), for new connections both
    /// ways; open connections stay.
    pub fn set_roots(
        &self,
        roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    ) -> Result<(), TransportError> {
        let mut id = self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if id.roots == roots {
            return Ok(());
        }
        let id = &mut *id;
        if let Some(m) = id.material.as_mut() {
            m.roots = roots.clone();
            if !id.alpns.is_empty() {
                let alpns: Vec<&[u8]> = id.alpns.iter().map(|a| a.as_slice()).collect();
                let server = tls::quic_server_config(m, &alpns, true)
                    .map_err(|e| TransportError::Tls(e.to_string()))?;
                self.endpoint.set_server_config(Some(server));
            }
        }
        id.roots = roots;
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Replaces this host's certificate and key (a reload of `cert_file`/`key_file`) for new
    /// connections both ways; the roots trusted now stay, plus those of `material`. Open
    /// connections keep the certificate they were made with.
    pub fn set_certificate(&self, mut material: TlsMaterial) -> Result<(), TransportError> {
        let mut id = self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let id = &mut *id;
        for root in std::mem::take(&mut material.roots) {
            if !id.roots.contains(&root) {
                id.roots.push(root);
            }
        }
        material.roots = id.roots.clone();
        if !id.alpns.is_empty() {
            let alpns: Vec<&[u8]> = id.alpns.iter().map(|a| a.as_slice()).collect();
            let server = tls::quic_server_config(&material, &alpns, true)
                .map_err(|e| TransportError::Tls(e.to_string()))?;
            self.endpoint.set_server_config(Some(server));
        }
        id.material = Some(material);
        self.clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// The certificate presented now (leaf first), if any.
    pub fn chain(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .material
            .as_ref()
            .map(|m| m.chain.clone())
            .unwrap_or_default()
    }

    /// The roots trusted now.
    pub fn roots(&self) -> Vec<rustls_pki_types::CertificateDer<'static>> {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .roots
            .clone()
    }

    /// Sends streams of the tunnel ALPN to `handler` (set once, when the data plane starts).
    pub fn set_tunnel_handler(&self, handler: Handler) {
        let _ = self.tunnel.set(handler);
    }

    /// A new connection to `addr` with a caller-built client config (a service identity),
    /// verifying the peer by `server_name`; not cached here.
    pub async fn connect_with(
        &self,
        cfg: quinn::ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        self.handshake(addr, connecting).await
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
        connecting: quinn::Connecting,
    ) -> Result<quinn::Connection, TransportError> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                self.count_handshake_failure("outbound", &e.to_string());
                Err(TransportError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                self.count_handshake_failure("outbound", "timed out");
                Err(TransportError::Connect {
                    addr,
                    reason: format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"),
                })
            }
        }
    }

    /// A client config presenting this host's own certificate (cached per ALPN).
    pub fn client_config(&self, alpn: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = clients.get(alpn) {
            return Ok(c.clone());
        }
        let id = self.identity.read().unwrap_or_else(PoisonError::into_inner);
        let identity = id.material.as_ref().map(|m| (m.chain.as_slice(), &*m.key));
        let cfg = tls::quic_client_config(&id.roots, identity, alpn)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        clients.insert(alpn.to_vec(), cfg.clone());
        Ok(cfg)
    }

    /// A connection to `addr` for `alpn`, reused while it lives.
    pub async fn connection(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<quinn::Connection, TransportError> {
        let key = (addr, alpn.to_vec());
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let cfg = self.client_config(alpn)?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, &self.server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let conn = self.handshake(addr, connecting).await?;
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, conn.clone());
        Ok(conn)
    }

    fn forget(&self, addr: SocketAddr, alpn: &[u8]) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(addr, alpn.to_vec()));
    }

    /// Opens a bidirectional stream to `addr` (retrying once on a fresh connection when the
    /// cached one turns out dead).
    pub async fn open(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        for attempt in 0..2 {
            let conn = self.connection(addr, alpn).await?;
            match conn.open_bi().await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    self.forget(addr, alpn);
                    if attempt == 1 {
                        return Err(TransportError::Stream {
                            addr,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Err(TransportError::NoAnswer { addr })
    }

    /// One request, one answer, on a new stream, bounded by `timeout`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
        &self,
        addr: SocketAddr,
        alpn: &[u8],
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, TransportError> {
        let fut = async {
            let (mut send, mut recv) = self.open(addr, alpn).await?;
            let frame = |source| TransportError::Frame { addr, source };
            write_frame(&mut send, req).await.map_err(frame)?;
            let _ = send.finish();
            match read_frame::<Resp>(&mut recv).await {
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err(TransportError::NoAnswer { addr }),
                Err(e) => {
                    if matches!(
                        e,
                        FrameError::Read(_) | FrameError::Write(_) | FrameError::Truncated
                    ) {
                        self.forget(addr, alpn);
                    }
                    Err(frame(e))
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => {
                self.forget(addr, alpn);
                Err(TransportError::Timeout { addr, timeout })
            }
        }
    }

    fn count_handshake_failure(&self, direction: &str, reason: &str) {
        let kind = if names_certificate(reason) {
            "certificate"
        } else if reason.contains("timed out") {
            "timeout"
        } else {
            "other"
        };
        self.metrics
            .handshake_failures
            .get_or_create(&vec![
                ("direction".into(), direction.into()),
                ("reason".into(), kind.into()),
            ])
            .inc();
    }

    /// Accepts connections until `cancel` fires; every stream goes to `handler`.
    pub async fn serve(self: Arc<Self>, handler: Handler, cancel: CancellationToken) {
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                _ = cancel.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let this = self.clone();
            let handler = handler.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        this.count_handshake_failure("inbound", &e.to_string());
                        tracing::warn!(%remote, error = %e, "refused a QUIC connection: handshake failed");
                        return;
                    }
                };
                this.metrics.connections.inc();
                let alpn = conn
                    .handshake_data()
                    .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                    .and_then(|d| d.protocol)
                    .unwrap_or_default();
                let peer = tls::peer_spiffe(&conn);
                tracing::debug!(%remote, alpn = %String::from_utf8_lossy(&alpn), ?peer, "accepted a QUIC connection");
                let streams = tokio_util::task::TaskTracker::new();
                loop {
                    let (send, recv) = tokio::select! {
                        _ = cancel.cancelled() => break,
                        s = conn.accept_bi() => match s {
                            Ok(s) => s,
                            Err(_) => break,
                        },
                    };
                    let incoming = Incoming {
                        alpn: alpn.clone(),
                        peer: peer.clone(),
                        remote,
                        send,
                        recv,
                    };
                    if alpn == super::ALPN_TUNNEL {
                        match this.tunnel.get() {
                            Some(h) => streams.spawn(h(incoming)),
                            None => continue,
                        };
                    } else {
                        streams.spawn(handler(incoming));
                    }
                }
                streams.close();
                this.metrics.connections.dec();
            });
        }
        tasks.close();
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
    }

    /// Closes every connection.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutting down");
    }
}
