//! The caller side of a proxied connection, at accept: which destination (the listener's, or
//! the captured virtual IP's), who is calling, the destination's connection caps; then the
//! connection is served at layer 4 ([`l4`](super::l4)) or layer 7 ([`http`](super::http)) by
//! the destination's protocol. Everything here reads one [`Table`] (no registry lock).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::budget::Ticket;
use super::decide::{Destination, Table};
use super::listeners::Listen;
use super::{caller, http, l4, Inner};

/// Who is calling and whom: what the serving layers need of the accept.
pub struct Call {
    /// The caller's service, `None` for the node's identity.
    pub source: Option<String>,
    /// `source`, or `node:<name>`: the metrics' label.
    pub source_label: String,
    pub destination: Arc<Destination>,
    /// The virtual IP's port the caller dialled; `None` for an explicit upstream.
    pub vip_port: Option<u16>,
    pub peer: SocketAddr,
}

/// Proxies one accepted connection, admitted with `ticket` (two descriptors).
pub async fn handle(inner: Arc<Inner>, tcp: TcpStream, listen: Arc<Listen>, ticket: Ticket) {
    let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
        return;
    };
    let table = inner.decisions.table();
    let name = match &*listen {
        Listen::Vip { service }
        | Listen::Upstream {
            destination: service,
            ..
        } => Some(service.as_str()),
        Listen::Captured => table.captured(local),
    };
    // The first connection to a service compiles its destination.
    let destination = name
        .and_then(|n| inner.decisions.destination(n, &inner.store))
        .filter(|d| !matches!(*listen, Listen::Captured) || d.ports.contains(&local.port()));
    let Some(destination) = destination else {
        let name = listen.destination().unwrap_or_default();
        let reason = if name.is_empty() {
            "no_route"
        } else {
            "no_endpoint"
        };
        inner.metrics.refuse("", name, reason);
        tracing::debug!(%local, destination = name, "connection to no known service");
        return reset(tcp);
    };
    let source = match &*listen {
        Listen::Upstream { source, .. } => Some(source.clone()),
        Listen::Vip { .. } | Listen::Captured => inner.attribute(&table, local, peer),
    };
    drop(table);
    let source_label = source
        .clone()
        .unwrap_or_else(|| format!("node:{}", inner.node));
    let d = &destination;
    for (limit, count, reason, name) in [
        (
            d.limits.max_connections,
            &d.counts.active,
            "max_connections",
            "MaxConnections",
        ),
        (
            d.limits.max_pending_connects,
            &d.counts.pending,
            "max_pending_connects",
            "MaxPendingConnects",
        ),
    ] {
        if limit > 0 && count.load(Ordering::Relaxed) >= limit {
            inner.metrics.refuse(&source_label, &d.service, reason);
            tracing::warn!(destination = %d.service, source = %source_label, limit,
                "connection refused: the destination's {name} limit is reached");
            return reset(tcp);
        }
    }
    let vip_port = match &*listen {
        Listen::Upstream { .. } => None,
        _ => Some(local.port()),
    };
    let call = Call {
        source,
        source_label,
        destination,
        vip_port,
        peer,
    };
    if call.destination.protocol.is_l7() {
        http::server::serve(inner, tcp, call, ticket).await
    } else {
        l4::serve(inner, tcp, call, ticket).await
    }
}

/// Closes the caller's connection with a reset: it learns at once that nothing is there.
pub fn reset(tcp: TcpStream) {
    let _ = tcp.set_zero_linger();
}

impl Inner {
    /// Which local service a connection to a virtual IP comes from: the one registered with
    /// the `user` owning the caller's socket, else the host's only service; `None`: the node.
    fn attribute(&self, table: &Table, local: SocketAddr, peer: SocketAddr) -> Option<String> {
        let services = &table.local;
        // The socket table is read only when some local service declares its user.
        let uid = if peer.ip().is_loopback() && services.declare_users() {
            caller::socket_uid(local, peer).ok().flatten()
        } else {
            None
        };
        if let Some(uid) = uid {
            let mut by_user = services.run_by(|user| self.uid_of(user) == Some(uid));
            match (by_user.next(), by_user.next()) {
                (Some(name), None) => return Some(name.to_string()),
                (Some(_), Some(_)) => return None,
                _ => {}
            }
        }
        services.only().map(str::to_string)
    }
}
