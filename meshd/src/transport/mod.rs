//! Transport between hosts: one QUIC endpoint per host (quinn + rustls), mutual TLS with
//! certificates of the mesh CA, one ALPN per protocol.
//!
//! - [`tls`]: rustls/quinn configuration and the peer's SPIFFE identity;
//! - [`frame`]: length-prefixed JSON messages on streams;
//! - [`endpoint`]: the endpoint, its connection cache and accept loop.

pub mod endpoint;
pub mod frame;
pub mod tls;

pub use endpoint::{Handler, Incoming, Transport, TransportError, TransportMetrics};

/// Raft RPC between servers (both ends present server certificates).
pub const ALPN_RAFT: &[u8] = b"meshd-raft/1";
/// Agent/server RPC and watch streams (servers and enrolled nodes).
pub const ALPN_RPC: &[u8] = b"meshd-rpc/1";
/// Enrollment: a new agent, without a certificate yet, presents its join token and a CSR.
pub const ALPN_JOIN: &[u8] = b"meshd-join/1";
/// Data-plane tunnels: one stream per proxied TCP connection, the client presenting the
/// calling service's leaf (see `crate::proxy::tunnel`).
pub const ALPN_TUNNEL: &[u8] = b"meshd-tunnel/1";
/// Every protocol a server answers.
pub const SERVER_ALPNS: &[&[u8]] = &[ALPN_RAFT, ALPN_RPC, ALPN_JOIN, ALPN_TUNNEL];
/// Every protocol an agent answers.
pub const AGENT_ALPNS: &[&[u8]] = &[ALPN_TUNNEL];
