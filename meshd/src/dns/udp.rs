//! The UDP side of the DNS server: one task per socket (the sockets share the port through
//! SO_REUSEPORT) reads datagrams in batches, answers plain A/AAAA queries on the fast path
//! (`fast.rs`) and the rest through hickory-server's `Request` and the same [`Handler`] as TCP,
//! and writes the answers in batches.
//!
//! hickory-server's own UDP loop spawns a task per datagram and passes every answer through a
//! channel to a sender task; here an answer computed from the local state (nearly all of them)
//! is written by the reading task itself, and only a query that must wait (a foreign name sent
//! to a recursor) becomes a task of its own, so a slow upstream never holds the socket.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::fast;
use super::handler::Handler;
use super::mmsg::{RecvBatch, SendBatch, BATCH};
use super::udp_payload_limit;

/// At most this many queries wait on recursors per socket; more are dropped.
const MAX_PENDING: usize = 1024;

/// Serves one socket until `cancel`.
pub async fn serve(socket: UdpSocket, handler: Arc<Handler>, cancel: CancellationToken) {
    let socket = Arc::new(socket);
    let mut batch = RecvBatch::new();
    let mut answers = SendBatch::default();
    let mut pending: JoinSet<()> = JoinSet::new();
    let mut rng = fast::Shuffler::new();
    loop {
        tokio::select! {
            r = socket.readable() => if let Err(e) = r {
                tracing::warn!(error = %e, "DNS UDP socket failed");
                break;
            },
            _ = cancel.cancelled() => break,
        }
        // Read batches until the socket is empty (or a short batch says it nearly is).
        loop {
            let n = match batch.recv(&socket) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors of earlier sends surface here; the socket stays usable.
                    tracing::debug!(error = %e, "DNS UDP receive error");
                    break;
                }
            };
            while pending.try_join_next().is_some() {}
            for i in 0..n {
                let Some((datagram, src)) = batch.get(i) else {
                    continue;
                };
                if src.port() == 0 {
                    continue;
                }
                if let Some(q) = fast::parse(datagram) {
                    if let Some(answer) = handler.fast_answer(datagram, &q, &mut rng) {
                        answers.push(answer, src);
                        continue;
                    }
                }
                full_path(&socket, &handler, datagram, src, &mut pending);
            }
            answers.flush(&socket).await;
            if n < BATCH {
                break;
            }
            // A full batch means more are waiting: let the other tasks of this runtime (the
            // API, Raft, health checks) run first, so a flood of queries cannot starve them.
            tokio::task::yield_now().await;
        }
    }
    pending.shutdown().await;
}

/// Answers one datagram through hickory-server's `Request` and the handler: at once when the
/// answer comes from the local state, as a task when it waits on a recursor.
fn full_path(
    socket: &Arc<UdpSocket>,
    handler: &Arc<Handler>,
    datagram: &[u8],
    src: SocketAddr,
    pending: &mut JoinSet<()>,
) {
    let request = match Request::from_bytes(datagram.to_vec(), src, Protocol::Udp) {
        Ok(r) => r,
        Err(e) => {
            tracing::trace!(%src, error = %e, "malformed DNS datagram");
            handler.metrics.malformed.inc();
            if let Some(reply) = form_error(datagram) {
                let _ = socket.try_send_to(&reply, src);
            }
            return;
        }
    };
    // Never answer answers (reflection loops).
    if request.metadata.message_type == MessageType::Response {
        return;
    }
    let out = Reply {
        socket: socket.clone(),
        dst: src,
    };
    let h = handler.clone();
    let mut task: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(async move {
        h.handle_request::<_, TokioTime>(&request, out).await;
    });
    // Poll once here: an answer from the local state completes at once. One that waits
    // continues as a task (which polls it again with a real waker).
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if task.as_mut().poll(&mut cx).is_pending() {
        if pending.len() >= MAX_PENDING {
            tracing::debug!(%src, "too many DNS queries waiting on recursors; dropping one");
            return;
        }
        pending.spawn(task);
    }
}

/// A FORMERR answer to a datagram whose header can be read; `None` if it cannot (or it is
/// itself an answer).
fn form_error(datagram: &[u8]) -> Option<Vec<u8>> {
    let mut decoder = BinDecoder::new(datagram);
    let header = Header::read(&mut decoder).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut metadata = Metadata::response_from_request(&header.metadata);
    metadata.response_code = ResponseCode::FormErr;
    let mut out = Vec::with_capacity(12);
    let mut encoder = BinEncoder::new(&mut out);
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
    .emit(&mut encoder)
    .ok()?;
    Some(out)
}

/// Writes one answer to the socket it came from.
#[derive(Clone)]
struct Reply {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
}

#[async_trait::async_trait]
impl ResponseHandler for Reply {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // As hickory-server encodes UDP: at most the EDNS size we answer with, else 512 bytes;
        // what does not fit is left out and TC is set.
        let max = udp_payload_limit(response.edns().map(|e| e.max_payload()));
        let id = response.metadata().id;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => {
                // A record that did not fit may have left bytes past the message's end.
                let end = encoder.offset();
                bytes.truncate(end);
                info
            }
            Err(e) => {
                tracing::warn!(error = %e, "encoding a DNS answer failed");
                bytes.clear();
                let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
                metadata.response_code = ResponseCode::ServFail;
                let header = Header {
                    metadata,
                    counts: HeaderCounts::default(),
                };
                let mut encoder = BinEncoder::new(&mut bytes);
                header.emit(&mut encoder)?;
                ResponseInfo::from(header)
            }
        };
        match self.socket.try_send_to(&bytes, self.dst) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.socket.send_to(&bytes, self.dst).await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(info)
    }
}
