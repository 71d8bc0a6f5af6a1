//! Connect: one way to reach an endpoint, whether it runs on this host (a TCP connection to
//! the instance) or another (a stream of the caller identity's mutual-TLS QUIC connection to
//! that host, its header sent and the destination's answer read). Both come back as one
//! [`Stream`] type, which the L4 splice and the HTTP client are written against.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use registry::ca;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::balance::Endpoint;
use super::leaves::Leaf;
use super::tunnel::{read_answer, Header, IdentityKey, Mode, Status};
use super::Inner;
use crate::transport::ALPN_TUNNEL;

/// Bound of one attempt: connect (or tunnel stream), header and answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new service's first connection waits for its leaf.
const LEAF_WAIT: Duration = Duration::from_secs(3);

/// A connected endpoint: on this host, or through a tunnel.
pub enum Stream {
    Tcp(TcpStream),
    Tunnel(quinn::SendStream, quinn::RecvStream),
}

/// Why an endpoint could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The destination refused for a reason another endpoint would share (denied).
    #[error("refused by the destination ({0:?}): {1}")]
    Final(Status, String),
    /// This endpoint failed; another may do.
    #[error("{0}")]
    Retry(String),
}

impl Inner {
    /// Connects to `ep` of `destination` for `source` (`None`: the node's identity), for a
    /// byte stream ([`Mode::Stream`]) or one HTTP exchange ([`Mode::Http`]).
    pub async fn connect(
        &self,
        source: Option<&str>,
        destination: &str,
        ep: &Endpoint,
        mode: Mode,
    ) -> Result<Stream, ConnectError> {
        self.connect_early(source, destination, ep, mode, &[]).await
    }

    /// As [`connect`](Self::connect), with `early` bytes sent on a tunnel stream right after
    /// its header, before the answer is read (an HTTP exchange's head: one round trip less).
    /// The destination reads them only if it answers `Ok`.
    pub async fn connect_early(
        &self,
        source: Option<&str>,
        destination: &str,
        ep: &Endpoint,
        mode: Mode,
        early: &[u8],
    ) -> Result<Stream, ConnectError> {
        match ep.quic {
            None => connect_local(ep.addr).await.map(Stream::Tcp),
            Some(quic) => self
                .open_tunnel(source, destination, ep, quic, mode, early)
                .await
                .map(|(s, r)| Stream::Tunnel(s, r)),
        }
    }

    /// A tunnel stream to `ep`, its header sent and the destination's answer read.
    async fn open_tunnel(
        &self,
        source: Option<&str>,
        destination: &str,
        ep: &Endpoint,
        quic: SocketAddr,
        mode: Mode,
        early: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), ConnectError> {
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
                    return Err(ConnectError::Final(
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
        let server_name = ca::node_host_name(&ep.node, &self.datacenter);
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
                .map_err(|e| ConnectError::Retry(e.to_string()))?;
            let (mut send, mut recv) = match conn.open_bi().await {
                Ok(s) => s,
                Err(e) => {
                    self.connections.forget(quic, &key);
                    return Err(ConnectError::Retry(e.to_string()));
                }
            };
            let mut header = Header {
                service: destination.to_string(),
                port: ep.port,
                instance: ep.instance.clone(),
                mode,
            }
            .encode()
            .map_err(|e| ConnectError::Final(Status::BadHeader, e.to_string()))?;
            header.extend_from_slice(early);
            send.write_all(&header)
                .await
                .map_err(|e| ConnectError::Retry(e.to_string()))?;
            let (status, why) = read_answer(&mut recv)
                .await
                .map_err(|e| ConnectError::Retry(e.to_string()))?;
            match status {
                Status::Ok => Ok((send, recv)),
                s if s.retryable() => Err(ConnectError::Retry(why)),
                s => Err(ConnectError::Final(s, why)),
            }
        };
        match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Retry(format!(
                "no answer within {ATTEMPT_TIMEOUT:?}"
            ))),
        }
    }

    /// The leaf of a local service, waiting briefly for a new service's first one.
    async fn leaf(&self, service: &str) -> Option<Arc<Leaf>> {
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
}

/// A TCP connection to an instance on this host, bounded by [`ATTEMPT_TIMEOUT`].
pub async fn connect_local(addr: SocketAddr) -> Result<TcpStream, ConnectError> {
    match tokio::time::timeout(ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => {
            let _ = t.set_nodelay(true);
            Ok(t)
        }
        Ok(Err(e)) => Err(ConnectError::Retry(format!("connect to {addr}: {e}"))),
        Err(_) => Err(ConnectError::Retry(format!(
            "connect to {addr} timed out after {ATTEMPT_TIMEOUT:?}"
        ))),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(t) => Pin::new(t).poll_read(cx, buf),
            Stream::Tunnel(_, r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(t) => Pin::new(t).poll_write(cx, buf),
            Stream::Tunnel(s, _) => Pin::new(s).poll_write(cx, buf).map_err(io::Error::from),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(t) => Pin::new(t).poll_flush(cx),
            Stream::Tunnel(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(t) => Pin::new(t).poll_shutdown(cx),
            Stream::Tunnel(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
