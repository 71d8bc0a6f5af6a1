//! Prometheus metrics of the data plane, per source and destination service.
//!
//! `source` is the caller's identity as this host knows it (a service name, or `node:<name>`
//! for traffic without a service identity); `destination` is the service called. Both are
//! bounded by the registry's names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Pair {
    pub source: String,
    pub destination: String,
    /// `outbound` (this host is the caller's side) or `inbound`.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Bytes {
    pub source: String,
    pub destination: String,
    pub direction: &'static str,
    /// `to_destination` or `to_source`.
    pub flow: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub source: String,
    pub destination: String,
    /// `max_connections`, `max_pending_connects`, `no_endpoint`, `connect_failed`,
    /// `no_certificate`, `bad_header`, `no_instance`, `no_route` (a captured connection to no
    /// service's virtual IP and port), `descriptor_limit`, `connection_limit` (the data
    /// plane's own bounds), `overloaded` (the destination host's).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Dest {
    pub destination: String,
}

/// What a data-plane listener is for.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ListenerKind {
    /// An explicit upstream's `LocalBindPort`.
    Upstream,
    /// One virtual IP and port (the fallback capture).
    VirtualIp,
    /// The one listener sk_lookup hands the whole range to.
    Capture,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CaptureMode {
    mode: &'static str,
}

/// The data plane's metrics; cheap to clone.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub opened: Family<Pair, Counter>,
    pub closed: Family<Pair, Counter>,
    pub active: Family<Pair, Gauge>,
    pub denied: Family<Pair, Counter>,
    pub refused: Family<Refusal, Counter>,
    pub bytes: Family<Bytes, Counter>,
    pub connect_seconds: Family<Dest, Histogram>,
    pub connect_retries: Family<Dest, Counter>,
    pub tunnels: Gauge,
    pub leaves_issued: Counter,
    pub leaf_errors: Counter,
    listeners: Family<Kind, Gauge>,
    capture: Family<CaptureMode, Gauge>,
    /// Services with a virtual IP the fallback capture left without a listener.
    pub vips_unserved: Gauge,
    pub accept_errors: Counter,
    /// Rebuilds of the per-destination decisions.
    pub rebuilds: super::decide::RebuildMetrics,
    /// HTTP requests proxied, by the response status (meshd's own answers included).
    pub requests: Family<Request, Counter>,
    pub request_seconds: Family<Dest, Histogram>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub source: String,
    pub destination: String,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// The response status code (bounded: at most the 63 codes HTTP defines and a few others).
    pub code: u16,
}

impl ProxyMetrics {
    pub fn new(registry: &mut Registry) -> ProxyMetrics {
        let m = ProxyMetrics {
            opened: Family::default(),
            closed: Family::default(),
            active: Family::default(),
            denied: Family::default(),
            refused: Family::default(),
            bytes: Family::default(),
            connect_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5,
                ])
            }),
            connect_retries: Family::default(),
            tunnels: Gauge::default(),
            leaves_issued: Counter::default(),
            leaf_errors: Counter::default(),
            listeners: Family::default(),
            capture: Family::default(),
            vips_unserved: Gauge::default(),
            rebuilds: super::decide::RebuildMetrics::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(|| {
                Histogram::new([
                    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 10.0,
                ])
            }),
            accept_errors: Counter::default(),
        };
        registry.register(
            "meshd_proxy_connections_opened",
            "Proxied connections opened, by source and destination service and direction",
            m.opened.clone(),
        );
        registry.register(
            "meshd_proxy_connections_closed",
            "Proxied connections closed",
            m.closed.clone(),
        );
        registry.register(
            "meshd_proxy_connections_active",
            "Proxied connections open now",
            m.active.clone(),
        );
        registry.register(
            "meshd_proxy_connections_denied",
            "Connections refused by an intention or the default intention policy",
            m.denied.clone(),
        );
        registry.register(
            "meshd_proxy_connections_refused",
            "Connections refused for another reason (limits, no endpoint, connect failures, no certificate)",
            m.refused.clone(),
        );
        registry.register(
            "meshd_proxy_bytes",
            "Bytes spliced, toward the destination and back toward the source",
            m.bytes.clone(),
        );
        registry.register(
            "meshd_proxy_connect_duration_seconds",
            "Time from accepting a connection to the destination answering (tunnel or direct)",
            m.connect_seconds.clone(),
        );
        registry.register(
            "meshd_proxy_connect_retries",
            "Endpoints that failed a connection, retried on another",
            m.connect_retries.clone(),
        );
        registry.register(
            "meshd_proxy_tunnels_active",
            "QUIC tunnel connections this host holds open to other hosts",
            m.tunnels.clone(),
        );
        registry.register(
            "meshd_proxy_leaves_issued",
            "Service leaf certificates this host obtained (first issue, renewal, rotation)",
            m.leaves_issued.clone(),
        );
        registry.register(
            "meshd_proxy_leaf_errors",
            "Failed attempts to obtain a service leaf certificate",
            m.leaf_errors.clone(),
        );
        registry.register(
            "meshd_proxy_listeners",
            "Listening sockets of the data plane, by kind (upstream, virtual_ip: the fallback \
             capture's, capture: sk_lookup's one for the whole range)",
            m.listeners.clone(),
        );
        registry.register(
            "meshd_proxy_capture",
            "How connections to virtual IPs are captured (1 for the mode in effect: sk_lookup \
             or listeners)",
            m.capture.clone(),
        );
        registry.register(
            "meshd_proxy_virtual_ips_unserved",
            "Services with a virtual IP left without a listener on some port by the fallback \
             capture's bound (proxy_listener_limit)",
            m.vips_unserved.clone(),
        );
        registry.register(
            "meshd_proxy_decisions_rebuilt",
            "Rebuilds of the data plane's decision table (one per registry change that touches it)",
            m.rebuilds.tables.clone(),
        );
        registry.register(
            "meshd_proxy_destinations_rebuilt",
            "Destination snapshots rebuilt (only those whose inputs changed)",
            m.rebuilds.destinations.clone(),
        );
        registry.register(
            "meshd_proxy_decisions_rebuild_seconds",
            "Time spent rebuilding the decision table",
            m.rebuilds.seconds.clone(),
        );
        registry.register(
            "meshd_proxy_http_requests",
            "HTTP requests proxied, by source, destination, direction and response code",
            m.requests.clone(),
        );
        registry.register(
            "meshd_proxy_http_request_seconds",
            "Time to the response head of proxied HTTP requests (outbound)",
            m.request_seconds.clone(),
        );
        registry.register(
            "meshd_proxy_accept_errors",
            "Failed accepts on data-plane listeners (the process out of descriptors or memory)",
            m.accept_errors.clone(),
        );
        m
    }

    pub fn set_listeners(&self, kind: ListenerKind, n: usize) {
        let kind = match kind {
            ListenerKind::Upstream => "upstream",
            ListenerKind::VirtualIp => "virtual_ip",
            ListenerKind::Capture => "capture",
        };
        self.listeners
            .get_or_create(&Kind { kind })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub fn set_capture(&self, mode: super::capture::Mode) {
        self.capture
            .get_or_create(&CaptureMode {
                mode: mode.as_str(),
            })
            .set(1);
    }

    /// Where one connection's bytes are counted: toward the destination and back.
    pub fn counters(&self, pair: &Pair) -> super::splice::Counters {
        let bytes = |flow| {
            self.bytes
                .get_or_create(&Bytes {
                    source: pair.source.clone(),
                    destination: pair.destination.clone(),
                    direction: pair.direction,
                    flow,
                })
                .clone()
        };
        // The TCP side is the caller on the outbound side, the instance on the inbound side.
        let (tcp, tunnel) = match pair.direction {
            "outbound" => ("to_destination", "to_source"),
            _ => ("to_source", "to_destination"),
        };
        super::splice::Counters {
            tcp_to_tunnel: bytes(tcp),
            tunnel_to_tcp: bytes(tunnel),
        }
    }

    pub fn refuse(&self, source: &str, destination: &str, reason: &'static str) {
        self.refused
            .get_or_create(&Refusal {
                source: source.to_string(),
                destination: destination.to_string(),
                reason,
            })
            .inc();
    }
}
