//! The local ports the data plane accepts on, kept in step with the registry:
//!
//! - every explicit upstream of this host's services, on its `LocalBindPort` (few, declared);
//! - the virtual IPs, as [`capture`](super::capture) set up: with `sk_lookup`, one listener
//!   for the whole range and the program's prefixes kept equal to the range (plus addresses
//!   still held from an earlier range); in the fallback, one listener per virtual IP and port,
//!   at most `proxy_listener_limit`.
//!
//! Work per registry change does not grow with the registry: the upstreams are looked at again
//! only when this node changed, the captured prefixes only when the virtual-IP table changed
//! (O(addresses outside the range)), and the fallback's listeners cost O(limit · log n).
//!
//! A port that cannot be bound is logged and tried again [`RETRY_EVERY`] later (and at the next
//! change). Every accepted connection is admitted by the [`Budget`](super::budget::Budget)
//! before it gets a task.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::capture::{self, Capture};
use super::metrics::ListenerKind;
use super::outbound;
use super::Inner;

/// Accept queue of a proxy listener: callers open connections in bursts, and a full queue
/// makes the kernel drop or reset them (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 4096;
/// A listener that could not be opened is tried again this often.
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// At most one log line this often about virtual IPs the fallback leaves without a listener.
const UNSERVED_LOG_EVERY: Duration = Duration::from_secs(60);

/// What a listener forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A virtual IP: the caller is found from its socket.
    Vip { service: String },
    /// An explicit upstream of a local service: the caller is that service.
    Upstream { source: String, destination: String },
    /// The capture listener: the virtual IP (and so the service) is the connection's local
    /// address, then as [`Listen::Vip`].
    Captured,
}

impl Listen {
    /// The service called, when the listener alone says it (`None` for [`Listen::Captured`],
    /// where the connection's local address does).
    pub fn destination(&self) -> Option<&str> {
        match self {
            Listen::Vip { service } => Some(service),
            Listen::Upstream { destination, .. } => Some(destination),
            Listen::Captured => None,
        }
    }
}

/// What should be listened on for this node's explicit upstreams.
fn upstreams(inner: &Inner) -> BTreeMap<SocketAddr, Listen> {
    let st = inner.store.read();
    let mut out = BTreeMap::new();
    for svc in st.node_services(&inner.node) {
        // Bad upstreams were refused at registration; an old entry is skipped.
        for u in svc.upstreams() {
            out.insert(
                SocketAddr::new(u.bind_addr, u.bind_port),
                Listen::Upstream {
                    source: svc.service.clone(),
                    destination: u.destination,
                },
            );
        }
    }
    out
}

/// The indexes each part depends on, read under one lock.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    node: u64,
    vips: u64,
    services: u64,
}

fn seen(inner: &Inner) -> Seen {
    let st = inner.store.read();
    Seen {
        node: st.node_index(&inner.node),
        vips: st.virtual_ips_index(),
        services: st.indexes().services,
    }
}

/// The open listeners: their route and the token that stops their accept loop.
#[derive(Default)]
struct Open(HashMap<SocketAddr, (Listen, CancellationToken)>);

impl Open {
    /// Stops what `want` lacks, opens what it adds; true when something failed to open.
    fn sync(
        &mut self,
        inner: &Arc<Inner>,
        want: &BTreeMap<SocketAddr, Listen>,
        cancel: &CancellationToken,
    ) -> bool {
        self.0.retain(|addr, (route, token)| {
            let keep = want.get(addr) == Some(route);
            if !keep {
                tracing::debug!(%addr, ?route, "listener stopped");
                token.cancel();
            }
            keep
        });
        let mut failed = false;
        for (addr, route) in want {
            if self.0.contains_key(addr) {
                continue;
            }
            match listen(*addr) {
                Ok(l) => {
                    tracing::debug!(%addr, ?route, "listening");
                    let token = cancel.child_token();
                    inner.tasks.spawn(accept(
                        inner.clone(),
                        l,
                        Arc::new(route.clone()),
                        token.clone(),
                    ));
                    self.0.insert(*addr, (route.clone(), token));
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(%addr, ?route, error = %e, "cannot listen for the data plane");
                }
            }
        }
        let (mut up, mut vip) = (0, 0);
        for (route, _) in self.0.values() {
            match route {
                Listen::Upstream { .. } => up += 1,
                _ => vip += 1,
            }
        }
        inner.metrics.set_listeners(ListenerKind::Upstream, up);
        inner.metrics.set_listeners(ListenerKind::VirtualIp, vip);
        failed
    }

    fn stop_all(self) {
        for (_, (_, token)) in self.0 {
            token.cancel();
        }
    }
}

/// Keeps the listeners (and the capture's prefixes) in step until `cancel`.
pub async fn run(inner: Arc<Inner>, capture: Capture, cancel: CancellationToken) {
    inner.metrics.set_capture(capture.mode());
    let (mut program, limit) = match capture {
        Capture::SkLookup { program, listener } => {
            match listener_to_tokio(listener) {
                Ok(l) => {
                    inner.metrics.set_listeners(ListenerKind::Capture, 1);
                    inner.tasks.spawn(accept(
                        inner.clone(),
                        l,
                        Arc::new(Listen::Captured),
                        cancel.child_token(),
                    ));
                }
                Err(e) => tracing::error!(error = %e, "the capture listener cannot be served"),
            }
            (Some(program), 0)
        }
        Capture::Listeners { limit } => (None, limit),
    };
    let mut applied = inner.store.subscribe();
    let mut open = Open::default();
    let mut last: Option<Seen> = None;
    let mut want_up = BTreeMap::new();
    let mut want_vip: BTreeMap<SocketAddr, Listen> = BTreeMap::new();
    let mut unserved_logged: Option<(Instant, usize)> = None;
    let mut retry = false;
    loop {
        let now = seen(&inner);
        let mut changed = retry;
        if retry || last.is_none_or(|l| l.node != now.node) {
            want_up = upstreams(&inner);
            changed = true;
        }
        match &mut program {
            Some(p) => {
                if last.is_none_or(|l| l.vips != now.vips) {
                    let prefixes = capture::prefixes(&inner.store.read());
                    if &prefixes != p.prefixes() {
                        match p.set_prefixes(&prefixes) {
                            Ok(()) => tracing::info!(
                                prefixes = ?prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect::<Vec<_>>(),
                                "capturing connections to the virtual IPs with sk_lookup"
                            ),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot update the captured virtual IPs")
                            }
                        }
                    }
                }
            }
            None => {
                if retry || last.is_none_or(|l| l.vips != now.vips || l.services != now.services) {
                    let fb = capture::fallback(&inner.store.read(), limit);
                    want_vip = fb
                        .listeners
                        .into_iter()
                        .map(|(addr, service)| (addr, Listen::Vip { service }))
                        .collect();
                    inner.metrics.vips_unserved.set(fb.unserved as i64);
                    log_unserved(&mut unserved_logged, fb.unserved, limit);
                    changed = true;
                }
            }
        }
        last = Some(now);
        if changed {
            let mut want = want_vip.clone();
            // A declared upstream wins over a virtual IP on the same address.
            want.extend(want_up.iter().map(|(a, r)| (*a, r.clone())));
            retry = open.sync(&inner, &want, &cancel);
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = applied.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(RETRY_EVERY), if retry => {}
        }
    }
    open.stop_all();
    // Dropping the program detaches it: connections to the range are refused from here on.
    drop(program);
}

/// Logs that the fallback leaves `unserved` services without a listener: when that starts,
/// and then at most once per [`UNSERVED_LOG_EVERY`].
fn log_unserved(last: &mut Option<(Instant, usize)>, unserved: usize, limit: usize) {
    let due = match last {
        _ if unserved == 0 => false,
        None => true,
        Some((at, n)) => *n == 0 || at.elapsed() >= UNSERVED_LOG_EVERY,
    };
    if due {
        tracing::warn!(
            unserved,
            limit,
            "virtual IPs without a listener: the fallback capture opens at most \
             proxy_listener_limit listening sockets; connections to the other services' \
             virtual IPs are refused (grant CAP_BPF and CAP_NET_ADMIN for sk_lookup capture)"
        );
        *last = Some((Instant::now(), unserved));
    } else if unserved == 0 {
        *last = None;
    }
}

fn listener_to_tokio(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
    listener: TcpListener,
    route: Arc<Listen>,
    cancel: CancellationToken,
) {
    let mut failing: Option<Instant> = None;
    loop {
        let tcp = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors (the process's, not the data plane's share) or
                    // memory: wait a little rather than spin, and say so once a while.
                    inner.metrics.accept_errors.inc();
                    if failing.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        failing = Some(Instant::now());
                        tracing::warn!(error = %e, "data-plane accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        admit(&inner, tcp, &route);
    }
}

/// Hands an accepted connection to a task, if the budget admits it (two descriptors: the
/// caller's, and the instance's or the socket table's while the caller is found).
fn admit(inner: &Arc<Inner>, tcp: TcpStream, route: &Arc<Listen>) {
    match inner.budget.admit(2) {
        Ok(ticket) => {
            let (inner2, route) = (inner.clone(), route.clone());
            inner
                .tasks
                .spawn(async move { outbound::handle(inner2, tcp, route, ticket).await });
        }
        Err(e) => {
            let destination = route.destination().unwrap_or_default();
            inner.metrics.refuse("", destination, e.limit().reason());
            outbound::reset(tcp);
        }
    }
}
