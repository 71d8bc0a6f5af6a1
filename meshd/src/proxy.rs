//! The data plane: outbound listeners (virtual IPs and explicit upstreams), mutual-TLS QUIC
//! tunnels between hosts, the inbound intention check and splice, load balancing and limits.
//!
//! - [`capture`]: how connections to virtual IPs reach it (one socket for the whole range
//!   through eBPF `sk_lookup`, or a bounded fallback of one listener per address and port);
//! - [`listeners`]: the local ports, kept in step with the registry;
//! - [`budget`]: the data plane's share of descriptors and connections, so that it never
//!   starves the control plane;
//!
//! A connection goes through three steps:
//! - decide ([`decide`]): per destination, an immutable snapshot (protocol, endpoints and
//!   their balancers, limits, compiled routes), rebuilt when the registry changes and read
//!   without a lock per connection;
//! - connect ([`connect`]): one connector for endpoints on this host (TCP) and on others (a
//!   tunnel stream), behind one stream type;
//! - serve: at accept ([`outbound`]: which destination, who is calling, its caps), a layer-4
//!   splice ([`l4`], [`splice`]) or the HTTP stack of tower layers ([`http`]) by the
//!   destination's protocol.
//!
//! The other parts:
//! - [`tunnel`]: the stream header and answer, and the caller side's QUIC connections;
//! - [`inbound`]: the destination side (identity, intentions, local instance), a splice or an
//!   HTTP exchange;
//! - [`leaves`]: this host's service certificates and the trusted roots;
//! - [`balance`]: endpoint choice (round robin, least request with two choices, consistent
//!   hash on the caller's address), weighted;
//! - [`caller`]: who is calling a local listener (the uid that owns the caller's socket);
//! - [`local`]: this host's services and the users they run as;
//! - [`metrics`].

pub mod balance;
pub mod budget;
pub mod caller;
pub mod capture;
pub mod connect;
pub mod decide;
pub mod http;
pub mod inbound;
pub mod l4;
pub mod leaves;
pub mod listeners;
pub mod local;
pub mod metrics;
pub mod outbound;
pub mod splice;
pub mod tunnel;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;
use crate::transport::Transport;
use budget::Budget;
use capture::{Capture, CaptureError};
use decide::Decisions;
use leaves::Leaves;
use metrics::{Pair, ProxyMetrics};

/// What the data plane shares between its tasks.
pub struct Inner {
    pub store: Store,
    pub node: String,
    pub datacenter: String,
    pub transport: Arc<Transport>,
    pub leaves: Arc<Leaves>,
    pub metrics: ProxyMetrics,
    connections: tunnel::Connections,
    /// The compiled per-destination decisions.
    pub decisions: Arc<Decisions>,
    /// Pooled HTTP connections to this host's instances.
    pub pool: http::pool::Pool,
    /// Tunnel streams kept between HTTP exchanges with other hosts' instances.
    pub streams: http::streams::Streams,
    /// Cancelled at shutdown: tunnel streams waiting for their next exchange end.
    stopping: CancellationToken,
    /// Registration `user` → uid (`None`: no such user), resolved once.
    users: Mutex<HashMap<String, Option<u32>>>,
    /// Every proxied connection, both directions: shutdown waits for them.
    tasks: TaskTracker,
    /// Set at shutdown: new tunnel streams are refused (the caller tries another endpoint).
    draining: AtomicBool,
    /// What proxied connections may hold.
    budget: Arc<Budget>,
}

/// Counts a connection open while it lives (opened, active, closed).
pub struct OpenGuard {
    active: prometheus_client::metrics::gauge::Gauge,
    closed: prometheus_client::metrics::counter::Counter,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.active.dec();
        self.closed.inc();
    }
}

impl Inner {
    fn open_guard(&self, pair: Pair) -> OpenGuard {
        self.metrics.opened.get_or_create(&pair).inc();
        let active = self.metrics.active.get_or_create(&pair).clone();
        active.inc();
        OpenGuard {
            active,
            closed: self.metrics.closed.get_or_create(&pair).clone(),
        }
    }

    fn uid_of(&self, user: &str) -> Option<u32> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        *users.entry(user.to_string()).or_insert_with(|| {
            caller::resolve_user(user)
                .map_err(|e| tracing::warn!(%user, error = %e, "a registration's user is unknown"))
                .ok()
        })
    }
}

/// The running data plane; owns its tasks.
pub struct Proxy {
    inner: Arc<Inner>,
    cancel: CancellationToken,
}

/// What the data plane needs from the agent.
pub struct ProxyConfig {
    pub node: String,
    pub datacenter: String,
    /// Lifetime of service leaves.
    pub leaf_ttl: Duration,
    pub capture: capture::Mode,
    /// Virtual-IP listeners at most with the fallback capture.
    pub listener_limit: usize,
    /// Descriptors left free for the control plane (`None`: the default share).
    pub reserved_fds: Option<u64>,
    pub max_connections: u64,
}

impl Proxy {
    /// Starts the leaves, the capture and listeners, and the tunnel handler. Fails only when
    /// `sk_lookup` capture was asked for and cannot be set up.
    pub fn start(
        cfg: ProxyConfig,
        store: Store,
        transport: Arc<Transport>,
        registry: &mut prometheus_client::registry::Registry,
        cancel: CancellationToken,
    ) -> Result<Proxy, CaptureError> {
        let started = std::time::Instant::now();
        let capture = Capture::start(cfg.capture, cfg.listener_limit, listeners::BACKLOG as i32)?;
        tracing::info!(
            capture = capture.mode().as_str(),
            setup_ms = started.elapsed().as_secs_f64() * 1000.0,
            "data plane: virtual IPs captured"
        );
        let metrics = ProxyMetrics::new(registry);
        let budget = Budget::new(cfg.reserved_fds, cfg.max_connections, registry);
        let leaves = Arc::new(Leaves::new(cfg.node.clone(), cfg.leaf_ttl));
        let decisions = Arc::new(Decisions::new(cfg.node.clone(), metrics.rebuilds.clone()));
        // The first table before the first listener: no connection finds it empty.
        decisions.update(&store.read());
        let inner = Arc::new(Inner {
            store: store.clone(),
            node: cfg.node,
            datacenter: cfg.datacenter,
            transport: transport.clone(),
            leaves: leaves.clone(),
            metrics: metrics.clone(),
            connections: tunnel::Connections::default(),
            decisions: decisions.clone(),
            pool: http::pool::Pool::default(),
            streams: http::streams::Streams::new(registry),
            stopping: cancel.clone(),
            users: Mutex::default(),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
            budget: budget.clone(),
        });
        let handler_inner = inner.clone();
        transport.set_tunnel_handler(Arc::new(move |s| {
            let inner = handler_inner.clone();
            Box::pin(inner.tasks.track_future(inbound::serve(inner.clone(), s)))
        }));
        inner
            .tasks
            .spawn(leaves.run(store.clone(), transport, metrics, cancel.clone()));
        inner
            .tasks
            .spawn(listeners::run(inner.clone(), capture, cancel.clone()));
        inner.tasks.spawn(budget.sample(cancel.clone()));
        inner
            .tasks
            .spawn(decisions.clone().run(store.clone(), cancel.clone()));
        Ok(Proxy { inner, cancel })
    }

    pub fn leaves(&self) -> Arc<Leaves> {
        self.inner.leaves.clone()
    }

    /// Stops accepting (listeners close, new tunnel streams are refused as draining) and
    /// waits up to `drain` for the proxied connections to end; returns how many were still
    /// open then. They end when the QUIC endpoint and the runtime stop.
    pub async fn stop(&self, drain: Duration) -> usize {
        self.inner.draining.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        self.inner.tasks.close();
        let open = self.inner.tasks.len();
        tracing::info!(open, ?drain, "data plane draining");
        if tokio::time::timeout(drain, self.inner.tasks.wait())
            .await
            .is_err()
        {
            // The leaves and listener tasks ended at cancel: what is left is connections.
            let left = self.inner.tasks.len();
            tracing::warn!(
                left,
                ?drain,
                "proxied connections still open after the drain timeout; closing them"
            );
            return left;
        }
        0
    }
}
