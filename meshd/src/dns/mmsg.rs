//! Batched datagram I/O (Linux `recvmmsg`/`sendmmsg`, through nix): one system call reads up
//! to [`BATCH`] queries and one writes their answers, as NSD does. The socket is non-blocking;
//! readiness comes from tokio (`try_io`), so an empty socket ends a batch with `WouldBlock`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrLike, SockaddrStorage,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// The largest datagram read; a longer one is cut, and then refused as empty.
pub const DATAGRAM: usize = 4096;

/// Buffers for one batch of received datagrams.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    /// Length and source of each datagram of the last batch.
    got: Vec<(usize, Option<SocketAddr>)>,
}

impl RecvBatch {
    pub fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![vec![0u8; DATAGRAM]; BATCH],
            got: Vec::with_capacity(BATCH),
        }
    }

    /// Reads up to [`BATCH`] datagrams; `WouldBlock` when none is waiting.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        socket.try_io(Interest::READABLE, || {
            self.got.clear();
            // nix's headers hold raw pointers (not Send): made per call, as this task may
            // move between threads across awaits.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let results = recvmmsg(
                fd,
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            for r in results {
                let len = if r.flags.contains(MsgFlags::MSG_TRUNC) {
                    0
                } else {
                    r.bytes
                };
                self.got
                    .push((len, r.address.as_ref().and_then(socket_addr)));
            }
            Ok(self.got.len())
        })
    }

    /// Datagram `i` of the last batch and where it came from.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (len, from) = *self.got.get(i)?;
        Some((self.bufs.get(i)?.get(..len)?, from?))
    }
}

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Answers waiting to be written, with their destinations.
pub struct SendBatch {
    out: Vec<Vec<u8>>,
    to: Vec<Option<SockaddrStorage>>,
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch {
            out: Vec::with_capacity(BATCH),
            to: Vec::with_capacity(BATCH),
        }
    }
}

impl SendBatch {
    pub fn push(&mut self, bytes: Vec<u8>, to: SocketAddr) {
        self.out.push(bytes);
        self.to.push(Some(SockaddrStorage::from(to)));
    }

    /// Writes every answer, up to [`BATCH`] per call, waiting for the socket to be writable
    /// when it is full. An answer the kernel refuses is dropped, as a lost datagram would be.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let fd = socket.as_raw_fd();
        let mut from = 0;
        while from < self.out.len() {
            let end = self.out.len().min(from + BATCH);
            let sent = socket.try_io(Interest::WRITABLE, || {
                let slices: Vec<[IoSlice<'_>; 1]> = self.out[from..end]
                    .iter()
                    .map(|b| [IoSlice::new(b)])
                    .collect();
                let cmsgs: [ControlMessage<'_>; 0] = [];
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(end - from, None);
                let results = sendmmsg(
                    fd,
                    &mut headers,
                    &slices,
                    &self.to[from..end],
                    cmsgs,
                    MsgFlags::MSG_DONTWAIT,
                )
                .map_err(io::Error::from)?;
                Ok(results.count())
            });
            match sent {
                Ok(0) => from += 1,
                Ok(n) => from += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if socket.writable().await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, to = ?self.to[from].as_ref().map(|a| a.len()), "DNS answer not sent");
                    from += 1;
                }
            }
        }
        self.out.clear();
        self.to.clear();
    }
}
