//! The server layer: a caller's connection to an HTTP destination, served by hyper (HTTP/1.1
//! with keep-alive, HTTP/2 by prior knowledge or `Upgrade: h2c`, detected per connection),
//! each request handed to the stack of layers: [`route`](super::route) →
//! [`upgrade`](super::upgrade) → [`client`](super::client).

use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpStream;
use tower::ServiceBuilder;

use super::client::Client;
use super::route::RouteLayer;
use super::upgrade::UpgradeLayer;
use super::{boxed, Body};
use crate::proxy::budget::Ticket;
use crate::proxy::metrics::Pair;
use crate::proxy::outbound::Call;
use crate::proxy::Inner;

/// Serves `tcp` for `call` at layer 7 until the caller closes it.
pub async fn serve(inner: Arc<Inner>, tcp: TcpStream, call: Call, ticket: Ticket) {
    let _ticket = ticket;
    let _active = call.destination.counts.hold_active();
    let pair = Pair {
        source: call.source_label.clone(),
        destination: call.destination.service.clone(),
        direction: "outbound",
    };
    let _open = inner.open_guard(pair);
    let _ = tcp.set_nodelay(true);
    let call = Arc::new(call);
    let stack = ServiceBuilder::new()
        .map_request(to_layers)
        .layer(RouteLayer::new(call.clone()))
        .layer(UpgradeLayer::new(inner.clone(), call.clone()))
        .service(Client::new(inner.clone(), call.clone()));
    let service = TowerToHyperService::new(stack);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tcp), service)
        .await
    {
        tracing::debug!(destination = %call.destination.service, error = %e,
            "HTTP connection from a caller ended");
    }
}

/// A request as the layers take it.
fn to_layers(req: Request<Incoming>) -> Request<Body> {
    req.map(boxed)
}
