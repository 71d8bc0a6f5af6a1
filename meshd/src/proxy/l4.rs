//! Layer 4: one accepted connection, spliced to one endpoint for its whole life. The endpoint
//! is chosen by the destination's balancer; a failed connect or tunnel is retried on another
//! endpoint, at most [`MAX_ATTEMPTS`] in all.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::budget::Ticket;
use super::connect::{ConnectError, Stream};
use super::metrics::{Dest, Pair};
use super::outbound::{reset, Call};
use super::tunnel::{Mode, Status};
use super::{splice, Inner};

/// Endpoints tried for one connection before it is given up.
pub const MAX_ATTEMPTS: usize = 3;

/// Serves `tcp` for `call` at layer 4.
pub async fn serve(inner: Arc<Inner>, tcp: TcpStream, call: Call, mut ticket: Ticket) {
    let dest = &call.destination;
    let _active = dest.counts.hold_active();
    let pending = dest.counts.hold_pending();
    let started = Instant::now();
    let set = dest.endpoints(call.vip_port);
    let pair = Pair {
        source: call.source_label.clone(),
        destination: dest.service.clone(),
        direction: "outbound",
    };
    let mut tried: Vec<usize> = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        let Some(i) = set.pick(&tried, call.peer.ip()) else {
            break;
        };
        let ep = set.endpoint(i);
        if attempt > 0 {
            inner
                .metrics
                .connect_retries
                .get_or_create(&Dest {
                    destination: dest.service.clone(),
                })
                .inc();
        }
        let _in_flight = set.start(i);
        match inner
            .connect(call.source.as_deref(), &dest.service, ep, Mode::Stream)
            .await
        {
            Ok(upstream) => {
                drop(pending);
                if matches!(upstream, Stream::Tunnel(..)) {
                    // A tunnel stream is no descriptor: only the caller's socket is held.
                    ticket.release(1);
                }
                inner.observe_connect(&dest.service, started);
                let counters = inner.metrics.counters(&pair);
                let _open = inner.open_guard(pair);
                splice::splice(tcp, upstream, &counters).await;
                return;
            }
            Err(ConnectError::Final(status, why)) => {
                if status == Status::Denied {
                    inner.metrics.denied.get_or_create(&pair).inc();
                } else {
                    inner.metrics.refuse(
                        &call.source_label,
                        &dest.service,
                        "refused_by_destination",
                    );
                }
                tracing::info!(destination = %dest.service, source = %call.source_label,
                    node = %ep.node, ?status, %why, "connection refused by the destination");
                return reset(tcp);
            }
            Err(ConnectError::Retry(why)) => {
                tracing::debug!(destination = %dest.service, node = %ep.node, %why,
                    "endpoint failed; trying another");
            }
        }
        tried.push(i);
    }
    let reason = if tried.is_empty() {
        "no_endpoint"
    } else {
        "connect_failed"
    };
    inner
        .metrics
        .refuse(&call.source_label, &dest.service, reason);
    tracing::warn!(destination = %dest.service, source = %call.source_label, tried = tried.len(),
        "connection dropped: no healthy endpoint answered");
    reset(tcp);
}

impl Inner {
    pub fn observe_connect(&self, destination: &str, started: Instant) {
        self.metrics
            .connect_seconds
            .get_or_create(&Dest {
                destination: destination.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}
