//! Moving bytes both ways between a TCP connection and a tunnel stream (or another TCP
//! connection), as plain TCP would: each direction ends on its own (a FIN becomes a QUIC
//! stream finish and back, so half-closed connections keep working), an abort on one side
//! aborts the other (a TCP reset becomes a stream reset and back), and flow control holds the
//! sender when the receiver is slow.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Copy buffer per direction (64 KiB or more keeps bulk transfers fast, see STACK.md).
const BUF: usize = 64 * 1024;

/// Where the bytes of each direction are counted.
pub struct Counters {
    /// From the TCP side into the tunnel.
    pub tcp_to_tunnel: Counter,
    /// From the tunnel out to the TCP side.
    pub tunnel_to_tcp: Counter,
}

/// How one direction ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    /// The sender finished (FIN); the finish was passed on.
    Finished,
    /// The sender aborted, or the receiver went away.
    Aborted,
}

/// Splices `tcp` with a connected endpoint until both directions end.
pub async fn splice(tcp: TcpStream, upstream: super::connect::Stream, counters: &Counters) {
    match upstream {
        super::connect::Stream::Tcp(up) => tcp_tcp(tcp, up, counters).await,
        super::connect::Stream::Tunnel(send, recv) => tcp_tunnel(tcp, send, recv, counters).await,
    }
}

/// Splices `tcp` with a QUIC stream until both directions end. A reset on either side resets
/// the other (a TCP reset is sent with `SO_LINGER` 0).
pub async fn tcp_tunnel(
    tcp: TcpStream,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    counters: &Counters,
) {
    let _ = tcp.set_nodelay(true);
    let (mut tr, mut tw) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; BUF];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) => {
                    let _ = send.finish();
                    return End::Finished;
                }
                Ok(n) => {
                    if let Err(e) = send.write_all(&buf[..n]).await {
                        tracing::debug!(error = %e, "tunnel stream refused our bytes");
                        return End::Aborted;
                    }
                    counters.tcp_to_tunnel.inc_by(n as u64);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TCP side aborted");
                    let _ = send.reset(0u32.into());
                    return End::Aborted;
                }
            }
        }
    };
    let down = async {
        // `read` gathers every datagram's worth that has arrived into one buffer, so a bulk
        // transfer costs one TCP write per 64 KiB rather than one per QUIC packet.
        let mut buf = vec![0u8; BUF];
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    if let Err(e) = tw.write_all(&buf[..n]).await {
                        tracing::debug!(error = %e, "TCP side refused our bytes");
                        let _ = recv.stop(0u32.into());
                        return End::Aborted;
                    }
                    counters.tunnel_to_tcp.inc_by(n as u64);
                }
                Ok(None) => {
                    let _ = tw.shutdown().await;
                    return End::Finished;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "tunnel stream aborted");
                    return End::Aborted;
                }
            }
        }
    };
    let (a, b) = join_abortable(up, down).await;
    if a == End::Aborted || b == End::Aborted {
        abort(tr.reunite(tw).ok());
        let _ = send.reset(0u32.into());
        let _ = recv.stop(0u32.into());
    } else {
        // Let the peer read the last bytes of our finish before the stream handles go.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

/// Splices two TCP connections (an endpoint on this host) until both directions end.
pub async fn tcp_tcp(a: TcpStream, b: TcpStream, counters: &Counters) {
    let _ = a.set_nodelay(true);
    let _ = b.set_nodelay(true);
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let ab = copy_half(&mut ar, &mut bw, &counters.tcp_to_tunnel);
    let ba = copy_half(&mut br, &mut aw, &counters.tunnel_to_tcp);
    let (x, y) = join_abortable(ab, ba).await;
    if x == End::Aborted || y == End::Aborted {
        abort(ar.reunite(aw).ok());
        abort(br.reunite(bw).ok());
    }
}

async fn copy_half(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    count: &Counter,
) -> End {
    let mut buf = vec![0u8; BUF];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                let _ = w.shutdown().await;
                return End::Finished;
            }
            Ok(n) => {
                if w.write_all(&buf[..n]).await.is_err() {
                    return End::Aborted;
                }
                count.inc_by(n as u64);
            }
            Err(_) => return End::Aborted,
        }
    }
}

/// Runs both directions; when one aborts, the other is not waited for (it would block on a
/// peer that will never send again).
async fn join_abortable(
    a: impl std::future::Future<Output = End>,
    b: impl std::future::Future<Output = End>,
) -> (End, End) {
    tokio::pin!(a);
    tokio::pin!(b);
    tokio::select! {
        x = &mut a => {
            if x == End::Aborted { return (x, End::Aborted); }
            (x, b.await)
        }
        y = &mut b => {
            if y == End::Aborted { return (End::Aborted, y); }
            (a.await, y)
        }
    }
}

/// Closes a TCP connection with a reset, as its peer's abort would have.
fn abort(tcp: Option<TcpStream>) {
    if let Some(t) = tcp {
        let _ = t.set_zero_linger();
        drop(t);
    }
}
