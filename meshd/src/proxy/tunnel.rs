//! Tunnels between hosts: the stream header, the destination's one-byte answer, and the
//! caller side's cache of QUIC connections (one per peer host and caller identity).
//!
//! Wire format, on a fresh bidirectional stream of ALPN `meshd-tunnel/1`:
//! - header: `1` (version), service name length (u8) and bytes, port (u16, big endian),
//!   instance ID length (u8) and bytes (empty: any instance of the service with that port);
//!   version `2` adds a mode byte after them ([`Mode`]: a byte stream, one HTTP exchange, or
//!   HTTP exchanges one after another, framed as [`http::frame`](super::http::frame) says). A
//!   byte stream is sent as version 1, which hosts of every version read;
//! - answer: a status byte ([`Status`]), a message length (u8) and bytes (why, when refused);
//! - then the connection's bytes, both ways; a finish is a FIN, a reset is an abort.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncReadExt;

use crate::transport::{Transport, TransportError};

const VERSION: u8 = 1;
/// The header version with a [`Mode`].
const VERSION_MODE: u8 = 2;

/// What the stream carries after the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// The connection's bytes, both ways (layer 4).
    #[default]
    Stream = 0,
    /// One HTTP request and its response, framed; the stream's finish ends each message.
    Http = 1,
    /// HTTP requests and their responses one after another, each message ending with its own
    /// frame, so the caller keeps the stream for its next request to the same instance.
    Exchanges = 2,
}

/// What a destination answers a header with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok = 0,
    /// An intention (or the default policy) denies the caller.
    Denied = 1,
    /// No such instance on that host (it moved): try another endpoint.
    NoInstance = 2,
    /// The local instance did not accept the connection: try another endpoint.
    ConnectFailed = 3,
    BadHeader = 4,
    /// The caller presented no service or node certificate.
    Unauthenticated = 5,
    /// The host is shutting down and takes no new connections: try another endpoint.
    Draining = 6,
    /// The host's data plane is at one of its limits (descriptors, connections): try
    /// another endpoint.
    Overloaded = 7,
}

impl Status {
    fn from_byte(b: u8) -> Option<Status> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Denied,
            2 => Status::NoInstance,
            3 => Status::ConnectFailed,
            4 => Status::BadHeader,
            5 => Status::Unauthenticated,
            6 => Status::Draining,
            7 => Status::Overloaded,
            _ => return None,
        })
    }

    /// Whether another endpoint may do better.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Status::NoInstance | Status::ConnectFailed | Status::Draining | Status::Overloaded
        )
    }
}

/// The header of a tunnel stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub service: String,
    pub port: u16,
    pub instance: String,
    pub mode: Mode,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("unsupported tunnel version {0}")]
    Version(u8),
    #[error("{0} is longer than 255 bytes")]
    TooLong(&'static str),
    #[error("unknown stream mode {0}")]
    Mode(u8),
    #[error("{0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("reading the header: {0}")]
    Read(String),
}

impl Header {
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let s = u8::try_from(self.service.len()).map_err(|_| HeaderError::TooLong("service"))?;
        let i =
            u8::try_from(self.instance.len()).map_err(|_| HeaderError::TooLong("instance ID"))?;
        let mut out = Vec::with_capacity(6 + self.service.len() + self.instance.len());
        out.push(match self.mode {
            Mode::Stream => VERSION,
            Mode::Http | Mode::Exchanges => VERSION_MODE,
        });
        out.push(s);
        out.extend_from_slice(self.service.as_bytes());
        out.extend_from_slice(&self.port.to_be_bytes());
        out.push(i);
        out.extend_from_slice(self.instance.as_bytes());
        if self.mode != Mode::Stream {
            out.push(self.mode as u8);
        }
        Ok(out)
    }

    /// Reads a header; every malformed one is an error, never a panic.
    pub async fn read(r: &mut (impl AsyncReadExt + Unpin)) -> Result<Header, HeaderError> {
        let rd = |e: std::io::Error| HeaderError::Read(e.to_string());
        let version = r.read_u8().await.map_err(rd)?;
        if version != VERSION && version != VERSION_MODE {
            return Err(HeaderError::Version(version));
        }
        let service = read_str(r, "service").await?;
        let port = r.read_u16().await.map_err(rd)?;
        let instance = read_str(r, "instance ID").await?;
        let mode = match version {
            VERSION => Mode::Stream,
            _ => match r.read_u8().await.map_err(rd)? {
                0 => Mode::Stream,
                1 => Mode::Http,
                2 => Mode::Exchanges,
                m => return Err(HeaderError::Mode(m)),
            },
        };
        Ok(Header {
            service,
            port,
            instance,
            mode,
        })
    }
}

async fn read_str(
    r: &mut (impl AsyncReadExt + Unpin),
    what: &'static str,
) -> Result<String, HeaderError> {
    let len = r
        .read_u8()
        .await
        .map_err(|e| HeaderError::Read(e.to_string()))?;
    let mut buf = vec![0u8; usize::from(len)];
    r.read_exact(&mut buf)
        .await
        .map_err(|e| HeaderError::Read(e.to_string()))?;
    String::from_utf8(buf).map_err(|_| HeaderError::NotUtf8(what))
}

/// Encodes an answer.
pub fn answer(status: Status, message: &str) -> Vec<u8> {
    let msg = &message.as_bytes()[..message.len().min(255)];
    let mut out = Vec::with_capacity(2 + msg.len());
    out.push(status as u8);
    out.push(msg.len() as u8);
    out.extend_from_slice(msg);
    out
}

/// Reads an answer: the status and the message.
pub async fn read_answer(
    r: &mut (impl AsyncReadExt + Unpin),
) -> Result<(Status, String), HeaderError> {
    let b = r
        .read_u8()
        .await
        .map_err(|e| HeaderError::Read(e.to_string()))?;
    let status = Status::from_byte(b).ok_or(HeaderError::Version(b))?;
    let message = read_str(r, "message").await?;
    Ok((status, message))
}

/// Which certificate a connection presents: a service leaf (with its generation, so a renewed
/// leaf gets new connections while old ones live on) or the node's.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct IdentityKey {
    pub service: Option<String>,
    pub generation: u64,
}

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// The caller side's QUIC connections, one per (peer, identity); concurrent first uses of a
/// key wait for one handshake.
#[derive(Default)]
pub struct Connections {
    slots: Mutex<HashMap<(SocketAddr, IdentityKey), Slot>>,
}

impl Connections {
    /// A live connection to `addr` as `identity`, made with `config` if there is none.
    pub async fn get(
        &self,
        transport: &Transport,
        addr: SocketAddr,
        server_name: &str,
        identity: &IdentityKey,
        config: impl FnOnce() -> Result<quinn::ClientConfig, TransportError>,
        tunnels: &prometheus_client::metrics::gauge::Gauge,
    ) -> Result<quinn::Connection, TransportError> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            // Forget closed connections and those of an older leaf of this identity (their
            // open streams live on: a stream keeps its connection).
            slots.retain(|(a, k), slot| {
                let renewed = *a == addr
                    && k.service == identity.service
                    && k.generation != identity.generation;
                let closed = slot
                    .try_lock()
                    .is_ok_and(|c| c.as_ref().is_some_and(|c| c.close_reason().is_some()));
                !renewed && !closed
            });
            slots.entry((addr, identity.clone())).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(c) = guard.as_ref() {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let conn = transport.connect_with(config()?, addr, server_name).await?;
        tunnels.inc();
        let closed = conn.clone();
        let gauge = tunnels.clone();
        tokio::spawn(async move {
            closed.closed().await;
            gauge.dec();
        });
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the connection to `addr` as `identity` (it failed).
    pub fn forget(&self, addr: SocketAddr, identity: &IdentityKey) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(addr, identity.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_and_answer_round_trip_and_garbage_is_an_error() {
        let h = Header {
            service: "api".into(),
            port: 8080,
            instance: "api-1".into(),
            mode: Mode::Stream,
        };
        for mode in [Mode::Stream, Mode::Http, Mode::Exchanges] {
            let h = Header { mode, ..h.clone() };
            let bytes = h.encode().expect("encode");
            assert_eq!(bytes[0], if mode == Mode::Stream { 1 } else { 2 });
            assert_eq!(Header::read(&mut bytes.as_slice()).await.expect("read"), h);
            for cut in 0..bytes.len() {
                assert!(Header::read(&mut &bytes[..cut]).await.is_err(), "cut {cut}");
            }
        }
        assert!(matches!(
            Header::read(&mut [2u8, 1, b'a', 0, 1, 0, 7].as_slice()).await,
            Err(HeaderError::Mode(7))
        ));
        assert!(matches!(
            Header::read(&mut [9u8, 0, 0, 0, 0].as_slice()).await,
            Err(HeaderError::Version(9))
        ));
        assert!(Header::read(&mut [1u8, 1, 0xff, 0, 1, 0].as_slice())
            .await
            .is_err());
        let long = Header {
            service: "x".repeat(256),
            ..h
        };
        assert!(long.encode().is_err());
        let a = answer(Status::Denied, "no");
        assert_eq!(
            read_answer(&mut a.as_slice()).await.expect("answer"),
            (Status::Denied, "no".to_string())
        );
        assert!(read_answer(&mut [77u8, 0].as_slice()).await.is_err());
    }
}
