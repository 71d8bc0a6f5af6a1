//! The local ports the data plane accepts on, kept in step with the registry: every service's
//! virtual IP on each port its instances use, and every explicit upstream of this host's
//! services on its `LocalBindPort`. A port that cannot be bound is logged and tried again at
//! the next change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::outbound::{self, Route};
use super::Inner;

/// What should be listened on, from the registry as it is now.
fn desired(inner: &Inner) -> BTreeMap<SocketAddr, Route> {
    let st = inner.store.read();
    let mut out = BTreeMap::new();
    for vip in st.virtual_ips() {
        let ports: BTreeSet<u16> = st
            .service_instances(&vip.service)
            .into_iter()
            .map(|(_, s)| s.port)
            .filter(|p| *p != 0)
            .collect();
        for port in ports {
            out.insert(
                SocketAddr::new(IpAddr::V4(vip.ip), port),
                Route::Vip {
                    service: vip.service.clone(),
                },
            );
        }
    }
    for svc in st.node_services(&inner.node) {
        // Bad upstreams were refused at registration; an old entry is skipped.
        for u in svc.upstreams().unwrap_or_default() {
            out.insert(
                SocketAddr::new(u.bind_addr, u.bind_port),
                Route::Upstream {
                    source: svc.service.clone(),
                    destination: u.destination,
                },
            );
        }
    }
    out
}

/// The index that covers [`desired`]: services, virtual IPs and this node.
fn covering_index(inner: &Inner) -> u64 {
    let st = inner.store.read();
    st.indexes()
        .services
        .max(st.virtual_ips_index())
        .max(st.node_index(&inner.node))
}

/// Keeps the listeners in step until `cancel`.
pub async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    let mut applied = inner.store.subscribe();
    let mut open: HashMap<SocketAddr, (Route, CancellationToken)> = HashMap::new();
    let mut seen = u64::MAX;
    loop {
        let index = covering_index(&inner);
        if index != seen {
            seen = index;
            let want = desired(&inner);
            open.retain(|addr, (route, token)| {
                let keep = want.get(addr) == Some(route);
                if !keep {
                    tracing::debug!(%addr, ?route, "listener stopped");
                    token.cancel();
                }
                keep
            });
            for (addr, route) in want {
                if open.contains_key(&addr) {
                    continue;
                }
                match listen(addr) {
                    Ok(l) => {
                        tracing::debug!(%addr, ?route, "listening");
                        let token = cancel.child_token();
                        inner
                            .tasks
                            .spawn(accept(inner.clone(), l, route.clone(), token.clone()));
                        open.insert(addr, (route, token));
                    }
                    Err(e) => {
                        tracing::warn!(%addr, ?route, error = %e, "cannot listen for the data plane")
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = applied.changed() => if r.is_err() { break },
        }
    }
    for (_, (_, token)) in open {
        token.cancel();
    }
}

/// Accept queue of a proxy listener: callers open connections in bursts, and a full queue
/// makes the kernel drop or reset them (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn accept(
    inner: Arc<Inner>,
    listener: tokio::net::TcpListener,
    route: Route,
    cancel: CancellationToken,
) {
    let route = Arc::new(route);
    loop {
        let (tcp, _) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let inner2 = inner.clone();
        let route = route.clone();
        inner
            .tasks
            .spawn(async move { outbound::handle(inner2, tcp, route).await });
    }
}
