//! The destination side of a tunnel: who is calling (the certificate the QUIC connection was
//! verified with), whether the intentions let them, which local instance they want; then a
//! connection to that instance (normally on loopback, so the mesh is the only way in from
//! other hosts) and the splice. A refused stream is answered with its reason, closed at once
//! and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::ca::Identity;
use registry::intention::Caller;

use super::decide::local_addr;
use super::metrics::Pair;
use super::splice;
use super::tunnel::{answer, Header, Mode, Status};
use super::Inner;
use crate::transport::Incoming;

/// Bound for a caller to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound for the local instance to accept.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one tunnel stream.
pub async fn serve(inner: Arc<Inner>, mut s: Incoming) {
    if inner.draining.load(std::sync::atomic::Ordering::SeqCst) {
        inner.metrics.refuse("", "", "draining");
        refuse(&mut s, Status::Draining, "this host is shutting down").await;
        return;
    }
    let (source, caller_node) = match &s.peer {
        Some(p) if p.trust_domain == inner.decisions.table().trust_domain => match &p.identity {
            Identity::Service(n) => (n.clone(), None),
            Identity::Node(n) | Identity::Server(n) => (format!("node:{n}"), Some(n.clone())),
        },
        other => {
            let why = match other {
                None => "no client certificate".to_string(),
                Some(p) => format!("trust domain {:?} is not this mesh's", p.trust_domain),
            };
            inner.metrics.refuse("", "", "no_certificate");
            tracing::info!(remote = %s.remote, %why, "tunnel refused");
            refuse(&mut s, Status::Unauthenticated, &why).await;
            return;
        }
    };
    let header = match tokio::time::timeout(HEADER_TIMEOUT, Header::read(&mut s.recv)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            inner.metrics.refuse(&source, "", "bad_header");
            tracing::info!(remote = %s.remote, %source, error = %e, "tunnel refused: bad header");
            refuse(&mut s, Status::BadHeader, &e.to_string()).await;
            return;
        }
        Err(_) => {
            inner.metrics.refuse(&source, "", "bad_header");
            refuse(&mut s, Status::BadHeader, "no header in time").await;
            return;
        }
    };
    let destination = header.service.clone();
    let caller = match &caller_node {
        Some(n) => Caller::Node(n),
        None => Caller::Service(&source),
    };
    let (decision, target) = {
        let st = inner.store.read();
        let decision = st.check_intention(caller, &destination);
        let target = st
            .node_services(&inner.node)
            .filter(|svc| svc.service == destination)
            .filter(|svc| header.instance.is_empty() || svc.id == header.instance)
            .find(|svc| svc.port == header.port || !header.instance.is_empty())
            .map(|svc| local_addr(&svc.address, svc.port));
        // What the instance speaks: the destination's protocol, as this host compiled it.
        (decision, target)
    };
    let pair = Pair {
        source: source.clone(),
        destination: destination.clone(),
        direction: "inbound",
    };
    if !decision.allowed {
        inner.metrics.denied.get_or_create(&pair).inc();
        let by = decision
            .matched
            .map(|i| {
                format!(
                    "intention {} ({} => {})",
                    i.id, i.source_name, i.destination_name
                )
            })
            .unwrap_or_else(|| "the default intention policy".into());
        tracing::info!(%source, %destination, %by, "connection denied");
        refuse(&mut s, Status::Denied, &format!("denied by {by}")).await;
        return;
    }
    let Some(target) = target else {
        inner.metrics.refuse(&source, &destination, "no_instance");
        refuse(&mut s, Status::NoInstance, "no such instance on this host").await;
        return;
    };
    // The instance's socket is the one descriptor this side holds.
    let _ticket = match inner.budget.admit(1) {
        Ok(t) => t,
        Err(e) => {
            inner
                .metrics
                .refuse(&source, &destination, e.limit().reason());
            refuse(&mut s, Status::Overloaded, &e.to_string()).await;
            return;
        }
    };
    if header.mode != Mode::Stream {
        let h2 = (inner.decisions.destination(&destination, &inner.store))
            .is_some_and(|d| super::decide::h2_upstream(d.protocol));
        if s.send.write_all(&answer(Status::Ok, "")).await.is_err() {
            return;
        }
        let _open = inner.open_guard(pair.clone());
        let allowed = || {
            inner
                .store
                .read()
                .check_intention(caller, &destination)
                .allowed
        };
        let several = (header.mode == Mode::Exchanges).then_some(allowed);
        let (send, recv) = (s.send, s.recv);
        return super::http::inbound::serve(inner.clone(), send, recv, target, h2, &pair, several)
            .await;
    }
    let started = Instant::now();
    let tcp = match tokio::time::timeout(
        LOCAL_CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            inner
                .metrics
                .refuse(&source, &destination, "connect_failed");
            tracing::debug!(%destination, %target, error = %e, "local instance refused");
            refuse(&mut s, Status::ConnectFailed, &e.to_string()).await;
            return;
        }
        Err(_) => {
            inner
                .metrics
                .refuse(&source, &destination, "connect_failed");
            refuse(&mut s, Status::ConnectFailed, "local connect timed out").await;
            return;
        }
    };
    inner
        .metrics
        .connect_seconds
        .get_or_create(&super::metrics::Dest {
            destination: destination.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    if s.send.write_all(&answer(Status::Ok, "")).await.is_err() {
        return;
    }
    let counters = inner.metrics.counters(&pair);
    let _open = inner.open_guard(pair);
    splice::tcp_tunnel(tcp, s.send, s.recv, &counters).await;
}

async fn refuse(s: &mut Incoming, status: Status, why: &str) {
    let _ = s.send.write_all(&answer(status, why)).await;
    let _ = s.send.finish();
    let _ = s.recv.stop(0u32.into());
}
